//! Guest side of the irqvm test device (docs/testdev.md) and of the QEMU-compatible line
//! ports: pc-testdev (0x2000 + n) and isa-debug-exit (0xf4).

use crate::arch::{inb, inl, outb, outl};
use core::sync::atomic::{AtomicBool, Ordering};

pub const PORT: u16 = 0x2100;
pub const ID: u32 = 0x5451_4952;
pub const ERROR: u32 = 0xffff_ffff;
const ARG0: u16 = 0x04;
const RESULT: u16 = 0x14;
pub const DOORBELL: u16 = PORT + 0x18;
const EXIT: u16 = 0x1c;
const REPORT: u16 = 0x20;
const MODE: u16 = 0x24;
const HOST: u16 = 0x28;
const NCPUS: u16 = 0x2c;

pub const LINE_SET: u32 = 1;
pub const LINE_PULSE: u32 = 2;
pub const BURST: u32 = 3;
pub const MSI_SIGNAL: u32 = 5;
pub const LINE_STATS: u32 = 6;
pub const STATS_RESET: u32 = 7;
pub const BURST_STATUS: u32 = 8;
pub const LINE_COALESCED: u32 = 9;
pub const MSIX_RAISE: u32 = 4;
pub const MSIX_BURST: u32 = 10;
pub const MSIX_STATS: u32 = 11;
pub const INTX_SET: u32 = 12;
pub const MSIX_BURST_STATUS: u32 = 13;

/// MSIX_RAISE results.
pub const MSIX_FIRED: u32 = 0;
pub const MSIX_PENDED: u32 = 1;
pub const MSIX_DROPPED: u32 = 2;
/// MSIX_STATS counters (ARG1).
pub const STAT_RAISED: u32 = 0;
pub const STAT_FIRED: u32 = 1;
pub const STAT_PENDED: u32 = 2;
pub const STAT_MERGED: u32 = 3;
pub const STAT_DROPPED: u32 = 4;
pub const STAT_REFUSED: u32 = 5;

/// The test device's PCI function (docs/testdev.md).
pub const PCI_VENDOR: u16 = 0x1234;
pub const PCI_DEVICE: u16 = 0x7464;

/// HOST bit 0: the host KVM is PVM.
pub const HOST_PVM: u32 = 1;

static PRESENT: AtomicBool = AtomicBool::new(false);
static PC_TESTDEV: AtomicBool = AtomicBool::new(false);

pub fn detect() {
    PRESENT.store(inl(PORT) == ID, Ordering::SeqCst);
    // QEMU's pc-testdev echoes port 0xe0 ("testdev-ioport"); irqvm's pc-testdev lines exist
    // whenever its test device does.
    outl(0xe0, 0x1234_5678);
    let echo = inl(0xe0) == 0x1234_5678;
    PC_TESTDEV.store(echo || present(), Ordering::SeqCst);
}

pub fn present() -> bool {
    PRESENT.load(Ordering::Relaxed)
}

/// Can the guest drive interrupt lines (irqvm testdev or QEMU pc-testdev)?
pub fn lines_available() -> bool {
    PC_TESTDEV.load(Ordering::Relaxed)
}

pub fn command(cmd: u32, args: [u32; 4]) -> u32 {
    for (i, a) in args.iter().enumerate() {
        outl(PORT + ARG0 + 4 * i as u16, *a);
    }
    outl(PORT, cmd);
    inl(PORT + RESULT)
}

pub fn mode() -> u32 {
    if present() { inl(PORT + MODE) } else { u32::MAX }
}
pub fn host() -> u32 {
    if present() { inl(PORT + HOST) } else { 0 }
}
pub fn ncpus() -> u32 {
    if present() { inl(PORT + NCPUS) } else { 1 }
}

/// Drive source `src` of `gsi`. Without the irqvm device, pc-testdev's line port (which has
/// a single source per line) is used.
pub fn line_set(gsi: u32, src: u32, level: bool) {
    if present() {
        command(LINE_SET, [gsi, src, level as u32, 0]);
    } else {
        outb(0x2000 + gsi as u16, level as u8);
    }
}

pub fn line_pulse(gsi: u32, src: u32) {
    if present() {
        command(LINE_PULSE, [gsi, src, 0, 0]);
    } else {
        outb(0x2000 + gsi as u16, 1);
        outb(0x2000 + gsi as u16, 0);
    }
}

pub fn report_byte(b: u8) {
    if present() {
        outb(PORT + REPORT, b);
    }
}

pub fn doorbell() {
    outl(DOORBELL, 0);
}

/// End the VM: the test device's EXIT if present (status as is), and isa-debug-exit
/// (status (v << 1) | 1) otherwise or as a fallback.
pub fn exit(status: u32) -> ! {
    if present() {
        outl(PORT + EXIT, status);
    }
    outl(0xf4, status);
    // QEMU's isa-debug-exit defaults to iobase 0x501, iosize 2 when not told 0xf4.
    unsafe { core::arch::asm!("out dx, ax", in("dx") 0x501u16, in("ax") status as u16, options(nostack)) };
    let _ = inb(0x80);
    crate::arch::halt_forever()
}
