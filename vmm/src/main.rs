//! `irqvm`: the command-line entry point.

mod bench;
mod cli;
mod console;
mod host;
mod kick;
mod pci_setup;
mod testkernel;
mod vcpu;
mod vm;

use std::process::ExitCode;

use clap::Parser as _;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line naming the problem, exit status 1, like every other irqvm error.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("irqvm: error: {first} (see irqvm --help)");
            return ExitCode::from(1);
        }
    };
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .format_timestamp_millis()
        .init();
    match cli.command {
        Command::Selftest(a) => finish(testkernel::run_embedded(
            a.irqchip,
            a.vcpus,
            "irqvm.mode=test",
            a.inject_fault,
        )),
        Command::Bench(a) => finish(bench::run(&a.output, !a.no_qemu)),
        Command::Run(args) => {
            let cfg = vm::VmConfig {
                kernel: args.kernel,
                initrd: args.initrd,
                cmdline: args
                    .cmdline
                    .unwrap_or_else(|| cli::default_cmdline(host::is_pvm())),
                mem_mib: args.memory,
                vcpus: args.vcpus,
                irqchip: args.irqchip,
                serial: args.serial,
                cpu_template: args.cpu_template,
                testdev: args.testdev,
                kvm_device: args.kvm_device,
                irq_stats: args.irq_stats,
                disks: args.disk,
                nets: args.net,
                virtio_transport: args.virtio_transport,
                inject_fault: args.inject_fault,
            };
            finish(vm::run(cfg))
        }
    }
}

/// Print one line for anything but a clean stop, and turn the outcome into an exit status.
fn finish(r: Result<vm::Outcome, vm::VmmError>) -> ExitCode {
    match r {
        Ok(outcome) => {
            if let Some(m) = outcome.message() {
                eprintln!("irqvm: {m}");
            }
            ExitCode::from(outcome.exit_code().clamp(0, 255) as u8)
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                let t = s.to_string();
                if !msg.contains(&t) {
                    msg.push_str(": ");
                    msg.push_str(&t);
                }
                src = s.source();
            }
            eprintln!("irqvm: error: {msg}");
            ExitCode::from(1)
        }
    }
}
