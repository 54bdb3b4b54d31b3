//! The key encodings peers exchange: ReBIT's `KeyMaterial`, the X.509 `SubjectPublicKeyInfo` with
//! explicit curve parameters that rahasya (BouncyCastle) writes into `KeyValue`, the PKCS#8 private key a
//! real rahasya hands out (accepted during a migration), and the expiry.
//!
//! Reading is lenient where peers differ (armour with or without newlines, `Parameters` or `Parameter`,
//! an expiry with `Z`, `+0000` or `+05:30`, a bare `04‖X‖Y` point as fidelius-cli writes it) and strict
//! where it matters: `ECDH` on `Curve25519` only, BouncyCastle's parameters byte for byte, the point on the
//! curve and in the prime-order subgroup, a 32-byte nonce, an expiry in the future.

use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::value::RawValue;
use zeroize::Zeroizing;

use super::curve::{PrivateKey, PublicKey};
use super::inplace::LENIENT;
use super::{FiError, NONCE_LEN};
use crate::timefmt;

/// What we write into `cryptoAlg`, `curve` and `params`.
pub const CRYPTO_ALG: &str = "ECDH";
pub const CURVE: &str = "Curve25519";
pub const PARAMS: &str = "cipher=AES/GCM/NoPadding;KeyPairGenerator=ECDH";

/// rahasya's public key DER up to the point: SEQUENCE, the AlgorithmIdentifier (id-ecPublicKey with
/// BouncyCastle's explicit Curve25519 parameters), the BIT STRING header and the `04` of the point.
const SPKI_PREFIX_B64: &str = "MIIBMTCB6gYHKoZIzj0CATCB3gIBATArBgcqhkjOPQEBAiB/////////////////////////////////////////7TBEBCAqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqYSRShRAQge0Je0Je0Je0Je0Je0Je0Je0Je0Je0Je0JgtenHcQyGQEQQQqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq0kWiCuGaG4oIa04B7dLHdI0UySPU1+bXxhsinpxaJ+ztPZAiAQAAAAAAAAAAAAAAAAAAAAFN753qL3nNZYEmMaXPXT7QIBCANCAAQ=";
const SPKI_LEN: usize = 309;
/// Where the AlgorithmIdentifier sits in that prefix.
const ALG_ID: std::ops::Range<usize> = 4..241;

const PUBLIC_BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
const PUBLIC_END: &str = "-----END PUBLIC KEY-----";
const PRIVATE_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PRIVATE_END: &str = "-----END PRIVATE KEY-----";

fn spki_prefix() -> Vec<u8> {
    STANDARD.decode(SPKI_PREFIX_B64).unwrap_or_default()
}

/// `KeyValue` for our public key: armour around base64 of the SPKI, no newlines, as rahasya writes it.
pub fn public_pem(key: &PublicKey) -> String {
    let mut der = spki_prefix();
    der.extend_from_slice(&key.uncompressed()[1..]);
    format!("{PUBLIC_BEGIN}{}{PUBLIC_END}", STANDARD.encode(der))
}

/// Base64 inside PEM armour (any label), whitespace and newlines ignored.
fn unarmour(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let mut inner = text.trim();
    if let Some(rest) = inner.strip_prefix("-----BEGIN ") {
        inner = rest.split_once("-----")?.1;
        inner = inner.rsplit_once("-----END ")?.0;
    }
    let compact: Zeroizing<String> =
        Zeroizing::new(inner.chars().filter(|c| !c.is_whitespace()).collect());
    LENIENT.decode(compact.as_bytes()).ok().map(Zeroizing::new)
}

/// Reads a peer's `KeyValue`: rahasya's SPKI (PEM or bare base64), or a bare uncompressed point.
pub fn parse_public(key_value: &str) -> Result<PublicKey, FiError> {
    let der = unarmour(key_value)
        .ok_or_else(|| FiError::key_material("KeyValue is not a PEM or base64 public key"))?;
    let point = if der.len() == 65 {
        &der[..]
    } else if der.len() == SPKI_LEN && der.starts_with(&spki_prefix()) {
        &der[SPKI_LEN - 65..]
    } else if is_x25519_spki(&der) {
        return Err(FiError::key_material(
            "KeyValue is an RFC 7748 X25519 key; AA peers use BouncyCastle's Weierstrass Curve25519 (ECDH)",
        ));
    } else {
        return Err(FiError::key_material(
            "KeyValue is not an ECDH Curve25519 public key with BouncyCastle's parameters",
        ));
    };
    PublicKey::from_uncompressed(point)
        .map_err(|e| FiError::key_material(format!("DHPublicKey: {e}")))
}

/// `SEQUENCE { SEQUENCE { OID 1.3.101.110 } BIT STRING }`: what X25519 libraries export.
fn is_x25519_spki(der: &[u8]) -> bool {
    der.len() == 44 && der.get(4..11) == Some(&[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e][..])
}

/// One DER element: (tag, content, what follows). Lengths up to 2 bytes; nothing here is larger.
fn tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81 => (usize::from(*rest.first()?), rest.get(1..)?),
        0x82 => (
            usize::from(*rest.first()?) << 8 | usize::from(*rest.get(1)?),
            rest.get(2..)?,
        ),
        _ => return None,
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

/// Reads a PKCS#8 `PRIVATE KEY` PEM as a real rahasya hands it out: id-ecPublicKey with BouncyCastle's
/// explicit Curve25519 parameters, an `ECPrivateKey` whose key is `d` big-endian.
pub fn parse_pkcs8(pem: &str) -> Result<PrivateKey, FiError> {
    let refuse = || {
        FiError::invalid_handle("ourPrivateKey is neither a key handle nor rahasya's PKCS#8 key")
    };
    let trimmed = pem.trim();
    if !(trimmed.starts_with(PRIVATE_BEGIN) && trimmed.ends_with(PRIVATE_END)) {
        return Err(refuse());
    }
    let der = unarmour(trimmed).ok_or_else(refuse)?;
    let (0x30, info, _) = tlv(&der).ok_or_else(refuse)? else {
        return Err(refuse());
    };
    let (0x02, [0], rest) = tlv(info).ok_or_else(refuse)? else {
        return Err(refuse());
    };
    let alg_len = rest.len() - tlv(rest).ok_or_else(refuse)?.2.len();
    if rest.get(..alg_len) != spki_prefix().get(ALG_ID) {
        return Err(FiError::key_material(
            "ourPrivateKey is not a key on BouncyCastle's Curve25519",
        ));
    }
    let (0x04, ec_private, _) = tlv(&rest[alg_len..]).ok_or_else(refuse)? else {
        return Err(refuse());
    };
    let (0x30, ec, _) = tlv(ec_private).ok_or_else(refuse)? else {
        return Err(refuse());
    };
    let (0x02, [1], rest) = tlv(ec).ok_or_else(refuse)? else {
        return Err(refuse());
    };
    let (0x04, d, _) = tlv(rest).ok_or_else(refuse)? else {
        return Err(refuse());
    };
    // Older encoders write d in its minimal length; left-pad to 32.
    let d = match d {
        [0, tail @ ..] if tail.len() == 32 => tail,
        d if d.len() <= 32 => d,
        _ => return Err(refuse()),
    };
    let mut be = Zeroizing::new([0u8; 32]);
    be[32 - d.len()..].copy_from_slice(d);
    PrivateKey::from_be_bytes(&be).ok_or_else(refuse)
}

/// A PKCS#8 PEM of `key` in the shape rahasya writes (for tests and the migration guide's examples).
pub fn pkcs8_pem(key: &PrivateKey) -> Zeroizing<String> {
    let prefix = spki_prefix();
    let alg = &prefix[ALG_ID];
    let public = key.public_key().uncompressed();
    let d = key.to_be_bytes();
    // ECPrivateKey { 1, OCTET STRING d, [1] BIT STRING 00‖04‖X‖Y }
    let mut ec = Zeroizing::new(vec![0x02, 0x01, 0x01, 0x04, 0x20]);
    ec.extend_from_slice(&d[..]);
    ec.extend_from_slice(&[0xa1, 0x44, 0x03, 0x42, 0x00]);
    ec.extend_from_slice(&public);
    let mut ec_seq = Zeroizing::new(vec![0x30, ec.len() as u8]);
    ec_seq.extend_from_slice(&ec);
    let mut body = Zeroizing::new(vec![0x02, 0x01, 0x00]);
    body.extend_from_slice(alg);
    body.extend_from_slice(&[0x04, ec_seq.len() as u8]);
    body.extend_from_slice(&ec_seq);
    let mut der = Zeroizing::new(vec![0x30, 0x82, (body.len() >> 8) as u8, body.len() as u8]);
    der.extend_from_slice(&body);
    Zeroizing::new(format!(
        "{PRIVATE_BEGIN}{}{PRIVATE_END}",
        STANDARD.encode(&der[..])
    ))
}

/// ReBIT's `KeyMaterial`, as a peer sends it. Every field optional here so that what is missing is
/// named in the answer; unknown fields are ignored.
#[derive(Debug, Deserialize)]
struct KeyMaterialIn {
    #[serde(rename = "cryptoAlg")]
    crypto_alg: Option<String>,
    curve: Option<String>,
    #[serde(rename = "DHPublicKey", alias = "dhPublicKey")]
    dh_public_key: Option<DhPublicKeyIn>,
    #[serde(rename = "Nonce", alias = "nonce")]
    nonce: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DhPublicKeyIn {
    expiry: Option<String>,
    #[serde(rename = "KeyValue", alias = "keyValue")]
    key_value: Option<String>,
}

/// A peer's key material, checked.
#[derive(Debug)]
pub struct RemoteKey {
    pub key: PublicKey,
    pub nonce: Option<[u8; NONCE_LEN]>,
    pub expiry: SystemTime,
}

/// Checks a peer's `KeyMaterial` (raw JSON): algorithm, curve, key, expiry, and the nonce if present.
pub fn parse_key_material(raw: &RawValue, now: SystemTime) -> Result<RemoteKey, FiError> {
    let km: KeyMaterialIn = serde_json::from_str(raw.get())
        .map_err(|_| FiError::key_material("KeyMaterial is not a KeyMaterial object"))?;
    let alg = km.crypto_alg.as_deref().map(str::trim).unwrap_or_default();
    if !alg.eq_ignore_ascii_case(CRYPTO_ALG) {
        return Err(FiError::key_material(format!(
            "cryptoAlg {alg:?} is not supported; only ECDH"
        )));
    }
    let curve = km.curve.as_deref().map(str::trim).unwrap_or_default();
    if !curve.eq_ignore_ascii_case(CURVE) {
        return Err(FiError::key_material(format!(
            "curve {curve:?} is not supported; only Curve25519"
        )));
    }
    let dh = km
        .dh_public_key
        .ok_or_else(|| FiError::key_material("DHPublicKey is missing"))?;
    let key_value = dh
        .key_value
        .ok_or_else(|| FiError::key_material("DHPublicKey.KeyValue is missing"))?;
    let key = parse_public(&key_value)?;
    let expiry = dh
        .expiry
        .as_deref()
        .and_then(timefmt::parse_iam_expiry)
        .ok_or_else(|| FiError::key_material("DHPublicKey.expiry is missing or not a date-time"))?;
    if expiry <= now {
        return Err(FiError::expired(
            super::Expired::Remote,
            "the peer's DHPublicKey has expired",
        ));
    }
    let nonce = km.nonce.as_deref().map(parse_nonce).transpose()?;
    Ok(RemoteKey { key, nonce, expiry })
}

/// A 32-byte nonce in base64.
pub fn parse_nonce(text: &str) -> Result<[u8; NONCE_LEN], FiError> {
    LENIENT
        .decode(text.trim())
        .ok()
        .and_then(|bytes| <[u8; NONCE_LEN]>::try_from(bytes).ok())
        .ok_or_else(|| FiError::key_material("Nonce is not base64 of 32 bytes"))
}

/// `yyyy-MM-dd'T'HH:mm:ss.SSS'Z'`, as rahasya writes expiries.
pub fn format_expiry(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t.clamp(timefmt::EARLIEST, timefmt::latest())).to_string()
}

/// Our `KeyMaterial`, as JSON; with our nonce for ReBIT, without it for rahasya's `generateKey`.
pub fn key_material_json(
    key: &PublicKey,
    expiry: SystemTime,
    nonce: Option<&[u8; NONCE_LEN]>,
    params: &str,
) -> serde_json::Value {
    let mut km = serde_json::json!({
        "cryptoAlg": CRYPTO_ALG,
        "curve": CURVE,
        "params": params,
        "DHPublicKey": {
            "expiry": format_expiry(expiry),
            "Parameters": "",
            "KeyValue": public_pem(key),
        },
    });
    if let Some(nonce) = nonce {
        km["Nonce"] = serde_json::Value::String(STANDARD.encode(nonce));
    }
    km
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn raw(v: &serde_json::Value) -> Box<RawValue> {
        RawValue::from_string(v.to_string()).unwrap()
    }

    #[test]
    fn our_key_material_reads_back_and_matches_rahasyas_prefix() {
        let key = PrivateKey::generate().unwrap();
        let now = SystemTime::now();
        let km = key_material_json(
            &key.public_key(),
            now + Duration::from_secs(3600),
            Some(&[7; 32]),
            PARAMS,
        );
        let pem = km["DHPublicKey"]["KeyValue"].as_str().unwrap();
        assert!(pem.starts_with(&format!(
            "{PUBLIC_BEGIN}MIIBMTCB6gYHKoZIzj0CATCB3gIBATArBgcq"
        )));
        assert_eq!(
            STANDARD.decode(&pem[26..pem.len() - 24]).unwrap().len(),
            SPKI_LEN
        );
        let remote = parse_key_material(&raw(&km), now).unwrap();
        assert_eq!(remote.key, key.public_key());
        assert_eq!(remote.nonce, Some([7; 32]));
        // With newlines in the armour and the base64, as some peers send it.
        let wrapped = format!("{PUBLIC_BEGIN}\n{}\n{PUBLIC_END}\n", &pem[26..90]);
        assert!(
            parse_public(&wrapped).is_err(),
            "a truncated key is refused"
        );
        let body = &pem[26..pem.len() - 24];
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let wrapped = format!("{PUBLIC_BEGIN}\n{}\n{PUBLIC_END}\n", lines.join("\n"));
        assert_eq!(parse_public(&wrapped).unwrap(), key.public_key());
    }

    #[test]
    fn certification_fip_3008_other_algorithms_curves_and_expired_keys_are_refused() {
        let key = PrivateKey::generate().unwrap().public_key();
        let now = SystemTime::now();
        let good = key_material_json(&key, now + Duration::from_secs(60), None, PARAMS);
        for (field, value) in [
            ("cryptoAlg", "RSA"),
            ("cryptoAlg", "DH"),
            ("cryptoAlg", "ECMQV"),
            ("curve", "secp256r1"),
            ("curve", "P-256"),
            ("curve", "FourQ"),
        ] {
            let mut km = good.clone();
            km[field] = serde_json::Value::String(value.into());
            let error = parse_key_material(&raw(&km), now).unwrap_err();
            assert_eq!(error.code(), "unsupported_key_material", "{field}={value}");
        }
        let mut expired = good.clone();
        expired["DHPublicKey"]["expiry"] = "2020-01-01T00:00:00.000Z".into();
        assert_eq!(
            parse_key_material(&raw(&expired), now).unwrap_err().code(),
            "key_expired"
        );
        let mut offset = good.clone();
        offset["DHPublicKey"]["expiry"] = "2999-01-01T00:00:00.000+0000".into();
        assert!(parse_key_material(&raw(&offset), now).is_ok());
        for broken in [
            serde_json::json!("a string"),
            serde_json::json!({"cryptoAlg": "ECDH", "curve": "Curve25519"}),
            {
                let mut km = good.clone();
                km["DHPublicKey"]["KeyValue"] = "-----BEGIN PUBLIC KEY-----MCowBQYDK2VuAyEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=-----END PUBLIC KEY-----".into();
                km
            },
            {
                let mut km = good.clone();
                km["Nonce"] = "c2hvcnQ=".into();
                km
            },
        ] {
            assert_eq!(
                parse_key_material(&raw(&broken), now).unwrap_err().code(),
                "unsupported_key_material",
                "{broken}"
            );
        }
    }

    #[test]
    fn rahasyas_pkcs8_keys_are_read() {
        let key = PrivateKey::generate().unwrap();
        let pem = pkcs8_pem(&key);
        let read = parse_pkcs8(&pem).unwrap();
        assert_eq!(read.public_key(), key.public_key());
        assert_eq!(
            parse_pkcs8("-----BEGIN PRIVATE KEY-----AAAA-----END PRIVATE KEY-----")
                .unwrap_err()
                .code(),
            "invalid_handle"
        );
        assert_eq!(
            parse_pkcs8("nonsense").unwrap_err().code(),
            "invalid_handle"
        );
    }
}

/// Keys and a ciphertext made by BouncyCastle itself along rahasya's code path
/// (`tests/fixtures/fi/BcFixture.java`): its PKCS#8 and SPKI encodings read, its ECDH, HKDF and AES-GCM
/// agree with ours.
#[cfg(test)]
mod bouncycastle {
    use super::*;
    use crate::fi::Session;

    #[test]
    fn bouncycastle_keys_and_ciphertext_from_rahasyas_code_path() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/fi/bouncycastle.json"))
                .unwrap();
        let private = parse_pkcs8(fixture["privateKey"].as_str().unwrap()).unwrap();
        let public = parse_public(fixture["publicKey"].as_str().unwrap()).unwrap();
        assert_eq!(private.public_key(), public);
        assert_eq!(public_pem(&public), fixture["publicKey"].as_str().unwrap());
        // BouncyCastle encrypted to the golden vector's FIU key, with the FIU's nonce.
        let fiu = PrivateKey::from_be_bytes(
            &STANDARD
                .decode("DMxHPri8d7IT23KgLk281zZenMfVHSdeamq0RhwlIBk=")
                .unwrap()
                .try_into()
                .unwrap(),
        )
        .unwrap();
        let fiu_nonce = parse_nonce("6uj1RdDUbcpI3lVMZvijkMC8Te20O4Bcyz0SyivX8Eg=").unwrap();
        let bc_nonce = parse_nonce(fixture["nonce"].as_str().unwrap()).unwrap();
        let mut data = STANDARD
            .decode(fixture["encryptedData"].as_str().unwrap())
            .unwrap();
        let n = Session::new(&fiu, &public, &fiu_nonce, &bc_nonce)
            .unwrap()
            .open_in_place(&mut data)
            .unwrap();
        assert_eq!(&data[..n], b"made by BouncyCastle");
    }
}
