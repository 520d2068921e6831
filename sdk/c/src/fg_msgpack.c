/* The msgpack writer: the subset protocol v1 frames need, smallest widths for ints. */
#include <string.h>

#include "fleetgate.h"

/* Doubles go out as IEEE 754 binary64 by their bytes; a target whose double is 32 bits
 * (some AVR toolchains) would send garbage, so refuse to build there. */
typedef char fg_double_is_64_bits[(sizeof(double) == 8) ? 1 : -1];
typedef char fg_float_is_32_bits[(sizeof(float) == 4) ? 1 : -1];

void fg_w_init(fg_writer *w, uint8_t *buf, size_t cap)
{
    w->buf = buf;
    w->cap = cap;
    w->len = 0;
    w->ok = 1;
}

static uint8_t *room(fg_writer *w, size_t n)
{
    uint8_t *p;
    if (!w->ok || w->cap - w->len < n) {
        w->ok = 0;
        return NULL;
    }
    p = w->buf + w->len;
    w->len += n;
    return p;
}

/* A type byte then v in `bytes` big-endian bytes (0 to 8). */
static void put(fg_writer *w, uint8_t type, uint64_t v, unsigned bytes)
{
    uint8_t *p = room(w, 1u + bytes);
    if (p == NULL) {
        return;
    }
    p[0] = type;
    while (bytes > 0) {
        p[bytes] = (uint8_t)v;
        v >>= 8;
        bytes--;
    }
}

/* Container/str headers: fix form below `fixmax`, else 8-bit (str only), 16 or 32-bit forms. */
static void head(fg_writer *w, uint8_t fix, uint32_t fixmax, uint8_t t8, uint8_t t16, uint32_t n)
{
    if (n < fixmax) {
        put(w, (uint8_t)(fix | n), 0, 0);
    } else if (t8 != 0 && n < 256u) {
        put(w, t8, n, 1);
    } else if (n < 65536u) {
        put(w, t16, n, 2);
    } else {
        put(w, (uint8_t)(t16 + 1u), n, 4);
    }
}

void fg_w_map(fg_writer *w, uint32_t n) { head(w, 0x80, 16, 0, 0xde, n); }

void fg_w_array(fg_writer *w, uint32_t n) { head(w, 0x90, 16, 0, 0xdc, n); }

void fg_w_strn(fg_writer *w, const char *s, size_t n)
{
    uint8_t *p;
    if (n > 0xffffffffu) {
        w->ok = 0;
        return;
    }
    head(w, 0xa0, 32, 0xd9, 0xda, (uint32_t)n);
    p = room(w, n);
    if (p != NULL && n > 0) {
        memcpy(p, s, n);
    }
}

void fg_w_str(fg_writer *w, const char *s) { fg_w_strn(w, s, strlen(s)); }

void fg_w_uint(fg_writer *w, uint64_t v)
{
    if (v < 128u) {
        put(w, (uint8_t)v, 0, 0);
    } else if (v < 256u) {
        put(w, 0xcc, v, 1);
    } else if (v < 65536u) {
        put(w, 0xcd, v, 2);
    } else if (v <= 0xffffffffu) {
        put(w, 0xce, v, 4);
    } else {
        put(w, 0xcf, v, 8);
    }
}

void fg_w_int(fg_writer *w, int64_t v)
{
    if (v >= 0) {
        fg_w_uint(w, (uint64_t)v);
    } else if (v >= -32) {
        put(w, (uint8_t)(int8_t)v, 0, 0); /* negative fixint 0xe0..0xff */
    } else if (v >= -128) {
        put(w, 0xd0, (uint64_t)v, 1);
    } else if (v >= -32768) {
        put(w, 0xd1, (uint64_t)v, 2);
    } else if (v >= -2147483647 - 1) {
        put(w, 0xd2, (uint64_t)v, 4);
    } else {
        put(w, 0xd3, (uint64_t)v, 8);
    }
}

void fg_w_double(fg_writer *w, double v)
{
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    put(w, 0xcb, bits, 8);
}

void fg_w_float32(fg_writer *w, float v)
{
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    put(w, 0xca, bits, 4);
}

void fg_w_bool(fg_writer *w, int v) { put(w, v ? 0xc3 : 0xc2, 0, 0); }

void fg_w_nil(fg_writer *w) { put(w, 0xc0, 0, 0); }
