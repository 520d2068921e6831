/* Payloads of protocol v1 (birth, telemetry, death) from a device's state, and its topics.
 * Key order is fixed: a replayed frame is marked by rewriting its map header and appending
 * "h": true (see fg_device.c), so telemetry must end with "m". */
#include <string.h>

#include "fg_internal.h"

static void key_uint(fg_writer *w, const char *key, uint64_t v)
{
    fg_w_strn(w, key, 1);
    fg_w_uint(w, v);
}

size_t fg_death_payload(const fg_device *dev, uint8_t *buf, size_t cap)
{
    fg_writer w;
    fg_w_init(&w, buf, cap);
    fg_w_map(&w, 2);
    key_uint(&w, "v", FG_PROTOCOL_VERSION);
    key_uint(&w, "b", dev->cfg.boot_id);
    return w.ok ? w.len : 0;
}

size_t fg_encode_birth(const fg_device *dev, uint64_t now_ms, uint8_t *buf, size_t cap)
{
    static const char *const type_names[] = {"gauge", "counter", "histogram"};
    fg_writer w;
    size_t i;
    uint16_t j;
    fg_w_init(&w, buf, cap);
    fg_w_map(&w, 8);
    key_uint(&w, "v", FG_PROTOCOL_VERSION);
    key_uint(&w, "b", dev->cfg.boot_id);
    key_uint(&w, "t", now_ms);
    fg_w_str(&w, "hw");
    fg_w_str(&w, dev->cfg.hw);
    fg_w_str(&w, "fw");
    fg_w_str(&w, dev->cfg.fw);
    fg_w_str(&w, "labels");
    fg_w_map(&w, (uint32_t)dev->cfg.n_labels);
    for (i = 0; i < dev->cfg.n_labels; i++) {
        fg_w_str(&w, dev->cfg.labels[i].key);
        fg_w_str(&w, dev->cfg.labels[i].value);
    }
    fg_w_str(&w, "interval");
    fg_w_uint(&w, dev->cfg.interval_ms);
    fg_w_str(&w, "metrics");
    fg_w_array(&w, dev->n_metrics);
    for (j = 0; j < dev->n_metrics; j++) {
        const fg_metric_state *m = &dev->metrics[j];
        fg_w_array(&w, m->type == FG_HISTOGRAM ? 4 : 3);
        fg_w_uint(&w, j);
        fg_w_str(&w, m->name);
        fg_w_str(&w, type_names[m->type]);
        if (m->type == FG_HISTOGRAM) {
            uint16_t k;
            fg_w_array(&w, m->n_bounds);
            for (k = 0; k < m->n_bounds; k++) {
                fg_w_double(&w, m->bounds[k]);
            }
        }
    }
    return w.ok ? w.len : 0;
}

static void histogram_value(fg_writer *w, const fg_device *dev, const fg_metric_state *m)
{
    uint32_t cumulative = 0;
    uint16_t k;
    fg_w_array(w, 3);
    fg_w_uint(w, m->count);
    fg_w_double(w, m->value);
    fg_w_array(w, m->n_bounds);
    for (k = 0; k < m->n_bounds; k++) {
        cumulative += dev->buckets[m->bucket0 + k];
        fg_w_uint(w, cumulative);
    }
}

size_t fg_encode_telemetry(const fg_device *dev, uint32_t seq, uint64_t now_ms, int historical,
                           uint8_t *buf, size_t cap)
{
    fg_writer w;
    uint16_t j;
    uint32_t n = 0;
    for (j = 0; j < dev->n_metrics; j++) {
        n += dev->metrics[j].has_value;
    }
    fg_w_init(&w, buf, cap);
    fg_w_map(&w, historical ? 6 : 5);
    key_uint(&w, "v", FG_PROTOCOL_VERSION);
    key_uint(&w, "b", dev->cfg.boot_id);
    key_uint(&w, "s", seq);
    key_uint(&w, "t", now_ms);
    fg_w_strn(&w, "m", 1);
    fg_w_array(&w, n);
    for (j = 0; j < dev->n_metrics; j++) {
        const fg_metric_state *m = &dev->metrics[j];
        if (!m->has_value) {
            continue;
        }
        fg_w_array(&w, 2);
        fg_w_uint(&w, j);
        if (m->type == FG_HISTOGRAM) {
            histogram_value(&w, dev, m);
        } else {
            fg_w_double(&w, m->value);
        }
    }
    if (historical) {
        fg_w_strn(&w, "h", 1);
        fg_w_bool(&w, 1);
    }
    return w.ok ? w.len : 0;
}

/* Appends s to buf at *len; 0 when it does not fit (with the NUL). */
static int cat(char *buf, size_t cap, size_t *len, const char *s)
{
    size_t n = strlen(s);
    if (cap - *len <= n) {
        return 0;
    }
    memcpy(buf + *len, s, n + 1);
    *len += n;
    return 1;
}

int fg_topic(const fg_device *dev, fg_topic_kind kind, char *buf, size_t cap)
{
    static const char *const kinds[] = {"/birth", "/telemetry", "/death", "/cmd"};
    size_t len = 0;
    int ok;
    if ((unsigned)kind > (unsigned)FG_TOPIC_GATEWAY_STATE) {
        return FG_ERR_ARG;
    }
    if (cap == 0) {
        return FG_ERR_NOSPACE;
    }
    buf[0] = '\0';
    ok = cat(buf, cap, &len, dev->cfg.topic_prefix);
    if (kind == FG_TOPIC_GATEWAY_STATE) {
        ok = ok && cat(buf, cap, &len, "/_gateway/+/state");
    } else {
        ok = ok && cat(buf, cap, &len, "/") && cat(buf, cap, &len, dev->cfg.device_id) &&
             cat(buf, cap, &len, kinds[kind]);
    }
    return ok ? (int)len : FG_ERR_NOSPACE;
}
