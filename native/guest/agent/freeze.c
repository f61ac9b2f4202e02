/* freeze / thaw: FIFREEZE on every writable mount whose filesystem supports it (ext4 on the
 * block device), so a snapshot never catches half-written data; FITHAW undoes it.
 *
 * The freeze connection stays open while the filesystems are frozen. They are thawed when the
 * host sends thaw on it, when a `thaw` op comes on another connection, when the freezing
 * connection drops (a crashed host, or a restore, which resets every vsock connection), or when
 * the timeout passes: a guest is never left frozen forever. The holder's pid is kept in
 * <run>/freeze.pid (run dir on tmpfs, never frozen) under <run>/freeze.lock, so a late
 * auto-thaw from an old holder cannot undo a newer freeze. */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_MOUNTS 256
#define DEFAULT_TIMEOUT_MS 60000
#define MAX_TIMEOUT_MS 3600000

struct mount {
    char path[1024];
    unsigned dev_major, dev_minor;
};

/* Undoes mountinfo's octal escapes (\040 for a space) in place. */
static void unescape(char *s)
{
    char *w = s;
    for (char *r = s; *r; r++, w++) {
        if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' && r[2] <= '7' &&
            r[3] >= '0' && r[3] <= '7') {
            *w = (char)((r[1] - '0') << 6 | (r[2] - '0') << 3 | (r[3] - '0'));
            r += 3;
        } else {
            *w = *r;
        }
    }
    *w = 0;
}

static bool has_opt(const char *opts, const char *opt)
{
    size_t n = strlen(opt);
    for (const char *p = opts; p; p = strchr(p, ',')) {
        if (*p == ',')
            p++;
        if (strncmp(p, opt, n) == 0 && (p[n] == ',' || p[n] == 0 || p[n] == ' '))
            return true;
    }
    return false;
}

/* Writable mounts, one per superblock (bind mounts share one and FIFREEZE would say EBUSY),
 * in mount order. Virtual filesystems are left out: they hold no data to protect. */
static int writable_mounts(struct mount *out, int max)
{
    static const char *const skip[] = {"proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "ramfs",
        "rootfs", "cgroup", "cgroup2", "mqueue", "debugfs", "tracefs", "securityfs", "pstore",
        "bpf", "hugetlbfs", "fusectl", "configfs", "autofs", "binfmt_misc", "efivarfs", "nsfs",
        "9p", "overlay", NULL};
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f)
        return -errno;
    char line[4096];
    int n = 0;
    while (n < max && fgets(line, sizeof(line), f)) {
        if (!strchr(line, '\n') && !feof(f)) {     /* longer than the buffer: skip it whole */
            int ch;
            while ((ch = fgetc(f)) != EOF && ch != '\n')
                ;
            continue;
        }
        /* id parent major:minor root mountpoint opts [optional...] - fstype source superopts */
        char *fld[16];
        int nf = 0;
        for (char *save = NULL, *t = strtok_r(line, " \n", &save); t && nf < 16;
             t = strtok_r(NULL, " \n", &save))
            fld[nf++] = t;
        int dash = -1;
        for (int i = 6; i < nf; i++)
            if (strcmp(fld[i], "-") == 0) {
                dash = i;
                break;
            }
        if (nf < 6 || dash < 0 || dash + 3 > nf)
            continue;
        const char *fstype = fld[dash + 1], *superopts = fld[dash + 3 < nf ? dash + 3 : dash + 2];
        if (!has_opt(fld[5], "rw") || has_opt(superopts, "ro"))
            continue;
        bool virt = false;
        for (int i = 0; skip[i]; i++)
            if (strcmp(fstype, skip[i]) == 0)
                virt = true;
        unsigned ma, mi;
        if (virt || sscanf(fld[2], "%u:%u", &ma, &mi) != 2)
            continue;
        bool dup = false;
        for (int i = 0; i < n; i++)
            if (out[i].dev_major == ma && out[i].dev_minor == mi)
                dup = true;
        if (dup || strlen(fld[4]) >= sizeof(out[n].path))
            continue;
        strcpy(out[n].path, fld[4]);
        unescape(out[n].path);
        out[n].dev_major = ma, out[n].dev_minor = mi;
        n++;
    }
    fclose(f);
    return n;
}

static int fs_ioctl(const char *path, unsigned long req)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = ioctl(fd, req, 0) < 0 ? -errno : 0;
    close(fd);
    return r;
}

static int lock_open(const struct agent_cfg *cfg)
{
    char p[4096];
    if (path_join(p, sizeof(p), cfg->run_dir, "freeze.lock") < 0)
        return -ENAMETOOLONG;
    int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    flock(fd, LOCK_EX);
    return fd;
}

static pid_t holder_get(const struct agent_cfg *cfg)
{
    char p[4096], buf[32] = {0};
    if (path_join(p, sizeof(p), cfg->run_dir, "freeze.pid") < 0)
        return 0;
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    pid_t pid = n > 0 ? (pid_t)atoi(buf) : 0;
    return pid > 1 && kill(pid, 0) == 0 ? pid : 0;
}

static void holder_set(const struct agent_cfg *cfg, pid_t pid)
{
    char p[4096], buf[32];
    if (path_join(p, sizeof(p), cfg->run_dir, "freeze.pid") < 0)
        return;
    if (pid == 0) {
        unlink(p);
        return;
    }
    int n = snprintf(buf, sizeof(buf), "%d\n", (int)pid);
    write_atomic(p, buf, (size_t)n, 0644);
}

/* Thaws every writable mount that is frozen; packs the thawed paths as an array. */
static int thaw_all(msgpack_packer *pk)
{
    struct mount *ms = calloc(MAX_MOUNTS, sizeof(*ms));
    int n = ms ? writable_mounts(ms, MAX_MOUNTS) : -ENOMEM;
    bool thawed[MAX_MOUNTS] = {0};
    int count = 0;
    for (int i = 0; i < n; i++)
        if (fs_ioctl(ms[i].path, FITHAW) == 0)       /* EINVAL: was not frozen */
            thawed[i] = true, count++;
    if (pk) {
        msgpack_pack_array(pk, (size_t)count);
        for (int i = 0; i < n; i++)
            if (thawed[i])
                pk_str(pk, ms[i].path);
    }
    free(ms);
    return n < 0 ? n : count;
}

static void send_thawed(struct conn *c, const char *t, const char *reason)
{
    msgpack_packer *pk = conn_begin(c);
    msgpack_pack_map(pk, 3);
    pk_kv_str(pk, "t", t);
    pk_kv_str(pk, "reason", reason);
    pk_str(pk, "thawed");
    thaw_all(pk);
    conn_end(c);
    conn_flush_wait(c, 5000);
}

/* The holder ends its freeze, unless another connection took over since. */
static void holder_thaw(struct conn *c, const char *t, const char *reason)
{
    int lfd = lock_open(c->cfg);
    if (holder_get(c->cfg) == getpid()) {
        holder_set(c->cfg, 0);
        if (t)
            send_thawed(c, t, reason);
        else
            thaw_all(NULL);
    }
    if (lfd >= 0)
        close(lfd);
}

int op_freeze(struct conn *c, const struct msg *m)
{
    int64_t timeout = DEFAULT_TIMEOUT_MS;
    if (req_int(c, m->root, "timeout_ms", &timeout, 1, MAX_TIMEOUT_MS, false) < 0)
        return conn_fail(c, EINVAL, NULL);
    struct mount *ms = calloc(MAX_MOUNTS, sizeof(*ms));
    if (!ms)
        return conn_fail(c, ENOMEM, "out of memory");
    int lfd = lock_open(c->cfg);
    pid_t other = holder_get(c->cfg);
    if (other) {
        if (lfd >= 0)
            close(lfd);
        free(ms);
        return conn_fail(c, EBUSY, "already frozen by the connection served by pid %d; "
                         "thaw first", (int)other);
    }
    int n = writable_mounts(ms, MAX_MOUNTS);
    bool frozen[MAX_MOUNTS] = {0};
    int count = 0, err = 0;
    /* children before parents: a filesystem on a loop file freezes before its backing one */
    for (int i = n - 1; i >= 0; i--) {
        int r = fs_ioctl(ms[i].path, FIFREEZE);
        if (r == 0) {
            frozen[i] = true, count++;
        } else if (r != -EOPNOTSUPP && r != -ENOTTY && r != -EINVAL && r != -ENOENT) {
            /* (the others: no freeze support, or the mount went away: nothing to protect) */
            err = r;
            seterr(c, "FIFREEZE %s: %s", ms[i].path, strerror(-r));
            break;
        }
    }
    if (err) {
        for (int i = 0; i < n; i++)
            if (frozen[i])
                fs_ioctl(ms[i].path, FITHAW);
        if (lfd >= 0)
            close(lfd);
        free(ms);
        return conn_fail(c, err, NULL);
    }
    holder_set(c->cfg, getpid());
    if (lfd >= 0)
        close(lfd);
    msgpack_packer *pk = conn_begin(c);
    msgpack_pack_map(pk, 2);
    pk_kv_str(pk, "t", "ok");
    pk_str(pk, "frozen");
    msgpack_pack_array(pk, (size_t)count);
    for (int i = 0; i < n; i++)
        if (frozen[i])
            pk_str(pk, ms[i].path);
    conn_end(c);
    free(ms);
    if (conn_flush_wait(c, 10000) < 0) {
        holder_thaw(c, NULL, NULL);
        return -1;
    }
    /* hold: a thaw frame, the connection's end, or the timeout ends it */
    struct msg f;
    int r = conn_recv_wait(c, &f, (int)timeout);
    if (r == 1) {
        char t[16] = "";
        if (req_str(c, f.root, "op", t, sizeof(t), false) < 0 || strcmp(t, "thaw") != 0)
            seterr(c, "the only frame accepted while frozen is {op: thaw}");
        msg_free(&f);
        if (strcmp(t, "thaw") == 0) {
            holder_thaw(c, "ok", "thaw");
            return 0;
        }
        holder_thaw(c, NULL, NULL);
        return conn_fail(c, EPROTO, NULL);
    }
    holder_thaw(c, r == -ETIMEDOUT ? "thawed" : NULL, "timeout");
    return 0;
}

int op_thaw(struct conn *c, const struct msg *m)
{
    (void)m;
    int lfd = lock_open(c->cfg);
    pid_t holder = holder_get(c->cfg);
    msgpack_packer *pk = conn_begin(c);
    msgpack_pack_map(pk, 2);
    pk_kv_str(pk, "t", "ok");
    pk_str(pk, "thawed");
    thaw_all(pk);
    conn_end(c);
    holder_set(c->cfg, 0);
    if (holder)                         /* its connection has nothing left to hold */
        kill(holder, SIGTERM);
    if (lfd >= 0)
        close(lfd);
    return conn_flush_wait(c, 10000) < 0 ? -1 : 0;
}
