//! The audit trail as a BLAKE3 hash chain: how a row is hashed, how rows are appended
//! inside a use case's transaction, how the chain is verified, and the checkpoint that
//! lets truncation be detected.
//!
//! Row `n` stores `hash_n = BLAKE3-derive-key("cadang audit chain v1", encode(n, hash_{n-1},
//! at, actor, role, action, entity, entity_id, before, after))` where every field is
//! length-prefixed (u64 little-endian; optional fields carry a presence byte) and
//! `hash_0` is 64 zero hex digits. The prefixing makes the encoding injective: no two
//! different rows hash the same bytes. Any edit, deletion, reordering or insertion breaks
//! a stored hash or a link; removing rows from the end is only visible against a chain
//! head kept elsewhere ([`AuditCheckpoint`]).
//!
//! The chain is unkeyed on purpose: anyone holding a copy of the database can verify it
//! without a secret. The price is that someone who can write the database can also
//! rebuild the chain from the first row they change — which the exported checkpoint
//! (kept off the machine, later in the repository) then exposes.

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::AppError;
use crate::catalog::codec::instant;
use crate::catalog::{AuditRow, Tx};
use crate::workflow::Role;

/// The previous hash of the first row.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The BLAKE3 key-derivation context of row hashes; changing it is a new chain format.
const CHAIN_CONTEXT: &str = "cadang 2026 audit chain v1";

/// The checkpoint file format.
pub const CHECKPOINT_FORMAT: &str = "cadang-audit-checkpoint-v1";

/// How many rows `verify` reads per page.
const PAGE: u32 = 500;

/// One state change to record.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// When (the use case's `now`).
    pub at: DateTime<Utc>,
    /// Who: a user name, or `system`.
    pub actor: String,
    /// In which role.
    pub role: Option<Role>,
    /// What, as `entity.verb` (`request.decide`, `secret.reveal`).
    pub action: String,
    /// Kind of thing changed.
    pub entity: String,
    /// Its id.
    pub entity_id: String,
    /// Its state before (None when created).
    pub before: Option<serde_json::Value>,
    /// Its state after (None when deleted).
    pub after: Option<serde_json::Value>,
}

impl AuditEntry {
    /// An entry with no before/after yet.
    pub fn new(
        at: DateTime<Utc>,
        actor: impl Into<String>,
        role: Option<Role>,
        action: impl Into<String>,
        entity: impl Into<String>,
        entity_id: impl ToString,
    ) -> Self {
        AuditEntry {
            at,
            actor: actor.into(),
            role,
            action: action.into(),
            entity: entity.into(),
            entity_id: entity_id.to_string(),
            before: None,
            after: None,
        }
    }

    /// With the state before.
    pub fn before(mut self, value: serde_json::Value) -> Self {
        self.before = Some(value);
        self
    }

    /// With the state after.
    pub fn after(mut self, value: serde_json::Value) -> Self {
        self.after = Some(value);
        self
    }
}

/// A value as audit JSON (a value that cannot be serialized becomes its error text; the
/// audit row must never be what makes a use case fail).
pub fn json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value)
        .unwrap_or_else(|error| serde_json::Value::String(format!("<unserializable: {error}>")))
}

/// The hash of a row, from its stored fields and the previous row's hash.
pub fn row_hash(row: &AuditRow) -> String {
    let mut hasher = blake3::Hasher::new_derive_key(CHAIN_CONTEXT);
    put(&mut hasher, &row.seq.to_le_bytes());
    put(&mut hasher, row.prev_hash.as_bytes());
    put(&mut hasher, row.at.as_bytes());
    put(&mut hasher, row.actor.as_bytes());
    put_optional(&mut hasher, row.role.as_deref());
    put(&mut hasher, row.action.as_bytes());
    put(&mut hasher, row.entity.as_bytes());
    put(&mut hasher, row.entity_id.as_bytes());
    put_optional(&mut hasher, row.before_json.as_deref());
    put_optional(&mut hasher, row.after_json.as_deref());
    hasher.finalize().to_hex().to_string()
}

/// A length-prefixed field.
fn put(hasher: &mut blake3::Hasher, bytes: &[u8]) {
    hasher.update(&(bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

/// An optional field: a presence byte, then the field.
fn put_optional(hasher: &mut blake3::Hasher, value: Option<&str>) {
    match value {
        None => {
            hasher.update(&[0]);
        }
        Some(text) => {
            hasher.update(&[1]);
            put(hasher, text.as_bytes());
        }
    }
}

/// Appends an entry to the chain inside `tx`; returns its sequence number. Call it after
/// every other write of the use case (it takes the chain head's lock last).
///
/// # Errors
/// From the catalog.
pub async fn append(tx: &mut Tx, entry: AuditEntry) -> Result<i64, AppError> {
    let (head_seq, head_hash) = tx.lock_audit_head().await?;
    let to_text = |value: Option<serde_json::Value>| value.map(|value| value.to_string());
    let mut row = AuditRow {
        seq: head_seq + 1,
        at: instant(entry.at),
        actor: entry.actor,
        role: entry.role.map(|role| role.code().to_owned()),
        action: entry.action,
        entity: entry.entity,
        entity_id: entry.entity_id,
        before_json: to_text(entry.before),
        after_json: to_text(entry.after),
        prev_hash: head_hash,
        hash: String::new(),
    };
    row.hash = row_hash(&row);
    tx.append_audit_row(&row).await?;
    Ok(row.seq)
}

/// The chain head exported to be kept elsewhere: proof of how long the chain was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    /// [`CHECKPOINT_FORMAT`].
    pub format: String,
    /// The last row's sequence number (0 for an empty chain).
    pub seq: i64,
    /// The last row's hash.
    pub hash: String,
    /// When it was exported.
    pub exported_at: DateTime<Utc>,
}

impl AuditCheckpoint {
    /// As pretty JSON (the file content).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Reads a checkpoint file's content.
    ///
    /// # Errors
    /// [`AppError::InvalidInput`] for malformed JSON or another format.
    pub fn from_json(text: &str) -> Result<Self, AppError> {
        let checkpoint: AuditCheckpoint = serde_json::from_str(text)
            .map_err(|error| AppError::invalid(format!("not an audit checkpoint: {error}")))?;
        if checkpoint.format != CHECKPOINT_FORMAT {
            return Err(AppError::invalid(format!(
                "unsupported audit checkpoint format `{}` (expected {CHECKPOINT_FORMAT})",
                checkpoint.format
            )));
        }
        Ok(checkpoint)
    }

    /// Writes the checkpoint to `path` durably: a temporary file, fsync, rename, and an
    /// fsync of the directory so the rename itself survives a crash.
    ///
    /// # Errors
    /// [`AppError::InvalidInput`] naming the path when it cannot be written.
    pub fn write_file(&self, path: &Path) -> Result<(), AppError> {
        let failed = |error: std::io::Error| {
            AppError::invalid(format!(
                "cannot write the audit checkpoint to {}: {error}",
                path.display()
            ))
        };
        let temporary = path.with_extension("tmp");
        {
            let mut file = std::fs::File::create(&temporary).map_err(failed)?;
            file.write_all(self.to_json().as_bytes()).map_err(failed)?;
            file.sync_all().map_err(failed)?;
        }
        std::fs::rename(&temporary, path).map_err(failed)?;
        if let Some(directory) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::File::open(directory)
                .and_then(|dir| dir.sync_all())
                .map_err(failed)?;
        }
        Ok(())
    }

    /// Reads a checkpoint file.
    ///
    /// # Errors
    /// [`AppError::InvalidInput`] when it cannot be read or parsed.
    pub fn read_file(path: &Path) -> Result<Self, AppError> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            AppError::invalid(format!(
                "cannot read the audit checkpoint {}: {error}",
                path.display()
            ))
        })?;
        Self::from_json(&text)
    }
}

/// The first thing found wrong with the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum AuditProblem {
    /// A row's content does not match its hash (a field was edited).
    HashMismatch {
        /// The row.
        seq: i64,
    },
    /// A row does not point at the previous row's hash (a row before it was removed,
    /// replaced, inserted or moved).
    BrokenLink {
        /// The row.
        seq: i64,
    },
    /// Sequence numbers skip (a row was deleted) or repeat out of order.
    SequenceGap {
        /// The number expected.
        expected: i64,
        /// The number found.
        found: i64,
    },
    /// The stored head does not name the last row (rows were removed from the end, or
    /// added without going through the chain).
    HeadMismatch {
        /// Head sequence number.
        head_seq: i64,
        /// Last row's sequence number.
        last_seq: i64,
    },
    /// The chain is shorter than a checkpoint proves it was.
    Truncated {
        /// The checkpoint's sequence number.
        checkpoint_seq: i64,
        /// The last row found.
        last_seq: i64,
    },
    /// The row at the checkpoint's position has another hash: history before the
    /// checkpoint was rewritten.
    CheckpointMismatch {
        /// The checkpoint's sequence number.
        seq: i64,
    },
}

impl AuditProblem {
    /// The sequence number of the first row found bad.
    pub fn first_bad_seq(&self) -> i64 {
        match *self {
            AuditProblem::HashMismatch { seq }
            | AuditProblem::BrokenLink { seq }
            | AuditProblem::CheckpointMismatch { seq } => seq,
            AuditProblem::SequenceGap { expected, .. } => expected,
            AuditProblem::HeadMismatch { last_seq, head_seq } => last_seq.min(head_seq) + 1,
            AuditProblem::Truncated { last_seq, .. } => last_seq + 1,
        }
    }
}

impl std::fmt::Display for AuditProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuditProblem::HashMismatch { seq } => {
                write!(f, "audit row {seq} does not match its hash: it was edited")
            }
            AuditProblem::BrokenLink { seq } => write!(
                f,
                "audit row {seq} does not follow the row before it: rows were removed, inserted or reordered"
            ),
            AuditProblem::SequenceGap { expected, found } => write!(
                f,
                "audit row {expected} is missing (the next row found is {found})"
            ),
            AuditProblem::HeadMismatch { head_seq, last_seq } => write!(
                f,
                "the audit chain head names row {head_seq} but the last row is {last_seq}"
            ),
            AuditProblem::Truncated {
                checkpoint_seq,
                last_seq,
            } => write!(
                f,
                "the audit chain ends at row {last_seq} but a checkpoint proves it reached row {checkpoint_seq}: rows were removed from the end"
            ),
            AuditProblem::CheckpointMismatch { seq } => write!(
                f,
                "audit row {seq} differs from the checkpoint: the history up to it was rewritten"
            ),
        }
    }
}

/// The result of verifying the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditVerification {
    /// Rows read.
    pub rows_checked: u64,
    /// The last good row's sequence number.
    pub last_seq: i64,
    /// The last good row's hash.
    pub last_hash: String,
    /// The first problem, if any.
    pub problem: Option<AuditProblem>,
}

impl AuditVerification {
    /// Whether no problem was found.
    pub fn is_intact(&self) -> bool {
        self.problem.is_none()
    }
}

/// Recomputes the whole chain in order and reports the first problem: a row whose hash
/// does not match, a broken link, a gap, a head that does not name the last row, and —
/// given a checkpoint — a chain shorter than it or different at its position.
///
/// # Errors
/// From the catalog (reading); problems in the chain are not errors but the result.
pub async fn verify(
    tx: &mut Tx,
    checkpoint: Option<&AuditCheckpoint>,
) -> Result<AuditVerification, AppError> {
    let mut result = AuditVerification {
        rows_checked: 0,
        last_seq: 0,
        last_hash: GENESIS_HASH.to_owned(),
        problem: None,
    };
    let mut checkpoint_seen = checkpoint.is_none_or(|checkpoint| checkpoint.seq == 0);
    'pages: loop {
        let rows = tx.audit_rows_after(result.last_seq, PAGE).await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            result.rows_checked += 1;
            let problem = if row.seq != result.last_seq + 1 {
                Some(AuditProblem::SequenceGap {
                    expected: result.last_seq + 1,
                    found: row.seq,
                })
            } else if row.prev_hash != result.last_hash {
                Some(AuditProblem::BrokenLink { seq: row.seq })
            } else if row_hash(&row) != row.hash {
                Some(AuditProblem::HashMismatch { seq: row.seq })
            } else {
                None
            };
            if problem.is_some() {
                result.problem = problem;
                break 'pages;
            }
            if let Some(checkpoint) = checkpoint
                && checkpoint.seq == row.seq
            {
                checkpoint_seen = true;
                if checkpoint.hash != row.hash {
                    result.problem = Some(AuditProblem::CheckpointMismatch { seq: row.seq });
                    break 'pages;
                }
            }
            result.last_seq = row.seq;
            result.last_hash = row.hash;
        }
    }
    if result.problem.is_some() {
        return Ok(result);
    }
    if let Some(checkpoint) = checkpoint
        && !checkpoint_seen
    {
        result.problem = Some(AuditProblem::Truncated {
            checkpoint_seq: checkpoint.seq,
            last_seq: result.last_seq,
        });
        return Ok(result);
    }
    let (head_seq, head_hash) = tx.audit_head().await?;
    if head_seq != result.last_seq || head_hash != result.last_hash {
        result.problem = Some(AuditProblem::HeadMismatch {
            head_seq,
            last_seq: result.last_seq,
        });
    }
    Ok(result)
}

impl super::App {
    /// Verifies the whole audit chain (and, given one, against a checkpoint kept
    /// elsewhere). Problems are reported in the result, not as errors.
    ///
    /// # Errors
    /// Catalog errors while reading.
    pub async fn verify_audit(
        &self,
        checkpoint: Option<&AuditCheckpoint>,
    ) -> Result<AuditVerification, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        verify(&mut tx, checkpoint).await
    }

    /// Exports the chain head as a checkpoint, after verifying the chain: a checkpoint of
    /// a broken chain would vouch for the damage.
    ///
    /// # Errors
    /// [`AppError::Conflict`] when the chain is broken (the message names the first bad
    /// row); catalog errors.
    pub async fn audit_checkpoint(&self, now: DateTime<Utc>) -> Result<AuditCheckpoint, AppError> {
        let verification = self.verify_audit(None).await?;
        if let Some(problem) = verification.problem {
            return Err(AppError::Conflict(format!(
                "the audit chain is broken, refusing to checkpoint it: {problem}"
            )));
        }
        Ok(AuditCheckpoint {
            format: CHECKPOINT_FORMAT.to_owned(),
            seq: verification.last_seq,
            hash: verification.last_hash,
            exported_at: now,
        })
    }

    /// A page of the whole trail: at most `limit` rows after sequence number `after`.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn audit_rows(&self, after: i64, limit: u32) -> Result<Vec<AuditRow>, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        Ok(tx.audit_rows_after(after, limit).await?)
    }

    /// Every audit row about one entity (`request`, `server`, …), oldest first.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn audit_trail(
        &self,
        entity: &str,
        entity_id: &str,
    ) -> Result<Vec<AuditRow>, AppError> {
        let mut tx = self.catalog().begin_read().await?;
        Ok(tx.audit_rows_for(entity, entity_id).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, prev: &str) -> AuditRow {
        let mut row = AuditRow {
            seq,
            at: "2026-01-05T01:30:00.000000Z".into(),
            actor: "kasi".into(),
            role: Some("KASI_INFRAS".into()),
            action: "request.decide".into(),
            entity: "request".into(),
            entity_id: "7".into(),
            before_json: Some("{\"a\":1}".into()),
            after_json: None,
            prev_hash: prev.into(),
            hash: String::new(),
        };
        row.hash = row_hash(&row);
        row
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = row(1, GENESIS_HASH);
        let variants: Vec<AuditRow> = vec![
            AuditRow {
                seq: 2,
                ..base.clone()
            },
            AuditRow {
                prev_hash: "1".repeat(64),
                ..base.clone()
            },
            AuditRow {
                at: "2026-01-05T01:30:00.000001Z".into(),
                ..base.clone()
            },
            AuditRow {
                actor: "kasj".into(),
                ..base.clone()
            },
            AuditRow {
                role: None,
                ..base.clone()
            },
            AuditRow {
                action: "request.decidE".into(),
                ..base.clone()
            },
            AuditRow {
                entity: "server".into(),
                ..base.clone()
            },
            AuditRow {
                entity_id: "8".into(),
                ..base.clone()
            },
            AuditRow {
                before_json: None,
                ..base.clone()
            },
            AuditRow {
                after_json: Some(String::new()),
                ..base.clone()
            },
        ];
        for variant in variants {
            assert_ne!(row_hash(&variant), base.hash, "{variant:?}");
        }
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let a = AuditRow {
            actor: "ab".into(),
            action: "c".into(),
            ..row(1, GENESIS_HASH)
        };
        let b = AuditRow {
            actor: "a".into(),
            action: "bc".into(),
            ..row(1, GENESIS_HASH)
        };
        assert_ne!(row_hash(&a), row_hash(&b));
        // An absent value and an empty one differ.
        let c = AuditRow {
            after_json: None,
            ..row(1, GENESIS_HASH)
        };
        let d = AuditRow {
            after_json: Some(String::new()),
            ..row(1, GENESIS_HASH)
        };
        assert_ne!(row_hash(&c), row_hash(&d));
    }

    #[test]
    fn the_hash_is_pinned() {
        // A golden value: if this changes, existing chains no longer verify — that is a
        // new chain format (a new CHAIN_CONTEXT), never a refactoring.
        assert_eq!(
            row(1, GENESIS_HASH).hash,
            "64c0301779239d55e2bf0059ccf50f1ae41b027371516c8cc0578566c570af3d"
        );
    }

    #[test]
    fn checkpoints_round_trip_and_reject_other_formats() {
        let checkpoint = AuditCheckpoint {
            format: CHECKPOINT_FORMAT.into(),
            seq: 12,
            hash: "ab".repeat(32),
            exported_at: DateTime::parse_from_rfc3339("2026-01-05T01:30:00Z")
                .unwrap()
                .with_timezone(&Utc),
        };
        assert_eq!(
            AuditCheckpoint::from_json(&checkpoint.to_json()).unwrap(),
            checkpoint
        );
        let other = checkpoint.to_json().replace(CHECKPOINT_FORMAT, "v0");
        assert!(AuditCheckpoint::from_json(&other).is_err());
        assert!(AuditCheckpoint::from_json("{").is_err());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.checkpoint.json");
        checkpoint.write_file(&path).unwrap();
        assert_eq!(AuditCheckpoint::read_file(&path).unwrap(), checkpoint);
    }
}
