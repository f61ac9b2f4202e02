/* codec.c - a bounded msgpack reader and a growable writer for vmstate. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"

#define DEC_MAX_DEPTH 16

void enc_init(struct enc *e) { memset(e, 0, sizeof(*e)); }
void enc_free(struct enc *e) { free(e->buf); enc_init(e); }

void enc_raw(struct enc *e, const void *p, size_t n)
{
    if (e->err)
        return;
    if (e->len + n > e->cap) {
        size_t cap = e->cap ? e->cap : 4096;
        while (cap < e->len + n)
            cap *= 2;
        uint8_t *nb = realloc(e->buf, cap);
        if (!nb) {
            e->err = -ENOMEM;
            return;
        }
        e->buf = nb;
        e->cap = cap;
    }
    memcpy(e->buf + e->len, p, n);
    e->len += n;
}

static void put_be(struct enc *e, uint8_t tag, uint64_t v, int bytes)
{
    uint8_t b[9];
    b[0] = tag;
    for (int i = 0; i < bytes; i++)
        b[1 + i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
    enc_raw(e, b, 1 + bytes);
}

void enc_map(struct enc *e, uint32_t n)
{
    if (n < 16) put_be(e, 0x80 | n, 0, 0);
    else if (n <= 0xffff) put_be(e, 0xde, n, 2);
    else put_be(e, 0xdf, n, 4);
}

void enc_array(struct enc *e, uint32_t n)
{
    if (n < 16) put_be(e, 0x90 | n, 0, 0);
    else if (n <= 0xffff) put_be(e, 0xdc, n, 2);
    else put_be(e, 0xdd, n, 4);
}

void enc_str(struct enc *e, const char *s)
{
    size_t n = strlen(s);
    if (n < 32) put_be(e, 0xa0 | n, 0, 0);
    else if (n <= 0xff) put_be(e, 0xd9, n, 1);
    else if (n <= 0xffff) put_be(e, 0xda, n, 2);
    else put_be(e, 0xdb, n, 4);
    enc_raw(e, s, n);
}

void enc_uint(struct enc *e, uint64_t v)
{
    if (v < 128) put_be(e, (uint8_t)v, 0, 0);
    else if (v <= 0xff) put_be(e, 0xcc, v, 1);
    else if (v <= 0xffff) put_be(e, 0xcd, v, 2);
    else if (v <= 0xffffffffULL) put_be(e, 0xce, v, 4);
    else put_be(e, 0xcf, v, 8);
}

void enc_bin(struct enc *e, const void *p, size_t n)
{
    if (n <= 0xff) put_be(e, 0xc4, n, 1);
    else if (n <= 0xffff) put_be(e, 0xc5, n, 2);
    else put_be(e, 0xc6, n, 4);
    enc_raw(e, p, n);
}

static int get_be(const uint8_t **p, const uint8_t *end, int bytes, uint64_t *v)
{
    if ((size_t)(end - *p) < (size_t)bytes)
        return vmm_err(EINVAL, "vmstate is truncated inside a value");
    uint64_t x = 0;
    for (int i = 0; i < bytes; i++)
        x = (x << 8) | (*p)[i];
    *p += bytes;
    *v = x;
    return 0;
}

static int take(const uint8_t **p, const uint8_t *end, uint64_t n, struct dec_val *v)
{
    if ((uint64_t)(end - *p) < n)
        return vmm_err(EINVAL, "vmstate is truncated: a %llu-byte field runs past the end",
                       (unsigned long long)n);
    v->p = *p;
    v->len = (uint32_t)n;
    *p += n;
    return 0;
}

static int dec_skip(const uint8_t **p, const uint8_t *end, int depth);

static int dec_one(const uint8_t **p, const uint8_t *end, struct dec_val *v, int depth)
{
    if (depth > DEC_MAX_DEPTH)
        return vmm_err(EINVAL, "vmstate nests deeper than %d levels", DEC_MAX_DEPTH);
    if (*p >= end)
        return vmm_err(EINVAL, "vmstate is truncated: value expected");
    memset(v, 0, sizeof(*v));
    v->end = end;
    uint8_t t = *(*p)++;
    uint64_t n = 0;
    int r = 0;
    if (t < 0x80) { v->type = DEC_UINT; v->u = t; return 0; }
    if ((t & 0xf0) == 0x80) { v->type = DEC_MAP; n = t & 0x0f; goto container; }
    if ((t & 0xf0) == 0x90) { v->type = DEC_ARRAY; n = t & 0x0f; goto container; }
    if ((t & 0xe0) == 0xa0) { v->type = DEC_STR; return take(p, end, t & 0x1f, v); }
    switch (t) {
    case 0xcc: case 0xcd: case 0xce: case 0xcf:
        v->type = DEC_UINT;
        return get_be(p, end, 1 << (t - 0xcc), &v->u);
    case 0xd9: case 0xda: case 0xdb:
        v->type = DEC_STR;
        if ((r = get_be(p, end, 1 << (t - 0xd9), &n)))
            return r;
        return take(p, end, n, v);
    case 0xc4: case 0xc5: case 0xc6:
        v->type = DEC_BIN;
        if ((r = get_be(p, end, 1 << (t - 0xc4), &n)))
            return r;
        return take(p, end, n, v);
    case 0xdc: case 0xdd:
        v->type = DEC_ARRAY;
        if ((r = get_be(p, end, t == 0xdc ? 2 : 4, &n)))
            return r;
        goto container;
    case 0xde: case 0xdf:
        v->type = DEC_MAP;
        if ((r = get_be(p, end, t == 0xde ? 2 : 4, &n)))
            return r;
        goto container;
    default:
        return vmm_err(EINVAL, "vmstate holds msgpack type 0x%02x, which this build does not use", t);
    }
container:
    v->u = n;
    v->p = *p;
    for (uint64_t i = 0; i < n * (v->type == DEC_MAP ? 2 : 1); i++)
        if ((r = dec_skip(p, end, depth + 1)))
            return r;
    return 0;
}

static int dec_skip(const uint8_t **p, const uint8_t *end, int depth)
{
    struct dec_val v;
    return dec_one(p, end, &v, depth);
}

int dec_next(const uint8_t **p, const uint8_t *end, struct dec_val *v)
{
    return dec_one(p, end, v, 0);
}

int dec_as_map(const struct dec_val *v, struct dec_map *m, const char *name)
{
    if (v->type != DEC_MAP)
        return vmm_err(EINVAL, "vmstate %s: expected a map", name);
    m->p = v->p;
    m->end = v->end;
    m->n = (uint32_t)v->u;
    m->name = name;
    return 0;
}

static const char *type_name(int t)
{
    static const char *names[] = {"?", "uint", "str", "bin", "map", "array"};
    return (t >= 0 && t <= DEC_ARRAY) ? names[t] : "?";
}

int dec_get(const struct dec_map *m, const char *key, int type, struct dec_val *v)
{
    const uint8_t *p = m->p;
    size_t klen = strlen(key);
    for (uint32_t i = 0; i < m->n; i++) {
        struct dec_val k;
        int r = dec_next(&p, m->end, &k);
        if (r)
            return r;
        if ((r = dec_next(&p, m->end, v)))
            return r;
        if (k.type == DEC_STR && k.len == klen && memcmp(k.p, key, klen) == 0) {
            if (v->type != type)
                return vmm_err(EINVAL, "vmstate section %s field %s: expected %s, found %s",
                               m->name, key, type_name(type), type_name(v->type));
            return 0;
        }
    }
    return vmm_err(ENOENT, "vmstate section %s has no field %s", m->name, key);
}

int dec_get_uint(const struct dec_map *m, const char *key, uint64_t *out)
{
    struct dec_val v;
    int r = dec_get(m, key, DEC_UINT, &v);
    if (!r)
        *out = v.u;
    return r;
}

int dec_get_bin(const struct dec_map *m, const char *key, const uint8_t **p, uint32_t *len)
{
    struct dec_val v;
    int r = dec_get(m, key, DEC_BIN, &v);
    if (!r) {
        *p = v.p;
        *len = v.len;
    }
    return r;
}

int dec_get_bin_exact(const struct dec_map *m, const char *key, void *dst, size_t size)
{
    const uint8_t *p;
    uint32_t len;
    int r = dec_get_bin(m, key, &p, &len);
    if (r)
        return r;
    if (len != size)
        return vmm_err(EINVAL, "vmstate section %s field %s: %u bytes, this build expects %zu",
                       m->name, key, len, size);
    memcpy(dst, p, size);
    return 0;
}

int dec_get_str(const struct dec_map *m, const char *key, char *dst, size_t size)
{
    struct dec_val v;
    int r = dec_get(m, key, DEC_STR, &v);
    if (r)
        return r;
    if (v.len >= size)
        return vmm_err(ENAMETOOLONG, "vmstate section %s field %s: %u bytes is too long",
                       m->name, key, v.len);
    memcpy(dst, v.p, v.len);
    dst[v.len] = 0;
    return 0;
}

int dec_get_map(const struct dec_map *m, const char *key, struct dec_map *out)
{
    struct dec_val v;
    int r = dec_get(m, key, DEC_MAP, &v);
    if (r)
        return r;
    return dec_as_map(&v, out, key);
}
