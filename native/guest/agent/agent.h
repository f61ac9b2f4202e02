/* The vmmd guest agent (docs/agent-protocol.md): one connection per operation, each served by a
 * forked handler, length-prefixed msgpack frames. Everything the host sends is hostile input:
 * every length, count and string is bounded before use, and a malformed frame ends only its own
 * connection. */
#ifndef VMMD_AGENT_H
#define VMMD_AGENT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <msgpack.h>

#define AGENT_VERSION "0.1.0"
#define AGENT_PORT 1024
#define FRAME_MAX (1u << 20)        /* largest frame body either way */
#define CHUNK (256u << 10)          /* file and stream data per frame */
#define MSG_DEPTH 8                 /* deepest nesting a request may use */
#define ERR_MAX 512

struct agent_cfg {
    const char *run_dir;            /* generation, exec registry, freeze lock, hooks */
    bool system_ops;                /* freeze/thaw/sync touch the whole machine: guest only */
};

/* --- conn.c: a framed connection (non-blocking socket underneath) --- */
struct msg {
    msgpack_unpacked u;
    uint8_t *body;
    const msgpack_object *root;     /* always a map */
};

struct conn {
    int fd;
    const struct agent_cfg *cfg;
    uint8_t hdr[4];
    uint32_t hgot, blen, bgot;
    uint8_t *body;
    msgpack_sbuffer out;
    size_t out_off, frame_at;
    msgpack_packer pk;
    char err[ERR_MAX];
};

void conn_init(struct conn *c, int fd, const struct agent_cfg *cfg);
void conn_close(struct conn *c);
/* 1: a frame is in *m; 0: would block; -EPIPE: the peer closed between frames;
 * -EPROTO: malformed (c->err says why); other -errno. */
int conn_recv(struct conn *c, struct msg *m);
/* as conn_recv, waiting up to timeout_ms (-1: forever); -ETIMEDOUT when nothing came */
int conn_recv_wait(struct conn *c, struct msg *m, int timeout_ms);
void msg_free(struct msg *m);
/* frames out: begin, pack through c->pk, end; then flush */
msgpack_packer *conn_begin(struct conn *c);
void conn_end(struct conn *c);
bool conn_pending(const struct conn *c);
int conn_flush(struct conn *c);                  /* 1 all sent, 0 would block, -errno */
int conn_flush_wait(struct conn *c, int timeout_ms);
/* sends {t:"error", errno, code, message} and returns -1; message from fmt, or c->err if NULL */
int conn_fail(struct conn *c, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int conn_ok(struct conn *c);                     /* sends {t:"ok"} and flushes */
void seterr(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* pack helpers */
void pk_str(msgpack_packer *pk, const char *s);
void pk_strn(msgpack_packer *pk, const char *s, size_t n);
void pk_kv_str(msgpack_packer *pk, const char *k, const char *v);
void pk_kv_int(msgpack_packer *pk, const char *k, int64_t v);
void pk_kv_bool(msgpack_packer *pk, const char *k, bool v);
void pk_kv_bin(msgpack_packer *pk, const char *k, const void *p, size_t n);

/* --- check.c: structural check of untrusted msgpack before the library unpacks it --- */
int mp_check(const uint8_t *p, size_t n, char *err, size_t errcap);

/* --- req.c: typed, bounded access to request fields; on error c->err is set --- */
const msgpack_object *req_get(const msgpack_object *map, const char *key);
/* 0 found, 1 absent (only when !required), -EINVAL wrong type/too long/embedded NUL */
int req_str(struct conn *c, const msgpack_object *map, const char *key, char *buf, size_t cap,
            bool required);
int req_int(struct conn *c, const msgpack_object *map, const char *key, int64_t *out,
            int64_t lo, int64_t hi, bool required);
int req_bool(struct conn *c, const msgpack_object *map, const char *key, bool *out);
int req_bin(struct conn *c, const msgpack_object *map, const char *key, const char **p,
            uint32_t *len, uint32_t max, bool required);
/* an array of at most max strings, each copied; NULL-terminated; free with strv_free */
int req_strv(struct conn *c, const msgpack_object *o, const char *what, char ***out, size_t max,
             size_t *count);
void strv_free(char **v);
int obj_str(struct conn *c, const msgpack_object *o, const char *what, char *buf, size_t cap);

/* --- user.c: /etc/passwd and /etc/group, without NSS (static binary) --- */
struct user {
    uid_t uid;
    gid_t gid;
    gid_t groups[64];
    int ngroups;
    char name[64];
    char home[512];
};
/* by name or, when name is NULL, by uid; -ENOENT if no such user (a bare uid still resolves) */
int user_lookup(const char *name, uid_t uid, struct user *u, char *err, size_t cap);

/* --- ops: each serves one connection whose first frame was m --- */
int op_ping(struct conn *c, const struct msg *m);
int op_exec(struct conn *c, const struct msg *m);
int op_signal(struct conn *c, const struct msg *m);
int op_read_file(struct conn *c, const struct msg *m);
int op_write_file(struct conn *c, const struct msg *m);
int op_stat(struct conn *c, const struct msg *m);
int op_list_dir(struct conn *c, const struct msg *m);
int op_forward(struct conn *c, const struct msg *m);
int op_freeze(struct conn *c, const struct msg *m);
int op_thaw(struct conn *c, const struct msg *m);
int op_sync(struct conn *c, const struct msg *m);
int op_hooks_set(struct conn *c, const struct msg *m);
int op_hook(struct conn *c, const struct msg *m);

/* tcpreset.c: destroys the guest's non-loopback TCP connections (after a restore); returns
 * how many, or -errno with a message in err */
int tcp_reset_all(char *err, size_t cap);

/* exec.c, for hooks: parse argv/env/cwd/user of an exec-kind action; envp is complete */
int exec_parse_action(struct conn *c, const msgpack_object *map, char ***argv, char ***envp,
                      char *cwd, size_t cwdcap, struct user *user, bool *has_user);

/* --- spawn.c: fork/exec with credentials, shared by exec and hooks --- */
struct spawn {
    char **argv, **envp;
    const char *cwd;                /* NULL: the user's home, or / */
    const struct user *user;        /* NULL: stay root (the agent's own credentials) */
    int fd0, fd1, fd2;              /* the child's stdio */
    int ctty;                       /* >= 0: make this (a pty slave) the controlling tty */
};
/* forks, sets up and execs; 0 and *pid when the exec succeeded, else -errno with err set */
int spawn(const struct spawn *s, pid_t *pid, char *err, size_t cap);
/* the environment of a spawned process: defaults for the user, then overrides ("K=V") */
char **spawn_env(const struct user *u, char **overrides, bool tty);

/* --- state.c: the run directory --- */
int state_init(const struct agent_cfg *cfg);
int64_t generation_get(const struct agent_cfg *cfg);
int64_t generation_bump(const struct agent_cfg *cfg);
int exec_register(const struct agent_cfg *cfg, pid_t pid);
void exec_unregister(const struct agent_cfg *cfg, pid_t pid);
bool exec_registered(const struct agent_cfg *cfg, pid_t pid);
int path_join(char *buf, size_t cap, const char *dir, const char *name);
int write_atomic(const char *path, const void *data, size_t len, mode_t mode);

/* --- util --- */
int poll_one(int fd, short events, int timeout_ms);
int write_all(int fd, const void *p, size_t n);
int64_t now_ms(void);

#endif
