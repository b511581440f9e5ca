//! `SampledData.data` strings (compat.md §11.1): readings laid on a grid of `period` milliseconds
//! from the window start; each slot holds the last reading that falls in it, empty slots are `E`.

use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

/// A reading: when, and its value text.
pub type Reading = (DateTime<Utc>, String);

/// The slot width for a period in milliseconds, in 100 ns ticks (the original's `DateTime`
/// resolution), at least one tick.
pub fn period_delta(period_ms: Decimal) -> TimeDelta {
    let ticks = (period_ms * Decimal::from(10_000))
        .round()
        .to_i64()
        .unwrap_or(i64::MAX / 1000)
        .max(1);
    TimeDelta::nanoseconds(ticks.saturating_mul(100))
}

/// The most slots one SampledData value may have: a day at 100 ms is 864 000. Larger values
/// (a tiny period, or a stored Observation spanning years) are refused rather than built.
pub const MAX_SLOTS: u64 = 1_000_000;

/// How many slots `[start, end]` has at `period`.
pub fn slot_count(start: DateTime<Utc>, end: DateTime<Utc>, period: TimeDelta) -> u64 {
    if end < start {
        return 0;
    }
    let nanos = |delta: TimeDelta| i128::from(delta.num_seconds()) * 1_000_000_000 + i128::from(delta.subsec_nanos());
    let slots = nanos(end - start) / nanos(period).max(1) + 1;
    u64::try_from(slots).unwrap_or(u64::MAX)
}

/// Builds the data string for `[start, end]`: slots start at `start + k·period` while
/// `≤ end`; a slot takes the last reading in `[slot, slot + period)`; readings outside the
/// window are ignored. `readings` must be sorted by time.
pub fn build<S: AsRef<str>>(
    readings: &[(DateTime<Utc>, S)],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    period: TimeDelta,
) -> String {
    let mut out = String::with_capacity(readings.len() * 4 + 16);
    let mut next = readings.iter().skip_while(|(time, _)| *time < start).peekable();
    let mut slot = start;
    while slot <= end {
        // `None`: the slot reaches past the last representable instant.
        let slot_end = slot.checked_add_signed(period);
        let mut value: Option<&str> = None;
        while let Some((time, text)) = next.peek() {
            if slot_end.is_some_and(|slot_end| *time >= slot_end) {
                break;
            }
            value = Some(text.as_ref());
            next.next();
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(value.unwrap_or("E"));
        match slot_end {
            Some(slot_end) => slot = slot_end,
            None => break,
        }
    }
    // The original trims the joined string's end.
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out
}

/// Reads a data string back into readings at their slot times, skipping `E`.
pub fn parse(data: &str, start: DateTime<Utc>, period: TimeDelta) -> Vec<(DateTime<Utc>, &str)> {
    let mut time = start;
    let mut readings = Vec::new();
    for token in data.split(' ') {
        if token != "E" {
            readings.push((time, token));
        }
        match time.checked_add_signed(period) {
            Some(next) => time = next,
            None => break,
        }
    }
    readings
}

/// Merges two time-sorted reading lists; on equal times the `newer` reading wins (compat.md
/// §11.1: new data replaces what a slot held).
pub fn merge<'a>(older: &[(DateTime<Utc>, &'a str)], newer: &'a [Reading]) -> Vec<(DateTime<Utc>, &'a str)> {
    let mut merged = Vec::with_capacity(older.len() + newer.len());
    let mut older = older.iter().copied().peekable();
    let mut newer = newer.iter().map(|(time, text)| (*time, text.as_str())).peekable();
    loop {
        let next = match (older.peek(), newer.peek()) {
            (None, None) => break,
            (Some(_), None) => older.next(),
            (None, Some(_)) => newer.next(),
            (Some(old), Some(new)) if old.0 < new.0 => older.next(),
            (Some(old), Some(new)) => {
                if old.0 == new.0 {
                    older.next();
                }
                newer.next()
            }
        };
        merged.extend(next);
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_546_300_800 + seconds, 0).unwrap()
    }

    fn readings(pairs: &[(i64, &str)]) -> Vec<Reading> {
        pairs.iter().map(|&(s, v)| (at(s), v.to_string())).collect()
    }

    #[test]
    fn stops_at_the_last_representable_instant() {
        let huge = TimeDelta::MAX;
        let readings = parse("1 2 3", DateTime::<Utc>::MAX_UTC - TimeDelta::days(1), huge);
        assert_eq!(readings.len(), 1);
        let last = DateTime::<Utc>::MAX_UTC;
        assert_eq!(build(&[(last, "9")], last, last, huge), "9");
    }

    fn second() -> TimeDelta {
        period_delta(Decimal::from(1000))
    }

    #[test]
    fn lays_readings_on_the_grid() {
        let values: Vec<Reading> = (0..10).map(|i| (at(i), i.to_string())).collect();
        assert_eq!(build(&values, at(0), at(9), second()), "0 1 2 3 4 5 6 7 8 9");
        let sparse = readings(&[(1, "1"), (4, "4")]);
        assert_eq!(build(&sparse, at(0), at(5), second()), "E 1 E E 4 E");
        let hour = build(&sparse, at(0), at(3600) - TimeDelta::nanoseconds(100), second());
        assert_eq!(hour.split(' ').count(), 3600);
    }

    #[test]
    fn the_last_reading_of_a_slot_wins() {
        let mut values = readings(&[(0, "a"), (1, "b")]);
        values.insert(1, (at(0) + TimeDelta::milliseconds(500), "c".to_string()));
        assert_eq!(build(&values, at(0), at(1), second()), "c b");
    }

    #[test]
    fn readings_outside_the_window_are_ignored() {
        let values = readings(&[(-5, "x"), (0, "a"), (2, "b"), (9, "z")]);
        assert_eq!(build(&values, at(0), at(3), second()), "a E b E");
    }

    #[test]
    fn parses_back_what_it_builds() {
        let values = readings(&[(0, "72"), (3, "75.5"), (4, "-1")]);
        let data = build(&values, at(0), at(5), second());
        let parsed: Vec<Reading> = parse(&data, at(0), second())
            .into_iter()
            .map(|(time, text)| (time, text.to_string()))
            .collect();
        assert_eq!(parsed, values);
    }

    #[test]
    fn merge_is_ordered_and_new_readings_win() {
        let old = [(at(0), "a"), (at(2), "b"), (at(4), "c")];
        let new = readings(&[(1, "x"), (2, "y"), (5, "z")]);
        assert_eq!(
            merge(&old, &new),
            [(at(0), "a"), (at(1), "x"), (at(2), "y"), (at(4), "c"), (at(5), "z")]
        );
    }

    #[test]
    fn fractional_periods_use_tick_resolution() {
        assert_eq!(period_delta("0.5".parse().unwrap()), TimeDelta::microseconds(500));
        assert_eq!(
            slot_count(at(0), at(3600) - TimeDelta::nanoseconds(100), second()),
            3600
        );
        assert_eq!(slot_count(at(0), at(0), second()), 1);
        assert_eq!(slot_count(at(1), at(0), second()), 0);
        assert_eq!(
            slot_count(
                DateTime::<Utc>::MIN_UTC,
                DateTime::<Utc>::MAX_UTC,
                TimeDelta::nanoseconds(100)
            ),
            u64::MAX,
            "saturates instead of overflowing"
        );
        let values = readings(&[(0, "a")]);
        assert_eq!(
            build(
                &values,
                at(0),
                at(0) + TimeDelta::milliseconds(1),
                period_delta("0.5".parse().unwrap())
            ),
            "a E E"
        );
    }
}
