//! What the token path hands to callers and reports about each entity: a [`Served`] token or a
//! [`TokenError`], and the [`EntityStatus`] that `/readyz` and `/metrics` render.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::Token;
use crate::entity::EntityId;
use crate::secret::SecretStatus;

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
