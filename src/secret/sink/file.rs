//! The `file:` sink: the secret written atomically, with mode 0600, durable on return.

use std::io::Write;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use super::SinkError;

/// Writes `secret` (and a newline) to `path` atomically with mode 0600: a temp file in the same directory
/// (tempfile creates it exclusively, 0600, and removes it if anything fails), fsync, rename over `path`,
/// fsync the directory. A reader sees the old content or the new, never a mix, and after success the new
/// content survives a crash.
pub fn write_atomically(path: &Path, secret: &SecretString) -> Result<(), SinkError> {
    let fail = |reason: String| SinkError::File {
        path: path.to_path_buf(),
        reason,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| fail("the path has no file name".into()))?;
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| fail(e.to_string()))?;
    temp.write_all(secret.expose_secret().as_bytes())
        .and_then(|()| temp.write_all(b"\n"))
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|e| fail(e.to_string()))?;
    temp.persist(path).map_err(|e| fail(e.error.to_string()))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail(e.to_string()))
}

/// What the file holds now, read as the broker reads a secret file; `None` when there is no file (or it is
/// empty): a store that holds no secret.
pub fn read_back(path: &Path) -> Result<Option<SecretString>, SinkError> {
    match crate::entity::read_secret_file(path) {
        Ok(secret) => Ok(Some(secret)),
        Err(crate::entity::SecretError::Empty { .. }) => Ok(None),
        Err(_) if std::fs::symlink_metadata(path).is_err() => Ok(None),
        Err(e) => Err(SinkError::ReadBack {
            place: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_is_0600_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "old").unwrap();
        write_atomically(&path, &SecretString::from("new-secret")).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new-secret\n");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left behind"
        );
        let missing = dir.path().join("no-such-dir").join("secret");
        assert!(matches!(
            write_atomically(&missing, &SecretString::from("x")),
            Err(SinkError::File { .. })
        ));
    }
}
