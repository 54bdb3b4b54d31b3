//! The IAM's answer envelope (spec §2): every body carries `ver`, `timestamp` and `txnId`, and an error is
//! `errorCode` and `errorMsg` inside it. Its own module because the IAM routes, the injected faults and the
//! site doors all answer in it, and the faults must not depend on the routes they stand in for.

use std::time::SystemTime;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::iam::client::new_txn_id;
use crate::timefmt;

/// `body` with the envelope's fields set: `txn_id` when the caller has one, else a new id.
pub(super) fn envelope(mut body: Value, txn_id: Option<String>) -> Value {
    body["ver"] = json!("1.0.0");
    body["timestamp"] = json!(timefmt::rfc3339_nanos(SystemTime::now()));
    body["txnId"] = json!(txn_id.unwrap_or_else(new_txn_id));
    body
}

/// An error answer: `status` with `errorCode` and `errorMsg` in the envelope.
pub(super) fn envelope_error(
    status: StatusCode,
    code: &str,
    message: &str,
    txn_id: Option<String>,
) -> Response {
    let body = envelope(json!({ "errorCode": code, "errorMsg": message }), txn_id);
    (status, axum::Json(body)).into_response()
}
