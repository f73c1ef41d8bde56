//! Virtio over PCI, modern interface (virtio 1.2, 4.1).
//!
//! One 32-bit memory BAR (BAR 0, 32 KiB) holds every structure; vendor capabilities
//! (4.1.4) point into it:
//!
//! | BAR 0 offset | structure                                   |
//! |--------------|---------------------------------------------|
//! | 0x0000       | common configuration (4.1.4.3)              |
//! | 0x1000       | ISR status (4.1.4.5)                        |
//! | 0x2000       | device-specific configuration (4.1.4.6)     |
//! | 0x3000       | notifications, 4 bytes per queue (4.1.4.4)  |
//! | 0x4000       | MSI-X table ([`MsixVectors`], PCI 3.0 6.8.2) |
//! | 0x5000       | MSI-X PBA                                   |
//!
//! Interrupts: with MSI-X enabled each vector is an eventfd bound as a KVM irqfd to its own
//! GSI route ([`MsixVectors`], shared with the other PCI functions); a masked vector pends in
//! the PBA and fires once on unmask.
//! With MSI-X disabled the function uses INTA#: level, active low, through the wired-OR line
//! model; the ISR read clears the ISR and deasserts the line (4.1.4.5.1), and the command
//! register's Interrupt Disable bit gates the pin while Interrupt Status still reflects it
//! (PCI 3.0 6.2.2/6.2.3). Queue notifications arrive on the device thread through KVM
//! ioeventfds on the notify addresses. Those follow BAR 0: they are registered (through a
//! [`NotifyRegistrar`]) only while the BAR decodes (Memory Space enabled, PCI 3.0 6.2.2) and
//! are moved when the guest reprograms the BAR (6.2.5.1), so a relocated BAR keeps the fast
//! path. A notify write that still reaches the VMM (registration failed) signals the same
//! eventfd.

use std::sync::Arc;

use irqchip::msix::MsixRaise;
use irqchip::{guest_warn, InterruptLine, MsiRouteSink};
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{VirtioBackend, VirtioCore, VirtioStats, VirtioTransport, NO_VECTOR};
use crate::pci::config::{self, CAP_ID_VENDOR, COMMAND};
use crate::pci::msix::{MsixLayout, MsixSetupError, MsixVectors};
use crate::pci::{BarKind, PciConfig, PciDevice, PciIds};

pub const BAR_SIZE: u64 = 0x8000;
pub const COMMON_OFFSET: u64 = 0x0000;
pub const COMMON_SIZE: u64 = 0x38;
pub const ISR_OFFSET: u64 = 0x1000;
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
pub const DEVICE_CFG_SIZE: u64 = 0x1000;
pub const NOTIFY_OFFSET: u64 = 0x3000;
pub const NOTIFY_MULTIPLIER: u32 = 4;
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
pub const MSIX_PBA_OFFSET: u64 = 0x5000;

/// virtio_pci_cap cfg_type values (4.1.4).
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_PCI_CFG: u8 = 5;

/// ISR bits (4.1.4.5).
pub const ISR_QUEUE: u8 = 1;
pub const ISR_CONFIG: u8 = 2;

/// Setup errors.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    #[error("virtio-pci configuration space: {0}")]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Msix(#[from] MsixSetupError),
    #[error("creating an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// Binds a queue's kick eventfd to a guest-physical notify address (a KVM ioeventfd in the
/// VMM), and unbinds it when the address stops decoding.
pub trait NotifyRegistrar: Send + Sync {
    fn register(&self, fd: &EventFd, addr: u64) -> std::io::Result<()>;
    fn unregister(&self, fd: &EventFd, addr: u64) -> std::io::Result<()>;
}

/// A virtio device on PCI. Shared (`Arc<Mutex<_>>`) by the PCI bus (vCPU threads) and the
/// device thread.
pub struct VirtioPci {
    cfg: PciConfig,
    core: VirtioCore,
    msix: MsixVectors,
    /// VIRTIO_PCI_CAP_PCI_CFG capability offset (4.1.4.9).
    pci_cfg_cap: usize,
    isr: u8,
    line: Option<Arc<dyn InterruptLine>>,
    line_level: bool,
    /// Per-queue kick eventfds (the ones registered as ioeventfds).
    kicks: Vec<EventFd>,
    notify: Option<Arc<dyn NotifyRegistrar>>,
    /// BAR 0 base the kick eventfds are registered at, if any.
    notify_base: Option<u64>,
}

impl VirtioPci {
    /// A function for `backend` with BAR 0 at `bar_addr`; one MSI-X vector per queue plus one
    /// for configuration changes, each routed through `routes`. `line` is its INTA# line.
    pub fn new(
        backend: Box<dyn VirtioBackend>,
        mem: GuestMemoryMmap,
        bar_addr: u64,
        routes: Arc<dyn MsiRouteSink>,
        line: Option<Arc<dyn InterruptLine>>,
    ) -> Result<Self, VirtioPciError> {
        let device_type = backend.device_type();
        let core = VirtioCore::new(backend, mem);
        let nq = core.queues.len();
        let nvec = u16::try_from(nq + 1).unwrap_or(u16::MAX);
        let ids = PciIds {
            vendor: 0x1AF4,
            device: 0x1040 + device_type as u16,
            revision: 1,
            class: match device_type {
                2 => 0x01_00_00,
                1 => 0x02_00_00,
                _ => 0xFF_00_00,
            },
            subsystem_vendor: 0x1AF4,
            subsystem: 0x40,
        };
        let mut cfg = PciConfig::new(ids, if line.is_some() { 1 } else { 0 });
        cfg.add_bar(0, BarKind::Mem32, BAR_SIZE, false, bar_addr)?;
        let vcap = |cfg_type: u8, offset: u64, len: u64| -> Vec<u8> {
            let mut b = vec![16, cfg_type, 0, 0, 0, 0];
            b.extend_from_slice(&(offset as u32).to_le_bytes());
            b.extend_from_slice(&(len as u32).to_le_bytes());
            b
        };
        let common = vcap(CAP_COMMON, COMMON_OFFSET, COMMON_SIZE);
        cfg.add_capability(CAP_ID_VENDOR, &common, &[0; 14])?;
        let mut notify = vcap(CAP_NOTIFY, NOTIFY_OFFSET, (nq as u64).max(1) * 4);
        notify[0] = 20;
        notify.extend_from_slice(&NOTIFY_MULTIPLIER.to_le_bytes());
        cfg.add_capability(CAP_ID_VENDOR, &notify, &[0; 18])?;
        cfg.add_capability(CAP_ID_VENDOR, &vcap(CAP_ISR, ISR_OFFSET, 1), &[0; 14])?;
        cfg.add_capability(
            CAP_ID_VENDOR,
            &vcap(CAP_DEVICE, DEVICE_CFG_OFFSET, DEVICE_CFG_SIZE),
            &[0; 14],
        )?;
        // 4.1.4.9: bar, offset, length and pci_cfg_data are driver-writable; accesses to
        // pci_cfg_data reach the selected BAR window.
        let mut pci_cfg = vcap(CAP_PCI_CFG, 0, 0);
        pci_cfg[0] = 20;
        pci_cfg.extend_from_slice(&[0; 4]);
        let mut pci_cfg_wmask = [0u8; 18];
        pci_cfg_wmask[2] = 0xFF;
        pci_cfg_wmask[6..18].fill(0xFF);
        let pci_cfg_cap = cfg.add_capability(CAP_ID_VENDOR, &pci_cfg, &pci_cfg_wmask)?;
        let msix = MsixVectors::new(
            &mut cfg,
            nvec,
            MsixLayout {
                bar: 0,
                table_offset: MSIX_TABLE_OFFSET,
                pba_offset: MSIX_PBA_OFFSET,
            },
            routes,
            "virtio-pci",
        )?;
        let mut kicks = Vec::with_capacity(nq);
        for _ in 0..nq {
            kicks.push(EventFd::new(EFD_NONBLOCK).map_err(VirtioPciError::EventFd)?);
        }
        Ok(Self {
            cfg,
            core,
            msix,
            pci_cfg_cap,
            isr: 0,
            line,
            line_level: false,
            kicks,
            notify: None,
            notify_base: None,
        })
    }

    /// Hand the queue notify addresses to `registrar`: the kick eventfds are bound now if
    /// BAR 0 decodes, and re-bound whenever the guest moves it or toggles Memory Space.
    pub fn attach_notify(&mut self, registrar: Arc<dyn NotifyRegistrar>) {
        self.notify = Some(registrar);
        self.sync_notify();
    }

    /// Where BAR 0 decodes now: its base while Memory Space is enabled.
    fn decoded_base(&self) -> Option<u64> {
        if !self.cfg.memory_enabled() {
            return None;
        }
        self.cfg.bar(0).map(|(base, _, _)| base).filter(|&b| b != 0)
    }

    /// Move the kick eventfds to where BAR 0 decodes now (PCI 3.0 6.2.5.1: software may
    /// relocate a BAR at any time while decoding is off, and turns decoding back on after).
    fn sync_notify(&mut self) {
        let Some(reg) = self.notify.clone() else {
            return;
        };
        let want = self.decoded_base();
        if want == self.notify_base {
            return;
        }
        let stride = u64::from(NOTIFY_MULTIPLIER);
        if let Some(old) = self.notify_base.take() {
            for (q, k) in self.kicks.iter().enumerate() {
                let addr = old + NOTIFY_OFFSET + q as u64 * stride;
                if let Err(e) = reg.unregister(k, addr) {
                    log::error!("virtio-pci: unbinding queue {q} notify at {addr:#x}: {e}");
                }
            }
        }
        if let Some(base) = want {
            for (q, k) in self.kicks.iter().enumerate() {
                let addr = base + NOTIFY_OFFSET + q as u64 * stride;
                if let Err(e) = reg.register(k, addr) {
                    // The notify write still reaches bar_write, which kicks the same
                    // eventfd: slower, not lost.
                    log::error!("virtio-pci: binding queue {q} notify at {addr:#x}: {e}");
                }
            }
            self.notify_base = Some(base);
        }
    }

    /// The kick eventfd of each queue (register each as an ioeventfd on
    /// [`notify_address`](Self::notify_address) and hand it to the worker).
    pub fn kick_fds(&self) -> Result<Vec<EventFd>, std::io::Error> {
        self.kicks.iter().map(EventFd::try_clone).collect()
    }

    /// Guest address a driver writes to notify queue `q` (BAR 0 as currently programmed).
    pub fn notify_address(&self, q: usize) -> Option<u64> {
        let (base, _, _) = self.cfg.bar(0)?;
        Some(base + NOTIFY_OFFSET + q as u64 * u64::from(NOTIFY_MULTIPLIER))
    }

    pub fn stats(&self) -> Arc<VirtioStats> {
        self.core.stats.clone()
    }

    pub fn name(&self) -> &'static str {
        self.core.backend.name()
    }

    /// The GSIs of the MSI-X vectors, in vector order.
    pub fn msix_gsis(&self) -> Vec<u32> {
        self.msix.gsis()
    }

    /// Count `n` MSI-X messages sent.
    fn count_fired(&self, n: usize) {
        self.core
            .stats
            .interrupts
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Drive INTA# from Interrupt Status and Interrupt Disable.
    fn update_line(&mut self) {
        let want = self.cfg.interrupt_status() && !self.cfg.interrupt_disabled();
        if want != self.line_level {
            if let Some(l) = &self.line {
                l.set_level(want);
            }
            self.line_level = want;
        }
    }

    fn raise(&mut self, vector: u16, isr_bit: u8) {
        if self.msix.enabled() {
            if isr_bit == ISR_CONFIG {
                self.isr |= ISR_CONFIG;
            }
            if vector == NO_VECTOR {
                return;
            }
            let r = self.msix.raise(vector);
            log::debug!("virtio-pci: raise vector {vector}: {r:?}");
            match r {
                MsixRaise::Fire(_) => self.count_fired(1),
                MsixRaise::Pended => {
                    self.core
                        .stats
                        .moderated
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                MsixRaise::Disabled | MsixRaise::NoSuchVector => {}
            }
        } else {
            log::debug!("virtio-pci: INTx raise, ISR bit {isr_bit}");
            self.isr |= isr_bit;
            self.cfg.set_interrupt_status(true);
            self.core
                .stats
                .interrupts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.update_line();
        }
    }

    fn read_isr(&mut self) -> u8 {
        let v = self.isr;
        log::debug!("virtio-pci: ISR read {v:#x}, line was {}", self.line_level);
        self.isr = 0;
        self.cfg.set_interrupt_status(false);
        self.update_line();
        v
    }

    /// The BAR access the VIRTIO_PCI_CAP_PCI_CFG window selects: (bar, offset, length), if
    /// the driver programmed a valid one (length 1, 2 or 4, offset aligned to it).
    fn pci_cfg_window(&self) -> Option<(usize, u64, usize)> {
        let c = self.pci_cfg_cap;
        let mut bar = [0u8; 1];
        self.cfg.read(c + 4, &mut bar);
        let off = self.cfg.read_u32(c + 8);
        let len = self.cfg.read_u32(c + 12) as usize;
        if !matches!(len, 1 | 2 | 4) || !(off as usize).is_multiple_of(len) {
            guest_warn!("virtio-pci: PCI_CFG window length {len} at offset {off:#x} is invalid");
            return None;
        }
        Some((usize::from(bar[0]), u64::from(off), len))
    }

    fn common_snapshot(&mut self) -> [u8; COMMON_SIZE as usize] {
        let mut b = [0u8; COMMON_SIZE as usize];
        let core = &mut self.core;
        let put = |b: &mut [u8], off: usize, v: &[u8]| {
            if let Some(s) = b.get_mut(off..off + v.len()) {
                s.copy_from_slice(v);
            }
        };
        put(&mut b, 0x00, &core.device_features_sel.to_le_bytes());
        put(&mut b, 0x04, &core.device_features_word().to_le_bytes());
        put(&mut b, 0x08, &core.driver_features_sel.to_le_bytes());
        put(&mut b, 0x0C, &core.driver_features_word().to_le_bytes());
        put(&mut b, 0x10, &core.config_vector.to_le_bytes());
        put(&mut b, 0x12, &(core.queues.len() as u16).to_le_bytes());
        put(&mut b, 0x14, &[core.status]);
        put(&mut b, 0x15, &[core.config_generation]);
        put(&mut b, 0x16, &core.queue_sel.to_le_bytes());
        let sel = usize::from(core.queue_sel);
        let vector = core.queue_vectors.get(sel).copied().unwrap_or(NO_VECTOR);
        if let Some(q) = core.queues.get(sel) {
            put(&mut b, 0x18, &q.size().to_le_bytes());
            put(&mut b, 0x1A, &vector.to_le_bytes());
            put(&mut b, 0x1C, &u16::from(q.ready()).to_le_bytes());
            put(&mut b, 0x1E, &(sel as u16).to_le_bytes());
            put(&mut b, 0x20, &q.desc_table().to_le_bytes());
            put(&mut b, 0x28, &q.avail_ring().to_le_bytes());
            put(&mut b, 0x30, &q.used_ring().to_le_bytes());
        }
        b
    }

    fn common_read(&mut self, off: u64, data: &mut [u8]) {
        let snap = self.common_snapshot();
        for (i, d) in data.iter_mut().enumerate() {
            *d = off
                .checked_add(i as u64)
                .and_then(|o| snap.get(o as usize))
                .copied()
                .unwrap_or(0);
        }
    }

    fn valid_vector(&self, v: u16) -> u16 {
        if v == NO_VECTOR || v < self.msix.num_vectors() {
            v
        } else {
            // 4.1.5.1.2: a vector the device cannot use reads back NO_VECTOR.
            NO_VECTOR
        }
    }

    fn common_write(&mut self, off: u64, data: &[u8]) {
        let mut v8 = [0u8; 8];
        let n = data.len().min(8);
        v8[..n].copy_from_slice(&data[..n]);
        let v = u64::from_le_bytes(v8);
        let len = data.len();
        let writable = self.core.queue_writable();
        match (off, len) {
            (0x00, 4) => self.core.device_features_sel = v as u32,
            (0x08, 4) => self.core.driver_features_sel = v as u32,
            (0x0C, 4) => self.core.write_driver_features(v as u32),
            (0x10, 2) => self.core.config_vector = self.valid_vector(v as u16),
            (0x14, 1) => {
                if self.core.write_status(v as u8) {
                    // Reset also clears the ISR and drops INTA# (4.1.4.3.1).
                    self.isr = 0;
                    self.cfg.set_interrupt_status(false);
                    self.update_line();
                }
            }
            (0x16, 2) => self.core.queue_sel = v as u16,
            (0x18, 2) if writable => {
                if let Some(q) = self.core.selected() {
                    q.set_size(v as u16);
                }
            }
            (0x1A, 2) => {
                let vec = self.valid_vector(v as u16);
                let sel = usize::from(self.core.queue_sel);
                if let Some(slot) = self.core.queue_vectors.get_mut(sel) {
                    *slot = vec;
                }
            }
            (0x1C, 2) if writable => {
                if v == 1 {
                    if let Some(q) = self.core.selected() {
                        q.set_ready(true);
                    }
                }
            }
            (0x20 | 0x24 | 0x28 | 0x2C | 0x30 | 0x34, 4) | (0x20 | 0x28 | 0x30, 8)
                if writable =>
            {
                let Some(q) = self.core.selected() else {
                    return;
                };
                let (lo, hi) = match (off & 7, len) {
                    (0, 8) => (Some(v as u32), Some((v >> 32) as u32)),
                    (0, _) => (Some(v as u32), None),
                    _ => (None, Some(v as u32)),
                };
                match off & !7 {
                    0x20 => q.set_desc_table_address(lo, hi),
                    0x28 => q.set_avail_ring_address(lo, hi),
                    _ => q.set_used_ring_address(lo, hi),
                }
            }
            _ => guest_warn!(
                "virtio-pci: {len}-byte common config write at {off:#x} ignored (read-only, misaligned or after DRIVER_OK)"
            ),
        }
    }
}

impl VirtioTransport for VirtioPci {
    fn core(&mut self) -> &mut VirtioCore {
        &mut self.core
    }

    fn signal_queue(&mut self, queue: usize) {
        let vector = self
            .core
            .queue_vectors
            .get(queue)
            .copied()
            .unwrap_or(NO_VECTOR);
        self.raise(vector, ISR_QUEUE);
    }

    fn signal_config(&mut self) {
        let vector = self.core.config_vector;
        self.raise(vector, ISR_CONFIG);
    }
}

impl PciDevice for VirtioPci {
    fn config(&self) -> &PciConfig {
        &self.cfg
    }

    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        let window = self.pci_cfg_cap + 16;
        if PciConfig::overlaps(offset, data.len(), window, 4) {
            if let Some((bar, off, len)) = self.pci_cfg_window() {
                let mut buf = [0u8; 4];
                if let Some(b) = buf.get_mut(..len) {
                    self.bar_read(bar, off, b);
                }
                self.cfg.store(window, &buf);
            }
        }
        self.cfg.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.cfg.write(offset, data);
        let window = self.pci_cfg_cap + 16;
        if PciConfig::overlaps(offset, data.len(), window, 4) {
            if let Some((bar, off, len)) = self.pci_cfg_window() {
                let mut buf = [0u8; 4];
                self.cfg.read(window, &mut buf);
                if let Some(b) = buf.get(..len) {
                    self.bar_write(bar, off, b);
                }
            }
        }
        if let Some(fired) = self.msix.config_written(&mut self.cfg, offset, data.len()) {
            self.count_fired(fired);
            if !self.msix.enabled() {
                self.update_line();
            } else if self.line_level {
                // MSI-X enabled: the function no longer uses INTx (PCI 3.0 6.8.2.3).
                if let Some(l) = &self.line {
                    l.set_level(false);
                }
                self.line_level = false;
            }
        }
        if PciConfig::overlaps(offset, data.len(), COMMAND, 2) && !self.msix.enabled() {
            self.update_line();
        }
        self.sync_notify();
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar != 0 {
            data.fill(0xFF);
            return;
        }
        match offset {
            o if o < COMMON_OFFSET + COMMON_SIZE => self.common_read(o, data),
            ISR_OFFSET => {
                let v = self.read_isr();
                data.fill(0);
                if let Some(b) = data.first_mut() {
                    *b = v;
                }
            }
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_SIZE).contains(&o) => {
                self.core.backend.read_config(o - DEVICE_CFG_OFFSET, data)
            }
            o if self.msix.bar_read(0, o, data) => {}
            _ => data.fill(0),
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        let nq = self.kicks.len() as u64;
        match offset {
            o if o < COMMON_OFFSET + COMMON_SIZE => self.common_write(o, data),
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_SIZE).contains(&o) => {
                self.core.backend.write_config(o - DEVICE_CFG_OFFSET, data)
            }
            o if (NOTIFY_OFFSET..NOTIFY_OFFSET + nq * u64::from(NOTIFY_MULTIPLIER))
                .contains(&o) =>
            {
                // Reached only when the ioeventfd did not catch the write.
                let q = ((o - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER)) as usize;
                if let Some(k) = self.kicks.get(q) {
                    let _ = k.write(1);
                }
            }
            o if self.msix.claims(0, o) => {
                let fired = self.msix.bar_write(0, o, data).unwrap_or(0);
                self.count_fired(fired);
            }
            _ => guest_warn!(
                "virtio-pci: {}-byte write at BAR 0 offset {offset:#x} ignored",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::block::{Block, BlockConfig};
    use super::super::testutil;
    use super::*;
    use std::sync::Mutex;

    use crate::pci::config::CAP_ID_MSIX;
    use crate::pci::msix::tests::FakeRoutes;

    #[derive(Default)]
    struct FakeLine {
        level: Mutex<bool>,
        changes: Mutex<u32>,
    }
    impl InterruptLine for FakeLine {
        fn set_level(&self, level: bool) {
            *self.level.lock().unwrap() = level;
            *self.changes.lock().unwrap() += 1;
        }
    }

    const BAR: u64 = 0xC000_0000;

    fn device() -> (VirtioPci, Arc<FakeRoutes>, Arc<FakeLine>) {
        let f = crate::virtio::block::test_file("vpci", 8192);
        let blk = Block::new(BlockConfig {
            file: f,
            readonly: false,
            id: "t".into(),
        })
        .unwrap();
        let routes = Arc::new(FakeRoutes::default());
        let line = Arc::new(FakeLine::default());
        let d = VirtioPci::new(
            Box::new(blk),
            testutil::mem(),
            BAR,
            routes.clone(),
            Some(line.clone()),
        )
        .unwrap();
        (d, routes, line)
    }

    fn find_cap(d: &VirtioPci, id: u8) -> Vec<usize> {
        let mut out = vec![];
        let mut p = d.cfg.read_u32(config::CAPABILITIES_POINTER) as usize & 0xFF;
        while p != 0 {
            let h = d.cfg.read_u16(p);
            if h as u8 == id {
                out.push(p);
            }
            p = (h >> 8) as usize;
        }
        out
    }

    fn enable_msix(d: &mut VirtioPci) {
        let ctrl = d.msix.cap_offset() + 2;
        d.config_write(ctrl, &0x8000u16.to_le_bytes());
    }

    fn program_vector(d: &mut VirtioPci, k: u64, data: u32, masked: bool) {
        let base = MSIX_TABLE_OFFSET + 16 * k;
        d.bar_write(0, base, &0xFEE0_0000u32.to_le_bytes());
        d.bar_write(0, base + 4, &0u32.to_le_bytes());
        d.bar_write(0, base + 8, &data.to_le_bytes());
        d.bar_write(0, base + 12, &u32::from(masked).to_le_bytes());
    }

    /// Records which (eventfd raw fd, address) pairs are bound.
    #[derive(Default)]
    struct FakeNotify {
        bound: Mutex<Vec<u64>>,
    }
    impl NotifyRegistrar for FakeNotify {
        fn register(&self, _fd: &EventFd, addr: u64) -> std::io::Result<()> {
            let mut b = self.bound.lock().unwrap();
            assert!(!b.contains(&addr), "{addr:#x} bound twice");
            b.push(addr);
            Ok(())
        }
        fn unregister(&self, _fd: &EventFd, addr: u64) -> std::io::Result<()> {
            let mut b = self.bound.lock().unwrap();
            let i = b
                .iter()
                .position(|&a| a == addr)
                .expect("unbinding an unbound address");
            b.remove(i);
            Ok(())
        }
    }

    fn set_memory_space(d: &mut VirtioPci, on: bool) {
        d.config_write(COMMAND, &[if on { 0x06 } else { 0x04 }, 0]);
    }

    #[test]
    fn notify_eventfds_bind_only_while_the_bar_decodes() {
        let (mut d, _, _) = device();
        let n = Arc::new(FakeNotify::default());
        d.attach_notify(n.clone());
        assert!(
            n.bound.lock().unwrap().is_empty(),
            "Memory Space is off at reset"
        );
        set_memory_space(&mut d, true);
        assert_eq!(*n.bound.lock().unwrap(), vec![BAR + NOTIFY_OFFSET]);
        set_memory_space(&mut d, false);
        assert!(n.bound.lock().unwrap().is_empty());
    }

    #[test]
    fn notify_eventfds_follow_a_relocated_bar() {
        let (mut d, _, _) = device();
        let n = Arc::new(FakeNotify::default());
        d.attach_notify(n.clone());
        set_memory_space(&mut d, true);
        // The guest's BAR sizing/relocation sequence: decoding off, write the BAR, back on.
        set_memory_space(&mut d, false);
        let moved = BAR + 0x10_0000;
        d.config_write(config::BAR0, &(moved as u32).to_le_bytes());
        set_memory_space(&mut d, true);
        assert_eq!(*n.bound.lock().unwrap(), vec![moved + NOTIFY_OFFSET]);
        assert_eq!(d.notify_address(0), Some(moved + NOTIFY_OFFSET));
    }

    #[test]
    fn notify_eventfds_move_when_the_bar_is_rewritten_while_decoding() {
        let (mut d, _, _) = device();
        let n = Arc::new(FakeNotify::default());
        d.attach_notify(n.clone());
        set_memory_space(&mut d, true);
        let moved = BAR + 0x20_0000;
        d.config_write(config::BAR0, &(moved as u32).to_le_bytes());
        assert_eq!(*n.bound.lock().unwrap(), vec![moved + NOTIFY_OFFSET]);
    }

    #[test]
    fn ids_are_modern_virtio_block() {
        let (d, _, _) = device();
        assert_eq!(d.cfg.read_u32(0), 0x1042_1AF4);
        assert_eq!(d.cfg.read_u32(8) & 0xFF, 1, "revision 1 for modern-only");
        assert!(d.cfg.read_u16(0x2E) >= 0x40);
    }

    #[test]
    fn vendor_capabilities_describe_common_notify_isr_and_device_structures() {
        let (d, _, _) = device();
        let caps = find_cap(&d, CAP_ID_VENDOR);
        let types: Vec<u8> = caps
            .iter()
            .map(|p| (d.cfg.read_u32(*p) >> 24) as u8)
            .collect();
        assert_eq!(
            types,
            vec![CAP_COMMON, CAP_NOTIFY, CAP_ISR, CAP_DEVICE, CAP_PCI_CFG]
        );
        let notify = caps[1];
        assert_eq!(d.cfg.read_u32(notify + 8), NOTIFY_OFFSET as u32);
        assert_eq!(d.cfg.read_u32(notify + 16), NOTIFY_MULTIPLIER);
        assert_eq!(find_cap(&d, CAP_ID_MSIX).len(), 1);
    }

    #[test]
    fn msix_capability_reports_table_size_and_bir_offsets() {
        let (d, _, _) = device();
        let p = find_cap(&d, CAP_ID_MSIX)[0];
        assert_eq!(
            d.cfg.read_u16(p + 2) & 0x7FF,
            1,
            "2 vectors: queue + config"
        );
        assert_eq!(d.cfg.read_u32(p + 4), MSIX_TABLE_OFFSET as u32);
        assert_eq!(d.cfg.read_u32(p + 8), MSIX_PBA_OFFSET as u32);
    }

    #[test]
    fn each_vector_gets_a_route_before_its_irqfd() {
        let (_, routes, _) = device();
        assert_eq!(
            *routes.log.lock().unwrap(),
            vec!["alloc 24", "irqfd 24", "alloc 25", "irqfd 25"]
        );
    }

    #[test]
    fn rewriting_a_vector_message_reroutes_its_gsi() {
        let (mut d, routes, _) = device();
        program_vector(&mut d, 1, 0x41, true);
        assert_eq!(routes.routes.lock().unwrap()[&25].data, 0x41);
        assert_eq!(routes.routes.lock().unwrap()[&25].address, 0xFEE0_0000);
    }

    #[test]
    fn queue_interrupt_fires_the_vector_eventfd_when_unmasked() {
        let (mut d, _, line) = device();
        enable_msix(&mut d);
        program_vector(&mut d, 0, 0x41, false);
        d.core.queue_vectors[0] = 0;
        d.signal_queue(0);
        d.signal_queue(0);
        assert_eq!(
            d.msix.eventfd(0).unwrap().read().unwrap(),
            2,
            "two signals coalesce into one read"
        );
        assert!(!*line.level.lock().unwrap(), "INTx unused with MSI-X");
    }

    #[test]
    fn masked_vector_pends_and_fires_once_on_unmask() {
        let (mut d, _, _) = device();
        enable_msix(&mut d);
        program_vector(&mut d, 0, 0x41, true);
        d.core.queue_vectors[0] = 0;
        d.signal_queue(0);
        d.signal_queue(0);
        assert!(
            d.msix.eventfd(0).unwrap().read().is_err(),
            "nothing fired while masked"
        );
        let mut pba = [0u8; 8];
        d.bar_read(0, MSIX_PBA_OFFSET, &mut pba);
        assert_eq!(pba[0], 1);
        d.bar_write(0, MSIX_TABLE_OFFSET + 12, &0u32.to_le_bytes());
        assert_eq!(d.msix.eventfd(0).unwrap().read().unwrap(), 1);
        d.bar_read(0, MSIX_PBA_OFFSET, &mut pba);
        assert_eq!(pba[0], 0);
    }

    #[test]
    fn no_vector_means_no_msix_interrupt() {
        let (mut d, _, _) = device();
        enable_msix(&mut d);
        program_vector(&mut d, 0, 0x41, false);
        d.signal_queue(0);
        assert!(d.msix.eventfd(0).unwrap().read().is_err());
    }

    #[test]
    fn out_of_range_vector_reads_back_no_vector() {
        let (mut d, _, _) = device();
        d.bar_write(0, 0x1A, &7u16.to_le_bytes());
        let mut b = [0u8; 2];
        d.bar_read(0, 0x1A, &mut b);
        assert_eq!(u16::from_le_bytes(b), NO_VECTOR);
        d.bar_write(0, 0x10, &1u16.to_le_bytes());
        d.bar_read(0, 0x10, &mut b);
        assert_eq!(u16::from_le_bytes(b), 1);
    }

    #[test]
    fn intx_asserts_sets_interrupt_status_and_isr_read_deasserts() {
        let (mut d, _, line) = device();
        d.signal_queue(0);
        assert!(*line.level.lock().unwrap());
        assert!(d.cfg.interrupt_status());
        let mut isr = [0u8; 1];
        d.bar_read(0, ISR_OFFSET, &mut isr);
        assert_eq!(isr[0], ISR_QUEUE);
        assert!(!*line.level.lock().unwrap());
        assert!(!d.cfg.interrupt_status());
        d.bar_read(0, ISR_OFFSET, &mut isr);
        assert_eq!(isr[0], 0, "ISR is read-to-clear");
    }

    #[test]
    fn interrupt_disable_gates_the_pin_but_not_the_status_bit() {
        let (mut d, _, line) = device();
        d.config_write(COMMAND, &(config::CMD_INTERRUPT_DISABLE).to_le_bytes());
        d.signal_queue(0);
        assert!(!*line.level.lock().unwrap());
        assert!(d.cfg.interrupt_status());
        d.config_write(COMMAND, &0u16.to_le_bytes());
        assert!(
            *line.level.lock().unwrap(),
            "clearing the disable bit asserts the pending pin"
        );
    }

    #[test]
    fn config_change_sets_isr_bit_1() {
        let (mut d, _, _) = device();
        d.signal_config();
        let mut isr = [0u8; 1];
        d.bar_read(0, ISR_OFFSET, &mut isr);
        assert_eq!(isr[0], ISR_CONFIG);
    }

    #[test]
    fn device_reset_clears_isr_and_deasserts_intx() {
        let (mut d, _, line) = device();
        d.signal_queue(0);
        d.bar_write(0, 0x14, &[0]);
        assert!(!*line.level.lock().unwrap());
        let mut isr = [0u8; 1];
        d.bar_read(0, ISR_OFFSET, &mut isr);
        assert_eq!(isr[0], 0);
    }

    #[test]
    fn pci_cfg_window_reads_and_writes_bar_0() {
        let (mut d, _, _) = device();
        let c = d.pci_cfg_cap;
        d.config_write(c + 4, &[0]);
        d.config_write(c + 8, &0x16u32.to_le_bytes());
        d.config_write(c + 12, &2u32.to_le_bytes());
        d.config_write(c + 16, &1u16.to_le_bytes());
        assert_eq!(
            d.core.queue_sel, 1,
            "queue_select written through the window"
        );
        d.config_write(c + 8, &0x18u32.to_le_bytes());
        d.config_write(c + 16, &0u16.to_le_bytes());
        d.core.queue_sel = 0;
        let mut b = [0u8; 2];
        d.config_read(c + 16, &mut b);
        assert_eq!(
            u16::from_le_bytes(b),
            256,
            "queue_size read through the window"
        );
    }

    #[test]
    fn common_config_reports_features_and_queue_size() {
        let (mut d, _, _) = device();
        let mut b = [0u8; 4];
        d.bar_write(0, 0x00, &1u32.to_le_bytes());
        d.bar_read(0, 0x04, &mut b);
        assert_eq!(u32::from_le_bytes(b) & 1, 1, "VERSION_1 is bit 32");
        let mut s = [0u8; 2];
        d.bar_read(0, 0x18, &mut s);
        assert_eq!(u16::from_le_bytes(s), 256);
        d.bar_read(0, 0x12, &mut s);
        assert_eq!(u16::from_le_bytes(s), 1);
    }

    #[test]
    fn queue_addresses_take_32_bit_halves() {
        let (mut d, _, _) = device();
        d.bar_write(0, 0x20, &0x1234_5000u32.to_le_bytes());
        d.bar_write(0, 0x24, &0x1u32.to_le_bytes());
        let mut b = [0u8; 8];
        d.bar_read(0, 0x20, &mut b);
        assert_eq!(u64::from_le_bytes(b), 0x1_1234_5000);
    }

    #[test]
    fn notify_write_that_reaches_the_vmm_signals_the_kick_eventfd() {
        let (mut d, _, _) = device();
        let k = d.kick_fds().unwrap();
        d.bar_write(0, NOTIFY_OFFSET, &0u16.to_le_bytes());
        assert_eq!(k[0].read().unwrap(), 1);
        assert_eq!(d.notify_address(0), Some(BAR + NOTIFY_OFFSET));
    }

    #[test]
    fn every_bar_and_config_access_width_and_offset_is_safe() {
        let (mut d, _, _) = device();
        for off in (0..BAR_SIZE).step_by(3) {
            for len in [1usize, 2, 4, 8] {
                d.bar_write(0, off, &vec![0xFF; len]);
                let mut r = vec![0u8; len];
                d.bar_read(0, off, &mut r);
            }
        }
        for off in 0..4096 {
            for len in [1usize, 2, 4] {
                d.config_write(off, &vec![0xFF; len]);
            }
        }
    }
}
