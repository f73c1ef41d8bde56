//! Rate limiting for guest-triggered log messages.
//!
//! The guest is hostile: a loop writing a bad value to a port must not flood the host log.
//! Each call site owns a [`RateLimiter`] (usually a field of the device) and logs through
//! [`warn_ratelimited!`](crate::warn_ratelimited).

use std::time::{Duration, Instant};

/// Allows up to `burst` events per `interval`; counts the ones it suppressed.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    interval: Duration,
    burst: u32,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl Default for RateLimiter {
    /// 10 messages per 5 seconds.
    fn default() -> Self {
        Self::new(10, Duration::from_secs(5))
    }
}

impl RateLimiter {
    pub fn new(burst: u32, interval: Duration) -> Self {
        Self {
            interval,
            burst,
            window_start: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// Whether an event at `now` may be logged. When a new window opens, returns how many
    /// events the previous windows suppressed so the caller can mention them.
    pub fn check_at(&mut self, now: Instant) -> Option<u64> {
        let new_window = match self.window_start {
            None => true,
            Some(start) => now.saturating_duration_since(start) >= self.interval,
        };
        if new_window {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window < self.burst {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }

    /// [`check_at`](Self::check_at) with the current time.
    pub fn check(&mut self) -> Option<u64> {
        self.check_at(Instant::now())
    }
}

/// `log::warn!` through a [`RateLimiter`]: `warn_ratelimited!(self.rl, "bad {x}")`.
#[macro_export]
macro_rules! warn_ratelimited {
    ($rl:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $rl.check() {
            if suppressed > 0 {
                log::warn!("({} similar messages suppressed)", suppressed);
            }
            log::warn!($($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_burst_then_suppresses_within_interval() {
        let mut rl = RateLimiter::new(2, Duration::from_secs(1));
        let t = Instant::now();
        assert_eq!(rl.check_at(t), Some(0));
        assert_eq!(rl.check_at(t), Some(0));
        assert_eq!(rl.check_at(t), None);
        assert_eq!(rl.check_at(t + Duration::from_millis(999)), None);
    }

    #[test]
    fn new_window_reports_suppressed_count() {
        let mut rl = RateLimiter::new(1, Duration::from_secs(1));
        let t = Instant::now();
        assert_eq!(rl.check_at(t), Some(0));
        assert_eq!(rl.check_at(t), None);
        assert_eq!(rl.check_at(t), None);
        assert_eq!(rl.check_at(t + Duration::from_secs(1)), Some(2));
    }
}
