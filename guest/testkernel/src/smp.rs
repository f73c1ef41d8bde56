//! Application processor start-up: INIT, then two STARTUP IPIs pointing at the real-mode
//! trampoline (Intel SDM vol. 3, 12.4.4.1 "Typical BSP Initialization Sequence"; MP spec
//! 1.4, B.4 "Application Processor Startup"). APs then idle in `sti; hlt` and run commands
//! the BSP posts in a mailbox.

use crate::{apic, arch, boot, desc, tsc};
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

pub const WAKE_VECTOR: u8 = 0xf0;

static BOOTING: AtomicUsize = AtomicUsize::new(0);
static UP: AtomicUsize = AtomicUsize::new(1);
pub static APIC_ID: [AtomicU32; desc::MAX_CPUS] = [const { AtomicU32::new(0) }; desc::MAX_CPUS];

/// Mailbox per AP: 0 idle, else a command; the AP writes 0 when done.
static CMD: [AtomicU32; desc::MAX_CPUS] = [const { AtomicU32::new(0) }; desc::MAX_CPUS];
pub const CMD_X2APIC: u32 = 1;

pub fn cpus_up() -> usize {
    UP.load(Ordering::SeqCst)
}

/// Start CPUs 1..n (APIC IDs are assumed to be 0..n-1, as irqvm and QEMU assign them).
pub fn start_aps(n: usize) -> usize {
    let n = n.min(desc::MAX_CPUS);
    unsafe {
        let start = &boot::trampoline_start as *const u8;
        let len = (&boot::trampoline_end as *const u8 as usize) - start as usize;
        core::ptr::copy_nonoverlapping(start, boot::TRAMPOLINE as *mut u8, len);
    }
    for cpu in 1..n {
        unsafe { *(&raw mut boot::ap_stack_top) = desc::ap_stack_top(cpu) };
        BOOTING.store(cpu, Ordering::SeqCst);
        let before = UP.load(Ordering::SeqCst);
        apic::send_ipi(cpu as u32, apic::DM_INIT | apic::LEVEL_ASSERT);
        tsc::delay_us(10_000);
        for _ in 0..2 {
            apic::send_ipi(cpu as u32, apic::DM_STARTUP | (boot::TRAMPOLINE >> 12) as u32);
            let end = arch::rdtsc() + tsc::us_to_cycles(200_000);
            while UP.load(Ordering::SeqCst) == before && arch::rdtsc() < end {
                arch::pause();
            }
            if UP.load(Ordering::SeqCst) != before {
                break;
            }
        }
    }
    UP.load(Ordering::SeqCst)
}

/// Run a command on AP `cpu` and wait (bounded) for it to finish.
pub fn run_on(cpu: usize, cmd: u32) -> bool {
    CMD[cpu].store(cmd, Ordering::SeqCst);
    apic::send_ipi(APIC_ID[cpu].load(Ordering::SeqCst), WAKE_VECTOR as u32);
    let end = arch::rdtsc() + tsc::us_to_cycles(100_000);
    while CMD[cpu].load(Ordering::SeqCst) != 0 {
        if arch::rdtsc() > end {
            return false;
        }
        arch::pause();
    }
    true
}

#[no_mangle]
extern "C" fn ap_main() -> ! {
    let cpu = BOOTING.load(Ordering::SeqCst);
    desc::init_cpu(cpu);
    apic::enable(cpu, false);
    APIC_ID[cpu].store(apic::id(), Ordering::SeqCst);
    UP.fetch_add(1, Ordering::SeqCst);
    loop {
        arch::cli();
        match CMD[cpu].load(Ordering::SeqCst) {
            0 => {}
            CMD_X2APIC => {
                // xAPIC -> x2APIC keeps the APIC's state (SDM 11.12.5).
                arch::wrmsr(0x1b, arch::rdmsr(0x1b) | (1 << 10) | (1 << 11));
                apic::note_mode(cpu, true);
                CMD[cpu].store(0, Ordering::SeqCst);
            }
            _ => CMD[cpu].store(0, Ordering::SeqCst),
        }
        arch::sti_hlt();
    }
}
