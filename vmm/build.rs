//! Builds the freestanding guest test kernel (guest/testkernel) for the host target with the
//! installed toolchain and puts it at `$OUT_DIR/testkernel.elf` for `include_bytes!`
//! (vmm/src/testkernel.rs). Same command as guest/testkernel/build.sh.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let kdir = manifest.join("../guest/testkernel");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let elf = out.join("testkernel.elf");
    println!("cargo:rerun-if-changed={}", kdir.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        kdir.join("linker.ld").display()
    );
    println!("cargo:rerun-if-changed=build.rs");

    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut cmd = Command::new(rustc);
    cmd.current_dir(&kdir)
        // Cargo's own flags for the host crate must not leak into the freestanding build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "bin",
            "--crate-name",
            "testkernel",
        ])
        .args(["-C", "panic=abort", "-C", "opt-level=2"])
        .args(["-C", "relocation-model=static", "-C", "code-model=small"])
        .args(["-C", "debuginfo=0", "-C", "target-cpu=x86-64"])
        // No SSE: this host's KVM emulator lacks many SSE instructions (see src/fmtnum.rs).
        .args(["-C", "target-feature=-sse,-sse2"])
        .args(["-C", "link-arg=-nostdlib", "-C", "link-arg=-static"])
        .args(["-C", "link-arg=-nostartfiles", "-C", "link-arg=-no-pie"])
        .args([
            "-C",
            "link-arg=-Wl,-Tlinker.ld",
            "-C",
            "link-arg=-Wl,--build-id=none",
        ])
        .args(["-C", "link-arg=-Wl,-n"])
        .arg("-o")
        .arg(&elf)
        .arg("src/main.rs");
    let res = cmd
        .output()
        .expect("cannot run rustc to build the test kernel");
    if !res.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&res.stderr));
        panic!(
            "building guest/testkernel failed (rustc exit {}); run guest/testkernel/build.sh to see why",
            res.status
        );
    }
    check_no_sse(&elf);
}

/// Fail if an xmm register is used outside core's formatting routines that only panic
/// messages reach (the kernel never formats those). Skipped when objdump is missing.
fn check_no_sse(elf: &std::path::Path) {
    let Ok(dump) = Command::new("objdump").arg("-d").arg(elf).output() else {
        println!("cargo:warning=objdump not found: test kernel not checked for SSE instructions");
        return;
    };
    let text = String::from_utf8_lossy(&dump.stdout);
    let allowed = [
        "pad_integral",
        "Formatter3pad",
        "do_count_chars",
        "3fmt3num3imp",
    ];
    let mut func = "";
    for line in text.lines() {
        if line.ends_with(">:") {
            func = line;
        } else if line.contains("%xmm") && !allowed.iter().any(|a| func.contains(a)) {
            panic!("test kernel uses SSE in {func}: {line}\n(this host's KVM cannot emulate it; see guest/testkernel/src/fmtnum.rs)");
        }
    }
}
