//! Wall-clock conversion, formatting and parsing — the one place raw times from upstream become
//! [`SystemTime`]s.
//!
//! Every number and string the IAM sends for a time may be absurd, in another unit or missing, so each
//! conversion here is checked and returns `None` for anything outside [`EARLIEST`]..=[`latest()`], and each
//! formatter is total: it never panics, whatever time it is given. Wall-clock times are for display,
//! cross-checks and the secret's expiry: token lifetimes are measured on the monotonic clock.
//!
//! The IAM writes timestamps as RFC 3339 with 0 to 9 fractional digits (`2024-10-10T11:11:45.096203206Z`),
//! and some fields (`secret-expiry-ts`, `expirationDate`) as a local date-time with no zone at all.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The earliest time accepted from upstream: the Unix epoch. Anything before it is a bug or a unit error.
pub const EARLIEST: SystemTime = UNIX_EPOCH;
/// Seconds from the epoch to 9999-12-31T23:59:59Z, the last instant RFC 3339 can write.
const LATEST_UNIX_SECONDS: u64 = 253_402_300_799;

/// The latest time accepted from upstream: 9999-12-31T23:59:59Z.
pub fn latest() -> SystemTime {
    // 64-bit `SystemTime`s reach far beyond the year 9999 on every supported platform.
    UNIX_EPOCH + Duration::from_secs(LATEST_UNIX_SECONDS)
}

/// Epoch numbers below this magnitude are seconds, above it milliseconds. 10^11 seconds is the year
/// 5138; 10^11 milliseconds is March 1973. No real expiry falls in the gap, so the magnitude decides.
pub const SECONDS_OR_MILLIS_BOUNDARY: f64 = 1e11;

/// The offset the IAM's zoneless local date-times are read with where the earlier reading is the safe one:
/// India Standard Time, +05:30. Read as IST, a zoneless expiry is 5.5 hours *earlier* than read as UTC, so
/// whichever the IAM meant, the broker never believes a secret lives longer than it does.
pub const IST_OFFSET_SECONDS: i64 = 5 * 3600 + 30 * 60;

/// Clamps `t` into the range RFC 3339 can write, so formatting can never fail.
fn displayable(t: SystemTime) -> SystemTime {
    t.clamp(EARLIEST, latest())
}

/// `2026-11-23T17:12:05Z` (whole seconds, UTC). Total: times outside 1970..=9999 are clamped.
pub fn rfc3339_seconds(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(displayable(t)).to_string()
}

/// `2026-11-23T17:12:05.123456789Z` (nanoseconds, UTC), the IAM's envelope format. Total.
pub fn rfc3339_nanos(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(displayable(t)).to_string()
}

/// `2026-11-23T17:12:05.123456789` (nanoseconds, no zone), the format of the `secret-expiry-ts` claim.
pub fn local_datetime_nanos(t: SystemTime) -> String {
    let mut s = rfc3339_nanos(t);
    s.pop(); // the trailing `Z`
    s
}

/// `2026-11-23T17:12:05.123` (milliseconds, no zone), the format of `expirationDate`.
pub fn local_datetime_millis(t: SystemTime) -> String {
    let mut s = humantime::format_rfc3339_millis(displayable(t)).to_string();
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

/// Epoch seconds (JWT `exp`/`iat`) as a wall-clock time; `None` when not finite or outside the range.
pub fn from_unix_seconds(secs: f64) -> Option<SystemTime> {
    if !secs.is_finite() || secs < 0.0 || secs > LATEST_UNIX_SECONDS as f64 {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(secs).ok()?)
}

/// An epoch number whose unit is not certain (the IAM's `expiresOn`: milliseconds in most examples,
/// seconds in one), read as seconds below [`SECONDS_OR_MILLIS_BOUNDARY`] and as milliseconds above it.
pub fn from_unix_seconds_or_millis(value: f64) -> Option<SystemTime> {
    if !value.is_finite() {
        return None;
    }
    if value.abs() < SECONDS_OR_MILLIS_BOUNDARY {
        from_unix_seconds(value)
    } else if value.fract() == 0.0 && value > 0.0 && value <= LATEST_UNIX_SECONDS as f64 * 1000.0 {
        // Whole milliseconds (the usual case) convert exactly; `value / 1000.0` would not.
        UNIX_EPOCH.checked_add(Duration::from_millis(value as u64))
    } else {
        from_unix_seconds(value / 1000.0)
    }
}

/// What a timestamp without a zone is taken to mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zoneless {
    /// UTC, as the IAM's observed samples suggest.
    Utc,
    /// India Standard Time: the earlier of the two readings, for expiries (see [`IST_OFFSET_SECONDS`]).
    EarlierReading,
}

/// Parses `YYYY-MM-DD[T| ]HH:MM:SS[.f{1,9}][Z|z|±HH:MM|±HHMM]`, reading a missing zone as UTC.
pub fn parse_iam_timestamp(raw: &str) -> Option<SystemTime> {
    parse_with_zone(raw, Zoneless::Utc)
}

/// Parses a timestamp that says when something *expires*: a missing zone is read as IST, the earlier
/// reading, so that an ambiguous expiry can only make the broker act early, never late.
pub fn parse_iam_expiry(raw: &str) -> Option<SystemTime> {
    parse_with_zone(raw, Zoneless::EarlierReading)
}

fn parse_with_zone(raw: &str, zoneless: Zoneless) -> Option<SystemTime> {
    let s = raw.trim();
    // The date-time part is the first 19 characters plus any fraction; the zone is what follows.
    if s.len() < 19 || !s.is_ascii() {
        return None;
    }
    let fraction_digits = s[19..]
        .strip_prefix('.')
        .map(|f| f.bytes().take_while(u8::is_ascii_digit).count());
    if fraction_digits.is_some_and(|digits| !(1..=9).contains(&digits)) {
        return None;
    }
    let fraction_end = 19 + fraction_digits.map_or(0, |digits| 1 + digits);
    let (local, zone) = s.split_at(fraction_end);
    let offset_secs: i64 = match zone.as_bytes() {
        [] => match zoneless {
            Zoneless::Utc => 0,
            Zoneless::EarlierReading => IST_OFFSET_SECONDS,
        },
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] | [sign @ (b'+' | b'-'), h1, h2, m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let two = |a: u8, b: u8| i64::from(a - b'0') * 10 + i64::from(b - b'0');
            let (hours, minutes) = (two(*h1, *h2), two(*m1, *m2));
            if hours > 23 || minutes > 59 {
                return None;
            }
            let magnitude = hours * 3600 + minutes * 60;
            if *sign == b'+' { magnitude } else { -magnitude }
        }
        _ => return None,
    };
    // humantime checks the calendar (month lengths, leap years) and the 0–9 fractional digits; it wants
    // an upper-case `T` or a space between date and time.
    let mut local = local.to_string();
    if local.as_bytes().get(10) == Some(&b't') {
        local.replace_range(10..11, "T");
    }
    let as_utc = humantime::parse_rfc3339_weak(&local).ok()?;
    let shift = Duration::from_secs(offset_secs.unsigned_abs());
    let t = if offset_secs >= 0 {
        as_utc.checked_sub(shift)?
    } else {
        as_utc.checked_add(shift)?
    };
    (EARLIEST..=latest()).contains(&t).then_some(t)
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
            parse_iam_timestamp("2024-10-01t09:50:29z"),
            parse_iam_timestamp("2024-10-01T09:50:29Z")
        );
    }

    #[test]
    fn a_zoneless_expiry_is_read_as_the_earlier_instant() {
        let zoneless = "2024-10-01T15:20:29.102782479";
        let as_expiry = parse_iam_expiry(zoneless).unwrap();
        let as_utc = parse_iam_timestamp(zoneless).unwrap();
        assert_eq!(
            as_utc.duration_since(as_expiry).unwrap(),
            Duration::from_secs(IST_OFFSET_SECONDS as u64)
        );
        assert_eq!(
            as_expiry,
            parse_iam_timestamp("2024-10-01T15:20:29.102782479+05:30").unwrap()
        );
        // An explicit zone is always honoured.
        assert_eq!(
            parse_iam_expiry("2024-10-01T09:50:29Z"),
            parse_iam_timestamp("2024-10-01T09:50:29Z")
        );
    }

    #[test]
    fn rejects_garbage_and_times_outside_the_range_without_panicking() {
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
            "1969-12-31T00:00:00",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:00:00+00:01",
            "9999-12-31T23:59:59-00:01",
        ] {
            assert!(parse_iam_timestamp(bad).is_none(), "{bad}");
            assert!(parse_iam_expiry(bad).is_none(), "{bad}");
        }
        assert!(parse_iam_timestamp("2024-02-29T00:00:00Z").is_some());
        assert_eq!(parse_iam_timestamp("1970-01-01T00:00:00Z"), Some(EARLIEST));
        assert_eq!(parse_iam_timestamp("9999-12-31T23:59:59Z"), Some(latest()));
    }

    #[test]
    fn epoch_numbers_are_checked_and_their_unit_follows_their_magnitude() {
        let expected = UNIX_EPOCH + Duration::from_secs(1_725_010_763);
        assert_eq!(from_unix_seconds_or_millis(1_725_010_763.0), Some(expected));
        assert_eq!(
            from_unix_seconds_or_millis(1_725_010_763_000.0),
            Some(expected)
        );
        assert_eq!(
            from_unix_seconds_or_millis(1_733_226_041_466.0),
            Some(UNIX_EPOCH + Duration::from_millis(1_733_226_041_466))
        );
        for absurd in [
            -1000.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e300,
            -1e300,
            u64::MAX as f64,
            i64::MIN as f64,
        ] {
            assert_eq!(from_unix_seconds_or_millis(absurd), None, "{absurd}");
            assert_eq!(from_unix_seconds(absurd), None, "{absurd}");
        }
        assert_eq!(from_unix_seconds(0.0), Some(EARLIEST));
    }

    #[test]
    fn formatters_are_total() {
        let before_epoch = UNIX_EPOCH - Duration::from_secs(86_400);
        assert_eq!(rfc3339_seconds(before_epoch), "1970-01-01T00:00:00Z");
        let far = latest() + Duration::from_secs(1_000_000_000);
        assert_eq!(rfc3339_seconds(far), "9999-12-31T23:59:59Z");
        assert_eq!(local_datetime_millis(far), "9999-12-31T23:59:59.000");
        assert_eq!(
            local_datetime_nanos(before_epoch),
            "1970-01-01T00:00:00.000000000"
        );
    }

    #[test]
    fn formats_round_trip() {
        let t = UNIX_EPOCH + Duration::new(1_728_558_705, 96_203_206);
        assert_eq!(rfc3339_nanos(t), "2024-10-10T11:11:45.096203206Z");
        assert_eq!(local_datetime_nanos(t), "2024-10-10T11:11:45.096203206");
        assert_eq!(local_datetime_millis(t), "2024-10-10T11:11:45.096");
        assert_eq!(rfc3339_seconds(t), "2024-10-10T11:11:45Z");
        assert_eq!(parse_iam_timestamp(&rfc3339_nanos(t)), Some(t));
    }
}
