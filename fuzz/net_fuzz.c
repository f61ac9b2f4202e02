/*
 * net_fuzz.c - libFuzzer target for virtio-net and its egress filter.
 *
 * Byte 0 odd: the filter alone. Byte 1 bit 0 is the default, byte 2 the number of rules (at
 * most 8), then 12 bytes a rule (addr be32, prefix, proto, port_lo be16, port_hi be16, flags:
 * bit 0 allow, bit 1 replies-only, bits 2-7 the source port range's width; the first source
 * port, 0 for any), then the frame. A policy net_policy_check refuses is replaced by none. A verdict of
 * NET_DENY_RST must yield a reset whose IP and TCP checksums verify.
 *
 * Byte 0 even: a real device on synthetic rings with a Unix socket as its backend; byte 1 bit 0
 * allows all, else the policy denies 10/8 and allows the rest; byte 1 bit 1 negotiates
 * mergeable rx buffers (a frame spread over several posted buffers). Then records: kind (u8), length
 * (u16 LE), bytes. kind % 4: 0 a tx chain of header + frame in one buffer; 1 the same split in
 * two, plus a writable buffer when kind & 4; 2 the bytes written raw into the backend's stream
 * (any framing at all); 3 an rx buffer of `length` bytes posted (readable when kind & 8, no
 * bytes taken). kind & 16: the backend reads what it was sent. The device must never crash,
 * hang or leak, whatever the guest or the backend do.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "test_virtio.h"
#include "devices/net_filter.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char sock_path[128];
static int listener = -1;

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void filter_only(const uint8_t *d, size_t n)
{
    if (n < 2)
        return;
    struct vmm_net_rule rules[8];
    unsigned nr = d[1] % 9;
    size_t off = 2;
    for (unsigned i = 0; i < nr; i++, off += 12) {
        if (off + 12 > n)
            return;
        const uint8_t *r = d + off;
        rules[i] = (struct vmm_net_rule){
            .addr = be32(r), .prefix = r[4], .proto = r[5], .port_lo = (unsigned)(r[6] << 8 | r[7]),
            .port_hi = (unsigned)(r[8] << 8 | r[9]), .sport_lo = r[11],
            .sport_hi = r[11] ? r[11] + (unsigned)(r[10] >> 2) : 0, .replies = r[10] >> 1 & 1,
            .allow = r[10] & 1};
    }
    struct vmm_net_policy p = {.default_allow = d[0] >> 1 & 1, .nrules = nr, .rules = rules};
    const struct vmm_net_policy *pol = net_policy_check(&p) == 0 ? &p : NULL;
    const uint8_t *f = d + off;
    size_t len = n - off;
    enum net_verdict v = net_filter(f, len, pol);
    if (v == NET_DENY_RST) {
        uint8_t rst[NET_RST_LEN];
        if (net_build_rst(f, len, rst) != NET_RST_LEN)
            abort();
        const uint8_t *ip = rst + ETH_HLEN;
        uint8_t pseudo[12] = {0};
        memcpy(pseudo, ip + 12, 8);
        pseudo[9] = 6;
        pseudo[11] = 20;
        if (net_csum_fold(net_csum_add(0, ip, 20)) != 0 ||
            net_csum_fold(net_csum_add(net_csum_add(0, pseudo, 12), ip + 20, 20)) != 0)
            abort();
    }
}

static void drain(int fd)
{
    static uint8_t sink[65536];
    while (read(fd, sink, sizeof(sink)) > 0)
        ;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!sock_path[0]) {
        char tmpl[] = "/tmp/net-fuzz-XXXXXX";
        if (!mkdtemp(tmpl))
            abort();
        snprintf(sock_path, sizeof(sock_path), "%s/n.sock", tmpl);
        if ((listener = tv_listen(sock_path)) < 0)
            abort();
    }
    if (size < 2)
        return 0;
    if (data[0] & 1) {
        filter_only(data, size);
        return 0;
    }
    struct tv t;
    struct vmm_device_config cfg = {.type = VMM_DEV_VIRTIO_NET, .path = sock_path,
                                    .mac = {2, 0, 0, 0, 0, 1}};
    if (tv_open(&t, &virtio_net_ops, &cfg, "virtio-net.0"))
        abort();   /* the harness itself must work */
    int peer = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (peer < 0)
        abort();
    tv_setup(&t, 1ULL << 5 | 1ULL << 16 | (data[1] & 2 ? 1ULL << 15 : 0), 2, 16);
    struct vmm_net_rule deny10 = {.addr = 10u << 24, .prefix = 8, .allow = 0};
    struct vmm_net_policy pol = {.default_allow = 1, .nrules = data[1] & 1 ? 0 : 1,
                                 .rules = &deny10};
    virtio_net_set_policy(&t.d, &pol);
    size_t off = 2;
    unsigned slot = 0;
    while (off + 3 <= size && !tv_broken(&t)) {
        uint8_t kind = data[off];
        size_t n = (size_t)data[off + 1] | (size_t)data[off + 2] << 8;
        off += 3;
        uint64_t at = TV_DATA + 0x20000ULL * (slot++ % 16);
        switch (kind % 4) {
        case 0:
        case 1: {
            if (n > size - off)
                n = size - off;
            uint8_t hdr[12] = {0};
            gm_write(&t.mem, at, hdr, sizeof(hdr));
            gm_write(&t.mem, at + 12, data + off, n);
            off += n;
            struct tv_buf b[3] = {{at, 12, false}, {at + 12, (uint32_t)n, false},
                                  {at + 0x18000, 64, true}};
            uint16_t head;
            if (kind % 4 == 0) {
                b[0].len = (uint32_t)(12 + n);
                head = tv_chain(&t, 1, b, 1);
            } else {
                head = tv_chain(&t, 1, b, kind & 4 ? 3 : 2);
            }
            tv_publish(&t, 1, head);
            tv_kick(&t, 1);
            break;
        }
        case 2:
            if (n > size - off)
                n = size - off;
            if (send(peer, data + off, n, MSG_NOSIGNAL) < 0) {
                /* full (the device is not reading, as it may), or it hung up on us */
            }
            off += n;
            virtio_net_poll_backend(&t.d);
            break;
        case 3: {
            struct tv_buf b = {at, (uint32_t)(n < 0x20000 ? n : 0x20000), !(kind & 8)};
            tv_publish(&t, 0, tv_chain(&t, 0, &b, 1));
            tv_kick(&t, 0);
            break;
        }
        }
        if (kind & 16) {
            drain(peer);
            virtio_net_poll_backend(&t.d);
        }
        uint32_t id, len;
        while (tv_take_used(&t, 0, &id, &len))
            ;
        while (tv_take_used(&t, 1, &id, &len))
            ;
    }
    struct vmm_net_stats st;
    virtio_net_stats(&t.d, &st);
    close(peer);
    virtio_net_poll_backend(&t.d);
    tv_close(&t);
    return 0;
}
