//! The entity's admin user: email and password (never logged), and a user token cached until shortly
//! before it expires, so a rotation does not log in twice.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tokio::time::Instant;

use crate::entity::SecretSource;
use crate::iam::{IamClient, IamError};

/// The admin user's credentials. The password comes from a file (preferred) or a variable.
#[derive(Clone)]
pub struct AdminCredentials {
    pub email: String,
    pub password: SecretSource,
}

impl fmt::Debug for AdminCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminCredentials")
            .field("email", &self.email)
            .field("password", &self.password)
            .finish()
    }
}

/// Logs in on demand and reuses the user token while it has more than a minute left.
pub struct AdminSession {
    iam: IamClient,
    credentials: AdminCredentials,
    cached: tokio::sync::Mutex<Option<(SecretString, Instant)>>,
}

/// Why the admin could not act.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdminError {
    #[error("admin password: {0}")]
    Password(#[from] crate::entity::SecretError),
    #[error("admin login failed: {0}")]
    Login(#[from] IamError),
}

const REUSE_MARGIN: Duration = Duration::from_secs(60);

impl AdminSession {
    pub fn new(iam: IamClient, credentials: AdminCredentials) -> Arc<Self> {
        Arc::new(Self {
            iam,
            credentials,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    pub fn iam(&self) -> &IamClient {
        &self.iam
    }

    /// A user token valid for at least another minute.
    pub async fn user_token(&self) -> Result<SecretString, AdminError> {
        let mut cached = self.cached.lock().await;
        if let Some((token, usable_until)) = cached.as_ref()
            && Instant::now() < *usable_until
        {
            return Ok(token.clone());
        }
        let password = self.credentials.password.load().await?;
        let grant = self
            .iam
            .user_token(&self.credentials.email, &password)
            .await?;
        let lifetime = grant.expires_in.unwrap_or(Duration::from_secs(300));
        let usable_until =
            Instant::from_std(grant.received_at) + lifetime.saturating_sub(REUSE_MARGIN);
        tracing::info!(admin = %self.credentials.email, txn_id = grant.txn_id.as_deref().unwrap_or("-"), "admin user token obtained");
        *cached = Some((grant.access_token.clone(), usable_until));
        Ok(grant.access_token)
    }

    /// Drops the cached token (after the IAM rejected it).
    pub async fn forget(&self) {
        *self.cached.lock().await = None;
    }
}
