//! MSI-X capability state (PCI Local Bus Specification 3.0, 6.8.2 "MSI-X Capability and Table
//! Structures").
//!
//! [`MsixTable`] holds what a function's MSI-X capability exposes:
//!
//! * **Message Control** (6.8.2.3): bits 10:0 table size N-1 (RO), bit 14 Function Mask,
//!   bit 15 MSI-X Enable ([`MsixTable::message_control`], [`MsixTable::write_message_control`]).
//! * **MSI-X Table** (6.8.2.6–6.8.2.9), 16 bytes per entry: Message Address (bits 1:0 are
//!   reserved and read 0), Message Upper Address, Message Data, Vector Control (bit 0 Mask
//!   Bit, 1 after reset; bits 31:1 reserved, read 0). Accessed at dword or qword granularity;
//!   other sizes/alignments, which the spec leaves undefined, get byte-lane semantics here
//!   (each byte written replaces one byte of its dword), so no access can panic.
//! * **Pending Bit Array** (6.8.2.10): one bit per vector in qwords; read-only, writes ignored.
//!
//! Interrupt behaviour ([`MsixTable::raise`]): with MSI-X enabled, a vector that is neither
//! function-masked nor masked fires its message. Otherwise its pending bit is set instead;
//! when the vector (and function) become unmasked the message fires once and the pending bit
//! is cleared, so N raises while masked deliver once. With MSI-X disabled the function does
//! not use MSI-X at all (it would use INTx): the raise is dropped and reported as such.
//!
//! Writing a changed address or data of entry k reports "route changed for k" so the backend
//! re-installs that vector's GSI route. Nothing here calls into KVM: every operation returns
//! what the backend must do.

use crate::guest_warn;
use crate::msi::MsiMessage;

/// Bytes per MSI-X table entry.
pub const ENTRY_SIZE: u64 = 16;
/// Largest table size (Message Control bits 10:0 + 1).
pub const MAX_VECTORS: u16 = 2048;
/// Message Control: Function Mask.
pub const CTRL_FUNCTION_MASK: u16 = 1 << 14;
/// Message Control: MSI-X Enable.
pub const CTRL_ENABLE: u16 = 1 << 15;
/// Vector Control: Mask Bit.
pub const VECTOR_CTRL_MASK: u32 = 1;

/// MSI-X construction errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MsixError {
    #[error("MSI-X table size {vectors} is out of range; use 1..=2048 vectors")]
    BadVectorCount { vectors: u16 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    ctrl: u32,
}

impl Default for Entry {
    fn default() -> Self {
        Self {
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            ctrl: VECTOR_CTRL_MASK,
        }
    }
}

impl Entry {
    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: (u64::from(self.addr_hi) << 32) | u64::from(self.addr_lo),
            data: self.data,
        }
    }
}

/// The outcome of [`MsixTable::raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsixRaise {
    /// Send this message now.
    Fire(MsiMessage),
    /// Masked: the pending bit is set (or was already).
    Pended,
    /// MSI-X is disabled: nothing happens.
    Disabled,
    /// No such vector.
    NoSuchVector,
}

/// What a table or control write asks the backend to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MsixEffects {
    /// Vectors to fire now with their messages (pending vectors that became unmasked).
    pub fire: Vec<(u16, MsiMessage)>,
    /// Vectors whose address/data changed: re-install their GSI routes.
    pub routes_changed: Vec<u16>,
}

impl MsixEffects {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.fire.is_empty() && self.routes_changed.is_empty()
    }
}

/// One function's MSI-X table, PBA and control bits. See the module documentation.
#[derive(Debug, Clone)]
pub struct MsixTable {
    entries: Vec<Entry>,
    pba: Vec<u64>,
    enabled: bool,
    function_mask: bool,
}

/// Split an access into per-dword pieces: (dword offset, value in lanes, lane mask).
fn dword_lanes(offset: u64, data: &[u8]) -> Vec<(u64, u32, u32)> {
    let mut out: Vec<(u64, u32, u32)> = Vec::with_capacity(data.len() / 4 + 1);
    for (i, b) in data.iter().enumerate() {
        let Some(addr) = offset.checked_add(i as u64) else {
            break;
        };
        let dw = addr & !3;
        let shift = (addr & 3) * 8;
        match out.last_mut() {
            Some((o, v, l)) if *o == dw => {
                *v |= u32::from(*b) << shift;
                *l |= 0xFF << shift;
            }
            _ => out.push((dw, u32::from(*b) << shift, 0xFF << shift)),
        }
    }
    out
}

/// Fill `data` from a dword-register reader.
fn read_lanes(offset: u64, data: &mut [u8], read: impl Fn(u64) -> u32) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = match offset.checked_add(i as u64) {
            Some(addr) => (read(addr & !3) >> ((addr & 3) * 8)) as u8,
            None => 0xFF,
        };
    }
}

fn is_dword_or_qword(offset: u64, len: usize) -> bool {
    (len == 4 && offset & 3 == 0) || (len == 8 && offset & 7 == 0)
}

impl MsixTable {
    /// A table of `vectors` entries (1..=2048), all masked, MSI-X disabled.
    pub fn new(vectors: u16) -> Result<Self, MsixError> {
        if vectors == 0 || vectors > MAX_VECTORS {
            return Err(MsixError::BadVectorCount { vectors });
        }
        let n = usize::from(vectors);
        Ok(Self {
            entries: vec![Entry::default(); n],
            pba: vec![0; n.div_ceil(64)],
            enabled: false,
            function_mask: false,
        })
    }

    /// Number of vectors.
    pub fn num_vectors(&self) -> u16 {
        u16::try_from(self.entries.len()).unwrap_or(MAX_VECTORS)
    }

    /// Size of the table in bytes (for the BAR layout).
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_SIZE
    }

    /// Size of the PBA in bytes (whole qwords).
    pub fn pba_size(&self) -> u64 {
        self.pba.len() as u64 * 8
    }

    /// Back to reset: entries masked and zeroed, PBA clear, disabled, function unmasked.
    pub fn reset(&mut self) {
        self.entries.fill(Entry::default());
        self.pba.fill(0);
        self.enabled = false;
        self.function_mask = false;
    }

    /// MSI-X Enable.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Function Mask.
    pub fn function_masked(&self) -> bool {
        self.function_mask
    }

    /// The Message Control register.
    pub fn message_control(&self) -> u16 {
        let mut v = self.num_vectors().saturating_sub(1) & 0x7FF;
        if self.function_mask {
            v |= CTRL_FUNCTION_MASK;
        }
        if self.enabled {
            v |= CTRL_ENABLE;
        }
        v
    }

    /// Write the Message Control register (table size and reserved bits are read-only).
    pub fn write_message_control(&mut self, val: u16) -> MsixEffects {
        self.enabled = val & CTRL_ENABLE != 0;
        self.function_mask = val & CTRL_FUNCTION_MASK != 0;
        let mut fx = MsixEffects::default();
        self.fire_unmasked_pending(&mut fx);
        fx
    }

    /// Whether vector `k` cannot fire right now (per-vector or function mask, or disabled).
    fn blocked(&self, e: &Entry) -> bool {
        !self.enabled || self.function_mask || e.ctrl & VECTOR_CTRL_MASK != 0
    }

    fn pending_bit(&self, k: usize) -> bool {
        self.pba
            .get(k / 64)
            .is_some_and(|q| q & (1u64 << (k % 64)) != 0)
    }

    fn set_pending(&mut self, k: usize, on: bool) {
        if let Some(q) = self.pba.get_mut(k / 64) {
            if on {
                *q |= 1u64 << (k % 64);
            } else {
                *q &= !(1u64 << (k % 64));
            }
        }
    }

    fn fire_unmasked_pending(&mut self, fx: &mut MsixEffects) {
        if !self.enabled || self.function_mask {
            return;
        }
        for k in 0..self.entries.len() {
            if !self.pending_bit(k) {
                continue;
            }
            if let Some(e) = self.entries.get(k) {
                if e.ctrl & VECTOR_CTRL_MASK == 0 {
                    let msg = e.message();
                    self.set_pending(k, false);
                    fx.fire.push((k as u16, msg));
                }
            }
        }
    }

    /// The device raises vector `k`.
    pub fn raise(&mut self, k: u16) -> MsixRaise {
        let i = usize::from(k);
        let Some(e) = self.entries.get(i) else {
            return MsixRaise::NoSuchVector;
        };
        if !self.enabled {
            return MsixRaise::Disabled;
        }
        if self.blocked(e) {
            self.set_pending(i, true);
            MsixRaise::Pended
        } else {
            MsixRaise::Fire(e.message())
        }
    }

    /// The message of vector `k` as programmed.
    pub fn message(&self, k: u16) -> Option<MsiMessage> {
        self.entries.get(usize::from(k)).map(Entry::message)
    }

    /// Whether vector `k`'s own Mask Bit is set.
    pub fn vector_masked(&self, k: u16) -> bool {
        self.entries
            .get(usize::from(k))
            .is_some_and(|e| e.ctrl & VECTOR_CTRL_MASK != 0)
    }

    /// Whether vector `k`'s pending bit is set.
    pub fn is_pending(&self, k: u16) -> bool {
        self.pending_bit(usize::from(k))
    }

    fn read_table_dword(&self, off: u64) -> u32 {
        let Ok(k) = usize::try_from(off / ENTRY_SIZE) else {
            return 0xFFFF_FFFF;
        };
        let Some(e) = self.entries.get(k) else {
            return 0xFFFF_FFFF;
        };
        match off % ENTRY_SIZE {
            0 => e.addr_lo,
            4 => e.addr_hi,
            8 => e.data,
            _ => e.ctrl,
        }
    }

    /// Read the table at byte `offset` (relative to the table start). Beyond the table reads
    /// all-ones.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        if !is_dword_or_qword(offset, data.len()) {
            guest_warn!(
                "MSI-X: {}-byte table read at {offset:#x} is not an aligned dword/qword",
                data.len()
            );
        }
        read_lanes(offset, data, |o| self.read_table_dword(o));
    }

    /// Write the table at byte `offset` (relative to the table start).
    pub fn table_write(&mut self, offset: u64, data: &[u8]) -> MsixEffects {
        if !is_dword_or_qword(offset, data.len()) {
            guest_warn!(
                "MSI-X: {}-byte table write at {offset:#x} is not an aligned dword/qword; emulating byte lanes",
                data.len()
            );
        }
        let mut fx = MsixEffects::default();
        for (off, val, lanes) in dword_lanes(offset, data) {
            let Ok(k) = usize::try_from(off / ENTRY_SIZE) else {
                continue;
            };
            let field = off % ENTRY_SIZE;
            let Some(e) = self.entries.get_mut(k) else {
                guest_warn!("MSI-X: table write at {off:#x} beyond the table ignored");
                continue;
            };
            let merge = |cur: u32| (cur & !lanes) | (val & lanes);
            let before = *e;
            match field {
                0 => e.addr_lo = merge(e.addr_lo) & !3,
                4 => e.addr_hi = merge(e.addr_hi),
                8 => e.data = merge(e.data),
                _ => e.ctrl = merge(e.ctrl) & VECTOR_CTRL_MASK,
            }
            let after = *e;
            let k16 = k as u16;
            if before.message() != after.message() && !fx.routes_changed.contains(&k16) {
                fx.routes_changed.push(k16);
            }
            let unmasked =
                before.ctrl & VECTOR_CTRL_MASK != 0 && after.ctrl & VECTOR_CTRL_MASK == 0;
            if unmasked && self.pending_bit(k) && !self.blocked(&after) {
                self.set_pending(k, false);
                fx.fire.push((k16, after.message()));
            }
        }
        fx
    }

    /// Read the PBA at byte `offset` (relative to the PBA start). Beyond the PBA reads
    /// all-ones.
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        read_lanes(offset, data, |o| {
            let q = usize::try_from(o / 8)
                .ok()
                .and_then(|i| self.pba.get(i).copied());
            match q {
                Some(q) => (q >> ((o % 8) * 8)) as u32,
                None => 0xFFFF_FFFF,
            }
        });
    }

    /// Writes to the PBA are ignored (it is read-only, 6.8.2.10).
    pub fn pba_write(&mut self, offset: u64, data: &[u8]) {
        guest_warn!(
            "MSI-X: {}-byte write to the read-only PBA at {offset:#x} ignored",
            data.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ADDR: u32 = 0xFEE0_1000;

    fn enabled(n: u16) -> MsixTable {
        let mut t = MsixTable::new(n).unwrap();
        t.write_message_control(CTRL_ENABLE);
        t
    }

    fn program(t: &mut MsixTable, k: u16, data: u32, masked: bool) -> MsixEffects {
        let base = u64::from(k) * ENTRY_SIZE;
        let mut fx = t.table_write(base, &ADDR.to_le_bytes());
        fx.routes_changed
            .extend(t.table_write(base + 4, &0u32.to_le_bytes()).routes_changed);
        fx.routes_changed
            .extend(t.table_write(base + 8, &data.to_le_bytes()).routes_changed);
        let more = t.table_write(base + 12, &u32::from(masked).to_le_bytes());
        fx.fire.extend(more.fire);
        fx
    }

    fn read32(t: &MsixTable, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.table_read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn msg(data: u32) -> MsiMessage {
        MsiMessage {
            address: u64::from(ADDR),
            data,
        }
    }

    #[test]
    fn table_size_must_be_1_to_2048() {
        assert!(MsixTable::new(0).is_err());
        assert!(MsixTable::new(2049).is_err());
        assert!(MsixTable::new(2048).is_ok());
    }

    #[test]
    fn message_control_reports_n_minus_1_and_enable_and_function_mask() {
        let mut t = MsixTable::new(8).unwrap();
        assert_eq!(t.message_control(), 7);
        t.write_message_control(0xFFFF);
        assert_eq!(
            t.message_control(),
            0xC007,
            "table size and reserved bits RO"
        );
    }

    #[test]
    fn entries_reset_masked_with_zero_message() {
        let t = MsixTable::new(2).unwrap();
        assert_eq!(read32(&t, 12), 1);
        assert_eq!(read32(&t, 16 + 12), 1);
        assert_eq!(read32(&t, 0), 0);
    }

    #[test]
    fn address_low_bits_1_0_and_vector_control_reserved_bits_read_zero() {
        let mut t = MsixTable::new(1).unwrap();
        t.table_write(0, &0xFEE0_0003u32.to_le_bytes());
        t.table_write(12, &0xFFFF_FFFEu32.to_le_bytes());
        assert_eq!(read32(&t, 0), 0xFEE0_0000);
        assert_eq!(read32(&t, 12), 0);
    }

    #[test]
    fn qword_write_sets_address_low_and_high() {
        let mut t = MsixTable::new(1).unwrap();
        let fx = t.table_write(0, &0x0000_0001_FEE0_0000u64.to_le_bytes());
        assert_eq!(t.message(0).unwrap().address, 0x1_FEE0_0000);
        assert_eq!(fx.routes_changed, vec![0]);
        let mut b = [0u8; 8];
        t.table_read(0, &mut b);
        assert_eq!(u64::from_le_bytes(b), 0x0000_0001_FEE0_0000);
    }

    #[test]
    fn qword_write_of_data_and_vector_control_unmasks() {
        let mut t = enabled(1);
        t.table_write(0, &ADDR.to_le_bytes());
        t.table_write(8, &0x41u64.to_le_bytes());
        assert!(!t.vector_masked(0));
        assert_eq!(t.raise(0), MsixRaise::Fire(msg(0x41)));
    }

    #[test]
    fn unmasked_vector_fires_its_message() {
        let mut t = enabled(4);
        program(&mut t, 2, 0x42, false);
        assert_eq!(t.raise(2), MsixRaise::Fire(msg(0x42)));
        assert!(!t.is_pending(2));
    }

    #[test]
    fn masked_vector_sets_pending_instead_of_firing() {
        let mut t = enabled(4);
        program(&mut t, 2, 0x42, true);
        assert_eq!(t.raise(2), MsixRaise::Pended);
        assert!(t.is_pending(2));
        let mut b = [0u8; 8];
        t.pba_read(0, &mut b);
        assert_eq!(u64::from_le_bytes(b), 1 << 2);
    }

    #[test]
    fn unmasking_a_pending_vector_fires_once_and_clears_pending() {
        let mut t = enabled(4);
        program(&mut t, 2, 0x42, true);
        for _ in 0..5 {
            t.raise(2);
        }
        let fx = t.table_write(2 * 16 + 12, &0u32.to_le_bytes());
        assert_eq!(fx.fire, vec![(2, msg(0x42))]);
        assert!(!t.is_pending(2));
        let fx = t.table_write(2 * 16 + 12, &0u32.to_le_bytes());
        assert!(fx.fire.is_empty(), "N raises while masked deliver once");
    }

    #[test]
    fn function_mask_pends_every_vector_and_unmask_fires_them() {
        let mut t = enabled(4);
        program(&mut t, 0, 0x40, false);
        program(&mut t, 3, 0x43, false);
        t.write_message_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        assert_eq!(t.raise(0), MsixRaise::Pended);
        assert_eq!(t.raise(3), MsixRaise::Pended);
        let fx = t.write_message_control(CTRL_ENABLE);
        assert_eq!(fx.fire, vec![(0, msg(0x40)), (3, msg(0x43))]);
        assert!(!t.is_pending(0) && !t.is_pending(3));
    }

    #[test]
    fn function_unmask_leaves_per_vector_masked_pending_bits() {
        let mut t = enabled(2);
        program(&mut t, 1, 0x41, true);
        t.write_message_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        t.raise(1);
        let fx = t.write_message_control(CTRL_ENABLE);
        assert!(fx.fire.is_empty());
        assert!(t.is_pending(1));
    }

    #[test]
    fn vector_unmask_while_function_masked_does_not_fire() {
        let mut t = enabled(2);
        program(&mut t, 1, 0x41, true);
        t.write_message_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        t.raise(1);
        let fx = t.table_write(16 + 12, &0u32.to_le_bytes());
        assert!(fx.fire.is_empty());
        assert!(t.is_pending(1));
    }

    #[test]
    fn disabled_msix_drops_raises() {
        let mut t = MsixTable::new(2).unwrap();
        program(&mut t, 0, 0x40, false);
        assert_eq!(t.raise(0), MsixRaise::Disabled);
        assert!(!t.is_pending(0));
        assert_eq!(t.raise(7), MsixRaise::NoSuchVector);
    }

    #[test]
    fn address_or_data_change_reports_route_changed_once() {
        let mut t = enabled(4);
        let fx = program(&mut t, 1, 0x41, true);
        assert_eq!(fx.routes_changed, vec![1, 1]);
        let fx = t.table_write(16 + 8, &0x41u32.to_le_bytes());
        assert!(fx.routes_changed.is_empty(), "same data: no change");
        let fx = t.table_write(16 + 12, &0u32.to_le_bytes());
        assert!(
            fx.routes_changed.is_empty(),
            "mask bit is not part of the route"
        );
    }

    #[test]
    fn pba_is_read_only() {
        let mut t = enabled(2);
        program(&mut t, 0, 0x40, true);
        t.raise(0);
        t.pba_write(0, &[0; 8]);
        assert!(t.is_pending(0));
    }

    #[test]
    fn reads_beyond_table_or_pba_are_all_ones() {
        let t = MsixTable::new(1).unwrap();
        assert_eq!(read32(&t, 16), 0xFFFF_FFFF);
        let mut b = [0u8; 4];
        t.pba_read(8, &mut b);
        assert_eq!(b, [0xFF; 4]);
    }

    #[test]
    fn sizes_follow_vector_count() {
        let t = MsixTable::new(65).unwrap();
        assert_eq!(t.table_size(), 65 * 16);
        assert_eq!(t.pba_size(), 16);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        Read(u64, usize),
        Ctrl(u16),
        Raise(u16),
        Mask(u16, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..(5 * 16), proptest::collection::vec(any::<u8>(), 0..9))
                .prop_map(|(o, d)| Op::Write(o, d)),
            (0u64..(5 * 16), 0usize..9).prop_map(|(o, n)| Op::Read(o, n)),
            prop_oneof![
                Just(CTRL_ENABLE),
                Just(CTRL_ENABLE | CTRL_FUNCTION_MASK),
                Just(0u16),
                any::<u16>()
            ]
            .prop_map(Op::Ctrl),
            (0u16..5).prop_map(Op::Raise),
            (0u16..4, any::<bool>()).prop_map(|(k, m)| Op::Mask(k, m)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn pending_bits_stay_consistent(ops in proptest::collection::vec(op(), 0..150)) {
            let mut t = MsixTable::new(4).unwrap();
            for o in ops {
                let fx = match o {
                    Op::Write(off, d) => t.table_write(off, &d),
                    Op::Read(off, n) => {
                        let mut b = vec![0u8; n];
                        t.table_read(off, &mut b);
                        t.pba_read(off, &mut b);
                        MsixEffects::default()
                    }
                    Op::Ctrl(v) => t.write_message_control(v),
                    Op::Raise(k) => {
                        let was = t.is_pending(k);
                        match t.raise(k) {
                            MsixRaise::Fire(m) => {
                                prop_assert!(!was, "fired past a pending bit");
                                prop_assert_eq!(Some(m), t.message(k));
                            }
                            MsixRaise::Pended => prop_assert!(t.is_pending(k)),
                            MsixRaise::Disabled => prop_assert!(!t.enabled()),
                            MsixRaise::NoSuchVector => prop_assert!(k >= 4),
                        }
                        MsixEffects::default()
                    }
                    Op::Mask(k, m) => t.table_write(u64::from(k) * 16 + 12, &u32::from(m).to_le_bytes()),
                };
                for (k, m) in &fx.fire {
                    prop_assert!(!t.is_pending(*k), "fired vector still pending");
                    prop_assert!(!t.vector_masked(*k) && !t.function_masked() && t.enabled());
                    prop_assert_eq!(Some(*m), t.message(*k));
                }
                for k in 0..4u16 {
                    if t.is_pending(k) {
                        prop_assert!(t.vector_masked(k) || t.function_masked() || !t.enabled(),
                            "vector {} pending while deliverable", k);
                    }
                }
                // PBA bits past the last vector are never set.
                let mut b = [0u8; 8];
                t.pba_read(0, &mut b);
                prop_assert_eq!(u64::from_le_bytes(b) & !0xF, 0);
            }
        }
    }
}
