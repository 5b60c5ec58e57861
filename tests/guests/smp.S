/*
 * smp.S - the multi-vCPU test guest (smp.elf), booted through PVH.
 *
 * As on real x86, only the bootstrap processor (BSP) starts at the entry point; the other vCPUs (APs) wait in
 * the in-kernel local APIC for INIT + STARTUP IPIs. The guest:
 *   1. BSP: prints "hull-tiny: cpu <apic id> alive cpuid_apic_id=<id> bsp";
 *   2. BSP: copies a real-mode trampoline to TRAMPOLINE (0x10000, STARTUP vector 0x10) and sends INIT, then
 *      STARTUP twice (as the MP specification says), to all processors but itself, through the xAPIC's ICR;
 *   3. each AP: runs the trampoline in real mode, loads a flat GDT, enters 32-bit protected mode at ap_main,
 *      prints "hull-tiny: cpu <apic id> alive cpuid_apic_id=<id> ap", counts itself in ap_count, halts;
 *   4. BSP: waits until the first AP has counted itself (up to FIRST_AP_TIMEOUT) and then until no further AP
 *      arrives for AP_IDLE_TIMEOUT, prints "hull-tiny: smp <n> cpus alive" and resets.
 * Lines are serialised by a spinlock (xchg), so output from different vCPUs never interleaves. The APIC ID
 * comes from the local APIC's ID register (MMIO, paging is off); cpuid_apic_id is CPUID leaf 1 EBX[31:24], the
 * value the VMM programs per vCPU: the two must agree.
 */
#include "lib32.S"

#define LAPIC_BASE 0xfee00000
#define LAPIC_ID (LAPIC_BASE + 0x20)
#define LAPIC_SVR (LAPIC_BASE + 0xf0)           /* spurious-interrupt vector register: bit 8 enables the APIC */
#define LAPIC_ICR_LOW (LAPIC_BASE + 0x300)      /* writing it sends the IPI */
#define LAPIC_ICR_HIGH (LAPIC_BASE + 0x310)     /* destination, written first */
#define ICR_DELIVERY_PENDING (1 << 12)
/* ICR low: destination shorthand "all excluding self" (bits 18-19 = 11), level assert (bit 14), and the
 * delivery mode INIT (101b) or STARTUP (110b) in bits 8-10; STARTUP's vector is the page number to start at. */
#define ICR_ALL_BUT_SELF (3 << 18)
#define ICR_ASSERT (1 << 14)
#define ICR_INIT (5 << 8)
#define ICR_STARTUP (6 << 8)

#define TRAMPOLINE 0x10000                      /* below 1 MiB and outside every structure the VMM writes */
#define MAX_CPUS 8                              /* AP stacks are indexed by APIC ID modulo this */
#define AP_STACK_SIZE 1024

/* Timeouts, in units of 2^24 TSC cycles (~6 ms at 2.7 GHz); the TSC runs at host speed even when ring 0 is
 * emulated. */
#define FIRST_AP_TIMEOUT 1024                   /* ~6 s for the first AP to report */
#define AP_IDLE_TIMEOUT 128                     /* then ~0.8 s without a new AP ends the wait */

    ENTRY32 bsp_stack_top
    call cpu_alive

    /* 2. Put the trampoline where the STARTUP IPI points. */
    mov $trampoline_start, %esi
    mov $TRAMPOLINE, %edi
    mov $(trampoline_end - trampoline_start), %ecx
    rep movsb

    /* Software-enable the local APIC (spurious vector 0xff), then INIT, STARTUP, STARTUP. */
    movl $0x1ff, LAPIC_SVR
    mov $(ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_INIT), %eax
    call send_ipi
    mov $(ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_STARTUP | (TRAMPOLINE >> 12)), %eax
    call send_ipi
    call send_ipi

    /* 4. Wait for the APs: first for one, then until they stop arriving. */
    mov $FIRST_AP_TIMEOUT, %ebx
    xor %ecx, %ecx                  /* the count we have seen so far */
1:  call tsc_start
2:  mov ap_count, %eax
    cmp %ecx, %eax
    jne 3f                          /* a new AP: restart the clock with the shorter timeout */
    call tsc_elapsed
    cmp %ebx, %eax
    jb 2b
    jmp 4f                          /* timed out: no AP (more) */
3:  mov ap_count, %ecx
    mov $AP_IDLE_TIMEOUT, %ebx
    jmp 1b

4:  call lock_serial
    PRINT "hull-tiny: smp "
    mov ap_count, %eax
    inc %eax                        /* the APs plus the BSP */
    call putd32
    PRINT " cpus alive\n"
    call unlock_serial
    call reset

/* cpu_alive: print this CPU's line, "hull-tiny: cpu <lapic id> alive cpuid_apic_id=<id> bsp|ap". */
cpu_alive:
    pusha
    call lock_serial
    PRINT "hull-tiny: cpu "
    mov LAPIC_ID, %eax
    shr $24, %eax
    call putd32
    PRINT " alive cpuid_apic_id="
    mov $1, %eax
    cpuid
    mov %ebx, %eax
    shr $24, %eax
    call putd32
    mov $0x1b, %ecx                 /* IA32_APIC_BASE: bit 8 says "this is the BSP" */
    rdmsr
    test $0x100, %eax
    jz 1f
    PRINT " bsp\n"
    jmp 2f
1:  PRINT " ap\n"
2:  call unlock_serial
    popa
    ret

/* send_ipi: send the IPI described by %eax (ICR low) and wait until the APIC has delivered it. */
send_ipi:
    movl $0, LAPIC_ICR_HIGH
    mov %eax, LAPIC_ICR_LOW
1:  testl $ICR_DELIVERY_PENDING, LAPIC_ICR_LOW
    jz 2f
    pause
    jmp 1b
2:  ret

/* lock_serial / unlock_serial: the spinlock that serialises lines on COM1 between vCPUs. */
lock_serial:
    push %eax
1:  mov $1, %eax
    xchg %eax, serial_lock          /* xchg with memory is always locked */
    test %eax, %eax
    jz 2f
    pause
    jmp 1b
2:  pop %eax
    ret

unlock_serial:
    movl $0, serial_lock
    ret

/* tsc_start: remember the current TSC in tsc_begin. */
tsc_start:
    pusha
    rdtsc
    mov %eax, tsc_begin
    mov %edx, tsc_begin + 4
    popa
    ret

/* tsc_elapsed: %eax = (TSC - tsc_begin) / 2^24. */
tsc_elapsed:
    push %edx
    rdtsc
    sub tsc_begin, %eax
    sbb tsc_begin + 4, %edx
    shrd $24, %edx, %eax
    pop %edx
    ret

/* ap_main: where each AP arrives from the trampoline, in 32-bit protected mode with flat segments. */
ap_main:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    cld
    mov LAPIC_ID, %eax              /* a stack of its own: ap_stacks[apic id % MAX_CPUS] */
    shr $24, %eax
    and $(MAX_CPUS - 1), %eax
    inc %eax
    imul $AP_STACK_SIZE, %eax
    add $ap_stacks, %eax
    mov %eax, %esp
    call cpu_alive
    lock incl ap_count
1:  cli
    hlt
    jmp 1b

/*
 * The AP trampoline, copied to TRAMPOLINE. The STARTUP IPI starts an AP in real mode at CS = TRAMPOLINE >> 4,
 * IP = 0; it loads the GDT below (addresses inside the copy are TRAMPOLINE + offset), sets CR0.PE and far-jumps
 * to ap_main through the flat 32-bit code segment.
 */
    .code16
trampoline_start:
    cli
    mov %cs, %ax
    mov %ax, %ds
    lgdtl tr_gdt_desc - trampoline_start
    mov %cr0, %eax
    or $1, %eax                     /* CR0.PE */
    mov %eax, %cr0
    ljmpl $0x08, $ap_main
    .p2align 3
tr_gdt:
    .quad 0                         /* null descriptor */
    .quad 0x00cf9a000000ffff        /* 0x08: code, base 0, limit 4 GiB, 32-bit */
    .quad 0x00cf92000000ffff        /* 0x10: data, base 0, limit 4 GiB */
tr_gdt_desc:
    .word tr_gdt_desc - tr_gdt - 1  /* limit */
    .long TRAMPOLINE + (tr_gdt - trampoline_start)
trampoline_end:
    .code32

    .data
    .p2align 2
serial_lock:
    .long 0
ap_count:
    .long 0
tsc_begin:
    .quad 0

    .bss
    .p2align 12
bsp_stack:
    .skip 4096
bsp_stack_top:
ap_stacks:
    .skip AP_STACK_SIZE * MAX_CPUS
