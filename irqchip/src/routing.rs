//! The GSI routing table, as a pure data structure.
//!
//! KVM's `KVM_SET_GSI_ROUTING` replaces the *whole* table on each call, so the VMM has to own
//! the full list. [`GsiRouting`] keeps it, hands out GSIs for MSI/MSI-X vectors, updates
//! entries in place and says when a new install is actually needed.
//!
//! Layout:
//!
//! * GSIs 0..=23 are reserved for the IOAPIC: pin *i* is GSI *i*.
//!   * [`RoutingMode::KernelIrqchip`]: the default routing of the in-kernel irqchip — GSI *i*
//!     goes to IOAPIC pin *i*, and for *i* < 16 also to PIC master/slave pin *i* mod 8.
//!   * [`RoutingMode::SplitIrqchip`]: GSI *i* is an MSI route carrying the message of IOAPIC
//!     pin *i* ([`crate::ioapic::Ioapic::route_for_pin`]). The identity is required: KVM reports
//!     `KVM_EXIT_IOAPIC_EOI` for the level vectors it finds in the MSI routes of GSIs below
//!     the number of IOAPIC pins given to `KVM_CAP_SPLIT_IRQCHIP`.
//! * GSIs from [`FIRST_MSI_GSI`] (24) up are allocated, lowest free first, for MSI/MSI-X.
//!
//! The table holds at most `capacity` entries (KVM's limit is [`KVM_MAX_IRQ_ROUTES`] = 4096);
//! allocating past it is a typed error. [`GsiRouting::take_install`] returns the full entry
//! list only when something changed since the last install, and counts installs and skipped
//! (redundant) ones.

use std::collections::BTreeMap;

use crate::ioapic::{RedirectionEntry, NUM_PINS};
use crate::msi::MsiMessage;

/// KVM's maximum number of routing entries (`KVM_MAX_IRQ_ROUTES`).
pub const KVM_MAX_IRQ_ROUTES: usize = 4096;
/// GSIs reserved for IOAPIC pins.
pub const IOAPIC_GSIS: u32 = NUM_PINS as u32;
/// First GSI handed out for MSI routes.
pub const FIRST_MSI_GSI: u32 = IOAPIC_GSIS;

/// An interrupt controller input (the numbers KVM uses are [`IrqchipId::kvm_id`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IrqchipId {
    PicMaster,
    PicSlave,
    Ioapic,
}

impl IrqchipId {
    /// `KVM_IRQCHIP_PIC_MASTER` (0), `KVM_IRQCHIP_PIC_SLAVE` (1), `KVM_IRQCHIP_IOAPIC` (2).
    pub fn kvm_id(self) -> u32 {
        match self {
            IrqchipId::PicMaster => 0,
            IrqchipId::PicSlave => 1,
            IrqchipId::Ioapic => 2,
        }
    }
}

/// Where a GSI goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteTarget {
    Irqchip { chip: IrqchipId, pin: u32 },
    Msi(MsiMessage),
}

/// One routing table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteEntry {
    pub gsi: u32,
    pub target: RouteTarget,
}

/// Which irqchip layout GSIs 0..=23 follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingMode {
    /// In-kernel PIC + IOAPIC (`KVM_CREATE_IRQCHIP`).
    KernelIrqchip,
    /// Userspace PIC/IOAPIC (`KVM_CAP_SPLIT_IRQCHIP`); GSIs 0..=23 are MSI routes.
    SplitIrqchip,
}

/// Routing table errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error("GSI routing table is full ({capacity} routes); free unused MSI vectors or raise the route limit")]
    Full { capacity: usize },
    #[error("capacity {capacity} cannot hold the {needed} fixed IOAPIC/PIC routes; use a capacity of at least {needed}")]
    CapacityTooSmall { capacity: usize, needed: usize },
    #[error("GSI {gsi} is not an allocated MSI route; allocate one with alloc_msi first")]
    NotAllocated { gsi: u32 },
    #[error("GSI {gsi} is reserved for IOAPIC pin {gsi}; MSI routes start at GSI 24")]
    Reserved { gsi: u32 },
    #[error("IOAPIC pin {pin} does not exist (pins 0..24)")]
    NoSuchPin { pin: u32 },
    #[error("IOAPIC pin routes are MSI routes only with the split irqchip; the in-kernel IOAPIC routes its pins itself")]
    NotSplitMode,
}

/// The routing table manager. See the module documentation.
#[derive(Debug, Clone)]
pub struct GsiRouting {
    mode: RoutingMode,
    /// Entries for GSIs 0..=23, in install order.
    fixed: Vec<RouteEntry>,
    /// MSI routes, GSI >= 24.
    msi: BTreeMap<u32, MsiMessage>,
    capacity: usize,
    dirty: bool,
    installs: u64,
    skipped: u64,
}

impl GsiRouting {
    /// A table for `mode` with room for `capacity` entries (at most what KVM accepts is
    /// sensible: [`KVM_MAX_IRQ_ROUTES`]). Starts dirty: the first `take_install` returns it.
    pub fn new(mode: RoutingMode, capacity: usize) -> Result<Self, RoutingError> {
        let mut fixed = Vec::new();
        for gsi in 0..IOAPIC_GSIS {
            match mode {
                RoutingMode::KernelIrqchip => {
                    fixed.push(RouteEntry {
                        gsi,
                        target: RouteTarget::Irqchip {
                            chip: IrqchipId::Ioapic,
                            pin: gsi,
                        },
                    });
                    if gsi < 16 {
                        fixed.push(RouteEntry {
                            gsi,
                            target: RouteTarget::Irqchip {
                                chip: if gsi < 8 {
                                    IrqchipId::PicMaster
                                } else {
                                    IrqchipId::PicSlave
                                },
                                pin: gsi % 8,
                            },
                        });
                    }
                }
                RoutingMode::SplitIrqchip => fixed.push(RouteEntry {
                    gsi,
                    target: RouteTarget::Msi(RedirectionEntry::default().to_msi()),
                }),
            }
        }
        if capacity < fixed.len() {
            return Err(RoutingError::CapacityTooSmall {
                capacity,
                needed: fixed.len(),
            });
        }
        Ok(Self {
            mode,
            fixed,
            msi: BTreeMap::new(),
            capacity,
            dirty: true,
            installs: 0,
            skipped: 0,
        })
    }

    /// The mode GSIs 0..=23 follow.
    pub fn mode(&self) -> RoutingMode {
        self.mode
    }

    /// Number of entries in the table.
    pub fn len(&self) -> usize {
        self.fixed.len() + self.msi.len()
    }

    /// Never true: GSIs 0..=23 are always routed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Maximum number of entries.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Allocate the lowest free GSI >= 24 for `msg`.
    pub fn alloc_msi(&mut self, msg: MsiMessage) -> Result<u32, RoutingError> {
        if self.len() >= self.capacity {
            return Err(RoutingError::Full {
                capacity: self.capacity,
            });
        }
        let mut gsi = FIRST_MSI_GSI;
        for used in self.msi.keys() {
            if *used != gsi {
                break;
            }
            gsi += 1;
        }
        self.msi.insert(gsi, msg);
        self.dirty = true;
        Ok(gsi)
    }

    /// Change the message of allocated MSI route `gsi` (marks dirty only if it differs).
    pub fn update_msi(&mut self, gsi: u32, msg: MsiMessage) -> Result<(), RoutingError> {
        if gsi < FIRST_MSI_GSI {
            return Err(RoutingError::Reserved { gsi });
        }
        let slot = self
            .msi
            .get_mut(&gsi)
            .ok_or(RoutingError::NotAllocated { gsi })?;
        if *slot != msg {
            *slot = msg;
            self.dirty = true;
        }
        Ok(())
    }

    /// Release MSI route `gsi`.
    pub fn free(&mut self, gsi: u32) -> Result<(), RoutingError> {
        if gsi < FIRST_MSI_GSI {
            return Err(RoutingError::Reserved { gsi });
        }
        self.msi
            .remove(&gsi)
            .ok_or(RoutingError::NotAllocated { gsi })?;
        self.dirty = true;
        Ok(())
    }

    /// The message of MSI route `gsi`, if allocated.
    pub fn msi(&self, gsi: u32) -> Option<MsiMessage> {
        self.msi.get(&gsi).copied()
    }

    /// Split irqchip: set the MSI route of IOAPIC pin `pin` (GSI `pin`).
    pub fn set_ioapic_route(&mut self, pin: u32, msg: MsiMessage) -> Result<(), RoutingError> {
        if self.mode != RoutingMode::SplitIrqchip {
            return Err(RoutingError::NotSplitMode);
        }
        let e = self
            .fixed
            .iter_mut()
            .find(|e| e.gsi == pin)
            .ok_or(RoutingError::NoSuchPin { pin })?;
        let target = RouteTarget::Msi(msg);
        if e.target != target {
            e.target = target;
            self.dirty = true;
        }
        Ok(())
    }

    /// The full table, GSIs 0..=23 first, then MSI routes by GSI.
    pub fn entries(&self) -> Vec<RouteEntry> {
        let mut v = Vec::with_capacity(self.len());
        v.extend_from_slice(&self.fixed);
        v.extend(self.msi.iter().map(|(gsi, m)| RouteEntry {
            gsi: *gsi,
            target: RouteTarget::Msi(*m),
        }));
        v
    }

    /// Whether the table changed since the last install.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Force the next [`take_install`](Self::take_install) to return the table (e.g. after an
    /// install failed).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// The full table if it changed since the last install (and count an install), else
    /// `None` (and count a skipped install).
    pub fn take_install(&mut self) -> Option<Vec<RouteEntry>> {
        if self.dirty {
            self.dirty = false;
            self.installs += 1;
            Some(self.entries())
        } else {
            self.skipped += 1;
            None
        }
    }

    /// Installs handed out.
    pub fn installs(&self) -> u64 {
        self.installs
    }

    /// Redundant installs skipped.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msi::MSI_ADDRESS_BASE;
    use proptest::prelude::*;

    fn m(v: u32) -> MsiMessage {
        MsiMessage {
            address: MSI_ADDRESS_BASE,
            data: v,
        }
    }

    #[test]
    fn kernel_mode_has_kvm_default_routing() {
        let r = GsiRouting::new(RoutingMode::KernelIrqchip, KVM_MAX_IRQ_ROUTES).unwrap();
        let e = r.entries();
        assert_eq!(e.len(), 16 * 2 + 8);
        assert!(e.contains(&RouteEntry {
            gsi: 9,
            target: RouteTarget::Irqchip {
                chip: IrqchipId::PicSlave,
                pin: 1
            }
        }));
        assert!(e.contains(&RouteEntry {
            gsi: 23,
            target: RouteTarget::Irqchip {
                chip: IrqchipId::Ioapic,
                pin: 23
            }
        }));
        assert_eq!(IrqchipId::Ioapic.kvm_id(), 2);
    }

    #[test]
    fn split_mode_maps_ioapic_pin_i_to_gsi_i_as_msi() {
        let mut r = GsiRouting::new(RoutingMode::SplitIrqchip, 64).unwrap();
        r.set_ioapic_route(5, m(0x8035)).unwrap();
        let e = r.entries();
        assert_eq!(e.len(), 24);
        assert_eq!(
            e[5],
            RouteEntry {
                gsi: 5,
                target: RouteTarget::Msi(m(0x8035))
            }
        );
    }

    #[test]
    fn ioapic_routes_need_split_mode_and_a_real_pin() {
        let mut k = GsiRouting::new(RoutingMode::KernelIrqchip, 64).unwrap();
        assert_eq!(k.set_ioapic_route(1, m(1)), Err(RoutingError::NotSplitMode));
        let mut s = GsiRouting::new(RoutingMode::SplitIrqchip, 64).unwrap();
        assert_eq!(
            s.set_ioapic_route(24, m(1)),
            Err(RoutingError::NoSuchPin { pin: 24 })
        );
    }

    #[test]
    fn msi_gsis_start_at_24_and_reuse_the_lowest_free() {
        let mut r = GsiRouting::new(RoutingMode::SplitIrqchip, 64).unwrap();
        assert_eq!(r.alloc_msi(m(1)).unwrap(), 24);
        assert_eq!(r.alloc_msi(m(2)).unwrap(), 25);
        assert_eq!(r.alloc_msi(m(3)).unwrap(), 26);
        r.free(25).unwrap();
        assert_eq!(r.alloc_msi(m(4)).unwrap(), 25);
        assert_eq!(r.msi(25), Some(m(4)));
    }

    #[test]
    fn reserved_and_unallocated_gsis_are_errors() {
        let mut r = GsiRouting::new(RoutingMode::SplitIrqchip, 64).unwrap();
        assert_eq!(r.free(3), Err(RoutingError::Reserved { gsi: 3 }));
        assert_eq!(
            r.update_msi(23, m(1)),
            Err(RoutingError::Reserved { gsi: 23 })
        );
        assert_eq!(r.free(30), Err(RoutingError::NotAllocated { gsi: 30 }));
        assert_eq!(
            r.update_msi(30, m(1)),
            Err(RoutingError::NotAllocated { gsi: 30 })
        );
    }

    #[test]
    fn full_table_is_a_typed_error() {
        let mut r = GsiRouting::new(RoutingMode::SplitIrqchip, 26).unwrap();
        r.alloc_msi(m(1)).unwrap();
        r.alloc_msi(m(2)).unwrap();
        assert_eq!(r.alloc_msi(m(3)), Err(RoutingError::Full { capacity: 26 }));
        assert!(GsiRouting::new(RoutingMode::KernelIrqchip, 39).is_err());
    }

    #[test]
    fn install_only_when_something_changed() {
        let mut r = GsiRouting::new(RoutingMode::SplitIrqchip, 64).unwrap();
        assert!(r.take_install().is_some(), "initial table");
        assert!(r.take_install().is_none());
        let g = r.alloc_msi(m(1)).unwrap();
        assert!(r.take_install().is_some());
        r.update_msi(g, m(1)).unwrap();
        r.set_ioapic_route(0, RedirectionEntry::default().to_msi())
            .unwrap();
        assert!(
            r.take_install().is_none(),
            "same values: nothing to install"
        );
        r.update_msi(g, m(2)).unwrap();
        assert_eq!(r.take_install().map(|e| e.len()), Some(25));
        assert_eq!((r.installs(), r.skipped()), (3, 2));
    }

    /// The pure parts wired as the split backend uses them: two sources share level GSI 10;
    /// the IOAPIC route lands in the table with its trigger bit; the line is delivered once,
    /// redelivered after EOI while either source holds it, and quiet once both drop.
    #[test]
    fn split_flow_shared_level_line_through_wired_or_ioapic_and_routing() {
        use crate::ioapic::{Ioapic, IOREGSEL, IOWIN, REG_REDTBL};
        use crate::line::{LineChange, WiredOr};

        let mut lines = WiredOr::new(24);
        let mut io = Ioapic::new();
        let mut table = GsiRouting::new(RoutingMode::SplitIrqchip, KVM_MAX_IRQ_ROUTES).unwrap();
        table.take_install();

        io.mmio_write(IOREGSEL, &[REG_REDTBL + 20]);
        let fx = io.mmio_write(IOWIN, &(0x5Au32 | (1 << 15)).to_le_bytes());
        for pin in 0..24u8 {
            if fx.routes_changed & (1 << pin) != 0 {
                let msg = io.route_for_pin(pin).unwrap();
                table.set_ioapic_route(u32::from(pin), msg).unwrap();
            }
        }
        let installed = table.take_install().expect("route changed");
        match installed[10].target {
            RouteTarget::Msi(msg) => assert!(msg.is_level() && msg.data & 0xFF == 0x5A),
            other => panic!("unexpected {other:?}"),
        }

        let mut drive =
            |io: &mut Ioapic, src: u8, level: bool| match lines.set(10, src, level).unwrap() {
                LineChange::Rose => io.set_pin(10, true).delivered_pins(),
                LineChange::Fell => io.set_pin(10, false).delivered_pins(),
                LineChange::Unchanged => 0,
            };
        assert_eq!(drive(&mut io, 0, true), 1 << 10);
        assert_eq!(drive(&mut io, 1, true), 0, "wired-OR: no new edge");
        assert_eq!(drive(&mut io, 0, false), 0);
        assert_eq!(
            io.eoi(0x5A).delivered_pins(),
            1 << 10,
            "source 1 still holds it"
        );
        assert_eq!(drive(&mut io, 1, false), 0);
        let fx = io.eoi(0x5A);
        assert_eq!((fx.eoi_pins, fx.delivered_pins()), (1 << 10, 0));
        assert!(table.take_install().is_none());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(u32),
        Update(u32, u32),
        Free(u32),
        Pin(u32, u32),
        Install,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..4).prop_map(Op::Alloc),
            (0u32..40, 0u32..4).prop_map(|(g, v)| Op::Update(g, v)),
            (0u32..40).prop_map(Op::Free),
            (0u32..26, 0u32..4).prop_map(|(p, v)| Op::Pin(p, v)),
            Just(Op::Install),
        ]
    }

    proptest! {
        #[test]
        fn table_stays_consistent_and_installs_only_changes(
            ops in proptest::collection::vec(op(), 0..100)
        ) {
            let cap = 24 + 8;
            let mut r = GsiRouting::new(RoutingMode::SplitIrqchip, cap).unwrap();
            let mut installed = r.take_install().unwrap();
            for o in ops {
                match o {
                    Op::Alloc(v) => {
                        let full = r.len() == cap;
                        match r.alloc_msi(m(v)) {
                            Ok(g) => prop_assert!(g >= FIRST_MSI_GSI && !full),
                            Err(e) => prop_assert_eq!(e, RoutingError::Full { capacity: cap }),
                        }
                    }
                    Op::Update(g, v) => { let _ = r.update_msi(g, m(v)); }
                    Op::Free(g) => { let _ = r.free(g); }
                    Op::Pin(p, v) => { let _ = r.set_ioapic_route(p, m(v)); }
                    Op::Install => {
                        let now = r.entries();
                        match r.take_install() {
                            Some(e) => installed = e,
                            None => prop_assert_eq!(&now, &installed, "skipped a real change"),
                        }
                    }
                }
                let e = r.entries();
                prop_assert!(e.len() <= cap);
                let mut gsis: Vec<u32> = e.iter().map(|x| x.gsi).collect();
                gsis.dedup();
                prop_assert_eq!(gsis.len(), e.len(), "GSIs unique and sorted");
                prop_assert!(e.iter().take(24).enumerate().all(|(i, x)| x.gsi == i as u32));
            }
        }
    }

    #[test]
    fn full_kvm_sized_table_stays_below_gsi_4096() {
        let mut r = GsiRouting::new(RoutingMode::KernelIrqchip, KVM_MAX_IRQ_ROUTES).unwrap();
        let mut last = 0;
        while let Ok(g) = r.alloc_msi(m(1)) {
            last = g;
        }
        assert_eq!(r.len(), KVM_MAX_IRQ_ROUTES);
        assert!(last < 4096);
    }
}
