//! The broker never hurts the entity, whatever the IAM answers and however callers behave: absurd but
//! well-formed values, `expiresOn` in seconds, expiries that cannot be right, a rejected admin password,
//! `Retry-After`, clients that never read, DNS rebinding, echoed secrets. Each test is one finding of the
//! review that asked for these guarantees, reproduced against the simulator over loopback.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::process::*;
use crate::common::*;
use aa_token_broker::entity::{EntityId, SecretSource};
use aa_token_broker::http::server::ServerLimits;
use aa_token_broker::iam::{Endpoint, IamClient, IamTimeouts};
use aa_token_broker::secret::policy::DEFAULT_MIN_RESET_INTERVAL;
use aa_token_broker::secret::sink::SecretSink;
use aa_token_broker::secret::{
    AdminCredentials, AdminSession, NoRecorder, ResetBound, Role, RotationSettings, Rotator,
    SinkSpec,
};
use aa_token_broker::simulator::{EpochUnit, FaultKind};
use aa_token_broker::token::policy::RefreshPolicy;
use serde_json::{Map, Value, json};

const ADMIN: &str = "ops@fiu.example";
const PASSWORD: &str = "admin-password-never-logged";
const DAY: u64 = 86_400;
/// The longest a token may be handed out, whatever the IAM says (`token::MAX_TOKEN_LIFETIME`).
const CEILING_SECS: u64 = 48 * 3600;

async fn iam_with_admin(secret_valid_days: u64) -> Iam {
    let iam = Iam::start(DAY).await;
    iam.sim
        .add_entity(ENTITY, SECRET, Duration::from_secs(secret_valid_days * DAY));
    iam.sim.add_user(ADMIN, PASSWORD, &[ENTITY]);
    iam.sim
        .update_settings(|s| s.cap_secret_by_user_token = false);
    iam
}

fn rotation(password: SecretSource, state_dir: &std::path::Path) -> RotationSettings {
    RotationSettings {
        admin: AdminCredentials {
            email: ADMIN.into(),
            password,
        },
        rotate_before: Duration::from_secs(15 * DAY),
        expiry_days: 180,
        check_interval: Duration::from_secs(1),
        kube: None,
        min_reset_interval: DEFAULT_MIN_RESET_INTERVAL,
        state_dir: state_dir.to_path_buf(),
        role: Role::Primary,
        site: "test".into(),
    }
}

fn patch(body: Value, claims: Value) -> FaultKind {
    let object = |v: Value| match v {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    FaultKind::Patch {
        body: object(body),
        claims: object(claims),
    }
}

fn metric(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn absurd_token_answers_never_crash_the_broker_nor_outlive_their_limits() {
    let iam = Iam::start(DAY).await;
    let mut options = BrokerOptions::inline();
    options.policy = RefreshPolicy {
        forced_refresh_interval: Duration::ZERO,
        cold_attempt_interval: Duration::ZERO,
        ..RefreshPolicy::default()
    };
    let broker = TestBroker::start(&iam.url, options).await;
    broker.wait_ready(Duration::from_secs(5)).await;
    let now = now_secs() as i64;
    let numbers = [
        json!(1e12),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(-1),
        json!(0),
        json!(1.5),
        json!("86400"),
        json!(1e300),
        json!(null),
        json!("soon"),
        json!([1]),
        json!(now),
        json!(now + 3600),
        json!(now + 1_000_000_000),
        json!(now - 3600),
    ];
    let stamps = [
        json!("1969-12-31T00:00:00"),
        json!("9999-12-31T23:59:59"),
        json!("0000-01-01T00:00:00"),
        json!("2024-02-30T00:00:00"),
        json!("2026-01-01T00:00:00+99:99"),
        json!(12345),
        json!(null),
        json!("garbage"),
    ];
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for case in 0..150 {
        let mut body = Map::new();
        let mut claims = Map::new();
        if rng.bool() {
            body.insert(
                "expiresIn".into(),
                numbers[rng.usize(..numbers.len())].clone(),
            );
        }
        for claim in ["exp", "iat"] {
            if rng.bool() {
                claims.insert(claim.into(), numbers[rng.usize(..numbers.len())].clone());
            }
        }
        if rng.bool() {
            claims.insert(
                "secret-expiry-ts".into(),
                stamps[rng.usize(..stamps.len())].clone(),
            );
        }
        let exp = claims.get("exp").cloned();
        iam.sim.inject_token_fault(
            FaultKind::Patch {
                body: body.clone(),
                claims: claims.clone(),
            },
            Some(1),
        );
        let label = format!("case {case}: body {body:?}, claims {claims:?}");
        let refreshed = broker.post("/v1/token/refresh").await;
        let status = refreshed.status().as_u16();
        let text = refreshed.text().await.unwrap();
        assert!(status == 200 || status == 503, "{label}: {status} {text}");
        assert!(
            !text.contains("abnormally"),
            "{label}: a task panicked: {text}"
        );
        if status == 200 {
            let answer: Value = serde_json::from_str(&text).unwrap();
            let left = answer["expiresIn"].as_u64().unwrap();
            assert!(left <= CEILING_SECS, "{label}: {left}");
            if let Some(exp) = exp.as_ref().and_then(Value::as_f64) {
                assert!(
                    left as f64 <= exp - now_secs() + 2.0,
                    "{label}: {left} past exp"
                );
            }
        }
        let (ready, detail) = broker.readyz().await;
        assert!(ready == 200 || ready == 503, "{label}: {detail}");
        assert!(
            broker.metrics().await.ends_with("# EOF\n"),
            "{label}: /metrics"
        );
    }
    broker.stop().await;
}

/// The three values that aborted the release build, against the real binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_values_that_aborted_the_process_are_served_safely_by_the_binary() {
    let iam = Iam::start(DAY).await;
    iam.sim
        .add_entity(ENTITY, SECRET, Duration::from_secs(100 * DAY));
    let no_times = json!({ "exp": null, "iat": null });
    for expires_in in [json!(1_000_000_000_000u64), json!(u64::MAX)] {
        iam.sim.inject_token_fault(
            patch(json!({ "expiresIn": expires_in }), no_times.clone()),
            Some(1),
        );
    }
    iam.sim.inject_token_fault(
        patch(
            json!({}),
            json!({ "secret-expiry-ts": "1969-12-31T00:00:00" }),
        ),
        Some(1),
    );
    let url = iam.url.clone();
    let served = tokio::task::spawn_blocking(move || {
        spawn_serve(
            &[
                "--iam-url",
                &url,
                "--entity-id",
                ENTITY,
                "--listen",
                "127.0.0.1:0",
            ],
            &[("AA_BROKER_ENTITY_SECRET", SECRET)],
        )
    })
    .await
    .unwrap();
    let client = http_client();
    let base = format!("http://{}", served.addr);
    let token = |path: &'static str| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move {
            let response = client
                .request(
                    if path.ends_with("refresh") {
                        reqwest::Method::POST
                    } else {
                        reqwest::Method::GET
                    },
                    url,
                )
                .guarded()
                .send()
                .await
                .expect("the broker is alive");
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    eventually("the first token", Duration::from_secs(10), async || {
        token("/v1/token").await.0 == 200
    })
    .await;
    // First answer (expiresIn 10^12, no exp/iat), then 2^64-1, then the 1969 claim.
    for step in 0..3 {
        let (status, body) = token("/v1/token").await;
        assert_eq!(status, 200, "step {step}: {body}");
        let left = serde_json::from_str::<Value>(&body).unwrap()["expiresIn"]
            .as_u64()
            .unwrap();
        assert!(left <= CEILING_SECS, "step {step}: {left}");
        let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 200, "step {step}");
        let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(metrics.status(), 200, "step {step}");
        if step < 2 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
            assert_eq!(token("/v1/token/refresh").await.0, 200, "step {step}");
        }
    }
    let mut child = served.child;
    assert!(child.try_wait().unwrap().is_none(), "the broker exited");
    terminate(&child);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(15)), 0);
    let log = served.log.lock().unwrap().clone();
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains(SECRET));
}

#[tokio::test]
async fn a_reset_answer_with_absurd_optional_fields_is_stored_before_anything_else() {
    let iam = iam_with_admin(10).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    write_secret(&path, SECRET);
    let client = IamClient::new(&iam.url, IamTimeouts::default()).unwrap();
    let admin = AdminSession::new(
        client,
        AdminCredentials {
            email: ADMIN.into(),
            password: inline_secret(PASSWORD),
        },
        Arc::new(NoRecorder),
    );
    let rotator = Rotator::new(
        admin,
        180,
        ResetBound {
            min_interval: DEFAULT_MIN_RESET_INTERVAL,
            state_dir: dir.path().to_path_buf(),
            site: "test".into(),
        },
    );
    let sink = SecretSink::new(SinkSpec::File(path.clone()), None).unwrap();
    let id = EntityId::parse(ENTITY).unwrap();
    let odd_fields = [
        json!({ "expiresOn": -1000 }),
        json!({ "expiresOn": 1e300, "expirationDate": 17 }),
        json!({ "expiresOn": "soon", "message": ["not", "text"] }),
        json!({ "expiresOn": {}, "expirationDate": "1969-12-31T00:00:00" }),
        json!({ "expiresOn": null, "expirationDate": null, "txnId": 5 }),
        json!({ "expiresOn": 1_725_010_763 }),
        json!({ "expiresOn": i64::MAX }),
        json!({ "expiresOn": "99999999999999999999999" }),
    ];
    for fields in odd_fields {
        iam.sim.inject_fault(
            Endpoint::SecretReset,
            patch(fields.clone(), json!({})),
            Some(1),
        );
        // An operator's `rotate --force`: not held to the reset bound, so every case resets.
        let rotated = rotator
            .rotate_with(&id, &sink, false)
            .await
            .unwrap_or_else(|e| panic!("{fields}: {e}"));
        let stored = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            stored.trim(),
            iam.sim.current_secret(ENTITY).unwrap(),
            "{fields}: the issued secret is on disk"
        );
        // An expiry that cannot be right is never taken for a real one; an unusable `expiresOn` falls
        // back to `expirationDate` when that one is sane.
        let now = std::time::SystemTime::now();
        if let Some(at) = rotated.expires_on {
            let ahead = at.duration_since(now).unwrap_or_default();
            assert!(
                ahead > Duration::ZERO && ahead <= Duration::from_secs(181 * DAY),
                "{fields}"
            );
        }
        if fields["expiresOn"] == json!(1_725_010_763) {
            // Seconds: 2024, in the past for a new secret: reported, not believed.
            assert!(rotated.expires_on.is_none() && rotated.implausible_expiry.is_some());
        }
    }
    assert_eq!(iam.sim.calls(Endpoint::SecretReset), 8);
}

#[tokio::test]
async fn expires_on_in_seconds_does_not_start_a_reset_storm() {
    let iam = iam_with_admin(100).await;
    iam.sim
        .update_settings(|s| s.expires_on_unit = EpochUnit::Seconds);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    write_secret(&path, SECRET);
    let mut options = BrokerOptions::one(SecretSource::File(path.clone()));
    options.rotation = Some(rotation(inline_secret(PASSWORD), dir.path()));
    let broker = TestBroker::start(&iam.url, options).await;
    broker.wait_ready(Duration::from_secs(5)).await;
    eventually("a secret read", Duration::from_secs(5), async || {
        iam.sim.calls(Endpoint::SecretRead) >= 2
    })
    .await;
    assert_eq!(iam.sim.calls(Endpoint::SecretReset), 0);
    let (_, detail) = broker.readyz().await;
    let expires = detail["entities"][ENTITY]["secretExpiresAt"]
        .as_str()
        .unwrap();
    let expected = aa_token_broker::timefmt::rfc3339_seconds(
        std::time::SystemTime::now() + Duration::from_secs(100 * DAY),
    );
    assert_eq!(
        &expires[..10],
        &expected[..10],
        "read as seconds, not milliseconds"
    );
    broker.stop().await;
}

/// On a paused clock: the seconds of quiet after the warning pass at once.
#[tokio::test(start_paused = true)]
async fn an_expiry_that_cannot_be_right_causes_one_reset_then_a_warning_not_a_loop() {
    // Every secret answer says the secret expired yesterday, in seconds: the reset storm of the review.
    let iam = iam_with_admin(10).await;
    let yesterday = now_secs() as i64 - DAY as i64;
    for endpoint in [Endpoint::SecretRead, Endpoint::SecretReset] {
        iam.sim.inject_fault(
            endpoint,
            patch(json!({ "expiresOn": yesterday }), json!({})),
            None,
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    write_secret(&path, SECRET);
    let mut options = BrokerOptions::one(SecretSource::File(path.clone()));
    options.rotation = Some(rotation(inline_secret(PASSWORD), dir.path()));
    let broker = TestBroker::start(&iam.url, options).await;
    // After its own reset, the broker knows the secret cannot have expired yesterday: a warning, and no
    // further attempt at all (the reset bound would hold one back anyway).
    eventually("the warning", Duration::from_secs(10), async || {
        broker.readyz().await.1["entities"][ENTITY]["secretWarning"]
            .as_str()
            .is_some_and(|w| w.contains("cannot be right"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        iam.sim.calls(Endpoint::SecretReset),
        1,
        "one reset, not a storm"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap().trim(),
        iam.sim.current_secret(ENTITY).unwrap()
    );
    assert_eq!(
        metric(
            &broker.metrics().await,
            r#"aa_broker_secret_warning{entity="FIU-TEST"}"#
        ),
        Some(1.0)
    );
    let (status, detail) = broker.readyz().await;
    assert_eq!(status, 200, "tokens still flow: {detail}");
    broker.stop().await;
}

#[tokio::test]
async fn the_reset_bound_holds_across_a_restart() {
    let iam = iam_with_admin(10).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    write_secret(&path, SECRET);
    let start = || {
        let mut options = BrokerOptions::one(SecretSource::File(path.clone()));
        options.rotation = Some(rotation(inline_secret(PASSWORD), dir.path()));
        TestBroker::start(&iam.url, options)
    };
    let first = start().await;
    eventually("the rotation", Duration::from_secs(10), async || {
        iam.sim.calls(Endpoint::SecretReset) == 1
            && std::fs::read_to_string(&path).unwrap().trim()
                == iam.sim.current_secret(ENTITY).unwrap()
    })
    .await;
    first.stop().await;
    // The IAM says the new secret is due too (a crash loop would meet this on every start).
    iam.sim.set_secret_expiry(ENTITY, 10 * DAY as i64);
    let second = start().await;
    eventually(
        "the second broker's deferral",
        Duration::from_secs(10),
        async || {
            metric(
                &second.metrics().await,
                r#"aa_broker_secret_rotations_total{entity="FIU-TEST",outcome="reset_deferred"}"#,
            )
            .is_some_and(|deferred| deferred >= 1.0)
        },
    )
    .await;
    assert_eq!(iam.sim.calls(Endpoint::SecretReset), 1);
    assert!(dir.path().join(".secret.resets").exists());
    second.wait_ready(Duration::from_secs(5)).await;
    second.stop().await;
}

/// On a paused clock: the check intervals and the password watch pass at once.
#[tokio::test(start_paused = true)]
async fn a_rejected_admin_password_is_not_hammered_and_a_corrected_one_is_used() {
    let iam = iam_with_admin(100).await;
    // Keycloak's brute-force protection: three failures lock the only user who can reset.
    iam.sim
        .update_settings(|s| s.lockout_after_failures = Some(3));
    let dir = tempfile::tempdir().unwrap();
    let secret_path = dir.path().join("secret");
    write_secret(&secret_path, SECRET);
    let password_path = dir.path().join("password");
    write_secret(&password_path, "expired-password");
    let mut options = BrokerOptions::one(SecretSource::File(secret_path));
    options.rotation = Some(rotation(
        SecretSource::File(password_path.clone()),
        dir.path(),
    ));
    let broker = TestBroker::start(&iam.url, options).await;
    eventually("the rejection", Duration::from_secs(5), async || {
        broker.readyz().await.1["entities"][ENTITY]["adminLogin"] == "credentials_rejected"
    })
    .await;
    // Several check intervals later: still the one failed login, and the user is not locked out.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(iam.sim.failed_logins(), 1);
    assert!(!iam.sim.user_locked(ADMIN));
    let (status, _) = broker.readyz().await;
    assert_eq!(status, 200, "a login problem does not stop tokens");
    let metrics = broker.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"aa_broker_admin_logins_total{outcome="rejected"}"#
        ),
        Some(1.0)
    );
    // The operator fixes the file: used within the watch interval, without a restart.
    write_secret(&password_path, PASSWORD);
    eventually(
        "the corrected password",
        Duration::from_secs(25),
        async || broker.readyz().await.1["entities"][ENTITY]["adminLogin"] == "ok",
    )
    .await;
    assert_eq!(iam.sim.failed_logins(), 1);
    broker.stop().await;
}

/// On a paused clock: the 3 s of polling pass at once.
#[tokio::test(start_paused = true)]
async fn retry_after_binds_clients_polling_for_a_token() {
    let iam = Iam::start(DAY).await;
    iam.sim.inject_token_fault(
        FaultKind::Status {
            status: 429,
            retry_after_secs: Some(6),
            body: None,
        },
        None,
    );
    let broker = TestBroker::start(&iam.url, BrokerOptions::inline()).await;
    let started = tokio::time::Instant::now();
    let mut waits = Vec::new();
    while started.elapsed() < Duration::from_secs(3) {
        let response = broker.get("/v1/token").await;
        assert_eq!(response.status(), 503);
        waits.push(
            response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(waits.len() >= 20);
    assert!(
        iam.token_calls() <= 2,
        "{} IAM calls in 3 s despite Retry-After: 6",
        iam.token_calls()
    );
    assert!(waits.iter().all(|w| (1..=6).contains(w)), "{waits:?}");
    assert!(
        waits.windows(2).any(|w| w[1] < w[0]),
        "counts down: {waits:?}"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_cannot_hold_the_connection_slots() {
    let iam = Iam::start(DAY).await;
    let mut options = BrokerOptions::inline();
    options.limits = ServerLimits {
        max_connections: 8,
        write_timeout: Duration::from_secs(1),
        ..ServerLimits::default()
    };
    let broker = TestBroker::start(&iam.url, options).await;
    broker.wait_ready(Duration::from_secs(5)).await;
    // Eight clients take every slot, pipeline requests for /metrics and never read an answer.
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {}\r\n\r\n", broker.addr);
    let mut hostile = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(broker.addr).unwrap();
        let burst = request.repeat(200);
        hostile.push(std::thread::spawn(move || {
            let _ = stream.set_write_timeout(Some(Duration::from_secs(20)));
            for _ in 0..100 {
                if stream.write_all(burst.as_bytes()).is_err() {
                    break;
                }
            }
            stream
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let well_behaved = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        http_client()
            .get(broker.url("/healthz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
    })
    .await
    .expect("a well-behaved client is served while hostile ones hold the slots")
    .unwrap();
    assert_eq!(answer, 200);
    assert!(well_behaved.elapsed() < Duration::from_secs(5));
    for thread in hostile {
        drop(thread.join().unwrap());
    }
    broker.stop().await;
}

/// Sends raw bytes and returns the status line.
fn raw_status(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_of_the_token_port_wants_a_loopback_host() {
    let iam = Iam::start(DAY).await;
    let broker = TestBroker::start(&iam.url, BrokerOptions::inline()).await;
    broker.wait_ready(Duration::from_secs(5)).await;
    let addr = broker.addr;
    let statuses = tokio::task::spawn_blocking(move || {
        let mut statuses = Vec::new();
        for path in ["/healthz", "/readyz", "/metrics", "/v1/token"] {
            // What a DNS-rebinding page in a browser sends: its own name as the Host.
            statuses.push(raw_status(
                addr,
                &format!("GET {path} HTTP/1.1\r\nHost: rebound.example:7373\r\nMetadata: true\r\n\r\n"),
            ));
            // An absolute-form target naming another host, with a loopback Host.
            statuses.push(raw_status(
                addr,
                &format!("GET http://169.254.169.254{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nMetadata: true\r\n\r\n"),
            ));
        }
        statuses.push(raw_status(
            addr,
            "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        ));
        statuses
    })
    .await
    .unwrap();
    let (refused, allowed) = statuses.split_at(8);
    for status in refused {
        assert!(status.contains(" 403 "), "{statuses:?}");
    }
    assert!(allowed[0].contains(" 200 "), "{statuses:?}");
    let metrics = broker.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"aa_broker_guard_rejections_total{reason="host"}"#
        ),
        Some(8.0)
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_secret_echoed_in_any_encoding_never_reaches_an_answer() {
    let secret = "s3cr3t +/=&\"ö-tail";
    let iam = Iam::start(DAY).await;
    iam.sim
        .add_entity(ENTITY, secret, Duration::from_secs(100 * DAY));
    let mut options = BrokerOptions::one(inline_secret(secret));
    options.policy = RefreshPolicy {
        forced_refresh_interval: Duration::ZERO,
        ..RefreshPolicy::default()
    };
    let broker = TestBroker::start(&iam.url, options).await;
    broker.wait_ready(Duration::from_secs(5)).await;
    let form = "s3cr3t+%2B%2F%3D%26%22%C3%B6-tail";
    let echoes = [
        format!(
            r#"{{"errorCode":"Unauthorized","errorMsg":"bad form id=FIU-TEST&secret={form}"}}"#
        ),
        format!(
            "<html>bad form: id=FIU-TEST&secret={}</html>",
            form.replace('+', "%20").to_lowercase()
        ),
        json!({ "message": format!("echo {{\"secret\":{}}}", json!(secret)) }).to_string(),
    ];
    for echo in echoes {
        iam.sim.inject_token_fault(
            FaultKind::Status {
                status: 401,
                retry_after_secs: None,
                body: Some(echo.clone()),
            },
            Some(1),
        );
        let refused = broker.post("/v1/token/refresh").await;
        assert_eq!(refused.status(), 503, "{echo}");
        let text = refused.text().await.unwrap();
        assert!(!text.contains("s3cr3t"), "{echo} -> {text}");
        let (_, detail) = broker.readyz().await;
        assert!(!detail.to_string().contains("s3cr3t"), "{detail}");
    }
    broker.stop().await;
}

#[test]
fn plain_http_to_a_remote_iam_is_refused_unless_allowed() {
    let (code, _, stderr) = run(
        &[
            "token",
            "--iam-url",
            "http://iam.invalid/iam",
            "--entity-id",
            ENTITY,
        ],
        &[("AA_BROKER_ENTITY_SECRET", SECRET)],
    );
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--iam-url"), "{stderr}");
    // Allowed explicitly: the settings pass, and the lookup of a name that cannot exist fails at run time.
    let (code, _, stderr) = run(
        &[
            "token",
            "--iam-url",
            "http://iam.invalid/iam",
            "--entity-id",
            ENTITY,
            "--allow-plain-http",
        ],
        &[("AA_BROKER_ENTITY_SECRET", SECRET)],
    );
    assert_eq!(code, 1, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_in_the_environment_is_not_used_for_a_loopback_iam() {
    let iam = Iam::start(DAY).await;
    iam.sim
        .add_entity(ENTITY, SECRET, Duration::from_secs(100 * DAY));
    let url = iam.url.clone();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        // Port 9 (discard) on loopback: nothing listens, so a proxied request would fail.
        let proxy = "http://127.0.0.1:9";
        run(
            &["token", "--iam-url", &url, "--entity-id", ENTITY],
            &[
                ("AA_BROKER_ENTITY_SECRET", SECRET),
                ("HTTP_PROXY", proxy),
                ("http_proxy", proxy),
                ("ALL_PROXY", proxy),
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim().split('.').count(), 3, "a JWT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exec_sink_runs_without_the_brokers_variables_and_stores_a_reset_answer_first() {
    let iam = iam_with_admin(10).await;
    // The reset answer that used to abort between the reset and the store.
    iam.sim.inject_fault(
        Endpoint::SecretReset,
        patch(json!({ "expiresOn": -1000 }), json!({})),
        Some(1),
    );
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    write_secret(&secret_file, SECRET);
    let stored = dir.path().join("stored");
    let env_file = dir.path().join("env");
    let sink = format!(
        "exec:sh -c 'env > {}; cat > {}'",
        env_file.display(),
        stored.display()
    );
    let url = iam.url.clone();
    let secret_arg = secret_file.display().to_string();
    let state_dir = dir.path().display().to_string();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run(
            &[
                "rotate",
                "--force",
                "--iam-url",
                &url,
                "--entity-id",
                ENTITY,
                "--secret-file",
                &secret_arg,
                "--secret-sink",
                &sink,
                "--admin-email",
                ADMIN,
                "--state-dir",
                &state_dir,
            ],
            &[("AA_BROKER_ADMIN_PASSWORD", PASSWORD)],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&stored).unwrap(),
        iam.sim.current_secret(ENTITY).unwrap()
    );
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert!(env.contains("PATH="), "{env}");
    assert!(!env.contains("AA_BROKER_"), "{env}");
    assert!(!env.contains(PASSWORD), "{env}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_file_others_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let iam = Iam::start(DAY).await;
    iam.sim
        .add_entity(ENTITY, SECRET, Duration::from_secs(100 * DAY));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    write_secret(&path, SECRET);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let url = iam.url.clone();
    let secret_arg = path.display().to_string();
    let served = tokio::task::spawn_blocking(move || {
        spawn_serve(
            &[
                "--iam-url",
                &url,
                "--entity-id",
                ENTITY,
                "--secret-file",
                &secret_arg,
                "--listen",
                "127.0.0.1:0",
            ],
            &[],
        )
    })
    .await
    .unwrap();
    // The warning follows the line that names the address; the log is read as it is written.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !served.log.lock().unwrap().contains("mode 0644") && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut child = served.child;
    terminate(&child);
    wait_exit(&mut child, Duration::from_secs(15));
    let log = served.log.lock().unwrap().clone();
    assert!(log.contains("mode 0644"), "{log}");
}

/// Arbitrary token and secret answers through the whole pipeline — parse, token, status, `/readyz` and
/// `/metrics` rendering — with real RS256 JWTs whose claims are arbitrary too. Nothing panics, and a token
/// that is accepted is never handed out past its `exp`, its `expiresIn` or the ceiling.
mod pipeline {
    use super::*;
    use aa_token_broker::http::health::readiness;
    use aa_token_broker::iam::client::{parse_secret_answer, parse_token_answer};
    use aa_token_broker::metrics::Metrics;
    use aa_token_broker::secret::policy::{ExpirySource, check_expiry};
    use aa_token_broker::simulator::jwt::SigningKey;
    use aa_token_broker::token::status::EntityStatus;
    use aa_token_broker::token::{MAX_TOKEN_LIFETIME, Token};
    use proptest::prelude::*;

    fn number() -> impl Strategy<Value = Value> {
        let now = now_secs();
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            (-1e6f64..1e9).prop_map(move |d| json!(now + d)),
            "[0-9a-z:.-]{0,12}".prop_map(Value::String),
        ]
    }

    fn stamp() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(|n| json!(n)),
            "[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,12})?(Z|[+-][0-9]{2}:?[0-9]{2})?"
                .prop_map(Value::String),
            ".{0,30}".prop_map(Value::String),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn arbitrary_iam_answers_never_panic_and_never_outlive_their_limits(
            expires_in in number(), exp in number(), iat in number(), expiry_ts in stamp(),
            expires_on in number(), expiration_date in stamp(), token_type in prop::option::of("[A-Za-z]{0,8}"),
        ) {
            let key = SigningKey::simulator_key().unwrap();
            let mut claims = json!({ "azp": ENTITY, "exp": exp, "iat": iat, "secret-expiry-ts": expiry_ts });
            if let Value::Object(map) = &mut claims {
                map.retain(|_, v| !v.is_null());
            }
            let jwt = key.sign(&claims).unwrap();
            let body = json!({ "accessToken": jwt, "expiresIn": expires_in, "tokenType": token_type }).to_string();
            let received = std::time::SystemTime::now();
            let id = EntityId::parse(ENTITY).unwrap();
            if let Ok(grant) = parse_token_answer(Endpoint::EntityToken, 200, body.as_bytes(), SECRET, Instant::now(), received) {
                let answered_lifetime = grant.expires_in;
                if let Ok(token) = Token::from_grant(&id, grant, &RefreshPolicy::default(), 0.5) {
                    prop_assert!(token.lifetime <= MAX_TOKEN_LIFETIME);
                    if let Some(answered) = answered_lifetime {
                        prop_assert!(token.lifetime <= answered);
                    }
                    if let Some(exp) = exp.as_f64() {
                        let from_iat = iat.as_f64().filter(|i| i.is_finite()).unwrap_or_else(now_secs);
                        prop_assert!(token.lifetime.as_secs_f64() <= exp - from_iat + 1.0);
                    }
                    let at = tokio::time::Instant::now();
                    let answer: Value = serde_json::from_slice(&token.json_body(at)).unwrap();
                    prop_assert!(answer["expiresIn"].as_u64().unwrap() <= CEILING_SECS);
                    let status = EntityStatus::of_token(id.clone(), Some(&token), at);
                    let rendered = Metrics::new().render(std::slice::from_ref(&status));
                    prop_assert!(rendered.ends_with("# EOF\n"));
                    let (_, detail) = readiness(vec![status]);
                    prop_assert!(detail["entities"][ENTITY].is_object());
                }
            }
            let secret_body = json!({ "secret": "kept", "expiresOn": expires_on, "expirationDate": expiration_date }).to_string();
            let grant = parse_secret_answer(Endpoint::SecretReset, 200, secret_body.as_bytes(), "user-token");
            prop_assert!(grant.is_ok(), "an answer with a secret is always usable");
            if let Ok(grant) = grant {
                for source in [ExpirySource::Granted, ExpirySource::Read] {
                    let _ = check_expiry(received, grant.expires_on, source);
                }
                let mut status = EntityStatus::of_token(id, None, tokio::time::Instant::now());
                status.secret_expires_at = grant.expires_on;
                let (_, detail) = readiness(vec![status.clone()]);
                prop_assert!(detail.is_object());
                prop_assert!(Metrics::new().render(&[status]).ends_with("# EOF\n"));
            }
        }
    }
}
