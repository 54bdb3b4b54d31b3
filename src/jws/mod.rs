//! Detached JWS with an unencoded payload (RFC 7515 + RFC 7797): the `x-jws-signature` of every ReBIT v2
//! request and response (spec §2).
//!
//! This module owns the bytes: [`parse`] reads a header value into its parts, [`verify`] checks one against
//! a public key and a body, [`SigningKey::sign`](key::SigningKey::sign) makes one. They are pure functions
//! over bytes; nothing here fetches a key, reads a clock or logs. The public key type is
//! [`crate::keys::RsaKey`]; where keys come from is the `registry` module (the peers' public keys), [`key`]
//! (our own private key and its formats) and [`key_file`] (its file, re-read when it changes).
//!
//! - The signing input is `BASE64URL(header) || "." || body`, the body exactly as received: no
//!   canonicalisation, and the header segment exactly as sent (never re-serialised).
//! - RS256 only; `alg: none` and every other algorithm are refused.
//! - `b64: false` is required (a detached JWS over an encoded payload is not what ReBIT sends); `crit` may
//!   be absent (ReBIT's FAQ and Finvu omit it) but, when present, may name only `b64`.
//! - A `kid` is optional: without one, the caller falls back to the sender's single registered key.
//! - Every failure is a typed [`JwsError`] with a reason; none panics, whatever the bytes.

pub mod key;
pub mod key_file;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use crate::keys::{MAX_KID_LEN, RsaKey};
pub use key::{KeyError, SigningKey};
pub use key_file::{KeyState, SigningKeyFile};

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "x-jws-signature";
/// Longest header value looked at: a header of a few hundred bytes and an 8192-bit signature fit easily.
pub const MAX_SIGNATURE_LEN: usize = 8 * 1024;

/// Why a signature was not accepted. Every variant is the sender's fault: a `4xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    #[error("the signature is not of the form <header>..<signature>")]
    NotDetached,
    #[error("the signature header is longer than {MAX_SIGNATURE_LEN} bytes")]
    TooLong,
    #[error("the protected header is not base64url-encoded JSON")]
    BadHeader,
    #[error("the algorithm is not RS256")]
    UnsupportedAlgorithm,
    #[error("the header does not declare an unencoded payload (\"b64\": false)")]
    EncodedPayload,
    #[error("the header marks as critical an extension other than b64")]
    UnknownCritical,
    #[error("the signature segment is not base64url")]
    BadSignatureEncoding,
    #[error("the signature does not match the body and the sender's key")]
    Mismatch,
}

impl JwsError {
    /// A short name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            JwsError::NotDetached => "not_detached",
            JwsError::TooLong => "too_long",
            JwsError::BadHeader => "bad_header",
            JwsError::UnsupportedAlgorithm => "unsupported_algorithm",
            JwsError::EncodedPayload => "encoded_payload",
            JwsError::UnknownCritical => "unknown_critical",
            JwsError::BadSignatureEncoding => "bad_signature_encoding",
            JwsError::Mismatch => "mismatch",
        }
    }
}

/// A parsed `x-jws-signature`: the header segment as sent, what it says, and the raw signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detached<'a> {
    /// The first segment, exactly as received: it is what was signed.
    pub header_segment: &'a str,
    /// The `kid`, when the header names one.
    pub kid: Option<String>,
    pub signature: Vec<u8>,
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<serde_json::Value>,
    b64: Option<serde_json::Value>,
    crit: Option<serde_json::Value>,
}

/// Parses a header value. Checks the form and the header; the signature is not verified here.
pub fn parse(value: &[u8]) -> Result<Detached<'_>, JwsError> {
    if value.len() > MAX_SIGNATURE_LEN {
        return Err(JwsError::TooLong);
    }
    let text = std::str::from_utf8(value).map_err(|_| JwsError::NotDetached)?;
    // Header fields may be padded with optional whitespace, which is not part of the value.
    let text = text.trim_matches([' ', '\t']);
    let (header_segment, rest) = text.split_once('.').ok_or(JwsError::NotDetached)?;
    let signature_segment = rest.strip_prefix('.').ok_or(JwsError::NotDetached)?;
    if header_segment.is_empty() || signature_segment.contains('.') {
        return Err(JwsError::NotDetached);
    }
    let header_json = URL_SAFE_NO_PAD
        .decode(header_segment)
        .map_err(|_| JwsError::BadHeader)?;
    let header: Header = serde_json::from_slice(&header_json).map_err(|_| JwsError::BadHeader)?;
    if header.alg.as_deref() != Some("RS256") {
        return Err(JwsError::UnsupportedAlgorithm);
    }
    if header.b64 != Some(serde_json::Value::Bool(false)) {
        return Err(JwsError::EncodedPayload);
    }
    match &header.crit {
        None => {}
        // Exactly `["b64"]`: an empty list, a duplicate or another name is refused (RFC 7515 §4.1.11).
        Some(serde_json::Value::Array(names)) if names.len() == 1 && names[0] == "b64" => {}
        Some(_) => return Err(JwsError::UnknownCritical),
    }
    let kid = match header.kid {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(kid)) if !kid.is_empty() && kid.len() <= MAX_KID_LEN => {
            Some(kid)
        }
        Some(_) => return Err(JwsError::BadHeader),
    };
    // A signature that is not base64url (one character removed, say) is a mismatch, not a bad request
    // (spec §2.3): the caller maps both to `SignatureDoesNotMatch`.
    let signature = URL_SAFE_NO_PAD
        .decode(signature_segment)
        .map_err(|_| JwsError::BadSignatureEncoding)?;
    if signature.is_empty() {
        return Err(JwsError::BadSignatureEncoding);
    }
    Ok(Detached {
        header_segment,
        kid,
        signature,
    })
}

/// `BASE64URL(header) || "." || body`, the bytes RS256 signs.
pub fn signing_input(header_segment: &str, body: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(header_segment.len() + 1 + body.len());
    input.extend_from_slice(header_segment.as_bytes());
    input.push(b'.');
    input.extend_from_slice(body);
    input
}

/// Checks a parsed signature over `body` with `key`.
pub fn verify(detached: &Detached<'_>, key: &RsaKey, body: &[u8]) -> Result<(), JwsError> {
    if key.verify(
        &signing_input(detached.header_segment, body),
        &detached.signature,
    ) {
        Ok(())
    } else {
        Err(JwsError::Mismatch)
    }
}

/// The protected header the broker emits, base64url-encoded: `{"alg":"RS256","kid":…,"b64":false,
/// "crit":["b64"]}`, in that order (the order of the spec's golden vector).
pub fn header_segment(kid: &str) -> String {
    let mut json = String::with_capacity(64 + kid.len());
    json.push_str("{\"alg\":\"RS256\",\"kid\":");
    // A kid is checked to be a plain string when the key is loaded; written as JSON all the same.
    json.push_str(&serde_json::Value::String(kid.to_string()).to_string());
    json.push_str(",\"b64\":false,\"crit\":[\"b64\"]}");
    URL_SAFE_NO_PAD.encode(json)
}

/// The spec's golden vector (§2.4): a public key, a body and the signature over it, for tests, the fuzz
/// target and the interop check.
pub mod golden {
    /// The spec's golden vector (§2.4), built with Python `cryptography` and reproduced with `jwcrypto`.
    pub const GOLDEN_N: &str = "pA2LihUAwJ4yO0IwHlY0F0N-oAr9OgCXUL4uryK39PP9f-s0aGL1Q_4sj6AR7xJDivSAlQeW6_yAEjunnNNUl45Su1m2n9LX2YyuU4-4UzCq2c-1oMcQ9ChmYZ9k2HyWxRUZjVlnIiHHXNGrVvdGRAR7Z7kMrGq1pdPv35oPKZO1YM9nmsjUOUlPgQSwOSGYokNjT96QCOWElid_C6gRwtMc6YyVLXEXYj16xR_OqDWSyEbUO7P1xrZh4b-ekvahL2so1aH6_aqyP70RG2y8zC-oREd1v3MnsMGSjlGjGSifo21hYYXW45OEp5-ygFhBOM0SMhP0O_5rM7tsgO6cZw";
    pub const GOLDEN_KID: &str = "4271913e-7b93-49dd-9949-1c76ff5fc5cf";
    pub const GOLDEN_BODY: &[u8] = br#"{"ver":"2.0.0","timestamp":"2023-06-26T11:33:34.509Z","txnid":"0b811819-9044-4856-b0ee-8c88035f8858"}"#;
    pub const GOLDEN_SIGNATURE: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjQyNzE5MTNlLTdiOTMtNDlkZC05OTQ5LTFjNzZmZjVmYzVjZiIsImI2NCI6ZmFsc2UsImNyaXQiOlsiYjY0Il19..aivfdMJX22ePby6Xlky4BgrnX9eAJY5_6QquQr8fDDKx4tRqyrn93F_JoQXju9muTVa9VVnVXHUtN9J5F7MUIAyDkt0P0Z-MUiLH3sryYTw1tAfmEYWfsg-3Egd_7JxVoqDZ7R4sUjlVP_8WTBFDIR0eemNnoexrASJ5kbOV0DspZQ7nP4E0Vk_80vyY2LbU3NxKuvqoPyo0glpgFyIfd6Z40z_z5vim-s4cbZTWBQ_8cOL13L8jamQMNCvp_GXTwjqcqzYM1U8jYU9y9Y4l9g1lqkD4Lu-G-us7yoJf35g_7w7_1LT_t3SXhdVDKHCobZKf713qCicVj2acRCuxRw";
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::golden::*;

    fn golden_key() -> RsaKey {
        RsaKey::from_jwk_value(&serde_json::json!({
            "kty": "RSA", "e": "AQAB", "use": "sig", "alg": "RS256", "kid": GOLDEN_KID, "n": GOLDEN_N
        }))
        .unwrap()
    }

    #[test]
    fn the_golden_vector_verifies_and_a_one_byte_change_does_not() {
        let key = golden_key();
        let parsed = parse(GOLDEN_SIGNATURE.as_bytes()).unwrap();
        assert_eq!(parsed.kid.as_deref(), Some(GOLDEN_KID));
        assert_eq!(
            parsed.header_segment,
            header_segment(GOLDEN_KID),
            "the broker's header is the vector's, byte for byte"
        );
        assert_eq!(verify(&parsed, &key, GOLDEN_BODY), Ok(()));
        let tampered = String::from_utf8(GOLDEN_BODY.to_vec())
            .unwrap()
            .replace("2.0.0", "2.0.1");
        assert_eq!(
            verify(&parsed, &key, tampered.as_bytes()),
            Err(JwsError::Mismatch)
        );
        for index in [0, 50, GOLDEN_BODY.len() - 1] {
            let mut body = GOLDEN_BODY.to_vec();
            body[index] ^= 1;
            assert_eq!(verify(&parsed, &key, &body), Err(JwsError::Mismatch));
        }
    }

    #[test]
    fn a_signature_one_character_longer_or_shorter_is_a_mismatch_not_a_crash() {
        let key = golden_key();
        let longer = format!("{GOLDEN_SIGNATURE}A");
        let shorter = &GOLDEN_SIGNATURE[..GOLDEN_SIGNATURE.len() - 1];
        for value in [longer.as_str(), shorter] {
            let outcome = parse(value.as_bytes()).and_then(|p| verify(&p, &key, GOLDEN_BODY));
            assert!(
                matches!(
                    outcome,
                    Err(JwsError::BadSignatureEncoding | JwsError::Mismatch)
                ),
                "{outcome:?}"
            );
        }
    }

    fn with_header(header: &str) -> String {
        format!("{}..c2ln", URL_SAFE_NO_PAD.encode(header))
    }

    #[test]
    fn lenient_headers_parse_and_others_are_refused_with_a_reason() {
        // The D6 header (key order alg, kid, crit, b64), ReBIT's FAQ form (no crit), Sahamati's router
        // scripts (no kid).
        for ok in [
            r#"{"alg":"RS256","kid":"TegQa2k71IEZZ-hHqrmnyaEsvoIih5gkULvJ1_LHblk","crit":["b64"],"b64":false}"#,
            r#"{"b64":false,"kid":"142117485","alg":"RS256"}"#,
            r#"{"alg":"RS256","b64":false,"crit":["b64"]}"#,
        ] {
            assert!(parse(with_header(ok).as_bytes()).is_ok(), "{ok}");
        }
        let refused = [
            (
                r#"{"alg":"none","b64":false}"#,
                JwsError::UnsupportedAlgorithm,
            ),
            (
                r#"{"alg":"RS512","b64":false}"#,
                JwsError::UnsupportedAlgorithm,
            ),
            (
                r#"{"alg":"HS256","b64":false}"#,
                JwsError::UnsupportedAlgorithm,
            ),
            (r#"{"alg":"RS256"}"#, JwsError::EncodedPayload),
            (r#"{"alg":"RS256","b64":true}"#, JwsError::EncodedPayload),
            (r#"{"alg":"RS256","b64":"false"}"#, JwsError::EncodedPayload),
            (
                r#"{"alg":"RS256","b64":false,"crit":["exp"]}"#,
                JwsError::UnknownCritical,
            ),
            (
                r#"{"alg":"RS256","b64":false,"crit":[]}"#,
                JwsError::UnknownCritical,
            ),
            (
                r#"{"alg":"RS256","b64":false,"crit":["b64","b64"]}"#,
                JwsError::UnknownCritical,
            ),
            (
                r#"{"alg":"RS256","b64":false,"crit":"b64"}"#,
                JwsError::UnknownCritical,
            ),
            (
                r#"{"alg":"RS256","b64":false,"kid":7}"#,
                JwsError::BadHeader,
            ),
            (r#"[1,2]"#, JwsError::BadHeader),
            ("not json", JwsError::BadHeader),
        ];
        for (header, error) in refused {
            assert_eq!(
                parse(with_header(header).as_bytes()),
                Err(error),
                "{header}"
            );
        }
        for (value, error) in [
            (&b""[..], JwsError::NotDetached),
            (b"abc", JwsError::NotDetached),
            (b"a.b.c", JwsError::NotDetached),
            (b"..sig", JwsError::NotDetached),
            (b"a...b", JwsError::NotDetached),
            (b"\xff\xfe..", JwsError::NotDetached),
            (b"!!..c2ln", JwsError::BadHeader),
        ] {
            assert_eq!(parse(value), Err(error), "{value:?}");
        }
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","b64":false}"#);
        for signature in ["", "c2l", "c2ln+", "c2ln=", "c 2ln"] {
            assert_eq!(
                parse(format!("{header}..{signature}").as_bytes()),
                Err(JwsError::BadSignatureEncoding),
                "{signature:?}"
            );
        }
        assert_eq!(
            parse(&vec![b'a'; MAX_SIGNATURE_LEN + 1]),
            Err(JwsError::TooLong)
        );
    }

    proptest::proptest! {
        /// What the fuzz target checks, on every test run: any bytes as the header value, any body —
        /// never a panic, and the golden signature never verifies a body other than its own.
        #[test]
        fn arbitrary_headers_and_bodies_are_refused_with_a_reason(
            value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            header in "[ -~]{0,80}",
        ) {
            let key = golden_key();
            if let Ok(parsed) = parse(&value) {
                proptest::prop_assert!(verify(&parsed, &key, &body).is_err());
            }
            let built = format!("{}..{}", URL_SAFE_NO_PAD.encode(&header), URL_SAFE_NO_PAD.encode(&value));
            if let Ok(parsed) = parse(built.as_bytes()) {
                proptest::prop_assert!(verify(&parsed, &key, &body).is_err());
            }
            let golden = parse(GOLDEN_SIGNATURE.as_bytes()).unwrap();
            proptest::prop_assert!(verify(&golden, &key, &body).is_err());
        }
    }
}
