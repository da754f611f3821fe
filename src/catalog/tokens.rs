//! Bearer tokens of the control plane: only their hashes, the account they act as, and
//! when they expire, were revoked and were last used.

use chrono::{DateTime, Utc};

use super::codec::{instant, parse_instant, parse_opt_instant};
use super::{AccountId, CatalogError, TokenId, Tx};

/// A stored token (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Id.
    pub id: TokenId,
    /// The account it acts as.
    pub account_id: AccountId,
    /// That account's user name.
    pub username: String,
    /// Label.
    pub label: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Who created it.
    pub created_by: String,
    /// When it expires, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it was last used (to the minute), if ever.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl TokenRecord {
    /// Whether it may be used at `now`.
    pub fn is_usable(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|expiry| now < expiry)
    }
}

/// A token to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// The account it acts as.
    pub account_id: AccountId,
    /// Keyed hash of the secret (hex).
    pub token_hash: String,
    /// Label.
    pub label: String,
    /// Who creates it.
    pub created_by: String,
    /// When it expires, if ever.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: i64,
    account_id: i64,
    username: String,
    label: String,
    created_at: String,
    created_by: String,
    expires_at: Option<String>,
    revoked_at: Option<String>,
    last_used_at: Option<String>,
}

impl TokenRow {
    fn decode(self) -> Result<TokenRecord, CatalogError> {
        Ok(TokenRecord {
            id: TokenId(self.id),
            account_id: AccountId(self.account_id),
            username: self.username,
            label: self.label,
            created_at: parse_instant("api_tokens", &self.created_at)?,
            created_by: self.created_by,
            expires_at: parse_opt_instant("api_tokens", self.expires_at.as_deref())?,
            revoked_at: parse_opt_instant("api_tokens", self.revoked_at.as_deref())?,
            last_used_at: parse_opt_instant("api_tokens", self.last_used_at.as_deref())?,
        })
    }
}

/// The token query with a fixed tail (a `WHERE`/`ORDER BY` literal).
macro_rules! select_tokens {
    ($tail:literal) => {
        concat!(
            "SELECT t.id, t.account_id, a.username, t.label, t.created_at, t.created_by, ",
            "t.expires_at, t.revoked_at, t.last_used_at ",
            "FROM api_tokens t JOIN accounts a ON a.id = t.account_id ",
            $tail
        )
    };
}
const INSERT_TOKEN: &str = "INSERT INTO api_tokens (account_id, token_hash, label, created_at, created_by, expires_at) \
     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";
const REVOKE_TOKEN: &str =
    "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL";
const TOUCH_TOKEN: &str = "UPDATE api_tokens SET last_used_at = $1 WHERE id = $2";

impl Tx {
    /// Stores a token.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] if the hash exists (a 256-bit collision: a bug).
    pub async fn insert_token(
        &mut self,
        token: &NewToken,
        now: DateTime<Utc>,
    ) -> Result<TokenRecord, CatalogError> {
        let id: i64 = with_conn!(self, |conn| {
            sqlx::query_scalar(INSERT_TOKEN)
                .bind(token.account_id.0)
                .bind(&token.token_hash)
                .bind(&token.label)
                .bind(instant(now))
                .bind(&token.created_by)
                .bind(token.expires_at.map(instant))
                .fetch_one(&mut *conn)
                .await?
        });
        self.token(TokenId(id)).await
    }

    /// The token with this id.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`].
    pub async fn token(&mut self, id: TokenId) -> Result<TokenRecord, CatalogError> {
        let row: Option<TokenRow> = with_conn!(self, |conn| {
            sqlx::query_as(select_tokens!("WHERE t.id = $1"))
                .bind(id.0)
                .fetch_optional(&mut *conn)
                .await?
        });
        row.ok_or_else(|| CatalogError::not_found("token", id))?
            .decode()
    }

    /// The token with this hash, if any.
    ///
    /// # Errors
    /// From the driver.
    pub async fn token_by_hash(&mut self, hash: &str) -> Result<Option<TokenRecord>, CatalogError> {
        let row: Option<TokenRow> = with_conn!(self, |conn| {
            sqlx::query_as(select_tokens!("WHERE t.token_hash = $1"))
                .bind(hash)
                .fetch_optional(&mut *conn)
                .await?
        });
        row.map(TokenRow::decode).transpose()
    }

    /// Tokens of one account, or of every account, newest first.
    ///
    /// # Errors
    /// From the driver.
    pub async fn tokens(
        &mut self,
        account: Option<AccountId>,
    ) -> Result<Vec<TokenRecord>, CatalogError> {
        let rows: Vec<TokenRow> = match account {
            Some(account) => {
                with_conn!(self, |conn| {
                    sqlx::query_as(select_tokens!("WHERE t.account_id = $1 ORDER BY t.id DESC"))
                        .bind(account.0)
                        .fetch_all(&mut *conn)
                        .await?
                })
            }
            None => {
                with_conn!(self, |conn| {
                    sqlx::query_as(select_tokens!("ORDER BY t.id DESC"))
                        .fetch_all(&mut *conn)
                        .await?
                })
            }
        };
        rows.into_iter().map(TokenRow::decode).collect()
    }

    /// Marks a token revoked; `false` when it already was.
    ///
    /// # Errors
    /// From the driver.
    pub async fn revoke_token(
        &mut self,
        id: TokenId,
        now: DateTime<Utc>,
    ) -> Result<bool, CatalogError> {
        let affected = with_conn!(self, |conn| {
            sqlx::query(REVOKE_TOKEN)
                .bind(instant(now))
                .bind(id.0)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        Ok(affected > 0)
    }

    /// Records that a token was used.
    ///
    /// # Errors
    /// From the driver.
    pub async fn touch_token(
        &mut self,
        id: TokenId,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError> {
        with_conn!(self, |conn| {
            sqlx::query(TOUCH_TOKEN)
                .bind(instant(now))
                .bind(id.0)
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }

    /// Every account, by user name.
    ///
    /// # Errors
    /// From the driver, or [`CatalogError::Corrupt`].
    pub async fn accounts(&mut self) -> Result<Vec<super::Account>, CatalogError> {
        let names: Vec<String> = with_conn!(self, |conn| {
            sqlx::query_scalar("SELECT username FROM accounts ORDER BY username")
                .fetch_all(&mut *conn)
                .await?
        });
        let mut accounts = Vec::with_capacity(names.len());
        for name in names {
            if let Some(account) = self.account_by_username(&name).await? {
                accounts.push(account);
            }
        }
        Ok(accounts)
    }
}
