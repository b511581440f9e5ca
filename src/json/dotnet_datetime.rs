//! `DateTime.Parse(text, CultureInfo.InvariantCulture)`: how the original read timestamp strings
//! that Json.NET had not already read as dates.
//!
//! The forms accepted are the ones the invariant culture accepts in practice: ISO 8601 with `T`
//! or a space (seconds and fraction optional), `yyyy/M/d`, month-first `M/d/yyyy` and `M/d/yy`
//! (two-digit years pivot at 2049), English month names (`Feb 1 2019`, `1 February 2019`,
//! RFC 1123 with a checked weekday), 12-hour times with AM/PM, and time-only strings (today's
//! date). A zone (`Z`, `GMT`, `±h[h][[:]mm]`, at most ±14:00) converts the time to UTC; without
//! one the time is read as UTC (decision P1). Fractions of any length round to 100 ns.

use std::sync::LazyLock;

use chrono::{Datelike, NaiveDate, Weekday};
use regex::Regex;

use super::date::{DateKind, JsonDate, MAX_TICKS, TICKS_PER_HOUR, TICKS_PER_MINUTE, TICKS_PER_SECOND, civil_ticks};

const TIME: &str = r"(?P<hour>\d{1,2}):(?P<minute>\d{1,2})(?::(?P<second>\d{1,2})(?:\.(?P<fraction>\d+))?)?(?:\s*(?P<ampm>[AaPp][Mm]))?";
const ZONE: &str = r"(?P<zone>[Zz]|GMT|[+-]\d{1,2}(?::\d{1,2}|\d{2})?)";

static ISO: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"^(?P<year>\d{{4}})-(?P<month>\d{{1,2}})(?:-(?P<day>\d{{1,2}}))?(?:(?:T|\s+){TIME})?\s*{ZONE}?$"
    ))
    .expect("valid regex")
});
static SLASH: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"^(?P<a>\d{{1,4}})/(?P<b>\d{{1,2}})(?:/(?P<c>\d{{1,4}}))?(?:\s+{TIME})?\s*{ZONE}?$"
    ))
    .expect("valid regex")
});
static NAMED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"^(?:(?P<weekday>[A-Za-z]+),?\s+)?(?:(?P<day1>\d{{1,2}})\s+(?P<month1>[A-Za-z]+)\.?|(?P<month2>[A-Za-z]+)\.?\s+(?P<day2>\d{{1,2}}),?)\s+(?P<year>\d{{4}})(?:\s+{TIME})?\s*{ZONE}?$"
    ))
    .expect("valid regex")
});
static MONTH_YEAR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:(?P<month1>[A-Za-z]+)\s+(?P<year1>\d{4})|(?P<year2>\d{4})\s+(?P<month2>[A-Za-z]+))$")
        .expect("valid regex")
});
static TIME_ONLY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"^(?:{TIME}|(?P<bare>\d{{1,2}})\s*(?P<bareampm>[AaPp][Mm]))\s*{ZONE}?$"
    ))
    .expect("valid regex")
});

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// Parses `text` as `DateTime.Parse` with the invariant culture would. `today` supplies the date
/// for time-only input and the year for month-day input; without it those forms are rejected.
pub fn parse_dotnet_datetime(text: &str, today: Option<NaiveDate>) -> Option<JsonDate> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return None;
    }
    let parts = if let Some(c) = ISO.captures(trimmed) {
        Parts {
            year: number(&c, "year")?,
            month: number(&c, "month")?,
            day: number(&c, "day").unwrap_or(1),
            time: time(&c)?,
            zone: zone(&c)?,
        }
    } else if let Some(c) = SLASH.captures(trimmed) {
        let a = c.name("a")?.as_str();
        let b = number(&c, "b")?;
        match c.name("c") {
            Some(last) if a.len() >= 3 => Parts {
                year: a.parse().ok()?,
                month: b,
                day: last.as_str().parse().ok()?,
                time: time(&c)?,
                zone: zone(&c)?,
            },
            None if a.len() >= 3 => Parts {
                year: a.parse().ok()?,
                month: b,
                day: 1,
                time: time(&c)?,
                zone: zone(&c)?,
            },
            Some(last) => Parts {
                year: expand_year(last.as_str())?,
                month: a.parse().ok()?,
                day: b,
                time: time(&c)?,
                zone: zone(&c)?,
            },
            None => Parts {
                year: today?.year() as u32,
                month: a.parse().ok()?,
                day: b,
                time: time(&c)?,
                zone: zone(&c)?,
            },
        }
    } else if let Some(c) = NAMED.captures(trimmed) {
        let month_name = c.name("month1").or_else(|| c.name("month2"))?.as_str();
        let day = c.name("day1").or_else(|| c.name("day2"))?.as_str().parse().ok()?;
        let parts = Parts {
            year: number(&c, "year")?,
            month: month_number(month_name)?,
            day,
            time: time(&c)?,
            zone: zone(&c)?,
        };
        if let Some(weekday) = c.name("weekday") {
            let date = NaiveDate::from_ymd_opt(parts.year as i32, parts.month, parts.day)?;
            if weekday_of(weekday.as_str())? != date.weekday() {
                return None;
            }
        }
        parts
    } else if let Some(c) = MONTH_YEAR.captures(trimmed) {
        let month_name = c.name("month1").or_else(|| c.name("month2"))?.as_str();
        let year = c.name("year1").or_else(|| c.name("year2"))?.as_str().parse().ok()?;
        Parts {
            year,
            month: month_number(month_name)?,
            day: 1,
            time: Time::default(),
            zone: None,
        }
    } else if let Some(c) = TIME_ONLY.captures(trimmed) {
        let today = today?;
        let time = match c.name("bare") {
            Some(hour) => Time {
                hour: twelve_hour(hour.as_str().parse().ok()?, c.name("bareampm")?.as_str())?,
                ..Time::default()
            },
            None => time(&c)?,
        };
        Parts {
            year: today.year() as u32,
            month: today.month(),
            day: today.day(),
            time,
            zone: zone(&c)?,
        }
    } else {
        return None;
    };
    parts.into_date(text)
}

struct Parts {
    year: u32,
    month: u32,
    day: u32,
    time: Time,
    /// Offset east of UTC in ticks, when a zone was given.
    zone: Option<i64>,
}

#[derive(Default)]
struct Time {
    hour: u32,
    minute: u32,
    second: u32,
    fraction_ticks: i64,
}

impl Parts {
    fn into_date(self, source: &str) -> Option<JsonDate> {
        if self.year == 0 || self.year > 9999 {
            return None;
        }
        let Time {
            hour,
            minute,
            second,
            fraction_ticks,
        } = self.time;
        if hour > 23 || minute > 59 || second > 59 {
            return None;
        }
        let ticks = civil_ticks(self.year as i32, self.month, self.day, hour, minute, second)? + fraction_ticks;
        match self.zone {
            None => Some(JsonDate::new(ticks, DateKind::Unspecified, source)),
            Some(offset) => {
                let utc = ticks - offset;
                (0..=MAX_TICKS)
                    .contains(&utc)
                    .then(|| JsonDate::new(utc, DateKind::Local, source))
            }
        }
    }
}

fn number(captures: &regex::Captures<'_>, name: &str) -> Option<u32> {
    captures.name(name)?.as_str().parse().ok()
}

fn time(captures: &regex::Captures<'_>) -> Option<Time> {
    let Some(hour) = captures.name("hour") else {
        return Some(Time::default());
    };
    let mut hour: u32 = hour.as_str().parse().ok()?;
    if let Some(ampm) = captures.name("ampm") {
        hour = twelve_hour(hour, ampm.as_str())?;
    }
    let fraction_ticks = match captures.name("fraction") {
        Some(digits) => {
            // .NET accumulates the digits as a double and rounds to ticks, half to even.
            let fraction: f64 = format!("0.{}", digits.as_str()).parse().ok()?;
            (fraction * TICKS_PER_SECOND as f64).round_ties_even() as i64
        }
        None => 0,
    };
    Some(Time {
        hour,
        minute: number(captures, "minute")?,
        second: number(captures, "second").unwrap_or(0),
        fraction_ticks,
    })
}

fn twelve_hour(hour: u32, designator: &str) -> Option<u32> {
    if !(1..=12).contains(&hour) && hour != 0 {
        return None;
    }
    let pm = designator.eq_ignore_ascii_case("pm");
    Some(match (hour, pm) {
        (12, false) => 0,
        (12, true) => 12,
        (hour, true) => hour + 12,
        (hour, false) => hour,
    })
}

/// The zone as an offset east of UTC in ticks; `Some(None)` when there is no zone, `None` when
/// the zone is invalid.
fn zone(captures: &regex::Captures<'_>) -> Option<Option<i64>> {
    let Some(zone) = captures.name("zone") else {
        return Some(None);
    };
    let text = zone.as_str();
    if text.eq_ignore_ascii_case("z") || text == "GMT" {
        return Some(Some(0));
    }
    let sign = if text.starts_with('-') { -1 } else { 1 };
    let body = &text[1..];
    let (hours, minutes): (i64, i64) = match body.split_once(':') {
        Some((h, m)) => (h.parse().ok()?, m.parse().ok()?),
        None if body.len() <= 2 => (body.parse().ok()?, 0),
        None => {
            let (h, m) = body.split_at(body.len() - 2);
            (h.parse().ok()?, m.parse().ok()?)
        }
    };
    let offset = hours * TICKS_PER_HOUR + minutes * TICKS_PER_MINUTE;
    (minutes < 60 && offset <= 14 * TICKS_PER_HOUR).then_some(Some(sign * offset))
}

/// Two-digit years: 00–49 are 2000–2049, 50–99 are 1950–1999 (`TwoDigitYearMax` 2049).
fn expand_year(text: &str) -> Option<u32> {
    let year: u32 = text.parse().ok()?;
    Some(match text.len() {
        1 | 2 if year < 50 => 2000 + year,
        1 | 2 => 1900 + year,
        _ => year,
    })
}

fn month_number(name: &str) -> Option<u32> {
    let lower = name.to_ascii_lowercase();
    MONTHS
        .iter()
        .position(|month| *month == lower || (lower.len() == 3 && month.starts_with(&lower)))
        .map(|index| index as u32 + 1)
}

fn weekday_of(name: &str) -> Option<Weekday> {
    let lower = name.to_ascii_lowercase();
    let days = [
        ("monday", Weekday::Mon),
        ("tuesday", Weekday::Tue),
        ("wednesday", Weekday::Wed),
        ("thursday", Weekday::Thu),
        ("friday", Weekday::Fri),
        ("saturday", Weekday::Sat),
        ("sunday", Weekday::Sun),
    ];
    days.iter()
        .find(|(day, _)| *day == lower || (lower.len() == 3 && day.starts_with(&lower)))
        .map(|(_, weekday)| *weekday)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Option<String> {
        let today = NaiveDate::from_ymd_opt(2024, 5, 6);
        parse_dotnet_datetime(text, today).map(|date| crate::model::format_utc(date.to_utc()))
    }

    #[test]
    fn accepts_the_invariant_culture_forms() {
        let cases = [
            ("2019-02-01T22:46:01", "2019-02-01T22:46:01Z"),
            ("2019-02-01T22:46", "2019-02-01T22:46:00Z"),
            ("2019-02-01 22:46:01", "2019-02-01T22:46:01Z"),
            ("2019-02-01", "2019-02-01T00:00:00Z"),
            ("2019-2-1", "2019-02-01T00:00:00Z"),
            ("2019-02", "2019-02-01T00:00:00Z"),
            ("2019/02/01 10:00", "2019-02-01T10:00:00Z"),
            ("02/01/2019 10:00:00", "2019-02-01T10:00:00Z"),
            ("01/02/2019", "2019-01-02T00:00:00Z"),
            ("02/01/19", "2019-02-01T00:00:00Z"),
            ("02/01/50", "1950-02-01T00:00:00Z"),
            ("Feb 1 2019", "2019-02-01T00:00:00Z"),
            ("Feb 1, 2019", "2019-02-01T00:00:00Z"),
            ("1 Feb 2019", "2019-02-01T00:00:00Z"),
            ("February 1, 2019", "2019-02-01T00:00:00Z"),
            ("Feb 2019", "2019-02-01T00:00:00Z"),
            ("2019 Feb", "2019-02-01T00:00:00Z"),
            ("1 February 2019 10:00 PM", "2019-02-01T22:00:00Z"),
            ("Fri, 01 Feb 2019 22:46:01 GMT", "2019-02-01T22:46:01Z"),
            ("2019-02-01 22:46:01Z", "2019-02-01T22:46:01Z"),
            ("2019-02-01T22:46:01.1234567+05:30", "2019-02-01T17:16:01.1234567Z"),
            ("2019-02-01T22:46:01+0530", "2019-02-01T17:16:01Z"),
            ("2019-02-01T22:46:01 +05:30", "2019-02-01T17:16:01Z"),
            ("2019-02-01T22:46:01+05", "2019-02-01T17:46:01Z"),
            ("2019-02-01T22:46:01.12345678Z", "2019-02-01T22:46:01.1234568Z"),
            ("22:46", "2024-05-06T22:46:00Z"),
            ("10 PM", "2024-05-06T22:00:00Z"),
            ("10:00 PM", "2024-05-06T22:00:00Z"),
            ("  2019-02-01  ", "2019-02-01T00:00:00Z"),
        ];
        for (input, expected) in cases {
            assert_eq!(parsed(input).as_deref(), Some(expected), "{input}");
        }
    }

    #[test]
    fn rejects_what_dotnet_rejects() {
        for input in [
            "13/01/2019",
            "19-02-01",
            "Thu, 01 Feb 2019 22:46:01 GMT",
            "2019-02-01T22:46:01+15:00",
            "2019-02-01T24:00:00",
            "2019-02-30",
            "10",
            "2019",
            "20190201",
            "",
            "abc",
            "13 PM",
        ] {
            assert_eq!(parsed(input), None, "{input}");
        }
    }
}
