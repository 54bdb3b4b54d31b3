//! The entity id, the roles of the network, and the entity secret.
//!
//! An [`EntityId`] can only hold a well-formed id, so everything downstream (cache keys, metric labels, log
//! fields) can trust it. The secret is never a `String`: it is read fresh from its [`SecretSource`] on every
//! fetch, held in a [`SecretString`] whose `Debug` redacts it, and only ever logged as a [`fingerprint`].
//! A [`Role`] (AA, FIU, FIP) is parsed once, from a token's `roles`, a query or a body, and tables keyed by
//! it are [`PerRole`]s.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use crate::private_file::{FileError, io_reason, read_private};

/// Longest entity id accepted. Central Registry ids are short (`FIU-EXAMPLE`); the bound keeps hostile
/// request paths and config files from creating huge keys or metric labels.
pub const MAX_ENTITY_ID_LEN: usize = 128;

/// Largest secret file read. A real secret is tens of bytes; anything bigger is a mistake (or `/dev/zero`).
pub const MAX_SECRET_FILE_BYTES: u64 = 4096;

/// A Central Registry entity id (the Keycloak client id), e.g. `FIU-EXAMPLE`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityId(Arc<str>);

impl EntityId {
    /// Accepts 1..=128 characters from `[A-Za-z0-9._@:-]`, not all of them dots.
    ///
    /// An id becomes a path segment of CR requests made with our token, so it must be one segment that
    /// names an entity: no `/ ? # %` (another path, a query, an encoding) and not `.` or `..` (which URL
    /// resolution, and the `url` crate's segment API, treat as "this" or "the parent" directory).
    pub fn parse(raw: &str) -> Result<Self, EntityIdError> {
        if raw.is_empty() {
            return Err(EntityIdError::Empty);
        }
        if raw.len() > MAX_ENTITY_ID_LEN {
            return Err(EntityIdError::TooLong);
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | ':')))
        {
            return Err(EntityIdError::Character(bad));
        }
        if raw.bytes().all(|b| b == b'.') {
            return Err(EntityIdError::Dots);
        }
        Ok(Self(Arc::from(raw)))
    }

    /// [`parse`](Self::parse) after trimming surrounding whitespace, as a clap `value_parser`: a bad id
    /// on the command line is then clap's one-line usage error naming the flag (exit 2).
    pub fn parse_arg(raw: &str) -> Result<Self, EntityIdError> {
        Self::parse(raw.trim())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a string is not an entity id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntityIdError {
    #[error("entity id is empty")]
    Empty,
    #[error("entity id is longer than {MAX_ENTITY_ID_LEN} characters")]
    TooLong,
    #[error("entity id contains {0:?}; allowed are letters, digits and . _ - @ :")]
    Character(char),
    #[error("entity id is only dots; . and .. are path segments, not ids")]
    Dots,
}

/// Lets maps keyed by `EntityId` be searched with the `&str` from a request path, without allocating.
/// Sound because the derived `Ord`/`Hash` on `Arc<str>` are those of the `str` itself.
impl std::borrow::Borrow<str> for EntityId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntityId({})", self.0)
    }
}

/// Where an entity secret comes from.
#[derive(Clone)]
pub enum SecretSource {
    /// A file, re-read on every fetch so that a rotated secret (including a Kubernetes Secret volume's
    /// symlink swap) is picked up without a restart.
    File(PathBuf),
    /// A value given at start (the `AA_BROKER_ENTITY_SECRET` variable, or the demo).
    Inline(Arc<SecretString>),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "File({})", path.display()),
            Self::Inline(_) => f.write_str("Inline([REDACTED])"),
        }
    }
}

impl SecretSource {
    /// Loads the current secret. File reads happen on the blocking pool: they are tiny, but a slow or hung
    /// volume must never stall the runtime threads that serve tokens.
    pub async fn load(&self) -> Result<SecretString, SecretError> {
        match self {
            Self::Inline(secret) => Ok(SecretString::from(secret.expose_secret())),
            Self::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || read_secret_file(&path))
                    .await
                    .map_err(|e| SecretError::Io {
                        path: PathBuf::new(),
                        reason: format!("secret reader task failed: {e}"),
                    })?
            }
        }
    }

    /// A warning when the file is readable or writable by its group or others: anyone in the pod's group
    /// could read the secret, or plant one. The advice depends on how the broker itself reads the file
    /// ([`private_file::mode_warning`](crate::private_file::mode_warning)): a Kubernetes Secret volume is
    /// root-owned, so there the group bit (with `fsGroup`) is what lets a non-root broker read it.
    pub fn permission_warning(&self) -> Option<String> {
        let Self::File(path) = self else {
            return None;
        };
        crate::private_file::warning_for(path, &std::fs::metadata(path).ok()?)
    }

    /// A short description for logs and errors (never the value).
    pub fn describe(&self) -> String {
        match self {
            Self::File(path) => format!("file {}", path.display()),
            Self::Inline(_) => "inline value".into(),
        }
    }
}

/// Why a secret could not be loaded. Carries paths and reasons, never content.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SecretError {
    #[error("secret file {path} cannot be read: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("secret file {path} is {kind}, not a regular file")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("secret file {path} is larger than {MAX_SECRET_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("secret file {path} is not valid UTF-8")]
    NotUtf8 { path: PathBuf },
    #[error("secret file {path} is empty")]
    Empty { path: PathBuf },
}

/// Reads a secret file: a regular file (symlinks followed) of at most [`MAX_SECRET_FILE_BYTES`], UTF-8,
/// surrounding whitespace ignored, not empty. Opened and read as [`crate::private_file`] reads every
/// private file: a FIFO or a device is refused at once, never waited on or read without end.
pub fn read_secret_file(path: &Path) -> Result<SecretString, SecretError> {
    let mut raw = Vec::with_capacity(64);
    if let Err(e) = read_private(path, MAX_SECRET_FILE_BYTES, &mut raw) {
        let path = path.to_path_buf();
        return Err(match e {
            FileError::Io(e) => SecretError::Io {
                path,
                reason: io_reason(&e),
            },
            FileError::NotRegular(kind) => SecretError::NotAFile { path, kind },
            FileError::TooLarge => SecretError::TooLarge { path },
        });
    }
    secret_from_bytes(raw, path)
}

/// A secret from the bytes of its file (or of stdin, named by `path`): UTF-8, surrounding whitespace
/// ignored, not empty — what [`read_secret_file`] and `secret fingerprint` both accept, so a fingerprint
/// computed by hand is the one the broker logs.
pub fn secret_from_bytes(raw: Vec<u8>, path: &Path) -> Result<SecretString, SecretError> {
    // Wrapped at once so the untrimmed copy is zeroized when it goes out of scope.
    let text = SecretString::from(String::from_utf8(raw).map_err(|_| SecretError::NotUtf8 {
        path: path.to_path_buf(),
    })?);
    let secret = SecretString::from(text.expose_secret().trim());
    if secret.expose_secret().is_empty() {
        return Err(SecretError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(secret)
}

/// A short, stable, non-reversible label for a secret or token, for logs: `sha256:` and 8 hex digits.
/// Lets an operator tell "the secret changed" from "it did not" without the value ever being written.
pub fn fingerprint(value: &SecretString) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, value.expose_secret().as_bytes());
    let hex: String = digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// An entity type of the AA network: what a token's `roles` claim names, a Central Registry type (the
/// `{type}` of its entity-info path) and a ReBIT notifier's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Aa,
    Fiu,
    Fip,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Aa, Role::Fiu, Role::Fip];

    /// `AA`, `FIU` or `FIP`, in any case.
    pub fn parse(raw: &str) -> Option<Role> {
        let raw = raw.trim();
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(raw))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Aa => "AA",
            Role::Fiu => "FIU",
            Role::Fip => "FIP",
        }
    }

    /// Who may call an entity of this role (ReBIT 2.0.0: an FIU's and an FIP's endpoints are called by
    /// the AA; an AA's by FIUs and FIPs).
    pub fn callers(self) -> &'static [Role] {
        match self {
            Role::Fiu | Role::Fip => &[Role::Aa],
            Role::Aa => &[Role::Fiu, Role::Fip],
        }
    }
}

/// One `T` for each role: what a table keyed by [`Role`] holds (the CR's senders by type, say), with no
/// type strings or positions to get wrong.
#[derive(Debug, Clone, Default)]
pub struct PerRole<T> {
    aa: T,
    fiu: T,
    fip: T,
}

impl<T> PerRole<T> {
    pub fn get(&self, role: Role) -> &T {
        match role {
            Role::Aa => &self.aa,
            Role::Fiu => &self.fiu,
            Role::Fip => &self.fip,
        }
    }

    pub fn get_mut(&mut self, role: Role) -> &mut T {
        match role {
            Role::Aa => &mut self.aa,
            Role::Fiu => &mut self.fiu,
            Role::Fip => &mut self.fip,
        }
    }

    /// Each role with its value, in the order of [`Role::ALL`].
    pub fn iter(&self) -> impl Iterator<Item = (Role, &T)> {
        Role::ALL
            .into_iter()
            .map(move |role| (role, self.get(role)))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_ids_are_validated() {
        for good in [
            "FIU-EXAMPLE",
            "AA-ONE",
            "fiu@finvu",
            "fiu@acme.in",
            "a.b",
            "a:b",
            ".a",
            "a..",
            "x_y",
        ] {
            assert_eq!(
                EntityId::parse(good).map(|id| id.to_string()),
                Ok(good.into())
            );
        }
        assert!(EntityId::parse(&"x".repeat(128)).is_ok());
        for bad in [
            "",
            ".",
            "..",
            "...",
            "a/b",
            "a?b",
            "a#",
            "AA-ONE?admin=1#",
            "%2e%2e",
            "..%2f",
            "../../x",
            "a b",
            " AA-ONE",
            "AA-ONE ",
            "a\tb",
            "a\nb",
            "a\u{0}b",
            "a\u{7f}",
            "a\\b",
            "caf\u{e9}",
            "\u{ff0e}\u{ff0e}",
        ] {
            assert!(EntityId::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(EntityId::parse(".."), Err(EntityIdError::Dots));
        assert_eq!(EntityId::parse("a/b"), Err(EntityIdError::Character('/')));
        assert_eq!(
            EntityId::parse(&"x".repeat(129)),
            Err(EntityIdError::TooLong)
        );
        // The command line's parser trims, and refuses what `parse` refuses.
        assert_eq!(EntityId::parse_arg(" AA-ONE\n").unwrap().as_str(), "AA-ONE");
        assert!(EntityId::parse_arg(" .. ").is_err());
    }

    #[test]
    fn secret_file_is_trimmed_and_checked() {
        let dir = std::env::temp_dir().join(format!("aa-broker-entity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, "  s3cr3t\n").unwrap();
        assert_eq!(read_secret_file(&path).unwrap().expose_secret(), "s3cr3t");
        std::fs::write(&path, " \n\t").unwrap();
        assert!(matches!(
            read_secret_file(&path),
            Err(SecretError::Empty { .. })
        ));
        std::fs::write(&path, vec![b'a'; 5000]).unwrap();
        assert!(matches!(
            read_secret_file(&path),
            Err(SecretError::TooLarge { .. })
        ));
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert!(matches!(
            read_secret_file(&path),
            Err(SecretError::NotUtf8 { .. })
        ));
        assert!(matches!(
            read_secret_file(&dir),
            Err(SecretError::NotAFile { .. })
        ));
        let missing = read_secret_file(&dir.join("missing")).unwrap_err();
        assert!(
            missing
                .to_string()
                .ends_with("cannot be read: no such file"),
            "{missing}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_replaced_while_being_read_is_read_whole_old_or_new() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let (old, new) = ("a".repeat(2000), "b".repeat(3000));
        std::fs::write(&path, &old).unwrap();
        let writer = {
            let (path, dir, old, new) = (
                path.clone(),
                dir.path().to_path_buf(),
                old.clone(),
                new.clone(),
            );
            std::thread::spawn(move || {
                for i in 0..500 {
                    let staged = dir.join(format!("staged-{i}"));
                    std::fs::write(&staged, if i % 2 == 0 { &new } else { &old }).unwrap();
                    std::fs::rename(&staged, &path).unwrap();
                }
            })
        };
        for _ in 0..500 {
            let read = read_secret_file(&path).unwrap();
            assert!(
                read.expose_secret() == old || read.expose_secret() == new,
                "a torn read"
            );
        }
        writer.join().unwrap();
    }

    #[test]
    fn an_unreadable_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "value").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
        // Root reads any file regardless of mode; the check is meaningful for the non-root user the
        // broker runs as.
        let running_as_root = std::fs::read_to_string("/proc/self/status")
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false);
        match read_secret_file(&path) {
            Err(SecretError::Io {
                path: named,
                reason,
            }) => {
                assert_eq!(named, path);
                assert!(reason.contains("permission"), "{reason}");
            }
            Ok(_) => assert!(running_as_root, "a mode 000 file was readable"),
            Err(other) => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn fingerprints_do_not_contain_the_value() {
        let secret = SecretString::from("abcdef");
        let fp = fingerprint(&secret);
        assert!(fp.starts_with("sha256:") && fp.len() == 15);
        assert!(!fp.contains("abcdef"));
        assert_eq!(fp, fingerprint(&SecretString::from("abcdef")));
        assert_eq!(
            format!("{:?}", SecretSource::Inline(Arc::new(secret))),
            "Inline([REDACTED])"
        );
    }
}
