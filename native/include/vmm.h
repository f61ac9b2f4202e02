/*
 * vmm.h - the one boundary between Python (cffi) and the native core.
 *
 * Every function returns 0 (or a count) on success and -errno on failure;
 * the failure's message is then readable through vmm_last_error() in the
 * same thread, the way errno works. The library never exits, never prints
 * and keeps no mutable global state: several VMs may live in one process.
 *
 * A handle has one owner. Operations on one VM (start, pause, resume, stop,
 * snapshot, state get/set, host memory writes and discards) are serialized;
 * vmm_shutdown() makes every call in flight or to come return, and
 * vmm_destroy() waits for calls in flight before it frees the VM.
 *
 * cffi reads this file as its cdef, so it holds only declarations cffi can
 * parse: no #include, no macros with expressions, no inline code.
 */

#define VMM_ABI_VERSION 3

#define VMM_MAX_VCPUS 16
#define VMM_MAX_CONFIG_DEVICES 24
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
    VMM_STATE_PAUSED = 2,   /* vCPUs parked, I/O completed, devices quiesced: state is read here */
    VMM_STATE_STOPPED = 3,  /* guest exited, shut down, or host stopped it */
    VMM_STATE_FAILED = 4    /* an error ended the VM; see vmm_exit_info.message */
};

enum vmm_stop_reason {
    VMM_STOP_NONE = 0,
    VMM_STOP_HOST = 1,        /* vmm_stop() / vmm_shutdown() */
    VMM_STOP_GUEST_EXIT = 2,  /* the guest wrote the debug exit port (test builds) */
    VMM_STOP_SHUTDOWN = 3,    /* the guest powered off (ACPI S5, PSCI SYSTEM_OFF) */
    VMM_STOP_ERROR = 4,
    VMM_STOP_RESET = 5        /* the guest asked for a reset (i8042, PSCI SYSTEM_RESET) or
                               * triple-faulted: vmmd does not reboot a MicroVM */
};

/* Devices a VM is configured with, beyond the platform's own (serial, ...). The same list is
 * given to create and to restore: a restore builds its devices from the host's configuration
 * and refuses a snapshot whose recorded device set differs. Slots (MMIO windows, interrupts)
 * are handed out in list order. Types below 100 are production devices; 100 and up exist only
 * in test builds. */
enum vmm_device_type {
    VMM_DEV_VIRTIO_BLK = 1,
    VMM_DEV_VIRTIO_VSOCK = 2,
    VMM_DEV_VIRTIO_RNG = 3,
    VMM_DEV_VIRTIO_NET = 4,   /* egress filtered by vmm_net_set_policy (deny until set) */
    VMM_DEV_VMGENID = 5,      /* x86_64: a VM generation id the kernel reseeds from on restore */
    VMM_DEV_DEBUG = 100,      /* test builds: exit/mark/counter port */
    VMM_DEV_TESTDEV = 101     /* test builds: MMIO scratch, counters, doorbell + DMA */
};

struct vmm_device_config {
    int type;                  /* enum vmm_device_type */
    unsigned int id;           /* unique per type within the VM; names its vmstate section */
    const char *path;          /* blk: the read-only base image; vsock: the host Unix socket;
                                * net: the backend's Unix stream socket (passt --socket) */
    const char *overlay;       /* blk: the VM's writable copy-on-write layer */
    unsigned long long size;   /* blk: the disk's size cap in bytes (at most 32 GiB) */
    unsigned long long cid;    /* vsock: the guest's context id (3 and up) */
    int read_only;             /* blk: no writable layer */
    unsigned char mac[6];      /* net: the guest's MAC (a restore offers the new config's) */
    unsigned int mtu;          /* net: offered to the guest, 68..65535, 0 = 1500 */
};

struct vmm_config {
    unsigned int vcpus;            /* 1..VMM_MAX_VCPUS */
    unsigned long long mem_size;   /* bytes, page multiple, 1 MiB..32 GiB */
    int track_dirty;               /* KVM dirty log on, needed for diff snapshots */
    unsigned int ndevices;
    const struct vmm_device_config *devices;
};

/* A stock Linux kernel: x86_64 an ELF vmlinux (PVH entry, else the 64-bit boot protocol),
 * aarch64 an Image; the initrd and command line as the kernel takes them. */
struct vmm_linux_boot {
    const char *kernel;
    const char *initrd;            /* NULL: none */
    const char *cmdline;           /* NULL: empty */
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
    unsigned long long io_completions;  /* pauses that had to finish an I/O instruction first */
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
    unsigned long long dirty_pages;     /* pages dirtied since the parent snapshot, as last counted */
    unsigned long long memslot_ns;      /* time KVM took to register guest memory (its per-page
                                           metadata grows with the guest on shadow-paging hosts) */
};

struct vmm_snapshot_opts {
    int diff;                  /* only pages dirtied since the parent (last snapshot or restore) */
};

struct vmm_restore_opts {
    int backend;               /* VMM_MEM_MMAP or VMM_MEM_UFFD */
    const char *working_set;   /* uffd: page list to install before start, NULL = none */
    int track_dirty;           /* keep dirty logging on in the restored VM */
    const char *root;          /* NULL, or a directory every snapshot of the chain must lie beneath */
    unsigned int ndevices;     /* the devices to restore with: as given to vmm_create */
    const struct vmm_device_config *devices;
};

struct vmm_snapshot_info {
    unsigned long long mem_size;
    unsigned int vcpus;
    int diff;
    unsigned long long pages;  /* pages stored in this layer's memory file */
    unsigned int depth;        /* 0 for a full snapshot, else layers above the base */
    unsigned char id[16];      /* this snapshot's random id */
    unsigned int checksum;     /* CRC32C of its vmstate: with the id, what a child names */
};

const char *vmm_last_error(void);
const char *vmm_version(void);

/* Probes the host's KVM capabilities once per process (a zygote calls it before forking
 * workers); every other call probes lazily what it needs. */
int vmm_host_probe(void);

int vmm_create(const struct vmm_config *cfg, struct vmm **out);
/* Ends the VM and makes every blocked call (vmm_wait, pause, a host access waiting on a lazily
 * restored page) return; the handle stays valid until vmm_destroy. Idempotent. */
void vmm_shutdown(struct vmm *vm);
void vmm_destroy(struct vmm *vm);

int vmm_load_flat(struct vmm *vm, const void *image, unsigned long long len,
                  const struct vmm_flat_boot *boot);
/* Loads a kernel and describes the machine to it (ACPI on x86_64, a device tree on aarch64):
 * every vCPU, the RAM, and each device the VM was built with. */
int vmm_load_linux(struct vmm *vm, const struct vmm_linux_boot *boot);

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
/* An eventfd that becomes readable when serial output is waiting (for poll/epoll/asyncio);
 * owned by the VM, valid until vmm_destroy. */
int vmm_serial_fd(struct vmm *vm);

/* virtio-net's egress policy: the first rule whose network (addr/prefix), protocol (0 any,
 * 1 ICMP, 6 TCP, 17 UDP) and destination port range (0-0 any; TCP/UDP only) match a frame
 * decides; none matches: default_allow. ARP and DHCP always pass, anything not IPv4 never does.
 * Takes effect for the next frame the guest sends; the rules are copied. */
struct vmm_net_rule {
    unsigned int addr;         /* IPv4, host byte order */
    unsigned int prefix;       /* 0..32 */
    unsigned int proto;
    unsigned int port_lo, port_hi;   /* destination ports (TCP/UDP); 0-0: any */
    unsigned int sport_lo, sport_hi; /* source ports (TCP/UDP); 0-0: any */
    int replies;                     /* TCP segments with ACK set only: answers on connections
                                      * the other side opened (an exposed port's) */
    int allow;
};
struct vmm_net_policy {
    int default_allow;
    unsigned int nrules;       /* at most VMM_NET_MAX_RULES */
    const struct vmm_net_rule *rules;
};
#define VMM_NET_MAX_RULES 1024
/* `id` is the net device's id in the configuration; -ENODEV when there is none. */
int vmm_net_set_policy(struct vmm *vm, unsigned int id, const struct vmm_net_policy *p);

struct vmm_net_stats {
    unsigned long long tx_frames, tx_bytes;     /* sent to the backend */
    unsigned long long rx_frames, rx_bytes;     /* delivered to the guest */
    unsigned long long tx_denied;               /* refused by the policy */
    unsigned long long tx_dropped;              /* malformed, or no backend */
    unsigned long long rx_dropped;              /* larger than the guest's buffer */
    int link_up;                                /* the backend is connected */
};
int vmm_net_stats(struct vmm *vm, unsigned int id, struct vmm_net_stats *out);

/* A virtio device as the VMM sees it, to tell a guest that stopped using a device from a device
 * that stopped serving (refused the guest's rings: DEVICE_NEEDS_RESET, or a queue the device
 * has not caught up with). Read with the device's event loop at rest. */
struct vmm_virtio_queue_info {
    unsigned int ready;        /* the driver set the queue up */
    unsigned int size;
    unsigned int avail_idx;    /* the guest's avail index, read now */
    unsigned int last_avail;   /* how far the device has taken */
    unsigned int used_idx;     /* how far it has answered */
    unsigned int avail_flags;  /* the guest's, read now: 1 = no interrupts wanted */
    int used_event;            /* EVENT_IDX: the guest wants an interrupt once used_idx passes
                                * this (Linux writes 0 while it keeps them off); -1 without */
};
struct vmm_virtio_info {
    unsigned int status;       /* the driver status register */
    int broken;                /* DEVICE_NEEDS_RESET: the device refused the guest's rings */
    char why[160];             /* what it refused */
    unsigned long long passes; /* event loop passes that served the device */
    unsigned long long interrupts; /* interrupts raised to the guest, one after each restore */
    int gsi;                   /* its interrupt line, -1 for none */
    unsigned int nqueues;
    struct vmm_virtio_queue_info q[4];
};
int vmm_virtio_info(struct vmm *vm, int type, unsigned int id, struct vmm_virtio_info *out);

/* Host access to guest memory. A read that cannot be served truthfully (memory file gone,
 * page server dead) fails; a write is tracked for diff snapshots. */
int vmm_mem_read(struct vmm *vm, unsigned long long gpa, void *buf, unsigned long long len);
int vmm_mem_write(struct vmm *vm, unsigned long long gpa, const void *buf, unsigned long long len);
/* Give pages back (what a balloon does): they read as zero afterwards. */
int vmm_mem_discard(struct vmm *vm, unsigned long long gpa, unsigned long long len);

/* Snapshots: `dir` must exist and hold no snapshot; writes dir/vmstate and dir/memory, durable
 * before it returns. The VM must be paused (or created and never started). */
int vmm_snapshot(struct vmm *vm, const char *dir, const struct vmm_snapshot_opts *opts);
int vmm_restore(const char *dir, const struct vmm_restore_opts *opts, struct vmm **out);
int vmm_snapshot_inspect(const char *dir, struct vmm_snapshot_info *info);
/* Memory files are made immutable while a VM may map them; the snapshot's owner calls this
 * before deleting the directory, once no VM uses it. */
int vmm_snapshot_release(const char *dir);

/* The encoded vmstate of a paused or created VM, and loading one into it. A load that fails
 * after it began changing the VM leaves the VM FAILED, never half-loaded and runnable. */
int vmm_state_size(struct vmm *vm, unsigned long long *size);
int vmm_state_get(struct vmm *vm, void *buf, unsigned long long len, unsigned long long *used);
int vmm_state_set(struct vmm *vm, const void *buf, unsigned long long len);

/* uffd: the pages faulted in, in first-touch order, saved for a later restore. */
int vmm_working_set_save(struct vmm *vm, const char *path);
