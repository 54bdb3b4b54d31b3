//! One entity served from several sites: which rotator may reset, and when a store is brought back in
//! line with the IAM instead (a *convergence*).
//!
//! The IAM revokes the old secret the moment it issues a new one, so two rotators that both reset leave
//! one store holding a revoked secret. Three rules keep that from happening, as pure functions here that
//! the `serve` manager and the `rotate` command only follow:
//! - **read before you reset, converge on read** ([`site_action`]): a store whose secret differs from the
//!   IAM's current one (another site reset it, or a backup was restored) is given the IAM's secret, and
//!   nothing is reset because of it;
//! - **primary and standby** ([`Role`]): a standby never resets while more than its own threshold
//!   (default 3 days) remains — it converges on what the primary made; with less left the primary is taken
//!   to be gone and the standby resets, as the last resort;
//! - **read again just before a reset** ([`recheck`]): a secret that changed between the first read and
//!   the moment of the reset means another site has just reset it; it is adopted, not reset again.

use std::time::{Duration, SystemTime};

use super::{RotationDecision, decide, effective_threshold};

/// Default time left under which a standby resets (the primary is then taken to be gone).
pub const DEFAULT_STANDBY_RESET_WITHIN: Duration = Duration::from_secs(3 * 86_400);

/// What a rotator is at its site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Resets when fewer than the rotation threshold (`--rotate-before-days`) remain.
    Primary,
    /// Converges on the primary's resets; resets only when fewer than `reset_within` remain.
    Standby { reset_within: Duration },
}

impl Role {
    /// `primary` or `standby`, for logs and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby { .. } => "standby",
        }
    }

    /// Below how much time left this rotator resets: a standby's own threshold, never more than a
    /// primary's, so a standby cannot reset before the primary would.
    pub fn threshold(self, rotate_before: Duration) -> Duration {
        match self {
            Role::Primary => rotate_before,
            Role::Standby { reset_within } => reset_within.min(rotate_before),
        }
    }
}

/// What a rotator's store holds, compared with the IAM's current secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// The same secret.
    Current,
    /// Another secret, or none.
    Differs,
    /// The store cannot be read back (an `exec:` sink with no file to compare with).
    Unreadable,
}

/// What to do after reading the IAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SiteAction {
    /// Write the IAM's current secret to the store; reset nothing.
    Converge,
    /// Reset now, for this reason.
    Reset(&'static str),
    /// Nothing to do; look again after this long.
    Wait { check_again_in: Duration },
    /// The expiry is not known: nothing to reset on.
    Unknown,
}

/// What the IAM said about its current secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub expires_at: Option<SystemTime>,
    /// The IAM's grace-period warning was seen for this very secret.
    pub in_grace: bool,
}

/// The rotation settings a decision needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// A primary resets when fewer than this remain.
    pub rotate_before: Duration,
    /// The validity the IAM granted the current secret when this rotator issued it, if known.
    pub granted_validity: Option<Duration>,
    /// How often the rotator looks again.
    pub check_interval: Duration,
}

/// Decides, after reading the IAM and the store, whether to converge, reset or wait.
///
/// A store that differs is always converged first — even when a reset is also due, so that a reset
/// deferred or failing afterwards still leaves the store holding the secret the IAM accepts.
pub fn site_action(
    role: Role,
    now: SystemTime,
    iam: Reading,
    store: Store,
    limits: Thresholds,
) -> SiteAction {
    if store == Store::Differs {
        return SiteAction::Converge;
    }
    match decide(
        now,
        iam.expires_at,
        iam.in_grace,
        role.threshold(limits.rotate_before),
        limits.granted_validity,
        limits.check_interval,
    ) {
        RotationDecision::Due(reason) => SiteAction::Reset(match role {
            Role::Primary => reason,
            Role::Standby { .. } => {
                "a standby's last resort: the secret expires within the standby's threshold, so the primary is taken to be gone"
            }
        }),
        RotationDecision::NotDue { check_again_in } => SiteAction::Wait { check_again_in },
        RotationDecision::Unknown => SiteAction::Unknown,
    }
}

/// The moment after which [`site_action`] answers [`SiteAction::Reset`] for a secret expiring at
/// `expires_at` (a grace warning makes a reset due at once, whatever this says). The schedule uses it to
/// read the IAM once the reset has fallen due and before making it.
pub fn reset_due_at(role: Role, expires_at: SystemTime, limits: Thresholds) -> SystemTime {
    let threshold = effective_threshold(
        role.threshold(limits.rotate_before),
        limits.granted_validity,
    );
    expires_at
        .checked_sub(threshold)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The read made immediately before a reset. `before` and `now_read` are fingerprints of the secret the
/// store holds (what the first read agreed with) and of the IAM's current secret read again: if they
/// differ another site reset it moments ago, and the answer is [`SiteAction::Converge`]. Otherwise the
/// fresh expiry is judged again (a grace warning seen earlier is not carried over: the fresh expiry says
/// whether the secret has expired).
pub fn recheck(
    role: Role,
    now: SystemTime,
    before: &str,
    now_read: &str,
    expires_at: Option<SystemTime>,
    limits: Thresholds,
) -> SiteAction {
    if before != now_read {
        return SiteAction::Converge;
    }
    site_action(
        role,
        now,
        Reading {
            expires_at,
            in_grace: false,
        },
        Store::Current,
        limits,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: Duration = Duration::from_secs(86_400);
    const HOUR: Duration = Duration::from_secs(3600);

    fn limits(rotate_before: Duration) -> Thresholds {
        Thresholds {
            rotate_before,
            granted_validity: None,
            check_interval: 6 * HOUR,
        }
    }

    fn standby() -> Role {
        Role::Standby {
            reset_within: DEFAULT_STANDBY_RESET_WITHIN,
        }
    }

    fn reading(now: SystemTime, days_left: f64) -> Reading {
        let offset = DAY.mul_f64(days_left.abs());
        Reading {
            expires_at: Some(if days_left >= 0.0 {
                now + offset
            } else {
                now - offset
            }),
            in_grace: false,
        }
    }

    #[test]
    fn a_primary_resets_inside_its_threshold_a_standby_only_inside_its_own() {
        let now = SystemTime::UNIX_EPOCH + 20_000 * DAY;
        let l = limits(15 * DAY);
        let at = |role, days| site_action(role, now, reading(now, days), Store::Current, l);
        assert!(matches!(at(Role::Primary, 10.0), SiteAction::Reset(_)));
        assert!(matches!(at(standby(), 10.0), SiteAction::Wait { .. }));
        assert!(matches!(at(standby(), 3.5), SiteAction::Wait { .. }));
        assert!(matches!(at(standby(), 2.5), SiteAction::Reset(_)));
        assert!(matches!(at(standby(), -1.0), SiteAction::Reset(_)));
        // A standby's threshold above the primary's is held to the primary's.
        let eager = Role::Standby {
            reset_within: 30 * DAY,
        };
        assert!(matches!(at(eager, 20.0), SiteAction::Wait { .. }));
        assert_eq!(
            site_action(
                Role::Primary,
                now,
                Reading {
                    expires_at: None,
                    in_grace: false
                },
                Store::Current,
                l
            ),
            SiteAction::Unknown
        );
    }

    #[test]
    fn a_store_that_differs_converges_whatever_else_holds() {
        let now = SystemTime::UNIX_EPOCH + 20_000 * DAY;
        for role in [Role::Primary, standby()] {
            for days in [-2.0, 1.0, 10.0, 170.0] {
                assert_eq!(
                    site_action(
                        role,
                        now,
                        reading(now, days),
                        Store::Differs,
                        limits(15 * DAY)
                    ),
                    SiteAction::Converge
                );
            }
        }
        // An unreadable store decides like a current one: the reset rules still hold.
        assert!(matches!(
            site_action(
                Role::Primary,
                now,
                reading(now, 10.0),
                Store::Unreadable,
                limits(15 * DAY)
            ),
            SiteAction::Reset(_)
        ));
    }

    #[test]
    fn a_reset_made_elsewhere_between_the_reads_is_adopted() {
        let now = SystemTime::UNIX_EPOCH + 20_000 * DAY;
        let soon = Some(now + DAY);
        let l = limits(15 * DAY);
        assert_eq!(
            recheck(Role::Primary, now, "sha256:a", "sha256:b", soon, l),
            SiteAction::Converge
        );
        assert!(matches!(
            recheck(Role::Primary, now, "sha256:a", "sha256:a", soon, l),
            SiteAction::Reset(_)
        ));
        // Same secret, but the fresh read says it was renewed: not due any more.
        assert!(matches!(
            recheck(
                Role::Primary,
                now,
                "sha256:a",
                "sha256:a",
                Some(now + 100 * DAY),
                l
            ),
            SiteAction::Wait { .. }
        ));
    }

    fn role_strategy() -> impl Strategy<Value = Role> {
        prop_oneof![
            Just(Role::Primary),
            (1u64..20 * 24).prop_map(|hours| Role::Standby {
                reset_within: HOUR * hours as u32
            }),
        ]
    }

    fn store_strategy() -> impl Strategy<Value = Store> {
        prop_oneof![
            Just(Store::Current),
            Just(Store::Differs),
            Just(Store::Unreadable)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The schedule's idea of when a reset falls due is the decision's: a reset exactly when the
        /// wall clock is past [`reset_due_at`] (no grace warning, the store current).
        #[test]
        fn a_reset_is_due_exactly_after_reset_due_at(
            role in role_strategy(),
            left_seconds in -2_000_000i64..30_000_000,
            rotate_before_hours in 1u64..60 * 24,
            granted_hours in proptest::option::of(1u64..180 * 24),
        ) {
            let now = SystemTime::UNIX_EPOCH + 20_000 * DAY;
            let left = Duration::from_secs(left_seconds.unsigned_abs());
            let expires_at = if left_seconds >= 0 { now + left } else { now - left };
            let l = Thresholds {
                rotate_before: HOUR * rotate_before_hours as u32,
                granted_validity: granted_hours.map(|h| HOUR * h as u32),
                check_interval: 6 * HOUR,
            };
            let iam = Reading { expires_at: Some(expires_at), in_grace: false };
            let reset = matches!(site_action(role, now, iam, Store::Current, l), SiteAction::Reset(_));
            prop_assert_eq!(reset, now > reset_due_at(role, expires_at, l));
        }

        /// Whatever the IAM reports, a standby resets only inside its own threshold (or when the IAM says
        /// the secret is in its grace period), a store that differs is never reset but converged, and a
        /// secret that changed between the two reads is never reset.
        #[test]
        fn standbys_wait_differing_stores_converge_changed_secrets_are_adopted(
            role in role_strategy(),
            store in store_strategy(),
            left_minutes in -20_000i64..300_000,
            in_grace in any::<bool>(),
            rotate_before_hours in 1u64..60 * 24,
            granted_hours in proptest::option::of(1u64..180 * 24),
            changed in any::<bool>(),
        ) {
            let now = SystemTime::UNIX_EPOCH + 20_000 * DAY;
            let left = Duration::from_secs(left_minutes.unsigned_abs() * 60);
            let expires_at = if left_minutes >= 0 { now + left } else { now - left };
            let l = Thresholds {
                rotate_before: HOUR * rotate_before_hours as u32,
                granted_validity: granted_hours.map(|h| HOUR * h as u32),
                check_interval: 6 * HOUR,
            };
            let iam = Reading { expires_at: Some(expires_at), in_grace };
            let action = site_action(role, now, iam, store, l);
            if store == Store::Differs {
                prop_assert_eq!(&action, &SiteAction::Converge);
            }
            if matches!(action, SiteAction::Reset(_)) {
                let threshold = effective_threshold(role.threshold(l.rotate_before), l.granted_validity);
                let inside = left_minutes < 0 || left < threshold;
                prop_assert!(in_grace || inside, "{role:?} reset with {left:?} left (threshold {threshold:?})");
            }
            if let Role::Standby { reset_within } = role
                && !in_grace
                && left_minutes >= 0
                && left >= reset_within
            {
                prop_assert!(!matches!(action, SiteAction::Reset(_)));
            }
            let second = if changed { "sha256:new" } else { "sha256:old" };
            let again = recheck(role, now, "sha256:old", second, Some(expires_at), l);
            if changed {
                prop_assert_eq!(again, SiteAction::Converge);
            }
        }

        /// A world of one IAM that revokes on reset, one primary and two standbys, each with its own store.
        /// Every round some hours pass, a backup may be restored into a store, and each live site checks in
        /// an order that changes from round to round; at a random round the primary is gone for good.
        /// While it lives, only it resets, never twice in one validity; after every check the checking
        /// site's store holds the IAM's secret; once it is gone, exactly one standby resets per cycle, inside
        /// its threshold; and the secret never expires.
        #[test]
        fn sites_reset_once_and_converge_within_one_run(
            rounds in proptest::collection::vec((1u64..=12, any::<u64>(), proptest::option::of(0usize..3)), 1..400),
            primary_gone_at in proptest::option::of(0usize..400),
        ) {
            let limits = Thresholds { rotate_before: 15 * DAY, granted_validity: None, check_interval: 6 * HOUR };
            let roles = [Role::Primary, standby(), standby()];
            let mut now = SystemTime::UNIX_EPOCH + 20_000 * DAY;
            // The IAM: the current secret (a generation number) and its expiry.
            let mut iam = (0u64, now + 20 * DAY);
            let mut stores = [0u64; 3];
            let mut backups = [0u64; 3];
            let mut resets: Vec<(usize, usize, SystemTime, Duration)> = Vec::new();
            for (round, (hours, order_seed, restore)) in rounds.into_iter().enumerate() {
                now += HOUR * hours as u32;
                if let Some(site) = restore {
                    stores[site] = backups[site];
                }
                let alive = |site: usize| site != 0 || primary_gone_at.is_none_or(|gone| round < gone);
                let mut order = [0usize, 1, 2];
                let mut rng = fastrand::Rng::with_seed(order_seed);
                rng.shuffle(&mut order);
                let resets_before = resets.len();
                for site in order.into_iter().filter(|s| alive(*s)) {
                    prop_assert!(iam.1 > now, "the secret expired");
                    let reading = Reading { expires_at: Some(iam.1), in_grace: false };
                    let store = if stores[site] == iam.0 { Store::Current } else { Store::Differs };
                    let mut action = site_action(roles[site], now, reading, store, limits);
                    if action == SiteAction::Converge {
                        stores[site] = iam.0;
                        action = site_action(roles[site], now, reading, Store::Current, limits);
                    }
                    if let SiteAction::Reset(_) = action {
                        let first = iam.0;
                        let confirmed = recheck(roles[site], now, &first.to_string(), &iam.0.to_string(), Some(iam.1), limits);
                        prop_assert!(matches!(confirmed, SiteAction::Reset(_)));
                        resets.push((round, site, now, iam.1.duration_since(now).unwrap_or_default()));
                        iam = (iam.0 + 1, now + 180 * DAY);
                        stores[site] = iam.0;
                        backups[site] = first;
                    }
                    prop_assert_eq!(stores[site], iam.0, "site {} did not converge", site);
                }
                prop_assert!(resets.len() - resets_before <= 1, "two resets in one round");
            }
            for pair in resets.windows(2) {
                prop_assert!(pair[1].2.duration_since(pair[0].2).unwrap_or_default() >= 165 * DAY, "two resets in one validity");
            }
            for (round, site, at, left) in &resets {
                let primary_alive = primary_gone_at.is_none_or(|gone| *round < gone);
                if *site == 0 {
                    prop_assert!(*left < 15 * DAY);
                } else {
                    prop_assert!(!primary_alive, "a standby reset while the primary lived");
                    prop_assert!(*left < DEFAULT_STANDBY_RESET_WITHIN, "a standby reset at {:?} with {:?} left", at, left);
                }
            }
        }
    }
}
