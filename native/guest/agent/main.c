/* vmmd-agent: listens on AF_VSOCK port 1024 (and/or a Unix socket for host-side tests), forks
 * one handler per connection, and reaps every child. It may run as PID 1 (the initramfs execs
 * it), so it never exits on its own and reaps orphans too.
 *
 *   vmmd-agent [--listen vsock:PORT | --listen unix:PATH]... [--run-dir DIR] [--system-ops]
 *              [--max-conns N]
 *
 * --system-ops enables freeze/thaw/sync, which act on the whole machine: the guest's init passes
 * it; tests that run the agent on the host do not. */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_LISTEN 4
#define REQUEST_TIMEOUT_MS 30000    /* a connection must send its request within this */

struct listener {
    const char *spec;
    int fd;
};

#define MAX_REFUSED 16
#define REFUSED_LINGER_MS 2000

struct refused {                    /* a connection told "too many": closed once its peer is */
    int fd;
    int64_t until;
};

struct agent {
    struct agent_cfg cfg;
    struct listener ls[MAX_LISTEN];
    int nls;
    int max_conns;
    pid_t *handlers;                /* live handler pids, 0 = free slot */
    int live;
    struct refused refused[MAX_REFUSED];
};

static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logmsg(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "vmmd-agent: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int op_ping(struct conn *c, const struct msg *m)
{
    (void)m;
    struct utsname u;
    uname(&u);
    msgpack_packer *pk = conn_begin(c);
    msgpack_pack_map(pk, 7);
    pk_kv_str(pk, "t", "ok");
    pk_kv_str(pk, "version", AGENT_VERSION);
    pk_kv_str(pk, "kernel", u.release);
    pk_kv_str(pk, "machine", u.machine);
    pk_kv_int(pk, "generation", generation_get(c->cfg));
    pk_kv_bool(pk, "system_ops", c->cfg->system_ops);
    pk_kv_int(pk, "pid", getppid());
    conn_end(c);
    return conn_flush_wait(c, 10000) < 0 ? -1 : 0;
}

static const struct {
    const char *name;
    int (*fn)(struct conn *, const struct msg *);
    bool system;
} ops[] = {
    {"ping", op_ping, false},           {"exec", op_exec, false},
    {"signal", op_signal, false},       {"read_file", op_read_file, false},
    {"write_file", op_write_file, false}, {"stat", op_stat, false},
    {"list_dir", op_list_dir, false},   {"forward", op_forward, false},
    {"freeze", op_freeze, true},        {"thaw", op_thaw, true},
    {"sync", op_sync, true},            {"hooks_set", op_hooks_set, false},
    {"hook", op_hook, false},
};

/* One connection, in its own process: read the request, run its op, done. */
static void serve(int fd, const struct agent_cfg *cfg)
{
    struct conn c;
    struct msg m;
    conn_init(&c, fd, cfg);
    int r = conn_recv_wait(&c, &m, REQUEST_TIMEOUT_MS);
    if (r == -EPROTO || r == -ETIMEDOUT) {
        conn_fail(&c, EPROTO, r == -ETIMEDOUT ? "no request within %d ms" : NULL, REQUEST_TIMEOUT_MS);
        goto out;
    }
    if (r < 0)
        goto out;
    char op[32];
    if (req_str(&c, m.root, "op", op, sizeof(op), true) < 0) {
        conn_fail(&c, EINVAL, NULL);
        msg_free(&m);
        goto out;
    }
    size_t i;
    for (i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
        if (strcmp(ops[i].name, op) == 0)
            break;
    if (i == sizeof(ops) / sizeof(ops[0]))
        conn_fail(&c, EOPNOTSUPP, "unknown op %s", op);
    else if (ops[i].system && !cfg->system_ops)
        conn_fail(&c, EPERM, "%s acts on the whole machine; this agent runs without "
                  "--system-ops", op);
    else
        ops[i].fn(&c, &m);
    msg_free(&m);
out:
    conn_close(&c);
}

static int open_listener(struct listener *l)
{
    int fd = -1;
    if (strncmp(l->spec, "vsock:", 6) == 0) {
        char *end;
        unsigned long port = strtoul(l->spec + 6, &end, 10);
        if (*end || port == 0 || port > 0xffffffffUL)
            return -EINVAL;
        struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
                                .svm_port = (unsigned)port};
        fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
            goto fail;
    } else if (strncmp(l->spec, "unix:", 5) == 0) {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        const char *path = l->spec + 5;
        if (strlen(path) >= sizeof(a.sun_path))
            return -ENAMETOOLONG;
        strcpy(a.sun_path, path);
        unlink(path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
            goto fail;
    } else {
        return -EINVAL;
    }
    if (listen(fd, 128) < 0)
        goto fail;
    l->fd = fd;
    return 0;
fail:;
    int e = errno;
    if (fd >= 0)
        close(fd);
    return -e;
}

static void reap(struct agent *a)
{
    pid_t p;
    while ((p = waitpid(-1, NULL, WNOHANG)) > 0)
        for (int i = 0; i < a->max_conns; i++)
            if (a->handlers[i] == p) {
                a->handlers[i] = 0;
                a->live--;
                break;
            }
}

/* Over the limit: one non-blocking try at an error frame, then only our side is shut. Closing
 * at once would drop the request the peer is still sending, and a peer whose data was dropped
 * gets ECONNRESET instead of the frame; so the fd waits until the peer closes (or a while). */
static void refuse(struct agent *a, int fd)
{
    char text[128];
    snprintf(text, sizeof(text), "the agent serves at most %d connections at once", a->max_conns);
    struct conn c;
    conn_init(&c, fd, &a->cfg);
    msgpack_packer *pk = conn_begin(&c);
    msgpack_pack_map(pk, 4);
    pk_kv_str(pk, "t", "error");
    pk_kv_int(pk, "errno", EAGAIN);
    pk_kv_str(pk, "code", "EAGAIN");
    pk_kv_str(pk, "message", text);
    conn_end(&c);
    conn_flush(&c);
    c.fd = -1;                      /* conn_close frees the buffers, the fd stays */
    conn_close(&c);
    shutdown(fd, SHUT_WR);
    int slot = 0;
    for (int i = 0; i < MAX_REFUSED; i++) {
        if (a->refused[i].fd < 0) {
            slot = i;
            break;
        }
        if (a->refused[i].until < a->refused[slot].until)
            slot = i;               /* all taken: the oldest goes */
    }
    if (a->refused[slot].fd >= 0)
        close(a->refused[slot].fd);
    a->refused[slot] = (struct refused){fd, now_ms() + REFUSED_LINGER_MS};
}

/* Drains refused connections that have something to read; closes them at EOF or timeout. */
static void tend_refused(struct agent *a, bool readable[MAX_REFUSED])
{
    char sink[4096];
    int64_t now = now_ms();
    for (int i = 0; i < MAX_REFUSED; i++) {
        struct refused *r = &a->refused[i];
        if (r->fd < 0)
            continue;
        bool done = now >= r->until;
        if (readable[i]) {
            ssize_t n;
            while ((n = recv(r->fd, sink, sizeof(sink), MSG_DONTWAIT)) > 0)
                ;
            done = done || n == 0 || (n < 0 && errno != EAGAIN);
        }
        if (done) {
            close(r->fd);
            r->fd = -1;
        }
    }
}

static void accept_one(struct agent *a, int lfd, const sigset_t *oldmask, int sfd)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0)
        return;
    if (a->live >= a->max_conns) {
        refuse(a, fd);
        return;
    }
    pid_t p = fork();
    if (p < 0) {
        logmsg("fork: %s", strerror(errno));
        close(fd);
        return;
    }
    if (p == 0) {
        for (int i = 0; i < a->nls; i++)
            close(a->ls[i].fd);
        for (int i = 0; i < MAX_REFUSED; i++)
            if (a->refused[i].fd >= 0)
                close(a->refused[i].fd);
        close(sfd);
        signal(SIGCHLD, SIG_DFL);
        sigprocmask(SIG_SETMASK, oldmask, NULL);
        if (getpid() != 1)
            prctl(PR_SET_PDEATHSIG, SIGKILL);
        serve(fd, &a->cfg);
        _exit(0);
    }
    close(fd);
    for (int i = 0; i < a->max_conns; i++)
        if (a->handlers[i] == 0) {
            a->handlers[i] = p;
            a->live++;
            break;
        }
}

static int usage(void)
{
    fprintf(stderr, "usage: vmmd-agent [--listen vsock:PORT|unix:PATH]... [--run-dir DIR] "
            "[--system-ops] [--max-conns N]\n");
    return 2;
}

int main(int argc, char **argv)
{
    struct agent a = {.cfg = {.run_dir = "/run/vmmd"}, .max_conns = 256};
    for (int i = 0; i < MAX_REFUSED; i++)
        a.refused[i].fd = -1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc && a.nls < MAX_LISTEN)
            a.ls[a.nls++].spec = argv[++i];
        else if (strcmp(argv[i], "--run-dir") == 0 && i + 1 < argc)
            a.cfg.run_dir = argv[++i];
        else if (strcmp(argv[i], "--system-ops") == 0)
            a.cfg.system_ops = true;
        else if (strcmp(argv[i], "--max-conns") == 0 && i + 1 < argc)
            a.max_conns = atoi(argv[++i]);
        else if (strcmp(argv[i], "--version") == 0) {
            printf("vmmd-agent %s\n", AGENT_VERSION);
            return 0;
        } else
            return usage();
    }
    if (a.max_conns < 1 || a.max_conns > 4096)
        return usage();
    if (a.nls == 0)
        a.ls[a.nls++].spec = "vsock:1024";
    a.handlers = calloc((size_t)a.max_conns, sizeof(pid_t));
    if (!a.handlers)
        return 1;
    /* stdio must be open, or the pipes made for a child could land on fds 0-2 */
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) < 0)
            return 1;
    signal(SIGPIPE, SIG_IGN);
    int r = state_init(&a.cfg);
    if (r < 0) {
        logmsg("cannot set up %s: %s", a.cfg.run_dir, strerror(-r));
        if (getpid() != 1)
            return 1;
    }
    for (int i = 0; i < a.nls; i++) {
        /* as PID 1 we must not exit: keep trying (the vsock module may still be loading) */
        while ((r = open_listener(&a.ls[i])) < 0) {
            logmsg("cannot listen on %s: %s", a.ls[i].spec, strerror(-r));
            if (getpid() != 1)
                return 1;
            sleep(1);
        }
    }
    sigset_t mask, old;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, &old);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) {
        logmsg("signalfd: %s", strerror(errno));
        return 1;
    }
    logmsg("%s listening (%s%s)", AGENT_VERSION, a.ls[0].spec, a.nls > 1 ? ", ..." : "");
    struct pollfd p[MAX_LISTEN + 1 + MAX_REFUSED];
    for (;;) {
        int np = 0, lingering = 0;
        for (int i = 0; i < a.nls; i++)
            p[np++] = (struct pollfd){.fd = a.ls[i].fd, .events = POLLIN};
        p[np++] = (struct pollfd){.fd = sfd, .events = POLLIN};
        for (int i = 0; i < MAX_REFUSED; i++) {
            p[np++] = (struct pollfd){.fd = a.refused[i].fd, .events = POLLIN};
            lingering += a.refused[i].fd >= 0;
        }
        if (poll(p, (nfds_t)np, lingering ? 250 : -1) < 0) {
            if (errno != EINTR)
                sleep(1);
            continue;
        }
        bool readable[MAX_REFUSED];
        for (int i = 0; i < MAX_REFUSED; i++)
            readable[i] = p[a.nls + 1 + i].revents != 0;
        tend_refused(&a, readable);
        if (p[a.nls].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof(si)) > 0)
                ;
            reap(&a);
        }
        for (int i = 0; i < a.nls; i++)
            if (p[i].revents & POLLIN)
                accept_one(&a, a.ls[i].fd, &old, sfd);
    }
}
