//! Rate limiting for guest-triggered log messages.
//!
//! The guest is hostile: it can program a controller wrongly millions of times a second. Every
//! warning a guest can trigger goes through [`guest_warn!`](crate::guest_warn), which allows at
//! most [`DEFAULT_BURST`] messages per second *per call site* and then reports how many were
//! suppressed when the next window opens.
//!
//! [`RateLimiter`] is lock-free (two atomics) and usable in a `static`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Messages allowed per call site per window by [`guest_warn!`](crate::guest_warn).
pub const DEFAULT_BURST: u32 = 10;
/// The window length of [`guest_warn!`](crate::guest_warn), in milliseconds.
pub const DEFAULT_WINDOW_MS: u64 = 1000;

/// Allows at most `burst` events per `window_ms` milliseconds.
///
/// Windows are fixed (not sliding): the first event after a window has expired opens a new
/// one. Races between threads can let a few extra events through at a window boundary; that
/// is acceptable for logging.
#[derive(Debug)]
pub struct RateLimiter {
    burst: u32,
    window_ms: u64,
    /// Start of the current window in ms since [`clock_ms`]'s epoch, plus one (0 = no window).
    window_start: AtomicU64,
    /// Events seen in the current window (allowed or not).
    count: AtomicU32,
    /// Events refused since the last allowed one.
    suppressed: AtomicU64,
}

/// The verdict for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it. `suppressed` events were dropped since the last allowed one.
    Allow { suppressed: u64 },
    /// Drop it.
    Suppress,
}

impl RateLimiter {
    /// A limiter allowing `burst` events per `window_ms` milliseconds.
    pub const fn new(burst: u32, window_ms: u64) -> Self {
        Self {
            burst,
            window_ms,
            window_start: AtomicU64::new(0),
            count: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// The limiter [`guest_warn!`](crate::guest_warn) uses.
    pub const fn per_second_default() -> Self {
        Self::new(DEFAULT_BURST, DEFAULT_WINDOW_MS)
    }

    /// Judge one event happening now.
    pub fn check(&self) -> Verdict {
        self.check_at(clock_ms())
    }

    /// Judge one event happening at `now_ms` (monotonic milliseconds; for tests).
    pub fn check_at(&self, now_ms: u64) -> Verdict {
        let stamp = now_ms.saturating_add(1);
        let start = self.window_start.load(Ordering::Relaxed);
        if start == 0 || stamp.saturating_sub(start) >= self.window_ms {
            // Open a new window; whoever wins the exchange resets the count.
            if self
                .window_start
                .compare_exchange(start, stamp, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                self.count.store(0, Ordering::Relaxed);
            }
        }
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        if n < self.burst {
            Verdict::Allow {
                suppressed: self.suppressed.swap(0, Ordering::Relaxed),
            }
        } else {
            // Keep the count from wrapping under a flood.
            self.count.store(self.burst, Ordering::Relaxed);
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            Verdict::Suppress
        }
    }
}

/// Monotonic milliseconds since the first call in this process.
pub fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Emit a warning that passed `limiter` (used by [`guest_warn!`](crate::guest_warn)).
#[doc(hidden)]
pub fn emit(limiter: &RateLimiter, target: &str, args: std::fmt::Arguments<'_>) {
    if let Verdict::Allow { suppressed } = limiter.check() {
        if suppressed > 0 {
            log::warn!(target: target, "{args} ({suppressed} similar messages suppressed)");
        } else {
            log::warn!(target: target, "{args}");
        }
    }
}

/// `log::warn!` for guest-triggered conditions, limited per call site to
/// [`DEFAULT_BURST`] messages per second.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => {{
        static LIMITER: $crate::ratelimit::RateLimiter =
            $crate::ratelimit::RateLimiter::per_second_default();
        $crate::ratelimit::emit(&LIMITER, module_path!(), format_args!($($arg)+));
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_burst_then_suppresses_within_window() {
        let l = RateLimiter::new(3, 1000);
        for _ in 0..3 {
            assert!(matches!(l.check_at(5), Verdict::Allow { .. }));
        }
        assert_eq!(l.check_at(6), Verdict::Suppress);
        assert_eq!(l.check_at(999), Verdict::Suppress);
    }

    #[test]
    fn new_window_allows_again_and_reports_suppressed_count() {
        let l = RateLimiter::new(1, 1000);
        assert_eq!(l.check_at(0), Verdict::Allow { suppressed: 0 });
        assert_eq!(l.check_at(10), Verdict::Suppress);
        assert_eq!(l.check_at(20), Verdict::Suppress);
        assert_eq!(l.check_at(1000), Verdict::Allow { suppressed: 2 });
    }

    #[test]
    fn flood_does_not_wrap_the_counter() {
        let l = RateLimiter::new(2, u64::MAX);
        for _ in 0..100_000 {
            l.check_at(1);
        }
        assert_eq!(l.check_at(2), Verdict::Suppress);
    }

    #[test]
    fn guest_warn_macro_compiles_and_runs() {
        for i in 0..50 {
            crate::guest_warn!("test warning {i}");
        }
    }
}
