//! Interrupt statistics: per-GSI and per-source counters, lock-free.
//!
//! Controllers and the backend bump counters through a shared [`IrqStats`] (all atomics, so
//! any thread may record). Counters per GSI:
//!
//! * `raised`: the line (the wired-OR of its sources) went up or was pulsed; per source 0..=7
//!   separately ([`IrqStats::record_source_raise`]),
//! * `delivered`: the controller sent the interrupt to the CPU(s),
//! * `coalesced`: raised while a request was already pending, so it merged with it,
//! * `eoi`: end-of-interrupt reached the controller for this GSI,
//! * `spurious`: the PIC answered an INTA with the spurious IRQ7/IRQ15 vector,
//! * `throttled`: the IOAPIC storm throttle held a redelivery back.
//!
//! [`IrqStats::format_table`] renders a `/proc/interrupts`-like table (one row per GSI with a
//! non-zero count) for `irqvm --irq-stats`; [`IrqStats::format_parseable`] renders one
//! `irqstat gsi=N raised=.. ...` line per GSI that [`parse_parseable`] reads back.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Number of named sources per GSI (see [`crate::line`]).
pub const SOURCES_PER_GSI: usize = 8;

/// Which counter to bump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    Raised,
    Delivered,
    Coalesced,
    Eoi,
    Spurious,
    Throttled,
}

impl Counter {
    /// All counters, in table column order.
    pub const ALL: [Counter; 6] = [
        Counter::Raised,
        Counter::Delivered,
        Counter::Coalesced,
        Counter::Eoi,
        Counter::Spurious,
        Counter::Throttled,
    ];

    /// The lower-case name used in the parseable form.
    pub fn name(self) -> &'static str {
        match self {
            Counter::Raised => "raised",
            Counter::Delivered => "delivered",
            Counter::Coalesced => "coalesced",
            Counter::Eoi => "eoi",
            Counter::Spurious => "spurious",
            Counter::Throttled => "throttled",
        }
    }

    fn index(self) -> usize {
        match self {
            Counter::Raised => 0,
            Counter::Delivered => 1,
            Counter::Coalesced => 2,
            Counter::Eoi => 3,
            Counter::Spurious => 4,
            Counter::Throttled => 5,
        }
    }
}

#[derive(Debug, Default)]
struct GsiCounters {
    counters: [AtomicU64; 6],
    source_raised: [AtomicU64; SOURCES_PER_GSI],
}

/// A snapshot of one GSI's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GsiSnapshot {
    pub gsi: u32,
    pub raised: u64,
    pub delivered: u64,
    pub coalesced: u64,
    pub eoi: u64,
    pub spurious: u64,
    pub throttled: u64,
    /// Raises per named source 0..=7.
    pub source_raised: [u64; SOURCES_PER_GSI],
}

impl GsiSnapshot {
    /// The value of one counter.
    pub fn get(&self, c: Counter) -> u64 {
        match c {
            Counter::Raised => self.raised,
            Counter::Delivered => self.delivered,
            Counter::Coalesced => self.coalesced,
            Counter::Eoi => self.eoi,
            Counter::Spurious => self.spurious,
            Counter::Throttled => self.throttled,
        }
    }

    fn set(&mut self, c: Counter, v: u64) {
        match c {
            Counter::Raised => self.raised = v,
            Counter::Delivered => self.delivered = v,
            Counter::Coalesced => self.coalesced = v,
            Counter::Eoi => self.eoi = v,
            Counter::Spurious => self.spurious = v,
            Counter::Throttled => self.throttled = v,
        }
    }

    /// Whether every counter is zero.
    pub fn is_zero(&self) -> bool {
        Counter::ALL.iter().all(|c| self.get(*c) == 0) && self.source_raised.iter().all(|n| *n == 0)
    }

    /// `s0=N,s3=M` for the sources with a non-zero count (empty if none).
    fn sources_text(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.source_raised.iter().enumerate() {
            if *n != 0 {
                if !out.is_empty() {
                    out.push(',');
                }
                let _ = write!(out, "s{i}={n}");
            }
        }
        out
    }
}

/// Counters for GSIs `0..num_gsis`. Recording on a GSI outside that range is ignored.
#[derive(Debug)]
pub struct IrqStats {
    gsis: Box<[GsiCounters]>,
    labels: Mutex<Vec<Option<String>>>,
}

impl IrqStats {
    /// Counters for GSIs `0..num_gsis`.
    pub fn new(num_gsis: u32) -> Self {
        let n = num_gsis as usize;
        Self {
            gsis: (0..n).map(|_| GsiCounters::default()).collect(),
            labels: Mutex::new(vec![None; n]),
        }
    }

    /// Number of GSIs tracked.
    pub fn num_gsis(&self) -> u32 {
        u32::try_from(self.gsis.len()).unwrap_or(u32::MAX)
    }

    fn gsi(&self, gsi: u32) -> Option<&GsiCounters> {
        self.gsis.get(gsi as usize)
    }

    /// Add one to `counter` of `gsi`.
    pub fn record(&self, gsi: u32, counter: Counter) {
        self.add(gsi, counter, 1);
    }

    /// Add `n` to `counter` of `gsi`.
    pub fn add(&self, gsi: u32, counter: Counter, n: u64) {
        if let Some(g) = self.gsi(gsi) {
            if let Some(c) = g.counters.get(counter.index()) {
                c.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// A raise by named source `source` (0..=7): bumps only the per-source count. The GSI's
    /// `raised` counter is the line's (the wired-OR output's) and is recorded separately with
    /// [`IrqStats::record`], so a raise hidden by another source holding the line is not a
    /// line raise.
    pub fn record_source_raise(&self, gsi: u32, source: u8) {
        if let Some(s) = self
            .gsi(gsi)
            .and_then(|g| g.source_raised.get(usize::from(source)))
        {
            s.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Current value of `counter` for `gsi` (0 for unknown GSIs).
    pub fn get(&self, gsi: u32, counter: Counter) -> u64 {
        self.gsi(gsi)
            .and_then(|g| g.counters.get(counter.index()))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Raises by one source of `gsi`.
    pub fn source_raised(&self, gsi: u32, source: u8) -> u64 {
        self.gsi(gsi)
            .and_then(|g| g.source_raised.get(usize::from(source)))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Name a GSI in the table (e.g. `"IO-APIC 4-edge serial"`).
    pub fn set_label(&self, gsi: u32, label: impl Into<String>) {
        if let Ok(mut l) = self.labels.lock() {
            if let Some(slot) = l.get_mut(gsi as usize) {
                *slot = Some(label.into());
            }
        }
    }

    /// Zero every counter.
    pub fn reset(&self) {
        for g in self.gsis.iter() {
            for c in g.counters.iter().chain(g.source_raised.iter()) {
                c.store(0, Ordering::Relaxed);
            }
        }
    }

    /// One snapshot of `gsi` (all zero for unknown GSIs).
    pub fn snapshot_gsi(&self, gsi: u32) -> GsiSnapshot {
        let mut s = GsiSnapshot {
            gsi,
            ..Default::default()
        };
        for c in Counter::ALL {
            s.set(c, self.get(gsi, c));
        }
        for (src, slot) in s.source_raised.iter_mut().enumerate() {
            *slot = self.source_raised(gsi, src as u8);
        }
        s
    }

    /// Snapshots of every GSI with a non-zero counter, in GSI order.
    pub fn snapshot(&self) -> Vec<GsiSnapshot> {
        (0..self.num_gsis())
            .map(|g| self.snapshot_gsi(g))
            .filter(|s| !s.is_zero())
            .collect()
    }

    /// A `/proc/interrupts`-like table: a header and one row per GSI with a non-zero count.
    pub fn format_table(&self) -> String {
        let labels = self.labels.lock().map(|l| l.clone()).unwrap_or_default();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:>5} {:>12} {:>12} {:>12} {:>12} {:>10} {:>10}  NAME [SOURCES]",
            "GSI", "RAISED", "DELIVERED", "COALESCED", "EOI", "SPURIOUS", "THROTTLED"
        );
        for s in self.snapshot() {
            let label = labels
                .get(s.gsi as usize)
                .and_then(|l| l.as_deref())
                .unwrap_or("");
            let sources = s.sources_text();
            let _ = write!(
                out,
                "{:>4}: {:>12} {:>12} {:>12} {:>12} {:>10} {:>10}  {}",
                s.gsi, s.raised, s.delivered, s.coalesced, s.eoi, s.spurious, s.throttled, label
            );
            if !sources.is_empty() {
                let _ = write!(out, " [{sources}]");
            }
            out.push('\n');
        }
        out
    }

    /// One `irqstat gsi=N raised=.. delivered=.. coalesced=.. eoi=.. spurious=.. throttled=..
    /// sources=n0,..,n7` line per GSI with a non-zero count; read back with
    /// [`parse_parseable`].
    pub fn format_parseable(&self) -> String {
        let mut out = String::new();
        for s in self.snapshot() {
            let _ = write!(out, "irqstat gsi={}", s.gsi);
            for c in Counter::ALL {
                let _ = write!(out, " {}={}", c.name(), s.get(c));
            }
            let sources: Vec<String> = s.source_raised.iter().map(u64::to_string).collect();
            let _ = write!(out, " sources={}", sources.join(","));
            out.push('\n');
        }
        out
    }
}

/// A malformed `irqstat` line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatsParseError {
    #[error("line {line}: field `{field}` is not `name=number`; expected the output of IrqStats::format_parseable")]
    BadField { line: usize, field: String },
    #[error("line {line}: missing `gsi=`; expected the output of IrqStats::format_parseable")]
    MissingGsi { line: usize },
}

/// Parse the output of [`IrqStats::format_parseable`]. Lines not starting with `irqstat`
/// are skipped (so whole logs can be fed in); unknown `name=value` fields are ignored.
pub fn parse_parseable(text: &str) -> Result<Vec<GsiSnapshot>, StatsParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace();
        if words.next() != Some("irqstat") {
            continue;
        }
        let mut snap = GsiSnapshot::default();
        let mut have_gsi = false;
        for w in words {
            let (k, v) = w.split_once('=').ok_or_else(|| StatsParseError::BadField {
                line: i + 1,
                field: w.to_string(),
            })?;
            if k == "sources" {
                for (slot, n) in snap.source_raised.iter_mut().zip(v.split(',')) {
                    *slot = n.parse().map_err(|_| StatsParseError::BadField {
                        line: i + 1,
                        field: w.to_string(),
                    })?;
                }
                continue;
            }
            let v: u64 = v.parse().map_err(|_| StatsParseError::BadField {
                line: i + 1,
                field: w.to_string(),
            })?;
            if k == "gsi" {
                snap.gsi = u32::try_from(v).map_err(|_| StatsParseError::BadField {
                    line: i + 1,
                    field: w.to_string(),
                })?;
                have_gsi = true;
            } else if let Some(c) = Counter::ALL.iter().find(|c| c.name() == k) {
                snap.set(*c, v);
            }
        }
        if !have_gsi {
            return Err(StatsParseError::MissingGsi { line: i + 1 });
        }
        out.push(snap);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_bumps_only_that_gsi_and_counter() {
        let s = IrqStats::new(24);
        s.record(4, Counter::Delivered);
        s.record(4, Counter::Delivered);
        assert_eq!(s.get(4, Counter::Delivered), 2);
        assert_eq!(s.get(4, Counter::Raised), 0);
        assert_eq!(s.get(5, Counter::Delivered), 0);
    }

    #[test]
    fn out_of_range_gsi_is_ignored() {
        let s = IrqStats::new(2);
        s.record(100, Counter::Eoi);
        s.record_source_raise(1, 200);
        s.record_source_raise(100, 1);
        assert_eq!(s.get(100, Counter::Eoi), 0);
        assert_eq!(s.source_raised(1, 200), 0);
    }

    #[test]
    fn source_raise_counts_per_source_only() {
        let s = IrqStats::new(24);
        s.record_source_raise(10, 0);
        s.record_source_raise(10, 7);
        s.record_source_raise(10, 7);
        assert_eq!(s.source_raised(10, 7), 2);
        assert_eq!(s.source_raised(10, 0), 1);
        assert_eq!(
            s.get(10, Counter::Raised),
            0,
            "line raises are recorded by the backend"
        );
    }

    #[test]
    fn reset_zeroes_everything() {
        let s = IrqStats::new(24);
        s.record_source_raise(1, 1);
        s.record(1, Counter::Throttled);
        s.reset();
        assert!(s.snapshot().is_empty());
        assert_eq!(s.source_raised(1, 1), 0);
    }

    #[test]
    fn table_has_one_row_per_nonzero_gsi_with_label() {
        let s = IrqStats::new(24);
        s.record(4, Counter::Delivered);
        s.record(9, Counter::Spurious);
        s.record_source_raise(4, 2);
        s.set_label(4, "serial");
        let t = s.format_table();
        assert_eq!(t.lines().count(), 3, "{t}");
        assert!(
            t.lines()
                .nth(1)
                .is_some_and(|l| l.ends_with("serial [s2=1]")),
            "{t}"
        );
        assert!(t.lines().next().is_some_and(|l| l.contains("THROTTLED")));
    }

    #[test]
    fn parseable_form_round_trips() {
        let s = IrqStats::new(64);
        s.record_source_raise(3, 6);
        s.record_source_raise(50, 0);
        s.add(3, Counter::Raised, 7);
        s.add(3, Counter::Coalesced, 2);
        s.add(40, Counter::Eoi, 1);
        let parsed = parse_parseable(&s.format_parseable()).unwrap();
        assert_eq!(parsed, s.snapshot());
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[0].coalesced, 2);
        assert_eq!(parsed[0].source_raised[6], 1);
        assert_eq!(parsed[2].source_raised[0], 1);
    }

    #[test]
    fn parse_skips_other_lines_and_rejects_garbage() {
        let ok = parse_parseable("hello\nirqstat gsi=2 raised=1 future=5\n").unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].raised, 1);
        assert!(matches!(
            parse_parseable("irqstat gsi=x"),
            Err(StatsParseError::BadField { line: 1, .. })
        ));
        assert!(matches!(
            parse_parseable("irqstat raised=1"),
            Err(StatsParseError::MissingGsi { line: 1 })
        ));
    }
}
