//! The key file's formats: a private RSA JWK, the PEM blocks, and the keys of other kinds that are
//! recognised (so that an EC key or a certificate is named as such rather than met as a parse error).
//! Buffers that held key material are wiped before they are freed.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use ring::rsa::{KeyPairComponents, PublicKeyComponents};
use ring::signature::RsaKeyPair;

use super::zeroize_lite::Wipe;

/// What a key file that is not an RSA private key holds, when that can be told without parsing it: an EC
/// or Ed25519 key (SEC1 or PKCS#8 PEM, or a JWK), a public key or certificate, an encrypted or OpenSSH key.
/// Only the PEM labels, the PKCS#8 algorithm identifier and the JWK's `kty` are looked at.
pub(super) fn other_kind(text: &str) -> Option<&'static str> {
    const LABELS: &[(&str, &str)] = &[
        ("-----BEGIN EC PRIVATE KEY-----", "an EC key (SEC1 PEM)"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "an OpenSSH key"),
        (
            "-----BEGIN ENCRYPTED PRIVATE KEY-----",
            "an encrypted PKCS#8 key (decrypt it first: openssl pkey -in KEY -out PLAIN)",
        ),
        (
            "-----BEGIN PUBLIC KEY-----",
            "a public key, not a private key",
        ),
        (
            "-----BEGIN RSA PUBLIC KEY-----",
            "a public key, not a private key",
        ),
        (
            "-----BEGIN CERTIFICATE-----",
            "a certificate, not a private key",
        ),
    ];
    if let Some((_, what)) = LABELS.iter().find(|(label, _)| text.contains(label)) {
        return Some(what);
    }
    if text.starts_with('{') {
        let kty = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v.get("kty").and_then(|k| k.as_str()).map(str::to_string));
        return match kty.as_deref() {
            Some("EC") => Some("an EC key (JWK kty EC)"),
            Some("OKP") => Some("an Ed25519 or X25519 key (JWK kty OKP)"),
            _ => None,
        };
    }
    let mut der = pem_body(text, "PRIVATE KEY")?;
    // The PKCS#8 AlgorithmIdentifier comes within the first few dozen bytes.
    let head = &der[..der.len().min(32)];
    let found = if contains(head, &EC_PUBLIC_KEY_OID) {
        Some("an EC key (PKCS#8)")
    } else if contains(head, &ED25519_OID) {
        Some("an Ed25519 key (PKCS#8)")
    } else {
        None
    };
    der.wipe();
    found
}

/// DER of the OID 1.2.840.10045.2.1 (id-ecPublicKey).
const EC_PUBLIC_KEY_OID: [u8; 9] = [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// DER of the OID 1.3.101.112 (id-Ed25519).
const ED25519_OID: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The DER inside `-----BEGIN {label}-----` … `-----END {label}-----`, when the text has that block.
pub(super) fn pem_body(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let mut base64: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = STANDARD.decode(&base64).ok();
    base64.wipe();
    der
}

/// A private RSA JWK: `kty` RSA and the CRT parameters (`n`, `e`, `d`, `p`, `q`, `dp`, `dq`, `qi`).
pub(super) fn from_jwk(text: &str) -> Result<(RsaKeyPair, Option<String>), &'static str> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| "not JSON")?;
    if value.get("kty").and_then(|v| v.as_str()) != Some("RSA") {
        return Err("the JWK's kty is not RSA");
    }
    let part = |name: &str| -> Result<Vec<u8>, &'static str> {
        let raw = value
            .get(name)
            .and_then(|v| v.as_str())
            .ok_or("the JWK lacks a private RSA parameter (n, e, d, p, q, dp, dq, qi)")?;
        URL_SAFE_NO_PAD
            .decode(raw)
            .or_else(|_| URL_SAFE.decode(raw))
            .map_err(|_| "a JWK parameter is not base64url")
    };
    let mut parts = [
        part("d")?,
        part("p")?,
        part("q")?,
        part("dp")?,
        part("dq")?,
        part("qi")?,
    ];
    let components = KeyPairComponents {
        public_key: PublicKeyComponents {
            n: part("n")?,
            e: part("e")?,
        },
        d: parts[0].as_slice(),
        p: parts[1].as_slice(),
        q: parts[2].as_slice(),
        dP: parts[3].as_slice(),
        dQ: parts[4].as_slice(),
        qInv: parts[5].as_slice(),
    };
    let pair = RsaKeyPair::from_components(&components).map_err(|_| "the JWK's key is rejected");
    for part in &mut parts {
        part.wipe();
    }
    let kid = value
        .get("kid")
        .and_then(|v| v.as_str())
        .filter(|k| !k.is_empty())
        .map(str::to_string);
    Ok((pair?, kid))
}
