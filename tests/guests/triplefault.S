/*
 * triplefault.S - the triple-fault test guest (triplefault.elf), booted through PVH.
 *
 * Loads an interrupt descriptor table with limit 0, then executes ud2. The #UD cannot be delivered (vector 6
 * is outside the IDT), which raises #GP, which cannot be delivered either, so #DF, which fails the same way:
 * a triple fault, the CPU shuts down. KVM reports it as KVM_EXIT_SHUTDOWN; hull must log it and exit non-zero.
 * Prints "hull-tiny: triple fault next" before, and "hull-tiny: still running after ud2" (then resets, exit 0)
 * if the CPU somehow survived.
 */
#include "lib32.S"

    ENTRY32 stack_top
    PRINT "hull-tiny: triple fault next\n"
    lidt empty_idt
    ud2
    PRINT "hull-tiny: still running after ud2\n"
    call reset

    .section .rodata
    .p2align 3
empty_idt:
    .word 0                         /* limit 0: no vector is deliverable */
    .long 0                         /* base */

    STACK
