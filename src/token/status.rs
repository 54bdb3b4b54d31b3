//! What the token path hands to callers and reports about each entity: a [`Served`] token or a
//! [`TokenError`], the [`FetchError`] an IAM call ended with (kept in the slot as the entity's last error),
//! and the [`EntityStatus`] that `/readyz` and `/metrics` render.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{Token, TokenRejected};
use crate::entity::{EntityId, SecretError};
use crate::iam::IamError;
use crate::iam::client::ClientBuildError;
use crate::secret::SecretStatus;
use crate::upstream::FlightError;

/// A token handed to a caller.
#[derive(Debug, Clone)]
pub struct Served {
    pub token: Arc<Token>,
    /// The last refresh attempt failed; the token is still valid but the broker is retrying.
    pub stale: bool,
}

/// How a token request ended, for the request counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    Served,
    Stale,
    Unavailable,
}

/// Why a caller got no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no such entity is configured")]
    UnknownEntity,
    /// No valid token; `reason` describes the last upstream failure, without secrets.
    #[error("no valid token: {reason}")]
    Unavailable {
        reason: String,
        retry_after: Duration,
    },
}

/// Why an upstream fetch produced no token. Cloneable so that one failure can be shared by every waiter
/// and kept as the entity's "last error" for `/readyz` and 503 bodies. Never contains a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Iam(#[from] IamError),
    #[error("IAM returned an unusable token: {0}")]
    Rejected(#[from] TokenRejected),
    #[error("IAM returned the token already held; treated as not refreshed")]
    SameToken,
    #[error(transparent)]
    Client(#[from] ClientBuildError),
    #[error("fetch task ended abnormally: {0}")]
    Internal(String),
    /// The shared fetch gave no token in time, or ended abnormally (see [`crate::upstream::Flight`]).
    #[error(transparent)]
    Flight(#[from] FlightError),
}

impl FetchError {
    /// Low-cardinality label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Secret(_) => "secret_unreadable",
            FetchError::Iam(e) => e.kind(),
            FetchError::Rejected(_) => "rejected_token",
            FetchError::SameToken => "same_token",
            FetchError::Client(_) => "client",
            FetchError::Internal(_) | FetchError::Flight(_) => "internal",
        }
    }

    /// How long the IAM asked callers to wait, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Iam(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// One entity's view for `/readyz` and `/metrics`.
#[derive(Debug, Clone)]
pub struct EntityStatus {
    pub entity_id: EntityId,
    /// A token may be handed out now and the secret lifecycle raises no alert.
    pub ready: bool,
    pub stale: bool,
    pub expires_in: Option<u64>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub clock_skew_seconds: Option<f64>,
    /// The secret's expiry: as the IAM last reported it, else the newest token's `secret-expiry-ts`.
    pub secret_expires_at: Option<SystemTime>,
    /// The last token response carried the IAM's grace-period warning.
    pub secret_in_grace: bool,
    pub iam_message: Option<String>,
    /// What the secret lifecycle reports.
    pub secret: SecretStatus,
    /// The fingerprint of the secret the last fetch used (`sha256:` and 8 hex digits): what
    /// `aa-token-broker secret fingerprint` computes from the expected secret.
    pub secret_fingerprint: Option<String>,
}

impl EntityStatus {
    /// What the newest token alone says about an entity, with no failure and no secret-lifecycle news.
    pub fn of_token(entity_id: EntityId, latest: Option<&Token>, now: Instant) -> EntityStatus {
        let valid = latest.filter(|t| t.servable(now));
        EntityStatus {
            entity_id,
            ready: valid.is_some(),
            stale: false,
            expires_in: valid.map(|t| t.seconds_left(now)),
            consecutive_failures: 0,
            last_error: None,
            clock_skew_seconds: latest.and_then(|t| t.clock_skew_seconds),
            secret_expires_at: latest.and_then(|t| t.secret_expires_at),
            secret_in_grace: latest.is_some_and(|t| t.iam_message.is_some()),
            iam_message: latest.and_then(|t| t.iam_message.clone()),
            secret: SecretStatus::default(),
            secret_fingerprint: None,
        }
    }

    /// Adds what the secret lifecycle reports: an alert makes the entity not ready, and an expiry the
    /// IAM reported takes precedence over the token's hint.
    pub fn with_secret(mut self, secret: SecretStatus) -> EntityStatus {
        self.ready &= secret.alert.is_none();
        self.secret_expires_at = secret.expires_at.or(self.secret_expires_at);
        self.secret = secret;
        self
    }
}
