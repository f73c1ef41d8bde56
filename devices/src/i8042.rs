//! A minimal Intel 8042 keyboard controller with a keyboard that answers but never types
//! and no mouse.
//!
//! Register at port `0x60` with length [`I8042::PORT_LEN`] (5): offset 0 is the data port
//! (0x60), offset 4 the status/command port (0x64). Offsets 1-3 (ports 0x61-0x63: system
//! control port B etc.) are not the 8042's and behave like unclaimed ports (reads all-ones,
//! writes dropped), so registering this range changes nothing there; a PIT/speaker model that
//! wants 0x61 needs this device split into two ranges instead.
//!
//! What the guest sees (8042 controller commands as in the IBM PC/AT Technical Reference and
//! Linux `drivers/input/serio/i8042.h`):
//!
//! * status: OBF when a byte is waiting, SYS (self-test passed), CMD/DATA = which port was
//!   written last, keyboard not inhibited, AUXDATA when the waiting byte comes from the mouse
//!   port, TIMEOUT with a byte from a missing mouse; IBF is always 0 (commands complete at once);
//! * controller commands: 0x20 read / 0x60 write command byte, 0xA7/0xA8 disable/enable mouse
//!   port, 0xA9 mouse port test (0x00), 0xAA self test (0x55), 0xAB keyboard port test (0x00),
//!   0xAD/0xAE disable/enable keyboard, 0xD0/0xD1 read/write output port (bit 0 clear = reset),
//!   0xD2/0xD3 write keyboard/mouse output buffer (loopback), 0xD4 write to mouse (answered
//!   0xFE + TIMEOUT: no mouse), 0xF0-0xFF pulse output lines: bit 0 clear pulses CPU reset
//!   (0xFE, Linux's `reboot=k`) -> [`GuestExit::Reset`];
//! * keyboard commands (written to port 0x60): ACK (0xFA) to everything, 0xFF reset ->
//!   FA AA, 0xF2 identify -> FA AB 83, 0xEE echo -> EE, commands with a parameter
//!   (0xED, 0xF0, 0xF3) take it and ACK it (0xF0 0x00 answers the current set, 2);
//! * IRQ 1 / IRQ 12: pulsed when a byte reaches the output buffer and the command byte enables
//!   that interrupt (bits 0/1), if lines were given with [`I8042::with_irqs`].
//!
//! The output FIFO is bounded ([`OUTPUT_QUEUE_LEN`]); bytes beyond it are dropped as a real
//! keyboard drops them when the host does not read.

use std::collections::VecDeque;
use std::sync::Arc;

use irqchip::InterruptLine;

use crate::{BusDevice, ExitSink, GuestExit};

/// Most bytes waiting for the guest to read at once.
pub const OUTPUT_QUEUE_LEN: usize = 16;

const DATA_OFFSET: u64 = 0;
const STATUS_OFFSET: u64 = 4;

// Status register bits.
const STS_OBF: u8 = 1 << 0;
const STS_SYS: u8 = 1 << 2;
const STS_CMD: u8 = 1 << 3;
const STS_UNLOCKED: u8 = 1 << 4;
const STS_AUXDATA: u8 = 1 << 5;
const STS_TIMEOUT: u8 = 1 << 6;

// Command byte ("CTR") bits.
const CTR_KBD_INT: u8 = 1 << 0;
const CTR_AUX_INT: u8 = 1 << 1;
const CTR_SYS: u8 = 1 << 2;
const CTR_KBD_DISABLE: u8 = 1 << 4;
const CTR_AUX_DISABLE: u8 = 1 << 5;
const CTR_XLATE: u8 = 1 << 6;

// Output port bits.
const OUTPORT_RESET_N: u8 = 1 << 0;
const OUTPORT_A20: u8 = 1 << 1;

const KBD_ACK: u8 = 0xfa;
const KBD_RESEND: u8 = 0xfe;
const KBD_BAT_OK: u8 = 0xaa;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OutByte {
    value: u8,
    aux: bool,
    timeout: bool,
}

/// The controller plus its (silent) keyboard.
pub struct I8042 {
    exit: Arc<dyn ExitSink>,
    kbd_irq: Option<Arc<dyn InterruptLine>>,
    aux_irq: Option<Arc<dyn InterruptLine>>,
    ctr: u8,
    outport: u8,
    /// Last port written was the command port (status bit 3).
    last_was_cmd: bool,
    /// A controller command waiting for its data byte.
    pending_cmd: Option<u8>,
    /// A keyboard command waiting for its parameter byte.
    kbd_pending: Option<u8>,
    out: VecDeque<OutByte>,
    last_read: u8,
}

impl I8042 {
    /// Ports 0x60..=0x64.
    pub const PORT_LEN: u64 = 5;

    /// A controller as firmware leaves it: self-test passed, keyboard interrupt and scancode
    /// translation enabled, mouse port disabled.
    pub fn new(exit: Arc<dyn ExitSink>) -> Self {
        Self {
            exit,
            kbd_irq: None,
            aux_irq: None,
            ctr: CTR_KBD_INT | CTR_SYS | CTR_AUX_DISABLE | CTR_XLATE,
            outport: OUTPORT_RESET_N | OUTPORT_A20,
            last_was_cmd: false,
            pending_cmd: None,
            kbd_pending: None,
            out: VecDeque::with_capacity(OUTPUT_QUEUE_LEN),
            last_read: 0,
        }
    }

    /// Edge lines for keyboard (ISA IRQ 1) and mouse (ISA IRQ 12) output.
    pub fn with_irqs(mut self, kbd: Arc<dyn InterruptLine>, aux: Arc<dyn InterruptLine>) -> Self {
        self.kbd_irq = Some(kbd);
        self.aux_irq = Some(aux);
        self
    }

    fn status(&self) -> u8 {
        let mut s = STS_UNLOCKED;
        if self.ctr & CTR_SYS != 0 {
            s |= STS_SYS;
        }
        if self.last_was_cmd {
            s |= STS_CMD;
        }
        if let Some(b) = self.out.front() {
            s |= STS_OBF;
            if b.aux {
                s |= STS_AUXDATA;
            }
            if b.timeout {
                s |= STS_TIMEOUT;
            }
        }
        s
    }

    /// Interrupt for the byte now at the head of the output buffer, if its source is enabled.
    fn raise_for_head(&self) {
        let Some(b) = self.out.front() else { return };
        let (enabled, line) = if b.aux {
            (self.ctr & CTR_AUX_INT != 0, &self.aux_irq)
        } else {
            (self.ctr & CTR_KBD_INT != 0, &self.kbd_irq)
        };
        if enabled {
            if let Some(l) = line {
                l.pulse();
            }
        }
    }

    fn push(&mut self, b: OutByte) {
        if self.out.len() >= OUTPUT_QUEUE_LEN {
            irqchip::guest_warn!("i8042: output buffer full, dropping {:#x}", b.value);
            return;
        }
        self.out.push_back(b);
        if self.out.len() == 1 {
            self.raise_for_head();
        }
    }

    fn push_kbd(&mut self, value: u8) {
        self.push(OutByte {
            value,
            aux: false,
            timeout: false,
        });
    }

    fn read_data(&mut self) -> u8 {
        if let Some(b) = self.out.pop_front() {
            self.last_read = b.value;
            self.raise_for_head();
        }
        // With nothing waiting, the output register still holds the last byte.
        self.last_read
    }

    fn write_command(&mut self, cmd: u8) {
        self.last_was_cmd = true;
        self.pending_cmd = None;
        match cmd {
            0x20 => self.push_kbd(self.ctr),
            0x60 | 0xd1..=0xd4 => self.pending_cmd = Some(cmd),
            0xa7 => self.ctr |= CTR_AUX_DISABLE,
            0xa8 => self.ctr &= !CTR_AUX_DISABLE,
            0xa9 | 0xab => self.push_kbd(0x00), // interface test: no error
            0xaa => {
                self.ctr |= CTR_SYS;
                self.push_kbd(0x55);
            }
            0xad => self.ctr |= CTR_KBD_DISABLE,
            0xae => self.ctr &= !CTR_KBD_DISABLE,
            0xd0 => self.push_kbd(self.outport),
            0xf0..=0xff => {
                // Pulse output port bits 0-3 low for those command bits that are 0; bit 0 is
                // the CPU reset line.
                if cmd & 1 == 0 {
                    log::info!("i8042: pulse reset command {cmd:#x}: guest reset");
                    self.exit.request_exit(GuestExit::Reset);
                }
            }
            _ => irqchip::guest_warn!("i8042: unsupported command {cmd:#x} ignored"),
        }
    }

    fn write_data(&mut self, value: u8) {
        self.last_was_cmd = false;
        match self.pending_cmd.take() {
            Some(0x60) => self.ctr = value,
            Some(0xd1) => {
                self.outport = value;
                if value & OUTPORT_RESET_N == 0 {
                    log::info!("i8042: output port reset line driven low: guest reset");
                    self.exit.request_exit(GuestExit::Reset);
                }
            }
            Some(0xd2) => self.push_kbd(value),
            Some(0xd3) => self.push(OutByte {
                value,
                aux: true,
                timeout: false,
            }),
            Some(0xd4) => {
                // No mouse: the controller reports a transmit timeout.
                self.push(OutByte {
                    value: KBD_RESEND,
                    aux: true,
                    timeout: true,
                })
            }
            _ => self.keyboard_byte(value),
        }
    }

    /// A byte sent to the keyboard (PS/2 keyboard command set 2 protocol).
    fn keyboard_byte(&mut self, b: u8) {
        // Sending to the keyboard clears the "keyboard disabled" command byte bit.
        self.ctr &= !CTR_KBD_DISABLE;
        if let Some(cmd) = self.kbd_pending.take() {
            self.push_kbd(KBD_ACK);
            if cmd == 0xf0 && b == 0 {
                self.push_kbd(2); // current scancode set
            }
            return;
        }
        match b {
            0xed | 0xf0 | 0xf3 => {
                self.kbd_pending = Some(b);
                self.push_kbd(KBD_ACK);
            }
            0xee => self.push_kbd(0xee),
            0xf2 => {
                self.push_kbd(KBD_ACK);
                self.push_kbd(0xab);
                self.push_kbd(0x83);
            }
            0xff => {
                self.push_kbd(KBD_ACK);
                self.push_kbd(KBD_BAT_OK);
            }
            _ => self.push_kbd(KBD_ACK),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset.checked_add(i as u64) {
                Some(DATA_OFFSET) => self.read_data(),
                Some(STATUS_OFFSET) => self.status(),
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(DATA_OFFSET) => self.write_data(b),
                Some(STATUS_OFFSET) => self.write_command(b),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi_pm::tests::FakeExit;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Default)]
    struct CountingLine(AtomicU32);
    impl InterruptLine for CountingLine {
        fn set_level(&self, level: bool) {
            if level {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn dev() -> (I8042, Arc<FakeExit>) {
        let sink = Arc::new(FakeExit::default());
        (I8042::new(sink.clone()), sink)
    }

    fn status(d: &mut I8042) -> u8 {
        let mut b = [0];
        d.read(STATUS_OFFSET, &mut b);
        b[0]
    }

    fn data(d: &mut I8042) -> u8 {
        let mut b = [0];
        d.read(DATA_OFFSET, &mut b);
        b[0]
    }

    fn cmd(d: &mut I8042, c: u8) {
        d.write(STATUS_OFFSET, &[c]);
    }

    fn put(d: &mut I8042, v: u8) {
        d.write(DATA_OFFSET, &[v]);
    }

    fn drain(d: &mut I8042) -> Vec<u8> {
        let mut v = Vec::new();
        while status(d) & STS_OBF != 0 {
            v.push(data(d));
        }
        v
    }

    #[test]
    fn pulse_reset_command_0xfe_requests_reset() {
        let (mut d, sink) = dev();
        cmd(&mut d, 0xfe);
        assert_eq!(sink.exits(), vec![GuestExit::Reset]);
    }

    #[test]
    fn pulse_command_without_bit0_low_does_not_reset() {
        let (mut d, sink) = dev();
        cmd(&mut d, 0xff);
        cmd(&mut d, 0xfd);
        assert!(sink.exits().is_empty());
    }

    #[test]
    fn writing_output_port_with_reset_low_requests_reset() {
        let (mut d, sink) = dev();
        cmd(&mut d, 0xd1);
        put(&mut d, OUTPORT_A20);
        assert_eq!(sink.exits(), vec![GuestExit::Reset]);
    }

    #[test]
    fn idle_status_has_empty_output_buffer_and_sys_flag() {
        let (mut d, _) = dev();
        let s = status(&mut d);
        assert_eq!(s & (STS_OBF | 0x02), 0, "OBF and IBF clear");
        assert_ne!(s & STS_SYS, 0);
    }

    #[test]
    fn self_test_answers_0x55() {
        let (mut d, _) = dev();
        cmd(&mut d, 0xaa);
        assert_ne!(status(&mut d) & STS_OBF, 0);
        assert_eq!(data(&mut d), 0x55);
        assert_eq!(status(&mut d) & STS_OBF, 0);
    }

    #[test]
    fn command_byte_reads_back_what_was_written() {
        let (mut d, _) = dev();
        cmd(&mut d, 0x60);
        put(&mut d, 0x65);
        cmd(&mut d, 0x20);
        assert_eq!(drain(&mut d), vec![0x65]);
    }

    #[test]
    fn interface_tests_report_no_error() {
        let (mut d, _) = dev();
        cmd(&mut d, 0xab);
        cmd(&mut d, 0xa9);
        assert_eq!(drain(&mut d), vec![0x00, 0x00]);
    }

    #[test]
    fn aux_loopback_sets_auxdata() {
        let (mut d, _) = dev();
        cmd(&mut d, 0xd3);
        put(&mut d, 0x5a);
        assert_ne!(status(&mut d) & STS_AUXDATA, 0);
        assert_eq!(data(&mut d), 0x5a);
    }

    #[test]
    fn writes_to_missing_mouse_time_out() {
        let (mut d, _) = dev();
        cmd(&mut d, 0xd4);
        put(&mut d, 0xf2);
        let s = status(&mut d);
        assert_ne!(s & STS_TIMEOUT, 0);
        assert_ne!(s & STS_AUXDATA, 0);
        assert_eq!(data(&mut d), KBD_RESEND);
    }

    #[test]
    fn keyboard_identify_answers_ack_ab_83() {
        let (mut d, _) = dev();
        put(&mut d, 0xf2);
        assert_eq!(drain(&mut d), vec![0xfa, 0xab, 0x83]);
    }

    #[test]
    fn keyboard_reset_answers_ack_and_bat_ok() {
        let (mut d, _) = dev();
        put(&mut d, 0xff);
        assert_eq!(drain(&mut d), vec![0xfa, 0xaa]);
    }

    #[test]
    fn keyboard_set_leds_takes_a_parameter() {
        let (mut d, _) = dev();
        put(&mut d, 0xed);
        put(&mut d, 0x07);
        assert_eq!(drain(&mut d), vec![0xfa, 0xfa]);
    }

    #[test]
    fn cmd_data_status_bit_tracks_last_port_written() {
        let (mut d, _) = dev();
        cmd(&mut d, 0xae);
        assert_ne!(status(&mut d) & STS_CMD, 0);
        put(&mut d, 0xf4);
        assert_eq!(status(&mut d) & STS_CMD, 0);
    }

    #[test]
    fn keyboard_byte_raises_irq1_when_enabled_in_command_byte() {
        let (d, _) = dev();
        let kbd = Arc::new(CountingLine::default());
        let aux = Arc::new(CountingLine::default());
        let mut d = d.with_irqs(kbd.clone(), aux.clone());
        put(&mut d, 0xf2); // three bytes: one interrupt per byte reaching the buffer head
        drain(&mut d);
        assert_eq!(kbd.0.load(Ordering::SeqCst), 3);
        cmd(&mut d, 0x60);
        put(&mut d, 0); // interrupts off
        put(&mut d, 0xf4);
        assert_eq!(kbd.0.load(Ordering::SeqCst), 3);
        assert_eq!(aux.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn aux_byte_raises_irq12_only_when_aux_interrupt_enabled() {
        let (d, _) = dev();
        let kbd = Arc::new(CountingLine::default());
        let aux = Arc::new(CountingLine::default());
        let mut d = d.with_irqs(kbd.clone(), aux.clone());
        cmd(&mut d, 0xd3);
        put(&mut d, 1);
        drain(&mut d);
        assert_eq!(aux.0.load(Ordering::SeqCst), 0);
        cmd(&mut d, 0x60);
        put(&mut d, CTR_AUX_INT);
        cmd(&mut d, 0xd3);
        put(&mut d, 1);
        assert_eq!(aux.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn output_buffer_is_bounded() {
        let (mut d, _) = dev();
        for _ in 0..100 {
            put(&mut d, 0xf2);
        }
        assert_eq!(drain(&mut d).len(), OUTPUT_QUEUE_LEN);
    }

    #[test]
    fn ports_0x61_to_0x63_read_all_ones() {
        let (mut d, _) = dev();
        let mut b = [0u8; 3];
        d.read(1, &mut b);
        assert_eq!(b, [0xff; 3]);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_accesses_never_panic(
            ops in proptest::collection::vec(
                (proptest::bool::ANY, proptest::num::u64::ANY, proptest::collection::vec(proptest::num::u8::ANY, 0..9)),
                0..128,
            )
        ) {
            let (d, _) = dev();
            let mut d = d.with_irqs(Arc::new(CountingLine::default()), Arc::new(CountingLine::default()));
            for (is_write, offset, mut data) in ops {
                let offset = if offset % 2 == 0 { offset % 6 } else { offset };
                if is_write {
                    d.write(offset, &data);
                } else {
                    d.read(offset, &mut data);
                }
            }
        }
    }
}
