/* util.c - per-thread error message (errno-style), clock, CRC32C. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include "internal.h"

/* Thread-local like errno: a failed vmm_create has no handle to hang a message on. */
static _Thread_local char last_error[VMM_ERR_LEN];

const char *vmm_last_error(void) { return last_error; }

int vmm_err(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    return -err;
}

int vmm_err_ctx(int err, const char *fmt, ...)
{
    char prev[VMM_ERR_LEN], pre[VMM_ERR_LEN];
    snprintf(prev, sizeof(prev), "%s", last_error);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof(pre), fmt, ap);
    va_end(ap);
    snprintf(last_error, sizeof(last_error), "%s: %s", pre, prev);
    return err < 0 ? err : -err;
}

uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

/* CRC32C (Castagnoli), reflected, table-driven; the table is built once per call site
 * cheaply enough for vmstate sizes, and keeps the library free of mutable globals. */
static const uint32_t *crc_table(uint32_t *t)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        t[i] = c;
    }
    return t;
}

uint32_t crc32c(uint32_t crc, const void *buf, size_t len)
{
    uint32_t t[256];
    crc_table(t);
    const uint8_t *p = buf;
    crc = ~crc;
    while (len--)
        crc = t[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

const char *vmm_version(void) { return "vmm-native " VMM_NATIVE_VERSION; }
