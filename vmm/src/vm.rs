//! VM lifecycle: create the VM and its memory, the interrupt controller backend, the devices
//! and buses, load the kernel, start one thread per vCPU, and stop them all when the guest
//! asks (or fails).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::kick::Kicker;
use boot::cpuid::{build_cpuid, CpuTemplate, VcpuTopology};
use boot::layout;
use boot::loader::BootEntry;
use devices::acpi_pm::AcpiPm;
use devices::bus::OffsetDevice;
use devices::cmos::Cmos;
use devices::debug_exit::DebugExit;
use devices::fw_cfg::FwCfg;
use devices::i8042::I8042;
use devices::irqchip_ports::{IoapicMmio, PicPorts};
use devices::pc_testdev::{self, PcTestdevLines};
use devices::pit::Pit;
use devices::serial::Serial;
use devices::testdev::{TestDevConfig, TestDevice, HOST_PVM};
use devices::{Bus, BusDevice, ExitSink, GuestExit};
use irqchip::kvm::KernelIrqchip;
use irqchip::split::SplitIrqchip;
use irqchip::stats::IrqStats;
use irqchip::{EoiSink, ExtIntSource, LineProvider, MsiRouteSink, MsiSender};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::cli::{CpuTemplateArg, InjectFault, IrqchipMode, SerialOut};
use crate::console;
use crate::vcpu::{self, VcpuContext};

/// Everything `irqvm run` was asked to do, validated.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub mem_mib: u64,
    pub vcpus: u32,
    pub irqchip: IrqchipMode,
    pub serial: SerialOut,
    pub cpu_template: CpuTemplateArg,
    /// Attach the irqvm test device (docs/testdev.md).
    pub testdev: bool,
    /// The KVM device node (normally /dev/kvm).
    pub kvm_device: PathBuf,
    /// Print the host-side interrupt counters at exit.
    pub irq_stats: bool,
    /// virtio-blk disks (`--disk`) and their transport.
    pub disks: Vec<crate::pci_setup::DiskSpec>,
    /// virtio-net NICs (`--net`).
    pub nets: Vec<crate::pci_setup::NetSpec>,
    pub virtio_transport: crate::pci_setup::VirtioTransportArg,
    /// Break the userspace controller on purpose (testing the tests).
    pub inject_fault: Option<InjectFault>,
}

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    PowerOff,
    Reset,
    TripleFault { cpu: u8 },
    InternalError(String),
    DebugExit(u32),
    TestExit(u32),
    Failed(String),
}

impl Outcome {
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::PowerOff => 0,
            Outcome::Failed(_) => 1,
            Outcome::Reset | Outcome::TripleFault { .. } => 2,
            Outcome::InternalError(_) => 3,
            Outcome::DebugExit(v) => ((v << 1) | 1) as i32,
            Outcome::TestExit(v) => *v as i32,
        }
    }

    /// A one-line explanation for stderr, None for a clean power-off.
    pub fn message(&self) -> Option<String> {
        match self {
            Outcome::PowerOff => None,
            Outcome::Reset => Some("guest reset the machine (reboot, or panic with panic=-1); irqvm does not restart guests".into()),
            Outcome::TripleFault { cpu } => Some(format!("guest triple-faulted on vCPU {cpu} (KVM_EXIT_SHUTDOWN)")),
            Outcome::InternalError(m) => Some(m.clone()),
            Outcome::DebugExit(v) => Some(format!("guest wrote {v:#x} to isa-debug-exit")),
            Outcome::TestExit(0) => None,
            Outcome::TestExit(v) => Some(format!("test kernel exited with status {v}")),
            Outcome::Failed(m) => Some(m.clone()),
        }
    }
}

/// Errors setting up or running a VM. Each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("cannot use {path} as the KVM device ({source}); is KVM loaded, is it a KVM device node, and do you have read/write access to it?")]
    OpenKvm {
        path: String,
        source: kvm_ioctls::Error,
    },
    #[error("--inject-fault needs --irqchip split (the in-kernel controllers cannot be broken from userspace)")]
    FaultNeedsSplit,
    #[error("--vcpus {0}: a VM needs at least one vCPU")]
    NoVcpus(u32),
    #[error("--vcpus {asked}: this host's KVM allows at most {max}")]
    TooManyVcpus { asked: u32, max: usize },
    #[error("--memory {asked} MiB: irqvm needs at least {min} MiB")]
    TooLittleMemory { asked: u64, min: u64 },
    #[error("--memory {asked} MiB is more than this host has ({host} MiB)")]
    TooMuchMemory { asked: u64, host: u64 },
    #[error("{what} failed: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("allocating {mib} MiB of guest memory failed: {source}")]
    Memory {
        mib: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Irq(#[from] irqchip::IrqError),
    #[error("building ACPI tables: {0}")]
    Acpi(#[from] boot::acpi::AcpiError),
    #[error("building the MP table: {0}")]
    Mptable(#[from] boot::mptable::MptableError),
    #[error("bus setup: {0}")]
    Bus(#[from] devices::BusError),
    #[error("cannot open serial output file {path}: {source}")]
    SerialFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Virtio(#[from] crate::pci_setup::PciSetupError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

pub const MIN_MEMORY_MIB: u64 = 16;

fn host_memory_mib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

/// Stop flag and outcome shared by vCPU threads, devices and the main loop.
pub struct Shutdown {
    stop: AtomicBool,
    outcome: Mutex<Option<Outcome>>,
    pub evt: EventFd,
}

impl Shutdown {
    fn new() -> Result<Self, VmmError> {
        Ok(Self {
            stop: AtomicBool::new(false),
            outcome: Mutex::new(None),
            evt: EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).map_err(|source| {
                VmmError::Io {
                    what: "creating the shutdown eventfd",
                    source,
                }
            })?,
        })
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Record the first outcome and tell everyone to stop.
    pub fn finish(&self, outcome: Outcome) {
        {
            let mut o = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
            if o.is_none() {
                log::info!("VM stopping: {outcome:?}");
                *o = Some(outcome);
            }
        }
        self.stop.store(true, Ordering::Release);
        let _ = self.evt.write(1);
    }

    fn outcome(&self) -> Outcome {
        self.outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or(Outcome::Failed("VM stopped without a reason".into()))
    }
}

impl ExitSink for Shutdown {
    fn request_exit(&self, why: GuestExit) {
        self.finish(match why {
            GuestExit::PowerOff => Outcome::PowerOff,
            GuestExit::Reset => Outcome::Reset,
            GuestExit::DebugExit(v) => Outcome::DebugExit(v),
            GuestExit::TestExit(v) => Outcome::TestExit(v),
        });
    }
}

/// Serial output that reaches the terminal byte by byte (prompts have no newline).
struct FlushingStdout;
impl Write for FlushingStdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut o = std::io::stdout().lock();
        o.write_all(buf)?;
        o.flush()?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

fn serial_writer(out: &SerialOut) -> Result<Box<dyn Write + Send>, VmmError> {
    Ok(match out {
        SerialOut::Stdio => Box::new(FlushingStdout),
        SerialOut::None => Box::new(std::io::sink()),
        SerialOut::File(p) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|source| VmmError::SerialFile {
                    path: p.display().to_string(),
                    source,
                })?,
        ),
    })
}

fn open_kvm(path: &std::path::Path) -> Result<Kvm, VmmError> {
    let err = |source| VmmError::OpenKvm {
        path: path.display().to_string(),
        source,
    };
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| err(kvm_ioctls::Error::new(libc::EINVAL)))?;
    let kvm = Kvm::new_with_path(&c).map_err(err)?;
    // A node that opens but is not KVM answers KVM_GET_API_VERSION with an error.
    if kvm.get_api_version() != 12 {
        return Err(err(kvm_ioctls::Error::new(libc::ENOTTY)));
    }
    Ok(kvm)
}

/// Validate, build and run a VM until the guest stops it.
pub fn run(cfg: VmConfig) -> Result<Outcome, VmmError> {
    if cfg.vcpus == 0 {
        return Err(VmmError::NoVcpus(cfg.vcpus));
    }
    if cfg.mem_mib < MIN_MEMORY_MIB {
        return Err(VmmError::TooLittleMemory {
            asked: cfg.mem_mib,
            min: MIN_MEMORY_MIB,
        });
    }
    if let Some(host) = host_memory_mib() {
        if cfg.mem_mib > host {
            return Err(VmmError::TooMuchMemory {
                asked: cfg.mem_mib,
                host,
            });
        }
    }
    let kvm = open_kvm(&cfg.kvm_device)?;
    let max_vcpus = kvm.get_max_vcpus().min(254);
    if cfg.vcpus as usize > max_vcpus {
        return Err(VmmError::TooManyVcpus {
            asked: cfg.vcpus,
            max: max_vcpus,
        });
    }
    // At most 254 (xAPIC ids, MP table), so it fits in a u8.
    let nr_vcpus = cfg.vcpus as u8;
    if cfg.vcpus as usize > kvm.get_nr_vcpus() {
        log::warn!(
            "--vcpus {} is more than this host's recommended {} vCPUs per VM",
            cfg.vcpus,
            kvm.get_nr_vcpus()
        );
    }
    let template = match cfg.cpu_template {
        CpuTemplateArg::Auto => CpuTemplate::detect(),
        CpuTemplateArg::Host => CpuTemplate::Host,
        CpuTemplateArg::PvmSafe => CpuTemplate::PvmSafe,
    };
    log::info!("CPU template: {}", template.name());

    let vm = Arc::new(kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?);

    // Guest memory.
    let mem_size = cfg
        .mem_mib
        .checked_mul(1 << 20)
        .ok_or(VmmError::TooMuchMemory {
            asked: cfg.mem_mib,
            host: host_memory_mib().unwrap_or(0),
        })?;
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_regions(mem_size)
        .into_iter()
        .map(|(a, s)| (GuestAddress(a), s as usize))
        .collect();
    let mem = boot::GuestMem::from_ranges(&ranges).map_err(|source| VmmError::Memory {
        mib: cfg.mem_mib,
        source,
    })?;
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|_| VmmError::Io {
                what: "mapping guest memory",
                source: std::io::Error::from_raw_os_error(libc::EFAULT),
            })?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is mapped for the VM's whole life (`mem` outlives the vCPUs,
        // which are joined before `run` returns) and does not overlap another slot.
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }

    if let Err(e) = vm.set_tss_address(layout::KVM_TSS_ADDR as usize) {
        log::warn!("KVM_SET_TSS_ADDR failed ({e}); continuing (not needed on this host)");
    }
    if let Err(e) = vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDR) {
        log::debug!("KVM_SET_IDENTITY_MAP_ADDR failed ({e}); continuing");
    }

    // Interrupt controllers.
    let stats = Arc::new(IrqStats::new(layout::IOAPIC_PINS as u32));
    stats.set_label(layout::SERIAL_IRQ as u32, "serial");
    stats.set_label(2, "timer");
    let mut split: Option<SplitIrqchip> = None;
    let mut kernel_chip: Option<KernelIrqchip> = None;
    #[allow(clippy::type_complexity)]
    let (lines, msi, msi_routes): (
        Arc<dyn LineProvider>,
        Arc<dyn MsiSender>,
        Arc<dyn MsiRouteSink>,
    ) = match cfg.irqchip {
        IrqchipMode::Kernel => {
            if cfg.inject_fault.is_some() {
                return Err(VmmError::FaultNeedsSplit);
            }
            vm.create_irq_chip()
                .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
            KernelIrqchip::install_platform_routes(&vm, layout::IOAPIC_PINS as u32)?;
            let chip = KernelIrqchip::new(vm.clone(), layout::IOAPIC_PINS as u32, stats.clone())?;
            kernel_chip = Some(chip.clone());
            (
                Arc::new(chip.clone()),
                Arc::new(chip.clone()),
                Arc::new(chip),
            )
        }
        IrqchipMode::Split => {
            let chip = SplitIrqchip::new(vm.clone(), stats.clone())?;
            if cfg.inject_fault == Some(InjectFault::ForgetRemoteIrr) {
                log::warn!("fault injected: the IOAPIC will not clear remote IRR on EOI");
                chip.set_ioapic_fault(irqchip::ioapic::IoapicFault::ForgetRemoteIrrOnEoi);
            }
            split = Some(chip.clone());
            (
                Arc::new(chip.clone()),
                Arc::new(chip.clone()),
                Arc::new(chip),
            )
        }
    };

    // Devices.
    let shutdown = Arc::new(Shutdown::new()?);
    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    if let Some(chip) = &split {
        for base in [0x20u16, 0xa0, 0x4d0] {
            pio.insert(
                Arc::new(Mutex::new(PicPorts::new(chip.clone(), base))),
                base as u64,
                2,
            )?;
        }
        mmio.insert(
            Arc::new(Mutex::new(IoapicMmio::new(chip.clone()))),
            layout::IOAPIC_START,
            layout::IOAPIC_SIZE,
        )?;
    }
    let serial = Arc::new(Mutex::new(Serial::new(
        lines.line(layout::SERIAL_IRQ as u32, 0)?,
        serial_writer(&cfg.serial)?,
    )));
    pio.insert(serial.clone(), layout::SERIAL_PORT as u64, 8)?;
    // Platform devices: ACPI PM1a (S5 power-off), i8042 (reset), CMOS/RTC.
    pio.insert(
        Arc::new(Mutex::new(AcpiPm::new(shutdown.clone()))),
        layout::ACPI_PM1A_EVT_PORT as u64,
        AcpiPm::PORT_LEN,
    )?;
    // The i8042 takes 0x60 and 0x64 only; 0x61 is port B (the PIT's, in-kernel or below).
    let i8042: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(I8042::new(shutdown.clone())));
    pio.insert(i8042.clone(), 0x60, 1)?;
    pio.insert(Arc::new(Mutex::new(OffsetDevice::new(i8042, 4))), 0x64, 1)?;
    if cfg.irqchip == IrqchipMode::Split {
        // KVM's in-kernel PIT would bypass the userspace PIC/IOAPIC: emulate the 8254 here.
        let pit = Pit::new(lines.line(Pit::IRQ0_GSI, 0)?).map_err(|e| VmmError::Io {
            what: "creating the 8254 PIT",
            source: std::io::Error::other(e),
        })?;
        pio.insert(Arc::new(Mutex::new(pit.port61())), 0x61, 1)?;
        pio.insert(Arc::new(Mutex::new(pit)), 0x40, Pit::PORT_LEN)?;
    }
    let below_4g = mem_size.min(layout::MMIO_HOLE_START);
    pio.insert(
        Arc::new(Mutex::new(Cmos::new(below_4g, mem_size - below_4g))),
        0x70,
        Cmos::PORT_LEN,
    )?;
    // QEMU-compatible exits and line control for test kernels, always present: harmless to
    // a guest that does not know them.
    pio.insert(
        Arc::new(Mutex::new(DebugExit::new(shutdown.clone()))),
        layout::DEBUG_EXIT_PORT as u64,
        4,
    )?;
    pio.insert(
        Arc::new(Mutex::new(PcTestdevLines::new(lines.as_ref()))),
        layout::PC_TESTDEV_LINES_PORT as u64,
        pc_testdev::PC_TESTDEV_LINES,
    )?;
    pio.insert(
        Arc::new(Mutex::new(FwCfg::new(
            cfg.vcpus as u16,
            cfg.vcpus as u16,
            mem_size,
        ))),
        layout::FW_CFG_PORT as u64,
        FwCfg::PORT_LEN,
    )?;
    // PCI root bus and virtio devices (vmm/src/pci_setup.rs); before the test device,
    // which describes the disks to the guest.
    let mut virtio = crate::pci_setup::VirtioDevices::setup(crate::pci_setup::SetupArgs {
        vm: &vm,
        mem: &mem,
        lines: lines.as_ref(),
        routes: msi_routes,
        disks: &cfg.disks,
        nets: &cfg.nets,
        transport: cfg.virtio_transport,
        testdev: cfg.testdev,
    })?;
    virtio.register(&mut pio, &mut mmio)?;
    let mut test_counts = None;
    if cfg.testdev {
        let dev = TestDevice::new(
            lines.clone(),
            msi.clone(),
            shutdown.clone(),
            TestDevConfig {
                mode: match cfg.irqchip {
                    IrqchipMode::Kernel => 0,
                    IrqchipMode::Split => 1,
                },
                host: if crate::host::is_pvm() { HOST_PVM } else { 0 },
                ncpus: cfg.vcpus,
            },
            Box::new(|line: &str| log::info!("testdev: {line}")),
        )
        .with_disks(virtio.test_disks());
        let dev = match virtio.testdev_function() {
            Some(f) => dev.with_pci_function(f),
            None => dev,
        };
        test_counts = Some(dev.counts());
        pio.insert(
            Arc::new(Mutex::new(dev)),
            layout::TESTDEV_PORT as u64,
            layout::TESTDEV_PORT_SIZE as u64,
        )?;
    }

    // Kernel, initrd, command line, boot protocol data.
    let kernel_path = cfg.kernel.display().to_string();
    let loaded = boot::load_kernel(&mem, &kernel_path)?;
    log::info!(
        "kernel loaded: {:?}, ends at {:#x}",
        loaded.entry,
        loaded.kernel_end
    );
    boot::params::write_cmdline(&mem, &cfg.cmdline)?;
    let initrd = match &cfg.initrd {
        // A Multiboot kernel gets its --initrd list as modules (below).
        Some(p) if !matches!(loaded.entry, BootEntry::Multiboot { .. }) => {
            let max = loaded.setup_header.map_or(u64::MAX, |h| {
                if h.initrd_addr_max != 0 {
                    h.initrd_addr_max as u64
                } else {
                    u64::MAX
                }
            });
            Some(boot::params::load_initrd(
                &mem,
                &p.display().to_string(),
                loaded.kernel_end,
                max,
            )?)
        }
        _ => None,
    };
    // Platform description, both ways: MP table (X86_MPPARSE kernels) and ACPI.
    let mut acpi_cfg = boot::acpi::AcpiConfig::new(nr_vcpus);
    virtio.apply_acpi(&mut acpi_cfg);
    virtio.write_mptable(&mem, nr_vcpus, acpi_cfg.ioapic_id)?;
    let rsdp = Some(boot::acpi::create_acpi_tables(&mem, &acpi_cfg)?.0);
    match loaded.entry {
        BootEntry::Linux64 { .. } => boot::params::write_boot_params(
            &mem,
            mem_size,
            loaded.setup_header,
            cfg.cmdline.len(),
            initrd,
            rsdp,
        )?,
        BootEntry::Pvh { .. } => boot::params::write_pvh_info(&mem, mem_size, initrd, rsdp)?,
        BootEntry::Multiboot { .. } => {
            // The default is a Linux console line; a Multiboot test kernel would read it as
            // arguments. Without --cmdline it gets none, as under QEMU.
            let cmdline = if cfg.cmdline == crate::cli::DEFAULT_CMDLINE
                || cfg.cmdline == crate::cli::default_cmdline(true)
            {
                ""
            } else {
                &cfg.cmdline
            };
            boot::multiboot::write_boot_info(
                &mem,
                mem_size,
                &kernel_path,
                cmdline,
                cfg.initrd.as_ref().map(|p| p.to_string_lossy()).as_deref(),
                loaded.kernel_end,
            )?;
        }
    }
    boot::regs::write_gdt(&mem)?;
    boot::regs::write_page_tables(&mem)?;

    // vCPUs.
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let mut vcpus: Vec<VcpuFd> = Vec::new();
    for id in 0..nr_vcpus {
        let vcpu = vm
            .create_vcpu(id as u64)
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let tsc_khz = vcpu.get_tsc_khz().ok();
        let cpuid = build_cpuid(
            &supported,
            template,
            VcpuTopology {
                apic_id: id,
                num_cpus: nr_vcpus,
                tsc_khz,
            },
        );
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
        boot::regs::setup_msrs(&vcpu, id)?;
        boot::regs::setup_fpu(&vcpu, id)?;
        // The local APIC is in KVM in both modes.
        boot::regs::setup_lint(&vcpu, id)?;
        if id == 0 {
            boot::regs::setup_regs(&vcpu, loaded.entry)?;
            boot::regs::setup_sregs(&vcpu, loaded.entry)?;
        }
        vcpus.push(vcpu);
    }

    crate::kick::install_handler().map_err(|source| VmmError::Io {
        what: "registering the vCPU kick signal",
        source,
    })?;

    let pio = Arc::new(pio);
    let mmio = Arc::new(mmio);
    let mem = Arc::new(mem);
    let kicker = Arc::new(Kicker::new(nr_vcpus as usize));
    let extint: Option<Arc<dyn ExtIntSource>> =
        split.clone().map(|c| Arc::new(c) as Arc<dyn ExtIntSource>);
    let eoi: Option<Arc<dyn EoiSink>> = split.clone().map(|c| Arc::new(c) as Arc<dyn EoiSink>);
    if let Some(chip) = &split {
        chip.set_kicker(kicker.clone());
    }
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    for (id, fd) in vcpus.into_iter().enumerate() {
        let ctx = VcpuContext {
            id: id as u8,
            fd,
            pio: pio.clone(),
            mmio: mmio.clone(),
            mem: mem.clone(),
            shutdown: shutdown.clone(),
            kicker: kicker.clone(),
            extint: extint.clone(),
            eoi: eoi.clone(),
        };
        let t = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || vcpu::run_loop(ctx))
            .map_err(|source| VmmError::Io {
                what: "spawning a vCPU thread",
                source,
            })?;
        threads.push(t);
    }

    // The main thread serves console input until the VM stops.
    console::serve(serial, &shutdown);

    // Stop every vCPU: kick until each thread has left KVM_RUN.
    while !threads.iter().all(|t| t.is_finished()) {
        kicker.kick_all();
        std::thread::sleep(Duration::from_millis(2));
    }
    for t in threads {
        if t.join().is_err() {
            log::error!("a vCPU thread panicked");
        }
    }
    // Device threads are gone with the vCPUs; stop the resampler too (no thread left behind).
    if let Some(chip) = &kernel_chip {
        chip.shutdown();
    }
    let mut outcome = shutdown.outcome();
    virtio.stop();
    if cfg.irq_stats {
        eprint!("{}", stats.format_table());
        eprint!("{}", virtio.format_stats());
        if cfg.irqchip == IrqchipMode::Kernel {
            eprintln!("(--irqchip kernel: KVM delivers and EOIs in the kernel; irqvm sees only what it raised)");
        }
        if let Some(chip) = &split {
            eprintln!("routing table installs: {}", chip.route_installs());
            eprintln!("8259 pair, by ISA IRQ:");
            eprint!("{}", chip.pic_stats().format_table());
        }
    }
    if let Some(c) = test_counts {
        use std::sync::atomic::Ordering::Relaxed;
        let failed = c.failed.load(Relaxed);
        log::info!(
            "test device: {} passed, {failed} failed, {} skipped, {} xfailed; summary line {:?}",
            c.passed.load(Relaxed),
            c.skipped.load(Relaxed),
            c.xfailed.load(Relaxed),
            c.summary()
        );
        // A guest that reported a FAIL never ends with success, whatever status it wrote.
        if failed > 0 && outcome.exit_code() == 0 {
            outcome = Outcome::Failed(format!("{failed} test case(s) failed"));
        }
    }
    Ok(outcome)
}
