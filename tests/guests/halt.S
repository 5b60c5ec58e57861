/*
 * halt.S - the benchmark guest (halt.elf), booted through PVH, the same image for every VMM compared.
 *
 * Writes 123 to Firecracker's boot-timer MMIO address (hull and Firecracker log the boot time; other VMMs
 * ignore the write), prints one line on COM1 at once, then halts with interrupts off for good, so the VMM
 * stays up with an idle guest whose memory and threads can be measured. The line is what a host-side
 * timer waits for, whichever VMM runs the guest:
 *   hull-tiny: halt booted
 */
#include "lib32.S"

/* Firecracker's boot timer: writing 123 here makes the VMM log the boot time. */
#define BOOT_TIMER_ADDR 0xc0000000
#define BOOT_TIMER_VALUE 123

    ENTRY32 stack_top
    movb $BOOT_TIMER_VALUE, BOOT_TIMER_ADDR
    PRINT "hull-tiny: halt booted\n"
1:  cli
    hlt
    jmp 1b

    STACK
