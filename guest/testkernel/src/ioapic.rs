//! 82093AA I/O APIC at 0xFEC00000 (82093AA datasheet, 3.0 "Register Description"): indirect
//! access through IOREGSEL (0x00) / IOWIN (0x10); version 0x20 parts also have the EOI
//! register at 0x40 (used by Linux's io_apic.c for directed EOI).

use crate::arch::{mmio_read32, mmio_write32};

pub const BASE: usize = 0xfec0_0000;

pub const MASKED: u32 = 1 << 16;
pub const LEVEL: u32 = 1 << 15;
pub const REMOTE_IRR: u32 = 1 << 14;
pub const ACTIVE_LOW: u32 = 1 << 13;
pub const DELIVERY_PENDING: u32 = 1 << 12;
pub const LOGICAL: u32 = 1 << 11;
pub const DM_FIXED: u32 = 0 << 8;
pub const DM_LOWEST: u32 = 1 << 8;
pub const DM_NMI: u32 = 4 << 8;

pub fn read(reg: u32) -> u32 {
    mmio_write32(BASE, reg);
    mmio_read32(BASE + 0x10)
}

pub fn write(reg: u32, v: u32) {
    mmio_write32(BASE, reg);
    mmio_write32(BASE + 0x10, v);
}

pub fn id() -> u32 {
    read(0)
}

pub fn version() -> u32 {
    read(1) & 0xff
}

/// Number of redirection entries (IOAPICVER bits 23:16 = max entry index).
pub fn pins() -> u32 {
    ((read(1) >> 16) & 0xff) + 1
}

/// Program a redirection entry: high dword (destination) first, then low, so the entry is
/// never live with a stale destination.
pub fn set(pin: u32, low: u32, dest: u32) {
    write(0x11 + 2 * pin, dest << 24);
    write(0x10 + 2 * pin, low);
}

pub fn low(pin: u32) -> u32 {
    read(0x10 + 2 * pin)
}

pub fn high(pin: u32) -> u32 {
    read(0x11 + 2 * pin)
}

pub fn mask(pin: u32) {
    write(0x10 + 2 * pin, low(pin) | MASKED);
}

pub fn unmask(pin: u32) {
    write(0x10 + 2 * pin, low(pin) & !MASKED);
}

pub fn mask_all() {
    for p in 0..pins().min(64) {
        set(p, MASKED, 0);
    }
}

/// EOI register (version 0x20): clears remote IRR of every level entry with this vector.
pub fn eoi_reg(vector: u8) {
    mmio_write32(BASE + 0x40, vector as u32);
}
