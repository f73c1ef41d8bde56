//! The device thread's side of a virtio device: an `event-manager` subscriber that waits on
//! each queue's kick eventfd (a KVM ioeventfd, so a guest notify never runs device code on
//! a vCPU thread), services the queue, and delivers the interrupt, optionally moderated.
//!
//! Interrupt moderation (like a NIC's rx-usecs / rx-frames): with `usecs > 0`, a queue's
//! notification is held back until `max_frames` completions are pending (if `max_frames >
//! 0`) or `usecs` microseconds have passed since the first held one, whichever comes first;
//! then one interrupt covers them all. Without moderation every needed notification is
//! delivered at once.
//!
//! Host input (virtio-net's tap): the worker also watches each fd the backend lists in
//! `input_fds`. Readable means "deliver into the input queue"; when the core reports
//! `input_waiting` (input staged, no driver buffer) the fd is parked (its epoll interest set
//! emptied, so a readable tap cannot spin the loop) until the driver kicks that queue.

use std::os::unix::io::RawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::{QueueResult, VirtioTransport};

/// Per-device interrupt moderation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Moderation {
    /// Hold notifications up to this long (0 = no moderation).
    pub usecs: u32,
    /// Deliver as soon as this many completions are pending (0 = only the timer).
    pub max_frames: u32,
}

const TIMER_DATA: u32 = u32::MAX;
/// Event data of input fd *i*: `INPUT_DATA | i`.
const INPUT_DATA: u32 = 1 << 31;

/// A host fd feeding an input queue.
#[derive(Debug, Clone, Copy)]
struct Input {
    fd: RawFd,
    queue: usize,
    /// Interest set emptied while the driver has no buffer.
    parked: bool,
    /// Removed after an error or hang-up.
    gone: bool,
}

/// Event-manager subscriber for one virtio device.
pub struct VirtioWorker<T: VirtioTransport> {
    dev: Arc<Mutex<T>>,
    kicks: Vec<EventFd>,
    moderation: Moderation,
    timer: Option<TimerFd>,
    armed: bool,
    /// Completions held back per queue.
    pending: Vec<u32>,
    /// `VirtioCore::resets` when `pending` was last valid.
    seen_resets: u64,
    inputs: Vec<Input>,
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
        let inputs = {
            let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
            d.core()
                .backend
                .input_fds()
                .into_iter()
                .map(|(fd, queue)| Input {
                    fd,
                    queue,
                    parked: false,
                    gone: false,
                })
                .collect()
        };
        Ok(Self {
            dev,
            kicks,
            moderation,
            timer,
            armed: false,
            pending: vec![0; n],
            seen_resets: 0,
            inputs,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.dev.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Service queue `q` after a kick.
    pub fn kick(&mut self, q: usize) -> QueueResult {
        let r = self.lock().core().process_queue(q);
        log::debug!("virtio: kick on queue {q}: {r:?}");
        self.deliver(q, r);
        r
    }

    /// Host input for input queue `q` is readable.
    pub fn input(&mut self, q: usize) -> QueueResult {
        let r = self.lock().core().input_ready(q);
        log::trace!("virtio: input for queue {q}: {r:?}");
        self.deliver(q, r);
        r
    }

    /// Forget completions held for a driver that has since reset the device: they belong
    /// to rings that no longer exist, and counting them would end the new driver's first
    /// hold period early.
    fn forget_held_after_reset(&mut self, resets: u64) {
        if resets != self.seen_resets {
            self.seen_resets = resets;
            self.pending.fill(0);
        }
    }

    /// Deliver the interrupts `r` asks for on queue `q`, moderated when configured.
    fn deliver(&mut self, q: usize, r: QueueResult) {
        let resets = self.lock().core().resets;
        self.forget_held_after_reset(resets);
        {
            let mut d = self.lock();
            if r.config_changed {
                d.signal_config();
            }
            if r.notify && self.timer.is_none() {
                d.signal_queue(q);
            }
        }
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
            self.lock().signal_queue(q);
            // Nothing held on any queue any more: the running hold period ends here, so the
            // next held completion gets a full `usecs` rather than the rest of this one.
            if self.armed && self.pending.iter().all(|&p| p == 0) {
                if let Some(t) = &mut self.timer {
                    match t.clear() {
                        Ok(()) => self.armed = false,
                        Err(e) => log::warn!("virtio: disarming the moderation timer failed: {e}"),
                    }
                }
            }
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
        let resets = self.lock().core().resets;
        self.forget_held_after_reset(resets);
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

impl<T: VirtioTransport + 'static> VirtioWorker<T> {
    /// Park (`false`) or resume (`true`) watching input fd `i`.
    fn watch_input(&mut self, i: usize, on: bool, ops: &mut EventOps) {
        let Some(inp) = self.inputs.get_mut(i) else {
            return;
        };
        if inp.gone || inp.parked != on {
            return;
        }
        let set = if on { EventSet::IN } else { EventSet::empty() };
        match ops.modify(Events::with_data_raw(inp.fd, INPUT_DATA | i as u32, set)) {
            Ok(()) => inp.parked = !on,
            Err(e) => log::error!(
                "virtio: cannot change the watch on input fd {}: {e:?}",
                inp.fd
            ),
        }
    }

    /// After servicing queue `q`: park its input fds if the driver has no buffer, resume
    /// them once it has.
    fn update_inputs(&mut self, q: usize, r: QueueResult, ops: &mut EventOps) {
        for i in 0..self.inputs.len() {
            if self.inputs.get(i).is_some_and(|inp| inp.queue == q) {
                self.watch_input(i, !r.input_waiting, ops);
            }
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
        for (i, inp) in self.inputs.iter_mut().enumerate() {
            let ev = Events::with_data_raw(inp.fd, INPUT_DATA | i as u32, EventSet::IN);
            if let Err(e) = ops.add(ev) {
                log::error!("virtio: cannot watch input fd {}: {e:?}", inp.fd);
                inp.gone = true;
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let data = events.data();
        if data == TIMER_DATA {
            if let Some(t) = &mut self.timer {
                let _ = t.wait();
            }
            self.timer_expired();
            return;
        }
        if data & INPUT_DATA != 0 {
            let i = (data & !INPUT_DATA) as usize;
            let Some(inp) = self.inputs.get(i).copied() else {
                return;
            };
            if events
                .event_set()
                .intersects(EventSet::ERROR | EventSet::HANG_UP)
            {
                // A deleted tap reports EPOLLERR for ever: stop watching it.
                log::error!(
                    "virtio: input fd {} reported an error or hang-up; no more input for queue {}",
                    inp.fd,
                    inp.queue
                );
                let _ = ops.remove(events);
                if let Some(inp) = self.inputs.get_mut(i) {
                    inp.gone = true;
                }
                return;
            }
            let r = self.input(inp.queue);
            self.update_inputs(inp.queue, r, ops);
            return;
        }
        let q = data as usize;
        if let Some(k) = self.kicks.get(q) {
            // The counter may hold several kicks: one pass services them all.
            let _ = k.read();
        }
        let r = self.kick(q);
        self.update_inputs(q, r, ops);
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
    fn max_frames_flush_disarms_the_timer_so_the_next_hold_gets_full_usecs() {
        let (mut w, dev, mem) = setup(Moderation {
            usecs: 1_000_000,
            max_frames: 2,
        });
        submit(&mem, 0);
        w.kick(0);
        assert!(w.armed, "first held completion arms the timer");
        submit(&mem, 1);
        w.kick(0);
        assert_eq!(dev.lock().unwrap().queue_irqs, 1, "batch of 2 delivered");
        assert!(!w.armed, "nothing held: timer disarmed");
        assert!(!w.timer.as_ref().unwrap().is_armed().unwrap());
        submit(&mem, 2);
        w.kick(0);
        assert!(w.armed, "the next hold starts a fresh period");
    }

    #[test]
    fn device_reset_forgets_completions_held_for_the_old_driver() {
        let (mut w, dev, mem) = setup(Moderation {
            usecs: 1_000_000,
            max_frames: 2,
        });
        submit(&mem, 0);
        w.kick(0);
        assert_eq!(w.pending[0], 1, "one completion held");
        // The driver resets the device and sets the queue up again (virtio 1.2, 3.1.1).
        {
            let mut d = dev.lock().unwrap();
            d.core.reset();
            activate(&mut d.core, 16, F_VERSION_1);
        }
        w.timer_expired();
        assert_eq!(
            dev.lock().unwrap().queue_irqs,
            0,
            "no interrupt for the old driver's completion"
        );
        submit(&mem, 0);
        w.kick(0);
        assert_eq!(
            dev.lock().unwrap().queue_irqs,
            0,
            "the new driver's first completion starts a fresh batch of 2"
        );
    }

    /// virtio-net over a datagram socket pair, in a real event loop.
    mod input {
        use super::*;
        use crate::tap::{FrameIo, VNET_HDR_LEN};
        use crate::virtio::net::Net;
        use event_manager::{EventManager, SubscriberOps};
        use std::os::unix::io::{AsRawFd, RawFd};
        use std::os::unix::net::UnixDatagram;

        struct FakeTap(UnixDatagram);
        impl FrameIo for FakeTap {
            fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.0.recv(buf)
            }
            fn send(&mut self, frame: &[u8]) -> std::io::Result<usize> {
                self.0.send(frame)
            }
            fn fd(&self) -> RawFd {
                self.0.as_raw_fd()
            }
            fn label(&self) -> String {
                "fake tap".into()
            }
        }

        #[test]
        fn readable_tap_without_rx_buffers_is_parked_until_the_rx_kick() {
            let (dev_end, host) = UnixDatagram::pair().unwrap();
            dev_end.set_nonblocking(true).unwrap();
            let net = Net::new(Box::new(FakeTap(dev_end)), [2, 0, 0, 0, 0, 1]);
            let mem = mem();
            // Only the receive queue (0) is set up; that is all this test drives.
            let mut core = VirtioCore::new(Box::new(net), mem.clone());
            activate(&mut core, 16, F_VERSION_1);
            let dev = Arc::new(Mutex::new(Counting {
                core,
                queue_irqs: 0,
                config_irqs: 0,
            }));
            let kicks: Vec<EventFd> = (0..2)
                .map(|_| EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap())
                .collect();
            let rx_kick = kicks[0].try_clone().unwrap();
            let w = VirtioWorker::new(dev.clone(), kicks, Moderation::default()).unwrap();
            let mut em: EventManager<Box<dyn MutEventSubscriber + Send>> =
                EventManager::new().unwrap();
            em.add_subscriber(Box::new(w));

            let mut frame = vec![0u8; VNET_HDR_LEN];
            frame.extend_from_slice(&[0xEE; 60]);
            host.send(&frame).unwrap();
            assert_eq!(em.run_with_timeout(100).unwrap(), 1);
            // Parked: the still-readable tap does not wake the loop again.
            assert_eq!(em.run_with_timeout(50).unwrap(), 0);
            assert_eq!(dev.lock().unwrap().queue_irqs, 0);

            // The driver posts a buffer and kicks the receive queue.
            desc(&mem, 0, DATA, 2048, F_WRITE, 0);
            avail(&mem, 0, 0, 1);
            rx_kick.write(1).unwrap();
            assert_eq!(em.run_with_timeout(100).unwrap(), 1);
            assert_eq!(used_elem(&mem, 0), (0, (VNET_HDR_LEN + 60) as u32));
            assert_eq!(dev.lock().unwrap().queue_irqs, 1);

            // Watching again: the next frame is picked up from the tap by itself.
            desc(&mem, 1, DATA + 0x1000, 2048, F_WRITE, 0);
            avail(&mem, 1, 1, 2);
            host.send(&frame).unwrap();
            assert_eq!(em.run_with_timeout(100).unwrap(), 1);
            assert_eq!(used_idx(&mem), 2);
        }
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
