//! One vCPU thread: KVM_RUN, dispatch exits to the buses, stop on request.

use std::sync::Arc;

use devices::Bus;
use irqchip::{EoiSink, ExtIntSource};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

use crate::kick::{self, Kicker};
use vm_memory::{Bytes, GuestAddress};

use crate::vm::{Outcome, Shutdown};

pub struct VcpuContext {
    pub id: u8,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub mem: Arc<boot::GuestMem>,
    pub shutdown: Arc<Shutdown>,
    pub kicker: Arc<Kicker>,
    /// Userspace 8259 output (split irqchip), consulted by the boot vCPU only.
    pub extint: Option<Arc<dyn ExtIntSource>>,
    /// Userspace IOAPIC EOIs (split irqchip).
    pub eoi: Option<Arc<dyn EoiSink>>,
}

ioctl_iow_nr!(
    KVM_INTERRUPT,
    kvm_bindings::KVMIO,
    0x86,
    kvm_bindings::kvm_interrupt
);

/// Inject a pending 8259 interrupt into the boot vCPU (split irqchip), or ask KVM for an
/// interrupt window when the vCPU cannot take it now (IF=0, interrupt shadow, an injection
/// still pending). KVM_INTERRUPT queues the vector as an ExtINT through LINT0.
fn service_extint(fd: &mut VcpuFd, src: &dyn ExtIntSource) {
    if !src.extint_pending() {
        fd.get_kvm_run().request_interrupt_window = 0;
        return;
    }
    let run = fd.get_kvm_run();
    if run.ready_for_interrupt_injection != 0 && run.if_flag != 0 {
        run.request_interrupt_window = 0;
        if let Some(vector) = src.extint_ack() {
            let irq = kvm_bindings::kvm_interrupt { irq: vector as u32 };
            // SAFETY: KVM_INTERRUPT reads one kvm_interrupt from the pointer we pass.
            let r = unsafe { ioctl_with_ref(&*fd, KVM_INTERRUPT(), &irq) };
            if r < 0 {
                log::warn!(
                    "KVM_INTERRUPT vector {vector:#x} failed: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    } else {
        run.request_interrupt_window = 1;
    }
}

/// How many `int3`/`fwait` instructions irqvm completes for a host emulator that refused
/// them before it gives up (a loop would hang).
const MAX_INT3_INJECTIONS: u32 = 10_000;

pub fn run_loop(mut ctx: VcpuContext) {
    ctx.kicker.set_current(ctx.id);
    kick::register_current(ctx.fd.get_kvm_run() as *mut _);
    run_until_stopped(&mut ctx);
    kick::unregister_current();
    ctx.kicker.clear(ctx.id);
}

fn run_until_stopped(ctx: &mut VcpuContext) {
    let mut int3_injections = 0u32;
    let mut unknown_pio_logged = 0u32;
    let extint = if ctx.id == 0 {
        ctx.extint.clone()
    } else {
        None
    };
    while !ctx.shutdown.stopping() {
        if let Some(src) = &extint {
            service_extint(&mut ctx.fd, src.as_ref());
        }
        let exit = match ctx.fd.run() {
            Ok(e) => e,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                ctx.fd.set_kvm_immediate_exit(0);
                continue;
            }
            Err(e) => {
                ctx.shutdown.finish(Outcome::Failed(format!(
                    "vCPU {}: KVM_RUN failed: {e}",
                    ctx.id
                )));
                break;
            }
        };
        match exit {
            VcpuExit::IoIn(port, data) => {
                if !ctx.pio.read(port as u64, data) && unknown_pio_logged < 20 {
                    unknown_pio_logged += 1;
                    log::debug!("vCPU {}: read from unclaimed port {port:#x}", ctx.id);
                }
            }
            VcpuExit::IoOut(port, data) => {
                if !ctx.pio.write(port as u64, data) && unknown_pio_logged < 20 {
                    unknown_pio_logged += 1;
                    log::debug!("vCPU {}: write to unclaimed port {port:#x}", ctx.id);
                }
            }
            VcpuExit::MmioRead(addr, data) => {
                ctx.mmio.read(addr, data);
            }
            VcpuExit::MmioWrite(addr, data) => {
                ctx.mmio.write(addr, data);
            }
            VcpuExit::Hlt => {
                // With an in-kernel LAPIC, KVM handles HLT itself; a HLT exit means the vCPU
                // halted for good.
                log::info!("vCPU {} halted", ctx.id);
                break;
            }
            VcpuExit::Shutdown => {
                ctx.shutdown.finish(Outcome::TripleFault { cpu: ctx.id });
                break;
            }
            VcpuExit::SystemEvent(kind, _) => {
                ctx.shutdown.finish(match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Outcome::PowerOff,
                    _ => Outcome::Reset,
                });
                break;
            }
            VcpuExit::FailEntry(reason, cpu) => {
                ctx.shutdown.finish(Outcome::Failed(format!(
                    "vCPU {}: KVM could not enter the guest (hardware entry failure reason {reason:#x} on host CPU {cpu})",
                    ctx.id
                )));
                break;
            }
            VcpuExit::InternalError => {
                let info = internal_error(ctx);
                if info.is_fwait() && int3_injections < MAX_INT3_INJECTIONS {
                    int3_injections += 1;
                    match complete_fwait(&ctx.fd) {
                        Ok(what) => {
                            log::debug!("vCPU {}: fwait at {:#x}: {what}", ctx.id, info.rip);
                            continue;
                        }
                        Err(e) => log::warn!("vCPU {}: completing fwait failed: {e}", ctx.id),
                    }
                }
                if info.is_int3() && int3_injections < MAX_INT3_INJECTIONS {
                    int3_injections += 1;
                    match inject_breakpoint(&ctx.fd) {
                        Ok(()) => {
                            log::debug!(
                                "vCPU {}: injected #BP for int3 at {:#x}",
                                ctx.id,
                                info.rip
                            );
                            continue;
                        }
                        Err(e) => log::warn!("vCPU {}: injecting #BP failed: {e}", ctx.id),
                    }
                }
                ctx.shutdown
                    .finish(Outcome::InternalError(info.to_string()));
                break;
            }
            VcpuExit::IoapicEoi(vector) => {
                if let Some(eoi) = &ctx.eoi {
                    eoi.ioapic_eoi(vector);
                }
            }
            // The loop head injects the pending ExtINT.
            VcpuExit::IrqWindowOpen | VcpuExit::Intr => {}
            other => {
                log::warn!("vCPU {}: unhandled exit {other:?}", ctx.id);
            }
        }
    }
}

/// What irqvm could find out about a KVM_EXIT_INTERNAL_ERROR.
#[derive(Debug, Default)]
#[allow(dead_code)] // `data` is shown with {:?} in debug logs
pub struct InternalErrorInfo {
    pub cpu: u8,
    pub suberror: u32,
    pub rip: u64,
    pub bytes: Vec<u8>,
    pub data: Vec<u64>,
}

impl InternalErrorInfo {
    fn is_fwait(&self) -> bool {
        self.suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION
            && self.bytes.first() == Some(&0x9b)
    }

    fn is_int3(&self) -> bool {
        self.suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION
            && self.bytes.first() == Some(&0xcc)
    }
}

impl std::fmt::Display for InternalErrorInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.suberror {
            1 => "emulation failure: the host's KVM could not emulate a guest instruction",
            2 => "simultaneous exceptions",
            3 => "delivery event failure",
            4 => "unexpected exit reason",
            _ => "unknown suberror",
        };
        let bytes: Vec<String> = self.bytes.iter().map(|b| format!("{b:02x}")).collect();
        write!(
            f,
            "KVM internal error on vCPU {} (suberror {}: {what}) at RIP {:#x}, instruction bytes [{}]",
            self.cpu,
            self.suberror,
            self.rip,
            bytes.join(" ")
        )?;
        if self.suberror == 1 && crate::host::is_pvm() {
            write!(f, "; this host is PVM, whose emulator lacks some instructions: hide the instruction's CPUID feature from the guest kernel with clearcpuid= on its command line (on PVM the guest reads the host's CPUID directly, so irqvm's CPUID template cannot hide it), or avoid it in the guest; see resources/default-cmdline.txt")?;
        }
        Ok(())
    }
}

fn internal_error(ctx: &mut VcpuContext) -> InternalErrorInfo {
    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the active member.
    let (suberror, ndata, data) = {
        let run = ctx.fd.get_kvm_run();
        let i = unsafe { run.__bindgen_anon_1.internal };
        (i.suberror, i.ndata, i.data)
    };
    let mut info = InternalErrorInfo {
        cpu: ctx.id,
        suberror,
        data: data
            .iter()
            .take((ndata as usize).min(16))
            .copied()
            .collect(),
        ..Default::default()
    };
    if let (Ok(regs), Ok(sregs)) = (ctx.fd.get_regs(), ctx.fd.get_sregs()) {
        info.rip = regs.rip;
        let linear = sregs.cs.base.wrapping_add(regs.rip);
        if let Some(phys) = translate(&ctx.mem, &sregs, linear) {
            let mut buf = [0u8; 15];
            if ctx.mem.read_slice(&mut buf, GuestAddress(phys)).is_ok() {
                info.bytes = buf.to_vec();
            }
        }
    }
    info
}

/// Walk the guest's 4-level page tables (SDM vol. 3, 4.5) to translate a linear address.
fn translate(mem: &boot::GuestMem, sregs: &kvm_bindings::kvm_sregs, linear: u64) -> Option<u64> {
    const PG: u64 = 1 << 31;
    if sregs.cr0 & PG == 0 {
        return Some(linear & 0xffff_ffff);
    }
    let addr_mask = 0x000f_ffff_ffff_f000u64;
    let mut table = sregs.cr3 & addr_mask;
    for (level, shift) in [(4, 39u32), (3, 30), (2, 21), (1, 12)] {
        let idx = (linear >> shift) & 0x1ff;
        let entry: u64 = mem.read_obj(GuestAddress(table + idx * 8)).ok()?;
        if entry & 1 == 0 {
            return None;
        }
        if (level == 3 || level == 2) && entry & (1 << 7) != 0 {
            let page = (entry & addr_mask) & !((1u64 << shift) - 1);
            return Some(page | (linear & ((1u64 << shift) - 1)));
        }
        table = entry & addr_mask;
    }
    Some(table | (linear & 0xfff))
}

fn inject_exception(fd: &VcpuFd, vector: u8) -> Result<(), kvm_ioctls::Error> {
    let mut ev = fd.get_vcpu_events()?;
    ev.exception.injected = 1;
    ev.exception.nr = vector;
    ev.exception.has_error_code = 0;
    ev.exception.error_code = 0;
    ev.exception.pending = 0;
    fd.set_vcpu_events(&ev)
}

/// Complete a `fwait` (9B) the host's emulator refused, exactly as the SDM defines it
/// (vol. 2B, WAIT/FWAIT): #NM if CR0.TS and CR0.MP are both set; #MF if an unmasked x87
/// exception is pending (FSW.ES); otherwise nothing happens and execution continues after it.
fn complete_fwait(fd: &VcpuFd) -> Result<&'static str, kvm_ioctls::Error> {
    const CR0_MP: u64 = 1 << 1;
    const CR0_TS: u64 = 1 << 3;
    const FSW_ES: u16 = 1 << 7;
    let sregs = fd.get_sregs()?;
    if sregs.cr0 & CR0_TS != 0 && sregs.cr0 & CR0_MP != 0 {
        inject_exception(fd, 7)?;
        return Ok("#NM (CR0.TS and CR0.MP)");
    }
    if fd.get_fpu()?.fsw & FSW_ES != 0 {
        inject_exception(fd, 16)?;
        return Ok("#MF (pending x87 exception)");
    }
    let mut regs = fd.get_regs()?;
    regs.rip = regs.rip.wrapping_add(1);
    fd.set_regs(&regs)?;
    Ok("no pending x87 exception: completed as a no-op")
}

/// `int3` is a trap (#BP, vector 3): the saved RIP points after it. Advance RIP past the
/// one-byte instruction and inject the exception (KVM_SET_VCPU_EVENTS).
fn inject_breakpoint(fd: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    let mut regs = fd.get_regs()?;
    regs.rip = regs.rip.wrapping_add(1);
    fd.set_regs(&regs)?;
    inject_exception(fd, 3)
}
