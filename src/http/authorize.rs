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
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::body::{self, BodyError, Buffered};
use super::jws::{
    BUSY_RETRY_AFTER, Checked, JwsState, SIGNATURE, check, signature_and_key, verifies_with,
};
use super::rebit::{self, Echo, TXNID_SCAN_BYTES};
use super::verify::{ENTITY_HEADER, ROLE_HEADER, Source, credential_from_headers};
use crate::entity::Role;
use crate::inbound::callers;
use crate::inbound::{Denied, Expectation};
use crate::metrics::edge::AuthorizeOutcome;
use crate::rebit::endpoint::{Endpoint, check_notifier};
use crate::rebit::envelope::EnvelopeError;
use crate::rebit::scan::{MAX_TXNID_LEN, member_value, scan_member};
use crate::registry::Found;

/// The bare route; anything below it is the path form.
pub const AUTHORIZE_PATH: &str = "/v1/authorize";

/// A refusal, before or after the body was read.
struct Refusal {
    outcome: AuthorizeOutcome,
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<Duration>,
    /// The request's `txnid` is not echoed (it is what is wrong).
    fresh_txnid: bool,
}

impl Refusal {
    fn new(
        outcome: AuthorizeOutcome,
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            outcome,
            status,
            code,
            message: message.into(),
            retry_after: None,
            fresh_txnid: false,
        }
    }

    fn fresh_txnid(mut self) -> Self {
        self.fresh_txnid = true;
        self
    }

    fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            AuthorizeOutcome::Unauthorized,
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            message,
        )
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            AuthorizeOutcome::InvalidRequest,
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            message,
        )
    }

    fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// The answer. `read` is the body when it was read; otherwise at most the first
    /// [`TXNID_SCAN_BYTES`] of `unread` are, for the envelope fields the answer echoes.
    async fn answer(
        self,
        state: &JwsState,
        read: Option<&Buffered>,
        unread: Option<Body>,
    ) -> Response {
        state.metrics.authorize(self.outcome);
        let head = match (read, unread) {
            (Some(_), _) | (None, None) => None,
            (None, Some(body)) => body::read_head(body, TXNID_SCAN_BYTES, &state.limits)
                .await
                .ok(),
        };
        let mut echo = Echo::from_head(read.or(head.as_ref()).map(Buffered::body));
        // Answers carry a supported version, and echo a txnid that is not itself the fault.
        echo.ver = state.envelope.answer_version(Some(&echo.ver)).to_string();
        if self.fresh_txnid {
            echo.txnid = rebit::answer_txnid(None);
        }
        let mut response = signed(
            state,
            self.status,
            rebit::error_body(&echo, self.code, &self.message),
        )
        .await;
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// A ReBIT answer with our `x-jws-signature` over its exact bytes, when our entity has a signing key and
/// the crypto pool has room (a refusal is never held back for want of a signature).
async fn signed(state: &JwsState, status: StatusCode, body: Vec<u8>) -> Response {
    let key = state.own_signer().and_then(|file| file.key().ok());
    let Some(key) = key else {
        return rebit::respond(status, body);
    };
    // An error body is a few hundred bytes: a copy keeps it for the unsigned answer.
    let unsigned = body.clone();
    let (signature, body) = match state
        .pool
        .run(move || {
            let signature = key.sign(&body).ok();
            (signature, body)
        })
        .await
    {
        Ok(done) => done,
        Err(_) => return rebit::respond(status, unsigned),
    };
    let mut response = rebit::respond(status, body);
    if let Some(value) = signature.and_then(|s| HeaderValue::from_str(&s).ok()) {
        response.headers_mut().insert(SIGNATURE, value);
    }
    response
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
    let (checked, mut read, mut unread) =
        check(&state, role.as_str(), sender, &headers, body).await;
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

fn mismatch() -> Refusal {
    Refusal::new(
        AuthorizeOutcome::SignatureDoesNotMatch,
        StatusCode::BAD_REQUEST,
        "SignatureDoesNotMatch",
        "the signature does not match the body and the sender's key",
    )
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

/// A `GET` signed over its endpoint path: the detached JWS's payload is the path, with or without the
/// base prefix a proxy strips (`--authorize-path-prefix`).
async fn signed_path(
    state: &JwsState,
    role: Role,
    sender: &str,
    headers: &HeaderMap,
    path: &str,
) -> Result<(), Refusal> {
    let (signature, key) = match signature_and_key(state, role.as_str(), sender, headers).await {
        Ok(found) => found,
        Err(Checked::Unavailable(wait)) => {
            return Err(Refusal::new(
                AuthorizeOutcome::Unavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the Central Registry cannot be asked and no key for the sender is held",
            )
            .retry_after(wait));
        }
        Err(Checked::UnknownSender) => {
            return Err(Refusal::unauthorized(
                "the token's entity has no usable key in the Central Registry",
            ));
        }
        Err(Checked::ForeignKey) => {
            // The kid is not the sender's: whose is it?
            let (kid, bytes) = match crate::jws::parse(
                headers
                    .get(&SIGNATURE)
                    .map(|v| v.as_bytes())
                    .unwrap_or_default(),
            ) {
                Ok(d) => (d.kid, d.signature),
                Err(_) => return Err(mismatch()),
            };
            let prefix = headers
                .get(&SIGNATURE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().split_once('.'))
                .map(|(h, _)| format!("{h}."))
                .unwrap_or_default();
            for candidate in path_forms(state, path) {
                let input = Buffered::small(
                    [prefix.as_bytes(), candidate.as_bytes()].concat(),
                    prefix.len(),
                    &state.limits.budget,
                );
                let (other, _) =
                    signed_by_another(state, kid.as_deref(), bytes.clone(), input, &[], sender)
                        .await;
                if let Some(other) = other {
                    return Err(Refusal::invalid(format!(
                        "the request is signed by {other}, not by the token's entity"
                    )));
                }
            }
            return Err(mismatch());
        }
        Err(_) => return Err(mismatch()),
    };
    for candidate in path_forms(state, path) {
        let input = Buffered::small(
            [signature.prefix.as_bytes(), candidate.as_bytes()].concat(),
            signature.prefix.len(),
            &state.limits.budget,
        );
        match verifies_with(state, Arc::clone(&key), signature.bytes.clone(), input).await {
            Some((true, _)) => return Ok(()),
            Some((false, input)) => {
                let (other, _) = signed_by_another(
                    state,
                    signature.kid.as_deref(),
                    signature.bytes.clone(),
                    input,
                    &[],
                    sender,
                )
                .await;
                if let Some(other) = other {
                    return Err(Refusal::invalid(format!(
                        "the request is signed by {other}, not by the token's entity"
                    )));
                }
            }
            None => {
                return Err(Refusal::new(
                    AuthorizeOutcome::Busy,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "the broker is busy; try again shortly",
                )
                .retry_after(BUSY_RETRY_AFTER));
            }
        }
    }
    Err(mismatch())
}

/// The forms of a path a peer may have signed: as received, and with the configured base prefix.
fn path_forms(state: &JwsState, path: &str) -> Vec<String> {
    let mut forms = vec![path.to_string()];
    if let Some(prefix) = state.path_prefix.as_deref() {
        forms.push(format!("{}{path}", prefix.trim_end_matches('/')));
    }
    forms
}

/// [`signed_by_another`] for a body: reads it first when the check stopped before reading (a `kid` that
/// is not the sender's), with the signature's header segment in front.
async fn signed_by_another_body(
    state: &JwsState,
    headers: &HeaderMap,
    sender: &str,
    read: Option<Buffered>,
    unread: Option<Body>,
) -> (Option<String>, Option<Buffered>, Option<Body>) {
    // A signature that does not parse is nobody's: the body stays as it is, for the answer's envelope.
    let detached = headers
        .get(&SIGNATURE)
        .and_then(|value| crate::jws::parse(value.as_bytes()).ok());
    let Some(detached) = detached else {
        return (None, read, unread);
    };
    let buffered = match (read, unread) {
        (Some(buffered), _) => buffered,
        (None, Some(body)) => {
            let prefix = format!("{}.", detached.header_segment);
            match body::read(body, prefix.as_bytes(), state.max_body_bytes, &state.limits).await {
                Ok(buffered) => buffered,
                Err(_) => return (None, None, None),
            }
        }
        (None, None) => return (None, None, None),
    };
    let named: Vec<(Role, String)> = rebit::body_senders(buffered.body())
        .into_iter()
        .map(|(role, id)| (role, id.to_string()))
        .collect();
    let (other, back) = signed_by_another(
        state,
        detached.kid.as_deref(),
        detached.signature,
        buffered,
        &named,
        sender,
    )
    .await;
    (other, back, None)
}

/// Which other registered entity signed `input`, if any: the known holder of the signature's `kid` (from
/// the cache, no CR call), then the first entity the body names (one lookup, within the lookup budget).
/// At most two keys are tried. A `kid` no registered entity holds is nobody's: `None`.
async fn signed_by_another(
    state: &JwsState,
    kid: Option<&str>,
    signature: Vec<u8>,
    mut input: Buffered,
    named: &[(Role, String)],
    sender: &str,
) -> (Option<String>, Option<Buffered>) {
    let mut candidates: Vec<(String, Arc<crate::registry::EntityKey>)> = Vec::new();
    if let Some((_, id, key)) = kid.and_then(|kid| state.registry.holder_of_kid(kid, sender)) {
        candidates.push((id, key));
    }
    if let Some((role, other)) = named.iter().find(|(_, id)| id != sender)
        && !candidates.iter().any(|(id, _)| id == other)
        && let Ok(Found::Key(key)) = state.registry.key_for(role.as_str(), other, kid).await
    {
        candidates.push((other.clone(), key));
    }
    for (other, key) in candidates.into_iter().take(2) {
        match verifies_with(state, key, signature.clone(), input).await {
            Some((true, back)) => return (Some(other), Some(back)),
            Some((false, back)) => input = back,
            None => return (None, None),
        }
    }
    (None, Some(input))
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
