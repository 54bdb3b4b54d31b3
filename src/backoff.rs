//! The one exponential backoff every retry loop uses: token fetches, secret-manager steps, admin logins.
//!
//! The delay after `n` failures in a row doubles from `base` up to `cap`, with *equal jitter*: at least half
//! the ceiling, the other half uniformly random. Never near zero, so retries cannot bunch into a hot loop;
//! spread out, so replicas that failed together do not retry together.

use std::time::Duration;

/// Doubling from `base` to `cap`, with equal jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap }
    }

    /// The largest delay after `failures` (≥ 1) failures in a row: `base · 2^(failures−1)`, at most `cap`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << exponent).min(self.cap)
    }

    /// The delay after `failures` failures; `jitter` is uniform in `[0, 1)` (clamped).
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let ceiling = self.ceiling(failures);
        ceiling / 2 + (ceiling / 2).mul_f64(jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_equal_jitter_up_to_the_cap() {
        let b = Backoff::new(Duration::from_secs(5), Duration::from_secs(3600));
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(2500));
        assert_eq!(b.delay(1, 1.0), Duration::from_secs(5));
        assert_eq!(b.delay(2, 1.0), Duration::from_secs(10));
        assert_eq!(b.ceiling(10), Duration::from_secs(2560));
        assert_eq!(b.ceiling(11), Duration::from_secs(3600));
        assert_eq!(b.delay(u32::MAX, 0.0), Duration::from_secs(1800));
        assert_eq!(b.delay(0, 1.0), Duration::from_secs(5));
        let mut previous = Duration::ZERO;
        for n in 1..64 {
            let d = b.delay(n, 1.0);
            assert!(d >= previous && d <= b.cap);
            previous = d;
        }
    }
}
