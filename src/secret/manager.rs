//! The per-entity task `serve` runs when admin credentials are configured.
//!
//! It knows the secret's expiry (from `secret read` at start and every `check_interval`, and from the
//! `secret-expiry-ts` claim of each token), rotates when [`super::policy::sites::site_action`] says so —
//! a primary when fewer than `--rotate-before-days` remain, a standby only as the last resort — and heals:
//! - **the store differs from the IAM** at a check (another site reset the secret, or a backup was
//!   restored): the IAM's current secret is written to the store — a *convergence*, logged with both
//!   fingerprints and counted — and nothing is reset; immediately before a reset the IAM is read again,
//!   so a reset another site made moments ago is adopted, not repeated;
//! - **rejected secret** (the IAM answers 401): read the IAM's current secret back and store it — this also
//!   recovers from a crash between reset and persist. It never resets in that case;
//! - **persist failed** after a reset: keep the new secret in memory (the broker uses it), report the
//!   entity not ready, log an error that should page someone, and retry the sink with backoff;
//! - **another process rotated** (several processes sharing one secret file): the file lock serialises
//!   them, and whoever gets it second re-reads the IAM and finds nothing to do;
//! - **an expiry that cannot be right** (in the past on a secret just issued, beyond 181 days, a year
//!   gone on a read): treated as unknown and reported as a warning, never acted on, so a unit or clock
//!   error on the IAM's side cannot become a reset loop. The reset bound ([`super::ledger`]) backs this up.
//!
//! When to do what is not decided here: [`next_step`] decides from the [`Schedule`] (what is known about
//! the secret, and the timers), and this task takes the step and records how it ended.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};

use super::cell::{SecretCell, SecretEvent};
use super::policy::schedule::{
    CheckOutcome, Known, Moment, PersistOutcome, RetryHint, RotationOutcome, Schedule,
    ScheduleSettings, Step, next_step,
};
use super::policy::sites::{SiteAction, recheck};
use super::policy::{Expiry, check_read_expiry};
use super::recorder::{
    ConvergenceTrigger, RotationLabel, RotationStep, SecretRecorder, StepOutcome,
};
use super::rotation::{RotationError, Rotator};
use super::sink::{SecretSink, SinkSpec};
use super::{RotationSettings, lock};
use crate::entity::{EntityId, SecretSource, fingerprint};
use crate::iam::SecretGrant;
use crate::timefmt;

/// How long to wait for another process's rotation before giving up this turn.
const LOCK_WAIT: Duration = Duration::from_secs(60);
/// Least sleep between two turns, so a wake-up that is due at once cannot spin.
const MIN_SLEEP: Duration = Duration::from_millis(10);

/// Manages one entity's secret.
#[derive(Clone)]
pub struct SecretManager {
    entity: EntityId,
    /// The entity's secret, shared with the token path.
    cell: Arc<SecretCell>,
    recorder: Arc<dyn SecretRecorder>,
    rotator: Arc<Rotator>,
    sink: SecretSink,
    lock_file: Option<PathBuf>,
    settings: ScheduleSettings,
}

impl SecretManager {
    pub fn new(
        entity: EntityId,
        cell: Arc<SecretCell>,
        recorder: Arc<dyn SecretRecorder>,
        rotator: Arc<Rotator>,
        sink: SecretSink,
        settings: &RotationSettings,
    ) -> Self {
        let lock_file = match sink.spec() {
            SinkSpec::File(path) => Some(path.clone()),
            _ => None,
        };
        Self {
            entity,
            cell,
            recorder,
            rotator,
            sink,
            lock_file,
            settings: ScheduleSettings {
                role: settings.role,
                rotate_before: settings.rotate_before,
                check_interval: settings.check_interval,
            },
        }
    }

    pub fn entity(&self) -> &EntityId {
        &self.entity
    }

    pub fn cell(&self) -> &Arc<SecretCell> {
        &self.cell
    }

    /// Runs until `shutdown` turns true: asks the schedule for the next step, takes it, records how it
    /// ended. The decisions are all in [`next_step`].
    pub async fn run(
        self,
        mut events: mpsc::Receiver<SecretEvent>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut schedule = Schedule::new(Instant::now(), self.settings);
        self.cell
            .report(|s| s.check_interval = Some(self.settings.check_interval));
        let mut events_open = true;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let now = Moment::now();
            match next_step(now, &schedule) {
                Step::RetryPersist => {
                    let outcome = self.retry_persist(&schedule).await;
                    schedule.record_persist(Instant::now(), outcome, fastrand::f64());
                }
                Step::Recover => {
                    schedule.record_recovery(now.at);
                    self.recover(&mut schedule.known).await;
                }
                Step::Check => {
                    let outcome = self.check(&mut schedule.known).await;
                    schedule.record_check(now, outcome, fastrand::f64());
                }
                Step::Rotate(reason) => {
                    let outcome = self.rotate(&mut schedule, reason).await;
                    self.report_admin_login();
                    schedule.record_rotation(Instant::now(), outcome, fastrand::f64());
                }
                Step::Sleep { until } => tokio::select! {
                    () = sleep_until(until.max(now.at + MIN_SLEEP)) => {}
                    event = events.recv(), if events_open => match event {
                        Some(event) => schedule.record_event(SystemTime::now(), event),
                        None => events_open = false,
                    },
                    _ = shutdown.changed() => return,
                },
            }
        }
    }

    /// One periodic read of the IAM: the expiry noted, the store converged if it differs.
    async fn check(&self, known: &mut Known) -> CheckOutcome {
        let read = self.rotator.read_current(&self.entity).await;
        self.report_admin_login();
        match read {
            Ok(current) => {
                self.note_read_expiry(known, current.expires_on);
                self.converge_if_diverged(known, current).await;
                CheckOutcome::Read
            }
            Err(e) => {
                let hint = retry_hint(&e);
                if hint == RetryHint::Backoff {
                    tracing::warn!(entity = %self.entity, error = %e, "cannot read the secret's expiry");
                }
                CheckOutcome::Failed(hint)
            }
        }
    }

    /// One rotation attempt: the lock, a read of the IAM just before, and the reset if it is still due.
    async fn rotate(&self, schedule: &mut Schedule, reason: &str) -> RotationOutcome {
        tracing::info!(entity = %self.entity, reason, "secret rotation due");
        let _lock = match &self.lock_file {
            Some(path) => match lock::acquire(path, LOCK_WAIT).await {
                Ok(held) => Some(held),
                Err(e) => return self.failed(&RotationError::Lock(e)),
            },
            None => None,
        };
        let thresholds = schedule.thresholds();
        let known = &mut schedule.known;
        // Read again immediately before the reset: another process, or another site, may have reset it
        // moments ago. Ask the IAM, not our memory.
        let current = match self.rotator.read_current(&self.entity).await {
            Ok(current) => current,
            Err(e) => return self.failed(&e),
        };
        self.note_read_expiry(known, current.expires_on);
        let stored = self.stored_secret().await;
        let before = stored.as_ref().map(fingerprint).unwrap_or_default();
        match recheck(
            self.settings.role,
            SystemTime::now(),
            &before,
            &fingerprint(&current.secret),
            known.expiry,
            thresholds,
        ) {
            SiteAction::Reset(_) => {}
            SiteAction::Converge => {
                tracing::info!(entity = %self.entity, store = %before, iam = %fingerprint(&current.secret), "the IAM's current secret differs from the store's just before the reset (reset elsewhere moments ago); adopting it, no reset");
                known.in_grace = false;
                known.issued_at = None;
                let stored = self
                    .adopt(
                        known,
                        current,
                        Some(before),
                        ConvergenceTrigger::BeforeReset,
                    )
                    .await;
                return RotationOutcome::Adopted { stored };
            }
            SiteAction::Wait { .. } | SiteAction::Unknown => {
                tracing::info!(entity = %self.entity, "rotation no longer due after re-reading the IAM");
                known.in_grace = false;
                return RotationOutcome::NoLongerDue;
            }
        }
        let (rotated, outcome) = match self.rotator.rotate(&self.entity, &self.sink).await {
            Ok(rotated) => {
                self.cell.replace(rotated.secret.clone());
                self.cell.report(|s| s.alert = None);
                self.note_granted(&rotated);
                self.rotated(RotationLabel::Ok);
                tracing::info!(entity = %self.entity, secret = %rotated.fingerprint, "secret rotated");
                (rotated, RotationOutcome::Rotated)
            }
            Err(RotationError::Persist { rotated, error }) => {
                self.cell.replace(rotated.secret.clone());
                self.set_alert(Some(format!(
                    "a rotated secret is held only in memory: {error}"
                )));
                self.rotated(RotationLabel::PersistFailed);
                self.note_granted(&rotated);
                let held = rotated.secret.clone();
                (*rotated, RotationOutcome::Unstored(held))
            }
            Err(e) => return self.failed(&e),
        };
        known.expiry = rotated.expires_on;
        known.granted_validity = rotated.granted_validity;
        known.in_grace = false;
        known.issued_at = Some(SystemTime::now());
        outcome
    }

    /// Takes a read-back expiry if it is believable; reports one that is not, and forgets the expiry.
    fn note_read_expiry(&self, known: &mut Known, expires_on: Option<SystemTime>) {
        let checked = check_read_expiry(SystemTime::now(), expires_on, known.issued_at);
        known.expiry = checked.known();
        self.cell.report(|s| s.expires_at = known.expiry);
        match checked {
            Expiry::Implausible(at) => {
                tracing::warn!(entity = %self.entity, expires_on = %timefmt::rfc3339_seconds(at), "the IAM reports a secret expiry that cannot be right; treating it as unknown (no rotation because of it)");
                self.set_warning(Some(format!(
                        "the IAM reports a secret expiry of {} that cannot be right; treated as unknown",
                        timefmt::rfc3339_seconds(at)
                    )),
                );
            }
            _ => self.set_warning(None),
        }
    }

    /// Records a new secret's granted expiry, or the warning that it cannot be right.
    fn note_granted(&self, rotated: &super::rotation::Rotated) {
        self.cell.report(|s| s.expires_at = rotated.expires_on);
        self.set_warning(rotated.implausible_expiry.map(|at| {
                format!(
                    "the IAM granted the new secret an expiry of {} that cannot be right; the secret is kept and its expiry treated as unknown",
                    timefmt::rfc3339_seconds(at)
                )
            }),
        );
    }

    fn report_admin_login(&self) {
        let state = self.rotator.admin().login_state();
        self.cell.report(|s| s.admin_login = Some(state));
    }

    fn set_alert(&self, alert: Option<String>) {
        self.cell.report(|s| s.alert = alert);
    }

    fn set_warning(&self, warning: Option<String>) {
        self.cell.report(|s| s.warning = warning);
    }

    /// Counts a rotation outcome; a success is also reported in the entity's status.
    fn rotated(&self, outcome: RotationLabel) {
        if outcome == RotationLabel::Ok {
            self.cell
                .report(|s| s.last_rotation = Some(SystemTime::now()));
        }
        self.recorder.rotation(&self.entity, outcome);
    }

    /// The secret the store holds: read back from the sink when it can be; else (an `exec:` sink, or a
    /// store that cannot be reached just now) the secret file this broker reads — never the secret it
    /// holds in memory, which would hide a store that a convergence failed to write. With no file either
    /// (an inline secret), the secret in use.
    async fn stored_secret(&self) -> Option<SecretString> {
        match self.sink.read().await {
            Ok(Some(stored)) => return stored.secret,
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(entity = %self.entity, error = %e, "cannot read the store back; comparing the secret file");
            }
        }
        match self.cell.source() {
            SecretSource::File(_) => self.cell.source().load().await.ok(),
            SecretSource::Inline(_) => self.cell.current().await.ok(),
        }
    }

    /// At a check: when the store's secret differs from the IAM's current one, converge.
    async fn converge_if_diverged(&self, known: &mut Known, current: SecretGrant) {
        let stored = self.stored_secret().await;
        if stored.as_ref().map(|s| s.expose_secret()) == Some(current.secret.expose_secret()) {
            self.set_diverged(known, false);
            return;
        }
        let before = stored.as_ref().map(fingerprint);
        tracing::info!(entity = %self.entity, store = before.as_deref().unwrap_or("none"), iam = %fingerprint(&current.secret), "the store's secret differs from the IAM's current one (reset elsewhere, or restored from a backup); converging, no reset");
        known.in_grace = false;
        known.issued_at = None;
        self.adopt(known, current, before, ConvergenceTrigger::Check)
            .await;
    }

    /// Stores the IAM's current secret and switches to it: a convergence (a heal, not a reset).
    async fn adopt(
        &self,
        known: &mut Known,
        current: SecretGrant,
        before: Option<String>,
        trigger: ConvergenceTrigger,
    ) -> bool {
        self.set_diverged(known, true);
        self.cell.replace(current.secret.clone());
        match self
            .rotator
            .converge(&self.entity, &self.sink, current)
            .await
        {
            Ok(converged) => {
                self.cell.replace(converged.secret.clone());
                self.cell.report(|s| s.alert = None);
                self.set_diverged(known, false);
                self.recorder.convergence(&self.entity, trigger);
                self.note_read_expiry(known, converged.expires_on);
                tracing::info!(entity = %self.entity, store_was = before.as_deref().unwrap_or("none"), store_now = %fingerprint(&converged.secret), sink = %self.sink.spec(), %trigger, "converged: the store holds the IAM's current secret (no reset)");
                true
            }
            Err(error) => {
                tracing::error!(entity = %self.entity, sink = %self.sink.spec(), error = %error, "cannot store the IAM's current secret; using it from memory");
                self.set_alert(Some(format!(
                    "the current secret is held only in memory: {error}"
                )));
                false
            }
        }
    }

    /// Notes whether the store differs from the IAM, keeping the moment it was first seen to.
    fn set_diverged(&self, known: &mut Known, diverged: bool) {
        known.diverged_since = match (diverged, known.diverged_since) {
            (false, _) => None,
            (true, Some(since)) => Some(since),
            (true, None) => Some(SystemTime::now()),
        };
        let since = known.diverged_since;
        self.cell.report(|s| s.store_diverged_since = since);
    }

    /// After a 401: read the IAM's current secret; if it is not the one we use, store and use it.
    async fn recover(&self, known: &mut Known) {
        let current = match self.rotator.read_current(&self.entity).await {
            Ok(current) => current,
            Err(e) => {
                tracing::warn!(entity = %self.entity, error = %e, "the IAM rejected the secret and reading it back failed");
                return;
            }
        };
        self.note_read_expiry(known, current.expires_on);
        let ours = self.cell.current().await.ok();
        if ours.as_ref().map(|s| s.expose_secret()) == Some(current.secret.expose_secret()) {
            tracing::warn!(entity = %self.entity, "the IAM rejected the secret it reports as current (expired past its grace period?)");
            return;
        }
        let before = ours.as_ref().map(fingerprint);
        tracing::warn!(entity = %self.entity, store = before.as_deref().unwrap_or("none"), iam = %fingerprint(&current.secret), "the IAM rejected our secret; recovering the current one by reading it back (no reset)");
        known.issued_at = None;
        if self
            .adopt(known, current, before, ConvergenceTrigger::Rejected)
            .await
        {
            self.rotated(RotationLabel::Recovered);
        }
    }

    /// Writes the reset secret held in memory to the store again.
    async fn retry_persist(&self, schedule: &Schedule) -> PersistOutcome {
        let Some(secret) = schedule.pending() else {
            return PersistOutcome::Stored;
        };
        match self.rotator.persist(&self.entity, &self.sink, secret).await {
            Ok(stored) => {
                self.cell.replace(stored);
                self.cell.report(|s| s.alert = None);
                self.rotated(RotationLabel::Ok);
                tracing::info!(entity = %self.entity, step = %RotationStep::Persist, outcome = %StepOutcome::Ok, sink = %self.sink.spec(), "secret rotation step: the rotated secret is stored now");
                PersistOutcome::Stored
            }
            Err(error) => {
                self.set_alert(Some(format!(
                    "a rotated secret is held only in memory: {error}"
                )));
                tracing::error!(
                    entity = %self.entity,
                    step = %RotationStep::Persist,
                    outcome = %StepOutcome::Failed,
                    attempts = schedule.failures().saturating_add(1),
                    sink = %self.sink.spec(),
                    error = %error,
                    "secret rotation step: THE NEW SECRET IS ONLY IN MEMORY; a restart now would lose it (recover with `aa-token-broker secret read --output FILE`)"
                );
                PersistOutcome::Failed
            }
        }
    }

    /// Counts and logs a failed attempt; the schedule retries it.
    fn failed(&self, error: &RotationError) -> RotationOutcome {
        self.rotated(error.kind());
        tracing::error!(entity = %self.entity, error = %error, "secret rotation failed; will retry");
        RotationOutcome::Failed(retry_hint(error))
    }
}

/// What an error says about when to try again.
fn retry_hint(error: &RotationError) -> RetryHint {
    match error {
        RotationError::Deferred { retry_in, .. } => RetryHint::ResetDeferred(*retry_in),
        other => other
            .retry_in()
            .map_or(RetryHint::Backoff, RetryHint::LoginHeld),
    }
}
