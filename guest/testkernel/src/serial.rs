//! Polled 16550 UART at COM1 (0x3f8). Interrupts stay off (IER = 0) except in the THRE
//! interrupt test/benchmark, which owns the UART while it runs.

use crate::arch::{inb, outb};
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

pub const COM1: u16 = 0x3f8;
pub const THR: u16 = 0;
pub const IER: u16 = 1;
pub const IIR: u16 = 2;
pub const MCR: u16 = 4;
pub const LSR: u16 = 5;

pub fn init() {
    outb(COM1 + IER, 0x00);
    outb(COM1 + 3, 0x80); // LCR: DLAB
    outb(COM1, 0x01); // divisor 1: 115200 baud
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); // 8N1
    outb(COM1 + 2, 0xc7); // FIFO on, cleared
    outb(COM1 + 4, 0x0b); // DTR, RTS, OUT2 (OUT2 gates the IRQ on PC hardware)
}

static LOCK: AtomicBool = AtomicBool::new(false);

pub fn putb(b: u8) {
    // LSR bit 5: THR empty. Bounded wait so a missing UART cannot hang the kernel.
    for _ in 0..100_000 {
        if inb(COM1 + LSR) & 0x20 != 0 {
            break;
        }
    }
    outb(COM1 + THR, b);
}

pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                putb(b'\r');
            }
            putb(b);
        }
        Ok(())
    }
}

/// Serialise output between the two vCPUs (spin lock; interrupts may be on or off).
pub fn with_lock<R>(f: impl FnOnce() -> R) -> R {
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    let r = f();
    LOCK.store(false, Ordering::Release);
    r
}

#[macro_export]
macro_rules! println {
    ($($t:tt)*) => {{
        use core::fmt::Write as _;
        $crate::serial::with_lock(|| {
            let _ = writeln!($crate::serial::Serial, $($t)*);
        });
    }};
}
