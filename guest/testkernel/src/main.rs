//! irqvm test kernel: a freestanding x86-64 kernel booted through the PVH entry that checks
//! the virtual interrupt controllers (IOAPIC, LAPIC, 8259A PIC, MSI) against their datasheets
//! and measures delivery costs. It runs under irqvm (`--testdev`, all cases) and unchanged
//! under QEMU (`-M microvm -kernel testkernel.elf`, the portable cases).
//!
//! Output: one `PASS name` / `FAIL name: why` / `SKIP name: why` / `XFAIL name: host: why`
//! line per case on COM1 and on the test device's REPORT port, then
//! `N passed, N failed, N skipped`, then EXIT (0 if nothing failed, else 1).

#![no_std]
#![no_main]
#![allow(clippy::missing_safety_doc)]
// Driver modules define complete register sets from the datasheets, not all used.
#![allow(dead_code)]

mod apic;
mod arch;
mod bench;
mod boot;
mod cases;
mod desc;
mod fmtnum;
mod ioapic;
mod mem;
mod pci;
mod pic;
mod serial;
mod smp;
mod testdev;
mod tsc;
mod vblk_bench;
mod vblk_cases;
mod virtio;

use core::fmt::{self, Write};
pub use fmtnum::{D, I, S, X};
use core::sync::atomic::{AtomicUsize, Ordering};

/// A short formatted message without an allocator.
pub struct Msg {
    buf: [u8; 192],
    len: usize,
}

impl Msg {
    pub const fn new() -> Self {
        Msg { buf: [0; 192], len: 0 }
    }
    pub fn from_args(a: fmt::Arguments) -> Self {
        let mut m = Msg::new();
        let _ = m.write_fmt(a);
        m
    }
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

impl Write for Msg {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

/// Writes a report line to COM1 and the test device's REPORT port.
struct Reporter;

impl Write for Reporter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                serial::putb(b'\r');
            }
            serial::putb(b);
            testdev::report_byte(b);
        }
        Ok(())
    }
}

pub fn report(a: fmt::Arguments) {
    serial::with_lock(|| {
        let _ = Reporter.write_fmt(a);
        let _ = Reporter.write_str("\n");
    });
}

/// Kernel command line (from hvm_start_info.cmdline_paddr), copied at boot.
static mut CMDLINE: [u8; 512] = [0; 512];
static CMDLINE_LEN: AtomicUsize = AtomicUsize::new(0);

pub fn cmdline() -> &'static str {
    let n = CMDLINE_LEN.load(Ordering::Relaxed);
    unsafe {
        let p = &raw const CMDLINE;
        core::str::from_utf8(&(&*p)[..n]).unwrap_or("")
    }
}

/// Value of `key=value` on the command line.
pub fn cmdline_arg(key: &str) -> Option<&'static str> {
    cmdline().split_ascii_whitespace().find_map(|w| {
        let (k, v) = w.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h).
const HVM_START_MAGIC: u32 = 0x336e_c578;

/// hvm_start_info.rsdp_paddr (0 when the loader gave none).
static RSDP: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Physical address of the ACPI RSDP the loader reported, if any.
pub fn rsdp() -> Option<u64> {
    match RSDP.load(Ordering::Relaxed) {
        0 => None,
        a => Some(a),
    }
}

fn read_start_info(paddr: u64) {
    if paddr == 0 || paddr >= 0x1_0000_0000 {
        return;
    }
    unsafe {
        let magic = core::ptr::read_volatile(paddr as *const u32);
        if magic != HVM_START_MAGIC {
            println!("hvm_start_info at {} has bad magic {}", X(paddr), X(magic as u64));
            return;
        }
        RSDP.store(core::ptr::read_volatile((paddr + 32) as *const u64), Ordering::Relaxed);
        let cmd = core::ptr::read_volatile((paddr + 24) as *const u64);
        if cmd == 0 || cmd >= 0x1_0000_0000 {
            return;
        }
        let dst = &raw mut CMDLINE;
        let mut n = 0;
        while n < 512 {
            let b = core::ptr::read_volatile((cmd + n as u64) as *const u8);
            if b == 0 {
                break;
            }
            (&mut *dst)[n] = b;
            n += 1;
        }
        CMDLINE_LEN.store(n, Ordering::SeqCst);
    }
}

pub fn fatal_exception(f: &desc::Frame, cpu: usize) {
    report(format_args!(
        "FAIL {}: CPU {} exception {} error {} at rip {} rsp {} rax {} rdx {}",
        S(cases::current()),
        D(cpu as u64),
        D(f.vector),
        X(f.error),
        X(f.rip),
        X(f.rsp),
        X(f.rax),
        X(f.rdx)
    ));
    if f.vector == 14 {
        let cr2: u64;
        unsafe { core::arch::asm!("mov {}, cr2", out(reg) cr2) };
        println!("cr2 = {}", X(cr2));
    }
    testdev::exit(3);
}

#[no_mangle]
extern "C" fn kmain(start_info: u64) -> ! {
    serial::init();
    read_start_info(start_info);
    println!("irqvm testkernel: cmdline '{}'", S(cmdline()));
    desc::init_idt();
    desc::init_cpu(0);
    // Remap the 8259As away from the exception vectors and mask them; the cases that test
    // the PIC re-initialise it.
    if pic::present() {
        pic::init(0x20, 0x28, false);
    }
    testdev::detect();
    let (khz, src) = tsc::init();
    println!(
        "testdev {} (mode {} host {} ncpus {}), lines {}, TSC {} kHz ({})",
        S(if testdev::present() { "present" } else { "absent" }),
        X(testdev::mode() as u64),
        X(testdev::host() as u64),
        D(testdev::ncpus() as u64),
        S(if testdev::lines_available() { "yes" } else { "no" }),
        D(khz),
        S(src)
    );
    apic::enable(0, false);
    smp::APIC_ID[0].store(apic::id(), Ordering::SeqCst);
    ioapic::mask_all();
    arch::sti();

    let want = cmdline_arg("irqvm.ncpus")
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or_else(testdev::ncpus) as usize;
    if want >= 2 {
        let up = smp::start_aps(want);
        println!("{} of {} CPUs up", D(up as u64), D(want as u64));
    }

    let status = match cmdline_arg("irqvm.mode") {
        Some("bench") => bench::run(),
        _ => cases::run_all(),
    };
    testdev::exit(status)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    // Only the location: formatting the message could run core's SSE integer formatting.
    match info.location() {
        Some(l) => report(format_args!(
            "FAIL {}: panic at {}:{}",
            S(cases::current()),
            S(l.file()),
            D(l.line() as u64)
        )),
        None => report(format_args!("FAIL {}: panic", S(cases::current()))),
    }
    testdev::exit(2)
}
