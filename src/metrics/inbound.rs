//! The metrics of incoming-token verification: [`crate::inbound::VerifyRecorder`] implemented for
//! [`super::Metrics`], so the verifier never sees the registry.
//!
//! - `aa_broker_verifications_total{outcome,reason}`: `valid` (`verified`, `cached`), `invalid` (the
//!   `401` message, as a label) or `forbidden` (`wrong_entity`, `wrong_role`);
//! - `aa_broker_jwks_fetches_total{url,trigger,outcome}`: key-set fetches (`scheduled`, `unknown_kid`);
//! - `aa_broker_jwks_keys{url}` and `aa_broker_jwks_last_fetch_timestamp_seconds{url}`: the key set held
//!   and when it was fetched (its age is `time() -` that);
//! - `aa_broker_jwks_unknown_kid_refused_total`: unknown `kid`s refused without a refetch (rate limit).
//!
//! Labels are fixed words and configured key URLs: nothing from a token becomes a label.

use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Metrics;
use crate::inbound::{Outcome, VerifyRecorder};
use crate::timefmt;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerificationLabels {
    outcome: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    url: String,
    trigger: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    url: String,
}

/// The families, and the verification counters resolved once (one atomic add per request).
pub(super) struct InboundMetrics {
    verifications: Family<VerificationLabels, Counter>,
    by_outcome: Vec<Counter>,
    fetches: Family<FetchLabels, Counter>,
    keys: Family<SourceLabels, Gauge>,
    fetched_at: Family<SourceLabels, Gauge<f64, AtomicU64>>,
    unknown_kid_refused: Counter,
}

impl Default for InboundMetrics {
    fn default() -> Self {
        let verifications = Family::<VerificationLabels, Counter>::default();
        let mut by_outcome: Vec<(usize, Counter)> = Outcome::all()
            .map(|outcome| {
                let (o, r) = outcome.labels();
                let counter = verifications
                    .get_or_create(&VerificationLabels {
                        outcome: o.into(),
                        reason: r.into(),
                    })
                    .clone();
                (outcome.index(), counter)
            })
            .collect();
        by_outcome.sort_by_key(|(index, _)| *index);
        Self {
            verifications,
            by_outcome: by_outcome.into_iter().map(|(_, c)| c).collect(),
            fetches: Family::default(),
            keys: Family::default(),
            fetched_at: Family::default(),
            unknown_kid_refused: Counter::default(),
        }
    }
}

/// Every outcome of a key-set fetch (`ok`, and [`crate::inbound::keyset::FetchError::kind`]'s) and every
/// trigger ([`crate::inbound::keyset::FetchTrigger`]), exported at 0 per key URL from start.
const FETCH_OUTCOMES: &[&str] = &[
    "ok",
    "timeout",
    "transport",
    "http_error",
    "too_large",
    "malformed",
];
const FETCH_TRIGGERS: &[&str] = &["scheduled", "first_use", "unknown_kid"];

impl InboundMetrics {
    pub(super) fn known_key_sets<'u>(&self, urls: impl IntoIterator<Item = &'u str>) {
        for url in urls {
            for trigger in FETCH_TRIGGERS {
                for outcome in FETCH_OUTCOMES {
                    let _ = self.fetches.get_or_create(&FetchLabels {
                        url: url.into(),
                        trigger: (*trigger).into(),
                        outcome: (*outcome).into(),
                    });
                }
            }
        }
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "verifications",
            "Incoming tokens verified, by outcome (valid, invalid, forbidden) and reason",
            self.verifications.clone(),
        );
        registry.register(
            "jwks_fetches",
            "Fetches of the realm key set, by key URL, trigger (scheduled, unknown_kid) and outcome",
            self.fetches.clone(),
        );
        registry.register(
            "jwks_keys",
            "Signing keys in the realm key set held, by key URL",
            self.keys.clone(),
        );
        registry.register(
            "jwks_last_fetch_timestamp_seconds",
            "When the realm key set held was fetched, Unix seconds, by key URL",
            self.fetched_at.clone(),
        );
        registry.register(
            "jwks_unknown_kid_refused",
            "Tokens with an unknown kid refused without a refetch (refetches are rate-limited)",
            self.unknown_kid_refused.clone(),
        );
    }
}

impl VerifyRecorder for Metrics {
    fn verification(&self, outcome: Outcome) {
        if let Some(counter) = self.inbound.by_outcome.get(outcome.index()) {
            counter.inc();
        }
    }

    fn key_fetch(&self, url: &str, trigger: &'static str, outcome: &'static str) {
        self.inbound
            .fetches
            .get_or_create(&FetchLabels {
                url: url.into(),
                trigger: trigger.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    fn key_set(&self, url: &str, keys: usize, fetched_at: SystemTime) {
        let labels = SourceLabels { url: url.into() };
        self.inbound
            .keys
            .get_or_create(&labels)
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
        self.inbound
            .fetched_at
            .get_or_create(&labels)
            .set(timefmt::unix_seconds(fetched_at));
    }

    fn unknown_kid_refused(&self) {
        self.inbound.unknown_kid_refused.inc();
    }
}
