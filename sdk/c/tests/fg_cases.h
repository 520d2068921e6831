/* The payload cases written by both the host tool and the Cortex-M4 image under QEMU. */
#ifndef FG_CASES_H
#define FG_CASES_H

#include <stddef.h>
#include <stdint.h>

typedef void (*fg_emit_fn)(const char *name, const char *topic, const uint8_t *payload,
                           size_t len);

/* Emits every case in a fixed order; returns 0, or the number of internal failures. */
int fg_cases_run(fg_emit_fn emit);

#endif
