//! The PC's cascaded pair of Intel 8259A programmable interrupt controllers, plus the
//! PIIX/ICH edge/level control registers (ELCR).
//!
//! Ports: master command 0x20 / data 0x21, slave command 0xA0 / data 0xA1, ELCR 0x4D0
//! (IRQ0..7) and 0x4D1 (IRQ8..15). The slave's INT output drives the master's IR2 input; the
//! master's INT output is the CPU's INTR (or the LAPIC LINT0 ExtINT input). Everything here
//! follows the Intel 8259A datasheet (order no. 231468); section names below refer to it.
//!
//! # Model
//!
//! * **Initialization** ("Initialization Command Words"): a write to the command port with
//!   D4 = 1 is ICW1 and starts the sequence ICW2 (vector base T7..T3), ICW3 (only if SNGL = 0:
//!   slave bitmap on the master, slave ID on the slave) and ICW4 (only if IC4 = 1: µPM, AEOI,
//!   M/S, BUF, SFNM; M/S and BUF only concern bus buffering and are ignored). ICW1 clears IMR and ISR, sets IR7 to lowest priority, clears special mask
//!   mode, selects IRR for status reads and, with IC4 = 0, zeroes all ICW4 functions. It resets
//!   the edge-sense circuit: a line that is already high must fall and rise again to request.
//!   The chip's INT output stays low until the sequence completes, so no vector is produced
//!   from a half-programmed base. MCS-80/85 mode (µPM = 0) is not emulated: the chip behaves as
//!   in 8086 mode and the guest is warned. ICW1.LTIM is ignored, as on PIIX/ICH chipsets: the
//!   ELCR alone chooses edge or level per line.
//! * **Operation Command Words**: OCW1 (IMR), OCW2 (non-specific EOI, specific EOI, rotate on
//!   non-specific EOI, rotate on specific EOI, rotate in AEOI mode set/clear, set priority,
//!   no-op) and OCW3 (read IRR/ISR, poll, special mask mode).
//! * **Priority** ("Fully Nested Mode", "Automatic Rotation", "Specific Rotation"): a rotating
//!   priority base; an unmasked request interrupts when its priority is strictly higher than
//!   the highest in-service level. In **special mask mode** in-service levels that are masked
//!   in the IMR do not block anything. In **special fully nested mode** (SFNM, master only) a
//!   request on the cascade input IR2 is recognised even while IR2 is in service, so a
//!   higher-priority slave interrupt can nest. ICW3 is checked against the PC wiring (slave on
//!   master IR2, slave ID 2) and a mismatch is only logged: the wiring cannot change.
//! * **INTA** ("Interrupt Sequence"): [`PicPair::inta`] sets the highest request's ISR bit and
//!   clears its IRR bit (a level line that is still high re-requests at once, blocked by its
//!   own ISR bit); if the master serves IR2 the slave supplies the vector. If the request
//!   vanished before INTA (level line dropped, or masked), the chip answers with IR7's vector
//!   without setting ISR ("default IR7"); the slave does the same with IR15's vector while the
//!   master still sets ISR2, exactly as on a real cascade.
//! * **Edge triggering — the choice made here**: the datasheet ("Edge and Level Triggered
//!   Modes") requires the IR input to stay high until the first INTA even in edge mode, and a
//!   real chip produces a default IR7 otherwise. Emulated devices pulse lines instantaneously
//!   ([`crate::line::InterruptLine::pulse`]), so taken literally every pulse would become a
//!   spurious IR7. This model latches IRR on the rising edge and keeps it latched when the line
//!   falls, as the in-kernel KVM PIC does, so both irqchip modes behave alike. A level line's
//!   IRR bit always follows the line. [`PicPair::set_strict_edge`] switches to the datasheet's
//!   rule instead (an edge request is withdrawn when its line falls before INTA, which then
//!   yields the default IR7); it is off by default and exists to test guests against it.
//! * **Cascade input**: the master latches an IR2 request whenever the slave's INT output is
//!   high after an operation (not only on its rising edge), so a slave request still pending
//!   after an INTA or EOI is never lost for want of a fresh edge. Like any edge request it
//!   stays latched if the slave's INT falls again, so the master may then acknowledge IR2 and
//!   the slave answers with IRQ15's vector, as on real hardware and the KVM PIC. With SNGL = 1
//!   on the master IR2 is an ordinary input driven by `set_irq(2, ..)`; otherwise
//!   `set_irq(2, ..)` is ignored (IRQ2 is not a device line on a PC).
//! * **Poll** (OCW3 P = 1): the next read of either port of that chip returns
//!   `0x80 | level` of the highest request and acknowledges it as an INTA would (including
//!   AEOI), or `0x00` when nothing is requesting. Polling the master does not reach into the
//!   slave; software polls the slave itself.
//! * **ELCR**: one bit per line, 1 = level. IRQ0, 1, 2, 8 and 13 are hard-wired edge on
//!   PIIX/ICH: writes to those bits are dropped (masks [`ELCR_MASK_MASTER`] 0xF8 and
//!   [`ELCR_MASK_SLAVE`] 0xDE).
//! * **EOI notification**: every ISR bit cleared by an EOI command or by AEOI is recorded;
//!   [`PicPair::take_eoi_irqs`] returns and clears the bitmap (bit n = IRQ n) so the backend can
//!   resample level lines. The cascade IR2 is never reported.
//! * **Power-on**: the datasheet leaves it undefined; here all inputs are masked, vector base 0
//!   and the chips are "initialised" (no ICW pending) so nothing reaches the CPU until the guest
//!   programs them.
//!
//! Unknown ports read 0xFF and ignore writes. Nothing here panics on guest input.

use std::sync::Arc;

use crate::guest_warn;
use crate::stats::{Counter, IrqStats};

/// Master command port (A0 = 0).
pub const MASTER_CMD: u16 = 0x20;
/// Master data port (A0 = 1).
pub const MASTER_DATA: u16 = 0x21;
/// Slave command port.
pub const SLAVE_CMD: u16 = 0xA0;
/// Slave data port.
pub const SLAVE_DATA: u16 = 0xA1;
/// ELCR for IRQ0..7.
pub const ELCR_MASTER: u16 = 0x4D0;
/// ELCR for IRQ8..15.
pub const ELCR_SLAVE: u16 = 0x4D1;
/// Writable ELCR bits of the master: IRQ0, 1 and 2 are always edge.
pub const ELCR_MASK_MASTER: u8 = 0xF8;
/// Writable ELCR bits of the slave: IRQ8 (RTC) and IRQ13 (FPU) are always edge.
pub const ELCR_MASK_SLAVE: u8 = 0xDE;
/// The master input the slave's INT drives.
pub const CASCADE_IRQ: u8 = 2;
/// Number of IRQ lines of the pair.
pub const NUM_IRQS: u8 = 16;

/// Where the initialization sequence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InitStep {
    Ready,
    Icw2,
    Icw3,
    Icw4,
}

/// One 8259A.
#[derive(Debug, Clone)]
struct Pic8259 {
    is_master: bool,
    /// Interrupt request register.
    irr: u8,
    /// In-service register.
    isr: u8,
    /// Interrupt mask register (OCW1).
    imr: u8,
    /// Current level of each IR input pin.
    input: u8,
    /// Edge/level control: 1 = level.
    elcr: u8,
    elcr_mask: u8,
    init: InitStep,
    icw4_needed: bool,
    /// ICW1 SNGL: no cascade.
    single: bool,
    /// ICW3 as written.
    icw3: u8,
    /// ICW2 T7..T3.
    vector_base: u8,
    auto_eoi: bool,
    rotate_in_aeoi: bool,
    sfnm: bool,
    special_mask: bool,
    /// OCW3 RR/RIS: status reads return ISR instead of IRR.
    read_isr: bool,
    /// OCW3 P: the next read is a poll.
    poll: bool,
    /// The IR with the highest priority (0 after ICW1: IR7 lowest).
    highest: u8,
    /// IRs whose ISR bit an EOI (or AEOI) cleared since the last take.
    eoi_irs: u8,
    /// Datasheet edge rule: an edge request falls with its line.
    strict_edge: bool,
}

impl Pic8259 {
    fn new(is_master: bool) -> Self {
        Self {
            is_master,
            irr: 0,
            isr: 0,
            imr: 0xFF,
            input: 0,
            elcr: 0,
            elcr_mask: if is_master {
                ELCR_MASK_MASTER
            } else {
                ELCR_MASK_SLAVE
            },
            init: InitStep::Ready,
            icw4_needed: false,
            single: false,
            icw3: 0,
            vector_base: 0,
            auto_eoi: false,
            rotate_in_aeoi: false,
            sfnm: false,
            special_mask: false,
            read_isr: false,
            poll: false,
            highest: 0,
            eoi_irs: 0,
            strict_edge: false,
        }
    }

    fn name(&self) -> &'static str {
        if self.is_master {
            "master"
        } else {
            "slave"
        }
    }

    /// Priority of `ir`: 0 is the highest.
    fn priority(&self, ir: u8) -> u8 {
        ir.wrapping_sub(self.highest) & 7
    }

    /// The IR of `mask` with the highest priority.
    fn highest_in(&self, mask: u8) -> Option<u8> {
        (0..8u8)
            .map(|p| (self.highest + p) & 7)
            .find(|ir| mask & (1 << ir) != 0)
    }

    /// The request the INT output is raised for, if any ("Priority Resolver").
    fn pending_irq(&self) -> Option<u8> {
        let ir = self.highest_in(self.irr & !self.imr)?;
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        match self.highest_in(in_service) {
            None => Some(ir),
            Some(cur) if self.priority(ir) < self.priority(cur) => Some(ir),
            // SFNM: a slave input may interrupt while it is itself in service.
            Some(cur) if cur == ir && self.is_master && self.sfnm && self.has_slave(ir) => Some(ir),
            Some(_) => None,
        }
    }

    /// Whether a slave hangs off `ir`. The PC wiring fixes the only slave on IR2; a master
    /// ICW3 claiming others is logged and otherwise ignored (there is nothing to answer an
    /// INTA on those inputs).
    fn has_slave(&self, ir: u8) -> bool {
        !self.single && ir == CASCADE_IRQ
    }

    /// INT output.
    fn int_output(&self) -> bool {
        self.init == InitStep::Ready && self.pending_irq().is_some()
    }

    /// Drive IR input `ir` (0..=7). Returns true when a rising edge found a request already
    /// pending (coalesced).
    fn set_input(&mut self, ir: u8, level: bool) -> bool {
        let m = 1u8 << (ir & 7);
        let was = self.input & m != 0;
        let mut coalesced = false;
        if self.elcr & m != 0 {
            if level {
                coalesced = !was && self.irr & m != 0;
                self.irr |= m;
            } else {
                self.irr &= !m;
            }
        } else if level && !was {
            coalesced = self.irr & m != 0;
            self.irr |= m;
        } else if !level && self.strict_edge {
            self.irr &= !m;
        }
        if level {
            self.input |= m;
        } else {
            self.input &= !m;
        }
        coalesced
    }

    /// The master's cascade input: IRR is set whenever the slave's INT is high (not only on
    /// its rising edge) and, as for any edge input, stays latched when INT falls.
    fn set_cascade_input(&mut self, level: bool) {
        let m = 1u8 << CASCADE_IRQ;
        if level {
            self.irr |= m;
            self.input |= m;
        } else {
            self.input &= !m;
        }
    }

    /// Acknowledge `ir` (INTA or poll): IRR -> ISR, then AEOI.
    fn ack(&mut self, ir: u8) {
        let m = 1u8 << (ir & 7);
        self.isr |= m;
        self.irr &= !m;
        // A level line still high requests again at once (blocked by its ISR bit).
        self.irr |= self.input & self.elcr & m;
        if self.auto_eoi {
            // "Automatic End of Interrupt Mode": ISR reset at the end of the INTA sequence.
            self.isr &= !m;
            self.eoi_irs |= m;
            if self.rotate_in_aeoi {
                self.highest = (ir + 1) & 7;
            }
        }
    }

    fn eoi_nonspecific(&mut self, rotate: bool) {
        let mut in_service = self.isr;
        if self.special_mask {
            // An IS bit masked by an IMR bit is not cleared by a non-specific EOI in SMM.
            in_service &= !self.imr;
        }
        if let Some(ir) = self.highest_in(in_service) {
            self.isr &= !(1 << ir);
            self.eoi_irs |= 1 << ir;
            if rotate {
                self.highest = (ir + 1) & 7;
            }
        }
    }

    fn eoi_specific(&mut self, ir: u8, rotate: bool) {
        let m = 1u8 << (ir & 7);
        if self.isr & m != 0 {
            self.isr &= !m;
            self.eoi_irs |= m;
        }
        if rotate {
            self.highest = (ir + 1) & 7;
        }
    }

    fn poll_read(&mut self) -> u8 {
        self.poll = false;
        match self.pending_irq() {
            Some(ir) if self.init == InitStep::Ready => {
                self.ack(ir);
                0x80 | ir
            }
            _ => 0,
        }
    }

    fn read(&mut self, a0: bool) -> u8 {
        if self.poll {
            return self.poll_read();
        }
        if a0 {
            self.imr
        } else if self.read_isr {
            self.isr
        } else {
            self.irr
        }
    }

    fn write(&mut self, a0: bool, val: u8) {
        if !a0 {
            if val & 0x10 != 0 {
                self.icw1(val);
            } else if val & 0x08 != 0 {
                self.ocw3(val);
            } else {
                self.ocw2(val);
            }
            return;
        }
        match self.init {
            InitStep::Icw2 => {
                // 8086 mode: T7..T3 from ICW2, T2..T0 are the IR number.
                self.vector_base = val & 0xF8;
                self.init = if !self.single {
                    InitStep::Icw3
                } else if self.icw4_needed {
                    InitStep::Icw4
                } else {
                    InitStep::Ready
                };
            }
            InitStep::Icw3 => {
                self.icw3 = val;
                let expected = if self.is_master { 0x04 } else { 0x02 };
                if val != expected {
                    guest_warn!(
                        "8259A {}: ICW3 {val:#04x} does not match the PC wiring (slave on IR2); the cascade stays on IR2",
                        self.name()
                    );
                }
                self.init = if self.icw4_needed {
                    InitStep::Icw4
                } else {
                    InitStep::Ready
                };
            }
            InitStep::Icw4 => {
                if val & 0x01 == 0 {
                    guest_warn!(
                        "8259A {}: ICW4 selects MCS-80/85 mode, which is not emulated; behaving as in 8086 mode",
                        self.name()
                    );
                }
                self.auto_eoi = val & 0x02 != 0;
                self.sfnm = val & 0x10 != 0;
                self.init = InitStep::Ready;
            }
            InitStep::Ready => self.imr = val,
        }
    }

    fn icw1(&mut self, val: u8) {
        if val & 0x01 == 0 {
            guest_warn!(
                "8259A {}: ICW1 {val:#04x} without IC4 selects MCS-80/85 mode, which is not emulated; behaving as in 8086 mode",
                self.name()
            );
        }
        self.init = InitStep::Icw2;
        self.icw4_needed = val & 0x01 != 0;
        self.single = val & 0x02 != 0;
        self.imr = 0;
        self.isr = 0;
        // Edge-sense reset: pending edges are dropped; level lines keep following the input.
        self.irr = self.input & self.elcr;
        self.highest = 0;
        self.special_mask = false;
        self.read_isr = false;
        self.poll = false;
        self.rotate_in_aeoi = false;
        self.icw3 = 7;
        if !self.icw4_needed {
            self.auto_eoi = false;
            self.sfnm = false;
        }
    }

    fn ocw2(&mut self, val: u8) {
        let l = val & 7;
        match val >> 5 {
            0b001 => self.eoi_nonspecific(false),
            0b011 => self.eoi_specific(l, false),
            0b101 => self.eoi_nonspecific(true),
            0b111 => self.eoi_specific(l, true),
            0b100 => self.rotate_in_aeoi = true,
            0b000 => self.rotate_in_aeoi = false,
            0b110 => self.highest = (l + 1) & 7,
            _ => {} // 0b010: no operation
        }
    }

    fn ocw3(&mut self, val: u8) {
        if val & 0x80 != 0 {
            guest_warn!(
                "8259A {}: OCW3 {val:#04x} has reserved bit 7 set",
                self.name()
            );
        }
        if val & 0x40 != 0 {
            self.special_mask = val & 0x20 != 0;
        }
        if val & 0x02 != 0 {
            self.read_isr = val & 0x01 != 0;
        }
        if val & 0x04 != 0 {
            self.poll = true;
        }
    }
}

/// What an INTA cycle produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inta {
    /// The vector on the data bus.
    pub vector: u8,
    /// The IRQ (0..=15) that went in service, or `None` for a spurious IRQ7/IRQ15 answer.
    pub irq: Option<u8>,
}

/// The master/slave 8259A pair with its ELCR. See the module documentation.
#[derive(Debug, Clone)]
pub struct PicPair {
    master: Pic8259,
    slave: Pic8259,
    /// Level of the external IR2 input (only used when the master is in single mode).
    ext_ir2: bool,
    stats: Option<Arc<IrqStats>>,
}

impl Default for PicPair {
    fn default() -> Self {
        Self::new()
    }
}

impl PicPair {
    /// A pair in the power-on state (all inputs masked, see the module docs).
    pub fn new() -> Self {
        Self {
            master: Pic8259::new(true),
            slave: Pic8259::new(false),
            ext_ir2: false,
            stats: None,
        }
    }

    /// Follow the datasheet's edge rule ("Edge and Level Triggered Modes": the IR input must
    /// stay high until the first INTA) instead of latching edges; see the module docs.
    pub fn set_strict_edge(&mut self, strict: bool) {
        self.master.strict_edge = strict;
        self.slave.strict_edge = strict;
    }

    /// Record counters (delivered, coalesced, EOI, spurious; under the IRQ number) here.
    pub fn set_stats(&mut self, stats: Arc<IrqStats>) {
        self.stats = Some(stats);
    }

    fn record(&self, irq: u8, c: Counter) {
        if let Some(s) = &self.stats {
            s.record(u32::from(irq), c);
        }
    }

    /// Back to power-on state. Input levels are kept (they are wires, not chip state).
    pub fn reset(&mut self) {
        let (mi, si) = (self.master.input, self.slave.input);
        let stats = self.stats.take();
        let ext = self.ext_ir2;
        let strict = self.master.strict_edge;
        *self = Self::new();
        self.set_strict_edge(strict);
        self.master.input = mi;
        self.slave.input = si;
        self.ext_ir2 = ext;
        self.stats = stats;
    }

    /// Whether `port` belongs to this device.
    pub fn handles_port(port: u16) -> bool {
        matches!(
            port,
            MASTER_CMD | MASTER_DATA | SLAVE_CMD | SLAVE_DATA | ELCR_MASTER | ELCR_SLAVE
        )
    }

    fn update_cascade(&mut self) {
        let level = if self.master.single {
            self.ext_ir2
        } else {
            self.slave.int_output()
        };
        if self.master.single {
            self.master.set_input(CASCADE_IRQ, level);
        } else {
            self.master.set_cascade_input(level);
        }
    }

    /// A byte read of `port` (poll reads have INTA side effects, hence `&mut`).
    pub fn read(&mut self, port: u16) -> u8 {
        let v = match port {
            MASTER_CMD | MASTER_DATA => {
                self.update_cascade();
                self.master.read(port == MASTER_DATA)
            }
            SLAVE_CMD | SLAVE_DATA => self.slave.read(port == SLAVE_DATA),
            ELCR_MASTER => self.master.elcr,
            ELCR_SLAVE => self.slave.elcr,
            _ => {
                guest_warn!("8259A: read of unknown port {port:#x}, returning 0xff");
                0xFF
            }
        };
        self.update_cascade();
        v
    }

    /// A byte write of `val` to `port`.
    pub fn write(&mut self, port: u16, val: u8) {
        match port {
            MASTER_CMD | MASTER_DATA => self.master.write(port == MASTER_DATA, val),
            SLAVE_CMD | SLAVE_DATA => self.slave.write(port == SLAVE_DATA, val),
            ELCR_MASTER => self.write_elcr(true, val),
            ELCR_SLAVE => self.write_elcr(false, val),
            _ => guest_warn!("8259A: write {val:#04x} to unknown port {port:#x} ignored"),
        }
        self.update_cascade();
    }

    fn write_elcr(&mut self, master: bool, val: u8) {
        let chip = if master {
            &mut self.master
        } else {
            &mut self.slave
        };
        if val & !chip.elcr_mask != 0 {
            guest_warn!(
                "ELCR {}: bits {:#04x} are hard-wired edge (IRQ0/1/2/8/13); ignored",
                chip.name(),
                val & !chip.elcr_mask
            );
        }
        chip.elcr = val & chip.elcr_mask;
        // A line switched to level: IRR follows the pin from now on.
        chip.irr = (chip.irr & !chip.elcr) | (chip.input & chip.elcr);
    }

    /// Drive IRQ line `irq` (0..=15) to `level` (true = high). Out of range is a logged no-op;
    /// IRQ2 is the cascade input and ignored unless the master is in single mode.
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        let coalesced = match irq {
            CASCADE_IRQ => {
                self.ext_ir2 = level;
                if !self.master.single {
                    guest_warn!("8259A: IRQ2 is the cascade input; set_irq(2) ignored");
                }
                false
            }
            0..=7 => self.master.set_input(irq, level),
            8..=15 => self.slave.set_input(irq - 8, level),
            _ => {
                guest_warn!("8259A: set_irq({irq}) out of range 0..=15 ignored");
                false
            }
        };
        if coalesced {
            self.record(irq, Counter::Coalesced);
        }
        self.update_cascade();
    }

    /// The master's INT output: an interrupt is waiting for an INTA.
    pub fn interrupt_pending(&self) -> bool {
        let mut m = self.master.clone();
        if !m.single {
            m.set_cascade_input(self.slave.int_output());
        }
        m.int_output()
    }

    /// The INTA cycle: the vector the pair puts on the bus.
    pub fn inta(&mut self) -> u8 {
        self.inta_detailed().vector
    }

    /// The INTA cycle, also saying which IRQ went in service (`None` = spurious answer).
    pub fn inta_detailed(&mut self) -> Inta {
        self.update_cascade();
        let pending = if self.master.init == InitStep::Ready {
            self.master.pending_irq()
        } else {
            None
        };
        let result = match pending {
            None => {
                self.record(7, Counter::Spurious);
                Inta {
                    vector: self.master.vector_base | 7,
                    irq: None,
                }
            }
            Some(ir) => {
                self.master.ack(ir);
                if ir == CASCADE_IRQ && !self.master.single {
                    let slave_req = if self.slave.init == InitStep::Ready {
                        self.slave.pending_irq()
                    } else {
                        None
                    };
                    match slave_req {
                        Some(sir) => {
                            self.slave.ack(sir);
                            Inta {
                                vector: self.slave.vector_base | sir,
                                irq: Some(8 + sir),
                            }
                        }
                        None => {
                            self.record(15, Counter::Spurious);
                            Inta {
                                vector: self.slave.vector_base | 7,
                                irq: None,
                            }
                        }
                    }
                } else {
                    Inta {
                        vector: self.master.vector_base | ir,
                        irq: Some(ir),
                    }
                }
            }
        };
        if let Some(irq) = result.irq {
            self.record(irq, Counter::Delivered);
        }
        self.update_cascade();
        result
    }

    /// IRQs (bit n = IRQ n) whose in-service bit an EOI command or AEOI cleared since the last
    /// call. The cascade IR2 is not reported.
    pub fn take_eoi_irqs(&mut self) -> u16 {
        let mut m = self.master.eoi_irs;
        if !self.master.single {
            m &= !(1 << CASCADE_IRQ);
        }
        let bits = u16::from(m) | (u16::from(self.slave.eoi_irs) << 8);
        self.master.eoi_irs = 0;
        self.slave.eoi_irs = 0;
        for irq in 0..NUM_IRQS {
            if bits & (1 << irq) != 0 {
                self.record(irq, Counter::Eoi);
            }
        }
        bits
    }

    /// Whether IRQ `irq` is level-triggered per the ELCR (false for out of range).
    pub fn is_level(&self, irq: u8) -> bool {
        self.elcr() & 1u16.checked_shl(u32::from(irq)).unwrap_or(0) != 0
    }

    /// Both ELCRs (bit n = IRQ n).
    pub fn elcr(&self) -> u16 {
        u16::from(self.master.elcr) | (u16::from(self.slave.elcr) << 8)
    }

    /// Interrupt request registers (bit n = IRQ n).
    pub fn irr(&self) -> u16 {
        u16::from(self.master.irr) | (u16::from(self.slave.irr) << 8)
    }

    /// In-service registers (bit n = IRQ n).
    pub fn isr(&self) -> u16 {
        u16::from(self.master.isr) | (u16::from(self.slave.isr) << 8)
    }

    /// Interrupt mask registers (bit n = IRQ n).
    pub fn imr(&self) -> u16 {
        u16::from(self.master.imr) | (u16::from(self.slave.imr) << 8)
    }

    /// Vector bases programmed by ICW2 (master, slave).
    pub fn vector_bases(&self) -> (u8, u8) {
        (self.master.vector_base, self.slave.vector_base)
    }

    /// Whether the slave is cascaded on IR2 (master ICW1 SNGL = 0).
    pub fn cascaded(&self) -> bool {
        !self.master.single
    }

    /// Whether the master is in special fully nested mode (for invariant checks).
    pub fn master_sfnm(&self) -> bool {
        self.master.sfnm
    }

    /// Whether either chip is in special mask mode (for invariant checks).
    pub fn special_mask_mode(&self) -> (bool, bool) {
        (self.master.special_mask, self.slave.special_mask)
    }

    /// Current input pin levels (bit n = IRQ n; IR2 is the cascade).
    pub fn input_levels(&self) -> u16 {
        u16::from(self.master.input) | (u16::from(self.slave.input) << 8)
    }

    /// The highest-priority IR of each chip (master, slave), i.e. the rotation state.
    pub fn priority_base(&self) -> (u8, u8) {
        (self.master.highest, self.slave.highest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Linux's init_8259A: ICW1 0x11, bases 0x20/0x28, cascade on IR2, 8086 mode.
    fn pc_pic() -> PicPair {
        let mut p = PicPair::new();
        for (cmd, data, base, icw3) in [(0x20, 0x21, 0x20, 0x04), (0xA0, 0xA1, 0x28, 0x02)] {
            p.write(cmd, 0x11);
            p.write(data, base);
            p.write(data, icw3);
            p.write(data, 0x01);
            p.write(data, 0x00);
        }
        p
    }

    fn pulse(p: &mut PicPair, irq: u8) {
        p.set_irq(irq, true);
        p.set_irq(irq, false);
    }

    #[test]
    fn power_on_state_masks_all_inputs() {
        let mut p = PicPair::new();
        assert_eq!(p.imr(), 0xFFFF);
        pulse(&mut p, 1);
        assert!(!p.interrupt_pending());
    }

    #[test]
    fn icw_sequence_sets_vector_bases() {
        let p = pc_pic();
        assert_eq!(p.vector_bases(), (0x20, 0x28));
    }

    #[test]
    fn icw2_low_three_bits_are_ignored_in_8086_mode() {
        let mut p = PicPair::new();
        p.write(0x20, 0x13); // single, IC4
        p.write(0x21, 0x47);
        p.write(0x21, 0x01);
        assert_eq!(p.vector_bases().0, 0x40);
    }

    #[test]
    fn icw1_clears_imr_and_isr() {
        let mut p = pc_pic();
        pulse(&mut p, 3);
        p.inta();
        p.write(0x21, 0x55);
        p.write(0x20, 0x11);
        assert_eq!(p.imr() & 0xFF, 0);
        assert_eq!(p.isr() & 0xFF, 0);
    }

    #[test]
    fn icw1_selects_irr_for_status_reads() {
        let mut p = pc_pic();
        p.write(0x20, 0x0B); // OCW3 read ISR
        p.write(0x20, 0x11);
        p.write(0x21, 0x20);
        p.write(0x21, 0x04);
        p.write(0x21, 0x01);
        p.set_irq(5, true);
        assert_eq!(p.read(0x20), 1 << 5);
    }

    #[test]
    fn icw1_resets_edge_sense_so_a_held_line_needs_a_new_rising_edge() {
        let mut p = pc_pic();
        p.set_irq(3, true);
        p.write(0x20, 0x11);
        p.write(0x21, 0x20);
        p.write(0x21, 0x04);
        p.write(0x21, 0x01);
        assert!(!p.interrupt_pending());
        p.set_irq(3, true); // no change: still no edge
        assert!(!p.interrupt_pending());
        p.set_irq(3, false);
        p.set_irq(3, true);
        assert!(p.interrupt_pending());
    }

    #[test]
    fn int_stays_low_until_the_initialization_sequence_completes() {
        let mut p = pc_pic();
        p.write(0x20, 0x11);
        pulse(&mut p, 4);
        assert!(!p.interrupt_pending());
        p.write(0x21, 0x20);
        p.write(0x21, 0x04);
        assert!(!p.interrupt_pending());
        p.write(0x21, 0x01);
        assert!(p.interrupt_pending());
        assert_eq!(p.inta(), 0x24);
    }

    #[test]
    fn single_mode_skips_icw3() {
        let mut p = PicPair::new();
        p.write(0x20, 0x13); // SNGL, IC4
        p.write(0x21, 0x30);
        p.write(0x21, 0x01); // ICW4, not ICW3
        p.write(0x21, 0x00); // now OCW1
        assert_eq!(p.imr() & 0xFF, 0);
        p.set_irq(2, true);
        assert_eq!(p.inta(), 0x32, "IR2 is an ordinary input in single mode");
    }

    #[test]
    fn no_icw4_when_ic4_is_clear() {
        let mut p = PicPair::new();
        p.write(0x20, 0x10); // cascade, no IC4
        p.write(0x21, 0x20);
        p.write(0x21, 0x04);
        p.write(0x21, 0xFE); // OCW1 already
        assert_eq!(p.imr() & 0xFF, 0xFE);
    }

    #[test]
    fn ocw1_writes_the_mask_and_data_port_reads_it_back() {
        let mut p = pc_pic();
        p.write(0x21, 0xA5);
        p.write(0xA1, 0x5A);
        assert_eq!(p.read(0x21), 0xA5);
        assert_eq!(p.read(0xA1), 0x5A);
    }

    #[test]
    fn edge_request_latches_on_rising_edge() {
        let mut p = pc_pic();
        p.set_irq(4, true);
        assert_eq!(p.irr() & (1 << 4), 1 << 4);
        assert!(p.interrupt_pending());
    }

    #[test]
    fn edge_request_stays_latched_when_the_line_falls_before_inta() {
        let mut p = pc_pic();
        pulse(&mut p, 4);
        assert!(p.interrupt_pending());
        assert_eq!(p.inta(), 0x24);
    }

    #[test]
    fn edge_line_held_high_does_not_request_again_after_eoi() {
        let mut p = pc_pic();
        p.set_irq(4, true);
        assert_eq!(p.inta(), 0x24);
        p.write(0x20, 0x20);
        assert!(!p.interrupt_pending());
    }

    #[test]
    fn inta_returns_vector_base_plus_ir_and_moves_irr_to_isr() {
        let mut p = pc_pic();
        pulse(&mut p, 6);
        assert_eq!(
            p.inta_detailed(),
            Inta {
                vector: 0x26,
                irq: Some(6)
            }
        );
        assert_eq!(p.isr(), 1 << 6);
        assert_eq!(p.irr() & (1 << 6), 0);
    }

    #[test]
    fn level_request_follows_the_line() {
        let mut p = pc_pic();
        p.write(ELCR_MASTER, 1 << 5);
        p.set_irq(5, true);
        assert!(p.interrupt_pending());
        p.set_irq(5, false);
        assert!(!p.interrupt_pending());
        assert_eq!(p.irr() & (1 << 5), 0);
    }

    #[test]
    fn level_line_redelivers_after_eoi_while_asserted() {
        let mut p = pc_pic();
        p.write(ELCR_MASTER, 1 << 5);
        p.set_irq(5, true);
        assert_eq!(p.inta(), 0x25);
        assert!(!p.interrupt_pending(), "blocked by its own ISR bit");
        p.write(0x20, 0x20);
        assert!(p.interrupt_pending());
        assert_eq!(p.inta(), 0x25);
    }

    #[test]
    fn level_line_dropped_before_inta_gives_spurious_irq7() {
        let mut p = pc_pic();
        p.write(ELCR_MASTER, 1 << 5);
        p.set_irq(5, true);
        p.set_irq(5, false);
        assert_eq!(
            p.inta_detailed(),
            Inta {
                vector: 0x27,
                irq: None
            }
        );
        assert_eq!(p.isr(), 0, "default IR7 does not set ISR");
    }

    #[test]
    fn request_masked_before_inta_gives_spurious_irq7() {
        let mut p = pc_pic();
        pulse(&mut p, 3);
        p.write(0x21, 1 << 3);
        assert!(!p.interrupt_pending());
        assert_eq!(p.inta(), 0x27);
    }

    #[test]
    fn masked_request_stays_pending_until_unmasked() {
        let mut p = pc_pic();
        p.write(0x21, 1 << 3);
        pulse(&mut p, 3);
        assert!(!p.interrupt_pending());
        p.write(0x21, 0);
        assert_eq!(p.inta(), 0x23);
    }

    #[test]
    fn fully_nested_lower_priority_waits_for_eoi() {
        let mut p = pc_pic();
        pulse(&mut p, 3);
        assert_eq!(p.inta(), 0x23);
        pulse(&mut p, 5);
        assert!(!p.interrupt_pending());
        p.write(0x20, 0x20);
        assert_eq!(p.inta(), 0x25);
    }

    #[test]
    fn fully_nested_higher_priority_interrupts_the_one_in_service() {
        let mut p = pc_pic();
        pulse(&mut p, 5);
        assert_eq!(p.inta(), 0x25);
        pulse(&mut p, 1);
        assert_eq!(p.inta(), 0x21);
        assert_eq!(p.isr(), (1 << 5) | (1 << 1));
    }

    #[test]
    fn same_level_request_waits_for_its_own_eoi() {
        let mut p = pc_pic();
        pulse(&mut p, 4);
        p.inta();
        pulse(&mut p, 4);
        assert!(!p.interrupt_pending());
        p.write(0x20, 0x20);
        assert_eq!(p.inta(), 0x24);
    }

    #[test]
    fn nonspecific_eoi_clears_the_highest_priority_isr_bit() {
        let mut p = pc_pic();
        pulse(&mut p, 5);
        p.inta();
        pulse(&mut p, 1);
        p.inta();
        p.write(0x20, 0x20);
        assert_eq!(p.isr(), 1 << 5);
    }

    #[test]
    fn specific_eoi_clears_the_named_isr_bit() {
        let mut p = pc_pic();
        pulse(&mut p, 5);
        p.inta();
        pulse(&mut p, 1);
        p.inta();
        p.write(0x20, 0x60 | 5);
        assert_eq!(p.isr(), 1 << 1);
    }

    #[test]
    fn rotate_on_nonspecific_eoi_makes_the_served_ir_lowest() {
        let mut p = pc_pic();
        pulse(&mut p, 3);
        p.inta();
        p.write(0x20, 0xA0);
        assert_eq!(p.priority_base().0, 4);
        pulse(&mut p, 3);
        pulse(&mut p, 6);
        assert_eq!(p.inta(), 0x26, "IR6 now outranks IR3");
    }

    #[test]
    fn rotate_on_specific_eoi_makes_l_lowest() {
        let mut p = pc_pic();
        pulse(&mut p, 2 + 3);
        p.inta();
        p.write(0x20, 0xE0 | 5);
        assert_eq!(p.isr(), 0);
        assert_eq!(p.priority_base().0, 6);
    }

    #[test]
    fn set_priority_command_makes_l_the_lowest() {
        let mut p = pc_pic();
        p.write(0x20, 0xC0 | 4);
        pulse(&mut p, 4);
        pulse(&mut p, 5);
        assert_eq!(p.inta(), 0x25);
    }

    #[test]
    fn ocw2_noop_changes_nothing() {
        let mut p = pc_pic();
        pulse(&mut p, 1);
        p.inta();
        p.write(0x20, 0x40);
        assert_eq!(p.isr(), 1 << 1);
    }

    #[test]
    fn auto_eoi_clears_isr_at_the_end_of_inta() {
        let mut p = PicPair::new();
        p.write(0x20, 0x13);
        p.write(0x21, 0x20);
        p.write(0x21, 0x03); // 8086, AEOI
        p.write(0x21, 0x00);
        pulse(&mut p, 3);
        assert_eq!(p.inta(), 0x23);
        assert_eq!(p.isr(), 0);
        assert_eq!(p.take_eoi_irqs(), 1 << 3);
    }

    #[test]
    fn rotate_in_auto_eoi_mode_rotates_at_inta() {
        let mut p = PicPair::new();
        p.write(0x20, 0x13);
        p.write(0x21, 0x20);
        p.write(0x21, 0x03);
        p.write(0x21, 0x00);
        p.write(0x20, 0x80); // rotate in AEOI set
        pulse(&mut p, 3);
        p.inta();
        assert_eq!(p.priority_base().0, 4);
        p.write(0x20, 0x00); // clear
        pulse(&mut p, 0);
        p.inta();
        assert_eq!(p.priority_base().0, 4);
    }

    #[test]
    fn ocw3_selects_isr_or_irr_for_command_port_reads() {
        let mut p = pc_pic();
        pulse(&mut p, 6);
        pulse(&mut p, 7);
        p.inta();
        assert_eq!(p.read(0x20), 1 << 7, "IRR by default");
        p.write(0x20, 0x0B);
        assert_eq!(p.read(0x20), 1 << 6);
        p.write(0x20, 0x08); // RR = 0: no change
        assert_eq!(p.read(0x20), 1 << 6);
        p.write(0x20, 0x0A);
        assert_eq!(p.read(0x20), 1 << 7);
    }

    #[test]
    fn poll_returns_highest_request_and_acts_as_inta() {
        let mut p = pc_pic();
        p.write(0x21, 0xFF); // polling works with interrupts masked? no: masked IRs are not polled
        p.write(0x21, 0x00);
        pulse(&mut p, 5);
        p.write(0x20, 0x0C);
        assert_eq!(p.read(0x20), 0x80 | 5);
        assert_eq!(p.isr(), 1 << 5);
        assert!(!p.interrupt_pending());
    }

    #[test]
    fn poll_is_one_shot() {
        let mut p = pc_pic();
        pulse(&mut p, 5);
        p.write(0x20, 0x0C);
        p.read(0x21);
        assert_eq!(p.read(0x21), 0x00, "second read is the IMR again");
    }

    #[test]
    fn poll_with_no_request_returns_zero() {
        let mut p = pc_pic();
        p.write(0x20, 0x0C);
        assert_eq!(p.read(0x20), 0x00);
        assert_eq!(p.isr(), 0);
    }

    #[test]
    fn special_mask_mode_lets_lower_priority_in_while_masked_level_is_in_service() {
        let mut p = pc_pic();
        pulse(&mut p, 3);
        p.inta();
        p.write(0x21, 1 << 3);
        p.write(0x20, 0x68); // ESMM | SMM
        pulse(&mut p, 5);
        assert_eq!(p.inta(), 0x25);
        p.write(0x20, 0x48); // ESMM, SMM = 0
        assert!(!p.special_mask_mode().0);
    }

    #[test]
    fn without_special_mask_mode_masking_the_in_service_level_does_not_help() {
        let mut p = pc_pic();
        pulse(&mut p, 3);
        p.inta();
        p.write(0x21, 1 << 3);
        pulse(&mut p, 5);
        assert!(!p.interrupt_pending());
    }

    #[test]
    fn special_mask_nonspecific_eoi_skips_masked_isr_bits() {
        let mut p = pc_pic();
        pulse(&mut p, 3);
        p.inta();
        p.write(0x21, 1 << 3);
        p.write(0x20, 0x68);
        pulse(&mut p, 5);
        p.inta();
        p.write(0x20, 0x20);
        assert_eq!(p.isr(), 1 << 3, "IR5 cleared, masked IR3 kept");
    }

    #[test]
    fn cascade_slave_irq_delivers_the_slave_vector() {
        let mut p = pc_pic();
        pulse(&mut p, 12);
        assert!(p.interrupt_pending());
        assert_eq!(
            p.inta_detailed(),
            Inta {
                vector: 0x2C,
                irq: Some(12)
            }
        );
        assert_eq!(p.isr(), (1 << 12) | (1 << 2));
    }

    #[test]
    fn slave_request_vanished_gives_irq15_vector_and_master_isr2() {
        let mut p = pc_pic();
        p.write(ELCR_SLAVE, 1 << 2); // IRQ10 level
        p.set_irq(10, true);
        assert!(p.interrupt_pending());
        p.set_irq(10, false); // the master keeps its latched IR2 request
        assert!(p.interrupt_pending());
        let q = &mut p;
        assert_eq!(
            q.inta_detailed(),
            Inta {
                vector: 0x2F,
                irq: None
            }
        );
        assert_eq!(q.isr(), 1 << 2, "master IR2 in service, slave ISR empty");
    }

    #[test]
    fn slave_interrupts_wait_for_master_eoi_without_sfnm() {
        let mut p = pc_pic();
        pulse(&mut p, 12);
        p.inta();
        pulse(&mut p, 9); // higher priority on the slave
        assert!(!p.interrupt_pending(), "master ISR2 blocks its own level");
        p.write(0xA0, 0x20);
        p.write(0x20, 0x20);
        assert_eq!(p.inta(), 0x29);
    }

    #[test]
    fn sfnm_lets_a_higher_slave_irq_nest_inside_a_slave_irq() {
        let mut p = PicPair::new();
        p.write(0x20, 0x11);
        p.write(0x21, 0x20);
        p.write(0x21, 0x04);
        p.write(0x21, 0x11); // 8086 + SFNM
        p.write(0x21, 0x00);
        p.write(0xA0, 0x11);
        p.write(0xA1, 0x28);
        p.write(0xA1, 0x02);
        p.write(0xA1, 0x01);
        p.write(0xA1, 0x00);
        assert!(p.master_sfnm());
        pulse(&mut p, 12);
        assert_eq!(p.inta(), 0x2C);
        pulse(&mut p, 9);
        assert!(p.interrupt_pending());
        assert_eq!(p.inta(), 0x29);
    }

    #[test]
    fn sfnm_does_not_let_a_non_cascade_level_line_nest_into_itself() {
        // ICW3 claims a slave on IR4; there is none, so IR4 keeps fully nested rules.
        let mut p = PicPair::new();
        p.write(0x20, 0x11);
        p.write(0x21, 0x20);
        p.write(0x21, 0x14);
        p.write(0x21, 0x11);
        p.write(0x21, 0x00);
        p.write(ELCR_MASTER, 1 << 4);
        p.set_irq(4, true);
        assert_eq!(p.inta(), 0x24);
        assert!(!p.interrupt_pending());
    }

    #[test]
    fn pending_slave_request_survives_inta_of_another_slave_irq() {
        let mut p = pc_pic();
        pulse(&mut p, 9);
        pulse(&mut p, 12);
        assert_eq!(p.inta(), 0x29);
        p.write(0xA0, 0x20);
        p.write(0x20, 0x20);
        assert_eq!(p.inta(), 0x2C);
    }

    #[test]
    fn elcr_cannot_make_irq0_1_2_8_13_level() {
        let mut p = pc_pic();
        p.write(ELCR_MASTER, 0xFF);
        p.write(ELCR_SLAVE, 0xFF);
        assert_eq!(p.read(ELCR_MASTER), 0xF8);
        assert_eq!(p.read(ELCR_SLAVE), 0xDE);
        for irq in [0, 1, 2, 8, 13] {
            assert!(!p.is_level(irq), "IRQ{irq}");
        }
        assert!(p.is_level(9) && p.is_level(3));
    }

    #[test]
    fn take_eoi_irqs_reports_each_eoi_once() {
        let mut p = pc_pic();
        pulse(&mut p, 11);
        p.inta();
        p.write(0xA0, 0x20);
        p.write(0x20, 0x20);
        assert_eq!(p.take_eoi_irqs(), 1 << 11, "cascade IR2 not reported");
        assert_eq!(p.take_eoi_irqs(), 0);
    }

    #[test]
    fn specific_eoi_of_an_idle_ir_reports_nothing() {
        let mut p = pc_pic();
        p.write(0x20, 0x60 | 4);
        assert_eq!(p.take_eoi_irqs(), 0);
    }

    #[test]
    fn out_of_range_irq_is_ignored() {
        let mut p = pc_pic();
        p.set_irq(16, true);
        p.set_irq(255, true);
        assert!(!p.interrupt_pending());
        assert!(!p.is_level(200));
    }

    #[test]
    fn irq2_is_the_cascade_not_a_device_line() {
        let mut p = pc_pic();
        p.set_irq(2, true);
        assert!(!p.interrupt_pending());
    }

    #[test]
    fn strict_edge_mode_withdraws_a_request_whose_line_fell_before_inta() {
        let mut p = pc_pic();
        p.set_strict_edge(true);
        pulse(&mut p, 4);
        assert!(!p.interrupt_pending());
        assert_eq!(p.inta(), 0x27, "default IR7");
        p.set_irq(4, true);
        assert_eq!(p.inta(), 0x24, "held high until INTA: served");
    }

    #[test]
    fn irr_read_shows_masked_requests() {
        let mut p = pc_pic();
        p.write(0x21, 0xFF);
        pulse(&mut p, 6);
        assert_eq!(p.read(0x20), 1 << 6);
    }

    #[test]
    fn poll_of_the_slave_returns_its_own_level() {
        let mut p = pc_pic();
        p.write(0x21, 0xFF); // a polling guest masks the master
        pulse(&mut p, 13);
        p.write(0xA0, 0x0C);
        assert_eq!(p.read(0xA0), 0x80 | 5);
        assert_eq!(p.isr() >> 8, 1 << 5);
    }

    #[test]
    fn elcr_switching_a_high_line_to_level_requests_at_once() {
        let mut p = pc_pic();
        p.write(0x21, 1 << 5);
        p.set_irq(5, true);
        p.write(0x20, 0x20);
        p.write(0x21, 0);
        p.inta();
        p.write(0x20, 0x20);
        assert!(!p.interrupt_pending(), "edge: served once");
        p.write(ELCR_MASTER, 1 << 5);
        assert!(p.interrupt_pending(), "level: the high line requests");
    }

    #[test]
    fn unknown_port_reads_all_ones() {
        let mut p = pc_pic();
        assert_eq!(p.read(0x22), 0xFF);
        p.write(0x22, 0);
    }

    #[test]
    fn stats_count_delivered_spurious_and_eoi() {
        let stats = Arc::new(IrqStats::new(24));
        let mut p = pc_pic();
        p.set_stats(stats.clone());
        pulse(&mut p, 4);
        p.inta();
        p.write(0x20, 0x20);
        p.take_eoi_irqs();
        p.inta();
        assert_eq!(stats.get(4, Counter::Delivered), 1);
        assert_eq!(stats.get(4, Counter::Eoi), 1);
        assert_eq!(stats.get(7, Counter::Spurious), 1);
    }

    #[test]
    fn second_edge_before_inta_is_counted_as_coalesced() {
        let stats = Arc::new(IrqStats::new(24));
        let mut p = pc_pic();
        p.set_stats(stats.clone());
        pulse(&mut p, 4);
        pulse(&mut p, 4);
        assert_eq!(stats.get(4, Counter::Coalesced), 1);
        p.inta();
        p.write(0x20, 0x20);
        assert!(!p.interrupt_pending(), "two edges, one interrupt");
    }

    #[test]
    fn reset_keeps_input_levels() {
        let mut p = pc_pic();
        p.write(ELCR_MASTER, 1 << 5);
        p.set_irq(5, true);
        p.reset();
        assert_eq!(p.input_levels() & (1 << 5), 1 << 5);
        assert_eq!(p.imr(), 0xFFFF);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u16, u8),
        Read(u16),
        SetIrq(u8, bool),
        Inta,
        TakeEoi,
    }

    fn op() -> impl Strategy<Value = Op> {
        let port = prop_oneof![
            Just(0x20u16),
            Just(0x21),
            Just(0xA0),
            Just(0xA1),
            Just(0x4D0),
            Just(0x4D1),
            any::<u16>()
        ];
        prop_oneof![
            (port.clone(), any::<u8>()).prop_map(|(p, v)| Op::Write(p, v)),
            // Bias towards meaningful OCW2/OCW3 commands.
            (
                prop_oneof![Just(0x20u16), Just(0xA0)],
                prop_oneof![
                    Just(0x20u8),
                    Just(0x0B),
                    Just(0x0A),
                    Just(0x0C),
                    Just(0x68),
                    Just(0x48),
                    0x60u8..0x68,
                    0xA0u8..0xA1,
                    0xC0u8..0xC8
                ]
            )
                .prop_map(|(p, v)| Op::Write(p, v)),
            port.prop_map(Op::Read),
            (0u8..20, any::<bool>()).prop_map(|(i, l)| Op::SetIrq(i, l)),
            Just(Op::Inta),
            Just(Op::TakeEoi),
        ]
    }

    fn check_invariants(p: &PicPair) -> Result<(), TestCaseError> {
        let elcr = p.elcr();
        prop_assert_eq!(elcr & !0xDEF8, 0, "ELCR honours the hard-wired edge bits");
        // A level line's request always equals its pin (the cascade IR2 is never level).
        prop_assert_eq!(p.irr() & elcr, p.input_levels() & elcr);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_port_sequence_never_panics_and_keeps_invariants(
            from_power_on: bool,
            strict: bool,
            ops in proptest::collection::vec(op(), 0..200)
        ) {
            let mut p = if from_power_on { PicPair::new() } else { pc_pic() };
            p.set_strict_edge(strict);
            for o in ops {
                match o {
                    Op::Write(port, v) => p.write(port, v),
                    Op::Read(port) => {
                        let before = p.isr();
                        let irr = p.irr();
                        p.read(port);
                        // A read (poll) can only move a requested IR into service.
                        prop_assert_eq!(p.isr() & !before & !irr, 0);
                    }
                    Op::SetIrq(i, l) => {
                        let isr = p.isr();
                        p.set_irq(i, l);
                        prop_assert_eq!(p.isr(), isr, "set_irq never touches ISR");
                    }
                    Op::Inta => {
                        let before = p.isr();
                        let irr = p.irr();
                        let pending = p.interrupt_pending();
                        let (mbase, _) = p.priority_base();
                        let smm = p.special_mask_mode().0;
                        let r = p.inta_detailed();
                        let new = p.isr() & !before;
                        // ISR bits only come from requests.
                        prop_assert_eq!(new & !irr, 0);
                        if !pending {
                            prop_assert!(r.irq.is_none());
                        }
                        if let Some(irq) = r.irq {
                            prop_assert!(irq < 16);
                            // Fully nested: the master IR that went in service outranks every
                            // master IR already in service (SFNM allows equal for IR2).
                            let mir = if irq >= 8 { 2 } else { irq };
                            let prio = |ir: u8| ir.wrapping_sub(mbase) & 7;
                            if !smm {
                                for ir in 0..8u8 {
                                    if before & (1 << ir) != 0 {
                                        let ok = prio(mir) < prio(ir)
                                            || (mir == ir && ir == 2 && p.master_sfnm());
                                        prop_assert!(ok, "IR{} nested into IR{}", mir, ir);
                                    }
                                }
                            }
                        }
                    }
                    Op::TakeEoi => {
                        let bits = p.take_eoi_irqs();
                        if p.cascaded() {
                            prop_assert_eq!(bits & (1 << 2), 0);
                        }
                    }
                }
                check_invariants(&p)?;
            }
        }
    }
}
