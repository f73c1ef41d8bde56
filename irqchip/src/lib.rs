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

/// Where MSI/MSI-X vectors get GSI routes and irqfds (KVM_SET_GSI_ROUTING + KVM_IRQFD).
///
/// KVM_SET_GSI_ROUTING replaces the *whole* table, so each backend owns exactly one table
/// holding its IOAPIC/PIC routes (GSIs 0..=23) and the MSI routes (GSIs >= 24) handed out
/// here. Order of operations a device uses, and why:
/// 1. [`alloc_msi_gsi`](Self::alloc_msi_gsi) installs the route *before*
///    2. [`register_irqfd`](Self::register_irqfd) binds the eventfd, so the irqfd never exists
///    without a route (KVM would drop its signals).
/// 3. When the guest rewrites a vector's address/data, [`set_msi_route`](Self::set_msi_route)
///    re-installs the table synchronously (KVM switches routes under SRCU and updates every
///    irqfd's cached route before the ioctl returns), and only then does the device fire any
///    interrupt that became deliverable, so it reaches the new destination. A signal racing
///    with the update reaches either the old or the new destination, never neither.
pub trait MsiRouteSink: Send + Sync {
    /// Allocate the lowest free GSI >= 24, route it to `msg` and install the table.
    fn alloc_msi_gsi(&self, msg: MsiMessage) -> Result<u32, IrqError>;
    /// Point allocated GSI `gsi` at `msg` (installs the table if it changed).
    fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), IrqError>;
    /// Bind `fd` as an irqfd to `gsi`: each write injects the routed MSI in the kernel.
    fn register_irqfd(&self, gsi: u32, fd: &vmm_sys_util::eventfd::EventFd)
        -> Result<(), IrqError>;
}

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
    #[error("GSI routing: {0}")]
    Routing(#[from] routing::RoutingError),
    #[error("MSI not delivered: {0}")]
    InvalidMsi(#[from] msi::MsiError),
    #[error("KVM refused the interrupt request ({what})")]
    Kvm {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}
