/* exec: run a process and stream its stdio over this connection; signal: deliver a signal to a
 * process some exec started.
 *
 * Back-pressure both ways, nothing buffered without bound: the child's stdout/stderr are read
 * only when the previous output frame has left (a slow host stalls the child on a full pipe),
 * and the next host frame is read only when the previous stdin chunk has gone into the pipe.
 * Control frames (signal, resize, eof) travel in order with stdin; the separate `signal` op
 * reaches a process whose stdin is full. When the host goes away the process group is killed.
 * After the child exits, what is already in its pipes is sent, then the exit frame. */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/pidfd.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define ARGV_MAX 4096
#define ENV_MAX 4096

struct exec_req {
    char **argv, **env;
    char cwd[4096];
    bool has_cwd, has_user, pty, want_stdin;
    struct user user;
    struct winsize ws;
};

struct stream {
    int fd;                         /* -1 once closed */
    const char *name;               /* "stdout" / "stderr" */
};

struct run {
    struct conn *c;
    pid_t pid;
    int pidfd;
    bool pty, exited;
    int status;
    int in_fd;                      /* child's stdin (pipe or pty master), -1 when closed */
    char *in_buf;
    size_t in_len, in_off;
    struct stream out[2];
    char *rbuf;
};

static int parse_env(struct conn *c, const msgpack_object *o, char ***out)
{
    if (o->type != MSGPACK_OBJECT_MAP) {
        seterr(c, "env must be a map of strings");
        return -EINVAL;
    }
    uint32_t n = o->via.map.size;
    if (n > ENV_MAX) {
        seterr(c, "env has %u entries, at most %d allowed", n, ENV_MAX);
        return -EINVAL;
    }
    char **v = calloc((size_t)n + 1, sizeof(char *));
    if (!v)
        return -ENOMEM;
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key, *val = &o->via.map.ptr[i].val;
        uint32_t kl = k->type == MSGPACK_OBJECT_STR ? k->via.str.size : 0;
        uint32_t vl = val->type == MSGPACK_OBJECT_STR ? val->via.str.size : 0;
        char *kv = malloc((size_t)kl + vl + 2);
        v[i] = kv;
        if (!kv) {
            strv_free(v);
            return -ENOMEM;
        }
        if (k->type != MSGPACK_OBJECT_STR || kl == 0 || val->type != MSGPACK_OBJECT_STR ||
            obj_str(c, k, "env name", kv, (size_t)kl + 1) < 0 ||
            obj_str(c, val, "env value", kv + kl + 1, (size_t)vl + 1) < 0 || strchr(kv, '=')) {
            if (!c->err[0] || k->type != MSGPACK_OBJECT_STR || val->type != MSGPACK_OBJECT_STR)
                seterr(c, "env must map non-empty names without '=' to strings");
            strv_free(v);
            return -EINVAL;
        }
        kv[kl] = '=';
    }
    *out = v;
    return 0;
}

/* The fields exec and hooks share: argv, env, cwd, user. */
static int parse_common(struct conn *c, const msgpack_object *map, struct exec_req *q)
{
    const msgpack_object *o = req_get(map, "argv");
    size_t argc = 0;
    if (!o) {
        seterr(c, "argv is required");
        return -EINVAL;
    }
    int r = req_strv(c, o, "argv", &q->argv, ARGV_MAX, &argc);
    if (r < 0)
        return r;
    if (argc == 0 || !q->argv[0][0]) {
        seterr(c, "argv must name a program");
        return -EINVAL;
    }
    if ((o = req_get(map, "env")) && o->type != MSGPACK_OBJECT_NIL &&
        (r = parse_env(c, o, &q->env)) < 0)
        return r;
    if ((r = req_str(c, map, "cwd", q->cwd, sizeof(q->cwd), false)) < 0)
        return r;
    q->has_cwd = r == 0;
    o = req_get(map, "user");
    if (o && o->type != MSGPACK_OBJECT_NIL) {
        char name[64];
        if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
            if (o->via.u64 > 0xfffffffeULL) {
                seterr(c, "user id out of range");
                return -EINVAL;
            }
            r = user_lookup(NULL, (uid_t)o->via.u64, &q->user, c->err, sizeof(c->err));
        } else if ((r = obj_str(c, o, "user", name, sizeof(name))) == 0) {
            r = user_lookup(name, 0, &q->user, c->err, sizeof(c->err));
        }
        if (r < 0)
            return r;
        q->has_user = true;
    }
    return 0;
}

static void req_free(struct exec_req *q)
{
    strv_free(q->argv);
    strv_free(q->env);
}

static int parse_winsize(struct conn *c, const msgpack_object *map, struct winsize *ws)
{
    int64_t rows = 24, cols = 80;
    if (req_int(c, map, "rows", &rows, 1, 65535, false) < 0 ||
        req_int(c, map, "cols", &cols, 1, 65535, false) < 0)
        return -EINVAL;
    ws->ws_row = (unsigned short)rows;
    ws->ws_col = (unsigned short)cols;
    return 0;
}

static int parse_exec(struct conn *c, const msgpack_object *map, struct exec_req *q)
{
    int r = parse_common(c, map, q);
    if (r < 0)
        return r;
    const msgpack_object *o = req_get(map, "pty");
    if (o && o->type != MSGPACK_OBJECT_NIL && !(o->type == MSGPACK_OBJECT_BOOLEAN && !o->via.boolean)) {
        q->pty = true;
        q->ws = (struct winsize){.ws_row = 24, .ws_col = 80};
        if (o->type == MSGPACK_OBJECT_MAP && parse_winsize(c, o, &q->ws) < 0)
            return -EINVAL;
        if (o->type != MSGPACK_OBJECT_MAP && o->type != MSGPACK_OBJECT_BOOLEAN) {
            seterr(c, "pty must be a map {rows, cols} or true");
            return -EINVAL;
        }
    }
    q->want_stdin = true;
    if (req_bool(c, map, "stdin", &q->want_stdin) < 0)
        return -EINVAL;
    return 0;
}

static void send_data(struct run *x, const char *name, const char *p, size_t n)
{
    msgpack_packer *pk = conn_begin(x->c);
    msgpack_pack_map(pk, 2);
    pk_kv_str(pk, "t", name);
    pk_kv_bin(pk, "data", p, n);
    conn_end(x->c);
}

static void close_stdin(struct run *x)
{
    if (x->in_fd >= 0 && !x->pty)
        close(x->in_fd);
    if (!x->pty)
        x->in_fd = -1;
    x->in_len = x->in_off = 0;
}

static int deliver(struct run *x, int sig, bool group)
{
    if (x->exited)
        return 0;
    return kill(group ? -x->pid : x->pid, sig) < 0 ? -errno : 0;
}

/* One frame from the host while the process runs. */
static int on_host_frame(struct run *x, struct msg *m)
{
    char t[16];
    struct conn *c = x->c;
    if (req_str(c, m->root, "t", t, sizeof(t), true) < 0)
        return -EINVAL;
    if (strcmp(t, "stdin") == 0) {
        const char *p;
        uint32_t n;
        if (req_bin(c, m->root, "data", &p, &n, FRAME_MAX, true) < 0)
            return -EINVAL;
        if (x->in_fd < 0 || n == 0)
            return 0;                           /* the child closed its stdin: drop */
        memcpy(x->in_buf, p, n);
        x->in_len = n, x->in_off = 0;
    } else if (strcmp(t, "eof") == 0) {
        if (x->pty && x->in_fd >= 0) {          /* a terminal's end of input is its VEOF */
            struct termios tio;
            char eof = tcgetattr(x->in_fd, &tio) == 0 ? (char)tio.c_cc[VEOF] : 4;
            x->in_buf[0] = eof;
            x->in_len = 1, x->in_off = 0;
        } else {
            close_stdin(x);
        }
    } else if (strcmp(t, "signal") == 0) {
        int64_t sig;
        bool group = false;
        if (req_int(c, m->root, "signal", &sig, 1, 64, true) < 0 ||
            req_bool(c, m->root, "group", &group) < 0)
            return -EINVAL;
        deliver(x, (int)sig, group);
    } else if (strcmp(t, "resize") == 0) {
        struct winsize ws = {0};
        if (parse_winsize(c, m->root, &ws) < 0)
            return -EINVAL;
        if (x->pty && ioctl(x->out[0].fd >= 0 ? x->out[0].fd : x->in_fd, TIOCSWINSZ, &ws) < 0)
            return 0;
    } else {
        seterr(c, "unknown exec frame t=%s (stdin, eof, signal, resize)", t);
        return -EINVAL;
    }
    return 0;
}

/* Reads one chunk of a stream into a frame. 1: data sent, 0: nothing now, -1: closed. */
static int pump(struct run *x, struct stream *s)
{
    ssize_t n = read(s->fd, x->rbuf, CHUNK);
    if (n > 0) {
        send_data(x, s->name, x->rbuf, (size_t)n);
        return 1;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    /* EOF, or EIO from a pty master once the last slave is closed */
    if (!(x->pty && s == &x->out[0] && x->in_fd == s->fd))
        close(s->fd);
    s->fd = -1;
    return -1;
}

static void finish(struct run *x)
{
    msgpack_packer *pk = conn_begin(x->c);
    msgpack_pack_map(pk, 4);
    pk_kv_str(pk, "t", "exit");
    pk_str(pk, "code");
    if (WIFEXITED(x->status))
        msgpack_pack_int(pk, WEXITSTATUS(x->status));
    else
        msgpack_pack_nil(pk);
    pk_str(pk, "signal");
    if (WIFSIGNALED(x->status))
        msgpack_pack_int(pk, WTERMSIG(x->status));
    else
        msgpack_pack_nil(pk);
    pk_kv_bool(pk, "core", WIFSIGNALED(x->status) && WCOREDUMP(x->status));
    conn_end(x->c);
}

static int loop(struct run *x)
{
    struct conn *c = x->c;
    for (;;) {
        bool out_open = x->out[0].fd >= 0 || x->out[1].fd >= 0;
        if (x->exited && !out_open && !conn_pending(c)) {
            finish(x);
            return conn_flush_wait(c, 10000);
        }
        /* after exit: what is left in the pipes, read without waiting */
        if (x->exited && !conn_pending(c)) {
            for (int i = 0; i < 2; i++)
                if (x->out[i].fd >= 0 && pump(x, &x->out[i]) == 0) {
                    if (!(x->pty && x->out[i].fd == x->in_fd))
                        close(x->out[i].fd);
                    x->out[i].fd = -1;          /* drained */
                }
            continue;
        }
        struct pollfd p[5];
        int np = 0, ic, iin = -1, io[2] = {-1, -1}, ipid = -1;
        short cev = (short)(conn_pending(c) ? POLLOUT : 0);
        if (x->in_off >= x->in_len)
            cev |= POLLIN;
        /* always polled: with no events asked, POLLHUP still says the host is gone (while
         * stdin waits for a child that does not read, say) */
        ic = np, p[np++] = (struct pollfd){.fd = c->fd, .events = cev};
        for (int i = 0; i < 2; i++)
            if (x->out[i].fd >= 0 && !conn_pending(c))
                io[i] = np, p[np++] = (struct pollfd){.fd = x->out[i].fd, .events = POLLIN};
        if (x->in_fd >= 0 && x->in_off < x->in_len)
            iin = np, p[np++] = (struct pollfd){.fd = x->in_fd, .events = POLLOUT};
        if (!x->exited)
            ipid = np, p[np++] = (struct pollfd){.fd = x->pidfd, .events = POLLIN};
        if (poll(p, (nfds_t)np, -1) < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if ((p[ic].revents & POLLOUT) && conn_flush(c) < 0)
            return -EPIPE;
        if ((p[ic].revents & (POLLHUP | POLLERR)) && !(cev & POLLIN))
            return -EPIPE;
        if ((p[ic].revents & (POLLIN | POLLHUP | POLLERR)) && x->in_off >= x->in_len) {
            struct msg m;
            int r = conn_recv(c, &m);
            if (r == 1) {
                r = on_host_frame(x, &m);
                msg_free(&m);
                if (r < 0)
                    return r;
            } else if (r < 0) {
                if (r == -EPROTO)
                    return r;
                return -EPIPE;                  /* the host went away */
            }
        }
        if (iin >= 0 && p[iin].revents) {
            ssize_t n = write(x->in_fd, x->in_buf + x->in_off, x->in_len - x->in_off);
            if (n > 0)
                x->in_off += (size_t)n;
            else if (n < 0 && errno != EAGAIN && errno != EINTR)
                close_stdin(x);                 /* EPIPE: the child closed its stdin */
        }
        for (int i = 0; i < 2; i++)
            if (io[i] >= 0 && p[io[i]].revents)
                pump(x, &x->out[i]);
        if (ipid >= 0 && p[ipid].revents) {
            if (waitpid(x->pid, &x->status, WNOHANG) == x->pid) {
                x->exited = true;
                exec_unregister(c->cfg, x->pid);
            }
        }
    }
}

static void set_nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

int op_exec(struct conn *c, const struct msg *m)
{
    struct exec_req q = {0};
    struct run x = {.c = c, .pidfd = -1, .in_fd = -1, .out = {{-1, "stdout"}, {-1, "stderr"}}};
    int cfd[3] = {-1, -1, -1}, ret = -1;
    char **envp = NULL;
    int r = parse_exec(c, m->root, &q);
    if (r < 0) {
        conn_fail(c, r, NULL);
        goto out;
    }
    envp = spawn_env(q.has_user ? &q.user : NULL, q.env, q.pty);
    x.in_buf = malloc(FRAME_MAX);
    x.rbuf = malloc(CHUNK);
    if (!envp || !x.in_buf || !x.rbuf) {
        conn_fail(c, ENOMEM, "out of memory");
        goto out;
    }
    if (q.pty) {
        int master, slave;
        if (openpty(&master, &slave, NULL, NULL, &q.ws) < 0) {
            conn_fail(c, errno, "openpty: %s", strerror(errno));
            goto out;
        }
        fcntl(master, F_SETFD, FD_CLOEXEC);
        fcntl(slave, F_SETFD, FD_CLOEXEC);
        x.pty = true;
        x.in_fd = x.out[0].fd = master;
        cfd[0] = slave;
    } else {
        int pp[3][2];                   /* stdin, stdout, stderr */
        for (int i = 0; i < 3; i++) {
            if (pipe2(pp[i], O_CLOEXEC) < 0) {
                conn_fail(c, errno, "pipe: %s", strerror(errno));
                goto out;
            }
            if (i == 0)
                x.in_fd = pp[0][1], cfd[0] = pp[0][0];
            else
                x.out[i - 1].fd = pp[i][0], cfd[i] = pp[i][1];
        }
        fcntl(x.out[0].fd, F_SETPIPE_SZ, 1 << 20);     /* fewer wake-ups for bulk output */
    }
    struct spawn s = {
        .argv = q.argv, .envp = envp, .cwd = q.has_cwd ? q.cwd : NULL,
        .user = q.has_user ? &q.user : NULL,
        .fd0 = cfd[0], .fd1 = q.pty ? cfd[0] : cfd[1], .fd2 = q.pty ? cfd[0] : cfd[2],
        .ctty = q.pty ? cfd[0] : -1,
    };
    r = spawn(&s, &x.pid, c->err, sizeof(c->err));
    for (int i = 0; i < 3; i++)
        if (cfd[i] >= 0)
            close(cfd[i]);
    cfd[0] = cfd[1] = cfd[2] = -1;
    if (r < 0) {
        conn_fail(c, r, NULL);
        goto out;
    }
    exec_register(c->cfg, x.pid);
    x.pidfd = pidfd_open(x.pid, 0);
    if (x.pidfd < 0) {
        conn_fail(c, errno, "pidfd_open: %s", strerror(errno));
        kill(-x.pid, SIGKILL);
        waitpid(x.pid, NULL, 0);
        exec_unregister(c->cfg, x.pid);
        goto out;
    }
    for (int i = 0; i < 2; i++)
        if (x.out[i].fd >= 0)
            set_nonblock(x.out[i].fd);
    set_nonblock(x.in_fd);
    if (!q.want_stdin)
        close_stdin(&x);
    msgpack_packer *pk = conn_begin(c);
    msgpack_pack_map(pk, 2);
    pk_kv_str(pk, "t", "started");
    pk_kv_int(pk, "pid", x.pid);
    conn_end(c);
    r = loop(&x);
    if (r < 0 && !x.exited) {
        /* the host went away or broke the protocol: the process goes with it */
        if (r == -EPROTO || r == -EINVAL)
            conn_fail(c, r, NULL);
        kill(-x.pid, SIGKILL);
        kill(x.pid, SIGKILL);
        waitpid(x.pid, NULL, 0);
        exec_unregister(c->cfg, x.pid);
    }
    ret = r < 0 ? -1 : 0;
out:
    for (int i = 0; i < 3; i++)
        if (cfd[i] >= 0)
            close(cfd[i]);
    if (x.pidfd >= 0)
        close(x.pidfd);
    for (int i = 0; i < 2; i++)
        if (x.out[i].fd >= 0 && x.out[i].fd != x.in_fd)
            close(x.out[i].fd);
    if (x.in_fd >= 0)
        close(x.in_fd);
    free(x.in_buf);
    free(x.rbuf);
    strv_free(envp);
    req_free(&q);
    return ret;
}

int op_signal(struct conn *c, const struct msg *m)
{
    int64_t pid, sig;
    bool group = false;
    if (req_int(c, m->root, "pid", &pid, 2, 0x3fffffff, true) < 0 ||
        req_int(c, m->root, "signal", &sig, 1, 64, true) < 0 ||
        req_bool(c, m->root, "group", &group) < 0)
        return conn_fail(c, EINVAL, NULL);
    if (!exec_registered(c->cfg, (pid_t)pid))
        return conn_fail(c, ESRCH, "no running exec with pid %lld", (long long)pid);
    if (kill(group ? -(pid_t)pid : (pid_t)pid, (int)sig) < 0)
        return conn_fail(c, errno, "kill %lld: %s", (long long)pid, strerror(errno));
    return conn_ok(c);
}

/* hooks.c runs exec-kind hooks through this: argv/env/cwd/user parsed as for exec */
int exec_parse_action(struct conn *c, const msgpack_object *map, char ***argv, char ***envp,
                      char *cwd, size_t cwdcap, struct user *user, bool *has_user)
{
    struct exec_req q = {0};
    int r = parse_common(c, map, &q);
    if (r < 0) {
        req_free(&q);
        return r;
    }
    *envp = spawn_env(q.has_user ? &q.user : NULL, q.env, false);
    strv_free(q.env);
    if (!*envp) {
        strv_free(q.argv);
        return -ENOMEM;
    }
    *argv = q.argv;
    snprintf(cwd, cwdcap, "%s", q.has_cwd ? q.cwd : "");
    *user = q.user;
    *has_user = q.has_user;
    return 0;
}
