//! Any bytes as a secret file: read back trimmed, or a clear error; never a panic, never the content in
//! the error.
#![no_main]

use aa_token_broker::entity::read_secret_file;
use libfuzzer_sys::fuzz_target;
use secrecy::ExposeSecret;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("aa-broker-fuzz-secret-{}", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    match read_secret_file(&path) {
        Ok(secret) => {
            let text = std::str::from_utf8(data).expect("accepted secrets are UTF-8");
            assert_eq!(secret.expose_secret(), text.trim());
            assert!(!secret.expose_secret().is_empty());
        }
        Err(error) => {
            let message = error.to_string();
            if let Ok(text) = std::str::from_utf8(data) {
                let text = text.trim();
                if text.len() > 8 {
                    assert!(!message.contains(text), "the error repeats the file's content");
                }
            }
        }
    }
});
