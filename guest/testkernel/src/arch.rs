//! Thin wrappers over the privileged instructions the kernel uses. Only plain instructions:
//! no XSAVE, int3, fwait, popcnt or cmpxchg16b (this host's KVM emulator lacks them, see
//! /work/shared/HOST-KVM.md).

use core::arch::asm;

#[inline(always)]
pub fn outb(port: u16, v: u8) {
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nostack, preserves_flags)) }
}
#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let v: u8;
    unsafe { asm!("in al, dx", in("dx") port, out("al") v, options(nostack, preserves_flags)) }
    v
}
#[inline(always)]
pub fn outl(port: u16, v: u32) {
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") v, options(nostack, preserves_flags)) }
}
#[inline(always)]
pub fn inl(port: u16) -> u32 {
    let v: u32;
    unsafe { asm!("in eax, dx", in("dx") port, out("eax") v, options(nostack, preserves_flags)) }
    v
}

#[inline(always)]
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack)) }
    ((hi as u64) << 32) | lo as u64
}
#[inline(always)]
pub fn wrmsr(msr: u32, v: u64) {
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nostack))
    }
}

pub struct Cpuid {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}
#[inline(always)]
pub fn cpuid(leaf: u32, sub: u32) -> Cpuid {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    Cpuid { eax: r.eax, ebx: r.ebx, ecx: r.ecx, edx: r.edx }
}

#[inline(always)]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    unsafe { asm!("lfence", "rdtsc", out("eax") lo, out("edx") hi, options(nostack)) }
    ((hi as u64) << 32) | lo as u64
}

#[inline(always)]
pub fn cli() {
    unsafe { asm!("cli", options(nostack)) }
}
#[inline(always)]
pub fn sti() {
    unsafe { asm!("sti", options(nostack)) }
}
/// `sti; hlt`: the STI shadow makes the pair atomic, so an interrupt pending at the STI wakes
/// the HLT instead of being taken before it.
#[inline(always)]
pub fn sti_hlt() {
    unsafe { asm!("sti", "hlt", options(nostack)) }
}
#[inline(always)]
pub fn pause() {
    unsafe { asm!("pause", options(nostack, nomem)) }
}
#[inline(always)]
pub fn irqs_enabled() -> bool {
    let f: u64;
    unsafe { asm!("pushfq", "pop {}", out(reg) f) }
    f & (1 << 9) != 0
}

#[inline(always)]
pub fn mmio_read32(addr: usize) -> u32 {
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}
#[inline(always)]
pub fn mmio_write32(addr: usize, v: u32) {
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

/// Halt forever with interrupts off.
pub fn halt_forever() -> ! {
    loop {
        unsafe { asm!("cli", "hlt", options(nostack)) }
    }
}
