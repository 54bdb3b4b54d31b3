//! RS256 verification keys and the key-set documents (JWKS) they come in: the one place that turns a JWK
//! into a key. `inbound` (the realm's key set), `registry` (a peer's `certificate` in the Central Registry)
//! and `jws` (a detached signature's check) use it; it uses none of them.
//!
//! [`RsaKey::from_jwk`] reads one JWK (as [`jsonwebtoken::jwk::Jwk`] parses it) and [`parse_jwks`] is a
//! pure function from the bytes a key endpoint sent to the RS256 signing keys they hold, by `kid`.
//! Everything in a JWK is distrusted: only `kty: RSA` keys whose `use` is `sig` (or absent) and whose `alg`
//! is `RS256` (or absent) are kept; moduli must be 2048 to 8192 bits and exponents small odd numbers, which
//! is what `ring` accepts, so an absurd `n` or `e` is dropped here rather than met at verification time;
//! `x5c`, `x5u` and anything else that points elsewhere is never followed (a JWK whose `x5c`, `x5u` or
//! `key_ops` is not of the type RFC 7517 gives is malformed, and skipped like any other).

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use serde::Deserialize;

/// Largest key-set document read. Keycloak's is a few KiB (two or three keys with certificates).
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Keys looked at in one document; the rest are ignored.
const MAX_KEYS: usize = 64;
/// Longest `kid` kept (and accepted in a signature's header).
pub const MAX_KID_LEN: usize = 256;
/// RSA moduli accepted: 2048 to 8192 bits, as `ring`'s `RSA_PKCS1_2048_8192_SHA256` requires.
const MODULUS_BYTES: std::ops::RangeInclusive<usize> = 256..=1024;

/// One RS256 verification key.
#[derive(Clone, PartialEq, Eq)]
pub struct RsaKey {
    n: Vec<u8>,
    e: Vec<u8>,
}

impl std::fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RsaKey({} bits)", self.n.len() * 8)
    }
}

impl RsaKey {
    /// The key of one JWK, when it is an RS256 signing key of a size and exponent `ring` accepts. The
    /// `kid` is not looked at: a key set needs one, a CR `certificate` may go without.
    pub fn from_jwk(jwk: &Jwk) -> Option<RsaKey> {
        let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else {
            return None;
        };
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != PublicKeyUse::Signature)
        {
            return None;
        }
        if jwk
            .common
            .key_algorithm
            .is_some_and(|a| a != KeyAlgorithm::RS256)
        {
            return None;
        }
        let n = strip_leading_zeros(decode_component(&rsa.n)?);
        let e = strip_leading_zeros(decode_component(&rsa.e)?);
        if !MODULUS_BYTES.contains(&n.len()) || n.last().is_none_or(|b| b & 1 == 0) {
            return None;
        }
        // ring accepts 3 ≤ e < 2^33, odd; keep it to what fits in 32 bits (every real key uses 65537).
        let exponent = match e.len() {
            1..=4 => e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
            _ => return None,
        };
        if exponent < 3 || exponent % 2 == 0 {
            return None;
        }
        Some(RsaKey { n, e })
    }

    /// [`from_jwk`](Self::from_jwk) of a JSON value (a CR record's `certificate`); `None` when it is not a
    /// JWK at all.
    pub fn from_jwk_value(jwk: &serde_json::Value) -> Option<RsaKey> {
        Self::from_jwk(&Jwk::deserialize(jwk).ok()?)
    }

    /// Checks an RS256 (RSASSA-PKCS1-v1_5 with SHA-256) signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        ring::signature::RsaPublicKeyComponents {
            n: &self.n,
            e: &self.e,
        }
        .verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            message,
            signature,
        )
        .is_ok()
    }
}

/// The signing keys of one key-set document, by `kid`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: HashMap<String, RsaKey>,
}

impl KeySet {
    pub fn get(&self, kid: &str) -> Option<&RsaKey> {
        self.keys.get(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// True when some key of `self` is gone from `newer` (a key withdrawn, not only one added).
    pub fn lost_keys_in(&self, newer: &KeySet) -> bool {
        self.keys
            .iter()
            .any(|(kid, key)| newer.keys.get(kid) != Some(key))
    }
}

/// Why a key-set document was not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("the key set is not a JSON object with a `keys` array")]
    NotAKeySet,
    #[error("the key set holds no usable RS256 signing key")]
    NoUsableKey,
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

/// Parses a JWKS document into the RS256 signing keys it holds. Unusable keys are skipped; a document
/// with none is an error (so a broken endpoint answering `{"keys":[]}` does not replace a good key set).
pub fn parse_jwks(body: &[u8]) -> Result<KeySet, JwksError> {
    let document: Document = serde_json::from_slice(body).map_err(|_| JwksError::NotAKeySet)?;
    let mut keys = HashMap::new();
    for value in document.keys.into_iter().take(MAX_KEYS) {
        // A key of an unexpected shape is skipped, not fatal: Keycloak publishes encryption keys too.
        let Ok(jwk) = Jwk::deserialize(&value) else {
            continue;
        };
        if let Some((kid, key)) = usable_key(&jwk) {
            // Two keys with one `kid` are ambiguous; the first stays, as a verifier must pick one.
            keys.entry(kid).or_insert(key);
        }
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey);
    }
    Ok(KeySet { keys })
}

/// A key-set entry's `kid` and key: the key must be usable and the `kid` non-empty and short.
fn usable_key(jwk: &Jwk) -> Option<(String, RsaKey)> {
    let kid = jwk
        .common
        .key_id
        .as_ref()
        .filter(|k| !k.is_empty() && k.len() <= MAX_KID_LEN)?;
    Some((kid.clone(), RsaKey::from_jwk(jwk)?))
}

/// base64url, with or without padding (Keycloak sends none; some servers pad).
fn decode_component(raw: &str) -> Option<Vec<u8>> {
    if raw.len() > 2 * MODULUS_BYTES.end() {
        return None;
    }
    URL_SAFE_NO_PAD
        .decode(raw)
        .or_else(|_| URL_SAFE.decode(raw))
        .ok()
}

fn strip_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

#[cfg(test)]
mod tests;
