//! Timestamp formats used on the wire.

use chrono::{DateTime, Datelike, NaiveDateTime, Timelike, Utc};

/// RFC 3339 in UTC ending in `Z`, sub-second digits kept with trailing zeros trimmed
/// (`2019-02-01T22:46:01.875Z`, `2019-02-01T22:46:01Z`), as decision P1 specifies.
pub fn format_utc(time: DateTime<Utc>) -> String {
    utc_timestamp(time).as_str().to_string()
}

fn utc_timestamp(time: DateTime<Utc>) -> Timestamp {
    let time = time.naive_utc();
    let mut text = Timestamp::new(time);
    let mut nanos = time.nanosecond() % 1_000_000_000;
    if nanos != 0 {
        let mut width = 9;
        while nanos.is_multiple_of(10) {
            nanos /= 10;
            width -= 1;
        }
        text.push(b'.');
        text.push_digits(nanos, width);
    }
    text.push(b'Z');
    text
}

/// The last time written in [`format_utc`]'s form and its text, reused while the same time
/// comes again.
#[derive(Default)]
pub(crate) struct LastTimestamp(Option<(DateTime<Utc>, compact_str::CompactString)>);

impl LastTimestamp {
    /// Appends [`format_utc`]'s form of `time` to `out`.
    pub(crate) fn write(&mut self, time: DateTime<Utc>, out: &mut String) {
        match &self.0 {
            Some((last, text)) if *last == time => out.push_str(text),
            _ => {
                let text = utc_text(time);
                out.push_str(&text);
                self.0 = Some((time, text));
            }
        }
    }
}

/// [`format_utc`]'s form of `time`, stored inline.
pub(crate) fn utc_text(time: DateTime<Utc>) -> compact_str::CompactString {
    utc_timestamp(time).as_str().into()
}

/// .NET's round-trip format `"o"` for a UTC `DateTime`: always seven fraction digits
/// (`2019-01-01T00:59:59.9999999Z`).
pub fn format_round_trip(time: DateTime<Utc>) -> String {
    let time = time.naive_utc();
    let mut text = Timestamp::new(time);
    text.push(b'.');
    text.push_digits((time.nanosecond() % 1_000_000_000) / 100, 7);
    text.push(b'Z');
    text.as_str().to_string()
}

/// The two decimal digits of `value` (below 100).
fn two_digits(value: u32) -> [u8; 2] {
    [b'0' + (value / 10) as u8, b'0' + (value % 10) as u8]
}

/// A timestamp's text built on the stack: this runs twice for every Measurement written.
struct Timestamp {
    bytes: [u8; 40],
    len: usize,
}

impl Timestamp {
    /// `yyyy-MM-ddTHH:mm:ss` (years beyond four digits keep all of them).
    fn new(time: NaiveDateTime) -> Self {
        let mut text = Timestamp { bytes: [0; 40], len: 0 };
        let (year, month, day) = (i64::from(time.year()), time.month(), time.day());
        let of_day = time.num_seconds_from_midnight();
        match year {
            0..=9999 => {
                let year = year as u32;
                text.bytes[..2].copy_from_slice(&two_digits(year / 100));
                text.bytes[2..4].copy_from_slice(&two_digits(year % 100));
                text.len = 4;
            }
            year => format!("{year:04}").bytes().for_each(|byte| text.push(byte)),
        }
        let [m1, m2] = two_digits(month);
        let [d1, d2] = two_digits(day);
        let [h1, h2] = two_digits(of_day / 3600);
        let [i1, i2] = two_digits(of_day / 60 % 60);
        let [s1, s2] = two_digits(of_day % 60);
        let rest = [b'-', m1, m2, b'-', d1, d2, b'T', h1, h2, b':', i1, i2, b':', s1, s2];
        text.bytes[text.len..text.len + rest.len()].copy_from_slice(&rest);
        text.len += rest.len();
        text
    }

    fn push(&mut self, byte: u8) {
        self.bytes[self.len] = byte;
        self.len += 1;
    }

    /// The last `width` decimal digits of `value`, zero-padded.
    fn push_digits(&mut self, mut value: u32, width: usize) {
        for digit in self.bytes[self.len..self.len + width].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
        self.len += width;
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).expect("ASCII digits")
    }
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

    /// The digit-by-digit writer agrees with chrono's formatting over years 1 to 9999 and every
    /// fraction length.
    #[test]
    fn formats_like_chrono() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let earliest = utc("0001-01-01T00:00:00Z").timestamp();
        let latest = utc("9999-12-31T23:59:59Z").timestamp();
        for index in 0..20_000u32 {
            crate::test_support::xorshift(&mut state);
            let seconds = earliest + (state % (latest - earliest) as u64) as i64;
            let nanos = (state >> 20) as u32 % 1_000_000_000 / 10u32.pow(index % 10);
            let time = DateTime::from_timestamp(seconds, nanos).unwrap();
            let fraction = format!(".{nanos:09}");
            let fraction = fraction.trim_end_matches('0').trim_end_matches('.');
            let expected = format!("{}{fraction}Z", time.format("%Y-%m-%dT%H:%M:%S"));
            assert_eq!(format_utc(time), expected);
        }
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
