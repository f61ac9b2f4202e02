/* fork + exec with the requested stdio, credentials, directory and environment. The child
 * reports a failure before exec (which step, errno) over a close-on-exec pipe, so the host gets
 * "chdir /x: No such file or directory" rather than a bare exit status 127. */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

enum stage { ST_SETUP = 1, ST_TTY, ST_CREDS, ST_CHDIR, ST_EXEC };
static const char *const stage_name[] = {
    [ST_SETUP] = "setting up stdio", [ST_TTY] = "taking the terminal",
    [ST_CREDS] = "switching user", [ST_CHDIR] = "chdir", [ST_EXEC] = "exec",
};

struct report {
    int stage, err;
};

static void envset(char ***env, size_t *n, const char *kv)
{
    size_t klen = strcspn(kv, "=");
    for (size_t i = 0; i < *n; i++)
        if (strncmp((*env)[i], kv, klen) == 0 && (*env)[i][klen] == '=') {
            free((*env)[i]);
            (*env)[i] = strdup(kv);
            return;
        }
    char **grown = realloc(*env, (*n + 2) * sizeof(char *));
    if (!grown)
        return;
    *env = grown;
    (*env)[(*n)++] = strdup(kv);
    (*env)[*n] = NULL;
}

char **spawn_env(const struct user *u, char **overrides, bool tty)
{
    char **env = calloc(1, sizeof(char *));
    size_t n = 0;
    char buf[600];
    if (!env)
        return NULL;
    envset(&env, &n, "PATH=" DEFAULT_PATH);
    snprintf(buf, sizeof(buf), "HOME=%s", u ? u->home : "/root");
    envset(&env, &n, buf);
    snprintf(buf, sizeof(buf), "USER=%s", u ? u->name : "root");
    envset(&env, &n, buf);
    snprintf(buf, sizeof(buf), "LOGNAME=%s", u ? u->name : "root");
    envset(&env, &n, buf);
    if (tty)
        envset(&env, &n, "TERM=xterm-256color");
    for (char **o = overrides; o && *o; o++)
        envset(&env, &n, *o);
    for (size_t i = 0; i < n; i++)
        if (!env[i]) {          /* a strdup failed */
            strv_free(env);
            return NULL;
        }
    return env;
}

static void fail(int fd, int stage)
{
    struct report r = {stage, errno};
    (void)!write(fd, &r, sizeof(r));
    _exit(127);
}

/* execve(argv[0]) searching the PATH of the new environment, not the agent's */
static void exec_path(char **argv, char **envp)
{
    const char *file = argv[0];
    if (strchr(file, '/')) {
        execve(file, argv, envp);
        return;
    }
    const char *path = DEFAULT_PATH;
    for (char **e = envp; *e; e++)
        if (strncmp(*e, "PATH=", 5) == 0)
            path = *e + 5;
    int saved = ENOENT;
    char full[PATH_MAX];
    for (const char *p = path;; p++) {
        const char *end = strchrnul(p, ':');
        size_t dlen = (size_t)(end - p);
        if (dlen + 1 + strlen(file) < sizeof(full)) {
            memcpy(full, p, dlen);
            snprintf(full + dlen, sizeof(full) - dlen, "%s%s", dlen ? "/" : "./", file);
            execve(full, argv, envp);
            if (errno != ENOENT && errno != ENOTDIR)
                saved = errno;
        }
        if (!*end)
            break;
        p = end;
    }
    errno = saved;
}

static void child(const struct spawn *s, int report_fd, pid_t parent)
{
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    for (int sig = 1; sig < NSIG; sig++)
        signal(sig, SIG_DFL);           /* the agent ignores SIGPIPE: do not pass that on */
    if (setsid() < 0)
        fail(report_fd, ST_SETUP);
    if (s->ctty >= 0 && ioctl(s->ctty, TIOCSCTTY, 0) < 0)
        fail(report_fd, ST_TTY);
    int fds[3] = {s->fd0, s->fd1, s->fd2};
    for (int i = 0; i < 3; i++) {       /* dup2 clears close-on-exec on the copy */
        if (fds[i] == i) {
            if (fcntl(i, F_SETFD, 0) < 0)
                fail(report_fd, ST_SETUP);
        } else if (dup2(fds[i], i) < 0) {
            fail(report_fd, ST_SETUP);
        }
    }
    close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);   /* the report pipe goes at exec too */
    if (s->user) {
        if (setgroups((size_t)s->user->ngroups, s->user->groups) < 0 ||
            setgid(s->user->gid) < 0 || setuid(s->user->uid) < 0)
            fail(report_fd, ST_CREDS);
    }
    /* the handler that serves this process's connection kills it when the host goes away;
     * this covers the handler itself dying (set after setuid, which clears it) */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);
    const char *dir = s->cwd ? s->cwd : s->user ? s->user->home : "/";
    if (chdir(dir) < 0) {
        if (s->cwd)
            fail(report_fd, ST_CHDIR);
        if (chdir("/") < 0)
            fail(report_fd, ST_CHDIR);
    }
    exec_path(s->argv, s->envp);
    fail(report_fd, ST_EXEC);
}

int spawn(const struct spawn *s, pid_t *pid, char *err, size_t cap)
{
    int rp[2];
    if (pipe2(rp, O_CLOEXEC) < 0) {
        snprintf(err, cap, "pipe: %s", strerror(errno));
        return -errno;
    }
    pid_t parent = getpid();
    pid_t p = fork();
    if (p < 0) {
        int e = errno;
        close(rp[0]);
        close(rp[1]);
        snprintf(err, cap, "fork: %s", strerror(e));
        return -e;
    }
    if (p == 0) {
        close(rp[0]);
        child(s, rp[1], parent);
    }
    close(rp[1]);
    struct report r;
    ssize_t n;
    do
        n = read(rp[0], &r, sizeof(r));
    while (n < 0 && errno == EINTR);
    close(rp[0]);
    if (n == 0) {                       /* closed by a successful exec */
        *pid = p;
        return 0;
    }
    waitpid(p, NULL, 0);
    if (n != sizeof(r) || r.stage < ST_SETUP || r.stage > ST_EXEC) {
        snprintf(err, cap, "the child died before exec");
        return -ECHILD;
    }
    const char *what = r.stage == ST_CHDIR ? (s->cwd ? s->cwd : "") :
                       r.stage == ST_EXEC ? s->argv[0] : s->user ? s->user->name : "";
    snprintf(err, cap, "%s %s: %s", stage_name[r.stage], what, strerror(r.err));
    return -r.err;
}
