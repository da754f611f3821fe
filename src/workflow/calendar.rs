//! Working time: office hours, working days and holidays, and the deadlines of time
//! standards computed on them.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Days, NaiveDate, NaiveTime, TimeDelta, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::TimeStandard;

/// Office hours by default (07:30–16:00), checked when cadang is compiled.
const OPENS: NaiveTime = match NaiveTime::from_hms_opt(7, 30, 0) {
    Some(time) => time,
    None => panic!("07:30 is a time of day"),
};
const CLOSES: NaiveTime = match NaiveTime::from_hms_opt(16, 0, 0) {
    Some(time) => time,
    None => panic!("16:00 is a time of day"),
};

/// A calendar that cannot be used to count working time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    /// Office hours must close after they open, on the same day.
    #[error("office hours must close after they open (opens {opens}, closes {closes})")]
    EmptyOfficeHours {
        /// Opening time as configured.
        opens: NaiveTime,
        /// Closing time as configured.
        closes: NaiveTime,
    },
    /// At least one weekday must be a working day.
    #[error("the calendar has no working day in the week")]
    NoWorkingDays,
}

/// The settings of a [`WorkCalendar`], as written in configuration.
///
/// ```toml
/// time_zone = "Asia/Jakarta"
/// working_days = ["Mon", "Tue", "Wed", "Thu", "Fri"]
/// opens = "07:30"
/// closes = "16:00"
/// holidays = [2026-01-01, "2026-03-20"]   # TOML dates or "YYYY-MM-DD" strings
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkCalendarConfig {
    /// The office's time zone (IANA name).
    pub time_zone: Tz,
    /// The weekdays the office works.
    pub working_days: Vec<Weekday>,
    /// When office hours begin, local time.
    pub opens: NaiveTime,
    /// When office hours end, local time.
    pub closes: NaiveTime,
    /// Days off on which the office is closed although they are working weekdays.
    #[serde(deserialize_with = "dates::deserialize_set")]
    pub holidays: BTreeSet<NaiveDate>,
}

impl Default for WorkCalendarConfig {
    /// Monday to Friday, 07:30–16:00, Asia/Jakarta, no holidays.
    fn default() -> Self {
        WorkCalendarConfig {
            time_zone: chrono_tz::Asia::Jakarta,
            working_days: vec![
                Weekday::Mon,
                Weekday::Tue,
                Weekday::Wed,
                Weekday::Thu,
                Weekday::Fri,
            ],
            opens: OPENS,
            closes: CLOSES,
            holidays: BTreeSet::new(),
        }
    }
}

/// A validated calendar of office time, on which "1 hari" means one working day.
///
/// Only constructible from a valid [`WorkCalendarConfig`], so counting working time always
/// terminates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WorkCalendarConfig", into = "WorkCalendarConfig")]
pub struct WorkCalendar {
    config: WorkCalendarConfig,
}

impl Default for WorkCalendar {
    /// The defaults of [`WorkCalendarConfig::default`].
    fn default() -> Self {
        WorkCalendar {
            config: WorkCalendarConfig::default(),
        }
    }
}

impl TryFrom<WorkCalendarConfig> for WorkCalendar {
    type Error = CalendarError;

    /// # Errors
    /// [`CalendarError`] when office hours are empty or no weekday is a working day.
    fn try_from(config: WorkCalendarConfig) -> Result<Self, Self::Error> {
        if config.closes <= config.opens {
            return Err(CalendarError::EmptyOfficeHours {
                opens: config.opens,
                closes: config.closes,
            });
        }
        if config.working_days.is_empty() {
            return Err(CalendarError::NoWorkingDays);
        }
        Ok(WorkCalendar { config })
    }
}

impl From<WorkCalendar> for WorkCalendarConfig {
    fn from(calendar: WorkCalendar) -> Self {
        calendar.config
    }
}

impl WorkCalendar {
    /// The default calendar with these holidays added.
    pub fn with_holidays(mut self, holidays: impl IntoIterator<Item = NaiveDate>) -> Self {
        self.config.holidays.extend(holidays);
        self
    }

    /// The settings this calendar was built from.
    pub fn config(&self) -> &WorkCalendarConfig {
        &self.config
    }

    /// Whether the office works on this local date.
    pub fn is_working_day(&self, date: NaiveDate) -> bool {
        self.config.working_days.contains(&date.weekday()) && !self.config.holidays.contains(&date)
    }

    /// The length of one working day ("1 hari").
    pub fn working_day_length(&self) -> TimeDelta {
        self.config.closes - self.config.opens
    }

    /// The instant `duration` of office time after `start`. Time outside office hours,
    /// on non-working weekdays and on holidays does not count; a start outside office hours
    /// counts from the next opening.
    pub fn add_office_time(&self, start: DateTime<Utc>, duration: TimeDelta) -> DateTime<Utc> {
        let mut remaining = duration;
        let mut cursor = start;
        let mut date = start.with_timezone(&self.config.time_zone).date_naive();
        loop {
            if self.is_working_day(date) {
                let opens = self.local_instant(date, self.config.opens);
                let closes = self.local_instant(date, self.config.closes);
                let from = cursor.max(opens);
                if from < closes {
                    let available = closes - from;
                    if remaining <= available {
                        return from + remaining;
                    }
                    remaining -= available;
                }
            }
            // Terminates: a valid calendar has a working weekday, and the holiday list is
            // finite.
            date = date + Days::new(1);
            cursor = cursor.max(self.local_instant(date, NaiveTime::MIN));
        }
    }

    /// The instant of a local date and time, resolving gaps and folds of daylight-saving
    /// zones (Asia/Jakarta has none) to the earliest valid instant.
    fn local_instant(&self, date: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
        let zone = self.config.time_zone;
        let mut local = date.and_time(time);
        for _ in 0..4 {
            if let Some(instant) = zone.from_local_datetime(&local).earliest() {
                return instant.with_timezone(&Utc);
            }
            local += TimeDelta::minutes(30);
        }
        // No zone skips two hours; reading the wall time as UTC keeps this total.
        Utc.from_utc_datetime(&date.and_time(time))
    }
}

/// The deadline of a time standard whose clock started at `start`: hours are elapsed
/// time, working days are office time on `calendar`.
pub fn deadline(
    start: DateTime<Utc>,
    standard: TimeStandard,
    calendar: &WorkCalendar,
) -> DateTime<Utc> {
    match standard {
        TimeStandard::Hours(hours) => start + TimeDelta::hours(i64::from(hours)),
        TimeStandard::WorkingDays(days) => {
            calendar.add_office_time(start, calendar.working_day_length() * days as i32)
        }
    }
}

/// Dates that may be written either as TOML dates or as `YYYY-MM-DD` strings.
pub(super) mod dates {
    use std::collections::BTreeSet;
    use std::fmt;

    use chrono::NaiveDate;
    use serde::Deserializer;
    use serde::de::{self, MapAccess, SeqAccess, Visitor};

    struct DateVisitor;

    impl<'de> Visitor<'de> for DateVisitor {
        type Value = NaiveDate;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a date (YYYY-MM-DD)")
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<NaiveDate, E> {
            NaiveDate::parse_from_str(value, "%Y-%m-%d")
                .map_err(|_| E::custom(format!("invalid date `{value}`, expected YYYY-MM-DD")))
        }

        // A TOML date arrives as a one-entry map holding its text.
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NaiveDate, A::Error> {
            let Some((_, text)) = map.next_entry::<String, String>()? else {
                return Err(de::Error::custom("expected a date"));
            };
            self.visit_str(&text)
        }
    }

    /// Deserializes one date.
    pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<NaiveDate, D::Error> {
        deserializer.deserialize_any(DateVisitor)
    }

    struct Date(NaiveDate);

    impl<'de> de::Deserialize<'de> for Date {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(DateVisitor).map(Date)
        }
    }

    /// Deserializes a list of dates into a set.
    pub(in super::super) fn deserialize_set<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeSet<NaiveDate>, D::Error> {
        struct SetVisitor;
        impl<'de> Visitor<'de> for SetVisitor {
            type Value = BTreeSet<NaiveDate>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of dates (YYYY-MM-DD)")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut set = BTreeSet::new();
                while let Some(Date(date)) = seq.next_element()? {
                    set.insert(date);
                }
                Ok(set)
            }
        }
        deserializer.deserialize_seq(SetVisitor)
    }
}
