//! virtio-net on a real Linux guest (the default guest kernel has virtio-net built in),
//! backed by a tap in a network namespace the test makes and removes:
//!
//! * host side: netns `irqvm-test-<pid>-<n>`, tap `irqvmtap0` in it with 10.0.2.1/24; irqvm
//!   runs inside the namespace (the test thread enters it with setns, so irqvm and the
//!   `busybox nc` listeners it spawns inherit it);
//! * guest side: 10.0.2.2/24 on eth0, then (a) `ping` the host, (b) receive 512 KiB of
//!   pseudo-random data from the host's listener on port 5001 (receive path) and (c) send it
//!   back to the host's listener on port 5000 (transmit path). The guest's sha256 of what it
//!   received and the host's sha256 of what came back must both equal the host file's.
//!   (Only 512 KiB: on this PVM host the guest itself is slow. Measured on a quiet host: ping
//!   RTT ~40 ms and 4 MiB host->guest in ~52 s under irqvm; QEMU 7.2 microvm with a userspace
//!   virtio-net on the same tap: RTT ~30-37 ms, 1 MiB in ~26 s. The device turns each frame
//!   around in well under a millisecond, see `--log-level trace`.)
//!
//! It also checks the interrupt path: /proc/interrupts in the guest shows the per-queue
//! PCI-MSI vectors (`virtioN-input.0`, `virtioN-output.0`) for MSI-X, an IO-APIC fasteoi
//! line for INTx (`pci=nomsi`), or an IO-APIC edge line for virtio-mmio, and `--irq-stats`
//! prints the net device's counters.

mod common;

use std::fs::File;
use std::io::Read;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const TIMEOUT: Duration = Duration::from_secs(600);
const TAP: &str = "irqvmtap0";
const BULK_BYTES: usize = 512 << 10;

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace with a configured tap; the test thread is inside it until drop,
/// which also removes the tap and the namespace (on failure too).
struct NetNs {
    name: String,
    home: File,
}

impl NetNs {
    fn create(tag: u32) -> Result<Self, String> {
        if !Path::new("/dev/net/tun").exists() {
            return Err("no /dev/net/tun".into());
        }
        if Command::new("ip").arg("-V").output().is_err() {
            return Err("no `ip` command (iproute2)".into());
        }
        let home = File::open("/proc/thread-self/ns/net")
            .map_err(|e| format!("cannot open this thread's netns: {e}"))?;
        let name = format!("irqvm-test-{}-{tag}", std::process::id());
        sh(&["ip", "netns", "add", &name]).map_err(|e| format!("cannot make a netns: {e}"))?;
        let ns = Self { name, home };
        let n = ns.name.as_str();
        let setup = [
            vec!["ip", "netns", "exec", n, "ip", "link", "set", "lo", "up"],
            vec![
                "ip", "netns", "exec", n, "ip", "tuntap", "add", "dev", TAP, "mode", "tap",
            ],
            vec![
                "ip",
                "netns",
                "exec",
                n,
                "ip",
                "addr",
                "add",
                "10.0.2.1/24",
                "dev",
                TAP,
            ],
            vec!["ip", "netns", "exec", n, "ip", "link", "set", TAP, "up"],
        ];
        for cmd in &setup {
            sh(cmd)?;
        }
        let f = File::open(format!("/var/run/netns/{n}")).map_err(|e| e.to_string())?;
        // SAFETY: setns on an fd we own; it only changes this thread's network namespace.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "setns into {n}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(ns)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = sh(&["ip", "link", "del", TAP]);
        // SAFETY: back to the namespace this thread started in.
        unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

/// Children killed on drop (listeners left waiting when the guest failed).
struct Reap(Vec<Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so a failure is reproducible.
fn payload(path: &Path) {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut data = Vec::with_capacity(BULK_BYTES);
    while data.len() < BULK_BYTES {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        data.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    std::fs::write(path, data).unwrap();
}

fn sha256_of_file(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// The hash `sha256sum` printed for `file` in the guest log.
fn guest_sha(stdout: &str, file: &str) -> Option<String> {
    stdout.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        let (h, f) = (w.next()?, w.next()?);
        (f == file && h.len() == 64).then(|| h.to_string())
    })
}

/// How the guest's NIC interrupts, and what /proc/interrupts must show for it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum IrqPath {
    /// PCI, MSI-X: per-queue PCI-MSI vectors.
    Msix,
    /// PCI with `pci=nomsi`: the slot's INTA# on an IO-APIC fasteoi line.
    Intx,
    /// virtio-mmio: an IO-APIC edge line.
    Mmio,
}

fn net_run(test: &str, irqchip: &str, path: IrqPath, tag: u32) {
    let transport = if path == IrqPath::Mmio { "mmio" } else { "pci" };
    let extra = if path == IrqPath::Intx {
        "pci=nomsi"
    } else {
        ""
    };
    require_kvm();
    let kernel = artifact("linux/current/vmlinux");
    let initrd = artifact("initramfs.cpio");
    if Command::new("busybox")
        .arg("nc")
        .arg("--help")
        .output()
        .is_err()
    {
        skip(test, "no busybox on the host for the nc listeners");
        return;
    }
    let ns = match NetNs::create(tag) {
        Ok(ns) => ns,
        Err(why) => {
            skip(test, &why);
            return;
        }
    };
    let dir = std::env::temp_dir().join(format!("irqvm-net-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let to_guest: PathBuf = dir.join("to-guest.bin");
    payload(&to_guest);
    let want_rx = sha256_of_file(&to_guest);

    // Port 5000: receives what the guest sends and hashes it. Its stdin stays open (held in
    // `tx_stdin`) so busybox nc does not half-close the connection early.
    let mut tx_nc = Command::new("busybox")
        .args(["nc", "-l", "-p", "5000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let tx_stdin = tx_nc.stdin.take();
    let tx_out = tx_nc.stdout.take().unwrap();
    let mut tx_sha = Command::new("sha256sum")
        .stdin(Stdio::from(tx_out))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut tx_sha_out = tx_sha.stdout.take().unwrap();
    // Port 5001: sends the payload to the guest.
    let rx_nc = Command::new("busybox")
        .args(["nc", "-l", "-p", "5001"])
        .stdin(File::open(&to_guest).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _reap = Reap(vec![tx_nc, rx_nc, tx_sha]);

    // No double quotes, single quotes or pipes (the guest /init's parser). The guest's nc
    // for port 5001 keeps the console as stdin, which never ends, for the same reason.
    let script = "ip link set lo up; ip addr add 10.0.2.2/24 dev eth0; ip link set eth0 up; \
         ping -c 3 -W 10 10.0.2.1; echo IRQVM-PING-EXIT $?; \
         nc 10.0.2.1 5001 > /tmp/rx; echo IRQVM-RX-EXIT $?; sha256sum /tmp/rx; \
         nc 10.0.2.1 5000 < /tmp/rx; echo IRQVM-TX-EXIT $?; \
         echo IRQVM-INTERRUPTS; cat /proc/interrupts";
    let cmdline = format!(
        "{} {extra} irqvm.serial_lines=0 \"irqvm.init=script:{script}\"",
        default_cmdline()
    );
    let r = run_irqvm(
        &[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--memory",
            "256",
            "--irqchip",
            irqchip,
            "--virtio-transport",
            transport,
            "--irq-stats",
            "--net",
            &format!("tap={TAP},mac=52:54:00:aa:bb:01"),
            "--cmdline",
            &cmdline,
        ],
        TIMEOUT,
    );
    println!(
        "{test}: irqvm exited {:?} after {:.1} s",
        r.status,
        r.elapsed.as_secs_f64()
    );
    if r.status == Some(3) && host_is_pvm() {
        skip(
            test,
            "host KVM (PVM) could not run the guest (internal error)",
        );
        return;
    }
    assert!(!r.timed_out, "{}", r.dump());
    assert_eq!(r.status, Some(0), "{}", r.dump());
    assert!(
        r.stdout.contains("IRQVM-PING-EXIT 0"),
        "the guest could not ping the host:\n{}",
        r.dump()
    );

    // Receive: the guest's hash of what it got from port 5001 equals the host file's.
    assert_eq!(
        guest_sha(&r.stdout, "/tmp/rx").as_deref(),
        Some(want_rx.as_str()),
        "host->guest bulk transfer differs:\n{}",
        r.dump()
    );
    // Transmit: what came back on port 5000 hashes the same. The guest's nc exited 0, so
    // the listener has seen the end of the stream and its hash is ready.
    assert!(
        r.stdout.contains("IRQVM-TX-EXIT 0"),
        "the guest could not send the data back:\n{}",
        r.dump()
    );
    drop(tx_stdin);
    let mut out = String::new();
    tx_sha_out.read_to_string(&mut out).unwrap();
    let host_tx = out.split_whitespace().next().unwrap_or("").to_string();
    assert_eq!(
        host_tx,
        want_rx,
        "guest->host bulk transfer (the data sent back) differs:\n{}",
        r.dump()
    );

    let irqs = proc_interrupts_after(&r.stdout, "IRQVM-INTERRUPTS");
    if path == IrqPath::Msix {
        for q in ["input.0", "output.0"] {
            let row = irqs
                .iter()
                .find(|l| l.contains("PCI-MSI") && l.contains(q))
                .unwrap_or_else(|| {
                    panic!("no PCI-MSI virtio-net {q} vector in /proc/interrupts:\n{irqs:#?}")
                });
            let count: u64 = row
                .split_whitespace()
                .skip(1)
                .take_while(|w| w.parse::<u64>().is_ok())
                .map(|w| w.parse::<u64>().unwrap_or(0))
                .sum();
            assert!(count > 0, "virtio-net {q} vector never fired: {row}");
        }
    } else {
        let want = if path == IrqPath::Intx {
            "fasteoi"
        } else {
            "edge"
        };
        assert!(
            irqs.iter()
                .any(|l| l.contains("IO-APIC") && l.contains(want) && l.contains("virtio0")),
            "no IO-APIC {want} line for the NIC:\n{irqs:#?}"
        );
    }
    let stats = r
        .stderr
        .lines()
        .find(|l| l.starts_with("virtio-net0 ("))
        .unwrap_or_else(|| panic!("no virtio-net0 line in --irq-stats:\n{}", r.stderr));
    println!("{test}: {stats}");
    assert!(stats.contains(&format!("tap {TAP}")), "{stats}");
    assert!(!stats.contains("completions 0,"), "{stats}");
    drop(ns);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The lines of /proc/interrupts printed after `marker` (the guest's last command).
fn proc_interrupts_after(stdout: &str, marker: &str) -> Vec<String> {
    // The marker also appears in the kernel's echo of its command line: take the last one.
    let Some(i) = stdout.rfind(&format!("\n{marker}")) else {
        return Vec::new();
    };
    stdout[i + 1..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("IRQVM-INIT:"))
        .map(str::to_string)
        .collect()
}

#[test]
fn ping_and_bulk_both_ways_over_pci_msix_kernel_irqchip() {
    net_run("virtio_net_pci_msix_kernel", "kernel", IrqPath::Msix, 1);
}

#[test]
fn ping_and_bulk_both_ways_over_pci_msix_split_irqchip() {
    net_run("virtio_net_pci_msix_split", "split", IrqPath::Msix, 2);
}

#[test]
fn ping_and_bulk_both_ways_over_pci_intx_split_irqchip() {
    net_run("virtio_net_pci_intx_split", "split", IrqPath::Intx, 3);
}

#[test]
fn ping_and_bulk_both_ways_over_mmio_kernel_irqchip() {
    net_run("virtio_net_mmio_kernel", "kernel", IrqPath::Mmio, 4);
}
