//! When to rotate: a pure function of the wall clock, the secret's expiry and the IAM's grace warning.
//!
//! Rotate when less than the threshold remains (default 15 days), at once when the secret has expired or
//! the IAM says it is in its grace period. The IAM may grant less validity than asked (it caps a new
//! secret by the admin token's remaining life); when a granted validity is shorter than the threshold, the
//! threshold shrinks to half of it, so a short grant cannot turn into a rotation on every check.

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
