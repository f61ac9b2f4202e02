/*
 * vmm.h - the one boundary between Python (cffi) and the native core.
 *
 * Every function returns 0 (or a count) on success and -errno on failure;
 * the failure's message is then readable through vmm_last_error() in the
 * same thread, the way errno works. The library never exits, never prints
 * and keeps no global state: several VMs may live in one process.
 *
 * cffi reads this file as its cdef, so it holds only declarations cffi can
 * parse: no #include, no macros with expressions, no inline code.
 */

#define VMM_ABI_VERSION 1

#define VMM_MAX_VCPUS 16
#define VMM_ERR_LEN 512

struct vmm;

enum vmm_mem_backend {
    VMM_MEM_ANON = 0,   /* fresh anonymous memory (cold start) */
    VMM_MEM_MMAP = 1,   /* MAP_PRIVATE of the snapshot memory file: copy-on-write */
    VMM_MEM_UFFD = 2    /* anonymous + userfaultfd: pages served lazily from the layer chain */
};

enum vmm_state {
    VMM_STATE_CREATED = 0,  /* built or restored, vCPUs not started */
    VMM_STATE_RUNNING = 1,
    VMM_STATE_PAUSED = 2,   /* all vCPUs parked; the only state in which state is read */
    VMM_STATE_STOPPED = 3,  /* guest exited, shut down, or host stopped it */
    VMM_STATE_FAILED = 4    /* an error ended the VM; see vmm_exit_info.message */
};

enum vmm_stop_reason {
    VMM_STOP_NONE = 0,
    VMM_STOP_HOST = 1,        /* vmm_stop() */
    VMM_STOP_GUEST_EXIT = 2,  /* the guest wrote the debug exit port */
    VMM_STOP_SHUTDOWN = 3,    /* triple fault / reset / PSCI off */
    VMM_STOP_ERROR = 4
};

struct vmm_config {
    unsigned int vcpus;            /* 1..VMM_MAX_VCPUS */
    unsigned long long mem_size;   /* bytes, page multiple, 1 MiB..32 GiB */
    int track_dirty;               /* KVM dirty log on, needed for diff snapshots */
    int debug_devices;             /* debug exit/mark ports and the MMIO test device */
};

/* Where the flat test-guest loader puts things and how it starts the vCPUs. */
struct vmm_flat_boot {
    unsigned long long load_gpa;   /* image is copied here */
    unsigned long long entry;      /* first instruction, every vCPU */
    unsigned long long stack_top;  /* vCPU n gets stack_top - n * stack_size */
    unsigned long long stack_size;
};

struct vmm_exit_info {
    int state;                 /* enum vmm_state */
    int reason;                /* enum vmm_stop_reason */
    long long exit_code;       /* value written to the debug exit port */
    char message[512];
};

struct vmm_stats {
    unsigned long long exits_total;
    unsigned long long exits_io;
    unsigned long long exits_mmio;
    unsigned long long exits_intr;      /* signal kicks, immediate exits */
    unsigned long long exits_other;
    unsigned long long io_unhandled;    /* accesses to no device */
    unsigned long long uffd_faults;     /* page faults served by the handler */
    unsigned long long uffd_pages;      /* pages those faults installed (with fault-around) */
    unsigned long long uffd_zero_pages; /* of those, served with a zero page */
    unsigned long long uffd_prefetched; /* working-set pages installed before start */
    unsigned long long uffd_removes;    /* REMOVE events (guest memory discarded) */
    unsigned long long uffd_fault_ns;   /* time the handler spent serving faults */
    unsigned long long serial_bytes;    /* bytes the guest wrote to the serial port */
    unsigned long long serial_dropped;  /* output lost because the host did not read */
    unsigned long long first_serial_ns; /* CLOCK_MONOTONIC of the first serial byte, 0 = none */
    unsigned long long debug_mark;      /* last value written to the debug mark port */
    unsigned long long debug_marks;     /* how many marks were written */
};

struct vmm_snapshot_opts {
    int diff;                  /* only pages dirtied since the parent (last snapshot or restore) */
};

struct vmm_restore_opts {
    int backend;               /* VMM_MEM_MMAP or VMM_MEM_UFFD */
    const char *working_set;   /* uffd: page list to install before start, NULL = none */
    int track_dirty;           /* keep dirty logging on in the restored VM */
};

struct vmm_snapshot_info {
    unsigned long long mem_size;
    unsigned int vcpus;
    int diff;
    unsigned long long pages;  /* pages stored in this layer's memory file */
    unsigned int depth;        /* 0 for a full snapshot, else layers above the base */
};

const char *vmm_last_error(void);
const char *vmm_version(void);

int vmm_create(const struct vmm_config *cfg, struct vmm **out);
void vmm_destroy(struct vmm *vm);

int vmm_load_flat(struct vmm *vm, const void *image, unsigned long long len,
                  const struct vmm_flat_boot *boot);

int vmm_start(struct vmm *vm);
int vmm_pause(struct vmm *vm);
int vmm_resume(struct vmm *vm);
int vmm_stop(struct vmm *vm);
/* Waits for the VM to stop or fail; -ETIMEDOUT after timeout_ms (<0 = forever). */
int vmm_wait(struct vmm *vm, int timeout_ms, struct vmm_exit_info *info);
int vmm_get_state(struct vmm *vm);
int vmm_get_stats(struct vmm *vm, struct vmm_stats *out);

/* Serial: bytes the guest wrote, oldest first; and bytes for the guest to read. */
int vmm_serial_read(struct vmm *vm, void *buf, unsigned long long len);
int vmm_serial_write(struct vmm *vm, const void *buf, unsigned long long len);

/* Host access to guest memory; a write is tracked for diff snapshots. */
int vmm_mem_read(struct vmm *vm, unsigned long long gpa, void *buf, unsigned long long len);
int vmm_mem_write(struct vmm *vm, unsigned long long gpa, const void *buf, unsigned long long len);
/* Give pages back (what a balloon does): they read as zero afterwards. */
int vmm_mem_discard(struct vmm *vm, unsigned long long gpa, unsigned long long len);

/* Snapshots: `dir` must exist; writes dir/vmstate and dir/memory. VM must be paused. */
int vmm_snapshot(struct vmm *vm, const char *dir, const struct vmm_snapshot_opts *opts);
int vmm_restore(const char *dir, const struct vmm_restore_opts *opts, struct vmm **out);
int vmm_snapshot_inspect(const char *dir, struct vmm_snapshot_info *info);

/* The encoded vmstate of a paused or created VM, and loading one into it. */
int vmm_state_size(struct vmm *vm, unsigned long long *size);
int vmm_state_get(struct vmm *vm, void *buf, unsigned long long len, unsigned long long *used);
int vmm_state_set(struct vmm *vm, const void *buf, unsigned long long len);

/* uffd: the pages faulted in, in first-touch order, saved for a later restore. */
int vmm_working_set_save(struct vmm *vm, const char *path);

/* Fault injection for tests of the failure paths. */
enum vmm_inject {
    VMM_INJECT_UFFD_HANDLER_DEATH = 1
};
int vmm_inject(struct vmm *vm, int what);

/* Measurement helpers for benches/: each measures the floor a real path is compared with. */
/* mmap + KVM_CREATE_VM + vCPU + registers, run until the first serial byte. `regs` is vCPU 0's
 * "regs" field from a snapshot's vmstate (the general registers as KVM stores them). */
int vmm_bench_floor(const char *memory_file, unsigned long long mem_size,
                    const void *regs, unsigned long long regs_len,
                    unsigned long long *first_byte_ns);
/* A raw UFFDIO_COPY loop over npages; nanoseconds it took. */
int vmm_bench_uffd_copy(unsigned long long npages, unsigned long long *ns);
