#!/usr/bin/env python3
"""virtio-blk 4 KiB random-read IOPS and interrupts per request inside a Linux guest,
irqvm and QEMU side by side in one run.

    python3 resources/bench/iops.py [--secs 4] [--rounds 3] [--depths 1,32] [--irqchips kernel,split]
                                    [--usecs 10000 --max-frames 8] [--repeat 1] [--no-qemu]
                                    [--output DIR]

The guest probe is guest/iops (`irqvm-iops`, a static Rust binary packed into
$CACHE/bench/initramfs-iops.cpio by resources/bench/prepare-iops.sh, which this script runs):
for each disk and each iodepth D it runs D threads of O_DIRECT 4 KiB preads at random
offsets for --secs seconds and counts the disk's completion interrupts from /proc/interrupts
before and after (virtioN-req.* MSI-X vectors; the config vector is left out). It does
--rounds rounds over all disks and depths (interleaved in time, so drifting host load hits
every variant alike) and, per round, measures the guest's own cost of a getpid() and of a
4 KiB read of /dev/zero (no I/O), the floor under every request. Per point the table sums
requests, interrupts and seconds over the rounds (IOPS = requests / seconds) and shows the
range of the per-round IOPS.

To keep to one boot per VMM configuration, every device variant is a separate disk of the
same VM, all backed by the SAME read-only image file, and the probe runs them one after the
other inside one guest boot:

    irqvm (per irqchip mode), one boot:  vda event-idx=on                      moderation off
                                         vdb event-idx=off                     moderation off
                                         vdc event-idx=on   irq-usecs/max-frames
                                         vdd event-idx=off  irq-usecs/max-frames
    QEMU q35 (kernel-irqchip=on), one boot: vda virtio-blk-pci event_idx=on
                                            vdb virtio-blk-pci event_idx=off
                                            (QEMU has no interrupt moderation: n/a)

Disks are told apart by their virtio-blk serial (GET_ID): irqvm names disk i `irqvm-vd<i>`,
and QEMU's disks get the same serials. Same kernel (PVH vmlinux), same initramfs, same
command line, memory and vCPUs for both VMMs. Boot order: irqvm kernel, QEMU, irqvm split
(the main comparison runs back to back); --repeat N runs that sequence N times. The image (a fresh --disk-mib scratch file of
random bytes in a temp dir) is read once on the host before each boot so both VMMs read
from the host page cache.

Prints a table (IOPS, interrupts/request, irqvm ÷ QEMU) and writes DIR/iops.jsonl (one line
per point, with the guest's JSON and the configuration) and DIR/iops.md (the table).
"""
import argparse, json, os, re, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("IRQVM_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "irqvm")
# Same CPUID masks as resources/bench/boot.py and vmm/src/bench.rs (PVM hosts, HOST-KVM.md).
QEMU_CPU = ("host,-cx16,-popcnt,-bmi1,-bmi2,-movbe,-rdrand,-rdseed,-fsgsbase,-smap,-smep,-umip,"
            "-pcid,-invpcid,-xsave,kvm-pv-ipi=off,kvm-pv-sched-yield=off,-arch-capabilities")
MARK = "IRQVM-IOPS: "


def disk_variants(mod):
    """(serial, label, event_idx, moderation) for irqvm's disks, in --disk order."""
    return [
        ("irqvm-vd0", "event-idx on, moderation off", True, None),
        ("irqvm-vd1", "event-idx off, moderation off", False, None),
        ("irqvm-vd2", f"event-idx on, moderation {mod}", True, mod),
        ("irqvm-vd3", f"event-idx off, moderation {mod}", False, mod),
    ]


def boot(name, cmd, timeout, log_path):
    """Run one VM; return the guest's probe lines (parsed), the console log and timings."""
    t0 = time.monotonic()
    points, lines, base = [], [], None
    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        init_s = None
        try:
            for raw in p.stdout:
                line = raw.decode(errors="replace").rstrip("\r\n")
                log.write(line + "\n")
                lines.append(line)
                if init_s is None and "IRQVM-INIT: started" in line:
                    init_s = time.monotonic() - t0
                if line.startswith(MARK):
                    try:
                        pt = json.loads(line[len(MARK):])
                        if pt.get("baseline"):
                            base = (base or []) + [pt]
                            print(f"  {name}: guest baseline: getpid {pt.get('getpid_us')} us, "
                                  f"4 KiB read of /dev/zero {pt.get('read_devzero_4k_us')} us", flush=True)
                            continue
                        points.append(pt)
                        print(f"  {name}: {pt.get('serial')} depth {pt.get('depth')}: "
                              f"{pt.get('iops', '?')} IOPS, {pt.get('irqs_per_req', '?')} irq/req"
                              f"{' ERROR ' + pt['error'] if 'error' in pt else ''}", flush=True)
                    except json.JSONDecodeError:
                        print(f"  {name}: unparseable probe line: {line}", flush=True)
                if time.monotonic() - t0 > timeout:
                    print(f"  {name}: timeout after {timeout} s, killing", flush=True)
                    p.kill()
                    break
        finally:
            if p.poll() is None:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    # irqvm --irq-stats: the device side's own counters per disk (whole boot, all points).
    host = [l for l in lines if re.match(r"virtio-blk\d+ \(.*\): kicks \d+", l)]
    return {"points": points, "baseline": base, "irqvm_device_stats": host, "exit": p.returncode, "init_s": init_s,
            "total_s": time.monotonic() - t0, "log": str(log_path),
            "script_exit": next((l.split()[-1] for l in lines if "IRQVM-INIT: script-exit" in l), None)}


def warm(path):
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--secs", type=float, default=4.0, help="seconds per point and round (default 4)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over all points per boot (default 3)")
    ap.add_argument("--repeat", type=int, default=1, help="run the whole boot sequence N times (default 1)")
    ap.add_argument("--depths", default="1,32", help="iodepths, comma list (default 1,32)")
    ap.add_argument("--irqchips", default="kernel,split", help="irqvm modes, comma list (default kernel,split)")
    ap.add_argument("--usecs", type=int, default=10000, help="moderation: irq-usecs (default 10000: a request costs the guest ~20 ms on PVM hosts)")
    ap.add_argument("--max-frames", type=int, default=8, help="moderation: irq-max-frames (default 8)")
    ap.add_argument("--vcpus", type=int, default=1)
    ap.add_argument("--memory", type=int, default=256, help="MiB")
    ap.add_argument("--disk-mib", type=int, default=64)
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--timeout", type=int, default=900, help="per boot, seconds")
    ap.add_argument("--output", default=str(ROOT / "bench-results"))
    a = ap.parse_args()
    depths = [int(d) for d in a.depths.split(",")]
    irqchips = [m for m in a.irqchips.split(",") if m]
    for m in irqchips:
        if m not in ("kernel", "split"):
            sys.exit(f"--irqchips: {m!r} is not kernel or split")
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)

    subprocess.run(["cargo", "build", "--release", "-q", "-p", "vmm", "--bin", "irqvm"], cwd=ROOT, check=True)
    subprocess.run(["bash", str(ROOT / "resources/bench/prepare-iops.sh")], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    kernel = CACHE / "linux/current/vmlinux"
    initrd = CACHE / "bench/initramfs-iops.cpio"
    for f in (kernel, initrd):
        if not f.exists():
            sys.exit(f"{f} missing: run resources/prepare-guests.sh")
    qemu_bin = shutil.which("qemu-system-x86_64")
    if not qemu_bin and not a.no_qemu:
        print("qemu-system-x86_64 not found (apt-get install qemu-system-x86): QEMU columns skipped")
    qemu_ver = (subprocess.run([qemu_bin, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
                if qemu_bin else None)

    probe = f"irqvm-iops --secs {a.secs:g} --rounds {a.rounds} --depths {','.join(map(str, depths))}"
    cmdline = ((ROOT / "resources/default-cmdline.txt").read_text().strip()
               + f" irqvm.serial_lines=0 \"irqvm.init=script:{probe}\"")
    mod = f"{a.usecs} us/{a.max_frames} frames"
    variants = disk_variants(mod)

    tmp = Path(tempfile.mkdtemp(prefix="irqvm-iops-"))
    img = tmp / "disk.img"
    with open(img, "wb") as f:
        f.write(os.urandom(a.disk_mib << 20))

    seq = []  # (vmm, mode, cmd, {serial: (label, event_idx, moderation)})
    irqvm = str(ROOT / "target/release/irqvm")
    for mode in irqchips:
        cmd = [irqvm, "run", "--kernel", str(kernel), "--initrd", str(initrd), "--memory", str(a.memory),
               "--vcpus", str(a.vcpus), "--irqchip", mode, "--irq-stats", "--cmdline", cmdline]
        for serial, label, eidx, m in variants:
            opt = f"path={img},readonly=on,event-idx={'on' if eidx else 'off'}"
            if m:
                opt += f",irq-usecs={a.usecs},irq-max-frames={a.max_frames}"
            cmd += ["--disk", opt]
        seq.append(("irqvm", mode, cmd, {s: (l, e, m) for s, l, e, m in variants}))
    if qemu_bin and not a.no_qemu:
        cmd = [qemu_bin, "-M", "q35", "-accel", "kvm,kernel-irqchip=on", "-cpu", QEMU_CPU,
               "-smp", str(a.vcpus), "-m", f"{a.memory}M", "-nodefaults", "-no-user-config", "-nographic",
               "-display", "none", "-serial", "stdio", "-no-reboot",
               "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline]
        qv = {}
        for i, (serial, label, eidx, m) in enumerate(v for v in variants if v[3] is None):
            cmd += ["-drive", f"file={img},if=none,id=d{i},format=raw,readonly=on",
                    "-device", f"virtio-blk-pci,drive=d{i},serial={serial},event_idx={'on' if eidx else 'off'}"]
            qv[serial] = (label, eidx, None)
        seq.insert(1, ("qemu", "kernel", cmd, qv))
    boots = seq * max(1, a.repeat)

    rows = []  # dicts
    meta = []
    for vmm, mode, cmd, disks in boots:
        name = f"{vmm}-{mode}"
        print(f"boot {name}: {len(disks)} disks x depths {depths} x {a.secs:g} s", flush=True)
        warm(img)
        r = boot(name, cmd, a.timeout, out / f"iops-{name}.log")
        print(f"  {name}: exit {r['exit']}, /init at {r['init_s'] and round(r['init_s'], 1)} s, "
              f"total {r['total_s']:.1f} s, probe exit {r['script_exit']}", flush=True)
        meta.append({"vmm": vmm, "irqchip": mode, "cmd": cmd, **{k: v for k, v in r.items() if k != "points"}})
        for pt in r["points"]:
            label, eidx, m = disks.get(pt.get("serial"), ("?", None, None))
            rows.append({"vmm": vmm, "irqchip": mode, "variant": label, "event_idx": eidx,
                         "moderation": m, **pt})
    shutil.rmtree(tmp, ignore_errors=True)

    with open(out / "iops.jsonl", "w") as f:
        f.write(json.dumps({"args": vars(a), "qemu": qemu_ver, "boots": meta,
                            "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}) + "\n")
        for row in rows:
            f.write(json.dumps(row) + "\n")

    def agg(vmm, mode, eidx, m, depth):
        """Sums over every round and boot of one configuration, or None."""
        pts = [r for r in rows if (r["vmm"], r["irqchip"], r["event_idx"], r["moderation"], r.get("depth")) ==
               (vmm, mode, eidx, m, depth) and "requests" in r]
        req = sum(p["requests"] for p in pts)
        secs = sum(p["secs"] for p in pts)
        if not pts or not secs:
            return None
        per = sorted(p["iops"] for p in pts)
        return {"iops": req / secs, "irqs_per_req": sum(p["irqs"] for p in pts) / req if req else None,
                "requests": req, "lo": per[0], "hi": per[-1], "n": len(pts),
                "errors": sum(p.get("errors", 0) for p in pts)}

    def fmt(x, nd):
        return "—" if x is None else f"{x:,.{nd}f}"

    table = ["| VMM | irqchip | iodepth | EVENT_IDX | moderation | IOPS | per-round IOPS | requests | "
             "irqs/request | IOPS ÷ QEMU | irqs/req ÷ QEMU |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    summary = []
    for depth in depths:
        for vmm, mode, _, disks in seq:
            for serial, (label, eidx, m) in disks.items():
                g = agg(vmm, mode, eidx, m, depth)
                q = agg("qemu", "kernel", eidx, None, depth)
                ratio_iops = ratio_irq = "—"
                if g and q and vmm != "qemu":
                    if q["iops"]:
                        ratio_iops = f"{g['iops'] / q['iops']:.2f}"
                    if q["irqs_per_req"] and g["irqs_per_req"] is not None:
                        ratio_irq = f"{g['irqs_per_req'] / q['irqs_per_req']:.2f}"
                vname = "QEMU q35" if vmm == "qemu" else "irqvm"
                mname = "n/a" if vmm == "qemu" else ("off" if m is None else m)
                table.append(f"| {vname} | {mode} | {depth} | {'on' if eidx else 'off'} | {mname} | "
                             f"{fmt(g and g['iops'], 1)} | "
                             f"{(fmt(g['lo'], 1) + '-' + fmt(g['hi'], 1)) if g else '—'} | "
                             f"{g['requests'] if g else '—'} | {fmt(g and g['irqs_per_req'], 3)} | "
                             f"{ratio_iops} | {ratio_irq} |")
                summary.append({"summary": True, "vmm": vmm, "irqchip": mode, "depth": depth,
                                "event_idx": eidx, "moderation": m, **(g or {})})
    base_rows = ["| boot | guest getpid() µs (median of rounds) | 4 KiB read of /dev/zero µs | /init at s |",
                 "|---|---|---|---|"]
    for b in meta:
        bl = b.get("baseline") or []
        med = lambda k: sorted(x[k] for x in bl)[len(bl) // 2] if bl else None
        base_rows.append(f"| {b['vmm']} {b['irqchip']} | {fmt(med('getpid_us'), 0)} | "
                         f"{fmt(med('read_devzero_4k_us'), 0)} | {fmt(b.get('init_s'), 0)} |")
    with open(out / "iops.jsonl", "a") as f:
        for srow in summary:
            f.write(json.dumps(srow) + "\n")
    head = (f"4 KiB random reads, O_DIRECT, {a.rounds} rounds x {a.secs:g} s per point and boot, "
            f"{a.repeat} boot(s) per VMM configuration, {a.vcpus} vCPU(s), {a.memory} MiB, "
            f"{a.disk_mib} MiB read-only image; {qemu_ver or 'no QEMU'}; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    text = head + "\n\n" + "\n".join(table) + "\n\n" + "\n".join(base_rows) + "\n"
    (out / "iops.md").write_text(text)
    print("\n" + text)
    print(f"wrote {out / 'iops.jsonl'} and {out / 'iops.md'}; console logs {out}/iops-*.log")


if __name__ == "__main__":
    main()
