/*
 * snapcount.S - the snapshot test guest (snapcount.elf), booted through PVH.
 *
 * Fills 256 KiB at PATTERN_BASE (16 MiB) with a pattern (each dword = its address xor 0x5a5a5a5a), then
 * counts forever, one line about every TICK_CYCLES TSC cycles:
 *   hull-tiny: snap tick=<n> mem=<m> check=<ok|bad>
 * n is kept in %edi (a register), m in a dword at COUNTER_ADDR (guest memory far from the image); both
 * start at 0 and step together. check reads one pattern dword per tick (a different one each time). A
 * guest restored from a snapshot in another process prints the next tick with n == m, both one past the
 * last line before the snapshot, and check=ok: registers, memory and the console carried over.
 */
#include "lib32.S"

#define TICK_CYCLES 0x30000000
#define MAX_SPINS 0x1000000
#define PATTERN_BASE 0x1000000
#define PATTERN_DWORDS 0x10000
#define COUNTER_ADDR 0x2000000

    ENTRY32 stack_top
    mov $PATTERN_BASE, %ebx
    mov $PATTERN_DWORDS, %ecx
1:  mov %ebx, %eax
    xor $0x5a5a5a5a, %eax
    mov %eax, (%ebx)
    add $4, %ebx
    dec %ecx
    jnz 1b
    movl $0, COUNTER_ADDR
    PRINT "hull-tiny: snap start\n"
    xor %edi, %edi                  /* %edi = tick number */
    xor %esi, %esi                  /* %esi = which pattern dword to check next */
2:  PRINT "hull-tiny: snap tick="
    mov %edi, %eax
    call putd32
    PRINT " mem="
    mov COUNTER_ADDR, %eax
    call putd32
    /* check the pattern dword at PATTERN_BASE + 4 * (%esi mod PATTERN_DWORDS) */
    mov %esi, %ebx
    and $(PATTERN_DWORDS - 1), %ebx
    shl $2, %ebx
    add $PATTERN_BASE, %ebx
    mov %ebx, %eax
    xor $0x5a5a5a5a, %eax
    cmp (%ebx), %eax
    jne 3f
    PRINT " check=ok\n"
    jmp 4f
3:  PRINT " check=bad\n"
4:  add $4099, %esi
    inc %edi
    incl COUNTER_ADDR
    call wait_tick
    jmp 2b

/* wait_tick: spin until the TSC has advanced TICK_CYCLES since the call (or MAX_SPINS iterations passed). */
wait_tick:
    pusha
    rdtsc
    mov %eax, %ebx
    mov %edx, %ebp
    mov $MAX_SPINS, %ecx
1:  rdtsc
    sub %ebx, %eax
    sbb %ebp, %edx
    jnz 2f
    cmp $TICK_CYCLES, %eax
    jae 2f
    dec %ecx
    jnz 1b
2:  popa
    ret

    STACK
