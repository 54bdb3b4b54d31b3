//! The IAM HTTP client.
//!
//! One `reqwest::Client` (rustls, HTTP/1.1, no redirects, connect and request timeouts) shared by every
//! entity. Each call returns a typed grant or an [`IamError`]; it never retries by itself, because when to
//! try again is the refresh policy's decision, not the transport's.

use std::time::{Duration, Instant, SystemTime};

use secrecy::{ExposeSecret, SecretString};

use super::error::{credential_forms, sanitize_excerpt};
use super::url::endpoint_url;
use super::wire::{ErrorBody, SecretAnswer, SecretRequestBody, TokenResponseBody};
use super::{Endpoint, IamError};
use crate::entity::EntityId;
use crate::timefmt;

/// Largest response body read from the IAM. Real answers are under 4 KiB; a bigger one is hostile or broken.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Connect and whole-request timeouts for IAM calls.
#[derive(Debug, Clone, Copy)]
pub struct IamTimeouts {
    pub connect: Duration,
    pub request: Duration,
}

impl IamTimeouts {
    /// The longest one call can take: connecting, then the whole request.
    pub fn call_bound(&self) -> Duration {
        self.connect.saturating_add(self.request)
    }
}

impl Default for IamTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(10),
        }
    }
}

/// A token from `/v1/entity/token/generate` or `/v1/user/token/generate`.
pub struct TokenGrant {
    pub access_token: SecretString,
    /// `expiresIn` as sent, if sent.
    pub expires_in: Option<Duration>,
    pub token_type: Option<String>,
    pub txn_id: Option<String>,
    /// The IAM's warning (secret expired, within the grace period).
    pub message: Option<String>,
    /// The envelope `timestamp`, when it parsed.
    pub server_time: Option<SystemTime>,
    /// When the response arrived, on the monotonic clock: the origin of the token's lifetime.
    pub received_at: Instant,
    /// The same moment on the wall clock, for display and skew measurement.
    pub received_wall: SystemTime,
}

/// A secret from `/v1/entity/secret/read` or `/v1/entity/secret/reset`.
pub struct SecretGrant {
    pub entity_id: Option<String>,
    pub secret: SecretString,
    pub expires_on: Option<SystemTime>,
    pub expiration_date: Option<String>,
    pub message: Option<String>,
    pub txn_id: Option<String>,
}

/// The HTTP client could not be built (no TLS roots, a bad proxy variable).
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct ClientBuildError(String);

/// The IAM client. Cheap to clone.
#[derive(Clone)]
pub struct IamClient {
    http: reqwest::Client,
    base: String,
    /// `base`, parsed: endpoint URLs are built from it segment by segment ([`super::url`]).
    base_url: reqwest::Url,
    timeouts: IamTimeouts,
}

impl IamClient {
    /// `base` is the IAM base URL (e.g. `https://api.sandbox.sahamati.org.in/iam`); endpoints are `{base}/v1/…`.
    pub fn new(base: &str, timeouts: IamTimeouts) -> Result<Self, ClientBuildError> {
        crate::install_crypto_provider();
        let base_url = reqwest::Url::parse(base.trim())
            .map_err(|e| ClientBuildError(format!("the IAM URL is not a URL: {e}")))?;
        let mut builder = crate::tls::shared(reqwest::Client::builder())
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.request)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("aa-token-broker/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(30));
        // Banks route egress through proxies, so HTTP(S)_PROXY is honoured for the real IAM; a loopback
        // IAM (the simulator) is never sent through one.
        if is_loopback_url(&base_url) {
            builder = builder.no_proxy();
        }
        let http = builder
            .build()
            .map_err(|e| ClientBuildError(e.to_string()))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            base_url,
            timeouts,
        })
    }

    /// The timeouts every call is made with.
    pub fn timeouts(&self) -> IamTimeouts {
        self.timeouts
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST /v1/entity/token/generate` with form fields `id` and `secret` (spec §2.4).
    pub async fn entity_token(
        &self,
        id: &EntityId,
        secret: &SecretString,
    ) -> Result<TokenGrant, IamError> {
        let body = form_body(&[("id", id.as_str()), ("secret", secret.expose_secret())]);
        self.token_call(Endpoint::EntityToken, body, secret.expose_secret())
            .await
    }

    /// `POST /v1/user/token/generate` with form fields `username` (the email) and `password` (spec §2.1).
    pub async fn user_token(
        &self,
        email: &str,
        password: &SecretString,
    ) -> Result<TokenGrant, IamError> {
        let body = form_body(&[("username", email), ("password", password.expose_secret())]);
        self.token_call(Endpoint::UserToken, body, password.expose_secret())
            .await
    }

    /// `POST /v1/entity/secret/read` (spec §2.2).
    pub async fn read_secret(
        &self,
        user_token: &SecretString,
        id: &EntityId,
    ) -> Result<SecretGrant, IamError> {
        self.secret_call(Endpoint::SecretRead, user_token, id, None)
            .await
    }

    /// `POST /v1/entity/secret/reset`, optionally asking for `secretExpiryDays` (spec §2.3).
    pub async fn reset_secret(
        &self,
        user_token: &SecretString,
        id: &EntityId,
        expiry_days: Option<u32>,
    ) -> Result<SecretGrant, IamError> {
        self.secret_call(Endpoint::SecretReset, user_token, id, expiry_days)
            .await
    }

    async fn token_call(
        &self,
        endpoint: Endpoint,
        body: SecretString,
        credential: &str,
    ) -> Result<TokenGrant, IamError> {
        let request = self
            .http
            .post(endpoint_url(&self.base_url, endpoint))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body.expose_secret().to_string());
        let (status, bytes) = self.send(endpoint, request, credential).await?;
        parse_token_answer(
            endpoint,
            status,
            &bytes,
            credential,
            Instant::now(),
            SystemTime::now(),
        )
    }

    async fn secret_call(
        &self,
        endpoint: Endpoint,
        user_token: &SecretString,
        id: &EntityId,
        expiry_days: Option<u32>,
    ) -> Result<SecretGrant, IamError> {
        let body = SecretRequestBody {
            ver: "1.0.0",
            timestamp: timefmt::rfc3339_nanos(SystemTime::now()),
            txn_id: new_txn_id(),
            entity_id: id.as_str(),
            secret_expiry_days: expiry_days,
        };
        let json = serde_json::to_vec(&body).map_err(|e| IamError::Malformed {
            endpoint,
            status: 0,
            reason: format!("cannot encode request: {e}"),
            excerpt: None,
        })?;
        let request = self
            .http
            .post(endpoint_url(&self.base_url, endpoint))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .bearer_auth(user_token.expose_secret())
            .body(json);
        let (status, bytes) = self
            .send(endpoint, request, user_token.expose_secret())
            .await?;
        parse_secret_answer(endpoint, status, &bytes, user_token.expose_secret())
    }

    /// Sends a request and reads at most [`MAX_RESPONSE_BYTES`] of the answer. Non-2xx statuses become
    /// [`IamError::Rejected`] with whatever the body says about them.
    async fn send(
        &self,
        endpoint: Endpoint,
        request: reqwest::RequestBuilder,
        credential: &str,
    ) -> Result<(u16, Vec<u8>), IamError> {
        let transport = |e: reqwest::Error| IamError::Transport {
            endpoint,
            timed_out: e.is_timeout(),
            detail: describe_transport_error(&e),
        };
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let mut bytes = Vec::new();
        let mut truncated = false;
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                truncated = true;
                break;
            }
            bytes.extend_from_slice(&chunk);
        }
        if (200..300).contains(&status) {
            if truncated {
                return Err(IamError::Malformed {
                    endpoint,
                    status,
                    reason: format!("body larger than {MAX_RESPONSE_BYTES} bytes"),
                    excerpt: None,
                });
            }
            return Ok((status, bytes));
        }
        let envelope: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
        // An IAM or proxy that echoes the request puts the credential in its error in encoded forms too.
        let credentials = credential_forms(credential);
        let text = |v: Option<serde_json::Value>| {
            v.and_then(|v| match v {
                serde_json::Value::String(s) => Some(s),
                serde_json::Value::Null => None,
                other => Some(other.to_string()),
            })
            .and_then(|s| sanitize_excerpt(s.as_bytes(), &credentials))
        };
        let error_code = text(envelope.error_code);
        let error_msg = text(envelope.error_msg).or_else(|| text(envelope.message));
        let excerpt = if error_code.is_none() && error_msg.is_none() {
            sanitize_excerpt(&bytes, &credentials)
        } else {
            None
        };
        Err(IamError::Rejected {
            endpoint,
            status,
            error_code,
            error_msg,
            txn_id: envelope.txn_id.map(|t| clip(&t)),
            excerpt,
            retry_after,
        })
    }
}

/// Reads a successful token answer (spec §2.1, §2.4): the token must be a plausible bearer token; its
/// lifetime is judged later, by the token module (`Token::from_grant`). Public for the fuzz target.
pub fn parse_token_answer(
    endpoint: Endpoint,
    status: u16,
    bytes: &[u8],
    credential: &str,
    received_at: Instant,
    received_wall: SystemTime,
) -> Result<TokenGrant, IamError> {
    let parsed: TokenResponseBody = parse_json(endpoint, status, bytes, credential)?;
    let malformed = |reason: &str| IamError::Malformed {
        endpoint,
        status,
        reason: reason.into(),
        excerpt: None,
    };
    let access_token = parsed
        .access_token
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| malformed("no accessToken"))?;
    if access_token.len() > 16 * 1024 || !is_token68(&access_token) {
        return Err(malformed("accessToken is not a plausible bearer token"));
    }
    Ok(TokenGrant {
        access_token: SecretString::from(access_token),
        expires_in: parsed.expires_in.map(Duration::from_secs),
        token_type: parsed.token_type,
        txn_id: parsed.txn_id.map(|t| clip(&t)),
        message: parsed.message.map(|m| clip(&m)),
        server_time: parsed
            .timestamp
            .as_deref()
            .and_then(timefmt::parse_iam_timestamp),
        received_at,
        received_wall,
    })
}

/// Reads a successful secret read/reset answer (spec §2.2, §2.3). Only the secret is required: a reset
/// answer that carries one must reach the caller whatever its other fields say, because the IAM has
/// already switched to it. Public for the fuzz target.
pub fn parse_secret_answer(
    endpoint: Endpoint,
    status: u16,
    bytes: &[u8],
    credential: &str,
) -> Result<SecretGrant, IamError> {
    let parsed = SecretAnswer::parse(bytes).map_err(|e| IamError::Malformed {
        endpoint,
        status,
        reason: format!("not a JSON object ({e})"),
        excerpt: sanitize_excerpt(bytes, &credential_forms(credential)),
    })?;
    let secret = parsed
        .secret
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| IamError::Malformed {
            endpoint,
            status,
            reason: "no secret".into(),
            excerpt: None,
        })?;
    Ok(SecretGrant {
        entity_id: parsed.entity_id.map(|e| clip(&e)),
        secret: SecretString::from(secret),
        expires_on: parsed
            .expires_on
            .and_then(timefmt::from_unix_seconds_or_millis)
            .or_else(|| {
                parsed
                    .expiration_date
                    .as_deref()
                    .and_then(timefmt::parse_iam_expiry)
            }),
        expiration_date: parsed.expiration_date.map(|d| clip(&d)),
        message: parsed.message.map(|m| clip(&m)),
        txn_id: parsed.txn_id.map(|t| clip(&t)),
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(
    endpoint: Endpoint,
    status: u16,
    bytes: &[u8],
    credential: &str,
) -> Result<T, IamError> {
    serde_json::from_slice(bytes).map_err(|e| IamError::Malformed {
        endpoint,
        status,
        // serde_json's messages name the problem and position, never the content.
        reason: if bytes.is_empty() {
            "empty body".into()
        } else {
            format!("not the expected JSON ({e})")
        },
        excerpt: sanitize_excerpt(bytes, &credential_forms(credential)),
    })
}

/// Whether a URL names this host: `localhost`, `127.0.0.0/8` or `::1`.
pub fn is_loopback_url(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            let host = host.to_ascii_lowercase();
            host == "localhost" || host.ends_with(".localhost")
        }
    }
}

/// RFC 6750's `b64token`: the characters a bearer token may have (a JWT has a subset of them).
pub fn is_token68(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// `Retry-After` as delta-seconds or an HTTP date.
pub fn parse_retry_after(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    if let Ok(secs) = raw.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(raw).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn form_body(fields: &[(&str, &str)]) -> SecretString {
    // serde_urlencoded cannot fail on a slice of string pairs.
    SecretString::from(serde_urlencoded::to_string(fields).unwrap_or_default())
}

/// The reqwest error and its sources, one line. reqwest never puts request bodies in its errors.
fn describe_transport_error(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        "transport error".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    clip(&text)
}

/// Caps a server-supplied string for storage in errors and logs.
fn clip(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    clean
}

/// A random RFC 4122 version 4 UUID for `txnId` (uuid sets the version and variant bits).
pub fn new_txn_id() -> String {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_ne_bytes())
        .into_uuid()
        .hyphenated()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_ids_are_v4_uuids() {
        let id = new_txn_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(id, new_txn_id());
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
