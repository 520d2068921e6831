/* The reading side: a bounded msgpack walk, enough to find {"rebirth": true} in a command and
 * {"online": true} in the gateway's state. Untrusted input: every length is checked against
 * the bytes left, nothing recurses, nothing is allocated. */
#include <string.h>

#include "fg_internal.h"

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} reader;

static int take(reader *r, size_t n)
{
    if ((size_t)(r->end - r->p) < n) {
        return 0;
    }
    r->p += n;
    return 1;
}

/* Big-endian n-byte unsigned at p (n <= 4). */
static uint32_t be(const uint8_t *p, unsigned n)
{
    uint32_t v = 0;
    while (n-- > 0) {
        v = (v << 8) | *p++;
    }
    return v;
}

/* Reads an object head. Returns 1 with *items = elements to walk next (array: n, map: 2n)
 * and the payload skipped, or 0 if truncated/unknown. str and slen are set for strings. */
static int head(reader *r, uint32_t *items, const uint8_t **str, uint32_t *slen)
{
    uint8_t t;
    unsigned lb = 0; /* width of a length field */
    uint32_t n = 0;
    *items = 0;
    *str = NULL;
    if (!take(r, 1)) {
        return 0;
    }
    t = r->p[-1];
    if (t <= 0x7f || t >= 0xe0 || (t >= 0xc0 && t <= 0xc3)) {
        return 1; /* fixints, nil, bools (0xc1 is unused; harmless) */
    }
    if (t <= 0x8f) {
        *items = 2u * (t & 0x0fu);
        return 1;
    }
    if (t <= 0x9f) {
        *items = t & 0x0fu;
        return 1;
    }
    if (t <= 0xbf) {
        n = t & 0x1fu;
    } else {
        switch (t) {
        case 0xc4: case 0xd9: lb = 1; break;              /* bin8, str8 */
        case 0xc5: case 0xda: case 0xdc: case 0xde: lb = 2; break;
        case 0xc6: case 0xdb: case 0xdd: case 0xdf: lb = 4; break;
        case 0xc7: return take(r, 1) && take(r, 1u + r->p[-1]);   /* ext8 */
        case 0xc8: return take(r, 2) && take(r, 1u + be(r->p - 2, 2));
        case 0xc9: return take(r, 4) && take(r, 1u + (size_t)be(r->p - 4, 4));
        case 0xcc: case 0xd0: return take(r, 1);
        case 0xcd: case 0xd1: return take(r, 2);
        case 0xca: case 0xce: case 0xd2: return take(r, 4);
        case 0xcb: case 0xcf: case 0xd3: return take(r, 8);
        case 0xd4: return take(r, 2); /* fixext 1..16: type byte + data */
        case 0xd5: return take(r, 3);
        case 0xd6: return take(r, 5);
        case 0xd7: return take(r, 9);
        case 0xd8: return take(r, 17);
        default: return 0;
        }
        if (!take(r, lb)) {
            return 0;
        }
        n = be(r->p - lb, lb);
        if (t == 0xdc || t == 0xdd) {
            *items = n;
            return 1;
        }
        if (t == 0xde || t == 0xdf) {
            if (n > 0x7fffffffu) {
                return 0;
            }
            *items = 2u * n;
            return 1;
        }
    }
    *str = r->p; /* str or bin: n bytes follow */
    *slen = n;
    return take(r, n);
}

/* Skips `items` objects, iteratively: a container adds its elements to the count, so nesting
 * costs no stack. Every pending object needs at least one byte, so a count above the bytes
 * left is refused at once (a header claiming 4 billion elements cannot make us loop). */
static int skip(reader *r, uint32_t items)
{
    while (items > 0) {
        uint32_t inner, slen, left;
        const uint8_t *s;
        if (!head(r, &inner, &s, &slen)) {
            return 0;
        }
        left = (uint32_t)(r->end - r->p);
        if (inner > left || items - 1u > left - inner) {
            return 0;
        }
        items = items - 1u + inner;
    }
    return 1;
}

int fg_map_flag(const uint8_t *payload, size_t len, const char *key)
{
    reader r;
    uint32_t items, slen;
    const uint8_t *s;
    size_t klen = strlen(key);
    int found = 0;
    r.p = payload;
    r.end = payload + len;
    if (payload == NULL || len == 0 || payload[0] < 0x80 ||
        (payload[0] > 0x8f && payload[0] != 0xde && payload[0] != 0xdf)) {
        return 0; /* not a map */
    }
    if (!head(&r, &items, &s, &slen) || items / 2 > len) {
        return 0;
    }
    for (items /= 2; items > 0; items--) {
        uint32_t inner;
        int match;
        if (!head(&r, &inner, &s, &slen) || inner > 0) {
            return 0; /* keys are strings */
        }
        match = s != NULL && slen == klen && memcmp(s, key, klen) == 0;
        if (match && found != 0) {
            return 0; /* a repeated key: protocol.md refuses such maps, so do we */
        }
        if (match) {
            found = (r.p < r.end && *r.p == 0xc3) ? 1 : -1;
        }
        if (!skip(&r, 1)) {
            return 0;
        }
    }
    return r.p == r.end && found == 1;
}
