//! The simulator's Central Registry: the entity-info API v2 (spec §1) with its visibility rules, entities
//! with real RSA key pairs, key rotation, and signing bodies as a peer would.
//!
//! - `GET /cr/v2/entityInfo/{type}/{id}` and `GET /cr/v2/entityInfo/{type}`: the caller's token must be
//!   one the realm issued (verified against its key set); its `roles` decide what it may see (an AA sees
//!   FIPs and FIUs, an FIU sees AAs and FIPs, an FIP sees AAs, and anyone its own record). `401` with the
//!   CR's error envelope for a bad token, `403` for a type the role may not read, `404` for an unknown id.
//!   The single answer is the documented envelope with `entityinfo`; the list answer is an array of them.
//! - Keys: six fixed 2048-bit RSA keys in PKCS#8 DER (`peer-key-1.der` … `peer-key-6.der`, made with
//!   `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`, then `openssl pkcs8 -topk8 -nocrypt`).
//!   Registration takes the next key of the pool; a rotation moves the entity to the next one and changes
//!   its `kid`. Like the realm's, these keys are public and sign nothing anyone should trust.
//! - Control, under `/_simulator/cr`: `POST entities` `{"id","role"}` → `{"kid"}`; `POST
//!   entities/{id}/rotate` → `{"kid"}`; `POST entities/{id}/sign` (the body to sign) → `{"signature"}`;
//!   `GET entities/{id}/key` → the private key as PKCS#8 PEM (for a broker under test to sign as that
//!   entity); `PUT status` `{"status": 503}` or `{"status": null}` (an outage); `GET stats` →
//!   `{"calls","requests"}`.
//! - Counters: `calls` counts entity-info calls; `requests` counts every request to a path under `/cr/`,
//!   routed or not, so a test can tell that a client built no CR URL at all (a URL with `..` in it is
//!   resolved by the client into a path no route serves).
//! - A slow CR: [`Simulator::cr_set_delay`] makes every entity-info answer wait, after the call is counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::RsaKeyPair;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Shared, Simulator};
use crate::jws::SigningKey;

/// The key pool, in allocation order.
const KEY_POOL: [&[u8]; 6] = [
    include_bytes!("peer-key-1.der"),
    include_bytes!("peer-key-2.der"),
    include_bytes!("peer-key-3.der"),
    include_bytes!("peer-key-4.der"),
    include_bytes!("peer-key-5.der"),
    include_bytes!("peer-key-6.der"),
];

struct CrEntity {
    role: String,
    /// Index in [`KEY_POOL`].
    key_index: usize,
    generation: u32,
    key: Arc<SigningKey>,
    form: CertificateForm,
}

/// How the CR writes an entity's `certificate`: all three occur in the registry's records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CertificateForm {
    /// The JWK as an object.
    #[default]
    Jwk,
    /// The JWK as a JSON string.
    String,
    /// A key set `{"keys":[…]}`: an encryption key the entity also holds, then its signing key.
    KeySet,
}

/// The CR's state.
#[derive(Default)]
pub(crate) struct CrState {
    inner: Mutex<CrInner>,
    calls: AtomicU64,
    /// Requests to any path under `/cr/`, whether a route serves it or not.
    requests: AtomicU64,
}

#[derive(Default)]
struct CrInner {
    entities: HashMap<String, CrEntity>,
    next_key: usize,
    /// Answer this status instead (an outage).
    status: Option<u16>,
    /// Statuses answered to the next calls, in order, before normal service resumes.
    queued: Vec<u16>,
    /// Waited before each entity-info answer (a slow CR); the call is counted before the wait.
    delay: Duration,
}

impl CrState {
    fn inner(&self) -> MutexGuard<'_, CrInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn key_at(index: usize, id: &str, generation: u32) -> Result<Arc<SigningKey>, String> {
    let der = KEY_POOL[index % KEY_POOL.len()];
    let pair = RsaKeyPair::from_pkcs8(der).map_err(|e| format!("pool key rejected: {e}"))?;
    SigningKey::new(pair, format!("{id}-sig-{generation}"))
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

impl Simulator {
    /// Registers (or replaces) an entity in the CR with the next key of the pool; returns its `kid`.
    /// `role` is `AA`, `FIU` or `FIP`.
    pub fn cr_register(&self, id: &str, role: &str) -> Result<String, String> {
        let mut cr = self.shared.cr.inner();
        let index = cr.next_key;
        cr.next_key += 1;
        let key = key_at(index, id, 1)?;
        let kid = key.kid().to_string();
        cr.entities.insert(
            id.to_string(),
            CrEntity {
                role: role.to_string(),
                key_index: index,
                generation: 1,
                key,
                form: CertificateForm::default(),
            },
        );
        Ok(kid)
    }

    /// How the CR writes this entity's `certificate` from now on.
    pub fn cr_set_certificate_form(&self, id: &str, form: CertificateForm) -> Result<(), String> {
        let mut cr = self.shared.cr.inner();
        cr.entities.get_mut(id).ok_or("no such CR entity")?.form = form;
        Ok(())
    }

    /// Rotates an entity's key: the next key of the pool, a new `kid`. Returns the new `kid`.
    pub fn cr_rotate(&self, id: &str) -> Result<String, String> {
        let mut cr = self.shared.cr.inner();
        let next = cr.next_key;
        cr.next_key += 1;
        let entity = cr.entities.get_mut(id).ok_or("no such CR entity")?;
        entity.generation += 1;
        entity.key_index = next;
        entity.key = key_at(next, id, entity.generation)?;
        Ok(entity.key.kid().to_string())
    }

    /// The `x-jws-signature` the entity would send with `body`.
    pub fn cr_sign(&self, id: &str, body: &[u8]) -> Result<String, String> {
        self.cr_key(id)?.sign(body).map_err(|e| e.to_string())
    }

    /// A signature by the entity's key under any protected header (given as JSON text, e.g. without
    /// `kid` or `crit`), for the lenient forms real senders emit.
    pub fn cr_sign_with_header(
        &self,
        id: &str,
        header: &str,
        body: &[u8],
    ) -> Result<String, String> {
        let index = {
            let cr = self.shared.cr.inner();
            cr.entities.get(id).ok_or("no such CR entity")?.key_index
        };
        let pair =
            RsaKeyPair::from_pkcs8(KEY_POOL[index % KEY_POOL.len()]).map_err(|e| e.to_string())?;
        let segment = URL_SAFE_NO_PAD.encode(header);
        let input = crate::jws::signing_input(&segment, body);
        let mut signature = vec![0; pair.public().modulus_len()];
        pair.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            &input,
            &mut signature,
        )
        .map_err(|_| "signing failed")?;
        Ok(format!("{segment}..{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    /// The entity's current `kid`.
    pub fn cr_kid(&self, id: &str) -> Option<String> {
        self.cr_key(id).ok().map(|k| k.kid().to_string())
    }

    fn cr_key(&self, id: &str) -> Result<Arc<SigningKey>, String> {
        let cr = self.shared.cr.inner();
        Ok(Arc::clone(
            &cr.entities.get(id).ok_or("no such CR entity")?.key,
        ))
    }

    /// The entity's private key as PKCS#8 PEM, for a broker under test to sign as it.
    pub fn cr_private_key_pem(&self, id: &str) -> Option<String> {
        let cr = self.shared.cr.inner();
        let index = cr.entities.get(id)?.key_index;
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in STANDARD
            .encode(KEY_POOL[index % KEY_POOL.len()])
            .as_bytes()
            .chunks(64)
        {
            pem.push_str(std::str::from_utf8(line).ok()?);
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        Some(pem)
    }

    /// Makes every CR call answer `status` (an outage), or serve again with `None`.
    pub fn cr_set_status(&self, status: Option<u16>) {
        self.shared.cr.inner().status = status;
    }

    /// Makes every entity-info answer wait this long (a slow CR); `Duration::ZERO` answers at once again.
    pub fn cr_set_delay(&self, delay: Duration) {
        self.shared.cr.inner().delay = delay;
    }

    /// The next CR calls answer these statuses, in order (e.g. one `401`).
    pub fn cr_queue_statuses(&self, statuses: &[u16]) {
        self.shared.cr.inner().queued.extend_from_slice(statuses);
    }

    /// Entity-info requests received.
    pub fn cr_calls(&self) -> u64 {
        self.shared.cr.calls.load(Ordering::SeqCst)
    }

    /// Requests received for any path under `/cr/`, including paths no route serves.
    pub fn cr_requests(&self) -> u64 {
        self.shared.cr.requests.load(Ordering::SeqCst)
    }
}

/// Counts the requests under `/cr/` (a layer over the whole simulator, so unrouted paths count too).
pub(crate) async fn count_requests(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.uri().path().starts_with("/cr/") {
        shared.cr.requests.fetch_add(1, Ordering::SeqCst);
    }
    next.run(request).await
}

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/cr/v2/entityInfo/{kind}/{id}", get(entity_info))
        .route("/cr/v2/entityInfo/{kind}", get(entity_list))
        .route("/_simulator/cr/entities", post(control_register))
        .route("/_simulator/cr/entities/{id}/rotate", post(control_rotate))
        // Bodies as large as the broker verifies (FI data responses): past axum's 2 MB default.
        .route(
            "/_simulator/cr/entities/{id}/sign",
            post(control_sign).layer(DefaultBodyLimit::max(64 * 1024 * 1024)),
        )
        .route("/_simulator/cr/entities/{id}/key", get(control_key))
        .route("/_simulator/cr/status", put(control_status))
        .route("/_simulator/cr/stats", get(control_stats))
}

fn cr_error(status: StatusCode, text: &str) -> Response {
    (
        status,
        axum::Json(json!({ "responseCode": status.as_u16(), "responseText": text })),
    )
        .into_response()
}

/// The caller's role, from a token the realm issued; or the error answer.
fn caller_role(shared: &Shared, headers: &HeaderMap) -> Result<(String, String), Box<Response>> {
    shared.cr.calls.fetch_add(1, Ordering::SeqCst);
    {
        let mut cr = shared.cr.inner();
        if !cr.queued.is_empty() {
            let status = cr.queued.remove(0);
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Err(Box::new(cr_error(
                code,
                code.canonical_reason().unwrap_or("error"),
            )));
        }
        if let Some(status) = cr.status {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Err(Box::new(cr_error(
                code,
                code.canonical_reason().unwrap_or("error"),
            )));
        }
    }
    let unauthorized = || Box::new(cr_error(StatusCode::UNAUTHORIZED, "401 UNAUTHORIZED"));
    // As the CR takes it: `Authorization: Bearer`, or a ReBIT header with or without the scheme.
    let bearer = |value: &str| -> String {
        match value.trim().split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => {
                rest.trim().to_string()
            }
            _ => value.trim().to_string(),
        }
    };
    let token = ["client_api_key", "fip_api_key", "aa_api_key"]
        .iter()
        .find_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()))
        .map(bearer)
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_string)
        })
        .ok_or_else(unauthorized)?;
    let token = token.as_str();
    let claims = super::jwt::verify_with_jwks(token.trim(), &shared.key.jwks())
        .map_err(|_| unauthorized())?;
    let exp = claims["exp"].as_f64().unwrap_or(0.0);
    if exp < crate::timefmt::unix_seconds(shared.world().now()) {
        return Err(unauthorized());
    }
    let role = claims["roles"].as_str().unwrap_or_default().to_string();
    let id = claims["azp"].as_str().unwrap_or_default().to_string();
    Ok((role, id))
}

/// What a caller of `role` may read of `kind` (spec §1.3); its own record is always visible.
fn visible(role: &str, kind: &str) -> bool {
    matches!(
        (role, kind),
        ("AA", "FIP" | "FIU") | ("FIU", "AA" | "FIP") | ("FIP", "AA")
    )
}

fn certificate(entity: &CrEntity) -> Value {
    let jwk = entity.key.public_jwk();
    match entity.form {
        CertificateForm::Jwk => jwk,
        CertificateForm::String => Value::String(jwk.to_string()),
        CertificateForm::KeySet => {
            let mut encryption = jwk.clone();
            encryption["use"] = json!("enc");
            encryption["alg"] = json!("RSA-OAEP");
            encryption["kid"] = json!(format!("{}-enc", entity.key.kid()));
            json!({ "keys": [encryption, jwk] })
        }
    }
}

fn envelope(id: &str, entity: &CrEntity, requester: &str) -> Value {
    json!({
        "ver": "1.0",
        "timestamp": "2024-10-16 08:04:50.314",
        "txnid": "1fbb-11ed-861d-0242",
        "requester": { "name": requester, "id": requester },
        "entityinfo": {
            "name": id, "id": id, "code": id, "entityhandle": "",
            "Identifiers": [{ "category": "STRONG", "type": "MOBILE" }],
            "baseurl": format!("v1:/v1/nonexistent-resource, v2:https://{}.example/v2", id.to_ascii_lowercase()),
            "webviewurl": null, "fitypes": ["DEPOSIT"],
            "certificate": certificate(entity),
            "tokeninfo": { "url": "", "desc": "" }, "gsp": null, "signature": { "signValue": "" },
            "inboundports": null, "outboundports": null, "ips": null, "credentialsPk": null,
            "roles": entity.role,
        }
    })
}

async fn entity_info(
    State(shared): State<Arc<Shared>>,
    Path((kind, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (role, caller) = match caller_role(&shared, &headers) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let delay = shared.cr.inner().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let kind = kind.to_ascii_uppercase();
    if !(visible(&role, &kind) || (role == kind && caller == id)) {
        return cr_error(StatusCode::FORBIDDEN, "403 FORBIDDEN");
    }
    let cr = shared.cr.inner();
    match cr.entities.get(&id).filter(|e| e.role == kind) {
        Some(entity) => axum::Json(envelope(&id, entity, &caller)).into_response(),
        None => cr_error(StatusCode::NOT_FOUND, "Entity not found"),
    }
}

async fn entity_list(
    State(shared): State<Arc<Shared>>,
    Path(kind): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (role, caller) = match caller_role(&shared, &headers) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let kind = kind.to_ascii_uppercase();
    let cr = shared.cr.inner();
    let list: Vec<Value> = cr
        .entities
        .iter()
        .filter(|(id, e)| e.role == kind && (visible(&role, &kind) || **id == caller))
        .map(|(id, e)| envelope(id, e, &caller))
        .collect();
    axum::Json(Value::Array(list)).into_response()
}

#[derive(Deserialize)]
struct Register {
    id: String,
    role: String,
}

async fn control_register(
    State(shared): State<Arc<Shared>>,
    axum::Json(register): axum::Json<Register>,
) -> Response {
    let sim = Simulator { shared };
    match sim.cr_register(&register.id, &register.role) {
        Ok(kid) => axum::Json(json!({ "kid": kid })).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

async fn control_rotate(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match (Simulator { shared }).cr_rotate(&id) {
        Ok(kid) => axum::Json(json!({ "kid": kid })).into_response(),
        Err(e) => (StatusCode::NOT_FOUND, e).into_response(),
    }
}

async fn control_sign(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    match (Simulator { shared }).cr_sign(&id, &body) {
        Ok(signature) => axum::Json(json!({ "signature": signature })).into_response(),
        Err(e) => (StatusCode::NOT_FOUND, e).into_response(),
    }
}

async fn control_key(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match (Simulator { shared }).cr_private_key_pem(&id) {
        Some(pem) => pem.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[derive(Deserialize)]
struct Status {
    status: Option<u16>,
}

async fn control_status(
    State(shared): State<Arc<Shared>>,
    axum::Json(status): axum::Json<Status>,
) -> Response {
    (Simulator { shared }).cr_set_status(status.status);
    StatusCode::NO_CONTENT.into_response()
}

async fn control_stats(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(json!({
        "calls": shared.cr.calls.load(Ordering::SeqCst),
        "requests": shared.cr.requests.load(Ordering::SeqCst),
    }))
    .into_response()
}
