//! The catalog: cadang's database of agencies, people, accounts, requests and their step
//! records, documents, the asset register, the capacity model, sealed secrets and the
//! audit trail — on SQLite (the embedded default: one file under the data directory, WAL
//! mode) or PostgreSQL (for sites that run several daemons).
//!
//! This module owns **all the SQL** of the project: the connection pools, the migrations
//! (`migrations/sqlite`, `migrations/postgres`), and the conversion of rows to and from the
//! types in [`model`]. It holds **no business rules**: it does not validate a NIP, decide
//! who may act, compute capacity or hash the audit chain; the application layer
//! (`crate::app`) does, and calls the catalog inside one [`Tx`] per use case.
//!
//! One codebase serves both backends: every query is written once with `$N` placeholders
//! (numbered in order of first use, which SQLite requires), and the `with_conn!` macro
//! expands each method body once per backend, so both are type-checked by the compiler.
//! Where the SQL must differ (row locks), the method says so.
//!
//! Concurrency: write transactions on SQLite start with `BEGIN IMMEDIATE`, taking the
//! database's single write lock up front, so a use case that reads then writes can never
//! fail half-way with a busy snapshot; on PostgreSQL the rows a decision depends on are
//! locked with `SELECT … FOR UPDATE`, always in the order request → capacity rows
//! (feeds, racks, uplinks, by id) → document counter → audit head, so two transactions
//! never wait on each other in a cycle.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// Runs `$body` with `$conn` bound to the transaction's connection, once per backend: the
/// body is compiled twice, against `SqliteConnection` and `PgConnection`.
macro_rules! with_conn {
    ($tx:expr, |$conn:ident| $body:expr) => {
        match &mut $tx.inner {
            $crate::catalog::TxInner::Sqlite(transaction) => {
                let $conn: &mut sqlx::SqliteConnection = &mut **transaction;
                $body
            }
            $crate::catalog::TxInner::Postgres(transaction) => {
                let $conn: &mut sqlx::PgConnection = &mut **transaction;
                $body
            }
        }
    };
}

/// Like `with_conn!`, with a different SQL text per backend (`$sqlite`, `$postgres`)
/// bound to `$sql` inside the body.
macro_rules! with_conn_sql {
    ($tx:expr, $sql:ident = ($sqlite:expr, $postgres:expr), |$conn:ident| $body:expr) => {
        match &mut $tx.inner {
            $crate::catalog::TxInner::Sqlite(transaction) => {
                let $conn: &mut sqlx::SqliteConnection = &mut **transaction;
                let $sql: &'static str = $sqlite;
                $body
            }
            $crate::catalog::TxInner::Postgres(transaction) => {
                let $conn: &mut sqlx::PgConnection = &mut **transaction;
                let $sql: &'static str = $postgres;
                $body
            }
        }
    };
}

mod agents;
mod assets;
mod audit;
mod capacity;
pub mod codec;
mod directory;
mod documents;
mod error;
mod ids;
pub mod model;
mod notifications;
mod plans;
mod requests;
mod restore_plans;
mod tokens;

pub use agents::{
    AgentRecord, FinishedRestore, InventoryRecord, NewAgent, NewRestore, RestoreRecord,
};
pub use error::CatalogError;
pub use ids::*;
pub use model::*;
pub use notifications::{NewNotification, NotificationRecord};
pub use plans::{NewPlan, NewRun, PlanRecord, RunEnd, RunRecord};
pub use restore_plans::RestorePlanRecord;
pub use tokens::{NewToken, TokenRecord};

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The file name of the SQLite catalog inside the data directory.
pub const SQLITE_FILE_NAME: &str = "catalog.db";

/// Which database a catalog runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// SQLite, one file.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl BackendKind {
    /// `sqlite` or `postgres`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Sqlite => "sqlite",
            BackendKind::Postgres => "postgres",
        }
    }
}

/// Settings of an SQLite catalog.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Pool size. Readers run in parallel under WAL; writers queue on the write lock.
    pub max_connections: u32,
    /// How long a writer waits for the write lock before giving up with
    /// [`CatalogError::Unavailable`].
    pub busy_timeout: Duration,
}

impl Default for SqliteOptions {
    /// 4 connections, 30 s busy timeout.
    fn default() -> Self {
        SqliteOptions {
            max_connections: 4,
            busy_timeout: Duration::from_secs(30),
        }
    }
}

/// Settings of a PostgreSQL catalog.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Pool size.
    pub max_connections: u32,
    /// How long to wait for a pooled connection.
    pub acquire_timeout: Duration,
    /// Put cadang's tables in this schema (set as `search_path` on every connection);
    /// `None` uses the server's default search path.
    pub schema: Option<String>,
    /// Create `schema` when it does not exist.
    pub create_schema: bool,
}

impl Default for PostgresOptions {
    /// 8 connections, 30 s acquire timeout, default schema.
    fn default() -> Self {
        PostgresOptions {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(30),
            schema: None,
            create_schema: false,
        }
    }
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// An open, migrated catalog. Cheap to clone (it is a connection pool).
#[derive(Clone)]
pub struct Catalog {
    pool: Pool,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Catalog({})", self.backend().name())
    }
}

impl Catalog {
    /// Opens (creating if needed) the SQLite catalog `catalog.db` under `data_dir` and
    /// applies the migrations.
    ///
    /// # Errors
    /// [`CatalogError::InvalidConfig`] when the directory cannot be created;
    /// [`CatalogError::Migration`] when the schema cannot be brought up to date; others
    /// from the driver.
    pub async fn open_sqlite(
        data_dir: &Path,
        options: &SqliteOptions,
    ) -> Result<Self, CatalogError> {
        std::fs::create_dir_all(data_dir).map_err(|error| {
            CatalogError::InvalidConfig(format!(
                "cannot create the data directory {}: {error}",
                data_dir.display()
            ))
        })?;
        Self::open_sqlite_file(&data_dir.join(SQLITE_FILE_NAME), options).await
    }

    /// Opens (creating if needed) an SQLite catalog file and applies the migrations.
    ///
    /// # Errors
    /// As [`Catalog::open_sqlite`].
    pub async fn open_sqlite_file(
        path: &Path,
        options: &SqliteOptions,
    ) -> Result<Self, CatalogError> {
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL, not NORMAL: under WAL, NORMAL may lose the last commits on power loss,
            // and an audit row that vanishes after it was acknowledged is a false alarm
            // (or a hidden event) for the hash chain.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(options.busy_timeout)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .after_release(|conn, _| {
                Box::pin(async move {
                    // SQLite rolls a transaction back by itself on some errors (a full
                    // disk, an I/O error); the driver's later ROLLBACK then fails and it
                    // keeps counting the transaction as open, so every later BEGIN on
                    // this connection would be refused. A connection released inside a
                    // transaction waits for the rollback queued when it was dropped (the
                    // ping runs after it); one still inside is closed, not reused.
                    if !sqlx::Connection::is_in_transaction(conn) {
                        return Ok(true);
                    }
                    conn.ping().await?;
                    Ok(!sqlx::Connection::is_in_transaction(conn))
                })
            })
            .connect_with(connect)
            .await?;
        SQLITE_MIGRATOR.run(&pool).await?;
        Ok(Catalog {
            pool: Pool::Sqlite(pool),
        })
    }

    /// Connects to PostgreSQL and applies the migrations (in `options.schema` when set).
    ///
    /// # Errors
    /// [`CatalogError::InvalidConfig`] for a bad URL or schema name;
    /// [`CatalogError::Unavailable`] when the server cannot be reached;
    /// [`CatalogError::Migration`] when the schema cannot be brought up to date.
    pub async fn open_postgres(url: &str, options: &PostgresOptions) -> Result<Self, CatalogError> {
        let mut connect = PgConnectOptions::from_str(url)
            .map_err(|error| CatalogError::InvalidConfig(format!("bad PostgreSQL URL: {error}")))?;
        if let Some(schema) = &options.schema {
            check_schema_name(schema)?;
            if options.create_schema {
                let mut conn = PgConnection::connect_with(&connect).await?;
                // The name was checked to be a plain identifier above; identifiers cannot
                // be bound as parameters.
                let create = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
                sqlx::query(sqlx::AssertSqlSafe(create))
                    .execute(&mut conn)
                    .await?;
                conn.close().await?;
            }
            connect = connect.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await?;
        POSTGRES_MIGRATOR.run(&pool).await?;
        Ok(Catalog {
            pool: Pool::Postgres(pool),
        })
    }

    /// Opens a catalog from a URL: `sqlite:///path/to/catalog.db` (or `sqlite:relative`)
    /// with default SQLite options, or `postgres://…` / `postgresql://…` with default
    /// PostgreSQL options.
    ///
    /// # Errors
    /// [`CatalogError::InvalidConfig`] for another scheme; otherwise as the `open_*`
    /// function for the scheme.
    pub async fn open_url(url: &str) -> Result<Self, CatalogError> {
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            Self::open_sqlite_file(Path::new(path), &SqliteOptions::default()).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::open_postgres(url, &PostgresOptions::default()).await
        } else {
            Err(CatalogError::InvalidConfig(format!(
                "unsupported catalog URL `{}`: use sqlite:///path/catalog.db or postgres://…",
                redact_url(url)
            )))
        }
    }

    /// Which database this is.
    pub fn backend(&self) -> BackendKind {
        match self.pool {
            Pool::Sqlite(_) => BackendKind::Sqlite,
            Pool::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// Starts a transaction that will write. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), waiting up to the busy timeout for other writers.
    ///
    /// # Errors
    /// [`CatalogError::Unavailable`] when no connection or lock is available in time.
    pub async fn begin(&self) -> Result<Tx, CatalogError> {
        let inner = match &self.pool {
            Pool::Sqlite(pool) => TxInner::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Pool::Postgres(pool) => TxInner::Postgres(pool.begin().await?),
        };
        Ok(Tx { inner })
    }

    /// Starts a transaction that only reads: a consistent snapshot that does not block
    /// writers.
    ///
    /// # Errors
    /// [`CatalogError::Unavailable`] when no connection is available in time.
    pub async fn begin_read(&self) -> Result<Tx, CatalogError> {
        let inner = match &self.pool {
            Pool::Sqlite(pool) => TxInner::Sqlite(pool.begin().await?),
            Pool::Postgres(pool) => TxInner::Postgres(pool.begin().await?),
        };
        Ok(Tx { inner })
    }

    /// Closes every pooled connection (waiting for those in use to come back).
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
    }
}

/// A schema name must be a plain lower-case identifier: it is interpolated into DDL.
fn check_schema_name(schema: &str) -> Result<(), CatalogError> {
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(CatalogError::InvalidConfig(format!(
            "invalid PostgreSQL schema name `{schema}`: use lower-case letters, digits and `_` (at most 63)"
        )))
    }
}

/// The URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

pub(crate) enum TxInner {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

/// A catalog transaction. Every catalog read and write is a method of `Tx`; the
/// application layer opens one per use case and commits it once, so the change, its
/// documents and its audit row land together or not at all. Dropped without
/// [`Tx::commit`], it rolls back.
pub struct Tx {
    inner: TxInner,
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tx({})", self.backend().name())
    }
}

impl Tx {
    /// Which database this transaction runs on.
    pub fn backend(&self) -> BackendKind {
        match self.inner {
            TxInner::Sqlite(_) => BackendKind::Sqlite,
            TxInner::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// Makes every change of the transaction durable.
    ///
    /// # Errors
    /// [`CatalogError::Unavailable`] when the commit could not be completed (the changes
    /// are then lost; retry the use case).
    pub async fn commit(self) -> Result<(), CatalogError> {
        match self.inner {
            TxInner::Sqlite(transaction) => transaction.commit().await?,
            TxInner::Postgres(transaction) => transaction.commit().await?,
        }
        Ok(())
    }

    /// Discards every change of the transaction.
    ///
    /// # Errors
    /// From the driver; the transaction is gone either way.
    pub async fn rollback(self) -> Result<(), CatalogError> {
        match self.inner {
            TxInner::Sqlite(transaction) => transaction.rollback().await?,
            TxInner::Postgres(transaction) => transaction.rollback().await?,
        }
        Ok(())
    }
}

/// Drops a PostgreSQL schema and everything in it: the end of a test that ran in its own
/// schema.
#[cfg(test)]
pub(crate) async fn drop_postgres_schema(url: &str, schema: &str) -> Result<(), CatalogError> {
    check_schema_name(schema)?;
    let connect = PgConnectOptions::from_str(url)
        .map_err(|error| CatalogError::InvalidConfig(format!("bad PostgreSQL URL: {error}")))?;
    let mut conn = PgConnection::connect_with(&connect).await?;
    let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
    sqlx::query(sqlx::AssertSqlSafe(drop))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        assert!(check_schema_name("cadang_test_01").is_ok());
        for bad in ["", "Cadang", "a-b", "x\"; drop", "1abc"] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("mysql://user:secret@host/db"),
            "mysql://user:***@host/db"
        );
        assert_eq!(redact_url("mysql://host/db"), "mysql://host/db");
    }
}
