//! When to fetch the realm's key set: pure functions of times and outcomes.
//!
//! Nothing here sleeps, locks or talks to the network. The key-set task and the verifier follow these
//! decisions; the tests below drive them with explicit instants (and a paused tokio clock).
//!
//! The rules:
//! - the first fetch is due at start with `prefetch` (`--verify-prefetch-keys`); otherwise it is the first
//!   verification's (an unknown `kid` of an empty key set, below), and the schedule starts after it, so a
//!   pod that verifies nothing fetches nothing;
//! - after a successful fetch, the next one is due a jittered 90–100 % of the refresh interval later, so
//!   replicas started together do not fetch together;
//! - after a failure, retry with an exponential backoff (base doubling to a cap), jittered, and keep the
//!   last good key set meanwhile: keys do not expire, a key-endpoint outage must not stop verification;
//! - a token whose `kid` is not in the key set may trigger one refetch (a rotated realm key), but such
//!   refetches are rate-limited: at most one per `unknown_kid_interval`. A request that finds a fetch
//!   already in flight waits for it instead of starting another. A flood of forged `kid`s therefore costs
//!   one fetch per interval, however many requests carry them.

use std::time::Duration;

use tokio::time::Instant;

/// Tunables of the key-set policy. `Default` is what production uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Time between fetches while they succeed.
    pub refresh_interval: Duration,
    /// First retry delay after a failed fetch.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_cap: Duration,
    /// At most one refetch triggered by an unknown `kid` per this interval.
    pub unknown_kid_interval: Duration,
    /// Fetch at start (then on schedule), instead of at the first verification.
    pub prefetch: bool,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(300),
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(60),
            unknown_kid_interval: Duration::from_secs(10),
            prefetch: false,
        }
    }
}

/// What the key-set task remembers between fetches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchHistory {
    /// When the last fetch (of any trigger) finished.
    pub last_attempt: Option<Instant>,
    /// Failed fetches since the last success.
    pub consecutive_failures: u32,
    /// When the last refetch for an unknown `kid` started.
    pub last_unknown_kid_fetch: Option<Instant>,
}

/// What to do with a token whose `kid` the key set does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownKid {
    /// Start a refetch, then look again.
    Fetch,
    /// A fetch is in flight: wait for it, then look again.
    Wait,
    /// Refuse the token now: a refetch for an unknown `kid` happened too recently.
    Refuse,
}

impl KeyPolicy {
    /// When the next scheduled fetch is due, once the schedule runs (at start with `prefetch`, else from
    /// the first fetch on). `jitter` is in `[0, 1)`; `now` is used only while no fetch has finished: one
    /// is due at once.
    pub fn next_fetch(&self, now: Instant, history: &FetchHistory, jitter: f64) -> Instant {
        let jitter = jitter.clamp(0.0, 1.0);
        let Some(last) = history.last_attempt else {
            return now;
        };
        if history.consecutive_failures == 0 {
            // 90–100 % of the interval.
            return last + self.refresh_interval.mul_f64(1.0 - 0.1 * jitter);
        }
        last + self.retry_delay(history.consecutive_failures, jitter)
    }

    /// Backoff after `failures` consecutive failures (≥ 1): base·2^(failures−1), capped, with equal jitter
    /// (half fixed, half random), never below half the base.
    pub fn retry_delay(&self, failures: u32, jitter: f64) -> Duration {
        let exponent = failures.saturating_sub(1).min(30);
        let raw = self
            .retry_base
            .checked_mul(1u32 << exponent)
            .unwrap_or(self.retry_cap)
            .min(self.retry_cap);
        raw / 2 + (raw / 2).mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// The decision for a token with an unknown `kid`.
    pub fn on_unknown_kid(
        &self,
        now: Instant,
        history: &FetchHistory,
        fetch_in_flight: bool,
    ) -> UnknownKid {
        if fetch_in_flight {
            return UnknownKid::Wait;
        }
        match history.last_unknown_kid_fetch {
            Some(at) if now.saturating_duration_since(at) < self.unknown_kid_interval => {
                UnknownKid::Refuse
            }
            _ => UnknownKid::Fetch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn after(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_fetch_is_due_at_once_then_every_interval() {
        let policy = KeyPolicy::default();
        let now = Instant::now();
        assert_eq!(policy.next_fetch(now, &FetchHistory::default(), 0.5), now);
        let history = FetchHistory {
            last_attempt: Some(now),
            ..FetchHistory::default()
        };
        assert_eq!(policy.next_fetch(now, &history, 0.0), after(now, 300));
        assert_eq!(policy.next_fetch(now, &history, 1.0), after(now, 270));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_to_the_cap() {
        let policy = KeyPolicy::default();
        let delays: Vec<Duration> = (1..=10).map(|f| policy.retry_delay(f, 1.0)).collect();
        assert_eq!(delays[0], Duration::from_secs(1));
        assert_eq!(delays[1], Duration::from_secs(2));
        assert_eq!(delays[5], Duration::from_secs(32));
        assert_eq!(delays[6], Duration::from_secs(60));
        assert_eq!(delays[9], Duration::from_secs(60));
        assert_eq!(policy.retry_delay(u32::MAX, 0.0), Duration::from_secs(30));
        let now = Instant::now();
        let history = FetchHistory {
            last_attempt: Some(now),
            consecutive_failures: 3,
            last_unknown_kid_fetch: None,
        };
        assert_eq!(
            policy.next_fetch(now, &history, 0.0),
            now + Duration::from_secs(2)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_kids_refetch_once_per_interval_and_wait_for_a_fetch_in_flight() {
        let policy = KeyPolicy::default();
        let start = Instant::now();
        let mut history = FetchHistory::default();
        assert_eq!(
            policy.on_unknown_kid(start, &history, false),
            UnknownKid::Fetch
        );
        assert_eq!(
            policy.on_unknown_kid(start, &history, true),
            UnknownKid::Wait
        );
        history.last_unknown_kid_fetch = Some(start);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(
            policy.on_unknown_kid(Instant::now(), &history, false),
            UnknownKid::Refuse
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            policy.on_unknown_kid(Instant::now(), &history, false),
            UnknownKid::Fetch
        );
    }

    proptest! {
        /// However many forged `kid`s arrive, and however they are spread in time, the refetches they
        /// trigger are at least the interval apart.
        #[test]
        fn a_flood_of_unknown_kids_costs_one_fetch_per_interval(
            gaps_ms in proptest::collection::vec(0u64..3_000, 1..400),
        ) {
            let policy = KeyPolicy::default();
            let start = Instant::now();
            let mut now = start;
            let mut history = FetchHistory::default();
            let mut fetches = Vec::new();
            for gap in gaps_ms {
                now += Duration::from_millis(gap);
                if policy.on_unknown_kid(now, &history, false) == UnknownKid::Fetch {
                    history.last_unknown_kid_fetch = Some(now);
                    fetches.push(now);
                }
            }
            for pair in fetches.windows(2) {
                prop_assert!(pair[1] - pair[0] >= policy.unknown_kid_interval);
            }
            let span = now - start;
            let bound = span.as_millis() / policy.unknown_kid_interval.as_millis() + 1;
            prop_assert!(fetches.len() as u128 <= bound);
        }

        /// The next fetch is never in the past of the last attempt, and never later than the interval.
        #[test]
        fn the_schedule_is_bounded(failures in 0u32..100, jitter in 0.0f64..1.0) {
            let policy = KeyPolicy::default();
            let now = Instant::now();
            let history = FetchHistory {
                last_attempt: Some(now),
                consecutive_failures: failures,
                last_unknown_kid_fetch: None,
            };
            let next = policy.next_fetch(now, &history, jitter);
            prop_assert!(next > now);
            prop_assert!(next <= now + policy.refresh_interval);
        }
    }
}
