//! The catalog's error type, classified by what the caller can do about it.

use std::borrow::Cow;

/// A catalog operation failed.
///
/// The variants say what the caller can do: look elsewhere ([`NotFound`](Self::NotFound)),
/// reload and retry or give up ([`Conflict`](Self::Conflict)), fix the reference it passed
/// ([`Constraint`](Self::Constraint)), retry later ([`Unavailable`](Self::Unavailable)), or
/// nothing but report it ([`Corrupt`](Self::Corrupt), [`Internal`](Self::Internal)).
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// No row has this key.
    #[error("{what} {key} does not exist")]
    NotFound {
        /// What was looked for (`agency`, `request`, …).
        what: &'static str,
        /// The key that was not found.
        key: String,
    },
    /// The write collides with what is stored: a duplicate unique value, or a row that
    /// changed since it was read (optimistic concurrency).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The write breaks a schema rule: it references a row that does not exist, or a value
    /// is out of the allowed range.
    #[error("rejected by the catalog schema: {0}")]
    Constraint(String),
    /// The database is busy, unreachable or aborted the transaction to break a deadlock;
    /// retrying later may succeed.
    #[error("the catalog database is temporarily unavailable: {0}")]
    Unavailable(String),
    /// The disk under the catalog is full: the transaction was rolled back and nothing was
    /// written. Retrying succeeds once space is freed; the daemon does not retry by itself.
    #[error(
        "the catalog's disk is full ({0}); nothing was written — free space on the catalog's disk, then retry"
    )]
    Full(String),
    /// A stored row cannot be read back into its type (edited by hand, or written by a
    /// newer build).
    #[error("corrupt row in {table}: {message}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The catalog cannot be opened as configured (bad URL, schema name or path).
    #[error("invalid catalog configuration: {0}")]
    InvalidConfig(String),
    /// Applying the schema migrations failed.
    #[error("catalog migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// Anything else from the database driver.
    #[error("catalog database error: {0}")]
    Internal(#[source] sqlx::Error),
}

impl CatalogError {
    /// A [`CatalogError::NotFound`].
    pub fn not_found(what: &'static str, key: impl ToString) -> Self {
        CatalogError::NotFound {
            what,
            key: key.to_string(),
        }
    }

    /// A [`CatalogError::Corrupt`].
    pub fn corrupt(table: &'static str, message: impl Into<String>) -> Self {
        CatalogError::Corrupt {
            table,
            message: message.into(),
        }
    }

    /// Whether retrying the whole transaction later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, CatalogError::Unavailable(_))
    }
}

/// SQLite result codes that mean "another connection holds the lock": SQLITE_BUSY (5),
/// SQLITE_LOCKED (6) and their extended forms (BUSY_SNAPSHOT 517, BUSY_RECOVERY 261,
/// BUSY_TIMEOUT 773, LOCKED_SHAREDCACHE 262).
const SQLITE_BUSY_CODES: [&str; 6] = ["5", "6", "261", "262", "517", "773"];

/// SQLite's "database or disk is full" (SQLITE_FULL, 13) and a failed write or truncate of
/// the database or its journal on a full disk (IOERR_WRITE 778, IOERR_TRUNCATE 1546,
/// IOERR_SHMSIZE 4874).
const SQLITE_FULL_CODES: [&str; 4] = ["13", "778", "1546", "4874"];

/// PostgreSQL's disk_full (53100) and the class it belongs to, insufficient_resources
/// (53000), which the server reports for some out-of-space conditions.
const PG_DISK_FULL: [&str; 2] = ["53100", "53000"];

/// PostgreSQL SQLSTATEs after which the transaction may simply be retried:
/// serialization_failure, deadlock_detected, lock_not_available, and the connection
/// exception class.
const PG_RETRYABLE: [&str; 6] = ["40001", "40P01", "55P03", "08000", "08003", "08006"];

impl From<sqlx::Error> for CatalogError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::RowNotFound => CatalogError::NotFound {
                what: "row",
                key: String::new(),
            },
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                CatalogError::Unavailable(error.to_string())
            }
            sqlx::Error::Database(ref db) => {
                let code: Option<Cow<'_, str>> = db.code();
                let code = code.as_deref().unwrap_or("");
                if SQLITE_FULL_CODES.contains(&code) || PG_DISK_FULL.contains(&code) {
                    return CatalogError::Full(db.message().to_owned());
                }
                if SQLITE_BUSY_CODES.contains(&code) || PG_RETRYABLE.contains(&code) {
                    return CatalogError::Unavailable(db.message().to_owned());
                }
                match db.kind() {
                    sqlx::error::ErrorKind::UniqueViolation => {
                        CatalogError::Conflict(format!("duplicate value: {}", db.message()))
                    }
                    sqlx::error::ErrorKind::ForeignKeyViolation => CatalogError::Constraint(
                        format!("a referenced record does not exist: {}", db.message()),
                    ),
                    sqlx::error::ErrorKind::CheckViolation
                    | sqlx::error::ErrorKind::NotNullViolation => {
                        CatalogError::Constraint(db.message().to_owned())
                    }
                    _ => CatalogError::Internal(error),
                }
            }
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                CatalogError::corrupt("?", error.to_string())
            }
            sqlx::Error::Configuration(_) => CatalogError::InvalidConfig(error.to_string()),
            other => CatalogError::Internal(other),
        }
    }
}
