//! `irqvm bench`: the delivery-cost lab. Boots the embedded test kernel in bench mode under
//! irqvm (`--irqchip kernel` and `split`) and, when `qemu-system-x86_64` is installed, under
//! QEMU (`-M microvm`, `kernel-irqchip=on` and `split`) in the same run, then writes
//! `results.jsonl`, `table.md` (medians, p99 and irqvm/QEMU ratios) and `chart.svg`.
//!
//! Each path's numbers come from the guest (TSC cycles converted with the TSC frequency):
//! min/median/p99 over >= 10,000 samples, see guest/testkernel/src/bench.rs; the virtio-blk
//! paths (guest/testkernel/src/vblk_bench.rs, 2,000-5,000 samples, plus interrupts per
//! request) run on the same scratch disks `irqvm selftest` attaches
//! ([`testkernel::ScratchDisks`]); QEMU runs without disks, so its columns show n/a there.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cli::{CpuTemplateArg, IrqchipMode, SerialOut};
use crate::testkernel;
use crate::vm::{self, Outcome, VmConfig, VmmError};

/// One measured path in one configuration.
#[derive(Debug, Clone)]
pub struct Sample {
    pub config: String,
    pub path: String,
    pub n: u64,
    pub min_ns: f64,
    pub median_ns: f64,
    pub p99_ns: f64,
    /// Interrupts per request (virtio-blk paths only).
    pub irqs_per_request: Option<f64>,
}

/// Parse the guest's JSON lines (anything else on the console is ignored).
pub fn parse_log(config: &str, log: &str) -> Vec<Sample> {
    log.lines()
        // The serial path transmits NUL bytes, which end up in front of the next line.
        .map(|l| l.trim_start_matches('\0'))
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            Some(Sample {
                config: config.to_string(),
                path: v.get("path")?.as_str()?.to_string(),
                n: v.get("n")?.as_u64()?,
                min_ns: v.get("min_ns")?.as_f64()?,
                median_ns: v.get("median_ns")?.as_f64()?,
                p99_ns: v.get("p99_ns")?.as_f64()?,
                irqs_per_request: v.get("irqs_per_request").and_then(|x| x.as_f64()),
            })
        })
        .collect()
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}

fn run_irqvm(mode: IrqchipMode, kernel: &Path, log: &Path) -> Result<Outcome, VmmError> {
    let _ = std::fs::remove_file(log);
    // The same scratch disks as `irqvm selftest`, for the virtio-blk paths.
    let disks = testkernel::ScratchDisks::create()?;
    vm::run(VmConfig {
        kernel: kernel.to_path_buf(),
        initrd: None,
        cmdline: "irqvm.mode=bench".into(),
        mem_mib: 64,
        vcpus: 1,
        irqchip: mode,
        serial: SerialOut::File(log.to_path_buf()),
        cpu_template: CpuTemplateArg::Auto,
        testdev: true,
        kvm_device: PathBuf::from("/dev/kvm"),
        irq_stats: false,
        inject_fault: None,
        disks: disks.specs.clone(),
        nets: Vec::new(),
        virtio_transport: Default::default(),
    })
}

fn qemu_available() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// QEMU's CPU model for this comparison: the host CPU minus what KVM's PVM backend cannot
/// emulate (the same masks as irqvm's pvm-safe template), no PV send-IPI/sched-yield
/// hypercalls, and no ARCH_CAPABILITIES MSR (QEMU 7.2 aborts setting MSR 0x10a on PVM).
/// Harmless on VMX/SVM hosts.
const QEMU_CPU: &str = "host,-cx16,-popcnt,-bmi1,-bmi2,-movbe,-rdrand,-rdseed,-fsgsbase,-smap,-smep,-umip,-pcid,-invpcid,-xsave,kvm-pv-ipi=off,kvm-pv-sched-yield=off,-arch-capabilities";

/// The same kernel under QEMU microvm; QEMU's pc-testdev gives the line-control ports and
/// isa-debug-exit ends the run.
fn run_qemu(kirq: &str, kernel: &Path, log: &Path) -> Result<(), VmmError> {
    let _ = std::fs::remove_file(log);
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,pit=on,pic=on,rtc=on",
            "-accel",
            &format!("kvm,kernel-irqchip={kirq}"),
            "-m",
            "64",
            "-smp",
            "1",
            "-cpu",
            QEMU_CPU,
            "-kernel",
        ])
        .arg(kernel)
        .args([
            "-append",
            "irqvm.mode=bench irqvm.ncpus=1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
        ])
        .arg(format!("file:{}", log.display()))
        .args([
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
            "-device",
            "pc-testdev",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(log.with_extension("stderr"))
                .map_err(io("creating the QEMU stderr log"))?,
        ))
        .spawn()
        .map_err(io("starting qemu-system-x86_64"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        if child.try_wait().map_err(io("waiting for QEMU"))?.is_some() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Markdown table: one row per path, one column per configuration (median, p99 in ns, and
/// interrupts per request for the virtio-blk paths; n/a where the configuration has no
/// such path, e.g. QEMU without a disk), then irqvm/QEMU ratios of the medians for the same
/// irqchip mode.
pub fn table(samples: &[Sample], configs: &[String]) -> String {
    let mut by: BTreeMap<&str, BTreeMap<&str, &Sample>> = BTreeMap::new();
    for s in samples {
        by.entry(&s.path).or_default().insert(&s.config, s);
    }
    let pairs = [
        ("irqvm kernel", "qemu kernel-irqchip=on"),
        ("irqvm split", "qemu kernel-irqchip=split"),
    ];
    let mut t = String::from("| path |");
    for c in configs {
        let _ = write!(t, " {c} median / p99 (ns) |");
    }
    for (a, b) in pairs {
        let _ = write!(t, " {a} ÷ {b} |");
    }
    t.push('\n');
    t.push_str(&"|---".repeat(1 + configs.len() + pairs.len()));
    t.push_str("|\n");
    for (path, m) in &by {
        let _ = write!(t, "| {path} |");
        for c in configs {
            match m.get(c.as_str()) {
                Some(s) => {
                    let _ = write!(t, " {:.0} / {:.0}", s.median_ns, s.p99_ns);
                    if let Some(ipr) = s.irqs_per_request {
                        let _ = write!(t, " ({ipr:.3} irq/req)");
                    }
                    t.push_str(" |");
                }
                // Not measured in this configuration (e.g. no virtio disk under QEMU).
                None => t.push_str(" n/a |"),
            }
        }
        for (a, b) in pairs {
            match (m.get(a), m.get(b)) {
                (Some(x), Some(y)) if y.median_ns > 0.0 => {
                    let _ = write!(t, " {:.2} |", x.median_ns / y.median_ns);
                }
                _ => t.push_str(" — |"),
            }
        }
        t.push('\n');
    }
    t
}

/// A grouped horizontal bar chart of the medians (log scale), as a standalone SVG.
pub fn chart(samples: &[Sample], configs: &[String]) -> String {
    let mut paths: Vec<&str> = samples.iter().map(|s| s.path.as_str()).collect();
    paths.sort();
    paths.dedup();
    let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];
    let bar = 14.0;
    let group = bar * configs.len() as f64 + 12.0;
    let left = 150.0;
    let width = 620.0;
    let height = 40.0 + group * paths.len() as f64 + 20.0 * configs.len() as f64;
    let max = samples.iter().map(|s| s.median_ns).fold(1.0, f64::max);
    let scale = |ns: f64| (ns.max(1.0).log10() / max.log10()) * width;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n<text x=\"10\" y=\"16\" font-size=\"13\">Interrupt delivery cost, median ns (log scale)</text>\n",
        left + width + 90.0
    );
    for (i, p) in paths.iter().enumerate() {
        let y0 = 30.0 + group * i as f64;
        let _ = writeln!(svg, "<text x=\"6\" y=\"{}\">{p}</text>", y0 + group / 2.0);
        for (j, c) in configs.iter().enumerate() {
            if let Some(s) = samples.iter().find(|s| s.path == *p && &s.config == c) {
                let y = y0 + bar * j as f64;
                let w = scale(s.median_ns);
                let _ = writeln!(
                    svg,
                    "<rect x=\"{left}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\">{:.0}</text>",
                    bar - 2.0,
                    colors[j % colors.len()],
                    left + w + 4.0,
                    y + bar - 4.0,
                    s.median_ns
                );
            }
        }
    }
    let ly = 30.0 + group * paths.len() as f64;
    for (j, c) in configs.iter().enumerate() {
        let y = ly + 18.0 * j as f64;
        let _ = writeln!(
            svg,
            "<rect x=\"{left}\" y=\"{y}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{c}</text>",
            colors[j % colors.len()],
            left + 18.0,
            y + 10.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Run the whole matrix and write the results to `out`.
pub fn run(out: &Path, with_qemu: bool) -> Result<Outcome, VmmError> {
    std::fs::create_dir_all(out).map_err(io("creating the --output directory"))?;
    let kernel = out.join("testkernel.elf");
    testkernel::write_to(&kernel).map_err(io("writing the test kernel"))?;
    let mut samples = Vec::new();
    let mut configs = Vec::new();
    for (mode, name) in [
        (IrqchipMode::Kernel, "irqvm kernel"),
        (IrqchipMode::Split, "irqvm split"),
    ] {
        eprintln!("irqvm bench: {name} ...");
        let log = out.join(format!("{}.log", name.replace(' ', "-")));
        let outcome = run_irqvm(mode, &kernel, &log)?;
        if outcome.exit_code() != 0 {
            eprintln!("irqvm bench: {name} ended with {outcome:?}");
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        samples.extend(parse_log(name, &text));
        configs.push(name.to_string());
    }
    if with_qemu && qemu_available() {
        for kirq in ["on", "split"] {
            let name = format!("qemu kernel-irqchip={kirq}");
            eprintln!("irqvm bench: {name} ...");
            let log = out.join(format!("qemu-{kirq}.log"));
            run_qemu(kirq, &kernel, &log)?;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            samples.extend(parse_log(&name, &text));
            configs.push(name);
        }
    } else if with_qemu {
        eprintln!("irqvm bench: qemu-system-x86_64 not found; irqvm columns only (apt-get install qemu-system-x86)");
    }
    let mut jsonl = String::new();
    for s in &samples {
        let _ = writeln!(
            jsonl,
            "{{\"config\":\"{}\",\"path\":\"{}\",\"n\":{},\"min_ns\":{},\"median_ns\":{},\"p99_ns\":{}{}}}",
            s.config,
            s.path,
            s.n,
            s.min_ns,
            s.median_ns,
            s.p99_ns,
            s.irqs_per_request
                .map(|x| format!(",\"irqs_per_request\":{x}"))
                .unwrap_or_default()
        );
    }
    std::fs::write(out.join("results.jsonl"), jsonl).map_err(io("writing results.jsonl"))?;
    let t = table(&samples, &configs);
    std::fs::write(out.join("table.md"), &t).map_err(io("writing table.md"))?;
    std::fs::write(out.join("chart.svg"), chart(&samples, &configs))
        .map_err(io("writing chart.svg"))?;
    println!("{t}");
    eprintln!(
        "irqvm bench: wrote {}/{{results.jsonl,table.md,chart.svg}}",
        out.display()
    );
    if samples.is_empty() {
        return Ok(Outcome::Failed(
            "no measurements came back from the guest".into(),
        ));
    }
    Ok(Outcome::PowerOff)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "INFO bench\n{\"path\":\"ioapic_edge\",\"n\":10000,\"min_ns\":40,\"median_ns\":50,\"p99_ns\":90}\nnoise {\n";

    #[test]
    fn parse_reads_json_lines_and_ignores_console_noise() {
        let s = parse_log("irqvm split", LOG);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].path.as_str(), s[0].median_ns), ("ioapic_edge", 50.0));
    }

    #[test]
    fn parse_skips_nul_bytes_the_serial_path_left_before_a_line() {
        let log = format!("\0\0\0{}", LOG.lines().nth(1).unwrap());
        assert_eq!(parse_log("irqvm kernel", &log).len(), 1);
    }

    #[test]
    fn table_has_ratio_against_qemu_for_the_same_mode() {
        let mut s = parse_log("irqvm split", LOG);
        s.extend(parse_log(
            "qemu kernel-irqchip=split",
            &LOG.replace("\"median_ns\":50", "\"median_ns\":100"),
        ));
        let configs = vec![
            "irqvm split".to_string(),
            "qemu kernel-irqchip=split".to_string(),
        ];
        let t = table(&s, &configs);
        assert!(
            t.contains("| ioapic_edge | 50 / 90 | 100 / 90 | — | 0.50 |"),
            "{t}"
        );
    }

    const VBLK: &str = "{\"path\":\"vblk_msix_batch4_event_idx\",\"n\":2000,\"min_ns\":1,\"median_ns\":400,\"p99_ns\":900,\"requests\":8000,\"interrupts\":2000,\"irqs_per_request\":0.250}\n";

    #[test]
    fn parse_reads_interrupts_per_request_of_virtio_paths() {
        let s = parse_log("irqvm kernel", VBLK);
        assert_eq!(s[0].irqs_per_request, Some(0.25));
        assert_eq!(parse_log("irqvm kernel", LOG)[0].irqs_per_request, None);
    }

    #[test]
    fn table_shows_irqs_per_request_and_na_where_a_config_lacks_the_path() {
        let s = parse_log("irqvm kernel", VBLK);
        let configs = vec![
            "irqvm kernel".to_string(),
            "qemu kernel-irqchip=on".to_string(),
        ];
        let t = table(&s, &configs);
        assert!(
            t.contains("| vblk_msix_batch4_event_idx | 400 / 900 (0.250 irq/req) | n/a |"),
            "{t}"
        );
    }

    #[test]
    fn chart_is_svg_with_one_bar_per_sample() {
        let s = parse_log("irqvm split", LOG);
        let c = chart(&s, &["irqvm split".to_string()]);
        assert!(c.starts_with("<svg") && c.trim_end().ends_with("</svg>"));
        assert_eq!(c.matches("<rect").count(), 2); // bar + legend
    }
}
