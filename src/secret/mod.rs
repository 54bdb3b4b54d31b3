//! The entity secret's lifecycle: admin operations and rotation that never locks the entity out.
//!
//! - [`cell`]: the entity secret as the token path reads it, and what the lifecycle reports about it.
//! - [`login`]: the admin user's credentials, the login limits and a cached user token for secret read/reset.
//! - [`policy`]: when a rotation is due — a pure function of the secret's expiry, the grace warning and the
//!   threshold — and, across sites, whether to reset or converge ([`policy::sites`]).
//! - [`rotation`]: the one safe order — user token → reset → **persist** → verify → switch — and the
//!   read-back that heals a rejected or lost secret without resetting.
//! - [`sink`]: where a new secret is written (file, Kubernetes Secret, command).
//! - [`lock`]: the advisory file lock that makes one process of several sharing a secret file the rotator.
//! - [`ledger`]: the record of the last reset, kept with the store, which bounds resets across restarts.
//! - [`manager`]: the task `serve` runs per entity when admin credentials are configured; it follows
//!   [`policy::schedule`], which decides its next step.
//! - [`recorder`]: what the lifecycle reports to metrics, and the labels it reports in.

pub mod cell;
pub mod ledger;
pub mod lock;
pub mod login;
pub mod manager;
pub mod policy;
pub mod recorder;
pub mod rotation;
pub mod sink;

use std::path::PathBuf;
use std::time::Duration;

pub use policy::sites::Role;

pub use cell::{SecretCell, SecretEvent, SecretStatus};
pub use login::{AdminCredentials, AdminSession};
pub use recorder::{NoRecorder, SecretRecorder};
pub use rotation::{ResetBound, RotationError, Rotator};
pub use sink::{KubeAccess, SecretSink, SinkSpec};

/// Rotation settings shared by `serve`, `rotate` and `secret reset`.
#[derive(Debug, Clone)]
pub struct RotationSettings {
    pub admin: AdminCredentials,
    /// Rotate when less than this remains of the secret's validity.
    pub rotate_before: Duration,
    /// Validity asked for on reset (`secretExpiryDays`).
    pub expiry_days: u32,
    /// How often `serve` reads the secret's expiry from the IAM.
    pub check_interval: Duration,
    /// The API server, when a Kubernetes sink is used.
    pub kube: Option<KubeAccess>,
    /// Least time between two resets of one entity's secret.
    pub min_reset_interval: Duration,
    /// Where reset records live for sinks that keep none of their own (`exec:`).
    pub state_dir: PathBuf,
    /// Primary (resets when due) or standby (converges; resets only as the last resort).
    pub role: Role,
    /// This site's name, recorded with each reset.
    pub site: String,
}

impl RotationSettings {
    pub fn reset_bound(&self) -> ResetBound {
        ResetBound {
            min_interval: self.min_reset_interval,
            state_dir: self.state_dir.clone(),
            site: self.site.clone(),
        }
    }
}
