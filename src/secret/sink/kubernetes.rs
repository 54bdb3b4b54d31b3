//! The `kubernetes-secret:` sink: `GET` the Secret for its `resourceVersion`, then a JSON merge patch that
//! carries it, so a concurrent writer makes the API server answer 409 instead of one value silently
//! replacing another ([`SinkError::Conflict`]).

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};

use super::{SinkError, SinkSetupError};
use crate::iam::error::sanitize_excerpt;
use crate::iam::url::with_segments;

/// The in-cluster service account files.
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub const SERVICE_ACCOUNT_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// How to reach the Kubernetes API server.
#[derive(Debug, Clone)]
pub struct KubeAccess {
    /// e.g. `https://10.0.0.1:443`; from `KUBERNETES_SERVICE_HOST`/`_PORT` in a pod.
    pub api_url: String,
    /// Bearer token file (re-read on every call: projected tokens rotate).
    pub token_file: PathBuf,
    /// CA bundle for the API server; the system roots when absent.
    pub ca_file: Option<PathBuf>,
}

/// The client for the API server: its CA (or the system roots), short timeouts, no redirects.
pub(super) fn client(access: &KubeAccess) -> Result<reqwest::Client, SinkSetupError> {
    crate::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = &access.ca_file {
        let pem = std::fs::read(ca).map_err(|e| SinkSetupError::CaUnreadable {
            path: ca.clone(),
            kind: e.kind(),
        })?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| SinkSetupError::CaNotPem {
                path: ca.clone(),
                reason: e.to_string(),
            })?;
        builder = builder.tls_certs_only(certs);
    }
    builder
        .build()
        .map_err(|e| SinkSetupError::Client(e.to_string()))
}

pub(super) async fn patch_secret(
    client: &reqwest::Client,
    access: &KubeAccess,
    namespace: &str,
    name: &str,
    key: &str,
    secret: &SecretString,
) -> Result<(), SinkError> {
    let token = std::fs::read_to_string(&access.token_file).map_err(|e| {
        SinkError::Kubernetes(format!(
            "cannot read the service account token {}: {}",
            access.token_file.display(),
            crate::private_file::io_reason(&e)
        ))
    })?;
    let token = token.trim();
    // By segment, like every upstream URL ([`crate::iam::url`]); the names' grammar refuses `.` and `..`.
    let base = reqwest::Url::parse(&access.api_url)
        .map_err(|e| SinkError::Kubernetes(format!("the API server URL is not a URL: {e}")))?;
    let url = with_segments(
        &base,
        ["api", "v1", "namespaces", namespace, "secrets", name],
    );
    let current = client
        .get(url.clone())
        .bearer_auth(token)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| SinkError::Kubernetes(format!("GET {namespace}/{name}: {e}")))?;
    let status = current.status();
    let body = current.bytes().await.unwrap_or_default();
    if !status.is_success() {
        return Err(SinkError::Kubernetes(format!(
            "GET {namespace}/{name}: HTTP {}{}",
            status.as_u16(),
            kube_reason(&body)
        )));
    }
    let object: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| SinkError::Kubernetes(format!("GET {namespace}/{name}: not JSON ({e})")))?;
    let resource_version = object["metadata"]["resourceVersion"]
        .as_str()
        .ok_or_else(|| {
            SinkError::Kubernetes(format!(
                "GET {namespace}/{name}: no metadata.resourceVersion"
            ))
        })?
        .to_string();
    let encoded = base64::engine::general_purpose::STANDARD.encode(secret.expose_secret());
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": resource_version },
        "data": { key: encoded },
    });
    let response = client
        .patch(url)
        .bearer_auth(token)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/merge-patch+json",
        )
        .header(reqwest::header::ACCEPT, "application/json")
        .body(patch.to_string())
        .send()
        .await
        .map_err(|e| SinkError::Kubernetes(format!("PATCH {namespace}/{name}: {e}")))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    if status == reqwest::StatusCode::CONFLICT {
        return Err(SinkError::Conflict {
            namespace: namespace.into(),
            name: name.into(),
        });
    }
    let body = response.bytes().await.unwrap_or_default();
    Err(SinkError::Kubernetes(format!(
        "PATCH {namespace}/{name}: HTTP {}{}",
        status.as_u16(),
        kube_reason(&body)
    )))
}

/// The `message` of a Kubernetes `Status` body, sanitized.
fn kube_reason(body: &[u8]) -> String {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .and_then(|m| sanitize_excerpt::<&str>(m.as_bytes(), &[]));
    message.map(|m| format!(": {m}")).unwrap_or_default()
}
