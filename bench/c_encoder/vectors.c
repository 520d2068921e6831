/* The bench image's vector table at address 0 (qemu-system-arm -M mps2-an386 boots from it):
 * the initial stack pointer, then newlib's _start (rdimon's crt0 sets up heap and stack by
 * semihosting and calls main; main's return value becomes QEMU's exit status). */
#include <stdint.h>

extern void _start(void);
extern uint32_t __bench_stack_top;

__attribute__((section(".vectors"), used)) const struct {
    const uint32_t *initial_sp;
    void (*reset)(void);
} bench_vectors = {&__bench_stack_top, _start};
