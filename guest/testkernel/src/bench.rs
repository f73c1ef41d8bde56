//! Delivery-cost measurements (`irqvm.mode=bench` on the kernel command line).
//!
//! Each path is timed with the TSC over `N` samples from the trigger (the instruction that
//! causes the interrupt) to the first instruction of the handler (`desc::LAST_TSC`), and
//! printed as one JSON line on COM1 and the test device's REPORT port:
//! `{"path":"ioapic_edge","n":10000,"min_ns":..,"median_ns":..,"p99_ns":..,...}`.
//! Paths that need the irqvm test device are skipped without it; the PIO round trip, the
//! self IPI and the 16550 THR-empty interrupt also run under QEMU.

use crate::arch::{self, inb, outb, outl, rdtsc};
use crate::desc::{self, Frame};
use crate::fmtnum::{D, S};
use crate::{apic, ioapic, pic, println, report, serial, smp, testdev, tsc};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, Ordering};

pub(crate) const N: usize = 10_000;
const V: u8 = 0x70;
/// The 8259A's ICW2 only sets vector bits 7:3, so IRQ 3 with base 0x70 arrives at 0x73.
const V_PIC: u8 = 0x73;
/// Pin for the IOAPIC paths: the first line pin the cases use under irqvm (a GSI no virtio
/// disk shares, see `cases::init_pins`), ISA line 10 with QEMU's pc-testdev.
fn gsi() -> u32 {
    if testdev::present() {
        crate::cases::pin(0)
    } else {
        10
    }
}
const PIC_IRQ: u32 = 3;

struct Samples(UnsafeCell<[u64; N]>);
unsafe impl Sync for Samples {}
static SAMPLES: Samples = Samples(UnsafeCell::new([0; N]));

pub(crate) fn samples() -> &'static mut [u64; N] {
    // Only the BSP's main code touches the buffer.
    unsafe { &mut *SAMPLES.0.get() }
}

pub(crate) struct Tally {
    pub(crate) done: u32,
    pub(crate) skipped: u32,
}

fn emit(t: &mut Tally, path: &str, n: usize, missed: u32) {
    emit_extra(t, path, n, missed, format_args!(""));
}

/// `emit` with extra JSON members (`extra` starts with a comma, or is empty).
pub(crate) fn emit_extra(t: &mut Tally, path: &str, n: usize, missed: u32, extra: core::fmt::Arguments) {
    let s = &mut samples()[..n];
    if n == 0 {
        t.skipped += 1;
        report(format_args!("SKIP bench_{}: no samples ({} missed)", S(path), D(missed as u64)));
        return;
    }
    s.sort_unstable();
    let (min, med, p99) = (s[0], s[n / 2], s[(n * 99 / 100).min(n - 1)]);
    t.done += 1;
    report(format_args!(
        "{{\"path\":\"{}\",\"n\":{},\"min_ns\":{},\"median_ns\":{},\"p99_ns\":{},\"min_cycles\":{},\"median_cycles\":{},\"p99_cycles\":{},\"missed\":{},\"tsc_khz\":{}{}}}",
        S(path),
        D(n as u64),
        D(tsc::cycles_to_ns(min)),
        D(tsc::cycles_to_ns(med)),
        D(tsc::cycles_to_ns(p99)),
        D(min),
        D(med),
        D(p99),
        D(missed as u64),
        D(tsc::khz()),
        extra
    ));
}

pub(crate) fn skip(t: &mut Tally, path: &str, why: &str) {
    t.skipped += 1;
    report(format_args!("SKIP bench_{}: {}", S(path), S(why)));
}

/// Spin without exits until the handler for `V` has run `target` times (bounded).
fn wait_count(target: u32) -> bool {
    wait_count_on(V, target)
}

fn wait_count_on(v: u8, target: u32) -> bool {
    let end = rdtsc() + tsc::us_to_cycles(200_000);
    while desc::total(v) < target {
        if rdtsc() > end {
            return false;
        }
        arch::pause();
    }
    true
}

/// Time `trigger` -> handler entry, `N` times. With `until_done`, the end point is instead
/// the return to this loop (handler including its EOI work and the IRET).
fn run_path(t: &mut Tally, path: &str, until_done: bool, trigger: impl Fn()) {
    run_path_on(t, path, V, until_done, trigger)
}

fn run_path_on(t: &mut Tally, path: &str, v: u8, until_done: bool, trigger: impl Fn()) {
    let mut n = 0;
    let mut missed = 0;
    desc::reset_counts();
    for _ in 0..N {
        let before = desc::total(v);
        let t0 = rdtsc();
        trigger();
        if !wait_count_on(v, before + 1) {
            missed += 1;
            if missed > 100 {
                break;
            }
            continue;
        }
        let end = if until_done { rdtsc() } else { desc::LAST_TSC[v as usize].load(Ordering::SeqCst) };
        samples()[n] = end.wrapping_sub(t0);
        n += 1;
    }
    emit(t, path, n, missed);
}

fn h_eoi(_f: &mut Frame, _cpu: usize) {
    apic::eoi();
}

/// Level path handler: the device "clears its interrupt condition" (deasserts the line),
/// then EOI (which, for a level vector, is broadcast to the IOAPIC).
fn h_level(_f: &mut Frame, _cpu: usize) {
    if testdev::present() {
        // ARG0/ARG1 (GSI, source) persist; two PIO exits.
        outl(testdev::PORT + 0x0c, 0);
        outl(testdev::PORT, testdev::LINE_SET);
    } else {
        testdev::line_set(gsi(), 0, false);
    }
    apic::eoi();
}

fn h_pic(_f: &mut Frame, _cpu: usize) {
    pic::eoi(0);
}

fn h_serial(_f: &mut Frame, _cpu: usize) {
    // Reading IIR clears the THRE interrupt (16550 datasheet, IIR priority table).
    let _ = inb(serial::COM1 + serial::IIR);
    apic::eoi();
}

/// One edge on `gsi` with as few exits as possible: one COMMAND write with the test device
/// (ARG0/ARG1 set beforehand), two byte writes with pc-testdev.
fn fast_pulse(gsi: u32) {
    if testdev::present() {
        outl(testdev::PORT, testdev::LINE_PULSE);
    } else {
        testdev::line_pulse(gsi, 0);
    }
}

fn prime_pulse(gsi: u32) {
    if testdev::present() {
        testdev::command(testdev::LINE_PULSE, [gsi, 0, 0, 0]);
    } else {
        testdev::line_pulse(gsi, 0);
    }
}

pub fn run() -> u32 {
    let mut t = Tally { done: 0, skipped: 0 };
    crate::cases::init_pins();
    println!(
        "INFO bench: {} samples per path, TSC {} kHz{}",
        D(N as u64),
        D(tsc::khz()),
        S(if tsc::known() { "" } else { " (assumed: ns figures are estimates)" })
    );
    let bsp = smp::APIC_ID[0].load(Ordering::SeqCst);

    // Empty PIO exit round trip to the VMM (testdev DOORBELL; pc-testdev's 0xe0 port under
    // QEMU). Measured around the OUT itself.
    if testdev::present() || testdev::lines_available() {
        let port = if testdev::present() { testdev::DOORBELL } else { 0xe0 };
        for s in samples().iter_mut() {
            let t0 = rdtsc();
            outl(port, 0);
            *s = rdtsc() - t0;
        }
        emit(&mut t, "pio_exit", N, 0);
    } else {
        skip(&mut t, "pio_exit", "no test device port");
    }

    // Self IPI (ICR write, or the x2APIC SELF IPI MSR) -> handler.
    desc::set_handler(V, Some(h_eoi));
    run_path(&mut t, "self_ipi", false, || apic::self_ipi(V));

    // The same followed by an empty PIO exit to the VMM: shows whether the pending IPI is
    // injected at the next VM entry after a userspace exit (on PVM the plain self IPI waits
    // much longer than that).
    if testdev::present() {
        run_path(&mut t, "self_ipi_then_pio_exit", false, || {
            apic::self_ipi(V);
            outl(testdev::DOORBELL, 0);
        });
    }

    // IOAPIC edge: LINE_PULSE -> handler.
    let g = gsi();
    if testdev::lines_available() {
        ioapic::set(g, V as u32, bsp);
        prime_pulse(g);
        wait_count(1);
        run_path(&mut t, "ioapic_edge", false, || fast_pulse(g));
        ioapic::mask(g);

        // IOAPIC level: LINE_SET 1 -> handler (deassert + EOI) -> back, end to end.
        desc::set_handler(V, Some(h_level));
        ioapic::set(g, V as u32 | ioapic::LEVEL, bsp);
        if testdev::present() {
            testdev::command(testdev::LINE_SET, [g, 0, 0, 0]);
        }
        run_path(&mut t, "ioapic_level_eoi", true, || {
            if testdev::present() {
                outl(testdev::PORT + 0x0c, 1);
                outl(testdev::PORT, testdev::LINE_SET);
            } else {
                testdev::line_set(g, 0, true);
            }
        });
        ioapic::mask(g);
        desc::set_handler(V, Some(h_eoi));
    } else {
        skip(&mut t, "ioapic_edge", "needs line control (testdev or pc-testdev)");
        skip(&mut t, "ioapic_level_eoi", "needs line control (testdev or pc-testdev)");
    }

    // MSI: MSI_SIGNAL -> handler.
    if testdev::present() {
        testdev::command(testdev::MSI_SIGNAL, [0xfee0_0000 | (bsp << 12), 0, V as u32, 0]);
        wait_count(1);
        run_path(&mut t, "msi", false, || outl(testdev::PORT, testdev::MSI_SIGNAL));
    } else {
        skip(&mut t, "msi", "needs the irqvm test device");
    }

    // MSI-X via irqfd: MSIX_RAISE of the test PCI function's entry 0 -> the VMM writes the
    // vector's irqfd -> KVM injects -> handler.
    match crate::cases::msix::prepare() {
        Some(d) => {
            d.m.set_enable(true, false);
            d.m.program_fixed(0, bsp as u8, V, false);
            testdev::command(testdev::MSIX_RAISE, [0, 0, 0, 0]);
            wait_count(1);
            run_path(&mut t, "msix_irqfd", false, || outl(testdev::PORT, testdev::MSIX_RAISE));
            d.m.set_enable(false, true);
        }
        None => skip(&mut t, "msix_irqfd", "needs the irqvm test PCI function (--testdev)"),
    }

    // 8259A: IRQ 3 edge through LINT0 ExtINT -> handler (PIC EOI in the handler).
    if testdev::lines_available() && pic::present() && !apic::is_x2apic() {
        pic::init(V_PIC & 0xf8, 0x78, false);
        apic::set_lint0_extint(true);
        pic::set_mask(!(1u16 << PIC_IRQ));
        desc::set_handler(V_PIC, Some(h_pic));
        prime_pulse(PIC_IRQ);
        wait_count_on(V_PIC, 1);
        run_path_on(&mut t, "pic_edge", V_PIC, false, || fast_pulse(PIC_IRQ));
        desc::set_handler(V_PIC, None);
        pic::set_mask(0xffff);
        apic::set_lint0_extint(false);
        pic::init(0x20, 0x28, false);
    } else {
        skip(&mut t, "pic_edge", "needs line control and an 8259A");
    }

    // 16550 THR empty (IER bit 1) on IRQ 4 through IOAPIC pin 4: write a byte to THR,
    // time until the handler (portable: QEMU too). Nothing else may print meanwhile. The
    // UART is in loopback mode (MCR bit 4) so the 10,000 bytes do not reach the console;
    // the transmitter and its THRE interrupt work as usual (16550 datasheet, MCR bit 4).
    desc::set_handler(V, Some(h_serial));
    ioapic::set(4, V as u32, bsp);
    let ok = serial::with_lock(|| {
        let end = rdtsc() + tsc::us_to_cycles(100_000);
        while inb(serial::COM1 + serial::LSR) & 0x40 == 0 && rdtsc() < end {}
        desc::reset_counts();
        outb(serial::COM1 + serial::MCR, 0x1b);
        outb(serial::COM1 + serial::IER, 0x02);
        let first = wait_count(1);
        outb(serial::COM1, b'x');
        let looped = first && wait_count(2);
        // vm-superio (irqvm's UART) raises no THRE interrupt in loopback; then transmit
        // NUL bytes for real (terminals ignore them).
        let byte = if looped {
            b'x'
        } else {
            outb(serial::COM1 + serial::MCR, 0x0b);
            0
        };
        if first {
            run_path_quiet(|| outb(serial::COM1, byte));
        }
        outb(serial::COM1 + serial::IER, 0);
        outb(serial::COM1 + serial::MCR, 0x0b);
        // Drain what looped back into the receiver.
        for _ in 0..64 {
            if inb(serial::COM1 + serial::LSR) & 1 == 0 {
                break;
            }
            let _ = inb(serial::COM1);
        }
        first
    });
    ioapic::mask(4);
    if ok {
        emit_quiet(&mut t, "serial_thre");
    } else {
        skip(&mut t, "serial_thre", "enabling THRE raised no IRQ 4");
    }

    // virtio-blk completion interrupts (vblk_bench.rs); skipped without disks.
    crate::vblk_bench::run(&mut t);

    // Self IPI again in x2APIC mode (WRMSR to the SELF IPI register instead of an MMIO ICR
    // write).
    if crate::cases::enter_x2apic() {
        desc::set_handler(V, Some(h_eoi));
        run_path(&mut t, "self_ipi_x2apic", false, || apic::self_ipi(V));
    } else {
        skip(&mut t, "self_ipi_x2apic", "no x2APIC");
    }

    desc::set_handler(V, None);
    report(format_args!(
        "{} passed, 0 failed, {} skipped",
        D(t.done as u64),
        D(t.skipped as u64)
    ));
    0
}

/// The serial path cannot print between samples; results are kept for `emit_quiet`.
static QUIET: AtomicU32 = AtomicU32::new(0);
static QUIET_MISSED: AtomicU32 = AtomicU32::new(0);

fn run_path_quiet(trigger: impl Fn()) {
    let mut n = 0;
    let mut missed = 0;
    desc::reset_counts();
    for _ in 0..N {
        let before = desc::total(V);
        let t0 = rdtsc();
        trigger();
        if !wait_count(before + 1) {
            missed += 1;
            if missed > 100 {
                break;
            }
            continue;
        }
        samples()[n] = desc::LAST_TSC[V as usize].load(Ordering::SeqCst).wrapping_sub(t0);
        n += 1;
    }
    QUIET.store(n as u32, Ordering::SeqCst);
    QUIET_MISSED.store(missed, Ordering::SeqCst);
}

fn emit_quiet(t: &mut Tally, path: &str) {
    emit(
        t,
        path,
        QUIET.load(Ordering::SeqCst) as usize,
        QUIET_MISSED.load(Ordering::SeqCst),
    );
}
