//! The local HTTP surface.
//!
//! - [`router`] (this file) wires the routes and layers: `/v1/*` behind the [`guard`], plus `/healthz`,
//!   `/readyz` and `/metrics`, which need no `Metadata` header but, on the token port, a loopback `Host`.
//! - [`hot_path`]: the token read answered in front of the router, with the same guard and bytes.
//! - [`tokens`]: `GET /v1/token[/{entityId}]` and the forced refresh.
//! - [`health`]: health, readiness and metrics.
//! - [`guard`]: the SSRF / DNS-rebinding defence that cloud metadata servers use.
//! - [`reply`]: the JSON error shape and the headers every answer carries.
//! - [`server`]: the accept loop — connection cap, header timeout, graceful shutdown.
//! - [`verify`]: `GET|POST /v1/verify`, verification of incoming entity tokens; on the token listener
//!   (loopback `Host` rule only) and alone on `--verify-listen`.
//! - [`jws`]: `POST /v1/sign` (guarded, token port only), `/v1/verify-signature` and `/v1/authorize`
//!   (like the verify routes: `Host` rule on the token port, and on `--verify-listen`).

pub mod guard;
pub mod health;
pub mod hot_path;
pub mod jws;
pub mod reply;
pub mod server;
pub mod tokens;
pub mod verify;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use tower_http::limit::RequestBodyLimitLayer;

use crate::inbound::Verifier;
use crate::metrics::Metrics;
use crate::token::broker::Broker;
pub use guard::GuardSettings;
use hot_path::Frontend;

/// Largest request body accepted. Every route takes an empty body.
pub const MAX_BODY_BYTES: usize = 1024;

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
}

/// What the token listener serves: the hot path, then the [`router`].
pub fn frontend(state: Arc<AppState>) -> Frontend {
    Frontend::new(Arc::clone(&state), router(state))
}

/// What `--verify-listen` serves: the verify routes alone ([`verify::only_router`]), never tokens.
pub fn verify_frontend(verifier: Arc<Verifier>, jws: Option<Arc<jws::JwsState>>) -> Frontend {
    let router = verify::only_router(Arc::clone(&verifier));
    let router = match jws {
        Some(jws) => router.merge(jws::verify_port_routes(jws)),
        None => router,
    };
    Frontend::verify_only(verifier, router)
}

/// What `--admin-listen` serves: the [`admin_router`] alone.
pub fn admin_frontend(state: Arc<AppState>) -> Frontend {
    Frontend::router_only(admin_router(state))
}

/// The admin surface alone (`/healthz`, `/readyz`, `/metrics`), for `--admin-listen`: what Prometheus and
/// kubelet probes may reach on the pod IP, while tokens stay on loopback.
pub fn admin_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(|| async { reply::error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .with_state(state)
}

/// Builds the broker's router.
///
/// No per-request timeout layer: a tokio timer per request measured as a wake-up (an eventfd write and a
/// futex) per request. Nothing here can take long anyway: slow clients are cut off by the header read
/// timeout (see [`server`]), and the only slow step, a cold fetch, is bounded by the IAM client's own
/// connect and request timeouts.
pub fn router(state: Arc<AppState>) -> Router {
    // The verify routes have their own body limit (a token in JSON exceeds 1 KiB) and no caller guard
    // but the Host rule, so they join after the layer below, which wraps only the routes before it.
    let verify = state
        .verifier
        .clone()
        .map(|verifier| verify::routes(verifier, Some(state.guard.clone())));
    let signatures = state.jws.clone().map(jws::token_port_routes);
    let router = Router::new()
        .route("/v1/token", get(tokens::get_default))
        .route("/v1/token/refresh", post(tokens::refresh_default))
        .route("/v1/token/{entity_id}", get(tokens::get_one))
        .route("/v1/token/{entity_id}/refresh", post(tokens::refresh_one))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(|| async { reply::error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            reply::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            guard::host_only,
        ))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .with_state(state);
    let router = match verify {
        Some(verify) => router.merge(verify),
        None => router,
    };
    match signatures {
        Some(signatures) => router.merge(signatures),
        None => router,
    }
}
