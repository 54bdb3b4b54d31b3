//! The advisory lock that elects one rotator among processes sharing a secret file on one host.
//!
//! The lock file sits beside the secret (`.NAME.lock`, mode 0600) and is held with `flock` semantics
//! (`std::fs::File::try_lock`): the kernel drops it when the holder exits, so a crashed rotator cannot
//! wedge the others. It is opened without following symlinks, so a link planted in the secret's directory
//! cannot make the broker create or truncate a file elsewhere. Whoever takes the lock second must re-check before rotating; see
//! [`super::manager`].

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A held lock; released on drop.
pub struct SecretFileLock {
    _file: File,
    pub path: PathBuf,
}

/// The lock file for a secret file.
pub fn lock_path(secret_file: &Path) -> PathBuf {
    let name = secret_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "secret".into());
    secret_file.with_file_name(format!(".{name}.lock"))
}

/// Why the lock was not taken.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LockError {
    #[error("cannot open the lock file {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("another process held {path} for over {}s", .waited.as_secs())]
    Busy { path: PathBuf, waited: Duration },
    #[error("cannot lock {path}: {reason}")]
    Lock { path: PathBuf, reason: String },
    #[error("lock task failed: {0}")]
    Task(String),
}

/// Takes the lock, waiting up to `wait`.
pub async fn acquire(secret_file: &Path, wait: Duration) -> Result<SecretFileLock, LockError> {
    let path = lock_path(secret_file);
    tokio::task::spawn_blocking(move || {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(|e| LockError::Open {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let deadline = Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(SecretFileLock { _file: file, path }),
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(LockError::Busy { path, waited: wait });
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(LockError::Lock {
                        path,
                        reason: e.to_string(),
                    });
                }
            }
        }
    })
    .await
    .map_err(|e| LockError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        let first = acquire(&secret, Duration::from_secs(1)).await.unwrap();
        assert_eq!(first.path, dir.path().join(".secret.lock"));
        assert!(acquire(&secret, Duration::from_millis(200)).await.is_err());
        drop(first);
        acquire(&secret, Duration::from_millis(200)).await.unwrap();
    }

    #[tokio::test]
    async fn a_symlink_in_place_of_the_lock_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "keep me").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(".secret.lock")).unwrap();
        let error = acquire(&dir.path().join("secret"), Duration::from_millis(100))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("lock file"), "{error}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    }
}
