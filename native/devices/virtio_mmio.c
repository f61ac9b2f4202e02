/*
 * virtio_mmio.c - the virtio-mmio v2 register file, feature negotiation, queue set-up,
 * interrupts and doorbells, shared by every virtio device (virtio_mmio.h says who runs where).
 * Modern only: VIRTIO_F_VERSION_1 is offered and required, version register 2, no legacy.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include "virtio_mmio.h"

static uint64_t offered(const struct virtio_dev *v)
{
    return v->ops->features | (1ULL << VIRTIO_F_VERSION_1);
}

uint64_t virtio_negotiated(struct virtio_dev *v)
{
    pthread_mutex_lock(&v->lock);
    uint64_t f = v->r.driver_features;
    pthread_mutex_unlock(&v->lock);
    return f;
}

static void raise_irq(struct virtio_dev *v)
{
    if (v->irq) {
        __atomic_fetch_add(&v->interrupts, 1, __ATOMIC_RELAXED);
        irq_trigger(v->irq);
    }
}

void virtio_rekick(struct virtio_dev *v)
{
    uint64_t one = 1;
    if (write(v->kick, &one, sizeof(one)) < 0) {
        /* saturated counter: the loop is coming anyway */
    }
}

/* vCPU thread, under lock: the guest's queue configuration is refused, so is the device. */
static void broken_locked(struct virtio_dev *v, const char *why)
{
    if (!(v->r.status & VIRTIO_STATUS_NEEDS_RESET))
        snprintf(v->broken_why, sizeof(v->broken_why), "%s", why);
    v->r.status |= VIRTIO_STATUS_NEEDS_RESET;
    v->r.isr |= VIRTIO_ISR_CONFIG;
}

void virtio_set_broken(struct virtio_dev *v, const char *why)
{
    pthread_mutex_lock(&v->lock);
    broken_locked(v, why);
    pthread_mutex_unlock(&v->lock);
    raise_irq(v);
}

bool virtio_is_broken(struct virtio_dev *v)
{
    pthread_mutex_lock(&v->lock);
    bool b = v->r.status & VIRTIO_STATUS_NEEDS_RESET;
    pthread_mutex_unlock(&v->lock);
    return b;
}

void virtio_info(struct virtio_dev *v, struct vmm_virtio_info *o)
{
    pthread_mutex_lock(&v->lock);
    o->status = v->r.status;
    o->broken = !!(v->r.status & VIRTIO_STATUS_NEEDS_RESET);
    snprintf(o->why, sizeof(o->why), "%s", o->broken ? v->broken_why : "");
    pthread_mutex_unlock(&v->lock);
    o->passes = v->passes;
    o->interrupts = __atomic_load_n(&v->interrupts, __ATOMIC_RELAXED);
    o->gsi = v->irq ? (int)irq_gsi(v->irq) : -1;
    o->nqueues = (unsigned int)v->ops->nqueues;
    for (int i = 0; i < v->ops->nqueues && i < VIRTIO_MAX_QUEUES; i++) {
        struct vmm_virtio_queue_info *q = &o->q[i];
        uint16_t avail;
        if (!v->live[i])
            continue;
        q->ready = 1;
        q->size = v->vq[i].num;
        q->last_avail = v->vq[i].last_avail;
        q->used_idx = v->vq[i].used_idx;
        if (!gm_load_acquire16(v->mem, v->vq[i].avail + 2, &avail))
            q->avail_idx = avail;
        uint16_t flags, ue;
        if (!gm_load_acquire16(v->mem, v->vq[i].avail, &flags))
            q->avail_flags = flags;
        q->used_event = -1;
        if (v->vq[i].event_idx &&
            !gm_load_acquire16(v->mem, v->vq[i].avail + 4 + 2ULL * v->vq[i].num, &ue))
            q->used_event = ue;
    }
}

bool virtio_driver_ok(struct virtio_dev *v)
{
    pthread_mutex_lock(&v->lock);
    uint32_t s = v->r.status;
    pthread_mutex_unlock(&v->lock);
    return (s & VIRTIO_STATUS_DRIVER_OK) && (s & VIRTIO_STATUS_FEATURES_OK) &&
           !(s & VIRTIO_STATUS_NEEDS_RESET);
}

struct virtq *virtio_queue(struct virtio_dev *v, int i)
{
    return i >= 0 && i < v->ops->nqueues && v->live[i] ? &v->vq[i] : NULL;
}

void virtio_config_write(struct virtio_dev *v, uint32_t off, const void *data, uint32_t len)
{
    pthread_mutex_lock(&v->lock);
    if (off <= VIRTIO_CONFIG_MAX && len <= VIRTIO_CONFIG_MAX - off)
        memcpy(v->config + off, data, len);
    v->r.config_gen++;
    v->r.isr |= VIRTIO_ISR_CONFIG;
    pthread_mutex_unlock(&v->lock);
    raise_irq(v);
}

void virtio_notify_used(struct virtio_dev *v, struct virtq *q)
{
    if (!virtq_should_notify(q))
        return;
    pthread_mutex_lock(&v->lock);
    v->r.isr |= VIRTIO_ISR_USED;
    pthread_mutex_unlock(&v->lock);
    raise_irq(v);
}

/* ---------- the event loop side ---------- */

void virtio_run(struct virtio_dev *v)
{
    bool reset = false;
    pthread_mutex_lock(&v->lock);
    if (v->r.reset_gen != v->seen_reset_gen) {
        v->seen_reset_gen = v->r.reset_gen;
        reset = true;
        memset(v->live, 0, sizeof(v->live));
    }
    uint64_t f = v->r.driver_features;
    v->features = f;
    bool ok = (v->r.status & VIRTIO_STATUS_DRIVER_OK) &&
              (v->r.status & VIRTIO_STATUS_FEATURES_OK) &&
              !(v->r.status & VIRTIO_STATUS_NEEDS_RESET);
    for (int i = 0; i < v->ops->nqueues; i++) {
        const struct virtio_queue_regs *qr = &v->r.q[i];
        if (!qr->ready) {
            v->live[i] = false;
        } else if (!v->live[i]) {
            v->vq[i] = (struct virtq){.mem = v->mem, .num = qr->num, .desc = qr->desc,
                                      .avail = qr->avail, .used = qr->used,
                                      .indirect = f >> VIRTIO_RING_F_INDIRECT_DESC & 1,
                                      .event_idx = f >> VIRTIO_RING_F_EVENT_IDX & 1};
            v->live[i] = true;
        }
    }
    pthread_mutex_unlock(&v->lock);
    if (reset && v->ops->reset)
        v->ops->reset(v);
    if (!ok)
        return;
    v->passes++;
    if (v->ops->process(v) < 0)
        virtio_set_broken(v, vmm_last_error());
}

static void on_kick(void *ctx, uint32_t events)
{
    struct virtio_dev *v = ctx;
    (void)events;
    uint64_t n;
    if (read(v->kick, &n, sizeof(n)) < 0) {
        /* nothing pending: a spurious wake-up, the pass below is harmless */
    }
    virtio_run(v);
}

/* ---------- the register file (vCPU threads) ---------- */

static void reset_locked(struct virtio_dev *v)
{
    uint32_t gen = v->r.reset_gen + 1, cgen = v->r.config_gen;
    memset(&v->r, 0, sizeof(v->r));
    v->r.reset_gen = gen;
    v->r.config_gen = cgen;
    v->broken_why[0] = 0;
}

static void write_status(struct virtio_dev *v, uint32_t val)
{
    if (val == 0) {
        reset_locked(v);
        return;
    }
    uint32_t old = v->r.status;
    val &= 0xff;
    if ((val & VIRTIO_STATUS_FEATURES_OK) && !(old & VIRTIO_STATUS_FEATURES_OK)) {
        uint64_t f = v->r.driver_features;
        /* the driver reads the status back: FEATURES_OK missing means "refused" */
        if ((f & ~offered(v)) || !(f >> VIRTIO_F_VERSION_1 & 1))
            val &= ~(uint32_t)VIRTIO_STATUS_FEATURES_OK;
    }
    v->r.status = (val & ~(uint32_t)VIRTIO_STATUS_NEEDS_RESET) |
                  (old & VIRTIO_STATUS_NEEDS_RESET);
}

static void write_queue_ready(struct virtio_dev *v, uint32_t val)
{
    if (v->r.queue_sel >= v->ops->nqueues)
        return;
    struct virtio_queue_regs *qr = &v->r.q[v->r.queue_sel];
    if (!val) {
        qr->ready = false;
        return;
    }
    if (qr->ready)
        return;
    struct virtq probe = {.mem = v->mem, .num = qr->num, .desc = qr->desc, .avail = qr->avail,
                          .used = qr->used};
    if (virtq_check(&probe, v->ops->queue_max)) {
        char why[160];
        snprintf(why, sizeof(why), "queue %u: %s", v->r.queue_sel, vmm_last_error());
        broken_locked(v, why);
        return;
    }
    qr->ready = true;
}

static void set_half(uint64_t *field, bool high, uint32_t val)
{
    *field = high ? (*field & 0xffffffffULL) | (uint64_t)val << 32
                  : (*field & ~0xffffffffULL) | val;
}

/* Returns true when the loop should look (a doorbell, DRIVER_OK), false otherwise. Sets
 * *irq when a config interrupt is due. */
static bool reg_write(struct virtio_dev *v, uint64_t off, uint32_t val, bool *irq)
{
    struct virtio_queue_regs *qr =
        v->r.queue_sel < v->ops->nqueues ? &v->r.q[v->r.queue_sel] : NULL;
    bool writable_queue = qr && !qr->ready;   /* a live queue's set-up is not changed */
    uint32_t before = v->r.status;
    switch (off) {
    case VIRTIO_MMIO_DEVICE_FEATURES_SEL: v->r.dev_feat_sel = val; break;
    case VIRTIO_MMIO_DRIVER_FEATURES_SEL: v->r.drv_feat_sel = val; break;
    case VIRTIO_MMIO_DRIVER_FEATURES:
        if (!(v->r.status & VIRTIO_STATUS_FEATURES_OK) && v->r.drv_feat_sel < 2)
            set_half(&v->r.driver_features, v->r.drv_feat_sel == 1, val);
        break;
    case VIRTIO_MMIO_QUEUE_SEL: v->r.queue_sel = val; break;
    case VIRTIO_MMIO_QUEUE_NUM:
        if (writable_queue)
            qr->num = (uint16_t)(val > 0xffff ? 0 : val);
        break;
    case VIRTIO_MMIO_QUEUE_READY: write_queue_ready(v, val); break;
    case VIRTIO_MMIO_QUEUE_NOTIFY: return true;
    case VIRTIO_MMIO_INTERRUPT_ACK: v->r.isr &= ~val; break;
    case VIRTIO_MMIO_STATUS: write_status(v, val); break;
    case VIRTIO_MMIO_QUEUE_DESC_LOW: case VIRTIO_MMIO_QUEUE_DESC_HIGH:
        if (writable_queue)
            set_half(&qr->desc, off == VIRTIO_MMIO_QUEUE_DESC_HIGH, val);
        break;
    case VIRTIO_MMIO_QUEUE_AVAIL_LOW: case VIRTIO_MMIO_QUEUE_AVAIL_HIGH:
        if (writable_queue)
            set_half(&qr->avail, off == VIRTIO_MMIO_QUEUE_AVAIL_HIGH, val);
        break;
    case VIRTIO_MMIO_QUEUE_USED_LOW: case VIRTIO_MMIO_QUEUE_USED_HIGH:
        if (writable_queue)
            set_half(&qr->used, off == VIRTIO_MMIO_QUEUE_USED_HIGH, val);
        break;
    default: break;   /* read-only or unknown: ignored */
    }
    if ((v->r.status & VIRTIO_STATUS_NEEDS_RESET) && !(before & VIRTIO_STATUS_NEEDS_RESET))
        *irq = true;
    /* a reset, DRIVER_OK, or a queue turned on: let the loop take note and serve */
    return off == VIRTIO_MMIO_STATUS || off == VIRTIO_MMIO_QUEUE_READY;
}

static uint32_t reg_read(struct virtio_dev *v, uint64_t off)
{
    const struct virtio_queue_regs *qr =
        v->r.queue_sel < v->ops->nqueues ? &v->r.q[v->r.queue_sel] : NULL;
    switch (off) {
    case VIRTIO_MMIO_MAGIC: return VIRTIO_MMIO_MAGIC_VALUE;
    case VIRTIO_MMIO_VERSION: return 2;
    case VIRTIO_MMIO_DEVICE_ID: return v->ops->device_id;
    case VIRTIO_MMIO_VENDOR_ID: return VIRTIO_MMIO_VENDOR;
    case VIRTIO_MMIO_DEVICE_FEATURES:
        return v->r.dev_feat_sel < 2 ? (uint32_t)(offered(v) >> (32 * v->r.dev_feat_sel)) : 0;
    case VIRTIO_MMIO_QUEUE_NUM_MAX: return qr ? v->ops->queue_max : 0;
    case VIRTIO_MMIO_QUEUE_NUM: return qr ? qr->num : 0;
    case VIRTIO_MMIO_QUEUE_READY: return qr ? qr->ready : 0;
    case VIRTIO_MMIO_INTERRUPT_STATUS: return v->r.isr;
    case VIRTIO_MMIO_STATUS: return v->r.status;
    case VIRTIO_MMIO_QUEUE_DESC_LOW: return qr ? (uint32_t)qr->desc : 0;
    case VIRTIO_MMIO_QUEUE_DESC_HIGH: return qr ? (uint32_t)(qr->desc >> 32) : 0;
    case VIRTIO_MMIO_QUEUE_AVAIL_LOW: return qr ? (uint32_t)qr->avail : 0;
    case VIRTIO_MMIO_QUEUE_AVAIL_HIGH: return qr ? (uint32_t)(qr->avail >> 32) : 0;
    case VIRTIO_MMIO_QUEUE_USED_LOW: return qr ? (uint32_t)qr->used : 0;
    case VIRTIO_MMIO_QUEUE_USED_HIGH: return qr ? (uint32_t)(qr->used >> 32) : 0;
    case VIRTIO_MMIO_SHM_LEN_LOW: case VIRTIO_MMIO_SHM_LEN_HIGH:
        return 0xffffffffu;   /* no shared memory regions */
    case VIRTIO_MMIO_CONFIG_GENERATION: return v->r.config_gen;
    default: return 0;
    }
}

int virtio_mmio_access(struct device *d, uint64_t off, uint8_t *data, uint32_t len,
                       bool is_write, struct bus_req *req)
{
    struct virtio_dev *v = d->priv;
    (void)req;
    if (off >= VIRTIO_MMIO_CONFIG) {
        /* config space: any width, read only for the guest; a device may change it
         * (virtio_config_write), so it is read under the lock */
        uint64_t c = off - VIRTIO_MMIO_CONFIG;
        if (!is_write) {
            memset(data, 0, len);
            pthread_mutex_lock(&v->lock);
            if (c < v->config_len && len <= v->config_len - c)
                memcpy(data, v->config + c, len);
            pthread_mutex_unlock(&v->lock);
        }
        return 0;
    }
    if (len != 4 || off % 4) {   /* registers are 32-bit and aligned (4.2.2.2) */
        if (!is_write)
            memset(data, 0, len);
        return 0;
    }
    uint32_t val;
    if (!is_write) {
        pthread_mutex_lock(&v->lock);
        val = reg_read(v, off);
        pthread_mutex_unlock(&v->lock);
        memcpy(data, &val, 4);
        return 0;
    }
    memcpy(&val, data, 4);
    bool irq = false;
    pthread_mutex_lock(&v->lock);
    bool look = reg_write(v, off, val, &irq);
    pthread_mutex_unlock(&v->lock);
    if (irq)
        raise_irq(v);
    if (look)   /* a doorbell that came as an MMIO exit (no ioeventfd, or another width) */
        virtio_rekick(v);
    return 0;
}

/* ---------- life cycle ---------- */

int virtio_init(struct virtio_dev *v, struct device *d, const struct virtio_ops *ops)
{
    v->dev = d;
    v->ops = ops;
    v->mem = d->env->mem;
    v->irq = d->irq;
    v->loop = d->env->loop;
    v->vm_fd = d->env->vm_fd;
    v->notify_addr = d->base + VIRTIO_MMIO_QUEUE_NOTIFY;
    pthread_mutex_init(&v->lock, NULL);
    if ((v->kick = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
        int r = vmm_err(errno, "eventfd for the queue doorbell: %m");
        pthread_mutex_destroy(&v->lock);
        return r;
    }
    /* KVM signals the eventfd without an exit; where it cannot (no VM fd in unit tests), the
     * MMIO exit path writes it instead */
    v->ioeventfd = v->vm_fd >= 0 && ioevent_register(v->vm_fd, v->kick, v->notify_addr, 4,
                                                     false) == 0;
    int r = v->loop ? evl_add(v->loop, v->kick, EPOLLIN, on_kick, v) : 0;
    if (r) {
        if (v->ioeventfd)
            ioevent_unregister(v->vm_fd, v->kick, v->notify_addr, 4, false);
        close(v->kick);
        pthread_mutex_destroy(&v->lock);
    }
    return r;
}

void virtio_destroy(struct virtio_dev *v)
{
    if (v->ioeventfd)
        ioevent_unregister(v->vm_fd, v->kick, v->notify_addr, 4, false);
    if (v->kick >= 0)
        close(v->kick);
    v->kick = -1;
    pthread_mutex_destroy(&v->lock);
}

/* ---------- state ---------- */

#define QUEUE_FIELDS 7

void virtio_save(struct virtio_dev *v, struct enc *e)
{
    pthread_mutex_lock(&v->lock);
    struct virtio_regs r = v->r;
    pthread_mutex_unlock(&v->lock);
    enc_map(e, 9);
    enc_kv_uint(e, "status", r.status);
    enc_kv_uint(e, "dev_feat_sel", r.dev_feat_sel);
    enc_kv_uint(e, "drv_feat_sel", r.drv_feat_sel);
    enc_kv_uint(e, "queue_sel", r.queue_sel);
    enc_kv_uint(e, "features", r.driver_features);
    enc_kv_uint(e, "isr", r.isr);
    enc_kv_uint(e, "config_gen", r.config_gen);
    enc_kv_uint(e, "reset_pending", r.reset_gen != v->seen_reset_gen);
    enc_str(e, "queues");
    enc_array(e, v->ops->nqueues);
    for (int i = 0; i < v->ops->nqueues; i++) {
        /* a queue the loop has not taken up yet starts at index 0, as the loop would */
        bool live = v->live[i] && r.reset_gen == v->seen_reset_gen;
        enc_array(e, QUEUE_FIELDS);
        enc_uint(e, r.q[i].num);
        enc_uint(e, r.q[i].ready);
        enc_uint(e, r.q[i].desc);
        enc_uint(e, r.q[i].avail);
        enc_uint(e, r.q[i].used);
        enc_uint(e, live ? v->vq[i].last_avail : 0);
        enc_uint(e, live ? v->vq[i].used_idx : 0);
    }
}

static int bad(const char *key, const char *what)
{
    return vmm_err(EINVAL, "%s: virtio transport state: %s", key, what);
}

int virtio_decode(struct virtio_dev *v, const struct dec_map *section,
                  struct virtio_transport_state *out)
{
    const char *key = v->dev->key;
    struct dec_map m;
    struct dec_val qs;
    uint64_t status, dsel, gsel, qsel, feat, isr, cgen, rp;
    int r;
    memset(out, 0, sizeof(*out));
    if ((r = dec_get_map(section, "transport", &m)) ||
        (r = dec_get_uint(&m, "status", &status)) ||
        (r = dec_get_uint(&m, "dev_feat_sel", &dsel)) ||
        (r = dec_get_uint(&m, "drv_feat_sel", &gsel)) ||
        (r = dec_get_uint(&m, "queue_sel", &qsel)) || (r = dec_get_uint(&m, "features", &feat)) ||
        (r = dec_get_uint(&m, "isr", &isr)) || (r = dec_get_uint(&m, "config_gen", &cgen)) ||
        (r = dec_get_uint(&m, "reset_pending", &rp)) ||
        (r = dec_get(&m, "queues", DEC_ARRAY, &qs)))
        return r;
    if (status > 0xff || dsel > UINT32_MAX || gsel > UINT32_MAX || qsel > UINT32_MAX ||
        isr > 3 || cgen > UINT32_MAX || rp > 1)
        return bad(key, "a register is out of range");
    if (feat & ~offered(v))
        return bad(key, "the driver features are not what this device offers");
    if ((status & VIRTIO_STATUS_FEATURES_OK) && !(feat >> VIRTIO_F_VERSION_1 & 1))
        return bad(key, "FEATURES_OK without VIRTIO_F_VERSION_1");
    if (qs.u != v->ops->nqueues)
        return bad(key, "the number of queues differs from this device's");
    out->r = (struct virtio_regs){.status = (uint32_t)status, .dev_feat_sel = (uint32_t)dsel,
                                  .drv_feat_sel = (uint32_t)gsel, .queue_sel = (uint32_t)qsel,
                                  .driver_features = feat, .isr = (uint32_t)isr,
                                  .config_gen = (uint32_t)cgen, .reset_gen = (uint32_t)rp};
    const uint8_t *p = qs.p;
    for (int i = 0; i < v->ops->nqueues; i++) {
        struct dec_val ent, f[QUEUE_FIELDS];
        if ((r = dec_next(&p, qs.end, &ent)))
            return r;
        if (ent.type != DEC_ARRAY || ent.u != QUEUE_FIELDS)
            return bad(key, "a queue entry is malformed");
        const uint8_t *q = ent.p;
        for (int k = 0; k < QUEUE_FIELDS; k++)
            if ((r = dec_next(&q, qs.end, &f[k])) || f[k].type != DEC_UINT)
                return r ? r : bad(key, "a queue entry is malformed");
        if (f[0].u > v->ops->queue_max || f[1].u > 1 || f[5].u > 0xffff || f[6].u > 0xffff)
            return bad(key, "a queue field is out of range");
        struct virtio_queue_regs *qr = &out->r.q[i];
        *qr = (struct virtio_queue_regs){.num = (uint16_t)f[0].u, .ready = f[1].u,
                                         .desc = f[2].u, .avail = f[3].u, .used = f[4].u};
        out->last_avail[i] = (uint16_t)f[5].u;
        out->used_idx[i] = (uint16_t)f[6].u;
        if (qr->ready) {
            struct virtq probe = {.mem = v->mem, .num = qr->num, .desc = qr->desc,
                                  .avail = qr->avail, .used = qr->used};
            if ((r = virtq_check(&probe, v->ops->queue_max)))
                return vmm_err_ctx(r, "%s: queue %d", key, i);
        }
    }
    return 0;
}

/* The host applies while the loop is parked or not started: the loop's part is set directly. */
void virtio_apply(struct virtio_dev *v, const struct virtio_transport_state *s)
{
    pthread_mutex_lock(&v->lock);
    uint32_t gen = v->r.reset_gen + 1;
    v->r = s->r;
    /* a reset the guest asked for and the loop had not acted on yet stays pending */
    v->r.reset_gen = gen + s->r.reset_gen;
    v->seen_reset_gen = gen;
    v->broken_why[0] = 0;
    if (s->r.status & VIRTIO_STATUS_NEEDS_RESET)
        snprintf(v->broken_why, sizeof(v->broken_why), "broken before the snapshot");
    uint64_t f = s->r.driver_features;
    v->features = f;
    for (int i = 0; i < v->ops->nqueues; i++) {
        const struct virtio_queue_regs *qr = &s->r.q[i];
        v->live[i] = qr->ready;
        v->vq[i] = (struct virtq){.mem = v->mem, .num = qr->num, .desc = qr->desc,
                                  .avail = qr->avail, .used = qr->used,
                                  .indirect = f >> VIRTIO_RING_F_INDIRECT_DESC & 1,
                                  .event_idx = f >> VIRTIO_RING_F_EVENT_IDX & 1,
                                  .last_avail = s->last_avail[i], .used_idx = s->used_idx[i]};
    }
    pthread_mutex_unlock(&v->lock);
}

/* A restored driver is interrupted once, whatever the saved state says. An irqfd write is
 * injected by a KVM worker, later: one made just before the pause can be missing from the
 * irqchip state the snapshot holds, and the copy would wait for it forever while the device
 * waits for the guest (Firecracker and cloud-hypervisor met this too). The guest's handler
 * reads ISR and looks at every queue, so an interrupt with nothing new is harmless. This runs
 * after the arch state is applied, so KVM_SET_IRQCHIP cannot undo it. */
void virtio_post_load(struct virtio_dev *v)
{
    pthread_mutex_lock(&v->lock);
    bool live = (v->r.status & VIRTIO_STATUS_DRIVER_OK) &&
                !(v->r.status & VIRTIO_STATUS_NEEDS_RESET);
    if (live)
        v->r.isr |= VIRTIO_ISR_USED;
    pthread_mutex_unlock(&v->lock);
    if (live)
        raise_irq(v);
    virtio_rekick(v);
}
