/*
 * virtio_vsock.c - virtio-vsock in user space, bridged to Unix sockets the way Firecracker's
 * hybrid vsock is (its protocol, our code):
 *   host-initiated   the host connects to `path`, sends "CONNECT <port>\n"; the device sends the
 *                    guest a REQUEST from CID 2, a fresh host port P >= 2^30; on RESPONSE it
 *                    answers the host "OK <P>\n" and the stream carries bytes both ways.
 *   guest-initiated  a guest connect to CID 2 port P becomes a connect to `<path>_<P>`.
 * Flow control is virtio-vsock's credit: each side says how big its buffer is (buf_alloc) and
 * how much it has consumed (fwd_cnt); nobody sends more than the other can hold. A guest that
 * overruns our buffer, or sends anything malformed, gets its connection reset (RST).
 *
 * Queues: 0 rx (device -> guest), 1 tx (guest -> device), 2 event. Everything runs on the VM's
 * event loop: the doorbell, and one handler for the device's own epoll set (the listener, each
 * connection's stream, a timer for connects the guest never answers). Connections are host
 * state, never in a snapshot: a restored VM gets VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, so the
 * guest drops its stale connections and keeps its listeners.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>
#include "devices.h"
#include "virtio_mmio.h"
#include "virtio_vsock.h"
#include "../arch/boot.h"

#define VSOCK_STATE_VERSION 1
#define VSOCK_QUEUE_SIZE 256
#define VIRTIO_ID_VSOCK 19
#define Q_RX 0
#define Q_TX 1
#define Q_EVENT 2
#define MAX_CONNS 256
#define CONN_BUF (256 * 1024)          /* what we advertise: guest -> host bytes we may hold */
#define RST_QUEUE 64                   /* resets owed for packets naming no connection */
#define LOCAL_PORT_FIRST (1u << 30)
#define CONNECT_TIMEOUT_NS (2ULL * 1000000000ULL)
#define LINE_MAX_LEN 32

enum conn_state { C_FREE = 0, C_LINE, C_REQUEST, C_OPEN };

struct conn {
    enum conn_state state;
    int fd;
    uint32_t local_port, peer_port;
    uint64_t deadline;                 /* C_LINE / C_REQUEST: give up after this */
    char line[LINE_MAX_LEN];
    uint32_t line_len;
    /* host -> guest */
    uint32_t peer_buf_alloc, peer_fwd_cnt, tx_cnt;
    bool host_readable, host_eof;
    /* guest -> host */
    uint8_t *buf;                      /* ring of CONN_BUF bytes, allocated while needed */
    uint32_t buf_head, buf_len;
    uint32_t rx_cnt, fwd_cnt, fwd_told;
    bool peer_no_send;                 /* the guest shut down its sending side */
    bool peer_closed;                  /* ... and its receiving side: RST once buf is flushed */
    /* owed to the guest */
    bool need_request, need_response, need_credit, need_shutdown, need_rst;
};

struct rst_owed { uint32_t src_port, dst_port; };

struct vsock {
    struct virtio_dev v;               /* first: d->priv points at both */
    uint64_t cid;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int listen_fd, ep, timer;
    struct conn conns[MAX_CONNS];
    struct rst_owed rsts[RST_QUEUE];
    int nrst;
    uint32_t next_port;
    bool reset_event;                  /* a TRANSPORT_RESET is owed to the guest */
    struct vq_chain chain;
    struct iovec iov[VIRTQ_MAX_SIZE];
    uint64_t rsts_sent, overruns;
};

/* ---------- connections ---------- */

static uint64_t now(void) { return now_ns(); }

static struct conn *find(struct vsock *s, uint32_t local, uint32_t peer)
{
    for (int i = 0; i < MAX_CONNS; i++) {
        struct conn *c = &s->conns[i];
        if (c->state >= C_REQUEST && c->local_port == local && c->peer_port == peer)
            return c;
    }
    return NULL;
}

static struct conn *conn_new(struct vsock *s, int fd)
{
    for (int i = 0; i < MAX_CONNS; i++)
        if (s->conns[i].state == C_FREE) {
            struct conn *c = &s->conns[i];
            *c = (struct conn){.fd = fd};
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                                     .data.u64 = (uint64_t)i};
            if (epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &ev) < 0)
                return NULL;
            return c;
        }
    return NULL;
}

static void conn_free(struct vsock *s, struct conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(s->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    free(c->buf);
    *c = (struct conn){.fd = -1};
}

/* Ends a connection, telling the guest unless it is the one that reset it. */
static void conn_reset(struct vsock *s, struct conn *c, bool tell_guest)
{
    if (c->fd >= 0) {
        epoll_ctl(s->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    free(c->buf);
    c->buf = NULL;
    c->buf_len = 0;
    if (tell_guest && (c->state == C_OPEN || c->state == C_REQUEST) && !c->need_request) {
        c->need_rst = true;   /* the slot is freed once the RST is delivered */
        c->need_response = c->need_credit = c->need_shutdown = false;
    } else {
        conn_free(s, c);
    }
}

static void owe_rst(struct vsock *s, const struct vsock_hdr *h)
{
    if (s->nrst < RST_QUEUE)
        s->rsts[s->nrst++] = (struct rst_owed){h->dst_port, h->src_port};
}

static void drop_all(struct vsock *s)
{
    for (int i = 0; i < MAX_CONNS; i++)
        if (s->conns[i].state != C_FREE)
            conn_free(s, &s->conns[i]);
    s->nrst = 0;
}

static uint32_t alloc_port(struct vsock *s)
{
    for (;;) {
        uint32_t p = s->next_port++;
        if (s->next_port < LOCAL_PORT_FIRST)
            s->next_port = LOCAL_PORT_FIRST;
        bool used = false;
        for (int i = 0; i < MAX_CONNS && !used; i++)
            used = s->conns[i].state >= C_REQUEST && s->conns[i].local_port == p;
        if (!used)
            return p;
    }
}

static void arm_timer(struct vsock *s)
{
    struct itimerspec t = {.it_value = {.tv_sec = 0, .tv_nsec = 500000000L},
                           .it_interval = {.tv_sec = 0, .tv_nsec = 500000000L}};
    timerfd_settime(s->timer, 0, &t, NULL);
}

/* ---------- guest -> host bytes ---------- */

/* writev that never raises SIGPIPE in the VMM when the host end is gone */
static ssize_t send_iov(int fd, struct iovec *iov, int n)
{
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
    return sendmsg(fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
}

/* Writes what the connection holds to the host stream; false when the stream is gone. */
static bool flush_buf(struct vsock *s, struct conn *c)
{
    while (c->buf_len) {
        uint32_t first = CONN_BUF - c->buf_head < c->buf_len ? CONN_BUF - c->buf_head : c->buf_len;
        struct iovec io[2] = {{c->buf + c->buf_head, first}, {c->buf, c->buf_len - first}};
        ssize_t n = send_iov(c->fd, io, c->buf_len > first ? 2 : 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n <= 0)
            return false;
        c->buf_head = (uint32_t)((c->buf_head + (uint32_t)n) % CONN_BUF);
        c->buf_len -= (uint32_t)n;
        c->fwd_cnt += (uint32_t)n;
    }
    if (!c->buf_len) {
        free(c->buf);
        c->buf = NULL;
        c->buf_head = 0;
        if (c->peer_no_send && c->fd >= 0)
            shutdown(c->fd, SHUT_WR);
    }
    /* the guest thinks our buffer is filling up: tell it what we forwarded */
    if (c->fwd_cnt != c->fwd_told && c->rx_cnt - c->fwd_told > CONN_BUF / 2)
        c->need_credit = true;
    return true;
}

/* Appends to the connection's ring; the caller has checked it fits (credit). */
static void ring_put(struct conn *c, const uint8_t *p, uint32_t k)
{
    uint32_t tail = (c->buf_head + c->buf_len) % CONN_BUF;
    uint32_t first = CONN_BUF - tail < k ? CONN_BUF - tail : k;
    memcpy(c->buf + tail, p, first);
    memcpy(c->buf, p + first, k - first);
    c->buf_len += k;
}

/* The payload of an RW packet: straight to the host stream if nothing is queued ahead of it,
 * the rest into the connection's buffer. The guest may hold at most CONN_BUF bytes with us. */
static int guest_data(struct vsock *s, struct conn *c, uint32_t len)
{
    if ((uint32_t)(c->rx_cnt - c->fwd_cnt) + (uint64_t)len > CONN_BUF) {
        s->overruns++;
        return -1;
    }
    uint64_t got;
    int n = vq_chain_iov(s->v.mem, &s->chain, false, VSOCK_HDR_LEN, len, s->iov, VIRTQ_MAX_SIZE,
                         &got);
    if (n < 0 || got != len)
        return -1;
    c->rx_cnt += len;
    uint64_t done = 0;
    if (!c->buf_len && c->fd >= 0) {
        ssize_t w = send_iov(c->fd, s->iov, n);
        if (w > 0)
            done = (uint64_t)w;
        else if (w < 0 && errno != EAGAIN && errno != EINTR)
            return -1;
        c->fwd_cnt += (uint32_t)done;
    }
    if (done < len) {
        if (!c->buf && !(c->buf = malloc(CONN_BUF)))
            return -1;
        uint64_t skip = done;
        for (int i = 0; i < n; i++) {
            uint64_t k = s->iov[i].iov_len;
            if (skip >= k) {
                skip -= k;
                continue;
            }
            ring_put(c, (const uint8_t *)s->iov[i].iov_base + skip, (uint32_t)(k - skip));
            skip = 0;
        }
    }
    if (gm_done(s->v.mem))
        return -1;
    if (c->fwd_cnt != c->fwd_told && c->rx_cnt - c->fwd_told > CONN_BUF / 2)
        c->need_credit = true;
    return 0;
}

/* A guest connect to the host: a stream to <path>_<port>. */
static void guest_connect(struct vsock *s, const struct vsock_hdr *h)
{
    char where[sizeof(s->path) + 16];
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    int n = snprintf(where, sizeof(where), "%s_%u", s->path, h->dst_port);
    int fd = -1;
    if (n > 0 && (size_t)n < sizeof(a.sun_path)) {
        memcpy(a.sun_path, where, (size_t)n + 1);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0 && errno != EINPROGRESS) {
            close(fd);
            fd = -1;
        }
    }
    struct conn *c = fd >= 0 ? conn_new(s, fd) : NULL;
    if (!c) {
        if (fd >= 0)
            close(fd);
        owe_rst(s, h);
        return;
    }
    c->state = C_OPEN;
    c->local_port = h->dst_port;
    c->peer_port = h->src_port;
    c->peer_buf_alloc = h->buf_alloc;
    c->peer_fwd_cnt = h->fwd_cnt;
    c->need_response = true;
}

/* One packet from the guest's tx queue. <0 only when the chain is no packet at all. */
static int guest_packet(struct vsock *s)
{
    uint8_t raw[VSOCK_HDR_LEN];
    struct vsock_hdr h;
    if (s->chain.rlen < VSOCK_HDR_LEN)
        return vmm_err(EINVAL, "vsock packet shorter than its header");
    if (vq_chain_read(s->v.mem, &s->chain, 0, raw, sizeof(raw)) != sizeof(raw) ||
        vsock_hdr_parse(raw, sizeof(raw), &h))
        return vmm_err(EFAULT, "vsock packet header unreadable");
    const char *why;
    enum vsock_verdict verdict = vsock_pkt_check(&h, s->cid, s->chain.rlen - VSOCK_HDR_LEN, &why);
    struct conn *c = find(s, h.dst_port, h.src_port);
    if (verdict == VSOCK_PKT_DROP)
        return 0;
    if (verdict == VSOCK_PKT_RST) {
        if (c)
            conn_reset(s, c, true);
        else
            owe_rst(s, &h);
        return 0;
    }
    if (h.op == VSOCK_OP_RST) {
        if (c)
            conn_reset(s, c, false);
        return 0;
    }
    if (!c) {
        if (h.op == VSOCK_OP_REQUEST)
            guest_connect(s, &h);
        else
            owe_rst(s, &h);
        return 0;
    }
    c->peer_buf_alloc = h.buf_alloc;
    c->peer_fwd_cnt = h.fwd_cnt;
    switch (h.op) {
    case VSOCK_OP_RESPONSE:
        if (c->state != C_REQUEST) {
            conn_reset(s, c, true);
            break;
        }
        char ok[32];
        int n = snprintf(ok, sizeof(ok), "OK %u\n", c->local_port);
        if (send(c->fd, ok, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) != n) {
            conn_reset(s, c, true);
            break;
        }
        c->state = C_OPEN;
        c->host_readable = true;   /* the host may have sent data behind its CONNECT line */
        break;
    case VSOCK_OP_RW:
        if (c->state != C_OPEN || c->peer_no_send || guest_data(s, c, h.len) < 0)
            conn_reset(s, c, true);
        break;
    case VSOCK_OP_CREDIT_REQUEST:
        c->need_credit = true;
        break;
    case VSOCK_OP_CREDIT_UPDATE:
        break;   /* the credit was taken above; data may flow again */
    case VSOCK_OP_SHUTDOWN:
        if (h.flags & VSOCK_SHUTDOWN_SEND) {
            c->peer_no_send = true;
            if (!c->buf_len && c->fd >= 0)
                shutdown(c->fd, SHUT_WR);
        }
        if ((h.flags & (VSOCK_SHUTDOWN_SEND | VSOCK_SHUTDOWN_RCV)) ==
            (VSOCK_SHUTDOWN_SEND | VSOCK_SHUTDOWN_RCV)) {
            /* a full close: what we hold of the guest's data still goes to the host (the
             * guest counts it as sent), then the RST that completes the close */
            c->peer_closed = true;
            if (!c->buf_len || !flush_buf(s, c) || !c->buf_len)
                conn_reset(s, c, true);
        }
        break;
    default:   /* REQUEST on an existing connection */
        conn_reset(s, c, true);
    }
    return 0;
}

/* ---------- device -> guest packets ---------- */

static void fill_hdr(struct vsock *s, struct vsock_hdr *h, uint32_t local, uint32_t peer,
                     uint16_t op, const struct conn *c)
{
    *h = (struct vsock_hdr){.src_cid = VSOCK_HOST_CID, .dst_cid = s->cid, .src_port = local,
                            .dst_port = peer, .type = VSOCK_TYPE_STREAM, .op = op,
                            .buf_alloc = CONN_BUF, .fwd_cnt = c ? c->fwd_cnt : 0};
}

/* Puts header + payload (already in the chain past the header) into the taken rx chain. */
static int deliver(struct vsock *s, struct virtq *q, struct vsock_hdr *h)
{
    uint8_t raw[VSOCK_HDR_LEN];
    vsock_hdr_build(h, raw);
    int64_t w = vq_chain_write(s->v.mem, &s->chain, 0, raw, sizeof(raw));
    if (w != VSOCK_HDR_LEN)
        return w < 0 ? (int)w : vmm_err(EINVAL, "vsock rx buffer smaller than a header");
    return virtq_push(q, s->chain.head, VSOCK_HDR_LEN + h->len);
}

/* Data from the host stream into the taken rx chain: 1 delivered, 0 nothing to read, <0. */
static int host_data(struct vsock *s, struct virtq *q, struct conn *c)
{
    uint32_t credit = vsock_peer_credit(c->peer_buf_alloc, c->peer_fwd_cnt, c->tx_cnt);
    uint64_t room = s->chain.wlen - VSOCK_HDR_LEN;
    uint64_t want = credit < room ? credit : room;
    if (want > VSOCK_MAX_PKT)
        want = VSOCK_MAX_PKT;
    uint64_t got;
    int n = vq_chain_iov(s->v.mem, &s->chain, true, VSOCK_HDR_LEN, want, s->iov, VIRTQ_MAX_SIZE,
                         &got);
    if (n < 0)
        return n;
    ssize_t r = readv(c->fd, s->iov, n);
    int mem = gm_done(s->v.mem);
    if (mem)
        return mem;
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
        c->host_readable = false;
        return 0;
    }
    if (r <= 0) {
        /* end of the host's stream (or an error): the guest gets no more from us */
        c->host_readable = false;
        if (r == 0) {
            c->host_eof = true;
            c->need_shutdown = true;
        } else {
            conn_reset(s, c, true);
        }
        return 0;
    }
    struct vsock_hdr h;
    fill_hdr(s, &h, c->local_port, c->peer_port, VSOCK_OP_RW, c);
    h.len = (uint32_t)r;
    c->tx_cnt += (uint32_t)r;
    c->fwd_told = c->fwd_cnt;
    int e = deliver(s, q, &h);
    return e ? e : 1;
}

/* One packet owed to the guest, into a taken rx chain: 1 when one was delivered. */
static int next_packet(struct vsock *s, struct virtq *q)
{
    struct vsock_hdr h;
    if (s->nrst) {
        struct rst_owed o = s->rsts[--s->nrst];
        fill_hdr(s, &h, o.src_port, o.dst_port, VSOCK_OP_RST, NULL);
        s->rsts_sent++;
        int e = deliver(s, q, &h);
        return e ? e : 1;
    }
    for (int i = 0; i < MAX_CONNS; i++) {
        struct conn *c = &s->conns[i];
        uint16_t op = 0;
        uint32_t flags = 0;
        if (c->state == C_FREE || c->state == C_LINE)
            continue;
        if (c->need_rst) {
            op = VSOCK_OP_RST;
        } else if (c->need_request) {
            op = VSOCK_OP_REQUEST;
            c->need_request = false;
        } else if (c->need_response) {
            op = VSOCK_OP_RESPONSE;
            c->need_response = false;
        } else if (c->need_credit) {
            op = VSOCK_OP_CREDIT_UPDATE;
            c->need_credit = false;
        } else if (c->need_shutdown) {
            op = VSOCK_OP_SHUTDOWN;
            flags = VSOCK_SHUTDOWN_SEND;
            c->need_shutdown = false;
        }
        if (op) {
            fill_hdr(s, &h, c->local_port, c->peer_port, op, c);
            h.flags = flags;
            c->fwd_told = c->fwd_cnt;
            if (op == VSOCK_OP_RST)
                conn_free(s, c);
            int e = deliver(s, q, &h);
            return e ? e : 1;
        }
    }
    for (int i = 0; i < MAX_CONNS; i++) {
        struct conn *c = &s->conns[i];
        if (c->state != C_OPEN || !c->host_readable || c->host_eof || c->fd < 0 ||
            c->peer_closed || !vsock_peer_credit(c->peer_buf_alloc, c->peer_fwd_cnt, c->tx_cnt))
            continue;
        int r = host_data(s, q, c);
        if (r)
            return r;
    }
    return 0;
}

static bool owes_packet(struct vsock *s)
{
    if (s->nrst)
        return true;
    for (int i = 0; i < MAX_CONNS; i++) {
        const struct conn *c = &s->conns[i];
        if (c->state == C_FREE || c->state == C_LINE)
            continue;
        if (c->need_rst || c->need_request || c->need_response || c->need_credit ||
            c->need_shutdown)
            return true;
        if (c->state == C_OPEN && c->host_readable && !c->host_eof && !c->peer_closed &&
            vsock_peer_credit(c->peer_buf_alloc, c->peer_fwd_cnt, c->tx_cnt))
            return true;
    }
    return false;
}

static int serve_rx(struct vsock *s, int *served, bool *more)
{
    struct virtq *q = virtio_queue(&s->v, Q_RX);
    if (!q)
        return 0;
    int r = 0, budget = q->num;
    while (owes_packet(s)) {
        if (budget-- == 0) {
            *more = true;   /* come back after the loop's other work */
            break;
        }
        if ((r = virtq_pop(q, &s->chain)) <= 0)
            break;
        if (s->chain.nread || s->chain.wlen <= VSOCK_HDR_LEN)
            return vmm_err(EINVAL, "vsock rx buffer is not a writable buffer with room past the header");
        if ((r = next_packet(s, q)) < 0)
            return r;
        if (r == 0) {
            /* nothing after all (the host had no data, or its stream ended): keep the buffer
             * and look again; each such turn clears what made us look */
            virtq_unpop(q);
            continue;
        }
        (*served)++;
    }
    if (*served)
        virtio_notify_used(&s->v, q);
    return r < 0 ? r : 0;
}

static int serve_tx(struct vsock *s, bool *more)
{
    struct virtq *q = virtio_queue(&s->v, Q_TX);
    if (!q)
        return 0;
    int r = 0, served = 0;
    /* resets owed wait for rx buffers: stop taking packets while the queue of them is full */
    while (served < q->num && s->nrst < RST_QUEUE && (r = virtq_pop(q, &s->chain)) > 0) {
        if (s->chain.wlen)
            return vmm_err(EINVAL, "vsock tx packet with device-writable buffers");
        if ((r = guest_packet(s)) || (r = virtq_push(q, s->chain.head, 0)))
            break;
        served++;
    }
    if (served)
        virtio_notify_used(&s->v, q);
    /* stopped by owed resets: the guest's next rx buffer (its doorbell) brings us back */
    *more = r >= 0 && served == q->num;
    return r < 0 ? r : 0;
}

static int serve_event(struct vsock *s)
{
    struct virtq *q = virtio_queue(&s->v, Q_EVENT);
    if (!q || !s->reset_event)
        return 0;
    int r = virtq_pop(q, &s->chain);
    if (r <= 0)
        return r;
    uint32_t id = VSOCK_EVENT_TRANSPORT_RESET;
    if (s->chain.nread || vq_chain_write(s->v.mem, &s->chain, 0, &id, 4) != 4)
        return vmm_err(EINVAL, "vsock event buffer is not a writable buffer of 4 bytes");
    if ((r = virtq_push(q, s->chain.head, 4)))
        return r;
    s->reset_event = false;
    virtio_notify_used(&s->v, q);
    return 0;
}

static int vsock_process(struct virtio_dev *v)
{
    struct vsock *s = (struct vsock *)v;
    bool more = false;
    int served = 0, r;
    if ((r = serve_event(s)) || (r = serve_tx(s, &more)) || (r = serve_rx(s, &served, &more)))
        return r;
    /* tx packets left behind while resets were owed: rx has made room for them now */
    struct virtq *tq = virtio_queue(v, Q_TX);
    if (!more && tq && s->nrst < RST_QUEUE && virtq_pending(tq) > 0)
        more = true;
    if (more)
        virtio_rekick(v);
    return 0;
}

/* ---------- the host side: listener, streams, timer (event loop) ---------- */

static void host_accept(struct vsock *s)
{
    for (;;) {
        int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        struct conn *c = conn_new(s, fd);
        if (!c) {
            close(fd);   /* full: the host sees its connection closed */
            continue;
        }
        c->state = C_LINE;
        c->deadline = now() + CONNECT_TIMEOUT_NS;
        arm_timer(s);
    }
}

/* The CONNECT line, a byte at a time so nothing behind it is consumed. */
static void host_line(struct vsock *s, struct conn *c)
{
    for (;;) {
        char ch;
        ssize_t n = read(c->fd, &ch, 1);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0 || c->line_len == LINE_MAX_LEN) {
            conn_free(s, c);
            return;
        }
        c->line[c->line_len++] = ch;
        if (ch != '\n')
            continue;
        uint32_t port;
        if (vsock_parse_connect(c->line, c->line_len, &port)) {
            conn_free(s, c);
            return;
        }
        c->state = C_REQUEST;
        c->peer_port = port;
        c->local_port = alloc_port(s);
        c->need_request = true;
        c->deadline = now() + CONNECT_TIMEOUT_NS;
        return;
    }
}

static void on_timer(struct vsock *s)
{
    uint64_t n;
    if (read(s->timer, &n, sizeof(n)) < 0) {
        /* not expired */
    }
    bool waiting = false;
    uint64_t t = now();
    for (int i = 0; i < MAX_CONNS; i++) {
        struct conn *c = &s->conns[i];
        if (c->state != C_LINE && c->state != C_REQUEST)
            continue;
        if (c->deadline <= t)
            conn_reset(s, c, c->state == C_REQUEST && !c->need_request);
        else
            waiting = true;
    }
    if (!waiting) {
        struct itimerspec off = {{0, 0}, {0, 0}};
        timerfd_settime(s->timer, 0, &off, NULL);
    }
}

static void on_host(void *ctx, uint32_t events)
{
    struct vsock *s = ctx;
    struct epoll_event ev[32];
    (void)events;
    int n = epoll_wait(s->ep, ev, 32, 0);
    for (int i = 0; i < n; i++) {
        uint64_t k = ev[i].data.u64;
        if (k == UINT64_MAX) {
            host_accept(s);
            continue;
        }
        if (k == UINT64_MAX - 1) {
            on_timer(s);
            continue;
        }
        if (k >= MAX_CONNS)
            continue;
        struct conn *c = &s->conns[k];
        if (c->state == C_FREE || c->fd < 0)
            continue;
        if (c->state == C_LINE) {
            host_line(s, c);
            continue;
        }
        if (c->peer_closed) {     /* only our buffer is left: flush it, then close */
            if (!flush_buf(s, c) || !c->buf_len ||
                (ev[i].events & (EPOLLHUP | EPOLLERR)))
                conn_reset(s, c, true);
            continue;
        }
        if ((ev[i].events & EPOLLOUT) && c->buf_len && !flush_buf(s, c)) {
            conn_reset(s, c, true);
            continue;
        }
        if (ev[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            c->host_readable = true;   /* rx reads it (EOF and errors too) within credit */
    }
    if (n == 32)
        virtio_rekick(&s->v);   /* more may be ready: the pass below, then the loop again */
    virtio_run(&s->v);
}

/* ---------- life cycle ---------- */

/* The driver reset the device: connections the guest knew are gone with it; a host that is
 * still connecting (its line not read, or its REQUEST not yet delivered) goes on waiting. */
static void vsock_reset(struct virtio_dev *v)
{
    struct vsock *s = (struct vsock *)v;
    for (int i = 0; i < MAX_CONNS; i++) {
        struct conn *c = &s->conns[i];
        if (c->state == C_OPEN || (c->state == C_REQUEST && !c->need_request))
            conn_free(s, c);
    }
    s->nrst = 0;
    s->reset_event = false;
}

static const struct virtio_ops vsock_vops = {
    .device_id = VIRTIO_ID_VSOCK,
    .features = 1ULL << VIRTIO_RING_F_INDIRECT_DESC,
    .nqueues = 3, .queue_max = VSOCK_QUEUE_SIZE, .process = vsock_process,
    .reset = vsock_reset,
};

static void vsock_destroy(struct device *d);

static int listen_on(struct vsock *s)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    memcpy(a.sun_path, s->path, strlen(s->path) + 1);
    struct stat st;
    if (lstat(s->path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            return vmm_err(EEXIST, "vsock path %s exists and is not a socket", s->path);
        unlink(s->path);   /* a previous VMM's socket */
    }
    s->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->listen_fd < 0)
        return vmm_err(errno, "vsock socket: %m");
    if (bind(s->listen_fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(s->listen_fd, 64) < 0)
        return vmm_err(errno, "vsock listening on %s: %m", s->path);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
    if (epoll_ctl(s->ep, EPOLL_CTL_ADD, s->listen_fd, &ev) < 0)
        return vmm_err(errno, "epoll_ctl: %m");
    return 0;
}

static int vsock_init(struct device *d, const struct vmm_device_config *cfg)
{
    struct vsock *s = calloc(1, sizeof(*s));
    if (!s)
        return vmm_err(ENOMEM, "out of memory for virtio-vsock");
    d->priv = s;
    s->listen_fd = s->ep = s->timer = s->v.kick = -1;
    s->cid = cfg->cid;
    s->next_port = LOCAL_PORT_FIRST;
    for (int i = 0; i < MAX_CONNS; i++)
        s->conns[i].fd = -1;
    int r = 0;
    if (cfg->cid < 3 || cfg->cid > UINT32_MAX - 1)
        r = vmm_err(EINVAL, "vsock guest CID %llu: use 3 up to 2^32 - 2", cfg->cid);
    else if (!cfg->path || !*cfg->path)
        r = vmm_err(EINVAL, "vsock needs a host Unix socket path");
    else if (strlen(cfg->path) + 12 >= sizeof(s->path))
        r = vmm_err(ENAMETOOLONG, "vsock path %s is too long for a Unix socket (with _<port>)",
                    cfg->path);
    if (!r) {
        snprintf(s->path, sizeof(s->path), "%s", cfg->path);
        s->ep = epoll_create1(EPOLL_CLOEXEC);
        s->timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = UINT64_MAX - 1};
        if (s->ep < 0 || s->timer < 0 || epoll_ctl(s->ep, EPOLL_CTL_ADD, s->timer, &ev) < 0)
            r = vmm_err(errno, "vsock epoll: %m");
    }
    if (!r)
        r = listen_on(s);
    if (!r) {
        uint64_t cid = s->cid;
        memcpy(s->v.config, &cid, 8);
        s->v.config_len = 8;
        if ((r = virtio_init(&s->v, d, &vsock_vops)))
            s->v.kick = -1;
    }
    if (!r && d->env->loop && (r = evl_add(d->env->loop, s->ep, EPOLLIN, on_host, s)))
        evl_del(d->env->loop, s->v.kick);   /* the loop has not started: nothing runs it */
    if (r)
        vsock_destroy(d);
    return r;
}

static void vsock_destroy(struct device *d)
{
    struct vsock *s = d->priv;
    if (!s)
        return;
    drop_all(s);
    if (s->v.kick >= 0)
        virtio_destroy(&s->v);
    if (s->listen_fd >= 0) {
        close(s->listen_fd);
        struct stat st;
        if (lstat(s->path, &st) == 0 && S_ISSOCK(st.st_mode))
            unlink(s->path);
    }
    if (s->timer >= 0)
        close(s->timer);
    if (s->ep >= 0)
        close(s->ep);
    free(s);
    d->priv = NULL;
}

static int vsock_save(struct device *d, struct enc *e)
{
    struct vsock *s = d->priv;
    enc_map(e, 3);
    enc_kv_uint(e, "v", VSOCK_STATE_VERSION);
    enc_kv_uint(e, "cid", s->cid);
    enc_str(e, "transport");
    virtio_save(&s->v, e);
    return 0;
}

static int vsock_decode(struct device *d, const struct dec_map *m, uint32_t version, void **out)
{
    struct vsock *s = d->priv;
    (void)version;
    uint64_t cid;
    int r = dec_get_uint(m, "cid", &cid);
    if (r)
        return r;
    if (cid != s->cid)
        return vmm_err(EINVAL, "the snapshot's guest CID is %llu, this configuration gives %llu: "
                       "the guest keeps its CID across a restore", (unsigned long long)cid,
                       (unsigned long long)s->cid);
    struct virtio_transport_state *t = malloc(sizeof(*t));
    if (!t)
        return vmm_err(ENOMEM, "out of memory decoding virtio-vsock");
    if ((r = virtio_decode(&s->v, m, t))) {
        free(t);
        return r;
    }
    *out = t;
    return 0;
}

static void vsock_apply(struct device *d, void *state)
{
    struct vsock *s = d->priv;
    virtio_apply(&s->v, state);
    free(state);
    /* connections are host state that no snapshot holds: the guest must drop its own */
    drop_all(s);
    s->reset_event = true;
}

static int vsock_post_load(struct device *d)
{
    struct vsock *s = d->priv;
    virtio_post_load(&s->v);
    return 0;
}

const struct device_ops virtio_vsock_ops = {
    .name = "virtio-vsock", .version = VSOCK_STATE_VERSION, .boot_kind = BOOT_DEV_VIRTIO_MMIO,
    .init = vsock_init, .access = virtio_mmio_access, .save = vsock_save,
    .decode = vsock_decode, .apply = vsock_apply, .free_state = free,
    .post_load = vsock_post_load, .destroy = vsock_destroy,
};

/* For the unit tests and the fuzz target, which run the device without an event loop. */
void virtio_vsock_poll_host(struct device *d) { on_host(d->priv, EPOLLIN); }
