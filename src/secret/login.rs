//! The entity's admin user: email and password (never logged), a user token cached until shortly before it
//! expires, and the limits on logging in.
//!
//! The IAM is Keycloak, whose brute-force protection locks a user out after repeated failed logins, and
//! this user is the only one who can reset the secret. So every login goes through
//! [`LoginRecord::decide`](super::policy::LoginRecord::decide): failures back off to an hour, a password the
//! IAM rejected is not sent again until the password file changes, and no more than ten logins start in
//! any hour. A held-back login fails fast with [`AdminError::Held`] and calls nobody.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use secrecy::SecretString;
use tokio::time::Instant;

use super::policy::{LoginDecision, LoginHold, LoginLimits, LoginRecord};
use super::recorder::{LoginOutcome, SecretRecorder};
use crate::entity::{SecretSource, fingerprint};
use crate::iam::{Endpoint, IamClient, IamError};

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

/// Logs in on demand, within the login limits, and reuses the user token while it has more than a minute
/// left.
pub struct AdminSession {
    iam: IamClient,
    credentials: AdminCredentials,
    cached: tokio::sync::Mutex<Option<(SecretString, Instant)>>,
    logins: Mutex<LoginRecord>,
    limits: LoginLimits,
    recorder: Arc<dyn SecretRecorder>,
}

/// Why the admin could not act.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdminError {
    #[error("admin password: {0}")]
    Password(#[from] crate::entity::SecretError),
    #[error("admin login failed: {0}")]
    Login(#[from] IamError),
    #[error("admin login held back ({}) for another {}s", .hold.as_str(), .retry_in.as_secs())]
    Held { hold: LoginHold, retry_in: Duration },
}

impl AdminError {
    /// How long before trying again is worth it, when the session knows.
    pub fn retry_in(&self) -> Option<Duration> {
        match self {
            AdminError::Held { retry_in, .. } => Some(*retry_in),
            _ => None,
        }
    }
}

const REUSE_MARGIN: Duration = Duration::from_secs(60);

impl AdminSession {
    pub fn new(
        iam: IamClient,
        credentials: AdminCredentials,
        recorder: Arc<dyn SecretRecorder>,
    ) -> Arc<Self> {
        Self::with_limits(iam, credentials, recorder, LoginLimits::default())
    }

    pub fn with_limits(
        iam: IamClient,
        credentials: AdminCredentials,
        recorder: Arc<dyn SecretRecorder>,
        limits: LoginLimits,
    ) -> Arc<Self> {
        Arc::new(Self {
            iam,
            credentials,
            cached: tokio::sync::Mutex::new(None),
            logins: Mutex::new(LoginRecord::default()),
            limits,
            recorder,
        })
    }

    pub fn iam(&self) -> &IamClient {
        &self.iam
    }

    fn logins(&self) -> std::sync::MutexGuard<'_, LoginRecord> {
        self.logins.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `none`, `ok`, `backing_off` or `credentials_rejected`, for `/readyz`.
    pub fn login_state(&self) -> &'static str {
        self.logins().state()
    }

    /// A user token valid for at least another minute: the cached one, or a new login if the limits allow.
    pub async fn user_token(&self) -> Result<SecretString, AdminError> {
        let mut cached = self.cached.lock().await;
        if let Some((token, usable_until)) = cached.as_ref()
            && Instant::now() < *usable_until
        {
            return Ok(token.clone());
        }
        // Read every time: a corrected password file is picked up without a restart.
        let password = self.credentials.password.load().await?;
        let password_fp = fingerprint(&password);
        let now = Instant::now();
        {
            let mut logins = self.logins();
            if let LoginDecision::Wait { until, hold } =
                logins.decide(&self.limits, now, &password_fp)
            {
                drop(logins);
                self.recorder.admin_login(LoginOutcome::Held);
                return Err(AdminError::Held {
                    hold,
                    retry_in: until.saturating_duration_since(now),
                });
            }
            logins.started(now);
        }
        match self
            .iam
            .user_token(&self.credentials.email, &password)
            .await
        {
            Ok(grant) => {
                self.logins().succeeded();
                self.recorder.admin_login(LoginOutcome::Ok);
                let lifetime = grant
                    .expires_in
                    .unwrap_or(Duration::from_secs(300))
                    .min(Duration::from_secs(86_400));
                let usable_until =
                    Instant::from_std(grant.received_at) + lifetime.saturating_sub(REUSE_MARGIN);
                tracing::info!(admin = %self.credentials.email, txn_id = grant.txn_id.as_deref().unwrap_or("-"), "admin user token obtained");
                *cached = Some((grant.access_token.clone(), usable_until));
                Ok(grant.access_token)
            }
            Err(e) => {
                let rejected = rejects_credentials(&e);
                let failures = {
                    let mut logins = self.logins();
                    logins.failed(
                        &self.limits,
                        now,
                        rejected.then(|| password_fp.clone()),
                        fastrand::f64(),
                    );
                    logins.consecutive_failures
                };
                if rejected {
                    self.recorder.admin_login(LoginOutcome::Rejected);
                    tracing::error!(admin = %self.credentials.email, error = %e, "the IAM rejected the admin credentials; no login with this password again until the password file changes (or for an hour), so the account is not locked out");
                } else {
                    self.recorder.admin_login(LoginOutcome::Failed);
                    tracing::warn!(admin = %self.credentials.email, consecutive_failures = failures, error = %e, "admin login failed; backing off");
                }
                Err(AdminError::Login(e))
            }
        }
    }

    /// A user token from a login made now. The IAM caps a new secret's validity by the admin token's
    /// remaining life, so a reset is made with a token fresh from login.
    pub async fn fresh_user_token(&self) -> Result<SecretString, AdminError> {
        self.forget().await;
        self.user_token().await
    }

    /// Drops the cached token (after the IAM rejected it).
    pub async fn forget(&self) {
        *self.cached.lock().await = None;
    }
}

/// The IAM refused the credentials themselves: 401 "Invalid username/password or password is expired",
/// or 400 "User Id/Password is missing".
fn rejects_credentials(error: &IamError) -> bool {
    matches!(
        error,
        IamError::Rejected {
            endpoint: Endpoint::UserToken,
            status: 400 | 401,
            ..
        }
    )
}
