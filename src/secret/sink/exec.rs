//! The `exec:` sink: the command run directly with the secret on stdin; exit status 0 means stored.
//!
//! No shell runs (the distroless image has none): the command is split into arguments the way a POSIX
//! shell splits words. The child gets this process's environment minus every `AA_BROKER_*` variable
//! (which may hold the entity secret or the admin password), runs in a process group of its own, and that
//! whole group is killed if it has not finished within the timeout ([`EXEC_TIMEOUT`] by default).

use std::process::Stdio;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::io::AsyncWriteExt;

use super::SinkError;
use crate::iam::error::sanitize_excerpt;

/// How long an `exec:` command may take.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// The program and its arguments, split the way a POSIX shell splits words (quotes and backslashes), or
/// `None` when the quoting is unbalanced or there is no program.
pub(super) fn argv(command: &str) -> Option<Vec<String>> {
    shlex::split(command).filter(|argv| !argv.is_empty())
}

/// The prefix of the variables that may carry the broker's own secrets; none reaches an `exec:` child.
const BROKER_ENV_PREFIX: &str = "AA_BROKER_";

pub(super) async fn run(
    command: &str,
    secret: &SecretString,
    timeout: Duration,
) -> Result<(), SinkError> {
    let argv = argv(command)
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
    use super::super::{SecretSink, SinkSpec};
    use super::*;

    #[test]
    fn commands_split_like_shell_words() {
        assert_eq!(
            argv(r#"vault kv put "secret/aa broker" value=-"#).unwrap(),
            ["vault", "kv", "put", "secret/aa broker", "value=-"]
        );
        assert_eq!(argv("vault 'unclosed"), None);
        assert_eq!(argv("   "), None);
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
