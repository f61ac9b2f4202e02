/* tcpreset: after a restore, every TCP connection the guest had through its NIC belongs to a
 * network backend (passt) that no longer exists; the new one has never heard of them and
 * silently drops their segments, so the guest would retransmit for many minutes. sync's
 * "reset_tcp" destroys them at once with SOCK_DESTROY (sock_diag, CONFIG_INET_DIAG_DESTROY):
 * their owners see ECONNABORTED and reconnect. Listeners and loopback connections are kept. */
#include "agent.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CONNS 4096
#define TCP_LISTEN_STATE 10

static bool loopback(const struct inet_diag_msg *m)
{
    if (m->idiag_family == AF_INET)
        return (ntohl(m->id.idiag_dst[0]) >> 24) == 127;
    const uint32_t *a = m->id.idiag_dst;
    if (!a[0] && !a[1] && !a[2] && a[3] == htonl(1))
        return true;                                             /* ::1 */
    return !a[0] && !a[1] && a[2] == htonl(0xffff) && (ntohl(a[3]) >> 24) == 127;
}

static int request(int fd, uint16_t type, uint16_t flags, uint8_t family,
                   const struct inet_diag_sockid *id)
{
    struct {
        struct nlmsghdr nlh;
        struct inet_diag_req_v2 r;
    } req = {
        .nlh = {.nlmsg_len = sizeof(req), .nlmsg_type = type, .nlmsg_flags = flags},
        .r = {.sdiag_family = family, .sdiag_protocol = IPPROTO_TCP,
              .idiag_states = 0xfff & ~(1u << TCP_LISTEN_STATE)},
    };
    if (id)
        req.r.id = *id;
    struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
    return sendto(fd, &req, sizeof(req), 0, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? -errno : 0;
}

/* Lists the non-loopback, non-listening TCP sockets of one family into ids[]. */
static int dump(int fd, uint8_t family, struct inet_diag_msg *out, int max, int *n)
{
    int r = request(fd, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, family, NULL);
    if (r)
        return r;
    static __thread char buf[32768];
    for (;;) {
        ssize_t len = recv(fd, buf, sizeof(buf), 0);
        if (len < 0)
            return errno == EINTR ? 0 : -errno;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)len);
             h = NLMSG_NEXT(h, len)) {
            if (h->nlmsg_type == NLMSG_DONE)
                return 0;
            if (h->nlmsg_type == NLMSG_ERROR) {
                const struct nlmsgerr *e = NLMSG_DATA(h);
                return e->error ? e->error : -EIO;
            }
            if (h->nlmsg_len < NLMSG_LENGTH(sizeof(struct inet_diag_msg)))
                continue;
            const struct inet_diag_msg *m = NLMSG_DATA(h);
            if (!loopback(m) && *n < max)
                out[(*n)++] = *m;
        }
    }
}

static int destroy(int fd, const struct inet_diag_msg *m)
{
    int r = request(fd, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, m->idiag_family, &m->id);
    if (r)
        return r;
    char buf[512];
    ssize_t len = recv(fd, buf, sizeof(buf), 0);
    if (len < 0)
        return -errno;
    struct nlmsghdr *h = (struct nlmsghdr *)buf;
    if (NLMSG_OK(h, (size_t)len) && h->nlmsg_type == NLMSG_ERROR) {
        const struct nlmsgerr *e = NLMSG_DATA(h);
        return e->error == -ENOENT ? 1 : e->error;   /* ENOENT: it closed meanwhile */
    }
    return 0;
}

/* Returns the connections destroyed, or -errno (message in err). */
int tcp_reset_all(char *err, size_t cap)
{
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (fd < 0) {
        snprintf(err, cap, "sock_diag socket: %s", strerror(errno));
        return -errno;
    }
    struct inet_diag_msg *conns = calloc(MAX_CONNS, sizeof(*conns));
    int n = 0, r = conns ? 0 : -ENOMEM, done = 0;
    if (!r && (r = dump(fd, AF_INET, conns, MAX_CONNS, &n)) == 0)
        r = dump(fd, AF_INET6, conns, MAX_CONNS, &n);
    if (r == -EAFNOSUPPORT)
        r = 0;                      /* no IPv6 in this kernel */
    if (r)
        snprintf(err, cap, "listing TCP sockets: %s (is tcp_diag loaded?)", strerror(-r));
    for (int i = 0; !r && i < n; i++) {
        int d = destroy(fd, &conns[i]);
        if (d < 0) {
            snprintf(err, cap, "SOCK_DESTROY: %s (CONFIG_INET_DIAG_DESTROY?)", strerror(-d));
            r = d;
        } else if (d == 0) {
            done++;
        }
    }
    free(conns);
    close(fd);
    return r ? r : done;
}
