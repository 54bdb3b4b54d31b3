//! The simulator's signing key, its RS256 JWTs and its JWKS.
//!
//! The key is a fixed 2048-bit RSA key in PKCS#1 DER (`signing-key.der`, made with
//! `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -outform DER`, then `openssl rsa -traditional -inform DER -outform DER`). It is public by design:
//! it signs simulator tokens only, which nothing outside a test or a demo trusts. A fixed key keeps the
//! simulator's start instant (ring cannot generate RSA keys, and generating one in debug builds is slow).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair, RsaPublicKeyComponents};

const KEY_DER: &[u8] = include_bytes!("signing-key.der");

/// Signs JWTs with RS256 and publishes the matching JWK.
pub struct SigningKey {
    pair: RsaKeyPair,
    rng: SystemRandom,
    kid: String,
    n: Vec<u8>,
    e: Vec<u8>,
}

impl SigningKey {
    pub fn simulator_key() -> Result<Self, String> {
        Self::from_der(KEY_DER)
    }

    /// A key from PKCS#1 DER (the realm's other keys, see `realm.rs`).
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let pair = RsaKeyPair::from_der(der)
            .map_err(|e| format!("simulator signing key is invalid: {e}"))?;
        let components = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
        let digest = ring::digest::digest(&ring::digest::SHA256, &components.n);
        let kid = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16]);
        Ok(Self {
            pair,
            rng: SystemRandom::new(),
            kid,
            n: components.n,
            e: components.e,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A compact JWS: `base64url(header).base64url(claims).base64url(RS256 signature)`.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, String> {
        let header = serde_json::json!({ "alg": "RS256", "typ": "JWT", "kid": self.kid });
        self.sign_with_header(&header, claims)
    }

    /// Signs with RS256 under any header, e.g. one naming another key's `kid` (for forgery tests).
    pub fn sign_with_header(
        &self,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> Result<String, String> {
        let mut message = URL_SAFE_NO_PAD.encode(header.to_string());
        message.push('.');
        message.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature = vec![0; self.pair.public().modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &self.rng,
                message.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "RS256 signing failed".to_string())?;
        message.push('.');
        message.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(message)
    }

    /// The Keycloak-shaped JWKS document.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.jwk()] })
    }

    /// This key's entry in a JWKS.
    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kid": self.kid,
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(&self.n),
            "e": URL_SAFE_NO_PAD.encode(&self.e),
        })
    }
}

/// Verifies an RS256 JWT against a JWKS document and returns its claims. Used by tests and the demo to
/// prove that what the simulator issues is a real, verifiable token.
pub fn verify_with_jwks(
    token: &str,
    jwks: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a compact JWS".into());
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|e| format!("bad base64url: {e}"))
    };
    let header: serde_json::Value =
        serde_json::from_slice(&decode(header)?).map_err(|e| format!("bad header: {e}"))?;
    if header["alg"] != "RS256" {
        return Err("alg is not RS256".into());
    }
    let key = jwks["keys"]
        .as_array()
        .and_then(|keys| {
            keys.iter()
                .find(|k| k["kid"] == header["kid"] && k["use"] == "sig")
        })
        .ok_or("no JWK with the token's kid")?;
    let component = |name: &str| -> Result<Vec<u8>, String> {
        key[name]
            .as_str()
            .ok_or(format!("JWK has no {name}"))
            .and_then(decode)
    };
    let public = RsaPublicKeyComponents {
        n: component("n")?,
        e: component("e")?,
    };
    let signed = &token[..token.rfind('.').ok_or("no signature")?];
    public
        .verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            signed.as_bytes(),
            &decode(signature)?,
        )
        .map_err(|_| "signature does not verify".to_string())?;
    serde_json::from_slice(&decode(claims)?).map_err(|e| format!("bad claims: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_tokens_verify_and_tampered_ones_do_not() {
        let key = SigningKey::simulator_key().unwrap();
        let token = key
            .sign(&serde_json::json!({ "azp": "FIU-X", "exp": 2 }))
            .unwrap();
        let claims = verify_with_jwks(&token, &key.jwks()).unwrap();
        assert_eq!(claims["azp"], "FIU-X");
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(r#"{"azp":"FIU-Y","exp":2}"#);
        parts[1] = &forged;
        assert!(verify_with_jwks(&parts.join("."), &key.jwks()).is_err());
    }
}
