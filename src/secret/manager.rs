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

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};

use super::cell::{SecretCell, SecretEvent};
use super::policy::sites::{Reading, Role, SiteAction, Store, Thresholds, recheck, site_action};
use super::policy::{Expiry, check_read_expiry};
use super::recorder::{
    ConvergenceTrigger, RotationLabel, RotationStep, SecretRecorder, StepOutcome,
};
use super::rotation::{RotationError, Rotator};
use super::sink::{SecretSink, SinkSpec};
use super::{RotationSettings, lock};
use crate::backoff::Backoff;
use crate::entity::{EntityId, SecretSource, fingerprint};
use crate::iam::SecretGrant;
use crate::timefmt;

/// How long to wait for another process's rotation before giving up this turn.
const LOCK_WAIT: Duration = Duration::from_secs(60);
/// Least time between two read-back recoveries.
const RECOVERY_SPACING: Duration = Duration::from_secs(30);
/// Retry delays after a failed step: 5 s doubling to 5 min.
const RETRY: Backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(300));
/// While the admin login is held back for a rejected password, the password file is looked at this often,
/// so a corrected password is used within a minute (looking costs no IAM call).
const PASSWORD_WATCH: Duration = Duration::from_secs(10);

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
    rotate_before: Duration,
    check_interval: Duration,
    role: Role,
}

#[derive(Default)]
struct Known {
    expiry: Option<SystemTime>,
    granted_validity: Option<Duration>,
    in_grace: bool,
    /// A reset secret not yet stored.
    pending: Option<SecretString>,
    recovery_requested: bool,
    failures: u32,
    read_failures: u32,
    /// When an error said how long to wait (a deferred reset, a held-back login).
    retry_in: Option<Duration>,
    /// When the secret in use was issued by a reset of ours (unknown for one found in place).
    issued_at: Option<SystemTime>,
    /// Since when the store has been seen to differ from the IAM's current secret (cleared once they agree).
    diverged_since: Option<SystemTime>,
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
            rotate_before: settings.rotate_before,
            check_interval: settings.check_interval,
            role: settings.role,
        }
    }

    fn thresholds(&self, known: &Known) -> Thresholds {
        Thresholds {
            rotate_before: self.rotate_before,
            granted_validity: known.granted_validity,
            check_interval: self.check_interval,
        }
    }

    pub fn entity(&self) -> &EntityId {
        &self.entity
    }

    pub fn cell(&self) -> &Arc<SecretCell> {
        &self.cell
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(
        self,
        mut events: mpsc::Receiver<SecretEvent>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut known = Known::default();
        self.cell
            .report(|s| s.check_interval = Some(self.check_interval));
        let mut next_check = Instant::now();
        let mut next_recovery = Instant::now();
        let mut retry_at = Instant::now();
        let mut events_open = true;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let now = Instant::now();
            if known.pending.is_some() {
                if now >= retry_at {
                    self.retry_persist(&mut known).await;
                    retry_at = Instant::now() + backoff(known.failures);
                }
            } else if known.recovery_requested && now >= next_recovery {
                known.recovery_requested = false;
                next_recovery = now + RECOVERY_SPACING;
                self.recover(&mut known).await;
            } else if now >= next_check {
                let read = self.rotator.read_current(&self.entity).await;
                self.report_admin_login();
                next_check = match read {
                    Ok(current) => {
                        known.read_failures = 0;
                        self.note_read_expiry(&mut known, current.expires_on);
                        self.converge_if_diverged(&mut known, current).await;
                        now + self.check_interval
                    }
                    Err(e) => {
                        known.read_failures = known.read_failures.saturating_add(1);
                        if e.retry_in().is_none() {
                            tracing::warn!(entity = %self.entity, error = %e, "cannot read the secret's expiry");
                        }
                        now + self
                            .retry_delay(&e, known.read_failures)
                            .min(self.check_interval)
                    }
                };
            }
            if known.pending.is_none() && now >= retry_at {
                let reading = Reading {
                    expires_at: known.expiry,
                    in_grace: known.in_grace,
                };
                // The store was compared at the check: here only the role and the expiry decide.
                match site_action(
                    self.role,
                    SystemTime::now(),
                    reading,
                    Store::Current,
                    self.thresholds(&known),
                ) {
                    SiteAction::Reset(reason) => {
                        known.retry_in = None;
                        if self.rotate(&mut known, reason).await {
                            known.failures = 0;
                        } else {
                            known.failures = known.failures.saturating_add(1);
                        }
                        self.report_admin_login();
                        retry_at = Instant::now()
                            + match (known.failures, known.retry_in) {
                                (0, _) => Duration::ZERO,
                                (_, Some(wait)) => wait,
                                (failures, None) => backoff(failures),
                            };
                        continue;
                    }
                    SiteAction::Wait { check_again_in } => {
                        next_check = next_check.min(Instant::now() + check_again_in);
                    }
                    SiteAction::Converge | SiteAction::Unknown => {}
                }
            }
            let mut wake = next_check;
            if known.pending.is_some() || known.failures > 0 {
                wake = wake.min(retry_at);
            }
            if known.recovery_requested {
                wake = wake.min(next_recovery);
            }
            tokio::select! {
                () = sleep_until(wake.max(Instant::now() + Duration::from_millis(10))) => {}
                event = events.recv(), if events_open => match event {
                    Some(SecretEvent::Rejected) => known.recovery_requested = true,
                    Some(SecretEvent::GraceWarning) => known.in_grace = true,
                    Some(SecretEvent::ExpiryHint(at)) => {
                        if known.expiry.is_none() {
                            known.expiry = check_read_expiry(SystemTime::now(), Some(at), known.issued_at).known();
                        }
                    }
                    None => events_open = false,
                },
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One rotation attempt. Returns whether it ended well (rotated, or found nothing to do).
    async fn rotate(&self, known: &mut Known, reason: &str) -> bool {
        tracing::info!(entity = %self.entity, reason, "secret rotation due");
        let _lock = match &self.lock_file {
            Some(path) => match lock::acquire(path, LOCK_WAIT).await {
                Ok(held) => Some(held),
                Err(e) => {
                    self.failed(&RotationError::Lock(e));
                    return false;
                }
            },
            None => None,
        };
        // Read again immediately before the reset: another process, or another site, may have reset it
        // moments ago. Ask the IAM, not our memory.
        let current = match self.rotator.read_current(&self.entity).await {
            Ok(current) => current,
            Err(e) => {
                known.retry_in = self.held_retry(&e);
                self.failed(&e);
                return false;
            }
        };
        self.note_read_expiry(known, current.expires_on);
        let stored = self.stored_secret().await;
        let before = stored.as_ref().map(fingerprint).unwrap_or_default();
        match recheck(
            self.role,
            SystemTime::now(),
            &before,
            &fingerprint(&current.secret),
            known.expiry,
            self.thresholds(known),
        ) {
            SiteAction::Reset(_) => {}
            SiteAction::Converge => {
                tracing::info!(entity = %self.entity, store = %before, iam = %fingerprint(&current.secret), "the IAM's current secret differs from the store's just before the reset (reset elsewhere moments ago); adopting it, no reset");
                known.in_grace = false;
                known.issued_at = None;
                return self
                    .adopt(
                        known,
                        current,
                        Some(before),
                        ConvergenceTrigger::BeforeReset,
                    )
                    .await;
            }
            SiteAction::Wait { .. } | SiteAction::Unknown => {
                tracing::info!(entity = %self.entity, "rotation no longer due after re-reading the IAM");
                known.in_grace = false;
                return true;
            }
        }
        match self.rotator.rotate(&self.entity, &self.sink).await {
            Ok(rotated) => {
                self.cell.replace(rotated.secret.clone());
                self.cell.report(|s| s.alert = None);
                self.note_granted(&rotated);
                self.rotated(RotationLabel::Ok);
                known.expiry = rotated.expires_on;
                known.granted_validity = rotated.granted_validity;
                known.in_grace = false;
                known.issued_at = Some(SystemTime::now());
                tracing::info!(entity = %self.entity, secret = %rotated.fingerprint, "secret rotated");
                true
            }
            Err(RotationError::Persist { rotated, error }) => {
                self.cell.replace(rotated.secret.clone());
                self.set_alert(Some(format!(
                    "a rotated secret is held only in memory: {error}"
                )));
                self.rotated(RotationLabel::PersistFailed);
                self.note_granted(&rotated);
                known.expiry = rotated.expires_on;
                known.granted_validity = rotated.granted_validity;
                known.in_grace = false;
                known.issued_at = Some(SystemTime::now());
                known.pending = Some(rotated.secret.clone());
                known.failures = 1;
                false
            }
            Err(e) => {
                known.retry_in = self.held_retry(&e);
                self.failed(&e);
                false
            }
        }
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

    /// How long to wait after a failed IAM read or rotation: what the error says (a held-back login is
    /// looked at again soon, since only a changed password file can lift it early), else the backoff.
    fn retry_delay(&self, error: &RotationError, failures: u32) -> Duration {
        self.held_retry(error).unwrap_or_else(|| backoff(failures))
    }

    fn held_retry(&self, error: &RotationError) -> Option<Duration> {
        match error {
            RotationError::Deferred { retry_in, .. } => Some(*retry_in),
            other => other
                .retry_in()
                .map(|wait| wait.clamp(Duration::from_secs(1), PASSWORD_WATCH)),
        }
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

    async fn retry_persist(&self, known: &mut Known) {
        let Some(secret) = known.pending.clone() else {
            return;
        };
        match self
            .rotator
            .persist(&self.entity, &self.sink, &secret)
            .await
        {
            Ok(stored) => {
                known.pending = None;
                known.failures = 0;
                self.cell.replace(stored);
                self.cell.report(|s| s.alert = None);
                self.rotated(RotationLabel::Ok);
                tracing::info!(entity = %self.entity, step = %RotationStep::Persist, outcome = %StepOutcome::Ok, sink = %self.sink.spec(), "secret rotation step: the rotated secret is stored now");
            }
            Err(error) => {
                known.failures += 1;
                self.set_alert(Some(format!(
                    "a rotated secret is held only in memory: {error}"
                )));
                tracing::error!(
                    entity = %self.entity,
                    step = %RotationStep::Persist,
                    outcome = %StepOutcome::Failed,
                    attempts = known.failures,
                    sink = %self.sink.spec(),
                    error = %error,
                    "secret rotation step: THE NEW SECRET IS ONLY IN MEMORY; a restart now would lose it (recover with `aa-token-broker secret read --output FILE`)"
                );
            }
        }
    }

    fn failed(&self, error: &RotationError) {
        self.rotated(error.kind());
        tracing::error!(entity = %self.entity, error = %error, "secret rotation failed; will retry");
    }
}

fn backoff(failures: u32) -> Duration {
    RETRY.delay(failures, fastrand::f64())
}
