/* bus.c - PIO and MMIO dispatch by address range to the device that owns it. */
#include <errno.h>
#include "internal.h"

int bus_add(struct bus *b, uint64_t base, uint64_t len, struct device *dev)
{
    if (b->n >= VMM_MAX_DEVICES)
        return vmm_err(ENOSPC, "bus is full (%d ranges)", VMM_MAX_DEVICES);
    if (len == 0 || base + len < base)
        return vmm_err(EINVAL, "bus range 0x%llx+0x%llx is empty or wraps",
                       (unsigned long long)base, (unsigned long long)len);
    int i = b->n;
    for (int j = 0; j < b->n; j++) {
        const struct bus_range *o = &b->r[j];
        if (base < o->base + o->len && o->base < base + len)
            return vmm_err(EEXIST, "bus range 0x%llx+0x%llx overlaps 0x%llx+0x%llx",
                           (unsigned long long)base, (unsigned long long)len,
                           (unsigned long long)o->base, (unsigned long long)o->len);
    }
    /* keep sorted so dispatch can binary-search */
    while (i > 0 && b->r[i - 1].base > base) {
        b->r[i] = b->r[i - 1];
        i--;
    }
    b->r[i] = (struct bus_range){base, len, dev};
    b->n++;
    return 0;
}

int bus_dispatch(const struct bus *b, uint64_t addr, uint8_t *data, uint32_t len, bool is_write,
                 struct bus_req *req)
{
    int lo = 0, hi = b->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const struct bus_range *r = &b->r[mid];
        if (addr < r->base)
            hi = mid - 1;
        else if (addr >= r->base + r->len)
            lo = mid + 1;
        else {
            if (len > r->base + r->len - addr)
                return 0;   /* straddles the end: nobody owns all of it */
            r->dev->ops->access(r->dev, addr - r->base, data, len, is_write, req);
            return 1;
        }
    }
    return 0;
}
