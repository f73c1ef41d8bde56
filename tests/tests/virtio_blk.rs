//! virtio-blk on a real Linux guest (the default guest kernel has virtio-pci, virtio-mmio and
//! virtio-blk built in): the guest writes a marker with O_SYNC-like `conv=fsync`, reads the
//! first 256 KiB back and prints its sha256; after irqvm exits, the host file must hold the
//! marker and hash to the same value. /proc/interrupts must show the interrupt path we asked
//! for: PCI-MSI per-queue vectors (MSI-X), one shared IO-APIC fasteoi line (INTx), or an
//! IO-APIC line per virtio-mmio device.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

const TIMEOUT: Duration = Duration::from_secs(600);

fn disk(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("irqvm-blk-{}-{name}.img", std::process::id()));
    let mut data = vec![0u8; 8 << 20];
    for (i, sector) in data.chunks_mut(512).enumerate() {
        sector[..8].copy_from_slice(&(i as u64).to_le_bytes());
    }
    std::fs::write(&p, data).unwrap();
    p
}

fn host_sha256_first_256k(p: &std::path::Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("head -c 262144 '{}' | sha256sum", p.display()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Boot with `disks` and run the round-trip script; returns the run or None when skipped.
fn roundtrip(
    test: &str,
    irqchip: &str,
    transport: &str,
    disks: &[String],
    extra: &str,
) -> Option<Run> {
    require_kvm();
    let kernel = artifact("linux/current/vmlinux");
    let initrd = artifact("initramfs.cpio");
    // No double quotes or pipes inside the script (the guest /init's parser).
    let script =
        "echo IRQVM-MARK-4242 > /tmp/m; dd if=/tmp/m of=/dev/vda bs=512 seek=100 conv=fsync; \
                  dd if=/dev/vda of=/tmp/r bs=512 count=512; sha256sum /tmp/r; \
                  echo IRQVM-INTERRUPTS; cat /proc/interrupts";
    let cmdline = format!(
        "{} {extra} irqvm.serial_lines=0 \"irqvm.init=script:{script}\"",
        default_cmdline()
    );
    let mut args: Vec<String> = [
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
        "--cmdline",
        &cmdline,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for d in disks {
        args.push("--disk".into());
        args.push(d.clone());
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run_irqvm(&argv, TIMEOUT);
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
        return None;
    }
    assert!(!r.timed_out, "{}", r.dump());
    assert_eq!(r.status, Some(0), "{}", r.dump());
    Some(r)
}

fn assert_data_round_trips(r: &Run, img: &PathBuf) {
    let data = std::fs::read(img).unwrap();
    assert_eq!(
        &data[100 * 512..100 * 512 + 15],
        b"IRQVM-MARK-4242",
        "marker not on the host file"
    );
    let want = host_sha256_first_256k(img);
    assert!(
        r.stdout.contains(&format!("{want}  /tmp/r")),
        "guest sha256 of the first 256 KiB differs from the host file's {want}:\n{}",
        r.dump()
    );
}

/// The counters of one GSI row of the `--irq-stats` table (raised, delivered, coalesced, eoi, ...).
fn stats_row(stderr: &str, gsi: u32) -> Option<Vec<u64>> {
    let prefix = format!("{gsi}:");
    let line = stderr
        .lines()
        .find(|l| l.trim_start().starts_with(&prefix))?;
    Some(
        line.trim_start()[prefix.len()..]
            .split_whitespace()
            .map_while(|w| w.parse().ok())
            .collect(),
    )
}

fn interrupts(r: &Run) -> String {
    // The last occurrence: the kernel also echoes the marker in its command line.
    r.stdout
        .rsplit("IRQVM-INTERRUPTS")
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn virtio_blk_pci_msix_kernel_irqchip_round_trips_data() {
    let img = disk("msix-k");
    let Some(r) = roundtrip(
        "virtio_blk_pci_msix_kernel",
        "kernel",
        "pci",
        &[format!("path={}", img.display())],
        "",
    ) else {
        return;
    };
    assert_data_round_trips(&r, &img);
    let irqs = interrupts(&r);
    assert!(
        irqs.contains("PCI-MSI") && irqs.contains("virtio0-req.0"),
        "{irqs}"
    );
    let _ = std::fs::remove_file(img);
}

#[test]
fn virtio_blk_pci_msix_split_irqchip_round_trips_data() {
    let img = disk("msix-s");
    let Some(r) = roundtrip(
        "virtio_blk_pci_msix_split",
        "split",
        "pci",
        &[format!("path={}", img.display())],
        "",
    ) else {
        return;
    };
    assert_data_round_trips(&r, &img);
    assert!(interrupts(&r).contains("PCI-MSI"), "{}", interrupts(&r));
    let _ = std::fs::remove_file(img);
}

#[test]
fn virtio_blk_mmio_kernel_irqchip_round_trips_data() {
    let img = disk("mmio-k");
    let Some(r) = roundtrip(
        "virtio_blk_mmio_kernel",
        "kernel",
        "mmio",
        &[format!("path={}", img.display())],
        "",
    ) else {
        return;
    };
    assert_data_round_trips(&r, &img);
    let irqs = interrupts(&r);
    assert!(
        irqs.lines()
            .any(|l| l.contains("IO-APIC") && l.contains("virtio0")),
        "{irqs}"
    );
    let _ = std::fs::remove_file(img);
}

#[test]
fn virtio_blk_pci_intx_two_disks_share_one_level_line_split_irqchip() {
    intx_two_disks("split");
}

#[test]
fn virtio_blk_pci_intx_two_disks_share_one_level_line_kernel_irqchip() {
    intx_two_disks("kernel");
}

/// Two disks in one slot pair with MSI-X off (`pci=nomsi`): both on one IO-APIC fasteoi line
/// (distinct wired-OR sources), data round-trips on the first, the read-only second is
/// unchanged. In kernel mode INTx rides KVM's irqfd resampler, so the guest's EOIs on the
/// shared GSI (16) must come back to irqvm.
fn intx_two_disks(irqchip: &str) {
    let a = disk(&format!("intx-{irqchip}-a"));
    let b = disk(&format!("intx-{irqchip}-b"));
    let disks = [
        format!("path={}", a.display()),
        format!("path={},readonly=on", b.display()),
    ];
    let before_b = std::fs::read(&b).unwrap();
    let test = format!("virtio_blk_pci_intx_{irqchip}");
    let Some(r) = roundtrip(&test, irqchip, "pci", &disks, "pci=nomsi") else {
        return;
    };
    assert_data_round_trips(&r, &a);
    let irqs = interrupts(&r);
    let shared = irqs
        .lines()
        .find(|l| l.contains("fasteoi") && l.contains("virtio0") && l.contains("virtio1"));
    assert!(
        shared.is_some(),
        "no shared IO-APIC fasteoi line for both disks:\n{irqs}"
    );
    assert_eq!(
        std::fs::read(&b).unwrap(),
        before_b,
        "read-only disk changed"
    );
    if irqchip == "kernel" {
        let row =
            stats_row(&r.stderr, 16).unwrap_or_else(|| panic!("no GSI 16 row:\n{}", r.stderr));
        assert!(
            row.len() >= 4 && row[3] > 0,
            "no resampled EOIs on GSI 16: {row:?}\n{}",
            r.stderr
        );
    }
    let _ = std::fs::remove_file(a);
    let _ = std::fs::remove_file(b);
}
