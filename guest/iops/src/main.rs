//! irqvm-iops: 4 KiB random-read IOPS and completion interrupts per request on virtio-blk
//! disks, measured inside a Linux guest.
//!
//! ```text
//! irqvm-iops [--secs T] [--depths 1,32] [--rounds R] [--bs BYTES] [DEV...]
//! ```
//!
//! For every disk (default: each `/sys/block/vd*`) and every depth D it opens the disk D times
//! with `O_DIRECT` and runs D threads, each doing back-to-back `pread`s of BS bytes at uniformly
//! random BS-aligned offsets for T seconds, so D requests are in flight (the guest kernel has
//! neither io_uring nor AIO). Before and after it reads `/proc/interrupts` and sums, over all
//! CPUs, the lines that belong to the disk's virtio device: `virtioN-req.*` (MSI-X per-queue
//! vectors; `virtioN-config` is left out) or `virtioN` (INTx or a shared vector). It prints one
//! JSON line per point, prefixed with `IRQVM-IOPS: ` so the host can pick it out of the console:
//!
//! ```text
//! IRQVM-IOPS: {"dev":"vda","serial":"irqvm-vd0","virtio":"virtio0","depth":32,"bs":4096,
//!   "secs":5.001,"requests":12345,"errors":0,"iops":2468.5,"irqs":1234,"irqs_per_req":0.1,
//!   "irq_lines":["virtio0-req.0"]}
//! ```
//!
//! `serial` is the disk's virtio-blk GET_ID string (`/sys/block/vdX/serial`), which the host
//! uses to tell which disk is which. Exit status: 0 if every point completed requests, 1
//! otherwise, 2 on bad arguments.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// `O_DIRECT` on x86-64 Linux (include/uapi/asm-generic/fcntl.h).
const O_DIRECT: i32 = 0o40000;
/// Buffers are aligned to this for `O_DIRECT` (any logical block size up to a page).
const ALIGN: usize = 4096;
const USAGE: &str =
    "usage: irqvm-iops [--secs T] [--depths 1,32] [--rounds R] [--bs BYTES] [DEV...]";

struct Args {
    secs: f64,
    depths: Vec<usize>,
    rounds: usize,
    bs: usize,
    devs: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        secs: 5.0,
        depths: vec![1, 32],
        rounds: 1,
        bs: 4096,
        devs: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value; {USAGE}"));
        match arg.as_str() {
            "--secs" => {
                let v = val("--secs")?;
                a.secs = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > 0.0 && s.is_finite())
                    .ok_or(format!("--secs {v}: want a positive number of seconds"))?;
            }
            "--depths" => {
                let v = val("--depths")?;
                a.depths = v
                    .split(',')
                    .map(|d| d.parse().ok().filter(|d| (1..=256).contains(d)))
                    .collect::<Option<Vec<usize>>>()
                    .ok_or(format!("--depths {v}: want a comma list of 1..=256"))?;
            }
            "--rounds" => {
                let v = val("--rounds")?;
                a.rounds = v
                    .parse()
                    .ok()
                    .filter(|r| (1..=1000).contains(r))
                    .ok_or(format!("--rounds {v}: want 1..=1000"))?;
            }
            "--bs" => {
                let v = val("--bs")?;
                a.bs = v
                    .parse()
                    .ok()
                    .filter(|b: &usize| *b >= 512 && b.is_power_of_two() && *b <= 1 << 20)
                    .ok_or(format!("--bs {v}: want a power of two in 512..=1048576"))?;
            }
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}; {USAGE}")),
            _ => a.devs.push(arg),
        }
    }
    if a.devs.is_empty() {
        let mut v: Vec<String> = std::fs::read_dir("/sys/block")
            .map_err(|e| format!("/sys/block: {e} (is sysfs mounted?)"))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("vd"))
            .map(|n| format!("/dev/{n}"))
            .collect();
        v.sort();
        if v.is_empty() {
            return Err("no /sys/block/vd* disks found; attach a virtio-blk disk".into());
        }
        a.devs = v;
    }
    Ok(a)
}

/// Small, fast PRNG for offsets (xorshift64*, Vigna 2016); quality is irrelevant here.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// A `len`-byte window of `storage` that starts on an `ALIGN` boundary (O_DIRECT needs
/// aligned buffers); `storage` must be at least `len + ALIGN` bytes.
fn aligned(storage: &mut [u8], len: usize) -> Option<&mut [u8]> {
    let skip = storage.as_ptr().align_offset(ALIGN);
    storage.get_mut(skip..skip.checked_add(len)?)
}

/// The virtio device name (`virtioN`) behind a block device, from its sysfs `device` link.
fn virtio_name(disk: &str) -> Option<String> {
    let link = std::fs::read_link(format!("/sys/block/{disk}/device")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

/// Does an interrupt action name belong to completions of virtio device `v`?
fn is_completion_line(name: &str, v: &str) -> bool {
    if v.is_empty() {
        return false;
    }
    match name.strip_prefix(v) {
        Some("") => true,
        Some(rest) => rest.starts_with('-') && !rest.ends_with("-config"),
        None => false,
    }
}

/// Sum over CPUs of the /proc/interrupts lines of device `v`, and the names counted.
fn irq_count(v: &str) -> (u64, Vec<String>) {
    let text = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    let mut lines = text.lines();
    let ncpu = lines
        .next()
        .map(|h| h.split_whitespace().count())
        .unwrap_or(0);
    let mut total = 0u64;
    let mut names = Vec::new();
    for line in lines {
        let Some((_, rest)) = line.split_once(':') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Counts, then chip, hwirq-trigger, then one or more action names ("a, b").
        let counts: Vec<u64> = fields
            .iter()
            .take(ncpu)
            .map_while(|f| f.parse().ok())
            .collect();
        if counts.len() != ncpu {
            continue;
        }
        let actions = fields.get(ncpu + 2..).unwrap_or_default();
        let matched: Vec<&str> = actions
            .iter()
            .map(|a| a.trim_end_matches(','))
            .filter(|a| is_completion_line(a, v))
            .collect();
        if !matched.is_empty() {
            total += counts.iter().sum::<u64>();
            names.extend(matched.iter().map(|s| s.to_string()));
        }
    }
    (total, names)
}

struct Point {
    requests: u64,
    errors: u64,
    secs: f64,
}

/// D threads doing BS-byte random O_DIRECT preads until `secs` have passed.
fn run_point(dev: &str, depth: usize, bs: usize, secs: f64) -> Result<Point, String> {
    // A block device's metadata says size 0; seeking to its end gives the size.
    let size = File::open(dev)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .map_err(|e| format!("{dev}: {e}"))?;
    let blocks = size / bs as u64;
    if blocks == 0 {
        return Err(format!(
            "{dev}: {size} bytes is smaller than one {bs}-byte block"
        ));
    }
    // Open everything first: once a thread waits on the start barrier, every other
    // participant must arrive, so nothing may fail after the first spawn.
    let files = (0..depth)
        .map(|_| {
            OpenOptions::new()
                .read(true)
                .custom_flags(O_DIRECT)
                .open(dev)
                .map_err(|e| format!("{dev}: open with O_DIRECT: {e}"))
        })
        .collect::<Result<Vec<File>, String>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(depth + 1));
    let mut handles = Vec::with_capacity(depth);
    for (t, file) in files.into_iter().enumerate() {
        let mut storage = vec![0u8; bs + ALIGN];
        let (stop, start) = (stop.clone(), start.clone());
        let spawned = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((t as u64 + 1) << 32) | 1);
                let (mut n, mut err) = (0u64, 0u64);
                start.wait();
                let Some(buf) = aligned(&mut storage, bs) else {
                    return (0, 1);
                };
                while !stop.load(Ordering::Relaxed) {
                    let off = (rng.next() % blocks) * bs as u64;
                    match file.read_at(buf, off) {
                        Ok(r) if r == bs => n += 1,
                        _ => err += 1,
                    }
                }
                (n, err)
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                // Threads already spawned wait on the barrier for good: give up the run.
                eprintln!("irqvm-iops: {dev}: spawning reader thread {t}: {e}");
                std::process::exit(1);
            }
        }
    }
    start.wait();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let (mut requests, mut errors) = (0, 0);
    for h in handles {
        let (n, e) = h.join().map_err(|_| "a reader thread panicked")?;
        requests += n;
        errors += e;
    }
    Ok(Point {
        requests,
        errors,
        secs: t0.elapsed().as_secs_f64(),
    })
}

/// Guest-side cost of one system call and of one 4 KiB read that does no I/O (from
/// /dev/zero), in microseconds: the floor under every request, whatever the VMM does.
fn baseline(round: usize) -> String {
    let per_call = |f: &mut dyn FnMut()| {
        let t0 = Instant::now();
        let mut n = 0u64;
        while t0.elapsed() < Duration::from_millis(500) {
            for _ in 0..16 {
                f();
            }
            n += 16;
        }
        t0.elapsed().as_secs_f64() * 1e6 / n as f64
    };
    let getpid_us = per_call(&mut || {
        std::hint::black_box(std::process::id());
    });
    let mut buf = vec![0u8; 4096];
    let zero = File::open("/dev/zero");
    let read_us = match zero {
        Ok(z) => per_call(&mut || {
            let _ = std::hint::black_box(z.read_at(&mut buf, 0));
        }),
        Err(_) => -1.0,
    };
    format!(
        "{{\"baseline\":true,\"round\":{round},\"getpid_us\":{getpid_us:.2},\"read_devzero_4k_us\":{read_us:.2}}}"
    )
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                o.push('\\');
                o.push(c)
            }
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Run one point and format its JSON line.
#[allow(clippy::too_many_arguments)]
fn point_json(
    dev: &str,
    disk: &str,
    serial: &str,
    virtio: &str,
    depth: usize,
    round: usize,
    a: &Args,
    ok: &mut bool,
) -> String {
    let (before, _) = irq_count(virtio);
    match run_point(dev, depth, a.bs, a.secs) {
        Ok(p) => {
            let (after, names) = irq_count(virtio);
            let irqs = after.saturating_sub(before);
            let per_req = if p.requests > 0 {
                irqs as f64 / p.requests as f64
            } else {
                0.0
            };
            *ok &= p.requests > 0;
            let names: Vec<String> = names.iter().map(|n| json_str(n)).collect();
            format!(
                "{{\"dev\":{},\"serial\":{},\"virtio\":{},\"round\":{round},\"depth\":{depth},\"bs\":{},\"secs\":{:.3},\"requests\":{},\"errors\":{},\"iops\":{:.1},\"irqs\":{irqs},\"irqs_per_req\":{:.4},\"irq_lines\":[{}]}}",
                json_str(disk),
                json_str(serial),
                json_str(virtio),
                a.bs,
                p.secs,
                p.requests,
                p.errors,
                p.requests as f64 / p.secs,
                per_req,
                names.join(",")
            )
        }
        Err(e) => {
            *ok = false;
            format!(
                "{{\"dev\":{},\"serial\":{},\"round\":{round},\"depth\":{depth},\"error\":{}}}",
                json_str(disk),
                json_str(serial),
                json_str(&e)
            )
        }
    }
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("irqvm-iops: {e}");
            std::process::exit(2);
        }
    };
    let mut ok = true;
    let disks: Vec<(String, String, String, String)> = a
        .devs
        .iter()
        .map(|dev| {
            let disk = dev.rsplit('/').next().unwrap_or(dev).to_string();
            let serial = std::fs::read_to_string(format!("/sys/block/{disk}/serial"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            let virtio = virtio_name(&disk).unwrap_or_default();
            (dev.clone(), disk, serial, virtio)
        })
        .collect();
    // Rounds interleave the disks and depths in time, so a change in host load hits every
    // configuration alike instead of whichever point ran at that moment.
    for round in 0..a.rounds {
        println!("IRQVM-IOPS: {}", baseline(round));
        for (dev, disk, serial, virtio) in &disks {
            for &depth in &a.depths {
                let line = point_json(dev, disk, serial, virtio, depth, round, &a, &mut ok);
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "IRQVM-IOPS: {line}");
                let _ = out.flush();
            }
        }
    }
    std::process::exit(if ok { 0 } else { 1 });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msix_queue_vectors_count_and_config_vector_does_not() {
        assert!(is_completion_line("virtio0-req.0", "virtio0"));
        assert!(!is_completion_line("virtio0-config", "virtio0"));
    }

    #[test]
    fn intx_line_named_after_the_device_counts_but_other_devices_do_not() {
        assert!(is_completion_line("virtio1", "virtio1"));
        assert!(!is_completion_line("virtio10", "virtio1"));
        assert!(!is_completion_line("virtio10-req.0", "virtio1"));
        assert!(
            !is_completion_line("virtio0", ""),
            "no device, nothing counted"
        );
    }

    #[test]
    fn read_buffer_is_page_aligned_and_full_length() {
        let mut storage = vec![0u8; 4096 + ALIGN];
        let b = aligned(&mut storage, 4096).unwrap();
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        assert_eq!(b.len(), 4096);
    }

    #[test]
    fn json_strings_escape_quotes_and_control_characters() {
        assert_eq!(json_str("a\"b\\\n"), "\"a\\\"b\\\\\\u000a\"");
    }
}
