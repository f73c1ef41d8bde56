//! A minimal virtio-blk driver (virtio 1.2) over both transports the VMM offers:
//! virtio-pci, modern interface (4.1), and virtio-mmio version 2 (4.2). One split virtqueue
//! (2.7) of [`QSIZE`] descriptors in static memory, requests of three descriptors each
//! (header, data, status: 5.2.6), polled completion through the used ring, and the driver
//! side of interrupt suppression: VRING_AVAIL_F_NO_INTERRUPT (2.7.7) and used_event with
//! VIRTIO_F_EVENT_IDX (2.7.10). Interrupt delivery (MSI-X table, IOAPIC pin) is set up by
//! the caller; this module only says where the ISR/InterruptStatus register is.
//!
//! One device is driven at a time: the ring and buffers are shared. Dropping a [`Dev`]
//! resets the device (status 0, 2.1.2), so it stops touching that memory.

use crate::arch::{mmio_read32, mmio_write32};
use crate::pci::{self, Func};
use core::cell::UnsafeCell;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

/// Device status bits (2.1).
pub const S_ACKNOWLEDGE: u8 = 1;
pub const S_DRIVER: u8 = 2;
pub const S_DRIVER_OK: u8 = 4;
pub const S_FEATURES_OK: u8 = 8;
pub const S_NEEDS_RESET: u8 = 64;
pub const S_FAILED: u8 = 128;

/// Feature bits (6): VIRTIO_F_VERSION_1, VIRTIO_F_EVENT_IDX.
pub const F_VERSION_1: u64 = 1 << 32;
pub const F_EVENT_IDX: u64 = 1 << 29;

/// MSI-X "no vector" (4.1.4.3).
pub const NO_VECTOR: u16 = 0xFFFF;

/// virtio-blk request types and status (5.2.6).
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const S_OK: u8 = 0;

pub const SECTOR: usize = 512;
/// Descriptors in the queue; each request takes three, so [`SLOTS`] requests fit.
pub const QSIZE: u16 = 16;
pub const SLOTS: usize = 5;
/// Data buffer per request slot.
pub const BUF: usize = 4096;

/// Descriptor flags (2.7.5).
const D_NEXT: u16 = 1;
const D_WRITE: u16 = 2;
/// Avail ring flag (2.7.6).
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// virtio-mmio (4.2.2) register offsets.
mod mmio {
    pub const MAGIC: usize = 0x000;
    pub const VERSION: usize = 0x004;
    pub const DEVICE_ID: usize = 0x008;
    pub const DEVICE_FEATURES: usize = 0x010;
    pub const DEVICE_FEATURES_SEL: usize = 0x014;
    pub const DRIVER_FEATURES: usize = 0x020;
    pub const DRIVER_FEATURES_SEL: usize = 0x024;
    pub const QUEUE_SEL: usize = 0x030;
    pub const QUEUE_NUM_MAX: usize = 0x034;
    pub const QUEUE_NUM: usize = 0x038;
    pub const QUEUE_READY: usize = 0x044;
    pub const QUEUE_NOTIFY: usize = 0x050;
    pub const INTERRUPT_STATUS: usize = 0x060;
    pub const INTERRUPT_ACK: usize = 0x064;
    pub const STATUS: usize = 0x070;
    pub const QUEUE_DESC: usize = 0x080;
    pub const QUEUE_DRIVER: usize = 0x090;
    pub const QUEUE_DEVICE: usize = 0x0a0;
    pub const CONFIG: usize = 0x100;
}

/// virtio-pci common configuration (4.1.4.3) offsets.
mod common {
    pub const DEVICE_FEATURE_SELECT: usize = 0x00;
    pub const DEVICE_FEATURE: usize = 0x04;
    pub const DRIVER_FEATURE_SELECT: usize = 0x08;
    pub const DRIVER_FEATURE: usize = 0x0C;
    pub const MSIX_CONFIG: usize = 0x10;
    pub const DEVICE_STATUS: usize = 0x14;
    pub const QUEUE_SELECT: usize = 0x16;
    pub const QUEUE_SIZE: usize = 0x18;
    pub const QUEUE_MSIX_VECTOR: usize = 0x1A;
    pub const QUEUE_ENABLE: usize = 0x1C;
    pub const QUEUE_NOTIFY_OFF: usize = 0x1E;
    pub const QUEUE_DESC: usize = 0x20;
    pub const QUEUE_DRIVER: usize = 0x28;
    pub const QUEUE_DEVICE: usize = 0x30;
}

/// virtio_pci_cap cfg_type (4.1.4).
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;

pub const VIRTIO_MMIO_BASE: usize = 0xD000_0000;
pub const VIRTIO_MMIO_SIZE: usize = 0x1000;
pub const MMIO_MAGIC: u32 = 0x7472_6976;

/// Where the device's registers are.
#[derive(Clone, Copy)]
pub enum Transport {
    Pci { f: Func, common: usize, notify: usize, notify_mul: u32, isr: usize, device: usize },
    Mmio { base: usize },
}

fn r8(a: usize) -> u8 {
    unsafe { read_volatile(a as *const u8) }
}
fn w8(a: usize, v: u8) {
    unsafe { write_volatile(a as *mut u8, v) }
}
fn r16(a: usize) -> u16 {
    unsafe { read_volatile(a as *const u16) }
}
fn w16(a: usize, v: u16) {
    unsafe { write_volatile(a as *mut u16, v) }
}

impl Transport {
    /// Find the modern virtio-pci structures through the vendor capabilities (4.1.4) and
    /// enable memory decoding and bus mastering.
    pub fn pci(f: Func) -> Result<Transport, &'static str> {
        let (mut common_a, mut notify_a, mut isr_a, mut device_a, mut mul) = (0, 0, 0, 0, 0);
        for (off, id) in f.caps() {
            if id != pci::CAP_ID_VENDOR {
                continue;
            }
            let ty = f.read8(off + 3);
            let Some(bar) = f.bar_mem(f.read8(off + 4)) else { continue };
            let a = (bar + f.read32(off + 8) as u64) as usize;
            match ty {
                CAP_COMMON if common_a == 0 => common_a = a,
                CAP_NOTIFY if notify_a == 0 => {
                    notify_a = a;
                    mul = f.read32(off + 16);
                }
                CAP_ISR if isr_a == 0 => isr_a = a,
                CAP_DEVICE if device_a == 0 => device_a = a,
                _ => {}
            }
        }
        if common_a == 0 || notify_a == 0 || isr_a == 0 || device_a == 0 {
            return Err("virtio-pci capabilities missing (common/notify/ISR/device)");
        }
        f.set_command(f.command() | pci::CMD_MEMORY | pci::CMD_BUS_MASTER);
        Ok(Transport::Pci { f, common: common_a, notify: notify_a, notify_mul: mul, isr: isr_a, device: device_a })
    }

    /// virtio-mmio device `index`; checks magic, version 2 and device ID 2 (block).
    pub fn mmio(index: usize) -> Result<Transport, &'static str> {
        let base = VIRTIO_MMIO_BASE + index * VIRTIO_MMIO_SIZE;
        if mmio_read32(base + mmio::MAGIC) != MMIO_MAGIC {
            return Err("no virtio-mmio magic");
        }
        if mmio_read32(base + mmio::VERSION) != 2 {
            return Err("virtio-mmio version is not 2");
        }
        if mmio_read32(base + mmio::DEVICE_ID) != 2 {
            return Err("virtio-mmio device is not a block device");
        }
        Ok(Transport::Mmio { base })
    }

    pub fn status(&self) -> u8 {
        match *self {
            Transport::Pci { common: c, .. } => r8(c + common::DEVICE_STATUS),
            Transport::Mmio { base } => mmio_read32(base + mmio::STATUS) as u8,
        }
    }

    pub fn set_status(&self, s: u8) {
        match *self {
            Transport::Pci { common: c, .. } => w8(c + common::DEVICE_STATUS, s),
            Transport::Mmio { base } => mmio_write32(base + mmio::STATUS, s as u32),
        }
    }

    /// Reset (writing 0) and wait until the status reads 0 (4.1.4.3.2).
    pub fn reset(&self) {
        self.set_status(0);
        for _ in 0..1000 {
            if self.status() == 0 {
                break;
            }
        }
    }

    pub fn device_features(&self) -> u64 {
        let mut f = 0u64;
        for sel in 0..2u32 {
            let w = match *self {
                Transport::Pci { common: c, .. } => {
                    mmio_write32(c + common::DEVICE_FEATURE_SELECT, sel);
                    mmio_read32(c + common::DEVICE_FEATURE)
                }
                Transport::Mmio { base } => {
                    mmio_write32(base + mmio::DEVICE_FEATURES_SEL, sel);
                    mmio_read32(base + mmio::DEVICE_FEATURES)
                }
            };
            f |= (w as u64) << (32 * sel);
        }
        f
    }

    pub fn set_driver_features(&self, feat: u64) {
        for sel in 0..2u32 {
            let w = (feat >> (32 * sel)) as u32;
            match *self {
                Transport::Pci { common: c, .. } => {
                    mmio_write32(c + common::DRIVER_FEATURE_SELECT, sel);
                    mmio_write32(c + common::DRIVER_FEATURE, w);
                }
                Transport::Mmio { base } => {
                    mmio_write32(base + mmio::DRIVER_FEATURES_SEL, sel);
                    mmio_write32(base + mmio::DRIVER_FEATURES, w);
                }
            }
        }
    }

    /// Configure queue 0 on the static rings and enable it (4.1.5.1.3, 4.2.3.2). For PCI,
    /// `vector` is its MSI-X vector (NO_VECTOR for none); returns what the device read back.
    fn setup_queue(&self, desc: u64, avail: u64, used: u64, vector: u16) -> Result<u16, &'static str> {
        match *self {
            Transport::Pci { common: c, .. } => {
                w16(c + common::QUEUE_SELECT, 0);
                let max = r16(c + common::QUEUE_SIZE);
                if max < QSIZE {
                    return Err("queue 0 is smaller than 16");
                }
                w16(c + common::QUEUE_SIZE, QSIZE);
                for (off, a) in [(common::QUEUE_DESC, desc), (common::QUEUE_DRIVER, avail), (common::QUEUE_DEVICE, used)] {
                    mmio_write32(c + off, a as u32);
                    mmio_write32(c + off + 4, (a >> 32) as u32);
                }
                w16(c + common::QUEUE_MSIX_VECTOR, vector);
                let got = r16(c + common::QUEUE_MSIX_VECTOR);
                // Configuration changes are not interesting here: no vector.
                w16(c + common::MSIX_CONFIG, NO_VECTOR);
                w16(c + common::QUEUE_ENABLE, 1);
                Ok(got)
            }
            Transport::Mmio { base } => {
                mmio_write32(base + mmio::QUEUE_SEL, 0);
                if mmio_read32(base + mmio::QUEUE_NUM_MAX) < QSIZE as u32 {
                    return Err("queue 0 is smaller than 16");
                }
                mmio_write32(base + mmio::QUEUE_NUM, QSIZE as u32);
                for (off, a) in [(mmio::QUEUE_DESC, desc), (mmio::QUEUE_DRIVER, avail), (mmio::QUEUE_DEVICE, used)] {
                    mmio_write32(base + off, a as u32);
                    mmio_write32(base + off + 4, (a >> 32) as u32);
                }
                mmio_write32(base + mmio::QUEUE_READY, 1);
                Ok(NO_VECTOR)
            }
        }
    }

    /// Address the driver writes to notify queue 0 (4.1.4.4: notify base + queue_notify_off
    /// * multiplier; 4.2.2 QueueNotify).
    fn notify_addr(&self) -> usize {
        match *self {
            Transport::Pci { common: c, notify, notify_mul, .. } => {
                w16(c + common::QUEUE_SELECT, 0);
                notify + r16(c + common::QUEUE_NOTIFY_OFF) as usize * notify_mul as usize
            }
            Transport::Mmio { base } => base + mmio::QUEUE_NOTIFY,
        }
    }

    /// Acknowledge an interrupt as a handler must: the ISR read (which also deasserts
    /// INTx, 4.1.4.5.1) or InterruptStatus + InterruptACK (4.2.2). Returns the bits.
    pub fn ack_interrupt(&self) -> u32 {
        match *self {
            Transport::Pci { isr, .. } => r8(isr) as u32,
            Transport::Mmio { base } => {
                let s = mmio_read32(base + mmio::INTERRUPT_STATUS);
                mmio_write32(base + mmio::INTERRUPT_ACK, s);
                s
            }
        }
    }

    /// virtio-blk capacity in sectors (5.2.4, offset 0).
    pub fn capacity(&self) -> u64 {
        let a = match *self {
            Transport::Pci { device, .. } => device,
            Transport::Mmio { base } => base + mmio::CONFIG,
        };
        mmio_read32(a) as u64 | (mmio_read32(a + 4) as u64) << 32
    }
}

/// The static DMA area: rings (2.7: descriptor table 16-byte aligned, avail 2, used 4),
/// request headers, status bytes, data buffers.
#[repr(C, align(4096))]
struct Dma {
    desc: [u8; 16 * QSIZE as usize],
    avail: [u8; 6 + 2 * QSIZE as usize],
    _pad: [u8; 1024 - 6 - 2 * QSIZE as usize - 16 * QSIZE as usize],
    used: [u8; 6 + 8 * QSIZE as usize],
    _pad2: [u8; 4096 - 1024 - 6 - 8 * QSIZE as usize],
    hdr: [[u8; 16]; SLOTS],
    status: [u8; SLOTS],
    _pad3: [u8; 4096 - 16 * SLOTS - SLOTS],
    data: [[u8; BUF]; SLOTS],
}

struct DmaCell(UnsafeCell<Dma>);
unsafe impl Sync for DmaCell {}
static DMA: DmaCell = DmaCell(UnsafeCell::new(Dma {
    desc: [0; 16 * QSIZE as usize],
    avail: [0; 6 + 2 * QSIZE as usize],
    _pad: [0; 1024 - 6 - 2 * QSIZE as usize - 16 * QSIZE as usize],
    used: [0; 6 + 8 * QSIZE as usize],
    _pad2: [0; 4096 - 1024 - 6 - 8 * QSIZE as usize],
    hdr: [[0; 16]; SLOTS],
    status: [0; SLOTS],
    _pad3: [0; 4096 - 16 * SLOTS - SLOTS],
    data: [[0; BUF]; SLOTS],
}));

fn dma() -> *mut Dma {
    DMA.0.get()
}
fn desc_addr() -> usize {
    unsafe { (*dma()).desc.as_ptr() as usize }
}
fn avail_addr() -> usize {
    unsafe { (*dma()).avail.as_ptr() as usize }
}
fn used_addr() -> usize {
    unsafe { (*dma()).used.as_ptr() as usize }
}

/// The data buffer of request slot `s` (callers fill it before a write, check after a read).
pub fn buf(s: usize) -> &'static mut [u8; BUF] {
    unsafe { &mut (*dma()).data[s % SLOTS] }
}

/// What the driver negotiates and how the queue interrupts.
#[derive(Clone, Copy)]
pub struct Setup {
    pub event_idx: bool,
    /// PCI: MSI-X vector of queue 0 (NO_VECTOR = none / INTx).
    pub vector: u16,
}

/// A driven device with its queue 0.
pub struct Dev {
    pub t: Transport,
    pub features: u64,
    notify: usize,
    avail_idx: u16,
    last_used: u16,
}

/// Used-ring element (2.7.8).
#[derive(Clone, Copy)]
pub struct Used {
    pub id: u32,
    pub len: u32,
}

impl Dev {
    /// Device initialization (3.1.1): reset, ACKNOWLEDGE, DRIVER, features (VERSION_1, plus
    /// EVENT_IDX if asked for and offered), FEATURES_OK (checked), queue 0, DRIVER_OK.
    pub fn init(t: Transport, s: Setup) -> Result<Dev, &'static str> {
        t.reset();
        unsafe { core::ptr::write_bytes(dma() as *mut u8, 0, 8192) };
        t.set_status(S_ACKNOWLEDGE);
        t.set_status(S_ACKNOWLEDGE | S_DRIVER);
        let offered = t.device_features();
        if offered & F_VERSION_1 == 0 {
            t.set_status(S_FAILED);
            return Err("device does not offer VIRTIO_F_VERSION_1");
        }
        let mut want = F_VERSION_1;
        if s.event_idx {
            if offered & F_EVENT_IDX == 0 {
                t.set_status(S_FAILED);
                return Err("device does not offer VIRTIO_F_EVENT_IDX");
            }
            want |= F_EVENT_IDX;
        }
        t.set_driver_features(want);
        t.set_status(S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        if t.status() & S_FEATURES_OK == 0 {
            t.set_status(S_FAILED);
            return Err("device refused FEATURES_OK");
        }
        let got = t.setup_queue(desc_addr() as u64, avail_addr() as u64, used_addr() as u64, s.vector)?;
        if got != s.vector {
            t.set_status(S_FAILED);
            return Err("device did not accept the queue's MSI-X vector");
        }
        t.set_status(S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
        let notify = t.notify_addr();
        Ok(Dev { t, features: want, notify, avail_idx: 0, last_used: 0 })
    }

    /// VRING_AVAIL_F_NO_INTERRUPT on or off (2.7.7).
    pub fn set_no_interrupt(&mut self, on: bool) {
        w16(avail_addr(), if on { AVAIL_F_NO_INTERRUPT } else { 0 });
        fence(Ordering::SeqCst);
    }

    /// used_event (2.7.10): interrupt when the used index passes this value.
    pub fn set_used_event(&mut self, v: u16) {
        w16(avail_addr() + 4 + 2 * QSIZE as usize, v);
        fence(Ordering::SeqCst);
    }

    /// Put a request in slot `slot` on the avail ring (no notify): `write` moves
    /// `nsec` sectors from the slot's buffer to `sector`, else the other way.
    pub fn queue(&mut self, slot: usize, write: bool, sector: u64, nsec: usize) {
        let slot = slot % SLOTS;
        let nsec = nsec.clamp(1, BUF / SECTOR);
        unsafe {
            let d = &mut *dma();
            let h = &mut d.hdr[slot];
            h[0..4].copy_from_slice(&(if write { T_OUT } else { T_IN }).to_le_bytes());
            h[4..8].copy_from_slice(&0u32.to_le_bytes());
            h[8..16].copy_from_slice(&sector.to_le_bytes());
            write_volatile(&mut d.status[slot], 0xFF);
            let head = (slot * 3) as u16;
            let parts: [(u64, u32, u16); 3] = [
                (d.hdr[slot].as_ptr() as u64, 16, D_NEXT),
                (d.data[slot].as_ptr() as u64, (nsec * SECTOR) as u32, D_NEXT | if write { 0 } else { D_WRITE }),
                (&d.status[slot] as *const u8 as u64, 1, D_WRITE),
            ];
            for (i, (addr, len, flags)) in parts.iter().enumerate() {
                let e = desc_addr() + (head as usize + i) * 16;
                write_volatile(e as *mut u64, *addr);
                write_volatile((e + 8) as *mut u32, *len);
                write_volatile((e + 12) as *mut u16, *flags);
                write_volatile((e + 14) as *mut u16, head + i as u16 + 1);
            }
            let a = avail_addr();
            w16(a + 4 + 2 * (self.avail_idx % QSIZE) as usize, head);
            fence(Ordering::SeqCst);
            self.avail_idx = self.avail_idx.wrapping_add(1);
            w16(a + 2, self.avail_idx);
            fence(Ordering::SeqCst);
        }
    }

    /// Notify queue 0 (4.1.5.2 / 4.2.3.3): the write that starts the device's work.
    #[inline(always)]
    pub fn kick(&self) {
        match self.t {
            Transport::Pci { .. } => w16(self.notify, 0),
            Transport::Mmio { .. } => mmio_write32(self.notify, 0),
        }
    }

    /// The device's used index.
    pub fn used_idx(&self) -> u16 {
        fence(Ordering::SeqCst);
        r16(used_addr() + 2)
    }

    /// The next used element, if the device added one.
    pub fn pop_used(&mut self) -> Option<Used> {
        if self.used_idx() == self.last_used {
            return None;
        }
        let e = used_addr() + 4 + 8 * (self.last_used % QSIZE) as usize;
        let u = unsafe { Used { id: read_volatile(e as *const u32), len: read_volatile((e + 4) as *const u32) } };
        self.last_used = self.last_used.wrapping_add(1);
        Some(u)
    }

    /// Completions popped so far (the used index the driver has consumed).
    pub fn consumed(&self) -> u16 {
        self.last_used
    }

    /// Status byte the device wrote for slot `slot` (0xFF = not written).
    pub fn status_of(&self, slot: usize) -> u8 {
        unsafe { read_volatile(&(*dma()).status[slot % SLOTS]) }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.t.reset();
        if let Transport::Pci { f, .. } = self.t {
            if let Some(m) = pci::Msix::probe(f) {
                m.set_enable(false, false);
            }
        }
    }
}
