/* Name checks of protocol v1 (docs/protocol.md "Names and labels"), done once at declaration
 * so a firmware bug shows as an error code on the device, not as frames the gateway refuses. */
#include <string.h>

#include "fg_internal.h"

static int alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }

static int digit(char c) { return c >= '0' && c <= '9'; }

/* [a-zA-Z_(colon)][a-zA-Z0-9_(colon)]*, 1..200 chars */
static int valid(const char *s, int colon)
{
    size_t i;
    if (s == NULL || s[0] == '\0' || digit(s[0])) {
        return 0;
    }
    for (i = 0; s[i] != '\0'; i++) {
        if (i >= 200 || !(alpha(s[i]) || digit(s[i]) || (colon && s[i] == ':'))) {
            return 0;
        }
    }
    return 1;
}

int fg_valid_metric_name(const char *s)
{
    return valid(s, 1) && strncmp(s, "fleet_device", 12) != 0;
}

int fg_valid_label_name(const char *s)
{
    return valid(s, 0) && strncmp(s, "__", 2) != 0 && strcmp(s, "device_id") != 0 &&
           strcmp(s, "le") != 0;
}
