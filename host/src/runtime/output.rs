//! The rate limit on what a tenant's plugin writes to the host log (`log`, stdout, stderr).
//!
//! A guest can call `log` in a loop or print megabytes; the log is the operator's, shared by
//! every tenant, and disk is finite. Each tenant gets a token bucket in bytes: lines within the
//! rate (and a burst) are logged, the rest are dropped and counted
//! (`pier_guest_output_dropped_total`), and the first line logged after a drop is preceded by
//! one line saying how many were dropped. One bucket per tenant, shared by every worker.

use std::sync::Mutex;
use std::time::Instant;

use prometheus::IntCounter;

/// Bytes per second a tenant's plugin may log.
pub const DEFAULT_RATE: u64 = 256 * 1024;
/// Bytes it may log at once after a quiet spell.
pub const DEFAULT_BURST: u64 = 1024 * 1024;

/// One tenant's output budget.
#[derive(Debug)]
pub struct OutputRate {
    rate: u64,
    burst: u64,
    state: Mutex<Bucket>,
    dropped: IntCounter,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    /// Lines and bytes dropped since the last line logged.
    dropped_lines: u64,
    dropped_bytes: u64,
}

/// What to do with a line.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it.
    Log,
    /// Log it, after a line saying that `lines` (`bytes`) were dropped before it.
    LogAfterDrops {
        /// Lines dropped.
        lines: u64,
        /// Their bytes.
        bytes: u64,
    },
    /// Drop it (counted).
    Drop,
}

impl OutputRate {
    /// `rate` bytes per second with a `burst`; drops counted in `dropped`.
    pub fn new(rate: u64, burst: u64, dropped: IntCounter) -> Self {
        OutputRate {
            rate,
            burst,
            state: Mutex::new(Bucket {
                tokens: burst as f64,
                last: Instant::now(),
                dropped_lines: 0,
                dropped_bytes: 0,
            }),
            dropped,
        }
    }

    /// A limiter with the default rate that is not exported.
    pub fn detached() -> Self {
        Self::new(
            DEFAULT_RATE,
            DEFAULT_BURST,
            crate::ops::metrics::detached_counter(),
        )
    }

    /// Decides about a line of `len` bytes written now.
    pub fn admit(&self, len: usize) -> Verdict {
        self.admit_at(len, Instant::now())
    }

    /// [`OutputRate::admit`] at a given time (tests move the clock by hand).
    pub fn admit_at(&self, len: usize, now: Instant) -> Verdict {
        let mut bucket = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(bucket.last);
        bucket.last = bucket.last.max(now);
        bucket.tokens =
            (bucket.tokens + elapsed.as_secs_f64() * self.rate as f64).min(self.burst as f64);
        // A line costs its bytes plus a fixed overhead for the log line's own fields, so a
        // flood of empty lines is limited too.
        let cost = len as f64 + 64.0;
        if bucket.tokens < cost {
            bucket.dropped_lines += 1;
            bucket.dropped_bytes += len as u64;
            self.dropped.inc();
            return Verdict::Drop;
        }
        bucket.tokens -= cost;
        if bucket.dropped_lines == 0 {
            return Verdict::Log;
        }
        let verdict = Verdict::LogAfterDrops {
            lines: bucket.dropped_lines,
            bytes: bucket.dropped_bytes,
        };
        bucket.dropped_lines = 0;
        bucket.dropped_bytes = 0;
        verdict
    }
}

/// Logs the "lines dropped" note of a verdict, if it has one; true if the line itself is to be
/// logged.
pub fn note_drops(verdict: &Verdict, listener: &str, plugin: &str) -> bool {
    match verdict {
        Verdict::Log => true,
        Verdict::LogAfterDrops { lines, bytes } => {
            tracing::warn!(
                target: "pier::guest",
                listener,
                plugin,
                dropped_lines = lines,
                dropped_bytes = bytes,
                "{lines} guest output lines ({bytes} bytes) dropped: the plugin logged faster than its rate"
            );
            true
        }
        Verdict::Drop => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_flood_is_cut_to_the_rate_and_the_drops_are_reported_once() {
        let rate = OutputRate::new(1000, 2000, crate::ops::metrics::detached_counter());
        let start = Instant::now();
        let mut logged = 0;
        for _ in 0..100 {
            if rate.admit_at(100, start) != Verdict::Drop {
                logged += 1;
            }
        }
        // 2000 tokens of burst at 164 per line.
        assert_eq!(logged, 12);
        assert_eq!(rate.dropped.get(), 88);
        // A second later, 1000 more tokens: the next line carries the drop report.
        let later = start + Duration::from_secs(1);
        assert_eq!(
            rate.admit_at(100, later),
            Verdict::LogAfterDrops {
                lines: 88,
                bytes: 8800
            }
        );
        assert_eq!(rate.admit_at(100, later), Verdict::Log);
    }
}
