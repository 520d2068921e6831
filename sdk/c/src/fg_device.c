/* The device's state machine: metrics, the frame schedule, live or ringed frames, the birth
 * after each connect, replay with h=true paced by acknowledgements, rebirth on request. */
#include <string.h>

#include "fg_internal.h"

static size_t bounded_len(const char *s, size_t max)
{
    size_t n = 0;
    while (n <= max && s[n] != '\0') {
        n++;
    }
    return n;
}

static int valid_device_id(const char *s)
{
    size_t i;
    for (i = 0; s[i] != '\0'; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 (i > 0 && (c == '_' || c == '.' || c == '-'));
        if (!ok || i >= 64) {
            return 0;
        }
    }
    return i > 0;
}

/* Non-empty levels without + or # (a wildcard would make our subscriptions match others). */
static int valid_prefix(const char *s)
{
    size_t i, level = 0;
    for (i = 0; s[i] != '\0'; i++) {
        if (s[i] == '+' || s[i] == '#' || (s[i] == '/' && level == 0)) {
            return 0;
        }
        level = s[i] == '/' ? 0 : level + 1;
    }
    return level > 0;
}

static int valid_config(const fg_config *c)
{
    size_t i, hw, fw;
    if (c->device_id == NULL || c->hw == NULL || c->fw == NULL || c->publish == NULL ||
        c->interval_ms == 0 || c->n_labels > 16 || (c->n_labels > 0 && c->labels == NULL) ||
        !valid_device_id(c->device_id) || !valid_prefix(c->topic_prefix)) {
        return 0;
    }
    hw = bounded_len(c->hw, 256);
    fw = bounded_len(c->fw, 256);
    if (hw == 0 || hw > 256 || fw == 0 || fw > 256) {
        return 0;
    }
    for (i = 0; i < c->n_labels; i++) {
        const fg_label *l = &c->labels[i];
        size_t j;
        if (!fg_valid_label_name(l->key) || l->value == NULL || bounded_len(l->value, 256) > 256) {
            return 0;
        }
        for (j = 0; j < i; j++) {
            if (fg_streq(c->labels[j].key, l->key)) {
                return 0; /* a repeated key makes the gateway refuse the birth */
            }
        }
    }
    return 1;
}

int fg_init(fg_device *dev, const fg_config *config, uint8_t *ring_mem, size_t ring_bytes,
            uint8_t *frame_buf, size_t frame_bytes)
{
    if (dev == NULL || config == NULL || frame_buf == NULL || frame_bytes < 32) {
        return FG_ERR_ARG;
    }
    memset(dev, 0, sizeof *dev);
    dev->cfg = *config;
    if (dev->cfg.topic_prefix == NULL) {
        dev->cfg.topic_prefix = "fleet";
    }
    if (dev->cfg.max_in_flight == 0) {
        dev->cfg.max_in_flight = 4;
    }
    if (!valid_config(&dev->cfg) || fg_topic(dev, FG_TOPIC_TELEMETRY, dev->topic, FG_TOPIC_MAX) < 0) {
        return FG_ERR_ARG;
    }
    fg_ring_init(&dev->ring, ring_mem, ring_bytes);
    dev->frame_buf = frame_buf;
    dev->frame_cap = frame_bytes;
    dev->birth_pending = 1;
    return FG_OK;
}

static fg_metric declare(fg_device *dev, const char *name, fg_metric_type type,
                         const double *bounds, size_t n_bounds)
{
    fg_metric_state *m;
    size_t i;
    if (dev == NULL || !fg_valid_metric_name(name) || n_bounds > 64 ||
        (n_bounds > 0 && bounds == NULL)) {
        return FG_ERR_ARG;
    }
    for (i = 0; i < n_bounds; i++) {
        /* finite (x - x is NaN for NaN and infinities) and strictly increasing */
        if (bounds[i] - bounds[i] != 0.0 || (i > 0 && !(bounds[i - 1] < bounds[i]))) {
            return FG_ERR_ARG;
        }
    }
    for (i = 0; i < dev->n_metrics; i++) {
        if (fg_streq(dev->metrics[i].name, name)) {
            return FG_ERR_ARG;
        }
    }
    if (dev->n_metrics >= FG_MAX_METRICS || (size_t)(FG_MAX_BUCKETS - dev->n_buckets) < n_bounds) {
        return FG_ERR_FULL;
    }
    m = &dev->metrics[dev->n_metrics];
    m->name = name;
    m->type = (uint8_t)type;
    m->bounds = bounds;
    m->n_bounds = (uint16_t)n_bounds;
    m->bucket0 = dev->n_buckets;
    m->has_value = type != FG_GAUGE;
    dev->n_buckets = (uint16_t)(dev->n_buckets + n_bounds);
    dev->birth_pending = 1; /* re-births only append: earlier aliases keep their meaning */
    return (fg_metric)dev->n_metrics++;
}

fg_metric fg_declare_gauge(fg_device *dev, const char *name)
{
    return declare(dev, name, FG_GAUGE, NULL, 0);
}

fg_metric fg_declare_counter(fg_device *dev, const char *name)
{
    return declare(dev, name, FG_COUNTER, NULL, 0);
}

fg_metric fg_declare_histogram(fg_device *dev, const char *name, const double *bounds,
                               size_t n_bounds)
{
    return declare(dev, name, FG_HISTOGRAM, bounds, n_bounds);
}

/* The metric behind handle h if it has that type and v is finite (the gateway refuses a whole
 * frame for one NaN or infinity, so it never enters the state). */
static fg_metric_state *slot(fg_device *dev, fg_metric h, fg_metric_type type, double v)
{
    if (dev == NULL || h < 0 || h >= (fg_metric)dev->n_metrics ||
        dev->metrics[h].type != (uint8_t)type || v - v != 0.0) {
        return NULL;
    }
    return &dev->metrics[h];
}

int fg_gauge_set(fg_device *dev, fg_metric h, double value)
{
    fg_metric_state *m = slot(dev, h, FG_GAUGE, value);
    if (m == NULL) {
        return FG_ERR_ARG;
    }
    m->value = value;
    m->has_value = 1;
    return FG_OK;
}

int fg_counter_add(fg_device *dev, fg_metric h, double delta)
{
    fg_metric_state *m = slot(dev, h, FG_COUNTER, delta);
    if (m == NULL || !(delta >= 0.0)) {
        return FG_ERR_ARG;
    }
    m->value += delta;
    return FG_OK;
}

int fg_histogram_observe(fg_device *dev, fg_metric h, double value)
{
    fg_metric_state *m = slot(dev, h, FG_HISTOGRAM, value);
    uint16_t k;
    if (m == NULL) {
        return FG_ERR_ARG;
    }
    for (k = 0; k < m->n_bounds; k++) {
        if (value <= m->bounds[k]) {
            dev->buckets[m->bucket0 + k]++;
            break;
        }
    }
    m->count++; /* values above every bound are only in count, the +Inf bucket */
    m->value += value;
    return FG_OK;
}

/* Calls the transport. pumping, set for the call, keeps an ack delivered from inside the
 * callback from starting a replay into frame_buf while the transport may still read it. */
static int publish(fg_device *dev, fg_topic_kind kind, const uint8_t *payload, size_t len)
{
    int rc;
    if (fg_topic(dev, kind, dev->topic, FG_TOPIC_MAX) < 0) {
        return FG_ERR_NOSPACE;
    }
    dev->pumping = 1;
    dev->in_flight++; /* before the call: its ack may come from inside it */
    rc = dev->cfg.publish(dev->cfg.publish_ctx, dev->topic, payload, len, 1, 0);
    dev->pumping = 0;
    if (rc != 0) {
        if (dev->in_flight > 0) {
            dev->in_flight--;
        }
        dev->stats.publish_errors++;
        return FG_ERR_PUBLISH;
    }
    return FG_OK;
}

static int send_birth(fg_device *dev, uint64_t now_ms)
{
    size_t len = fg_encode_birth(dev, now_ms, dev->frame_buf, dev->frame_cap);
    int rc;
    if (len == 0) {
        return FG_ERR_NOSPACE;
    }
    rc = publish(dev, FG_TOPIC_BIRTH, dev->frame_buf, len);
    if (rc == FG_OK) {
        dev->birth_pending = 0;
        dev->stats.births_sent++;
    }
    return rc;
}

/* Replays ringed frames, oldest first, while the window allows. A stored frame is a fixmap of
 * 5 ending in "m": the replayed copy is a fixmap of 6 with "h": true appended. */
static void pump(fg_device *dev)
{
    while (!dev->pumping && dev->connected && !dev->birth_pending && dev->ring.frames > 0 &&
           dev->in_flight < dev->cfg.max_in_flight) {
        int n = fg_ring_peek(&dev->ring, dev->frame_buf, dev->frame_cap - 3);
        if (n <= 0 || dev->frame_buf[0] != 0x85) {
            fg_ring_pop(&dev->ring); /* cannot happen with frames from fg_tick; never stall */
            dev->stats.frames_too_big++;
            continue;
        }
        dev->frame_buf[0] = 0x86;
        memcpy(dev->frame_buf + n, "\xa1h\xc3", 3);
        if (publish(dev, FG_TOPIC_TELEMETRY, dev->frame_buf, (size_t)n + 3) != FG_OK) {
            return; /* stays in the ring; retried on the next ack, tick or connect */
        }
        fg_ring_pop(&dev->ring);
        dev->stats.frames_replayed++;
    }
}

static int emit_frame(fg_device *dev, uint64_t now_ms)
{
    size_t len = fg_encode_telemetry(dev, dev->seq, now_ms, 0, dev->frame_buf, dev->frame_cap);
    int dropped;
    /* seq advances even for a frame lost to its size: the gap shows the loss at the gateway */
    dev->seq++;
    dev->stats.frames_built++;
    if (len == 0 || len + 3 > dev->frame_cap) {
        dev->stats.frames_too_big++; /* +3: it must fit again with "h": true to be replayed */
        return FG_ERR_NOSPACE;
    }
    if (dev->connected && !dev->birth_pending &&
        publish(dev, FG_TOPIC_TELEMETRY, dev->frame_buf, len) == FG_OK) {
        dev->stats.frames_sent++;
        return FG_OK;
    }
    dropped = fg_ring_push(&dev->ring, dev->frame_buf, len);
    if (dropped < 0) {
        dev->stats.frames_too_big++;
        return FG_ERR_NOSPACE;
    }
    dev->stats.frames_dropped += (uint32_t)dropped;
    dev->stats.frames_ringed++;
    return FG_OK;
}

int fg_on_connect(fg_device *dev, uint64_t now_ms)
{
    int rc;
    dev->connected = 1;
    dev->in_flight = 0;
    dev->birth_pending = 1;
    rc = send_birth(dev, now_ms);
    pump(dev);
    return rc;
}

void fg_on_publish_acked(fg_device *dev)
{
    if (dev->in_flight > 0) {
        dev->in_flight--;
    }
    pump(dev);
}

void fg_on_disconnect(fg_device *dev)
{
    dev->connected = 0;
    dev->in_flight = 0;
    dev->birth_pending = 1;
}

int fg_publish_now(fg_device *dev, uint64_t now_ms)
{
    int rc;
    if (dev->connected && dev->birth_pending) {
        (void)send_birth(dev, now_ms); /* failed: the frame is ringed, the birth retried */
    }
    rc = emit_frame(dev, now_ms);
    dev->in_flight = 0; /* once per frame: a transport that never acks still replays */
    pump(dev);
    return rc;
}

int fg_tick(fg_device *dev, uint64_t now_ms)
{
    uint32_t interval = dev->cfg.interval_ms;
    /* not due yet; a clock set back (SNTP) by more than an interval before the last frame
     * restarts the cadence instead of silencing the device until it catches up */
    if (dev->ticked && now_ms < dev->next_tick_ms &&
        dev->next_tick_ms - now_ms <= 2 * (uint64_t)interval) {
        if (dev->connected && dev->birth_pending) {
            (void)send_birth(dev, now_ms);
            pump(dev);
        }
        return FG_OK;
    }
    /* keep the cadence; after a stall of more than an interval, restart it from now */
    dev->next_tick_ms = (dev->ticked && now_ms >= dev->next_tick_ms &&
                         now_ms - dev->next_tick_ms < interval)
                            ? dev->next_tick_ms + interval
                            : now_ms + interval;
    dev->ticked = 1;
    return fg_publish_now(dev, now_ms);
}

int fg_on_message(fg_device *dev, const char *topic, const uint8_t *payload, size_t len,
                  uint64_t now_ms)
{
    const char *rest = fg_after(topic, dev->cfg.topic_prefix);
    const char *cmd = fg_after(fg_after(fg_after(rest, "/"), dev->cfg.device_id), "/cmd");
    const char *gateway = fg_after(rest, "/_gateway/");
    const char *flag = NULL;
    int rc;
    if (cmd != NULL && *cmd == '\0') {
        flag = "rebirth";
    } else if (gateway != NULL && *gateway != '/') {
        while (*gateway != '\0' && *gateway != '/') {
            gateway++; /* the gateway id: one non-empty level */
        }
        if (fg_streq(gateway, "/state")) {
            flag = "online";
        }
    }
    if (flag == NULL || !fg_map_flag(payload, len, flag)) {
        return FG_MSG_IGNORED;
    }
    if (!dev->connected) {
        return FG_MSG_IGNORED; /* the next connect sends a birth anyway */
    }
    dev->birth_pending = 1;
    rc = send_birth(dev, now_ms);
    pump(dev);
    return rc == FG_OK ? FG_MSG_REBIRTH : rc;
}

int fg_publish_death(fg_device *dev)
{
    uint8_t buf[16];
    size_t len = fg_death_payload(dev, buf, sizeof buf);
    return publish(dev, FG_TOPIC_DEATH, buf, len);
}

const fg_stats *fg_get_stats(const fg_device *dev) { return &dev->stats; }

uint32_t fg_ring_count(const fg_device *dev) { return dev->ring.frames; }
