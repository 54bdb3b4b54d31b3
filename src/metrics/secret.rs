//! The metrics of the secret lifecycle: [`crate::secret::SecretRecorder`] implemented for
//! [`super::Metrics`], and the per-entity secret gauges, set from the broker's state when `/metrics` is
//! scraped (so they can never drift from what `/readyz` reports).
//!
//! - `aa_broker_secret_expiry_timestamp_seconds`, `aa_broker_secret_expires_in_seconds` and
//!   `aa_broker_secret_in_grace{entity}`: when the entity secret expires, as the IAM said;
//! - `aa_broker_secret_alert` and `aa_broker_secret_warning{entity}`: a lifecycle problem that makes the
//!   entity not ready, and an IAM answer about the secret that cannot be right;
//! - `aa_broker_admin_logins_total{outcome}`, `aa_broker_secret_rotations_total{entity,outcome}`,
//!   `aa_broker_secret_last_rotation_timestamp_seconds{entity}`: logins and rotations;
//! - `aa_broker_secret_convergences_total{entity,trigger}`, `aa_broker_secret_store_diverged_seconds` and
//!   `aa_broker_secret_check_interval_seconds{entity}`: the store against the IAM's current secret.
//!
//! Labels are configured entity ids and fixed words.

use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{EntityLabels, FloatGauge, Metrics, OutcomeLabels};
use crate::entity::EntityId;
use crate::secret::SecretRecorder;
use crate::secret::recorder::{ConvergenceTrigger, LoginOutcome, RotationLabel};
use crate::timefmt;
use crate::token::status::EntityStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    entity: String,
    trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginLabels {
    outcome: String,
}

/// The secret lifecycle's families.
pub(super) struct SecretMetrics {
    expiry: Family<EntityLabels, FloatGauge>,
    in_grace: Family<EntityLabels, Gauge>,
    expires_in: Family<EntityLabels, FloatGauge>,
    alert: Family<EntityLabels, Gauge>,
    warning: Family<EntityLabels, Gauge>,
    admin_logins: Family<LoginLabels, Counter>,
    rotations: Family<OutcomeLabels, Counter>,
    last_rotation: Family<EntityLabels, FloatGauge>,
    convergences: Family<TriggerLabels, Counter>,
    store_diverged: Family<EntityLabels, FloatGauge>,
    check_interval: Family<EntityLabels, FloatGauge>,
}

impl Default for SecretMetrics {
    fn default() -> Self {
        let admin_logins = Family::<LoginLabels, Counter>::default();
        // Every outcome exists from start, at 0.
        for outcome in LoginOutcome::ALL {
            let _ = admin_logins.get_or_create(&LoginLabels {
                outcome: outcome.as_str().into(),
            });
        }
        Self {
            expiry: Family::default(),
            in_grace: Family::default(),
            expires_in: Family::default(),
            alert: Family::default(),
            warning: Family::default(),
            admin_logins,
            rotations: Family::default(),
            last_rotation: Family::default(),
            convergences: Family::default(),
            store_diverged: Family::default(),
            check_interval: Family::default(),
        }
    }
}

impl SecretMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "secret_expiry_timestamp_seconds",
            "When the entity secret expires (secret-expiry-ts claim), Unix seconds",
            self.expiry.clone(),
        );
        registry.register(
            "secret_in_grace",
            "1 when the IAM said the entity secret has expired and is in its grace period",
            self.in_grace.clone(),
        );
        registry.register(
            "secret_expires_in_seconds",
            "Seconds until the entity secret expires (negative once expired)",
            self.expires_in.clone(),
        );
        registry.register(
        "secret_alert",
        "1 when a secret-lifecycle problem (e.g. a rotated secret not yet stored) makes the entity not ready",
        self.alert.clone(),
    );
        registry.register(
        "secret_warning",
        "1 when the IAM sent something about the secret that cannot be right (e.g. an impossible expiry); tokens still flow",
        self.warning.clone(),
    );
        registry.register(
        "admin_logins",
        "Admin user logins, by outcome (ok, rejected, failed, held: not sent because of the backoff or the hourly limit)",
        self.admin_logins.clone(),
    );
        registry.register(
            "secret_rotations",
            "Secret rotations, by outcome",
            self.rotations.clone(),
        );
        registry.register(
            "secret_last_rotation_timestamp_seconds",
            "When the last successful rotation finished, Unix seconds",
            self.last_rotation.clone(),
        );
        registry.register(
        "secret_convergences",
        "Times the store was given the IAM's current secret without a reset (reset elsewhere, or restored from a backup), by what found it: check, rejected, before_reset",
        self.convergences.clone(),
    );
        registry.register(
        "secret_store_diverged_seconds",
        "How long the store's secret has differed from the IAM's current one (0 when they agree, or when this broker does not rotate)",
        self.store_diverged.clone(),
    );
        registry.register(
            "secret_check_interval_seconds",
            "How often the store is compared with the IAM (0 when this broker does not rotate)",
            self.check_interval.clone(),
        );
    }

    /// A configured entity: its rotation counters exist from now on, at 0.
    pub(super) fn known_entity(&self, entity: &str) {
        for rotation in RotationLabel::ALL {
            let _ = self.rotations.get_or_create(&OutcomeLabels {
                entity: entity.into(),
                outcome: rotation.as_str().into(),
            });
        }
    }

    /// The gauges of one entity, from its status at the scrape.
    pub(super) fn observe(&self, labels: &EntityLabels, status: &EntityStatus) {
        if let Some(at) = status.secret_expires_at {
            self.expiry
                .get_or_create(labels)
                .set(timefmt::unix_seconds(at));
            self.expires_in
                .get_or_create(labels)
                .set(timefmt::unix_seconds(at) - timefmt::unix_seconds(SystemTime::now()));
        }
        if let Some(at) = status.secret.last_rotation {
            self.last_rotation
                .get_or_create(labels)
                .set(timefmt::unix_seconds(at));
        }
        self.alert
            .get_or_create(labels)
            .set(i64::from(status.secret.alert.is_some()));
        self.in_grace
            .get_or_create(labels)
            .set(i64::from(status.secret_in_grace));
        self.warning
            .get_or_create(labels)
            .set(i64::from(status.secret.warning.is_some()));
        // Both always present (0 when this broker does not rotate), so an alert on them can tell "no
        // divergence" from "no such metric".
        self.check_interval.get_or_create(labels).set(
            status
                .secret
                .check_interval
                .map_or(0.0, |interval| interval.as_secs_f64()),
        );
        let diverged = status.secret.store_diverged_since.map_or(0.0, |since| {
            SystemTime::now()
                .duration_since(since)
                .unwrap_or_default()
                .as_secs_f64()
        });
        self.store_diverged.get_or_create(labels).set(diverged);
    }
}

impl SecretRecorder for Metrics {
    fn admin_login(&self, outcome: LoginOutcome) {
        self.secret
            .admin_logins
            .get_or_create(&LoginLabels {
                outcome: outcome.as_str().into(),
            })
            .inc();
    }

    fn rotation(&self, entity: &EntityId, outcome: RotationLabel) {
        self.secret
            .rotations
            .get_or_create(&OutcomeLabels {
                entity: entity.to_string(),
                outcome: outcome.as_str().into(),
            })
            .inc();
    }

    fn convergence(&self, entity: &EntityId, trigger: ConvergenceTrigger) {
        self.secret
            .convergences
            .get_or_create(&TriggerLabels {
                entity: entity.to_string(),
                trigger: trigger.as_str().into(),
            })
            .inc();
    }
}
