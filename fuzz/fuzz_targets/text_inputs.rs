//! The small parsers that see outside text: IAM timestamps, Host headers, entity ids, sink specs,
//! Retry-After values.
#![no_main]

use aa_token_broker::entity::EntityId;
use aa_token_broker::http::guard::host_allowed;
use aa_token_broker::iam::client::{is_token68, parse_retry_after};
use aa_token_broker::secret::SinkSpec;
use aa_token_broker::timefmt::parse_iam_timestamp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = parse_iam_timestamp(text);
    let _ = parse_retry_after(text);
    let _ = is_token68(text);
    if host_allowed(text, &[]) {
        // Whatever passes the guard is a bare loopback name or address with an optional port.
        assert!(!text.contains(['@', '/', '?', '#']), "{text:?}");
        assert!(!text.trim().contains(char::is_whitespace), "{text:?}");
    }
    if let Ok(id) = EntityId::parse(text) {
        // One path segment that names something: no separator, no query or fragment, not `.` or `..`.
        assert!(id.as_str().len() <= 128 && !id.as_str().contains(['/', '?', '#', '%']));
        assert!(!id.as_str().bytes().all(|b| b == b'.'), "{text:?}");
    }
    let _ = SinkSpec::parse(text);
});
