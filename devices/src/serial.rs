//! The 16550A UART at COM1 (0x3f8, IRQ 4), emulated by vm-superio, with its interrupt output
//! wired to an [`irqchip::InterruptLine`] (an irqfd in `--irqchip kernel` mode).

use std::io::Write;
use std::sync::Arc;

use irqchip::InterruptLine;
use vm_superio::{Serial as Uart, Trigger};

use crate::BusDevice;

/// The UART's interrupt output: each vm-superio trigger is one edge on the line (the 16550
/// raises INTR when an enabled condition appears; ISA wiring is edge-triggered).
pub struct LineTrigger(pub Arc<dyn InterruptLine>);

impl Trigger for LineTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.pulse();
        Ok(())
    }
}

/// COM1 as a bus device.
pub struct Serial {
    uart: Uart<LineTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl Serial {
    pub fn new(line: Arc<dyn InterruptLine>, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Uart::new(LineTrigger(line), out),
        }
    }

    /// Queue console input for the guest; returns how many bytes fit in the receive FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.uart.fifo_capacity());
        if n == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&bytes[..n]) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial: dropping console input: {e:?}");
                0
            }
        }
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // 8-bit registers; a wider access reads the register at `offset` in byte 0.
        data.fill(0);
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.uart.write(off, b) {
                log::warn!("serial: write to register {off} failed: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    #[derive(Default)]
    struct CountingLine(AtomicU32);
    impl InterruptLine for CountingLine {
        fn set_level(&self, level: bool) {
            if level {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn thr_write_reaches_the_output() {
        let sink = Sink::default();
        let mut s = Serial::new(Arc::new(CountingLine::default()), Box::new(sink.clone()));
        s.write(0, b"A");
        assert_eq!(&*sink.0.lock().unwrap(), b"A");
    }

    #[test]
    fn received_byte_raises_the_line_when_rx_interrupt_enabled() {
        let line = Arc::new(CountingLine::default());
        let mut s = Serial::new(line.clone(), Box::new(Sink::default()));
        s.write(1, &[0x01]); // IER: received-data-available
        assert_eq!(s.enqueue_input(b"x"), 1);
        assert!(line.0.load(Ordering::SeqCst) >= 1);
        let mut b = [0u8];
        s.read(0, &mut b);
        assert_eq!(b[0], b'x');
    }

    #[test]
    fn out_of_range_offset_is_harmless() {
        let mut s = Serial::new(Arc::new(CountingLine::default()), Box::new(Sink::default()));
        let mut b = [0u8; 4];
        s.read(0x1234, &mut b);
        s.write(0x1234, &[1, 2, 3, 4]);
        s.write(0, &[]);
    }
}
