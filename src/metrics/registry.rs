//! The metrics of the Central Registry key cache: [`crate::registry::RegistryRecorder`] implemented for
//! [`super::Metrics`], so the CR cache never sees the metrics registry.
//!
//! - `aa_broker_cr_requests_total{outcome}`: lookups that needed the CR, by outcome — `ok`, `unknown`
//!   (no usable key for the sender), `error` (the CR could not be asked, or answered something else) and
//!   `rate_limited` (not sent: the lookup budget was spent). Every outcome is exported from start, at 0.
//!
//! Labels are fixed words: nothing a caller sends (a sender's id) becomes a label.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::Metrics;
use crate::registry::{CrOutcome, RegistryRecorder};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CrLabels {
    outcome: String,
}

/// The family, and its counters resolved once (one atomic add per lookup).
pub(super) struct RegistryMetrics {
    requests: Family<CrLabels, Counter>,
    by_outcome: Vec<(CrOutcome, Counter)>,
}

impl Default for RegistryMetrics {
    fn default() -> Self {
        let requests = Family::<CrLabels, Counter>::default();
        let by_outcome = CrOutcome::ALL
            .into_iter()
            .map(|outcome| {
                let counter = requests
                    .get_or_create(&CrLabels {
                        outcome: outcome.as_str().into(),
                    })
                    .clone();
                (outcome, counter)
            })
            .collect();
        Self {
            requests,
            by_outcome,
        }
    }
}

impl RegistryMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "cr_requests",
            "Central Registry lookups of peers' keys, by outcome (ok, unknown, error, rate_limited: not sent, the lookup budget was spent)",
            self.requests.clone(),
        );
    }
}

impl RegistryRecorder for Metrics {
    fn cr_request(&self, outcome: CrOutcome) {
        if let Some((_, counter)) = self.cr.by_outcome.iter().find(|(o, _)| *o == outcome) {
            counter.inc();
        }
    }
}
