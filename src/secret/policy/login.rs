//! The admin-login limits: failures back off exponentially to an hour, a rejected password is not tried
//! again until it changes, and never more than ten logins an hour.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;

/// Limits on admin logins.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// After a failure: 5 s doubling to an hour.
    pub backoff: Backoff,
    /// Never more logins than this in any hour.
    pub max_per_hour: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            backoff: Backoff::new(Duration::from_secs(5), Duration::from_secs(3600)),
            max_per_hour: 10,
        }
    }
}

pub(super) const HOUR: Duration = Duration::from_secs(3600);

/// Why an admin login is held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginHold {
    /// The last login failed (transport, 5xx, throttling): backing off.
    Backoff,
    /// The IAM rejected this very password: not tried again until it changes or the ceiling passes.
    CredentialsRejected,
    /// Ten logins in the last hour.
    HourlyLimit,
}

impl LoginHold {
    pub fn as_str(self) -> &'static str {
        match self {
            LoginHold::Backoff => "backing_off",
            LoginHold::CredentialsRejected => "credentials_rejected",
            LoginHold::HourlyLimit => "hourly_limit",
        }
    }
}

/// Whether to log in now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginDecision {
    Go,
    Wait { until: Instant, hold: LoginHold },
}

/// The admin logins so far: what [`LoginRecord::decide`] needs.
#[derive(Debug, Clone, Default)]
pub struct LoginRecord {
    /// Logins started within the last hour.
    recent: VecDeque<Instant>,
    pub consecutive_failures: u32,
    not_before: Option<Instant>,
    /// Fingerprint of the password the IAM last rejected.
    rejected_password: Option<String>,
    succeeded_once: bool,
}

impl LoginRecord {
    /// Whether a login with the password of this fingerprint may start at `now`.
    pub fn decide(&self, limits: &LoginLimits, now: Instant, password: &str) -> LoginDecision {
        let in_last_hour = self.recent.iter().filter(|at| now < **at + HOUR);
        if in_last_hour.clone().count() >= limits.max_per_hour {
            let oldest = in_last_hour.min().copied().unwrap_or(now);
            return LoginDecision::Wait {
                until: oldest + HOUR,
                hold: LoginHold::HourlyLimit,
            };
        }
        let rejected_this_password = self.rejected_password.as_deref() == Some(password);
        if self.rejected_password.is_some() && !rejected_this_password {
            // The operator corrected the password: try it now.
            return LoginDecision::Go;
        }
        match self.not_before {
            Some(until) if now < until => LoginDecision::Wait {
                until,
                hold: if rejected_this_password {
                    LoginHold::CredentialsRejected
                } else {
                    LoginHold::Backoff
                },
            },
            _ => LoginDecision::Go,
        }
    }

    /// A login starts now.
    pub fn started(&mut self, now: Instant) {
        self.recent.retain(|at| now < *at + HOUR);
        self.recent.push_back(now);
    }

    pub fn succeeded(&mut self) {
        self.consecutive_failures = 0;
        self.not_before = None;
        self.rejected_password = None;
        self.succeeded_once = true;
    }

    /// A login failed; `rejected_password` is the fingerprint of the password when the IAM rejected the
    /// credentials themselves (401, or 400 for a missing password).
    pub fn failed(
        &mut self,
        limits: &LoginLimits,
        now: Instant,
        rejected_password: Option<String>,
        jitter: f64,
    ) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let wait = if rejected_password.is_some() {
            limits.backoff.cap
        } else {
            limits.backoff.delay(self.consecutive_failures, jitter)
        };
        self.not_before = Some(now + wait);
        self.rejected_password = rejected_password;
    }

    /// The state for `/readyz`: `none` (no login needed yet), `ok`, `backing_off` or
    /// `credentials_rejected`.
    pub fn state(&self) -> &'static str {
        if self.rejected_password.is_some() {
            LoginHold::CredentialsRejected.as_str()
        } else if self.consecutive_failures > 0 {
            LoginHold::Backoff.as_str()
        } else if self.succeeded_once {
            "ok"
        } else {
            "none"
        }
    }
}
