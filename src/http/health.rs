//! `GET /healthz` (the process is alive), `GET /readyz` (every entity holds a valid token; also the state
//! of the realm key sets used to verify incoming tokens) and `GET /metrics` (Prometheus). None needs the `Metadata` header and none reveals a token or secret.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{AppState, reply};
use crate::timefmt;
use crate::token::status::EntityStatus;

pub async fn healthz() -> Response {
    reply::no_store(
        (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "status": "ok" })),
        )
            .into_response(),
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EntityReadiness {
    ready: bool,
    stale: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in: Option<u64>,
    consecutive_failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_expires_at: Option<String>,
    secret_in_grace: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    iam_message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_alert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_warning: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_login: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_rotation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_fingerprint: Option<String>,
}

/// 200 only when every configured entity holds a token that may be handed out; 503 otherwise, with the
/// detail per entity either way.
pub async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    let (ready, mut body) = readiness(app.broker.status());
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Verification of incoming tokens: the allow-list and each key set's state and age. Reported, not
    // part of `ready`, which is about the tokens this broker hands out.
    if let Some(verifier) = &app.verifier {
        body["verify"] = serde_json::json!(verifier.status());
    }
    // The Central Registry's last answer (signature checks read peers' keys there): reported, never a
    // reason to be unready by itself.
    if let Some(jws) = &app.jws {
        body["centralRegistry"] = serde_json::json!(jws.registry.status());
        // Each signing key's state: a broken key is an operator's problem to see here, never a reason
        // to stop serving tokens.
        if !jws.signers.is_empty() {
            let signing: BTreeMap<String, crate::jws::KeyState> = jws
                .signers
                .iter()
                .map(|(entity, file)| (entity.to_string(), file.state()))
                .collect();
            body["signing"] = serde_json::json!(signing);
        }
    }
    // FI encryption: whether it is on, and each entity's KEK (its id, earlier keys still unwrapping, the
    // last reload's error). Reported, not part of `ready`: a KEK is checked at start and kept if a re-read fails.
    if let Some(fi) = &app.fi {
        let entities: BTreeMap<String, crate::fi::kek::KekStatus> = fi
            .fi
            .status()
            .into_iter()
            .map(|(id, status)| (id.to_string(), status))
            .collect();
        body["fi"] = serde_json::json!({ "enabled": fi.fi.enabled(), "entities": entities });
    }
    reply::no_store((code, axum::Json(body)).into_response())
}

/// Whether every entity is ready, and the `/readyz` body. Total: any status renders.
pub fn readiness(status: Vec<EntityStatus>) -> (bool, serde_json::Value) {
    let ready = status.iter().all(|e| e.ready);
    let entities: BTreeMap<String, EntityReadiness> = status
        .into_iter()
        .map(|e| {
            (
                e.entity_id.to_string(),
                EntityReadiness {
                    ready: e.ready,
                    stale: e.stale,
                    expires_in: e.expires_in,
                    consecutive_failures: e.consecutive_failures,
                    last_error: e.last_error,
                    secret_expires_at: e.secret_expires_at.map(timefmt::rfc3339_seconds),
                    secret_in_grace: e.secret_in_grace,
                    iam_message: e.iam_message,
                    secret_alert: e.secret.alert,
                    secret_warning: e.secret.warning,
                    admin_login: e.secret.admin_login,
                    last_rotation: e.secret.last_rotation.map(timefmt::rfc3339_seconds),
                    secret_fingerprint: e.secret_fingerprint,
                },
            )
        })
        .collect();
    (
        ready,
        serde_json::json!({ "ready": ready, "entities": entities }),
    )
}

pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let text = app.metrics.render(&app.broker.status());
    let content_type =
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");
    reply::no_store(([(header::CONTENT_TYPE, content_type)], text).into_response())
}
