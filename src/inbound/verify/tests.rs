use super::*;
use crate::keys::parse_jwks;
use crate::simulator::jwt::SigningKey;
use serde_json::json;

const ISS: &str = "https://api.sandbox.sahamati.org.in/auth/realms/sahamati";
const NOW: u64 = 1_800_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn claims() -> Value {
    json!({
        "iss": ISS, "exp": NOW + 3600, "iat": NOW - 10, "azp": "FIU-ONE", "clientId": "FIU-ONE",
        "roles": "FIU", "aud": "account",
    })
}

fn key() -> SigningKey {
    SigningKey::simulator_key().unwrap()
}

/// The whole pure pipeline, as the verifier runs it.
fn verify(token: &str, key: &SigningKey) -> Result<Verified, Rejection> {
    let set = parse_jwks(key.jwks().to_string().as_bytes()).unwrap();
    let parsed = parse(token)?;
    if parsed.issuer.as_deref() != Some(ISS) {
        return Err(Rejection::IssuerNotAllowed);
    }
    let kid = parsed.kid.clone().ok_or(Rejection::UnknownKey)?;
    let rsa = set.get(&kid).ok_or(Rejection::UnknownKey)?;
    check_signature(&parsed, rsa)?;
    check_claims(parsed, ISS, &kid, now(), Duration::from_secs(60))
}

fn with(changes: Value) -> Value {
    let mut c = claims();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

#[test]
fn a_good_token_verifies_with_its_identity() {
    let key = key();
    let verified = verify(&key.sign(&claims()).unwrap(), &key).unwrap();
    assert_eq!(verified.entity_id.as_str(), "FIU-ONE");
    assert_eq!(verified.role(), "FIU");
    assert_eq!(verified.issuer, ISS);
    assert_eq!(verified.expires_in(now()), 3600);
    let array = key.sign(&with(json!({ "roles": ["FIU", "FIP"] }))).unwrap();
    assert_eq!(verify(&array, &key).unwrap().role(), "FIU,FIP");
}

#[test]
fn times_are_checked_with_the_leeway() {
    let key = key();
    let check = |c: Value| verify(&key.sign(&c).unwrap(), &key);
    assert!(check(with(json!({ "exp": NOW - 59, "iat": NOW - 100 }))).is_ok());
    assert_eq!(
        check(with(json!({ "exp": NOW - 60, "iat": NOW - 100 }))),
        Err(Rejection::Expired)
    );
    assert_eq!(
        check(with(json!({ "exp": null }))),
        Err(Rejection::Malformed)
    );
    assert_eq!(
        check(with(json!({ "exp": "soon" }))),
        Err(Rejection::Malformed)
    );
    assert!(check(with(json!({ "nbf": NOW + 60 }))).is_ok());
    assert_eq!(
        check(with(json!({ "nbf": NOW + 61 }))),
        Err(Rejection::NotYetValid)
    );
    assert_eq!(
        check(with(json!({ "iat": NOW + 61 }))),
        Err(Rejection::NotYetValid)
    );
    assert_eq!(
        check(with(json!({ "iat": NOW + 3600 }))),
        Err(Rejection::Malformed),
        "exp must be after iat"
    );
    assert!(check(with(json!({ "exp": (NOW + 10) as f64 + 0.5 }))).is_ok());
    for absurd in [
        json!(1e300),
        json!(-1e300),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(253_402_300_800u64),
        json!(9_007_199_254_740_991u64),
    ] {
        assert_eq!(
            check(with(json!({ "exp": absurd }))),
            Err(Rejection::Malformed)
        );
    }
}

#[test]
fn the_caller_identity_must_be_present_and_consistent() {
    let key = key();
    let check = |c: Value| verify(&key.sign(&c).unwrap(), &key);
    for broken in [
        json!({ "azp": null }),
        json!({ "clientId": "FIU-TWO" }),
        json!({ "azp": "FIU/../X", "clientId": "FIU/../X" }),
        json!({ "roles": null }),
        json!({ "roles": [] }),
        json!({ "roles": [1] }),
        json!({ "roles": "FIU\r\nX-Injected: 1" }),
        json!({ "client_id": "FIU-TWO" }),
        json!({ "client_id": 7 }),
        json!({ "entity_meta": { "FIU-ONE": ["entity-admin"] } }),
    ] {
        assert_eq!(
            check(with(broken.clone())),
            Err(Rejection::Malformed),
            "{broken}"
        );
    }
}

#[test]
fn azp_alone_or_with_either_client_id_claim_names_the_entity() {
    let key = key();
    let check = |c: Value| verify(&key.sign(&c).unwrap(), &key);
    let mut azp_only = with(json!({}));
    azp_only.as_object_mut().unwrap().remove("clientId");
    let mut keycloak_new = azp_only.clone();
    keycloak_new["client_id"] = json!("FIU-ONE");
    let mut both = with(json!({}));
    both["client_id"] = json!("FIU-ONE");
    for claims in [azp_only, keycloak_new, both] {
        let verified = check(claims.clone()).unwrap_or_else(|e| panic!("{claims}: {e:?}"));
        assert_eq!(verified.entity_id.as_str(), "FIU-ONE");
    }
}

fn b64(value: &str) -> String {
    URL_SAFE_NO_PAD.encode(value)
}

#[test]
fn algorithms_other_than_rs256_are_refused_before_any_key_is_used() {
    let key = key();
    let payload = b64(&claims().to_string());
    for alg in [
        "none", "HS256", "HS512", "RS512", "PS256", "ES256", "rs256", "",
    ] {
        let header = b64(&json!({ "alg": alg, "kid": key.kid() }).to_string());
        for signature in ["", "c2ln"] {
            let token = format!("{header}.{payload}.{signature}");
            assert_eq!(
                parse(&token).map(|_| ()),
                Err(Rejection::AlgorithmNotAllowed),
                "{alg}"
            );
        }
    }
    // HS256 with the realm's public key as the HMAC secret: the classic confusion.
    let header = b64(&json!({ "alg": "HS256", "kid": key.kid() }).to_string());
    let input = format!("{header}.{payload}");
    let secret = key.jwks().to_string();
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()),
        input.as_bytes(),
    );
    let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()));
    assert_eq!(verify(&forged, &key), Err(Rejection::AlgorithmNotAllowed));
}

#[test]
fn malformed_tokens_are_malformed_and_tampering_breaks_the_signature() {
    let key = key();
    let token = key.sign(&claims()).unwrap();
    assert_eq!(parse("").map(|_| ()), Err(Rejection::Missing));
    for bad in [
        "0",
        "a.b",
        "a.b.c.d",
        "...",
        "not a token",
        &format!("{token}."),
        &format!("{token}=="),
        &format!("{}.{}", token, "x"),
        &"a".repeat(MAX_TOKEN_BYTES + 1),
    ] {
        assert_eq!(
            parse(bad).map(|_| ()),
            Err(Rejection::Malformed),
            "{bad:.40}"
        );
    }
    // Tampered claims, signature and header.
    let parts: Vec<&str> = token.split('.').collect();
    let forged_claims = b64(&with(json!({ "azp": "FIU-TWO", "clientId": "FIU-TWO" })).to_string());
    let tampered = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
    assert_eq!(verify(&tampered, &key), Err(Rejection::BadSignature));
    let mut signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    signature[10] ^= 1;
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        URL_SAFE_NO_PAD.encode(&signature)
    );
    assert_eq!(verify(&tampered, &key), Err(Rejection::BadSignature));
    let header = b64(&json!({ "alg": "RS256", "kid": key.kid(), "typ": "at+jwt" }).to_string());
    let tampered = format!("{}.{}.{}", header, parts[1], parts[2]);
    assert_eq!(verify(&tampered, &key), Err(Rejection::BadSignature));
    let crit = b64(
        &json!({ "alg": "RS256", "kid": key.kid(), "crit": ["b64"], "b64": false }).to_string(),
    );
    assert_eq!(
        parse(&format!("{}.{}.{}", crit, parts[1], parts[2])).map(|_| ()),
        Err(Rejection::Malformed)
    );
    // A non-canonical base64url signature (stray low bits) is refused, not silently normalised.
    let last = parts[2].chars().last().unwrap();
    let bumped = char::from(u8::try_from(u32::from(last) + 1).unwrap());
    if bumped.is_ascii_alphanumeric() {
        let stray = format!(
            "{}.{}.{}{}",
            parts[0],
            parts[1],
            &parts[2][..parts[2].len() - 1],
            bumped
        );
        assert!(verify(&stray, &key).is_err());
    }
}

proptest::proptest! {
    /// Whatever the bytes, the parser and the claim checks answer; they never panic. (The fuzz target
    /// `inbound_token` does the same, longer, under libFuzzer.)
    #[test]
    fn no_token_makes_the_checks_panic(
        header in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
        signature in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        raw in ".{0,300}",
    ) {
        let _ = parse(&raw);
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(signature)
        );
        if let Ok(parsed) = parse(&token) {
            let _ = check_claims(parsed, ISS, "kid", now(), Duration::from_secs(60));
        }
    }

    /// Any numbers in the time claims: a verdict, never a panic or an overflow; a token accepted has an
    /// `exp` that formats, after `now - leeway`.
    #[test]
    fn any_numbers_in_the_time_claims_get_a_verdict(
        exp in proptest::prelude::any::<f64>(),
        iat in proptest::prelude::any::<i64>(),
        nbf in proptest::prelude::any::<u64>(),
        leeway in 0u64..100_000,
        use_int in proptest::prelude::any::<bool>(),
    ) {
        let exp = if use_int { json!(exp as i64) } else { json!(exp) };
        let token = format!(
            "{}.{}.c2ln",
            b64(&json!({ "alg": "RS256", "kid": "k" }).to_string()),
            b64(&with(json!({ "exp": exp, "iat": iat, "nbf": nbf })).to_string())
        );
        let parsed = parse(&token).unwrap();
        if let Ok(verified) = check_claims(parsed, ISS, "k", now(), Duration::from_secs(leeway)) {
            proptest::prop_assert!(!verified.expires_at_text.is_empty());
            proptest::prop_assert!(verified.expires_at + Duration::from_secs(leeway) > now());
        }
    }
}

#[test]
fn expectations_are_parsed_and_checked() {
    let key = key();
    let verified = verify(&key.sign(&claims()).unwrap(), &key).unwrap();
    let expect = |role: Option<&str>, id: Option<&str>| {
        Expectation::parse(role, id).unwrap().check(&verified)
    };
    assert_eq!(expect(None, None), Ok(()));
    assert_eq!(expect(Some("fiu"), Some("FIU-ONE")), Ok(()));
    assert_eq!(expect(Some("AA,FIU"), None), Ok(()));
    assert_eq!(expect(Some("AA"), None), Err(Mismatch::WrongRole));
    assert_eq!(
        expect(Some("AA"), Some("FIU-TWO")),
        Err(Mismatch::WrongEntity)
    );
    assert_eq!(expect(Some(""), Some("")), Ok(()));
    assert!(matches!(
        Expectation::parse(Some("CR"), None),
        Err(BadExpectation::Role(_))
    ));
    assert!(matches!(
        Expectation::parse(None, Some("a b")),
        Err(BadExpectation::EntityId(_))
    ));
}
