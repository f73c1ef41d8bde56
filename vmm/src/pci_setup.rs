//! Builds the PCI root bus and the virtio devices from the command line, and hands `vm.rs`
//! what it must wire: bus devices (port I/O and MMIO ranges), platform-table additions
//! (ACPI MCFG/`_PRT`/`LNRO0005`, MP-table INTx entries) and the device thread.
//!
//! Addresses and interrupts:
//! * PCI: config mechanism #1 at 0xCF8, ECAM at `PCI_ECAM_START`, BARs allocated (vm-allocator)
//!   from `PCI_MMIO_START..PCI_MMIO_END`; slot *d*'s INTA# is GSI `16 + ((d - 1) / 2) % 4`:
//!   slots are wired in pairs (1+2, 3+4, ...) to one shared, level-triggered, active-low line
//!   (the wired-OR line model gives each its own source), so two disks already exercise
//!   INTx sharing. MSI-X vectors get GSIs from 24 up through the irqchip backend's routing
//!   table.
//! * virtio-mmio: device *i* at `VIRTIO_MMIO_START + i * 4 KiB`, edge-triggered GSI `20 + i`
//!   (at most 4 devices).
//! * Queue notifications are KVM ioeventfds; the device thread runs an event-manager loop.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use boot::acpi::{AcpiConfig, PciHostConfig, PciRoute, VirtioMmioDevice};
use boot::layout;
use boot::mptable::{MpTable, MptableError, PciIntPin};
use devices::pci::{PciConfigIo, PciEcam, PciMmioWindow, PciRoot};
use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::mmio::{VirtioMmio, REG_QUEUE_NOTIFY};
use devices::virtio::pci::{VirtioPci, BAR_SIZE};
use devices::virtio::worker::{Moderation, VirtioWorker};
use devices::virtio::VirtioStats;
use devices::{Bus, BusDevice, BusError};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use irqchip::{LineProvider, MsiRouteSink};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vm_allocator::{AddressAllocator, AllocPolicy};
use vm_memory::GuestMemoryMmap;

/// First GSI for PCI INTx.
pub const PCI_INTX_GSI_BASE: u32 = 16;
/// First GSI for virtio-mmio devices, and how many there can be.
pub const VIRTIO_MMIO_GSI_BASE: u32 = 20;
pub const MAX_VIRTIO_MMIO: usize = 4;

/// The GSI and wired-OR source of PCI slot `slot`'s INTA# (see the module documentation).
pub fn intx_route(slot: usize) -> (u32, u8) {
    let d = slot.saturating_sub(1);
    let gsi = PCI_INTX_GSI_BASE + ((d / 2) % 4) as u32;
    // Slots sharing a GSI: d % 2 tells the pair apart, d / 8 the repetition.
    let source = ((d % 2) | ((d / 8) << 1)) as u8;
    (gsi, source)
}

/// Which virtio transport `--disk` devices use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum VirtioTransportArg {
    /// virtio-pci (modern), MSI-X with INTx fallback.
    #[default]
    Pci,
    /// virtio-mmio (version 2), described in the ACPI DSDT.
    Mmio,
}

/// One `--disk` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub readonly: bool,
    pub moderation: Moderation,
    /// Offer VIRTIO_RING_F_EVENT_IDX (virtio 1.2, 2.7.10); `event-idx=off` withholds it.
    pub event_idx: bool,
}

fn on_off(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{key}={v}: use on or off")),
    }
}

fn number(key: &str, v: &str) -> Result<u32, String> {
    v.parse()
        .map_err(|_| format!("{key}={v}: expected a whole number (0..=4294967295)"))
}

/// Parse `path=FILE[,readonly=on|off][,event-idx=on|off][,irq-usecs=N][,irq-max-frames=M]`.
pub fn parse_disk(s: &str) -> Result<DiskSpec, String> {
    let mut path = None;
    let mut readonly = false;
    let mut event_idx = true;
    let mut moderation = Moderation::default();
    for part in s.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            format!("'{part}' in --disk is not key=value; use path=FILE[,readonly=on][,event-idx=off][,irq-usecs=N][,irq-max-frames=M]")
        })?;
        match k {
            "path" if !v.is_empty() => path = Some(PathBuf::from(v)),
            "readonly" => readonly = on_off(k, v)?,
            "event-idx" => event_idx = on_off(k, v)?,
            "irq-usecs" => moderation.usecs = number(k, v)?,
            "irq-max-frames" => moderation.max_frames = number(k, v)?,
            _ => {
                return Err(format!(
                    "unknown or empty --disk option '{k}'; known: path, readonly, event-idx, irq-usecs, irq-max-frames"
                ))
            }
        }
    }
    let path = path.ok_or("--disk needs path=FILE")?;
    if moderation.max_frames > 0 && moderation.usecs == 0 {
        return Err(
            "--disk irq-max-frames needs irq-usecs=N (the longest an interrupt may wait)".into(),
        );
    }
    Ok(DiskSpec {
        path,
        readonly,
        moderation,
        event_idx,
    })
}

/// Errors building the PCI bus and virtio devices.
#[derive(Debug, thiserror::Error)]
pub enum PciSetupError {
    #[error("cannot open disk image {path}: {source}; check the path and permissions (readonly=on opens it read-only)")]
    OpenDisk {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("virtio-pci device: {0}")]
    VirtioPci(#[from] devices::virtio::pci::VirtioPciError),
    #[error("PCI bus: {0}")]
    Pci(#[from] devices::pci::PciError),
    #[error("no room for a {size:#x}-byte BAR in the PCI MMIO window; attach fewer devices")]
    BarSpace { size: u64 },
    #[error("{0} virtio-mmio devices requested; at most {MAX_VIRTIO_MMIO} are supported (use --virtio-transport pci for more)")]
    TooManyMmio(usize),
    #[error(transparent)]
    Irq(#[from] irqchip::IrqError),
    #[error("registering a queue-notify ioeventfd at {addr:#x} failed: {source}")]
    IoEvent {
        addr: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

type Subscriber = Box<dyn MutEventSubscriber + Send>;
/// A bus device with its base and length.
type BusRange = (Arc<Mutex<dyn BusDevice>>, u64, u64);

/// What `vm.rs` needs from the PCI/virtio setup.
pub struct VirtioDevices {
    pio: Vec<BusRange>,
    mmio: Vec<BusRange>,
    pci: Option<PciHostConfig>,
    mmio_acpi: Vec<VirtioMmioDevice>,
    intx: Vec<(u8, u8)>,
    stats: Vec<(String, Arc<VirtioStats>)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Inputs for [`VirtioDevices::setup`].
pub struct SetupArgs<'a> {
    pub vm: &'a VmFd,
    pub mem: &'a GuestMemoryMmap,
    pub lines: &'a dyn LineProvider,
    pub routes: Arc<dyn MsiRouteSink>,
    pub disks: &'a [DiskSpec],
    pub transport: VirtioTransportArg,
}

fn open_block(d: &DiskSpec, index: usize) -> Result<Block, PciSetupError> {
    let path = d.path.display().to_string();
    let file = OpenOptions::new()
        .read(true)
        .write(!d.readonly)
        .open(&d.path)
        .map_err(|source| PciSetupError::OpenDisk {
            path: path.clone(),
            source,
        })?;
    let mut block = Block::new(BlockConfig {
        file,
        readonly: d.readonly,
        id: format!("irqvm-vd{index}"),
    })
    .map_err(|source| PciSetupError::OpenDisk { path, source })?;
    block.set_event_idx(d.event_idx);
    Ok(block)
}

impl VirtioDevices {
    /// Nothing attached (no `--disk`).
    fn empty() -> Self {
        Self {
            pio: Vec::new(),
            mmio: Vec::new(),
            pci: None,
            mmio_acpi: Vec::new(),
            intx: Vec::new(),
            stats: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        }
    }

    /// Build the devices, register their ioeventfds, and start the device thread.
    pub fn setup(a: SetupArgs<'_>) -> Result<Self, PciSetupError> {
        let mut out = Self::empty();
        if a.disks.is_empty() {
            return Ok(out);
        }
        let mut subscribers: Vec<Subscriber> = Vec::new();
        match a.transport {
            VirtioTransportArg::Pci => out.setup_pci(&a, &mut subscribers)?,
            VirtioTransportArg::Mmio => out.setup_mmio(&a, &mut subscribers)?,
        }
        out.start(subscribers)?;
        Ok(out)
    }

    fn setup_pci(
        &mut self,
        a: &SetupArgs<'_>,
        subscribers: &mut Vec<Subscriber>,
    ) -> Result<(), PciSetupError> {
        let mut root = PciRoot::new();
        let mut alloc = AddressAllocator::new(
            layout::PCI_MMIO_START,
            layout::PCI_MMIO_END - layout::PCI_MMIO_START,
        )
        .map_err(|_| PciSetupError::BarSpace { size: BAR_SIZE })?;
        let mut prt = Vec::new();
        for (i, d) in a.disks.iter().enumerate() {
            let block = open_block(d, i)?;
            let bar = alloc
                .allocate(BAR_SIZE, BAR_SIZE, AllocPolicy::FirstMatch)
                .map_err(|_| PciSetupError::BarSpace { size: BAR_SIZE })?;
            // The slot this device will get: the root fills the lowest free one.
            let slot = i + 1;
            let (gsi, source) = intx_route(slot);
            // INTx is level-triggered and re-checked at each EOI: in kernel mode it rides
            // KVM's irqfd resampler (split mode handles EOIs itself).
            let line = a.lines.level_line(gsi, source)?;
            let dev = VirtioPci::new(
                Box::new(block),
                a.mem.clone(),
                bar.start(),
                a.routes.clone(),
                Some(line),
            )?;
            let kicks = dev.kick_fds().map_err(|source| PciSetupError::Io {
                what: "cloning queue eventfds",
                source,
            })?;
            for (q, k) in kicks.iter().enumerate() {
                if let Some(addr) = dev.notify_address(q) {
                    a.vm.register_ioevent(k, &IoEventAddress::Mmio(addr), NoDatamatch)
                        .map_err(|source| PciSetupError::IoEvent { addr, source })?;
                }
            }
            let name = format!("virtio-blk{i} (pci 00:{slot:02x}.0, {})", d.path.display());
            self.stats.push((name, dev.stats()));
            let dev = Arc::new(Mutex::new(dev));
            let got = root.add_device(dev.clone())?;
            debug_assert_eq!(got, slot);
            prt.push(PciRoute {
                device: slot as u8,
                pin: 0,
                gsi,
            });
            self.intx.push((slot as u8, gsi as u8));
            let worker = VirtioWorker::new(dev, kicks, d.moderation).map_err(|source| {
                PciSetupError::Io {
                    what: "creating the moderation timer",
                    source,
                }
            })?;
            subscribers.push(Box::new(worker));
        }
        let root = Arc::new(root);
        self.pio.push((
            Arc::new(Mutex::new(PciConfigIo::new(root.clone()))),
            u64::from(PciConfigIo::BASE),
            PciConfigIo::LEN,
        ));
        self.mmio.push((
            Arc::new(Mutex::new(PciEcam::new(root.clone()))),
            layout::PCI_ECAM_START,
            layout::PCI_ECAM_SIZE,
        ));
        self.mmio.push((
            Arc::new(Mutex::new(PciMmioWindow::new(root, layout::PCI_MMIO_START))),
            layout::PCI_MMIO_START,
            layout::PCI_MMIO_END - layout::PCI_MMIO_START,
        ));
        self.pci = Some(PciHostConfig {
            prt,
            ..PciHostConfig::default()
        });
        Ok(())
    }

    fn setup_mmio(
        &mut self,
        a: &SetupArgs<'_>,
        subscribers: &mut Vec<Subscriber>,
    ) -> Result<(), PciSetupError> {
        if a.disks.len() > MAX_VIRTIO_MMIO {
            return Err(PciSetupError::TooManyMmio(a.disks.len()));
        }
        for (i, d) in a.disks.iter().enumerate() {
            let block = open_block(d, i)?;
            let base = layout::VIRTIO_MMIO_START + i as u64 * layout::VIRTIO_MMIO_SIZE;
            let gsi = VIRTIO_MMIO_GSI_BASE + i as u32;
            let line = a.lines.line(gsi, 0)?;
            let dev = VirtioMmio::new(Box::new(block), a.mem.clone(), line).map_err(|source| {
                PciSetupError::Io {
                    what: "creating queue eventfds",
                    source,
                }
            })?;
            let kicks = dev.kick_fds().map_err(|source| PciSetupError::Io {
                what: "cloning queue eventfds",
                source,
            })?;
            let addr = base + REG_QUEUE_NOTIFY;
            for (q, k) in kicks.iter().enumerate() {
                a.vm.register_ioevent(k, &IoEventAddress::Mmio(addr), q as u32)
                    .map_err(|source| PciSetupError::IoEvent { addr, source })?;
            }
            self.stats.push((
                format!("virtio-blk{i} (mmio {base:#x}, {})", d.path.display()),
                dev.stats(),
            ));
            let dev = Arc::new(Mutex::new(dev));
            self.mmio
                .push((dev.clone(), base, layout::VIRTIO_MMIO_SIZE));
            self.mmio_acpi.push(VirtioMmioDevice {
                addr: base,
                len: layout::VIRTIO_MMIO_SIZE,
                gsi,
            });
            let worker = VirtioWorker::new(dev, kicks, d.moderation).map_err(|source| {
                PciSetupError::Io {
                    what: "creating the moderation timer",
                    source,
                }
            })?;
            subscribers.push(Box::new(worker));
        }
        Ok(())
    }

    fn start(&mut self, subscribers: Vec<Subscriber>) -> Result<(), PciSetupError> {
        let mut em: EventManager<Subscriber> =
            EventManager::new().map_err(|e| PciSetupError::Io {
                what: "creating the device event loop",
                source: std::io::Error::other(format!("{e:?}")),
            })?;
        for s in subscribers {
            em.add_subscriber(s);
        }
        let stop = self.stop.clone();
        let t = std::thread::Builder::new()
            .name("virtio".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    if let Err(e) = em.run_with_timeout(100) {
                        log::error!("virtio device loop: {e:?}");
                        break;
                    }
                }
            })
            .map_err(|source| PciSetupError::Io {
                what: "spawning the virtio device thread",
                source,
            })?;
        self.thread = Some(t);
        Ok(())
    }

    /// Put the bus devices on the port-I/O and MMIO buses.
    pub fn register(&self, pio: &mut Bus, mmio: &mut Bus) -> Result<(), BusError> {
        for (d, base, len) in &self.pio {
            pio.insert(d.clone(), *base, *len)?;
        }
        for (d, base, len) in &self.mmio {
            mmio.insert(d.clone(), *base, *len)?;
        }
        Ok(())
    }

    /// Add the PCI host bridge (MCFG, `_PRT`) and virtio-mmio devices to the ACPI tables.
    pub fn apply_acpi(&self, cfg: &mut AcpiConfig) {
        if self.pci.is_some() {
            cfg.pci = self.pci.clone();
        }
        cfg.virtio_mmio.extend(self.mmio_acpi.iter().copied());
    }

    /// Write the MP table with the PCI INTx entries.
    pub fn write_mptable(
        &self,
        mem: &GuestMemoryMmap,
        num_cpus: u8,
        ioapic_id: u8,
    ) -> Result<(), MptableError> {
        let mut t = MpTable::new(num_cpus, ioapic_id)?;
        for (slot, gsi) in &self.intx {
            t.add_pci_intx(*slot, PciIntPin::IntA, *gsi)?;
        }
        t.write(mem)
    }

    /// The per-device counters, one line each.
    pub fn format_stats(&self) -> String {
        self.stats.iter().map(|(n, s)| s.format(n) + "\n").collect()
    }

    /// Stop the device thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("the virtio device thread panicked");
            }
        }
    }
}

impl Drop for VirtioDevices {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_option_parses_path_readonly_and_moderation() {
        let d = parse_disk("path=/tmp/x.img,readonly=on,irq-usecs=50,irq-max-frames=8").unwrap();
        assert_eq!(d.path, PathBuf::from("/tmp/x.img"));
        assert!(d.readonly);
        assert!(d.event_idx, "EVENT_IDX is offered unless event-idx=off");
        assert_eq!(
            d.moderation,
            Moderation {
                usecs: 50,
                max_frames: 8
            }
        );
    }

    #[test]
    fn disk_option_event_idx_off_withholds_the_feature() {
        assert!(!parse_disk("path=a,event-idx=off").unwrap().event_idx);
        assert!(parse_disk("path=a,event-idx=on").unwrap().event_idx);
        assert!(parse_disk("path=a,event-idx=maybe")
            .unwrap_err()
            .contains("event-idx=maybe: use on or off"));
    }

    #[test]
    fn slot_pairs_share_an_intx_gsi_with_distinct_sources() {
        assert_eq!(intx_route(1), (16, 0));
        assert_eq!(intx_route(2), (16, 1));
        assert_eq!(intx_route(3), (17, 0));
        assert_eq!(intx_route(9), (16, 2));
        let mut seen = std::collections::BTreeSet::new();
        for slot in 1..32 {
            let (gsi, src) = intx_route(slot);
            assert!((16..20).contains(&gsi) && src < 8);
            assert!(seen.insert((gsi, src)), "slot {slot} reuses a source");
        }
    }

    #[test]
    fn disk_option_errors_name_the_problem() {
        assert!(parse_disk("readonly=on").unwrap_err().contains("path=FILE"));
        assert!(parse_disk("path=")
            .unwrap_err()
            .contains("unknown or empty"));
        assert!(parse_disk("path=a,ro=1").unwrap_err().contains("unknown"));
        assert!(parse_disk("path=a,readonly=maybe")
            .unwrap_err()
            .contains("on or off"));
        assert!(parse_disk("/tmp/x").unwrap_err().contains("key=value"));
        assert!(parse_disk("path=a,irq-usecs=-1")
            .unwrap_err()
            .contains("whole number"));
        assert!(parse_disk("path=a,irq-max-frames=4")
            .unwrap_err()
            .contains("irq-usecs"));
    }
}
