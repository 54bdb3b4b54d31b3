//! Tests of the KEK file and of key handles.

use super::*;

fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn secret(hours: u64) -> HandleSecret {
    HandleSecret {
        key: PrivateKey::generate().unwrap(),
        nonce: Some([9; 32]),
        expiry: SystemTime::now() + Duration::from_secs(hours * 3600),
    }
}

#[test]
fn a_handle_opens_under_its_kek_only_and_not_after_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let a = KekFile::open(&write(dir.path(), "a", &[1u8; 32])).unwrap();
    let b = KekFile::open(&write(
        dir.path(),
        "b",
        format!("{}\n", STANDARD.encode([2u8; 32])).as_bytes(),
    ))
    .unwrap();
    let s = secret(1);
    let handle = a.seal(&s).unwrap();
    assert!(is_handle(&handle));
    let now = SystemTime::now();
    let opened = unseal([&b, &a], &handle, now).unwrap();
    assert_eq!(opened.key.public_key(), s.key.public_key());
    assert_eq!(opened.nonce, Some([9; 32]));
    assert_eq!(
        unseal([&b], &handle, now).unwrap_err().code(),
        "invalid_handle"
    );
    let later = now + Duration::from_secs(7200);
    assert_eq!(
        unseal([&a], &handle, later).unwrap_err().code(),
        "key_expired"
    );
    // Any altered character is refused.
    let mut altered = handle.clone().into_bytes();
    let last = altered.len() - 3;
    altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    assert_eq!(
        unseal([&a], &altered, now).unwrap_err().code(),
        "invalid_handle"
    );
    assert_eq!(
        unseal([&a], "fikh1.AAAA", now).unwrap_err().code(),
        "invalid_handle"
    );
}

#[test]
fn a_rotated_kek_keeps_unwrapping_old_handles() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "kek", &[1u8; 32]);
    let file = KekFile::open(&path).unwrap();
    let old = file.seal(&secret(1)).unwrap();
    let before = file.status().kek_id;
    write(
        dir.path(),
        "kek",
        format!("{}\n", STANDARD.encode([3u8; 32])).as_bytes(),
    );
    file.state().checked = Instant::now() - RECHECK;
    let status = file.status();
    assert_ne!(status.kek_id, before);
    assert_eq!(status.previous_keys, 1);
    let new = file.seal(&secret(1)).unwrap();
    let now = SystemTime::now();
    assert!(unseal([&file], &old, now).is_ok());
    assert!(unseal([&file], &new, now).is_ok());
    // A second pod started after the rotation knows the old key only if the file lists it.
    let fresh = KekFile::open(&path).unwrap();
    assert!(unseal([&fresh], &old, now).is_err());
    let both = format!(
        "{}\n{}\n",
        STANDARD.encode([3u8; 32]),
        STANDARD.encode([1u8; 32])
    );
    let listed = KekFile::open(&write(dir.path(), "both", both.as_bytes())).unwrap();
    assert!(unseal([&listed], &old, now).is_ok());
    // A broken file keeps the keys held and says so.
    write(dir.path(), "kek", b"not a key");
    file.state().checked = Instant::now() - RECHECK;
    assert!(file.status().reload_error.is_some());
    assert!(unseal([&file], &new, now).is_ok());
}

#[test]
fn bad_files_are_refused_without_showing_them() {
    let dir = tempfile::tempdir().unwrap();
    for content in [
        &b""[..],
        b"short",
        b"c2VjcmV0LWtleS1tYXRlcmlhbA==\n",
        &[0xffu8; 33],
    ] {
        let error = KekFile::open(&write(dir.path(), "k", content)).unwrap_err();
        assert!(!error.0.contains("c2VjcmV0"), "{error}");
    }
    assert!(
        KekFile::open(&dir.path().join("missing"))
            .unwrap_err()
            .0
            .contains("no such file")
    );
}
