/*
 * bzimage.S - the bzImage test guest (tiny.bzImage): a minimal image in the Linux x86 boot protocol format
 * (Documentation/arch/x86/boot.rst), booted through the 64-bit boot protocol.
 *
 * File layout, as a boot loader sees it:
 *   0x000       boot sector; the setup header starts at 0x1f1 ("HdrS" at 0x202, protocol version 2.15)
 *   0x200       rest of the setup header (setup_sects = 1: the real-mode part is 2 sectors, 0x400 bytes)
 *   0x400       the protected-mode part, loaded at code32_start (1 MiB):
 *     +0x000    32-bit entry (startup_32): not used by the 64-bit protocol; it only says it was entered
 *     +0x200    64-bit entry (startup_64): entered in long mode, %rsi = boot_params
 * The 64-bit code is position-independent (only %rip-relative addressing). It prints
 *   hull-tiny: bzimage ok entry=0x<address of startup_64> hdr_version=0x<hex> type_of_loader=0x<hex>
 *   hull-tiny: bzimage cmdline=<command line>
 *   hull-tiny: bzimage reset
 * hdr_version is read back from boot_params, so it shows whether the VMM copied the image's setup header there.
 */
#include "lib64.S"

#define SETUP_SECTS 1
#define PM_OFFSET ((SETUP_SECTS + 1) * 512)     /* file offset of the protected-mode part */
#define LOAD_ADDR 0x100000                      /* code32_start, pref_address */
#define LOADED_HIGH 0x01                        /* loadflags: the protected-mode part goes at 1 MiB */
#define XLF_KERNEL_64 0x01                      /* xloadflags: has the 64-bit entry at +0x200 */
/* boot_params offsets (Documentation/arch/x86/zero-page.rst) */
#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_HDR_VERSION 0x206
#define BP_TYPE_OF_LOADER 0x210
#define BP_CMD_LINE_PTR 0x228

    .text
    .code16
    .globl bz_start
bz_start:
    /* Boot sector: not bootable from a BIOS; zeros up to the setup header. */
    .org 0x1f1
    .byte SETUP_SECTS               /* 0x1f1 setup_sects */
    .word 0                         /* 0x1f2 root_flags */
    .long bz_syssize                /* 0x1f4 syssize: protected-mode size / 16 (from the linker script) */
    .word 0                         /* 0x1f8 ram_size (obsolete) */
    .word 0xffff                    /* 0x1fa vid_mode: normal */
    .word 0                         /* 0x1fc root_dev */
    .word 0xaa55                    /* 0x1fe boot_flag */
    .byte 0xeb, setup_entry - 1f    /* 0x200 jump: short jump over the header to the real-mode entry */
1:  .ascii "HdrS"                   /* 0x202 header magic */
    .word 0x020f                    /* 0x206 version 2.15 */
    .long 0                         /* 0x208 realmode_swtch */
    .word 0x1000                    /* 0x20c start_sys_seg (obsolete) */
    .word kernel_version - 0x200    /* 0x20e kernel_version: string offset - 0x200 */
    .byte 0                         /* 0x210 type_of_loader: written by the boot loader */
    .byte LOADED_HIGH               /* 0x211 loadflags */
    .word 0                         /* 0x212 setup_move_size */
    .long LOAD_ADDR                 /* 0x214 code32_start */
    .long 0                         /* 0x218 ramdisk_image */
    .long 0                         /* 0x21c ramdisk_size */
    .long 0                         /* 0x220 bootsect_kludge */
    .word 0                         /* 0x224 heap_end_ptr */
    .byte 0                         /* 0x226 ext_loader_ver */
    .byte 0                         /* 0x227 ext_loader_type */
    .long 0                         /* 0x228 cmd_line_ptr: written by the boot loader */
    .long 0x7fffffff                /* 0x22c initrd_addr_max */
    .long 0x200000                  /* 0x230 kernel_alignment */
    .byte 0                         /* 0x234 relocatable_kernel: no, load it at code32_start */
    .byte 0                         /* 0x235 min_alignment */
    .word XLF_KERNEL_64             /* 0x236 xloadflags */
    .long 2047                      /* 0x238 cmdline_size */
    .long 0                         /* 0x23c hardware_subarch: PC */
    .quad 0                         /* 0x240 hardware_subarch_data */
    .long 0                         /* 0x248 payload_offset */
    .long 0                         /* 0x24c payload_length */
    .quad 0                         /* 0x250 setup_data */
    .quad LOAD_ADDR                 /* 0x258 pref_address */
    .long bz_init_size              /* 0x260 init_size: memory the protected-mode part needs from its start */
    .long 0                         /* 0x264 handover_offset: no EFI handover */
    .long 0                         /* 0x268 kernel_info_offset */

    /* Real-mode entry (16-bit boot protocol): not supported, stop. */
setup_entry:
    cli
    hlt
    jmp setup_entry
kernel_version:
    .asciz "hull-tiny bzImage"

    /* The protected-mode part. */
    .org PM_OFFSET
startup_32:
    /* Entered at the wrong (32-bit) entry point. These instructions encode identically in 32- and 64-bit
     * mode, so the message comes out either way; then reset. */
    mov $COM1_DATA, %dx
    .irpc c, hull-tiny:bzimage-entered-at-startup_32-not-startup_64
    mov $'\c', %al
    out %al, %dx
    .endr
    mov $'\n', %al
    out %al, %dx
    mov $I8042_RESET, %al
    out %al, $I8042_COMMAND
1:  hlt
    jmp 1b

    .org PM_OFFSET + 0x200
    .code64
startup_64:
    cli
    cld
    lea stack_top(%rip), %rsp
    mov %rsi, %r12                  /* %r12 = boot_params */

    PRINT "hull-tiny: bzimage ok entry=0x"
    lea startup_64(%rip), %rax      /* where we really run: load address + 0x200 */
    call putx
    PRINT " hdr_version=0x"
    movzwl BP_HDR_VERSION(%r12), %eax
    call putx
    PRINT " type_of_loader=0x"
    movzbl BP_TYPE_OF_LOADER(%r12), %eax
    call putx
    call newline

    PRINT "hull-tiny: bzimage cmdline="
    mov BP_CMD_LINE_PTR(%r12), %esi
    mov BP_EXT_CMD_LINE_PTR(%r12), %eax
    shl $32, %rax
    or %rax, %rsi
    test %rsi, %rsi
    jz 1f
    call puts
1:  call newline

    PRINT "hull-tiny: bzimage reset\n"
    call reset

    STACK
