#!/usr/bin/env python3
"""Boot-to-init time and VMM memory overhead, irqvm and QEMU side by side in one run.

    python3 resources/bench/boot.py [--runs N] [--vcpus N] [--irqchip kernel|split]

Boots the default guest (PVH vmlinux + busybox initramfs from resources/prepare-guests.sh)
N times under irqvm and N times under `qemu-system-x86_64 -M microvm -enable-kvm`, same
kernel, initramfs, command line, memory and vCPUs, alternating so both see the same machine
load. Measures, per run:
  - init_s: seconds from starting the VMM process to the guest's "IRQVM-INIT: started" line;
  - rss_kib: the VMM's resident memory at that moment, excluding the guest RAM mapping
    (every mapping at least as large as the guest memory is left out), from /proc/PID/smaps.
Prints a table with medians and the irqvm/QEMU ratio, and writes bench-results/boot.json.
"""
import argparse, json, os, statistics, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("IRQVM_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "irqvm")
QEMU_CPU = ("host,-cx16,-popcnt,-bmi1,-bmi2,-movbe,-rdrand,-rdseed,-fsgsbase,-smap,-smep,-umip,"
            "-pcid,-invpcid,-xsave,kvm-pv-ipi=off,kvm-pv-sched-yield=off,-arch-capabilities")


def rss_excluding_guest(pid, guest_bytes):
    total = 0
    size = 0
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                    lo, hi = line.split()[0].split("-")
                    size = int(hi, 16) - int(lo, 16)
                elif line.startswith("Rss:") and size < guest_bytes:
                    total += int(line.split()[1])
    except OSError:
        return None
    return total


def one_run(cmd, guest_bytes, timeout=600):
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    init_s = rss = None
    for raw in p.stdout:
        if init_s is None and b"IRQVM-INIT: started" in raw:
            init_s = time.monotonic() - t0
            rss = rss_excluding_guest(p.pid, guest_bytes)
        if time.monotonic() - t0 > timeout:
            p.kill()
            break
    p.wait()
    return {"init_s": init_s, "rss_kib": rss, "exit": p.returncode, "total_s": time.monotonic() - t0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--vcpus", type=int, default=1)
    ap.add_argument("--memory", type=int, default=256)
    ap.add_argument("--irqchip", default="kernel")
    ap.add_argument("--output", default=str(ROOT / "bench-results"))
    a = ap.parse_args()
    kernel = CACHE / "linux/current/vmlinux"
    initrd = CACHE / "initramfs.cpio"
    for f in (kernel, initrd):
        if not f.exists():
            sys.exit(f"{f} missing: run resources/prepare-guests.sh")
    cmdline = (ROOT / "resources/default-cmdline.txt").read_text().strip() + " irqvm.init=poweroff"
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "vmm", "--bin", "irqvm"], cwd=ROOT, check=True)
    irqvm = [str(ROOT / "target/release/irqvm"), "run", "--kernel", str(kernel), "--initrd", str(initrd),
             "--memory", str(a.memory), "--vcpus", str(a.vcpus), "--irqchip", a.irqchip, "--cmdline", cmdline]
    kirq = "on" if a.irqchip == "kernel" else "split"
    qemu = ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off", "-accel", f"kvm,kernel-irqchip={kirq}",
            "-cpu", QEMU_CPU, "-smp", str(a.vcpus), "-m", f"{a.memory}M", "-nodefaults", "-no-user-config",
            "-nographic", "-display", "none", "-serial", "stdio", "-no-reboot",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline]
    have_qemu = subprocess.run(["which", "qemu-system-x86_64"], capture_output=True).returncode == 0
    results = {"irqvm": [], "qemu": []}
    guest_bytes = a.memory << 20
    for i in range(a.runs):
        for name, cmd in (("irqvm", irqvm), ("qemu", qemu)):
            if name == "qemu" and not have_qemu:
                continue
            r = one_run(cmd, guest_bytes)
            results[name].append(r)
            print(f"run {i + 1}/{a.runs} {name}: init {r['init_s']} s, rss {r['rss_kib']} KiB, exit {r['exit']}", flush=True)

    def med(name, key):
        v = [r[key] for r in results[name] if r[key] is not None]
        return statistics.median(v) if v else None

    rows = []
    for key, unit in (("init_s", "s"), ("rss_kib", "KiB")):
        i, q = med("irqvm", key), med("qemu", key)
        ratio = f"{i / q:.2f}" if i and q else "—"
        rows.append(f"| {key} (median, {unit}) | {i if i is not None else '—'} | {q if q is not None else '—'} | {ratio} |")
    n_ok = {k: sum(1 for r in v if r["init_s"] is not None) for k, v in results.items()}
    print(f"\nboot to /init, {a.runs} runs each, {a.vcpus} vCPU(s), {a.memory} MiB, irqchip {a.irqchip}/kernel-irqchip={kirq}")
    print(f"runs that reached /init: irqvm {n_ok['irqvm']}, qemu {n_ok['qemu']}")
    print("| metric | irqvm | QEMU microvm | irqvm ÷ QEMU |\n|---|---|---|---|")
    print("\n".join(rows))
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "boot.json").write_text(json.dumps({"args": vars(a), "results": results}, indent=1))


if __name__ == "__main__":
    main()
