//! The guest test kernel (guest/testkernel, embedded in irqvm) run through `irqvm selftest`
//! on real KVM, in both irqchip modes with 1 and 2 vCPUs: every case must PASS, SKIP or be a
//! host XFAIL with the host's failure signature; no FAIL. And a controller broken on purpose
//! must make the suite fail.

mod common;

use std::time::Duration;

use common::*;

const TIMEOUT: Duration = Duration::from_secs(300);

fn selftest(irqchip: &str, vcpus: u32, extra: &[&str]) -> Run {
    require_kvm();
    let v = vcpus.to_string();
    let mut args = vec!["selftest", "--irqchip", irqchip, "--vcpus", &v];
    args.extend_from_slice(extra);
    run_irqvm(&args, TIMEOUT)
}

/// (passed, failed, skipped) from the suite's closing line.
fn summary(r: &Run) -> (u64, u64, u64) {
    let line = r
        .stdout
        .lines()
        .rev()
        .find(|l| l.contains(" passed, ") && l.contains(" failed, "))
        .unwrap_or_else(|| panic!("no summary line:\n{}", r.dump()));
    let n: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1], n[2])
}

fn assert_suite_passes(r: &Run) {
    let fails: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAIL "))
        .collect();
    assert!(fails.is_empty(), "failed cases: {fails:#?}\n{}", r.dump());
    let (passed, failed, _skipped) = summary(r);
    assert_eq!(failed, 0);
    assert!(passed >= 25, "only {passed} cases passed:\n{}", r.dump());
    // The MSI-X/INTx cases found the test PCI function (they SKIP without it).
    for case in [
        "msix_vector_per_entry",
        "msix_unmask_fires_pending_exactly_once",
        "msix_garbage_table_writes_leave_vmm_up",
    ] {
        assert!(
            r.stdout
                .lines()
                .any(|l| l.starts_with(&format!("PASS {case}"))),
            "{case} did not pass:\n{}",
            r.dump()
        );
    }
    assert_eq!(r.status, Some(0), "{}", r.dump());
    // selftest attaches scratch disks: the virtio-blk cases must run, not skip.
    let vblk: Vec<&str> = r.stdout.lines().filter(|l| l.contains(" vblk_")).collect();
    assert!(vblk.len() >= 9, "virtio-blk cases missing:\n{}", r.dump());
    assert!(
        vblk.iter().all(|l| !l.starts_with("SKIP ")),
        "virtio-blk cases skipped although selftest attaches disks: {vblk:#?}"
    );
    for l in r
        .stdout
        .lines()
        .filter(|l| l.starts_with("XFAIL ") || l.starts_with("SKIP "))
    {
        println!("  {l}");
    }
}

#[test]
fn selftest_kernel_irqchip_1cpu_passes() {
    assert_suite_passes(&selftest("kernel", 1, &[]));
}

#[test]
fn selftest_kernel_irqchip_2cpus_passes() {
    assert_suite_passes(&selftest("kernel", 2, &[]));
}

#[test]
fn selftest_split_irqchip_1cpu_passes() {
    assert_suite_passes(&selftest("split", 1, &[]));
}

#[test]
fn selftest_split_irqchip_2cpus_passes() {
    assert_suite_passes(&selftest("split", 2, &[]));
}

#[test]
fn selftest_catches_an_ioapic_that_never_clears_remote_irr() {
    let r = selftest("split", 1, &["--inject-fault", "forget-remote-irr"]);
    let (_, failed, _) = summary(&r);
    assert!(
        failed >= 1,
        "a broken IOAPIC passed the suite:\n{}",
        r.dump()
    );
    assert_ne!(r.status, Some(0), "{}", r.dump());
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("FAIL ioapic_eoi_by_lapic_broadcast")),
        "{}",
        r.dump()
    );
}
