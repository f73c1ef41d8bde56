/*
 * A tiny Multiboot v1 guest (Multiboot Specification 0.6.96) for irqvm's integration tests.
 * Assembled with `as --32`, linked with `ld -m elf_i386 -Ttext=0x100000`: an ELF32 image
 * loaded by its program headers, or (built with --defsym AOUT=1 and `objcopy -O binary`) a
 * flat image loaded by the header's address fields (flags bit 16, the "a.out kludge").
 *
 * It checks EAX == 0x2BADB002 (spec 3.2), then prints from the information structure
 * (spec 3.3) on COM1: mem_lower, mem_upper, the command line, the mmap length, the module
 * count, module 0's string and contents; then, from QEMU's fw_cfg (selector 0x510, data
 * 0x511), the signature, FW_CFG_NB_CPUS and FW_CFG_RAM_SIZE in MiB. Built with
 * --defsym LONG=1 it then switches to 64-bit long mode itself (its own page tables and GDT,
 * Intel SDM vol. 3, 9.8.5 "Initializing IA-32e Mode"), as many QEMU test kernels do, and
 * prints "long mode ok" from 64-bit code. It ends through isa-debug-exit (port 0xf4) with
 * value 0x21 (irqvm exits with (0x21 << 1) | 1 = 67); a wrong magic or a missing info flag
 * ends with value 1 (exit status 3).
 */
        .code32
        .text
        .globl _start
        .align 4
mb_header:
        .long 0x1BADB002
.ifdef AOUT
        .long 0x00010003                   /* page-align modules, memory info, address fields */
        .long -(0x1BADB002 + 0x00010003)
        .long mb_header                    /* header_addr */
        .long mb_header                    /* load_addr: the text starts with the header */
        .long _edata                       /* load_end_addr */
        .long _end                         /* bss_end_addr */
        .long _start                       /* entry_addr */
.else
        .long 0x00000003                   /* page-align modules, memory info */
        .long -(0x1BADB002 + 0x00000003)
.endif

_start:
        cli
        mov     $stack_top, %esp
        cmp     $0x2BADB002, %eax
        jne     fail_magic
        mov     %ebx, %edi                 /* EDI = multiboot info */
        mov     $s_magic, %esi
        call    puts

        testl   $1, (%edi)                 /* flags bit 0: mem_lower/mem_upper */
        jz      fail_flags
        mov     $s_lower, %esi
        call    puts
        mov     4(%edi), %eax
        call    putdec
        mov     $s_upper, %esi
        call    puts
        mov     8(%edi), %eax
        call    putdec
        call    newline

        testl   $4, (%edi)                 /* flags bit 2: cmdline */
        jz      fail_flags
        mov     $s_cmdline, %esi
        call    puts
        mov     16(%edi), %esi
        call    puts
        call    newline

        testl   $0x40, (%edi)              /* flags bit 6: mmap */
        jz      fail_flags
        mov     $s_mmap, %esi
        call    puts
        mov     44(%edi), %eax
        call    putdec
        call    newline

        testl   $8, (%edi)                 /* flags bit 3: mods */
        jz      fail_flags
        mov     $s_mods, %esi
        call    puts
        mov     20(%edi), %eax
        call    putdec
        call    newline
        cmpl    $0, 20(%edi)
        je      done
        mov     24(%edi), %ebx             /* module 0: mod_start, mod_end, string */
        mov     $s_mod0, %esi
        call    puts
        mov     8(%ebx), %esi
        call    puts
        mov     $s_data, %esi
        call    puts
        mov     (%ebx), %esi
        mov     4(%ebx), %ecx
        mov     $0x3f8, %dx
1:      cmp     %ecx, %esi
        jae     2f
        lodsb
        out     %al, %dx
        jmp     1b
2:      call    newline

done:
        mov     $s_fwcfg, %esi
        call    puts
        xor     %eax, %eax                 /* FW_CFG_SIGNATURE */
        call    fwcfg_select
        mov     $4, %ecx
        mov     $0x3f8, %bx
4:      mov     $0x511, %dx
        inb     %dx, %al
        mov     %bx, %dx
        outb    %al, %dx
        loop    4b
        mov     $s_cpus, %esi
        call    puts
        mov     $5, %eax                   /* FW_CFG_NB_CPUS, u16 LE */
        call    fwcfg_select
        call    fwcfg_read32
        movzwl  %ax, %eax
        call    putdec
        mov     $s_ram, %esi
        call    puts
        mov     $3, %eax                   /* FW_CFG_RAM_SIZE, u64 LE: low half in MiB */
        call    fwcfg_select
        call    fwcfg_read32
        shr     $20, %eax
        call    putdec
        call    newline
.ifdef LONG
        jmp     go_long
.endif
        mov     $0x21, %eax
        jmp     exit
fail_magic:
        mov     $s_badmagic, %esi
        call    puts
        mov     $1, %eax
        jmp     exit
fail_flags:
        mov     $s_badflags, %esi
        call    puts
        mov     $1, %eax
exit:
        mov     $0xf4, %dx                 /* isa-debug-exit */
        out     %eax, %dx
3:      hlt
        jmp     3b

.ifdef LONG
/* Identity-map the first 1 GiB with 2 MiB pages, enable PAE, EFER.LME, paging, and jump to
 * a 64-bit code segment (SDM vol. 3, 9.8.5). */
go_long:
        movl    $pdpt + 3, pml4
        movl    $pd + 3, pdpt
        xor     %ecx, %ecx
1:      mov     %ecx, %eax
        shl     $21, %eax
        or      $0x83, %eax                /* present, writable, 2 MiB page */
        mov     %eax, pd(,%ecx,8)
        movl    $0, pd+4(,%ecx,8)
        inc     %ecx
        cmp     $512, %ecx
        jne     1b
        mov     $pml4, %eax
        mov     %eax, %cr3
        mov     %cr4, %eax
        or      $0x20, %eax                /* CR4.PAE */
        mov     %eax, %cr4
        mov     $0xc0000080, %ecx          /* IA32_EFER */
        rdmsr
        or      $0x100, %eax               /* LME */
        wrmsr
        mov     %cr0, %eax
        or      $0x80000000, %eax          /* CR0.PG */
        mov     %eax, %cr0
        lgdt    gdt_desc
        ljmp    $0x08, $long_entry

        .code64
long_entry:
        lea     s_long(%rip), %rsi
        mov     $0x3f8, %dx
1:      lodsb
        test    %al, %al
        jz      2f
        out     %al, %dx
        jmp     1b
2:      mov     $0x21, %eax
        mov     $0xf4, %dx
        out     %eax, %dx
3:      hlt
        jmp     3b
        .code32

        .align 8
gdt:    .quad   0
        .quad   0x00af9a000000ffff         /* 0x08: 64-bit code */
gdt_desc:
        .word   15
        .long   gdt
.endif

/* fw_cfg: select key AX (16-bit write to the selector port). */
fwcfg_select:
        push    %edx
        mov     $0x510, %dx
        outw    %ax, %dx
        pop     %edx
        ret

/* fw_cfg: read four data bytes, little endian, into EAX. */
fwcfg_read32:
        push    %ecx
        push    %edx
        mov     $0x511, %dx
        mov     $4, %ecx
1:      inb     %dx, %al
        ror     $8, %eax
        loop    1b
        pop     %edx
        pop     %ecx
        ret

/* Print the NUL-terminated string at ESI on COM1. */
puts:
        push    %eax
        push    %edx
        mov     $0x3f8, %dx
1:      lodsb
        test    %al, %al
        jz      2f
        out     %al, %dx
        jmp     1b
2:      pop     %edx
        pop     %eax
        ret

newline:
        push    %eax
        push    %edx
        mov     $0x3f8, %dx
        mov     $'\n', %al
        out     %al, %dx
        pop     %edx
        pop     %eax
        ret

/* Print EAX in decimal on COM1. */
putdec:
        push    %eax
        push    %ebx
        push    %ecx
        push    %edx
        mov     $10, %ebx
        xor     %ecx, %ecx
1:      xor     %edx, %edx
        div     %ebx
        add     $'0', %dl
        push    %edx
        inc     %ecx
        test    %eax, %eax
        jnz     1b
        mov     $0x3f8, %dx
2:      pop     %eax
        out     %al, %dx
        loop    2b
        pop     %edx
        pop     %ecx
        pop     %ebx
        pop     %eax
        ret

        .data
s_magic:    .asciz "multiboot: magic ok\n"
s_lower:    .asciz "mem_lower="
s_upper:    .asciz " mem_upper="
s_cmdline:  .asciz "cmdline="
s_mmap:     .asciz "mmap_length="
s_mods:     .asciz "mods_count="
s_mod0:     .asciz "mod0="
s_data:     .asciz " data="
s_fwcfg:    .asciz "fw_cfg="
s_cpus:     .asciz " cpus="
s_ram:      .asciz " ram_mib="
s_long:     .asciz "long mode ok\n"
s_badmagic: .asciz "multiboot: bad magic in EAX\n"
s_badflags: .asciz "multiboot: info flag missing\n"

        .bss
        .align 16
        .space 4096
stack_top:
.ifdef LONG
        .align 4096
pml4:   .space 4096
pdpt:   .space 4096
pd:     .space 4096
.endif
