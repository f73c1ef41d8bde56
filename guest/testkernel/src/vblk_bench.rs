//! virtio-blk completion-interrupt cost (part of `irqvm.mode=bench`), on the disks the VMM
//! describes through DISK_INFO (vblk_cases.rs), one JSON line per path with two extra
//! members: `requests`, `interrupts` (handler entries that acknowledged a completion, or
//! MSI-X deliveries) and `irqs_per_request`.
//!
//! * depth 1 (`vblk_msix`, `vblk_intx`, `vblk_mmio`): one 512-byte read, notify, wait for
//!   the interrupt; sample = notify write -> handler entry.
//! * batches of 4 (`*_batch4`, `*_batch4_event_idx`, `vblk_msix_batch4_moderated`): four
//!   reads, each notified at once, back to back; sample = first notify -> entry of the last
//!   interrupt of the batch. Without suppression the device may interrupt per notify; with
//!   EVENT_IDX (used_event = last request) or moderation (irq-max-frames=4) once per batch.

use crate::arch::{self, rdtsc};
use crate::bench::{emit_extra, samples, skip, Tally, N};
use crate::desc;
use crate::fmtnum::D;
use crate::tsc;
use crate::vblk_cases::{find_disk, open, Kind, Rig, REAL, SPURIOUS};
use core::fmt;
use core::sync::atomic::Ordering;

/// Depth-1 samples per path and batches per batch path (each request is a VM exit and a
/// trip through the device thread: far slower than the other paths).
const N_DEPTH1: usize = 5000;
const N_BATCH: usize = 2000;
const BATCH: u16 = 4;

/// `x / y` with three decimals, without floating point.
struct Ratio(u64, u64);
impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.1 == 0 {
            return f.write_str("0");
        }
        let milli = self.0 * 1000 / self.1;
        let frac = milli % 1000;
        write!(f, "{}.{}{}{}", D(milli / 1000), D(frac / 100), D(frac / 10 % 10), D(frac % 10))
    }
}

fn spin_until(us: u64, cond: impl Fn() -> bool) -> bool {
    let end = rdtsc() + tsc::us_to_cycles(us);
    while !cond() {
        if rdtsc() > end {
            return false;
        }
        arch::pause();
    }
    true
}

fn deliveries(r: &Rig) -> u32 {
    r.deliveries()
}

/// One path: `batch` requests per sample, EVENT_IDX as given.
fn path(t: &mut Tally, name: &str, kind: Kind, event_idx: bool, batch: u16) {
    if find_disk(kind).is_none() {
        skip(t, name, "no such virtio disk attached (irqvm bench attaches scratch disks)");
        return;
    }
    let mut r = match open(kind, event_idx) {
        Ok(r) => r,
        Err(_) => {
            skip(t, name, "device initialization failed (see the vblk_* cases)");
            return;
        }
    };
    desc::reset_counts();
    REAL.store(0, Ordering::SeqCst);
    SPURIOUS.store(0, Ordering::SeqCst);
    let v = r.vector as usize;
    let rounds = if batch == 1 { N_DEPTH1 } else { N_BATCH };
    let (mut n, mut missed, mut requests) = (0usize, 0u32, 0u64);
    for _ in 0..rounds.min(N) {
        let before = deliveries(&r);
        let target = r.dev.consumed().wrapping_add(batch);
        if event_idx {
            r.dev.set_used_event(target.wrapping_sub(1));
        }
        let t0 = rdtsc();
        for i in 0..batch {
            r.dev.queue(i as usize, false, i as u64, 1);
            r.dev.kick();
        }
        requests += batch as u64;
        let done = spin_until(200_000, || r.dev.used_idx() == target);
        // Depth 1, EVENT_IDX and moderation: exactly one interrupt covers the batch. A plain
        // batch may take up to one per notify: give stragglers 300 us.
        let got = spin_until(200_000, || deliveries(&r) > before);
        if batch > 1 && !event_idx && kind != Kind::ModeratedMsix {
            tsc::delay_us(300);
        }
        while r.dev.pop_used().is_some() {}
        if !done || !got {
            missed += 1;
            if missed > 100 {
                break;
            }
            continue;
        }
        samples()[n] = desc::LAST_TSC[v].load(Ordering::SeqCst).wrapping_sub(t0);
        n += 1;
    }
    tsc::delay_us(2000);
    let irqs = deliveries(&r) as u64;
    let spurious = SPURIOUS.load(Ordering::SeqCst);
    drop(r);
    emit_extra(
        t,
        name,
        n,
        missed,
        format_args!(
            ",\"requests\":{},\"interrupts\":{},\"irqs_per_request\":{},\"spurious\":{}",
            D(requests),
            D(irqs),
            Ratio(irqs, requests),
            D(spurious as u64)
        ),
    );
}

pub fn run(t: &mut Tally) {
    path(t, "vblk_msix", Kind::PciMsix, false, 1);
    path(t, "vblk_intx", Kind::PciIntx, false, 1);
    path(t, "vblk_mmio", Kind::Mmio, false, 1);
    path(t, "vblk_msix_batch4", Kind::PciMsix, false, BATCH);
    path(t, "vblk_msix_batch4_event_idx", Kind::PciMsix, true, BATCH);
    path(t, "vblk_msix_batch4_moderated", Kind::ModeratedMsix, false, BATCH);
    path(t, "vblk_intx_batch4", Kind::PciIntx, false, BATCH);
    path(t, "vblk_intx_batch4_event_idx", Kind::PciIntx, true, BATCH);
    path(t, "vblk_mmio_batch4", Kind::Mmio, false, BATCH);
    path(t, "vblk_mmio_batch4_event_idx", Kind::Mmio, true, BATCH);
}
