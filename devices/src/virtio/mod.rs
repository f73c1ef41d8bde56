//! Virtio 1.2 devices: the transport-independent core (feature negotiation, device status,
//! virtqueues through the `virtio-queue` crate, interrupt suppression and counters), the
//! block device, and the PCI and MMIO transports.
//!
//! Split of work:
//! * [`VirtioBackend`]: a device type (block, net). It turns one descriptor chain into a used
//!   length, and never sees transports or interrupts. A device that also receives from the
//!   host (virtio-net's receiveq) marks that queue an *input queue*: its chains are popped
//!   only when host input is staged ([`VirtioCore::input_ready`]), and the worker watches the
//!   backend's host fds.
//! * [`VirtioCore`]: the state every transport exposes (virtio 1.2, 2.1 device status, 2.2
//!   feature bits, 2.7 split virtqueues) and the queue loop with notification suppression
//!   (2.7.7 VRING_AVAIL_F_NO_INTERRUPT, 2.7.10 VIRTIO_RING_F_EVENT_IDX).
//! * Transports ([`pci`], [`mmio`]) map registers onto the core and deliver interrupts.
//! * [`worker`]: the event-manager subscriber that services queue eventfds (KVM ioeventfds)
//!   off the vCPU threads, with optional interrupt moderation.

pub mod block;
pub mod mmio;
pub mod net;
pub mod pci;
pub mod worker;

use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use irqchip::guest_warn;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Device status bits (virtio 1.2, 2.1).
pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_NEEDS_RESET: u8 = 64;
pub const STATUS_FAILED: u8 = 128;

/// Reserved feature bits (virtio 1.2, 6).
pub const F_RING_INDIRECT_DESC: u64 = 1 << 28;
pub const F_RING_EVENT_IDX: u64 = 1 << 29;
pub const F_VERSION_1: u64 = 1 << 32;

/// "No vector" for MSI-X vector registers (virtio 1.2, 4.1.4.3.1).
pub const NO_VECTOR: u16 = 0xFFFF;

/// VRING_AVAIL_F_NO_INTERRUPT (virtio 1.2, 2.7.6).
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Per-device counters, printed with `--irq-stats`.
#[derive(Debug, Default)]
pub struct VirtioStats {
    /// Guest kicks (queue notifications) serviced.
    pub kicks: AtomicU64,
    /// Used-ring entries added (completed requests).
    pub completions: AtomicU64,
    /// Times the driver needed a notification (after suppression rules).
    pub notifications_needed: AtomicU64,
    /// Interrupts actually raised (eventfd writes, line assertions, MSI-X pended).
    pub interrupts: AtomicU64,
    /// Completions batches whose interrupt was suppressed by NO_INTERRUPT or EVENT_IDX.
    pub suppressed: AtomicU64,
    /// Interrupts held back or merged by moderation.
    pub moderated: AtomicU64,
    /// Requests failed with IOERR because the chain was malformed.
    pub bad_chains: AtomicU64,
    /// Host input dropped (virtio-net: frames that arrived while the driver was not ready,
    /// or larger than the driver's receive buffer). Printed only when non-zero.
    pub dropped: AtomicU64,
}

impl VirtioStats {
    fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// One line: `name: kicks K, completions C, needed N, raised R, suppressed S, ...`.
    pub fn format(&self, name: &str) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let needed = g(&self.notifications_needed);
        let completions = g(&self.completions);
        let ipr = if completions > 0 {
            g(&self.interrupts) as f64 / completions as f64
        } else {
            0.0
        };
        let dropped = match g(&self.dropped) {
            0 => String::new(),
            n => format!(", dropped {n}"),
        };
        format!(
            "{name}: kicks {}, completions {completions}, notifications needed {needed}, interrupts raised {}, suppressed {}, moderated {}, bad chains {}{dropped}, interrupts/request {ipr:.3}",
            g(&self.kicks),
            g(&self.interrupts),
            g(&self.suppressed),
            g(&self.moderated),
            g(&self.bad_chains),
        )
    }
}

/// Why a chain could not be completed normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("descriptor chain is malformed; the request fails")]
    Malformed,
}

/// A virtio device type.
pub trait VirtioBackend: Send {
    /// Device ID (virtio 1.2, 5).
    fn device_type(&self) -> u32;
    /// Feature bits offered (device-type bits plus the reserved ones it supports).
    fn device_features(&self) -> u64;
    fn num_queues(&self) -> usize;
    fn queue_max_size(&self) -> u16;
    /// Device-specific configuration (bytes beyond its length read 0).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// DRIVER_OK with these negotiated features.
    fn activate(&mut self, features: u64);
    /// Device reset.
    fn reset(&mut self);
    /// Handle one chain popped from queue `queue`; returns the number of bytes written into
    /// device-writable buffers (the used length). Malformed chains must still be completed
    /// (with an error status where the device type has one), never panic.
    fn process_chain(
        &mut self,
        queue: usize,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> u32;
    /// A short name for logs and counters ("virtio-blk").
    fn name(&self) -> &'static str;
    /// Where the backend counts malformed chains.
    fn set_stats(&mut self, _stats: Arc<VirtioStats>) {}
    /// Whether `queue` is an input queue: the device fills its buffers when host input
    /// arrives (virtio-net receiveq, virtio 1.2, 5.1.6.3), not when the driver kicks. Its
    /// chains reach [`process_chain`](Self::process_chain) only while input is staged.
    fn is_input_queue(&self, _queue: usize) -> bool {
        false
    }
    /// Stage the next host input for input queue `queue` unless one is already staged;
    /// false when the host has nothing now (never blocks).
    fn stage_input(&mut self, _queue: usize) -> bool {
        false
    }
    /// The driver cannot take input (before DRIVER_OK, NEEDS_RESET, queue not enabled):
    /// drop what the host has queued for `queue`, so its fd stops being readable. Returns
    /// how many units (frames) were dropped.
    fn discard_input(&mut self, _queue: usize) -> u64 {
        0
    }
    /// Host fds whose readability means input for an input queue, as (fd, queue).
    fn input_fds(&self) -> Vec<(RawFd, usize)> {
        Vec::new()
    }
}

/// What a transport does for the worker thread: expose the core and deliver interrupts.
pub trait VirtioTransport: Send {
    fn core(&mut self) -> &mut VirtioCore;
    /// Deliver queue `queue`'s used-buffer notification (MSI-X vector, INTx or MMIO line).
    fn signal_queue(&mut self, queue: usize);
    /// Deliver a configuration-change notification.
    fn signal_config(&mut self);
}

/// A driver's read of `data.len()` bytes at `offset` of a device configuration structure
/// whose current bytes are `config` (virtio 1.2, 2.5): bytes past its end read as zero, so an
/// out-of-range or overflowing offset is harmless.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = offset
            .checked_add(i as u64)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// The transport-independent device state.
pub struct VirtioCore {
    pub backend: Box<dyn VirtioBackend>,
    pub mem: GuestMemoryMmap,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub status: u8,
    pub config_generation: u8,
    pub queue_sel: u16,
    pub queues: Vec<Queue>,
    /// MSI-X vector per queue (PCI transport).
    pub queue_vectors: Vec<u16>,
    pub config_vector: u16,
    pub stats: Arc<VirtioStats>,
    /// Device resets so far (virtio 1.2, 2.1: status 0), so the device thread can drop
    /// state that belonged to the driver before the reset (moderation's held completions).
    pub resets: u64,
}

/// What servicing a queue asks the transport to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueResult {
    /// Used entries were added and the driver wants an interrupt.
    pub notify: bool,
    /// The device entered NEEDS_RESET: raise a configuration-change interrupt.
    pub config_changed: bool,
    /// Used entries added.
    pub completed: u32,
    /// (Input queues) host input is staged but the driver has no buffer for it: stop
    /// watching the input fds until the driver kicks this queue (notifications are enabled,
    /// so it will when it adds buffers).
    pub input_waiting: bool,
}

impl VirtioCore {
    pub fn new(mut backend: Box<dyn VirtioBackend>, mem: GuestMemoryMmap) -> Self {
        let stats = Arc::new(VirtioStats::default());
        backend.set_stats(stats.clone());
        let n = backend.num_queues();
        let max = backend.queue_max_size();
        let queues = (0..n)
            .map(|_| Queue::new(max).unwrap_or_else(|_| Queue::default()))
            .collect();
        Self {
            backend,
            mem,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            resets: 0,
            queue_sel: 0,
            queues,
            queue_vectors: vec![NO_VECTOR; n],
            config_vector: NO_VECTOR,
            stats,
        }
    }

    pub fn device_features(&self) -> u64 {
        self.backend.device_features()
    }

    /// The 32 feature bits selected by `device_features_sel`.
    pub fn device_features_word(&self) -> u32 {
        match self.device_features_sel {
            0 => self.device_features() as u32,
            1 => (self.device_features() >> 32) as u32,
            _ => 0,
        }
    }

    /// Driver writes 32 feature bits (only before FEATURES_OK, virtio 1.2, 3.1.1).
    pub fn write_driver_features(&mut self, val: u32) {
        if self.status & STATUS_FEATURES_OK != 0 {
            guest_warn!("virtio: driver feature write after FEATURES_OK ignored");
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xFFFF_FFFF) | u64::from(val),
            1 => {
                self.driver_features = (self.driver_features & 0xFFFF_FFFF) | (u64::from(val) << 32)
            }
            _ => {}
        }
    }

    pub fn driver_features_word(&self) -> u32 {
        match self.driver_features_sel {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        }
    }

    /// The selected queue, if it exists.
    pub fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(usize::from(self.queue_sel))
    }

    /// Queue fields may only change while the queue is not enabled and before DRIVER_OK.
    pub fn queue_writable(&self) -> bool {
        self.status & STATUS_DRIVER_OK == 0
    }

    /// Write the device status register (virtio 1.2, 2.1, 3.1.1). Returns true when the write
    /// was a reset (the transport then resets its own interrupt state).
    pub fn write_status(&mut self, val: u8) -> bool {
        if val == 0 {
            self.reset();
            return true;
        }
        let old = self.status;
        let mut new = val;
        if new & STATUS_FEATURES_OK != 0 && old & STATUS_FEATURES_OK == 0 {
            let offered = self.device_features();
            if self.driver_features & !offered != 0 || self.driver_features & F_VERSION_1 == 0 {
                guest_warn!(
                    "virtio: driver accepted features {:#x} not offered ({offered:#x}) or without VERSION_1; FEATURES_OK refused",
                    self.driver_features
                );
                new &= !STATUS_FEATURES_OK;
            }
        }
        if new & STATUS_DRIVER_OK != 0 && old & STATUS_DRIVER_OK == 0 {
            if new & STATUS_FEATURES_OK == 0 {
                guest_warn!("virtio: DRIVER_OK without FEATURES_OK");
            }
            let event_idx = self.driver_features & F_RING_EVENT_IDX != 0;
            for q in &mut self.queues {
                q.set_event_idx(event_idx);
            }
            self.backend.activate(self.driver_features);
        }
        // NEEDS_RESET is device-owned; the driver cannot set or clear it.
        self.status = (new & !STATUS_NEEDS_RESET) | (old & STATUS_NEEDS_RESET);
        false
    }

    pub fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_vectors.fill(NO_VECTOR);
        self.config_vector = NO_VECTOR;
        self.backend.reset();
        self.resets = self.resets.wrapping_add(1);
    }

    fn needs_reset(&mut self) -> QueueResult {
        if self.status & STATUS_NEEDS_RESET != 0 {
            return QueueResult::default();
        }
        self.status |= STATUS_NEEDS_RESET;
        self.config_generation = self.config_generation.wrapping_add(1);
        QueueResult {
            config_changed: true,
            ..QueueResult::default()
        }
    }

    /// Service queue `idx` after a kick: pop every available chain, let the backend complete
    /// it, add it to the used ring, then decide whether the driver wants an interrupt.
    pub fn process_queue(&mut self, idx: usize) -> QueueResult {
        VirtioStats::inc(&self.stats.kicks);
        if self.status & STATUS_DRIVER_OK == 0 || self.status & STATUS_NEEDS_RESET != 0 {
            guest_warn!(
                "virtio: notify on queue {idx} before DRIVER_OK or while NEEDS_RESET ignored"
            );
            return QueueResult::default();
        }
        let mem = self.mem.clone();
        let Some(q) = self.queues.get_mut(idx) else {
            guest_warn!("virtio: notify for nonexistent queue {idx} ignored");
            return QueueResult::default();
        };
        if !q.ready() {
            guest_warn!("virtio: notify on queue {idx} that is not enabled ignored");
            return QueueResult::default();
        }
        if !q.is_valid(&mem) {
            guest_warn!("virtio: queue {idx} has a bad size or ring addresses; device needs reset");
            return self.needs_reset();
        }
        if self.backend.is_input_queue(idx) {
            // The driver added receive buffers: deliver staged host input into them.
            return self.fill_input(idx);
        }
        let mut added = 0u32;
        while let Some(q) = self.queues.get_mut(idx) {
            if q.disable_notification(&mem).is_err() {
                return self.needs_reset();
            }
            let chains: Vec<DescriptorChain<&GuestMemoryMmap>> = match q.iter(&mem) {
                Ok(it) => it.collect(),
                Err(e) => {
                    guest_warn!("virtio: queue {idx} avail ring invalid ({e}); device needs reset");
                    return self.needs_reset();
                }
            };
            for chain in chains {
                let head = chain.head_index();
                let len = self.backend.process_chain(idx, chain, &mem);
                let Some(q) = self.queues.get_mut(idx) else {
                    break;
                };
                if let Err(e) = q.add_used(&mem, head, len) {
                    guest_warn!(
                        "virtio: queue {idx} used ring write failed ({e}); device needs reset"
                    );
                    return self.needs_reset();
                }
                added += 1;
                VirtioStats::inc(&self.stats.completions);
            }
            let Some(q) = self.queues.get_mut(idx) else {
                break;
            };
            match q.enable_notification(&mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(_) => return self.needs_reset(),
            }
        }
        self.finish(idx, added)
    }

    /// Decide the interrupt for `added` new used entries on queue `idx`.
    fn finish(&mut self, idx: usize, added: u32) -> QueueResult {
        if added == 0 {
            return QueueResult::default();
        }
        let notify = self.wants_interrupt(idx);
        if notify {
            VirtioStats::inc(&self.stats.notifications_needed);
        } else {
            VirtioStats::inc(&self.stats.suppressed);
        }
        QueueResult {
            notify,
            completed: added,
            ..QueueResult::default()
        }
    }

    /// Host input for input queue `idx` is readable (the worker saw its fd ready). When the
    /// driver cannot take it (no DRIVER_OK, NEEDS_RESET, queue not enabled or invalid) the
    /// input is dropped and counted, as a NIC drops frames while its driver is down; else it
    /// is delivered like [`fill_input`](Self::fill_input).
    pub fn input_ready(&mut self, idx: usize) -> QueueResult {
        let ready = self.status & STATUS_DRIVER_OK != 0
            && self.status & STATUS_NEEDS_RESET == 0
            && self
                .queues
                .get(idx)
                .is_some_and(|q| q.ready() && q.is_valid(&self.mem));
        if !ready {
            let n = self.backend.discard_input(idx);
            if n > 0 {
                self.stats.dropped.fetch_add(n, Ordering::Relaxed);
                log::debug!(
                    "{}: dropped {n} frames while the driver is not ready",
                    self.backend.name()
                );
            }
            return QueueResult::default();
        }
        self.fill_input(idx)
    }

    /// Deliver staged host input into queue `idx`: one chain per input unit, popped only
    /// when there is input (so no buffer is consumed for nothing). When input is staged but
    /// the ring is empty, notifications are enabled (virtio 1.2, 2.7.10: avail_event, or
    /// VRING_USED_F_NO_NOTIFY cleared) so the driver kicks when it refills, and the result
    /// says `input_waiting`: the input stays staged, nothing is dropped.
    fn fill_input(&mut self, idx: usize) -> QueueResult {
        let mem = self.mem.clone();
        let mut added = 0u32;
        let mut waiting = false;
        let mut rechecked = false;
        while self.backend.stage_input(idx) {
            let Some(q) = self.queues.get_mut(idx) else {
                break;
            };
            let chain = match q.iter(&mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    guest_warn!("virtio: queue {idx} avail ring invalid ({e}); device needs reset");
                    return self.needs_reset();
                }
            };
            let Some(chain) = chain else {
                match q.enable_notification(&mem) {
                    // Buffers arrived while enabling: go round again (once; an avail index
                    // that never yields a chain must not spin the device thread).
                    Ok(true) if !rechecked => {
                        rechecked = true;
                        continue;
                    }
                    Ok(_) => {
                        waiting = true;
                        break;
                    }
                    Err(_) => return self.needs_reset(),
                }
            };
            rechecked = false;
            let head = chain.head_index();
            let len = self.backend.process_chain(idx, chain, &mem);
            let Some(q) = self.queues.get_mut(idx) else {
                break;
            };
            if let Err(e) = q.add_used(&mem, head, len) {
                guest_warn!("virtio: queue {idx} used ring write failed ({e}); device needs reset");
                return self.needs_reset();
            }
            added += 1;
            VirtioStats::inc(&self.stats.completions);
        }
        let mut r = self.finish(idx, added);
        r.input_waiting = waiting;
        r
    }

    /// Whether the driver wants an interrupt for what was just added to queue `idx`:
    /// EVENT_IDX (used_event, 2.7.10) when negotiated, else VRING_AVAIL_F_NO_INTERRUPT.
    fn wants_interrupt(&mut self, idx: usize) -> bool {
        let mem = self.mem.clone();
        let Some(q) = self.queues.get_mut(idx) else {
            return false;
        };
        if q.event_idx_enabled() {
            return q.needs_notification(&mem).unwrap_or(true);
        }
        match mem.read_obj::<u16>(GuestAddress(q.avail_ring())) {
            Ok(flags) => u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT == 0,
            Err(_) => true,
        }
    }
}

#[cfg(test)]
mod config_tests {
    use super::read_config_bytes;

    #[test]
    fn config_reads_past_the_end_or_at_overflowing_offsets_are_zero() {
        let c = [1u8, 2, 3, 4];
        let mut d = [0xFFu8; 4];
        read_config_bytes(&c, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&c, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! A guest-memory virtqueue builder for tests.
    use super::*;
    use vm_memory::GuestMemoryMmap;

    pub const DESC: u64 = 0x1000;
    pub const AVAIL: u64 = 0x2000;
    pub const USED: u64 = 0x3000;
    pub const DATA: u64 = 0x10000;
    pub const MEM_SIZE: usize = 0x100000;

    pub fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    pub const F_NEXT: u16 = 1;
    pub const F_WRITE: u16 = 2;

    /// Write descriptor `i`.
    pub fn desc(mem: &GuestMemoryMmap, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let base = GuestAddress(DESC + u64::from(i) * 16);
        mem.write_obj(addr.to_le(), base).unwrap();
        mem.write_obj(len.to_le(), base.unchecked_add(8)).unwrap();
        mem.write_obj(flags.to_le(), base.unchecked_add(12))
            .unwrap();
        mem.write_obj(next.to_le(), base.unchecked_add(14)).unwrap();
    }

    /// Put `head` in avail ring slot `slot` and publish `idx`.
    pub fn avail(mem: &GuestMemoryMmap, slot: u16, head: u16, idx: u16) {
        mem.write_obj(head.to_le(), GuestAddress(AVAIL + 4 + 2 * u64::from(slot)))
            .unwrap();
        mem.write_obj(idx.to_le(), GuestAddress(AVAIL + 2)).unwrap();
    }

    pub fn set_avail_flags(mem: &GuestMemoryMmap, flags: u16) {
        mem.write_obj(flags.to_le(), GuestAddress(AVAIL)).unwrap();
    }

    /// used_event lives after the avail ring (2.7.6).
    pub fn set_used_event(mem: &GuestMemoryMmap, size: u16, v: u16) {
        mem.write_obj(v.to_le(), GuestAddress(AVAIL + 4 + 2 * u64::from(size)))
            .unwrap();
    }

    pub fn used_idx(mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap()
    }

    pub fn used_elem(mem: &GuestMemoryMmap, slot: u16) -> (u32, u32) {
        let a = GuestAddress(USED + 4 + 8 * u64::from(slot));
        (
            mem.read_obj::<u32>(a).unwrap(),
            mem.read_obj::<u32>(a.unchecked_add(4)).unwrap(),
        )
    }

    /// Configure queue 0 of `core` for the rings above and go to DRIVER_OK.
    pub fn activate(core: &mut VirtioCore, size: u16, features: u64) {
        core.write_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        core.driver_features = features;
        core.write_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        let q = core.selected().unwrap();
        q.set_size(size);
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        core.write_status(
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
    }

    use vm_memory::Address;
}
