//! The irqvm test device (`--testdev`): the port-I/O window through which the guest test
//! kernel drives interrupt lines, sends MSIs, raises the MSI-X vectors and INTx of the test
//! PCI function ([`TestPciFunction`]), reports results and ends the VM.
//!
//! The register map and command set are specified in `docs/testdev.md`; this file implements
//! exactly that document. All registers are 32 bits wide at `TESTDEV_PORT` (0x2100, 64 ports).
//! Every value the guest writes is untrusted: bad offsets, sizes, GSIs, sources and MSI
//! addresses produce the documented error result (`RESULT = 0xffff_ffff`), never a panic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use irqchip::msix::MsixRaise;
use irqchip::{LineProvider, MsiMessage, MsiSender};

use crate::pci::testfn::TestPciFunction;
use crate::virtio::VirtioStats;
use crate::{BusDevice, ExitSink, GuestExit};

/// The test PCI function as the test device shares it with the PCI bus.
pub type SharedTestFn = Arc<Mutex<TestPciFunction>>;

/// "IRQT" read as a little-endian u32 at offset 0.
pub const TESTDEV_ID: u32 = 0x5451_4952;
/// RESULT value for a failed command.
pub const RESULT_ERROR: u32 = 0xffff_ffff;

/// Register offsets (docs/testdev.md, "registers").
pub mod reg {
    pub const ID_COMMAND: u64 = 0x00;
    pub const ARG0: u64 = 0x04;
    pub const ARG3: u64 = 0x10;
    pub const RESULT: u64 = 0x14;
    pub const DOORBELL: u64 = 0x18;
    pub const EXIT: u64 = 0x1c;
    pub const REPORT: u64 = 0x20;
    pub const MODE: u64 = 0x24;
    pub const HOST: u64 = 0x28;
    pub const NCPUS: u64 = 0x2c;
}

/// Command numbers (docs/testdev.md, "Commands").
pub mod cmd {
    pub const LINE_SET: u32 = 1;
    pub const LINE_PULSE: u32 = 2;
    pub const BURST: u32 = 3;
    pub const MSIX_RAISE: u32 = 4;
    pub const MSI_SIGNAL: u32 = 5;
    pub const LINE_STATS: u32 = 6;
    pub const STATS_RESET: u32 = 7;
    pub const BURST_STATUS: u32 = 8;
    pub const LINE_COALESCED: u32 = 9;
    pub const MSIX_BURST: u32 = 10;
    pub const MSIX_STATS: u32 = 11;
    pub const INTX_SET: u32 = 12;
    pub const MSIX_BURST_STATUS: u32 = 13;
    /// Virtio disk commands start at 32 (MSI-X commands use 10 and up).
    pub const DISK_INFO: u32 = 32;
    pub const DISK_MODERATION: u32 = 33;
    pub const VIRTIO_STATS: u32 = 34;
}

/// MSIX_RAISE results (docs/testdev.md).
pub mod msix_result {
    pub const FIRED: u32 = 0;
    pub const PENDED: u32 = 1;
    pub const DROPPED: u32 = 2;
}

/// MSIX_STATS counters (ARG1), see [`crate::pci::msix::VectorStats`].
pub mod msix_stat {
    pub const RAISED: u32 = 0;
    pub const FIRED: u32 = 1;
    pub const PENDED: u32 = 2;
    pub const MERGED: u32 = 3;
    pub const DROPPED: u32 = 4;
    pub const REFUSED: u32 = 5;
}

/// Where a virtio disk is attached, as DISK_INFO reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestDiskTransport {
    /// virtio-pci on bus 0, device number `slot`.
    Pci { slot: u8 },
    /// virtio-mmio device number `index` (`VIRTIO_MMIO_START + index * 4 KiB`).
    Mmio { index: u8 },
}

/// A virtio disk the guest can ask about (DISK_INFO, DISK_MODERATION, VIRTIO_STATS).
#[derive(Debug, Clone)]
pub struct TestDisk {
    pub transport: TestDiskTransport,
    pub moderation_usecs: u32,
    pub moderation_max_frames: u32,
    /// The device's own counters (shared with the device).
    pub stats: Arc<VirtioStats>,
}

impl TestDisk {
    /// DISK_INFO's RESULT: bits 7:0 transport (1 = PCI, 2 = MMIO), bits 15:8 PCI device
    /// number or virtio-mmio index, bit 16 interrupt moderation on.
    fn info(&self) -> u32 {
        let (t, loc) = match self.transport {
            TestDiskTransport::Pci { slot } => (1, slot),
            TestDiskTransport::Mmio { index } => (2, index),
        };
        t | u32::from(loc) << 8 | u32::from(self.moderation_usecs > 0) << 16
    }

    /// VIRTIO_STATS counter `which` (docs/testdev.md), saturated to 32 bits.
    fn counter(&self, which: u32) -> Option<u32> {
        let s = &self.stats;
        let c = match which {
            0 => &s.kicks,
            1 => &s.completions,
            2 => &s.notifications_needed,
            3 => &s.interrupts,
            4 => &s.suppressed,
            5 => &s.moderated,
            6 => &s.bad_chains,
            _ => return None,
        };
        Some(u32::try_from(c.load(Ordering::Relaxed)).unwrap_or(u32::MAX))
    }
}

/// Longest BURST a guest may ask for, and the longest gap between its pulses. Bounds keep a
/// hostile guest from parking a host thread for hours.
pub const BURST_MAX_COUNT: u32 = 1_000_000;
pub const BURST_MAX_GAP_US: u32 = 1_000_000;
/// Longest report line kept; the rest of an over-long line is dropped (the line still ends
/// at its `\n`).
pub const REPORT_LINE_MAX: usize = 1024;

/// `HOST` register bit 0: the host KVM is PVM (known host faults apply).
pub const HOST_PVM: u32 = 1 << 0;

/// Static configuration the VMM reports to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TestDevConfig {
    /// 0 = `--irqchip kernel`, 1 = `--irqchip split`.
    pub mode: u32,
    /// Host flags, see [`HOST_PVM`].
    pub host: u32,
    /// Number of vCPUs.
    pub ncpus: u32,
}

/// Result lines the guest reported, as parsed from the REPORT register.
#[derive(Debug, Default)]
pub struct ReportCounts {
    pub passed: AtomicU64,
    pub failed: AtomicU64,
    pub skipped: AtomicU64,
    /// XFAIL lines (the guest counts them as skipped in its summary).
    pub xfailed: AtomicU64,
    summary: Mutex<Option<ReportSummary>>,
}

/// The guest's final `N passed, N failed, N skipped` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportSummary {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl ReportCounts {
    /// The summary line, once the guest has sent it.
    pub fn summary(&self) -> Option<ReportSummary> {
        *self.summary.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, line: &str) {
        let counter = if line.starts_with("PASS ") {
            &self.passed
        } else if line.starts_with("FAIL ") {
            &self.failed
        } else if line.starts_with("SKIP ") {
            &self.skipped
        } else if line.starts_with("XFAIL ") {
            &self.xfailed
        } else {
            if let Some(s) = parse_summary(line) {
                *self.summary.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
            }
            return;
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Parse `N passed, N failed, N skipped`.
pub fn parse_summary(line: &str) -> Option<ReportSummary> {
    let mut it = line.trim().split(", ");
    let mut field =
        |suffix: &str| -> Option<u64> { it.next()?.strip_suffix(suffix)?.trim().parse().ok() };
    let passed = field(" passed")?;
    let failed = field(" failed")?;
    let skipped = field(" skipped")?;
    Some(ReportSummary {
        passed,
        failed,
        skipped,
    })
}

/// A running BURST or MSIX_BURST: a host thread doing one step `count` times.
struct Burst {
    /// Dropping the sender wakes the thread out of its inter-pulse wait and stops it.
    stop: Option<mpsc::Sender<()>>,
    remaining: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Burst {
    /// Run `step` `count` times, `gap_us` apart, on a new thread named `name`.
    fn spawn(
        name: String,
        count: u32,
        gap_us: u32,
        mut step: impl FnMut() + Send + 'static,
    ) -> Result<Self, String> {
        let remaining = Arc::new(AtomicU64::new(u64::from(count)));
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let left = remaining.clone();
        let gap = Duration::from_micros(u64::from(gap_us));
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                for _ in 0..count {
                    step();
                    left.fetch_sub(1, Ordering::AcqRel);
                    if !gap.is_zero() {
                        // Interruptible wait: the device dropping the sender ends the burst.
                        match stop_rx.recv_timeout(gap) {
                            Err(RecvTimeoutError::Timeout) => {}
                            _ => break,
                        }
                    } else if matches!(stop_rx.try_recv(), Err(mpsc::TryRecvError::Disconnected)) {
                        break;
                    }
                }
                left.store(0, Ordering::Release);
            })
            .map_err(|e| format!("cannot start the burst thread: {e}"))?;
        Ok(Self {
            stop: Some(stop_tx),
            remaining,
            thread: Some(thread),
        })
    }

    /// Steps still to do (0 = done).
    fn remaining(&self) -> u32 {
        if self.finished() {
            0
        } else {
            u32::try_from(self.remaining.load(Ordering::Acquire)).unwrap_or(u32::MAX)
        }
    }

    fn finished(&self) -> bool {
        self.remaining.load(Ordering::Acquire) == 0
            || self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    fn stop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            // A panicking burst thread only loses its remaining pulses.
            let _ = t.join();
        }
    }
}

impl Drop for Burst {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Called with each completed REPORT line (without its `\n`).
pub type ReportSink = Box<dyn FnMut(&str) + Send>;

/// The test device. Register it on the PIO bus at `TESTDEV_PORT` with length 0x40.
pub struct TestDevice {
    lines: Arc<dyn LineProvider>,
    msi: Arc<dyn MsiSender>,
    exit: Arc<dyn ExitSink>,
    config: TestDevConfig,
    args: [u32; 4],
    result: u32,
    line: Vec<u8>,
    sink: ReportSink,
    counts: Arc<ReportCounts>,
    burst: Option<Burst>,
    pci: Option<SharedTestFn>,
    msix_burst: Option<Burst>,
    disks: Vec<TestDisk>,
}

impl TestDevice {
    pub fn new(
        lines: Arc<dyn LineProvider>,
        msi: Arc<dyn MsiSender>,
        exit: Arc<dyn ExitSink>,
        config: TestDevConfig,
        sink: ReportSink,
    ) -> Self {
        Self {
            lines,
            msi,
            exit,
            config,
            args: [0; 4],
            result: 0,
            line: Vec::with_capacity(128),
            sink,
            counts: Arc::new(ReportCounts::default()),
            burst: None,
            pci: None,
            msix_burst: None,
            disks: Vec::new(),
        }
    }

    /// Attach the test PCI function the MSI-X and INTx commands drive.
    pub fn with_pci_function(mut self, f: SharedTestFn) -> Self {
        self.pci = Some(f);
        self
    }

    /// The virtio disks DISK_INFO and VIRTIO_STATS describe, in `--disk` order.
    pub fn with_disks(mut self, disks: Vec<TestDisk>) -> Self {
        self.disks = disks;
        self
    }

    fn disk(&self, n: u32) -> Result<&TestDisk, String> {
        usize::try_from(n)
            .ok()
            .and_then(|i| self.disks.get(i))
            .ok_or_else(|| format!("no virtio disk {n} ({} attached)", self.disks.len()))
    }

    /// The PASS/FAIL/SKIP/XFAIL counts parsed so far (shared; stays valid after the device
    /// is dropped).
    pub fn counts(&self) -> Arc<ReportCounts> {
        self.counts.clone()
    }

    fn read_reg(&self, offset: u64) -> u32 {
        match offset {
            reg::ID_COMMAND => TESTDEV_ID,
            reg::ARG0..=reg::ARG3 => self.arg_slot(offset).map_or(0, |i| self.args[i]),
            reg::RESULT => self.result,
            reg::MODE => self.config.mode,
            reg::HOST => self.config.host,
            reg::NCPUS => self.config.ncpus,
            // DOORBELL, EXIT and REPORT are write-only; reading them costs the exit and
            // returns 0. Unknown offsets read all-ones (docs/testdev.md).
            reg::DOORBELL | reg::EXIT | reg::REPORT => 0,
            _ => u32::MAX,
        }
    }

    fn arg_slot(&self, offset: u64) -> Option<usize> {
        match offset {
            0x04 => Some(0),
            0x08 => Some(1),
            0x0c => Some(2),
            0x10 => Some(3),
            _ => None,
        }
    }

    fn report_byte(&mut self, b: u8) {
        if b == b'\n' {
            let text = String::from_utf8_lossy(&self.line).into_owned();
            let text = text.trim_end_matches('\r');
            self.counts.record(text);
            (self.sink)(text);
            self.line.clear();
        } else if self.line.len() < REPORT_LINE_MAX {
            self.line.push(b);
        }
    }

    fn command(&mut self, command: u32) {
        self.result = match self.run(command) {
            Ok(v) => v,
            Err(why) => {
                irqchip::guest_warn!(
                    "testdev: command {command} args {:#x?} failed: {why}",
                    self.args
                );
                RESULT_ERROR
            }
        };
    }

    fn line(&self, gsi: u32, source: u32) -> Result<Arc<dyn irqchip::InterruptLine>, String> {
        let source = u8::try_from(source).map_err(|_| format!("source {source} is not 0..=7"))?;
        if source > 7 {
            return Err(format!("source {source} is not 0..=7"));
        }
        self.lines.line(gsi, source).map_err(|e| e.to_string())
    }

    fn run(&mut self, command: u32) -> Result<u32, String> {
        let [a0, a1, a2, a3] = self.args;
        match command {
            cmd::LINE_SET => {
                self.line(a0, a1)?.set_level(a2 != 0);
                Ok(0)
            }
            cmd::LINE_PULSE => {
                self.line(a0, a1)?.pulse();
                Ok(0)
            }
            cmd::BURST => self.start_burst(a0, a1, a2, a3),
            cmd::MSIX_RAISE => {
                let k = self.vector(a0)?;
                let r = lock_fn(self.function()?).raise(k);
                match r {
                    MsixRaise::Fire(_) => Ok(msix_result::FIRED),
                    MsixRaise::Pended => Ok(msix_result::PENDED),
                    MsixRaise::Disabled => Ok(msix_result::DROPPED),
                    MsixRaise::NoSuchVector => Err(format!("no MSI-X vector {a0}")),
                }
            }
            cmd::MSIX_BURST => self.start_msix_burst(a0, a1, a2),
            cmd::MSIX_BURST_STATUS => Ok(self.msix_burst.as_ref().map_or(0, Burst::remaining)),
            cmd::MSIX_STATS => {
                let k = self.vector(a0)?;
                let s = lock_fn(self.function()?)
                    .stats(k)
                    .ok_or_else(|| format!("no MSI-X vector {a0}"))?;
                let v = match a1 {
                    msix_stat::RAISED => s.raised,
                    msix_stat::FIRED => s.fired,
                    msix_stat::PENDED => s.pended,
                    msix_stat::MERGED => s.merged,
                    msix_stat::DROPPED => s.dropped,
                    msix_stat::REFUSED => s.refused,
                    _ => return Err(format!("MSIX_STATS counter {a1} is not 0..=5")),
                };
                Ok(u32::try_from(v).unwrap_or(u32::MAX))
            }
            cmd::INTX_SET => {
                lock_fn(self.function()?).set_intx(a0 != 0);
                Ok(0)
            }
            cmd::MSI_SIGNAL => {
                let msg = MsiMessage {
                    address: (u64::from(a1) << 32) | u64::from(a0),
                    data: a2,
                };
                self.msi.send_msi(msg).map_err(|e| e.to_string())?;
                Ok(0)
            }
            cmd::LINE_STATS => Ok(u32::try_from(self.lines.raised(a0)).unwrap_or(u32::MAX)),
            cmd::LINE_COALESCED => Ok(u32::try_from(self.lines.coalesced(a0)).unwrap_or(u32::MAX)),
            cmd::STATS_RESET => {
                self.lines.reset_stats();
                if let Some(f) = &self.pci {
                    lock_fn(f).reset_stats();
                }
                Ok(0)
            }
            cmd::BURST_STATUS => Ok(self.burst.as_ref().map_or(0, Burst::remaining)),
            cmd::DISK_INFO => Ok(self.disk(a0)?.info()),
            cmd::DISK_MODERATION => {
                let d = self.disk(a0)?;
                match a1 {
                    0 => Ok(d.moderation_usecs),
                    1 => Ok(d.moderation_max_frames),
                    _ => Err(format!(
                        "DISK_MODERATION field {a1} is not 0 (usecs) or 1 (max frames)"
                    )),
                }
            }
            cmd::VIRTIO_STATS => self
                .disk(a0)?
                .counter(a1)
                .ok_or_else(|| format!("VIRTIO_STATS counter {a1} is not 0..=6")),
            _ => Err(format!("unknown command {command}")),
        }
    }

    fn start_burst(
        &mut self,
        gsi: u32,
        source: u32,
        count: u32,
        gap_us: u32,
    ) -> Result<u32, String> {
        if self.burst.as_ref().is_some_and(|b| !b.finished()) {
            return Err("a BURST is still running; poll BURST_STATUS until 0".into());
        }
        if count > BURST_MAX_COUNT || gap_us > BURST_MAX_GAP_US {
            return Err(format!(
                "BURST of {count} pulses {gap_us} us apart exceeds {BURST_MAX_COUNT} pulses / {BURST_MAX_GAP_US} us"
            ));
        }
        // Reap the previous (finished) burst before starting the next.
        self.burst.take();
        let line = self.line(gsi, source)?;
        self.burst = Some(Burst::spawn(
            format!("testdev-burst-{gsi}"),
            count,
            gap_us,
            move || line.pulse(),
        )?);
        Ok(0)
    }

    /// The test PCI function, or the error for a VM without one.
    fn function(&self) -> Result<&SharedTestFn, String> {
        self.pci
            .as_ref()
            .ok_or_else(|| "this VM has no test PCI function".to_string())
    }

    /// A vector number the test function has.
    fn vector(&self, k: u32) -> Result<u16, String> {
        let n = self.function().map_or(0, |f| lock_fn(f).num_vectors());
        u16::try_from(k)
            .ok()
            .filter(|k| *k < n)
            .ok_or_else(|| format!("MSI-X vector {k} is not 0..{n}"))
    }

    fn start_msix_burst(&mut self, k: u32, count: u32, gap_us: u32) -> Result<u32, String> {
        if self.msix_burst.as_ref().is_some_and(|b| !b.finished()) {
            return Err("an MSIX_BURST is still running; poll MSIX_BURST_STATUS until 0".into());
        }
        if count > BURST_MAX_COUNT || gap_us > BURST_MAX_GAP_US {
            return Err(format!(
                "MSIX_BURST of {count} raises {gap_us} us apart exceeds {BURST_MAX_COUNT} / {BURST_MAX_GAP_US} us"
            ));
        }
        let vector = self.vector(k)?;
        let f = self.function()?.clone();
        self.msix_burst.take();
        self.msix_burst = Some(Burst::spawn(
            format!("testdev-msix-{vector}"),
            count,
            gap_us,
            move || {
                lock_fn(&f).raise(vector);
            },
        )?);
        Ok(0)
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        match offset {
            reg::ID_COMMAND => self.command(value),
            reg::ARG0..=reg::ARG3 => {
                if let Some(i) = self.arg_slot(offset) {
                    self.args[i] = value;
                }
            }
            reg::DOORBELL => {}
            reg::EXIT => self.exit.request_exit(GuestExit::TestExit(value)),
            _ => {}
        }
    }
}

/// Lock the shared function; a poisoned lock (a panicked holder) still holds valid state.
fn lock_fn(f: &SharedTestFn) -> std::sync::MutexGuard<'_, TestPciFunction> {
    f.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for TestDevice {
    fn drop(&mut self) {
        for b in [self.burst.take(), self.msix_burst.take()]
            .into_iter()
            .flatten()
        {
            let mut b = b;
            b.stop();
        }
    }
}

impl BusDevice for TestDevice {
    /// Reads of 1, 2 or 4 bytes return the bytes of the 32-bit register containing `offset`
    /// (little endian); other sizes read all-ones.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if !matches!(data.len(), 1 | 2 | 4) {
            return;
        }
        let word = self.read_reg(offset & !3).to_le_bytes();
        let start = (offset & 3) as usize;
        for (i, d) in data.iter_mut().enumerate() {
            if let Some(b) = word.get(start + i) {
                *d = *b;
            }
        }
    }

    /// REPORT takes the low byte of a write of any size. Every other register needs an
    /// aligned 32-bit write; anything else is ignored.
    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == reg::REPORT {
            if let Some(&b) = data.first() {
                self.report_byte(b);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            irqchip::guest_warn!(
                "testdev: ignored {}-byte write at offset {offset:#x} (registers are 32-bit)",
                data.len()
            );
            return;
        };
        if offset & 3 != 0 {
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
pub(crate) mod fakes {
    use super::*;
    use irqchip::{InterruptLine, IrqError};
    use std::sync::atomic::AtomicBool;

    /// Records every level change per (gsi, source); 24 GSIs, sources 0..=7.
    #[derive(Default)]
    pub struct FakeLines {
        pub events: Mutex<Vec<(u32, u8, bool)>>,
        pub raised: Mutex<[u64; 24]>,
    }

    pub struct FakeLine {
        owner: Arc<FakeLines>,
        gsi: u32,
        source: u8,
        level: AtomicBool,
    }

    impl InterruptLine for FakeLine {
        fn set_level(&self, level: bool) {
            let was = self.level.swap(level, Ordering::SeqCst);
            if level && !was {
                if let Some(r) = self.owner.raised.lock().unwrap().get_mut(self.gsi as usize) {
                    *r += 1;
                }
            }
            self.owner
                .events
                .lock()
                .unwrap()
                .push((self.gsi, self.source, level));
        }
    }

    pub struct Provider(pub Arc<FakeLines>);

    impl LineProvider for Provider {
        fn line(&self, gsi: u32, source: u8) -> Result<Arc<dyn InterruptLine>, IrqError> {
            if gsi >= 24 || source > 7 {
                return Err(IrqError::NoSuchLine {
                    gsi,
                    source_id: source,
                    max: 24,
                });
            }
            Ok(Arc::new(FakeLine {
                owner: self.0.clone(),
                gsi,
                source,
                level: AtomicBool::new(false),
            }))
        }
        fn raised(&self, gsi: u32) -> u64 {
            self.0
                .raised
                .lock()
                .unwrap()
                .get(gsi as usize)
                .copied()
                .unwrap_or(0)
        }
        fn reset_stats(&self) {
            *self.0.raised.lock().unwrap() = [0; 24];
        }
    }

    #[derive(Default)]
    pub struct FakeMsi(pub Mutex<Vec<MsiMessage>>);

    impl MsiSender for FakeMsi {
        fn send_msi(&self, msg: MsiMessage) -> Result<(), IrqError> {
            // Like KVM_SIGNAL_MSI outside the APIC window: refused.
            if msg.address >> 20 != 0xfee {
                return Err(IrqError::Kvm {
                    what: "signal msi",
                    source: std::io::Error::from_raw_os_error(libc::EINVAL),
                });
            }
            self.0.lock().unwrap().push(msg);
            Ok(())
        }
    }

    #[derive(Default)]
    pub struct FakeExit(pub Mutex<Vec<GuestExit>>);

    impl ExitSink for FakeExit {
        fn request_exit(&self, why: GuestExit) {
            self.0.lock().unwrap().push(why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fakes::*;
    use super::*;
    use proptest::prelude::*;

    struct Rig {
        dev: TestDevice,
        lines: Arc<FakeLines>,
        msi: Arc<FakeMsi>,
        exit: Arc<FakeExit>,
        reported: Arc<Mutex<Vec<String>>>,
    }

    fn rig() -> Rig {
        let lines = Arc::new(FakeLines::default());
        let msi = Arc::new(FakeMsi::default());
        let exit = Arc::new(FakeExit::default());
        let reported = Arc::new(Mutex::new(Vec::new()));
        let r = reported.clone();
        let dev = TestDevice::new(
            Arc::new(Provider(lines.clone())),
            msi.clone(),
            exit.clone(),
            TestDevConfig {
                mode: 1,
                host: HOST_PVM,
                ncpus: 2,
            },
            Box::new(move |l| r.lock().unwrap().push(l.to_string())),
        );
        Rig {
            dev,
            lines,
            msi,
            exit,
            reported,
        }
    }

    fn w32(d: &mut TestDevice, off: u64, v: u32) {
        d.write(off, &v.to_le_bytes());
    }

    fn r32(d: &mut TestDevice, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn command(d: &mut TestDevice, c: u32, args: [u32; 4]) -> u32 {
        for (i, a) in args.iter().enumerate() {
            w32(d, reg::ARG0 + 4 * i as u64, *a);
        }
        w32(d, reg::ID_COMMAND, c);
        r32(d, reg::RESULT)
    }

    fn report(d: &mut TestDevice, s: &str) {
        for b in s.bytes() {
            d.write(reg::REPORT, &[b]);
        }
    }

    #[test]
    fn id_register_reads_irqt() {
        let mut r = rig();
        assert_eq!(r32(&mut r.dev, 0), 0x5451_4952);
    }

    #[test]
    fn byte_read_returns_the_addressed_byte_of_the_register() {
        let mut r = rig();
        let mut b = [0u8; 1];
        r.dev.read(1, &mut b);
        assert_eq!(b[0], 0x49);
    }

    #[test]
    fn config_registers_read_what_the_vmm_configured() {
        let mut r = rig();
        assert_eq!(r32(&mut r.dev, reg::MODE), 1);
        assert_eq!(r32(&mut r.dev, reg::HOST), HOST_PVM);
        assert_eq!(r32(&mut r.dev, reg::NCPUS), 2);
    }

    #[test]
    fn unknown_offset_reads_all_ones() {
        let mut r = rig();
        assert_eq!(r32(&mut r.dev, 0x30), u32::MAX);
        assert_eq!(r32(&mut r.dev, 0x3c), u32::MAX);
    }

    #[test]
    fn args_read_back_what_was_written() {
        let mut r = rig();
        w32(&mut r.dev, reg::ARG0 + 8, 0xdead_beef);
        assert_eq!(r32(&mut r.dev, reg::ARG0 + 8), 0xdead_beef);
    }

    #[test]
    fn line_set_drives_the_named_source() {
        let mut r = rig();
        assert_eq!(command(&mut r.dev, cmd::LINE_SET, [5, 3, 1, 0]), 0);
        assert_eq!(*r.lines.events.lock().unwrap(), vec![(5, 3, true)]);
    }

    #[test]
    fn line_pulse_raises_then_lowers() {
        let mut r = rig();
        assert_eq!(command(&mut r.dev, cmd::LINE_PULSE, [7, 0, 0, 0]), 0);
        assert_eq!(
            *r.lines.events.lock().unwrap(),
            vec![(7, 0, true), (7, 0, false)]
        );
    }

    #[test]
    fn line_command_with_bad_gsi_or_source_returns_error() {
        let mut r = rig();
        assert_eq!(
            command(&mut r.dev, cmd::LINE_SET, [24, 0, 1, 0]),
            RESULT_ERROR
        );
        assert_eq!(
            command(&mut r.dev, cmd::LINE_SET, [1, 8, 1, 0]),
            RESULT_ERROR
        );
        assert_eq!(
            command(&mut r.dev, cmd::LINE_PULSE, [1, 256, 1, 0]),
            RESULT_ERROR
        );
        assert!(r.lines.events.lock().unwrap().is_empty());
    }

    #[test]
    fn line_stats_counts_host_raises_and_reset_zeroes_them() {
        let mut r = rig();
        for _ in 0..3 {
            command(&mut r.dev, cmd::LINE_PULSE, [9, 1, 0, 0]);
        }
        assert_eq!(command(&mut r.dev, cmd::LINE_STATS, [9, 0, 0, 0]), 3);
        assert_eq!(command(&mut r.dev, cmd::STATS_RESET, [0; 4]), 0);
        assert_eq!(command(&mut r.dev, cmd::LINE_STATS, [9, 0, 0, 0]), 0);
    }

    #[test]
    fn msi_signal_sends_address_and_data() {
        let mut r = rig();
        assert_eq!(
            command(&mut r.dev, cmd::MSI_SIGNAL, [0xfee0_1000, 0, 0x4041, 0]),
            0
        );
        assert_eq!(
            *r.msi.0.lock().unwrap(),
            vec![MsiMessage {
                address: 0xfee0_1000,
                data: 0x4041
            }]
        );
    }

    #[test]
    fn msi_signal_refused_by_the_backend_returns_error() {
        let mut r = rig();
        assert_eq!(
            command(&mut r.dev, cmd::MSI_SIGNAL, [0x1000, 1, 0x41, 0]),
            RESULT_ERROR
        );
    }

    fn disks() -> Vec<TestDisk> {
        let pci = TestDisk {
            transport: TestDiskTransport::Pci { slot: 3 },
            moderation_usecs: 0,
            moderation_max_frames: 0,
            stats: Arc::new(VirtioStats::default()),
        };
        let mmio = TestDisk {
            transport: TestDiskTransport::Mmio { index: 1 },
            moderation_usecs: 500,
            moderation_max_frames: 4,
            stats: Arc::new(VirtioStats::default()),
        };
        vec![pci, mmio]
    }

    #[test]
    fn disk_info_reports_transport_location_and_moderation() {
        let mut dev = rig().dev.with_disks(disks());
        assert_eq!(command(&mut dev, cmd::DISK_INFO, [0, 0, 0, 0]), 0x0301);
        assert_eq!(command(&mut dev, cmd::DISK_INFO, [1, 0, 0, 0]), 0x1_0102);
        assert_eq!(command(&mut dev, cmd::DISK_MODERATION, [1, 0, 0, 0]), 500);
        assert_eq!(command(&mut dev, cmd::DISK_MODERATION, [1, 1, 0, 0]), 4);
    }

    #[test]
    fn disk_commands_for_a_missing_disk_or_field_return_error() {
        let mut dev = rig().dev.with_disks(disks());
        assert_eq!(
            command(&mut dev, cmd::DISK_INFO, [2, 0, 0, 0]),
            RESULT_ERROR
        );
        assert_eq!(
            command(&mut dev, cmd::DISK_INFO, [u32::MAX, 0, 0, 0]),
            RESULT_ERROR
        );
        assert_eq!(
            command(&mut dev, cmd::DISK_MODERATION, [0, 2, 0, 0]),
            RESULT_ERROR
        );
        assert_eq!(
            command(&mut dev, cmd::VIRTIO_STATS, [0, 7, 0, 0]),
            RESULT_ERROR
        );
        assert_eq!(
            command(&mut dev, cmd::VIRTIO_STATS, [9, 0, 0, 0]),
            RESULT_ERROR
        );
    }

    #[test]
    fn virtio_stats_reads_the_device_counters() {
        let d = disks();
        d[0].stats.interrupts.store(7, Ordering::Relaxed);
        d[0].stats.suppressed.store(3, Ordering::Relaxed);
        d[0].stats.completions.store(u64::MAX, Ordering::Relaxed);
        let mut dev = rig().dev.with_disks(d);
        assert_eq!(command(&mut dev, cmd::VIRTIO_STATS, [0, 3, 0, 0]), 7);
        assert_eq!(command(&mut dev, cmd::VIRTIO_STATS, [0, 4, 0, 0]), 3);
        assert_eq!(
            command(&mut dev, cmd::VIRTIO_STATS, [0, 1, 0, 0]),
            u32::MAX,
            "saturates"
        );
        assert_eq!(command(&mut dev, cmd::VIRTIO_STATS, [1, 3, 0, 0]), 0);
    }

    #[test]
    fn unknown_command_returns_error() {
        let mut r = rig();
        assert_eq!(command(&mut r.dev, 0xabcd, [0; 4]), RESULT_ERROR);
    }

    #[test]
    fn msix_and_intx_commands_without_a_pci_function_return_error() {
        let mut r = rig();
        for c in [
            cmd::MSIX_RAISE,
            cmd::MSIX_BURST,
            cmd::MSIX_STATS,
            cmd::INTX_SET,
        ] {
            assert_eq!(
                command(&mut r.dev, c, [0, 1, 0, 0]),
                RESULT_ERROR,
                "command {c}"
            );
        }
        assert_eq!(command(&mut r.dev, cmd::MSIX_BURST_STATUS, [0; 4]), 0);
    }

    mod pci_function {
        use super::*;
        use crate::pci::msix::tests::FakeRoutes;
        use crate::pci::testfn::{TestPciFunction, TESTFN_PBA_OFFSET};
        use crate::pci::PciDevice;
        use irqchip::InterruptLine;

        #[derive(Default)]
        struct Level(Mutex<bool>);
        impl InterruptLine for Level {
            fn set_level(&self, level: bool) {
                *self.0.lock().unwrap() = level;
            }
        }

        fn rig_fn() -> (Rig, SharedTestFn, Arc<Level>) {
            let r = rig();
            let line = Arc::new(Level::default());
            let f = Arc::new(Mutex::new(
                TestPciFunction::new(
                    0xC000_0000,
                    Arc::new(FakeRoutes::default()),
                    Some((line.clone(), 19)),
                )
                .unwrap(),
            ));
            let Rig {
                dev,
                lines,
                msi,
                exit,
                reported,
            } = r;
            let dev = dev.with_pci_function(f.clone());
            (
                Rig {
                    dev,
                    lines,
                    msi,
                    exit,
                    reported,
                },
                f,
                line,
            )
        }

        /// Enable MSI-X (capability at 0x40, the first one) and program vector `k`.
        fn enable_and_program(f: &SharedTestFn, k: u64, masked: bool) {
            let mut f = f.lock().unwrap();
            f.config_write(0x42, &0x8000u16.to_le_bytes());
            f.bar_write(0, 16 * k, &0xFEE0_0000u32.to_le_bytes());
            f.bar_write(0, 16 * k + 8, &0x41u32.to_le_bytes());
            f.bar_write(0, 16 * k + 12, &u32::from(masked).to_le_bytes());
        }

        fn stat(r: &mut Rig, k: u32, which: u32) -> u32 {
            command(&mut r.dev, cmd::MSIX_STATS, [k, which, 0, 0])
        }

        #[test]
        fn msix_raise_reports_fired_pended_or_dropped() {
            let (mut r, f, _) = rig_fn();
            assert_eq!(
                command(&mut r.dev, cmd::MSIX_RAISE, [3, 0, 0, 0]),
                msix_result::DROPPED,
                "MSI-X disabled"
            );
            enable_and_program(&f, 3, false);
            assert_eq!(
                command(&mut r.dev, cmd::MSIX_RAISE, [3, 0, 0, 0]),
                msix_result::FIRED
            );
            f.lock()
                .unwrap()
                .bar_write(0, 16 * 3 + 12, &1u32.to_le_bytes());
            assert_eq!(
                command(&mut r.dev, cmd::MSIX_RAISE, [3, 0, 0, 0]),
                msix_result::PENDED
            );
            let mut pba = [0u8; 4];
            f.lock().unwrap().bar_read(0, TESTFN_PBA_OFFSET, &mut pba);
            assert_eq!(u32::from_le_bytes(pba), 1 << 3);
        }

        #[test]
        fn msix_raise_of_a_bad_vector_returns_error() {
            let (mut r, _, _) = rig_fn();
            for k in [16, 0xFFFF, 0x1_0000, u32::MAX] {
                assert_eq!(
                    command(&mut r.dev, cmd::MSIX_RAISE, [k, 0, 0, 0]),
                    RESULT_ERROR
                );
                assert_eq!(
                    command(&mut r.dev, cmd::MSIX_BURST, [k, 1, 0, 0]),
                    RESULT_ERROR
                );
                assert_eq!(stat(&mut r, k, 0), RESULT_ERROR);
            }
            assert_eq!(stat(&mut r, 0, 6), RESULT_ERROR, "no counter 6");
        }

        #[test]
        fn msix_stats_account_for_every_raise_and_reset_zeroes_them() {
            let (mut r, f, _) = rig_fn();
            command(&mut r.dev, cmd::MSIX_RAISE, [2, 0, 0, 0]);
            enable_and_program(&f, 2, true);
            for _ in 0..3 {
                command(&mut r.dev, cmd::MSIX_RAISE, [2, 0, 0, 0]);
            }
            f.lock()
                .unwrap()
                .bar_write(0, 16 * 2 + 12, &0u32.to_le_bytes());
            command(&mut r.dev, cmd::MSIX_RAISE, [2, 0, 0, 0]);
            assert_eq!(stat(&mut r, 2, msix_stat::RAISED), 5);
            assert_eq!(stat(&mut r, 2, msix_stat::DROPPED), 1);
            assert_eq!(stat(&mut r, 2, msix_stat::PENDED), 1);
            assert_eq!(stat(&mut r, 2, msix_stat::MERGED), 2);
            assert_eq!(stat(&mut r, 2, msix_stat::FIRED), 2, "unmask + direct");
            command(&mut r.dev, cmd::STATS_RESET, [0; 4]);
            assert_eq!(stat(&mut r, 2, msix_stat::RAISED), 0);
        }

        #[test]
        fn msix_burst_raises_count_times_then_reports_done() {
            let (mut r, f, _) = rig_fn();
            enable_and_program(&f, 5, false);
            assert_eq!(command(&mut r.dev, cmd::MSIX_BURST, [5, 40, 0, 0]), 0);
            let start = std::time::Instant::now();
            while command(&mut r.dev, cmd::MSIX_BURST_STATUS, [0; 4]) != 0 {
                assert!(start.elapsed() < Duration::from_secs(10));
                std::thread::yield_now();
            }
            assert_eq!(stat(&mut r, 5, msix_stat::RAISED), 40);
            assert_eq!(stat(&mut r, 5, msix_stat::FIRED), 40);
        }

        #[test]
        fn second_msix_burst_while_running_is_refused_and_drop_stops_it() {
            let (mut r, _, _) = rig_fn();
            assert_eq!(command(&mut r.dev, cmd::MSIX_BURST, [0, 1000, 1000, 0]), 0);
            assert_eq!(
                command(&mut r.dev, cmd::MSIX_BURST, [0, 1, 0, 0]),
                RESULT_ERROR
            );
            assert_eq!(
                command(&mut r.dev, cmd::MSIX_BURST, [1, BURST_MAX_COUNT + 1, 0, 0]),
                RESULT_ERROR
            );
            let t = std::time::Instant::now();
            drop(r.dev);
            assert!(t.elapsed() < Duration::from_secs(5));
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            /// No sequence of commands, arguments and BAR/config writes to the function
            /// panics, and the counters stay consistent.
            #[test]
            fn any_msix_command_sequence_is_harmless(
                ops in proptest::collection::vec(
                    (0u32..16, any::<u32>(), any::<u32>(), 0u64..0x1000, any::<u32>()), 1..64)
            ) {
                let (mut r, f, _) = rig_fn();
                for (c, a0, a1, off, val) in ops {
                    match c {
                        0..=3 => {
                            f.lock().unwrap().bar_write(0, off & !3, &val.to_le_bytes());
                        }
                        4 => {
                            f.lock().unwrap().config_write((off & 0xFF) as usize, &val.to_le_bytes());
                        }
                        5 => {
                            f.lock().unwrap().config_write(0x42, &(val as u16).to_le_bytes());
                        }
                        _ => {
                            let cmd = [cmd::MSIX_RAISE, cmd::MSIX_STATS, cmd::INTX_SET,
                                cmd::MSIX_BURST, cmd::MSIX_BURST_STATUS, cmd::STATS_RESET][(c as usize) % 6];
                            // Keep bursts short so the test does not wait on host sleeps.
                            let (a1, a2) = if cmd == cmd::MSIX_BURST { (a1 % 4, 0) } else { (a1, 0) };
                            command(&mut r.dev, cmd, [a0 % 20, a1, a2, 0]);
                        }
                    }
                }
                let start = std::time::Instant::now();
                while command(&mut r.dev, cmd::MSIX_BURST_STATUS, [0; 4]) != 0 {
                    prop_assert!(start.elapsed() < Duration::from_secs(10));
                    std::thread::yield_now();
                }
                for k in 0..16u32 {
                    let raised = stat(&mut r, k, msix_stat::RAISED);
                    let parts = [msix_stat::PENDED, msix_stat::MERGED, msix_stat::DROPPED]
                        .iter()
                        .map(|w| stat(&mut r, k, *w))
                        .sum::<u32>();
                    prop_assert!(parts <= raised, "vector {}: more outcomes than raises", k);
                }
            }
        }

        #[test]
        fn intx_set_drives_the_functions_pin() {
            let (mut r, _, line) = rig_fn();
            assert_eq!(command(&mut r.dev, cmd::INTX_SET, [1, 0, 0, 0]), 0);
            assert!(*line.0.lock().unwrap());
            assert_eq!(command(&mut r.dev, cmd::INTX_SET, [0, 0, 0, 0]), 0);
            assert!(!*line.0.lock().unwrap());
        }
    }

    #[test]
    fn exit_register_requests_test_exit_with_status() {
        let mut r = rig();
        w32(&mut r.dev, reg::EXIT, 3);
        assert_eq!(*r.exit.0.lock().unwrap(), vec![GuestExit::TestExit(3)]);
    }

    #[test]
    fn doorbell_has_no_effect() {
        let mut r = rig();
        w32(&mut r.dev, reg::DOORBELL, 1);
        assert!(r.exit.0.lock().unwrap().is_empty());
        assert!(r.lines.events.lock().unwrap().is_empty());
        assert_eq!(r32(&mut r.dev, reg::RESULT), 0);
    }

    #[test]
    fn report_line_is_passed_to_the_sink_at_newline() {
        let mut r = rig();
        report(&mut r.dev, "PASS ioapic_edge\r\nFAIL x: y");
        assert_eq!(*r.reported.lock().unwrap(), vec!["PASS ioapic_edge"]);
        report(&mut r.dev, "\n");
        assert_eq!(r.reported.lock().unwrap().len(), 2);
    }

    #[test]
    fn report_counts_each_result_kind() {
        let mut r = rig();
        report(
            &mut r.dev,
            "PASS a\nPASS b\nFAIL c: no\nSKIP d: why\nXFAIL e: host: pvm\nnoise\n",
        );
        let c = r.dev.counts();
        assert_eq!(c.passed.load(Ordering::Relaxed), 2);
        assert_eq!(c.failed.load(Ordering::Relaxed), 1);
        assert_eq!(c.skipped.load(Ordering::Relaxed), 1);
        assert_eq!(c.xfailed.load(Ordering::Relaxed), 1);
        assert_eq!(c.summary(), None);
    }

    #[test]
    fn report_summary_line_is_parsed() {
        let mut r = rig();
        report(&mut r.dev, "12 passed, 0 failed, 3 skipped\n");
        assert_eq!(
            r.dev.counts().summary(),
            Some(ReportSummary {
                passed: 12,
                failed: 0,
                skipped: 3
            })
        );
    }

    #[test]
    fn overlong_report_line_is_truncated_not_grown() {
        let mut r = rig();
        for _ in 0..10_000 {
            r.dev.write(reg::REPORT, b"A");
        }
        r.dev.write(reg::REPORT, b"\n");
        assert_eq!(r.reported.lock().unwrap()[0].len(), REPORT_LINE_MAX);
    }

    #[test]
    fn burst_pulses_count_times_then_reports_done() {
        let mut r = rig();
        assert_eq!(command(&mut r.dev, cmd::BURST, [4, 2, 50, 0]), 0);
        let start = std::time::Instant::now();
        while command(&mut r.dev, cmd::BURST_STATUS, [0; 4]) != 0 {
            assert!(start.elapsed() < Duration::from_secs(10));
            std::thread::yield_now();
        }
        assert_eq!(command(&mut r.dev, cmd::LINE_STATS, [4, 0, 0, 0]), 50);
    }

    #[test]
    fn second_burst_while_running_is_refused() {
        let mut r = rig();
        assert_eq!(command(&mut r.dev, cmd::BURST, [4, 0, 1000, 1000]), 0);
        assert_eq!(command(&mut r.dev, cmd::BURST, [4, 0, 1, 0]), RESULT_ERROR);
        // Dropping the device stops the burst promptly despite the long remaining time.
        let t = std::time::Instant::now();
        drop(r.dev);
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn oversized_burst_is_refused() {
        let mut r = rig();
        assert_eq!(
            command(&mut r.dev, cmd::BURST, [4, 0, BURST_MAX_COUNT + 1, 0]),
            RESULT_ERROR
        );
        assert_eq!(
            command(&mut r.dev, cmd::BURST, [4, 0, 1, BURST_MAX_GAP_US + 1]),
            RESULT_ERROR
        );
    }

    #[test]
    fn unaligned_or_narrow_register_writes_are_ignored() {
        let mut r = rig();
        r.dev.write(reg::EXIT, &[1]);
        r.dev.write(reg::EXIT + 1, &[1, 0, 0, 0]);
        r.dev.write(reg::EXIT, &[1, 0]);
        assert!(r.exit.0.lock().unwrap().is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// No guest access sequence panics or hangs the device.
        #[test]
        fn any_access_sequence_is_harmless(
            ops in proptest::collection::vec(
                (any::<bool>(), 0u64..0x48, 0usize..9, any::<u32>()), 1..64)
        ) {
            let mut r = rig();
            for (is_write, off, size, val) in ops {
                let mut buf = val.to_le_bytes().repeat(3);
                buf.truncate(size);
                if is_write {
                    // Keep bursts short so the test does not wait on host sleeps.
                    if off == reg::ARG0 + 12 && size == 4 {
                        buf = (val % 3).to_le_bytes().to_vec();
                    }
                    r.dev.write(off, &buf);
                } else {
                    r.dev.read(off, &mut buf);
                }
            }
        }
    }
}
