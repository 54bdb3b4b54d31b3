//! The secret manager's schedule: what it knows about its entity's secret, its timers, and the pure
//! [`next_step`] that decides what it does next.
//!
//! Nothing here sleeps, locks or talks to the network. The manager task asks [`next_step`] what to do,
//! does it, and records the outcome here (the `record_*` methods), the way the token refresher follows
//! `token::policy`; so every rule below is tested with explicit instants. In order of precedence:
//!
//! 1. a reset secret that could not be stored is written again, with backoff, and nothing else happens
//!    until it is: no check, recovery or reset may act on a store that does not hold what the IAM knows;
//! 2. after the IAM rejected the secret in use (a 401), its current secret is read back — at most once
//!    per [`RECOVERY_SPACING`], so a burst of rejections is one read;
//! 3. the IAM is read (a *check*) every check interval; a failed read is tried again after a backoff, or
//!    as long as the error says (a held-back admin login is looked at again within [`PASSWORD_WATCH`]),
//!    never later than the next check would be. Once a reset falls due by the expiry, the IAM is read
//!    again before it, if it has not been read since (a grace warning makes the reset due at once);
//! 4. a reset when [`site_action`] says one is due, and not before a failed one's backoff (or the wait
//!    its error named: the reset bound, a held-back login) has run out;
//! 5. otherwise sleep until the earliest of those.
//!
//! Time is a [`Moment`]: the monotonic clock for timers, the wall clock for the secret's expiry.

use std::ops::Add;
use std::time::{Duration, SystemTime};

use secrecy::SecretString;
use tokio::time::Instant;

use super::check_read_expiry;
use super::sites::{Reading, Role, SiteAction, Store, Thresholds, reset_due_at, site_action};
use crate::backoff::Backoff;
use crate::secret::cell::SecretEvent;

/// Least time between two read-backs after the IAM rejected the secret.
pub const RECOVERY_SPACING: Duration = Duration::from_secs(30);
/// Retry delays after a failed step: 5 s doubling to 5 min.
pub const RETRY: Backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(300));
/// While the admin login is held back for a rejected password, the password file is looked at this often,
/// so a corrected password is used within a minute (looking costs no IAM call).
pub const PASSWORD_WATCH: Duration = Duration::from_secs(10);
/// How many failures a reset whose secret could not be stored counts for: the reset and the first write,
/// so the first write is retried after the second backoff step (5–10 s), not at once.
const UNSTORED_FAILURES: u32 = 2;

/// A reading of both clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moment {
    /// For timers: never jumps.
    pub at: Instant,
    /// For the secret's expiry, which the IAM gives as a date.
    pub wall: SystemTime,
}

impl Moment {
    pub fn now() -> Self {
        Self {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

impl Add<Duration> for Moment {
    type Output = Moment;

    fn add(self, elapsed: Duration) -> Moment {
        Moment {
            at: self.at + elapsed,
            wall: self.wall + elapsed,
        }
    }
}

/// What the manager does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write the reset secret held in memory ([`Schedule::pending`]) to the store again.
    RetryPersist,
    /// Read the IAM's current secret back after it rejected ours.
    Recover,
    /// Read the IAM's current secret and its expiry, and converge the store if it differs.
    Check,
    /// Reset the secret, for this reason (the rotation reads the IAM again first).
    Rotate(&'static str),
    /// Nothing to do before `until` (or before an event arrives).
    Sleep { until: Instant },
}

/// What an error said about when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryHint {
    /// Nothing: back off.
    Backoff,
    /// The reset bound holds the reset back for this long.
    ResetDeferred(Duration),
    /// The admin login is held back for this long (only a changed password file can lift it early).
    LoginHeld(Duration),
}

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The IAM was read (the store compared and, if need be, converged).
    Read,
    /// The IAM could not be read.
    Failed(RetryHint),
}

/// How a rotation attempt ended.
#[derive(Debug, Clone)]
pub enum RotationOutcome {
    /// Reset, stored and verified: the new secret is in use.
    Rotated,
    /// Read again just before the reset, the secret was no longer due (another process rotated it).
    NoLongerDue,
    /// Read again just before the reset, the IAM held another secret (reset elsewhere moments ago): it
    /// was adopted instead of a reset; `stored` says whether the store took it.
    Adopted { stored: bool },
    /// Reset, but the store could not be written: the new secret is in use from memory only and is
    /// written again until the store takes it.
    Unstored(SecretString),
    /// The attempt failed (before the reset, or verifying the new secret after storing it).
    Failed(RetryHint),
}

/// How writing a held secret to the store again ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersistOutcome {
    Stored,
    Failed,
}

/// What is known about the secret in use. The manager updates it as it learns (an IAM read, a reset).
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// The believable expiry of the secret in use, if one is known.
    pub expiry: Option<SystemTime>,
    /// How long the IAM made the secret valid for, when this rotator reset it.
    pub granted_validity: Option<Duration>,
    /// The IAM's grace-period warning was seen for the secret in use.
    pub in_grace: bool,
    /// When the secret in use was issued by a reset of ours (unknown for one found in place).
    pub issued_at: Option<SystemTime>,
    /// Since when the store has been seen to differ from the IAM's current secret (cleared once they agree).
    pub diverged_since: Option<SystemTime>,
}

/// The rotation settings the schedule follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleSettings {
    pub role: Role,
    /// Reset when less than this remains (a primary's threshold).
    pub rotate_before: Duration,
    /// How often the IAM is read.
    pub check_interval: Duration,
}

/// One entity's secret manager state: what it knows, and its timers.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub known: Known,
    settings: ScheduleSettings,
    /// When the IAM is next read.
    next_check: Instant,
    /// When the last check started, on the wall clock (for the read owed before a reset).
    last_check: Option<SystemTime>,
    /// Failed checks in a row.
    read_failures: u32,
    /// A reset secret not yet stored.
    pending: Option<SecretString>,
    /// The IAM rejected the secret in use, and it has not been read back since.
    recovery_requested: bool,
    /// Earliest next read-back.
    next_recovery: Instant,
    /// Failed rotation attempts (and writes of a held secret) in a row.
    failures: u32,
    /// No reset (or write of a held secret) before this, after a failure.
    retry_at: Option<Instant>,
}

impl Schedule {
    /// The state at start: check at once.
    pub fn new(now: Instant, settings: ScheduleSettings) -> Self {
        Self {
            known: Known::default(),
            settings,
            next_check: now,
            last_check: None,
            read_failures: 0,
            pending: None,
            recovery_requested: false,
            next_recovery: now,
            failures: 0,
            retry_at: None,
        }
    }

    pub fn settings(&self) -> ScheduleSettings {
        self.settings
    }

    /// What a rotation decision needs from the settings and what is known.
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            rotate_before: self.settings.rotate_before,
            granted_validity: self.known.granted_validity,
            check_interval: self.settings.check_interval,
        }
    }

    /// The reset secret held in memory until the store takes it.
    pub fn pending(&self) -> Option<&SecretString> {
        self.pending.as_ref()
    }

    /// Failed rotation attempts (and writes of a held secret) in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// What the role and the expiry say. The store was compared at the check, so only they decide here.
    fn site_action(&self, wall: SystemTime) -> SiteAction {
        let reading = Reading {
            expires_at: self.known.expiry,
            in_grace: self.known.in_grace,
        };
        site_action(
            self.settings.role,
            wall,
            reading,
            Store::Current,
            self.thresholds(),
        )
    }

    /// Whether the IAM must be read before a due reset: the reset fell due by the expiry since the last
    /// read, so another site may have made it already (a grace warning is acted on at once).
    fn check_owed(&self, action: &SiteAction) -> bool {
        if !matches!(action, SiteAction::Reset(_)) || self.known.in_grace {
            return false;
        }
        let Some(expiry) = self.known.expiry else {
            return false;
        };
        let due = reset_due_at(self.settings.role, expiry, self.thresholds());
        self.last_check.is_none_or(|checked| checked <= due)
    }

    /// How long to wait after a failure, as the error says or else by backoff.
    fn retry_delay(hint: RetryHint, failures: u32, jitter: f64) -> Duration {
        match hint {
            RetryHint::Backoff => RETRY.delay(failures, jitter),
            // At least a second: a bound that says "now" must not turn into a loop of attempts.
            RetryHint::ResetDeferred(wait) => wait.max(Duration::from_secs(1)),
            RetryHint::LoginHeld(wait) => wait.clamp(Duration::from_secs(1), PASSWORD_WATCH),
        }
    }

    /// A check that started at `started` ended so. `jitter` is uniform in `[0, 1)`.
    pub fn record_check(&mut self, started: Moment, outcome: CheckOutcome, jitter: f64) {
        self.last_check = Some(started.wall);
        let wait = match outcome {
            CheckOutcome::Read => {
                self.read_failures = 0;
                self.settings.check_interval
            }
            CheckOutcome::Failed(hint) => {
                self.read_failures = self.read_failures.saturating_add(1);
                Self::retry_delay(hint, self.read_failures, jitter)
                    .min(self.settings.check_interval)
            }
        };
        self.next_check = started.at + wait;
    }

    /// A read-back was started at `started`.
    pub fn record_recovery(&mut self, started: Instant) {
        self.recovery_requested = false;
        self.next_recovery = started + RECOVERY_SPACING;
    }

    /// A rotation attempt ended at `now` so.
    pub fn record_rotation(&mut self, now: Instant, outcome: RotationOutcome, jitter: f64) {
        let (failures, hint) = match outcome {
            RotationOutcome::Rotated
            | RotationOutcome::NoLongerDue
            | RotationOutcome::Adopted { stored: true } => {
                self.failures = 0;
                self.retry_at = None;
                return;
            }
            RotationOutcome::Adopted { stored: false } => {
                (self.failures.saturating_add(1), RetryHint::Backoff)
            }
            RotationOutcome::Unstored(secret) => {
                self.pending = Some(secret);
                (UNSTORED_FAILURES, RetryHint::Backoff)
            }
            RotationOutcome::Failed(hint) => (self.failures.saturating_add(1), hint),
        };
        self.failures = failures;
        self.retry_at = Some(now + Self::retry_delay(hint, failures, jitter));
    }

    /// Writing the held secret again ended at `now` so.
    pub fn record_persist(&mut self, now: Instant, outcome: PersistOutcome, jitter: f64) {
        match outcome {
            PersistOutcome::Stored => {
                self.pending = None;
                self.failures = 0;
                self.retry_at = None;
            }
            PersistOutcome::Failed => {
                self.failures = self.failures.saturating_add(1);
                self.retry_at = Some(now + RETRY.delay(self.failures, jitter));
            }
        }
    }

    /// What the token path reported about the secret.
    pub fn record_event(&mut self, wall: SystemTime, event: SecretEvent) {
        match event {
            SecretEvent::Rejected => self.recovery_requested = true,
            SecretEvent::GraceWarning => self.known.in_grace = true,
            // A hint only fills a gap: an expiry read from the IAM is better than a token's claim.
            SecretEvent::ExpiryHint(at) => {
                if self.known.expiry.is_none() {
                    self.known.expiry =
                        check_read_expiry(wall, Some(at), self.known.issued_at).known();
                }
            }
        }
    }
}

/// What the manager does next (see the module's documentation for the rules, in order).
pub fn next_step(now: Moment, state: &Schedule) -> Step {
    if state.pending.is_some() {
        return match state.retry_at {
            Some(at) if now.at < at => Step::Sleep { until: at },
            _ => Step::RetryPersist,
        };
    }
    if state.recovery_requested && now.at >= state.next_recovery {
        return Step::Recover;
    }
    let action = state.site_action(now.wall);
    if now.at >= state.next_check || state.check_owed(&action) {
        return Step::Check;
    }
    let mut wake = state.next_check;
    match action {
        SiteAction::Reset(reason) => match state.retry_at {
            Some(at) if now.at < at => wake = wake.min(at),
            _ => return Step::Rotate(reason),
        },
        // The reset falls due before the next check: look then (the read owed before it follows).
        SiteAction::Wait { check_again_in } => wake = wake.min(now.at + check_again_in),
        SiteAction::Converge | SiteAction::Unknown => {}
    }
    if state.recovery_requested {
        wake = wake.min(state.next_recovery);
    }
    Step::Sleep { until: wake }
}

#[cfg(test)]
mod tests;
