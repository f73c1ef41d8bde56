//! `--irqchip split`: KVM split irqchip (KVM_CAP_SPLIT_IRQCHIP). The local APICs stay in the
//! kernel; the 8259A pair ([`crate::pic`]) and the 82093AA IOAPIC ([`crate::ioapic`]) run
//! here, as the pure state machines, behind one lock.
//!
//! Flow of one interrupt (docs/interrupts.md has the picture):
//! - A device drives a named source of a GSI ([`LineProvider`]). The GSI's level is the
//!   wired-OR of its sources; a change goes to IOAPIC pin = GSI and to the PIC input wired to
//!   it ([`crate::kvm::pic_irq_for_gsi`]).
//! - IOAPIC deliveries are MSIs (the 82093AA's redirection entry in SDM 11.11 form) sent with
//!   KVM_SIGNAL_MSI. The same message is installed as the MSI route of GSI = pin, because
//!   KVM decides which vectors need an EOI exit by scanning the MSI routes on the first N
//!   GSIs reserved with KVM_CAP_SPLIT_IRQCHIP(N) (arch/x86/kvm/irq_comm.c,
//!   kvm_scan_ioapic_routes). Pin i therefore lives on GSI i, and routes are installed
//!   before a delivery that depends on them.
//! - A level vector's EOI comes back as KVM_EXIT_IOAPIC_EOI ([`EoiSink`]); the IOAPIC clears
//!   remote IRR and redelivers if the line is still asserted. Devices on level lines learn of
//!   the EOI through their resample callback (KVM refuses irqfd resamplefd in split mode, so
//!   this backend does it).
//! - The PIC's INT output is an ExtINT for the boot vCPU: it is kicked out of KVM_RUN and
//!   injects the INTA vector with KVM_INTERRUPT ([`ExtIntSource`]).
//!
//! Lock order: the state lock is the only lock held while calling into KVM; KVM calls made
//! under it (KVM_SIGNAL_MSI, KVM_SET_GSI_ROUTING) never call back into irqvm.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use kvm_bindings::{kvm_enable_cap, kvm_irq_routing_entry, KVM_CAP_SPLIT_IRQCHIP};
use kvm_ioctls::VmFd;

use crate::ioapic::{Ioapic, IoapicEffects, IoapicFault};
use crate::kvm::{install_routes, msi_entry, pic_irq_for_gsi, signal_checked_msi, SOURCES_PER_GSI};
use crate::pic::PicPair;
use crate::routing::{GsiRouting, RouteTarget, RoutingMode, FIRST_MSI_GSI, KVM_MAX_IRQ_ROUTES};
use crate::stats::{Counter, IrqStats};
use crate::{
    guest_warn, EoiSink, ExtIntSource, InterruptLine, IrqError, LineProvider, MsiMessage,
    MsiRouteSink, MsiSender, VcpuKicker,
};

/// IOAPIC pins, and the GSIs reserved for them.
pub const IOAPIC_PINS: u32 = 24;

/// How long a storm-throttled level line waits before it is serviced again.
pub const STORM_BACKOFF: Duration = Duration::from_millis(1);

/// Called after the guest's EOI of a level line's interrupt (the split-mode resample).
pub type ResampleFn = Box<dyn Fn() + Send + Sync>;

struct State {
    pic: PicPair,
    ioapic: Ioapic,
    /// Bit s of `sources[g]`: source s asserts GSI g.
    sources: [u8; IOAPIC_PINS as usize],
    /// The MSI routes last installed for GSIs 0..24.
    routes: Option<[MsiMessage; IOAPIC_PINS as usize]>,
    /// Device MSI/MSI-X routes (GSIs >= 24, [`MsiRouteSink`]); they share the one KVM table
    /// with the pin routes, so [`SplitIrqchip::sync_routes`] installs both.
    msi: GsiRouting,
}

struct Inner {
    vm: Arc<VmFd>,
    state: Mutex<State>,
    stats: Arc<IrqStats>,
    /// The 8259 pair's own counters, by ISA IRQ (0..15), kept apart from the GSI table.
    pic_stats: Arc<IrqStats>,
    kicker: OnceLock<Arc<dyn VcpuKicker>>,
    resample: Mutex<Vec<(u32, Arc<ResampleFn>)>>,
    route_installs: AtomicU64,
    msis: AtomicU64,
}

/// The userspace PIC + IOAPIC backend for KVM split irqchip.
#[derive(Clone)]
pub struct SplitIrqchip {
    inner: Arc<Inner>,
}

fn kvm_io(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> IrqError {
    move |e| IrqError::Kvm {
        what,
        source: std::io::Error::from_raw_os_error(e.errno()),
    }
}

impl SplitIrqchip {
    /// Enable KVM_CAP_SPLIT_IRQCHIP with 24 IOAPIC routes on `vm` (before any vCPU exists)
    /// and install the routes of the reset IOAPIC.
    pub fn new(vm: Arc<VmFd>, stats: Arc<IrqStats>) -> Result<Self, IrqError> {
        let mut cap = kvm_enable_cap {
            cap: KVM_CAP_SPLIT_IRQCHIP,
            ..Default::default()
        };
        cap.args[0] = IOAPIC_PINS as u64;
        vm.enable_cap(&cap).map_err(kvm_io(
            "enabling KVM_CAP_SPLIT_IRQCHIP (needs a 4.6+ kernel, before vCPUs exist)",
        ))?;
        let mut pic = PicPair::new();
        let pic_stats = Arc::new(IrqStats::new(16));
        pic.set_stats(pic_stats.clone());
        let mut ioapic = Ioapic::new();
        ioapic.set_stats(stats.clone());
        let chip = Self {
            inner: Arc::new(Inner {
                vm,
                state: Mutex::new(State {
                    pic,
                    ioapic,
                    sources: [0; IOAPIC_PINS as usize],
                    routes: None,
                    msi: GsiRouting::new(RoutingMode::SplitIrqchip, KVM_MAX_IRQ_ROUTES)?,
                }),
                stats,
                pic_stats,
                kicker: OnceLock::new(),
                resample: Mutex::new(Vec::new()),
                route_installs: AtomicU64::new(0),
                msis: AtomicU64::new(0),
            }),
        };
        {
            let mut st = chip.lock();
            chip.sync_routes(&mut st)?;
        }
        Ok(chip)
    }

    /// Who wakes the boot vCPU for an ExtINT. Set once, after the vCPU threads exist.
    pub fn set_kicker(&self, kicker: Arc<dyn VcpuKicker>) {
        let _ = self.inner.kicker.set(kicker);
    }

    /// Call `f` after each guest EOI that clears remote IRR on `gsi` (a level line).
    pub fn on_resample(&self, gsi: u32, f: ResampleFn) {
        self.inner
            .resample
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((gsi, Arc::new(f)));
    }

    /// Test-only fault switch (see [`IoapicFault`]): lets a test prove the guest suite
    /// catches a broken controller.
    pub fn set_ioapic_fault(&self, fault: IoapicFault) {
        self.lock().ioapic.set_fault(fault);
    }

    pub fn stats(&self) -> &Arc<IrqStats> {
        &self.inner.stats
    }

    /// The 8259 pair's counters, indexed by ISA IRQ. A masked 8259 (the guest uses the
    /// IOAPIC) latches every edge in IRR, so its "coalesced" count grows with every raise.
    pub fn pic_stats(&self) -> &Arc<IrqStats> {
        &self.inner.pic_stats
    }

    /// How many times the GSI routing table was installed.
    pub fn route_installs(&self) -> u64 {
        self.inner.route_installs.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Install the IOAPIC pins' MSI routes on GSIs 0..24 if they changed.
    fn sync_routes(&self, st: &mut State) -> Result<(), IrqError> {
        let mut want = [MsiMessage::default(); IOAPIC_PINS as usize];
        for (pin, m) in want.iter_mut().enumerate() {
            *m = st.ioapic.route_for_pin(pin as u8).unwrap_or_default();
        }
        let _ = st.ioapic.take_dirty_routes();
        if st.routes == Some(want) && !st.msi.is_dirty() {
            return Ok(());
        }
        let mut entries: Vec<kvm_irq_routing_entry> = want
            .iter()
            .enumerate()
            .map(|(gsi, m)| msi_entry(gsi as u32, *m))
            .collect();
        let msi_table = st.msi.take_install().unwrap_or_else(|| st.msi.entries());
        for e in msi_table.iter().filter(|e| e.gsi >= FIRST_MSI_GSI) {
            if let RouteTarget::Msi(m) = e.target {
                entries.push(msi_entry(e.gsi, m));
            }
        }
        if let Err(e) = install_routes(&self.inner.vm, &entries) {
            st.msi.mark_dirty();
            return Err(e);
        }
        self.inner.route_installs.fetch_add(1, Ordering::Relaxed);
        st.routes = Some(want);
        Ok(())
    }

    /// Send `msg`; returns whether a local APIC accepted it. (KVM counts an MSI whose vector
    /// is already pending in the IRR as accepted, so LAPIC-level merging is not visible.)
    fn signal_msi(&self, msg: MsiMessage) -> Result<bool, IrqError> {
        self.inner.msis.fetch_add(1, Ordering::Relaxed);
        signal_checked_msi(&self.inner.vm, msg)
    }

    /// Carry out what the IOAPIC asked for, under the state lock: routes first (so an EOI of
    /// a new level vector exits), then deliveries; EOIs go to resample callbacks and
    /// throttled pins are re-serviced later. Returns the GSIs to resample (called unlocked).
    fn apply(&self, st: &mut State, fx: IoapicEffects) -> u32 {
        if fx.routes_changed != 0 {
            if let Err(e) = self.sync_routes(st) {
                log::error!("installing IOAPIC routes failed: {e}");
            }
        }
        for (pin, msg) in fx.deliveries() {
            match self.signal_msi(msg) {
                Ok(true) => {}
                // No local APIC accepted it (no matching destination, APIC disabled).
                Ok(false) => self.inner.stats.record(pin as u32, Counter::Coalesced),
                Err(e) => guest_warn!("IOAPIC pin {pin}: {e}"),
            }
        }
        if fx.throttled != 0 {
            self.schedule_reservice(fx.throttled);
        }
        fx.eoi_pins
    }

    fn schedule_reservice(&self, pins: u32) {
        let chip = self.clone();
        let spawned = std::thread::Builder::new()
            .name("irq-reservice".into())
            .spawn(move || {
                std::thread::sleep(STORM_BACKOFF);
                let mut eoi = 0;
                {
                    let mut st = chip.lock();
                    for pin in 0..IOAPIC_PINS as u8 {
                        if pins & (1 << pin) != 0 {
                            let fx = st.ioapic.reservice(pin);
                            eoi |= chip.apply(&mut st, fx);
                        }
                    }
                }
                chip.resample(eoi);
            });
        if let Err(e) = spawned {
            log::error!("cannot start the storm re-service thread: {e}");
        }
    }

    fn resample(&self, gsis: u32) {
        if gsis == 0 {
            return;
        }
        let cbs: Vec<Arc<ResampleFn>> = self
            .inner
            .resample
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(g, _)| *g < 32 && gsis & (1 << g) != 0)
            .map(|(_, f)| f.clone())
            .collect();
        for f in cbs {
            f();
        }
    }

    fn kick_bsp_if_pic_pending(&self, st: &State) {
        if st.pic.interrupt_pending() {
            if let Some(k) = self.inner.kicker.get() {
                k.kick(0);
            }
        }
    }

    /// Drive source `source` of `gsi` to `level`.
    fn set_source(&self, gsi: u32, source: u8, level: bool) {
        let eoi;
        {
            let mut st = self.lock();
            let Some(bits) = st.sources.get_mut(gsi as usize) else {
                return;
            };
            let before = *bits != 0;
            if level {
                *bits |= 1 << source;
            } else {
                *bits &= !(1 << source);
            }
            let after = *bits != 0;
            if level {
                self.inner.stats.record_source_raise(gsi, source);
            }
            if before == after {
                if level {
                    // Raised while already asserted by another source: the wired-OR hides it.
                    self.inner.stats.record(gsi, Counter::Coalesced);
                }
                return;
            }
            if after {
                self.inner.stats.record(gsi, Counter::Raised);
            }
            let fx = st.ioapic.set_pin(gsi as u8, after);
            eoi = self.apply(&mut st, fx);
            if let Some(irq) = pic_irq_for_gsi(gsi) {
                st.pic.set_irq(irq, after);
                self.kick_bsp_if_pic_pending(&st);
            }
        }
        self.resample(eoi);
    }

    // ---- Guest register access (the bus adapters in `devices` call these). ----

    /// A read of a PIC or ELCR port (0x20/0x21, 0xa0/0xa1, 0x4d0/0x4d1).
    pub fn pic_read(&self, port: u16) -> u8 {
        let mut st = self.lock();
        let v = st.pic.read(port);
        // A poll-mode read is an INTA and may change what is pending.
        self.kick_bsp_if_pic_pending(&st);
        v
    }

    /// A write of a PIC or ELCR port.
    pub fn pic_write(&self, port: u16, val: u8) {
        let eoi_irqs;
        {
            let mut st = self.lock();
            st.pic.write(port, val);
            eoi_irqs = st.pic.take_eoi_irqs();
            self.kick_bsp_if_pic_pending(&st);
        }
        // PIC EOIs of level lines resample the devices on them (GSI = ISA IRQ, IRQ0 = GSI 2).
        let mut gsis = 0u32;
        for irq in 0..16u32 {
            if eoi_irqs & (1 << irq) != 0 {
                gsis |= 1 << if irq == 0 { 2 } else { irq };
            }
        }
        self.resample(gsis);
    }

    /// A read in the IOAPIC's 4 KiB MMIO window.
    pub fn ioapic_read(&self, offset: u64, data: &mut [u8]) {
        self.lock().ioapic.mmio_read(offset, data);
    }

    /// A write in the IOAPIC's MMIO window (IOREGSEL, IOWIN, EOI register).
    pub fn ioapic_write(&self, offset: u64, data: &[u8]) {
        let eoi;
        {
            let mut st = self.lock();
            let fx = st.ioapic.mmio_write(offset, data);
            eoi = self.apply(&mut st, fx);
        }
        self.resample(eoi);
    }

    /// The `/proc/interrupts`-like table of host-side counters.
    pub fn format_stats(&self) -> String {
        self.inner.stats.format_table()
    }
}

struct SplitLine {
    chip: SplitIrqchip,
    gsi: u32,
    source: u8,
}

impl InterruptLine for SplitLine {
    fn set_level(&self, level: bool) {
        self.chip.set_source(self.gsi, self.source, level);
    }
}

impl LineProvider for SplitIrqchip {
    fn line(&self, gsi: u32, source: u8) -> Result<Arc<dyn InterruptLine>, IrqError> {
        if gsi >= IOAPIC_PINS || source >= SOURCES_PER_GSI {
            return Err(IrqError::NoSuchLine {
                gsi,
                source_id: source,
                max: IOAPIC_PINS,
            });
        }
        Ok(Arc::new(SplitLine {
            chip: self.clone(),
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
        self.inner.pic_stats.reset();
    }
}

impl MsiSender for SplitIrqchip {
    fn send_msi(&self, msg: MsiMessage) -> Result<(), IrqError> {
        self.signal_msi(msg).map(|_| ())
    }
}

impl MsiRouteSink for SplitIrqchip {
    fn alloc_msi_gsi(&self, msg: MsiMessage) -> Result<u32, IrqError> {
        let mut st = self.lock();
        let gsi = st.msi.alloc_msi(msg)?;
        if let Err(e) = self.sync_routes(&mut st) {
            let _ = st.msi.free(gsi);
            return Err(e);
        }
        Ok(gsi)
    }

    fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), IrqError> {
        let mut st = self.lock();
        st.msi.update_msi(gsi, msg)?;
        self.sync_routes(&mut st)
    }

    fn register_irqfd(
        &self,
        gsi: u32,
        fd: &vmm_sys_util::eventfd::EventFd,
    ) -> Result<(), IrqError> {
        self.inner
            .vm
            .register_irqfd(fd, gsi)
            .map_err(kvm_io("KVM_IRQFD"))
    }
}

impl ExtIntSource for SplitIrqchip {
    fn extint_pending(&self) -> bool {
        self.lock().pic.interrupt_pending()
    }

    fn extint_ack(&self) -> Option<u8> {
        let mut st = self.lock();
        if st.pic.interrupt_pending() {
            Some(st.pic.inta())
        } else {
            None
        }
    }
}

impl EoiSink for SplitIrqchip {
    fn ioapic_eoi(&self, vector: u8) {
        let eoi;
        {
            let mut st = self.lock();
            let fx = st.ioapic.eoi(vector);
            eoi = self.apply(&mut st, fx);
        }
        self.resample(eoi);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_msi_routes_share_the_table_with_the_ioapic_pin_routes() {
        let Some(vm) = crate::kvm::tests::kvm_vm() else {
            return;
        };
        let chip = SplitIrqchip::new(vm, Arc::new(IrqStats::new(24))).unwrap();
        let before = chip.route_installs();
        let m = MsiMessage {
            address: 0xFEE0_0000,
            data: 0x45,
        };
        let gsi = chip.alloc_msi_gsi(m).unwrap();
        assert_eq!(gsi, 24);
        assert_eq!(
            chip.route_installs(),
            before + 1,
            "one install adds the route"
        );
        chip.set_msi_route(gsi, m).unwrap();
        assert_eq!(
            chip.route_installs(),
            before + 1,
            "unchanged route: no install"
        );
        chip.set_msi_route(gsi, MsiMessage { data: 0x46, ..m })
            .unwrap();
        assert_eq!(chip.route_installs(), before + 2);
        let fd = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        chip.register_irqfd(gsi, &fd).unwrap();
    }
}
