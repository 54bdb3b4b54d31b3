//! When the cache of peers' keys goes to the Central Registry: a pure function of times and of what the
//! cache holds, so that it can be tested with a paused clock. the cache ([`super`]) only follows it.
//!
//! - A record is fresh for `ttl` (at most 24 h: the CR's only guidance is "refresh daily").
//! - A `kid` the record does not hold triggers a refetch, at most once per `unknown_kid_interval` per
//!   entity: a forged `kid` on every request cannot turn into a CR call per request.
//! - After a failed fetch, the next one waits `failure_backoff`; meanwhile the last good record is served
//!   (an outage of the CR does not stop verification), or, with none, the caller is told to retry later.
//! - A key replaced by a newer one keeps verifying for `previous_key_grace` (default one `ttl`) after the
//!   change was seen, so messages signed just before a peer's rotation still verify; zero turns it off.
//! - Every lookup that goes to the CR spends from one budget shared by all senders ([`LookupBudget`], a
//!   token bucket: `lookup_burst` at once, then one every `lookup_interval`). Lookups are caused by our
//!   callers, and each carries our entity token: without it, a caller naming endless distinct senders
//!   would make the CR see a flood from our entity (and throttle or block it). A lookup the budget refuses
//!   is answered from the record held, stale or not, or told to retry when the budget allows.
//! - A sender the CR does not know is remembered for `negative_ttl`, apart from the known ones: asking
//!   again sooner changes nothing, and a flood of unknown senders must not push out the known ones.

use std::time::Duration;

use tokio::time::Instant;

/// Longest a record may be trusted without asking the CR again.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// The default time a replaced key keeps verifying: one cache period (the default `ttl`).
pub const DEFAULT_PREVIOUS_KEY_GRACE: Duration = Duration::from_secs(6 * 3600);
/// The default budget of CR lookups: 5 a second (one every 200 ms)…
pub const DEFAULT_LOOKUP_INTERVAL: Duration = Duration::from_millis(200);
/// … after a burst of 10.
pub const DEFAULT_LOOKUP_BURST: u32 = 10;

/// The limits of the CR key cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryPolicy {
    /// How long a record is fresh.
    pub ttl: Duration,
    /// How long a replaced key keeps verifying after the change was seen (zero: not at all).
    pub previous_key_grace: Duration,
    /// Least time between two refetches an unknown `kid` triggers, per entity.
    pub unknown_kid_interval: Duration,
    /// Least time between a failed fetch and the next one, per entity.
    pub failure_backoff: Duration,
    /// How long a sender the CR does not know is answered as unknown without asking again.
    pub negative_ttl: Duration,
    /// The budget of lookups: one more every this long…
    pub lookup_interval: Duration,
    /// … and at most this many at once.
    pub lookup_burst: u32,
}

impl Default for RegistryPolicy {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(6 * 3600),
            previous_key_grace: DEFAULT_PREVIOUS_KEY_GRACE,
            unknown_kid_interval: Duration::from_secs(30),
            failure_backoff: Duration::from_secs(5),
            negative_ttl: Duration::from_secs(300),
            lookup_interval: DEFAULT_LOOKUP_INTERVAL,
            lookup_burst: DEFAULT_LOOKUP_BURST,
        }
    }
}

/// The state of the lookup budget: the theoretical arrival time of the next lookup (GCRA, the token
/// bucket in one instant). `None`: the bucket is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LookupBudget {
    next_due: Option<Instant>,
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
        now.saturating_duration_since(replaced_at) < self.previous_key_grace.min(MAX_TTL)
    }

    /// Spends one lookup from `budget` at `now`: `Ok` (and the budget is charged), or `Err` with how long
    /// until one is allowed (the budget is unchanged). Over any span of time `t` from a full bucket, at
    /// most `lookup_burst + t / lookup_interval` lookups are allowed.
    pub fn spend_lookup(&self, budget: &mut LookupBudget, now: Instant) -> Result<(), Duration> {
        let interval = self.lookup_interval;
        // How far ahead of `now` the schedule may run: a full bucket minus the lookup being spent.
        let tolerance = interval.saturating_mul(self.lookup_burst.max(1) - 1);
        let due = budget.next_due.map_or(now, |due| due.max(now));
        let ahead = due.saturating_duration_since(now);
        if ahead > tolerance {
            return Err(ahead - tolerance);
        }
        budget.next_due = Some(due.checked_add(interval).unwrap_or(due));
        Ok(())
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
    async fn a_replaced_key_verifies_for_its_grace_and_zero_turns_it_off() {
        let policy = RegistryPolicy::default();
        assert_eq!(policy.previous_key_grace, policy.ttl, "one cache period");
        let t0 = Instant::now();
        let grace = Duration::from_secs(90);
        let short = RegistryPolicy {
            previous_key_grace: grace,
            ..RegistryPolicy::default()
        };
        tokio::time::advance(grace - Duration::from_millis(1)).await;
        assert!(short.previous_key_valid(t0, Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!short.previous_key_valid(t0, Instant::now()));
        let off = RegistryPolicy {
            previous_key_grace: Duration::ZERO,
            ..RegistryPolicy::default()
        };
        assert!(!off.previous_key_valid(t0, t0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_lookup_budget_allows_a_burst_then_the_rate_and_says_how_long_to_wait() {
        let policy = RegistryPolicy::default();
        let mut budget = LookupBudget::default();
        let t0 = Instant::now();
        for _ in 0..policy.lookup_burst {
            assert_eq!(policy.spend_lookup(&mut budget, t0), Ok(()));
        }
        assert_eq!(
            policy.spend_lookup(&mut budget, t0),
            Err(policy.lookup_interval)
        );
        tokio::time::advance(policy.lookup_interval / 2).await;
        let refused = budget;
        assert_eq!(
            policy.spend_lookup(&mut budget, Instant::now()),
            Err(policy.lookup_interval / 2)
        );
        assert_eq!(budget, refused, "a refusal costs nothing");
        tokio::time::advance(policy.lookup_interval / 2).await;
        assert_eq!(policy.spend_lookup(&mut budget, Instant::now()), Ok(()));
        assert!(policy.spend_lookup(&mut budget, Instant::now()).is_err());
        // Idle long enough, the bucket is full again, and no fuller.
        tokio::time::advance(policy.lookup_interval * 100).await;
        let now = Instant::now();
        let allowed = (0..100)
            .filter(|_| policy.spend_lookup(&mut budget, now).is_ok())
            .count();
        assert_eq!(allowed, policy.lookup_burst as usize);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replaced_key_verifies_for_one_cache_period_and_the_ttl_is_capped() {
        let policy = RegistryPolicy {
            ttl: Duration::from_secs(7 * 86_400),
            previous_key_grace: Duration::from_secs(7 * 86_400),
            ..RegistryPolicy::default()
        };
        let t0 = Instant::now();
        assert!(policy.previous_key_valid(t0, t0 + MAX_TTL - Duration::from_secs(1)));
        assert!(!policy.previous_key_valid(t0, t0 + MAX_TTL));
        let held = clock(Some(t0), Some(t0), false);
        assert_eq!(policy.decide(held, true, t0 + MAX_TTL), Action::Fetch);
    }

    proptest::proptest! {
        /// However lookups arrive, from a full bucket the budget allows at most `burst + elapsed/interval`
        /// of them, and a refusal's wait is never zero and never longer than one interval times the burst.
        #[test]
        fn the_budget_holds_over_any_arrivals(
            gaps_ms in proptest::collection::vec(0u64..400, 1..500),
            interval_ms in 1u64..2_000,
            burst in 1u32..50,
        ) {
            let policy = RegistryPolicy {
                lookup_interval: Duration::from_millis(interval_ms),
                lookup_burst: burst,
                ..RegistryPolicy::default()
            };
            let start = Instant::now();
            let mut now = start;
            let mut budget = LookupBudget::default();
            let mut allowed = 0u128;
            for gap in gaps_ms {
                now += Duration::from_millis(gap);
                match policy.spend_lookup(&mut budget, now) {
                    Ok(()) => allowed += 1,
                    Err(wait) => {
                        proptest::prop_assert!(!wait.is_zero());
                        proptest::prop_assert!(wait <= policy.lookup_interval * burst);
                    }
                }
                let elapsed = (now - start).as_millis();
                proptest::prop_assert!(allowed <= u128::from(burst) + elapsed / u128::from(interval_ms));
            }
        }
    }
}
