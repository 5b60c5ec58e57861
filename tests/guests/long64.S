/*
 * long64.S - the 64-bit boot protocol test guest (long64.elf): an ELF64 without a PVH note, so hull enters it
 * the way it enters a Linux vmlinux: in long mode, with the first GiB identity-mapped, %rsi = the physical
 * address of boot_params (the "zero page"). Output:
 *   hull-tiny: long64 ok efer=<hex> cr0=<hex> cr4=<hex> boot_params=<hex>
 *   hull-tiny: e820 addr=0x<hex> size=0x<hex> type=<n>           (one line per e820 entry)
 *   hull-tiny: long64 e820 entries=<n> ram_end=0x<hex>            (end of the highest RAM entry)
 *   hull-tiny: long64 cmdline=<command line>
 *   hull-tiny: long64 reset
 * EFER.LMA (bit 10) set proves long mode; the rest shows what the VMM put in boot_params.
 */
#include "lib64.S"

#define MSR_EFER 0xc0000080
/* boot_params offsets (Documentation/arch/x86/zero-page.rst) */
#define BP_EXT_CMD_LINE_PTR 0x0c8               /* u32: bits 32-63 of the command line address */
#define BP_E820_ENTRIES 0x1e8                   /* u8 */
#define BP_CMD_LINE_PTR 0x228                   /* u32, in the setup header */
#define BP_E820_TABLE 0x2d0                     /* boot_e820_entry[]: addr (u64), size (u64), type (u32) */
#define E820_ENTRY_SIZE 20
#define E820_RAM 1

    .code64
    .text
    .globl _start
_start:
    cli
    cld
    lea stack_top(%rip), %rsp
    mov %rsi, %r12                  /* %r12 = boot_params for the rest of the program */

    /* Line 1: the CPU mode and the boot_params pointer. */
    PRINT "hull-tiny: long64 ok efer="
    mov $MSR_EFER, %ecx
    rdmsr
    call putx                       /* EFER fits in %eax (rdmsr zero-extends into %rax) */
    PRINT " cr0="
    mov %cr0, %rax
    call putx
    PRINT " cr4="
    mov %cr4, %rax
    call putx
    PRINT " boot_params="
    mov %r12, %rax
    call putx
    call newline

    /* One line per e820 entry, while keeping the highest end of a RAM entry in %r13. */
    movzbl BP_E820_ENTRIES(%r12), %ecx
    lea BP_E820_TABLE(%r12), %rbx
    xor %r13, %r13
    test %ecx, %ecx
    jz 3f
1:  PRINT "hull-tiny: e820 addr=0x"
    mov 0(%rbx), %rax
    call putx
    PRINT " size=0x"
    mov 8(%rbx), %rax
    call putx
    PRINT " type="
    mov 16(%rbx), %eax
    call putd
    call newline
    cmpl $E820_RAM, 16(%rbx)
    jne 2f
    mov 0(%rbx), %rax
    add 8(%rbx), %rax               /* end of this RAM range */
    cmp %r13, %rax
    jbe 2f
    mov %rax, %r13
2:  add $E820_ENTRY_SIZE, %rbx
    dec %ecx
    jnz 1b
3:  PRINT "hull-tiny: long64 e820 entries="
    movzbl BP_E820_ENTRIES(%r12), %eax
    call putd
    PRINT " ram_end=0x"
    mov %r13, %rax
    call putx
    call newline

    /* The command line: a 64-bit physical address split over cmd_line_ptr and ext_cmd_line_ptr. */
    PRINT "hull-tiny: long64 cmdline="
    mov BP_CMD_LINE_PTR(%r12), %esi
    mov BP_EXT_CMD_LINE_PTR(%r12), %eax
    shl $32, %rax
    or %rax, %rsi
    test %rsi, %rsi
    jz 1f
    call puts
1:  call newline

    PRINT "hull-tiny: long64 reset\n"
    call reset

    STACK
