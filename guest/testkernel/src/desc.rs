//! Descriptor tables and interrupt dispatch: per-CPU TSS with IST stacks, one IDT shared by
//! all CPUs, and `isr_dispatch`, which counts every vector per CPU and runs the handler a
//! test installed (SDM vol. 3, 7.10 "Interrupt Descriptor Table", 7.14.5 "Interrupt Stack
//! Table", 8.7 "Task Management in 64-bit Mode").

use crate::boot;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

pub const MAX_CPUS: usize = 4;
const IST_SIZE: usize = 16 * 1024;
/// IST1: external interrupts (vectors 32..255); IST2: NMI; IST3: exceptions; IST4: #DF.
const ISTS: usize = 4;
const CPU_STACK_BLOCK: usize = IST_SIZE * ISTS;

#[repr(C, align(4096))]
struct Stacks(UnsafeCell<[[u8; CPU_STACK_BLOCK]; MAX_CPUS]>);
unsafe impl Sync for Stacks {}
static STACKS: Stacks = Stacks(UnsafeCell::new([[0; CPU_STACK_BLOCK]; MAX_CPUS]));

/// Kernel (non-interrupt) stacks for application processors.
#[repr(C, align(4096))]
struct ApStacks(UnsafeCell<[[u8; 32 * 1024]; MAX_CPUS]>);
unsafe impl Sync for ApStacks {}
static AP_STACKS: ApStacks = ApStacks(UnsafeCell::new([[0; 32 * 1024]; MAX_CPUS]));

pub fn ap_stack_top(cpu: usize) -> u64 {
    AP_STACKS.0.get() as u64 + ((cpu + 1) * 32 * 1024) as u64
}

/// 64-bit TSS (SDM vol. 3, figure 8-11).
#[repr(C, packed)]
struct Tss {
    _r0: u32,
    rsp: [u64; 3],
    _r1: u64,
    ist: [u64; 7],
    _r2: u64,
    _r3: u16,
    iomap_base: u16,
}

struct Tsses(UnsafeCell<[Tss; MAX_CPUS]>);
unsafe impl Sync for Tsses {}
const TSS0: Tss = Tss {
    _r0: 0,
    rsp: [0; 3],
    _r1: 0,
    ist: [0; 7],
    _r2: 0,
    _r3: 0,
    iomap_base: 104,
};
static TSS: Tsses = Tsses(UnsafeCell::new([TSS0, TSS0, TSS0, TSS0]));

#[repr(C, align(16))]
struct Idt(UnsafeCell<[u64; 512]>);
unsafe impl Sync for Idt {}
static IDT: Idt = Idt(UnsafeCell::new([0; 512]));

/// Saved state as laid out by `isr_common` (boot.rs).
#[repr(C)]
#[derive(Debug)]
pub struct Frame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// A test's interrupt handler: runs on the IST stack with interrupts off. `cpu` is the
/// index of the CPU taking the interrupt.
pub type Handler = fn(frame: &mut Frame, cpu: usize);

/// Per-vector handlers; 0 = default (count + LAPIC EOI for vectors >= 32).
static HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];
/// Interrupt counts per CPU and vector.
pub static COUNT: [[AtomicU32; 256]; MAX_CPUS] = [const { [const { AtomicU32::new(0) }; 256] }; MAX_CPUS];
/// TSC at the latest entry per vector (for latency measurements).
pub static LAST_TSC: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];
/// Times an interrupt arrived while another handler was running on the same CPU (the IST
/// stack would be reused: this must stay 0).
pub static NESTED: AtomicU32 = AtomicU32::new(0);
static DEPTH: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

pub fn set_handler(vector: u8, h: Option<Handler>) {
    HANDLERS[vector as usize].store(h.map_or(0, |f| f as usize), Ordering::SeqCst);
}

pub fn count(cpu: usize, vector: u8) -> u32 {
    COUNT[cpu][vector as usize].load(Ordering::SeqCst)
}

pub fn total(vector: u8) -> u32 {
    (0..MAX_CPUS).map(|c| count(c, vector)).sum()
}

pub fn reset_counts() {
    for c in COUNT.iter() {
        for v in c.iter() {
            v.store(0, Ordering::SeqCst);
        }
    }
}

/// Fill CPU `cpu`'s TSS and GDT descriptor and load GDT/TR/IDT on the calling CPU.
pub fn init_cpu(cpu: usize) {
    unsafe {
        let stacks = STACKS.0.get() as u64 + (cpu * CPU_STACK_BLOCK) as u64;
        let tss = &mut (*TSS.0.get())[cpu];
        for i in 0..ISTS {
            tss.ist[i] = stacks + ((i + 1) * IST_SIZE) as u64;
        }
        let base = tss as *const Tss as u64;
        let limit = (core::mem::size_of::<Tss>() - 1) as u64;
        // 64-bit TSS descriptor (SDM vol. 3, figure 8-4): type 9 (available), P.
        let lo = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56);
        let gdt_tss = &raw mut boot::gdt_tss;
        (*gdt_tss)[cpu * 2] = lo;
        (*gdt_tss)[cpu * 2 + 1] = base >> 32;
        let sel: u16 = 0x20 + (cpu as u16) * 16;
        #[repr(C, packed)]
        struct Ptr {
            limit: u16,
            base: u64,
        }
        let idtr = Ptr {
            limit: 4095,
            base: IDT.0.get() as u64,
        };
        core::arch::asm!("ltr {0:x}", "lidt [{1}]", in(reg) sel, in(reg) &idtr, options(nostack));
    }
}

/// Build the IDT: every vector gets its stub, an interrupt gate (IF cleared on entry) and an
/// IST stack.
pub fn init_idt() {
    let stubs = unsafe { &boot::isr_stubs as *const u8 as u64 };
    let idt = unsafe { &mut *IDT.0.get() };
    for v in 0..256usize {
        let off = stubs + (v as u64) * 16;
        let ist: u64 = match v {
            2 => 2,
            8 => 4,
            0..=31 => 3,
            _ => 1,
        };
        idt[v * 2] = (off & 0xffff) | (0x08 << 16) | (ist << 32) | (0x8e << 40) | (((off >> 16) & 0xffff) << 48);
        idt[v * 2 + 1] = off >> 32;
    }
}

/// Which CPU is running: the IST stack the frame sits on tells (no LAPIC read needed).
fn cpu_of(frame: &Frame) -> usize {
    let base = STACKS.0.get() as usize;
    let a = frame as *const Frame as usize;
    a.wrapping_sub(base) / CPU_STACK_BLOCK
}

#[no_mangle]
extern "C" fn isr_dispatch(frame: &mut Frame) {
    let tsc = crate::arch::rdtsc();
    let vector = (frame.vector & 0xff) as usize;
    let cpu = cpu_of(frame).min(MAX_CPUS - 1);
    if DEPTH[cpu].fetch_add(1, Ordering::SeqCst) != 0 && vector >= 32 {
        NESTED.fetch_add(1, Ordering::SeqCst);
    }
    LAST_TSC[vector].store(tsc, Ordering::SeqCst);
    COUNT[cpu][vector].fetch_add(1, Ordering::SeqCst);
    let h = HANDLERS[vector].load(Ordering::SeqCst);
    if h != 0 {
        let f: Handler = unsafe { core::mem::transmute::<usize, Handler>(h) };
        f(frame, cpu);
    } else if vector < 32 && vector != 2 {
        crate::fatal_exception(frame, cpu);
    } else if vector >= 32 && vector != crate::apic::SPURIOUS as usize {
        crate::apic::eoi();
    }
    DEPTH[cpu].fetch_sub(1, Ordering::SeqCst);
}
