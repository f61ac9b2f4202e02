/* Lifecycle hooks: the host tells the app about run, suspend, resume and terminate. Each event
 * is configured (hooks_set) with an action, kept in <run>/hooks/<event> as msgpack so every
 * handler process sees it and it survives in a snapshot:
 *   {kind: "exec", argv, env?, cwd?, user?, timeout_ms?}
 *   {kind: "http", port, path?, method?, timeout_ms?}     (a request to 127.0.0.1:port)
 * `hook` runs the event's action within its timeout and reports what happened. */
#include "agent.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define OUTPUT_MAX 4096
#define DEFAULT_TIMEOUT_MS 10000
#define MAX_TIMEOUT_MS 600000

static const char *const events[] = {"run", "suspend", "resume", "terminate", NULL};

struct result {
    const char *kind;
    int status;                     /* exit code or HTTP status; -1 when none */
    int signal;
    bool timed_out;
    char out[OUTPUT_MAX];
    size_t out_len;
    char error[256];
};

static bool valid_event(const char *e)
{
    for (int i = 0; events[i]; i++)
        if (strcmp(events[i], e) == 0)
            return true;
    return false;
}

static bool token_ok(const char *s, const char *allowed_extra)
{
    for (const char *p = s; *p; p++)
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
              strchr(allowed_extra, *p)))
            return false;
    return true;
}

/* Checks one action; the same check runs when it is stored and when it is run. */
static int check_action(struct conn *c, const msgpack_object *a, char *kind, int64_t *timeout)
{
    if (a->type != MSGPACK_OBJECT_MAP) {
        seterr(c, "a hook action must be a map");
        return -EINVAL;
    }
    *timeout = DEFAULT_TIMEOUT_MS;
    if (req_str(c, a, "kind", kind, 8, true) < 0 ||
        req_int(c, a, "timeout_ms", timeout, 1, MAX_TIMEOUT_MS, false) < 0)
        return -EINVAL;
    if (strcmp(kind, "exec") == 0) {
        char **argv = NULL, **envp = NULL, cwd[4096];
        struct user u;
        bool has_user;
        int r = exec_parse_action(c, a, &argv, &envp, cwd, sizeof(cwd), &u, &has_user);
        strv_free(argv);
        strv_free(envp);
        return r;
    }
    if (strcmp(kind, "http") == 0) {
        int64_t port;
        char path[1024], method[16];
        if (req_int(c, a, "port", &port, 1, 65535, true) < 0 ||
            req_str(c, a, "path", path, sizeof(path), false) < 0 ||
            req_str(c, a, "method", method, sizeof(method), false) < 0)
            return -EINVAL;
        if ((req_get(a, "path") && (path[0] != '/' || !token_ok(path, "/-._~%!$&'()*+,;=:@?"))) ||
            (req_get(a, "method") && !token_ok(method, ""))) {
            seterr(c, "http hook: path must be an absolute URL path, method a plain word");
            return -EINVAL;
        }
        return 0;
    }
    seterr(c, "hook kind must be exec or http, not %s", kind);
    return -EINVAL;
}

int op_hooks_set(struct conn *c, const struct msg *m)
{
    const msgpack_object *h = req_get(m->root, "hooks");
    if (!h || h->type != MSGPACK_OBJECT_MAP)
        return conn_fail(c, EINVAL, "hooks must be a map {event: action or nil}");
    char ev[16], kind[8], path[4096];
    int64_t timeout;
    for (uint32_t i = 0; i < h->via.map.size; i++) {      /* all checked before any is stored */
        const msgpack_object *k = &h->via.map.ptr[i].key, *a = &h->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR || obj_str(c, k, "event", ev, sizeof(ev)) < 0 ||
            !valid_event(ev))
            return conn_fail(c, EINVAL, "hook events are run, suspend, resume, terminate");
        if (a->type != MSGPACK_OBJECT_NIL && check_action(c, a, kind, &timeout) < 0)
            return conn_fail(c, EINVAL, NULL);
    }
    for (uint32_t i = 0; i < h->via.map.size; i++) {
        const msgpack_object *k = &h->via.map.ptr[i].key, *a = &h->via.map.ptr[i].val;
        obj_str(c, k, "event", ev, sizeof(ev));
        snprintf(path, sizeof(path), "%s/hooks/%s", c->cfg->run_dir, ev);
        if (a->type == MSGPACK_OBJECT_NIL) {
            unlink(path);
            continue;
        }
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_object(&pk, *a);
        int r = write_atomic(path, sb.data, sb.size, 0600);
        msgpack_sbuffer_destroy(&sb);
        if (r < 0)
            return conn_fail(c, r, "storing the %s hook: %s", ev, strerror(-r));
    }
    return conn_ok(c);
}

/* Waits for fd (POLLIN) until the deadline; false on timeout. */
static bool wait_in(int fd, int64_t deadline)
{
    int left = (int)(deadline - now_ms());
    return left > 0 && poll_one(fd, POLLIN, left) > 0;
}

static void keep(struct result *res, const char *p, size_t n)
{
    size_t room = sizeof(res->out) - res->out_len;
    if (n > room)
        n = room;
    memcpy(res->out + res->out_len, p, n);
    res->out_len += n;
}

static int run_exec(struct conn *c, const msgpack_object *a, int64_t deadline, struct result *res)
{
    char **argv = NULL, **envp = NULL, cwd[4096];
    struct user u;
    bool has_user;
    int r = exec_parse_action(c, a, &argv, &envp, cwd, sizeof(cwd), &u, &has_user);
    if (r < 0)
        return r;
    int pp[2] = {-1, -1}, devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    pid_t pid = 0;
    if (devnull < 0 || pipe2(pp, O_CLOEXEC) < 0) {
        r = -errno;
        seterr(c, "hook: %s", strerror(errno));
        goto out;
    }
    struct spawn s = {.argv = argv, .envp = envp, .cwd = cwd[0] ? cwd : NULL,
                      .user = has_user ? &u : NULL, .fd0 = devnull, .fd1 = pp[1], .fd2 = pp[1],
                      .ctty = -1};
    r = spawn(&s, &pid, c->err, sizeof(c->err));
    close(pp[1]);
    pp[1] = -1;
    if (r < 0)
        goto out;
    int pfd = pidfd_open(pid, 0);
    char buf[4096];
    for (;;) {                                      /* output until EOF or the deadline */
        if (!wait_in(pp[0], deadline)) {
            res->timed_out = true;
            break;
        }
        ssize_t n = read(pp[0], buf, sizeof(buf));
        if (n <= 0)
            break;
        keep(res, buf, (size_t)n);
    }
    int st = 0;
    if (!res->timed_out && pfd >= 0 && !wait_in(pfd, deadline))
        res->timed_out = true;
    if (res->timed_out)
        kill(-pid, SIGKILL), kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    if (pfd >= 0)
        close(pfd);
    res->status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    res->signal = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
    r = 0;
out:
    if (devnull >= 0)
        close(devnull);
    for (int i = 0; i < 2; i++)
        if (pp[i] >= 0)
            close(pp[i]);
    strv_free(argv);
    strv_free(envp);
    return r;
}

static int run_http(struct conn *c, const msgpack_object *a, int64_t deadline, struct result *res)
{
    int64_t port;
    char path[1024] = "/", method[16] = "POST", req[1200];
    req_int(c, a, "port", &port, 1, 65535, true);
    req_str(c, a, "path", path, sizeof(path), false);
    req_str(c, a, "method", method, sizeof(method), false);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    int n = snprintf(req, sizeof(req), "%s %s HTTP/1.0\r\nHost: localhost\r\n"
                     "Content-Length: 0\r\nConnection: close\r\n\r\n", method, path);
    int r = 0;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS) {
        r = -errno;
        goto fail;
    }
    int left = (int)(deadline - now_ms());
    if (left <= 0 || poll_one(fd, POLLOUT, left) <= 0) {
        res->timed_out = true;
        goto done;
    }
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
    if (soerr) {
        r = -soerr;
        goto fail;
    }
    if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        r = -EIO;
        goto fail;
    }
    char buf[4096];
    for (;;) {
        if (!wait_in(fd, deadline)) {
            res->timed_out = true;
            break;
        }
        ssize_t k = recv(fd, buf, sizeof(buf), 0);
        if (k <= 0)
            break;
        keep(res, buf, (size_t)k);
    }
done:;
    int code;
    char head[32] = {0};
    memcpy(head, res->out, res->out_len < sizeof(head) - 1 ? res->out_len : sizeof(head) - 1);
    res->status = sscanf(head, "HTTP/%*d.%*d %d", &code) == 1 ? code : -1;
    close(fd);
    return 0;
fail:
    seterr(c, "http hook to 127.0.0.1:%lld%s: %s", (long long)port, path, strerror(-r));
    close(fd);
    return r;
}

int op_hook(struct conn *c, const struct msg *m)
{
    char ev[16], path[4096], kind[8];
    if (req_str(c, m->root, "event", ev, sizeof(ev), true) < 0)
        return conn_fail(c, EINVAL, NULL);
    if (!valid_event(ev))
        return conn_fail(c, EINVAL, "hook events are run, suspend, resume, terminate");
    snprintf(path, sizeof(path), "%s/hooks/%s", c->cfg->run_dir, ev);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        msgpack_packer *pk = conn_begin(c);
        msgpack_pack_map(pk, 3);
        pk_kv_str(pk, "t", "ok");
        pk_kv_str(pk, "event", ev);
        pk_kv_bool(pk, "configured", false);
        conn_end(c);
        return conn_flush_wait(c, 10000) < 0 ? -1 : 0;
    }
    /* our own file, but checked like a frame all the same */
    uint8_t *body = malloc(FRAME_MAX);
    ssize_t n = body ? read(fd, body, FRAME_MAX) : -1;
    close(fd);
    struct msg a = {0};
    int64_t timeout;
    if (n <= 0 || mp_check(body, (size_t)n, c->err, sizeof(c->err)) < 0) {
        free(body);
        return conn_fail(c, EIO, "the stored %s hook is unreadable", ev);
    }
    msgpack_unpacked_init(&a.u);
    size_t off = 0;
    a.body = body;
    if (msgpack_unpack_next(&a.u, (const char *)body, (size_t)n, &off) != MSGPACK_UNPACK_SUCCESS ||
        check_action(c, &a.u.data, kind, &timeout) < 0) {
        msg_free(&a);
        return conn_fail(c, EIO, "the stored %s hook is invalid", ev);
    }
    struct result res = {.kind = kind, .status = -1};
    int64_t t0 = now_ms();
    int r = strcmp(kind, "exec") == 0 ? run_exec(c, &a.u.data, t0 + timeout, &res)
                                      : run_http(c, &a.u.data, t0 + timeout, &res);
    msg_free(&a);
    if (r < 0)
        return conn_fail(c, r, NULL);
    msgpack_packer *pk = conn_begin(c);
    msgpack_pack_map(pk, 9);
    pk_kv_str(pk, "t", "ok");
    pk_kv_str(pk, "event", ev);
    pk_kv_bool(pk, "configured", true);
    pk_kv_str(pk, "kind", kind);
    pk_kv_int(pk, "status", res.status);
    pk_kv_int(pk, "signal", res.signal);
    pk_kv_bool(pk, "timed_out", res.timed_out);
    pk_kv_bin(pk, "output", res.out, res.out_len);
    pk_kv_int(pk, "elapsed_ms", now_ms() - t0);
    conn_end(c);
    return conn_flush_wait(c, 10000) < 0 ? -1 : 0;
}
