//! Booting a guest: kernel loaders (bzImage, ELF vmlinux with or without the PVH entry),
//! boot protocol structures (Linux boot_params with e820, PVH `hvm_start_info`), the initial
//! vCPU state (GDT, identity page tables, registers, MSRs, FPU) and the guest CPUID.
//!
//! Addresses come from [`layout`], the one place they are decided.

pub mod acpi;
pub mod cpuid;
pub mod layout;
pub mod loader;
pub mod mptable;
pub mod multiboot;
pub mod params;
pub mod regs;

pub use loader::{load_kernel, BootEntry, LoadedKernel};

/// Errors while preparing a guest to boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel image {path}")]
    OpenKernel {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a kernel irqvm can boot (expected a bzImage, an ELF64 vmlinux, a PVH ELF or a Multiboot image): {why}")]
    NotAKernel { path: String, why: String },
    #[error("loading kernel {path} into guest memory failed: {source}; is the guest memory (--memory) large enough?")]
    LoadKernel {
        path: String,
        source: linux_loader::loader::Error,
    },
    #[error("cannot boot multiboot image {path}")]
    MultibootImage {
        path: String,
        #[source]
        source: multiboot::MultibootError,
    },
    #[error("preparing the multiboot modules and boot information failed")]
    Multiboot {
        #[source]
        source: multiboot::MultibootError,
    },
    #[error("cannot read initrd {path}")]
    OpenInitrd {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("initrd {path} ({size} bytes) does not fit in guest RAM below {limit:#x}; give the guest more --memory")]
    InitrdTooLarge { path: String, size: u64, limit: u64 },
    #[error("kernel command line is too long ({len} bytes, at most {max})")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("writing boot data to guest memory at {addr:#x} failed: {source}")]
    GuestMemory {
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
    #[error("setting up vCPU {cpu} registers failed ({what})")]
    Vcpu {
        cpu: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_GET_SUPPORTED_CPUID failed")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
}

/// Guest memory as irqvm maps it.
pub type GuestMem = vm_memory::GuestMemoryMmap;

pub type Result<T> = std::result::Result<T, BootError>;

/// Write `val` at guest physical `addr`, mapping the error.
pub(crate) fn write_obj<T: vm_memory::ByteValued>(mem: &GuestMem, val: T, addr: u64) -> Result<()> {
    use vm_memory::{Bytes, GuestAddress};
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|source| BootError::GuestMemory { addr, source })
}

pub(crate) fn write_slice(mem: &GuestMem, buf: &[u8], addr: u64) -> Result<()> {
    use vm_memory::{Bytes, GuestAddress};
    mem.write_slice(buf, GuestAddress(addr))
        .map_err(|source| BootError::GuestMemory { addr, source })
}
