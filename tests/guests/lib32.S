/*
 * lib32.S - shared routines for the 32-bit (PVH) test guests: COM1 output, number printing, reset.
 *
 * #included at the top of each 32-bit guest, which must define `_start` (the PVH entry point); the routines go
 * to section .text.lib, which the linker script places after the guest's own code. The guests run in 32-bit
 * protected mode with paging off and a flat data segment, so every address is physical. Calling convention:
 * the argument is in %eax (numbers) or %esi (strings); every routine preserves all registers.
 *
 * COM1 needs no initialisation in a VMM's emulated 16550: a plain `out` to the data port is one byte of output.
 */
#include "common.S"

/* PRINT "text": write a literal string (kept in .rodata) to COM1. */
.macro PRINT text
    .pushsection .rodata
.Lstr\@: .asciz "\text"
    .popsection
    push %esi
    mov $.Lstr\@, %esi
    call puts
    pop %esi
.endm

/* ENTRY32 top: the guest's PVH entry point `_start` in 32-bit code, with interrupts off, string operations
 * counting upwards and the stack pointer at `top`. */
.macro ENTRY32 top
    .code32
    .text
    .globl _start
_start:
    cli
    cld
    mov $\top, %esp
.endm

/* The ELF note that makes the image a PVH kernel: Xen's XEN_ELFNOTE_PHYS32_ENTRY (type 18, owner "Xen"),
 * whose payload is the physical address of the 32-bit entry point, `_start`. */
    .section .note.Xen, "a", @note
    .p2align 2
    .long 4                 /* name size: "Xen\0" */
    .long 4                 /* payload size */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long _start

    .code32
    .section .text.lib, "ax"

/* putc: write the byte in %al to COM1. */
putc:
    push %edx
    mov $COM1_DATA, %dx
    out %al, %dx
    pop %edx
    ret

/* puts: write the NUL-terminated string at %esi. */
puts:
    push %eax
    push %esi
1:  lodsb
    test %al, %al
    jz 2f
    call putc
    jmp 1b
2:  pop %esi
    pop %eax
    ret

/* putnibble: write the low 4 bits of %al as one lowercase hex digit. */
putnibble:
    push %eax
    and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe 1f
    add $('a' - '0' - 10), %al
1:  call putc
    pop %eax
    ret

/* putx32: write %eax in hex, without leading zeros (at least one digit). */
putx32:
    push %eax
    push %ecx
    push %edx
    mov %eax, %edx
    mov $28, %cl            /* shift that brings the current digit to bits 0-3 */
    xor %ch, %ch            /* becomes 1 once a digit has been written */
1:  mov %edx, %eax
    shr %cl, %eax
    and $0xf, %eax
    jnz 2f                  /* non-zero digit: always written */
    test %ch, %ch
    jnz 2f                  /* zero after a written digit: written */
    test %cl, %cl
    jnz 3f                  /* leading zero: skipped, unless it is the last digit */
2:  mov $1, %ch
    call putnibble
3:  sub $4, %cl
    jns 1b
    pop %edx
    pop %ecx
    pop %eax
    ret

/* putx32_full: write %eax as exactly 8 hex digits. */
putx32_full:
    push %ecx
    mov $28, %cl
1:  push %eax
    shr %cl, %eax
    call putnibble
    pop %eax
    sub $4, %cl
    jns 1b
    pop %ecx
    ret

/* putx64: write the 64-bit value %edx:%eax in hex, without leading zeros. */
putx64:
    test %edx, %edx
    jz putx32               /* high half zero: the low half alone */
    push %eax
    mov %edx, %eax
    call putx32
    pop %eax
    jmp putx32_full

/* putd32: write %eax in decimal. */
putd32:
    pusha
    mov $10, %ecx
    xor %ebx, %ebx          /* number of digits pushed */
1:  xor %edx, %edx
    div %ecx                /* %eax = quotient, %edx = next digit (least significant first) */
    push %edx
    inc %ebx
    test %eax, %eax
    jnz 1b
2:  pop %eax
    add $'0', %al
    call putc
    dec %ebx
    jnz 2b
    popa
    ret

/* newline: write "\n". */
newline:
    push %eax
    mov $'\n', %al
    call putc
    pop %eax
    ret

/* reset: ask the i8042 keyboard controller to pulse the CPU reset line; hull ends the VM with exit code 0.
 * Never returns: if the write had no effect, the CPU halts with interrupts off. */
reset:
    mov $I8042_RESET, %al
    out %al, $I8042_COMMAND
1:  cli
    hlt
    jmp 1b
