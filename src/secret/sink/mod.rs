//! Where a new secret is written: a file (atomically), a Kubernetes Secret, or a command's stdin.
//!
//! A rotated secret must be durable before anything depends on it, because the IAM revokes the old one the
//! moment it issues the new one. Each sink reports success only when the secret is safely stored:
//! - `file:PATH` — temp file in the same directory (mode 0600, created exclusively), write, fsync, rename over
//!   `PATH`, fsync the directory;
//! - `kubernetes-secret:NAMESPACE/NAME[/KEY]` — `GET` the Secret for its `resourceVersion`, then a JSON merge
//!   patch that carries it, so a concurrent writer makes the API server answer 409 instead of one value
//!   silently replacing another ([`SinkError::Conflict`]);
//! - `exec:COMMAND` — the command run directly (split into arguments like a POSIX shell would, but no
//!   shell runs, so the distroless image needs none), with the secret on stdin; exit status 0 means
//!   stored. The child gets this process's environment minus every `AA_BROKER_*` variable (which may hold
//!   the entity secret or the admin password), runs in a process group of its own, and that whole group is
//!   killed if it has not finished within [`EXEC_TIMEOUT`]. A shell pipeline needs an explicit
//!   `sh -c '…'`.

//!
//! One file per kind: `file`, `kubernetes`, `exec`; this file parses the `--secret-sink` setting and
//! dispatches.

mod exec;
mod file;
mod kubernetes;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

pub use exec::EXEC_TIMEOUT;
pub use file::{read_back, write_atomically};
pub use kubernetes::{
    KubeAccess, RESET_RECORD_ANNOTATION, SERVICE_ACCOUNT_CA, SERVICE_ACCOUNT_TOKEN,
};

/// The key written when a `kubernetes-secret:` sink names none.
pub const DEFAULT_SECRET_KEY: &str = "secret";

/// A configured sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkSpec {
    File(PathBuf),
    KubernetesSecret {
        namespace: String,
        name: String,
        key: String,
    },
    Exec(String),
}

impl fmt::Display for SinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkSpec::File(path) => write!(f, "file:{}", path.display()),
            SinkSpec::KubernetesSecret {
                namespace,
                name,
                key,
            } => write!(f, "kubernetes-secret:{namespace}/{name}/{key}"),
            SinkSpec::Exec(command) => write!(f, "exec:{command}"),
        }
    }
}

impl SinkSpec {
    /// Parses `file:PATH`, `kubernetes-secret:NAMESPACE/NAME[/KEY]` or `exec:COMMAND`.
    pub fn parse(raw: &str) -> Result<SinkSpec, SinkSpecError> {
        let raw = raw.trim();
        if let Some(path) = raw.strip_prefix("file:") {
            if path.is_empty() {
                return Err(SinkSpecError::NoPath);
            }
            return Ok(SinkSpec::File(PathBuf::from(path)));
        }
        if let Some(rest) = raw.strip_prefix("kubernetes-secret:") {
            let parts: Vec<&str> = rest.split('/').collect();
            // Each part is a path segment of the API server's URL: `.` and `..` are refused (Kubernetes
            // refuses them as names too).
            let valid = |s: &str| {
                !s.is_empty()
                    && s.len() <= 253
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
                    && !s.chars().all(|c| c == '.')
            };
            return match parts.as_slice() {
                [ns, name] if valid(ns) && valid(name) => Ok(SinkSpec::KubernetesSecret {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    key: DEFAULT_SECRET_KEY.into(),
                }),
                [ns, name, key] if valid(ns) && valid(name) && valid(key) => {
                    Ok(SinkSpec::KubernetesSecret {
                        namespace: ns.to_string(),
                        name: name.to_string(),
                        key: key.to_string(),
                    })
                }
                _ => Err(SinkSpecError::KubernetesForm),
            };
        }
        if let Some(command) = raw.strip_prefix("exec:") {
            if command.trim().is_empty() {
                return Err(SinkSpecError::NoCommand);
            }
            if exec::argv(command).is_none() {
                return Err(SinkSpecError::Unsplittable);
            }
            return Ok(SinkSpec::Exec(command.to_string()));
        }
        Err(SinkSpecError::UnknownKind)
    }
}

/// Why a `--secret-sink` value is not a sink.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkSpecError {
    #[error("file: needs a path")]
    NoPath,
    #[error("expected kubernetes-secret:NAMESPACE/NAME[/KEY]")]
    KubernetesForm,
    #[error("exec: needs a command")]
    NoCommand,
    #[error(
        "exec: the command has an unclosed quote or escape (it is split like a shell would, but no shell runs)"
    )]
    Unsplittable,
    #[error("expected file:PATH, kubernetes-secret:NAMESPACE/NAME[/KEY] or exec:COMMAND")]
    UnknownKind,
}

/// Why a sink cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SinkSetupError {
    #[error("a kubernetes-secret sink needs the API server (not running in a pod?)")]
    NoApiServer,
    #[error("cannot read the CA file {path}: {}", crate::private_file::io_reason(&std::io::Error::from(*kind)))]
    CaUnreadable {
        path: PathBuf,
        kind: std::io::ErrorKind,
    },
    #[error("the CA file {path} is not PEM: {reason}")]
    CaNotPem { path: PathBuf, reason: String },
    #[error("cannot build the Kubernetes client: {0}")]
    Client(String),
}

/// Why a secret was not stored. Never contains the secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    #[error("writing {path} failed: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("Kubernetes Secret {namespace}/{name} changed underneath (409 Conflict)")]
    Conflict { namespace: String, name: String },
    #[error("Kubernetes API: {0}")]
    Kubernetes(String),
    #[error("exec sink: {0}")]
    Exec(String),
    #[error("cannot read back {place}: {reason}")]
    ReadBack { place: String, reason: String },
}

/// What a store holds, read back.
pub struct Stored {
    /// The secret in the store; `None` when it holds none (no file yet, no such key in the Secret).
    pub secret: Option<SecretString>,
    /// The reset record kept with the secret (the Secret's annotation), unparsed.
    pub note: Option<String>,
    /// The version to compare-and-swap on (the Secret's `resourceVersion`).
    pub version: Option<String>,
}

/// A sink ready to store secrets.
#[derive(Clone)]
pub struct SecretSink {
    spec: SinkSpec,
    kube: Option<(KubeAccess, reqwest::Client)>,
    exec_timeout: Duration,
}

impl fmt::Debug for SecretSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretSink({})", self.spec)
    }
}

impl SecretSink {
    pub fn new(spec: SinkSpec, kube: Option<&KubeAccess>) -> Result<SecretSink, SinkSetupError> {
        let kube = match (&spec, kube) {
            (SinkSpec::KubernetesSecret { .. }, Some(access)) => {
                Some((access.clone(), kubernetes::client(access)?))
            }
            (SinkSpec::KubernetesSecret { .. }, None) => return Err(SinkSetupError::NoApiServer),
            _ => None,
        };
        Ok(SecretSink {
            spec,
            kube,
            exec_timeout: EXEC_TIMEOUT,
        })
    }

    /// How long an `exec:` command may take (default [`EXEC_TIMEOUT`]).
    pub fn with_exec_timeout(mut self, timeout: Duration) -> Self {
        self.exec_timeout = timeout;
        self
    }

    pub fn spec(&self) -> &SinkSpec {
        &self.spec
    }

    /// Stores `secret`. Success means it is durable.
    pub async fn persist(&self, secret: &SecretString) -> Result<(), SinkError> {
        self.persist_noted(secret, None).await
    }

    /// Stores `secret`; a `kubernetes-secret:` sink writes `note` (the reset record) as an annotation in
    /// the same update. Other sinks ignore `note`: their record is the ledger file.
    pub async fn persist_noted(
        &self,
        secret: &SecretString,
        note: Option<&str>,
    ) -> Result<(), SinkError> {
        match &self.spec {
            SinkSpec::File(path) => {
                let path = path.clone();
                let value = SecretString::from(secret.expose_secret());
                tokio::task::spawn_blocking(move || file::write_atomically(&path, &value))
                    .await
                    .map_err(|e| SinkError::File {
                        path: PathBuf::new(),
                        reason: e.to_string(),
                    })?
            }
            SinkSpec::KubernetesSecret { .. } => {
                kubernetes::patch_secret(&self.kube_ref()?, secret, note).await
            }
            SinkSpec::Exec(command) => exec::run(command, secret, self.exec_timeout).await,
        }
    }

    /// Reads back what the store holds; `Ok(None)` for a sink that cannot be read (`exec:`).
    pub async fn read(&self) -> Result<Option<Stored>, SinkError> {
        match &self.spec {
            SinkSpec::File(path) => {
                let path = path.clone();
                let secret = tokio::task::spawn_blocking(move || file::read_back(&path))
                    .await
                    .map_err(|e| SinkError::File {
                        path: PathBuf::new(),
                        reason: e.to_string(),
                    })??;
                Ok(Some(Stored {
                    secret,
                    note: None,
                    version: None,
                }))
            }
            SinkSpec::KubernetesSecret { .. } => {
                let object = self.kube_ref()?.get().await?;
                Ok(Some(Stored {
                    secret: object.value,
                    note: object.note,
                    version: Some(object.resource_version),
                }))
            }
            SinkSpec::Exec(_) => Ok(None),
        }
    }

    /// Writes only the reset record annotation of a `kubernetes-secret:` sink, if the Secret is still at
    /// `version` (a 409 otherwise): the record made before a reset, which doubles as a claim that another
    /// rotator of the same Secret sees.
    pub async fn write_note(&self, note: &str, version: &str) -> Result<(), SinkError> {
        self.kube_ref()?.patch(version, None, Some(note)).await
    }

    fn kube_ref(&self) -> Result<kubernetes::SecretRef<'_>, SinkError> {
        match (&self.spec, &self.kube) {
            (
                SinkSpec::KubernetesSecret {
                    namespace,
                    name,
                    key,
                },
                Some((access, client)),
            ) => Ok(kubernetes::SecretRef {
                client,
                access,
                namespace,
                name,
                key,
            }),
            _ => Err(SinkError::Kubernetes("no API server configured".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(
            SinkSpec::parse("file:/a/b").unwrap(),
            SinkSpec::File("/a/b".into())
        );
        assert_eq!(
            SinkSpec::parse("kubernetes-secret:aa/broker").unwrap(),
            SinkSpec::KubernetesSecret {
                namespace: "aa".into(),
                name: "broker".into(),
                key: "secret".into()
            }
        );
        assert_eq!(
            SinkSpec::parse("kubernetes-secret:aa/broker/entity-secret")
                .unwrap()
                .to_string(),
            "kubernetes-secret:aa/broker/entity-secret"
        );
        assert_eq!(
            SinkSpec::parse("exec:vault kv put x").unwrap(),
            SinkSpec::Exec("vault kv put x".into())
        );

        for bad in [
            "",
            "file:",
            "s3://x",
            "kubernetes-secret:",
            "kubernetes-secret:a",
            "kubernetes-secret:a/b/c/d",
            "kubernetes-secret:a/b c",
            "kubernetes-secret:../b",
            "kubernetes-secret:a/..",
            "kubernetes-secret:a/b/.",
            "exec: ",
            "exec:vault 'unclosed",
        ] {
            assert!(SinkSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
