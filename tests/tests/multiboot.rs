//! Multiboot v1 end to end: a tiny guest written in assembly (tests/tests/data/
//! multiboot_guest.S), assembled and linked at test time with the system binutils, boots the
//! way QEMU's `-kernel` would boot it: EAX = 0x2BADB002, EBX = the information structure with
//! mem_upper, the command line, the memory map and the `--initrd` files as modules; it also
//! reads QEMU's fw_cfg (0x510/0x511) for the CPU count and RAM size. It prints what it found
//! on COM1 and ends through isa-debug-exit (0xf4) with value 0x21: status 67.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/multiboot_guest.S");
/// isa-debug-exit value 0x21: (0x21 << 1) | 1.
const GUEST_OK: i32 = 67;

fn run_tool(cmd: &mut Command) {
    let st = cmd.status().expect("run binutils");
    assert!(st.success(), "{cmd:?} failed");
}

fn work_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("irqvm-mb-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The guest as an ELF32 image (loaded by its program headers), assembled with `as_args`
/// and linked with `ld_args`.
fn elf_guest_with(name: &str, as_args: &[&str], ld_args: &[&str]) -> PathBuf {
    let dir = work_dir(name);
    let (obj, elf) = (dir.join("g.o"), dir.join("g.elf"));
    run_tool(
        Command::new("as")
            .arg("--32")
            .args(as_args)
            .args([SOURCE, "-o"])
            .arg(&obj),
    );
    run_tool(
        Command::new("ld")
            .args(["-m", "elf_i386", "-nostdlib", "-static", "-e", "_start"])
            .args(ld_args)
            .arg("-o")
            .arg(&elf)
            .arg(&obj),
    );
    elf
}

fn elf_guest(name: &str, ld_args: &[&str]) -> PathBuf {
    elf_guest_with(name, &[], ld_args)
}

/// Headers, text and data all at or above 1 MiB.
const AT_1M: [&str; 3] = ["-z", "max-page-size=0x1000", "-Ttext-segment=0x100000"];

fn elf_at_1m(name: &str) -> PathBuf {
    elf_guest(name, &AT_1M)
}

/// The guest as a flat binary loaded by the header's address fields (flags bit 16).
fn aout_guest(name: &str) -> PathBuf {
    let dir = work_dir(name);
    let (obj, elf, bin) = (dir.join("g.o"), dir.join("g.elf"), dir.join("g.bin"));
    run_tool(
        Command::new("as")
            .args(["--32", "--defsym", "AOUT=1", SOURCE, "-o"])
            .arg(&obj),
    );
    run_tool(
        Command::new("ld")
            .args([
                "-m",
                "elf_i386",
                "-nostdlib",
                "-static",
                "-N",
                "--no-warn-rwx-segments",
            ])
            .args(["-Ttext=0x100000", "-e", "_start", "-o"])
            .arg(&elf)
            .arg(&obj),
    );
    run_tool(
        Command::new("objcopy")
            .args(["-O", "binary"])
            .arg(&elf)
            .arg(&bin),
    );
    bin
}

fn module_file(name: &str, text: &str) -> PathBuf {
    let p = work_dir(name).join("module.txt");
    std::fs::write(&p, text).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn assert_line(r: &Run, line: &str) {
    assert!(
        r.stdout.lines().any(|l| l == line),
        "want the line {line:?}\n{}",
        r.dump()
    );
}

fn boot_elf_guest_with_a_module(irqchip: &str) {
    require_kvm();
    let k = elf_at_1m(&format!("elf-{irqchip}"));
    let m = module_file(&format!("elf-{irqchip}"), "hello from module");
    let r = run_irqvm(
        &[
            "run",
            "--kernel",
            s(&k),
            "--initrd",
            s(&m),
            "--cmdline",
            "hello multiboot",
            "--memory",
            "64",
            "--irqchip",
            irqchip,
        ],
        Duration::from_secs(60),
    );
    assert_eq!(r.status, Some(GUEST_OK), "{}", r.dump());
    assert_line(&r, "multiboot: magic ok");
    // 64 MiB: 639 KiB below the EBDA, 63 MiB above 1 MiB.
    assert_line(&r, "mem_lower=639 mem_upper=64512");
    assert_line(&r, &format!("cmdline={} hello multiboot", s(&k)));
    assert_line(&r, "mods_count=1");
    assert_line(&r, &format!("mod0={} data=hello from module", s(&m)));
    assert!(
        r.stdout.lines().any(|l| l.starts_with("mmap_length=")
            && l != "mmap_length=0"
            && l.trim_start_matches("mmap_length=")
                .parse::<u32>()
                .is_ok_and(|n| n % 24 == 0)),
        "{}",
        r.dump()
    );
}

#[test]
fn elf32_multiboot_guest_gets_magic_memory_cmdline_and_module() {
    boot_elf_guest_with_a_module("kernel");
}

#[test]
fn elf32_multiboot_guest_boots_with_the_userspace_irqchip() {
    boot_elf_guest_with_a_module("split");
}

#[test]
fn aout_kludge_flat_guest_boots_from_the_header_address_fields() {
    require_kvm();
    let k = aout_guest("aout");
    let r = run_irqvm(
        &["run", "--kernel", s(&k), "--cmdline", "", "--memory", "128"],
        Duration::from_secs(60),
    );
    assert_eq!(r.status, Some(GUEST_OK), "{}", r.dump());
    assert_line(&r, "multiboot: magic ok");
    assert_line(&r, "mem_lower=639 mem_upper=130048");
    assert_line(&r, &format!("cmdline={}", s(&k)));
    assert_line(&r, "mods_count=0");
    assert_line(&r, "fw_cfg=QEMU cpus=1 ram_mib=128");
}

#[test]
fn elf32_multiboot_guest_switches_itself_to_long_mode() {
    require_kvm();
    let k = elf_guest_with("long", &["--defsym", "LONG=1"], &AT_1M);
    let r = run_irqvm(
        &["run", "--kernel", s(&k), "--memory", "64"],
        Duration::from_secs(60),
    );
    assert_eq!(r.status, Some(GUEST_OK), "{}", r.dump());
    assert_line(&r, "multiboot: magic ok");
    assert_line(&r, "long mode ok");
}

#[test]
fn fw_cfg_reports_the_vcpu_count_and_ram_size() {
    require_kvm();
    let k = elf_at_1m("fwcfg");
    let r = run_irqvm(
        &["run", "--kernel", s(&k), "--vcpus", "2", "--memory", "96"],
        Duration::from_secs(60),
    );
    assert_eq!(r.status, Some(GUEST_OK), "{}", r.dump());
    assert_line(&r, "fw_cfg=QEMU cpus=2 ram_mib=96");
    // No --cmdline: the kernel file name only, not irqvm's default Linux console line.
    assert_line(&r, &format!("cmdline={}", s(&k)));
}

#[test]
fn module_list_items_become_modules_with_their_arguments() {
    require_kvm();
    let k = elf_at_1m("mods");
    let a = module_file("mods-a", "first");
    let b = module_file("mods-b", "second");
    let list = format!("{} arg=1,{}", s(&a), s(&b));
    let r = run_irqvm(
        &[
            "run",
            "--kernel",
            s(&k),
            "--initrd",
            &list,
            "--memory",
            "64",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(r.status, Some(GUEST_OK), "{}", r.dump());
    assert_line(&r, "mods_count=2");
    assert_line(&r, &format!("mod0={} arg=1 data=first", s(&a)));
}

fn assert_refused(r: &Run, needle: &str) {
    assert_eq!(r.status, Some(1), "{}", r.dump());
    let errs: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(errs.len(), 1, "want one error line\n{}", r.dump());
    assert!(
        errs[0].starts_with("irqvm: error: ") && errs[0].contains(needle),
        "want {needle:?} in {:?}",
        errs[0]
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.dump());
}

#[test]
fn multiboot_header_with_a_bad_checksum_is_refused() {
    require_kvm();
    let k = aout_guest("badsum");
    let mut img = std::fs::read(&k).unwrap();
    img[8] ^= 0x10; // the checksum
    std::fs::write(&k, &img).unwrap();
    let r = run_irqvm(&["run", "--kernel", s(&k)], Duration::from_secs(30));
    assert_refused(&r, "bad checksum");
}

#[test]
fn image_that_would_overwrite_irqvm_tables_is_refused() {
    require_kvm();
    // -Ttext=0x100000 alone makes ld put the ELF headers in a segment at 0xff000, on the
    // MP table below 1 MiB.
    let k = elf_guest("low", &["-z", "max-page-size=0x1000", "-Ttext=0x100000"]);
    let r = run_irqvm(&["run", "--kernel", s(&k)], Duration::from_secs(30));
    assert_refused(&r, "overlaps the EBDA");
}

#[test]
fn missing_module_file_is_named() {
    require_kvm();
    let k = elf_at_1m("nomod");
    let r = run_irqvm(
        &["run", "--kernel", s(&k), "--initrd", "/nonexistent/module"],
        Duration::from_secs(30),
    );
    assert_refused(&r, "/nonexistent/module");
}
