//! Wall-clock formatting and parsing.
//!
//! The IAM writes timestamps as RFC 3339 with 0 to 9 fractional digits (`2024-10-10T11:11:45.096203206Z`),
//! and some fields (`secret-expiry-ts`, `expirationDate`) as a local date-time with no zone at all. This
//! module owns the one lenient parser for all of them, so no other module guesses at formats. Wall-clock
//! times are for display and cross-checks only: token lifetimes are measured on the monotonic clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `2026-11-23T17:12:05Z` (whole seconds, UTC).
pub fn rfc3339_seconds(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `2026-11-23T17:12:05.123456789Z` (nanoseconds, UTC), the IAM's envelope format.
pub fn rfc3339_nanos(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

/// `2026-11-23T17:12:05.123456789` (nanoseconds, no zone), the format of the `secret-expiry-ts` claim.
pub fn local_datetime_nanos(t: SystemTime) -> String {
    let mut s = rfc3339_nanos(t);
    s.pop(); // the trailing `Z`
    s
}

/// `2026-11-23T17:12:05.123` (milliseconds, no zone), the format of `expirationDate`.
pub fn local_datetime_millis(t: SystemTime) -> String {
    let mut s = humantime::format_rfc3339_millis(t).to_string();
    s.pop();
    s
}

/// Seconds since the Unix epoch, negative before it.
pub fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Converts epoch milliseconds (the IAM's `expiresOn`) to a wall-clock time.
pub fn from_unix_millis(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// Converts epoch seconds (JWT `exp`/`iat`) to a wall-clock time.
pub fn from_unix_seconds(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Parses `YYYY-MM-DD[T| ]HH:MM:SS[.f{1,9}][Z|z|±HH:MM|±HHMM]`. A missing zone is read as UTC, which is
/// what the IAM's zoneless fields have been observed to mean; callers treat those as hints only.
pub fn parse_iam_timestamp(raw: &str) -> Option<SystemTime> {
    let s = raw.trim().as_bytes();
    if s.len() < 19 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if s[4] != b'-'
        || s[7] != b'-'
        || !matches!(s[10], b'T' | b't' | b' ')
        || s[13] != b':'
        || s[16] != b':'
    {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos: u32 = 0;
    if let Some(frac) = rest.strip_prefix(b".") {
        let digits = frac.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        for (i, d) in frac[..digits].iter().enumerate() {
            nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
        }
        rest = &frac[digits..];
    }
    let offset_secs: i64 = match rest {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] | [sign @ (b'+' | b'-'), h1, h2, m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let v = |a: u8, b: u8| i64::from(a - b'0') * 10 + i64::from(b - b'0');
            let (oh, om) = (v(digits[0], digits[1]), v(digits[2], digits[3]));
            if oh > 23 || om > 59 {
                return None;
            }
            let magnitude = oh * 3600 + om * 60;
            if *sign == b'+' { magnitude } else { -magnitude }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_secs;
    Some(from_unix_seconds(secs) + Duration::from_nanos(u64::from(nanos)))
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(year) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(t: SystemTime) -> f64 {
        unix_seconds(t)
    }

    #[test]
    fn parses_zero_to_nine_fractional_digits() {
        let base = 1_728_558_705.0; // 2024-10-10T11:11:45Z
        assert_eq!(
            secs(parse_iam_timestamp("2024-10-10T11:11:45Z").unwrap()),
            base
        );
        assert_eq!(
            secs(parse_iam_timestamp("2024-10-10T11:11:45.5Z").unwrap()),
            base + 0.5
        );
        let nine = parse_iam_timestamp("2024-10-10T11:11:45.096203206Z").unwrap();
        assert_eq!(
            nine.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_728_558_705, 96_203_206)
        );
        assert!(parse_iam_timestamp("2024-10-10T11:11:45.0962032061Z").is_none());
        assert!(parse_iam_timestamp("2024-10-10T11:11:45.Z").is_none());
    }

    #[test]
    fn parses_zoneless_and_offsets() {
        let utc = parse_iam_timestamp("2024-10-01T09:50:29.102782479").unwrap();
        assert_eq!(secs(utc).floor(), 1_727_776_229.0);
        let ist = parse_iam_timestamp("2024-10-01T15:20:29.102782479+05:30").unwrap();
        assert_eq!(utc, ist);
        assert_eq!(
            parse_iam_timestamp("2024-10-01 15:20:29+0530")
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            1_727_776_229
        );
        assert_eq!(
            secs(parse_iam_timestamp("1969-12-31T23:59:59Z").unwrap()),
            -1.0
        );
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in [
            "",
            "2024",
            "2024-13-01T00:00:00Z",
            "2024-02-30T00:00:00Z",
            "2024-10-10X11:11:45Z",
            "2024-10-10T25:00:00Z",
            "2024-10-10T11:11:45+5:30",
            "2024-10-10T11:11:45ZZ",
            "２０２４-10-10T11:11:45Z",
            "2024-10-10T11:11:4５Z",
            "+024-10-10T11:11:45Z",
        ] {
            assert!(parse_iam_timestamp(bad).is_none(), "{bad}");
        }
        assert!(parse_iam_timestamp("2024-02-29T00:00:00Z").is_some());
    }

    #[test]
    fn formats_round_trip() {
        let t = UNIX_EPOCH + Duration::new(1_728_558_705, 96_203_206);
        assert_eq!(rfc3339_nanos(t), "2024-10-10T11:11:45.096203206Z");
        assert_eq!(local_datetime_nanos(t), "2024-10-10T11:11:45.096203206");
        assert_eq!(local_datetime_millis(t), "2024-10-10T11:11:45.096");
        assert_eq!(rfc3339_seconds(t), "2024-10-10T11:11:45Z");
        assert_eq!(parse_iam_timestamp(&rfc3339_nanos(t)), Some(t));
        assert_eq!(
            from_unix_millis(1_733_226_041_466),
            UNIX_EPOCH + Duration::from_millis(1_733_226_041_466)
        );
    }
}
