//! CMOS RAM and real-time clock (Motorola MC146818A register model) at ports 0x70/0x71.
//!
//! Register at port `0x70` with length [`Cmos::PORT_LEN`] (2): offset 0 is the index port
//! (write-only; bit 7, the PC's NMI-disable bit, is accepted and ignored; reads return 0xFF),
//! offset 1 the data port for the selected register. Only the standard 128-byte bank exists.
//!
//! Registers (MC146818A datasheet, "Address Map" and "Registers A-D"):
//!
//! | index | contents |
//! |-------|----------|
//! | 0x00, 0x02, 0x04 | seconds, minutes, hours of the guest clock (12-hour mode: bit 7 = PM) |
//! | 0x01, 0x03, 0x05 | alarm seconds/minutes/hours: stored, no alarm interrupt |
//! | 0x06-0x09 | day of week (1 = Sunday), day of month, month, year (00-99) |
//! | 0x0A | register A: UIP always 0 (reads never race an update), divider/rate bits writable, 0x26 at reset |
//! | 0x0B | register B: SET, PIE/AIE/UIE (stored; no IRQ 8 is generated), SQWE, DM (1 = binary), 24/12, DSE; 0x02 at reset (BCD, 24-hour) |
//! | 0x0C | register C: interrupt flags, always 0 |
//! | 0x0D | register D: VRT (valid RAM and time) = 1 |
//! | 0x32 | century (the FADT CENTURY index `boot::acpi` writes) |
//! | other | battery-backed RAM; the PC/AT memory-size bytes are filled by [`Cmos::new`] |
//!
//! The guest clock is the host's UTC clock plus an offset. Writing the time registers changes
//! the offset, as `hwclock --systohc` expects: while SET is 1 the time registers are frozen and
//! written values are staged; clearing SET commits them. A write with SET = 0 commits at once.
//! Values are encoded and decoded in BCD or binary and 12/24-hour per register B at the time of
//! the access. A staged date that is not a valid calendar date is refused (logged) and the clock
//! keeps its previous offset. The day-of-week register is derived from the date, so writes to it
//! are ignored.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::BusDevice;

const INDEX_OFFSET: u64 = 0;
const DATA_OFFSET: u64 = 1;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
/// Century byte (IBM PC convention, also the FADT CENTURY field).
pub const REG_CENTURY: u8 = 0x32;

const REG_A_UIP: u8 = 1 << 7;
/// 32.768 kHz time base, 1.024 kHz periodic rate.
const REG_A_RESET: u8 = 0x26;
const REG_B_SET: u8 = 1 << 7;
const REG_B_UIE: u8 = 1 << 4;
const REG_B_DM_BINARY: u8 = 1 << 2;
const REG_B_24H: u8 = 1 << 1;
const REG_B_RESET: u8 = REG_B_24H;
const REG_D_VRT: u8 = 1 << 7;
const HOUR_PM: u8 = 1 << 7;

/// Host wall-clock source: seconds since the Unix epoch, UTC.
pub type Clock = Box<dyn Fn() -> i64 + Send>;

fn host_clock() -> Clock {
    Box::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    })
}

/// Broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tm {
    year: i64,
    month: i64, // 1-12
    day: i64,   // 1-31
    hour: i64,
    min: i64,
    sec: i64,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl Tm {
    fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        Tm {
            year,
            month,
            day,
            hour: rem / 3600,
            min: rem / 60 % 60,
            sec: rem % 60,
        }
    }

    /// `None` unless this is a real date and time of day.
    fn to_unix(self) -> Option<i64> {
        let leap = (self.year % 4 == 0 && self.year % 100 != 0) || self.year % 400 == 0;
        let mdays = match self.month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => return None,
        };
        let valid = (0..=9999).contains(&self.year)
            && (1..=mdays).contains(&self.day)
            && (0..24).contains(&self.hour)
            && (0..60).contains(&self.min)
            && (0..60).contains(&self.sec);
        valid.then(|| {
            days_from_civil(self.year, self.month, self.day) * 86_400
                + self.hour * 3600
                + self.min * 60
                + self.sec
        })
    }

    /// 1 = Sunday .. 7 = Saturday (1970-01-01 was a Thursday).
    fn weekday(self) -> i64 {
        (days_from_civil(self.year, self.month, self.day) + 4).rem_euclid(7) + 1
    }
}

/// The CMOS RTC and RAM.
pub struct Cmos {
    index: u8,
    ram: [u8; 128],
    /// Guest clock minus host clock, seconds.
    offset: i64,
    /// Time being edited while register B SET = 1.
    staged: Option<Tm>,
    clock: Clock,
}

impl Cmos {
    /// Ports 0x70-0x71.
    pub const PORT_LEN: u64 = 2;

    /// An RTC on the host clock, with the PC/AT memory-size bytes describing
    /// `mem_below_4g` bytes of RAM from 0 and `mem_above_4g` bytes from 4 GiB.
    pub fn new(mem_below_4g: u64, mem_above_4g: u64) -> Self {
        Self::with_clock(mem_below_4g, mem_above_4g, host_clock())
    }

    /// [`Cmos::new`] with an explicit wall-clock source (tests, deterministic runs).
    pub fn with_clock(mem_below_4g: u64, mem_above_4g: u64, clock: Clock) -> Self {
        let mut ram = [0u8; 128];
        ram[REG_A as usize] = REG_A_RESET;
        ram[REG_B as usize] = REG_B_RESET;
        // IBM PC/AT CMOS layout (as SeaBIOS and other firmware read it).
        let put16 = |ram: &mut [u8; 128], at: usize, v: u64| {
            let v = v.min(0xffff) as u16;
            ram[at] = v as u8;
            ram[at + 1] = (v >> 8) as u8;
        };
        const KIB: u64 = 1024;
        const MIB: u64 = 1024 * KIB;
        put16(&mut ram, 0x15, 640); // base memory, KiB
        let ext_kib = mem_below_4g.saturating_sub(MIB) / KIB;
        put16(&mut ram, 0x17, ext_kib); // extended memory 1 MiB-65 MiB, KiB
        put16(&mut ram, 0x30, ext_kib);
        put16(
            &mut ram,
            0x34,
            mem_below_4g.saturating_sub(16 * MIB) / (64 * KIB),
        );
        let high = (mem_above_4g / (64 * KIB)).min(0xff_ffff);
        ram[0x5b] = high as u8;
        ram[0x5c] = (high >> 8) as u8;
        ram[0x5d] = (high >> 16) as u8;
        // Checksum of 0x10-0x2D, big-endian at 0x2E.
        let sum: u16 = ram[0x10..=0x2d].iter().map(|&b| u16::from(b)).sum();
        ram[0x2e] = (sum >> 8) as u8;
        ram[0x2f] = sum as u8;
        Self {
            index: 0,
            ram,
            offset: 0,
            staged: None,
            clock,
        }
    }

    fn reg_b(&self) -> u8 {
        self.ram[REG_B as usize]
    }

    fn now(&self) -> Tm {
        Tm::from_unix((self.clock)().saturating_add(self.offset))
    }

    /// The time the registers show: the staged copy while SET = 1.
    fn shown(&self) -> Tm {
        self.staged.unwrap_or_else(|| self.now())
    }

    fn encode(&self, v: i64) -> u8 {
        let v = v.rem_euclid(100) as u8;
        if self.reg_b() & REG_B_DM_BINARY != 0 {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn decode(&self, v: u8) -> i64 {
        if self.reg_b() & REG_B_DM_BINARY != 0 {
            i64::from(v)
        } else {
            i64::from(v >> 4) * 10 + i64::from(v & 0x0f)
        }
    }

    fn encode_hour(&self, h: i64) -> u8 {
        if self.reg_b() & REG_B_24H != 0 {
            return self.encode(h);
        }
        let pm = if h >= 12 { HOUR_PM } else { 0 };
        let h12 = match h % 12 {
            0 => 12,
            n => n,
        };
        self.encode(h12) | pm
    }

    fn decode_hour(&self, v: u8) -> i64 {
        if self.reg_b() & REG_B_24H != 0 {
            return self.decode(v);
        }
        let h12 = self.decode(v & !HOUR_PM) % 12;
        if v & HOUR_PM != 0 {
            h12 + 12
        } else {
            h12
        }
    }

    fn read_reg(&mut self, idx: u8) -> u8 {
        let t = self.shown();
        match idx {
            REG_SECONDS => self.encode(t.sec),
            REG_MINUTES => self.encode(t.min),
            REG_HOURS => self.encode_hour(t.hour),
            REG_WEEKDAY => self.encode(t.weekday()),
            REG_DAY => self.encode(t.day),
            REG_MONTH => self.encode(t.month),
            REG_YEAR => self.encode(t.year % 100),
            REG_CENTURY => self.encode(t.year / 100),
            REG_A => self.ram[REG_A as usize] & !REG_A_UIP,
            REG_C => 0, // no interrupt flags; reading would clear them
            REG_D => REG_D_VRT,
            _ => self.ram.get(usize::from(idx)).copied().unwrap_or(0xff),
        }
    }

    fn commit(&mut self, t: Tm) {
        match t.to_unix() {
            Some(secs) => self.offset = secs.saturating_sub((self.clock)()),
            None => {
                irqchip::guest_warn!("cmos: guest set an invalid date/time {t:?}; clock unchanged")
            }
        }
    }

    fn write_time(&mut self, idx: u8, v: u8) {
        let mut t = self.shown();
        match idx {
            REG_SECONDS => t.sec = self.decode(v),
            REG_MINUTES => t.min = self.decode(v),
            REG_HOURS => t.hour = self.decode_hour(v),
            REG_DAY => t.day = self.decode(v),
            REG_MONTH => t.month = self.decode(v),
            REG_YEAR => t.year = t.year.div_euclid(100) * 100 + self.decode(v),
            REG_CENTURY => t.year = self.decode(v) * 100 + t.year.rem_euclid(100),
            _ => return,
        }
        if self.staged.is_some() {
            self.staged = Some(t);
        } else {
            self.commit(t);
        }
    }

    fn write_reg(&mut self, idx: u8, v: u8) {
        match idx {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_DAY | REG_MONTH | REG_YEAR
            | REG_CENTURY => self.write_time(idx, v),
            REG_WEEKDAY => {} // derived from the date
            REG_A => self.ram[REG_A as usize] = v & !REG_A_UIP,
            REG_B => {
                let old = self.reg_b();
                let mut v = v;
                if v & REG_B_SET != 0 {
                    // Datasheet: setting SET also clears UIE.
                    v &= !REG_B_UIE;
                    if old & REG_B_SET == 0 {
                        self.staged = Some(self.now());
                    }
                }
                self.ram[REG_B as usize] = v;
                if v & REG_B_SET == 0 {
                    if let Some(t) = self.staged.take() {
                        self.commit(t);
                    }
                }
            }
            REG_C | REG_D => {} // read-only
            _ => {
                if let Some(b) = self.ram.get_mut(usize::from(idx)) {
                    *b = v;
                }
            }
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset.checked_add(i as u64) {
                Some(DATA_OFFSET) => self.read_reg(self.index),
                _ => 0xff, // the index port is write-only
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                // Bit 7 is the NMI mask on PCs; we never gate NMIs on it.
                Some(INDEX_OFFSET) => self.index = b & 0x7f,
                Some(DATA_OFFSET) => self.write_reg(self.index, b),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;

    /// 2024-02-29 13:05:09 UTC, a Thursday.
    const T0: i64 = 1_709_211_909;

    fn cmos_at(t: i64) -> (Cmos, Arc<AtomicI64>) {
        let now = Arc::new(AtomicI64::new(t));
        let n = now.clone();
        (
            Cmos::with_clock(256 << 20, 0, Box::new(move || n.load(Ordering::SeqCst))),
            now,
        )
    }

    fn rd(c: &mut Cmos, idx: u8) -> u8 {
        c.write(INDEX_OFFSET, &[idx]);
        let mut b = [0];
        c.read(DATA_OFFSET, &mut b);
        b[0]
    }

    fn wr(c: &mut Cmos, idx: u8, v: u8) {
        c.write(INDEX_OFFSET, &[idx]);
        c.write(DATA_OFFSET, &[v]);
    }

    fn time_regs(c: &mut Cmos) -> [u8; 8] {
        [
            REG_SECONDS,
            REG_MINUTES,
            REG_HOURS,
            REG_WEEKDAY,
            REG_DAY,
            REG_MONTH,
            REG_YEAR,
            REG_CENTURY,
        ]
        .map(|r| rd(c, r))
    }

    #[test]
    fn time_reads_as_bcd_24h_by_default() {
        let (mut c, _) = cmos_at(T0);
        assert_eq!(
            time_regs(&mut c),
            [0x09, 0x05, 0x13, 5, 0x29, 0x02, 0x24, 0x20]
        );
    }

    #[test]
    fn binary_mode_per_register_b_dm() {
        let (mut c, _) = cmos_at(T0);
        wr(&mut c, REG_B, REG_B_24H | REG_B_DM_BINARY);
        assert_eq!(time_regs(&mut c), [9, 5, 13, 5, 29, 2, 24, 20]);
    }

    #[test]
    fn twelve_hour_mode_sets_pm_bit() {
        let (mut c, _) = cmos_at(T0);
        wr(&mut c, REG_B, 0);
        assert_eq!(rd(&mut c, REG_HOURS), 0x80 | 0x01);
        let (mut c, _) = cmos_at(T0 - 13 * 3600); // 00:05 -> 12 AM
        wr(&mut c, REG_B, 0);
        assert_eq!(rd(&mut c, REG_HOURS), 0x12);
    }

    #[test]
    fn clock_follows_host_time() {
        let (mut c, now) = cmos_at(T0);
        now.store(T0 + 61, Ordering::SeqCst);
        assert_eq!(rd(&mut c, REG_SECONDS), 0x10);
        assert_eq!(rd(&mut c, REG_MINUTES), 0x06);
    }

    #[test]
    fn register_a_never_shows_update_in_progress() {
        let (mut c, _) = cmos_at(T0);
        wr(&mut c, REG_A, 0xff);
        assert_eq!(rd(&mut c, REG_A), 0x7f);
        let (mut c, _) = cmos_at(T0);
        assert_eq!(rd(&mut c, REG_A), REG_A_RESET);
    }

    #[test]
    fn register_d_reports_valid_ram_and_time() {
        let (mut c, _) = cmos_at(T0);
        assert_eq!(rd(&mut c, REG_D), 0x80);
        wr(&mut c, REG_D, 0);
        assert_eq!(rd(&mut c, REG_D), 0x80);
    }

    #[test]
    fn register_c_has_no_interrupt_flags() {
        let (mut c, _) = cmos_at(T0);
        wr(&mut c, REG_B, REG_B_24H | 0x70);
        assert_eq!(rd(&mut c, REG_C), 0);
    }

    #[test]
    fn nmi_disable_bit_in_index_is_ignored() {
        let (mut c, _) = cmos_at(T0);
        c.write(INDEX_OFFSET, &[0x80 | REG_MONTH]);
        let mut b = [0];
        c.read(DATA_OFFSET, &mut b);
        assert_eq!(b[0], 0x02);
    }

    #[test]
    fn index_port_reads_all_ones() {
        let (mut c, _) = cmos_at(T0);
        let mut b = [0];
        c.read(INDEX_OFFSET, &mut b);
        assert_eq!(b[0], 0xff);
    }

    #[test]
    fn set_bit_freezes_time_and_commit_moves_the_clock() {
        let (mut c, now) = cmos_at(T0);
        wr(&mut c, REG_B, REG_B_SET | REG_B_24H);
        now.store(T0 + 5, Ordering::SeqCst);
        assert_eq!(rd(&mut c, REG_SECONDS), 0x09, "frozen while SET");
        // hwclock-style: 2030-01-02 03:04:05
        for (r, v) in [
            (REG_SECONDS, 0x05),
            (REG_MINUTES, 0x04),
            (REG_HOURS, 0x03),
            (REG_DAY, 0x02),
            (REG_MONTH, 0x01),
            (REG_YEAR, 0x30),
        ] {
            wr(&mut c, r, v);
        }
        wr(&mut c, REG_B, REG_B_24H);
        now.store(T0 + 15, Ordering::SeqCst); // ten seconds later
        assert_eq!(
            time_regs(&mut c),
            [0x15, 0x04, 0x03, 4, 0x02, 0x01, 0x30, 0x20]
        );
    }

    #[test]
    fn write_without_set_takes_effect_immediately() {
        let (mut c, _) = cmos_at(T0);
        wr(&mut c, REG_MINUTES, 0x59);
        assert_eq!(rd(&mut c, REG_MINUTES), 0x59);
        assert_eq!(rd(&mut c, REG_HOURS), 0x13);
    }

    #[test]
    fn invalid_date_is_refused() {
        let (mut c, _) = cmos_at(T0);
        wr(&mut c, REG_B, REG_B_SET | REG_B_24H);
        wr(&mut c, REG_MONTH, 0x02);
        wr(&mut c, REG_DAY, 0x30); // February 30th
        wr(&mut c, REG_B, REG_B_24H);
        assert_eq!(rd(&mut c, REG_DAY), 0x29);
        assert_eq!(rd(&mut c, REG_MONTH), 0x02);
    }

    #[test]
    fn setting_set_clears_uie() {
        let (mut c, _) = cmos_at(T0);
        wr(&mut c, REG_B, REG_B_SET | REG_B_UIE | REG_B_24H);
        assert_eq!(rd(&mut c, REG_B) & REG_B_UIE, 0);
    }

    #[test]
    fn cmos_ram_is_read_write() {
        let (mut c, _) = cmos_at(T0);
        wr(&mut c, 0x0f, 0x0a);
        assert_eq!(rd(&mut c, 0x0f), 0x0a);
        wr(&mut c, 0x7f, 0x55);
        assert_eq!(rd(&mut c, 0x7f), 0x55);
    }

    #[test]
    fn memory_size_bytes_describe_ram() {
        let (mut c, _) = cmos_at(T0);
        assert_eq!((rd(&mut c, 0x15), rd(&mut c, 0x16)), (0x80, 0x02)); // 640 KiB
        let ext = u16::from_le_bytes([rd(&mut c, 0x17), rd(&mut c, 0x18)]);
        assert_eq!(
            ext, 0xffff,
            "255 MiB above 1 MiB saturates the 16-bit KiB count"
        );
        let above16 = u16::from_le_bytes([rd(&mut c, 0x34), rd(&mut c, 0x35)]);
        assert_eq!(above16 as u64, (240 << 20) / (64 << 10));
        let c2 = Cmos::with_clock(3 << 30, 1 << 30, Box::new(|| 0));
        assert_eq!(
            u32::from_le_bytes([c2.ram[0x5b], c2.ram[0x5c], c2.ram[0x5d], 0]),
            (1 << 30) / (64 << 10)
        );
    }

    #[test]
    fn calendar_conversion_round_trips() {
        for secs in [
            0i64,
            T0,
            951_782_400, /* 2000-02-29 */
            4_102_444_799,
            -1,
        ] {
            let t = Tm::from_unix(secs);
            assert_eq!(t.to_unix(), Some(secs), "{t:?}");
        }
        assert_eq!(Tm::from_unix(0).weekday(), 5, "1970-01-01 was a Thursday");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_accesses_never_panic(
            ops in proptest::collection::vec(
                (proptest::bool::ANY, proptest::num::u64::ANY, proptest::collection::vec(proptest::num::u8::ANY, 0..4)),
                0..128,
            ),
            now in proptest::num::i64::ANY,
        ) {
            let mut c = Cmos::with_clock(u64::MAX, u64::MAX, Box::new(move || now));
            for (is_write, offset, mut data) in ops {
                let offset = if offset % 2 == 0 { offset % 3 } else { offset };
                if is_write {
                    c.write(offset, &data);
                } else {
                    c.read(offset, &mut data);
                }
            }
        }
    }
}
