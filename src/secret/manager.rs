//! The per-entity task `serve` runs when admin credentials are configured.
//!
//! It knows the secret's expiry (from `secret read` at start and every `check_interval`, and from the
//! `secret-expiry-ts` claim of each token), rotates when [`super::policy::decide`] says so, and heals:
//! - **rejected secret** (the IAM answers 401): read the IAM's current secret back and store it — this also
//!   recovers from a crash between reset and persist. It never resets in that case;
//! - **persist failed** after a reset: keep the new secret in memory (the broker uses it), report the
//!   entity not ready, log an error that should page someone, and retry the sink with backoff;
//! - **another process rotated** (several processes sharing one secret file): the file lock serialises
//!   them, and whoever gets it second re-reads the IAM and finds nothing to do.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};

use super::policy::{RotationDecision, decide};
use super::rotation::{RotationError, Rotator};
use super::sink::{SecretSink, SinkSpec};
use super::{RotationSettings, lock};
use crate::entity::{EntityId, fingerprint};
use crate::token::broker::{Broker, SecretEvent};

/// How long to wait for another process's rotation before giving up this turn.
const LOCK_WAIT: Duration = Duration::from_secs(60);
/// Least time between two read-back recoveries.
const RECOVERY_SPACING: Duration = Duration::from_secs(30);
/// Retry delays after a failed step: 5 s doubling to 5 min.
const RETRY_BASE: Duration = Duration::from_secs(5);
const RETRY_CAP: Duration = Duration::from_secs(300);

/// Manages one entity's secret.
pub struct SecretManager {
    entity: EntityId,
    broker: Broker,
    rotator: Arc<Rotator>,
    sink: SecretSink,
    lock_file: Option<PathBuf>,
    rotate_before: Duration,
    check_interval: Duration,
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
}

impl SecretManager {
    pub fn new(
        entity: EntityId,
        broker: Broker,
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
            broker,
            rotator,
            sink,
            lock_file,
            rotate_before: settings.rotate_before,
            check_interval: settings.check_interval,
        }
    }

    pub fn entity(&self) -> &EntityId {
        &self.entity
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(
        self,
        mut events: mpsc::Receiver<SecretEvent>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut known = Known::default();
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
                next_check = match self.rotator.read_current(&self.entity).await {
                    Ok(current) => {
                        known.expiry = current.expires_on;
                        self.broker
                            .note_secret_expiry(&self.entity, current.expires_on);
                        now + self.check_interval
                    }
                    Err(e) => {
                        tracing::warn!(entity = %self.entity, error = %e, "cannot read the secret's expiry");
                        now + backoff(1).min(self.check_interval)
                    }
                };
            }
            if known.pending.is_none() && now >= retry_at {
                match decide(
                    SystemTime::now(),
                    known.expiry,
                    known.in_grace,
                    self.rotate_before,
                    known.granted_validity,
                    self.check_interval,
                ) {
                    RotationDecision::Due(reason) => {
                        if self.rotate(&mut known, reason).await {
                            known.failures = 0;
                        } else {
                            known.failures += 1;
                        }
                        retry_at = Instant::now()
                            + if known.failures > 0 {
                                backoff(known.failures)
                            } else {
                                Duration::ZERO
                            };
                        continue;
                    }
                    RotationDecision::NotDue { check_again_in } => {
                        next_check = next_check.min(Instant::now() + check_again_in);
                    }
                    RotationDecision::Unknown => {}
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
                            known.expiry = Some(at);
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
        // Another process may have rotated while we waited for the lock: ask the IAM, not our memory.
        let current = match self.rotator.read_current(&self.entity).await {
            Ok(current) => current,
            Err(e) => {
                self.failed(&e);
                return false;
            }
        };
        known.expiry = current.expires_on;
        self.broker
            .note_secret_expiry(&self.entity, current.expires_on);
        let ours = self
            .broker
            .current_secret(&self.entity)
            .await
            .and_then(Result::ok);
        if ours.as_ref().map(|s| s.expose_secret()) != Some(current.secret.expose_secret()) {
            tracing::info!(entity = %self.entity, current = %fingerprint(&current.secret), "the IAM's current secret differs from ours (rotated elsewhere); adopting it");
            known.in_grace = false;
            return self.adopt(current.secret).await;
        }
        if !matches!(
            decide(
                SystemTime::now(),
                current.expires_on,
                false,
                self.rotate_before,
                known.granted_validity,
                self.check_interval
            ),
            RotationDecision::Due(_)
        ) {
            tracing::info!(entity = %self.entity, "rotation no longer due after re-reading the IAM");
            known.in_grace = false;
            return true;
        }
        match self.rotator.rotate(&self.entity, &self.sink).await {
            Ok(rotated) => {
                self.broker
                    .set_secret_override(&self.entity, Some(rotated.secret.clone()));
                self.broker.set_secret_alert(&self.entity, None);
                self.broker
                    .note_secret_expiry(&self.entity, rotated.expires_on);
                self.broker.note_rotation(&self.entity, "ok");
                known.expiry = rotated.expires_on;
                known.granted_validity = rotated.granted_validity;
                known.in_grace = false;
                tracing::info!(entity = %self.entity, secret = %rotated.fingerprint, "secret rotated");
                self.refresh_token().await;
                true
            }
            Err(RotationError::Persist { rotated, error }) => {
                self.broker
                    .set_secret_override(&self.entity, Some(rotated.secret.clone()));
                self.broker.set_secret_alert(
                    &self.entity,
                    Some(format!("a rotated secret is held only in memory: {error}")),
                );
                self.broker.note_rotation(&self.entity, "persist_failed");
                known.expiry = rotated.expires_on;
                known.granted_validity = rotated.granted_validity;
                known.in_grace = false;
                known.pending = Some(rotated.secret.clone());
                known.failures = 1;
                self.refresh_token().await;
                false
            }
            Err(e) => {
                self.failed(&e);
                false
            }
        }
    }

    /// Stores the IAM's current secret and switches to it (a heal, not a reset).
    async fn adopt(&self, secret: SecretString) -> bool {
        self.broker
            .set_secret_override(&self.entity, Some(secret.clone()));
        match self
            .rotator
            .persist(&self.entity, &self.sink, &secret)
            .await
        {
            Ok(_) => {
                self.broker.set_secret_alert(&self.entity, None);
                tracing::info!(entity = %self.entity, secret = %fingerprint(&secret), sink = %self.sink.spec(), "stored the IAM's current secret");
                self.refresh_token().await;
                true
            }
            Err(error) => {
                tracing::error!(entity = %self.entity, sink = %self.sink.spec(), error = %error, "cannot store the IAM's current secret; using it from memory");
                self.broker.set_secret_alert(
                    &self.entity,
                    Some(format!(
                        "the current secret is held only in memory: {error}"
                    )),
                );
                self.refresh_token().await;
                false
            }
        }
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
        known.expiry = current.expires_on;
        self.broker
            .note_secret_expiry(&self.entity, current.expires_on);
        let ours = self
            .broker
            .current_secret(&self.entity)
            .await
            .and_then(Result::ok);
        if ours.as_ref().map(|s| s.expose_secret()) == Some(current.secret.expose_secret()) {
            tracing::warn!(entity = %self.entity, "the IAM rejected the secret it reports as current (expired past its grace period?)");
            return;
        }
        tracing::warn!(entity = %self.entity, current = %fingerprint(&current.secret), "the IAM rejected our secret; recovering the current one by reading it back (no reset)");
        if self.adopt(current.secret).await {
            self.broker.note_rotation(&self.entity, "recovered");
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
                self.broker.set_secret_override(&self.entity, Some(stored));
                self.broker.set_secret_alert(&self.entity, None);
                self.broker.note_rotation(&self.entity, "ok");
                tracing::info!(entity = %self.entity, step = "persist", outcome = "ok", sink = %self.sink.spec(), "secret rotation step: the rotated secret is stored now");
            }
            Err(error) => {
                known.failures += 1;
                self.broker.set_secret_alert(
                    &self.entity,
                    Some(format!("a rotated secret is held only in memory: {error}")),
                );
                tracing::error!(
                    entity = %self.entity,
                    step = "persist",
                    outcome = "failed",
                    attempts = known.failures,
                    sink = %self.sink.spec(),
                    error = %error,
                    "secret rotation step: THE NEW SECRET IS ONLY IN MEMORY; a restart now would lose it (recover with `aa-token-broker secret read --output FILE`)"
                );
            }
        }
    }

    fn failed(&self, error: &RotationError) {
        self.broker.note_rotation(&self.entity, error.kind());
        tracing::error!(entity = %self.entity, error = %error, "secret rotation failed; will retry");
    }

    async fn refresh_token(&self) {
        if let Err(e) = self.broker.refresh_now(&self.entity).await {
            tracing::warn!(entity = %self.entity, error = %e, "token refresh after a secret change failed");
        }
    }
}

fn backoff(failures: u32) -> Duration {
    RETRY_BASE
        .saturating_mul(1u32 << failures.saturating_sub(1).min(10))
        .min(RETRY_CAP)
}
