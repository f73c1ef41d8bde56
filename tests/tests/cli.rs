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
