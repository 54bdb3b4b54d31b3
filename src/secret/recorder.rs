//! What the secret lifecycle reports, and the words it reports in.
//!
//! The secret module defines what it tells, so it never depends on the metrics registry: `Metrics`
//! implements [`SecretRecorder`], and [`NoRecorder`] serves the one-shot admin commands. Every label a
//! metric or a log line carries is one of the enums here, so the set of values an alert or a dashboard
//! can meet is written down once, and a typo cannot invent a new series.

use std::fmt;

use crate::entity::EntityId;

/// One admin login's outcome (the `outcome` label of `aa_broker_admin_logins_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginOutcome {
    Ok,
    /// Bad or expired credentials.
    Rejected,
    /// Anything else (the IAM down, an answer that did not parse).
    Failed,
    /// Not sent: backing off, a password already rejected, or over the hourly limit.
    Held,
}

impl LoginOutcome {
    pub const ALL: [LoginOutcome; 4] = [
        LoginOutcome::Ok,
        LoginOutcome::Rejected,
        LoginOutcome::Failed,
        LoginOutcome::Held,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LoginOutcome::Ok => "ok",
            LoginOutcome::Rejected => "rejected",
            LoginOutcome::Failed => "failed",
            LoginOutcome::Held => "held",
        }
    }
}

/// How one rotation step for an entity ended (the `outcome` label of
/// `aa_broker_secret_rotations_total`): a new secret in use, or why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationLabel {
    /// A reset secret is stored and in use (counted once, when it is stored).
    Ok,
    /// After the IAM rejected the secret, its current one was read back and stored (no reset).
    Recovered,
    AdminLoginFailed,
    ResetFailed,
    ReadFailed,
    /// Reset, but not stored: the new secret is held in memory and the write retried.
    PersistFailed,
    VerifyFailed,
    LockFailed,
    /// Held back by the reset bound.
    ResetDeferred,
    /// Another rotator of the same Secret claimed the reset first.
    ResetContended,
    LedgerFailed,
    ConvergeFailed,
}

impl RotationLabel {
    pub const ALL: [RotationLabel; 12] = [
        RotationLabel::Ok,
        RotationLabel::Recovered,
        RotationLabel::AdminLoginFailed,
        RotationLabel::ResetFailed,
        RotationLabel::ReadFailed,
        RotationLabel::PersistFailed,
        RotationLabel::VerifyFailed,
        RotationLabel::LockFailed,
        RotationLabel::ResetDeferred,
        RotationLabel::ResetContended,
        RotationLabel::LedgerFailed,
        RotationLabel::ConvergeFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RotationLabel::Ok => "ok",
            RotationLabel::Recovered => "recovered",
            RotationLabel::AdminLoginFailed => "admin_login_failed",
            RotationLabel::ResetFailed => "reset_failed",
            RotationLabel::ReadFailed => "read_failed",
            RotationLabel::PersistFailed => "persist_failed",
            RotationLabel::VerifyFailed => "verify_failed",
            RotationLabel::LockFailed => "lock_failed",
            RotationLabel::ResetDeferred => "reset_deferred",
            RotationLabel::ResetContended => "reset_contended",
            RotationLabel::LedgerFailed => "ledger_failed",
            RotationLabel::ConvergeFailed => "converge_failed",
        }
    }
}

/// What found the store differing from the IAM before a convergence (the `trigger` label of
/// `aa_broker_secret_convergences_total`, and the log field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvergenceTrigger {
    /// A periodic read.
    Check,
    /// The IAM refused the secret in use.
    Rejected,
    /// The read made just before a reset.
    BeforeReset,
}

impl ConvergenceTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            ConvergenceTrigger::Check => "check",
            ConvergenceTrigger::Rejected => "rejected",
            ConvergenceTrigger::BeforeReset => "before_reset",
        }
    }
}

/// One step of a rotation, as the `step` field of its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationStep {
    UserToken,
    Reset,
    Persist,
    Verify,
}

impl RotationStep {
    pub fn as_str(self) -> &'static str {
        match self {
            RotationStep::UserToken => "user_token",
            RotationStep::Reset => "reset",
            RotationStep::Persist => "persist",
            RotationStep::Verify => "verify",
        }
    }
}

/// How a [`RotationStep`] ended, as the `outcome` field of its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    Ok,
    Failed,
}

impl StepOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            StepOutcome::Ok => "ok",
            StepOutcome::Failed => "failed",
        }
    }
}

macro_rules! display_as_str {
    ($($label:ty),*) => {$(
        impl fmt::Display for $label {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}

display_as_str!(
    LoginOutcome,
    RotationLabel,
    ConvergenceTrigger,
    RotationStep,
    StepOutcome
);

/// What the secret lifecycle reports; the metrics registry (`Metrics`) implements it.
pub trait SecretRecorder: Send + Sync {
    /// One admin login, by outcome.
    fn admin_login(&self, outcome: LoginOutcome);
    /// One rotation step's outcome for an entity.
    fn rotation(&self, entity: &EntityId, outcome: RotationLabel);
    /// The store was given the IAM's current secret without a reset, after `trigger` found it differing.
    fn convergence(&self, _entity: &EntityId, _trigger: ConvergenceTrigger) {}
}

/// A recorder that drops everything, for the one-shot admin commands.
pub struct NoRecorder;

impl SecretRecorder for NoRecorder {
    fn admin_login(&self, _: LoginOutcome) {}
    fn rotation(&self, _: &EntityId, _: RotationLabel) {}
}
