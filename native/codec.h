/* codec.h - the msgpack subset vmstate uses: maps, arrays, str, bin, uint. */
#ifndef VMM_CODEC_H
#define VMM_CODEC_H
#include <stdint.h>
#include <stddef.h>

struct enc {
    uint8_t *buf;
    size_t len, cap;
    int err;            /* first -errno hit while growing; checked once at the end */
};
void enc_init(struct enc *e);
void enc_free(struct enc *e);
void enc_raw(struct enc *e, const void *p, size_t n);
void enc_map(struct enc *e, uint32_t n);
void enc_array(struct enc *e, uint32_t n);
void enc_str(struct enc *e, const char *s);
void enc_uint(struct enc *e, uint64_t v);
void enc_bin(struct enc *e, const void *p, size_t n);
static inline void enc_kv_uint(struct enc *e, const char *k, uint64_t v) { enc_str(e, k); enc_uint(e, v); }
static inline void enc_kv_bin(struct enc *e, const char *k, const void *p, size_t n) { enc_str(e, k); enc_bin(e, p, n); }
static inline void enc_kv_str(struct enc *e, const char *k, const char *s) { enc_str(e, k); enc_str(e, s); }

enum dec_type { DEC_UINT = 1, DEC_STR, DEC_BIN, DEC_MAP, DEC_ARRAY };
struct dec_val {
    int type;
    uint64_t u;             /* DEC_UINT value; count for map/array */
    const uint8_t *p;       /* str/bin bytes; first element of map/array */
    uint32_t len;           /* str/bin length */
    const uint8_t *end;     /* end of the enclosing buffer */
};
struct dec_map {
    const uint8_t *p, *end;
    uint32_t n;
    const char *name;       /* for error messages: which section */
};
/* Parse one value at *p (bounded by end), advance *p past all of it. */
int dec_next(const uint8_t **p, const uint8_t *end, struct dec_val *v);
int dec_as_map(const struct dec_val *v, struct dec_map *m, const char *name);
/* Lookups: -ENOENT / -EINVAL with a message naming the section and field. */
int dec_get(const struct dec_map *m, const char *key, int type, struct dec_val *v);
int dec_get_uint(const struct dec_map *m, const char *key, uint64_t *out);
int dec_get_bin(const struct dec_map *m, const char *key, const uint8_t **p, uint32_t *len);
int dec_get_bin_exact(const struct dec_map *m, const char *key, void *dst, size_t size);
int dec_get_str(const struct dec_map *m, const char *key, char *dst, size_t size);
int dec_get_map(const struct dec_map *m, const char *key, struct dec_map *out);
#endif
