//! The `kubernetes-secret:` sink: `GET` the Secret for its `resourceVersion`, then a JSON merge patch that
//! carries it, so a concurrent writer makes the API server answer 409 instead of one value silently
//! replacing another ([`SinkError::Conflict`]). The Secret also carries the record of the last reset as an
//! annotation ([`RESET_RECORD_ANNOTATION`]), written in the same patch as the secret, and is read back so a
//! rotator can tell whether it still holds the IAM's current secret.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};

use super::{SinkError, SinkSetupError};
use crate::iam::error::sanitize_excerpt;
use crate::iam::url::with_segments;
use crate::upstream::http::{ClientSpec, describe, read_whole};

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

/// Largest answer read from the API server: a Secret holds at most 1 MiB of data, base64 in JSON.
const MAX_ANSWER_BYTES: usize = 2 * 1024 * 1024;

/// The client for the API server: its CA (or the system roots), short timeouts, no redirects.
pub(super) fn client(access: &KubeAccess) -> Result<reqwest::Client, SinkSetupError> {
    let mut spec = ClientSpec::new(Duration::from_secs(5), Duration::from_secs(15));
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
        spec = spec.only_roots(certs);
    }
    spec.build()
        .map_err(|e| SinkSetupError::Client(e.reason().to_string()))
}

/// An answer's body for `what` (`GET ns/name`): at most [`MAX_ANSWER_BYTES`], the transport error
/// without its URL.
async fn body_of(response: &mut reqwest::Response, what: &str) -> Result<Vec<u8>, SinkError> {
    read_whole(response, MAX_ANSWER_BYTES)
        .await
        .map_err(|e| SinkError::Kubernetes(format!("{what}: {e}")))
}

/// The annotation on the Secret that holds the record of the last reset (see [`crate::secret::ledger`]):
/// kept with the secret, so every rotator run, every replica and every reader of the Secret sees it.
pub const RESET_RECORD_ANNOTATION: &str = "aa-token-broker/last-reset";

/// The Secret as read: the key's value, the reset record annotation and the `resourceVersion`.
pub(super) struct SecretObject {
    pub value: Option<SecretString>,
    pub note: Option<String>,
    pub resource_version: String,
}

/// One Secret addressed through the API server.
pub(super) struct SecretRef<'a> {
    pub client: &'a reqwest::Client,
    pub access: &'a KubeAccess,
    pub namespace: &'a str,
    pub name: &'a str,
    pub key: &'a str,
}

impl SecretRef<'_> {
    fn token(&self) -> Result<String, SinkError> {
        let token = std::fs::read_to_string(&self.access.token_file).map_err(|e| {
            SinkError::Kubernetes(format!(
                "cannot read the service account token {}: {}",
                self.access.token_file.display(),
                crate::private_file::io_reason(&e)
            ))
        })?;
        Ok(token.trim().to_string())
    }

    fn url(&self) -> Result<reqwest::Url, SinkError> {
        // By segment, like every upstream URL ([`crate::iam::url`]); the names' grammar refuses `.` and `..`.
        let base = reqwest::Url::parse(&self.access.api_url)
            .map_err(|e| SinkError::Kubernetes(format!("the API server URL is not a URL: {e}")))?;
        Ok(with_segments(
            &base,
            [
                "api",
                "v1",
                "namespaces",
                self.namespace,
                "secrets",
                self.name,
            ],
        ))
    }

    /// `GET` the Secret.
    pub async fn get(&self) -> Result<SecretObject, SinkError> {
        let (namespace, name) = (self.namespace, self.name);
        let what = format!("GET {namespace}/{name}");
        let mut current = self
            .client
            .get(self.url()?)
            .bearer_auth(self.token()?)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| SinkError::Kubernetes(format!("{what}: {}", describe(&e))))?;
        let status = current.status();
        let body = body_of(&mut current, &what).await;
        if !status.is_success() {
            // What the server says of a refusal is a detail: the status is the error.
            let body = body.unwrap_or_default();
            return Err(SinkError::Kubernetes(format!(
                "{what}: HTTP {}{}",
                status.as_u16(),
                kube_reason(&body)
            )));
        }
        let object: serde_json::Value = serde_json::from_slice(&body?)
            .map_err(|e| SinkError::Kubernetes(format!("{what}: not JSON ({e})")))?;
        let resource_version = object["metadata"]["resourceVersion"]
            .as_str()
            .ok_or_else(|| SinkError::Kubernetes(format!("{what}: no metadata.resourceVersion")))?
            .to_string();
        // A value that is not base64 or not UTF-8 is no secret of ours: the store is treated as holding none.
        let value = object["data"][self.key]
            .as_str()
            .and_then(|encoded| {
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .ok()
            })
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .map(|text| SecretString::from(text.trim().to_string()))
            .filter(|secret| !secret.expose_secret().is_empty());
        let note = object["metadata"]["annotations"][RESET_RECORD_ANNOTATION]
            .as_str()
            .map(str::to_string);
        Ok(SecretObject {
            value,
            note,
            resource_version,
        })
    }

    /// A JSON merge patch carrying `resource_version`: the secret (when given) and the reset record
    /// annotation (when given) in one update, so a concurrent writer makes the API server answer 409.
    pub async fn patch(
        &self,
        resource_version: &str,
        secret: Option<&SecretString>,
        note: Option<&str>,
    ) -> Result<(), SinkError> {
        let (namespace, name) = (self.namespace, self.name);
        let mut patch = serde_json::json!({ "metadata": { "resourceVersion": resource_version } });
        if let Some(secret) = secret {
            let encoded = base64::engine::general_purpose::STANDARD.encode(secret.expose_secret());
            patch["data"] = serde_json::json!({ self.key: encoded });
        }
        if let Some(note) = note {
            patch["metadata"]["annotations"] = serde_json::json!({ RESET_RECORD_ANNOTATION: note });
        }
        let what = format!("PATCH {namespace}/{name}");
        let mut response = self
            .client
            .patch(self.url()?)
            .bearer_auth(self.token()?)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/merge-patch+json",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(patch.to_string())
            .send()
            .await
            .map_err(|e| SinkError::Kubernetes(format!("{what}: {}", describe(&e))))?;
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
        let body = body_of(&mut response, &what).await.unwrap_or_default();
        Err(SinkError::Kubernetes(format!(
            "{what}: HTTP {}{}",
            status.as_u16(),
            kube_reason(&body)
        )))
    }
}

/// Stores `secret` (with the reset record `note`, when given): `GET` for the `resourceVersion`, then one
/// merge patch carrying it.
pub(super) async fn patch_secret(
    secret_ref: &SecretRef<'_>,
    secret: &SecretString,
    note: Option<&str>,
) -> Result<(), SinkError> {
    let current = secret_ref.get().await?;
    secret_ref
        .patch(&current.resource_version, Some(secret), note)
        .await
}

/// The `message` of a Kubernetes `Status` body, sanitized.
fn kube_reason(body: &[u8]) -> String {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .and_then(|m| sanitize_excerpt::<&str>(m.as_bytes(), &[]));
    message.map(|m| format!(": {m}")).unwrap_or_default()
}
