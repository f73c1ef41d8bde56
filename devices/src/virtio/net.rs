//! virtio-net backed by a tap device (virtio 1.2, 5.1).
//!
//! Queues (5.1.2): 0 is receiveq1, 1 is transmitq1; no control queue, no multiqueue.
//! Features (5.1.3): VIRTIO_NET_F_MAC (the MAC in config space), VIRTIO_NET_F_STATUS (link
//! always up), plus VERSION_1, RING_EVENT_IDX and RING_INDIRECT_DESC. No checksum or
//! segmentation offloads and no MRG_RXBUF: every frame is complete, checksummed and fits in
//! one receive chain, and the 12-byte `virtio_net_hdr_v1` (5.1.6) carries nothing. The tap is
//! opened with a 12-byte vnet header of its own (see [`crate::tap`]); this device writes a
//! zeroed header to it on transmit and hands the driver a header with `num_buffers = 1`
//! (5.1.6.4) on receive, so no guest-controlled offload request ever reaches the host.
//!
//! Transmit (5.1.6.2): each chain is `header + frame`, device-readable only; it is gathered
//! and written to the tap as one frame, then completed with used length 0.
//!
//! Receive (5.1.6.3/5.1.6.4): an input queue (see [`super::VirtioBackend::is_input_queue`]).
//! When the tap is readable one frame is read into a staging buffer; a receive chain is
//! popped only for a staged frame. Without a receive buffer the frame stays staged and the
//! worker stops watching the tap until the driver kicks the receive queue, so nothing is
//! dropped and the device thread never spins. Frames are dropped (and counted in
//! `VirtioStats::dropped`) only when the driver is not ready (before DRIVER_OK, like a NIC
//! whose driver is down) or when a frame is larger than the chain offered for it.
//!
//! Descriptor chains are validated like virtio-blk's: every descriptor inside guest memory
//! and non-zero, the chain terminating (no loop, no next index past the table, not longer
//! than the queue), and the right direction (receive chains device-writable only, 2.7.4.2;
//! transmit chains device-readable only). A bad chain is completed with used length 0,
//! counted in `bad_chains` and logged rate-limited; a staged receive frame then waits for the
//! next chain.

use std::io::{Read, Write};
use std::os::unix::io::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use irqchip::guest_warn;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP};
use virtio_queue::{desc::split::Descriptor, DescriptorChain};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

use super::{VirtioBackend, VirtioStats, F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1};
use crate::tap::{FrameIo, VNET_HDR_LEN};

pub const VIRTIO_ID_NET: u32 = 1;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// Queue size offered.
pub const QUEUE_SIZE: u16 = 256;
/// Largest frame accepted either way: a 64 KiB IP datagram plus an Ethernet header with a
/// VLAN tag (taps with any MTU fit).
pub const MAX_FRAME_LEN: usize = 65535 + 18;
/// Device-specific configuration (5.1.4): mac[6], le16 status.
const CONFIG_LEN: usize = 8;
/// Frames drained per `discard_input` call, so a flooding host cannot hold the device
/// thread (the fd stays readable and the loop comes back).
const DISCARD_BATCH: u32 = 256;

/// A default MAC for device `index`: locally administered 52:54:00:12:34:(56 + index).
pub fn default_mac(index: usize) -> [u8; 6] {
    [
        0x52,
        0x54,
        0x00,
        0x12,
        0x34,
        0x56u8.wrapping_add(index as u8),
    ]
}

pub struct Net {
    port: Box<dyn FrameIo>,
    mac: [u8; 6],
    /// Receive staging: header + frame as read from the port.
    rx_buf: Vec<u8>,
    /// Length of the staged frame in `rx_buf` (header included), if one is staged.
    rx_len: Option<usize>,
    tx_buf: Vec<u8>,
    stats: Option<Arc<VirtioStats>>,
}

impl Net {
    pub fn new(port: Box<dyn FrameIo>, mac: [u8; 6]) -> Self {
        Self {
            port,
            mac,
            rx_buf: vec![0; VNET_HDR_LEN + MAX_FRAME_LEN],
            rx_len: None,
            tx_buf: vec![0; VNET_HDR_LEN + MAX_FRAME_LEN],
            stats: None,
        }
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn count(&self, f: impl Fn(&VirtioStats) -> &std::sync::atomic::AtomicU64) {
        if let Some(s) = &self.stats {
            f(s).fetch_add(1, Ordering::Relaxed);
        }
    }

    fn bad_chain(&self, what: &str, why: &str) {
        self.count(|s| &s.bad_chains);
        guest_warn!("virtio-net: malformed {what} chain ({why}); completed with length 0");
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c
    }

    /// Read one frame from the port into the staging buffer. Returns false when none is
    /// queued (or the port failed; logged).
    fn read_frame(&mut self) -> bool {
        loop {
            match self.port.recv(&mut self.rx_buf) {
                Ok(n) if n > VNET_HDR_LEN => {
                    self.rx_len = Some(n);
                    return true;
                }
                Ok(0) => return false,
                Ok(n) => {
                    // A tap never hands over less than its header; do not pass it on.
                    self.count(|s| &s.dropped);
                    guest_warn!(
                        "virtio-net: {}-byte read from {} is shorter than the vnet header; dropped",
                        n,
                        self.port.label()
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    guest_warn!("virtio-net: reading {} failed: {e}", self.port.label());
                    return false;
                }
            }
        }
    }

    fn receive(&mut self, chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> u32 {
        let Some(len) = self.rx_len else {
            // The core pops receive chains only for staged frames.
            return 0;
        };
        let room = match chain_bytes(&chain, mem, true) {
            Ok(n) => n,
            Err(why) => {
                self.bad_chain("receive", why);
                return 0;
            }
        };
        if room < len {
            self.rx_len = None;
            self.count(|s| &s.dropped);
            guest_warn!(
                "virtio-net: {len}-byte frame (with header) does not fit the driver's {room}-byte receive buffer; frame dropped"
            );
            return 0;
        }
        let mut writer = match chain.writer(mem) {
            Ok(w) => w,
            Err(_) => {
                self.bad_chain("receive", "unusable buffer");
                return 0;
            }
        };
        // 5.1.6.4: no offloads negotiated, so flags, gso_type and the checksum fields are 0;
        // num_buffers is 1 without VIRTIO_NET_F_MRG_RXBUF.
        let mut hdr = [0u8; VNET_HDR_LEN];
        hdr[10..12].copy_from_slice(&1u16.to_le_bytes());
        let frame = self.rx_buf.get(VNET_HDR_LEN..len).unwrap_or(&[]);
        if writer.write_all(&hdr).is_err() || writer.write_all(frame).is_err() {
            self.bad_chain("receive", "write into guest memory failed");
            return 0;
        }
        self.rx_len = None;
        log::trace!("virtio-net: received {} bytes", len - VNET_HDR_LEN);
        len as u32
    }

    fn transmit(&mut self, chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> u32 {
        let len = match chain_bytes(&chain, mem, false) {
            Ok(n) => n,
            Err(why) => {
                self.bad_chain("transmit", why);
                return 0;
            }
        };
        if len <= VNET_HDR_LEN || len > self.tx_buf.len() {
            self.bad_chain(
                "transmit",
                "not a 12-byte header plus a frame of at most 64 KiB",
            );
            return 0;
        }
        let mut reader = match chain.reader(mem) {
            Ok(r) => r,
            Err(_) => {
                self.bad_chain("transmit", "unusable buffer");
                return 0;
            }
        };
        let Some(buf) = self.tx_buf.get_mut(..len) else {
            return 0;
        };
        if reader.read_exact(buf).is_err() {
            self.bad_chain("transmit", "read from guest memory failed");
            return 0;
        }
        // Offloads are off: whatever the driver put in its header is not passed on.
        if let Some(h) = buf.get_mut(..VNET_HDR_LEN) {
            h.fill(0);
        }
        match self.port.send(buf) {
            Ok(n) if n == len => log::trace!("virtio-net: sent {} bytes", len - VNET_HDR_LEN),
            Ok(n) => {
                self.count(|s| &s.dropped);
                guest_warn!(
                    "virtio-net: short write to {} ({n} of {len} bytes)",
                    self.port.label()
                );
            }
            Err(e) => {
                // EIO: the tap is down; EAGAIN: its queue is full. A NIC drops then too.
                self.count(|s| &s.dropped);
                guest_warn!(
                    "virtio-net: writing a frame to {} failed: {e}; frame dropped",
                    self.port.label()
                );
            }
        }
        0
    }
}

/// Total bytes of `chain` if it is well formed with every descriptor `writable` (receive)
/// or device-readable (transmit); see the module documentation.
pub(crate) fn chain_bytes(
    chain: &DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    writable: bool,
) -> Result<usize, &'static str> {
    let descs: Vec<Descriptor> = chain.clone().collect();
    let Some(last) = descs.last() else {
        return Err("no readable descriptor");
    };
    // The iterator stops early (loop or longer than the queue, next index past the table)
    // while the last descriptor it yielded still says NEXT.
    if last.has_next() {
        return Err("loops, is longer than the queue, or points past the descriptor table");
    }
    let mut total = 0usize;
    for d in &descs {
        if d.len() == 0 {
            return Err("zero-length descriptor");
        }
        if !GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize) {
            return Err("descriptor outside guest memory");
        }
        if d.is_write_only() != writable {
            return Err(if writable {
                "device-readable descriptor in a receive chain"
            } else {
                "device-writable descriptor in a transmit chain"
            });
        }
        total = total.saturating_add(d.len() as usize);
    }
    Ok(total)
}

impl VirtioBackend for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn device_features(&self) -> u64 {
        F_VERSION_1
            | F_RING_EVENT_IDX
            | F_RING_INDIRECT_DESC
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_STATUS
    }

    fn num_queues(&self) -> usize {
        2
    }

    fn queue_max_size(&self) -> u16 {
        QUEUE_SIZE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // 5.1.4.2: a VERSION_1 driver must not write the configuration (mac is legacy-only
        // writable).
        guest_warn!(
            "virtio-net: {}-byte write to read-only config at {offset:#x} ignored",
            data.len()
        );
    }

    fn activate(&mut self, _features: u64) {}

    fn reset(&mut self) {
        if self.rx_len.take().is_some() {
            self.count(|s| &s.dropped);
        }
    }

    fn process_chain(
        &mut self,
        queue: usize,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> u32 {
        match queue {
            RX_QUEUE => self.receive(chain, mem),
            TX_QUEUE => self.transmit(chain, mem),
            _ => 0,
        }
    }

    fn name(&self) -> &'static str {
        "virtio-net"
    }

    fn set_stats(&mut self, stats: Arc<VirtioStats>) {
        self.stats = Some(stats);
    }

    fn is_input_queue(&self, queue: usize) -> bool {
        queue == RX_QUEUE
    }

    fn stage_input(&mut self, queue: usize) -> bool {
        queue == RX_QUEUE && (self.rx_len.is_some() || self.read_frame())
    }

    fn discard_input(&mut self, queue: usize) -> u64 {
        if queue != RX_QUEUE {
            return 0;
        }
        let mut n = u64::from(self.rx_len.take().is_some());
        for _ in 0..DISCARD_BATCH {
            if !self.read_frame() {
                break;
            }
            self.rx_len = None;
            n += 1;
        }
        n
    }

    fn input_fds(&self) -> Vec<(RawFd, usize)> {
        vec![(self.port.fd(), RX_QUEUE)]
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{self, F_NEXT, F_WRITE};
    use super::super::*;
    use super::*;
    use std::os::unix::io::AsRawFd;
    use std::os::unix::net::UnixDatagram;
    use vm_memory::{Bytes, GuestAddress};

    /// A tap stand-in: a datagram socket pair keeps frame boundaries like a tap does.
    struct FakeTap(UnixDatagram);

    impl FrameIo for FakeTap {
        fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.recv(buf)
        }
        fn send(&mut self, frame: &[u8]) -> std::io::Result<usize> {
            self.0.send(frame)
        }
        fn fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
        fn label(&self) -> String {
            "fake tap".into()
        }
    }

    /// Rings: rx uses testutil's (DESC/AVAIL/USED), tx its own.
    const TX_DESC: u64 = 0x4000;
    const TX_AVAIL: u64 = 0x5000;
    const TX_USED: u64 = 0x6000;
    const SIZE: u16 = 16;
    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xAB, 0xCD, 0xEF];

    struct Rig {
        core: VirtioCore,
        mem: GuestMemoryMmap,
        host: UnixDatagram,
    }

    fn rig_with(features: u64, driver_ok: bool) -> Rig {
        let (dev, host) = UnixDatagram::pair().unwrap();
        dev.set_nonblocking(true).unwrap();
        host.set_nonblocking(true).unwrap();
        let mem = testutil::mem();
        let mut core =
            VirtioCore::new(Box::new(Net::new(Box::new(FakeTap(dev)), MAC)), mem.clone());
        if driver_ok {
            core.queue_sel = 1;
            let q = core.selected().unwrap();
            q.set_size(SIZE);
            q.set_desc_table_address(Some(TX_DESC as u32), Some(0));
            q.set_avail_ring_address(Some(TX_AVAIL as u32), Some(0));
            q.set_used_ring_address(Some(TX_USED as u32), Some(0));
            q.set_ready(true);
            core.queue_sel = 0;
            testutil::activate(&mut core, SIZE, features);
        }
        Rig { core, mem, host }
    }

    fn rig() -> Rig {
        rig_with(F_VERSION_1, true)
    }

    fn tx_desc(mem: &GuestMemoryMmap, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let base = GuestAddress(TX_DESC + u64::from(i) * 16);
        mem.write_obj(addr, base).unwrap();
        mem.write_obj(len, GuestAddress(base.0 + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(base.0 + 12)).unwrap();
        mem.write_obj(next, GuestAddress(base.0 + 14)).unwrap();
    }

    fn tx_avail(mem: &GuestMemoryMmap, slot: u16, head: u16, idx: u16) {
        mem.write_obj(head, GuestAddress(TX_AVAIL + 4 + 2 * u64::from(slot)))
            .unwrap();
        mem.write_obj(idx, GuestAddress(TX_AVAIL + 2)).unwrap();
    }

    fn tx_used(mem: &GuestMemoryMmap, slot: u16) -> (u16, u32, u32) {
        let a = TX_USED + 4 + 8 * u64::from(slot);
        (
            mem.read_obj(GuestAddress(TX_USED + 2)).unwrap(),
            mem.read_obj(GuestAddress(a)).unwrap(),
            mem.read_obj(GuestAddress(a + 4)).unwrap(),
        )
    }

    const HDR: u64 = testutil::DATA;
    const PAYLOAD: u64 = testutil::DATA + 0x100;
    const RXBUF: u64 = testutil::DATA + 0x10000;

    fn frame(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
    }

    /// Host -> device: header (as a tap would write it) + frame.
    fn host_send(r: &Rig, f: &[u8]) {
        let mut b = vec![0u8; VNET_HDR_LEN];
        b.extend_from_slice(f);
        r.host.send(&b).unwrap();
    }

    /// Post a single-descriptor receive buffer of `len` bytes at RXBUF + slot * 0x1000.
    fn post_rx(r: &Rig, slot: u16, len: u32) {
        testutil::desc(
            &r.mem,
            slot,
            RXBUF + u64::from(slot) * 0x1000,
            len,
            F_WRITE,
            0,
        );
        testutil::avail(&r.mem, slot, slot, slot + 1);
    }

    fn rx_bytes(r: &Rig, slot: u16, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        r.mem
            .read_slice(&mut b, GuestAddress(RXBUF + u64::from(slot) * 0x1000))
            .unwrap();
        b
    }

    fn stat(r: &Rig, f: impl Fn(&VirtioStats) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(&r.core.stats).load(Ordering::Relaxed)
    }

    #[test]
    fn transmit_chain_reaches_the_tap_as_one_frame_with_a_zeroed_header() {
        let mut r = rig();
        let f = frame(60, 1);
        // The driver's header asks for a checksum offload that was not negotiated.
        r.mem
            .write_slice(&[1u8; VNET_HDR_LEN], GuestAddress(HDR))
            .unwrap();
        r.mem.write_slice(&f[..20], GuestAddress(PAYLOAD)).unwrap();
        r.mem
            .write_slice(&f[20..], GuestAddress(PAYLOAD + 0x100))
            .unwrap();
        tx_desc(&r.mem, 0, HDR, VNET_HDR_LEN as u32, F_NEXT, 1);
        tx_desc(&r.mem, 1, PAYLOAD, 20, F_NEXT, 2);
        tx_desc(&r.mem, 2, PAYLOAD + 0x100, 40, 0, 0);
        tx_avail(&r.mem, 0, 0, 1);
        let q = r.core.process_queue(TX_QUEUE);
        assert_eq!((q.completed, q.notify), (1, true));
        let mut got = [0u8; 200];
        let n = r.host.recv(&mut got).unwrap();
        assert_eq!(n, VNET_HDR_LEN + 60);
        assert_eq!(&got[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN]);
        assert_eq!(&got[VNET_HDR_LEN..n], &f[..]);
        assert_eq!(tx_used(&r.mem, 0), (1, 0, 0));
    }

    #[test]
    fn transmit_chain_with_a_device_writable_descriptor_is_dropped_with_length_zero() {
        let mut r = rig();
        tx_desc(&r.mem, 0, HDR, VNET_HDR_LEN as u32, F_NEXT, 1);
        tx_desc(&r.mem, 1, PAYLOAD, 60, F_WRITE, 0);
        tx_avail(&r.mem, 0, 0, 1);
        r.core.process_queue(TX_QUEUE);
        assert_eq!(tx_used(&r.mem, 0), (1, 0, 0));
        assert_eq!(stat(&r, |s| &s.bad_chains), 1);
        assert!(
            r.host.recv(&mut [0u8; 100]).is_err(),
            "nothing reached the tap"
        );
    }

    #[test]
    fn transmit_chain_no_longer_than_the_header_is_dropped() {
        let mut r = rig();
        tx_desc(&r.mem, 0, HDR, VNET_HDR_LEN as u32, 0, 0);
        tx_avail(&r.mem, 0, 0, 1);
        r.core.process_queue(TX_QUEUE);
        assert_eq!(stat(&r, |s| &s.bad_chains), 1);
        assert!(r.host.recv(&mut [0u8; 100]).is_err());
    }

    #[test]
    fn looping_transmit_chain_is_dropped_and_the_next_one_still_sent() {
        let mut r = rig();
        tx_desc(&r.mem, 0, HDR, VNET_HDR_LEN as u32, F_NEXT, 1);
        tx_desc(&r.mem, 1, PAYLOAD, 60, F_NEXT, 0);
        tx_desc(&r.mem, 2, HDR, VNET_HDR_LEN as u32, F_NEXT, 3);
        tx_desc(&r.mem, 3, PAYLOAD, 60, 0, 0);
        tx_avail(&r.mem, 0, 0, 1);
        tx_avail(&r.mem, 1, 2, 2);
        let q = r.core.process_queue(TX_QUEUE);
        assert_eq!(q.completed, 2);
        assert_eq!(stat(&r, |s| &s.bad_chains), 1);
        assert_eq!(r.host.recv(&mut [0u8; 200]).unwrap(), VNET_HDR_LEN + 60);
        assert!(r.host.recv(&mut [0u8; 200]).is_err(), "exactly one frame");
    }

    #[test]
    fn transmit_descriptor_outside_guest_memory_is_dropped() {
        let mut r = rig();
        tx_desc(&r.mem, 0, HDR, VNET_HDR_LEN as u32, F_NEXT, 1);
        tx_desc(&r.mem, 1, testutil::MEM_SIZE as u64 - 10, 60, 0, 0);
        tx_avail(&r.mem, 0, 0, 1);
        r.core.process_queue(TX_QUEUE);
        assert_eq!(tx_used(&r.mem, 0), (1, 0, 0));
        assert_eq!(stat(&r, |s| &s.bad_chains), 1);
    }

    #[test]
    fn received_frame_fills_one_buffer_with_header_and_num_buffers_one() {
        let mut r = rig();
        post_rx(&r, 0, 2048);
        let f = frame(1514, 9);
        host_send(&r, &f);
        let q = r.core.input_ready(RX_QUEUE);
        assert_eq!((q.completed, q.notify, q.input_waiting), (1, true, false));
        let got = rx_bytes(&r, 0, VNET_HDR_LEN + f.len());
        let mut want_hdr = [0u8; VNET_HDR_LEN];
        want_hdr[10] = 1;
        assert_eq!(&got[..VNET_HDR_LEN], &want_hdr);
        assert_eq!(&got[VNET_HDR_LEN..], &f[..]);
        assert_eq!(
            testutil::used_elem(&r.mem, 0),
            (0, (VNET_HDR_LEN + f.len()) as u32)
        );
    }

    #[test]
    fn received_frame_with_no_interrupt_flag_raises_no_interrupt() {
        let mut r = rig();
        testutil::set_avail_flags(&r.mem, 1);
        post_rx(&r, 0, 2048);
        host_send(&r, &frame(64, 0));
        let q = r.core.input_ready(RX_QUEUE);
        assert_eq!((q.completed, q.notify), (1, false));
        assert_eq!(stat(&r, |s| &s.suppressed), 1);
    }

    #[test]
    fn event_idx_interrupts_only_when_the_receive_used_event_is_crossed() {
        let mut r = rig_with(F_VERSION_1 | F_RING_EVENT_IDX, true);
        // used_event = 1: an interrupt after the second frame, not the first.
        testutil::set_used_event(&r.mem, SIZE, 1);
        post_rx(&r, 0, 2048);
        host_send(&r, &frame(64, 0));
        assert!(!r.core.input_ready(RX_QUEUE).notify);
        post_rx(&r, 1, 2048);
        host_send(&r, &frame(64, 1));
        assert!(r.core.input_ready(RX_QUEUE).notify);
    }

    #[test]
    fn frame_without_a_receive_buffer_waits_and_is_delivered_after_the_refill_kick() {
        let mut r = rig();
        let f = frame(100, 3);
        host_send(&r, &f);
        let q = r.core.input_ready(RX_QUEUE);
        assert!(
            q.input_waiting,
            "stop watching the tap until the driver refills"
        );
        assert_eq!(q.completed, 0);
        assert_eq!(testutil::used_idx(&r.mem), 0);
        post_rx(&r, 0, 2048);
        let q = r.core.process_queue(RX_QUEUE);
        assert_eq!((q.completed, q.input_waiting), (1, false));
        assert_eq!(&rx_bytes(&r, 0, VNET_HDR_LEN + 100)[VNET_HDR_LEN..], &f[..]);
        assert_eq!(stat(&r, |s| &s.dropped), 0);
    }

    #[test]
    fn rx_kick_with_an_empty_tap_consumes_no_buffer() {
        let mut r = rig();
        post_rx(&r, 0, 2048);
        let q = r.core.process_queue(RX_QUEUE);
        assert_eq!((q.completed, q.input_waiting), (0, false));
        assert_eq!(testutil::used_idx(&r.mem), 0);
        host_send(&r, &frame(64, 0));
        assert_eq!(
            r.core.input_ready(RX_QUEUE).completed,
            1,
            "the buffer is still there"
        );
    }

    #[test]
    fn starving_with_event_idx_asks_for_a_kick_at_the_next_buffer() {
        let mut r = rig_with(F_VERSION_1 | F_RING_EVENT_IDX, true);
        post_rx(&r, 0, 2048);
        host_send(&r, &frame(64, 0));
        host_send(&r, &frame(64, 1));
        let q = r.core.input_ready(RX_QUEUE);
        assert_eq!((q.completed, q.input_waiting), (1, true));
        // avail_event (after the used ring, 2.7.10) = next_avail = 1.
        let avail_event: u16 = r
            .mem
            .read_obj(GuestAddress(testutil::USED + 4 + 8 * u64::from(SIZE)))
            .unwrap();
        assert_eq!(avail_event, 1);
    }

    #[test]
    fn device_readable_receive_chain_is_dropped_and_the_frame_goes_to_the_next_chain() {
        let mut r = rig();
        testutil::desc(&r.mem, 0, RXBUF, 2048, 0, 0);
        testutil::avail(&r.mem, 0, 0, 1);
        testutil::desc(&r.mem, 1, RXBUF + 0x1000, 2048, F_WRITE, 0);
        testutil::avail(&r.mem, 1, 1, 2);
        let f = frame(80, 5);
        host_send(&r, &f);
        let q = r.core.input_ready(RX_QUEUE);
        assert_eq!(q.completed, 2);
        assert_eq!(testutil::used_elem(&r.mem, 0), (0, 0));
        assert_eq!(
            testutil::used_elem(&r.mem, 1),
            (1, (VNET_HDR_LEN + 80) as u32)
        );
        assert_eq!(&rx_bytes(&r, 1, VNET_HDR_LEN + 80)[VNET_HDR_LEN..], &f[..]);
        assert_eq!(stat(&r, |s| &s.bad_chains), 1);
    }

    #[test]
    fn receive_descriptor_outside_guest_memory_is_dropped_without_writing() {
        let mut r = rig();
        testutil::desc(&r.mem, 0, testutil::MEM_SIZE as u64 - 100, 2048, F_WRITE, 0);
        testutil::avail(&r.mem, 0, 0, 1);
        host_send(&r, &frame(80, 5));
        let q = r.core.input_ready(RX_QUEUE);
        assert_eq!((q.completed, q.input_waiting), (1, true));
        assert_eq!(testutil::used_elem(&r.mem, 0), (0, 0));
    }

    #[test]
    fn frame_larger_than_the_receive_buffer_is_dropped_and_counted() {
        let mut r = rig();
        post_rx(&r, 0, 100);
        host_send(&r, &frame(200, 0));
        let q = r.core.input_ready(RX_QUEUE);
        assert_eq!(q.completed, 1);
        assert_eq!(testutil::used_elem(&r.mem, 0), (0, 0));
        assert_eq!(stat(&r, |s| &s.dropped), 1);
        post_rx(&r, 1, 2048);
        host_send(&r, &frame(60, 0));
        assert_eq!(r.core.input_ready(RX_QUEUE).completed, 1);
        assert_eq!(
            testutil::used_elem(&r.mem, 1),
            (1, (VNET_HDR_LEN + 60) as u32)
        );
    }

    #[test]
    fn frames_before_driver_ok_are_drained_and_counted() {
        let mut r = rig_with(F_VERSION_1, false);
        host_send(&r, &frame(60, 0));
        host_send(&r, &frame(60, 1));
        let q = r.core.input_ready(RX_QUEUE);
        assert_eq!(q, QueueResult::default());
        assert_eq!(stat(&r, |s| &s.dropped), 2);
        r.core.input_ready(RX_QUEUE);
        assert_eq!(stat(&r, |s| &s.dropped), 2, "both were drained at once");
    }

    #[test]
    fn config_space_holds_the_mac_and_link_up() {
        let r = rig();
        let mut c = [0u8; 8];
        r.core.backend.read_config(0, &mut c);
        assert_eq!(&c[..6], &MAC);
        assert_eq!(u16::from_le_bytes([c[6], c[7]]), 1);
        let mut beyond = [0xFFu8; 4];
        r.core.backend.read_config(8, &mut beyond);
        assert_eq!(beyond, [0; 4]);
    }

    #[test]
    fn offers_mac_status_and_version_1_and_two_queues() {
        let r = rig();
        let f = r.core.device_features();
        assert_ne!(f & (1 << VIRTIO_NET_F_MAC), 0);
        assert_ne!(f & (1 << VIRTIO_NET_F_STATUS), 0);
        assert_ne!(f & F_VERSION_1, 0);
        assert_eq!(r.core.queues.len(), 2);
        assert_eq!(r.core.backend.input_fds().len(), 1);
    }

    #[test]
    fn reset_drops_a_staged_frame() {
        let mut r = rig();
        host_send(&r, &frame(60, 0));
        assert!(r.core.input_ready(RX_QUEUE).input_waiting);
        r.core.write_status(0);
        assert_eq!(stat(&r, |s| &s.dropped), 1);
    }
}
