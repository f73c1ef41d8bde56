//! Intel 8254 Programmable Interval Timer and the PC/AT system control port B (port 0x61).
//!
//! Implemented from the 8254 datasheet (Intel order no. 231164-005); section names below are
//! the datasheet's.
//!
//! * [`Pit`] is the 8254 at ports 0x40-0x43 (register it with length [`Pit::PORT_LEN`]):
//!   counters 0-2 at offsets 0-2, the Control Word Register at offset 3 ("Read/Write
//!   Operations Summary", table 1).
//! * [`Port61`] is system control port B (register it at 0x61, length 1): bit 0 is counter 2's
//!   GATE, bit 1 the speaker data enable (stored), bits 2-3 parity/IOCHK check enables
//!   (stored), bit 4 the refresh-request toggle (counter 1's output on the AT, computed from
//!   the clock: it flips every 15.085 us), bit 5 counter 2's OUT. Bits 4-7 are read-only.
//!
//! Wiring as on a PC: every counter's CLK input is 1.193182 MHz ([`PIT_HZ`]); counters 0 and
//! 1 have GATE tied high; counter 2's GATE is port 0x61 bit 0; counter 0's OUT is ISA IRQ 0.
//!
//! **Time.** The counters are not stepped: each counter remembers the CLK tick at which its
//! counting element (CE) was loaded, and every read computes the CE and OUT from the ticks
//! elapsed on a monotonic [`Clock`] since then (ticks = elapsed ns x 1193182 / 10^9). So a
//! guest calibrating its TSC or local APIC timer against counter 2 (polling OUT2 in port 0x61,
//! or reading counter 2 back) sees the true rate no matter how long each port exit takes.
//!
//! Each guest access is still one VM exit to userspace (8-9 us on a PVM host, see
//! shared/HOST-KVM.md), so a calibration loop that needs thousands of polls of port 0x61 per
//! 10 ms (Linux's `pit_calibrate_tsc()` wants 5000) gets too few samples there and gives up;
//! the values it reads are right, there are just fewer of them. Guests with kvmclock or CPUID
//! TSC leaves do not calibrate against the PIT at all.
//!
//! **IRQ 0.** A timer thread owned by the [`Pit`] (stopped and joined when it is dropped)
//! pulses the IRQ 0 line at every rising edge of counter 0's OUT that ends a period in modes
//! 2 and 3, and once at terminal count in modes 0, 1, 4 and 5; it is re-armed whenever the
//! guest reprograms counter 0. It sleeps on a condition variable with a deadline, never spins.
//! Two host-side policies differ from a chip on a board:
//! * **throttle:** pulses are at least [`MIN_IRQ_INTERVAL_NS`] (10 us) apart. A guest that
//!   programs a period shorter than that (count 1-11, including the illegal count 1 in modes
//!   2/3) gets 100 kHz at most instead of up to 1.19 MHz host thread wake-ups;
//! * **coalescing:** when the host thread runs late and several periods ended since the last
//!   pulse, it sends one pulse, like an edge-triggered 8259 input that latches one request
//!   for several edges. Lost ticks are the guest's to recover from its clocksource.
//!
//! **Undefined corners**, chosen and kept stable: the counters power up idle (mode 0, no count:
//! OUT low, no interrupts) until the guest programs them (the datasheet leaves the power-up
//! state undefined); reading the Control Word Register returns 0xFF (table 1: "No-Operation
//! (3-State)"); a control word discards pending latched count/status; latched counts are read
//! LSB first in two-byte mode independently of the live-read flip-flop; BCD count bytes with
//! nibbles above 9 are taken digit by digit modulo 10000; while GATE is low before a count is
//! loaded, the load itself waits for GATE.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use irqchip::InterruptLine;

use crate::BusDevice;

/// The 8254 CLK input on a PC: 14.31818 MHz / 12.
pub const PIT_HZ: u64 = 1_193_182;
/// Shortest time between two IRQ 0 pulses the timer thread sends (see the module docs).
pub const MIN_IRQ_INTERVAL_NS: u64 = 10_000;
/// Period of the port 0x61 bit 4 refresh toggle on the PC/AT (counter 1 at count 18), in ns.
pub const REFRESH_TOGGLE_NS: u64 = 15_085;

const NS_PER_S: u128 = 1_000_000_000;

/// A monotonic time source in nanoseconds since an arbitrary epoch.
pub trait Clock: Send + Sync {
    fn now_ns(&self) -> u64;
}

/// The host's monotonic clock (`Instant`), epoch at creation.
#[derive(Debug, Clone, Copy)]
pub struct HostClock {
    epoch: Instant,
}

impl HostClock {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }
}

impl Default for HostClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for HostClock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// CLK ticks completed by `ns`.
fn ns_to_tick(ns: u64) -> u64 {
    // ns * PIT_HZ / 1e9 < ns, so the quotient always fits.
    u64::try_from(u128::from(ns) * u128::from(PIT_HZ) / NS_PER_S).unwrap_or(u64::MAX)
}

/// The first nanosecond at which tick `t` has completed.
fn tick_to_ns(t: u64) -> u64 {
    let hz = u128::from(PIT_HZ);
    u64::try_from((u128::from(t) * NS_PER_S).div_ceil(hz)).unwrap_or(u64::MAX)
}

/// Errors creating a [`Pit`].
#[derive(Debug, thiserror::Error)]
pub enum PitError {
    #[error("cannot start the 8254 PIT timer thread ({0}); the host is out of threads or memory, free some and retry")]
    Thread(#[source] std::io::Error),
}

/// RW field of the control word ("Control Word Format"): how the counter's bytes are accessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Lsb = 1,
    Msb = 2,
    /// Least significant byte first, then most significant byte.
    Word = 3,
}

/// Where the counting element is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// No count loaded since the control word (modes 1/5: none triggered yet; mode 0: also
    /// between the two bytes of a new count). The CE shows `hold`.
    Idle,
    /// Counting: at tick `t >= origin` the CE has made `t - origin + offset` decrements of the
    /// current count `n` ("e" below). The CE is loaded at tick `origin`.
    Counting { origin: u64, offset: u64 },
    /// GATE low: counting suspended after `e` decrements (modes 0 and 4 resume from here; modes
    /// 2 and 3 reload on the next rising GATE).
    Paused { e: u64 },
}

/// A mode 2/3 count written while counting: it takes over at `at`, the end of the current
/// period (mode 2) or half-period (mode 3), with `offset` decrements already made (mode 3
/// entering its low half).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    n: u32,
    at: u64,
    offset: u64,
}

/// A count latched by a Counter Latch or Read-Back command, with its byte position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Latched {
    value: u16,
    msb_next: bool,
}

/// One of the three counters.
#[derive(Debug, Clone)]
struct Counter {
    /// M2..M0 as written (for the status byte).
    mode_bits: u8,
    /// The mode it means (X10 = 2, X11 = 3).
    mode: u8,
    access: Access,
    bcd: bool,
    gate: bool,
    /// Count register: the last complete count written since the control word.
    cr: Option<u32>,
    /// The count the CE is working on, 1..=65536 (binary) or 1..=10000 (BCD); count 0 is the
    /// maximum.
    n: u32,
    run: Run,
    pending: Option<Pending>,
    /// CE value while idle, in binary.
    hold: u32,
    /// Tick at which the last written count enters (or entered) the CE; None while no count
    /// is on its way in. Status "Null Count" is 1 until then.
    loaded_at: Option<u64>,
    /// First byte of a two-byte count, waiting for the second (the write flip-flop).
    write_lsb: Option<u8>,
    /// The read flip-flop for unlatched two-byte reads.
    read_msb_next: bool,
    latched: Option<Latched>,
    latched_status: Option<u8>,
}

impl Counter {
    fn new(gate: bool) -> Self {
        Self {
            mode_bits: 0,
            mode: 0,
            access: Access::Word,
            bcd: false,
            gate,
            cr: None,
            n: 0x1_0000,
            run: Run::Idle,
            pending: None,
            hold: 0,
            loaded_at: None,
            write_lsb: None,
            read_msb_next: false,
            latched: None,
            latched_status: None,
        }
    }

    fn modulus(&self) -> u64 {
        if self.bcd {
            10_000
        } else {
            0x1_0000
        }
    }

    /// Half-periods of mode 3: OUT high for ceil(n/2) clocks, low for floor(n/2) ("Mode 3").
    fn high_half(n: u32) -> u64 {
        u64::from(n).div_ceil(2)
    }

    /// Apply a pending mode 2/3 count whose time has come.
    fn settle(&mut self, t: u64) {
        if let Some(p) = self.pending {
            if t >= p.at {
                self.pending = None;
                self.n = p.n;
                self.run = Run::Counting {
                    origin: p.at,
                    offset: p.offset,
                };
            }
        }
    }

    /// Decrements made by tick `t`, or None when the CE is not counting (idle, or not loaded).
    fn decrements(&self, t: u64) -> Option<u64> {
        match self.run {
            Run::Idle => None,
            Run::Paused { e } => Some(e),
            Run::Counting { origin, offset } => t.checked_sub(origin).map(|d| d + offset),
        }
    }

    /// CE value (binary) after `e` decrements of the current count.
    fn value_after(&self, e: u64) -> u32 {
        let m = self.modulus();
        let n = u64::from(self.n);
        let v = match self.mode {
            // Modes 2: n, n-1, ..., 1, reload ("Mode 2").
            2 => n - e % n,
            // Mode 3: the (even) count goes down by two per clock in each half ("Mode 3").
            3 => {
                let h = Self::high_half(self.n);
                let p = e % n;
                let k = if p < h { p } else { p - h };
                (n & !1).saturating_sub(2 * k)
            }
            // Modes 0, 1, 4, 5: down through zero and wrapping (FFFF, or 9999 in BCD).
            _ => (n % m + m - e % m) % m,
        };
        u32::try_from(v % m).unwrap_or(0)
    }

    /// CE value (binary) at tick `t`.
    fn ce(&self, t: u64) -> u32 {
        match self.decrements(t) {
            Some(e) => self.value_after(e),
            None => self.hold,
        }
    }

    /// OUT after `e` decrements of the current count.
    fn out_after(&self, e: u64) -> bool {
        let n = u64::from(self.n);
        match self.mode {
            // Mode 0: low until terminal count, then high. Mode 1: low from the trigger's load
            // until terminal count.
            0 | 1 => e >= n,
            // Mode 2: low for the one clock the CE holds 1.
            2 => e % n != n - 1,
            3 => e % n < Self::high_half(self.n),
            // Modes 4/5: one low clock when the CE reaches zero.
            _ => e != n,
        }
    }

    /// OUT at tick `t`.
    fn out(&self, t: u64) -> bool {
        match self.run {
            // "OUT will be initially low" only in mode 0; every other mode starts high.
            Run::Idle => self.mode != 0,
            // GATE low forces OUT high in modes 2 and 3; modes 0 and 4 just stop counting.
            Run::Paused { e } => match self.mode {
                2 | 3 => true,
                _ => self.out_after(e),
            },
            Run::Counting { .. } => match self.decrements(t) {
                Some(e) => self.out_after(e),
                // Written but not yet loaded: mode 0 is already low, mode 1 still high.
                None => self.mode != 0,
            },
        }
    }

    fn null_count(&self, t: u64) -> bool {
        self.loaded_at.is_none_or(|l| t < l)
    }

    /// Read-Back status byte ("Status Byte"): OUT, Null Count, RW1 RW0, M2 M1 M0, BCD.
    fn status(&self, t: u64) -> u8 {
        (u8::from(self.out(t)) << 7)
            | (u8::from(self.null_count(t)) << 6)
            | ((self.access as u8) << 4)
            | (self.mode_bits << 1)
            | u8::from(self.bcd)
    }

    /// The CE as the guest reads it (BCD-encoded in BCD mode).
    fn ce_encoded(&self, t: u64) -> u16 {
        let v = self.ce(t);
        if self.bcd {
            to_bcd(v)
        } else {
            u16::try_from(v & 0xffff).unwrap_or(0)
        }
    }

    /// "Control Word Format": a new mode resets the control logic; OUT goes to its initial
    /// state and the counter waits for a count.
    fn control_word(&mut self, cw: u8, t: u64) {
        self.settle(t);
        let hold = self.ce(t);
        let access = match (cw >> 4) & 3 {
            1 => Access::Lsb,
            2 => Access::Msb,
            _ => Access::Word,
        };
        self.mode_bits = (cw >> 1) & 7;
        self.mode = match self.mode_bits {
            6 => 2,
            7 => 3,
            m => m,
        };
        self.access = access;
        self.bcd = cw & 1 != 0;
        self.cr = None;
        self.run = Run::Idle;
        self.pending = None;
        self.hold = hold;
        self.loaded_at = None;
        self.write_lsb = None;
        self.read_msb_next = false;
        self.latched = None;
        self.latched_status = None;
    }

    /// Counter Latch command (or a Read-Back COUNT): a second latch before the first is read
    /// is ignored.
    fn latch_count(&mut self, t: u64) {
        self.settle(t);
        if self.latched.is_none() {
            self.latched = Some(Latched {
                value: self.ce_encoded(t),
                msb_next: self.access == Access::Msb,
            });
        }
    }

    fn latch_status(&mut self, t: u64) {
        self.settle(t);
        if self.latched_status.is_none() {
            self.latched_status = Some(self.status(t));
        }
    }

    fn read(&mut self, t: u64) -> u8 {
        self.settle(t);
        // "If both count and status of a counter are latched, the first read operation of
        // that counter will return latched status."
        if let Some(s) = self.latched_status.take() {
            return s;
        }
        if let Some(l) = self.latched {
            let [lo, hi] = l.value.to_le_bytes();
            return match (self.access, l.msb_next) {
                (Access::Word, false) => {
                    self.latched = Some(Latched {
                        msb_next: true,
                        ..l
                    });
                    lo
                }
                (_, true) => {
                    self.latched = None;
                    hi
                }
                (_, false) => {
                    self.latched = None;
                    lo
                }
            };
        }
        let [lo, hi] = self.ce_encoded(t).to_le_bytes();
        match self.access {
            Access::Lsb => lo,
            Access::Msb => hi,
            Access::Word => {
                let msb = self.read_msb_next;
                self.read_msb_next = !msb;
                if msb {
                    hi
                } else {
                    lo
                }
            }
        }
    }

    fn write(&mut self, b: u8, t: u64) {
        self.settle(t);
        let raw = match self.access {
            Access::Lsb => u16::from(b),
            Access::Msb => u16::from(b) << 8,
            Access::Word => match self.write_lsb.take() {
                None => {
                    self.write_lsb = Some(b);
                    // Mode 0: "Writing the first byte disables counting. OUT is set low
                    // immediately."
                    if self.mode == 0 {
                        self.hold = self.ce(t);
                        self.run = Run::Idle;
                        self.loaded_at = None;
                    }
                    return;
                }
                Some(lo) => u16::from_le_bytes([lo, b]),
            },
        };
        self.load_count(raw, t);
    }

    /// A complete count arrived in the count register.
    fn load_count(&mut self, raw: u16, t: u64) {
        let m = self.modulus();
        let v = if self.bcd {
            u64::from(from_bcd(raw))
        } else {
            u64::from(raw)
        };
        let n = u32::try_from(if v == 0 { m } else { v }).unwrap_or(0x1_0000);
        if n == 1 && matches!(self.mode, 2 | 3) {
            irqchip::guest_warn!(
                "8254: count 1 is illegal in mode {} (minimum 2); IRQ 0 is throttled",
                self.mode
            );
        }
        self.cr = Some(n);
        let load = t.saturating_add(1);
        match self.mode {
            // Modes 1/5: the count waits in the CR for a GATE trigger; a one-shot in progress
            // is not affected.
            1 | 5 => self.loaded_at = None,
            // Modes 2/3 while counting: "the new count will be loaded at the end of the
            // current counting cycle" (mode 3: half-cycle).
            2 | 3 if self.gate && self.decrements(t).is_some() => self.schedule_pending(n, t),
            _ => {
                // Mode 0/4 (any time) and 2/3 (not yet counting): loaded on the next CLK.
                self.hold = self.ce(t);
                self.n = n;
                self.pending = None;
                self.run = if self.gate {
                    Run::Counting {
                        origin: load,
                        offset: 0,
                    }
                } else {
                    Run::Paused { e: 0 }
                };
                self.loaded_at = Some(load);
            }
        }
    }

    fn schedule_pending(&mut self, n: u32, t: u64) {
        let Run::Counting { origin, offset } = self.run else {
            return;
        };
        let Some(e0) = self.decrements(t) else { return };
        let cur = u64::from(self.n);
        let p = e0 % cur;
        let (boundary, new_offset) = if self.mode == 3 && p < Self::high_half(self.n) {
            // End of the high half: the new count starts with its low half.
            (e0 - p + Self::high_half(self.n), Self::high_half(n))
        } else {
            (e0 - p + cur, 0)
        };
        let at = origin.saturating_add(boundary - offset);
        self.pending = Some(Pending {
            n,
            at,
            offset: new_offset,
        });
        self.loaded_at = Some(at);
    }

    /// A GATE level from port 0x61 (counter 2) at tick `t` ("Gate Pin Operations Summary").
    fn set_gate(&mut self, level: bool, t: u64) {
        self.settle(t);
        let rising = level && !self.gate;
        let falling = !level && self.gate;
        self.gate = level;
        match self.mode {
            0 | 4 => {
                if falling {
                    let e = self.decrements(t).unwrap_or(0);
                    if self.run != Run::Idle {
                        self.run = Run::Paused { e };
                    }
                } else if rising {
                    if let Run::Paused { e } = self.run {
                        self.run = Run::Counting {
                            origin: t,
                            offset: e,
                        };
                        if self.loaded_at.is_some_and(|l| l > t) {
                            self.loaded_at = Some(t);
                        }
                    }
                }
            }
            2 | 3 => {
                if falling {
                    if let Some(e) = self.decrements(t) {
                        self.run = Run::Paused { e };
                    }
                } else if rising && self.cr.is_some() {
                    // "Initiates counting" / reload: the newest count on the next CLK.
                    self.pending = None;
                    self.restart(t);
                }
            }
            _ => {
                // Modes 1/5: the rising edge triggers (and retriggers) the one-shot.
                if rising && self.cr.is_some() {
                    self.restart(t);
                }
            }
        }
    }

    fn restart(&mut self, t: u64) {
        let load = t.saturating_add(1);
        self.hold = self.ce(t);
        self.n = self.cr.unwrap_or(self.n);
        self.run = Run::Counting {
            origin: load,
            offset: 0,
        };
        self.loaded_at = Some(load);
    }

    /// First tick after `after` at which this counter's OUT ends a period (modes 2/3: OUT
    /// rises as the CE reloads) or reaches terminal count (modes 0/1/4/5, once).
    fn next_event_after(&self, after: u64) -> Option<u64> {
        let Run::Counting { origin, offset } = self.run else {
            return None;
        };
        let seg = |n: u32, origin: u64, offset: u64| -> Option<u64> {
            let n = u64::from(n);
            let e_min = if after < origin {
                offset
            } else {
                after - origin + offset + 1
            };
            let e = match self.mode {
                2 | 3 => e_min.div_ceil(n).max(1).checked_mul(n)?,
                _ if n >= e_min => n,
                _ => return None,
            };
            origin.checked_add(e - offset)
        };
        let first = seg(self.n, origin, offset);
        match self.pending {
            Some(p) if first.is_none_or(|f| f > p.at) => seg(p.n, p.at, p.offset),
            _ => first,
        }
    }
}

fn to_bcd(v: u32) -> u16 {
    let v = v % 10_000;
    let d = |k: u32| ((v / k) % 10) as u16;
    (d(1000) << 12) | (d(100) << 8) | (d(10) << 4) | d(1)
}

fn from_bcd(raw: u16) -> u32 {
    let nib = |s: u16| u32::from((raw >> s) & 0xf);
    (nib(12) * 1000 + nib(8) * 100 + nib(4) * 10 + nib(0)) % 10_000
}

/// What the IRQ 0 timer thread should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Poll {
    /// Pulse IRQ 0 now.
    Fire,
    /// Sleep until this clock time (ns), or a reprogram.
    WaitUntil(u64),
    /// Counter 0 will not interrupt until reprogrammed.
    Idle,
}

struct State {
    counters: [Counter; 3],
    /// Port 0x61 bits 1-3 as written.
    port61: u8,
    /// Tick of counter 0's next interrupt.
    irq_next: Option<u64>,
    /// When the timer thread last pulsed IRQ 0 (ns).
    last_fire_ns: Option<u64>,
    stop: bool,
}

impl State {
    fn rearm_irq(&mut self, t: u64) {
        self.irq_next = self.counters[0].next_event_after(t);
    }

    /// The timer thread's decision at `now_ns`: fire when counter 0's next event is due and
    /// the throttle allows it; then arm the event after now (missed periods coalesce).
    fn poll_irq(&mut self, now_ns: u64) -> Poll {
        let Some(ev) = self.irq_next else {
            return Poll::Idle;
        };
        let not_before = self
            .last_fire_ns
            .map_or(0, |l| l.saturating_add(MIN_IRQ_INTERVAL_NS));
        let due = tick_to_ns(ev).max(not_before);
        if now_ns < due {
            return Poll::WaitUntil(due);
        }
        let t = ns_to_tick(now_ns);
        self.counters[0].settle(t);
        self.rearm_irq(t);
        self.last_fire_ns = Some(now_ns);
        Poll::Fire
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    clock: Arc<dyn Clock>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tick(&self) -> u64 {
        ns_to_tick(self.clock.now_ns())
    }
}

fn timer_thread(shared: Arc<Shared>, irq0: Arc<dyn InterruptLine>) {
    let mut st = shared.lock();
    loop {
        if st.stop {
            return;
        }
        let now = shared.clock.now_ns();
        match st.poll_irq(now) {
            Poll::Fire => {
                // Pulse without the lock: the interrupt controller has its own.
                drop(st);
                irq0.pulse();
                st = shared.lock();
            }
            Poll::WaitUntil(due) => {
                let d = Duration::from_nanos(due.saturating_sub(now));
                st = match shared.wake.wait_timeout(st, d) {
                    Ok((g, _)) => g,
                    Err(e) => e.into_inner().0,
                };
            }
            Poll::Idle => {
                st = shared.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
    }
}

/// The 8254 at ports 0x40-0x43 (see the module docs).
pub struct Pit {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Pit {
    /// Ports 0x40..=0x43.
    pub const PORT_LEN: u64 = 4;
    /// Counter 0's OUT is ISA IRQ 0, which irqvm wires to GSI 2 (IOAPIC pin 2 and PIC IRQ 0).
    pub const IRQ0_GSI: u32 = 2;

    /// A PIT on the host's monotonic clock, pulsing `irq0` from counter 0.
    pub fn new(irq0: Arc<dyn InterruptLine>) -> Result<Self, PitError> {
        Self::with_clock(irq0, Arc::new(HostClock::new()))
    }

    /// A PIT on `clock` (tests inject a fake one).
    pub fn with_clock(
        irq0: Arc<dyn InterruptLine>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, PitError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                // Counters 0 and 1 have GATE tied high; counter 2's comes from port 0x61.
                counters: [Counter::new(true), Counter::new(true), Counter::new(false)],
                port61: 0,
                irq_next: None,
                last_fire_ns: None,
                stop: false,
            }),
            wake: Condvar::new(),
            clock,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("pit-irq0".into())
            .spawn(move || timer_thread(s, irq0))
            .map_err(PitError::Thread)?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// The system control port B device (port 0x61) sharing this PIT's counter 2.
    pub fn port61(&self) -> Port61 {
        Port61 {
            shared: self.shared.clone(),
        }
    }

    /// Wake the timer thread to re-read the clock (after a test moves a fake clock).
    #[cfg(test)]
    fn wake(&self) {
        let _g = self.shared.lock();
        self.shared.wake.notify_all();
    }

    fn write_port(&self, offset: u64, b: u8) {
        let t = self.shared.tick();
        let mut st = self.shared.lock();
        let touched_counter0 = match offset {
            0..=2 => {
                let i = offset as usize;
                if let Some(c) = st.counters.get_mut(i) {
                    c.write(b, t);
                }
                i == 0
            }
            3 => {
                let sc = b >> 6;
                if sc == 3 {
                    // Read-Back command: D5 = !COUNT, D4 = !STATUS, D3..D1 = CNT2..CNT0.
                    for (i, c) in st.counters.iter_mut().enumerate() {
                        if b & (2 << i) != 0 {
                            if b & 0x20 == 0 {
                                c.latch_count(t);
                            }
                            if b & 0x10 == 0 {
                                c.latch_status(t);
                            }
                        }
                    }
                    false
                } else {
                    if let Some(c) = st.counters.get_mut(usize::from(sc)) {
                        if (b >> 4) & 3 == 0 {
                            c.latch_count(t);
                        } else {
                            c.control_word(b, t);
                        }
                    }
                    sc == 0
                }
            }
            _ => false,
        };
        if touched_counter0 {
            let before = st.irq_next;
            st.rearm_irq(t);
            if st.irq_next != before {
                self.shared.wake.notify_all();
            }
        }
    }

    fn read_port(&self, offset: u64) -> u8 {
        let t = self.shared.tick();
        let mut st = self.shared.lock();
        match offset {
            0..=2 => st
                .counters
                .get_mut(offset as usize)
                .map_or(0xff, |c| c.read(t)),
            // The Control Word Register cannot be read: the bus floats.
            _ => 0xff,
        }
    }
}

impl Drop for Pit {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            // A panicked timer thread has nothing left to clean up.
            let _ = t.join();
        }
    }
}

impl BusDevice for Pit {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset.checked_add(i as u64) {
                Some(o) => self.read_port(o),
                None => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            if let Some(o) = offset.checked_add(i as u64) {
                self.write_port(o, b);
            }
        }
    }
}

// Port 0x61 bits (PC/AT system control port B).
const P61_GATE2: u8 = 1 << 0;
const P61_SPEAKER: u8 = 1 << 1;
const P61_WRITABLE: u8 = 0x0f;
const P61_REFRESH: u8 = 1 << 4;
const P61_OUT2: u8 = 1 << 5;

/// System control port B at 0x61 (see the module docs); made by [`Pit::port61`].
pub struct Port61 {
    shared: Arc<Shared>,
}

impl Port61 {
    /// Whether the guest enabled speaker data (bit 1); irqvm has no speaker.
    pub fn speaker_enabled(&self) -> bool {
        self.shared.lock().port61 & P61_SPEAKER != 0
    }
}

impl BusDevice for Port61 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let now = self.shared.clock.now_ns();
        let t = ns_to_tick(now);
        let mut st = self.shared.lock();
        st.counters[2].settle(t);
        let mut v = st.port61 & P61_WRITABLE;
        if st.counters[2].out(t) {
            v |= P61_OUT2;
        }
        if (now / REFRESH_TOGGLE_NS) & 1 != 0 {
            v |= P61_REFRESH;
        }
        for (i, b) in data.iter_mut().enumerate() {
            *b = if offset.checked_add(i as u64) == Some(0) {
                v
            } else {
                0xff
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 {
            return;
        }
        let Some(&b) = data.first() else { return };
        let t = self.shared.tick();
        let mut st = self.shared.lock();
        st.port61 = b & P61_WRITABLE;
        st.counters[2].set_gate(b & P61_GATE2 != 0, t);
    }
}

#[cfg(test)]
// Control words are written as SC_RW_MMM_BCD binary literals, grouped like the datasheet.
#[allow(clippy::unusual_byte_groupings)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A clock the test moves by hand.
    #[derive(Default)]
    struct FakeClock(AtomicU64);
    impl Clock for FakeClock {
        fn now_ns(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// Counts rising edges.
    #[derive(Default)]
    struct CountingLine(AtomicU64);
    impl InterruptLine for CountingLine {
        fn set_level(&self, level: bool) {
            if level {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    const CTRL: u64 = 3;

    struct Rig {
        pit: Pit,
        p61: Port61,
        clock: Arc<FakeClock>,
        irq0: Arc<CountingLine>,
    }

    impl Rig {
        fn new() -> Self {
            let clock = Arc::new(FakeClock::default());
            let irq0 = Arc::new(CountingLine::default());
            let pit = Pit::with_clock(irq0.clone(), clock.clone()).unwrap();
            let p61 = pit.port61();
            Self {
                pit,
                p61,
                clock,
                irq0,
            }
        }

        /// Move the clock to the first nanosecond of CLK tick `t` and wake the timer thread.
        fn at_tick(&self, t: u64) {
            self.clock.0.store(tick_to_ns(t), Ordering::SeqCst);
            self.pit.wake();
        }

        fn out(&mut self, offset: u64, v: u8) {
            self.pit.write(offset, &[v]);
        }

        fn inb(&mut self, offset: u64) -> u8 {
            let mut b = [0];
            self.pit.read(offset, &mut b);
            b[0]
        }

        /// Control word for `counter` with RW = LSB-then-MSB, binary.
        fn program(&mut self, counter: u8, mode: u8, count: u16) {
            self.out(CTRL, (counter << 6) | 0x30 | (mode << 1));
            let [lo, hi] = count.to_le_bytes();
            self.out(u64::from(counter), lo);
            self.out(u64::from(counter), hi);
        }

        /// Latch and read `counter` (LSB-then-MSB mode).
        fn count(&mut self, counter: u8) -> u16 {
            self.out(CTRL, counter << 6);
            let lo = self.inb(u64::from(counter));
            let hi = self.inb(u64::from(counter));
            u16::from_le_bytes([lo, hi])
        }

        /// Read-Back status of `counter`.
        fn status(&mut self, counter: u8) -> u8 {
            self.out(CTRL, 0xe0 | (2 << counter));
            self.inb(u64::from(counter))
        }

        fn out_pin(&mut self, counter: u8) -> bool {
            self.status(counter) & 0x80 != 0
        }

        fn p61(&mut self) -> u8 {
            let mut b = [0];
            self.p61.read(0, &mut b);
            b[0]
        }

        fn set_p61(&mut self, v: u8) {
            self.p61.write(0, &[v]);
        }

        fn pulses(&self) -> u64 {
            self.irq0.0.load(Ordering::SeqCst)
        }

        /// Wait (real time) until the timer thread has sent `n` pulses in all.
        fn wait_pulses(&self, n: u64) {
            let end = Instant::now() + Duration::from_secs(5);
            while self.pulses() < n {
                assert!(Instant::now() < end, "IRQ 0 pulse {n} never came");
                std::thread::sleep(Duration::from_millis(1));
            }
        }

        /// Give the timer thread time to (wrongly) pulse, then check it did not.
        fn assert_no_more_pulses_than(&self, n: u64) {
            std::thread::sleep(Duration::from_millis(30));
            assert_eq!(self.pulses(), n);
        }
    }

    #[test]
    fn clock_conversion_counts_1193182_ticks_per_second() {
        assert_eq!(ns_to_tick(1_000_000_000), PIT_HZ);
        assert_eq!(ns_to_tick(tick_to_ns(12345)), 12345);
        assert_eq!(ns_to_tick(tick_to_ns(12345) - 1), 12344);
    }

    #[test]
    fn mode0_out_goes_high_n_plus_1_clocks_after_count_written() {
        let mut r = Rig::new();
        r.at_tick(10);
        r.program(0, 0, 5);
        assert!(!r.out_pin(0), "OUT low after the control word and count");
        r.at_tick(15);
        assert!(!r.out_pin(0));
        r.at_tick(16);
        assert!(r.out_pin(0), "OUT high N+1 = 6 clocks after the write");
        r.at_tick(100);
        assert!(r.out_pin(0), "and stays high");
    }

    #[test]
    fn mode0_counter_keeps_counting_through_zero_after_terminal_count() {
        let mut r = Rig::new();
        r.program(0, 0, 3);
        r.at_tick(1);
        assert_eq!(r.count(0), 3, "loaded on the first CLK");
        r.at_tick(4);
        assert_eq!(r.count(0), 0);
        r.at_tick(5);
        assert_eq!(r.count(0), 0xffff);
    }

    #[test]
    fn first_byte_of_two_byte_count_stops_mode0_and_drives_out_low() {
        let mut r = Rig::new();
        r.program(0, 0, 2);
        r.at_tick(50);
        assert!(r.out_pin(0));
        let before = r.count(0);
        r.out(0, 0x10);
        assert!(!r.out_pin(0), "OUT low at once");
        r.at_tick(60);
        assert_eq!(r.count(0), before, "counting disabled");
        r.out(0, 0x00);
        r.at_tick(61);
        assert_eq!(r.count(0), 0x10, "second byte loads the new count");
    }

    #[test]
    fn port61_out2_goes_high_after_mode0_count_expires() {
        let mut r = Rig::new();
        r.set_p61(P61_GATE2);
        r.at_tick(1000);
        r.program(2, 0, 100);
        assert_eq!(r.p61() & P61_OUT2, 0);
        r.at_tick(1100);
        assert_eq!(r.p61() & P61_OUT2, 0);
        r.at_tick(1101);
        assert_ne!(r.p61() & P61_OUT2, 0);
    }

    #[test]
    fn lsb_msb_access_toggles_flip_flop() {
        let mut r = Rig::new();
        r.out(CTRL, 0b10_11_000_0); // counter 2, LSB then MSB, mode 0
        r.out(2, 0x34);
        r.out(2, 0x12);
        // Gate of counter 2 is low: the count sits in the CE unchanged.
        r.at_tick(500);
        assert_eq!(r.inb(2), 0x34, "first read: LSB");
        assert_eq!(r.inb(2), 0x12, "second read: MSB");
        assert_eq!(r.inb(2), 0x34, "flip-flop back to LSB");
    }

    #[test]
    fn lsb_only_access_writes_and_reads_the_low_byte() {
        let mut r = Rig::new();
        r.out(CTRL, 0b10_01_000_0);
        r.out(2, 0x7f);
        r.at_tick(3);
        assert_eq!(r.inb(2), 0x7f);
        assert_eq!(r.inb(2), 0x7f);
        assert_eq!(r.status(2) & 0x30, 0x10, "RW = 01 in the status byte");
    }

    #[test]
    fn msb_only_access_writes_the_high_byte() {
        let mut r = Rig::new();
        r.out(CTRL, 0b10_10_000_0);
        r.out(2, 0x12);
        r.at_tick(3);
        assert_eq!(r.inb(2), 0x12);
        r.out(CTRL, 0x80); // latch
        r.out(CTRL, 0b10_11_000_0);
        // A control word discards the latch: the word read is the live CE (0x1200).
        assert_eq!(r.inb(2), 0x00);
        assert_eq!(r.inb(2), 0x12);
    }

    #[test]
    fn counter_latch_freezes_count_until_both_bytes_read() {
        let mut r = Rig::new();
        r.program(0, 2, 1000);
        r.at_tick(101); // 100 decrements
        r.out(CTRL, 0x00);
        r.at_tick(301);
        assert_eq!(r.inb(0), (900u16 & 0xff) as u8);
        r.at_tick(401);
        assert_eq!(r.inb(0), (900u16 >> 8) as u8);
        assert_eq!(r.count(0), 600, "latch released after the MSB");
    }

    #[test]
    fn second_latch_before_read_is_ignored() {
        let mut r = Rig::new();
        r.program(0, 2, 1000);
        r.at_tick(11);
        r.out(CTRL, 0x00);
        r.at_tick(21);
        r.out(CTRL, 0x00);
        let lo = r.inb(0);
        let hi = r.inb(0);
        assert_eq!(u16::from_le_bytes([lo, hi]), 990);
    }

    #[test]
    fn readback_latches_status_and_count() {
        let mut r = Rig::new();
        r.program(0, 2, 1000);
        r.at_tick(51);
        r.out(CTRL, 0b11_00_001_0); // latch count and status of counter 0
        r.at_tick(500);
        let status = r.inb(0);
        assert_eq!(
            status,
            0x80 | 0x30 | (2 << 1),
            "OUT high, null count 0, RW 11, mode 2, binary"
        );
        let lo = r.inb(0);
        let hi = r.inb(0);
        assert_eq!(u16::from_le_bytes([lo, hi]), 950);
    }

    #[test]
    fn readback_can_latch_several_counters_at_once() {
        let mut r = Rig::new();
        r.program(0, 2, 1000);
        r.program(1, 2, 2000);
        r.at_tick(11);
        r.out(CTRL, 0b11_01_011_0); // COUNT of counters 0 and 1, no status
        r.at_tick(99);
        assert_eq!(r.inb(0), (990u16 & 0xff) as u8);
        assert_eq!(r.inb(0), (990u16 >> 8) as u8);
        assert_eq!(r.inb(1), (1990u16 & 0xff) as u8);
        assert_eq!(r.inb(1), (1990u16 >> 8) as u8);
    }

    #[test]
    fn readback_status_reports_null_count_until_count_loaded() {
        let mut r = Rig::new();
        r.at_tick(7);
        r.out(CTRL, 0x34); // counter 0 mode 2
        assert_ne!(r.status(0) & 0x40, 0, "null count after the control word");
        r.out(0, 0x10);
        r.out(0, 0x00);
        assert_ne!(r.status(0) & 0x40, 0, "still null before the load CLK");
        r.at_tick(8);
        assert_eq!(r.status(0) & 0x40, 0, "count loaded into the CE");
    }

    #[test]
    fn status_is_read_before_count_when_both_latched() {
        let mut r = Rig::new();
        r.program(1, 0, 0x0203);
        r.at_tick(1);
        r.out(CTRL, 0x40); // counter latch of counter 1
        r.out(CTRL, 0b11_10_010_0); // then status of counter 1
        assert_eq!(
            r.inb(1),
            0x30,
            "status first: OUT low, loaded, RW 11, mode 0"
        );
        assert_eq!(r.inb(1), 0x03);
        assert_eq!(r.inb(1), 0x02);
    }

    #[test]
    fn mode2_out_is_low_for_one_clock_when_count_reaches_1() {
        let mut r = Rig::new();
        r.program(0, 2, 4);
        // Loaded at tick 1: CE 4, 3, 2, 1, reload 4 ...
        let seen: Vec<(u16, bool)> = (1..=6)
            .map(|t| {
                r.at_tick(t);
                (r.count(0), r.out_pin(0))
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (4, true),
                (3, true),
                (2, true),
                (1, false),
                (4, true),
                (3, true)
            ]
        );
    }

    #[test]
    fn mode2_new_count_takes_effect_at_end_of_current_period() {
        let mut r = Rig::new();
        r.program(0, 2, 10);
        r.at_tick(3); // CE 8
        r.out(0, 100);
        r.out(0, 0);
        r.at_tick(10);
        assert_eq!(r.count(0), 1, "current period continues");
        assert_ne!(
            r.status(0) & 0x40,
            0,
            "null count until the new count loads"
        );
        r.at_tick(11);
        assert_eq!(r.count(0), 100, "new count at the reload");
        r.at_tick(12);
        assert_eq!(r.count(0), 99);
    }

    #[test]
    fn mode3_square_wave_high_for_ceil_half_low_for_floor_half() {
        let mut r = Rig::new();
        r.program(0, 3, 5);
        let outs: Vec<bool> = (1..=11)
            .map(|t| {
                r.at_tick(t);
                r.out_pin(0)
            })
            .collect();
        let (h, l) = (true, false);
        assert_eq!(outs, vec![h, h, h, l, l, h, h, h, l, l, h]);
    }

    #[test]
    fn mode3_even_count_decrements_by_two_in_each_half() {
        let mut r = Rig::new();
        r.program(0, 3, 6);
        let counts: Vec<u16> = (1..=7)
            .map(|t| {
                r.at_tick(t);
                r.count(0)
            })
            .collect();
        assert_eq!(counts, vec![6, 4, 2, 6, 4, 2, 6]);
    }

    #[test]
    fn mode4_out_strobes_low_for_one_clock_at_terminal_count() {
        let mut r = Rig::new();
        r.program(0, 4, 3);
        let outs: Vec<bool> = (0..=6)
            .map(|t| {
                r.at_tick(t);
                r.out_pin(0)
            })
            .collect();
        // Written at 0, loaded at 1, CE 0 at tick 4.
        assert_eq!(outs, vec![true, true, true, true, false, true, true]);
    }

    #[test]
    fn mode1_gate_rising_edge_triggers_one_shot() {
        let mut r = Rig::new();
        r.program(2, 1, 3);
        r.at_tick(20);
        assert_ne!(r.p61() & P61_OUT2, 0, "OUT high until triggered");
        assert_ne!(r.status(2) & 0x40, 0, "count waits for the trigger");
        r.set_p61(P61_GATE2);
        r.at_tick(21);
        assert_eq!(
            r.p61() & P61_OUT2,
            0,
            "OUT low from the CLK after the trigger"
        );
        r.at_tick(23);
        assert_eq!(r.p61() & P61_OUT2, 0);
        r.at_tick(24);
        assert_ne!(r.p61() & P61_OUT2, 0, "high at terminal count");
        // Retrigger.
        r.set_p61(0);
        r.set_p61(P61_GATE2);
        r.at_tick(25);
        assert_eq!(r.p61() & P61_OUT2, 0);
    }

    #[test]
    fn mode5_gate_rising_edge_triggers_strobe() {
        let mut r = Rig::new();
        r.program(2, 5, 2);
        r.at_tick(5);
        assert!(r.out_pin(2));
        r.set_p61(P61_GATE2); // trigger at 5, loaded at 6, CE 0 at 8
        let outs: Vec<bool> = (6..=9)
            .map(|t| {
                r.at_tick(t);
                r.out_pin(2)
            })
            .collect();
        assert_eq!(outs, vec![true, true, false, true]);
    }

    #[test]
    fn gate_low_suspends_mode0_counting() {
        let mut r = Rig::new();
        r.set_p61(P61_GATE2);
        r.program(2, 0, 100);
        r.at_tick(11);
        assert_eq!(r.count(2), 90);
        r.set_p61(0);
        r.at_tick(500);
        assert_eq!(r.count(2), 90, "GATE low: no counting");
        r.set_p61(P61_GATE2);
        r.at_tick(510);
        assert_eq!(r.count(2), 80, "GATE high: resumes where it stopped");
    }

    #[test]
    fn gate_low_forces_mode2_out_high_and_rising_edge_reloads() {
        let mut r = Rig::new();
        r.set_p61(P61_GATE2);
        r.program(2, 2, 10);
        r.at_tick(10); // CE 1: OUT low
        assert_eq!(r.p61() & P61_OUT2, 0);
        r.set_p61(0);
        assert_ne!(r.p61() & P61_OUT2, 0, "GATE low forces OUT high");
        r.at_tick(40);
        r.set_p61(P61_GATE2);
        r.at_tick(41);
        assert_eq!(r.count(2), 10, "reloaded on the CLK after the rising edge");
    }

    #[test]
    fn count_zero_means_65536_in_binary() {
        let mut r = Rig::new();
        r.program(0, 2, 0);
        r.at_tick(1);
        assert_eq!(r.count(0), 0);
        r.at_tick(2);
        assert_eq!(r.count(0), 0xffff);
        r.at_tick(65536);
        assert!(!r.out_pin(0), "CE 1 after 65535 decrements");
        r.at_tick(65537);
        assert_eq!(r.count(0), 0, "reload of 65536");
    }

    #[test]
    fn bcd_count_counts_down_in_decimal() {
        let mut r = Rig::new();
        r.out(CTRL, 0x31); // counter 0, LSB/MSB, mode 0, BCD
        r.out(0, 0x00);
        r.out(0, 0x01); // 0100 BCD
        r.at_tick(2);
        assert_eq!(r.count(0), 0x0099);
        assert_eq!(r.status(0) & 1, 1);
    }

    #[test]
    fn bcd_count_zero_means_10000() {
        let mut r = Rig::new();
        r.out(CTRL, 0x35); // mode 2, BCD
        r.out(0, 0);
        r.out(0, 0);
        r.at_tick(2);
        assert_eq!(r.count(0), 0x9999);
        r.at_tick(10_001);
        assert_eq!(r.count(0), 0, "reloaded with 10000 after one period");
    }

    #[test]
    fn control_word_register_reads_as_floating_bus() {
        let mut r = Rig::new();
        r.out(CTRL, 0x34);
        assert_eq!(r.inb(CTRL), 0xff);
    }

    #[test]
    fn mode_bits_6_and_7_mean_modes_2_and_3() {
        let mut r = Rig::new();
        r.out(CTRL, 0x30 | (6 << 1));
        r.out(0, 4);
        r.out(0, 0);
        r.at_tick(4);
        assert!(!r.out_pin(0), "mode 2 behaviour: low at CE 1");
        assert_eq!(
            (r.status(0) >> 1) & 7,
            6,
            "status shows the bits as written"
        );
    }

    #[test]
    fn port61_gate_and_speaker_bits_read_back_and_refresh_toggles() {
        let mut r = Rig::new();
        r.set_p61(0xff);
        assert!(r.p61.speaker_enabled());
        let a = r.p61();
        assert_eq!(a & 0x0f, 0x0f, "bits 0-3 as written");
        assert_eq!(a & 0xc0, 0, "no parity or IOCHK errors");
        r.clock.0.store(REFRESH_TOGGLE_NS, Ordering::SeqCst);
        let b = r.p61();
        assert_ne!(a & P61_REFRESH, b & P61_REFRESH, "bit 4 toggles");
    }

    #[test]
    fn port61_write_ignores_read_only_bits() {
        let mut r = Rig::new();
        r.set_p61(0xf0);
        assert_eq!(r.p61() & 0xef, 0, "OUT2 low (idle mode 0), nothing stored");
    }

    #[test]
    fn mode2_counter0_pulses_irq0_every_period() {
        let r = Rig::new();
        let mut r = r;
        r.program(0, 2, 100);
        // Loaded at tick 1; OUT rises as the CE reloads at ticks 101, 201, ...
        r.at_tick(100);
        r.assert_no_more_pulses_than(0);
        for k in 1..=5u64 {
            r.at_tick(1 + 100 * k);
            r.wait_pulses(k);
        }
        r.at_tick(599);
        r.assert_no_more_pulses_than(5);
    }

    #[test]
    fn mode0_counter0_pulses_irq0_once_at_terminal_count() {
        let mut r = Rig::new();
        r.program(0, 0, 50);
        r.at_tick(50);
        r.assert_no_more_pulses_than(0);
        r.at_tick(51);
        r.wait_pulses(1);
        r.at_tick(100_000);
        r.assert_no_more_pulses_than(1);
    }

    #[test]
    fn reprogramming_counter0_rearms_irq0() {
        let mut r = Rig::new();
        r.program(0, 2, 1000);
        r.at_tick(500);
        r.program(0, 0, 10); // a new control word: one shot 11 clocks from now
        r.at_tick(510);
        r.assert_no_more_pulses_than(0);
        r.at_tick(511);
        r.wait_pulses(1);
        r.at_tick(5000);
        r.assert_no_more_pulses_than(1);
    }

    #[test]
    fn late_timer_thread_coalesces_missed_periods_into_one_pulse() {
        let mut r = Rig::new();
        r.program(0, 2, 100);
        r.at_tick(1 + 100 * 7 + 50); // seven periods ended
        r.wait_pulses(1);
        r.assert_no_more_pulses_than(1);
        r.at_tick(1 + 100 * 8);
        r.wait_pulses(2);
    }

    #[test]
    fn irq0_pulses_are_throttled_to_min_interval() {
        let mut st = State {
            counters: [Counter::new(true), Counter::new(true), Counter::new(false)],
            port61: 0,
            irq_next: None,
            last_fire_ns: None,
            stop: false,
        };
        st.counters[0].control_word(0x34, 0);
        st.counters[0].write(2, 0);
        st.counters[0].write(0, 0);
        st.rearm_irq(0);
        let mut fires = Vec::new();
        for now in (0..100_000u64).step_by(100) {
            if st.poll_irq(now) == Poll::Fire {
                fires.push(now);
            }
        }
        assert!(fires.len() >= 9, "{fires:?}");
        assert!(
            fires.windows(2).all(|w| w[1] - w[0] >= MIN_IRQ_INTERVAL_NS),
            "{fires:?}"
        );
    }

    #[test]
    fn dropping_the_pit_stops_and_joins_its_timer_thread() {
        let r = Rig::new();
        let line = r.irq0.clone();
        assert_eq!(Arc::strong_count(&line), 3, "test, rig and timer thread");
        drop(r);
        assert_eq!(Arc::strong_count(&line), 1, "the thread's clone is gone");
    }

    #[test]
    fn host_clock_mode2_rate_is_about_1khz_for_count_1193() {
        let line = Arc::new(CountingLine::default());
        let mut pit = Pit::new(line.clone()).unwrap();
        pit.write(3, &[0x34]);
        pit.write(0, &[0xa9]);
        pit.write(0, &[0x04]); // 0x4a9 = 1193: 1 ms
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(200));
        let n = line.0.load(Ordering::SeqCst);
        let ms = start.elapsed().as_millis() as u64;
        // Coalescing only ever loses ticks on a loaded host; never more than one per period.
        assert!(n <= ms + 1, "{n} pulses in {ms} ms");
        assert!(n >= ms / 4, "{n} pulses in {ms} ms");
    }

    #[test]
    fn host_clock_counter2_counts_down_at_1193182_hz() {
        // What Linux's PIT TSC calibration relies on: counter 2 in mode 0, GATE high via port
        // 0x61, read back after a host-timed interval.
        let mut pit = Pit::new(Arc::new(CountingLine::default())).unwrap();
        let mut p61 = pit.port61();
        p61.write(0, &[P61_GATE2]);
        pit.write(3, &[0xb0]);
        let t0 = Instant::now();
        pit.write(2, &[0xff]);
        pit.write(2, &[0xff]);
        let t1 = Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let t2 = Instant::now();
        pit.write(3, &[0x80]);
        let t3 = Instant::now();
        let mut b = [0u8; 2];
        pit.read(2, &mut b[..1]);
        pit.read(2, &mut b[1..]);
        let done = 0xffff - u64::from(u16::from_le_bytes(b));
        let ticks = |d: Duration| ns_to_tick(d.as_nanos() as u64);
        let (lo, hi) = (ticks(t2 - t1).saturating_sub(2), ticks(t3 - t0) + 1);
        assert!(
            (lo..=hi).contains(&done),
            "{done} decrements, expected {lo}..={hi}"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_port_sequences_never_panic(
            ops in proptest::collection::vec(
                (0u8..4, 0u64..6, proptest::num::u8::ANY, 0u64..100_000),
                0..200,
            )
        ) {
            let mut r = Rig::new();
            let mut now = 0u64;
            for (kind, offset, v, dt) in ops {
                now += dt;
                r.clock.0.store(now, Ordering::SeqCst);
                match kind {
                    0 => r.out(offset, v),
                    1 => { r.inb(offset); }
                    2 => r.set_p61(v),
                    _ => { r.p61(); }
                }
                proptest::prop_assert_eq!(r.inb(CTRL), 0xff);
            }
            // Wide and far accesses too.
            let mut buf = [0u8; 8];
            r.pit.read(u64::MAX, &mut buf);
            r.pit.write(u64::MAX - 1, &buf);
            r.p61.read(u64::MAX, &mut buf);
            r.p61.write(0, &[]);
        }

        #[test]
        fn counter_value_always_within_its_modulus_in_bcd(
            mode in 0u8..8, count in proptest::num::u16::ANY, t in 0u64..1_000_000,
        ) {
            let mut r = Rig::new();
            r.out(CTRL, 0x31 | (mode << 1));
            let [lo, hi] = count.to_le_bytes();
            r.out(0, lo);
            r.out(0, hi);
            r.at_tick(t);
            let v = r.count(0);
            for s in [0, 4, 8, 12] {
                proptest::prop_assert!((v >> s) & 0xf <= 9, "{v:#x} is not BCD");
            }
        }
    }
}
