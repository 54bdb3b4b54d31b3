//! A stand-in for the Kubernetes API server's Secret endpoints, for the `kubernetes-secret:` sink.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::Engine;

/// A stand-in for the Kubernetes API server's Secret endpoints. It checks every request the way the real
/// one would (path, method, content type, bearer token, resourceVersion) and can play a concurrent writer.
#[derive(Default)]
pub struct FakeApiServer {
    pub resource_version: u64,
    pub data: serde_json::Map<String, serde_json::Value>,
    /// Bump the version between the next GET and PATCH, as another writer would.
    pub race_next_patch: bool,
    pub log: Vec<String>,
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
    if api.race_next_patch {
        api.race_next_patch = false;
        api.resource_version += 1;
        api.data.insert(
            "secret".into(),
            base64::engine::general_purpose::STANDARD
                .encode("written-by-someone-else")
                .into(),
        );
        // The version this GET returns is already stale.
        let body = serde_json::json!({
            "kind": "Secret", "apiVersion": "v1",
            "metadata": { "name": "broker", "namespace": "aa", "resourceVersion": (api.resource_version - 1).to_string() },
            "data": api.data,
        });
        return axum::Json(body).into_response();
    }
    let body = serde_json::json!({
        "kind": "Secret", "apiVersion": "v1",
        "metadata": { "name": "broker", "namespace": "aa", "resourceVersion": api.resource_version.to_string() },
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
    if patch["metadata"]["resourceVersion"].as_str() != Some(&api.resource_version.to_string()) {
        api.log.push("409".into());
        let status = serde_json::json!({ "kind": "Status", "status": "Failure", "reason": "Conflict", "code": 409,
            "message": "Operation cannot be fulfilled on secrets \"broker\": the object has been modified" });
        return (StatusCode::CONFLICT, axum::Json(status)).into_response();
    }
    for (key, value) in patch["data"].as_object().unwrap() {
        api.data.insert(key.clone(), value.clone());
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
