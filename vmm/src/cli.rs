//! The command line: `irqvm run`, later `irqvm selftest` and `irqvm bench`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// irqvm: a KVM microVM built around its virtual interrupt controllers.
///
/// Boot a Linux kernel (bzImage or ELF vmlinux, with the PVH entry when present):
///
///   irqvm run --kernel bzImage --initrd initramfs.cpio
///
/// The guest's serial console (COM1, ttyS0) is your terminal. irqvm exits when the guest
/// powers off.
#[derive(Parser, Debug)]
#[command(name = "irqvm", version, about, long_about, propagate_version = true)]
pub struct Cli {
    /// Log level for irqvm's own messages (on stderr): error, warn, info, debug, trace.
    #[arg(long, global = true, default_value = "warn", value_name = "LEVEL")]
    pub log_level: log::LevelFilter,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Boot a guest kernel and run it until it powers off.
    ///
    /// Exit status: 0 when the guest powers off (ACPI S5); 1 when irqvm fails (bad arguments,
    /// KVM errors); 2 when the guest resets or triple-faults; 3 when KVM cannot run a guest
    /// instruction (internal error); a test kernel's own status via the test device, and
    /// (value << 1) | 1 for a write of value to the isa-debug-exit port 0xf4.
    Run(RunArgs),

    /// Run the interrupt-controller self test: boot the embedded guest test kernel with the
    /// test device and report every case (PASS/FAIL/SKIP/XFAIL). Exit status 0 when no case
    /// failed.
    Selftest(SelftestArgs),

    /// Measure interrupt delivery cost with the embedded test kernel (JSON lines per path:
    /// min/median/p99 ns over >= 10,000 samples).
    Bench(BenchArgs),
}

/// A fault irqvm can inject into its own userspace controllers, to show the self test
/// catches a broken controller (only with --irqchip split).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InjectFault {
    /// The IOAPIC never clears remote IRR on EOI.
    ForgetRemoteIrr,
}

#[derive(Args, Debug)]
pub struct SelftestArgs {
    /// Interrupt controller emulation to test.
    #[arg(long, value_enum, default_value_t = IrqchipMode::Split)]
    pub irqchip: IrqchipMode,

    /// Number of vCPUs (2 adds the cross-CPU cases).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub vcpus: u32,

    /// Break the controller on purpose (testing the tests).
    #[arg(long, value_enum, hide = true)]
    pub inject_fault: Option<InjectFault>,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Where to write results.jsonl, table.md, chart.svg and the guest logs.
    #[arg(long, default_value = "bench-results", value_name = "DIR")]
    pub output: PathBuf,

    /// Do not run the QEMU side-by-side columns.
    #[arg(long)]
    pub no_qemu: bool,
}

/// Which interrupt controller emulation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IrqchipMode {
    /// KVM's in-kernel PIC, IOAPIC and local APICs.
    Kernel,
    /// irqvm's userspace 8259A pair and IOAPIC (KVM split irqchip); local APICs in KVM.
    Split,
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialOut {
    Stdio,
    File(PathBuf),
    None,
}

fn parse_serial(s: &str) -> Result<SerialOut, String> {
    match s {
        "stdio" => Ok(SerialOut::Stdio),
        "none" => Ok(SerialOut::None),
        _ => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(SerialOut::File(PathBuf::from(p))),
            _ => Err(format!(
                "'{s}' is not a serial destination: use stdio, none or file:PATH"
            )),
        },
    }
}

/// CPUID template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CpuTemplateArg {
    /// pvm-safe on a PVM host, host otherwise.
    Auto,
    /// Everything KVM supports (minus KVM PV send-IPI).
    Host,
    /// Masks instructions KVM's PVM backend cannot emulate (see shared/HOST-KVM.md).
    PvmSafe,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Kernel image: bzImage, ELF64 vmlinux, or an ELF with a PVH entry note.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,

    /// Initial ramdisk (cpio), loaded at the top of low memory.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line. Default: a serial console on ttyS0 with ACPI reboot/poweroff,
    /// plus `noxsave clearcpuid=...` on PVM hosts (see the README).
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,

    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256, value_name = "MiB")]
    pub memory: u64,

    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub vcpus: u32,

    /// Interrupt controller emulation.
    #[arg(long, value_enum, default_value_t = IrqchipMode::Kernel)]
    pub irqchip: IrqchipMode,

    /// Serial console destination: stdio, file:PATH or none.
    #[arg(long, default_value = "stdio", value_parser = parse_serial, value_name = "DEST")]
    pub serial: SerialOut,

    /// Guest CPUID template.
    #[arg(long, value_enum, default_value_t = CpuTemplateArg::Auto)]
    pub cpu_template: CpuTemplateArg,

    /// Break the controller on purpose (testing the tests; --irqchip split only).
    #[arg(long, value_enum, hide = true)]
    pub inject_fault: Option<InjectFault>,

    /// Print host-side interrupt counters per GSI (raised, delivered, coalesced, EOIs,
    /// spurious, throttled) on stderr when the VM stops.
    #[arg(long)]
    pub irq_stats: bool,

    /// The KVM device node.
    #[arg(long, default_value = "/dev/kvm", value_name = "PATH")]
    pub kvm_device: PathBuf,

    /// Attach the irqvm test device (port 0x2100, see docs/testdev.md) used by the guest
    /// test kernel.
    #[arg(long)]
    pub testdev: bool,

    /// A virtio-blk disk backed by a raw file (repeatable):
    /// path=FILE[,readonly=on][,event-idx=off][,irq-usecs=N][,irq-max-frames=M][,transport=pci|mmio]
    /// (event-idx=off: do not offer VIRTIO_RING_F_EVENT_IDX; transport defaults to
    /// --virtio-transport).
    #[arg(long, value_name = "OPTS", value_parser = crate::pci_setup::parse_disk)]
    pub disk: Vec<crate::pci_setup::DiskSpec>,

    /// A virtio-net NIC backed by a tap device (repeatable):
    /// tap=NAME[,mac=52:54:00:12:34:56][,irq-usecs=N][,irq-max-frames=M]. The tap is
    /// created if it does not exist (needs CAP_NET_ADMIN; it goes away when irqvm exits).
    #[arg(long, value_name = "OPTS", value_parser = crate::pci_setup::parse_net)]
    pub net: Vec<crate::pci_setup::NetSpec>,

    /// Transport for virtio devices without their own transport= option.
    #[arg(long, value_enum, default_value_t = crate::pci_setup::VirtioTransportArg::Pci)]
    pub virtio_transport: crate::pci_setup::VirtioTransportArg,
}

/// The default kernel command line: serial console, ACPI power control, no kernel-side
/// reboot on panic wait, and quiet legacy probes a microVM does not have.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=acpi panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd";

/// Added to the default command line on PVM hosts: there the guest reads the host's CPUID
/// directly (CPUID does not exit), so features KVM's PVM emulator cannot run must be hidden
/// by the guest kernel itself (shared/HOST-KVM.md; resources/default-cmdline.txt).
pub const PVM_CMDLINE_MASKS: &str = "noxsave clearcpuid=cx16,popcnt,bmi1,bmi2,movbe,rdrand,rdseed,fsgsbase,smap,smep,umip,pcid,invpcid,xsave";

/// The default command line for this host.
pub fn default_cmdline(pvm: bool) -> String {
    if pvm {
        format!("{DEFAULT_CMDLINE} {PVM_CMDLINE_MASKS}")
    } else {
        DEFAULT_CMDLINE.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_destinations_parse() {
        assert_eq!(parse_serial("stdio"), Ok(SerialOut::Stdio));
        assert_eq!(parse_serial("none"), Ok(SerialOut::None));
        assert_eq!(
            parse_serial("file:/tmp/x"),
            Ok(SerialOut::File(PathBuf::from("/tmp/x")))
        );
        assert!(parse_serial("file:").is_err());
        assert!(parse_serial("tcp:1").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
