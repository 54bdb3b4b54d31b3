//! Reading a request body, within its limits: the one way a handler gets body bytes.
//!
//! Every route that reads a body calls [`read`] only after it has refused what it can refuse from the
//! head alone (the `Host` rule and caller guard run as layers before the handler; `/v1/authorize` checks
//! the token first). Then:
//! - a declared length over the route's cap is refused (`413`) before a byte is read, and a chunked body
//!   is cut off at the cap;
//! - the bytes come from the process-wide [`ByteBudget`] as they arrive (not as they are declared, so a
//!   stalled upload holds only what it sent), and go back when the request is done; a request that cannot
//!   get them in time is refused (`503` with `Retry-After`);
//! - the whole body must arrive before `--body-timeout`, else `408` and the connection is closed;
//! - the buffer can start with a prefix (the `<header>.` of a detached JWS), so the signing input is the
//!   buffer itself: a 16 MiB body is never copied to be signed or verified.
//!
//! [`read_head`] reads at most the first bytes of a body (for the `txnid` of an error answer) under the
//! same rules.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::reply;
use crate::budget::{BudgetError, BudgetPermit, ByteBudget};

/// Default `--body-timeout`.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(15);
/// First allocation for a body of unknown length; it doubles from there, up to the cap.
const FIRST_CHUNKED_CAPACITY: usize = 16 * 1024;

/// The body limits of one listener's routes.
#[derive(Debug, Clone)]
pub struct BodyLimits {
    pub budget: ByteBudget,
    /// The whole body must arrive within this time.
    pub timeout: Duration,
}

/// Why a body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than the route's cap (declared, or as it arrived).
    TooLarge { cap: usize },
    /// It did not arrive in time.
    Timeout,
    /// The byte budget stayed in use.
    Busy,
    /// The client broke the connection or sent a malformed body.
    Aborted,
}

impl BodyError {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            BodyError::TooLarge { .. } => "too_large",
            BodyError::Timeout => "timeout",
            BodyError::Busy => "budget_exhausted",
            BodyError::Aborted => "aborted",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Timeout => StatusCode::REQUEST_TIMEOUT,
            BodyError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            BodyError::Aborted => StatusCode::BAD_REQUEST,
        }
    }

    pub fn message(self) -> String {
        match self {
            BodyError::TooLarge { cap } => format!("the body is larger than {cap} bytes"),
            BodyError::Timeout => "the body did not arrive in time".into(),
            BodyError::Busy => "too many bodies are being read; try again shortly".into(),
            BodyError::Aborted => "the body could not be read".into(),
        }
    }

    /// The JSON error answer, with the headers the error needs.
    pub fn response(self) -> Response {
        let code = match self {
            BodyError::TooLarge { .. } => "body_too_large",
            BodyError::Timeout => "body_timeout",
            BodyError::Busy => "busy",
            BodyError::Aborted => "bad_body",
        };
        self.finish(reply::error(self.status(), code, self.message()))
    }

    /// Adds what any answer to this error needs: `Retry-After` when busy; `Connection: close` when the
    /// rest of the body was not read (the connection cannot carry another request).
    pub fn finish(self, mut response: Response) -> Response {
        let headers = response.headers_mut();
        match self {
            BodyError::Busy => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            BodyError::TooLarge { .. } | BodyError::Timeout | BodyError::Aborted => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
        }
        response
    }
}

impl From<BudgetError> for BodyError {
    fn from(error: BudgetError) -> Self {
        match error {
            BudgetError::Exhausted => BodyError::Busy,
            // The cap is checked first; a budget smaller than a capped body is a configuration the
            // settings refuse, so this is the same answer as a full budget.
            BudgetError::TooLarge => BodyError::Busy,
        }
    }
}

/// A body read into memory, after a prefix; its bytes stay counted in the budget until it is dropped.
#[derive(Debug)]
pub struct Buffered {
    bytes: Vec<u8>,
    start: usize,
    _permit: BudgetPermit,
}

impl Buffered {
    /// A small signing input that did not come from a body (a `GET`'s path): counted nowhere.
    pub fn small(bytes: Vec<u8>, start: usize, budget: &ByteBudget) -> Self {
        Self {
            start: start.min(bytes.len()),
            bytes,
            _permit: budget.empty(),
        }
    }

    /// The body as received.
    pub fn body(&self) -> &[u8] {
        self.bytes.get(self.start..).unwrap_or_default()
    }

    /// The prefix followed by the body.
    pub fn with_prefix(&self) -> &[u8] {
        &self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.len() == self.start
    }

    /// The buffer (prefix and body), where the body starts, and the budget it holds: for a handler that
    /// works on the body in place and answers from the same buffer, keeping its bytes counted until the
    /// answer is sent.
    pub fn into_parts(self) -> (Vec<u8>, usize, BudgetPermit) {
        (self.bytes, self.start, self._permit)
    }
}

/// The body's declared length: `Content-Length`, when given and well-formed.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Largest body a route that takes none lets pass (unread), as it always has.
pub const IGNORED_BODY_BYTES: u64 = 1024;

/// Middleware for routes that take no body: a request that declares a larger one than
/// [`IGNORED_BODY_BYTES`] (or a chunked body, of unknown length) is refused with `413` without a byte of it
/// being read; a small one is let through and never read.
pub async fn refuse_bodies(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let body = request.body();
    let small = http_body::Body::is_end_stream(body)
        || http_body::Body::size_hint(body)
            .exact()
            .is_some_and(|len| len <= IGNORED_BODY_BYTES);
    if small {
        return next.run(request).await;
    }
    BodyError::TooLarge { cap: 0 }.finish(reply::error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "this route takes no body",
    ))
}

/// Reads the whole body (at most `cap` bytes) after `prefix`, within the limits.
pub async fn read(
    body: Body,
    prefix: &[u8],
    cap: usize,
    limits: &BodyLimits,
) -> Result<Buffered, BodyError> {
    read_up_to(body, prefix, cap, true, limits).await
}

/// Reads at most the first `head` bytes of the body (fewer if it is shorter), within the limits; the rest
/// is left unread.
pub async fn read_head(
    body: Body,
    head: usize,
    limits: &BodyLimits,
) -> Result<Buffered, BodyError> {
    read_up_to(body, &[], head, false, limits).await
}

async fn read_up_to(
    body: Body,
    prefix: &[u8],
    cap: usize,
    whole: bool,
    limits: &BodyLimits,
) -> Result<Buffered, BodyError> {
    let result = read_within(body, prefix, cap, whole, limits).await;
    if let Err(error) = &result {
        limits.budget.count_refusal(error.as_str());
    }
    result
}

async fn read_within(
    mut body: Body,
    prefix: &[u8],
    cap: usize,
    whole: bool,
    limits: &BodyLimits,
) -> Result<Buffered, BodyError> {
    let declared = http_body::Body::size_hint(&body).exact();
    if whole && declared.is_some_and(|len| len > cap as u64) {
        return Err(BodyError::TooLarge { cap });
    }
    let budget = &limits.budget;
    let deadline = Instant::now() + limits.timeout;
    let mut permit = budget.empty();
    // A declared length is allocated at once (address space only: pages are touched as bytes arrive, and
    // the budget counts bytes as they arrive); an unknown one grows by doubling, counted by capacity.
    let known = declared.and_then(|len| usize::try_from(len).ok());
    let first = match known {
        Some(len) => prefix.len() + len.min(cap),
        None => prefix.len() + cap.min(FIRST_CHUNKED_CAPACITY),
    };
    let counted_first = if known.is_some() { prefix.len() } else { first };
    budget.grow(&mut permit, counted_first).await?;
    let mut bytes = Vec::with_capacity(first);
    bytes.extend_from_slice(prefix);
    let limit = prefix.len() + cap;
    loop {
        if !whole && bytes.len() >= limit {
            break;
        }
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyError::Timeout),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(BodyError::Aborted),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            // Trailers carry nothing we use.
            continue;
        };
        budget.count_read(data.len());
        let data = if whole {
            if bytes.len() + data.len() > limit {
                return Err(BodyError::TooLarge { cap });
            }
            &data[..]
        } else {
            &data[..data.len().min(limit - bytes.len())]
        };
        let needed = bytes.len() + data.len();
        if known.is_some() {
            budget.grow(&mut permit, needed).await?;
        } else if needed > bytes.capacity() {
            let grown = needed.max(bytes.capacity().saturating_mul(2)).min(limit);
            budget.grow(&mut permit, grown).await?;
            bytes.reserve_exact(grown - bytes.len());
        }
        bytes.extend_from_slice(data);
    }
    Ok(Buffered {
        bytes,
        start: prefix.len(),
        _permit: permit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use hyper::body::Frame;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

    fn limits(budget: usize, timeout: Duration) -> BodyLimits {
        BodyLimits {
            budget: ByteBudget::new(budget, Duration::from_millis(50)),
            timeout,
        }
    }

    /// A body of unknown length whose chunks arrive through a channel.
    struct Chunks(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            self.0.poll_recv(cx).map(|c| c.map(|c| Ok(Frame::data(c))))
        }
    }

    fn chunked(chunks: &[&'static [u8]]) -> (Body, UnboundedSender<Bytes>) {
        let (tx, rx) = unbounded_channel();
        for chunk in chunks {
            tx.send(Bytes::from_static(chunk)).unwrap();
        }
        (Body::new(Chunks(rx)), tx)
    }

    #[tokio::test]
    async fn a_body_is_read_after_its_prefix_and_counted_until_dropped() {
        let limits = limits(1024, Duration::from_secs(5));
        let buffered = read(Body::from("hello"), b"hdr.", 100, &limits)
            .await
            .unwrap();
        assert_eq!(buffered.body(), b"hello");
        assert_eq!(buffered.with_prefix(), b"hdr.hello");
        assert_eq!(limits.budget.in_use(), 9);
        assert_eq!(limits.budget.bytes_read(), 5);
        drop(buffered);
        assert_eq!(limits.budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_declared_length_over_the_cap_is_refused_before_reading() {
        let limits = limits(1024, Duration::from_secs(5));
        let error = read(Body::from(vec![b'x'; 200]), b"", 100, &limits)
            .await
            .unwrap_err();
        assert_eq!(error, BodyError::TooLarge { cap: 100 });
        assert_eq!(limits.budget.bytes_read(), 0);
    }

    #[tokio::test]
    async fn a_chunked_body_is_cut_at_the_cap_and_counted_by_capacity() {
        let limits = limits(1 << 20, Duration::from_secs(5));
        let (body, tx) = chunked(&[b"aaaa", b"bbbb", b"cccc"]);
        drop(tx);
        assert_eq!(
            read(body, b"", 10, &limits).await.unwrap_err(),
            BodyError::TooLarge { cap: 10 }
        );
        let (body, tx) = chunked(&[b"aaaa", b"bbbb"]);
        drop(tx);
        let buffered = read(body, b"p.", 10, &limits).await.unwrap();
        assert_eq!(buffered.with_prefix(), b"p.aaaabbbb");
        assert!(limits.budget.in_use() >= 10);
        assert!(limits.budget.in_use() <= 12);
    }

    #[tokio::test]
    async fn a_body_larger_than_the_free_budget_is_refused_as_busy() {
        let limits = limits(64, Duration::from_secs(5));
        let held = read(Body::from(vec![1u8; 60]), b"", 100, &limits)
            .await
            .unwrap();
        assert_eq!(
            read(Body::from(vec![2u8; 10]), b"", 100, &limits)
                .await
                .unwrap_err(),
            BodyError::Busy
        );
        drop(held);
        assert!(
            read(Body::from(vec![2u8; 10]), b"", 100, &limits)
                .await
                .is_ok()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_is_cut_at_the_deadline_holding_only_what_arrived() {
        let limits = limits(1024, Duration::from_secs(15));
        let (body, tx) = chunked(&[b"partial"]);
        let started = Instant::now();
        assert_eq!(
            read(body, b"", 100, &limits).await.unwrap_err(),
            BodyError::Timeout
        );
        assert_eq!(started.elapsed(), Duration::from_secs(15));
        drop(tx);
        assert_eq!(limits.budget.in_use(), 0);
        assert_eq!(limits.budget.bytes_read(), 7);
    }

    #[tokio::test]
    async fn the_head_of_a_body_is_read_and_the_rest_left() {
        let limits = limits(1 << 20, Duration::from_secs(5));
        let head = read_head(Body::from(vec![b'x'; 100_000]), 1000, &limits)
            .await
            .unwrap();
        assert_eq!(head.body().len(), 1000);
        let short = read_head(Body::from("tiny"), 1000, &limits).await.unwrap();
        assert_eq!(short.body(), b"tiny");
    }
}
