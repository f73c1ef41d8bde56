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
        } else if let Some(k) = pit_ch0_calibrate() {
            found = (k, "pit-ch0");
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

fn pit_ch0_read() -> u16 {
    outb(0x43, 0x00); // counter latch, channel 0
    let lo = inb(0x40) as u16;
    let hi = inb(0x40) as u16;
    (hi << 8) | lo
}

/// Without port 0x61 (QEMU microvm has no speaker port): run channel 0 as a rate generator
/// (mode 2) and read its count with the counter-latch command (8254 datasheet, "Counter
/// Latch Command") until 20 ms of PIT ticks have passed. None without a PIT.
fn pit_ch0_calibrate() -> Option<u64> {
    const TICKS: u64 = 23864; // 20 ms at 1.193182 MHz
    outb(0x43, 0x34); // channel 0, lobyte/hibyte, mode 2, binary
    outb(0x40, 0xff);
    outb(0x40, 0xff);
    let mut prev = pit_ch0_read();
    let t0 = rdtsc();
    let mut elapsed = 0u64;
    let mut still = 0u32;
    while elapsed < TICKS {
        let cur = pit_ch0_read();
        if cur == prev {
            still += 1;
            if still > 100_000 {
                return None;
            }
            continue;
        }
        still = 0;
        // Counts down from 0xffff and reloads.
        elapsed += if cur < prev { (prev - cur) as u64 } else { (prev as u64) + 0xffff - cur as u64 };
        prev = cur;
    }
    let dt = rdtsc() - t0;
    // Leave channel 0 idle: mode 0 with a count written stops the periodic output.
    outb(0x43, 0x30);
    outb(0x40, 0);
    outb(0x40, 0);
    let k = dt.saturating_mul(1_193_182) / elapsed / 1000;
    (k >= 10_000).then_some(k)
}
