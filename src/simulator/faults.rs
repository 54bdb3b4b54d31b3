//! How an injected fault ([`super::state::FaultKind`]) replaces an IAM answer (an error status, a gateway
//! page, a hang, a connection cut mid-body) or spoils a success (truncated or absurd values), and the
//! latency added before every answer.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Shared;
use super::envelope::envelope_error;
use super::state::FaultKind;
use crate::iam::Endpoint;

/// What the fault queue decided for this request.
pub(super) enum Prelude {
    /// Answer normally, possibly spoiling the success body with this fault.
    Proceed(Option<FaultKind>),
    Respond(Response),
}

pub(super) async fn prelude(shared: &Shared, endpoint: Endpoint) -> Prelude {
    shared.counters.record(endpoint);
    let (latency, fault) = {
        let mut world = shared.world();
        (
            Duration::from_millis(world.settings.latency_ms),
            world.take_fault(endpoint),
        )
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match fault {
        None => Prelude::Proceed(None),
        Some(FaultKind::Delay { ms }) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Prelude::Proceed(None)
        }
        Some(FaultKind::Reset) => Prelude::Respond(reset_mid_body()),
        Some(FaultKind::Hang) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Prelude::Respond(StatusCode::GATEWAY_TIMEOUT.into_response())
        }
        Some(FaultKind::Status {
            status,
            retry_after_secs,
            body,
        }) => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = match body {
                Some(raw) => (code, raw).into_response(),
                None => envelope_error(
                    code,
                    code.canonical_reason().unwrap_or("Error"),
                    "Injected failure",
                    None,
                ),
            };
            if let Some(secs) = retry_after_secs {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            Prelude::Respond(response)
        }
        Some(FaultKind::Html { status }) => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            let page = format!(
                "<html>\r\n<head><title>{0}</title></head>\r\n<body>\r\n<center><h1>{0}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n",
                code
            );
            Prelude::Respond((code, [(header::CONTENT_TYPE, "text/html")], page).into_response())
        }
        Some(FaultKind::Empty { status }) => Prelude::Respond(
            StatusCode::from_u16(status)
                .unwrap_or(StatusCode::OK)
                .into_response(),
        ),
        Some(FaultKind::HugeBody) => {
            let body = format!("{{\"padding\":\"{}\"}}", "x".repeat(1 << 20));
            Prelude::Respond(
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    body,
                )
                    .into_response(),
            )
        }
        Some(spoiler) => Prelude::Proceed(Some(spoiler)),
    }
}

/// A body that fails on its first frame. hyper has sent the head by then, so it aborts the connection and
/// the client sees it closed in the middle of the answer.
struct BrokenBody;

impl http_body::Body for BrokenBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(Some(Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "injected reset",
        ))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(512)
    }
}

fn reset_mid_body() -> Response {
    let mut response = Response::new(axum::body::Body::new(BrokenBody));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
