/* Typed, bounded access to the fields of a request map. msgpack strings are not NUL-terminated
 * and may hold NULs: every string is copied into a bounded buffer and refused if it holds one.
 * Paths and names may come as str or bin (file names need not be UTF-8). */
#include "agent.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

const msgpack_object *req_get(const msgpack_object *map, const char *key)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t klen = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen &&
            memcmp(k->via.str.ptr, key, klen) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

static bool absent(const msgpack_object *o)
{
    return !o || o->type == MSGPACK_OBJECT_NIL;
}

int obj_str(struct conn *c, const msgpack_object *o, const char *what, char *buf, size_t cap)
{
    const char *p;
    uint32_t n;
    if (o->type == MSGPACK_OBJECT_STR) {
        p = o->via.str.ptr, n = o->via.str.size;
    } else if (o->type == MSGPACK_OBJECT_BIN) {
        p = o->via.bin.ptr, n = o->via.bin.size;
    } else {
        seterr(c, "%s must be a string", what);
        return -EINVAL;
    }
    if (n >= cap) {
        seterr(c, "%s is %u bytes, at most %zu allowed", what, n, cap - 1);
        return -EINVAL;
    }
    if (memchr(p, 0, n)) {
        seterr(c, "%s holds a NUL byte", what);
        return -EINVAL;
    }
    memcpy(buf, p, n);
    buf[n] = 0;
    return 0;
}

int req_str(struct conn *c, const msgpack_object *map, const char *key, char *buf, size_t cap,
            bool required)
{
    const msgpack_object *o = req_get(map, key);
    if (absent(o)) {
        if (required) {
            seterr(c, "%s is required", key);
            return -EINVAL;
        }
        return 1;
    }
    return obj_str(c, o, key, buf, cap);
}

int req_int(struct conn *c, const msgpack_object *map, const char *key, int64_t *out,
            int64_t lo, int64_t hi, bool required)
{
    const msgpack_object *o = req_get(map, key);
    if (absent(o)) {
        if (required) {
            seterr(c, "%s is required", key);
            return -EINVAL;
        }
        return 1;
    }
    int64_t v;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (o->via.u64 > (uint64_t)INT64_MAX)
            goto range;
        v = (int64_t)o->via.u64;
    } else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        v = o->via.i64;
    } else {
        seterr(c, "%s must be an integer", key);
        return -EINVAL;
    }
    if (v < lo || v > hi)
        goto range;
    *out = v;
    return 0;
range:
    seterr(c, "%s must be in %lld..%lld", key, (long long)lo, (long long)hi);
    return -EINVAL;
}

int req_bool(struct conn *c, const msgpack_object *map, const char *key, bool *out)
{
    const msgpack_object *o = req_get(map, key);
    if (absent(o))
        return 1;
    if (o->type != MSGPACK_OBJECT_BOOLEAN) {
        seterr(c, "%s must be a boolean", key);
        return -EINVAL;
    }
    *out = o->via.boolean;
    return 0;
}

int req_bin(struct conn *c, const msgpack_object *map, const char *key, const char **p,
            uint32_t *len, uint32_t max, bool required)
{
    const msgpack_object *o = req_get(map, key);
    if (absent(o)) {
        if (required) {
            seterr(c, "%s is required", key);
            return -EINVAL;
        }
        *p = NULL, *len = 0;
        return 1;
    }
    if (o->type == MSGPACK_OBJECT_BIN)
        *p = o->via.bin.ptr, *len = o->via.bin.size;
    else if (o->type == MSGPACK_OBJECT_STR)
        *p = o->via.str.ptr, *len = o->via.str.size;
    else {
        seterr(c, "%s must be bytes", key);
        return -EINVAL;
    }
    if (*len > max) {
        seterr(c, "%s is %u bytes, at most %u allowed", key, *len, max);
        return -EINVAL;
    }
    return 0;
}

void strv_free(char **v)
{
    if (!v)
        return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

int req_strv(struct conn *c, const msgpack_object *o, const char *what, char ***out, size_t max,
             size_t *count)
{
    if (o->type != MSGPACK_OBJECT_ARRAY) {
        seterr(c, "%s must be an array of strings", what);
        return -EINVAL;
    }
    size_t n = o->via.array.size;
    if (n > max) {
        seterr(c, "%s has %zu entries, at most %zu allowed", what, n, max);
        return -EINVAL;
    }
    char **v = calloc(n + 1, sizeof(char *));
    if (!v)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const msgpack_object *e = &o->via.array.ptr[i];
        uint32_t len = e->type == MSGPACK_OBJECT_STR ? e->via.str.size :
                       e->type == MSGPACK_OBJECT_BIN ? e->via.bin.size : 0;
        v[i] = malloc((size_t)len + 1);
        int r = v[i] ? obj_str(c, e, what, v[i], (size_t)len + 1) : -ENOMEM;
        if (r < 0) {
            strv_free(v);
            return r;
        }
    }
    *out = v;
    if (count)
        *count = n;
    return 0;
}
