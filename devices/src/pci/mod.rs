//! PCI: the root bus (bus 0, function 0 of each slot), its two configuration mechanisms and
//! the window that routes BAR accesses to devices.
//!
//! * Configuration mechanism #1 (PCI Local Bus 3.0, 3.2.2.3.2): CONFIG_ADDRESS at 0xCF8 (dword
//!   accesses only; bit 31 enable, bus 23:16, device 15:11, function 10:8, register 7:2) and
//!   CONFIG_DATA at 0xCFC..0xCFF ([`PciConfigIo`], a bus device of 8 ports at 0xCF8). Bits
//!   27:24 carry register bits 11:8 (the AMD extension Linux's `pci_conf1` uses to reach
//!   extended configuration space without ECAM).
//! * ECAM (PCI Express 4.0, 7.2.2): 4 KiB per function at `bus << 20 | device << 15 |
//!   function << 12` from `PCI_ECAM_START` ([`PciEcam`]), announced by the ACPI MCFG table.
//! * BAR decoding ([`PciMmioWindow`]): one bus device over the 32-bit PCI MMIO window; an
//!   access goes to the device whose memory BAR contains it while its Memory Space enable is
//!   set. The map is refreshed after every configuration write, so the guest may move BARs.
//!
//! Nonexistent functions read all-ones (master abort) and ignore writes.

pub mod config;
pub mod msix;
pub mod testfn;

use std::sync::{Arc, Mutex, RwLock};

pub use config::{BarKind, PciConfig, PciIds};

use crate::BusDevice;
use irqchip::guest_warn;

/// Device slots on bus 0.
pub const SLOTS: usize = 32;

/// A PCI function on the root bus.
pub trait PciDevice: Send {
    /// The configuration space (for reads and BAR decoding).
    fn config(&self) -> &PciConfig;
    /// A configuration write of `data` at `offset` (0..4096).
    fn config_write(&mut self, offset: usize, data: &[u8]);
    /// A configuration read; devices with side effects on read may override it.
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }
    /// An access at `offset` into memory BAR `bar`.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
}

/// The host bridge at 00:00.0 (class 06.00.00); no BARs, no interrupt.
pub struct HostBridge {
    cfg: PciConfig,
}

impl HostBridge {
    pub fn new() -> Self {
        Self {
            cfg: PciConfig::new(
                PciIds {
                    vendor: 0x1B36,
                    device: 0x0008,
                    revision: 0,
                    class: 0x06_00_00,
                    subsystem_vendor: 0x1B36,
                    subsystem: 0x0008,
                },
                0,
            ),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &PciConfig {
        &self.cfg
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.cfg.write(offset, data);
    }
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xFF);
    }
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BarMapping {
    base: u64,
    size: u64,
    slot: usize,
    bar: usize,
}

/// PCI root bus errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PciError {
    #[error("PCI slot {slot} is taken or does not exist; bus 0 has slots 1..=31 for devices")]
    SlotTaken { slot: usize },
    #[error("all 31 PCI slots are in use; attach fewer PCI devices")]
    BusFull,
}

type SharedDevice = Arc<Mutex<dyn PciDevice>>;

/// Bus 0 of segment 0.
pub struct PciRoot {
    slots: Vec<Option<SharedDevice>>,
    bars: RwLock<Vec<BarMapping>>,
}

impl PciRoot {
    /// A root bus with the host bridge in slot 0.
    pub fn new() -> Self {
        let mut slots: Vec<Option<SharedDevice>> = (0..SLOTS).map(|_| None).collect();
        slots[0] = Some(Arc::new(Mutex::new(HostBridge::new())));
        Self {
            slots,
            bars: RwLock::new(Vec::new()),
        }
    }

    /// Put `dev` in the lowest free slot; returns the slot (device number).
    pub fn add_device(&mut self, dev: SharedDevice) -> Result<usize, PciError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciError::BusFull)?;
        self.slots[slot] = Some(dev);
        self.refresh_bars(slot);
        Ok(slot)
    }

    /// Put `dev` in slot `slot` (1..=31), which must be free.
    pub fn add_device_at(&mut self, slot: usize, dev: SharedDevice) -> Result<(), PciError> {
        match self.slots.get_mut(slot) {
            Some(s @ None) if slot != 0 => *s = Some(dev),
            _ => return Err(PciError::SlotTaken { slot }),
        }
        self.refresh_bars(slot);
        Ok(())
    }

    fn device(&self, bus: u8, dev: u8, func: u8) -> Option<&SharedDevice> {
        if bus != 0 || func != 0 {
            return None;
        }
        self.slots.get(usize::from(dev))?.as_ref()
    }

    /// Configuration read of function `bus:dev.func` at `offset`.
    pub fn config_read(&self, bus: u8, dev: u8, func: u8, offset: usize, data: &mut [u8]) {
        match self.device(bus, dev, func) {
            Some(d) => d
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_read(offset, data),
            None => data.fill(0xFF),
        }
    }

    /// Configuration write of function `bus:dev.func` at `offset`.
    pub fn config_write(&self, bus: u8, dev: u8, func: u8, offset: usize, data: &[u8]) {
        if let Some(d) = self.device(bus, dev, func) {
            d.lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_write(offset, data);
            self.refresh_bars(usize::from(dev));
        }
    }

    /// Recompute slot `slot`'s decoded memory BARs.
    fn refresh_bars(&self, slot: usize) {
        let Some(Some(d)) = self.slots.get(slot) else {
            return;
        };
        let mut new = Vec::new();
        {
            let d = d.lock().unwrap_or_else(|e| e.into_inner());
            let cfg = d.config();
            if cfg.memory_enabled() {
                for bar in 0..config::NUM_BARS {
                    if let Some((base, size, kind)) = cfg.bar(bar) {
                        if kind != BarKind::Io && base != 0 {
                            new.push(BarMapping {
                                base,
                                size,
                                slot,
                                bar,
                            });
                        }
                    }
                }
            }
        }
        let mut bars = self.bars.write().unwrap_or_else(|e| e.into_inner());
        bars.retain(|m| m.slot != slot);
        bars.extend(new);
    }

    fn find_bar(&self, addr: u64) -> Option<(SharedDevice, usize, u64)> {
        let bars = self.bars.read().unwrap_or_else(|e| e.into_inner());
        let m = bars
            .iter()
            .find(|m| addr >= m.base && addr - m.base < m.size)?;
        let dev = self.slots.get(m.slot)?.clone()?;
        Some((dev, m.bar, addr - m.base))
    }

    /// A memory access at guest physical `addr`: true if a BAR claimed it.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find_bar(addr) {
            Some((d, bar, off)) => {
                d.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .bar_read(bar, off, data);
                true
            }
            None => {
                data.fill(0xFF);
                false
            }
        }
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find_bar(addr) {
            Some((d, bar, off)) => {
                d.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .bar_write(bar, off, data);
                true
            }
            None => false,
        }
    }
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

/// Configuration mechanism #1: 8 ports at 0xCF8.
pub struct PciConfigIo {
    root: Arc<PciRoot>,
    address: u32,
}

impl PciConfigIo {
    pub const BASE: u16 = 0xCF8;
    pub const LEN: u64 = 8;

    pub fn new(root: Arc<PciRoot>) -> Self {
        Self { root, address: 0 }
    }

    /// (bus, device, function, register offset) when CONFIG_ADDRESS is enabled.
    fn target(&self, data_offset: u64) -> Option<(u8, u8, u8, usize)> {
        if self.address & 0x8000_0000 == 0 {
            return None;
        }
        let bus = (self.address >> 16) as u8;
        let dev = ((self.address >> 11) & 0x1F) as u8;
        let func = ((self.address >> 8) & 0x7) as u8;
        let reg = (((self.address >> 16) & 0xF00) | (self.address & 0xFC)) as usize
            + data_offset as usize;
        Some((bus, dev, func, reg))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 => {
                let off = offset - 4;
                if off as usize + data.len() > 4 {
                    data.fill(0xFF);
                    return;
                }
                match self.target(off) {
                    Some((b, d, f, reg)) => self.root.config_read(b, d, f, reg, data),
                    None => data.fill(0xFF),
                }
            }
            // Byte and word accesses to 0xCF8..0xCFB are not CONFIG_ADDRESS (3.2.2.3.2).
            _ => data.fill(0xFF),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                // Bits 30:28 reserved and 1:0 fixed 0.
                self.address = u32::from_le_bytes(b) & 0x8FFF_FFFC;
            }
            4..=7 => {
                let off = offset - 4;
                if off as usize + data.len() > 4 {
                    guest_warn!("PCI: {}-byte CONFIG_DATA write crosses 0xCFF", data.len());
                    return;
                }
                if let Some((b, d, f, reg)) = self.target(off) {
                    self.root.config_write(b, d, f, reg, data);
                }
            }
            _ => {}
        }
    }
}

/// ECAM (MMCONFIG) window.
pub struct PciEcam {
    root: Arc<PciRoot>,
}

impl PciEcam {
    pub fn new(root: Arc<PciRoot>) -> Self {
        Self { root }
    }

    fn decode(offset: u64, len: usize) -> Option<(u8, u8, u8, usize)> {
        let reg = (offset & 0xFFF) as usize;
        if reg + len > config::CONFIG_SPACE_SIZE {
            return None;
        }
        Some((
            (offset >> 20) as u8,
            ((offset >> 15) & 0x1F) as u8,
            ((offset >> 12) & 0x7) as u8,
            reg,
        ))
    }
}

impl BusDevice for PciEcam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match Self::decode(offset, data.len()) {
            Some((b, d, f, reg)) => self.root.config_read(b, d, f, reg, data),
            None => data.fill(0xFF),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((b, d, f, reg)) = Self::decode(offset, data.len()) {
            self.root.config_write(b, d, f, reg, data);
        }
    }
}

/// The 32-bit PCI MMIO window: dispatches to memory BARs.
pub struct PciMmioWindow {
    root: Arc<PciRoot>,
    base: u64,
}

impl PciMmioWindow {
    pub fn new(root: Arc<PciRoot>, base: u64) -> Self {
        Self { root, base }
    }
}

impl BusDevice for PciMmioWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.root.mmio_read(self.base.saturating_add(offset), data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.root.mmio_write(self.base.saturating_add(offset), data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dummy {
        cfg: PciConfig,
        last_write: Option<(usize, u64, Vec<u8>)>,
    }

    impl Dummy {
        fn new() -> Self {
            let mut cfg = PciConfig::new(
                PciIds {
                    vendor: 0x1234,
                    device: 0x5678,
                    revision: 0,
                    class: 0xFF_00_00,
                    subsystem_vendor: 0,
                    subsystem: 0,
                },
                1,
            );
            cfg.add_bar(0, BarKind::Mem32, 0x1000, false, 0xC000_0000)
                .unwrap();
            Self {
                cfg,
                last_write: None,
            }
        }
    }

    impl PciDevice for Dummy {
        fn config(&self) -> &PciConfig {
            &self.cfg
        }
        fn config_write(&mut self, offset: usize, data: &[u8]) {
            self.cfg.write(offset, data);
        }
        fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            data.fill((bar as u8) ^ (offset as u8));
        }
        fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.last_write = Some((bar, offset, data.to_vec()));
        }
    }

    fn cf8(io: &mut PciConfigIo, dev: u32, reg: u32) {
        io.write(0, &(0x8000_0000 | dev << 11 | reg).to_le_bytes());
    }

    fn read_cfc(io: &mut PciConfigIo) -> u32 {
        let mut b = [0u8; 4];
        io.read(4, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn host_bridge_answers_at_00_00_0_through_cf8_cfc() {
        let root = Arc::new(PciRoot::new());
        let mut io = PciConfigIo::new(root);
        cf8(&mut io, 0, 0);
        assert_eq!(read_cfc(&mut io), 0x0008_1B36);
        cf8(&mut io, 0, 8);
        assert_eq!(read_cfc(&mut io) >> 8, 0x06_00_00);
    }

    #[test]
    fn empty_slot_and_other_functions_read_all_ones() {
        let root = Arc::new(PciRoot::new());
        let mut io = PciConfigIo::new(root);
        cf8(&mut io, 5, 0);
        assert_eq!(read_cfc(&mut io), 0xFFFF_FFFF);
        io.write(0, &(0x8000_0100u32).to_le_bytes());
        assert_eq!(read_cfc(&mut io), 0xFFFF_FFFF);
    }

    #[test]
    fn config_address_keeps_only_defined_bits_and_needs_dword_access() {
        let root = Arc::new(PciRoot::new());
        let mut io = PciConfigIo::new(root);
        io.write(0, &0xFFFF_FFFFu32.to_le_bytes());
        let mut b = [0u8; 4];
        io.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x8FFF_FFFC);
        io.write(3, &[0x01]);
        io.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x8FFF_FFFC);
    }

    #[test]
    fn config_address_bits_27_24_reach_extended_config_space() {
        let root = Arc::new(PciRoot::new());
        let mut io = PciConfigIo::new(root);
        // Register 0x100 of 00:00.0: extended space, reads 0 (no extended capabilities).
        io.write(0, &(0x8000_0000u32 | 1 << 24).to_le_bytes());
        assert_eq!(read_cfc(&mut io), 0);
    }

    #[test]
    fn disabled_config_address_reads_all_ones() {
        let root = Arc::new(PciRoot::new());
        let mut io = PciConfigIo::new(root);
        io.write(0, &0u32.to_le_bytes());
        assert_eq!(read_cfc(&mut io), 0xFFFF_FFFF);
    }

    #[test]
    fn byte_access_at_cfe_reads_the_upper_half_of_the_dword() {
        let root = Arc::new(PciRoot::new());
        let mut io = PciConfigIo::new(root);
        cf8(&mut io, 0, 0);
        let mut b = [0u8; 2];
        io.read(6, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x0008);
    }

    #[test]
    fn add_device_at_takes_only_a_free_device_slot() {
        let mut root = PciRoot::new();
        let d = || -> SharedDevice { Arc::new(Mutex::new(Dummy::new())) };
        assert_eq!(
            root.add_device_at(0, d()),
            Err(PciError::SlotTaken { slot: 0 })
        );
        assert_eq!(
            root.add_device_at(32, d()),
            Err(PciError::SlotTaken { slot: 32 })
        );
        root.add_device_at(31, d()).unwrap();
        assert_eq!(
            root.add_device_at(31, d()),
            Err(PciError::SlotTaken { slot: 31 })
        );
        assert_eq!(
            root.add_device(d()),
            Ok(1),
            "the lowest free slot is still 1"
        );
    }

    #[test]
    fn ecam_reaches_the_same_config_space_as_cf8() {
        let mut root = PciRoot::new();
        let slot = root.add_device(Arc::new(Mutex::new(Dummy::new()))).unwrap();
        assert_eq!(slot, 1);
        let mut ecam = PciEcam::new(Arc::new(root));
        let mut b = [0u8; 4];
        ecam.read(1 << 15, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x5678_1234);
        ecam.read(1 << 20, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0xFFFF_FFFF, "bus 1 is empty");
    }

    #[test]
    fn bar_decodes_only_with_memory_space_enabled_and_follows_moves() {
        let mut root = PciRoot::new();
        root.add_device(Arc::new(Mutex::new(Dummy::new()))).unwrap();
        let root = Arc::new(root);
        let mut b = [0u8; 1];
        assert!(!root.mmio_read(0xC000_0010, &mut b));
        root.config_write(0, 1, 0, config::COMMAND, &[0x02, 0]);
        assert!(root.mmio_read(0xC000_0010, &mut b));
        assert_eq!(b[0], 0x10);
        root.config_write(0, 1, 0, config::BAR0, &0xC000_4000u32.to_le_bytes());
        assert!(!root.mmio_read(0xC000_0010, &mut b));
        assert!(root.mmio_write(0xC000_4008, &[7]));
    }

    #[test]
    fn config_writes_of_every_width_at_every_offset_never_panic() {
        let mut root = PciRoot::new();
        root.add_device(Arc::new(Mutex::new(Dummy::new()))).unwrap();
        let root = Arc::new(root);
        let mut ecam = PciEcam::new(root.clone());
        let mut io = PciConfigIo::new(root);
        for off in 0..4100u64 {
            for len in [1usize, 2, 4, 8] {
                let data = vec![0xFFu8; len];
                ecam.write((1 << 15) + off, &data);
                let mut r = vec![0u8; len];
                ecam.read((1 << 15) + off, &mut r);
            }
        }
        for reg in 0..64u32 {
            cf8(&mut io, 1, reg * 4);
            for off in 0..8u64 {
                for len in [1usize, 2, 4] {
                    io.write(off, &vec![0xFF; len]);
                    let mut r = vec![0u8; len];
                    io.read(off, &mut r);
                }
            }
        }
    }
}
