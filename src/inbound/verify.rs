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
//! `exp` is required; `exp`, `nbf` and `iat` are checked with the leeway; the entity is `azp` (a well-formed
//! entity id), and `clientId` or `client_id`, when present, must name the same; the role comes from
//! `roles` (a string, or an array of strings), which a user (admin) token lacks — it is refused, as is any
//! token naming administered entities (`entity_meta`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::entity::EntityId;
use crate::keys::RsaKey;

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
    #[error("ambiguous credentials")]
    AmbiguousCredentials,
}

impl Rejection {
    pub const ALL: [Rejection; 9] = [
        Rejection::Missing,
        Rejection::Malformed,
        Rejection::BadSignature,
        Rejection::Expired,
        Rejection::NotYetValid,
        Rejection::IssuerNotAllowed,
        Rejection::UnknownKey,
        Rejection::AlgorithmNotAllowed,
        Rejection::AmbiguousCredentials,
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
            Rejection::AmbiguousCredentials => "the ReBIT api-key headers carry different tokens",
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
            Rejection::AmbiguousCredentials => "ambiguous_credentials",
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

pub use crate::entity::Role;

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
    // The entity is `azp`. Keycloak's older service-account mapper adds `clientId`, its newer one
    // `client_id`; neither is required, but one that is present must name the same entity.
    let azp = text("azp").ok_or(Rejection::Malformed)?;
    for alias in ["clientId", "client_id"] {
        if claims.get(alias).is_some_and(|v| v.as_str() != Some(azp)) {
            return Err(Rejection::Malformed);
        }
    }
    // A user (admin) token has the realm's base claims too, but names the entities it administers
    // (`entity_meta`) and has no `roles`: never an entity's credential.
    if claims.contains_key("entity_meta") {
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

// The tests sign with the simulator's realm key.
#[cfg(test)]
#[cfg(feature = "simulator")]
mod tests;
