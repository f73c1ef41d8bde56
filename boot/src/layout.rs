//! Guest physical memory layout: the one place every address is decided.
//!
//! ```text
//! 0x0000_0000  real-mode IVT/BDA (left zero)
//! 0x0000_0500  GDT (4 entries)                       GDT_START
//! 0x0000_0520  IDT (empty, limit 0 until the kernel loads its own)
//! 0x0000_6000  PVH hvm_start_info + memmap           PVH_INFO_START
//!              or, for a Multiboot kernel, the Multiboot information structure, loader
//!              name, mmap, module list and module strings  MULTIBOOT_INFO_START..END
//! 0x0000_7000  Linux boot_params ("zero page")       ZERO_PAGE_START
//! 0x0000_8ff0  boot stack top                        BOOT_STACK_POINTER
//! 0x0000_9000  PML4, 0xa000 PDPTE, 0xb000 PDE (identity map of the first 1 GiB, 2 MiB pages)
//! 0x0002_0000  kernel command line (up to 64 KiB)    CMDLINE_START
//!              (everything below LOW_BOOT_AREA_END is irqvm's: Multiboot images may not load
//!              there; 0x3_0000..EBDA_START is free conventional memory)
//! 0x0009_fc00  EBDA start: reserved to 1 MiB          EBDA_START
//! 0x000e_0000  ACPI tables (RSDP first)               ACPI_START .. MPTABLE_START
//! 0x000f_0000  MP floating pointer + MP config table  MPTABLE_START .. 1 MiB
//! 0x0010_0000  bzImage protected-mode kernel (HIMEM_START); ELF kernels load at their paddr
//!      ...     initrd at the top of low RAM, page aligned
//! 0xc000_0000  32-bit MMIO hole start                 MMIO_HOLE_START
//! 0xd000_0000  virtio-mmio devices (4 KiB each)       VIRTIO_MMIO_START
//! 0xe000_0000  PCI ECAM (MMCONFIG), 256 MiB           PCI_ECAM_START
//! 0xfec0_0000  IOAPIC                                 IOAPIC_START
//! 0xfee0_0000  local APIC                             LAPIC_START
//! 0x1_0000_0000 RAM above 4 GiB when memory > MMIO_HOLE_START
//! ```
//! Port I/O: PIC 0x20/0xa0, PIT 0x40, i8042 0x60/0x64, CMOS 0x70, ELCR 0x4d0, ACPI PM 0x600,
//! serial 0x3f8, PCI config 0xcf8, isa-debug-exit 0xf4, pc-testdev lines 0x2000, irqvm test
//! device 0x2100, fw_cfg 0x510.

pub const GDT_START: u64 = 0x500;
pub const IDT_START: u64 = 0x520;
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MEMMAP_START: u64 = 0x6040;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// End of irqvm's low boot structures (GDT .. command line).
pub const LOW_BOOT_AREA_END: u64 = CMDLINE_START + CMDLINE_MAX_SIZE as u64;
/// Multiboot information area: the PVH area, unused when the kernel boots by Multiboot.
pub const MULTIBOOT_INFO_START: u64 = PVH_INFO_START;
pub const MULTIBOOT_INFO_END: u64 = ZERO_PAGE_START;
pub const EBDA_START: u64 = 0x9fc00;
pub const ACPI_START: u64 = 0xe0000;
pub const MPTABLE_START: u64 = 0xf0000;
pub const HIMEM_START: u64 = 0x10_0000;
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const PCI_ECAM_START: u64 = 0xe000_0000;
pub const PCI_ECAM_SIZE: u64 = 0x1000_0000;
pub const PCI_MMIO_START: u64 = 0xc000_0000;
pub const PCI_MMIO_END: u64 = 0xd000_0000;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const IOAPIC_SIZE: u64 = 0x1000;
pub const LAPIC_START: u64 = 0xfee0_0000;
/// KVM needs three pages for the TSS (KVM_SET_TSS_ADDR) and one for the identity map on
/// VMX hosts; they sit just below the IOAPIC, inside the MMIO hole.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// ACPI PM1a event block (4 bytes) and control block (2 bytes); SCI on IRQ 9.
pub const ACPI_PM1A_EVT_PORT: u16 = 0x600;
pub const ACPI_PM1A_CNT_PORT: u16 = 0x604;
pub const ACPI_SCI_IRQ: u8 = 9;
pub const SERIAL_PORT: u16 = 0x3f8;
pub const SERIAL_IRQ: u8 = 4;
pub const IOAPIC_PINS: u8 = 24;
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
pub const PC_TESTDEV_LINES_PORT: u16 = 0x2000;
pub const TESTDEV_PORT: u16 = 0x2100;
pub const TESTDEV_PORT_SIZE: u16 = 0x40;
pub const FW_CFG_PORT: u16 = 0x510;

// The layout's own invariants, checked at compile time.
const _: () = assert!(ACPI_START < MPTABLE_START && MPTABLE_START < HIMEM_START);
const _: () = assert!(ZERO_PAGE_START + 0x1000 <= BOOT_STACK_POINTER + 0x10);
const _: () = assert!(PVH_MEMMAP_START + 8 * 24 + 32 <= ZERO_PAGE_START);

/// Guest RAM regions for `mem_size` bytes: below the MMIO hole, then above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_HOLE_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (MMIO_HOLE_END, mem_size - MMIO_HOLE_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_region_below_hole() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
    }

    #[test]
    fn large_guest_splits_around_the_mmio_hole() {
        assert_eq!(
            ram_regions(4 << 30),
            vec![
                (0, MMIO_HOLE_START),
                (MMIO_HOLE_END, (4 << 30) - MMIO_HOLE_START)
            ]
        );
    }
}
