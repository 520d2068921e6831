/* The ring of frames kept while offline: [len_hi len_lo payload...] records in a circular
 * byte buffer; a record may wrap around the end. The oldest records are dropped to make room. */
#include <string.h>

#include "fleetgate.h"

void fg_ring_init(fg_ring *r, uint8_t *mem, size_t cap)
{
    r->mem = mem;
    r->cap = mem != NULL ? cap : 0;
    r->head = 0;
    r->used = 0;
    r->frames = 0;
}

static size_t wrap(const fg_ring *r, size_t off) { return off >= r->cap ? off - r->cap : off; }

/* Copies n bytes at ring offset `off` (relative to mem) out to dst, across the end. */
static void copy_out(const fg_ring *r, size_t off, uint8_t *dst, size_t n)
{
    size_t first = r->cap - off;
    if (first > n) {
        first = n;
    }
    memcpy(dst, r->mem + off, first);
    memcpy(dst + first, r->mem, n - first);
}

static void copy_in(fg_ring *r, size_t off, const uint8_t *src, size_t n)
{
    size_t first = r->cap - off;
    if (first > n) {
        first = n;
    }
    memcpy(r->mem + off, src, first);
    memcpy(r->mem, src + first, n - first);
}

static size_t oldest_len(const fg_ring *r)
{
    uint8_t hdr[2];
    copy_out(r, r->head, hdr, 2);
    return ((size_t)hdr[0] << 8) | hdr[1];
}

void fg_ring_pop(fg_ring *r)
{
    size_t n;
    if (r->frames == 0) {
        return;
    }
    n = oldest_len(r) + 2;
    r->head = wrap(r, r->head + n);
    r->used -= n;
    r->frames--;
    if (r->frames == 0) {
        r->head = 0; /* keeps the next records contiguous when possible */
    }
}

int fg_ring_push(fg_ring *r, const uint8_t *data, size_t len)
{
    uint8_t hdr[2];
    int dropped = 0;
    if (len == 0) {
        return FG_ERR_ARG; /* peek answers 0 for an empty ring */
    }
    if (len > 0xffffu || r->cap < 2 || len > r->cap - 2) {
        return FG_ERR_NOSPACE;
    }
    while (r->cap - r->used < len + 2) {
        fg_ring_pop(r);
        dropped++;
    }
    hdr[0] = (uint8_t)(len >> 8);
    hdr[1] = (uint8_t)len;
    copy_in(r, wrap(r, r->head + r->used), hdr, 2);
    copy_in(r, wrap(r, r->head + r->used + 2), data, len);
    r->used += len + 2;
    r->frames++;
    return dropped;
}

int fg_ring_peek(const fg_ring *r, uint8_t *buf, size_t cap)
{
    size_t n;
    if (r->frames == 0) {
        return 0;
    }
    n = oldest_len(r);
    if (n > cap) {
        return FG_ERR_NOSPACE;
    }
    copy_out(r, wrap(r, r->head + 2), buf, n);
    return (int)n;
}
