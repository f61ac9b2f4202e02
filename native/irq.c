/*
 * irq.c - interrupt objects: a device raises its interrupt through one of these and never
 * through the VM. Edge interrupts go through an irqfd (a write to an eventfd: never blocks, no
 * lock of the device's is held across a KVM call); level lines use KVM_IRQ_LINE behind the
 * same handle.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include "internal.h"

struct irq {
    int vm_fd;
    uint32_t gsi;
    int efd;
};

int irq_create(int vm_fd, uint32_t gsi, struct irq **out)
{
    struct irq *q = calloc(1, sizeof(*q));
    if (!q)
        return vmm_err(ENOMEM, "out of memory for an irq");
    q->vm_fd = vm_fd;
    q->gsi = gsi;
    q->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (q->efd < 0) {
        free(q);
        return vmm_err(errno, "eventfd for GSI %u: %m", gsi);
    }
    struct kvm_irqfd f = {.fd = (uint32_t)q->efd, .gsi = gsi};
    if (ioctl(vm_fd, KVM_IRQFD, &f) < 0) {
        int e = errno;
        close(q->efd);
        free(q);
        return vmm_err(e, "KVM_IRQFD on GSI %u: %s (the VM needs an in-kernel irqchip)", gsi,
                       strerror(e));
    }
    *out = q;
    return 0;
}

int irq_trigger(struct irq *q)
{
    uint64_t one = 1;
    if (write(q->efd, &one, sizeof(one)) != sizeof(one) && errno != EAGAIN)
        return vmm_err(errno, "raising GSI %u: %m", q->gsi);
    return 0;
}

int irq_set_level(struct irq *q, int level)
{
    struct kvm_irq_level l = {.irq = q->gsi, .level = (uint32_t)!!level};
    if (ioctl(q->vm_fd, KVM_IRQ_LINE, &l) < 0)
        return vmm_err(errno, "KVM_IRQ_LINE %u: %m", q->gsi);
    return 0;
}

uint32_t irq_gsi(const struct irq *q) { return q->gsi; }

void irq_destroy(struct irq *q)
{
    if (!q)
        return;
    struct kvm_irqfd f = {.fd = (uint32_t)q->efd, .gsi = q->gsi, .flags = KVM_IRQFD_FLAG_DEASSIGN};
    ioctl(q->vm_fd, KVM_IRQFD, &f);
    close(q->efd);
    free(q);
}
