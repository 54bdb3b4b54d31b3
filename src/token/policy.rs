//! When to refresh, when to retry, when to stop handing a token out: pure functions of times and outcomes.
//!
//! Nothing here sleeps, locks or talks to the network, so every decision is unit-tested with explicit
//! instants (and the refresher that follows these decisions is tested with a paused tokio clock).
//!
//! The rules, for a token whose lifetime `L` (the IAM's `expiresIn`) starts when its response arrived:
//! - it is handed out only until `L - margin`, where the margin is `L/1440` (60 s for a 24 h token)
//!   clamped to `[1.5 s, 60 s]`: JWT times are whole seconds and the response took time to arrive;
//! - it is refreshed in the background at a uniformly jittered 75–80 % of `L - margin`, so the refresh is
//!   always due before the hand-out deadline and replicas started together spread out;
//! - a failed attempt is retried after an exponential backoff with equal jitter, capped, and never sooner
//!   than the server's `Retry-After` (itself capped, so a hostile value cannot silence us for a day).

use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;

/// Tunables of the refresh policy. `Default` is what production uses; tests shrink nothing here, they
/// shrink the token lifetime instead.
#[derive(Debug, Clone)]
pub struct RefreshPolicy {
    /// First retry delay after a failure.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
    /// Longest `Retry-After` honoured.
    pub retry_after_cap: Duration,
    /// With no valid token, client requests may start at most one upstream attempt per this interval.
    pub cold_attempt_interval: Duration,
    /// At most one forced refresh per entity per this interval.
    pub forced_refresh_interval: Duration,
    /// Refresh-ahead window, as fractions of the usable lifetime.
    pub refresh_window: (f64, f64),
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            retry_after_cap: Duration::from_secs(300),
            cold_attempt_interval: Duration::from_secs(1),
            forced_refresh_interval: Duration::from_secs(10),
            refresh_window: (0.75, 0.80),
        }
    }
}

/// Smallest hand-out margin: JWT `exp`/`iat` are whole seconds, plus the response's time in flight.
pub const MIN_MARGIN: Duration = Duration::from_millis(1500);
/// Largest hand-out margin (the one a 24 h token gets).
pub const MAX_MARGIN: Duration = Duration::from_secs(60);

/// The three instants that govern one token's life, all on the monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenSchedule {
    /// When the IAM's `expiresIn` runs out.
    pub expires_at: Instant,
    /// The last instant at which the token may be handed out.
    pub serve_until: Instant,
    /// When the background refresh is due.
    pub refresh_at: Instant,
}

impl TokenSchedule {
    pub fn servable(&self, now: Instant) -> bool {
        now < self.serve_until
    }
}

/// The hand-out safety margin for a token of this lifetime.
pub fn safety_margin(lifetime: Duration) -> Duration {
    (lifetime / 1440).clamp(MIN_MARGIN, MAX_MARGIN)
}

impl RefreshPolicy {
    /// Schedules a token received at `received_at` with the given lifetime. `jitter` is uniform in `[0, 1)`.
    /// Returns `None` when the lifetime is too short to hand the token out at all.
    pub fn schedule(
        &self,
        received_at: Instant,
        lifetime: Duration,
        jitter: f64,
    ) -> Option<TokenSchedule> {
        let margin = safety_margin(lifetime);
        let usable = lifetime.checked_sub(margin).filter(|u| !u.is_zero())?;
        let (lo, hi) = self.refresh_window;
        let fraction = lo + (hi - lo) * jitter.clamp(0.0, 1.0);
        Some(TokenSchedule {
            expires_at: received_at + lifetime,
            serve_until: received_at + usable,
            refresh_at: received_at + usable.mul_f64(fraction),
        })
    }

    /// Delay before the next attempt after `consecutive_failures` (≥ 1) failures in a row.
    pub fn retry_delay(
        &self,
        consecutive_failures: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Duration {
        let delay =
            Backoff::new(self.backoff_base, self.backoff_cap).delay(consecutive_failures, jitter);
        match retry_after {
            Some(server) => delay.max(server.min(self.retry_after_cap)),
            None => delay,
        }
    }

    /// When the background refresher should next call the IAM.
    ///
    /// - While the held token is not yet due for refresh, at its `refresh_at` (failures of forced or
    ///   client-triggered attempts do not make a fresh token urgent).
    /// - After a failure, at `last_failure_at + retry_delay(..)`.
    /// - Otherwise (no token, no failure: start-up) at once.
    pub fn next_attempt(&self, now: Instant, state: &AttemptState, jitter: f64) -> Instant {
        if let Some(token) = state.token
            && now < token.refresh_at
        {
            return token.refresh_at;
        }
        match state.last_failure_at {
            Some(failed_at) if state.consecutive_failures > 0 => {
                failed_at + self.retry_delay(state.consecutive_failures, state.retry_after, jitter)
            }
            _ => now,
        }
    }
}

impl RefreshPolicy {
    /// How long a *caller-triggered* attempt (a client finding no valid token, or a forced refresh) must
    /// still wait after the last failure, or `None` when it may call the IAM now.
    ///
    /// The server's `Retry-After` (capped) binds every path, so polling clients cannot call an IAM that
    /// asked for quiet. Without a valid token, attempts are also spaced by `cold_attempt_interval`, so no
    /// amount of traffic turns an outage into a hot loop. With a valid token, only `Retry-After` applies
    /// (forced refreshes have their own limit, [`RefreshPolicy::forced_refresh_allowed`]).
    pub fn caller_attempt_wait(
        &self,
        now: Instant,
        state: &AttemptState,
        holds_valid_token: bool,
    ) -> Option<Duration> {
        let failed_at = state
            .last_failure_at
            .filter(|_| state.consecutive_failures > 0)?;
        let server_wait = state
            .retry_after
            .map_or(Duration::ZERO, |d| d.min(self.retry_after_cap));
        let wait = if holds_valid_token {
            server_wait
        } else {
            server_wait.max(self.cold_attempt_interval)
        };
        let until = failed_at + wait;
        (now < until).then(|| until - now)
    }

    /// Whether a forced refresh may call the IAM, given when the last one did.
    pub fn forced_refresh_allowed(&self, now: Instant, last_forced_at: Option<Instant>) -> bool {
        last_forced_at.is_none_or(|at| now.duration_since(at) >= self.forced_refresh_interval)
    }
}

/// What the refresher needs to know to pick its next wake-up.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttemptState {
    pub token: Option<TokenSchedule>,
    pub consecutive_failures: u32,
    pub last_failure_at: Option<Instant>,
    pub retry_after: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[tokio::test(start_paused = true)]
    async fn a_day_token_is_refreshed_between_75_and_80_percent_and_served_until_a_minute_before() {
        let policy = RefreshPolicy::default();
        let t0 = Instant::now();
        let day = secs(86_400.0);
        let early = policy.schedule(t0, day, 0.0).unwrap();
        let late = policy.schedule(t0, day, 0.999_999).unwrap();
        assert_eq!(early.serve_until, t0 + secs(86_340.0));
        assert_eq!(early.expires_at, t0 + day);
        assert_eq!(early.refresh_at, t0 + secs(86_340.0 * 0.75));
        assert!(
            late.refresh_at > t0 + secs(86_340.0 * 0.7999) && late.refresh_at < late.serve_until
        );
    }

    #[tokio::test(start_paused = true)]
    async fn short_tokens_get_a_floor_margin_and_still_refresh_before_the_deadline() {
        let policy = RefreshPolicy::default();
        let t0 = Instant::now();
        for lifetime in [2.0, 3.0, 5.0, 10.0, 60.0, 3600.0] {
            for jitter in [0.0, 0.5, 0.99] {
                let s = policy.schedule(t0, secs(lifetime), jitter).unwrap();
                assert!(s.serve_until <= s.expires_at - MIN_MARGIN, "{lifetime}");
                assert!(s.refresh_at < s.serve_until, "{lifetime}/{jitter}");
                assert!(s.refresh_at > t0);
            }
        }
        assert!(policy.schedule(t0, secs(1.5), 0.5).is_none());
        assert!(policy.schedule(t0, secs(1.0), 0.5).is_none());
        assert!(policy.schedule(t0, Duration::ZERO, 0.5).is_none());
    }

    #[test]
    fn margin_is_proportional_and_clamped() {
        assert_eq!(safety_margin(secs(86_400.0)), secs(60.0));
        assert_eq!(safety_margin(secs(7.0 * 86_400.0)), secs(60.0));
        assert_eq!(safety_margin(secs(3600.0)), secs(2.5));
        assert_eq!(safety_margin(secs(10.0)), MIN_MARGIN);
    }

    #[test]
    fn backoff_doubles_with_equal_jitter_and_caps() {
        let p = RefreshPolicy::default();
        assert_eq!(p.retry_delay(1, None, 0.0), secs(0.25));
        assert_eq!(p.retry_delay(1, None, 1.0), secs(0.5));
        assert_eq!(p.retry_delay(2, None, 1.0), secs(1.0));
        assert_eq!(p.retry_delay(4, None, 1.0), secs(4.0));
        assert_eq!(p.retry_delay(10, None, 1.0), secs(30.0));
        assert_eq!(p.retry_delay(u32::MAX, None, 0.0), secs(15.0));
        let mut previous = Duration::ZERO;
        for n in 1..40 {
            let d = p.retry_delay(n, None, 1.0);
            assert!(d >= previous && d <= p.backoff_cap);
            previous = d;
        }
    }

    #[test]
    fn retry_after_is_honoured_but_capped() {
        let p = RefreshPolicy::default();
        assert_eq!(p.retry_delay(1, Some(secs(7.0)), 0.0), secs(7.0));
        assert_eq!(p.retry_delay(10, Some(secs(1.0)), 1.0), secs(30.0));
        assert_eq!(p.retry_delay(1, Some(secs(86_400.0)), 0.0), secs(300.0));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_binds_callers_and_cold_attempts_are_spaced() {
        let p = RefreshPolicy::default();
        let t0 = Instant::now();
        let throttled = AttemptState {
            token: None,
            consecutive_failures: 1,
            last_failure_at: Some(t0),
            retry_after: Some(secs(6.0)),
        };
        // Polling clients with no token: nothing before the server's 6 s, then allowed.
        assert_eq!(
            p.caller_attempt_wait(t0, &throttled, false),
            Some(secs(6.0))
        );
        assert_eq!(
            p.caller_attempt_wait(t0 + secs(5.5), &throttled, false),
            Some(secs(0.5))
        );
        assert_eq!(
            p.caller_attempt_wait(t0 + secs(6.0), &throttled, false),
            None
        );
        // A forced refresh while a valid token is held waits for Retry-After too.
        assert_eq!(
            p.caller_attempt_wait(t0 + secs(1.0), &throttled, true),
            Some(secs(5.0))
        );
        // A hostile Retry-After is capped.
        let silenced = AttemptState {
            retry_after: Some(secs(86_400.0)),
            ..throttled
        };
        assert_eq!(
            p.caller_attempt_wait(t0, &silenced, false),
            Some(p.retry_after_cap)
        );
        // Without Retry-After: cold attempts one per interval; with a valid token, no wait.
        let failed = AttemptState {
            retry_after: None,
            ..throttled
        };
        assert_eq!(
            p.caller_attempt_wait(t0, &failed, false),
            Some(p.cold_attempt_interval)
        );
        assert_eq!(p.caller_attempt_wait(t0, &failed, true), None);
        assert_eq!(
            p.caller_attempt_wait(t0, &AttemptState::default(), false),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn forced_refreshes_are_spaced() {
        let p = RefreshPolicy::default();
        let t0 = Instant::now();
        assert!(p.forced_refresh_allowed(t0, None));
        assert!(!p.forced_refresh_allowed(t0 + secs(9.9), Some(t0)));
        assert!(p.forced_refresh_allowed(t0 + p.forced_refresh_interval, Some(t0)));
    }

    #[tokio::test(start_paused = true)]
    async fn next_attempt_follows_token_then_failures() {
        let p = RefreshPolicy::default();
        let t0 = Instant::now();
        // Start-up: at once.
        assert_eq!(p.next_attempt(t0, &AttemptState::default(), 0.5), t0);
        // A fresh token: at its refresh time, even if a forced attempt just failed.
        let token = p.schedule(t0, secs(100.0), 0.0).unwrap();
        let fresh = AttemptState {
            token: Some(token),
            consecutive_failures: 3,
            last_failure_at: Some(t0),
            retry_after: None,
        };
        assert_eq!(p.next_attempt(t0, &fresh, 0.5), token.refresh_at);
        // Past refresh time with failures: backoff from the last failure.
        let later = token.refresh_at + secs(1.0);
        let failing = AttemptState {
            last_failure_at: Some(later),
            ..fresh
        };
        assert_eq!(p.next_attempt(later, &failing, 1.0), later + secs(2.0));
        // Past refresh time, no failure yet: at once.
        let due = AttemptState {
            consecutive_failures: 0,
            last_failure_at: None,
            ..fresh
        };
        assert_eq!(p.next_attempt(later, &due, 0.5), later);
    }
}

/// Property tests: for any lifetime, jitter, sequence of outcomes and clock readings, a token is never
/// handed out past its expiry, and upstream attempts never exceed the backoff budget.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// One upstream attempt's outcome in a generated history.
    #[derive(Debug, Clone)]
    enum Outcome {
        /// A token with this lifetime (ms).
        Token(u64),
        /// A failure, with an optional `Retry-After` (ms).
        Failure(Option<u64>),
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            (1_000u64..200_000_000).prop_map(Outcome::Token),
            proptest::option::of(0u64..1_000_000).prop_map(Outcome::Failure),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn a_token_is_never_servable_at_or_after_its_expiry(lifetime_ms in 0u64..400_000_000, jitter in 0.0f64..1.0,
                                                            probes in proptest::collection::vec(0u64..400_000_000, 1..50)) {
            let policy = RefreshPolicy::default();
            let t0 = Instant::now();
            let lifetime = Duration::from_millis(lifetime_ms);
            if let Some(s) = policy.schedule(t0, lifetime, jitter) {
                prop_assert!(s.serve_until + MIN_MARGIN <= s.expires_at);
                prop_assert!(s.refresh_at < s.serve_until);
                prop_assert!(s.refresh_at > t0);
                for probe in probes {
                    let now = t0 + Duration::from_millis(probe);
                    if s.servable(now) {
                        prop_assert!(now + MIN_MARGIN <= s.expires_at);
                    }
                }
            } else {
                prop_assert!(lifetime <= MIN_MARGIN);
            }
        }

        #[test]
        fn attempts_follow_the_policy_and_stay_within_budget(history in proptest::collection::vec(outcome(), 1..80),
                                                             jitters in proptest::collection::vec(0.0f64..1.0, 80)) {
            // Replay the refresher's loop: wake when the policy says, apply the next outcome.
            let policy = RefreshPolicy::default();
            let mut now = Instant::now();
            let mut state = AttemptState::default();
            let mut failing_since: Option<(Instant, Duration)> = None;
            for (step, outcome) in history.iter().enumerate() {
                let jitter = jitters[step % jitters.len()];
                let wake = policy.next_attempt(now, &state, jitter);
                prop_assert!(wake >= now, "never scheduled into the past");
                match state.token {
                    // A fresh token is refreshed at its refresh time, before it stops being served.
                    Some(token) if now < token.refresh_at => {
                        prop_assert_eq!(wake, token.refresh_at);
                        prop_assert!(wake < token.serve_until);
                    }
                    _ if state.consecutive_failures > 0 => {
                        let failed_at = state.last_failure_at.unwrap();
                        let wait = wake - failed_at;
                        let n = state.consecutive_failures;
                        let ceiling = policy.backoff_base.saturating_mul(1 << (n - 1).min(20)).min(policy.backoff_cap);
                        // Never sooner than half the backoff ceiling, nor before a (capped) Retry-After;
                        // never later than the larger cap.
                        prop_assert!(wait >= ceiling / 2);
                        if let Some(server) = state.retry_after {
                            prop_assert!(wait >= server.min(policy.retry_after_cap));
                        }
                        prop_assert!(wait <= policy.backoff_cap.max(policy.retry_after_cap));
                    }
                    _ => prop_assert_eq!(wake, now),
                }
                now = wake;
                match outcome {
                    Outcome::Token(ms) => {
                        state.token = policy.schedule(now, Duration::from_millis(*ms), jitter);
                        state.consecutive_failures = 0;
                        state.last_failure_at = None;
                        state.retry_after = None;
                        failing_since = None;
                    }
                    Outcome::Failure(retry_after) => {
                        state.consecutive_failures += 1;
                        state.last_failure_at = Some(now);
                        state.retry_after = retry_after.map(Duration::from_millis);
                        // The budget over a run of failures: n attempts need at least the sum of the
                        // minimum delays before them, so an outage cannot become a hot loop.
                        let (since, minimum) = failing_since.get_or_insert((now, Duration::ZERO));
                        let n = state.consecutive_failures;
                        if n > 1 {
                            let ceiling = policy.backoff_base.saturating_mul(1 << (n - 2).min(20)).min(policy.backoff_cap);
                            *minimum += ceiling / 2;
                        }
                        prop_assert!(now - *since >= *minimum);
                    }
                }
            }
        }
    }
}
