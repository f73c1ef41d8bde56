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
//! * `--testdev` adds the test PCI function (devices/src/pci/testfn.rs) in slot
//!   [`TESTFN_SLOT`] (31): INTA# is then GSI 19, source 6 (no test-kernel case drives that
//!   source through LINE_SET), 16 MSI-X vectors with GSIs from the routing table.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use boot::acpi::{AcpiConfig, PciHostConfig, PciRoute, VirtioMmioDevice};
use boot::layout;
use boot::mptable::{MpTable, MptableError, PciIntPin};
use devices::pci::testfn::{TestPciFunction, TESTFN_BAR_SIZE};
use devices::pci::{PciConfigIo, PciEcam, PciMmioWindow, PciRoot};
use devices::tap::{Tap, TapError};
use devices::testdev::SharedTestFn;
use devices::testdev::{TestDisk, TestDiskTransport};
use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::mmio::{VirtioMmio, REG_QUEUE_NOTIFY};
use devices::virtio::net::{default_mac, Net};
use devices::virtio::pci::{NotifyRegistrar, VirtioPci, BAR_SIZE};
use devices::virtio::worker::{Moderation, VirtioWorker};
use devices::virtio::{VirtioBackend, VirtioStats};
use devices::{Bus, BusDevice, BusError};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use irqchip::{LineProvider, MsiRouteSink};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vm_allocator::{AddressAllocator, AllocPolicy};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// First GSI for PCI INTx.
pub const PCI_INTX_GSI_BASE: u32 = 16;
/// First GSI for virtio-mmio devices, and how many there can be.
pub const VIRTIO_MMIO_GSI_BASE: u32 = 20;
pub const MAX_VIRTIO_MMIO: usize = 4;
/// PCI slot of the test device's function (`--testdev`).
pub const TESTFN_SLOT: usize = 31;

/// The GSI and wired-OR source of PCI slot `slot`'s INTA# (see the module documentation).
pub fn intx_route(slot: usize) -> (u32, u8) {
    let d = slot.saturating_sub(1);
    let gsi = PCI_INTX_GSI_BASE + ((d / 2) % 4) as u32;
    // Slots sharing a GSI: d % 2 tells the pair apart, d / 8 the repetition.
    let source = ((d % 2) | ((d / 8) << 1)) as u8;
    (gsi, source)
}

/// Which virtio transport `--disk` and `--net` devices use.
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
    /// `transport=pci|mmio`; `None` takes `--virtio-transport`.
    pub transport: Option<VirtioTransportArg>,
    /// Offer VIRTIO_RING_F_EVENT_IDX (virtio 1.2, 2.7.10); `event-idx=off` withholds it.
    pub event_idx: bool,
}

/// `irq-max-frames` alone would hold an interrupt forever on a quiet queue: it needs the
/// `irq-usecs` bound too.
fn check_moderation(option: &str, m: &Moderation) -> Result<(), String> {
    if m.max_frames > 0 && m.usecs == 0 {
        return Err(format!(
            "{option} irq-max-frames needs irq-usecs=N (the longest an interrupt may wait)"
        ));
    }
    Ok(())
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

fn transport(key: &str, v: &str) -> Result<VirtioTransportArg, String> {
    match v {
        "pci" => Ok(VirtioTransportArg::Pci),
        "mmio" => Ok(VirtioTransportArg::Mmio),
        _ => Err(format!("{key}={v}: use pci or mmio")),
    }
}

/// Parse `path=FILE[,readonly=on|off][,event-idx=on|off][,irq-usecs=N][,irq-max-frames=M][,transport=pci|mmio]`.
pub fn parse_disk(s: &str) -> Result<DiskSpec, String> {
    let mut path = None;
    let mut readonly = false;
    let mut event_idx = true;
    let mut moderation = Moderation::default();
    let mut transport_arg = None;
    for part in s.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            format!("'{part}' in --disk is not key=value; use path=FILE[,readonly=on][,event-idx=off][,irq-usecs=N][,irq-max-frames=M][,transport=pci|mmio]")
        })?;
        match k {
            "path" if !v.is_empty() => path = Some(PathBuf::from(v)),
            "readonly" => readonly = on_off(k, v)?,
            "event-idx" => event_idx = on_off(k, v)?,
            "irq-usecs" => moderation.usecs = number(k, v)?,
            "irq-max-frames" => moderation.max_frames = number(k, v)?,
            "transport" => transport_arg = Some(transport(k, v)?),
            _ => {
                return Err(format!(
                    "unknown or empty --disk option '{k}'; known: path, readonly, event-idx, irq-usecs, irq-max-frames, transport"
                ))
            }
        }
    }
    let path = path.ok_or("--disk needs path=FILE")?;
    check_moderation("--disk", &moderation)?;
    Ok(DiskSpec {
        path,
        readonly,
        moderation,
        transport: transport_arg,
        event_idx,
    })
}

/// One `--net` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// The tap to attach (created if missing and irqvm may).
    pub tap: String,
    /// The guest's MAC; default 52:54:00:12:34:(56 + index).
    pub mac: Option<[u8; 6]>,
    pub moderation: Moderation,
}

/// Parse a unicast MAC written as six colon-separated hex octets.
fn parse_mac(v: &str) -> Result<[u8; 6], String> {
    let bad = || format!("mac={v}: expected six hex octets like 52:54:00:12:34:56");
    let mut mac = [0u8; 6];
    let mut parts = v.split(':');
    for b in &mut mac {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "mac={v} is a multicast address (lowest bit of the first octet set); a NIC needs a unicast one, e.g. 52:54:00:12:34:56"
        ));
    }
    if mac == [0; 6] {
        return Err(format!("mac={v}: the all-zero address is not usable"));
    }
    Ok(mac)
}

/// Parse `tap=NAME[,mac=XX:XX:XX:XX:XX:XX][,irq-usecs=N][,irq-max-frames=M]`.
pub fn parse_net(s: &str) -> Result<NetSpec, String> {
    let mut tap = None;
    let mut mac = None;
    let mut moderation = Moderation::default();
    for part in s.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            format!("'{part}' in --net is not key=value; use tap=NAME[,mac=52:54:00:12:34:56][,irq-usecs=N][,irq-max-frames=M]")
        })?;
        match k {
            "tap" => {
                if !devices::tap::valid_name(v) {
                    return Err(format!(
                        "tap={v}: a tap name is 1 to {} bytes without '/', ':', whitespace",
                        devices::tap::MAX_NAME_LEN
                    ));
                }
                tap = Some(v.to_string());
            }
            "mac" => mac = Some(parse_mac(v)?),
            "irq-usecs" => moderation.usecs = number(k, v)?,
            "irq-max-frames" => moderation.max_frames = number(k, v)?,
            _ => {
                return Err(format!(
                    "unknown --net option '{k}'; known: tap, mac, irq-usecs, irq-max-frames"
                ))
            }
        }
    }
    let tap = tap.ok_or("--net needs tap=NAME")?;
    check_moderation("--net", &moderation)?;
    Ok(NetSpec {
        tap,
        mac,
        moderation,
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
    #[error("--net: {0}")]
    Tap(#[from] TapError),
    #[error("virtio-pci device: {0}")]
    VirtioPci(#[from] devices::virtio::pci::VirtioPciError),
    #[error("test PCI function: {0}")]
    TestFn(#[from] devices::pci::testfn::TestFnError),
    #[error("PCI bus: {0}")]
    Pci(#[from] devices::pci::PciError),
    #[error("no room for a {size:#x}-byte BAR in the PCI MMIO window; attach fewer devices")]
    BarSpace { size: u64 },
    #[error("{0} virtio-mmio devices requested (--disk and --net together); at most {MAX_VIRTIO_MMIO} are supported (put the others on PCI: transport=pci in --disk, or --virtio-transport pci)")]
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
    testfn: Option<SharedTestFn>,
    /// What the test device tells the guest about each disk, in `--disk` order.
    test_disks: Vec<(usize, TestDisk)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Inputs for [`VirtioDevices::setup`].
pub struct SetupArgs<'a> {
    pub vm: &'a Arc<VmFd>,
    pub mem: &'a GuestMemoryMmap,
    pub lines: &'a dyn LineProvider,
    pub routes: Arc<dyn MsiRouteSink>,
    pub disks: &'a [DiskSpec],
    pub nets: &'a [NetSpec],
    pub transport: VirtioTransportArg,
    /// Add the test device's PCI function (`--testdev`).
    pub testdev: bool,
}

/// Queue notify addresses as KVM ioeventfds (any written value kicks the queue).
struct KvmNotify(Arc<VmFd>);

impl NotifyRegistrar for KvmNotify {
    fn register(&self, fd: &EventFd, addr: u64) -> std::io::Result<()> {
        self.0
            .register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    fn unregister(&self, fd: &EventFd, addr: u64) -> std::io::Result<()> {
        self.0
            .unregister_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

/// A device backend opened from the command line, waiting for its transport.
struct Opened {
    backend: Box<dyn VirtioBackend>,
    /// "virtio-blk0", "virtio-net1".
    label: String,
    /// What backs it (path, tap name), for the stats line.
    backing: String,
    moderation: Moderation,
    transport: VirtioTransportArg,
    /// Position in `--disk` order, for disks (the test device describes those).
    disk: Option<usize>,
}

/// Open every `--disk` and `--net` backend (disks first, in command-line order).
fn open_all(a: &SetupArgs<'_>) -> Result<Vec<Opened>, PciSetupError> {
    let mut out = Vec::new();
    for (i, d) in a.disks.iter().enumerate() {
        out.push(Opened {
            backend: Box::new(open_block(d, i)?),
            label: format!("virtio-blk{i}"),
            backing: d.path.display().to_string(),
            moderation: d.moderation,
            transport: d.transport.unwrap_or(a.transport),
            disk: Some(i),
        });
    }
    for (i, n) in a.nets.iter().enumerate() {
        let tap = Tap::open(&n.tap)?;
        let mac = n.mac.unwrap_or_else(|| default_mac(i));
        log::info!(
            "virtio-net{i}: tap {} mac {}",
            n.tap,
            mac.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        );
        out.push(Opened {
            backend: Box::new(Net::new(Box::new(tap), mac)),
            label: format!("virtio-net{i}"),
            backing: format!("tap {}", n.tap),
            moderation: n.moderation,
            transport: a.transport,
            disk: None,
        });
    }
    Ok(out)
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
    /// Nothing attached (no `--disk` or `--net`).
    fn empty() -> Self {
        Self {
            pio: Vec::new(),
            mmio: Vec::new(),
            pci: None,
            mmio_acpi: Vec::new(),
            intx: Vec::new(),
            stats: Vec::new(),
            testfn: None,
            test_disks: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        }
    }

    /// Build the devices, register their ioeventfds, and start the device thread.
    pub fn setup(a: SetupArgs<'_>) -> Result<Self, PciSetupError> {
        let mut out = Self::empty();
        let devs = open_all(&a)?;
        // Each device's own transport (a disk's transport=, else --virtio-transport).
        let (pci, mmio): (Vec<_>, Vec<_>) = devs
            .into_iter()
            .partition(|d| d.transport == VirtioTransportArg::Pci);
        if mmio.len() > MAX_VIRTIO_MMIO {
            return Err(PciSetupError::TooManyMmio(mmio.len()));
        }
        let mut subscribers: Vec<Subscriber> = Vec::new();
        if !pci.is_empty() || a.testdev {
            out.setup_pci(&a, pci, &mut subscribers)?;
        }
        if !mmio.is_empty() {
            out.setup_mmio(&a, mmio, &mut subscribers)?;
        }
        out.test_disks.sort_by_key(|(i, _)| *i);
        if !subscribers.is_empty() {
            out.start(subscribers)?;
        }
        Ok(out)
    }

    /// The test PCI function, when `--testdev` asked for one.
    pub fn testdev_function(&self) -> Option<SharedTestFn> {
        self.testfn.clone()
    }

    /// The disks as the test device describes them (DISK_INFO, VIRTIO_STATS), in `--disk`
    /// order.
    pub fn test_disks(&self) -> Vec<TestDisk> {
        self.test_disks.iter().map(|(_, d)| d.clone()).collect()
    }

    fn setup_pci(
        &mut self,
        a: &SetupArgs<'_>,
        devs: Vec<Opened>,
        subscribers: &mut Vec<Subscriber>,
    ) -> Result<(), PciSetupError> {
        let mut root = PciRoot::new();
        let mut alloc = AddressAllocator::new(
            layout::PCI_MMIO_START,
            layout::PCI_MMIO_END - layout::PCI_MMIO_START,
        )
        .map_err(|_| PciSetupError::BarSpace { size: BAR_SIZE })?;
        let mut prt = Vec::new();
        for (n, d) in devs.into_iter().enumerate() {
            let bar = alloc
                .allocate(BAR_SIZE, BAR_SIZE, AllocPolicy::FirstMatch)
                .map_err(|_| PciSetupError::BarSpace { size: BAR_SIZE })?;
            // The slot this device will get: the root fills the lowest free one.
            let slot = n + 1;
            let (gsi, source) = intx_route(slot);
            // INTx is level-triggered and re-checked at each EOI: in kernel mode it rides
            // KVM's irqfd resampler (split mode handles EOIs itself).
            let line = a.lines.level_line(gsi, source)?;
            let mut dev = VirtioPci::new(
                d.backend,
                a.mem.clone(),
                bar.start(),
                a.routes.clone(),
                Some(line),
            )?;
            let kicks = dev.kick_fds().map_err(|source| PciSetupError::Io {
                what: "cloning queue eventfds",
                source,
            })?;
            // Bound while BAR 0 decodes, and moved with it (see VirtioPci::attach_notify).
            dev.attach_notify(Arc::new(KvmNotify(a.vm.clone())));
            let name = format!("{} (pci 00:{slot:02x}.0, {})", d.label, d.backing);
            self.stats.push((name, dev.stats()));
            if let Some(i) = d.disk {
                self.test_disks.push((
                    i,
                    TestDisk {
                        transport: TestDiskTransport::Pci { slot: slot as u8 },
                        moderation_usecs: d.moderation.usecs,
                        moderation_max_frames: d.moderation.max_frames,
                        stats: dev.stats(),
                    },
                ));
            }
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
        if a.testdev {
            let bar = alloc
                .allocate(TESTFN_BAR_SIZE, TESTFN_BAR_SIZE, AllocPolicy::FirstMatch)
                .map_err(|_| PciSetupError::BarSpace {
                    size: TESTFN_BAR_SIZE,
                })?;
            let (gsi, source) = intx_route(TESTFN_SLOT);
            let line = a.lines.level_line(gsi, source)?;
            let f = TestPciFunction::new(bar.start(), a.routes.clone(), Some((line, gsi as u8)))?;
            log::info!(
                "test PCI function at 00:{TESTFN_SLOT:02x}.0, BAR 0 {:#x}, INTA# GSI {gsi}, MSI-X GSIs {:?}",
                bar.start(),
                f.msix_gsis()
            );
            let f = Arc::new(Mutex::new(f));
            root.add_device_at(TESTFN_SLOT, f.clone())?;
            prt.push(PciRoute {
                device: TESTFN_SLOT as u8,
                pin: 0,
                gsi,
            });
            self.intx.push((TESTFN_SLOT as u8, gsi as u8));
            self.testfn = Some(f);
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
        devs: Vec<Opened>,
        subscribers: &mut Vec<Subscriber>,
    ) -> Result<(), PciSetupError> {
        for (n, d) in devs.into_iter().enumerate() {
            let base = layout::VIRTIO_MMIO_START + n as u64 * layout::VIRTIO_MMIO_SIZE;
            let gsi = VIRTIO_MMIO_GSI_BASE + n as u32;
            let line = a.lines.line(gsi, 0)?;
            let dev = VirtioMmio::new(d.backend, a.mem.clone(), line).map_err(|source| {
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
                format!("{} (mmio {base:#x}, {})", d.label, d.backing),
                dev.stats(),
            ));
            if let Some(i) = d.disk {
                self.test_disks.push((
                    i,
                    TestDisk {
                        transport: TestDiskTransport::Mmio { index: n as u8 },
                        moderation_usecs: d.moderation.usecs,
                        moderation_max_frames: d.moderation.max_frames,
                        stats: dev.stats(),
                    },
                ));
            }
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
    fn disk_transport_option_overrides_the_default_and_is_optional() {
        assert_eq!(
            parse_disk("path=a,transport=mmio").unwrap().transport,
            Some(VirtioTransportArg::Mmio)
        );
        assert_eq!(
            parse_disk("path=a,transport=pci").unwrap().transport,
            Some(VirtioTransportArg::Pci)
        );
        assert_eq!(parse_disk("path=a").unwrap().transport, None);
    }

    #[test]
    fn disk_transport_option_rejects_other_values() {
        let e = parse_disk("path=a,transport=virtio").unwrap_err();
        assert!(
            e.contains("transport=virtio") && e.contains("pci or mmio"),
            "{e}"
        );
        assert!(parse_disk("path=a,transport=").is_err());
    }

    #[test]
    fn net_option_parses_tap_mac_and_moderation() {
        let n = parse_net("tap=tap0,mac=52:54:00:AB:cd:01,irq-usecs=20,irq-max-frames=4").unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0xAB, 0xCD, 1]));
        assert_eq!(
            n.moderation,
            Moderation {
                usecs: 20,
                max_frames: 4
            }
        );
        assert_eq!(parse_net("tap=t").unwrap().mac, None);
    }

    #[test]
    fn net_option_errors_name_the_problem() {
        assert!(parse_net("mac=52:54:00:12:34:56")
            .unwrap_err()
            .contains("tap=NAME"));
        assert!(parse_net("tap=").unwrap_err().contains("tap name"));
        assert!(parse_net("tap=a-name-longer-than-15")
            .unwrap_err()
            .contains("tap name"));
        assert!(parse_net("tap=t,speed=10").unwrap_err().contains("unknown"));
        assert!(parse_net("tap0").unwrap_err().contains("key=value"));
        assert!(parse_net("tap=t,irq-max-frames=2")
            .unwrap_err()
            .contains("irq-usecs"));
    }

    #[test]
    fn mac_must_be_six_hex_octets_and_unicast() {
        for bad in [
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52-54-00-12-34-56",
            "52:54:00:12:34:5g",
            "52:54:00:12:34:567",
            "",
        ] {
            assert!(
                parse_mac(bad).unwrap_err().contains("six hex octets"),
                "{bad}"
            );
        }
        assert!(parse_mac("01:00:5e:00:00:01")
            .unwrap_err()
            .contains("multicast"));
        assert!(parse_mac("00:00:00:00:00:00")
            .unwrap_err()
            .contains("all-zero"));
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
