//! Pack files: many encrypted blobs in one object, with an encrypted header
//! at the end listing them.
//!
//! Layout (see `docs/FORMAT.md`):
//!
//! ```text
//! blob_0 ‖ … ‖ blob_n ‖ sealed_header ‖ header_len:u32le ‖ "CDGPACK1"
//! ```
//!
//! Each blob is a sealed envelope whose associated data binds its type and
//! id; the header repeats what the index holds, so an index can be rebuilt
//! from the packs alone (`cadang repair index`).

use serde::{Deserialize, Serialize};

use super::crypto::Keys;
use super::error::{Error, Result};
use super::format::{ObjectKind, blob_aad, encode_blob_payload, open_postcard, seal_postcard};
use super::id::{BlobId, BlobType, PackId};

/// Trailer magic of a pack.
pub const PACK_MAGIC: &[u8; 8] = b"CDGPACK1";
const TRAILER_LEN: usize = 12;

/// One blob's place inside a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackEntry {
    /// Data or tree.
    pub ty: BlobType,
    /// Keyed hash of the plaintext.
    pub id: BlobId,
    /// Byte offset of the envelope in the pack.
    pub offset: u32,
    /// Envelope length (nonce, ciphertext, tag).
    pub length: u32,
    /// Length of the plaintext after decompression.
    pub raw_length: u32,
}

#[derive(Serialize, Deserialize)]
struct PackHeader {
    version: u8,
    entries: Vec<PackEntry>,
}

/// Accumulates blobs into one pack.
pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
    scratch: Vec<u8>,
}

impl PackBuilder {
    /// An empty pack with room for `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
            entries: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// An empty pack written into `buf` (a buffer of an earlier pack, kept so that its
    /// memory is not mapped and zeroed again for every pack).
    pub fn with_buffer(mut buf: Vec<u8>) -> Self {
        buf.clear();
        Self {
            buf,
            entries: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Make room for `n` more bytes without the allocator's doubling
    /// overshooting far past one pack (memory stays about one pack per builder).
    pub fn reserve_for(&mut self, n: usize, pack_size: usize) {
        let need = self.buf.len() + n;
        if need > self.buf.capacity() {
            let want = need
                .max(self.buf.capacity() * 2)
                .min(pack_size + n + 64 * 1024)
                .max(need);
            self.buf.reserve_exact(want - self.buf.len());
        }
    }

    /// Bytes of blob data so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Compress (when it helps), encrypt and append one blob. Returns the
    /// number of bytes the blob takes in the pack.
    pub fn add(&mut self, keys: &Keys, ty: BlobType, id: BlobId, data: &[u8], level: i32) -> usize {
        self.scratch.clear();
        encode_blob_payload(data, level, &mut self.scratch);
        let offset = self.buf.len();
        keys.seal_append(&blob_aad(ty, &id), &self.scratch, &mut self.buf);
        let length = self.buf.len() - offset;
        self.entries.push(PackEntry {
            ty,
            id,
            offset: offset as u32,
            length: length as u32,
            raw_length: data.len() as u32,
        });
        length
    }

    /// Append an already sealed envelope (used by copy and repack when the
    /// keys are shared, so nothing is re-encrypted).
    pub fn add_sealed(&mut self, ty: BlobType, id: BlobId, envelope: &[u8], raw_length: u32) {
        let offset = self.buf.len();
        self.buf.extend_from_slice(envelope);
        self.entries.push(PackEntry {
            ty,
            id,
            offset: offset as u32,
            length: envelope.len() as u32,
            raw_length,
        });
    }

    /// Seal the header and return the pack's bytes, id and entries.
    pub fn finish(mut self, keys: &Keys) -> (PackId, Vec<u8>, Vec<PackEntry>) {
        let header = seal_postcard(
            keys,
            ObjectKind::PackHeader,
            &PackHeader {
                version: 1,
                entries: self.entries.clone(),
            },
        );
        self.buf.extend_from_slice(&header);
        self.buf
            .extend_from_slice(&(header.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(PACK_MAGIC);
        let id = PackId(*blake3::hash(&self.buf).as_bytes());
        (id, self.buf, self.entries)
    }
}

/// Verify a whole pack's bytes against its name and read its header.
///
/// # Errors
/// `Error::Corrupt` describing the first problem: wrong hash, bad trailer,
/// header failing authentication, or entries pointing outside the pack.
pub fn read_pack_header(keys: &Keys, id: &PackId, bytes: &[u8]) -> Result<Vec<PackEntry>> {
    let what = format!("pack {}", id.short());
    if *blake3::hash(bytes).as_bytes() != id.0 {
        return Err(Error::corrupt(
            &what,
            "content does not match its name (hash mismatch)",
        ));
    }
    parse_header(keys, &what, bytes)
}

/// Read a pack's header without checking the pack hash (for salvage).
///
/// # Errors
/// As [`read_pack_header`], minus the hash check.
pub fn parse_header(keys: &Keys, what: &str, bytes: &[u8]) -> Result<Vec<PackEntry>> {
    if bytes.len() < TRAILER_LEN || &bytes[bytes.len() - 8..] != PACK_MAGIC {
        return Err(Error::corrupt(
            what,
            "missing pack trailer (truncated or not a pack)",
        ));
    }
    let hlen = bytes[..bytes.len() - 8]
        .last_chunk::<4>()
        .map(|length| u32::from_le_bytes(*length) as usize)
        .ok_or_else(|| Error::corrupt(what, "missing pack header length"))?;
    let body_end = bytes
        .len()
        .checked_sub(TRAILER_LEN + hlen)
        .ok_or_else(|| Error::corrupt(what, "header length exceeds pack size"))?;
    let header: PackHeader = open_postcard(
        keys,
        ObjectKind::PackHeader,
        what,
        &bytes[body_end..bytes.len() - TRAILER_LEN],
    )?;
    if header.version != 1 {
        return Err(Error::corrupt(
            what,
            format!("unknown pack header version {}", header.version),
        ));
    }
    for e in &header.entries {
        let end = e.offset as u64 + e.length as u64;
        if end > body_end as u64 {
            return Err(Error::corrupt(
                what,
                format!("blob {} points past the pack body", e.id.short()),
            ));
        }
    }
    Ok(header.entries)
}

/// Decrypt one blob envelope and return its payload (codec byte and data, as
/// [`super::format::decode_blob_payload`] reads it) without decompressing it. The
/// envelope's authentication binds it to `ty` and `id`; whoever decodes the payload
/// checks the plaintext against `id` (the agent, for a restore streamed to it).
///
/// # Errors
/// `Error::Corrupt` naming the blob when authentication fails.
pub fn open_blob_payload(
    keys: &Keys,
    ty: BlobType,
    id: &BlobId,
    envelope: &[u8],
) -> Result<Vec<u8>> {
    keys.open(
        &format!("{ty} blob {}", id.short()),
        &blob_aad(ty, id),
        envelope,
    )
}

/// Decrypt, decompress and verify one blob envelope against its expected id.
///
/// # Errors
/// `Error::Corrupt` naming the blob when authentication, decompression or the
/// keyed hash check fails.
pub fn open_blob(
    keys: &Keys,
    ty: BlobType,
    id: &BlobId,
    raw_length: u32,
    envelope: &[u8],
) -> Result<Vec<u8>> {
    with_blob(keys, ty, id, raw_length, envelope, <[u8]>::to_vec)
}

/// Decrypt, decompress and verify a blob, handing the plaintext to `f` without
/// keeping it: the envelope is decrypted into, and the payload decompressed into,
/// buffers this thread reuses, so readers that only write or check the plaintext
/// (restore, `check --read-data`) do not have the kernel map and zero two fresh
/// buffers per blob. `f` must not open another blob on the same thread.
///
/// # Errors
/// As [`open_blob`]; `f` is called only for a blob that passed every check.
pub fn with_blob<R>(
    keys: &Keys,
    ty: BlobType,
    id: &BlobId,
    raw_length: u32,
    envelope: &[u8],
    f: impl FnOnce(&[u8]) -> R,
) -> Result<R> {
    thread_local! {
        static SEALED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SEALED.with(|payload| {
        let mut payload = payload.borrow_mut();
        keys.open_into(
            &format!("{ty} blob {}", id.short()),
            &blob_aad(ty, id),
            envelope,
            &mut payload,
        )?;
        with_checked_plaintext(keys, ty, id, raw_length, &payload, f)
    })
}

/// Decompresses a blob payload already decrypted (as [`open_blob_payload`] gives it),
/// checks the plaintext against `id` and hands it to `f` without keeping it.
///
/// # Errors
/// `Error::Corrupt` naming the blob when decompression or the keyed hash check fails;
/// `f` is called only for a blob that passed both.
pub fn with_checked_plaintext<R>(
    keys: &Keys,
    ty: BlobType,
    id: &BlobId,
    raw_length: u32,
    payload: &[u8],
    f: impl FnOnce(&[u8]) -> R,
) -> Result<R> {
    let what = || format!("{ty} blob {}", id.short());
    super::format::with_blob_plaintext(payload, raw_length as usize, |data| {
        if keys.blob_id(data) == *id {
            Ok(f(data))
        } else {
            Err(Error::corrupt(what(), "content does not match its id"))
        }
    })
    .map_err(|e| Error::corrupt(what(), e))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::crypto::MasterSecret;
    use proptest::prelude::*;

    fn keys() -> Keys {
        Keys::from_secret(MasterSecret::generate())
    }

    #[test]
    fn swapped_blobs_fail_authentication() {
        let k = keys();
        let mut b = PackBuilder::new(0);
        let a_id = k.blob_id(b"aaaa");
        let b_id = k.blob_id(b"bbbb");
        b.add(&k, BlobType::Data, a_id, b"aaaa", 3);
        b.add(&k, BlobType::Data, b_id, b"bbbb", 3);
        let (pid, bytes, entries) = b.finish(&k);
        let hdr = read_pack_header(&k, &pid, &bytes).unwrap();
        assert_eq!(hdr, entries);
        let ea = &bytes[hdr[0].offset as usize..][..hdr[0].length as usize];
        let eb = &bytes[hdr[1].offset as usize..][..hdr[1].length as usize];
        assert_eq!(
            open_blob(&k, BlobType::Data, &a_id, 4, ea).unwrap(),
            b"aaaa"
        );
        // b's ciphertext under a's id, and a data blob read as a tree: both refused
        assert!(open_blob(&k, BlobType::Data, &a_id, 4, eb).is_err());
        assert!(open_blob(&k, BlobType::Tree, &a_id, 4, ea).is_err());
    }

    #[test]
    fn a_pack_written_into_a_used_buffer_holds_only_its_own_blobs() {
        let k = keys();
        let mut first = PackBuilder::new(0);
        first.add(&k, BlobType::Data, k.blob_id(b"old"), b"old", 3);
        let (_, used, _) = first.finish(&k);
        let mut b = PackBuilder::with_buffer(used);
        let id = k.blob_id(b"new blob");
        b.add(&k, BlobType::Data, id, b"new blob", 3);
        let (pid, bytes, entries) = b.finish(&k);
        let hdr = read_pack_header(&k, &pid, &bytes).unwrap();
        assert_eq!(hdr, entries);
        assert_eq!(hdr.len(), 1);
        assert_eq!(hdr[0].offset, 0);
        let env = &bytes[..hdr[0].length as usize];
        assert_eq!(
            open_blob(&k, BlobType::Data, &id, 8, env).unwrap(),
            b"new blob"
        );
    }

    proptest! {
        // The reused-buffer reader gives back what was stored, refuses every
        // damaged envelope without calling its closure, and a refused blob
        // leaves nothing behind for the next one read on the thread.
        #[test]
        fn with_blob_reads_back_and_refuses_damage(blobs in proptest::collection::vec(proptest::collection::vec(0u8..4, 0..5000), 1..6), flip in any::<usize>()) {
            let k = keys();
            let mut b = PackBuilder::new(0);
            for data in &blobs {
                b.add(&k, BlobType::Data, k.blob_id(data), data, 3);
            }
            let (_, bytes, entries) = b.finish(&k);
            for (e, data) in entries.iter().zip(&blobs) {
                let env = &bytes[e.offset as usize..][..e.length as usize];
                let mut bad = env.to_vec();
                let i = flip % bad.len();
                bad[i] ^= 0x10;
                let mut called = false;
                let refused = with_blob(&k, e.ty, &e.id, e.raw_length, &bad, |_| called = true);
                prop_assert!(refused.is_err());
                prop_assert!(!called);
                prop_assert!(open_blob(&k, e.ty, &e.id, e.raw_length, &bad).is_err());
                let read = with_blob(&k, e.ty, &e.id, e.raw_length, env, <[u8]>::to_vec).unwrap();
                prop_assert_eq!(&read, data);
                // A wrong length recorded in the index is refused too.
                prop_assert!(with_blob(&k, e.ty, &e.id, e.raw_length + 1, env, |_| ()).is_err());
            }
        }

        #[test]
        fn pack_round_trip_and_damage(blobs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..8), flip in any::<usize>(), cut in any::<usize>()) {
            let k = keys();
            let mut b = PackBuilder::new(0);
            let mut ids = Vec::new();
            for data in &blobs {
                let id = k.blob_id(data);
                b.add(&k, BlobType::Data, id, data, 3);
                ids.push(id);
            }
            let (pid, bytes, entries) = b.finish(&k);
            let hdr = read_pack_header(&k, &pid, &bytes).unwrap();
            prop_assert_eq!(&hdr, &entries);
            for (e, data) in hdr.iter().zip(&blobs) {
                let env = &bytes[e.offset as usize..][..e.length as usize];
                prop_assert_eq!(&open_blob(&k, e.ty, &e.id, e.raw_length, env).unwrap(), data);
            }
            let mut bad = bytes.clone();
            let i = flip % bad.len();
            bad[i] ^= 1;
            prop_assert!(read_pack_header(&k, &pid, &bad).is_err());
            let t = &bytes[..cut % bytes.len()];
            prop_assert!(read_pack_header(&k, &pid, t).is_err());
            // parse without the hash check must not panic on garbage either
            let _ = parse_header(&k, "x", &bad);
            let _ = parse_header(&k, "x", t);
        }
    }
}
