//! The simulator's Keycloak realm: its signing keys and their rotation, its issuer, the key set and the
//! OpenID discovery document it publishes, and the control routes that drive them.
//!
//! - Keys: four fixed 2048-bit RSA keys (`signing-key.der`, then `realm-key-2.der` … `realm-key-4.der`,
//!   made like the first, see `jwt.rs`). The realm signs with one; a rotation moves to the next (wrapping
//!   around) and keeps publishing the previous one for `retiredKeySecs`, as Keycloak keeps a passive key,
//!   so tokens signed before the rotation still verify. Fixed keys keep rotation instant (ring cannot
//!   generate RSA keys); like the first, they are public and sign nothing anyone should trust.
//! - Issuer: the `iss` of every token and of the discovery document. It comes from the `issuer` setting,
//!   or from the address the simulator listens on (`http://ADDR/auth/realms/sahamati`, an unspecified
//!   address read as loopback) — never from the `Host` a client happened to use, so `127.0.0.1` and
//!   `localhost` clients get the same issuer, and a verifier can pin it.
//! - Routes: the JWKS (`/auth/realms/sahamati/protocol/openid-connect/certs`, which can be made to fail
//!   with `jwksStatus` to simulate a key-endpoint outage, and slowed with `jwksDelayMs`), the discovery document
//!   (`/auth/realms/sahamati/.well-known/openid-configuration`, for frameworks that start from an issuer
//!   URI), and under `/_simulator/realm`: `GET|PUT` the settings (with the published `kid`s and the count of
//!   JWKS fetches), `POST …/rotate`, `DELETE …/retired`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::jwt::SigningKey;
use super::{Shared, Simulator};
use crate::iam::{CERTS_PATH, REALM_PATH};

/// The realm's keys, in rotation order. The first is the simulator's original key.
const KEY_POOL: [&[u8]; 4] = [
    include_bytes!("signing-key.der"),
    include_bytes!("realm-key-2.der"),
    include_bytes!("realm-key-3.der"),
    include_bytes!("realm-key-4.der"),
];

/// Path of the discovery document.
pub const DISCOVERY_PATH: &str = "/auth/realms/sahamati/.well-known/openid-configuration";

/// The realm's settings, at `GET|PUT /_simulator/realm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RealmSettings {
    /// The `iss` of every token; when absent, derived from the listen address.
    pub issuer: Option<String>,
    /// How long a key stays published after a rotation replaced it, seconds.
    pub retired_key_secs: u64,
    /// When set, the JWKS endpoint answers this status instead of the keys (an outage).
    pub jwks_status: Option<u16>,
    /// Milliseconds the JWKS endpoint waits before answering (a slow key endpoint).
    pub jwks_delay_ms: u64,
}

impl Default for RealmSettings {
    fn default() -> Self {
        Self {
            issuer: None,
            // Two days: longer than any token signed before the rotation lives.
            retired_key_secs: 2 * 86_400,
            jwks_status: None,
            jwks_delay_ms: 0,
        }
    }
}

struct Retired {
    key: Arc<SigningKey>,
    until: SystemTime,
}

struct Keys {
    current: Arc<SigningKey>,
    /// Index of `current` in [`KEY_POOL`].
    index: usize,
    retired: Vec<Retired>,
}

/// The realm: keys, issuer, settings and counters.
pub struct Realm {
    keys: RwLock<Keys>,
    settings: RwLock<RealmSettings>,
    listen_issuer: RwLock<Option<String>>,
    jwks_fetches: AtomicU64,
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl Realm {
    pub fn new() -> Result<Self, String> {
        Ok(Self {
            keys: RwLock::new(Keys {
                current: Arc::new(SigningKey::from_der(KEY_POOL[0])?),
                index: 0,
                retired: Vec::new(),
            }),
            settings: RwLock::new(RealmSettings::default()),
            listen_issuer: RwLock::new(None),
            jwks_fetches: AtomicU64::new(0),
        })
    }

    fn current(&self) -> Arc<SigningKey> {
        Arc::clone(&read(&self.keys).current)
    }

    /// Signs claims with the current key (the header names its `kid`).
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        self.current().sign(claims)
    }

    /// Signs with the current key under any header.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> Result<String, String> {
        self.current().sign_with_header(header, claims)
    }

    /// The `kid` tokens are signed with now.
    pub fn kid(&self) -> String {
        self.current().kid().to_string()
    }

    /// The published key set: the current key and the retired ones still within their time.
    pub fn jwks(&self) -> Value {
        let keys = read(&self.keys);
        let now = SystemTime::now();
        let mut published = vec![keys.current.jwk()];
        published.extend(
            keys.retired
                .iter()
                .filter(|r| r.until > now)
                .map(|r| r.key.jwk()),
        );
        json!({ "keys": published })
    }

    /// The issuer: the setting, else the listen address, else `http://localhost` (a router served by
    /// someone else's listener that never said where).
    pub fn issuer(&self) -> String {
        if let Some(issuer) = read(&self.settings).issuer.clone() {
            return issuer;
        }
        read(&self.listen_issuer)
            .clone()
            .unwrap_or_else(|| format!("http://localhost{REALM_PATH}"))
    }

    /// Records the address the simulator listens on, from which the issuer is derived.
    pub fn set_listen_addr(&self, addr: SocketAddr) {
        let ip = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        *write(&self.listen_issuer) = Some(format!(
            "http://{}{REALM_PATH}",
            SocketAddr::new(ip, addr.port())
        ));
    }

    /// Moves to the next key of the pool; the previous one stays published for `retiredKeySecs`.
    /// Returns the new `kid`.
    pub fn rotate(&self) -> Result<String, String> {
        let keep_for = Duration::from_secs(read(&self.settings).retired_key_secs);
        let mut keys = write(&self.keys);
        let index = (keys.index + 1) % KEY_POOL.len();
        let next = Arc::new(SigningKey::from_der(KEY_POOL[index])?);
        let previous = std::mem::replace(&mut keys.current, Arc::clone(&next));
        keys.index = index;
        let now = SystemTime::now();
        keys.retired.retain(|r| {
            r.until > now && r.key.kid() != next.kid() && r.key.kid() != previous.kid()
        });
        keys.retired.push(Retired {
            key: previous,
            until: now.checked_add(keep_for).unwrap_or(now),
        });
        Ok(next.kid().to_string())
    }

    /// Stops publishing every key but the current one (a key withdrawn).
    pub fn drop_retired(&self) {
        write(&self.keys).retired.clear();
    }

    pub fn settings(&self) -> RealmSettings {
        read(&self.settings).clone()
    }

    pub fn update_settings(&self, change: impl FnOnce(&mut RealmSettings)) {
        change(&mut write(&self.settings));
    }

    /// Requests the JWKS endpoint has received.
    pub fn jwks_fetches(&self) -> u64 {
        self.jwks_fetches.load(Ordering::SeqCst)
    }

    /// The OpenID discovery document: what a framework that starts from an issuer URI reads. It names
    /// only what the simulator serves: the issuer and the key set.
    pub fn discovery(&self) -> Value {
        let issuer = self.issuer();
        json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}{CERTS_PATH}"),
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS256"],
            "subject_types_supported": ["public"],
            "response_types_supported": ["token"],
            "grant_types_supported": ["client_credentials"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "jti", "azp", "clientId", "roles", "typ"],
        })
    }

    fn describe(&self) -> Value {
        let settings = self.settings();
        let published: Vec<Value> = self
            .jwks()
            .get("keys")
            .and_then(Value::as_array)
            .map(|keys| keys.iter().map(|k| k["kid"].clone()).collect())
            .unwrap_or_default();
        json!({
            "issuer": self.issuer(),
            "kid": self.kid(),
            "publishedKids": published,
            "jwksFetches": self.jwks_fetches(),
            "settings": settings,
        })
    }
}

/// `GET /auth/realms/sahamati/protocol/openid-connect/certs`.
pub(crate) async fn jwks(State(shared): State<Arc<Shared>>) -> Response {
    shared.key.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let delay = shared.key.settings().jwks_delay_ms;
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if let Some(status) = shared.key.settings().jwks_status {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return (
            code,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body>upstream unavailable</body></html>",
        )
            .into_response();
    }
    axum::Json(shared.key.jwks()).into_response()
}

/// `GET /auth/realms/sahamati/.well-known/openid-configuration`.
pub(crate) async fn discovery(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.key.discovery()).into_response()
}

/// The realm's control routes under `/_simulator/realm`.
pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_simulator/realm", get(get_realm).put(put_realm))
        .route("/_simulator/realm/rotate", post(rotate))
        .route(
            "/_simulator/realm/retired",
            axum::routing::delete(drop_retired),
        )
}

async fn get_realm(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.key.describe()).into_response()
}

async fn put_realm(
    State(shared): State<Arc<Shared>>,
    axum::Json(settings): axum::Json<RealmSettings>,
) -> Response {
    shared.key.update_settings(|s| *s = settings);
    axum::Json(shared.key.describe()).into_response()
}

async fn rotate(State(shared): State<Arc<Shared>>) -> Response {
    let previous = shared.key.kid();
    match shared.key.rotate() {
        Ok(kid) => axum::Json(json!({ "kid": kid, "previousKid": previous })).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

async fn drop_retired(State(shared): State<Arc<Shared>>) -> Response {
    shared.key.drop_retired();
    StatusCode::NO_CONTENT.into_response()
}

/// The realm, driven from tests and the demo.
impl Simulator {
    /// Rotates the realm key; returns the new `kid`. The previous key stays published for a while.
    pub fn rotate_realm_key(&self) -> Result<String, String> {
        self.shared.key.rotate()
    }

    /// Stops publishing keys a rotation replaced.
    pub fn drop_retired_realm_keys(&self) {
        self.shared.key.drop_retired();
    }

    /// The `kid` tokens are signed with now.
    pub fn realm_kid(&self) -> String {
        self.shared.key.kid()
    }

    /// Records where the simulator listens (from which the issuer is derived); [`Simulator::serve`] and
    /// [`Simulator::spawn_local`] do it themselves.
    pub fn note_listen_addr(&self, addr: std::net::SocketAddr) {
        self.shared.key.set_listen_addr(addr);
    }

    /// The issuer of the simulator's tokens.
    pub fn issuer(&self) -> String {
        self.shared.key.issuer()
    }

    pub fn realm_settings(&self) -> RealmSettings {
        self.shared.key.settings()
    }

    pub fn update_realm_settings(&self, change: impl FnOnce(&mut RealmSettings)) {
        self.shared.key.update_settings(change);
    }

    /// Requests the JWKS endpoint has received.
    pub fn jwks_fetches(&self) -> u64 {
        self.shared.key.jwks_fetches()
    }

    /// Signs arbitrary claims with the realm's current key, for tests that need a token the IAM would not
    /// issue (another issuer, odd times, missing claims).
    pub fn sign_token(&self, claims: &Value) -> Result<String, String> {
        self.shared.key.sign(claims)
    }

    /// Signs arbitrary claims under an arbitrary header with the realm's current key.
    pub fn sign_token_with_header(&self, header: &Value, claims: &Value) -> Result<String, String> {
        self.shared.key.sign_with_header(header, claims)
    }

    /// The OpenID discovery document.
    pub fn discovery(&self) -> Value {
        self.shared.key.discovery()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::jwt::verify_with_jwks;

    #[test]
    fn a_rotation_keeps_the_previous_key_published_until_dropped() {
        let realm = Realm::new().unwrap();
        let before = realm.sign(&json!({ "n": 1 })).unwrap();
        let first = realm.kid();
        let second = realm.rotate().unwrap();
        assert_ne!(first, second);
        let after = realm.sign(&json!({ "n": 2 })).unwrap();
        let jwks = realm.jwks();
        assert!(verify_with_jwks(&before, &jwks).is_ok());
        assert!(verify_with_jwks(&after, &jwks).is_ok());
        realm.drop_retired();
        let jwks = realm.jwks();
        assert!(verify_with_jwks(&before, &jwks).is_err());
        assert!(verify_with_jwks(&after, &jwks).is_ok());
        // Around the pool and back: every key distinct, and the first again after four.
        let kids: Vec<String> = (0..4).map(|_| realm.rotate().unwrap()).collect();
        assert_eq!(kids[3], second);
        assert_eq!(kids[2], first);
        let mut unique = kids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 4);
        // Published: the current key and the three retired, each once.
        assert_eq!(realm.jwks()["keys"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn the_issuer_comes_from_the_setting_or_the_listen_address() {
        let realm = Realm::new().unwrap();
        realm.set_listen_addr("0.0.0.0:7380".parse().unwrap());
        assert_eq!(realm.issuer(), "http://127.0.0.1:7380/auth/realms/sahamati");
        realm.set_listen_addr("[::]:7380".parse().unwrap());
        assert_eq!(realm.issuer(), "http://[::1]:7380/auth/realms/sahamati");
        realm.update_settings(|s| s.issuer = Some("https://iam.test/auth/realms/sahamati".into()));
        assert_eq!(realm.issuer(), "https://iam.test/auth/realms/sahamati");
        assert_eq!(
            realm.discovery()["jwks_uri"],
            "https://iam.test/auth/realms/sahamati/protocol/openid-connect/certs"
        );
    }
}
