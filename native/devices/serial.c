/*
 * serial.c - 8250/16550A UART: guest output to a host ring buffer (with an eventfd that says
 * "output waiting"), host input to the guest. The interrupt is edge-triggered through the
 * device's irqfd, as Firecracker does, so no KVM call happens under the device lock.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include "devices.h"
#include "../arch/boot.h"

#define SERIAL_OUT_CAP (256 * 1024)
#define SERIAL_RX_CAP 64
#define SERIAL_STATE_VERSION 1

enum { UART_RBR_THR = 0, UART_IER = 1, UART_IIR_FCR = 2, UART_LCR = 3, UART_MCR = 4,
       UART_LSR = 5, UART_MSR = 6, UART_SCR = 7 };
#define IER_RDI 0x01
#define IER_THRI 0x02
#define IIR_NONE 0x01
#define IIR_THRI 0x02
#define IIR_RDI 0x04
#define IIR_FIFO 0xc0
#define LCR_DLAB 0x80
#define LSR_DR 0x01
#define LSR_THRE 0x20
#define LSR_TEMT 0x40
#define MCR_LOOP 0x10
#define MSR_DCD_DSR_CTS 0xb0
#define FCR_ENABLE 0x01

/* What a snapshot keeps: the guest-visible registers and unread input. */
struct serial_regs {
    uint8_t ier, lcr, mcr, scr, dll, dlm, fcr;
    uint8_t thr_ipending;
    uint8_t rx[SERIAL_RX_CAP];
    uint32_t rx_head, rx_len;
};

struct serial {
    pthread_mutex_t lock;
    struct serial_regs r;
    struct irq *irq;
    int out_fd;                  /* eventfd: readable while output is waiting */
    uint8_t *out;                /* host-side ring: not guest state */
    size_t out_head, out_len;
    uint64_t bytes, dropped, first_ns;
    int irq_level;
};

static uint8_t iir(const struct serial *s)
{
    if ((s->r.ier & IER_RDI) && s->r.rx_len)
        return IIR_RDI;
    if ((s->r.ier & IER_THRI) && s->r.thr_ipending)
        return IIR_THRI;
    return IIR_NONE;
}

static void update_irq(struct serial *s)
{
    int level = !(iir(s) & IIR_NONE);
    if (level && !s->irq_level && s->irq)
        irq_trigger(s->irq);     /* an eventfd write: never blocks */
    s->irq_level = level;
}

static void out_byte(struct serial *s, uint8_t b)
{
    if (!s->first_ns)
        s->first_ns = now_ns();
    s->bytes++;
    if (s->out_len == SERIAL_OUT_CAP) {       /* host is not reading: drop the oldest */
        s->out_head = (s->out_head + 1) % SERIAL_OUT_CAP;
        s->out_len--;
        s->dropped++;
    }
    s->out[(s->out_head + s->out_len) % SERIAL_OUT_CAP] = b;
    if (s->out_len++ == 0) {
        uint64_t one = 1;
        if (write(s->out_fd, &one, sizeof(one)) < 0) {
            /* saturated counter: the reader is already woken */
        }
    }
}

static void rx_push(struct serial *s, uint8_t b)
{
    if (s->r.rx_len == SERIAL_RX_CAP)
        return;  /* overrun: a real UART drops it too */
    s->r.rx[(s->r.rx_head + s->r.rx_len) % SERIAL_RX_CAP] = b;
    s->r.rx_len++;
}

static void reg_write(struct serial *s, uint64_t off, uint8_t v)
{
    bool dlab = s->r.lcr & LCR_DLAB;
    switch (off) {
    case UART_RBR_THR:
        if (dlab) { s->r.dll = v; break; }
        if (s->r.mcr & MCR_LOOP)
            rx_push(s, v);
        else
            out_byte(s, v);
        s->r.thr_ipending = 1;
        break;
    case UART_IER:
        if (dlab) { s->r.dlm = v; break; }
        if (!(s->r.ier & IER_THRI) && (v & IER_THRI))
            s->r.thr_ipending = 1;   /* THR is always empty: enabling THRI fires at once */
        s->r.ier = v & 0x0f;
        break;
    case UART_IIR_FCR: s->r.fcr = v; break;
    case UART_LCR: s->r.lcr = v; break;
    case UART_MCR: s->r.mcr = v & 0x1f; break;
    case UART_SCR: s->r.scr = v; break;
    default: break;                  /* LSR, MSR are read-only */
    }
}

static uint8_t reg_read(struct serial *s, uint64_t off)
{
    bool dlab = s->r.lcr & LCR_DLAB;
    uint8_t v = 0;
    switch (off) {
    case UART_RBR_THR:
        if (dlab)
            return s->r.dll;
        if (s->r.rx_len) {
            v = s->r.rx[s->r.rx_head];
            s->r.rx_head = (s->r.rx_head + 1) % SERIAL_RX_CAP;
            s->r.rx_len--;
        }
        return v;
    case UART_IER: return dlab ? s->r.dlm : s->r.ier;
    case UART_IIR_FCR:
        v = iir(s);
        if (v == IIR_THRI)
            s->r.thr_ipending = 0;   /* reading IIR acknowledges THRE */
        return v | ((s->r.fcr & FCR_ENABLE) ? IIR_FIFO : 0);
    case UART_LCR: return s->r.lcr;
    case UART_MCR: return s->r.mcr;
    case UART_LSR: return LSR_THRE | LSR_TEMT | (s->r.rx_len ? LSR_DR : 0);
    case UART_MSR: return (s->r.mcr & MCR_LOOP) ? 0 : MSR_DCD_DSR_CTS;
    case UART_SCR: return s->r.scr;
    }
    return 0;
}

static int serial_access(struct device *d, uint64_t off, uint8_t *data, uint32_t len,
                         bool is_write, struct bus_req *req)
{
    struct serial *s = d->priv;
    (void)req;
    if (len != 1 || off >= 8) {   /* byte-wide registers; anything else reads as all ones */
        if (!is_write)
            memset(data, 0xff, len);
        return 0;
    }
    pthread_mutex_lock(&s->lock);
    if (is_write)
        reg_write(s, off, data[0]);
    else
        data[0] = reg_read(s, off);
    update_irq(s);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

size_t serial_read_output(struct device *d, uint8_t *buf, size_t len)
{
    struct serial *s = d->priv;
    pthread_mutex_lock(&s->lock);
    size_t n = len < s->out_len ? len : s->out_len;
    for (size_t i = 0; i < n; i++)
        buf[i] = s->out[(s->out_head + i) % SERIAL_OUT_CAP];
    s->out_head = (s->out_head + n) % SERIAL_OUT_CAP;
    s->out_len -= n;
    if (s->out_len == 0) {
        uint64_t v;
        if (read(s->out_fd, &v, sizeof(v)) < 0) {
            /* already clear */
        }
    }
    pthread_mutex_unlock(&s->lock);
    return n;
}

int serial_push_input(struct device *d, const uint8_t *buf, size_t len)
{
    struct serial *s = d->priv;
    pthread_mutex_lock(&s->lock);
    size_t room = SERIAL_RX_CAP - s->r.rx_len, n = len < room ? len : room;
    for (size_t i = 0; i < n; i++)
        rx_push(s, buf[i]);
    update_irq(s);
    pthread_mutex_unlock(&s->lock);
    return (int)n;
}

void serial_stats(struct device *d, uint64_t *bytes, uint64_t *dropped, uint64_t *first_ns)
{
    struct serial *s = d->priv;
    pthread_mutex_lock(&s->lock);
    *bytes = s->bytes;
    *dropped = s->dropped;
    *first_ns = s->first_ns;
    pthread_mutex_unlock(&s->lock);
}

int serial_output_fd(struct device *d) { return ((struct serial *)d->priv)->out_fd; }

static int serial_save(struct device *d, struct enc *e)
{
    struct serial *s = d->priv;
    pthread_mutex_lock(&s->lock);
    struct serial_regs r = s->r;
    pthread_mutex_unlock(&s->lock);
    uint8_t rx[SERIAL_RX_CAP];
    for (uint32_t i = 0; i < r.rx_len; i++)
        rx[i] = r.rx[(r.rx_head + i) % SERIAL_RX_CAP];
    enc_map(e, 10);
    enc_kv_uint(e, "v", SERIAL_STATE_VERSION);
    enc_kv_uint(e, "ier", r.ier);
    enc_kv_uint(e, "lcr", r.lcr);
    enc_kv_uint(e, "mcr", r.mcr);
    enc_kv_uint(e, "scr", r.scr);
    enc_kv_uint(e, "dll", r.dll);
    enc_kv_uint(e, "dlm", r.dlm);
    enc_kv_uint(e, "fcr", r.fcr);
    enc_kv_uint(e, "thr_ipending", r.thr_ipending);
    enc_kv_bin(e, "rx", rx, r.rx_len);
    return 0;
}

static int serial_decode(struct device *d, const struct dec_map *m, uint32_t version, void **out)
{
    (void)d; (void)version;
    uint64_t v[8];
    const char *keys[] = {"ier", "lcr", "mcr", "scr", "dll", "dlm", "fcr", "thr_ipending"};
    const uint8_t *rx;
    uint32_t rxlen;
    for (int i = 0; i < 8; i++) {
        int rc = dec_get_uint(m, keys[i], &v[i]);
        if (rc)
            return rc;
        if (v[i] > 0xff || (i == 7 && v[i] > 1))
            return vmm_err(EINVAL, "vmstate serial: %s=%llu is out of range", keys[i],
                           (unsigned long long)v[i]);
    }
    int rc = dec_get_bin(m, "rx", &rx, &rxlen);
    if (rc)
        return rc;
    if (rxlen > SERIAL_RX_CAP)
        return vmm_err(EINVAL, "vmstate serial: %u bytes of input, the FIFO holds %d", rxlen,
                       SERIAL_RX_CAP);
    struct serial_regs *r = calloc(1, sizeof(*r));
    if (!r)
        return vmm_err(ENOMEM, "out of memory decoding the serial state");
    r->ier = (uint8_t)(v[0] & 0x0f); r->lcr = (uint8_t)v[1]; r->mcr = (uint8_t)(v[2] & 0x1f);
    r->scr = (uint8_t)v[3]; r->dll = (uint8_t)v[4]; r->dlm = (uint8_t)v[5];
    r->fcr = (uint8_t)v[6]; r->thr_ipending = (uint8_t)v[7];
    memcpy(r->rx, rx, rxlen);
    r->rx_len = rxlen;
    *out = r;
    return 0;
}

static void serial_apply(struct device *d, void *state)
{
    struct serial *s = d->priv;
    pthread_mutex_lock(&s->lock);
    s->r = *(struct serial_regs *)state;
    s->irq_level = 0;    /* an interrupt pending in the restored registers is raised again */
    update_irq(s);
    pthread_mutex_unlock(&s->lock);
    free(state);
}

static void serial_destroy(struct device *d)
{
    struct serial *s = d->priv;
    if (!s)
        return;
    pthread_mutex_destroy(&s->lock);
    if (s->out_fd >= 0)
        close(s->out_fd);
    free(s->out);
    free(s);
    d->priv = NULL;
}

static int serial_init(struct device *d, const struct vmm_device_config *cfg)
{
    (void)cfg;
    struct serial *s = calloc(1, sizeof(*s));
    if (!s || !(s->out = malloc(SERIAL_OUT_CAP))) {
        free(s);
        return vmm_err(ENOMEM, "out of memory for the serial device");
    }
    pthread_mutex_init(&s->lock, NULL);
    s->irq = d->irq;
    d->priv = s;
    if ((s->out_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
        int e = errno;
        serial_destroy(d);
        return vmm_err(e, "eventfd for serial output: %s", strerror(e));
    }
    return 0;
}

const struct device_ops serial_ops = {
    .name = "serial", .version = SERIAL_STATE_VERSION, .boot_kind = BOOT_DEV_UART_16550,
    .init = serial_init,
    .access = serial_access, .save = serial_save, .decode = serial_decode, .apply = serial_apply,
    .free_state = free, .destroy = serial_destroy,
};
