/*
 * acpi_pm.c - the hardware-reduced ACPI sleep registers (x86): the DSDT's \_S5 tells the
 * kernel that writing SLP_TYP 5 with SLP_EN to the sleep control register powers off, which
 * `poweroff` in the guest does. That is a request to the vCPU loop to end the VM.
 *   window at I/O port 0x600, 2 bytes: +0 sleep control, +1 sleep status
 */
#include <string.h>
#include "devices.h"
#include "../arch/boot.h"

#define ACPI_PM_STATE_VERSION 1
#define SLP_EN 0x20
#define SLP_TYP(v) (((v) >> 2) & 7)
#define S5 5

static int acpi_pm_access(struct device *d, uint64_t off, uint8_t *data, uint32_t len,
                          bool is_write, struct bus_req *req)
{
    (void)d;
    if (!is_write) {
        memset(data, 0, len);
        return 0;
    }
    if (off == 0 && (data[0] & SLP_EN) && SLP_TYP(data[0]) == S5)
        req->kind = BUS_REQ_POWER_OFF;
    return 0;
}

const struct device_ops acpi_pm_ops = {
    .name = "acpi_pm", .version = ACPI_PM_STATE_VERSION, .boot_kind = BOOT_DEV_ACPI_SLEEP,
    .access = acpi_pm_access,
};
