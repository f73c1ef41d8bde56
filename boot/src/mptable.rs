//! Intel MultiProcessor Specification 1.4 tables (MP floating pointer + MP configuration table).
//!
//! Linux uses these only when it does not use ACPI (`acpi=off`, `noacpi`) or as a fallback;
//! they describe the same machine as the MADT in [`crate::acpi`]:
//!
//! * one processor entry per vCPU, local APIC ids `0..num_cpus`, BSP flag on id 0;
//! * bus 0 = PCI, bus 1 = ISA;
//! * one I/O APIC (`ioapic_id`, version [`IOAPIC_VERSION`], at [`IOAPIC_START`]);
//! * ISA IRQ 0 (PIT) routed to I/O APIC pin 2 as on real boards, ISA IRQs 1 and 3-15 to the pin
//!   with the same number (IRQ 2 is the 8259A cascade and has no entry), all "conforms to bus"
//!   polarity/trigger (ISA: edge, active high);
//! * the 8259A's INTR output on I/O APIC pin 0 as ExtINT;
//! * LINT0 = ExtINT and LINT1 = NMI on every local APIC (virtual wire mode).
//!
//! Layout: the 16-byte floating pointer at [`MPTABLE_START`], the configuration table right
//! after it (MP spec 1.4 §4: the floating pointer may live in the BIOS ROM area 0xF0000-0xFFFFF).
//! Both must fit below 1 MiB ([`HIMEM_START`]).
//!
//! # Usage
//!
//! ```no_run
//! # use vm_memory::{GuestAddress, GuestMemoryMmap};
//! # let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
//! // Plain machine: 2 vCPUs, I/O APIC id 2.
//! boot::mptable::setup_mptable(&mem, 2, 2)?;
//!
//! // With PCI INTx routing (bus 0 device 3 INTA# -> I/O APIC pin 16):
//! let mut mp = boot::mptable::MpTable::new(2, 2)?;
//! mp.add_pci_intx(3, boot::mptable::PciIntPin::IntA, 16)?;
//! mp.write(&mem)?;
//! # Ok::<(), boot::mptable::MptableError>(())
//! ```

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::layout::{HIMEM_START, IOAPIC_PINS, IOAPIC_START, LAPIC_START, MPTABLE_START};

/// I/O APIC version reported in the MP table; matches irqvm's IOAPIC version register.
pub const IOAPIC_VERSION: u8 = 0x20;
/// Local APIC version (integrated APIC, as KVM's local APIC reports).
pub const LAPIC_VERSION: u8 = 0x14;
/// MP bus id of PCI bus 0.
pub const PCI_BUS_ID: u8 = 0;
/// MP bus id of the ISA bus.
pub const ISA_BUS_ID: u8 = 1;

/// MP spec 1.4 revision byte (§4.1, §4.2).
const MP_SPEC_REV_1_4: u8 = 4;
const FLOATING_POINTER_LEN: usize = 16;
const CONFIG_HEADER_LEN: usize = 44;

// Entry types, MP spec 1.4 Table 4-3.
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

// Interrupt types, MP spec 1.4 Table 4-8.
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

// I/O interrupt entry flags, MP spec 1.4 Table 4-9: PO bits 1:0, EL bits 3:2.
const FLAGS_CONFORMING: u16 = 0;
const POLARITY_ACTIVE_LOW: u16 = 0b11;
const TRIGGER_LEVEL: u16 = 0b11 << 2;

// Processor entry CPU flags (Table 4-5) and a family 6 signature with FPU + APIC features.
const CPU_FLAG_ENABLED: u8 = 1 << 0;
const CPU_FLAG_BSP: u8 = 1 << 1;
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURE_FPU: u32 = 1 << 0;
const CPU_FEATURE_APIC: u32 = 1 << 9;

/// Destination local APIC id meaning "all local APICs" (§4.3.8).
const ALL_LOCAL_APICS: u8 = 0xff;

/// Errors building or writing the MP tables.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("the MP table needs at least one vCPU; pass num_cpus >= 1")]
    NoCpus,
    #[error("I/O APIC pin {0} does not exist; pins are 0..{max}", max = IOAPIC_PINS)]
    BadIoapicPin(u8),
    #[error("PCI device number {0} is out of range; PCI devices are 0..=31")]
    BadPciDevice(u8),
    #[error(
        "MP table needs {size} bytes but only {room} fit between MPTABLE_START and 1 MiB; \
         use fewer vCPUs or PCI INTx entries"
    )]
    TooBig { size: usize, room: usize },
    #[error("MP table length {0} does not fit the 16-bit length field; use fewer entries")]
    LengthOverflow(usize),
    #[error(
        "writing the MP table to guest memory at {addr:#x} failed ({source}); is low RAM mapped?"
    )]
    GuestMemory {
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
}

/// PCI interrupt pin (INTA#..INTD#), as in the PCI Interrupt Pin register minus one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciIntPin {
    IntA = 0,
    IntB = 1,
    IntC = 2,
    IntD = 3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PciIntx {
    device: u8,
    pin: PciIntPin,
    ioapic_pin: u8,
}

/// An MP configuration under construction. [`MpTable::write`] lays it out in guest memory.
#[derive(Debug, Clone)]
pub struct MpTable {
    num_cpus: u8,
    ioapic_id: u8,
    pci_intx: Vec<PciIntx>,
}

impl MpTable {
    /// A table for `num_cpus` vCPUs (local APIC ids `0..num_cpus`) and one I/O APIC with id
    /// `ioapic_id` (conventionally `num_cpus`, so it does not share an id with a local APIC).
    pub fn new(num_cpus: u8, ioapic_id: u8) -> Result<Self, MptableError> {
        if num_cpus == 0 {
            return Err(MptableError::NoCpus);
        }
        Ok(Self {
            num_cpus,
            ioapic_id,
            pci_intx: Vec::new(),
        })
    }

    /// Route PCI bus 0 `device`'s `pin` to I/O APIC input `ioapic_pin`, level triggered and
    /// active low as PCI INTx# lines are (PCI Local Bus 3.0 §2.2.6; MP spec 1.4 §D.3 encodes
    /// the source bus IRQ as `device << 2 | pin`).
    pub fn add_pci_intx(
        &mut self,
        device: u8,
        pin: PciIntPin,
        ioapic_pin: u8,
    ) -> Result<(), MptableError> {
        if device > 31 {
            return Err(MptableError::BadPciDevice(device));
        }
        if ioapic_pin >= IOAPIC_PINS {
            return Err(MptableError::BadIoapicPin(ioapic_pin));
        }
        self.pci_intx.push(PciIntx {
            device,
            pin,
            ioapic_pin,
        });
        Ok(())
    }

    /// The floating pointer followed by the configuration table, for guest address
    /// [`MPTABLE_START`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, MptableError> {
        let mut entries: Vec<u8> = Vec::new();
        let mut count: u16 = 0;
        let mut push = |entries: &mut Vec<u8>, e: &[u8]| {
            entries.extend_from_slice(e);
            count = count.saturating_add(1);
        };

        // Entries appear in ascending type order (MP spec 1.4 §4.3).
        for id in 0..self.num_cpus {
            // §4.3.1 Processor entry, 20 bytes.
            let mut e = [0u8; 20];
            e[0] = ENTRY_PROCESSOR;
            e[1] = id;
            e[2] = LAPIC_VERSION;
            e[3] = CPU_FLAG_ENABLED | if id == 0 { CPU_FLAG_BSP } else { 0 };
            e[4..8].copy_from_slice(&CPU_SIGNATURE.to_le_bytes());
            e[8..12].copy_from_slice(&(CPU_FEATURE_FPU | CPU_FEATURE_APIC).to_le_bytes());
            push(&mut entries, &e);
        }
        // §4.3.2 Bus entries, 8 bytes; bus type strings from Table 4-7, blank padded.
        for (id, name) in [(PCI_BUS_ID, b"PCI   "), (ISA_BUS_ID, b"ISA   ")] {
            let mut e = [0u8; 8];
            e[0] = ENTRY_BUS;
            e[1] = id;
            e[2..8].copy_from_slice(name);
            push(&mut entries, &e);
        }
        // §4.3.3 I/O APIC entry, 8 bytes.
        let mut e = [0u8; 8];
        e[0] = ENTRY_IOAPIC;
        e[1] = self.ioapic_id;
        e[2] = IOAPIC_VERSION;
        e[3] = 1; // enabled
        e[4..8].copy_from_slice(&(IOAPIC_START as u32).to_le_bytes());
        push(&mut entries, &e);

        // §4.3.4 I/O interrupt assignment entries, 8 bytes each.
        let io_int = |int_type: u8, flags: u16, bus: u8, bus_irq: u8, pin: u8| {
            let mut e = [0u8; 8];
            e[0] = ENTRY_IO_INTERRUPT;
            e[1] = int_type;
            e[2..4].copy_from_slice(&flags.to_le_bytes());
            e[4] = bus;
            e[5] = bus_irq;
            e[6] = self.ioapic_id;
            e[7] = pin;
            e
        };
        // The 8259A's INTR output reaches I/O APIC pin 0 (virtual wire via the I/O APIC).
        push(
            &mut entries,
            &io_int(INT_TYPE_EXTINT, FLAGS_CONFORMING, ISA_BUS_ID, 0, 0),
        );
        for irq in 0u8..16 {
            let pin = match irq {
                0 => 2,        // PIT output is wired to pin 2 on PC boards.
                2 => continue, // 8259A cascade: not an interrupt source.
                n => n,
            };
            push(
                &mut entries,
                &io_int(INT_TYPE_INT, FLAGS_CONFORMING, ISA_BUS_ID, irq, pin),
            );
        }
        for p in &self.pci_intx {
            push(
                &mut entries,
                &io_int(
                    INT_TYPE_INT,
                    POLARITY_ACTIVE_LOW | TRIGGER_LEVEL,
                    PCI_BUS_ID,
                    (p.device << 2) | p.pin as u8,
                    p.ioapic_pin,
                ),
            );
        }
        // §4.3.5 Local interrupt assignment entries: LINT0 ExtINT, LINT1 NMI on all CPUs.
        for (int_type, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1u8)] {
            let mut e = [0u8; 8];
            e[0] = ENTRY_LOCAL_INTERRUPT;
            e[1] = int_type;
            e[2..4].copy_from_slice(&FLAGS_CONFORMING.to_le_bytes());
            e[4] = ISA_BUS_ID;
            e[5] = 0;
            e[6] = ALL_LOCAL_APICS;
            e[7] = lint;
            push(&mut entries, &e);
        }

        let table_len = CONFIG_HEADER_LEN + entries.len();
        let total = FLOATING_POINTER_LEN + table_len;
        let room = (HIMEM_START - MPTABLE_START) as usize;
        if total > room {
            return Err(MptableError::TooBig { size: total, room });
        }
        let table_len16 =
            u16::try_from(table_len).map_err(|_| MptableError::LengthOverflow(table_len))?;

        // §4.2 MP configuration table header, 44 bytes.
        let mut table = Vec::with_capacity(table_len);
        table.extend_from_slice(b"PCMP");
        table.extend_from_slice(&table_len16.to_le_bytes());
        table.push(MP_SPEC_REV_1_4);
        table.push(0); // checksum, below
        table.extend_from_slice(b"IRQVM   "); // OEM id, 8 bytes
        table.extend_from_slice(b"IRQVM MICRO "); // product id, 12 bytes
        table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
        table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
        table.extend_from_slice(&count.to_le_bytes());
        table.extend_from_slice(&(LAPIC_START as u32).to_le_bytes());
        table.extend_from_slice(&0u16.to_le_bytes()); // extended table length
        table.push(0); // extended table checksum
        table.push(0); // reserved
        debug_assert_eq!(table.len(), CONFIG_HEADER_LEN);
        table.extend_from_slice(&entries);
        table[7] = checksum(&table);

        // §4.1 MP floating pointer structure, 16 bytes, config table right after it.
        let config_addr = MPTABLE_START + FLOATING_POINTER_LEN as u64;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(b"_MP_");
        out.extend_from_slice(&(config_addr as u32).to_le_bytes());
        out.push(1); // length in 16-byte paragraphs
        out.push(MP_SPEC_REV_1_4);
        out.push(0); // checksum, below
                     // Feature byte 1 = 0: a configuration table is present. Feature byte 2 bit 7 (IMCRP)
                     // = 0: no IMCR, the machine comes up in virtual wire mode. Bytes 3-5 reserved.
        out.extend_from_slice(&[0; 5]);
        out[10] = checksum(&out);
        out.extend_from_slice(&table);
        Ok(out)
    }

    /// Write the tables at [`MPTABLE_START`].
    pub fn write<M: GuestMemory>(&self, mem: &M) -> Result<(), MptableError> {
        let bytes = self.to_bytes()?;
        mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
            .map_err(|source| MptableError::GuestMemory {
                addr: MPTABLE_START,
                source,
            })
    }
}

/// Write the MP floating pointer and configuration table for `num_cpus` vCPUs and an I/O APIC
/// with id `ioapic_id` at [`MPTABLE_START`]. See the module docs for what the table says.
pub fn setup_mptable<M: GuestMemory>(
    mem: &M,
    num_cpus: u8,
    ioapic_id: u8,
) -> Result<(), MptableError> {
    MpTable::new(num_cpus, ioapic_id)?.write(mem)
}

/// The byte that makes `data` sum to zero (mod 256) when stored in its checksum field.
fn checksum(data: &[u8]) -> u8 {
    0u8.wrapping_sub(data.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// Parsed view of what is in guest memory.
    struct Parsed {
        fp: Vec<u8>,
        table: Vec<u8>,
        entries: Vec<Vec<u8>>,
    }

    fn parse(mem: &GuestMemoryMmap) -> Parsed {
        let mut fp = vec![0u8; 16];
        mem.read_slice(&mut fp, GuestAddress(MPTABLE_START))
            .unwrap();
        let addr = u32::from_le_bytes(fp[4..8].try_into().unwrap()) as u64;
        let mut hdr = vec![0u8; 44];
        mem.read_slice(&mut hdr, GuestAddress(addr)).unwrap();
        let len = u16::from_le_bytes([hdr[4], hdr[5]]) as usize;
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(addr)).unwrap();
        let count = u16::from_le_bytes([table[34], table[35]]) as usize;
        let mut entries = Vec::new();
        let mut off = 44;
        for _ in 0..count {
            let l = if table[off] == ENTRY_PROCESSOR { 20 } else { 8 };
            entries.push(table[off..off + l].to_vec());
            off += l;
        }
        assert_eq!(off, len, "entry count and table length disagree");
        Parsed { fp, table, entries }
    }

    fn of_type(p: &Parsed, t: u8) -> Vec<&Vec<u8>> {
        p.entries.iter().filter(|e| e[0] == t).collect()
    }

    #[test]
    fn floating_pointer_has_signature_and_zero_checksum() {
        let m = mem();
        setup_mptable(&m, 1, 1).unwrap();
        let p = parse(&m);
        assert_eq!(&p.fp[0..4], b"_MP_");
        assert_eq!(p.fp[8], 1);
        assert_eq!(p.fp[9], 4);
        assert_eq!(
            p.fp[11], 0,
            "feature byte 1 must say a config table is present"
        );
        assert_eq!(sum(&p.fp), 0);
    }

    #[test]
    fn config_table_has_signature_and_zero_checksum() {
        let m = mem();
        setup_mptable(&m, 2, 2).unwrap();
        let p = parse(&m);
        assert_eq!(&p.table[0..4], b"PCMP");
        assert_eq!(p.table[6], 4);
        assert_eq!(sum(&p.table), 0);
        assert_eq!(
            u32::from_le_bytes(p.table[36..40].try_into().unwrap()) as u64,
            LAPIC_START
        );
    }

    #[test]
    fn one_processor_entry_per_cpu_with_bsp_flag_only_on_cpu0() {
        for n in [1u8, 2, 8] {
            let m = mem();
            setup_mptable(&m, n, n).unwrap();
            let p = parse(&m);
            let cpus = of_type(&p, ENTRY_PROCESSOR);
            assert_eq!(cpus.len(), n as usize);
            for (i, c) in cpus.iter().enumerate() {
                assert_eq!(c[1] as usize, i, "APIC id");
                assert_eq!(c[3] & CPU_FLAG_ENABLED, CPU_FLAG_ENABLED);
                assert_eq!(c[3] & CPU_FLAG_BSP != 0, i == 0);
            }
        }
    }

    #[test]
    fn pci_and_isa_buses_are_described() {
        let m = mem();
        setup_mptable(&m, 1, 1).unwrap();
        let p = parse(&m);
        let buses = of_type(&p, ENTRY_BUS);
        assert_eq!(buses.len(), 2);
        assert!(buses
            .iter()
            .any(|b| b[1] == PCI_BUS_ID && &b[2..8] == b"PCI   "));
        assert!(buses
            .iter()
            .any(|b| b[1] == ISA_BUS_ID && &b[2..8] == b"ISA   "));
    }

    #[test]
    fn ioapic_entry_has_id_version_and_address() {
        let m = mem();
        setup_mptable(&m, 2, 7).unwrap();
        let p = parse(&m);
        let io = of_type(&p, ENTRY_IOAPIC);
        assert_eq!(io.len(), 1);
        assert_eq!(io[0][1], 7);
        assert_eq!(io[0][2], IOAPIC_VERSION);
        assert_eq!(io[0][3] & 1, 1);
        assert_eq!(
            u32::from_le_bytes(io[0][4..8].try_into().unwrap()) as u64,
            IOAPIC_START
        );
    }

    #[test]
    fn isa_irq0_goes_to_pin2_and_others_are_identity_mapped() {
        let m = mem();
        setup_mptable(&m, 1, 1).unwrap();
        let p = parse(&m);
        let ints: Vec<_> = of_type(&p, ENTRY_IO_INTERRUPT)
            .into_iter()
            .filter(|e| e[1] == INT_TYPE_INT && e[4] == ISA_BUS_ID)
            .collect();
        assert_eq!(ints.len(), 15);
        for e in ints {
            assert_eq!(e[6], 1, "destination I/O APIC id");
            assert_eq!(u16::from_le_bytes([e[2], e[3]]), FLAGS_CONFORMING);
            let want = if e[5] == 0 { 2 } else { e[5] };
            assert_ne!(e[5], 2, "IRQ2 is the cascade");
            assert_eq!(e[7], want, "ISA IRQ {}", e[5]);
        }
    }

    #[test]
    fn pic_extint_is_on_ioapic_pin0() {
        let m = mem();
        setup_mptable(&m, 1, 1).unwrap();
        let p = parse(&m);
        let ext: Vec<_> = of_type(&p, ENTRY_IO_INTERRUPT)
            .into_iter()
            .filter(|e| e[1] == INT_TYPE_EXTINT)
            .collect();
        assert_eq!(ext.len(), 1);
        assert_eq!((ext[0][4], ext[0][5], ext[0][7]), (ISA_BUS_ID, 0, 0));
    }

    #[test]
    fn lint0_is_extint_and_lint1_is_nmi_on_all_cpus() {
        let m = mem();
        setup_mptable(&m, 2, 2).unwrap();
        let p = parse(&m);
        let l = of_type(&p, ENTRY_LOCAL_INTERRUPT);
        assert_eq!(l.len(), 2);
        assert!(l
            .iter()
            .any(|e| e[1] == INT_TYPE_EXTINT && e[7] == 0 && e[6] == 0xff));
        assert!(l
            .iter()
            .any(|e| e[1] == INT_TYPE_NMI && e[7] == 1 && e[6] == 0xff));
    }

    #[test]
    fn entries_are_sorted_by_type() {
        let m = mem();
        let mut t = MpTable::new(4, 4).unwrap();
        t.add_pci_intx(1, PciIntPin::IntA, 16).unwrap();
        t.write(&m).unwrap();
        let p = parse(&m);
        let types: Vec<u8> = p.entries.iter().map(|e| e[0]).collect();
        let mut sorted = types.clone();
        sorted.sort();
        assert_eq!(types, sorted);
    }

    #[test]
    fn pci_intx_entry_is_level_active_low_with_device_and_pin_encoded() {
        let m = mem();
        let mut t = MpTable::new(1, 1).unwrap();
        t.add_pci_intx(5, PciIntPin::IntC, 18).unwrap();
        t.write(&m).unwrap();
        let p = parse(&m);
        let pci: Vec<_> = of_type(&p, ENTRY_IO_INTERRUPT)
            .into_iter()
            .filter(|e| e[4] == PCI_BUS_ID)
            .collect();
        assert_eq!(pci.len(), 1);
        assert_eq!(u16::from_le_bytes([pci[0][2], pci[0][3]]), 0b1111);
        assert_eq!(pci[0][5], (5 << 2) | 2);
        assert_eq!(pci[0][7], 18);
        assert_eq!(sum(&p.table), 0);
    }

    #[test]
    fn pci_intx_rejects_bad_device_and_pin() {
        let mut t = MpTable::new(1, 1).unwrap();
        assert!(matches!(
            t.add_pci_intx(32, PciIntPin::IntA, 16),
            Err(MptableError::BadPciDevice(32))
        ));
        assert!(matches!(
            t.add_pci_intx(1, PciIntPin::IntA, IOAPIC_PINS),
            Err(MptableError::BadIoapicPin(_))
        ));
    }

    #[test]
    fn zero_cpus_is_an_error() {
        assert!(matches!(
            setup_mptable(&mem(), 0, 0),
            Err(MptableError::NoCpus)
        ));
    }

    #[test]
    fn max_cpus_still_fits_below_one_mib() {
        let m = mem();
        setup_mptable(&m, 255, 0).unwrap();
        assert_eq!(of_type(&parse(&m), ENTRY_PROCESSOR).len(), 255);
    }

    #[test]
    fn table_that_does_not_fit_below_one_mib_is_refused() {
        let mut t = MpTable::new(255, 0).unwrap();
        for i in 0..8000u32 {
            t.add_pci_intx((i % 32) as u8, PciIntPin::IntA, 16).unwrap();
        }
        assert!(matches!(t.to_bytes(), Err(MptableError::TooBig { .. })));
    }

    #[test]
    fn memory_without_low_ram_is_an_error() {
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            setup_mptable(&m, 1, 1),
            Err(MptableError::GuestMemory { .. })
        ));
    }
}
