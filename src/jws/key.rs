//! The entity's private signing key: read from a file (PKCS#8 PEM, PKCS#1 PEM or a private RSA JWK), held
//! in a type that never prints it, and re-read when the file changes.
//!
//! The key never leaves this type: no accessor returns its bytes, `Debug` and `Display` say only its `kid`
//! and size, and errors name the file and what is wrong with it, never its content. [`SigningKeyFile`]
//! checks the file's identity, modification time and length on each use (one `stat`) and parses it again
//! only when they changed, so a key rotated by replacing the file (a Kubernetes Secret volume swaps a
//! symlink) is used from the next request on.
//!
//! The file is read as the entity secret is ([`crate::private_file`]): a regular file only (a FIFO, a
//! device or a directory is refused at once, never waited on), at most 64 KiB actually read, and a file
//! that its group or others may read or write is warned about once per load, naming the path and the mode.

use std::fmt;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::rsa::{KeyPairComponents, PublicKeyComponents};
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use zeroize_lite::Wipe;

use super::{MAX_KID_LEN, header_segment};
use crate::private_file::{self, FileError, io_reason, read_private};

/// Largest key file read: a 8192-bit key in PEM is under 7 KiB.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

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

/// What a key file that is not an RSA private key holds, when that can be told without parsing it: an EC
/// or Ed25519 key (SEC1 or PKCS#8 PEM, or a JWK), a public key or certificate, an encrypted or OpenSSH key.
/// Only the PEM labels, the PKCS#8 algorithm identifier and the JWK's `kty` are looked at.
fn other_kind(text: &str) -> Option<&'static str> {
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
fn pem_body(text: &str, label: &str) -> Option<Vec<u8>> {
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
fn from_jwk(text: &str) -> Result<(RsaKeyPair, Option<String>), &'static str> {
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

/// What identifies a version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    device: u64,
    inode: u64,
    modified: Option<SystemTime>,
    len: u64,
}

impl Stamp {
    fn of(meta: &Metadata) -> Self {
        Self {
            device: meta.dev(),
            inode: meta.ino(),
            modified: meta.modified().ok(),
            len: meta.len(),
        }
    }
}

/// One signing key's state as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyState {
    /// `ok`, or `unavailable` (`/v1/sign` answers `503 signing_key_unavailable`).
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The key parsed from one version of the file.
struct Loaded {
    /// The stamp of the handle the key was read from (not of an earlier `stat` of the path).
    stamp: Stamp,
    key: Arc<SigningKey>,
    /// The permission warning of that version, if its mode is too open.
    warning: Option<String>,
}

/// A key file, parsed once and again whenever its identity, modification time or length changes.
pub struct SigningKeyFile {
    path: PathBuf,
    kid: Option<String>,
    loaded: Mutex<Option<Loaded>>,
}

impl fmt::Debug for SigningKeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKeyFile({})", self.path.display())
    }
}

impl SigningKeyFile {
    /// Reads the file once now, so a wrong path or format is a start-up error.
    pub fn open(path: &Path, kid: Option<&str>) -> Result<Self, KeyError> {
        let file = Self {
            path: path.to_path_buf(),
            kid: kid.map(str::to_string),
            loaded: Mutex::new(None),
        };
        file.key()?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a signature can be made now, for `/readyz`: the file read (again, if it changed) and the
    /// `kid`, or why not. Never the key.
    pub fn state(&self) -> KeyState {
        match self.key() {
            Ok(key) => KeyState {
                state: "ok",
                kid: Some(key.kid().to_string()),
                path: self.path.display().to_string(),
                error: None,
            },
            Err(e) => KeyState {
                state: "unavailable",
                kid: None,
                path: self.path.display().to_string(),
                error: Some(e.to_string()),
            },
        }
    }

    /// The permission warning of the key held now (see [`private_file::mode_warning`]). The first load
    /// happens while the configuration is validated, before logging is set up, so whoever starts the
    /// broker logs this once; a re-read logs its own.
    pub fn permission_warning(&self) -> Option<String> {
        self.lock().as_ref().and_then(|l| l.warning.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Loaded>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current key: the one held when the file is unchanged, else the file parsed again. When the
    /// new content is bad, the error is returned (a half-written file is not signed with).
    pub fn key(&self) -> Result<Arc<SigningKey>, KeyError> {
        let shown = self.path.display().to_string();
        let meta = std::fs::metadata(&self.path).map_err(|e| KeyError::Read {
            path: shown.clone(),
            reason: io_reason(&e),
        })?;
        let mut loaded = self.lock();
        if let Some(held) = loaded.as_ref()
            && held.stamp == Stamp::of(&meta)
        {
            return Ok(Arc::clone(&held.key));
        }
        let mut bytes = Vec::new();
        let opened = read_private(&self.path, MAX_KEY_FILE_BYTES, &mut bytes).map_err(|e| {
            let path = shown.clone();
            match e {
                FileError::Io(e) => KeyError::Read {
                    path,
                    reason: io_reason(&e),
                },
                FileError::NotRegular(kind) => KeyError::NotAFile { path, kind },
                FileError::TooLarge => KeyError::TooLarge { path },
            }
        })?;
        let key = SigningKey::from_file_bytes(&bytes, self.kid.as_deref(), &shown);
        bytes.wipe();
        let key = Arc::new(key?);
        let warning = private_file::warning_for(&self.path, &opened);
        if loaded.is_some() {
            tracing::info!(path = %shown, kid = key.kid(), "signing key file changed; key re-read");
            if let Some(warning) = &warning {
                tracing::warn!(path = %shown, mode = %format!("{:04o}", opened.mode() & 0o777), "signing key: {warning}");
            }
        }
        *loaded = Some(Loaded {
            stamp: Stamp::of(&opened),
            key: Arc::clone(&key),
            warning,
        });
        Ok(key)
    }
}

/// Overwrites buffers that held key material before they are freed, so a copy does not linger in the
/// heap. Best effort: the compiler may not elide these writes through `black_box`.
mod zeroize_lite {
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
mod tests {
    use super::*;

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

    #[test]
    fn the_file_is_re_read_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, test_pem()).unwrap();
        let file = SigningKeyFile::open(&path, Some("one")).unwrap();
        let first = file.key().unwrap();
        assert!(Arc::ptr_eq(&first, &file.key().unwrap()), "unchanged: held");
        let other = include_bytes!("../simulator/peer-key-5.der");
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        pem.push_str(&STANDARD.encode(other));
        pem.push_str("\n-----END PRIVATE KEY-----\n\n\n");
        std::fs::write(&path, pem).unwrap();
        let second = file.key().unwrap();
        assert_ne!(first.public_jwk()["n"], second.public_jwk()["n"]);
        std::fs::write(&path, "garbage").unwrap();
        assert!(file.key().is_err());
    }

    /// Runs `f` on another thread; fails the test if it has not returned within 5 s (an `open` that
    /// waits for a FIFO's writer would otherwise hang the suite).
    fn within_5s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(f());
        });
        result
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("opening the key file did not return within 5 s")
    }

    fn open_err(path: &Path) -> KeyError {
        let path = path.to_path_buf();
        within_5s(move || SigningKeyFile::open(&path, Some("k")).unwrap_err())
    }

    #[test]
    fn only_regular_files_are_read_and_a_fifo_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("key.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let error = open_err(&fifo);
        assert!(
            matches!(error, KeyError::NotAFile { kind: "a FIFO", .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains("is a FIFO, not a regular file"),
            "{error}"
        );
        let zero = open_err(Path::new("/dev/zero"));
        assert!(
            matches!(
                zero,
                KeyError::NotAFile {
                    kind: "a character device",
                    ..
                }
            ),
            "{zero}"
        );
        // Through a symlink too: what counts is what the opened handle is.
        let link = dir.path().join("key.pem");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(matches!(open_err(&link), KeyError::NotAFile { .. }));
        assert!(matches!(
            open_err(dir.path()),
            KeyError::NotAFile {
                kind: "a directory",
                ..
            }
        ));
    }

    #[test]
    fn the_size_cap_holds_for_what_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        // A valid key followed by padding: the cap refuses it, not the parser.
        let mut big = test_pem().into_bytes();
        big.resize(MAX_KEY_FILE_BYTES as usize + 1, b'\n');
        std::fs::write(&path, &big).unwrap();
        assert_eq!(
            open_err(&path),
            KeyError::TooLarge {
                path: path.display().to_string()
            }
        );
        big.truncate(MAX_KEY_FILE_BYTES as usize);
        std::fs::write(&path, &big).unwrap();
        assert!(
            SigningKeyFile::open(&path, Some("k")).is_ok(),
            "64 KiB is allowed"
        );
    }

    #[test]
    fn a_missing_file_says_no_such_file() {
        let error = open_err(Path::new("/nonexistent/key.pem"));
        assert_eq!(
            error.to_string(),
            "cannot read the signing key file /nonexistent/key.pem: no such file"
        );
    }

    /// The log lines written while `f` runs, as text.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_key_file_others_can_read_loads_and_is_warned_about_once_per_load() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        let pem = test_pem();
        std::fs::write(&path, &pem).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let file = SigningKeyFile::open(&path, Some("one")).unwrap();
        let warning = file.permission_warning().unwrap();
        assert!(
            warning.contains(&format!("{} has mode 0644", path.display())),
            "{warning}"
        );
        // A re-read (the file replaced, still 0644) warns once; using the held key does not.
        let other = include_bytes!("../simulator/peer-key-5.der");
        let replaced = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(other)
        );
        let staged = dir.path().join("staged");
        std::fs::write(&staged, &replaced).unwrap();
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::rename(&staged, &path).unwrap();
        let log = logged(|| {
            file.key().unwrap();
            file.key().unwrap();
        });
        assert_eq!(log.matches("mode 0644").count(), 1, "{log}");
        assert!(log.contains("WARN"), "{log}");
        for line in pem.lines().chain(replaced.lines()).filter(|l| l.len() > 20) {
            assert!(!log.contains(&line[..20]), "key material in the log");
        }
        // Tightened: the next load holds no warning.
        std::fs::write(&staged, &pem).unwrap();
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::rename(&staged, &path).unwrap();
        file.key().unwrap();
        assert_eq!(file.permission_warning(), None);
    }
}
