//! The envelope every ReBIT body carries (`ver`, `timestamp`, `txnid`), checked as the certification
//! suite checks it, with the bounded scans of [`super::scan`]. (`KeyMaterial` is the FI module's to read:
//! [`crate::fi::keys::parse_key_material`].)

use std::time::{Duration, SystemTime};

use super::scan::{MAX_TXNID_LEN, member_value, scan_member};

/// The versions accepted by default.
pub const DEFAULT_VERSIONS: [&str; 2] = ["2.0.0", "2.1.0"];
/// How far a `timestamp` may be from now by default: the suite sends exactly now ± 15 min and expects a
/// refusal, so the window is strictly inside 15 minutes, with 30 s to spare for the request's journey.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(15 * 60 - 30);

/// The envelope rules of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeRules {
    pub versions: Vec<String>,
    pub window: Duration,
}

impl Default for EnvelopeRules {
    fn default() -> Self {
        Self {
            versions: DEFAULT_VERSIONS.iter().map(|v| v.to_string()).collect(),
            window: DEFAULT_WINDOW,
        }
    }
}

/// Why an envelope is refused: `NoSuchVersion` is a `404`, the rest `400 InvalidRequest`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("ver {0:?} is not a supported version")]
    NoSuchVersion(String),
    #[error("the body has no {0}")]
    Missing(&'static str),
    #[error("timestamp is not an RFC 3339 date-time with seconds and a zone")]
    BadTimestamp,
    #[error("timestamp is {0} s away from now")]
    SkewedTimestamp(u64),
    #[error("txnid is not a UUID")]
    BadTxnid,
}

impl EnvelopeRules {
    /// Checks the envelope of `head` (the body's first bytes) at `now`.
    pub fn check(&self, head: &[u8], now: SystemTime) -> Result<(), EnvelopeError> {
        // A member that is present but not a plain string is as wrong as a bad value.
        let field = |name: &'static str, max: usize, bad: EnvelopeError| {
            if member_value(head, name.as_bytes()).is_none() {
                return Err(EnvelopeError::Missing(name));
            }
            scan_member(head, name.as_bytes(), max).ok_or(bad)
        };
        let ver = field("ver", 32, EnvelopeError::NoSuchVersion(String::new()))?;
        if !self.versions.iter().any(|v| v == ver) {
            return Err(EnvelopeError::NoSuchVersion(ver.to_string()));
        }
        let timestamp = field("timestamp", 64, EnvelopeError::BadTimestamp)?;
        let at = parse_timestamp(timestamp).ok_or(EnvelopeError::BadTimestamp)?;
        let skew = match at.duration_since(now) {
            Ok(ahead) => ahead,
            Err(behind) => behind.duration(),
        };
        if skew >= self.window {
            return Err(EnvelopeError::SkewedTimestamp(skew.as_secs()));
        }
        let txnid = field("txnid", MAX_TXNID_LEN, EnvelopeError::BadTxnid)?;
        if !is_uuid(txnid) {
            return Err(EnvelopeError::BadTxnid);
        }
        Ok(())
    }

    /// The version an answer carries: the request's when supported, else the first supported.
    pub fn answer_version<'a>(&'a self, requested: Option<&'a str>) -> &'a str {
        requested
            .filter(|v| self.versions.iter().any(|s| s == v))
            .or(self.versions.first().map(String::as_str))
            .unwrap_or(DEFAULT_VERSIONS[0])
    }
}

/// `8-4-4-4-12` hexadecimal digits.
pub fn is_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// A strict RFC 3339 date-time: `YYYY-MM-DDTHH:MM:SS`, an optional fraction, and `Z` or `±HH:MM`.
pub fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|s| s.iter().all(u8::is_ascii_digit))
    };
    let shape = digits(0..4)
        && bytes[4] == b'-'
        && digits(5..7)
        && bytes[7] == b'-'
        && digits(8..10)
        && matches!(bytes[10], b'T' | b't')
        && digits(11..13)
        && bytes[13] == b':'
        && digits(14..16)
        && bytes[16] == b':'
        && digits(17..19);
    if !shape {
        return None;
    }
    let mut at = 19;
    if bytes.get(at) == Some(&b'.') {
        let start = at + 1;
        at = start;
        while bytes.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start || at - start > 9 {
            return None;
        }
    }
    let (offset_secs, rest): (i64, &[u8]) = match bytes.get(at..)? {
        [b'Z' | b'z'] => (0, &[]),
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| -> Option<i64> {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| i64::from(a - b'0') * 10 + i64::from(b - b'0'))
            };
            let (hours, minutes) = (two(*h1, *h2)?, two(*m1, *m2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let secs = hours * 3600 + minutes * 60;
            (if *sign == b'+' { secs } else { -secs }, &[])
        }
        _ => return None,
    };
    if !rest.is_empty() {
        return None;
    }
    // The local part, as UTC, through humantime's checked parser (it validates the calendar).
    let local = format!("{}Z", std::str::from_utf8(&bytes[..at]).ok()?);
    let utc = humantime::parse_rfc3339(&local).ok()?;
    let shift = Duration::from_secs(offset_secs.unsigned_abs());
    if offset_secs >= 0 {
        utc.checked_sub(shift)
    } else {
        utc.checked_add(shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn body(ver: &str, timestamp: &str, txnid: &str) -> String {
        format!(r#"{{"ver":"{ver}","timestamp":"{timestamp}","txnid":"{txnid}"}}"#)
    }

    const UUID: &str = "0b811819-9044-4856-b0ee-8c88035f8858";

    #[test]
    fn the_envelope_of_the_suite() {
        let rules = EnvelopeRules::default();
        let now = humantime::format_rfc3339_millis(at(NOW)).to_string();
        assert_eq!(
            rules.check(body("2.0.0", &now, UUID).as_bytes(), at(NOW)),
            Ok(())
        );
        assert_eq!(
            rules.check(body("2.1.0", &now, UUID).as_bytes(), at(NOW)),
            Ok(())
        );
        assert!(matches!(
            rules.check(body("1.1.2", &now, UUID).as_bytes(), at(NOW)),
            Err(EnvelopeError::NoSuchVersion(_))
        ));
        for bad in [
            "Dec 06 2026 10:00:00",
            "26-12-06 10:00:00",
            "2027-01-15T08:00:00",
            "2027-01-15T08:00Z",
            "2027-01-15T08:00:00.000Zx",
            "2027-02-30T08:00:00Z",
        ] {
            assert_eq!(
                rules.check(body("2.0.0", bad, UUID).as_bytes(), at(NOW)),
                Err(EnvelopeError::BadTimestamp),
                "{bad}"
            );
        }
        // Exactly now ± 15 min is refused; inside the window is fine.
        for secs in [NOW - 900, NOW + 900, NOW + 3600] {
            let ts = humantime::format_rfc3339_millis(at(secs)).to_string();
            assert!(matches!(
                rules.check(body("2.0.0", &ts, UUID).as_bytes(), at(NOW)),
                Err(EnvelopeError::SkewedTimestamp(_))
            ));
        }
        let inside = humantime::format_rfc3339_millis(at(NOW - 600)).to_string();
        assert_eq!(
            rules.check(body("2.0.0", &inside, UUID).as_bytes(), at(NOW)),
            Ok(())
        );
        for bad in [&UUID[..35], &format!("{UUID}a")[..], "not-a-uuid"] {
            assert_eq!(
                rules.check(body("2.0.0", &now, bad).as_bytes(), at(NOW)),
                Err(EnvelopeError::BadTxnid),
                "{bad}"
            );
        }
        assert_eq!(
            rules.check(br#"{"ver":"2.0.0"}"#, at(NOW)),
            Err(EnvelopeError::Missing("timestamp"))
        );
    }

    #[test]
    fn offsets_are_honoured() {
        let utc = parse_timestamp("2027-01-15T08:00:00Z").unwrap();
        assert_eq!(parse_timestamp("2027-01-15T13:30:00+05:30"), Some(utc));
        assert_eq!(
            parse_timestamp("2027-01-15T08:00:00.123456789Z").map(|t| t > utc),
            Some(true)
        );
        assert_eq!(parse_timestamp("2027-01-15T08:00:00+24:00"), None);
    }
}
