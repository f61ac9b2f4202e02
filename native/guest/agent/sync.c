/* sync: what a guest needs after it was restored from a snapshot, since every copy resumes
 * with the snapshot's clock and the snapshot's RNG state. Sets CLOCK_REALTIME from the host's
 * time, mixes host entropy into the kernel pool with RNDADDENTROPY (credited) and forces a
 * reseed of the CRNG (RNDRESEEDCRNG), then bumps the generation counter in
 * <run>/generation, which applications read to learn that they were cloned or restored.
 * With "reset_tcp", the guest's TCP connections through its NIC are ended too (tcpreset.c). */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/random.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define ENTROPY_MAX 4096
#define TIME_MIN_NS (946684800LL * 1000000000LL)    /* 2000-01-01: anything earlier is a bug */

#ifndef RNDRESEEDCRNG
#define RNDRESEEDCRNG _IO('R', 0x07)
#endif

int op_sync(struct conn *c, const struct msg *m)
{
    int64_t t_ns = 0;
    const char *ent;
    uint32_t ent_len = 0;
    bool reset_tcp = false;
    int has_time = req_int(c, m->root, "time_ns", &t_ns, TIME_MIN_NS, INT64_MAX, false);
    if (has_time < 0 || req_bin(c, m->root, "entropy", &ent, &ent_len, ENTROPY_MAX, false) < 0 ||
        req_bool(c, m->root, "reset_tcp", &reset_tcp) < 0)
        return conn_fail(c, EINVAL, NULL);
    if (has_time == 0) {
        struct timespec ts = {.tv_sec = t_ns / 1000000000, .tv_nsec = t_ns % 1000000000};
        if (clock_settime(CLOCK_REALTIME, &ts) < 0)
            return conn_fail(c, errno, "clock_settime: %s", strerror(errno));
    }
    bool reseeded = false;
    if (ent_len) {
        int fd = open("/dev/urandom", O_RDWR | O_CLOEXEC);
        if (fd < 0)
            return conn_fail(c, errno, "open /dev/urandom: %s", strerror(errno));
        struct rand_pool_info *info = calloc(1, sizeof(*info) + ENTROPY_MAX);
        if (!info) {
            close(fd);
            return conn_fail(c, ENOMEM, "out of memory");
        }
        info->entropy_count = (int)ent_len * 8;
        info->buf_size = (int)ent_len;
        memcpy(info->buf, ent, ent_len);
        int r = ioctl(fd, RNDADDENTROPY, info);
        int e = errno;
        free(info);
        if (r < 0) {
            close(fd);
            return conn_fail(c, e, "RNDADDENTROPY: %s", strerror(e));
        }
        reseeded = ioctl(fd, RNDRESEEDCRNG) == 0;
        close(fd);
    }
    int tcp_reset = 0;
    if (reset_tcp) {
        char err[160];
        if ((tcp_reset = tcp_reset_all(err, sizeof(err))) < 0)
            return conn_fail(c, -tcp_reset, "%s", err);
    }
    int64_t g = generation_bump(c->cfg);
    if (g < 0)
        return conn_fail(c, (int)-g, "bumping the generation: %s", strerror((int)-g));
    msgpack_packer *pk = conn_begin(c);
    msgpack_pack_map(pk, 6);
    pk_kv_str(pk, "t", "ok");
    pk_kv_int(pk, "generation", g);
    pk_kv_bool(pk, "clock_set", has_time == 0);
    pk_kv_int(pk, "entropy_bytes", ent_len);
    pk_kv_bool(pk, "reseeded", reseeded);
    pk_kv_int(pk, "tcp_reset", tcp_reset);
    conn_end(c);
    return conn_flush_wait(c, 10000) < 0 ? -1 : 0;
}
