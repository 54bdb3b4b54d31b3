//! Verifying the tokens on incoming calls, as a forward-auth proxy and a service see it: real RS256 JWTs
//! from the simulator's realm over real HTTP on loopback. Each header form, every reason for a `401`,
//! foreign realms, algorithm confusion, key rotation and withdrawal, the rate limit on unknown `kid`s, a
//! key-endpoint outage, `403` for the wrong sender, the verify-only listener, arbitrary header bytes, and
//! the `verify` command's exit codes.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::*;
use aa_token_broker::config::BrokerSettings;
use aa_token_broker::inbound::{NoRecorder, Verifier, VerifySettings};
use aa_token_broker::simulator::{SimSettings, Simulator};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

const AA: &str = "AA-ONE";
const AA_SECRET: &str = "aa-one-secret";
const FIP: &str = "FIP-ONE";
const FIP_SECRET: &str = "fip-one-secret";

/// The simulator with an AA, a FIP and the FIU of `Iam::start`.
async fn realm() -> Iam {
    let iam = Iam::start(86_400).await;
    iam.sim
        .add_entity(AA, AA_SECRET, Duration::from_secs(90 * 86_400));
    iam.sim
        .add_entity(FIP, FIP_SECRET, Duration::from_secs(90 * 86_400));
    iam
}

/// A broker for these tests, holding the realm's key set from the start (`--verify-prefetch-keys`; see
/// `the_key_set_is_fetched_at_first_use_unless_prefetched` for the default), its settings tuned.
async fn start_broker(
    iam: &Iam,
    tune: impl FnOnce(&mut BrokerSettings) + Send + 'static,
) -> TestBroker {
    start_broker_with(iam, false, tune).await
}

/// [`start_broker`], with the verify-only listener (`--verify-listen`) if asked.
async fn start_broker_with(
    iam: &Iam,
    verify_listener: bool,
    tune: impl FnOnce(&mut BrokerSettings) + Send + 'static,
) -> TestBroker {
    let prefetch = Arc::new(AtomicBool::new(true));
    let prefetched = Arc::clone(&prefetch);
    let mut options = BrokerOptions::inline().tuned(move |settings, _| {
        settings.verify.policy.prefetch = true;
        tune(settings);
        prefetched.store(settings.verify.policy.prefetch, Ordering::SeqCst);
    });
    options.verify_listener = verify_listener;
    let broker = TestBroker::start(&iam.url, options).await;
    if prefetch.load(Ordering::SeqCst) {
        broker.wait_keys().await;
    }
    broker
}

/// `/v1/verify`, called as a forward-auth proxy and a service call it.
trait Verification {
    async fn verify_get(&self, query: &str, headers: &[(&str, &str)]) -> Answer;
    async fn verify_get_at(
        &self,
        addr: SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Answer;
    async fn bearer(&self, token: &str) -> Answer;
    async fn verify_post(&self, body: Value) -> Answer;
}

impl Verification for TestBroker {
    /// `GET /v1/verify` with these headers (and no `Metadata` header: none is needed).
    async fn verify_get(&self, query: &str, headers: &[(&str, &str)]) -> Answer {
        self.verify_get_at(self.addr, query, headers).await
    }

    async fn verify_get_at(
        &self,
        addr: SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = self.http.get(format!("http://{addr}/v1/verify{query}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        answer(request.send().await.unwrap()).await
    }

    async fn bearer(&self, token: &str) -> Answer {
        self.verify_get("", &[("Authorization", &format!("Bearer {token}"))])
            .await
    }

    async fn verify_post(&self, body: Value) -> Answer {
        answer(
            self.http
                .post(self.url("/v1/verify"))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }
}

async fn wait_until<F, Fut>(within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_invalid(answer: &Answer, message: &str) {
    assert_eq!(answer.status, 401, "{:?}", answer.body);
    assert_eq!(answer.body["error"], "invalid_token");
    assert_eq!(answer.body["message"], message, "{:?}", answer.body);
    assert_eq!(
        answer.headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// Claims like the IAM's for `id`, valid for an hour, under `issuer`.
fn claims_for(id: &str, role: &str, issuer: &str) -> Value {
    let now = now_secs() as u64;
    json!({
        "iss": issuer, "exp": now + 3600, "iat": now, "jti": format!("jti-{}", fastrand::u64(..)),
        "aud": "account", "typ": "Bearer", "azp": id, "clientId": id, "roles": role,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_verifies_in_each_header_form_and_by_post() {
    let iam = realm().await;
    let broker = start_broker(&iam, |_| {}).await;
    let token = iam.entity_token(AA, AA_SECRET).await;
    let forms = [
        ("Authorization", format!("Bearer {token}")),
        ("Authorization", format!("bearer  {token}")),
        ("client_api_key", token.clone()),
        ("aa_api_key", token.clone()),
        // Sahamati's Router scripts send the ReBIT headers with the scheme.
        ("client_api_key", format!("Bearer {token}")),
        ("aa_api_key", format!("bearer {token}")),
    ];
    for (name, value) in &forms {
        // No `Metadata` header, and the forwarding headers a proxy adds: neither matters here.
        let answer = broker
            .verify_get(
                "",
                &[
                    (*name, value.as_str()),
                    ("X-Forwarded-For", "203.0.113.7"),
                    ("Forwarded", "for=203.0.113.7"),
                ],
            )
            .await;
        assert_eq!(answer.status, 200, "{name}: {:?}", answer.body);
        assert_eq!(answer.headers["x-aa-entity-id"], AA);
        assert_eq!(answer.headers["x-aa-role"], "AA");
        assert_eq!(answer.headers["cache-control"], "no-store");
        let body = &answer.body;
        assert_eq!(body["entityId"], AA);
        assert_eq!(body["role"], "AA");
        assert_eq!(body["issuer"], iam.sim.issuer());
        assert_eq!(body["claims"]["azp"], AA);
        assert_eq!(body["claims"]["iss"], iam.sim.issuer());
        let expires_in = body["expiresIn"].as_u64().unwrap();
        assert!((86_300..=86_400).contains(&expires_in), "{expires_in}");
        let exp = body["claims"]["exp"].as_u64().unwrap();
        assert_eq!(
            aa_token_broker::timefmt::parse_iam_timestamp(body["expiresAt"].as_str().unwrap()),
            Some(std::time::UNIX_EPOCH + Duration::from_secs(exp))
        );
    }
    let posted = broker
        .verify_post(json!({ "token": token, "role": "AA", "entityId": AA }))
        .await;
    assert_eq!(posted.status, 200, "{:?}", posted.body);
    assert_eq!(posted.body["entityId"], AA);
    assert_eq!(posted.headers["x-aa-role"], "AA");
    // The first answer verified the signature; the others came from the cache.
    assert_eq!(
        broker
            .metric("aa_broker_verifications_total{outcome=\"valid\",reason=\"verified\"}")
            .await,
        1.0
    );
    assert_eq!(
        broker
            .metric("aa_broker_verifications_total{outcome=\"valid\",reason=\"cached\"}")
            .await,
        forms.len() as f64
    );
    // The header names the sender's role: an AA's token in `fip_api_key` is the wrong sender, and two
    // ReBIT headers carrying different tokens are ambiguous.
    let wrong = broker
        .verify_get("", &[("fip_api_key", token.as_str())])
        .await;
    assert_eq!(wrong.status, 403, "{:?}", wrong.body);
    assert_eq!(wrong.body["error"], "wrong_role");
    let other = iam.entity_token(FIP, FIP_SECRET).await;
    let ambiguous = broker
        .verify_get(
            "",
            &[
                ("aa_api_key", token.as_str()),
                ("client_api_key", other.as_str()),
            ],
        )
        .await;
    assert_eq!(ambiguous.status, 401);
    assert_eq!(
        ambiguous.body["message"],
        "the ReBIT api-key headers carry different tokens"
    );
    // A gateway's own token in Authorization beside the ReBIT header: the ReBIT header is the credential.
    let beside = broker
        .verify_get(
            "",
            &[
                ("Authorization", "Bearer not-even-a-jwt"),
                ("aa_api_key", token.as_str()),
            ],
        )
        .await;
    assert_eq!(beside.status, 200, "{:?}", beside.body);
    // A typo in the query is named, not ignored.
    let typo = broker
        .verify_get("?Role=FIU", &[("aa_api_key", token.as_str())])
        .await;
    assert_eq!(typo.status, 400);
    assert!(
        typo.body["message"].as_str().unwrap().contains("\"Role\""),
        "{:?}",
        typo.body
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_token_gets_the_same_answer_from_the_hot_path_as_from_the_router() {
    let iam = realm().await;
    let broker = start_broker(&iam, |_| {}).await;
    let token = iam.entity_token(FIP, FIP_SECRET).await;
    // The first sight goes through the router (a cache miss); the second is answered in front of it.
    let first = broker
        .verify_get("?role=FIP", &[("fip_api_key", &token)])
        .await;
    let second = broker
        .verify_get("?role=FIP", &[("fip_api_key", &token)])
        .await;
    assert_eq!((first.status, second.status), (200, 200));
    let strip = |mut body: Value| {
        body.as_object_mut().unwrap().remove("expiresIn");
        body
    };
    assert_eq!(strip(first.body), strip(second.body.clone()));
    for name in [
        "content-type",
        "cache-control",
        "x-aa-entity-id",
        "x-aa-role",
    ] {
        assert_eq!(first.headers.get(name), second.headers.get(name), "{name}");
    }
    // The same holds for a refusal from the cache.
    let wrong = broker
        .verify_get("?role=AA", &[("fip_api_key", &token)])
        .await;
    assert_eq!(wrong.status, 403);
    assert_eq!(wrong.body["error"], "wrong_role");
    assert_eq!(
        broker
            .metric("aa_broker_verifications_total{outcome=\"valid\",reason=\"cached\"}")
            .await,
        1.0
    );
    // Within a second the hot path reuses the bytes it rendered; a later second states the seconds then
    // left, never the ones rendered before.
    let exp = claims(&token)["exp"].as_f64().unwrap();
    let third = broker
        .verify_get("?role=FIP", &[("fip_api_key", &token)])
        .await;
    assert_eq!(third.status, 200);
    assert_eq!(strip(third.body.clone()), strip(second.body.clone()));
    let before = third.body["expiresIn"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = broker
        .verify_get("?role=FIP", &[("fip_api_key", &token)])
        .await;
    let left = later.body["expiresIn"].as_u64().unwrap();
    assert!(left < before, "{left} after {before}");
    assert!((left as f64 - (exp - now_secs())).abs() <= 1.0, "{left}");
    assert_eq!(
        later.headers.get("x-aa-role"),
        second.headers.get("x-aa-role")
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_empty_zero_and_tampered_tokens_are_refused_with_the_reason() {
    let iam = realm().await;
    let broker = start_broker(&iam, |_| {}).await;
    let token = iam.entity_token(FIP, FIP_SECRET).await;
    assert_invalid(&broker.verify_get("", &[]).await, "missing");
    assert_invalid(
        &broker.verify_get("", &[("client_api_key", "")]).await,
        "missing",
    );
    assert_invalid(
        &broker.verify_get("", &[("Authorization", "Bearer ")]).await,
        "missing",
    );
    assert_invalid(
        &broker.verify_get("", &[("aa_api_key", "0")]).await,
        "malformed",
    );
    assert_invalid(
        &broker.verify_get("", &[("fip_api_key", "null")]).await,
        "malformed",
    );
    assert_invalid(&broker.bearer("a.b.c").await, "malformed");
    // Another scheme in Authorization is not a token; nothing else carries one.
    assert_invalid(
        &broker
            .verify_get("", &[("Authorization", "Basic Zm9vOmJhcg==")])
            .await,
        "missing",
    );
    assert_invalid(&broker.verify_post(json!({})).await, "missing");
    assert_invalid(
        &broker.verify_post(json!({ "token": "0" })).await,
        "malformed",
    );

    // Tampering: the claims (claiming to be someone else), the signature, the header.
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims = claims(&token);
    claims["azp"] = json!(AA);
    claims["clientId"] = json!(AA);
    claims["roles"] = json!("AA");
    let forged = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);
    assert_invalid(&broker.bearer(&forged).await, "bad signature");
    let mut signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    signature[0] ^= 0x80;
    let flipped = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        URL_SAFE_NO_PAD.encode(&signature)
    );
    assert_invalid(&broker.bearer(&flipped).await, "bad signature");
    let truncated = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..40]);
    assert_invalid(&broker.bearer(&truncated).await, "bad signature");
    // The genuine token still verifies, and the rejections were counted by reason.
    assert_eq!(broker.bearer(&token).await.status, 200);
    assert_eq!(
        broker
            .metric("aa_broker_verifications_total{outcome=\"invalid\",reason=\"bad_signature\"}")
            .await,
        3.0
    );
    assert_eq!(
        broker
            .metric("aa_broker_verifications_total{outcome=\"invalid\",reason=\"missing\"}")
            .await,
        5.0
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_not_yet_valid_tokens_are_refused() {
    let iam = realm().await;
    let broker = start_broker(&iam, |_| {}).await;
    // The IAM's clock two days behind: its 24 h token expired a day ago.
    iam.sim
        .update_settings(|s| s.clock_offset_secs = -2 * 86_400);
    let expired = iam.entity_token(AA, AA_SECRET).await;
    assert_invalid(&broker.bearer(&expired).await, "expired");
    // An hour ahead: issued in the future, beyond the 60 s leeway.
    iam.sim.update_settings(|s| s.clock_offset_secs = 3600);
    let early = iam.entity_token(AA, AA_SECRET).await;
    assert_invalid(&broker.bearer(&early).await, "not yet valid");
    // Within the leeway either way: accepted.
    iam.sim.update_settings(|s| s.clock_offset_secs = 30);
    assert_eq!(
        broker
            .bearer(&iam.entity_token(AA, AA_SECRET).await)
            .await
            .status,
        200
    );
    iam.sim.update_settings(|s| s.clock_offset_secs = 0);
    // `nbf` in the future, and a token without `exp`, from the realm's own key.
    let issuer = iam.sim.issuer();
    let mut not_before = claims_for(AA, "AA", &issuer);
    not_before["nbf"] = json!(now_secs() as u64 + 600);
    assert_invalid(
        &broker
            .bearer(&iam.sim.sign_token(&not_before).unwrap())
            .await,
        "not yet valid",
    );
    let mut no_exp = claims_for(AA, "AA", &issuer);
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_invalid(
        &broker.bearer(&iam.sim.sign_token(&no_exp).unwrap()).await,
        "malformed",
    );
    // An admin (user) token of the same realm is not an entity token: no `clientId`, no `roles`, and the
    // entities it administers in `entity_meta` (spec §3.3).
    let mut user = claims_for("DEV-Entity-Admin", "AA", &issuer);
    let fields = user.as_object_mut().unwrap();
    fields.remove("clientId");
    fields.remove("roles");
    fields.insert("email".into(), json!("admin@example.org"));
    assert_invalid(
        &broker.bearer(&iam.sim.sign_token(&user).unwrap()).await,
        "malformed",
    );
    // Even with a `roles` claim added, `entity_meta` marks a user token.
    user["roles"] = json!("AA");
    user["entity_meta"] = json!({ "AA-ONE": ["entity-admin"] });
    assert_invalid(
        &broker.bearer(&iam.sim.sign_token(&user).unwrap()).await,
        "malformed",
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_result_never_outlives_the_token() {
    let iam = Iam::start(3).await;
    let broker = start_broker(&iam, |s| s.verify.leeway = Duration::ZERO).await;
    let token = iam.entity_token(ENTITY, SECRET).await;
    let exp = claims(&token)["exp"].as_f64().unwrap();
    assert_eq!(broker.bearer(&token).await.status, 200);
    assert_eq!(broker.bearer(&token).await.status, 200);
    tokio::time::sleep(Duration::from_secs_f64((exp - now_secs()).max(0.0) + 1.1)).await;
    assert_invalid(&broker.bearer(&token).await, "expired");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_a_foreign_realm_are_refused() {
    let iam = realm().await;
    let broker = start_broker(&iam, |_| {}).await;
    // Another realm: another key and, by default, another issuer (its own address).
    let foreign = Simulator::new(SimSettings::default()).unwrap();
    foreign.rotate_realm_key().unwrap();
    foreign.drop_retired_realm_keys();
    foreign.add_entity(AA, AA_SECRET, Duration::from_secs(86_400));
    let foreign_url = foreign.spawn_local().await.unwrap();
    assert_ne!(foreign.issuer(), iam.sim.issuer());
    assert_ne!(foreign.realm_kid(), iam.sim.realm_kid());
    let fetches = iam.sim.jwks_fetches();
    let token = entity_token(&foreign_url, AA, AA_SECRET).await;
    assert_invalid(&broker.bearer(&token).await, "issuer not allowed");

    // Someone's own Keycloak claiming our issuer: its key is not ours.
    foreign.update_realm_settings(|s| s.issuer = Some(iam.sim.issuer()));
    let same_issuer = entity_token(&foreign_url, AA, AA_SECRET).await;
    assert_eq!(claims(&same_issuer)["iss"], iam.sim.issuer());
    assert_invalid(&broker.bearer(&same_issuer).await, "unknown key");
    // ... and naming our key's kid, signed with its own key.
    let header = json!({ "alg": "RS256", "typ": "JWT", "kid": iam.sim.realm_kid() });
    let borrowed_kid = foreign
        .sign_token_with_header(&header, &claims_for(AA, "AA", &iam.sim.issuer()))
        .unwrap();
    assert_invalid(&broker.bearer(&borrowed_kid).await, "bad signature");
    // The unknown kid cost one look at our key set, never a fetch from the foreign realm's.
    assert_eq!(iam.sim.jwks_fetches(), fetches + 1);
    assert_eq!(foreign.jwks_fetches(), 0);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_and_hmac_tokens_are_refused_as_such() {
    let iam = realm().await;
    let broker = start_broker(&iam, |_| {}).await;
    let claims = claims_for(AA, "AA", &iam.sim.issuer());
    let payload = b64(&claims);
    let kid = iam.sim.realm_kid();
    for alg in ["none", "None", "NONE"] {
        let header = b64(&json!({ "alg": alg, "typ": "JWT" }));
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
            format!("{header}.{payload}.c2lnbmF0dXJl"),
        ] {
            let answer = broker.bearer(&token).await;
            assert_eq!(answer.status, 401);
            assert!(
                answer.body["message"] == "algorithm not allowed"
                    || answer.body["message"] == "malformed",
                "{alg}: {:?}",
                answer.body
            );
        }
        assert_invalid(
            &broker.bearer(&format!("{header}.{payload}.")).await,
            "algorithm not allowed",
        );
    }
    // HS256 "signed" with the realm's public key: the JWKS document, and the modulus, as HMAC secrets.
    let jwks = iam.sim.jwks();
    let modulus = URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["n"].as_str().unwrap())
        .unwrap();
    for secret in [jwks.to_string().into_bytes(), modulus] {
        for alg in ["HS256", "HS384", "HS512"] {
            let header = b64(&json!({ "alg": alg, "typ": "JWT", "kid": kid }));
            let input = format!("{header}.{payload}");
            let algorithm = match alg {
                "HS256" => ring::hmac::HMAC_SHA256,
                "HS384" => ring::hmac::HMAC_SHA384,
                _ => ring::hmac::HMAC_SHA512,
            };
            let mac = ring::hmac::sign(&ring::hmac::Key::new(algorithm, &secret), input.as_bytes());
            let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()));
            assert_invalid(&broker.bearer(&token).await, "algorithm not allowed");
        }
    }
    // A real RS256 signature under a header that says otherwise does not pass either.
    let relabelled = iam
        .sim
        .sign_token_with_header(&json!({ "alg": "PS256", "kid": kid }), &claims)
        .unwrap();
    assert_invalid(&broker.bearer(&relabelled).await, "algorithm not allowed");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_costs_one_key_fetch() {
    let iam = realm().await;
    let broker = start_broker(&iam, |_| {}).await;
    let fetches = iam.sim.jwks_fetches();
    let issuer = iam.sim.issuer();
    let forged: Vec<String> = (0..300)
        .map(|i| {
            let header =
                json!({ "alg": "RS256", "kid": format!("forged-{i}-{}", fastrand::u64(..)) });
            iam.sim
                .sign_token_with_header(&header, &claims_for(AA, "AA", &issuer))
                .unwrap()
        })
        .collect();
    let mut requests = tokio::task::JoinSet::new();
    for token in forged.clone() {
        let request = broker
            .http
            .get(broker.url("/v1/verify"))
            .header("Authorization", format!("Bearer {token}"));
        requests.spawn(async move { answer(request.send().await.unwrap()).await });
    }
    while let Some(answer) = requests.join_next().await {
        assert_invalid(&answer.unwrap(), "unknown key");
    }
    assert_eq!(
        iam.sim.jwks_fetches(),
        fetches + 1,
        "300 forged kids, one refetch"
    );
    // And for a while after, none at all.
    for token in forged.iter().take(20) {
        assert_invalid(&broker.bearer(token).await, "unknown key");
    }
    assert_eq!(iam.sim.jwks_fetches(), fetches + 1);
    assert!(
        broker
            .metric("aa_broker_jwks_unknown_kid_refused_total")
            .await
            >= 20.0
    );
    assert_eq!(
        broker
            .metric(&format!(
                "aa_broker_jwks_fetches_total{{url=\"{issuer}/protocol/openid-connect/certs\",trigger=\"unknown_kid\",outcome=\"ok\"}}"
            ))
            .await,
        1.0
    );
    // A genuine token keeps verifying meanwhile.
    let token = iam.entity_token(AA, AA_SECRET).await;
    assert_eq!(broker.bearer(&token).await.status, 200);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_set_is_fetched_at_first_use_unless_prefetched() {
    let iam = realm().await;
    let broker = start_broker(&iam, |s| {
        s.verify.policy.prefetch = false;
        s.verify.policy.refresh_interval = Duration::from_millis(300);
    })
    .await;
    // A pod that verifies nothing fetches nothing, and says so.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(iam.sim.jwks_fetches(), 0);
    let readyz = broker.readyz().await.1;
    assert_eq!(
        readyz["ready"], true,
        "token readiness is not the key set's"
    );
    assert_eq!(readyz["verify"]["keySets"][0]["state"], "pending");
    // The first verifications wait for one fetch, and verify.
    iam.sim.update_realm_settings(|s| s.jwks_delay_ms = 300);
    let mut first = tokio::task::JoinSet::new();
    for (id, secret) in [(AA, AA_SECRET), (FIP, FIP_SECRET), (ENTITY, SECRET)] {
        let token = iam.entity_token(id, secret).await;
        let request = broker
            .http
            .get(broker.url("/v1/verify"))
            .header("Authorization", format!("Bearer {token}"));
        first.spawn(async move { request.send().await.unwrap().status().as_u16() });
    }
    assert_eq!(first.join_all().await, [200, 200, 200]);
    assert_eq!(iam.sim.jwks_fetches(), 1);
    assert_eq!(broker.key_set_state().await, "fresh");
    let url = format!("{}/protocol/openid-connect/certs", iam.sim.issuer());
    assert_eq!(
        broker
            .metric(&format!(
                "aa_broker_jwks_fetches_total{{url=\"{url}\",trigger=\"first_use\",outcome=\"ok\"}}"
            ))
            .await,
        1.0
    );
    // From then on, the schedule runs.
    iam.sim.update_realm_settings(|s| s.jwks_delay_ms = 0);
    wait_until(Duration::from_secs(5), || async {
        iam.sim.jwks_fetches() >= 3
    })
    .await;
    broker.stop().await;

    // With --verify-prefetch-keys, the key set is fetched at start, with nothing to verify.
    let fetches = iam.sim.jwks_fetches();
    let prefetched = start_broker(&iam, |s| s.verify.policy.prefetch = true).await;
    assert_eq!(prefetched.key_set_state().await, "fresh");
    assert_eq!(iam.sim.jwks_fetches(), fetches + 1);
    prefetched.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_hangs_up_during_a_key_refetch_leaves_nothing_stuck() {
    let iam = realm().await;
    let broker = start_broker(&iam, |_| {}).await;
    // The realm rotates its key, and its key endpoint is slow: a token with the new kid makes the broker
    // refetch, and the caller gives up while the refetch is under way.
    iam.sim.rotate_realm_key().unwrap();
    let first = iam.entity_token(AA, AA_SECRET).await;
    iam.sim.update_realm_settings(|s| s.jwks_delay_ms = 1500);
    let fetches = iam.sim.jwks_fetches();
    let impatient = broker
        .http
        .get(broker.url("/v1/verify"))
        .header("Authorization", format!("Bearer {first}"))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(
        impatient.as_ref().is_err_and(|e| e.is_timeout()),
        "{impatient:?}"
    );
    assert_eq!(iam.sim.jwks_fetches(), fetches + 1, "the refetch started");
    // Another genuine token signed with the rotated key is answered as soon as that refetch lands, by
    // that refetch: the caller who left took nothing with it.
    let genuine = iam.entity_token(FIP, FIP_SECRET).await;
    let started = std::time::Instant::now();
    let answer = broker
        .http
        .get(broker.url("/v1/verify"))
        .header("Authorization", format!("Bearer {genuine}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("answered, not left waiting on a refetch nobody finishes");
    assert_eq!(answer.status(), 200);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        iam.sim.jwks_fetches(),
        fetches + 1,
        "one refetch served both"
    );
    // And the first token verifies too, from the keys that refetch stored.
    iam.sim.update_realm_settings(|s| s.jwks_delay_ms = 0);
    assert_eq!(broker.bearer(&first).await.status, 200);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_fetched_once_and_a_withdrawn_one_stops_verifying() {
    let iam = realm().await;
    let broker = start_broker(&iam, |s| {
        s.verify.policy.refresh_interval = Duration::from_millis(300);
    })
    .await;
    let before = iam.entity_token(AA, AA_SECRET).await;
    let before_unseen = iam.entity_token(FIP, FIP_SECRET).await;
    assert_eq!(broker.bearer(&before).await.status, 200);
    let old_kid = iam.sim.realm_kid();
    let new_kid = iam.sim.rotate_realm_key().unwrap();
    assert_ne!(old_kid, new_kid);
    let after = iam.entity_token(AA, AA_SECRET).await;
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(after.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], new_kid);
    // The new kid is fetched at once (or found by the scheduled fetch), and the old key still verifies.
    let answer = broker.bearer(&after).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(broker.bearer(&before_unseen).await.status, 200);
    assert_eq!(broker.bearer(&before).await.status, 200);

    // The realm withdraws the old key: the next fetch drops it, with the results verified by it.
    iam.sim.drop_retired_realm_keys();
    let fetches = iam.sim.jwks_fetches();
    wait_until(Duration::from_secs(5), || async {
        iam.sim.jwks_fetches() >= fetches + 2
    })
    .await;
    assert_invalid(&broker.bearer(&before).await, "unknown key");
    assert_invalid(&broker.bearer(&before_unseen).await, "unknown key");
    assert_eq!(broker.bearer(&after).await.status, 200);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_key_endpoint_outage_the_keys_held_keep_verifying() {
    let iam = realm().await;
    let broker = start_broker(&iam, |s| {
        s.verify.policy.refresh_interval = Duration::from_millis(200);
        s.verify.policy.retry_base = Duration::from_millis(100);
    })
    .await;
    iam.sim.update_realm_settings(|s| s.jwks_status = Some(503));
    wait_until(Duration::from_secs(5), || async {
        broker.key_set_state().await == "stale"
    })
    .await;
    // Tokens never seen before: verified with the keys held, not from the result cache.
    for (id, secret) in [(AA, AA_SECRET), (FIP, FIP_SECRET), (ENTITY, SECRET)] {
        let token = iam.entity_token(id, secret).await;
        let answer = broker.bearer(&token).await;
        assert_eq!(answer.status, 200, "{id}: {:?}", answer.body);
    }
    let readyz = broker.readyz().await.1;
    let key_set = &readyz["verify"]["keySets"][0];
    assert_eq!(key_set["state"], "stale");
    assert_eq!(key_set["keys"], 1);
    assert_eq!(key_set["lastError"], "HTTP 503");
    assert!(key_set["consecutiveFailures"].as_u64().unwrap() >= 1);
    assert!(key_set["ageSeconds"].as_u64().is_some());
    assert_eq!(
        readyz["ready"], true,
        "token readiness is not the key set's"
    );
    assert_eq!(readyz["verify"]["issuers"][0], iam.sim.issuer());
    // The endpoint comes back; the key set is fresh again.
    iam.sim.update_realm_settings(|s| s.jwks_status = None);
    wait_until(Duration::from_secs(5), || async {
        broker.key_set_state().await == "fresh"
    })
    .await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_of_the_wrong_sender_is_forbidden() {
    let iam = realm().await;
    let broker = start_broker(&iam, |_| {}).await;
    let token = iam.entity_token(AA, AA_SECRET).await;
    let header = [("aa_api_key", token.as_str())];
    let wrong_role = broker.verify_get("?role=FIU", &header).await;
    assert_eq!(wrong_role.status, 403);
    assert_eq!(wrong_role.body["error"], "wrong_role");
    assert!(wrong_role.headers.get("x-aa-entity-id").is_none());
    let wrong_entity = broker
        .verify_get(&format!("?entityId={FIP}"), &header)
        .await;
    assert_eq!(wrong_entity.status, 403);
    assert_eq!(wrong_entity.body["error"], "wrong_entity");
    for query in [
        format!("?role=AA&entityId={AA}"),
        "?role=FIU,AA".to_string(),
        "?role=fiu%2Caa".to_string(),
        String::new(),
    ] {
        assert_eq!(
            broker.verify_get(&query, &header).await.status,
            200,
            "{query}"
        );
    }
    // A second `role` or `entityId` (a caller's query appended to the proxy's) is refused, not merged.
    assert_eq!(
        broker.verify_get("?role=AA&role=FIU", &header).await.status,
        400
    );
    assert_eq!(
        broker
            .verify_get(&format!("?entityId={AA}&entityId={FIP}"), &header)
            .await
            .status,
        400
    );
    let posted = broker
        .verify_post(json!({ "token": token, "role": "FIP" }))
        .await;
    assert_eq!(posted.status, 403);
    assert_eq!(posted.body["error"], "wrong_role");
    let posted = broker
        .verify_post(json!({ "token": token, "entityId": FIP }))
        .await;
    assert_eq!(posted.body["error"], "wrong_entity");
    // A mistake in the expectation is the caller's: 400.
    assert_eq!(broker.verify_get("?role=CR", &header).await.status, 400);
    assert_eq!(
        broker
            .verify_post(json!({ "token": token, "role": "X" }))
            .await
            .status,
        400
    );
    let not_json = broker
        .http
        .post(broker.url("/v1/verify"))
        .body("token=abc")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    assert_eq!(
        broker
            .metric("aa_broker_verifications_total{outcome=\"forbidden\",reason=\"wrong_role\"}")
            .await,
        2.0
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forms_forward_auth_proxies_send_are_verified_from_the_headers() {
    let iam = realm().await;
    let broker = start_broker_with(&iam, true, |_| {}).await;
    let verify_addr = broker.verify_addr.expect("verify listener");
    let token = iam.entity_token(AA, AA_SECRET).await;
    // nginx `auth_request` keeps the original method: a POST with no body reads the headers.
    let post = broker
        .http
        .post(broker.url("/v1/verify?role=AA"))
        .header("aa_api_key", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 200);
    assert_eq!(post.headers()["x-aa-entity-id"], AA);
    let post = broker
        .http
        .post(broker.url("/v1/verify?role=FIU"))
        .header("aa_api_key", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 403);
    // Envoy `ext_authz` (HTTP service) sends its path prefix and the original path and query, with the
    // original method and Host. The original query is the caller's: it sets no expectation.
    for method in [
        reqwest::Method::POST,
        reqwest::Method::GET,
        reqwest::Method::PUT,
    ] {
        let response = broker
            .http
            .request(
                method.clone(),
                format!("http://{verify_addr}/v1/verify/FI/Notification?role=FIU&entityId=FIU-X"),
            )
            .header("Authorization", format!("Bearer {token}"))
            .header("Host", "fiu.example.in")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{method}");
        assert_eq!(response.headers()["x-aa-role"], "AA");
    }
    let missing = broker
        .http
        .post(format!(
            "http://{verify_addr}/v1/verify/Consent/Notification"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(
        missing.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verify_listener_serves_verification_and_never_tokens() {
    let iam = realm().await;
    let broker = start_broker_with(&iam, true, |_| {}).await;
    let verify_addr = broker.verify_addr.expect("verify listener");
    let token = iam.entity_token(FIP, FIP_SECRET).await;
    // From another pod: a non-loopback Host and forwarding headers, no Metadata header.
    let from_ingress = [
        ("Authorization", format!("Bearer {token}")),
        ("Host", "fiu.example.in".to_string()),
        ("X-Forwarded-For", "10.1.2.3".to_string()),
    ];
    let headers: Vec<(&str, &str)> = from_ingress.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let answer = broker
        .verify_get_at(verify_addr, "?role=FIP", &headers)
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.headers["x-aa-entity-id"], FIP);
    // The token port keeps its loopback Host rule, on the verify route too.
    let answer = broker.verify_get_at(broker.addr, "", &headers).await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.body["error"], "forbidden");
    // Nothing but verification on the verify listener.
    for path in [
        "/v1/token",
        "/v1/token/FIU-TEST",
        "/readyz",
        "/metrics",
        "/healthz",
    ] {
        let response = broker
            .http
            .get(format!("http://{verify_addr}{path}"))
            .guarded()
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    let refresh = broker
        .http
        .post(format!("http://{verify_addr}/v1/token/refresh"))
        .guarded()
        .send()
        .await
        .unwrap();
    assert_eq!(refresh.status(), 404);
    let put = broker
        .http
        .put(format!("http://{verify_addr}/v1/verify"))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 405);
    let posted = broker
        .http
        .post(format!("http://{verify_addr}/v1/verify"))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_issuer_does_not_depend_on_the_host_and_its_discovery_document_leads_to_its_keys()
 {
    let iam = realm().await;
    let localhost_url = iam.url.replace("127.0.0.1", "localhost");
    let via_ip = iam.entity_token(AA, AA_SECRET).await;
    let via_name = entity_token(&localhost_url, AA, AA_SECRET).await;
    assert_eq!(claims(&via_ip)["iss"], claims(&via_name)["iss"]);
    let base = iam.url.trim_end_matches("/iam");
    let discovery: Value = http_client()
        .get(format!(
            "{base}/auth/realms/sahamati/.well-known/openid-configuration"
        ))
        .header("Host", "some.other.name")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], claims(&via_ip)["iss"]);
    let jwks: Value = http_client()
        .get(discovery["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    aa_token_broker::simulator::jwt::verify_with_jwks(&via_name, &jwks)
        .expect("the discovery document's key set verifies the token");
    // The control route rotates and reports.
    let rotated: Value = http_client()
        .post(format!("{base}/_simulator/realm/rotate"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rotated["kid"], iam.sim.realm_kid());
    let realm: Value = http_client()
        .get(format!("{base}/_simulator/realm"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(realm["publishedKids"].as_array().unwrap().len(), 2);
    assert_eq!(realm["issuer"], iam.sim.issuer());
}

/// Sends raw bytes and returns the status code of the answer.
async fn raw(addr: SocketAddr, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    std::str::from_utf8(response.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Bytes a field value may hold (RFC 9110: visible ASCII, space, tab, obs-text), so hyper passes them on.
fn field_bytes(rng: &mut fastrand::Rng, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            loop {
                let b = rng.u8(..);
                if b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80 {
                    break b;
                }
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_bytes_in_the_token_headers_are_401_over_http() {
    let iam = realm().await;
    let broker = start_broker(&iam, |_| {}).await;
    let token = iam.entity_token(AA, AA_SECRET).await;
    let mut rng = fastrand::Rng::with_seed(12);
    let names = [
        "Authorization",
        "client_api_key",
        "fip_api_key",
        "aa_api_key",
    ];
    for round in 0..400 {
        let mut request =
            b"GET /v1/verify HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".to_vec();
        let chosen: Vec<&str> = names.iter().copied().filter(|_| rng.bool()).collect();
        for name in chosen {
            request.extend_from_slice(name.as_bytes());
            request.extend_from_slice(b": ");
            let value = match rng.u8(..4) {
                0 => {
                    let len = rng.usize(..200);
                    [b"Bearer ".to_vec(), field_bytes(&mut rng, len)].concat()
                }
                // A real token with bytes spliced in.
                1 => {
                    let mut t = token.clone().into_bytes();
                    let at = rng.usize(..t.len());
                    let len = rng.usize(1..8);
                    t.splice(at..at, field_bytes(&mut rng, len));
                    t
                }
                _ => {
                    let len = rng.usize(..600);
                    field_bytes(&mut rng, len)
                }
            };
            request.extend_from_slice(&value);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"\r\n");
        let status = raw(broker.addr, &request).await;
        assert_eq!(
            status,
            401,
            "round {round}: {}",
            String::from_utf8_lossy(&request)
        );
    }
    broker.stop().await;
}

#[test]
fn arbitrary_bytes_in_any_of_the_four_headers_are_401_never_500() {
    use proptest::prelude::*;
    use tower::Service;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (router, _iam) = rt.block_on(async {
        let iam = realm().await;
        let verifier =
            Verifier::new(&VerifySettings::for_iam_url(&iam.url), Arc::new(NoRecorder)).unwrap();
        verifier.fetch_keys().await;
        assert!(verifier.has_keys());
        (
            aa_token_broker::http::verify::routes(Arc::new(
                aa_token_broker::http::verify::VerifyState {
                    verifier: Arc::new(verifier),
                    host_rule: None,
                    limits: aa_token_broker::http::body::BodyLimits {
                        budget: aa_token_broker::budget::ByteBudget::new(
                            1 << 20,
                            Duration::from_secs(1),
                        ),
                        timeout: Duration::from_secs(5),
                    },
                },
            )),
            iam,
        )
    });
    let header = prop_oneof![
        Just("authorization"),
        Just("client_api_key"),
        Just("fip_api_key"),
        Just("aa_api_key"),
    ];
    let value = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(any::<u8>(), 0..300)
            .prop_map(|v| [b"Bearer ".to_vec(), v].concat()),
        "[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,200}\\.[A-Za-z0-9_-]{0,80}"
            .prop_map(String::into_bytes),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec((header, value), 0..5), |pairs| {
            let mut request = axum::http::Request::builder().uri("/v1/verify");
            for (name, value) in &pairs {
                // Only what a header can carry reaches a server; the rest is refused by the client.
                if let Ok(value) = axum::http::HeaderValue::from_bytes(value) {
                    request = request.header(*name, value);
                }
            }
            let request = request.body(axum::body::Body::empty()).unwrap();
            let status = rt.block_on(router.clone().call(request)).unwrap().status();
            prop_assert_eq!(status.as_u16(), 401);
            Ok(())
        })
        .unwrap();
}

fn verify_command(args: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = process::broker_command()
        .arg("verify")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A configuration error exits before reading stdin: the write may then meet a closed pipe.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verify_command_exits_0_1_and_2() {
    let iam = realm().await;
    let token = iam.entity_token(FIP, FIP_SECRET).await;
    let url = iam.url.clone();
    let (code, stdout, stderr) = tokio::task::spawn_blocking({
        let token = token.clone();
        let url = url.clone();
        move || {
            verify_command(
                &["--iam-url", &url, "--role", "FIP", "--entity-id", FIP],
                &format!("{token}\n"),
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{stderr}");
    let printed: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(printed["azp"], FIP);
    assert!(!stdout.contains(&token) && !stderr.contains(&token));

    let cases: Vec<(Vec<String>, String, i32, &str)> = vec![
        (
            vec![
                "--iam-url".into(),
                url.clone(),
                "--role".into(),
                "AA".into(),
            ],
            token.clone(),
            1,
            "wrong role",
        ),
        (
            vec![
                "--iam-url".into(),
                url.clone(),
                "--entity-id".into(),
                AA.into(),
            ],
            token.clone(),
            1,
            "wrong entity",
        ),
        (
            vec!["--iam-url".into(), url.clone()],
            format!("{}x", token),
            1,
            "token rejected",
        ),
        (
            vec!["--iam-url".into(), url.clone()],
            String::new(),
            1,
            "missing",
        ),
        (
            vec!["--iam-url".into(), url.clone()],
            "0".into(),
            1,
            "malformed",
        ),
        // Allowed: only the realm of an IAM that is not this one.
        (
            vec!["--iam-url".into(), "http://127.0.0.1:1/iam".into()],
            token.clone(),
            1,
            "issuer not allowed",
        ),
        (
            vec![
                "--iam-url".into(),
                url.clone(),
                "--role".into(),
                "CR".into(),
            ],
            token.clone(),
            2,
            "--role",
        ),
        (
            vec![
                "--iam-url".into(),
                url.clone(),
                "--entity-id".into(),
                "a/b".into(),
            ],
            token.clone(),
            2,
            "--entity-id",
        ),
        (vec![], token.clone(), 2, "--iam-url"),
        (
            vec!["--iam-url".into(), url.clone(), "--verify-leeway=-3".into()],
            token.clone(),
            2,
            "--verify-leeway",
        ),
        (
            vec![
                "--iam-url".into(),
                url.clone(),
                "--verify-issuer".into(),
                "ftp://x".into(),
            ],
            token.clone(),
            2,
            "--verify-issuer",
        ),
    ];
    for (args, stdin, want, says) in cases {
        let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            verify_command(&args, &stdin)
        })
        .await
        .unwrap();
        assert_eq!(code, want, "{says}: {stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(stderr.contains(says), "{says}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(!stderr.contains(&token));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_verify_listener_on_the_token_port() {
    let iam = realm().await;
    let url = iam.url.clone();
    let (code, _, stderr) = tokio::task::spawn_blocking(move || {
        process::run(
            &[
                "serve",
                "--iam-url",
                &url,
                "--entity-id",
                ENTITY,
                "--listen",
                "127.0.0.1:7399",
                "--verify-listen",
                "127.0.0.1:7399",
            ],
            &[("AA_BROKER_ENTITY_SECRET", SECRET)],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--verify-listen"), "{stderr}");
}

/// The RSA check of an incoming token runs on the crypto pool, not on the async workers: with the pool's
/// one thread held and its queue full, a token never verified before is `Busy` (a `503`, never a stalled
/// worker), and once the pool frees up it verifies there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_signatures_are_checked_on_the_crypto_pool_and_a_full_pool_is_busy() {
    use aa_token_broker::crypto_pool::CryptoPool;
    use aa_token_broker::inbound::{Denied, Expectation};
    let iam = realm().await;
    let verifier =
        Verifier::new(&VerifySettings::for_iam_url(&iam.url), Arc::new(NoRecorder)).unwrap();
    verifier.fetch_keys().await;
    let pool = Arc::new(CryptoPool::new(1, 1).unwrap());
    verifier.run_crypto_on(Arc::clone(&pool));
    let token = iam.entity_token(AA, AA_SECRET).await;
    // Hold the thread, and fill the queue behind it.
    let gate = Arc::new(std::sync::Barrier::new(2));
    let (started, running) = oneshot::channel();
    let held = {
        let (pool, gate) = (Arc::clone(&pool), Arc::clone(&gate));
        tokio::spawn(async move {
            pool.run(move || {
                let _ = started.send(());
                gate.wait();
            })
            .await
        })
    };
    running.await.unwrap();
    let queued = {
        let pool = Arc::clone(&pool);
        tokio::spawn(async move { pool.run(|| ()).await })
    };
    while pool.stats().in_flight < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        verifier.verify(&token, &Expectation::default()).await,
        Err(Denied::Busy)
    );
    gate.wait();
    held.await.unwrap().unwrap();
    queued.await.unwrap().unwrap();
    let before = pool.stats().completed;
    let verified = verifier
        .verify(&token, &Expectation::default())
        .await
        .unwrap();
    assert_eq!(verified.entity_id.as_str(), AA);
    assert_eq!(
        pool.stats().completed,
        before + 1,
        "the check ran on the pool"
    );
    // A second presentation comes from the cache: no pool job.
    verifier
        .verify(&token, &Expectation::default())
        .await
        .unwrap();
    assert_eq!(pool.stats().completed, before + 1);
}

/// A proxy in the environment is for the bank's egress: a loopback realm's key set is fetched direct, as a
/// loopback IAM is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_in_the_environment_is_not_used_for_a_loopback_key_set() {
    use std::io::Write;
    let iam = realm().await;
    let token = entity_token(&iam.url, FIP, FIP_SECRET).await;
    let url = iam.url.clone();
    let (code, stderr) = tokio::task::spawn_blocking(move || {
        // Port 9 (discard) on loopback: nothing listens, so a proxied request would fail.
        let proxy = "http://127.0.0.1:9";
        let mut child = process::broker_command()
            .args([
                "verify",
                "--iam-url",
                &url,
                "--role",
                "FIP",
                "--entity-id",
                FIP,
            ])
            .envs([
                ("HTTP_PROXY", proxy),
                ("http_proxy", proxy),
                ("ALL_PROXY", proxy),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{token}\n").as_bytes());
        let output = child.wait_with_output().unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{stderr}");
}
