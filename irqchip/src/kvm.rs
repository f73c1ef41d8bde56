//! KVM glue: the backends behind the device-facing traits.
//!
//! `--irqchip kernel`: [`KernelIrqchip`]. KVM emulates PIC, IOAPIC and LAPICs
//! (KVM_CREATE_IRQCHIP). Edge pulses go through one irqfd per GSI (KVM_IRQFD: the eventfd
//! write is injected in the kernel, no vCPU exit and no userspace lock on the guest's path);
//! level changes of the wired-OR of a GSI's sources go through KVM_IRQ_LINE. MSIs go through
//! KVM_SIGNAL_MSI.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::kvm_msi;
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::{InterruptLine, IrqError, LineProvider, MsiMessage, MsiSender};

/// Sources a GSI can have (bit per source in the wired-OR).
pub const SOURCES_PER_GSI: u8 = 8;

struct Gsi {
    irqfd: EventFd,
    /// Bit s set = source s asserts the line.
    sources: Mutex<u8>,
    raised: AtomicU64,
}

struct Inner {
    vm: Arc<VmFd>,
    gsis: Vec<Gsi>,
    msis: AtomicU64,
}

/// KVM's in-kernel PIC + IOAPIC + LAPIC, driven through irqfd, KVM_IRQ_LINE and
/// KVM_SIGNAL_MSI.
#[derive(Clone)]
pub struct KernelIrqchip {
    inner: Arc<Inner>,
}

impl KernelIrqchip {
    /// Wrap a VM whose in-kernel irqchip was created (KVM_CREATE_IRQCHIP), registering one
    /// irqfd per GSI in `0..nr_gsis`.
    pub fn new(vm: Arc<VmFd>, nr_gsis: u32) -> Result<Self, IrqError> {
        let mut gsis = Vec::with_capacity(nr_gsis as usize);
        for gsi in 0..nr_gsis {
            let irqfd =
                EventFd::new(EFD_NONBLOCK).map_err(|source| IrqError::EventFd { gsi, source })?;
            vm.register_irqfd(&irqfd, gsi).map_err(|e| IrqError::Kvm {
                what: "KVM_IRQFD",
                source: std::io::Error::from_raw_os_error(e.errno()),
            })?;
            gsis.push(Gsi {
                irqfd,
                sources: Mutex::new(0),
                raised: AtomicU64::new(0),
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                vm,
                gsis,
                msis: AtomicU64::new(0),
            }),
        })
    }

    /// MSIs sent so far.
    pub fn msis_sent(&self) -> u64 {
        self.inner.msis.load(Ordering::Relaxed)
    }
}

struct KernelLine {
    inner: Arc<Inner>,
    gsi: u32,
    source: u8,
}

impl KernelLine {
    fn gsi(&self) -> Option<&Gsi> {
        self.inner.gsis.get(self.gsi as usize)
    }
}

impl InterruptLine for KernelLine {
    fn set_level(&self, level: bool) {
        let Some(g) = self.gsi() else { return };
        let mut s = g.sources.lock().unwrap_or_else(|e| e.into_inner());
        let before = *s != 0;
        if level {
            *s |= 1 << self.source;
        } else {
            *s &= !(1 << self.source);
        }
        let after = *s != 0;
        if before != after {
            if after {
                g.raised.fetch_add(1, Ordering::Relaxed);
            }
            if let Err(e) = self.inner.vm.set_irq_line(self.gsi, after) {
                log::warn!("KVM_IRQ_LINE gsi {} level {after} failed: {e}", self.gsi);
            }
        }
    }

    fn pulse(&self) {
        let Some(g) = self.gsi() else { return };
        // Wired-OR: while another source holds the line high, an edge is invisible.
        let held = *g.sources.lock().unwrap_or_else(|e| e.into_inner()) != 0;
        if held {
            return;
        }
        g.raised.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = g.irqfd.write(1) {
            log::warn!("irqfd write for gsi {} failed: {e}", self.gsi);
        }
    }
}

impl LineProvider for KernelIrqchip {
    fn line(&self, gsi: u32, source: u8) -> Result<Arc<dyn InterruptLine>, IrqError> {
        let max = self.inner.gsis.len() as u32;
        if gsi >= max || source >= SOURCES_PER_GSI {
            return Err(IrqError::NoSuchLine {
                gsi,
                source_id: source,
                max,
            });
        }
        Ok(Arc::new(KernelLine {
            inner: self.inner.clone(),
            gsi,
            source,
        }))
    }

    fn raised(&self, gsi: u32) -> u64 {
        self.inner
            .gsis
            .get(gsi as usize)
            .map_or(0, |g| g.raised.load(Ordering::Relaxed))
    }

    fn reset_stats(&self) {
        for g in &self.inner.gsis {
            g.raised.store(0, Ordering::Relaxed);
        }
        self.inner.msis.store(0, Ordering::Relaxed);
    }
}

impl MsiSender for KernelIrqchip {
    fn send_msi(&self, msg: MsiMessage) -> Result<(), IrqError> {
        self.inner.msis.fetch_add(1, Ordering::Relaxed);
        let msi = kvm_msi {
            address_lo: msg.address as u32,
            address_hi: (msg.address >> 32) as u32,
            data: msg.data,
            ..Default::default()
        };
        self.inner
            .vm
            .signal_msi(msi)
            .map(|_| ())
            .map_err(|e| IrqError::Kvm {
                what: "KVM_SIGNAL_MSI",
                source: std::io::Error::from_raw_os_error(e.errno()),
            })
    }
}
