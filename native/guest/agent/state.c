/* The agent's state lives in its run directory (default /run/vmmd, a tmpfs), not in memory:
 * each connection is served by its own process, and applications read the generation counter
 * from there. Small helpers for I/O and time live here too. */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int path_join(char *buf, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(buf, cap, "%s/%s", dir, name);
    return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

int write_atomic(const char *path, const void *data, size_t len, mode_t mode)
{
    char tmp[4200];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp%d", path, (int)getpid()) >= (int)sizeof(tmp))
        return -ENAMETOOLONG;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return -errno;
    int r = write_all(fd, data, len);
    if (close(fd) < 0 && r == 0)
        r = -errno;
    if (r == 0 && rename(tmp, path) < 0)
        r = -errno;
    if (r < 0)
        unlink(tmp);
    return r;
}

static int mkdirs(const char *path)
{
    char buf[4096];
    if (strlen(path) >= sizeof(buf))
        return -ENAMETOOLONG;
    strcpy(buf, path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0755) < 0 && errno != EEXIST)
                return -errno;
            *p = '/';
        }
    if (mkdir(buf, 0755) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

int state_init(const struct agent_cfg *cfg)
{
    char p[4096];
    int r = mkdirs(cfg->run_dir);
    if (r < 0)
        return r;
    const char *subs[] = {"exec", "hooks"};
    for (size_t i = 0; i < 2; i++) {
        if ((r = path_join(p, sizeof(p), cfg->run_dir, subs[i])) < 0)
            return r;
        if (mkdir(p, 0755) < 0 && errno != EEXIST)
            return -errno;
    }
    if ((r = path_join(p, sizeof(p), cfg->run_dir, "generation")) < 0)
        return r;
    if (access(p, F_OK) < 0)
        return write_atomic(p, "0\n", 2, 0644);
    return 0;
}

static int64_t read_generation(const char *path)
{
    char buf[32] = {0};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    return strtoll(buf, NULL, 10);
}

int64_t generation_get(const struct agent_cfg *cfg)
{
    char p[4096];
    if (path_join(p, sizeof(p), cfg->run_dir, "generation") < 0)
        return -ENAMETOOLONG;
    return read_generation(p);
}

int64_t generation_bump(const struct agent_cfg *cfg)
{
    char p[4096], lock[4096];
    if (path_join(p, sizeof(p), cfg->run_dir, "generation") < 0 ||
        path_join(lock, sizeof(lock), cfg->run_dir, "generation.lock") < 0)
        return -ENAMETOOLONG;
    int lfd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lfd < 0)
        return -errno;
    flock(lfd, LOCK_EX);
    int64_t g = read_generation(p);
    if (g < 0)
        g = 0;
    g++;
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%lld\n", (long long)g);
    int r = write_atomic(p, buf, (size_t)n, 0644);
    close(lfd);
    return r < 0 ? r : g;
}

static int exec_path(const struct agent_cfg *cfg, pid_t pid, char *buf, size_t cap)
{
    int n = snprintf(buf, cap, "%s/exec/%d", cfg->run_dir, (int)pid);
    return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

int exec_register(const struct agent_cfg *cfg, pid_t pid)
{
    char p[4096];
    int r = exec_path(cfg, pid, p, sizeof(p));
    if (r < 0)
        return r;
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    close(fd);
    return 0;
}

void exec_unregister(const struct agent_cfg *cfg, pid_t pid)
{
    char p[4096];
    if (exec_path(cfg, pid, p, sizeof(p)) == 0)
        unlink(p);
}

bool exec_registered(const struct agent_cfg *cfg, pid_t pid)
{
    char p[4096];
    return exec_path(cfg, pid, p, sizeof(p)) == 0 && access(p, F_OK) == 0;
}

int poll_one(int fd, short events, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = events};
    int r;
    do
        r = poll(&p, 1, timeout_ms);
    while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}

int write_all(int fd, const void *p, size_t n)
{
    const char *b = p;
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                int r = poll_one(fd, POLLOUT, -1);
                if (r < 0)
                    return r;
                continue;
            }
            return -errno;
        }
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
