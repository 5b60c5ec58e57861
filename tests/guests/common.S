/*
 * common.S - what every test guest shares, whichever mode it runs in: the port numbers of COM1 and the
 * i8042, and the page of stack each guest keeps in .bss. #included by lib32.S and lib64.S.
 */
#define COM1_DATA 0x3f8
#define I8042_COMMAND 0x64
#define I8042_RESET 0xfe

/* STACK: one page of stack in .bss; `stack_top` is the address to load into the stack pointer. */
.macro STACK
    .bss
    .p2align 12
stack:
    .skip 4096
stack_top:
.endm
