//! The secret lifecycle's decisions, as pure functions of clocks and outcomes:
//!
//! - **when to rotate** ([`decide`]): when less than the threshold remains (default 15 days), at once when
//!   the secret has expired or the IAM says it is in its grace period. The IAM may grant less validity than
//!   asked (it caps a new secret by the admin token's remaining life); when a granted validity is shorter
//!   than the threshold, the threshold shrinks to half of it, so a short grant cannot turn into a rotation
//!   on every check;
//! - **whether an expiry is believable** ([`check_expiry`]): an expiry in the past, or more than 181 days
//!   ahead, on a secret just issued is a unit or clock error, not a reason to reset again;
//! - **whether a reset may happen now** ([`reset_wait`]): at most one per entity per interval, counted
//!   from a record that survives restarts, so a crash loop cannot become a reset storm;
//! - **whether the admin may log in now** ([`LoginRecord::decide`]): failures back off exponentially to an
//!   hour, a rejected password is not tried again until it changes, and never more than 10 logins an hour
//!   — Keycloak locks a user out after repeated failures, and this user is the only one who can reset;
//! - **which site may reset, and when a store converges instead** ([`sites`]): read before you reset, a
//!   standby resets only as the last resort, and a reset made elsewhere moments ago is adopted;
//! - **what the manager does next** ([`schedule`]): retry a write, read back, check, rotate or sleep, from
//!   its state and its timers.

use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationDecision {
    /// Rotate now, for this reason.
    Due(&'static str),
    /// Not yet; look again after this long.
    NotDue { check_again_in: Duration },
    /// The expiry is not known yet.
    Unknown,
}

/// Decides whether to rotate. `granted_validity` is the validity of the current secret when it was issued,
/// if known.
pub fn decide(
    now: SystemTime,
    expires_at: Option<SystemTime>,
    in_grace: bool,
    rotate_before: Duration,
    granted_validity: Option<Duration>,
    check_interval: Duration,
) -> RotationDecision {
    if in_grace {
        return RotationDecision::Due("the IAM says the secret expired and is in its grace period");
    }
    let Some(expires_at) = expires_at else {
        return RotationDecision::Unknown;
    };
    let Ok(remaining) = expires_at.duration_since(now) else {
        return RotationDecision::Due("the secret has expired");
    };
    let threshold = effective_threshold(rotate_before, granted_validity);
    if remaining < threshold {
        return RotationDecision::Due("the secret expires within the rotation threshold");
    }
    RotationDecision::NotDue {
        check_again_in: check_interval
            .min(remaining - threshold)
            .max(Duration::from_secs(1)),
    }
}

/// The threshold, shrunk to half the granted validity when the IAM granted less than the threshold.
pub fn effective_threshold(
    rotate_before: Duration,
    granted_validity: Option<Duration>,
) -> Duration {
    match granted_validity {
        Some(granted) if granted <= rotate_before => granted / 2,
        _ => rotate_before,
    }
}

/// The longest validity a new secret can have (the IAM's maximum of 180 days) plus a day of slack.
pub const MAX_PLAUSIBLE_VALIDITY: Duration = Duration::from_secs(181 * 86_400);
/// How long ago a secret read back from the IAM may have expired and still be believed: an expired secret
/// inside (or past) its grace period is real, one that expired over a year ago is a unit or clock error.
pub const MAX_PLAUSIBLE_AGE: Duration = Duration::from_secs(365 * 86_400);

/// Where an expiry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpirySource {
    /// A secret just issued by a reset: it cannot already have expired.
    Granted,
    /// The current secret, read back (or hinted by a token claim): it may have expired.
    Read,
}

/// What an expiry from the IAM is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Known(SystemTime),
    /// The IAM sent none (or none that parsed).
    Unknown,
    /// The IAM sent one that cannot be right; treated as unknown, and reported.
    Implausible(SystemTime),
}

impl Expiry {
    pub fn known(self) -> Option<SystemTime> {
        match self {
            Expiry::Known(at) => Some(at),
            _ => None,
        }
    }
}

/// Judges an expiry against the wall clock (see [`MAX_PLAUSIBLE_VALIDITY`], [`MAX_PLAUSIBLE_AGE`]).
pub fn check_expiry(now: SystemTime, expiry: Option<SystemTime>, source: ExpirySource) -> Expiry {
    let Some(at) = expiry else {
        return Expiry::Unknown;
    };
    let too_far = at
        .duration_since(now)
        .is_ok_and(|ahead| ahead > MAX_PLAUSIBLE_VALIDITY);
    let too_old = match now.duration_since(at) {
        Ok(ago) if source == ExpirySource::Granted => !ago.is_zero(),
        Ok(ago) => ago > MAX_PLAUSIBLE_AGE,
        Err(_) => false,
    };
    if too_far || too_old {
        Expiry::Implausible(at)
    } else {
        Expiry::Known(at)
    }
}

/// A read-back expiry, judged also against when the secret in use was issued by a reset of ours: a secret
/// cannot have expired before it existed, so such a read is as wrong as an impossible grant.
pub fn check_read_expiry(
    now: SystemTime,
    expiry: Option<SystemTime>,
    issued_at: Option<SystemTime>,
) -> Expiry {
    match (check_expiry(now, expiry, ExpirySource::Read), issued_at) {
        (Expiry::Known(at), Some(issued)) if at < issued => Expiry::Implausible(at),
        (judged, _) => judged,
    }
}

/// Least interval between two resets that can be configured.
pub const MIN_RESET_INTERVAL_FLOOR: Duration = Duration::from_secs(600);
/// Default least interval between two resets of one entity's secret.
pub const DEFAULT_MIN_RESET_INTERVAL: Duration = Duration::from_secs(3600);

/// How long a reset must still wait, given when the last one was recorded, or `None` when it may happen.
///
/// A record slightly in the future (the clock stepped back) waits out the interval on the new clock; one
/// more than an interval in the future cannot come from this rule and is ignored, so a corrupt record
/// cannot block rotation for ever.
pub fn reset_wait(
    now: SystemTime,
    last_reset: Option<SystemTime>,
    min_interval: Duration,
) -> Option<Duration> {
    let last = last_reset?;
    match now.duration_since(last) {
        Ok(elapsed) => min_interval.checked_sub(elapsed).filter(|w| !w.is_zero()),
        Err(ahead) if ahead.duration() <= min_interval => Some(ahead.duration() + min_interval),
        Err(_) => None,
    }
}

mod login;
pub mod schedule;
pub mod sites;
pub use login::{LoginDecision, LoginHold, LoginLimits, LoginRecord};

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn at(days_from_now: i64) -> SystemTime {
        let now = SystemTime::UNIX_EPOCH + 1000 * DAY;
        if days_from_now >= 0 {
            now + DAY * days_from_now.unsigned_abs() as u32
        } else {
            now - DAY * days_from_now.unsigned_abs() as u32
        }
    }

    #[test]
    fn rotates_inside_the_threshold_and_not_before() {
        let now = at(0);
        let six_hours = Duration::from_secs(6 * 3600);
        assert_eq!(
            decide(now, Some(at(16)), false, 15 * DAY, None, six_hours),
            RotationDecision::NotDue {
                check_again_in: six_hours
            }
        );
        assert_eq!(
            decide(
                now,
                Some(at(15) + Duration::from_secs(60)),
                false,
                15 * DAY,
                None,
                six_hours
            ),
            RotationDecision::NotDue {
                check_again_in: Duration::from_secs(60)
            }
        );
        assert!(matches!(
            decide(now, Some(at(14)), false, 15 * DAY, None, six_hours),
            RotationDecision::Due(_)
        ));
        assert!(matches!(
            decide(now, Some(at(-1)), false, 15 * DAY, None, six_hours),
            RotationDecision::Due(_)
        ));
        assert!(matches!(
            decide(now, Some(at(100)), true, 15 * DAY, None, six_hours),
            RotationDecision::Due(_)
        ));
        assert_eq!(
            decide(now, None, false, 15 * DAY, None, six_hours),
            RotationDecision::Unknown
        );
    }

    #[test]
    fn a_short_grant_does_not_cause_a_rotation_loop() {
        let now = at(0);
        // The IAM granted one day (capped by a 24 h admin token): rotate when half a day remains, not at once.
        let granted = Some(DAY);
        assert!(matches!(
            decide(now, Some(at(1)), false, 15 * DAY, granted, DAY),
            RotationDecision::NotDue { .. }
        ));
        assert!(matches!(
            decide(now, Some(now + DAY / 3), false, 15 * DAY, granted, DAY),
            RotationDecision::Due(_)
        ));
        assert_eq!(effective_threshold(15 * DAY, Some(180 * DAY)), 15 * DAY);
    }
}

#[cfg(test)]
mod safety {
    use super::login::HOUR;
    use super::*;
    use proptest::prelude::*;
    use tokio::time::Instant;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn expiries_that_cannot_be_right_are_not_believed() {
        let now = SystemTime::UNIX_EPOCH + 20_000 * DAY;
        let granted = |at| check_expiry(now, Some(at), ExpirySource::Granted);
        let read = |at| check_expiry(now, Some(at), ExpirySource::Read);
        assert_eq!(granted(now + 180 * DAY), Expiry::Known(now + 180 * DAY));
        assert_eq!(granted(now + DAY / 2), Expiry::Known(now + DAY / 2));
        // A new secret that expired already, or that lives longer than the IAM ever grants.
        assert!(matches!(granted(now - DAY), Expiry::Implausible(_)));
        assert!(matches!(
            granted(now - Duration::from_secs(1)),
            Expiry::Implausible(_)
        ));
        assert!(matches!(granted(now + 182 * DAY), Expiry::Implausible(_)));
        // A read-back secret may have expired recently, not a year ago.
        assert_eq!(read(now - 10 * DAY), Expiry::Known(now - 10 * DAY));
        assert!(matches!(read(now - 400 * DAY), Expiry::Implausible(_)));
        assert!(matches!(read(now + 200 * DAY), Expiry::Implausible(_)));
        assert_eq!(check_expiry(now, None, ExpirySource::Read), Expiry::Unknown);
        // After our own reset an hour ago, "expired yesterday" cannot be right; "in 180 days" can.
        let reset = Some(now - Duration::from_secs(3600));
        assert!(matches!(
            check_read_expiry(now, Some(now - DAY), reset),
            Expiry::Implausible(_)
        ));
        assert_eq!(
            check_read_expiry(now, Some(now + 180 * DAY), reset),
            Expiry::Known(now + 180 * DAY)
        );
        assert_eq!(
            check_read_expiry(now, Some(now - DAY), None),
            Expiry::Known(now - DAY)
        );
    }

    #[test]
    fn resets_wait_out_the_interval_across_clock_steps() {
        let hour = DEFAULT_MIN_RESET_INTERVAL;
        let now = SystemTime::UNIX_EPOCH + 20_000 * DAY;
        assert_eq!(reset_wait(now, None, hour), None);
        assert_eq!(
            reset_wait(now, Some(now - Duration::from_secs(600)), hour),
            Some(Duration::from_secs(3000))
        );
        assert_eq!(reset_wait(now, Some(now - hour), hour), None);
        // The clock stepped back five minutes: wait the interval plus the step.
        assert_eq!(
            reset_wait(now, Some(now + Duration::from_secs(300)), hour),
            Some(Duration::from_secs(3900))
        );
        // A record a year ahead is corrupt, not a reason never to rotate again.
        assert_eq!(reset_wait(now, Some(now + 365 * DAY), hour), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejected_password_is_not_tried_again_until_it_changes() {
        let limits = LoginLimits::default();
        let t0 = Instant::now();
        let mut record = LoginRecord::default();
        assert_eq!(record.decide(&limits, t0, "sha256:old"), LoginDecision::Go);
        assert_eq!(record.state(), "none");
        record.started(t0);
        record.failed(&limits, t0, Some("sha256:old".into()), 0.5);
        assert_eq!(record.state(), "credentials_rejected");
        for later in [1, 60, 3599] {
            assert_eq!(
                record.decide(&limits, t0 + Duration::from_secs(later), "sha256:old"),
                LoginDecision::Wait {
                    until: t0 + limits.backoff.cap,
                    hold: LoginHold::CredentialsRejected
                }
            );
        }
        // The ceiling passed: one more try with the same password.
        assert_eq!(
            record.decide(&limits, t0 + limits.backoff.cap, "sha256:old"),
            LoginDecision::Go
        );
        // The password file changed: at once.
        assert_eq!(
            record.decide(&limits, t0 + Duration::from_secs(30), "sha256:new"),
            LoginDecision::Go
        );
        record.started(t0 + Duration::from_secs(30));
        record.succeeded();
        assert_eq!(record.state(), "ok");
    }

    #[derive(Debug, Clone)]
    enum Outcome {
        Ok,
        Transport,
        Rejected,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the IAM answers and however often the manager asks, at most ten logins start in any
        /// hour, failures are spaced by the backoff, and a rejected password is tried at most once an hour.
        #[test]
        fn logins_stay_within_their_limits(
            steps in proptest::collection::vec((0u64..900_000, prop_oneof![Just(Outcome::Ok), Just(Outcome::Transport), Just(Outcome::Rejected)], 0.0f64..1.0, any::<bool>()), 1..200)
        ) {
            let limits = LoginLimits::default();
            let t0 = Instant::now();
            let mut now = t0;
            let mut record = LoginRecord::default();
            let mut starts: Vec<Instant> = Vec::new();
            let mut last_rejected: Option<(Instant, String)> = None;
            for (advance_ms, outcome, jitter, new_password) in steps {
                now += Duration::from_millis(advance_ms);
                let password = if new_password { format!("p{}", starts.len()) } else { "same".to_string() };
                if record.decide(&limits, now, &password) != LoginDecision::Go {
                    continue;
                }
                if let Some((at, rejected)) = &last_rejected {
                    prop_assert!(*rejected != password || now >= *at + limits.backoff.cap);
                }
                record.started(now);
                starts.push(now);
                let in_window = starts.iter().filter(|s| now < **s + HOUR).count();
                prop_assert!(in_window <= limits.max_per_hour);
                match outcome {
                    Outcome::Ok => { record.succeeded(); last_rejected = None; }
                    Outcome::Transport => { record.failed(&limits, now, None, jitter); last_rejected = None; }
                    Outcome::Rejected => {
                        record.failed(&limits, now, Some(password.clone()), jitter);
                        last_rejected = Some((now, password));
                    }
                }
            }
        }
    }
}
