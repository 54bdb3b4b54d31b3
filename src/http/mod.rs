//! The local HTTP surface.
//!
//! - [`router`] (this file) wires the routes and layers: `/v1/*` behind the [`guard`], plus `/healthz`,
//!   `/readyz` and `/metrics`, which need no `Metadata` header but, on the token port, a loopback `Host`.
//! - [`hot_path`]: the token read answered in front of the router, with the same guard and bytes.
//! - [`tokens`]: `GET /v1/token[/{entityId}]` and the forced refresh.
//! - [`health`]: health, readiness and metrics.
//! - [`guard`]: the SSRF / DNS-rebinding defence that cloud metadata servers use, as a layer per route
//!   group.
//! - [`body`]: the one way a handler reads a body: after the guard, within the cap, the byte budget and
//!   the deadline.
//! - [`rebit`]: ReBIT's error answer and the bounded scan for a request's `txnid`.
//! - [`reply`]: the JSON error shape and the headers every answer carries.
//! - [`server`]: the accept loop — connection cap, header timeout, graceful shutdown.
//! - [`verify`]: `GET|POST /v1/verify`, verification of incoming entity tokens; on the token listener
//!   (loopback `Host` rule only) and alone on `--verify-listen`.
//! - [`jws`]: `POST /v1/sign` (guarded, token port only), `/v1/verify-signature` and `/v1/authorize`
//!   (like the verify routes: `Host` rule on the token port, and on `--verify-listen`).
//! - [`fi`]: FI data encryption, `/v1/fi/*` (guarded) and rahasya's `/ecc/v1/*` (`Host` rule).

pub mod authorize;
pub mod body;
pub mod fi;
pub mod guard;
pub mod health;
pub mod hot_path;
pub mod jws;
pub mod rebit;
pub mod reply;
pub mod server;
pub mod tokens;
pub mod verify;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};

use crate::inbound::Verifier;
use crate::metrics::Metrics;
use crate::token::broker::Broker;
use body::BodyLimits;
pub use guard::GuardSettings;
use guard::{Guard, Level};
use hot_path::Frontend;
use verify::VerifyState;

/// What the handlers share.
pub struct AppState {
    pub broker: Broker,
    pub guard: GuardSettings,
    /// The registry `/metrics` renders; the guard counts its refusals in it.
    pub metrics: Arc<Metrics>,
    /// Verification of incoming tokens (`/v1/verify`), when configured.
    pub verifier: Option<Arc<Verifier>>,
    /// Signing and signature verification (`/v1/sign`, `/v1/verify-signature`, `/v1/authorize`).
    pub jws: Option<Arc<jws::JwsState>>,
    /// The body budget and deadline every route that reads a body uses.
    pub limits: BodyLimits,
    /// FI data encryption (`/v1/fi/*`, `/ecc/v1/*`).
    pub fi: Option<Arc<fi::FiState>>,
}

impl AppState {
    /// The verify routes' state on the token listener (with its `Host` rule, for the hot path).
    fn verify_state(&self) -> Option<Arc<VerifyState>> {
        self.verifier.clone().map(|verifier| {
            Arc::new(VerifyState {
                verifier,
                host_rule: Some(self.guard.clone()),
                limits: self.limits.clone(),
            })
        })
    }

    fn guard(&self, level: Level) -> Guard {
        Guard {
            level,
            settings: self.guard.clone(),
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// What the token listener serves: the hot path, then the [`router`].
pub fn frontend(state: Arc<AppState>) -> Frontend {
    Frontend::new(Arc::clone(&state), router(state))
}

/// What `--verify-listen` serves: the verification routes alone, never tokens, with no guard.
pub fn verify_frontend(
    verifier: Arc<Verifier>,
    jws: Option<Arc<jws::JwsState>>,
    limits: BodyLimits,
) -> Frontend {
    let state = Arc::new(VerifyState {
        verifier,
        host_rule: None,
        limits,
    });
    let router = verify::routes(Arc::clone(&state));
    let router = match jws {
        Some(jws) => router.merge(authorize::check_routes(jws)),
        None => router,
    };
    Frontend::verify_only(state, router.fallback(not_found))
}

/// The paths `--verify-listen` serves, for its help text and start-up log.
pub const VERIFY_LISTEN_ROUTES: &str =
    "/v1/verify, /v1/verify/{path}, /v1/verify-signature, /v1/authorize, /v1/authorize/{path}";

/// What `--admin-listen` serves: the [`admin_router`] alone.
pub fn admin_frontend(state: Arc<AppState>) -> Frontend {
    Frontend::router_only(admin_router(state))
}

/// The admin surface alone (`/healthz`, `/readyz`, `/metrics`), for `--admin-listen`: what Prometheus and
/// kubelet probes may reach on the pod IP, while tokens stay on loopback. No route reads a body.
pub fn admin_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(body::refuse_bodies))
        .with_state(state)
}

async fn not_found() -> axum::response::Response {
    reply::error(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> axum::response::Response {
    reply::error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

/// Builds the token listener's router: two route groups, each behind its guard layer ([`guard::enforce`]),
/// which runs before any handler, so before any body byte is read.
///
/// - routes that hand out or use a credential (tokens, signing): the whole caller guard;
/// - the rest (health, metrics, verification, and the `404` fallback): the `Host` rule.
///
/// No per-request timeout layer: a tokio timer per request measured as a wake-up (an eventfd write and a
/// futex) per request. Slow clients are cut off by the header read timeout and the body deadline (see
/// [`server`] and [`body`]), and a cold fetch is bounded by the IAM client's own timeouts.
pub fn router(state: Arc<AppState>) -> Router {
    let credentials: Router = Router::new()
        .route("/v1/token", get(tokens::get_default))
        .route("/v1/token/refresh", post(tokens::refresh_default))
        .route("/v1/token/{entity_id}", get(tokens::get_one))
        .route("/v1/token/{entity_id}/refresh", post(tokens::refresh_one))
        .layer(axum::middleware::from_fn(body::refuse_bodies))
        .with_state(Arc::clone(&state));
    let credentials = match &state.jws {
        Some(jws) => credentials.merge(jws::sign_routes(Arc::clone(jws))),
        None => credentials,
    };
    let credentials = match &state.fi {
        Some(fi) => credentials.merge(fi::caller_routes(Arc::clone(fi))),
        None => credentials,
    }
    .method_not_allowed_fallback(method_not_allowed)
    .layer(axum::middleware::from_fn_with_state(
        state.guard(Level::Caller),
        guard::enforce,
    ));
    let mut open: Router = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .layer(axum::middleware::from_fn(body::refuse_bodies))
        .with_state(Arc::clone(&state));
    if let Some(verify) = state.verify_state() {
        open = open.merge(verify::routes(verify));
    }
    if let Some(jws) = &state.jws {
        open = open.merge(authorize::check_routes(Arc::clone(jws)));
    }
    if let Some(fi) = &state.fi {
        open = open.merge(fi::rahasya_routes(Arc::clone(fi)));
    }
    let open = open
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.guard(Level::HostOnly),
            guard::enforce,
        ));
    credentials.merge(open)
}
