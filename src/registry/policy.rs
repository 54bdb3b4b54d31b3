//! When the cache of peers' keys goes to the Central Registry: a pure function of times and of what the
//! cache holds, so that it can be tested with a paused clock. the cache ([`super`]) only follows it.
//!
//! - A record is fresh for `ttl` (at most 24 h: the CR's only guidance is "refresh daily").
//! - A `kid` the record does not hold triggers a refetch, at most once per `unknown_kid_interval` per
//!   entity: a forged `kid` on every request cannot turn into a CR call per request.
//! - After a failed fetch, the next one waits `failure_backoff`; meanwhile the last good record is served
//!   (an outage of the CR does not stop verification), or, with none, the caller is told to retry later.
//! - A key replaced by a newer one keeps verifying for one `ttl` after the change was seen, so messages
//!   signed just before a peer's rotation still verify.

use std::time::Duration;

use tokio::time::Instant;

/// Longest a record may be trusted without asking the CR again.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// The limits of the CR key cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryPolicy {
    /// How long a record is fresh, and how long a replaced key keeps verifying.
    pub ttl: Duration,
    /// Least time between two refetches an unknown `kid` triggers, per entity.
    pub unknown_kid_interval: Duration,
    /// Least time between a failed fetch and the next one, per entity.
    pub failure_backoff: Duration,
}

impl Default for RegistryPolicy {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(6 * 3600),
            unknown_kid_interval: Duration::from_secs(30),
            failure_backoff: Duration::from_secs(5),
        }
    }
}

/// What the cache knows about one entity, in monotonic time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryClock {
    /// The last successful fetch (a record is held).
    pub fetched_at: Option<Instant>,
    /// The last fetch attempted, whatever its outcome.
    pub attempted_at: Option<Instant>,
    /// The last attempt failed.
    pub failed: bool,
}

/// What to do for one lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Use the held record.
    Use,
    /// Ask the CR (then use the answer, or the held record if the CR fails).
    Fetch,
    /// Nothing held and a fetch failed too recently: tell the caller to retry after this long.
    RetryAfter(Duration),
}

impl RegistryPolicy {
    /// The decision for a lookup at `now`. `kid_known` is whether the held record has the key the
    /// message names (true when the message names none).
    pub fn decide(&self, entry: EntryClock, kid_known: bool, now: Instant) -> Action {
        let since_attempt = entry.attempted_at.map(|t| now.saturating_duration_since(t));
        let backing_off = entry.failed && since_attempt.is_some_and(|d| d < self.failure_backoff);
        let Some(fetched_at) = entry.fetched_at else {
            return match (backing_off, since_attempt) {
                (true, Some(since)) => Action::RetryAfter(self.failure_backoff - since),
                _ => Action::Fetch,
            };
        };
        if backing_off {
            // Through an outage the last good record is used, fresh or not.
            return Action::Use;
        }
        let fresh = now.saturating_duration_since(fetched_at) < self.ttl.min(MAX_TTL);
        match (fresh, kid_known) {
            (false, _) => Action::Fetch,
            (true, true) => Action::Use,
            (true, false) => {
                if since_attempt.is_none_or(|d| d >= self.unknown_kid_interval) {
                    Action::Fetch
                } else {
                    Action::Use
                }
            }
        }
    }

    /// Whether a key replaced at `replaced_at` still verifies at `now`.
    pub fn previous_key_valid(&self, replaced_at: Instant, now: Instant) -> bool {
        now.saturating_duration_since(replaced_at) < self.ttl.min(MAX_TTL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(fetched: Option<Instant>, attempted: Option<Instant>, failed: bool) -> EntryClock {
        EntryClock {
            fetched_at: fetched,
            attempted_at: attempted,
            failed,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_record_is_used_and_an_old_one_refetched() {
        let policy = RegistryPolicy::default();
        let t0 = Instant::now();
        assert_eq!(
            policy.decide(EntryClock::default(), true, t0),
            Action::Fetch
        );
        let held = clock(Some(t0), Some(t0), false);
        assert_eq!(policy.decide(held, true, t0), Action::Use);
        tokio::time::advance(policy.ttl - Duration::from_secs(1)).await;
        assert_eq!(policy.decide(held, true, Instant::now()), Action::Use);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(policy.decide(held, true, Instant::now()), Action::Fetch);
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_kids_refetch_at_most_once_per_interval() {
        let policy = RegistryPolicy::default();
        let t0 = Instant::now();
        let held = clock(Some(t0), Some(t0), false);
        assert_eq!(policy.decide(held, false, t0), Action::Use);
        tokio::time::advance(policy.unknown_kid_interval - Duration::from_millis(1)).await;
        assert_eq!(policy.decide(held, false, Instant::now()), Action::Use);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(policy.decide(held, false, Instant::now()), Action::Fetch);
    }

    #[tokio::test(start_paused = true)]
    async fn through_an_outage_the_last_record_is_used_and_retries_are_spaced() {
        let policy = RegistryPolicy::default();
        let t0 = Instant::now();
        tokio::time::advance(policy.ttl * 2).await;
        let now = Instant::now();
        let failed = clock(Some(t0), Some(now), true);
        assert_eq!(policy.decide(failed, true, now), Action::Use);
        assert_eq!(policy.decide(failed, false, now), Action::Use);
        tokio::time::advance(policy.failure_backoff).await;
        assert_eq!(policy.decide(failed, true, Instant::now()), Action::Fetch);
        // Never fetched and just failed: retry later, without calling the CR again.
        let never = clock(None, Some(now), true);
        assert_eq!(
            policy.decide(never, true, now + Duration::from_secs(2)),
            Action::RetryAfter(policy.failure_backoff - Duration::from_secs(2))
        );
        assert_eq!(
            policy.decide(never, true, now + policy.failure_backoff),
            Action::Fetch
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_replaced_key_verifies_for_one_cache_period_and_the_ttl_is_capped() {
        let policy = RegistryPolicy {
            ttl: Duration::from_secs(7 * 86_400),
            ..RegistryPolicy::default()
        };
        let t0 = Instant::now();
        assert!(policy.previous_key_valid(t0, t0 + MAX_TTL - Duration::from_secs(1)));
        assert!(!policy.previous_key_valid(t0, t0 + MAX_TTL));
        let held = clock(Some(t0), Some(t0), false);
        assert_eq!(policy.decide(held, true, t0 + MAX_TTL), Action::Fetch);
    }
}
