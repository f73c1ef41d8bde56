//! virtio-blk cases: sector round trips over virtio-pci (MSI-X and INTx) and virtio-mmio,
//! and exact accounting of completions against interrupts: eventfd/LAPIC coalescing, the
//! MSI-X pending bit, VRING_AVAIL_F_NO_INTERRUPT (virtio 1.2, 2.7.7), used_event with
//! VIRTIO_F_EVENT_IDX (2.7.10) and the VMM's interrupt moderation (`--disk
//! ...,irq-usecs=N,irq-max-frames=M`).
//!
//! The disks are the ones the VMM describes through the test device (DISK_INFO,
//! docs/testdev.md); the device's own counters (VIRTIO_STATS) tell how many interrupts it
//! raised, suppressed or held, so each case checks both ends. Without a disk (QEMU, or
//! `irqvm run` without `--disk`) every case is SKIPped.

use crate::arch::{self, rdtsc};
use crate::cases::{bsp_id, count, settle, settle_count, wait_for, Outcome};
use crate::desc::{self, Frame};
use crate::fmtnum::{D, S, X};
use crate::pci::{self, Func, Msix};
use crate::virtio::{self, Dev, Setup, Transport, NO_VECTOR, S_OK};
use crate::{apic, ioapic, testdev, tsc, Msg};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, Ordering};

macro_rules! fail {
    ($($t:tt)*) => { return Outcome::Fail(Msg::from_args(format_args!($($t)*))) };
}
macro_rules! check {
    ($c:expr, $($t:tt)*) => { if !$c { fail!($($t)*); } };
}
/// Unwrap a `Result<_, Outcome>` or return the outcome.
macro_rules! take {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(o) => return o,
        }
    };
}

pub const V_MSIX: u8 = 0x62;
pub const V_INTX: u8 = 0x63;
pub const V_MMIO: u8 = 0x64;

/// Test-device commands (docs/testdev.md).
const DISK_INFO: u32 = 32;
const DISK_MODERATION: u32 = 33;
const VIRTIO_STATS: u32 = 34;
/// VIRTIO_STATS counters.
pub const ST_COMPLETIONS: u32 = 1;
pub const ST_INTERRUPTS: u32 = 3;
pub const ST_SUPPRESSED: u32 = 4;
pub const ST_MODERATED: u32 = 5;

/// virtio-pci block device (4.1.2.1: 0x1040 + device ID 2).
const VIRTIO_VENDOR: u16 = 0x1AF4;
const VIRTIO_BLK_MODERN: u16 = 0x1042;

/// Which disk and interrupt path a case drives.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// First PCI disk without moderation, MSI-X vector 0 -> `V_MSIX`.
    PciMsix,
    /// The same disk with MSI-X off: INTA# through its IOAPIC pin, level, active low.
    PciIntx,
    /// First virtio-mmio disk: its edge-triggered GSI 20 + index.
    Mmio,
    /// First PCI disk with interrupt moderation, MSI-X.
    ModeratedMsix,
}

/// A disk as DISK_INFO describes it.
#[derive(Clone, Copy)]
pub struct Disk {
    /// Index in the VMM's `--disk` list.
    pub n: u32,
    pub pci: bool,
    /// PCI device number or virtio-mmio index.
    pub loc: u32,
    pub moderated: bool,
}

pub fn find_disk(kind: Kind) -> Option<Disk> {
    if !testdev::present() {
        return None;
    }
    for n in 0..16 {
        let info = testdev::command(DISK_INFO, [n, 0, 0, 0]);
        if info == testdev::ERROR {
            break;
        }
        let d = Disk { n, pci: info & 0xFF == 1, loc: (info >> 8) & 0xFF, moderated: info & (1 << 16) != 0 };
        let mmio = info & 0xFF == 2;
        let fits = match kind {
            Kind::PciMsix | Kind::PciIntx => d.pci && !d.moderated,
            Kind::Mmio => mmio,
            Kind::ModeratedMsix => d.pci && d.moderated,
        };
        if fits {
            return Some(d);
        }
    }
    None
}

/// Bit mask of the GSIs the attached disks interrupt on (PCI slot d: INTx GSI
/// 16 + ((d - 1) / 2) % 4; virtio-mmio i: GSI 20 + i).
pub fn disk_gsis() -> u32 {
    let mut m = 0u32;
    if !testdev::present() {
        return 0;
    }
    for n in 0..16 {
        let info = testdev::command(DISK_INFO, [n, 0, 0, 0]);
        if info == testdev::ERROR {
            break;
        }
        let loc = (info >> 8) & 0xFF;
        let gsi = match info & 0xFF {
            1 => 16 + (loc.saturating_sub(1) / 2) % 4,
            2 => 20 + loc,
            _ => continue,
        };
        if gsi < 32 {
            m |= 1 << gsi;
        }
    }
    m
}

/// One of the device's counters (VIRTIO_STATS).
pub fn stat(d: &Disk, which: u32) -> u32 {
    testdev::command(VIRTIO_STATS, [d.n, which, 0, 0])
}

/// The driver's view of the interrupt path for handlers (set before the pin is unmasked).
struct Active(UnsafeCell<Option<Transport>>);
unsafe impl Sync for Active {}
static ACTIVE: Active = Active(UnsafeCell::new(None));
/// Handler entries that found the queue bit set in ISR / InterruptStatus, and those that
/// found nothing (spurious: a level line redelivered after its cause was acknowledged).
pub static REAL: AtomicU32 = AtomicU32::new(0);
pub static SPURIOUS: AtomicU32 = AtomicU32::new(0);

/// INTx / virtio-mmio handler: acknowledge at the device (the PCI ISR read deasserts
/// INTA#, 4.1.4.5.1; InterruptACK for MMIO, 4.2.2), then EOI.
pub fn h_ack(_f: &mut Frame, _cpu: usize) {
    let t = unsafe { *ACTIVE.0.get() };
    if let Some(t) = t {
        if t.ack_interrupt() & 1 != 0 {
            REAL.fetch_add(1, Ordering::SeqCst);
        } else {
            SPURIOUS.fetch_add(1, Ordering::SeqCst);
        }
    }
    apic::eoi();
}

/// A disk driven through one interrupt path.
pub struct Rig {
    pub dev: Dev,
    pub disk: Disk,
    pub vector: u8,
    pub msix: Option<Msix>,
    pub gsi: Option<u32>,
}

impl Rig {
    /// Interrupts taken for this disk: handler entries for MSI-X, acknowledged ones for the
    /// line-based paths.
    pub fn deliveries(&self) -> u32 {
        if self.msix.is_some() {
            count(self.vector)
        } else {
            REAL.load(Ordering::SeqCst)
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(g) = self.gsi {
            ioapic::mask(g);
        }
        unsafe { *ACTIVE.0.get() = None };
    }
}

fn msg(a: core::fmt::Arguments) -> Outcome {
    Outcome::Fail(Msg::from_args(a))
}

/// Find the disk for `kind`, set up its interrupt path and initialize the device.
/// Err(Skip) without such a disk, Err(Fail) when the device misbehaves.
pub fn open(kind: Kind, event_idx: bool) -> Result<Rig, Outcome> {
    let Some(disk) = find_disk(kind) else {
        return Err(Outcome::Skip(Msg::from_args(format_args!(
            "no {} virtio disk attached (irqvm selftest attaches scratch disks; DISK_INFO)",
            S(match kind {
                Kind::PciMsix | Kind::PciIntx => "PCI",
                Kind::Mmio => "MMIO",
                Kind::ModeratedMsix => "moderated PCI",
            })
        ))));
    };
    REAL.store(0, Ordering::SeqCst);
    SPURIOUS.store(0, Ordering::SeqCst);
    let bsp = bsp_id();
    if disk.pci {
        let f = Func { dev: disk.loc as u8, func: 0 };
        if f.vendor() != VIRTIO_VENDOR || f.device() != VIRTIO_BLK_MODERN {
            return Err(msg(format_args!("PCI slot {} is {}:{}, not virtio-blk", D(disk.loc as u64), X(f.vendor() as u64), X(f.device() as u64))));
        }
        let t = Transport::pci(f).map_err(|e| msg(format_args!("{}", S(e))))?;
        let m = Msix::probe(f).ok_or_else(|| msg(format_args!("virtio-pci function has no MSI-X capability")))?;
        if kind == Kind::PciIntx {
            m.set_enable(false, false);
            f.set_command(f.command() & !pci::CMD_INTX_DISABLE);
            // Slot d's INTA# is GSI 16 + ((d - 1) / 2) % 4 (vmm/src/pci_setup.rs, MP table/_PRT).
            let gsi = 16 + (disk.loc.saturating_sub(1) / 2) % 4;
            unsafe { *ACTIVE.0.get() = Some(t) };
            desc::set_handler(V_INTX, Some(h_ack));
            let dev = Dev::init(t, Setup { event_idx, vector: NO_VECTOR }).map_err(|e| msg(format_args!("{}", S(e))))?;
            ioapic::set(gsi, V_INTX as u32 | ioapic::LEVEL | ioapic::ACTIVE_LOW, bsp);
            return Ok(Rig { dev, disk, vector: V_INTX, msix: None, gsi: Some(gsi) });
        }
        for k in 1..m.nvec {
            m.program_fixed(k, bsp as u8, V_MSIX, true);
        }
        m.program_fixed(0, bsp as u8, V_MSIX, false);
        m.set_enable(true, false);
        let dev = Dev::init(t, Setup { event_idx, vector: 0 }).map_err(|e| msg(format_args!("{}", S(e))))?;
        return Ok(Rig { dev, disk, vector: V_MSIX, msix: Some(m), gsi: None });
    }
    let t = Transport::mmio(disk.loc as usize).map_err(|e| msg(format_args!("{}", S(e))))?;
    let gsi = 20 + disk.loc;
    unsafe { *ACTIVE.0.get() = Some(t) };
    desc::set_handler(V_MMIO, Some(h_ack));
    let dev = Dev::init(t, Setup { event_idx, vector: NO_VECTOR }).map_err(|e| msg(format_args!("{}", S(e))))?;
    ioapic::set(gsi, V_MMIO as u32, bsp);
    Ok(Rig { dev, disk, vector: V_MMIO, msix: None, gsi: Some(gsi) })
}

/// Submit one request in `slot`, notify, and poll the used ring until it completes
/// (interrupts are counted separately). Checks the used element (2.7.8: id = head, len =
/// bytes written to the driver: data for a read, plus the status byte) and the status.
pub fn request(r: &mut Rig, slot: usize, write: bool, sector: u64, nsec: usize) -> Result<(), Outcome> {
    r.dev.queue(slot, write, sector, nsec);
    r.dev.kick();
    if !wait_for(2_000_000, || r.dev.used_idx() != r.dev.consumed()) {
        return Err(msg(format_args!("request (sector {}) not completed in 2 s, device status {}", D(sector), X(r.dev.t.status() as u64))));
    }
    let Some(u) = r.dev.pop_used() else {
        return Err(msg(format_args!("used index moved but no element")));
    };
    let want_len = if write { 1 } else { nsec as u32 * virtio::SECTOR as u32 + 1 };
    if u.id != (slot % virtio::SLOTS) as u32 * 3 || u.len != want_len {
        return Err(msg(format_args!("used element id {} len {}, want {} / {}", D(u.id as u64), D(u.len as u64), D(slot as u64 * 3), D(want_len as u64))));
    }
    let st = r.dev.status_of(slot);
    if st != S_OK {
        return Err(msg(format_args!("request status {} (sector {})", D(st as u64), D(sector))));
    }
    Ok(())
}

fn pattern(i: usize, j: usize) -> u8 {
    (i.wrapping_mul(37) ^ j.wrapping_mul(7) ^ (j >> 8)) as u8 ^ 0xA5
}

/// Write 4 requests of 8 sectors with distinct patterns, read them back and compare; every
/// request is one completion and must be exactly one interrupt, at both ends.
fn roundtrip(kind: Kind) -> Outcome {
    let mut r = take!(open(kind, false));
    let cap = r.dev.t.capacity();
    check!(cap >= 64, "capacity {} sectors", D(cap));
    let c0 = stat(&r.disk, ST_COMPLETIONS);
    let i0 = stat(&r.disk, ST_INTERRUPTS);
    let mut n = 0u32;
    for write in [true, false] {
        for i in 0..4usize {
            let sector = 8 + 8 * i as u64;
            let b = virtio::buf(i % 2);
            for (j, x) in b.iter_mut().enumerate() {
                *x = if write { pattern(i, j) } else { 0 };
            }
            take!(request(&mut r, i % 2, write, sector, 8));
            n += 1;
            check!(
                wait_for(2_000_000, || r.deliveries() >= n),
                "request {} completed but no interrupt ({} deliveries)",
                D(n as u64),
                D(r.deliveries() as u64)
            );
            if !write {
                let b = virtio::buf(i % 2);
                if let Some(j) = (0..b.len()).find(|&j| b[j] != pattern(i, j)) {
                    fail!("read back sector {} byte {}: {} want {}", D(sector + j as u64 / 512), D(j as u64 % 512), X(b[j] as u64), X(pattern(i, j) as u64));
                }
            }
        }
    }
    settle_count(r.vector);
    let (got, spurious) = (r.deliveries(), SPURIOUS.load(Ordering::SeqCst));
    let (c, irq) = (stat(&r.disk, ST_COMPLETIONS) - c0, stat(&r.disk, ST_INTERRUPTS) - i0);
    check!(c == n, "device counted {} completions for {} requests", D(c as u64), D(n as u64));
    check!(irq == n, "device raised {} interrupts for {} requests", D(irq as u64), D(n as u64));
    check!(got == n, "{} interrupts for {} requests", D(got as u64), D(n as u64));
    check!(spurious == 0, "spurious: {} deliveries found ISR clear after {} real ones", D(spurious as u64), D(got as u64));
    Outcome::Pass
}

pub fn vblk_pci_msix_write_read_roundtrip() -> Outcome {
    roundtrip(Kind::PciMsix)
}

/// MSI-X off: INTA#, level, active low; the handler's ISR read deasserts it (4.1.4.5.1).
pub fn vblk_pci_intx_write_read_roundtrip() -> Outcome {
    roundtrip(Kind::PciIntx)
}

/// virtio-mmio: edge line, InterruptStatus/InterruptACK (4.2.2).
pub fn vblk_mmio_write_read_roundtrip() -> Outcome {
    roundtrip(Kind::Mmio)
}

const K: u32 = 4;

/// Run `K` one-sector reads one after another, each polled to completion.
fn k_requests(r: &mut Rig, k: u32) -> Result<(), Outcome> {
    for i in 0..k {
        request(r, 0, false, i as u64, 1)?;
    }
    Ok(())
}

/// K completions, each its own MSI (an irqfd write), while the CPU runs with IF=0: the
/// vector stays pending in the LAPIC IRR and the K messages merge into one delivery at STI
/// (SDM vol. 3, 11.8.4: one IRR bit per vector).
pub fn vblk_completions_coalesce_into_one_interrupt() -> Outcome {
    let mut r = take!(open(Kind::PciMsix, false));
    let i0 = stat(&r.disk, ST_INTERRUPTS);
    arch::cli();
    let res = k_requests(&mut r, K);
    let during = count(V_MSIX);
    let pending = apic::bit(apic::IRR, V_MSIX);
    let raised = stat(&r.disk, ST_INTERRUPTS) - i0;
    arch::sti();
    take!(res);
    let delivered = wait_for(2_000_000, || count(V_MSIX) >= 1);
    settle_count(V_MSIX);
    check!(raised == K, "device raised {} interrupts for {} completions, want {}", D(raised as u64), D(K as u64), D(K as u64));
    check!(during == 0, "delivered with IF=0");
    check!(pending, "vector not pending in IRR while IF=0");
    check!(delivered, "nothing delivered after STI");
    check!(count(V_MSIX) == 1, "{} completions with IF=0: {} deliveries, want 1", D(K as u64), D(count(V_MSIX) as u64));
    Outcome::Pass
}

/// PCI 3.0 6.8.2.9: with the vector masked the device sets its pending bit instead of
/// sending; K completions leave one pending bit, and unmasking sends exactly one message.
pub fn vblk_msix_masked_vector_pends_and_fires_once_on_unmask() -> Outcome {
    let mut r = take!(open(Kind::PciMsix, false));
    let Some(m) = r.msix else { fail!("no MSI-X") };
    let (i0, m0) = (stat(&r.disk, ST_INTERRUPTS), stat(&r.disk, ST_MODERATED));
    m.set_masked(0, true);
    take!(k_requests(&mut r, K));
    settle();
    let during = count(V_MSIX);
    let pba = m.pending(0);
    let (raised, held) = (stat(&r.disk, ST_INTERRUPTS) - i0, stat(&r.disk, ST_MODERATED) - m0);
    m.set_masked(0, false);
    let delivered = wait_for(2_000_000, || count(V_MSIX) >= 1);
    settle_count(V_MSIX);
    let raised_after = stat(&r.disk, ST_INTERRUPTS) - i0;
    check!(during == 0, "masked vector delivered {} times", D(during as u64));
    check!(pba, "pending bit not set after {} completions on a masked vector", D(K as u64));
    check!(raised == 0 && held == K, "device sent {} and pended {} of {} while masked", D(raised as u64), D(held as u64), D(K as u64));
    check!(delivered, "nothing delivered on unmask");
    check!(count(V_MSIX) == 1 && raised_after == 1, "unmask: {} deliveries, device sent {}, want 1", D(count(V_MSIX) as u64), D(raised_after as u64));
    check!(!m.pending(0), "pending bit still set after the message was sent");
    Outcome::Pass
}

/// virtio 1.2, 2.7.7: with VRING_AVAIL_F_NO_INTERRUPT set (no EVENT_IDX) the device does
/// not interrupt; it counts each completion batch as suppressed. Clearing the flag brings
/// the interrupt back.
pub fn vblk_no_interrupt_flag_suppresses_interrupts() -> Outcome {
    let mut r = take!(open(Kind::PciMsix, false));
    let (i0, s0) = (stat(&r.disk, ST_INTERRUPTS), stat(&r.disk, ST_SUPPRESSED));
    r.dev.set_no_interrupt(true);
    take!(k_requests(&mut r, K));
    settle_count(V_MSIX);
    let during = count(V_MSIX);
    let (raised, suppressed) = (stat(&r.disk, ST_INTERRUPTS) - i0, stat(&r.disk, ST_SUPPRESSED) - s0);
    r.dev.set_no_interrupt(false);
    take!(request(&mut r, 0, false, 0, 1));
    let after = wait_for(2_000_000, || count(V_MSIX) >= 1);
    settle_count(V_MSIX);
    check!(during == 0 && raised == 0, "NO_INTERRUPT set: {} deliveries, device raised {}", D(during as u64), D(raised as u64));
    check!(suppressed == K, "device counted {} suppressed of {} completions", D(suppressed as u64), D(K as u64));
    check!(after && count(V_MSIX) == 1, "flag cleared: {} deliveries for one completion", D(count(V_MSIX) as u64));
    Outcome::Pass
}

/// virtio 1.2, 2.7.10: with VIRTIO_F_EVENT_IDX the device interrupts only when the used
/// index passes used_event. used_event = 2: completions 1, 2 and 4 are silent, completion
/// 3 (used idx 2 -> 3) interrupts.
pub fn vblk_event_idx_interrupts_only_at_used_event() -> Outcome {
    let mut r = take!(open(Kind::PciMsix, true));
    let (i0, s0) = (stat(&r.disk, ST_INTERRUPTS), stat(&r.disk, ST_SUPPRESSED));
    r.dev.set_used_event(2);
    let mut seen = [0u32; K as usize];
    for (i, s) in seen.iter_mut().enumerate() {
        take!(request(&mut r, 0, false, i as u64, 1));
        if i == 2 {
            wait_for(2_000_000, || count(V_MSIX) >= 1);
        }
        settle_count(V_MSIX);
        *s = count(V_MSIX);
    }
    let (raised, suppressed) = (stat(&r.disk, ST_INTERRUPTS) - i0, stat(&r.disk, ST_SUPPRESSED) - s0);
    check!(
        seen == [0, 0, 1, 1],
        "deliveries after completions 1..4: {} {} {} {}, want 0 0 1 1",
        D(seen[0] as u64), D(seen[1] as u64), D(seen[2] as u64), D(seen[3] as u64)
    );
    check!(raised == 1 && suppressed == 3, "device raised {} and suppressed {}, want 1 and 3", D(raised as u64), D(suppressed as u64));
    Outcome::Pass
}

/// The moderated disk's settings (DISK_MODERATION), after waiting out any moderation timer
/// an earlier case left armed.
fn moderation(r: &Rig) -> Result<(u32, u32), Outcome> {
    let usecs = testdev::command(DISK_MODERATION, [r.disk.n, 0, 0, 0]);
    let frames = testdev::command(DISK_MODERATION, [r.disk.n, 1, 0, 0]);
    if usecs == 0 || usecs > 2_000_000 || !(2..=16).contains(&frames) {
        return Err(Outcome::Skip(Msg::from_args(format_args!(
            "moderated disk has irq-usecs {} irq-max-frames {} (want 1..2000000 and 2..16)",
            D(usecs as u64),
            D(frames as u64)
        ))));
    }
    tsc::delay_us(usecs as u64 + 50_000);
    Ok((usecs, frames))
}

/// Moderation (vmm `--disk ...,irq-max-frames=M,irq-usecs=U`): M - 1 completions are held
/// (no interrupt, counted as moderated), the M-th brings one interrupt for all of them,
/// well before the U-microsecond timer.
pub fn vblk_moderation_max_frames_batches_completions() -> Outcome {
    let mut r = take!(open(Kind::ModeratedMsix, false));
    let (usecs, frames) = take!(moderation(&r));
    let (i0, m0) = (stat(&r.disk, ST_INTERRUPTS), stat(&r.disk, ST_MODERATED));
    let t0 = rdtsc();
    take!(k_requests(&mut r, frames - 1));
    let held = count(V_MSIX);
    let (raised, moderated) = (stat(&r.disk, ST_INTERRUPTS) - i0, stat(&r.disk, ST_MODERATED) - m0);
    take!(request(&mut r, 0, false, 0, 1));
    let delivered = wait_for(2_000_000, || count(V_MSIX) >= 1);
    let elapsed_us = tsc::cycles_to_ns(desc::LAST_TSC[V_MSIX as usize].load(Ordering::SeqCst).wrapping_sub(t0)) / 1000;
    let raised_m = stat(&r.disk, ST_INTERRUPTS) - i0;
    settle_count(V_MSIX);
    check!(
        held == 0 && raised == 0 && moderated == frames - 1,
        "{} completions (max frames {}): {} deliveries, device raised {}, held {}",
        D(frames as u64 - 1), D(frames as u64), D(held as u64), D(raised as u64), D(moderated as u64)
    );
    check!(delivered, "completion {} of {} brought no interrupt", D(frames as u64), D(frames as u64));
    check!(elapsed_us < usecs as u64, "the batch interrupt came after {} us, not before the {} us timer", D(elapsed_us), D(usecs as u64));
    check!(raised_m == 1 && count(V_MSIX) == 1, "{} completions: {} deliveries, device raised {}, want 1", D(frames as u64), D(count(V_MSIX) as u64), D(raised_m as u64));
    // Leave no armed timer behind.
    tsc::delay_us(usecs as u64 + 50_000);
    Outcome::Pass
}

/// Moderation timer: one completion (fewer than max frames) is held, then delivered once,
/// no sooner than irq-usecs after it was queued.
pub fn vblk_moderation_timer_flushes_held_completion() -> Outcome {
    let mut r = take!(open(Kind::ModeratedMsix, false));
    let (usecs, _) = take!(moderation(&r));
    let (i0, m0) = (stat(&r.disk, ST_INTERRUPTS), stat(&r.disk, ST_MODERATED));
    let t0 = rdtsc();
    take!(request(&mut r, 0, false, 0, 1));
    let early = count(V_MSIX);
    let delivered = wait_for(usecs as u64 * 3, || count(V_MSIX) >= 1);
    let elapsed_us = tsc::cycles_to_ns(desc::LAST_TSC[V_MSIX as usize].load(Ordering::SeqCst).wrapping_sub(t0)) / 1000;
    settle_count(V_MSIX);
    let (raised, moderated) = (stat(&r.disk, ST_INTERRUPTS) - i0, stat(&r.disk, ST_MODERATED) - m0);
    check!(early == 0, "delivered at once, not held");
    check!(delivered, "held completion never delivered (timer {} us)", D(usecs as u64));
    // TSC-derived time: allow 2% for the TSC frequency estimate.
    check!(elapsed_us >= usecs as u64 * 98 / 100, "delivered after {} us, before the {} us timer", D(elapsed_us), D(usecs as u64));
    check!(count(V_MSIX) == 1 && raised == 1 && moderated == 1, "{} deliveries, device raised {} held {}, want 1 1 1", D(count(V_MSIX) as u64), D(raised as u64), D(moderated as u64));
    Outcome::Pass
}
