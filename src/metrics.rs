//! Every metric the broker exports, in one Prometheus registry.
//!
//! The registry observes; nothing it observes depends on it. The token and secret modules define what
//! they report ([`TokenRecorder`], [`crate::secret::SecretRecorder`]) and [`Metrics`] implements both:
//! the token's here, the secret lifecycle's in [`secret`] (as the recorders of incoming-token
//! verification and of the CR key cache are, in [`inbound`] and [`registry`](mod@registry)); the guard's
//! refusals come from the HTTP layer, which owns this registry and renders it.
//!
//! Counters are bumped where events happen; per-entity gauges (token validity, staleness, seconds left,
//! clock skew, secret expiry, grace period) are computed from the broker's state when `/metrics` is scraped,
//! so they can never drift from what `/readyz` reports. Labels are configured entity ids and fixed words:
//! nothing a client sends becomes a label, and no secret or token ever does.

pub mod edge;
pub mod fi;
pub mod inbound;
pub mod registry;
pub mod secret;
pub mod signing;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::entity::EntityId;
use crate::token::recorder::{RequestTallies, Tally, TokenRecorder, Trigger};
use crate::token::status::EntityStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EntityLabels {
    entity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    entity: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IamLabels {
    entity: String,
    trigger: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn iam_latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// The broker's metrics. Shared behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    token_requests: Family<OutcomeLabels, Counter>,
    forced_refreshes: Family<OutcomeLabels, Counter>,
    iam_requests: Family<IamLabels, Counter>,
    iam_request_seconds: Family<EntityLabels, Histogram, fn() -> Histogram>,
    iam_warnings: Family<EntityLabels, Counter>,
    guard_rejections: Family<ReasonLabels, Counter>,
    token_valid: Family<EntityLabels, Gauge>,
    token_stale: Family<EntityLabels, Gauge>,
    token_expires_in: Family<EntityLabels, Gauge>,
    refresh_failures: Family<EntityLabels, Gauge>,
    clock_skew: Family<EntityLabels, FloatGauge>,
    secret: secret::SecretMetrics,
    inbound: inbound::InboundMetrics,
    edge: edge::EdgeMetrics,
    cr: registry::RegistryMetrics,
    fi: fi::FiMetrics,
    signing: signing::SigningMetrics,
}

/// Every `outcome` of an IAM token call ([`crate::token::status::FetchError::kind`], with `ok`), exported
/// at 0 per entity and trigger from start.
pub const IAM_OUTCOMES: &[&str] = &[
    "ok",
    "timeout",
    "transport",
    "unauthorized",
    "throttled",
    "http_4xx",
    "http_5xx",
    "malformed",
    "rejected_token",
    "same_token",
    "secret_unreadable",
];
/// Every trigger of an IAM token call ([`Trigger`]).
const IAM_TRIGGERS: [Trigger; 3] = [Trigger::Background, Trigger::Client, Trigger::Forced];
impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("aa_broker");
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        registry.register("build_info", "Build information", build_info);
        let m = Self {
            token_requests: Family::default(),
            forced_refreshes: Family::default(),
            iam_requests: Family::default(),
            iam_request_seconds: Family::new_with_constructor(iam_latency_histogram),
            iam_warnings: Family::default(),
            guard_rejections: Family::default(),
            token_valid: Family::default(),
            token_stale: Family::default(),
            token_expires_in: Family::default(),
            refresh_failures: Family::default(),
            clock_skew: Family::default(),
            secret: secret::SecretMetrics::default(),
            inbound: inbound::InboundMetrics::default(),
            edge: edge::EdgeMetrics::default(),
            cr: registry::RegistryMetrics::default(),
            fi: fi::FiMetrics::default(),
            signing: signing::SigningMetrics::default(),
            registry,
        };
        let mut m = m;
        // Known label values exist from start, so a dashboard shows 0 rather than no series.
        for reason in ["missing_metadata_header", "forwarded", "host"] {
            let _ = m.guard_rejections.get_or_create(&ReasonLabels {
                reason: reason.into(),
            });
        }
        let r = &mut m.registry;
        r.register(
            "token_requests",
            "Token requests served, by outcome (served, stale, unavailable)",
            m.token_requests.clone(),
        );
        r.register(
            "forced_refreshes",
            "Forced refresh requests, by outcome (refreshed or rate_limited)",
            m.forced_refreshes.clone(),
        );
        r.register(
            "iam_requests",
            "Entity token calls to the IAM, by trigger and outcome",
            m.iam_requests.clone(),
        );
        r.register(
            "iam_request_duration_seconds",
            "Duration of entity token calls to the IAM",
            m.iam_request_seconds.clone(),
        );
        r.register(
            "iam_warnings",
            "Token responses that carried the IAM's grace-period warning",
            m.iam_warnings.clone(),
        );
        r.register(
            "guard_rejections",
            "Requests refused by the caller guard, by reason",
            m.guard_rejections.clone(),
        );
        r.register(
            "token_valid",
            "1 when a token that may be handed out is held",
            m.token_valid.clone(),
        );
        r.register(
            "token_stale",
            "1 when the held token is valid but its last refresh failed",
            m.token_stale.clone(),
        );
        r.register(
            "token_expires_in_seconds",
            "Seconds until the held token expires",
            m.token_expires_in.clone(),
        );
        r.register(
            "refresh_consecutive_failures",
            "Upstream failures since the last success",
            m.refresh_failures.clone(),
        );
        r.register(
            "clock_skew_seconds",
            "Local wall clock minus the token's iat when it arrived",
            m.clock_skew.clone(),
        );
        m.secret.register(r);
        m.inbound.register(&mut m.registry);
        m.edge.register(&mut m.registry);
        m.cr.register(&mut m.registry);
        m.fi.register(&mut m.registry);
        m.signing.register(&mut m.registry);
        m
    }

    /// The configured entities: every labelled counter of theirs exists from now on, at 0, so that a
    /// dashboard shows a flat line and `increase()` sees the first event (a series born at 1 has no
    /// increase to show).
    pub fn known_entities(&self, entities: &[EntityId]) {
        for entity in entities {
            let entity = entity.to_string();
            let outcome = |outcome: &str| OutcomeLabels {
                entity: entity.clone(),
                outcome: outcome.into(),
            };
            for served in ["served", "stale", "unavailable"] {
                let _ = self.token_requests.get_or_create(&outcome(served));
            }
            for forced in ["refreshed", "rate_limited"] {
                let _ = self.forced_refreshes.get_or_create(&outcome(forced));
            }
            self.secret.known_entity(&entity);
            for trigger in IAM_TRIGGERS {
                for result in IAM_OUTCOMES {
                    let _ = self.iam_requests.get_or_create(&IamLabels {
                        entity: entity.clone(),
                        trigger: trigger.as_str().into(),
                        outcome: (*result).into(),
                    });
                }
            }
            let labels = EntityLabels {
                entity: entity.clone(),
            };
            let _ = self.iam_warnings.get_or_create(&labels);
        }
    }

    /// The realm key-set URLs verification reads: their fetch counters exist from now on, at 0.
    pub fn known_key_sets<'u>(&self, urls: impl IntoIterator<Item = &'u str>) {
        self.inbound.known_key_sets(urls);
    }

    /// The entities that sign, with their key files: `/v1/sign`'s counters and the key-state gauge.
    pub fn observe_signers(
        &self,
        signers: Vec<(EntityId, std::sync::Arc<crate::jws::SigningKeyFile>)>,
    ) {
        self.signing.observe(signers);
    }

    pub fn sign_request(&self, entity: &EntityId, outcome: signing::SignOutcome) {
        self.signing.sign(entity, outcome);
    }

    pub fn guard_rejection(&self, reason: &'static str) {
        self.guard_rejections
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// Reads the body budget's and the crypto pool's figures at every scrape.
    pub fn observe_limits(
        &self,
        budget: crate::budget::ByteBudget,
        pool: std::sync::Arc<crate::crypto_pool::CryptoPool>,
    ) {
        self.edge.observe(budget, pool);
    }

    pub fn signature_check(&self, outcome: edge::SignatureOutcome) {
        self.edge.signature_check(outcome);
    }

    /// One FI request's answer (`route`, `outcome`: labels of [`fi::ROUTES`] and [`fi::OUTCOMES`]).
    pub fn fi_request(&self, route: &'static str, outcome: &'static str) {
        self.fi.request(route, outcome);
    }

    /// One item of a batch FI decrypt.
    pub fn fi_item(&self, outcome: &'static str) {
        self.fi.item(outcome);
    }

    /// A request refused for an expired key: `handle` or `remote`.
    pub fn fi_key_expired(&self, key: &'static str) {
        self.fi.expired(key);
    }

    pub fn authorize(&self, outcome: edge::AuthorizeOutcome) {
        self.edge.authorize(outcome);
    }

    /// Renders the registry in the OpenMetrics text format, after setting the state gauges from `status`.
    pub fn render(&self, status: &[EntityStatus]) -> String {
        self.edge.refresh();
        self.signing.refresh();
        for entity in status {
            let labels = EntityLabels {
                entity: entity.entity_id.to_string(),
            };
            self.token_valid
                .get_or_create(&labels)
                .set(i64::from(entity.ready));
            self.token_stale
                .get_or_create(&labels)
                .set(i64::from(entity.stale));
            self.token_expires_in.get_or_create(&labels).set(
                entity
                    .expires_in
                    .map_or(0, |s| i64::try_from(s).unwrap_or(i64::MAX)),
            );
            self.refresh_failures
                .get_or_create(&labels)
                .set(i64::from(entity.consecutive_failures));
            if let Some(skew) = entity.clock_skew_seconds {
                self.clock_skew.get_or_create(&labels).set(skew);
            }
            self.secret.observe(&labels, entity);
        }
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Tally for Counter {
    fn add(&self) {
        self.inc();
    }
}

impl TokenRecorder for Metrics {
    fn request_tallies(&self, entity: &EntityId) -> RequestTallies {
        let counter = |outcome: &str| -> Box<dyn Tally> {
            Box::new(
                self.token_requests
                    .get_or_create(&OutcomeLabels {
                        entity: entity.to_string(),
                        outcome: outcome.into(),
                    })
                    .clone(),
            )
        };
        RequestTallies {
            served: counter("served"),
            stale: counter("stale"),
            unavailable: counter("unavailable"),
        }
    }

    fn iam_request(
        &self,
        entity: &EntityId,
        trigger: Trigger,
        outcome: &'static str,
        took: Duration,
    ) {
        self.iam_requests
            .get_or_create(&IamLabels {
                entity: entity.to_string(),
                trigger: trigger.as_str().into(),
                outcome: outcome.into(),
            })
            .inc();
        self.iam_request_seconds
            .get_or_create(&EntityLabels {
                entity: entity.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    fn iam_warning(&self, entity: &EntityId) {
        self.iam_warnings
            .get_or_create(&EntityLabels {
                entity: entity.to_string(),
            })
            .inc();
    }

    fn forced_refresh(&self, entity: &EntityId, allowed: bool) {
        let outcome = if allowed { "refreshed" } else { "rate_limited" };
        self.forced_refreshes
            .get_or_create(&OutcomeLabels {
                entity: entity.to_string(),
                outcome: outcome.into(),
            })
            .inc();
    }
}
