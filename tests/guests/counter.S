/*
 * counter.S - the pause/resume test guest (counter.elf), booted through PVH.
 *
 * Prints "hull-tiny: counter start", then "tick <n>" with n = 0, 1, 2, ... forever, one line about every
 * TICK_CYCLES time-stamp-counter cycles (~0.2-0.3 s on a 2-4 GHz host). While the VM is paused no line may
 * appear; after resume the count continues from where it stopped. Pacing by the TSC rather than by a loop
 * count keeps the rate about the same whether ring 0 runs natively (hardware KVM) or emulated (~1000x slower);
 * the loop bound MAX_SPINS only guarantees progress if the TSC does not advance at all.
 */
#include "lib32.S"

#define TICK_CYCLES 0x30000000      /* ~805 million TSC cycles between ticks */
#define MAX_SPINS 0x1000000         /* 16 M iterations: ~0.1 s native, far more than TICK_CYCLES emulated */

    ENTRY32 stack_top
    PRINT "hull-tiny: counter start\n"
    xor %edi, %edi                  /* %edi = tick number */
1:  PRINT "tick "
    mov %edi, %eax
    call putd32
    call newline
    inc %edi
    call wait_tick
    jmp 1b

/* wait_tick: spin until the TSC has advanced TICK_CYCLES since the call (or MAX_SPINS iterations passed). */
wait_tick:
    pusha
    rdtsc
    mov %eax, %ebx                  /* start = %ebp:%ebx */
    mov %edx, %ebp
    mov $MAX_SPINS, %ecx
1:  rdtsc
    sub %ebx, %eax                  /* elapsed = now - start, in %edx:%eax */
    sbb %ebp, %edx
    jnz 2f                          /* high half non-zero: far more than TICK_CYCLES */
    cmp $TICK_CYCLES, %eax
    jae 2f
    dec %ecx
    jnz 1b
2:  popa
    ret

    STACK
