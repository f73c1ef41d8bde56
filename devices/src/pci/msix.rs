//! The MSI-X glue every PCI function with an MSI-X capability needs (PCI Local Bus 3.0,
//! 6.8.2), shared by virtio-pci and the test device's PCI function.
//!
//! [`MsixVectors`] owns:
//! * the MSI-X capability in the function's configuration space (Message Control, Table
//!   Offset/BIR, PBA Offset/BIR; 6.8.2.1-6.8.2.5), with only Function Mask and MSI-X Enable
//!   writable;
//! * the table and PBA state ([`MsixTable`], the state machine in `irqchip::msix`), reached
//!   through one memory BAR at fixed offsets;
//! * per vector one GSI route and one eventfd bound to it as a KVM irqfd, so a fire is one
//!   eventfd write and the interrupt is injected in the kernel. A message a local APIC would
//!   not accept (address outside 0xFEEx_xxxx, reserved delivery mode, vector 0-15; Intel SDM
//!   vol. 3 11.11) is not sent: on a real bus that write is a memory write, not an
//!   interrupt, and KVM would otherwise deliver it anyway. It is logged (rate-limited) and
//!   counted as refused;
//! * per-vector counters (raised, fired, pended, merged, dropped) so a test can account for
//!   every raise.
//!
//! Order rules: routes are allocated before their irqfds (see `MsiRouteSink`), and when a
//! table or control write both changes a vector's message and unmasks it, the route is
//! re-installed *before* the pending message fires, so it reaches its new destination.

use std::sync::Arc;

use irqchip::msix::{MsixEffects, MsixRaise, MsixTable};
use irqchip::{guest_warn, IrqError, MsiMessage, MsiRouteSink};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::config::{self, CAP_ID_MSIX};
use super::PciConfig;

/// Setup errors.
#[derive(Debug, thiserror::Error)]
pub enum MsixSetupError {
    #[error("MSI-X capability: {0}")]
    Config(#[from] config::ConfigError),
    #[error("MSI-X: {0}")]
    Msix(#[from] irqchip::msix::MsixError),
    #[error("MSI-X vector routes: {0}")]
    Irq(#[from] IrqError),
    #[error("creating an MSI-X irqfd eventfd: {0}; raise the open-file limit (ulimit -n)")]
    EventFd(#[source] std::io::Error),
    #[error("MSI-X table/PBA offset {offset:#x} is not 8-byte aligned (PCI 3.0 6.8.2.4)")]
    Unaligned { offset: u64 },
}

/// Per-vector counters (what happened to each raise of the vector).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VectorStats {
    /// Raises by the device.
    pub raised: u64,
    /// Messages sent (irqfd writes): direct fires plus pending vectors fired on unmask.
    pub fired: u64,
    /// Raises that found the vector masked and set its pending bit.
    pub pended: u64,
    /// Raises that found the vector masked and its pending bit already set (they merge
    /// into the one message the unmask will send).
    pub merged: u64,
    /// Raises while MSI-X was disabled (the function does not use MSI-X then).
    pub dropped: u64,
    /// Messages not sent because no local APIC would accept them (see the module docs).
    pub refused: u64,
}

struct Vector {
    gsi: u32,
    evt: EventFd,
    stats: VectorStats,
}

/// Where the capability points: the BAR (BIR) holding table and PBA, and their offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixLayout {
    pub bar: u8,
    pub table_offset: u64,
    pub pba_offset: u64,
}

/// A function's MSI-X capability, table, PBA and irqfd-backed vectors. See the module
/// documentation.
pub struct MsixVectors {
    table: MsixTable,
    cap: usize,
    layout: MsixLayout,
    vectors: Vec<Vector>,
    routes: Arc<dyn MsiRouteSink>,
    name: &'static str,
}

impl MsixVectors {
    /// Add an MSI-X capability with `nvec` vectors to `cfg` (table and PBA in BAR
    /// `layout.bar`), and give each vector a GSI route and an irqfd through `routes`.
    /// `name` prefixes log messages.
    pub fn new(
        cfg: &mut PciConfig,
        nvec: u16,
        layout: MsixLayout,
        routes: Arc<dyn MsiRouteSink>,
        name: &'static str,
    ) -> Result<Self, MsixSetupError> {
        for offset in [layout.table_offset, layout.pba_offset] {
            if offset & 7 != 0 || offset > u64::from(u32::MAX) {
                return Err(MsixSetupError::Unaligned { offset });
            }
        }
        let table = MsixTable::new(nvec)?;
        // 6.8.2.3-6.8.2.5: Message Control, then Table and PBA Offset/BIR (BIR in bits 2:0).
        let bir = u32::from(layout.bar & 7);
        let mut body = table.message_control().to_le_bytes().to_vec();
        body.extend_from_slice(&(layout.table_offset as u32 | bir).to_le_bytes());
        body.extend_from_slice(&(layout.pba_offset as u32 | bir).to_le_bytes());
        let mut wmask = [0u8; 10];
        wmask[1] = 0xC0; // Function Mask, MSI-X Enable.
        let cap = cfg.add_capability(CAP_ID_MSIX, &body, &wmask)?;
        // Routes first, then irqfds (see MsiRouteSink for why).
        let mut vectors = Vec::with_capacity(usize::from(nvec));
        for _ in 0..nvec {
            let gsi = routes.alloc_msi_gsi(MsiMessage::default())?;
            let evt = EventFd::new(EFD_NONBLOCK).map_err(MsixSetupError::EventFd)?;
            routes.register_irqfd(gsi, &evt)?;
            vectors.push(Vector {
                gsi,
                evt,
                stats: VectorStats::default(),
            });
        }
        Ok(Self {
            table,
            cap,
            layout,
            vectors,
            routes,
            name,
        })
    }

    /// Offset of the capability in configuration space.
    pub fn cap_offset(&self) -> usize {
        self.cap
    }

    /// MSI-X Enable (6.8.2.3).
    pub fn enabled(&self) -> bool {
        self.table.enabled()
    }

    /// The table state (read-only view).
    pub fn table(&self) -> &MsixTable {
        &self.table
    }

    pub fn num_vectors(&self) -> u16 {
        self.table.num_vectors()
    }

    /// The GSIs of the vectors, in vector order.
    pub fn gsis(&self) -> Vec<u32> {
        self.vectors.iter().map(|v| v.gsi).collect()
    }

    /// Counters of vector `k` (None for a vector the function does not have).
    pub fn stats(&self, k: u16) -> Option<VectorStats> {
        self.vectors.get(usize::from(k)).map(|v| v.stats)
    }

    /// Zero every vector's counters.
    pub fn reset_stats(&mut self) {
        for v in &mut self.vectors {
            v.stats = VectorStats::default();
        }
    }

    /// The eventfd of vector `k` (tests and benchmarks watch it).
    pub fn eventfd(&self, k: u16) -> Option<&EventFd> {
        self.vectors.get(usize::from(k)).map(|v| &v.evt)
    }

    /// Send vector `k`'s message: one write to its irqfd. Returns whether it was sent.
    fn fire(&mut self, k: u16) -> bool {
        let name = self.name;
        let msg = self.table.message(k);
        let Some(v) = self.vectors.get_mut(usize::from(k)) else {
            return false;
        };
        if let Some(Err(e)) = msg.map(|m| m.validate()) {
            guest_warn!("{name}: MSI-X vector {k} not sent: {e}");
            v.stats.refused += 1;
            return false;
        }
        if let Err(e) = v.evt.write(1) {
            log::warn!("{name}: irqfd write for MSI-X vector {k} failed: {e}");
            return false;
        }
        v.stats.fired += 1;
        true
    }

    /// Carry out what a table or control write asks for: re-route changed vectors, then fire
    /// the vectors that became deliverable. Returns how many messages were sent.
    fn apply(&mut self, fx: MsixEffects) -> usize {
        if !fx.is_empty() {
            log::debug!("{}: MSI-X effects {fx:?}", self.name);
        }
        for k in fx.routes_changed {
            let (Some(v), Some(msg)) = (self.vectors.get(usize::from(k)), self.table.message(k))
            else {
                continue;
            };
            if let Err(e) = self.routes.set_msi_route(v.gsi, msg) {
                guest_warn!(
                    "{}: re-routing MSI-X vector {k} (GSI {}) failed: {e}",
                    self.name,
                    v.gsi
                );
            }
        }
        fx.fire.into_iter().filter(|(k, _)| self.fire(*k)).count()
    }

    /// The device raises vector `k` (6.8.2: fires unless masked; masked raises set the
    /// pending bit; with MSI-X disabled nothing is sent). The outcome is counted.
    pub fn raise(&mut self, k: u16) -> MsixRaise {
        let was_pending = self.table.is_pending(k);
        let r = self.table.raise(k);
        if let Some(v) = self.vectors.get_mut(usize::from(k)) {
            v.stats.raised += 1;
            match r {
                MsixRaise::Pended if was_pending => v.stats.merged += 1,
                MsixRaise::Pended => v.stats.pended += 1,
                MsixRaise::Disabled => v.stats.dropped += 1,
                MsixRaise::Fire(_) | MsixRaise::NoSuchVector => {}
            }
        }
        if matches!(r, MsixRaise::Fire(_)) && !self.fire(k) {
            // Refused or the irqfd write failed (both logged and counted): not delivered.
            return MsixRaise::Disabled;
        }
        r
    }

    /// Handle a configuration write at `offset` of `len` bytes that `cfg` has already
    /// stored: if it touched Message Control, update the state machine, mirror the register
    /// and fire vectors that became deliverable. Returns `Some(fired)` if Message Control was
    /// written, `None` otherwise.
    pub fn config_written(
        &mut self,
        cfg: &mut PciConfig,
        offset: usize,
        len: usize,
    ) -> Option<usize> {
        let ctrl = self.cap + 2;
        if !PciConfig::overlaps(offset, len, ctrl, 2) {
            return None;
        }
        let val = cfg.read_u16(ctrl);
        log::debug!("{}: MSI-X message control <- {val:#x}", self.name);
        let fx = self.table.write_message_control(val);
        cfg.store(ctrl, &self.table.message_control().to_le_bytes());
        Some(self.apply(fx))
    }

    /// Whether `offset` in the MSI-X BAR falls in the table or the PBA.
    pub fn claims(&self, bar: usize, offset: u64) -> bool {
        bar == usize::from(self.layout.bar) && (self.in_table(offset) || self.in_pba(offset))
    }

    fn in_table(&self, o: u64) -> bool {
        o.checked_sub(self.layout.table_offset)
            .is_some_and(|r| r < self.table.table_size())
    }

    fn in_pba(&self, o: u64) -> bool {
        o.checked_sub(self.layout.pba_offset)
            .is_some_and(|r| r < self.table.pba_size())
    }

    /// A read at `offset` of BAR `bar`; false if it is not in the table or PBA.
    pub fn bar_read(&self, bar: usize, offset: u64, data: &mut [u8]) -> bool {
        if bar != usize::from(self.layout.bar) {
            return false;
        }
        if self.in_table(offset) {
            self.table
                .table_read(offset - self.layout.table_offset, data);
        } else if self.in_pba(offset) {
            self.table.pba_read(offset - self.layout.pba_offset, data);
        } else {
            return false;
        }
        true
    }

    /// A write at `offset` of BAR `bar`: `Some(fired)` if it hit the table or PBA (the PBA is
    /// read-only), `None` if it is not theirs.
    pub fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) -> Option<usize> {
        if bar != usize::from(self.layout.bar) {
            return None;
        }
        if self.in_table(offset) {
            let fx = self
                .table
                .table_write(offset - self.layout.table_offset, data);
            Some(self.apply(fx))
        } else if self.in_pba(offset) {
            self.table.pba_write(offset - self.layout.pba_offset, data);
            Some(0)
        } else {
            None
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pci::PciIds;
    use std::sync::Mutex;

    /// Records route operations; irqfds are the eventfds themselves.
    #[derive(Default)]
    pub struct FakeRoutes {
        next: Mutex<u32>,
        pub log: Mutex<Vec<String>>,
        pub routes: Mutex<std::collections::BTreeMap<u32, MsiMessage>>,
    }

    impl MsiRouteSink for FakeRoutes {
        fn alloc_msi_gsi(&self, msg: MsiMessage) -> Result<u32, IrqError> {
            let mut n = self.next.lock().unwrap();
            let gsi = 24 + *n;
            *n += 1;
            self.routes.lock().unwrap().insert(gsi, msg);
            self.log.lock().unwrap().push(format!("alloc {gsi}"));
            Ok(gsi)
        }
        fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), IrqError> {
            self.routes.lock().unwrap().insert(gsi, msg);
            self.log
                .lock()
                .unwrap()
                .push(format!("route {gsi} {:#x}", msg.data));
            Ok(())
        }
        fn register_irqfd(&self, gsi: u32, _fd: &EventFd) -> Result<(), IrqError> {
            self.log.lock().unwrap().push(format!("irqfd {gsi}"));
            Ok(())
        }
    }

    const LAYOUT: MsixLayout = MsixLayout {
        bar: 2,
        table_offset: 0x1000,
        pba_offset: 0x1800,
    };

    fn rig(n: u16) -> (MsixVectors, PciConfig, Arc<FakeRoutes>) {
        let mut cfg = PciConfig::new(
            PciIds {
                vendor: 1,
                device: 2,
                revision: 0,
                class: 0,
                subsystem_vendor: 0,
                subsystem: 0,
            },
            0,
        );
        let routes = Arc::new(FakeRoutes::default());
        let m = MsixVectors::new(&mut cfg, n, LAYOUT, routes.clone(), "test").unwrap();
        (m, cfg, routes)
    }

    fn enable(m: &mut MsixVectors, cfg: &mut PciConfig, ctrl: u16) -> Option<usize> {
        let off = m.cap_offset() + 2;
        cfg.write(off, &ctrl.to_le_bytes());
        m.config_written(cfg, off, 2)
    }

    fn program(m: &mut MsixVectors, k: u64, data: u32, masked: bool) -> usize {
        let base = LAYOUT.table_offset + 16 * k;
        m.bar_write(2, base, &0xFEE0_0000u32.to_le_bytes());
        m.bar_write(2, base + 8, &data.to_le_bytes());
        m.bar_write(2, base + 12, &u32::from(masked).to_le_bytes())
            .unwrap()
    }

    #[test]
    fn capability_names_the_bir_and_offsets_of_table_and_pba() {
        let (m, cfg, _) = rig(16);
        let c = m.cap_offset();
        assert_eq!(cfg.read_u16(c) as u8, CAP_ID_MSIX);
        assert_eq!(cfg.read_u16(c + 2) & 0x7FF, 15, "table size is N-1");
        assert_eq!(cfg.read_u32(c + 4), 0x1000 | 2);
        assert_eq!(cfg.read_u32(c + 8), 0x1800 | 2);
    }

    #[test]
    fn each_vector_gets_a_route_before_its_irqfd() {
        let (m, _, routes) = rig(2);
        assert_eq!(
            *routes.log.lock().unwrap(),
            vec!["alloc 24", "irqfd 24", "alloc 25", "irqfd 25"]
        );
        assert_eq!(m.gsis(), vec![24, 25]);
    }

    #[test]
    fn misaligned_table_offset_is_refused() {
        let mut cfg = PciConfig::new(
            PciIds {
                vendor: 1,
                device: 2,
                revision: 0,
                class: 0,
                subsystem_vendor: 0,
                subsystem: 0,
            },
            0,
        );
        let bad = MsixLayout {
            table_offset: 4,
            ..LAYOUT
        };
        assert!(MsixVectors::new(&mut cfg, 1, bad, Arc::new(FakeRoutes::default()), "t").is_err());
    }

    #[test]
    fn unmasked_raise_writes_the_irqfd_and_counts_a_fire() {
        let (mut m, mut cfg, _) = rig(4);
        enable(&mut m, &mut cfg, 0x8000);
        program(&mut m, 3, 0x43, false);
        assert!(matches!(m.raise(3), MsixRaise::Fire(_)));
        assert_eq!(m.eventfd(3).unwrap().read().unwrap(), 1);
        let s = m.stats(3).unwrap();
        assert_eq!((s.raised, s.fired), (1, 1));
    }

    #[test]
    fn masked_raises_pend_then_merge_and_unmask_fires_once() {
        let (mut m, mut cfg, _) = rig(4);
        enable(&mut m, &mut cfg, 0x8000);
        program(&mut m, 1, 0x41, true);
        for _ in 0..3 {
            assert_eq!(m.raise(1), MsixRaise::Pended);
        }
        let s = m.stats(1).unwrap();
        assert_eq!((s.raised, s.pended, s.merged, s.fired), (3, 1, 2, 0));
        assert!(m.eventfd(1).unwrap().read().is_err());
        let fired = m
            .bar_write(2, LAYOUT.table_offset + 16 + 12, &0u32.to_le_bytes())
            .unwrap();
        assert_eq!(fired, 1);
        assert_eq!(m.eventfd(1).unwrap().read().unwrap(), 1);
        assert_eq!(m.stats(1).unwrap().fired, 1);
    }

    #[test]
    fn function_unmask_fires_each_pending_vector_once() {
        let (mut m, mut cfg, _) = rig(4);
        enable(&mut m, &mut cfg, 0xC000);
        program(&mut m, 0, 0x40, false);
        program(&mut m, 2, 0x42, false);
        m.raise(0);
        m.raise(2);
        m.raise(2);
        assert_eq!(enable(&mut m, &mut cfg, 0x8000), Some(2));
        assert_eq!(m.eventfd(0).unwrap().read().unwrap(), 1);
        assert_eq!(m.eventfd(2).unwrap().read().unwrap(), 1);
    }

    #[test]
    fn message_a_local_apic_would_refuse_is_not_sent() {
        let (mut m, mut cfg, _) = rig(2);
        enable(&mut m, &mut cfg, 0x8000);
        for (addr, data) in [
            (0xFED0_0000u32, 0x41u32),
            (0xFEE0_0000, 0x300 | 0x41),
            (0xFEE0_0000, 0x05),
        ] {
            m.bar_write(2, LAYOUT.table_offset, &addr.to_le_bytes());
            m.bar_write(2, LAYOUT.table_offset + 8, &data.to_le_bytes());
            m.bar_write(2, LAYOUT.table_offset + 12, &0u32.to_le_bytes());
            assert_eq!(m.raise(0), MsixRaise::Disabled, "{addr:#x}/{data:#x}");
            assert!(m.eventfd(0).unwrap().read().is_err());
        }
        assert_eq!(m.stats(0).unwrap().refused, 3);
        assert_eq!(m.stats(0).unwrap().fired, 0);
    }

    #[test]
    fn raise_while_disabled_is_dropped_and_counted() {
        let (mut m, _, _) = rig(2);
        program(&mut m, 0, 0x40, false);
        assert_eq!(m.raise(0), MsixRaise::Disabled);
        assert_eq!(m.stats(0).unwrap().dropped, 1);
        assert!(m.eventfd(0).unwrap().read().is_err());
    }

    #[test]
    fn raise_of_a_vector_beyond_the_table_is_refused_without_counting() {
        let (mut m, _, _) = rig(2);
        assert_eq!(m.raise(2), MsixRaise::NoSuchVector);
        assert_eq!(m.raise(u16::MAX), MsixRaise::NoSuchVector);
        assert_eq!(m.stats(2), None);
    }

    #[test]
    fn message_change_reroutes_before_the_pending_vector_fires() {
        let (mut m, mut cfg, routes) = rig(2);
        enable(&mut m, &mut cfg, 0x8000);
        program(&mut m, 1, 0x41, true);
        m.raise(1);
        routes.log.lock().unwrap().clear();
        // One qword write: data 0x51 and Vector Control 0 (unmask) together.
        m.bar_write(2, LAYOUT.table_offset + 16 + 8, &0x51u64.to_le_bytes());
        assert_eq!(*routes.log.lock().unwrap(), vec!["route 25 0x51"]);
        assert_eq!(m.eventfd(1).unwrap().read().unwrap(), 1);
    }

    #[test]
    fn message_control_mirror_keeps_table_size_read_only() {
        let (mut m, mut cfg, _) = rig(16);
        enable(&mut m, &mut cfg, 0xFFFF);
        assert_eq!(cfg.read_u16(m.cap_offset() + 2), 0xC00F);
    }

    #[test]
    fn config_write_elsewhere_is_not_message_control() {
        let (mut m, mut cfg, _) = rig(2);
        assert_eq!(m.config_written(&mut cfg, 0x04, 2), None);
    }

    #[test]
    fn accesses_outside_table_and_pba_or_in_another_bar_are_not_claimed() {
        let (mut m, _, _) = rig(2);
        let mut b = [0u8; 4];
        assert!(!m.bar_read(0, LAYOUT.table_offset, &mut b));
        assert!(!m.bar_read(2, 0, &mut b));
        assert!(m.bar_write(2, LAYOUT.table_offset + 32, &b).is_none());
        assert!(m.bar_write(2, LAYOUT.pba_offset, &[0xFF; 8]).is_some());
        assert!(m.claims(2, LAYOUT.pba_offset + 7));
        assert!(!m.claims(2, LAYOUT.pba_offset + 8));
    }
}
