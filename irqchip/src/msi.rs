//! MSI messages (Intel SDM vol. 3, 11.11 "Message Signalled Interrupts").

/// One message-signalled interrupt: the address/data pair a device writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// Something that can deliver an MSI to the local APICs.
pub trait MsiSender: Send + Sync {
    fn send_msi(&self, msg: MsiMessage) -> Result<(), crate::IrqError>;
}
