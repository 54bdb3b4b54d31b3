//! The caller guard of the token port: one check, applied as a layer per route group.
//!
//! A credential (a token, a signature) is handed only to a request that (1) carries `Metadata: true`,
//! which a browser cannot add to a cross-origin request without a preflight and which an SSRF-able service
//! does not add to the URLs it is tricked into fetching; (2) carries no `Forwarded`/`X-Forwarded-For`,
//! which a proxy adds on the way in; and (3) names a loopback `Host` (or one the operator explicitly
//! allowed), which a DNS-rebinding page cannot do — in the `Host` header and, for an absolute-form request
//! (`GET http://host/…`), in the request target too. This is the defence the cloud metadata servers use.
//! The header requirement can be turned off by configuration, and the broker says so loudly at start; the
//! other two checks cannot be.
//!
//! Every other route of the token port (health, metrics, and the verification routes, which hand out no
//! credential but say a lot about the entity) gets check (3) alone: a DNS-rebinding page cannot read them
//! either. The admin and verify listeners, bound to the pod IP for probes and proxies, have no guard.
//!
//! [`admit`] is the one function that decides; [`enforce`] is the middleware each route group of the
//! token port is wrapped in (it runs before the handler, so before any body byte is read), and the hot
//! path ([`super::hot_path`]) calls [`admit`] itself. Refusals are counted by reason.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::Response;

use super::reply;
use crate::metrics::Metrics;

/// The header a caller must send, and its value.
pub const METADATA_HEADER: &str = "metadata";

/// Header names are built once, not parsed from strings on every request.
const METADATA: HeaderName = HeaderName::from_static(METADATA_HEADER);

/// Headers a proxy adds; any of them means the request did not come straight from a sibling process.
const FORWARDING_HEADERS: [HeaderName; 4] = [
    header::FORWARDED,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-real-ip"),
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
                "requests for tokens and signatures must carry the header `Metadata: true`"
            }
            Refusal::Forwarded => {
                "requests that passed through a proxy (Forwarded / X-Forwarded-For) are refused"
            }
            Refusal::Host => "the Host header must name a loopback address or an allowed host",
        }
    }
}

/// Checks one request's headers against the settings, and reads what the handlers need from them.
///
/// One pass over the headers, comparing names, rather than a hash lookup per header asked about: a
/// request carries three or four headers, and this runs on every token read.
pub fn check(headers: &HeaderMap, settings: &GuardSettings) -> Result<CallerAllowed, Refusal> {
    let mut host = None;
    let mut hosts = 0;
    let mut metadata = false;
    let mut plain = None;
    for (name, value) in headers {
        if name == header::HOST {
            hosts += 1;
            host = Some(value);
        } else if name == header::ACCEPT {
            plain = plain.or_else(|| accept_prefers_plain_text(value));
        } else if name == METADATA {
            metadata |= value
                .to_str()
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"));
        } else if FORWARDING_HEADERS.contains(name) {
            return Err(Refusal::Forwarded);
        }
    }
    // Two `Host` headers are malformed (RFC 9112 §3.2); which one a proxy used is anyone's guess.
    let host = match (hosts, host.and_then(|v| v.to_str().ok())) {
        (1, Some(host)) => host,
        _ => return Err(Refusal::Host),
    };
    if !host_allowed(host, &settings.allowed_hosts) {
        return Err(Refusal::Host);
    }
    if settings.require_metadata_header && !metadata {
        return Err(Refusal::MissingMetadataHeader);
    }
    Ok(CallerAllowed {
        wants_plain_text: plain.unwrap_or(false),
    })
}

/// The target of an absolute-form request must name an allowed host as well: a client (or a proxy) may
/// send `GET http://169.254.169.254/…` with a loopback `Host`, and which of the two a hop honoured is
/// anyone's guess.
pub fn check_target(uri: &Uri, allowed: &[String]) -> Result<(), Refusal> {
    match uri.authority() {
        None => Ok(()),
        Some(authority) if host_allowed(authority.as_str(), allowed) => Ok(()),
        Some(_) => Err(Refusal::Host),
    }
}

/// Check (3) alone: exactly one `Host`, naming loopback or an allowed host, and an allowed target.
pub fn check_host(uri: &Uri, headers: &HeaderMap, allowed: &[String]) -> Result<(), Refusal> {
    check_target(uri, allowed)?;
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) if host.to_str().is_ok_and(|h| host_allowed(h, allowed)) => Ok(()),
        _ => Err(Refusal::Host),
    }
}

/// What a route group of the token port requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Check (3): a loopback (or allowed) `Host` and target. Routes that hand out no credential.
    HostOnly,
    /// All three checks. Routes that hand out or use a credential (tokens, signatures).
    Caller,
}

/// The one decision: may this request reach a route of `level`?
pub fn admit(
    level: Level,
    uri: &Uri,
    headers: &HeaderMap,
    settings: &GuardSettings,
) -> Result<CallerAllowed, Refusal> {
    match level {
        Level::HostOnly => {
            check_host(uri, headers, &settings.allowed_hosts).map(|()| CallerAllowed {
                wants_plain_text: false,
            })
        }
        Level::Caller => {
            check_target(uri, &settings.allowed_hosts)?;
            check(headers, settings)
        }
    }
}

/// The guard of one route group: its level, the settings, and where refusals are counted.
#[derive(Clone)]
pub struct Guard {
    pub level: Level,
    pub settings: GuardSettings,
    pub metrics: Arc<Metrics>,
}

/// The middleware: [`admit`], then the handler with [`CallerAllowed`] in the request's extensions, or a
/// counted `403`.
pub async fn enforce(State(guard): State<Guard>, mut request: Request, next: Next) -> Response {
    match admit(
        guard.level,
        request.uri(),
        request.headers(),
        &guard.settings,
    ) {
        Ok(allowed) => {
            request.extensions_mut().insert(allowed);
            next.run(request).await
        }
        Err(refusal) => refuse(&guard.metrics, refusal, request.uri().path()),
    }
}

/// Counts, logs (at debug) and answers a refusal.
fn refuse(metrics: &Metrics, refusal: Refusal, path: &str) -> Response {
    metrics.guard_rejection(refusal.as_str());
    tracing::debug!(
        reason = refusal.as_str(),
        path,
        "request refused by the caller guard"
    );
    reply::error(StatusCode::FORBIDDEN, "forbidden", refusal.message())
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
    let name = name.strip_suffix('.').unwrap_or(name);
    // The two names nearly every caller uses, before the general parse.
    if name == "127.0.0.1" || name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Ok(ip) = name.parse::<IpAddr>() {
        return ip.is_loopback();
    }
    // `allowed` is lowercase; compare without building a lowercase copy per request.
    allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

fn is_port_suffix(s: &str) -> bool {
    s.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

/// Proof that a request passed the guard: [`enforce`] puts it in the request's extensions, and every
/// handler behind it takes it as an argument. It also carries the one thing the handlers need from the
/// headers, so they never copy the header map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallerAllowed {
    /// `Accept` prefers `text/plain` over `application/json`.
    pub wants_plain_text: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for CallerAllowed {
    type Rejection = Response;

    /// Fails closed: a handler reached without the layer (a wiring mistake) refuses the request.
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<CallerAllowed>()
            .copied()
            .ok_or_else(|| {
                reply::error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "the caller guard did not admit this request",
                )
            })
    }
}

/// What one `Accept` value says: the first of `application/json` and `text/plain` it names wins; `None`
/// when it names neither (the next `Accept` header decides, and JSON when none does).
fn accept_prefers_plain_text(value: &HeaderValue) -> Option<bool> {
    let value = value.to_str().ok()?;
    value.split(',').find_map(|item| {
        let media = item.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case("application/json") {
            Some(false)
        } else if media.eq_ignore_ascii_case("text/plain") {
            Some(true)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOWED: [(&str, &str); 2] = [("host", "127.0.0.1:7373"), ("metadata", "true")];

    fn wants_plain_text(accept: &[&'static str]) -> bool {
        let mut pairs = ALLOWED.to_vec();
        pairs.extend(accept.iter().map(|v| ("accept", *v)));
        check(&headers(&pairs), &GuardSettings::default())
            .unwrap()
            .wants_plain_text
    }

    #[test]
    fn accept_negotiation() {
        assert!(wants_plain_text(&["text/plain"]));
        assert!(wants_plain_text(&["text/plain; charset=utf-8, */*"]));
        assert!(!wants_plain_text(&["application/json, text/plain"]));
        assert!(!wants_plain_text(&["*/*"]));
        assert!(!wants_plain_text(&[]));
        // The first header that names either decides.
        assert!(wants_plain_text(&["*/*", "text/plain", "application/json"]));
        assert!(!wants_plain_text(&["application/json;q=1", "text/plain"]));
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
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
    fn absolute_form_targets_and_host_only_checks_name_loopback() {
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        assert_eq!(check_target(&uri("/v1/token"), &[]), Ok(()));
        assert_eq!(
            check_target(&uri("http://127.0.0.1:7373/v1/token"), &[]),
            Ok(())
        );
        assert_eq!(check_target(&uri("http://localhost/readyz"), &[]), Ok(()));
        for bad in [
            "http://169.254.169.254/v1/token",
            "http://evil.com/readyz",
            "http://user@127.0.0.1/v1/token",
        ] {
            assert_eq!(check_target(&uri(bad), &[]), Err(Refusal::Host), "{bad}");
        }
        let local = headers(&[("host", "localhost:7373")]);
        assert_eq!(check_host(&uri("/metrics"), &local, &[]), Ok(()));
        assert_eq!(
            check_host(
                &uri("/metrics"),
                &headers(&[("host", "rebound.example")]),
                &[]
            ),
            Err(Refusal::Host)
        );
        assert_eq!(
            check_host(&uri("/metrics"), &HeaderMap::new(), &[]),
            Err(Refusal::Host)
        );
        assert_eq!(
            check_host(
                &uri("/readyz"),
                &headers(&[("host", "127.0.0.1"), ("host", "evil.com")]),
                &[]
            ),
            Err(Refusal::Host)
        );
        assert_eq!(
            check_host(&uri("http://evil.com/readyz"), &local, &[]),
            Err(Refusal::Host)
        );
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
            Ok(CallerAllowed {
                wants_plain_text: false
            })
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
        assert!(check(&headers(&[("host", "localhost")]), &relaxed).is_ok());
        // A second Host header, or a forwarding header anywhere, is refused.
        assert_eq!(
            check(
                &headers(&[ALLOWED[0], ALLOWED[1], ("host", "evil.com")]),
                &settings
            ),
            Err(Refusal::Host)
        );
        assert_eq!(
            check(&headers(&[("x-real-ip", "1.2.3.4"), ALLOWED[0]]), &relaxed),
            Err(Refusal::Forwarded)
        );
        assert_eq!(
            check(&headers(&[("host", "evil.com")]), &relaxed),
            Err(Refusal::Host)
        );
    }
}
