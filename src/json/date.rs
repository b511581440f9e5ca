//! Json.NET's date detection (`DateParseHandling.DateTime`, `DateTimeZoneHandling.RoundtripKind`).
//!
//! While reading, Json.NET turns a string into a date token when it is an ISO 8601 date-time of the
//! form `yyyy-MM-ddTHH:mm:ss[.fffffff][Z|±hh[:mm]]` (19 to 40 characters) or `/Date(ms[±hhmm])/`.
//! The parser below ports `DateTimeParser` rule for rule, including its quirks. Times with an offset
//! are converted to the host's local time by .NET; the original ran in UTC containers, and decision
//! P1 makes that explicit: they become UTC here.

use super::JString;
use std::borrow::Cow;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeDelta, Utc};

/// .NET ticks (100 ns) per second.
pub const TICKS_PER_SECOND: i64 = 10_000_000;
pub(crate) const TICKS_PER_MINUTE: i64 = 60 * TICKS_PER_SECOND;
pub(crate) const TICKS_PER_HOUR: i64 = 60 * TICKS_PER_MINUTE;
pub(crate) const TICKS_PER_DAY: i64 = 24 * TICKS_PER_HOUR;
/// `DateTime.MaxValue.Ticks` (9999-12-31T23:59:59.9999999).
pub(crate) const MAX_TICKS: i64 = 3_155_378_975_999_999_999;
/// Ticks of 1970-01-01T00:00:00.
const UNIX_EPOCH_TICKS: i64 = 621_355_968_000_000_000;

/// How a date token's clock time is to be read (.NET `DateTimeKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateKind {
    /// Written with `Z`, or a `/Date(ms)/` without offset.
    Utc,
    /// Written with an offset and converted to the host's time (UTC here).
    Local,
    /// Written without any zone; read as UTC (decision P1).
    Unspecified,
}

/// A date token: a .NET `DateTime` (ticks since 0001-01-01, kind) plus the text it was read from.
#[derive(Debug, Clone)]
pub struct JsonDate {
    ticks: i64,
    kind: DateKind,
    /// The text read; `None` for a date made from Unix time, whose text is its ISO UTC form,
    /// written only when asked for (such dates mostly become a Measurement's time directly).
    source: Option<JString>,
}

impl PartialEq for JsonDate {
    fn eq(&self, other: &Self) -> bool {
        self.ticks == other.ticks && self.kind == other.kind && self.source() == other.source()
    }
}

impl JsonDate {
    /// Reads `text` as Json.NET's reader would; `None` when it stays a plain string.
    pub fn detect(text: &str) -> Option<JsonDate> {
        let bytes = text.as_bytes();
        let (ticks, kind) = if bytes.first() == Some(&b'/') {
            parse_microsoft(text)?
        } else if bytes.len() >= 19
            && bytes[0].is_ascii_digit()
            && bytes[10] == b'T'
            // Counting bytes is counting characters here: an ISO date is ASCII throughout.
            && bytes.len() <= 40
        {
            parse_iso(bytes)?
        } else {
            return None;
        };
        Some(JsonDate::new(ticks, kind, text))
    }

    /// A UTC date at `ticks`, as produced by `fromUnixTimestamp`.
    pub fn from_unix_millis(millis: i64) -> Option<JsonDate> {
        let ticks = millis
            .checked_mul(10_000)?
            .checked_add(UNIX_EPOCH_TICKS)
            .filter(|t| (0..=MAX_TICKS).contains(t))?;
        Some(JsonDate {
            ticks,
            kind: DateKind::Utc,
            source: None,
        })
    }

    /// A date from .NET ticks; `source` is the text it was read from.
    pub(crate) fn new(ticks: i64, kind: DateKind, source: &str) -> JsonDate {
        JsonDate {
            ticks,
            kind,
            source: Some(source.into()),
        }
    }

    /// .NET ticks (100 ns units since 0001-01-01) of the clock time, UTC for zoned dates.
    pub fn ticks(&self) -> i64 {
        self.ticks
    }

    /// The text this date was read from; for a date from Unix time, its ISO UTC form.
    pub fn source(&self) -> Cow<'_, str> {
        match &self.source {
            Some(text) => Cow::Borrowed(text),
            None => Cow::Owned(crate::model::time::format_utc(self.to_utc())),
        }
    }

    /// The .NET kind of the date.
    pub fn kind(&self) -> DateKind {
        self.kind
    }

    /// The instant in UTC (unspecified dates are read as UTC).
    pub fn to_utc(&self) -> DateTime<Utc> {
        ticks_to_utc(self.ticks)
    }

    /// `DateTime.ToString(CultureInfo.InvariantCulture)`: `MM/dd/yyyy HH:mm:ss`, no fraction.
    pub fn to_general_string(&self) -> String {
        self.to_utc().format("%m/%d/%Y %H:%M:%S").to_string()
    }
}

/// Converts .NET ticks to a UTC instant.
pub(crate) fn ticks_to_utc(ticks: i64) -> DateTime<Utc> {
    if (0..=MAX_TICKS).contains(&ticks) {
        let unix = ticks - UNIX_EPOCH_TICKS;
        let seconds = unix.div_euclid(TICKS_PER_SECOND);
        let nanos = (unix.rem_euclid(TICKS_PER_SECOND) * 100) as u32;
        if let Some(time) = DateTime::from_timestamp(seconds, nanos) {
            return time;
        }
    }
    let days = ticks.div_euclid(TICKS_PER_DAY);
    let rest = ticks.rem_euclid(TICKS_PER_DAY);
    let date = i32::try_from(days + 1)
        .ok()
        .and_then(NaiveDate::from_num_days_from_ce_opt)
        .unwrap_or(NaiveDate::MIN);
    let time = NaiveDateTime::from(date) + TimeDelta::nanoseconds(rest * 100);
    time.and_utc()
}

/// Ticks of a calendar date-time, or `None` when the date does not exist or its year is outside
/// .NET's 1 to 9999.
pub(crate) fn civil_ticks(year: i32, month: u32, day: u32, hour: u32, minute: u32, second: u32) -> Option<i64> {
    if !is_calendar_date(year, month, day) {
        return None;
    }
    Some(
        days_since_year_one(year, month, day) * TICKS_PER_DAY
            + i64::from(hour) * TICKS_PER_HOUR
            + i64::from(minute) * TICKS_PER_MINUTE
            + i64::from(second) * TICKS_PER_SECOND,
    )
}

/// True for an existing proleptic Gregorian date of years 1 to 9999.
fn is_calendar_date(year: i32, month: u32, day: u32) -> bool {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=9999).contains(&year) && (1..=days_in_month).contains(&day)
}

/// Days from 0001-01-01 to a valid date (Howard Hinnant's `days_from_civil`, which counts from
/// 1970-01-01, shifted by the 719,162 days between the two).
fn days_since_year_one(year: i32, month: u32, day: u32) -> i64 {
    let (month, day) = (i64::from(month), i64::from(day));
    let year = i64::from(year) - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468 + 719_162
}

/// `/Date(ms)/` or `/Date(ms±hhmm)/`: the offset only marks the date local; the instant is `ms`.
fn parse_microsoft(text: &str) -> Option<(i64, DateKind)> {
    let inner = text.strip_prefix("/Date(")?.strip_suffix(")/")?;
    if text.len() < 9 {
        return None;
    }
    // Json.NET searches for the offset sign from the second character on, so a leading '-' is the
    // number's sign.
    let sign_at = inner
        .get(1..)
        .and_then(|rest| rest.find('+').or_else(|| rest.find('-')))
        .map(|i| i + 1);
    let (digits, kind) = match sign_at {
        Some(at) => {
            let offset = &inner[at + 1..];
            let hours_ok = offset.get(..2).is_some_and(|h| h.bytes().all(|b| b.is_ascii_digit()));
            let minutes_ok =
                offset.len() <= 2 || offset.get(2..4).is_some_and(|m| m.bytes().all(|b| b.is_ascii_digit()));
            if !hours_ok || !minutes_ok {
                return None;
            }
            (&inner[..at], DateKind::Local)
        }
        None => (inner, DateKind::Utc),
    };
    let millis: i64 = digits.parse().ok()?;
    let date = JsonDate::from_unix_millis(millis)?;
    Some((date.ticks, kind))
}

/// Port of Json.NET's `DateTimeParser` plus the zone handling of `TryParseDateTimeIso`.
fn parse_iso(text: &[u8]) -> Option<(i64, DateKind)> {
    let end = text.len();
    let digit = |i: usize| -> Option<u32> {
        text.get(i)
            .filter(|b| b.is_ascii_digit() && i < end)
            .map(|b| u32::from(b - b'0'))
    };
    let two = |i: usize| -> Option<u32> { Some(digit(i)? * 10 + digit(i + 1)?) };
    let is = |i: usize, c: u8| text.get(i) == Some(&c);

    let year = two(0)? * 100 + two(2)?;
    if year < 1 || !is(4, b'-') {
        return None;
    }
    let month = two(5)?;
    if !(1..=12).contains(&month) || !is(7, b'-') {
        return None;
    }
    let day = two(8)?;
    if !is_calendar_date(year as i32, month, day) || !is(10, b'T') {
        return None;
    }
    let hour = two(11)?;
    if hour > 24 || !is(13, b':') {
        return None;
    }
    let minute = two(14)?;
    if minute >= 60 || !is(16, b':') {
        return None;
    }
    let second = two(17)?;
    if second >= 60 || (hour == 24 && (minute != 0 || second != 0)) {
        return None;
    }
    let mut pos = 19;
    let mut fraction: i64 = 0;
    if is(pos, b'.') {
        let mut digits = 0;
        loop {
            pos += 1;
            if pos >= end || digits >= 7 {
                break;
            }
            match digit(pos) {
                Some(d) => {
                    fraction = fraction * 10 + i64::from(d);
                    digits += 1;
                }
                None => break,
            }
        }
        if digits < 7 {
            if digits == 0 {
                return None;
            }
            fraction *= 10_i64.pow(7 - digits);
        }
        if hour == 24 && fraction != 0 {
            return None;
        }
    }

    // ParseZone, quirks included: an unsigned two-digit tail is consumed as "zone minutes".
    let mut zone: Option<i64> = None; // +1 east of UTC, -1 west
    let mut zone_utc = false;
    let (mut zone_hour, mut zone_minute) = (0_i64, 0_i64);
    if pos < end {
        let ch = text[pos];
        if ch == b'z' || ch == b'Z' {
            zone_utc = true;
            pos += 1;
        } else {
            if pos + 2 < end
                && let Some(hours) = two(pos + 1)
            {
                zone_hour = i64::from(hours);
                match ch {
                    b'-' => {
                        zone = Some(-1);
                        pos += 3;
                    }
                    b'+' => {
                        zone = Some(1);
                        pos += 3;
                    }
                    _ => {}
                }
            }
            if pos < end {
                if is(pos, b':') {
                    pos += 1;
                }
                if pos + 1 < end
                    && let Some(minutes) = two(pos)
                {
                    zone_minute = i64::from(minutes);
                    pos += 2;
                }
            }
        }
    }
    if pos != end {
        return None;
    }

    let (hour, add_day) = if hour == 24 { (0, true) } else { (hour, false) };
    let mut ticks = civil_ticks(year as i32, month, day, hour, minute, second)? + fraction;
    if add_day {
        ticks += TICKS_PER_DAY;
        if ticks > MAX_TICKS {
            return None;
        }
    }
    let kind = if zone_utc {
        DateKind::Utc
    } else if let Some(sign) = zone {
        let offset = zone_hour * TICKS_PER_HOUR + zone_minute * TICKS_PER_MINUTE;
        ticks = (ticks - sign * offset).clamp(0, MAX_TICKS);
        DateKind::Local
    } else {
        DateKind::Unspecified
    };
    Some((ticks, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ticks convert through Unix time as they do through the proleptic calendar.
    #[test]
    fn ticks_convert_like_calendar_days() {
        let mut state: u64 = 0x243f_6a88_85a3_08d3;
        for ticks in (0..20_000)
            .map(|_| {
                crate::test_support::xorshift(&mut state);
                (state % (MAX_TICKS as u64 + 1)) as i64
            })
            .chain([0, MAX_TICKS, UNIX_EPOCH_TICKS, UNIX_EPOCH_TICKS - 1])
        {
            let days = ticks.div_euclid(TICKS_PER_DAY);
            let date = NaiveDate::from_num_days_from_ce_opt(i32::try_from(days + 1).unwrap()).unwrap();
            let expected =
                (NaiveDateTime::from(date) + TimeDelta::nanoseconds(ticks.rem_euclid(TICKS_PER_DAY) * 100)).and_utc();
            assert_eq!(ticks_to_utc(ticks), expected, "{ticks}");
        }
    }

    /// The calendar arithmetic agrees with chrono's on every month of every year .NET allows,
    /// including the days that do not exist.
    #[test]
    fn civil_ticks_agree_with_the_proleptic_calendar() {
        for year in (-1..=10_000).filter(|y| y % 4 == 0 || y % 97 == 1 || (-1..=2).contains(y) || *y >= 9998) {
            for month in 0..=13 {
                for day in 0..=32 {
                    let expected = NaiveDate::from_ymd_opt(year, month, day)
                        .filter(|_| (1..=9999).contains(&year))
                        .map(|date| {
                            (i64::from(chrono::Datelike::num_days_from_ce(&date)) - 1) * TICKS_PER_DAY
                                + 13 * TICKS_PER_HOUR
                                + 7 * TICKS_PER_MINUTE
                                + 59 * TICKS_PER_SECOND
                        });
                    assert_eq!(
                        civil_ticks(year, month, day, 13, 7, 59),
                        expected,
                        "{year}-{month}-{day}"
                    );
                }
            }
        }
    }

    fn iso(text: &str) -> Option<String> {
        JsonDate::detect(text).map(|d| format!("{:?} {}", d.kind(), crate::model::format_utc(d.to_utc())))
    }

    #[test]
    fn detects_iso_dates_like_json_net() {
        assert_eq!(iso("2019-02-01T22:46:01Z").unwrap(), "Utc 2019-02-01T22:46:01Z");
        assert_eq!(iso("2019-02-01T22:46:01z").unwrap(), "Utc 2019-02-01T22:46:01Z");
        assert_eq!(
            iso("2019-02-01T22:46:01.875").unwrap(),
            "Unspecified 2019-02-01T22:46:01.875Z"
        );
        assert_eq!(iso("2023-10-09T19:18:23+00:00").unwrap(), "Local 2023-10-09T19:18:23Z");
        assert_eq!(iso("2019-02-01T22:46:01+05:30").unwrap(), "Local 2019-02-01T17:16:01Z");
        assert_eq!(iso("2019-02-01T22:46:01-0130").unwrap(), "Local 2019-02-02T00:16:01Z");
        assert_eq!(iso("2019-02-01T22:46:01+05").unwrap(), "Local 2019-02-01T17:46:01Z");
        assert_eq!(iso("2019-02-01T24:00:00").unwrap(), "Unspecified 2019-02-02T00:00:00Z");
        assert_eq!(
            iso("2019-02-01T22:46:01.1234567Z").unwrap(),
            "Utc 2019-02-01T22:46:01.1234567Z"
        );
        // Seven fraction digits, then two digits read as zone minutes without a zone.
        assert_eq!(
            iso("2019-02-01T22:46:01.123456789").unwrap(),
            "Unspecified 2019-02-01T22:46:01.1234567Z"
        );
    }

    #[test]
    fn leaves_other_strings_alone() {
        for text in [
            "2019-02-01 22:46:01",
            "2019-02-01",
            "2019-02-30T10:00:00",
            "2019-13-01T10:00:00",
            "2019-02-01T24:00:01",
            "2019-02-01T22:60:01",
            "2019-02-01T22:46:01.",
            "2019-02-01T22:46:01.12345678",
            "2019-02-01T22:46:01 ",
            "0000-02-01T22:46:01",
            "2019-02-01T22:46:01Zx",
            "heartrate",
            "/Date(abc)/",
        ] {
            assert!(JsonDate::detect(text).is_none(), "{text}");
        }
    }

    #[test]
    fn detects_microsoft_dates() {
        assert_eq!(iso("/Date(0)/").unwrap(), "Utc 1970-01-01T00:00:00Z");
        assert_eq!(iso("/Date(1625677200000)/").unwrap(), "Utc 2021-07-07T17:00:00Z");
        assert_eq!(iso("/Date(-1000)/").unwrap(), "Utc 1969-12-31T23:59:59Z");
        assert_eq!(iso("/Date(1625677200000+0500)/").unwrap(), "Local 2021-07-07T17:00:00Z");
    }

    /// A date from Unix time reads back as its ISO UTC text, and equals the date parsed from it.
    #[test]
    fn unix_dates_have_iso_source_text() {
        let date = JsonDate::from_unix_millis(1_626_799_080_123).unwrap();
        assert_eq!(date.source(), "2021-07-20T16:38:00.123Z");
        let unread = JsonDate::from_unix_millis(1_626_799_080_123).unwrap();
        assert_eq!(unread, JsonDate::detect("2021-07-20T16:38:00.123Z").unwrap());
        assert_ne!(unread, JsonDate::detect("2021-07-20T16:38:00.1230Z").unwrap());
    }

    #[test]
    fn formats_general_invariant_pattern() {
        let date = JsonDate::detect("2019-02-01T22:46:01.875Z").unwrap();
        assert_eq!(date.to_general_string(), "02/01/2019 22:46:01");
        let date = JsonDate::from_unix_millis(1_625_677_200_000).unwrap();
        assert_eq!(date.to_general_string(), "07/07/2021 17:00:00");
    }
}
