//! The shapes of answers: the JSON error body `{"error","message"}` and the headers every answer carries.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// `Cache-Control: no-store` on everything: tokens must never sit in a shared cache, and errors and
/// readiness are only true for an instant.
pub fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A JSON error: `{"error":"<code>","message":"..."}`.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": code, "message": message.into() });
    no_store((status, axum::Json(body)).into_response())
}

/// `503` with `Retry-After` in whole seconds (at least 1).
pub fn unavailable(code: &str, message: impl Into<String>, retry_after: Duration) -> Response {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, code, message);
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    if let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}
