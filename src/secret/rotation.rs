//! Rotation in the one order that cannot lock the entity out, and the read-back that heals without a reset.
//!
//! 1. user token (admin login, cached);
//! 2. reset (`secretExpiryDays`) — from here the IAM knows only the new secret;
//! 3. **persist** the new secret through the sink — a 409 from a Kubernetes Secret is resolved by reading the
//!    IAM's current secret back and writing that, never by overwriting blindly;
//! 4. verify by minting an entity token with the new secret;
//! 5. the caller switches to it.
//!
//! If step 3 fails, [`RotationError::Persist`] carries the new secret back to the caller, who keeps it in
//! memory, keeps retrying and reports not-ready. Every step logs one line with the entity, the `txnId` and
//! the outcome — never the secret, only its fingerprint.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};

use super::admin::{AdminError, AdminSession};
use super::sink::{SecretSink, SinkError};
use crate::entity::{EntityId, fingerprint};
use crate::iam::{IamError, SecretGrant};

/// How many times a 409 is resolved by reading back before giving up.
const CONFLICT_RETRIES: usize = 3;

/// A secret the IAM issued on reset.
#[derive(Clone)]
pub struct Rotated {
    pub secret: SecretString,
    pub expires_on: Option<SystemTime>,
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
    #[error("{0}")]
    Lock(String),
}

impl RotationError {
    /// Low-cardinality label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RotationError::Admin(_) => "admin_login_failed",
            RotationError::Reset(_) => "reset_failed",
            RotationError::Read(_) => "read_failed",
            RotationError::Persist { .. } => "persist_failed",
            RotationError::Verify(_) => "verify_failed",
            RotationError::Lock(_) => "lock_failed",
        }
    }
}

/// Performs admin operations for entities.
pub struct Rotator {
    admin: Arc<AdminSession>,
    expiry_days: u32,
}

impl Rotator {
    pub fn new(admin: Arc<AdminSession>, expiry_days: u32) -> Self {
        Self { admin, expiry_days }
    }

    /// `secret read`, re-logging in once if the cached user token was rejected.
    pub async fn read_current(&self, entity: &EntityId) -> Result<SecretGrant, RotationError> {
        let token = self.admin.user_token().await?;
        match self.admin.iam().read_secret(&token, entity).await {
            Err(e) if e.is_unauthorized() => {
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

    /// Steps 1–4. On success the new secret is durable in `sink` and mints tokens.
    pub async fn rotate(
        &self,
        entity: &EntityId,
        sink: &SecretSink,
    ) -> Result<Rotated, RotationError> {
        let token = self.admin.user_token().await.inspect_err(|e| {
            tracing::error!(entity = %entity, step = "user_token", outcome = "failed", error = %e, "secret rotation step");
        })?;
        let requested = SystemTime::now();
        let grant = self
            .admin
            .iam()
            .reset_secret(&token, entity, Some(self.expiry_days))
            .await
            .map_err(|e| {
                tracing::error!(entity = %entity, step = "reset", outcome = "failed", error = %e, "secret rotation step");
                RotationError::Reset(e)
            })?;
        let rotated = Rotated {
            fingerprint: fingerprint(&grant.secret),
            granted_validity: grant
                .expires_on
                .and_then(|at| at.duration_since(requested).ok()),
            expires_on: grant.expires_on,
            txn_id: grant.txn_id.clone(),
            secret: grant.secret,
        };
        tracing::info!(
            entity = %entity,
            step = "reset",
            outcome = "ok",
            txn_id = rotated.txn_id.as_deref().unwrap_or("-"),
            secret = %rotated.fingerprint,
            expires_on = %rotated.expires_on.map(crate::timefmt::rfc3339_seconds).unwrap_or_default(),
            iam_message = grant.message.as_deref().unwrap_or(""),
            "secret rotation step"
        );
        let stored = match self.persist(entity, sink, &rotated.secret).await {
            Ok(stored) => stored,
            Err(error) => {
                tracing::error!(
                    entity = %entity,
                    step = "persist",
                    outcome = "failed",
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
        tracing::info!(entity = %entity, step = "persist", outcome = "ok", sink = %sink.spec(), secret = %fingerprint(&stored), "secret rotation step");
        let rotated = Rotated {
            fingerprint: fingerprint(&stored),
            secret: stored,
            ..rotated
        };
        let verified = self.admin.iam().entity_token(entity, &rotated.secret).await.map_err(|e| {
            tracing::error!(entity = %entity, step = "verify", outcome = "failed", error = %e, "secret rotation step");
            RotationError::Verify(e)
        })?;
        tracing::info!(
            entity = %entity,
            step = "verify",
            outcome = "ok",
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
        let mut value = secret.clone();
        let mut attempt = 0;
        loop {
            match sink.persist(&value).await {
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
}
