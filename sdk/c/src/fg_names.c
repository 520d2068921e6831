/* Name checks of protocol v1 (docs/protocol.md "Names and labels"), done once at declaration
 * so a firmware bug shows as an error code on the device, not as frames the gateway refuses. */
#include "fg_internal.h"

/* Small loops instead of newlib's strcmp/strncmp, which are tuned for speed (about 0.9 KiB
 * of flash on Cortex-M4) where names of a few bytes are compared at declaration time. */
const char *fg_after(const char *t, const char *prefix)
{
    if (t == NULL) {
        return NULL;
    }
    while (*prefix != '\0') {
        if (*t++ != *prefix++) {
            return NULL;
        }
    }
    return t;
}

int fg_streq(const char *a, const char *b)
{
    const char *rest = fg_after(a, b);
    return rest != NULL && *rest == '\0';
}

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
    return valid(s, 1) && fg_after(s, "fleet_device") == NULL;
}

int fg_valid_label_name(const char *s)
{
    return valid(s, 0) && fg_after(s, "__") == NULL && !fg_streq(s, "device_id") &&
           !fg_streq(s, "le");
}
