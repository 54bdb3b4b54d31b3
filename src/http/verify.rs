//! `GET /v1/verify` (for forward-auth proxies) and `POST /v1/verify` (for code that holds the token).
//!
//! - `GET`: the token from `Authorization: Bearer …`, else from `client_api_key`, `fip_api_key` or
//!   `aa_api_key` (ReBIT v2, spec §3.5), in that order; optional query `role` (`AA`, `FIU`, `FIP`,
//!   comma-separated) and `entityId` (the expected sender), each at most once, so that a proxy that
//!   appends a caller's query string cannot have a second `role` widen the first.
//! - `POST`: `{"token": "...", "role": "AA", "entityId": "..."}`, role and entityId optional. A `POST`
//!   with an empty body is read like a `GET`: nginx's `auth_request` keeps the original method.
//! - `/v1/verify/{anything}`, any method: the form Envoy's `ext_authz` HTTP service sends (its
//!   `path_prefix` followed by the original request's path and query). Like `GET`, but the query string
//!   is the original request's, written by the caller, so it is ignored.
//! - `200` `{"entityId","role","issuer","expiresAt","expiresIn","claims":{…}}` with `X-AA-Entity-Id` and
//!   `X-AA-Role`, so a proxy can pass the verified identity upstream; `401 invalid_token` with the reason
//!   and `WWW-Authenticate: Bearer error="invalid_token"`; `403 wrong_entity` / `wrong_role`; `400
//!   bad_request` for a malformed `role`/`entityId` or body (a mistake of the caller, not of the token).
//!
//! These routes hand out nothing secret, so the caller guard's `Metadata` and forwarding-header checks do
//! not apply (a local proxy adds forwarding headers). On the token listener the loopback `Host` rule
//! still holds (it is what stops DNS rebinding); on the `--verify-listen` listener, which serves these
//! routes and nothing else, there is no guard at all.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Uri, header};
use axum::routing::{any, get};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::body::{self, BodyLimits};
use super::guard::{self, GuardSettings, Level};
use super::reply;
use bytes::Bytes;

mod credential;
use credential::plain_credential;
pub use credential::{Credential, Source, credential_from_headers, token_from_headers};

use crate::inbound::recent::Rendered;
use crate::inbound::{Denied, Expectation, Mismatch, Rejection, Verified, Verifier};

/// The route.
pub const VERIFY_PATH: &str = "/v1/verify";
/// The forward-auth form: anything below the route (Envoy appends the original path).
pub const VERIFY_SUBPATHS: &str = "/v1/verify/{*original}";
/// Largest `POST` body: a token (1–2 KiB, at most 8 KiB) in JSON, with room to spare.
pub const MAX_VERIFY_BODY_BYTES: usize = 16 * 1024;
/// The verified sender, for the proxy to pass upstream.
pub const ENTITY_HEADER: HeaderName = HeaderName::from_static("x-aa-entity-id");
/// The verified sender's role (`FIU`, or `FIU,FIP` for a token with several).
pub const ROLE_HEADER: HeaderName = HeaderName::from_static("x-aa-role");
/// The ReBIT v2 headers that carry an entity token.
pub const API_KEY_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("client_api_key"),
    HeaderName::from_static("fip_api_key"),
    HeaderName::from_static("aa_api_key"),
];

/// What the verify handlers share.
pub struct VerifyState {
    pub verifier: Arc<Verifier>,
    /// The `Host` rule of the token listener, for the hot path (the router applies it as a layer);
    /// `None` on the verify listener.
    pub host_rule: Option<GuardSettings>,
    pub limits: BodyLimits,
}

/// The answer to `GET /v1/verify` for a token verified before, or `None` (the router then answers): the
/// hot path ([`super::hot_path`]) calls it in front of the router, as it does for token reads. It checks
/// what the handler checks, in the same order, and gives the same bytes.
pub fn answer_from_cache(
    state: &VerifyState,
    uri: &Uri,
    headers: &HeaderMap,
) -> Option<axum::response::Response> {
    if let Some(rule) = &state.host_rule {
        // A refusal is answered (and counted) by the router's guard layer.
        guard::admit(Level::HostOnly, uri, headers, rule).ok()?;
    }
    let query = uri.query();
    let expect = expectation_from_query(query).ok()?;
    let (token, source) = plain_credential(headers)?;
    let expect = bind(expect, source)?;
    let now = SystemTime::now();
    let answered = state
        .verifier
        .verify_cached(token, &expect, now, |verified, memo| {
            // The answer states the seconds left: within one second it is the same bytes.
            let expires_in = verified.expires_in(now);
            match memo {
                Some(rendered) if rendered.expires_in == expires_in => Some(rendered.clone()),
                _ => {
                    *memo = render(verified, expires_in);
                    memo.clone()
                }
            }
        })?;
    Some(match answered {
        Ok(Some(rendered)) => verified_response(rendered),
        Ok(None) => cannot_render(),
        Err(denied) => answer(Err(denied)),
    })
}

/// The expectation with the role the credential's header binds (`aa_api_key` ⇒ AA, `fip_api_key` ⇒ FIP).
/// `None` when the caller asked for roles the header excludes: no token can satisfy both.
fn bind(mut expect: Expectation, source: Source) -> Option<Expectation> {
    if let Some(bound) = source.bound_role() {
        if !expect.roles.is_empty() && !expect.roles.contains(&bound) {
            return None;
        }
        expect.roles = vec![bound];
    }
    Some(expect)
}

/// The verify routes, ready to merge into a listener's router (which applies its guard, if any).
pub fn routes(state: Arc<VerifyState>) -> Router {
    Router::new()
        .route(
            VERIFY_PATH,
            get(get_verify)
                .post(post_verify)
                .fallback(|| async { method_not_allowed() }),
        )
        .route(VERIFY_SUBPATHS, any(forward_auth))
        .with_state(state)
}

fn method_not_allowed() -> axum::response::Response {
    reply::error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

async fn get_verify(
    State(state): State<Arc<VerifyState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> axum::response::Response {
    from_headers(&state, &headers, query.as_deref()).await
}

/// `/v1/verify/{anything}`: the query string belongs to the original request, so no expectation is read.
async fn forward_auth(
    State(state): State<Arc<VerifyState>>,
    headers: HeaderMap,
) -> axum::response::Response {
    from_headers(&state, &headers, None).await
}

/// The token from the headers, the expectation from `query`.
async fn from_headers(
    state: &VerifyState,
    headers: &HeaderMap,
    query: Option<&str>,
) -> axum::response::Response {
    let expect = match expectation_from_query(query) {
        Ok(expect) => expect,
        Err(message) => return bad_request(message),
    };
    let credential = match credential_from_headers(headers) {
        Ok(credential) => credential,
        Err(rejection) => {
            state.verifier.record_rejection(rejection);
            return unauthorized(rejection);
        }
    };
    let Some(credential) = credential else {
        return answer(state.verifier.verify("", &expect).await);
    };
    match bind(expect.clone(), credential.source) {
        Some(bound) => answer(state.verifier.verify(credential.token, &bound).await),
        // The header names a role the caller excluded: a valid token is still the wrong sender.
        None => match state.verifier.verify(credential.token, &expect).await {
            Ok(_) => forbidden(Mismatch::WrongRole),
            Err(denied) => answer(Err(denied)),
        },
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VerifyRequest {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    entity_id: Option<String>,
}

async fn post_verify(
    State(state): State<Arc<VerifyState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Body,
) -> axum::response::Response {
    let body = match body::read(body, b"", MAX_VERIFY_BODY_BYTES, &state.limits).await {
        Ok(body) => body,
        Err(error) => return error.response(),
    };
    if body.is_empty() {
        return from_headers(&state, &headers, query.as_deref()).await;
    }
    let request: VerifyRequest = match serde_json::from_slice(body.body()) {
        Ok(request) => request,
        Err(_) => {
            return bad_request(
                "the body must be JSON: {\"token\": \"...\", \"role\": \"AA\", \"entityId\": \"...\"}"
                    .into(),
            );
        }
    };
    // Held as a secret from here on: its `Debug` redacts it.
    let token = SecretString::from(request.token.unwrap_or_default());
    let expect = match Expectation::parse(request.role.as_deref(), request.entity_id.as_deref()) {
        Ok(expect) => expect,
        Err(e) => return bad_request(e.to_string()),
    };
    answer(
        state
            .verifier
            .verify(token.expose_secret().trim(), &expect)
            .await,
    )
}

fn expectation_from_query(query: Option<&str>) -> Result<Expectation, String> {
    if query.is_none_or(str::is_empty) {
        // What the parse below gives for no pairs, without running it on every proxied call.
        return Ok(Expectation::default());
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|_| "the query string is not form-encoded".to_string())?;
    let mut role = None;
    let mut entity_id = None;
    for (name, value) in &pairs {
        let slot = match name.as_str() {
            "role" => &mut role,
            "entityId" => &mut entity_id,
            // A typo (`Role=FIU`) would otherwise verify without the check the caller meant.
            other => {
                return Err(format!(
                    "unknown query parameter {other:?}: the parameters are role and entityId"
                ));
            }
        };
        if slot.replace(value.as_str()).is_some() {
            return Err(format!(
                "{name} is given twice (several roles: role=AA,FIU)"
            ));
        }
    }
    Expectation::parse(role, entity_id).map_err(|e| e.to_string())
}

fn answer(result: Result<Arc<Verified>, Denied>) -> axum::response::Response {
    match result {
        Ok(verified) => match render(&verified, verified.expires_in(SystemTime::now())) {
            Some(rendered) => verified_response(rendered),
            None => cannot_render(),
        },
        Err(Denied::Invalid(rejection)) => unauthorized(rejection),
        Err(Denied::Forbidden(mismatch)) => forbidden(mismatch),
        Err(Denied::Busy) => reply::unavailable(
            "busy",
            "the broker is busy checking other tokens; try again shortly",
            std::time::Duration::from_secs(1),
        ),
    }
}

/// The `200` answer's body and identity headers for `verified`, `expires_in` seconds before its `exp`.
fn render(verified: &Verified, expires_in: u64) -> Option<Rendered> {
    let role = verified.role();
    let mut body = Vec::with_capacity(verified.claims_json.len() + 256);
    body.extend_from_slice(b"{\"entityId\":\"");
    // Entity ids and role names are checked to hold no character JSON or a header would escape.
    body.extend_from_slice(verified.entity_id.as_str().as_bytes());
    body.extend_from_slice(b"\",\"role\":\"");
    body.extend_from_slice(role.as_bytes());
    body.extend_from_slice(b"\",\"issuer\":");
    // The issuer is configured, but written as JSON all the same.
    serde_json::to_writer(&mut body, &verified.issuer).ok()?;
    body.extend_from_slice(b",\"expiresAt\":\"");
    body.extend_from_slice(verified.expires_at_text.as_bytes());
    body.extend_from_slice(b"\",\"expiresIn\":");
    body.extend_from_slice(itoa::Buffer::new().format(expires_in).as_bytes());
    body.extend_from_slice(b",\"claims\":");
    body.extend_from_slice(verified.claims_json.as_bytes());
    body.push(b'}');
    Some(Rendered {
        expires_in,
        body: Bytes::from(body),
        entity: Bytes::copy_from_slice(verified.entity_id.as_str().as_bytes()),
        role: Bytes::from(role),
    })
}

fn cannot_render() -> axum::response::Response {
    reply::error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "cannot render",
    )
}

/// The `200` answer. Its bytes are shared with the memo they came from: nothing is copied.
fn verified_response(rendered: Rendered) -> axum::response::Response {
    let mut response = Response::new(Body::from(rendered.body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_maybe_shared(rendered.entity) {
        headers.insert(ENTITY_HEADER, value);
    }
    if let Ok(value) = HeaderValue::from_maybe_shared(rendered.role) {
        headers.insert(ROLE_HEADER, value);
    }
    response
}

fn unauthorized(rejection: Rejection) -> axum::response::Response {
    let mut response = reply::error(
        StatusCode::UNAUTHORIZED,
        "invalid_token",
        rejection.message(),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    response
}

fn forbidden(mismatch: Mismatch) -> axum::response::Response {
    let message = match mismatch {
        Mismatch::WrongEntity => "the token is valid but was issued to another entity",
        Mismatch::WrongRole => "the token is valid but the sender has another role",
    };
    reply::error(StatusCode::FORBIDDEN, mismatch.as_str(), message)
}

fn bad_request(message: String) -> axum::response::Response {
    reply::error(StatusCode::BAD_REQUEST, "bad_request", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_come_from_the_query() {
        let e = |q: &str| expectation_from_query(Some(q));
        assert_eq!(e("").unwrap(), Expectation::default());
        let both = e("role=AA,fip&entityId=AA-ONE").unwrap();
        // An unknown parameter (a typo of `role`) is named, not ignored.
        let typo = e("Role=FIU").unwrap_err();
        assert!(typo.contains("\"Role\""), "{typo}");
        assert_eq!(both.roles.len(), 2);
        assert_eq!(both.entity_id.as_deref(), Some("AA-ONE"));
        assert_eq!(e("role=AA%2CFIU").unwrap().roles.len(), 2);
        // A second `role` (a caller's query appended by a proxy) would widen the first: refused.
        assert!(e("role=AA&role=FIU").is_err());
        assert!(e("role=CR").is_err());
        assert!(e("entityId=a&entityId=b").is_err());
        assert!(e("entityId=%2F").is_err());
    }
}
