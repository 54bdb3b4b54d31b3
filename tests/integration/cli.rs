//! The binary as an operator runs it: configuration mistakes exit 2 with one line, `token` prints a token,
//! `serve` logs nothing secret and drains on SIGTERM, and a TOML file can list several entities.

use std::path::Path;
use std::time::Duration;

use crate::common::process::*;
use crate::common::*;
use aa_token_broker::simulator::FaultKind;

fn assert_config_error(args: &[&str], env: &[(&str, &str)], names: &str) {
    let (code, stdout, stderr) = run(args, env);
    assert_eq!(code, 2, "{args:?}: {stderr}");
    assert!(stdout.is_empty(), "{args:?}: {stdout}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {stderr}"
    );
    assert!(
        stderr.contains(names),
        "{args:?}: does not name {names}: {stderr}"
    );
}

/// The table of mistakes runs in process (`config::tests`); here, the process: exit code 2, one line,
/// nothing on stdout — for a mistake the broker finds, and for one clap finds.
#[test]
fn configuration_mistakes_exit_2_with_one_line_naming_the_setting() {
    assert_config_error(
        &["serve", "--iam-url", "http://127.0.0.1:9/iam"],
        &[],
        "--entity-id",
    );
    assert_config_error(&["serve", "--no-such-flag"], &[], "--no-such-flag");
}

#[test]
fn help_and_version_exit_0() {
    let (code, stdout, _) = run(&["--help"], NO_ENV);
    assert_eq!(code, 0);
    for sub in ["serve", "token", "iam-simulator", "demo"] {
        assert!(stdout.contains(sub), "{sub} missing from help");
    }
    let (code, stdout, _) = run(&["--version"], NO_ENV);
    assert_eq!(code, 0);
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn the_token_subcommand_prints_one_token_or_one_reason() {
    let iam = Iam::start(86_400).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    write_secret(&secret, SECRET);
    let token_command = || {
        let (url, secret_path) = (iam.url.clone(), secret.to_str().unwrap().to_string());
        tokio::task::spawn_blocking(move || {
            let args = [
                "token",
                "--iam-url",
                &url,
                "--entity-id",
                ENTITY,
                "--secret-file",
                &secret_path,
            ];
            run(&args, NO_ENV)
        })
    };
    let (code, stdout, stderr) = token_command().await.unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 1);
    let token = stdout.trim();
    aa_token_broker::simulator::jwt::verify_with_jwks(token, &iam.sim.jwks())
        .expect("a real token");

    write_secret(&secret, "wrong-secret-value");
    let (code, stdout, stderr) = token_command().await.unwrap();
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("HTTP 401"), "{stderr}");
    assert!(!stderr.contains("wrong-secret-value"));
}

fn assert_clean_log(log: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !log.contains(secret),
            "the log contains a secret or token:\n{log}"
        );
    }
    // No whole JWT either: a token's first two segments never appear together.
    assert!(
        !log.contains("eyJhbGciOi"),
        "the log contains a JWT:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_nothing_secret_and_drains_on_sigterm() {
    let iam = Iam::start(86_400).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    write_secret(&secret, SECRET);
    // The IAM echoes the secret back in an error, as a broken or hostile gateway might.
    iam.sim.inject_token_fault(
        FaultKind::Status {
            status: 401,
            retry_after_secs: None,
            body: Some(format!(r#"{{"errorCode":"Unauthorized","errorMsg":"secret {SECRET} rejected","txnId":"t"}}"#)),
        },
        Some(1),
    );
    for format in ["text", "json"] {
        let url = iam.url.clone();
        let secret_path = secret.to_str().unwrap().to_string();
        let format_owned = format.to_string();
        let served = tokio::task::spawn_blocking(move || {
            spawn_serve(
                &["--listen", "127.0.0.1:0", "--log-format", &format_owned],
                &[
                    ("AA_BROKER_IAM_URL", url.as_str()),
                    ("AA_BROKER_ENTITY_ID", ENTITY),
                    ("AA_BROKER_SECRET_FILE", secret_path.as_str()),
                    ("AA_BROKER_LOG", "debug"),
                ],
            )
        })
        .await
        .unwrap();
        let client = http_client();
        let base = format!("http://{}", served.addr);
        // The first fetch may have hit the injected 401; wait for a token.
        let token = eventually_some(
            "a token from the child broker",
            Duration::from_secs(10),
            async || {
                let response = client
                    .get(format!("{base}/v1/token"))
                    .guarded()
                    .send()
                    .await
                    .unwrap();
                if response.status() != 200 {
                    return None;
                }
                let body: serde_json::Value = response.json().await.unwrap();
                body["accessToken"].as_str().map(str::to_string)
            },
        )
        .await;
        // Read only so that whatever /metrics logs is in the output searched below.
        let _ = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();

        // SIGTERM while a forced refresh waits on a slow IAM: the request completes with the new token,
        // then the process exits 0.
        iam.sim.set_latency(Duration::from_millis(1500));
        let slow = {
            let client = client.clone();
            let base = base.clone();
            tokio::spawn(async move {
                client
                    .post(format!("{base}/v1/token/{ENTITY}/refresh"))
                    .guarded()
                    .send()
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut child = served.child;
        terminate(&child);
        let code =
            tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
                .await
                .unwrap();
        assert_eq!(code, 0, "serve exits 0 on SIGTERM");
        let in_flight = slow
            .await
            .unwrap()
            .expect("the request in flight was answered");
        assert_eq!(in_flight.status(), 200);
        let second = in_flight.json::<serde_json::Value>().await.unwrap()["accessToken"]
            .as_str()
            .unwrap()
            .to_string();
        assert_ne!(second, token);
        iam.sim.set_latency(Duration::ZERO);

        let log = served.log.lock().unwrap().clone();
        assert!(log.contains("shutdown signal received"), "{log}");
        assert!(log.contains("stopped"), "{log}");
        assert_clean_log(&log, &[SECRET, &token, &second]);
        if format == "json" {
            for line in log.lines() {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_can_list_several_entities() {
    let iam = Iam::start(86_400).await;
    iam.sim.add_entity(
        "FIU-OTHER",
        "other-secret",
        Duration::from_secs(86_400 * 30),
    );
    let dir = tempfile::tempdir().unwrap();
    write_secret(&dir.path().join("one"), SECRET);
    write_secret(&dir.path().join("two"), "other-secret");
    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "iam_url = \"{}\"\nlisten = \"127.0.0.1:0\"\n\n[[entities]]\nid = \"{ENTITY}\"\nsecret_file = \"{}\"\n\n[[entities]]\nid = \"FIU-OTHER\"\nsecret_file = \"{}\"\n",
            iam.url,
            path_str(&dir.path().join("one")),
            path_str(&dir.path().join("two")),
        ),
    )
    .unwrap();
    let config = path_str(&config);
    let served = tokio::task::spawn_blocking(move || spawn_serve(&["--config", &config], &[]))
        .await
        .unwrap();
    let client = http_client();
    let base = format!("http://{}", served.addr);
    eventually(
        "the child broker ready",
        Duration::from_secs(10),
        async || {
            let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
            ready.status() == 200
        },
    )
    .await;
    let ambiguous = client
        .get(format!("{base}/v1/token"))
        .guarded()
        .send()
        .await
        .unwrap();
    assert_eq!(ambiguous.status(), 400);
    for id in [ENTITY, "FIU-OTHER"] {
        let body: serde_json::Value = client
            .get(format!("{base}/v1/token/{id}"))
            .guarded()
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["entityId"], id);
    }
    let mut child = served.child;
    terminate(&child);
    let code = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert_clean_log(&served.log.lock().unwrap(), &[SECRET, "other-secret"]);
}

fn path_str(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_probes_and_the_admin_listener() {
    let iam = Iam::start(86_400).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    write_secret(&secret, SECRET);

    // Nothing listening: exit 1 with one line.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let probe = free.clone();
    let (code, _, stderr) =
        tokio::task::spawn_blocking(move || run(&["healthcheck", "--listen", &probe], NO_ENV))
            .await
            .unwrap();
    assert_eq!(code, 1);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");

    // A token is not minted yet (the IAM is slow): not ready, but alive; --wait holds until ready.
    iam.sim.set_latency(Duration::from_millis(1500));
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let (url, secret_path, admin_addr) = (
        iam.url.clone(),
        secret.to_str().unwrap().to_string(),
        admin.clone(),
    );
    let served = tokio::task::spawn_blocking(move || {
        spawn_serve(
            &["--listen", "127.0.0.1:0", "--admin-listen", &admin_addr],
            &[
                ("AA_BROKER_IAM_URL", url.as_str()),
                ("AA_BROKER_ENTITY_ID", ENTITY),
                ("AA_BROKER_SECRET_FILE", secret_path.as_str()),
            ],
        )
    })
    .await
    .unwrap();
    let addr = served.addr.clone();
    let probe = addr.clone();
    let (live, ready_now) = tokio::task::spawn_blocking(move || {
        (
            run(&["healthcheck", "--listen", &probe, "--live"], NO_ENV).0,
            run(&["healthcheck", "--listen", &probe], NO_ENV).0,
        )
    })
    .await
    .unwrap();
    assert_eq!(live, 0, "alive while the first fetch is in flight");
    assert_eq!(ready_now, 1, "not ready before a token exists");
    let probe = addr.clone();
    let (waited, _, stderr) = tokio::task::spawn_blocking(move || {
        run(&["healthcheck", "--listen", &probe, "--wait", "10"], NO_ENV)
    })
    .await
    .unwrap();
    assert_eq!(waited, 0, "{stderr}");

    // The admin listener serves health, readiness and metrics, and never a token.
    let client = http_client();
    assert_eq!(
        client
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = client
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("aa_broker_token_valid"));
    let token = client
        .get(format!("http://{admin}/v1/token"))
        .guarded()
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), 404);

    let mut child = served.child;
    terminate(&child);
    let code = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(code, 0);
}

#[tokio::test]
async fn token_check_reports_without_printing_the_token() {
    let iam = Iam::start(86_400).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    write_secret(&secret, SECRET);
    let (url, secret_path) = (iam.url.clone(), secret.to_str().unwrap().to_string());
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run(
            &[
                "token",
                "--check",
                "--iam-url",
                &url,
                "--entity-id",
                ENTITY,
                "--secret-file",
                &secret_path,
            ],
            NO_ENV,
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("a token was minted") && stdout.contains("86400 s"),
        "{stdout}"
    );
    assert!(!stdout.contains("eyJ"), "{stdout}");
}

/// The runbook's first step for `unauthorized`: a secret that is wrong from the start is fingerprinted in
/// the log and in `/readyz`, and `secret fingerprint` computes the same value from the file or stdin, so
/// the mounted secret can be compared with the expected one without printing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_fingerprinted_at_start_and_the_command_computes_the_same() {
    let iam = Iam::start(86_400).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    let wrong = "not-the-registered-secret";
    write_secret(&secret, &format!("  {wrong}\n"));
    let (url, secret_path) = (iam.url.clone(), path_str(&secret));
    let served = tokio::task::spawn_blocking(move || {
        spawn_serve(
            &["--listen", "127.0.0.1:0", "--log-format", "json"],
            &[
                ("AA_BROKER_IAM_URL", url.as_str()),
                ("AA_BROKER_ENTITY_ID", ENTITY),
                ("AA_BROKER_SECRET_FILE", secret_path.as_str()),
            ],
        )
    })
    .await
    .unwrap();
    let client = http_client();
    let readyz = format!("http://{}/readyz", served.addr);
    let entity = eventually_some(
        "readyz shows the failure",
        Duration::from_secs(10),
        async || {
            let body: serde_json::Value =
                client.get(&readyz).send().await.ok()?.json().await.ok()?;
            let entity = body["entities"][ENTITY].clone();
            entity["lastError"].is_string().then_some(entity)
        },
    )
    .await;
    let shown = entity["secretFingerprint"]
        .as_str()
        .expect("a fingerprint")
        .to_string();
    assert!(shown.starts_with("sha256:") && shown.len() == 15, "{shown}");
    assert!(
        entity["lastError"].as_str().unwrap().contains("401"),
        "{entity}"
    );
    let mut child = served.child;
    terminate(&child);
    tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
        .await
        .unwrap();
    let log = served.log.lock().unwrap().clone();
    let line = log
        .lines()
        .find(|l| l.contains("entity secret read"))
        .unwrap_or_else(|| panic!("no 'entity secret read' line: {log}"));
    assert!(line.contains(&shown), "{line}");
    assert_clean_log(&log, &[wrong]);

    // From the file, and from stdin as `kubectl get secret … | base64 -d` gives it.
    let (code, stdout, stderr) = run(&["secret", "fingerprint", &path_str(&secret)], NO_ENV);
    assert_eq!((code, stdout.trim()), (0, shown.as_str()), "{stderr}");
    let output = broker_command()
        .args(["secret", "fingerprint", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(wrong.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), shown);
    // The registered secret has another; a missing file says so.
    let right = dir.path().join("right");
    write_secret(&right, SECRET);
    let (_, other, _) = run(&["secret", "fingerprint", &path_str(&right)], NO_ENV);
    assert_ne!(other.trim(), shown);
    let (code, stdout, stderr) = run(&["secret", "fingerprint", "/no/such/secret"], NO_ENV);
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("/no/such/secret cannot be read: no such file"),
        "{stderr}"
    );
}

/// One instant, one time: the expiry `/readyz` shows (from the token's zoneless `secret-expiry-ts`) and the
/// one `secret read` prints (from the IAM's `expiresOn`, epoch milliseconds) are the same, with the
/// simulator writing its zoneless times as the IAM does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_secret_read_report_the_same_secret_expiry() {
    let iam = Iam::start(86_400).await;
    iam.sim
        .add_user("ops@fiu.example", "admin-password", &[ENTITY]);
    let broker = TestBroker::start(&iam.url, BrokerOptions::inline()).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    let (_, body) = broker.readyz().await;
    let shown = body["entities"][ENTITY]["secretExpiresAt"]
        .as_str()
        .expect("an expiry in /readyz")
        .to_string();
    broker.stop().await;
    let args: Vec<String> = [
        "secret",
        "read",
        "--iam-url",
        iam.url.as_str(),
        "--entity-id",
        ENTITY,
        "--admin-email",
        "ops@fiu.example",
    ]
    .map(str::to_string)
    .to_vec();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run(&args, &[("AA_BROKER_ADMIN_PASSWORD", "admin-password")])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("expires {shown} (")),
        "secret read: {stdout} /readyz: {shown}"
    );
}
