//! The device thread's side of a virtio device: an `event-manager` subscriber that waits on
//! each queue's kick eventfd (a KVM ioeventfd, so a guest notify never runs device code on
//! a vCPU thread), services the queue, and delivers the interrupt, optionally moderated.
//!
//! Interrupt moderation (like a NIC's rx-usecs / rx-frames): with `usecs > 0`, a queue's
//! notification is held back until `max_frames` completions are pending (if `max_frames >
//! 0`) or `usecs` microseconds have passed since the first held one, whichever comes first;
//! then one interrupt covers them all. Without moderation every needed notification is
//! delivered at once.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::VirtioTransport;

/// Per-device interrupt moderation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Moderation {
    /// Hold notifications up to this long (0 = no moderation).
    pub usecs: u32,
    /// Deliver as soon as this many completions are pending (0 = only the timer).
    pub max_frames: u32,
}

const TIMER_DATA: u32 = u32::MAX;

/// Event-manager subscriber for one virtio device.
pub struct VirtioWorker<T: VirtioTransport> {
    dev: Arc<Mutex<T>>,
    kicks: Vec<EventFd>,
    moderation: Moderation,
    timer: Option<TimerFd>,
    armed: bool,
    /// Completions held back per queue.
    pending: Vec<u32>,
}

impl<T: VirtioTransport> VirtioWorker<T> {
    pub fn new(
        dev: Arc<Mutex<T>>,
        kicks: Vec<EventFd>,
        moderation: Moderation,
    ) -> std::io::Result<Self> {
        let timer = if moderation.usecs > 0 {
            Some(TimerFd::new()?)
        } else {
            None
        };
        let n = kicks.len();
        Ok(Self {
            dev,
            kicks,
            moderation,
            timer,
            armed: false,
            pending: vec![0; n],
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.dev.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Service queue `q` after a kick.
    pub fn kick(&mut self, q: usize) {
        let r = {
            let mut d = self.lock();
            let r = d.core().process_queue(q);
            log::debug!("virtio: kick on queue {q}: {r:?}");
            if r.config_changed {
                d.signal_config();
            }
            if r.notify && self.timer.is_none() {
                d.signal_queue(q);
            }
            r
        };
        if !r.notify || self.timer.is_none() {
            return;
        }
        let Some(p) = self.pending.get_mut(q) else {
            return;
        };
        *p = p.saturating_add(r.completed);
        let max = self.moderation.max_frames;
        if max > 0 && *p >= max {
            *p = 0;
            let mut d = self.lock();
            d.signal_queue(q);
        } else {
            let stats = self.lock().core().stats.clone();
            stats.moderated.fetch_add(1, Ordering::Relaxed);
            if !self.armed {
                if let Some(t) = &mut self.timer {
                    let dur = Duration::from_micros(u64::from(self.moderation.usecs));
                    match t.reset(dur, None) {
                        Ok(()) => self.armed = true,
                        Err(e) => log::warn!("virtio: arming the moderation timer failed: {e}"),
                    }
                }
            }
        }
    }

    /// The moderation timer expired: deliver every held notification.
    pub fn timer_expired(&mut self) {
        self.armed = false;
        let due: Vec<usize> = self
            .pending
            .iter_mut()
            .enumerate()
            .filter_map(|(q, p)| (std::mem::take(p) > 0).then_some(q))
            .collect();
        if due.is_empty() {
            return;
        }
        let mut d = self.lock();
        for q in due {
            d.signal_queue(q);
        }
    }
}

impl<T: VirtioTransport + 'static> MutEventSubscriber for VirtioWorker<T> {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, k) in self.kicks.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(k, i as u32, EventSet::IN)) {
                log::error!("virtio: cannot watch queue {i}'s kick eventfd: {e:?}");
            }
        }
        if let Some(t) = &self.timer {
            if let Err(e) = ops.add(Events::with_data(t, TIMER_DATA, EventSet::IN)) {
                log::error!("virtio: cannot watch the moderation timer: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let data = events.data();
        if data == TIMER_DATA {
            if let Some(t) = &mut self.timer {
                let _ = t.wait();
            }
            self.timer_expired();
            return;
        }
        let q = data as usize;
        if let Some(k) = self.kicks.get(q) {
            // The counter may hold several kicks: one pass services them all.
            let _ = k.read();
        }
        self.kick(q);
    }
}

#[cfg(test)]
mod tests {
    use super::super::block::{Block, BlockConfig, T_IN};
    use super::super::testutil::*;
    use super::super::{VirtioCore, F_VERSION_1};
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    /// A transport that counts interrupts.
    struct Counting {
        core: VirtioCore,
        queue_irqs: u32,
        config_irqs: u32,
    }

    impl VirtioTransport for Counting {
        fn core(&mut self) -> &mut VirtioCore {
            &mut self.core
        }
        fn signal_queue(&mut self, _queue: usize) {
            self.queue_irqs += 1;
        }
        fn signal_config(&mut self) {
            self.config_irqs += 1;
        }
    }

    fn setup(
        m: Moderation,
    ) -> (
        VirtioWorker<Counting>,
        Arc<Mutex<Counting>>,
        GuestMemoryMmap,
    ) {
        let f = crate::virtio::block::test_file("worker", 1 << 20);
        let blk = Block::new(BlockConfig {
            file: f,
            readonly: false,
            id: "w".into(),
        })
        .unwrap();
        let mem = mem();
        let mut core = VirtioCore::new(Box::new(blk), mem.clone());
        activate(&mut core, 16, F_VERSION_1);
        let dev = Arc::new(Mutex::new(Counting {
            core,
            queue_irqs: 0,
            config_irqs: 0,
        }));
        let kick = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let w = VirtioWorker::new(dev.clone(), vec![kick], m).unwrap();
        (w, dev, mem)
    }

    /// Publish request number `n` (each a 1-sector read in its own descriptors).
    fn submit(mem: &GuestMemoryMmap, n: u16) {
        let d = n * 3;
        let hdr = DATA + u64::from(n) * 0x1000;
        mem.write_obj(T_IN, GuestAddress(hdr)).unwrap();
        mem.write_obj(0u64, GuestAddress(hdr + 8)).unwrap();
        desc(mem, d % 16, hdr, 16, F_NEXT, (d + 1) % 16);
        desc(
            mem,
            (d + 1) % 16,
            hdr + 0x100,
            512,
            F_NEXT | F_WRITE,
            (d + 2) % 16,
        );
        desc(mem, (d + 2) % 16, hdr + 0x400, 1, F_WRITE, 0);
        avail(mem, n % 16, d % 16, n + 1);
    }

    #[test]
    fn without_moderation_each_needed_notification_interrupts_at_once() {
        let (mut w, dev, mem) = setup(Moderation::default());
        submit(&mem, 0);
        w.kick(0);
        submit(&mem, 1);
        w.kick(0);
        assert_eq!(dev.lock().unwrap().queue_irqs, 2);
    }

    #[test]
    fn max_frames_delivers_one_interrupt_per_batch_of_completions() {
        let (mut w, dev, mem) = setup(Moderation {
            usecs: 1_000_000,
            max_frames: 3,
        });
        for n in 0..3 {
            submit(&mem, n);
            w.kick(0);
        }
        assert_eq!(dev.lock().unwrap().queue_irqs, 1);
        let stats = dev.lock().unwrap().core.stats.clone();
        assert_eq!(stats.moderated.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn moderation_timer_flushes_held_notifications() {
        let (mut w, dev, mem) = setup(Moderation {
            usecs: 1_000_000,
            max_frames: 0,
        });
        submit(&mem, 0);
        w.kick(0);
        submit(&mem, 1);
        w.kick(0);
        assert_eq!(
            dev.lock().unwrap().queue_irqs,
            0,
            "held until the timer fires"
        );
        w.timer_expired();
        assert_eq!(
            dev.lock().unwrap().queue_irqs,
            1,
            "one interrupt covers both"
        );
        w.timer_expired();
        assert_eq!(dev.lock().unwrap().queue_irqs, 1, "nothing left to deliver");
    }

    #[test]
    fn needs_reset_raises_a_config_interrupt() {
        let (mut w, dev, mem) = setup(Moderation::default());
        avail(&mem, 0, 0, 200);
        w.kick(0);
        let d = dev.lock().unwrap();
        assert_eq!((d.queue_irqs, d.config_irqs), (0, 1));
    }
}
