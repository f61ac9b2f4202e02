/* bench.c - the floors benches/ compares real paths with, measured by the same machinery. */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "../../internal.h"
#include "../../include/vmm_test.h"
#include "../../arch.h"
#include "../net_filter.h"

int vmm_test_net_filter(const void *frame, unsigned long long len,
                        const struct vmm_net_policy *p)
{
    int r = p ? net_policy_check(p) : 0;
    if (r)
        return r;
    switch (net_filter(frame, len, p)) {
    case NET_ALLOW: return 0;
    case NET_DENY: return 1;
    default: return 2;
    }
}

int vmm_inject(struct vmm *vm, int what)
{
    int r = vm_op_begin(vm);
    if (r)
        return r;
    switch (what) {
    case VMM_INJECT_UFFD_HANDLER_DEATH:
    case VMM_INJECT_UFFD_HANDLER_STALL:
    case VMM_INJECT_UFFD_HANDLER_UNSTALL:
        r = uffd_inject(vm, what);
        break;
    case VMM_INJECT_SNAPSHOT_FAIL_BEFORE_VMSTATE:
        vm->inject_snapshot_fail = 1;
        break;
    default:
        r = vmm_err(EINVAL, "unknown fault to inject: %d", what);
    }
    vm_op_end(vm);
    return r;
}

/* The floor runs the x86 flat beacon guest (arch_flat_vcpu_regs refuses elsewhere). */
#define FLOOR_SERIAL_PORT 0x3f8

int vmm_bench_floor(const char *memory_file, unsigned long long mem_size,
                    const void *regs, unsigned long long regs_len,
                    unsigned long long *first_byte_ns)
{
    int r = 0, kvm = -1, vmfd = -1, cpu = -1, fd = -1;
    uint8_t *mem = MAP_FAILED;
    struct kvm_run *run = MAP_FAILED;
    int run_size = 0;
    uint64_t gpas[VMM_MAX_REGIONS], sizes[VMM_MAX_REGIONS];
    int n = arch_memory_layout(mem_size, gpas, sizes, VMM_MAX_REGIONS);
    if (n < 0)
        return n;
    if ((fd = open(memory_file, O_RDONLY | O_CLOEXEC)) < 0)
        return vmm_err(errno, "open %s: %m", memory_file);
    mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
    if (mem == MAP_FAILED) { r = vmm_err(errno, "mmap: %m"); goto out; }
    if ((kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC)) < 0) { r = vmm_err(errno, "/dev/kvm: %m"); goto out; }
    if ((vmfd = ioctl(kvm, KVM_CREATE_VM, 0)) < 0) { r = vmm_err(errno, "KVM_CREATE_VM: %m"); goto out; }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        struct kvm_userspace_memory_region reg = {.slot = (uint32_t)i, .guest_phys_addr = gpas[i],
            .memory_size = sizes[i], .userspace_addr = (uint64_t)(uintptr_t)(mem + off)};
        off += sizes[i];
        if (ioctl(vmfd, KVM_SET_USER_MEMORY_REGION, &reg) < 0) { r = vmm_err(errno, "slot: %m"); goto out; }
    }
    if ((cpu = ioctl(vmfd, KVM_CREATE_VCPU, 0)) < 0) { r = vmm_err(errno, "KVM_CREATE_VCPU: %m"); goto out; }
    run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, cpu, 0);
    if (run == MAP_FAILED) { r = vmm_err(errno, "mmap kvm_run: %m"); goto out; }
    if ((r = arch_flat_vcpu_regs(cpu, regs, regs_len)))
        goto out;
    for (int exits = 0; exits < 100000; exits++) {
        if (ioctl(cpu, KVM_RUN, 0) < 0 && errno != EINTR) { r = vmm_err(errno, "KVM_RUN: %m"); goto out; }
        if (run->exit_reason == KVM_EXIT_IO && run->io.port == FLOOR_SERIAL_PORT &&
            run->io.direction == KVM_EXIT_IO_OUT) {
            *first_byte_ns = now_ns();
            goto out;
        }
    }
    r = vmm_err(ETIMEDOUT, "guest wrote no serial byte in 100000 exits");
out:
    if (run != MAP_FAILED) munmap(run, (size_t)run_size);
    if (cpu >= 0) close(cpu);
    if (vmfd >= 0) close(vmfd);
    if (kvm >= 0) close(kvm);
    if (mem != MAP_FAILED) munmap(mem, mem_size);
    if (fd >= 0) close(fd);
    return r;
}

int vmm_bench_uffd_copy(unsigned long long npages, unsigned long long *ns)
{
    size_t len = npages * PAGE_SIZE;
    uint8_t *dst = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    uint8_t *src = aligned_alloc(PAGE_SIZE, PAGE_SIZE);
    int r = 0, fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (dst == MAP_FAILED || !src || fd < 0) {
        r = vmm_err(errno ? errno : ENOMEM, "set-up: %m");
        goto out;
    }
    memset(src, 0x5a, PAGE_SIZE);
    struct uffdio_api api = {.api = UFFD_API};
    struct uffdio_register reg = {.range = {.start = (uint64_t)(uintptr_t)dst, .len = len},
                                  .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(fd, UFFDIO_API, &api) < 0 || ioctl(fd, UFFDIO_REGISTER, &reg) < 0) {
        r = vmm_err(errno, "userfaultfd set-up: %m");
        goto out;
    }
    uint64_t t0 = now_ns();
    for (size_t i = 0; i < npages; i++) {
        struct uffdio_copy c = {.dst = (uint64_t)(uintptr_t)(dst + i * PAGE_SIZE),
                                .src = (uint64_t)(uintptr_t)src, .len = PAGE_SIZE};
        if (ioctl(fd, UFFDIO_COPY, &c) < 0) {
            r = vmm_err(errno, "UFFDIO_COPY: %m");
            goto out;
        }
    }
    *ns = now_ns() - t0;
out:
    if (fd >= 0) close(fd);
    free(src);
    if (dst != MAP_FAILED) munmap(dst, len);
    return r;
}
