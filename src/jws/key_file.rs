//! The signing key's file: read at start, and re-read when it changes.
//!
//! [`SigningKeyFile`] checks the file's identity, modification time and length on each use (one `stat`)
//! and parses it again only when they changed, so a key rotated by replacing the file (a Kubernetes Secret volume swaps a
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

use super::key::zeroize_lite::Wipe;
use super::key::{KeyError, SigningKey};
use crate::private_file::{self, FileError, io_reason, read_private};

/// Largest key file read: a 8192-bit key in PEM is under 7 KiB.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jws::key::tests::test_pem;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

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
