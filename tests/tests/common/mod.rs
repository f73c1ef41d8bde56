//! Shared helpers for the integration tests: find (or build) the `irqvm` binary, find the
//! guest artifacts `resources/prepare-guests.sh` made, run a guest with a timeout, and say
//! `skipped: <reason>` explicitly when a test cannot run on this host.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `irqvm` binary of the same build profile as this test, built once per test process
/// (before any test's clock starts).
pub fn irqvm_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(build_irqvm).clone()
}

fn build_irqvm() -> PathBuf {
    if let Ok(p) = std::env::var("IRQVM_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join("irqvm");
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-q", "-p", "vmm", "--bin", "irqvm"]);
    if release {
        cmd.arg("--release");
    }
    // Always ask cargo: a no-op when up to date, and never a stale binary.
    let st = cmd
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .status()
        .expect("run cargo build");
    assert!(st.success(), "building irqvm failed");
    assert!(bin.exists(), "irqvm not found at {}", bin.display());
    bin
}

/// Where prepare-guests.sh caches guest artifacts.
pub fn cache_dir() -> PathBuf {
    if let Ok(p) = std::env::var("IRQVM_CACHE") {
        return PathBuf::from(p);
    }
    let base = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or("/root".into())).join(".cache")
        });
    base.join("irqvm")
}

/// A guest artifact, or a clear failure: the artifacts are part of the test set-up
/// (the README's test command runs prepare-guests.sh first), so a missing one is an error,
/// not a skip.
pub fn artifact(rel: &str) -> PathBuf {
    let p = cache_dir().join(rel);
    assert!(
        p.exists(),
        "guest artifact {} is missing: run resources/prepare-guests.sh (the README's test command does)",
        p.display()
    );
    p
}

/// Say a test is skipped, in the form CI and people grep for.
pub fn skip(test: &str, reason: &str) {
    println!("skipped: {test}: {reason}");
}

/// What one irqvm run produced.
#[derive(Debug)]
pub struct Run {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl Run {
    pub fn dump(&self) -> String {
        format!(
            "status {:?} timed_out {} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.timed_out,
            self.elapsed,
            tail(&self.stdout, 6000),
            tail(&self.stderr, 4000)
        )
    }
}

fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        s
    } else {
        let mut i = s.len() - n;
        while !s.is_char_boundary(i) {
            i += 1;
        }
        &s[i..]
    }
}

/// Run irqvm with `args`, stdin closed, killing it after `timeout`.
pub fn run_irqvm(args: &[&str], timeout: Duration) -> Run {
    let bin = irqvm_bin();
    let start = Instant::now();
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn irqvm");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait irqvm") {
            break st.code();
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait().ok().and_then(|s| s.code());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
        timed_out,
        elapsed: start.elapsed(),
    }
}

/// A tiny 64-bit guest (assembled at test time with the system assembler) that writes
/// `msg` to COM1 and ends through isa-debug-exit with `code`.
pub fn tiny_guest(name: &str, msg: &str, code: u8) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("irqvm-tiny-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("g.S");
    std::fs::write(
        &src,
        format!(
            ".code64\n.globl _start\n_start:\n mov $0x3f8, %dx\n lea msg(%rip), %rsi\n1: lodsb\n test %al, %al\n jz 2f\n out %al, %dx\n jmp 1b\n2: mov $0xf4, %dx\n mov ${code}, %eax\n out %eax, %dx\n hlt\nmsg: .asciz \"{msg}\\n\"\n"
        ),
    )
    .unwrap();
    let obj = dir.join("g.o");
    let elf = dir.join("g.elf");
    assert!(Command::new("as")
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .status()
        .unwrap()
        .success());
    assert!(Command::new("ld")
        .args([
            "-nostdlib",
            "-static",
            "-Ttext=0x200000",
            "-e",
            "_start",
            "-o"
        ])
        .arg(&elf)
        .arg(&obj)
        .status()
        .unwrap()
        .success());
    elf
}

/// Fail loudly when /dev/kvm is missing: integration tests never pass by skipping that.
pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: the integration tests need KVM"
    );
}

/// Whether the host's /dev/kvm is KVM's PVM backend (see shared/HOST-KVM.md).
pub fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// One row of /proc/interrupts: `IRQ: counts... chip hwirq-type name`.
#[derive(Debug, Clone)]
pub struct IrqRow {
    pub irq: String,
    pub counts: Vec<u64>,
    pub rest: String,
}

impl IrqRow {
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// The /proc/interrupts table printed between `IRQVM-INIT: <marker> begin` and `end`.
pub fn proc_interrupts(log: &str, marker: &str) -> Vec<IrqRow> {
    let begin = format!("IRQVM-INIT: {marker} begin");
    let end = format!("IRQVM-INIT: {marker} end");
    let Some(start) = log.find(&begin) else {
        return Vec::new();
    };
    let body = &log[start + begin.len()..];
    let body = &body[..body.find(&end).unwrap_or(body.len())];
    let mut ncpus = 0;
    let mut rows = Vec::new();
    for line in body.lines() {
        let t = line.trim();
        if t.starts_with("CPU") {
            ncpus = t.split_whitespace().count();
            continue;
        }
        let Some((irq, rest)) = t.split_once(':') else {
            continue;
        };
        let mut words = rest.split_whitespace().peekable();
        let mut counts = Vec::new();
        while counts.len() < ncpus.max(1) {
            match words.peek().and_then(|w| w.parse::<u64>().ok()) {
                Some(n) => {
                    counts.push(n);
                    words.next();
                }
                None => break,
            }
        }
        rows.push(IrqRow {
            irq: irq.trim().to_string(),
            counts,
            rest: words.collect::<Vec<_>>().join(" "),
        });
    }
    rows
}

/// The default guest cmdline from resources/default-cmdline.txt.
pub fn default_cmdline() -> String {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../resources/default-cmdline.txt"
    );
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "console=ttyS0 reboot=acpi panic=-1".to_string())
}

/// Per-GSI counters from `irqvm --irq-stats` (stderr): gsi -> (raised, delivered). Reads
/// the first table only (the GSI table; split mode prints the 8259's table after it).
pub fn irq_stats(stderr: &str) -> std::collections::BTreeMap<u32, (u64, u64)> {
    let mut m = std::collections::BTreeMap::new();
    let mut in_table = false;
    for line in stderr.lines() {
        let t = line.trim();
        if t.starts_with("GSI") && t.contains("RAISED") {
            if in_table {
                break; // a second table (the 8259's, by ISA IRQ) follows: not GSIs
            }
            in_table = true;
            continue;
        }
        if !in_table {
            continue;
        }
        let row = t
            .split_once(':')
            .and_then(|(gsi, rest)| Some((gsi.trim().parse::<u32>().ok()?, rest)));
        let Some((g, rest)) = row else {
            break; // the first line after the GSI rows ends the table
        };
        let nums: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        if let (Some(r), Some(d)) = (nums.first(), nums.get(1)) {
            m.insert(g, (*r, *d));
        }
    }
    m
}

/// Run irqvm with stdin piped: each time `expect` appears on stdout, send the paired input.
pub fn run_irqvm_interactive(args: &[&str], script: &[(&str, &str)], timeout: Duration) -> Run {
    use std::io::{BufRead, BufReader, Write};
    let bin = irqvm_bin();
    let start = Instant::now();
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn irqvm");
    let mut stdin = child.stdin.take().expect("stdin");
    let out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let t_out = std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut line = Vec::new();
        while r.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
            line.clear();
        }
    });
    let mut stdout = String::new();
    let mut step = 0;
    let mut timed_out = false;
    let status = loop {
        while let Ok(l) = rx.try_recv() {
            stdout.push_str(&l);
        }
        if let Some((expect, send)) = script.get(step) {
            if stdout.contains(expect) {
                let _ = stdin.write_all(send.as_bytes());
                let _ = stdin.flush();
                step += 1;
            }
        }
        if let Some(st) = child.try_wait().expect("wait irqvm") {
            break st.code();
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait().ok().and_then(|s| s.code());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = t_out.join();
    while let Ok(l) = rx.try_recv() {
        stdout.push_str(&l);
    }
    Run {
        status,
        stdout,
        stderr: t_err.join().unwrap_or_default(),
        timed_out,
        elapsed: start.elapsed(),
    }
}
