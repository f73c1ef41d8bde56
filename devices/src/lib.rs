//! Guest-visible devices and the address-range bus that dispatches vCPU exits to them.

pub mod bus;

pub use bus::{Bus, BusDevice, BusError};
