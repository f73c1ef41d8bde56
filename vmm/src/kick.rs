//! Waking vCPU threads out of KVM_RUN without a lost wake-up.
//!
//! A kick is a signal (SIGRTMIN) to the vCPU thread. Its handler sets `immediate_exit` in that
//! thread's `kvm_run` (Documentation/virt/kvm/api.rst, "immediate_exit"), so a kick that lands
//! just before the thread enters KVM_RUN still makes KVM_RUN return at once with EINTR, and
//! a kick during KVM_RUN interrupts it. The thread clears `immediate_exit` after each EINTR.

use std::cell::Cell;
use std::sync::Mutex;

use kvm_bindings::kvm_run;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

thread_local! {
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only a store to the thread's own kvm_run page: async-signal-safe.
    let _ = KVM_RUN.try_with(|p| {
        let p = p.get();
        if !p.is_null() {
            // SAFETY: set by `register_current` to this thread's kvm_run mapping, which lives
            // as long as the thread's VcpuFd (cleared before the VcpuFd is dropped).
            unsafe { std::ptr::write_volatile(&mut (*p).immediate_exit, 1) };
        }
    });
}

/// Install the kick signal handler (once per process).
pub fn install_handler() -> std::io::Result<()> {
    register_signal_handler(SIGRTMIN(), kick_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Register the calling vCPU thread's kvm_run for the kick handler.
pub fn register_current(run: *mut kvm_run) {
    KVM_RUN.with(|p| p.set(run));
}

/// Forget the calling thread's kvm_run (before its VcpuFd is dropped).
pub fn unregister_current() {
    KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
}

/// pthread ids of the vCPU threads, by vCPU index.
#[derive(Default)]
pub struct Kicker {
    threads: Mutex<Vec<Option<libc::pthread_t>>>,
}

impl Kicker {
    pub fn new(n: usize) -> Self {
        Self {
            threads: Mutex::new(vec![None; n]),
        }
    }

    /// Called by vCPU thread `cpu` when it starts.
    pub fn set_current(&self, cpu: u8) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let mut t = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = t.get_mut(cpu as usize) {
            *slot = Some(me);
        }
    }

    /// Called by vCPU thread `cpu` just before it exits.
    pub fn clear(&self, cpu: u8) {
        let mut t = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = t.get_mut(cpu as usize) {
            *slot = None;
        }
    }

    pub fn kick_all(&self) {
        let n = self.threads.lock().unwrap_or_else(|e| e.into_inner()).len();
        for cpu in 0..n {
            irqchip::VcpuKicker::kick(self, cpu as u8);
        }
    }
}

impl irqchip::VcpuKicker for Kicker {
    fn kick(&self, cpu: u8) {
        // Hold the lock while signalling so the thread cannot exit (and its id be reused)
        // between the lookup and pthread_kill.
        let t = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Some(id)) = t.get(cpu as usize) {
            // SAFETY: `id` is a live vCPU thread: it clears its slot (under this lock)
            // before it exits.
            unsafe {
                libc::pthread_kill(*id, SIGRTMIN());
            }
        }
    }
}
