//! virtio-blk backed by a raw file (virtio 1.2, 5.2).
//!
//! Requests (5.2.6): a 16-byte device-readable header `{le32 type, le32 reserved, le64
//! sector}`, then data (device-readable for OUT, device-writable for IN and GET_ID), then one
//! device-writable status byte. Supported: IN, OUT, FLUSH (fsync, 5.2.6.2: acknowledged
//! writes survive a VMM kill), GET_ID (20 bytes). Others complete with UNSUPP.
//!
//! Every chain is validated before any I/O: each descriptor lies in guest memory and is not
//! zero-length, device-readable descriptors precede device-writable ones (2.7.4.2), and the
//! chain ends (no loop, no next index past the table, not longer than the queue). A chain
//! that fails this gets VIRTIO_BLK_S_IOERR in its last byte when that byte is a valid
//! device-writable location, and is completed with used length 0 otherwise. Host I/O errors
//! and requests past the end of the disk also get IOERR; writes to a read-only disk get
//! IOERR (5.2.6.2 with VIRTIO_BLK_F_RO).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use irqchip::guest_warn;
use virtio_queue::{desc::split::Descriptor, DescriptorChain, Reader, Writer};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{VirtioBackend, VirtioStats, F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1};

pub const VIRTIO_ID_BLOCK: u32 = 2;
pub const SECTOR_SIZE: u64 = 512;

/// Feature bits (5.2.3).
pub const F_SEG_MAX: u64 = 1 << 2;
pub const F_RO: u64 = 1 << 5;
pub const F_BLK_SIZE: u64 = 1 << 6;
pub const F_FLUSH: u64 = 1 << 9;

/// Request types and statuses (5.2.6).
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

/// Length of the GET_ID string.
pub const ID_BYTES: usize = 20;
/// Queue size offered.
pub const QUEUE_SIZE: u16 = 256;
/// Largest single request accepted (bytes), to bound the bounce buffer.
const MAX_REQUEST_BYTES: usize = 4 << 20;

/// The block device configuration.
#[derive(Debug)]
pub struct BlockConfig {
    pub file: File,
    pub readonly: bool,
    /// Serial returned by GET_ID (truncated to 20 bytes).
    pub id: String,
}

pub struct Block {
    file: File,
    readonly: bool,
    id: [u8; ID_BYTES],
    capacity: u64,
    flush_negotiated: bool,
    /// Offer VIRTIO_RING_F_EVENT_IDX (2.7.10); on unless [`Block::set_event_idx`] says off.
    event_idx: bool,
    stats: Option<Arc<VirtioStats>>,
}

impl Block {
    pub fn new(cfg: BlockConfig) -> std::io::Result<Self> {
        let len = cfg.file.metadata()?.len();
        let mut id = [0u8; ID_BYTES];
        for (d, s) in id.iter_mut().zip(cfg.id.bytes()) {
            *d = s;
        }
        Ok(Self {
            file: cfg.file,
            readonly: cfg.readonly,
            id,
            capacity: len / SECTOR_SIZE,
            flush_negotiated: false,
            event_idx: true,
            stats: None,
        })
    }

    /// Whether to offer VIRTIO_RING_F_EVENT_IDX (virtio 1.2, 2.7.10). Off leaves the driver
    /// with VRING_AVAIL_F_NO_INTERRUPT (2.7.7) as its only suppression, for measuring what
    /// used_event saves.
    pub fn set_event_idx(&mut self, offered: bool) {
        self.event_idx = offered;
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn config_bytes(&self) -> [u8; 24] {
        let mut c = [0u8; 24];
        c[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        // size_max (8) unused; seg_max (12).
        c[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        // geometry (16..20) unused; blk_size (20).
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        c
    }

    fn bad_chain(&self) {
        if let Some(s) = &self.stats {
            s.bad_chains.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn execute(
        &mut self,
        req_type: u32,
        sector: u64,
        reader: &mut Reader<'_>,
        data: &mut Writer<'_>,
    ) -> u8 {
        match req_type {
            T_IN => {
                let len = data.available_bytes();
                let Some(off) = self.check_range(sector, len) else {
                    return S_IOERR;
                };
                let mut buf = vec![0u8; len];
                if let Err(e) = self.file.read_exact_at(&mut buf, off) {
                    guest_warn!("virtio-blk: read of {len} bytes at {off:#x} failed: {e}");
                    return S_IOERR;
                }
                match data.write_all(&buf) {
                    Ok(()) => S_OK,
                    Err(_) => S_IOERR,
                }
            }
            T_OUT => {
                if self.readonly {
                    return S_IOERR;
                }
                let len = reader.available_bytes();
                let Some(off) = self.check_range(sector, len) else {
                    return S_IOERR;
                };
                let mut buf = vec![0u8; len];
                if reader.read_exact(&mut buf).is_err() {
                    return S_IOERR;
                }
                if let Err(e) = self.file.write_all_at(&buf, off) {
                    guest_warn!("virtio-blk: write of {len} bytes at {off:#x} failed: {e}");
                    return S_IOERR;
                }
                // Without FLUSH the device must be write-through (5.2.6.2).
                if !self.flush_negotiated {
                    if let Err(e) = self.file.sync_data() {
                        guest_warn!("virtio-blk: fdatasync failed: {e}");
                        return S_IOERR;
                    }
                }
                S_OK
            }
            T_FLUSH => match self.file.sync_all() {
                Ok(()) => S_OK,
                Err(e) => {
                    guest_warn!("virtio-blk: fsync failed: {e}");
                    S_IOERR
                }
            },
            T_GET_ID => {
                let n = data.available_bytes().min(ID_BYTES);
                match data.write_all(&self.id[..n]) {
                    Ok(()) => S_OK,
                    Err(_) => S_IOERR,
                }
            }
            _ => S_UNSUPP,
        }
    }

    /// Byte offset of a `len`-byte transfer at `sector`, if it is whole sectors on the disk.
    fn check_range(&self, sector: u64, len: usize) -> Option<u64> {
        let len = len as u64;
        if !len.is_multiple_of(SECTOR_SIZE) || len as usize > MAX_REQUEST_BYTES {
            guest_warn!("virtio-blk: {len}-byte transfer is not whole sectors or too large");
            return None;
        }
        let end = sector.checked_add(len / SECTOR_SIZE)?;
        if end > self.capacity {
            guest_warn!("virtio-blk: transfer at sector {sector} runs past the disk end");
            return None;
        }
        sector.checked_mul(SECTOR_SIZE)
    }
}

/// What validating a chain found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChainCheck {
    Ok,
    /// Malformed; the last descriptor's last byte, if it is usable as a status byte.
    Bad(Option<GuestAddress>),
}

/// Validate the structure of `chain` (see the module documentation).
pub(crate) fn check_chain(
    chain: &DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
) -> ChainCheck {
    let descs: Vec<Descriptor> = chain.clone().collect();
    let Some(last) = descs.last() else {
        return ChainCheck::Bad(None);
    };
    let status_at = |d: &Descriptor| -> Option<GuestAddress> {
        if !d.is_write_only() || d.len() == 0 {
            return None;
        }
        let a = d.addr().0.checked_add(u64::from(d.len()) - 1)?;
        GuestMemoryBackend::check_range(mem, GuestAddress(a), 1).then_some(GuestAddress(a))
    };
    // The iterator stops early (ttl exhausted = loop or too long, next index past the table,
    // unreadable descriptor) while the last descriptor it yielded still says NEXT.
    if last.has_next() {
        return ChainCheck::Bad(None);
    }
    let mut seen_writable = false;
    for d in &descs {
        if d.len() == 0 || !GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize) {
            return ChainCheck::Bad(status_at(last));
        }
        if d.is_write_only() {
            seen_writable = true;
        } else if seen_writable {
            return ChainCheck::Bad(status_at(last));
        }
    }
    if status_at(last).is_none() {
        return ChainCheck::Bad(None);
    }
    ChainCheck::Ok
}

impl VirtioBackend for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn device_features(&self) -> u64 {
        let mut f = F_VERSION_1 | F_RING_INDIRECT_DESC | F_SEG_MAX | F_BLK_SIZE | F_FLUSH;
        if self.event_idx {
            f |= F_RING_EVENT_IDX;
        }
        if self.readonly {
            f |= F_RO;
        }
        f
    }

    fn num_queues(&self) -> usize {
        1
    }

    fn queue_max_size(&self) -> u16 {
        QUEUE_SIZE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        guest_warn!(
            "virtio-blk: {}-byte write to read-only config at {offset:#x} ignored",
            data.len()
        );
    }

    fn activate(&mut self, features: u64) {
        self.flush_negotiated = features & F_FLUSH != 0;
    }

    fn reset(&mut self) {
        self.flush_negotiated = false;
    }

    fn process_chain(
        &mut self,
        _queue: usize,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> u32 {
        match check_chain(&chain, mem) {
            ChainCheck::Ok => {}
            ChainCheck::Bad(status) => {
                self.bad_chain();
                guest_warn!("virtio-blk: malformed descriptor chain; request fails with IOERR");
                return match status {
                    Some(a) if mem.write_obj(S_IOERR, a).is_ok() => 1,
                    _ => 0,
                };
            }
        }
        let (mut reader, mut writer) = match (chain.clone().reader(mem), chain.writer(mem)) {
            (Ok(r), Ok(w)) => (r, w),
            _ => {
                self.bad_chain();
                return 0;
            }
        };
        let wlen = writer.available_bytes();
        // wlen >= 1: check_chain verified a writable last byte.
        let mut status_w = match writer.split_at(wlen.saturating_sub(1)) {
            Ok(s) => s,
            Err(_) => return 0,
        };
        let header: Result<[u8; 16], _> = reader.read_obj();
        let status = match header {
            Ok(h) => {
                let mut t = [0u8; 4];
                t.copy_from_slice(&h[0..4]);
                let mut s = [0u8; 8];
                s.copy_from_slice(&h[8..16]);
                let req_type = u32::from_le_bytes(t);
                let sector = u64::from_le_bytes(s);
                log::debug!(
                    "virtio-blk: request type {req_type} sector {sector}, {} bytes in, {} out",
                    reader.available_bytes(),
                    writer.available_bytes()
                );
                self.execute(req_type, sector, &mut reader, &mut writer)
            }
            Err(_) => {
                self.bad_chain();
                guest_warn!("virtio-blk: request header shorter than 16 bytes");
                S_IOERR
            }
        };
        log::debug!(
            "virtio-blk: request done, status {status}, {} bytes to the driver",
            writer.bytes_written()
        );
        if status_w.write_all(&[status]).is_err() {
            return 0;
        }
        (writer.bytes_written() + 1) as u32
    }

    fn name(&self) -> &'static str {
        "virtio-blk"
    }

    fn set_stats(&mut self, stats: Arc<VirtioStats>) {
        self.stats = Some(stats);
    }
}

/// An unlinked temporary file of `len` bytes for device tests (one per thread and tag).
#[cfg(test)]
pub(crate) fn test_file(tag: &str, len: u64) -> File {
    let p = std::env::temp_dir().join(format!(
        "irqvm-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.set_len(len).unwrap();
    let _ = std::fs::remove_file(&p);
    f
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;
    use super::*;
    use std::io::Seek;

    fn disk(bytes: &[u8], readonly: bool) -> (Block, File) {
        let mut f = tempfile();
        f.write_all(bytes).unwrap();
        f.rewind().unwrap();
        let g = f.try_clone().unwrap();
        (
            Block::new(BlockConfig {
                file: f,
                readonly,
                id: "irqvm-test".into(),
            })
            .unwrap(),
            g,
        )
    }

    fn tempfile() -> File {
        super::test_file("blk", 0)
    }

    const HDR: u64 = DATA;
    const BUF: u64 = DATA + 0x1000;
    const STATUS: u64 = DATA + 0x3000;

    fn header(mem: &GuestMemoryMmap, t: u32, sector: u64) {
        mem.write_obj(t.to_le(), GuestAddress(HDR)).unwrap();
        mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        mem.write_obj(sector.to_le(), GuestAddress(HDR + 8))
            .unwrap();
    }

    fn core_with(block: Block, mem: &GuestMemoryMmap, features: u64) -> VirtioCore {
        let mut core = VirtioCore::new(Box::new(block), mem.clone());
        activate(&mut core, 16, features);
        core
    }

    fn status(mem: &GuestMemoryMmap) -> u8 {
        mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// Standard 3-descriptor request: header, data (writable for IN), status.
    fn request(mem: &GuestMemoryMmap, t: u32, sector: u64, len: u32, data_writable: bool) {
        header(mem, t, sector);
        mem.write_obj(0xAAu8, GuestAddress(STATUS)).unwrap();
        desc(mem, 0, HDR, 16, F_NEXT, 1);
        desc(
            mem,
            1,
            BUF,
            len,
            F_NEXT | if data_writable { F_WRITE } else { 0 },
            2,
        );
        desc(mem, 2, STATUS, 1, F_WRITE, 0);
        avail(mem, 0, 0, 1);
    }

    #[test]
    fn read_request_copies_sectors_and_reports_ok() {
        let mut bytes = vec![0u8; 4096];
        bytes[512..1024].fill(0x5A);
        let (b, _) = disk(&bytes, false);
        let mem = mem();
        let mut core = core_with(b, &mem, F_VERSION_1);
        request(&mem, T_IN, 1, 512, true);
        let r = core.process_queue(0);
        assert!(r.notify);
        assert_eq!(status(&mem), S_OK);
        let mut got = [0u8; 512];
        mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
        assert!(got.iter().all(|b| *b == 0x5A));
        assert_eq!(used_elem(&mem, 0), (0, 513));
    }

    #[test]
    fn write_request_reaches_the_file() {
        let (b, f) = disk(&[0u8; 4096], false);
        let mem = mem();
        let mut core = core_with(b, &mem, F_VERSION_1 | F_FLUSH);
        mem.write_slice(&[0x77; 1024], GuestAddress(BUF)).unwrap();
        request(&mem, T_OUT, 2, 1024, false);
        core.process_queue(0);
        assert_eq!(status(&mem), S_OK);
        let mut got = [0u8; 1024];
        f.read_exact_at(&mut got, 1024).unwrap();
        assert!(got.iter().all(|b| *b == 0x77));
        assert_eq!(used_elem(&mem, 0), (0, 1));
    }

    #[test]
    fn write_to_readonly_disk_is_ioerr_and_file_unchanged() {
        let (b, f) = disk(&[0u8; 4096], true);
        let mem = mem();
        let mut core = core_with(b, &mem, F_VERSION_1);
        mem.write_slice(&[0x77; 512], GuestAddress(BUF)).unwrap();
        request(&mem, T_OUT, 0, 512, false);
        core.process_queue(0);
        assert_eq!(status(&mem), S_IOERR);
        let mut got = [0u8; 512];
        f.read_exact_at(&mut got, 0).unwrap();
        assert!(got.iter().all(|b| *b == 0));
    }

    #[test]
    fn readonly_disk_offers_f_ro() {
        let (b, _) = disk(&[0u8; 512], true);
        assert_ne!(b.device_features() & F_RO, 0);
        let (b, _) = disk(&[0u8; 512], false);
        assert_eq!(b.device_features() & F_RO, 0);
    }

    #[test]
    fn read_past_the_end_is_ioerr() {
        let (b, _) = disk(&[0u8; 1024], false);
        let mem = mem();
        let mut core = core_with(b, &mem, F_VERSION_1);
        request(&mem, T_IN, 1, 1024, true);
        core.process_queue(0);
        assert_eq!(status(&mem), S_IOERR);
    }

    #[test]
    fn flush_and_get_id_succeed_and_unknown_type_is_unsupp() {
        let (b, _) = disk(&[0u8; 1024], false);
        let mem = mem();
        let mut core = core_with(b, &mem, F_VERSION_1 | F_FLUSH);
        header(&mem, T_FLUSH, 0);
        desc(&mem, 0, HDR, 16, F_NEXT, 1);
        desc(&mem, 1, STATUS, 1, F_WRITE, 0);
        avail(&mem, 0, 0, 1);
        core.process_queue(0);
        assert_eq!(status(&mem), S_OK);
        request(&mem, T_GET_ID, 0, 20, true);
        avail(&mem, 1, 0, 2);
        core.process_queue(0);
        assert_eq!(status(&mem), S_OK);
        let mut id = [0u8; 10];
        mem.read_slice(&mut id, GuestAddress(BUF)).unwrap();
        assert_eq!(&id, b"irqvm-test");
        request(&mem, 99, 0, 512, true);
        avail(&mem, 2, 0, 3);
        core.process_queue(0);
        assert_eq!(status(&mem), S_UNSUPP);
    }

    #[test]
    fn config_space_reports_capacity_in_sectors() {
        let (b, _) = disk(&[0u8; 8192], false);
        let mut c = [0u8; 8];
        b.read_config(0, &mut c);
        assert_eq!(u64::from_le_bytes(c), 16);
        let mut beyond = [0xFFu8; 4];
        b.read_config(1000, &mut beyond);
        assert_eq!(beyond, [0; 4]);
    }

    #[test]
    fn chain_pointing_outside_guest_memory_is_ioerr() {
        let (b, _) = disk(&[0u8; 4096], false);
        let mem = mem();
        let mut core = core_with(b, &mem, F_VERSION_1);
        request(&mem, T_IN, 0, 512, true);
        desc(&mem, 1, MEM_SIZE as u64 - 256, 512, F_NEXT | F_WRITE, 2);
        core.process_queue(0);
        assert_eq!(status(&mem), S_IOERR);
        assert_eq!(used_idx(&mem), 1, "the request is still completed");
    }

    #[test]
    fn zero_length_descriptor_is_ioerr() {
        let (b, _) = disk(&[0u8; 4096], false);
        let mem = mem();
        let mut core = core_with(b, &mem, F_VERSION_1);
        request(&mem, T_IN, 0, 0, true);
        core.process_queue(0);
        assert_eq!(status(&mem), S_IOERR);
    }

    #[test]
    fn readable_descriptor_after_writable_is_ioerr() {
        let (b, _) = disk(&[0u8; 4096], false);
        let mem = mem();
        let mut core = core_with(b, &mem, F_VERSION_1);
        header(&mem, T_IN, 0);
        desc(&mem, 0, HDR, 16, F_NEXT, 1);
        desc(&mem, 1, BUF, 512, F_NEXT | F_WRITE, 2);
        desc(&mem, 2, BUF + 512, 512, F_NEXT, 3);
        desc(&mem, 3, STATUS, 1, F_WRITE, 0);
        avail(&mem, 0, 0, 1);
        core.process_queue(0);
        assert_eq!(status(&mem), S_IOERR);
    }

    #[test]
    fn looping_chain_completes_with_zero_length_and_no_panic() {
        let (b, _) = disk(&[0u8; 4096], false);
        let mem = mem();
        let mut core = core_with(b, &mem, F_VERSION_1);
        header(&mem, T_IN, 0);
        desc(&mem, 0, HDR, 16, F_NEXT, 1);
        desc(&mem, 1, BUF, 512, F_NEXT | F_WRITE, 0);
        avail(&mem, 0, 0, 1);
        core.process_queue(0);
        assert_eq!(used_idx(&mem), 1);
        assert_eq!(used_elem(&mem, 0), (0, 0));
        assert_eq!(core.stats.bad_chains.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn next_index_past_the_table_is_malformed() {
        let (b, _) = disk(&[0u8; 4096], false);
        let mem = mem();
        let mut core = core_with(b, &mem, F_VERSION_1);
        request(&mem, T_IN, 0, 512, true);
        desc(&mem, 1, BUF, 512, F_NEXT | F_WRITE, 200);
        core.process_queue(0);
        assert_eq!(used_elem(&mem, 0), (0, 0));
    }

    #[test]
    fn header_without_status_byte_space_is_malformed() {
        let (b, _) = disk(&[0u8; 4096], false);
        let mem = mem();
        let mut core = core_with(b, &mem, F_VERSION_1);
        header(&mem, T_FLUSH, 0);
        desc(&mem, 0, HDR, 16, 0, 0);
        avail(&mem, 0, 0, 1);
        core.process_queue(0);
        assert_eq!(used_elem(&mem, 0), (0, 0));
    }

    #[test]
    fn short_header_is_ioerr() {
        let (b, _) = disk(&[0u8; 4096], false);
        let mem = mem();
        let mut core = core_with(b, &mem, F_VERSION_1);
        header(&mem, T_IN, 0);
        desc(&mem, 0, HDR, 8, F_NEXT, 1);
        desc(&mem, 1, STATUS, 1, F_WRITE, 0);
        avail(&mem, 0, 0, 1);
        mem.write_obj(0xAAu8, GuestAddress(STATUS)).unwrap();
        core.process_queue(0);
        assert_eq!(status(&mem), S_IOERR);
    }

    #[test]
    fn avail_index_jumping_past_queue_size_sets_needs_reset() {
        let (b, _) = disk(&[0u8; 4096], false);
        let mem = mem();
        let mut core = core_with(b, &mem, F_VERSION_1);
        avail(&mem, 0, 0, 100);
        let r = core.process_queue(0);
        assert!(r.config_changed);
        assert_ne!(core.status & STATUS_NEEDS_RESET, 0);
    }

    #[test]
    fn no_interrupt_flag_suppresses_the_notification() {
        let (b, _) = disk(&[0u8; 4096], false);
        let mem = mem();
        let mut core = core_with(b, &mem, F_VERSION_1);
        set_avail_flags(&mem, 1);
        request(&mem, T_IN, 0, 512, true);
        let r = core.process_queue(0);
        assert!(!r.notify);
        assert_eq!(core.stats.suppressed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn event_idx_notifies_only_when_used_event_is_crossed() {
        let (b, _) = disk(&[0u8; 4096], false);
        let mem = mem();
        let mut core = core_with(b, &mem, F_VERSION_1 | F_RING_EVENT_IDX);
        // used_event = 1: the driver wants an interrupt after the 2nd completion.
        set_used_event(&mem, 16, 1);
        request(&mem, T_IN, 0, 512, true);
        assert!(!core.process_queue(0).notify);
        avail(&mem, 1, 0, 2);
        assert!(core.process_queue(0).notify);
    }

    #[test]
    fn event_idx_is_offered_by_default() {
        let (b, _) = disk(&[0u8; 4096], false);
        assert_ne!(b.device_features() & F_RING_EVENT_IDX, 0);
    }

    #[test]
    fn event_idx_off_is_not_offered_and_a_driver_accepting_it_is_refused() {
        let (mut b, _) = disk(&[0u8; 4096], false);
        b.set_event_idx(false);
        assert_eq!(b.device_features() & F_RING_EVENT_IDX, 0);
        // 3.1.1: the device refuses FEATURES_OK for a feature it did not offer.
        let mut core = VirtioCore::new(Box::new(b), mem());
        core.driver_features = F_VERSION_1 | F_RING_EVENT_IDX;
        core.write_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        assert_eq!(core.status & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn notify_before_driver_ok_does_nothing() {
        let (b, _) = disk(&[0u8; 4096], false);
        let mem = mem();
        let mut core = VirtioCore::new(Box::new(b), mem.clone());
        request(&mem, T_IN, 0, 512, true);
        assert_eq!(core.process_queue(0), QueueResult::default());
        assert_eq!(used_idx(&mem), 0);
    }

    #[test]
    fn features_ok_is_refused_for_unoffered_features_or_missing_version_1() {
        let (b, _) = disk(&[0u8; 4096], false);
        let mut core = VirtioCore::new(Box::new(b), mem());
        core.driver_features = 1 << 40 | F_VERSION_1;
        core.write_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        assert_eq!(core.status & STATUS_FEATURES_OK, 0);
        core.driver_features = F_FLUSH;
        core.write_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        assert_eq!(core.status & STATUS_FEATURES_OK, 0);
        core.driver_features = F_FLUSH | F_VERSION_1;
        core.write_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        assert_ne!(core.status & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn bad_queue_size_sets_needs_reset_on_notify() {
        let (b, _) = disk(&[0u8; 4096], false);
        let mem = mem();
        let mut core = VirtioCore::new(Box::new(b), mem.clone());
        activate(&mut core, 16, F_VERSION_1);
        core.write_status(0);
        // size 0 / 3 are refused by the queue; ready queue of default size with rings at 0
        // that overlap nothing is valid, so force an invalid ring address instead.
        activate(&mut core, 16, F_VERSION_1);
        core.queues[0].set_used_ring_address(Some(0xFFFF_FFF0), Some(0xFFFF));
        request(&mem, T_IN, 0, 512, true);
        let r = core.process_queue(0);
        assert!(r.config_changed);
    }

    mod hostile {
        //! Property: whatever descriptor table and avail ring a guest writes (addresses
        //! outside memory, loops, zero lengths, wrong directions, indirect tables, heads past
        //! the queue), the device never panics, never answers a chain twice or one that was
        //! not offered, and either answers every offered head in order or stops in
        //! NEEDS_RESET (virtio 1.2 2.1.2); a read-only disk's file never changes.
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        const QSIZE: u16 = 16;

        fn addr() -> impl Strategy<Value = u64> {
            prop_oneof![
                Just(HDR),
                Just(BUF),
                Just(STATUS),
                Just(DESC),
                0u64..(MEM_SIZE as u64 * 2),
                Just(MEM_SIZE as u64 - 1),
                Just(u64::MAX - 7),
            ]
        }

        fn len() -> impl Strategy<Value = u32> {
            prop_oneof![
                Just(0u32),
                Just(1),
                Just(16),
                Just(512),
                Just(4096),
                0u32..0x2_0000,
                Just(u32::MAX)
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]
            #[test]
            fn hostile_descriptor_chains_are_answered_in_order_or_need_reset(
                table in vec((addr(), len(), 0u16..8, 0u16..20), QSIZE as usize),
                heads in vec(prop_oneof![0u16..4, 0u16..20], 0..(QSIZE as usize + 2)),
                readonly in any::<bool>(),
                req in prop_oneof![Just(T_IN), Just(T_OUT), Just(T_FLUSH), any::<u32>()],
                sector in prop_oneof![0u64..16, any::<u64>()],
            ) {
                let content = vec![0x3Cu8; 8192];
                let (b, mut f) = disk(&content, readonly);
                let mem = mem();
                let mut core = core_with(b, &mem, F_VERSION_1 | F_RING_INDIRECT_DESC);
                header(&mem, req, sector);
                for (i, (a, l, fl, n)) in table.iter().enumerate() {
                    desc(&mem, i as u16, *a, *l, *fl, *n);
                }
                for (slot, h) in heads.iter().enumerate() {
                    avail(&mem, slot as u16, *h, slot as u16 + 1);
                }
                let _ = core.process_queue(0);
                let used = used_idx(&mem);
                prop_assert!(usize::from(used) <= heads.len(), "answered {used} of {}", heads.len());
                for s in 0..used {
                    let (id, _len) = used_elem(&mem, s);
                    prop_assert_eq!(Some(&(id as u16)), heads.get(usize::from(s)),
                        "used slot {} answers a head that was not offered there", s);
                }
                if core.status & STATUS_NEEDS_RESET == 0 {
                    prop_assert_eq!(usize::from(used), heads.len(), "heads left unanswered");
                }
                // A second kick with nothing new must not answer anything again.
                let _ = core.process_queue(0);
                prop_assert_eq!(used_idx(&mem), used);
                if readonly {
                    let mut now = Vec::new();
                    f.rewind().unwrap();
                    f.read_to_end(&mut now).unwrap();
                    prop_assert!(now == content, "read-only disk changed");
                }
            }
        }
    }
}
