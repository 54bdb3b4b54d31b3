//! The metrics of signing (`/v1/sign`): how each request ended and whether each entity's key file can be
//! signed with now. A broken key shows here and in `/readyz` without making token serving unready.
//!
//! - `aa_broker_sign_requests_total{entity,outcome}`: `signed`, `key_unavailable` (the file cannot be read
//!   or parsed: `503`), `busy` (the crypto pool is full), `body_refused` (too large, too slow, over the
//!   budget), `failed`;
//! - `aa_broker_signing_key_valid{entity}`: 1 when the entity's key file reads and parses now, read from
//!   the file's state at each scrape (a stat, and a parse only when the file changed).
//!
//! Labels are configured entity ids and fixed words. Every outcome of every signing entity is exported
//! at 0 from start.

use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::entity::EntityId;
use crate::jws::SigningKeyFile;

/// How a `/v1/sign` request ended; also the label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignOutcome {
    Signed,
    KeyUnavailable,
    Busy,
    BodyRefused,
    Failed,
}

impl SignOutcome {
    pub const ALL: [SignOutcome; 5] = [
        SignOutcome::Signed,
        SignOutcome::KeyUnavailable,
        SignOutcome::Busy,
        SignOutcome::BodyRefused,
        SignOutcome::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SignOutcome::Signed => "signed",
            SignOutcome::KeyUnavailable => "key_unavailable",
            SignOutcome::Busy => "busy",
            SignOutcome::BodyRefused => "body_refused",
            SignOutcome::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignLabels {
    entity: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EntityLabels {
    entity: String,
}

/// The families, and the key files read at each scrape.
#[derive(Default)]
pub(super) struct SigningMetrics {
    requests: Family<SignLabels, Counter>,
    key_valid: Family<EntityLabels, Gauge>,
    signers: OnceLock<Vec<(EntityId, Arc<SigningKeyFile>)>>,
}

impl SigningMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "sign_requests",
            "/v1/sign requests, by entity and outcome (signed, key_unavailable, busy, body_refused, failed)",
            self.requests.clone(),
        );
        registry.register(
            "signing_key_valid",
            "1 when the entity's signing key file can be read and parsed now, else 0",
            self.key_valid.clone(),
        );
    }

    /// The signing entities and their key files: their series exist from now on.
    pub(super) fn observe(&self, signers: Vec<(EntityId, Arc<SigningKeyFile>)>) {
        for (entity, _) in &signers {
            for outcome in SignOutcome::ALL {
                let _ = self.requests.get_or_create(&SignLabels {
                    entity: entity.to_string(),
                    outcome: outcome.as_str().into(),
                });
            }
        }
        let _ = self.signers.set(signers);
        self.refresh();
    }

    /// Reads each key file's state; called when `/metrics` is scraped.
    pub(super) fn refresh(&self) {
        for (entity, file) in self.signers.get().into_iter().flatten() {
            self.key_valid
                .get_or_create(&EntityLabels {
                    entity: entity.to_string(),
                })
                .set(i64::from(file.key().is_ok()));
        }
    }

    pub(super) fn sign(&self, entity: &EntityId, outcome: SignOutcome) {
        self.requests
            .get_or_create(&SignLabels {
                entity: entity.to_string(),
                outcome: outcome.as_str().into(),
            })
            .inc();
    }
}
