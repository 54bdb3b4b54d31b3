//! Bounded scans of a JSON body's top level: the few envelope fields the broker reads from bodies it has
//! no other use for (`txnid`, `ver`, `timestamp`, the sender objects). At most the first
//! [`TXNID_SCAN_BYTES`] are looked at; nothing is allocated; no input can make a scan panic or loop.

use crate::entity::Role;

/// How much of a body is looked at.
pub const TXNID_SCAN_BYTES: usize = 64 * 1024;
/// Longest `txnid` (or id) read (a UUID is 36 characters).
pub const MAX_TXNID_LEN: usize = 128;

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
pub fn member_value<'a>(head: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let (head, at) = find_member(head, name)?;
    let end = skip_value(head, at)?;
    head.get(at..end)
}

/// The value of the top-level member `name` of the JSON object that starts `head`, when it is a plain
/// string of 1 to `max_len` visible ASCII characters without escapes.
pub fn scan_member<'a>(head: &'a [u8], name: &[u8], max_len: usize) -> Option<&'a str> {
    let (head, at) = find_member(head, name)?;
    plain_string(head, at, max_len)
}

/// Where the value of the top-level member `name` starts, in the scanned part of `head` (which is
/// returned with it): the one walk over the object's keys that [`member_value`] and [`scan_member`] share.
fn find_member<'a>(head: &'a [u8], name: &[u8]) -> Option<(&'a [u8], usize)> {
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
            return Some((head, at));
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
