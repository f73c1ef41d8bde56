//! PCI configuration access (PCI Local Bus 3.0, 3.2.2.3.2: configuration mechanism #1 at
//! 0xCF8/0xCFC), bus-0 enumeration, capability lists (6.7), memory BARs (6.2.5.1) and the
//! MSI-X capability and table (6.8.2). Shared by the test-device PCI function and the
//! virtio-pci driver. The VMM assigns BARs before boot; this code reads them, it does not
//! allocate.

use crate::arch::{inl, outl};
use core::ptr::{read_volatile, write_volatile};

const CONFIG_ADDRESS: u16 = 0xCF8;
const CONFIG_DATA: u16 = 0xCFC;

pub const COMMAND: u8 = 0x04;
pub const STATUS: u8 = 0x06;
pub const CAP_PTR: u8 = 0x34;
pub const INTERRUPT_LINE: u8 = 0x3C;
pub const INTERRUPT_PIN: u8 = 0x3D;

/// Command register bits (6.2.2).
pub const CMD_IO: u16 = 1 << 0;
pub const CMD_MEMORY: u16 = 1 << 1;
pub const CMD_BUS_MASTER: u16 = 1 << 2;
pub const CMD_INTX_DISABLE: u16 = 1 << 10;
/// Status register: Interrupt Status (6.2.3), Capabilities List.
pub const STATUS_INTX: u16 = 1 << 3;
pub const STATUS_CAP_LIST: u16 = 1 << 4;

pub const CAP_ID_MSI: u8 = 0x05;
pub const CAP_ID_VENDOR: u8 = 0x09;
pub const CAP_ID_MSIX: u8 = 0x11;

/// A function on bus 0.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Func {
    pub dev: u8,
    pub func: u8,
}

impl Func {
    fn address(self, off: u8) -> u32 {
        0x8000_0000 | (self.dev as u32) << 11 | (self.func as u32) << 8 | (off as u32 & 0xFC)
    }

    pub fn read32(self, off: u8) -> u32 {
        outl(CONFIG_ADDRESS, self.address(off));
        inl(CONFIG_DATA)
    }

    pub fn write32(self, off: u8, v: u32) {
        outl(CONFIG_ADDRESS, self.address(off));
        outl(CONFIG_DATA, v);
    }

    pub fn read16(self, off: u8) -> u16 {
        (self.read32(off) >> ((off & 2) * 8)) as u16
    }

    pub fn read8(self, off: u8) -> u8 {
        (self.read32(off) >> ((off & 3) * 8)) as u8
    }

    /// Read-modify-write of the 16-bit half of a dword. Config mechanism #1 with dword
    /// accesses only; writing the neighbouring half back unchanged is harmless for every
    /// register this kernel touches except Status (RW1C), which `set_command` avoids.
    pub fn write16(self, off: u8, v: u16) {
        let shift = (off & 2) * 8;
        let old = self.read32(off);
        let mask = 0xFFFFu32 << shift;
        self.write32(off, (old & !mask) | (v as u32) << shift);
    }

    pub fn vendor(self) -> u16 {
        self.read16(0x00)
    }

    pub fn device(self) -> u16 {
        self.read16(0x02)
    }

    pub fn command(self) -> u16 {
        self.read16(COMMAND)
    }

    pub fn status(self) -> u16 {
        self.read16(STATUS)
    }

    /// Write the Command register with the Status half zero (so no RW1C status bit is
    /// cleared by accident).
    pub fn set_command(self, v: u16) {
        self.write32(COMMAND, v as u32);
    }

    pub fn interrupt_pin(self) -> u8 {
        self.read8(INTERRUPT_PIN)
    }

    pub fn interrupt_line(self) -> u8 {
        self.read8(INTERRUPT_LINE)
    }

    /// Base address of memory BAR `i` (32- or 64-bit), or None for an unimplemented or I/O
    /// BAR.
    pub fn bar_mem(self, i: u8) -> Option<u64> {
        if i > 5 {
            return None;
        }
        let off = 0x10 + 4 * i;
        let lo = self.read32(off);
        if lo & 1 != 0 {
            return None;
        }
        let base = (lo & !0xF) as u64;
        let hi = if (lo >> 1) & 3 == 2 && i < 5 { self.read32(off + 4) as u64 } else { 0 };
        let addr = hi << 32 | base;
        if addr == 0 {
            None
        } else {
            Some(addr)
        }
    }

    /// Offset of the first capability with `id`, walking the list (6.7); bounded so a
    /// looping list cannot hang the kernel.
    pub fn find_cap(self, id: u8) -> Option<u8> {
        self.caps().find(|&(_, cid)| cid == id).map(|(off, _)| off)
    }

    /// Iterate (offset, id) over the capability list.
    pub fn caps(self) -> Caps {
        let ptr = if self.status() & STATUS_CAP_LIST != 0 { self.read8(CAP_PTR) & 0xFC } else { 0 };
        Caps { f: self, next: ptr, left: 48 }
    }
}

pub struct Caps {
    f: Func,
    next: u8,
    left: u8,
}

impl Iterator for Caps {
    type Item = (u8, u8);
    fn next(&mut self) -> Option<(u8, u8)> {
        if self.next < 0x40 || self.left == 0 {
            return None;
        }
        self.left -= 1;
        let off = self.next;
        let id = self.f.read8(off);
        self.next = self.f.read8(off + 1) & 0xFC;
        Some((off, id))
    }
}

/// The first function on bus 0 with this vendor and device id.
pub fn find(vendor: u16, device: u16) -> Option<Func> {
    find_nth(vendor, device, 0)
}

/// The `n`th (0-based) function on bus 0 with this vendor and device id.
pub fn find_nth(vendor: u16, device: u16, n: usize) -> Option<Func> {
    let mut seen = 0;
    for dev in 0..32u8 {
        for func in 0..8u8 {
            let f = Func { dev, func };
            let v = f.vendor();
            if v == 0xFFFF {
                if func == 0 {
                    break;
                }
                continue;
            }
            if v == vendor && f.device() == device {
                if seen == n {
                    return Some(f);
                }
                seen += 1;
            }
            // Header type bit 7: multi-function device (6.2.1).
            if func == 0 && f.read8(0x0E) & 0x80 == 0 {
                break;
            }
        }
    }
    None
}

/// MSI-X (PCI 3.0 6.8.2): the capability and the table/PBA it points at.
#[derive(Clone, Copy)]
pub struct Msix {
    pub f: Func,
    pub cap: u8,
    /// Table Size field + 1.
    pub nvec: u16,
    pub table: u64,
    pub pba: u64,
}

/// Message Control bits (6.8.2.3).
pub const MSIX_ENABLE: u16 = 1 << 15;
pub const MSIX_FUNCTION_MASK: u16 = 1 << 14;
/// Vector Control bit 0 (6.8.2.9).
pub const MSIX_VECTOR_MASKED: u32 = 1;

impl Msix {
    /// Locate the MSI-X capability of `f` and its table and PBA (BIR + offset). None if the
    /// function has none or its BAR is not assigned.
    pub fn probe(f: Func) -> Option<Msix> {
        let cap = f.find_cap(CAP_ID_MSIX)?;
        let ctrl = f.read16(cap + 2);
        let t = f.read32(cap + 4);
        let p = f.read32(cap + 8);
        let table = f.bar_mem((t & 7) as u8)? + (t & !7) as u64;
        let pba = f.bar_mem((p & 7) as u8)? + (p & !7) as u64;
        Some(Msix { f, cap, nvec: (ctrl & 0x7FF) + 1, table, pba })
    }

    pub fn control(&self) -> u16 {
        self.f.read16(self.cap + 2)
    }

    pub fn set_control(&self, v: u16) {
        self.f.write16(self.cap + 2, v);
    }

    /// Set MSI-X Enable and Function Mask as given (6.8.2.3).
    pub fn set_enable(&self, enable: bool, function_mask: bool) {
        let mut c = self.control() & !(MSIX_ENABLE | MSIX_FUNCTION_MASK);
        if enable {
            c |= MSIX_ENABLE;
        }
        if function_mask {
            c |= MSIX_FUNCTION_MASK;
        }
        self.set_control(c);
    }

    fn entry(&self, k: u16) -> *mut u32 {
        (self.table + k as u64 * 16) as *mut u32
    }

    /// Program entry `k` (6.8.2.6-6.8.2.9): message address, data, and the mask bit.
    pub fn program(&self, k: u16, addr: u64, data: u32, masked: bool) {
        let e = self.entry(k);
        unsafe {
            write_volatile(e.add(3), MSIX_VECTOR_MASKED);
            write_volatile(e, addr as u32);
            write_volatile(e.add(1), (addr >> 32) as u32);
            write_volatile(e.add(2), data);
            write_volatile(e.add(3), if masked { MSIX_VECTOR_MASKED } else { 0 });
        }
    }

    /// Program entry `k` for fixed delivery of `vector` to APIC id `dest` (physical, edge):
    /// the message format of Intel SDM vol. 3, 11.11.1/11.11.2.
    pub fn program_fixed(&self, k: u16, dest: u8, vector: u8, masked: bool) {
        self.program(k, 0xFEE0_0000 | (dest as u64) << 12, vector as u32, masked);
    }

    pub fn set_masked(&self, k: u16, masked: bool) {
        unsafe { write_volatile(self.entry(k).add(3), if masked { MSIX_VECTOR_MASKED } else { 0 }) }
    }

    pub fn masked(&self, k: u16) -> bool {
        unsafe { read_volatile(self.entry(k).add(3)) & MSIX_VECTOR_MASKED != 0 }
    }

    /// Read one dword of entry `k` (0 = address low, 1 = high, 2 = data, 3 = control).
    pub fn read_entry(&self, k: u16, dw: usize) -> u32 {
        unsafe { read_volatile(self.entry(k).add(dw & 3)) }
    }

    /// Raw dword write into the table (hostile-guest tests).
    pub fn write_raw(&self, byte_off: u64, v: u32) {
        unsafe { write_volatile((self.table + (byte_off & !3)) as *mut u32, v) }
    }

    /// Pending bit of vector `k` (6.8.2.10).
    pub fn pending(&self, k: u16) -> bool {
        let d = unsafe { read_volatile((self.pba + (k as u64 / 32) * 4) as *const u32) };
        d >> (k % 32) & 1 != 0
    }
}

/// ECAM (PCI Express enhanced configuration access, PCIe 3.0 7.2.2): the base of segment 0,
/// bus 0 as the ACPI MCFG table describes it (PCI Firmware 3.0, 4.1.2), found from the RSDP
/// (ACPI 6.x 5.2.5) through the XSDT (or RSDT). None without ACPI or without an MCFG.
pub fn ecam_base() -> Option<u64> {
    let rsdp = crate::rsdp()?;
    if rsdp >= 0x1_0000_0000 {
        return None;
    }
    unsafe {
        if read_volatile(rsdp as *const [u8; 8]) != *b"RSD PTR " {
            return None;
        }
        let rev = read_volatile((rsdp + 15) as *const u8);
        let xsdt = if rev >= 2 { read_volatile((rsdp + 24) as *const u64) } else { 0 };
        let (sdt, entry) = if xsdt != 0 {
            (xsdt, 8)
        } else {
            (read_volatile((rsdp + 16) as *const u32) as u64, 4)
        };
        if sdt == 0 || sdt >= 0x1_0000_0000 {
            return None;
        }
        let len = read_volatile((sdt + 4) as *const u32) as u64;
        // Bounded walk: at most 64 tables, whatever the header claims.
        let n = (len.saturating_sub(36) / entry).min(64);
        for i in 0..n {
            let at = sdt + 36 + i * entry;
            let t = if entry == 8 {
                read_volatile(at as *const u64)
            } else {
                read_volatile(at as *const u32) as u64
            };
            if t == 0 || t >= 0x1_0000_0000 {
                continue;
            }
            if read_volatile(t as *const [u8; 4]) == *b"MCFG" {
                // 8 reserved bytes after the header, then 16-byte allocation entries:
                // base (u64), segment (u16), start bus, end bus.
                let tlen = read_volatile((t + 4) as *const u32) as u64;
                if tlen < 44 + 16 {
                    return None;
                }
                let base = read_volatile((t + 44) as *const u64);
                let seg = read_volatile((t + 52) as *const u16);
                let start_bus = read_volatile((t + 54) as *const u8);
                return (seg == 0 && start_bus == 0 && base != 0).then_some(base);
            }
        }
    }
    None
}

impl Func {
    /// Dword `off` of this function's configuration space through ECAM at `base`.
    pub fn ecam_read32(self, base: u64, off: u16) -> u32 {
        let a = base | (self.dev as u64) << 15 | (self.func as u64) << 12 | (off as u64 & 0xFFC);
        unsafe { read_volatile(a as *const u32) }
    }
}
