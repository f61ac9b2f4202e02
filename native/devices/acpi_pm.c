/*
 * acpi_pm.c - the hardware-reduced ACPI sleep registers (x86): the DSDT's \_S5 tells the
 * kernel that writing SLP_TYP 5 with SLP_EN to the sleep control register powers off, which
 * `poweroff` in the guest does. That is a request to the vCPU loop to end the VM.
 *   window at I/O port 0x600, 2 bytes: +0 sleep control, +1 sleep status
 */
#include <stdlib.h>
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

static int acpi_pm_save(struct device *d, struct enc *e)
{
    (void)d;
    enc_map(e, 1);
    enc_kv_uint(e, "v", ACPI_PM_STATE_VERSION);
    return 0;
}

static int acpi_pm_decode(struct device *d, const struct dec_map *m, uint32_t version, void **out)
{
    (void)d; (void)m; (void)version;
    *out = NULL;
    return 0;
}

static void acpi_pm_apply(struct device *d, void *state) { (void)d; (void)state; }
static int acpi_pm_init(struct device *d, const struct vmm_device_config *cfg)
{
    (void)d; (void)cfg;
    return 0;
}
static void acpi_pm_destroy(struct device *d) { (void)d; }

const struct device_ops acpi_pm_ops = {
    .name = "acpi_pm", .version = ACPI_PM_STATE_VERSION, .boot_kind = BOOT_DEV_ACPI_SLEEP,
    .init = acpi_pm_init, .access = acpi_pm_access, .save = acpi_pm_save,
    .decode = acpi_pm_decode, .apply = acpi_pm_apply, .free_state = free,
    .destroy = acpi_pm_destroy,
};
