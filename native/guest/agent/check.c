/* A structural walk over untrusted msgpack before msgpack-c unpacks it. The library allocates
 * every array and map at the size its header declares, so a 10-byte frame claiming 2^32 elements
 * would ask for 100 GiB. Here every declared length and count must fit in the bytes that are
 * left (an element takes at least one byte), nesting is at most MSG_DEPTH deep, and the body is
 * exactly one object: after this, what the library allocates is bounded by the frame's size. */
#include "agent.h"

#include <stdio.h>

static uint64_t be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

int mp_check(const uint8_t *p, size_t n, char *err, size_t errcap)
{
    uint64_t left[MSG_DEPTH + 1];   /* elements still to read at each open level */
    int depth = 0;
    size_t pos = 0;
    left[0] = 1;                    /* the one top-level object */
    while (depth >= 0 && left[depth] > 0) {
        if (pos >= n) {
            snprintf(err, errcap, "msgpack truncated at byte %zu", pos);
            return -1;
        }
        uint8_t b = p[pos++];
        size_t rest = n - pos;
        uint64_t skip = 0, count = 0;
        int container = 0, lenbytes = 0;
        left[depth]--;
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            /* fixint, nil, bool */
        } else if (b >= 0x80 && b <= 0x8f) {
            container = 2, count = b & 0x0f;
        } else if (b >= 0x90 && b <= 0x9f) {
            container = 1, count = b & 0x0f;
        } else if (b >= 0xa0 && b <= 0xbf) {
            skip = b & 0x1f;
        } else {
            switch (b) {
            case 0xc4: case 0xd9: lenbytes = 1; break;          /* bin8, str8 */
            case 0xc5: case 0xda: lenbytes = 2; break;          /* bin16, str16 */
            case 0xc6: case 0xdb: lenbytes = 4; break;          /* bin32, str32 */
            case 0xca: skip = 4; break;                         /* float32 */
            case 0xcb: skip = 8; break;                         /* float64 */
            case 0xcc: case 0xd0: skip = 1; break;
            case 0xcd: case 0xd1: skip = 2; break;
            case 0xce: case 0xd2: skip = 4; break;
            case 0xcf: case 0xd3: skip = 8; break;
            case 0xdc: container = 1, lenbytes = 2; break;
            case 0xdd: container = 1, lenbytes = 4; break;
            case 0xde: container = 2, lenbytes = 2; break;
            case 0xdf: container = 2, lenbytes = 4; break;
            default:
                snprintf(err, errcap, "msgpack type 0x%02x at byte %zu is not accepted "
                         "(no ext types)", b, pos - 1);
                return -1;
            }
        }
        if (lenbytes) {
            if (rest < (size_t)lenbytes) {
                snprintf(err, errcap, "msgpack length truncated at byte %zu", pos);
                return -1;
            }
            uint64_t v = be(p + pos, lenbytes);
            pos += lenbytes;
            rest -= lenbytes;
            if (container)
                count = v;
            else
                skip = v;
        }
        if (container) {
            uint64_t elems = count * (uint64_t)container;
            if (elems > rest) {
                snprintf(err, errcap, "msgpack %s of %llu at byte %zu is longer than the frame",
                         container == 2 ? "map" : "array", (unsigned long long)count, pos);
                return -1;
            }
            if (elems > 0) {
                if (depth == MSG_DEPTH) {
                    snprintf(err, errcap, "msgpack nested deeper than %d", MSG_DEPTH);
                    return -1;
                }
                left[++depth] = elems;
            }
        } else if (skip > rest) {
            snprintf(err, errcap, "msgpack value at byte %zu runs past the frame", pos);
            return -1;
        } else {
            pos += skip;
        }
        while (depth > 0 && left[depth] == 0)
            depth--;
    }
    if (pos != n) {
        snprintf(err, errcap, "%zu bytes after the msgpack object", n - pos);
        return -1;
    }
    return 0;
}
