/*
 * Unit tests of the native core's pure parts, no KVM needed: the exit handler fed synthetic and
 * hostile kvm_run exits, bus dispatch, and the vmstate reader fed hostile msgpack.
 * Prints "N passed, N failed" last.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"

static int passed, failed;

#define CHECK(cond) do { if (cond) passed++; else { failed++; \
    printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); } } while (0)

struct rec { uint64_t off; uint32_t len; bool w; uint8_t last; int calls; bool exit_on_write; };

static int record(struct device *d, uint64_t off, uint8_t *data, uint32_t len, bool is_write,
                  struct bus_req *req)
{
    struct rec *r = d->priv;
    r->off = off; r->len = len; r->w = is_write; r->calls++;
    if (is_write) r->last = data[0]; else memset(data, 0x42, len);
    if (is_write && r->exit_on_write) {
        req->kind = BUS_REQ_GUEST_EXIT;
        req->value = data[0];
    }
    return 0;
}

static const struct device_ops rec_ops = {.name = "rec", .access = record};

static struct device *rec_dev(struct rec *r)
{
    static struct device devs[8];   /* test fixture only */
    static int n;
    devs[n % 8] = (struct device){.ops = &rec_ops, .priv = r};
    return &devs[n++ % 8];
}

static size_t run_size(void) { return 4096; }

static struct kvm_run *new_run(void) { return calloc(1, run_size()); }

static void test_pio_out_dispatches_every_rep(void)
{
    struct bus pio = {0}, mmio = {0};
    struct rec r = {0};
    char err[128];
    int un;
    struct bus_req req;
    CHECK(bus_add(&pio, 0x3f8, 8, rec_dev(&r)) == 0);
    struct kvm_run *run = new_run();
    run->exit_reason = KVM_EXIT_IO;
    run->io.direction = KVM_EXIT_IO_OUT;
    run->io.port = 0x3f8; run->io.size = 1; run->io.count = 3; run->io.data_offset = 1024;
    memcpy((uint8_t *)run + 1024, "abc", 3);
    CHECK(vcpu_handle_exit(run, run_size(), &pio, &mmio, &un, &req, err, sizeof(err)) == EXIT_CONTINUE);
    CHECK(r.calls == 3 && r.last == 'c' && r.w && un == 0);
    free(run);
}

static void test_pio_read_of_nothing_floats_high(void)
{
    struct bus pio = {0}, mmio = {0};
    char err[128];
    int un;
    struct bus_req req;
    struct kvm_run *run = new_run();
    run->exit_reason = KVM_EXIT_IO;
    run->io.direction = KVM_EXIT_IO_IN;
    run->io.port = 0x80; run->io.size = 4; run->io.count = 1; run->io.data_offset = 1024;
    CHECK(vcpu_handle_exit(run, run_size(), &pio, &mmio, &un, &req, err, sizeof(err)) == EXIT_CONTINUE);
    CHECK(*(uint32_t *)((uint8_t *)run + 1024) == 0xffffffffu && un == 1);
    free(run);
}

static void test_hostile_pio_exits_are_errors(void)
{
    struct bus pio = {0}, mmio = {0};
    char err[128];
    int un;
    struct bus_req req;
    struct kvm_run *run = new_run();
    run->exit_reason = KVM_EXIT_IO;
    run->io.size = 4; run->io.count = 2000; run->io.data_offset = 1024;      /* past the page */
    CHECK(vcpu_handle_exit(run, run_size(), &pio, &mmio, &un, &req, err, sizeof(err)) == EXIT_ERROR);
    run->io.count = 1000;                                                   /* fits, not at 1024 */
    CHECK(vcpu_handle_exit(run, run_size(), &pio, &mmio, &un, &req, err, sizeof(err)) == EXIT_ERROR);
    run->io.count = 1; run->io.data_offset = 1u << 30;                      /* offset outside */
    CHECK(vcpu_handle_exit(run, run_size(), &pio, &mmio, &un, &req, err, sizeof(err)) == EXIT_ERROR);
    run->io.data_offset = 1024; run->io.size = 3;                            /* no such width */
    CHECK(vcpu_handle_exit(run, run_size(), &pio, &mmio, &un, &req, err, sizeof(err)) == EXIT_ERROR);
    run->io.size = 1; run->io.count = 0xffffffffu; run->io.data_offset = 8;  /* wraps if unchecked */
    CHECK(vcpu_handle_exit(run, run_size(), &pio, &mmio, &un, &req, err, sizeof(err)) == EXIT_ERROR);
    free(run);
}

static void test_mmio_dispatch_and_bad_length(void)
{
    struct bus pio = {0}, mmio = {0};
    struct rec r = {0};
    char err[128];
    int un;
    struct bus_req req;
    CHECK(bus_add(&mmio, 0xd0000000, 0x1000, rec_dev(&r)) == 0);
    struct kvm_run *run = new_run();
    run->exit_reason = KVM_EXIT_MMIO;
    run->mmio.phys_addr = 0xd0000010; run->mmio.len = 8; run->mmio.is_write = 0;
    CHECK(vcpu_handle_exit(run, run_size(), &pio, &mmio, &un, &req, err, sizeof(err)) == EXIT_CONTINUE);
    CHECK(r.off == 0x10 && r.len == 8 && run->mmio.data[7] == 0x42);
    run->mmio.phys_addr = 0xd0000ffc;          /* straddles the end: nobody owns it */
    r.calls = 0;
    CHECK(vcpu_handle_exit(run, run_size(), &pio, &mmio, &un, &req, err, sizeof(err)) == EXIT_CONTINUE);
    CHECK(r.calls == 0 && run->mmio.data[0] == 0xff && un == 1);
    run->mmio.len = 9;
    CHECK(vcpu_handle_exit(run, run_size(), &pio, &mmio, &un, &req, err, sizeof(err)) == EXIT_ERROR);
    run->mmio.len = 0;
    CHECK(vcpu_handle_exit(run, run_size(), &pio, &mmio, &un, &req, err, sizeof(err)) == EXIT_ERROR);
    free(run);
}

static void test_other_exits(void)
{
    struct bus pio = {0}, mmio = {0};
    char err[128];
    int un;
    struct bus_req req;
    struct kvm_run *run = new_run();
    run->exit_reason = KVM_EXIT_SHUTDOWN;      /* a triple fault is a reset */
    CHECK(vcpu_handle_exit(run, run_size(), &pio, &mmio, &un, &req, err, sizeof(err)) == EXIT_RESET);
    run->exit_reason = KVM_EXIT_SYSTEM_EVENT;
    run->system_event.type = KVM_SYSTEM_EVENT_SHUTDOWN;
    CHECK(vcpu_handle_exit(run, run_size(), &pio, &mmio, &un, &req, err, sizeof(err)) == EXIT_SHUTDOWN);
    run->system_event.type = KVM_SYSTEM_EVENT_RESET;
    CHECK(vcpu_handle_exit(run, run_size(), &pio, &mmio, &un, &req, err, sizeof(err)) == EXIT_RESET);
    run->system_event.type = KVM_SYSTEM_EVENT_CRASH;
    CHECK(vcpu_handle_exit(run, run_size(), &pio, &mmio, &un, &req, err, sizeof(err)) == EXIT_ERROR);
    run->exit_reason = KVM_EXIT_INTR;
    CHECK(vcpu_handle_exit(run, run_size(), &pio, &mmio, &un, &req, err, sizeof(err)) == EXIT_CONTINUE);
    run->exit_reason = KVM_EXIT_INTERNAL_ERROR;
    CHECK(vcpu_handle_exit(run, run_size(), &pio, &mmio, &un, &req, err, sizeof(err)) == EXIT_ERROR);
    CHECK(strstr(err, "INTERNAL_ERROR") != NULL);
    run->exit_reason = 9999;
    CHECK(vcpu_handle_exit(run, run_size(), &pio, &mmio, &un, &req, err, sizeof(err)) == EXIT_ERROR);
    free(run);
}

static void test_bus_refuses_overlap_and_wrap(void)
{
    struct bus b = {0};
    struct rec r = {0};
    CHECK(bus_add(&b, 0x100, 0x10, rec_dev(&r)) == 0);
    CHECK(bus_add(&b, 0x108, 0x10, rec_dev(&r)) < 0);
    CHECK(bus_add(&b, 0x0f8, 0x10, rec_dev(&r)) < 0);
    CHECK(bus_add(&b, ~0ULL - 4, 0x10, rec_dev(&r)) < 0);
    CHECK(bus_add(&b, 0x50, 0x10, rec_dev(&r)) == 0);   /* sorted insert before */
    uint8_t d[1];
    struct bus_req req = {0};
    CHECK(bus_dispatch(&b, 0x55, d, 1, false, &req) == 1 && r.off == 5);
    CHECK(bus_dispatch(&b, 0x60, d, 1, false, &req) == 0);
}

static void test_codec_round_trip(void)
{
    struct enc e;
    enc_init(&e);
    enc_map(&e, 3);
    enc_kv_uint(&e, "a", 0x123456789ULL);
    enc_kv_bin(&e, "b", "xyz", 3);
    enc_kv_str(&e, "c", "hello");
    const uint8_t *p = e.buf;
    struct dec_val v;
    struct dec_map m;
    uint64_t u;
    char s[8];
    uint8_t b[3];
    CHECK(dec_next(&p, e.buf + e.len, &v) == 0 && dec_as_map(&v, &m, "t") == 0);
    CHECK(dec_get_uint(&m, "a", &u) == 0 && u == 0x123456789ULL);
    CHECK(dec_get_bin_exact(&m, "b", b, 3) == 0 && memcmp(b, "xyz", 3) == 0);
    CHECK(dec_get_bin_exact(&m, "b", b, 2) < 0);            /* wrong size refused */
    CHECK(dec_get_str(&m, "c", s, sizeof(s)) == 0 && strcmp(s, "hello") == 0);
    CHECK(dec_get_str(&m, "c", s, 3) < 0);                  /* does not fit: refused */
    CHECK(dec_get_uint(&m, "b", &u) < 0);                   /* wrong type */
    CHECK(dec_get_uint(&m, "zz", &u) < 0);                  /* missing */
    for (size_t cut = 0; cut < e.len; cut++) {              /* every truncation is caught */
        p = e.buf;
        CHECK(dec_next(&p, e.buf + cut, &v) < 0);
    }
    enc_free(&e);
}

static void test_codec_hostile_input(void)
{
    const uint8_t *p;
    struct dec_val v;
    uint8_t huge_bin[] = {0xc6, 0xff, 0xff, 0xff, 0xff, 0};        /* 4 GiB bin in 6 bytes */
    p = huge_bin;
    CHECK(dec_next(&p, huge_bin + sizeof(huge_bin), &v) < 0);
    uint8_t huge_map[] = {0xdf, 0xff, 0xff, 0xff, 0xff};             /* 4G entries, no data */
    p = huge_map;
    CHECK(dec_next(&p, huge_map + sizeof(huge_map), &v) < 0);
    uint8_t deep[64];
    memset(deep, 0x91, sizeof(deep));                                /* [[[[...]]]] */
    p = deep;
    CHECK(dec_next(&p, deep + sizeof(deep), &v) < 0);
    uint8_t unknown[] = {0xc1};                                      /* never used */
    p = unknown;
    CHECK(dec_next(&p, unknown + 1, &v) < 0);
    uint8_t neg[] = {0xff};                                          /* negative fixint: unused */
    p = neg;
    CHECK(dec_next(&p, neg + 1, &v) < 0);
}

static void test_device_exit_request_ends_the_run(void)
{
    struct bus pio = {0}, mmio = {0};
    struct rec r = {.exit_on_write = true};
    struct bus_req req;
    char err[128];
    int un;
    CHECK(bus_add(&pio, 0x500, 16, rec_dev(&r)) == 0);
    struct kvm_run *run = new_run();
    run->exit_reason = KVM_EXIT_IO;
    run->io.direction = KVM_EXIT_IO_OUT;
    run->io.port = 0x500; run->io.size = 1; run->io.count = 1; run->io.data_offset = 1024;
    ((uint8_t *)run)[1024] = 7;
    CHECK(vcpu_handle_exit(run, run_size(), &pio, &mmio, &un, &req, err, sizeof(err))
          == EXIT_GUEST_EXIT);
    CHECK(req.kind == BUS_REQ_GUEST_EXIT && req.value == 7);
    free(run);
}

/* The gm layer over a fake two-region guest memory: every bound is overflow safe. */
static void test_gm_bounds_are_overflow_safe(void)
{
    struct guest_mem m;
    uint64_t gpas[2] = {0, 0x100000000ULL}, sizes[2] = {0x10000, 0x10000};
    CHECK(mem_alloc(&m, gpas, sizes, 2, VMM_MEM_ANON) == 0);
    uint8_t buf[16] = {1, 2, 3};
    CHECK(gm_write(&m, 0x100, buf, 16) == 0);
    CHECK(abit_test(m.dirty, 0));                                   /* write marked dirty */
    CHECK(gm_write(&m, 0x100000000ULL + 0xfff8, buf, 8) == 0);      /* last bytes of region 2 */
    CHECK(abit_test(m.dirty, (0x10000 + 0xfff8) / 4096));
    CHECK(gm_write(&m, 0xfff8, buf, 16) < 0);                       /* straddles the hole */
    CHECK(gm_read(&m, ~0ULL - 4, buf, 16) < 0);                     /* wraps */
    CHECK(gm_read(&m, 0x100, buf, ~0ULL) < 0);                      /* huge length */
    CHECK(gm_read(&m, 0x100000000ULL - 8, buf, 16) < 0);            /* ends in the hole */
    CHECK(gm_slice(&m, 0x20000, 1, false) == NULL);                 /* in the hole */
    uint16_t v;
    CHECK(gm_load_acquire16(&m, 0x101, &v) < 0);                    /* unaligned index */
    CHECK(gm_store_release16(&m, 0x102, 0xbeef) == 0 && gm_load_acquire16(&m, 0x102, &v) == 0 &&
          v == 0xbeef);
    mem_fail(&m, "test");
    CHECK(gm_read(&m, 0x100, buf, 4) < 0);                          /* not truthful: refused */
    CHECK(strstr(vmm_last_error(), "no longer truthful") != NULL);
    mem_free(&m);
}

struct writer { struct guest_mem *m; int first; };

static void *write_every_fourth(void *arg)
{
    struct writer *w = arg;
    uint8_t b = 1;
    for (int round = 0; round < 200; round++)
        for (int p = w->first; p < 1024; p += 4)
            gm_write(w->m, (uint64_t)p * 4096, &b, 1);
    return NULL;
}

/* Four device threads writing pages that share dirty-bitmap words lose no bit. */
static void test_concurrent_writes_keep_every_dirty_bit(void)
{
    struct guest_mem m;
    uint64_t gpa = 0, size = 1024 * 4096;
    CHECK(mem_alloc(&m, &gpa, &size, 1, VMM_MEM_ANON) == 0);
    pthread_t t[4];
    struct writer w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (struct writer){&m, i};
        pthread_create(&t[i], NULL, write_every_fourth, &w[i]);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    int set = 0;
    for (int p = 0; p < 1024; p++)
        set += abit_test(m.dirty, p);
    CHECK(set == 1024);
    mem_free(&m);
}

static void test_crc32c_known_value(void)
{
    CHECK(crc32c(0, "123456789", 9) == 0xE3069283u);   /* the standard check value */
    static uint8_t buf[4099];                          /* the 8-byte path and a tail */
    for (int i = 0; i < 4099; i++)
        buf[i] = (uint8_t)(i % 251);
    CHECK(crc32c(0, buf, sizeof(buf)) == 0x987a5180u);  /* tests/helpers.py, bit by bit */
    CHECK(crc32c(crc32c(0, buf, 1000), buf + 1000, 3099) == 0x987a5180u);   /* in pieces */
}

int main(void)
{
    test_pio_out_dispatches_every_rep();
    test_pio_read_of_nothing_floats_high();
    test_hostile_pio_exits_are_errors();
    test_mmio_dispatch_and_bad_length();
    test_other_exits();
    test_bus_refuses_overlap_and_wrap();
    test_codec_round_trip();
    test_codec_hostile_input();
    test_device_exit_request_ends_the_run();
    test_gm_bounds_are_overflow_safe();
    test_concurrent_writes_keep_every_dirty_bit();
    test_crc32c_known_value();
    printf("native: %d passed, %d failed\n", passed, failed);
    return failed != 0;
}
