//! The realm's key set (JWKS): its parsing, and the cache that fetches it.
//!
//! [`parse_jwks`] is a pure function from the bytes the key endpoint sent to the RS256 signing keys they
//! hold, by `kid`. Everything in the document is distrusted: only `kty: RSA` keys whose `use` is `sig` (or
//! absent) and whose `alg` is `RS256` (or absent) are kept; moduli must be 2048 to 8192 bits and exponents
//! small odd numbers, which is what `ring` accepts, so an absurd `n` or `e` is dropped here rather than
//! met at verification time; `x5c`, `x5u` and anything else that points elsewhere is ignored.
//!
//! [`KeySource`] is the cache of one key URL. It has the four properties every cache of something from
//! upstream has in this crate: single flight (one fetch at a time; callers that find one in flight wait
//! for it), a rate limit on the refetches callers can trigger (an unknown `kid`, see [`super::policy`]),
//! the last good value served through an outage, and its age reported (`/readyz`, metrics). The fetch is
//! bounded: connect and request timeouts, no redirects, and a cap on the body size.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use serde::Deserialize;
use tokio::time::Instant;

use super::VerifyRecorder;
use super::policy::{FetchHistory, KeyPolicy, UnknownKid};

/// Largest key-set document read. Keycloak's is a few KiB (two or three keys with certificates).
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Keys looked at in one document; the rest are ignored.
const MAX_KEYS: usize = 64;
/// Longest `kid` kept.
const MAX_KID_LEN: usize = 256;
/// RSA moduli accepted: 2048 to 8192 bits, as `ring`'s `RSA_PKCS1_2048_8192_SHA256` requires.
const MODULUS_BYTES: std::ops::RangeInclusive<usize> = 256..=1024;

/// One RS256 verification key.
#[derive(Clone, PartialEq, Eq)]
pub struct RsaKey {
    n: Vec<u8>,
    e: Vec<u8>,
}

impl std::fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RsaKey({} bits)", self.n.len() * 8)
    }
}

impl RsaKey {
    /// Checks an RS256 (RSASSA-PKCS1-v1_5 with SHA-256) signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        ring::signature::RsaPublicKeyComponents {
            n: &self.n,
            e: &self.e,
        }
        .verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            message,
            signature,
        )
        .is_ok()
    }
}

/// The signing keys of one key-set document, by `kid`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: HashMap<String, RsaKey>,
}

impl KeySet {
    pub fn get(&self, kid: &str) -> Option<&RsaKey> {
        self.keys.get(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// True when some key of `self` is gone from `newer` (a key withdrawn, not only one added).
    pub fn lost_keys_in(&self, newer: &KeySet) -> bool {
        self.keys
            .iter()
            .any(|(kid, key)| newer.keys.get(kid) != Some(key))
    }
}

/// Why a key-set document was not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("the key set is not a JSON object with a `keys` array")]
    NotAKeySet,
    #[error("the key set holds no usable RS256 signing key")]
    NoUsableKey,
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    alg: Option<String>,
    kid: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

/// Parses a JWKS document into the RS256 signing keys it holds. Unusable keys are skipped; a document
/// with none is an error (so a broken endpoint answering `{"keys":[]}` does not replace a good key set).
pub fn parse_jwks(body: &[u8]) -> Result<KeySet, JwksError> {
    let document: Document = serde_json::from_slice(body).map_err(|_| JwksError::NotAKeySet)?;
    let mut keys = HashMap::new();
    for value in document.keys.into_iter().take(MAX_KEYS) {
        // A key of an unexpected shape is skipped, not fatal: Keycloak publishes encryption keys too.
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if let Some((kid, key)) = usable_key(jwk) {
            // Two keys with one `kid` are ambiguous; the first stays, as a verifier must pick one.
            keys.entry(kid).or_insert(key);
        }
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey);
    }
    Ok(KeySet { keys })
}

fn usable_key(jwk: Jwk) -> Option<(String, RsaKey)> {
    if jwk.kty.as_deref() != Some("RSA") {
        return None;
    }
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    if jwk.alg.as_deref().is_some_and(|a| a != "RS256") {
        return None;
    }
    let kid = jwk
        .kid
        .filter(|k| !k.is_empty() && k.len() <= MAX_KID_LEN)?;
    let n = strip_leading_zeros(decode_component(jwk.n.as_deref()?)?);
    let e = strip_leading_zeros(decode_component(jwk.e.as_deref()?)?);
    if !MODULUS_BYTES.contains(&n.len()) || n.last().is_none_or(|b| b & 1 == 0) {
        return None;
    }
    // ring accepts 3 ≤ e < 2^33, odd; keep it to what fits in 32 bits (every real key uses 65537).
    let exponent = match e.len() {
        1..=4 => e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
        _ => return None,
    };
    if exponent < 3 || exponent % 2 == 0 {
        return None;
    }
    Some((kid, RsaKey { n, e }))
}

/// base64url, with or without padding (Keycloak sends none; some servers pad).
fn decode_component(raw: &str) -> Option<Vec<u8>> {
    if raw.len() > 2 * MODULUS_BYTES.end() {
        return None;
    }
    URL_SAFE_NO_PAD
        .decode(raw)
        .or_else(|_| URL_SAFE.decode(raw))
        .ok()
}

fn strip_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

/// Why a fetch failed; also the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Transport(String),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("the key set is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    Unusable(#[from] JwksError),
}

impl FetchError {
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Timeout => "timeout",
            FetchError::Transport(_) => "transport",
            FetchError::Status(_) => "http_error",
            FetchError::TooLarge => "too_large",
            FetchError::Unusable(_) => "malformed",
        }
    }
}

/// What started a fetch; also the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchTrigger {
    /// The background task (the first fetch at start, then periodically).
    Scheduled,
    /// A token named a `kid` the key set does not hold.
    UnknownKid,
}

impl FetchTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            FetchTrigger::Scheduled => "scheduled",
            FetchTrigger::UnknownKid => "unknown_kid",
        }
    }
}

/// The state of one key source, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeySourceStatus {
    pub url: String,
    /// `pending` (no fetch finished yet), `fresh` (the last fetch worked), `stale` (keys held, the last
    /// fetch failed) or `unavailable` (no keys held, the last fetch failed).
    pub state: &'static str,
    pub keys: usize,
    /// Seconds since the held key set was fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<u64>,
    pub consecutive_failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

struct Held {
    keys: Arc<KeySet>,
    fetched_at: Instant,
}

#[derive(Default)]
struct SourceState {
    history: FetchHistory,
    /// A fetch holds, or is about to take, the gate.
    in_flight: bool,
    last_error: Option<FetchError>,
}

/// The cached key set of one key URL.
pub struct KeySource {
    url: String,
    client: reqwest::Client,
    policy: KeyPolicy,
    recorder: Arc<dyn VerifyRecorder>,
    held: RwLock<Option<Held>>,
    state: Mutex<SourceState>,
    /// Serialises fetches: the single flight.
    gate: tokio::sync::Mutex<()>,
    /// Runs when a fetch finds a key withdrawn.
    on_lost_keys: Box<dyn Fn() + Send + Sync>,
    /// Counts finished fetches (bumped under the state lock), so a caller can wait for the fetch in
    /// flight to finish, and a caller that waited for the gate can see that a fetch happened meanwhile.
    finished: tokio::sync::watch::Sender<u64>,
}

/// What a fetch did to the held key set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    /// New keys are held; `lost` says some key held before is gone (withdrawn).
    Updated { lost: bool },
    /// The fetch failed; the previous keys (if any) stay.
    Failed,
    /// Another caller's fetch finished while this one waited: nothing fetched again.
    Coalesced,
}

impl KeySource {
    pub fn new(
        url: String,
        client: reqwest::Client,
        policy: KeyPolicy,
        recorder: Arc<dyn VerifyRecorder>,
        on_lost_keys: Box<dyn Fn() + Send + Sync>,
    ) -> Self {
        Self {
            url,
            client,
            policy,
            recorder,
            on_lost_keys,
            held: RwLock::new(None),
            state: Mutex::new(SourceState::default()),
            gate: tokio::sync::Mutex::new(()),
            finished: tokio::sync::watch::Sender::new(0),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn policy(&self) -> &KeyPolicy {
        &self.policy
    }

    fn state(&self) -> MutexGuard<'_, SourceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fetches_finished(&self) -> u64 {
        *self.finished.borrow()
    }

    /// The held key set, if a fetch ever worked.
    pub fn keys(&self) -> Option<Arc<KeySet>> {
        self.held
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|h| Arc::clone(&h.keys))
    }

    /// The fetch history, for the scheduler.
    pub fn history(&self) -> FetchHistory {
        self.state().history
    }

    /// Fetches now (single flight: if a fetch is in flight, waits for it and returns `Coalesced`).
    pub async fn refresh(&self, trigger: FetchTrigger) -> Refreshed {
        let seen = {
            let mut state = self.state();
            state.in_flight = true;
            self.fetches_finished()
        };
        let _gate = self.gate.lock().await;
        if self.fetches_finished() != seen {
            self.state().in_flight = false;
            return Refreshed::Coalesced;
        }
        self.fetch_holding_gate(trigger).await
    }

    /// Looks up `kid`, refetching once if the policy allows: the way a verification meets a rotated key.
    pub async fn key_for_unknown_kid(&self, kid: &str) -> Option<RsaKey> {
        let (decision, seen) = {
            let mut state = self.state();
            let decision =
                self.policy
                    .on_unknown_kid(Instant::now(), &state.history, state.in_flight);
            if decision == UnknownKid::Fetch {
                // Marked before the fetch starts, so concurrent callers see it and wait or refuse.
                state.history.last_unknown_kid_fetch = Some(Instant::now());
                state.in_flight = true;
            }
            (decision, self.fetches_finished())
        };
        match decision {
            UnknownKid::Refuse => self.recorder.unknown_kid_refused(),
            UnknownKid::Wait => {
                let mut finished = self.finished.subscribe();
                // Bounded by the fetch's own timeouts; the sender lives as long as `self`.
                let _ = finished.wait_for(|n| *n != seen).await;
            }
            UnknownKid::Fetch => {
                let _gate = self.gate.lock().await;
                if self.fetches_finished() == seen {
                    self.fetch_holding_gate(FetchTrigger::UnknownKid).await;
                } else {
                    // A scheduled fetch finished while this one waited for the gate: its keys will do.
                    self.state().in_flight = false;
                }
            }
        }
        self.keys().and_then(|keys| keys.get(kid).cloned())
    }

    async fn fetch_holding_gate(&self, trigger: FetchTrigger) -> Refreshed {
        let result = self.fetch().await;
        let now = Instant::now();
        self.recorder.key_fetch(
            &self.url,
            trigger.as_str(),
            result.as_ref().err().map_or("ok", FetchError::kind),
        );
        let mut state = self.state();
        state.in_flight = false;
        state.history.last_attempt = Some(now);
        let outcome = match result {
            Ok(keys) => {
                state.history.consecutive_failures = 0;
                state.last_error = None;
                let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
                let lost = held.as_ref().is_some_and(|h| h.keys.lost_keys_in(&keys));
                self.recorder
                    .key_set(&self.url, keys.len(), SystemTime::now());
                tracing::debug!(url = %self.url, keys = keys.len(), trigger = trigger.as_str(), "realm key set fetched");
                *held = Some(Held {
                    keys: Arc::new(keys),
                    fetched_at: now,
                });
                Refreshed::Updated { lost }
            }
            Err(error) => {
                state.history.consecutive_failures =
                    state.history.consecutive_failures.saturating_add(1);
                let failures = state.history.consecutive_failures;
                // A key URL that stays down (a retired host on the default allow-list) is reported on
                // the 1st, 2nd, 4th, 8th… failure, not every minute; `/readyz` and the metrics say it always.
                if failures.is_power_of_two() {
                    tracing::warn!(url = %self.url, trigger = trigger.as_str(), failures, %error, "cannot fetch the realm key set; the keys held (if any) stay in use");
                } else {
                    tracing::debug!(url = %self.url, trigger = trigger.as_str(), failures, %error, "cannot fetch the realm key set; the keys held (if any) stay in use");
                }
                state.last_error = Some(error);
                Refreshed::Failed
            }
        };
        // Bumped under the state lock, after the keys are stored: a waiter that wakes sees them.
        self.finished.send_modify(|n| *n = n.wrapping_add(1));
        drop(state);
        if let Refreshed::Updated { lost: true } = outcome {
            tracing::info!(url = %self.url, "a key was withdrawn from the realm key set; results verified before are dropped");
            (self.on_lost_keys)();
        }
        outcome
    }

    async fn fetch(&self) -> Result<KeySet, FetchError> {
        let mut response = self
            .client
            .get(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status(status.as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
        {
            return Err(FetchError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
            if body.len().saturating_add(chunk.len()) > MAX_JWKS_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(parse_jwks(&body)?)
    }

    /// The state for `/readyz`.
    pub fn status(&self) -> KeySourceStatus {
        let (keys, age) = match &*self.held.read().unwrap_or_else(|p| p.into_inner()) {
            Some(held) => (
                held.keys.len(),
                Some(Instant::now().saturating_duration_since(held.fetched_at)),
            ),
            None => (0, None),
        };
        let state = self.state();
        let label = match (
            keys > 0,
            state.history.last_attempt.is_some(),
            state.history.consecutive_failures,
        ) {
            (_, false, _) => "pending",
            (true, true, 0) => "fresh",
            (true, true, _) => "stale",
            (false, true, _) => "unavailable",
        };
        KeySourceStatus {
            url: self.url.clone(),
            state: label,
            keys,
            age_seconds: age.map(|a| a.as_secs()),
            consecutive_failures: state.history.consecutive_failures,
            last_error: state.last_error.as_ref().map(ToString::to_string),
        }
    }

    /// The background task: fetch at once, then follow [`KeyPolicy::next_fetch`] until `shutdown`.
    pub async fn run(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            let due = self
                .policy
                .next_fetch(Instant::now(), &self.history(), fastrand::f64());
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => return,
                () = tokio::time::sleep_until(due) => {}
            }
            self.refresh(FetchTrigger::Scheduled).await;
        }
    }
}

fn transport_error(error: reqwest::Error) -> FetchError {
    if error.is_timeout() {
        return FetchError::Timeout;
    }
    // The error and its sources on one line, clipped. The URL is configured, not secret, and reqwest
    // puts no body in its errors.
    let mut text = if error.is_connect() {
        "connection failed".to_string()
    } else {
        "transport error".to_string()
    };
    let mut source = std::error::Error::source(&error);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    FetchError::Transport(
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(200)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwks(keys: serde_json::Value) -> Vec<u8> {
        serde_json::json!({ "keys": keys }).to_string().into_bytes()
    }

    fn modulus(bytes: usize) -> String {
        let mut n = vec![0xC5u8; bytes];
        if let Some(last) = n.last_mut() {
            *last = 0x01;
        }
        URL_SAFE_NO_PAD.encode(n)
    }

    #[test]
    fn keeps_rs256_signing_keys_and_skips_the_rest() {
        let body = jwks(serde_json::json!([
            { "kid": "sig", "kty": "RSA", "alg": "RS256", "use": "sig", "n": modulus(256), "e": "AQAB" },
            { "kid": "no-use", "kty": "RSA", "n": modulus(512), "e": "AQAB" },
            { "kid": "enc", "kty": "RSA", "alg": "RSA-OAEP", "use": "enc", "n": modulus(256), "e": "AQAB" },
            { "kid": "enc-no-alg", "kty": "RSA", "use": "enc", "n": modulus(256), "e": "AQAB" },
            { "kid": "ec", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA" },
            { "kid": "hs", "kty": "oct", "k": "c2VjcmV0" },
            { "kid": "ps", "kty": "RSA", "alg": "PS256", "n": modulus(256), "e": "AQAB" },
            { "kty": "RSA", "n": modulus(256), "e": "AQAB" },
            { "kid": 7, "kty": "RSA", "n": modulus(256), "e": "AQAB" },
            "not an object",
        ]));
        let set = parse_jwks(&body).unwrap();
        let mut kids: Vec<&str> = set.kids().collect();
        kids.sort_unstable();
        assert_eq!(kids, ["no-use", "sig"]);
    }

    #[test]
    fn absurd_moduli_and_exponents_are_dropped() {
        for (n, e) in [
            (modulus(128), "AQAB".to_string()),  // 1024 bits: too small
            (modulus(2048), "AQAB".to_string()), // 16384 bits: too large
            (
                modulus(256),
                URL_SAFE_NO_PAD.encode([0u8, 0, 0, 0, 1, 0, 1]),
            ), // leading zeros: fine
            (modulus(256), URL_SAFE_NO_PAD.encode([1u8, 0, 0, 0, 0, 1])), // e > 32 bits
            (modulus(256), "Ag".to_string()),    // e = 2: even
            (modulus(256), "AQ".to_string()),    // e = 1
            (modulus(256), String::new()),       // empty e
            ("!!!".to_string(), "AQAB".to_string()),
            ("A".repeat(100_000), "AQAB".to_string()),
        ] {
            let body = jwks(serde_json::json!([{ "kid": "k", "kty": "RSA", "n": n, "e": e }]));
            let parsed = parse_jwks(&body);
            // The one case above that is valid: leading zero bytes of e are stripped.
            if e == URL_SAFE_NO_PAD.encode([0u8, 0, 0, 0, 1, 0, 1]) {
                assert!(parsed.is_ok());
            } else {
                assert_eq!(
                    parsed,
                    Err(JwksError::NoUsableKey),
                    "n={} e={e}",
                    &n[..8.min(n.len())]
                );
            }
        }
        let mut even = vec![0xC5u8; 256];
        even[255] = 0x02;
        let body = jwks(
            serde_json::json!([{ "kid": "k", "kty": "RSA", "n": URL_SAFE_NO_PAD.encode(even), "e": "AQAB" }]),
        );
        assert_eq!(parse_jwks(&body), Err(JwksError::NoUsableKey));
    }

    #[test]
    fn documents_that_are_not_key_sets_are_errors() {
        for body in [
            &b""[..],
            b"null",
            b"[]",
            b"{}",
            b"{\"keys\":{}}",
            b"<html>502</html>",
        ] {
            assert_eq!(parse_jwks(body), Err(JwksError::NotAKeySet));
        }
        assert_eq!(parse_jwks(b"{\"keys\":[]}"), Err(JwksError::NoUsableKey));
    }

    #[test]
    fn the_first_of_two_keys_with_one_kid_stays_and_lost_keys_are_seen() {
        let first = jwks(serde_json::json!([
            { "kid": "a", "kty": "RSA", "n": modulus(256), "e": "AQAB" },
            { "kid": "a", "kty": "RSA", "n": modulus(512), "e": "AQAB" },
        ]));
        let set = parse_jwks(&first).unwrap();
        assert_eq!(set.get("a").map(|k| k.n.len()), Some(256));
        let second = parse_jwks(&jwks(serde_json::json!([
            { "kid": "a", "kty": "RSA", "n": modulus(256), "e": "AQAB" },
            { "kid": "b", "kty": "RSA", "n": modulus(256), "e": "AQAB" },
        ])))
        .unwrap();
        assert!(!set.lost_keys_in(&second), "a key added loses nothing");
        let third = parse_jwks(&jwks(serde_json::json!([
            { "kid": "b", "kty": "RSA", "n": modulus(256), "e": "AQAB" },
        ])))
        .unwrap();
        assert!(second.lost_keys_in(&third));
    }
}
