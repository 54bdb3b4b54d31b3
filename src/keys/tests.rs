use super::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn jwks(keys: serde_json::Value) -> Vec<u8> {
    serde_json::json!({ "keys": keys }).to_string().into_bytes()
}

fn modulus(bytes: usize) -> String {
    let mut n = vec![0xC5u8; bytes];
    if let Some(last) = n.last_mut() {
        *last = 0x01;
    }
    URL_SAFE_NO_PAD.encode(n)
}

#[test]
fn keeps_rs256_signing_keys_and_skips_the_rest() {
    let body = jwks(serde_json::json!([
        { "kid": "sig", "kty": "RSA", "alg": "RS256", "use": "sig", "n": modulus(256), "e": "AQAB" },
        { "kid": "no-use", "kty": "RSA", "n": modulus(512), "e": "AQAB" },
        { "kid": "enc", "kty": "RSA", "alg": "RSA-OAEP", "use": "enc", "n": modulus(256), "e": "AQAB" },
        { "kid": "enc-no-alg", "kty": "RSA", "use": "enc", "n": modulus(256), "e": "AQAB" },
        { "kid": "ec", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA" },
        { "kid": "hs", "kty": "oct", "k": "c2VjcmV0" },
        { "kid": "ps", "kty": "RSA", "alg": "PS256", "n": modulus(256), "e": "AQAB" },
        { "kty": "RSA", "n": modulus(256), "e": "AQAB" },
        { "kid": 7, "kty": "RSA", "n": modulus(256), "e": "AQAB" },
        "not an object",
    ]));
    let set = parse_jwks(&body).unwrap();
    let mut kids: Vec<&str> = set.kids().collect();
    kids.sort_unstable();
    assert_eq!(kids, ["no-use", "sig"]);
}

#[test]
fn absurd_moduli_and_exponents_are_dropped() {
    for (n, e) in [
        (modulus(128), "AQAB".to_string()),  // 1024 bits: too small
        (modulus(2048), "AQAB".to_string()), // 16384 bits: too large
        (
            modulus(256),
            URL_SAFE_NO_PAD.encode([0u8, 0, 0, 0, 1, 0, 1]),
        ), // leading zeros: fine
        (modulus(256), URL_SAFE_NO_PAD.encode([1u8, 0, 0, 0, 0, 1])), // e > 32 bits
        (modulus(256), "Ag".to_string()),    // e = 2: even
        (modulus(256), "AQ".to_string()),    // e = 1
        (modulus(256), String::new()),       // empty e
        ("!!!".to_string(), "AQAB".to_string()),
        ("A".repeat(100_000), "AQAB".to_string()),
    ] {
        let body = jwks(serde_json::json!([{ "kid": "k", "kty": "RSA", "n": n, "e": e }]));
        let parsed = parse_jwks(&body);
        // The one case above that is valid: leading zero bytes of e are stripped.
        if e == URL_SAFE_NO_PAD.encode([0u8, 0, 0, 0, 1, 0, 1]) {
            assert!(parsed.is_ok());
        } else {
            assert_eq!(
                parsed,
                Err(JwksError::NoUsableKey),
                "n={} e={e}",
                &n[..8.min(n.len())]
            );
        }
    }
    let mut even = vec![0xC5u8; 256];
    even[255] = 0x02;
    let body = jwks(
        serde_json::json!([{ "kid": "k", "kty": "RSA", "n": URL_SAFE_NO_PAD.encode(even), "e": "AQAB" }]),
    );
    assert_eq!(parse_jwks(&body), Err(JwksError::NoUsableKey));
}

#[test]
fn documents_that_are_not_key_sets_are_errors() {
    for body in [
        &b""[..],
        b"null",
        b"[]",
        b"{}",
        b"{\"keys\":{}}",
        b"<html>502</html>",
    ] {
        assert_eq!(parse_jwks(body), Err(JwksError::NotAKeySet));
    }
    assert_eq!(parse_jwks(b"{\"keys\":[]}"), Err(JwksError::NoUsableKey));
}

#[test]
fn the_first_of_two_keys_with_one_kid_stays_and_lost_keys_are_seen() {
    let first = jwks(serde_json::json!([
        { "kid": "a", "kty": "RSA", "n": modulus(256), "e": "AQAB" },
        { "kid": "a", "kty": "RSA", "n": modulus(512), "e": "AQAB" },
    ]));
    let set = parse_jwks(&first).unwrap();
    assert_eq!(set.get("a").map(|k| k.n.len()), Some(256));
    let second = parse_jwks(&jwks(serde_json::json!([
        { "kid": "a", "kty": "RSA", "n": modulus(256), "e": "AQAB" },
        { "kid": "b", "kty": "RSA", "n": modulus(256), "e": "AQAB" },
    ])))
    .unwrap();
    assert!(!set.lost_keys_in(&second), "a key added loses nothing");
    let third = parse_jwks(&jwks(serde_json::json!([
        { "kid": "b", "kty": "RSA", "n": modulus(256), "e": "AQAB" },
    ])))
    .unwrap();
    assert!(second.lost_keys_in(&third));
}

#[test]
fn one_jwk_is_a_key_without_a_kid_and_only_when_it_is_an_rs256_signing_key() {
    let jwk = serde_json::json!({ "kty": "RSA", "e": "AQAB", "n": modulus(256) });
    let key = RsaKey::from_jwk_value(&jwk).unwrap();
    assert_eq!((key.n.len(), key.e.as_slice()), (256, &[1u8, 0, 1][..]));
    for (field, value) in [
        ("use", "enc"),
        ("alg", "PS256"),
        ("alg", "RSA-OAEP"),
        ("kty", "EC"),
    ] {
        let mut other = jwk.clone();
        other[field] = serde_json::json!(value);
        assert_eq!(RsaKey::from_jwk_value(&other), None, "{field}: {value}");
    }
    for not_a_jwk in [
        serde_json::json!("text"),
        serde_json::json!({ "kty": "RSA", "n": modulus(256) }),
        serde_json::json!({ "kty": "RSA", "e": "AQAB", "n": modulus(256), "kid": 7 }),
        serde_json::json!({ "kty": "RSA", "e": "AQAB", "n": modulus(256), "x5c": "not a list" }),
    ] {
        assert_eq!(RsaKey::from_jwk_value(&not_a_jwk), None, "{not_a_jwk}");
    }
}
