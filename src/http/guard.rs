//! The caller guard on every `/v1/*` route.
//!
//! A token is handed only to a request that (1) carries `Metadata: true`, which a browser cannot add to a
//! cross-origin request without a preflight and which an SSRF-able service does not add to the URLs it is
//! tricked into fetching; (2) carries no `Forwarded`/`X-Forwarded-For`, which a proxy adds on the way in;
//! and (3) names a loopback `Host` (or one the operator explicitly allowed), which a DNS-rebinding page
//! cannot do. This is the defence the cloud metadata servers use. The header requirement can be turned off
//! by configuration, and the broker says so loudly at start; the other two checks cannot be.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use super::{AppState, reply};

/// The header a caller must send, and its value.
pub const METADATA_HEADER: &str = "metadata";

/// Headers a proxy adds; any of them means the request did not come straight from a sibling process.
const FORWARDING_HEADERS: [&str; 4] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-real-ip",
];

#[derive(Debug, Clone)]
pub struct GuardSettings {
    /// Require `Metadata: true`. On by default.
    pub require_metadata_header: bool,
    /// Host names (without port) accepted besides loopback names and addresses, lowercase.
    pub allowed_hosts: Vec<String>,
}

impl Default for GuardSettings {
    fn default() -> Self {
        Self {
            require_metadata_header: true,
            allowed_hosts: Vec::new(),
        }
    }
}

/// Why a request was refused; also the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MissingMetadataHeader,
    Forwarded,
    Host,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MissingMetadataHeader => "missing_metadata_header",
            Refusal::Forwarded => "forwarded",
            Refusal::Host => "host",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Refusal::MissingMetadataHeader => {
                "requests for tokens must carry the header `Metadata: true`"
            }
            Refusal::Forwarded => {
                "requests that passed through a proxy (Forwarded / X-Forwarded-For) are refused"
            }
            Refusal::Host => "the Host header must name a loopback address or an allowed host",
        }
    }
}

/// Checks one request's headers against the settings.
pub fn check(headers: &HeaderMap, settings: &GuardSettings) -> Result<(), Refusal> {
    if FORWARDING_HEADERS
        .iter()
        .any(|name| headers.contains_key(*name))
    {
        return Err(Refusal::Forwarded);
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .ok_or(Refusal::Host)?;
    if !host_allowed(host, &settings.allowed_hosts) {
        return Err(Refusal::Host);
    }
    if settings.require_metadata_header {
        let ok = headers.get_all(METADATA_HEADER).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
        });
        if !ok {
            return Err(Refusal::MissingMetadataHeader);
        }
    }
    Ok(())
}

/// `localhost`, a loopback IP literal (IPv4 `127/8`, IPv6 `::1`, bracketed), or an allowed name; any port.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((inside, after)) if after.is_empty() || is_port_suffix(after) => inside,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) && !port.is_empty() => {
                name
            }
            Some(_) => return false,
            None => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name == "localhost" {
        return true;
    }
    if let Ok(ip) = name.parse::<IpAddr>() {
        return ip.is_loopback();
    }
    allowed.contains(&name)
}

fn is_port_suffix(s: &str) -> bool {
    s.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

/// Proof that a request passed the guard: every `/v1/*` handler takes it as its first argument. An
/// extractor rather than a middleware layer, so the hot path pays for a header check and nothing more.
/// It also carries the one thing the handlers need from the headers, so they never copy the header map.
pub struct CallerAllowed {
    /// `Accept` prefers `text/plain` over `application/json`.
    pub wants_plain_text: bool,
}

impl FromRequestParts<Arc<AppState>> for CallerAllowed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        match check(&parts.headers, &app.guard) {
            Ok(()) => Ok(CallerAllowed {
                wants_plain_text: wants_plain_text(&parts.headers),
            }),
            Err(refusal) => {
                app.broker.metrics().guard_rejection(refusal.as_str());
                tracing::debug!(reason = refusal.as_str(), path = %parts.uri.path(), "request refused by the caller guard");
                Err(reply::error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    refusal.message(),
                ))
            }
        }
    }
}

/// The first of `application/json` and `text/plain` named in `Accept` wins; JSON when neither is.
fn wants_plain_text(headers: &HeaderMap) -> bool {
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let media = item.split(';').next().unwrap_or("").trim();
            if media.eq_ignore_ascii_case("application/json") {
                return false;
            }
            if media.eq_ignore_ascii_case("text/plain") {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_static(v));
            wants_plain_text(&h)
        };
        assert!(with("text/plain"));
        assert!(with("text/plain; charset=utf-8, */*"));
        assert!(!with("application/json, text/plain"));
        assert!(!with("*/*"));
        assert!(!wants_plain_text(&HeaderMap::new()));
    }
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn loopback_hosts_pass_and_others_do_not() {
        for ok in [
            "localhost",
            "LOCALHOST:7373",
            "127.0.0.1",
            "127.0.0.1:7373",
            "127.9.9.9:1",
            "[::1]",
            "[::1]:7373",
            "localhost.",
        ] {
            assert!(host_allowed(ok, &[]), "{ok}");
        }
        for bad in [
            "evil.com",
            "localhost.evil.com",
            "127.0.0.1.nip.io",
            "10.0.0.1:7373",
            "[::2]:80",
            "0.0.0.0",
            "169.254.169.254",
            "localhost:http",
            "[::1",
            "",
            "127.0.0.1:",
            "[::1]x",
        ] {
            assert!(!host_allowed(bad, &[]), "{bad}");
        }
        assert!(host_allowed(
            "broker.pod.local:7373",
            &["broker.pod.local".into()]
        ));
    }

    #[test]
    fn the_guard_needs_the_header_and_refuses_proxied_requests() {
        let settings = GuardSettings::default();
        assert_eq!(
            check(&headers(&[("host", "127.0.0.1")]), &settings),
            Err(Refusal::MissingMetadataHeader)
        );
        assert_eq!(
            check(
                &headers(&[("host", "127.0.0.1"), ("metadata", "false")]),
                &settings
            ),
            Err(Refusal::MissingMetadataHeader)
        );
        assert_eq!(
            check(
                &headers(&[("host", "127.0.0.1"), ("metadata", "True")]),
                &settings
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &headers(&[
                    ("host", "127.0.0.1"),
                    ("metadata", "true"),
                    ("x-forwarded-for", "1.2.3.4")
                ]),
                &settings
            ),
            Err(Refusal::Forwarded)
        );
        assert_eq!(
            check(
                &headers(&[("host", "attacker.example"), ("metadata", "true")]),
                &settings
            ),
            Err(Refusal::Host)
        );
        assert_eq!(
            check(&headers(&[("metadata", "true")]), &settings),
            Err(Refusal::Host)
        );
        let relaxed = GuardSettings {
            require_metadata_header: false,
            ..GuardSettings::default()
        };
        assert_eq!(check(&headers(&[("host", "localhost")]), &relaxed), Ok(()));
        assert_eq!(
            check(&headers(&[("host", "evil.com")]), &relaxed),
            Err(Refusal::Host)
        );
    }
}
