//! Timestamp formats used on the wire.

use std::fmt::Write as _;

use chrono::{DateTime, Datelike, NaiveDateTime, Timelike, Utc};

/// RFC 3339 in UTC ending in `Z`, sub-second digits kept with trailing zeros trimmed
/// (`2019-02-01T22:46:01.875Z`, `2019-02-01T22:46:01Z`), as decision P1 specifies.
pub fn format_utc(time: DateTime<Utc>) -> String {
    let mut out = String::with_capacity(30);
    write_utc(time, &mut out);
    out
}

/// Appends [`format_utc`]'s form of `time` to `out`.
pub fn write_utc(time: DateTime<Utc>, out: &mut String) {
    let time = time.naive_utc();
    write_seconds(time, out);
    let mut nanos = time.nanosecond() % 1_000_000_000;
    if nanos != 0 {
        let mut width = 9;
        while nanos.is_multiple_of(10) {
            nanos /= 10;
            width -= 1;
        }
        out.push('.');
        write_digits(out, nanos, width);
    }
    out.push('Z');
}

/// .NET's round-trip format `"o"` for a UTC `DateTime`: always seven fraction digits
/// (`2019-01-01T00:59:59.9999999Z`).
pub fn format_round_trip(time: DateTime<Utc>) -> String {
    let mut out = String::with_capacity(28);
    let time = time.naive_utc();
    write_seconds(time, &mut out);
    let ticks = (time.nanosecond() % 1_000_000_000) / 100;
    let _ = write!(out, ".{ticks:07}Z");
    out
}

/// Appends the last `width` decimal digits of `value`, zero-padded.
fn write_digits(out: &mut String, value: u32, width: u32) {
    for position in (0..width).rev() {
        out.push(char::from(b'0' + ((value / 10u32.pow(position)) % 10) as u8));
    }
}

/// `yyyy-MM-ddTHH:mm:ss`, digit by digit: this runs for every Measurement written.
fn write_seconds(time: NaiveDateTime, out: &mut String) {
    let year = time.year();
    if (0..=9999).contains(&year) {
        write_digits(out, year as u32, 4);
    } else {
        let _ = write!(out, "{year:04}");
    }
    out.push('-');
    write_digits(out, time.month(), 2);
    out.push('-');
    write_digits(out, time.day(), 2);
    out.push('T');
    write_digits(out, time.hour(), 2);
    out.push(':');
    write_digits(out, time.minute(), 2);
    out.push(':');
    write_digits(out, time.second(), 2);
}

/// Reads an RFC 3339 / ISO 8601 timestamp; one without an offset is UTC (decision P1). Only
/// years 1 to 9999 (in UTC) are accepted, the range of .NET's `DateTime` and FHIR's `dateTime`.
pub fn parse_utc_lenient(text: &str) -> Option<DateTime<Utc>> {
    parse_any_year(text).filter(|time| (1..=9999).contains(&time.year()))
}

fn parse_any_year(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(time.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z"] {
        if let Ok(time) = DateTime::parse_from_str(text, format) {
            return Some(time.with_timezone(&Utc));
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(time) = NaiveDateTime::parse_from_str(text, format) {
            return Some(time.and_utc());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        parse_utc_lenient(text).unwrap()
    }

    #[test]
    fn formats_trimmed_rfc3339() {
        assert_eq!(
            format_utc(utc("2019-02-01T22:46:01.8750000Z")),
            "2019-02-01T22:46:01.875Z"
        );
        assert_eq!(format_utc(utc("2019-02-01T22:46:01Z")), "2019-02-01T22:46:01Z");
        assert_eq!(
            format_utc(utc("2019-02-01T22:46:01.1234567Z")),
            "2019-02-01T22:46:01.1234567Z"
        );
    }

    #[test]
    fn formats_round_trip_with_seven_digits() {
        assert_eq!(
            format_round_trip(utc("2019-01-01T00:00:00Z")),
            "2019-01-01T00:00:00.0000000Z"
        );
        assert_eq!(
            format_round_trip(utc("2019-01-01T00:59:59.9999999Z")),
            "2019-01-01T00:59:59.9999999Z"
        );
    }

    #[test]
    fn reads_offsets_and_offsetless_times_as_utc() {
        assert_eq!(
            format_utc(utc("2023-03-13T22:46:01.8750000")),
            "2023-03-13T22:46:01.875Z"
        );
        assert_eq!(format_utc(utc("2023-03-13T22:46:01+02:00")), "2023-03-13T20:46:01Z");
        assert_eq!(format_utc(utc("2023-03-13 22:46:01")), "2023-03-13T22:46:01Z");
        assert!(parse_utc_lenient("yesterday").is_none());
    }

    #[test]
    fn accepts_only_years_1_to_9999() {
        assert_eq!(format_utc(utc("9999-12-31T23:59:59Z")), "9999-12-31T23:59:59Z");
        assert_eq!(format_utc(utc("0001-01-01T00:00:00Z")), "0001-01-01T00:00:00Z");
        assert!(parse_utc_lenient("0000-12-31T23:00:00Z").is_none());
        assert!(parse_utc_lenient("0001-01-01T00:00:00+01:00").is_none());
        assert!(parse_utc_lenient("+10000-01-01T00:00:00Z").is_none());
        assert!(parse_utc_lenient("9999-12-31T23:00:00-02:00").is_none());
    }
}
