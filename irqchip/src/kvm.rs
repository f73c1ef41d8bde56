//! KVM glue: the backends behind the device-facing traits.
//!
//! `--irqchip kernel`: [`KernelIrqchip`]. KVM emulates PIC, IOAPIC and LAPICs
//! (KVM_CREATE_IRQCHIP). Edge pulses go through one irqfd per GSI (KVM_IRQFD: the eventfd
//! write is injected in the kernel, no vCPU exit and no userspace lock on the guest's path);
//! level changes of the wired-OR of a GSI's sources go through KVM_IRQ_LINE. MSIs go through
//! KVM_SIGNAL_MSI.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_msi, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::routing::{GsiRouting, RouteTarget, RoutingMode, FIRST_MSI_GSI, KVM_MAX_IRQ_ROUTES};
use crate::stats::{Counter, IrqStats};
use crate::{InterruptLine, IrqError, LineProvider, MsiMessage, MsiRouteSink, MsiSender};

/// Sources a GSI can have (bit per source in the wired-OR).
pub const SOURCES_PER_GSI: u8 = 8;

struct Gsi {
    irqfd: EventFd,
    /// Bit s set = source s asserts the line.
    sources: Mutex<u8>,
}

struct Inner {
    vm: Arc<VmFd>,
    gsis: Vec<Gsi>,
    stats: Arc<IrqStats>,
    msis: AtomicU64,
    /// MSI routes (GSIs >= 24) next to the platform routes of GSIs 0..nr_gsis; the whole
    /// table is re-installed on every change (KVM_SET_GSI_ROUTING replaces it).
    routing: Mutex<GsiRouting>,
    /// Level device lines on KVM's irqfd resampler, created on first use per GSI.
    resampled: Mutex<std::collections::BTreeMap<u32, Arc<Resampled>>>,
    epoll: vmm_sys_util::epoll::Epoll,
    stop: EventFd,
    resampler: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// One GSI driven through an irqfd registered with a resamplefd (KVM_IRQFD_FLAG_RESAMPLE):
/// a write asserts the GSI until the guest's EOI, when KVM lowers it and signals `resample`.
struct Resampled {
    level: EventFd,
    resample: EventFd,
    /// Bit s set = resampled source s asserts the line.
    sources: Mutex<u8>,
}

const RESAMPLE_STOP: u64 = u64::MAX;

/// KVM's in-kernel PIC + IOAPIC + LAPIC, driven through irqfd, KVM_IRQ_LINE and
/// KVM_SIGNAL_MSI.
#[derive(Clone)]
pub struct KernelIrqchip {
    inner: Arc<Inner>,
}

impl KernelIrqchip {
    /// Wrap a VM whose in-kernel irqchip was created (KVM_CREATE_IRQCHIP), registering one
    /// irqfd per GSI in `0..nr_gsis`.
    pub fn new(vm: Arc<VmFd>, nr_gsis: u32, stats: Arc<IrqStats>) -> Result<Self, IrqError> {
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
            });
        }
        let io = |source| IrqError::EventFd { gsi: 0, source };
        let epoll = vmm_sys_util::epoll::Epoll::new().map_err(io)?;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(io)?;
        {
            use std::os::fd::AsRawFd;
            use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
            epoll
                .ctl(
                    ControlOperation::Add,
                    stop.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, RESAMPLE_STOP),
                )
                .map_err(io)?;
        }
        let chip = Self {
            inner: Arc::new(Inner {
                vm,
                gsis,
                stats,
                msis: AtomicU64::new(0),
                routing: Mutex::new(GsiRouting::new(
                    RoutingMode::KernelIrqchip,
                    KVM_MAX_IRQ_ROUTES,
                )?),
                resampled: Mutex::new(std::collections::BTreeMap::new()),
                epoll,
                stop,
                resampler: Mutex::new(None),
            }),
        };
        let inner = chip.inner.clone();
        let t = std::thread::Builder::new()
            .name("irq-resample".into())
            .spawn(move || resample_loop(&inner))
            .map_err(io)?;
        *chip
            .inner
            .resampler
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(t);
        Ok(chip)
    }

    /// Stop and join the resample thread (after the vCPUs are gone).
    pub fn shutdown(&self) {
        let _ = self.inner.stop.write(1);
        let t = self
            .inner
            .resampler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }

    fn resampled(&self, gsi: u32) -> Result<Arc<Resampled>, IrqError> {
        use std::os::fd::AsRawFd;
        use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
        let mut map = self
            .inner
            .resampled
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(r) = map.get(&gsi) {
            return Ok(r.clone());
        }
        let efd = || EventFd::new(EFD_NONBLOCK).map_err(|source| IrqError::EventFd { gsi, source });
        let r = Arc::new(Resampled {
            level: efd()?,
            resample: efd()?,
            sources: Mutex::new(0),
        });
        self.inner
            .vm
            .register_irqfd_with_resample(&r.level, &r.resample, gsi)
            .map_err(|e| IrqError::Kvm {
                what: "KVM_IRQFD with KVM_IRQFD_FLAG_RESAMPLE",
                source: std::io::Error::from_raw_os_error(e.errno()),
            })?;
        self.inner
            .epoll
            .ctl(
                ControlOperation::Add,
                r.resample.as_raw_fd(),
                EpollEvent::new(EventSet::IN, gsi as u64),
            )
            .map_err(|source| IrqError::EventFd { gsi, source })?;
        map.insert(gsi, r.clone());
        Ok(r)
    }

    /// Install the in-kernel routing table that matches the platform tables irqvm gives the
    /// guest (MP table and ACPI MADT: ISA IRQ0 is wired to IOAPIC pin 2, the PIC cascade
    /// sits on IRQ2), as real boards and QEMU do. KVM's default table would send the in-kernel
    /// PIT (which fires KVM GSI 0) to IOAPIC pin 0 instead.
    ///
    /// irqvm's GSI numbers are ACPI GSIs, i.e. IOAPIC pins. KVM GSI g routes to IOAPIC pin g
    /// and to the PIC input of ISA IRQ g, except: KVM GSI 0 (the PIT) and 2 both go to IOAPIC
    /// pin 2 and PIC IRQ 0.
    pub fn install_platform_routes(vm: &VmFd, nr_gsis: u32) -> Result<(), IrqError> {
        install_routes(vm, &platform_entries(nr_gsis))
    }

    /// MSIs sent so far.
    pub fn msis_sent(&self) -> u64 {
        self.inner.msis.load(Ordering::Relaxed)
    }

    fn install_with_msi(&self, routing: &mut GsiRouting) -> Result<(), IrqError> {
        let Some(table) = routing.take_install() else {
            return Ok(());
        };
        let nr_gsis = self.inner.gsis.len() as u32;
        let mut entries = platform_entries(nr_gsis);
        for e in table.iter().filter(|e| e.gsi >= FIRST_MSI_GSI) {
            if let RouteTarget::Msi(m) = e.target {
                entries.push(msi_entry(e.gsi, m));
            }
        }
        install_routes(&self.inner.vm, &entries).inspect_err(|_| routing.mark_dirty())
    }
}

/// A KVM MSI routing entry for `gsi`.
pub(crate) fn msi_entry(gsi: u32, m: MsiMessage) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = m.address as u32;
    e.u.msi.address_hi = (m.address >> 32) as u32;
    e.u.msi.data = m.data;
    e
}

/// KVM_SET_GSI_ROUTING with `entries` (the whole table).
pub(crate) fn install_routes(vm: &VmFd, entries: &[kvm_irq_routing_entry]) -> Result<(), IrqError> {
    let routing = KvmIrqRouting::from_entries(entries).map_err(|_| IrqError::Kvm {
        what: "building the GSI routing table",
        source: std::io::Error::from_raw_os_error(libc::E2BIG),
    })?;
    vm.set_gsi_routing(&routing).map_err(|e| IrqError::Kvm {
        what: "KVM_SET_GSI_ROUTING",
        source: std::io::Error::from_raw_os_error(e.errno()),
    })
}

/// The platform part of the in-kernel routing table (see
/// [`KernelIrqchip::install_platform_routes`]).
fn platform_entries(nr_gsis: u32) -> Vec<kvm_irq_routing_entry> {
    {
        let mut entries = Vec::new();
        let chip = |gsi: u32, irqchip: u32, pin: u32| {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_IRQCHIP,
                ..Default::default()
            };
            e.u.irqchip.irqchip = irqchip;
            e.u.irqchip.pin = pin;
            e
        };
        for gsi in 0..nr_gsis {
            let ioapic_pin = if gsi == 0 { 2 } else { gsi };
            entries.push(chip(gsi, KVM_IRQCHIP_IOAPIC, ioapic_pin));
            if let Some(isa) = pic_irq_for_gsi(gsi) {
                let (c, p) = if isa < 8 {
                    (KVM_IRQCHIP_PIC_MASTER, isa)
                } else {
                    (KVM_IRQCHIP_PIC_SLAVE, isa - 8)
                };
                entries.push(chip(gsi, c, p as u32));
            }
        }
        // KVM GSI 0 is the in-kernel PIT: ISA IRQ 0 on the PIC.
        entries.push(chip(0, KVM_IRQCHIP_PIC_MASTER, 0));
        entries
    }
}

impl MsiRouteSink for KernelIrqchip {
    fn alloc_msi_gsi(&self, msg: MsiMessage) -> Result<u32, IrqError> {
        let mut r = self.inner.routing.lock().unwrap_or_else(|e| e.into_inner());
        let gsi = r.alloc_msi(msg)?;
        if let Err(e) = self.install_with_msi(&mut r) {
            let _ = r.free(gsi);
            return Err(e);
        }
        Ok(gsi)
    }

    fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), IrqError> {
        let mut r = self.inner.routing.lock().unwrap_or_else(|e| e.into_inner());
        r.update_msi(gsi, msg)?;
        self.install_with_msi(&mut r)
    }

    fn register_irqfd(&self, gsi: u32, fd: &EventFd) -> Result<(), IrqError> {
        self.inner
            .vm
            .register_irqfd(fd, gsi)
            .map_err(|e| IrqError::Kvm {
                what: "KVM_IRQFD",
                source: std::io::Error::from_raw_os_error(e.errno()),
            })
    }
}

/// The 8259 input (ISA IRQ) a GSI drives: GSI 2 carries ISA IRQ 0 (the timer, per the MADT
/// interrupt source override); IRQ 2 is the cascade and has no GSI; GSIs >= 16 have none.
pub fn pic_irq_for_gsi(gsi: u32) -> Option<u8> {
    match gsi {
        2 => Some(0),
        0 => None,
        1..=15 => Some(gsi as u8),
        _ => None,
    }
}

/// Wait for resamplefds (the guest's EOI of a resampled level GSI) and re-assert the GSI
/// while a source still holds it; ends when `stop` is signalled.
fn resample_loop(inner: &Inner) {
    use vmm_sys_util::epoll::EpollEvent;
    let mut events = vec![EpollEvent::default(); 32];
    loop {
        let n = match inner.epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => {
                log::error!("irq-resample: epoll_wait failed: {e}; level lines stop re-asserting");
                return;
            }
        };
        for ev in &events[..n] {
            if ev.data() == RESAMPLE_STOP {
                return;
            }
            let gsi = ev.data() as u32;
            let r = inner
                .resampled
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&gsi)
                .cloned();
            let Some(r) = r else { continue };
            let _ = r.resample.read();
            inner.stats.record(gsi, Counter::Eoi);
            // KVM lowered the line at the EOI; raise it again if a source still holds it.
            if *r.sources.lock().unwrap_or_else(|e| e.into_inner()) != 0 {
                if let Err(e) = r.level.write(1) {
                    log::warn!("resampled irqfd write for gsi {gsi} failed: {e}");
                }
            }
        }
    }
}

/// A source of a resampled level line (see [`LineProvider::level_line`]).
struct ResampledLine {
    inner: Arc<Inner>,
    r: Arc<Resampled>,
    gsi: u32,
    source: u8,
}

impl InterruptLine for ResampledLine {
    fn set_level(&self, level: bool) {
        let mut s = self.r.sources.lock().unwrap_or_else(|e| e.into_inner());
        let before = *s != 0;
        if level {
            *s |= 1 << self.source;
            self.inner.stats.record_source_raise(self.gsi, self.source);
        } else {
            *s &= !(1 << self.source);
        }
        // Rising: assert until the guest's EOI. Falling needs no call: KVM lowers the line at
        // the EOI and the resample thread sees no source holding it.
        if !before && *s != 0 {
            self.inner.stats.record(self.gsi, Counter::Raised);
            if let Err(e) = self.r.level.write(1) {
                log::warn!("resampled irqfd write for gsi {} failed: {e}", self.gsi);
            }
        }
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
        if level {
            self.inner.stats.record_source_raise(self.gsi, self.source);
        }
        if before != after {
            if after {
                self.inner.stats.record(self.gsi, Counter::Raised);
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
        self.inner.stats.record_source_raise(self.gsi, self.source);
        if held {
            self.inner.stats.record(self.gsi, Counter::Coalesced);
            return;
        }
        self.inner.stats.record(self.gsi, Counter::Raised);
        if let Err(e) = g.irqfd.write(1) {
            log::warn!("irqfd write for gsi {} failed: {e}", self.gsi);
        }
    }

    /// KVM_IRQ_LINE 1 then 0: KVM runs the IOAPIC/PIC edge inside the ioctl, so the edge is
    /// latched (IRR) when this returns. The sources lock keeps another source's level change
    /// from landing between the two calls.
    fn pulse_sync(&self) {
        let Some(g) = self.gsi() else { return };
        let s = g.sources.lock().unwrap_or_else(|e| e.into_inner());
        self.inner.stats.record_source_raise(self.gsi, self.source);
        if *s != 0 {
            self.inner.stats.record(self.gsi, Counter::Coalesced);
            return;
        }
        self.inner.stats.record(self.gsi, Counter::Raised);
        for level in [true, false] {
            if let Err(e) = self.inner.vm.set_irq_line(self.gsi, level) {
                log::warn!("KVM_IRQ_LINE gsi {} level {level} failed: {e}", self.gsi);
            }
        }
    }
}

impl KernelIrqchip {
    /// GSI and source in range, or the typed error naming the valid ranges.
    fn check_line(&self, gsi: u32, source: u8) -> Result<(), IrqError> {
        let max = self.inner.gsis.len() as u32;
        if gsi >= max || source >= SOURCES_PER_GSI {
            return Err(IrqError::NoSuchLine {
                gsi,
                source_id: source,
                max,
            });
        }
        Ok(())
    }
}

impl LineProvider for KernelIrqchip {
    fn line(&self, gsi: u32, source: u8) -> Result<Arc<dyn InterruptLine>, IrqError> {
        self.check_line(gsi, source)?;
        Ok(Arc::new(KernelLine {
            inner: self.inner.clone(),
            gsi,
            source,
        }))
    }

    fn level_line(&self, gsi: u32, source: u8) -> Result<Arc<dyn InterruptLine>, IrqError> {
        self.check_line(gsi, source)?;
        Ok(Arc::new(ResampledLine {
            inner: self.inner.clone(),
            r: self.resampled(gsi)?,
            gsi,
            source,
        }))
    }

    fn raised(&self, gsi: u32) -> u64 {
        self.inner.stats.get(gsi, Counter::Raised)
    }

    fn coalesced(&self, gsi: u32) -> u64 {
        self.inner.stats.get(gsi, Counter::Coalesced)
    }

    fn reset_stats(&self) {
        self.inner.stats.reset();
        self.inner.msis.store(0, Ordering::Relaxed);
    }
}

/// Send one MSI with KVM_SIGNAL_MSI, after checking it the way a local APIC would: KVM
/// decodes any address as an APIC message, but on real hardware a write outside the
/// 0xFEEx_xxxx window is a plain memory write, a reserved delivery mode is not accepted, and
/// vectors 0..15 are illegal (SDM vol. 3, 11.11.1-2 and 10.5.2). Returns whether a local APIC
/// accepted it. KVM counts a vector already pending in the IRR as accepted
/// (`__apic_accept_irq`), so merges in the LAPIC are not visible to the VMM.
pub fn signal_checked_msi(vm: &VmFd, msg: MsiMessage) -> Result<bool, IrqError> {
    if let Err(e) = msg.validate() {
        crate::guest_warn!("dropping MSI {:#x}/{:#x}: {e}", msg.address, msg.data);
        return Err(e.into());
    }
    let msi = kvm_msi {
        address_lo: msg.address as u32,
        address_hi: (msg.address >> 32) as u32,
        data: msg.data,
        ..Default::default()
    };
    vm.signal_msi(msi)
        .map(|n| n > 0)
        .map_err(|e| IrqError::Kvm {
            what: "KVM_SIGNAL_MSI",
            source: std::io::Error::from_raw_os_error(e.errno()),
        })
}

impl MsiSender for KernelIrqchip {
    fn send_msi(&self, msg: MsiMessage) -> Result<(), IrqError> {
        self.inner.msis.fetch_add(1, Ordering::Relaxed);
        signal_checked_msi(&self.inner.vm, msg).map(|_| ())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A VM on this host's /dev/kvm, or None (the test then passes vacuously and says so).
    pub(crate) fn kvm_vm() -> Option<Arc<VmFd>> {
        match kvm_ioctls::Kvm::new().and_then(|k| k.create_vm()) {
            Ok(vm) => Some(Arc::new(vm)),
            Err(e) => {
                eprintln!("skipped: no usable /dev/kvm ({e})");
                None
            }
        }
    }

    #[test]
    fn msi_routes_allocate_from_gsi_24_and_reroute_in_the_one_table() {
        let Some(vm) = kvm_vm() else { return };
        vm.create_irq_chip().unwrap();
        let chip = KernelIrqchip::new(vm, 24, Arc::new(IrqStats::new(24))).unwrap();
        let m = |d| MsiMessage {
            address: 0xFEE0_0000,
            data: d,
        };
        assert_eq!(chip.alloc_msi_gsi(m(0x30)).unwrap(), 24);
        assert_eq!(chip.alloc_msi_gsi(m(0x31)).unwrap(), 25);
        let fd = EventFd::new(EFD_NONBLOCK).unwrap();
        chip.register_irqfd(25, &fd).unwrap();
        chip.set_msi_route(25, m(0x41)).unwrap();
        assert!(matches!(
            chip.set_msi_route(30, m(1)),
            Err(IrqError::Routing(_))
        ));
        assert!(matches!(
            chip.set_msi_route(5, m(1)),
            Err(IrqError::Routing(_))
        ));
    }

    #[test]
    fn gsi2_drives_isa_irq0_and_cascade_has_no_gsi() {
        assert_eq!(pic_irq_for_gsi(2), Some(0));
        assert_eq!(pic_irq_for_gsi(0), None);
        assert_eq!(pic_irq_for_gsi(4), Some(4));
        assert_eq!(pic_irq_for_gsi(15), Some(15));
        assert_eq!(pic_irq_for_gsi(16), None);
        assert!((0..24).filter_map(pic_irq_for_gsi).all(|irq| irq != 2));
    }
}
