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

    /// An edge that has reached the interrupt controller when this returns. `pulse` may be
    /// asynchronous (an irqfd on a non-MSI route is injected from a KVM work item), which is
    /// right for a device but not for a test command whose caller inspects IRR next.
    fn pulse_sync(&self) {
        self.pulse();
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
    /// A source for a *level-triggered device line that re-checks its condition at each EOI*
    /// (PCI INTx). Backends may implement it with KVM's irqfd resampler; the default is
    /// [`LineProvider::line`]. Do not use it for lines driven with exact assert/deassert
    /// timing: a resampled line stays asserted until the guest's EOI.
    fn level_line(
        &self,
        gsi: u32,
        source: u8,
    ) -> Result<std::sync::Arc<dyn InterruptLine>, crate::IrqError> {
        self.line(gsi, source)
    }
    /// Times the line was raised by the host (any source) since the last `reset_stats`.
    fn raised(&self, gsi: u32) -> u64;
    /// Raises of this GSI the host saw merge: hidden by another source of the wired-OR, or
    /// (split mode) an IOAPIC delivery that no local APIC accepted. Merges into a vector
    /// already pending in a LAPIC's IRR are invisible here: KVM reports them as delivered.
    fn coalesced(&self, _gsi: u32) -> u64 {
        0
    }
    /// Zero the host-side counters.
    fn reset_stats(&self);
}

/// Number of named sources per GSI (`0..=7`).
pub const SOURCES_PER_LINE: u8 = 8;

/// How a wired-OR line's output changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineChange {
    /// The output did not change.
    Unchanged,
    /// The output went from deasserted to asserted.
    Rose,
    /// The output went from asserted to deasserted.
    Fell,
}

/// The wired-OR model of shared interrupt lines: per GSI, a bitmask of the named sources
/// (0..=7) currently asserting it. The line is asserted while any source asserts it, so a
/// shared level line stays asserted until *all* its sources drop (PCI Local Bus 3.0, 2.2.6:
/// INTx# are open-drain, wire-ORed). An edge source pulses: if no other source holds the line,
/// the line rises and falls (one edge); if another source already holds it high, the pulse is
/// invisible, as on a real wire.
///
/// Pure and single-threaded (`&mut self`): the backend calls it under the same lock as the
/// controller the line feeds, so the order of level changes the controller sees is the order
/// they happened in.
#[derive(Debug, Clone)]
pub struct WiredOr {
    sources: Vec<u8>,
}

impl WiredOr {
    /// Lines for GSIs `0..num_gsis`, all deasserted.
    pub fn new(num_gsis: u32) -> Self {
        Self {
            sources: vec![0; num_gsis as usize],
        }
    }

    /// Number of GSIs.
    pub fn num_gsis(&self) -> u32 {
        u32::try_from(self.sources.len()).unwrap_or(u32::MAX)
    }

    fn slot(&mut self, gsi: u32, source: u8) -> Result<&mut u8, crate::IrqError> {
        let max = self.num_gsis();
        if source >= SOURCES_PER_LINE {
            return Err(crate::IrqError::NoSuchLine {
                gsi,
                source_id: source,
                max,
            });
        }
        self.sources
            .get_mut(gsi as usize)
            .ok_or(crate::IrqError::NoSuchLine {
                gsi,
                source_id: source,
                max,
            })
    }

    /// Drive `source` of `gsi` to `level`; returns how the line's output changed.
    pub fn set(
        &mut self,
        gsi: u32,
        source: u8,
        level: bool,
    ) -> Result<LineChange, crate::IrqError> {
        let slot = self.slot(gsi, source)?;
        let before = *slot != 0;
        if level {
            *slot |= 1 << source;
        } else {
            *slot &= !(1 << source);
        }
        let after = *slot != 0;
        Ok(match (before, after) {
            (false, true) => LineChange::Rose,
            (true, false) => LineChange::Fell,
            _ => LineChange::Unchanged,
        })
    }

    /// One edge from `source`: true when the line actually rose and fell (no other source was
    /// holding it high). A pulse from a source that itself holds the line asserted leaves it
    /// asserted and is invisible too.
    pub fn pulse(&mut self, gsi: u32, source: u8) -> Result<bool, crate::IrqError> {
        let slot = self.slot(gsi, source)?;
        Ok(*slot == 0)
    }

    /// Output level of `gsi` (false for unknown GSIs).
    pub fn level(&self, gsi: u32) -> bool {
        self.sources.get(gsi as usize).is_some_and(|s| *s != 0)
    }

    /// Bitmask of the sources asserting `gsi`.
    pub fn sources(&self, gsi: u32) -> u8 {
        self.sources.get(gsi as usize).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn first_source_raises_the_line() {
        let mut w = WiredOr::new(24);
        assert_eq!(w.set(5, 0, true).unwrap(), LineChange::Rose);
        assert!(w.level(5));
    }

    #[test]
    fn shared_level_line_stays_asserted_until_all_sources_drop() {
        let mut w = WiredOr::new(24);
        w.set(11, 0, true).unwrap();
        assert_eq!(w.set(11, 3, true).unwrap(), LineChange::Unchanged);
        assert_eq!(w.set(11, 0, false).unwrap(), LineChange::Unchanged);
        assert!(w.level(11));
        assert_eq!(w.set(11, 3, false).unwrap(), LineChange::Fell);
        assert!(!w.level(11));
    }

    #[test]
    fn reasserting_the_same_source_changes_nothing() {
        let mut w = WiredOr::new(24);
        w.set(1, 2, true).unwrap();
        assert_eq!(w.set(1, 2, true).unwrap(), LineChange::Unchanged);
        assert_eq!(w.sources(1), 1 << 2);
    }

    #[test]
    fn pulse_on_idle_line_is_an_edge() {
        let mut w = WiredOr::new(24);
        assert!(w.pulse(4, 1).unwrap());
        assert!(!w.level(4));
    }

    #[test]
    fn pulse_on_a_line_held_by_another_source_is_invisible() {
        let mut w = WiredOr::new(24);
        w.set(4, 0, true).unwrap();
        assert!(!w.pulse(4, 1).unwrap());
        assert!(w.level(4));
    }

    #[test]
    fn source_8_and_unknown_gsi_are_errors() {
        let mut w = WiredOr::new(24);
        assert!(w.set(0, 8, true).is_err());
        assert!(w.set(24, 0, true).is_err());
        assert!(w.pulse(24, 0).is_err());
        assert!(!w.level(1000));
    }

    proptest! {
        #[test]
        fn line_level_is_the_or_of_its_sources(ops in proptest::collection::vec((0u32..4, 0u8..8, any::<bool>()), 0..100)) {
            let mut w = WiredOr::new(4);
            let mut model = [0u8; 4];
            for (g, s, l) in ops {
                let before = model[g as usize] != 0;
                if l { model[g as usize] |= 1 << s } else { model[g as usize] &= !(1 << s) }
                let after = model[g as usize] != 0;
                let ch = w.set(g, s, l).unwrap();
                prop_assert_eq!(ch == LineChange::Rose, !before && after);
                prop_assert_eq!(ch == LineChange::Fell, before && !after);
                prop_assert_eq!(w.level(g), after);
            }
        }
    }
}
