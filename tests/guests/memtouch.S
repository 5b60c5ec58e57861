/*
 * memtouch.S - the snapshot benchmark guest (memtouch.elf), booted through PVH, 64 MiB of RAM.
 *
 * Prints "hull-tiny: memtouch waiting", then one '.' about every DOT_CYCLES TSC cycles (~1.6 ms on a
 * 2-3 GHz host) for DOTS dots (~2.5 s), then writes one byte into every 4 KiB page from 2 MiB to 64 MiB
 * and prints "hull-tiny: memtouch touched", then halts. The dot count lives in %edi, so a guest restored
 * from a snapshot taken while it waits prints its next dot as soon as it runs (the benchmark's "first
 * guest instruction" mark), and touches its memory a little later (the RSS "after" mark).
 */
#include "lib32.S"

#define DOT_CYCLES 0x400000
#define MAX_SPINS 0x100000
#define DOTS 1500
#define TOUCH_START 0x200000
#define TOUCH_END 0x4000000

    ENTRY32 stack_top
    PRINT "hull-tiny: memtouch waiting\n"
    xor %edi, %edi
1:  call wait_dot
    mov $'.', %al
    call putc
    inc %edi
    cmp $DOTS, %edi
    jb 1b
    mov $TOUCH_START, %ebx
2:  movb $1, (%ebx)
    add $4096, %ebx
    cmp $TOUCH_END, %ebx
    jb 2b
    PRINT "\nhull-tiny: memtouch touched\n"
3:  cli
    hlt
    jmp 3b

/* wait_dot: spin until the TSC has advanced DOT_CYCLES since the call (or MAX_SPINS iterations passed). */
wait_dot:
    pusha
    rdtsc
    mov %eax, %ebx
    mov %edx, %ebp
    mov $MAX_SPINS, %ecx
1:  rdtsc
    sub %ebx, %eax
    sbb %ebp, %edx
    jnz 2f
    cmp $DOT_CYCLES, %eax
    jae 2f
    dec %ecx
    jnz 1b
2:  popa
    ret

    STACK
