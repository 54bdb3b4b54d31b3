//! The metrics of FI data encryption:
//!
//! - `aa_broker_fi_requests_total{route,outcome}`: answers of `/v1/fi/*` and rahasya's `/ecc/v1/*`, by
//!   route (`key_material`, `decrypt`, `encrypt`, `ecc_generate_key`, `ecc_decrypt`, `ecc_encrypt`) and
//!   outcome (`ok`, an error code of the answer, `fi_disabled`, `busy`, `body_refused`);
//! - `aa_broker_fi_batch_items_total{outcome}`: the items of batch decrypts, `ok` or their error code;
//! - `aa_broker_fi_keys_expired_total{key}`: requests refused because a key was past its expiry: `handle`
//!   (our key handle: a session kept longer than its key) or `remote` (the peer's `DHPublicKey`).
//!
//! Every label value is exported at 0 from start. Labels are fixed words: no key, handle or entity data.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The routes, as labels.
pub const ROUTES: [&str; 6] = [
    "key_material",
    "decrypt",
    "encrypt",
    "ecc_generate_key",
    "ecc_decrypt",
    "ecc_encrypt",
];
/// Every outcome of a request.
pub const OUTCOMES: [&str; 12] = [
    "ok",
    "bad_request",
    "decryption_failed",
    "unsupported_key_material",
    "key_expired",
    "invalid_handle",
    "entity_required",
    "no_fi_key",
    "internal",
    "fi_disabled",
    "busy",
    "body_refused",
];
const ITEM_OUTCOMES: [&str; 5] = [
    "ok",
    "bad_request",
    "decryption_failed",
    "unsupported_key_material",
    "key_expired",
];
const KEYS: [&str; 2] = ["handle", "remote"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteOutcome {
    route: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Key {
    key: String,
}

#[derive(Default)]
pub(super) struct FiMetrics {
    requests: Family<RouteOutcome, Counter>,
    items: Family<Outcome, Counter>,
    expired: Family<Key, Counter>,
}

impl FiMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        for route in ROUTES {
            for outcome in OUTCOMES {
                let _ = self.requests.get_or_create(&RouteOutcome {
                    route: route.into(),
                    outcome: outcome.into(),
                });
            }
        }
        for outcome in ITEM_OUTCOMES {
            let _ = self.items.get_or_create(&Outcome {
                outcome: outcome.into(),
            });
        }
        for key in KEYS {
            let _ = self.expired.get_or_create(&Key { key: key.into() });
        }
        registry.register(
            "fi_requests",
            "FI encryption requests (/v1/fi/*, /ecc/v1/*), by route and outcome",
            self.requests.clone(),
        );
        registry.register(
            "fi_batch_items",
            "Items of batch FI decrypts, by outcome",
            self.items.clone(),
        );
        registry.register(
            "fi_keys_expired",
            "FI requests refused for an expired key: handle (ours) or remote (the peer's DHPublicKey)",
            self.expired.clone(),
        );
    }

    pub(super) fn request(&self, route: &'static str, outcome: &'static str) {
        self.requests
            .get_or_create(&RouteOutcome {
                route: route.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub(super) fn item(&self, outcome: &'static str) {
        self.items
            .get_or_create(&Outcome {
                outcome: outcome.into(),
            })
            .inc();
    }

    pub(super) fn expired(&self, key: &'static str) {
        self.expired.get_or_create(&Key { key: key.into() }).inc();
    }
}
