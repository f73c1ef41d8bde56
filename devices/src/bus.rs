//! An address-range bus (one for port I/O, one for MMIO) shared by all vCPUs.
//!
//! Devices register a range; a vCPU exit at `addr` goes to the device whose range contains it,
//! with the offset into that range. Unclaimed reads return all-ones and unclaimed writes are
//! dropped, as on a real ISA/PCI bus with no device responding (master abort).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the start of the range it registered.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device; pick a free address range")]
    Overlap { base: u64, len: u64 },
    #[error("bus range at {base:#x} has zero length")]
    ZeroLength { base: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    base: u64,
    len: u64,
}

/// Address ranges mapped to devices.
#[derive(Default, Clone)]
pub struct Bus {
    devices: BTreeMap<Range, Arc<Mutex<dyn BusDevice>>>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength { base });
        }
        let end = base.saturating_add(len);
        if self
            .devices
            .keys()
            .any(|r| base < r.base.saturating_add(r.len) && r.base < end)
        {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(Range { base, len }, device);
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Arc<Mutex<dyn BusDevice>>)> {
        let (range, dev) = self
            .devices
            .range(
                ..=Range {
                    base: addr,
                    len: u64::MAX,
                },
            )
            .next_back()?;
        let off = addr - range.base;
        (off < range.len).then_some((off, dev))
    }

    /// Dispatch a read. Returns false (and fills all-ones) when no device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((off, dev)) => {
                // A poisoned lock means a device thread panicked; keep serving the others.
                let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
                d.read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatch a write. Returns false when no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((off, dev)) => {
                let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
                d.write(off, data);
                true
            }
            None => false,
        }
    }
}

/// A second bus range for a device already on the bus: accesses are forwarded to `inner` with
/// `shift` added to the offset. Lets one device with a sparse register block give up the gap
/// in between (the i8042 at 0x60 and 0x64 around the PIT's port 0x61).
pub struct OffsetDevice {
    inner: Arc<Mutex<dyn BusDevice>>,
    shift: u64,
}

impl OffsetDevice {
    pub fn new(inner: Arc<Mutex<dyn BusDevice>>, shift: u64) -> Self {
        Self { inner, shift }
    }
}

impl BusDevice for OffsetDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut d = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        d.read(offset.saturating_add(self.shift), data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut d = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        d.write(offset.saturating_add(self.shift), data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(u8);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn read_dispatches_with_offset_into_range() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Reg(0x10))), 0x3f8, 8)
            .unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b[0], 0x12);
    }

    #[test]
    fn unclaimed_read_returns_all_ones() {
        let bus = Bus::new();
        let mut b = [0u8; 4];
        assert!(!bus.read(0x1234, &mut b));
        assert_eq!(b, [0xff; 4]);
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Reg(0))), 0x20, 2).unwrap();
        assert_eq!(
            bus.insert(Arc::new(Mutex::new(Reg(0))), 0x21, 2)
                .unwrap_err(),
            BusError::Overlap { base: 0x21, len: 2 }
        );
        bus.insert(Arc::new(Mutex::new(Reg(0))), 0x22, 2).unwrap();
    }

    #[test]
    fn offset_device_forwards_with_shifted_offset() {
        let mut bus = Bus::new();
        let dev: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(Reg(0x10)));
        bus.insert(dev.clone(), 0x60, 1).unwrap();
        bus.insert(Arc::new(Mutex::new(OffsetDevice::new(dev, 4))), 0x64, 1)
            .unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x64, &mut b));
        assert_eq!(b[0], 0x14, "offset 0 of the second range is offset 4");
        assert!(!bus.read(0x61, &mut b), "the gap is free");
    }

    #[test]
    fn address_past_end_of_range_is_unclaimed() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Reg(0))), 0x20, 2).unwrap();
        let mut b = [0u8; 1];
        assert!(!bus.read(0x22, &mut b));
    }
}
