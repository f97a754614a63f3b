//! Working days, for acceptance deadlines: Monday to Friday, less bank holidays.
//!
//! A deadline of N working days from an instant is the same time of day on the Nth
//! working day after that instant's date (UTC). A referral sent on a Friday afternoon
//! with two working days is due on Tuesday afternoon; one sent on a Saturday counts
//! from Monday, so it is due on Tuesday at the same time.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Days, NaiveDate, Utc, Weekday};

pub fn is_working_day(date: NaiveDate, bank_holidays: &BTreeSet<NaiveDate>) -> bool {
    !matches!(date.weekday(), Weekday::Sat | Weekday::Sun) && !bank_holidays.contains(&date)
}

/// `from` plus `working_days` working days. Zero gives `from` itself.
pub fn add_working_days(
    from: DateTime<Utc>,
    working_days: u32,
    bank_holidays: &BTreeSet<NaiveDate>,
) -> DateTime<Utc> {
    let mut at = from;
    let mut remaining = working_days;
    while remaining > 0 {
        at = match at.checked_add_days(Days::new(1)) {
            Some(next) => next,
            None => return DateTime::<Utc>::MAX_UTC,
        };
        if is_working_day(at.date_naive(), bank_holidays) {
            remaining -= 1;
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(year: i32, month: u32, day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(year, month, day, hour, 0, 0).unwrap()
    }

    #[test]
    fn weekends_do_not_count() {
        // Friday 2026-11-20, 15:00, two working days: Tuesday 15:00.
        let none = BTreeSet::new();
        assert_eq!(
            add_working_days(at(2026, 11, 20, 15), 2, &none),
            at(2026, 11, 24, 15)
        );
        // Saturday counts from Monday.
        assert_eq!(
            add_working_days(at(2026, 11, 21, 9), 1, &none),
            at(2026, 11, 23, 9)
        );
        assert_eq!(
            add_working_days(at(2026, 11, 18, 9), 0, &none),
            at(2026, 11, 18, 9)
        );
    }

    #[test]
    fn bank_holidays_do_not_count() {
        // Christmas 2026: Friday 25th and the Boxing Day substitute Monday 28th.
        let holidays: BTreeSet<NaiveDate> = [
            NaiveDate::from_ymd_opt(2026, 12, 25).unwrap(),
            NaiveDate::from_ymd_opt(2026, 12, 28).unwrap(),
        ]
        .into();
        // Thursday 24th + 1 working day: Tuesday 29th.
        assert_eq!(
            add_working_days(at(2026, 12, 24, 12), 1, &holidays),
            at(2026, 12, 29, 12)
        );
        // Five working days from Monday 21st: 22, 23, 24, 29, 30.
        assert_eq!(
            add_working_days(at(2026, 12, 21, 12), 5, &holidays),
            at(2026, 12, 30, 12)
        );
    }
}
