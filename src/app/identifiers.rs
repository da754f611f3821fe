//! Validated identifiers users type in: the civil servant number (NIP), IP addresses and
//! domain names. Each parser says exactly what is wrong, in words an officer can act on.

use std::fmt;
use std::net::IpAddr;

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

/// A NIP that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NipError {
    /// Not 18 digits.
    #[error("NIP `{input}` has {found} digits; a NIP has exactly 18 (e.g. 19641026 198909 2 001)")]
    Length {
        /// What was typed.
        input: String,
        /// How many digits it has.
        found: usize,
    },
    /// A character that is neither a digit nor a separating space.
    #[error(
        "NIP `{input}` contains `{character}`; a NIP has only digits (spaces between groups are allowed)"
    )]
    NotADigit {
        /// What was typed.
        input: String,
        /// The offending character.
        character: char,
    },
    /// Digits 1–8 are not a calendar date.
    #[error(
        "NIP `{input}`: digits 1–8 must be the birth date as YYYYMMDD; `{digits}` is not a valid date"
    )]
    BirthDate {
        /// What was typed.
        input: String,
        /// The eight digits.
        digits: String,
    },
    /// The birth year is not plausible for a serving civil servant.
    #[error("NIP `{input}`: birth year {year} is not plausible (expected {min}–{max})")]
    BirthYear {
        /// What was typed.
        input: String,
        /// The year.
        year: i32,
        /// Earliest accepted.
        min: i32,
        /// Latest accepted.
        max: i32,
    },
    /// Digits 9–14 are not a year and month.
    #[error(
        "NIP `{input}`: digits 9–14 must be the appointment date as YYYYMM; `{digits}` is not a valid month"
    )]
    Appointment {
        /// What was typed.
        input: String,
        /// The six digits.
        digits: String,
    },
    /// Appointed before the age of 18 or after 60 (the civil service age limits, with a
    /// year of slack).
    #[error(
        "NIP `{input}`: appointed in {appointed} at age {age}, which is not plausible (expected 17–60)"
    )]
    AppointmentAge {
        /// What was typed.
        input: String,
        /// Appointment year and month.
        appointed: String,
        /// Age in whole years at appointment.
        age: i32,
    },
    /// Digit 15 is not 1 (male) or 2 (female).
    #[error(
        "NIP `{input}`: digit 15 is the sex code and must be 1 (male) or 2 (female), not {digit}"
    )]
    Sex {
        /// What was typed.
        input: String,
        /// The digit.
        digit: char,
    },
    /// Digits 16–18 are `000`.
    #[error("NIP `{input}`: digits 16–18 are the sequence number and cannot be 000")]
    Sequence {
        /// What was typed.
        input: String,
    },
}

/// A civil servant number (*Nomor Induk Pegawai*): 18 digits — birth date (YYYYMMDD),
/// appointment (YYYYMM), sex (1 or 2), sequence (3 digits).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Nip(String);

/// Earliest birth year accepted: no one born earlier is still in service or on a form.
const MIN_BIRTH_YEAR: i32 = 1930;
/// Latest birth year accepted (an 18-year-old appointed in 2030).
const MAX_BIRTH_YEAR: i32 = 2015;

impl Nip {
    /// Parses a NIP typed with or without the spaces between its groups.
    ///
    /// # Errors
    /// A [`NipError`] naming the first problem found.
    pub fn parse(input: &str) -> Result<Nip, NipError> {
        let owned = || input.to_owned();
        let mut digits = String::with_capacity(18);
        for character in input.trim().chars() {
            if character.is_ascii_digit() {
                digits.push(character);
            } else if character != ' ' {
                return Err(NipError::NotADigit {
                    input: owned(),
                    character,
                });
            }
        }
        if digits.len() != 18 {
            return Err(NipError::Length {
                input: owned(),
                found: digits.len(),
            });
        }
        let birth_digits = &digits[0..8];
        let birth =
            NaiveDate::parse_from_str(birth_digits, "%Y%m%d").map_err(|_| NipError::BirthDate {
                input: owned(),
                digits: birth_digits.to_owned(),
            })?;
        if !(MIN_BIRTH_YEAR..=MAX_BIRTH_YEAR).contains(&birth.year()) {
            return Err(NipError::BirthYear {
                input: owned(),
                year: birth.year(),
                min: MIN_BIRTH_YEAR,
                max: MAX_BIRTH_YEAR,
            });
        }
        let appointment_digits = &digits[8..14];
        let appointed = NaiveDate::parse_from_str(&format!("{appointment_digits}01"), "%Y%m%d")
            .map_err(|_| NipError::Appointment {
                input: owned(),
                digits: appointment_digits.to_owned(),
            })?;
        let mut age = appointed.year() - birth.year();
        if (appointed.month(), 1) < (birth.month(), birth.day()) {
            age -= 1;
        }
        if !(17..=60).contains(&age) {
            return Err(NipError::AppointmentAge {
                input: owned(),
                appointed: format!("{}-{:02}", appointed.year(), appointed.month()),
                age,
            });
        }
        let sex = digits.as_bytes()[14] as char;
        if sex != '1' && sex != '2' {
            return Err(NipError::Sex {
                input: owned(),
                digit: sex,
            });
        }
        if &digits[15..18] == "000" {
            return Err(NipError::Sequence { input: owned() });
        }
        Ok(Nip(digits))
    }

    /// The 18 digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// As written on forms: `19641026 198909 2 001`.
    pub fn grouped(&self) -> String {
        format!(
            "{} {} {} {}",
            &self.0[0..8],
            &self.0[8..14],
            &self.0[14..15],
            &self.0[15..18]
        )
    }

    /// The birth date.
    pub fn birth_date(&self) -> Option<NaiveDate> {
        NaiveDate::parse_from_str(&self.0[0..8], "%Y%m%d").ok()
    }
}

impl fmt::Display for Nip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.grouped())
    }
}

impl TryFrom<String> for Nip {
    type Error = NipError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Nip::parse(&value)
    }
}

impl From<Nip> for String {
    fn from(nip: Nip) -> Self {
        nip.0
    }
}

/// An IP address that cannot be assigned to a colocated server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpError {
    /// Not an address at all.
    #[error(
        "`{0}` is not a valid IP address (expected IPv4 like 10.20.30.40, each part 0–255 without leading zeros, or IPv6 like 2001:db8::1)"
    )]
    Syntax(String),
    /// 0.0.0.0 or ::.
    #[error("`{0}` is the unspecified address and cannot be a server's address")]
    Unspecified(String),
    /// 127.0.0.0/8 or ::1.
    #[error("`{0}` is a loopback address and cannot be a server's address")]
    Loopback(String),
    /// Multicast.
    #[error("`{0}` is a multicast address and cannot be a server's address")]
    Multicast(String),
    /// 255.255.255.255.
    #[error("`{0}` is the broadcast address and cannot be a server's address")]
    Broadcast(String),
}

/// Parses the IP address of a server, returning its canonical text.
///
/// # Errors
/// An [`IpError`] saying why the address cannot be used.
pub fn parse_server_ip(input: &str) -> Result<IpAddr, IpError> {
    let text = input.trim();
    let address: IpAddr = text
        .parse()
        .map_err(|_| IpError::Syntax(input.to_owned()))?;
    if address.is_unspecified() {
        return Err(IpError::Unspecified(input.to_owned()));
    }
    if address.is_loopback() {
        return Err(IpError::Loopback(input.to_owned()));
    }
    if address.is_multicast() {
        return Err(IpError::Multicast(input.to_owned()));
    }
    if let IpAddr::V4(v4) = address
        && v4.is_broadcast()
    {
        return Err(IpError::Broadcast(input.to_owned()));
    }
    Ok(address)
}

/// A domain name that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Empty.
    #[error("the domain name is empty")]
    Empty,
    /// Longer than 253 characters.
    #[error("domain `{0}` is longer than 253 characters")]
    TooLong(String),
    /// A single label, like `localhost`.
    #[error(
        "domain `{0}` needs at least two labels separated by dots (e.g. diskominfo.jatengprov.go.id)"
    )]
    SingleLabel(String),
    /// An empty label (`a..b`, a leading dot).
    #[error("domain `{0}` has an empty label (two dots in a row, or a leading dot)")]
    EmptyLabel(String),
    /// A label longer than 63 characters.
    #[error("domain `{domain}`: label `{label}` is longer than 63 characters")]
    LabelTooLong {
        /// The domain.
        domain: String,
        /// The label.
        label: String,
    },
    /// A character outside letters, digits and `-`.
    #[error(
        "domain `{domain}`: `{character}` is not allowed; use letters a–z, digits and `-` (internationalised names in their xn-- form)"
    )]
    BadCharacter {
        /// The domain.
        domain: String,
        /// The character.
        character: char,
    },
    /// A label starting or ending with `-`.
    #[error("domain `{domain}`: label `{label}` must not start or end with `-`")]
    Hyphen {
        /// The domain.
        domain: String,
        /// The label.
        label: String,
    },
    /// A numeric top-level label (an IP address typed as a domain).
    #[error("domain `{0}` ends in a number; type IP addresses in the IP address field")]
    NumericTld(String),
}

/// A domain or sub-domain name, lower case, without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DomainName(String);

impl DomainName {
    /// Parses a domain name (case-insensitive; one trailing dot allowed).
    ///
    /// # Errors
    /// A [`DomainError`] naming the problem.
    pub fn parse(input: &str) -> Result<DomainName, DomainError> {
        let trimmed = input.trim();
        let name = trimmed
            .strip_suffix('.')
            .unwrap_or(trimmed)
            .to_ascii_lowercase();
        if name.is_empty() {
            return Err(DomainError::Empty);
        }
        if name.len() > 253 {
            return Err(DomainError::TooLong(input.to_owned()));
        }
        let labels: Vec<&str> = name.split('.').collect();
        if labels.iter().any(|label| label.is_empty()) {
            return Err(DomainError::EmptyLabel(input.to_owned()));
        }
        if labels.len() < 2 {
            return Err(DomainError::SingleLabel(input.to_owned()));
        }
        for label in &labels {
            if label.len() > 63 {
                return Err(DomainError::LabelTooLong {
                    domain: input.to_owned(),
                    label: (*label).to_owned(),
                });
            }
            if let Some(character) = label
                .chars()
                .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
            {
                return Err(DomainError::BadCharacter {
                    domain: input.to_owned(),
                    character,
                });
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(DomainError::Hyphen {
                    domain: input.to_owned(),
                    label: (*label).to_owned(),
                });
            }
        }
        if labels
            .last()
            .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(DomainError::NumericTld(input.to_owned()));
        }
        Ok(DomainName(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for DomainName {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        DomainName::parse(&value)
    }
}

impl From<DomainName> for String {
    fn from(name: DomainName) -> Self {
        name.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sop_signatory_nip_parses_and_groups() {
        let nip = Nip::parse("19641026 198909 2 001").unwrap();
        assert_eq!(nip.as_str(), "196410261989092001");
        assert_eq!(nip.grouped(), "19641026 198909 2 001");
        assert_eq!(nip.birth_date(), NaiveDate::from_ymd_opt(1964, 10, 26));
        assert_eq!(Nip::parse("196410261989092001").unwrap(), nip);
    }

    #[test]
    fn nip_errors_say_what_is_wrong() {
        let cases: [(&str, &str); 9] = [
            ("1964102619890920", "has 16 digits"),
            ("19641026 198909 2 0O1", "contains `O`"),
            ("19641326 198909 2 001", "`19641326` is not a valid date"),
            ("19640230 198909 2 001", "`19640230` is not a valid date"),
            ("18901026 191009 2 001", "birth year 1890 is not plausible"),
            ("19641026 198913 2 001", "`198913` is not a valid month"),
            ("19641026 197509 2 001", "at age 10"),
            (
                "19641026 198909 3 001",
                "must be 1 (male) or 2 (female), not 3",
            ),
            ("19641026 198909 2 000", "cannot be 000"),
        ];
        for (input, expected) in cases {
            let error = Nip::parse(input).expect_err(input).to_string();
            assert!(error.contains(expected), "{input}: {error}");
        }
    }

    #[test]
    fn server_ips_are_checked() {
        assert_eq!(
            parse_server_ip(" 10.20.30.40 ").unwrap().to_string(),
            "10.20.30.40"
        );
        assert!(parse_server_ip("2001:db8::1").is_ok());
        let cases = [
            ("300.1.2.3", "not a valid IP address"),
            ("10.020.30.40", "not a valid IP address"),
            ("10.20.30", "not a valid IP address"),
            ("0.0.0.0", "unspecified"),
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("224.0.0.5", "multicast"),
            ("255.255.255.255", "broadcast"),
        ];
        for (input, expected) in cases {
            let error = parse_server_ip(input).expect_err(input).to_string();
            assert!(error.contains(expected), "{input}: {error}");
        }
    }

    #[test]
    fn domains_are_checked() {
        assert_eq!(
            DomainName::parse("Diskominfo.JatengProv.go.id.")
                .unwrap()
                .as_str(),
            "diskominfo.jatengprov.go.id"
        );
        assert!(DomainName::parse("xn--bcher-kva.example").is_ok());
        let long_label = format!("{}.go.id", "a".repeat(64));
        let cases = [
            ("", "is empty"),
            ("localhost", "at least two labels"),
            ("a..go.id", "empty label"),
            (".go.id", "empty label"),
            (long_label.as_str(), "longer than 63"),
            ("bad_name.go.id", "`_` is not allowed"),
            ("-x.go.id", "must not start or end with `-`"),
            ("10.20.30.40", "ends in a number"),
        ];
        for (input, expected) in cases {
            let error = DomainName::parse(input).expect_err(input).to_string();
            assert!(error.contains(expected), "{input}: {error}");
        }
    }
}
