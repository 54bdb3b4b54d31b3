//! Running the real binary: a clean environment, `serve` with its stderr collected, SIGTERM.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_aa-token-broker");

/// A command with none of the broker's variables inherited from the test's environment.
pub fn broker_command() -> Command {
    let mut command = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("AA_BROKER_") {
            command.env_remove(key);
        }
    }
    command.stdin(Stdio::null());
    command
}

/// No extra environment, for [`run`].
pub const NO_ENV: &[(&str, &str)] = &[];

/// Runs the binary to completion: exit code, stdout, stderr.
pub fn run<A, K, V>(args: &[A], env: &[(K, V)]) -> (i32, String, String)
where
    A: AsRef<OsStr>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let output = broker_command()
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A `serve` child process whose stderr is collected, and its listen address.
pub struct Served {
    pub child: Child,
    pub log: Arc<Mutex<String>>,
    pub addr: String,
}

pub fn spawn_serve(args: &[&str], env: &[(&str, &str)]) -> Served {
    let mut child = broker_command()
        .arg("serve")
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(at) = line.find("listen") {
                let rest = &line[at..];
                let value: String = rest
                    .trim_start_matches("listen")
                    .trim_start_matches(['=', '"', ':', ' '])
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect();
                if value.contains(':') {
                    let _ = tx.send(value);
                }
            }
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("serve logs its address");
    Served { child, log, addr }
}

pub fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub fn wait_exit(child: &mut Child, within: Duration) -> i32 {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
