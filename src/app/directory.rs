//! The directory use cases: the first administrator, agencies (record #1 of the SOP),
//! people with their NIP, and user accounts with their roles.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::audit::{AuditEntry, json};
use super::identifiers::Nip;
use super::{App, AppError, IssuedToken, optional, required};
use crate::catalog::{
    Account, AccountId, Agency, AgencyId, NewAccount, NewAgency, NewPerson, Person, PersonId,
};
use crate::workflow::Role;

/// A person to register; the NIP may be typed with or without spaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewPersonInput {
    /// Full name with titles.
    pub name: String,
    /// NIP as typed.
    pub nip: String,
    /// Position.
    pub position: Option<String>,
    /// Agency; `None` for the data center's own staff.
    pub agency_id: Option<AgencyId>,
    /// Telephone.
    pub phone: Option<String>,
}

/// An account to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAccountInput {
    /// Login name: 2–64 of `a-z 0-9 . _ -`.
    pub username: String,
    /// The person behind it.
    pub person_id: Option<PersonId>,
    /// Required for, and only for, an account holding `SKPD`.
    pub agency_id: Option<AgencyId>,
    /// Roles.
    pub roles: Vec<Role>,
}

/// Roles that may administer the directory.
const DIRECTORY_ROLES: [Role; 1] = [Role::Admin];

fn check_username(username: &str) -> Result<(), AppError> {
    let valid = (2..=64).contains(&username.len())
        && username.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && username
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if valid {
        Ok(())
    } else {
        Err(AppError::invalid(format!(
            "user name `{username}` is not valid: use 2–64 lower-case letters, digits, `.`, `_` or `-`, starting with a letter or digit"
        )))
    }
}

fn check_agency_code(code: &str) -> Result<String, AppError> {
    let code = code.trim();
    let valid = (1..=32).contains(&code.len())
        && code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(code.to_owned())
    } else {
        Err(AppError::invalid(format!(
            "agency code `{code}` is not valid: use 1–32 letters, digits, `-` or `_`"
        )))
    }
}

impl App {
    /// Creates the first administrator account, when no account exists yet, with a
    /// first token (labelled `bootstrap`) for it. The token's secret is returned once.
    ///
    /// # Errors
    /// [`AppError::Conflict`] once any account exists; [`AppError::InvalidInput`] for a bad
    /// user name.
    pub async fn bootstrap_admin(
        &self,
        username: &str,
        now: DateTime<Utc>,
    ) -> Result<(Account, IssuedToken), AppError> {
        check_username(username)?;
        let mut work = self.system_work("system", now).await?;
        if work.tx.count_accounts().await? > 0 {
            return Err(AppError::Conflict(
                "accounts already exist: the first administrator can only be created once".into(),
            ));
        }
        let account = work
            .tx
            .insert_account(
                &NewAccount {
                    username: username.to_owned(),
                    person_id: None,
                    agency_id: None,
                    roles: vec![Role::Admin],
                },
                now,
            )
            .await?;
        work.audit("account.bootstrap", "account", account.id).after = Some(json(&account));
        let token = self
            .issue_token(&mut work, &account, "bootstrap", None)
            .await?;
        work.commit().await?;
        Ok((account, token))
    }

    /// Registers an agency (SKPD, regency or city). ADMIN only.
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::InvalidInput`] for a bad code or an empty name
    /// or address; [`AppError::Conflict`] when the code is taken.
    pub async fn create_agency(
        &self,
        username: &str,
        agency: NewAgency,
        now: DateTime<Utc>,
    ) -> Result<Agency, AppError> {
        let mut work = self.work(username, now).await?;
        work.require(&DIRECTORY_ROLES, "register agencies")?;
        let agency = NewAgency {
            code: check_agency_code(&agency.code)?,
            name: required("the agency name", &agency.name)?,
            kind: agency.kind,
            address: required("the agency address", &agency.address)?,
            phone: optional(&agency.phone),
        };
        let stored =
            work.tx.insert_agency(&agency, now).await.map_err(|error| {
                match AppError::from(error) {
                    AppError::Conflict(_) => AppError::Conflict(format!(
                        "agency code `{}` is already registered",
                        agency.code
                    )),
                    other => other,
                }
            })?;
        work.audit("agency.create", "agency", stored.id).after = Some(json(&stored));
        work.commit().await?;
        Ok(stored)
    }

    /// Registers a person with a validated NIP. ADMIN only.
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::InvalidInput`] for an invalid NIP (the message
    /// says which part is wrong) or empty name; [`AppError::NotFound`] for an unknown
    /// agency; [`AppError::Conflict`] when the NIP is already registered.
    pub async fn create_person(
        &self,
        username: &str,
        person: NewPersonInput,
        now: DateTime<Utc>,
    ) -> Result<Person, AppError> {
        let mut work = self.work(username, now).await?;
        work.require(&DIRECTORY_ROLES, "register people")?;
        let nip = Nip::parse(&person.nip).map_err(|error| AppError::invalid(error.to_string()))?;
        let name = required("the person's name", &person.name)?;
        if let Some(agency) = person.agency_id {
            work.tx.agency(agency).await?;
        }
        if let Some(existing) = work.tx.person_by_nip(nip.as_str()).await? {
            return Err(AppError::Conflict(format!(
                "NIP {} is already registered to {} (person {})",
                nip.grouped(),
                existing.name,
                existing.id
            )));
        }
        let stored = work
            .tx
            .insert_person(
                &NewPerson {
                    name,
                    nip: nip.as_str().to_owned(),
                    position: optional(&person.position),
                    agency_id: person.agency_id,
                    phone: optional(&person.phone),
                },
                now,
            )
            .await?;
        work.audit("person.create", "person", stored.id).after = Some(json(&stored));
        work.commit().await?;
        Ok(stored)
    }

    /// Creates a user account. ADMIN only. An account holding `SKPD` must belong to an
    /// agency, and only such an account may.
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::InvalidInput`] for a bad user name, no roles,
    /// or a wrong agency link; [`AppError::NotFound`] for an unknown person or agency;
    /// [`AppError::Conflict`] when the user name is taken.
    pub async fn create_account(
        &self,
        username: &str,
        account: NewAccountInput,
        now: DateTime<Utc>,
    ) -> Result<Account, AppError> {
        let mut work = self.work(username, now).await?;
        work.require(&DIRECTORY_ROLES, "create accounts")?;
        check_account_shape(&account.username, account.agency_id, &account.roles)?;
        if let Some(person) = account.person_id {
            work.tx.person(person).await?;
        }
        if let Some(agency) = account.agency_id {
            work.tx.agency(agency).await?;
        }
        if work
            .tx
            .account_by_username(&account.username)
            .await?
            .is_some()
        {
            return Err(AppError::Conflict(format!(
                "user name `{}` is taken",
                account.username
            )));
        }
        let stored = work
            .tx
            .insert_account(
                &NewAccount {
                    username: account.username,
                    person_id: account.person_id,
                    agency_id: account.agency_id,
                    roles: account.roles,
                },
                now,
            )
            .await?;
        work.audit("account.create", "account", stored.id).after = Some(json(&stored));
        work.commit().await?;
        Ok(stored)
    }

    /// Replaces an account's roles. ADMIN only.
    ///
    /// # Errors
    /// As [`App::create_account`], and [`AppError::NotFound`] for an unknown account.
    pub async fn set_account_roles(
        &self,
        username: &str,
        account: AccountId,
        roles: Vec<Role>,
        now: DateTime<Utc>,
    ) -> Result<Account, AppError> {
        let mut work = self.work(username, now).await?;
        work.require(&DIRECTORY_ROLES, "change roles")?;
        let before = work.tx.account(account).await?;
        check_account_shape(&before.username, before.agency_id, &roles)?;
        work.tx.set_account_roles(account, &roles).await?;
        let after = work.tx.account(account).await?;
        let entry: &mut AuditEntry = work.audit("account.set_roles", "account", account);
        entry.before = Some(json(&before));
        entry.after = Some(json(&after));
        work.commit().await?;
        Ok(after)
    }

    /// Enables or disables an account. ADMIN only; an administrator cannot disable their
    /// own account (so that one always remains).
    ///
    /// # Errors
    /// [`AppError::Forbidden`]; [`AppError::NotFound`]; [`AppError::Conflict`] for one's own
    /// account.
    pub async fn set_account_active(
        &self,
        username: &str,
        account: AccountId,
        active: bool,
        now: DateTime<Utc>,
    ) -> Result<Account, AppError> {
        let mut work = self.work(username, now).await?;
        work.require(&DIRECTORY_ROLES, "enable or disable accounts")?;
        let before = work.tx.account(account).await?;
        if before.username == username && !active {
            return Err(AppError::Conflict(
                "you cannot disable your own account".into(),
            ));
        }
        work.tx.set_account_active(account, active).await?;
        let after = work.tx.account(account).await?;
        let entry = work.audit("account.set_active", "account", account);
        entry.before = Some(json(&before));
        entry.after = Some(json(&after));
        work.commit().await?;
        Ok(after)
    }

    /// An agency.
    ///
    /// # Errors
    /// [`AppError::NotFound`].
    pub async fn agency(&self, id: AgencyId) -> Result<Agency, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        Ok(tx.agency(id).await?)
    }

    /// Every agency.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn agencies(&self) -> Result<Vec<Agency>, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        Ok(tx.agencies().await?)
    }

    /// A person.
    ///
    /// # Errors
    /// [`AppError::NotFound`].
    pub async fn person(&self, id: PersonId) -> Result<Person, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        Ok(tx.person(id).await?)
    }

    /// An account by user name.
    ///
    /// # Errors
    /// [`AppError::NotFound`].
    pub async fn account(&self, username: &str) -> Result<Account, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        tx.account_by_username(username)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("there is no account `{username}`")))
    }
}

fn check_account_shape(
    username: &str,
    agency: Option<AgencyId>,
    roles: &[Role],
) -> Result<(), AppError> {
    check_username(username)?;
    if roles.is_empty() {
        return Err(AppError::invalid(format!(
            "account `{username}` needs at least one role (KADIN, KABID_TIK, KASI_INFRAS, PETUGAS, SKPD or ADMIN)"
        )));
    }
    let skpd = roles.contains(&Role::Skpd);
    match (skpd, agency) {
        (true, None) => Err(AppError::invalid(format!(
            "account `{username}` holds the SKPD role and must belong to an agency (agency_id)"
        ))),
        (false, Some(_)) => Err(AppError::invalid(format!(
            "account `{username}` does not hold the SKPD role, so it cannot belong to an agency"
        ))),
        _ => Ok(()),
    }
}
