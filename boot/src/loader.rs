//! Kernel image loading: bzImage (Linux x86 boot protocol, Documentation/arch/x86/boot.rst),
//! ELF64 vmlinux (64-bit entry with boot_params) and ELF with the PVH entry
//! (XEN_ELFNOTE_PHYS32_ENTRY, 32-bit protected-mode entry with `hvm_start_info` in %ebx),
//! and Multiboot v1 images (an ELF32 or any file with a Multiboot header, see
//! [`crate::multiboot`]).
//!
//! The format is detected from the file's magic numbers, not its name: an ELF64 loads as
//! vmlinux/PVH; an ELF32 needs a Multiboot header; otherwise the "HdrS" signature means a
//! bzImage and a Multiboot header in the first 8192 bytes means a Multiboot image.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Address, GuestAddress};

use crate::layout::HIMEM_START;
use crate::{BootError, GuestMem, Result};

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// 64-bit Linux boot protocol: long mode, RSI = boot_params.
    Linux64 { entry: u64 },
    /// PVH: 32-bit protected mode, paging off, EBX = hvm_start_info.
    Pvh { entry: u64 },
    /// Multiboot v1: 32-bit protected mode, paging off, EAX = 0x2BADB002,
    /// EBX = the Multiboot information structure (spec 3.2).
    Multiboot { entry: u64 },
}

/// What the loader put in guest memory.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    pub entry: BootEntry,
    /// End of the loaded image (first free byte), for placing what follows.
    pub kernel_end: u64,
    /// The bzImage setup header, copied into boot_params.
    pub setup_header: Option<linux_loader::bootparam::setup_header>,
}

/// Which loader a file needs, from its magic numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
    Multiboot,
}

/// Detect the kernel format: ELF magic at 0, or the "HdrS" boot-protocol signature at 0x202.
pub fn detect_format(file: &mut File, path: &str) -> Result<KernelFormat> {
    let not_kernel = |why: String| BootError::NotAKernel {
        path: path.to_string(),
        why,
    };
    let head = read_head(file, path)?;
    let n = head.len();
    if n < 4 {
        return Err(not_kernel(format!("file is only {n} bytes")));
    }
    if head[0..4] == *b"\x7fELF" {
        if head.get(4) == Some(&2) {
            return Ok(KernelFormat::Elf);
        }
        return match crate::multiboot::find_header(&head) {
            Ok(Some(_)) => Ok(KernelFormat::Multiboot),
            Ok(None) => Err(not_kernel(
                "32-bit ELF without a Multiboot header: irqvm boots ELF32 images by Multiboot v1 only".into(),
            )),
            Err(e) => Err(not_kernel(format!("32-bit ELF: {e}"))),
        };
    }
    if head.get(0x202..0x206) == Some(b"HdrS") {
        return Ok(KernelFormat::BzImage);
    }
    match crate::multiboot::find_header(&head) {
        Ok(Some(_)) => Ok(KernelFormat::Multiboot),
        Ok(None) => Err(not_kernel(
            "no ELF magic, no 'HdrS' boot-protocol signature and no Multiboot header".into(),
        )),
        Err(e) => Err(not_kernel(e.to_string())),
    }
}

/// The first 8192 bytes of the file (all of it if shorter): enough for every magic number.
fn read_head(file: &mut File, path: &str) -> Result<Vec<u8>> {
    let mut head = Vec::with_capacity(crate::multiboot::HEADER_SEARCH_LEN);
    file.seek(SeekFrom::Start(0))
        .and_then(|_| {
            file.by_ref()
                .take(crate::multiboot::HEADER_SEARCH_LEN as u64)
                .read_to_end(&mut head)
        })
        .map_err(|source| BootError::OpenKernel {
            path: path.to_string(),
            source,
        })?;
    Ok(head)
}

/// Load the kernel at `path` into `mem`.
pub fn load_kernel(mem: &GuestMem, path: &str) -> Result<LoadedKernel> {
    let mut file = File::open(path).map_err(|source| BootError::OpenKernel {
        path: path.to_string(),
        source,
    })?;
    let load_err = |source| BootError::LoadKernel {
        path: path.to_string(),
        source,
    };
    match detect_format(&mut file, path)? {
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?;
            let entry = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => BootEntry::Pvh {
                    entry: addr.raw_value(),
                },
                _ => BootEntry::Linux64 {
                    entry: r.kernel_load.raw_value(),
                },
            };
            Ok(LoadedKernel {
                entry,
                kernel_end: r.kernel_end,
                setup_header: None,
            })
        }
        KernelFormat::Multiboot => {
            let head = read_head(&mut file, path)?;
            let file_len = file
                .metadata()
                .map_err(|source| BootError::OpenKernel {
                    path: path.to_string(),
                    source,
                })?
                .len();
            crate::multiboot::load(mem, &mut file, file_len, &head, path)
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?;
            // The 64-bit entry point (startup_64) is 0x200 past the protected-mode code start
            // (boot.rst, "64-bit BOOT PROTOCOL").
            Ok(LoadedKernel {
                entry: BootEntry::Linux64 {
                    entry: r.kernel_load.raw_value() + 0x200,
                },
                kernel_end: r.kernel_end,
                setup_header: r.setup_header,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tmp_with(bytes: &[u8]) -> (std::path::PathBuf, File) {
        let p = std::env::temp_dir().join(format!(
            "irqvm-loader-test-{}-{}",
            std::process::id(),
            bytes.len()
        ));
        let mut f = File::create(&p).unwrap();
        f.write_all(bytes).unwrap();
        (p.clone(), File::open(&p).unwrap())
    }

    #[test]
    fn text_file_is_not_a_kernel() {
        let (p, mut f) = tmp_with(&[b'#'; 0x300]);
        let e = detect_format(&mut f, "x").unwrap_err();
        assert!(matches!(e, BootError::NotAKernel { .. }), "{e}");
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn tiny_file_is_not_a_kernel() {
        let (p, mut f) = tmp_with(b"ab");
        assert!(matches!(
            detect_format(&mut f, "x"),
            Err(BootError::NotAKernel { .. })
        ));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn hdrs_signature_means_bzimage() {
        let mut b = vec![0u8; 0x400];
        b[0x202..0x206].copy_from_slice(b"HdrS");
        let (p, mut f) = tmp_with(&b);
        assert_eq!(detect_format(&mut f, "x").unwrap(), KernelFormat::BzImage);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn elf32_without_multiboot_header_is_refused_with_a_reason() {
        let mut b = vec![0u8; 0x401];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = 1;
        let (p, mut f) = tmp_with(&b);
        let e = detect_format(&mut f, "x").unwrap_err().to_string();
        assert!(e.contains("32-bit ELF without a Multiboot header"), "{e}");
        std::fs::remove_file(p).unwrap();
    }

    fn multiboot_header(flags: u32) -> [u8; 12] {
        let mut h = [0u8; 12];
        h[0..4].copy_from_slice(&0x1bad_b002u32.to_le_bytes());
        h[4..8].copy_from_slice(&flags.to_le_bytes());
        h[8..12].copy_from_slice(
            &0u32
                .wrapping_sub(0x1bad_b002)
                .wrapping_sub(flags)
                .to_le_bytes(),
        );
        h
    }

    #[test]
    fn elf32_with_multiboot_header_is_multiboot() {
        let mut b = vec![0u8; 0x403];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = 1;
        b[0x100..0x10c].copy_from_slice(&multiboot_header(0));
        let (p, mut f) = tmp_with(&b);
        assert_eq!(detect_format(&mut f, "x").unwrap(), KernelFormat::Multiboot);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn flat_file_with_multiboot_header_is_multiboot() {
        let mut b = vec![0u8; 0x1405];
        b[0x1000..0x100c].copy_from_slice(&multiboot_header(1 << 16));
        let (p, mut f) = tmp_with(&b);
        assert_eq!(detect_format(&mut f, "x").unwrap(), KernelFormat::Multiboot);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn multiboot_header_past_8192_bytes_is_not_found() {
        let mut b = vec![0u8; 0x2407];
        b[0x2000..0x200c].copy_from_slice(&multiboot_header(1 << 16));
        let (p, mut f) = tmp_with(&b);
        assert!(matches!(
            detect_format(&mut f, "x"),
            Err(BootError::NotAKernel { .. })
        ));
        std::fs::remove_file(p).unwrap();
    }
}
