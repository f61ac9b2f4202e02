/*
 * virtio_linux: a static Linux program for the e2e tests' guests (not a CPL3 test guest).
 *   virtiotool listen PORT        accept vsock connections on PORT forever, echo every byte back
 *   virtiotool connect PORT MSG   connect to CID 2 (the host) PORT, send MSG, print the reply
 *   virtiotool garbage            a hostile guest: take the virtio-rng device away from the kernel
 *                                 (unbind its virtio-mmio platform device), drive its registers
 *                                 through /dev/mem with rings in our own locked pages (physical
 *                                 addresses from /proc/self/pagemap), write garbage into them, and
 *                                 report whether the device answered with DEVICE_NEEDS_RESET; then
 *                                 check a good request still works after a reset
 * Prints "VMMD: ..." lines on stdout, which the init sends to the serial console.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <linux/vm_sockets.h>
#include <time.h>
#include <unistd.h>

static int listen_forever(unsigned port)
{
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)) || listen(s, 8)) {
        printf("VMMD: vsock listen %u failed: %s\n", port, strerror(errno));
        return 1;
    }
    printf("VMMD: vsock listening %u\n", port);
    fflush(stdout);
    signal(SIGCHLD, SIG_IGN);
    for (unsigned n = 1;; n++) {
        int c = accept(s, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR)
                continue;
            printf("VMMD: vsock accept failed: %s\n", strerror(errno));
            fflush(stdout);
            sleep(1);
            continue;
        }
        printf("VMMD: vsock accepted %u\n", n);
        fflush(stdout);
        if (fork() == 0) {
            char buf[65536];
            ssize_t got;
            while ((got = read(c, buf, sizeof(buf))) > 0)
                for (ssize_t off = 0; off < got;) {
                    ssize_t w = write(c, buf + off, (size_t)(got - off));
                    if (w <= 0)
                        _exit(1);
                    off += w;
                }
            _exit(0);
        }
        close(c);
    }
}

static int connect_once(unsigned port, const char *msg)
{
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = port};
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a))) {
        printf("VMMD: vsock connect %u failed: %s\n", port, strerror(errno));
        return 1;
    }
    if (write(s, msg, strlen(msg)) != (ssize_t)strlen(msg))
        return 1;
    char buf[256];
    ssize_t got = read(s, buf, sizeof(buf) - 1);
    buf[got > 0 ? got : 0] = 0;
    printf("VMMD: vsock reply %s\n", buf);
    close(s);
    return got > 0 ? 0 : 1;
}

/* ---------- garbage ---------- */

static volatile uint32_t *regs;
static uint8_t *pages;                  /* 4 locked pages: desc, avail, used, data */
static uint64_t phys[4];

static uint32_t rd(uint32_t off) { return regs[off / 4]; }
static void wr(uint32_t off, uint32_t v) { regs[off / 4] = v; __sync_synchronize(); }

static int read_file(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    buf[n > 0 ? n : 0] = 0;
    return n > 0 ? 0 : -1;
}

/* The virtio-mmio platform device whose virtio device has id `want`, and its MMIO start. */
static int find_device(unsigned want, char *name, size_t nlen, uint64_t *start)
{
    const char *drv = "/sys/bus/platform/drivers/virtio-mmio";
    DIR *d = opendir(drv);
    struct dirent *e;
    int found = -1;
    while (d && found && (e = readdir(d))) {
        char sub[512], buf[64];
        snprintf(sub, sizeof(sub), "%s/%s", drv, e->d_name);
        DIR *s = opendir(sub);
        struct dirent *v;
        while (s && found && (v = readdir(s))) {
            if (strncmp(v->d_name, "virtio", 6) || !strcmp(v->d_name, "virtio-mmio"))
                continue;
            char dev[1024];
            snprintf(dev, sizeof(dev), "%s/%s/device", sub, v->d_name);
            if (!read_file(dev, buf, sizeof(buf)) && strtoul(buf, NULL, 16) == want) {
                snprintf(name, nlen, "%s", e->d_name);
                found = 0;
            }
        }
        if (s)
            closedir(s);
    }
    if (d)
        closedir(d);
    if (found) {
        printf("VMMD: garbage: no virtio-mmio device with id %u under %s\n", want, drv);
        return -1;
    }
    FILE *f = fopen("/proc/iomem", "r");
    char line[256];
    while (f && fgets(line, sizeof(line), f)) {
        char *colon = strstr(line, " : ");
        if (colon && !strncmp(colon + 3, name, strlen(name)) && colon[3 + strlen(name)] == '\n') {
            *start = strtoull(line + strspn(line, " "), NULL, 16);
            fclose(f);
            return 0;
        }
    }
    if (f)
        fclose(f);
    /* a device-tree device is named "<address>.<node>": the name says where it is */
    char *end;
    uint64_t at = strtoull(name, &end, 16);
    if (end != name && *end == '.') {
        *start = at;
        return 0;
    }
    printf("VMMD: garbage: %s is not in /proc/iomem\n", name);
    return -1;
}

static int setup_queue(void)
{
    memset(pages, 0, 3 * 4096);
    wr(0x70, 0);
    wr(0x70, 3);
    wr(0x24, 1);
    wr(0x20, 1);                        /* VIRTIO_F_VERSION_1 */
    wr(0x24, 0);
    wr(0x20, 0);
    wr(0x70, 3 | 8);
    if (!(rd(0x70) & 8))
        return -1;
    wr(0x30, 0);
    wr(0x38, 16);
    wr(0x80, (uint32_t)phys[0]); wr(0x84, (uint32_t)(phys[0] >> 32));
    wr(0x90, (uint32_t)phys[1]); wr(0x94, (uint32_t)(phys[1] >> 32));
    wr(0xa0, (uint32_t)phys[2]); wr(0xa4, (uint32_t)(phys[2] >> 32));
    wr(0x44, 1);
    wr(0x70, 0xf);
    return rd(0x70) == 0xf ? 0 : -1;
}

struct vdesc { uint64_t addr; uint32_t len; uint16_t flags, next; };

static void publish(uint16_t head, uint16_t idx)
{
    volatile uint16_t *avail = (volatile uint16_t *)(pages + 4096);
    avail[2] = head;
    __sync_synchronize();
    avail[1] = idx;
    __sync_synchronize();
    wr(0x50, 0);
}

static int wait_status(uint32_t bit)
{
    for (int i = 0; i < 2000; i++) {
        if (rd(0x70) & bit)
            return 0;
        usleep(1000);
    }
    return -1;
}

static int garbage(void)
{
    char name[256];
    uint64_t start;
    if (find_device(4, name, sizeof(name), &start)) {
        printf("VMMD: garbage: no virtio-rng device found\n");
        return 1;
    }
    int u = open("/sys/bus/platform/drivers/virtio-mmio/unbind", O_WRONLY);
    if (u < 0 || write(u, name, strlen(name)) < 0) {
        printf("VMMD: garbage: unbinding %s: %s\n", name, strerror(errno));
        return 1;
    }
    close(u);
    int mem = open("/dev/mem", O_RDWR | O_SYNC);
    regs = mem < 0 ? MAP_FAILED : mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, mem, (off_t)start);
    if (regs == MAP_FAILED || rd(0) != 0x74726976u || rd(8) != 4) {
        printf("VMMD: garbage: cannot map the device at %#llx: %s\n", (unsigned long long)start,
               strerror(errno));
        return 1;
    }
    pages = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED,
                 -1, 0);
    int pm = open("/proc/self/pagemap", O_RDONLY);
    for (int i = 0; i < 4; i++) {
        pages[i * 4096] = 1;
        uint64_t ent = 0;
        if (pread(pm, &ent, 8, (off_t)((uintptr_t)(pages + i * 4096) / 4096 * 8)) != 8 ||
            !(ent >> 63)) {
            printf("VMMD: garbage: no physical address for our pages\n");
            return 1;
        }
        phys[i] = (ent & ((1ULL << 55) - 1)) * 4096;
    }
    struct vdesc *desc = (struct vdesc *)pages;
    int kinds = 0, refused = 0;
    for (int kind = 0; kind < 4; kind++, kinds++) {
        if (setup_queue()) {
            printf("VMMD: garbage: set-up failed\n");
            return 1;
        }
        switch (kind) {
        case 0:   /* a descriptor chained to itself */
            desc[0] = (struct vdesc){phys[3], 64, 1 | 2, 0};
            publish(0, 1);
            break;
        case 1:   /* a buffer far outside RAM */
            desc[0] = (struct vdesc){1ULL << 46, 64, 2, 0};
            publish(0, 1);
            break;
        case 2:   /* the avail index 1000 ahead */
            desc[0] = (struct vdesc){phys[3], 64, 2, 0};
            publish(0, 1000);
            break;
        case 3:   /* next index past the queue */
            desc[0] = (struct vdesc){phys[3], 64, 1 | 2, 999};
            publish(0, 1);
            break;
        }
        if (!wait_status(0x40))
            refused++;
    }
    /* after a reset the device serves a good request */
    int good = -1;
    if (!setup_queue()) {
        memset(pages + 3 * 4096, 0, 64);
        desc[0] = (struct vdesc){phys[3], 64, 2, 0};
        publish(0, 1);
        volatile uint16_t *used = (volatile uint16_t *)(pages + 2 * 4096);
        for (int i = 0; i < 2000 && used[1] != 1; i++)
            usleep(1000);
        uint64_t any = 0;
        for (int i = 0; i < 8; i++)
            any |= ((volatile uint64_t *)(pages + 3 * 4096))[i];
        good = used[1] == 1 && any ? 0 : 1;
    }
    printf("VMMD: garbage refused %d of %d, then a good request %s\n", refused, kinds,
           good == 0 ? "served" : "failed");
    return refused == kinds && good == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "garbage"))
        return garbage();
    if (argc == 3 && !strcmp(argv[1], "listen"))
        return listen_forever((unsigned)atoi(argv[2]));
    if (argc == 4 && !strcmp(argv[1], "connect"))
        return connect_once((unsigned)atoi(argv[2]), argv[3]);
    fprintf(stderr, "usage: virtiotool listen PORT | connect PORT MSG | garbage\n");
    return 2;
}
