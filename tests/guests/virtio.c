/*
 * virtio: a hand-written virtio-mmio driver at CPL3 (interrupts off: it polls the used ring).
 * The host puts a struct vparams at PARAMS + 0x80 saying which device window to drive and how:
 *   MODE_RNG      n requests of 64 bytes to virtio-rng (n = 0: forever); results[0] counts the
 *                 completed ones, results[1] the all-zero answers. Exit code = failures.
 *   MODE_HOSTILE  for each kind of garbage: set the queue up, write the garbage, ring, and wait
 *                 for DEVICE_NEEDS_RESET; then reset and check one good request still works.
 *                 results[2] = kinds refused as they should be. Exit code = kinds that were not.
 *   MODE_BLK      virtio-blk: GET_ID, read sector 0 (the host's pattern), write `n` sectors of
 *                 a pattern at sector 8, flush, read them back. Exit code = mismatches.
 *   MODE_VSOCK    virtio-vsock (CID 3): accepts every host connection and echoes what it gets;
 *                 each time the host bumps `seq` it connects to the host's port `n` and sends
 *                 "hello from guest". results[0] = bytes echoed, [1] = connections ended,
 *                 [2] = transport resets seen, [3] = seq once its connection was answered.
 *   MODE_NET      virtio-net (queues 0 rx, 1 tx): every frame received that is not a TCP reset
 *                 for our last SYN is sent back with its Ethernet source set to the MAC in the
 *                 config space (read each time: a restore may bring another) and its destination
 *                 set to the frame's source. Each time the host bumps `seq`, a TCP SYN goes to
 *                 IPv4 `n` (host order) port `seed` from port 40000 + seq. results[0] = frames
 *                 echoed, [1] = their bytes, [2] = resets for our SYNs, [3] = seq once sent.
 *   MODE_NET_MRG  virtio-net with VIRTIO_NET_F_MRG_RXBUF and the whole rx ring posted as
 *                 buffers of `n` bytes each: every frame is gathered from the num_buffers
 *                 buffers it came in and echoed as in MODE_NET. results[0] = frames echoed,
 *                 [1] = their bytes, [2] = buffers returned empty (frames the device dropped),
 *                 [3] = the most buffers one frame took.
 *   MODE_SERVE    virtio-blk, driven by the host: each time it bumps `seq`, run `cmd` (CMD_WRITE:
 *                 write n sectors of the pattern of `seed` at sector 8 and flush; CMD_CHECK: read
 *                 them and count mismatches with that pattern), then results[0] = mismatches,
 *                 results[3] = seq. Never exits (the host pauses and snapshots it between).
 */
#include "guest.h"

#define MODE_RNG 1
#define MODE_HOSTILE 2
#define MODE_BLK 3
#define MODE_SERVE 4
#define MODE_VSOCK 5
#define MODE_NET 6
#define MODE_NET_MRG 7
#define CMD_WRITE 1
#define CMD_CHECK 2

struct vparams {
    u64 base;                  /* the device's MMIO window */
    u64 mode;
    u64 n;
    u64 seed;
    volatile u64 seq;          /* MODE_SERVE: the host's command count */
    u64 cmd;
};
#define VP ((volatile struct vparams *)(0x8000 + 0x80))

#define QSIZE 16
#define RING ((u64)DATA + 0x100000)      /* desc, avail +0x1000, used +0x2000 */
#define BUF ((u64)DATA + 0x200000)       /* buffers */
#define ROGUE ((u64)DATA + 0x300000)     /* indirect tables and such */

struct desc { u64 addr; u32 len; u16 flags; u16 next; };

static volatile u32 *reg(u32 off) { return (volatile u32 *)(VP->base + off); }
static struct desc *descs(void) { return (struct desc *)RING; }
static volatile u16 *avail(void) { return (volatile u16 *)(RING + 0x1000); }
static volatile u16 *used(void) { return (volatile u16 *)(RING + 0x2000); }
static u16 avail_idx, used_seen;

static void zero(u64 addr, u64 len)
{
    for (u64 i = 0; i < len; i += 8)
        *(volatile u64 *)(addr + i) = 0;
}

/* Status, features (VERSION_1 and `feat_lo`), queue 0..nq-1 at RING + q * 0x4000, DRIVER_OK. */
static u32 setup(u32 feat_lo, int nq)
{
    *reg(0x70) = 0;
    *reg(0x70) = 3;
    *reg(0x24) = 0;
    *reg(0x20) = feat_lo;
    *reg(0x24) = 1;
    *reg(0x20) = 1;                       /* VIRTIO_F_VERSION_1 */
    *reg(0x70) = 3 | 8;
    if (!(*reg(0x70) & 8))
        return 0;
    for (int q = 0; q < nq; q++) {
        u64 base = RING + (u64)q * 0x4000;
        zero(base, 0x4000);
        *reg(0x30) = (u32)q;
        *reg(0x38) = QSIZE;
        *reg(0x80) = (u32)base;
        *reg(0x84) = (u32)(base >> 32);
        *reg(0x90) = (u32)(base + 0x1000);
        *reg(0x94) = 0;
        *reg(0xa0) = (u32)(base + 0x2000);
        *reg(0xa4) = 0;
        *reg(0x44) = 1;
    }
    avail_idx = used_seen = 0;
    *reg(0x70) = 3 | 8 | 4;
    return *reg(0x70);
}

static void publish(u16 head)
{
    avail()[2 + avail_idx % QSIZE] = head;
    __asm__ volatile("" ::: "memory");
    avail()[1] = ++avail_idx;
    __asm__ volatile("mfence" ::: "memory");
    *reg(0x50) = 0;
}

/* Waits for the next used entry; its length, or -1 after too long or when the device broke. */
static long long wait_used(void)
{
    for (u64 spin = 0; spin < 200000000ULL; spin++) {
        if (used()[1] != used_seen) {
            u32 len = *(volatile u32 *)(RING + 0x2000 + 4 + 8 * (used_seen % QSIZE) + 4);
            used_seen++;
            return len;
        }
        if (*reg(0x70) & 64)
            return -1;
    }
    return -1;
}

static int wait_broken(void)
{
    for (u64 spin = 0; spin < 200000000ULL; spin++)
        if (*reg(0x70) & 64)
            return (*reg(0x60) & 2) != 0;   /* with a config-change interrupt */
    return 0;
}

static void desc_set(u16 i, u64 addr, u32 len, u16 flags, u16 next)
{
    descs()[i].addr = addr;
    descs()[i].len = len;
    descs()[i].flags = flags;
    descs()[i].next = next;
}

static u32 rng_once(u32 i)
{
    u64 buf = BUF + (i % QSIZE) * 64;
    zero(buf, 64);
    u16 d = (u16)(i % QSIZE);
    desc_set(d, buf, 64, 2, 0);
    publish(d);
    long long len = wait_used();
    if (len != 64)
        return 1;
    u64 any = 0;
    for (int k = 0; k < 8; k++)
        any |= ((volatile u64 *)buf)[k];
    if (!any)
        RESULTS[1]++;
    RESULTS[0]++;
    return 0;
}

static u32 mode_rng(void)
{
    u32 bad = setup(0, 1) == 0xf ? 0 : 1000;
    for (u32 i = 0; !bad && (VP->n == 0 || i < VP->n); i++)
        bad += rng_once(i);
    return bad;
}

/* Each kind of garbage, written into a queue that was set up properly. */
static void garbage(int kind)
{
    switch (kind) {
    case 0:   /* a descriptor that chains to itself */
        desc_set(0, BUF, 64, 1 | 2, 0);
        publish(0);
        break;
    case 1:   /* a buffer outside guest RAM */
        desc_set(0, 0xffffff000000ULL, 64, 2, 0);
        publish(0);
        break;
    case 2:   /* next index past the queue */
        desc_set(0, BUF, 64, 1 | 2, 999);
        publish(0);
        break;
    case 3:   /* the avail index running far ahead */
        desc_set(0, BUF, 64, 2, 0);
        avail()[1] = 1000;
        *reg(0x50) = 0;
        break;
    case 4:   /* an indirect table, not negotiated */
        desc_set(0, ROGUE, 32, 4, 0);
        publish(0);
        break;
    case 5:   /* a head index past the queue */
        avail()[2 + avail_idx % QSIZE] = 0x7777;
        avail()[1] = ++avail_idx;
        *reg(0x50) = 0;
        break;
    case 6:   /* a readable buffer where the device only writes */
        desc_set(0, BUF, 64, 0, 0);
        publish(0);
        break;
    }
}
#define KINDS 7

static u32 mode_hostile(void)
{
    u32 bad = 0;
    for (int kind = 0; kind < KINDS; kind++) {
        if (setup(0, 1) != 0xf) {
            bad++;
            continue;
        }
        garbage(kind);
        if (!wait_broken()) {
            puts("garbage not refused: ");
            putdec((u64)kind);
            putc('\n');
            bad++;
            continue;
        }
        /* after a reset the device works again */
        if (setup(0, 1) != 0xf || rng_once(0)) {
            bad++;
            continue;
        }
        RESULTS[2]++;
    }
    /* rings outside RAM at QueueReady: refused on the spot */
    *reg(0x70) = 0;
    *reg(0x70) = 3;
    *reg(0x24) = 1;
    *reg(0x20) = 1;
    *reg(0x70) = 3 | 8;
    *reg(0x30) = 0;
    *reg(0x38) = QSIZE;
    *reg(0x80) = 0;
    *reg(0x84) = 0x100;                   /* desc at 1 TiB */
    *reg(0x44) = 1;
    if (*reg(0x44) || !(*reg(0x70) & 64))
        bad++;
    else
        RESULTS[2]++;
    return bad;
}

/* ---------- virtio-blk ---------- */

struct blk_req { u32 type, reserved; u64 sector; };

/* One request: header, optional data (dir: 0 none, 1 device reads, 2 device writes), status. */
static int blk_rw(u32 type, u64 sector, u64 data, u32 len, int dir)
{
    struct blk_req *h = (struct blk_req *)(BUF + 0xf000);
    volatile u8 *status = (volatile u8 *)(BUF + 0xf100);
    h->type = type;
    h->reserved = 0;
    h->sector = sector;
    *status = 0xff;
    desc_set(0, (u64)h, 16, 1, 1);
    u16 last = 1;
    if (dir) {
        desc_set(1, data, len, (u16)(1 | (dir == 2 ? 2 : 0)), 2);
        last = 2;
    } else {
        descs()[0].next = 1;
    }
    desc_set(last, (u64)status, 1, 2, 0);
    publish(0);
    if (wait_used() < 0)
        return -1;
    return *status;
}

static u32 mode_blk(void)
{
    u32 bad = setup(0, 1) == 0xf ? 0 : 1000;
    volatile u8 *buf = (volatile u8 *)(BUF + 0x10000);
    if (blk_rw(8, 0, (u64)buf, 20, 2) != 0)                       /* GET_ID */
        bad++;
    else if (buf[0] != 'v' || buf[1] != 'm' || buf[2] != 'm' || buf[3] != 'd')
        bad++;
    if (blk_rw(0, 0, (u64)buf, 512, 2) != 0)                      /* read sector 0 */
        bad++;
    for (int i = 0; i < 512; i++)
        if (buf[i] != (u8)(i ^ 0x5a))
            bad++;
    u32 n = (u32)(VP->n ? VP->n : 8);
    for (u32 i = 0; i < n * 512; i++)
        buf[i] = (u8)(i * 7 + VP->seed);
    if (blk_rw(1, 8, (u64)buf, n * 512, 1) != 0)                  /* write */
        bad++;
    if (blk_rw(4, 0, 0, 0, 0) != 0)                               /* flush */
        bad++;
    zero((u64)buf, n * 512);
    if (blk_rw(0, 8, (u64)buf, n * 512, 2) != 0)                  /* read back */
        bad++;
    for (u32 i = 0; i < n * 512; i++)
        if (buf[i] != (u8)(i * 7 + VP->seed))
            bad++;
    RESULTS[0] = bad;
    return bad;
}

static u32 blk_pattern(int check)
{
    volatile u8 *buf = (volatile u8 *)(BUF + 0x10000);
    u32 n = (u32)(VP->n ? VP->n : 8), bad = 0;
    u8 seed = (u8)VP->seed;
    if (!check) {
        for (u32 i = 0; i < n * 512; i++)
            buf[i] = (u8)(i * 13 + seed);
        if (blk_rw(1, 8, (u64)buf, n * 512, 1) != 0 || blk_rw(4, 0, 0, 0, 0) != 0)
            bad++;
        return bad;
    }
    zero((u64)buf, n * 512);
    if (blk_rw(0, 8, (u64)buf, n * 512, 2) != 0)
        bad++;
    for (u32 i = 0; i < n * 512; i++)
        if (buf[i] != (u8)(i * 13 + seed))
            bad++;
    return bad;
}

static void mode_serve(void)
{
    if (setup(0, 1) != 0xf)
        guest_exit(1000);
    u64 seen = 0;
    for (;;) {
        while (VP->seq == seen)
            ;
        seen = VP->seq;
        RESULTS[0] = blk_pattern(VP->cmd == CMD_CHECK);
        __asm__ volatile("mfence" ::: "memory");
        RESULTS[3] = seen;
    }
}

/* ---------- virtio-vsock: an echo server, per-queue rings ---------- */

#define VQ_RX 0
#define VQ_TX 1
#define VQ_EV 2
#define PKT ((u64)DATA + 0x400000)       /* rx buffers: 8 x 4 KiB; tx: 16 x 4 KiB after them */
static u16 q_avail[3], q_used[3];

static struct desc *qdesc(int q) { return (struct desc *)(RING + (u64)q * 0x4000); }
static volatile u16 *qavail(int q) { return (volatile u16 *)(RING + (u64)q * 0x4000 + 0x1000); }
static volatile u16 *qused(int q) { return (volatile u16 *)(RING + (u64)q * 0x4000 + 0x2000); }

static void qpublish(int q, u16 head)
{
    qavail(q)[2 + q_avail[q] % QSIZE] = head;
    __asm__ volatile("" ::: "memory");
    qavail(q)[1] = ++q_avail[q];
    __asm__ volatile("mfence" ::: "memory");
    *reg(0x50) = (u32)q;
}

/* The next used element of queue q: its descriptor, or -1. */
static int qtake(int q)
{
    if (qused(q)[1] == q_used[q])
        return -1;
    u32 id = *(volatile u32 *)((u64)qused(q) + 4 + 8 * (q_used[q] % QSIZE));
    q_used[q]++;
    return (int)id;
}

struct vhdr { u64 src_cid, dst_cid; u32 src_port, dst_port, len; u16 type, op;
              u32 flags, buf_alloc, fwd_cnt; } __attribute__((packed));
static u32 fwd[16];                      /* bytes consumed per connection (by our port) */

static void post_rx(u16 i)
{
    struct desc *d = &qdesc(VQ_RX)[i];
    d->addr = PKT + (u64)i * 0x1000;
    d->len = 0x1000;
    d->flags = 2;
    d->next = 0;
    qpublish(VQ_RX, i);
}

static void send_vsock(u32 src_port, u32 dst_port, u16 op, const u8 *data, u32 len)
{
    static u16 n;
    u16 i = (u16)(n++ % QSIZE);
    volatile u8 *b = (volatile u8 *)(PKT + 0x8000 + (u64)i * 0x1000);
    struct vhdr h = {3, 2, src_port, dst_port, len, 1, op, 0, 65536, fwd[src_port % 16]};
    for (u32 k = 0; k < sizeof(h); k++)
        b[k] = ((u8 *)&h)[k];
    for (u32 k = 0; k < len; k++)
        b[sizeof(h) + k] = data[k];
    struct desc *d = &qdesc(VQ_TX)[i];
    d->addr = (u64)b;
    d->len = (u32)sizeof(h) + len;
    d->flags = 0;
    d->next = 0;
    qpublish(VQ_TX, i);
    while (qtake(VQ_TX) < 0)             /* the device takes it at once, on its event loop */
        ;
}

static void mode_vsock(void)
{
    if (setup(0, 3) != 0xf)
        guest_exit(1000);
    struct desc *e = &qdesc(VQ_EV)[0];
    e->addr = PKT + 0x18000;
    e->len = 4;
    e->flags = 2;
    qpublish(VQ_EV, 0);
    for (u16 i = 0; i < 8; i++)
        post_rx(i);
    mark(0x7500);                        /* the driver is up */
    u64 seen = 0;
    u32 my_port = 0;
    static const u8 hello[] = "hello from guest";
    for (;;) {
        int id = qtake(VQ_RX);
        if (id >= 0) {
            struct vhdr *h = (struct vhdr *)(PKT + (u64)id * 0x1000);
            const u8 *payload = (const u8 *)(h + 1);
            if (h->op == 1) {                                 /* REQUEST: accept */
                fwd[h->dst_port % 16] = 0;
                send_vsock(h->dst_port, h->src_port, 2, 0, 0);
            }
            else if (h->op == 5 && h->len <= 0x1000 - sizeof(*h)) {   /* RW: echo */
                fwd[h->dst_port % 16] += h->len;
                RESULTS[0] += h->len;
                send_vsock(h->dst_port, h->src_port, 5, payload, h->len);
            } else if (h->op == 2 && h->dst_port == my_port) {   /* our connect answered */
                send_vsock(my_port, h->src_port, 5, hello, sizeof(hello) - 1);
                RESULTS[3] = seen;
            } else if (h->op == 3 || h->op == 4) {
                if (h->op == 4)                              /* shut down: complete it */
                    send_vsock(h->dst_port, h->src_port, 3, 0, 0);
                RESULTS[1]++;
            }
            post_rx((u16)id);
        }
        if (qtake(VQ_EV) >= 0) {
            RESULTS[2]++;
            qpublish(VQ_EV, 0);
        }
        if (VP->seq != seen) {
            seen = VP->seq;
            my_port = 2000 + (u32)seen;
            fwd[my_port % 16] = 0;
            send_vsock(my_port, (u32)VP->n, 1, 0, 0);
        }
    }
}

/* ---------- virtio-net: an echo, and SYNs on request ---------- */

#define NET_HDR 12
#define NET_RXBUF 0x1000
#define SYN_PORT_BASE 40000

/* The next used element of queue q: its descriptor and length, or -1. */
static int qtake_len(int q, u32 *len)
{
    if (qused(q)[1] == q_used[q])
        return -1;
    volatile u32 *e = (volatile u32 *)((u64)qused(q) + 4 + 8 * (q_used[q] % QSIZE));
    u32 id = e[0];
    *len = e[1];
    q_used[q]++;
    return (int)id;
}

/* Posts rx buffer i: `size` writable bytes at its 4 KiB slot. */
static void net_post_rx_sized(u16 i, u32 size)
{
    struct desc *d = &qdesc(VQ_RX)[i];
    d->addr = PKT + (u64)i * NET_RXBUF;
    d->len = size;
    d->flags = 2;
    d->next = 0;
    qpublish(VQ_RX, i);
}

static void net_post_rx(u16 i) { net_post_rx_sized(i, NET_RXBUF); }

static void net_send(const volatile u8 *frame, u32 len)
{
    static u16 n;
    u16 i = (u16)(n++ % QSIZE);
    volatile u8 *b = (volatile u8 *)(PKT + 0x10000 + (u64)i * 0x1000);
    for (u32 k = 0; k < NET_HDR; k++)
        b[k] = 0;
    for (u32 k = 0; k < len; k++)
        b[NET_HDR + k] = frame[k];
    struct desc *d = &qdesc(VQ_TX)[i];
    d->addr = (u64)b;
    d->len = NET_HDR + len;
    d->flags = 0;
    d->next = 0;
    qpublish(VQ_TX, i);
    while (qtake(VQ_TX) < 0)             /* the device takes it on its event loop */
        ;
}

static void net_mac(volatile u8 *out)
{
    for (int i = 0; i < 6; i++)
        out[i] = *(volatile u8 *)(VP->base + 0x100 + (u64)i);
}

/* Sends frame f back to its source from the config's MAC; counts it in results[0] and [1]. */
static void net_echo(volatile u8 *f, u32 flen)
{
    for (int i = 0; i < 6; i++)
        f[i] = f[6 + i];
    net_mac(f + 6);
    net_send(f, flen);
    RESULTS[0]++;
    RESULTS[1] += flen;
}

static u16 be16(const volatile u8 *p) { return (u16)(p[0] << 8 | p[1]); }

static void net_syn(u32 dst, u16 dport, u16 sport)
{
    volatile u8 *f = (volatile u8 *)(PKT + 0x30000);
    for (int i = 0; i < 54; i++)
        f[i] = 0;
    for (int i = 0; i < 6; i++)
        f[i] = 0x02;                     /* to the gateway's MAC (the backend ignores it) */
    net_mac(f + 6);
    f[12] = 0x08;
    volatile u8 *ip = f + 14, *t = f + 34;
    ip[0] = 0x45;
    ip[3] = 40;
    ip[8] = 64;
    ip[9] = 6;
    ip[12] = 10; ip[13] = 0; ip[14] = 2; ip[15] = 15;
    ip[16] = (u8)(dst >> 24); ip[17] = (u8)(dst >> 16); ip[18] = (u8)(dst >> 8); ip[19] = (u8)dst;
    t[0] = (u8)(sport >> 8); t[1] = (u8)sport;
    t[2] = (u8)(dport >> 8); t[3] = (u8)dport;
    t[4] = 0x11; t[5] = 0x22; t[6] = 0x33; t[7] = 0x44;
    t[12] = 5 << 4;
    t[13] = 0x02;
    t[14] = 0xfa;
    net_send(f, 54);
}

static void mode_net(void)
{
    if (setup(1u << 5 | 1u << 16, 2) != 0xf)
        guest_exit(1000);
    for (u16 i = 0; i < 8; i++)
        net_post_rx(i);
    mark(0x4e00);                        /* the driver is up */
    u64 seen = 0;
    u16 syn_port = 0;
    for (;;) {
        u32 len;
        int id = qtake_len(VQ_RX, &len);
        if (id >= 0 && len > NET_HDR + 14) {
            volatile u8 *f = (volatile u8 *)(PKT + (u64)id * NET_RXBUF + NET_HDR);
            u32 flen = len - NET_HDR;
            volatile u8 *t = f + 34;
            if (flen >= 54 && be16(f + 12) == 0x0800 && f[23] == 6 && (t[13] & 4) &&
                be16(t + 2) == syn_port) {
                RESULTS[2]++;
            } else {
                net_echo(f, flen);
            }
        }
        if (id >= 0)
            net_post_rx((u16)id);
        if (VP->seq != seen) {
            seen = VP->seq;
            syn_port = (u16)(SYN_PORT_BASE + seen % 1000);
            net_syn((u32)VP->n, (u16)VP->seed, syn_port);
            RESULTS[3] = seen;
        }
    }
}

#define MRG_OUT ((volatile u8 *)(PKT + 0x20000))   /* a gathered frame */

static void mode_net_mrg(void)
{
    u32 size = (u32)VP->n;
    if (size < NET_HDR || size > NET_RXBUF ||
        setup(1u << 5 | 1u << 15 | 1u << 16, 2) != 0xf)
        guest_exit(1001);
    for (u16 i = 0; i < QSIZE; i++)
        net_post_rx_sized(i, size);
    mark(0x4e01);                        /* the driver is up */
    for (;;) {
        u32 len;
        int id = qtake_len(VQ_RX, &len);
        if (id < 0)
            continue;
        volatile u8 *b = (volatile u8 *)(PKT + (u64)id * NET_RXBUF);
        if (len < NET_HDR) {
            RESULTS[2]++;
            net_post_rx_sized((u16)id, size);
            continue;
        }
        u32 nbuf = b[10] | (u32)b[11] << 8, flen = 0;
        for (u32 k = NET_HDR; k < len; k++)
            MRG_OUT[flen++] = b[k];
        net_post_rx_sized((u16)id, size);
        for (u32 j = 1; j < nbuf; j++) {
            while ((id = qtake_len(VQ_RX, &len)) < 0)
                ;
            b = (volatile u8 *)(PKT + (u64)id * NET_RXBUF);
            for (u32 k = 0; k < len && flen < 0x10000; k++)
                MRG_OUT[flen++] = b[k];
            net_post_rx_sized((u16)id, size);
        }
        if (nbuf > RESULTS[3])
            RESULTS[3] = nbuf;
        net_echo(MRG_OUT, flen);
    }
}

void main(u64 cpu)
{
    if (cpu != 0)
        for (;;)
            ;
    if (*reg(0) != 0x74726976u || *reg(4) != 2)
        guest_exit(0xbad);
    u32 bad = 0;
    switch (VP->mode) {
    case MODE_RNG: bad = mode_rng(); break;
    case MODE_HOSTILE: bad = mode_hostile(); break;
    case MODE_BLK: bad = mode_blk(); break;
    case MODE_SERVE: mode_serve(); break;
    case MODE_VSOCK: mode_vsock(); break;
    case MODE_NET: mode_net(); break;
    case MODE_NET_MRG: mode_net_mrg(); break;
    default: bad = 0xbad;
    }
    puts("virtio failures: ");
    putdec(bad);
    putc('\n');
    guest_exit(bad);
}
