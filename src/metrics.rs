//! Every metric the broker exports, in one Prometheus registry.
//!
//! The registry observes; nothing it observes depends on it. The token and secret modules define what
//! they report ([`TokenRecorder`], [`SecretRecorder`]) and [`Metrics`] implements both (and, in
//! [`inbound`] and [`registry`](mod@registry), the recorders of incoming-token verification and of the
//! CR key cache); the guard's refusals come from the HTTP layer, which owns this registry and renders it.
//!
//! Counters are bumped where events happen; per-entity gauges (token validity, staleness, seconds left,
//! clock skew, secret expiry, grace period) are computed from the broker's state when `/metrics` is scraped,
//! so they can never drift from what `/readyz` reports. Labels are configured entity ids and fixed words:
//! nothing a client sends becomes a label, and no secret or token ever does.

pub mod edge;
pub mod fi;
pub mod inbound;
pub mod registry;
pub mod signing;

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::entity::EntityId;
use crate::secret::SecretRecorder;
use crate::secret::recorder::{ConvergenceTrigger, LoginOutcome, RotationLabel};
use crate::timefmt;
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
struct TriggerLabels {
    entity: String,
    trigger: String,
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
struct LoginLabels {
    outcome: String,
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
    secret_expiry: Family<EntityLabels, FloatGauge>,
    secret_in_grace: Family<EntityLabels, Gauge>,
    secret_expires_in: Family<EntityLabels, FloatGauge>,
    secret_alert: Family<EntityLabels, Gauge>,
    secret_warning: Family<EntityLabels, Gauge>,
    admin_logins: Family<LoginLabels, Counter>,
    rotations: Family<OutcomeLabels, Counter>,
    last_rotation: Family<EntityLabels, FloatGauge>,
    convergences: Family<TriggerLabels, Counter>,
    store_diverged: Family<EntityLabels, FloatGauge>,
    check_interval: Family<EntityLabels, FloatGauge>,
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
            secret_expiry: Family::default(),
            secret_in_grace: Family::default(),
            secret_expires_in: Family::default(),
            secret_alert: Family::default(),
            secret_warning: Family::default(),
            admin_logins: Family::default(),
            rotations: Family::default(),
            last_rotation: Family::default(),
            convergences: Family::default(),
            store_diverged: Family::default(),
            check_interval: Family::default(),
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
        r.register(
            "secret_expiry_timestamp_seconds",
            "When the entity secret expires (secret-expiry-ts claim), Unix seconds",
            m.secret_expiry.clone(),
        );
        r.register(
            "secret_in_grace",
            "1 when the IAM said the entity secret has expired and is in its grace period",
            m.secret_in_grace.clone(),
        );
        r.register(
            "secret_expires_in_seconds",
            "Seconds until the entity secret expires (negative once expired)",
            m.secret_expires_in.clone(),
        );
        r.register(
            "secret_alert",
            "1 when a secret-lifecycle problem (e.g. a rotated secret not yet stored) makes the entity not ready",
            m.secret_alert.clone(),
        );
        r.register(
            "secret_warning",
            "1 when the IAM sent something about the secret that cannot be right (e.g. an impossible expiry); tokens still flow",
            m.secret_warning.clone(),
        );
        r.register(
            "admin_logins",
            "Admin user logins, by outcome (ok, rejected, failed, held: not sent because of the backoff or the hourly limit)",
            m.admin_logins.clone(),
        );
        r.register(
            "secret_rotations",
            "Secret rotations, by outcome",
            m.rotations.clone(),
        );
        r.register(
            "secret_last_rotation_timestamp_seconds",
            "When the last successful rotation finished, Unix seconds",
            m.last_rotation.clone(),
        );
        r.register(
            "secret_convergences",
            "Times the store was given the IAM's current secret without a reset (reset elsewhere, or restored from a backup), by what found it: check, rejected, before_reset",
            m.convergences.clone(),
        );
        r.register(
            "secret_store_diverged_seconds",
            "How long the store's secret has differed from the IAM's current one (0 when they agree, or when this broker does not rotate)",
            m.store_diverged.clone(),
        );
        r.register(
            "secret_check_interval_seconds",
            "How often the store is compared with the IAM (0 when this broker does not rotate)",
            m.check_interval.clone(),
        );
        m.inbound.register(&mut m.registry);
        m.edge.register(&mut m.registry);
        m.cr.register(&mut m.registry);
        m.fi.register(&mut m.registry);
        m.signing.register(&mut m.registry);
        for outcome in LoginOutcome::ALL {
            let _ = m.admin_logins.get_or_create(&LoginLabels {
                outcome: outcome.as_str().into(),
            });
        }
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
            for rotation in RotationLabel::ALL {
                let _ = self.rotations.get_or_create(&outcome(rotation.as_str()));
            }
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
            if let Some(at) = entity.secret_expires_at {
                self.secret_expiry
                    .get_or_create(&labels)
                    .set(timefmt::unix_seconds(at));
                self.secret_expires_in
                    .get_or_create(&labels)
                    .set(timefmt::unix_seconds(at) - timefmt::unix_seconds(SystemTime::now()));
            }
            if let Some(at) = entity.secret.last_rotation {
                self.last_rotation
                    .get_or_create(&labels)
                    .set(timefmt::unix_seconds(at));
            }
            self.secret_alert
                .get_or_create(&labels)
                .set(i64::from(entity.secret.alert.is_some()));
            self.secret_in_grace
                .get_or_create(&labels)
                .set(i64::from(entity.secret_in_grace));
            self.secret_warning
                .get_or_create(&labels)
                .set(i64::from(entity.secret.warning.is_some()));
            // Both always present (0 when this broker does not rotate), so an alert on them can tell "no
            // divergence" from "no such metric".
            self.check_interval.get_or_create(&labels).set(
                entity
                    .secret
                    .check_interval
                    .map_or(0.0, |interval| interval.as_secs_f64()),
            );
            let diverged = entity.secret.store_diverged_since.map_or(0.0, |since| {
                SystemTime::now()
                    .duration_since(since)
                    .unwrap_or_default()
                    .as_secs_f64()
            });
            self.store_diverged.get_or_create(&labels).set(diverged);
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

impl SecretRecorder for Metrics {
    fn admin_login(&self, outcome: LoginOutcome) {
        self.admin_logins
            .get_or_create(&LoginLabels {
                outcome: outcome.as_str().into(),
            })
            .inc();
    }

    fn rotation(&self, entity: &EntityId, outcome: RotationLabel) {
        self.rotations
            .get_or_create(&OutcomeLabels {
                entity: entity.to_string(),
                outcome: outcome.as_str().into(),
            })
            .inc();
    }

    fn convergence(&self, entity: &EntityId, trigger: ConvergenceTrigger) {
        self.convergences
            .get_or_create(&TriggerLabels {
                entity: entity.to_string(),
                trigger: trigger.as_str().into(),
            })
            .inc();
    }
}
