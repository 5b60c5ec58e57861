/*
 * devcfg.S - the restore-template test guest (devcfg.elf), booted through PVH.
 *
 * Stands in for a template VM in the tests of restore-based fast start: it has no virtio driver, it only
 * looks at the devices' configuration spaces, which is what a clone must see change when it is restored
 * with a fresh vsock CID and given its disk after the restore. About every TICK_CYCLES TSC cycles it scans
 * the first MMIO_WINDOWS virtio-mmio windows from 0xd0000000 and prints one line:
 *   hull-tiny: devcfg tick=<n> [blk=<sectors>]... [cid=<guest cid>]...
 * for each block device its capacity in sectors (low 32 bits) and for each vsock device its guest CID (low
 * 32 bits), in window order. The tick number is in %edi, so a restored guest continues the count.
 */
#include "lib32.S"

#define TICK_CYCLES 0x10000000
#define MAX_SPINS 0x1000000
#define VIRTIO_MMIO_BASE 0xd0000000
#define MMIO_WINDOWS 8
#define VIRTIO_MAGIC 0x74726976
#define DEVICE_ID_BLOCK 2
#define DEVICE_ID_VSOCK 19

    ENTRY32 stack_top
    PRINT "hull-tiny: devcfg start\n"
    xor %edi, %edi                  /* %edi = tick number */
1:  PRINT "hull-tiny: devcfg tick="
    mov %edi, %eax
    call putd32
    mov $VIRTIO_MMIO_BASE, %ebx
    mov $MMIO_WINDOWS, %ecx
2:  cmpl $VIRTIO_MAGIC, (%ebx)      /* MagicValue */
    jne 4f
    mov 8(%ebx), %eax               /* DeviceID */
    cmp $DEVICE_ID_BLOCK, %eax
    jne 3f
    PRINT " blk="
    mov 0x100(%ebx), %eax           /* config: capacity, in sectors */
    call putd32
    jmp 4f
3:  cmp $DEVICE_ID_VSOCK, %eax
    jne 4f
    PRINT " cid="
    mov 0x100(%ebx), %eax           /* config: guest_cid */
    call putd32
4:  add $0x1000, %ebx
    dec %ecx
    jnz 2b
    PRINT "\n"
    inc %edi
    call wait_tick
    jmp 1b

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
