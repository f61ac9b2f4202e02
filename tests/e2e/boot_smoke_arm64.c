/*
 * boot_smoke_arm64.c - the least VMM that boots Debian's arm64 Image on the pure boot builders
 * (native/arch/boot.h): KVM VM, vCPUs with PSCI 0.2 (secondaries powered off), an in-kernel
 * vGICv3, RAM at 2 GiB, the Image and an initrd, and our FDT in x0. Devices: a 16550 on MMIO
 * (THR to stdout), a PL031 that answers its primecell ID and the time, and virtio-mmio windows
 * that read as zero so virtio_mmio's probe of each DT node reports "Wrong magic value". PSCI
 * SYSTEM_OFF ends it with 0. Not the product: it proves the FDT and the Image placement right,
 * run by tests/e2e/test_boot_smoke.py inside the emulated aarch64 host. Built static with
 * aarch64-linux-gnu-gcc.
 *
 *   boot_smoke_arm64 IMAGE INITRD CMDLINE VCPUS MEM_MIB TIMEOUT_S
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <linux/kvm.h>
#include "include/vmm.h"
#include "arch/boot.h"

#define RAM_GPA 0x80000000ULL
#define UART_GPA 0x40001000ULL
#define RTC_GPA 0x40002000ULL
#define VIRTIO_GPA 0x40010000ULL
#define NVIRTIO 3
#define CORE_REG(field) (KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | \
                         (offsetof(struct kvm_regs, field) / sizeof(uint32_t)))

static int kvm, vm;

/* the builders' error sink (the native core's lives with its VM code) */
static char last_error[512];
const char *vmm_last_error(void) { return last_error; }
int vmm_err(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    return -err;
}
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint8_t uart[8], uart_dll, uart_dlm;

static void die(const char *what)
{
    fprintf(stderr, "boot_smoke_arm64: %s: %s (%s)\n", what, strerror(errno), vmm_last_error());
    exit(2);
}

static void *slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st))
        die(path);
    void *p = malloc((size_t)st.st_size);
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, (char *)p + got, (size_t)st.st_size - got);
        if (n <= 0)
            die(path);
        got += (size_t)n;
    }
    close(fd);
    *len = got;
    return p;
}

static uint8_t uart_io(uint64_t off, int is_write, uint8_t v)
{
    int dlab = uart[3] & 0x80;
    if (off > 7)
        return 0;
    if (is_write) {
        if (off == 0 && !dlab) {
            fputc(v, stdout);
            fflush(stdout);
        } else if (off == 0) {
            uart_dll = v;
        } else if (off == 1 && dlab) {
            uart_dlm = v;
        } else {
            uart[off] = v;
        }
        return 0;
    }
    switch (off) {
    case 0: return dlab ? uart_dll : 0;
    case 1: return dlab ? uart_dlm : uart[1] & 0x0f;
    case 2: return 0x01;
    case 5: return 0x60;
    case 6:
        if (uart[4] & 0x10)
            return (uint8_t)(((uart[4] & 2) << 3) | ((uart[4] & 1) << 5) | ((uart[4] & 4) << 4) |
                             ((uart[4] & 8) << 4));
        return 0xb0;
    default: return uart[off];
    }
}

/* PL031: data register = seconds since the epoch; primecell ids 0x00041031 / 0xb105f00d */
static uint32_t rtc_read(uint64_t off)
{
    static const uint8_t id[8] = {0x31, 0x10, 0x04, 0x00, 0x0d, 0xf0, 0x05, 0xb1};
    if (off >= 0xfe0 && off < 0x1000)
        return id[(off - 0xfe0) / 4];
    if (off == 0)
        return (uint32_t)time(NULL);
    return 0;
}

struct smoke_vcpu { int fd; struct kvm_run *run; int id; };

static void *vcpu_loop(void *arg)
{
    struct smoke_vcpu *c = arg;
    for (;;) {
        if (ioctl(c->fd, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            die("KVM_RUN");
        }
        struct kvm_run *r = c->run;
        switch (r->exit_reason) {
        case KVM_EXIT_MMIO: {
            uint64_t a = r->mmio.phys_addr;
            pthread_mutex_lock(&lock);
            if (a >= UART_GPA && a < UART_GPA + 0x1000) {
                uint8_t v = uart_io(a - UART_GPA, r->mmio.is_write, r->mmio.data[0]);
                if (!r->mmio.is_write) {
                    memset(r->mmio.data, 0, sizeof(r->mmio.data));
                    r->mmio.data[0] = v;
                }
            } else if (!r->mmio.is_write) {
                uint32_t v = a >= RTC_GPA && a < RTC_GPA + 0x1000 ? rtc_read(a - RTC_GPA) : 0;
                memset(r->mmio.data, 0, sizeof(r->mmio.data));
                memcpy(r->mmio.data, &v, r->mmio.len < 4 ? r->mmio.len : 4);
            }
            pthread_mutex_unlock(&lock);
            break;
        }
        case KVM_EXIT_SYSTEM_EVENT:
            printf("\nboot_smoke: PSCI system event %u (%s)\n", r->system_event.type,
                   r->system_event.type == KVM_SYSTEM_EVENT_SHUTDOWN ? "SYSTEM_OFF" : "other");
            fflush(stdout);
            _exit(r->system_event.type == KVM_SYSTEM_EVENT_SHUTDOWN ? 0 : 3);
        default:
            printf("\nboot_smoke: vCPU %d exit %u\n", c->id, r->exit_reason);
            fflush(stdout);
            _exit(6);
        }
    }
    return NULL;
}

static void set_reg(int fd, uint64_t id, uint64_t v)
{
    struct kvm_one_reg reg = {.id = id, .addr = (uint64_t)(uintptr_t)&v};
    if (ioctl(fd, KVM_SET_ONE_REG, &reg) < 0)
        die("KVM_SET_ONE_REG");
}

static void gic_attr(int fd, uint32_t group, uint64_t attr, void *val)
{
    struct kvm_device_attr a = {.group = group, .attr = attr, .addr = (uint64_t)(uintptr_t)val};
    if (ioctl(fd, KVM_SET_DEVICE_ATTR, &a) < 0)
        die("vGIC attribute");
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: boot_smoke_arm64 IMAGE INITRD CMDLINE VCPUS MEM_MIB TIMEOUT_S\n");
        return 2;
    }
    uint32_t vcpus = (uint32_t)atoi(argv[4]);
    uint64_t ram_size = (uint64_t)atoi(argv[5]) << 20;
    alarm((unsigned)atoi(argv[6]));
    size_t klen, ilen;
    void *kernel = slurp(argv[1], &klen), *initrd = slurp(argv[2], &ilen);

    if ((kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC)) < 0 || (vm = ioctl(kvm, KVM_CREATE_VM, 0)) < 0)
        die("KVM_CREATE_VM");
    uint8_t *ram = mmap(NULL, ram_size, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    struct kvm_userspace_memory_region slot = {.slot = 0, .guest_phys_addr = RAM_GPA,
                                               .memory_size = ram_size, .userspace_addr = (uint64_t)(uintptr_t)ram};
    if (ram == MAP_FAILED || ioctl(vm, KVM_SET_USER_MEMORY_REGION, &slot) < 0)
        die("memory");

    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_vcpu_init init;
    if (ioctl(vm, KVM_ARM_PREFERRED_TARGET, &init) < 0)
        die("KVM_ARM_PREFERRED_TARGET");
    struct smoke_vcpu *cs = calloc(vcpus, sizeof(*cs));
    struct boot_desc d;
    memset(&d, 0, sizeof(d));
    for (uint32_t i = 0; i < vcpus; i++) {
        struct kvm_vcpu_init vi = init;
        vi.features[0] |= 1u << KVM_ARM_VCPU_PSCI_0_2;
        if (i > 0)
            vi.features[0] |= 1u << KVM_ARM_VCPU_POWER_OFF;   /* PSCI CPU_ON starts them */
        cs[i].id = (int)i;
        if ((cs[i].fd = ioctl(vm, KVM_CREATE_VCPU, i)) < 0 || ioctl(cs[i].fd, KVM_ARM_VCPU_INIT, &vi) < 0)
            die("vCPU");
        cs[i].run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, cs[i].fd, 0);
        struct kvm_one_reg reg = {.id = ARM64_SYS_REG(3, 0, 0, 0, 5),   /* MPIDR_EL1 */
                                  .addr = (uint64_t)(uintptr_t)&d.mpidr[i]};
        if (ioctl(cs[i].fd, KVM_GET_ONE_REG, &reg) < 0)
            die("MPIDR_EL1");
    }
    /* vGICv3 once every vCPU exists */
    struct kvm_create_device gic = {.type = KVM_DEV_TYPE_ARM_VGIC_V3};
    if (ioctl(vm, KVM_CREATE_DEVICE, &gic) < 0)
        die("KVM_CREATE_DEVICE vGICv3");
    uint64_t dist = ARM64_GICD_GPA, redist = ARM64_GICR_GPA;
    uint32_t nr_irqs = 128;
    gic_attr((int)gic.fd, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V3_ADDR_TYPE_DIST, &dist);
    gic_attr((int)gic.fd, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V3_ADDR_TYPE_REDIST, &redist);
    gic_attr((int)gic.fd, KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0, &nr_irqs);
    gic_attr((int)gic.fd, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT, NULL);

    struct boot_mem m = {ram, RAM_GPA, ram_size};
    struct arm64_boot b;
    if (arm64_load_image(kernel, klen, &m, ilen, &b))
        die("arm64_load_image");
    memcpy(ram + (b.initrd_gpa - RAM_GPA), initrd, ilen);
    d.vcpus = vcpus;
    d.nmem = 1;
    d.mem_gpa[0] = RAM_GPA;
    d.mem_size[0] = ram_size;
    d.cmdline = argv[3];
    d.initrd_gpa = b.initrd_gpa;
    d.initrd_size = ilen;
    d.gic = (struct boot_gic){ARM64_GICD_GPA, ARM64_GICD_SIZE, ARM64_GICR_GPA, ARM64_GICR_PER_CPU * vcpus};
    memcpy(d.rng_seed, "vmmd boot smoke seed, not random", 32);
    d.rng_seed_len = 32;
    d.devs[d.ndevs++] = (struct boot_dev){BOOT_DEV_UART_16550, BOOT_IRQ_LEVEL, UART_GPA, 0x1000, 1};
    d.devs[d.ndevs++] = (struct boot_dev){BOOT_DEV_PL031, BOOT_IRQ_LEVEL, RTC_GPA, 0x1000, 2};
    for (int i = 0; i < NVIRTIO; i++)
        d.devs[d.ndevs++] = (struct boot_dev){BOOT_DEV_VIRTIO_MMIO, 0, VIRTIO_GPA + 0x1000ULL * i, 0x1000, 16 + (uint32_t)i};
    size_t dtb_len;
    if (arm64_fdt_build(&d, ram + (b.dtb_gpa - RAM_GPA), ARM64_DTB_MAX, &dtb_len))
        die("arm64_fdt_build");
    printf("boot_smoke: Image 0x%llx-0x%llx, DTB 0x%llx (%zu bytes), initrd 0x%llx+%zu, %u vCPUs, "
           "MPIDR[last] 0x%llx\n", (unsigned long long)b.kernel_gpa, (unsigned long long)b.kernel_end,
           (unsigned long long)b.dtb_gpa, dtb_len, (unsigned long long)b.initrd_gpa, ilen, vcpus,
           (unsigned long long)d.mpidr[vcpus - 1]);
    fflush(stdout);

    set_reg(cs[0].fd, CORE_REG(regs.pc), b.pc);
    set_reg(cs[0].fd, CORE_REG(regs.regs[0]), b.x0);
    set_reg(cs[0].fd, CORE_REG(regs.pstate), 0x3c5);   /* EL1h, DAIF masked */
    pthread_t *th = calloc(vcpus, sizeof(*th));
    for (uint32_t i = 0; i < vcpus; i++)
        pthread_create(&th[i], NULL, vcpu_loop, &cs[i]);
    pthread_join(th[0], NULL);
    return 1;
}
