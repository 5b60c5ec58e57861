/*
 * pvh.S - the PVH boot test guest (pvh.elf).
 *
 * Entered through the Xen PVH boot ABI: 32-bit protected mode, paging off, flat segments, %ebx = physical
 * address of the hvm_start_info structure. Reports what it was given on COM1, marks the boot-timer MMIO
 * address, and resets. Output:
 *   hull-tiny: pvh ok magic=336ec578 cr0=<hex> start_info=<hex>      ("pvh BAD magic=..." if the magic is wrong)
 *   hull-tiny: pvh cmdline=<command line>
 *   hull-tiny: pvh memmap entries=<n> ram_end=0x<hex>                  (end of the highest RAM entry)
 *   hull-tiny: pvh boot timer written
 *   hull-tiny: pvh reset
 */
#include "lib32.S"

#define PVH_MAGIC 0x336ec578
/* hvm_start_info fields (xen/include/public/arch-x86/hvm/start_info.h) */
#define SI_MAGIC 0x00
#define SI_CMDLINE_PADDR 0x18
#define SI_MEMMAP_PADDR 0x28
#define SI_MEMMAP_ENTRIES 0x30
/* hvm_memmap_table_entry: addr (u64), size (u64), type (u32), reserved (u32) */
#define MEMMAP_ENTRY_SIZE 24
#define MEMMAP_TYPE_RAM 1
/* Firecracker's boot timer: writing 123 here makes the VMM log the boot time. */
#define BOOT_TIMER_ADDR 0xc0000000
#define BOOT_TIMER_VALUE 123

    ENTRY32 stack_top
    mov %ebx, %edi                  /* %edi = hvm_start_info for the rest of the program */

    /* Line 1: the magic, proving %ebx pointed at a start-info structure, and CR0 (PE set, PG clear). */
    cmpl $PVH_MAGIC, SI_MAGIC(%edi)
    je 1f
    PRINT "hull-tiny: pvh BAD magic="
    jmp 2f
1:  PRINT "hull-tiny: pvh ok magic="
2:  mov SI_MAGIC(%edi), %eax
    call putx32
    PRINT " cr0="
    mov %cr0, %eax
    call putx32
    PRINT " start_info="
    mov %edi, %eax
    call putx32
    call newline

    /* Line 2: the command line (physical address in the start info; 0 means none). */
    PRINT "hull-tiny: pvh cmdline="
    mov SI_CMDLINE_PADDR(%edi), %esi
    test %esi, %esi
    jz 1f
    call puts
1:  call newline

    /* Line 3: the memory map: number of entries, and the end of the highest RAM entry (64-bit, in
     * %edx:%eax), which must equal the configured memory size while it stays below the MMIO hole. */
    PRINT "hull-tiny: pvh memmap entries="
    mov SI_MEMMAP_ENTRIES(%edi), %ecx
    mov %ecx, %eax
    call putd32
    mov SI_MEMMAP_PADDR(%edi), %esi
    xor %eax, %eax                  /* highest end so far: %edx:%eax */
    xor %edx, %edx
    test %ecx, %ecx
    jz 3f
1:  cmpl $MEMMAP_TYPE_RAM, 16(%esi)
    jne 2f
    mov 0(%esi), %ebx               /* end = addr + size, in %ebp:%ebx */
    mov 4(%esi), %ebp
    add 8(%esi), %ebx
    adc 12(%esi), %ebp
    cmp %edx, %ebp                  /* keep the larger of end and the highest so far */
    jb 2f
    ja 4f
    cmp %eax, %ebx
    jbe 2f
4:  mov %ebx, %eax
    mov %ebp, %edx
2:  add $MEMMAP_ENTRY_SIZE, %esi
    dec %ecx
    jnz 1b
3:  PRINT " ram_end=0x"
    call putx64
    call newline

    /* The boot timer: one byte to the MMIO address, with paging off it is a physical write. */
    movb $BOOT_TIMER_VALUE, BOOT_TIMER_ADDR
    PRINT "hull-tiny: pvh boot timer written\n"

    PRINT "hull-tiny: pvh reset\n"
    call reset

    STACK

