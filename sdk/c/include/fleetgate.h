/*
 * fleetgate C SDK: a device speaking fleetgate device protocol v1 (docs/protocol.md).
 *
 * C99, no malloc, no libc beyond string.h/stdint.h/stddef.h. The caller owns every byte of
 * memory (the fg_device struct, the ring of frames kept while offline, the frame buffer) and
 * the transport: the SDK calls a publish callback and is told about connects, disconnects,
 * acknowledgements and incoming messages. It never reads a clock: every call that needs the
 * time takes now_ms (device clock, ms since the Unix epoch; sync it before the first birth).
 *
 * Not thread-safe: call every fg_* function of one device from one task (or under one lock).
 * The publish callback may be called from inside any fg_* call except the encode-only ones.
 */
#ifndef FLEETGATE_H
#define FLEETGATE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Compile-time capacities (override with -D; they size struct fg_device). */
#ifndef FG_MAX_METRICS
#define FG_MAX_METRICS 16 /* declared metrics per device */
#endif
#ifndef FG_MAX_BUCKETS
#define FG_MAX_BUCKETS 32 /* histogram bounds, summed over all histograms */
#endif
#ifndef FG_TOPIC_MAX
#define FG_TOPIC_MAX 112 /* longest topic incl. NUL: prefix + "/" + id (<= 64) + "/telemetry" */
#endif

#define FG_PROTOCOL_VERSION 1

/* Return codes: >= 0 success, < 0 failure. */
#define FG_OK 0
#define FG_ERR_ARG (-1)     /* bad argument (NULL, invalid name, bounds not increasing, ...) */
#define FG_ERR_FULL (-2)    /* FG_MAX_METRICS or FG_MAX_BUCKETS reached */
#define FG_ERR_NOSPACE (-3) /* frame does not fit the frame buffer, or topic too long */
#define FG_ERR_PUBLISH (-4) /* the publish callback returned nonzero */
#define FG_ERR_STATE (-5)   /* not connected / not possible now */

/* fg_on_message results */
#define FG_MSG_IGNORED 0 /* not for us, or nothing to do */
#define FG_MSG_REBIRTH 1 /* a cmd {"rebirth": true} or gateway {"online": true}: birth re-sent */

/*
 * Transport. Return 0 when the transport took the message (queued or sent), nonzero when it
 * did not (not connected, queue full): a telemetry frame then goes into the ring. qos is
 * always 1, retain always 0 (the protocol's rule); they are passed so the callback can hand
 * them to the MQTT client as they are. topic is NUL-terminated; topic and payload are only
 * valid during the call (copy them if the client sends later).
 */
typedef int (*fg_publish_fn)(void *ctx, const char *topic, const uint8_t *payload, size_t len,
                             int qos, int retain);

typedef struct {
    const char *key;
    const char *value;
} fg_label;

typedef struct {
    const char *device_id;    /* [A-Za-z0-9][A-Za-z0-9_.-]{0,63}; taken from the topic */
    const char *topic_prefix; /* NULL: "fleet" */
    const char *hw;           /* platform, e.g. "stm32f4" */
    const char *fw;           /* firmware version */
    uint32_t interval_ms;     /* ms between telemetry frames (fg_tick), >= 1 */
    const fg_label *labels;   /* birth labels (added to every series), <= 16; may be NULL */
    size_t n_labels;
    uint32_t boot_id;         /* new at every boot: hardware RNG, or a counter kept in flash */
    fg_publish_fn publish;
    void *publish_ctx;
    uint16_t max_in_flight;   /* replayed frames unacknowledged at once; 0: 4 */
} fg_config;

/* Everything below the config strings must outlive the device (pointers are kept). */

typedef enum { FG_GAUGE = 0, FG_COUNTER = 1, FG_HISTOGRAM = 2 } fg_metric_type;

/* A metric handle: its alias in the birth (>= 0), or an FG_ERR_* (< 0). */
typedef int fg_metric;

typedef struct {
    uint32_t frames_built;    /* telemetry frames built (= seq of the next frame) */
    uint32_t frames_sent;     /* live frames the transport took */
    uint32_t frames_ringed;   /* frames put into the ring (not connected, or publish failed) */
    uint32_t frames_dropped;  /* ringed frames dropped, oldest first, to make room */
    uint32_t frames_replayed; /* ringed frames the transport took, sent with h=true */
    uint32_t frames_too_big;  /* frames that did not fit the frame buffer or the ring: lost */
    uint32_t births_sent;
    uint32_t publish_errors;  /* publish callback returned nonzero */
} fg_stats;

/* A ring of variable-length frames in caller memory: each frame costs its length + 2 bytes. */
typedef struct {
    uint8_t *mem;
    size_t cap;
    size_t head;   /* offset of the oldest frame's length prefix */
    size_t used;   /* bytes in use */
    uint32_t frames;
} fg_ring;

/* Private: the state of one declared metric. */
typedef struct {
    const char *name;
    const double *bounds; /* histograms: caller's array, kept */
    double value;         /* gauge value, counter total, histogram sum */
    uint32_t count;       /* histogram observations */
    uint16_t n_bounds;
    uint16_t bucket0;     /* first of its counts in fg_device.buckets */
    uint8_t type;
    uint8_t has_value;    /* gauges are sent once set; counters and histograms always */
} fg_metric_state;

/* Caller allocates (static or on a task's stack); fill only through fg_init. */
typedef struct {
    fg_config cfg;
    fg_metric_state metrics[FG_MAX_METRICS];
    uint32_t buckets[FG_MAX_BUCKETS]; /* per-bucket (non-cumulative) counts */
    uint16_t n_metrics;
    uint16_t n_buckets;
    uint16_t in_flight;
    uint8_t connected;
    uint8_t birth_pending;  /* a birth must go out before the next live telemetry */
    uint8_t pumping;        /* guards replay against re-entry from the publish callback */
    uint8_t ticked;
    uint32_t seq;           /* seq of the next telemetry frame */
    uint64_t next_tick_ms;
    fg_ring ring;
    uint8_t *frame_buf;
    size_t frame_cap;
    fg_stats stats;
    char topic[FG_TOPIC_MAX];
} fg_device;

/*
 * Sets up dev. ring_mem/ring_bytes: frames kept while offline, each costing its length + 2
 * (0 bytes: none kept, frames built offline are lost and counted). frame_buf/frame_bytes
 * (>= 32): where births and frames are encoded. Upper bounds: a birth takes 72 + hw + fw +
 * (5 + key + value) per label + (16 + name) per metric + (3 + 9 per bound) per histogram; a
 * telemetry frame (with the 3 bytes of "h" on replay) 37 + 13 per gauge or counter + (22 + 5
 * per bound) per histogram. fg_encode_birth/fg_encode_telemetry give the exact sizes.
 * Returns FG_OK or FG_ERR_ARG (invalid device id, prefix, hw/fw, labels, interval).
 */
int fg_init(fg_device *dev, const fg_config *config, uint8_t *ring_mem, size_t ring_bytes,
            uint8_t *frame_buf, size_t frame_bytes);

/*
 * Declarations: name is kept (a string literal). Returns the handle (its alias) or < 0.
 * Declare before connecting; one declared later is added to a new birth (same boot, seq
 * continues) sent before the next frame. Histogram bounds: strictly increasing, finite,
 * without +Inf, <= 64, kept by pointer.
 */
fg_metric fg_declare_gauge(fg_device *dev, const char *name);
fg_metric fg_declare_counter(fg_device *dev, const char *name);
fg_metric fg_declare_histogram(fg_device *dev, const char *name, const double *bounds,
                               size_t n_bounds);

/* The metric API (seed style). Wrong handle or wrong type: FG_ERR_ARG, nothing changes. */
int fg_gauge_set(fg_device *dev, fg_metric m, double value);
int fg_counter_add(fg_device *dev, fg_metric m, double delta); /* delta >= 0 */
int fg_histogram_observe(fg_device *dev, fg_metric m, double value);

/*
 * Lifecycle.
 * fg_on_connect: call when the MQTT session is up and cmd + gateway state are subscribed
 *   (see fg_topic). Publishes the birth, then replays ringed frames (h=true), at most
 *   max_in_flight unacknowledged at once. Returns FG_OK or FG_ERR_PUBLISH (the birth is then
 *   retried at each fg_tick; no telemetry goes live before it).
 * fg_on_publish_acked: call on each PUBACK of the device's publishes (libmosquitto's
 *   on_publish); continues the replay. Every frame built also refills the window, so a
 *   transport that reports no acks still replays max_in_flight frames per interval.
 * fg_on_disconnect: call when the session is lost; frames go to the ring until the next
 *   fg_on_connect.
 * fg_tick: call often (at least every interval); builds a frame each interval_ms (the first
 *   call builds one at once; after a stall, or a clock set back by more than an interval,
 *   the schedule restarts from now): live when connected and the transport takes it, else
 *   ringed.
 *   Returns FG_OK, or FG_ERR_NOSPACE when a frame was lost for its size.
 * fg_publish_now: build and send (or ring) one frame now, outside the schedule.
 * fg_on_message: give every message received on the cmd topic or the gateway state topic.
 *   Returns FG_MSG_REBIRTH, FG_MSG_IGNORED or FG_ERR_PUBLISH.
 */
int fg_on_connect(fg_device *dev, uint64_t now_ms);
void fg_on_publish_acked(fg_device *dev);
void fg_on_disconnect(fg_device *dev);
int fg_tick(fg_device *dev, uint64_t now_ms);
int fg_publish_now(fg_device *dev, uint64_t now_ms);
int fg_on_message(fg_device *dev, const char *topic, const uint8_t *payload, size_t len,
                  uint64_t now_ms);

/* Publishes the death (before a clean shutdown). FG_OK or FG_ERR_PUBLISH. */
int fg_publish_death(fg_device *dev);

/* Topics, NUL-terminated into buf; returns the length (without NUL) or FG_ERR_NOSPACE.
 * FG_TOPIC_GATEWAY_STATE is the subscription filter "{prefix}/_gateway/+/state". */
typedef enum {
    FG_TOPIC_BIRTH = 0,
    FG_TOPIC_TELEMETRY = 1,
    FG_TOPIC_DEATH = 2,
    FG_TOPIC_CMD = 3,
    FG_TOPIC_GATEWAY_STATE = 4
} fg_topic_kind;
int fg_topic(const fg_device *dev, fg_topic_kind kind, char *buf, size_t cap);

/* Encode-only (no publish, no state change): return the payload length, or 0 if cap is too
 * small. fg_death_payload is the MQTT Will's payload (QoS 1, not retained). */
size_t fg_death_payload(const fg_device *dev, uint8_t *buf, size_t cap);
size_t fg_encode_birth(const fg_device *dev, uint64_t now_ms, uint8_t *buf, size_t cap);
size_t fg_encode_telemetry(const fg_device *dev, uint32_t seq, uint64_t now_ms, int historical,
                           uint8_t *buf, size_t cap);

const fg_stats *fg_get_stats(const fg_device *dev);
uint32_t fg_ring_count(const fg_device *dev); /* frames waiting in the ring */

/* The ring alone (used by fg_device; public for tests and custom stores). */
void fg_ring_init(fg_ring *r, uint8_t *mem, size_t cap);
/* Appends a frame, dropping the oldest until it fits. Returns the number dropped (>= 0), or
 * FG_ERR_NOSPACE when len + 2 > cap or len > 65535 (nothing changes then). */
int fg_ring_push(fg_ring *r, const uint8_t *data, size_t len);
/* Copies the oldest frame into buf; returns its length, 0 when empty, FG_ERR_NOSPACE when
 * cap is too small. Does not remove it. */
int fg_ring_peek(const fg_ring *r, uint8_t *buf, size_t cap);
void fg_ring_pop(fg_ring *r); /* removes the oldest frame (no-op when empty) */

/*
 * The msgpack writer (for custom frames and tests). Each call appends to buf; on overflow the
 * writer is marked failed (ok = 0) and later writes do nothing. Check ok before using len.
 */
typedef struct {
    uint8_t *buf;
    size_t cap;
    size_t len;
    int ok;
} fg_writer;

void fg_w_init(fg_writer *w, uint8_t *buf, size_t cap);
void fg_w_map(fg_writer *w, uint32_t n);
void fg_w_array(fg_writer *w, uint32_t n);
void fg_w_str(fg_writer *w, const char *s); /* NUL-terminated */
void fg_w_strn(fg_writer *w, const char *s, size_t n);
void fg_w_uint(fg_writer *w, uint64_t v);   /* smallest width */
void fg_w_int(fg_writer *w, int64_t v);     /* smallest width */
void fg_w_double(fg_writer *w, double v);   /* always float64 (0xcb) */
void fg_w_float32(fg_writer *w, float v);   /* float32 (0xca): 24 bits of precision */
void fg_w_bool(fg_writer *w, int v);
void fg_w_nil(fg_writer *w);

#ifdef __cplusplus
}
#endif

#endif /* FLEETGATE_H */
