//! How values are written into columns that both backends share: instants and dates as
//! text, enums as their codes, JSON as text.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::CatalogError;

/// An instant as stored: RFC 3339 in UTC with microseconds and a `Z`, a fixed width so
/// that text order is time order on both backends.
pub fn instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Reads an instant written by [`instant`].
///
/// # Errors
/// [`CatalogError::Corrupt`] naming `table` when the text is not RFC 3339.
pub fn parse_instant(table: &'static str, text: &str) -> Result<DateTime<Utc>, CatalogError> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|error| CatalogError::corrupt(table, format!("bad instant `{text}`: {error}")))
}

/// Reads an optional instant.
///
/// # Errors
/// As [`parse_instant`].
pub fn parse_opt_instant(
    table: &'static str,
    text: Option<&str>,
) -> Result<Option<DateTime<Utc>>, CatalogError> {
    text.map(|text| parse_instant(table, text)).transpose()
}

/// A date as stored: `YYYY-MM-DD`.
pub fn date(day: NaiveDate) -> String {
    day.format("%Y-%m-%d").to_string()
}

/// Reads a date written by [`date`].
///
/// # Errors
/// [`CatalogError::Corrupt`] naming `table`.
pub fn parse_date(table: &'static str, text: &str) -> Result<NaiveDate, CatalogError> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|error| CatalogError::corrupt(table, format!("bad date `{text}`: {error}")))
}

/// Reads an optional date.
///
/// # Errors
/// As [`parse_date`].
pub fn parse_opt_date(
    table: &'static str,
    text: Option<&str>,
) -> Result<Option<NaiveDate>, CatalogError> {
    text.map(|text| parse_date(table, text)).transpose()
}

/// A value as JSON text.
///
/// # Errors
/// [`CatalogError::Corrupt`] when serialization fails (a map with non-string keys).
pub fn to_json<T: Serialize + ?Sized>(
    table: &'static str,
    value: &T,
) -> Result<String, CatalogError> {
    serde_json::to_string(value)
        .map_err(|error| CatalogError::corrupt(table, format!("cannot encode JSON: {error}")))
}

/// A value from JSON text.
///
/// # Errors
/// [`CatalogError::Corrupt`] naming `table` when the text does not decode.
pub fn from_json<T: DeserializeOwned>(table: &'static str, text: &str) -> Result<T, CatalogError> {
    serde_json::from_str(text)
        .map_err(|error| CatalogError::corrupt(table, format!("bad JSON: {error}")))
}

/// A count or size read from an `i64` column that must not be negative.
///
/// # Errors
/// [`CatalogError::Corrupt`] for a negative or too large value.
pub fn to_u32(table: &'static str, column: &str, value: i64) -> Result<u32, CatalogError> {
    u32::try_from(value)
        .map_err(|_| CatalogError::corrupt(table, format!("{column} = {value} is out of range")))
}
