/*
 * The C SDK's cost per frame on a Cortex-M4, counted under qemu-system-arm -M mps2-an386
 * -icount shift=0 (bench/c_encoder.py builds and runs it).
 *
 * The clock: QEMU 7.2 does not model the DWT cycle counter (DWT_CTRL and CYCCNT read 0; the
 * image checks and prints it), and it does not model cycles at all. With -icount shift=0 its
 * virtual clock advances 1 ns per guest instruction, so SysTick, clocked from the 25 MHz
 * processor clock, counts down once per 40 instructions: a measurement is an INSTRUCTION
 * count, not a cycle count. Each is taken over ITERS repetitions (resolution 40 / ITERS
 * instructions), and a calibration loop of a known instruction count checks the 40.
 *
 * Output, one line per measurement: "RESULT name=<n> iters=<n> ticks=<n> bytes=<n>", plus
 * "CAL", "DWT" and the payloads ("BIRTH <hex>", "FRAME <hex>") for the script to decode.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "fleetgate.h"

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define DEMCR (*(volatile uint32_t *)0xE000EDFCu)
#define DWT_CTRL (*(volatile uint32_t *)0xE0001000u)
#define DWT_CYCCNT (*(volatile uint32_t *)0xE0001004u)

#define ITERS 1000u
#define CAL_LOOPS 100000u /* 2 instructions each: 200,000 = 5,000 ticks of 40 */
#define N_GAUGES 12
#define N_COUNTERS 6
#define N_HISTOGRAMS 2
#define N_BOUNDS 8

static fg_device dev;
static uint8_t ring_mem[512u * 1024u]; /* holds ITERS frames: the replay is measured on them */
static uint8_t frame_buf[1024];
static uint8_t out[1024];
static fg_metric handles[N_GAUGES + N_COUNTERS + N_HISTOGRAMS];
static volatile uint32_t sink;
static int transport_up;
static uint64_t now_ms = 1790000000000ull;

static const char *const NAMES[] = {
    "board_temp_c", "cpu_temp_c", "supply_voltage_v", "battery_pct", "rssi_dbm",
    "heap_free_bytes", "stack_free_bytes", "uptime_s", "model_confidence", "sensor_a",
    "sensor_b", "sensor_c", "inferences_total", "errors_total", "tx_bytes_total",
    "rx_bytes_total", "wakeups_total", "resets_total", "inference_latency_ms",
    "queue_wait_ms"};
static const double BOUNDS[N_BOUNDS] = {0.5, 1, 2.5, 5, 10, 25, 50, 100};

/* The transport: takes every message while "connected" (an MQTT client would copy it into
 * its queue here; that copy is the memcpy baseline), refuses otherwise. */
static int publish(void *ctx, const char *topic, const uint8_t *payload, size_t len, int qos,
                   int retain)
{
    (void)ctx;
    (void)topic;
    (void)qos;
    (void)retain;
    sink += payload[len - 1];
    return transport_up ? 0 : 1;
}

static inline uint32_t ticks(void) { return SYST_CVR; }

static void report(const char *name, uint32_t start, uint32_t end, uint32_t iters, size_t bytes)
{
    /* SysTick counts down; no wrap within one measurement (16.7 M ticks = 671 M insns) */
    printf("RESULT name=%s iters=%lu ticks=%lu bytes=%lu\n", name, (unsigned long)iters,
           (unsigned long)(start - end), (unsigned long)bytes);
}

static void spin(uint32_t n)
{
    __asm__ volatile("1: subs %0, %0, #1\n\tbne 1b" : "+r"(n) : : "cc");
}

static void hex(const char *tag, const uint8_t *p, size_t n)
{
    size_t i;
    printf("%s ", tag);
    for (i = 0; i < n; i++) {
        printf("%02x", p[i]);
    }
    printf("\n");
}

/* Values computed before any measurement: converting and scaling doubles is soft-float on
 * the M4 and would be counted as the SDK's otherwise. */
static double values[64];

/* One frame's worth of metric updates: every gauge set, every counter incremented, one
 * observation per histogram (what a firmware does between two frames, at the least). */
static void update(uint32_t i)
{
    int k = 0, j;
    for (j = 0; j < N_GAUGES; j++, k++) {
        fg_gauge_set(&dev, handles[k], values[(i + (uint32_t)j) & 63u]);
    }
    for (j = 0; j < N_COUNTERS; j++, k++) {
        fg_counter_add(&dev, handles[k], 1.0);
    }
    for (j = 0; j < N_HISTOGRAMS; j++, k++) {
        fg_histogram_observe(&dev, handles[k], values[(i * 7u) & 63u]);
    }
}

static int setup(void)
{
    static const fg_label labels[] = {{"site", "lab"}};
    fg_config cfg;
    int k = 0, j;
    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = "stm32f4-0001";
    cfg.hw = "cortex-m4";
    cfg.fw = "1.0.0";
    cfg.interval_ms = 10000;
    cfg.labels = labels;
    cfg.n_labels = 1;
    cfg.boot_id = 0xdeadbeefu;
    cfg.publish = publish;
    cfg.max_in_flight = 1; /* one replayed frame per ack: the replay loop measures one each */
    if (fg_init(&dev, &cfg, ring_mem, sizeof ring_mem, frame_buf, sizeof frame_buf) != FG_OK) {
        return -1;
    }
    for (j = 0; j < N_GAUGES; j++) {
        handles[k++] = fg_declare_gauge(&dev, NAMES[j]);
    }
    for (j = 0; j < N_COUNTERS; j++) {
        handles[k] = fg_declare_counter(&dev, NAMES[k]);
        k++;
    }
    for (j = 0; j < N_HISTOGRAMS; j++) {
        handles[k] = fg_declare_histogram(&dev, NAMES[k], BOUNDS, N_BOUNDS);
        k++;
    }
    for (j = 0; j < k; j++) {
        if (handles[j] < 0) {
            return -1;
        }
    }
    return 0;
}

int main(void)
{
    uint32_t i, t0, t1;
    size_t frame_len, birth_len;
    const fg_stats *st;

    /* DWT: enable trace and the cycle counter as on hardware, and say what QEMU gives. */
    DEMCR |= 1u << 24;
    DWT_CYCCNT = 0;
    DWT_CTRL |= 1u;
    t0 = DWT_CYCCNT;
    spin(1000);
    t1 = DWT_CYCCNT;
    printf("DWT ctrl=%08lx cyccnt_delta=%lu\n", (unsigned long)DWT_CTRL, (unsigned long)(t1 - t0));

    SYST_RVR = 0x00FFFFFFu;
    SYST_CVR = 0;
    SYST_CSR = 5u; /* enable, processor clock, no interrupt */
    while (SYST_CVR == 0) {
    }
    t0 = ticks();
    spin(CAL_LOOPS);
    t1 = ticks();
    printf("CAL insns=%lu ticks=%lu\n", (unsigned long)(2u * CAL_LOOPS), (unsigned long)(t0 - t1));

    for (i = 0; i < 64u; i++) {
        values[i] = (double)i * 1.75; /* 0 .. 110.25: every histogram bucket and +Inf */
    }
    if (setup() != 0) {
        printf("ERROR setup\n");
        return 1;
    }
    update(0);
    birth_len = fg_encode_birth(&dev, now_ms, out, sizeof out);
    hex("BIRTH", out, birth_len);
    frame_len = fg_encode_telemetry(&dev, 0, now_ms, 0, out, sizeof out);
    hex("FRAME", out, frame_len);
    if (birth_len == 0 || frame_len == 0) {
        printf("ERROR encode\n");
        return 1;
    }

    /* Baselines, same iteration count: the loop alone, and a copy of the frame's bytes. */
    t0 = ticks();
    for (i = 0; i < ITERS; i++) {
        sink += i;
    }
    t1 = ticks();
    report("loop", t0, t1, ITERS, 0);
    t0 = ticks();
    for (i = 0; i < ITERS; i++) {
        memcpy(frame_buf, out, frame_len);
        sink += frame_buf[i % frame_len];
    }
    t1 = ticks();
    report("memcpy_frame", t0, t1, ITERS, frame_len);

    t0 = ticks();
    for (i = 0; i < ITERS; i++) {
        sink += (uint32_t)fg_encode_telemetry(&dev, i, now_ms + i, 0, out, sizeof out);
    }
    t1 = ticks();
    report("encode_telemetry", t0, t1, ITERS, frame_len);

    /* Where the encoder's time goes: the 20 values alone, as float64 (0xcb + 8 bytes). */
    t0 = ticks();
    for (i = 0; i < ITERS; i++) {
        fg_writer w;
        int j;
        fg_w_init(&w, out, sizeof out);
        for (j = 0; j < 20; j++) {
            fg_w_double(&w, values[(i + (uint32_t)j) & 63u]);
        }
        sink += (uint32_t)w.len;
    }
    t1 = ticks();
    report("w_double_x20", t0, t1, ITERS, 180);

    t0 = ticks();
    for (i = 0; i < ITERS; i++) {
        update(i);
    }
    t1 = ticks();
    report("update_20_metrics", t0, t1, ITERS, 0);

    t0 = ticks();
    for (i = 0; i < ITERS; i++) {
        sink += (uint32_t)fg_encode_birth(&dev, now_ms, out, sizeof out);
    }
    t1 = ticks();
    report("encode_birth", t0, t1, ITERS, birth_len);

    /* A whole frame while connected: updates, build, hand to the transport. */
    transport_up = 1;
    (void)fg_on_connect(&dev, now_ms);
    t0 = ticks();
    for (i = 0; i < ITERS; i++) {
        update(i);
        (void)fg_publish_now(&dev, now_ms + i);
    }
    t1 = ticks();
    report("frame_live", t0, t1, ITERS, frame_len);

    /* Offline: the same frames go into the ring (it holds all ITERS of them). */
    transport_up = 0;
    fg_on_disconnect(&dev);
    t0 = ticks();
    for (i = 0; i < ITERS; i++) {
        update(i);
        (void)fg_publish_now(&dev, now_ms + i);
    }
    t1 = ticks();
    report("frame_ringed", t0, t1, ITERS, frame_len);

    /* Back online: the birth and the first replayed frame go at connect, then each ack
     * replays one frame (h=true appended). */
    transport_up = 1;
    (void)fg_on_connect(&dev, now_ms);
    st = fg_get_stats(&dev);
    {
        uint32_t replayed0 = st->frames_replayed, n;
        t0 = ticks();
        while (fg_ring_count(&dev) > 0) {
            fg_on_publish_acked(&dev);
        }
        t1 = ticks();
        n = st->frames_replayed - replayed0;
        report("replay_per_ack", t0, t1, n, frame_len + 3u);
    }
    printf("STATS built=%lu sent=%lu ringed=%lu replayed=%lu dropped=%lu too_big=%lu\n",
           (unsigned long)st->frames_built, (unsigned long)st->frames_sent,
           (unsigned long)st->frames_ringed, (unsigned long)st->frames_replayed,
           (unsigned long)st->frames_dropped, (unsigned long)st->frames_too_big);
    printf("SIZEOF fg_device=%lu\n", (unsigned long)sizeof(fg_device));
    return 0;
}
