/*
 * lib64.S - shared routines for the 64-bit test guests (long64.elf, tiny.bzImage): COM1 output, number
 * printing, reset.
 *
 * #included at the top of each 64-bit guest; the routines go to section .text.lib, which the linker scripts
 * place after the guest's own code (the bzImage header must stay at the start of its .text). All data is
 * addressed %rip-relative, so the code runs wherever it is loaded (the bzImage guest is linked at 0 and loaded
 * at 1 MiB). Calling convention: the argument is in %rax (numbers) or %rsi (strings); every routine preserves
 * all registers.
 */
#include "common.S"

/* PRINT "text": write a literal string (kept in .rodata) to COM1. */
.macro PRINT text
    .pushsection .rodata
.Lstr\@: .asciz "\text"
    .popsection
    push %rsi
    lea .Lstr\@(%rip), %rsi
    call puts
    pop %rsi
.endm

    .code64
    .section .text.lib, "ax"

/* putc: write the byte in %al to COM1. */
putc:
    push %rdx
    mov $COM1_DATA, %dx
    out %al, %dx
    pop %rdx
    ret

/* puts: write the NUL-terminated string at %rsi. */
puts:
    push %rax
    push %rsi
1:  lodsb
    test %al, %al
    jz 2f
    call putc
    jmp 1b
2:  pop %rsi
    pop %rax
    ret

/* putnibble: write the low 4 bits of %al as one lowercase hex digit. */
putnibble:
    push %rax
    and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe 1f
    add $('a' - '0' - 10), %al
1:  call putc
    pop %rax
    ret

/* putx: write %rax in hex, without leading zeros (at least one digit). */
putx:
    push %rax
    push %rcx
    push %rdx
    mov %rax, %rdx
    mov $60, %cl            /* shift that brings the current digit to bits 0-3 */
    xor %ch, %ch            /* becomes 1 once a digit has been written */
1:  mov %rdx, %rax
    shr %cl, %rax
    and $0xf, %eax
    jnz 2f
    test %ch, %ch
    jnz 2f
    test %cl, %cl
    jnz 3f                  /* leading zero: skipped, unless it is the last digit */
2:  mov $1, %ch
    call putnibble
3:  sub $4, %cl
    jns 1b
    pop %rdx
    pop %rcx
    pop %rax
    ret

/* putd: write %rax in decimal. */
putd:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    mov $10, %ecx
    xor %ebx, %ebx          /* number of digits pushed */
1:  xor %edx, %edx
    div %rcx                /* %rax = quotient, %rdx = next digit (least significant first) */
    push %rdx
    inc %ebx
    test %rax, %rax
    jnz 1b
2:  pop %rax
    add $'0', %al
    call putc
    dec %ebx
    jnz 2b
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    ret

/* newline: write "\n". */
newline:
    push %rax
    mov $'\n', %al
    call putc
    pop %rax
    ret

/* reset: ask the i8042 keyboard controller to pulse the CPU reset line; hull ends the VM with exit code 0.
 * Never returns. */
reset:
    mov $I8042_RESET, %al
    out %al, $I8042_COMMAND
1:  cli
    hlt
    jmp 1b
