/*
 * virtio_net.c - virtio-net (virtio 1.x, 5.1) bridged to a user-space network stack per VM
 * (passt) over a Unix stream socket, each frame preceded by its length as a 4-byte big-endian
 * integer (QEMU's `-netdev stream` framing, passt's `--socket`). The device connects at init.
 *
 * Queues: 0 rx, 1 tx (256 each); no control queue, no multiqueue, no offloads.
 * Rx buffers: with VIRTIO_NET_F_MRG_RXBUF (5.1.6.4) a frame is spread over as many chains as it
 * needs, the count in the first one's header (num_buffers); without it, every rx chain holds the
 * header and a whole frame. Mergeable buffers matter beyond memory: Linux otherwise posts a
 * 68 KiB "big packet" per entry when the MTU is above 1500, so a full ring holds 16 MiB, which
 * an emulated guest took seconds to drain while passt, waiting for ACKs, sent the data again
 * (docs/network.md). A frame that does not fit is dropped (counted) and its first chain returned
 * with length 0, so the guest recycles it: without mergeable buffers, a chain smaller than it;
 * with them, a frame larger than the whole ring's buffers or a first buffer shorter than the
 * header. A frame that needs more buffers than the guest has posted waits for them.
 *
 * Everything runs on the VM's event loop: the doorbell, and one handler for the device's own
 * epoll set (the backend socket, edge-triggered). Nothing blocks:
 *   tx  each frame is copied out of guest memory into the out buffer (the copy is what the
 *       egress filter judges, so a guest rewriting its buffer meanwhile changes nothing), then
 *       the buffer goes to the socket once per pass. What the socket does not take stays; while
 *       the next frame does not fit, tx chains stay in the ring until EPOLLOUT drains it: the
 *       guest's tx queue fills and it stops sending. At most OUT_CAP bytes are ever held.
 *   rx  the socket is read into the in buffer only while a complete frame is wanted; each frame
 *       goes into one rx chain. With no rx buffers the device stops reading (the socket's
 *       buffer is the backend's backpressure) until the guest's next doorbell.
 * The backend gone (EOF, an error, a frame length of 0 or above NET_MAX_RX): the socket is
 * closed, the link goes down with a config interrupt, tx frames are dropped and counted. The VM
 * runs on.
 *
 * State: "v", "mac", "transport". The backend connection, the buffers and the policy are host
 * state and never saved: a restored device has the MAC and backend of its new configuration
 * (copies of one snapshot must differ), and the policy its owner sets again.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "devices.h"
#include "net_filter.h"
#include "virtio_mmio.h"
#include "../arch/boot.h"

#define NET_STATE_VERSION 1
#define NET_QUEUE_SIZE 256
#define VIRTIO_ID_NET 1
#define Q_RX 0
#define Q_TX 1
#define VIRTIO_NET_F_MTU 3
#define VIRTIO_NET_F_MAC 5
#define VIRTIO_NET_F_MRG_RXBUF 15
#define VIRTIO_NET_F_STATUS 16
#define VIRTIO_NET_S_LINK_UP 1
#define NET_HDR_LEN 12                 /* virtio_net_hdr with num_buffers (VERSION_1) */
#define NET_MAX_RX 65550               /* the longest frame the backend may send */
#define CFG_STATUS 6                   /* config space: mac[6], status, max pairs, mtu */
#define CFG_LEN 12
#define OUT_CAP (256 * 1024)           /* tx bytes held for the backend, at most */
#define IN_CAP (256 * 1024)            /* rx bytes read ahead from the backend */
#define RST_QUEUE 16                   /* resets owed to the guest; beyond that, dropped */

struct net_pol {                       /* a policy and its rules in one allocation */
    struct vmm_net_policy p;
    struct vmm_net_rule rules[];
};

struct net {
    struct virtio_dev v;               /* first: d->priv points at both */
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    uint8_t mac[6];
    uint16_t mtu;
    int fd, ep;                        /* backend socket (-1: gone), the device's epoll set */
    bool readable;                     /* the socket may hold bytes we have not read */
    uint8_t *out;                      /* length-prefixed frames for the backend */
    uint32_t out_off, out_len;         /* out[out_off, out_len) not sent yet */
    uint8_t *in;                       /* bytes from the backend */
    uint32_t in_head, in_len;          /* in[in_head, in_len) not delivered yet */
    uint8_t rst[RST_QUEUE][NET_RST_LEN];
    int nrst;
    pthread_mutex_t pol_lock;          /* pol: set from any thread, read by the loop */
    struct net_pol *pol;               /* NULL: deny (but ARP and DHCP) */
    _Atomic uint64_t tx_frames, tx_bytes, rx_frames, rx_bytes, tx_denied, tx_dropped,
                     rx_dropped;
    _Atomic int link_up;
    struct vq_chain chain;
    struct vq_chain first;             /* mergeable rx: the chain that gets the header */
    uint16_t mrg_head[NET_QUEUE_SIZE]; /* mergeable rx: the chains one frame took, in order */
    uint32_t mrg_len[NET_QUEUE_SIZE];
};

static void count(_Atomic uint64_t *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void set_link(struct net *n, bool up)
{
    uint16_t st = up ? VIRTIO_NET_S_LINK_UP : 0;
    atomic_store(&n->link_up, up);
    virtio_config_write(&n->v, CFG_STATUS, &st, sizeof(st));
}

/* The backend is gone: what it had sent and what it was owed go with it. */
static void backend_down(struct net *n)
{
    if (n->fd < 0)
        return;
    epoll_ctl(n->ep, EPOLL_CTL_DEL, n->fd, NULL);
    close(n->fd);
    n->fd = -1;
    n->readable = false;
    n->in_head = n->in_len = n->out_off = n->out_len = 0;
    set_link(n, false);
}

/* ---------- tx: guest -> backend ---------- */

/* Writes what the out buffer holds; false if the backend is gone. */
static bool flush_out(struct net *n)
{
    while (n->fd >= 0 && n->out_off < n->out_len) {
        ssize_t w = send(n->fd, n->out + n->out_off, n->out_len - n->out_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            return true;   /* EPOLLOUT brings us back */
        if (w <= 0) {
            backend_down(n);
            return false;
        }
        n->out_off += (uint32_t)w;
    }
    n->out_off = n->out_len = 0;
    return true;
}

/* Room for `need` more bytes at the out buffer's end, sending and compacting as needed. */
static bool out_room(struct net *n, uint32_t need)
{
    if (OUT_CAP - n->out_len >= need)
        return true;
    flush_out(n);
    if (n->out_off) {
        memmove(n->out, n->out + n->out_off, n->out_len - n->out_off);
        n->out_len -= n->out_off;
        n->out_off = 0;
    }
    return OUT_CAP - n->out_len >= need;
}

static enum net_verdict judge(struct net *n, const uint8_t *frame, uint32_t len)
{
    pthread_mutex_lock(&n->pol_lock);
    enum net_verdict v = net_filter(frame, len, n->pol ? &n->pol->p : NULL);
    pthread_mutex_unlock(&n->pol_lock);
    return v;
}

/* One frame of `len` bytes from the taken chain: copied behind the out buffer's end, judged,
 * and kept there (length in front) if the policy lets it go. */
static int tx_frame(struct net *n, uint32_t len)
{
    uint8_t *at = n->out + n->out_len, *frame = at + 4;
    if (vq_chain_read(n->v.mem, &n->chain, NET_HDR_LEN, frame, len) != (int64_t)len)
        return vmm_err(EFAULT, "net tx frame unreadable");
    enum net_verdict v = judge(n, frame, len);
    if (v != NET_ALLOW) {
        count(&n->tx_denied, 1);
        if (v == NET_DENY_RST && n->nrst < RST_QUEUE && net_build_rst(frame, len, n->rst[n->nrst]))
            n->nrst++;
        return 0;
    }
    if (n->fd < 0) {
        count(&n->tx_dropped, 1);
        return 0;
    }
    at[0] = (uint8_t)(len >> 24);
    at[1] = (uint8_t)(len >> 16);
    at[2] = (uint8_t)(len >> 8);
    at[3] = (uint8_t)len;
    n->out_len += 4 + len;
    count(&n->tx_frames, 1);
    count(&n->tx_bytes, len);
    return 0;
}

static int serve_tx(struct net *n, bool *more)
{
    struct virtq *q = virtio_queue(&n->v, Q_TX);
    if (!q)
        return 0;
    int r = 0, served = 0;
    while (served < q->num && (r = virtq_pop(q, &n->chain)) > 0) {
        uint64_t len = n->chain.rlen >= NET_HDR_LEN ? n->chain.rlen - NET_HDR_LEN : 0;
        r = 0;
        if (n->chain.wlen || len < ETH_HLEN || len > NET_MAX_FRAME) {
            count(&n->tx_dropped, 1);   /* the guest's error, not the ring's */
        } else if (!out_room(n, 4 + (uint32_t)len)) {
            virtq_unpop(q);             /* backpressure: wait for EPOLLOUT */
            break;
        } else if ((r = tx_frame(n, (uint32_t)len))) {
            break;
        }
        if ((r = virtq_push(q, n->chain.head, 0)))
            break;
        served++;
    }
    if (served)
        virtio_notify_used(&n->v, q);
    flush_out(n);
    *more |= r >= 0 && served == q->num;
    return r < 0 ? r : 0;
}

/* ---------- rx: backend -> guest ---------- */

/* The next complete frame from the backend, reading it if need be: true and *frame, *len
 * (pointing into the in buffer), or false (none yet, or the backend went down). */
static bool next_frame(struct net *n, const uint8_t **frame, uint32_t *len)
{
    for (;;) {
        uint32_t have = n->in_len - n->in_head;
        if (have >= 4) {
            uint32_t l = get_be32(n->in + n->in_head);
            if (l == 0 || l > NET_MAX_RX) {   /* the stream cannot be trusted any more */
                backend_down(n);
                return false;
            }
            if (have - 4 >= l) {
                *frame = n->in + n->in_head + 4;
                *len = l;
                return true;
            }
        }
        if (n->fd < 0 || !n->readable)
            return false;
        if (n->in_head) {
            memmove(n->in, n->in + n->in_head, have);
            n->in_head = 0;
            n->in_len = have;
        }
        ssize_t got = read(n->fd, n->in + n->in_len, IN_CAP - n->in_len);
        if (got > 0) {
            n->in_len += (uint32_t)got;
        } else if (got < 0 && errno == EINTR) {
            continue;
        } else if (got < 0 && errno == EAGAIN) {
            n->readable = false;
            return false;
        } else {
            backend_down(n);
            return false;
        }
    }
}

static void consume_frame(struct net *n, uint32_t len)
{
    n->in_head += 4 + len;
    if (n->in_head == n->in_len)
        n->in_head = n->in_len = 0;
}

/* Bytes [off, off + len) of header + frame, into chain c from its first writable byte. */
static int rx_copy(struct net *n, const struct vq_chain *c, const uint8_t *hdr,
                   const uint8_t *frame, uint64_t off, uint64_t len)
{
    for (uint64_t done = 0; done < len;) {
        uint64_t o = off + done, k;
        const uint8_t *src;
        if (o < NET_HDR_LEN) {
            src = hdr + o;
            k = NET_HDR_LEN - o;
        } else {
            src = frame + (o - NET_HDR_LEN);
            k = len - done;
        }
        if (k > len - done)
            k = len - done;
        if (vq_chain_write(n->v.mem, c, done, src, k) != (int64_t)k)
            return vmm_err(EFAULT, "net rx buffer unwritable");
        done += k;
    }
    return 0;
}

/* Into the taken rx chain: header + frame, or nothing if it does not fit. Bytes written. */
static int rx_deliver(struct net *n, const uint8_t *frame, uint32_t len, uint32_t *written)
{
    *written = 0;
    if (n->chain.wlen < NET_HDR_LEN + (uint64_t)len) {
        count(&n->rx_dropped, 1);
        return 0;
    }
    uint8_t hdr[NET_HDR_LEN] = {0};
    hdr[10] = 1;                        /* num_buffers, little endian */
    int r = rx_copy(n, &n->chain, hdr, frame, 0, NET_HDR_LEN + (uint64_t)len);
    if (r)
        return r;
    count(&n->rx_frames, 1);
    count(&n->rx_bytes, len);
    *written = NET_HDR_LEN + len;
    return 0;
}

/*
 * Mergeable rx: takes chains until header + frame fit, fills them, then returns them in order
 * with num_buffers in the first header. 1: delivered or dropped (*pushed chains used);
 * 0: the guest has not posted enough buffers yet (every chain taken is put back); <0: the ring
 * is broken.
 */
static int rx_deliver_mrg(struct net *n, struct virtq *q, const uint8_t *frame, uint32_t len,
                          int *pushed)
{
    uint64_t total = NET_HDR_LEN + (uint64_t)len, off = 0;
    uint8_t hdr[NET_HDR_LEN] = {0};
    int k = 0, r;
    *pushed = 0;
    while (off < total) {
        if (k == q->num) {              /* the whole ring cannot hold it: drop the frame */
            for (int i = 1; i < k; i++)
                virtq_unpop(q);
            count(&n->rx_dropped, 1);
            *pushed = 1;
            return (r = virtq_push(q, n->mrg_head[0], 0)) ? r : 1;
        }
        struct vq_chain *c = k ? &n->chain : &n->first;
        if ((r = virtq_pop(q, c)) <= 0) {
            for (int i = 0; i < k; i++)
                virtq_unpop(q);
            return r;                   /* 0: the guest's doorbell resumes us */
        }
        if (c->nread)
            return vmm_err(EINVAL, "net rx buffer with device-readable parts");
        if (!k && c->wlen < NET_HDR_LEN) {  /* 5.1.6.3.1: every buffer holds a header */
            count(&n->rx_dropped, 1);
            *pushed = 1;
            return (r = virtq_push(q, c->head, 0)) ? r : 1;
        }
        uint64_t take = c->wlen < total - off ? c->wlen : total - off;
        if (k && (r = rx_copy(n, c, hdr, frame, off, take)))
            return r;
        n->mrg_head[k] = c->head;
        n->mrg_len[k++] = (uint32_t)take;
        off += take;
    }
    hdr[10] = (uint8_t)k;               /* num_buffers, little endian */
    hdr[11] = (uint8_t)(k >> 8);
    if ((r = rx_copy(n, &n->first, hdr, frame, 0, n->mrg_len[0])))
        return r;
    for (int i = 0; i < k; i++)
        if ((r = virtq_push(q, n->mrg_head[i], n->mrg_len[i])))
            return r;
    count(&n->rx_frames, 1);
    count(&n->rx_bytes, len);
    *pushed = k;
    return 1;
}

static int serve_rx(struct net *n, bool *more)
{
    struct virtq *q = virtio_queue(&n->v, Q_RX);
    if (!q)
        return 0;
    bool mrg = n->v.features >> VIRTIO_NET_F_MRG_RXBUF & 1;
    int r = 0, served = 0;
    for (;;) {
        const uint8_t *frame;
        uint32_t len, written;
        bool rst = n->nrst > 0;
        if (rst) {
            frame = n->rst[n->nrst - 1];
            len = NET_RST_LEN;
        } else if (!next_frame(n, &frame, &len)) {
            break;
        }
        if (served >= q->num) {
            *more = true;               /* come back after the loop's other work */
            break;
        }
        if (mrg) {
            int pushed;
            if ((r = rx_deliver_mrg(n, q, frame, len, &pushed)) <= 0)
                break;                  /* 0: too few rx buffers for now */
            r = 0;
            served += pushed;
        } else {
            if ((r = virtq_pop(q, &n->chain)) <= 0)
                break;                  /* no rx buffers: the guest's doorbell resumes us */
            if (n->chain.nread) {
                r = vmm_err(EINVAL, "net rx buffer with device-readable parts");
                break;
            }
            if ((r = rx_deliver(n, frame, len, &written)) ||
                (r = virtq_push(q, n->chain.head, written)))
                break;
            served++;
        }
        if (rst)
            n->nrst--;
        else
            consume_frame(n, len);
    }
    if (served)
        virtio_notify_used(&n->v, q);
    return r < 0 ? r : 0;
}

/* No driver to take them (not set up yet, or broken): frames are dropped as a NIC would. */
static void rx_discard(struct net *n)
{
    const uint8_t *frame;
    uint32_t len;
    while (next_frame(n, &frame, &len)) {
        count(&n->rx_dropped, 1);
        consume_frame(n, len);
    }
}

static int net_process(struct virtio_dev *v)
{
    struct net *n = (struct net *)v;
    bool more = false;
    int r;
    if ((r = serve_tx(n, &more)) || (r = serve_rx(n, &more)))
        return r;
    if (more)
        virtio_rekick(v);
    return 0;
}

/* The device's epoll set: the backend became readable, writable, or went away. */
static void on_backend(void *ctx, uint32_t events)
{
    struct net *n = ctx;
    struct epoll_event ev[4];
    (void)events;
    int k = epoll_wait(n->ep, ev, 4, 0);
    for (int i = 0; i < k && n->fd >= 0; i++) {
        if (ev[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            n->readable = true;         /* the read sees EOF or the error */
        if (ev[i].events & EPOLLOUT)
            flush_out(n);
    }
    if (!virtio_driver_ok(&n->v))
        rx_discard(n);
    virtio_run(&n->v);
}

/* ---------- life cycle ---------- */

static void net_reset(struct virtio_dev *v)
{
    struct net *n = (struct net *)v;
    n->in_head = n->in_len = 0;         /* read for a driver that is gone */
    n->nrst = 0;
}

static const struct virtio_ops net_vops = {
    .device_id = VIRTIO_ID_NET,
    .features = 1ULL << VIRTIO_NET_F_MAC | 1ULL << VIRTIO_NET_F_STATUS |
                1ULL << VIRTIO_NET_F_MTU | 1ULL << VIRTIO_NET_F_MRG_RXBUF |
                1ULL << VIRTIO_RING_F_INDIRECT_DESC,
    .nqueues = 2, .queue_max = NET_QUEUE_SIZE, .process = net_process, .reset = net_reset,
};

static void net_destroy(struct device *d);

static int connect_backend(struct net *n)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    memcpy(a.sun_path, n->path, strlen(n->path) + 1);
    n->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (n->fd < 0)
        return vmm_err(errno, "net backend socket: %m");
    if (connect(n->fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        int e = errno;
        close(n->fd);
        n->fd = -1;
        if (e == ENOENT || e == ECONNREFUSED)
            return vmm_err(e, "nobody listens on the net backend socket %s: start the backend "
                           "(passt --socket %s) before the VM", n->path, n->path);
        return vmm_err(e, "connecting to the net backend %s: %s", n->path, strerror(e));
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET};
    if (epoll_ctl(n->ep, EPOLL_CTL_ADD, n->fd, &ev) < 0)
        return vmm_err(errno, "epoll_ctl: %m");
    n->readable = true;
    return 0;
}

static int check_config(const struct vmm_device_config *cfg, size_t path_max)
{
    static const uint8_t zero[6];
    if (!cfg->path || !*cfg->path)
        return vmm_err(EINVAL, "net needs the backend's Unix socket path");
    if (strlen(cfg->path) >= path_max)
        return vmm_err(ENAMETOOLONG, "net backend path %s is too long for a Unix socket",
                       cfg->path);
    if (!memcmp(cfg->mac, zero, 6) || (cfg->mac[0] & 1))
        return vmm_err(EINVAL, "net MAC %02x:%02x:%02x:%02x:%02x:%02x: give a unicast address "
                       "that is not all zeros", cfg->mac[0], cfg->mac[1], cfg->mac[2],
                       cfg->mac[3], cfg->mac[4], cfg->mac[5]);
    if (cfg->mtu && (cfg->mtu < 68 || cfg->mtu > 65535))
        return vmm_err(EINVAL, "net MTU %u: use 68..65535 (0 for 1500)", cfg->mtu);
    return 0;
}

static int net_init(struct device *d, const struct vmm_device_config *cfg)
{
    struct net *n = calloc(1, sizeof(*n));
    if (!n)
        return vmm_err(ENOMEM, "out of memory for virtio-net");
    d->priv = n;
    n->fd = n->ep = n->v.kick = -1;
    pthread_mutex_init(&n->pol_lock, NULL);
    int r = cfg ? check_config(cfg, sizeof(n->path)) : vmm_err(EINVAL, "net needs a config");
    if (!r) {
        snprintf(n->path, sizeof(n->path), "%s", cfg->path);
        memcpy(n->mac, cfg->mac, 6);
        n->mtu = (uint16_t)(cfg->mtu ? cfg->mtu : 1500);
        n->in = malloc(IN_CAP);
        n->out = malloc(OUT_CAP);
        if (!n->in || !n->out)
            r = vmm_err(ENOMEM, "out of memory for virtio-net buffers");
    }
    if (!r && (n->ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
        r = vmm_err(errno, "net epoll: %m");
    if (!r)
        r = connect_backend(n);
    if (!r) {
        uint16_t status = VIRTIO_NET_S_LINK_UP, pairs = 1, mtu = n->mtu;
        memcpy(n->v.config, n->mac, 6);
        memcpy(n->v.config + CFG_STATUS, &status, 2);
        memcpy(n->v.config + 8, &pairs, 2);
        memcpy(n->v.config + 10, &mtu, 2);
        n->v.config_len = CFG_LEN;
        atomic_store(&n->link_up, 1);
        if ((r = virtio_init(&n->v, d, &net_vops)))
            n->v.kick = -1;
    }
    if (!r && d->env->loop && (r = evl_add(d->env->loop, n->ep, EPOLLIN, on_backend, n)))
        evl_del(d->env->loop, n->v.kick);   /* the loop has not started: nothing runs it */
    if (r)
        net_destroy(d);
    return r;
}

static void net_destroy(struct device *d)
{
    struct net *n = d->priv;
    if (!n)
        return;
    if (n->v.kick >= 0)
        virtio_destroy(&n->v);
    if (n->fd >= 0)
        close(n->fd);
    if (n->ep >= 0)
        close(n->ep);
    free(n->in);
    free(n->out);
    free(n->pol);
    pthread_mutex_destroy(&n->pol_lock);
    free(n);
    d->priv = NULL;
}

static int net_save(struct device *d, struct enc *e)
{
    struct net *n = d->priv;
    enc_map(e, 3);
    enc_kv_uint(e, "v", NET_STATE_VERSION);
    enc_kv_bin(e, "mac", n->mac, 6);
    enc_str(e, "transport");
    virtio_save(&n->v, e);
    return 0;
}

static int net_decode(struct device *d, const struct dec_map *m, uint32_t version, void **out)
{
    struct net *n = d->priv;
    (void)version;
    uint8_t mac[6];
    int r = dec_get_bin_exact(m, "mac", mac, sizeof(mac));   /* recorded, not restored */
    if (r)
        return r;
    struct virtio_transport_state *s = malloc(sizeof(*s));
    if (!s)
        return vmm_err(ENOMEM, "out of memory decoding virtio-net");
    if ((r = virtio_decode(&n->v, m, s))) {
        free(s);
        return r;
    }
    *out = s;
    return 0;
}

static void net_apply(struct device *d, void *state)
{
    struct net *n = d->priv;
    virtio_apply(&n->v, state);
    free(state);
    /* frames read or owed for the guest as it was before the load are not its business now */
    n->in_head = n->in_len = 0;
    n->nrst = 0;
}

static int net_post_load(struct device *d)
{
    struct net *n = d->priv;
    virtio_post_load(&n->v);
    return 0;
}

const struct device_ops virtio_net_ops = {
    .name = "virtio-net", .version = NET_STATE_VERSION, .boot_kind = BOOT_DEV_VIRTIO_MMIO,
    .init = net_init, .access = virtio_mmio_access, .save = net_save, .decode = net_decode,
    .apply = net_apply, .free_state = free, .post_load = net_post_load, .destroy = net_destroy,
};

/* ---------- the host's side: policy and counters (any thread) ---------- */

int virtio_net_set_policy(struct device *d, const struct vmm_net_policy *p)
{
    struct net *n = d->priv;
    int r = net_policy_check(p);
    if (r)
        return r;
    struct net_pol *np = malloc(sizeof(*np) + (size_t)p->nrules * sizeof(np->rules[0]));
    if (!np)
        return vmm_err(ENOMEM, "out of memory for %u net rules", p->nrules);
    np->p = (struct vmm_net_policy){.default_allow = p->default_allow != 0, .nrules = p->nrules,
                                    .rules = np->rules};
    if (p->nrules)
        memcpy(np->rules, p->rules, (size_t)p->nrules * sizeof(np->rules[0]));
    pthread_mutex_lock(&n->pol_lock);
    struct net_pol *old = n->pol;
    n->pol = np;
    pthread_mutex_unlock(&n->pol_lock);
    free(old);
    return 0;
}

void virtio_net_stats(struct device *d, struct vmm_net_stats *o)
{
    struct net *n = d->priv;
    *o = (struct vmm_net_stats){
        .tx_frames = atomic_load(&n->tx_frames), .tx_bytes = atomic_load(&n->tx_bytes),
        .rx_frames = atomic_load(&n->rx_frames), .rx_bytes = atomic_load(&n->rx_bytes),
        .tx_denied = atomic_load(&n->tx_denied), .tx_dropped = atomic_load(&n->tx_dropped),
        .rx_dropped = atomic_load(&n->rx_dropped), .link_up = atomic_load(&n->link_up)};
}

/* For the unit tests and the fuzz target, which run the device without an event loop. */
void virtio_net_poll_backend(struct device *d) { on_backend(d->priv, EPOLLIN); }
