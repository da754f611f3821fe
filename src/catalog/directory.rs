//! Agencies, people and user accounts with their roles.

use chrono::{DateTime, Utc};

use super::codec::{instant, parse_instant};
use super::{
    Account, AccountId, Agency, AgencyId, CatalogError, NewAccount, NewAgency, NewPerson, Person,
    PersonId, Tx,
};
use crate::workflow::Role;

#[derive(sqlx::FromRow)]
struct AgencyRow {
    id: i64,
    code: String,
    name: String,
    kind: String,
    address: String,
    phone: Option<String>,
    created_at: String,
}

impl AgencyRow {
    fn decode(self) -> Result<Agency, CatalogError> {
        Ok(Agency {
            id: AgencyId(self.id),
            code: self.code,
            name: self.name,
            kind: self
                .kind
                .parse()
                .map_err(|message: String| CatalogError::corrupt("agencies", message))?,
            address: self.address,
            phone: self.phone,
            created_at: parse_instant("agencies", &self.created_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct PersonRow {
    id: i64,
    name: String,
    nip: String,
    position: Option<String>,
    agency_id: Option<i64>,
    phone: Option<String>,
    created_at: String,
}

impl PersonRow {
    fn decode(self) -> Result<Person, CatalogError> {
        Ok(Person {
            id: PersonId(self.id),
            name: self.name,
            nip: self.nip,
            position: self.position,
            agency_id: self.agency_id.map(AgencyId),
            phone: self.phone,
            created_at: parse_instant("people", &self.created_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct AccountRow {
    id: i64,
    username: String,
    person_id: Option<i64>,
    agency_id: Option<i64>,
    active: bool,
    created_at: String,
}

const INSERT_AGENCY: &str = "INSERT INTO agencies (code, name, kind, address, phone, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";
const SELECT_AGENCY: &str =
    "SELECT id, code, name, kind, address, phone, created_at FROM agencies WHERE id = $1";
const SELECT_AGENCIES: &str =
    "SELECT id, code, name, kind, address, phone, created_at FROM agencies ORDER BY name, id";

const INSERT_PERSON: &str = "INSERT INTO people (name, nip, position, agency_id, phone, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";
const SELECT_PERSON: &str =
    "SELECT id, name, nip, position, agency_id, phone, created_at FROM people WHERE id = $1";
const SELECT_PERSON_BY_NIP: &str =
    "SELECT id, name, nip, position, agency_id, phone, created_at FROM people WHERE nip = $1";

const INSERT_ACCOUNT: &str = "INSERT INTO accounts (username, person_id, agency_id, active, created_at) \
     VALUES ($1, $2, $3, $4, $5) RETURNING id";
const INSERT_ROLE: &str = "INSERT INTO account_roles (account_id, role) VALUES ($1, $2)";
const DELETE_ROLES: &str = "DELETE FROM account_roles WHERE account_id = $1";
const SELECT_ACCOUNT: &str =
    "SELECT id, username, person_id, agency_id, active, created_at FROM accounts WHERE id = $1";
const SELECT_ACCOUNT_BY_NAME: &str = "SELECT id, username, person_id, agency_id, active, created_at \
     FROM accounts WHERE username = $1";
const SELECT_ROLES: &str = "SELECT role FROM account_roles WHERE account_id = $1";
const COUNT_ACCOUNTS: &str = "SELECT COUNT(*) FROM accounts";
const SET_ACTIVE: &str = "UPDATE accounts SET active = $1 WHERE id = $2";

impl Tx {
    /// Registers an agency.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] when the code is taken.
    pub async fn insert_agency(
        &mut self,
        agency: &NewAgency,
        now: DateTime<Utc>,
    ) -> Result<Agency, CatalogError> {
        let id: i64 = with_conn!(self, |conn| {
            sqlx::query_scalar(INSERT_AGENCY)
                .bind(&agency.code)
                .bind(&agency.name)
                .bind(agency.kind.code())
                .bind(&agency.address)
                .bind(&agency.phone)
                .bind(instant(now))
                .fetch_one(&mut *conn)
                .await?
        });
        self.agency(AgencyId(id)).await
    }

    /// The agency with this id.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`].
    pub async fn agency(&mut self, id: AgencyId) -> Result<Agency, CatalogError> {
        let row: Option<AgencyRow> = with_conn!(self, |conn| {
            sqlx::query_as(SELECT_AGENCY)
                .bind(id.0)
                .fetch_optional(&mut *conn)
                .await?
        });
        row.ok_or_else(|| CatalogError::not_found("agency", id))?
            .decode()
    }

    /// Every agency, by name.
    ///
    /// # Errors
    /// From the driver, or [`CatalogError::Corrupt`].
    pub async fn agencies(&mut self) -> Result<Vec<Agency>, CatalogError> {
        let rows: Vec<AgencyRow> = with_conn!(self, |conn| {
            sqlx::query_as(SELECT_AGENCIES)
                .fetch_all(&mut *conn)
                .await?
        });
        rows.into_iter().map(AgencyRow::decode).collect()
    }

    /// Registers a person.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] when the NIP is already registered;
    /// [`CatalogError::Constraint`] when the agency does not exist.
    pub async fn insert_person(
        &mut self,
        person: &NewPerson,
        now: DateTime<Utc>,
    ) -> Result<Person, CatalogError> {
        let id: i64 = with_conn!(self, |conn| {
            sqlx::query_scalar(INSERT_PERSON)
                .bind(&person.name)
                .bind(&person.nip)
                .bind(&person.position)
                .bind(person.agency_id.map(|id| id.0))
                .bind(&person.phone)
                .bind(instant(now))
                .fetch_one(&mut *conn)
                .await?
        });
        self.person(PersonId(id)).await
    }

    /// The person with this id.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`].
    pub async fn person(&mut self, id: PersonId) -> Result<Person, CatalogError> {
        let row: Option<PersonRow> = with_conn!(self, |conn| {
            sqlx::query_as(SELECT_PERSON)
                .bind(id.0)
                .fetch_optional(&mut *conn)
                .await?
        });
        row.ok_or_else(|| CatalogError::not_found("person", id))?
            .decode()
    }

    /// The person with this NIP, if registered.
    ///
    /// # Errors
    /// From the driver, or [`CatalogError::Corrupt`].
    pub async fn person_by_nip(&mut self, nip: &str) -> Result<Option<Person>, CatalogError> {
        let row: Option<PersonRow> = with_conn!(self, |conn| {
            sqlx::query_as(SELECT_PERSON_BY_NIP)
                .bind(nip)
                .fetch_optional(&mut *conn)
                .await?
        });
        row.map(PersonRow::decode).transpose()
    }

    /// Creates an account with its roles.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] when the user name is taken;
    /// [`CatalogError::Constraint`] when the person or agency does not exist.
    pub async fn insert_account(
        &mut self,
        account: &NewAccount,
        now: DateTime<Utc>,
    ) -> Result<Account, CatalogError> {
        let id: i64 = with_conn!(self, |conn| {
            let id: i64 = sqlx::query_scalar(INSERT_ACCOUNT)
                .bind(&account.username)
                .bind(account.person_id.map(|id| id.0))
                .bind(account.agency_id.map(|id| id.0))
                .bind(true)
                .bind(instant(now))
                .fetch_one(&mut *conn)
                .await?;
            for role in dedup_roles(&account.roles) {
                sqlx::query(INSERT_ROLE)
                    .bind(id)
                    .bind(role.code())
                    .execute(&mut *conn)
                    .await?;
            }
            id
        });
        self.account(AccountId(id)).await
    }

    /// Replaces the roles of an account.
    ///
    /// # Errors
    /// From the driver.
    pub async fn set_account_roles(
        &mut self,
        id: AccountId,
        roles: &[Role],
    ) -> Result<(), CatalogError> {
        with_conn!(self, |conn| {
            sqlx::query(DELETE_ROLES)
                .bind(id.0)
                .execute(&mut *conn)
                .await?;
            for role in dedup_roles(roles) {
                sqlx::query(INSERT_ROLE)
                    .bind(id.0)
                    .bind(role.code())
                    .execute(&mut *conn)
                    .await?;
            }
        });
        Ok(())
    }

    /// Enables or disables an account.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`] when it does not exist.
    pub async fn set_account_active(
        &mut self,
        id: AccountId,
        active: bool,
    ) -> Result<(), CatalogError> {
        let affected = with_conn!(self, |conn| {
            sqlx::query(SET_ACTIVE)
                .bind(active)
                .bind(id.0)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        if affected == 0 {
            return Err(CatalogError::not_found("account", id));
        }
        Ok(())
    }

    /// The account with this id.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`].
    pub async fn account(&mut self, id: AccountId) -> Result<Account, CatalogError> {
        let row: Option<AccountRow> = with_conn!(self, |conn| {
            sqlx::query_as(SELECT_ACCOUNT)
                .bind(id.0)
                .fetch_optional(&mut *conn)
                .await?
        });
        let row = row.ok_or_else(|| CatalogError::not_found("account", id))?;
        self.decode_account(row).await
    }

    /// The account with this user name, if any.
    ///
    /// # Errors
    /// From the driver, or [`CatalogError::Corrupt`].
    pub async fn account_by_username(
        &mut self,
        username: &str,
    ) -> Result<Option<Account>, CatalogError> {
        let row: Option<AccountRow> = with_conn!(self, |conn| {
            sqlx::query_as(SELECT_ACCOUNT_BY_NAME)
                .bind(username)
                .fetch_optional(&mut *conn)
                .await?
        });
        match row {
            Some(row) => Ok(Some(self.decode_account(row).await?)),
            None => Ok(None),
        }
    }

    /// How many accounts exist.
    ///
    /// # Errors
    /// From the driver.
    pub async fn count_accounts(&mut self) -> Result<i64, CatalogError> {
        Ok(with_conn!(self, |conn| {
            sqlx::query_scalar(COUNT_ACCOUNTS)
                .fetch_one(&mut *conn)
                .await?
        }))
    }

    async fn decode_account(&mut self, row: AccountRow) -> Result<Account, CatalogError> {
        let codes: Vec<String> = with_conn!(self, |conn| {
            sqlx::query_scalar(SELECT_ROLES)
                .bind(row.id)
                .fetch_all(&mut *conn)
                .await?
        });
        let mut roles = codes
            .iter()
            .map(|code| {
                code.parse::<Role>()
                    .map_err(|error| CatalogError::corrupt("account_roles", error.to_string()))
            })
            .collect::<Result<Vec<Role>, _>>()?;
        roles.sort();
        Ok(Account {
            id: AccountId(row.id),
            username: row.username,
            person_id: row.person_id.map(PersonId),
            agency_id: row.agency_id.map(AgencyId),
            roles,
            active: row.active,
            created_at: parse_instant("accounts", &row.created_at)?,
        })
    }
}

fn dedup_roles(roles: &[Role]) -> Vec<Role> {
    let mut unique: Vec<Role> = roles.to_vec();
    unique.sort();
    unique.dedup();
    unique
}
