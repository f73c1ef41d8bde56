//! TSC frequency: CPUID 0x15 (crystal ratio), 0x16 (base MHz), the hypervisor timing leaf
//! 0x40000010 (TSC kHz, VMware/KVM convention), else calibration against PIT channel 2
//! (8254 datasheet: mode 0 "interrupt on terminal count"; gate and OUT2 via port 0x61).

use crate::arch::{cpuid, inb, outb, rdtsc};
use core::sync::atomic::{AtomicU64, Ordering};

static KHZ: AtomicU64 = AtomicU64::new(0);
/// Assumed when nothing tells (only used for timeouts; bench then reports cycles only).
const FALLBACK_KHZ: u64 = 3_000_000;

pub fn khz() -> u64 {
    match KHZ.load(Ordering::Relaxed) {
        0 => FALLBACK_KHZ,
        k => k,
    }
}

pub fn known() -> bool {
    KHZ.load(Ordering::Relaxed) != 0
}

pub fn cycles_to_ns(c: u64) -> u64 {
    c.saturating_mul(1_000_000) / khz()
}

pub fn us_to_cycles(us: u64) -> u64 {
    us.saturating_mul(khz()) / 1000
}

/// Busy-wait `us` microseconds.
pub fn delay_us(us: u64) {
    let end = rdtsc().wrapping_add(us_to_cycles(us));
    while rdtsc() < end {
        core::hint::spin_loop();
    }
}

/// Returns (kHz, source name).
pub fn init() -> (u64, &'static str) {
    let max = cpuid(0, 0).eax;
    let mut found = (0, "none");
    if max >= 0x15 {
        let l = cpuid(0x15, 0);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            found = ((l.ecx as u64) * (l.ebx as u64) / (l.eax as u64) / 1000, "cpuid15");
        }
    }
    if found.0 == 0 && max >= 0x16 {
        let l = cpuid(0x16, 0);
        if l.eax & 0xffff != 0 {
            found = (((l.eax & 0xffff) as u64) * 1000, "cpuid16");
        }
    }
    if found.0 == 0 {
        let hv = cpuid(0x4000_0000, 0).eax;
        if (0x4000_0010..0x5000_0000).contains(&hv) {
            let l = cpuid(0x4000_0010, 0);
            if l.eax != 0 {
                found = (l.eax as u64, "cpuid40000010");
            }
        }
    }
    if found.0 == 0 {
        if let Some(k) = pit_calibrate() {
            found = (k, "pit");
        }
    }
    KHZ.store(found.0, Ordering::SeqCst);
    found
}

/// Count TSC cycles across 10 ms of PIT channel 2 (1.193182 MHz); None without a PIT.
fn pit_calibrate() -> Option<u64> {
    const TICKS: u64 = 11932; // 10 ms
    let mut best = u64::MAX;
    for _ in 0..3 {
        let p61 = inb(0x61);
        outb(0x61, (p61 & !0x02) | 0x01); // gate on, speaker off
        outb(0x43, 0xb0); // channel 2, lobyte/hibyte, mode 0, binary
        outb(0x42, TICKS as u8);
        outb(0x42, (TICKS >> 8) as u8);
        let t0 = rdtsc();
        // OUT2 (port 0x61 bit 5) goes high at terminal count. A bus with no PIT reads
        // 0xff: bit 5 is set at once and the measured time is implausibly short.
        let mut n = 0u64;
        while inb(0x61) & 0x20 == 0 {
            n += 1;
            if n > 50_000_000 {
                return None;
            }
        }
        let dt = rdtsc() - t0;
        best = best.min(dt);
    }
    // < 10 MHz TSC would mean no PIT answered.
    let k = best.saturating_mul(1_193_182) / TICKS / 1000;
    if k < 10_000 {
        None
    } else {
        Some(k)
    }
}
