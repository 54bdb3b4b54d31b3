//! `POST /v1/sign[/{entityId}]`, `POST /v1/verify-signature` and `POST /v1/authorize`: `x-jws-signature`s
//! made with a key that never leaves the sidecar, and checked against the keys peers publish in the CR.
//!
//! - `sign` (token port only, behind the same caller guard as `/v1/token`): the body is the exact bytes the
//!   service will send; `200` with `x-jws-signature: <header>..<signature>` and `{"signature","kid"}`;
//!   `404 no_signing_key` for an entity without a key, `400 invalid_entity_id` for a path that is no id.
//! - `verify-signature?sender=ID&type=AA|FIU|FIP` with the received body and its `x-jws-signature`:
//!   `200 {"sender","kid"}`; `400 signature_mismatch` (→ ReBIT `SignatureDoesNotMatch`); `400
//!   unknown_sender`; `400 missing_signature`; `503 registry_unavailable` with `Retry-After`; `400
//!   bad_request` for a missing or repeated parameter, or a sender that is not an entity id (`..`,
//!   `a/b`: refused before the CR is asked).
//! - `authorize` (and `/v1/authorize/{original path}`, the form Envoy's `ext_authz` HTTP service sends):
//!   the whole inbound check of one request — the entity token from its headers (as `/v1/verify` reads
//!   them), the signature over its body by the token's entity. `200` with `X-AA-Entity-Id`/`X-AA-Role`;
//!   otherwise a ReBIT `ErrorResponse` that can go back to the peer as it is: `401 Unauthorized` (no valid
//!   token, or a sender the CR does not know), `400 InvalidRequest` (no signature, or one made with a key
//!   that is not the token entity's), `400 SignatureDoesNotMatch`, `503 ServiceUnavailable` (the CR cannot
//!   be asked and no key is held).
//!
//! Verification hands out nothing secret, so, like `/v1/verify`, it needs no `Metadata` header: on the
//! token port the loopback `Host` rule holds, and `--verify-listen` serves it with no guard. Bodies are
//! capped (`--max-body-bytes`): a declared length over the cap is refused with `413` before any of the
//! body is read, and a chunked body is cut off at the cap. Bodies and keys are never logged.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use tower_http::limit::RequestBodyLimitLayer;

use super::guard::{self, GuardSettings};
use super::reply;
use super::verify::{ENTITY_HEADER, ROLE_HEADER, token_from_headers};
use crate::entity::EntityId;
use crate::inbound::{Expectation, Verifier};
use crate::jws::{self, JwsError, SigningKeyFile};
use crate::metrics::Metrics;
use crate::registry::{Found, Registry, RegistryError, TYPES};

/// Default cap on a signed or verified body: FI data responses are large.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// The signature header.
pub const SIGNATURE: HeaderName = HeaderName::from_static(jws::SIGNATURE_HEADER);
/// The ReBIT API version written in error bodies.
const REBIT_VERSION: &str = "2.0.0";

/// What the signing and verification handlers share.
pub struct JwsState {
    /// Each entity with a signing key, in configuration order.
    pub signers: Vec<(EntityId, Arc<SigningKeyFile>)>,
    pub registry: Arc<Registry>,
    pub verifier: Arc<Verifier>,
    pub guard: GuardSettings,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
}

struct Routes {
    jws: Arc<JwsState>,
    /// The token port's `Host` rule; `None` on the verify listener.
    host_rule: bool,
}

/// The routes of the token port: sign (guarded), verify-signature and authorize (`Host` rule).
pub fn token_port_routes(state: Arc<JwsState>) -> Router {
    routes(state, true, true)
}

/// The routes of `--verify-listen`: verify-signature and authorize, no guard.
pub fn verify_port_routes(state: Arc<JwsState>) -> Router {
    routes(state, false, false)
}

fn routes(state: Arc<JwsState>, sign: bool, host_rule: bool) -> Router {
    let limit = state.max_body_bytes;
    let mut router = Router::new()
        .route("/v1/verify-signature", post(verify_signature))
        .route("/v1/authorize", post(authorize))
        .route("/v1/authorize/{*original}", any(authorize));
    if sign {
        router = router
            .route("/v1/sign", post(sign_default))
            .route("/v1/sign/{entity_id}", post(sign_one));
    }
    router
        .layer(DefaultBodyLimit::max(limit))
        .layer(RequestBodyLimitLayer::new(limit))
        .with_state(Arc::new(Routes {
            jws: state,
            host_rule,
        }))
}

fn host_refused(routes: &Routes, uri: &Uri, headers: &HeaderMap) -> Option<Response> {
    if !routes.host_rule {
        return None;
    }
    guard::check_host(uri, headers, &routes.jws.guard.allowed_hosts)
        .err()
        .map(|refusal| {
            routes.jws.metrics.guard_rejection(refusal.as_str());
            reply::error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the Host header must name a loopback address or an allowed host (or use --verify-listen)",
            )
        })
}

async fn sign_default(
    State(routes): State<Arc<Routes>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sign(&routes, &uri, &headers, None, &body)
}

async fn sign_one(
    State(routes): State<Arc<Routes>>,
    Path(entity_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sign(&routes, &uri, &headers, Some(&entity_id), &body)
}

fn sign(
    routes: &Routes,
    uri: &Uri,
    headers: &HeaderMap,
    entity_id: Option<&str>,
    body: &[u8],
) -> Response {
    let state = &routes.jws;
    if let Err(refusal) = guard::check_target(uri, &state.guard.allowed_hosts)
        .and_then(|()| guard::check(headers, &state.guard).map(drop))
    {
        state.metrics.guard_rejection(refusal.as_str());
        let message = match refusal {
            guard::Refusal::MissingMetadataHeader => {
                "requests for signatures must carry the header `Metadata: true`"
            }
            guard::Refusal::Forwarded => {
                "requests that passed through a proxy (Forwarded / X-Forwarded-For) are refused"
            }
            guard::Refusal::Host => {
                "the Host header must name a loopback address or an allowed host"
            }
        };
        return reply::error(StatusCode::FORBIDDEN, "forbidden", message);
    }
    let signer = match (entity_id, state.signers.as_slice()) {
        (Some(id), signers) => signers.iter().find(|(e, _)| e.as_str() == id),
        (None, [only]) => Some(only),
        (None, []) => None,
        (None, _) => {
            return reply::error(
                StatusCode::BAD_REQUEST,
                "entity_required",
                "several entities sign; use /v1/sign/{entityId}",
            );
        }
    };
    let Some((entity, file)) = signer else {
        // Told apart only on this miss path, so a configured id costs nothing more.
        if let Some(Err(e)) = entity_id.map(EntityId::parse) {
            return reply::error(
                StatusCode::BAD_REQUEST,
                "invalid_entity_id",
                format!("the path does not name an entity id: {e}"),
            );
        }
        return reply::error(
            StatusCode::NOT_FOUND,
            "no_signing_key",
            "no signing key is configured for that entity (--signing-key-file)",
        );
    };
    let key = match file.key() {
        Ok(key) => key,
        Err(e) => {
            tracing::error!(entity = %entity, error = %e, "signing key unavailable");
            return reply::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "signing_key_unavailable",
                "the signing key file cannot be read or parsed; see the broker's log",
            );
        }
    };
    let signature = match key.sign(body) {
        Ok(signature) => signature,
        Err(e) => {
            return reply::error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string());
        }
    };
    let json = serde_json::json!({ "signature": signature, "kid": key.kid() });
    let mut response = (StatusCode::OK, axum::Json(json)).into_response();
    if let Ok(value) = HeaderValue::from_str(&signature) {
        response.headers_mut().insert(SIGNATURE, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// How one signature check ended.
enum Checked {
    Valid {
        kid: Option<String>,
    },
    Missing,
    Mismatch(JwsError),
    /// The sender has no key with the `kid` the signature names.
    ForeignKey,
    UnknownSender,
    Unavailable(std::time::Duration),
}

/// Parses the signature header and verifies it over `body` with `sender`'s key from the CR.
async fn check(
    state: &JwsState,
    kind: &str,
    sender: &EntityId,
    headers: &HeaderMap,
    body: &[u8],
) -> Checked {
    let mut values = headers.get_all(&SIGNATURE).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Checked::Missing,
        (Some(value), None) => value,
        (Some(_), Some(_)) => return Checked::Mismatch(JwsError::NotDetached),
    };
    let detached = match jws::parse(value.as_bytes()) {
        Ok(detached) => detached,
        Err(e) => return Checked::Mismatch(e),
    };
    let found = state
        .registry
        .key_for(kind, sender.as_str(), detached.kid.as_deref())
        .await;
    let choice = match found {
        Ok(Found::Key(choice)) => choice,
        Ok(Found::NoSuchKid) => return Checked::ForeignKey,
        Err(RegistryError::UnknownSender(_)) => return Checked::UnknownSender,
        Err(RegistryError::Unavailable { retry_after, .. }) => {
            return Checked::Unavailable(retry_after);
        }
    };
    match jws::verify(&detached, &choice.key, body) {
        Ok(()) => Checked::Valid {
            kid: choice.kid.clone(),
        },
        Err(e) => {
            tracing::debug!(
                sender = sender.as_str(),
                kind,
                reason = e.as_str(),
                "incoming signature refused"
            );
            Checked::Mismatch(e)
        }
    }
}

fn sender_type(raw: &str) -> Option<&'static str> {
    TYPES
        .into_iter()
        .find(|t| t.eq_ignore_ascii_case(raw.trim()))
}

async fn verify_signature(
    State(routes): State<Arc<Routes>>,
    uri: Uri,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    if let Some(refused) = host_refused(&routes, &uri, &headers) {
        return refused;
    }
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or("")).unwrap_or_default();
    let one = |name: &str| {
        let mut found = pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str());
        match (found.next(), found.next()) {
            (Some(v), None) => Some(v),
            _ => None,
        }
    };
    // The id becomes a path segment of a CR request made with our token: outside the grammar (`..`,
    // `a/b`, `x?y`) it is refused here, before anything is asked.
    let sender = match one("sender").map(|s| EntityId::parse(s.trim())) {
        Some(Ok(sender)) => sender,
        Some(Err(e)) => {
            return reply::error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("the sender is not an entity id: {e}"),
            );
        }
        None => {
            return reply::error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "give the sender's entity id once: ?sender=ID&type=AA|FIU|FIP",
            );
        }
    };
    let Some(kind) = one("type").and_then(sender_type) else {
        return reply::error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "give the sender's type once: AA, FIU or FIP",
        );
    };
    match check(&routes.jws, kind, &sender, &headers, &body).await {
        Checked::Valid { kid } => {
            axum::Json(serde_json::json!({ "sender": sender.as_str(), "kid": kid })).into_response()
        }
        Checked::Missing => reply::error(
            StatusCode::BAD_REQUEST,
            "missing_signature",
            "the request has no x-jws-signature header",
        ),
        Checked::Mismatch(e) => {
            reply::error(StatusCode::BAD_REQUEST, "signature_mismatch", e.to_string())
        }
        Checked::ForeignKey => reply::error(
            StatusCode::BAD_REQUEST,
            "signature_mismatch",
            "the signature names a kid the sender has not registered in the CR",
        ),
        Checked::UnknownSender => reply::error(
            StatusCode::BAD_REQUEST,
            "unknown_sender",
            "the Central Registry has no usable key for the sender (or does not show it to this entity)",
        ),
        Checked::Unavailable(wait) => reply::unavailable(
            "registry_unavailable",
            "the Central Registry cannot be asked and no key for the sender is held",
            wait,
        ),
    }
}

/// The ReBIT `ErrorResponse`, echoing the request's `txnid` when its body is JSON with one.
fn rebit_error(status: StatusCode, code: &str, message: &str, body: &[u8]) -> Response {
    let txnid = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("txnid").and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_default();
    let json = serde_json::json!({
        "ver": REBIT_VERSION,
        "timestamp": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        "txnid": txnid,
        "errorCode": code,
        "errorMsg": message,
    });
    let mut response = (status, axum::Json(json)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn authorize(
    State(routes): State<Arc<Routes>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = host_refused(&routes, &uri, &headers) {
        return refused;
    }
    let state = &routes.jws;
    let unauthorized =
        |message: &str| rebit_error(StatusCode::UNAUTHORIZED, "Unauthorized", message, &body);
    let token = match token_from_headers(&headers) {
        Ok(Some(token)) if !token.is_empty() => token,
        Ok(_) => return unauthorized("the request carries no entity token"),
        Err(rejection) => {
            state.verifier.record_rejection(rejection);
            return unauthorized(rejection.message());
        }
    };
    let verified = match state.verifier.verify(token, &Expectation::default()).await {
        Ok(verified) => verified,
        Err(denied) => return unauthorized(&denied.to_string()),
    };
    let Some(kind) = verified.roles.iter().find_map(|r| sender_type(r)) else {
        return unauthorized("the token's role is not AA, FIU or FIP");
    };
    let sender = verified.entity_id.as_str();
    let bad_request =
        |code: &str, message: &str| rebit_error(StatusCode::BAD_REQUEST, code, message, &body);
    match check(state, kind, &verified.entity_id, &headers, &body).await {
        Checked::Valid { .. } => {}
        Checked::Missing => return bad_request("InvalidRequest", "x-jws-signature is missing"),
        Checked::Mismatch(e) => return bad_request("SignatureDoesNotMatch", &e.to_string()),
        Checked::ForeignKey => {
            return bad_request(
                "InvalidRequest",
                "the body is signed with a key that is not registered to the token's entity",
            );
        }
        Checked::UnknownSender => {
            return unauthorized("the token's entity has no usable key in the Central Registry");
        }
        Checked::Unavailable(wait) => {
            let mut response = rebit_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the Central Registry cannot be asked and no key for the sender is held",
                &body,
            );
            let secs = wait.as_secs().max(1);
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
    }
    let role = verified.role();
    let mut response = axum::Json(serde_json::json!({
        "entityId": sender,
        "role": role,
    }))
    .into_response();
    let out = response.headers_mut();
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(sender) {
        out.insert(ENTITY_HEADER, value);
    }
    if let Ok(value) = HeaderValue::from_str(&role) {
        out.insert(ROLE_HEADER, value);
    }
    response
}
