//! MSI messages (Intel SDM vol. 3, 11.11 "Message Signalled Interrupts").
//!
//! An MSI is a 32-bit memory write of `data` to `address` inside the local APIC window
//! `0xFEE0_0000..=0xFEEF_FFFF`. SDM 11.11.1 (figure 11-24, message address register):
//!
//! | bits  | field |
//! |-------|-------|
//! | 31:20 | `0xFEE` (fixed) |
//! | 19:12 | destination ID |
//! | 11:4  | reserved |
//! | 3     | RH, redirection hint |
//! | 2     | DM, destination mode (0 physical, 1 logical; only meaningful with RH = 1) |
//!
//! SDM 11.11.2 (figure 11-25, message data register):
//!
//! | bits  | field |
//! |-------|-------|
//! | 7:0   | vector |
//! | 10:8  | delivery mode (fixed, lowest priority, SMI, reserved, NMI, INIT, reserved, ExtINT) |
//! | 14    | level (1 assert, 0 deassert; ignored for edge) |
//! | 15    | trigger mode (0 edge, 1 level) |
//!
//! [`MsiMessage::decode`] splits a message into typed fields; [`MsiMessage::validate`] also
//! flags what a local APIC would reject (address outside the window, reserved delivery modes,
//! illegal vectors 0..=15 for fixed/lowest-priority) so the backend can log and drop it.
//! [`MsiBuilder`] builds messages (the IOAPIC uses it to turn redirection entries into MSIs).

/// One message-signalled interrupt: the address/data pair a device writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// Something that can deliver an MSI to the local APICs.
pub trait MsiSender: Send + Sync {
    fn send_msi(&self, msg: MsiMessage) -> Result<(), crate::IrqError>;
}

/// Base of the local APIC MSI window (SDM 11.11.1: address bits 31:20 = `0xFEE`).
pub const MSI_ADDRESS_BASE: u64 = 0xFEE0_0000;
/// Last byte of the MSI window.
pub const MSI_ADDRESS_LAST: u64 = 0xFEEF_FFFF;

const ADDR_DEST_SHIFT: u32 = 12;
const ADDR_RH: u64 = 1 << 3;
const ADDR_DM_LOGICAL: u64 = 1 << 2;
const DATA_DELIVERY_SHIFT: u32 = 8;
/// Data bit 14: level assert (SDM 11.11.2).
pub const DATA_LEVEL_ASSERT: u32 = 1 << 14;
/// Data bit 15: trigger mode level (SDM 11.11.2).
pub const DATA_TRIGGER_LEVEL: u32 = 1 << 15;

/// Whether `address` lies in the local APIC MSI window `0xFEE0_0000..=0xFEEF_FFFF`.
/// Any bit set in 63:32 puts the address outside (no extended destination IDs are offered).
pub fn is_in_apic_window(address: u64) -> bool {
    (MSI_ADDRESS_BASE..=MSI_ADDRESS_LAST).contains(&address)
}

/// Delivery mode (SDM 11.11.2, data bits 10:8; same encoding as the IOAPIC redirection entry
/// bits 10:8, 82093AA datasheet 3.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    /// 0b011: reserved.
    Reserved3,
    Nmi,
    Init,
    /// 0b110: reserved.
    Reserved6,
    ExtInt,
}

impl DeliveryMode {
    /// Decode the 3-bit field (higher bits ignored).
    pub fn from_bits(bits: u32) -> Self {
        match bits & 7 {
            0 => Self::Fixed,
            1 => Self::LowestPriority,
            2 => Self::Smi,
            3 => Self::Reserved3,
            4 => Self::Nmi,
            5 => Self::Init,
            6 => Self::Reserved6,
            _ => Self::ExtInt,
        }
    }

    /// The 3-bit encoding.
    pub fn bits(self) -> u32 {
        match self {
            Self::Fixed => 0,
            Self::LowestPriority => 1,
            Self::Smi => 2,
            Self::Reserved3 => 3,
            Self::Nmi => 4,
            Self::Init => 5,
            Self::Reserved6 => 6,
            Self::ExtInt => 7,
        }
    }

    /// Reserved encodings (0b011, 0b110) that a local APIC does not accept.
    pub fn is_reserved(self) -> bool {
        matches!(self, Self::Reserved3 | Self::Reserved6)
    }

    /// Whether the vector field is used (fixed and lowest priority; SMI/NMI/INIT/ExtINT
    /// ignore it, SDM 11.11.2).
    pub fn uses_vector(self) -> bool {
        matches!(self, Self::Fixed | Self::LowestPriority)
    }
}

/// Destination mode (SDM 11.11.1, address bit 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DestinationMode {
    Physical,
    Logical,
}

/// Trigger mode (SDM 11.11.2, data bit 15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TriggerMode {
    Edge,
    Level,
}

/// The fields of an MSI address/data pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecodedMsi {
    /// Address bits 19:12.
    pub destination_id: u8,
    /// Address bit 3.
    pub redirection_hint: bool,
    /// Address bit 2.
    pub destination_mode: DestinationMode,
    /// Data bits 7:0.
    pub vector: u8,
    /// Data bits 10:8.
    pub delivery_mode: DeliveryMode,
    /// Data bit 14 (assert). Edge messages are always treated as assert by the APIC.
    pub level_assert: bool,
    /// Data bit 15.
    pub trigger_mode: TriggerMode,
}

/// Why a local APIC would not accept a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MsiError {
    #[error("MSI address {address:#x} is outside the local APIC window 0xfee00000..=0xfeefffff; fix the device's MSI address programming")]
    NotInApicWindow { address: u64 },
    #[error("MSI delivery mode {bits:#05b} is reserved (SDM 11.11.2); the message is dropped")]
    ReservedDeliveryMode { bits: u32 },
    #[error("MSI vector {vector} is illegal (vectors 0..=15 are reserved, SDM 10.5.2); program a vector >= 16")]
    IllegalVector { vector: u8 },
}

impl MsiMessage {
    /// Split the message into its fields. Never fails: use [`MsiMessage::validate`] to learn
    /// whether a local APIC would accept it.
    pub fn decode(&self) -> DecodedMsi {
        let a = self.address;
        let d = self.data;
        DecodedMsi {
            destination_id: ((a >> ADDR_DEST_SHIFT) & 0xff) as u8,
            redirection_hint: a & ADDR_RH != 0,
            destination_mode: if a & ADDR_DM_LOGICAL != 0 {
                DestinationMode::Logical
            } else {
                DestinationMode::Physical
            },
            vector: (d & 0xff) as u8,
            delivery_mode: DeliveryMode::from_bits(d >> DATA_DELIVERY_SHIFT),
            level_assert: d & DATA_LEVEL_ASSERT != 0,
            trigger_mode: if d & DATA_TRIGGER_LEVEL != 0 {
                TriggerMode::Level
            } else {
                TriggerMode::Edge
            },
        }
    }

    /// Decode and check the message the way a local APIC would.
    pub fn validate(&self) -> Result<DecodedMsi, MsiError> {
        if !is_in_apic_window(self.address) {
            return Err(MsiError::NotInApicWindow {
                address: self.address,
            });
        }
        let dec = self.decode();
        if dec.delivery_mode.is_reserved() {
            return Err(MsiError::ReservedDeliveryMode {
                bits: dec.delivery_mode.bits(),
            });
        }
        if dec.delivery_mode.uses_vector() && dec.vector < 16 {
            return Err(MsiError::IllegalVector { vector: dec.vector });
        }
        Ok(dec)
    }

    /// Whether the message is level-triggered (data bit 15). KVM's split irqchip scans the
    /// MSI routes on GSIs 0..23 for this bit to learn which vectors need EOI exits.
    pub fn is_level(&self) -> bool {
        self.data & DATA_TRIGGER_LEVEL != 0
    }

    /// A builder starting from fixed delivery, physical destination 0, vector 0, edge.
    pub fn builder() -> MsiBuilder {
        MsiBuilder::default()
    }
}

/// Builds an [`MsiMessage`] from fields (SDM 11.11.1/11.11.2 layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiBuilder {
    fields: DecodedMsi,
}

impl Default for MsiBuilder {
    fn default() -> Self {
        Self {
            fields: DecodedMsi {
                destination_id: 0,
                redirection_hint: false,
                destination_mode: DestinationMode::Physical,
                vector: 0,
                delivery_mode: DeliveryMode::Fixed,
                level_assert: true,
                trigger_mode: TriggerMode::Edge,
            },
        }
    }
}

impl MsiBuilder {
    pub fn destination(mut self, id: u8) -> Self {
        self.fields.destination_id = id;
        self
    }
    pub fn destination_mode(mut self, mode: DestinationMode) -> Self {
        self.fields.destination_mode = mode;
        self
    }
    pub fn redirection_hint(mut self, rh: bool) -> Self {
        self.fields.redirection_hint = rh;
        self
    }
    pub fn vector(mut self, vector: u8) -> Self {
        self.fields.vector = vector;
        self
    }
    pub fn delivery_mode(mut self, mode: DeliveryMode) -> Self {
        self.fields.delivery_mode = mode;
        self
    }
    pub fn trigger_mode(mut self, mode: TriggerMode) -> Self {
        self.fields.trigger_mode = mode;
        self
    }
    /// Data bit 14. Defaults to assert.
    pub fn level_assert(mut self, assert: bool) -> Self {
        self.fields.level_assert = assert;
        self
    }
    pub fn build(self) -> MsiMessage {
        MsiMessage::from(self.fields)
    }
}

impl From<DecodedMsi> for MsiMessage {
    fn from(f: DecodedMsi) -> Self {
        let mut address = MSI_ADDRESS_BASE | (u64::from(f.destination_id) << ADDR_DEST_SHIFT);
        if f.redirection_hint {
            address |= ADDR_RH;
        }
        if f.destination_mode == DestinationMode::Logical {
            address |= ADDR_DM_LOGICAL;
        }
        let mut data = u32::from(f.vector) | (f.delivery_mode.bits() << DATA_DELIVERY_SHIFT);
        if f.level_assert {
            data |= DATA_LEVEL_ASSERT;
        }
        if f.trigger_mode == TriggerMode::Level {
            data |= DATA_TRIGGER_LEVEL;
        }
        MsiMessage { address, data }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn apic_window_is_fee00000_to_feefffff() {
        assert!(is_in_apic_window(0xFEE0_0000));
        assert!(is_in_apic_window(0xFEEF_FFFF));
        assert!(!is_in_apic_window(0xFEDF_FFFF));
        assert!(!is_in_apic_window(0xFEF0_0000));
        assert!(!is_in_apic_window(0x1_FEE0_0000));
    }

    #[test]
    fn destination_id_is_address_bits_19_to_12() {
        let m = MsiMessage {
            address: 0xFEE0_0000 | (0xAB << 12),
            data: 0x30,
        };
        assert_eq!(m.decode().destination_id, 0xAB);
    }

    #[test]
    fn redirection_hint_is_address_bit_3_and_dest_mode_bit_2() {
        let m = MsiMessage {
            address: 0xFEE0_000C,
            data: 0x30,
        };
        let d = m.decode();
        assert!(d.redirection_hint);
        assert_eq!(d.destination_mode, DestinationMode::Logical);
        let p = MsiMessage {
            address: 0xFEE0_0000,
            data: 0x30,
        }
        .decode();
        assert!(!p.redirection_hint);
        assert_eq!(p.destination_mode, DestinationMode::Physical);
    }

    #[test]
    fn data_fields_vector_delivery_level_trigger() {
        let m = MsiMessage {
            address: MSI_ADDRESS_BASE,
            data: 0x41 | (1 << 8) | (1 << 14) | (1 << 15),
        };
        let d = m.decode();
        assert_eq!(d.vector, 0x41);
        assert_eq!(d.delivery_mode, DeliveryMode::LowestPriority);
        assert!(d.level_assert);
        assert_eq!(d.trigger_mode, TriggerMode::Level);
        assert!(m.is_level());
    }

    #[test]
    fn reserved_delivery_modes_are_rejected() {
        for bits in [3u32, 6] {
            let m = MsiMessage {
                address: MSI_ADDRESS_BASE,
                data: 0x40 | (bits << 8),
            };
            assert_eq!(m.validate(), Err(MsiError::ReservedDeliveryMode { bits }));
        }
    }

    #[test]
    fn vectors_below_16_are_illegal_for_fixed_delivery() {
        let m = MsiMessage {
            address: MSI_ADDRESS_BASE,
            data: 15,
        };
        assert_eq!(m.validate(), Err(MsiError::IllegalVector { vector: 15 }));
        let ok = MsiMessage {
            address: MSI_ADDRESS_BASE,
            data: 16,
        };
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn nmi_ignores_the_vector_so_vector_zero_is_fine() {
        let m = MsiMessage::builder()
            .delivery_mode(DeliveryMode::Nmi)
            .build();
        assert!(m.validate().is_ok());
    }

    #[test]
    fn address_outside_window_is_rejected() {
        let m = MsiMessage {
            address: 0xFEC0_0000,
            data: 0x30,
        };
        assert_eq!(
            m.validate(),
            Err(MsiError::NotInApicWindow {
                address: 0xFEC0_0000
            })
        );
    }

    #[test]
    fn builder_level_logical_matches_sdm_layout() {
        let m = MsiMessage::builder()
            .destination(3)
            .destination_mode(DestinationMode::Logical)
            .vector(0x55)
            .delivery_mode(DeliveryMode::Fixed)
            .trigger_mode(TriggerMode::Level)
            .build();
        assert_eq!(m.address, 0xFEE0_3004);
        assert_eq!(m.data, 0x55 | (1 << 14) | (1 << 15));
    }

    proptest! {
        #[test]
        fn decode_then_build_round_trips_defined_bits(dest: u8, rh: bool, logical: bool,
                vector: u8, dm in 0u32..8, assert: bool, level: bool) {
            let addr = MSI_ADDRESS_BASE | (u64::from(dest) << 12)
                | if rh { 8 } else { 0 } | if logical { 4 } else { 0 };
            let data = u32::from(vector) | (dm << 8)
                | if assert { 1 << 14 } else { 0 } | if level { 1 << 15 } else { 0 };
            let m = MsiMessage { address: addr, data };
            prop_assert_eq!(MsiMessage::from(m.decode()), m);
        }
    }
}
