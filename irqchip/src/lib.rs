//! Emulated interrupt controllers for irqvm.
//!
//! Everything here except [`kvm`] is a pure state machine with no KVM types, so it can be
//! unit-, property- and fuzz-tested on any host. The seams devices use are small traits:
//! [`line::InterruptLine`] (raise/lower/pulse a wire) and [`msi::MsiSender`] (send one
//! message-signalled interrupt). Backends (in-kernel KVM irqchip, or the userspace PIC/IOAPIC
//! under KVM split irqchip) implement them.

pub mod ioapic;
pub mod kvm;
pub mod line;
pub mod msi;
pub mod msix;
pub mod pic;
pub mod ratelimit;
pub mod routing;
pub mod split;
pub mod stats;

pub use line::{InterruptLine, LineProvider};

/// The vCPU-facing side of a userspace interrupt controller (KVM split irqchip): what the
/// boot vCPU's thread asks before each KVM_RUN.
pub trait ExtIntSource: Send + Sync {
    /// Whether the 8259's INT output is asserted (an ExtINT request for the BSP's LINT0).
    fn extint_pending(&self) -> bool;
    /// The INTA cycle: the vector to inject (KVM_INTERRUPT), or None if nothing is pending.
    fn extint_ack(&self) -> Option<u8>;
}

/// Where a local APIC's EOI of a level-triggered IOAPIC vector goes
/// (KVM_EXIT_IOAPIC_EOI under split irqchip).
pub trait EoiSink: Send + Sync {
    fn ioapic_eoi(&self, vector: u8);
}

/// Wakes a vCPU thread out of KVM_RUN so it can inject an interrupt or stop.
pub trait VcpuKicker: Send + Sync {
    fn kick(&self, cpu: u8);
}
pub use msi::{MsiMessage, MsiSender};

/// Errors raised while delivering interrupts.
#[derive(Debug, thiserror::Error)]
pub enum IrqError {
    #[error("GSI {gsi} source {source_id} does not exist (GSIs 0..{max}, sources 0..=7)")]
    NoSuchLine { gsi: u32, source_id: u8, max: u32 },
    #[error("signalling eventfd for GSI {gsi} failed")]
    EventFd {
        gsi: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("MSI not delivered: {0}")]
    InvalidMsi(#[from] msi::MsiError),
    #[error("KVM refused the interrupt request ({what})")]
    Kvm {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}
