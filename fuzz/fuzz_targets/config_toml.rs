//! Any text as the TOML configuration file: an error is one line, never a panic.
#![no_main]

use aa_token_broker::config::file::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(message) = parse(text) {
        assert!(!message.to_string().contains('\n'), "config errors are one line");
    }
});
