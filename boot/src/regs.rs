//! Initial vCPU state: GDT, identity-mapped page tables, segment and control registers for
//! the 64-bit Linux entry or the 32-bit PVH entry, general registers, FPU, MSRs, and the
//! local APIC LINT0/LINT1 pins (Intel SDM vol. 3, 3.4 segments, 4.5 4-level paging,
//! 10.5.1 LVT).

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;

use crate::layout::*;
use crate::loader::BootEntry;
use crate::{write_obj, BootError, GuestMem, Result};

// Selectors. Linux's 64-bit boot protocol wants __BOOT_CS = 0x10 and __BOOT_DS = 0x18.
pub const CODE32_SEL: u16 = 0x08;
pub const CODE64_SEL: u16 = 0x10;
pub const DATA_SEL: u16 = 0x18;
pub const TSS_SEL: u16 = 0x20;

/// A GDT descriptor from flags (bits 8..15 access byte, 12..15 of the high nibble G/D/L/AVL),
/// base and limit (SDM vol. 3, 3.4.5).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    (((base as u64) & 0xff00_0000) << (56 - 24))
        | (((flags as u64) & 0x0000_f0ff) << 40)
        | (((limit as u64) & 0x000f_0000) << (48 - 16))
        | (((base as u64) & 0x00ff_ffff) << 16)
        | ((limit as u64) & 0x0000_ffff)
}

pub const GDT: [u64; 5] = [
    0,                             // null
    gdt_entry(0xc09b, 0, 0xfffff), // 0x08: 32-bit code, 4 GiB flat (PVH entry)
    gdt_entry(0xa09b, 0, 0xfffff), // 0x10: 64-bit code
    gdt_entry(0xc093, 0, 0xfffff), // 0x18: data, 4 GiB flat
    gdt_entry(0x808b, 0, 0xfffff), // 0x20: TSS (busy 32-bit TSS, as KVM wants one loaded)
];

fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24);
    let limit = (entry & 0xffff) | (((entry >> 48) & 0xf) << 16);
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        // With G=1 the limit is in 4 KiB units; KVM takes it in bytes.
        limit: if g == 1 {
            ((limit as u32) << 12) | 0xfff
        } else {
            limit as u32
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
    }
}

/// Write the GDT and an empty IDT.
pub fn write_gdt(mem: &GuestMem) -> Result<()> {
    for (i, e) in GDT.iter().enumerate() {
        write_obj(mem, *e, GDT_START + 8 * i as u64)?;
    }
    write_obj(mem, 0u64, IDT_START)
}

/// Identity-map the first 1 GiB with 2 MiB pages (PML4 -> PDPTE -> PDE), enough for the
/// 64-bit entry of a kernel loaded below 1 GiB; the kernel builds its own tables at once.
pub fn write_page_tables(mem: &GuestMem) -> Result<()> {
    write_obj(mem, PDPTE_START | 0x03, PML4_START)?;
    write_obj(mem, PDE_START | 0x03, PDPTE_START)?;
    for i in 0..512u64 {
        // Present | writable | page size (2 MiB).
        write_obj(mem, (i << 21) | 0x83, PDE_START + i * 8)?;
    }
    Ok(())
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

fn vcpu_err(cpu: u8, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BootError {
    move |source| BootError::Vcpu { cpu, what, source }
}

/// Segment and control registers of the boot vCPU for `entry`.
pub fn setup_sregs(vcpu: &VcpuFd, entry: BootEntry) -> Result<()> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(vcpu_err(0, "KVM_GET_SREGS"))?;
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 0;
    let data = segment_from_gdt(GDT[3], 3);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(GDT[4], 4);
    match entry {
        BootEntry::Linux64 { .. } => {
            sregs.cs = segment_from_gdt(GDT[2], 2);
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootEntry::Pvh { .. } | BootEntry::Multiboot { .. } => {
            // PVH: 32-bit protected mode, paging off, flat segments (pvh.rst / start_info.h).
            // Multiboot v1 (spec 3.2) wants the same: CS a 32-bit read/execute segment with
            // offset 0 and limit 0xffffffff, DS/ES/FS/GS/SS flat data, CR0.PG clear, PE set.
            // A20 is always enabled under KVM (no A20 gate is emulated).
            sregs.cs = segment_from_gdt(GDT[1], 1);
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    vcpu.set_sregs(&sregs).map_err(vcpu_err(0, "KVM_SET_SREGS"))
}

/// General registers of the boot vCPU.
pub fn setup_regs(vcpu: &VcpuFd, entry: BootEntry) -> Result<()> {
    let mut regs = kvm_regs {
        rflags: 0x2, // bit 1 is reserved and always set
        ..Default::default()
    };
    match entry {
        BootEntry::Linux64 { entry } => {
            regs.rip = entry;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        BootEntry::Pvh { entry } => {
            regs.rip = entry;
            regs.rbx = PVH_INFO_START;
        }
        BootEntry::Multiboot { entry } => {
            // Multiboot spec 3.2: EAX = magic, EBX = information structure, EFLAGS.IF and
            // EFLAGS.VM clear (rflags above). ESP is undefined: the kernel sets its own.
            regs.rip = entry;
            regs.rax = crate::multiboot::BOOTLOADER_MAGIC as u64;
            regs.rbx = MULTIBOOT_INFO_START;
        }
    }
    vcpu.set_regs(&regs).map_err(vcpu_err(0, "KVM_SET_REGS"))
}

/// x87 and SSE state as after FNINIT with MXCSR at its reset value.
pub fn setup_fpu(vcpu: &VcpuFd, cpu: u8) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(vcpu_err(cpu, "KVM_SET_FPU"))
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

/// Boot MSRs: syscall MSRs zeroed, fast strings on, MTRRs enabled with write-back default.
pub fn setup_msrs(vcpu: &VcpuFd, cpu: u8) -> Result<()> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let entries = [
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, 1),
        entry(MSR_MTRR_DEF_TYPE, (1 << 11) | 6),
    ];
    let msrs = Msrs::from_entries(&entries).map_err(|_| BootError::Vcpu {
        cpu,
        what: "building the MSR list",
        source: kvm_ioctls::Error::new(libc_einval()),
    })?;
    let n = vcpu
        .set_msrs(&msrs)
        .map_err(vcpu_err(cpu, "KVM_SET_MSRS"))?;
    if n != entries.len() {
        // Not fatal: a host may refuse one of them (reported, the boot goes on).
        log::warn!(
            "vCPU {cpu}: KVM accepted {n} of {} boot MSRs",
            entries.len()
        );
    }
    Ok(())
}

fn libc_einval() -> i32 {
    22
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Program LINT0 as ExtINT (the 8259 output, virtual-wire mode) and LINT1 as NMI, as
/// firmware does (MP spec 1.4, 3.6.2.2; SDM vol. 3 10.5.1). Needs an in-kernel LAPIC.
pub fn setup_lint(vcpu: &VcpuFd, cpu: u8) -> Result<()> {
    let mut lapic = vcpu.get_lapic().map_err(vcpu_err(cpu, "KVM_GET_LAPIC"))?;
    let mut rw = |off: usize, f: &dyn Fn(u32) -> u32| {
        let mut b = [0u8; 4];
        for (i, x) in b.iter_mut().enumerate() {
            *x = lapic.regs[off + i] as u8;
        }
        let v = f(u32::from_le_bytes(b)).to_le_bytes();
        for (i, x) in v.iter().enumerate() {
            lapic.regs[off + i] = *x as _;
        }
    };
    let set_mode = |mode: u32| move |v: u32| (v & !0x700) | (mode << 8);
    rw(APIC_LVT0, &set_mode(APIC_MODE_EXTINT));
    rw(APIC_LVT1, &set_mode(APIC_MODE_NMI));
    vcpu.set_lapic(&lapic)
        .map_err(vcpu_err(cpu, "KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code64_descriptor_has_long_mode_bit_and_no_db() {
        let s = segment_from_gdt(GDT[2], 2);
        assert_eq!((s.l, s.db, s.present, s.selector), (1, 0, 1, CODE64_SEL));
    }

    #[test]
    fn code32_descriptor_is_flat_4g_32bit() {
        let s = segment_from_gdt(GDT[1], 1);
        assert_eq!((s.l, s.db, s.g, s.limit, s.base), (0, 1, 1, 0xffff_ffff, 0));
        assert_eq!(s.selector, CODE32_SEL);
    }

    #[test]
    fn data_and_tss_selectors_match_linux_boot_protocol() {
        assert_eq!(segment_from_gdt(GDT[3], 3).selector, DATA_SEL);
        assert_eq!(segment_from_gdt(GDT[4], 4).selector, TSS_SEL);
    }

    #[test]
    fn gdt_entry_packs_base_and_limit() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }
}
