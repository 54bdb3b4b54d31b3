//! A refusal of `/v1/authorize`: the ReBIT `ErrorResponse`, its envelope (the request's `txnid` and `ver`
//! when they may be echoed) and our signature over its exact bytes.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

use crate::http::body::{self, Buffered};
use crate::http::jws::{JwsState, SIGNATURE};
use crate::http::rebit::{self, Echo, TXNID_SCAN_BYTES};
use crate::metrics::edge::AuthorizeOutcome;

/// A refusal, before or after the body was read.
pub(super) struct Refusal {
    pub(super) outcome: AuthorizeOutcome,
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<Duration>,
    /// The request's `txnid` is not echoed (it is what is wrong).
    fresh_txnid: bool,
}

impl Refusal {
    pub(super) fn new(
        outcome: AuthorizeOutcome,
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            outcome,
            status,
            code,
            message: message.into(),
            retry_after: None,
            fresh_txnid: false,
        }
    }

    pub(super) fn fresh_txnid(mut self) -> Self {
        self.fresh_txnid = true;
        self
    }

    pub(super) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            AuthorizeOutcome::Unauthorized,
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            message,
        )
    }

    pub(super) fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            AuthorizeOutcome::InvalidRequest,
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            message,
        )
    }

    pub(super) fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// The answer. `read` is the body when it was read; otherwise at most the first
    /// [`TXNID_SCAN_BYTES`] of `unread` are, for the envelope fields the answer echoes.
    pub(super) async fn answer(
        self,
        state: &JwsState,
        read: Option<&Buffered>,
        unread: Option<Body>,
    ) -> Response {
        state.metrics.authorize(self.outcome);
        let head = match (read, unread) {
            (Some(_), _) | (None, None) => None,
            (None, Some(body)) => body::read_head(body, TXNID_SCAN_BYTES, &state.limits)
                .await
                .ok(),
        };
        let mut echo = Echo::from_head(read.or(head.as_ref()).map(Buffered::body));
        // Answers carry a supported version, and echo a txnid that is not itself the fault.
        echo.ver = state.envelope.answer_version(Some(&echo.ver)).to_string();
        if self.fresh_txnid {
            echo.txnid = rebit::answer_txnid(None);
        }
        let mut response = signed(
            state,
            self.status,
            rebit::error_body(&echo, self.code, &self.message),
        )
        .await;
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// A ReBIT answer with our `x-jws-signature` over its exact bytes, when our entity has a signing key and
/// the crypto pool has room (a refusal is never held back for want of a signature).
async fn signed(state: &JwsState, status: StatusCode, body: Vec<u8>) -> Response {
    let key = state.own_signer().and_then(|file| file.key().ok());
    let Some(key) = key else {
        return rebit::respond(status, body);
    };
    // An error body is a few hundred bytes: a copy keeps it for the unsigned answer.
    let unsigned = body.clone();
    let (signature, body) = match state
        .pool
        .run(move || {
            let signature = key.sign(&body).ok();
            (signature, body)
        })
        .await
    {
        Ok(done) => done,
        Err(_) => return rebit::respond(status, unsigned),
    };
    let mut response = rebit::respond(status, body);
    if let Some(value) = signature.and_then(|s| HeaderValue::from_str(&s).ok()) {
        response.headers_mut().insert(SIGNATURE, value);
    }
    response
}

pub(super) fn mismatch() -> Refusal {
    Refusal::new(
        AuthorizeOutcome::SignatureDoesNotMatch,
        StatusCode::BAD_REQUEST,
        "SignatureDoesNotMatch",
        "the signature does not match the body and the sender's key",
    )
}
