/* devices.h - device ops tables for the device manager, and the serial port's host side. */
#ifndef VMM_DEVICES_H
#define VMM_DEVICES_H
#include "../internal.h"

extern const struct device_ops serial_ops;
extern const struct device_ops i8042_ops;
extern const struct device_ops acpi_pm_ops;
extern const struct device_ops vmgenid_ops;
extern const struct device_ops pl031_ops;
extern const struct device_ops virtio_rng_ops;
extern const struct device_ops virtio_blk_ops;
extern const struct device_ops virtio_vsock_ops;
void virtio_vsock_poll_host(struct device *d);   /* tests: serve host sockets now */
extern const struct device_ops virtio_net_ops;
void virtio_net_poll_backend(struct device *d);  /* tests: serve the backend socket now */
/* Any thread (vm.c's vmm_net_*): the egress policy, copied; the counters. */
int virtio_net_set_policy(struct device *d, const struct vmm_net_policy *p);
void virtio_net_stats(struct device *d, struct vmm_net_stats *out);
#ifdef VMM_TEST_BUILD
extern const struct device_ops debugport_ops;
extern const struct device_ops testdev_ops;
#endif

size_t serial_read_output(struct device *d, uint8_t *buf, size_t len);
int serial_push_input(struct device *d, const uint8_t *buf, size_t len);
void serial_stats(struct device *d, uint64_t *bytes, uint64_t *dropped, uint64_t *first_ns);
int serial_output_fd(struct device *d);
#endif
