/* forward: connect to a TCP port inside the guest, answer ok, then relay raw bytes both ways
 * until both directions have ended. The request frame was read exactly (conn.c), so every byte
 * after it belongs to the stream. Each direction has one buffer: a direction stops reading
 * while its buffer waits for the other side (back-pressure). Half-closes are passed on. */
#include "agent.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CONNECT_MS 10000
#define RELAY_BUF (256u << 10)

struct dir {
    int from, to;
    char *buf;
    size_t len, off;
    bool eof;                       /* `from` ended; shutdown passed on once the buffer drains */
    bool done;
};

static int tcp_connect(struct conn *c, const char *host, int port)
{
    struct sockaddr_storage ss = {0};
    socklen_t sl;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET, a4->sin_port = htons((uint16_t)port), sl = sizeof(*a4);
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6, a6->sin6_port = htons((uint16_t)port), sl = sizeof(*a6);
    } else {
        seterr(c, "host must be an IPv4 or IPv6 address, not %s", host);
        return -EINVAL;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&ss, sl) < 0 && errno != EINPROGRESS)
        goto fail;
    if (errno == EINPROGRESS) {
        int r = poll_one(fd, POLLOUT, CONNECT_MS);
        if (r == 0) {
            errno = ETIMEDOUT;
            goto fail;
        }
        int soerr = 0;
        socklen_t l = sizeof(soerr);
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &l);
        if (soerr) {
            errno = soerr;
            goto fail;
        }
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
fail:;
    int e = errno;
    close(fd);
    seterr(c, "connect %s:%d: %s", host, port, strerror(e));
    return -e;
}

/* Moves what it can; returns -1 on an error that ends the relay. */
static int step(struct dir *d, short rev_from, short rev_to)
{
    if (d->len == 0 && !d->eof && (rev_from & (POLLIN | POLLHUP | POLLERR))) {
        ssize_t n = recv(d->from, d->buf, RELAY_BUF, 0);
        if (n > 0)
            d->len = (size_t)n, d->off = 0;
        else if (n == 0)
            d->eof = true;
        else if (errno != EAGAIN && errno != EINTR)
            return -1;
    }
    if (d->off < d->len && (rev_to & POLLOUT)) {
        ssize_t n = send(d->to, d->buf + d->off, d->len - d->off, MSG_NOSIGNAL);
        if (n > 0)
            d->off += (size_t)n;
        else if (n < 0 && errno != EAGAIN && errno != EINTR)
            return -1;
        if (d->off == d->len)
            d->len = d->off = 0;
    }
    if (d->eof && d->len == 0 && !d->done) {
        shutdown(d->to, SHUT_WR);
        d->done = true;
    }
    return 0;
}

int op_forward(struct conn *c, const struct msg *m)
{
    int64_t port;
    char host[64] = "127.0.0.1";
    if (req_int(c, m->root, "port", &port, 1, 65535, true) < 0 ||
        req_str(c, m->root, "host", host, sizeof(host), false) < 0)
        return conn_fail(c, EINVAL, NULL);
    int tcp = tcp_connect(c, host, (int)port);
    if (tcp < 0)
        return conn_fail(c, tcp, NULL);
    if (conn_ok(c) < 0) {
        close(tcp);
        return -1;
    }
    struct dir up = {.from = c->fd, .to = tcp, .buf = malloc(RELAY_BUF)};   /* host -> guest */
    struct dir down = {.from = tcp, .to = c->fd, .buf = malloc(RELAY_BUF)}; /* guest -> host */
    int ret = -1;
    if (!up.buf || !down.buf)
        goto out;
    while (!(up.done && down.done)) {
        /* two fds; each side's events are the union of what both directions want of it */
        short ev[2] = {0, 0};           /* [0] the host connection, [1] the TCP socket */
        if (!up.eof && up.len == 0)
            ev[0] |= POLLIN;
        if (up.off < up.len)
            ev[1] |= POLLOUT;
        if (!down.eof && down.len == 0)
            ev[1] |= POLLIN;
        if (down.off < down.len)
            ev[0] |= POLLOUT;
        /* an fd nobody waits on is left out: its POLLHUP would wake us in a loop */
        struct pollfd p[2] = {{.fd = ev[0] ? c->fd : -1, .events = ev[0]},
                              {.fd = ev[1] ? tcp : -1, .events = ev[1]}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            goto out;
        }
        if (step(&up, p[0].revents, p[1].revents) < 0 ||
            step(&down, p[1].revents, p[0].revents) < 0)
            goto out;
    }
    ret = 0;
out:
    free(up.buf);
    free(down.buf);
    close(tcp);
    return ret;
}
