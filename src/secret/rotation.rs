//! Rotation in the one order that cannot lock the entity out, and the read-back that heals without a reset.
//!
//! 1. the reset bound: no reset within the minimum interval of the last one ([`super::ledger`], kept with
//!    the store: beside a secret file, or on the Kubernetes Secret itself);
//! 2. user token from a fresh login (the IAM caps the new secret's validity by the admin token's life);
//! 3. the reset is recorded in the ledger — no record, no reset (on a Secret, compare-and-swap against
//!    the version the bound was checked on, so of two rotators of one Secret only one resets);
//! 4. reset (`secretExpiryDays`) — from here the IAM knows only the new secret;
//! 5. **persist** the new secret through the sink, before anything else touches the answer (no logging,
//!    metrics or date handling first; a Secret gets the completed record in the same update) — a 409 from
//!    a Kubernetes Secret is resolved by reading the IAM's current secret back and writing that, never by
//!    overwriting blindly;
//! 6. verify by minting an entity token with the new secret;
//! 7. the caller switches to it.
//!
//! If step 5 fails, [`RotationError::Persist`] carries the new secret back to the caller, who keeps it in
//! memory, keeps retrying and reports not-ready. [`Rotator::converge`] is the other way a store changes:
//! the IAM's current secret written to it, with no reset (another site reset it, or a backup was restored). Every step logs one line with the entity, the `txnId` and
//! the outcome — never the secret, only its fingerprint.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};

use super::ledger::{LedgerError, ResetLedger, ResetRecord};
use super::lock::LockError;
use super::login::{AdminError, AdminSession};
use super::policy::{Expiry, ExpirySource, check_expiry, reset_wait};
use super::recorder::{RotationLabel, RotationStep, StepOutcome};
use super::sink::{SecretSink, SinkError};
use crate::entity::{EntityId, fingerprint};
use crate::iam::{IamError, SecretGrant};

/// How many times a 409 is resolved by reading back before giving up.
const CONFLICT_RETRIES: usize = 3;
/// How many times a convergence writes the IAM's secret, when the IAM's secret changed again while it did.
const CONVERGE_ROUNDS: usize = 3;

/// The IAM's current secret, now in the store.
pub struct Converged {
    pub secret: SecretString,
    pub expires_on: Option<SystemTime>,
}

/// A secret the IAM issued on reset.
#[derive(Clone)]
pub struct Rotated {
    pub secret: SecretString,
    /// The granted expiry, when it is believable.
    pub expires_on: Option<SystemTime>,
    /// A granted expiry that cannot be right (in the past, or beyond 181 days): kept for the alert only.
    pub implausible_expiry: Option<SystemTime>,
    /// How long the IAM made it valid for (it may grant less than asked).
    pub granted_validity: Option<Duration>,
    pub txn_id: Option<String>,
    pub fingerprint: String,
}

impl std::fmt::Debug for Rotated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotated")
            .field("fingerprint", &self.fingerprint)
            .field("expires_on", &self.expires_on)
            .field("txn_id", &self.txn_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RotationError {
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("secret reset failed: {0}")]
    Reset(IamError),
    #[error("secret read failed: {0}")]
    Read(IamError),
    #[error("the secret was reset but could not be stored: {error}")]
    Persist {
        rotated: Box<Rotated>,
        error: SinkError,
    },
    #[error("the new secret was stored but minting a token with it failed: {0}")]
    Verify(IamError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("no reset for another {}s: at most one per {}s (the last was recorded in {})", .retry_in.as_secs(), .interval.as_secs(), .ledger)]
    Deferred {
        retry_in: Duration,
        interval: Duration,
        ledger: String,
    },
    #[error("the reset cannot be recorded, so it is not made: {0}")]
    Ledger(#[from] LedgerError),
    #[error("the IAM's current secret could not be stored: {0}")]
    Converge(String),
}

impl RotationError {
    /// Low-cardinality label for metrics.
    pub fn kind(&self) -> RotationLabel {
        match self {
            RotationError::Admin(_) => RotationLabel::AdminLoginFailed,
            RotationError::Reset(_) => RotationLabel::ResetFailed,
            RotationError::Read(_) => RotationLabel::ReadFailed,
            RotationError::Persist { .. } => RotationLabel::PersistFailed,
            RotationError::Verify(_) => RotationLabel::VerifyFailed,
            RotationError::Lock(_) => RotationLabel::LockFailed,
            RotationError::Deferred { .. } => RotationLabel::ResetDeferred,
            RotationError::Ledger(e) if e.contended => RotationLabel::ResetContended,
            RotationError::Ledger(_) => RotationLabel::LedgerFailed,
            RotationError::Converge(_) => RotationLabel::ConvergeFailed,
        }
    }

    /// How long before another attempt is worth it, when the error says.
    pub fn retry_in(&self) -> Option<Duration> {
        match self {
            RotationError::Admin(e) => e.retry_in(),
            RotationError::Deferred { retry_in, .. } => Some(*retry_in),
            _ => None,
        }
    }
}

/// The bound on resets: the least interval between two, where records live for sinks that keep none of
/// their own (`exec:`), and the site named in each record.
#[derive(Debug, Clone)]
pub struct ResetBound {
    pub min_interval: Duration,
    pub state_dir: PathBuf,
    pub site: String,
}

/// Performs admin operations for entities.
pub struct Rotator {
    admin: Arc<AdminSession>,
    expiry_days: u32,
    bound: ResetBound,
}

impl Rotator {
    pub fn new(admin: Arc<AdminSession>, expiry_days: u32, bound: ResetBound) -> Self {
        Self {
            admin,
            expiry_days,
            bound,
        }
    }

    pub fn admin(&self) -> &AdminSession {
        &self.admin
    }

    /// `secret read`, logging in again once if the IAM rejected the cached user token itself (not when
    /// it says the user does not administer the entity: a new login cannot cure that).
    pub async fn read_current(&self, entity: &EntityId) -> Result<SecretGrant, RotationError> {
        let token = self.admin.user_token().await?;
        match self.admin.iam().read_secret(&token, entity).await {
            Err(e) if e.is_bad_user_token() => {
                self.admin.forget().await;
                let token = self.admin.user_token().await?;
                self.admin
                    .iam()
                    .read_secret(&token, entity)
                    .await
                    .map_err(RotationError::Read)
            }
            other => other.map_err(RotationError::Read),
        }
    }

    /// Steps 1–6, within the reset bound. On success the new secret is durable in `sink` and mints tokens.
    pub async fn rotate(
        &self,
        entity: &EntityId,
        sink: &SecretSink,
    ) -> Result<Rotated, RotationError> {
        self.rotate_with(entity, sink, true).await
    }

    /// Steps 1–6; `bounded: false` skips the reset bound (an operator's explicit `--force`), though the
    /// reset is still recorded so that automatic rotation keeps its distance.
    pub async fn rotate_with(
        &self,
        entity: &EntityId,
        sink: &SecretSink,
        bounded: bool,
    ) -> Result<Rotated, RotationError> {
        let ledger = ResetLedger::for_sink(sink, entity, &self.bound.state_dir);
        let now = SystemTime::now();
        let ledgered = ledger.read().await.map_err(RotationError::Ledger)?;
        if bounded
            && let Some(retry_in) = reset_wait(
                now,
                ledgered.last.as_ref().map(|r| r.at),
                self.bound.min_interval,
            )
        {
            return Err(RotationError::Deferred {
                retry_in,
                interval: self.bound.min_interval,
                ledger: ledger.place(),
            });
        }
        let token = self.admin.fresh_user_token().await.inspect_err(|e| {
            tracing::error!(entity = %entity, step = %RotationStep::UserToken, outcome = %StepOutcome::Failed, error = %e, "secret rotation step");
        })?;
        let claim = ResetRecord {
            at: now,
            secret: None,
            site: Some(self.bound.site.clone()),
        };
        ledger
            .claim(&claim, ledgered.version.as_deref())
            .await
            .map_err(RotationError::Ledger)?;
        let grant = self
            .admin
            .iam()
            .reset_secret(&token, entity, Some(self.expiry_days))
            .await
            .map_err(|e| {
                tracing::error!(entity = %entity, step = %RotationStep::Reset, outcome = %StepOutcome::Failed, error = %e, "secret rotation step");
                RotationError::Reset(e)
            })?;
        // The completed record goes to a Secret in the same update as the secret itself.
        let record = ResetRecord {
            secret: Some(fingerprint(&grant.secret)),
            ..claim
        };
        // The IAM has switched to the new secret: store it before anything else can go wrong.
        let persisted = self
            .persist_noted(entity, sink, &grant.secret, ledger.note(&record).as_deref())
            .await;
        let (expires_on, implausible_expiry) =
            match check_expiry(SystemTime::now(), grant.expires_on, ExpirySource::Granted) {
                Expiry::Known(at) => (Some(at), None),
                Expiry::Unknown => (None, None),
                Expiry::Implausible(at) => (None, Some(at)),
            };
        let rotated = Rotated {
            fingerprint: fingerprint(&grant.secret),
            granted_validity: expires_on.and_then(|at| at.duration_since(now).ok()),
            expires_on,
            implausible_expiry,
            txn_id: grant.txn_id.clone(),
            secret: grant.secret,
        };
        tracing::info!(
            entity = %entity,
            step = %RotationStep::Reset,
            outcome = %StepOutcome::Ok,
            txn_id = rotated.txn_id.as_deref().unwrap_or("-"),
            secret = %rotated.fingerprint,
            expires_on = %rotated.expires_on.map(crate::timefmt::rfc3339_seconds).unwrap_or_default(),
            iam_message = grant.message.as_deref().unwrap_or(""),
            "secret rotation step"
        );
        if let Some(at) = rotated.implausible_expiry {
            tracing::error!(
                entity = %entity,
                granted_expiry = %crate::timefmt::rfc3339_seconds(at),
                "the IAM granted the new secret an expiry that cannot be right (in the past, or beyond 181 days); the secret is kept and its expiry treated as unknown, so this does not cause another reset"
            );
        }
        let stored = match persisted {
            Ok(stored) => stored,
            Err(error) => {
                tracing::error!(
                    entity = %entity,
                    step = %RotationStep::Persist,
                    outcome = %StepOutcome::Failed,
                    sink = %sink.spec(),
                    secret = %rotated.fingerprint,
                    error = %error,
                    "secret rotation step: THE NEW SECRET IS ONLY IN MEMORY; the IAM has revoked the old one. Fix the sink; retrying"
                );
                return Err(RotationError::Persist {
                    rotated: Box::new(rotated),
                    error,
                });
            }
        };
        tracing::info!(entity = %entity, step = %RotationStep::Persist, outcome = %StepOutcome::Ok, sink = %sink.spec(), secret = %fingerprint(&stored), "secret rotation step");
        if let Err(e) = ledger.complete(&record) {
            tracing::warn!(entity = %entity, error = %e, "the reset record could not be completed with the new secret's fingerprint (its time still bounds the next reset)");
        }
        let rotated = Rotated {
            fingerprint: fingerprint(&stored),
            secret: stored,
            ..rotated
        };
        let verified = self.admin.iam().entity_token(entity, &rotated.secret).await.map_err(|e| {
            tracing::error!(entity = %entity, step = %RotationStep::Verify, outcome = %StepOutcome::Failed, error = %e, "secret rotation step");
            RotationError::Verify(e)
        })?;
        tracing::info!(
            entity = %entity,
            step = %RotationStep::Verify,
            outcome = %StepOutcome::Ok,
            txn_id = verified.txn_id.as_deref().unwrap_or("-"),
            "secret rotation step"
        );
        Ok(rotated)
    }

    /// Stores `secret`, resolving Kubernetes 409 conflicts by writing the IAM's current secret. Returns what
    /// was stored (the IAM's current secret after a conflict, normally `secret` itself).
    pub async fn persist(
        &self,
        entity: &EntityId,
        sink: &SecretSink,
        secret: &SecretString,
    ) -> Result<SecretString, SinkError> {
        self.persist_noted(entity, sink, secret, None).await
    }

    /// [`Rotator::persist`], with a Secret's reset record annotation written in the same update.
    async fn persist_noted(
        &self,
        entity: &EntityId,
        sink: &SecretSink,
        secret: &SecretString,
        note: Option<&str>,
    ) -> Result<SecretString, SinkError> {
        let mut value = secret.clone();
        let mut attempt = 0;
        loop {
            match sink.persist_noted(&value, note).await {
                Ok(()) => return Ok(value),
                Err(conflict @ SinkError::Conflict { .. }) if attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    tracing::warn!(entity = %entity, error = %conflict, "another writer changed the stored secret; reading the IAM's current secret and storing that");
                    match self.read_current(entity).await {
                        Ok(current) => {
                            if current.secret.expose_secret() != value.expose_secret() {
                                tracing::warn!(entity = %entity, ours = %fingerprint(&value), current = %fingerprint(&current.secret), "the IAM's current secret is not the one this process reset");
                            }
                            value = current.secret;
                        }
                        Err(e) => {
                            tracing::warn!(entity = %entity, error = %e, "read-back after a conflict failed");
                            return Err(conflict);
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes the IAM's current secret to the store — a *convergence*: no reset — then reads the IAM
    /// again, so a reset made elsewhere while it wrote does not leave the store holding a secret revoked
    /// seconds after it was written. Returns what the store holds now.
    pub async fn converge(
        &self,
        entity: &EntityId,
        sink: &SecretSink,
        current: SecretGrant,
    ) -> Result<Converged, RotationError> {
        let mut secret = current.secret;
        for _ in 0..CONVERGE_ROUNDS {
            let stored = self
                .persist(entity, sink, &secret)
                .await
                .map_err(|e| RotationError::Converge(e.to_string()))?;
            let again = self.read_current(entity).await?;
            if again.secret.expose_secret() == stored.expose_secret() {
                return Ok(Converged {
                    secret: stored,
                    expires_on: again.expires_on,
                });
            }
            tracing::warn!(entity = %entity, stored = %fingerprint(&stored), current = %fingerprint(&again.secret), "the IAM's secret changed again while it was being stored; storing the newer one");
            secret = again.secret;
        }
        Err(RotationError::Converge(format!(
            "the IAM's secret changed {CONVERGE_ROUNDS} times while it was being stored"
        )))
    }
}
