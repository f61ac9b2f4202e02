/* Files: read (streamed out), write (streamed in, optionally atomic through a temporary file
 * and rename), stat, list a directory (streamed in batches). Each frame out waits for the
 * socket (back-pressure); each frame in is written before the next is read. */
#include "agent.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PATH_CAP 4096
#define IDLE_MS (10 * 60 * 1000)    /* a write stream may pause this long between frames */
#define DIR_BATCH 256

static const char *type_name(mode_t m)
{
    switch (m & S_IFMT) {
    case S_IFREG: return "file";
    case S_IFDIR: return "dir";
    case S_IFLNK: return "symlink";
    case S_IFCHR: return "char";
    case S_IFBLK: return "block";
    case S_IFIFO: return "fifo";
    case S_IFSOCK: return "socket";
    default: return "unknown";
    }
}

static int64_t ns(struct timespec t)
{
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

int op_read_file(struct conn *c, const struct msg *m)
{
    char path[PATH_CAP];
    int64_t offset = 0, length = -1;
    if (req_str(c, m->root, "path", path, sizeof(path), true) < 0 ||
        req_int(c, m->root, "offset", &offset, 0, INT64_MAX, false) < 0 ||
        req_int(c, m->root, "length", &length, 0, INT64_MAX, false) < 0)
        return conn_fail(c, EINVAL, NULL);
    /* O_NONBLOCK: opening a FIFO must not hang the handler; cleared after for blocking reads */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return conn_fail(c, errno, "open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || S_ISDIR(st.st_mode)) {
        int e = S_ISDIR(st.st_mode) ? EISDIR : errno;
        close(fd);
        return conn_fail(c, e, "read %s: %s", path, strerror(e));
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    if (offset && lseek(fd, offset, SEEK_SET) < 0) {
        int e = errno;
        close(fd);
        return conn_fail(c, e, "seek %s: %s", path, strerror(e));
    }
    msgpack_packer *pk = conn_begin(c);
    msgpack_pack_map(pk, 3);
    pk_kv_str(pk, "t", "ok");
    pk_kv_int(pk, "size", st.st_size);
    pk_kv_int(pk, "mode", st.st_mode & 07777);
    conn_end(c);
    char *buf = malloc(CHUNK);
    int64_t total = 0;
    int ret = -1;
    if (!buf) {
        conn_fail(c, ENOMEM, "out of memory");
        goto out;
    }
    for (;;) {
        size_t want = CHUNK;
        if (length >= 0 && (uint64_t)(length - total) < want)
            want = (size_t)(length - total);
        if (want == 0)
            break;
        ssize_t n = read(fd, buf, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            conn_fail(c, errno, "read %s: %s", path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        pk = conn_begin(c);
        msgpack_pack_map(pk, 2);
        pk_kv_str(pk, "t", "data");
        pk_kv_bin(pk, "data", buf, (size_t)n);
        conn_end(c);
        if (conn_flush_wait(c, -1) < 0)
            goto out;
        total += n;
    }
    pk = conn_begin(c);
    msgpack_pack_map(pk, 2);
    pk_kv_str(pk, "t", "end");
    pk_kv_int(pk, "bytes", total);
    conn_end(c);
    ret = conn_flush_wait(c, -1) < 0 ? -1 : 0;
out:
    free(buf);
    close(fd);
    return ret;
}

static int mkparents(char *path)
{
    for (char *p = path + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            int r = mkdir(path, 0755);
            *p = '/';
            if (r < 0 && errno != EEXIST)
                return -errno;
        }
    return 0;
}

int op_write_file(struct conn *c, const struct msg *m)
{
    char path[PATH_CAP], tmp[PATH_CAP + 64];
    int64_t mode = 0644, uid = -1, gid = -1;
    bool atomic = false, append = false, mkdirs = false, sync = false;
    if (req_str(c, m->root, "path", path, sizeof(path), true) < 0 ||
        req_int(c, m->root, "mode", &mode, 0, 07777, false) < 0 ||
        req_int(c, m->root, "uid", &uid, 0, 0xfffffffe, false) < 0 ||
        req_int(c, m->root, "gid", &gid, 0, 0xfffffffe, false) < 0 ||
        req_bool(c, m->root, "atomic", &atomic) < 0 ||
        req_bool(c, m->root, "append", &append) < 0 ||
        req_bool(c, m->root, "mkdirs", &mkdirs) < 0 ||
        req_bool(c, m->root, "sync", &sync) < 0)
        return conn_fail(c, EINVAL, NULL);
    if (atomic && append)
        return conn_fail(c, EINVAL, "atomic and append exclude each other");
    if (!path[0] || path[strlen(path) - 1] == '/')
        return conn_fail(c, EINVAL, "path must name a file");
    if (mkdirs && mkparents(path) < 0)
        return conn_fail(c, errno, "creating the parents of %s: %s", path, strerror(errno));
    int fd;
    if (atomic) {
        char d[PATH_CAP], b[PATH_CAP];
        strcpy(d, path);
        strcpy(b, path);
        snprintf(tmp, sizeof(tmp), "%s/.%s.vmmd-%d", dirname(d), basename(b), (int)getpid());
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY, (mode_t)mode);
    } else {
        fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY | (append ? O_APPEND : O_TRUNC),
                  (mode_t)mode);
    }
    if (fd < 0)
        return conn_fail(c, errno, "open %s: %s", atomic ? tmp : path, strerror(errno));
    int ret = -1;
    int64_t total = 0;
    if (!append)                        /* the exact mode asked for, whatever the umask */
        fchmod(fd, (mode_t)mode);
    if ((uid >= 0 || gid >= 0) && fchown(fd, (uid_t)uid, (gid_t)gid) < 0) {
        conn_fail(c, errno, "chown %s: %s", path, strerror(errno));
        goto out;
    }
    if (conn_ok(c) < 0)                  /* ready: the host streams data frames now */
        goto out;
    for (;;) {
        struct msg f;
        char t[8];
        int r = conn_recv_wait(c, &f, IDLE_MS);
        if (r < 0) {
            if (r == -EPROTO || r == -ETIMEDOUT)
                conn_fail(c, EPROTO, r == -ETIMEDOUT ? "no data for %d s" : NULL, IDLE_MS / 1000);
            goto out;
        }
        if (req_str(c, f.root, "t", t, sizeof(t), true) < 0) {
            msg_free(&f);
            conn_fail(c, EINVAL, NULL);
            goto out;
        }
        if (strcmp(t, "end") == 0) {
            msg_free(&f);
            break;
        }
        const char *p;
        uint32_t n;
        if (strcmp(t, "data") != 0 || req_bin(c, f.root, "data", &p, &n, FRAME_MAX, true) < 0) {
            msg_free(&f);
            conn_fail(c, EINVAL, c->err[0] ? NULL : "expected a data or end frame");
            goto out;
        }
        r = write_all(fd, p, n);
        msg_free(&f);
        if (r < 0) {
            conn_fail(c, r, "write %s: %s", path, strerror(-r));
            goto out;
        }
        total += n;
    }
    if (sync && fsync(fd) < 0) {
        conn_fail(c, errno, "fsync %s: %s", path, strerror(errno));
        goto out;
    }
    if (close(fd) < 0) {
        fd = -1;
        conn_fail(c, errno, "close %s: %s", path, strerror(errno));
        goto out;
    }
    fd = -1;
    if (atomic) {
        if (rename(tmp, path) < 0) {
            conn_fail(c, errno, "rename to %s: %s", path, strerror(errno));
            goto out;
        }
        atomic = false;                 /* nothing to clean up */
        if (sync) {
            char d[PATH_CAP];
            strcpy(d, path);
            int dfd = open(dirname(d), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (dfd >= 0) {
                fsync(dfd);
                close(dfd);
            }
        }
    }
    msgpack_packer *pk = conn_begin(c);
    msgpack_pack_map(pk, 2);
    pk_kv_str(pk, "t", "ok");
    pk_kv_int(pk, "bytes", total);
    conn_end(c);
    ret = conn_flush_wait(c, 10000) < 0 ? -1 : 0;
out:
    if (fd >= 0)
        close(fd);
    if (atomic)
        unlink(tmp);
    return ret;
}

static void pack_stat(msgpack_packer *pk, const struct stat *st)
{
    pk_kv_str(pk, "type", type_name(st->st_mode));
    pk_kv_int(pk, "mode", st->st_mode & 07777);
    pk_kv_int(pk, "size", st->st_size);
    pk_kv_int(pk, "uid", st->st_uid);
    pk_kv_int(pk, "gid", st->st_gid);
    pk_kv_int(pk, "mtime_ns", ns(st->st_mtim));
}

int op_stat(struct conn *c, const struct msg *m)
{
    char path[PATH_CAP], target[PATH_CAP];
    bool follow = true;
    if (req_str(c, m->root, "path", path, sizeof(path), true) < 0 ||
        req_bool(c, m->root, "follow", &follow) < 0)
        return conn_fail(c, EINVAL, NULL);
    struct stat st;
    if ((follow ? stat(path, &st) : lstat(path, &st)) < 0)
        return conn_fail(c, errno, "stat %s: %s", path, strerror(errno));
    ssize_t tl = -1;
    if (S_ISLNK(st.st_mode))
        tl = readlink(path, target, sizeof(target) - 1);
    msgpack_packer *pk = conn_begin(c);
    msgpack_pack_map(pk, 10 + (tl >= 0));
    pk_kv_str(pk, "t", "ok");
    pack_stat(pk, &st);
    pk_kv_int(pk, "nlink", (int64_t)st.st_nlink);
    pk_kv_int(pk, "atime_ns", ns(st.st_atim));
    pk_kv_int(pk, "ctime_ns", ns(st.st_ctim));
    if (tl >= 0) {
        pk_str(pk, "target");
        pk_strn(pk, target, (size_t)tl);
    }
    conn_end(c);
    return conn_flush_wait(c, 10000) < 0 ? -1 : 0;
}

int op_list_dir(struct conn *c, const struct msg *m)
{
    char path[PATH_CAP];
    if (req_str(c, m->root, "path", path, sizeof(path), true) < 0)
        return conn_fail(c, EINVAL, NULL);
    int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = dfd < 0 ? NULL : fdopendir(dfd);
    if (!d) {
        int e = errno;
        if (dfd >= 0)
            close(dfd);
        return conn_fail(c, e, "list %s: %s", path, strerror(e));
    }
    if (conn_ok(c) < 0) {
        closedir(d);
        return -1;
    }
    /* batches of at most DIR_BATCH entries: names are < 256 bytes, so a batch fits a frame */
    struct { char name[256]; struct stat st; bool ok; } *batch = malloc(DIR_BATCH * sizeof(*batch));
    int64_t count = 0;
    int ret = -1;
    if (!batch) {
        conn_fail(c, ENOMEM, "out of memory");
        goto out;
    }
    for (bool more = true; more;) {
        int n = 0;
        struct dirent *e;
        errno = 0;
        while (n < DIR_BATCH && (e = readdir(d))) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            snprintf(batch[n].name, sizeof(batch[n].name), "%s", e->d_name);
            batch[n].ok = fstatat(dirfd(d), e->d_name, &batch[n].st, AT_SYMLINK_NOFOLLOW) == 0;
            n++;
        }
        more = n == DIR_BATCH;
        if (errno) {
            conn_fail(c, errno, "list %s: %s", path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        msgpack_packer *pk = conn_begin(c);
        msgpack_pack_map(pk, 2);
        pk_kv_str(pk, "t", "entries");
        pk_str(pk, "entries");
        msgpack_pack_array(pk, (size_t)n);
        for (int i = 0; i < n; i++) {
            msgpack_pack_map(pk, batch[i].ok ? 7 : 2);
            pk_kv_str(pk, "name", batch[i].name);
            if (batch[i].ok)
                pack_stat(pk, &batch[i].st);
            else
                pk_kv_str(pk, "type", "unknown");
        }
        conn_end(c);
        if (conn_flush_wait(c, -1) < 0)
            goto out;
        count += n;
    }
    msgpack_packer *pk = conn_begin(c);
    msgpack_pack_map(pk, 2);
    pk_kv_str(pk, "t", "end");
    pk_kv_int(pk, "count", count);
    conn_end(c);
    ret = conn_flush_wait(c, 10000) < 0 ? -1 : 0;
out:
    free(batch);
    closedir(d);
    return ret;
}
