//! The FI routes: ReBIT's FI data encryption with the ephemeral private key held in the sidecar.
//!
//! - behind the caller guard (like `/v1/token`): `POST /v1/fi/key-material[/{entityId}]`,
//!   `POST /v1/fi/decrypt` (single or batch), `POST /v1/fi/encrypt`;
//! - behind the `Host` rule only (rahasya's clients send no `Metadata` header; the key handle is the
//!   capability, and a key made without one is harmless): rahasya's `GET /ecc/v1/generateKey[/{entityId}]`,
//!   `POST /ecc/v1/encrypt`, `POST /ecc/v1/decrypt`, in rahasya's JSON shapes, errors in its `errorInfo`
//!   object but with a 4xx status.
//!
//! Every body is read with [`body::read`] after the guard, within the FI cap, the shared byte budget and the
//! body deadline. The work — JSON, base64, ECDH, HKDF, AES-GCM — runs on the [`CryptoPool`] inside the
//! request's own buffer ([`crate::fi::wire`]), and the answer is sent from that buffer, which keeps its
//! bytes counted in the budget until the answer has been handed to the connection. Without a KEK every
//! route answers `404 fi_disabled`. Errors are `400` with `{"error","message"}`; never a `200` with an
//! error inside (a batch reports each item's), never a `500` on input. Nothing here logs a body, a key or
//! a handle.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::body::{self, BodyLimits};
use super::guard::CallerAllowed;
use super::reply;
use crate::budget::BudgetPermit;
use crate::crypto_pool::{CryptoPool, PoolError};
use crate::fi::wire::{Fi, Report};
use crate::fi::{Code, Expired, FiError};
use crate::metrics::Metrics;

/// Largest body of `/v1/fi/key-material` (`{"expiryHours": N}`).
const KEY_MATERIAL_BODY_BYTES: usize = 4096;
/// An answer is handed to the connection in slices of this size, so that its budget is held until the
/// last one is taken (the connection takes a slice only when it has written the one before).
const SLICE: usize = 256 * 1024;
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What the FI handlers share.
pub struct FiState {
    pub fi: Arc<Fi>,
    pub metrics: Arc<Metrics>,
    pub limits: BodyLimits,
    pub pool: Arc<CryptoPool>,
    pub max_body_bytes: usize,
}

/// The routes behind the caller guard.
pub fn caller_routes(state: Arc<FiState>) -> Router {
    Router::new()
        .route("/v1/fi/key-material", post(key_material_default))
        .route("/v1/fi/key-material/{entity_id}", post(key_material_one))
        .route("/v1/fi/decrypt", post(decrypt))
        .route("/v1/fi/encrypt", post(encrypt))
        .with_state(state)
}

/// rahasya's routes, behind the `Host` rule.
pub fn rahasya_routes(state: Arc<FiState>) -> Router {
    let generate = Router::new()
        .route("/ecc/v1/generateKey", get(generate_default))
        .route("/ecc/v1/generateKey/{entity_id}", get(generate_one))
        .layer(axum::middleware::from_fn(body::refuse_bodies));
    Router::new()
        .route("/ecc/v1/encrypt", post(ecc_encrypt))
        .route("/ecc/v1/decrypt", post(ecc_decrypt))
        .merge(generate)
        .with_state(state)
}

/// How errors are shaped: ours, or rahasya's.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Ours,
    Rahasya,
    RahasyaKeyPair,
}

fn status(code: Code) -> StatusCode {
    match code {
        Code::UnknownEntity => StatusCode::NOT_FOUND,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

fn error_response(shape: Shape, status: StatusCode, code: &str, message: &str) -> Response {
    match shape {
        Shape::Ours => reply::error(status, code, message),
        Shape::Rahasya | Shape::RahasyaKeyPair => {
            let error = serde_json::json!({ "errorCode": code, "errorMessage": message });
            let body = if shape == Shape::Rahasya {
                serde_json::json!({ "base64Data": "", "errorInfo": error })
            } else {
                serde_json::json!({ "privateKey": "", "KeyMaterial": null, "errorInfo": error })
            };
            reply::no_store((status, axum::Json(body)).into_response())
        }
    }
}

impl FiState {
    fn refuse(&self, route: &'static str, shape: Shape, error: &FiError) -> Response {
        self.metrics.fi_request(route, error.code());
        match error.kind {
            Code::KeyExpired(Expired::Handle) => self.metrics.fi_key_expired("handle"),
            Code::KeyExpired(Expired::Remote) => self.metrics.fi_key_expired("remote"),
            _ => {}
        }
        error_response(shape, status(error.kind), error.code(), &error.message)
    }

    fn disabled(&self, route: &'static str, shape: Shape) -> Response {
        self.metrics.fi_request(route, "fi_disabled");
        error_response(
            shape,
            StatusCode::NOT_FOUND,
            "fi_disabled",
            "FI encryption is off: no key-encryption key is configured (--fi-kek-file)",
        )
    }

    fn pool_error(&self, route: &'static str, shape: Shape, error: PoolError) -> Response {
        match error {
            PoolError::Busy => {
                self.metrics.fi_request(route, "busy");
                let mut response = error_response(
                    shape,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "the broker is busy with other cryptography; try again shortly",
                );
                if let Ok(value) = HeaderValue::from_str(&BUSY_RETRY_AFTER.as_secs().to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                response
            }
            PoolError::Failed => self.refuse(route, shape, &FiError::internal("the FI job failed")),
        }
    }
}

async fn key_material_default(
    _: CallerAllowed,
    State(state): State<Arc<FiState>>,
    body: Body,
) -> Response {
    key_material(state, None, body).await
}

async fn key_material_one(
    _: CallerAllowed,
    State(state): State<Arc<FiState>>,
    Path(entity_id): Path<String>,
    body: Body,
) -> Response {
    key_material(state, Some(entity_id), body).await
}

async fn key_material(state: Arc<FiState>, entity: Option<String>, body: Body) -> Response {
    const ROUTE: &str = "key_material";
    if !state.fi.enabled() {
        return state.disabled(ROUTE, Shape::Ours);
    }
    let buffered = match body::read(body, b"", KEY_MATERIAL_BODY_BYTES, &state.limits).await {
        Ok(buffered) => buffered,
        Err(error) => {
            state.metrics.fi_request(ROUTE, "body_refused");
            return error.response();
        }
    };
    let fi = Arc::clone(&state.fi);
    let job = state
        .pool
        .run(move || fi.key_material(entity.as_deref(), buffered.body(), SystemTime::now()))
        .await;
    small_answer(&state, ROUTE, Shape::Ours, job)
}

async fn generate_default(_: CallerAllowed, State(state): State<Arc<FiState>>) -> Response {
    generate(state, None).await
}

async fn generate_one(
    _: CallerAllowed,
    State(state): State<Arc<FiState>>,
    Path(entity_id): Path<String>,
) -> Response {
    generate(state, Some(entity_id)).await
}

async fn generate(state: Arc<FiState>, entity: Option<String>) -> Response {
    const ROUTE: &str = "ecc_generate_key";
    if !state.fi.enabled() {
        return state.disabled(ROUTE, Shape::RahasyaKeyPair);
    }
    let fi = Arc::clone(&state.fi);
    let job = state
        .pool
        .run(move || fi.generate_key(entity.as_deref(), SystemTime::now()))
        .await;
    small_answer(&state, ROUTE, Shape::RahasyaKeyPair, job)
}

fn small_answer(
    state: &FiState,
    route: &'static str,
    shape: Shape,
    job: Result<Result<Vec<u8>, FiError>, PoolError>,
) -> Response {
    match job {
        Ok(Ok(json)) => {
            state.metrics.fi_request(route, "ok");
            json_response(Body::from(json))
        }
        Ok(Err(error)) => state.refuse(route, shape, &error),
        Err(error) => state.pool_error(route, shape, error),
    }
}

fn json_response(body: Body) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    reply::no_store(response)
}

type Operation = fn(&Fi, &mut Vec<u8>, SystemTime) -> Result<Report, FiError>;

async fn decrypt(_: CallerAllowed, State(state): State<Arc<FiState>>, body: Body) -> Response {
    transform(state, "decrypt", Shape::Ours, body, Fi::decrypt).await
}

async fn encrypt(_: CallerAllowed, State(state): State<Arc<FiState>>, body: Body) -> Response {
    transform(state, "encrypt", Shape::Ours, body, Fi::encrypt).await
}

async fn ecc_decrypt(_: CallerAllowed, State(state): State<Arc<FiState>>, body: Body) -> Response {
    transform(
        state,
        "ecc_decrypt",
        Shape::Rahasya,
        body,
        |fi, buf, now| fi.rahasya(buf, false, now),
    )
    .await
}

async fn ecc_encrypt(_: CallerAllowed, State(state): State<Arc<FiState>>, body: Body) -> Response {
    transform(
        state,
        "ecc_encrypt",
        Shape::Rahasya,
        body,
        |fi, buf, now| fi.rahasya(buf, true, now),
    )
    .await
}

/// Reads the body within its limits, works on it in place on the pool, answers from the same buffer.
async fn transform(
    state: Arc<FiState>,
    route: &'static str,
    shape: Shape,
    body: Body,
    operation: Operation,
) -> Response {
    if !state.fi.enabled() {
        return state.disabled(route, shape);
    }
    let buffered = match body::read(body, b"", state.max_body_bytes, &state.limits).await {
        Ok(buffered) => buffered,
        Err(error) => {
            state.metrics.fi_request(route, "body_refused");
            return error.response();
        }
    };
    let (buf, _, mut permit) = buffered.into_parts();
    let fi = Arc::clone(&state.fi);
    let job = state
        .pool
        .run(move || {
            let mut buf = buf;
            let result = operation(&fi, &mut buf, SystemTime::now());
            (buf, result)
        })
        .await;
    match job {
        Ok((buf, Ok(report))) => {
            state.metrics.fi_request(route, "ok");
            for item in report.items {
                state
                    .metrics
                    .fi_item(item.map_or("ok", |code| code.as_str()));
            }
            // An answer longer than its request (a small payload's KeyMaterial) takes the difference too.
            let budget = permit.budget().clone();
            if budget.grow(&mut permit, buf.len()).await.is_err() {
                tracing::debug!(
                    route,
                    "an FI answer is sent beyond the body budget (the budget stayed in use)"
                );
            }
            json_response(Body::new(Held {
                data: Bytes::from(buf),
                _permit: permit,
            }))
        }
        Ok((_, Err(error))) => state.refuse(route, shape, &error),
        Err(error) => state.pool_error(route, shape, error),
    }
}

/// An answer's bytes and the budget they hold, handed out in slices; the budget goes back when the last
/// slice has been taken (or the connection dropped the answer).
struct Held {
    data: Bytes,
    _permit: BudgetPermit,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.data.is_empty() {
            return Poll::Ready(None);
        }
        let take = SLICE.min(self.data.len());
        let slice = self.data.split_to(take);
        Poll::Ready(Some(Ok(Frame::data(slice))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.len() as u64)
    }
}
