/*
 * virtq.c - the split virtqueue walker (virtio 1.x, 2.7): descriptor table, avail ring, used
 * ring, through the gm layer. Every value read from the guest is checked before it is used;
 * every loop is bounded by the queue size. Hosts are little endian (x86_64, aarch64), as the
 * rings of a virtio 1.x device are, so ring fields are used as they are read.
 */
#include <errno.h>
#include <string.h>
#include <sys/uio.h>
#include "virtq.h"

struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

static bool in_ram(struct guest_mem *m, uint64_t gpa, uint64_t len)
{
    bool ok;
    mem_linear(m, gpa, len, &ok);
    return ok;
}

int virtq_check(const struct virtq *q, uint16_t max)
{
    uint64_t n = q->num;
    if (n == 0 || n > max || (n & (n - 1)))
        return vmm_err(EINVAL, "queue size %llu is not a power of two in 1..%u",
                       (unsigned long long)n, max);
    if (q->desc % 16 || q->avail % 2 || q->used % 4)
        return vmm_err(EINVAL, "queue rings are misaligned (desc 0x%llx, avail 0x%llx, used "
                       "0x%llx)", (unsigned long long)q->desc, (unsigned long long)q->avail,
                       (unsigned long long)q->used);
    /* with room for used_event / avail_event, whether or not event idx is negotiated */
    if (!in_ram(q->mem, q->desc, 16 * n) || !in_ram(q->mem, q->avail, 6 + 2 * n) ||
        !in_ram(q->mem, q->used, 6 + 8 * n))
        return vmm_err(EINVAL, "queue rings are not in guest RAM (desc 0x%llx, avail 0x%llx, "
                       "used 0x%llx, size %llu)", (unsigned long long)q->desc,
                       (unsigned long long)q->avail, (unsigned long long)q->used,
                       (unsigned long long)n);
    return 0;
}

int virtq_pending(struct virtq *q)
{
    uint16_t idx;
    int r = gm_load_acquire16(q->mem, q->avail + 2, &idx);
    if (r)
        return r;
    uint16_t n = (uint16_t)(idx - q->last_avail);
    if (n > q->num)
        return vmm_err(EINVAL, "avail index %u ran %u entries ahead of the device (%u) in a "
                       "queue of %u", idx, n, q->last_avail, q->num);
    return n;
}

static int read_desc(struct guest_mem *m, uint64_t table, uint32_t i, struct vring_desc *d)
{
    int r = gm_read(m, table + 16ULL * i, d, sizeof(*d));
    return r ? vmm_err_ctx(r, "descriptor %u", i) : 0;
}

/* Adds one buffer to the chain: inside guest RAM, readable ones before writable ones. */
static int add_seg(struct virtq *q, struct vq_chain *c, const struct vring_desc *d)
{
    bool write = d->flags & VIRTQ_DESC_F_WRITE;
    if (d->len == 0)
        return 0;   /* nothing to move; a zero-length buffer is harmless */
    if (!in_ram(q->mem, d->addr, d->len))
        return vmm_err(EFAULT, "buffer 0x%llx+0x%x is not in guest RAM",
                       (unsigned long long)d->addr, d->len);
    if (!write && c->nseg > c->nread)
        return vmm_err(EINVAL, "a device-readable buffer follows a device-writable one");
    if (c->nseg == VIRTQ_MAX_SIZE)
        return vmm_err(E2BIG, "chain has more than %d buffers", VIRTQ_MAX_SIZE);
    c->seg[c->nseg++] = (struct vq_seg){.addr = d->addr, .len = d->len, .write = write};
    if (write)
        c->wlen += d->len;
    else {
        c->nread++;
        c->rlen += d->len;
    }
    return 0;
}

/* An indirect table: one level only, a whole number of descriptors, at most the queue's size
 * of them (the segment array bounds it as well), walked at most once each. */
static int walk_indirect(struct virtq *q, struct vq_chain *c, const struct vring_desc *ind)
{
    if (!q->indirect)
        return vmm_err(EINVAL, "indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC");
    if (ind->flags & VIRTQ_DESC_F_NEXT)
        return vmm_err(EINVAL, "indirect descriptor also has NEXT set");
    uint32_t n = ind->len / 16;
    if (ind->len == 0 || ind->len % 16 || n > q->num)
        return vmm_err(EINVAL, "indirect table of %u bytes (at most %u descriptors of 16)",
                       ind->len, q->num);
    if (!in_ram(q->mem, ind->addr, ind->len))
        return vmm_err(EFAULT, "indirect table 0x%llx+0x%x is not in guest RAM",
                       (unsigned long long)ind->addr, ind->len);
    uint32_t i = 0;
    for (uint32_t visited = 0;; visited++) {
        struct vring_desc d;
        int r;
        if (visited == n)
            return vmm_err(ELOOP, "indirect chain loops or is longer than its table (%u)", n);
        if ((r = read_desc(q->mem, ind->addr, i, &d)))
            return r;
        if (d.flags & VIRTQ_DESC_F_INDIRECT)
            return vmm_err(EINVAL, "indirect descriptor inside an indirect table");
        if ((r = add_seg(q, c, &d)))
            return r;
        if (!(d.flags & VIRTQ_DESC_F_NEXT))
            return 0;
        if (d.next >= n)
            return vmm_err(EINVAL, "indirect next index %u past the table (%u)", d.next, n);
        i = d.next;
    }
}

int virtq_pop(struct virtq *q, struct vq_chain *c)
{
    int n = virtq_pending(q);
    if (n <= 0)
        return n;
    uint16_t head;
    int r = gm_read(q->mem, q->avail + 4 + 2ULL * (q->last_avail % q->num), &head, 2);
    if (r)
        return r;
    if (head >= q->num)
        return vmm_err(EINVAL, "avail entry %u names descriptor %u of %u", q->last_avail, head,
                       q->num);
    c->head = head;
    c->nseg = c->nread = 0;
    c->rlen = c->wlen = 0;
    uint16_t i = head;
    for (uint32_t visited = 0;; visited++) {
        struct vring_desc d;
        if (visited == q->num)
            return vmm_err(ELOOP, "chain from descriptor %u loops or is longer than the queue "
                           "(%u)", head, q->num);
        if ((r = read_desc(q->mem, q->desc, i, &d)))
            return r;
        if (d.flags & VIRTQ_DESC_F_INDIRECT) {
            if ((r = walk_indirect(q, c, &d)))
                return r;
            break;
        }
        if ((r = add_seg(q, c, &d)))
            return r;
        if (!(d.flags & VIRTQ_DESC_F_NEXT))
            break;
        if (d.next >= q->num)
            return vmm_err(EINVAL, "next index %u past the queue (%u)", d.next, q->num);
        i = d.next;
    }
    q->last_avail++;
    if (q->event_idx) {
        /* avail_event: kick me once you publish past what I took; the fence orders this store
         * before the next load of the avail index, so an entry added meanwhile is seen */
        if ((r = gm_store_release16(q->mem, q->used + 4 + 8ULL * q->num, q->last_avail)))
            return r;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    }
    return 1;
}

void virtq_unpop(struct virtq *q) { q->last_avail--; }

int virtq_push(struct virtq *q, uint16_t head, uint32_t len)
{
    uint32_t elem[2] = {head, len};
    int r = gm_write(q->mem, q->used + 4 + 8ULL * (q->used_idx % q->num), elem, sizeof(elem));
    if (r)
        return r;
    q->used_idx++;
    return gm_store_release16(q->mem, q->used + 2, q->used_idx);
}

bool virtq_should_notify(struct virtq *q)
{
    /* the guest reads our used index, then its flags; we write the index, then read them */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint16_t v;
    if (q->event_idx) {
        if (gm_read(q->mem, q->avail + 4 + 2ULL * q->num, &v, 2))
            return true;
        uint16_t old = q->signalled_used, now = q->used_idx;
        bool valid = q->signalled_valid;
        q->signalled_used = now;
        q->signalled_valid = true;
        /* vring_need_event: the guest asked for an interrupt once used passed v */
        return !valid || (uint16_t)(now - v - 1) < (uint16_t)(now - old);
    }
    if (gm_read(q->mem, q->avail, &v, 2))
        return true;
    return !(v & VIRTQ_AVAIL_F_NO_INTERRUPT);
}

static int64_t chain_copy(struct guest_mem *m, const struct vq_chain *c, bool write,
                          uint64_t off, uint8_t *host, uint64_t len)
{
    uint16_t first = write ? c->nread : 0, end = write ? c->nseg : c->nread;
    uint64_t done = 0;
    for (uint16_t i = first; i < end && done < len; i++) {
        const struct vq_seg *s = &c->seg[i];
        if (off >= s->len) {
            off -= s->len;
            continue;
        }
        uint64_t n = s->len - off;
        if (n > len - done)
            n = len - done;
        int r = write ? gm_write(m, s->addr + off, host + done, n)
                      : gm_read(m, s->addr + off, host + done, n);
        if (r)
            return r;
        done += n;
        off = 0;
    }
    return (int64_t)done;
}

int64_t vq_chain_read(struct guest_mem *m, const struct vq_chain *c, uint64_t off, void *dst,
                      uint64_t len)
{
    return chain_copy(m, c, false, off, dst, len);
}

int64_t vq_chain_write(struct guest_mem *m, const struct vq_chain *c, uint64_t off,
                       const void *src, uint64_t len)
{
    return chain_copy(m, c, true, off, (uint8_t *)src, len);
}

int vq_chain_iov(struct guest_mem *m, const struct vq_chain *c, bool write, uint64_t skip,
                 uint64_t len, struct iovec *iov, int max, uint64_t *got)
{
    uint16_t first = write ? c->nread : 0, end = write ? c->nseg : c->nread;
    int n = 0;
    *got = 0;
    for (uint16_t i = first; i < end && *got < len && n < max; i++) {
        const struct vq_seg *s = &c->seg[i];
        if (skip >= s->len) {
            skip -= s->len;
            continue;
        }
        uint64_t k = s->len - skip;
        if (k > len - *got)
            k = len - *got;
        void *p = gm_slice(m, s->addr + skip, k, write);
        if (!p)
            return vmm_err(EFAULT, "a buffer left guest RAM");
        iov[n++] = (struct iovec){p, (size_t)k};
        *got += k;
        skip = 0;
    }
    return n;
}
