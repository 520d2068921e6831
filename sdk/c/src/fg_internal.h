/* Shared between the SDK's sources; not part of the public API. */
#ifndef FG_INTERNAL_H
#define FG_INTERNAL_H

#include "fleetgate.h"

/* fg_cmd.c: finds `key` in a msgpack map payload; 1 when its value is `true`, else 0 (also
 * for anything malformed: a message we cannot read is ignored). */
int fg_map_flag(const uint8_t *payload, size_t len, const char *key);

/* fg_names.c: t without its leading prefix, or NULL (also for t NULL, so calls chain). */
const char *fg_after(const char *t, const char *prefix);
int fg_streq(const char *a, const char *b);
int fg_valid_metric_name(const char *s);
int fg_valid_label_name(const char *s);

#endif
