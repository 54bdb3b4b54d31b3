//! How the broker behaves when time passes and the IAM misbehaves: short-lived tokens roll over with no
//! failed or slow request, an outage is ridden out and then reported honestly, malformed answers change
//! nothing, and a rotated secret file is picked up. The long runs are on a paused clock against the
//! scripted IAM (`common::scripted`); one short run of each in real time against the simulator keeps the
//! real timers honest.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::common::scripted::{Script, ScriptedIam};
use crate::common::*;
use aa_token_broker::entity::SecretSource;
use aa_token_broker::iam::{Endpoint, IamTimeouts};
use aa_token_broker::simulator::FaultKind;
use aa_token_broker::token::policy::RefreshPolicy;

/// What a fleet of clients saw while they hammered the broker.
#[derive(Default)]
struct Observed {
    ok: AtomicU64,
    unavailable: AtomicU64,
    other: AtomicU64,
    stale: AtomicU64,
    /// Tokens served at or after their JWT `exp`.
    expired_served: AtomicU64,
    slowest_micros: AtomicU64,
}

/// Runs `clients` loops of `GET /v1/token`, `pause` apart, until `stop` is set. `now_secs` is the wall
/// clock the IAM stamps its tokens with (the runtime's clock for the scripted IAM); the time a request
/// took is on the runtime's clock.
fn hammer(
    broker: &TestBroker,
    clients: usize,
    pause: Duration,
    now_secs: impl Fn() -> f64 + Clone + Send + 'static,
    stop: Arc<AtomicBool>,
    seen: Arc<Observed>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let client = broker.client().clone();
            let url = broker.url("/v1/token");
            let stop = Arc::clone(&stop);
            let seen = Arc::clone(&seen);
            let now_secs = now_secs.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let response = client.get(&url).guarded().send().await.unwrap();
                    let took = started.elapsed().as_micros() as u64;
                    seen.slowest_micros.fetch_max(took, Ordering::Relaxed);
                    match response.status().as_u16() {
                        200 => {
                            if response.headers().contains_key("x-token-stale") {
                                seen.stale.fetch_add(1, Ordering::Relaxed);
                            }
                            let body: serde_json::Value = response.json().await.unwrap();
                            let exp = claims(body["accessToken"].as_str().unwrap())["exp"]
                                .as_f64()
                                .unwrap();
                            if now_secs() >= exp {
                                seen.expired_served.fetch_add(1, Ordering::Relaxed);
                            }
                            seen.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        503 => {
                            assert!(response.headers().contains_key("retry-after"));
                            seen.unavailable.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            seen.other.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(pause).await;
                }
            })
        })
        .collect()
}

async fn finish(handles: Vec<tokio::task::JoinHandle<()>>, stop: &AtomicBool) {
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.await.unwrap();
    }
}

/// What every rollover run must show: traffic served throughout, nothing failed, nothing expired, no
/// request that waited on the IAM (which takes `latency` per answer).
fn assert_rolled_over(seen: &Observed, least_ok: u64, latency: Duration) {
    assert!(seen.ok.load(Ordering::Relaxed) > least_ok);
    assert_eq!(
        seen.unavailable.load(Ordering::Relaxed),
        0,
        "no request failed across rollovers"
    );
    assert_eq!(seen.other.load(Ordering::Relaxed), 0);
    assert_eq!(
        seen.expired_served.load(Ordering::Relaxed),
        0,
        "no expired token was served"
    );
    assert!(
        seen.slowest_micros.load(Ordering::Relaxed) < latency.as_micros() as u64,
        "a request waited on the IAM: {} µs",
        seen.slowest_micros.load(Ordering::Relaxed)
    );
}

/// On a paused clock, against the scripted IAM: 20 s of 8 s tokens pass in well under a second.
#[tokio::test(start_paused = true)]
async fn short_lived_tokens_roll_over_with_no_failed_or_slow_request() {
    // 8 s tokens: handed out for 6.5 s, refreshed at ~5 s. The IAM takes 1 s per answer, so any request
    // that waited on it would take over a second.
    let iam = ScriptedIam::start(ENTITY, 8).await;
    let broker = TestBroker::start(&iam.url, BrokerOptions::inline()).await;
    broker.wait_ready(Duration::from_secs(5)).await;
    let latency = Duration::from_millis(1000);
    iam.set_latency(latency);
    let calls_before = iam.token_calls();

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Observed::default());
    let clock = iam.clock;
    let clients = hammer(
        &broker,
        8,
        Duration::from_millis(100),
        move || clock.now_secs(),
        Arc::clone(&stop),
        Arc::clone(&seen),
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    finish(clients, &stop).await;

    assert_rolled_over(&seen, 1000, latency);
    // One refresh per ~5 s window: 20 s → 3 to 5 calls, never one per request.
    let calls = iam.token_calls() - calls_before;
    assert!((3..=5).contains(&calls), "{calls} upstream calls");
    broker.stop().await;
}

/// The same in real time against the simulator, short: 5 s tokens (handed out for 3.5 s, refreshed at
/// ~2.7 s) for 6 s, with an IAM that takes 400 ms per answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_roll_over_in_real_time() {
    let iam = Iam::start(5).await;
    let broker = TestBroker::start(&iam.url, BrokerOptions::inline()).await;
    broker.wait_ready(Duration::from_secs(5)).await;
    let latency = Duration::from_millis(400);
    iam.sim.set_latency(latency);
    let calls_before = iam.token_calls();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Observed::default());
    let clients = hammer(
        &broker,
        4,
        Duration::from_millis(5),
        now_secs,
        Arc::clone(&stop),
        Arc::clone(&seen),
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    finish(clients, &stop).await;
    assert_rolled_over(&seen, 100, latency);
    let calls = iam.token_calls() - calls_before;
    assert!((1..=3).contains(&calls), "{calls} upstream calls");
    broker.stop().await;
}

/// On a paused clock, against the scripted IAM: 6 s tokens, an outage of 10 s under load, recovery.
#[tokio::test(start_paused = true)]
async fn an_outage_is_ridden_out_then_reported_then_recovered_from() {
    // 6 s tokens: handed out for 4.5 s, refresh due at ~3.5 s.
    let iam = ScriptedIam::start(ENTITY, 6).await;
    let broker = TestBroker::start(&iam.url, BrokerOptions::inline()).await;
    broker.wait_ready(Duration::from_secs(5)).await;
    let held = broker.token().await;
    iam.answer(Script::Status(503));
    let calls_before = iam.token_calls();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Observed::default());
    let clock = iam.clock;
    let clients = hammer(
        &broker,
        8,
        Duration::from_millis(100),
        move || clock.now_secs(),
        Arc::clone(&stop),
        Arc::clone(&seen),
    );

    // While the held token is valid it keeps being served, marked stale once a refresh has failed.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = broker.get("/v1/token").await;
    assert_eq!(during.status(), 200);
    assert_eq!(during.headers()["x-token-stale"], "true");
    assert_eq!(
        during.json::<serde_json::Value>().await.unwrap()["accessToken"],
        held.as_str()
    );

    // After its hand-out deadline: 503 with the reason, never the expired token.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = broker.get("/v1/token").await;
    assert_eq!(after.status(), 503);
    let body: serde_json::Value = after.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("HTTP 503"),
        "{body}"
    );
    assert_eq!(broker.readyz().await.0, 503);

    // 8 s of outage under continuous load: background backoff plus at most one client attempt a second.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outage_calls = iam.token_calls() - calls_before;
    assert!(
        outage_calls <= 20,
        "{outage_calls} upstream calls in a 10 s outage"
    );

    // The IAM comes back: clients get a token within a couple of seconds.
    iam.answer(Script::Tokens { lifetime_secs: 6 });
    let back = Instant::now();
    loop {
        if broker.get("/v1/token").await.status() == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(3),
            "no recovery within 3 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    finish(clients, &stop).await;
    assert_eq!(
        seen.expired_served.load(Ordering::Relaxed),
        0,
        "no expired token was served"
    );
    assert!(seen.stale.load(Ordering::Relaxed) > 0);
    assert!(seen.unavailable.load(Ordering::Relaxed) > 0);
    assert_eq!(seen.other.load(Ordering::Relaxed), 0);
    broker.stop().await;
}

/// The same in real time against the simulator, short: 6 s tokens, stale at 4 s, 503 at 5 s, recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_ridden_out_in_real_time() {
    let iam = Iam::start(6).await;
    let broker = TestBroker::start(&iam.url, BrokerOptions::inline()).await;
    broker.wait_ready(Duration::from_secs(5)).await;
    let held = broker.token().await;
    iam.sim.inject_token_fault(FaultKind::status(503), None);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = broker.get("/v1/token").await;
    assert_eq!(during.status(), 200);
    assert_eq!(during.headers()["x-token-stale"], "true");
    assert_eq!(
        during.json::<serde_json::Value>().await.unwrap()["accessToken"],
        held.as_str()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = broker.get("/v1/token").await;
    assert_eq!(after.status(), 503);
    iam.sim.clear_faults();
    eventually("recovery", Duration::from_secs(3), async || {
        broker.get("/v1/token").await.status() == 200
    })
    .await;
    broker.stop().await;
}

/// On a paused clock: the hang, the timeouts and the `Retry-After` pass at once.
#[tokio::test(start_paused = true)]
async fn malformed_and_hostile_answers_leave_the_held_token_in_place() {
    let iam = Iam::start(86_400).await;
    let mut options = BrokerOptions::inline();
    options.policy = RefreshPolicy {
        forced_refresh_interval: Duration::ZERO,
        ..RefreshPolicy::default()
    };
    options.iam_timeouts = IamTimeouts {
        connect: Duration::from_secs(1),
        request: Duration::from_secs(1),
    };
    let broker = TestBroker::start(&iam.url, options).await;
    broker.wait_ready(Duration::from_secs(5)).await;
    let held = broker.token().await;

    let echo = format!(r#"{{"errorCode":"Unauthorized","errorMsg":"bad secret {SECRET}"}}"#);
    let cases: Vec<(FaultKind, &str)> = vec![
        (FaultKind::Html { status: 502 }, "HTTP 502"),
        (FaultKind::Empty { status: 200 }, "empty body"),
        (FaultKind::Empty { status: 500 }, "HTTP 500"),
        (FaultKind::TruncatedJson, "not the expected JSON"),
        (FaultKind::WrongTypes, "not the expected JSON"),
        (FaultKind::HugeBody, "larger than"),
        (FaultKind::ForeignToken, "issued to"),
        (FaultKind::ShortLived, "too short"),
        (FaultKind::RepeatToken, "already held"),
        (FaultKind::Hang, "timed out"),
        (FaultKind::Reset, "request failed"),
        (
            FaultKind::Status {
                status: 401,
                retry_after_secs: None,
                body: Some(echo),
            },
            "HTTP 401 Unauthorized",
        ),
        // Last: its Retry-After holds back the forced refreshes that follow (checked below).
        (
            FaultKind::Status {
                status: 429,
                retry_after_secs: Some(3),
                body: None,
            },
            "HTTP 429",
        ),
    ];
    for (fault, expected) in cases {
        let label = format!("{fault:?}");
        iam.sim.inject_token_fault(fault, Some(1));
        let refused = broker.post("/v1/token/refresh").await;
        assert_eq!(refused.status(), 503, "{label}");
        let body: serde_json::Value = refused.json().await.unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(expected), "{label}: {message}");
        assert!(
            !message.contains(SECRET),
            "{label}: the secret leaked into an error: {message}"
        );
        assert!(
            !message.contains("eyJ"),
            "{label}: a token leaked into an error: {message}"
        );
        // The valid token is still handed out, marked stale.
        let still = broker.get("/v1/token").await;
        assert_eq!(still.status(), 200, "{label}");
        assert_eq!(still.headers()["x-token-stale"], "true", "{label}");
        assert_eq!(
            still.json::<serde_json::Value>().await.unwrap()["accessToken"],
            held.as_str(),
            "{label}"
        );
    }
    iam.sim.clear_faults();
    // The IAM asked for 3 s of quiet: a forced refresh now is answered from here, with the wait left.
    let calls = iam.sim.calls(Endpoint::EntityToken);
    let held_back = broker.post("/v1/token/refresh").await;
    assert_eq!(held_back.status(), 503);
    let wait: u64 = held_back.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&wait), "{wait}");
    assert_eq!(iam.sim.calls(Endpoint::EntityToken), calls);
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let recovered = broker.post("/v1/token/refresh").await;
    assert_eq!(recovered.status(), 200);
    let fresh = broker.get("/v1/token").await;
    assert!(fresh.headers().get("x-token-stale").is_none());
    assert_ne!(
        fresh.json::<serde_json::Value>().await.unwrap()["accessToken"],
        held.as_str()
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_rotated_secret_in_a_kubernetes_style_volume_is_picked_up() {
    let iam = Iam::start(86_400).await;
    let dir = tempfile::tempdir().unwrap();
    let secret_path = kubernetes_volume(dir.path(), "2026_11_01", SECRET);
    let mut options = BrokerOptions::one(SecretSource::File(secret_path.clone()));
    options.policy = RefreshPolicy {
        forced_refresh_interval: Duration::ZERO,
        ..RefreshPolicy::default()
    };
    let broker = TestBroker::start(&iam.url, options).await;
    broker.wait_ready(Duration::from_secs(5)).await;
    let first = broker.token().await;

    // The secret is reset upstream; the old one stops working at once.
    iam.sim.set_secret(ENTITY, "the-new-secret-after-rotation");
    let rejected = broker.post("/v1/token/refresh").await;
    assert_eq!(rejected.status(), 503);
    assert!(rejected.text().await.unwrap().contains("HTTP 401"));

    // The kubelet swaps the volume's `..data` symlink; the next fetch reads the new secret.
    kubernetes_volume(dir.path(), "2026_11_23", "the-new-secret-after-rotation");
    let refreshed = broker.post("/v1/token/refresh").await;
    assert_eq!(refreshed.status(), 200);
    let second = broker.token().await;
    assert_ne!(first, second);
    assert!(
        broker
            .get("/v1/token")
            .await
            .headers()
            .get("x-token-stale")
            .is_none()
    );
    broker.stop().await;
}

#[tokio::test]
async fn an_unreadable_secret_file_is_an_upstream_failure_not_a_crash() {
    let iam = Iam::start(86_400).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    write_secret(&path, SECRET);
    let mut options = BrokerOptions::one(SecretSource::File(path.clone()));
    options.policy = RefreshPolicy {
        forced_refresh_interval: Duration::ZERO,
        ..RefreshPolicy::default()
    };
    let broker = TestBroker::start(&iam.url, options).await;
    broker.wait_ready(Duration::from_secs(5)).await;
    let calls = iam.token_calls();
    for (label, damage) in [
        (
            "missing",
            Box::new(|p: &std::path::Path| std::fs::remove_file(p).unwrap())
                as Box<dyn Fn(&std::path::Path)>,
        ),
        (
            "empty",
            Box::new(|p: &std::path::Path| std::fs::write(p, "\n").unwrap()),
        ),
        (
            "a directory",
            Box::new(|p: &std::path::Path| {
                std::fs::remove_file(p).unwrap();
                std::fs::create_dir(p).unwrap();
            }),
        ),
    ] {
        damage(&path);
        let refused = broker.post("/v1/token/refresh").await;
        assert_eq!(refused.status(), 503, "{label}");
        assert!(
            refused.text().await.unwrap().contains("secret file"),
            "{label}"
        );
        assert_eq!(
            broker.get("/v1/token").await.status(),
            200,
            "{label}: the held token is still served"
        );
        let _ = std::fs::remove_dir(&path);
        let _ = std::fs::remove_file(&path);
        write_secret(&path, SECRET);
    }
    assert_eq!(iam.token_calls(), calls, "no IAM call without a secret");
    broker.stop().await;
}

#[tokio::test]
async fn grace_period_warning_and_clock_skew_are_exported() {
    let iam = Iam::start(86_400).await;
    // The secret expired an hour ago (inside the 5-day grace period), and the IAM's clock runs two days
    // ahead of ours: by our wall clock the token's `exp` is a day in the past.
    iam.sim.set_secret_expiry(ENTITY, -3600);
    iam.sim
        .update_settings(|s| s.clock_offset_secs = -2 * 86_400);
    iam.sim.set_secret_expiry(ENTITY, -3600);
    let broker = TestBroker::start(&iam.url, BrokerOptions::inline()).await;
    broker.wait_ready(Duration::from_secs(5)).await;

    // The lifetime comes from expiresIn on the monotonic clock, so the token is served.
    let response = broker.get("/v1/token").await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["expiresIn"].as_u64().unwrap() > 86_000);

    let (_, ready) = broker.readyz().await;
    let detail = &ready["entities"][ENTITY];
    assert_eq!(detail["ready"], true, "still ready while tokens are minted");
    assert_eq!(detail["secretInGrace"], true);
    assert!(
        detail["iamMessage"]
            .as_str()
            .unwrap()
            .contains("within the grace period")
    );

    let metrics = broker.metrics().await;
    assert!(
        metrics.contains(r#"aa_broker_secret_in_grace{entity="FIU-TEST"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"aa_broker_iam_warnings_total{entity="FIU-TEST"} 1"#),
        "{metrics}"
    );
    let skew_line = metrics
        .lines()
        .find(|l| l.starts_with("aa_broker_clock_skew_seconds{"))
        .expect("skew gauge");
    let skew: f64 = skew_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((skew - 172_800.0).abs() < 5.0, "{skew_line}");
    let expiry_line = metrics
        .lines()
        .find(|l| l.starts_with("aa_broker_secret_expiry_timestamp_seconds{"))
        .expect("secret expiry gauge");
    let expiry: f64 = expiry_line.rsplit(' ').next().unwrap().parse().unwrap();
    // The claim has no zone; the broker reads it as IST, and the simulator writes IST wall time as the
    // IAM does: the true instant (a UTC wall time would be read 5.5 h early, `timefmt`'s tests).
    assert!(
        (expiry - (now_secs() - 2.0 * 86_400.0 - 3600.0)).abs() < 5.0,
        "{expiry_line}"
    );
    broker.stop().await;
}
