//! The interrupt line model: what a device sees of an interrupt wire.
//!
//! A device holds an `Arc<dyn InterruptLine>`. An edge source pulses; a level source asserts
//! and later deasserts. Whether the line is shared (wired-OR of several sources) and where it
//! ends (KVM irqfd, userspace IOAPIC pin, PIC input) is the backend's business.

/// One interrupt wire as a device sees it.
pub trait InterruptLine: Send + Sync {
    /// Drive the line to `level` (true = asserted, before polarity inversion).
    fn set_level(&self, level: bool);

    /// An edge: assert then deassert. Edge-triggered consumers see one rising edge.
    fn pulse(&self) {
        self.set_level(true);
        self.set_level(false);
    }
}

/// Hands out interrupt lines. A GSI's level is the wired-OR of its named sources, so two
/// devices (or two test-device sources) sharing a level line each get their own source.
pub trait LineProvider: Send + Sync {
    /// Source `source` (0..=7) of GSI `gsi`.
    fn line(
        &self,
        gsi: u32,
        source: u8,
    ) -> Result<std::sync::Arc<dyn InterruptLine>, crate::IrqError>;
    /// Times the line was raised by the host (any source) since the last `reset_stats`.
    fn raised(&self, gsi: u32) -> u64;
    /// Zero the host-side counters.
    fn reset_stats(&self);
}
