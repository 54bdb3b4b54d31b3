//! Any bytes as an `x-jws-signature` header, as its body, and as a Central Registry answer: the detached
//! JWS parser, the verification over the body with the golden key, the lenient CR record parser and the
//! private-key file parser. Nothing may panic; a parsed signature always has a non-empty header segment
//! and signature; the golden vector's header never verifies over a body other than its own.
#![no_main]

use std::sync::OnceLock;

use aa_token_broker::jws::golden::{GOLDEN_BODY, GOLDEN_KID, GOLDEN_N, GOLDEN_SIGNATURE};
use aa_token_broker::jws::{SigningKey, parse, verify};
use aa_token_broker::keys::RsaKey;
use aa_token_broker::registry::record;
use libfuzzer_sys::fuzz_target;

fn golden_key() -> Option<&'static RsaKey> {
    static KEY: OnceLock<Option<RsaKey>> = OnceLock::new();
    KEY.get_or_init(|| {
        RsaKey::from_jwk_value(&serde_json::json!({
            "kty": "RSA", "e": "AQAB", "kid": GOLDEN_KID, "n": GOLDEN_N
        }))
    })
    .as_ref()
}

fuzz_target!(|data: &[u8]| {
    // The input split in two: a header value and a body.
    let cut = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let (value, body) = (&data[..cut], data.get(cut + 1..).unwrap_or(&[]));
    if let Ok(parsed) = parse(value) {
        assert!(!parsed.header_segment.is_empty());
        assert!(!parsed.signature.is_empty());
        if let Some(key) = golden_key() {
            let _ = verify(&parsed, key, body);
        }
    }
    if let (Some(key), Ok(golden)) = (golden_key(), parse(GOLDEN_SIGNATURE.as_bytes())) {
        if body != GOLDEN_BODY {
            assert!(verify(&golden, key, body).is_err(), "the golden signature verified another body");
        }
    }
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = record::parse(body, text.get(..8).unwrap_or(text));
    }
    let _ = SigningKey::from_file_bytes(data, Some("kid"), "fuzz");
});
