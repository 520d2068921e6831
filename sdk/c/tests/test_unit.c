/* Unit tests of the C SDK on the host (built with ASan and UBSan by `make test`): the msgpack
 * writer's widths, the ring, argument checks, the lifecycle with a fake transport, and the
 * command reader against hostile input. Prints each failed check; exit status = failures. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fleetgate.h"

static int failures;
static int checks;

#define CHECK(cond)                                                                    \
    do {                                                                               \
        checks++;                                                                      \
        if (!(cond)) {                                                                 \
            failures++;                                                                \
            printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                     \
        }                                                                              \
    } while (0)

/* ---- writer ---- */

static int hex_is(const fg_writer *w, const char *hex)
{
    char got[256];
    size_t i;
    if (!w->ok || w->len * 2 + 1 > sizeof got) {
        return 0;
    }
    for (i = 0; i < w->len; i++) {
        sprintf(got + 2 * i, "%02x", w->buf[i]);
    }
    got[2 * w->len] = '\0';
    if (strcmp(got, hex) != 0) {
        printf("  got %s, want %s\n", got, hex);
        return 0;
    }
    return 1;
}

#define W_UINT(v, hex) (fg_w_init(&w, buf, sizeof buf), fg_w_uint(&w, v), hex_is(&w, hex))
#define W_INT(v, hex) (fg_w_init(&w, buf, sizeof buf), fg_w_int(&w, v), hex_is(&w, hex))

static void test_writer(void)
{
    uint8_t buf[80];
    char s40[41];
    fg_writer w;
    CHECK(W_UINT(0, "00"));
    CHECK(W_UINT(127, "7f"));
    CHECK(W_UINT(128, "cc80"));
    CHECK(W_UINT(255, "ccff"));
    CHECK(W_UINT(256, "cd0100"));
    CHECK(W_UINT(65535, "cdffff"));
    CHECK(W_UINT(65536, "ce00010000"));
    CHECK(W_UINT(4294967295u, "ceffffffff"));
    CHECK(W_UINT(4294967296u, "cf0000000100000000"));
    CHECK(W_UINT(1790000000000u, "cf000001a0c4506c00"));
    CHECK(W_INT(5, "05"));
    CHECK(W_INT(-1, "ff"));
    CHECK(W_INT(-32, "e0"));
    CHECK(W_INT(-33, "d0df"));
    CHECK(W_INT(-128, "d080"));
    CHECK(W_INT(-129, "d1ff7f"));
    CHECK(W_INT(-1000, "d1fc18"));
    CHECK(W_INT(-32769, "d2ffff7fff"));
    CHECK(W_INT(-2147483647 - 1, "d280000000"));
    CHECK(W_INT(-2147483649LL, "d3ffffffff7fffffff"));
    fg_w_init(&w, buf, sizeof buf);
    fg_w_double(&w, 41.5);
    CHECK(hex_is(&w, "cb4044c00000000000"));
    fg_w_init(&w, buf, sizeof buf);
    fg_w_double(&w, -0.0);
    CHECK(hex_is(&w, "cb8000000000000000"));
    fg_w_init(&w, buf, sizeof buf);
    fg_w_float32(&w, 0.005f);
    CHECK(hex_is(&w, "ca3ba3d70a"));
    fg_w_init(&w, buf, sizeof buf);
    fg_w_bool(&w, 1), fg_w_bool(&w, 0), fg_w_nil(&w), fg_w_str(&w, ""), fg_w_str(&w, "ab");
    CHECK(hex_is(&w, "c3c2c0a0a26162"));
    fg_w_init(&w, buf, sizeof buf);
    fg_w_map(&w, 15), fg_w_map(&w, 16), fg_w_array(&w, 15), fg_w_array(&w, 65536);
    CHECK(hex_is(&w, "8fde00109fdd00010000"));
    memset(s40, 'x', 40);
    s40[40] = '\0';
    fg_w_init(&w, buf, sizeof buf);
    fg_w_strn(&w, s40, 31);
    CHECK(w.ok && w.len == 32 && buf[0] == 0xbf);
    fg_w_init(&w, buf, sizeof buf);
    fg_w_str(&w, s40);
    CHECK(w.ok && w.len == 42 && buf[0] == 0xd9 && buf[1] == 40);
    /* overflow: marked failed, nothing written past cap, later writes ignored */
    fg_w_init(&w, buf, 8);
    fg_w_double(&w, 1.0);
    CHECK(!w.ok && w.len == 0);
    fg_w_uint(&w, 1);
    CHECK(!w.ok && w.len == 0);
    fg_w_init(&w, buf, 3);
    fg_w_str(&w, "abc");
    CHECK(!w.ok && w.len == 1);
}

/* ---- ring ---- */

static void test_ring(void)
{
    uint8_t mem[20], out[16], frame[24];
    fg_ring r;
    int i;
    for (i = 0; i < 24; i++) {
        frame[i] = (uint8_t)(0xa0 + i);
    }
    fg_ring_init(&r, mem, sizeof mem);
    CHECK(fg_ring_peek(&r, out, sizeof out) == 0);
    CHECK(fg_ring_push(&r, frame, 0) == FG_ERR_ARG);
    CHECK(fg_ring_push(&r, frame, 19) == FG_ERR_NOSPACE); /* 19 + 2 > 20 */
    CHECK(r.frames == 0);
    CHECK(fg_ring_push(&r, frame, 5) == 0);     /* [0,7) */
    CHECK(fg_ring_push(&r, frame + 1, 5) == 0); /* [7,14) */
    CHECK(fg_ring_push(&r, frame + 2, 5) == 1); /* needs 7, 6 free: drops the oldest, wraps */
    CHECK(r.frames == 2 && r.used == 14);
    CHECK(fg_ring_peek(&r, out, 4) == FG_ERR_NOSPACE);
    CHECK(fg_ring_peek(&r, out, sizeof out) == 5 && memcmp(out, frame + 1, 5) == 0);
    fg_ring_pop(&r);
    CHECK(fg_ring_peek(&r, out, sizeof out) == 5 && memcmp(out, frame + 2, 5) == 0);
    CHECK(fg_ring_push(&r, frame + 3, 9) == 0); /* wraps across the end, both header bytes */
    CHECK(r.frames == 2);
    fg_ring_pop(&r);
    CHECK(fg_ring_peek(&r, out, sizeof out) == 9 && memcmp(out, frame + 3, 9) == 0);
    CHECK(fg_ring_push(&r, frame, 18) == 1); /* the whole ring: drops everything else */
    CHECK(r.frames == 1 && fg_ring_peek(&r, out, sizeof out) == FG_ERR_NOSPACE);
    fg_ring_pop(&r);
    fg_ring_pop(&r); /* empty: no-op */
    CHECK(r.frames == 0 && r.used == 0 && r.head == 0);
    /* many odd-sized frames through a small ring: always the newest survive, in order */
    for (i = 0; i < 200; i++) {
        uint8_t f[7];
        int n = 1 + i % 7;
        memset(f, i, sizeof f);
        CHECK(fg_ring_push(&r, f, (size_t)n) >= 0);
    }
    i = fg_ring_peek(&r, out, sizeof out);
    CHECK(i > 0 && out[0] == (uint8_t)(200 - r.frames));
    fg_ring_init(&r, NULL, 100);
    CHECK(fg_ring_push(&r, frame, 1) == FG_ERR_NOSPACE);
}

/* ---- device ---- */

typedef struct {
    int up;
    int calls;
    int acks_inside; /* ack from inside the callback, like a synchronous client */
    fg_device *dev;
    char topics[64][48];
    uint8_t payloads[64][160];
    size_t lens[64];
} fake_link;

static int fake_publish(void *ctx, const char *topic, const uint8_t *p, size_t n, int qos,
                        int retain)
{
    fake_link *l = (fake_link *)ctx;
    if (qos != 1 || retain != 0 || !l->up || l->calls >= 64 || n > sizeof l->payloads[0]) {
        return -1;
    }
    strncpy(l->topics[l->calls], topic, sizeof l->topics[0] - 1);
    memcpy(l->payloads[l->calls], p, n);
    l->lens[l->calls] = n;
    l->calls++;
    if (l->acks_inside) {
        fg_on_publish_acked(l->dev);
    }
    return 0;
}

static const char *kind_of(const fake_link *l, int i)
{
    const char *slash = strrchr(l->topics[i], '/');
    return slash != NULL ? slash + 1 : "";
}

/* The seq of a telemetry payload from fg_encode_telemetry (fixint seq < 128), and its h. */
static int seq_of(const fake_link *l, int i) { return l->payloads[i][9]; } /* boot 7: fixint */

static int replayed(const fake_link *l, int i) { return l->payloads[i][0] == 0x86; }

static fg_config base_config(fake_link *l)
{
    fg_config c;
    memset(&c, 0, sizeof c);
    c.device_id = "node-1";
    c.hw = "nrf52840";
    c.fw = "1.0";
    c.interval_ms = 100;
    c.boot_id = 7;
    c.publish = fake_publish;
    c.publish_ctx = l;
    return c;
}

static void test_config_checks(void)
{
    static const fg_label bad_labels[][1] = {{{"device_id", "x"}}, {{"le", "x"}}, {{"__a", "x"}},
                                             {{"9a", "x"}}, {{"a-b", "x"}}};
    static const fg_label dup[] = {{"a", "1"}, {"a", "2"}};
    static const char *bad_ids[] = {"", "-a", ".a", "a/b", "a+b", "a b"};
    char id65[66];
    static const char *bad_prefixes[] = {"", "a/", "/a", "a//b", "a/+", "#"};
    fake_link l;
    fg_device dev;
    uint8_t frame[64];
    fg_config c = base_config(&l);
    size_t i;
    CHECK(fg_init(&dev, &c, NULL, 0, frame, sizeof frame) == FG_OK);
    CHECK(strcmp(dev.cfg.topic_prefix, "fleet") == 0 && dev.cfg.max_in_flight == 4);
    CHECK(fg_init(&dev, &c, NULL, 0, frame, 31) == FG_ERR_ARG);
    for (i = 0; i < sizeof bad_ids / sizeof bad_ids[0]; i++) {
        c = base_config(&l);
        c.device_id = bad_ids[i];
        CHECK(fg_init(&dev, &c, NULL, 0, frame, sizeof frame) == FG_ERR_ARG);
    }
    memset(id65, 'x', 65);
    id65[65] = '\0';
    c.device_id = id65;
    CHECK(fg_init(&dev, &c, NULL, 0, frame, sizeof frame) == FG_ERR_ARG);
    id65[64] = '\0';
    CHECK(fg_init(&dev, &c, NULL, 0, frame, sizeof frame) == FG_OK);
    for (i = 0; i < sizeof bad_prefixes / sizeof bad_prefixes[0]; i++) {
        c = base_config(&l);
        c.topic_prefix = bad_prefixes[i];
        CHECK(fg_init(&dev, &c, NULL, 0, frame, sizeof frame) == FG_ERR_ARG);
    }
    c = base_config(&l);
    c.topic_prefix = "acme/fleet";
    CHECK(fg_init(&dev, &c, NULL, 0, frame, sizeof frame) == FG_OK);
    for (i = 0; i < sizeof bad_labels / sizeof bad_labels[0]; i++) {
        c = base_config(&l);
        c.labels = bad_labels[i];
        c.n_labels = 1;
        CHECK(fg_init(&dev, &c, NULL, 0, frame, sizeof frame) == FG_ERR_ARG);
    }
    c = base_config(&l);
    c.labels = dup;
    c.n_labels = 2;
    CHECK(fg_init(&dev, &c, NULL, 0, frame, sizeof frame) == FG_ERR_ARG);
    c = base_config(&l);
    c.interval_ms = 0;
    CHECK(fg_init(&dev, &c, NULL, 0, frame, sizeof frame) == FG_ERR_ARG);
    c = base_config(&l);
    c.hw = "";
    CHECK(fg_init(&dev, &c, NULL, 0, frame, sizeof frame) == FG_ERR_ARG);
    c = base_config(&l);
    c.publish = NULL;
    CHECK(fg_init(&dev, &c, NULL, 0, frame, sizeof frame) == FG_ERR_ARG);
}

static void test_metric_checks(void)
{
    static const double ok_bounds[] = {0.5, 1.0};
    static const double unsorted[] = {1.0, 1.0};
    static const double bounds33[33] = {0};
    double inf = 1e308 * 10.0, nan = inf - inf;
    double with_inf[2];
    fake_link l;
    fg_device dev;
    uint8_t frame[64];
    fg_config c = base_config(&l);
    int i;
    fg_metric g, k, h;
    with_inf[0] = 1.0;
    with_inf[1] = inf;
    CHECK(fg_init(&dev, &c, NULL, 0, frame, sizeof frame) == FG_OK);
    CHECK(fg_declare_gauge(&dev, "") == FG_ERR_ARG);
    CHECK(fg_declare_gauge(&dev, "1abc") == FG_ERR_ARG);
    CHECK(fg_declare_gauge(&dev, "a-b") == FG_ERR_ARG);
    CHECK(fg_declare_gauge(&dev, "fleet_device_up") == FG_ERR_ARG);
    CHECK(fg_declare_histogram(&dev, "h", unsorted, 2) == FG_ERR_ARG);
    CHECK(fg_declare_histogram(&dev, "h", with_inf, 2) == FG_ERR_ARG);
    CHECK(fg_declare_histogram(&dev, "h", NULL, 2) == FG_ERR_ARG);
    CHECK(fg_declare_histogram(&dev, "h", bounds33, 33) == FG_ERR_ARG); /* not increasing */
    CHECK(dev.n_metrics == 0);
    g = fg_declare_gauge(&dev, "ns:temp_c");
    k = fg_declare_counter(&dev, "_total");
    h = fg_declare_histogram(&dev, "lat", ok_bounds, 2);
    CHECK(g == 0 && k == 1 && h == 2);
    CHECK(fg_declare_counter(&dev, "lat") == FG_ERR_ARG); /* a name once per birth */
    CHECK(fg_gauge_set(&dev, k, 1.0) == FG_ERR_ARG);     /* wrong type */
    CHECK(fg_gauge_set(&dev, 3, 1.0) == FG_ERR_ARG);
    CHECK(fg_gauge_set(&dev, -1, 1.0) == FG_ERR_ARG);
    CHECK(fg_gauge_set(&dev, g, nan) == FG_ERR_ARG && !dev.metrics[0].has_value);
    CHECK(fg_gauge_set(&dev, g, inf) == FG_ERR_ARG);
    CHECK(fg_counter_add(&dev, k, -1.0) == FG_ERR_ARG);
    CHECK(fg_counter_add(&dev, k, inf) == FG_ERR_ARG);
    CHECK(fg_histogram_observe(&dev, h, nan) == FG_ERR_ARG);
    CHECK(fg_histogram_observe(&dev, h, 0.5) == FG_OK);  /* le 0.5: bucket 0 */
    CHECK(fg_histogram_observe(&dev, h, 0.75) == FG_OK); /* bucket 1 */
    CHECK(fg_histogram_observe(&dev, h, 9.0) == FG_OK);  /* +Inf only */
    CHECK(dev.buckets[0] == 1 && dev.buckets[1] == 1 && dev.metrics[2].count == 3);
    CHECK(dev.metrics[2].value == 10.25);
    CHECK(fg_counter_add(&dev, k, 1.5) == FG_OK && fg_counter_add(&dev, k, 2.0) == FG_OK);
    CHECK(dev.metrics[1].value == 3.5);
    /* capacity: FG_MAX_BUCKETS over all histograms, FG_MAX_METRICS */
    CHECK(fg_declare_histogram(&dev, "big", bounds33 + 1, 0) == 3);
    {
        static double many[FG_MAX_BUCKETS];
        static const char *names[] = {"m4", "m5", "m6", "m7", "m8", "m9", "m10", "m11", "m12",
                                      "m13", "m14", "m15", "m16", "m17"};
        for (i = 0; i < FG_MAX_BUCKETS; i++) {
            many[i] = i;
        }
        CHECK(fg_declare_histogram(&dev, "toomany", many, FG_MAX_BUCKETS - 1) == FG_ERR_FULL);
        CHECK(fg_declare_histogram(&dev, "fits", many, FG_MAX_BUCKETS - 2) == 4);
        for (i = 0; dev.n_metrics < FG_MAX_METRICS; i++) {
            CHECK(fg_declare_gauge(&dev, names[i]) >= 0);
        }
        CHECK(fg_declare_gauge(&dev, "one_more") == FG_ERR_FULL);
    }
}

static void test_lifecycle(void)
{
    static fake_link l;
    static fg_device dev;
    static uint8_t ring[400], frame[160];
    static const uint8_t rebirth[] = {0x81, 0xa7, 'r', 'e', 'b', 'i', 'r', 't', 'h', 0xc3};
    fg_config c;
    uint64_t t = 1000000;
    int i, n;
    memset(&l, 0, sizeof l);
    l.dev = &dev;
    c = base_config(&l);
    c.max_in_flight = 3;
    CHECK(fg_init(&dev, &c, ring, sizeof ring, frame, sizeof frame) == FG_OK);
    CHECK(fg_declare_gauge(&dev, "temp") == 0);
    CHECK(fg_declare_counter(&dev, "n_total") == 1);

    /* before any connect: frames go to the ring; a gauge never set is not sent */
    CHECK(fg_tick(&dev, t) == FG_OK && l.calls == 0 && fg_ring_count(&dev) == 1);
    CHECK(fg_tick(&dev, t + 99) == FG_OK && fg_ring_count(&dev) == 1); /* not due */
    CHECK(fg_tick(&dev, t + 100) == FG_OK && fg_ring_count(&dev) == 2);
    CHECK(fg_tick(&dev, t + 250) == FG_OK && fg_ring_count(&dev) == 3); /* cadence kept */
    CHECK(fg_tick(&dev, t + 299) == FG_OK && fg_ring_count(&dev) == 3);
    CHECK(fg_tick(&dev, t + 300) == FG_OK && fg_ring_count(&dev) == 4);
    CHECK(fg_tick(&dev, t + 1000) == FG_OK && fg_ring_count(&dev) == 5); /* stall: restart */
    CHECK(fg_tick(&dev, t + 1099) == FG_OK && fg_ring_count(&dev) == 5);
    CHECK(dev.stats.frames_ringed == 5 && dev.seq == 5);

    /* connect with a transport that refuses: no birth, no telemetry live, ringed */
    CHECK(fg_on_connect(&dev, t) == FG_ERR_PUBLISH && dev.birth_pending);
    CHECK(fg_publish_now(&dev, t) == FG_OK && fg_ring_count(&dev) == 6);
    CHECK(dev.stats.publish_errors == 2); /* the birth at connect and again at publish_now */

    /* the link comes up: the next tick sends the birth first, then the frame, then replays
     * the window (max_in_flight 3 counting the birth and the live frame: 1 replay) */
    l.up = 1;
    CHECK(fg_tick(&dev, t + 1100) == FG_OK);
    CHECK(l.calls >= 2 && strcmp(kind_of(&l, 0), "birth") == 0);
    CHECK(strcmp(l.topics[1], "fleet/node-1/telemetry") == 0 && seq_of(&l, 1) == 6);
    CHECK(!replayed(&l, 1));
    /* the window refills per frame built: 3 replays from the ring, oldest first */
    CHECK(l.calls == 5 && replayed(&l, 2) && seq_of(&l, 2) == 0 && seq_of(&l, 4) == 2);
    CHECK(l.lens[2] == l.lens[1] + 3 && memcmp(l.payloads[2] + l.lens[2] - 3, "\xa1h\xc3", 3) == 0);
    fg_on_publish_acked(&dev);
    CHECK(l.calls == 6 && seq_of(&l, 5) == 3);
    fg_on_publish_acked(&dev);
    fg_on_publish_acked(&dev);
    CHECK(l.calls == 8 && seq_of(&l, 7) == 5 && fg_ring_count(&dev) == 0);
    fg_on_publish_acked(&dev); /* nothing left: no publish */
    CHECK(l.calls == 8 && dev.stats.frames_replayed == 6 && dev.stats.frames_sent == 1);

    /* synchronous acks from inside the callback do not re-enter the replay */
    fg_on_disconnect(&dev);
    l.up = 0;
    for (i = 0; i < 5; i++) {
        CHECK(fg_publish_now(&dev, t + 2000 + (uint64_t)i) == FG_OK);
    }
    l.up = 1;
    l.acks_inside = 1;
    n = l.calls;
    CHECK(fg_on_connect(&dev, t + 3000) == FG_OK);
    CHECK(l.calls == n + 6 && fg_ring_count(&dev) == 0); /* birth + all 5 (acked at once) */
    CHECK(strcmp(kind_of(&l, n), "birth") == 0 && seq_of(&l, n + 1) == 7 && seq_of(&l, n + 5) == 11);
    l.acks_inside = 0;

    /* rebirth: same boot, seq not reset; a declaration while connected re-births first */
    n = l.calls;
    CHECK(fg_on_message(&dev, "fleet/node-1/cmd", rebirth, sizeof rebirth, t) == FG_MSG_REBIRTH);
    CHECK(l.calls == n + 1 && strcmp(kind_of(&l, n), "birth") == 0);
    CHECK(fg_declare_gauge(&dev, "late") == 2 && fg_gauge_set(&dev, 2, 1.0) == FG_OK);
    CHECK(fg_publish_now(&dev, t) == FG_OK);
    CHECK(l.calls == n + 3 && strcmp(kind_of(&l, n + 1), "birth") == 0 && seq_of(&l, n + 2) == 12);

    /* death: the Will's payload and an explicit one */
    {
        uint8_t buf[16];
        CHECK(fg_death_payload(&dev, buf, sizeof buf) == 7 && memcmp(buf, "\x82\xa1v\x01\xa1\x62\x07", 7) == 0);
        CHECK(fg_death_payload(&dev, buf, 6) == 0);
        n = l.calls;
        CHECK(fg_publish_death(&dev) == FG_OK && strcmp(l.topics[n], "fleet/node-1/death") == 0);
    }
    /* offline rebirth requests are ignored: the connect births anyway */
    fg_on_disconnect(&dev);
    CHECK(fg_on_message(&dev, "fleet/node-1/cmd", rebirth, sizeof rebirth, t) == FG_MSG_IGNORED);
}

static void test_ring_overflow_and_too_big(void)
{
    static fake_link l;
    static fg_device dev;
    static uint8_t ring[70], frame[96];
    fg_config c;
    int i;
    memset(&l, 0, sizeof l);
    l.dev = &dev;
    c = base_config(&l);
    CHECK(fg_init(&dev, &c, ring, sizeof ring, frame, sizeof frame) == FG_OK);
    CHECK(fg_declare_counter(&dev, "n_total") == 0);
    for (i = 0; i < 10; i++) {
        CHECK(fg_publish_now(&dev, 1000) == FG_OK); /* 29 bytes + 2 each: 2 fit in 70 */
    }
    CHECK(fg_ring_count(&dev) == 2 && dev.stats.frames_dropped == 8);
    CHECK(dev.stats.frames_ringed == 10);
    l.up = 1;
    CHECK(fg_on_connect(&dev, 1000) == FG_OK);
    CHECK(l.calls == 3 && seq_of(&l, 1) == 8 && seq_of(&l, 2) == 9 && replayed(&l, 2));

    /* a frame that cannot fit the buffer with room for "h" is lost and counted; the seq
     * still advances (the gateway sees the gap) */
    CHECK(fg_init(&dev, &c, ring, sizeof ring, frame, 32) == FG_OK);
    CHECK(fg_declare_counter(&dev, "n_total") == 0);
    CHECK(fg_publish_now(&dev, 1000) == FG_OK); /* 29 + 3 = 32: fits */
    CHECK(fg_declare_gauge(&dev, "g") == 1 && fg_gauge_set(&dev, 1, 1.0) == FG_OK);
    CHECK(fg_publish_now(&dev, 1000) == FG_ERR_NOSPACE && dev.stats.frames_too_big == 1);
    CHECK(dev.seq == 2 && fg_ring_count(&dev) == 1);
    /* a ring of 0 bytes: offline frames are lost, counted */
    CHECK(fg_init(&dev, &c, NULL, 0, frame, sizeof frame) == FG_OK);
    CHECK(fg_declare_counter(&dev, "n_total") == 0);
    CHECK(fg_publish_now(&dev, 1000) == FG_ERR_NOSPACE && dev.stats.frames_too_big == 1);
}

/* A clock set back (SNTP) by more than an interval before the last frame restarts the
 * cadence at once; by less, the next frame waits for the schedule. */
static void test_clock_set_back(void)
{
    static fake_link l;
    static fg_device dev;
    static uint8_t ring[400], frame[160];
    fg_config c = base_config(&l);
    uint64_t t = 1000000;
    CHECK(fg_init(&dev, &c, ring, sizeof ring, frame, sizeof frame) == FG_OK);
    CHECK(fg_tick(&dev, t) == FG_OK && dev.seq == 1);          /* next due at t + 100 */
    CHECK(fg_tick(&dev, t - 1) == FG_OK && dev.seq == 1);      /* back 1 ms: waits */
    CHECK(fg_tick(&dev, t - 100) == FG_OK && dev.seq == 1);    /* back one interval: waits */
    CHECK(fg_tick(&dev, t + 100) == FG_OK && dev.seq == 2);    /* next due at t + 200 */
    CHECK(fg_tick(&dev, t - 5000) == FG_OK && dev.seq == 3);   /* back 5 s: a frame now */
    CHECK(fg_tick(&dev, t - 4901) == FG_OK && dev.seq == 3);
    CHECK(fg_tick(&dev, t - 4900) == FG_OK && dev.seq == 4);
}

/* The buffer-size upper bounds stated at fg_init in fleetgate.h hold. */
static void test_size_bounds(void)
{
    static const fg_label labels[] = {{"site", "lab-7"}, {"rack", "r12"}};
    static double bounds[20];
    static fake_link l;
    static fg_device dev;
    static uint8_t frame[1024];
    fg_config c = base_config(&l);
    size_t birth_bound, tel_bound;
    int i;
    c.labels = labels;
    c.n_labels = 2;
    c.boot_id = 0xffffffffu;
    c.interval_ms = 0xffffffffu;
    for (i = 0; i < 20; i++) {
        bounds[i] = 1e6 + i;
    }
    CHECK(fg_init(&dev, &c, NULL, 0, frame, sizeof frame) == FG_OK);
    CHECK(fg_declare_gauge(&dev, "temp") == 0 && fg_gauge_set(&dev, 0, 1.5) == FG_OK);
    CHECK(fg_declare_counter(&dev, "n_total") == 1);
    CHECK(fg_declare_histogram(&dev, "lat", bounds, 20) == 2);
    for (i = 0; i < 70000; i++) {
        fg_histogram_observe(&dev, 2, 0.0); /* counts need 5 bytes */
    }
    birth_bound = 72 + strlen(c.hw) + strlen(c.fw) + (5 + 4 + 5) + (5 + 4 + 3) + (16 + 4) +
                  (16 + 7) + (16 + 3) + (3 + 9 * 20);
    tel_bound = 37 + 13 * 2 + (22 + 5 * 20);
    CHECK(fg_encode_birth(&dev, 0x7fffffffffffffffULL, frame, sizeof frame) <= birth_bound);
    CHECK(fg_encode_telemetry(&dev, 0xffffffffu, 0x7fffffffffffffffULL, 1, frame, sizeof frame) <=
          tel_bound);
    CHECK(fg_encode_telemetry(&dev, 0xffffffffu, 0x7fffffffffffffffULL, 1, frame, sizeof frame) >
          tel_bound - 16); /* and it is close */
}

static void test_topics(void)
{
    fake_link l;
    fg_device dev;
    uint8_t frame[64];
    char buf[64];
    fg_config c = base_config(&l);
    c.topic_prefix = "acme/fleet";
    CHECK(fg_init(&dev, &c, NULL, 0, frame, sizeof frame) == FG_OK);
    CHECK(fg_topic(&dev, FG_TOPIC_CMD, buf, sizeof buf) == 21 && strcmp(buf, "acme/fleet/node-1/cmd") == 0);
    CHECK(fg_topic(&dev, FG_TOPIC_GATEWAY_STATE, buf, sizeof buf) > 0 &&
          strcmp(buf, "acme/fleet/_gateway/+/state") == 0);
    CHECK(fg_topic(&dev, FG_TOPIC_TELEMETRY, buf, 27) == FG_ERR_NOSPACE);
    CHECK(fg_topic(&dev, FG_TOPIC_TELEMETRY, buf, 28) == 27);
    CHECK(fg_topic(&dev, (fg_topic_kind)9, buf, sizeof buf) == FG_ERR_ARG);
}

/* The command reader on hostile input: only a well-formed map with the key set to true
 * counts; nothing overruns (ASan) and nothing loops. */
static void test_messages(void)
{
    static fake_link l;
    static fg_device dev;
    static uint8_t frame[160], deep[6000];
    static const struct {
        const char *topic;
        const char *hex;
        int rebirth;
    } cases[] = {
        /* the gateway's own encoders' bytes (device_protocol.encode_command and
         * encode_gateway_state): rebirth true/false, online true/false */
        {"fleet/node-1/cmd", "81a772656269727468c3", 1},
        {"fleet/node-1/cmd", "80", 0},
        {"fleet/_gateway/gw-1/state", "82a66f6e6c696e65c3a174cf000001a0c4506c00", 1},
        {"fleet/_gateway/gw-1/state", "82a66f6e6c696e65c2a174cf000001a0c4506c00", 0},
        {"fleet/node-1/cmd", "", 0},                      /* empty */
        {"fleet/node-1/cmd", "81a772656269727468c3", 1},
        {"fleet/node-1/cmd", "82a3666f6f93010203a772656269727468c3", 1}, /* other keys first */
        {"fleet/node-1/cmd", "82a772656269727468c3a3666f6fc70301616263", 1}, /* ext after */
        {"fleet/node-1/cmd", "81a772656269727468c2", 0},  /* false */
        {"fleet/node-1/cmd", "81a77265626972746801", 0},  /* 1 is not true */
        {"fleet/node-1/cmd", "82a772656269727468c3a772656269727468c3", 0}, /* repeated key */
        {"fleet/node-1/cmd", "81a772656269727468", 0},    /* truncated */
        {"fleet/node-1/cmd", "81a772656269727468c3c0", 0}, /* trailing data */
        {"fleet/node-1/cmd", "91c3", 0},                  /* not a map */
        {"fleet/node-1/cmd", "dfffffffff", 0},
        {"fleet/node-1/cmd", "82a1619dffffffffa772656269727468c3", 0}, /* huge array claim */
        {"fleet/node-1/cmd", "81c3c3", 0},                /* key not a string */
        {"fleet/node-2/cmd", "81a772656269727468c3", 0},  /* another device */
        {"fleet/node-1/cmdx", "81a772656269727468c3", 0},
        {"fleet/node-1", "81a772656269727468c3", 0},
        {"fleet/_gateway/gw/state", "82a66f6e6c696e65c3a174cf000001a0c4506c00", 1},
        {"fleet/_gateway/gw/state", "81a66f6e6c696e65c2", 0},
        {"fleet/_gateway//state", "81a66f6e6c696e65c3", 0},
        {"fleet/_gateway/gw/x/state", "81a66f6e6c696e65c3", 0},
        {"fleet/_gateway/gw/state", "81a772656269727468c3", 0}, /* the other key */
        {"other/_gateway/gw/state", "81a66f6e6c696e65c3", 0},
    };
    uint8_t payload[64];
    fg_config c;
    size_t i, j, n;
    memset(&l, 0, sizeof l);
    l.dev = &dev;
    l.up = 1;
    c = base_config(&l);
    CHECK(fg_init(&dev, &c, NULL, 0, frame, sizeof frame) == FG_OK);
    CHECK(fg_on_connect(&dev, 1) == FG_OK);
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *h = cases[i].hex;
        int want = cases[i].rebirth ? FG_MSG_REBIRTH : FG_MSG_IGNORED;
        unsigned byte;
        for (n = 0, j = 0; h[j] != '\0' && n < sizeof payload; j += 2) {
            sscanf(h + j, "%2x", &byte);
            payload[n++] = (uint8_t)byte;
        }
        if (fg_on_message(&dev, cases[i].topic, payload, n, 2) != want) {
            printf("  message case %u\n", (unsigned)i);
            CHECK(0);
        }
    }
    /* 5000 nested arrays as a value: walked without recursion, refused as truncated */
    deep[0] = 0x81;
    memcpy(deep + 1, "\xa3" "foo", 4);
    memset(deep + 5, 0x91, 5000);
    CHECK(fg_on_message(&dev, "fleet/node-1/cmd", deep, 5005, 3) == FG_MSG_IGNORED);
    deep[5005] = 0xc0;
    CHECK(fg_on_message(&dev, "fleet/node-1/cmd", deep, 5006, 3) == FG_MSG_IGNORED);
    CHECK(fg_on_message(&dev, "fleet/node-1/cmd", NULL, 0, 3) == FG_MSG_IGNORED);
    CHECK(fg_on_message(&dev, NULL, deep, 5006, 3) == FG_MSG_IGNORED);
}

/* Deterministic pseudo-random input (xorshift32): the same run everywhere. */
static uint32_t rng_state = 2463534242u;

static uint32_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

/* The ring against a model (a FIFO of the lengths and first bytes of the frames it must
 * hold): random pushes and pops through a ring of an odd size, so records wrap everywhere. */
static void test_ring_model(void)
{
    static uint8_t mem[97], frame[40], out[40];
    static size_t model_len[200];
    static uint8_t model_tag[200];
    size_t head = 0, count = 0, used = 0;
    fg_ring r;
    int i, ok = 1;
    fg_ring_init(&r, mem, sizeof mem);
    for (i = 0; i < 20000 && ok; i++) {
        if (rng() % 3 != 0) {
            size_t len = 1 + rng() % 40;
            int dropped;
            memset(frame, i & 0xff, len);
            dropped = fg_ring_push(&r, frame, len);
            while (sizeof mem - used < len + 2) { /* the model drops oldest-first too */
                used -= model_len[head % 200] + 2;
                head++, count--, dropped--;
            }
            model_len[(head + count) % 200] = len;
            model_tag[(head + count) % 200] = (uint8_t)i;
            count++, used += len + 2;
            ok = dropped == 0;
        } else if (count > 0) {
            int n = fg_ring_peek(&r, out, sizeof out);
            ok = n == (int)model_len[head % 200] && out[0] == model_tag[head % 200] &&
                 out[n - 1] == model_tag[head % 200];
            fg_ring_pop(&r);
            used -= model_len[head % 200] + 2;
            head++, count--;
        }
        ok = ok && r.frames == count && r.used == used;
    }
    CHECK(ok);
}

/* The command reader on random input: random msgpack-ish bytes, and the valid command with
 * one or two bytes changed. Each payload sits in a heap block of exactly its size, so any
 * read past it trips ASan. Whatever is accepted must hold the key and true; every 100th
 * input is the valid command itself (so the acceptance check is not vacuous). */
static int holds_rebirth_true(const uint8_t *p, size_t n)
{
    size_t i;
    for (i = 0; i + 9 <= n; i++) {
        if (memcmp(p + i, "\xa7rebirth\xc3", 9) == 0) {
            return 1;
        }
    }
    return 0;
}

static void test_reader_fuzz(void)
{
    static const uint8_t alphabet[] = {0x81, 0x82, 0x80, 0x91, 0x9f, 0xa7, 0xa1, 0xc3, 0xc2,
                                       0xc0, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xc4,
                                       0xc7, 0xc9, 0xd4, 0xd8, 0xcb, 0xcf, 0xff, 0x00, 0x07,
                                       'r', 'e', 'b', 'i', 't', 'h'};
    static const uint8_t valid[] = {0x81, 0xa7, 'r', 'e', 'b', 'i', 'r', 't', 'h', 0xc3};
    static fake_link l;
    static fg_device dev;
    static uint8_t frame[160];
    fg_config c;
    int i, accepted = 0, wrong = 0;
    memset(&l, 0, sizeof l);
    l.dev = &dev;
    l.up = 1;
    c = base_config(&l);
    CHECK(fg_init(&dev, &c, NULL, 0, frame, sizeof frame) == FG_OK);
    CHECK(fg_on_connect(&dev, 1) == FG_OK);
    for (i = 0; i < 30000; i++) {
        size_t n, j;
        uint8_t *p;
        if (i % 100 == 0 || i % 2 == 1) {
            n = sizeof valid;
            p = malloc(n);
            memcpy(p, valid, n);
            if (i % 100 != 0) {
                p[rng() % n] = (uint8_t)rng();
                p[rng() % n] = alphabet[rng() % sizeof alphabet];
            }
        } else {
            n = rng() % 48;
            p = malloc(n + 1);
            for (j = 0; j < n; j++) {
                p[j] = (rng() & 1) ? alphabet[rng() % sizeof alphabet] : (uint8_t)rng();
            }
        }
        l.calls = 0; /* the fake keeps 64 publishes */
        if (fg_on_message(&dev, "fleet/node-1/cmd", p, n, 1) == FG_MSG_REBIRTH) {
            accepted++;
            wrong += !holds_rebirth_true(p, n);
        }
        free(p);
    }
    CHECK(accepted >= 300 && wrong == 0);
}

int main(void)
{
    test_writer();
    test_ring();
    test_config_checks();
    test_metric_checks();
    test_lifecycle();
    test_ring_overflow_and_too_big();
    test_clock_set_back();
    test_size_bounds();
    test_topics();
    test_messages();
    test_ring_model();
    test_reader_fuzz();
    printf("test_unit: %d checks, %d failed\n", checks, failures);
    return failures != 0;
}
