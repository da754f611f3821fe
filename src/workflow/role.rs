//! Roles of the data center's organisation chart, the people acting in them, and the role
//! guard used by the state machine.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A role a user account may hold. The codes are those of `SOP.md` ("Who is who").
///
/// Serialized as the upper-case code (`"KASI_INFRAS"`), the same spelling as in the
/// procedure files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    /// Kepala Dinas — Head of Agency.
    Kadin,
    /// Kepala Bidang TIK — Head of ICT Division.
    KabidTik,
    /// Kepala Seksi Infrastruktur — Head of Infrastructure Section.
    KasiInfras,
    /// Petugas Jaringan — network officer.
    Petugas,
    /// Satuan Kerja Perangkat Daerah — a requesting government agency.
    Skpd,
    /// System administrator of cadang itself; acts in the SOP only where a definition
    /// lists it.
    Admin,
}

impl Role {
    /// Every role, in the order of the organisation chart.
    pub const ALL: [Role; 6] = [
        Role::Kadin,
        Role::KabidTik,
        Role::KasiInfras,
        Role::Petugas,
        Role::Skpd,
        Role::Admin,
    ];

    /// The code used in files, JSON and messages (`KABID_TIK`).
    pub fn code(self) -> &'static str {
        match self {
            Role::Kadin => "KADIN",
            Role::KabidTik => "KABID_TIK",
            Role::KasiInfras => "KASI_INFRAS",
            Role::Petugas => "PETUGAS",
            Role::Skpd => "SKPD",
            Role::Admin => "ADMIN",
        }
    }

    /// The Indonesian title, as users see it on forms.
    pub fn indonesian(self) -> &'static str {
        match self {
            Role::Kadin => "Kepala Dinas",
            Role::KabidTik => "Kepala Bidang TIK",
            Role::KasiInfras => "Kepala Seksi Infrastruktur",
            Role::Petugas => "Petugas Jaringan",
            Role::Skpd => "Satuan Kerja Perangkat Daerah",
            Role::Admin => "Administrator",
        }
    }

    /// The English title.
    pub fn english(self) -> &'static str {
        match self {
            Role::Kadin => "Head of Agency",
            Role::KabidTik => "Head of ICT Division",
            Role::KasiInfras => "Head of Infrastructure Section",
            Role::Petugas => "Network officer",
            Role::Skpd => "Requesting agency",
            Role::Admin => "Administrator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The text was not one of the role codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{0}` (known roles: KADIN, KABID_TIK, KASI_INFRAS, PETUGAS, SKPD, ADMIN)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    /// Parses a role code exactly as written in the files (upper case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.code() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// Formats a role list for messages: `KADIN`, `KADIN or ADMIN`, `A, B or C`.
pub(super) fn describe_roles(roles: &[Role]) -> String {
    match roles {
        [] => "nobody".to_owned(),
        [only] => only.code().to_owned(),
        [init @ .., last] => {
            let init: Vec<&str> = init.iter().map(|role| role.code()).collect();
            format!("{} or {}", init.join(", "), last.code())
        }
    }
}

/// Formats the roles an actor holds for messages (`no role` when empty).
pub(super) fn describe_held(roles: &[Role]) -> String {
    if roles.is_empty() {
        "no role".to_owned()
    } else {
        roles
            .iter()
            .map(|role| role.code())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The id of a user account, as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub String);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Someone acting on a request: a user account and the roles it holds right now.
///
/// The workflow trusts these roles; authenticating the user and loading the roles (and
/// checking that an `SKPD` user belongs to the request's agency) is the caller's job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The user account.
    pub user: UserId,
    /// The roles the account holds.
    pub roles: Vec<Role>,
}

impl Actor {
    /// An actor holding the given roles.
    pub fn new(user: impl Into<String>, roles: impl IntoIterator<Item = Role>) -> Self {
        Actor {
            user: UserId(user.into()),
            roles: roles.into_iter().collect(),
        }
    }

    /// The role this actor acts in for a step that allows `allowed`: the first allowed role
    /// (in the definition's order) the actor holds, or `None` when it holds none of them.
    pub fn acting_role(&self, allowed: &[Role]) -> Option<Role> {
        allowed
            .iter()
            .copied()
            .find(|role| self.roles.contains(role))
    }
}
