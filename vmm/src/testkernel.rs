//! The guest test kernel (guest/testkernel), built by vmm/build.rs and embedded in irqvm so
//! `irqvm` can run its own interrupt-controller self test without external files.
//!
//! The image is an ELF64 with a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) and one load
//! segment at 1 MiB. Kernel command line: `irqvm.mode=bench` selects the delivery-cost
//! measurements instead of the test cases; `irqvm.ncpus=N` overrides the CPU count when the
//! test device is absent (QEMU).
use std::path::{Path, PathBuf};

use crate::cli::{CpuTemplateArg, InjectFault, IrqchipMode, SerialOut};
use crate::vm::{self, Outcome, VmConfig, VmmError};

/// The test kernel ELF image.
pub const TESTKERNEL_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/testkernel.elf"));

/// Write the embedded test kernel to `path` (e.g. to boot it under QEMU).
pub fn write_to(path: &Path) -> std::io::Result<()> {
    std::fs::write(path, TESTKERNEL_ELF)
}

/// Boot the embedded test kernel with the test device: `irqvm selftest` and `irqvm bench`.
pub fn run_embedded(
    irqchip: IrqchipMode,
    vcpus: u32,
    cmdline: &str,
    inject_fault: Option<InjectFault>,
) -> Result<Outcome, VmmError> {
    let path = std::env::temp_dir().join(format!("irqvm-testkernel-{}.elf", std::process::id()));
    write_to(&path).map_err(|source| VmmError::Io {
        what: "writing the embedded test kernel to a temporary file",
        source,
    })?;
    let r = vm::run(VmConfig {
        kernel: path.clone(),
        initrd: None,
        cmdline: cmdline.to_string(),
        mem_mib: 64,
        vcpus,
        irqchip,
        serial: SerialOut::Stdio,
        cpu_template: CpuTemplateArg::Auto,
        testdev: true,
        kvm_device: PathBuf::from("/dev/kvm"),
        irq_stats: false,
        inject_fault,
        disks: Vec::new(),
        nets: Vec::new(),
        virtio_transport: Default::default(),
    });
    let _ = std::fs::remove_file(&path);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    #[test]
    fn image_is_elf64_x86_64_executable() {
        let b = TESTKERNEL_ELF;
        assert_eq!(&b[..4], b"\x7fELF");
        assert_eq!(b[4], 2, "ELFCLASS64");
        assert_eq!(u16_at(b, 16), 2, "ET_EXEC");
        assert_eq!(u16_at(b, 18), 62, "EM_X86_64");
    }

    #[test]
    fn image_has_pvh_entry_note_inside_the_load_segment() {
        let b = TESTKERNEL_ELF;
        let (phoff, phentsize, phnum) = (
            u64_at(b, 32) as usize,
            u16_at(b, 54) as usize,
            u16_at(b, 56) as usize,
        );
        let mut entry = None;
        let mut loads = vec![];
        for i in 0..phnum {
            let ph = phoff + i * phentsize;
            let (ty, off, paddr, filesz, memsz) = (
                u32_at(b, ph),
                u64_at(b, ph + 8) as usize,
                u64_at(b, ph + 24),
                u64_at(b, ph + 32) as usize,
                u64_at(b, ph + 40),
            );
            if ty == 1 {
                loads.push((paddr, memsz));
            }
            if ty == 4 {
                // The whole PT_NOTE segment must parse as notes: loaders walk all of it.
                let mut n = off;
                while n < off + filesz {
                    let (namesz, descsz, nty) = (
                        u32_at(b, n) as usize,
                        u32_at(b, n + 4) as usize,
                        u32_at(b, n + 8),
                    );
                    let desc = n + 12 + namesz.div_ceil(4) * 4;
                    let next = desc + descsz.div_ceil(4) * 4;
                    assert!(next <= off + filesz, "malformed note at file offset {n:#x}");
                    if nty == 18 && &b[n + 12..n + 12 + namesz] == b"Xen\0" {
                        entry = Some(u32_at(b, desc) as u64);
                    }
                    n = next;
                }
            }
        }
        let entry = entry.expect("XEN_ELFNOTE_PHYS32_ENTRY note");
        assert!(
            loads.iter().any(|&(p, m)| p <= entry && entry < p + m),
            "entry {entry:#x} not loaded"
        );
        assert!(
            loads.iter().all(|&(p, _)| p >= 0x10_0000),
            "loads below 1 MiB would hit boot tables"
        );
    }
}
