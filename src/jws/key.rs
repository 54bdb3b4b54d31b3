//! The entity's private signing key: parsed from the bytes of a key file (PKCS#8 PEM, PKCS#1 PEM or a
//! private RSA JWK, [`format`]) into a type that never prints it, and the signatures it makes.
//!
//! The key never leaves [`SigningKey`]: no accessor returns its bytes, `Debug` and `Display` say only its
//! `kid` and size, and errors name the file and what is wrong with it, never its content. Reading the
//! file, and reading it again when it changes, is [`super::key_file`]'s.

mod format;

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::rsa::PublicKeyComponents;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use zeroize_lite::Wipe;

use super::{MAX_KID_LEN, header_segment};
use format::{from_jwk, other_kind, pem_body};

/// Why a key could not be had. Never holds the key's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the signing key file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the signing key file {path} is {kind}, not a regular file")]
    NotAFile { path: String, kind: &'static str },
    #[error("the signing key file {path} is larger than 64 KiB")]
    TooLarge { path: String },
    #[error(
        "the signing key file {path} is not a PKCS#8 or PKCS#1 PEM RSA key, nor a private RSA JWK: {reason}"
    )]
    Format { path: String, reason: String },
    /// A key of another kind, recognised: saying so beats a parse error.
    #[error("the signing key file {path} holds {what}: only RSA keys are supported (RS256)")]
    NotRsa { path: String, what: &'static str },
    #[error(
        "the signing key file {path} has no kid; give --signing-kid (the kid registered in the CR)"
    )]
    NoKid { path: String },
    #[error("the kid must be 1 to {MAX_KID_LEN} visible ASCII characters")]
    BadKid,
    #[error("RS256 signing failed")]
    Sign,
}

/// An RSA private key and the `kid` it signs under.
pub struct SigningKey {
    pair: RsaKeyPair,
    kid: String,
    /// The protected header, encoded once: every signature starts with it.
    header: String,
    rng: SystemRandom,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SigningKey(kid={:?}, {} bits, private part redacted)",
            self.kid,
            self.pair.public().modulus_len() * 8
        )
    }
}

impl fmt::Display for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl SigningKey {
    /// A key from the bytes of a key file; `kid` overrides the JWK's own. `path` only names the file in
    /// errors.
    pub fn from_file_bytes(bytes: &[u8], kid: Option<&str>, path: &str) -> Result<Self, KeyError> {
        let format = |reason: &str| KeyError::Format {
            path: path.to_string(),
            reason: reason.to_string(),
        };
        let text = std::str::from_utf8(bytes).map_err(|_| format("not text"))?;
        let trimmed = text.trim_start();
        if let Some(what) = other_kind(trimmed) {
            return Err(KeyError::NotRsa {
                path: path.to_string(),
                what,
            });
        }
        let (pair, jwk_kid) = if trimmed.starts_with('{') {
            let (pair, jwk_kid) = from_jwk(trimmed).map_err(&format)?;
            (pair, jwk_kid)
        } else if let Some(mut der) = pem_body(trimmed, "PRIVATE KEY") {
            let pair = RsaKeyPair::from_pkcs8(&der).map_err(|_| format("PKCS#8 rejected"));
            der.wipe();
            (pair?, None)
        } else if let Some(mut der) = pem_body(trimmed, "RSA PRIVATE KEY") {
            let pair = RsaKeyPair::from_der(&der).map_err(|_| format("PKCS#1 rejected"));
            der.wipe();
            (pair?, None)
        } else {
            return Err(format("no PEM block or JSON object found"));
        };
        let kid = match kid.map(str::trim).filter(|k| !k.is_empty()) {
            Some(kid) => kid.to_string(),
            None => jwk_kid.ok_or_else(|| KeyError::NoKid {
                path: path.to_string(),
            })?,
        };
        Self::new(pair, kid)
    }

    /// A key with its `kid`.
    pub fn new(pair: RsaKeyPair, kid: String) -> Result<Self, KeyError> {
        if kid.is_empty()
            || kid.len() > MAX_KID_LEN
            || !kid.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(KeyError::BadKid);
        }
        Ok(Self {
            header: header_segment(&kid),
            pair,
            kid,
            rng: SystemRandom::new(),
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half as a JWK (what the CR must hold as `certificate`).
    pub fn public_jwk(&self) -> serde_json::Value {
        let components = PublicKeyComponents::<Vec<u8>>::from(self.pair.public());
        serde_json::json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(&components.n),
            "e": URL_SAFE_NO_PAD.encode(&components.e),
        })
    }

    /// The protected header segment this key signs with (base64url).
    pub fn header(&self) -> &str {
        &self.header
    }

    /// The `x-jws-signature` value over `body`: `<header>..<signature>`.
    pub fn sign(&self, body: &[u8]) -> Result<String, KeyError> {
        self.sign_input(&super::signing_input(&self.header, body))
    }

    /// The `x-jws-signature` value for a signing input already assembled as `header() || "." || body`
    /// (a body read after that prefix, so a large one is not copied). Any other input is refused.
    pub fn sign_input(&self, input: &[u8]) -> Result<String, KeyError> {
        let expected = input
            .strip_prefix(self.header.as_bytes())
            .is_some_and(|rest| rest.first() == Some(&b'.'));
        if !expected {
            return Err(KeyError::Sign);
        }
        let mut signature = vec![0; self.pair.public().modulus_len()];
        self.pair
            .sign(&RSA_PKCS1_SHA256, &self.rng, input, &mut signature)
            .map_err(|_| KeyError::Sign)?;
        let mut value = String::with_capacity(self.header.len() + 2 + signature.len() * 4 / 3 + 4);
        value.push_str(&self.header);
        value.push_str("..");
        URL_SAFE_NO_PAD.encode_string(&signature, &mut value);
        Ok(value)
    }
}

/// Overwrites buffers that held key material before they are freed, so a copy does not linger in the
/// heap. Best effort: the compiler may not elide these writes through `black_box`.
pub(super) mod zeroize_lite {
    pub trait Wipe {
        fn wipe(&mut self);
    }

    impl Wipe for Vec<u8> {
        fn wipe(&mut self) {
            for byte in self.iter_mut() {
                *byte = 0;
            }
            std::hint::black_box(&self);
        }
    }

    impl Wipe for String {
        fn wipe(&mut self) {
            let mut bytes = std::mem::take(self).into_bytes();
            bytes.wipe();
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    /// A PKCS#8 key of the simulator's peer pool (public by design).
    pub(crate) fn test_pem() -> String {
        let der = include_bytes!("../simulator/peer-key-6.der");
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in STANDARD.encode(der).as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        pem
    }

    #[test]
    fn a_pem_key_signs_what_its_public_jwk_verifies_and_never_prints_itself() {
        let pem = test_pem();
        assert!(matches!(
            SigningKey::from_file_bytes(pem.as_bytes(), None, "k.pem"),
            Err(KeyError::NoKid { .. })
        ));
        let key = SigningKey::from_file_bytes(pem.as_bytes(), Some("kid-1"), "k.pem").unwrap();
        let value = key.sign(b"{\"a\":1}").unwrap();
        let public = crate::keys::RsaKey::from_jwk_value(&key.public_jwk()).unwrap();
        let parsed = super::super::parse(value.as_bytes()).unwrap();
        assert_eq!(parsed.kid.as_deref(), Some("kid-1"));
        assert!(super::super::verify(&parsed, &public, b"{\"a\":1}").is_ok());
        assert!(super::super::verify(&parsed, &public, b"{\"a\":2}").is_err());
        let shown = format!("{key:?} {key}");
        let body: String = pem.lines().nth(1).unwrap().to_string();
        assert!(!shown.contains(&body[..20]), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn a_private_jwk_signs_like_the_same_key_in_pkcs8_and_names_its_kid() {
        // The simulator's fourth pool key, exported as a JWK with Python `cryptography`.
        let jwk = include_str!("testdata/peer-key-4.jwk.json");
        let key = SigningKey::from_file_bytes(jwk.as_bytes(), None, "k.json").unwrap();
        assert_eq!(key.kid(), "pool-4");
        let der = include_bytes!("../simulator/peer-key-4.der");
        let same = SigningKey::new(RsaKeyPair::from_pkcs8(der).unwrap(), "pool-4".into()).unwrap();
        assert_eq!(key.sign(b"body").unwrap(), same.sign(b"body").unwrap());
        let renamed = SigningKey::from_file_bytes(jwk.as_bytes(), Some("other"), "k.json").unwrap();
        assert_eq!(renamed.kid(), "other");
        let public_only = jwk.replace("\"d\"", "\"x\"");
        assert!(SigningKey::from_file_bytes(public_only.as_bytes(), None, "k.json").is_err());
    }

    #[test]
    fn bad_files_are_errors_that_do_not_repeat_their_content() {
        for bytes in [
            &b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END PRIVATE KEY-----\n"[..],
            b"{\"kty\":\"RSA\",\"n\":\"secret-bytes\"}",
            b"{\"kty\":\"EC\"}",
            b"secret-bytes",
            b"\xff\xfe",
        ] {
            let error = SigningKey::from_file_bytes(bytes, Some("k"), "f").unwrap_err();
            let text = error.to_string();
            assert!(
                !text.contains("secret-bytes") && !text.contains("c2Vj"),
                "{text}"
            );
        }
    }

    #[test]
    fn keys_of_other_kinds_are_named_as_such() {
        let rng = SystemRandom::new();
        let ec = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .unwrap();
        let ed = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pem = |label: &str, der: &[u8]| {
            format!(
                "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
                STANDARD.encode(der)
            )
        };
        for (text, what) in [
            (pem("PRIVATE KEY", ec.as_ref()), "an EC key (PKCS#8)"),
            (pem("EC PRIVATE KEY", b"sec1"), "an EC key (SEC1 PEM)"),
            (pem("PRIVATE KEY", ed.as_ref()), "an Ed25519 key (PKCS#8)"),
            (
                r#"{"kty":"EC","crv":"P-256"}"#.to_string(),
                "an EC key (JWK kty EC)",
            ),
            (
                pem("PUBLIC KEY", b"public"),
                "a public key, not a private key",
            ),
            (
                pem("CERTIFICATE", b"cert"),
                "a certificate, not a private key",
            ),
        ] {
            let error =
                SigningKey::from_file_bytes(text.as_bytes(), Some("k"), "k.pem").unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "the signing key file k.pem holds {what}: only RSA keys are supported (RS256)"
                )
            );
        }
        // An RSA key is still read.
        assert!(SigningKey::from_file_bytes(test_pem().as_bytes(), Some("k"), "k.pem").is_ok());
    }
}
