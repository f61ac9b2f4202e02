/* A framed connection: 4-byte big-endian length + one msgpack map, bounded by FRAME_MAX.
 * The reader takes exactly the header, then exactly the body, never more: after a request
 * frame the same socket may switch to raw bytes (port-forward). Frames out are packed into one
 * buffer and flushed without blocking, so stream loops can apply back-pressure. */
#include "agent.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

void conn_init(struct conn *c, int fd, const struct agent_cfg *cfg)
{
    memset(c, 0, sizeof(*c));
    c->fd = fd;
    c->cfg = cfg;
    msgpack_sbuffer_init(&c->out);
    msgpack_packer_init(&c->pk, &c->out, msgpack_sbuffer_write);
}

void conn_close(struct conn *c)
{
    free(c->body);
    c->body = NULL;
    msgpack_sbuffer_destroy(&c->out);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

void seterr(struct conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof(c->err), fmt, ap);
    va_end(ap);
}

void msg_free(struct msg *m)
{
    msgpack_unpacked_destroy(&m->u);
    free(m->body);
    m->body = NULL;
    m->root = NULL;
}

/* Validates and unpacks one complete body; takes ownership of it. */
static int parse(struct conn *c, uint8_t *body, uint32_t len, struct msg *m)
{
    memset(m, 0, sizeof(*m));
    if (mp_check(body, len, c->err, sizeof(c->err)) < 0) {
        free(body);
        return -EPROTO;
    }
    msgpack_unpacked_init(&m->u);
    size_t off = 0;
    int r = msgpack_unpack_next(&m->u, (const char *)body, len, &off);
    if (r != MSGPACK_UNPACK_SUCCESS || off != len) {
        seterr(c, "frame body is not exactly one msgpack object (%d)", r);
        msgpack_unpacked_destroy(&m->u);
        free(body);
        return -EPROTO;
    }
    if (m->u.data.type != MSGPACK_OBJECT_MAP) {
        seterr(c, "a frame must hold a map");
        msgpack_unpacked_destroy(&m->u);
        free(body);
        return -EPROTO;
    }
    m->body = body;
    m->root = &m->u.data;
    return 1;
}

int conn_recv(struct conn *c, struct msg *m)
{
    while (c->hgot < 4) {
        ssize_t n = read(c->fd, c->hdr + c->hgot, 4 - c->hgot);
        if (n == 0) {
            if (c->hgot == 0)
                return -EPIPE;
            seterr(c, "connection closed inside a frame header");
            return -EPROTO;
        }
        if (n < 0)
            return errno == EAGAIN || errno == EINTR ? 0 : -errno;
        c->hgot += (uint32_t)n;
        if (c->hgot == 4) {
            c->blen = (uint32_t)c->hdr[0] << 24 | (uint32_t)c->hdr[1] << 16 |
                      (uint32_t)c->hdr[2] << 8 | c->hdr[3];
            if (c->blen == 0 || c->blen > FRAME_MAX) {
                seterr(c, "frame length %u outside 1..%u", c->blen, FRAME_MAX);
                return -EPROTO;
            }
            c->body = malloc(c->blen);
            if (!c->body) {
                seterr(c, "out of memory for a %u-byte frame", c->blen);
                return -ENOMEM;
            }
            c->bgot = 0;
        }
    }
    while (c->bgot < c->blen) {
        ssize_t n = read(c->fd, c->body + c->bgot, c->blen - c->bgot);
        if (n == 0) {
            seterr(c, "connection closed inside a frame");
            return -EPROTO;
        }
        if (n < 0)
            return errno == EAGAIN || errno == EINTR ? 0 : -errno;
        c->bgot += (uint32_t)n;
    }
    uint8_t *body = c->body;
    uint32_t len = c->blen;
    c->body = NULL;
    c->hgot = c->blen = c->bgot = 0;
    return parse(c, body, len, m);
}

int conn_recv_wait(struct conn *c, struct msg *m, int timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        int r = conn_recv(c, m);
        if (r != 0)
            return r;
        int left = deadline < 0 ? -1 : (int)(deadline - now_ms());
        if (deadline >= 0 && left <= 0)
            return -ETIMEDOUT;
        r = poll_one(c->fd, POLLIN, left);
        if (r < 0)
            return r;
    }
}

msgpack_packer *conn_begin(struct conn *c)
{
    static const char zero[4];
    c->frame_at = c->out.size;
    msgpack_sbuffer_write(&c->out, zero, 4);
    return &c->pk;
}

void conn_end(struct conn *c)
{
    size_t len = c->out.size - c->frame_at - 4;
    uint8_t *h = (uint8_t *)c->out.data + c->frame_at;
    h[0] = (uint8_t)(len >> 24);
    h[1] = (uint8_t)(len >> 16);
    h[2] = (uint8_t)(len >> 8);
    h[3] = (uint8_t)len;
}

bool conn_pending(const struct conn *c)
{
    return c->out_off < c->out.size;
}

int conn_flush(struct conn *c)
{
    while (c->out_off < c->out.size) {
        ssize_t n = send(c->fd, c->out.data + c->out_off, c->out.size - c->out_off, MSG_NOSIGNAL);
        if (n < 0)
            return errno == EAGAIN || errno == EINTR ? 0 : -errno;
        c->out_off += (size_t)n;
    }
    c->out.size = 0;
    c->out_off = 0;
    return 1;
}

int conn_flush_wait(struct conn *c, int timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        int r = conn_flush(c);
        if (r != 0)
            return r < 0 ? r : 0;
        int left = deadline < 0 ? -1 : (int)(deadline - now_ms());
        if (deadline >= 0 && left <= 0)
            return -ETIMEDOUT;
        r = poll_one(c->fd, POLLOUT, left);
        if (r < 0)
            return r;
    }
}

int conn_fail(struct conn *c, int err, const char *fmt, ...)
{
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err, sizeof(c->err), fmt, ap);
        va_end(ap);
    }
    if (err < 0)
        err = -err;
    const char *code = strerrorname_np(err);
    msgpack_packer *pk = conn_begin(c);
    msgpack_pack_map(pk, 4);
    pk_kv_str(pk, "t", "error");
    pk_kv_int(pk, "errno", err);
    pk_kv_str(pk, "code", code ? code : "EUNKNOWN");
    pk_kv_str(pk, "message", c->err[0] ? c->err : strerror(err));
    conn_end(c);
    conn_flush_wait(c, 5000);
    return -1;
}

int conn_ok(struct conn *c)
{
    msgpack_packer *pk = conn_begin(c);
    msgpack_pack_map(pk, 1);
    pk_kv_str(pk, "t", "ok");
    conn_end(c);
    return conn_flush_wait(c, -1);
}

void pk_strn(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

void pk_str(msgpack_packer *pk, const char *s)
{
    pk_strn(pk, s, strlen(s));
}

void pk_kv_str(msgpack_packer *pk, const char *k, const char *v)
{
    pk_str(pk, k);
    pk_str(pk, v);
}

void pk_kv_int(msgpack_packer *pk, const char *k, int64_t v)
{
    pk_str(pk, k);
    msgpack_pack_int64(pk, v);
}

void pk_kv_bool(msgpack_packer *pk, const char *k, bool v)
{
    pk_str(pk, k);
    if (v)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
}

void pk_kv_bin(msgpack_packer *pk, const char *k, const void *p, size_t n)
{
    pk_str(pk, k);
    msgpack_pack_bin(pk, n);
    msgpack_pack_bin_body(pk, p, n);
}
