/*
 * eventloop.c - one thread per VM serving device work: ioeventfds, host sockets, timers, block
 * completions. Handlers run only on this thread. Pause quiesces it: evl_quiesce returns once the
 * thread sits outside every handler and will enter none until evl_resume, so device state read
 * after a pause is not changing underneath.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include "internal.h"

#define EVL_MAX_HANDLERS 64
#define EVL_BATCH 32

struct evl_handler {
    int fd;
    ev_fn fn;
    void *ctx;
    bool used;
};

struct eventloop {
    int epfd, ctl;                /* ctl: eventfd that wakes the thread for quiesce and stop */
    pthread_t thread;
    bool started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool quiesce_req, quiesced, stop;   /* under lock */
    struct evl_handler h[EVL_MAX_HANDLERS];
    _Atomic uint64_t dispatched;
};

int evl_create(struct eventloop **out)
{
    struct eventloop *l = calloc(1, sizeof(*l));
    if (!l)
        return vmm_err(ENOMEM, "out of memory for the event loop");
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->ctl = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    pthread_mutex_init(&l->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l->cond, &ca);
    pthread_condattr_destroy(&ca);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
    if (l->epfd < 0 || l->ctl < 0 || epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->ctl, &ev) < 0) {
        int e = errno;
        evl_destroy(l);
        return vmm_err(e, "creating the event loop: %s", strerror(e));
    }
    *out = l;
    return 0;
}

int evl_add(struct eventloop *l, int fd, uint32_t events, ev_fn fn, void *ctx)
{
    pthread_mutex_lock(&l->lock);
    int slot = -1;
    for (int i = 0; i < EVL_MAX_HANDLERS && slot < 0; i++)
        if (!l->h[i].used)
            slot = i;
    int r = 0;
    if (slot < 0)
        r = vmm_err(ENOSPC, "event loop is full (%d handlers)", EVL_MAX_HANDLERS);
    else {
        l->h[slot] = (struct evl_handler){.fd = fd, .fn = fn, .ctx = ctx, .used = true};
        struct epoll_event ev = {.events = events, .data.u64 = (uint64_t)slot};
        if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            r = vmm_err(errno, "epoll_ctl add fd %d: %m", fd);
            l->h[slot].used = false;
        }
    }
    pthread_mutex_unlock(&l->lock);
    return r;
}

/* Only while the loop is quiesced or not started, or from a handler: never under a handler. */
int evl_del(struct eventloop *l, int fd)
{
    pthread_mutex_lock(&l->lock);
    int r = vmm_err(ENOENT, "fd %d is not in the event loop", fd);
    for (int i = 0; i < EVL_MAX_HANDLERS; i++)
        if (l->h[i].used && l->h[i].fd == fd) {
            epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
            l->h[i].used = false;
            r = 0;
        }
    pthread_mutex_unlock(&l->lock);
    return r;
}

/* Parks while a quiesce is asked for; true when the thread should end. */
static bool park(struct eventloop *l)
{
    pthread_mutex_lock(&l->lock);
    while (l->quiesce_req && !l->stop) {
        if (!l->quiesced) {
            l->quiesced = true;
            pthread_cond_broadcast(&l->cond);
        }
        pthread_cond_wait(&l->cond, &l->lock);
    }
    l->quiesced = false;
    bool stop = l->stop;
    pthread_mutex_unlock(&l->lock);
    return stop;
}

static void dispatch(struct eventloop *l, struct epoll_event *ev, int n)
{
    for (int i = 0; i < n; i++) {
        uint64_t slot = ev[i].data.u64;
        if (slot == UINT64_MAX)
            continue;   /* ctl: drained before the requests are read */
        pthread_mutex_lock(&l->lock);
        struct evl_handler h = slot < EVL_MAX_HANDLERS ? l->h[slot] : (struct evl_handler){0};
        pthread_mutex_unlock(&l->lock);
        if (h.used) {
            h.fn(h.ctx, ev[i].events);
            atomic_fetch_add(&l->dispatched, 1);
        }
    }
}

static void *loop_thread(void *arg)
{
    struct eventloop *l = arg;
    struct epoll_event ev[EVL_BATCH];
    for (;;) {
        int n = epoll_wait(l->epfd, ev, EVL_BATCH, -1);
        if (n < 0 && errno != EINTR)
            break;
        /* drain the wake-ups, then read the requests: a wake-up after the drain stays pending
         * and brings us back, so no request is lost between the two */
        uint64_t v;
        while (read(l->ctl, &v, sizeof(v)) == sizeof(v))
            ;
        pthread_mutex_lock(&l->lock);
        bool quiesce = l->quiesce_req, stop = l->stop;
        pthread_mutex_unlock(&l->lock);
        if (stop)
            break;
        if (n > 0)
            dispatch(l, ev, n);
        if (quiesce) {
            /* one more pass over what is ready now, bounded: a busy socket cannot hold it */
            n = epoll_wait(l->epfd, ev, EVL_BATCH, 0);
            if (n > 0)
                dispatch(l, ev, n);
            if (park(l))
                break;
        }
    }
    return NULL;
}

int evl_start(struct eventloop *l)
{
    if (l->started)
        return 0;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int e = pthread_create(&l->thread, NULL, loop_thread, l);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e)
        return vmm_err(e, "starting the event loop thread: %s", strerror(e));
    l->started = true;
    return 0;
}

static void wake(struct eventloop *l)
{
    uint64_t one = 1;
    if (write(l->ctl, &one, sizeof(one)) < 0) {
        /* the counter is saturated: the thread is awake already */
    }
}

int evl_quiesce(struct eventloop *l, int timeout_ms)
{
    if (!l->started)
        return 0;
    struct timespec ts;
    deadline_in(&ts, timeout_ms);
    pthread_mutex_lock(&l->lock);
    l->quiesce_req = true;
    pthread_mutex_unlock(&l->lock);
    wake(l);
    int r = 0;
    pthread_mutex_lock(&l->lock);
    while (!l->quiesced && !l->stop)
        if (pthread_cond_timedwait(&l->cond, &l->lock, &ts) == ETIMEDOUT) {
            r = vmm_err(ETIMEDOUT, "device event loop did not come to rest within %d ms (a "
                        "device handler is blocked)", timeout_ms);
            l->quiesce_req = false;
            pthread_cond_broadcast(&l->cond);
            break;
        }
    pthread_mutex_unlock(&l->lock);
    return r;
}

void evl_resume(struct eventloop *l)
{
    pthread_mutex_lock(&l->lock);
    l->quiesce_req = false;
    pthread_cond_broadcast(&l->cond);
    pthread_mutex_unlock(&l->lock);
}

uint64_t evl_dispatched(struct eventloop *l) { return atomic_load(&l->dispatched); }

void evl_destroy(struct eventloop *l)
{
    if (!l)
        return;
    if (l->started) {
        pthread_mutex_lock(&l->lock);
        l->stop = true;
        pthread_cond_broadcast(&l->cond);
        pthread_mutex_unlock(&l->lock);
        wake(l);
        pthread_join(l->thread, NULL);
    }
    if (l->epfd >= 0)
        close(l->epfd);
    if (l->ctl >= 0)
        close(l->ctl);
    pthread_mutex_destroy(&l->lock);
    pthread_cond_destroy(&l->cond);
    free(l);
}

int ioevent_register(int vm_fd, int efd, uint64_t addr, uint32_t len, bool pio)
{
    struct kvm_ioeventfd io = {.addr = addr, .len = len, .fd = efd,
                               .flags = pio ? KVM_IOEVENTFD_FLAG_PIO : 0};
    if (ioctl(vm_fd, KVM_IOEVENTFD, &io) < 0)
        return vmm_err(errno, "KVM_IOEVENTFD at 0x%llx: %m", (unsigned long long)addr);
    return 0;
}

int ioevent_unregister(int vm_fd, int efd, uint64_t addr, uint32_t len, bool pio)
{
    struct kvm_ioeventfd io = {.addr = addr, .len = len, .fd = efd,
                               .flags = KVM_IOEVENTFD_FLAG_DEASSIGN |
                                        (pio ? KVM_IOEVENTFD_FLAG_PIO : 0)};
    if (ioctl(vm_fd, KVM_IOEVENTFD, &io) < 0)
        return vmm_err(errno, "KVM_IOEVENTFD deassign at 0x%llx: %m", (unsigned long long)addr);
    return 0;
}
