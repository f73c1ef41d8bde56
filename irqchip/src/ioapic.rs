//! The I/O APIC: an Intel 82093AA with 24 pins, register set of IOAPIC version 0x20 (the
//! ICH-family IOAPIC, which adds the directed EOI register at offset 0x40).
//!
//! # Register interface (82093AA datasheet, 3.0 "Register Description")
//!
//! A 4 KiB MMIO window (at `0xFEC0_0000` on the PC) holds three 32-bit registers:
//!
//! | offset | register | access |
//! |--------|----------|--------|
//! | 0x00   | IOREGSEL: bits 7:0 select an indirect register | R/W |
//! | 0x10   | IOWIN: the selected register | R/W |
//! | 0x40   | EOI: bits 7:0 = vector (version 0x20) | W |
//!
//! Indirect registers: 0x00 IOAPICID (bits 27:24 R/W), 0x01 IOAPICVER (RO, `0x0017_0020`:
//! maximum redirection entry 23 in bits 23:16, version 0x20 in bits 7:0), 0x02 IOAPICARB (RO,
//! arbitration ID = APIC ID in bits 27:24), 0x10..=0x3F the 24 redirection entries, two
//! dwords each (low dword at 0x10 + 2n, high dword at 0x11 + 2n).
//!
//! **Out-of-range IOREGSEL** (0x03..=0x0F, 0x40..=0xFF): reads of IOWIN return all-ones
//! (`0xFFFF_FFFF`, what an unclaimed register reads on the bus) and writes are ignored, both
//! logged rate-limited. **Access sizes**: the datasheet requires aligned dword accesses. Any
//! other access is given defined byte-lane semantics instead of being undefined: each byte
//! addresses one byte lane of its dword; a write merges the written lanes into the current
//! register value (the EOI register acts only if lane 0 is written). Offsets inside the window
//! that hold no register read as zero and ignore writes. Nothing panics.
//!
//! # Redirection entry (82093AA 3.2.4)
//!
//! | bits  | field | access |
//! |-------|-------|--------|
//! | 7:0   | vector | R/W |
//! | 10:8  | delivery mode: fixed, lowest priority, SMI, reserved, NMI, INIT, reserved, ExtINT | R/W |
//! | 11    | destination mode: 0 physical, 1 logical | R/W |
//! | 12    | delivery status (1 = send pending) | RO |
//! | 13    | polarity: 0 active high, 1 active low | R/W |
//! | 14    | remote IRR | RO |
//! | 15    | trigger mode: 0 edge, 1 level | R/W |
//! | 16    | mask | R/W |
//! | 63:56 | destination | R/W |
//!
//! Reserved bits read as zero. Writes to RO bits are ignored. All entries are masked at reset.
//!
//! # Delivery semantics
//!
//! Interrupts leave the IOAPIC as MSI messages (Intel SDM vol. 3, 11.11), which is how KVM's
//! split irqchip expects userspace to deliver them: address `0xFEE0_0000 | dest << 12 |
//! logical << 2`, data `vector | delivery_mode << 8 | assert << 14 | level << 15`. The trigger
//! bit (15) must be right: KVM finds the level vectors that need `KVM_EXIT_IOAPIC_EOI` by
//! scanning the MSI routes on GSIs 0..23, which the backend installs from
//! [`Ioapic::route_for_pin`]. Routes do not depend on the mask bit (a guest may mask a level
//! entry in its handler before the EOI, and that EOI must still reach us).
//!
//! * The pin input ([`Ioapic::set_pin`]) is the *asserted* state of the line. Every source on
//!   this board is wired with the polarity the firmware tables announce, so the polarity bit is
//!   stored and read back but does not change delivery (this is also what the in-kernel KVM
//!   IOAPIC does, so both irqchip modes agree).
//! * **Edge**: a rising edge of the asserted state delivers once. An edge that arrives while
//!   the entry is masked is **lost** (82093AA 3.2.4, bit 16: "edge-sensitive interrupts
//!   signaled on a masked interrupt pin are ignored (i.e., not delivered or held pending)");
//!   unmasking does not deliver it.
//! * **Level**: while the line is asserted, the entry is unmasked and remote IRR is clear, the
//!   IOAPIC delivers and sets remote IRR; nothing more is sent until the EOI for that vector
//!   clears remote IRR. If the line is still asserted at EOI it is delivered again. Unmasking
//!   an asserted level line with remote IRR clear delivers. Level asserts and deasserts on a
//!   masked pin have no side effect other than the line's recorded state.
//! * SMI, NMI, INIT and ExtINT entries are always edge-triggered whatever bit 15 says (82093AA
//!   3.2.4: "...treated as an edge triggered interrupt, even if it is programmed as level").
//! * Switching an entry to edge clears its remote IRR, so remote IRR is only ever set on level
//!   entries.
//! * **EOI** ([`Ioapic::eoi`]): the local APIC's broadcast EOI (under KVM split irqchip it
//!   arrives as `KVM_EXIT_IOAPIC_EOI`) and writes to the EOI register both clear remote IRR of
//!   every level entry with that vector. Those pins are reported in
//!   [`IoapicEffects::eoi_pins`] so the backend can signal their devices' resample events.
//! * **Storm throttle**: after [`STORM_THRESHOLD`] back-to-back EOI→redelivery cycles on one
//!   pin without its line dropping, the next redelivery is held back: the pin is reported in
//!   [`IoapicEffects::throttled`], its delivery status bit reads 1 (send pending), the
//!   `throttled` counter is bumped, and the backend calls [`Ioapic::reservice`] after a delay.
//! * A test-only fault switch, [`Ioapic::set_fault`], makes the controller misbehave on purpose
//!   so integration tests can show the guest suite catches a broken controller.

use std::sync::Arc;

use crate::guest_warn;
use crate::msi::{DeliveryMode, DestinationMode, MsiMessage, TriggerMode};
use crate::stats::{Counter, IrqStats};

/// Number of redirection entries / input pins.
pub const NUM_PINS: usize = 24;
/// [`NUM_PINS`] as a `u8`.
pub const NUM_PINS_U8: u8 = 24;
/// IOAPIC version reported in IOAPICVER bits 7:0.
pub const VERSION: u32 = 0x20;
/// Value of IOAPICVER: maximum redirection entry (23) in bits 23:16, version in bits 7:0.
pub const VERSION_REG_VALUE: u32 = ((NUM_PINS as u32 - 1) << 16) | VERSION;
/// Size of the MMIO window.
pub const MMIO_SIZE: u64 = 0x1000;
/// IOREGSEL offset.
pub const IOREGSEL: u64 = 0x00;
/// IOWIN offset.
pub const IOWIN: u64 = 0x10;
/// EOI register offset (version 0x20).
pub const EOI_REG: u64 = 0x40;
/// Indirect register index of IOAPICID.
pub const REG_ID: u8 = 0x00;
/// Indirect register index of IOAPICVER.
pub const REG_VER: u8 = 0x01;
/// Indirect register index of IOAPICARB.
pub const REG_ARB: u8 = 0x02;
/// Indirect register index of redirection entry 0, low dword.
pub const REG_REDTBL: u8 = 0x10;
/// EOI→redelivery cycles without the line dropping before a pin is throttled.
pub const STORM_THRESHOLD: u32 = 10_000;

const DELIVERY_STATUS: u64 = 1 << 12;
const POLARITY_LOW: u64 = 1 << 13;
const REMOTE_IRR: u64 = 1 << 14;
const TRIGGER_LEVEL: u64 = 1 << 15;
const MASK: u64 = 1 << 16;
/// Guest-writable bits of the low dword: 0..=11, 13, 15, 16.
const WRITABLE_LO: u64 = 0x0001_AFFF;
/// Guest-writable bits of the high dword: destination, 63:56.
const WRITABLE_HI: u64 = 0xFF00_0000_0000_0000;

/// One 64-bit redirection table entry (82093AA 3.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedirectionEntry(pub u64);

impl Default for RedirectionEntry {
    /// The reset value: masked, everything else zero.
    fn default() -> Self {
        Self(MASK)
    }
}

impl RedirectionEntry {
    pub fn vector(self) -> u8 {
        (self.0 & 0xFF) as u8
    }
    pub fn delivery_mode(self) -> DeliveryMode {
        DeliveryMode::from_bits((self.0 >> 8) as u32)
    }
    pub fn destination_mode(self) -> DestinationMode {
        if self.0 & (1 << 11) != 0 {
            DestinationMode::Logical
        } else {
            DestinationMode::Physical
        }
    }
    pub fn delivery_status(self) -> bool {
        self.0 & DELIVERY_STATUS != 0
    }
    pub fn polarity_low(self) -> bool {
        self.0 & POLARITY_LOW != 0
    }
    pub fn remote_irr(self) -> bool {
        self.0 & REMOTE_IRR != 0
    }
    /// Bit 15 as programmed.
    pub fn trigger_bit_level(self) -> bool {
        self.0 & TRIGGER_LEVEL != 0
    }
    pub fn masked(self) -> bool {
        self.0 & MASK != 0
    }
    pub fn destination(self) -> u8 {
        (self.0 >> 56) as u8
    }

    /// Whether the entry behaves level-triggered: bit 15 set and a delivery mode that allows
    /// level (fixed or lowest priority; SMI/NMI/INIT/ExtINT are always edge).
    pub fn is_level(self) -> bool {
        self.trigger_bit_level()
            && matches!(
                self.delivery_mode(),
                DeliveryMode::Fixed | DeliveryMode::LowestPriority
            )
    }

    /// The MSI this entry sends (SDM 11.11; see the module docs).
    pub fn to_msi(self) -> MsiMessage {
        MsiMessage::builder()
            .destination(self.destination())
            .destination_mode(self.destination_mode())
            .vector(self.vector())
            .delivery_mode(self.delivery_mode())
            .trigger_mode(if self.is_level() {
                TriggerMode::Level
            } else {
                TriggerMode::Edge
            })
            .level_assert(true)
            .build()
    }
}

/// Deliberate misbehaviour for negative tests. Off ([`IoapicFault::None`]) by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoapicFault {
    /// Behave correctly.
    #[default]
    None,
    /// An EOI does not clear remote IRR (and reports no EOI'd pins), so a level line is never
    /// delivered again: a broken controller the guest suite must notice.
    ForgetRemoteIrrOnEoi,
}

/// What an IOAPIC operation asks the backend to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoapicEffects {
    /// Pins delivered (bit n = pin n); the messages are in `messages`.
    delivered: u32,
    messages: [MsiMessage; NUM_PINS],
    /// Pins whose remote IRR an EOI cleared (bit n = pin n): signal their resample events.
    pub eoi_pins: u32,
    /// Pins whose route ([`Ioapic::route_for_pin`]) changed: re-install the GSI route.
    pub routes_changed: u32,
    /// Pins held back by the storm throttle: call [`Ioapic::reservice`] after a delay.
    pub throttled: u32,
}

impl IoapicEffects {
    fn deliver(&mut self, pin: usize, msg: MsiMessage) {
        if let Some(slot) = self.messages.get_mut(pin) {
            *slot = msg;
            self.delivered |= 1 << pin;
        }
    }

    /// The MSIs to send, as `(pin, message)`, in pin order.
    pub fn deliveries(&self) -> impl Iterator<Item = (u8, MsiMessage)> + '_ {
        self.messages
            .iter()
            .enumerate()
            .filter(|(i, _)| self.delivered & (1 << i) != 0)
            .map(|(i, m)| (i as u8, *m))
    }

    /// Pins delivered (bit n = pin n).
    pub fn delivered_pins(&self) -> u32 {
        self.delivered
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.delivered == 0 && self.eoi_pins == 0 && self.routes_changed == 0 && self.throttled == 0
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Pin {
    entry: RedirectionEntry,
    /// Asserted state of the input.
    asserted: bool,
    /// Held back by the storm throttle until `reservice`.
    throttled: bool,
    /// EOI→redelivery cycles since the line last dropped.
    storm: u32,
}

/// The 82093AA state machine. See the module documentation.
#[derive(Debug, Clone)]
pub struct Ioapic {
    id: u8,
    ioregsel: u8,
    pins: [Pin; NUM_PINS],
    fault: IoapicFault,
    storm_threshold: u32,
    route_generation: u64,
    dirty_routes: u32,
    stats: Option<Arc<IrqStats>>,
}

impl Default for Ioapic {
    fn default() -> Self {
        Self::new()
    }
}

impl Ioapic {
    /// An IOAPIC in its reset state (ID 0, all entries masked).
    pub fn new() -> Self {
        Self {
            id: 0,
            ioregsel: 0,
            pins: [Pin::default(); NUM_PINS],
            fault: IoapicFault::None,
            storm_threshold: STORM_THRESHOLD,
            route_generation: 0,
            dirty_routes: 0,
            stats: None,
        }
    }

    /// Record counters (delivered, coalesced, EOI, throttled; GSI = pin) here.
    pub fn set_stats(&mut self, stats: Arc<IrqStats>) {
        self.stats = Some(stats);
    }

    fn record(&self, pin: usize, c: Counter) {
        if let Some(s) = &self.stats {
            s.record(pin as u32, c);
        }
    }

    /// Back to reset: ID 0, all entries masked, throttles cleared. Line levels are kept (they
    /// are wires, not IOAPIC state). Every route is marked changed.
    pub fn reset(&mut self) -> IoapicEffects {
        let mut fx = IoapicEffects::default();
        self.id = 0;
        self.ioregsel = 0;
        for (i, p) in self.pins.iter_mut().enumerate() {
            p.entry = RedirectionEntry::default();
            p.throttled = false;
            p.storm = 0;
            fx.routes_changed |= 1 << i;
        }
        self.dirty_routes = (1 << NUM_PINS) - 1;
        self.route_generation = self.route_generation.wrapping_add(1);
        fx
    }

    /// Enable a deliberate fault (tests only; see [`IoapicFault`]).
    pub fn set_fault(&mut self, fault: IoapicFault) {
        self.fault = fault;
    }

    /// The active fault switch.
    pub fn fault(&self) -> IoapicFault {
        self.fault
    }

    /// Change the storm threshold (default [`STORM_THRESHOLD`]; for tests). 0 disables it.
    pub fn set_storm_threshold(&mut self, cycles: u32) {
        self.storm_threshold = cycles;
    }

    /// Redirection entry of `pin`.
    pub fn entry(&self, pin: u8) -> Option<RedirectionEntry> {
        self.pins.get(usize::from(pin)).map(|p| p.entry)
    }

    /// Asserted state of `pin`'s input.
    pub fn pin_asserted(&self, pin: u8) -> bool {
        self.pins.get(usize::from(pin)).is_some_and(|p| p.asserted)
    }

    /// The MSI route GSI `pin` should carry (independent of the mask bit; see module docs).
    pub fn route_for_pin(&self, pin: u8) -> Option<MsiMessage> {
        self.entry(pin).map(RedirectionEntry::to_msi)
    }

    /// Bumped whenever any pin's route changes.
    pub fn route_generation(&self) -> u64 {
        self.route_generation
    }

    /// Pins whose route changed since the last call (bit n = pin n).
    pub fn take_dirty_routes(&mut self) -> u32 {
        std::mem::take(&mut self.dirty_routes)
    }

    /// Deliver `pin` if it is a level entry that should be (asserted, unmasked, remote IRR
    /// clear, not throttled). `after_eoi` counts towards the storm throttle.
    fn service_level(&mut self, pin: usize, after_eoi: bool, fx: &mut IoapicEffects) {
        let threshold = self.storm_threshold;
        let Some(p) = self.pins.get_mut(pin) else {
            return;
        };
        let e = p.entry;
        if !e.is_level() || !p.asserted || e.masked() || e.remote_irr() || p.throttled {
            return;
        }
        if after_eoi {
            if threshold != 0 && p.storm >= threshold {
                p.throttled = true;
                p.entry.0 |= DELIVERY_STATUS;
                fx.throttled |= 1 << pin;
                self.record(pin, Counter::Throttled);
                return;
            }
            p.storm = p.storm.saturating_add(1);
        }
        p.entry.0 |= REMOTE_IRR;
        fx.deliver(pin, e.to_msi());
        self.record(pin, Counter::Delivered);
    }

    /// Drive input `pin` (0..=23): `level` true = asserted. Out of range is a logged no-op.
    pub fn set_pin(&mut self, pin: u8, level: bool) -> IoapicEffects {
        let mut fx = IoapicEffects::default();
        let i = usize::from(pin);
        let Some(p) = self.pins.get_mut(i) else {
            guest_warn!("IOAPIC: set_pin({pin}) out of range 0..{NUM_PINS} ignored");
            return fx;
        };
        let was = p.asserted;
        p.asserted = level;
        if !level {
            p.storm = 0;
            return fx;
        }
        let e = p.entry;
        if e.is_level() {
            if !was && e.remote_irr() {
                self.record(i, Counter::Coalesced);
            }
            self.service_level(i, false, &mut fx);
        } else if !was && !e.masked() {
            fx.deliver(i, e.to_msi());
            self.record(i, Counter::Delivered);
        }
        // An edge on a masked edge entry is lost (82093AA 3.2.4, bit 16).
        fx
    }

    /// The local APIC's EOI broadcast for `vector` (also what the EOI register does).
    pub fn eoi(&mut self, vector: u8) -> IoapicEffects {
        let mut fx = IoapicEffects::default();
        for i in 0..NUM_PINS {
            let Some(p) = self.pins.get_mut(i) else {
                continue;
            };
            let e = p.entry;
            if e.vector() != vector || !e.is_level() || !e.remote_irr() {
                continue;
            }
            if self.fault == IoapicFault::ForgetRemoteIrrOnEoi {
                continue;
            }
            p.entry.0 &= !REMOTE_IRR;
            fx.eoi_pins |= 1 << i;
            self.record(i, Counter::Eoi);
            self.service_level(i, true, &mut fx);
        }
        fx
    }

    /// Re-service a pin the storm throttle held back: deliver it if its line is still
    /// asserted (starting a fresh storm window), otherwise just clear the throttle.
    pub fn reservice(&mut self, pin: u8) -> IoapicEffects {
        let mut fx = IoapicEffects::default();
        let i = usize::from(pin);
        if let Some(p) = self.pins.get_mut(i) {
            p.throttled = false;
            p.storm = 0;
            p.entry.0 &= !DELIVERY_STATUS;
            self.service_level(i, false, &mut fx);
        }
        fx
    }

    /// Whether `pin` is held back by the storm throttle.
    pub fn is_throttled(&self, pin: u8) -> bool {
        self.pins.get(usize::from(pin)).is_some_and(|p| p.throttled)
    }

    /// Read the indirect register `index`.
    fn read_indirect(&self, index: u8) -> u32 {
        match index {
            REG_ID | REG_ARB => u32::from(self.id) << 24,
            REG_VER => VERSION_REG_VALUE,
            REG_REDTBL..=0x3F => {
                let pin = usize::from((index - REG_REDTBL) / 2);
                let raw = self.pins.get(pin).map_or(0, |p| p.entry.0);
                if index & 1 == 0 {
                    raw as u32
                } else {
                    (raw >> 32) as u32
                }
            }
            _ => {
                guest_warn!(
                    "IOAPIC: read of unimplemented register {index:#04x}, returning all-ones"
                );
                0xFFFF_FFFF
            }
        }
    }

    fn write_indirect(&mut self, index: u8, val: u32, fx: &mut IoapicEffects) {
        match index {
            REG_ID => self.id = ((val >> 24) & 0x0F) as u8,
            REG_VER | REG_ARB => {
                guest_warn!("IOAPIC: write {val:#x} to read-only register {index:#04x} ignored")
            }
            REG_REDTBL..=0x3F => {
                let pin = usize::from((index - REG_REDTBL) / 2);
                self.write_entry(pin, index & 1 == 1, val, fx);
            }
            _ => {
                guest_warn!("IOAPIC: write {val:#x} to unimplemented register {index:#04x} ignored")
            }
        }
    }

    fn write_entry(&mut self, pin: usize, high: bool, val: u32, fx: &mut IoapicEffects) {
        let Some(p) = self.pins.get_mut(pin) else {
            return;
        };
        let old = p.entry;
        let mut new = if high {
            (old.0 & !WRITABLE_HI) | ((u64::from(val) << 32) & WRITABLE_HI)
        } else {
            (old.0 & !WRITABLE_LO) | (u64::from(val) & WRITABLE_LO)
        };
        if !RedirectionEntry(new).is_level() {
            // Remote IRR is only defined for level entries.
            new &= !REMOTE_IRR;
        }
        let new = RedirectionEntry(new);
        p.entry = new;
        if !high && new.delivery_mode().is_reserved() {
            guest_warn!(
                "IOAPIC: pin {pin} programmed with reserved delivery mode {:#05b}; its interrupts will be dropped",
                new.delivery_mode().bits()
            );
        }
        if old.to_msi() != new.to_msi() {
            fx.routes_changed |= 1 << pin;
            self.dirty_routes |= 1 << pin;
            self.route_generation = self.route_generation.wrapping_add(1);
        }
        // Unmasking (or switching to level) an asserted level line delivers.
        self.service_level(pin, false, fx);
    }

    /// The value of the dword register at `dword_offset`, without side effects.
    fn read_dword(&self, dword_offset: u64) -> u32 {
        match dword_offset {
            IOREGSEL => u32::from(self.ioregsel),
            IOWIN => self.read_indirect(self.ioregsel),
            _ => 0, // EOI is write-only; the rest of the window holds nothing.
        }
    }

    fn write_dword(&mut self, dword_offset: u64, val: u32, lanes: u32, fx: &mut IoapicEffects) {
        match dword_offset {
            IOREGSEL => self.ioregsel = (val & 0xFF) as u8,
            IOWIN => self.write_indirect(self.ioregsel, val, fx),
            EOI_REG if lanes & 0xFF != 0 => {
                let more = self.eoi((val & 0xFF) as u8);
                fx.eoi_pins |= more.eoi_pins;
                fx.throttled |= more.throttled;
                for (pin, msg) in more.deliveries() {
                    fx.deliver(usize::from(pin), msg);
                }
            }
            _ => {}
        }
    }

    /// Read `data.len()` bytes at `offset` of the MMIO window (see the module docs for
    /// non-dword accesses).
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        if data.len() != 4 || offset & 3 != 0 {
            guest_warn!(
                "IOAPIC: {}-byte read at {offset:#x} is not an aligned dword; emulating byte lanes",
                data.len()
            );
        }
        let mut cached: Option<(u64, u32)> = None;
        for (i, b) in data.iter_mut().enumerate() {
            let Some(addr) = offset.checked_add(i as u64) else {
                *b = 0;
                continue;
            };
            let dw = addr & !3;
            let val = match cached {
                Some((o, v)) if o == dw => v,
                _ => {
                    let v = self.read_dword(dw);
                    cached = Some((dw, v));
                    v
                }
            };
            *b = (val >> ((addr & 3) * 8)) as u8;
        }
    }

    /// Write `data` at `offset` of the MMIO window.
    pub fn mmio_write(&mut self, offset: u64, data: &[u8]) -> IoapicEffects {
        let mut fx = IoapicEffects::default();
        if data.len() != 4 || offset & 3 != 0 {
            guest_warn!(
                "IOAPIC: {}-byte write at {offset:#x} is not an aligned dword; emulating byte lanes",
                data.len()
            );
        }
        // Group the bytes by dword and apply each dword once, merged into its current value.
        let mut pending: Option<(u64, u32, u32)> = None; // (dword offset, value, lane mask)
        for (i, b) in data.iter().enumerate() {
            let Some(addr) = offset.checked_add(i as u64) else {
                break;
            };
            let dw = addr & !3;
            let shift = (addr & 3) * 8;
            let (val, lanes) = match pending {
                Some((o, v, l)) if o == dw => (v, l),
                other => {
                    if let Some((o, v, l)) = other {
                        self.write_dword(o, v, l, &mut fx);
                    }
                    (self.read_dword(dw), 0)
                }
            };
            let val = (val & !(0xFF << shift)) | (u32::from(*b) << shift);
            pending = Some((dw, val, lanes | (0xFF << shift)));
        }
        if let Some((o, v, l)) = pending {
            self.write_dword(o, v, l, &mut fx);
        }
        fx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn write_reg(io: &mut Ioapic, index: u8, val: u32) -> IoapicEffects {
        io.mmio_write(IOREGSEL, &u32::from(index).to_le_bytes());
        io.mmio_write(IOWIN, &val.to_le_bytes())
    }

    fn read_reg(io: &mut Ioapic, index: u8) -> u32 {
        io.mmio_write(IOREGSEL, &u32::from(index).to_le_bytes());
        let mut b = [0u8; 4];
        io.mmio_read(IOWIN, &mut b);
        u32::from_le_bytes(b)
    }

    /// Program pin `pin`: vector, level?, masked?, destination.
    fn program(io: &mut Ioapic, pin: u8, vector: u8, level: bool, masked: bool, dest: u8) {
        let lo =
            u32::from(vector) | if level { 1 << 15 } else { 0 } | if masked { 1 << 16 } else { 0 };
        write_reg(io, REG_REDTBL + 2 * pin + 1, u32::from(dest) << 24);
        write_reg(io, REG_REDTBL + 2 * pin, lo);
    }

    fn delivered(fx: &IoapicEffects) -> Vec<(u8, MsiMessage)> {
        fx.deliveries().collect()
    }

    #[test]
    fn version_register_reads_0x00170020() {
        let mut io = Ioapic::new();
        assert_eq!(read_reg(&mut io, REG_VER), 0x0017_0020);
    }

    #[test]
    fn id_register_bits_27_to_24_are_writable_and_arb_follows() {
        let mut io = Ioapic::new();
        write_reg(&mut io, REG_ID, 0xFFFF_FFFF);
        assert_eq!(read_reg(&mut io, REG_ID), 0x0F00_0000);
        assert_eq!(read_reg(&mut io, REG_ARB), 0x0F00_0000);
    }

    #[test]
    fn version_register_is_read_only() {
        let mut io = Ioapic::new();
        write_reg(&mut io, REG_VER, 0);
        assert_eq!(read_reg(&mut io, REG_VER), VERSION_REG_VALUE);
    }

    #[test]
    fn ioregsel_reads_back_low_byte() {
        let mut io = Ioapic::new();
        io.mmio_write(IOREGSEL, &0x1234_5617u32.to_le_bytes());
        let mut b = [0u8; 4];
        io.mmio_read(IOREGSEL, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x17);
    }

    #[test]
    fn out_of_range_ioregsel_reads_all_ones() {
        let mut io = Ioapic::new();
        assert_eq!(read_reg(&mut io, 0x03), 0xFFFF_FFFF);
        assert_eq!(read_reg(&mut io, 0x40), 0xFFFF_FFFF);
        assert_eq!(read_reg(&mut io, 0xFF), 0xFFFF_FFFF);
    }

    #[test]
    fn out_of_range_ioregsel_writes_are_ignored() {
        let mut io = Ioapic::new();
        let fx = write_reg(&mut io, 0x40, 0);
        assert!(fx.is_empty());
        assert_eq!(read_reg(&mut io, REG_VER), VERSION_REG_VALUE);
    }

    #[test]
    fn redirection_entries_are_masked_at_reset() {
        let mut io = Ioapic::new();
        for pin in 0..NUM_PINS_U8 {
            assert_eq!(read_reg(&mut io, REG_REDTBL + 2 * pin), 1 << 16);
            assert_eq!(read_reg(&mut io, REG_REDTBL + 2 * pin + 1), 0);
        }
    }

    #[test]
    fn redirection_entry_reads_back_writable_bits_only() {
        let mut io = Ioapic::new();
        write_reg(&mut io, REG_REDTBL, 0xFFFF_FFFF);
        write_reg(&mut io, REG_REDTBL + 1, 0xFFFF_FFFF);
        // Remote IRR is clear and ExtINT (bits 10:8 = 7) forces edge behaviour, but the bits
        // as written read back; RO delivery status/remote IRR and reserved bits stay 0.
        assert_eq!(read_reg(&mut io, REG_REDTBL), 0x0001_AFFF);
        assert_eq!(read_reg(&mut io, REG_REDTBL + 1), 0xFF00_0000);
    }

    #[test]
    fn writes_to_remote_irr_and_delivery_status_are_ignored() {
        let mut io = Ioapic::new();
        program(&mut io, 3, 0x40, true, false, 0);
        io.set_pin(3, true);
        assert!(io.entry(3).unwrap().remote_irr());
        write_reg(&mut io, REG_REDTBL + 6, 0x40 | (1 << 15) | (1 << 12));
        let e = io.entry(3).unwrap();
        assert!(e.remote_irr(), "write of 0 to remote IRR ignored");
        assert!(
            !e.delivery_status(),
            "write of 1 to delivery status ignored"
        );
    }

    #[test]
    fn edge_pin_delivers_on_rising_edge_as_edge_msi() {
        let mut io = Ioapic::new();
        program(&mut io, 4, 0x31, false, false, 2);
        let fx = io.set_pin(4, true);
        let msg = MsiMessage {
            address: 0xFEE0_2000,
            data: 0x31 | (1 << 14),
        };
        assert_eq!(delivered(&fx), vec![(4, msg)]);
        assert!(!msg.is_level());
    }

    #[test]
    fn edge_pin_held_high_does_not_deliver_again() {
        let mut io = Ioapic::new();
        program(&mut io, 4, 0x31, false, false, 0);
        io.set_pin(4, true);
        assert!(io.set_pin(4, true).is_empty());
        assert!(io.eoi(0x31).is_empty());
    }

    #[test]
    fn edge_pin_never_sets_remote_irr() {
        let mut io = Ioapic::new();
        program(&mut io, 4, 0x31, false, false, 0);
        io.set_pin(4, true);
        assert!(!io.entry(4).unwrap().remote_irr());
    }

    #[test]
    fn edge_while_masked_is_lost_and_unmask_does_not_deliver_it() {
        let mut io = Ioapic::new();
        program(&mut io, 4, 0x31, false, true, 0);
        assert!(io.set_pin(4, true).is_empty());
        io.set_pin(4, false);
        let fx = write_reg(&mut io, REG_REDTBL + 8, 0x31);
        assert_eq!(fx.delivered_pins(), 0);
    }

    #[test]
    fn level_pin_delivers_sets_remote_irr_and_waits_for_eoi() {
        let mut io = Ioapic::new();
        program(&mut io, 10, 0x50, true, false, 1);
        let fx = io.set_pin(10, true);
        let msg = MsiMessage {
            address: 0xFEE0_1000,
            data: 0x50 | (1 << 14) | (1 << 15),
        };
        assert_eq!(delivered(&fx), vec![(10, msg)]);
        assert!(io.entry(10).unwrap().remote_irr());
        io.set_pin(10, false);
        assert!(io.set_pin(10, true).is_empty(), "remote IRR blocks");
    }

    #[test]
    fn level_line_redelivers_after_eoi_while_asserted() {
        let mut io = Ioapic::new();
        program(&mut io, 10, 0x50, true, false, 0);
        io.set_pin(10, true);
        let fx = io.eoi(0x50);
        assert_eq!(fx.eoi_pins, 1 << 10);
        assert_eq!(fx.delivered_pins(), 1 << 10);
        assert!(io.entry(10).unwrap().remote_irr());
    }

    #[test]
    fn level_line_deasserted_before_eoi_is_not_redelivered() {
        let mut io = Ioapic::new();
        program(&mut io, 10, 0x50, true, false, 0);
        io.set_pin(10, true);
        io.set_pin(10, false);
        let fx = io.eoi(0x50);
        assert_eq!(fx.eoi_pins, 1 << 10);
        assert_eq!(fx.delivered_pins(), 0);
        assert!(!io.entry(10).unwrap().remote_irr());
    }

    #[test]
    fn eoi_for_another_vector_leaves_remote_irr_set() {
        let mut io = Ioapic::new();
        program(&mut io, 10, 0x50, true, false, 0);
        io.set_pin(10, true);
        assert!(io.eoi(0x51).is_empty());
        assert!(io.entry(10).unwrap().remote_irr());
    }

    #[test]
    fn eoi_clears_every_level_pin_sharing_the_vector() {
        let mut io = Ioapic::new();
        program(&mut io, 10, 0x50, true, false, 0);
        program(&mut io, 11, 0x50, true, false, 0);
        io.set_pin(10, true);
        io.set_pin(11, true);
        io.set_pin(10, false);
        io.set_pin(11, false);
        assert_eq!(io.eoi(0x50).eoi_pins, (1 << 10) | (1 << 11));
    }

    #[test]
    fn eoi_register_at_0x40_acts_like_the_apic_eoi() {
        let mut io = Ioapic::new();
        program(&mut io, 10, 0x50, true, false, 0);
        io.set_pin(10, true);
        let fx = io.mmio_write(EOI_REG, &0x50u32.to_le_bytes());
        assert_eq!(fx.eoi_pins, 1 << 10);
        assert_eq!(fx.delivered_pins(), 1 << 10);
    }

    #[test]
    fn eoi_register_reads_zero() {
        let io = Ioapic::new();
        let mut b = [0xAAu8; 4];
        io.mmio_read(EOI_REG, &mut b);
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn masked_level_line_is_not_delivered() {
        let mut io = Ioapic::new();
        program(&mut io, 10, 0x50, true, true, 0);
        assert!(io.set_pin(10, true).is_empty());
        assert!(!io.entry(10).unwrap().remote_irr());
    }

    #[test]
    fn unmasking_an_asserted_level_line_delivers() {
        let mut io = Ioapic::new();
        program(&mut io, 10, 0x50, true, true, 0);
        io.set_pin(10, true);
        let fx = write_reg(&mut io, REG_REDTBL + 20, 0x50 | (1 << 15));
        assert_eq!(fx.delivered_pins(), 1 << 10);
    }

    #[test]
    fn unmasking_with_remote_irr_set_does_not_deliver() {
        let mut io = Ioapic::new();
        program(&mut io, 10, 0x50, true, false, 0);
        io.set_pin(10, true);
        write_reg(&mut io, REG_REDTBL + 20, 0x50 | (1 << 15) | (1 << 16));
        let fx = write_reg(&mut io, REG_REDTBL + 20, 0x50 | (1 << 15));
        assert_eq!(fx.delivered_pins(), 0);
    }

    #[test]
    fn masked_level_entry_still_accepts_eoi() {
        // Linux masks a level IOAPIC entry in its handler before the EOI.
        let mut io = Ioapic::new();
        program(&mut io, 10, 0x50, true, false, 0);
        io.set_pin(10, true);
        write_reg(&mut io, REG_REDTBL + 20, 0x50 | (1 << 15) | (1 << 16));
        let fx = io.eoi(0x50);
        assert_eq!(fx.eoi_pins, 1 << 10);
        assert_eq!(fx.delivered_pins(), 0, "masked: not redelivered");
        let fx = write_reg(&mut io, REG_REDTBL + 20, 0x50 | (1 << 15));
        assert_eq!(
            fx.delivered_pins(),
            1 << 10,
            "unmask delivers the asserted line"
        );
    }

    #[test]
    fn switching_to_edge_clears_remote_irr() {
        let mut io = Ioapic::new();
        program(&mut io, 10, 0x50, true, false, 0);
        io.set_pin(10, true);
        write_reg(&mut io, REG_REDTBL + 20, 0x50);
        assert!(!io.entry(10).unwrap().remote_irr());
    }

    #[test]
    fn nmi_entry_is_edge_even_when_programmed_level() {
        let mut io = Ioapic::new();
        write_reg(&mut io, REG_REDTBL + 2, (4 << 8) | (1 << 15));
        let fx = io.set_pin(1, true);
        let (_, msg) = delivered(&fx)[0];
        assert!(!msg.is_level());
        assert!(!io.entry(1).unwrap().remote_irr());
        assert_eq!(msg.data >> 8 & 7, 4);
    }

    #[test]
    fn logical_destination_sets_address_bit_2() {
        let mut io = Ioapic::new();
        write_reg(&mut io, REG_REDTBL + 1, 0x0300_0000);
        write_reg(&mut io, REG_REDTBL, 0x41 | (1 << 11) | (1 << 8));
        let m = io.route_for_pin(0).unwrap();
        assert_eq!(m.address, 0xFEE0_3004);
        assert_eq!(m.data, 0x41 | (1 << 8) | (1 << 14));
    }

    #[test]
    fn route_is_reported_changed_only_when_the_message_changes() {
        let mut io = Ioapic::new();
        let fx = write_reg(&mut io, REG_REDTBL + 4, 0x60 | (1 << 16));
        assert_eq!(fx.routes_changed, 1 << 2);
        let fx = write_reg(&mut io, REG_REDTBL + 4, 0x60);
        assert_eq!(fx.routes_changed, 0, "mask bit does not change the route");
        let g = io.route_generation();
        write_reg(&mut io, REG_REDTBL + 5, 0x0100_0000);
        assert_eq!(io.route_generation(), g + 1);
        assert_eq!(io.take_dirty_routes(), 1 << 2);
        assert_eq!(io.take_dirty_routes(), 0);
    }

    #[test]
    fn route_trigger_bit_marks_level_pins_for_kvm_eoi_scanning() {
        let mut io = Ioapic::new();
        program(&mut io, 9, 0x59, true, true, 0);
        assert!(io.route_for_pin(9).unwrap().is_level());
        program(&mut io, 9, 0x59, false, true, 0);
        assert!(!io.route_for_pin(9).unwrap().is_level());
        assert_eq!(io.route_for_pin(24), None);
    }

    #[test]
    fn storm_throttle_holds_back_the_redelivery_after_10000_cycles() {
        let stats = Arc::new(IrqStats::new(24));
        let mut io = Ioapic::new();
        io.set_stats(stats.clone());
        program(&mut io, 10, 0x50, true, false, 0);
        io.set_pin(10, true);
        for _ in 0..STORM_THRESHOLD {
            assert_eq!(io.eoi(0x50).delivered_pins(), 1 << 10);
        }
        let fx = io.eoi(0x50);
        assert_eq!(fx.delivered_pins(), 0);
        assert_eq!(fx.throttled, 1 << 10);
        assert!(io.is_throttled(10));
        assert!(io.entry(10).unwrap().delivery_status());
        assert_eq!(stats.get(10, Counter::Throttled), 1);
        let fx = io.reservice(10);
        assert_eq!(fx.delivered_pins(), 1 << 10);
        assert!(!io.entry(10).unwrap().delivery_status());
    }

    #[test]
    fn line_drop_resets_the_storm_count() {
        let mut io = Ioapic::new();
        io.set_storm_threshold(3);
        program(&mut io, 10, 0x50, true, false, 0);
        io.set_pin(10, true);
        for _ in 0..3 {
            io.eoi(0x50);
        }
        io.set_pin(10, false);
        io.eoi(0x50);
        io.set_pin(10, true);
        for _ in 0..3 {
            assert_eq!(io.eoi(0x50).throttled, 0);
        }
        assert_eq!(io.eoi(0x50).throttled, 1 << 10);
    }

    #[test]
    fn reservice_after_line_dropped_delivers_nothing() {
        let mut io = Ioapic::new();
        io.set_storm_threshold(1);
        program(&mut io, 10, 0x50, true, false, 0);
        io.set_pin(10, true);
        io.eoi(0x50);
        assert_eq!(io.eoi(0x50).throttled, 1 << 10);
        io.set_pin(10, false);
        assert!(io.reservice(10).is_empty());
        assert!(!io.is_throttled(10));
    }

    #[test]
    fn throttled_pin_is_not_delivered_by_unmask() {
        let mut io = Ioapic::new();
        io.set_storm_threshold(1);
        program(&mut io, 10, 0x50, true, false, 0);
        io.set_pin(10, true);
        io.eoi(0x50);
        io.eoi(0x50);
        let fx = write_reg(&mut io, REG_REDTBL + 20, 0x50 | (1 << 15));
        assert_eq!(fx.delivered_pins(), 0);
    }

    #[test]
    fn fault_forget_remote_irr_on_eoi_stops_redelivery() {
        let mut io = Ioapic::new();
        assert_eq!(io.fault(), IoapicFault::None);
        io.set_fault(IoapicFault::ForgetRemoteIrrOnEoi);
        program(&mut io, 10, 0x50, true, false, 0);
        io.set_pin(10, true);
        assert!(io.eoi(0x50).is_empty());
        assert!(io.entry(10).unwrap().remote_irr());
    }

    #[test]
    fn out_of_range_pin_is_ignored() {
        let mut io = Ioapic::new();
        assert!(io.set_pin(24, true).is_empty());
        assert!(io.set_pin(255, true).is_empty());
        assert!(io.reservice(99).is_empty());
    }

    #[test]
    fn byte_write_to_ioregsel_selects_register() {
        let mut io = Ioapic::new();
        io.mmio_write(IOREGSEL, &[REG_VER]);
        let mut b = [0u8; 4];
        io.mmio_read(IOWIN, &mut b);
        assert_eq!(u32::from_le_bytes(b), VERSION_REG_VALUE);
    }

    #[test]
    fn byte_reads_of_iowin_return_byte_lanes() {
        let mut io = Ioapic::new();
        io.mmio_write(IOREGSEL, &[REG_VER]);
        let mut b = [0u8; 1];
        io.mmio_read(IOWIN + 2, &mut b);
        assert_eq!(b[0], 0x17);
    }

    #[test]
    fn byte_write_to_iowin_merges_into_the_register() {
        let mut io = Ioapic::new();
        io.mmio_write(IOREGSEL, &[REG_REDTBL]);
        io.mmio_write(IOWIN, &[0x77]);
        assert_eq!(io.entry(0).unwrap().0, (1 << 16) | 0x77, "mask bit kept");
    }

    #[test]
    fn qword_read_at_iowin_returns_iowin_then_zero() {
        let mut io = Ioapic::new();
        io.mmio_write(IOREGSEL, &[REG_VER]);
        let mut b = [0xAAu8; 8];
        io.mmio_read(IOWIN, &mut b);
        assert_eq!(u64::from_le_bytes(b), u64::from(VERSION_REG_VALUE));
    }

    #[test]
    fn odd_sizes_and_offsets_do_not_panic() {
        let mut io = Ioapic::new();
        let mut big = [0u8; 64];
        io.mmio_read(u64::MAX - 2, &mut big);
        io.mmio_write(u64::MAX - 1, &[1, 2, 3, 4, 5]);
        io.mmio_read(0x13, &mut big[..3]);
        io.mmio_write(0x3F, &[0xFF; 7]);
        io.mmio_write(0x800, &[]);
    }

    #[test]
    fn stats_count_delivered_eoi_and_coalesced() {
        let stats = Arc::new(IrqStats::new(24));
        let mut io = Ioapic::new();
        io.set_stats(stats.clone());
        program(&mut io, 10, 0x50, true, false, 0);
        io.set_pin(10, true);
        io.set_pin(10, false);
        io.set_pin(10, true); // raised while remote IRR pending
        io.eoi(0x50);
        assert_eq!(stats.get(10, Counter::Delivered), 2);
        assert_eq!(stats.get(10, Counter::Eoi), 1);
        assert_eq!(stats.get(10, Counter::Coalesced), 1);
    }

    #[test]
    fn reset_masks_everything_and_marks_routes_changed() {
        let mut io = Ioapic::new();
        program(&mut io, 1, 0x41, false, false, 0);
        let fx = io.reset();
        assert_eq!(fx.routes_changed, (1 << 24) - 1);
        assert!(io.entry(1).unwrap().masked());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        Read(u64, usize),
        Sel(u8),
        Win(u32),
        Pin(u8, bool),
        Eoi(u8),
        Reservice(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..0x50, proptest::collection::vec(any::<u8>(), 0..9))
                .prop_map(|(o, d)| Op::Write(o, d)),
            (0u64..0x50, 0usize..9).prop_map(|(o, n)| Op::Read(o, n)),
            prop_oneof![0u8..0x40, any::<u8>()].prop_map(Op::Sel),
            any::<u32>().prop_map(Op::Win),
            (0u8..26, any::<bool>()).prop_map(|(p, l)| Op::Pin(p, l)),
            prop_oneof![0x40u8..0x44, any::<u8>()].prop_map(Op::Eoi),
            (0u8..26).prop_map(Op::Reservice),
        ]
    }

    #[derive(Debug, Clone, Copy)]
    enum PinOp {
        Line(bool),
        Eoi,
        Mask(bool),
        Trigger(bool),
    }

    fn pin_op() -> impl Strategy<Value = PinOp> {
        prop_oneof![
            any::<bool>().prop_map(PinOp::Line),
            Just(PinOp::Eoi),
            any::<bool>().prop_map(PinOp::Mask),
            any::<bool>().prop_map(PinOp::Trigger),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// One pin against a reference model written straight from 82093AA 3.2.4:
        /// edge = deliver on a rising edge while unmasked (masked edges are lost);
        /// level = deliver while asserted, unmasked and remote IRR clear, then set remote IRR;
        /// EOI clears remote IRR; switching to edge clears remote IRR.
        #[test]
        fn single_pin_matches_the_datasheet_model(ops in proptest::collection::vec(pin_op(), 0..80)) {
            let mut io = Ioapic::new();
            io.set_storm_threshold(0);
            let (mut line, mut masked, mut level, mut rirr) = (false, true, false, false);
            for o in ops {
                let mut expect = false;
                let fx = match o {
                    PinOp::Line(l) => {
                        let rising = l && !line;
                        line = l;
                        expect = if level { line && !masked && !rirr } else { rising && !masked };
                        io.set_pin(7, l)
                    }
                    PinOp::Eoi => {
                        if level && rirr {
                            rirr = false;
                            expect = line && !masked;
                        }
                        io.eoi(0x77)
                    }
                    PinOp::Mask(m) | PinOp::Trigger(m) => {
                        if let PinOp::Mask(_) = o { masked = m } else { level = m }
                        if !level {
                            rirr = false;
                        }
                        expect = level && line && !masked && !rirr;
                        let lo = 0x77u32 | if level { 1 << 15 } else { 0 } | if masked { 1 << 16 } else { 0 };
                        write_reg(&mut io, REG_REDTBL + 14, lo)
                    }
                };
                if expect && level {
                    rirr = true;
                }
                prop_assert_eq!(fx.delivered_pins() != 0, expect, "after {:?}", o);
                prop_assert_eq!(io.entry(7).unwrap().remote_irr(), rirr);
            }
        }

        #[test]
        fn any_mmio_sequence_never_panics_and_remote_irr_only_on_level_entries(
            ops in proptest::collection::vec(op(), 0..150)
        ) {
            let mut io = Ioapic::new();
            io.set_storm_threshold(5);
            for o in ops {
                let fx = match o {
                    Op::Write(off, d) => io.mmio_write(off, &d),
                    Op::Read(off, n) => {
                        let mut b = vec![0u8; n];
                        io.mmio_read(off, &mut b);
                        IoapicEffects::default()
                    }
                    Op::Sel(s) => io.mmio_write(IOREGSEL, &[s]),
                    Op::Win(v) => io.mmio_write(IOWIN, &v.to_le_bytes()),
                    Op::Pin(p, l) => io.set_pin(p, l),
                    Op::Eoi(v) => io.eoi(v),
                    Op::Reservice(p) => io.reservice(p),
                };
                for (pin, msg) in fx.deliveries() {
                    let e = io.entry(pin).unwrap();
                    prop_assert!(!e.masked(), "delivered a masked pin");
                    prop_assert_eq!(msg, e.to_msi());
                    if e.is_level() {
                        prop_assert!(e.remote_irr(), "level delivery sets remote IRR");
                    }
                }
                for pin in 0..NUM_PINS_U8 {
                    let e = io.entry(pin).unwrap();
                    if e.remote_irr() {
                        prop_assert!(e.is_level(), "remote IRR on edge pin {}", pin);
                    }
                    prop_assert_eq!(e.delivery_status(), io.is_throttled(pin));
                    prop_assert_eq!(e.0 & !(WRITABLE_LO | WRITABLE_HI | REMOTE_IRR | DELIVERY_STATUS), 0);
                }
            }
        }
    }
}
