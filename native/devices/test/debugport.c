/*
 * debugport.c (test builds) - how a test guest talks to the host without a driver:
 *   +0 (u32 write) ends the VM with that exit code (a request to the vCPU loop, not a call)
 *   +4 (u32 write) posts a mark the host can poll (progress, "ready")
 *   +8 (u32 read)  returns ++reads;  (u32 write) the guest's count of its writes: anything but
 *                  writes+1 counts a mismatch. A re-executed IN or OUT shows up here.
 *   +12 (u32 read) mismatches
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "../devices.h"

#define DEBUGPORT_STATE_VERSION 1

struct debugport {
    pthread_mutex_t lock;
    uint64_t reads, writes, mismatches;
};

struct debugport_state {
    uint64_t reads, writes, mismatches;
};

static int debugport_access(struct device *d, uint64_t off, uint8_t *data, uint32_t len,
                            bool is_write, struct bus_req *req)
{
    struct debugport *p = d->priv;
    uint32_t v = 0;
    memcpy(&v, data, len > 4 ? 4 : len);
    pthread_mutex_lock(&p->lock);
    if (!is_write) {
        uint32_t out = off == 8 ? (uint32_t)++p->reads : off == 12 ? (uint32_t)p->mismatches : 0;
        memset(data, 0, len);
        memcpy(data, &out, len > 4 ? 4 : len);
    } else if (off == 0) {
        req->kind = BUS_REQ_GUEST_EXIT;
        req->value = v;
    } else if (off == 4) {
        atomic_store(&d->env->st->debug_mark, v);
        atomic_fetch_add(&d->env->st->debug_marks, 1);
    } else if (off == 8) {
        if (v != (uint32_t)(p->writes + 1))
            p->mismatches++;
        p->writes++;
    }
    pthread_mutex_unlock(&p->lock);
    return 0;
}

static int debugport_save(struct device *d, struct enc *e)
{
    struct debugport *p = d->priv;
    pthread_mutex_lock(&p->lock);
    enc_map(e, 4);
    enc_kv_uint(e, "v", DEBUGPORT_STATE_VERSION);
    enc_kv_uint(e, "reads", p->reads);
    enc_kv_uint(e, "writes", p->writes);
    enc_kv_uint(e, "mismatches", p->mismatches);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

static int debugport_decode(struct device *d, const struct dec_map *m, uint32_t version,
                            void **out)
{
    (void)d; (void)version;
    struct debugport_state s;
    int r;
    if ((r = dec_get_uint(m, "reads", &s.reads)) || (r = dec_get_uint(m, "writes", &s.writes)) ||
        (r = dec_get_uint(m, "mismatches", &s.mismatches)))
        return r;
    struct debugport_state *c = malloc(sizeof(*c));
    if (!c)
        return vmm_err(ENOMEM, "out of memory decoding the debug port");
    *c = s;
    *out = c;
    return 0;
}

static void debugport_apply(struct device *d, void *state)
{
    struct debugport *p = d->priv;
    struct debugport_state *s = state;
    pthread_mutex_lock(&p->lock);
    p->reads = s->reads;
    p->writes = s->writes;
    p->mismatches = s->mismatches;
    pthread_mutex_unlock(&p->lock);
    free(s);
}

static void debugport_destroy(struct device *d)
{
    struct debugport *p = d->priv;
    if (p)
        pthread_mutex_destroy(&p->lock);
    free(p);
    d->priv = NULL;
}

static int debugport_init(struct device *d, const struct vmm_device_config *cfg)
{
    (void)cfg;
    struct debugport *p = calloc(1, sizeof(*p));
    if (!p)
        return vmm_err(ENOMEM, "out of memory for the debug port");
    pthread_mutex_init(&p->lock, NULL);
    d->priv = p;
    return 0;
}

const struct device_ops debugport_ops = {
    .name = "debug", .version = DEBUGPORT_STATE_VERSION, .init = debugport_init,
    .access = debugport_access, .save = debugport_save, .decode = debugport_decode,
    .apply = debugport_apply, .free_state = free, .destroy = debugport_destroy,
};
