//! Bad input on the command line: each is a one-line error naming the problem, exit status 1,
//! and never a panic or a backtrace.

mod common;

use std::time::Duration;

use common::*;

fn assert_one_line_error(args: &[&str], needle: &str) {
    let r = run_irqvm(args, Duration::from_secs(30));
    assert_eq!(r.status, Some(1), "{}", r.dump());
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "want exactly one line on stderr:\n{}",
        r.dump()
    );
    assert!(lines[0].starts_with("irqvm: error: "), "{}", r.dump());
    assert!(
        lines[0].contains(needle),
        "want {needle:?} in {:?}",
        lines[0]
    );
    assert!(!r.stderr.contains("panicked") && !r.stderr.contains("RUST_BACKTRACE"));
}

#[test]
fn missing_kernel_file_is_named() {
    assert_one_line_error(
        &["run", "--kernel", "/nonexistent/vmlinux"],
        "/nonexistent/vmlinux",
    );
}

#[test]
fn non_kernel_file_is_refused() {
    assert_one_line_error(&["run", "--kernel", "/etc/hostname"], "is not a kernel");
}

#[test]
fn zero_memory_is_refused() {
    let g = tiny_guest("mem0", "x", 0);
    assert_one_line_error(
        &["run", "--kernel", g.to_str().unwrap(), "--memory", "0"],
        "--memory 0",
    );
}

#[test]
fn more_memory_than_the_host_has_is_refused() {
    let g = tiny_guest("memhuge", "x", 0);
    assert_one_line_error(
        &[
            "run",
            "--kernel",
            g.to_str().unwrap(),
            "--memory",
            "100000000",
        ],
        "more than this host has",
    );
}

#[test]
fn unparseable_memory_size_is_one_line() {
    assert_one_line_error(
        &[
            "run",
            "--kernel",
            "/x",
            "--memory",
            "99999999999999999999999",
        ],
        "--memory",
    );
}

#[test]
fn zero_vcpus_is_refused() {
    let g = tiny_guest("vcpu0", "x", 0);
    assert_one_line_error(
        &["run", "--kernel", g.to_str().unwrap(), "--vcpus", "0"],
        "--vcpus 0",
    );
}

#[test]
fn more_vcpus_than_kvm_allows_is_refused() {
    require_kvm();
    let g = tiny_guest("vcpu9999", "x", 0);
    assert_one_line_error(
        &["run", "--kernel", g.to_str().unwrap(), "--vcpus", "9999"],
        "allows at most",
    );
}

#[test]
fn unusable_kvm_device_is_named() {
    let g = tiny_guest("nokvm", "x", 0);
    assert_one_line_error(
        &[
            "run",
            "--kernel",
            g.to_str().unwrap(),
            "--kvm-device",
            "/dev/null",
        ],
        "/dev/null",
    );
    assert_one_line_error(
        &[
            "run",
            "--kernel",
            g.to_str().unwrap(),
            "--kvm-device",
            "/nonexistent/kvm",
        ],
        "/nonexistent/kvm",
    );
}

#[test]
fn bad_serial_destination_is_refused() {
    assert_one_line_error(
        &["run", "--kernel", "/x", "--serial", "tcp:1"],
        "serial destination",
    );
}

#[test]
fn bad_disk_event_idx_value_is_refused() {
    assert_one_line_error(
        &[
            "run",
            "--kernel",
            "/x",
            "--disk",
            "path=/tmp/x.img,event-idx=maybe",
        ],
        "event-idx=maybe: use on or off",
    );
}

#[test]
fn tiny_guest_output_reaches_stdout_and_debug_exit_sets_status() {
    require_kvm();
    let g = tiny_guest("hello", "hello from a tiny guest", 3);
    let r = run_irqvm(
        &["run", "--kernel", g.to_str().unwrap(), "--memory", "32"],
        Duration::from_secs(30),
    );
    assert!(r.stdout.contains("hello from a tiny guest"), "{}", r.dump());
    assert_eq!(r.status, Some((3 << 1) | 1), "{}", r.dump());
}

#[test]
fn bad_net_option_is_refused() {
    assert_one_line_error(
        &["run", "--kernel", "/x", "--net", "tap=t0,speed=10g"],
        "unknown --net option 'speed'",
    );
    assert_one_line_error(
        &["run", "--kernel", "/x", "--net", "mac=52:54:00:12:34:56"],
        "tap=NAME",
    );
}

#[test]
fn bad_mac_is_refused() {
    assert_one_line_error(
        &[
            "run",
            "--kernel",
            "/x",
            "--net",
            "tap=t0,mac=52:54:00:12:34",
        ],
        "six hex octets",
    );
    assert_one_line_error(
        &[
            "run",
            "--kernel",
            "/x",
            "--net",
            "tap=t0,mac=03:00:00:00:00:01",
        ],
        "multicast",
    );
}

/// Attach to tap `name` the way irqvm does (TUNSETIFF, include/uapi/linux/if_tun.h), so a
/// second user finds it busy. None when this host cannot make taps.
fn hold_tap(name: &str) -> Option<std::fs::File> {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .ok()?;
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: i16,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a 40-byte struct ifreq, which `req` is.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF as _, &mut req) };
    (r == 0).then_some(f)
}

#[test]
fn busy_tap_is_named_with_what_to_do() {
    require_kvm();
    let name = format!("irqvmbusy{}", std::process::id() % 100_000);
    let Some(_held) = hold_tap(&name) else {
        skip(
            "busy_tap_is_named_with_what_to_do",
            "cannot create a tap here (no /dev/net/tun or no CAP_NET_ADMIN)",
        );
        return;
    };
    let g = tiny_guest("busytap", "x", 0);
    assert_one_line_error(
        &[
            "run",
            "--kernel",
            g.to_str().unwrap(),
            "--net",
            &format!("tap={name}"),
        ],
        &format!("tap {name} is in use by another process"),
    );
}

#[test]
fn too_many_mmio_devices_counts_nets_and_disks_together() {
    require_kvm();
    let g = tiny_guest("mmio5", "x", 0);
    let mut args = vec![
        "run".to_string(),
        "--kernel".into(),
        g.to_str().unwrap().into(),
        "--virtio-transport".into(),
        "mmio".into(),
    ];
    for i in 0..5 {
        args.push("--net".into());
        args.push(format!("tap=irqvmx{i}"));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_one_line_error(&argv, "at most 4");
}

#[test]
fn tap_without_permission_is_explained() {
    // Root without CAP_NET_ADMIN can still open /dev/kvm and /dev/net/tun, but may neither
    // create a tap nor attach one it does not own.
    let Ok(setpriv) = which("setpriv") else {
        skip(
            "tap_without_permission_is_explained",
            "no setpriv (util-linux)",
        );
        return;
    };
    let g = tiny_guest("tapperm", "x", 0);
    let r = std::process::Command::new(setpriv)
        .args(["--bounding-set", "-net_admin", "--inh-caps", "-net_admin"])
        .arg(irqvm_bin())
        .args(["run", "--kernel"])
        .arg(&g)
        .args(["--net", "tap=irqvmperm0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    if stderr.contains("does not exist") || stderr.contains("permission denied opening") {
        skip(
            "tap_without_permission_is_explained",
            "this user cannot open /dev/net/tun at all",
        );
        return;
    }
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("irqvm: error: --net: not allowed to attach tap irqvmperm0")
            && stderr.contains("CAP_NET_ADMIN")
            && stderr.lines().count() == 1,
        "{stderr}"
    );
}

fn which(cmd: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| std::path::Path::new(d).join(cmd))
        .find(|p| p.exists())
        .ok_or(())
}

#[test]
fn disk_with_unknown_transport_is_refused() {
    let g = tiny_guest("disktransport", "x", 0);
    assert_one_line_error(
        &[
            "run",
            "--kernel",
            g.to_str().unwrap(),
            "--disk",
            "path=/tmp/x.img,transport=usb",
        ],
        "transport=usb: use pci or mmio",
    );
}

#[test]
fn more_than_four_mmio_disks_are_refused_even_with_pci_default() {
    let g = tiny_guest("diskmmio5", "x", 0);
    let img = std::env::temp_dir().join(format!("irqvm-cli-mmio5-{}.img", std::process::id()));
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    let disk = format!("path={},transport=mmio", img.display());
    let mut args = vec!["run", "--kernel", g.to_str().unwrap()];
    for _ in 0..5 {
        args.extend(["--disk", disk.as_str()]);
    }
    assert_one_line_error(&args, "5 virtio-mmio devices requested");
    let _ = std::fs::remove_file(&img);
}

#[test]
fn missing_disk_file_is_named_for_a_per_disk_transport() {
    let g = tiny_guest("diskmissing", "x", 0);
    assert_one_line_error(
        &[
            "run",
            "--kernel",
            g.to_str().unwrap(),
            "--disk",
            "path=/nonexistent/disk.img,transport=mmio",
        ],
        "/nonexistent/disk.img",
    );
}
