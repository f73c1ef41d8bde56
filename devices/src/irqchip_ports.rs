//! Bus adapters for the userspace interrupt controllers of `--irqchip split`: the 8259A pair
//! and its ELCR in port I/O, the IOAPIC's 4 KiB MMIO window. The controllers themselves are
//! in the `irqchip` crate; these only translate bus accesses.

use irqchip::split::SplitIrqchip;

use crate::BusDevice;

/// PIC command/data ports or ELCR ports: two consecutive ports starting at `base`.
pub struct PicPorts {
    chip: SplitIrqchip,
    base: u16,
}

impl PicPorts {
    pub fn new(chip: SplitIrqchip, base: u16) -> Self {
        Self { chip, base }
    }
}

impl BusDevice for PicPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // 8-bit registers: a wider read returns the register in byte 0 and the next port's
        // value is not implied (reads of the other bytes are 0xff, like an open bus).
        data.fill(0xff);
        if let (Some(b), Ok(off)) = (data.first_mut(), u16::try_from(offset)) {
            *b = self.chip.pic_read(self.base.wrapping_add(off));
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&b), Ok(off)) = (data.first(), u16::try_from(offset)) {
            self.chip.pic_write(self.base.wrapping_add(off), b);
        }
    }
}

/// The IOAPIC's MMIO window (IOREGSEL at 0x00, IOWIN at 0x10, EOI at 0x40).
pub struct IoapicMmio {
    chip: SplitIrqchip,
}

impl IoapicMmio {
    pub fn new(chip: SplitIrqchip) -> Self {
        Self { chip }
    }
}

impl BusDevice for IoapicMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.chip.ioapic_read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.chip.ioapic_write(offset, data);
    }
}
