//! Guest-visible devices and the address-range bus that dispatches vCPU exits to them.

pub mod acpi_pm;
pub mod bus;
pub mod cmos;
pub mod debug_exit;
pub mod fw_cfg;
pub mod i8042;
pub mod irqchip_ports;
pub mod pc_testdev;
pub mod pci;
pub mod pit;
pub mod serial;
pub mod tap;
pub mod testdev;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};

/// Why the guest wants the VM to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestExit {
    /// ACPI S5 (PM1a_CNT SLP_EN with SLP_TYP 5).
    PowerOff,
    /// i8042 pulse-reset (0xFE to port 0x64) or triple fault: treated as a request to stop.
    Reset,
    /// QEMU-compatible isa-debug-exit at 0xf4: the VMM exits with `(value << 1) | 1`.
    DebugExit(u32),
    /// irqvm test device EXIT register: the VMM exits with this status.
    TestExit(u32),
}

/// Where devices report that the guest asked to end the VM. The VMM stops all vCPUs.
pub trait ExitSink: Send + Sync {
    fn request_exit(&self, why: GuestExit);
}
