//! Rate limiting for log lines that clients or a broken environment can
//! trigger in bulk, such as denials and accept failures.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Limiter that lets one log line through per interval and counts the rest.
///
/// Lock-free, so the request path can consult it on every denial.
pub struct LogLimiter {
    interval: Duration,
    /// Milliseconds since [`epoch`] before which lines are suppressed.
    next_allowed_ms: AtomicU64,
    /// Lines suppressed since the last one let through.
    suppressed: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl LogLimiter {
    pub const fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            next_allowed_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Records one event. Returns `Some(suppressed)` when a line may be
    /// logged now, with the number of events suppressed since the last line.
    pub fn check(&self) -> Option<u64> {
        let now_ms = epoch().elapsed().as_millis() as u64;
        let next = self.next_allowed_ms.load(Ordering::Relaxed);
        if now_ms < next {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let following = now_ms + self.interval.as_millis() as u64;
        if self
            .next_allowed_ms
            .compare_exchange(next, following, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            // Another thread let its line through for this interval.
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_suppressed_events() {
        let limiter = LogLimiter::new(Duration::from_millis(200));
        assert_eq!(limiter.check(), Some(0));
        assert_eq!(limiter.check(), None);
        assert_eq!(limiter.check(), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(limiter.check(), Some(2));
    }
}
