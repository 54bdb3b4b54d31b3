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

use crate::inbound::recent::Rendered;
use crate::inbound::{Denied, Expectation, Mismatch, Rejection, Role, Verified, Verifier};

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
    Some(match state.verifier.verify_cached(token, &expect)? {
        Ok(hit) => {
            // The answer states the seconds left: within one second it is the same bytes.
            let expires_in = hit.verified.expires_in(SystemTime::now());
            let rendered = match hit.answer.get(expires_in) {
                Some(rendered) => rendered,
                None => {
                    let Some(rendered) = render(&hit.verified, expires_in) else {
                        return Some(cannot_render());
                    };
                    hit.answer.set(rendered.clone());
                    rendered
                }
            };
            verified_response(rendered)
        }
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

/// Which header a token came from. A ReBIT header names the role of the party that sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Authorization,
    ClientApiKey,
    FipApiKey,
    AaApiKey,
}

impl Source {
    /// The role the header binds the token to: `fip_api_key` ⇒ FIP, `aa_api_key` ⇒ AA; the others bind
    /// none (`client_api_key` is whoever the endpoint accepts).
    pub fn bound_role(self) -> Option<Role> {
        match self {
            Source::FipApiKey => Some(Role::Fip),
            Source::AaApiKey => Some(Role::Aa),
            Source::Authorization | Source::ClientApiKey => None,
        }
    }
}

/// A request's credential: the token and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credential<'a> {
    pub token: &'a str,
    pub source: Source,
}

/// The credential of a request. The ReBIT headers (`client_api_key`, `fip_api_key`, `aa_api_key`, each
/// with or without a `Bearer ` prefix, as Sahamati's own scripts send them) are the credential whenever one
/// is present, and `Authorization` is then ignored (it may be a gateway's own token); several ReBIT headers
/// must carry the same token, else the request is ambiguous. `Authorization: Bearer` is used only when no
/// ReBIT header is present. `Ok(None)` when there is no credential. A header given twice, or a value that is
/// not visible ASCII, is malformed.
pub fn credential_from_headers(headers: &HeaderMap) -> Result<Option<Credential<'_>>, Rejection> {
    let mut found: Option<Credential<'_>> = None;
    for (name, source) in API_KEY_HEADERS.iter().zip(API_KEY_SOURCES) {
        let Some(value) = single(headers, name)? else {
            continue;
        };
        let text = visible_ascii(value).ok_or(Rejection::Malformed)?.trim();
        let token = strip_bearer(text);
        found = match found {
            None => Some(Credential { token, source }),
            Some(held) if held.token != token => return Err(Rejection::AmbiguousCredentials),
            // The same token twice: the header that binds a role wins; two that bind different ones
            // contradict each other.
            Some(held) => match (held.source.bound_role(), source.bound_role()) {
                (Some(a), Some(b)) if a != b => return Err(Rejection::AmbiguousCredentials),
                (None, Some(_)) => Some(Credential { token, source }),
                _ => Some(held),
            },
        };
    }
    if found.is_some() {
        return Ok(found);
    }
    if let Some(value) = single(headers, &header::AUTHORIZATION)? {
        // Another scheme (Basic, say) is not ours to judge.
        if let Some(token) = bearer(value)? {
            return Ok(Some(Credential {
                token,
                source: Source::Authorization,
            }));
        }
    }
    Ok(None)
}

/// The credential as the hot path reads it: only the plain cases — one ReBIT header, or else
/// `Authorization: Bearer` — each header at most once, as bytes; `None` for anything else, which the
/// router then reads with [`credential_from_headers`] (and says what is wrong with it).
///
/// It skips the visible-ASCII check and the UTF-8 conversion [`credential_from_headers`] makes over every
/// byte of the token, and the four lookups by name: the hot path only uses the bytes to find a token
/// verified before. The only bytes dropped around them are spaces, tabs and the `Bearer` scheme, so a
/// value whose bytes find a verified token is visible ASCII and reads the same both ways; any other value
/// finds none, and goes to the router.
fn plain_credential(headers: &HeaderMap) -> Option<(&[u8], Source)> {
    let mut api_key: Option<(&HeaderValue, Source)> = None;
    let mut authorization = None;
    for (name, value) in headers {
        if let Some(index) = API_KEY_HEADERS.iter().position(|known| known == name) {
            // Two ReBIT headers (the same token twice, or two) are for the router to judge.
            let source = *API_KEY_SOURCES.get(index)?;
            if api_key.replace((value, source)).is_some() {
                return None;
            }
        } else if name == header::AUTHORIZATION && authorization.replace(value).is_some() {
            return None;
        }
    }
    match (api_key, authorization) {
        (Some((value, source)), _) => {
            let text = value.as_bytes().trim_ascii();
            let token = match text.iter().position(|b| *b == b' ') {
                Some(space) if text[..space].eq_ignore_ascii_case(b"bearer") => {
                    text[space + 1..].trim_ascii()
                }
                _ => text,
            };
            Some((token, source))
        }
        (None, Some(value)) => {
            let bytes = value.as_bytes();
            let scheme_len = bytes.iter().position(|b| *b == b' ').unwrap_or(bytes.len());
            if !bytes[..scheme_len].eq_ignore_ascii_case(b"bearer") {
                return None;
            }
            Some((bytes[scheme_len..].trim_ascii(), Source::Authorization))
        }
        (None, None) => None,
    }
}

/// The token of a request, wherever it came from ([`credential_from_headers`]).
pub fn token_from_headers(headers: &HeaderMap) -> Result<Option<&str>, Rejection> {
    credential_from_headers(headers).map(|c| c.map(|c| c.token))
}

/// The sources of [`API_KEY_HEADERS`], in the same order.
const API_KEY_SOURCES: [Source; 3] = [Source::ClientApiKey, Source::FipApiKey, Source::AaApiKey];

/// `Bearer <token>` (scheme in any case) → the token; anything else as it is.
fn strip_bearer(text: &str) -> &str {
    match text.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => text,
    }
}

fn single<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a HeaderValue>, Rejection> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(value), None) => Ok(Some(value)),
        (Some(_), Some(_)) => Err(Rejection::Malformed),
    }
}

/// The value as text when it is visible ASCII or tab, as [`HeaderValue::to_str`] has it. That one stops at
/// the first byte it refuses, which keeps it from being vectorised; this one looks at every byte of a
/// 1–2 KiB token in a few instructions per 32 bytes, and nearly every value passes anyway.
fn visible_ascii(value: &HeaderValue) -> Option<&str> {
    let bytes = value.as_bytes();
    let visible = bytes
        .iter()
        .fold(true, |ok, &b| ok & ((32..127).contains(&b) | (b == b'\t')));
    // ASCII is UTF-8: this only converts, and checks ASCII a word at a time.
    visible.then(|| std::str::from_utf8(bytes).ok()).flatten()
}

/// `Bearer <token>` (scheme in any case, RFC 7235) → the token; another scheme → `None`.
fn bearer(value: &HeaderValue) -> Result<Option<&str>, Rejection> {
    let bytes = value.as_bytes();
    let scheme_len = bytes.iter().position(|b| *b == b' ').unwrap_or(bytes.len());
    if !bytes[..scheme_len].eq_ignore_ascii_case(b"bearer") {
        return Ok(None);
    }
    let text = visible_ascii(value).ok_or(Rejection::Malformed)?;
    Ok(Some(text[scheme_len..].trim()))
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

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    /// Whatever [`plain_credential`] finds, [`credential_from_headers`] finds the same; where that one
    /// refuses or finds nothing, the plain reading is absent or holds a byte no token has.
    #[test]
    fn the_plain_credential_is_the_credential_or_cannot_match_a_token() {
        let names = [
            "client_api_key",
            "fip_api_key",
            "aa_api_key",
            "authorization",
            "x-other",
        ];
        let pieces: [&[u8]; 12] = [
            b"Bearer ",
            b"bearer ",
            b"BEARER\t",
            b"Basic ",
            b" ",
            b"\t",
            b"eyJ.a.b",
            b"tok",
            b"\xc2\xa0",
            b"\xc2\x85",
            b"\xff",
            b"=",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        let visible = |bytes: &[u8]| bytes.iter().all(|b| (33..127).contains(b));
        let (mut found, mut agreed) = (0, 0);
        for _ in 0..20_000 {
            let mut pairs: Vec<(&str, Vec<u8>)> = Vec::new();
            for _ in 0..rng.usize(1..4) {
                let value: Vec<u8> = (0..rng.usize(0..5))
                    .flat_map(|_| pieces[rng.usize(..pieces.len())].to_vec())
                    .collect();
                pairs.push((names[rng.usize(..names.len())], value));
            }
            let refs: Vec<(&str, &[u8])> = pairs.iter().map(|(n, v)| (*n, &v[..])).collect();
            let map = headers(&refs);
            let Some((token, source)) = plain_credential(&map) else {
                continue;
            };
            found += 1;
            match credential_from_headers(&map) {
                Ok(Some(full)) if full.token.as_bytes() == token => {
                    assert_eq!(full.source, source, "{pairs:?}");
                    agreed += 1;
                }
                other => assert!(
                    token.is_empty() || !visible(token),
                    "{pairs:?}: plain {:?}, full {other:?}",
                    String::from_utf8_lossy(token)
                ),
            }
        }
        assert!(found > 1000 && agreed > 1000, "{found} {agreed}");
    }

    #[test]
    fn visible_ascii_refuses_what_to_str_refuses() {
        // Every byte a header value may hold, alone and inside a token-sized value, at either end.
        let mut refused = 0;
        for b in 0u8..=255 {
            let long = [vec![b'a'; 1000], vec![b], vec![b'z'; 33]].concat();
            for bytes in [vec![b], long.clone(), long[1000..].to_vec()] {
                // Bytes hyper would not have taken into a value at all are skipped.
                let Ok(value) = HeaderValue::from_bytes(&bytes) else {
                    continue;
                };
                assert_eq!(visible_ascii(&value), value.to_str().ok(), "{b}");
                refused += usize::from(visible_ascii(&value).is_none());
            }
        }
        // The bytes from 128 up, in each of the three places.
        assert_eq!(refused, 128 * 3);
    }

    #[test]
    fn a_rebit_header_is_the_credential_and_authorization_only_a_fallback() {
        let t = |pairs: &[(&str, &[u8])]| {
            credential_from_headers(&headers(pairs))
                .map(|c| c.map(|c| (c.token.to_string(), c.source)))
        };
        assert_eq!(t(&[]), Ok(None));
        assert_eq!(
            t(&[("authorization", b"Bearer abc")]),
            Ok(Some(("abc".into(), Source::Authorization)))
        );
        assert_eq!(
            t(&[("authorization", b"bearer   abc ")]),
            Ok(Some(("abc".into(), Source::Authorization)))
        );
        assert_eq!(
            t(&[("authorization", b"Bearer")]),
            Ok(Some((String::new(), Source::Authorization)))
        );
        assert_eq!(t(&[("authorization", b"Basic Zm9vOmJhcg==")]), Ok(None));
        assert_eq!(
            t(&[("authorization", b"Basic x"), ("aa_api_key", b"tok")]),
            Ok(Some(("tok".into(), Source::AaApiKey)))
        );
        // A gateway's own token in Authorization does not hide the ReBIT credential.
        assert_eq!(
            t(&[("aa_api_key", b"a"), ("authorization", b"Bearer gateway")]),
            Ok(Some(("a".into(), Source::AaApiKey)))
        );
        // Sahamati's scripts send `client_api_key: Bearer <jwt>`.
        assert_eq!(
            t(&[("client_api_key", b"Bearer jwt")]),
            Ok(Some(("jwt".into(), Source::ClientApiKey)))
        );
        assert_eq!(
            t(&[("fip_api_key", b"BEARER  jwt ")]),
            Ok(Some(("jwt".into(), Source::FipApiKey)))
        );
        // Two ReBIT headers: the same token is fine (the one that binds a role wins), different are not.
        assert_eq!(
            t(&[("client_api_key", b"x"), ("aa_api_key", b"Bearer x")]),
            Ok(Some(("x".into(), Source::AaApiKey)))
        );
        assert_eq!(
            t(&[("aa_api_key", b"a"), ("fip_api_key", b"f")]),
            Err(Rejection::AmbiguousCredentials)
        );
        assert_eq!(
            t(&[("aa_api_key", b"x"), ("fip_api_key", b"x")]),
            Err(Rejection::AmbiguousCredentials)
        );
        assert_eq!(
            t(&[("fip_api_key", b"")]),
            Ok(Some((String::new(), Source::FipApiKey)))
        );
        assert_eq!(
            t(&[("client_api_key", b"a"), ("client_api_key", b"b")]),
            Err(Rejection::Malformed)
        );
        assert_eq!(
            t(&[("client_api_key", b"\xff\xfe")]),
            Err(Rejection::Malformed)
        );
        assert_eq!(
            t(&[("authorization", b"Bearer \xff")]),
            Err(Rejection::Malformed)
        );
        assert_eq!(t(&[("authorization", b"\xff\xfe")]), Ok(None));
    }

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
