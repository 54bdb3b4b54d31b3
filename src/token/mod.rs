//! Entity access tokens: what one is, how it is checked, when it is refreshed, and who holds it.
//!
//! - [`Token`] (this file): a token as the broker holds it — the value in a redacting type, its schedule on
//!   the monotonic clock, and what its JWT claims say, cross-checked against the IAM's response.
//! - [`policy`]: the pure refresh, backoff, hand-out and caller-attempt rules.
//! - [`broker`]: the handle — the slots, cold requests coalesced in one flight per entity, forced
//!   refreshes.
//! - `slot`: one entity's newest token, fetch gate and attempt bookkeeping.
//! - [`fetch`]: the one place that calls the IAM, and what it records about each call.
//! - [`refresher`]: the background task per entity that follows the policy.
//! - [`status`]: what callers get ([`Served`](status::Served), [`TokenError`](status::TokenError)), why
//!   a fetch failed ([`FetchError`](status::FetchError)) and what `/readyz` and `/metrics` read
//!   ([`EntityStatus`](status::EntityStatus)).
//! - [`recorder`]: what the token path reports ([`Trigger`](recorder::Trigger) and the counts), implemented
//!   by the metrics registry.
//!
//! Inside the module the imports run one way, from `broker` down through `fetch`, `slot` and `status` to
//! [`Token`] in this file; `refresher` uses `policy` alone, and `recorder` and `policy` use nothing of the
//! module.
//!
//! The secret each fetch uses is read from the entity's [`crate::secret::SecretCell`], which the secret
//! module owns; what the IAM says about the secret goes back to it as [`crate::secret::SecretEvent`]s.

pub mod broker;
pub mod fetch;
pub mod policy;
pub mod recorder;
pub mod refresher;
mod slot;
pub mod status;

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::time::Instant;

use crate::entity::{EntityId, Role, fingerprint};
use crate::iam::TokenGrant;
use crate::timefmt;
use policy::{RefreshPolicy, TokenSchedule};

/// A token the broker may hand out until `schedule.serve_until`.
pub struct Token {
    pub entity_id: EntityId,
    access_token: SecretString,
    /// `sha256:` + 8 hex digits of the token, for logs.
    pub fingerprint: String,
    pub schedule: TokenSchedule,
    /// The lifetime used (the smaller of `expiresIn` and the JWT's `exp - iat`).
    pub lifetime: Duration,
    /// `received_wall + lifetime`: what `expiresAt` reports.
    pub expires_at_wall: SystemTime,
    /// Local wall clock minus the JWT's `iat` when the token arrived (positive: our clock is ahead).
    pub clock_skew_seconds: Option<f64>,
    /// The JWT's `exp`, for cross-checks.
    pub jwt_expires_at: Option<SystemTime>,
    /// The `secret-expiry-ts` claim: when the entity secret expires.
    pub secret_expires_at: Option<SystemTime>,
    /// The IAM's warning on this response (secret expired, within the grace period).
    pub iam_message: Option<String>,
    /// The entity's roles, from the token's `roles` claim: who it is in the network.
    pub roles: Vec<Role>,
    /// The answer, serialized once: `{"accessToken":…,"expiresIn":` + seconds left + this tail. Only
    /// `expiresIn` changes between requests, so nothing else is serialized on the hot path.
    json_head: Vec<u8>,
    json_tail: Vec<u8>,
    /// The last JSON answer assembled and the `expiresIn` it carries. Requests within the same second
    /// share it, so a read costs a lock and a reference count, not an allocation and a copy.
    json_latest: Mutex<Option<(u64, Bytes)>>,
    /// The bare token, for `Accept: text/plain` (a cheap clone per request).
    plain: Bytes,
}

impl Token {
    /// The bearer token itself. Call sites are the HTTP response body and nothing else.
    pub fn expose(&self) -> &str {
        self.access_token.expose_secret()
    }

    pub fn servable(&self, now: Instant) -> bool {
        self.schedule.servable(now)
    }

    /// Whole seconds until the IAM's expiry, as `expiresIn` reports it.
    pub fn seconds_left(&self, now: Instant) -> u64 {
        self.schedule
            .expires_at
            .saturating_duration_since(now)
            .as_secs()
    }

    pub fn same_value_as(&self, other: &Token) -> bool {
        self.access_token.expose_secret() == other.access_token.expose_secret()
    }

    /// The JSON answer at `now`: `{"accessToken","tokenType","expiresIn","expiresAt","entityId"}`.
    pub fn json_body(&self, now: Instant) -> Bytes {
        let seconds_left = self.seconds_left(now);
        let mut latest = self
            .json_latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((seconds, body)) = latest.as_ref()
            && *seconds == seconds_left
        {
            return body.clone();
        }
        let mut itoa = itoa::Buffer::new();
        let seconds = itoa.format(seconds_left);
        let mut body =
            Vec::with_capacity(self.json_head.len() + seconds.len() + self.json_tail.len());
        body.extend_from_slice(&self.json_head);
        body.extend_from_slice(seconds.as_bytes());
        body.extend_from_slice(&self.json_tail);
        let body = Bytes::from(body);
        *latest = Some((seconds_left, body.clone()));
        body
    }

    /// The bare token.
    pub fn plain_body(&self) -> Bytes {
        self.plain.clone()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("entity_id", &self.entity_id)
            .field("fingerprint", &self.fingerprint)
            .field("lifetime", &self.lifetime)
            .field("schedule", &self.schedule)
            .finish_non_exhaustive()
    }
}

/// The longest a token is ever held, whatever the IAM and the JWT say: twice the documented 24 hours. An
/// absurd `expiresIn` (10^12 s, 2^64 − 1) or a JWT without `exp` cannot make a token live for ever.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(48 * 3600);

/// `to - from` in seconds as a duration: zero when not positive, at most [`MAX_TOKEN_LIFETIME`], and never
/// a panic for a non-finite or huge difference.
fn seconds_between(from: f64, to: f64) -> Duration {
    let difference = to - from;
    if !(difference.is_finite() && difference > 0.0) {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(difference.min(MAX_TOKEN_LIFETIME.as_secs_f64()))
        .unwrap_or(Duration::ZERO)
}

/// Why a 200 answer from the IAM was not accepted as a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenRejected {
    #[error("accessToken is not a decodable JWT ({0})")]
    NotAJwt(String),
    #[error("token was issued to {found:?}, not to this entity")]
    WrongEntity { found: String },
    #[error("neither expiresIn nor the JWT's exp/iat give a lifetime")]
    NoLifetime,
    #[error("token lifetime of {0:?} is too short to hand out")]
    TooShort(Duration),
    #[error("tokenType is {0:?}, not Bearer")]
    NotBearer(String),
}

/// The claims the broker reads (spec §3.2). Numbers are read as floats so that an integer or a float both
/// work; anything else makes the token undecodable.
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    iat: Option<f64>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default, rename = "clientId")]
    client_id: Option<String>,
    /// Keycloak's newer service-account mapper writes `client_id`.
    #[serde(default, rename = "client_id")]
    client_id_snake: Option<String>,
    /// `AA`, `FIU` or `FIP`: a string, or an array of them. Anything else is dropped, never fatal.
    #[serde(default)]
    roles: Option<serde_json::Value>,
    #[serde(default, rename = "secret-expiry-ts")]
    secret_expiry_ts: Option<String>,
}

/// The roles a `roles` claim names (a string or an array of strings); unknown names are skipped.
fn roles_of(value: Option<&serde_json::Value>) -> Vec<Role> {
    let names: Vec<&str> = match value {
        Some(serde_json::Value::String(one)) => vec![one.as_str()],
        Some(serde_json::Value::Array(many)) => {
            many.iter().filter_map(serde_json::Value::as_str).collect()
        }
        _ => Vec::new(),
    };
    let mut roles = Vec::new();
    for role in names.into_iter().filter_map(Role::parse) {
        if !roles.contains(&role) {
            roles.push(role);
        }
    }
    roles
}

impl Token {
    /// Checks a grant and schedules it. `jitter` is uniform in `[0, 1)` and places the refresh in its window.
    pub fn from_grant(
        entity_id: &EntityId,
        grant: TokenGrant,
        policy: &RefreshPolicy,
        jitter: f64,
    ) -> Result<Token, TokenRejected> {
        if let Some(kind) = grant.token_type.as_deref()
            && !kind.eq_ignore_ascii_case("bearer")
        {
            return Err(TokenRejected::NotBearer(kind.chars().take(32).collect()));
        }
        let claims: Claims =
            jsonwebtoken::dangerous::insecure_decode_claims(grant.access_token.expose_secret())
                .map_err(|e| TokenRejected::NotAJwt(e.to_string()))?;
        for issued_to in [&claims.azp, &claims.client_id, &claims.client_id_snake]
            .into_iter()
            .flatten()
        {
            if issued_to != entity_id.as_str() {
                return Err(TokenRejected::WrongEntity {
                    found: issued_to.chars().take(64).collect(),
                });
            }
        }
        let finite = |v: Option<f64>| v.filter(|x| x.is_finite());
        let (exp, iat) = (finite(claims.exp), finite(claims.iat));
        // What the JWT itself allows. With `iat`, a difference of two server times, so local clock skew
        // cannot distort it; without, `exp` against our own clock. An `exp` at or before `iat` (or now)
        // leaves nothing to hand out.
        let jwt_lifetime = match (exp, iat) {
            (Some(exp), Some(iat)) => Some(seconds_between(iat, exp)),
            (Some(exp), None) => Some(seconds_between(
                timefmt::unix_seconds(grant.received_wall),
                exp,
            )),
            (None, _) => None,
        };
        // The smallest of what the answer, the JWT and our ceiling allow: a response that claims more life
        // than its own JWT must not make us hand the token out after its `exp`.
        let lifetime = [grant.expires_in, jwt_lifetime]
            .into_iter()
            .flatten()
            .min()
            .ok_or(TokenRejected::NoLifetime)?
            .min(MAX_TOKEN_LIFETIME);
        let received_at = Instant::from_std(grant.received_at);
        let schedule = policy
            .schedule(received_at, lifetime, jitter)
            .ok_or(TokenRejected::TooShort(lifetime))?;
        let token_text = grant.access_token.expose_secret();
        // The client admits only token68 characters (RFC 6750), and entity ids and RFC 3339 times need no
        // escaping either, so the JSON can be assembled from parts.
        let json_head =
            format!(r#"{{"accessToken":"{token_text}","tokenType":"Bearer","expiresIn":"#)
                .into_bytes();
        let expires_at_wall = grant
            .received_wall
            .checked_add(lifetime)
            .unwrap_or(grant.received_wall);
        let json_tail = format!(
            r#","expiresAt":"{}","entityId":"{}"}}"#,
            timefmt::rfc3339_seconds(expires_at_wall),
            entity_id.as_str()
        )
        .into_bytes();
        let plain = Bytes::copy_from_slice(token_text.as_bytes());
        Ok(Token {
            entity_id: entity_id.clone(),
            json_head,
            json_tail,
            json_latest: Mutex::new(None),
            plain,
            fingerprint: fingerprint(&grant.access_token),
            access_token: grant.access_token,
            schedule,
            lifetime,
            expires_at_wall,
            clock_skew_seconds: iat.map(|iat| timefmt::unix_seconds(grant.received_wall) - iat),
            jwt_expires_at: exp.and_then(timefmt::from_unix_seconds),
            secret_expires_at: claims
                .secret_expiry_ts
                .as_deref()
                .and_then(timefmt::parse_iam_expiry),
            iam_message: grant.message,
            roles: roles_of(claims.roles.as_ref()),
        })
    }
}

// The tests sign their tokens with the simulator's realm key.
#[cfg(test)]
#[cfg(feature = "simulator")]
mod tests {
    use super::*;
    use crate::simulator::jwt::SigningKey;

    fn token(lifetime_secs: u64) -> Token {
        let now = timefmt::unix_seconds(SystemTime::now()) as u64;
        let claims = serde_json::json!({
            "azp": "FIU-UNIT", "iat": now, "exp": now + lifetime_secs,
        });
        let jwt = SigningKey::simulator_key().unwrap().sign(&claims).unwrap();
        let grant = TokenGrant {
            access_token: SecretString::from(jwt),
            expires_in: Some(Duration::from_secs(lifetime_secs)),
            token_type: Some("Bearer".into()),
            txn_id: None,
            message: None,
            server_time: None,
            received_at: Instant::now().into_std(),
            received_wall: SystemTime::now(),
        };
        let id = EntityId::parse("FIU-UNIT").unwrap();
        Token::from_grant(&id, grant, &RefreshPolicy::default(), 0.5).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_json_answer_is_built_once_per_second_and_counts_down() {
        let token = token(3600);
        let start = Instant::now();
        let first = token.json_body(start + Duration::from_millis(100));
        let parsed: serde_json::Value = serde_json::from_slice(&first).unwrap();
        assert_eq!(parsed["accessToken"], token.expose());
        assert_eq!(parsed["tokenType"], "Bearer");
        assert_eq!(parsed["entityId"], "FIU-UNIT");
        assert_eq!(
            parsed["expiresIn"], 3599,
            "whole seconds left, rounded down"
        );
        // Within the same second of the token's life: the very same buffer, not a copy.
        let again = token.json_body(start + Duration::from_millis(900));
        assert_eq!(again.as_ptr(), first.as_ptr());
        // A second later: rebuilt, with one second less.
        let later = token.json_body(start + Duration::from_millis(1400));
        let parsed_later: serde_json::Value = serde_json::from_slice(&later).unwrap();
        assert_eq!(parsed_later["expiresIn"], 3598);
        assert_eq!(parsed_later["expiresAt"], parsed["expiresAt"]);
        // Going back (a request that read the clock earlier) still answers its own second.
        let earlier = token.json_body(start);
        let parsed_earlier: serde_json::Value = serde_json::from_slice(&earlier).unwrap();
        assert_eq!(parsed_earlier["expiresIn"], 3600);
    }
}
