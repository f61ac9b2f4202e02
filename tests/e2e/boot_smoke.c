/*
 * boot_smoke.c - the least VMM that boots a stock Debian x86_64 kernel on the pure boot builders
 * (native/arch/boot.h): KVM VM with in-kernel irqchip and PIT, one RAM slot, CPUID from KVM, the
 * ELF vmlinux and an initrd, ACPI tables, PVH start info, and just enough devices to watch the
 * kernel use them: a 16550 at 0x3f8 (scratch, loopback, THR to stdout), the ACPI sleep ports
 * at 0x600 (S5 = exit 0), i8042 reset (exit 3), virtio-mmio windows that read as zero so
 * virtio_mmio's probe of every ACPI LNRO0005 device reports "Wrong magic value", and a VMGenID
 * whose id changes (with an edge on the GED's GSI) once the guest's init has reported it bound.
 * Not the product: the native core will do this properly. It proves the tables and the PVH
 * boot are right, run by tests/e2e/test_boot_smoke.py inside the emulated x86_64 host.
 *
 *   boot_smoke VMLINUX INITRD CMDLINE VCPUS MEM_MIB TIMEOUT_S
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/kvm.h>
#include "include/vmm.h"
#include "arch/boot.h"

#define MMIO_BASE 0xd0000000ULL
#define NVIRTIO 3
#define SLEEP_PORT 0x600

#define VMGENID_GSI 9

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

static int kvm, vm;
static uint8_t *ram;
static uint64_t ram_size;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint8_t uart[8], uart_dll, uart_dlm;
static char line[256];
static size_t line_len;

static void die(const char *what)
{
    fprintf(stderr, "boot_smoke: %s: %s (%s)\n", what, strerror(errno), vmm_last_error());
    exit(2);
}

/* What a restore does for VMGenID: a new id in guest memory, then an edge on the GED's GSI.
 * Done once the init says "SMOKE: vmgenid:", so the driver is bound when it happens. */
static void new_generation(void)
{
    struct kvm_irq_level l = {.irq = VMGENID_GSI, .level = 1};
    memcpy(ram + X86_VMGENID_GPA, "vmmd-restored-1!", 16);
    if (ioctl(vm, KVM_IRQ_LINE, &l) < 0)
        die("KVM_IRQ_LINE");
    l.level = 0;
    if (ioctl(vm, KVM_IRQ_LINE, &l) < 0)
        die("KVM_IRQ_LINE");
    printf("\nboot_smoke: new VMGenID, GSI %d pulsed\n", VMGENID_GSI);
}

static void uart_out(uint8_t c)
{
    fputc(c, stdout);
    if (c != '\n' && line_len < sizeof(line) - 1) {
        line[line_len++] = (char)c;
        return;
    }
    line[line_len] = 0;
    line_len = 0;
    if (strstr(line, "SMOKE: vmgenid:"))
        new_generation();
    fflush(stdout);
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

/* 16550: registers kept, LSR always ready, loopback for the 8250 driver's probe. */
static uint8_t uart_io(uint16_t off, int is_write, uint8_t v)
{
    int dlab = uart[3] & 0x80;
    if (is_write) {
        if (off == 0 && !dlab) {
            uart_out(v);
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
    case 2: return 0x01;                                   /* IIR: nothing pending */
    case 5: return 0x60;                                   /* LSR: THR and shifter empty */
    case 6:                                                /* MSR */
        if (uart[4] & 0x10)                                /* loopback: MCR -> MSR */
            return (uint8_t)(((uart[4] & 2) << 3) | ((uart[4] & 1) << 5) | ((uart[4] & 4) << 4) |
                             ((uart[4] & 8) << 4));
        return 0xb0;                                       /* DCD, DSR, CTS */
    default: return uart[off];
    }
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
        case KVM_EXIT_IO: {
            uint8_t *d = (uint8_t *)r + r->io.data_offset;
            int w = r->io.direction == KVM_EXIT_IO_OUT;
            pthread_mutex_lock(&lock);
            for (uint32_t i = 0; i < r->io.count; i++, d += r->io.size) {
                uint16_t p = r->io.port;
                if (p >= 0x3f8 && p < 0x400) {
                    uint8_t v = uart_io(p - 0x3f8, w, d[0]);
                    if (!w)
                        d[0] = v;
                } else if (p == SLEEP_PORT && w) {
                    printf("\nboot_smoke: sleep control 0x%02x\n", d[0]);
                    if (d[0] == 0x34) {
                        printf("boot_smoke: S5 power-off\n");
                        fflush(stdout);
                        _exit(0);
                    }
                } else if (p == 0x64 && w && d[0] == 0xfe) {
                    printf("\nboot_smoke: i8042 reset\n");
                    fflush(stdout);
                    _exit(3);
                } else if (!w) {
                    memset(d, 0xff, r->io.size);
                }
            }
            pthread_mutex_unlock(&lock);
            break;
        }
        case KVM_EXIT_MMIO:
            if (!r->mmio.is_write)
                memset(r->mmio.data, 0, sizeof(r->mmio.data));
            break;
        case KVM_EXIT_SHUTDOWN:
            printf("\nboot_smoke: vCPU %d shutdown (triple fault)\n", c->id);
            fflush(stdout);
            _exit(4);
        case KVM_EXIT_SYSTEM_EVENT:
            printf("\nboot_smoke: system event %u\n", r->system_event.type);
            fflush(stdout);
            _exit(5);
        case KVM_EXIT_INTERNAL_ERROR:
            printf("\nboot_smoke: vCPU %d internal error %u\n", c->id, r->internal.suberror);
            fflush(stdout);
            _exit(7);
        default:
            printf("\nboot_smoke: vCPU %d exit %u\n", c->id, r->exit_reason);
            fflush(stdout);
            _exit(6);
        }
    }
    return NULL;
}

/* CPUID from KVM with this vCPU's APIC id (leaf 1 EBX[31:24], leaf 0xb EDX), as the native
 * core's arch/x86_64/cpu.c does for new VMs. */
static void set_cpuid(int fd, int id)
{
    struct { struct kvm_cpuid2 h; struct kvm_cpuid_entry2 e[256]; } c = {.h.nent = 256};
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, &c) < 0)
        die("KVM_GET_SUPPORTED_CPUID");
    for (uint32_t i = 0; i < c.h.nent; i++) {
        struct kvm_cpuid_entry2 *e = &c.e[i];
        if (e->function == 1) {
            e->ebx = (e->ebx & 0x00ffffff) | ((uint32_t)id << 24);
            e->ecx |= 1u << 31;    /* hypervisor present: else Linux never looks for kvmclock */
        }
        if (e->function == 0xb || e->function == 0x1f)
            e->edx = (uint32_t)id;
    }
    if (ioctl(fd, KVM_SET_CPUID2, &c) < 0)
        die("KVM_SET_CPUID2");
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: boot_smoke VMLINUX INITRD CMDLINE VCPUS MEM_MIB TIMEOUT_S\n");
        return 2;
    }
    uint32_t vcpus = (uint32_t)atoi(argv[4]);
    ram_size = (uint64_t)atoi(argv[5]) << 20;
    alarm((unsigned)atoi(argv[6]));
    size_t klen, ilen;
    void *kernel = slurp(argv[1], &klen), *initrd = slurp(argv[2], &ilen);

    if ((kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC)) < 0 || (vm = ioctl(kvm, KVM_CREATE_VM, 0)) < 0)
        die("KVM_CREATE_VM");
    uint64_t ident = 0xfffbc000;
    if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000) < 0 || ioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &ident) < 0)
        die("TSS");
    ram = mmap(NULL, ram_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    struct kvm_userspace_memory_region slot = {.slot = 0, .guest_phys_addr = 0,
                                               .memory_size = ram_size, .userspace_addr = (uint64_t)ram};
    if (ram == MAP_FAILED || ioctl(vm, KVM_SET_USER_MEMORY_REGION, &slot) < 0)
        die("memory");
    struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
    if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0 || ioctl(vm, KVM_CREATE_PIT2, &pit) < 0)
        die("irqchip");

    /* the description the device manager would fill */
    struct boot_desc d;
    memset(&d, 0, sizeof(d));
    d.vcpus = vcpus;
    d.nmem = 1;
    d.mem_size[0] = ram_size;
    d.mmio_gpa = 0xc0000000ULL;
    d.mmio_size = 0x40000000ULL;
    d.cmdline = argv[3];
    d.devs[d.ndevs++] = (struct boot_dev){BOOT_DEV_UART_16550, 0, 0x3f8, 8, 4};
    for (int i = 0; i < NVIRTIO; i++)
        d.devs[d.ndevs++] = (struct boot_dev){BOOT_DEV_VIRTIO_MMIO, 0, MMIO_BASE + 0x1000ULL * i, 0x1000, 5 + i};
    d.devs[d.ndevs++] = (struct boot_dev){BOOT_DEV_VMGENID, 0, X86_VMGENID_GPA, 16, VMGENID_GSI};
    d.devs[d.ndevs++] = (struct boot_dev){BOOT_DEV_ACPI_SLEEP, BOOT_IRQ_NONE, SLEEP_PORT, 2, 0};
    memcpy(ram + X86_VMGENID_GPA, "vmmd-generation!", 16);

    struct boot_mem m = {ram, 0, ram_size};
    struct x86_kernel k;
    struct x86_boot_regs b;
    uint64_t rsdp;
    if (x86_load_elf(kernel, klen, &m, &k) ||
        x86_acpi_build(&d, ram + X86_ACPI_GPA, X86_ACPI_SIZE, X86_ACPI_GPA, &rsdp, NULL) ||
        x86_initrd_gpa(&d, &k, ilen, &d.initrd_gpa))
        die("boot builders");
    d.initrd_size = ilen;
    memcpy(ram + d.initrd_gpa, initrd, ilen);
    if (x86_boot_pvh(&d, &k, rsdp, &m, &b))
        die("x86_boot_pvh");
    printf("boot_smoke: PVH entry 0x%llx, kernel 0x%llx-0x%llx, initrd 0x%llx+%zu, %u vCPUs\n",
           (unsigned long long)k.pvh_entry, (unsigned long long)k.lo, (unsigned long long)k.hi,
           (unsigned long long)d.initrd_gpa, ilen, vcpus);
    fflush(stdout);

    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct smoke_vcpu *cs = calloc(vcpus, sizeof(*cs));
    pthread_t *th = calloc(vcpus, sizeof(*th));
    for (uint32_t i = 0; i < vcpus; i++) {
        cs[i].id = (int)i;
        if ((cs[i].fd = ioctl(vm, KVM_CREATE_VCPU, i)) < 0)
            die("KVM_CREATE_VCPU");
        cs[i].run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, cs[i].fd, 0);
        set_cpuid(cs[i].fd, (int)i);
    }
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    if (ioctl(cs[0].fd, KVM_GET_REGS, &regs) < 0 || ioctl(cs[0].fd, KVM_GET_SREGS, &sregs) < 0)
        die("KVM_GET_SREGS");
    x86_boot_regs_apply(&b, &regs, &sregs);
    if (ioctl(cs[0].fd, KVM_SET_SREGS, &sregs) < 0 || ioctl(cs[0].fd, KVM_SET_REGS, &regs) < 0)
        die("KVM_SET_REGS");
    for (uint32_t i = 0; i < vcpus; i++)
        pthread_create(&th[i], NULL, vcpu_loop, &cs[i]);
    pthread_join(th[0], NULL);
    return 1;
}
