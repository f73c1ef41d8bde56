//! Local APIC, xAPIC (MMIO at 0xFEE00000) or x2APIC (MSRs 0x800+) mode
//! (Intel SDM vol. 3, chapter 11 "Advanced Programmable Interrupt Controller").

use crate::arch::{cpuid, mmio_read32, mmio_write32, rdmsr, wrmsr};
use core::sync::atomic::{AtomicBool, Ordering};

pub const BASE: usize = 0xfee0_0000;
pub const SPURIOUS: u8 = 0xff;

pub const ID: u32 = 0x20;
pub const VERSION: u32 = 0x30;
pub const TPR: u32 = 0x80;
pub const EOI: u32 = 0xb0;
pub const LDR: u32 = 0xd0;
pub const DFR: u32 = 0xe0;
pub const SVR: u32 = 0xf0;
pub const ISR: u32 = 0x100;
pub const TMR: u32 = 0x180;
pub const IRR: u32 = 0x200;
pub const ESR: u32 = 0x280;
pub const ICR_LO: u32 = 0x300;
pub const ICR_HI: u32 = 0x310;
pub const LVT_TIMER: u32 = 0x320;
pub const LVT_LINT0: u32 = 0x350;
pub const LVT_LINT1: u32 = 0x360;
pub const LVT_ERROR: u32 = 0x370;

const IA32_APIC_BASE: u32 = 0x1b;

/// Per-CPU mode is set by `enable`; all CPUs switch together in the tests.
static X2: [AtomicBool; crate::desc::MAX_CPUS] = [const { AtomicBool::new(false) }; crate::desc::MAX_CPUS];
/// Mode of the BSP, used by code that does not know its CPU index.
static X2_ANY: AtomicBool = AtomicBool::new(false);

fn x2() -> bool {
    X2_ANY.load(Ordering::Relaxed)
}

pub fn has_x2apic() -> bool {
    cpuid(1, 0).ecx & (1 << 21) != 0
}

pub fn read(reg: u32) -> u32 {
    if x2() {
        rdmsr(0x800 + (reg >> 4)) as u32
    } else {
        mmio_read32(BASE + reg as usize)
    }
}

pub fn write(reg: u32, v: u32) {
    if x2() {
        wrmsr(0x800 + (reg >> 4), v as u64)
    } else {
        mmio_write32(BASE + reg as usize, v)
    }
}

/// Software-enable the LAPIC (SVR bit 8) with spurious vector 0xFF, accept all priorities,
/// mask LINT0/LINT1/timer/error, and program logical destination mode (flat model in xAPIC,
/// where LDR = bit `cpu`; x2APIC's LDR is read-only, derived from the ID: SDM 11.12.10.2).
pub fn enable(cpu: usize, x2apic: bool) {
    let mut base = rdmsr(IA32_APIC_BASE);
    base |= 1 << 11;
    if x2apic {
        base |= 1 << 10;
    }
    wrmsr(IA32_APIC_BASE, base);
    X2[cpu].store(x2apic, Ordering::SeqCst);
    if cpu == 0 {
        X2_ANY.store(x2apic, Ordering::SeqCst);
    }
    write(SVR, 0x100 | SPURIOUS as u32);
    write(TPR, 0);
    if !x2apic {
        write(DFR, 0xffff_ffff); // flat model
        write(LDR, (1u32 << cpu) << 24);
    }
    write(LVT_TIMER, 1 << 16);
    write(LVT_ERROR, 1 << 16);
    write(LVT_LINT1, 1 << 16);
    write(ESR, 0);
}

/// LINT0 as ExtINT (unmasked) routes the 8259 PIC's INTR to this CPU (SDM 11.5.1; the
/// virtual-wire mode of MP spec 1.4, 3.6.2.2). Masked otherwise.
pub fn set_lint0_extint(on: bool) {
    write(LVT_LINT0, if on { 7 << 8 } else { 1 << 16 | 7 << 8 });
}

pub fn id() -> u32 {
    if x2() {
        read(ID)
    } else {
        read(ID) >> 24
    }
}

pub fn eoi() {
    write(EOI, 0);
}

pub fn is_x2apic() -> bool {
    x2()
}

/// Set the x2APIC mode flag of CPU `cpu` (after it switched its own IA32_APIC_BASE).
pub fn note_mode(cpu: usize, x2apic: bool) {
    X2[cpu].store(x2apic, Ordering::SeqCst);
}

/// Bit `vector` of the 256-bit ISR/TMR/IRR register at `reg`.
pub fn bit(reg: u32, vector: u8) -> bool {
    read(reg + 0x10 * (vector as u32 / 32)) & (1 << (vector % 32)) != 0
}

/// ICR delivery modes and fields (SDM 11.6.1, figure 11-12).
pub const DM_FIXED: u32 = 0 << 8;
pub const DM_NMI: u32 = 4 << 8;
pub const DM_INIT: u32 = 5 << 8;
pub const DM_STARTUP: u32 = 6 << 8;
pub const DEST_LOGICAL: u32 = 1 << 11;
pub const LEVEL_ASSERT: u32 = 1 << 14;
pub const TRIGGER_LEVEL: u32 = 1 << 15;
pub const SH_SELF: u32 = 1 << 18;
pub const SH_ALL_BUT_SELF: u32 = 3 << 18;

/// Send an IPI: `low` is ICR[31:0], `dest` the APIC ID (or logical mask).
pub fn send_ipi(dest: u32, low: u32) {
    if x2() {
        wrmsr(0x830, ((dest as u64) << 32) | low as u64);
    } else {
        write(ICR_HI, dest << 24);
        write(ICR_LO, low);
        // Delivery status (bit 12) clears once the IPI is accepted.
        for _ in 0..1_000_000 {
            if read(ICR_LO) & (1 << 12) == 0 {
                break;
            }
            crate::arch::pause();
        }
    }
}

pub fn self_ipi(vector: u8) {
    if x2() {
        // x2APIC SELF IPI register (SDM 11.12.11).
        wrmsr(0x83f, vector as u64);
    } else {
        send_ipi(0, SH_SELF | DM_FIXED | vector as u32);
    }
}

/// Self IPI through the ICR (shorthand "self"), in either mode.
pub fn self_ipi_icr(vector: u8) {
    send_ipi(0, SH_SELF | DM_FIXED | vector as u32);
}
