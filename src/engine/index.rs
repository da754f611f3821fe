//! The index: which pack holds each blob.
//!
//! On storage, `index/<id>` objects each list some packs with their blobs.
//! Backups write one after every few packs land (never before), so an
//! interrupted backup's uploaded chunks are found again by the next run.
//! Prune writes a consolidated index that names the objects it supersedes.
//!
//! In memory, [`Index`] keeps a hash map from blob id to a 17-byte location
//! plus a pack table: about 60 bytes per blob including hash-map overhead
//! (a million 1 MiB chunks — a terabyte of unique data — costs ~60 MB).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::id::{BlobId, BlobType, IndexId, PackId};
use super::pack::PackEntry;

/// An `index/<id>` object's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexFile {
    /// Encoding version (1).
    pub version: u8,
    /// Packs and their blobs.
    pub packs: Vec<IndexPack>,
    /// Index objects whose content this one replaces (written by prune).
    pub supersedes: Vec<IndexId>,
}

/// One pack in an index object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexPack {
    /// The pack.
    pub id: PackId,
    /// Its blobs.
    pub blobs: Vec<PackEntry>,
}

/// Where a blob lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// Position in the pack table.
    pub pack: u32,
    /// Envelope offset.
    pub offset: u32,
    /// Envelope length.
    pub length: u32,
    /// Plaintext length.
    pub raw_length: u32,
    /// Blob type.
    pub ty: BlobType,
}

/// The in-memory index.
#[derive(Clone, Debug, Default)]
pub struct Index {
    packs: Vec<PackId>,
    pack_pos: HashMap<PackId, u32>,
    blobs: HashMap<BlobId, Location>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add every entry of one pack. A blob already known keeps its first
    /// location (duplicates across packs are harmless and pruned later).
    pub fn add_pack(&mut self, pack: PackId, entries: &[PackEntry]) {
        let pos = *self.pack_pos.entry(pack).or_insert_with(|| {
            self.packs.push(pack);
            (self.packs.len() - 1) as u32
        });
        self.blobs.reserve(entries.len());
        for e in entries {
            self.blobs.entry(e.id).or_insert(Location {
                pack: pos,
                offset: e.offset,
                length: e.length,
                raw_length: e.raw_length,
                ty: e.ty,
            });
        }
    }

    /// Merge an index object.
    pub fn add_file(&mut self, f: &IndexFile) {
        for p in &f.packs {
            self.add_pack(p.id, &p.blobs);
        }
    }

    /// Look a blob up.
    pub fn get(&self, id: &BlobId) -> Option<(PackId, Location)> {
        self.blobs
            .get(id)
            .map(|l| (self.packs[l.pack as usize], *l))
    }

    /// Whether a blob is indexed.
    pub fn contains(&self, id: &BlobId) -> bool {
        self.blobs.contains_key(id)
    }

    /// Number of blobs.
    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    /// Whether there are no blobs.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Every pack that holds at least one indexed blob.
    pub fn packs(&self) -> &[PackId] {
        &self.packs
    }

    /// Iterate over all blobs and their pack.
    pub fn iter(&self) -> impl Iterator<Item = (&BlobId, PackId, &Location)> {
        self.blobs
            .iter()
            .map(|(id, l)| (id, self.packs[l.pack as usize], l))
    }

    /// Blobs grouped by pack, as index-file entries.
    pub fn by_pack(&self) -> HashMap<PackId, Vec<PackEntry>> {
        let mut out: HashMap<PackId, Vec<PackEntry>> = HashMap::new();
        for (id, pack, l) in self.iter() {
            out.entry(pack).or_default().push(PackEntry {
                ty: l.ty,
                id: *id,
                offset: l.offset,
                length: l.length,
                raw_length: l.raw_length,
            });
        }
        for v in out.values_mut() {
            v.sort_by_key(|e| e.offset);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::crypto::{Keys, MasterSecret};
    use crate::engine::format::{ObjectKind, open_postcard, seal_postcard};
    use crate::engine::id::random_bytes;
    use proptest::prelude::*;

    fn entry(i: u32) -> PackEntry {
        PackEntry {
            ty: if i.is_multiple_of(3) {
                BlobType::Tree
            } else {
                BlobType::Data
            },
            id: BlobId(random_bytes()),
            offset: i * 100,
            length: 90,
            raw_length: 80 + i,
        }
    }

    #[test]
    fn first_location_wins_and_lookup_works() {
        let mut idx = Index::new();
        let e = entry(1);
        let p1 = PackId(random_bytes());
        let p2 = PackId(random_bytes());
        idx.add_pack(p1, &[e]);
        idx.add_pack(p2, &[e]);
        assert_eq!(idx.get(&e.id).unwrap().0, p1);
        assert_eq!(idx.len(), 1);
        assert_eq!(idx.packs().len(), 2);
    }

    proptest! {
        #[test]
        fn index_file_round_trip(n in 0u32..50, flip in any::<usize>()) {
            let k = Keys::from_secret(MasterSecret::generate());
            let f = IndexFile { version: 1, packs: vec![IndexPack { id: PackId(random_bytes()), blobs: (0..n).map(entry).collect() }], supersedes: vec![IndexId(random_bytes())] };
            let sealed = seal_postcard(&k, ObjectKind::Index, &f);
            let back: IndexFile = open_postcard(&k, ObjectKind::Index, "index", &sealed).unwrap();
            prop_assert_eq!(&back, &f);
            let mut bad = sealed.clone();
            let i = flip % bad.len();
            bad[i] ^= 0x80;
            prop_assert!(open_postcard::<IndexFile>(&k, ObjectKind::Index, "index", &bad).is_err());
        }
    }
}
