/* Prints every case of fg_cases.c as "name topic hex", one per line; run on the host and, as
 * test.elf, under QEMU (printf over semihosting). The exit status is the failure count. */
#include <stdio.h>

#include "fg_cases.h"

static void emit(const char *name, const char *topic, const uint8_t *payload, size_t len)
{
    size_t i;
    printf("%s %s ", name, topic);
    for (i = 0; i < len; i++) {
        printf("%02x", payload[i]);
    }
    printf("\n");
}

int main(void)
{
    int failures = fg_cases_run(emit);
    printf("end %d\n", failures);
    return failures;
}
