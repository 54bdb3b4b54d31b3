//! The hot path: `GET /v1/token[/{entityId}]` answered in front of the router.
//!
//! Siblings ask for their token on every outbound call, and every pod pays for each answer. Through the
//! router an answer also costs a route match, an extension map for path parameters, a boxed handler
//! future and a clone of the boxed route service: together about 40 % of the broker's user-space CPU per
//! answer (the measurements are in bench/README.md, "Where the time goes").
//!
//! [`Frontend`] answers the common case — a GET that passes the caller guard, for an entity whose held
//! token may be handed out now — from the token's pre-serialized bytes, and hands every other request to
//! the router unchanged. It does the same for `GET /v1/verify` with a token verified before (the common
//! case of a forward-auth proxy: a peer presents the same token on every call), through
//! [`verify::answer_from_cache`]. The router stays the one definition of every answer: this path calls the same
//! [`guard::admit`] and `tokens::answer`, so the bytes are the same (`tests/integration/api.rs` compares them).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, Response, header};
use axum::routing::future::RouteFuture;
use http_body::Body as _;
use hyper::body::Incoming;
use tower::Service;

use super::verify::{self, VerifyState};
use super::{AppState, guard, tokens};
use crate::token::status::Served;

/// The service each connection runs: the hot path for token reads, the router for everything else.
pub struct Frontend {
    /// `None` on the admin listener, which serves no tokens.
    tokens: Option<Arc<AppState>>,
    /// Repeated `GET /v1/verify` answered from the verifier's cache; `None` where it is not served.
    verify: Option<Arc<VerifyState>>,
    router: Router,
    /// Requests this connection may still make; the answer to the last says `Connection: close`.
    requests_left: AtomicU32,
}

impl Clone for Frontend {
    fn clone(&self) -> Self {
        Self {
            tokens: self.tokens.clone(),
            verify: self.verify.clone(),
            router: self.router.clone(),
            requests_left: AtomicU32::new(u32::MAX),
        }
    }
}

impl Frontend {
    pub fn new(app: Arc<AppState>, router: Router) -> Self {
        let verify = app.verify_state();
        Self {
            tokens: Some(app),
            verify,
            router,
            requests_left: AtomicU32::new(u32::MAX),
        }
    }

    /// The router alone, with no hot path.
    pub fn router_only(router: Router) -> Self {
        Self {
            tokens: None,
            verify: None,
            router,
            requests_left: AtomicU32::new(u32::MAX),
        }
    }

    /// The service for one new connection, which serves at most `max_requests` requests.
    pub fn for_connection(&self, max_requests: u32) -> Self {
        let service = self.clone();
        service
            .requests_left
            .store(max_requests.max(1), Ordering::Relaxed);
        service
    }

    /// Counts a request; `true` when it is the connection's last.
    fn last_request(&self) -> bool {
        // Only this connection's task calls this, so a relaxed read-modify-write is exact.
        let left = self.requests_left.load(Ordering::Relaxed).saturating_sub(1);
        self.requests_left.store(left, Ordering::Relaxed);
        left == 0
    }

    /// The verify listener: repeated verifications on the hot path (no Host rule), the router for the rest.
    pub fn verify_only(state: Arc<VerifyState>, router: Router) -> Self {
        Self {
            tokens: None,
            verify: Some(state),
            router,
            requests_left: AtomicU32::new(u32::MAX),
        }
    }

    /// `GET /v1/verify` of a token verified before; `None` sends the request to the router.
    fn try_verify(&self, request: &Request<Incoming>) -> Option<Response<Body>> {
        let state = self.verify.as_ref()?;
        if request.uri().path() != verify::VERIFY_PATH
            || request.method() != Method::GET
            || !request.body().is_end_stream()
        {
            return None;
        }
        verify::answer_from_cache(state, request.uri(), request.headers())
    }

    /// The answer if the hot path can give it; `None` sends the request to the router.
    fn try_answer(&self, request: &Request<Incoming>) -> Option<Response<Body>> {
        if let Some(answer) = self.try_verify(request) {
            return Some(answer);
        }
        let app = self.tokens.as_ref()?;
        // A body (which the router would limit) or any other method goes the long way.
        if request.method() != Method::GET || !request.body().is_end_stream() {
            return None;
        }
        let raw_id = match request.uri().path() {
            "/v1/token" => None,
            path => {
                let raw = path.strip_prefix("/v1/token/")?;
                // `/v1/token/refresh` is the POST-only route, whatever entities exist. Percent-encoded
                // or nested paths never match a key (entity ids have no `%` or `/`), so they reach the
                // router, which decodes.
                if raw == "refresh" {
                    return None;
                }
                Some(raw)
            }
        };
        let id = tokens::resolve(app, raw_id).ok()?;
        // A refusal is answered (and counted) by the router's guard layer, which calls the same function.
        let caller = guard::admit(
            guard::Level::Caller,
            request.uri(),
            request.headers(),
            &app.guard,
        )
        .ok()?;
        let served: Served = app.broker.held(id)?;
        Some(tokens::answer(app, id, Ok(served), caller.wants_plain_text))
    }
}

impl hyper::service::Service<Request<Incoming>> for Frontend {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let close = self.last_request();
        let future = match self.try_answer(&request) {
            Some(response) => AnswerFuture::Ready(Some(response)),
            // The router is always ready (axum documents it), so no `poll_ready` first.
            None => AnswerFuture::Routed(Box::new(self.router.clone().call(request))),
        };
        Answer { future, close }
    }
}

/// The future of one answer, and whether it is the connection's last.
///
/// hyper keeps a box of this size per connection for the connection's life, so its size is paid per
/// connection: the router's future (320 bytes) is boxed on the slow path, which leaves 136.
pub struct Answer {
    future: AnswerFuture,
    close: bool,
}

/// Ready at once from the hot path, or the router's.
enum AnswerFuture {
    Ready(Option<Response<Body>>),
    Routed(Box<RouteFuture<Infallible>>),
}

impl Future for Answer {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let polled = match &mut this.future {
            AnswerFuture::Ready(response) => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                // Polled again after completion: hyper never does; answer rather than panic.
                None => Poll::Ready(Ok(Response::new(Body::empty()))),
            },
            AnswerFuture::Routed(routed) => Pin::new(&mut **routed).poll(cx),
        };
        match polled {
            Poll::Ready(Ok(mut response)) if this.close => {
                // hyper closes the connection after an answer that says so.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                Poll::Ready(Ok(response))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_per_connection_future_stays_small() {
        // What hyper allocates per connection for the service's future; see [`Answer`].
        let size = std::mem::size_of::<Answer>();
        assert!(size <= 160, "Answer is {size} bytes");
        assert!(std::mem::size_of::<AnswerFuture>() < size);
        assert!(std::mem::size_of::<RouteFuture<Infallible>>() > size);
    }
}
