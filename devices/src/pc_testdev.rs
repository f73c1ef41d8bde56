//! QEMU-compatible `pc-testdev` interrupt-line control at port 0x2000 (`PC_TESTDEV_LINES_PORT`).
//!
//! A byte write at `0x2000 + n` (n < 24) sets GSI n's level to `!!value`, driving source 0 of
//! that line (QEMU: `hw/misc/pc-testdev.c`, the "testdev-irq" region). QEMU's region has
//! 1-byte access granularity, so a wider write touches consecutive lines, one byte each;
//! this device does the same. Reads return 0.

use std::sync::Arc;

use irqchip::{InterruptLine, LineProvider};

use crate::BusDevice;

/// Number of lines (ports 0x2000..0x2018).
pub const PC_TESTDEV_LINES: u64 = 24;

/// Register on the PIO bus at `PC_TESTDEV_LINES_PORT` with length [`PC_TESTDEV_LINES`].
pub struct PcTestdevLines {
    lines: Vec<Option<Arc<dyn InterruptLine>>>,
}

impl PcTestdevLines {
    /// Takes source 0 of GSIs 0..24. A GSI the provider refuses stays unconnected (writes to
    /// it are dropped) rather than failing the whole device.
    pub fn new(provider: &dyn LineProvider) -> Self {
        let lines = (0..PC_TESTDEV_LINES as u32)
            .map(|gsi| match provider.line(gsi, 0) {
                Ok(l) => Some(l),
                Err(e) => {
                    irqchip::guest_warn!("pc-testdev: GSI {gsi} not connected: {e}");
                    None
                }
            })
            .collect();
        Self { lines }
    }
}

impl BusDevice for PcTestdevLines {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &value) in data.iter().enumerate() {
            let Some(n) = offset.checked_add(i as u64) else {
                return;
            };
            let Some(Some(line)) = usize::try_from(n).ok().and_then(|n| self.lines.get(n)) else {
                continue;
            };
            line.set_level(value != 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdev::fakes::{FakeLines, Provider};
    use proptest::prelude::*;

    fn dev() -> (PcTestdevLines, Arc<FakeLines>) {
        let f = Arc::new(FakeLines::default());
        (PcTestdevLines::new(&Provider(f.clone())), f)
    }

    #[test]
    fn byte_write_sets_gsi_level_on_source_zero() {
        let (mut d, f) = dev();
        d.write(10, &[1]);
        d.write(10, &[0]);
        assert_eq!(
            *f.events.lock().unwrap(),
            vec![(10, 0, true), (10, 0, false)]
        );
    }

    #[test]
    fn nonzero_value_means_asserted() {
        let (mut d, f) = dev();
        d.write(3, &[0x80]);
        assert_eq!(*f.events.lock().unwrap(), vec![(3, 0, true)]);
    }

    #[test]
    fn wide_write_sets_consecutive_lines() {
        let (mut d, f) = dev();
        d.write(22, &[1, 0, 1, 1]);
        assert_eq!(
            *f.events.lock().unwrap(),
            vec![(22, 0, true), (23, 0, false)]
        );
    }

    proptest! {
        #[test]
        fn any_write_is_harmless(off in any::<u64>(), data in proptest::collection::vec(any::<u8>(), 0..9)) {
            let (mut d, _) = dev();
            d.write(off, &data);
            let mut b = vec![0u8; data.len()];
            d.read(off, &mut b);
        }
    }
}
