//! A type 0 configuration space header with BARs and a capability list (PCI Local Bus 3.0,
//! chapter 6; PCI Express 4.0, 7.5 for the 4 KiB extended space reached through ECAM).
//!
//! Every byte has a write mask and a write-1-to-clear mask, so writes of any width at any
//! offset are byte-lane merges and can never panic or touch read-only fields:
//!
//! * Command (6.2.2): I/O Space (0), Memory Space (1), Bus Master (2), Parity Error Response
//!   (6), SERR# Enable (8) and Interrupt Disable (10) are writable; the rest read 0.
//! * Status (6.2.3): Interrupt Status (3) is read-only and driven by the device;
//!   Capabilities List (4) is set when a capability exists; the error bits 15:11 and 8 are
//!   write-1-to-clear.
//! * BARs (6.2.5.1): the address bits above the BAR's size are writable, the low bits and the
//!   type bits are read-only, so writing all-ones and reading back yields the size mask.
//!   64-bit BARs take two slots; the upper dword is fully writable above the size.
//! * Interrupt Line (0x3C) is writable scratch; Interrupt Pin (0x3D) is read-only.
//! * Capabilities (6.7): linked from 0x34, each `[id, next, body...]`, dword aligned,
//!   within 0x40..0x100; the body's writable bits are given by the caller.

/// Size of the configuration space reachable through ECAM.
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Size of the conventional configuration space (mechanism #1).
pub const LEGACY_CONFIG_SIZE: usize = 256;

pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const REVISION_ID: usize = 0x08;
pub const CLASS_PROG_IF: usize = 0x09;
pub const HEADER_TYPE: usize = 0x0E;
pub const BAR0: usize = 0x10;
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2C;
pub const SUBSYSTEM_ID: usize = 0x2E;
pub const CAPABILITIES_POINTER: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3C;
pub const INTERRUPT_PIN: usize = 0x3D;

pub const CMD_IO_SPACE: u16 = 1 << 0;
pub const CMD_MEMORY_SPACE: u16 = 1 << 1;
pub const CMD_BUS_MASTER: u16 = 1 << 2;
pub const CMD_PARITY_ERROR_RESPONSE: u16 = 1 << 6;
pub const CMD_SERR_ENABLE: u16 = 1 << 8;
pub const CMD_INTERRUPT_DISABLE: u16 = 1 << 10;
const CMD_WRITABLE: u16 = CMD_IO_SPACE
    | CMD_MEMORY_SPACE
    | CMD_BUS_MASTER
    | CMD_PARITY_ERROR_RESPONSE
    | CMD_SERR_ENABLE
    | CMD_INTERRUPT_DISABLE;

pub const STATUS_INTERRUPT: u16 = 1 << 3;
pub const STATUS_CAP_LIST: u16 = 1 << 4;
/// Master Data Parity Error, Signaled/Received Target Abort, Received Master Abort,
/// Signaled System Error, Detected Parity Error.
const STATUS_W1C: u16 = (1 << 8) | (0x1F << 11);

/// Number of BAR slots in a type 0 header.
pub const NUM_BARS: usize = 6;

/// First byte available for capabilities (after the type 0 header).
const CAP_START: usize = 0x40;

/// Capability ids (PCI Code and ID Assignment Specification).
pub const CAP_ID_MSI: u8 = 0x05;
pub const CAP_ID_VENDOR: u8 = 0x09;
pub const CAP_ID_MSIX: u8 = 0x11;

/// What kind of BAR a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory BAR.
    Mem32,
    /// 64-bit memory BAR (occupies this slot and the next).
    Mem64,
    /// I/O space BAR.
    Io,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bar {
    kind: BarKind,
    size: u64,
    prefetchable: bool,
}

/// Configuration-space construction errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("BAR {index} does not exist or overlaps another BAR; use BARs 0..=5 (a 64-bit BAR takes two)")]
    BadBarIndex { index: usize },
    #[error("BAR size {size:#x} is not a power of two of at least 16 bytes (4 for I/O)")]
    BadBarSize { size: u64 },
    #[error("no room left for a {len}-byte capability in the 256-byte configuration space")]
    CapabilitySpace { len: usize },
}

/// One function's configuration space. See the module documentation.
#[derive(Clone)]
pub struct PciConfig {
    bytes: Vec<u8>,
    wmask: Vec<u8>,
    w1c: Vec<u8>,
    bars: [Option<Bar>; NUM_BARS],
    /// Offset of the last capability (to chain the next one), 0 if none.
    last_cap: usize,
    /// Next free capability offset.
    next_cap: usize,
}

impl std::fmt::Debug for PciConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciConfig")
            .field("vendor", &self.read_u16(VENDOR_ID))
            .field("device", &self.read_u16(DEVICE_ID))
            .field("bars", &self.bars)
            .finish()
    }
}

/// Identity of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIds {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// Class code (base << 16 | sub << 8 | prog-if).
    pub class: u32,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

impl PciConfig {
    /// A type 0 header with these ids; `interrupt_pin` is 0 (none) or 1..=4 (INTA#..INTD#).
    pub fn new(ids: PciIds, interrupt_pin: u8) -> Self {
        let mut c = Self {
            bytes: vec![0; CONFIG_SPACE_SIZE],
            wmask: vec![0; CONFIG_SPACE_SIZE],
            w1c: vec![0; CONFIG_SPACE_SIZE],
            bars: [None; NUM_BARS],
            last_cap: 0,
            next_cap: CAP_START,
        };
        c.set_u16(VENDOR_ID, ids.vendor);
        c.set_u16(DEVICE_ID, ids.device);
        c.bytes[REVISION_ID] = ids.revision;
        c.bytes[CLASS_PROG_IF] = ids.class as u8;
        c.bytes[CLASS_PROG_IF + 1] = (ids.class >> 8) as u8;
        c.bytes[CLASS_PROG_IF + 2] = (ids.class >> 16) as u8;
        c.bytes[HEADER_TYPE] = 0;
        c.set_u16(SUBSYSTEM_VENDOR_ID, ids.subsystem_vendor);
        c.set_u16(SUBSYSTEM_ID, ids.subsystem);
        c.bytes[INTERRUPT_PIN] = interrupt_pin.min(4);
        c.set_masks(COMMAND, 2, u64::from(CMD_WRITABLE), 0);
        c.set_masks(STATUS, 2, 0, u64::from(STATUS_W1C));
        c.wmask[INTERRUPT_LINE] = 0xFF;
        c
    }

    fn set_u16(&mut self, off: usize, v: u16) {
        if let Some(s) = self.bytes.get_mut(off..off + 2) {
            s.copy_from_slice(&v.to_le_bytes());
        }
    }

    fn set_masks(&mut self, off: usize, len: usize, wmask: u64, w1c: u64) {
        for i in 0..len {
            if let (Some(w), Some(c)) = (self.wmask.get_mut(off + i), self.w1c.get_mut(off + i)) {
                *w = (wmask >> (8 * i)) as u8;
                *c = (w1c >> (8 * i)) as u8;
            }
        }
    }

    /// Declare BAR `index` of `size` bytes (a power of two), at initial address `addr`.
    pub fn add_bar(
        &mut self,
        index: usize,
        kind: BarKind,
        size: u64,
        prefetchable: bool,
        addr: u64,
    ) -> Result<(), ConfigError> {
        let slots = if kind == BarKind::Mem64 { 2 } else { 1 };
        if index + slots > NUM_BARS
            || self.bars[index..index + slots].iter().any(Option::is_some)
            || (index > 0 && self.bars[index - 1].is_some_and(|b| b.kind == BarKind::Mem64))
        {
            return Err(ConfigError::BadBarIndex { index });
        }
        let min = if kind == BarKind::Io { 4 } else { 16 };
        if !size.is_power_of_two() || size < min || (kind != BarKind::Mem64 && size > 1 << 31) {
            return Err(ConfigError::BadBarSize { size });
        }
        let off = BAR0 + 4 * index;
        let flags: u32 = match kind {
            BarKind::Io => 1,
            BarKind::Mem32 => u32::from(prefetchable) << 3,
            BarKind::Mem64 => (2 << 1) | (u32::from(prefetchable) << 3),
        };
        let low_flag_bits: u64 = if kind == BarKind::Io { 0x3 } else { 0xF };
        let mask = !(size - 1) & !low_flag_bits;
        let val = (addr & mask) | u64::from(flags);
        self.bytes[off..off + 4].copy_from_slice(&(val as u32).to_le_bytes());
        self.set_masks(off, 4, mask & 0xFFFF_FFFF, 0);
        if kind == BarKind::Mem64 {
            self.bytes[off + 4..off + 8].copy_from_slice(&((addr >> 32) as u32).to_le_bytes());
            self.set_masks(off + 4, 4, mask >> 32, 0);
            self.bars[index + 1] = None;
        }
        self.bars[index] = Some(Bar {
            kind,
            size,
            prefetchable,
        });
        Ok(())
    }

    /// The address BAR `index` currently decodes, with its size and kind.
    pub fn bar(&self, index: usize) -> Option<(u64, u64, BarKind)> {
        let b = (*self.bars.get(index)?)?;
        let off = BAR0 + 4 * index;
        let lo = u64::from(self.read_u32(off));
        let addr = match b.kind {
            BarKind::Io => lo & !0x3,
            BarKind::Mem32 => lo & !0xF,
            BarKind::Mem64 => (lo & !0xF) | (u64::from(self.read_u32(off + 4)) << 32),
        };
        Some((addr, b.size, b.kind))
    }

    /// Append a capability `[id, next, body...]`; `body_wmask` (same length as `body`) gives
    /// the writable bits. Returns the capability's offset.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        body_wmask: &[u8],
    ) -> Result<usize, ConfigError> {
        let len = 2 + body.len();
        let off = self.next_cap;
        if off + len > LEGACY_CONFIG_SIZE {
            return Err(ConfigError::CapabilitySpace { len });
        }
        self.bytes[off] = id;
        self.bytes[off + 1] = 0;
        self.bytes[off + 2..off + len].copy_from_slice(body);
        for (i, m) in body_wmask.iter().take(body.len()).enumerate() {
            self.wmask[off + 2 + i] = *m;
        }
        if self.last_cap == 0 {
            self.bytes[CAPABILITIES_POINTER] = off as u8;
        } else {
            self.bytes[self.last_cap + 1] = off as u8;
        }
        self.last_cap = off;
        self.next_cap = (off + len + 3) & !3;
        let st = self.read_u16(STATUS) | STATUS_CAP_LIST;
        self.set_u16(STATUS, st);
        Ok(off)
    }

    /// Read `data.len()` bytes at `offset`; beyond the space reads all-ones.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .and_then(|o| self.bytes.get(o))
                .copied()
                .unwrap_or(0xFF);
        }
    }

    /// Write `data` at `offset` through the write / write-1-to-clear masks.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, v) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i) else {
                return;
            };
            let (Some(b), Some(w), Some(c)) =
                (self.bytes.get_mut(o), self.wmask.get(o), self.w1c.get(o))
            else {
                return;
            };
            *b = (*b & !w) | (v & w);
            *b &= !(v & c);
        }
    }

    /// Device-side store that bypasses the masks (read-only fields a device updates, such as
    /// an MSI-X Message Control mirror).
    pub fn store(&mut self, offset: usize, data: &[u8]) {
        for (i, v) in data.iter().enumerate() {
            if let Some(b) = offset.checked_add(i).and_then(|o| self.bytes.get_mut(o)) {
                *b = *v;
            }
        }
    }

    pub fn read_u16(&self, off: usize) -> u16 {
        let mut b = [0u8; 2];
        self.read(off, &mut b);
        u16::from_le_bytes(b)
    }

    pub fn read_u32(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND)
    }

    pub fn memory_enabled(&self) -> bool {
        self.command() & CMD_MEMORY_SPACE != 0
    }

    pub fn interrupt_disabled(&self) -> bool {
        self.command() & CMD_INTERRUPT_DISABLE != 0
    }

    /// Drive the read-only Interrupt Status bit (6.2.3 bit 3).
    pub fn set_interrupt_status(&mut self, on: bool) {
        let mut st = self.read_u16(STATUS) & !STATUS_INTERRUPT;
        if on {
            st |= STATUS_INTERRUPT;
        }
        self.set_u16(STATUS, st);
    }

    pub fn interrupt_status(&self) -> bool {
        self.read_u16(STATUS) & STATUS_INTERRUPT != 0
    }

    /// Whether `[offset, offset+len)` overlaps `[start, start+size)`.
    pub fn overlaps(offset: usize, len: usize, start: usize, size: usize) -> bool {
        offset < start.saturating_add(size) && start < offset.saturating_add(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids() -> PciIds {
        PciIds {
            vendor: 0x1AF4,
            device: 0x1042,
            revision: 1,
            class: 0x01_00_00,
            subsystem_vendor: 0x1AF4,
            subsystem: 0x1100,
        }
    }

    fn w32(c: &mut PciConfig, off: usize, v: u32) {
        c.write(off, &v.to_le_bytes());
    }

    #[test]
    fn vendor_device_and_class_read_back_and_are_read_only() {
        let mut c = PciConfig::new(ids(), 1);
        w32(&mut c, 0, 0xFFFF_FFFF);
        assert_eq!(c.read_u32(0), 0x1042_1AF4);
        assert_eq!(c.read_u32(8), 0x0100_0001);
    }

    #[test]
    fn mem32_bar_sizing_returns_the_size_mask_with_type_bits() {
        let mut c = PciConfig::new(ids(), 1);
        c.add_bar(0, BarKind::Mem32, 0x8000, false, 0xC000_0000)
            .unwrap();
        assert_eq!(c.read_u32(BAR0), 0xC000_0000);
        w32(&mut c, BAR0, 0xFFFF_FFFF);
        assert_eq!(c.read_u32(BAR0), 0xFFFF_8000);
        w32(&mut c, BAR0, 0xC001_0000);
        assert_eq!(c.bar(0), Some((0xC001_0000, 0x8000, BarKind::Mem32)));
    }

    #[test]
    fn mem64_bar_sizing_spans_two_dwords() {
        let mut c = PciConfig::new(ids(), 1);
        c.add_bar(2, BarKind::Mem64, 0x4000, true, 0xC000_0000)
            .unwrap();
        assert_eq!(c.read_u32(BAR0 + 8), 0xC000_000C);
        w32(&mut c, BAR0 + 8, 0xFFFF_FFFF);
        w32(&mut c, BAR0 + 12, 0xFFFF_FFFF);
        assert_eq!(c.read_u32(BAR0 + 8), 0xFFFF_C00C);
        assert_eq!(c.read_u32(BAR0 + 12), 0xFFFF_FFFF);
        w32(&mut c, BAR0 + 8, 0x1000_0000);
        w32(&mut c, BAR0 + 12, 0x1);
        assert_eq!(c.bar(2), Some((0x1_1000_0000, 0x4000, BarKind::Mem64)));
    }

    #[test]
    fn unimplemented_bar_reads_zero_even_after_all_ones_write() {
        let mut c = PciConfig::new(ids(), 1);
        w32(&mut c, BAR0 + 4, 0xFFFF_FFFF);
        assert_eq!(c.read_u32(BAR0 + 4), 0);
    }

    #[test]
    fn bar_slots_must_not_overlap() {
        let mut c = PciConfig::new(ids(), 1);
        c.add_bar(0, BarKind::Mem64, 0x1000, false, 0).unwrap();
        assert!(c.add_bar(1, BarKind::Mem32, 0x1000, false, 0).is_err());
        assert!(c.add_bar(5, BarKind::Mem64, 0x1000, false, 0).is_err());
        assert!(c.add_bar(2, BarKind::Mem32, 0x1001, false, 0).is_err());
    }

    #[test]
    fn command_keeps_only_defined_bits_including_interrupt_disable() {
        let mut c = PciConfig::new(ids(), 1);
        c.write(COMMAND, &0xFFFFu16.to_le_bytes());
        assert_eq!(c.command(), 0x0547);
        assert!(c.interrupt_disabled() && c.memory_enabled());
    }

    #[test]
    fn interrupt_status_is_read_only_to_software() {
        let mut c = PciConfig::new(ids(), 1);
        c.write(STATUS, &STATUS_INTERRUPT.to_le_bytes());
        assert!(!c.interrupt_status());
        c.set_interrupt_status(true);
        c.write(STATUS, &0u16.to_le_bytes());
        assert!(c.interrupt_status());
    }

    #[test]
    fn status_error_bits_are_write_one_to_clear() {
        let mut c = PciConfig::new(ids(), 1);
        c.store(STATUS, &(1u16 << 13 | STATUS_CAP_LIST).to_le_bytes());
        c.write(STATUS, &(1u16 << 13).to_le_bytes());
        assert_eq!(c.read_u16(STATUS), STATUS_CAP_LIST);
    }

    #[test]
    fn capabilities_chain_from_0x34_and_set_the_status_bit() {
        let mut c = PciConfig::new(ids(), 1);
        assert_eq!(c.read_u16(STATUS) & STATUS_CAP_LIST, 0);
        let a = c.add_capability(CAP_ID_VENDOR, &[1, 2], &[0, 0]).unwrap();
        let b = c.add_capability(CAP_ID_MSIX, &[0; 10], &[0; 10]).unwrap();
        assert_eq!(c.read_u16(STATUS) & STATUS_CAP_LIST, STATUS_CAP_LIST);
        assert_eq!(c.read_u32(CAPABILITIES_POINTER) & 0xFF, a as u32);
        assert_eq!(a % 4, 0);
        assert_eq!(b % 4, 0);
        let mut h = [0u8; 2];
        c.read(a, &mut h);
        assert_eq!(h, [CAP_ID_VENDOR, b as u8]);
        c.read(b, &mut h);
        assert_eq!(h, [CAP_ID_MSIX, 0]);
    }

    #[test]
    fn capability_body_honours_its_write_mask() {
        let mut c = PciConfig::new(ids(), 1);
        let a = c
            .add_capability(CAP_ID_MSIX, &[0x11, 0x22], &[0x00, 0xC0])
            .unwrap();
        c.write(a + 2, &[0xFF, 0xFF]);
        let mut b = [0u8; 2];
        c.read(a + 2, &mut b);
        assert_eq!(b, [0x11, 0xE2]);
    }

    #[test]
    fn interrupt_line_is_writable_and_pin_is_not() {
        let mut c = PciConfig::new(ids(), 1);
        c.write(INTERRUPT_LINE, &[0x0B, 0x03]);
        let mut b = [0u8; 2];
        c.read(INTERRUPT_LINE, &mut b);
        assert_eq!(b, [0x0B, 0x01]);
    }

    #[test]
    fn reads_past_the_end_are_all_ones() {
        let c = PciConfig::new(ids(), 1);
        let mut b = [0u8; 4];
        c.read(CONFIG_SPACE_SIZE - 2, &mut b);
        assert_eq!(b, [0, 0, 0xFF, 0xFF]);
    }

    proptest! {
        #[test]
        fn any_write_at_any_offset_never_panics_and_ids_stay(
            off in 0usize..5000, data in proptest::collection::vec(any::<u8>(), 0..9)
        ) {
            let mut c = PciConfig::new(ids(), 1);
            c.add_bar(0, BarKind::Mem32, 0x8000, false, 0xC000_0000).unwrap();
            c.write(off, &data);
            let mut r = vec![0u8; data.len()];
            c.read(off, &mut r);
            prop_assert_eq!(c.read_u32(0), 0x1042_1AF4);
            prop_assert_eq!(c.read_u32(BAR0) & 0x7FFF, 0);
        }
    }
}
