/*
 * keyboard.S - the SendCtrlAltDel test guest (keyboard.elf), booted through PVH.
 *
 * Prints "hull-tiny: keyboard waiting", then polls the i8042 status port (0x64) for "output buffer full"
 * and reads each byte from the data port (0x60), printing it as "key 0x<hex>". After the set-2 scan codes
 * of Ctrl, Alt and Delete (0x14, 0x11, 0xe0, 0x71) it prints "hull-tiny: ctrl-alt-del" and resets, so
 * hull exits 0. Interrupts stay off: the guest polls, it does not take IRQ 1.
 */
#include "lib32.S"

#define I8042_DATA 0x60
#define I8042_STATUS 0x64
#define STATUS_OUTPUT_FULL 0x01

    ENTRY32 stack_top
    PRINT "hull-tiny: keyboard waiting\n"
    xor %edi, %edi                  /* %edi = the last four bytes received, newest in the low byte */
1:  in $I8042_STATUS, %al
    test $STATUS_OUTPUT_FULL, %al
    jz 1b
    xor %eax, %eax
    in $I8042_DATA, %al
    PRINT "key "
    call putx32
    call newline
    shl $8, %edi
    or %eax, %edi
    cmp $0x1411e071, %edi
    jne 1b
    PRINT "hull-tiny: ctrl-alt-del\n"
    call reset

    STACK
