//! FI data encryption over loopback against the real broker: the ReBIT routes and rahasya's, every error
//! code, the certification cases by name, the guard, the body budget, KEK rotation, and the `fi` command.
//! The peer (an FIP or an FIU) is made from the library's curve and session types; the independent
//! implementation (Python `cryptography` and a pure-Python curve) is `tests/interop/fi_check.py`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use aa_token_broker::config::fi::FiSettings;
use aa_token_broker::fi::curve::PrivateKey;
use aa_token_broker::fi::kek::{HandleSecret, KekFile};
use aa_token_broker::fi::{Session, fresh_nonce, keys};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::common::process::{BIN, run};
use crate::common::*;

const MIB: usize = 1024 * 1024;

/// A broker with (or without) a KEK, on loopback, owning its simulator; ready.
async fn start(with_kek: bool, mut options: BrokerOptions) -> TestBroker {
    if with_kek {
        options.kek = Some(format!("{}\n", STANDARD.encode([0x5au8; 32])));
    }
    options.fi = Some(FiSettings::default());
    let broker = TestBroker::owning(Iam::start(86_400).await, options).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    broker
}

fn write_kek(path: &Path, key: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, key).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The FI routes, called as a service calls them.
trait FiCalls {
    async fn fi_post(&self, path: &str, body: &Value, guarded: bool) -> (u16, Value);
    async fn fi_post_raw(&self, path: &str, body: Vec<u8>, guarded: bool) -> (u16, Value);
    async fn key_material(&self) -> (Value, String);
}

impl FiCalls for TestBroker {
    /// POST JSON; `guarded` adds `Metadata: true`.
    async fn fi_post(&self, path: &str, body: &Value, guarded: bool) -> (u16, Value) {
        self.fi_post_raw(path, serde_json::to_vec(body).unwrap(), guarded)
            .await
    }

    async fn fi_post_raw(&self, path: &str, body: Vec<u8>, guarded: bool) -> (u16, Value) {
        let mut request = self.client().post(self.url(path)).body(body);
        if guarded {
            request = request.guarded();
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn key_material(&self) -> (Value, String) {
        let (status, body) = self.fi_post("/v1/fi/key-material", &json!({}), true).await;
        assert_eq!(status, 200, "{body}");
        (
            body["KeyMaterial"].clone(),
            body["keyHandle"].as_str().unwrap().to_string(),
        )
    }
}

/// A peer with its own key and nonce.
struct Peer {
    key: PrivateKey,
    nonce: [u8; 32],
}

impl Peer {
    fn new() -> Self {
        Self {
            key: PrivateKey::generate().unwrap(),
            nonce: fresh_nonce().unwrap(),
        }
    }

    fn key_material(&self, seconds_left: i64) -> Value {
        let now = SystemTime::now();
        let expiry = if seconds_left >= 0 {
            now + Duration::from_secs(seconds_left as u64)
        } else {
            now - Duration::from_secs(seconds_left.unsigned_abs())
        };
        keys::key_material_json(
            &self.key.public_key(),
            expiry,
            Some(&self.nonce),
            keys::PARAMS,
        )
    }

    fn session(&self, theirs: &Value) -> Session {
        let key = keys::parse_public(theirs["DHPublicKey"]["KeyValue"].as_str().unwrap()).unwrap();
        let nonce = keys::parse_nonce(theirs["Nonce"].as_str().unwrap()).unwrap();
        Session::new(&self.key, &key, &self.nonce, &nonce).unwrap()
    }

    fn encrypt_for(&self, theirs: &Value, data: &[u8]) -> String {
        let mut bytes = data.to_vec();
        let tag = self.session(theirs).seal_in_place(&mut bytes).unwrap();
        bytes.extend_from_slice(&tag);
        STANDARD.encode(bytes)
    }

    fn decrypt_from(&self, theirs: &Value, encrypted: &str) -> Option<Vec<u8>> {
        let mut bytes = STANDARD.decode(encrypted).unwrap();
        let n = self.session(theirs).open_in_place(&mut bytes).ok()?;
        bytes.truncate(n);
        Some(bytes)
    }
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 + 7) as u8).collect()
}

fn unb64(value: &Value) -> Vec<u8> {
    STANDARD.decode(value.as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn an_fiu_decrypts_what_fips_encrypt_single_batch_and_large() {
    let net = start(true, BrokerOptions::inline()).await;
    let (ours, handle) = net.key_material().await;
    assert_eq!(ours["cryptoAlg"], "ECDH");
    assert_eq!(ours["curve"], "Curve25519");
    assert!(
        ours["DHPublicKey"]["KeyValue"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----MIIBMTCB6gYHKoZIzj0CATCB3gIBATArBgcq")
    );
    for size in [0, 1, 1024, 3 * MIB + 1] {
        let fip = Peer::new();
        let plain = data(size);
        let body = json!({"keyHandle": handle, "KeyMaterial": fip.key_material(3600), "encryptedData": fip.encrypt_for(&ours, &plain)});
        let (status, answer) = net.fi_post("/v1/fi/decrypt", &body, true).await;
        assert_eq!(status, 200, "{size}");
        assert_eq!(unb64(&answer["data"]), plain, "{size}");
    }
    let (a, b) = (Peer::new(), Peer::new());
    let body = json!({"keyHandle": handle, "items": [
        {"KeyMaterial": a.key_material(3600), "encryptedData": a.encrypt_for(&ours, b"account one")},
        {"KeyMaterial": b.key_material(3600), "encryptedData": a.encrypt_for(&ours, b"made with a's key")},
        {"KeyMaterial": b.key_material(3600), "encryptedData": b.encrypt_for(&ours, b"account two")},
    ]});
    let (status, answer) = net.fi_post("/v1/fi/decrypt", &body, true).await;
    assert_eq!(status, 200);
    let items = answer["items"].as_array().unwrap();
    assert_eq!(unb64(&items[0]["data"]), b"account one");
    assert_eq!(items[1]["error"], "decryption_failed");
    assert_eq!(unb64(&items[2]["data"]), b"account two");
    let metrics = net.metrics().await;
    assert!(
        metrics.contains("aa_broker_fi_batch_items_total{outcome=\"ok\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("aa_broker_fi_batch_items_total{outcome=\"decryption_failed\"} 1"));
    assert!(metrics.contains("aa_broker_fi_requests_total{route=\"decrypt\",outcome=\"ok\"} 5"));
    // The answer reused the request's buffer: the most held at once is the largest body, not twice it.
    let peak: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("aa_broker_body_buffered_peak_bytes ")?
                .parse()
                .ok()
        })
        .unwrap();
    let largest = (3 * MIB + 1 + 16).div_ceil(3) * 4;
    assert!(
        peak < largest as f64 * 1.01,
        "peak {peak} for a body of {largest}"
    );
    net.stop().await;
}

/// FIP_3010: the FI the FIP sends decrypts correctly at the FIU.
#[tokio::test]
async fn certification_fip_3010_what_we_encrypt_the_fiu_decrypts() {
    let net = start(true, BrokerOptions::inline()).await;
    let fiu = Peer::new();
    for size in [0, 5, 70_000] {
        let plain = data(size);
        let body = json!({"KeyMaterial": fiu.key_material(3600), "data": STANDARD.encode(&plain)});
        let (status, answer) = net.fi_post("/v1/fi/encrypt", &body, true).await;
        assert_eq!(status, 200, "{answer}");
        let ours = &answer["KeyMaterial"];
        assert!(ours.get("Nonce").is_some());
        assert_eq!(
            fiu.decrypt_from(ours, answer["encryptedData"].as_str().unwrap()),
            Some(plain)
        );
    }
    net.stop().await;
}

/// FIU_2024 and FIU_2025: tampered data, a wrong nonce and an expired KeyMaterial are refused, never
/// answered with data.
#[tokio::test]
async fn certification_fiu_2024_and_fiu_2025_tampered_data_wrong_nonce_expired_keys() {
    let net = start(true, BrokerOptions::inline()).await;
    let (ours, handle) = net.key_material().await;
    let fip = Peer::new();
    let good = fip.encrypt_for(&ours, b"statement");
    let mut tampered = STANDARD.decode(&good).unwrap();
    tampered[3] ^= 0x01;
    let mut wrong_nonce = fip.key_material(3600);
    wrong_nonce["Nonce"] = STANDARD.encode([1u8; 32]).into();
    for (case, km, encrypted, code) in [
        (
            "FIU_2024 tampered encryptedFI",
            fip.key_material(3600),
            STANDARD.encode(&tampered),
            "decryption_failed",
        ),
        (
            "FIU_2025 wrong nonce",
            wrong_nonce,
            good.clone(),
            "decryption_failed",
        ),
        (
            "FIU_2025 expired KeyMaterial",
            fip.key_material(-60),
            good.clone(),
            "key_expired",
        ),
    ] {
        let body = json!({"keyHandle": handle, "KeyMaterial": km, "encryptedData": encrypted});
        let (status, answer) = net.fi_post("/v1/fi/decrypt", &body, true).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some(code)),
            "{case}: {answer}"
        );
        assert!(answer.get("data").is_none(), "{case}");
    }
    net.stop().await;
}

/// FIP_3008, AA_2011, AA_2045: key material that is not ECDH on Curve25519, or expired, is a 400.
#[tokio::test]
async fn certification_fip_3008_aa_2011_aa_2045_bad_key_material_is_refused() {
    let net = start(true, BrokerOptions::inline()).await;
    let fiu = Peer::new();
    let mut cases = Vec::new();
    for (field, value) in [
        ("cryptoAlg", "RSA"),
        ("cryptoAlg", "DH"),
        ("cryptoAlg", "ECMQV"),
        ("curve", "secp256r1"),
        ("curve", "P-384"),
        ("curve", "FourQ"),
    ] {
        let mut km = fiu.key_material(3600);
        km[field] = value.into();
        cases.push((format!("{field}={value}"), km, "unsupported_key_material"));
    }
    let mut not_a_point = fiu.key_material(3600);
    not_a_point["DHPublicKey"]["KeyValue"] =
        "-----BEGIN PUBLIC KEY-----AAAA-----END PUBLIC KEY-----".into();
    cases.push((
        "a key that is no point".into(),
        not_a_point,
        "unsupported_key_material",
    ));
    let mut x25519 = fiu.key_material(3600);
    x25519["DHPublicKey"]["KeyValue"] = "-----BEGIN PUBLIC KEY-----MCowBQYDK2VuAyEAhSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=-----END PUBLIC KEY-----".into();
    cases.push((
        "an RFC 7748 X25519 key".into(),
        x25519,
        "unsupported_key_material",
    ));
    cases.push((
        "expired DHPublicKey".into(),
        fiu.key_material(-1),
        "key_expired",
    ));
    for (case, km, code) in cases {
        let body = json!({"KeyMaterial": km, "data": STANDARD.encode(b"x")});
        let (status, answer) = net.fi_post("/v1/fi/encrypt", &body, true).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some(code)),
            "{case}: {answer}"
        );
    }
    let metrics = net.metrics().await;
    assert!(
        metrics.contains("aa_broker_fi_keys_expired_total{key=\"remote\"} 1"),
        "{metrics}"
    );
    net.stop().await;
}

#[tokio::test]
async fn every_error_code_of_the_handle_and_the_request() {
    let net = start(true, BrokerOptions::inline()).await;
    let (ours, handle) = net.key_material().await;
    let fip = Peer::new();
    let good = fip.encrypt_for(&ours, b"x");
    let body = |handle: &str| json!({"keyHandle": handle, "KeyMaterial": fip.key_material(3600), "encryptedData": good});
    // A handle sealed under this KEK, but past its expiry.
    let kek = KekFile::open(net.kek_path()).unwrap();
    let expired = kek
        .seal(&HandleSecret {
            key: PrivateKey::generate().unwrap(),
            nonce: Some([0; 32]),
            expiry: SystemTime::now() - Duration::from_secs(1),
        })
        .unwrap();
    // One sealed under another KEK.
    let dir = tempfile::tempdir().unwrap();
    write_kek(&dir.path().join("other"), &[9u8; 32]);
    let foreign = KekFile::open(&dir.path().join("other"))
        .unwrap()
        .seal(&HandleSecret {
            key: PrivateKey::generate().unwrap(),
            nonce: Some([0; 32]),
            expiry: SystemTime::now() + Duration::from_secs(60),
        })
        .unwrap();
    for (case, body, code) in [
        ("expired handle", body(&expired), "key_expired"),
        ("a handle of another KEK", body(&foreign), "invalid_handle"),
        (
            "a private key instead of a handle",
            body("-----BEGIN PRIVATE KEY-----MIGH-----END PRIVATE KEY-----"),
            "invalid_handle",
        ),
        (
            "no handle",
            json!({"KeyMaterial": fip.key_material(3600), "encryptedData": good}),
            "bad_request",
        ),
        (
            "data not a string",
            json!({"keyHandle": handle, "KeyMaterial": fip.key_material(3600), "encryptedData": [1]}),
            "bad_request",
        ),
        (
            "data not base64",
            json!({"keyHandle": handle, "KeyMaterial": fip.key_material(3600), "encryptedData": "%%%"}),
            "decryption_failed",
        ),
        (
            "no KeyMaterial",
            json!({"keyHandle": handle, "encryptedData": good}),
            "unsupported_key_material",
        ),
    ] {
        let (status, answer) = net.fi_post("/v1/fi/decrypt", &body, true).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some(code)),
            "{case}: {answer}"
        );
    }
    let (status, answer) = net
        .fi_post_raw("/v1/fi/decrypt", b"{\"keyHandle\":".to_vec(), true)
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("bad_request"))
    );
    let (status, answer) = net
        .fi_post("/v1/fi/key-material", &json!({"expiryHours": 1000}), true)
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("bad_request"))
    );
    let (status, answer) = net
        .fi_post("/v1/fi/key-material/FIU-NOBODY", &json!({}), true)
        .await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("no_fi_key")));
    let metrics = net.metrics().await;
    assert!(
        metrics.contains("aa_broker_fi_keys_expired_total{key=\"handle\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "aa_broker_fi_requests_total{route=\"decrypt\",outcome=\"invalid_handle\"} 2"
        )
    );
    // /readyz says the KEK is there, by id, never the key.
    let (_, ready) = net.readyz().await;
    assert_eq!(ready["fi"]["enabled"], true);
    assert_eq!(
        ready["fi"]["entities"][ENTITY]["kekId"]
            .as_str()
            .unwrap()
            .len(),
        8
    );
    net.stop().await;
}

#[tokio::test]
async fn the_guard_comes_first_and_bodies_are_bounded() {
    let mut options = BrokerOptions::inline();
    options.inbound.max_buffered_bytes = 4 * MIB;
    let net = start(true, options).await;
    // The ReBIT routes want `Metadata: true`; rahasya's want only a loopback Host.
    for path in ["/v1/fi/key-material", "/v1/fi/decrypt", "/v1/fi/encrypt"] {
        let (status, _) = net.fi_post(path, &json!({}), false).await;
        assert_eq!(status, 403, "{path}");
    }
    let response = net
        .client()
        .get(net.url("/ecc/v1/generateKey"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = net
        .client()
        .post(net.url("/ecc/v1/decrypt"))
        .header("Host", "rebound.example")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    // A body over the FI cap is refused before it is read; one over the free budget is told to wait.
    let huge = vec![b' '; 23 * MIB];
    let (status, answer) = net.fi_post_raw("/v1/fi/decrypt", huge, true).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (413, Some("body_too_large"))
    );
    let big = vec![b' '; 5 * MIB];
    let (status, answer) = net.fi_post_raw("/v1/fi/decrypt", big, true).await;
    assert_eq!((status, answer["error"].as_str()), (503, Some("busy")));
    net.stop().await;
}

#[tokio::test]
async fn without_a_kek_every_fi_route_says_fi_disabled() {
    let net = start(false, BrokerOptions::inline()).await;
    for path in ["/v1/fi/key-material", "/v1/fi/decrypt", "/v1/fi/encrypt"] {
        let (status, answer) = net.fi_post(path, &json!({}), true).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (404, Some("fi_disabled")),
            "{path}"
        );
    }
    let (status, answer) = net.fi_post("/ecc/v1/decrypt", &json!({}), false).await;
    assert_eq!(status, 404);
    assert_eq!(answer["errorInfo"]["errorCode"], "fi_disabled");
    let (_, ready) = net.readyz().await;
    assert_eq!(ready["fi"]["enabled"], false);
    net.stop().await;
}

#[tokio::test]
async fn rahasyas_routes_work_unchanged_with_handles_and_pkcs8_keys() {
    let net = start(true, BrokerOptions::inline()).await;
    let response = net
        .client()
        .get(net.url("/ecc/v1/generateKey"))
        .send()
        .await
        .unwrap();
    let generated: Value = response.json().await.unwrap();
    assert_eq!(generated["errorInfo"], Value::Null);
    let handle = generated["privateKey"].as_str().unwrap().to_string();
    assert!(!handle.contains("PRIVATE KEY"));
    let ours = &generated["KeyMaterial"];
    let peer = Peer::new();
    let our_nonce = fresh_nonce().unwrap();
    let request = |key: &str, field: &str, value: String| {
        let mut body = json!({
            "remoteKeyMaterial": peer.key_material(3600),
            "ourPrivateKey": key,
            "base64YourNonce": STANDARD.encode(our_nonce),
            "base64RemoteNonce": STANDARD.encode(peer.nonce),
        });
        body[field] = value.into();
        body
    };
    // Encrypt (rahasya's field is `data`) then the peer decrypts.
    let (status, answer) = net
        .fi_post(
            "/ecc/v1/encrypt",
            &request(&handle, "data", STANDARD.encode(b"hello FIU")),
            false,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let mut ours_with_nonce = ours.clone();
    ours_with_nonce["Nonce"] = STANDARD.encode(our_nonce).into();
    assert_eq!(
        peer.decrypt_from(&ours_with_nonce, answer["base64Data"].as_str().unwrap()),
        Some(b"hello FIU".to_vec())
    );
    // The peer encrypts; we decrypt with the handle.
    let encrypted = peer.encrypt_for(&ours_with_nonce, b"hello FIP");
    let (status, answer) = net
        .fi_post(
            "/ecc/v1/decrypt",
            &request(&handle, "base64Data", encrypted.clone()),
            false,
        )
        .await;
    assert_eq!(
        (status, unb64(&answer["base64Data"])),
        (200, b"hello FIP".to_vec())
    );
    // A real rahasya's PKCS#8 key, for a session in flight during the migration.
    let old = PrivateKey::generate().unwrap();
    let mut old_km = keys::key_material_json(
        &old.public_key(),
        SystemTime::now() + Duration::from_secs(60),
        None,
        "",
    );
    old_km["Nonce"] = STANDARD.encode(our_nonce).into();
    let encrypted_old = peer.encrypt_for(&old_km, b"in flight");
    let pem = keys::pkcs8_pem(&old);
    let (status, answer) = net
        .fi_post(
            "/ecc/v1/decrypt",
            &request(&pem, "base64Data", encrypted_old),
            false,
        )
        .await;
    assert_eq!(
        (status, unb64(&answer["base64Data"])),
        (200, b"in flight".to_vec())
    );
    // Errors keep rahasya's errorInfo, with a 4xx.
    let mut tampered = STANDARD.decode(&encrypted).unwrap();
    tampered[0] ^= 1;
    let (status, answer) = net
        .fi_post(
            "/ecc/v1/decrypt",
            &request(&handle, "base64Data", STANDARD.encode(tampered)),
            false,
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(answer["base64Data"], "");
    assert_eq!(answer["errorInfo"]["errorCode"], "decryption_failed");
    net.stop().await;
}

#[tokio::test]
async fn a_rotated_kek_keeps_sessions_in_flight() {
    let net = start(true, BrokerOptions::inline()).await;
    let (ours, old_handle) = net.key_material().await;
    let (_, before) = net.readyz().await;
    // The Secret is updated: a new key first, the old one kept on the next line for the other pods.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let contents = format!(
        "{}\n{}\n",
        STANDARD.encode([0x77u8; 32]),
        STANDARD.encode([0x5au8; 32])
    );
    write_kek(net.kek_path(), contents.as_bytes());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, after) = net.readyz().await;
    assert_ne!(
        before["fi"]["entities"][ENTITY]["kekId"],
        after["fi"]["entities"][ENTITY]["kekId"]
    );
    let fip = Peer::new();
    let body = json!({"keyHandle": old_handle, "KeyMaterial": fip.key_material(3600), "encryptedData": fip.encrypt_for(&ours, b"late data")});
    let (status, answer) = net.fi_post("/v1/fi/decrypt", &body, true).await;
    assert_eq!(
        (status, unb64(&answer["data"])),
        (200, b"late data".to_vec())
    );
    net.stop().await;
}

#[test]
fn the_fi_command_makes_key_material_and_decrypts_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let kek = dir.path().join("kek");
    write_kek(&kek, &[3u8; 32]);
    let kek_arg = kek.to_str().unwrap();
    let run_with_stdin = |op: &str, input: &[u8]| {
        use std::io::Write;
        let mut child = std::process::Command::new(BIN)
            .args(["fi", op, "--fi-kek-file", kek_arg])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = run_with_stdin("key-material", b"{\"expiryHours\": 2}");
    assert_eq!(code, 0);
    let made: Value = serde_json::from_str(&out).unwrap();
    let fip = Peer::new();
    let body = json!({"keyHandle": made["keyHandle"], "KeyMaterial": fip.key_material(60), "encryptedData": fip.encrypt_for(&made["KeyMaterial"], b"from a script")});
    let (code, out, _) = run_with_stdin("decrypt", body.to_string().as_bytes());
    assert_eq!(code, 0);
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(unb64(&answer["data"]), b"from a script");
    let (code, _, err) = run_with_stdin("decrypt", b"{\"keyHandle\": \"fikh1.x\"}");
    assert_eq!(code, 1);
    assert!(
        err.contains("bad_request") || err.contains("invalid_handle"),
        "{err}"
    );
    let (code, _, err) = run(
        &["fi", "decrypt", "--fi-kek-file", "/nonexistent"],
        process::NO_ENV,
    );
    assert_eq!(code, 2);
    assert!(err.contains("--fi-kek-file"), "{err}");
}
