/* devices.h - constructors; each device file owns its registers and state. */
#ifndef VMM_DEVICES_H
#define VMM_DEVICES_H
#include "../internal.h"

struct serial;
int serial_create(struct vmm *vm, struct bus *bus, uint64_t base, int irq);
size_t serial_read_output(struct serial *s, uint8_t *buf, size_t len);
int serial_push_input(struct serial *s, const uint8_t *buf, size_t len);
void serial_stats(struct serial *s, uint64_t *bytes, uint64_t *dropped, uint64_t *first_ns);

int debugport_create(struct vmm *vm, struct bus *bus, uint64_t base);
int testdev_create(struct vmm *vm, struct bus *bus, uint64_t base);
#endif
