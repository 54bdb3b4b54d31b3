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

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::AsyncWriteExt;

use crate::iam::error::sanitize_excerpt;

/// The in-cluster service account files.
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub const SERVICE_ACCOUNT_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// The key written when a `kubernetes-secret:` sink names none.
pub const DEFAULT_SECRET_KEY: &str = "secret";
/// How long an `exec:` command may take.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

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
    pub fn parse(raw: &str) -> Result<SinkSpec, String> {
        let raw = raw.trim();
        if let Some(path) = raw.strip_prefix("file:") {
            if path.is_empty() {
                return Err("file: needs a path".into());
            }
            return Ok(SinkSpec::File(PathBuf::from(path)));
        }
        if let Some(rest) = raw.strip_prefix("kubernetes-secret:") {
            let parts: Vec<&str> = rest.split('/').collect();
            let valid = |s: &str| {
                !s.is_empty()
                    && s.len() <= 253
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
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
                _ => Err("expected kubernetes-secret:NAMESPACE/NAME[/KEY]".into()),
            };
        }
        if let Some(command) = raw.strip_prefix("exec:") {
            if command.trim().is_empty() {
                return Err("exec: needs a command".into());
            }
            if exec_argv(command).is_none() {
                return Err(
                    "exec: the command has an unclosed quote or escape (it is split like a shell would, but no shell runs)"
                        .into(),
                );
            }
            return Ok(SinkSpec::Exec(command.to_string()));
        }
        Err("expected file:PATH, kubernetes-secret:NAMESPACE/NAME[/KEY] or exec:COMMAND".into())
    }
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
    pub fn new(spec: SinkSpec, kube: Option<&KubeAccess>) -> Result<SecretSink, String> {
        let kube = match (&spec, kube) {
            (SinkSpec::KubernetesSecret { .. }, Some(access)) => {
                crate::install_crypto_provider();
                let mut builder = reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(Duration::from_secs(15))
                    .redirect(reqwest::redirect::Policy::none());
                if let Some(ca) = &access.ca_file {
                    let pem = std::fs::read(ca).map_err(|e| {
                        format!("cannot read the CA file {}: {}", ca.display(), e.kind())
                    })?;
                    let certs = reqwest::Certificate::from_pem_bundle(&pem)
                        .map_err(|e| format!("the CA file {} is not PEM: {e}", ca.display()))?;
                    builder = builder.tls_certs_only(certs);
                }
                let client = builder
                    .build()
                    .map_err(|e| format!("cannot build the Kubernetes client: {e}"))?;
                Some((access.clone(), client))
            }
            (SinkSpec::KubernetesSecret { .. }, None) => {
                return Err(
                    "a kubernetes-secret sink needs the API server (not running in a pod?)".into(),
                );
            }
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
        match &self.spec {
            SinkSpec::File(path) => {
                let path = path.clone();
                let value = SecretString::from(secret.expose_secret());
                tokio::task::spawn_blocking(move || write_atomically(&path, &value))
                    .await
                    .map_err(|e| SinkError::File {
                        path: PathBuf::new(),
                        reason: e.to_string(),
                    })?
            }
            SinkSpec::KubernetesSecret {
                namespace,
                name,
                key,
            } => {
                let Some((access, client)) = &self.kube else {
                    return Err(SinkError::Kubernetes("no API server configured".into()));
                };
                patch_kubernetes_secret(client, access, namespace, name, key, secret).await
            }
            SinkSpec::Exec(command) => run_exec(command, secret, self.exec_timeout).await,
        }
    }
}

/// Writes `secret` (and a newline) to `path` atomically with mode 0600: a reader sees the old content or
/// the new, never a mix, and after success the new content survives a crash.
pub fn write_atomically(path: &Path, secret: &SecretString) -> Result<(), SinkError> {
    let fail = |reason: String| SinkError::File {
        path: path.to_path_buf(),
        reason,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| fail("the path has no file name".into()))?;
    let temp = dir.join(format!(
        ".{}.tmp-{}-{:08x}",
        name.to_string_lossy(),
        std::process::id(),
        fastrand::u32(..)
    ));
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(secret.expose_secret().as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, path)?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(fail(e.to_string()));
    }
    Ok(())
}

async fn patch_kubernetes_secret(
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
            e.kind()
        ))
    })?;
    let token = token.trim();
    let url = format!(
        "{}/api/v1/namespaces/{namespace}/secrets/{name}",
        access.api_url.trim_end_matches('/')
    );
    let current = client
        .get(&url)
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
        .patch(&url)
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

/// The program and its arguments, split the way a POSIX shell splits words (quotes and backslashes), or
/// `None` when the quoting is unbalanced or there is no program.
fn exec_argv(command: &str) -> Option<Vec<String>> {
    shlex::split(command).filter(|argv| !argv.is_empty())
}

/// The prefix of the variables that may carry the broker's own secrets; none reaches an `exec:` child.
const BROKER_ENV_PREFIX: &str = "AA_BROKER_";

async fn run_exec(
    command: &str,
    secret: &SecretString,
    timeout: Duration,
) -> Result<(), SinkError> {
    let argv = exec_argv(command)
        .ok_or_else(|| SinkError::Exec("the command cannot be split into arguments".into()))?;
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .envs(
            std::env::vars_os()
                .filter(|(name, _)| !name.to_string_lossy().starts_with(BROKER_ENV_PREFIX)),
        )
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| SinkError::Exec(format!("cannot start {}: {e}", argv[0])))?;
    let group = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .and_then(rustix::process::Pid::from_raw);
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| SinkError::Exec("no stdin".into()))?;
    let write = async {
        stdin.write_all(secret.expose_secret().as_bytes()).await?;
        stdin.shutdown().await
    };
    // A command that does not read its stdin makes the write fail with a broken pipe; its exit status
    // still decides.
    let _ = tokio::time::timeout(timeout, write).await;
    drop(stdin);
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(waited) => waited.map_err(|e| SinkError::Exec(e.to_string()))?,
        Err(_) => {
            // The command and everything it started: a helper left running could hold the secret.
            if let Some(group) = group {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
            return Err(SinkError::Exec(format!(
                "the command did not finish within {:.1}s; its process group was killed",
                timeout.as_secs_f64()
            )));
        }
    };
    if output.status.success() {
        return Ok(());
    }
    let stderr = sanitize_excerpt(&output.stderr, &[secret.expose_secret()]).unwrap_or_default();
    Err(SinkError::Exec(format!(
        "the command exited with {}: {stderr}",
        output.status
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
        assert_eq!(
            exec_argv(r#"vault kv put "secret/aa broker" value=-"#).unwrap(),
            ["vault", "kv", "put", "secret/aa broker", "value=-"]
        );
        for bad in [
            "",
            "file:",
            "s3://x",
            "kubernetes-secret:",
            "kubernetes-secret:a",
            "kubernetes-secret:a/b/c/d",
            "kubernetes-secret:a/b c",
            "exec: ",
            "exec:vault 'unclosed",
        ] {
            assert!(SinkSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn atomic_write_is_0600_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "old").unwrap();
        write_atomically(&path, &SecretString::from("new-secret")).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new-secret\n");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left behind"
        );
        let missing = dir.path().join("no-such-dir").join("secret");
        assert!(matches!(
            write_atomically(&missing, &SecretString::from("x")),
            Err(SinkError::File { .. })
        ));
    }

    #[tokio::test]
    async fn a_full_disk_is_a_failed_persist() {
        let sink = SecretSink::new(SinkSpec::Exec("sh -c 'cat > /dev/full'".into()), None).unwrap();
        let error = sink
            .persist(&SecretString::from("disk-full-secret"))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("exited with"), "{error}");
        assert!(!error.contains("disk-full-secret"));
    }

    #[tokio::test]
    async fn exec_sink_runs_without_a_shell_feeds_stdin_and_reports_failure() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out file");
        // `tee` writes stdin to the file named by one argument with a space in it: no shell involved.
        let sink =
            SecretSink::new(SinkSpec::Exec(format!("tee '{}'", out.display())), None).unwrap();
        sink.persist(&SecretString::from("piped-secret"))
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "piped-secret");
        // Shell syntax is not interpreted: `>` is just an argument to `cat`, which fails.
        let no_shell = SecretSink::new(
            SinkSpec::Exec(format!("cat > {}", dir.path().join("x").display())),
            None,
        )
        .unwrap();
        assert!(no_shell.persist(&SecretString::from("s")).await.is_err());
        assert!(!dir.path().join("x").exists());
        let failing = SecretSink::new(
            SinkSpec::Exec("sh -c 'cat >/dev/null; echo piped-secret >&2; exit 3'".into()),
            None,
        )
        .unwrap();
        let error = failing
            .persist(&SecretString::from("piped-secret"))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("exit status: 3"), "{error}");
        assert!(!error.contains("piped-secret"), "{error}");
    }

    #[tokio::test]
    async fn a_command_that_overruns_is_killed_with_everything_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let sink = SecretSink::new(
            SinkSpec::Exec(format!(
                "sh -c 'cat >/dev/null; sleep 30 & echo $! > {}; wait'",
                pid_file.display()
            )),
            None,
        )
        .unwrap()
        .with_exec_timeout(Duration::from_millis(500));
        let error = sink
            .persist(&SecretString::from("s"))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("process group was killed"), "{error}");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild (`sleep 30`) is gone too: no process, or a zombie nobody has reaped yet.
        let mut gone = false;
        for _ in 0..50 {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let running = state
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'));
            if !running {
                gone = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(gone, "the background child {pid} survived");
    }
}
