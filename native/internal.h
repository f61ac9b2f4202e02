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
#define VMM_MAX_DEVICES 32
#define VMM_MAX_LAYERS 64
#define VMM_MIN_MEM (1ULL << 20)
#define VMM_MAX_MEM (32ULL << 30)

/* ---- errors and time (vm.c) ---- */
/* errors: set the thread's message, return -err */
int vmm_err(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* prefix the current message, keep the code */
int vmm_err_ctx(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
uint64_t now_ns(void);
struct timespec;
/* *ts = CLOCK_MONOTONIC now + ms: a deadline for pthread_cond_timedwait on our condvars. */
void deadline_in(struct timespec *ts, int ms);
uint32_t crc32c(uint32_t crc, const void *buf, size_t len);   /* vmstate.c */

/* ---- bitmaps: atomic where threads share them ---- */
static inline bool bit_test(const uint8_t *bm, uint64_t i) { return bm[i >> 3] & (1u << (i & 7)); }
static inline void bit_set(uint8_t *bm, uint64_t i) { bm[i >> 3] |= (uint8_t)(1u << (i & 7)); }
static inline size_t bitmap_bytes(uint64_t n) { return (size_t)((n + 7) / 8); }
static inline size_t bitmap_words(uint64_t n) { return (size_t)((n + 63) / 64); }
static inline void abit_set(_Atomic uint64_t *bm, uint64_t i)
{
    atomic_fetch_or_explicit(&bm[i >> 6], 1ULL << (i & 63), memory_order_relaxed);
}
static inline bool abit_test(_Atomic uint64_t *bm, uint64_t i)
{
    return atomic_load_explicit(&bm[i >> 6], memory_order_relaxed) & (1ULL << (i & 63));
}

/* ---- guest memory: the only way anything touches guest RAM (memory.c) ---- */
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
    /* Pages written since the parent snapshot: guest writes harvested from KVM's log, host and
     * device writes, discards. Cleared only for what a snapshot made durable. */
    _Atomic uint64_t *dirty;
    _Atomic uint64_t *removed;   /* discarded since restore: their layer data is stale */
    _Atomic int failed;          /* set before memory stops being truthful (page server gone) */
    char failed_why[256];
    struct mem_layer layers[VMM_MAX_LAYERS]; /* top (newest) first */
    int nlayers;
};
int mem_alloc(struct guest_mem *m, const uint64_t *gpas, const uint64_t *sizes, int n, int backend);
void mem_free(struct guest_mem *m);
void mem_layers_free(struct mem_layer *layers, int n);
void mem_fail(struct guest_mem *m, const char *why);
int mem_register_kvm(struct vmm *vm, bool log_dirty);
int mem_harvest_dirty(struct vmm *vm);                  /* KVM's log into m->dirty */
int mem_map_layers(struct guest_mem *m);                /* mmap backend: base + diffs, copy-on-write */
int mem_protect_layers(struct guest_mem *m);            /* immutable while mapped */
int mem_check_backing(struct guest_mem *m);             /* memory files still whole, server alive */
uint64_t mem_linear(const struct guest_mem *m, uint64_t gpa, uint64_t len, bool *ok);

/* What a host read or a snapshot takes a page from: never by faulting in guest memory that the
 * VM has not touched. */
enum page_src { PAGE_FROM_MEMORY = -2, PAGE_ZERO = -1 /* >= 0: that layer's file */ };
int mem_page_sources(struct guest_mem *m, uint64_t first, uint64_t n, int8_t *out);
/* n pages that all come from `src` (from mem_page_sources) into buf. */
int mem_read_src(struct guest_mem *m, uint64_t first, uint64_t n, int src, uint8_t *buf);
int mem_read_host(struct guest_mem *m, uint64_t off, void *buf, uint64_t len);

/* Device and host access, bounds checked without overflow. gm_write marks pages dirty with an
 * atomic OR. gm_slice hands out a pointer for zero-copy I/O: call gm_done after using it, which
 * fails if memory stopped being truthful meanwhile. */
int gm_read(struct guest_mem *m, uint64_t gpa, void *dst, uint64_t len);
int gm_write(struct guest_mem *m, uint64_t gpa, const void *src, uint64_t len);
void *gm_slice(struct guest_mem *m, uint64_t gpa, uint64_t len, bool write);
int gm_done(struct guest_mem *m);
void gm_mark_dirty(struct guest_mem *m, uint64_t gpa, uint64_t len);
/* Virtqueue indexes: the guest writes them on other CPUs, so ordering matters. */
int gm_load_acquire16(struct guest_mem *m, uint64_t gpa, uint16_t *v);
int gm_store_release16(struct guest_mem *m, uint64_t gpa, uint16_t v);

/* ---- interrupts: devices raise them through an irq object, never through the VM ---- */
struct irq;
int irq_create(int vm_fd, uint32_t gsi, struct irq **out);   /* an irqfd on `gsi` */
int irq_trigger(struct irq *irq);                            /* edge: never blocks */
int irq_set_level(struct irq *irq, int level);               /* KVM_IRQ_LINE */
uint32_t irq_gsi(const struct irq *irq);
void irq_destroy(struct irq *irq);

/* ---- the per-VM event loop thread: ioeventfds, sockets, timers, completions ---- */
struct eventloop;
typedef void (*ev_fn)(void *ctx, uint32_t events);
int evl_create(struct eventloop **out);
int evl_add(struct eventloop *l, int fd, uint32_t events, ev_fn fn, void *ctx);
int evl_del(struct eventloop *l, int fd);
int evl_start(struct eventloop *l);
/* Returns once the loop thread runs no handler and will run none until evl_resume. */
int evl_quiesce(struct eventloop *l, int timeout_ms);
void evl_resume(struct eventloop *l);
void evl_destroy(struct eventloop *l);
uint64_t evl_dispatched(struct eventloop *l);
/* An eventfd the loop owns that a handler registered with KVM_IOEVENTFD. */
int ioevent_register(int vm_fd, int efd, uint64_t addr, uint32_t len, bool pio);
int ioevent_unregister(int vm_fd, int efd, uint64_t addr, uint32_t len, bool pio);

/* ---- buses: address-range dispatch, one callback shape ---- */
enum bus_req_kind { BUS_REQ_NONE = 0, BUS_REQ_GUEST_EXIT, BUS_REQ_POWER_OFF, BUS_REQ_RESET };
struct bus_req {             /* what a device asks of the vCPU loop: it never calls the VM */
    int kind;
    uint64_t value;
};
struct device;
struct bus_range {
    uint64_t base, len;
    struct device *dev;
};
struct bus {
    struct bus_range r[VMM_MAX_DEVICES];
    int n;
};
int bus_add(struct bus *b, uint64_t base, uint64_t len, struct device *dev);
/* 1 handled, 0 nobody there */
int bus_dispatch(const struct bus *b, uint64_t addr, uint8_t *data, uint32_t len, bool is_write,
                 struct bus_req *req);

/* ---- devices: one struct each, an ops table, state saved by their own pair ---- */
enum dev_bus { DEV_BUS_PIO = 1, DEV_BUS_MMIO = 2 };
/* Platform device types, chosen by the arch, not by the caller's configuration. */
enum dev_platform_type { DEV_SERIAL = 1000, DEV_I8042, DEV_ACPI_PM, DEV_PL031 };

/* The snapshot being written (vmm_snapshot: set around the devices' save and snapshot_done)
 * or read (vmm_restore: set around their decode), for devices that keep files beside it (a
 * disk's sealed layer). NULL otherwise (vmm_state_get/set, which have no directory). */
struct dev_snap {
    int dfd;                 /* the snapshot's directory */
    const char *dir;         /* its real path */
    const char *root;        /* restore: files must lie beneath it (NULL: anywhere) */
};
struct dev_env {             /* what a device may use; never the VM itself */
    struct guest_mem *mem;
    struct eventloop *loop;
    int vm_fd;
    struct vm_stats *st;
    const struct dev_snap *snap;
};
struct device {
    const struct device_ops *ops;
    void *priv;
    int type;
    uint32_t id;
    char key[32];            /* vmstate section: "<name>.<id>" */
    int bus;                 /* enum dev_bus */
    uint64_t base, size;     /* its window */
    uint32_t gsi;            /* 0: none */
    struct irq *irq;
    struct dev_env *env;
};
/* A device with no state beyond its version leaves save/decode/apply/free_state NULL; init and
 * destroy may be NULL too. */
struct device_ops {
    const char *name;
    uint32_t version;        /* state version this build writes and reads */
    uint32_t boot_kind;      /* how the guest is told about it (enum boot_dev_kind in
                              * arch/boot.h: ACPI/FDT); 0: not described */
    int (*init)(struct device *d, const struct vmm_device_config *cfg);
    int (*access)(struct device *d, uint64_t off, uint8_t *data, uint32_t len, bool is_write,
                  struct bus_req *req);
    int (*save)(struct device *d, struct enc *e);
    /* Decodes and checks a section into a new state object; changes nothing. */
    int (*decode)(struct device *d, const struct dec_map *m, uint32_t version, void **state);
    void (*apply)(struct device *d, void *state);   /* takes the state; cannot fail */
    void (*free_state)(void *state);
    int (*post_load)(struct device *d);   /* NULL ok: after every section is applied */
    void (*quiesce)(struct device *d);    /* NULL ok: pause, after the event loop */
    void (*resume)(struct device *d);     /* NULL ok */
    void (*destroy)(struct device *d);
    /* NULL ok: vmm_snapshot ended (result 0: durable; else failed): a device that changed
     * files in save (env->snap set) commits or undoes that here. */
    void (*snapshot_done)(struct device *d, int result);
};

struct devmgr {
    struct device devs[VMM_MAX_DEVICES];
    int n;
    uint32_t mmio_slots;     /* next free MMIO slot of the arch's resource map */
    struct dev_env env;
};
struct vmm;
int devmgr_build(struct vmm *vm, const struct vmm_device_config *cfg, unsigned n);
int devmgr_add(struct vmm *vm, int type, uint32_t id, const struct vmm_device_config *cfg);
struct device *devmgr_find(struct devmgr *dm, int type, uint32_t id);
void devmgr_quiesce(struct devmgr *dm);
void devmgr_resume(struct devmgr *dm);
void devmgr_destroy(struct devmgr *dm);
void devmgr_snapshot_done(struct devmgr *dm, int result);
int devmgr_save_config(struct devmgr *dm, struct enc *e);
struct boot_desc;
/* Every device the guest is told about, into the boot description's device list. */
int devmgr_describe(struct devmgr *dm, struct boot_desc *d);
int devmgr_check_config(struct devmgr *dm, const struct dec_map *cfg);
const char *devmgr_type_name(int type);

/* ---- userfaultfd ---- */
struct uffd;
int uffd_setup(struct vmm *vm);
int uffd_prefetch(struct vmm *vm, int fd, const char *name);
int uffd_start(struct vmm *vm);
void uffd_revoke(struct vmm *vm, const char *why);
void uffd_teardown(struct vmm *vm);
int uffd_save_working_set(struct vmm *vm, const char *path);
int uffd_inject(struct vmm *vm, int what);
bool uffd_alive(struct vmm *vm);

/* ---- vCPUs ---- */
enum exit_action { EXIT_CONTINUE = 0, EXIT_STOP, EXIT_SHUTDOWN, EXIT_ERROR, EXIT_GUEST_EXIT,
                   EXIT_RESET };
struct vcpu {
    struct vmm *vm;
    int id;
    int fd;
    struct kvm_run *run;
    size_t run_size;
    pthread_t thread;
    bool thread_started;
    bool parked;
    bool io_pending;         /* last exit was I/O that KVM finishes on the next KVM_RUN */
};
/* Pure: what one exit means. *unhandled counts accesses that reached no device; a device's
 * request (guest exit) comes back in *req. */
enum exit_action vcpu_handle_exit(struct kvm_run *run, size_t run_size, struct bus *pio,
                                  struct bus *mmio, int *unhandled, struct bus_req *req,
                                  char *err, size_t errlen);
int vcpus_start(struct vmm *vm);
void vcpus_kick(struct vmm *vm);
void vcpus_join(struct vmm *vm);
/* Waits up to ms for every vCPU thread to leave its loop; false if some did not. */
bool vcpus_wait_exit(struct vmm *vm, int ms);

/* ---- the VM ---- */
struct vm_stats {
    _Atomic uint64_t exits_total, exits_io, exits_mmio, exits_intr, exits_other, io_unhandled;
    _Atomic uint64_t io_completions;
    _Atomic uint64_t uffd_faults, uffd_pages, uffd_zero_pages, uffd_prefetched, uffd_removes, uffd_fault_ns;
    _Atomic uint64_t debug_mark, debug_marks, dirty_pages, memslot_ns;
};

struct snap_id {             /* what a diff snapshot names its parent by */
    uint8_t id[16];
    uint32_t checksum;       /* CRC32C of the parent's vmstate file */
    char path[4096];         /* where it was, absolute */
};

struct vmm {
    int kvm_fd, vm_fd;
    struct vmm_config cfg;
    struct vmm_device_config devcfg[VMM_MAX_CONFIG_DEVICES];
    struct guest_mem mem;
    struct vcpu vcpus[VMM_MAX_VCPUS];
    struct bus pio, mmio;
    struct devmgr dm;
    struct eventloop *loop;
    struct device *serial;
    void *arch;                 /* arch-private VM data */

    pthread_mutex_t op_lock;    /* serializes VM operations (vm.c: op_begin) */
    pthread_mutex_t lock;       /* state below, parking */
    pthread_cond_t cond;
    int state;                  /* enum vmm_state, under lock */
    int users;                  /* API calls in flight, under lock */
    bool closing;               /* vmm_shutdown: no new calls, blocked ones return */
    _Atomic bool pause_req, stop_req;
    int parked, live_threads;   /* under lock */
    bool loop_quiesced;         /* under op_lock */
    int stop_reason;
    long long exit_code;
    char message[512];

    struct uffd *uffd;
    bool has_parent;
    struct snap_id parent;      /* the snapshot this VM's memory descends from */
    int inject_snapshot_fail;   /* test builds: fail the next snapshot midway */
    struct vm_stats st;
};

/* Called from any thread: ends the VM (guest stop, shutdown or error) and wakes everyone. */
void vm_end(struct vmm *vm, int reason, long long code, const char *msg);
int vm_build(const struct vmm_config *cfg, int backend, struct mem_layer *layers, int nlayers,
             struct vmm **out);
/* Marks a VM FAILED after an operation changed it partway. */
void vm_fail(struct vmm *vm, const char *msg);
/* Public entry points bracket their work with these: enter registers a call in flight (refused
 * once the VM is closing); op also takes the operation lock. */
int vm_enter(struct vmm *vm);
void vm_leave(struct vmm *vm);
int vm_op_begin(struct vmm *vm);
void vm_op_end(struct vmm *vm);
int vm_state_locked(struct vmm *vm);

/* ---- snapshots (snapshot.c: directories and files; vmstate.c: sections) ---- */
int vmstate_frame(const struct enc *body, struct enc *out);
int vmstate_read_fd(int fd, const char *name, uint8_t **buf, size_t *len);
int vmstate_parse(const uint8_t *buf, size_t len, struct dec_map *root);
int vmstate_check_version(const struct dec_map *m, const char *name, uint32_t max);
int vmstate_encode(struct vmm *vm, struct enc *body, int (*memory)(struct enc *, const void *),
                   const void *ctx);
struct decoded_state;
int vmstate_decode(struct vmm *vm, const struct dec_map *root, struct decoded_state **out);
int vmstate_apply(struct vmm *vm, struct decoded_state *ds);
void vmstate_free(struct decoded_state *ds);
int vmstate_read_config(const struct dec_map *root, struct vmm_config *cfg, struct dec_map *devs);
/* Opens `name` beneath dirfd as a regular file without following symlinks or blocking on a
 * FIFO; -ENOENT, or an error naming what was found instead. */
int open_regular(int dirfd, const char *name, int flags, const char *what);
/* Writes buf to `path` atomically (temp file never named until complete, renamed into place,
 * directory synced); never follows a symlink at the temp name. */
int publish_file(const char *path, const void *buf, size_t len);

#endif
