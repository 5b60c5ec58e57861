/*
 * echo.S - reads COM1: prints "hull-tiny: echo ready", then for every byte the host writes to the serial
 * console (hull's standard input) writes it back upper-cased, until it reads '.', then resets. Proves the
 * host's input reaches the guest's UART, byte by byte, and that the guest's answer comes back.
 */
#include "lib32.S"

#define COM1_LSR (COM1_DATA + 5)   /* line status register: bit 0 = a received byte is ready */

    ENTRY32 stack_top
    PRINT "hull-tiny: echo ready\n"
1:  mov $COM1_LSR, %dx
    in %dx, %al
    test $1, %al
    jnz 2f
    pause
    jmp 1b
2:  mov $COM1_DATA, %dx
    in %dx, %al
    cmp $'.', %al
    je 4f
    cmp $'a', %al
    jb 3f
    cmp $'z', %al
    ja 3f
    sub $('a' - 'A'), %al
3:  call putc
    jmp 1b
4:  PRINT "\nhull-tiny: echo done\n"
    call reset

    STACK
