//! Cron schedules in the configured time zone.
//!
//! Times are computed in the zone's local time by the `cron` crate and
//! converted to UTC. Around DST changes this means: a local time that does
//! not exist (the spring-forward gap) is skipped, and a local time that
//! occurs twice (the fall-back repeat) fires once, at its first occurrence.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rebased_core::config::CronSpec;

/// The next time `spec` fires strictly after `after`, with `spec` read in UTC.
pub fn next_after(spec: &CronSpec, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    spec.schedules()
        .iter()
        .filter_map(|s| s.after(&after).next())
        .min()
}

/// The next time `spec` fires strictly after `after`, with `spec` read in `tz`.
pub fn next_after_in(spec: &CronSpec, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    spec.schedules()
        .iter()
        .filter_map(|s| next_in(s, tz, after))
        .min()
}

fn next_in(schedule: &cron::Schedule, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let local = after.with_timezone(&tz);
    let mut last: Option<DateTime<Utc>> = None;
    for t in schedule.after(&local).take(4) {
        let utc = t.with_timezone(&Utc);
        // A repeated local hour yields the same wall-clock time twice; the
        // first occurrence wins, and nothing at or before `after` counts.
        if utc > after && last.is_none_or(|l| utc > l) {
            return Some(utc);
        }
        last = Some(utc);
    }
    None
}

/// The earliest next fire time over several schedules (a base used by
/// images with different `poll`s is polled on the most frequent).
pub fn next_of(specs: &[&CronSpec], tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    specs
        .iter()
        .filter_map(|s| next_after_in(s, tz, after))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("valid")
            .with_timezone(&Utc)
    }

    fn c(s: &str) -> CronSpec {
        CronSpec::parse(s).expect("valid")
    }

    #[test]
    fn seconds_and_minutes() {
        let t0 = t("2026-01-01T00:00:00.5Z");
        assert_eq!(
            next_after(&c("*/2 * * * * *"), t0),
            Some(t("2026-01-01T00:00:02Z"))
        );
        assert_eq!(
            next_after(&c("*/15 * * * *"), t0),
            Some(t("2026-01-01T00:15:00Z"))
        );
    }

    #[test]
    fn time_zone_applies() {
        // 09:00 in Berlin in winter is 08:00 UTC.
        let tz: Tz = "Europe/Berlin".parse().expect("zone");
        assert_eq!(
            next_after_in(&c("0 9 * * *"), tz, t("2026-01-05T00:00:00Z")),
            Some(t("2026-01-05T08:00:00Z"))
        );
    }

    #[test]
    fn dst_gap_is_skipped_and_repeat_fires_once() {
        let tz: Tz = "Europe/Berlin".parse().expect("zone");
        // 2026-03-29: 02:00-03:00 local does not exist.
        let next = next_after_in(&c("30 2 * * *"), tz, t("2026-03-28T12:00:00Z")).expect("fires");
        assert_eq!(next, t("2026-03-30T00:30:00Z"), "the gap day is skipped");
        // 2026-10-25: 02:30 local happens twice; it fires once.
        let first = next_after_in(&c("30 2 * * *"), tz, t("2026-10-24T12:00:00Z")).expect("fires");
        assert_eq!(first, t("2026-10-25T00:30:00Z"));
        let second = next_after_in(&c("30 2 * * *"), tz, first).expect("fires");
        assert_eq!(
            second,
            t("2026-10-26T01:30:00Z"),
            "not again in the repeated hour"
        );
    }

    #[test]
    fn most_frequent_schedule_wins() {
        let a = c("0 * * * *");
        let b = c("*/5 * * * *");
        assert_eq!(
            next_of(&[&a, &b], Tz::UTC, t("2026-01-01T00:01:00Z")),
            Some(t("2026-01-01T00:05:00Z"))
        );
    }
}
