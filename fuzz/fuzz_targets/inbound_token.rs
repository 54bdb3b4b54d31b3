//! Any bytes as an incoming token and as a realm key-set document: the token parser, the key lookup, the
//! signature and claim checks, the expectation parser and the JWKS parser. Nothing may panic, whatever
//! the numbers (`exp` of 1e300, moduli of any size, exponents of any length) and whatever the nesting.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use aa_token_broker::keys::{KeySet, parse_jwks};
use aa_token_broker::inbound::verify::{check_claims, check_signature, parse};
use aa_token_broker::inbound::Expectation;
use aa_token_broker::simulator::jwt::SigningKey;
use libfuzzer_sys::fuzz_target;

/// The simulator's key set: a real key, so tokens that name its `kid` reach the signature check.
fn keys() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| {
        let jwks = SigningKey::simulator_key().map(|k| k.jwks().to_string()).unwrap_or_default();
        parse_jwks(jwks.as_bytes()).unwrap_or_default()
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(set) = parse_jwks(data) {
        assert!(!set.is_empty(), "a parsed key set holds a key");
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Expectation::parse(Some(text), Some(text));
    let Ok(parsed) = parse(text) else { return };
    if let Some(key) = parsed.kid.as_deref().and_then(|kid| keys().get(kid)) {
        let _ = check_signature(&parsed, key);
    }
    // The claim checks run on unverified claims here only to reach them; the verifier never does.
    let issuer = parsed.issuer.clone().unwrap_or_default();
    if let Ok(verified) = check_claims(parsed, &issuer, "kid", SystemTime::now(), Duration::from_secs(60)) {
        assert!(!verified.roles.is_empty());
        assert!(serde_json::from_str::<serde_json::Value>(&verified.claims_json).is_ok());
        let _ = verified.expires_in(SystemTime::now());
    }
});
