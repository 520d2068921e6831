/* Payload cases for check_roundtrip.py, run identically on the host and under QEMU:
 * - the encodable valid cases of tests/data/protocol-v1.json, by name and byte for byte (the
 *   birth and death through the device API, the telemetry vectors through the writer since
 *   they carry dt, names, labels, float32, key orders and repeated metrics that the device's
 *   snapshot frames do not);
 * - "sdk": every publish of a scripted device life (connect, live frames, an outage that
 *   overflows the ring, a declaration while offline, reconnect with paced replay, rebirth
 *   requests, death); "sdk-stats": its counters as a msgpack map.
 * The script is mirrored in check_roundtrip.py; change both together. */
#include <string.h>

#include "fg_cases.h"
#include "fleetgate.h"

#define T0 1790000000000ULL

static fg_emit_fn out;
static int failures;

static void expect(int cond) { failures += !cond; }

static void emit_writer(const char *name, const char *topic, const fg_writer *w)
{
    expect(w->ok);
    out(name, topic, w->buf, w->len);
}

static void head5(fg_writer *w, uint32_t n_keys, uint32_t seq)
{
    fg_w_map(w, n_keys);
    fg_w_str(w, "v");
    fg_w_uint(w, 1);
    fg_w_str(w, "b");
    fg_w_uint(w, 0xdeadbeefu);
    fg_w_str(w, "s");
    fg_w_uint(w, seq);
    fg_w_str(w, "t");
    fg_w_uint(w, T0);
}

static void vector_telemetry(void)
{
    static const char *topic = "fleet/dev-01/telemetry";
    uint8_t buf[128];
    fg_writer w;

    fg_w_init(&w, buf, sizeof buf); /* telemetry-aliases */
    head5(&w, 5, 0);
    fg_w_str(&w, "m");
    fg_w_array(&w, 3);
    fg_w_array(&w, 2), fg_w_uint(&w, 0), fg_w_double(&w, 41.5);
    fg_w_array(&w, 2), fg_w_uint(&w, 1), fg_w_uint(&w, 1200);
    fg_w_array(&w, 3), fg_w_uint(&w, 0), fg_w_double(&w, 41.75), fg_w_int(&w, 5000);
    emit_writer("telemetry-aliases", topic, &w);

    fg_w_init(&w, buf, sizeof buf); /* telemetry-float32-and-small-ints */
    head5(&w, 5, 65536);
    fg_w_str(&w, "m");
    fg_w_array(&w, 2);
    fg_w_array(&w, 2), fg_w_uint(&w, 0), fg_w_float32(&w, 36.25f);
    fg_w_array(&w, 2), fg_w_uint(&w, 1), fg_w_uint(&w, 7);
    emit_writer("telemetry-float32-and-small-ints", topic, &w);

    fg_w_init(&w, buf, sizeof buf); /* telemetry-names-labels-historical: keys reversed */
    fg_w_map(&w, 6);
    fg_w_str(&w, "m");
    fg_w_array(&w, 1);
    fg_w_array(&w, 4);
    fg_w_str(&w, "liquid_cpu_usage_percent");
    fg_w_double(&w, 55.5);
    fg_w_int(&w, -1000);
    fg_w_map(&w, 1), fg_w_str(&w, "core"), fg_w_str(&w, "1");
    fg_w_str(&w, "t"), fg_w_uint(&w, T0);
    fg_w_str(&w, "s"), fg_w_uint(&w, 7);
    fg_w_str(&w, "b"), fg_w_uint(&w, 0xdeadbeefu);
    fg_w_str(&w, "v"), fg_w_uint(&w, 1);
    fg_w_str(&w, "h");
    fg_w_bool(&w, 1);
    emit_writer("telemetry-names-labels-historical", topic, &w);

    fg_w_init(&w, buf, sizeof buf); /* telemetry-histogram */
    head5(&w, 5, 8);
    fg_w_str(&w, "m");
    fg_w_array(&w, 1);
    fg_w_array(&w, 2), fg_w_uint(&w, 2);
    fg_w_array(&w, 3), fg_w_uint(&w, 10), fg_w_double(&w, 0.42);
    fg_w_array(&w, 4);
    fg_w_uint(&w, 1), fg_w_uint(&w, 6), fg_w_uint(&w, 9), fg_w_uint(&w, 10);
    emit_writer("telemetry-histogram", topic, &w);
}

static int never_called(void *ctx, const char *topic, const uint8_t *p, size_t n, int q, int r)
{
    (void)ctx, (void)topic, (void)p, (void)n, (void)q, (void)r;
    failures++;
    return 1;
}

static void vector_birth_death(void)
{
    static const fg_label labels[] = {{"site", "lab-7"}};
    static const double bounds[] = {0.001, 0.01, 0.1, 1.0};
    static uint8_t frame[256];
    static fg_device dev;
    fg_config c;
    size_t n;
    memset(&c, 0, sizeof c);
    c.device_id = "dev-01";
    c.hw = "esp32-s3";
    c.fw = "2.1.0";
    c.interval_ms = 10000;
    c.labels = labels;
    c.n_labels = 1;
    c.boot_id = 0xdeadbeefu;
    c.publish = never_called;
    expect(fg_init(&dev, &c, NULL, 0, frame, sizeof frame) == FG_OK);
    expect(fg_declare_gauge(&dev, "device_temperature_celsius") == 0);
    expect(fg_declare_counter(&dev, "liquid_inference_total") == 1);
    expect(fg_declare_histogram(&dev, "liquid_inference_duration_seconds", bounds, 4) == 2);
    n = fg_encode_birth(&dev, T0, frame, sizeof frame);
    expect(n > 0);
    out("birth-basic", "fleet/dev-01/birth", frame, n);
    n = fg_death_payload(&dev, frame, sizeof frame);
    expect(n > 0);
    out("death", "fleet/dev-01/death", frame, n);
}

/* The scripted device life. The transport "takes" a publish while up; acks are given by
 * the script. */
static int link_up;

static int transport(void *ctx, const char *topic, const uint8_t *p, size_t n, int qos, int retain)
{
    (void)ctx;
    expect(qos == 1 && retain == 0);
    if (!link_up) {
        return -1;
    }
    out("sdk", topic, p, n);
    return 0;
}

static void set_values(fg_device *dev, int k)
{
    /* binary fractions only: sums are exact, so Python can predict every value */
    static const double observations[] = {0.5, 3.0, 7.0, 20.0, 100.0};
    expect(fg_gauge_set(dev, 0, 20.0 + 0.5 * k) == FG_OK);
    expect(fg_counter_add(dev, 1, 2.0) == FG_OK);
    expect(fg_histogram_observe(dev, 2, observations[k % 5]) == FG_OK);
}

static void emit_stats(const fg_device *dev)
{
    const fg_stats *s = fg_get_stats(dev);
    uint8_t buf[160];
    fg_writer w;
    fg_w_init(&w, buf, sizeof buf);
    fg_w_map(&w, 9);
    fg_w_str(&w, "built"), fg_w_uint(&w, s->frames_built);
    fg_w_str(&w, "sent"), fg_w_uint(&w, s->frames_sent);
    fg_w_str(&w, "ringed"), fg_w_uint(&w, s->frames_ringed);
    fg_w_str(&w, "dropped"), fg_w_uint(&w, s->frames_dropped);
    fg_w_str(&w, "replayed"), fg_w_uint(&w, s->frames_replayed);
    fg_w_str(&w, "too_big"), fg_w_uint(&w, s->frames_too_big);
    fg_w_str(&w, "births"), fg_w_uint(&w, s->births_sent);
    fg_w_str(&w, "publish_errors"), fg_w_uint(&w, s->publish_errors);
    fg_w_str(&w, "ring"), fg_w_uint(&w, fg_ring_count(dev));
    emit_writer("sdk-stats", "-", &w);
}

static void sdk_life(void)
{
    static const fg_label labels[] = {{"site", "lab"}};
    static const double bounds[] = {1.0, 5.0, 10.0, 50.0};
    static uint8_t ring[512], frame[256];
    static fg_device dev;
    static const uint8_t rebirth[] = {0x81, 0xa7, 'r', 'e', 'b', 'i', 'r', 't', 'h', 0xc3};
    static const uint8_t online[] = {0x82, 0xa6, 'o', 'n', 'l', 'i', 'n', 'e', 0xc3, 0xa1, 't', 0x00};
    static const uint8_t offline[] = {0x81, 0xa6, 'o', 'n', 'l', 'i', 'n', 'e', 0xc2};
    fg_config c;
    uint64_t t = T0;
    int k;
    memset(&c, 0, sizeof c);
    c.device_id = "dev-01";
    c.hw = "stm32f4";
    c.fw = "0.1.0";
    c.interval_ms = 1000;
    c.labels = labels;
    c.n_labels = 1;
    c.boot_id = 0x01020304u;
    c.publish = transport;
    c.max_in_flight = 2;
    expect(fg_init(&dev, &c, ring, sizeof ring, frame, sizeof frame) == FG_OK);
    expect(fg_declare_gauge(&dev, "board_temp_c") == 0);
    expect(fg_declare_counter(&dev, "inferences_total") == 1);
    expect(fg_declare_histogram(&dev, "latency_ms", bounds, 4) == 2);

    link_up = 1;
    expect(fg_on_connect(&dev, t) == FG_OK);            /* birth 1 */
    for (k = 0; k < 3; k++, t += 1000) {                /* seq 0..2 live */
        set_values(&dev, k);
        expect(fg_tick(&dev, t) == FG_OK);
        expect(fg_tick(&dev, t + 500) == FG_OK);        /* not due: nothing */
        fg_on_publish_acked(&dev);
    }
    link_up = 0;
    fg_on_disconnect(&dev);
    for (k = 3; k < 15; k++, t += 1000) {               /* seq 3..14 ringed, oldest dropped */
        set_values(&dev, k);
        expect(fg_tick(&dev, t) == FG_OK);
        if (k == 9) {
            expect(fg_declare_gauge(&dev, "uptime_s") == 3); /* alias 3, birth 2 appends it */
            expect(fg_gauge_set(&dev, 3, 9.0) == FG_OK);
        }
    }
    link_up = 1;
    expect(fg_on_connect(&dev, t) == FG_OK);            /* birth 2, replays 2 (window) */
    fg_on_publish_acked(&dev);                          /* birth's ack: one more */
    fg_on_publish_acked(&dev);
    fg_on_publish_acked(&dev);
    set_values(&dev, 15);
    expect(fg_tick(&dev, t) == FG_OK);                  /* seq 15 live, window refilled */
    t += 1000;
    expect(fg_on_message(&dev, "fleet/dev-01/cmd", rebirth, sizeof rebirth, t) == FG_MSG_REBIRTH);
    expect(fg_on_message(&dev, "fleet/_gateway/gw-1/state", online, sizeof online, t) ==
           FG_MSG_REBIRTH);
    expect(fg_on_message(&dev, "fleet/_gateway/gw-1/state", offline, sizeof offline, t) ==
           FG_MSG_IGNORED);
    expect(fg_on_message(&dev, "fleet/dev-02/cmd", rebirth, sizeof rebirth, t) == FG_MSG_IGNORED);
    while (fg_ring_count(&dev) > 0) {
        fg_on_publish_acked(&dev);
    }
    set_values(&dev, 16);
    expect(fg_tick(&dev, t) == FG_OK);                  /* seq 16 live */
    expect(fg_publish_death(&dev) == FG_OK);
    emit_stats(&dev);
}

int fg_cases_run(fg_emit_fn emit)
{
    out = emit;
    failures = 0;
    vector_birth_death();
    vector_telemetry();
    sdk_life();
    return failures;
}
