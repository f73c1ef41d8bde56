//! Two cascaded 8259A PICs (8259A datasheet: ICW1-4 p. 10-12, OCW1-3 p. 13-15) and the ELCR
//! (edge/level control, ports 0x4d0/0x4d1, PIIX/ICH datasheets).

use crate::arch::{inb, outb};

pub const M_CMD: u16 = 0x20;
pub const M_DATA: u16 = 0x21;
pub const S_CMD: u16 = 0xa0;
pub const S_DATA: u16 = 0xa1;
pub const ELCR: u16 = 0x4d0;

/// Initialise both PICs: ICW1 (edge, cascade, ICW4 needed), ICW2 vector bases, ICW3 cascade
/// on IR2, ICW4 8086 mode (+ AEOI if asked). All inputs masked afterwards.
pub fn init(master_base: u8, slave_base: u8, aeoi: bool) {
    let icw4 = 0x01 | if aeoi { 0x02 } else { 0 };
    outb(M_CMD, 0x11);
    outb(M_DATA, master_base);
    outb(M_DATA, 0x04);
    outb(M_DATA, icw4);
    outb(S_CMD, 0x11);
    outb(S_DATA, slave_base);
    outb(S_DATA, 0x02);
    outb(S_DATA, icw4);
    set_mask(0xffff);
}

/// OCW1 for both chips: bit n set masks IRQ n (8..15 on the slave).
pub fn set_mask(mask: u16) {
    outb(M_DATA, mask as u8);
    outb(S_DATA, (mask >> 8) as u8);
}

pub fn mask() -> u16 {
    inb(M_DATA) as u16 | (inb(S_DATA) as u16) << 8
}

/// OCW2 non-specific EOI.
pub fn eoi(irq: u8) {
    if irq >= 8 {
        outb(S_CMD, 0x20);
    }
    outb(M_CMD, 0x20);
}

/// OCW2 specific EOI for IR `level` of the chip at `cmd`.
pub fn specific_eoi(cmd: u16, level: u8) {
    outb(cmd, 0x60 | (level & 7));
}

/// OCW3: read IRR (0x0a) or ISR (0x0b) on the next read of the command port.
pub fn read_irr(cmd: u16) -> u8 {
    outb(cmd, 0x0a);
    inb(cmd)
}

pub fn read_isr(cmd: u16) -> u8 {
    outb(cmd, 0x0b);
    inb(cmd)
}

/// OCW3 poll command (P bit): the next read returns bit 7 = interrupt pending, bits 2:0 = the
/// highest-priority request, and acknowledges it as an INTA would.
pub fn poll(cmd: u16) -> u8 {
    outb(cmd, 0x0c);
    inb(cmd)
}

pub fn elcr() -> u16 {
    inb(ELCR) as u16 | (inb(ELCR + 1) as u16) << 8
}

pub fn set_elcr(v: u16) {
    outb(ELCR, v as u8);
    outb(ELCR + 1, (v >> 8) as u8);
}

/// Is a PIC present? The mask register reads back what was written on a real 8259A.
pub fn present() -> bool {
    let old = inb(M_DATA);
    outb(M_DATA, 0xa5);
    let ok = inb(M_DATA) == 0xa5;
    outb(M_DATA, old);
    ok
}
