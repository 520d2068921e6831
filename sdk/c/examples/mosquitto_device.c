/*
 * A Linux device on libmosquitto using the fleetgate C SDK.
 *
 *   mosquitto_device [-T timeout_ms] [-r ring_bytes] [-v] HOST PORT DEVICE_ID INTERVAL_MS FRAMES
 *                    PREFIX [CA_FILE [CERT_FILE KEY_FILE]]
 *
 * Connects (Will = the SDK's death payload, QoS 1), subscribes to its cmd topic and the
 * gateway state topic, builds a frame every INTERVAL_MS and publishes it with QoS 1 through
 * the SDK's publish callback. While the broker is away the SDK keeps the frames in its ring;
 * after the reconnect it sends a birth and replays them (h=true), paced by the PUBACKs this
 * program reports to it (fg_on_publish_acked). Exits 0 once FRAMES frames have been built and
 * every one of them has been acknowledged by the broker (live or replayed), after publishing
 * the death; exits 2 if that takes longer than the timeout (default: FRAMES * INTERVAL_MS +
 * 30 s), 1 on bad arguments. Prints its counters as one line of JSON on stdout; -v prints a
 * line per frame and per connection change on stderr.
 *
 * One thread: mosquitto_loop() and the SDK are driven from main(), so the SDK (not
 * thread-safe) needs no lock; libmosquitto calls our callbacks from inside mosquitto_loop().
 * That is also the shape of a firmware main loop. mosquitto_reconnect_delay_set() only applies
 * to mosquitto_loop_forever()/mosquitto_loop_start(), so the reconnect backoff is ours.
 *
 * Build: make -C sdk/c/examples (needs libmosquitto-dev).
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <mosquitto.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fleetgate.h"

#define RECONNECT_MIN_MS 100u  /* first retry soon: a restarting broker is back in ~1 s */
#define RECONNECT_MAX_MS 2000u /* then at most every 2 s */
#define KEEPALIVE_S 10

typedef struct {
    const char *host;
    int port;
    const char *device_id;
    uint32_t interval_ms;
    uint32_t frames;
    const char *prefix;
    const char *ca_file, *cert_file, *key_file;
    uint64_t timeout_ms;
    size_t ring_bytes;
    int verbose;
} options;

typedef struct {
    struct mosquitto *mosq;
    fg_device dev;
    options opt;
    int link_up;            /* socket open: mosquitto_loop() has work */
    int session_up;         /* CONNACK accepted */
    int connected;          /* ... and the subscriptions acknowledged: the SDK knows */
    int subscribe_mid;
    char telemetry_topic[FG_TOPIC_MAX];
    char death_topic[FG_TOPIC_MAX];
    /* Telemetry publishes libmosquitto took and the broker has not acknowledged yet, by MQTT
     * message id: libmosquitto resends them itself after a reconnect (it keeps its outgoing
     * QoS 1 queue across connections), so "all acknowledged" means this set is empty. */
    uint8_t pending[65536 / 8];
    uint32_t pending_count;
    uint32_t acked;         /* telemetry PUBACKs */
    uint32_t connects;
    uint32_t disconnects;   /* sessions lost */
    int death_mid;
    int death_acked;
} app;

/* The SDK's device clock: ms since the Unix epoch (the protocol's timestamps). */
static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Deadlines and backoff: a clock that NTP does not step. */
static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(uint64_t ms)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(ms / 1000u);
    ts.tv_nsec = (long)(ms % 1000u) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* A new boot id at every start (protocol: reusing one makes the gateway drop new frames as
 * duplicates of the old boot's). A firmware takes it from its hardware RNG. */
static int boot_id(uint32_t *out)
{
    int fd = open("/dev/urandom", O_RDONLY);
    ssize_t n;
    if (fd < 0) {
        return -1;
    }
    n = read(fd, out, sizeof *out);
    close(fd);
    return n == (ssize_t)sizeof *out ? 0 : -1;
}

static void say(const app *a, const char *what)
{
    const fg_stats *s;
    if (!a->opt.verbose) {
        return;
    }
    s = fg_get_stats(&a->dev);
    fprintf(stderr,
            "%s built=%lu sent=%lu ringed=%lu replayed=%lu dropped=%lu acked=%lu ring=%lu "
            "connected=%d\n",
            what, (unsigned long)s->frames_built, (unsigned long)s->frames_sent,
            (unsigned long)s->frames_ringed, (unsigned long)s->frames_replayed,
            (unsigned long)s->frames_dropped, (unsigned long)a->acked,
            (unsigned long)fg_ring_count(&a->dev), a->connected);
}

/* --- the SDK's transport ------------------------------------------------------------------ */

/* Nonzero = "not taken": the SDK rings a telemetry frame then. Before the subscriptions are
 * acknowledged we refuse too, so no frame goes out ahead of the birth of this connection. */
static int publish_cb(void *ctx, const char *topic, const uint8_t *payload, size_t len, int qos,
                      int retain)
{
    app *a = ctx;
    int mid = 0;
    int rc;
    if (!a->connected) {
        return 1;
    }
    /* libmosquitto copies topic and payload before returning, as the SDK requires. */
    rc = mosquitto_publish(a->mosq, &mid, topic, (int)len, payload, qos, retain != 0);
    if (rc != MOSQ_ERR_SUCCESS) {
        return 1;
    }
    if (strcmp(topic, a->death_topic) == 0) {
        a->death_mid = mid;
    } else if (strcmp(topic, a->telemetry_topic) == 0) {
        uint16_t m = (uint16_t)mid;
        if (!(a->pending[m >> 3] & (1u << (m & 7)))) {
            a->pending[m >> 3] |= (uint8_t)(1u << (m & 7));
            a->pending_count++;
        }
    }
    return 0;
}

/* --- libmosquitto callbacks (called from inside mosquitto_loop) ---------------------------- */

static void on_connect(struct mosquitto *mosq, void *obj, int rc)
{
    app *a = obj;
    char cmd[FG_TOPIC_MAX], state[FG_TOPIC_MAX];
    char *subs[2];
    if (rc != 0) {
        return; /* refused (bad credentials...): libmosquitto disconnects, we retry */
    }
    a->session_up = 1;
    fg_topic(&a->dev, FG_TOPIC_CMD, cmd, sizeof cmd);
    fg_topic(&a->dev, FG_TOPIC_GATEWAY_STATE, state, sizeof state);
    subs[0] = cmd;
    subs[1] = state;
    if (mosquitto_subscribe_multiple(mosq, &a->subscribe_mid, 2, subs, 1, 0, NULL) !=
        MOSQ_ERR_SUCCESS) {
        mosquitto_disconnect(mosq); /* try the whole connect again */
    }
}

/* The SDK wants the session up and cmd + gateway state subscribed before it is told: a
 * rebirth command answered right after the birth must not be missed. */
static void on_subscribe(struct mosquitto *mosq, void *obj, int mid, int qos_count,
                         const int *granted)
{
    app *a = obj;
    (void)mosq;
    (void)qos_count;
    (void)granted;
    if (mid != a->subscribe_mid || !a->session_up || a->connected) {
        return;
    }
    a->connected = 1;
    a->connects++;
    fg_on_connect(&a->dev, wall_ms()); /* birth, then the replay of the ring (h=true) */
    say(a, "connected");
}

static void on_disconnect(struct mosquitto *mosq, void *obj, int rc)
{
    app *a = obj;
    (void)mosq;
    if (a->session_up && rc != 0) {
        a->disconnects++; /* lost, not our own DISCONNECT at the end */
    }
    a->link_up = 0;
    a->session_up = 0;
    a->connected = 0;
    fg_on_disconnect(&a->dev); /* frames go to the ring from now on */
    say(a, "disconnected");
}

static void on_publish(struct mosquitto *mosq, void *obj, int mid)
{
    app *a = obj;
    uint16_t m = (uint16_t)mid;
    (void)mosq;
    if (a->pending[m >> 3] & (1u << (m & 7))) {
        a->pending[m >> 3] &= (uint8_t)~(1u << (m & 7));
        a->pending_count--;
        a->acked++;
    }
    if (mid == a->death_mid) {
        a->death_acked = 1;
    }
    fg_on_publish_acked(&a->dev); /* paces the replay: the next ringed frame may go */
}

static void on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg)
{
    app *a = obj;
    (void)mosq;
    /* cmd {"rebirth": true} or a gateway coming online: the SDK re-sends the birth */
    if (fg_on_message(&a->dev, msg->topic, msg->payload, (size_t)msg->payloadlen, wall_ms()) ==
        FG_MSG_REBIRTH) {
        say(a, "rebirth");
    }
}

/* --- the device's own metrics ------------------------------------------------------------ */

typedef struct {
    fg_metric frame;     /* gauge: the seq of the frame it is sent in (lets a test count) */
    fg_metric ticks;     /* counter: frames built so far, including this one */
    fg_metric ring;      /* gauge: frames in the ring just after the previous frame */
    fg_metric tick_late; /* histogram: how late the loop called fg_tick, ms */
} metrics;

static const double LATE_BOUNDS[] = {1.0, 5.0, 10.0, 50.0};

static int declare(fg_device *dev, metrics *m)
{
    m->frame = fg_declare_gauge(dev, "c_sdk_demo_frame");
    m->ticks = fg_declare_counter(dev, "c_sdk_demo_frames_total");
    m->ring = fg_declare_gauge(dev, "c_sdk_demo_ring_frames");
    m->tick_late = fg_declare_histogram(dev, "c_sdk_demo_tick_late_ms", LATE_BOUNDS,
                                        sizeof LATE_BOUNDS / sizeof LATE_BOUNDS[0]);
    return (m->frame < 0 || m->ticks < 0 || m->ring < 0 || m->tick_late < 0) ? -1 : 0;
}

/* The values the next frame carries: set before the fg_tick that builds it. */
static void stage_next(app *a, const metrics *m, double late_ms)
{
    const fg_stats *s = fg_get_stats(&a->dev);
    fg_gauge_set(&a->dev, m->frame, (double)s->frames_built);
    fg_counter_add(&a->dev, m->ticks, 1.0);
    fg_gauge_set(&a->dev, m->ring, (double)fg_ring_count(&a->dev));
    fg_histogram_observe(&a->dev, m->tick_late, late_ms);
}

/* --- arguments ----------------------------------------------------------------------------- */

static int usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s [-T timeout_ms] [-r ring_bytes] [-v] HOST PORT DEVICE_ID INTERVAL_MS "
            "FRAMES PREFIX [CA_FILE [CERT_FILE KEY_FILE]]\n",
            argv0);
    return 1;
}

static int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    unsigned long long v;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || *s == '\0' || *s == '-' || *end != '\0' || v < min || v > max) {
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_args(int argc, char **argv, options *o)
{
    uint64_t v;
    int c, n;
    memset(o, 0, sizeof *o);
    o->ring_bytes = 64 * 1024;
    while ((c = getopt(argc, argv, "T:r:v")) != -1) {
        if (c == 'T' && parse_u64(optarg, 1, UINT32_MAX, &v) == 0) {
            o->timeout_ms = v;
        } else if (c == 'r' && parse_u64(optarg, 0, 64u * 1024 * 1024, &v) == 0) {
            o->ring_bytes = (size_t)v;
        } else if (c == 'v') {
            o->verbose = 1;
        } else {
            return -1;
        }
    }
    n = argc - optind;
    if (n != 6 && n != 7 && n != 9) {
        return -1;
    }
    argv += optind;
    o->host = argv[0];
    if (parse_u64(argv[1], 1, 65535, &v) != 0) {
        return -1;
    }
    o->port = (int)v;
    o->device_id = argv[2];
    if (parse_u64(argv[3], 1, UINT32_MAX, &v) != 0) {
        return -1;
    }
    o->interval_ms = (uint32_t)v;
    if (parse_u64(argv[4], 1, UINT32_MAX, &v) != 0) {
        return -1;
    }
    o->frames = (uint32_t)v;
    o->prefix = argv[5];
    if (n >= 7) {
        o->ca_file = argv[6];
    }
    if (n == 9) {
        o->cert_file = argv[7];
        o->key_file = argv[8];
    }
    if (o->timeout_ms == 0) {
        o->timeout_ms = (uint64_t)o->frames * o->interval_ms + 30000u;
    }
    return 0;
}

/* --- set-up and the main loop -------------------------------------------------------------- */

static int setup_mosquitto(app *a)
{
    uint8_t death[16];
    size_t death_len = fg_death_payload(&a->dev, death, sizeof death);
    a->mosq = mosquitto_new(a->opt.device_id, true, a);
    if (a->mosq == NULL || death_len == 0 ||
        fg_topic(&a->dev, FG_TOPIC_DEATH, a->death_topic, sizeof a->death_topic) < 0) {
        return -1;
    }
    /* The broker publishes the death if we vanish: the gateway then shows the device offline
     * instead of its last values. */
    if (mosquitto_will_set(a->mosq, a->death_topic, (int)death_len, death, 1, false) !=
        MOSQ_ERR_SUCCESS) {
        return -1;
    }
    if (a->opt.ca_file != NULL &&
        mosquitto_tls_set(a->mosq, a->opt.ca_file, NULL, a->opt.cert_file, a->opt.key_file,
                          NULL) != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "TLS set-up failed (CA %s)\n", a->opt.ca_file);
        return -1;
    }
    mosquitto_connect_callback_set(a->mosq, on_connect);
    mosquitto_subscribe_callback_set(a->mosq, on_subscribe);
    mosquitto_disconnect_callback_set(a->mosq, on_disconnect);
    mosquitto_publish_callback_set(a->mosq, on_publish);
    mosquitto_message_callback_set(a->mosq, on_message);
    return 0;
}

static int setup_device(app *a, uint8_t *ring, size_t ring_bytes, uint8_t *frame_buf,
                        size_t frame_bytes, metrics *m)
{
    static const fg_label labels[] = {{"example", "mosquitto_device"}};
    fg_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = a->opt.device_id;
    cfg.topic_prefix = a->opt.prefix;
    cfg.hw = "linux";
    cfg.fw = "fleetgate-c-example/1";
    cfg.interval_ms = a->opt.interval_ms;
    cfg.labels = labels;
    cfg.n_labels = 1;
    cfg.publish = publish_cb;
    cfg.publish_ctx = a;
    if (boot_id(&cfg.boot_id) != 0) {
        fprintf(stderr, "cannot read /dev/urandom for the boot id\n");
        return -1;
    }
    if (fg_init(&a->dev, &cfg, ring, ring_bytes, frame_buf, frame_bytes) != FG_OK ||
        declare(&a->dev, m) != 0 ||
        fg_topic(&a->dev, FG_TOPIC_TELEMETRY, a->telemetry_topic, FG_TOPIC_MAX) < 0) {
        fprintf(stderr, "invalid device id %s or prefix %s\n", a->opt.device_id, a->opt.prefix);
        return -1;
    }
    return 0;
}

static int all_acknowledged(const app *a)
{
    return fg_get_stats(&a->dev)->frames_built >= a->opt.frames && fg_ring_count(&a->dev) == 0 &&
           a->pending_count == 0;
}

/* A clean shutdown: the death (so the gateway need not wait for the Will), then DISCONNECT,
 * which tells the broker not to publish the Will. Waits at most 2 s for the death's PUBACK. */
static void shut_down(app *a)
{
    uint64_t until = mono_ms() + 2000u;
    a->death_mid = -1;
    if (a->connected && fg_publish_death(&a->dev) == FG_OK) {
        while (!a->death_acked && a->link_up && mono_ms() < until) {
            mosquitto_loop(a->mosq, 20, 1);
        }
    }
    mosquitto_disconnect(a->mosq);
    mosquitto_loop(a->mosq, 100, 1);
}

static void print_counters(const app *a, const char *outcome)
{
    const fg_stats *s = fg_get_stats(&a->dev);
    printf("{\"outcome\": \"%s\", \"device_id\": \"%s\", \"boot\": %lu, \"frames\": %lu, "
           "\"built\": %lu, \"sent\": %lu, \"ringed\": %lu, \"replayed\": %lu, "
           "\"dropped\": %lu, \"too_big\": %lu, \"acked\": %lu, \"births\": %lu, "
           "\"connects\": %lu, \"disconnects\": %lu}\n",
           outcome, a->opt.device_id, (unsigned long)a->dev.cfg.boot_id,
           (unsigned long)a->opt.frames, (unsigned long)s->frames_built,
           (unsigned long)s->frames_sent, (unsigned long)s->frames_ringed,
           (unsigned long)s->frames_replayed, (unsigned long)s->frames_dropped,
           (unsigned long)s->frames_too_big, (unsigned long)a->acked,
           (unsigned long)s->births_sent, (unsigned long)a->connects,
           (unsigned long)a->disconnects);
    fflush(stdout);
}

static void connect_step(app *a, uint64_t now, uint64_t *retry_at, uint64_t *backoff,
                         int *tried)
{
    /* Blocking TCP connect (quick on a LAN; a firmware uses its client's async connect). The
     * first call stores host and port, later ones reuse them. */
    int rc = *tried ? mosquitto_reconnect(a->mosq)
                    : mosquitto_connect(a->mosq, a->opt.host, a->opt.port, KEEPALIVE_S);
    *tried = 1;
    if (rc == MOSQ_ERR_SUCCESS) {
        a->link_up = 1; /* CONNECT sent; on_connect / on_disconnect tell the outcome */
        *backoff = RECONNECT_MIN_MS;
    } else {
        *retry_at = now + *backoff;
        *backoff = *backoff * 2 > RECONNECT_MAX_MS ? RECONNECT_MAX_MS : *backoff * 2;
    }
}

static int run(app *a, const metrics *m)
{
    uint64_t start = mono_ms();
    uint64_t deadline = start + a->opt.timeout_ms;
    uint64_t retry_at = start, backoff = RECONNECT_MIN_MS, last_frame = 0;
    int tried = 0;
    /* Poll at a quarter interval (at most 50 ms) so frames keep their cadence. */
    int step = (int)(a->opt.interval_ms / 4 > 50 ? 50 : a->opt.interval_ms / 4 + 1);
    stage_next(a, m, 0.0);
    while (!all_acknowledged(a)) {
        uint64_t now = mono_ms();
        if (now >= deadline) {
            return 2;
        }
        if (!a->link_up && now >= retry_at) {
            connect_step(a, now, &retry_at, &backoff, &tried);
        }
        if (a->link_up) {
            int rc = mosquitto_loop(a->mosq, step, 1);
            if (rc != MOSQ_ERR_SUCCESS && a->link_up) {
                on_disconnect(a->mosq, a, rc); /* lost without the callback */
            }
            if (!a->link_up) {
                retry_at = mono_ms() + backoff;
            }
        } else {
            sleep_ms((uint64_t)step);
        }
        if (fg_get_stats(&a->dev)->frames_built < a->opt.frames) {
            uint32_t built = fg_get_stats(&a->dev)->frames_built;
            now = mono_ms();
            fg_tick(&a->dev, wall_ms()); /* live when connected, else into the ring */
            if (fg_get_stats(&a->dev)->frames_built != built) {
                uint64_t gap = last_frame == 0 ? a->opt.interval_ms : now - last_frame;
                last_frame = now;
                say(a, "frame");
                stage_next(a, m, gap > a->opt.interval_ms ? (double)(gap - a->opt.interval_ms)
                                                          : 0.0);
            }
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    static app a;
    static uint8_t frame_buf[1024];
    static uint8_t *ring;
    metrics m;
    int rc;
    if (parse_args(argc, argv, &a.opt) != 0) {
        return usage(argv[0]);
    }
    ring = malloc(a.opt.ring_bytes > 0 ? a.opt.ring_bytes : 1); /* the example may; the SDK never */
    if (ring == NULL || setup_device(&a, ring, a.opt.ring_bytes, frame_buf, sizeof frame_buf,
                                     &m) != 0) {
        return 1;
    }
    mosquitto_lib_init();
    if (setup_mosquitto(&a) != 0) {
        mosquitto_lib_cleanup();
        return 1;
    }
    rc = run(&a, &m);
    if (rc == 0) {
        shut_down(&a);
    }
    print_counters(&a, rc == 0 ? "acknowledged" : "timeout");
    mosquitto_destroy(a.mosq);
    mosquitto_lib_cleanup();
    free(ring);
    return rc;
}
