//! Boot code: the PVH entry note and 32-bit entry, long-mode switch, GDT, boot page tables,
//! the 256 interrupt entry stubs with their common register-saving path, and the real-mode
//! trampoline for application processors.
//!
//! PVH boot ABI (xen/include/public/arch-x86/hvm/start_info.h, "PVH boot"): the loader finds
//! the entry in the ELF note XEN_ELFNOTE_PHYS32_ENTRY (type 18, name "Xen") and starts the
//! vCPU in 32-bit protected mode, paging off, flat CS/DS/ES/SS, with %ebx = physical address
//! of `struct hvm_start_info`. Intel SDM vol. 3, 10.8.5 "Initializing IA-32e Mode" gives the
//! switch to long mode: CR4.PAE, CR3, IA32_EFER.LME, then CR0.PG, then a far jump to a
//! 64-bit code segment.

/// Physical address the AP trampoline is copied to; the STARTUP IPI vector is this >> 12.
/// 0x10000 is free in irqvm's layout (boot/src/layout.rs uses 0x500..0xc000 and 0x20000+)
/// and in QEMU's.
pub const TRAMPOLINE: usize = 0x10000;

core::arch::global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .p2align 2
    .long 4             /* namesz: "Xen\0" */
    .long 4             /* descsz */
    .long 18            /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .p2align 2
    .long pvh_start

    /* CR4: PAE (5), OSFXSR (9), OSXMMEXCPT (10). CR0: PE, MP, NE, PG; EM, CD, NW cleared. */
    .set CR4_BITS, (1 << 5) | (1 << 9) | (1 << 10)
    .set CR0_SET, (1 << 0) | (1 << 1) | (1 << 5) | (1 << 31)
    .set CR0_CLEAR, (1 << 2) | (1 << 29) | (1 << 30)

    .macro ENTER_LONG_MODE target
        lgdt gdt_ptr
        mov %cr4, %eax
        or $CR4_BITS, %eax
        mov %eax, %cr4
        mov $boot_pml4, %eax
        mov %eax, %cr3
        mov $0xc0000080, %ecx       /* IA32_EFER */
        rdmsr
        or $(1 << 8), %eax          /* LME */
        wrmsr
        mov %cr0, %eax
        and $~CR0_CLEAR, %eax
        or $CR0_SET, %eax
        mov %eax, %cr0
        ljmp $0x08, $\target
    .endm

    .section .text.boot, "ax"
    .code32
    .global pvh_start
pvh_start:
    cli
    cld
    mov %ebx, %esi
    /* Zero .bss (page tables, stacks, statics); ELF loaders need not do it. */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb
    mov %esi, boot_info_paddr
    /* Identity map 0..4 GiB with 2 MiB pages: 4 page directories of 512 entries.
       The top GiB (MMIO: IOAPIC, LAPIC) is mapped uncached (PCD|PWT). */
    mov $boot_pd, %edi
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax              /* P | RW | PS */
    cmp $1536, %ecx
    jb 2f
    or $0x18, %eax              /* PWT | PCD */
2:  mov %eax, (%edi,%ecx,8)
    movl $0, 4(%edi,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jb 1b
    mov $boot_pdpt, %edi
    mov $(boot_pd + 3), %eax
    mov %eax, 0(%edi)
    add $0x1000, %eax
    mov %eax, 8(%edi)
    add $0x1000, %eax
    mov %eax, 16(%edi)
    add $0x1000, %eax
    mov %eax, 24(%edi)
    mov $(boot_pdpt + 3), %eax
    mov %eax, boot_pml4
    ENTER_LONG_MODE bsp_long

    /* Application processors arrive here from the trampoline, in 32-bit protected mode. */
    .global ap_entry32
ap_entry32:
    ENTER_LONG_MODE ap_long

    .code64
bsp_long:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov $boot_stack_top, %rsp
    xor %ebp, %ebp
    mov boot_info_paddr(%rip), %edi
    call kmain
3:  cli
    hlt
    jmp 3b

ap_long:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov ap_stack_top(%rip), %rsp
    xor %ebp, %ebp
    call ap_main
4:  cli
    hlt
    jmp 4b

    /* Interrupt entry: one 16-byte stub per vector pushes a dummy error code where the CPU
       pushes none (SDM vol. 3, 7.3 table 7-1: 8, 10-14, 17, 21, 29, 30 have one), then the
       vector, and joins isr_common. */
    .section .text
    .p2align 4
    .global isr_stubs
isr_stubs:
    .set vec, 0
    .rept 256
    .p2align 4
    .if (vec == 8) | ((vec >= 10) & (vec <= 14)) | (vec == 17) | (vec == 21) | (vec == 29) | (vec == 30)
    .else
    pushq $0
    .endif
    pushq $vec
    jmp isr_common
    .set vec, vec + 1
    .endr

    /* Every handler runs on an IST stack (the interrupted code may use the red zone), saves
       all GPRs and calls isr_dispatch(&mut Frame). No SSE state is saved: the kernel is
       built without SSE (src/fmtnum.rs explains why) and build.sh checks the image. The frame is 16-byte aligned: IST stacks are, and the CPU
       pushes 5 words + error + vector + 15 GPRs = 22 words. */
isr_common:
    push %rax
    push %rcx
    push %rdx
    push %rbx
    push %rbp
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    cld
    mov %rsp, %rdi
    call isr_dispatch
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rbp
    pop %rbx
    pop %rdx
    pop %rcx
    pop %rax
    add $16, %rsp
    iretq

    /* AP trampoline, copied to TRAMPOLINE (0x10000) before the STARTUP IPI. The AP starts
       in real mode at CS = 0x1000, IP = 0 (SDM vol. 3, 12.4.4 "MP Initialization Example"). */
    .section .rodata
    .code16
    .global trampoline_start
    .global trampoline_end
trampoline_start:
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl (tramp_gdtr - trampoline_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x18, $(0x10000 + tramp32 - trampoline_start)
    .code32
tramp32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $ap_entry32, %eax
    jmp *%eax
    .p2align 2
tramp_gdtr:
    .word gdt_end - gdt - 1
    .long gdt
trampoline_end:
    .code64

    .section .data
    .p2align 4
    .global gdt
    .global gdt_tss
gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00cf92000000ffff    /* 0x10: flat data */
    .quad 0x00cf9a000000ffff    /* 0x18: 32-bit flat code (trampoline) */
gdt_tss:
    .quad 0, 0                  /* 0x20: TSS of CPU 0 (filled by desc::init) */
    .quad 0, 0                  /* 0x30: TSS of CPU 1 */
    .quad 0, 0                  /* 0x40: TSS of CPU 2 */
    .quad 0, 0                  /* 0x50: TSS of CPU 3 */
gdt_end:
    .p2align 3
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt
    .global ap_stack_top
ap_stack_top:
    .quad 0

    .section .bss.boot, "aw", @nobits
    .p2align 12
    .global boot_pml4
boot_pml4:  .skip 4096
boot_pdpt:  .skip 4096
boot_pd:    .skip 4 * 4096
    .p2align 4
boot_stack: .skip 65536
boot_stack_top:
    .global boot_info_paddr
boot_info_paddr: .skip 8
"#,
    options(att_syntax)
);

extern "C" {
    pub static trampoline_start: u8;
    pub static trampoline_end: u8;
    pub static mut gdt_tss: [u64; 8];
    pub static mut ap_stack_top: u64;
    pub static boot_info_paddr: u64;
    pub static isr_stubs: u8;
}
