//! The pure verification of one entity token: parse, pick the key, check the signature, check the claims.
//!
//! No clock, no network, no cache: the caller passes the time, the issuer allow-list and a way to find the
//! key, so every rule is unit-tested (and fuzzed, `fuzz/fuzz_targets/inbound_token.rs`) on plain values.
//!
//! The rules (spec §3): the token is a compact JWS of three base64url parts (strict: no padding, no
//! stray bits); the header's `alg` is exactly `RS256` — `none`, every `HS*` (including an HS256 token
//! "signed" with the realm's public key), `PS*`, `ES*` and anything else are refused before any key is
//! looked at; a `crit` header is refused (we implement no extension); `jku`, `x5u`, `jwk` and `x5c` are
//! never followed. The key comes from the key set of the allow-listed issuer named by `iss`, by `kid`.
//! `exp` is required; `exp`, `nbf` and `iat` are checked with the leeway; `azp` and `clientId` must both
//! name the same well-formed entity id; the role comes from `roles` (a string, or an array of strings).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::keyset::RsaKey;
use crate::entity::EntityId;

/// Longest token accepted. Keycloak entity tokens are 1–2 KiB; a request head is at most 8 KiB anyway.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// `9999-12-31T23:59:59Z` + 1 s: the first instant RFC 3339 cannot write.
const LAST_FORMATTABLE_SECOND: i64 = 253_402_300_800;
/// Longest role name kept from `roles`.
const MAX_ROLE_LEN: usize = 32;

/// Why a token is not valid: the `message` of a `401 invalid_token`, and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Rejection {
    #[error("missing")]
    Missing,
    #[error("malformed")]
    Malformed,
    #[error("bad signature")]
    BadSignature,
    #[error("expired")]
    Expired,
    #[error("not yet valid")]
    NotYetValid,
    #[error("issuer not allowed")]
    IssuerNotAllowed,
    #[error("unknown key")]
    UnknownKey,
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
}

impl Rejection {
    pub const ALL: [Rejection; 8] = [
        Rejection::Missing,
        Rejection::Malformed,
        Rejection::BadSignature,
        Rejection::Expired,
        Rejection::NotYetValid,
        Rejection::IssuerNotAllowed,
        Rejection::UnknownKey,
        Rejection::AlgorithmNotAllowed,
    ];

    /// The message of the `401` answer (and of the CLI).
    pub fn message(self) -> &'static str {
        match self {
            Rejection::Missing => "missing",
            Rejection::Malformed => "malformed",
            Rejection::BadSignature => "bad signature",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not yet valid",
            Rejection::IssuerNotAllowed => "issuer not allowed",
            Rejection::UnknownKey => "unknown key",
            Rejection::AlgorithmNotAllowed => "algorithm not allowed",
        }
    }

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Missing => "missing",
            Rejection::Malformed => "malformed",
            Rejection::BadSignature => "bad_signature",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::IssuerNotAllowed => "issuer_not_allowed",
            Rejection::UnknownKey => "unknown_key",
            Rejection::AlgorithmNotAllowed => "algorithm_not_allowed",
        }
    }
}

/// A valid token of the wrong sender: the `error` of a `403`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Mismatch {
    #[error("wrong entity")]
    WrongEntity,
    #[error("wrong role")]
    WrongRole,
}

impl Mismatch {
    pub const ALL: [Mismatch; 2] = [Mismatch::WrongEntity, Mismatch::WrongRole];

    pub fn as_str(self) -> &'static str {
        match self {
            Mismatch::WrongEntity => "wrong_entity",
            Mismatch::WrongRole => "wrong_role",
        }
    }
}

/// An entity type of the AA network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Aa,
    Fiu,
    Fip,
}

impl Role {
    /// `AA`, `FIU` or `FIP`, in any case.
    pub fn parse(raw: &str) -> Option<Role> {
        let raw = raw.trim();
        [Role::Aa, Role::Fiu, Role::Fip]
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(raw))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Aa => "AA",
            Role::Fiu => "FIU",
            Role::Fip => "FIP",
        }
    }
}

/// Who the caller expects the sender to be. Empty: anyone the realm issued an entity token to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expectation {
    /// Any of these roles; any role when empty.
    pub roles: Vec<Role>,
    pub entity_id: Option<String>,
}

/// A mistake in what the caller expects (not in the token): a `400`, a config error in the CLI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadExpectation {
    #[error("role {0:?} is not AA, FIU or FIP (comma-separated for several)")]
    Role(String),
    #[error("entityId is not an entity id: {0}")]
    EntityId(#[from] crate::entity::EntityIdError),
}

impl Expectation {
    /// From the optional `role` (comma-separated) and `entityId` of a request.
    pub fn parse(role: Option<&str>, entity_id: Option<&str>) -> Result<Self, BadExpectation> {
        let mut roles = Vec::new();
        for part in role.unwrap_or("").split(',') {
            if part.trim().is_empty() {
                continue;
            }
            let role = Role::parse(part).ok_or_else(|| BadExpectation::Role(part.to_string()))?;
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
        let entity_id = match entity_id.map(str::trim).filter(|e| !e.is_empty()) {
            Some(raw) => Some(
                EntityId::parse(raw)
                    .map_err(BadExpectation::EntityId)?
                    .as_str()
                    .to_string(),
            ),
            None => None,
        };
        Ok(Self { roles, entity_id })
    }

    /// Checks a verified token against the expectation; the entity first, then the role.
    pub fn check(&self, verified: &Verified) -> Result<(), Mismatch> {
        if self
            .entity_id
            .as_deref()
            .is_some_and(|expected| expected != verified.entity_id.as_str())
        {
            return Err(Mismatch::WrongEntity);
        }
        if !self.roles.is_empty()
            && !verified.roles.iter().any(|held| {
                self.roles
                    .iter()
                    .any(|wanted| wanted.as_str().eq_ignore_ascii_case(held))
            })
        {
            return Err(Mismatch::WrongRole);
        }
        Ok(())
    }
}

/// A token taken apart, before any key is looked at. Borrowed from the token.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub kid: Option<String>,
    /// `iss`, when it is a string.
    pub issuer: Option<String>,
    pub claims: Map<String, Value>,
    /// `header.payload`, what the signature covers.
    pub signing_input: &'a str,
    pub signature: Vec<u8>,
}

#[derive(Deserialize)]
struct Header {
    alg: Option<Value>,
    kid: Option<Value>,
    crit: Option<Value>,
}

fn decode(part: &str) -> Result<Vec<u8>, Rejection> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Rejection::Malformed)
}

/// Takes a compact JWS apart: three strict base64url parts, a JSON header with `alg: RS256`, a JSON
/// object of claims, a signature. Checks nothing that needs a key or a clock.
pub fn parse(token: &str) -> Result<Parsed<'_>, Rejection> {
    if token.is_empty() {
        return Err(Rejection::Missing);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Rejection::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::Malformed);
    };
    let header: Header =
        serde_json::from_slice(&decode(header)?).map_err(|_| Rejection::Malformed)?;
    // The algorithm first: an `alg: none` or HS256 token is refused as such, whatever else is wrong.
    match header.alg {
        Some(Value::String(alg)) if alg == "RS256" => {}
        Some(Value::String(_)) => return Err(Rejection::AlgorithmNotAllowed),
        _ => return Err(Rejection::Malformed),
    }
    if header.crit.is_some() {
        return Err(Rejection::Malformed);
    }
    let kid = match header.kid {
        None => None,
        Some(Value::String(kid)) => Some(kid),
        Some(_) => return Err(Rejection::Malformed),
    };
    let claims: Map<String, Value> =
        serde_json::from_slice(&decode(payload)?).map_err(|_| Rejection::Malformed)?;
    let signature = decode(signature)?;
    if signature.is_empty() {
        return Err(Rejection::Malformed);
    }
    let issuer = claims
        .get("iss")
        .and_then(Value::as_str)
        .map(str::to_string);
    // `token` has exactly two dots here, so the last one ends the signing input.
    let signing_input = token
        .rfind('.')
        .and_then(|end| token.get(..end))
        .ok_or(Rejection::Malformed)?;
    Ok(Parsed {
        kid,
        issuer,
        claims,
        signing_input,
        signature,
    })
}

/// Checks the signature with `key`.
pub fn check_signature(parsed: &Parsed<'_>, key: &RsaKey) -> Result<(), Rejection> {
    if key.verify(parsed.signing_input.as_bytes(), &parsed.signature) {
        Ok(())
    } else {
        Err(Rejection::BadSignature)
    }
}

/// A token whose signature, issuer and claims are good.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub entity_id: EntityId,
    /// From `roles`, in the token's order.
    pub roles: Vec<String>,
    pub issuer: String,
    /// `exp`.
    pub expires_at: SystemTime,
    /// `exp` as RFC 3339, formatted once.
    pub expires_at_text: String,
    pub kid: String,
    /// Every claim, as compact JSON, serialized once.
    pub claims_json: String,
}

impl Verified {
    /// The roles as one string (`FIU`, or `FIU,FIP` for an array).
    pub fn role(&self) -> String {
        self.roles.join(",")
    }

    /// Every claim.
    pub fn claims(&self) -> Map<String, Value> {
        serde_json::from_str(&self.claims_json).unwrap_or_default()
    }

    /// Whole seconds until `exp` (0 once passed).
    pub fn expires_in(&self, now: SystemTime) -> u64 {
        self.expires_at
            .duration_since(now)
            .map_or(0, |d| d.as_secs())
    }
}

/// A JWT NumericDate as whole seconds since the epoch. Integers as they are; a fractional number is
/// floored; anything non-finite or beyond ±2^53 is malformed (no silent wrapping or saturation).
fn numeric_date(value: &Value) -> Result<i64, Rejection> {
    const LIMIT: i64 = 1 << 53;
    let secs = match value {
        Value::Number(n) => match n.as_i64() {
            Some(i) => i,
            None => {
                let f = n.as_f64().ok_or(Rejection::Malformed)?;
                if !f.is_finite() || f.abs() >= LIMIT as f64 {
                    return Err(Rejection::Malformed);
                }
                // In range and finite: the cast is exact after flooring.
                f.floor() as i64
            }
        },
        _ => return Err(Rejection::Malformed),
    };
    if secs.unsigned_abs() >= LIMIT.unsigned_abs() {
        return Err(Rejection::Malformed);
    }
    Ok(secs)
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

fn system_time(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
    .unwrap_or(UNIX_EPOCH)
}

/// Checks the claims of a token whose signature is good: times (with `leeway`), the caller's identity and
/// role. `issuer` is the allow-listed issuer the token named; `kid` the key that verified it.
pub fn check_claims(
    parsed: Parsed<'_>,
    issuer: &str,
    kid: &str,
    now: SystemTime,
    leeway: Duration,
) -> Result<Verified, Rejection> {
    let claims = parsed.claims;
    // i128: no sum or difference of two i64 (each within ±2^53 or the clock's range) can overflow.
    let now = i128::from(unix_seconds(now));
    let leeway = i128::from(leeway.as_secs());
    let exp = numeric_date(claims.get("exp").ok_or(Rejection::Malformed)?)?;
    let optional = |name: &str| claims.get(name).map(numeric_date).transpose();
    let nbf = optional("nbf")?;
    let iat = optional("iat")?;
    // `exp` after `iat`, and before the year 10000: it is formatted as RFC 3339, which has four digits.
    if iat.is_some_and(|iat| exp <= iat) || exp >= LAST_FORMATTABLE_SECOND {
        return Err(Rejection::Malformed);
    }
    if i128::from(exp) + leeway <= now {
        return Err(Rejection::Expired);
    }
    if [nbf, iat]
        .into_iter()
        .flatten()
        .any(|t| i128::from(t) > now + leeway)
    {
        return Err(Rejection::NotYetValid);
    }
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    let (Some(azp), Some(client_id)) = (text("azp"), text("clientId")) else {
        return Err(Rejection::Malformed);
    };
    if azp != client_id {
        return Err(Rejection::Malformed);
    }
    let entity_id = EntityId::parse(azp).map_err(|_| Rejection::Malformed)?;
    let roles = roles(claims.get("roles"))?;
    let expires_at = system_time(exp);
    Ok(Verified {
        entity_id,
        roles,
        issuer: issuer.to_string(),
        expires_at,
        expires_at_text: crate::timefmt::rfc3339_seconds(expires_at),
        kid: kid.to_string(),
        claims_json: serde_json::to_string(&claims).map_err(|_| Rejection::Malformed)?,
    })
}

/// `roles`: one name, or an array of names (at least one). Names are short words, so they can go into
/// a response header as they are.
fn roles(value: Option<&Value>) -> Result<Vec<String>, Rejection> {
    let well_formed = |role: &str| {
        (1..=MAX_ROLE_LEN).contains(&role.len())
            && role
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let names: Vec<String> = match value {
        Some(Value::String(role)) => vec![role.clone()],
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= 8 => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or(Rejection::Malformed))
            .collect::<Result<_, _>>()?,
        _ => return Err(Rejection::Malformed),
    };
    if names.iter().all(|r| well_formed(r)) {
        Ok(names)
    } else {
        Err(Rejection::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::keyset::parse_jwks;
    use crate::simulator::jwt::SigningKey;
    use serde_json::json;

    const ISS: &str = "https://api.sandbox.sahamati.org.in/auth/realms/sahamati";
    const NOW: u64 = 1_800_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn claims() -> Value {
        json!({
            "iss": ISS, "exp": NOW + 3600, "iat": NOW - 10, "azp": "FIU-ONE", "clientId": "FIU-ONE",
            "roles": "FIU", "aud": "account",
        })
    }

    fn key() -> SigningKey {
        SigningKey::simulator_key().unwrap()
    }

    /// The whole pure pipeline, as the verifier runs it.
    fn verify(token: &str, key: &SigningKey) -> Result<Verified, Rejection> {
        let set = parse_jwks(key.jwks().to_string().as_bytes()).unwrap();
        let parsed = parse(token)?;
        if parsed.issuer.as_deref() != Some(ISS) {
            return Err(Rejection::IssuerNotAllowed);
        }
        let kid = parsed.kid.clone().ok_or(Rejection::UnknownKey)?;
        let rsa = set.get(&kid).ok_or(Rejection::UnknownKey)?;
        check_signature(&parsed, rsa)?;
        check_claims(parsed, ISS, &kid, now(), Duration::from_secs(60))
    }

    fn with(changes: Value) -> Value {
        let mut c = claims();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    #[test]
    fn a_good_token_verifies_with_its_identity() {
        let key = key();
        let verified = verify(&key.sign(&claims()).unwrap(), &key).unwrap();
        assert_eq!(verified.entity_id.as_str(), "FIU-ONE");
        assert_eq!(verified.role(), "FIU");
        assert_eq!(verified.issuer, ISS);
        assert_eq!(verified.expires_in(now()), 3600);
        let array = key.sign(&with(json!({ "roles": ["FIU", "FIP"] }))).unwrap();
        assert_eq!(verify(&array, &key).unwrap().role(), "FIU,FIP");
    }

    #[test]
    fn times_are_checked_with_the_leeway() {
        let key = key();
        let check = |c: Value| verify(&key.sign(&c).unwrap(), &key);
        assert!(check(with(json!({ "exp": NOW - 59, "iat": NOW - 100 }))).is_ok());
        assert_eq!(
            check(with(json!({ "exp": NOW - 60, "iat": NOW - 100 }))),
            Err(Rejection::Expired)
        );
        assert_eq!(
            check(with(json!({ "exp": null }))),
            Err(Rejection::Malformed)
        );
        assert_eq!(
            check(with(json!({ "exp": "soon" }))),
            Err(Rejection::Malformed)
        );
        assert!(check(with(json!({ "nbf": NOW + 60 }))).is_ok());
        assert_eq!(
            check(with(json!({ "nbf": NOW + 61 }))),
            Err(Rejection::NotYetValid)
        );
        assert_eq!(
            check(with(json!({ "iat": NOW + 61 }))),
            Err(Rejection::NotYetValid)
        );
        assert_eq!(
            check(with(json!({ "iat": NOW + 3600 }))),
            Err(Rejection::Malformed),
            "exp must be after iat"
        );
        assert!(check(with(json!({ "exp": (NOW + 10) as f64 + 0.5 }))).is_ok());
        for absurd in [
            json!(1e300),
            json!(-1e300),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(253_402_300_800u64),
            json!(9_007_199_254_740_991u64),
        ] {
            assert_eq!(
                check(with(json!({ "exp": absurd }))),
                Err(Rejection::Malformed)
            );
        }
    }

    #[test]
    fn the_caller_identity_must_be_present_and_consistent() {
        let key = key();
        let check = |c: Value| verify(&key.sign(&c).unwrap(), &key);
        for broken in [
            json!({ "azp": null }),
            json!({ "clientId": null }),
            json!({ "clientId": "FIU-TWO" }),
            json!({ "azp": "FIU/../X", "clientId": "FIU/../X" }),
            json!({ "roles": null }),
            json!({ "roles": [] }),
            json!({ "roles": [1] }),
            json!({ "roles": "FIU\r\nX-Injected: 1" }),
        ] {
            assert_eq!(
                check(with(broken.clone())),
                Err(Rejection::Malformed),
                "{broken}"
            );
        }
    }

    fn b64(value: &str) -> String {
        URL_SAFE_NO_PAD.encode(value)
    }

    #[test]
    fn algorithms_other_than_rs256_are_refused_before_any_key_is_used() {
        let key = key();
        let payload = b64(&claims().to_string());
        for alg in [
            "none", "HS256", "HS512", "RS512", "PS256", "ES256", "rs256", "",
        ] {
            let header = b64(&json!({ "alg": alg, "kid": key.kid() }).to_string());
            for signature in ["", "c2ln"] {
                let token = format!("{header}.{payload}.{signature}");
                assert_eq!(
                    parse(&token).map(|_| ()),
                    Err(Rejection::AlgorithmNotAllowed),
                    "{alg}"
                );
            }
        }
        // HS256 with the realm's public key as the HMAC secret: the classic confusion.
        let header = b64(&json!({ "alg": "HS256", "kid": key.kid() }).to_string());
        let input = format!("{header}.{payload}");
        let secret = key.jwks().to_string();
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()),
            input.as_bytes(),
        );
        let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()));
        assert_eq!(verify(&forged, &key), Err(Rejection::AlgorithmNotAllowed));
    }

    #[test]
    fn malformed_tokens_are_malformed_and_tampering_breaks_the_signature() {
        let key = key();
        let token = key.sign(&claims()).unwrap();
        assert_eq!(parse("").map(|_| ()), Err(Rejection::Missing));
        for bad in [
            "0",
            "a.b",
            "a.b.c.d",
            "...",
            "not a token",
            &format!("{token}."),
            &format!("{token}=="),
            &format!("{}.{}", token, "x"),
            &"a".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert_eq!(
                parse(bad).map(|_| ()),
                Err(Rejection::Malformed),
                "{bad:.40}"
            );
        }
        // Tampered claims, signature and header.
        let parts: Vec<&str> = token.split('.').collect();
        let forged_claims =
            b64(&with(json!({ "azp": "FIU-TWO", "clientId": "FIU-TWO" })).to_string());
        let tampered = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert_eq!(verify(&tampered, &key), Err(Rejection::BadSignature));
        let mut signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        signature[10] ^= 1;
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            URL_SAFE_NO_PAD.encode(&signature)
        );
        assert_eq!(verify(&tampered, &key), Err(Rejection::BadSignature));
        let header = b64(&json!({ "alg": "RS256", "kid": key.kid(), "typ": "at+jwt" }).to_string());
        let tampered = format!("{}.{}.{}", header, parts[1], parts[2]);
        assert_eq!(verify(&tampered, &key), Err(Rejection::BadSignature));
        let crit = b64(
            &json!({ "alg": "RS256", "kid": key.kid(), "crit": ["b64"], "b64": false }).to_string(),
        );
        assert_eq!(
            parse(&format!("{}.{}.{}", crit, parts[1], parts[2])).map(|_| ()),
            Err(Rejection::Malformed)
        );
        // A non-canonical base64url signature (stray low bits) is refused, not silently normalised.
        let last = parts[2].chars().last().unwrap();
        let bumped = char::from(u8::try_from(u32::from(last) + 1).unwrap());
        if bumped.is_ascii_alphanumeric() {
            let stray = format!(
                "{}.{}.{}{}",
                parts[0],
                parts[1],
                &parts[2][..parts[2].len() - 1],
                bumped
            );
            assert!(verify(&stray, &key).is_err());
        }
    }

    proptest::proptest! {
        /// Whatever the bytes, the parser and the claim checks answer; they never panic. (The fuzz target
        /// `inbound_token` does the same, longer, under libFuzzer.)
        #[test]
        fn no_token_makes_the_checks_panic(
            header in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            signature in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            raw in ".{0,300}",
        ) {
            let _ = parse(&raw);
            let token = format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(payload),
                URL_SAFE_NO_PAD.encode(signature)
            );
            if let Ok(parsed) = parse(&token) {
                let _ = check_claims(parsed, ISS, "kid", now(), Duration::from_secs(60));
            }
        }

        /// Any numbers in the time claims: a verdict, never a panic or an overflow; a token accepted has an
        /// `exp` that formats, after `now - leeway`.
        #[test]
        fn any_numbers_in_the_time_claims_get_a_verdict(
            exp in proptest::prelude::any::<f64>(),
            iat in proptest::prelude::any::<i64>(),
            nbf in proptest::prelude::any::<u64>(),
            leeway in 0u64..100_000,
            use_int in proptest::prelude::any::<bool>(),
        ) {
            let exp = if use_int { json!(exp as i64) } else { json!(exp) };
            let token = format!(
                "{}.{}.c2ln",
                b64(&json!({ "alg": "RS256", "kid": "k" }).to_string()),
                b64(&with(json!({ "exp": exp, "iat": iat, "nbf": nbf })).to_string())
            );
            let parsed = parse(&token).unwrap();
            if let Ok(verified) = check_claims(parsed, ISS, "k", now(), Duration::from_secs(leeway)) {
                proptest::prop_assert!(!verified.expires_at_text.is_empty());
                proptest::prop_assert!(verified.expires_at + Duration::from_secs(leeway) > now());
            }
        }
    }

    #[test]
    fn expectations_are_parsed_and_checked() {
        let key = key();
        let verified = verify(&key.sign(&claims()).unwrap(), &key).unwrap();
        let expect = |role: Option<&str>, id: Option<&str>| {
            Expectation::parse(role, id).unwrap().check(&verified)
        };
        assert_eq!(expect(None, None), Ok(()));
        assert_eq!(expect(Some("fiu"), Some("FIU-ONE")), Ok(()));
        assert_eq!(expect(Some("AA,FIU"), None), Ok(()));
        assert_eq!(expect(Some("AA"), None), Err(Mismatch::WrongRole));
        assert_eq!(
            expect(Some("AA"), Some("FIU-TWO")),
            Err(Mismatch::WrongEntity)
        );
        assert_eq!(expect(Some(""), Some("")), Ok(()));
        assert!(matches!(
            Expectation::parse(Some("CR"), None),
            Err(BadExpectation::Role(_))
        ));
        assert!(matches!(
            Expectation::parse(None, Some("a b")),
            Err(BadExpectation::EntityId(_))
        ));
    }
}
