/*
 * Unit tests of the virtqueue walker, the virtio-mmio transport and virtio-rng on synthetic
 * rings in a memory buffer (no KVM): well-formed chains, and every way a guest can break a
 * ring. Prints "N passed, N failed" last.
 */
#include "test_virtio.h"

/* ---------- the walker on its own ---------- */

struct wq { struct guest_mem mem; struct virtq q; struct vq_chain c; };

static void wq_open(struct wq *w, uint16_t num, bool indirect)
{
    uint64_t gpa = 0, size = TV_MEM;
    mem_alloc(&w->mem, &gpa, &size, 1, VMM_MEM_ANON);
    w->q = (struct virtq){.mem = &w->mem, .num = num, .desc = tv_desc(0), .avail = tv_avail(0),
                          .used = tv_used(0), .indirect = indirect};
}

static void wq_desc(struct wq *w, uint64_t table, uint16_t i, uint64_t addr, uint32_t len,
                    uint16_t flags, uint16_t next)
{
    uint8_t d[16];
    memcpy(d, &addr, 8); memcpy(d + 8, &len, 4); memcpy(d + 12, &flags, 2); memcpy(d + 14, &next, 2);
    gm_write(&w->mem, table + 16ULL * i, d, 16);
}

static void wq_avail(struct wq *w, uint16_t slot, uint16_t head, uint16_t idx)
{
    gm_write(&w->mem, tv_avail(0) + 4 + 2ULL * slot, &head, 2);
    gm_write(&w->mem, tv_avail(0) + 2, &idx, 2);
}

static void test_walker_takes_a_chain_readable_then_writable(void)
{
    struct wq w;
    wq_open(&w, 8, false);
    CHECK(virtq_check(&w.q, 256) == 0);
    CHECK(virtq_pop(&w.q, &w.c) == 0);                   /* nothing available */
    wq_desc(&w, tv_desc(0), 3, TV_DATA, 16, VIRTQ_DESC_F_NEXT, 5);
    wq_desc(&w, tv_desc(0), 5, TV_DATA + 0x1000, 100, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 1);
    wq_desc(&w, tv_desc(0), 1, TV_DATA + 0x2000, 1, VIRTQ_DESC_F_WRITE, 0);
    wq_avail(&w, 0, 3, 1);
    CHECK(virtq_pop(&w.q, &w.c) == 1);
    CHECK(w.c.head == 3 && w.c.nseg == 3 && w.c.nread == 1 && w.c.rlen == 16 && w.c.wlen == 101);
    CHECK(virtq_pop(&w.q, &w.c) == 0);
    CHECK(virtq_push(&w.q, 3, 77) == 0);
    uint32_t e[2];
    uint16_t used;
    gm_read(&w.mem, tv_used(0) + 4, e, 8);
    gm_read(&w.mem, tv_used(0) + 2, &used, 2);
    CHECK(e[0] == 3 && e[1] == 77 && used == 1);
    /* the chain's bytes: read from the readable part, write across writable segments */
    uint8_t in[16], out[101], back[101];
    memset(in, 0xab, sizeof(in));
    gm_write(&w.mem, TV_DATA, in, sizeof(in));
    uint8_t got[32] = {0};
    CHECK(vq_chain_read(&w.mem, &w.c, 0, got, sizeof(got)) == 16 && got[15] == 0xab);
    for (int i = 0; i < 101; i++)
        out[i] = (uint8_t)i;
    CHECK(vq_chain_write(&w.mem, &w.c, 0, out, sizeof(out)) == 101);
    gm_read(&w.mem, TV_DATA + 0x1000, back, 100);
    gm_read(&w.mem, TV_DATA + 0x2000, back + 100, 1);
    CHECK(memcmp(out, back, 101) == 0);
    CHECK(vq_chain_write(&w.mem, &w.c, 100, out, 50) == 1);   /* short at the end */
    mem_free(&w.mem);
}

static void test_walker_refuses_a_cycle(void)
{
    struct wq w;
    wq_open(&w, 4, false);
    wq_desc(&w, tv_desc(0), 0, TV_DATA, 8, VIRTQ_DESC_F_NEXT, 1);
    wq_desc(&w, tv_desc(0), 1, TV_DATA, 8, VIRTQ_DESC_F_NEXT, 0);
    wq_avail(&w, 0, 0, 1);
    CHECK(virtq_pop(&w.q, &w.c) == -ELOOP);
    /* a descriptor pointing at itself */
    wq_desc(&w, tv_desc(0), 2, TV_DATA, 8, VIRTQ_DESC_F_NEXT, 2);
    wq_avail(&w, 0, 2, 1);
    CHECK(virtq_pop(&w.q, &w.c) == -ELOOP);
    mem_free(&w.mem);
}

static void test_walker_refuses_a_chain_longer_than_the_queue(void)
{
    struct wq w;
    wq_open(&w, 4, false);
    for (uint16_t i = 0; i < 4; i++)      /* 0->1->2->3->0: five would be needed */
        wq_desc(&w, tv_desc(0), i, TV_DATA, 8, VIRTQ_DESC_F_NEXT, (uint16_t)((i + 1) % 4));
    wq_avail(&w, 0, 0, 1);
    CHECK(virtq_pop(&w.q, &w.c) < 0);
    mem_free(&w.mem);
}

static void test_walker_refuses_indexes_past_the_queue(void)
{
    struct wq w;
    wq_open(&w, 8, false);
    wq_avail(&w, 0, 8, 1);                                   /* head out of range */
    CHECK(virtq_pop(&w.q, &w.c) == -EINVAL);
    w.q.last_avail = 0;
    wq_avail(&w, 0, 0, 1);
    wq_desc(&w, tv_desc(0), 0, TV_DATA, 8, VIRTQ_DESC_F_NEXT, 0xffff);   /* next out of range */
    wq_avail(&w, 0, 0, 1);
    CHECK(virtq_pop(&w.q, &w.c) == -EINVAL);
    mem_free(&w.mem);
}

static void test_walker_refuses_buffers_outside_ram(void)
{
    struct wq w;
    wq_open(&w, 8, false);
    wq_desc(&w, tv_desc(0), 0, TV_MEM - 8, 16, 0, 0);                     /* past the end */
    wq_avail(&w, 0, 0, 1);
    CHECK(virtq_pop(&w.q, &w.c) == -EFAULT);
    w.q.last_avail = 0;
    wq_desc(&w, tv_desc(0), 0, ~0ULL - 4, 16, 0, 0);                      /* wraps */
    CHECK(virtq_pop(&w.q, &w.c) == -EFAULT);
    w.q.last_avail = 0;
    wq_desc(&w, tv_desc(0), 0, TV_DATA, 0xffffffffu, 0, 0);               /* 4 GiB long */
    CHECK(virtq_pop(&w.q, &w.c) == -EFAULT);
    mem_free(&w.mem);
}

static void test_walker_refuses_readable_after_writable(void)
{
    struct wq w;
    wq_open(&w, 8, false);
    wq_desc(&w, tv_desc(0), 0, TV_DATA, 8, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 1);
    wq_desc(&w, tv_desc(0), 1, TV_DATA, 8, 0, 0);
    wq_avail(&w, 0, 0, 1);
    CHECK(virtq_pop(&w.q, &w.c) == -EINVAL);
    mem_free(&w.mem);
}

static void test_walker_refuses_an_avail_index_running_ahead(void)
{
    struct wq w;
    wq_open(&w, 8, false);
    wq_desc(&w, tv_desc(0), 0, TV_DATA, 8, 0, 0);
    wq_avail(&w, 0, 0, 9);                                   /* 9 new entries in a queue of 8 */
    CHECK(virtq_pending(&w.q) == -EINVAL && virtq_pop(&w.q, &w.c) == -EINVAL);
    wq_avail(&w, 0, 0, 8);                                   /* exactly full is fine */
    CHECK(virtq_pending(&w.q) == 8 && virtq_pop(&w.q, &w.c) == 1);
    /* indexes wrap at 2^16 */
    w.q.last_avail = 0xfffe;
    wq_avail(&w, 6, 0, 1);                                   /* 3 ahead across the wrap */
    CHECK(virtq_pending(&w.q) == 3);
    mem_free(&w.mem);
}

static void test_walker_bounds_indirect_tables(void)
{
    struct wq w;
    uint64_t table = TV_DATA + 0x10000;
    wq_open(&w, 8, true);
    wq_desc(&w, table, 0, TV_DATA, 8, VIRTQ_DESC_F_NEXT, 1);
    wq_desc(&w, table, 1, TV_DATA + 0x100, 8, VIRTQ_DESC_F_WRITE, 0);
    wq_desc(&w, tv_desc(0), 2, table, 32, VIRTQ_DESC_F_INDIRECT, 0);
    wq_avail(&w, 0, 2, 1);
    CHECK(virtq_pop(&w.q, &w.c) == 1 && w.c.head == 2 && w.c.nseg == 2 && w.c.nread == 1);

    struct { uint32_t len; uint16_t flags; const char *what; } bad[] = {
        {0, VIRTQ_DESC_F_INDIRECT, "empty"},
        {24, VIRTQ_DESC_F_INDIRECT, "not a whole number of descriptors"},
        {16 * 9, VIRTQ_DESC_F_INDIRECT, "more descriptors than the queue"},
        {32, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, "indirect with next"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        wq_desc(&w, tv_desc(0), 2, table, bad[i].len, bad[i].flags, 0);
        wq_avail(&w, (uint16_t)(i + 1), 2, (uint16_t)(i + 2));
        int r = virtq_pop(&w.q, &w.c);
        if (r >= 0)
            printf("indirect %s accepted\n", bad[i].what);
        CHECK(r < 0);
        w.q.last_avail = (uint16_t)(i + 2);
    }
    /* nested tables, and a loop inside a table */
    wq_desc(&w, tv_desc(0), 2, table, 32, VIRTQ_DESC_F_INDIRECT, 0);
    wq_desc(&w, table, 1, table, 32, VIRTQ_DESC_F_INDIRECT, 0);
    wq_avail(&w, 5, 2, 6);
    w.q.last_avail = 5;
    CHECK(virtq_pop(&w.q, &w.c) == -EINVAL);
    wq_desc(&w, table, 1, TV_DATA, 8, VIRTQ_DESC_F_NEXT, 0);
    w.q.last_avail = 5;
    CHECK(virtq_pop(&w.q, &w.c) == -ELOOP);
    /* without the feature, an indirect descriptor is refused */
    w.q.indirect = false;
    wq_desc(&w, table, 1, TV_DATA, 8, 0, 0);
    w.q.last_avail = 5;
    CHECK(virtq_pop(&w.q, &w.c) == -EINVAL);
    mem_free(&w.mem);
}

static void test_walker_checks_the_queue_configuration(void)
{
    struct wq w;
    wq_open(&w, 8, false);
    w.q.num = 6;
    CHECK(virtq_check(&w.q, 256) < 0);                       /* not a power of two */
    w.q.num = 512;
    CHECK(virtq_check(&w.q, 256) < 0);                       /* above the maximum */
    w.q.num = 0;
    CHECK(virtq_check(&w.q, 256) < 0);
    w.q.num = 8;
    w.q.desc = tv_desc(0) + 8;
    CHECK(virtq_check(&w.q, 256) < 0);                       /* misaligned */
    w.q.desc = TV_MEM - 64;
    CHECK(virtq_check(&w.q, 256) < 0);                       /* table runs past RAM */
    w.q.desc = tv_desc(0);
    w.q.used = ~0ULL - 3;
    CHECK(virtq_check(&w.q, 256) < 0);
    mem_free(&w.mem);
}

static void test_walker_honours_no_interrupt(void)
{
    struct wq w;
    wq_open(&w, 8, false);
    uint16_t flags = 0;
    gm_write(&w.mem, tv_avail(0), &flags, 2);
    CHECK(virtq_should_notify(&w.q));
    flags = VIRTQ_AVAIL_F_NO_INTERRUPT;
    gm_write(&w.mem, tv_avail(0), &flags, 2);
    CHECK(!virtq_should_notify(&w.q));
    mem_free(&w.mem);
}

/* ---------- the transport, with virtio-rng behind it ---------- */

static void test_transport_identifies_a_modern_device(void)
{
    struct tv t;
    struct vmm_device_config cfg = {.type = VMM_DEV_VIRTIO_RNG};
    CHECK(tv_open(&t, &virtio_rng_ops, &cfg, "virtio-rng.0") == 0);
    CHECK(tv_rd(&t, VIRTIO_MMIO_MAGIC) == 0x74726976u);
    CHECK(tv_rd(&t, VIRTIO_MMIO_VERSION) == 2);
    CHECK(tv_rd(&t, VIRTIO_MMIO_DEVICE_ID) == 4);
    tv_wr(&t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    CHECK(tv_rd(&t, VIRTIO_MMIO_DEVICE_FEATURES) & 1);      /* VERSION_1 is bit 32 */
    tv_wr(&t, VIRTIO_MMIO_QUEUE_SEL, 0);
    CHECK(tv_rd(&t, VIRTIO_MMIO_QUEUE_NUM_MAX) == 64);
    tv_wr(&t, VIRTIO_MMIO_QUEUE_SEL, 1);
    CHECK(tv_rd(&t, VIRTIO_MMIO_QUEUE_NUM_MAX) == 0);       /* no such queue */
    /* odd widths and offsets read as zero and change nothing */
    uint8_t b[2] = {0xff, 0xff};
    t.d.ops->access(&t.d, VIRTIO_MMIO_MAGIC, b, 2, false, NULL);
    CHECK(b[0] == 0 && b[1] == 0);
    uint32_t v = 7;
    t.d.ops->access(&t.d, VIRTIO_MMIO_STATUS + 1, (uint8_t *)&v, 4, true, NULL);
    CHECK(tv_rd(&t, VIRTIO_MMIO_STATUS) == 0);
    tv_close(&t);
}

static void test_transport_refuses_features_without_version_1(void)
{
    struct tv t;
    struct vmm_device_config cfg = {.type = VMM_DEV_VIRTIO_RNG};
    CHECK(tv_open(&t, &virtio_rng_ops, &cfg, "virtio-rng.0") == 0);
    tv_wr(&t, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    tv_wr(&t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    tv_wr(&t, VIRTIO_MMIO_DRIVER_FEATURES, 0);               /* a legacy driver */
    tv_wr(&t, VIRTIO_MMIO_STATUS, 3 | VIRTIO_STATUS_FEATURES_OK);
    CHECK(!(tv_rd(&t, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK));
    tv_wr(&t, VIRTIO_MMIO_DRIVER_FEATURES, 1 | 2);            /* VERSION_1 and something not offered */
    tv_wr(&t, VIRTIO_MMIO_STATUS, 3 | VIRTIO_STATUS_FEATURES_OK);
    CHECK(!(tv_rd(&t, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK));
    tv_wr(&t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    tv_wr(&t, VIRTIO_MMIO_STATUS, 3 | VIRTIO_STATUS_FEATURES_OK);
    CHECK(tv_rd(&t, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK);
    tv_wr(&t, VIRTIO_MMIO_DRIVER_FEATURES, 0);               /* too late: ignored */
    CHECK(virtio_negotiated(tv_vdev(&t)) == 1ULL << 32);
    tv_close(&t);
}

static void test_rng_fills_the_guests_buffers(void)
{
    struct tv t;
    struct vmm_device_config cfg = {.type = VMM_DEV_VIRTIO_RNG};
    CHECK(tv_open(&t, &virtio_rng_ops, &cfg, "virtio-rng.0") == 0);
    CHECK(tv_setup(&t, 0, 1, 16) == 0xf);
    uint8_t zero[256] = {0}, got[256];
    gm_write(&t.mem, TV_DATA, zero, sizeof(zero));
    struct tv_buf b[2] = {{TV_DATA, 100, true}, {TV_DATA + 128, 128, true}};
    uint16_t head = tv_chain(&t, 0, b, 2);
    tv_publish(&t, 0, head);
    tv_kick(&t, 0);
    uint32_t id, len;
    CHECK(tv_take_used(&t, 0, &id, &len) == 1 && id == head && len == 228);
    gm_read(&t.mem, TV_DATA, got, sizeof(got));
    CHECK(memcmp(got, zero, 100) != 0 && memcmp(got + 128, zero, 128) != 0);
    CHECK(memcmp(got + 100, zero, 28) == 0);                 /* the gap is untouched */
    CHECK(tv_rd(&t, VIRTIO_MMIO_INTERRUPT_STATUS) == VIRTIO_ISR_USED);
    tv_wr(&t, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_ISR_USED);
    CHECK(tv_rd(&t, VIRTIO_MMIO_INTERRUPT_STATUS) == 0);
    /* more requests than one pass serves: all are served, over several passes */
    for (int i = 0; i < 40; i++) {
        struct tv_buf one = {TV_DATA + 0x1000 + 64ULL * i, 64, true};
        tv_publish(&t, 0, tv_chain(&t, 0, &one, 1));
        if (i % 16 == 15)
            tv_kick(&t, 0);
    }
    for (int i = 0; i < 4; i++)
        virtio_run(tv_vdev(&t));
    CHECK(tv_used_idx(&t, 0) == 41);
    tv_close(&t);
}

static void test_a_broken_ring_marks_the_device_needing_reset(void)
{
    struct tv t;
    struct vmm_device_config cfg = {.type = VMM_DEV_VIRTIO_RNG};
    CHECK(tv_open(&t, &virtio_rng_ops, &cfg, "virtio-rng.0") == 0);
    tv_setup(&t, 0, 1, 16);
    tv_put_desc(&t, 0, 0, TV_DATA, 64, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 0);   /* a loop */
    tv_publish(&t, 0, 0);
    tv_kick(&t, 0);
    CHECK(tv_broken(&t));
    CHECK(tv_rd(&t, VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_ISR_CONFIG);
    CHECK(strstr(tv_vdev(&t)->broken_why, "loops") != NULL);
    CHECK(tv_used_idx(&t, 0) == 0);
    /* broken: good requests are not served until the driver resets the device */
    struct tv_buf one = {TV_DATA, 64, true};
    tv_publish(&t, 0, tv_chain(&t, 0, &one, 1));
    tv_kick(&t, 0);
    CHECK(tv_used_idx(&t, 0) == 0);
    /* a guest cannot clear NEEDS_RESET except by a reset */
    tv_wr(&t, VIRTIO_MMIO_STATUS, 0xf);
    CHECK(tv_broken(&t));
    CHECK(tv_setup(&t, 0, 1, 16) == 0xf);
    tv_publish(&t, 0, tv_chain(&t, 0, &one, 1));
    tv_kick(&t, 0);
    uint32_t id, len;
    CHECK(tv_take_used(&t, 0, &id, &len) == 1 && len == 64);
    tv_close(&t);
}

static void test_queue_set_up_outside_ram_breaks_the_device(void)
{
    struct tv t;
    struct vmm_device_config cfg = {.type = VMM_DEV_VIRTIO_RNG};
    CHECK(tv_open(&t, &virtio_rng_ops, &cfg, "virtio-rng.0") == 0);
    tv_wr(&t, VIRTIO_MMIO_STATUS, 3);
    tv_wr(&t, VIRTIO_MMIO_QUEUE_SEL, 0);
    tv_wr(&t, VIRTIO_MMIO_QUEUE_NUM, 16);
    tv_wr64(&t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0xfffffffffffff000ULL);
    tv_wr64(&t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, tv_avail(0));
    tv_wr64(&t, VIRTIO_MMIO_QUEUE_USED_LOW, tv_used(0));
    tv_wr(&t, VIRTIO_MMIO_QUEUE_READY, 1);
    CHECK(tv_rd(&t, VIRTIO_MMIO_QUEUE_READY) == 0 && tv_broken(&t));
    /* a queue size above QueueNumMax, on a fresh device */
    tv_wr(&t, VIRTIO_MMIO_STATUS, 0);
    CHECK(!tv_broken(&t));
    tv_wr(&t, VIRTIO_MMIO_QUEUE_NUM, 128);
    tv_wr64(&t, VIRTIO_MMIO_QUEUE_DESC_LOW, tv_desc(0));
    tv_wr(&t, VIRTIO_MMIO_QUEUE_READY, 1);
    CHECK(tv_rd(&t, VIRTIO_MMIO_QUEUE_READY) == 0 && tv_broken(&t));
    tv_close(&t);
}

static void test_transport_state_round_trips(void)
{
    struct tv t;
    struct vmm_device_config cfg = {.type = VMM_DEV_VIRTIO_RNG};
    CHECK(tv_open(&t, &virtio_rng_ops, &cfg, "virtio-rng.0") == 0);
    tv_setup(&t, 1ULL << VIRTIO_RING_F_INDIRECT_DESC, 1, 16);
    for (int i = 0; i < 5; i++) {
        struct tv_buf one = {TV_DATA, 8, true};
        tv_publish(&t, 0, tv_chain(&t, 0, &one, 1));
    }
    tv_kick(&t, 0);
    struct enc e;
    enc_init(&e);
    CHECK(t.d.ops->save(&t.d, &e) == 0 && e.err == 0);
    /* decode into the same kind of device, apply, and the queue carries on where it was */
    struct dec_val v;
    struct dec_map m;
    const uint8_t *p = e.buf;
    CHECK(dec_next(&p, e.buf + e.len, &v) == 0 && dec_as_map(&v, &m, "dev") == 0);
    void *st = NULL;
    tv_wr(&t, VIRTIO_MMIO_STATUS, 0);                        /* the device forgets everything */
    virtio_run(tv_vdev(&t));
    CHECK(t.d.ops->decode(&t.d, &m, 1, &st) == 0);
    t.d.ops->apply(&t.d, st);
    CHECK(tv_rd(&t, VIRTIO_MMIO_STATUS) == 0xf && tv_rd(&t, VIRTIO_MMIO_QUEUE_READY) == 1);
    CHECK(tv_vdev(&t)->vq[0].last_avail == 5 && tv_vdev(&t)->vq[0].used_idx == 5);
    struct tv_buf one = {TV_DATA, 8, true};
    tv_publish(&t, 0, tv_chain(&t, 0, &one, 1));
    tv_kick(&t, 0);
    CHECK(tv_used_idx(&t, 0) == 6);
    /* a section naming a queue outside RAM is refused, and nothing changes */
    enc_free(&e);
    enc_init(&e);
    enc_map(&e, 2);
    enc_kv_uint(&e, "v", 1);
    enc_str(&e, "transport");
    enc_map(&e, 9);
    const char *k[] = {"status", "dev_feat_sel", "drv_feat_sel", "queue_sel", "features", "isr",
                       "config_gen", "reset_pending"};
    for (int i = 0; i < 8; i++)
        enc_kv_uint(&e, k[i], i == 0 ? 0xf : i == 4 ? 1ULL << 32 : 0);
    enc_str(&e, "queues");
    enc_array(&e, 1);
    enc_array(&e, 7);
    uint64_t q[7] = {16, 1, TV_MEM, tv_avail(0), tv_used(0), 0, 0};
    for (int i = 0; i < 7; i++)
        enc_uint(&e, q[i]);
    p = e.buf;
    CHECK(dec_next(&p, e.buf + e.len, &v) == 0 && dec_as_map(&v, &m, "dev") == 0);
    CHECK(t.d.ops->decode(&t.d, &m, 1, &st) < 0);
    CHECK(tv_used_idx(&t, 0) == 6 && tv_vdev(&t)->vq[0].last_avail == 6);
    enc_free(&e);
    tv_close(&t);
}

int main(void)
{
    test_walker_takes_a_chain_readable_then_writable();
    test_walker_refuses_a_cycle();
    test_walker_refuses_a_chain_longer_than_the_queue();
    test_walker_refuses_indexes_past_the_queue();
    test_walker_refuses_buffers_outside_ram();
    test_walker_refuses_readable_after_writable();
    test_walker_refuses_an_avail_index_running_ahead();
    test_walker_bounds_indirect_tables();
    test_walker_checks_the_queue_configuration();
    test_walker_honours_no_interrupt();
    test_transport_identifies_a_modern_device();
    test_transport_refuses_features_without_version_1();
    test_rng_fills_the_guests_buffers();
    test_a_broken_ring_marks_the_device_needing_reset();
    test_queue_set_up_outside_ram_breaks_the_device();
    test_transport_state_round_trips();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
