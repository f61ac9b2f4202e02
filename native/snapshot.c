/*
 * snapshot.c - a snapshot is a directory: `vmstate` (every section) and `memory` (guest RAM at
 * linear offsets, sparse). A diff holds only the pages dirtied since its parent, which it names
 * by id and vmstate checksum (and where it was). Snapshot directories are untrusted input:
 * nothing in them is followed through a symlink, only regular files are opened (without
 * blocking on a FIFO), a parent that is not the one recorded is refused, and every field is
 * checked against the others before a VM is built. Snapshots are written once: files appear
 * under their names only when complete, and the dirty bits a snapshot covers are cleared only
 * when it is durable.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <linux/fs.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "internal.h"
#include "arch.h"

#define MEMORY_VERSION 2           /* 2: id, parent by id + checksum */
#define CHUNK_PAGES 256
#define RESOLVE_STRICT (RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)

struct memory_section {
    uint64_t size, pages, diff;
    uint8_t id[16];
    struct snap_id parent;         /* diff only */
    const uint8_t *bitmap;
    uint32_t bitmap_len;
};

/* ---------- paths and files ---------- */

static int openat2_(int dirfd, const char *path, uint64_t flags, uint64_t resolve)
{
    struct open_how how = {.flags = flags, .resolve = resolve};
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
}

static const char *kind(mode_t m)
{
    return S_ISDIR(m) ? "a directory" : S_ISFIFO(m) ? "a FIFO" : S_ISLNK(m) ? "a symlink" :
           S_ISCHR(m) || S_ISBLK(m) ? "a device" : S_ISSOCK(m) ? "a socket" : "not a regular file";
}

int open_regular(int dirfd, const char *name, int flags, const char *what)
{
    int pfd = openat2_(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC,
                       RESOLVE_BENEATH | RESOLVE_STRICT);
    if (pfd < 0) {
        if (errno == ENOENT)
            return vmm_err(ENOENT, "%s has no %s", what, name);
        return vmm_err(errno, "%s: %s: %m%s", what, name,
                       errno == ELOOP || errno == EXDEV ? " (snapshot files are never followed "
                       "through a symlink or out of their directory)" : "");
    }
    struct stat st;
    if (fstat(pfd, &st) < 0) {
        int e = errno;
        close(pfd);
        return vmm_err(e, "%s: stat %s: %s", what, name, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(pfd);
        return vmm_err(EINVAL, "%s: %s is %s, not a regular file", what, name, kind(st.st_mode));
    }
    char proc[64];
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", pfd);
    int fd = open(proc, flags | O_CLOEXEC);   /* the same inode, checked above */
    int e = errno;
    close(pfd);
    return fd < 0 ? vmm_err(e, "%s: open %s: %s", what, name, strerror(e)) : fd;
}

static int fd_path(int fd, char *out, size_t len)
{
    char proc[64];
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(proc, out, len - 1);
    if (n < 0 || (size_t)n >= len - 32)
        return vmm_err(n < 0 ? errno : ENAMETOOLONG, "the path of a snapshot directory: %s",
                       n < 0 ? strerror(errno) : "too long");
    out[n] = 0;
    return 0;
}

/* `path` beneath `root` (if given): absolute paths must lie under it, nothing is followed. */
static int open_dir_in(const char *root, int basefd, const char *path, int *fd)
{
    int rfd = -1, r = 0;
    const char *rel = path;
    uint64_t resolve = RESOLVE_STRICT;
    if (root) {
        char real[PATH_MAX];
        if (!realpath(root, real))
            return vmm_err(errno, "snapshot root %s: %m", root);
        size_t n = strlen(real);
        if (path[0] == '/') {
            if (strncmp(path, real, n) != 0 || (path[n] != '/' && path[n] != 0))
                return vmm_err(EXDEV, "snapshot %s is not beneath the snapshot root %s", path,
                               real);
            rel = path[n] ? path + n + 1 : ".";
            if (!*rel)
                rel = ".";
            if ((rfd = open(real, O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0)
                return vmm_err(errno, "snapshot root %s: %m", real);
            basefd = rfd;
        }
        resolve |= RESOLVE_BENEATH;
    }
    *fd = openat2_(basefd, rel, O_PATH | O_DIRECTORY | O_CLOEXEC, resolve);
    if (*fd < 0)
        r = vmm_err(errno, "snapshot directory %s: %m%s", path,
                    errno == ELOOP ? " (snapshot paths are never followed through a symlink)" :
                    errno == EXDEV ? " (it is outside the snapshot root)" : "");
    if (rfd >= 0)
        close(rfd);
    return r;
}

/* The caller's own directory: trusted as given, resolved to where it really is. */
static int open_own_dir(const char *root, const char *dir, int *fd, char *real)
{
    int r;
    if (root)
        r = open_dir_in(root, AT_FDCWD, dir, fd);
    else if ((*fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0)
        r = vmm_err(errno, "snapshot directory %s: %m", dir);
    else
        r = 0;
    if (!r && (r = fd_path(*fd, real, PATH_MAX))) {
        close(*fd);
        *fd = -1;
    }
    return r;
}

static int write_all(int fd, const void *buf, size_t len, off_t off)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t r = pwrite(fd, p, len, off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return vmm_err(errno, "write: %m");
        }
        p += r;
        len -= (size_t)r;
        off += r;
    }
    return 0;
}

/* A file with no name in dirfd until tmp_link gives it one: nothing half-written is ever seen,
 * and no name is opened that a symlink could redirect. */
static int tmp_open(int dirfd, const char *what)
{
    int fd = openat(dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0)
        return vmm_err(errno, "a temporary file for %s: %m (the filesystem needs O_TMPFILE)", what);
    return fd;
}

/* Gives the temp file `name`; refuses to replace one unless `replace`. */
static int tmp_link(int dirfd, int fd, const char *name, bool replace)
{
    char proc[64], tmp[64];
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
    if (fsync(fd) < 0)
        return vmm_err(errno, "fsync %s: %m", name);
    if (!replace) {
        if (linkat(AT_FDCWD, proc, dirfd, name, AT_SYMLINK_FOLLOW) < 0)
            return vmm_err(errno, "naming %s: %m", name);
        return 0;
    }
    uint64_t rnd;
    if (getrandom(&rnd, sizeof(rnd), 0) != sizeof(rnd))
        return vmm_err(errno, "getrandom: %m");
    snprintf(tmp, sizeof(tmp), ".%s.%016llx", name, (unsigned long long)rnd);
    if (linkat(AT_FDCWD, proc, dirfd, tmp, AT_SYMLINK_FOLLOW) < 0)
        return vmm_err(errno, "naming a temporary for %s: %m", name);
    if (renameat(dirfd, tmp, dirfd, name) < 0) {
        int e = errno;
        unlinkat(dirfd, tmp, 0);
        return vmm_err(e, "renaming into %s: %s", name, strerror(e));
    }
    return 0;
}

static int fsync_dirfd(int dirfd, const char *what)
{
    int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return vmm_err(errno, "open %s: %m", what);
    int r = fsync(fd) < 0 ? vmm_err(errno, "fsync %s: %m", what) : 0;
    close(fd);
    return r;
}

int publish_file(const char *path, const void *buf, size_t len)
{
    char copy[PATH_MAX];
    snprintf(copy, sizeof(copy), "%s", path);
    char *base = basename(copy);
    char dcopy[PATH_MAX];
    snprintf(dcopy, sizeof(dcopy), "%s", path);
    const char *dir = dirname(dcopy);
    int dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return vmm_err(errno, "directory of %s: %m", path);
    int fd = tmp_open(dfd, path), r = fd < 0 ? fd : 0;
    if (!r && !(r = write_all(fd, buf, len, 0)) && !(r = tmp_link(dfd, fd, base, true)))
        r = fsync_dirfd(dfd, dir);
    if (fd >= 0)
        close(fd);
    close(dfd);
    return r;
}

/* ---------- writing ---------- */

static bool page_is_zero(const uint8_t *p)
{
    const uint64_t *w = (const uint64_t *)p;
    for (size_t i = 0; i < PAGE_SIZE / 8; i++)
        if (w[i])
            return false;
    return true;
}

static bool in_set(const uint64_t *set, uint64_t pg)
{
    return !set || (set[pg >> 6] >> (pg & 63)) & 1;
}

static bool any_in(const uint64_t *set, uint64_t first, uint64_t n)
{
    if (!set)
        return true;
    for (uint64_t p = first; p < first + n; p++)
        if (in_set(set, p))
            return true;
    return false;
}

/*
 * Writes the pages in `set` (NULL: all) into fd, each read from where its content is; zero
 * pages stay holes. `listed` gets what the memory section lists: for a diff every page in the
 * set (a zeroed page must hide its parent's), for a full snapshot the pages holding data.
 */
static int write_memory(struct vmm *vm, int fd, const uint64_t *set, uint8_t *listed)
{
    struct guest_mem *m = &vm->mem;
    uint8_t *buf = malloc(CHUNK_PAGES * PAGE_SIZE);
    int8_t src[CHUNK_PAGES];
    if (!buf)
        return vmm_err(ENOMEM, "out of memory for the snapshot buffer");
    int r = ftruncate(fd, (off_t)m->size) < 0 ? vmm_err(errno, "ftruncate memory: %m") : 0;
    for (uint64_t first = 0; first < m->npages && !r; first += CHUNK_PAGES) {
        uint64_t n = m->npages - first < CHUNK_PAGES ? m->npages - first : CHUNK_PAGES;
        if (!any_in(set, first, n))
            continue;
        if ((r = mem_page_sources(m, first, n, src)))
            break;
        for (uint64_t i = 0; i < n && !r;) {
            if (!in_set(set, first + i) || src[i] == PAGE_ZERO) {
                i++;
                continue;
            }
            uint64_t j = i + 1;
            while (j < n && in_set(set, first + j) && src[j] == src[i])
                j++;
            r = mem_read_src(m, first + i, j - i, src[i], buf + i * PAGE_SIZE);
            i = j;
        }
        for (uint64_t i = 0; i < n && !r;) {
            bool data = in_set(set, first + i) && src[i] != PAGE_ZERO &&
                        !page_is_zero(buf + i * PAGE_SIZE);
            if (in_set(set, first + i) && (set || data))
                bit_set(listed, first + i);
            if (!data) {
                i++;
                continue;
            }
            uint64_t j = i + 1;
            while (j < n && in_set(set, first + j) && src[j] != PAGE_ZERO &&
                   !page_is_zero(buf + j * PAGE_SIZE)) {
                bit_set(listed, first + j);
                j++;
            }
            r = write_all(fd, buf + i * PAGE_SIZE, (j - i) * PAGE_SIZE,
                          (off_t)((first + i) * PAGE_SIZE));
            i = j;
        }
    }
    free(buf);
    return r ? r : gm_done(m);   /* a page server that died meanwhile fails the snapshot */
}

static uint64_t count_bits(const uint8_t *bm, uint64_t n)
{
    uint64_t c = 0;
    size_t i = 0, len = bitmap_bytes(n);
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, bm + i, 8);
        c += (uint64_t)__builtin_popcountll(w);
    }
    for (; i < len; i++)
        c += (uint64_t)__builtin_popcount(bm[i]);
    return c;
}

static int encode_memory(struct enc *e, const void *ctx)
{
    const struct memory_section *ms = ctx;
    enc_map(e, ms->diff ? 8 : 7);
    enc_kv_uint(e, "v", MEMORY_VERSION);
    enc_kv_uint(e, "size", ms->size);
    enc_kv_uint(e, "page_size", PAGE_SIZE);
    enc_kv_uint(e, "diff", ms->diff);
    enc_kv_uint(e, "pages", ms->pages);
    enc_kv_bin(e, "bitmap", ms->bitmap, ms->bitmap_len);
    enc_kv_bin(e, "id", ms->id, sizeof(ms->id));
    if (ms->diff) {
        enc_str(e, "parent");
        enc_map(e, 3);
        enc_kv_bin(e, "id", ms->parent.id, sizeof(ms->parent.id));
        enc_kv_uint(e, "checksum", ms->parent.checksum);
        enc_kv_str(e, "path", ms->parent.path);
    }
    return 0;
}

static int require_quiet(struct vmm *vm)
{
    int st = vm_state_locked(vm);
    if (st == VMM_STATE_FAILED) {
        pthread_mutex_lock(&vm->lock);
        int r = vmm_err(EIO, "the VM failed, so it has no state to read: %s", vm->message);
        pthread_mutex_unlock(&vm->lock);
        return r;
    }
    if (st != VMM_STATE_PAUSED && st != VMM_STATE_CREATED)
        return vmm_err(EBUSY, "pause the VM first: state is read only while vCPUs are parked "
                       "(state %d)", st);
    return 0;
}

static uint32_t trailer_crc(const struct enc *file)
{
    const uint8_t *p = file->buf + file->len - 4;
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Writes memory then vmstate into dfd; on success *crc is the vmstate's checksum. */
static int write_snapshot(struct vmm *vm, int dfd, const char *real, bool diff,
                          const uint64_t *set, struct memory_section *ms, uint32_t *crc)
{
    struct guest_mem *m = &vm->mem;
    uint8_t *listed = calloc(1, bitmap_bytes(m->npages));
    struct enc body, file;
    enc_init(&body);
    enc_init(&file);
    bool linked = false;
    int fd = -1, r = listed ? 0 : vmm_err(ENOMEM, "out of memory for the page bitmap");
    if (!r && (fd = tmp_open(dfd, "memory")) < 0)
        r = fd;
    if (!r)
        r = write_memory(vm, fd, set, listed);
    if (!r && vm->inject_snapshot_fail) {
        vm->inject_snapshot_fail = 0;
        r = vmm_err(EIO, "injected failure after writing memory");
    }
    if (!r && !(r = tmp_link(dfd, fd, "memory", false)))
        linked = true;
    if (fd >= 0)
        close(fd);
    fd = -1;
    if (!r) {
        ms->size = m->size;
        ms->diff = diff;
        ms->bitmap = listed;
        ms->bitmap_len = (uint32_t)bitmap_bytes(m->npages);
        ms->pages = count_bits(listed, m->npages);
        if (getrandom(ms->id, sizeof(ms->id), 0) != sizeof(ms->id))
            r = vmm_err(errno, "getrandom: %m");
    }
    if (!r && !(r = vmstate_encode(vm, &body, encode_memory, ms)))
        r = vmstate_frame(&body, &file);
    if (!r)
        r = gm_done(m);   /* checked again before the snapshot gets its vmstate */
    if (!r && (fd = tmp_open(dfd, "vmstate")) < 0)
        r = fd;
    if (!r && !(r = write_all(fd, file.buf, file.len, 0)))
        r = tmp_link(dfd, fd, "vmstate", false);
    if (fd >= 0)
        close(fd);
    if (!r)
        r = fsync_dirfd(dfd, real);
    if (!r)
        *crc = trailer_crc(&file);
    else if (linked) {
        unlinkat(dfd, "vmstate", 0);
        unlinkat(dfd, "memory", 0);
    }
    enc_free(&body);
    enc_free(&file);
    free(listed);
    return r;
}

/*
 * A snapshot directory is written once: overwriting one in place could leave a new memory file
 * beside an old vmstate after a crash, or pull pages from under a VM restored from it. A memory
 * file without a vmstate is what a crash mid-snapshot leaves; it is replaced.
 */
static int check_fresh(int dfd, const char *real)
{
    struct stat st;
    if (fstatat(dfd, "vmstate", &st, AT_SYMLINK_NOFOLLOW) == 0)
        return vmm_err(EEXIST, "%s already holds a snapshot; write the new one to another "
                       "directory (and rename it into place if it must replace the old)", real);
    if (fstatat(dfd, "memory", &st, AT_SYMLINK_NOFOLLOW) == 0 && unlinkat(dfd, "memory", 0) < 0)
        return vmm_err(errno, "%s holds a memory file of an unfinished snapshot that cannot be "
                       "removed (%m)", real);
    return 0;
}

static int snapshot_locked(struct vmm *vm, const char *dir, bool diff)
{
    int r = require_quiet(vm);
    if (r)
        return r;
    if (diff && !vm->has_parent)
        return vmm_err(EINVAL, "a diff snapshot needs a parent: take a full snapshot of this VM "
                       "first, or restore it from one");
    if (diff && !vm->cfg.track_dirty)
        return vmm_err(EINVAL, "a diff snapshot needs dirty tracking: create or restore the VM "
                       "with track_dirty");
    char *real = malloc(PATH_MAX);
    struct memory_section *ms = calloc(1, sizeof(*ms));
    size_t words = bitmap_words(vm->mem.npages);
    uint64_t *covered = calloc(words, sizeof(uint64_t));
    int dfd = -1;
    if (!real || !ms || !covered) {
        r = vmm_err(ENOMEM, "out of memory for a snapshot");
        goto out;
    }
    if ((r = open_own_dir(NULL, dir, &dfd, real)) || (r = check_fresh(dfd, real)))
        goto out;
    /* KVM's log moves into the VM's dirty bits, which only a durable snapshot clears */
    if ((r = mem_harvest_dirty(vm)))
        goto out;
    uint64_t dirty = 0;
    for (size_t i = 0; i < words; i++) {
        covered[i] = atomic_load(&vm->mem.dirty[i]);
        dirty += (uint64_t)__builtin_popcountll(covered[i]);
    }
    atomic_store(&vm->st.dirty_pages, dirty);
    if (diff)
        ms->parent = vm->parent;
    uint32_t crc;
    /* devices with files beside the snapshot (a disk's sealed layer) see where it goes, and
     * learn whether it became durable */
    struct dev_snap snap = {.dfd = dfd, .dir = real};
    vm->dm.env.snap = &snap;
    r = write_snapshot(vm, dfd, real, diff, diff ? covered : NULL, ms, &crc);
    devmgr_snapshot_done(&vm->dm, r);
    vm->dm.env.snap = NULL;
    if (r)
        goto out;
    for (size_t i = 0; i < words; i++)
        atomic_fetch_and(&vm->mem.dirty[i], ~covered[i]);
    memcpy(vm->parent.id, ms->id, sizeof(ms->id));
    vm->parent.checksum = crc;
    snprintf(vm->parent.path, sizeof(vm->parent.path), "%s", real);
    vm->has_parent = true;
out:
    if (dfd >= 0)
        close(dfd);
    free(real);
    free(ms);
    free(covered);
    return r;
}

int vmm_snapshot(struct vmm *vm, const char *dir, const struct vmm_snapshot_opts *opts)
{
    int r = vm_op_begin(vm);
    if (r)
        return r;
    r = snapshot_locked(vm, dir, opts && opts->diff);
    vm_op_end(vm);
    return r;
}

/* ---------- reading ---------- */

struct parsed {
    uint8_t *buf;
    size_t len;
    struct dec_map root;
};

static int parse_dir(int dfd, const char *path, struct parsed *p)
{
    memset(p, 0, sizeof(*p));
    int fd = open_regular(dfd, "vmstate", O_RDONLY | O_NONBLOCK, path);
    if (fd == -ENOENT)
        return vmm_err(ENOENT, "%s is not a snapshot: it has no vmstate", path);
    if (fd < 0)
        return fd;
    int r = vmstate_read_fd(fd, "vmstate", &p->buf, &p->len);
    close(fd);
    if (r)
        return r;
    if ((r = vmstate_parse(p->buf, p->len, &p->root))) {
        free(p->buf);
        p->buf = NULL;
        return vmm_err_ctx(r, "%s/vmstate", path);
    }
    return 0;
}

static uint32_t parsed_crc(const struct parsed *p)
{
    const uint8_t *t = p->buf + p->len - 4;
    return (uint32_t)t[0] | (uint32_t)t[1] << 8 | (uint32_t)t[2] << 16 | (uint32_t)t[3] << 24;
}

static int read_memory_section(const struct dec_map *root, struct memory_section *ms)
{
    struct dec_map m, par;
    uint64_t page_size, v;
    memset(ms, 0, sizeof(*ms));
    int r = dec_get_map(root, "memory", &m);
    if (!r)
        r = vmstate_check_version(&m, "memory", MEMORY_VERSION);
    if (!r && !(r = dec_get_uint(&m, "v", &v)) && v < MEMORY_VERSION)
        r = vmm_err(EPROTONOSUPPORT, "vmstate section memory is version %llu, older than this "
                    "build reads (%d): take the snapshot again", (unsigned long long)v,
                    MEMORY_VERSION);
    if (r || (r = dec_get_uint(&m, "size", &ms->size)) ||
        (r = dec_get_uint(&m, "page_size", &page_size)) ||
        (r = dec_get_uint(&m, "diff", &ms->diff)) ||
        (r = dec_get_uint(&m, "pages", &ms->pages)) ||
        (r = dec_get_bin(&m, "bitmap", &ms->bitmap, &ms->bitmap_len)) ||
        (r = dec_get_bin_exact(&m, "id", ms->id, sizeof(ms->id))))
        return r;
    if (page_size != PAGE_SIZE)
        return vmm_err(EINVAL, "snapshot pages are %llu bytes; this build uses %llu",
                       (unsigned long long)page_size, PAGE_SIZE);
    uint64_t npages = ms->size / PAGE_SIZE;
    if (ms->size % PAGE_SIZE || ms->size > VMM_MAX_MEM || ms->size < VMM_MIN_MEM ||
        ms->bitmap_len != bitmap_bytes(npages))
        return vmm_err(EINVAL, "snapshot memory section is inconsistent: %llu bytes, bitmap of %u",
                       (unsigned long long)ms->size, ms->bitmap_len);
    if (npages % 8 && (ms->bitmap[ms->bitmap_len - 1] >> (npages % 8)))
        return vmm_err(EINVAL, "snapshot memory bitmap lists pages past the end of memory");
    if (count_bits(ms->bitmap, npages) != ms->pages)
        return vmm_err(EINVAL, "snapshot memory section says %llu pages, its bitmap lists %llu",
                       (unsigned long long)ms->pages,
                       (unsigned long long)count_bits(ms->bitmap, npages));
    if (ms->diff > 1)
        return vmm_err(EINVAL, "snapshot memory section: diff=%llu", (unsigned long long)ms->diff);
    r = dec_get_map(&m, "parent", &par);
    if (ms->diff && r)
        return r == -ENOENT ? vmm_err(EINVAL, "diff snapshot names no parent") : r;
    if (!ms->diff && !r)
        return vmm_err(EINVAL, "a full snapshot names a parent");
    if (ms->diff) {
        uint64_t crc;
        if ((r = dec_get_bin_exact(&par, "id", ms->parent.id, sizeof(ms->parent.id))) ||
            (r = dec_get_uint(&par, "checksum", &crc)) ||
            (r = dec_get_str(&par, "path", ms->parent.path, sizeof(ms->parent.path))))
            return r;
        if (crc > UINT32_MAX || !ms->parent.path[0])
            return vmm_err(EINVAL, "diff snapshot's parent reference is malformed");
        ms->parent.checksum = (uint32_t)crc;
    }
    return 0;
}

/* Opens dir/memory (a regular file of exactly the memory's size) and copies the bitmap. */
static int open_layer(int dfd, const char *path, const struct memory_section *ms,
                      struct mem_layer *l)
{
    l->bitmap = NULL;
    l->fd = open_regular(dfd, "memory", O_RDONLY | O_NONBLOCK, path);
    if (l->fd < 0) {
        int r = l->fd;
        l->fd = -1;
        return r == -ENOENT ? vmm_err(ENOENT, "snapshot %s: its memory file is missing", path) : r;
    }
    struct stat st;
    if (fstat(l->fd, &st) < 0 || (uint64_t)st.st_size != ms->size)
        return vmm_err(EINVAL, "snapshot %s: memory file is %lld bytes, the snapshot says %llu",
                       path, (long long)st.st_size, (unsigned long long)ms->size);
    if (!(l->bitmap = malloc(ms->bitmap_len)))
        return vmm_err(ENOMEM, "out of memory for a layer bitmap");
    memcpy(l->bitmap, ms->bitmap, ms->bitmap_len);
    return 0;
}

/*
 * Walks diff -> parent -> ... -> full, newest first, opening every memory file. Each parent is
 * found where its child recorded it (beneath `root` if given, never through a symlink) and must
 * be the very snapshot the child was taken on: same id, same vmstate checksum.
 */
static int open_chain(const char *root, int dfd, const char *path,
                      const struct memory_section *top, struct mem_layer *layers, int *n)
{
    struct memory_section ms = *top;
    struct parsed p = {0};          /* owns ms.bitmap once we are past the top */
    char *cur = malloc(PATH_MAX);
    int cfd = dfd, r = 0;
    if (!cur)
        return vmm_err(ENOMEM, "out of memory");
    snprintf(cur, PATH_MAX, "%s", path);
    *n = 0;
    for (;;) {
        if (*n == VMM_MAX_LAYERS) {
            r = vmm_err(ELOOP, "snapshot chain is deeper than %d layers: take a full snapshot",
                        VMM_MAX_LAYERS);
            break;
        }
        struct mem_layer *l = &layers[(*n)++];
        if ((r = open_layer(cfd, cur, &ms, l)) || !ms.diff)
            break;
        struct snap_id want = ms.parent;
        uint64_t size = ms.size;
        int pfd;
        if ((r = open_dir_in(root, cfd, want.path, &pfd))) {
            r = vmm_err_ctx(r, "parent of %s", cur);
            break;
        }
        if (cfd != dfd)
            close(cfd);
        cfd = pfd;
        free(p.buf);
        if ((r = parse_dir(cfd, want.path, &p))) {
            r = vmm_err_ctx(r, "parent of %s", cur);
            break;
        }
        if ((r = read_memory_section(&p.root, &ms)))
            break;
        if (memcmp(ms.id, want.id, sizeof(want.id)) != 0 || parsed_crc(&p) != want.checksum) {
            r = vmm_err(ESTALE, "%s is not the snapshot %s was taken on (id or checksum differ): "
                        "the parent was replaced; restore from a full snapshot", want.path, cur);
            break;
        }
        if (ms.size != size) {
            r = vmm_err(EINVAL, "parent %s has %llu bytes of memory, its child %llu", want.path,
                        (unsigned long long)ms.size, (unsigned long long)size);
            break;
        }
        snprintf(cur, PATH_MAX, "%s", want.path);
    }
    if (cfd != dfd)
        close(cfd);
    free(p.buf);
    free(cur);
    return r;
}

static int read_top(const char *root, const char *dir, int *dfd, char *real, struct parsed *p,
                    struct vmm_config *cfg, struct memory_section *ms)
{
    struct dec_map c;
    int r = open_own_dir(root, dir, dfd, real);
    if (r)
        return r;
    if ((r = parse_dir(*dfd, real, p)))
        return r;
    if ((r = vmstate_read_config(&p->root, cfg, &c)) || (r = read_memory_section(&p->root, ms)))
        return r;
    if (ms->size != cfg->mem_size)
        return vmm_err(EINVAL, "snapshot memory is %llu bytes, its config says %llu",
                       (unsigned long long)ms->size, cfg->mem_size);
    return 0;
}

static int open_working_set(const char *path)
{
    char a[PATH_MAX], b[PATH_MAX];
    snprintf(a, sizeof(a), "%s", path);
    snprintf(b, sizeof(b), "%s", path);
    int dfd = open(dirname(a), O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return vmm_err(errno, "working set %s: %m", path);
    int fd = open_regular(dfd, basename(b), O_RDONLY | O_NONBLOCK, "working set");
    close(dfd);
    return fd;
}

static int restore_into(struct vmm *vm, const struct parsed *p, const struct vmm_restore_opts *o,
                        int dfd, const char *real)
{
    struct decoded_state *ds;
    struct dev_snap snap = {.dfd = dfd, .dir = real, .root = o->root};
    vm->dm.env.snap = &snap;
    int r = vmstate_decode(vm, &p->root, &ds);
    vm->dm.env.snap = NULL;
    if (r)
        return r;
    r = vmstate_apply(vm, ds);
    vmstate_free(ds);
    if (!r && o->backend == VMM_MEM_UFFD && o->working_set) {
        int fd = open_working_set(o->working_set);
        if (fd < 0)
            return fd;
        r = uffd_prefetch(vm, fd, o->working_set);
        close(fd);
    }
    return r;
}

int vmm_restore(const char *dir, const struct vmm_restore_opts *opts, struct vmm **out)
{
    struct vmm_restore_opts o = opts ? *opts : (struct vmm_restore_opts){.backend = VMM_MEM_MMAP};
    if (o.backend != VMM_MEM_MMAP && o.backend != VMM_MEM_UFFD)
        return vmm_err(EINVAL, "restore backend %d: use mmap (%d) or uffd (%d)", o.backend,
                       VMM_MEM_MMAP, VMM_MEM_UFFD);
    char *real = malloc(PATH_MAX);
    struct memory_section *ms = calloc(1, sizeof(*ms));
    struct mem_layer *layers = calloc(VMM_MAX_LAYERS, sizeof(*layers));
    struct parsed p = {0};
    struct vmm_config cfg = {0};
    struct vmm *vm = NULL;
    int dfd = -1, nlayers = 0, r;
    if (!real || !ms || !layers) {
        r = vmm_err(ENOMEM, "out of memory for a restore");
        goto out;
    }
    snprintf(real, PATH_MAX, "%s", dir);
    if ((r = read_top(o.root, dir, &dfd, real, &p, &cfg, ms)) ||
        (r = open_chain(o.root, dfd, real, ms, layers, &nlayers)))
        goto out;
    cfg.track_dirty = o.track_dirty;
    cfg.ndevices = o.ndevices;
    cfg.devices = o.devices;
    r = vm_build(&cfg, o.backend, layers, nlayers, &vm);
    nlayers = 0;   /* vm_build owns them, even when it fails */
    if (r || (r = restore_into(vm, &p, &o, dfd, real)))
        goto out;
    memcpy(vm->parent.id, ms->id, sizeof(ms->id));
    vm->parent.checksum = parsed_crc(&p);
    snprintf(vm->parent.path, sizeof(vm->parent.path), "%s", real);
    vm->has_parent = true;
    *out = vm;
    vm = NULL;
out:
    if (r)
        r = vmm_err_ctx(r, "restore from %s", real ? real : dir);
    if (layers)
        mem_layers_free(layers, nlayers);
    vmm_destroy(vm);
    if (dfd >= 0)
        close(dfd);
    free(p.buf);
    free(layers);
    free(ms);
    free(real);
    return r;
}

int vmm_snapshot_inspect(const char *dir, struct vmm_snapshot_info *info)
{
    char *real = malloc(PATH_MAX);
    struct memory_section *ms = calloc(1, sizeof(*ms));
    struct mem_layer *layers = calloc(VMM_MAX_LAYERS, sizeof(*layers));
    struct parsed p = {0};
    struct vmm_config cfg = {0};
    int dfd = -1, n = 0, r;
    if (!real || !ms || !layers) {
        r = vmm_err(ENOMEM, "out of memory");
        goto out;
    }
    if ((r = read_top(NULL, dir, &dfd, real, &p, &cfg, ms)))
        goto out;
    memset(info, 0, sizeof(*info));
    info->mem_size = ms->size;
    info->vcpus = cfg.vcpus;
    info->diff = (int)ms->diff;
    info->pages = ms->pages;
    memcpy(info->id, ms->id, sizeof(info->id));
    info->checksum = parsed_crc(&p);
    r = open_chain(NULL, dfd, real, ms, layers, &n);
    info->depth = n > 0 ? (unsigned)n - 1 : 0;
out:
    if (layers)
        mem_layers_free(layers, n);
    if (dfd >= 0)
        close(dfd);
    free(p.buf);
    free(layers);
    free(ms);
    free(real);
    return r;
}

int vmm_snapshot_release(const char *dir)
{
    int dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return vmm_err(errno, "snapshot directory %s: %m", dir);
    int fd = open_regular(dfd, "memory", O_RDONLY | O_NONBLOCK, dir), r = 0, flags = 0;
    close(dfd);
    if (fd == -ENOENT)
        return 0;
    if (fd < 0)
        return fd;
    if (ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0 && (flags & FS_IMMUTABLE_FL)) {
        flags &= ~FS_IMMUTABLE_FL;
        if (ioctl(fd, FS_IOC_SETFLAGS, &flags) < 0)
            r = vmm_err(errno, "clearing the immutable flag of %s/memory: %m", dir);
    }
    close(fd);
    return r;
}

/* ---------- state without memory: for inspection and round trips ---------- */

static int encode_state(struct vmm *vm, struct enc *file)
{
    struct enc body;
    enc_init(&body);
    int r = vmstate_encode(vm, &body, NULL, NULL);
    if (!r)
        r = vmstate_frame(&body, file);
    enc_free(&body);
    return r;
}

int vmm_state_size(struct vmm *vm, unsigned long long *size)
{
    int r = vm_op_begin(vm);
    if (r)
        return r;
    struct enc f;
    enc_init(&f);
    if (!(r = require_quiet(vm)) && !(r = encode_state(vm, &f)))
        *size = f.len;
    enc_free(&f);
    vm_op_end(vm);
    return r;
}

int vmm_state_get(struct vmm *vm, void *buf, unsigned long long len, unsigned long long *used)
{
    int r = vm_op_begin(vm);
    if (r)
        return r;
    struct enc f;
    enc_init(&f);
    if (!(r = require_quiet(vm)) && !(r = encode_state(vm, &f))) {
        if (f.len > len)
            r = vmm_err(ENOSPC, "vmstate needs %zu bytes, buffer has %llu", f.len, len);
        else {
            memcpy(buf, f.buf, f.len);
            *used = f.len;
        }
    }
    enc_free(&f);
    vm_op_end(vm);
    return r;
}

int vmm_state_set(struct vmm *vm, const void *buf, unsigned long long len)
{
    int r = vm_op_begin(vm);
    if (r)
        return r;
    struct dec_map root;
    struct decoded_state *ds = NULL;
    if ((r = require_quiet(vm)) || (r = vmstate_parse(buf, len, &root)) ||
        (r = vmstate_decode(vm, &root, &ds)))
        goto out;
    if ((r = vmstate_apply(vm, ds))) {
        char msg[VMM_ERR_LEN + 64];
        snprintf(msg, sizeof(msg), "loading state failed partway: %s", vmm_last_error());
        vm_fail(vm, msg);
        r = vmm_err(-r, "%s; the VM is now failed", msg);
    }
out:
    vmstate_free(ds);
    vm_op_end(vm);
    return r;
}
