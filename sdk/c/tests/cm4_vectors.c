/* The Cortex-M4 test image's vector table, placed at address 0 by cm4.ld: the initial stack
 * pointer, then the reset handler, newlib's _start (rdimon's crt0: semihosting sets up the
 * heap and stack, then calls main; main's return becomes QEMU's exit status). */
#include <stdint.h>

extern void _start(void);
extern uint32_t __fg_stack_top;

/* A struct, not an array: two pointer types without a conversion ISO C would refuse. */
__attribute__((section(".vectors"), used)) const struct {
    const uint32_t *initial_sp;
    void (*reset)(void);
} fg_vectors = {&__fg_stack_top, _start};
