/*
 * vsock_fuzz.c - libFuzzer target for virtio-vsock's packet handling: the input is a sequence
 * of packets a guest puts on the tx queue of a real device (rx buffers posted, the host side on
 * Unix sockets in a scratch directory, nothing listening, so a guest connect gets an RST), or,
 * when its first byte is odd, lines a host sends ("CONNECT <port>\n") and raw headers. The
 * device must answer with packets or resets, never crash, hang or leak.
 *
 * Packet input: byte 0 even, then records of u16 length + bytes; a record of 44 bytes or more is
 * one chain (header buffer + payload buffer), a shorter one a chain of that many bytes.
 */
#include <stdlib.h>
#include <unistd.h>
#include "test_virtio.h"
#include "devices/virtio_vsock.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char sock_path[128];

static void lines(const uint8_t *d, size_t n)
{
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && d[i])
            continue;
        uint32_t port;
        struct vsock_hdr h;
        const char *why;
        vsock_parse_connect((const char *)d + start, i - start, &port);
        if (!vsock_hdr_parse(d + start, i - start, &h))
            vsock_pkt_check(&h, 3, i - start - VSOCK_HDR_LEN, &why);
        start = i + 1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!sock_path[0]) {
        char tmpl[] = "/tmp/vsock-fuzz-XXXXXX";
        if (!mkdtemp(tmpl))
            abort();
        snprintf(sock_path, sizeof(sock_path), "%s/v.sock", tmpl);
    }
    if (size < 1)
        return 0;
    if (data[0] & 1) {
        lines(data + 1, size - 1);
        return 0;
    }
    struct tv t;
    struct vmm_device_config cfg = {.type = VMM_DEV_VIRTIO_VSOCK, .path = sock_path, .cid = 3};
    if (tv_open(&t, &virtio_vsock_ops, &cfg, "virtio-vsock.0"))
        abort();   /* the harness itself must work */
    tv_setup(&t, 0, 3, 16);
    for (int i = 0; i < 8; i++) {
        struct tv_buf b = {TV_DATA + 0x2000ULL * i, 0x2000, true};
        tv_publish(&t, 0, tv_chain(&t, 0, &b, 1));
    }
    size_t off = 1;
    uint64_t at = TV_DATA + 0x20000;
    while (off + 2 <= size && !tv_broken(&t)) {
        size_t n = (size_t)data[off] | (size_t)data[off + 1] << 8;
        off += 2;
        if (n > size - off)
            n = size - off;
        if (n > 0x8000)
            n = 0x8000;
        gm_write(&t.mem, at, data + off, n);
        struct tv_buf b[2] = {{at, n < VSOCK_HDR_LEN ? (uint32_t)n : VSOCK_HDR_LEN, false},
                              {at + VSOCK_HDR_LEN, (uint32_t)(n - VSOCK_HDR_LEN), false}};
        tv_publish(&t, 1, tv_chain(&t, 1, b, n > VSOCK_HDR_LEN ? 2 : 1));
        tv_kick(&t, 1);
        /* the guest takes what it got and gives the buffers back */
        uint32_t id, len;
        while (tv_take_used(&t, 0, &id, &len)) {
            struct tv_buf again = {TV_DATA + 0x2000ULL * (id % 8), 0x2000, true};
            tv_publish(&t, 0, tv_chain(&t, 0, &again, 1));
        }
        while (tv_take_used(&t, 1, &id, &len))
            ;
        off += n;
    }
    virtio_vsock_poll_host(&t.d);
    tv_close(&t);
    return 0;
}
