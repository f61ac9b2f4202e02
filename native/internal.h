/* internal.h - what the native core's files share; Python never sees it. */
#ifndef VMM_INTERNAL_H
#define VMM_INTERNAL_H

#include <stdint.h>
#include <stddef.h>
#include <stdbool.h>
#include <pthread.h>
#include <stdatomic.h>
#include <linux/kvm.h>

#include "include/vmm.h"
#include "codec.h"

#define PAGE_SIZE 4096ULL
#define PAGE_SHIFT 12
#define VMM_MAX_REGIONS 4
#define VMM_MAX_DEVICES 16
#define VMM_MAX_LAYERS 64
#define VMM_MIN_MEM (1ULL << 20)
#define VMM_MAX_MEM (32ULL << 30)

/* errors: set the thread's message, return -err */
int vmm_err(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* prefix the current message, keep the code */
int vmm_err_ctx(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
uint64_t now_ns(void);
uint32_t crc32c(uint32_t crc, const void *buf, size_t len);

/* ---- buses: address-range dispatch, one callback shape ---- */
typedef int (*bus_fn)(void *ctx, uint64_t off, uint8_t *data, uint32_t len, bool is_write);
struct bus_range {
    uint64_t base, len;
    bus_fn fn;
    void *ctx;
};
struct bus {
    struct bus_range r[VMM_MAX_DEVICES];
    int n;
};
int bus_add(struct bus *b, uint64_t base, uint64_t len, bus_fn fn, void *ctx);
/* 1 handled, 0 nobody there */
int bus_dispatch(const struct bus *b, uint64_t addr, uint8_t *data, uint32_t len, bool is_write);

/* ---- devices: one state struct each, saved by their own pair ---- */
struct vmm;
struct device_ops {
    const char *name;       /* vmstate section name */
    uint32_t version;       /* section version this build writes and reads */
    int (*save)(void *dev, struct enc *e);
    int (*load)(void *dev, const struct dec_map *fields, uint32_t version);
    void (*destroy)(void *dev);
};
struct device {
    const struct device_ops *ops;
    void *dev;
};
int vm_add_device(struct vmm *vm, const struct device_ops *ops, void *dev);

/* ---- guest memory ---- */
struct mem_region {
    uint64_t gpa, size;
    uint64_t offset;        /* in the linear memory (and memory file) */
    uint8_t *host;
};
struct mem_layer {           /* one memory file in a snapshot chain */
    int fd;
    uint8_t *bitmap;         /* pages present in this file */
};
struct guest_mem {
    int backend;
    uint64_t size;           /* linear bytes */
    uint64_t npages;
    uint8_t *base;           /* one host mapping of the linear memory */
    struct mem_region r[VMM_MAX_REGIONS];
    int nr;
    uint8_t *host_dirty;     /* pages the VMM wrote, for diff snapshots */
    struct mem_layer layers[VMM_MAX_LAYERS]; /* top (newest) first */
    int nlayers;
};
int mem_alloc(struct guest_mem *m, const uint64_t *gpas, const uint64_t *sizes, int n, int backend);
void mem_free(struct guest_mem *m);
void mem_layers_free(struct mem_layer *layers, int n);
/* A host pointer for [gpa, gpa+len) if it lies inside one region, else NULL. */
uint8_t *mem_hva(const struct guest_mem *m, uint64_t gpa, uint64_t len);
void mem_mark_dirty(struct guest_mem *m, uint64_t linear_off, uint64_t len);
int mem_register_kvm(struct vmm *vm, bool log_dirty);
int mem_dirty_bitmap(struct vmm *vm, uint8_t *out);  /* KVM log | host writes; clears both */
int mem_map_layers(struct guest_mem *m);              /* mmap backend: base + diffs, copy-on-write */
int mem_populated(const struct guest_mem *m, uint8_t *out); /* anon: pages that may hold data */

static inline bool bit_test(const uint8_t *bm, uint64_t i) { return bm[i >> 3] & (1u << (i & 7)); }
static inline void bit_set(uint8_t *bm, uint64_t i) { bm[i >> 3] |= (uint8_t)(1u << (i & 7)); }
static inline size_t bitmap_bytes(uint64_t n) { return (size_t)((n + 7) / 8); }

/* ---- userfaultfd ---- */
struct uffd;
int uffd_setup(struct vmm *vm);
int uffd_prefetch(struct vmm *vm, const char *working_set);
int uffd_start(struct vmm *vm);
void uffd_teardown(struct vmm *vm);
int uffd_save_working_set(struct vmm *vm, const char *path);
int uffd_inject_death(struct vmm *vm);

/* ---- vCPUs ---- */
enum exit_action { EXIT_CONTINUE = 0, EXIT_STOP, EXIT_SHUTDOWN, EXIT_ERROR };
struct vcpu {
    struct vmm *vm;
    int id;
    int fd;
    struct kvm_run *run;
    size_t run_size;
    pthread_t thread;
    bool thread_started;
    bool parked;
};
/* Pure: what one exit means. *unhandled counts accesses that reached no device. */
enum exit_action vcpu_handle_exit(struct kvm_run *run, size_t run_size, struct bus *pio,
                                  struct bus *mmio, int *unhandled, char *err, size_t errlen);
int vcpus_start(struct vmm *vm);
void vcpus_kick(struct vmm *vm);
void vcpus_join(struct vmm *vm);

/* ---- the VM ---- */
struct vm_stats {
    _Atomic uint64_t exits_total, exits_io, exits_mmio, exits_intr, exits_other, io_unhandled;
    _Atomic uint64_t uffd_faults, uffd_pages, uffd_zero_pages, uffd_prefetched, uffd_removes, uffd_fault_ns;
    _Atomic uint64_t debug_mark, debug_marks;
};

struct vmm {
    int kvm_fd, vm_fd;
    struct vmm_config cfg;
    struct guest_mem mem;
    struct vcpu vcpus[VMM_MAX_VCPUS];
    struct bus pio, mmio;
    struct device devices[VMM_MAX_DEVICES];
    int ndevices;
    struct serial *serial;
    void *arch;                 /* arch-private VM data */

    pthread_mutex_t lock;
    pthread_cond_t cond;
    int state;                  /* enum vmm_state, under lock */
    _Atomic bool pause_req, stop_req;
    int parked, live_threads;   /* under lock */
    int stop_reason;
    long long exit_code;
    char message[512];

    struct uffd *uffd;
    char parent[4096];          /* snapshot this VM's memory descends from: a diff's parent */
    struct vm_stats st;
};

/* Called from any thread: ends the VM (guest stop, shutdown or error) and wakes everyone. */
void vm_end(struct vmm *vm, int reason, long long code, const char *msg);
int vm_build(const struct vmm_config *cfg, int backend, struct mem_layer *layers, int nlayers,
             struct vmm **out);

/* ---- snapshots ---- */
int vmstate_frame(const struct enc *body, struct enc *out);
int vmstate_read_file(const char *path, uint8_t **buf, size_t *len);
int vmstate_parse(const uint8_t *buf, size_t len, struct dec_map *root);
int vmstate_check_version(const struct dec_map *m, const char *name, uint32_t max);

#endif
