//! Emulated interrupt controllers for irqvm.
//!
//! Everything here except [`kvm`] is a pure state machine with no KVM types, so it can be
//! unit-, property- and fuzz-tested on any host. The seams devices use are small traits:
//! [`line::InterruptLine`] (raise/lower/pulse a wire) and [`msi::MsiSender`] (send one
//! message-signalled interrupt). Backends (in-kernel KVM irqchip, or the userspace PIC/IOAPIC
//! under KVM split irqchip) implement them.

pub mod ioapic;
pub mod line;
pub mod msi;
pub mod msix;
pub mod pic;
pub mod ratelimit;
pub mod routing;
pub mod stats;

pub use line::{InterruptLine, LineProvider};
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
    #[error("KVM refused the interrupt request ({what})")]
    Kvm {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}
