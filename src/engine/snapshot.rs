//! Snapshots: the commit point of a backup.
//!
//! A snapshot object is written only after every pack and index object it
//! depends on has landed, so a visible snapshot is always fully readable.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::id::{BlobId, IndexId, SnapshotId};

/// A snapshot as stored under `snapshots/<id>` (sealed JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Encoding version (1).
    pub version: u32,
    /// When the snapshot was taken, stamped by the writer that holds the
    /// repository key (never supplied by an untrusted client).
    pub time: DateTime<Utc>,
    /// Host name of the backed-up machine.
    pub hostname: String,
    /// User that ran the backup.
    pub username: String,
    /// The backed-up paths, as given.
    pub paths: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// The snapshot this one was compared against.
    pub parent: Option<SnapshotId>,
    /// Root tree: one node per backed-up path.
    pub tree: BlobId,
    /// Statistics of the run that made it.
    pub summary: SnapshotSummary,
    /// Snapshot this was copied from (copy to another repository).
    #[serde(default)]
    pub original: Option<SnapshotId>,
    /// The snapshot this one replaces without some of its entries (`cadang rewrite`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewritten_from: Option<SnapshotId>,
    /// The index objects the run that made this snapshot wrote. Readers load
    /// them by name, so a snapshot restores at once even on a store whose
    /// listings lag behind its writes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indexes: Vec<IndexId>,
}

/// Statistics recorded with a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotSummary {
    /// Backup start.
    pub backup_start: Option<DateTime<Utc>>,
    /// Backup end.
    pub backup_end: Option<DateTime<Utc>>,
    /// Files seen for the first time.
    pub files_new: u64,
    /// Files whose metadata changed since the parent.
    pub files_changed: u64,
    /// Files unchanged since the parent (not read).
    pub files_unmodified: u64,
    /// Directories.
    pub dirs: u64,
    /// Files that could not be read (skipped).
    pub files_failed: u64,
    /// New data blobs stored.
    pub data_blobs: u64,
    /// New tree blobs stored.
    pub tree_blobs: u64,
    /// Bytes of new blobs before compression.
    pub data_added_raw: u64,
    /// Bytes added to the repository (after dedup, compression, encryption).
    pub data_added: u64,
    /// Files processed in total.
    pub total_files_processed: u64,
    /// Bytes of file content processed in total.
    pub total_bytes_processed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::crypto::{Keys, MasterSecret};
    use crate::engine::format::{ObjectKind, open_json, seal_json};
    use crate::engine::id::random_bytes;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn snapshot_round_trip(host in "[a-z]{1,10}", tags in proptest::collection::vec("[a-z]{1,5}", 0..3), secs in 0i64..4_000_000_000, flip in any::<usize>()) {
            let k = Keys::from_secret(MasterSecret::generate());
            let s = Snapshot {
                version: 1,
                time: DateTime::from_timestamp(secs, 0).unwrap(),
                hostname: host,
                username: "u".into(),
                paths: vec!["/srv".into()],
                tags,
                parent: None,
                tree: BlobId(random_bytes()),
                summary: SnapshotSummary { files_new: 3, ..Default::default() },
                original: None,
                rewritten_from: None,
                indexes: Vec::new(),
            };
            let sealed = seal_json(&k, ObjectKind::Snapshot, &s);
            prop_assert_eq!(open_json::<Snapshot>(&k, ObjectKind::Snapshot, "s", &sealed).unwrap(), s);
            let mut bad = sealed.clone();
            let i = flip % bad.len();
            bad[i] ^= 4;
            prop_assert!(open_json::<Snapshot>(&k, ObjectKind::Snapshot, "s", &bad).is_err());
        }
    }
}
