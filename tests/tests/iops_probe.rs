//! The guest IOPS probe (guest/iops, packed into `bench/initramfs-iops.cpio` by
//! resources/bench/prepare-iops.sh) runs under irqvm: one 1-second point at iodepth 1 on a
//! virtio-blk disk prints its JSON line with requests completed and the disk's completion
//! interrupts counted. A smoke test for resources/bench/iops.py; nothing here is timed.

mod common;

use std::time::Duration;

use common::*;

/// The number after `"key":` in a flat JSON line.
fn field(line: &str, key: &str) -> Option<f64> {
    let rest = line.split(&format!("\"{key}\":")).nth(1)?;
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[test]
fn iops_probe_reports_requests_and_interrupts_at_iodepth_1() {
    require_kvm();
    let kernel = artifact("linux/current/vmlinux");
    let initrd = artifact("bench/initramfs-iops.cpio");
    let img = std::env::temp_dir().join(format!("irqvm-iops-probe-{}.img", std::process::id()));
    std::fs::write(&img, vec![0x5Au8; 8 << 20]).unwrap();
    let cmdline = format!(
        "{} irqvm.serial_lines=0 \"irqvm.init=script:irqvm-iops --secs 1 --depths 1\"",
        default_cmdline()
    );
    let disk = format!("path={},readonly=on", img.display());
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
            "kernel",
            "--disk",
            &disk,
            "--cmdline",
            &cmdline,
        ],
        Duration::from_secs(600),
    );
    let _ = std::fs::remove_file(&img);
    println!(
        "iops probe: irqvm exited {:?} after {:.1} s",
        r.status,
        r.elapsed.as_secs_f64()
    );
    if r.status == Some(3) && host_is_pvm() {
        skip(
            "iops_probe_reports_requests_and_interrupts_at_iodepth_1",
            "host KVM (PVM) could not run the guest (internal error)",
        );
        return;
    }
    assert!(!r.timed_out, "{}", r.dump());
    assert_eq!(r.status, Some(0), "{}", r.dump());
    let point = r
        .stdout
        .lines()
        .find(|l| l.starts_with("IRQVM-IOPS: {\"dev\":\"vda\""))
        .unwrap_or_else(|| panic!("no probe line for vda:\n{}", r.dump()));
    println!("{point}");
    assert!(point.contains("\"serial\":\"irqvm-vd0\""), "{point}");
    assert!(point.contains("\"depth\":1,"), "{point}");
    assert!(field(point, "requests").unwrap_or(0.0) > 0.0, "{point}");
    assert_eq!(field(point, "errors"), Some(0.0), "{point}");
    // MSI-X: the per-queue vector counts completions; at iodepth 1 nearly every request
    // needs its own interrupt.
    assert!(point.contains("virtio0-req.0"), "{point}");
    assert!(field(point, "irqs").unwrap_or(0.0) > 0.0, "{point}");
    assert!(
        r.stdout.contains("IRQVM-INIT: script-exit 0"),
        "{}",
        r.dump()
    );
}

#[test]
fn json_field_reader_finds_numbers() {
    let l = r#"{"requests":12,"errors":0,"iops":3.5}"#;
    assert_eq!(field(l, "requests"), Some(12.0));
    assert_eq!(field(l, "iops"), Some(3.5));
    assert_eq!(field(l, "irqs"), None);
}
