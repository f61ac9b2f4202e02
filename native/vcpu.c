/* vcpu.c - one thread per vCPU: run, hand the exit to a bus, repeat; park on pause. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include "internal.h"
#include "arch.h"

/* A real-time signal nobody else uses; its handler does nothing, it only ends KVM_RUN. */
#define KICK_SIGNAL (SIGRTMIN + 6)
/* A string I/O instruction may need several exits to finish; more than this is a broken VM. */
#define MAX_COMPLETION_EXITS 4096

static void kick_handler(int sig) { (void)sig; }

static int install_kick_handler(void)
{
    struct sigaction old, sa = {0};
    if (sigaction(KICK_SIGNAL, NULL, &old) < 0)
        return vmm_err(errno, "sigaction: %m");
    if (old.sa_handler == kick_handler)
        return 0;
    if (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN)
        return vmm_err(EBUSY, "signal %d, used to kick vCPUs, already has a handler",
                       (int)KICK_SIGNAL);
    sa.sa_handler = kick_handler;
    sigemptyset(&sa.sa_mask);
    if (sigaction(KICK_SIGNAL, &sa, NULL) < 0)
        return vmm_err(errno, "sigaction: %m");
    return 0;
}

/* What a device asked of the vCPU loop. */
static enum exit_action bus_action(const struct bus_req *req, char *err, size_t errlen)
{
    switch (req->kind) {
    case BUS_REQ_GUEST_EXIT:
        return EXIT_GUEST_EXIT;
    case BUS_REQ_POWER_OFF:
        snprintf(err, errlen, "the guest powered off");
        return EXIT_SHUTDOWN;
    case BUS_REQ_RESET:
        snprintf(err, errlen, "the guest asked for a reset");
        return EXIT_RESET;
    default:
        return EXIT_CONTINUE;
    }
}

/*
 * The pure part of the loop: what one exit means. Everything it reads in kvm_run was written
 * by KVM on the guest's behalf, so offsets and counts are checked against the mapping.
 */
enum exit_action vcpu_handle_exit(struct kvm_run *run, size_t run_size, struct bus *pio,
                                  struct bus *mmio, int *unhandled, struct bus_req *req,
                                  char *err, size_t errlen)
{
    *unhandled = 0;
    req->kind = BUS_REQ_NONE;
    switch (run->exit_reason) {
    case KVM_EXIT_IO: {
        uint64_t size = run->io.size, count = run->io.count, off = run->io.data_offset;
        if ((size != 1 && size != 2 && size != 4) || off > run_size ||
            count * size > run_size - off) {
            snprintf(err, errlen, "bad PIO exit: port 0x%x size %llu count %llu offset %llu",
                     run->io.port, (unsigned long long)size, (unsigned long long)count,
                     (unsigned long long)off);
            return EXIT_ERROR;
        }
        uint8_t *data = (uint8_t *)run + off;
        bool w = run->io.direction == KVM_EXIT_IO_OUT;
        for (uint64_t i = 0; i < count; i++, data += size)
            if (!bus_dispatch(pio, run->io.port, data, (uint32_t)size, w, req)) {
                (*unhandled)++;
                if (!w)
                    memset(data, 0xff, size);  /* nothing there: the bus floats high */
            }
        return bus_action(req, err, errlen);
    }
    case KVM_EXIT_MMIO: {
        uint32_t len = run->mmio.len;
        if (len == 0 || len > sizeof(run->mmio.data)) {
            snprintf(err, errlen, "bad MMIO exit: length %u at 0x%llx", len,
                     (unsigned long long)run->mmio.phys_addr);
            return EXIT_ERROR;
        }
        if (!bus_dispatch(mmio, run->mmio.phys_addr, run->mmio.data, len, run->mmio.is_write,
                          req)) {
            (*unhandled)++;
            if (!run->mmio.is_write)
                memset(run->mmio.data, 0xff, len);
        }
        return bus_action(req, err, errlen);
    }
    case KVM_EXIT_INTR:
    case KVM_EXIT_IRQ_WINDOW_OPEN:
        return EXIT_CONTINUE;
    case KVM_EXIT_SHUTDOWN:
        snprintf(err, errlen, "the guest triple-faulted (a reset)");
        return EXIT_RESET;
    case KVM_EXIT_SYSTEM_EVENT:     /* PSCI on arm64: KVM has stopped every vCPU's run */
        switch (run->system_event.type) {
        case KVM_SYSTEM_EVENT_SHUTDOWN:
            snprintf(err, errlen, "the guest powered off (PSCI SYSTEM_OFF)");
            return EXIT_SHUTDOWN;
        case KVM_SYSTEM_EVENT_RESET:
            snprintf(err, errlen, "the guest asked for a reset (PSCI SYSTEM_RESET)");
            return EXIT_RESET;
        default:
            snprintf(err, errlen, "the guest reported system event %u (a crash)",
                     run->system_event.type);
            return EXIT_ERROR;
        }
    case KVM_EXIT_HLT:
        snprintf(err, errlen, "guest halted with interrupts it cannot take");
        return EXIT_STOP;
    case KVM_EXIT_FAIL_ENTRY:
        snprintf(err, errlen, "KVM_EXIT_FAIL_ENTRY: hardware reason 0x%llx",
                 (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
        return EXIT_ERROR;
    case KVM_EXIT_INTERNAL_ERROR:
        snprintf(err, errlen, "KVM_EXIT_INTERNAL_ERROR: suberror %u", run->internal.suberror);
        return EXIT_ERROR;
    default:
        snprintf(err, errlen, "unhandled KVM exit reason %u", run->exit_reason);
        return EXIT_ERROR;
    }
}

/* An abnormal end may really be lost guest memory; then that is the error to report. */
static void end_abnormally(struct vcpu *c, int reason, const char *what)
{
    char msg[600];
    if (mem_check_backing(&c->vm->mem)) {
        snprintf(msg, sizeof(msg), "vCPU %d: %s, because guest memory is gone: %s", c->id, what,
                 vmm_last_error());
        vm_end(c->vm, VMM_STOP_ERROR, 0, msg);
        return;
    }
    snprintf(msg, sizeof(msg), "%s%s", reason == VMM_STOP_ERROR ? "vCPU: " : "", what);
    vm_end(c->vm, reason, 0, msg);
}

/* Acts on one exit's verdict; true when the thread should end. */
static bool act(struct vcpu *c, enum exit_action a, const struct bus_req *req, const char *err)
{
    struct vmm *vm = c->vm;
    switch (a) {
    case EXIT_CONTINUE:
        return false;
    case EXIT_GUEST_EXIT:
        vm_end(vm, VMM_STOP_GUEST_EXIT, (long long)req->value, "guest exited");
        return true;
    case EXIT_SHUTDOWN:
        vm_end(vm, VMM_STOP_SHUTDOWN, 0, err);
        return true;
    case EXIT_RESET:      /* a triple fault may really be lost guest memory */
        end_abnormally(c, VMM_STOP_RESET, err);
        return true;
    case EXIT_STOP:
        end_abnormally(c, VMM_STOP_SHUTDOWN, err);
        return true;
    case EXIT_ERROR:
        end_abnormally(c, VMM_STOP_ERROR, err);
        return true;
    }
    return true;
}

static bool handle(struct vcpu *c)
{
    struct vmm *vm = c->vm;
    char err[256] = "";
    struct bus_req req;
    int unhandled;
    uint32_t why = c->run->exit_reason;
    if (why == KVM_EXIT_IO)
        atomic_fetch_add(&vm->st.exits_io, 1);
    else if (why == KVM_EXIT_MMIO)
        atomic_fetch_add(&vm->st.exits_mmio, 1);
    else
        atomic_fetch_add(&vm->st.exits_other, 1);
    enum exit_action a = vcpu_handle_exit(c->run, c->run_size, &vm->pio, &vm->mmio, &unhandled,
                                          &req, err, sizeof(err));
    if (unhandled)
        atomic_fetch_add(&vm->st.io_unhandled, (uint64_t)unhandled);
    /* KVM finishes an IN or an MMIO read (on arm64 and real hardware, writes too) only when
     * KVM_RUN is entered again: until then the guest's registers are mid-instruction. */
    c->io_pending = why == KVM_EXIT_IO || why == KVM_EXIT_MMIO;
    return act(c, a, &req, err);
}

/*
 * Completes the I/O instruction the last exit left half-done, without running the guest
 * (immediate_exit), so the registers a pause exposes are those after the instruction. A string
 * instruction may exit again for its next element; those exits are served too.
 */
static bool complete_pending_io(struct vcpu *c)
{
    if (!c->io_pending)
        return false;
    c->io_pending = false;
    atomic_fetch_add(&c->vm->st.io_completions, 1);
    for (int i = 0; i < MAX_COMPLETION_EXITS; i++) {
        c->run->immediate_exit = 1;
        int r = ioctl(c->fd, KVM_RUN, 0);
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) {
            c->run->immediate_exit = 0;
            return false;
        }
        if (r < 0) {
            char msg[300];
            snprintf(msg, sizeof(msg), "completing I/O on vCPU %d: KVM_RUN: %s", c->id,
                     strerror(errno));
            end_abnormally(c, VMM_STOP_ERROR, msg);
            return true;
        }
        if (handle(c))
            return true;
    }
    end_abnormally(c, VMM_STOP_ERROR, "an I/O instruction did not complete");
    return true;
}

/* Park while a pause is requested. Returns true when the thread should end. */
static bool park_if_requested(struct vcpu *c)
{
    struct vmm *vm = c->vm;
    if (!atomic_load(&vm->pause_req) && !atomic_load(&vm->stop_req))
        return false;
    if (!atomic_load(&vm->stop_req) && complete_pending_io(c))
        return true;
    pthread_mutex_lock(&vm->lock);
    while (atomic_load(&vm->pause_req) && !atomic_load(&vm->stop_req)) {
        if (!c->parked) {
            c->parked = true;
            vm->parked++;
            pthread_cond_broadcast(&vm->cond);
        }
        pthread_cond_wait(&vm->cond, &vm->lock);
    }
    if (c->parked) {
        c->parked = false;
        vm->parked--;
    }
    bool stop = atomic_load(&vm->stop_req);
    pthread_mutex_unlock(&vm->lock);
    if (!stop)
        arch_vcpu_resumed(vm, c);
    return stop;
}

static void *vcpu_thread(void *arg)
{
    struct vcpu *c = arg;
    struct vmm *vm = c->vm;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, KICK_SIGNAL);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);

    for (;;) {
        if (park_if_requested(c))
            break;
        int r = ioctl(c->fd, KVM_RUN, 0);
        atomic_fetch_add(&vm->st.exits_total, 1);
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                /* reset before the next request check, so a kick never goes unseen; an
                 * interrupted run entered KVM, so any earlier I/O is complete */
                c->run->immediate_exit = 0;
                c->io_pending = false;
                atomic_fetch_add(&vm->st.exits_intr, 1);
                continue;
            }
            char err[300];
            snprintf(err, sizeof(err), "KVM_RUN on vCPU %d: %s", c->id, strerror(errno));
            end_abnormally(c, VMM_STOP_ERROR, err);
            break;
        }
        if (handle(c))
            break;
    }
    pthread_mutex_lock(&vm->lock);
    vm->live_threads--;
    pthread_cond_broadcast(&vm->cond);
    pthread_mutex_unlock(&vm->lock);
    return NULL;
}

int vcpus_start(struct vmm *vm)
{
    int r = install_kick_handler();
    if (r)
        return r;
    /* vCPU threads take only the kick signal; the caller's signals stay with the caller */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (unsigned i = 0; i < vm->cfg.vcpus; i++) {
        struct vcpu *c = &vm->vcpus[i];
        pthread_mutex_lock(&vm->lock);   /* a kick must not see a half-created thread */
        vm->live_threads++;
        int e = pthread_create(&c->thread, NULL, vcpu_thread, c);
        if (e)
            vm->live_threads--;
        else
            c->thread_started = true;
        pthread_mutex_unlock(&vm->lock);
        if (e) {
            r = vmm_err(e, "starting the thread of vCPU %u: %s", i, strerror(e));
            break;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return r;
}

/* Under the lock: a thread leaves the kick list before it is joined, never after. */
void vcpus_kick(struct vmm *vm)
{
    pthread_mutex_lock(&vm->lock);
    for (unsigned i = 0; i < vm->cfg.vcpus; i++) {
        struct vcpu *c = &vm->vcpus[i];
        if (!c->thread_started)
            continue;
        c->run->immediate_exit = 1;
        pthread_kill(c->thread, KICK_SIGNAL);
    }
    pthread_mutex_unlock(&vm->lock);
}

bool vcpus_wait_exit(struct vmm *vm, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&vm->lock);
    while (vm->live_threads > 0)
        if (pthread_cond_timedwait(&vm->cond, &vm->lock, &ts) == ETIMEDOUT)
            break;
    bool done = vm->live_threads == 0;
    pthread_mutex_unlock(&vm->lock);
    return done;
}

/* Callers have set stop_req first, so a thread no longer kicked still leaves its loop. */
void vcpus_join(struct vmm *vm)
{
    for (unsigned i = 0; i < vm->cfg.vcpus; i++) {
        struct vcpu *c = &vm->vcpus[i];
        pthread_mutex_lock(&vm->lock);
        bool join = c->thread_started && !pthread_equal(c->thread, pthread_self());
        if (join)
            c->thread_started = false;
        pthread_mutex_unlock(&vm->lock);
        if (join)
            pthread_join(c->thread, NULL);
    }
}
