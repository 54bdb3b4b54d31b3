//! `/v1/authorize[/{original path}]`: the whole inbound check of one request, for an ingress proxy (Envoy
//! `ext_authz`, nginx `auth_request`), answered in ReBIT's terms.
//!
//! In order, cheapest refusal first, and nothing of the body read before the token holds:
//! 1. the query: `role` (narrows the caller roles); any other parameter on the bare route is a `400`
//!    (on the path form the query is the original request's);
//! 2. the credential ([`super::verify::credential_from_headers`]: a ReBIT header is the credential, with or
//!    without `Bearer `; `Authorization` only without one) and the token;
//! 3. the caller's role ([`crate::inbound::callers`]): by default an FIU's and an FIP's endpoints accept
//!    AAs only, an AA's accept FIUs and FIPs (from our own token's role); `--authorize-roles` sets them for
//!    the listener; `aa_api_key` binds the token to the AA role, `fip_api_key` to FIP;
//! 4. a bodyless `GET`/`HEAD` without a signature (ReBIT's `Heartbeat`): the token check alone;
//! 5. the signature over the body by the token's entity ([`super::jws`]), on the crypto pool; when it
//!    fails and names no `kid`, whether the entity the body names signed it instead (FIP_3027:
//!    `InvalidRequest`, not `SignatureDoesNotMatch`).
//!
//! `200` with `X-AA-Entity-Id` and `X-AA-Role`; otherwise a ReBIT `ErrorResponse` that can go back to the
//! peer as it is: `ver` echoes the request's when it is 2.x, `txnid` the request's (bounded) or a fresh
//! UUID v4, and, with a signing key configured, the answer carries our `x-jws-signature` over its exact
//! bytes (unsigned only when the crypto pool is full).

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;

mod refusal;
mod signers;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use refusal::{Refusal, mismatch};
use signers::{signed_by_another_body, signed_path};

use super::body::{BodyError, Buffered};
use super::jws::{BUSY_RETRY_AFTER, Checked, JwsState, SIGNATURE, check};
use super::rebit::{self, Echo};
use super::verify::{ENTITY_HEADER, ROLE_HEADER, Source, credential_from_headers};
use crate::entity::Role;
use crate::inbound::callers;
use crate::inbound::{Denied, Expectation};
use crate::metrics::edge::AuthorizeOutcome;
use crate::rebit::endpoint::{Endpoint, check_notifier};
use crate::rebit::envelope::EnvelopeError;
use crate::rebit::scan::{MAX_TXNID_LEN, member_value, scan_member};

/// The bare route; anything below it is the path form.
pub const AUTHORIZE_PATH: &str = "/v1/authorize";

/// `/v1/verify-signature` and `/v1/authorize[/…]`: on the token port behind the `Host` rule, and alone on
/// `--verify-listen`.
pub fn check_routes(state: Arc<JwsState>) -> Router {
    Router::new()
        .route("/v1/verify-signature", post(super::jws::verify_signature))
        .route(AUTHORIZE_PATH, any(authorize))
        .route("/v1/authorize/{*original}", any(authorize))
        .with_state(state)
}

impl JwsState {
    /// The ReBIT path `/v1/authorize/{path}` guards: the part after the route, without the base prefix.
    pub fn rebit_path(&self, uri_path: &str) -> String {
        let path = uri_path.strip_prefix(AUTHORIZE_PATH).unwrap_or(uri_path);
        let path = match self.path_prefix.as_deref().map(|p| p.trim_end_matches('/')) {
            Some(prefix) if !prefix.is_empty() => path.strip_prefix(prefix).unwrap_or(path),
            _ => path,
        };
        if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        }
    }
}

/// The roles a request asks for (`?role=AA,FIP`), and on the bare route, that it names nothing else.
fn asked_roles(query: Option<&str>, bare: bool) -> Result<Vec<Role>, String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|_| "the query string is not form-encoded".to_string())?;
    let mut roles = None;
    for (name, value) in &pairs {
        match name.as_str() {
            "role" => {
                if roles.is_some() {
                    return Err("role is given twice (several roles: role=AA,FIU)".into());
                }
                roles = Some(
                    Expectation::parse(Some(value), None)
                        .map_err(|e| e.to_string())?
                        .roles,
                );
            }
            other if bare => {
                return Err(format!(
                    "unknown query parameter {other:?}: the only parameter is role"
                ));
            }
            // The path form's query is the original request's.
            _ => {}
        }
    }
    Ok(roles.unwrap_or_default())
}

/// A request with no body: nothing declared, or a declared length of zero.
fn bodyless(body: &Body) -> bool {
    http_body::Body::is_end_stream(body) || http_body::Body::size_hint(body).exact() == Some(0)
}

pub async fn authorize(
    State(state): State<Arc<JwsState>>,
    method: Method,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bare = uri.path() == AUTHORIZE_PATH;
    if bare && method != Method::POST {
        return Refusal::invalid("POST the request to check, or use /v1/authorize/{path}")
            .answer(&state, None, None)
            .await;
    }
    let asked = match asked_roles(query.as_deref(), bare) {
        Ok(asked) => asked,
        Err(message) => {
            return Refusal::invalid(message)
                .answer(&state, None, Some(body))
                .await;
        }
    };
    // The token first: a caller without a valid one never has its body read (beyond the envelope scan).
    let credential = match credential_from_headers(&headers) {
        Ok(Some(credential)) if !credential.token.is_empty() => credential,
        Ok(_) => {
            return Refusal::unauthorized("the request carries no entity token")
                .answer(&state, None, Some(body))
                .await;
        }
        Err(rejection) => {
            state.verifier.record_rejection(rejection);
            return Refusal::unauthorized(rejection.message())
                .answer(&state, None, Some(body))
                .await;
        }
    };
    let verified = match state
        .verifier
        .verify(credential.token, &Expectation::default())
        .await
    {
        Ok(verified) => verified,
        Err(Denied::Busy) => {
            return Refusal::new(
                AuthorizeOutcome::Busy,
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the broker is busy; try again shortly",
            )
            .retry_after(BUSY_RETRY_AFTER)
            .answer(&state, None, Some(body))
            .await;
        }
        Err(denied) => {
            return Refusal::unauthorized(denied.to_string())
                .answer(&state, None, Some(body))
                .await;
        }
    };
    let token_roles: Vec<Role> = verified
        .roles
        .iter()
        .filter_map(|r| Role::parse(r))
        .collect();
    let accepted = callers::accepted(&state.own_roles(), state.authorize_roles.as_deref(), &asked);
    let bound = credential.source.bound_role().map(|role| {
        let header = match credential.source {
            Source::FipApiKey => "fip_api_key",
            _ => "aa_api_key",
        };
        (header, role)
    });
    let role = match callers::admit(&token_roles, bound, &accepted) {
        Ok(role) => role,
        Err(refused) => {
            return Refusal::unauthorized(refused.to_string())
                .answer(&state, None, Some(body))
                .await;
        }
    };
    let sender = verified.entity_id.as_str();
    let signed_request = headers.contains_key(&SIGNATURE);
    // The path form names the ReBIT endpoint the proxy guards; the bare route keeps the general checks.
    let guarded = (!bare).then(|| state.rebit_path(uri.path()));
    let endpoint = guarded
        .as_deref()
        .map(|path| Endpoint::classify(method.as_str(), path));
    if matches!(method, Method::GET | Method::HEAD) && bodyless(&body) {
        return match (signed_request, endpoint, guarded) {
            // ReBIT's GETs without a signature (Heartbeat): the token and the role are the whole check.
            (false, _, _) => allowed(&state, sender, role),
            // FIP_3022, FIP_1059, FIP_3026, FIP_3027: a GET signed over its endpoint path.
            (true, Some(Endpoint::SignedGet), Some(path)) => {
                match signed_path(&state, role, sender, &headers, &path).await {
                    Ok(()) => allowed(&state, sender, role),
                    Err(refusal) => refusal.answer(&state, None, None).await,
                }
            }
            (true, _, _) => allowed(&state, sender, role),
        };
    }
    let (checked, mut read, mut unread) = check(&state, role, sender, &headers, body).await;
    let refusal = match checked {
        Checked::Valid { .. } => {
            // The body is signed by the caller: now what the suite checks in it, on the path form.
            let Some(endpoint) = endpoint else {
                return allowed(&state, sender, role);
            };
            match body_rules(&state, endpoint, role, sender, read.as_ref()) {
                Ok(()) => return allowed(&state, sender, role),
                Err(refusal) => refusal,
            }
        }
        Checked::Missing => Refusal::invalid("x-jws-signature is missing"),
        Checked::Mismatch(_) | Checked::ForeignKey => {
            // Which key verifies decides the code: another registered entity's is `InvalidRequest`
            // (FIP_1040, FIP_3027, FIU_1043, FIU_2029); nobody's is `SignatureDoesNotMatch`.
            let (signed_by, body, untouched) =
                signed_by_another_body(&state, &headers, sender, read.take(), unread.take()).await;
            read = body;
            unread = untouched;
            match signed_by {
                Some(other) => Refusal::invalid(format!(
                    "the body is signed by {other}, not by the token's entity"
                )),
                None => mismatch(),
            }
        }
        Checked::UnknownSender => {
            Refusal::unauthorized("the token's entity has no usable key in the Central Registry")
        }
        Checked::Unavailable(wait) => Refusal::new(
            AuthorizeOutcome::Unavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the Central Registry cannot be asked and no key for the sender is held",
        )
        .retry_after(wait),
        Checked::Busy => Refusal::new(
            AuthorizeOutcome::Busy,
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the broker is busy; try again shortly",
        )
        .retry_after(BUSY_RETRY_AFTER),
        Checked::Body(error) => {
            state.metrics.authorize(AuthorizeOutcome::BodyRefused);
            let code = match error {
                BodyError::Busy => "ServiceUnavailable",
                _ => "InvalidRequest",
            };
            let body = rebit::error_body(&Echo::from_head(None), code, &error.message());
            return error.finish(rebit::respond(error.status(), body));
        }
    };
    refusal.answer(&state, read.as_ref(), unread).await
}

/// The checks of a signed body on a guarded endpoint: the envelope, the notifier, the key material.
fn body_rules(
    state: &JwsState,
    endpoint: Endpoint,
    role: Role,
    sender: &str,
    read: Option<&Buffered>,
) -> Result<(), Refusal> {
    let body = read.map(Buffered::body).unwrap_or_default();
    state
        .envelope
        .check(body, SystemTime::now())
        .map_err(|error| match error {
            EnvelopeError::NoSuchVersion(_) => Refusal::new(
                AuthorizeOutcome::InvalidRequest,
                StatusCode::NOT_FOUND,
                "NoSuchVersion",
                error.to_string(),
            ),
            EnvelopeError::BadTxnid => Refusal::invalid(error.to_string()).fresh_txnid(),
            other => Refusal::invalid(other.to_string()),
        })?;
    if let Some(code) = endpoint.notifier_code() {
        let notifier = member_value(body, b"Notifier").map(|object| {
            (
                scan_member(object, b"type", 8),
                scan_member(object, b"id", MAX_TXNID_LEN),
            )
        });
        check_notifier(notifier, role, sender).map_err(|e| {
            Refusal::new(
                AuthorizeOutcome::InvalidRequest,
                StatusCode::BAD_REQUEST,
                code,
                e.to_string(),
            )
        })?;
    }
    if endpoint == Endpoint::FiRequest {
        // FIP_3008_1–6, AA_2011: the FI module's own reading of KeyMaterial (algorithm, curve, a point
        // on the curve and not of small order, an expiry in the future), on the object's bytes alone.
        let invalid_key = |message: String| {
            Refusal::new(
                AuthorizeOutcome::InvalidRequest,
                StatusCode::BAD_REQUEST,
                "InvalidKey",
                message,
            )
        };
        let raw = member_value(body, b"KeyMaterial")
            .ok_or_else(|| invalid_key("the body has no KeyMaterial".into()))?;
        let raw: &serde_json::value::RawValue = serde_json::from_slice(raw)
            .map_err(|_| invalid_key("KeyMaterial is not JSON".into()))?;
        crate::fi::keys::parse_key_material(raw, SystemTime::now())
            .map_err(|e| invalid_key(e.to_string()))?;
    }
    Ok(())
}

fn allowed(state: &JwsState, sender: &str, role: Role) -> Response {
    state.metrics.authorize(AuthorizeOutcome::Allowed);
    let mut response = axum::Json(serde_json::json!({
        "entityId": sender,
        "role": role.as_str(),
    }))
    .into_response();
    let out = response.headers_mut();
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(sender) {
        out.insert(ENTITY_HEADER, value);
    }
    out.insert(ROLE_HEADER, HeaderValue::from_static(role.as_str()));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bare_route_takes_role_only_and_the_path_form_keeps_the_original_query() {
        assert_eq!(asked_roles(None, true), Ok(vec![]));
        assert_eq!(asked_roles(Some("role=AA"), true), Ok(vec![Role::Aa]));
        assert_eq!(
            asked_roles(Some("role=fip,aa"), false),
            Ok(vec![Role::Fip, Role::Aa])
        );
        let typo = asked_roles(Some("Role=FIU"), true).unwrap_err();
        assert!(typo.contains("\"Role\""), "{typo}");
        assert_eq!(
            asked_roles(Some("sessionId=1&role=AA"), false),
            Ok(vec![Role::Aa])
        );
        assert!(asked_roles(Some("role=AA&role=FIU"), true).is_err());
        assert!(asked_roles(Some("role=CR"), true).is_err());
    }
}
