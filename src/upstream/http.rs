//! The one way the broker calls an upstream over HTTP: the IAM, the realm's key set, the Central Registry,
//! the Kubernetes API server (the secret sink) and, for `certify`, an ingress and the simulator.
//!
//! - [`ClientSpec`]: builds every `reqwest::Client` alike — rustls on the `ring` provider, connect and
//!   request timeouts, redirects never followed (a configured URL is the one called: a redirect would let
//!   the server pick another host, and carry our token there), one user agent, idle connections closed
//!   after 30 s. The environment's `HTTP(S)_PROXY` is honoured (banks route egress through proxies)
//!   except for a client whose upstreams are all on this host, which never goes through one.
//! - [`read_capped`] and [`read_whole`]: read an answer up to a cap, so a hostile or broken upstream
//!   cannot make the broker hold more than it expects.
//! - [`describe`]: a transport error as one line for logs and errors, without the URL: reqwest's own text
//!   names the URL, which may carry a path the caller chose to keep out of logs (a CR entity path, a
//!   Secret's name); what failed and why is in its chain of causes.

use std::time::Duration;

/// How long an idle pooled connection is kept: upstream calls are minutes apart, and a load balancer
/// closes idle connections well before reqwest's default of 90 s.
const POOL_IDLE: Duration = Duration::from_secs(30);
/// Longest error text kept from a transport error.
const MAX_DESCRIPTION_CHARS: usize = 200;
/// The user agent of every upstream call.
pub const USER_AGENT: &str = concat!("aa-token-broker/", env!("CARGO_PKG_VERSION"));

/// A client could not be built (no TLS roots, a bad proxy variable).
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct ClientBuildError(String);

impl ClientBuildError {
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }

    /// Why, without the "cannot build" prefix (for a caller's own error that says which client).
    pub fn reason(&self) -> &str {
        &self.0
    }
}

/// What a client is built with; see the module documentation for what every client shares.
#[derive(Debug)]
#[must_use]
pub struct ClientSpec {
    connect: Duration,
    request: Duration,
    direct: bool,
    roots: Option<Vec<reqwest::Certificate>>,
}

impl ClientSpec {
    /// A client that connects within `connect` and finishes each request (answer read) within `request`.
    pub fn new(connect: Duration, request: Duration) -> Self {
        Self {
            connect,
            request,
            direct: false,
            roots: None,
        }
    }

    /// Goes direct, without the environment's proxy, when every one of `urls` names this host
    /// ([`is_loopback_url`]): a simulator or a key server on loopback is never sent to the bank's proxy.
    /// A URL that does not parse counts as not on this host.
    pub fn direct_to_loopback<'a>(mut self, urls: impl IntoIterator<Item = &'a str>) -> Self {
        let mut urls = urls.into_iter().peekable();
        self.direct = urls.peek().is_some()
            && urls.all(|url| reqwest::Url::parse(url.trim()).is_ok_and(|u| is_loopback_url(&u)));
        self
    }

    /// Never through a proxy (`certify`: the ingress and the simulator it drives are the ones named).
    pub fn direct(mut self) -> Self {
        self.direct = true;
        self
    }

    /// Trusts these certificates only, in place of the system roots (the Kubernetes API server's CA).
    pub fn only_roots(mut self, roots: Vec<reqwest::Certificate>) -> Self {
        self.roots = Some(roots);
        self
    }

    pub fn build(self) -> Result<reqwest::Client, ClientBuildError> {
        crate::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(self.connect)
            .timeout(self.request)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            .pool_idle_timeout(POOL_IDLE);
        if self.direct {
            builder = builder.no_proxy();
        }
        builder = match self.roots {
            Some(roots) => builder.tls_certs_only(roots),
            // The system roots: one configuration for every such client (see `tls`).
            None => super::tls::shared(builder),
        };
        builder.build().map_err(|e| ClientBuildError(describe(&e)))
    }
}

/// Whether a URL names this host: `localhost` (or a name under it), `127.0.0.0/8` or `::1`.
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

/// An answer's body, read up to a cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capped {
    /// What was read: all of it, or what came before the cap.
    pub bytes: Vec<u8>,
    /// The upstream sent (or announced, in `Content-Length`) more than the cap; the rest was not read.
    pub truncated: bool,
}

/// Reads `response`'s body, at most `cap` bytes. A body announced larger than the cap is not read at all;
/// one that grows past it is cut where the next chunk would pass it. Each caller decides what a truncated
/// body means (an error, or an excerpt of an error answer).
pub async fn read_capped(
    response: &mut reqwest::Response,
    cap: usize,
) -> Result<Capped, reqwest::Error> {
    let announced = response.content_length();
    if announced.is_some_and(|len| len > cap as u64) {
        return Ok(Capped {
            bytes: Vec::new(),
            truncated: true,
        });
    }
    let mut bytes = Vec::with_capacity(announced.map_or(0, |len| len as usize));
    while let Some(chunk) = response.chunk().await? {
        if bytes.len().saturating_add(chunk.len()) > cap {
            return Ok(Capped {
                bytes,
                truncated: true,
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Capped {
        bytes,
        truncated: false,
    })
}

/// Why [`read_whole`] has no body.
#[derive(Debug)]
pub enum ReadError {
    /// The answer could not be read; shown without its URL ([`describe`]).
    Transport(reqwest::Error),
    /// The answer is (or announces itself) larger than the cap.
    TooLarge(usize),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Transport(error) => f.write_str(&describe(error)),
            ReadError::TooLarge(cap) => write!(f, "the answer is larger than {cap} bytes"),
        }
    }
}

/// [`read_capped`] for a caller that wants all of the body or none: past the cap is an error.
pub async fn read_whole(
    response: &mut reqwest::Response,
    cap: usize,
) -> Result<Vec<u8>, ReadError> {
    let body = read_capped(response, cap)
        .await
        .map_err(ReadError::Transport)?;
    if body.truncated {
        return Err(ReadError::TooLarge(cap));
    }
    Ok(body.bytes)
}

/// A transport error as one line, never with its URL: what failed (`timed out`, `connection failed`,
/// `transport error`) and the chain of causes, control characters blanked, at most 200 characters.
/// reqwest puts no request or answer body in its errors.
pub fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_string()
    } else if error.is_connect() {
        "connection failed".to_string()
    } else {
        "transport error".to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_DESCRIPTION_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_client_whose_upstreams_are_all_local_goes_direct() {
        let spec = |urls: &[&str]| {
            ClientSpec::new(Duration::from_secs(1), Duration::from_secs(1))
                .direct_to_loopback(urls.iter().copied())
                .direct
        };
        assert!(spec(&["http://127.0.0.1:7380/iam"]));
        assert!(spec(&["http://localhost:1/a", "http://[::1]:2/b"]));
        assert!(!spec(&[
            "http://127.0.0.1:1/a",
            "https://api.sahamati.org.in/iam"
        ]));
        assert!(!spec(&["not a url"]));
        assert!(!spec(&[]));
    }

    #[tokio::test]
    async fn a_transport_error_is_described_without_its_url() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let client = ClientSpec::new(Duration::from_secs(2), Duration::from_secs(2))
            .direct()
            .build()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}/v2/entityInfo/AA/hidden-entity");
        let error = client.get(&url).send().await.unwrap_err();
        assert!(error.to_string().contains("hidden-entity"), "{error}");
        let text = describe(&error);
        assert!(text.starts_with("connection failed: "), "{text}");
        assert!(!text.contains("hidden-entity"), "{text}");
    }

    /// Serves one answer, `head` then `body`, on loopback; the URL.
    async fn serve_once(head: &'static str, body: Vec<u8>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await;
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&body).await;
        });
        url
    }

    async fn capped(head: &'static str, body: Vec<u8>, cap: usize) -> Capped {
        let url = serve_once(head, body).await;
        let client = ClientSpec::new(Duration::from_secs(2), Duration::from_secs(2))
            .direct()
            .build()
            .unwrap();
        let mut response = client.get(&url).send().await.unwrap();
        read_capped(&mut response, cap).await.unwrap()
    }

    #[tokio::test]
    async fn a_body_is_read_up_to_its_cap_announced_or_not() {
        let sized = "HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\n";
        let whole = capped(sized, b"0123456789".to_vec(), 10).await;
        assert_eq!(
            (whole.bytes.as_slice(), whole.truncated),
            (&b"0123456789"[..], false)
        );
        let announced = capped(sized, b"0123456789".to_vec(), 9).await;
        assert_eq!((announced.bytes.len(), announced.truncated), (0, true));
        // No length announced: read until the cap would be passed.
        let open_ended = "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n";
        let cut = capped(open_ended, vec![b'x'; 100_000], 1000).await;
        assert!(cut.truncated);
        assert!(cut.bytes.len() <= 1000, "{}", cut.bytes.len());
    }

    #[tokio::test]
    async fn a_whole_body_past_its_cap_is_an_error_that_names_the_cap() {
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\n";
        let url = serve_once(head, b"0123456789".to_vec()).await;
        let client = ClientSpec::new(Duration::from_secs(2), Duration::from_secs(2))
            .direct()
            .build()
            .unwrap();
        let mut response = client.get(&url).send().await.unwrap();
        let error = read_whole(&mut response, 9).await.unwrap_err();
        assert_eq!(error.to_string(), "the answer is larger than 9 bytes");
    }
}
