//! The guest test kernel (guest/testkernel), built by vmm/build.rs and embedded in irqvm so
//! `irqvm` can run its own interrupt-controller self test without external files.
//!
//! The image is an ELF64 with a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) and one load
//! segment at 1 MiB. Kernel command line: `irqvm.mode=bench` selects the delivery-cost
//! measurements instead of the test cases; `irqvm.ncpus=N` overrides the CPU count when the
//! test device is absent (QEMU).
use std::path::{Path, PathBuf};

use crate::cli::{CpuTemplateArg, InjectFault, IrqchipMode, SerialOut};
use crate::pci_setup::{DiskSpec, VirtioTransportArg};
use crate::vm::{self, Outcome, VmConfig, VmmError};
use devices::virtio::worker::Moderation;

/// Size of each scratch disk: 2048 sectors, plenty for the cases and the bench.
pub const SCRATCH_DISK_BYTES: u64 = 1 << 20;

/// Interrupt moderation of scratch disk 2: hold completions until 4 are pending or 200 ms
/// passed since the first held one (the guest reads these back with DISK_MODERATION).
pub const SCRATCH_MODERATION: Moderation = Moderation {
    usecs: 200_000,
    max_frames: 4,
};

/// The virtio-blk disks `irqvm selftest` and `irqvm bench` attach, in this order (the
/// guest finds them with the test device's DISK_INFO, docs/testdev.md):
/// 0. virtio-pci (slot 1), no moderation: MSI-X and INTx cases;
/// 1. virtio-mmio (index 0, GSI 20);
/// 2. virtio-pci (slot 2), moderation [`SCRATCH_MODERATION`].
///
/// Each is a fresh zero-filled temporary file, deleted when this is dropped.
pub struct ScratchDisks {
    paths: Vec<PathBuf>,
    pub specs: Vec<DiskSpec>,
}

impl ScratchDisks {
    pub fn create() -> Result<Self, VmmError> {
        let layout = [
            (VirtioTransportArg::Pci, Moderation::default()),
            (VirtioTransportArg::Mmio, Moderation::default()),
            (VirtioTransportArg::Pci, SCRATCH_MODERATION),
        ];
        let mut disks = Self {
            paths: Vec::new(),
            specs: Vec::new(),
        };
        for (i, (transport, moderation)) in layout.into_iter().enumerate() {
            let path =
                std::env::temp_dir().join(format!("irqvm-scratch-{}-{i}.img", std::process::id()));
            let f = std::fs::File::create(&path).map_err(|source| VmmError::Io {
                what: "creating a scratch disk in the temporary directory",
                source,
            })?;
            disks.paths.push(path.clone());
            f.set_len(SCRATCH_DISK_BYTES)
                .map_err(|source| VmmError::Io {
                    what: "sizing a scratch disk",
                    source,
                })?;
            disks.specs.push(DiskSpec {
                path,
                readonly: false,
                moderation,
                transport: Some(transport),
                event_idx: true,
            });
        }
        Ok(disks)
    }
}

impl Drop for ScratchDisks {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The test kernel ELF image.
pub const TESTKERNEL_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/testkernel.elf"));

/// Write the embedded test kernel to `path` (e.g. to boot it under QEMU).
pub fn write_to(path: &Path) -> std::io::Result<()> {
    std::fs::write(path, TESTKERNEL_ELF)
}

/// Boot the embedded test kernel with the test device and the scratch disks
/// ([`ScratchDisks`]): `irqvm selftest`.
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
    let disks = match ScratchDisks::create() {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    };
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
        disks: disks.specs.clone(),
        nets: Vec::new(),
        virtio_transport: Default::default(),
    });
    let _ = std::fs::remove_file(&path);
    drop(disks);
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
