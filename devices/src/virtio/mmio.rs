//! Virtio over MMIO, version 2 (virtio 1.2, 4.2).
//!
//! A 4 KiB register window (4.2.2). The interrupt is one edge-triggered line (as the ACPI
//! `LNRO0005` description says): the device sets a bit in InterruptStatus (bit 0 used
//! buffer, bit 1 configuration change) and pulses the line; the driver reads InterruptStatus
//! and writes the bits to InterruptACK. QueueNotify writes are caught by KVM ioeventfds
//! (data-matched on the queue index); one that reaches the VMM signals the same eventfd.

use std::sync::Arc;

use irqchip::{guest_warn, InterruptLine};
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{VirtioBackend, VirtioCore, VirtioStats, VirtioTransport};
use crate::BusDevice;

pub const MAGIC: u32 = 0x7472_6976; // "virt"
pub const VERSION: u32 = 2;
pub const VENDOR_ID: u32 = 0x554D_4551; // "QEMU", what Linux expects nothing of
pub const REG_QUEUE_NOTIFY: u64 = 0x50;
pub const CONFIG_OFFSET: u64 = 0x100;

pub const INT_USED_BUFFER: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// A virtio-mmio device; shared by the MMIO bus and the device thread.
pub struct VirtioMmio {
    core: VirtioCore,
    interrupt_status: u32,
    line: Arc<dyn InterruptLine>,
    kicks: Vec<EventFd>,
}

impl VirtioMmio {
    pub fn new(
        backend: Box<dyn VirtioBackend>,
        mem: GuestMemoryMmap,
        line: Arc<dyn InterruptLine>,
    ) -> std::io::Result<Self> {
        let core = VirtioCore::new(backend, mem);
        let kicks = (0..core.queues.len())
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self {
            core,
            interrupt_status: 0,
            line,
            kicks,
        })
    }

    pub fn kick_fds(&self) -> std::io::Result<Vec<EventFd>> {
        self.kicks.iter().map(EventFd::try_clone).collect()
    }

    pub fn stats(&self) -> Arc<VirtioStats> {
        self.core.stats.clone()
    }

    pub fn name(&self) -> &'static str {
        self.core.backend.name()
    }

    fn raise(&mut self, bit: u32) {
        self.interrupt_status |= bit;
        self.core
            .stats
            .interrupts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.line.pulse();
    }

    fn reg_read(&mut self, off: u64) -> u32 {
        let c = &mut self.core;
        let sel = usize::from(c.queue_sel);
        let q = c.queues.get(sel);
        match off {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => c.backend.device_type(),
            0x00C => VENDOR_ID,
            0x010 => c.device_features_word(),
            0x034 => q.map_or(0, |q| u32::from(q.max_size())),
            0x044 => q.map_or(0, |q| u32::from(q.ready())),
            0x060 => self.interrupt_status,
            0x070 => u32::from(c.status),
            0x0FC => u32::from(c.config_generation),
            _ => {
                guest_warn!("virtio-mmio: read of write-only or reserved register {off:#x}");
                0
            }
        }
    }

    fn reg_write(&mut self, off: u64, v: u32) {
        let writable = self.core.queue_writable();
        let c = &mut self.core;
        match off {
            0x014 => c.device_features_sel = v,
            0x020 => c.write_driver_features(v),
            0x024 => c.driver_features_sel = v,
            0x030 => c.queue_sel = v as u16,
            0x038 if writable => {
                if let Some(q) = c.selected() {
                    q.set_size(v as u16);
                }
            }
            0x044 if writable => {
                if let Some(q) = c.selected() {
                    q.set_ready(v == 1);
                }
            }
            REG_QUEUE_NOTIFY => {
                // Reached only when the ioeventfd did not catch the write.
                if let Some(k) = self.kicks.get(v as usize) {
                    let _ = k.write(1);
                } else {
                    guest_warn!("virtio-mmio: notify of nonexistent queue {v}");
                }
            }
            0x064 => self.interrupt_status &= !v,
            0x070 => {
                if c.write_status(v as u8) {
                    self.interrupt_status = 0;
                }
            }
            0x080 | 0x084 | 0x090 | 0x094 | 0x0A0 | 0x0A4 if writable => {
                let Some(q) = c.selected() else {
                    return;
                };
                let (lo, hi) = if off & 4 == 0 {
                    (Some(v), None)
                } else {
                    (None, Some(v))
                };
                match off & !7 {
                    0x080 => q.set_desc_table_address(lo, hi),
                    0x090 => q.set_avail_ring_address(lo, hi),
                    _ => q.set_used_ring_address(lo, hi),
                }
            }
            _ => guest_warn!(
                "virtio-mmio: write {v:#x} to read-only/reserved register {off:#x} (or queue register after DRIVER_OK) ignored"
            ),
        }
    }
}

impl VirtioTransport for VirtioMmio {
    fn core(&mut self) -> &mut VirtioCore {
        &mut self.core
    }

    fn signal_queue(&mut self, _queue: usize) {
        self.raise(INT_USED_BUFFER);
    }

    fn signal_config(&mut self) {
        self.raise(INT_CONFIG);
    }
}

impl BusDevice for VirtioMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            self.core.backend.read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        // Registers are 32-bit; other widths are undefined (4.2.2.2): read the containing
        // register's bytes.
        let v = self.reg_read(offset & !3).to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = v.get((offset as usize & 3) + i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            self.core.backend.write_config(offset - CONFIG_OFFSET, data);
            return;
        }
        if data.len() != 4 || offset & 3 != 0 {
            guest_warn!(
                "virtio-mmio: {}-byte register write at {offset:#x} is not an aligned 32-bit access; ignored",
                data.len()
            );
            return;
        }
        let mut b = [0u8; 4];
        b.copy_from_slice(data);
        self.reg_write(offset, u32::from_le_bytes(b));
    }
}

#[cfg(test)]
mod tests {
    use super::super::block::{Block, BlockConfig, T_IN};
    use super::super::testutil::*;
    use super::super::{
        F_VERSION_1, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    };
    use super::*;
    use std::sync::Mutex;
    use vm_memory::{Bytes, GuestAddress};

    #[derive(Default)]
    struct Pulses(Mutex<u32>);
    impl InterruptLine for Pulses {
        fn set_level(&self, _level: bool) {}
        fn pulse(&self) {
            *self.0.lock().unwrap() += 1;
        }
    }

    fn dev() -> (VirtioMmio, Arc<Pulses>, GuestMemoryMmap) {
        let f = crate::virtio::block::test_file("vmmio", 4096);
        let blk = Block::new(BlockConfig {
            file: f,
            readonly: false,
            id: "m".into(),
        })
        .unwrap();
        let line = Arc::new(Pulses::default());
        let m = mem();
        (
            VirtioMmio::new(Box::new(blk), m.clone(), line.clone()).unwrap(),
            line,
            m,
        )
    }

    fn r(d: &mut VirtioMmio, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(d: &mut VirtioMmio, off: u64, v: u32) {
        d.write(off, &v.to_le_bytes());
    }

    #[test]
    fn identification_registers_read_magic_version_2_and_block_id() {
        let (mut d, _, _) = dev();
        assert_eq!(r(&mut d, 0), MAGIC);
        assert_eq!(r(&mut d, 4), 2);
        assert_eq!(r(&mut d, 8), 2);
        assert_eq!(r(&mut d, 0x34), 256);
    }

    #[test]
    fn driver_brings_up_a_queue_and_a_request_pulses_the_line_and_sets_status() {
        let (mut d, line, m) = dev();
        w(&mut d, 0x70, u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER));
        w(&mut d, 0x24, 1);
        w(&mut d, 0x20, (F_VERSION_1 >> 32) as u32);
        w(
            &mut d,
            0x70,
            u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK),
        );
        assert_ne!(r(&mut d, 0x70) & u32::from(STATUS_FEATURES_OK), 0);
        w(&mut d, 0x30, 0);
        w(&mut d, 0x38, 16);
        w(&mut d, 0x80, DESC as u32);
        w(&mut d, 0x90, AVAIL as u32);
        w(&mut d, 0xA0, USED as u32);
        w(&mut d, 0x44, 1);
        w(
            &mut d,
            0x70,
            u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK),
        );
        m.write_obj(T_IN, GuestAddress(DATA)).unwrap();
        desc(&m, 0, DATA, 16, F_NEXT, 1);
        desc(&m, 1, DATA + 0x1000, 512, F_NEXT | F_WRITE, 2);
        desc(&m, 2, DATA + 0x2000, 1, F_WRITE, 0);
        avail(&m, 0, 0, 1);
        let res = d.core().process_queue(0);
        assert!(res.notify);
        d.signal_queue(0);
        assert_eq!(*line.0.lock().unwrap(), 1);
        assert_eq!(r(&mut d, 0x60), INT_USED_BUFFER);
        w(&mut d, 0x64, INT_USED_BUFFER);
        assert_eq!(r(&mut d, 0x60), 0);
        assert_eq!(used_idx(&m), 1);
    }

    #[test]
    fn queue_notify_register_signals_the_kick_eventfd() {
        let (mut d, _, _) = dev();
        let k = d.kick_fds().unwrap();
        w(&mut d, REG_QUEUE_NOTIFY, 0);
        assert_eq!(k[0].read().unwrap(), 1);
        w(&mut d, REG_QUEUE_NOTIFY, 5);
    }

    #[test]
    fn config_window_reads_capacity() {
        let (mut d, _, _) = dev();
        assert_eq!(r(&mut d, CONFIG_OFFSET), 8);
    }

    #[test]
    fn every_width_at_every_offset_is_safe() {
        let (mut d, _, _) = dev();
        for off in 0..0x1000u64 {
            for len in [1usize, 2, 4, 8] {
                d.write(off, &vec![0xFF; len]);
                let mut b = vec![0; len];
                d.read(off, &mut b);
            }
        }
    }
}
