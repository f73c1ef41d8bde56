//! Multiboot v1 (Multiboot Specification 0.6.96): load an OS image that carries a Multiboot
//! header and describe the machine to it in a Multiboot information structure.
//!
//! * The header (spec 3.1.1) is a 4-byte aligned `magic, flags, checksum` triple within the
//!   first 8192 bytes of the file; `magic + flags + checksum == 0` (mod 2^32).
//! * The image is loaded from its ELF32 program headers (`PT_LOAD` at `p_paddr`, spec 3.1.3
//!   "the boot loader must be able to load images in ELF format") or, when flags bit 16 is
//!   set, from the header's address fields (spec 3.1.3, the "a.out kludge"), which then take
//!   precedence over the executable format.
//! * The machine state at entry (spec 3.2): 32-bit protected mode, paging off, flat CS/DS,
//!   EAX = 0x2BADB002, EBX = physical address of the information structure, A20 on. irqvm's
//!   `regs::setup_sregs/setup_regs` do this for [`BootEntry::Multiboot`].
//! * The information structure (spec 3.3) with `mem_lower/mem_upper`, `cmdline`, `mods`,
//!   `mmap` and `boot_loader_name` lives at `layout::MULTIBOOT_INFO_START`; the command line
//!   at `layout::CMDLINE_START`; modules are page aligned right after the kernel image.
//!
//! As in QEMU (so test kernels written for QEMU's `-kernel` run unchanged): the command line
//! is `"<kernel file> <cmdline>"`; the `--initrd` value is a comma-separated module list
//! (`,,` is a literal comma), each item `"<file> [args]"` is loaded from `<file>` and the whole
//! item becomes the module string; header flag bits the loader does not implement (video
//! mode, bit 2) are logged and the boot goes on.
//!
//! Everything read from the image is untrusted: all offsets and sizes are checked with
//! checked arithmetic against the file and guest RAM, and nothing may land on irqvm's own
//! boot structures.

use std::io::{Read, Seek, SeekFrom};

use vm_memory::GuestMemoryBackend;

use crate::layout::*;
use crate::loader::{BootEntry, LoadedKernel};
use crate::params::e820_map;
use crate::{write_obj, write_slice, BootError, GuestMem, Result};

/// Header magic (spec 3.1.2).
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// EAX at entry (spec 3.2).
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// The header must lie entirely within the first 8192 bytes (spec 3.1.1).
pub const HEADER_SEARCH_LEN: usize = 8192;

/// Header flags (spec 3.1.2).
pub const FLAG_PAGE_ALIGN_MODULES: u32 = 1 << 0;
pub const FLAG_MEMORY_INFO: u32 = 1 << 1;
pub const FLAG_VIDEO_MODE: u32 = 1 << 2;
pub const FLAG_ADDRESS_FIELDS: u32 = 1 << 16;
/// Bits 0-15 are requirements; the ones irqvm fulfils.
const SUPPORTED_REQUIRED: u32 = FLAG_PAGE_ALIGN_MODULES | FLAG_MEMORY_INFO;

/// Information structure flags (spec 3.3).
pub const INFO_MEMORY: u32 = 1 << 0;
pub const INFO_CMDLINE: u32 = 1 << 2;
pub const INFO_MODS: u32 = 1 << 3;
pub const INFO_MMAP: u32 = 1 << 6;
pub const INFO_BOOT_LOADER_NAME: u32 = 1 << 9;

/// Size of the information structure up to and including the framebuffer fields.
pub const INFO_SIZE: u64 = 116;
/// One `mmap` entry: size (u32, not counting itself), base_addr u64, length u64, type u32.
const MMAP_ENTRY_SIZE: u64 = 24;
/// One module entry: mod_start, mod_end, string, reserved.
const MODULE_ENTRY_SIZE: u64 = 16;
const BOOT_LOADER_NAME: &[u8] = b"irqvm\0";

const PAGE: u64 = 0x1000;
/// Copy images in pieces of this size (bounds the host allocation for a huge segment).
const COPY_CHUNK: u64 = 1 << 20;
/// More program headers than this is not a kernel (and would be a cheap way to stall us).
const MAX_PHNUM: u16 = 256;

const EM_386: u16 = 3;
const PT_LOAD: u32 = 1;

/// Guest ranges an image must not touch: irqvm writes its boot structures there.
const VMM_AREAS: [(u64, u64, &str); 2] = [
    (
        0,
        LOW_BOOT_AREA_END,
        "irqvm's boot structures (GDT, boot info, page tables, command line)",
    ),
    (
        EBDA_START,
        HIMEM_START,
        "the EBDA and irqvm's ACPI/MP tables",
    ),
];

/// What is wrong with a Multiboot image or its modules.
#[derive(Debug, thiserror::Error)]
pub enum MultibootError {
    #[error("the multiboot header at file offset {offset:#x} has a bad checksum (magic {HEADER_MAGIC:#x} + flags {flags:#x} + checksum {checksum:#x} must be 0 mod 2^32)")]
    BadChecksum {
        offset: u64,
        flags: u32,
        checksum: u32,
    },
    #[error("the multiboot header at file offset {offset:#x} sets flags bit 16 but its address fields run past the first 8192 bytes or the end of the file")]
    HeaderTruncated { offset: u64 },
    #[error("no multiboot header (magic 0x1badb002, 4-byte aligned) in the first 8192 bytes")]
    NoHeader,
    #[error("the image is not an ELF32 file and its multiboot header has no address fields (flags bit 16); relink it as ELF32 or set the a.out-kludge fields")]
    NoAddressFields,
    #[error("bad ELF32 image: {0}")]
    Elf(String),
    #[error("bad multiboot address fields: {0}")]
    AddressFields(String),
    #[error("the image has no loadable (PT_LOAD) segment with a non-zero size")]
    NothingToLoad,
    #[error("the image wants guest memory {start:#x}..{end:#x} but guest RAM below 4 GiB ends at {ram_end:#x}; link it lower or give the guest more --memory")]
    OutsideRam { start: u64, end: u64, ram_end: u64 },
    #[error("the image wants guest memory {start:#x}..{end:#x}, which overlaps {what} at {area_start:#x}..{area_end:#x}; link it at or above 1 MiB (0x100000)")]
    OverlapsVmm {
        start: u64,
        end: u64,
        what: &'static str,
        area_start: u64,
        area_end: u64,
    },
    #[error("the entry point {entry:#x} is outside guest RAM (ends at {ram_end:#x})")]
    EntryOutsideRam { entry: u64, ram_end: u64 },
    #[error("the image is truncated: {what} needs file bytes {offset:#x}..{end:#x} but the file has {file_len:#x}")]
    Truncated {
        what: &'static str,
        offset: u64,
        end: u64,
        file_len: u64,
    },
    #[error("reading the image failed")]
    Read(#[source] std::io::Error),
    #[error("cannot read multiboot module {path}")]
    OpenModule {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("multiboot module {path} ({size} bytes) does not fit in guest RAM after the kernel (free {start:#x}..{ram_end:#x}); give the guest more --memory")]
    ModuleTooLarge {
        path: String,
        size: u64,
        start: u64,
        ram_end: u64,
    },
    #[error("the multiboot information ({need} bytes: memory map, {modules} modules and their names) does not fit in the {have}-byte information area; pass fewer or shorter module names")]
    InfoAreaFull {
        need: u64,
        have: u64,
        modules: usize,
    },
    #[error("the multiboot command line (kernel file name and --cmdline) is {len} bytes, at most {max} fit")]
    CmdlineTooLong { len: usize, max: usize },
}

type MbResult<T> = std::result::Result<T, MultibootError>;

/// The header's address fields (flags bit 16, spec 3.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressFields {
    pub header_addr: u32,
    pub load_addr: u32,
    pub load_end_addr: u32,
    pub bss_end_addr: u32,
    pub entry_addr: u32,
}

/// A Multiboot header found in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// File offset of the magic.
    pub offset: u64,
    pub flags: u32,
    /// Present when flags bit 16 is set.
    pub address: Option<AddressFields>,
}

fn le32(buf: &[u8], off: usize) -> Option<u32> {
    let b = buf.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn le16(buf: &[u8], off: usize) -> Option<u16> {
    let b = buf.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

/// Find the Multiboot header in `head` (the start of the file). `Ok(None)`: no magic at all;
/// a magic whose checksum is wrong is not a header (spec 3.1.2), but if no valid one follows
/// it is reported, since it is almost certainly a broken header rather than chance.
pub fn find_header(head: &[u8]) -> MbResult<Option<Header>> {
    let area = &head[..head.len().min(HEADER_SEARCH_LEN)];
    let mut bad = None;
    for offset in (0..area.len()).step_by(4) {
        let (Some(magic), Some(flags), Some(checksum)) = (
            le32(area, offset),
            le32(area, offset + 4),
            le32(area, offset + 8),
        ) else {
            break;
        };
        if magic != HEADER_MAGIC {
            continue;
        }
        if magic.wrapping_add(flags).wrapping_add(checksum) != 0 {
            bad.get_or_insert(MultibootError::BadChecksum {
                offset: offset as u64,
                flags,
                checksum,
            });
            continue;
        }
        let address = if flags & FLAG_ADDRESS_FIELDS != 0 {
            let f = |i: usize| le32(area, offset + 12 + 4 * i);
            match (f(0), f(1), f(2), f(3), f(4)) {
                (Some(h), Some(l), Some(le), Some(b), Some(e)) => Some(AddressFields {
                    header_addr: h,
                    load_addr: l,
                    load_end_addr: le,
                    bss_end_addr: b,
                    entry_addr: e,
                }),
                _ => {
                    return Err(MultibootError::HeaderTruncated {
                        offset: offset as u64,
                    })
                }
            }
        } else {
            None
        };
        return Ok(Some(Header {
            offset: offset as u64,
            flags,
            address,
        }));
    }
    bad.map_or(Ok(None), Err)
}

/// One piece of the image to place in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical load address.
    pub paddr: u64,
    /// Where its bytes start in the file.
    pub file_offset: u64,
    /// Bytes copied from the file; the rest up to `mem_size` is zeroed (bss).
    pub file_size: u64,
    pub mem_size: u64,
}

/// Where and how an image loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadPlan {
    pub segments: Vec<Segment>,
    pub entry: u64,
}

fn check_in_file(what: &'static str, offset: u64, len: u64, file_len: u64) -> MbResult<()> {
    let end = offset.saturating_add(len);
    if end > file_len {
        return Err(MultibootError::Truncated {
            what,
            offset,
            end,
            file_len,
        });
    }
    Ok(())
}

/// Plan the load from the header's address fields (spec 3.1.3).
pub fn plan_from_address_fields(
    header_offset: u64,
    a: AddressFields,
    file_len: u64,
) -> MbResult<LoadPlan> {
    let bad = |s: String| Err(MultibootError::AddressFields(s));
    let (header_addr, load_addr) = (a.header_addr as u64, a.load_addr as u64);
    // The text starts (header_addr - load_addr) bytes before the header in the file.
    let Some(lead) = header_addr.checked_sub(load_addr) else {
        return bad(format!(
            "load_addr {load_addr:#x} is above header_addr {header_addr:#x}"
        ));
    };
    let Some(file_offset) = header_offset.checked_sub(lead) else {
        return bad(format!(
            "header_addr - load_addr = {lead:#x} but the header is at file offset {header_offset:#x}: the text would start before the file"
        ));
    };
    let load_end = if a.load_end_addr == 0 {
        // 0: the text and data run to the end of the file.
        load_addr.saturating_add(file_len - file_offset.min(file_len))
    } else {
        a.load_end_addr as u64
    };
    if load_end < load_addr {
        return bad(format!(
            "load_end_addr {load_end:#x} is below load_addr {load_addr:#x}"
        ));
    }
    let file_size = load_end - load_addr;
    check_in_file(
        "the text and data segment",
        file_offset,
        file_size,
        file_len,
    )?;
    let mem_end = if a.bss_end_addr == 0 {
        load_end
    } else if (a.bss_end_addr as u64) < load_end {
        return bad(format!(
            "bss_end_addr {:#x} is below load_end_addr {load_end:#x}",
            a.bss_end_addr
        ));
    } else {
        a.bss_end_addr as u64
    };
    if mem_end == load_addr {
        return Err(MultibootError::NothingToLoad);
    }
    Ok(LoadPlan {
        segments: vec![Segment {
            paddr: load_addr,
            file_offset,
            file_size,
            mem_size: mem_end - load_addr,
        }],
        entry: a.entry_addr as u64,
    })
}

/// Plan the load from an ELF32 file's program headers. `read_at(offset, buf)` reads file bytes.
pub fn plan_from_elf32(
    ehdr: &[u8],
    file_len: u64,
    mut read_at: impl FnMut(u64, &mut [u8]) -> MbResult<()>,
) -> MbResult<LoadPlan> {
    let elf = |s: &str| MultibootError::Elf(s.to_string());
    if ehdr.get(0..4) != Some(b"\x7fELF") {
        return Err(elf("no ELF magic"));
    }
    if ehdr.get(4) != Some(&1) {
        return Err(elf("not ELFCLASS32"));
    }
    if ehdr.get(5) != Some(&1) {
        return Err(elf("not little endian (ELFDATA2LSB)"));
    }
    let machine = le16(ehdr, 18).ok_or_else(|| elf("ELF header truncated"))?;
    if machine != EM_386 {
        return Err(MultibootError::Elf(format!(
            "e_machine is {machine}, a multiboot ELF32 image is EM_386 (3)"
        )));
    }
    let (Some(entry), Some(phoff), Some(phentsize), Some(phnum)) = (
        le32(ehdr, 24),
        le32(ehdr, 28),
        le16(ehdr, 42),
        le16(ehdr, 44),
    ) else {
        return Err(elf("ELF header truncated"));
    };
    if phnum == 0 {
        return Err(elf("no program headers"));
    }
    if phnum > MAX_PHNUM {
        return Err(MultibootError::Elf(format!(
            "{phnum} program headers (at most {MAX_PHNUM})"
        )));
    }
    if phentsize < 32 {
        return Err(MultibootError::Elf(format!(
            "e_phentsize {phentsize} is smaller than an Elf32_Phdr (32)"
        )));
    }
    let table_len = phentsize as u64 * phnum as u64;
    check_in_file(
        "the program header table",
        phoff as u64,
        table_len,
        file_len,
    )?;
    let mut segments = Vec::new();
    let mut entry_paddr = entry as u64;
    for i in 0..phnum as u64 {
        let mut ph = [0u8; 32];
        read_at(phoff as u64 + i * phentsize as u64, &mut ph)?;
        let f = |o| le32(&ph, o).unwrap_or(0) as u64;
        let (p_type, offset, vaddr, paddr, filesz, memsz) =
            (f(0) as u32, f(4), f(8), f(12), f(16), f(20));
        if p_type != PT_LOAD || memsz == 0 {
            continue;
        }
        if filesz > memsz {
            return Err(MultibootError::Elf(format!(
                "segment {i}: p_filesz {filesz:#x} exceeds p_memsz {memsz:#x}"
            )));
        }
        check_in_file("a PT_LOAD segment", offset, filesz, file_len)?;
        // The entry is a virtual address; translate it like GRUB when it lies in a segment
        // whose physical load address differs (higher-half kernels).
        if (vaddr..vaddr + memsz).contains(&(entry as u64)) {
            entry_paddr = entry as u64 - vaddr + paddr;
        }
        segments.push(Segment {
            paddr,
            file_offset: offset,
            file_size: filesz,
            mem_size: memsz,
        });
    }
    if segments.is_empty() {
        return Err(MultibootError::NothingToLoad);
    }
    Ok(LoadPlan {
        segments,
        entry: entry_paddr,
    })
}

/// Check that `start..end` is guest RAM below the MMIO hole and clear of irqvm's areas.
pub fn check_guest_range(start: u64, end: u64, ram_end: u64) -> MbResult<()> {
    if end > ram_end || start >= end {
        return Err(MultibootError::OutsideRam {
            start,
            end,
            ram_end,
        });
    }
    for (area_start, area_end, what) in VMM_AREAS {
        if start < area_end && area_start < end {
            return Err(MultibootError::OverlapsVmm {
                start,
                end,
                what,
                area_start,
                area_end,
            });
        }
    }
    Ok(())
}

/// Guest RAM below 4 GiB (the MMIO hole), where Multiboot images and modules may go.
fn low_ram_end(mem: &GuestMem) -> u64 {
    mem.last_addr().0.saturating_add(1).min(MMIO_HOLE_START)
}

/// Check a plan against guest RAM; returns the end of the image (first free byte).
pub fn check_plan(plan: &LoadPlan, ram_end: u64) -> MbResult<u64> {
    let mut image_end = 0;
    for s in &plan.segments {
        let end = s.paddr.saturating_add(s.mem_size);
        check_guest_range(s.paddr, end, ram_end)?;
        image_end = image_end.max(end);
    }
    if plan.entry >= ram_end {
        return Err(MultibootError::EntryOutsideRam {
            entry: plan.entry,
            ram_end,
        });
    }
    Ok(image_end)
}

fn read_exact_at<R: Read + Seek>(r: &mut R, offset: u64, buf: &mut [u8]) -> MbResult<()> {
    r.seek(SeekFrom::Start(offset))
        .and_then(|_| r.read_exact(buf))
        .map_err(MultibootError::Read)
}

/// Load a Multiboot image from `file` (of `file_len` bytes, starting with `head`, which holds
/// at least its first 8192 bytes or the whole file) into `mem`.
pub fn load<R: Read + Seek>(
    mem: &GuestMem,
    file: &mut R,
    file_len: u64,
    head: &[u8],
    path: &str,
) -> Result<LoadedKernel> {
    let image_err = |source| BootError::MultibootImage {
        path: path.to_string(),
        source,
    };
    let plan = plan(file, file_len, head).map_err(image_err)?;
    let image_end = check_plan(&plan, low_ram_end(mem)).map_err(image_err)?;
    for s in &plan.segments {
        copy_segment(mem, file, s).map_err(|e| match e {
            CopyError::Image(e) => image_err(e),
            CopyError::Boot(e) => e,
        })?;
    }
    Ok(LoadedKernel {
        entry: BootEntry::Multiboot { entry: plan.entry },
        kernel_end: image_end,
        setup_header: None,
    })
}

/// Find the header and plan the load (no guest memory touched).
pub fn plan<R: Read + Seek>(file: &mut R, file_len: u64, head: &[u8]) -> MbResult<LoadPlan> {
    let header = find_header(head)?.ok_or(MultibootError::NoHeader)?;
    let unsupported = header.flags & 0xffff & !SUPPORTED_REQUIRED;
    if unsupported & FLAG_VIDEO_MODE != 0 {
        log::warn!("multiboot: the image asks for video mode information (flags bit 2); irqvm has no display and provides none");
    }
    if unsupported & !FLAG_VIDEO_MODE != 0 {
        log::warn!("multiboot: the image requires features irqvm does not know (flags {unsupported:#x}); booting it anyway, as QEMU does");
    }
    match header.address {
        Some(a) => plan_from_address_fields(header.offset, a, file_len),
        None if head.get(0..4) == Some(b"\x7fELF") => {
            plan_from_elf32(head, file_len, |off, buf| read_exact_at(file, off, buf))
        }
        None => Err(MultibootError::NoAddressFields),
    }
}

/// Copying a segment fails on the file (the image) or on guest memory.
enum CopyError {
    Image(MultibootError),
    Boot(BootError),
}

fn copy_segment<R: Read + Seek>(
    mem: &GuestMem,
    file: &mut R,
    s: &Segment,
) -> std::result::Result<(), CopyError> {
    let mut buf = vec![0u8; COPY_CHUNK.min(s.mem_size.max(1)) as usize];
    let mut done = 0;
    while done < s.mem_size {
        let n = (s.mem_size - done).min(COPY_CHUNK);
        let chunk = &mut buf[..n as usize];
        // File bytes first, then zeros for the bss (spec 3.1.3: bss_end_addr is zeroed).
        let from_file = s.file_size.saturating_sub(done).min(n);
        chunk.fill(0);
        if from_file > 0 {
            read_exact_at(file, s.file_offset + done, &mut chunk[..from_file as usize])
                .map_err(CopyError::Image)?;
        }
        write_slice(mem, chunk, s.paddr + done).map_err(CopyError::Boot)?;
        done += n;
    }
    Ok(())
}

/// One module as placed in guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// The module string: the `--initrd` item (file name and any arguments).
    pub string: String,
}

/// Split a QEMU-style module list: items separated by `,`, a literal comma written `,,`;
/// items are trimmed and empty ones dropped.
pub fn split_module_list(list: &str) -> Vec<String> {
    let mut items = vec![String::new()];
    let mut chars = list.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                if let Some(last) = items.last_mut() {
                    last.push(',');
                }
            } else {
                items.push(String::new());
            }
        } else if let Some(last) = items.last_mut() {
            last.push(c);
        }
    }
    items
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    v.checked_add(a - 1).map(|x| x & !(a - 1))
}

/// Load each item of the module list page aligned after `kernel_end` (spec 3.1.2 bit 0).
pub fn load_modules(mem: &GuestMem, list: Option<&str>, kernel_end: u64) -> Result<Vec<Module>> {
    let ram_end = low_ram_end(mem);
    let mut next = kernel_end.max(HIMEM_START);
    let mut mods = Vec::new();
    for item in list.map(split_module_list).unwrap_or_default() {
        let path = item
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let data = std::fs::read(&path).map_err(|source| {
            mb_err(MultibootError::OpenModule {
                path: path.clone(),
                source,
            })
        })?;
        let size = data.len() as u64;
        let start = align_up(next, PAGE).unwrap_or(u64::MAX);
        let end = start.saturating_add(size);
        if end > ram_end {
            return Err(mb_err(MultibootError::ModuleTooLarge {
                path,
                size,
                start,
                ram_end,
            }));
        }
        write_slice(mem, &data, start)?;
        mods.push(Module {
            start,
            end,
            string: item,
        });
        next = end;
    }
    Ok(mods)
}

fn mb_err(source: MultibootError) -> BootError {
    BootError::Multiboot { source }
}

/// KiB of RAM below 640 KiB and from 1 MiB to the first hole (spec 3.3 mem_lower/mem_upper).
pub fn mem_lower_upper(mem_size: u64) -> (u32, u32) {
    let lower = EBDA_START.min(mem_size) / 1024;
    let upper = mem_size.min(MMIO_HOLE_START).saturating_sub(HIMEM_START) / 1024;
    (lower as u32, upper as u32)
}

/// Write the command line, memory map, module list and information structure; returns the
/// structure's address (EBX at entry). `kernel_path` starts the command line, as in QEMU/GRUB.
pub fn write_info(
    mem: &GuestMem,
    mem_size: u64,
    kernel_path: &str,
    cmdline: &str,
    modules: &[Module],
) -> Result<u64> {
    let full = if cmdline.is_empty() {
        kernel_path.to_string()
    } else {
        format!("{kernel_path} {cmdline}")
    };
    if full.len() + 1 > CMDLINE_MAX_SIZE || full.contains('\0') {
        return Err(mb_err(MultibootError::CmdlineTooLong {
            len: full.len(),
            max: CMDLINE_MAX_SIZE - 1,
        }));
    }
    write_slice(mem, full.as_bytes(), CMDLINE_START)?;
    write_slice(mem, &[0], CMDLINE_START + full.len() as u64)?;

    // The information area: structure, loader name, mmap, module list, module strings.
    let base = MULTIBOOT_INFO_START;
    let name_addr = base + INFO_SIZE.next_multiple_of(8);
    let mmap_addr = name_addr + (BOOT_LOADER_NAME.len() as u64).next_multiple_of(8);
    let map = e820_map(mem_size);
    let mmap_len = map.len() as u64 * MMAP_ENTRY_SIZE;
    let mods_addr = mmap_addr + mmap_len;
    let mut strings = mods_addr + modules.len() as u64 * MODULE_ENTRY_SIZE;
    let need = modules
        .iter()
        .fold(strings, |a, m| a.saturating_add(m.string.len() as u64 + 1))
        - base;
    if base + need > MULTIBOOT_INFO_END || modules.iter().any(|m| m.string.contains('\0')) {
        return Err(mb_err(MultibootError::InfoAreaFull {
            need,
            have: MULTIBOOT_INFO_END - base,
            modules: modules.len(),
        }));
    }
    write_slice(mem, BOOT_LOADER_NAME, name_addr)?;
    for (i, e) in map.iter().enumerate() {
        let a = mmap_addr + i as u64 * MMAP_ENTRY_SIZE;
        write_obj(mem, (MMAP_ENTRY_SIZE - 4) as u32, a)?;
        write_obj(mem, e.addr, a + 4)?;
        write_obj(mem, e.size, a + 12)?;
        write_obj(mem, e.kind, a + 20)?;
    }
    for (i, m) in modules.iter().enumerate() {
        let a = mods_addr + i as u64 * MODULE_ENTRY_SIZE;
        write_obj(mem, m.start as u32, a)?;
        write_obj(mem, m.end as u32, a + 4)?;
        write_obj(mem, strings as u32, a + 8)?;
        write_obj(mem, 0u32, a + 12)?;
        write_slice(mem, m.string.as_bytes(), strings)?;
        write_slice(mem, &[0], strings + m.string.len() as u64)?;
        strings += m.string.len() as u64 + 1;
    }

    let (lower, upper) = mem_lower_upper(mem_size);
    let mut info = [0u8; INFO_SIZE as usize];
    let mut put = |off: usize, v: u32| info[off..off + 4].copy_from_slice(&v.to_le_bytes());
    put(
        0,
        INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MMAP | INFO_BOOT_LOADER_NAME,
    );
    put(4, lower);
    put(8, upper);
    put(16, CMDLINE_START as u32);
    put(20, modules.len() as u32);
    put(24, mods_addr as u32);
    put(44, mmap_len as u32);
    put(48, mmap_addr as u32);
    put(64, name_addr as u32);
    write_slice(mem, &info, base)?;
    Ok(base)
}

/// What the VMM calls for a Multiboot kernel: load the `--initrd` module list after the
/// kernel and write the information structure.
pub fn write_boot_info(
    mem: &GuestMem,
    mem_size: u64,
    kernel_path: &str,
    cmdline: &str,
    initrd: Option<&str>,
    kernel_end: u64,
) -> Result<u64> {
    let mods = load_modules(mem, initrd, kernel_end)?;
    write_info(mem, mem_size, kernel_path, cmdline, &mods)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use vm_memory::{Bytes, GuestAddress};

    const MIB: u64 = 1 << 20;

    fn mem(size: u64) -> GuestMem {
        GuestMem::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    fn header(flags: u32, addr: Option<AddressFields>) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend(HEADER_MAGIC.to_le_bytes());
        h.extend(flags.to_le_bytes());
        h.extend(
            0u32.wrapping_sub(HEADER_MAGIC)
                .wrapping_sub(flags)
                .to_le_bytes(),
        );
        if let Some(a) = addr {
            for v in [
                a.header_addr,
                a.load_addr,
                a.load_end_addr,
                a.bss_end_addr,
                a.entry_addr,
            ] {
                h.extend(v.to_le_bytes());
            }
        }
        h
    }

    /// One ELF32 program header: (p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz).
    type Ph = (u32, u32, u32, u32, u32, u32);

    /// A tiny ELF32 EM_386 image: ELF header, program headers at 52, a multiboot header with
    /// `mb_flags` at 0x80, and `data` at file offset 0x1000.
    fn elf32(phs: &[Ph], entry: u32, mb_flags: u32, data: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 0x1000];
        f[0..4].copy_from_slice(b"\x7fELF");
        f[4] = 1; // ELFCLASS32
        f[5] = 1; // little endian
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[18..20].copy_from_slice(&EM_386.to_le_bytes());
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..28].copy_from_slice(&entry.to_le_bytes());
        f[28..32].copy_from_slice(&52u32.to_le_bytes());
        f[40..42].copy_from_slice(&52u16.to_le_bytes());
        f[42..44].copy_from_slice(&32u16.to_le_bytes());
        f[44..46].copy_from_slice(&(phs.len() as u16).to_le_bytes());
        for (i, p) in phs.iter().enumerate() {
            let o = 52 + 32 * i;
            for (j, v) in [p.0, p.1, p.2, p.3, p.4, p.5].iter().enumerate() {
                f[o + 4 * j..o + 4 * j + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        let h = header(mb_flags, None);
        f[0x80..0x80 + h.len()].copy_from_slice(&h);
        f.extend_from_slice(data);
        f
    }

    fn text_at_1m(data_len: u32, memsz: u32) -> Ph {
        (PT_LOAD, 0x1000, 0x10_0000, 0x10_0000, data_len, memsz)
    }

    fn load_bytes(m: &GuestMem, img: &[u8]) -> Result<LoadedKernel> {
        let head = &img[..img.len().min(HEADER_SEARCH_LEN)];
        load(m, &mut Cursor::new(img), img.len() as u64, head, "test.elf")
    }

    fn image_error(r: Result<LoadedKernel>) -> MultibootError {
        match r {
            Err(BootError::MultibootImage { source, .. }) => source,
            other => panic!("want a multiboot image error, got {other:?}"),
        }
    }

    /// An a.out-kludge image: 16 bytes of text, the header at file offset 16, loaded at 1 MiB.
    fn aout(load_end: u32, bss_end: u32, entry: u32) -> Vec<u8> {
        let mut f = vec![0x90u8; 16];
        f.extend(header(
            FLAG_ADDRESS_FIELDS,
            Some(AddressFields {
                header_addr: 0x10_0010,
                load_addr: 0x10_0000,
                load_end_addr: load_end,
                bss_end_addr: bss_end,
                entry_addr: entry,
            }),
        ));
        f.extend([0xf4u8; 20]);
        f
    }

    #[test]
    fn header_is_found_at_a_4_byte_aligned_offset() {
        let mut f = vec![0u8; 64];
        f.extend(header(FLAG_MEMORY_INFO, None));
        let h = find_header(&f).unwrap().unwrap();
        assert_eq!((h.offset, h.flags, h.address), (64, FLAG_MEMORY_INFO, None));
    }

    #[test]
    fn header_at_an_unaligned_offset_is_not_a_header() {
        let mut f = vec![0u8; 66];
        f.extend(header(0, None));
        f.extend([0u8; 2]);
        assert!(find_header(&f).unwrap().is_none());
    }

    #[test]
    fn header_beyond_the_first_8192_bytes_is_not_searched() {
        let mut f = vec![0u8; HEADER_SEARCH_LEN];
        f.extend(header(0, None));
        assert!(find_header(&f).unwrap().is_none());
    }

    #[test]
    fn magic_with_a_bad_checksum_is_reported() {
        let mut f = header(0, None);
        f[8] ^= 1;
        assert!(matches!(
            find_header(&f),
            Err(MultibootError::BadChecksum { offset: 0, .. })
        ));
    }

    #[test]
    fn valid_header_after_a_bad_checksum_is_used() {
        let mut f = header(0, None);
        f[8] ^= 1;
        f.extend(header(FLAG_MEMORY_INFO, None));
        assert_eq!(find_header(&f).unwrap().unwrap().offset, 12);
    }

    #[test]
    fn address_fields_cut_off_by_the_file_end_are_refused() {
        let f = header(FLAG_ADDRESS_FIELDS, None);
        assert!(matches!(
            find_header(&f),
            Err(MultibootError::HeaderTruncated { offset: 0 })
        ));
    }

    #[test]
    fn elf32_segment_loads_at_paddr_with_zeroed_bss_and_entry_state() {
        let m = mem(16 * MIB);
        // Dirty the bss range first: the loader must zero it.
        m.write_slice(&[0xaa; 0x100], GuestAddress(0x10_0004))
            .unwrap();
        let img = elf32(&[text_at_1m(4, 0x100)], 0x10_0000, 0, &[1, 2, 3, 4]);
        let k = load_bytes(&m, &img).unwrap();
        assert_eq!(k.entry, BootEntry::Multiboot { entry: 0x10_0000 });
        assert_eq!(k.kernel_end, 0x10_0100);
        let mut got = [0u8; 8];
        m.read_slice(&mut got, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(got, [1, 2, 3, 4, 0, 0, 0, 0]);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x10_00ff)).unwrap(), 0);
    }

    #[test]
    fn higher_half_elf_entry_is_translated_to_its_physical_address() {
        let m = mem(16 * MIB);
        let ph = (PT_LOAD, 0x1000, 0xc010_0000, 0x10_0000, 4, 4);
        let k = load_bytes(&m, &elf32(&[ph], 0xc010_0002, 0, &[0; 4])).unwrap();
        assert_eq!(k.entry, BootEntry::Multiboot { entry: 0x10_0002 });
    }

    #[test]
    fn non_load_segments_are_skipped() {
        let m = mem(16 * MIB);
        let note = (4, 0x1000, 0, 0, 4, 4); // PT_NOTE at address 0 must not be loaded
        let img = elf32(&[note, text_at_1m(4, 4)], 0x10_0000, 0, &[9; 4]);
        assert!(load_bytes(&m, &img).is_ok());
    }

    #[test]
    fn elf_without_loadable_segments_is_refused() {
        let m = mem(16 * MIB);
        let img = elf32(&[(4, 0x1000, 0, 0, 4, 4)], 0x10_0000, 0, &[0; 4]);
        assert!(matches!(
            image_error(load_bytes(&m, &img)),
            MultibootError::NothingToLoad
        ));
    }

    #[test]
    fn elf_segment_on_irqvm_boot_structures_is_refused() {
        let m = mem(16 * MIB);
        let ph = (PT_LOAD, 0x1000, 0x7000, 0x7000, 4, 4);
        let e = image_error(load_bytes(&m, &elf32(&[ph], 0x7000, 0, &[0; 4])));
        assert!(
            matches!(e, MultibootError::OverlapsVmm { area_start: 0, .. }),
            "{e}"
        );
    }

    #[test]
    fn elf_segment_on_the_acpi_tables_is_refused() {
        let m = mem(16 * MIB);
        let ph = (PT_LOAD, 0x1000, 0xf_f000, 0xf_f000, 4, 0x2000);
        let e = image_error(load_bytes(&m, &elf32(&[ph], 0xf_f000, 0, &[0; 4])));
        assert!(
            matches!(
                e,
                MultibootError::OverlapsVmm {
                    area_start: EBDA_START,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn elf_segment_in_free_conventional_memory_is_accepted() {
        let m = mem(16 * MIB);
        let ph = (PT_LOAD, 0x1000, 0x8_0000, 0x8_0000, 4, 4);
        assert!(load_bytes(&m, &elf32(&[ph], 0x8_0000, 0, &[0; 4])).is_ok());
    }

    #[test]
    fn elf_segment_past_the_end_of_ram_is_refused() {
        let m = mem(4 * MIB);
        let ph = (PT_LOAD, 0x1000, 0x10_0000, 0x10_0000, 4, 0xffff_0000);
        let e = image_error(load_bytes(&m, &elf32(&[ph], 0x10_0000, 0, &[0; 4])));
        assert!(matches!(e, MultibootError::OutsideRam { .. }), "{e}");
    }

    #[test]
    fn elf_segment_wrapping_past_4g_is_refused() {
        let m = mem(4 * MIB);
        let ph = (PT_LOAD, 0x1000, 0xffff_f000, 0xffff_f000, 4, 0x10_0000);
        let e = image_error(load_bytes(&m, &elf32(&[ph], 0x10_0000, 0, &[0; 4])));
        assert!(matches!(e, MultibootError::OutsideRam { .. }), "{e}");
    }

    #[test]
    fn elf_segment_larger_than_the_file_is_refused() {
        let m = mem(16 * MIB);
        let img = elf32(&[text_at_1m(0x10_0000, 0x10_0000)], 0x10_0000, 0, &[0; 4]);
        let e = image_error(load_bytes(&m, &img));
        assert!(matches!(e, MultibootError::Truncated { .. }), "{e}");
    }

    #[test]
    fn elf_filesz_above_memsz_is_refused() {
        let m = mem(16 * MIB);
        let img = elf32(&[text_at_1m(4, 2)], 0x10_0000, 0, &[0; 4]);
        assert!(matches!(
            image_error(load_bytes(&m, &img)),
            MultibootError::Elf(_)
        ));
    }

    #[test]
    fn program_header_table_outside_the_file_is_refused() {
        let m = mem(16 * MIB);
        let mut img = elf32(&[text_at_1m(4, 4)], 0x10_0000, 0, &[0; 4]);
        img[28..32].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert!(matches!(
            image_error(load_bytes(&m, &img)),
            MultibootError::Truncated { .. }
        ));
    }

    #[test]
    fn absurd_program_header_count_is_refused() {
        let m = mem(16 * MIB);
        let mut img = elf32(&[text_at_1m(4, 4)], 0x10_0000, 0, &[0; 4]);
        img[44..46].copy_from_slice(&0xffffu16.to_le_bytes());
        assert!(matches!(
            image_error(load_bytes(&m, &img)),
            MultibootError::Elf(_)
        ));
    }

    #[test]
    fn elf_for_another_machine_is_refused() {
        let m = mem(16 * MIB);
        let mut img = elf32(&[text_at_1m(4, 4)], 0x10_0000, 0, &[0; 4]);
        img[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        let e = image_error(load_bytes(&m, &img)).to_string();
        assert!(e.contains("EM_386"), "{e}");
    }

    #[test]
    fn entry_outside_ram_is_refused() {
        let m = mem(16 * MIB);
        let img = elf32(&[text_at_1m(4, 4)], 0xf000_0000, 0, &[0; 4]);
        assert!(matches!(
            image_error(load_bytes(&m, &img)),
            MultibootError::EntryOutsideRam { .. }
        ));
    }

    #[test]
    fn video_mode_request_is_logged_and_the_image_still_loads() {
        let m = mem(16 * MIB);
        let img = elf32(&[text_at_1m(4, 4)], 0x10_0000, FLAG_VIDEO_MODE, &[0; 4]);
        assert!(load_bytes(&m, &img).is_ok());
    }

    #[test]
    fn aout_kludge_loads_text_from_the_header_fields_and_zeroes_bss() {
        let m = mem(16 * MIB);
        let img = aout(0x10_0030, 0x10_1000, 0x10_0000);
        let k = load_bytes(&m, &img).unwrap();
        assert_eq!(k.entry, BootEntry::Multiboot { entry: 0x10_0000 });
        assert_eq!(k.kernel_end, 0x10_1000);
        assert_eq!(
            m.read_obj::<u32>(GuestAddress(0x10_0010)).unwrap(),
            HEADER_MAGIC
        );
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x10_0030)).unwrap(), 0);
    }

    #[test]
    fn aout_load_end_zero_means_the_whole_file() {
        let m = mem(16 * MIB);
        let img = aout(0, 0, 0x10_0000);
        let k = load_bytes(&m, &img).unwrap();
        assert_eq!(k.kernel_end, 0x10_0000 + img.len() as u64);
        let last = 0x10_0000 + img.len() as u64 - 1;
        assert_eq!(m.read_obj::<u8>(GuestAddress(last)).unwrap(), 0xf4);
    }

    #[test]
    fn aout_load_addr_above_header_addr_is_refused() {
        let m = mem(16 * MIB);
        let mut img = aout(0, 0, 0x10_0000);
        img[16 + 16..16 + 20].copy_from_slice(&0x10_0020u32.to_le_bytes());
        assert!(matches!(
            image_error(load_bytes(&m, &img)),
            MultibootError::AddressFields(_)
        ));
    }

    #[test]
    fn aout_text_starting_before_the_file_is_refused() {
        let m = mem(16 * MIB);
        let mut img = aout(0, 0, 0x10_0000);
        // load_addr 0x1000 below header_addr: the text would start 0xf_f010 bytes before it.
        img[16 + 16..16 + 20].copy_from_slice(&0x1000u32.to_le_bytes());
        assert!(matches!(
            image_error(load_bytes(&m, &img)),
            MultibootError::AddressFields(_)
        ));
    }

    #[test]
    fn aout_load_end_past_the_file_is_refused() {
        let m = mem(16 * MIB);
        let img = aout(0x20_0000, 0, 0x10_0000);
        assert!(matches!(
            image_error(load_bytes(&m, &img)),
            MultibootError::Truncated { .. }
        ));
    }

    #[test]
    fn aout_bss_end_below_load_end_is_refused() {
        let m = mem(16 * MIB);
        let img = aout(0x10_0030, 0x10_0020, 0x10_0000);
        assert!(matches!(
            image_error(load_bytes(&m, &img)),
            MultibootError::AddressFields(_)
        ));
    }

    #[test]
    fn aout_huge_bss_beyond_ram_is_refused() {
        let m = mem(16 * MIB);
        let img = aout(0x10_0030, 0xffff_ffff, 0x10_0000);
        assert!(matches!(
            image_error(load_bytes(&m, &img)),
            MultibootError::OutsideRam { .. }
        ));
    }

    #[test]
    fn flat_image_without_address_fields_is_refused() {
        let m = mem(16 * MIB);
        let img = header(0, None);
        assert!(matches!(
            image_error(load_bytes(&m, &img)),
            MultibootError::NoAddressFields
        ));
    }

    #[test]
    fn module_list_splits_on_commas_and_keeps_doubled_commas() {
        assert_eq!(
            split_module_list("a.bin arg,b,,c,, ,"),
            vec!["a.bin arg".to_string(), "b,c,".to_string()]
        );
    }

    fn read_cstr(m: &GuestMem, addr: u64) -> String {
        let mut s = Vec::new();
        for i in 0..4096 {
            let b: u8 = m.read_obj(GuestAddress(addr + i)).unwrap();
            if b == 0 {
                break;
            }
            s.push(b);
        }
        String::from_utf8(s).unwrap()
    }

    fn rd32(m: &GuestMem, addr: u64) -> u32 {
        m.read_obj(GuestAddress(addr)).unwrap()
    }

    #[test]
    fn info_has_memory_cmdline_mods_mmap_and_loader_name() {
        let m = mem(64 * MIB);
        let mods = [Module {
            start: 0x20_0000,
            end: 0x20_0010,
            string: "mod.bin x=1".into(),
        }];
        let at = write_info(&m, 64 * MIB, "k.elf", "hello world", &mods).unwrap();
        assert_eq!(at, MULTIBOOT_INFO_START);
        let flags = rd32(&m, at);
        for f in [
            INFO_MEMORY,
            INFO_CMDLINE,
            INFO_MODS,
            INFO_MMAP,
            INFO_BOOT_LOADER_NAME,
        ] {
            assert_ne!(flags & f, 0, "flag {f:#x}");
        }
        assert_eq!(rd32(&m, at + 4), 639);
        assert_eq!(rd32(&m, at + 8), (64 * 1024) - 1024);
        assert_eq!(read_cstr(&m, rd32(&m, at + 16) as u64), "k.elf hello world");
        assert_eq!(rd32(&m, at + 20), 1);
        let mod0 = rd32(&m, at + 24) as u64;
        assert_eq!((rd32(&m, mod0), rd32(&m, mod0 + 4)), (0x20_0000, 0x20_0010));
        assert_eq!(read_cstr(&m, rd32(&m, mod0 + 8) as u64), "mod.bin x=1");
        assert_eq!(read_cstr(&m, rd32(&m, at + 64) as u64), "irqvm");
    }

    #[test]
    fn info_mmap_entries_are_the_e820_map_with_size_20() {
        let m = mem(64 * MIB);
        let at = write_info(&m, 64 * MIB, "k", "", &[]).unwrap();
        let (len, addr) = (rd32(&m, at + 44) as u64, rd32(&m, at + 48) as u64);
        let map = e820_map(64 * MIB);
        assert_eq!(len, map.len() as u64 * 24);
        for (i, e) in map.iter().enumerate() {
            let a = addr + 24 * i as u64;
            assert_eq!(rd32(&m, a), 20);
            assert_eq!(m.read_obj::<u64>(GuestAddress(a + 4)).unwrap(), e.addr);
            assert_eq!(m.read_obj::<u64>(GuestAddress(a + 12)).unwrap(), e.size);
            assert_eq!(rd32(&m, a + 20), e.kind);
        }
        assert!(addr + len <= MULTIBOOT_INFO_END);
    }

    #[test]
    fn mem_upper_stops_at_the_mmio_hole() {
        assert_eq!(
            mem_lower_upper(8 << 30).1 as u64,
            (MMIO_HOLE_START - HIMEM_START) / 1024
        );
    }

    #[test]
    fn too_many_module_names_for_the_info_area_are_refused() {
        let m = mem(64 * MIB);
        let mods: Vec<Module> = (0..200)
            .map(|i| Module {
                start: 0x20_0000,
                end: 0x20_0000,
                string: format!("module-with-a-long-name-{i}"),
            })
            .collect();
        assert!(matches!(
            write_info(&m, 64 * MIB, "k", "", &mods),
            Err(BootError::Multiboot {
                source: MultibootError::InfoAreaFull { .. }
            })
        ));
    }

    #[test]
    fn overlong_multiboot_cmdline_is_refused() {
        let m = mem(64 * MIB);
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            write_info(&m, 64 * MIB, "k", &long, &[]),
            Err(BootError::Multiboot {
                source: MultibootError::CmdlineTooLong { .. }
            })
        ));
    }

    fn tmp_file(tag: &str, bytes: &[u8]) -> String {
        let p = std::env::temp_dir().join(format!("irqvm-mb-{}-{tag}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p.to_string_lossy().into_owned()
    }

    #[test]
    fn modules_load_page_aligned_after_the_kernel_with_their_names() {
        let m = mem(16 * MIB);
        let a = tmp_file("a", &[1; 10]);
        let b = tmp_file("b", &[2; 5000]);
        let mods = load_modules(&m, Some(&format!("{a} arg,{b}")), 0x10_0123).unwrap();
        std::fs::remove_file(&a).unwrap();
        std::fs::remove_file(&b).unwrap();
        assert_eq!(mods.len(), 2);
        assert_eq!((mods[0].start, mods[0].end), (0x10_1000, 0x10_100a));
        assert_eq!(mods[0].string, format!("{a} arg"));
        assert_eq!((mods[1].start, mods[1].end), (0x10_2000, 0x10_2000 + 5000));
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x10_2000)).unwrap(), 2);
    }

    #[test]
    fn module_that_does_not_fit_in_ram_is_refused() {
        let m = mem(2 * MIB);
        let a = tmp_file("big", &vec![0; 2 * MIB as usize]);
        let r = load_modules(&m, Some(&a), 0x10_0000);
        std::fs::remove_file(&a).unwrap();
        assert!(matches!(
            r,
            Err(BootError::Multiboot {
                source: MultibootError::ModuleTooLarge { .. }
            })
        ));
    }

    #[test]
    fn missing_module_file_is_named() {
        let m = mem(2 * MIB);
        let e = load_modules(&m, Some("/nonexistent/mod"), 0x10_0000).unwrap_err();
        assert!(
            matches!(&e, BootError::Multiboot { source: MultibootError::OpenModule { path, .. } } if path == "/nonexistent/mod"),
            "{e}"
        );
    }

    proptest::proptest! {
        /// Whatever the bytes, planning and checking a load returns, it never panics.
        #[test]
        fn arbitrary_images_never_panic(
            mut bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            hdr_at in 0usize..140,
            flags in proptest::prelude::any::<u32>(),
            elf in proptest::prelude::any::<bool>(),
        ) {
            // Make a valid header likely so the ELF and address-field paths are exercised.
            let h = header(flags, None);
            let at = hdr_at * 4;
            if bytes.len() >= at + 12 {
                bytes[at..at + 12].copy_from_slice(&h);
            }
            if elf && bytes.len() >= 6 {
                bytes[0..6].copy_from_slice(b"\x7fELF\x01\x01");
            }
            let m = mem(4 * MIB);
            let _ = load_bytes(&m, &bytes);
        }
    }
}
