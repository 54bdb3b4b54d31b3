//! A stand-in for the Kubernetes API server's Secret endpoints, for the `kubernetes-secret:` sink.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::Engine;

/// A stand-in for the Kubernetes API server's Secret endpoints. It checks every request the way the real
/// one would (path, method, content type, bearer token, resourceVersion), merges patches the way a JSON
/// merge patch does (data and annotations), and can play a concurrent writer.
#[derive(Default)]
pub struct FakeApiServer {
    pub resource_version: u64,
    pub data: serde_json::Map<String, serde_json::Value>,
    pub annotations: serde_json::Map<String, serde_json::Value>,
    /// Another writer changes the secret just before the next PATCH that carries data arrives, so that
    /// PATCH holds a stale version.
    pub race_next_patch: bool,
    /// Another writer changes the Secret just before the next PATCH that carries only the reset record
    /// (a rotator's claim before its reset) arrives.
    pub race_next_claim: bool,
    pub log: Vec<String>,
}

impl FakeApiServer {
    /// The secret held under `key`, decoded.
    pub fn secret(&self, key: &str) -> Option<String> {
        let encoded = self.data.get(key)?.as_str()?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        String::from_utf8(bytes).ok()
    }

    /// Writes `secret` under `key`, as `kubectl apply` (or a restored backup) would.
    pub fn put_secret(&mut self, key: &str, secret: &str) {
        self.data.insert(
            key.into(),
            base64::engine::general_purpose::STANDARD
                .encode(secret)
                .into(),
        );
        self.resource_version += 1;
    }

    /// The reset record annotation, parsed.
    pub fn reset_record(&self) -> Option<serde_json::Value> {
        let text = self
            .annotations
            .get("aa-token-broker/last-reset")?
            .as_str()?;
        serde_json::from_str(text).ok()
    }
}

pub type Api = Arc<Mutex<FakeApiServer>>;
pub const KUBE_TOKEN: &str = "kube-sa-token";

fn authorized(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {KUBE_TOKEN}"))
}

async fn get_secret(State(api): State<Api>, headers: HeaderMap) -> axum::response::Response {
    let mut api = api.lock().unwrap();
    api.log.push("GET".into());
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let body = serde_json::json!({
        "kind": "Secret", "apiVersion": "v1",
        "metadata": {
            "name": "broker", "namespace": "aa",
            "resourceVersion": api.resource_version.to_string(),
            "annotations": api.annotations,
        },
        "data": api.data,
    });
    axum::Json(body).into_response()
}

async fn patch_secret(
    State(api): State<Api>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    let mut api = api.lock().unwrap();
    api.log.push("PATCH".into());
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok())
        != Some("application/merge-patch+json")
    {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
    }
    let patch: serde_json::Value = serde_json::from_str(&body).unwrap();
    if api.race_next_patch && patch.get("data").is_some() {
        api.race_next_patch = false;
        api.put_secret("secret", "written-by-someone-else");
    }
    if api.race_next_claim && patch.get("data").is_none() {
        api.race_next_claim = false;
        api.resource_version += 1;
    }
    if patch["metadata"]["resourceVersion"].as_str() != Some(&api.resource_version.to_string()) {
        api.log.push("409".into());
        let status = serde_json::json!({ "kind": "Status", "status": "Failure", "reason": "Conflict", "code": 409,
            "message": "Operation cannot be fulfilled on secrets \"broker\": the object has been modified" });
        return (StatusCode::CONFLICT, axum::Json(status)).into_response();
    }
    if let Some(data) = patch["data"].as_object() {
        for (key, value) in data {
            api.data.insert(key.clone(), value.clone());
        }
    }
    if let Some(annotations) = patch["metadata"]["annotations"].as_object() {
        for (key, value) in annotations {
            if value.is_null() {
                api.annotations.remove(key);
            } else {
                api.annotations.insert(key.clone(), value.clone());
            }
        }
    }
    api.resource_version += 1;
    (StatusCode::OK, "{}").into_response()
}

pub async fn start_api_server(api: Api) -> String {
    let router = axum::Router::new()
        .route(
            "/api/v1/namespaces/aa/secrets/broker",
            axum::routing::get(get_secret).patch(patch_secret),
        )
        .with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}
