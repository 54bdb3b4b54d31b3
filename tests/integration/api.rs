//! The HTTP API as a sibling container sees it: the token's shape, coalescing, forced refresh, several
//! entities, the caller guard, readiness and metrics.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;
use aa_token_broker::http::GuardSettings;
use aa_token_broker::simulator::FaultKind;
use aa_token_broker::simulator::jwt::verify_with_jwks;
use aa_token_broker::timefmt;

#[tokio::test]
async fn serves_a_verifiable_token_in_the_documented_shape() {
    let iam = Iam::start(86_400).await;
    let broker = TestBroker::start(&iam.url, BrokerOptions::inline()).await;
    broker.wait_ready(Duration::from_secs(5)).await;

    let response = broker.get("/v1/token").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert!(response.headers().get("x-token-stale").is_none());
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["tokenType"], "Bearer");
    assert_eq!(body["entityId"], ENTITY);
    let expires_in = body["expiresIn"].as_u64().unwrap();
    assert!((86_300..=86_400).contains(&expires_in), "{expires_in}");
    let expires_at = timefmt::parse_iam_timestamp(body["expiresAt"].as_str().unwrap()).unwrap();
    let from_now = timefmt::unix_seconds(expires_at) - now_secs();
    assert!((86_300.0..=86_401.0).contains(&from_now), "{from_now}");

    // A real RS256 JWT, signed by the IAM's key, issued to this entity.
    let token = body["accessToken"].as_str().unwrap();
    let claims =
        verify_with_jwks(token, &iam.sim.jwks()).expect("signature verifies against the JWKS");
    assert_eq!(claims["azp"], ENTITY);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        86_400
    );

    // The same token, bare, for `Accept: text/plain`, and under the entity's own path.
    let plain = broker
        .client()
        .get(broker.url("/v1/token"))
        .guarded()
        .header("Accept", "text/plain")
        .send()
        .await
        .unwrap();
    assert!(
        plain.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(plain.text().await.unwrap(), token);
    let by_id: serde_json::Value = broker
        .get(&format!("/v1/token/{ENTITY}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(by_id["accessToken"], token);
    assert_eq!(iam.token_calls(), 1, "every answer came from the cache");
    broker.stop().await;
}

#[tokio::test]
async fn a_thousand_concurrent_cold_requests_make_one_upstream_call() {
    let iam = Iam::start(86_400).await;
    // Slow enough that every request arrives while the first fetch is still in flight.
    iam.sim.set_latency(Duration::from_millis(400));
    let broker = TestBroker::start(&iam.url, BrokerOptions::inline()).await;
    let mut requests = Vec::new();
    for _ in 0..1000 {
        let client = broker.client().clone();
        let url = broker.url("/v1/token");
        requests.push(tokio::spawn(async move {
            let response = client.get(url).guarded().send().await.unwrap();
            assert_eq!(response.status(), 200);
            let body: serde_json::Value = response.json().await.unwrap();
            body["accessToken"].as_str().unwrap().to_string()
        }));
    }
    let mut tokens = HashSet::new();
    for request in requests {
        tokens.insert(request.await.unwrap());
    }
    assert_eq!(tokens.len(), 1, "every caller got the same token");
    assert_eq!(
        iam.token_calls(),
        1,
        "one upstream call for 1000 cold requests and the start-up fetch"
    );
    broker.stop().await;
}

#[tokio::test]
async fn concurrent_cold_requests_share_one_failure() {
    let iam = Iam::start(86_400).await;
    iam.sim.set_latency(Duration::from_millis(300));
    iam.sim.inject_token_fault(FaultKind::status(500), None);
    let broker = TestBroker::start(&iam.url, BrokerOptions::inline()).await;
    let mut requests = Vec::new();
    for _ in 0..200 {
        let client = broker.client().clone();
        let url = broker.url("/v1/token");
        requests.push(tokio::spawn(async move {
            let response = client.get(url).guarded().send().await.unwrap();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, retry_after, body)
        }));
    }
    for request in requests {
        let (status, retry_after, body) = request.await.unwrap();
        assert_eq!(status, 503);
        assert!(retry_after.unwrap().parse::<u64>().unwrap() >= 1);
        assert_eq!(body["error"], "token_unavailable");
        assert!(
            body["message"].as_str().unwrap().contains("HTTP 500"),
            "{body}"
        );
    }
    assert_eq!(iam.token_calls(), 1, "the failure was shared, not repeated");
    broker.stop().await;
}

#[tokio::test]
async fn forced_refresh_gets_a_new_token_and_is_rate_limited() {
    let iam = Iam::start(86_400).await;
    let broker = TestBroker::start(&iam.url, BrokerOptions::inline()).await;
    broker.wait_ready(Duration::from_secs(5)).await;
    let first = broker.token().await;

    let refreshed = broker.post("/v1/token/refresh").await;
    assert_eq!(refreshed.status(), 200);
    let second = refreshed.json::<serde_json::Value>().await.unwrap()["accessToken"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(first, second, "a forced refresh yields a new token");
    assert_eq!(
        broker.token().await,
        second,
        "and the cache serves it from then on"
    );
    assert_eq!(iam.token_calls(), 2);

    // Within 10 s, more forced refreshes (even concurrent ones) return the newest token without a call.
    let mut again = Vec::new();
    for _ in 0..20 {
        let client = broker.client().clone();
        let url = broker.url(&format!("/v1/token/{ENTITY}/refresh"));
        again.push(tokio::spawn(async move {
            let response = client.post(url).guarded().send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<serde_json::Value>().await.unwrap()["accessToken"]
                .as_str()
                .unwrap()
                .to_string()
        }));
    }
    for request in again {
        assert_eq!(request.await.unwrap(), second);
    }
    assert_eq!(
        iam.token_calls(),
        2,
        "rate-limited refreshes made no upstream call"
    );
    let metrics = broker.metrics().await;
    assert!(
        metrics.contains(
            r#"aa_broker_forced_refreshes_total{entity="FIU-TEST",outcome="rate_limited"} 20"#
        ),
        "{metrics}"
    );
    broker.stop().await;
}

/// Token reads are answered in front of the router when they can be (`http::hot_path`). A request the
/// hot path passes on — a percent-encoded id, a body, `HEAD` — reaches the router, and the two answers must
/// be the same bytes, counted the same way.
#[tokio::test]
async fn the_hot_path_and_the_router_give_the_same_answer() {
    let iam = Iam::start(86_400).await;
    let broker = TestBroker::start(&iam.url, BrokerOptions::inline()).await;
    broker.wait_ready(Duration::from_secs(5)).await;
    let client = broker.client();
    let read = |path: &str, accept: &'static str, body: Option<&'static str>| {
        let mut request = client
            .get(broker.url(path))
            .guarded()
            .header("Accept", accept);
        if let Some(body) = body {
            request = request.body(body);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let mut headers: Vec<(String, String)> = response
                .headers()
                .iter()
                .filter(|(name, _)| *name != "date")
                .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_string()))
                .collect();
            headers.sort();
            (status, headers, response.text().await.unwrap())
        }
    };
    // `expiresIn` can tick between two reads; compare the rest byte for byte.
    let without_expires_in = |body: &str| {
        let mut value: serde_json::Value = serde_json::from_str(body).unwrap();
        value.as_object_mut().unwrap().remove("expiresIn");
        value.to_string()
    };
    let encoded = "/v1/token/FIU%2DTEST";
    for accept in ["application/json", "text/plain"] {
        let hot = read("/v1/token", accept, None).await;
        let by_id = read(&format!("/v1/token/{ENTITY}"), accept, None).await;
        let routed = read(encoded, accept, None).await;
        let with_body = read("/v1/token", accept, Some("x")).await;
        assert_eq!(hot.0, 200);
        for other in [&by_id, &routed, &with_body] {
            assert_eq!(other.0, hot.0, "{accept}");
            assert_eq!(other.1, hot.1, "{accept}");
            if accept == "text/plain" {
                assert_eq!(other.2, hot.2);
            } else {
                assert_eq!(without_expires_in(&other.2), without_expires_in(&hot.2));
            }
        }
    }
    let head = client
        .head(broker.url("/v1/token"))
        .guarded()
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.status(),
        200,
        "HEAD goes to the router, which answers it"
    );
    let metrics = broker.metrics().await;
    assert!(
        metrics.contains(&format!(
            r#"aa_broker_token_requests_total{{entity="{ENTITY}",outcome="served"}} 9"#
        )),
        "eight reads and one HEAD, counted once each, on either path: {metrics}"
    );
    assert_eq!(iam.token_calls(), 1);
    broker.stop().await;
}

#[tokio::test]
async fn several_entities_are_served_by_id() {
    let iam = Iam::start(86_400).await;
    iam.sim.add_entity(
        "FIU-SECOND",
        "second-secret",
        Duration::from_secs(86_400 * 30),
    );
    let mut options = BrokerOptions::inline();
    options
        .entities
        .push(("FIU-SECOND".into(), inline_secret("second-secret")));
    let broker = TestBroker::start(&iam.url, options).await;
    broker.wait_ready(Duration::from_secs(5)).await;

    let ambiguous = broker.get("/v1/token").await;
    assert_eq!(ambiguous.status(), 400);
    let body: serde_json::Value = ambiguous.json().await.unwrap();
    assert_eq!(body["error"], "entity_required");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("FIU-TEST") && message.contains("FIU-SECOND"),
        "{message}"
    );

    for id in ["FIU-TEST", "FIU-SECOND"] {
        let body: serde_json::Value = broker
            .get(&format!("/v1/token/{id}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["entityId"], id);
        assert_eq!(claims(body["accessToken"].as_str().unwrap())["azp"], id);
    }
    let response = broker.get("/v1/token/FIU-NOPE").await;
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unknown_entity");
    // Paths that hold no entity id at all.
    for invalid in [
        "/v1/token/..%2F..%2Fetc",
        "/v1/token/%00",
        "/v1/token/FIU-TEST%3Fx=1",
        &format!("/v1/token/{}", "A".repeat(5000)),
    ] {
        let response = broker.get(invalid).await;
        assert_eq!(response.status(), 400, "{invalid}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_entity_id");
    }
    let (_, ready) = broker.readyz().await;
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["entities"]["FIU-SECOND"]["ready"], true);
    assert_eq!(iam.token_calls(), 2, "one fetch per entity");
    broker.stop().await;
}

#[tokio::test]
async fn the_caller_guard_refuses_what_a_metadata_server_would() {
    let iam = Iam::start(86_400).await;
    let broker = TestBroker::start(&iam.url, BrokerOptions::inline()).await;
    broker.wait_ready(Duration::from_secs(5)).await;
    let client = broker.client();
    let url = broker.url("/v1/token");

    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("no Metadata header", client.get(&url)),
        (
            "Metadata: false",
            client.get(&url).header("Metadata", "false"),
        ),
        (
            "X-Forwarded-For",
            client
                .get(&url)
                .guarded()
                .header("X-Forwarded-For", "10.1.2.3"),
        ),
        (
            "Forwarded",
            client
                .get(&url)
                .guarded()
                .header("Forwarded", "for=10.1.2.3"),
        ),
        (
            "rebinding Host",
            client
                .get(&url)
                .guarded()
                .header("Host", "attacker.example:7373"),
        ),
        (
            "refresh without header",
            client.post(broker.url("/v1/token/refresh")),
        ),
    ];
    for (what, request) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 403, "{what}");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "forbidden", "{what}");
        assert!(!body.to_string().contains("eyJ"), "no token in a refusal");
    }
    // `localhost` and loopback literals are fine; health, readiness and metrics need no header.
    let ok = client
        .get(&url)
        .guarded()
        .header("Host", "localhost:7373")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            client.get(broker.url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
    let metrics = broker.metrics().await;
    assert!(
        metrics.contains(r#"aa_broker_guard_rejections_total{reason="forwarded"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"aa_broker_guard_rejections_total{reason="host"} 1"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains(SECRET) && !metrics.contains("eyJ"),
        "metrics carry no secret or token"
    );
    broker.stop().await;

    // An operator may drop the header requirement (logged at start); the Host check stays.
    let mut options = BrokerOptions::inline();
    options.guard = GuardSettings {
        require_metadata_header: false,
        allowed_hosts: vec!["token-broker.local".into()],
    };
    let relaxed = TestBroker::start(&iam.url, options).await;
    relaxed.wait_ready(Duration::from_secs(5)).await;
    let client = relaxed.client();
    let url = relaxed.url("/v1/token");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(
        client
            .get(&url)
            .header("Host", "token-broker.local")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(&url)
            .header("Host", "evil.example")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    relaxed.stop().await;
}

#[tokio::test]
async fn readiness_follows_token_validity() {
    let iam = Iam::start(86_400).await;
    iam.sim.inject_token_fault(FaultKind::status(401), None);
    let broker = TestBroker::start(&iam.url, BrokerOptions::inline()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = broker.readyz().await;
    assert_eq!(status, 503);
    assert_eq!(body["ready"], false);
    let detail = &body["entities"][ENTITY];
    assert_eq!(detail["ready"], false);
    assert!(
        detail["lastError"].as_str().unwrap().contains("HTTP 401"),
        "{detail}"
    );
    assert!(detail["consecutiveFailures"].as_u64().unwrap() >= 1);

    iam.sim.clear_faults();
    broker.wait_ready(Duration::from_secs(5)).await;
    assert_eq!(broker.get("/v1/token").await.status(), 200);
    broker.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let iam = Iam::start(86_400).await;
    let broker = TestBroker::start(&iam.url, BrokerOptions::inline()).await;
    let missing = broker.get("/v2/token").await;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<serde_json::Value>().await.unwrap()["error"],
        "not_found"
    );
    let wrong = broker
        .client()
        .delete(broker.url("/v1/token"))
        .guarded()
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 405);
    let oversized = broker
        .client()
        .post(broker.url("/v1/token/refresh"))
        .guarded()
        .body(vec![b'x'; 64 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), 413);
    assert_eq!(
        broker
            .client()
            .get(broker.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_caller_that_hangs_up_does_not_strand_the_others() {
    let iam = Iam::start(86_400).await;
    iam.sim.set_latency(Duration::from_millis(600));
    let broker = TestBroker::start(&iam.url, BrokerOptions::inline()).await;
    // The first cold caller gives up long before the IAM answers.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let url = broker.url("/v1/token");
    let gave_up = tokio::spawn({
        let url = url.clone();
        async move { impatient.get(url).guarded().send().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let patient = broker.get("/v1/token").await;
    assert!(
        gave_up.await.unwrap().is_err(),
        "the impatient caller timed out"
    );
    assert_eq!(
        patient.status(),
        200,
        "the caller still waiting got the token"
    );
    assert_eq!(iam.token_calls(), 1, "the abandoned fetch was not repeated");
    broker.stop().await;
}

/// Every labelled counter has its series, at 0, before its first event: a dashboard shows a flat line
/// rather than "no data", and `increase()` sees the first event (a series born at 1 shows no increase).
#[tokio::test]
async fn labelled_counters_are_exported_at_zero_before_their_first_event() {
    let iam = Iam::start(86_400).await;
    let broker = TestBroker::start(&iam.url, BrokerOptions::inline()).await;
    let text = broker.metrics().await;
    for sample in [
        format!(r#"aa_broker_forced_refreshes_total{{entity="{ENTITY}",outcome="refreshed"}} 0"#),
        format!(
            r#"aa_broker_forced_refreshes_total{{entity="{ENTITY}",outcome="rate_limited"}} 0"#
        ),
        format!(r#"aa_broker_token_requests_total{{entity="{ENTITY}",outcome="unavailable"}} 0"#),
        format!(r#"aa_broker_token_requests_total{{entity="{ENTITY}",outcome="stale"}} 0"#),
        format!(
            r#"aa_broker_iam_requests_total{{entity="{ENTITY}",trigger="forced",outcome="unauthorized"}} 0"#
        ),
        format!(r#"aa_broker_iam_warnings_total{{entity="{ENTITY}"}} 0"#),
        format!(
            r#"aa_broker_secret_rotations_total{{entity="{ENTITY}",outcome="persist_failed"}} 0"#
        ),
        r#"aa_broker_admin_logins_total{outcome="rejected"} 0"#.to_string(),
        r#"aa_broker_guard_rejections_total{reason="host"} 0"#.to_string(),
        r#"aa_broker_verifications_total{outcome="invalid",reason="bad_signature"} 0"#.to_string(),
        r#"aa_broker_cr_requests_total{outcome="error"} 0"#.to_string(),
        r#"aa_broker_signature_checks_total{outcome="mismatch"} 0"#.to_string(),
        r#"aa_broker_authorize_total{outcome="unauthorized"} 0"#.to_string(),
    ] {
        assert!(text.lines().any(|l| l == sample), "no {sample} in\n{text}");
    }
    let key_set = format!(
        "{}/protocol/openid-connect/certs",
        iam.url.replace("/iam", "/auth/realms/sahamati")
    );
    assert!(
        text.lines().any(|l| l
            == format!(
                r#"aa_broker_jwks_fetches_total{{url="{key_set}",trigger="unknown_kid",outcome="timeout"}} 0"#
            )),
        "no key-set fetch series for {key_set} in\n{text}"
    );
    broker.stop().await;
}
