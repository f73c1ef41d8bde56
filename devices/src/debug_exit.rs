//! QEMU-compatible `isa-debug-exit` at port 0xf4 (`DEBUG_EXIT_PORT`).
//!
//! A write of `v` (1, 2 or 4 bytes, little endian) ends the VM; the VMM exits with status
//! `(v << 1) | 1`, as QEMU does, so test kernels written for QEMU run unchanged.
//! Reads return all-ones (QEMU's device has no readable register).

use std::sync::Arc;

use crate::{BusDevice, ExitSink, GuestExit};

/// Register on the PIO bus at `DEBUG_EXIT_PORT` with length 4.
pub struct DebugExit {
    exit: Arc<dyn ExitSink>,
}

impl DebugExit {
    pub fn new(exit: Arc<dyn ExitSink>) -> Self {
        Self { exit }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // QEMU registers one 4-byte port at 0xf4 (`iosize` 4); anything at another offset
        // or wider than 4 bytes is not a write to it.
        if offset != 0 || data.is_empty() || data.len() > 4 {
            return;
        }
        let mut v = [0u8; 4];
        v[..data.len()].copy_from_slice(data);
        self.exit
            .request_exit(GuestExit::DebugExit(u32::from_le_bytes(v)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdev::fakes::FakeExit;

    fn dev() -> (DebugExit, Arc<FakeExit>) {
        let e = Arc::new(FakeExit::default());
        (DebugExit::new(e.clone()), e)
    }

    #[test]
    fn byte_write_requests_debug_exit_with_value() {
        let (mut d, e) = dev();
        d.write(0, &[0x10]);
        assert_eq!(*e.0.lock().unwrap(), vec![GuestExit::DebugExit(0x10)]);
    }

    #[test]
    fn dword_write_requests_debug_exit_with_full_value() {
        let (mut d, e) = dev();
        d.write(0, &0x1234_5678u32.to_le_bytes());
        assert_eq!(
            *e.0.lock().unwrap(),
            vec![GuestExit::DebugExit(0x1234_5678)]
        );
    }

    #[test]
    fn write_at_other_offset_or_size_is_ignored() {
        let (mut d, e) = dev();
        d.write(1, &[1]);
        d.write(0, &[]);
        d.write(0, &[1; 8]);
        assert!(e.0.lock().unwrap().is_empty());
    }

    #[test]
    fn read_returns_all_ones() {
        let (mut d, _) = dev();
        let mut b = [0u8; 4];
        d.read(0, &mut b);
        assert_eq!(b, [0xff; 4]);
    }
}
