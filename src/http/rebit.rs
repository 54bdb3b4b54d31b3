//! ReBIT's error answer (`ErrorResponse`) and the one thing it takes from a request: its `txnid`.
//!
//! An error answer echoes the request's `txnid`, but the broker has no other use for the body of a
//! request it refuses, so the `txnid` is found by [`scan_txnid`]: a bounded scan of the body's first bytes
//! (at most [`TXNID_SCAN_BYTES`]) for the top-level `"txnid"` string, never a parse of the whole body. A
//! `txnid` that is missing, escaped, or longer than [`MAX_TXNID_LEN`] is replaced by a fresh UUID v4.

use std::time::SystemTime;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub use crate::rebit::scan::{MAX_TXNID_LEN, TXNID_SCAN_BYTES, body_senders, scan_txnid, scan_ver};
/// The ReBIT API version written in error bodies.
pub const REBIT_VERSION: &str = "2.0.0";

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
    use crate::entity::Role;
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
