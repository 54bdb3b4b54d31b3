//! The small private files the broker is given — the entity secret, the admin password, the signing key:
//! how they are opened and read, how a failure is worded, and when their mode is warned about. One place,
//! so that every such file gets the same hygiene.
//!
//! - [`read_private`] opens with `O_NONBLOCK` (opening a FIFO that has no writer would otherwise wait
//!   forever), `fstat`s the handle it got and refuses anything but a regular file — a FIFO, a device such
//!   as `/dev/zero`, a directory, a socket — then reads at most `cap + 1` bytes. The type is checked on
//!   the open handle, so a path swapped after a check cannot slip something else in; the cap holds for
//!   what is read, not for what `stat` said (a file that grows meanwhile; a device whose length is 0).
//! - [`io_reason`] words an `io::Error` for an operator: "no such file", not the `ErrorKind` text
//!   ("entity not found") that reads like a Central Registry answer in this program.
//! - [`mode_warning`] decides whether a file's mode is too open and what to advise, from who owns the
//!   file and who the broker runs as: advice that, followed, cannot leave the broker unable to read it.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use rustix::fs::OFlags;

/// Why a private file could not be read. Never carries any of its content.
#[derive(Debug)]
pub enum FileError {
    /// Opening, `fstat` or reading failed.
    Io(io::Error),
    /// The path names something other than a regular file: what it is, e.g. "a FIFO".
    NotRegular(&'static str),
    /// More than the cap was read.
    TooLarge,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileError::Io(e) => f.write_str(&io_reason(e)),
            FileError::NotRegular(what) => write!(f, "{what}, not a regular file"),
            FileError::TooLarge => f.write_str("too large"),
        }
    }
}

/// Reads the regular file at `path` (symlinks followed, as a Kubernetes Secret volume needs) into `into`,
/// at most `cap` bytes, and returns the `fstat` of the handle it read from. On any error `into` is
/// zeroed and left empty, so a caller holding key material has nothing partial to wipe.
pub fn read_private(path: &Path, cap: u64, into: &mut Vec<u8>) -> Result<Metadata, FileError> {
    let result = read_into(path, cap, into);
    if result.is_err() {
        into.fill(0);
        into.clear();
    }
    result
}

fn read_into(path: &Path, cap: u64, into: &mut Vec<u8>) -> Result<Metadata, FileError> {
    // O_NONBLOCK: a FIFO opens at once instead of waiting for a writer; O_NOCTTY: a terminal named by
    // mistake does not become the controlling one. (std adds O_CLOEXEC.)
    let file = OpenOptions::new()
        .read(true)
        .custom_flags((OFlags::NONBLOCK | OFlags::NOCTTY).bits() as i32)
        .open(path)
        .map_err(FileError::Io)?;
    let meta = file.metadata().map_err(FileError::Io)?;
    if let Some(what) = not_regular(&meta) {
        return Err(FileError::NotRegular(what));
    }
    // Back to blocking reads: the flag was only for the open, and regular files ignore it anyway.
    let flags = rustix::fs::fcntl_getfl(&file).map_err(|e| FileError::Io(e.into()))?;
    rustix::fs::fcntl_setfl(&file, flags - OFlags::NONBLOCK)
        .map_err(|e| FileError::Io(e.into()))?;
    read_capped(file, cap, into)?;
    Ok(meta)
}

/// Reads at most `cap + 1` bytes: one past the cap shows the file is larger, whatever `stat` said.
fn read_capped(file: File, cap: u64, into: &mut Vec<u8>) -> Result<(), FileError> {
    into.clear();
    file.take(cap.saturating_add(1))
        .read_to_end(into)
        .map_err(FileError::Io)?;
    if into.len() as u64 > cap {
        return Err(FileError::TooLarge);
    }
    Ok(())
}

/// What a non-regular file is, in words; `None` for a regular file.
fn not_regular(meta: &Metadata) -> Option<&'static str> {
    let kind = meta.file_type();
    if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    }
}

/// An `io::Error` from opening or reading a file, in an operator's words.
pub fn io_reason(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => "no such file".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        io::ErrorKind::IsADirectory => "is a directory".into(),
        io::ErrorKind::NotADirectory => "a part of the path is not a directory".into(),
        io::ErrorKind::InvalidFilename => "the file name is too long".into(),
        // An OS error names itself ("Input/output error (os error 5)"); it never holds file content.
        _ if error.raw_os_error().is_some() => error.to_string(),
        kind => kind.to_string(),
    }
}

/// Who the broker reads files as: its effective user and every group it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reader {
    pub uid: u32,
    pub groups: Vec<u32>,
}

impl Reader {
    /// This process.
    pub fn current() -> Self {
        let mut groups: Vec<u32> = rustix::process::getgroups()
            .map(|groups| groups.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default();
        groups.push(rustix::process::getegid().as_raw());
        Self {
            uid: rustix::process::geteuid().as_raw(),
            groups,
        }
    }
}

/// The warning for a private file that `meta` describes, as this process sees it; `None` when only
/// its owner may read or write it.
pub fn warning_for(path: &Path, meta: &Metadata) -> Option<String> {
    // Cheap test first: the common, well-set-up case asks nothing of the system.
    if meta.mode() & 0o077 == 0 {
        return None;
    }
    mode_warning(
        path,
        meta.mode(),
        meta.uid(),
        meta.gid(),
        &Reader::current(),
    )
}

/// The warning for a file of `mode` owned by `owner`:`group` read by `reader`, or `None` when no bit for
/// group or others is set, or when the only one is the group's read bit and the broker reads the file
/// through that group (it owns neither the file nor the machine). Names the path and the mode (never content) and advises only what keeps the
/// file readable to the broker: a non-root process reads a 0400 file only if it owns it, so a file it
/// reads through its group (a Kubernetes Secret volume with `fsGroup`) must keep the group bit, and one
/// it reads through the bits for others must first be given to it.
pub fn mode_warning(
    path: &Path,
    mode: u32,
    owner: u32,
    group: u32,
    reader: &Reader,
) -> Option<String> {
    let mode = mode & 0o777;
    if mode & 0o077 == 0 {
        return None;
    }
    let me = reader.uid;
    // A file someone else owns, readable by its group only, that the broker reads through that group:
    // a Kubernetes Secret volume with `fsGroup` and `defaultMode: 0440`, mounted into the sidecar alone.
    // That is as private as a non-root reader can have it; 0400 would lock the broker out.
    if me != 0 && owner != me && mode & 0o077 == 0o040 && reader.groups.contains(&group) {
        return None;
    }
    let advice = if me == 0 || owner == me {
        format!("chmod 0400 (or 0600) keeps it to uid {owner}, its owner, which the broker runs as")
    } else if reader.groups.contains(&group) {
        if mode & 0o007 == 0 {
            format!(
                "the broker (uid {me}) reads it through group {group}, as on a Kubernetes Secret volume with \
                 fsGroup and defaultMode 0440: keep that group bit (0400 would lock the broker out) and let \
                 no other user or container share the group, or give the file to uid {me} with mode 0400"
            )
        } else {
            format!(
                "remove the bits for others (chmod o-rwx; on a Kubernetes Secret volume defaultMode 0440 with \
                 fsGroup {group}) and keep the group bit the broker (uid {me}) reads it through"
            )
        }
    } else {
        format!(
            "the broker (uid {me}) reads it only through the bits for others, so removing them would lock \
             it out: first give the file to uid {me} (then chmod 0400), or on a Kubernetes Secret volume set \
             the pod's fsGroup together with defaultMode 0440"
        )
    };
    Some(format!(
        "{} has mode {mode:04o}: readable or writable by group or others; {advice}",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    fn read(path: &Path, cap: u64) -> Result<Vec<u8>, FileError> {
        let mut bytes = Vec::new();
        read_private(path, cap, &mut bytes).map(|_| bytes)
    }

    /// Runs `f` on another thread and fails the test if it has not returned within 5 s (a blocked
    /// `open` would otherwise hang the suite).
    fn within_5s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(f());
        });
        result
            .recv_timeout(Duration::from_secs(5))
            .expect("the read did not return within 5 s")
    }

    #[test]
    fn regular_files_are_read_whole_up_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read(&path, 10).unwrap(), b"0123456789");
        assert!(matches!(read(&path, 9), Err(FileError::TooLarge)));
        let mut held = b"stale".to_vec();
        assert!(read_private(&path, 3, &mut held).is_err());
        assert!(held.is_empty(), "nothing partial is left behind");
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let result = within_5s(move || read(&path, 1024));
        assert!(
            matches!(result, Err(FileError::NotRegular("a FIFO"))),
            "{result:?}"
        );
    }

    #[test]
    fn devices_and_directories_are_refused() {
        let zero = within_5s(|| read(Path::new("/dev/zero"), 1024));
        assert!(
            matches!(zero, Err(FileError::NotRegular("a character device"))),
            "{zero:?}"
        );
        let dir = tempfile::tempdir().unwrap();
        let error = read(dir.path(), 1024).unwrap_err();
        assert_eq!(error.to_string(), "a directory, not a regular file");
    }

    #[test]
    fn errors_are_worded_for_an_operator() {
        let dir = tempfile::tempdir().unwrap();
        let missing = read(&dir.path().join("missing"), 1024).unwrap_err();
        assert_eq!(missing.to_string(), "no such file");
        let io = |kind| io_reason(&io::Error::from(kind));
        assert_eq!(io(io::ErrorKind::PermissionDenied), "permission denied");
        assert_eq!(
            io_reason(&io::Error::from_raw_os_error(5)),
            io::Error::from_raw_os_error(5).to_string()
        );
    }

    #[test]
    fn the_mode_warning_advises_what_keeps_the_file_readable() {
        let path = Path::new("/etc/broker/key.pem");
        let broker = Reader {
            uid: 1000,
            groups: vec![1000, 2000],
        };
        // Only the owner: no warning, whoever owns it.
        for mode in [0o400, 0o600, 0o100600, 0o700] {
            assert_eq!(mode_warning(path, mode, 1000, 1000, &broker), None);
            assert_eq!(mode_warning(path, mode, 0, 0, &broker), None);
        }
        // The broker owns it: chmod is safe advice.
        let own = mode_warning(path, 0o100644, 1000, 1000, &broker).unwrap();
        assert!(
            own.starts_with("/etc/broker/key.pem has mode 0644"),
            "{own}"
        );
        assert!(own.contains("chmod 0400"), "{own}");
        // Root-owned, read through the pod's fsGroup (a Secret volume with defaultMode 0440): as
        // private as a non-root broker can have it, so no warning.
        assert_eq!(mode_warning(path, 0o440, 0, 2000, &broker), None);
        assert_eq!(mode_warning(path, 0o100440, 0, 2000, &broker), None);
        // Group-writable as well: warned, never advising 0400, which would lock the broker out.
        let fs_group = mode_warning(path, 0o460, 0, 2000, &broker).unwrap();
        assert!(fs_group.contains("mode 0460") && fs_group.contains("keep that group bit"));
        assert!(!fs_group.contains("chmod 0400"), "{fs_group}");
        // 0440 owned by the broker itself: the group bit is not needed.
        assert!(
            mode_warning(path, 0o440, 1000, 2000, &broker)
                .unwrap()
                .contains("chmod 0400")
        );
        let fs_group_others = mode_warning(path, 0o644, 0, 2000, &broker).unwrap();
        assert!(fs_group_others.contains("o-rwx"), "{fs_group_others}");
        assert!(!fs_group_others.contains("chmod 0400"), "{fs_group_others}");
        // Read only through the bits for others: take ownership (or fsGroup) first.
        let others = mode_warning(path, 0o644, 0, 0, &broker).unwrap();
        assert!(
            others.contains("first give the file to uid 1000"),
            "{others}"
        );
        assert!(others.contains("fsGroup together with defaultMode 0440"));
        // Root reads anything: chmod is safe.
        let root = Reader {
            uid: 0,
            groups: vec![0],
        };
        assert!(
            mode_warning(path, 0o604, 5, 5, &root)
                .unwrap()
                .contains("chmod 0400")
        );
        // Writable by the group only is warned about too (someone could plant a file).
        assert!(mode_warning(path, 0o620, 1000, 1000, &broker).is_some());
    }

    #[test]
    fn a_loose_file_on_disk_is_warned_about_and_a_tight_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let warning = warning_for(&path, &meta).unwrap();
        assert!(warning.contains("mode 0644"), "{warning}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(warning_for(&path, &std::fs::metadata(&path).unwrap()), None);
    }
}
