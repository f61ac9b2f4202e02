/*
 * Unit tests of virtio-vsock on synthetic rings and real Unix sockets in a scratch directory
 * (argv[1]): guest- and host-initiated connections carrying bytes both ways, credit, RST on
 * overrun and on malformed packets, the CONNECT line, TRANSPORT_RESET after a state load, and
 * the pure packet checks. Prints "N passed, N failed" last.
 */
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "test_virtio.h"
#include "devices/virtio_vsock.h"

#define CID 3
#define RXBUF(i) (TV_DATA + 0x10000ULL * (i))        /* rx buffers: 8 of 64 KiB + header */
#define TXHDR (TV_DATA + 0x100000)
#define TXDATA (TV_DATA + 0x101000)
#define EVBUF (TV_DATA + 0x180000)

static const char *work;
static char sock_path[256];

static int vs_open(struct tv *t)
{
    struct vmm_device_config cfg = {.type = VMM_DEV_VIRTIO_VSOCK, .path = sock_path, .cid = CID};
    int r = tv_open(t, &virtio_vsock_ops, &cfg, "virtio-vsock.0");
    if (!r)
        tv_setup(t, 0, 3, 16);
    return r;
}

static void post_rx(struct tv *t, int n)
{
    for (int i = 0; i < n; i++) {
        struct tv_buf b = {RXBUF(i % 8), 0x10000, true};
        tv_publish(t, 0, tv_chain(t, 0, &b, 1));
    }
}

static void send_pkt(struct tv *t, uint32_t src_port, uint32_t dst_port, uint16_t op,
                     const void *data, uint32_t len, uint32_t flags, uint16_t type, uint64_t src_cid)
{
    struct vsock_hdr h = {.src_cid = src_cid, .dst_cid = VSOCK_HOST_CID, .src_port = src_port,
                          .dst_port = dst_port, .len = len, .type = type, .op = op,
                          .flags = flags, .buf_alloc = 1 << 20, .fwd_cnt = 0};
    uint8_t raw[VSOCK_HDR_LEN];
    vsock_hdr_build(&h, raw);
    gm_write(&t->mem, TXHDR, raw, sizeof(raw));
    if (len)
        gm_write(&t->mem, TXDATA, data, len);
    struct tv_buf b[2] = {{TXHDR, VSOCK_HDR_LEN, false}, {TXDATA, len, false}};
    tv_publish(t, 1, tv_chain(t, 1, b, len ? 2 : 1));
    tv_kick(t, 1);
}

static void guest_send(struct tv *t, uint32_t sp, uint32_t dp, uint16_t op, const void *d,
                       uint32_t len)
{
    send_pkt(t, sp, dp, op, d, len, 0, VSOCK_TYPE_STREAM, CID);
}

/* The next packet the device gave the guest: its header, payload into `data`. 0 if none. */
static int guest_recv(struct tv *t, struct vsock_hdr *h, uint8_t *data, uint32_t max)
{
    uint32_t id, len;
    if (!tv_take_used(t, 0, &id, &len))
        return 0;
    uint64_t addr;
    gm_read(&t->mem, tv_desc(0) + 16ULL * id, &addr, 8);
    uint8_t raw[VSOCK_HDR_LEN];
    gm_read(&t->mem, addr, raw, sizeof(raw));
    vsock_hdr_parse(raw, sizeof(raw), h);
    if (data && h->len && h->len <= max)
        gm_read(&t->mem, addr + VSOCK_HDR_LEN, data, h->len);
    return len == VSOCK_HDR_LEN + h->len ? 1 : -1;
}

static int connect_to(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
    return connect(fd, (struct sockaddr *)&a, sizeof(a)) ? -1 : fd;
}

static ssize_t read_wait(int fd, void *buf, size_t len)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 2000) != 1)
        return -1;
    return read(fd, buf, len);
}

static void test_packet_checks(void)
{
    struct vsock_hdr h = {.src_cid = CID, .dst_cid = 2, .type = 1, .op = VSOCK_OP_RW, .len = 10};
    const char *why;
    CHECK(vsock_pkt_check(&h, CID, 10, &why) == VSOCK_PKT_OK);
    CHECK(vsock_pkt_check(&h, CID, 9, &why) == VSOCK_PKT_RST);         /* past its buffers */
    h.len = VSOCK_MAX_PKT + 1;
    CHECK(vsock_pkt_check(&h, CID, ~0ULL, &why) == VSOCK_PKT_RST);
    h.len = 0;
    h.type = 2;
    CHECK(vsock_pkt_check(&h, CID, 0, &why) == VSOCK_PKT_RST);          /* seqpacket */
    h.type = 1;
    h.op = 99;
    CHECK(vsock_pkt_check(&h, CID, 0, &why) == VSOCK_PKT_RST);
    h.op = VSOCK_OP_REQUEST;
    h.len = 4;
    CHECK(vsock_pkt_check(&h, CID, 4, &why) == VSOCK_PKT_RST);          /* payload on control */
    h.len = 0;
    h.src_cid = 4;
    CHECK(vsock_pkt_check(&h, CID, 0, &why) == VSOCK_PKT_DROP);         /* spoofed CID */
    h.src_cid = CID;
    h.dst_cid = 5;
    CHECK(vsock_pkt_check(&h, CID, 0, &why) == VSOCK_PKT_DROP);
    h.dst_cid = 2;
    h.op = VSOCK_OP_RST;
    h.type = 7;
    CHECK(vsock_pkt_check(&h, CID, 0, &why) == VSOCK_PKT_DROP);         /* an RST is never answered */
    uint32_t port;
    CHECK(vsock_parse_connect("CONNECT 52\n", 11, &port) == 0 && port == 52);
    CHECK(vsock_parse_connect("CONNECT 4294967295\n", 19, &port) == 0 && port == 4294967295u);
    CHECK(vsock_parse_connect("CONNECT 4294967296\n", 19, &port) < 0);
    CHECK(vsock_parse_connect("CONNECT \n", 9, &port) < 0);
    CHECK(vsock_parse_connect("CONNECT 5x\n", 11, &port) < 0);
    CHECK(vsock_parse_connect("connect 52\n", 11, &port) < 0);
    CHECK(vsock_parse_connect("CONNECT 52", 10, &port) < 0);
    CHECK(vsock_peer_credit(1000, 0, 400) == 600);
    CHECK(vsock_peer_credit(1000, 0, 1000) == 0);
    CHECK(vsock_peer_credit(1000, 500, 100) == 0);                      /* a lying peer */
    CHECK(vsock_peer_credit(1000, 0xfffffff0u, 10) == 974);             /* counters wrap */
}

static void test_refuses_bad_configurations(void)
{
    struct tv t;
    struct vmm_device_config cfg = {.type = VMM_DEV_VIRTIO_VSOCK, .path = sock_path, .cid = 2};
    CHECK(tv_open(&t, &virtio_vsock_ops, &cfg, "virtio-vsock.0") == -EINVAL);
    cfg.cid = 3;
    cfg.path = NULL;
    CHECK(tv_open(&t, &virtio_vsock_ops, &cfg, "virtio-vsock.0") == -EINVAL);
    char file[300];
    snprintf(file, sizeof(file), "%s/plain", work);
    FILE *f = fopen(file, "w");
    fclose(f);
    cfg.path = file;
    CHECK(tv_open(&t, &virtio_vsock_ops, &cfg, "virtio-vsock.0") == -EEXIST);
}

static void test_guest_initiated_connection_carries_data_both_ways(void)
{
    struct tv t;
    char lpath[300];
    snprintf(lpath, sizeof(lpath), "%s_1234", sock_path);
    int l = tv_listen(lpath);
    CHECK(l >= 0);
    CHECK(vs_open(&t) == 0);
    uint64_t cid = 0;
    t.d.ops->access(&t.d, VIRTIO_MMIO_CONFIG, (uint8_t *)&cid, 8, false, NULL);
    CHECK(cid == CID);
    post_rx(&t, 8);
    tv_kick(&t, 0);
    guest_send(&t, 5000, 1234, VSOCK_OP_REQUEST, NULL, 0);
    int a = accept(l, NULL, NULL);
    CHECK(a >= 0);
    struct vsock_hdr h;
    uint8_t data[256];
    CHECK(guest_recv(&t, &h, NULL, 0) == 1 && h.op == VSOCK_OP_RESPONSE && h.src_port == 1234 &&
          h.dst_port == 5000 && h.src_cid == 2 && h.dst_cid == CID && h.buf_alloc > 0);
    guest_send(&t, 5000, 1234, VSOCK_OP_RW, "hello", 5);
    char got[16] = {0};
    CHECK(read_wait(a, got, sizeof(got)) == 5 && memcmp(got, "hello", 5) == 0);
    CHECK(write(a, "world!", 6) == 6);
    virtio_vsock_poll_host(&t.d);
    CHECK(guest_recv(&t, &h, data, sizeof(data)) == 1 && h.op == VSOCK_OP_RW && h.len == 6 &&
          memcmp(data, "world!", 6) == 0);
    /* the host closes: the guest hears it will get no more */
    close(a);
    virtio_vsock_poll_host(&t.d);
    CHECK(guest_recv(&t, &h, NULL, 0) == 1 && h.op == VSOCK_OP_SHUTDOWN &&
          (h.flags & VSOCK_SHUTDOWN_SEND));
    /* the guest closes: RST completes it */
    send_pkt(&t, 5000, 1234, VSOCK_OP_SHUTDOWN, NULL, 0, 3, 1, CID);
    tv_kick(&t, 0);
    CHECK(guest_recv(&t, &h, NULL, 0) == 1 && h.op == VSOCK_OP_RST);
    /* nobody listening on a port: refused with an RST */
    guest_send(&t, 5001, 999, VSOCK_OP_REQUEST, NULL, 0);
    CHECK(guest_recv(&t, &h, NULL, 0) == 1 && h.op == VSOCK_OP_RST && h.dst_port == 5001);
    CHECK(!tv_broken(&t));
    close(l);
    tv_close(&t);
}

static void test_host_initiated_connection_with_connect_line(void)
{
    struct tv t;
    CHECK(vs_open(&t) == 0);
    post_rx(&t, 8);
    tv_kick(&t, 0);
    int h1 = connect_to(sock_path);
    CHECK(h1 >= 0);
    CHECK(write(h1, "CONNECT 52\nearly", 16) == 16);    /* data right behind the line */
    virtio_vsock_poll_host(&t.d);                       /* accept */
    virtio_vsock_poll_host(&t.d);                       /* the line */
    struct vsock_hdr h;
    uint8_t data[256];
    CHECK(guest_recv(&t, &h, NULL, 0) == 1 && h.op == VSOCK_OP_REQUEST && h.dst_port == 52 &&
          h.src_port >= (1u << 30) && h.src_cid == 2);
    uint32_t hp = h.src_port;
    guest_send(&t, 52, hp, VSOCK_OP_RESPONSE, NULL, 0);
    char line[32] = {0}, want[32];
    snprintf(want, sizeof(want), "OK %u\n", hp);
    CHECK(read_wait(h1, line, strlen(want)) == (ssize_t)strlen(want) && strcmp(line, want) == 0);
    virtio_vsock_poll_host(&t.d);
    CHECK(guest_recv(&t, &h, data, sizeof(data)) == 1 && h.op == VSOCK_OP_RW && h.len == 5 &&
          memcmp(data, "early", 5) == 0);
    guest_send(&t, 52, hp, VSOCK_OP_RW, "pong", 4);
    char got[8] = {0};
    CHECK(read_wait(h1, got, sizeof(got)) == 4 && memcmp(got, "pong", 4) == 0);
    /* a bad CONNECT line: the host's connection is closed */
    int h2 = connect_to(sock_path);
    CHECK(write(h2, "CONNECT nope\n", 13) == 13);
    virtio_vsock_poll_host(&t.d);
    virtio_vsock_poll_host(&t.d);
    CHECK(read_wait(h2, got, sizeof(got)) == 0);
    close(h2);
    close(h1);
    tv_close(&t);
}

static void test_guest_overrunning_credit_is_reset(void)
{
    struct tv t;
    char lpath[300];
    snprintf(lpath, sizeof(lpath), "%s_77", sock_path);
    int l = tv_listen(lpath);
    CHECK(vs_open(&t) == 0);
    post_rx(&t, 8);
    tv_kick(&t, 0);
    guest_send(&t, 6000, 77, VSOCK_OP_REQUEST, NULL, 0);
    int a = accept(l, NULL, NULL);
    struct vsock_hdr h;
    CHECK(guest_recv(&t, &h, NULL, 0) == 1 && h.op == VSOCK_OP_RESPONSE);
    static uint8_t big[VSOCK_MAX_PKT];
    memset(big, 'x', sizeof(big));
    /* the host never reads: the socket fills, then our buffer, then the guest is over */
    bool reset = false;
    for (int i = 0; i < 64 && !reset; i++) {
        guest_send(&t, 6000, 77, VSOCK_OP_RW, big, sizeof(big));
        while (guest_recv(&t, &h, NULL, 0) == 1)
            if (h.op == VSOCK_OP_RST)
                reset = true;
    }
    CHECK(reset);
    CHECK(!tv_broken(&t));
    close(a);
    close(l);
    tv_close(&t);
}

/* The guest writes what its credit allows to a host that is not reading yet, then closes
 * (SHUTDOWN both ways, as Linux's close() does): every byte still reaches the host, then EOF,
 * and only then the RST that completes the close. (Seen: an agent's 64 MiB of stdout cut
 * short when the guest closed while we still held its last bytes.) */
static void test_guest_close_delivers_what_we_hold_before_the_reset(void)
{
    struct tv t;
    char lpath[300];
    snprintf(lpath, sizeof(lpath), "%s_88", sock_path);
    int l = tv_listen(lpath);
    CHECK(vs_open(&t) == 0);
    post_rx(&t, 8);
    tv_kick(&t, 0);
    guest_send(&t, 7000, 88, VSOCK_OP_REQUEST, NULL, 0);
    int a = accept(l, NULL, NULL);
    struct vsock_hdr h;
    CHECK(guest_recv(&t, &h, NULL, 0) == 1 && h.op == VSOCK_OP_RESPONSE);
    uint32_t buf_alloc = h.buf_alloc, fwd_cnt = h.fwd_cnt, sent = 0;
    static uint8_t pkt[VSOCK_MAX_PKT];
    bool reset = false;
    for (;;) {            /* as much as the credit the device gives us allows */
        while (guest_recv(&t, &h, NULL, 0) == 1) {
            if (h.op == VSOCK_OP_RST)
                reset = true;
            buf_alloc = h.buf_alloc;
            fwd_cnt = h.fwd_cnt;
        }
        uint32_t credit = buf_alloc - (sent - fwd_cnt);
        uint32_t n = credit < sizeof(pkt) ? credit : sizeof(pkt);
        if (n == 0 || sent > (8u << 20))
            break;
        for (uint32_t i = 0; i < n; i++)
            pkt[i] = (uint8_t)((sent + i) % 251);
        guest_send(&t, 7000, 88, VSOCK_OP_RW, pkt, n);
        sent += n;
        post_rx(&t, 1);
    }
    CHECK(!reset && sent > buf_alloc);
    send_pkt(&t, 7000, 88, VSOCK_OP_SHUTDOWN, NULL, 0, 3, 1, CID);
    uint32_t got = 0;
    bool intact = true, eof = false;
    static uint8_t rd[1 << 16];
    for (int rounds = 0; rounds < 10000 && !eof; rounds++) {
        ssize_t r = read_wait(a, rd, sizeof(rd));
        if (r <= 0) {
            eof = r == 0;
            if (r < 0)
                break;
            continue;
        }
        for (ssize_t i = 0; i < r; i++)
            intact &= rd[i] == (uint8_t)((got + i) % 251);
        got += (uint32_t)r;
        virtio_vsock_poll_host(&t.d);      /* the socket has room: the device flushes */
    }
    CHECK(eof && got == sent && intact);
    post_rx(&t, 1);
    tv_kick(&t, 0);
    while (guest_recv(&t, &h, NULL, 0) == 1)
        reset |= h.op == VSOCK_OP_RST;
    CHECK(reset);
    CHECK(!tv_broken(&t));
    close(a);
    close(l);
    tv_close(&t);
}

static void test_malformed_packets_get_resets_not_crashes(void)
{
    struct tv t;
    CHECK(vs_open(&t) == 0);
    post_rx(&t, 8);
    tv_kick(&t, 0);
    struct vsock_hdr h;
    send_pkt(&t, 1, 2, VSOCK_OP_REQUEST, NULL, 0, 0, 2, CID);          /* seqpacket */
    CHECK(guest_recv(&t, &h, NULL, 0) == 1 && h.op == VSOCK_OP_RST);
    guest_send(&t, 1, 2, VSOCK_OP_RW, "x", 1);                         /* no such connection */
    CHECK(guest_recv(&t, &h, NULL, 0) == 1 && h.op == VSOCK_OP_RST);
    send_pkt(&t, 1, 2, VSOCK_OP_REQUEST, NULL, 0, 0, 1, 9);            /* spoofed CID: ignored */
    CHECK(guest_recv(&t, &h, NULL, 0) == 0);
    /* a header that claims more payload than its buffers hold */
    struct vsock_hdr bad = {.src_cid = CID, .dst_cid = 2, .src_port = 1, .dst_port = 2,
                            .len = 5000, .type = 1, .op = VSOCK_OP_RW};
    uint8_t raw[VSOCK_HDR_LEN];
    vsock_hdr_build(&bad, raw);
    gm_write(&t.mem, TXHDR, raw, sizeof(raw));
    struct tv_buf b[2] = {{TXHDR, VSOCK_HDR_LEN, false}, {TXDATA, 100, false}};
    tv_publish(&t, 1, tv_chain(&t, 1, b, 2));
    tv_kick(&t, 1);
    CHECK(guest_recv(&t, &h, NULL, 0) == 1 && h.op == VSOCK_OP_RST);
    CHECK(!tv_broken(&t));
    /* a packet shorter than a header is no packet: the device is broken */
    struct tv_buf tiny = {TXHDR, 10, false};
    tv_publish(&t, 1, tv_chain(&t, 1, &tiny, 1));
    tv_kick(&t, 1);
    CHECK(tv_broken(&t));
    tv_close(&t);
}

static void test_state_load_resets_connections_and_tells_the_guest(void)
{
    struct tv t;
    CHECK(vs_open(&t) == 0);
    struct tv_buf ev = {EVBUF, 4, true};
    tv_publish(&t, 2, tv_chain(&t, 2, &ev, 1));
    post_rx(&t, 4);
    tv_kick(&t, 0);
    int h1 = connect_to(sock_path);
    CHECK(write(h1, "CONNECT 9\n", 10) == 10);
    virtio_vsock_poll_host(&t.d);
    virtio_vsock_poll_host(&t.d);
    struct vsock_hdr h;
    CHECK(guest_recv(&t, &h, NULL, 0) == 1 && h.op == VSOCK_OP_REQUEST);
    guest_send(&t, 9, h.src_port, VSOCK_OP_RESPONSE, NULL, 0);
    char line[32];
    CHECK(read_wait(h1, line, sizeof(line)) > 0);
    struct enc e;
    enc_init(&e);
    CHECK(t.d.ops->save(&t.d, &e) == 0);
    struct dec_val v;
    struct dec_map m;
    const uint8_t *p = e.buf;
    void *st;
    CHECK(dec_next(&p, e.buf + e.len, &v) == 0 && dec_as_map(&v, &m, "dev") == 0);
    CHECK(t.d.ops->decode(&t.d, &m, 1, &st) == 0);
    t.d.ops->apply(&t.d, st);
    CHECK(t.d.ops->post_load(&t.d) == 0);
    virtio_run(tv_vdev(&t));
    uint32_t id, len, what = 99;
    CHECK(tv_take_used(&t, 2, &id, &len) == 1 && len == 4);
    gm_read(&t.mem, EVBUF, &what, 4);
    CHECK(what == VSOCK_EVENT_TRANSPORT_RESET);
    CHECK(read_wait(h1, line, sizeof(line)) == 0);      /* the host's stream ended */
    /* a CID that differs from the configuration's is refused */
    enc_free(&e);
    close(h1);
    tv_close(&t);
}

static bool rekick_pending(struct tv *t)
{
    uint64_t n = 0;
    return read(tv_vdev(t)->kick, &n, sizeof(n)) == sizeof(n) && n > 0;
}

static void test_resets_owed_without_rx_buffers_wait_without_spinning(void)
{
    struct tv t;
    CHECK(vs_open(&t) == 0);
    /* a guest that sends to nobody and posts no rx buffers */
    for (uint32_t i = 0; i < 76; i++)       /* 64 answered, 12 waiting in a queue of 16 */
        guest_send(&t, 100 + i, 7, VSOCK_OP_RW, "x", 1);
    rekick_pending(&t);
    virtio_run(tv_vdev(&t));
    CHECK(!rekick_pending(&t));              /* blocked on the guest: the device is idle */
    CHECK(tv_used_idx(&t, 1) == 64);         /* it took what it could answer, no more */
    int rsts = 0;
    struct vsock_hdr h;
    for (int round = 0; round < 40 && rsts < 76; round++) {
        post_rx(&t, 8);
        tv_kick(&t, 0);
        while (rekick_pending(&t))
            virtio_run(tv_vdev(&t));
        while (guest_recv(&t, &h, NULL, 0) == 1)
            rsts += h.op == VSOCK_OP_RST;
    }
    CHECK(rsts == 76);
    CHECK(tv_used_idx(&t, 1) == 76);
    CHECK(!rekick_pending(&t) && !tv_broken(&t));
    tv_close(&t);
}

int main(int argc, char **argv)
{
    work = argc > 1 ? argv[1] : "/tmp";
    snprintf(sock_path, sizeof(sock_path), "%s/v.sock", work);
    test_packet_checks();
    test_refuses_bad_configurations();
    test_guest_initiated_connection_carries_data_both_ways();
    test_host_initiated_connection_with_connect_line();
    test_guest_overrunning_credit_is_reset();
    test_guest_close_delivers_what_we_hold_before_the_reset();
    test_malformed_packets_get_resets_not_crashes();
    test_state_load_resets_connections_and_tells_the_guest();
    test_resets_owed_without_rx_buffers_wait_without_spinning();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
