//! Storage of the audit trail: the rows and the one-row chain head. The chain itself (what
//! is hashed, how it is verified) belongs to `crate::app::audit`.

use super::{AuditRow, CatalogError, Tx};

#[derive(sqlx::FromRow)]
struct AuditRowDb {
    seq: i64,
    at: String,
    actor: String,
    role: Option<String>,
    action: String,
    entity: String,
    entity_id: String,
    before_json: Option<String>,
    after_json: Option<String>,
    prev_hash: String,
    hash: String,
}

impl From<AuditRowDb> for AuditRow {
    fn from(row: AuditRowDb) -> Self {
        AuditRow {
            seq: row.seq,
            at: row.at,
            actor: row.actor,
            role: row.role,
            action: row.action,
            entity: row.entity,
            entity_id: row.entity_id,
            before_json: row.before_json,
            after_json: row.after_json,
            prev_hash: row.prev_hash,
            hash: row.hash,
        }
    }
}

const SELECT_HEAD: &str = "SELECT seq, hash FROM audit_head WHERE id = 1";
const LOCK_HEAD: &str = "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE";
const UPDATE_HEAD: &str = "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1";
const INSERT_ROW: &str = "INSERT INTO audit_log \
     (seq, at, actor, role, action, entity, entity_id, before_json, after_json, prev_hash, hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
const SELECT_ROWS_AFTER: &str = "SELECT seq, at, actor, role, action, entity, entity_id, \
     before_json, after_json, prev_hash, hash FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2";
const SELECT_ROWS_FOR_ENTITY: &str = "SELECT seq, at, actor, role, action, entity, entity_id, \
     before_json, after_json, prev_hash, hash FROM audit_log WHERE entity = $1 AND entity_id = $2 \
     ORDER BY seq";
const SELECT_LAST_ROW: &str = "SELECT seq, at, actor, role, action, entity, entity_id, \
     before_json, after_json, prev_hash, hash FROM audit_log ORDER BY seq DESC LIMIT 1";
const COUNT_ROWS: &str = "SELECT COUNT(*) FROM audit_log";

impl Tx {
    /// The chain head (last sequence number and hash), locked until the transaction ends
    /// so that appends are serialised: on PostgreSQL with `FOR UPDATE` (a waiting
    /// transaction then reads the head its predecessor committed); on SQLite by the write
    /// transaction's lock. Take it last, after every other row lock.
    ///
    /// # Errors
    /// [`CatalogError::Corrupt`] when the head row is missing.
    pub async fn lock_audit_head(&mut self) -> Result<(i64, String), CatalogError> {
        let head: Option<(i64, String)> =
            with_conn_sql!(self, sql = (SELECT_HEAD, LOCK_HEAD), |conn| {
                sqlx::query_as(sql).fetch_optional(&mut *conn).await?
            });
        head.ok_or_else(|| CatalogError::corrupt("audit_head", "the chain head row is missing"))
    }

    /// The chain head, without locking.
    ///
    /// # Errors
    /// [`CatalogError::Corrupt`] when the head row is missing.
    pub async fn audit_head(&mut self) -> Result<(i64, String), CatalogError> {
        let head: Option<(i64, String)> = with_conn!(self, |conn| {
            sqlx::query_as(SELECT_HEAD)
                .fetch_optional(&mut *conn)
                .await?
        });
        head.ok_or_else(|| CatalogError::corrupt("audit_head", "the chain head row is missing"))
    }

    /// Appends a row and moves the head to it. The caller computed `seq` and the hashes
    /// from the head it locked.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] when the sequence number is taken.
    pub async fn append_audit_row(&mut self, row: &AuditRow) -> Result<(), CatalogError> {
        with_conn!(self, |conn| {
            sqlx::query(INSERT_ROW)
                .bind(row.seq)
                .bind(&row.at)
                .bind(&row.actor)
                .bind(row.role.as_deref())
                .bind(&row.action)
                .bind(&row.entity)
                .bind(&row.entity_id)
                .bind(row.before_json.as_deref())
                .bind(row.after_json.as_deref())
                .bind(&row.prev_hash)
                .bind(&row.hash)
                .execute(&mut *conn)
                .await?;
            sqlx::query(UPDATE_HEAD)
                .bind(row.seq)
                .bind(&row.hash)
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }

    /// Up to `limit` rows with a sequence number above `after`, in order.
    ///
    /// # Errors
    /// From the driver.
    pub async fn audit_rows_after(
        &mut self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<AuditRow>, CatalogError> {
        let rows: Vec<AuditRowDb> = with_conn!(self, |conn| {
            sqlx::query_as(SELECT_ROWS_AFTER)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await?
        });
        Ok(rows.into_iter().map(AuditRow::from).collect())
    }

    /// Every row about one entity, in order.
    ///
    /// # Errors
    /// From the driver.
    pub async fn audit_rows_for(
        &mut self,
        entity: &str,
        entity_id: &str,
    ) -> Result<Vec<AuditRow>, CatalogError> {
        let rows: Vec<AuditRowDb> = with_conn!(self, |conn| {
            sqlx::query_as(SELECT_ROWS_FOR_ENTITY)
                .bind(entity)
                .bind(entity_id)
                .fetch_all(&mut *conn)
                .await?
        });
        Ok(rows.into_iter().map(AuditRow::from).collect())
    }

    /// The row with the highest sequence number.
    ///
    /// # Errors
    /// From the driver.
    pub async fn last_audit_row(&mut self) -> Result<Option<AuditRow>, CatalogError> {
        let row: Option<AuditRowDb> = with_conn!(self, |conn| {
            sqlx::query_as(SELECT_LAST_ROW)
                .fetch_optional(&mut *conn)
                .await?
        });
        Ok(row.map(AuditRow::from))
    }

    /// How many audit rows exist.
    ///
    /// # Errors
    /// From the driver.
    pub async fn count_audit_rows(&mut self) -> Result<i64, CatalogError> {
        Ok(with_conn!(self, |conn| {
            sqlx::query_scalar(COUNT_ROWS).fetch_one(&mut *conn).await?
        }))
    }
}

/// Direct edits of the audit trail, bypassing the chain: what an attacker with database
/// access could do. Only for the tamper-detection tests.
#[cfg(test)]
impl Tx {
    pub(crate) async fn tamper_audit_actor(
        &mut self,
        seq: i64,
        actor: &str,
    ) -> Result<(), CatalogError> {
        with_conn!(self, |conn| {
            sqlx::query("UPDATE audit_log SET actor = $1 WHERE seq = $2")
                .bind(actor)
                .bind(seq)
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }

    pub(crate) async fn tamper_delete_audit_rows(
        &mut self,
        from: i64,
        to: i64,
    ) -> Result<(), CatalogError> {
        with_conn!(self, |conn| {
            sqlx::query("DELETE FROM audit_log WHERE seq >= $1 AND seq <= $2")
                .bind(from)
                .bind(to)
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }

    /// Overwrites every column but `seq` of the row at `row.seq`.
    pub(crate) async fn tamper_overwrite_audit_row(
        &mut self,
        row: &AuditRow,
    ) -> Result<(), CatalogError> {
        with_conn!(self, |conn| {
            sqlx::query(
                "UPDATE audit_log SET at = $1, actor = $2, role = $3, action = $4, entity = $5, \
                 entity_id = $6, before_json = $7, after_json = $8, prev_hash = $9, hash = $10 \
                 WHERE seq = $11",
            )
            .bind(&row.at)
            .bind(&row.actor)
            .bind(row.role.as_deref())
            .bind(&row.action)
            .bind(&row.entity)
            .bind(&row.entity_id)
            .bind(row.before_json.as_deref())
            .bind(row.after_json.as_deref())
            .bind(&row.prev_hash)
            .bind(&row.hash)
            .bind(row.seq)
            .execute(&mut *conn)
            .await?;
        });
        Ok(())
    }

    /// Moves one row to another sequence number.
    pub(crate) async fn tamper_renumber_audit_row(
        &mut self,
        from: i64,
        to: i64,
    ) -> Result<(), CatalogError> {
        with_conn!(self, |conn| {
            sqlx::query("UPDATE audit_log SET seq = $1 WHERE seq = $2")
                .bind(to)
                .bind(from)
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }

    /// Inserts a row without touching the head.
    pub(crate) async fn tamper_insert_audit_row(
        &mut self,
        row: &AuditRow,
    ) -> Result<(), CatalogError> {
        with_conn!(self, |conn| {
            sqlx::query(INSERT_ROW)
                .bind(row.seq)
                .bind(&row.at)
                .bind(&row.actor)
                .bind(row.role.as_deref())
                .bind(&row.action)
                .bind(&row.entity)
                .bind(&row.entity_id)
                .bind(row.before_json.as_deref())
                .bind(row.after_json.as_deref())
                .bind(&row.prev_hash)
                .bind(&row.hash)
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }

    pub(crate) async fn tamper_audit_head(
        &mut self,
        seq: i64,
        hash: &str,
    ) -> Result<(), CatalogError> {
        with_conn!(self, |conn| {
            sqlx::query(UPDATE_HEAD)
                .bind(seq)
                .bind(hash)
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }

    /// Every text a secret could leak into: request details, audit JSON, step notes and
    /// reasons, document HTML, observations.
    pub(crate) async fn all_stored_texts(&mut self) -> Result<Vec<String>, CatalogError> {
        let mut texts = Vec::new();
        for sql in [
            "SELECT details_json FROM requests",
            "SELECT state_json FROM requests",
            "SELECT COALESCE(before_json, '') FROM audit_log",
            "SELECT COALESCE(after_json, '') FROM audit_log",
            "SELECT html FROM documents",
            "SELECT spec_json FROM server_observations",
            "SELECT COALESCE(host_admin_user, '') FROM servers",
        ] {
            let found: Vec<String> = with_conn!(self, |conn| {
                sqlx::query_scalar(sql).fetch_all(&mut *conn).await?
            });
            texts.extend(found);
        }
        Ok(texts)
    }

    pub(crate) async fn all_sealed_blobs(&mut self) -> Result<Vec<Vec<u8>>, CatalogError> {
        Ok(with_conn!(self, |conn| {
            sqlx::query_scalar("SELECT sealed FROM secrets")
                .fetch_all(&mut *conn)
                .await?
        }))
    }
}
