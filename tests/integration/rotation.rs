//! Secret rotation against the simulator: the safe order end to end, one rotator among processes sharing a
//! file, a failing sink that loses nothing, recovery by read-back without a reset, the grace period, and
//! the Kubernetes Secret sink against a stand-in API server that checks what it receives.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::kube::*;
use crate::common::process::*;
use crate::common::*;
use aa_token_broker::entity::{EntityId, SecretSource};
use aa_token_broker::iam::{Endpoint, IamClient, IamTimeouts};
use aa_token_broker::secret::policy::DEFAULT_MIN_RESET_INTERVAL;
use aa_token_broker::secret::sink::{KubeAccess, SecretSink};
use aa_token_broker::secret::{AdminCredentials, Role, RotationSettings, SinkSpec};
use base64::Engine;
use secrecy::SecretString;

const ADMIN: &str = "ops@fiu.example";
const PASSWORD: &str = "admin-password-never-logged";
const DAY: u64 = 86_400;

async fn iam_with_admin(secret_valid_days: u64) -> Iam {
    let iam = Iam::start(DAY).await;
    iam.sim
        .add_entity(ENTITY, SECRET, Duration::from_secs(secret_valid_days * DAY));
    iam.sim.add_user(ADMIN, PASSWORD, &[ENTITY]);
    // Grant the validity asked for (the 24 h admin-token cap is covered by the policy's unit tests).
    iam.sim
        .update_settings(|s| s.cap_secret_by_user_token = false);
    iam
}

fn rotation(check_interval: Duration) -> RotationSettings {
    RotationSettings {
        admin: AdminCredentials {
            email: ADMIN.into(),
            password: inline_secret(PASSWORD),
        },
        rotate_before: Duration::from_secs(15 * DAY),
        expiry_days: 180,
        check_interval,
        kube: None,
        min_reset_interval: DEFAULT_MIN_RESET_INTERVAL,
        // Reset records of sinks that are not files: a directory of this test's own.
        state_dir: std::env::temp_dir().join(format!("aa-broker-test-{:016x}", fastrand::u64(..))),
        role: Role::Primary,
        site: "test".into(),
    }
}

fn file_secret(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

#[tokio::test]
async fn a_secret_near_expiry_is_rotated_persisted_and_used() {
    let iam = iam_with_admin(10).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    write_secret(&path, SECRET);
    let mut options = BrokerOptions::one(SecretSource::File(path.clone()));
    options.rotation = Some(rotation(Duration::from_secs(3600)));
    let broker = TestBroker::start(&iam.url, options).await;

    eventually("the rotation", Duration::from_secs(10), async || {
        file_secret(&path) != SECRET
    })
    .await;
    let new_secret = iam.sim.current_secret(ENTITY).unwrap();
    assert_eq!(
        file_secret(&path),
        new_secret,
        "the file holds the IAM's new secret"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(iam.sim.calls(Endpoint::SecretReset), 1);

    // The old secret is dead (reset revokes it at once); the broker mints with the new one.
    let client = IamClient::new(&iam.url, IamTimeouts::default()).unwrap();
    let id = EntityId::parse(ENTITY).unwrap();
    assert!(
        client
            .entity_token(&id, &SecretString::from(SECRET))
            .await
            .err()
            .unwrap()
            .is_unauthorized()
    );
    broker.wait_ready(Duration::from_secs(5)).await;
    let refreshed = broker.post("/v1/token/refresh").await;
    assert_eq!(refreshed.status(), 200);

    let metrics = broker.metrics().await;
    assert!(
        metrics.contains(r#"aa_broker_secret_rotations_total{entity="FIU-TEST",outcome="ok"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("aa_broker_secret_last_rotation_timestamp_seconds{"),
        "{metrics}"
    );
    let left: f64 = metrics
        .lines()
        .find(|l| l.starts_with("aa_broker_secret_expires_in_seconds{"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!((left / DAY as f64 - 180.0).abs() < 0.1, "{left}");
    assert!(!metrics.contains(&new_secret) && !metrics.contains(SECRET));
    broker.stop().await;
}

#[tokio::test]
async fn two_brokers_on_one_secret_file_reset_once() {
    let iam = iam_with_admin(10).await;
    iam.sim.set_latency(Duration::from_millis(100));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    write_secret(&path, SECRET);
    let start = |path: &Path| {
        let mut options = BrokerOptions::one(SecretSource::File(path.to_path_buf()));
        options.rotation = Some(rotation(Duration::from_secs(3600)));
        options.policy.forced_refresh_interval = Duration::ZERO;
        TestBroker::start(&iam.url, options)
    };
    let (first, second) = tokio::join!(start(&path), start(&path));
    eventually("the rotation", Duration::from_secs(15), async || {
        file_secret(&path) != SECRET
    })
    .await;
    // Give the second broker time to take the lock and find nothing to do.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        iam.sim.calls(Endpoint::SecretReset),
        1,
        "exactly one of them reset the secret"
    );
    assert_eq!(file_secret(&path), iam.sim.current_secret(ENTITY).unwrap());
    for broker in [&first, &second] {
        let refreshed = broker.post("/v1/token/refresh").await;
        assert_eq!(refreshed.status(), 200, "both mint with the new secret");
        broker.wait_ready(Duration::from_secs(5)).await;
    }
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn a_failing_sink_loses_nothing_and_is_retried_until_it_works() {
    let iam = iam_with_admin(10).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    write_secret(&path, SECRET);
    let stored = dir.path().join("stored");
    let gate = dir.path().join("sink-is-up");
    let mut options = BrokerOptions::one(SecretSource::File(path.clone()));
    options.rotation = Some(rotation(Duration::from_secs(3600)));
    options.policy.forced_refresh_interval = Duration::ZERO;
    // Written to a side file and renamed, so the test never sees the file half-written.
    options.sink = Some(SinkSpec::Exec(format!(
        "sh -c 'test -e {gate} && cat > {stored}.part && mv {stored}.part {stored}'",
        gate = gate.display(),
        stored = stored.display()
    )));
    let broker = TestBroker::start(&iam.url, options).await;

    eventually("the reset", Duration::from_secs(10), async || {
        iam.sim.calls(Endpoint::SecretReset) == 1
    })
    .await;
    let new_secret = iam.sim.current_secret(ENTITY).unwrap();
    // Not stored: not ready, with the reason; but tokens still come, minted with the in-memory secret.
    let detail = eventually_some("not-ready", Duration::from_secs(5), async || {
        let (status, body) = broker.readyz().await;
        (status == 503).then(|| body["entities"][ENTITY].clone())
    })
    .await;
    assert!(
        detail["secretAlert"]
            .as_str()
            .unwrap()
            .contains("held only in memory"),
        "{detail}"
    );
    assert_eq!(detail["ready"], false);
    let refreshed = broker.post("/v1/token/refresh").await;
    assert_eq!(refreshed.status(), 200, "the new secret works from memory");
    let metrics = broker.metrics().await;
    assert!(
        metrics.contains(r#"aa_broker_secret_alert{entity="FIU-TEST"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"outcome="persist_failed"} 1"#),
        "{metrics}"
    );
    assert!(!stored.exists());

    // The sink comes back: the retry stores the very secret the IAM issued, and the entity is ready.
    std::fs::write(&gate, "").unwrap();
    eventually("the retried persist", Duration::from_secs(20), async || {
        stored.exists()
    })
    .await;
    assert_eq!(std::fs::read_to_string(&stored).unwrap(), new_secret);
    broker.wait_ready(Duration::from_secs(5)).await;
    assert_eq!(
        iam.sim.calls(Endpoint::SecretReset),
        1,
        "retrying the sink never reset again"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_stale_secret_file_is_healed_by_reading_back_not_by_resetting() {
    let iam = iam_with_admin(90).await;
    // The secret was reset elsewhere (or this process crashed between reset and persist).
    iam.sim.set_secret(ENTITY, "the-secret-the-iam-knows-now");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    write_secret(&path, SECRET);
    let mut options = BrokerOptions::one(SecretSource::File(path.clone()));
    options.rotation = Some(rotation(Duration::from_secs(3600)));
    let broker = TestBroker::start(&iam.url, options).await;

    broker.wait_ready(Duration::from_secs(10)).await;
    assert_eq!(file_secret(&path), "the-secret-the-iam-knows-now");
    assert_eq!(iam.sim.calls(Endpoint::SecretReset), 0, "no reset");
    assert!(iam.sim.calls(Endpoint::SecretRead) >= 1);
    assert_eq!(broker.get("/v1/token").await.status(), 200);
    // Healed once: by the first check that compared the store with the IAM, or by the read-back after the
    // IAM rejected the stale secret, whichever came first.
    let metrics = broker.metrics().await;
    assert_eq!(
        metric_sum(&metrics, "aa_broker_secret_convergences_total{"),
        1.0,
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"aa_broker_secret_store_diverged_seconds{entity="FIU-TEST"} 0"#),
        "{metrics}"
    );
    broker.stop().await;
}

/// The sum of every sample whose line starts with `prefix`.
pub fn metric_sum(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn the_grace_period_warning_means_rotate_now() {
    let iam = iam_with_admin(90).await;
    iam.sim.set_secret_expiry(ENTITY, -3600);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    write_secret(&path, SECRET);
    let mut options = BrokerOptions::one(SecretSource::File(path.clone()));
    options.rotation = Some(rotation(Duration::from_secs(3600)));
    let broker = TestBroker::start(&iam.url, options).await;
    eventually("the rotation", Duration::from_secs(10), async || {
        file_secret(&path) != SECRET
    })
    .await;
    assert_eq!(iam.sim.calls(Endpoint::SecretReset), 1);
    // The token minted after the switch carries no warning.
    eventually(
        "a ready entity out of grace",
        Duration::from_secs(5),
        async || {
            let (_, body) = broker.readyz().await;
            body["entities"][ENTITY]["secretInGrace"] == false && body["ready"] == true
        },
    )
    .await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rotate_command_writes_a_kubernetes_secret_and_resolves_a_conflict() {
    let iam = iam_with_admin(10).await;
    let api: Api = Arc::new(Mutex::new(FakeApiServer {
        resource_version: 7,
        race_next_patch: true,
        ..FakeApiServer::default()
    }));
    api.lock().unwrap().put_secret("secret", SECRET);
    let api_url = start_api_server(Arc::clone(&api)).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{KUBE_TOKEN}\n")).unwrap();
    let password_file = dir.path().join("password");
    write_secret(&password_file, PASSWORD);
    let state_dir = dir.path().join("state");
    let args: Vec<String> = [
        "rotate",
        "--iam-url",
        &iam.url,
        "--entity-id",
        ENTITY,
        "--admin-email",
        ADMIN,
        "--admin-password-file",
        password_file.to_str().unwrap(),
        "--secret-sink",
        "kubernetes-secret:aa/broker",
        "--kube-api-url",
        &api_url,
        "--kube-token-file",
        token_file.to_str().unwrap(),
        "--state-dir",
        state_dir.to_str().unwrap(),
        "--site",
        "test-site",
        "--log-level",
        "debug",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || run(&args, NO_ENV))
        .await
        .unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("rotated"), "{stdout}");
    let new_secret = iam.sim.current_secret(ENTITY).unwrap();
    let api = api.lock().unwrap();
    let stored = base64::engine::general_purpose::STANDARD
        .decode(api.data["secret"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(stored).unwrap(),
        new_secret,
        "the Secret holds the IAM's current secret"
    );
    assert!(
        api.log.ends_with(&[
            "PATCH".to_string(),
            "409".into(),
            "GET".into(),
            "PATCH".into()
        ]),
        "a conflict, resolved by re-reading: {:?}",
        api.log
    );
    assert_eq!(api.log.iter().filter(|l| *l == "409").count(), 1);
    assert_eq!(iam.sim.calls(Endpoint::SecretReset), 1);
    // The record of the reset is on the Secret, with the new secret's fingerprint; no state directory.
    let record = api.reset_record().expect("a reset record annotation");
    assert_eq!(record["site"], "test-site");
    assert!(record["secret"].as_str().unwrap().starts_with("sha256:"));
    assert!(!state_dir.exists(), "nothing written outside the Secret");
    for leaked in [PASSWORD, SECRET, new_secret.as_str(), KUBE_TOKEN] {
        assert!(
            !stdout.contains(leaked) && !stderr.contains(leaked),
            "leaked in output:\n{stdout}\n{stderr}"
        );
    }
}

/// The API server's answer is read up to a cap (a Secret holds at most 1 MiB): a Secret answer of 3 MiB
/// is refused, not read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_kubernetes_answer_is_refused() {
    let api: Api = Arc::new(Mutex::new(FakeApiServer::default()));
    {
        let mut api = api.lock().unwrap();
        api.put_secret("secret", SECRET);
        api.annotations
            .insert("padding".into(), "x".repeat(3 << 20).into());
    }
    let api_url = start_api_server(Arc::clone(&api)).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, KUBE_TOKEN).unwrap();
    let access = KubeAccess {
        api_url,
        token_file,
        ca_file: None,
    };
    let spec = SinkSpec::parse("kubernetes-secret:aa/broker").unwrap();
    let sink = SecretSink::new(spec, Some(&access)).unwrap();
    let Err(error) = sink.read().await else {
        panic!("a 3 MiB answer was read");
    };
    let error = error.to_string();
    assert!(
        error.contains("GET aa/broker: the answer is larger than"),
        "{error}"
    );
    assert_eq!(api.lock().unwrap().log, ["GET"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_commands_read_reset_and_decline_when_not_due() {
    let iam = iam_with_admin(90).await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    write_secret(&secret_file, SECRET);
    let base = |command: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = command.iter().map(|s| s.to_string()).collect();
        args.extend(
            [
                "--iam-url",
                &iam.url,
                "--entity-id",
                ENTITY,
                "--admin-email",
                ADMIN,
                "--secret-file",
                secret_file.to_str().unwrap(),
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        args
    };
    let env = vec![("AA_BROKER_ADMIN_PASSWORD", PASSWORD.to_string())];
    let cli = |args: Vec<String>, env: Vec<(&'static str, String)>| {
        tokio::task::spawn_blocking(move || run(&args, &env))
    };

    let (code, stdout, stderr) = cli(base(&["secret", "read"]), env.clone()).await.unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("days from now") && !stdout.contains(SECRET),
        "{stdout}"
    );

    let (code, stdout, _) = cli(base(&["secret", "read", "--show-secret"]), env.clone())
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), SECRET);

    let out = dir.path().join("copy");
    let mut args = base(&["secret", "read"]);
    args.extend(["--output".to_string(), out.to_str().unwrap().to_string()]);
    let (code, stdout, _) = cli(args, env.clone()).await.unwrap();
    assert_eq!(code, 0);
    assert_eq!(file_secret(&out), SECRET);
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!stdout.contains(SECRET));

    let (code, stdout, _) = cli(base(&["rotate"]), env.clone()).await.unwrap();
    assert_eq!(code, 0);
    assert!(stdout.contains("not due"), "{stdout}");
    assert_eq!(iam.sim.calls(Endpoint::SecretReset), 0);

    let mut args = base(&["secret", "reset"]);
    args.extend(["--expiry-days".to_string(), "30".to_string()]);
    let (code, stdout, stderr) = cli(args, env.clone()).await.unwrap();
    assert_eq!(code, 0, "{stderr}");
    let new_secret = iam.sim.current_secret(ENTITY).unwrap();
    assert_eq!(
        file_secret(&secret_file),
        new_secret,
        "stored before anything was printed"
    );
    assert!(
        stdout.contains("secret reset") && stdout.contains("days from now"),
        "{stdout}"
    );
    assert!(!stdout.contains(&new_secret) && !stderr.contains(&new_secret));
    assert!(!stderr.contains(PASSWORD));

    // A wrong password: exit 1 with one line, and the password nowhere.
    let (code, stdout, stderr) = cli(
        base(&["secret", "read"]),
        vec![("AA_BROKER_ADMIN_PASSWORD", "not-the-password".into())],
    )
    .await
    .unwrap();
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("Invalid username/password") && !stderr.contains("not-the-password"),
        "{stderr}"
    );

    // Configuration mistakes: exit 2, naming the setting.
    let (code, _, stderr) = cli(base(&["secret", "read"]), vec![]).await.unwrap();
    assert_eq!(code, 2);
    assert!(stderr.contains("--admin-password-file"), "{stderr}");
    let mut args = base(&["rotate"]);
    args.extend(["--secret-sink".to_string(), "s3://bucket".to_string()]);
    let (code, _, stderr) = cli(args, env.clone()).await.unwrap();
    assert_eq!(code, 2);
    assert!(stderr.contains("--secret-sink"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_rotates_and_its_log_holds_no_secret_or_password() {
    let iam = iam_with_admin(10).await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    write_secret(&secret_file, SECRET);
    let password_file = dir.path().join("password");
    write_secret(&password_file, PASSWORD);
    let (url, secret_path, password_path) = (
        iam.url.clone(),
        secret_file.to_str().unwrap().to_string(),
        password_file.to_str().unwrap().to_string(),
    );
    let served = tokio::task::spawn_blocking(move || {
        spawn_serve(
            &["--listen", "127.0.0.1:0", "--log-format", "json"],
            &[
                ("AA_BROKER_IAM_URL", url.as_str()),
                ("AA_BROKER_ENTITY_ID", ENTITY),
                ("AA_BROKER_SECRET_FILE", secret_path.as_str()),
                ("AA_BROKER_ADMIN_EMAIL", ADMIN),
                ("AA_BROKER_ADMIN_PASSWORD_FILE", password_path.as_str()),
                ("AA_BROKER_LOG", "debug"),
            ],
        )
    })
    .await
    .unwrap();
    eventually("the rotation", Duration::from_secs(15), async || {
        file_secret(&secret_file) != SECRET
    })
    .await;
    let new_secret = iam.sim.current_secret(ENTITY).unwrap();
    let client = http_client();
    let token = client
        .get(format!("http://{}/v1/token", served.addr))
        .guarded()
        .header("Accept", "text/plain")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut child = served.child;
    terminate(&child);
    let code = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(code, 0);
    let log = served.log.lock().unwrap().clone();
    for step in [
        "\"step\":\"reset\"",
        "\"step\":\"persist\"",
        "\"step\":\"verify\"",
    ] {
        assert!(log.contains(step), "no {step} line:\n{log}");
    }
    assert!(log.contains("txn_id"), "{log}");
    for leaked in [SECRET, new_secret.as_str(), PASSWORD, token.as_str()] {
        assert!(
            !log.contains(leaked),
            "the log leaked a secret, password or token:\n{log}"
        );
    }
}
