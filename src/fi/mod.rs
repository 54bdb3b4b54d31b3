//! FI data encryption: what Sahamati's `rahasya` does for FIUs and FIPs, with the ephemeral private key
//! never leaving the sidecar.
//!
//! The scheme (`../shared/spec` has it byte for byte; the README summarises it): ECDH on BouncyCastle's
//! Weierstrass Curve25519 with unclamped keys ([`curve`]), the two 32-byte nonces XORed, HKDF-SHA256 of
//! the shared secret with the first 20 bytes as salt, AES-256-GCM with the last 12 as IV ([`Session`]).
//!
//! - [`curve`]: the curve, on curve25519-dalek; [`keys`]: `KeyMaterial`, SPKI, PKCS#8, expiries;
//! - [`kek`]: the KEK file and the key handles sealed under it;
//! - [`inplace`]: base64 decoded and re-encoded inside the request's own buffer;
//! - [`wire`]: the routes' JSON in and out, over one buffer, for the HTTP layer and the `fi` command.
//!
//! Nothing here knows HTTP. Errors carry a code and a message that never holds key material.

pub mod curve;
pub mod inplace;
pub mod kek;
pub mod keys;
pub mod wire;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use zeroize::Zeroizing;

use curve::{PrivateKey, PublicKey};

/// Nonce length (each side's).
pub const NONCE_LEN: usize = 32;
/// AES-GCM tag length, appended to the ciphertext.
pub const TAG_LEN: usize = 16;

/// Which key was past its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// Our key handle.
    Handle,
    /// The peer's `DHPublicKey`.
    Remote,
}

/// What went wrong, as the answer names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BadRequest,
    DecryptionFailed,
    UnsupportedKeyMaterial,
    KeyExpired(Expired),
    InvalidHandle,
    /// Several entities hold a KEK and the request names none, or names one without a KEK.
    EntityRequired,
    UnknownEntity,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::DecryptionFailed => "decryption_failed",
            Code::UnsupportedKeyMaterial => "unsupported_key_material",
            Code::KeyExpired(_) => "key_expired",
            Code::InvalidHandle => "invalid_handle",
            Code::EntityRequired => "entity_required",
            Code::UnknownEntity => "no_fi_key",
            Code::Internal => "internal",
        }
    }
}

/// An error with its code; the message is for people and never holds key material or data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct FiError {
    pub kind: Code,
    pub message: String,
}

impl FiError {
    pub fn new(kind: Code, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    pub fn code(&self) -> &'static str {
        self.kind.as_str()
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Code::BadRequest, message)
    }
    pub fn key_material(message: impl Into<String>) -> Self {
        Self::new(Code::UnsupportedKeyMaterial, message)
    }
    pub fn invalid_handle(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidHandle, message)
    }
    pub fn expired(which: Expired, message: impl Into<String>) -> Self {
        Self::new(Code::KeyExpired(which), message)
    }
    pub fn decryption_failed() -> Self {
        Self::new(
            Code::DecryptionFailed,
            "the data does not decrypt with these keys and nonces (tampered data, a wrong nonce or a wrong key)",
        )
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }
}

/// The AES-256-GCM key and IV of one exchange.
pub struct Session {
    key: LessSafeKey,
    iv: [u8; 12],
}

/// `x = ourNonce XOR remoteNonce`.
fn xor(ours: &[u8; NONCE_LEN], theirs: &[u8; NONCE_LEN]) -> Zeroizing<[u8; NONCE_LEN]> {
    let mut x = Zeroizing::new([0u8; NONCE_LEN]);
    for (out, (a, b)) in x.iter_mut().zip(ours.iter().zip(theirs)) {
        *out = a ^ b;
    }
    x
}

impl Session {
    /// ECDH, then the session key from the shared secret and the nonces.
    pub fn new(
        ours: &PrivateKey,
        remote: &PublicKey,
        our_nonce: &[u8; NONCE_LEN],
        remote_nonce: &[u8; NONCE_LEN],
    ) -> Result<Self, FiError> {
        let shared = ours.agree(remote);
        Self::from_shared(&shared, our_nonce, remote_nonce)
    }

    /// HKDF-SHA256(ikm = shared secret, salt = x[0..20], info = ∅) → 32 bytes; IV = x[20..32].
    pub fn from_shared(
        shared: &[u8; 32],
        our_nonce: &[u8; NONCE_LEN],
        remote_nonce: &[u8; NONCE_LEN],
    ) -> Result<Self, FiError> {
        let x = xor(our_nonce, remote_nonce);
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &x[..20]).extract(shared);
        // ring's key never leaves ring: the OKM becomes the AES key without passing through our memory.
        let key = prk
            .expand(&[], &AES_256_GCM)
            .map(UnboundKey::from)
            .map(LessSafeKey::new)
            .map_err(|_| FiError::internal("HKDF failed"))?;
        let mut iv = [0u8; 12];
        iv.copy_from_slice(&x[20..]);
        Ok(Self { key, iv })
    }

    /// Decrypts `ciphertext ‖ tag` in place; the plaintext's length on success.
    pub fn open_in_place(&self, data: &mut [u8]) -> Result<usize, FiError> {
        self.key
            .open_in_place(Nonce::assume_unique_for_key(self.iv), Aad::empty(), data)
            .map(|plain| plain.len())
            .map_err(|_| FiError::decryption_failed())
    }

    /// Encrypts `data` in place; returns the tag to append.
    pub fn seal_in_place(&self, data: &mut [u8]) -> Result<[u8; TAG_LEN], FiError> {
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(self.iv), Aad::empty(), data)
            .map_err(|_| FiError::internal("the data is too long for AES-GCM"))?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }
}

/// A fresh 32-byte nonce.
pub fn fresh_nonce() -> Result<[u8; NONCE_LEN], FiError> {
    let mut nonce = [0u8; NONCE_LEN];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| FiError::internal("no randomness"))?;
    Ok(nonce)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    /// The spec's golden vector, end to end: the FIU's key and nonce, the FIP's public key and nonce.
    #[test]
    fn golden_vector_decrypts() {
        let b = |s: &str| STANDARD.decode(s).unwrap();
        let fiu = PrivateKey::from_be_bytes(
            &b("DMxHPri8d7IT23KgLk281zZenMfVHSdeamq0RhwlIBk=")
                .try_into()
                .unwrap(),
        )
        .unwrap();
        let fip_pub = PublicKey::from_uncompressed(&b(
            "BABVt+mpRLMXiQpIfEq6bj8hlXsdtXIxLsspmMgLNI1SR5mHgDVbjHO2A+U4QlMddGzqyEidzm1AkhtSxSO2Ahg=",
        ))
        .unwrap();
        let our_nonce: [u8; 32] = b("6uj1RdDUbcpI3lVMZvijkMC8Te20O4Bcyz0SyivX8Eg=")
            .try_into()
            .unwrap();
        let their_nonce: [u8; 32] = b("lmXgblZwotx+DfBgKJF0lZXtAXgBEYr5khh79Zytr2Y=")
            .try_into()
            .unwrap();
        let mut data = b(
            "pzMvVZNNVtJzqPkkxcCbBUWgDEBy/mBXIeT2dJWI16ZAQnnXUb9lI+S4k8XK6mgZSKKSRIHkcNvJpllnBg548wUgavBa0vCRRwdL6kY6Yw==",
        );
        let session = Session::new(&fiu, &fip_pub, &our_nonce, &their_nonce).unwrap();
        let n = session.open_in_place(&mut data).unwrap();
        assert_eq!(
            &data[..n],
            b"Wormtail should never have been Potter cottage's secret keeper."
        );
        // Re-encrypting gives the same bytes (same key, same IV), and one flipped bit fails.
        let mut again = data[..n].to_vec();
        let tag = session.seal_in_place(&mut again).unwrap();
        again.extend_from_slice(&tag);
        let mut tampered = again.clone();
        tampered[0] ^= 1;
        assert_eq!(
            session.open_in_place(&mut tampered).unwrap_err().code(),
            "decryption_failed"
        );
        let wrong_nonce = Session::new(&fiu, &fip_pub, &our_nonce, &[0; 32]).unwrap();
        assert!(wrong_nonce.open_in_place(&mut again.clone()).is_err());
    }
}
