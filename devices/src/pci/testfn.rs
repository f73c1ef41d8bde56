//! The test device's PCI function (`--testdev`, docs/testdev.md "PCI function"): a function
//! with nothing but interrupts, driven from the test device's port-I/O commands.
//!
//! * Ids: vendor [`TESTFN_VENDOR`] 0x1234 (not a PCI-SIG assigned vendor; emulators use it
//!   for private devices), device [`TESTFN_DEVICE`] 0x7464, class 0xFF (device does not fit a
//!   defined class, PCI 3.0 appendix D). No Linux driver binds it.
//! * BAR 0: 32-bit memory, 4 KiB. MSI-X table at offset 0 ([`TESTFN_VECTORS`] = 16 entries),
//!   PBA at 0x800 (PCI 3.0 6.8.2); the rest reads 0 and ignores writes.
//! * MSI-X through [`MsixVectors`]: one GSI route and one irqfd per vector, per-vector
//!   counters for exact accounting.
//! * INTA#: the device's interrupt request (INTX_SET) is mirrored in Status bit 3 (Interrupt
//!   Status, 6.2.3) whatever the Command register's Interrupt Disable bit (bit 10, 6.2.2)
//!   says; the pin is asserted only while the request is set, Interrupt Disable is clear and
//!   MSI-X is disabled (a function with MSI-X enabled must not use INTx#, 6.8.2).
//! * A raise of an MSI-X vector while MSI-X is disabled falls back to INTx, as a function
//!   with neither MSI nor MSI-X enabled signals on its pin: it sets the INTx request (cleared
//!   by INTX_SET 0, the "interrupt handled" acknowledgement).
//!   The VMM writes the GSI into Interrupt Line (0x3C) as firmware would.

use std::sync::Arc;

use irqchip::msix::MsixRaise;
use irqchip::{guest_warn, InterruptLine, MsiRouteSink};

use super::config::{self, COMMAND, INTERRUPT_LINE};
use super::msix::{MsixLayout, MsixSetupError, MsixVectors, VectorStats};
use super::{BarKind, PciConfig, PciDevice, PciIds};

pub const TESTFN_VENDOR: u16 = 0x1234;
pub const TESTFN_DEVICE: u16 = 0x7464;
/// MSI-X vectors (the issue asks for at least 8).
pub const TESTFN_VECTORS: u16 = 16;
pub const TESTFN_BAR_SIZE: u64 = 0x1000;
pub const TESTFN_TABLE_OFFSET: u64 = 0x000;
pub const TESTFN_PBA_OFFSET: u64 = 0x800;

/// Setup errors.
#[derive(Debug, thiserror::Error)]
pub enum TestFnError {
    #[error("test PCI function configuration space: {0}")]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Msix(#[from] MsixSetupError),
}

/// The test PCI function. Shared (`Arc<Mutex<_>>`) by the PCI bus (vCPU threads), the test
/// device's port-I/O commands and its MSI-X burst thread.
pub struct TestPciFunction {
    cfg: PciConfig,
    msix: MsixVectors,
    line: Option<Arc<dyn InterruptLine>>,
    /// The device's INTx request (INTX_SET).
    intx_request: bool,
    /// What the pin is driven to.
    line_level: bool,
}

impl TestPciFunction {
    /// A function with BAR 0 at `bar_addr`, its vectors routed through `routes`, and INTA#
    /// on `line` (`gsi` is written to Interrupt Line).
    pub fn new(
        bar_addr: u64,
        routes: Arc<dyn MsiRouteSink>,
        line: Option<(Arc<dyn InterruptLine>, u8)>,
    ) -> Result<Self, TestFnError> {
        let ids = PciIds {
            vendor: TESTFN_VENDOR,
            device: TESTFN_DEVICE,
            revision: 0,
            class: 0xFF_00_00,
            subsystem_vendor: TESTFN_VENDOR,
            subsystem: TESTFN_DEVICE,
        };
        let mut cfg = PciConfig::new(ids, if line.is_some() { 1 } else { 0 });
        cfg.add_bar(0, BarKind::Mem32, TESTFN_BAR_SIZE, false, bar_addr)?;
        let msix = MsixVectors::new(
            &mut cfg,
            TESTFN_VECTORS,
            MsixLayout {
                bar: 0,
                table_offset: TESTFN_TABLE_OFFSET,
                pba_offset: TESTFN_PBA_OFFSET,
            },
            routes,
            "testdev-pci",
        )?;
        let line = line.map(|(l, gsi)| {
            cfg.store(INTERRUPT_LINE, &[gsi]);
            l
        });
        Ok(Self {
            cfg,
            msix,
            line,
            intx_request: false,
            line_level: false,
        })
    }

    /// Raise MSI-X vector `k` (6.8.2 state machine; counted). With MSI-X disabled the
    /// function falls back to INTx (see the module documentation).
    pub fn raise(&mut self, k: u16) -> MsixRaise {
        let r = self.msix.raise(k);
        if r == MsixRaise::Disabled && !self.msix.enabled() {
            self.set_intx(true);
        }
        r
    }

    /// Counters of vector `k`.
    pub fn stats(&self, k: u16) -> Option<VectorStats> {
        self.msix.stats(k)
    }

    pub fn reset_stats(&mut self) {
        self.msix.reset_stats();
    }

    pub fn num_vectors(&self) -> u16 {
        self.msix.num_vectors()
    }

    /// The GSIs of the MSI-X vectors.
    pub fn msix_gsis(&self) -> Vec<u32> {
        self.msix.gsis()
    }

    /// Set or clear the device's INTx request (Interrupt Status follows it, 6.2.3).
    pub fn set_intx(&mut self, level: bool) {
        self.intx_request = level;
        self.cfg.set_interrupt_status(level);
        self.update_line();
    }

    /// Drive INTA# from the request, Interrupt Disable and MSI-X Enable.
    fn update_line(&mut self) {
        let want = self.intx_request && !self.cfg.interrupt_disabled() && !self.msix.enabled();
        if want != self.line_level {
            if let Some(l) = &self.line {
                l.set_level(want);
            }
            self.line_level = want;
        }
    }

    #[cfg(test)]
    fn msix(&self) -> &MsixVectors {
        &self.msix
    }
}

impl PciDevice for TestPciFunction {
    fn config(&self) -> &PciConfig {
        &self.cfg
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.cfg.write(offset, data);
        let ctrl_written = self
            .msix
            .config_written(&mut self.cfg, offset, data.len())
            .is_some();
        if ctrl_written || PciConfig::overlaps(offset, data.len(), COMMAND, 2) {
            self.update_line();
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if !self.msix.bar_read(bar, offset, data) {
            data.fill(if bar == 0 { 0 } else { 0xFF });
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if self.msix.bar_write(bar, offset, data).is_none() {
            guest_warn!(
                "testdev-pci: {}-byte write at BAR {bar} offset {offset:#x} ignored",
                data.len()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::{CAPABILITIES_POINTER, CAP_ID_MSIX, CMD_INTERRUPT_DISABLE, STATUS};
    use crate::pci::msix::tests::FakeRoutes;
    use std::sync::Mutex;

    #[derive(Default)]
    struct FakeLine(Mutex<Vec<bool>>);
    impl InterruptLine for FakeLine {
        fn set_level(&self, level: bool) {
            self.0.lock().unwrap().push(level);
        }
    }
    impl FakeLine {
        fn level(&self) -> bool {
            self.0.lock().unwrap().last().copied().unwrap_or(false)
        }
    }

    fn rig() -> (TestPciFunction, Arc<FakeLine>) {
        let line = Arc::new(FakeLine::default());
        let f = TestPciFunction::new(
            0xC000_0000,
            Arc::new(FakeRoutes::default()),
            Some((line.clone(), 19)),
        )
        .unwrap();
        (f, line)
    }

    fn msix_cap(f: &TestPciFunction) -> usize {
        let p = f.cfg.read_u32(CAPABILITIES_POINTER) as usize & 0xFF;
        assert_eq!(f.cfg.read_u16(p) as u8, CAP_ID_MSIX);
        p
    }

    fn set_ctrl(f: &mut TestPciFunction, v: u16) {
        let c = msix_cap(f) + 2;
        f.config_write(c, &v.to_le_bytes());
    }

    fn program(f: &mut TestPciFunction, k: u64, data: u32, masked: bool) {
        let b = TESTFN_TABLE_OFFSET + 16 * k;
        f.bar_write(0, b, &0xFEE0_0000u32.to_le_bytes());
        f.bar_write(0, b + 8, &data.to_le_bytes());
        f.bar_write(0, b + 12, &u32::from(masked).to_le_bytes());
    }

    #[test]
    fn ids_interrupt_pin_and_line_identify_the_test_function() {
        let (f, _) = rig();
        assert_eq!(f.cfg.read_u32(0), 0x7464_1234);
        assert_eq!(f.cfg.read_u16(0x3C), 0x0113, "line 19, pin INTA#");
        assert_eq!(f.cfg.bar(0), Some((0xC000_0000, 0x1000, BarKind::Mem32)));
    }

    #[test]
    fn msix_capability_has_16_vectors_table_and_pba_in_bar_0() {
        let (f, _) = rig();
        let c = msix_cap(&f);
        assert_eq!(f.cfg.read_u16(c + 2) & 0x7FF, 15);
        assert_eq!(f.cfg.read_u32(c + 4), 0);
        assert_eq!(f.cfg.read_u32(c + 8), 0x800);
    }

    #[test]
    fn each_vector_fires_its_own_irqfd() {
        let (mut f, _) = rig();
        set_ctrl(&mut f, 0x8000);
        for k in 0..16 {
            program(&mut f, k, 0x40 + k as u32, false);
        }
        for k in 0..16u16 {
            assert!(matches!(f.raise(k), MsixRaise::Fire(m) if m.data == 0x40 + u32::from(k)));
        }
        for k in 0..16u16 {
            assert_eq!(f.msix().eventfd(k).unwrap().read().unwrap(), 1);
        }
    }

    #[test]
    fn masked_vector_pending_bit_reads_back_through_the_bar() {
        let (mut f, _) = rig();
        set_ctrl(&mut f, 0x8000);
        program(&mut f, 9, 0x49, true);
        assert_eq!(f.raise(9), MsixRaise::Pended);
        let mut b = [0u8; 4];
        f.bar_read(0, TESTFN_PBA_OFFSET, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1 << 9);
    }

    #[test]
    fn intx_request_sets_interrupt_status_and_asserts_the_pin() {
        let (mut f, line) = rig();
        f.set_intx(true);
        assert!(line.level());
        assert_ne!(f.cfg.read_u16(STATUS) & 8, 0);
        f.set_intx(false);
        assert!(!line.level());
        assert_eq!(f.cfg.read_u16(STATUS) & 8, 0);
    }

    #[test]
    fn interrupt_disable_gates_the_pin_but_not_interrupt_status() {
        let (mut f, line) = rig();
        f.config_write(COMMAND, &CMD_INTERRUPT_DISABLE.to_le_bytes());
        f.set_intx(true);
        assert!(!line.level());
        assert_ne!(f.cfg.read_u16(STATUS) & 8, 0);
        f.config_write(COMMAND, &0u16.to_le_bytes());
        assert!(
            line.level(),
            "clearing Interrupt Disable asserts the pending request"
        );
        f.config_write(COMMAND, &CMD_INTERRUPT_DISABLE.to_le_bytes());
        assert!(!line.level(), "setting it deasserts the pin");
    }

    #[test]
    fn msix_enable_takes_the_function_off_intx() {
        let (mut f, line) = rig();
        f.set_intx(true);
        set_ctrl(&mut f, 0x8000);
        assert!(!line.level());
        set_ctrl(&mut f, 0);
        assert!(line.level());
    }

    #[test]
    fn raise_with_msix_disabled_falls_back_to_intx() {
        let (mut f, line) = rig();
        program(&mut f, 0, 0x40, false);
        assert_eq!(f.raise(0), MsixRaise::Disabled);
        assert!(line.level());
        assert_ne!(f.cfg.read_u16(STATUS) & 8, 0);
        assert!(
            f.msix().eventfd(0).unwrap().read().is_err(),
            "no MSI-X message"
        );
    }

    #[test]
    fn raise_of_a_vector_beyond_16_is_refused() {
        let (mut f, line) = rig();
        assert_eq!(f.raise(16), MsixRaise::NoSuchVector);
        assert!(!line.level(), "a bad vector does not fall back to INTx");
        let (mut f, _) = rig();
        set_ctrl(&mut f, 0x8000);
        assert_eq!(f.raise(16), MsixRaise::NoSuchVector);
        assert_eq!(f.raise(u16::MAX), MsixRaise::NoSuchVector);
    }

    #[test]
    fn every_bar_and_config_access_is_safe() {
        let (mut f, _) = rig();
        for off in (0..0x1100u64).step_by(3) {
            for len in [1usize, 2, 4, 8] {
                f.bar_write(0, off, &vec![0xFF; len]);
                f.bar_write(1, off, &vec![0xFF; len]);
                let mut r = vec![0u8; len];
                f.bar_read(0, off, &mut r);
                f.bar_read(5, off, &mut r);
            }
        }
        for off in 0..4100 {
            for len in [1usize, 2, 4] {
                f.config_write(off, &vec![0xFF; len]);
            }
        }
        for k in 0..20 {
            f.raise(k);
        }
    }
}
