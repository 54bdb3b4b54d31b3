//! Signed bodies, as a service and a peer see them: the broker signs with a real RSA key from a PEM file,
//! the simulator's Central Registry publishes every entity's key with its visibility rules, and peers sign
//! as they would. Over loopback: sign and verify both ways, the golden vector, a tampered body, a damaged
//! signature, another entity's key, a peer that rotates its key, a sender unknown to the CR, a CR outage,
//! a CR that refuses our token once, the rate limit on forged `kid`s, `/v1/authorize` and its ReBIT
//! errors, the verify-only listener, the body cap, arbitrary header bytes, the two commands, and senders
//! outside the id grammar (refused before any CR request, over HTTP and on the command line).

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::process::run;
use crate::common::*;
use aa_token_broker::config::BrokerSettings;
use aa_token_broker::config::jws::JwsSettings;
use aa_token_broker::registry::default_cr_url;
use aa_token_broker::registry::policy::RegistryPolicy;
use serde_json::{Value, json};

pub(crate) const AA: &str = "AA-PEER";
pub(crate) const AA_SECRET: &str = "aa-peer-secret";
const AA_OTHER: &str = "AA-OTHER";
const FIP: &str = "FIP-PEER";
const BODY: &[u8] = br#"{"ver":"2.0.0","timestamp":"2026-11-25T10:00:00.000Z","txnid":"f1e2d3c4-0000-4000-8000-000000000001","Consent":{"id":"c-1"}}"#;
const MAX_BODY: usize = 64 * 1024;

/// Short intervals, so the tests need not wait; the lookup budget and the grace are the defaults.
fn test_policy() -> RegistryPolicy {
    RegistryPolicy {
        ttl: Duration::from_secs(3600),
        unknown_kid_interval: Duration::from_millis(300),
        failure_backoff: Duration::from_millis(200),
        ..RegistryPolicy::default()
    }
}

/// The simulator with the broker's FIU, two AAs and an FIP in the IAM and the CR; the broker signing
/// as its FIU with the key the CR holds for it, with the verify-only listener too. Ready once the broker
/// holds its own token (the realm's keys are fetched at first use).
pub(crate) async fn start() -> TestBroker {
    start_with(|_, _| {}).await
}

/// [`start`], with the broker's settings and the signature settings tuned first.
pub(crate) async fn start_with(
    tune: impl FnOnce(&mut BrokerSettings, &mut JwsSettings) + Send + 'static,
) -> TestBroker {
    let iam = Iam::start(86_400).await;
    let long = Duration::from_secs(90 * 86_400);
    iam.sim.add_entity(AA, AA_SECRET, long);
    iam.sim.add_entity(AA_OTHER, "aa-other-secret", long);
    let mut options = BrokerOptions::inline().tuned(tune);
    options.signing_key = Some(iam.signing_key(ENTITY, "FIU"));
    iam.sim.cr_register(AA, "AA").unwrap();
    iam.sim.cr_register(AA_OTHER, "AA").unwrap();
    iam.sim.cr_register(FIP, "FIP").unwrap();
    options.verify_listener = true;
    options.jws = Some(JwsSettings {
        cr_url: default_cr_url(&iam.url),
        signers: Vec::new(),
        max_body_bytes: MAX_BODY,
        policy: test_policy(),
        authorize_roles: None,
        envelope: Default::default(),
        path_prefix: None,
    });
    let broker = TestBroker::owning(iam, options).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    broker
}

/// The signature routes, called as a service and a peer call them.
pub(crate) trait Signatures {
    async fn sign(&self, body: &[u8]) -> Answer;
    async fn verify_at(
        &self,
        addr: SocketAddr,
        sender: &str,
        kind: &str,
        signature: Option<&str>,
        body: &[u8],
    ) -> Answer;
    async fn verify(&self, sender: &str, kind: &str, signature: &str, body: &[u8]) -> Answer;
    async fn authorize_at(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer;
    async fn authorize(&self, headers: &[(&str, &str)], body: &[u8]) -> Answer;
}

impl Signatures for TestBroker {
    async fn sign(&self, body: &[u8]) -> Answer {
        answer(
            self.http
                .post(format!("http://{}/v1/sign", self.addr))
                .guarded()
                .body(body.to_vec())
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn verify_at(
        &self,
        addr: SocketAddr,
        sender: &str,
        kind: &str,
        signature: Option<&str>,
        body: &[u8],
    ) -> Answer {
        let mut request = self
            .http
            .post(format!(
                "http://{addr}/v1/verify-signature?sender={sender}&type={kind}"
            ))
            .body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header("x-jws-signature", signature);
        }
        answer(request.send().await.unwrap()).await
    }

    async fn verify(&self, sender: &str, kind: &str, signature: &str, body: &[u8]) -> Answer {
        self.verify_at(self.addr, sender, kind, Some(signature), body)
            .await
    }

    async fn authorize_at(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        let mut request = self
            .http
            .post(format!("http://{addr}{path}"))
            .body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        answer(request.send().await.unwrap()).await
    }

    async fn authorize(&self, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        self.authorize_at(self.addr, "/v1/authorize", headers, body)
            .await
    }
}

fn tampered(body: &[u8]) -> Vec<u8> {
    String::from_utf8(body.to_vec())
        .unwrap()
        .replace("c-1", "c-2")
        .into_bytes()
}

#[tokio::test]
async fn the_broker_signs_with_its_key_and_what_it_signs_verifies_against_its_cr_record() {
    let net = start().await;
    let signed = net.sign(BODY).await;
    assert_eq!(signed.status, 200, "{}", signed.body);
    let signature = signed.body["signature"].as_str().unwrap().to_string();
    assert_eq!(signed.body["kid"], net.signing_kid());
    assert_eq!(
        signed.headers["x-jws-signature"].to_str().unwrap(),
        signature
    );
    let (header, rest) = signature.split_once("..").unwrap();
    assert!(!rest.contains('.'));
    use base64::Engine;
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        header,
        json!({"alg":"RS256","kid":net.signing_kid(),"b64":false,"crit":["b64"]})
    );
    // RS256 is deterministic: the peer's own signature (the simulator's signer) is the same string.
    assert_eq!(net.iam().sim.cr_sign(ENTITY, BODY).unwrap(), signature);
    // Our FIU may read its own record in the CR: the signature verifies, and a changed body does not.
    let ok = net.verify(ENTITY, "FIU", &signature, BODY).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body, json!({"sender": ENTITY, "kid": net.signing_kid()}));
    let bad = net.verify(ENTITY, "FIU", &signature, &tampered(BODY)).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["error"], "signature_mismatch");
    // The empty body is a body too.
    let empty = net.sign(b"").await;
    assert_eq!(empty.status, 200);
    let empty_sig = empty.body["signature"].as_str().unwrap();
    assert_eq!(net.verify(ENTITY, "FIU", empty_sig, b"").await.status, 200);
    net.stop().await;
}

#[tokio::test]
async fn signing_is_behind_the_caller_guard_and_only_on_the_token_port() {
    let net = start().await;
    let url = format!("http://{}/v1/sign", net.addr);
    let bare = net.http.post(&url).body(BODY).send().await.unwrap();
    assert_eq!(bare.status(), 403);
    let proxied = net
        .http
        .post(&url)
        .guarded()
        .header("X-Forwarded-For", "10.0.0.1")
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), 403);
    let rebound = net
        .http
        .post(&url)
        .guarded()
        .header("Host", "evil.example")
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    let named = net
        .http
        .post(format!("http://{}/v1/sign/{ENTITY}", net.addr))
        .guarded()
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(named.status(), 200);
    let unknown = net
        .http
        .post(format!("http://{}/v1/sign/FIU-NOBODY", net.addr))
        .guarded()
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let elsewhere = net
        .http
        .post(format!("http://{}/v1/sign", net.verify_addr()))
        .guarded()
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 404, "no signing on --verify-listen");
    net.stop().await;
}

#[tokio::test]
async fn peer_signatures_verify_and_every_certification_failure_is_a_mismatch() {
    let net = start().await;
    let signature = net.iam().sim.cr_sign(AA, BODY).unwrap();
    let ok = net.verify(AA, "AA", &signature, BODY).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body["sender"], AA);
    // On the verify-only listener too, with no header of any kind.
    let there = net
        .verify_at(net.verify_addr(), AA, "aa", Some(&signature), BODY)
        .await;
    assert_eq!(there.status, 200);
    let longer = format!("{signature}x");
    let shorter = &signature[..signature.len() - 1];
    let other = net.iam().sim.cr_sign(AA_OTHER, BODY).unwrap();
    // The other AA's key under the sender's kid: the signature is simply wrong.
    let other_under_kid = net
        .iam()
        .sim
        .cr_sign_with_header(
            AA_OTHER,
            &format!(
                r#"{{"alg":"RS256","kid":"{}","b64":false,"crit":["b64"]}}"#,
                net.iam().sim.cr_kid(AA).unwrap()
            ),
            BODY,
        )
        .unwrap();
    for (what, value, body) in [
        ("a tampered body", signature.as_str(), tampered(BODY)),
        ("one character appended", longer.as_str(), BODY.to_vec()),
        ("one character removed", shorter, BODY.to_vec()),
        (
            "another entity's key and kid",
            other.as_str(),
            BODY.to_vec(),
        ),
        (
            "another entity's key under the sender's kid",
            other_under_kid.as_str(),
            BODY.to_vec(),
        ),
    ] {
        let refused = net.verify(AA, "AA", value, &body).await;
        assert_eq!(refused.status, 400, "{what}");
        assert_eq!(refused.body["error"], "signature_mismatch", "{what}");
    }
    let missing = net.verify_at(net.addr, AA, "AA", None, BODY).await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.body["error"], "missing_signature");
    net.stop().await;
}

#[tokio::test]
async fn lenient_headers_verify_without_crit_and_without_kid() {
    let net = start().await;
    for header in [
        r#"{"b64":false,"kid":"KID","alg":"RS256"}"#,
        r#"{"alg":"RS256","b64":false,"crit":["b64"]}"#,
        r#"{"alg":"RS256","kid":"KID","crit":["b64"],"b64":false}"#,
    ] {
        let header = header.replace("KID", &net.iam().sim.cr_kid(AA).unwrap());
        let signature = net
            .iam()
            .sim
            .cr_sign_with_header(AA, &header, BODY)
            .unwrap();
        let ok = net.verify(AA, "AA", &signature, BODY).await;
        assert_eq!(ok.status, 200, "{header}: {}", ok.body);
    }
    let rs512 = net
        .iam()
        .sim
        .cr_sign_with_header(AA, r#"{"alg":"RS512","b64":false}"#, BODY)
        .unwrap();
    let refused = net.verify(AA, "AA", &rs512, BODY).await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.body["error"], "signature_mismatch");
    net.stop().await;
}

#[tokio::test]
async fn unknown_senders_and_hidden_ones_are_unknown_senders() {
    let net = start().await;
    let signature = net.iam().sim.cr_sign(AA, BODY).unwrap();
    let nobody = net.verify("AA-NOBODY", "AA", &signature, BODY).await;
    assert_eq!(nobody.status, 400);
    assert_eq!(nobody.body["error"], "unknown_sender");
    // An FIU may not read other FIUs' records (spec §1.3): the CR answers 403.
    net.iam().sim.cr_register("FIU-OTHER", "FIU").unwrap();
    let hidden_sig = net.iam().sim.cr_sign("FIU-OTHER", BODY).unwrap();
    let hidden = net.verify("FIU-OTHER", "FIU", &hidden_sig, BODY).await;
    assert_eq!(hidden.status, 400);
    assert_eq!(hidden.body["error"], "unknown_sender");
    // The wrong type is not found either.
    let wrong_type = net.verify(AA, "FIP", &signature, BODY).await;
    assert_eq!(wrong_type.body["error"], "unknown_sender");
    let bad_query = net
        .http
        .post(format!(
            "http://{}/v1/verify-signature?sender={AA}&type=CR",
            net.addr
        ))
        .header("x-jws-signature", &signature)
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_query.status(), 400);
    net.stop().await;
}

/// The status and body of a raw `POST` to `path` on the token port, sent as written: an HTTP client
/// would resolve `%2E%2E` in the path before sending it.
async fn raw_post(addr: SocketAddr, path: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nMetadata: true\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn senders_outside_the_id_grammar_are_refused_before_the_cr_is_asked() {
    let net = start().await;
    let signature = net.iam().sim.cr_sign(AA, BODY).unwrap();
    let before = net.iam().sim.cr_requests();
    // As written in the query string: `..`, `.`, `...`, `../../x`, `%2E%2E` (itself `..` once
    // decoded), `AA-PEER?admin=1#`, `AA-PEER/..`, `a b`.
    for sender in [
        "..",
        ".",
        "...",
        "..%2F..%2Fx",
        "%2E%2E",
        "AA-PEER%3Fadmin%3D1%23",
        "AA-PEER%2F..",
        "a%20b",
    ] {
        for addr in [net.addr, net.verify_addr()] {
            let refused = net
                .verify_at(addr, sender, "AA", Some(&signature), BODY)
                .await;
            assert_eq!(refused.status, 400, "{sender}");
            assert_eq!(refused.body["error"], "bad_request", "{sender}");
            let message = refused.body["message"].as_str().unwrap();
            assert!(message.contains("not an entity id"), "{sender}: {message}");
        }
    }
    assert_eq!(
        net.iam().sim.cr_requests(),
        before,
        "an id outside the grammar made a CR request"
    );
    // The same request with a real sender does reach the CR: the counter counts.
    let valid = net.verify(AA, "AA", &signature, BODY).await;
    assert_eq!(valid.status, 200, "{}", valid.body);
    assert!(net.iam().sim.cr_requests() > before);
    // A path that holds no id is 400 too, where an id without a key is 404.
    let (status, body) = raw_post(net.addr, "/v1/sign/%2E%2E").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_entity_id"))
    );
    let (status, body) = raw_post(net.addr, "/v1/sign/FIU-NOKEY").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("no_signing_key"))
    );
    net.stop().await;
}

#[tokio::test]
async fn the_verify_signature_command_refuses_a_bad_id_before_any_request() {
    let iam = Iam::start(86_400).await;
    iam.sim.cr_register(ENTITY, "FIU").unwrap();
    iam.sim.cr_register(AA, "AA").unwrap();
    let signature = iam.sim.cr_sign(AA, BODY).unwrap();
    let (tokens, cr) = (iam.token_calls(), iam.sim.cr_requests());
    let env = [("AA_BROKER_ENTITY_SECRET", SECRET)];
    let cases = [
        (ENTITY, "../../x", "--sender"),
        (ENTITY, "..", "--sender"),
        (ENTITY, "AA-PEER?admin=1#", "--sender"),
        (ENTITY, "AA PEER", "--sender"),
        ("..", AA, "--entity-id"),
    ];
    for (entity, sender, flag) in cases {
        let args = [
            "verify-signature",
            "--iam-url",
            &iam.url,
            "--entity-id",
            entity,
            "--sender",
            sender,
            "--type",
            "AA",
            "--signature",
            &signature,
        ];
        let (code, stdout, stderr) = run_with_stdin(&args, &env, BODY).await;
        assert_eq!(code, 2, "{sender}: {stdout} {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{sender}: {stderr}");
        assert!(stderr.contains(flag), "{sender}: {stderr}");
        assert!(stdout.is_empty(), "{sender}: {stdout}");
    }
    assert_eq!(iam.token_calls(), tokens, "no token was asked for");
    assert_eq!(iam.sim.cr_requests(), cr, "no CR request was made");
    // The same command with a real sender does both.
    let args = [
        "verify-signature",
        "--iam-url",
        &iam.url,
        "--entity-id",
        ENTITY,
        "--sender",
        AA,
        "--type",
        "AA",
        "--signature",
        &signature,
    ];
    let (code, _, stderr) = run_with_stdin(&args, &env, BODY).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(iam.sim.cr_requests() > cr);
}

#[tokio::test]
async fn a_peer_that_rotates_its_key_verifies_under_both_keys_and_forged_kids_cannot_flood_the_cr()
{
    let net = start().await;
    let before = net.iam().sim.cr_sign(AA, BODY).unwrap();
    assert_eq!(net.verify(AA, "AA", &before, BODY).await.status, 200);
    let calls = net.iam().sim.cr_calls();
    // Held: no CR call for the same sender again.
    assert_eq!(net.verify(AA, "AA", &before, BODY).await.status, 200);
    assert_eq!(net.iam().sim.cr_calls(), calls);
    let new_kid = net.iam().sim.cr_rotate(AA).unwrap();
    let after = net.iam().sim.cr_sign(AA, BODY).unwrap();
    assert!(after.len() > 10 && new_kid.ends_with("-2"));
    tokio::time::sleep(Duration::from_millis(350)).await;
    let rotated = net.verify(AA, "AA", &after, BODY).await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    assert_eq!(rotated.body["kid"], new_kid.as_str());
    // Signed just before the rotation: the previous key still verifies.
    let old = net.verify(AA, "AA", &before, BODY).await;
    assert_eq!(old.status, 200, "{}", old.body);
    // Forged kids, many at once: a handful of CR calls at most, all coalesced.
    let calls = net.iam().sim.cr_calls();
    let started = std::time::Instant::now();
    let mut forged = Vec::new();
    for i in 0..40 {
        let header = format!(r#"{{"alg":"RS256","kid":"forged-{i}","b64":false}}"#);
        forged.push(
            net.iam()
                .sim
                .cr_sign_with_header(AA, &header, BODY)
                .unwrap(),
        );
    }
    let answers = futures_join(&net, &forged).await;
    assert!(answers.iter().all(|s| *s == 400), "{answers:?}");
    let elapsed = started.elapsed().as_millis() as u64;
    let made = net.iam().sim.cr_calls() - calls;
    assert!(
        made <= 1 + elapsed / 300,
        "{made} CR calls in {elapsed} ms for 40 forged kids"
    );
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_hangs_up_during_a_cr_lookup_leaves_it_to_finish_for_the_next() {
    let net = start().await;
    let signature = net.iam().sim.cr_sign(FIP, BODY).unwrap();
    net.iam().sim.cr_set_delay(Duration::from_millis(1500));
    let calls = net.iam().sim.cr_calls();
    let impatient = net
        .http
        .post(format!(
            "http://{}/v1/verify-signature?sender={FIP}&type=FIP",
            net.addr
        ))
        .header("x-jws-signature", &signature)
        .body(BODY)
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(
        impatient.as_ref().is_err_and(|e| e.is_timeout()),
        "{impatient:?}"
    );
    assert_eq!(net.iam().sim.cr_calls(), calls + 1, "the lookup started");
    // The next caller is answered by the lookup the first one started, not by a second one.
    let started = std::time::Instant::now();
    let next = net.verify(FIP, "FIP", &signature, BODY).await;
    assert_eq!(next.status, 200, "{}", next.body);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        net.iam().sim.cr_calls(),
        calls + 1,
        "one CR call served both"
    );
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_senders_is_rate_limited_and_known_senders_keep_verifying() {
    let net = start().await;
    let cr = |outcome: &str| format!("aa_broker_cr_requests_total{{outcome=\"{outcome}\"}}");
    for outcome in ["ok", "unknown", "error", "rate_limited"] {
        assert_eq!(net.sample(&cr(outcome)).await, Some(0.0), "{outcome}");
    }
    let signature = net.iam().sim.cr_sign(AA, BODY).unwrap();
    assert_eq!(net.verify(AA, "AA", &signature, BODY).await.status, 200);
    let calls = net.iam().sim.cr_calls();
    let started = std::time::Instant::now();
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..300 {
        let request = net
            .http
            .post(format!(
                "http://{}/v1/verify-signature?sender=AA-UNKNOWN-{i}&type=AA",
                net.addr
            ))
            .header("x-jws-signature", &signature)
            .body(BODY);
        flood.spawn(async move { (i, answer(request.send().await.unwrap()).await) });
    }
    // A known sender keeps verifying while the flood is under way.
    let during = net.verify(AA, "AA", &signature, BODY).await;
    assert_eq!(during.status, 200, "{}", during.body);
    let (mut unknown, mut unavailable, mut answered) = (0, 0, None);
    while let Some(joined) = flood.join_next().await {
        let (i, answer) = joined.unwrap();
        match (answer.status, answer.body["error"].as_str()) {
            (400, Some("unknown_sender")) => {
                unknown += 1;
                answered = Some(i);
            }
            (503, Some("registry_unavailable")) => {
                assert!(answer.headers.contains_key("retry-after"));
                unavailable += 1;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let made = net.iam().sim.cr_calls() - calls;
    eprintln!(
        "300 unknown senders: {made} CR calls in {elapsed:.2} s ({unknown} unknown_sender, {unavailable} registry_unavailable)"
    );
    // The default budget: a burst of 10, then 5 a second.
    let bound = 10 + (5.0 * elapsed).floor() as u64;
    assert!(made <= bound, "{made} CR calls in {elapsed:.2} s");
    assert_eq!(net.sample(&cr("ok")).await, Some(1.0));
    assert_eq!(net.sample(&cr("unknown")).await, Some(f64::from(unknown)));
    assert_eq!(
        net.sample(&cr("rate_limited")).await,
        Some(f64::from(unavailable))
    );
    // The known sender was not pushed out: it verifies from the record held, without a CR call.
    let calls = net.iam().sim.cr_calls();
    let after = net.verify(AA, "AA", &signature, BODY).await;
    assert_eq!(after.status, 200, "{}", after.body);
    assert_eq!(net.iam().sim.cr_calls(), calls);
    // An unknown sender, once answered, is remembered: asked about again, the CR is not.
    let answered = answered.expect("the burst was spent on some unknown senders");
    let again = net
        .verify(&format!("AA-UNKNOWN-{answered}"), "AA", &signature, BODY)
        .await;
    assert_eq!(again.body["error"], "unknown_sender");
    assert_eq!(net.iam().sim.cr_calls(), calls);
    net.stop().await;
}

#[tokio::test]
async fn with_the_lookup_budget_spent_a_stale_record_is_used_and_a_sender_not_held_waits() {
    let net = start_with(|_, jws| {
        jws.policy = RegistryPolicy {
            ttl: Duration::from_millis(300),
            lookup_interval: Duration::from_secs(100),
            lookup_burst: 1,
            ..test_policy()
        }
    })
    .await;
    let signature = net.iam().sim.cr_sign(AA, BODY).unwrap();
    assert_eq!(net.verify(AA, "AA", &signature, BODY).await.status, 200);
    let calls = net.iam().sim.cr_calls();
    // The record is stale and the budget spent: the record held is used, the CR is not asked.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stale = net.verify(AA, "AA", &signature, BODY).await;
    assert_eq!(stale.status, 200, "{}", stale.body);
    // Nothing held for this one: retry when the budget allows.
    let fip = net.iam().sim.cr_sign(FIP, BODY).unwrap();
    let refused = net.verify(FIP, "FIP", &fip, BODY).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.body["error"], "registry_unavailable");
    let retry_after: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((90..=100).contains(&retry_after), "{retry_after}");
    assert_eq!(net.iam().sim.cr_calls(), calls);
    assert_eq!(
        net.sample("aa_broker_cr_requests_total{outcome=\"rate_limited\"}")
            .await,
        Some(2.0)
    );
    net.stop().await;
}

#[tokio::test]
async fn the_grace_of_a_replaced_key_is_a_setting_and_zero_turns_it_off() {
    let net = start_with(|_, jws| {
        jws.policy = RegistryPolicy {
            unknown_kid_interval: Duration::from_millis(300),
            previous_key_grace: Duration::ZERO,
            ..RegistryPolicy::default()
        }
    })
    .await;
    let before = net.iam().sim.cr_sign(AA, BODY).unwrap();
    assert_eq!(net.verify(AA, "AA", &before, BODY).await.status, 200);
    net.iam().sim.cr_rotate(AA).unwrap();
    let after = net.iam().sim.cr_sign(AA, BODY).unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(net.verify(AA, "AA", &after, BODY).await.status, 200);
    // With no grace, a message signed with the replaced key is refused at once.
    let old = net.verify(AA, "AA", &before, BODY).await;
    assert_eq!(old.status, 400, "{}", old.body);
    assert_eq!(old.body["error"], "signature_mismatch");
    net.stop().await;
}

async fn futures_join(net: &TestBroker, signatures: &[String]) -> Vec<u16> {
    let mut tasks = tokio::task::JoinSet::new();
    for signature in signatures {
        let http = net.http.clone();
        let url = format!(
            "http://{}/v1/verify-signature?sender={AA}&type=AA",
            net.addr
        );
        let signature = signature.clone();
        tasks.spawn(async move {
            http.post(url)
                .header("x-jws-signature", signature)
                .body(BODY)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    }
    tasks.join_all().await
}

#[tokio::test]
async fn through_a_cr_outage_held_keys_verify_and_unknown_ones_ask_to_retry() {
    let net = start().await;
    let signature = net.iam().sim.cr_sign(AA, BODY).unwrap();
    assert_eq!(net.verify(AA, "AA", &signature, BODY).await.status, 200);
    net.iam().sim.cr_set_status(Some(503));
    let held = net.verify(AA, "AA", &signature, BODY).await;
    assert_eq!(held.status, 200);
    let fip_sig = net.iam().sim.cr_sign(FIP, BODY).unwrap();
    let down = net.verify(FIP, "FIP", &fip_sig, BODY).await;
    assert_eq!(down.status, 503, "{}", down.body);
    assert_eq!(down.body["error"], "registry_unavailable");
    assert!(down.headers.contains_key("retry-after"));
    net.iam().sim.cr_set_status(None);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(net.verify(FIP, "FIP", &fip_sig, BODY).await.status, 200);
    net.stop().await;
}

#[tokio::test]
async fn a_cr_that_refuses_our_token_gets_one_fresh_token_then_the_broker_gives_up() {
    let net = start().await;
    let signature = net.iam().sim.cr_sign(AA, BODY).unwrap();
    let tokens = net.iam().token_calls();
    net.iam().sim.cr_queue_statuses(&[401]);
    let ok = net.verify(AA, "AA", &signature, BODY).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(net.iam().token_calls(), tokens + 1, "one forced refresh");
    let fip_sig = net.iam().sim.cr_sign(FIP, BODY).unwrap();
    let calls = net.iam().sim.cr_calls();
    net.iam().sim.cr_queue_statuses(&[401, 401, 401]);
    let refused = net.verify(FIP, "FIP", &fip_sig, BODY).await;
    assert_eq!(refused.status, 503);
    assert_eq!(net.iam().sim.cr_calls(), calls + 2, "one retry, no loop");
    net.stop().await;
}

#[tokio::test]
async fn authorize_checks_the_token_the_signature_and_that_the_signer_owns_the_token() {
    let net = start().await;
    let token = net.iam().entity_token(AA, AA_SECRET).await;
    let signature = net.iam().sim.cr_sign(AA, BODY).unwrap();
    let ok = net
        .authorize(
            &[("aa_api_key", &token), ("x-jws-signature", &signature)],
            BODY,
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.headers["x-aa-entity-id"], AA);
    assert_eq!(ok.headers["x-aa-role"], "AA");
    let rebit = |answer: &Answer, status: u16, code: &str| {
        assert_eq!(answer.status, status, "{}", answer.body);
        assert_eq!(answer.body["errorCode"], code, "{}", answer.body);
        assert_eq!(answer.body["ver"], "2.0.0");
        assert!(answer.body["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(answer.body["errorMsg"].as_str().is_some());
    };
    let tampered_body = tampered(BODY);
    let tampered = net
        .authorize(
            &[("aa_api_key", &token), ("x-jws-signature", &signature)],
            &tampered_body,
        )
        .await;
    rebit(&tampered, 400, "SignatureDoesNotMatch");
    assert_eq!(
        tampered.body["txnid"],
        "f1e2d3c4-0000-4000-8000-000000000001"
    );
    let other = net.iam().sim.cr_sign(AA_OTHER, BODY).unwrap();
    // A kid nobody is known to hold is nobody's key: a mismatch.
    let unknown = net
        .authorize(&[("aa_api_key", &token), ("x-jws-signature", &other)], BODY)
        .await;
    rebit(&unknown, 400, "SignatureDoesNotMatch");
    // Once AA-OTHER's key is held (it has called us), its signature under another AA's token is another
    // registered entity's: InvalidRequest (FIU_1043, FIU_2029).
    assert_eq!(net.verify(AA_OTHER, "AA", &other, BODY).await.status, 200);
    let foreign = net
        .authorize(&[("aa_api_key", &token), ("x-jws-signature", &other)], BODY)
        .await;
    rebit(&foreign, 400, "InvalidRequest");
    let shorter = &signature[..signature.len() - 1];
    rebit(
        &net.authorize(
            &[("aa_api_key", &token), ("x-jws-signature", shorter)],
            BODY,
        )
        .await,
        400,
        "SignatureDoesNotMatch",
    );
    rebit(
        &net.authorize(&[("aa_api_key", &token)], BODY).await,
        400,
        "InvalidRequest",
    );
    rebit(
        &net.authorize(&[("x-jws-signature", &signature)], BODY)
            .await,
        401,
        "Unauthorized",
    );
    let mut damaged = token.clone();
    damaged.push('x');
    rebit(
        &net.authorize(
            &[("aa_api_key", &damaged), ("x-jws-signature", &signature)],
            BODY,
        )
        .await,
        401,
        "Unauthorized",
    );
    // The Envoy ext_authz form, on the verify-only listener, with Authorization: Bearer. The path names
    // a ReBIT endpoint, so the envelope is checked too: a body stamped now.
    let fresh = format!(
        r#"{{"ver":"2.0.0","timestamp":"{}","txnid":"f1e2d3c4-0000-4000-8000-000000000002","Consent":{{"id":"c-1"}}}}"#,
        humantime::format_rfc3339_millis(std::time::SystemTime::now())
    );
    let fresh_signature = net.iam().sim.cr_sign(AA, fresh.as_bytes()).unwrap();
    let envoy = net
        .authorize_at(
            net.verify_addr(),
            "/v1/authorize/Consent?x=1",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-jws-signature", &fresh_signature),
            ],
            fresh.as_bytes(),
        )
        .await;
    assert_eq!(envoy.status, 200, "{}", envoy.body);
    // The same with the old stamp: the envelope is refused where the bare route would not look.
    let stale = net
        .authorize_at(
            net.verify_addr(),
            "/v1/authorize/Consent",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-jws-signature", &signature),
            ],
            BODY,
        )
        .await;
    rebit(&stale, 400, "InvalidRequest");
    net.stop().await;
}

#[tokio::test]
async fn bodies_over_the_cap_get_413_and_arbitrary_headers_never_a_500() {
    let net = start().await;
    let url = format!(
        "http://{}/v1/verify-signature?sender={AA}&type=AA",
        net.addr
    );
    let signature = net.iam().sim.cr_sign(AA, BODY).unwrap();
    let big = vec![b'x'; MAX_BODY + 1];
    let declared = net
        .http
        .post(&url)
        .header("x-jws-signature", &signature)
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), 413);
    assert_eq!(
        chunked_status(net.addr, &signature, MAX_BODY + 4096).await,
        413
    );
    let signed_big = net
        .http
        .post(format!("http://{}/v1/sign", net.addr))
        .guarded()
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(signed_big.status(), 413);
    // Arbitrary header values: a 4xx with a reason, every time.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..200 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 120) as usize;
        let mut value: Vec<u8> = (0..len)
            .map(|i| {
                let b = (seed.rotate_left(i as u32 * 5) & 0x7f) as u8;
                if b.is_ascii_graphic() { b } else { b'.' }
            })
            .collect();
        if round % 3 == 0 {
            value = format!("{}..{}", String::from_utf8_lossy(&value), "AAAA").into_bytes();
        }
        let Ok(header) = reqwest::header::HeaderValue::from_bytes(&value) else {
            continue;
        };
        let response = net
            .http
            .post(&url)
            .header("x-jws-signature", header)
            .body(value.clone())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!((400..500).contains(&status), "{value:?} → {status}");
        assert!(body["error"].as_str().is_some() && body["message"].as_str().is_some());
    }
    net.stop().await;
}

/// The status of a chunked `POST /v1/verify-signature` of `total` bytes, sent raw: no length declared, so
/// only the running count can stop it.
async fn chunked_status(addr: SocketAddr, signature: &str, total: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/verify-signature?sender={AA}&type=AA HTTP/1.1\r\nHost: 127.0.0.1\r\nx-jws-signature: {signature}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'y'; 1024];
    let mut sent = 0;
    while sent < total {
        // The server may answer and close before everything is sent.
        if stream.write_all(b"400\r\n").await.is_err()
            || stream.write_all(&chunk).await.is_err()
            || stream.write_all(b"\r\n").await.is_err()
        {
            break;
        }
        sent += chunk.len();
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = vec![0; 64];
    let n = stream.read(&mut answer).await.unwrap();
    let line = String::from_utf8_lossy(&answer[..n]).to_string();
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_key_file_is_re_read_when_it_changes_and_never_appears_in_the_log() {
    let net = start().await;
    let first = net.sign(BODY).await.body["signature"]
        .as_str()
        .unwrap()
        .to_string();
    let pem = net.iam().sim.cr_private_key_pem(AA_OTHER).unwrap();
    // A new file in place of the old one, as a Secret volume update does.
    let staged = net.signing_key_path().with_extension("new");
    std::fs::write(&staged, &pem).unwrap();
    std::fs::rename(&staged, net.signing_key_path()).unwrap();
    let second = net.sign(BODY).await.body["signature"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(first, second);
    // The other key, under the configured kid: the very bytes that key gives for that header.
    let header = format!(
        r#"{{"alg":"RS256","kid":"{}","b64":false,"crit":["b64"]}}"#,
        net.signing_kid()
    );
    assert_eq!(
        second,
        net.iam()
            .sim
            .cr_sign_with_header(AA_OTHER, &header, BODY)
            .unwrap()
    );
    net.stop().await;
}

#[tokio::test]
async fn the_commands_sign_and_verify_a_body_on_stdin() {
    let net = start().await;
    let key = net.signing_key_path().to_str().unwrap().to_string();
    let pem = std::fs::read_to_string(net.signing_key_path()).unwrap();
    let pem_line = pem.lines().nth(3).unwrap().to_string();
    let signed = run_with_stdin(
        &[
            "sign",
            "--signing-key-file",
            &key,
            "--signing-kid",
            net.signing_kid(),
        ],
        &[],
        BODY,
    )
    .await;
    assert_eq!(signed.0, 0, "{}", signed.2);
    let signature = signed.1.trim().to_string();
    assert_eq!(signature, net.iam().sim.cr_sign(ENTITY, BODY).unwrap());
    assert!(!signed.1.contains(&pem_line) && !signed.2.contains(&pem_line));
    let args = [
        "verify-signature",
        "--iam-url",
        &net.iam().url,
        "--entity-id",
        ENTITY,
        "--sender",
        ENTITY,
        "--type",
        "FIU",
        "--signature",
        &signature,
    ];
    let env = [("AA_BROKER_ENTITY_SECRET", SECRET)];
    let verified = run_with_stdin(&args, &env, BODY).await;
    assert_eq!(verified.0, 0, "{}", verified.2);
    assert!(verified.1.contains(net.signing_kid()));
    let refused = run_with_stdin(&args, &env, &tampered(BODY)).await;
    assert_eq!(refused.0, 1);
    assert!(refused.2.contains("signature_mismatch"), "{}", refused.2);
    let missing = run(
        &["sign", "--signing-key-file", "/nonexistent/key.pem"],
        &[] as &[(&str, &str)],
    );
    assert_eq!(missing.0, 2);
    net.stop().await;
}

/// Runs the binary with `stdin`, off the test's runtime (the simulator it calls runs on that runtime).
async fn run_with_stdin(
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &[u8],
) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let stdin = stdin.to_vec();
    tokio::task::spawn_blocking(move || run_blocking(&args, &env, &stdin))
        .await
        .unwrap()
}

fn run_blocking(args: &[String], env: &[(String, String)], stdin: &[u8]) -> (i32, String, String) {
    use std::io::Write;
    let mut child = crate::common::process::broker_command()
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A command that refuses its arguments exits before reading stdin: a broken pipe is not a failure.
    if let Some(mut pipe) = child.stdin.take() {
        let _ = pipe.write_all(stdin);
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_served_broker_logs_the_kid_and_the_path_never_the_key() {
    let iam = Iam::start(86_400).await;
    let kid = iam.sim.cr_register(ENTITY, "FIU").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key.pem");
    let pem = iam.sim.cr_private_key_pem(ENTITY).unwrap();
    std::fs::write(&key_path, &pem).unwrap();
    let key = key_path.to_str().unwrap().to_string();
    let url = iam.url.clone();
    let kid_arg = kid.clone();
    let mut served = tokio::task::spawn_blocking(move || {
        crate::common::process::spawn_serve(
            &[
                "--listen",
                "127.0.0.1:0",
                "--signing-key-file",
                &key,
                "--signing-kid",
                &kid_arg,
            ],
            &[
                ("AA_BROKER_IAM_URL", url.as_str()),
                ("AA_BROKER_ENTITY_ID", ENTITY),
                ("AA_BROKER_ENTITY_SECRET", SECRET),
                ("AA_BROKER_LOG", "trace"),
            ],
        )
    })
    .await
    .unwrap();
    let client = http_client();
    let signed = client
        .post(format!("http://{}/v1/sign", served.addr))
        .guarded()
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 200);
    crate::common::process::terminate(&served.child);
    crate::common::process::wait_exit(&mut served.child, Duration::from_secs(15));
    let log = served.log.lock().unwrap().clone();
    assert!(log.contains(&kid), "{log}");
    for line in pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
    {
        assert!(
            !log.contains(&line[..16]),
            "a line of the key is in the log"
        );
    }
}

/// A broken signing key shows where an operator looks: `/readyz` names it per entity (and stays 200:
/// tokens still flow), `/v1/sign`'s outcome and the key's state are metrics, exported at 0 from start.
#[tokio::test]
async fn a_broken_signing_key_shows_in_readyz_and_the_metrics_without_making_tokens_unready() {
    let net = start().await;
    let failed =
        format!(r#"aa_broker_sign_requests_total{{entity="{ENTITY}",outcome="key_unavailable"}}"#);
    let signed = format!(r#"aa_broker_sign_requests_total{{entity="{ENTITY}",outcome="signed"}}"#);
    let valid = format!(r#"aa_broker_signing_key_valid{{entity="{ENTITY}"}}"#);
    assert_eq!(
        net.sample(&failed).await,
        Some(0.0),
        "exported at 0 from start"
    );
    assert_eq!(net.sample(&signed).await, Some(0.0));
    assert_eq!(net.sample(&valid).await, Some(1.0));
    assert_eq!(net.sign(BODY).await.status, 200);
    assert_eq!(net.sample(&signed).await, Some(1.0));
    let readyz = |net: &TestBroker| {
        let url = format!("http://{}/readyz", net.addr);
        let http = net.http.clone();
        async move {
            let response = http.get(url).send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (status, body) = readyz(&net).await;
    assert_eq!(status, 200);
    assert_eq!(body["signing"][ENTITY]["state"], "ok", "{body}");
    assert_eq!(body["signing"][ENTITY]["kid"], net.signing_kid());

    // An EC key where the RSA key was (a wrong file in the Secret).
    std::fs::write(
        net.signing_key_path(),
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIA==\n-----END EC PRIVATE KEY-----\n",
    )
    .unwrap();
    let answer = net.sign(BODY).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.body["error"], "signing_key_unavailable");
    let (status, body) = readyz(&net).await;
    assert_eq!(status, 200, "tokens still flow: {body}");
    assert_eq!(body["ready"], true);
    let signing = &body["signing"][ENTITY];
    assert_eq!(signing["state"], "unavailable", "{body}");
    assert!(
        signing["error"]
            .as_str()
            .unwrap()
            .contains("only RSA keys are supported"),
        "{signing}"
    );
    assert_eq!(net.sample(&failed).await, Some(1.0));
    assert_eq!(net.sample(&valid).await, Some(0.0));
    net.stop().await;
}
