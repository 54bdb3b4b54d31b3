//! The metrics of the inbound half's limits and outcomes: what bodies cost, what the crypto pool does,
//! and how signature checks and `/v1/authorize` end.
//!
//! - `aa_broker_body_bytes_read_total`: request-body bytes read from clients, on every listener;
//! - `aa_broker_body_buffered_bytes`, `aa_broker_body_buffered_peak_bytes` and
//!   `aa_broker_body_budget_bytes`: bytes held now, the most held at once, and the budget;
//! - `aa_broker_body_refusals_total{reason}`: bodies refused (`too_large`, `timeout`, `budget_exhausted`,
//!   `aborted`);
//! - `aa_broker_crypto_jobs_total{outcome}` and `aa_broker_crypto_jobs_in_flight`: the crypto pool
//!   (`completed`, `refused`: queue full, `abandoned`: the caller left first);
//! - `aa_broker_signature_checks_total{outcome}`: incoming `x-jws-signature`s checked;
//! - `aa_broker_authorize_total{outcome}`: `/v1/authorize` answers.
//!
//! Every label value is exported at 0 from start, so dashboards and alerts see a series before the
//! first event. Budget and pool figures are read from their owners when `/metrics` is scraped.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::budget::ByteBudget;
use crate::crypto_pool::CryptoPool;
use std::sync::Arc;

/// How a signature check ended; also the label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureOutcome {
    Valid,
    Missing,
    Mismatch,
    ForeignKey,
    UnknownSender,
    Unavailable,
    Busy,
}

impl SignatureOutcome {
    pub const ALL: [SignatureOutcome; 7] = [
        SignatureOutcome::Valid,
        SignatureOutcome::Missing,
        SignatureOutcome::Mismatch,
        SignatureOutcome::ForeignKey,
        SignatureOutcome::UnknownSender,
        SignatureOutcome::Unavailable,
        SignatureOutcome::Busy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SignatureOutcome::Valid => "valid",
            SignatureOutcome::Missing => "missing",
            SignatureOutcome::Mismatch => "mismatch",
            SignatureOutcome::ForeignKey => "foreign_key",
            SignatureOutcome::UnknownSender => "unknown_sender",
            SignatureOutcome::Unavailable => "registry_unavailable",
            SignatureOutcome::Busy => "busy",
        }
    }
}

/// How `/v1/authorize` answered; also the label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizeOutcome {
    Allowed,
    Unauthorized,
    InvalidRequest,
    SignatureDoesNotMatch,
    Unavailable,
    Busy,
    BodyRefused,
}

impl AuthorizeOutcome {
    pub const ALL: [AuthorizeOutcome; 7] = [
        AuthorizeOutcome::Allowed,
        AuthorizeOutcome::Unauthorized,
        AuthorizeOutcome::InvalidRequest,
        AuthorizeOutcome::SignatureDoesNotMatch,
        AuthorizeOutcome::Unavailable,
        AuthorizeOutcome::Busy,
        AuthorizeOutcome::BodyRefused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthorizeOutcome::Allowed => "allowed",
            AuthorizeOutcome::Unauthorized => "unauthorized",
            AuthorizeOutcome::InvalidRequest => "invalid_request",
            AuthorizeOutcome::SignatureDoesNotMatch => "signature_does_not_match",
            AuthorizeOutcome::Unavailable => "unavailable",
            AuthorizeOutcome::Busy => "busy",
            AuthorizeOutcome::BodyRefused => "body_refused",
        }
    }
}

const CRYPTO_OUTCOMES: [&str; 3] = ["completed", "refused", "abandoned"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

/// The families, and where the scraped figures come from.
#[derive(Default)]
pub(super) struct EdgeMetrics {
    body_bytes_read: Counter,
    body_buffered: Gauge,
    body_budget: Gauge,
    body_peak: Gauge,
    body_refusals: Family<Reason, Counter>,
    crypto_jobs: Family<Outcome, Counter>,
    crypto_in_flight: Gauge,
    signature_checks: Family<Outcome, Counter>,
    authorize: Family<Outcome, Counter>,
    budget: OnceLock<ByteBudget>,
    pool: OnceLock<Arc<CryptoPool>>,
}

impl EdgeMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        for reason in crate::budget::REFUSALS {
            let _ = self.body_refusals.get_or_create(&Reason {
                reason: reason.into(),
            });
        }
        for outcome in CRYPTO_OUTCOMES {
            let _ = self.crypto_jobs.get_or_create(&Outcome {
                outcome: outcome.into(),
            });
        }
        for outcome in SignatureOutcome::ALL {
            let _ = self.signature_checks.get_or_create(&Outcome {
                outcome: outcome.as_str().into(),
            });
        }
        for outcome in AuthorizeOutcome::ALL {
            let _ = self.authorize.get_or_create(&Outcome {
                outcome: outcome.as_str().into(),
            });
        }
        registry.register(
            "body_bytes_read",
            "Request-body bytes read from clients, on every listener",
            self.body_bytes_read.clone(),
        );
        registry.register(
            "body_buffered_bytes",
            "Request-body bytes held now (taken from the body budget)",
            self.body_buffered.clone(),
        );
        registry.register(
            "body_buffered_peak_bytes",
            "The most request-body bytes held at once since start",
            self.body_peak.clone(),
        );
        registry.register(
            "body_budget_bytes",
            "The body budget: most request-body bytes held at once (--max-buffered-bytes)",
            self.body_budget.clone(),
        );
        registry.register(
            "body_refusals",
            "Request bodies refused, by reason (too_large, timeout, budget_exhausted, aborted)",
            self.body_refusals.clone(),
        );
        registry.register(
            "crypto_jobs",
            "Crypto pool jobs since start, by outcome (completed, refused: queue full, abandoned: caller gone)",
            self.crypto_jobs.clone(),
        );
        registry.register(
            "crypto_jobs_in_flight",
            "Crypto pool jobs queued or running now",
            self.crypto_in_flight.clone(),
        );
        registry.register(
            "signature_checks",
            "Incoming x-jws-signatures checked, by outcome",
            self.signature_checks.clone(),
        );
        registry.register(
            "authorize",
            "/v1/authorize answers, by outcome",
            self.authorize.clone(),
        );
    }

    /// Reads the budget's and the pool's figures; called when `/metrics` is scraped.
    pub(super) fn refresh(&self) {
        if let Some(budget) = self.budget.get() {
            let bytes_read = budget.bytes_read();
            let counted = self.body_bytes_read.get();
            if bytes_read > counted {
                self.body_bytes_read.inc_by(bytes_read - counted);
            }
            self.body_buffered.set(gauge(budget.in_use() as u64));
            self.body_budget.set(gauge(budget.total() as u64));
            self.body_peak.set(gauge(budget.peak() as u64));
            for (reason, value) in budget.refusals() {
                let counter = self.body_refusals.get_or_create(&Reason {
                    reason: reason.into(),
                });
                let counted = counter.get();
                if value > counted {
                    counter.inc_by(value - counted);
                }
            }
        }
        if let Some(pool) = self.pool.get() {
            let stats = pool.stats();
            for (outcome, value) in [
                ("completed", stats.completed),
                ("refused", stats.refused),
                ("abandoned", stats.abandoned),
            ] {
                let counter = self.crypto_jobs.get_or_create(&Outcome {
                    outcome: outcome.into(),
                });
                let counted = counter.get();
                if value > counted {
                    counter.inc_by(value - counted);
                }
            }
            self.crypto_in_flight.set(gauge(stats.in_flight as u64));
        }
    }

    pub(super) fn observe(&self, budget: ByteBudget, pool: Arc<CryptoPool>) {
        let _ = self.budget.set(budget);
        let _ = self.pool.set(pool);
    }

    pub(super) fn signature_check(&self, outcome: SignatureOutcome) {
        self.signature_checks
            .get_or_create(&Outcome {
                outcome: outcome.as_str().into(),
            })
            .inc();
    }

    pub(super) fn authorize(&self, outcome: AuthorizeOutcome) {
        self.authorize
            .get_or_create(&Outcome {
                outcome: outcome.as_str().into(),
            })
            .inc();
    }
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
