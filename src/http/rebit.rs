//! ReBIT's error answer (`ErrorResponse`) and the one thing it takes from a request: its `txnid`.
//!
//! An error answer echoes the request's `txnid`, but the broker has no other use for the body of a
//! request it refuses, so the `txnid` is found by [`scan_txnid`]: a bounded scan of the body's first bytes
//! (at most [`TXNID_SCAN_BYTES`]) for the top-level `"txnid"` string, never a parse of the whole body. A
//! `txnid` that is missing, escaped, or longer than [`MAX_TXNID_LEN`] is replaced by a fresh UUID v4.

use std::time::SystemTime;

use axum::http::{HeaderValue, StatusCode, header};

use crate::entity::Role;
use axum::response::{IntoResponse, Response};

/// How much of a body is looked at for its `txnid`.
pub const TXNID_SCAN_BYTES: usize = 64 * 1024;
/// Longest `txnid` echoed (a UUID is 36 characters).
pub const MAX_TXNID_LEN: usize = 128;
/// The ReBIT API version written in error bodies.
pub const REBIT_VERSION: &str = "2.0.0";

/// The value of the top-level `"txnid"` member of the JSON object that starts `head`, when it is a plain
/// string (no escapes, visible ASCII) of at most [`MAX_TXNID_LEN`] characters. Looks at most at the first
/// [`TXNID_SCAN_BYTES`] bytes; never allocates.
pub fn scan_txnid(head: &[u8]) -> Option<&str> {
    scan_member(head, b"txnid", MAX_TXNID_LEN)
}

/// The request's `ver` when it is a ReBIT 2.x version (`2.0.0`, `2.1.0`), for the answer to echo.
pub fn scan_ver(head: &[u8]) -> Option<&str> {
    scan_member(head, b"ver", 16).filter(|v| {
        v.strip_prefix("2.")
            .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
    })
}

/// The entities a ReBIT body names as its sender, in the order the swagger uses them: `Notifier` (with its
/// `type`) on notifications, then the `FIU`, `AA` and `FIP` objects of requests and responses (each with an
/// `id`). From at most the first [`TXNID_SCAN_BYTES`], top level only; never a parse of the body.
pub fn body_senders(head: &[u8]) -> Vec<(Role, &str)> {
    let mut senders = Vec::new();
    if let Some(notifier) = member_value(head, b"Notifier")
        && let (Some(kind), Some(id)) = (
            scan_member(notifier, b"type", 8).and_then(Role::parse),
            scan_member(notifier, b"id", MAX_TXNID_LEN),
        )
    {
        senders.push((kind, id));
    }
    for (field, role) in [
        (&b"FIU"[..], Role::Fiu),
        (&b"AA"[..], Role::Aa),
        (&b"FIP"[..], Role::Fip),
    ] {
        if let Some(id) =
            member_value(head, field).and_then(|o| scan_member(o, b"id", MAX_TXNID_LEN))
            && !senders.contains(&(role, id))
        {
            senders.push((role, id));
        }
    }
    senders
}

/// The raw bytes of the top-level member `name`'s value (an object, array, string or scalar).
fn member_value<'a>(head: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let head = &head[..head.len().min(TXNID_SCAN_BYTES)];
    let mut at = skip_whitespace(head, 0);
    if head.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    loop {
        at = skip_whitespace(head, at);
        if head.get(at) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(head, at)?;
        let key = &head[at + 1..key_end];
        at = skip_whitespace(head, key_end + 1);
        if head.get(at) != Some(&b':') {
            return None;
        }
        at = skip_whitespace(head, at + 1);
        let end = skip_value(head, at)?;
        if key == name {
            return head.get(at..end);
        }
        at = skip_whitespace(head, end);
        match head.get(at) {
            Some(b',') => at += 1,
            _ => return None,
        }
    }
}

/// The value of the top-level member `name` of the JSON object that starts `head`, when it is a plain
/// string of 1 to `max_len` visible ASCII characters without escapes.
fn scan_member<'a>(head: &'a [u8], name: &[u8], max_len: usize) -> Option<&'a str> {
    let head = &head[..head.len().min(TXNID_SCAN_BYTES)];
    let mut at = skip_whitespace(head, 0);
    if head.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    loop {
        at = skip_whitespace(head, at);
        if head.get(at) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(head, at)?;
        let key = &head[at + 1..key_end];
        at = skip_whitespace(head, key_end + 1);
        if head.get(at) != Some(&b':') {
            return None;
        }
        at = skip_whitespace(head, at + 1);
        if key == name {
            return plain_string(head, at, max_len);
        }
        at = skip_value(head, at)?;
        at = skip_whitespace(head, at);
        match head.get(at) {
            Some(b',') => at += 1,
            _ => return None,
        }
    }
}

fn skip_whitespace(bytes: &[u8], mut at: usize) -> usize {
    while bytes
        .get(at)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        at += 1;
    }
    at
}

/// The index of the quote that closes the string opening at `start`.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut at = start + 1;
    loop {
        match bytes.get(at)? {
            b'\\' => at += 2,
            b'"' => return Some(at),
            _ => at += 1,
        }
    }
}

/// A string value at `at` with no escapes and only visible ASCII, at most `max_len` long.
fn plain_string(bytes: &[u8], at: usize, max_len: usize) -> Option<&str> {
    if bytes.get(at) != Some(&b'"') {
        return None;
    }
    let rest = bytes.get(at + 1..)?;
    let end = rest.iter().take(max_len + 1).position(|b| *b == b'"')?;
    let value = &rest[..end];
    if value.is_empty() || !value.iter().all(|b| b.is_ascii_graphic() && *b != b'\\') {
        return None;
    }
    std::str::from_utf8(value).ok()
}

/// The index just past the JSON value starting at `at` (strings, nesting and scalars; not validated).
fn skip_value(bytes: &[u8], mut at: usize) -> Option<usize> {
    let mut depth = 0usize;
    loop {
        match bytes.get(at)? {
            b'"' => at = string_end(bytes, at)? + 1,
            b'{' | b'[' => {
                depth += 1;
                at += 1;
            }
            b'}' | b']' => {
                if depth == 0 {
                    return Some(at);
                }
                depth -= 1;
                at += 1;
            }
            b',' if depth == 0 => return Some(at),
            _ => at += 1,
        }
        if depth == 0 && matches!(bytes.get(at), Some(b',' | b'}')) {
            return Some(at);
        }
    }
}

/// The `txnid` to write in an answer: the request's when [`scan_txnid`] found one, else a fresh UUID v4.
pub fn answer_txnid(head: Option<&[u8]>) -> String {
    head.and_then(scan_txnid)
        .map_or_else(crate::iam::client::new_txn_id, str::to_string)
}

/// The envelope fields an error answer echoes: the request's `txnid` (or a fresh UUID v4) and its `ver`
/// when it is 2.x (else [`REBIT_VERSION`]), from at most the body's first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Echo {
    pub txnid: String,
    pub ver: String,
}

impl Echo {
    pub fn from_head(head: Option<&[u8]>) -> Self {
        Self {
            txnid: answer_txnid(head),
            ver: head.and_then(scan_ver).unwrap_or(REBIT_VERSION).to_string(),
        }
    }
}

/// A ReBIT `ErrorResponse`'s exact bytes: `ver`, `timestamp` (RFC 3339 UTC, milliseconds), `txnid`,
/// `errorCode`, `errorMsg`.
pub fn error_body(echo: &Echo, code: &str, message: &str) -> Vec<u8> {
    let json = serde_json::json!({
        "ver": echo.ver,
        "timestamp": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        "txnid": echo.txnid,
        "errorCode": code,
        "errorMsg": message,
    });
    serde_json::to_vec(&json).unwrap_or_default()
}

/// An answer with a ReBIT body (already serialized), `no-store`.
pub fn respond(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A ReBIT `ErrorResponse` with `txnid` (already chosen by [`answer_txnid`]) and version 2.0.0.
pub fn error(status: StatusCode, code: &str, message: &str, txnid: &str) -> Response {
    let echo = Echo {
        txnid: txnid.to_string(),
        ver: REBIT_VERSION.to_string(),
    };
    respond(status, error_body(&echo, code, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_top_level_txnid_is_found() {
        let uuid = "0b811819-9044-4856-b0ee-8c88035f8858";
        for body in [
            format!(r#"{{"ver":"2.0.0","txnid":"{uuid}"}}"#),
            format!(r#" {{ "txnid" : "{uuid}" , "x": 1}}"#),
            format!(
                r#"{{"a":{{"txnid":"nested"}},"b":[1,"]",{{}}],"c":"\"txnid\":","txnid":"{uuid}"}}"#
            ),
            format!("{{\"n\":-1.5e3,\"t\":true,\"z\":null,\"txnid\":\"{uuid}\"}}"),
        ] {
            assert_eq!(scan_txnid(body.as_bytes()), Some(uuid), "{body}");
        }
    }

    #[test]
    fn anything_else_finds_nothing() {
        let long = format!(r#"{{"txnid":"{}"}}"#, "a".repeat(MAX_TXNID_LEN + 1));
        let exact = format!(r#"{{"txnid":"{}"}}"#, "a".repeat(MAX_TXNID_LEN));
        assert_eq!(scan_txnid(exact.as_bytes()).map(str::len), Some(128));
        for body in [
            "",
            "[]",
            r#"{"txnid":42}"#,
            r#"{"txnid":"a\"b"}"#,
            r#"{"txnid":""}"#,
            r#"{"txnid":"with space"}"#,
            r#"{"a":{"txnid":"nested"}}"#,
            r#"{"txnid":"unterminated"#,
            r#"{"a" 1, "txnid":"x"}"#,
            long.as_str(),
        ] {
            assert_eq!(scan_txnid(body.as_bytes()), None, "{body}");
        }
    }

    #[test]
    fn only_the_first_bytes_are_looked_at() {
        let padding = "x".repeat(TXNID_SCAN_BYTES);
        let body = format!(r#"{{"pad":"{padding}","txnid":"late"}}"#);
        assert_eq!(scan_txnid(body.as_bytes()), None);
    }

    #[test]
    fn the_senders_a_body_names_are_found_at_the_top_level() {
        let notification = br#"{"ver":"2.0.0","txnid":"t","Notifier":{"type":"AA","id":"AA-ONE"},"FIStatusNotification":{"FIP":{"id":"nested"}}}"#;
        assert_eq!(body_senders(notification), vec![(Role::Aa, "AA-ONE")]);
        let request = br#"{"ver":"2.0.0","FIU":{"id":"FIU-ONE"},"Consent":{"AA":{"id":"deep"}},"FIP":{"id":"FIP-ONE"}}"#;
        assert_eq!(
            body_senders(request),
            vec![(Role::Fiu, "FIU-ONE"), (Role::Fip, "FIP-ONE")]
        );
        for nothing in [
            &b"{}"[..],
            b"[]",
            br#"{"Notifier":{"type":"CR","id":"x"}}"#,
            br#"{"FIU":"FIU-ONE"}"#,
        ] {
            assert!(body_senders(nothing).is_empty());
        }
    }

    #[test]
    fn a_2x_version_is_echoed_and_anything_else_is_not() {
        assert_eq!(scan_ver(br#"{"ver":"2.1.0"}"#), Some("2.1.0"));
        assert_eq!(scan_ver(br#"{"txnid":"x","ver":"2.0.0"}"#), Some("2.0.0"));
        for other in [
            r#"{"ver":"1.1.2"}"#,
            r#"{"ver":"2.0.0-rc"}"#,
            r#"{"ver":2}"#,
            "{}",
        ] {
            assert_eq!(scan_ver(other.as_bytes()), None, "{other}");
        }
        let echo = Echo::from_head(Some(br#"{"ver":"2.1.0","txnid":"t-1"}"#));
        assert_eq!((echo.ver.as_str(), echo.txnid.as_str()), ("2.1.0", "t-1"));
        let fallback = Echo::from_head(Some(br#"{"ver":"3.0.0"}"#));
        assert_eq!(fallback.ver, REBIT_VERSION);
        let body: serde_json::Value =
            serde_json::from_slice(&error_body(&echo, "InvalidRequest", "m")).unwrap();
        assert_eq!(body["ver"], "2.1.0");
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn a_missing_txnid_gets_a_fresh_uuid() {
        let txnid = answer_txnid(Some(b"{}"));
        assert_eq!(txnid.len(), 36);
        assert_eq!(txnid.as_bytes()[14], b'4');
        assert_ne!(txnid, answer_txnid(None));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Any bytes: no panic, and what is found is a short plain string that occurs in the input.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Some(found) = scan_txnid(&bytes) {
                prop_assert!(found.len() <= MAX_TXNID_LEN);
                prop_assert!(found.bytes().all(|b| b.is_ascii_graphic()));
            }
        }

        /// JSON-ish inputs built from the tokens the scanner cares about.
        #[test]
        fn json_like_inputs_never_panic(parts in proptest::collection::vec(
            prop_oneof![Just("{"), Just("}"), Just("["), Just("]"), Just("\""), Just("\\"),
                Just(":"), Just(","), Just("\"txnid\""), Just("\"abc\""), Just(" "), Just("1")],
            0..64,
        )) {
            let text: String = parts.concat();
            let _ = scan_txnid(text.as_bytes());
        }
    }
}
