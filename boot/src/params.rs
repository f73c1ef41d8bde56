//! Boot protocol data the VMM hands the kernel: the e820 memory map, Linux `boot_params`
//! (Documentation/arch/x86/zero-page.rst, boot.rst) and the PVH `hvm_start_info`
//! (xen/include/public/arch-x86/hvm/start_info.h), plus the command line and initrd.

use linux_loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::layout::*;
use crate::{write_obj, write_slice, BootError, GuestMem, Result};

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// One e820 range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The guest's e820 map for `mem_size` bytes of RAM, in address order.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let ram = |addr, size| E820Entry {
        addr,
        size,
        kind: E820_RAM,
    };
    let reserved = |addr, size| E820Entry {
        addr,
        size,
        kind: E820_RESERVED,
    };
    let mut map = vec![
        ram(0, EBDA_START),
        // EBDA, VGA hole, option ROMs and our ACPI/MP tables up to 1 MiB.
        reserved(EBDA_START, HIMEM_START - EBDA_START),
    ];
    let low_end = mem_size.min(MMIO_HOLE_START);
    if low_end > HIMEM_START {
        map.push(ram(HIMEM_START, low_end - HIMEM_START));
    }
    // ECAM must be reserved in e820 or Linux refuses the MMCONFIG area it finds in MCFG.
    map.push(reserved(PCI_ECAM_START, PCI_ECAM_SIZE));
    if mem_size > MMIO_HOLE_START {
        map.push(ram(MMIO_HOLE_END, mem_size - MMIO_HOLE_START));
    }
    map
}

/// Write the command line (NUL-terminated) at CMDLINE_START.
pub fn write_cmdline(mem: &GuestMem, cmdline: &str) -> Result<()> {
    let bytes = cmdline.as_bytes();
    if bytes.len() + 1 > CMDLINE_MAX_SIZE || bytes.contains(&0) {
        return Err(BootError::CmdlineTooLong {
            len: bytes.len(),
            max: CMDLINE_MAX_SIZE - 1,
        });
    }
    write_slice(mem, bytes, CMDLINE_START)?;
    write_slice(mem, &[0], CMDLINE_START + bytes.len() as u64)
}

/// Where an initrd was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdPlacement {
    pub addr: u64,
    pub size: u64,
}

/// Load the initrd at the top of low RAM (below `addr_max`), page aligned, above `kernel_end`.
pub fn load_initrd(
    mem: &GuestMem,
    path: &str,
    kernel_end: u64,
    addr_max: u64,
) -> Result<InitrdPlacement> {
    let data = std::fs::read(path).map_err(|source| BootError::OpenInitrd {
        path: path.to_string(),
        source,
    })?;
    let size = data.len() as u64;
    let mem_end = mem.last_addr().0.saturating_add(1);
    let top = mem_end.min(MMIO_HOLE_START).min(addr_max.saturating_add(1));
    let too_large = || BootError::InitrdTooLarge {
        path: path.to_string(),
        size,
        limit: top,
    };
    let addr = top.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if addr < kernel_end.max(HIMEM_START) {
        return Err(too_large());
    }
    write_slice(mem, &data, addr)?;
    Ok(InitrdPlacement { addr, size })
}

/// Fill and write Linux `boot_params` at ZERO_PAGE_START.
pub fn write_boot_params(
    mem: &GuestMem,
    mem_size: u64,
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
    rsdp: Option<u64>,
) -> Result<()> {
    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    } else {
        // An ELF vmlinux has no setup header: fill the fields the kernel checks.
        params.hdr.boot_flag = 0xaa55;
        params.hdr.header = 0x5372_6448; // "HdrS"
        params.hdr.kernel_alignment = 0x0100_0000;
    }
    params.hdr.type_of_loader = 0xff; // "undefined" boot loader
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32 + 1;
    if let Some(i) = initrd {
        params.hdr.ramdisk_image = i.addr as u32;
        params.hdr.ramdisk_size = i.size as u32;
    }
    if let Some(r) = rsdp {
        params.acpi_rsdp_addr = r;
    }
    let map = e820_map(mem_size);
    for (slot, e) in params.e820_table.iter_mut().zip(map.iter()) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    write_obj(mem, params, ZERO_PAGE_START)
}

/// PVH start-info magic (start_info.h).
pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

/// Fill and write the PVH `hvm_start_info` at PVH_INFO_START, with its memory map and module
/// list (the initrd is module 0, as Linux's PVH entry expects).
pub fn write_pvh_info(
    mem: &GuestMem,
    mem_size: u64,
    initrd: Option<InitrdPlacement>,
    rsdp: Option<u64>,
) -> Result<()> {
    let map = e820_map(mem_size);
    let mut addr = PVH_MEMMAP_START;
    for e in &map {
        // hvm_memmap_table_entry: addr u64, size u64, type u32, reserved u32.
        write_obj(mem, e.addr, addr)?;
        write_obj(mem, e.size, addr + 8)?;
        write_obj(mem, e.kind, addr + 16)?;
        write_obj(mem, 0u32, addr + 20)?;
        addr += 24;
    }
    let modlist = addr;
    if let Some(i) = initrd {
        // hvm_modlist_entry: paddr, size, cmdline_paddr, reserved.
        write_obj(mem, i.addr, modlist)?;
        write_obj(mem, i.size, modlist + 8)?;
        write_obj(mem, 0u64, modlist + 16)?;
        write_obj(mem, 0u64, modlist + 24)?;
    }
    let base = PVH_INFO_START;
    write_obj(mem, XEN_HVM_START_MAGIC, base)?;
    write_obj(mem, 1u32, base + 4)?; // version 1: has memmap fields
    write_obj(mem, 0u32, base + 8)?; // flags
    write_obj(mem, initrd.map_or(0u32, |_| 1), base + 12)?;
    write_obj(mem, modlist, base + 16)?;
    write_obj(mem, CMDLINE_START, base + 24)?;
    write_obj(mem, rsdp.unwrap_or(0), base + 32)?;
    write_obj(mem, PVH_MEMMAP_START, base + 40)?;
    write_obj(mem, map.len() as u32, base + 48)?;
    write_obj(mem, 0u32, base + 52)
}

/// Convenience for tests and tools: guest address of the boot_params.
pub fn zero_page() -> GuestAddress {
    GuestAddress(ZERO_PAGE_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn mem(size: u64) -> GuestMem {
        GuestMem::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    #[test]
    fn e820_reserves_ebda_to_one_mib_and_ecam() {
        let m = e820_map(128 << 20);
        assert_eq!(
            m[0],
            E820Entry {
                addr: 0,
                size: EBDA_START,
                kind: E820_RAM
            }
        );
        assert_eq!(m[1].kind, E820_RESERVED);
        assert_eq!(m[1].addr + m[1].size, HIMEM_START);
        assert_eq!(
            m[2],
            E820Entry {
                addr: HIMEM_START,
                size: (128 << 20) - HIMEM_START,
                kind: E820_RAM
            }
        );
        assert!(m
            .iter()
            .any(|e| e.addr == PCI_ECAM_START && e.kind == E820_RESERVED));
    }

    #[test]
    fn e820_puts_ram_above_4g_when_memory_exceeds_the_hole() {
        let m = e820_map(4 << 30);
        let hi = m.last().unwrap();
        assert_eq!(
            (hi.addr, hi.size, hi.kind),
            (MMIO_HOLE_END, (4 << 30) - MMIO_HOLE_START, E820_RAM)
        );
    }

    #[test]
    fn cmdline_is_nul_terminated() {
        let m = mem(1 << 20);
        write_cmdline(&m, "console=ttyS0").unwrap();
        let b: [u8; 14] = m.read_obj(GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&b, b"console=ttyS0\0");
    }

    #[test]
    fn overlong_cmdline_is_refused() {
        let m = mem(1 << 20);
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            write_cmdline(&m, &long),
            Err(BootError::CmdlineTooLong { .. })
        ));
    }

    #[test]
    fn initrd_goes_to_top_of_ram_page_aligned() {
        let m = mem(16 << 20);
        let p = std::env::temp_dir().join(format!("irqvm-initrd-{}", std::process::id()));
        std::fs::write(&p, vec![7u8; 5000]).unwrap();
        let i = load_initrd(&m, p.to_str().unwrap(), 2 << 20, u64::MAX).unwrap();
        std::fs::remove_file(&p).unwrap();
        assert_eq!(i.addr % 4096, 0);
        assert!(i.addr + i.size <= 16 << 20);
        assert_eq!(m.read_obj::<u8>(GuestAddress(i.addr)).unwrap(), 7);
    }

    #[test]
    fn initrd_that_would_overlap_the_kernel_is_refused() {
        let m = mem(4 << 20);
        let p = std::env::temp_dir().join(format!("irqvm-initrd-big-{}", std::process::id()));
        std::fs::write(&p, vec![0u8; 3 << 20]).unwrap();
        let r = load_initrd(&m, p.to_str().unwrap(), 2 << 20, u64::MAX);
        std::fs::remove_file(&p).unwrap();
        assert!(matches!(r, Err(BootError::InitrdTooLarge { .. })));
    }

    #[test]
    fn pvh_info_has_magic_and_points_at_memmap() {
        let m = mem(16 << 20);
        write_pvh_info(&m, 16 << 20, None, Some(0xe0000)).unwrap();
        assert_eq!(
            m.read_obj::<u32>(GuestAddress(PVH_INFO_START)).unwrap(),
            XEN_HVM_START_MAGIC
        );
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(PVH_INFO_START + 32))
                .unwrap(),
            0xe0000
        );
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(PVH_INFO_START + 40))
                .unwrap(),
            PVH_MEMMAP_START
        );
        assert_eq!(
            m.read_obj::<u32>(GuestAddress(PVH_INFO_START + 48))
                .unwrap(),
            4
        );
    }
}
