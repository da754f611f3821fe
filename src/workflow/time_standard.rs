//! The SOP's time standards (*waktu* column): "1 jam", "3 jam", "1 hari".

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How long a step may take: the service level of the SOP's *waktu* column.
///
/// Serialized in the SOP's own words (`"3 jam"`, `"1 hari"`), so files, JSON and reports
/// read the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum TimeStandard {
    /// "N jam": N elapsed hours, office hours or not.
    Hours(u32),
    /// "N hari": N working days of office time, counted on a
    /// [`WorkCalendar`](super::WorkCalendar).
    WorkingDays(u32),
}

impl TimeStandard {
    /// The English reading: "3 hours", "1 working day".
    pub fn english(self) -> String {
        match self {
            TimeStandard::Hours(1) => "1 hour".to_owned(),
            TimeStandard::Hours(n) => format!("{n} hours"),
            TimeStandard::WorkingDays(1) => "1 working day".to_owned(),
            TimeStandard::WorkingDays(n) => format!("{n} working days"),
        }
    }
}

impl fmt::Display for TimeStandard {
    /// The Indonesian form, as written in the SOP.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeStandard::Hours(n) => write!(f, "{n} jam"),
            TimeStandard::WorkingDays(n) => write!(f, "{n} hari"),
        }
    }
}

/// The text is not a time standard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid time standard `{0}`: expected a positive number and a unit, like \"1 jam\", \"3 jam\" or \"1 hari\""
)]
pub struct InvalidTimeStandard(pub String);

impl FromStr for TimeStandard {
    type Err = InvalidTimeStandard;

    /// Accepts `N jam` and `N hari` (also `N hari kerja`), case-insensitively, with any
    /// whitespace around the parts; `N` must be at least 1.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidTimeStandard(s.to_owned());
        let lower = s.to_lowercase();
        let mut words = lower.split_whitespace();
        let count: u32 = words
            .next()
            .and_then(|n| n.parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(invalid)?;
        let unit: Vec<&str> = words.collect();
        match unit.as_slice() {
            ["jam"] => Ok(TimeStandard::Hours(count)),
            ["hari"] | ["hari", "kerja"] => Ok(TimeStandard::WorkingDays(count)),
            _ => Err(invalid()),
        }
    }
}

impl TryFrom<String> for TimeStandard {
    type Error = InvalidTimeStandard;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<TimeStandard> for String {
    fn from(value: TimeStandard) -> Self {
        value.to_string()
    }
}

/// When a step's time standard starts to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockStart {
    /// When the request enters the step (the usual case).
    #[default]
    Entered,
    /// When the first document is attached to the step: for steps that wait on something
    /// from outside, such as B6, which starts when the agency's stop letter arrives and not
    /// when the backup moved on to its schedule.
    FirstDocument,
}
