//! ACPI fixed-hardware PM1a event and control blocks (ACPI 6.5 §4.8.3.1, §4.8.3.2).
//!
//! Register the device **once**, at `layout::ACPI_PM1A_EVT_PORT` with length [`AcpiPm::PORT_LEN`]:
//!
//! | offset | register | width | behaviour |
//! |--------|----------|-------|-----------|
//! | 0 | PM1a_STS | 16 | write-1-to-clear; no fixed event ever sets a bit here |
//! | 2 | PM1a_EN  | 16 | read/write |
//! | 4 | PM1a_CNT | 16 | SCI_EN reads 1 (no SMI handoff: SMI_CMD is 0 in the FADT); SLP_TYP read/write; SLP_EN and GBL_RLS write-only (read 0) |
//!
//! (`ACPI_PM1A_CNT_PORT` = `ACPI_PM1A_EVT_PORT` + 4, matching the FADT `boot::acpi` writes.)
//!
//! Writing SLP_EN with SLP_TYP = [`SLP_TYP_S5`] (the value of the DSDT's `\_S5_` package) asks
//! the VMM to power off through [`ExitSink`]. Other sleep states are not offered by the DSDT; a
//! guest that requests one anyway is logged and keeps running (ACPI leaves the behaviour of an
//! undeclared SLP_TYP to the platform).
//!
//! Accesses of any width at any offset are split into bytes, so a 32-bit access to
//! PM1a_STS+PM1a_EN or a byte access to the high half of PM1a_CNT behaves as the two 16-bit
//! registers would on hardware.

use std::sync::Arc;

use crate::{BusDevice, ExitSink, GuestExit};

/// SLP_TYP value meaning S5 (soft off); must match `\_S5_` in the DSDT.
pub const SLP_TYP_S5: u16 = 5;

const PM1_CNT_SCI_EN: u16 = 1 << 0;
const PM1_CNT_SLP_TYP_SHIFT: u16 = 10;
const PM1_CNT_SLP_TYP_MASK: u16 = 0b111 << PM1_CNT_SLP_TYP_SHIFT;
const PM1_CNT_SLP_EN: u16 = 1 << 13;
/// PM1 control bits that keep a written value (BM_RLD and SLP_TYP); the rest are fixed,
/// reserved or write-only.
const PM1_CNT_RW: u16 = (1 << 1) | PM1_CNT_SLP_TYP_MASK;

/// PM1 status/enable bits defined by ACPI 6.5 Tables 4.16/4.17 (TMR, BM, GBL, PWRBTN, SLPBTN,
/// RTC, PCIEXP_WAKE (enable is inverted "DIS"), WAK).
const PM1_STS_DEFINED: u16 = 0b1100_0111_0011_0001;
const PM1_EN_DEFINED: u16 = 0b0100_0111_0010_0001;

/// The PM1a event + control register blocks.
pub struct AcpiPm {
    sts: u16,
    en: u16,
    cnt: u16,
    exit: Arc<dyn ExitSink>,
}

impl AcpiPm {
    /// Bytes of port space: PM1a_EVT (4) + PM1a_CNT (2).
    pub const PORT_LEN: u64 = 6;
    /// Offset of PM1a_CNT within the device.
    pub const PM1_CNT_OFFSET: u64 = 4;

    pub fn new(exit: Arc<dyn ExitSink>) -> Self {
        Self {
            sts: 0,
            en: 0,
            cnt: 0,
            exit,
        }
    }

    fn read_byte(&self, off: u64) -> u8 {
        let (reg, hi) = match off {
            0 | 1 => (self.sts, off == 1),
            2 | 3 => (self.en, off == 3),
            4 | 5 => ((self.cnt & PM1_CNT_RW) | PM1_CNT_SCI_EN, off == 5),
            _ => return 0xff,
        };
        if hi {
            (reg >> 8) as u8
        } else {
            reg as u8
        }
    }

    fn write_pm1_cnt(&mut self, value: u16, mask: u16) {
        self.cnt = (self.cnt & !(mask & PM1_CNT_RW)) | (value & mask & PM1_CNT_RW);
        // GBL_RLS (write-only) would raise an SMI to firmware waiting for the global lock;
        // no firmware runs beside the guest, so it is dropped.
        if mask & value & PM1_CNT_SLP_EN != 0 {
            let slp_typ = (self.cnt & PM1_CNT_SLP_TYP_MASK) >> PM1_CNT_SLP_TYP_SHIFT;
            if slp_typ == SLP_TYP_S5 {
                log::info!("guest entered ACPI S5 (PM1a_CNT SLP_EN, SLP_TYP {slp_typ}): power off");
                self.exit.request_exit(GuestExit::PowerOff);
            } else {
                irqchip::guest_warn!(
                    "acpi_pm: guest requested sleep type {slp_typ}, which the DSDT \
                     does not offer; ignored"
                );
            }
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .map_or(0xff, |off| self.read_byte(off));
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Gather the written bytes per 16-bit register, then apply each register once so a
        // 16-bit write of SLP_TYP|SLP_EN is seen as one write.
        let mut vals = [0u16; 3];
        let mut masks = [0u16; 3];
        for (i, &b) in data.iter().enumerate() {
            let Some(off) = offset.checked_add(i as u64) else {
                break;
            };
            if off >= Self::PORT_LEN {
                continue;
            }
            let reg = (off / 2) as usize;
            let shift = (off % 2) * 8;
            if let (Some(v), Some(m)) = (vals.get_mut(reg), masks.get_mut(reg)) {
                *v |= u16::from(b) << shift;
                *m |= 0xff << shift;
            }
        }
        // PM1_STS: write 1 to clear (§4.8.3.1.1).
        self.sts &= !(vals[0] & masks[0] & PM1_STS_DEFINED);
        // PM1_EN: plain read/write of the defined bits (§4.8.3.1.2).
        self.en = (self.en & !(masks[1] & PM1_EN_DEFINED)) | (vals[1] & masks[1] & PM1_EN_DEFINED);
        if masks[2] != 0 {
            self.write_pm1_cnt(vals[2], masks[2]);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records every exit request.
    #[derive(Default)]
    pub(crate) struct FakeExit(pub Mutex<Vec<GuestExit>>);

    impl ExitSink for FakeExit {
        fn request_exit(&self, why: GuestExit) {
            self.0.lock().unwrap().push(why);
        }
    }

    impl FakeExit {
        pub(crate) fn exits(&self) -> Vec<GuestExit> {
            self.0.lock().unwrap().clone()
        }
    }

    fn pm() -> (AcpiPm, Arc<FakeExit>) {
        let sink = Arc::new(FakeExit::default());
        (AcpiPm::new(sink.clone()), sink)
    }

    fn read16(pm: &mut AcpiPm, off: u64) -> u16 {
        let mut b = [0u8; 2];
        pm.read(off, &mut b);
        u16::from_le_bytes(b)
    }

    fn write16(pm: &mut AcpiPm, off: u64, v: u16) {
        pm.write(off, &v.to_le_bytes());
    }

    const S5_SLEEP: u16 = (SLP_TYP_S5 << 10) | PM1_CNT_SLP_EN;

    #[test]
    fn slp_en_with_slp_typ_5_powers_off() {
        let (mut pm, sink) = pm();
        write16(&mut pm, AcpiPm::PM1_CNT_OFFSET, S5_SLEEP);
        assert_eq!(sink.exits(), vec![GuestExit::PowerOff]);
    }

    #[test]
    fn slp_typ_written_first_then_slp_en_byte_powers_off() {
        // ACPICA writes SLP_TYP, then SLP_TYP|SLP_EN; a byte write of the high half works too.
        let (mut pm, sink) = pm();
        write16(&mut pm, AcpiPm::PM1_CNT_OFFSET, SLP_TYP_S5 << 10);
        assert!(sink.exits().is_empty());
        pm.write(AcpiPm::PM1_CNT_OFFSET + 1, &[((S5_SLEEP) >> 8) as u8]);
        assert_eq!(sink.exits(), vec![GuestExit::PowerOff]);
    }

    #[test]
    fn slp_en_with_other_sleep_type_does_not_power_off() {
        let (mut pm, sink) = pm();
        for typ in [0u16, 1, 3, 4, 7] {
            write16(
                &mut pm,
                AcpiPm::PM1_CNT_OFFSET,
                (typ << 10) | PM1_CNT_SLP_EN,
            );
        }
        assert!(sink.exits().is_empty());
    }

    #[test]
    fn slp_typ_without_slp_en_does_not_power_off() {
        let (mut pm, sink) = pm();
        write16(&mut pm, AcpiPm::PM1_CNT_OFFSET, SLP_TYP_S5 << 10);
        assert!(sink.exits().is_empty());
    }

    #[test]
    fn sci_en_reads_set_and_slp_en_reads_zero() {
        let (mut pm, _) = pm();
        assert_eq!(read16(&mut pm, AcpiPm::PM1_CNT_OFFSET), PM1_CNT_SCI_EN);
        write16(&mut pm, AcpiPm::PM1_CNT_OFFSET, 0);
        assert_eq!(read16(&mut pm, AcpiPm::PM1_CNT_OFFSET) & PM1_CNT_SCI_EN, 1);
        write16(&mut pm, AcpiPm::PM1_CNT_OFFSET, 3 << 10 | PM1_CNT_SLP_EN);
        assert_eq!(
            read16(&mut pm, AcpiPm::PM1_CNT_OFFSET),
            PM1_CNT_SCI_EN | 3 << 10
        );
    }

    #[test]
    fn pm1_enable_is_read_write_for_defined_bits_only() {
        let (mut pm, _) = pm();
        write16(&mut pm, 2, 0xffff);
        assert_eq!(read16(&mut pm, 2), PM1_EN_DEFINED);
        write16(&mut pm, 2, 0x0100);
        assert_eq!(read16(&mut pm, 2), 0x0100);
    }

    #[test]
    fn pm1_status_is_write_one_to_clear() {
        let (mut pm, _) = pm();
        pm.sts = 0x8100;
        write16(&mut pm, 0, 0x0100);
        assert_eq!(read16(&mut pm, 0), 0x8000);
        write16(&mut pm, 0, 0x0000);
        assert_eq!(read16(&mut pm, 0), 0x8000, "writing 0 leaves status alone");
    }

    #[test]
    fn dword_write_to_event_block_sets_enable_without_touching_status() {
        let (mut pm, _) = pm();
        pm.sts = 0x0100;
        pm.write(0, &0x0100_0000u32.to_le_bytes());
        assert_eq!(read16(&mut pm, 0), 0x0100);
        assert_eq!(read16(&mut pm, 2), 0x0100);
    }

    #[test]
    fn reads_past_the_block_return_all_ones() {
        let (mut pm, _) = pm();
        let mut b = [0u8; 4];
        pm.read(5, &mut b);
        assert_eq!(b, [0, 0xff, 0xff, 0xff]);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_accesses_never_panic(
            ops in proptest::collection::vec(
                (proptest::bool::ANY, proptest::num::u64::ANY, proptest::collection::vec(proptest::num::u8::ANY, 0..9)),
                0..64,
            )
        ) {
            let (mut pm, _) = pm();
            for (is_write, offset, mut data) in ops {
                let offset = if offset % 2 == 0 { offset % 8 } else { offset };
                if is_write {
                    pm.write(offset, &data);
                } else {
                    pm.read(offset, &mut data);
                }
            }
        }
    }
}
