/* Linked by `make size` per target: every public function is referenced, so the image holds
 * the whole library plus what it pulls from libgcc (soft double arithmetic) and string.h,
 * after --gc-sections. fg_device_bytes has the size of the caller's struct as its size. */
#include "fleetgate.h"

char fg_device_bytes[sizeof(fg_device)];

typedef void (*fn)(void);

__attribute__((used)) const fn fg_size_refs[] = {
    (fn)fg_init, (fn)fg_declare_gauge, (fn)fg_declare_counter, (fn)fg_declare_histogram,
    (fn)fg_gauge_set, (fn)fg_counter_add, (fn)fg_histogram_observe, (fn)fg_on_connect,
    (fn)fg_on_publish_acked, (fn)fg_on_disconnect, (fn)fg_tick, (fn)fg_publish_now,
    (fn)fg_on_message, (fn)fg_publish_death, (fn)fg_topic, (fn)fg_death_payload,
    (fn)fg_encode_birth, (fn)fg_encode_telemetry, (fn)fg_get_stats, (fn)fg_ring_count,
    (fn)fg_ring_init, (fn)fg_ring_push, (fn)fg_ring_peek, (fn)fg_ring_pop, (fn)fg_w_init,
    (fn)fg_w_map, (fn)fg_w_array, (fn)fg_w_str, (fn)fg_w_strn, (fn)fg_w_uint, (fn)fg_w_int,
    (fn)fg_w_double, (fn)fg_w_float32, (fn)fg_w_bool, (fn)fg_w_nil,
};

void fg_size_entry(void);
void fg_size_entry(void) {}
