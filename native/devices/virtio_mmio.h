/*
 * virtio_mmio.h - the virtio-mmio v2 transport (virtio 1.x, 4.2.2) that every virtio device of
 * the VMM sits on, kvmtool's split: the transport owns the register file, feature negotiation,
 * queue set-up, interrupts and the doorbell; a device owns its config space contents, its
 * queues' meaning and its backend.
 *
 * Threads. Register accesses come on vCPU threads and only touch `r` under `lock` (never
 * blocking). Queue work runs on the VM's event loop: a QueueNotify write reaches it through an
 * eventfd (KVM_IOEVENTFD when KVM takes it, else the MMIO exit writes the eventfd), the loop
 * calls the device's `process`, which pops chains, serves them and pushes them back. The queues'
 * running state (`vq`) belongs to the loop thread alone; a driver reset is noticed by the loop
 * through `reset_gen` and handed to the device there. A pause parks the loop between passes, so
 * no chain is ever half served when state is read.
 */
#ifndef VMM_VIRTIO_MMIO_H
#define VMM_VIRTIO_MMIO_H
#include "virtq.h"

#define VIRTIO_MAX_QUEUES 4
#define VIRTIO_CONFIG_MAX 64
#define VIRTIO_F_VERSION_1 32

/* device status bits */
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 64
#define VIRTIO_STATUS_FAILED 128

/* interrupt status bits */
#define VIRTIO_ISR_USED 1
#define VIRTIO_ISR_CONFIG 2

/* register offsets */
#define VIRTIO_MMIO_MAGIC 0x000
#define VIRTIO_MMIO_VERSION 0x004
#define VIRTIO_MMIO_DEVICE_ID 0x008
#define VIRTIO_MMIO_VENDOR_ID 0x00c
#define VIRTIO_MMIO_DEVICE_FEATURES 0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES 0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL 0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_MMIO_QUEUE_NUM 0x038
#define VIRTIO_MMIO_QUEUE_READY 0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY 0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS 0x060
#define VIRTIO_MMIO_INTERRUPT_ACK 0x064
#define VIRTIO_MMIO_STATUS 0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW 0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH 0x084
#define VIRTIO_MMIO_QUEUE_AVAIL_LOW 0x090
#define VIRTIO_MMIO_QUEUE_AVAIL_HIGH 0x094
#define VIRTIO_MMIO_QUEUE_USED_LOW 0x0a0
#define VIRTIO_MMIO_QUEUE_USED_HIGH 0x0a4
#define VIRTIO_MMIO_SHM_SEL 0x0ac
#define VIRTIO_MMIO_SHM_LEN_LOW 0x0b0
#define VIRTIO_MMIO_SHM_LEN_HIGH 0x0b4
#define VIRTIO_MMIO_CONFIG_GENERATION 0x0fc
#define VIRTIO_MMIO_CONFIG 0x100
#define VIRTIO_MMIO_MAGIC_VALUE 0x74726976u   /* "virt" */
#define VIRTIO_MMIO_VENDOR 0x444d4d56u        /* "VMMD" */

struct virtio_dev;
struct virtio_ops {
    uint32_t device_id;          /* 1 net, 2 blk, 4 rng, 19 vsock */
    uint64_t features;           /* offered besides VIRTIO_F_VERSION_1 (ring features too) */
    uint16_t nqueues;
    uint16_t queue_max;          /* QueueNumMax of every queue, a power of two <= VIRTQ_MAX_SIZE */
    /* Event loop: serve the live queues. <0 (message set) when the guest broke a ring or a
     * request: the transport marks the device broken. Serve at most a queue's worth of chains
     * per call and call virtio_rekick() when more may be waiting. */
    int (*process)(struct virtio_dev *v);
    /* Event loop, may be NULL: the driver reset the device (status 0); drop backend state. */
    void (*reset)(struct virtio_dev *v);
};

struct virtio_queue_regs {
    uint16_t num;
    bool ready;
    uint64_t desc, avail, used;
};

/* The register file: what the guest programs. Under `lock`. */
struct virtio_regs {
    uint32_t status;
    uint32_t dev_feat_sel, drv_feat_sel, queue_sel;
    uint64_t driver_features;
    uint32_t isr;
    uint32_t config_gen;
    struct virtio_queue_regs q[VIRTIO_MAX_QUEUES];
    uint32_t reset_gen;          /* bumped on every driver reset; the loop acts on a change */
};

struct virtio_dev {
    struct device *dev;
    const struct virtio_ops *ops;
    struct guest_mem *mem;
    struct irq *irq;             /* NULL: no interrupt (unit tests) */
    struct eventloop *loop;
    int vm_fd;
    int kick;                    /* eventfd served by the loop */
    bool ioeventfd;              /* KVM signals `kick` on QueueNotify itself */
    uint64_t notify_addr;
    pthread_mutex_t lock;
    struct virtio_regs r;
    uint8_t config[VIRTIO_CONFIG_MAX];   /* device config space, read only for the guest;
                                         * under `lock` once the device is running */
    uint32_t config_len;
    /* event loop thread only (and the host while the loop is parked) */
    struct virtq vq[VIRTIO_MAX_QUEUES];
    bool live[VIRTIO_MAX_QUEUES];
    uint64_t features;           /* the driver's features as of the loop's last pass */
    uint32_t seen_reset_gen;
    char broken_why[160];
    uint64_t passes;             /* loop passes that served the device */
    uint64_t interrupts;         /* raised (atomic: vCPU threads raise config interrupts) */
};

/* init: kick eventfd, KVM_IOEVENTFD on QueueNotify (or the MMIO fallback), loop handler. */
int virtio_init(struct virtio_dev *v, struct device *d, const struct virtio_ops *ops);
void virtio_destroy(struct virtio_dev *v);
/* The device_ops access callback of every virtio-mmio device (d->priv is the virtio_dev, or
 * a struct that begins with one). */
int virtio_mmio_access(struct device *d, uint64_t off, uint8_t *data, uint32_t len,
                       bool is_write, struct bus_req *req);

/* Event loop helpers for devices. */
struct virtq *virtio_queue(struct virtio_dev *v, int i);   /* NULL unless the queue is live */
void virtio_notify_used(struct virtio_dev *v, struct virtq *q);   /* interrupt if wanted */
void virtio_rekick(struct virtio_dev *v);                       /* come back for more work */
/* Any thread: `len` bytes of the device's config space at `off` change (virtio-net's link
 * status); the config generation moves and the guest gets a config-change interrupt. */
void virtio_config_write(struct virtio_dev *v, uint32_t off, const void *data, uint32_t len);
/* The guest broke the device: DEVICE_NEEDS_RESET, a config interrupt, no more queue work until
 * the driver resets it. `why` is kept for the host (virtio_broken_reason). */
void virtio_set_broken(struct virtio_dev *v, const char *why);
bool virtio_is_broken(struct virtio_dev *v);
/* Event loop at rest (or its own thread): the device's status and queues, for diagnosis. */
void virtio_info(struct virtio_dev *v, struct vmm_virtio_info *o);
/* Runs one pass of queue work now, on the calling thread (the loop handler calls it; unit tests
 * call it directly on a device whose loop is not running). */
void virtio_run(struct virtio_dev *v);
bool virtio_driver_ok(struct virtio_dev *v);
uint64_t virtio_negotiated(struct virtio_dev *v);

/* The transport's part of a device's vmstate section (a map under the key "transport"). */
struct virtio_transport_state {
    struct virtio_regs r;
    uint16_t last_avail[VIRTIO_MAX_QUEUES], used_idx[VIRTIO_MAX_QUEUES];
};
void virtio_save(struct virtio_dev *v, struct enc *e);
int virtio_decode(struct virtio_dev *v, const struct dec_map *section,
                  struct virtio_transport_state *out);
void virtio_apply(struct virtio_dev *v, const struct virtio_transport_state *s);
/* After a restore: serve what the guest made available before the snapshot. */
void virtio_post_load(struct virtio_dev *v);
#endif
