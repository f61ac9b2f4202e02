/*
 * aarch64 vCPU state: every register KVM_GET_REG_LIST names (core and FP/SIMD, the firmware
 * pseudo-registers, the timer, the system registers), saved as (id, value) pairs whose sizes
 * the ids carry, plus mp_state and the vCPU events. Decode checks every id against this host's
 * list and every value's size against its id (no KVM call); apply writes in KVM's order with
 * the timer last: counter, comparator, then control, so an enabled timer never meets a stale
 * counter or comparator.
 *
 * The guest's counters stand still while the VM does not run: pause reads them, resume and
 * start write them back (KVM_REG_ARM_TIMER_CNT sets the whole VM's virtual offset), so neither
 * a pause nor a snapshot/restore makes the guest's clock jump (docs/arm64.md).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include "arm.h"

#define MAX_REGS 4096             /* KVM lists ~300 today: anything near this is not a vCPU */
#define MAX_REG_BYTES 256         /* KVM_REG_SIZE_U2048, SVE's Z registers */
#define TIMER_CTL_ISTATUS 4u      /* derived from the counter by KVM, ignored on write */

/* ---------- host capabilities: probed once per process ---------- */

/* The one piece of process-wide state: facts about the machine, written once under
 * pthread_once and read-only after; several VMs in one process share them safely. */
static pthread_once_t caps_once = PTHREAD_ONCE_INIT;
static struct arm_caps caps;
static int caps_err;
static char caps_msg[VMM_ERR_LEN];

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static uint32_t reg_size(uint64_t id)
{
    return 1u << ((id & KVM_REG_SIZE_MASK) >> KVM_REG_SIZE_SHIFT);
}

static bool is_core(uint64_t id)
{
    return (id & KVM_REG_ARM_COPROC_MASK) == KVM_REG_ARM_CORE;
}

/* Restore order: everything else in KVM's order, then counters, comparators, controls. */
static int timer_rank(uint64_t id)
{
    switch (id) {
    case KVM_REG_ARM_TIMER_CNT: case KVM_REG_ARM_PTIMER_CNT: return 1;
    case KVM_REG_ARM_TIMER_CVAL: case KVM_REG_ARM_PTIMER_CVAL: return 2;
    case KVM_REG_ARM_TIMER_CTL: case KVM_REG_ARM_PTIMER_CTL: return 3;
    default: return 0;
    }
}

static int reg_list(int vcpu, uint64_t **out, uint32_t *count)
{
    struct kvm_reg_list probe = {.n = 0};
    if (ioctl(vcpu, KVM_GET_REG_LIST, &probe) == 0 || errno != E2BIG)
        return vmm_err(errno ? errno : EIO, "KVM_GET_REG_LIST did not report its size");
    if (probe.n > MAX_REGS)
        return vmm_err(E2BIG, "KVM lists %llu vCPU registers, more than %d",
                       (unsigned long long)probe.n, MAX_REGS);
    struct kvm_reg_list *l = calloc(1, sizeof(*l) + probe.n * sizeof(uint64_t));
    if (!l)
        return vmm_err(ENOMEM, "out of memory for the register list");
    l->n = probe.n;
    if (ioctl(vcpu, KVM_GET_REG_LIST, l) < 0) {
        int e = errno;
        free(l);
        return vmm_err(e, "KVM_GET_REG_LIST: %s", strerror(e));
    }
    uint64_t *ids = malloc((l->n ? l->n : 1) * sizeof(uint64_t));
    if (!ids) {
        free(l);
        return vmm_err(ENOMEM, "out of memory for the register list");
    }
    memcpy(ids, l->reg, l->n * sizeof(uint64_t));
    *count = (uint32_t)l->n;
    *out = ids;
    free(l);
    return 0;
}

/* A throwaway VM with one vCPU initialized like ours: its register list is every vCPU's. */
static int probe(void)
{
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC), vmfd = -1, vcpu = -1, r;
    if (kvm < 0)
        return vmm_err(errno, "open /dev/kvm: %m");
    struct kvm_vcpu_init init;
    if ((vmfd = ioctl(kvm, KVM_CREATE_VM, 0)) < 0 || (vcpu = ioctl(vmfd, KVM_CREATE_VCPU, 0)) < 0) {
        r = vmm_err(errno, "a VM to probe the register list with: %m");
        goto out;
    }
    if ((r = arm_vcpu_target(vmfd, &init)))
        goto out;
    if (ioctl(vcpu, KVM_ARM_VCPU_INIT, &init) < 0) {
        r = vmm_err(errno, "KVM_ARM_VCPU_INIT while probing: %m");
        goto out;
    }
    if ((r = reg_list(vcpu, &caps.regs, &caps.nregs)))
        goto out;
    if (!(caps.sorted = malloc((caps.nregs ? caps.nregs : 1) * sizeof(uint64_t)))) {
        r = vmm_err(ENOMEM, "out of memory for the register list");
        goto out;
    }
    memcpy(caps.sorted, caps.regs, caps.nregs * sizeof(uint64_t));
    qsort(caps.sorted, caps.nregs, sizeof(uint64_t), cmp_u64);
    for (uint32_t i = 0; i < caps.nregs; i++)
        if (timer_rank(caps.regs[i]) == 1 && caps.ncounters < ARM_MAX_COUNTERS)
            caps.counters[caps.ncounters++] = caps.regs[i];
    for (uint32_t i = 0; i < caps.nregs; i++)
        if (reg_size(caps.regs[i]) > MAX_REG_BYTES) {
            r = vmm_err(E2BIG, "KVM lists register 0x%llx of %u bytes, more than %d",
                        (unsigned long long)caps.regs[i], reg_size(caps.regs[i]), MAX_REG_BYTES);
            goto out;
        }
out:
    if (vcpu >= 0)
        close(vcpu);
    if (vmfd >= 0)
        close(vmfd);
    close(kvm);
    return r;
}

static void probe_once(void)
{
    caps_err = probe();
    if (caps_err)
        snprintf(caps_msg, sizeof(caps_msg), "%s", vmm_last_error());
}

const struct arm_caps *arm_caps(void)
{
    pthread_once(&caps_once, probe_once);
    if (caps_err) {
        vmm_err(-caps_err, "probing the host's KVM: %s", caps_msg);
        return NULL;
    }
    return &caps;
}

int arch_host_probe(void)
{
    return arm_caps() ? 0 : -EIO;
}

/* Where `id` is in the host's list (sorted), or -1. */
static long host_index(const struct arm_caps *hc, uint64_t id)
{
    const uint64_t *p = bsearch(&id, hc->sorted, hc->nregs, sizeof(uint64_t), cmp_u64);
    return p ? p - hc->sorted : -1;
}

static int counter_index(const struct arm_caps *hc, uint64_t id)
{
    for (int k = 0; k < hc->ncounters; k++)
        if (hc->counters[k] == id)
            return k;
    return -1;
}

#define FIELD(id, f) ((unsigned)(((id) & KVM_REG_ARM64_SYSREG_##f##_MASK) >> \
                                    KVM_REG_ARM64_SYSREG_##f##_SHIFT))

static const char *timer_name(uint64_t id)
{
    switch (id) {
    case KVM_REG_ARM_TIMER_CNT: return "CNTVCT";
    case KVM_REG_ARM_TIMER_CVAL: return "CNTV_CVAL";
    case KVM_REG_ARM_TIMER_CTL: return "CNTV_CTL";
    case KVM_REG_ARM_PTIMER_CNT: return "CNTPCT";
    case KVM_REG_ARM_PTIMER_CVAL: return "CNTP_CVAL";
    default: return "CNTP_CTL";
    }
}

/* A register's name for messages: what kind it is and where. */
static const char *reg_name(uint64_t id, char *buf, size_t len)
{
    uint64_t kind = id & KVM_REG_ARM_COPROC_MASK;
    if (timer_rank(id))
        snprintf(buf, len, "timer register %s", timer_name(id));
    else if (kind == KVM_REG_ARM_CORE)
        snprintf(buf, len, "core register at offset %llu",
                 (unsigned long long)(id & 0xffff) * 4);
    else if (kind == KVM_REG_ARM64_SYSREG)
        snprintf(buf, len, "system register S%u_%u_C%u_C%u_%u", FIELD(id, OP0), FIELD(id, OP1),
                 FIELD(id, CRN), FIELD(id, CRM), FIELD(id, OP2));
    else if (kind == KVM_REG_ARM_FW || kind == KVM_REG_ARM_FW_FEAT_BMAP)
        snprintf(buf, len, "firmware register %llu%s", (unsigned long long)(id & 0xffff),
                 kind == KVM_REG_ARM_FW_FEAT_BMAP ? " (feature bitmap)" : "");
    else if (kind == KVM_REG_ARM_DEMUX)
        snprintf(buf, len, "cache size register %llu", (unsigned long long)(id & 0xff));
    else if (kind == KVM_REG_ARM64_SVE)
        snprintf(buf, len, "SVE register");
    else
        snprintf(buf, len, "register");
    return buf;
}

static int get_reg(int fd, uint64_t id, void *val)
{
    struct kvm_one_reg reg = {.id = id, .addr = (uint64_t)(uintptr_t)val};
    return ioctl(fd, KVM_GET_ONE_REG, &reg) < 0 ? -errno : 0;
}

static int set_reg(int fd, uint64_t id, const void *val)
{
    struct kvm_one_reg reg = {.id = id, .addr = (uint64_t)(uintptr_t)val};
    return ioctl(fd, KVM_SET_ONE_REG, &reg) < 0 ? -errno : 0;
}

/* ---------- the counters: still while the VM does not run ---------- */

/* Every vCPU is parked (a pause completed): remember where the guest's counters are. */
int arch_vm_paused(struct vmm *vm)
{
    struct arm_vm *a = arm(vm);
    const struct arm_caps *hc = arm_caps();
    if (!hc)
        return -EIO;
    if (a->frozen)
        return 0;
    for (int k = 0; k < hc->ncounters; k++) {
        int r = get_reg(vm->vcpus[0].fd, hc->counters[k], &a->counter[k]);
        if (r) {
            char n[96];
            return vmm_err(-r, "reading the guest's %s at pause: %s",
                           reg_name(hc->counters[k], n, sizeof(n)), strerror(-r));
        }
    }
    a->frozen = true;
    return 0;
}

/* Before any vCPU runs again (resume or start): the counters continue from where they stood.
 * One write sets the offset of the whole VM (KVM keeps one virtual offset per VM). */
int arch_vm_resume(struct vmm *vm)
{
    struct arm_vm *a = arm(vm);
    const struct arm_caps *hc = arm_caps();
    if (!hc)
        return -EIO;
    if (!a->frozen)
        return 0;
    for (int k = 0; k < hc->ncounters; k++) {
        int r = set_reg(vm->vcpus[0].fd, hc->counters[k], &a->counter[k]);
        if (r) {
            char n[96];
            return vmm_err(-r, "setting the guest's %s to resume from: %s",
                           reg_name(hc->counters[k], n, sizeof(n)), strerror(-r));
        }
    }
    a->frozen = false;
    return 0;
}

/* ---------- vCPU state ---------- */

struct arch_vcpu_state {
    uint32_t n;
    uint64_t *ids;            /* in the snapshot's (its KVM's) order */
    uint32_t *offs;           /* where each value starts in vals; its size is its id's */
    uint8_t *vals;
    struct kvm_mp_state mp;
    struct kvm_vcpu_events events;
};

void arch_vcpu_state_free(struct arch_vcpu_state *s)
{
    if (!s)
        return;
    free(s->ids);
    free(s->offs);
    free(s->vals);
    free(s);
}

int arch_vcpu_save(struct vmm *vm, struct vcpu *c, struct enc *e)
{
    const struct arm_caps *hc = arm_caps();
    if (!hc)
        return -EIO;
    const struct arm_vm *a = arm(vm);
    struct kvm_mp_state mp;
    struct kvm_vcpu_events ev;
    memset(&ev, 0, sizeof(ev));
    if (ioctl(c->fd, KVM_GET_MP_STATE, &mp) < 0)
        return vmm_err(errno, "KVM_GET_MP_STATE on vCPU %d: %m", c->id);
    if (ioctl(c->fd, KVM_GET_VCPU_EVENTS, &ev) < 0)
        return vmm_err(errno, "KVM_GET_VCPU_EVENTS on vCPU %d: %m", c->id);
    enc_map(e, 4);
    enc_kv_uint(e, "v", ARCH_VCPU_STATE_VERSION);
    enc_str(e, "regs");
    enc_array(e, hc->nregs);
    for (uint32_t i = 0; i < hc->nregs; i++) {
        uint64_t id = hc->regs[i];
        uint8_t val[MAX_REG_BYTES] __attribute__((aligned(16)));
        int k = counter_index(hc, id), r;
        if (k >= 0 && a->frozen)
            memcpy(val, &a->counter[k], sizeof(uint64_t));   /* where the guest stopped */
        else if ((r = get_reg(c->fd, id, val))) {
            char n[96];
            return vmm_err(-r, "KVM_GET_ONE_REG of %s (0x%llx) on vCPU %d: %s",
                           reg_name(id, n, sizeof(n)), (unsigned long long)id, c->id, strerror(-r));
        }
        if (timer_rank(id) == 3)
            val[0] &= (uint8_t)~TIMER_CTL_ISTATUS;
        enc_array(e, 2);
        enc_uint(e, id);
        enc_bin(e, val, reg_size(id));
    }
    enc_kv_uint(e, "mp_state", mp.mp_state);
    enc_kv_bin(e, "events", &ev, sizeof(ev));
    return 0;
}

/* One (id, value) entry of "regs", checked against this host's list. */
static int decode_reg(const struct arm_caps *hc, const uint8_t **p, const uint8_t *end,
                      uint8_t *seen, uint64_t *id, struct dec_val *val)
{
    struct dec_val ent, vid;
    char n[96];
    int r;
    if ((r = dec_next(p, end, &ent)))
        return r;
    if (ent.type != DEC_ARRAY || ent.u != 2)
        return vmm_err(EINVAL, "a register entry is not an (id, value) pair");
    const uint8_t *q = ent.p;
    if ((r = dec_next(&q, end, &vid)) || (r = dec_next(&q, end, val)))
        return r;
    if (vid.type != DEC_UINT || val->type != DEC_BIN)
        return vmm_err(EINVAL, "a register entry is not an (id, value) pair");
    *id = vid.u;
    long at = host_index(hc, vid.u);
    if (at < 0)
        return vmm_err(EINVAL, "it holds %s (0x%llx), which this host's KVM does not have: the "
                       "snapshot was taken on a host whose KVM or CPU differs from this one's",
                       reg_name(vid.u, n, sizeof(n)), (unsigned long long)vid.u);
    if (seen[at]++)
        return vmm_err(EINVAL, "it holds %s (0x%llx) twice", reg_name(vid.u, n, sizeof(n)),
                       (unsigned long long)vid.u);
    if (val->len != reg_size(vid.u))
        return vmm_err(EINVAL, "its %s (0x%llx) is %u bytes; the id says %u",
                       reg_name(vid.u, n, sizeof(n)), (unsigned long long)vid.u, val->len,
                       reg_size(vid.u));
    return 0;
}

static int decode_regs(const struct arm_caps *hc, const struct dec_map *m,
                       struct arch_vcpu_state *s)
{
    struct dec_val v, val;
    int r = dec_get(m, "regs", DEC_ARRAY, &v);
    if (r)
        return r;
    if (v.u > hc->nregs)
        return vmm_err(EINVAL, "it holds %llu registers; this host's KVM has %u: the snapshot "
                       "was taken on a host whose KVM or CPU differs from this one's",
                       (unsigned long long)v.u, hc->nregs);
    uint8_t *seen = calloc(hc->nregs ? hc->nregs : 1, 1);
    s->ids = calloc(v.u ? v.u : 1, sizeof(uint64_t));
    s->offs = calloc(v.u ? v.u : 1, sizeof(uint32_t));
    s->vals = malloc(v.u * MAX_REG_BYTES + 1);
    if (!seen || !s->ids || !s->offs || !s->vals) {
        free(seen);
        return vmm_err(ENOMEM, "out of memory decoding registers");
    }
    const uint8_t *p = v.p;
    uint32_t off = 0;
    for (uint64_t i = 0; i < v.u; i++) {
        if ((r = decode_reg(hc, &p, v.end, seen, &s->ids[i], &val)))
            goto out;
        s->offs[i] = off;
        memcpy(s->vals + off, val.p, val.len);
        off += val.len;
        s->n = (uint32_t)i + 1;
    }
    /* A register this host has and the snapshot lacks keeps KVM's reset value (a newer KVM
     * exposing more state); missing core registers mean the snapshot is not a vCPU's. */
    for (uint32_t i = 0; i < hc->nregs; i++)
        if (!seen[i] && is_core(hc->sorted[i])) {
            char n[96];
            r = vmm_err(EINVAL, "it lacks %s (0x%llx)", reg_name(hc->sorted[i], n, sizeof(n)),
                        (unsigned long long)hc->sorted[i]);
            goto out;
        }
out:
    free(seen);
    return r;
}

static bool known_mp_state(uint64_t mp)
{
    return mp == KVM_MP_STATE_RUNNABLE || mp == KVM_MP_STATE_STOPPED ||
           mp == KVM_MP_STATE_SUSPENDED;
}

int arch_vcpu_decode(struct vmm *vm, struct vcpu *c, const struct dec_map *m,
                     struct arch_vcpu_state **out)
{
    (void)vm;
    const struct arm_caps *hc = arm_caps();
    if (!hc)
        return -EIO;
    struct arch_vcpu_state *s = calloc(1, sizeof(*s));
    if (!s)
        return vmm_err(ENOMEM, "out of memory decoding vmstate");
    uint64_t mp;
    int r;
    if ((r = decode_regs(hc, m, s)) || (r = dec_get_uint(m, "mp_state", &mp)) ||
        (r = dec_get_bin_exact(m, "events", &s->events, sizeof(s->events))))
        goto fail;
    if (!known_mp_state(mp)) {
        r = vmm_err(EINVAL, "mp_state %llu is not an arm64 vCPU state", (unsigned long long)mp);
        goto fail;
    }
    s->mp.mp_state = (uint32_t)mp;
    bool reserved = false;
    for (size_t i = 0; i < sizeof(s->events.exception.pad); i++)
        reserved |= s->events.exception.pad[i] != 0;
    for (size_t i = 0; i < sizeof(s->events.reserved) / sizeof(s->events.reserved[0]); i++)
        reserved |= s->events.reserved[i] != 0;
    if (reserved) {
        r = vmm_err(EINVAL, "its vCPU events set reserved fields");
        goto fail;
    }
    *out = s;
    return 0;
fail:
    arch_vcpu_state_free(s);
    return vmm_err_ctx(r, "vmstate vcpu %d", c->id);
}

int arch_vcpu_apply(struct vmm *vm, struct vcpu *c, const struct arch_vcpu_state *s)
{
    const struct arm_caps *hc = arm_caps();
    if (!hc)
        return -EIO;
    struct arm_vm *a = arm(vm);
    for (int rank = 0; rank <= 3; rank++)
        for (uint32_t i = 0; i < s->n; i++) {
            if (timer_rank(s->ids[i]) != rank)
                continue;
            const uint8_t *val = s->vals + s->offs[i];
            int r = set_reg(c->fd, s->ids[i], val), k = counter_index(hc, s->ids[i]);
            if (r) {
                char n[96];
                return vmm_err(-r, "restoring vCPU %d: KVM refused its %s (0x%llx): %s; the "
                               "snapshot was taken on a host whose CPU or KVM differs from this "
                               "one's", c->id, reg_name(s->ids[i], n, sizeof(n)),
                               (unsigned long long)s->ids[i], strerror(-r));
            }
            if (k >= 0) {   /* the VM starts (or resumes) from the snapshot's counter */
                memcpy(&a->counter[k], val, sizeof(uint64_t));
                a->frozen = true;
            }
        }
    if (ioctl(c->fd, KVM_SET_MP_STATE, &s->mp) < 0)
        return vmm_err(errno, "restoring vCPU %d: KVM_SET_MP_STATE %u: %m", c->id, s->mp.mp_state);
    if (ioctl(c->fd, KVM_SET_VCPU_EVENTS, &s->events) < 0)
        return vmm_err(errno, "restoring vCPU %d: KVM_SET_VCPU_EVENTS: %m", c->id);
    return 0;
}

/* The restore-floor bench (devices/test/testapi.c) drives an x86 guest's port I/O. */
int arch_flat_vcpu_regs(int vcpu_fd, const void *regs, size_t len)
{
    (void)vcpu_fd; (void)regs; (void)len;
    return vmm_err(ENOTSUP, "the restore-floor bench is x86_64 only so far");
}
