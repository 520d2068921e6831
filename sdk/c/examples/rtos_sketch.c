/*
 * A sketch, not a port: where the fleetgate C SDK meets an RTOS MQTT client. It has the shape
 * of ESP-IDF's esp_mqtt (an MQTT task that posts events to a handler) on FreeRTOS; coreMQTT or
 * any other client fits the same four places:
 *
 *   1. publish callback  -> the client's publish, QoS 1, returning "not taken" when offline
 *   2. PUBACK            -> fg_on_publish_acked (esp_mqtt: MQTT_EVENT_PUBLISHED)
 *   3. tick              -> fg_tick from the task that owns the device, every interval or more
 *   4. connect / disconnect / message -> fg_on_connect (after the subscriptions are
 *      acknowledged), fg_on_disconnect, fg_on_message
 *
 * The SDK is not thread-safe and esp_mqtt calls its handler from the MQTT task, so the handler
 * only copies events into a queue; one device task makes every fg_* call. (A mutex around
 * each fg_* call works too, as long as the publish callback never waits for the MQTT task.)
 *
 * It compiles with the host compiler (make -C sdk/c/examples rtos-sketch: -fsyntax-only) against
 * the stand-in declarations below, whose names and signatures follow ESP-IDF 5.x's
 * mqtt_client.h and FreeRTOS; it is not built or run against ESP-IDF here.
 *
 * What the firmware author supplies is marked SUPPLY.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fleetgate.h"

#ifdef ESP_PLATFORM
#include "esp_random.h"
#include "freertos/FreeRTOS.h"
#include "freertos/queue.h"
#include "freertos/task.h"
#include "mqtt_client.h"
#else
/* ---- stand-ins: on the target these come from ESP-IDF / FreeRTOS (not defined here) ---- */
typedef struct esp_mqtt_client *esp_mqtt_client_handle_t;
typedef const char *esp_event_base_t;
typedef int esp_err_t;
typedef enum {
    MQTT_EVENT_ANY = -1,
    MQTT_EVENT_CONNECTED = 1,
    MQTT_EVENT_DISCONNECTED,
    MQTT_EVENT_SUBSCRIBED,
    MQTT_EVENT_UNSUBSCRIBED,
    MQTT_EVENT_PUBLISHED,
    MQTT_EVENT_DATA
} esp_mqtt_event_id_t;
typedef struct {
    esp_mqtt_event_id_t event_id;
    esp_mqtt_client_handle_t client;
    char *data;               /* not NUL-terminated */
    int data_len;
    int total_data_len;       /* > data_len: the message comes in fragments */
    int current_data_offset;
    char *topic;              /* not NUL-terminated; NULL on later fragments */
    int topic_len;
    int msg_id;
} esp_mqtt_event_t;
typedef struct {
    struct { struct { const char *uri; } address;
             struct { const char *certificate; } verification; } broker;
    struct { const char *client_id;
             struct { const char *certificate; const char *key; } authentication; } credentials;
    struct { struct { const char *topic; const char *msg; int msg_len; int qos; int retain; }
             last_will; } session;
} esp_mqtt_client_config_t;
typedef void (*esp_event_handler_t)(void *arg, esp_event_base_t base, int32_t id, void *data);
esp_mqtt_client_handle_t esp_mqtt_client_init(const esp_mqtt_client_config_t *config);
esp_err_t esp_mqtt_client_register_event(esp_mqtt_client_handle_t client,
                                         esp_mqtt_event_id_t event, esp_event_handler_t handler,
                                         void *arg);
esp_err_t esp_mqtt_client_start(esp_mqtt_client_handle_t client);
int esp_mqtt_client_publish(esp_mqtt_client_handle_t client, const char *topic, const char *data,
                            int len, int qos, int retain);
int esp_mqtt_client_subscribe(esp_mqtt_client_handle_t client, const char *topic, int qos);
uint32_t esp_random(void);
typedef void *QueueHandle_t;
typedef uint32_t TickType_t;
typedef long BaseType_t;
#define pdPASS 1
#define pdMS_TO_TICKS(ms) ((TickType_t)(ms))
QueueHandle_t xQueueCreate(unsigned long length, unsigned long item_size);
BaseType_t xQueueSend(QueueHandle_t q, const void *item, TickType_t wait);
BaseType_t xQueueReceive(QueueHandle_t q, void *item, TickType_t wait);
#endif

/* SUPPLY: the wall clock in ms since the Unix epoch, set by SNTP. Frames carry it; the gateway
 * corrects a clock that is ahead only, once per boot at the birth (docs/protocol.md), so do
 * not start the device task before the first sync. */
uint64_t epoch_ms(void);
/* SUPPLY: your metrics; here one gauge and one histogram as in the seed's C API. */
float read_board_temp_c(void);

#define DEVICE_ID "esp32c3-0042"   /* SUPPLY: unique per device, [A-Za-z0-9][A-Za-z0-9_.-]{0,63} */
#define INTERVAL_MS 10000u
#define RING_BYTES (16u * 1024u)   /* SUPPLY: RAM you can spare; ~60-150 B per frame */

/* Everything the SDK uses lives here: static, no heap. */
static fg_device dev;
static uint8_t ring_mem[RING_BYTES];
static uint8_t frame_buf[512];
static esp_mqtt_client_handle_t client;
static QueueHandle_t events;
static int online; /* the device task's view: subscribed and told the SDK */
static int subscribe_msg_id[2];
static int subscribed;

/* What the MQTT task hands to the device task. Our messages (cmd, gateway state) are tiny
 * maps, so one fixed-size copy is enough; longer ones are dropped, never half-read. */
#define APP_EVENT_INFERENCE 100 /* an observation from another task (see below) */

typedef struct {
    int id;                   /* an esp_mqtt_event_id_t, or APP_EVENT_* */
    int msg_id;
    double value;
    char topic[FG_TOPIC_MAX];
    uint8_t payload[64];
    size_t len;
} device_event;

/* 1. The publish callback, called from inside fg_* on the device task. */
static int publish_cb(void *ctx, const char *topic, const uint8_t *payload, size_t len, int qos,
                      int retain)
{
    (void)ctx;
    if (!online) {
        return 1; /* "not taken": a telemetry frame goes into the ring */
    }
    /* esp_mqtt copies the message into its outbox and resends unacknowledged QoS 1 messages
     * after a reconnect, but deletes them after CONFIG_MQTT_OUTBOX_EXPIRED_TIMEOUT_MS (30 s
     * by default; MQTT_EVENT_DELETED says which, with CONFIG_MQTT_REPORT_DELETED_MESSAGES),
     * and it takes publishes until its keepalive notices a dead link. So frames sent into a
     * link that died are lost after that timeout. SUPPLY one of: a timeout above your longest
     * outage (the outbox is RAM), or copies of unacknowledged telemetry put back into the
     * ring on MQTT_EVENT_DELETED (fg_ring_push(&dev.ring, ...); the replay then sends them
     * with h=true). A client that keeps nothing across a reconnect (coreMQTT without a
     * persistent session) loses them at the drop. The gateway shows any loss as missing seqs
     * (completeness in its API). */
    return esp_mqtt_client_publish(client, topic, (const char *)payload, (int)len, qos, retain) < 0;
}

/* Runs on the MQTT task: copy and queue, no fg_* call here. */
static void mqtt_event_handler(void *arg, esp_event_base_t base, int32_t id, void *data)
{
    const esp_mqtt_event_t *e = data;
    device_event ev;
    (void)arg;
    (void)base;
    memset(&ev, 0, sizeof ev);
    ev.id = (int)id;
    ev.msg_id = e->msg_id;
    if (ev.id == MQTT_EVENT_DATA) {
        if (e->topic == NULL || e->topic_len >= (int)sizeof ev.topic ||
            e->total_data_len > (int)sizeof ev.payload) {
            return;
        }
        memcpy(ev.topic, e->topic, (size_t)e->topic_len); /* NUL from the memset */
        memcpy(ev.payload, e->data, (size_t)e->data_len);
        ev.len = (size_t)e->data_len;
    }
    /* Never block the MQTT task. SUPPLY: a queue deep enough that it is never full; a lost
     * PUBACK is recovered by the next fg_tick, a lost (dis)connect event is not. */
    (void)xQueueSend(events, &ev, 0);
}

/* Observations from other tasks travel through the same queue: the SDK is touched by the
 * device task only. Callable from any task (not from an ISR: use xQueueSendFromISR there). */
void fleetgate_record_inference(double ms)
{
    device_event ev;
    memset(&ev, 0, sizeof ev);
    ev.id = APP_EVENT_INFERENCE;
    ev.value = ms;
    (void)xQueueSend(events, &ev, 0);
}

static fg_metric temp, infer;

/* 4. Connection events (and queued observations), on the device task. */
static void handle(const device_event *ev)
{
    char topic[FG_TOPIC_MAX];
    switch (ev->id) {
    case MQTT_EVENT_CONNECTED:
        subscribed = 0;
        fg_topic(&dev, FG_TOPIC_CMD, topic, sizeof topic);
        subscribe_msg_id[0] = esp_mqtt_client_subscribe(client, topic, 1);
        fg_topic(&dev, FG_TOPIC_GATEWAY_STATE, topic, sizeof topic);
        subscribe_msg_id[1] = esp_mqtt_client_subscribe(client, topic, 1);
        break;
    case MQTT_EVENT_SUBSCRIBED:
        if (ev->msg_id == subscribe_msg_id[0] || ev->msg_id == subscribe_msg_id[1]) {
            if (++subscribed == 2) {
                online = 1;
                (void)fg_on_connect(&dev, epoch_ms()); /* birth, then the ring (h=true) */
            }
        }
        break;
    case MQTT_EVENT_DISCONNECTED:
        online = 0;
        fg_on_disconnect(&dev); /* esp_mqtt reconnects by itself (reconnect_timeout_ms) */
        break;
    case MQTT_EVENT_PUBLISHED:
        fg_on_publish_acked(&dev); /* 2. a PUBACK: the replay sends the next ringed frame */
        break;
    case MQTT_EVENT_DATA:
        (void)fg_on_message(&dev, ev->topic, ev->payload, ev->len, epoch_ms());
        break;
    case APP_EVENT_INFERENCE:
        (void)fg_histogram_observe(&dev, infer, ev->value);
        break;
    default:
        break;
    }
}

static const double INFER_BOUNDS[] = {1.0, 5.0, 10.0, 50.0, 100.0};

/* The one task that owns the device. SUPPLY: create it (xTaskCreate) after SNTP has synced;
 * a stack of 4 KiB is plenty (the SDK's deepest call is well under 1 KiB). */
void fleetgate_device_task(void *arg)
{
    static const fg_label labels[] = {{"site", "lab"}};
    static char will_topic[FG_TOPIC_MAX];
    static uint8_t will[16];
    esp_mqtt_client_config_t mqtt_cfg;
    fg_config cfg;
    device_event ev;
    (void)arg;

    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = DEVICE_ID;
    cfg.hw = "esp32-c3";
    cfg.fw = "1.4.2";                /* SUPPLY: your firmware version */
    cfg.interval_ms = INTERVAL_MS;
    cfg.labels = labels;
    cfg.n_labels = 1;
    cfg.boot_id = esp_random();      /* hardware RNG: a new boot id at every boot */
    cfg.publish = publish_cb;
    if (fg_init(&dev, &cfg, ring_mem, sizeof ring_mem, frame_buf, sizeof frame_buf) != FG_OK) {
        return;
    }
    temp = fg_declare_gauge(&dev, "board_temp_c");
    infer = fg_declare_histogram(&dev, "inference_latency_ms", INFER_BOUNDS,
                                 sizeof INFER_BOUNDS / sizeof INFER_BOUNDS[0]);

    /* The Will is the SDK's death payload, QoS 1, not retained. */
    memset(&mqtt_cfg, 0, sizeof mqtt_cfg);
    fg_topic(&dev, FG_TOPIC_DEATH, will_topic, sizeof will_topic);
    mqtt_cfg.broker.address.uri = "mqtts://gateway.local:8883"; /* SUPPLY */
    mqtt_cfg.broker.verification.certificate = NULL; /* SUPPLY: the CA (PEM) for mqtts:// */
    mqtt_cfg.credentials.client_id = DEVICE_ID;
    mqtt_cfg.session.last_will.topic = will_topic;
    mqtt_cfg.session.last_will.msg = (const char *)will;
    mqtt_cfg.session.last_will.msg_len = (int)fg_death_payload(&dev, will, sizeof will);
    mqtt_cfg.session.last_will.qos = 1;
    mqtt_cfg.session.last_will.retain = 0;
    events = xQueueCreate(16, sizeof(device_event));
    client = esp_mqtt_client_init(&mqtt_cfg);
    esp_mqtt_client_register_event(client, MQTT_EVENT_ANY, mqtt_event_handler, NULL);
    esp_mqtt_client_start(client);

    for (;;) {
        /* Wake for events, and at least 4 times an interval for the tick. */
        if (xQueueReceive(events, &ev, pdMS_TO_TICKS(INTERVAL_MS / 4)) == pdPASS) {
            handle(&ev);
        }
        /* 3. The tick: a gauge read now (the frame carries its latest value), then fg_tick: it
         * builds a frame when one is due (live when online, else into the ring) and refills
         * the replay window when acks were lost. */
        fg_gauge_set(&dev, temp, read_board_temp_c());
        (void)fg_tick(&dev, epoch_ms());
    }
}
