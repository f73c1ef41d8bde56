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
