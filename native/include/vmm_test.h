/*
 * vmm_test.h - entry points that exist only in the test build (vmmd._native_test): fault
 * injection and the floors benches/ compare real paths with. The production module has none
 * of these, nor the debug and test devices. cffi appends this file to vmm.h as the test cdef.
 */

enum vmm_inject {
    VMM_INJECT_UFFD_HANDLER_DEATH = 1,   /* the page server thread exits as if it crashed */
    VMM_INJECT_UFFD_HANDLER_STALL = 2,   /* it stops serving faults (alive, unresponsive) */
    VMM_INJECT_UFFD_HANDLER_UNSTALL = 3,
    VMM_INJECT_SNAPSHOT_FAIL_BEFORE_VMSTATE = 4  /* the next snapshot fails after its memory */
};
int vmm_inject(struct vmm *vm, int what);

/* mmap + KVM_CREATE_VM + vCPU + registers, run until the first serial byte. `regs` is vCPU 0's
 * "regs" field from a snapshot's vmstate (the general registers as KVM stores them). */
int vmm_bench_floor(const char *memory_file, unsigned long long mem_size,
                    const void *regs, unsigned long long regs_len,
                    unsigned long long *first_byte_ns);
/* virtio-net's egress filter on its own (native/devices/net_filter.c): 0 allow, 1 deny, 2 deny
 * and answer with a reset; -EINVAL when the policy is refused. p NULL: no policy yet. */
int vmm_test_net_filter(const void *frame, unsigned long long len,
                        const struct vmm_net_policy *p);
/* A raw UFFDIO_COPY loop over npages; nanoseconds it took. */
int vmm_bench_uffd_copy(unsigned long long npages, unsigned long long *ns);
