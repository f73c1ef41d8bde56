//! ACPI 6.x tables for an x86 PC-compatible (not hardware-reduced) irqvm guest.
//!
//! [`create_acpi_tables`] lays out, from [`ACPI_START`] upwards (each table 16-byte aligned,
//! the FACS 64-byte aligned, everything below [`MPTABLE_START`]):
//!
//! | table | what it says |
//! |-------|--------------|
//! | RSDP  | revision 2, points at the XSDT (no RSDT). Linux finds it by scanning 0xE0000-0xFFFFF, or via `boot_params.acpi_rsdp_addr` / PVH `rsdp_paddr` (use the returned address). |
//! | XSDT  | FADT, MADT, and MCFG when [`AcpiConfig::pci`] is set. |
//! | FADT  | ACPI 6.5 FADT, *not* hardware-reduced: PM1a event block at [`ACPI_PM1A_EVT_PORT`] (4 bytes), PM1a control block at [`ACPI_PM1A_CNT_PORT`] (2 bytes), SCI on IRQ [`ACPI_SCI_IRQ`], no SMI command port (the machine is always in ACPI mode; the PM device reads SCI_EN as 1), no PM timer, no GPE blocks. IAPC_BOOT_ARCH: legacy devices + 8042 present, no VGA, CMOS RTC present. Flags: WBINVD, PWR_BUTTON and SLP_BUTTON (= no fixed-feature buttons), RESET_REG_SUP with the reset register = I/O port 0x64, value 0xFE (the i8042 pulse-reset command, which `devices::i8042` turns into a guest reset). CENTURY = CMOS index 0x32. X_DSDT / X_FIRMWARE_CTRL carry the addresses (32-bit fields 0, as ACPI 6.5 §5.2.9 requires when the X fields are used). |
//! | FACS  | version 2, 64 bytes, 64-byte aligned (ACPICA wants one for a non-reduced platform). |
//! | DSDT  | `\_S5_` = {5, 5, 0, 0} (SLP_TYP 5 + SLP_EN in PM1a_CNT = power off in `devices::acpi_pm`); one `ACPI0007` processor device per vCPU (`_UID` = MADT processor UID); COM1 (`PNP0501`, IO 0x3F8-0x3FF, IRQ 4); the CMOS RTC (`PNP0B00`, IO 0x70-0x71, IRQ 8); with [`AcpiConfig::pci`]: a PCIe host bridge `PCI0` (`PNP0A08`/`PNP0A03`, bus range, CF8 ports, I/O and 32-bit MMIO windows, `_PRT` from [`PciHostConfig::prt`]) and a `PNP0C02` motherboard device reserving the ECAM window; one `LNRO0005` device per [`VirtioMmioDevice`]. |
//! | MADT  | local APIC at [`LAPIC_START`], PCAT_COMPAT (8259As present); a Processor Local APIC entry per vCPU (UID = APIC id = index); the I/O APIC (id [`AcpiConfig::ioapic_id`], [`IOAPIC_START`], GSI base 0); Interrupt Source Overrides ISA IRQ 0 -> GSI 2 (edge, active high) and the SCI IRQ 9 -> GSI 9 (level, active high); Local APIC NMI on LINT1 for all processors. |
//! | MCFG  | with [`AcpiConfig::pci`]: one ECAM allocation, segment 0. |
//!
//! # Usage
//!
//! ```no_run
//! # use vm_memory::{GuestAddress, GuestMemoryMmap};
//! # let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
//! use boot::acpi::{create_acpi_tables, AcpiConfig};
//! let rsdp = create_acpi_tables(&mem, &AcpiConfig::new(2))?;
//! // Tell the kernel: boot_params.acpi_rsdp_addr = rsdp.0 (or PVH start_info.rsdp_paddr).
//! # Ok::<(), boot::acpi::AcpiError>(())
//! ```
//!
//! [`build_acpi_tables`] returns the same bytes without touching guest memory (tests, dumps).

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, Interrupt, Memory32Fixed, Name, Package,
    ResourceTemplate, IO,
};
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::layout::{
    ACPI_PM1A_CNT_PORT, ACPI_PM1A_EVT_PORT, ACPI_SCI_IRQ, ACPI_START, IOAPIC_START, LAPIC_START,
    MPTABLE_START, PCI_ECAM_START, PCI_MMIO_END, PCI_MMIO_START, SERIAL_IRQ, SERIAL_PORT,
};

/// OEM ID in every table header.
pub const OEM_ID: [u8; 6] = *b"IRQVM ";
const OEM_REVISION: u32 = 1;

/// PM1 control SLP_TYP value for S5 in `\_S5_`; `devices::acpi_pm` powers off on it.
pub const SLP_TYP_S5: u8 = 5;
/// CMOS index of the century byte (FADT CENTURY); `devices::cmos` serves it.
pub const CMOS_CENTURY_INDEX: u8 = 0x32;
/// FADT reset register: the i8042 command port and its pulse-reset command.
pub const RESET_PORT: u16 = 0x64;
pub const RESET_VALUE: u8 = 0xfe;

/// IAPC_BOOT_ARCH bits, ACPI 6.5 Table 5.11.
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;

/// MADT flags and structure types, ACPI 6.5 §5.2.12.
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_REVISION: u8 = 5;
const MADT_TYPE_ISO: u8 = 2;
const MADT_TYPE_LAPIC_NMI: u8 = 4;
/// MPS INTI flags (ACPI 6.5 Table 5.26): polarity bits 1:0, trigger mode bits 3:2.
const MPS_ACTIVE_HIGH: u16 = 0b01;
const MPS_EDGE: u16 = 0b01 << 2;
const MPS_LEVEL: u16 = 0b11 << 2;
/// "All processors" in a Local APIC NMI structure.
const ALL_PROCESSORS: u8 = 0xff;

/// CMOS/RTC index port and ISA IRQ.
const RTC_PORT: u16 = 0x70;
const RTC_IRQ: u32 = 8;

/// The GSI the PIT (ISA IRQ 0) is overridden to.
pub const PIT_GSI: u32 = 2;

/// What the tables describe. Build with [`AcpiConfig::new`] and adjust fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiConfig {
    /// vCPUs; local APIC ids and ACPI processor UIDs are `0..num_cpus`.
    pub num_cpus: u8,
    /// I/O APIC id; defaults to `num_cpus` so it does not clash with a local APIC id.
    pub ioapic_id: u8,
    /// PCI host bridge + MCFG; `None` = no PCI in ACPI (Linux then probes 0xCF8 itself).
    pub pci: Option<PciHostConfig>,
    /// virtio-mmio transports to announce as `LNRO0005` devices.
    pub virtio_mmio: Vec<VirtioMmioDevice>,
}

impl AcpiConfig {
    /// `num_cpus` vCPUs, I/O APIC id `num_cpus`, no PCI, no virtio-mmio devices.
    pub fn new(num_cpus: u8) -> Self {
        Self {
            num_cpus,
            ioapic_id: num_cpus,
            pci: None,
            virtio_mmio: Vec::new(),
        }
    }
}

/// The PCIe host bridge on segment 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciHostConfig {
    /// ECAM (MMCONFIG) base; must be below 4 GiB.
    pub ecam_base: u64,
    /// Last bus number decoded (ECAM size = (end_bus + 1) MiB).
    pub end_bus: u8,
    /// INTx routing for bus 0 (`_PRT`).
    pub prt: Vec<PciRoute>,
}

impl Default for PciHostConfig {
    /// ECAM at [`PCI_ECAM_START`] for buses 0-255, no INTx routes.
    fn default() -> Self {
        Self {
            ecam_base: PCI_ECAM_START,
            end_bus: 255,
            prt: Vec::new(),
        }
    }
}

/// One `_PRT` entry: bus 0 `device`'s interrupt `pin` (0 = INTA# .. 3 = INTD#) is wired to `gsi`
/// (ACPI 6.5 §6.2.13, GSI form: Source = 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciRoute {
    pub device: u8,
    pub pin: u8,
    pub gsi: u32,
}

/// A virtio-mmio transport: `len` bytes of registers at `addr`, edge-triggered interrupt `gsi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioDevice {
    pub addr: u64,
    pub len: u64,
    pub gsi: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables need at least one vCPU; pass num_cpus >= 1")]
    NoCpus,
    #[error(
        "ACPI tables need {size} bytes but only {room} fit between ACPI_START and MPTABLE_START; \
         use fewer vCPUs or devices"
    )]
    TooBig { size: usize, room: usize },
    #[error("{what} at {addr:#x}+{len:#x} must lie below 4 GiB for a 32-bit ACPI descriptor")]
    Above4G {
        what: &'static str,
        addr: u64,
        len: u64,
    },
    #[error("{0} virtio-mmio devices requested; at most 256 have DSDT names")]
    TooManyVirtioDevices(usize),
    #[error("_PRT entry device {device} pin {pin} is invalid; devices are 0..=31, pins 0..=3")]
    BadPciRoute { device: u8, pin: u8 },
    #[error(
        "writing ACPI tables to guest memory at {addr:#x} failed ({source}); is low RAM mapped?"
    )]
    GuestMemory {
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
}

/// The tables laid out for guest address [`AcpiTables::start`].
#[derive(Debug, Clone)]
pub struct AcpiTables {
    /// Guest address of `bytes[0]` (= the RSDP).
    pub start: GuestAddress,
    /// Everything from the RSDP to the end of the last table.
    pub bytes: Vec<u8>,
    /// (signature, guest address, length) of each table, RSDP first.
    pub tables: Vec<([u8; 4], GuestAddress, usize)>,
}

impl AcpiTables {
    /// The bytes of the table with `signature` (`b"RSD "` for the RSDP).
    pub fn table(&self, signature: &[u8; 4]) -> Option<&[u8]> {
        let (_, addr, len) = self.tables.iter().find(|(s, _, _)| s == signature)?;
        let off = usize::try_from(addr.0.checked_sub(self.start.0)?).ok()?;
        self.bytes.get(off..off.checked_add(*len)?)
    }
}

fn aml_bytes(a: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    a.to_aml_bytes(&mut v);
    v
}

fn to_u32(what: &'static str, addr: u64, len: u64) -> Result<(u32, u32), AcpiError> {
    let err = || AcpiError::Above4G { what, addr, len };
    let end = addr.checked_add(len).ok_or_else(err)?;
    if end > 1 << 32 {
        return Err(err());
    }
    Ok((addr as u32, u32::try_from(len).map_err(|_| err())?))
}

/// DSDT definition block contents (AML), ACPI 6.5 §5.2.11.1 / §19.
fn dsdt_aml(cfg: &AcpiConfig) -> Result<Vec<u8>, AcpiError> {
    let mut aml = Vec::new();

    // \_S5_: {SLP_TYPa, SLP_TYPb, reserved, reserved} (§7.4.2).
    Name::new(
        "_S5_".into(),
        &Package::new(vec![&SLP_TYP_S5, &SLP_TYP_S5, &0u8, &0u8]),
    )
    .to_aml_bytes(&mut aml);

    // Processor devices (§8.4, "ACPI0007"), matched to MADT entries by _UID.
    for i in 0..cfg.num_cpus {
        let path = format!("\\_SB_.C{i:03X}");
        Device::new(
            path.as_str().into(),
            vec![
                &Name::new("_HID".into(), &"ACPI0007"),
                &Name::new("_UID".into(), &u32::from(i)),
            ],
        )
        .to_aml_bytes(&mut aml);
    }

    // COM1: 16550 UART (PNP0501), I/O 0x3F8-0x3FF, ISA IRQ 4 (edge, active high, exclusive).
    let com1_io = IO::new(SERIAL_PORT, SERIAL_PORT, 1, 8);
    let com1_irq = Interrupt::new(true, true, false, false, u32::from(SERIAL_IRQ));
    let com1_crs = ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    Device::new(
        "\\_SB_.COM1".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0501")),
            &Name::new("_UID".into(), &1u8),
            &Name::new("_CRS".into(), &com1_crs),
        ],
    )
    .to_aml_bytes(&mut aml);

    // CMOS RTC (PNP0B00, MC146818 compatible): I/O 0x70-0x71, ISA IRQ 8. `devices::cmos`
    // serves the ports; it raises no IRQ 8 (no alarm/periodic/update interrupts).
    let rtc_io = IO::new(RTC_PORT, RTC_PORT, 1, 2);
    let rtc_irq = Interrupt::new(true, true, false, false, RTC_IRQ);
    let rtc_crs = ResourceTemplate::new(vec![&rtc_io, &rtc_irq]);
    Device::new(
        "\\_SB_.RTC_".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0B00")),
            &Name::new("_CRS".into(), &rtc_crs),
        ],
    )
    .to_aml_bytes(&mut aml);

    if let Some(pci) = &cfg.pci {
        pci_host_aml(pci, &mut aml)?;
    }

    if cfg.virtio_mmio.len() > 256 {
        return Err(AcpiError::TooManyVirtioDevices(cfg.virtio_mmio.len()));
    }
    for (i, dev) in cfg.virtio_mmio.iter().enumerate() {
        let (base, len) = to_u32("virtio-mmio device", dev.addr, dev.len)?;
        let regs = Memory32Fixed::new(true, base, len);
        let irq = Interrupt::new(true, true, false, false, dev.gsi);
        let crs = ResourceTemplate::new(vec![&regs, &irq]);
        let path = format!("\\_SB_.VR{i:02X}");
        Device::new(
            path.as_str().into(),
            vec![
                &Name::new("_HID".into(), &"LNRO0005"),
                &Name::new("_UID".into(), &(i as u32)),
                &Name::new("_CCA".into(), &1u8), // cache coherent DMA
                &Name::new("_CRS".into(), &crs),
            ],
        )
        .to_aml_bytes(&mut aml);
    }
    Ok(aml)
}

/// PCIe host bridge (§9.11, PNP0A08 with PNP0A03 compatible id) and the ECAM reservation.
fn pci_host_aml(pci: &PciHostConfig, aml: &mut Vec<u8>) -> Result<(), AcpiError> {
    let ecam_len = (u64::from(pci.end_bus) + 1) << 20;
    let (ecam_base, ecam_len) = to_u32("PCI ECAM", pci.ecam_base, ecam_len)?;

    let bus = AddressSpace::<u16>::new_bus_number(0, u16::from(pci.end_bus));
    let cf8 = IO::new(0xcf8, 0xcf8, 1, 8);
    let io_lo = AddressSpace::<u16>::new_io(0x0000, 0x0cf7, None);
    let io_hi = AddressSpace::<u16>::new_io(0x0d00, 0xffff, None);
    let mmio = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO_START as u32,
        (PCI_MMIO_END - 1) as u32,
        None,
    );
    let crs = ResourceTemplate::new(vec![&bus, &cf8, &io_lo, &io_hi, &mmio]);

    // _PRT: Package { Address = device << 16 | 0xFFFF, Pin, Source = 0, Source Index = GSI }.
    let mut routes: Vec<(u32, u8, u32)> = Vec::with_capacity(pci.prt.len());
    for r in &pci.prt {
        if r.device > 31 || r.pin > 3 {
            return Err(AcpiError::BadPciRoute {
                device: r.device,
                pin: r.pin,
            });
        }
        routes.push(((u32::from(r.device) << 16) | 0xffff, r.pin, r.gsi));
    }
    let entries: Vec<Package> = routes
        .iter()
        .map(|(addr, pin, gsi)| Package::new(vec![addr, pin, &0u8, gsi]))
        .collect();
    let prt = Package::new(entries.iter().map(|p| p as &dyn Aml).collect());

    Device::new(
        "\\_SB_.PCI0".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0A08")),
            &Name::new("_CID".into(), &EISAName::new("PNP0A03")),
            &Name::new("_SEG".into(), &0u8),
            &Name::new("_UID".into(), &0u8),
            &Name::new("_BBN".into(), &0u8),
            &Name::new("_CRS".into(), &crs),
            &Name::new("_PRT".into(), &prt),
        ],
    )
    .to_aml_bytes(aml);

    // Linux only trusts MCFG when a motherboard resource (PNP0C02) reserves the window.
    let ecam = Memory32Fixed::new(false, ecam_base, ecam_len);
    let res = ResourceTemplate::new(vec![&ecam]);
    Device::new(
        "\\_SB_.MRES".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0C02")),
            &Name::new("_UID".into(), &1u8),
            &Name::new("_CRS".into(), &res),
        ],
    )
    .to_aml_bytes(aml);
    Ok(())
}

/// MADT, ACPI 6.5 §5.2.12.
fn madt(cfg: &AcpiConfig) -> Sdt {
    let mut t = Sdt::new(
        *b"APIC",
        44,
        MADT_REVISION,
        OEM_ID,
        *b"IRQVMAPC",
        OEM_REVISION,
    );
    t.write_u32(36, LAPIC_START as u32);
    t.write_u32(40, MADT_PCAT_COMPAT);
    let mut body = Vec::new();
    for i in 0..cfg.num_cpus {
        ProcessorLocalApic::new(i, i, EnabledStatus::Enabled).to_aml_bytes(&mut body);
    }
    IoApic::new(cfg.ioapic_id, IOAPIC_START as u32, 0).to_aml_bytes(&mut body);
    // Interrupt Source Override (§5.2.12.5): bus 0 (ISA), source IRQ, GSI, MPS INTI flags.
    let iso = |body: &mut Vec<u8>, irq: u8, gsi: u32, flags: u16| {
        body.extend_from_slice(&[MADT_TYPE_ISO, 10, 0, irq]);
        body.extend_from_slice(&gsi.to_le_bytes());
        body.extend_from_slice(&flags.to_le_bytes());
    };
    iso(&mut body, 0, PIT_GSI, MPS_EDGE | MPS_ACTIVE_HIGH);
    iso(
        &mut body,
        ACPI_SCI_IRQ,
        u32::from(ACPI_SCI_IRQ),
        MPS_LEVEL | MPS_ACTIVE_HIGH,
    );
    // Local APIC NMI (§5.2.12.7): all processors, LINT1, edge/high as NMI is.
    body.extend_from_slice(&[MADT_TYPE_LAPIC_NMI, 6, ALL_PROCESSORS]);
    body.extend_from_slice(&(MPS_EDGE | MPS_ACTIVE_HIGH).to_le_bytes());
    body.push(1);
    t.append_slice(&body);
    t
}

fn mcfg(pci: &PciHostConfig) -> Vec<u8> {
    let mut m = MCFG::new(OEM_ID, *b"IRQVMMCF", OEM_REVISION);
    m.add_ecam(pci.ecam_base, 0, 0, pci.end_bus);
    aml_bytes(&m)
}

/// A Generic Address Structure (ACPI 6.5 §5.2.3.2) for `bytes` bytes of I/O ports at `port`.
fn io_gas(port: u16, bytes: u8, access: AccessSize) -> GAS {
    GAS::new(GasSpace::SystemIo, bytes * 8, 0, access, u64::from(port))
}

/// FADT, ACPI 6.5 §5.2.9.
fn fadt(dsdt: u64, facs: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, *b"IRQVMFAC", OEM_REVISION)
        .dsdt_64(dsdt)
        .firmware_ctrl_64(facs)
        .flag(Flags::Wbinvd)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    f.sci_int = u16::from(ACPI_SCI_IRQ).into();
    // SMI_CMD = 0: no SMM handoff, the platform is always in ACPI mode (§5.2.9 Table 5.9).
    f.pm1a_evt_blk = u32::from(ACPI_PM1A_EVT_PORT).into();
    f.pm1a_cnt_blk = u32::from(ACPI_PM1A_CNT_PORT).into();
    f.pm1_evt_len = 4;
    f.pm1_cnt_len = 2;
    // Access size "undefined (legacy)": the PM1 event block is two 16-bit registers (status,
    // enable) that OSPM must access separately (§4.8.3.1); a DWORD access size would invite a
    // 32-bit write to PM1_STS clobbering PM1_EN.
    f.x_pm1a_evt_blk = io_gas(ACPI_PM1A_EVT_PORT, 4, AccessSize::Undefined);
    f.x_pm1a_cnt_blk = io_gas(ACPI_PM1A_CNT_PORT, 2, AccessSize::Undefined);
    f.century = CMOS_CENTURY_INDEX;
    f.iapc_boot_arch = (IAPC_LEGACY_DEVICES | IAPC_8042 | IAPC_VGA_NOT_PRESENT).into();
    f.reset_reg = io_gas(RESET_PORT, 1, AccessSize::ByteAccess);
    f.reset_value = RESET_VALUE;
    aml_bytes(&f.finalize())
}

fn facs() -> Vec<u8> {
    let mut f = FACS::new();
    f.version = 2;
    aml_bytes(&f)
}

fn align(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Build all tables for placement at [`ACPI_START`] without writing guest memory.
pub fn build_acpi_tables(cfg: &AcpiConfig) -> Result<AcpiTables, AcpiError> {
    if cfg.num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, *b"IRQVMDSD", OEM_REVISION);
    dsdt.append_slice(&dsdt_aml(cfg)?);
    let dsdt = dsdt.as_slice().to_vec();
    let madt = madt(cfg).as_slice().to_vec();
    let mcfg = cfg.pci.as_ref().map(mcfg);
    let facs = facs();

    // Addresses: RSDP, XSDT, FADT, FACS, DSDT, MADT, MCFG.
    let xsdt_entries = 2 + usize::from(mcfg.is_some());
    let rsdp_addr = ACPI_START;
    let xsdt_addr = align(rsdp_addr + Rsdp::len() as u64, 16);
    let fadt_addr = align(xsdt_addr + 36 + 8 * xsdt_entries as u64, 16);
    let fadt_len = acpi_tables::fadt::FADT::len() as u64;
    let facs_addr = align(fadt_addr + fadt_len, 64);
    let dsdt_addr = align(facs_addr + facs.len() as u64, 16);
    let madt_addr = align(dsdt_addr + dsdt.len() as u64, 16);
    let mcfg_addr = align(madt_addr + madt.len() as u64, 16);

    let fadt = fadt(dsdt_addr, facs_addr);
    let mut xsdt = XSDT::new(OEM_ID, *b"IRQVMXSD", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    if mcfg.is_some() {
        xsdt.add_entry(mcfg_addr);
    }
    let xsdt = aml_bytes(&xsdt);
    let rsdp = aml_bytes(&Rsdp::new(OEM_ID, xsdt_addr));

    let mut placed: Vec<([u8; 4], u64, Vec<u8>)> = vec![
        (*b"RSD ", rsdp_addr, rsdp),
        (*b"XSDT", xsdt_addr, xsdt),
        (*b"FACP", fadt_addr, fadt),
        (*b"FACS", facs_addr, facs),
        (*b"DSDT", dsdt_addr, dsdt),
        (*b"APIC", madt_addr, madt),
    ];
    if let Some(m) = mcfg {
        placed.push((*b"MCFG", mcfg_addr, m));
    }

    let end = placed
        .iter()
        .map(|(_, a, b)| a + b.len() as u64)
        .max()
        .unwrap_or(ACPI_START);
    let size = (end - ACPI_START) as usize;
    let room = (MPTABLE_START - ACPI_START) as usize;
    if size > room {
        return Err(AcpiError::TooBig { size, room });
    }
    let mut bytes = vec![0u8; size];
    let mut tables = Vec::with_capacity(placed.len());
    for (sig, addr, b) in placed {
        let off = (addr - ACPI_START) as usize;
        bytes[off..off + b.len()].copy_from_slice(&b);
        tables.push((sig, GuestAddress(addr), b.len()));
    }
    Ok(AcpiTables {
        start: GuestAddress(ACPI_START),
        bytes,
        tables,
    })
}

/// Write the ACPI tables described by `cfg` at [`ACPI_START`] and return the RSDP's address.
pub fn create_acpi_tables<M: GuestMemory>(
    mem: &M,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    let t = build_acpi_tables(cfg)?;
    mem.write_slice(&t.bytes, t.start)
        .map_err(|source| AcpiError::GuestMemory {
            addr: t.start.0,
            source,
        })?;
    Ok(t.start)
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

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Read an SDT from guest memory by its header length.
    fn read_sdt(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let hdr = read(mem, addr, 36);
        read(mem, addr, u32_at(&hdr, 4) as usize)
    }

    /// Walk RSDP -> XSDT -> tables in guest memory, like an OS does.
    fn walk(mem: &GuestMemoryMmap, rsdp: GuestAddress) -> Vec<(u64, Vec<u8>)> {
        let r = read(mem, rsdp.0, 36);
        let xsdt = read_sdt(mem, u64_at(&r, 24));
        let n = (xsdt.len() - 36) / 8;
        (0..n)
            .map(|i| {
                let a = u64_at(&xsdt, 36 + 8 * i);
                (a, read_sdt(mem, a))
            })
            .collect()
    }

    fn find<'a>(tables: &'a [(u64, Vec<u8>)], sig: &[u8; 4]) -> &'a [u8] {
        &tables.iter().find(|(_, t)| &t[0..4] == sig).unwrap().1
    }

    /// MADT structures as (type, bytes).
    fn madt_entries(madt: &[u8]) -> Vec<&[u8]> {
        let mut v = Vec::new();
        let mut off = 44;
        while off < madt.len() {
            let len = madt[off + 1] as usize;
            assert!(len >= 2, "zero-length MADT structure");
            v.push(&madt[off..off + len]);
            off += len;
        }
        assert_eq!(off, madt.len(), "MADT structures overrun the table");
        v
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn rsdp_is_at_acpi_start_with_both_checksums_zero() {
        let m = mem();
        let rsdp = create_acpi_tables(&m, &AcpiConfig::new(1)).unwrap();
        assert_eq!(rsdp, GuestAddress(ACPI_START));
        assert_eq!(
            rsdp.0 % 16,
            0,
            "RSDP must be 16-byte aligned for the BIOS scan"
        );
        let r = read(&m, rsdp.0, 36);
        assert_eq!(&r[0..8], b"RSD PTR ");
        assert_eq!(r[15], 2, "revision 2 (XSDT present)");
        assert_eq!(u32_at(&r, 20), 36);
        assert_eq!(sum(&r[0..20]), 0);
        assert_eq!(sum(&r), 0);
        assert_ne!(u64_at(&r, 24), 0);
    }

    #[test]
    fn every_table_has_its_signature_length_and_zero_checksum() {
        let m = mem();
        let mut cfg = AcpiConfig::new(2);
        cfg.pci = Some(PciHostConfig::default());
        let rsdp = create_acpi_tables(&m, &cfg).unwrap();
        let tables = walk(&m, rsdp);
        let sigs: Vec<&[u8]> = tables.iter().map(|(_, t)| &t[0..4]).collect();
        assert_eq!(sigs, vec![&b"FACP"[..], b"APIC", b"MCFG"]);
        for (addr, t) in &tables {
            assert_eq!(sum(t), 0, "{} checksum", String::from_utf8_lossy(&t[0..4]));
            assert_eq!(addr % 8, 0);
            assert!(addr + t.len() as u64 <= MPTABLE_START);
        }
        let xsdt = read_sdt(&m, u64_at(&read(&m, rsdp.0, 36), 24));
        assert_eq!(&xsdt[0..4], b"XSDT");
        assert_eq!(sum(&xsdt), 0);
    }

    #[test]
    fn fadt_points_at_pm1_blocks_sci_and_reset_register() {
        let m = mem();
        let tables = walk(&m, create_acpi_tables(&m, &AcpiConfig::new(1)).unwrap());
        let f = find(&tables, b"FACP");
        assert_eq!(f.len(), 276, "ACPI 6.5 FADT length");
        assert_eq!(u16_at(f, 46), u16::from(ACPI_SCI_IRQ), "SCI_INT");
        assert_eq!(u32_at(f, 48), 0, "SMI_CMD: always in ACPI mode");
        assert_eq!(u32_at(f, 56), u32::from(ACPI_PM1A_EVT_PORT));
        assert_eq!(u32_at(f, 64), u32::from(ACPI_PM1A_CNT_PORT));
        assert_eq!((f[88], f[89]), (4, 2), "PM1_EVT_LEN, PM1_CNT_LEN");
        assert_eq!(f[108], CMOS_CENTURY_INDEX);
        let flags = u32_at(f, 112);
        assert_ne!(flags & Flags::Wbinvd as u32, 0);
        assert_ne!(flags & Flags::ResetRegSup as u32, 0);
        assert_ne!(flags & Flags::PwrButton as u32, 0);
        assert_ne!(flags & Flags::SlpButton as u32, 0);
        assert_eq!(flags & Flags::HwReducedAcpi as u32, 0);
        // Reset register: SystemIO byte at 0x64, value 0xFE.
        assert_eq!(f[116], 1);
        assert_eq!(f[117], 8);
        assert_eq!(u64_at(f, 120), u64::from(RESET_PORT));
        assert_eq!(f[128], RESET_VALUE);
        // X_PM1a_EVT_BLK / X_PM1a_CNT_BLK agree with the 32-bit fields.
        assert_eq!((f[148], f[149]), (1, 32));
        assert_eq!(u64_at(f, 152), u64::from(ACPI_PM1A_EVT_PORT));
        assert_eq!((f[172], f[173]), (1, 16));
        assert_eq!(u64_at(f, 176), u64::from(ACPI_PM1A_CNT_PORT));
    }

    #[test]
    fn fadt_boot_arch_says_legacy_devices_and_8042_but_no_vga() {
        let m = mem();
        let tables = walk(&m, create_acpi_tables(&m, &AcpiConfig::new(1)).unwrap());
        let f = find(&tables, b"FACP");
        assert_eq!(u16_at(f, 109), 0b0111);
    }

    #[test]
    fn fadt_x_dsdt_and_x_firmware_ctrl_point_at_dsdt_and_aligned_facs() {
        let m = mem();
        let tables = walk(&m, create_acpi_tables(&m, &AcpiConfig::new(1)).unwrap());
        let f = find(&tables, b"FACP");
        assert_eq!((u32_at(f, 36), u32_at(f, 40)), (0, 0));
        let facs_addr = u64_at(f, 132);
        let dsdt_addr = u64_at(f, 140);
        assert_eq!(facs_addr % 64, 0, "FACS must be 64-byte aligned");
        let facs = read(&m, facs_addr, 64);
        assert_eq!(&facs[0..4], b"FACS");
        assert_eq!(u32_at(&facs, 4), 64);
        let dsdt = read_sdt(&m, dsdt_addr);
        assert_eq!(&dsdt[0..4], b"DSDT");
        assert_eq!(sum(&dsdt), 0);
    }

    #[test]
    fn madt_has_one_local_apic_per_cpu() {
        for n in [1u8, 2] {
            let m = mem();
            let tables = walk(&m, create_acpi_tables(&m, &AcpiConfig::new(n)).unwrap());
            let madt = find(&tables, b"APIC");
            let lapics: Vec<_> = madt_entries(madt)
                .into_iter()
                .filter(|e| e[0] == 0)
                .collect();
            assert_eq!(lapics.len(), n as usize);
            for (i, e) in lapics.iter().enumerate() {
                assert_eq!((e[2] as usize, e[3] as usize), (i, i), "UID, APIC id");
                assert_eq!(u32_at(e, 4) & 1, 1, "enabled");
            }
        }
    }

    #[test]
    fn madt_header_has_lapic_address_and_pcat_compat() {
        let m = mem();
        let tables = walk(&m, create_acpi_tables(&m, &AcpiConfig::new(1)).unwrap());
        let madt = find(&tables, b"APIC");
        assert_eq!(u32_at(madt, 36) as u64, LAPIC_START);
        assert_eq!(u32_at(madt, 40) & MADT_PCAT_COMPAT, MADT_PCAT_COMPAT);
    }

    #[test]
    fn madt_ioapic_entry_has_configured_id_and_gsi_base_zero() {
        let m = mem();
        let mut cfg = AcpiConfig::new(2);
        cfg.ioapic_id = 9;
        let tables = walk(&m, create_acpi_tables(&m, &cfg).unwrap());
        let io: Vec<_> = madt_entries(find(&tables, b"APIC"))
            .into_iter()
            .filter(|e| e[0] == 1)
            .collect();
        assert_eq!(io.len(), 1);
        assert_eq!(io[0][2], 9);
        assert_eq!(u32_at(io[0], 4) as u64, IOAPIC_START);
        assert_eq!(u32_at(io[0], 8), 0);
    }

    #[test]
    fn madt_overrides_irq0_to_gsi2_edge_and_sci_level_high() {
        let m = mem();
        let tables = walk(&m, create_acpi_tables(&m, &AcpiConfig::new(2)).unwrap());
        let isos: Vec<_> = madt_entries(find(&tables, b"APIC"))
            .into_iter()
            .filter(|e| e[0] == MADT_TYPE_ISO)
            .map(|e| (e[2], e[3], u32_at(e, 4), u16_at(e, 8)))
            .collect();
        assert_eq!(
            isos,
            vec![
                (0, 0, 2, 0b0101),
                (0, ACPI_SCI_IRQ, u32::from(ACPI_SCI_IRQ), 0b1101)
            ]
        );
    }

    #[test]
    fn madt_routes_nmi_to_lint1_of_all_processors() {
        let m = mem();
        let tables = walk(&m, create_acpi_tables(&m, &AcpiConfig::new(2)).unwrap());
        let nmis: Vec<_> = madt_entries(find(&tables, b"APIC"))
            .into_iter()
            .filter(|e| e[0] == MADT_TYPE_LAPIC_NMI)
            .collect();
        assert_eq!(nmis.len(), 1);
        assert_eq!((nmis[0][2], nmis[0][5]), (0xff, 1));
    }

    #[test]
    fn dsdt_declares_s5_com1_and_processors() {
        let t = build_acpi_tables(&AcpiConfig::new(2)).unwrap();
        let dsdt = t.table(b"DSDT").unwrap();
        // NameOp "_S5_" PackageOp
        assert!(contains(dsdt, b"\x08_S5_\x12"));
        // EISAID("PNP0501") = 0x0105D041, as a DWordConst.
        assert!(contains(dsdt, &[0x0c, 0x41, 0xd0, 0x05, 0x01]));
        assert!(contains(dsdt, b"COM1"));
        // IO descriptor: Decode16, 0x3F8..0x3F8, align 1, length 8.
        assert!(contains(
            dsdt,
            &[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]
        ));
        assert!(contains(dsdt, b"C000") && contains(dsdt, b"C001") && !contains(dsdt, b"C002"));
        assert!(
            !contains(dsdt, b"PCI0"),
            "no PCI host bridge unless configured"
        );
    }

    #[test]
    fn pci_config_adds_mcfg_host_bridge_and_prt() {
        let mut cfg = AcpiConfig::new(1);
        cfg.pci = Some(PciHostConfig {
            prt: vec![PciRoute {
                device: 3,
                pin: 0,
                gsi: 16,
            }],
            ..Default::default()
        });
        let t = build_acpi_tables(&cfg).unwrap();
        let mcfg = t.table(b"MCFG").unwrap();
        assert_eq!(mcfg.len(), 60);
        assert_eq!(u64_at(mcfg, 44), PCI_ECAM_START);
        assert_eq!((u16_at(mcfg, 52), mcfg[54], mcfg[55]), (0, 0, 255));
        let dsdt = t.table(b"DSDT").unwrap();
        assert!(contains(dsdt, b"PCI0") && contains(dsdt, b"_PRT") && contains(dsdt, b"MRES"));
        // _PRT address 0x0003FFFF as a DWordConst.
        assert!(contains(dsdt, &[0x0c, 0xff, 0xff, 0x03, 0x00]));
    }

    #[test]
    fn bad_prt_entry_is_refused() {
        let mut cfg = AcpiConfig::new(1);
        cfg.pci = Some(PciHostConfig {
            prt: vec![PciRoute {
                device: 32,
                pin: 0,
                gsi: 16,
            }],
            ..Default::default()
        });
        assert!(matches!(
            build_acpi_tables(&cfg),
            Err(AcpiError::BadPciRoute { device: 32, .. })
        ));
    }

    #[test]
    fn virtio_mmio_devices_get_lnro0005_nodes() {
        let mut cfg = AcpiConfig::new(1);
        cfg.virtio_mmio = vec![
            VirtioMmioDevice {
                addr: 0xd000_0000,
                len: 0x1000,
                gsi: 5,
            };
            2
        ];
        let t = build_acpi_tables(&cfg).unwrap();
        let dsdt = t.table(b"DSDT").unwrap();
        assert!(contains(dsdt, b"LNRO0005\0"));
        assert!(contains(dsdt, b"VR00") && contains(dsdt, b"VR01"));
    }

    #[test]
    fn virtio_mmio_above_4g_is_refused() {
        let mut cfg = AcpiConfig::new(1);
        cfg.virtio_mmio.push(VirtioMmioDevice {
            addr: 0xffff_f000,
            len: 0x2000,
            gsi: 5,
        });
        assert!(matches!(
            build_acpi_tables(&cfg),
            Err(AcpiError::Above4G { .. })
        ));
    }

    #[test]
    fn zero_cpus_is_an_error() {
        assert!(matches!(
            build_acpi_tables(&AcpiConfig::new(0)),
            Err(AcpiError::NoCpus)
        ));
    }

    #[test]
    fn max_cpus_fit_below_the_mp_table() {
        let t = build_acpi_tables(&AcpiConfig::new(255)).unwrap();
        assert!(t.start.0 + t.bytes.len() as u64 <= MPTABLE_START);
    }

    #[test]
    fn too_many_tables_for_the_window_is_refused() {
        let mut cfg = AcpiConfig::new(255);
        cfg.virtio_mmio = vec![
            VirtioMmioDevice {
                addr: 0xd000_0000,
                len: 0x1000,
                gsi: 5,
            };
            256
        ];
        cfg.pci = Some(PciHostConfig {
            prt: vec![
                PciRoute {
                    device: 1,
                    pin: 0,
                    gsi: 16
                };
                6000
            ],
            ..Default::default()
        });
        assert!(matches!(
            build_acpi_tables(&cfg),
            Err(AcpiError::TooBig { .. })
        ));
    }

    #[test]
    fn unmapped_low_memory_is_an_error() {
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            create_acpi_tables(&m, &AcpiConfig::new(1)),
            Err(AcpiError::GuestMemory { .. })
        ));
    }

    /// Disassemble every table with ACPICA's `iasl -d` (Debian `acpica-tools`) and check that
    /// it parses them without errors. Skips (passes) when `iasl` is not installed.
    /// Set IRQVM_ACPI_DUMP_DIR to keep the .dat/.dsl files.
    #[test]
    fn iasl_disassembles_every_table_without_errors() {
        use std::process::Command;
        if Command::new("iasl").arg("-v").output().is_err() {
            eprintln!("iasl not installed; skipping (apt-get install acpica-tools)");
            return;
        }
        let dir = match std::env::var_os("IRQVM_ACPI_DUMP_DIR") {
            Some(d) => std::path::PathBuf::from(d),
            None => std::env::temp_dir().join(format!("irqvm-acpi-{}", std::process::id())),
        };
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = AcpiConfig::new(2);
        cfg.pci = Some(PciHostConfig {
            prt: vec![PciRoute {
                device: 1,
                pin: 0,
                gsi: 16,
            }],
            ..Default::default()
        });
        cfg.virtio_mmio.push(VirtioMmioDevice {
            addr: 0xd000_0000,
            len: 0x1000,
            gsi: 5,
        });
        let t = build_acpi_tables(&cfg).unwrap();
        let mut dsl = String::new();
        for (sig, _, _) in &t.tables {
            let name = String::from_utf8_lossy(sig).trim().replace(' ', "_");
            let dat = dir.join(format!("{name}.dat"));
            std::fs::write(&dat, t.table(sig).unwrap()).unwrap();
            if sig == b"RSD " {
                // iasl 20200925 does not disassemble a lone RSDP; the RSDP test checks it.
                continue;
            }
            let out = Command::new("iasl")
                .current_dir(&dir)
                .args(["-d", dat.to_str().unwrap()])
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "iasl -d {name} failed:\n{text}");
            assert!(!text.contains("rror"), "iasl -d {name} reported:\n{text}");
            dsl += &std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap();
        }
        // Round trip: the disassembled DSDT must recompile cleanly (this catches semantic
        // problems the disassembler tolerates, e.g. a Device with both _HID and _ADR).
        let out = Command::new("iasl")
            .current_dir(&dir)
            .args(["-p", "DSDT-recompiled", "DSDT.dsl"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("0 Errors, 0 Warnings"),
            "recompiling the DSDT:\n{text}"
        );
        for needle in [
            "Name (_S5, Package",
            "PNP0501",
            "PNP0B00",
            "ACPI0007",
            "PNP0A08",
            "_PRT",
            "LNRO0005",
            "Interrupt Source Override",
            "Local APIC NMI",
            "PM1A Event Block Address : 00000600",
            "Reset Register",
            "Signature : \"FACS\"",
        ] {
            assert!(dsl.contains(needle), "disassembly lacks {needle:?}");
        }
    }
}
