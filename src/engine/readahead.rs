//! Reading data blobs in an order known in advance, one request for many.
//!
//! A restore streamed to an agent asks for its chunks one by one, file after file.
//! Read one by one, each is a request of its own to the store (an HTTP request on S3).
//! Backups write a tree's chunks into packs in walk order, so the chunks asked for next
//! mostly sit beside each other in one pack: [`ReadAhead`] reads such a run of
//! neighbours with one ranged read and holds their envelopes until they are asked for.
//! Held envelopes are bounded ([`MAX_HELD`]); anything that does not fit, or fails to
//! open, is read on its own with [`Repository::load_blob_payload`]'s retries.

use std::collections::HashMap;

use bytes::Bytes;

use super::error::Result;
use super::id::{BlobId, BlobType, PackId};
use super::index::{Index, Location};
use super::pack::open_blob_payload;
use super::repo::Repository;

/// How far ahead of the chunk asked for the plan is searched for neighbours.
const LOOKAHEAD: usize = 4096;
/// Unneeded bytes between two neighbours read rather than split into two requests.
const MAX_GAP: u64 = 256 << 10;
/// The most one read spans.
const MAX_SPAN: u64 = 16 << 20;
/// The most envelopes held at once, waiting to be asked for.
pub const MAX_HELD: usize = 64 << 20;

/// Data blob payloads in the order of a plan (see the module documentation).
pub struct ReadAhead<'a> {
    repo: &'a Repository,
    index: &'a Index,
    /// The plan, each blob with where the index puts it.
    plan: Vec<(BlobId, Option<(PackId, Location)>)>,
    /// The plan's position after the last chunk asked for.
    next: usize,
    held: HashMap<BlobId, Bytes>,
    held_bytes: usize,
    requests: u64,
}

impl<'a> ReadAhead<'a> {
    /// A reader for the data blobs of `plan`, which lists them in the order they will
    /// be asked for (repeats allowed; a blob asked for out of the plan is read alone).
    #[must_use]
    pub fn new(repo: &'a Repository, index: &'a Index, plan: Vec<BlobId>) -> Self {
        Self {
            repo,
            index,
            plan: plan.into_iter().map(|id| (id, index.get(&id))).collect(),
            next: 0,
            held: HashMap::new(),
            held_bytes: 0,
            requests: 0,
        }
    }

    /// Reads from the store so far (ranged reads of several blobs and single ones).
    #[must_use]
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Data blob `id`'s payload, still compressed, and its plaintext length (as
    /// [`Repository::load_blob_payload`]).
    ///
    /// # Errors
    /// As [`Repository::load_blob_payload`].
    pub fn payload(&mut self, id: &BlobId) -> Result<(Vec<u8>, u32)> {
        self.pass(id);
        let envelope = match self.held.remove(id) {
            Some(envelope) => {
                self.held_bytes -= envelope.len();
                Some(envelope)
            }
            None => self.read_run(id),
        };
        if let (Some(envelope), Some((_, loc))) = (envelope, self.index.get(id))
            && let Ok(payload) = open_blob_payload(self.repo.keys(), BlobType::Data, id, &envelope)
        {
            return Ok((payload, loc.raw_length));
        }
        // Alone, with the repository's retries and its own account of what is wrong.
        self.requests += 1;
        self.repo.load_blob_payload(self.index, BlobType::Data, id)
    }

    /// Moves the plan's position past `id`, asked for now or not needed after all (a
    /// file the target already holds): what is read ahead is what comes after it.
    pub fn pass(&mut self, id: &BlobId) {
        if let Some(at) = self.plan[self.next..]
            .iter()
            .take(LOOKAHEAD)
            .position(|(planned, _)| planned == id)
        {
            self.next += at + 1;
        }
    }

    /// Reads `id` with the neighbours the plan asks for next in one request; keeps the
    /// neighbours' envelopes and returns `id`'s. `None` when `id` is better read alone.
    fn read_run(&mut self, id: &BlobId) -> Option<Bytes> {
        let (pack, first) = self.index.get(id)?;
        if first.ty != BlobType::Data {
            return None;
        }
        if self.held_bytes > MAX_HELD / 2 {
            self.forget_passed();
        }
        let start = u64::from(first.offset);
        let mut after: Vec<(BlobId, Location)> = self.plan[self.next..]
            .iter()
            .take(LOOKAHEAD)
            .filter_map(|(planned, place)| {
                let (in_pack, loc) = (*place)?;
                (in_pack == pack
                    && loc.ty == BlobType::Data
                    && u64::from(loc.offset) > start
                    && !self.held.contains_key(planned))
                .then_some((*planned, loc))
            })
            .collect();
        after.sort_by_key(|(_, loc)| loc.offset);
        after.dedup_by_key(|(planned, _)| *planned);
        let mut end = start + u64::from(first.length);
        let mut run = Vec::new();
        for (planned, loc) in after {
            let (offset, length) = (u64::from(loc.offset), u64::from(loc.length));
            if offset < end {
                continue;
            }
            if offset - end > MAX_GAP
                || offset + length - start > MAX_SPAN
                || self.held_bytes + (offset + length - start) as usize > MAX_HELD
            {
                break;
            }
            end = offset + length;
            run.push((planned, loc));
        }
        if run.is_empty() {
            return None;
        }
        self.requests += 1;
        let bytes = self.repo.read_pack_range(&pack, start..end).ok()?;
        if bytes.len() as u64 != end - start {
            return None;
        }
        let slice = |loc: &Location| {
            let from = (u64::from(loc.offset) - start) as usize;
            bytes.slice(from..from + loc.length as usize)
        };
        for (planned, loc) in &run {
            let envelope = slice(loc);
            self.held_bytes += envelope.len();
            self.held.insert(*planned, envelope);
        }
        Some(slice(&first))
    }

    /// Drops held envelopes the plan no longer asks for soon (their file failed, or
    /// they were asked for out of order), so they do not stop reading ahead.
    fn forget_passed(&mut self) {
        let soon: std::collections::HashSet<&BlobId> = self.plan[self.next..]
            .iter()
            .take(LOOKAHEAD)
            .map(|(id, _)| id)
            .collect();
        let before = self.held.len();
        self.held.retain(|id, _| soon.contains(id));
        if self.held.len() != before {
            self.held_bytes = self.held.values().map(Bytes::len).sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::format::decode_blob_payload;
    use crate::engine::packer::Packer;
    use crate::engine::repo::TEST_OPTIONS;
    use crate::engine::store::{Store, StoreOptions};

    /// A local repository holding `blobs` data blobs of a few KiB each, in one pack,
    /// with its index and the blobs as written.
    struct Fixture {
        repo: Repository,
        index: Index,
        blobs: Vec<(BlobId, Vec<u8>)>,
        dir: tempfile::TempDir,
        _runtime: tokio::runtime::Runtime,
    }

    fn fixture(blobs: usize) -> Fixture {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap(), &StoreOptions::default()).unwrap();
        let repo = Repository::init(runtime.handle().clone(), store, b"pw", &TEST_OPTIONS).unwrap();
        let packer = Packer::new(&repo, 1, None);
        let mut written = Vec::new();
        for n in 0..blobs {
            let data = format!("blob {n} ").repeat(300 + n).into_bytes();
            let id = repo.blob_id(&data);
            packer.add(BlobType::Data, id, &data).unwrap();
            written.push((id, data));
        }
        packer.finish().unwrap();
        let (index, _) = repo.load_index().unwrap();
        Fixture {
            repo,
            index,
            blobs: written,
            dir,
            _runtime: runtime,
        }
    }

    fn plain(payload: (Vec<u8>, u32)) -> Vec<u8> {
        decode_blob_payload(&payload.0, payload.1 as usize).unwrap()
    }

    #[test]
    fn neighbours_in_a_pack_come_with_one_read_and_each_payload_is_its_own() {
        // Bound by name: the runtime and directory must outlive the repository's use.
        let Fixture {
            repo,
            index,
            blobs,
            dir: _dir,
            _runtime,
        } = fixture(200);
        // In pack order, with a repeat and one blob skipped (its file failed before it).
        let mut plan: Vec<BlobId> = blobs.iter().map(|(id, _)| *id).collect();
        plan.insert(50, blobs[10].0);
        let mut ahead = ReadAhead::new(&repo, &index, plan.clone());
        for (n, id) in plan.iter().enumerate() {
            if n == 120 {
                continue;
            }
            let data = &blobs.iter().find(|(blob, _)| blob == id).unwrap().1;
            assert_eq!(&plain(ahead.payload(id).unwrap()), data, "blob {n}");
        }
        // A blob asked for again out of the plan is read alone.
        assert_eq!(plain(ahead.payload(&blobs[3].0).unwrap()), blobs[3].1);
        assert!(
            ahead.requests() <= 4,
            "{} reads for 201 blobs of one pack",
            ahead.requests()
        );
        assert!(ahead.held_bytes <= MAX_HELD);
    }

    #[test]
    fn chunks_passed_over_do_not_stop_reading_ahead() {
        let Fixture {
            repo,
            index,
            blobs,
            dir: _dir,
            _runtime,
        } = fixture(200);
        // Between two halves, files the target already holds: more chunks than the
        // look-ahead searches, never asked for.
        let held_by_target = vec![blobs[0].0; LOOKAHEAD + 10];
        let plan: Vec<BlobId> = blobs[..100]
            .iter()
            .map(|(id, _)| *id)
            .chain(held_by_target.iter().copied())
            .chain(blobs[100..].iter().map(|(id, _)| *id))
            .collect();
        let mut ahead = ReadAhead::new(&repo, &index, plan);
        for (id, data) in &blobs[..100] {
            assert_eq!(&plain(ahead.payload(id).unwrap()), data);
        }
        for id in &held_by_target {
            ahead.pass(id);
        }
        let before = ahead.requests();
        for (id, data) in &blobs[100..] {
            assert_eq!(&plain(ahead.payload(id).unwrap()), data);
        }
        assert!(
            ahead.requests() - before <= 3,
            "{} reads for the 100 blobs after the pass",
            ahead.requests() - before
        );
    }

    #[test]
    fn a_damaged_blob_fails_alone_and_its_neighbours_still_read() {
        let Fixture {
            repo,
            index,
            blobs,
            dir,
            _runtime,
        } = fixture(40);
        let (pack, loc) = index.get(&blobs[7].0).unwrap();
        let path = dir
            .path()
            .join(crate::engine::repo::pack_key(&pack).trim_start_matches('/'));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[loc.offset as usize + 20] ^= 0x40;
        let mut permissions = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o600);
        std::fs::set_permissions(&path, permissions).unwrap();
        std::fs::write(&path, bytes).unwrap();
        let mut ahead = ReadAhead::new(&repo, &index, blobs.iter().map(|(id, _)| *id).collect());
        for (n, (id, data)) in blobs.iter().enumerate() {
            match ahead.payload(id) {
                Ok(payload) => {
                    assert_ne!(n, 7, "the damaged blob must not open");
                    assert_eq!(&plain(payload), data);
                }
                Err(error) => {
                    assert_eq!(n, 7, "{error}");
                    assert!(error.is_damage(), "{error}");
                }
            }
        }
    }
}
