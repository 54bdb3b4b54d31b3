//! The key-encryption key (KEK) and the key handles sealed under it.
//!
//! A key handle is what the service stores with an FI session instead of a private key: the ephemeral
//! scalar, our nonce (if we made one) and the expiry, sealed with AES-256-GCM under the entity's KEK, a
//! Kubernetes Secret every pod of the entity mounts. Any pod can use a handle another made; nobody without
//! the KEK can read a key out of it or forge one. Layout (base64url, no padding, after `fikh1.`):
//!
//! ```text
//! version (1) ‖ KEK id (4) ‖ IV (12) ‖ AES-256-GCM( d (32) ‖ has-nonce (1) ‖ nonce (32) ‖ expiry (8, Unix s) ) ‖ tag (16)
//! ```
//!
//! with `fikh1` ‖ version ‖ KEK id as associated data. The KEK id is the first 4 bytes of SHA-256 over a
//! label and the KEK: it names which key sealed a handle, and says nothing about the key. IVs are random:
//! 2³² handles per KEK stay far inside AES-GCM's bound for random IVs.
//!
//! The KEK file holds 32 bytes, raw, or base64 on a line; further lines are earlier keys that still
//! unwrap (never seal), so a rotation can be rolled out across pods without breaking a session in flight.
//! The file is re-read when it changes (checked at most once a second, on use); the key it replaced keeps
//! unwrapping for [`MAX_HANDLE_LIFETIME`], the longest a handle it sealed can live. A file that becomes
//! unreadable or malformed keeps the keys held and is reported in `/readyz`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::curve::PrivateKey;
use super::{Expired, FiError, NONCE_LEN};
use crate::private_file;

/// The longest a handle may live (`expiryHours` at most 168).
pub const MAX_HANDLE_LIFETIME: Duration = Duration::from_secs(168 * 3600);
/// Largest KEK file read.
const MAX_KEK_FILE_BYTES: u64 = 4096;
/// How often, at most, the file is checked for a change.
const RECHECK: Duration = Duration::from_secs(1);
const PREFIX: &str = "fikh1.";
const VERSION: u8 = 1;
const PLAIN_LEN: usize = 32 + 1 + NONCE_LEN + 8;
const SEALED_LEN: usize = 1 + 4 + 12 + PLAIN_LEN + 16;

/// What a handle holds.
#[derive(Debug)]
pub struct HandleSecret {
    pub key: PrivateKey,
    pub nonce: Option<[u8; NONCE_LEN]>,
    pub expiry: SystemTime,
}

/// One KEK.
struct Kek {
    id: [u8; 4],
    key: Zeroizing<[u8; 32]>,
}

impl Kek {
    fn new(key: Zeroizing<[u8; 32]>) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"aa-token-broker fi kek id\0");
        ctx.update(&key[..]);
        let digest = ctx.finish();
        let mut id = [0u8; 4];
        id.copy_from_slice(&digest.as_ref()[..4]);
        Self { id, key }
    }

    fn aead(&self) -> Option<LessSafeKey> {
        UnboundKey::new(&AES_256_GCM, &self.key[..])
            .ok()
            .map(LessSafeKey::new)
    }
}

/// Why the KEK file cannot be used. Never shows its content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KekError(String);

/// What identifies a version of the file: a change of any of these is a change of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

struct State {
    current: Kek,
    /// Earlier keys listed in the file.
    listed: Vec<Kek>,
    /// The key a re-read replaced, and until when it unwraps.
    retired: Option<(Kek, SystemTime)>,
    stamp: Stamp,
    checked: Instant,
    loaded_at: SystemTime,
    reload_error: Option<String>,
}

/// What `/readyz` says about a KEK.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KekStatus {
    pub kek_id: String,
    pub previous_keys: usize,
    pub loaded_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reload_error: Option<String>,
}

/// An entity's KEK file, read at start and re-read when it changes.
pub struct KekFile {
    path: PathBuf,
    state: Mutex<State>,
    warning: Option<String>,
}

impl std::fmt::Debug for KekFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KekFile").field("path", &self.path).finish()
    }
}

fn read_keys(path: &Path) -> Result<(Vec<Kek>, Stamp, Option<String>), KekError> {
    let mut bytes = Zeroizing::new(Vec::new());
    let meta = private_file::read_private(path, MAX_KEK_FILE_BYTES, &mut bytes)
        .map_err(|e| KekError(format!("{}: {e}", path.display())))?;
    let stamp = Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
    };
    let keys = parse_keys(&bytes).map_err(|e| KekError(format!("{}: {e}", path.display())))?;
    Ok((keys, stamp, private_file::warning_for(path, &meta)))
}

/// 32 raw bytes, or lines of base64 (standard or URL-safe) of 32 bytes each; `#` starts a comment line.
fn parse_keys(bytes: &[u8]) -> Result<Vec<Kek>, &'static str> {
    if bytes.len() == 32 {
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(bytes);
        return Ok(vec![Kek::new(key)]);
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "the file is neither 32 raw bytes nor lines of base64")?;
    let mut keys = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let unpadded = line.trim_end_matches('=');
        let decoded = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(unpadded)
                .or_else(|_| STANDARD.decode(line))
                .map_err(|_| "a line is not base64")?,
        );
        let mut key = Zeroizing::new([0u8; 32]);
        if decoded.len() != 32 {
            return Err("a key is not 32 bytes (make one with `openssl rand -base64 32`)");
        }
        key.copy_from_slice(&decoded);
        keys.push(Kek::new(key));
    }
    if keys.is_empty() {
        return Err("the file holds no key");
    }
    Ok(keys)
}

impl KekFile {
    /// Reads the file; an error names the path and what is wrong, never the content.
    pub fn open(path: &Path) -> Result<Self, KekError> {
        let (mut keys, stamp, warning) = read_keys(path)?;
        let current = keys.remove(0);
        Ok(Self {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                current,
                listed: keys,
                retired: None,
                stamp,
                checked: Instant::now(),
                loaded_at: SystemTime::now(),
                reload_error: None,
            }),
            warning,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's loose mode, as read at start.
    pub fn permission_warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Re-reads the file if it changed (at most once per [`RECHECK`]).
    fn refresh(&self, state: &mut State) {
        if state.checked.elapsed() < RECHECK {
            return;
        }
        state.checked = Instant::now();
        let changed = std::fs::metadata(&self.path).map(|meta| Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        });
        if changed.as_ref().is_ok_and(|stamp| *stamp == state.stamp) {
            return;
        }
        match read_keys(&self.path) {
            Ok((mut keys, stamp, _)) => {
                let current = keys.remove(0);
                let now = SystemTime::now();
                if current.id != state.current.id {
                    let old = std::mem::replace(&mut state.current, current);
                    tracing::info!(path = %self.path.display(), kek_id = %hex(&state.current.id), previous = %hex(&old.id), "FI key-encryption key changed; the previous one keeps unwrapping handles until they expire");
                    state.retired = Some((old, now + MAX_HANDLE_LIFETIME));
                }
                state.listed = keys;
                state.stamp = stamp;
                state.loaded_at = now;
                state.reload_error = None;
            }
            Err(e) => {
                if state.reload_error.as_deref() != Some(&e.0) {
                    tracing::warn!(error = %e, "cannot re-read the FI key-encryption key; the keys held stay in use");
                }
                state.reload_error = Some(e.0);
            }
        }
    }

    /// For `/readyz`.
    pub fn status(&self) -> KekStatus {
        let mut state = self.state();
        self.refresh(&mut state);
        let now = SystemTime::now();
        KekStatus {
            kek_id: hex(&state.current.id),
            previous_keys: state.listed.len()
                + usize::from(
                    state
                        .retired
                        .as_ref()
                        .is_some_and(|(_, until)| *until > now),
                ),
            loaded_at: crate::timefmt::rfc3339_seconds(state.loaded_at),
            reload_error: state.reload_error.clone(),
        }
    }

    /// Seals a handle under the current KEK.
    pub fn seal(&self, secret: &HandleSecret) -> Result<String, FiError> {
        let (id, aead) = {
            let mut state = self.state();
            self.refresh(&mut state);
            (state.current.id, state.current.aead())
        };
        let aead = aead.ok_or_else(|| FiError::internal("the KEK cannot be used"))?;
        let mut iv = [0u8; 12];
        SystemRandom::new()
            .fill(&mut iv)
            .map_err(|_| FiError::internal("no randomness"))?;
        let mut sealed = Zeroizing::new(Vec::with_capacity(SEALED_LEN));
        sealed.push(VERSION);
        sealed.extend_from_slice(&id);
        sealed.extend_from_slice(&iv);
        sealed.extend_from_slice(&secret.key.to_be_bytes()[..]);
        sealed.push(u8::from(secret.nonce.is_some()));
        sealed.extend_from_slice(&secret.nonce.unwrap_or([0; NONCE_LEN]));
        let expiry = secret
            .expiry
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        sealed.extend_from_slice(&expiry.to_be_bytes());
        let tag = aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(iv),
                Aad::from(aad(&id)),
                &mut sealed[17..],
            )
            .map_err(|_| FiError::internal("sealing failed"))?;
        sealed.extend_from_slice(tag.as_ref());
        Ok(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&sealed[..])))
    }

    /// The key that sealed a handle with this id, if this file holds it.
    fn key_for(&self, id: [u8; 4]) -> Option<LessSafeKey> {
        let mut state = self.state();
        self.refresh(&mut state);
        let now = SystemTime::now();
        if state.current.id == id {
            return state.current.aead();
        }
        if let Some(kek) = state.listed.iter().find(|k| k.id == id) {
            return kek.aead();
        }
        match &state.retired {
            Some((kek, until)) if kek.id == id && *until > now => kek.aead(),
            _ => None,
        }
    }
}

fn aad(id: &[u8; 4]) -> [u8; 10] {
    let mut aad = [0u8; 10];
    aad[..5].copy_from_slice(b"fikh1");
    aad[5] = VERSION;
    aad[6..].copy_from_slice(id);
    aad
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `text` looks like a handle (as opposed to a PEM).
pub fn is_handle(text: &str) -> bool {
    text.trim().starts_with(PREFIX)
}

/// Opens a handle with whichever of `files` holds its KEK: `invalid_handle` when none does, or it was
/// altered; `key_expired` when its time is past.
pub fn unseal<'a>(
    files: impl IntoIterator<Item = &'a KekFile>,
    handle: &str,
    now: SystemTime,
) -> Result<HandleSecret, FiError> {
    let invalid =
        || FiError::invalid_handle("the key handle was not sealed under this entity's KEK");
    let body = handle.trim().strip_prefix(PREFIX).ok_or_else(invalid)?;
    let mut sealed = Zeroizing::new(URL_SAFE_NO_PAD.decode(body).map_err(|_| invalid())?);
    if sealed.len() != SEALED_LEN || sealed[0] != VERSION {
        return Err(invalid());
    }
    let mut id = [0u8; 4];
    id.copy_from_slice(&sealed[1..5]);
    let mut iv = [0u8; 12];
    iv.copy_from_slice(&sealed[5..17]);
    let aead = files
        .into_iter()
        .find_map(|file| file.key_for(id))
        .ok_or_else(invalid)?;
    let plain = aead
        .open_in_place(
            Nonce::assume_unique_for_key(iv),
            Aad::from(aad(&id)),
            &mut sealed[17..],
        )
        .map_err(|_| invalid())?;
    let mut d = Zeroizing::new([0u8; 32]);
    d.copy_from_slice(&plain[..32]);
    let key = PrivateKey::from_be_bytes(&d).ok_or_else(invalid)?;
    let nonce = (plain[32] == 1).then(|| {
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&plain[33..33 + NONCE_LEN]);
        nonce
    });
    let mut expiry = [0u8; 8];
    expiry.copy_from_slice(&plain[33 + NONCE_LEN..]);
    let expiry = UNIX_EPOCH + Duration::from_secs(u64::from_be_bytes(expiry));
    if expiry <= now {
        return Err(FiError::expired(
            Expired::Handle,
            "the key handle has expired",
        ));
    }
    Ok(HandleSecret { key, nonce, expiry })
}

#[cfg(test)]
mod tests;
