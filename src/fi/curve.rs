//! BouncyCastle's Curve25519, computed with curve25519-dalek: the short Weierstrass form peers use on the
//! wire, the Montgomery/Edwards forms dalek computes in, and the maps between them.
//!
//! BouncyCastle's `CustomNamedCurves.getByName("Curve25519")` is `y² = x³ + a·x + b` over `p = 2²⁵⁵ − 19`,
//! the same group as RFC 7748's Montgomery curve `v² = u³ + A·u² + u` under `(u, v) = (x − A/3, y)`. Keys
//! are *unclamped* scalars `d ∈ [1, n−1]`, and ECDH's shared secret is the Weierstrass `x` of `d·Q`, so an
//! RFC 7748 `X25519` function (which clamps) gives another answer. Here:
//!
//! - scalar multiplication is dalek's, on Edwards points, constant-time in the scalar (no bignum of ours
//!   ever touches a private scalar);
//! - the Weierstrass ↔ Montgomery shift (`± A/3 mod p`) and the curve equation are crypto-bigint's
//!   constant-time modular arithmetic (the shift is applied to the shared secret, which is secret);
//! - a peer's point is refused unless it is on the curve, canonical, and in the prime-order subgroup (no
//!   small-order or mixed-order points: a key BouncyCastle made is always `d·G`).
//!
//! The `v` (= `y`) of our own public key is recovered from dalek's Edwards point with one square root:
//! `v = c·u/x_E`, where `c = √−486664` is the root that maps dalek's base point to BouncyCastle's `G`.

use crypto_bigint::modular::constant_mod::{Residue, ResidueParams};
use crypto_bigint::{Encoding, U256, impl_modulus};
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::Scalar;
use zeroize::{Zeroize, Zeroizing};

impl_modulus!(
    Fp,
    U256,
    "7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffed"
);

type Fe = Residue<Fp, { U256::LIMBS }>;

/// `A/3 mod p`: the x-shift between the Weierstrass and Montgomery forms.
const A_OVER_3: U256 =
    U256::from_be_hex("2aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaad2451");
/// The Weierstrass `a` and `b` (BouncyCastle's parameters; the SPKI carries them too).
const A_WEI: U256 =
    U256::from_be_hex("2aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa984914a144");
const B_WEI: U256 =
    U256::from_be_hex("7b425ed097b425ed097b425ed097b425ed097b425ed097b4260b5e9c7710c864");
/// The Montgomery `A`.
const A_MONT: U256 = U256::from_u32(486_662);
/// `√−486664`, the root for which `v = c·u/x_E` maps dalek's base point to BouncyCastle's `G`.
const C_EDWARDS: U256 =
    U256::from_be_hex("70d9120b9f5ff9442d84f723fc03b0813a5e2c2eb482e57d3391fb5500ba81e7");
/// `√−1 = 2^((p−1)/4)`, for the square root when `p ≡ 5 (mod 8)`.
const SQRT_M1: U256 =
    U256::from_be_hex("2b8324804fc1df0b2b4d00993dfbd7a72f431806ad2fe478c4ee1b274a0ea0b0");
/// `(p + 3) / 8`.
const SQRT_EXP: U256 =
    U256::from_be_hex("0ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffe");

fn fe(value: &U256) -> Fe {
    Fe::new(value)
}

/// Why a peer's point is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PointError {
    #[error("the point is not an uncompressed point of 65 bytes")]
    Encoding,
    #[error("a coordinate is not below p")]
    NotCanonical,
    #[error("the point is not on Curve25519")]
    NotOnCurve,
    #[error("the point is of small order, or not in the prime-order subgroup")]
    SmallOrder,
}

/// A private key: an unclamped scalar in `[1, n−1]`. Zeroized when dropped (dalek's `Scalar` zeroizes).
pub struct PrivateKey {
    scalar: Scalar,
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        self.scalar.zeroize();
    }
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

impl PrivateKey {
    /// A fresh key, uniform in `[1, n−1]` (BouncyCastle's range): 64 random bytes reduced mod `n`.
    pub fn generate() -> Result<Self, ring::error::Unspecified> {
        let rng = ring::rand::SystemRandom::new();
        loop {
            let mut wide = Zeroizing::new([0u8; 64]);
            ring::rand::SecureRandom::fill(&rng, wide.as_mut())?;
            let scalar = Scalar::from_bytes_mod_order_wide(&wide);
            if scalar != Scalar::ZERO {
                return Ok(Self { scalar });
            }
        }
    }

    /// `d` as 32 big-endian bytes (BouncyCastle's and fidelius' raw form); `None` unless `1 ≤ d < n`.
    pub fn from_be_bytes(be: &[u8; 32]) -> Option<Self> {
        let mut le = Zeroizing::new(*be);
        le.reverse();
        let scalar: Option<Scalar> = Scalar::from_canonical_bytes(*le).into();
        scalar
            .filter(|s| *s != Scalar::ZERO)
            .map(|scalar| Self { scalar })
    }

    /// `d` as 32 big-endian bytes, in a zeroizing buffer.
    pub fn to_be_bytes(&self) -> Zeroizing<[u8; 32]> {
        let mut be = Zeroizing::new(self.scalar.to_bytes());
        be.reverse();
        be
    }

    /// `d·G` in BouncyCastle's Weierstrass coordinates.
    pub fn public_key(&self) -> PublicKey {
        let point = EdwardsPoint::mul_base(&self.scalar);
        PublicKey::from_edwards(&point)
    }

    /// ECDH as BouncyCastle's `KeyAgreement("ECDH")`: the Weierstrass `x` of `d·Q`, 32 bytes big-endian.
    pub fn agree(&self, peer: &PublicKey) -> Zeroizing<[u8; 32]> {
        let shared = (peer.edwards * self.scalar).to_montgomery();
        let mut u_le = Zeroizing::new(shared.to_bytes());
        // d ∈ [1, n−1] and Q of order n: d·Q is never the identity, so u is a real point's.
        let mut u = U256::from_le_bytes(*u_le);
        u_le.zeroize();
        let mut x = fe(&u).add(&fe(&A_OVER_3)).retrieve();
        u.zeroize();
        let out = Zeroizing::new(x.to_be_bytes());
        x.zeroize();
        out
    }
}

/// A point of the prime-order subgroup: a peer's checked public key, or ours.
#[derive(Clone, Copy)]
pub struct PublicKey {
    x: U256,
    y: U256,
    edwards: EdwardsPoint,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({:x?})", &self.uncompressed()[..9])
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.x == other.x && self.y == other.y
    }
}

impl PublicKey {
    /// Checks an uncompressed point `04 ‖ X ‖ Y` (big-endian Weierstrass coordinates).
    pub fn from_uncompressed(bytes: &[u8]) -> Result<Self, PointError> {
        let [0x04, coordinates @ ..] = bytes else {
            return Err(PointError::Encoding);
        };
        let (Some(xb), Some(yb)) = (coordinates.get(..32), coordinates.get(32..)) else {
            return Err(PointError::Encoding);
        };
        let (Ok(xb), Ok(yb)) = (<[u8; 32]>::try_from(xb), <[u8; 32]>::try_from(yb)) else {
            return Err(PointError::Encoding);
        };
        let (x, y) = (U256::from_be_bytes(xb), U256::from_be_bytes(yb));
        if x >= Fp::MODULUS || y >= Fp::MODULUS {
            return Err(PointError::NotCanonical);
        }
        let (fx, fy) = (fe(&x), fe(&y));
        let rhs = fx
            .square()
            .mul(&fx)
            .add(&fe(&A_WEI).mul(&fx))
            .add(&fe(&B_WEI));
        if fy.square().retrieve() != rhs.retrieve() {
            return Err(PointError::NotOnCurve);
        }
        let u = fx.sub(&fe(&A_OVER_3)).retrieve();
        // The sign of the Edwards x does not matter: ±Q have the same order, and d·(±Q) the same x.
        let edwards = MontgomeryPoint(u.to_le_bytes())
            .to_edwards(0)
            .ok_or(PointError::NotOnCurve)?;
        if edwards.is_small_order() || !edwards.is_torsion_free() {
            return Err(PointError::SmallOrder);
        }
        Ok(Self { x, y, edwards })
    }

    fn from_edwards(point: &EdwardsPoint) -> Self {
        let u = U256::from_le_bytes(point.to_montgomery().to_bytes());
        let fu = fe(&u);
        // v² = u³ + A·u² + u; one root by p ≡ 5 (mod 8), the sign chosen so that c·u/v is dalek's x.
        let v2 = fu
            .square()
            .mul(&fu)
            .add(&fe(&A_MONT).mul(&fu.square()))
            .add(&fu);
        let mut v = v2.pow(&SQRT_EXP);
        if v.square().retrieve() != v2.retrieve() {
            v = v.mul(&fe(&SQRT_M1));
        }
        let x_sign = point.compress().to_bytes()[31] >> 7;
        let (v_inv, _) = v.invert();
        let x_edwards = fe(&C_EDWARDS).mul(&fu).mul(&v_inv).retrieve();
        if (x_edwards.to_le_bytes()[0] & 1) != x_sign {
            v = v.neg();
        }
        Self {
            x: fu.add(&fe(&A_OVER_3)).retrieve(),
            y: v.retrieve(),
            edwards: *point,
        }
    }

    /// `04 ‖ X ‖ Y`, 65 bytes.
    pub fn uncompressed(&self) -> [u8; 65] {
        let mut out = [0u8; 65];
        out[0] = 0x04;
        out[1..33].copy_from_slice(&self.x.to_be_bytes());
        out[33..].copy_from_slice(&self.y.to_be_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    fn b64(s: &str) -> Vec<u8> {
        STANDARD.decode(s).unwrap()
    }

    fn private(s: &str) -> PrivateKey {
        PrivateKey::from_be_bytes(&b64(s).try_into().unwrap()).unwrap()
    }

    #[test]
    fn the_constants_are_what_they_claim() {
        let three = fe(&U256::from_u32(3));
        assert_eq!(fe(&A_OVER_3).mul(&three).retrieve(), A_MONT);
        assert_eq!(
            fe(&C_EDWARDS).square().retrieve(),
            fe(&U256::ZERO)
                .sub(&fe(&U256::from_u32(486_664)))
                .retrieve()
        );
        assert_eq!(
            fe(&SQRT_M1).square().retrieve(),
            fe(&U256::ZERO).sub(&fe(&U256::ONE)).retrieve()
        );
        // a = 1 − A²/3, b = 2A³/27 − A/3.
        let a3 = fe(&A_OVER_3);
        assert_eq!(fe(&U256::ONE).sub(&fe(&A_MONT).mul(&a3)).retrieve(), A_WEI);
        assert_eq!(
            a3.square()
                .mul(&a3)
                .mul(&fe(&U256::from_u32(2)))
                .sub(&a3)
                .retrieve(),
            B_WEI
        );
    }

    #[test]
    fn the_base_point_is_bouncycastles_g() {
        let one = PrivateKey::from_be_bytes(&{
            let mut b = [0u8; 32];
            b[31] = 1;
            b
        })
        .unwrap();
        let g = one.public_key().uncompressed();
        assert_eq!(
            hex(&g[1..33]),
            "2aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaad245a"
        );
        assert_eq!(
            hex(&g[33..]),
            "20ae19a1b8a086b4e01edd2c7748d14c923d4d7e6d7c61b229e9c5a27eced3d9"
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The fidelius-cli golden vector: both public points from the private keys, and one shared secret
    /// from either side.
    #[test]
    fn golden_vector_keys_and_agreement() {
        let fiu = private("DMxHPri8d7IT23KgLk281zZenMfVHSdeamq0RhwlIBk=");
        let fip = private("AYhVZpbVeX4KS5Qm/W0+9Ye2q3rnVVGmqRICmseWni4=");
        let fiu_pub = b64(
            "BAheD5rUqTy4V5xR4/6HWmYpopu5CO+KO8BECS0udNqUTSNo91TIqIIy1A4Vh+F94c+n9vAcwXU2bGcfsI5f69Y=",
        );
        let fip_pub = b64(
            "BABVt+mpRLMXiQpIfEq6bj8hlXsdtXIxLsspmMgLNI1SR5mHgDVbjHO2A+U4QlMddGzqyEidzm1AkhtSxSO2Ahg=",
        );
        assert_eq!(fiu.public_key().uncompressed().to_vec(), fiu_pub);
        assert_eq!(fip.public_key().uncompressed().to_vec(), fip_pub);
        let a = fiu.agree(&PublicKey::from_uncompressed(&fip_pub).unwrap());
        let b = fip.agree(&PublicKey::from_uncompressed(&fiu_pub).unwrap());
        assert_eq!(*a, *b);
        assert_eq!(
            fiu.to_be_bytes().to_vec(),
            b64("DMxHPri8d7IT23KgLk281zZenMfVHSdeamq0RhwlIBk=")
        );
    }

    #[test]
    fn fresh_keys_agree_and_round_trip() {
        for _ in 0..20 {
            let (a, b) = (
                PrivateKey::generate().unwrap(),
                PrivateKey::generate().unwrap(),
            );
            let (pa, pb) = (a.public_key(), b.public_key());
            let pa2 = PublicKey::from_uncompressed(&pa.uncompressed()).unwrap();
            assert_eq!(pa, pa2);
            assert_eq!(*a.agree(&pb), *b.agree(&pa2));
            let again = PrivateKey::from_be_bytes(&a.to_be_bytes()).unwrap();
            assert_eq!(again.public_key(), pa);
        }
    }

    #[test]
    fn bad_points_and_scalars_are_refused() {
        let good = PrivateKey::generate().unwrap().public_key().uncompressed();
        let mut off = good;
        off[64] ^= 1;
        assert_eq!(
            PublicKey::from_uncompressed(&off),
            Err(PointError::NotOnCurve)
        );
        assert_eq!(
            PublicKey::from_uncompressed(&good[..64]),
            Err(PointError::Encoding)
        );
        let mut compressed = good;
        compressed[0] = 0x02;
        assert_eq!(
            PublicKey::from_uncompressed(&compressed),
            Err(PointError::Encoding)
        );
        let mut big = [0xffu8; 65];
        big[0] = 4;
        assert_eq!(
            PublicKey::from_uncompressed(&big),
            Err(PointError::NotCanonical)
        );
        // (A/3, 0) is the Montgomery (0, 0): on the curve, of order 2.
        let mut two_torsion = [0u8; 65];
        two_torsion[0] = 4;
        two_torsion[1..33].copy_from_slice(&A_OVER_3.to_be_bytes());
        assert_eq!(
            PublicKey::from_uncompressed(&two_torsion),
            Err(PointError::SmallOrder)
        );
        // G plus a point of order 2 is on the curve but not in the prime-order subgroup.
        let g = private_one().public_key();
        let mixed = g.edwards + MontgomeryPoint([0u8; 32]).to_edwards(0).unwrap();
        let mixed = PublicKey::from_edwards(&mixed).uncompressed();
        assert_eq!(
            PublicKey::from_uncompressed(&mixed),
            Err(PointError::SmallOrder)
        );
        assert!(PrivateKey::from_be_bytes(&[0u8; 32]).is_none());
        assert!(PrivateKey::from_be_bytes(&[0xffu8; 32]).is_none());
    }

    fn private_one() -> PrivateKey {
        let mut b = [0u8; 32];
        b[31] = 1;
        PrivateKey::from_be_bytes(&b).unwrap()
    }
}
