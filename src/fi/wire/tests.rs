use super::*;
use crate::fi::curve::PublicKey;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

fn kek(dir: &std::path::Path, byte: u8) -> Arc<KekFile> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("kek-{byte}"));
    std::fs::write(&path, [byte; 32]).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    Arc::new(KekFile::open(&path).unwrap())
}

fn service(dir: &std::path::Path) -> Fi {
    Fi::new(vec![(EntityId::parse("FIU-T").unwrap(), kek(dir, 1))])
}

/// A peer (an FIP, or an FIU) with its own key and nonce, made with the curve directly.
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
    fn key_material(&self, hours_left: i64) -> Value {
        let now = SystemTime::now();
        let expiry = if hours_left >= 0 {
            now + Duration::from_secs(hours_left as u64 * 3600)
        } else {
            now - Duration::from_secs((-hours_left) as u64 * 3600)
        };
        keys::key_material_json(
            &self.key.public_key(),
            expiry,
            Some(&self.nonce),
            keys::PARAMS,
        )
    }
    fn session(&self, km: &Value) -> Session {
        let pem = km["DHPublicKey"]["KeyValue"].as_str().unwrap();
        let remote = keys::parse_public(pem).unwrap();
        let nonce = keys::parse_nonce(km["Nonce"].as_str().unwrap()).unwrap();
        Session::new(&self.key, &remote, &self.nonce, &nonce).unwrap()
    }
    fn encrypt_for(&self, km: &Value, data: &[u8]) -> String {
        let mut bytes = data.to_vec();
        let tag = self.session(km).seal_in_place(&mut bytes).unwrap();
        bytes.extend_from_slice(&tag);
        STANDARD.encode(bytes)
    }
}

fn run(result: Result<Report, FiError>, buf: Vec<u8>) -> Value {
    result.unwrap();
    serde_json::from_slice(&buf).unwrap()
}

fn material(fi: &Fi) -> (Value, String) {
    let out = fi.key_material(None, b"", SystemTime::now()).unwrap();
    let out: Value = serde_json::from_slice(&out).unwrap();
    (
        out["KeyMaterial"].clone(),
        out["keyHandle"].as_str().unwrap().to_string(),
    )
}

#[test]
fn the_golden_vector_decrypts_through_a_key_handle() {
    let dir = tempfile::tempdir().unwrap();
    let fi = service(dir.path());
    let b = |s: &str| STANDARD.decode(s).unwrap();
    let secret = HandleSecret {
        key: PrivateKey::from_be_bytes(
            &b("DMxHPri8d7IT23KgLk281zZenMfVHSdeamq0RhwlIBk=")
                .try_into()
                .unwrap(),
        )
        .unwrap(),
        nonce: Some(
            b("6uj1RdDUbcpI3lVMZvijkMC8Te20O4Bcyz0SyivX8Eg=")
                .try_into()
                .unwrap(),
        ),
        expiry: SystemTime::now() + Duration::from_secs(60),
    };
    let handle = fi.keks()[0].1.seal(&secret).unwrap();
    let fip = PublicKey::from_uncompressed(&b(
        "BABVt+mpRLMXiQpIfEq6bj8hlXsdtXIxLsspmMgLNI1SR5mHgDVbjHO2A+U4QlMddGzqyEidzm1AkhtSxSO2Ahg=",
    ))
    .unwrap();
    let mut km = keys::key_material_json(
        &fip,
        SystemTime::now() + Duration::from_secs(60),
        None,
        keys::PARAMS,
    );
    km["Nonce"] = "lmXgblZwotx+DfBgKJF0lZXtAXgBEYr5khh79Zytr2Y=".into();
    let mut buf = serde_json::to_vec(&json!({
        "keyHandle": handle,
        "KeyMaterial": km,
        "encryptedData": "pzMvVZNNVtJzqPkkxcCbBUWgDEBy/mBXIeT2dJWI16ZAQnnXUb9lI+S4k8XK6mgZSKKSRIHkcNvJpllnBg548wUgavBa0vCRRwdL6kY6Yw==",
    }))
    .unwrap();
    let result = fi.decrypt(&mut buf, SystemTime::now());
    let out = run(result, buf);
    assert_eq!(
        STANDARD.decode(out["data"].as_str().unwrap()).unwrap(),
        b"Wormtail should never have been Potter cottage's secret keeper."
    );
}

#[test]
fn an_fiu_decrypts_what_an_fip_encrypted_single_and_batch() {
    let dir = tempfile::tempdir().unwrap();
    let fi = service(dir.path());
    let (ours, handle) = material(&fi);
    assert!(ours.get("Nonce").is_some() && !handle.contains("PRIVATE"));
    for size in [0usize, 1, 2, 3, 63, 3072, 3073, 100_000] {
        let data: Vec<u8> = (0..size).map(|i| (i * 31) as u8).collect();
        let fip = Peer::new();
        let mut buf = serde_json::to_vec(&json!({
            "keyHandle": handle, "KeyMaterial": fip.key_material(1), "encryptedData": fip.encrypt_for(&ours, &data),
        }))
        .unwrap();
        let result = fi.decrypt(&mut buf, SystemTime::now());
        let out = run(result, buf);
        assert_eq!(
            STANDARD.decode(out["data"].as_str().unwrap()).unwrap(),
            data,
            "{size}"
        );
    }
    let (a, b) = (Peer::new(), Peer::new());
    let mut tampered = STANDARD.decode(a.encrypt_for(&ours, b"second")).unwrap();
    tampered[0] ^= 1;
    let mut buf = serde_json::to_vec(&json!({
        "keyHandle": handle,
        "items": [
            {"KeyMaterial": a.key_material(1), "encryptedData": a.encrypt_for(&ours, b"first account")},
            {"KeyMaterial": a.key_material(1), "encryptedData": STANDARD.encode(tampered)},
            {"KeyMaterial": b.key_material(-1), "encryptedData": b.encrypt_for(&ours, b"late")},
            {"KeyMaterial": b.key_material(1), "encryptedData": b.encrypt_for(&ours, b"third")},
        ],
    }))
    .unwrap();
    let result = fi.decrypt(&mut buf, SystemTime::now());
    let report = result.as_ref().unwrap().clone();
    let out = run(result, buf);
    let items = out["items"].as_array().unwrap();
    assert_eq!(
        STANDARD.decode(items[0]["data"].as_str().unwrap()).unwrap(),
        b"first account"
    );
    assert_eq!(items[1]["error"], "decryption_failed");
    assert_eq!(items[2]["error"], "key_expired");
    assert_eq!(
        STANDARD.decode(items[3]["data"].as_str().unwrap()).unwrap(),
        b"third"
    );
    assert_eq!(
        report.items,
        vec![
            None,
            Some(Code::DecryptionFailed),
            Some(Code::KeyExpired(Expired::Remote)),
            None
        ]
    );
}

#[test]
fn an_fip_encrypts_what_an_fiu_decrypts() {
    let dir = tempfile::tempdir().unwrap();
    let fi = service(dir.path());
    let fiu = Peer::new();
    for data in [&b""[..], b"x", b"some FI data, a few accounts"] {
        let mut buf = serde_json::to_vec(
            &json!({"KeyMaterial": fiu.key_material(1), "data": STANDARD.encode(data)}),
        )
        .unwrap();
        let result = fi.encrypt(&mut buf, SystemTime::now());
        let out = run(result, buf);
        let mut ct = STANDARD
            .decode(out["encryptedData"].as_str().unwrap())
            .unwrap();
        let n = fiu
            .session(&out["KeyMaterial"])
            .open_in_place(&mut ct)
            .unwrap();
        assert_eq!(&ct[..n], data);
    }
}

#[test]
fn escaped_slashes_in_the_data_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let fi = service(dir.path());
    let (ours, handle) = material(&fi);
    let fip = Peer::new();
    let data: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let encrypted = fip.encrypt_for(&ours, &data);
    assert!(encrypted.contains('/'));
    let body = serde_json::to_string(&json!({
        "keyHandle": handle, "KeyMaterial": fip.key_material(1), "encryptedData": encrypted,
    }))
    .unwrap()
    .replace('/', "\\/");
    let mut buf = body.into_bytes();
    let result = fi.decrypt(&mut buf, SystemTime::now());
    let out = run(result, buf);
    assert_eq!(
        STANDARD.decode(out["data"].as_str().unwrap()).unwrap(),
        data
    );
}

#[test]
fn rahasya_shapes_work_with_a_handle_and_with_a_pkcs8_key() {
    let dir = tempfile::tempdir().unwrap();
    let fi = service(dir.path());
    let generated: Value =
        serde_json::from_slice(&fi.generate_key(None, SystemTime::now()).unwrap()).unwrap();
    assert_eq!(generated["errorInfo"], Value::Null);
    assert!(generated["KeyMaterial"].get("Nonce").is_none());
    let handle = generated["privateKey"].as_str().unwrap().to_string();
    let peer = Peer::new();
    let our_nonce = fresh_nonce().unwrap();
    let request = |key: &str, data: &str, field: &str| {
        let mut body = json!({
            "remoteKeyMaterial": peer.key_material(1),
            "ourPrivateKey": key,
            "base64YourNonce": STANDARD.encode(our_nonce),
            "base64RemoteNonce": STANDARD.encode(peer.nonce),
        });
        body[field] = data.into();
        serde_json::to_vec(&body).unwrap()
    };
    // rahasya's encrypt takes `data`; `base64Data` is accepted too.
    for field in ["data", "base64Data"] {
        let mut buf = request(&handle, &STANDARD.encode(b"to the FIU"), field);
        let result = fi.rahasya(&mut buf, true, SystemTime::now());
        let out = run(result, buf);
        let mut ct = STANDARD
            .decode(out["base64Data"].as_str().unwrap())
            .unwrap();
        let ours = keys::parse_public(
            generated["KeyMaterial"]["DHPublicKey"]["KeyValue"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let n = Session::new(&peer.key, &ours, &peer.nonce, &our_nonce)
            .unwrap()
            .open_in_place(&mut ct)
            .unwrap();
        assert_eq!(&ct[..n], b"to the FIU");
        assert_eq!(out["errorInfo"], Value::Null);
    }
    // A real rahasya's PKCS#8 key, during a migration.
    let old = PrivateKey::generate().unwrap();
    let pem = keys::pkcs8_pem(&old);
    let ours_km = keys::key_material_json(
        &old.public_key(),
        SystemTime::now() + Duration::from_secs(60),
        Some(&our_nonce),
        "",
    );
    let encrypted = peer.encrypt_for(&ours_km, b"in flight");
    let mut buf = request(&pem, &encrypted, "base64Data");
    let result = fi.rahasya(&mut buf, false, SystemTime::now());
    let out = run(result, buf);
    assert_eq!(
        STANDARD
            .decode(out["base64Data"].as_str().unwrap())
            .unwrap(),
        b"in flight"
    );
}

#[test]
fn every_error_has_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let fi = service(dir.path());
    let other = Fi::new(vec![(
        EntityId::parse("FIU-O").unwrap(),
        kek(dir.path(), 2),
    )]);
    let (ours, handle) = material(&fi);
    let fip = Peer::new();
    let good = fip.encrypt_for(&ours, b"data");
    let now = SystemTime::now();
    let decrypt = |fi: &Fi, body: Value, now: SystemTime| {
        let mut buf = serde_json::to_vec(&body).unwrap();
        fi.decrypt(&mut buf, now).map(|_| ()).unwrap_err().code()
    };
    let body = |handle: &str, km: Value, data: &str| json!({"keyHandle": handle, "KeyMaterial": km, "encryptedData": data});
    // FIU_2024: tampered data.
    let mut tampered = STANDARD.decode(&good).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x80;
    assert_eq!(
        decrypt(
            &fi,
            body(&handle, fip.key_material(1), &STANDARD.encode(&tampered)),
            now
        ),
        "decryption_failed"
    );
    // FIU_2025: a wrong nonce, and an expired KeyMaterial.
    let mut wrong_nonce = fip.key_material(1);
    wrong_nonce["Nonce"] = STANDARD.encode([5u8; 32]).into();
    assert_eq!(
        decrypt(&fi, body(&handle, wrong_nonce, &good), now),
        "decryption_failed"
    );
    assert_eq!(
        decrypt(&fi, body(&handle, fip.key_material(-1), &good), now),
        "key_expired"
    );
    assert_eq!(
        decrypt(&fi, body(&handle, fip.key_material(1), "not base64!"), now),
        "decryption_failed"
    );
    assert_eq!(
        decrypt(&fi, body(&handle, fip.key_material(1), "AAAA"), now),
        "decryption_failed"
    );
    // Our handle: expired, from another KEK, garbled, or a PEM.
    assert_eq!(
        decrypt(
            &fi,
            body(&handle, fip.key_material(1000), &good),
            now + Duration::from_secs(25 * 3600)
        ),
        "key_expired"
    );
    assert_eq!(
        decrypt(&other, body(&handle, fip.key_material(1), &good), now),
        "invalid_handle"
    );
    assert_eq!(
        decrypt(&fi, body("fikh1.garbage", fip.key_material(1), &good), now),
        "invalid_handle"
    );
    // AA_2011 / AA_2045 / FIP_3008: key material that is not ECDH on Curve25519.
    let mut rsa = fip.key_material(1);
    rsa["cryptoAlg"] = "RSA".into();
    assert_eq!(
        decrypt(&fi, body(&handle, rsa, &good), now),
        "unsupported_key_material"
    );
    let mut off_curve = fip.key_material(1);
    let pem = off_curve["DHPublicKey"]["KeyValue"]
        .as_str()
        .unwrap()
        .to_string();
    let mut der = STANDARD.decode(&pem[26..pem.len() - 24]).unwrap();
    let last = der.len() - 1;
    der[last] ^= 1;
    off_curve["DHPublicKey"]["KeyValue"] = format!(
        "-----BEGIN PUBLIC KEY-----{}-----END PUBLIC KEY-----",
        STANDARD.encode(der)
    )
    .into();
    assert_eq!(
        decrypt(&fi, body(&handle, off_curve, &good), now),
        "unsupported_key_material"
    );
    // Malformed requests.
    assert_eq!(
        decrypt(
            &fi,
            json!({"KeyMaterial": fip.key_material(1), "encryptedData": good}),
            now
        ),
        "bad_request"
    );
    assert_eq!(
        decrypt(
            &fi,
            json!({"keyHandle": handle, "KeyMaterial": fip.key_material(1), "encryptedData": 5}),
            now
        ),
        "bad_request"
    );
    let mut buf = b"{not json".to_vec();
    assert_eq!(fi.decrypt(&mut buf, now).unwrap_err().code(), "bad_request");
    assert_eq!(
        fi.key_material(None, b"{\"expiryHours\": 0}", now)
            .unwrap_err()
            .code(),
        "bad_request"
    );
    assert_eq!(
        fi.key_material(None, b"{\"expiryHours\": 169}", now)
            .unwrap_err()
            .code(),
        "bad_request"
    );
    assert_eq!(
        fi.key_material(Some("FIU-X"), b"", now).unwrap_err().code(),
        "no_fi_key"
    );
    let two = Fi::new(vec![
        (EntityId::parse("FIU-A").unwrap(), kek(dir.path(), 3)),
        (EntityId::parse("FIU-B").unwrap(), kek(dir.path(), 4)),
    ]);
    assert_eq!(
        two.key_material(None, b"", now).unwrap_err().code(),
        "entity_required"
    );
    assert!(two.key_material(Some("FIU-B"), b"", now).is_ok());
}

#[test]
fn no_answer_or_error_holds_the_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let fi = service(dir.path());
    let (ours, handle) = material(&fi);
    let secret = kek::unseal([&*fi.keks()[0].1], &handle, SystemTime::now()).unwrap();
    let d = STANDARD.encode(&secret.key.to_be_bytes()[..]);
    let d_hex: String = secret
        .key
        .to_be_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    for text in [ours.to_string(), handle.clone()] {
        assert!(!text.contains(&d) && !text.contains(&d_hex));
    }
}
