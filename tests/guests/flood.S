/*
 * flood.S - the log- and console-flood test guest (flood.elf): a guest trying to fill the host's disk
 * through hull's logs and its console file.
 *
 *   1. writes FLOOD_WRITES times to an I/O port no device handles (each write is a vCPU exit that hull may
 *      log: "port write with no device", a debug line) and as many times to an unmapped MMIO address
 *      ("MMIO write to an unmapped address");
 *   2. writes CONSOLE_LINES lines of 64 bytes to COM1 (CONSOLE_LINES * 64 bytes of console output);
 *   3. resets.
 * Output on COM1, besides the flood lines ("hull-tiny: flood 46 x 'x', 64 bytes with the newline"):
 *   hull-tiny: flood start
 *   hull-tiny: flood done
 */
#include "lib32.S"

#define UNHANDLED_PORT 0x99
#define UNMAPPED_MMIO 0xd0000000
#define FLOOD_WRITES 100000
#define CONSOLE_LINES 4096

    ENTRY32 stack_top
    PRINT "hull-tiny: flood start\n"

    mov $FLOOD_WRITES, %ecx
    mov $UNHANDLED_PORT, %dx
1:  out %al, %dx
    movl %ecx, UNMAPPED_MMIO
    dec %ecx
    jnz 1b

    mov $CONSOLE_LINES, %ecx
2:  PRINT "hull-tiny: flood xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n"
    dec %ecx
    jnz 2b

    PRINT "hull-tiny: flood done\n"
    call reset

    STACK
