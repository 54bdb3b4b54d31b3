//! `POST /v1/sign[/{entityId}]` and `POST /v1/verify-signature`, and the signature check `/v1/authorize`
//! uses: `x-jws-signature`s
//! made with a key that never leaves the sidecar, and checked against the keys peers publish in the CR.
//!
//! - `sign` (token port only, behind the caller guard, like `/v1/token`): the body is the exact bytes the
//!   service will send; `200` with `x-jws-signature: <header>..<signature>` and `{"signature","kid"}`;
//!   `404 no_signing_key` for an entity without a key, `400 invalid_entity_id` for a path that is no id.
//! - `verify-signature?sender=ID&type=AA|FIU|FIP` with the received body and its `x-jws-signature`:
//!   `200 {"sender","kid"}`; `400 signature_mismatch` (→ ReBIT `SignatureDoesNotMatch`); `400
//!   unknown_sender`; `400 missing_signature`; `503 registry_unavailable` with `Retry-After`; `400
//!   bad_request` for a missing or repeated parameter, or a sender that is not an entity id (`..`,
//!   `a/b`: refused before the CR is asked).
//! - `authorize` ([`super::authorize`], which also mounts `verify-signature` beside its own routes) uses
//!   the signature check of this file (`check`); nothing here depends on it.
//!
//! Verification hands out nothing secret, so, like `/v1/verify`, it needs no `Metadata` header: on the
//! token port the loopback `Host` rule holds (a layer, [`super::guard`]), and `--verify-listen` serves it
//! with no guard.
//!
//! Order of work, cheapest refusal first: everything that can be decided from the head — the token, the
//! signature header, the sender's key — is decided before any body byte is read ([`super::body`]); the
//! body is then read after the signature's header segment, so the buffer *is* the signing input; the RSA
//! work runs on the [`CryptoPool`]. A refused request has at most its first 64 KiB read, for the `txnid`
//! of the ReBIT error ([`super::rebit`]). Bodies and keys are never logged.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::body::{self, BodyError, BodyLimits, Buffered};
use super::guard::CallerAllowed;
use super::reply;
use crate::crypto_pool::{CryptoPool, PoolError};
use crate::entity::{EntityId, Role};
use crate::inbound::Verifier;
use crate::jws::{self, JwsError, SigningKeyFile};
use crate::metrics::Metrics;
use crate::metrics::edge::SignatureOutcome;
use crate::metrics::signing::SignOutcome;
use crate::rebit::envelope::EnvelopeRules;
use crate::registry::{EntityKey, Found, Registry, RegistryError};
use crate::token::broker::Broker;

/// Default cap on a signed or verified body: FI data responses are large.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// The signature header.
pub const SIGNATURE: HeaderName = HeaderName::from_static(jws::SIGNATURE_HEADER);
/// `Retry-After` when the crypto pool or the body budget is full.
pub(super) const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What the signing and verification handlers share.
pub struct JwsState {
    /// Each entity with a signing key, in configuration order.
    pub signers: Vec<(EntityId, Arc<SigningKeyFile>)>,
    pub registry: Arc<Registry>,
    pub verifier: Arc<Verifier>,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    pub limits: BodyLimits,
    pub pool: Arc<CryptoPool>,
    /// The broker, for our own entity's role (read from its token).
    pub broker: Broker,
    /// Our entity on this listener: its role decides who may call, its key signs `/v1/authorize`'s errors.
    pub own: EntityId,
    /// `--authorize-roles`: the roles accepted as callers, instead of those that follow our own role.
    pub authorize_roles: Option<Vec<Role>>,
    /// The envelope rules of `/v1/authorize/{ReBIT path}` (`--rebit-versions`, `--rebit-timestamp-window`).
    pub envelope: EnvelopeRules,
    /// `--authorize-path-prefix`: a base path the proxy strips from the ReBIT paths it guards.
    pub path_prefix: Option<String>,
}

impl JwsState {
    /// Our entity's roles, from the token held for it (none while no token is held).
    pub fn own_roles(&self) -> Vec<Role> {
        self.broker
            .held(&self.own)
            .map(|served| served.token.roles.clone())
            .unwrap_or_default()
    }

    /// Our entity's signing key file, when it has one.
    pub fn own_signer(&self) -> Option<&Arc<SigningKeyFile>> {
        self.signers
            .iter()
            .find(|(entity, _)| *entity == self.own)
            .map(|(_, file)| file)
    }
}

/// `/v1/sign[/{entityId}]`: for the token port, behind the caller guard.
pub fn sign_routes(state: Arc<JwsState>) -> Router {
    Router::new()
        .route("/v1/sign", post(sign_default))
        .route("/v1/sign/{entity_id}", post(sign_one))
        .with_state(state)
}

async fn sign_default(
    _: CallerAllowed,
    State(state): State<Arc<JwsState>>,
    body: Body,
) -> Response {
    sign(&state, None, body).await
}

async fn sign_one(
    _: CallerAllowed,
    State(state): State<Arc<JwsState>>,
    Path(entity_id): Path<String>,
    body: Body,
) -> Response {
    sign(&state, Some(&entity_id), body).await
}

async fn sign(state: &JwsState, entity_id: Option<&str>, body: Body) -> Response {
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
    let outcome = |outcome| state.metrics.sign_request(entity, outcome);
    let key = match file.key() {
        Ok(key) => key,
        Err(e) => {
            outcome(SignOutcome::KeyUnavailable);
            tracing::error!(entity = %entity, error = %e, "signing key unavailable");
            return reply::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "signing_key_unavailable",
                "the signing key file cannot be read or parsed; see the broker's log",
            );
        }
    };
    let prefix = format!("{}.", key.header());
    let buffered =
        match body::read(body, prefix.as_bytes(), state.max_body_bytes, &state.limits).await {
            Ok(buffered) => buffered,
            Err(error) => {
                outcome(SignOutcome::BodyRefused);
                return error.response();
            }
        };
    let kid = key.kid().to_string();
    let signed = state
        .pool
        .run(move || key.sign_input(buffered.with_prefix()))
        .await;
    let signature = match signed {
        Ok(Ok(signature)) => signature,
        Ok(Err(e)) => {
            outcome(SignOutcome::Failed);
            return reply::error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string());
        }
        Err(PoolError::Busy) => {
            outcome(SignOutcome::Busy);
            return busy();
        }
        Err(PoolError::Failed) => {
            outcome(SignOutcome::Failed);
            return reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "signing failed",
            );
        }
    };
    outcome(SignOutcome::Signed);
    let json = serde_json::json!({ "signature": signature, "kid": kid });
    let mut response = (StatusCode::OK, axum::Json(json)).into_response();
    if let Ok(value) = HeaderValue::from_str(&signature) {
        response.headers_mut().insert(SIGNATURE, value);
    }
    reply::no_store(response)
}

pub(super) fn busy() -> Response {
    reply::unavailable(
        "busy",
        "the broker is busy with other signatures; try again shortly",
        BUSY_RETRY_AFTER,
    )
}

/// A parsed `x-jws-signature`, owned so that it can travel to the crypto pool.
pub(super) struct Signature {
    /// `<header segment>.`: what precedes the body in the signing input.
    pub(super) prefix: String,
    pub(super) kid: Option<String>,
    pub(super) bytes: Vec<u8>,
}

/// How one signature check ended.
pub(super) enum Checked {
    Valid {
        kid: Option<String>,
    },
    Missing,
    Mismatch(JwsError),
    /// The sender has no key with the `kid` the signature names.
    ForeignKey,
    UnknownSender,
    Unavailable(Duration),
    /// The crypto pool's queue is full.
    Busy,
    /// The body could not be read within its limits.
    Body(BodyError),
}

impl Checked {
    fn outcome(&self) -> Option<SignatureOutcome> {
        Some(match self {
            Checked::Valid { .. } => SignatureOutcome::Valid,
            Checked::Missing => SignatureOutcome::Missing,
            Checked::Mismatch(_) => SignatureOutcome::Mismatch,
            Checked::ForeignKey => SignatureOutcome::ForeignKey,
            Checked::UnknownSender => SignatureOutcome::UnknownSender,
            Checked::Unavailable(_) => SignatureOutcome::Unavailable,
            Checked::Busy => SignatureOutcome::Busy,
            Checked::Body(_) => return None,
        })
    }
}

/// The request's one `x-jws-signature`, parsed into what travels to the crypto pool.
pub(super) fn parse_signature(headers: &HeaderMap) -> Result<Signature, Checked> {
    let mut values = headers.get_all(&SIGNATURE).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Err(Checked::Missing),
        (Some(value), None) => value,
        (Some(_), Some(_)) => return Err(Checked::Mismatch(JwsError::NotDetached)),
    };
    let detached = jws::parse(value.as_bytes()).map_err(Checked::Mismatch)?;
    Ok(Signature {
        prefix: format!("{}.", detached.header_segment),
        kid: detached.kid,
        bytes: detached.signature,
    })
}

/// What can be known before the body: the signature header parsed, and `sender`'s key for its `kid`.
pub(super) async fn signature_and_key(
    state: &JwsState,
    role: Role,
    sender: &str,
    headers: &HeaderMap,
) -> Result<(Signature, Arc<EntityKey>), Checked> {
    let signature = parse_signature(headers)?;
    match state
        .registry
        .key_for(role, sender, signature.kid.as_deref())
        .await
    {
        Ok(Found::Key(key)) => Ok((signature, key)),
        Ok(Found::NoSuchKid) => Err(Checked::ForeignKey),
        Err(RegistryError::UnknownSender(_)) => Err(Checked::UnknownSender),
        Err(RegistryError::Unavailable { retry_after, .. }) => {
            Err(Checked::Unavailable(retry_after))
        }
    }
}

/// Reads the body after the signature's header segment and verifies it on the crypto pool. Returns the
/// body when it was read (for the `txnid` of an error answer).
async fn verify_body(
    state: &JwsState,
    signature: Signature,
    key: Arc<EntityKey>,
    body: Body,
) -> (Checked, Option<Buffered>) {
    let buffered = match body::read(
        body,
        signature.prefix.as_bytes(),
        state.max_body_bytes,
        &state.limits,
    )
    .await
    {
        Ok(buffered) => buffered,
        Err(error) => return (Checked::Body(error), None),
    };
    let kid = key.kid.clone();
    let verified = state
        .pool
        .run(move || {
            let valid = key.key.verify(buffered.with_prefix(), &signature.bytes);
            (valid, buffered)
        })
        .await;
    match verified {
        Ok((true, buffered)) => (Checked::Valid { kid }, Some(buffered)),
        Ok((false, buffered)) => (Checked::Mismatch(JwsError::Mismatch), Some(buffered)),
        Err(PoolError::Busy) => (Checked::Busy, None),
        Err(PoolError::Failed) => (Checked::Mismatch(JwsError::Mismatch), None),
    }
}

/// Whether `buffered` (a body read after its signature's header segment) verifies with `key`: on the
/// crypto pool. `None` when the pool is full. The body comes back either way.
pub(super) async fn verifies_with(
    state: &JwsState,
    key: Arc<EntityKey>,
    signature: Vec<u8>,
    buffered: Buffered,
) -> Option<(bool, Buffered)> {
    state
        .pool
        .run(move || {
            let valid = key.key.verify(buffered.with_prefix(), &signature);
            (valid, buffered)
        })
        .await
        .ok()
}

/// The whole check of one signed body by `sender`.
pub(super) async fn check(
    state: &JwsState,
    role: Role,
    sender: &str,
    headers: &HeaderMap,
    body: Body,
) -> (Checked, Option<Buffered>, Option<Body>) {
    let checked = match signature_and_key(state, role, sender, headers).await {
        Ok((signature, key)) => {
            let (checked, buffered) = verify_body(state, signature, key, body).await;
            if let Checked::Mismatch(e) = &checked {
                tracing::debug!(
                    sender,
                    kind = role.as_str(),
                    reason = e.as_str(),
                    "incoming signature refused"
                );
            }
            (checked, buffered, None)
        }
        Err(refused) => (refused, None, Some(body)),
    };
    if let Some(outcome) = checked.0.outcome() {
        state.metrics.signature_check(outcome);
    }
    checked
}

pub(super) async fn verify_signature(
    State(state): State<Arc<JwsState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Body,
) -> Response {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or("")).unwrap_or_default();
    if let Some((unknown, _)) = pairs.iter().find(|(k, _)| k != "sender" && k != "type") {
        return reply::error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("unknown query parameter {unknown:?}: the parameters are sender and type"),
        );
    }
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
    let Some(role) = one("type").and_then(Role::parse) else {
        return reply::error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "give the sender's type once: AA, FIU or FIP",
        );
    };
    let (checked, _, _) = check(&state, role, sender.as_str(), &headers, body).await;
    match checked {
        Checked::Valid { kid } => reply::no_store(
            axum::Json(serde_json::json!({ "sender": sender.as_str(), "kid": kid }))
                .into_response(),
        ),
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
        Checked::Busy => busy(),
        Checked::Body(error) => error.response(),
    }
}
