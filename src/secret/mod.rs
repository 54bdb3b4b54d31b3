//! The entity secret's lifecycle: admin operations and rotation that never locks the entity out.
//!
//! - [`admin`]: the admin user's credentials and a cached user token for secret read/reset.
//! - [`policy`]: when a rotation is due — a pure function of the secret's expiry, the grace warning and the
//!   threshold.
//! - [`rotation`]: the one safe order — user token → reset → **persist** → verify → switch — and the
//!   read-back that heals a rejected or lost secret without resetting.
//! - [`sink`]: where a new secret is written (file, Kubernetes Secret, command).
//! - [`lock`]: the advisory file lock that makes one process of several sharing a secret file the rotator.
//! - [`manager`]: the task `serve` runs per entity when admin credentials are configured.

pub mod admin;
pub mod lock;
pub mod manager;
pub mod policy;
pub mod rotation;
pub mod sink;

use std::time::Duration;

pub use admin::{AdminCredentials, AdminSession};
pub use rotation::{RotationError, Rotator};
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
}
