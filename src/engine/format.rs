//! Encodings of the repository's small objects and of blob payloads.
//!
//! See `docs/FORMAT.md` for the specification; this module is its code.
//! Every persisted encoding carries a version, and every encrypted object
//! binds its kind into the AEAD associated data, so an index can never be
//! passed off as a snapshot, nor a tree blob as a data blob.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::chunker::ChunkerParams;
use super::crypto::{Cipher, Keys};
use super::error::{Error, Result};
use super::id::{BlobId, BlobType};

/// The repository format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Magic at the start of the `config` object (stored in clear with the version,
/// so an unsupported version is reported before any key is tried).
pub const CONFIG_MAGIC: &[u8; 8] = b"CADANGRP";

/// Repository-wide parameters, frozen at `init`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Format version (also stored in clear before the sealed body).
    pub version: u32,
    /// Random repository id, hex.
    pub id: String,
    /// Content-defined chunking parameters.
    pub chunker: ChunkerParams,
    /// zstd level used for new blobs (readers do not need it).
    pub compression_level: i32,
    /// Target pack size in bytes.
    pub pack_size: u32,
    /// AEAD used for every envelope.
    pub cipher: String,
    /// Hash used for blob ids.
    pub id_hash: String,
}

impl RepoConfig {
    /// A config for a new repository with the benchmarked defaults and the
    /// faster cipher on this machine ([`Cipher::preferred`]).
    pub fn new_default() -> Self {
        Self {
            version: FORMAT_VERSION,
            id: hex::encode(super::id::random_bytes::<16>()),
            chunker: ChunkerParams::default(),
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            pack_size: DEFAULT_PACK_SIZE,
            cipher: Cipher::preferred().name().into(),
            id_hash: "blake3-keyed".into(),
        }
    }

    /// Validate values that came from storage.
    ///
    /// # Errors
    /// `Error::Corrupt` or `Error::UnsupportedVersion` naming the bad field.
    pub fn validate(&self) -> Result<()> {
        if self.version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                found: self.version,
                supported: FORMAT_VERSION,
            });
        }
        self.chunker
            .validate()
            .map_err(|e| Error::corrupt("config", e))?;
        if !(1..=22).contains(&self.compression_level) && self.compression_level != 0 {
            return Err(Error::corrupt("config", "compression level outside 0–22"));
        }
        if !(1 << 20..=1 << 30).contains(&self.pack_size) {
            return Err(Error::corrupt("config", "pack size outside 1 MiB – 1 GiB"));
        }
        self.envelope_cipher()?;
        if self.id_hash != "blake3-keyed" {
            return Err(Error::corrupt("config", "unknown id hash"));
        }
        Ok(())
    }

    /// The cipher that seals everything but the config and key slots.
    ///
    /// # Errors
    /// `Error::Corrupt` for a cipher this build does not know.
    pub fn envelope_cipher(&self) -> Result<Cipher> {
        self.cipher
            .parse()
            .map_err(|e: String| Error::corrupt("config", e))
    }
}

/// zstd level 3 by default, chosen by benchmark (README "Performance"):
/// levels 1 and 2 back up 15–20% faster but leave the repository larger than
/// restic's (by 5–8% and 1.3% on the benchmark data).
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;
/// 16 MiB packs by default (restic's default too): one PUT each, few objects
/// per terabyte, and partial reads stay cheap.
pub const DEFAULT_PACK_SIZE: u32 = 16 * 1024 * 1024;

/// Kinds of sealed objects; the name is bound into the AEAD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    /// The `config` object.
    Config,
    /// An `index/<id>` object.
    Index,
    /// A `snapshots/<id>` object.
    Snapshot,
    /// A pack's trailing header.
    PackHeader,
    /// A `prune/<id>` deletion plan.
    PrunePlan,
    /// A `locks/<id>` lease.
    Lock,
}

impl ObjectKind {
    fn aad(self) -> &'static [u8] {
        match self {
            Self::Config => b"cadang v1 config",
            Self::Index => b"cadang v1 index",
            Self::Snapshot => b"cadang v1 snapshot",
            Self::PackHeader => b"cadang v1 pack header",
            Self::PrunePlan => b"cadang v1 prune plan",
            Self::Lock => b"cadang v1 lock",
        }
    }
}

/// Seal a serializable value as JSON (small, evolvable objects).
pub fn seal_json<T: Serialize>(keys: &Keys, kind: ObjectKind, value: &T) -> Vec<u8> {
    let json = serde_json::to_vec(value).expect("engine types always serialize");
    let mut out = vec![1u8];
    keys.seal_append(
        kind.aad(),
        &zstd::bulk::compress(&json, 3).expect("zstd on memory"),
        &mut out,
    );
    out
}

/// Open an object sealed by [`seal_json`].
///
/// # Errors
/// `Error::Corrupt` naming `what` on any authentication or decoding failure.
pub fn open_json<T: DeserializeOwned>(
    keys: &Keys,
    kind: ObjectKind,
    what: &str,
    bytes: &[u8],
) -> Result<T> {
    let plain = open_versioned(keys, kind, what, bytes)?;
    let json = decompress_bounded(&plain, 256 << 20).map_err(|e| Error::corrupt(what, e))?;
    serde_json::from_slice(&json).map_err(|e| Error::corrupt(what, format!("undecodable: {e}")))
}

/// Seal a serializable value with postcard (large, hot objects: index, pack header).
pub fn seal_postcard<T: Serialize>(keys: &Keys, kind: ObjectKind, value: &T) -> Vec<u8> {
    let raw = postcard::to_stdvec(value).expect("engine types always serialize");
    let mut out = vec![1u8];
    keys.seal_append(
        kind.aad(),
        &zstd::bulk::compress(&raw, 3).expect("zstd on memory"),
        &mut out,
    );
    out
}

/// Open an object sealed by [`seal_postcard`].
///
/// # Errors
/// `Error::Corrupt` naming `what` on any authentication or decoding failure.
pub fn open_postcard<T: DeserializeOwned>(
    keys: &Keys,
    kind: ObjectKind,
    what: &str,
    bytes: &[u8],
) -> Result<T> {
    let plain = open_versioned(keys, kind, what, bytes)?;
    let raw = decompress_bounded(&plain, 1 << 30).map_err(|e| Error::corrupt(what, e))?;
    postcard::from_bytes(&raw).map_err(|e| Error::corrupt(what, format!("undecodable: {e}")))
}

fn open_versioned(keys: &Keys, kind: ObjectKind, what: &str, bytes: &[u8]) -> Result<Vec<u8>> {
    match bytes.first() {
        None => Err(Error::corrupt(what, "empty object")),
        Some(1) => keys.open(what, kind.aad(), &bytes[1..]),
        Some(v) => Err(Error::corrupt(
            what,
            format!("unknown object encoding version {v}"),
        )),
    }
}

/// Decompress zstd data, refusing to expand beyond `limit` bytes (a hostile
/// object must not exhaust memory).
pub fn decompress_bounded(data: &[u8], limit: usize) -> std::result::Result<Vec<u8>, String> {
    use std::io::Read;
    let mut dec = zstd::stream::read::Decoder::new(data).map_err(|e| format!("zstd: {e}"))?;
    let mut out = Vec::new();
    (&mut dec)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("zstd: {e}"))?;
    if out.len() > limit {
        return Err(format!("decompresses beyond the {limit}-byte limit"));
    }
    Ok(out)
}

/// Encode the `config` object: clear magic and version, then the body sealed
/// with XChaCha20-Poly1305 whatever the repository's cipher (the body names it).
pub fn encode_config(keys: &Keys, cfg: &RepoConfig) -> Vec<u8> {
    let keys = config_keys(keys);
    let mut out = CONFIG_MAGIC.to_vec();
    out.extend_from_slice(&cfg.version.to_le_bytes());
    out.extend_from_slice(&seal_json(&keys, ObjectKind::Config, cfg));
    out
}

/// The keys a config body is sealed with: the repository's, with XChaCha20-Poly1305.
fn config_keys(keys: &Keys) -> std::borrow::Cow<'_, Keys> {
    if keys.cipher() == Cipher::XChaCha20Poly1305 {
        std::borrow::Cow::Borrowed(keys)
    } else {
        std::borrow::Cow::Owned(keys.clone().with_cipher(Cipher::XChaCha20Poly1305))
    }
}

/// Read the clear version of a `config` object without any key.
///
/// # Errors
/// `Error::Corrupt` when the magic is wrong, `Error::UnsupportedVersion` when
/// the version is newer than this build.
pub fn config_version(bytes: &[u8]) -> Result<u32> {
    if bytes.len() < 12 || &bytes[..8] != CONFIG_MAGIC {
        return Err(Error::corrupt("config", "not a cadang config object"));
    }
    let v = bytes[8..]
        .first_chunk::<4>()
        .map(|version| u32::from_le_bytes(*version))
        .ok_or_else(|| Error::corrupt("config", "no format version"))?;
    if v != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            found: v,
            supported: FORMAT_VERSION,
        });
    }
    Ok(v)
}

/// Decode the `config` object.
///
/// # Errors
/// As [`config_version`], plus `Error::Corrupt` when the body fails.
pub fn decode_config(keys: &Keys, bytes: &[u8]) -> Result<RepoConfig> {
    config_version(bytes)?;
    let cfg: RepoConfig = open_json(
        &config_keys(keys),
        ObjectKind::Config,
        "config",
        &bytes[12..],
    )?;
    cfg.validate()?;
    Ok(cfg)
}

/// Payload codec byte inside a blob's plaintext.
const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;

/// Associated data binding a blob's envelope to its type and id.
pub fn blob_aad(ty: BlobType, id: &BlobId) -> [u8; 48] {
    let mut aad = [0u8; 48];
    aad[..15].copy_from_slice(b"cadang v1 blob ");
    aad[15] = ty as u8;
    aad[16..].copy_from_slice(id.as_bytes());
    aad
}

thread_local! {
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { std::cell::RefCell::new(None) };
}

thread_local! {
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
}

/// A zstd compressor for blobs at `level`. At level 3 (the default) the table of
/// short matches is 16 KiB (chain log 14) instead of zstd's 64 KiB: it stays in
/// the core's cache next to the long-match table, which measured 11–12% faster
/// on the benchmark data and on a tree of shared libraries and 5% faster on
/// source code, for output 0.04–0.9% larger (docs/PERFORMANCE.md).
fn compressor(level: i32) -> std::io::Result<zstd::bulk::Compressor<'static>> {
    let mut comp = zstd::bulk::Compressor::new(level)?;
    if level == 3 {
        comp.set_parameter(zstd::stream::raw::CParameter::ChainLog(14))?;
    }
    Ok(comp)
}

/// Whether `data` is so close to random bytes that compressing it cannot save the
/// 1/32 that [`encode_blob_payload`] asks for, judged from a sample: the byte
/// entropy of 64 windows of 512 bytes spread over the chunk (32 KiB of a 1 MiB
/// chunk, read in microseconds where zstd spends most of a millisecond finding
/// nothing). At 7.9 bits per byte or more, coding the bytes one by one saves at
/// most 1.25%; what the sample cannot see is a chunk that repeats its own random
/// content (two copies of one compressed file inside an archive, closer together
/// than a chunk), which is then stored raw where zstd would have found the copy.
/// Chunks under 64 KiB are always compressed.
fn looks_incompressible(data: &[u8]) -> bool {
    const WINDOW: usize = 512;
    const WINDOWS: usize = 64;
    const MIN_LEN: usize = 64 * 1024;
    if data.len() < MIN_LEN {
        return false;
    }
    let stride = (data.len() - WINDOW) / (WINDOWS - 1);
    let mut counts = [0u32; 256];
    for w in 0..WINDOWS {
        for &b in &data[w * stride..w * stride + WINDOW] {
            counts[usize::from(b)] += 1;
        }
    }
    let n = (WINDOW * WINDOWS) as f64;
    let bits: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    bits >= 7.9
}

/// Encode a blob's plaintext: codec byte then payload. Compression is kept
/// only when it saves at least 1/32 of the size; otherwise the data is stored
/// raw and costs nothing to read back. Data that [looks random](looks_incompressible)
/// is stored raw without trying.
pub fn encode_blob_payload(data: &[u8], level: i32, out: &mut Vec<u8>) {
    let start = out.len();
    if level > 0 && data.len() >= 128 && !looks_incompressible(data) {
        // Compressed straight into `out`; kept only when it saves enough.
        let bound = zstd::zstd_safe::compress_bound(data.len());
        out.reserve(bound + 1);
        out.push(CODEC_ZSTD);
        let written = COMPRESSOR.with(|c| {
            let mut c = c.borrow_mut();
            if c.as_ref().map(|(l, _)| *l) != Some(level) {
                *c = compressor(level).ok().map(|comp| (level, comp));
            }
            let (_, comp) = c.as_mut()?;
            // A cursor at the end: zstd writes after the codec byte, into the
            // capacity reserved above, and sets the length.
            let mut at_end = std::io::Cursor::new(&mut *out);
            at_end.set_position((start + 1) as u64);
            comp.compress_to_buffer(data, &mut at_end).ok()
        });
        if written.is_some_and(|n| n < data.len() - data.len() / 32) {
            return;
        }
        out.truncate(start);
    }
    out.reserve(data.len() + 1);
    out.push(CODEC_RAW);
    out.extend_from_slice(data);
}

/// Hands the plaintext of a blob payload to `f` without keeping it: a raw payload is
/// passed as it is, a compressed one is decompressed into a buffer this thread reuses.
/// For checking a payload prepared elsewhere against its id.
///
/// # Errors
/// As [`decode_blob_payload`].
pub fn with_blob_plaintext<R>(
    payload: &[u8],
    raw_len: usize,
    f: impl FnOnce(&[u8]) -> R,
) -> std::result::Result<R, String> {
    match payload.first() {
        Some(&CODEC_ZSTD) => PLAIN_SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.clear();
            decompress_into(&payload[1..], raw_len, &mut scratch)?;
            Ok(f(&scratch))
        }),
        Some(&CODEC_RAW) if payload.len() - 1 == raw_len => Ok(f(&payload[1..])),
        _ => decode_blob_payload(payload, raw_len).map(|plain| f(&plain)),
    }
}

/// The data of a payload stored uncompressed, or `None` for a compressed or malformed
/// one.
pub fn raw_payload_data(payload: &[u8]) -> Option<&[u8]> {
    match payload.split_first() {
        Some((&CODEC_RAW, data)) => Some(data),
        _ => None,
    }
}

thread_local! {
    static PLAIN_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Decompresses a zstd frame of exactly `raw_len` bytes, appending to `out`, with this
/// thread's decompression context.
fn decompress_into(
    frame: &[u8],
    raw_len: usize,
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    let start = out.len();
    // One byte more than announced, so a frame that decompresses to more is seen.
    out.reserve(raw_len + 1);
    let n = DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?);
        }
        let Some(d) = d.as_mut() else {
            return Err("zstd: no decompression context".to_owned());
        };
        let mut at_end = std::io::Cursor::new(&mut *out);
        at_end.set_position(start as u64);
        d.decompress_to_buffer(frame, &mut at_end)
            .map_err(|e| format!("zstd: {e}"))
    })?;
    let produced = out.len() - start;
    debug_assert_eq!(n, produced);
    if produced != raw_len {
        out.truncate(start);
        return Err(format!(
            "decompressed to {produced} bytes, index says {raw_len}"
        ));
    }
    Ok(())
}

/// Decode a blob payload produced by [`encode_blob_payload`].
///
/// # Errors
/// A message when the codec is unknown or the data does not decompress to
/// exactly `raw_len` bytes.
pub fn decode_blob_payload(payload: &[u8], raw_len: usize) -> std::result::Result<Vec<u8>, String> {
    match payload.first() {
        Some(&CODEC_RAW) if payload.len() - 1 == raw_len => Ok(payload[1..].to_vec()),
        Some(&CODEC_RAW) => Err(format!(
            "stored {} bytes, index says {raw_len}",
            payload.len() - 1
        )),
        Some(&CODEC_ZSTD) => {
            let mut out = Vec::new();
            decompress_into(&payload[1..], raw_len, &mut out)?;
            Ok(out)
        }
        Some(c) => Err(format!("unknown blob codec {c}")),
        None => Err("empty blob payload".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::crypto::MasterSecret;
    use proptest::prelude::*;

    #[test]
    fn config_round_trip_and_version_checks() {
        let k = Keys::from_secret(MasterSecret::generate());
        let cfg = RepoConfig::new_default();
        let enc = encode_config(&k, &cfg);
        assert_eq!(decode_config(&k, &enc).unwrap(), cfg);
        let mut future = enc.clone();
        future[8] = 9;
        assert!(matches!(
            decode_config(&k, &future),
            Err(Error::UnsupportedVersion { found: 9, .. })
        ));
        let other = Keys::from_secret(MasterSecret::generate());
        assert!(matches!(
            decode_config(&other, &enc),
            Err(Error::Corrupt { .. })
        ));
        assert!(decode_config(&k, b"garbage").is_err());
    }

    #[test]
    fn the_config_body_is_sealed_with_xchacha_whatever_cipher_it_names() {
        let secret = MasterSecret::generate();
        let aes = Keys::from_secret(secret.clone()).with_cipher(Cipher::Aes256GcmDerived);
        let mut cfg = RepoConfig::new_default();
        cfg.cipher = Cipher::Aes256GcmDerived.name().into();
        let enc = encode_config(&aes, &cfg);
        // Opened before the cipher is known: with the keys of a fresh key slot.
        let fresh = Keys::from_secret(secret);
        let got = decode_config(&fresh, &enc).unwrap();
        assert_eq!(got.envelope_cipher().unwrap(), Cipher::Aes256GcmDerived);
        assert_eq!(decode_config(&aes, &enc).unwrap(), cfg);
        // Everything else is sealed with the named cipher, and only opens with it.
        let sealed = seal_json(&aes, ObjectKind::Snapshot, &"s");
        assert!(open_json::<String>(&fresh, ObjectKind::Snapshot, "s", &sealed).is_err());
        assert!(open_json::<String>(&aes, ObjectKind::Snapshot, "s", &sealed).is_ok());
        // A cipher this build does not know is refused, by name.
        cfg.cipher = "rot13".into();
        let err = decode_config(&fresh, &encode_config(&fresh, &cfg)).unwrap_err();
        assert!(err.to_string().contains("rot13"), "{err}");
    }

    #[test]
    fn kinds_are_not_interchangeable() {
        let k = Keys::from_secret(MasterSecret::generate());
        let sealed = seal_json(&k, ObjectKind::Index, &vec![1, 2, 3]);
        assert!(open_json::<Vec<i32>>(&k, ObjectKind::Snapshot, "s", &sealed).is_err());
        assert_eq!(
            open_json::<Vec<i32>>(&k, ObjectKind::Index, "i", &sealed).unwrap(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn incompressible_data_is_stored_raw() {
        let mut out = Vec::new();
        encode_blob_payload(&crate::engine::id::random_bytes::<4096>(), 3, &mut out);
        assert_eq!(out[0], CODEC_RAW);
        out.clear();
        encode_blob_payload(&vec![b'a'; 10_000], 3, &mut out);
        assert_eq!(out[0], CODEC_ZSTD);
        assert_eq!(
            decode_blob_payload(&out, 10_000).unwrap(),
            vec![b'a'; 10_000]
        );
        assert!(decode_blob_payload(&out, 9_999).is_err());
    }

    /// What zstd makes of `data` when asked, whatever the sample says.
    fn zstd_saves_enough(data: &[u8]) -> bool {
        let n = zstd::bulk::compress(data, 3).unwrap().len();
        n < data.len() - data.len() / 32
    }

    /// Bytes drawn uniformly from the first `alphabet` values: log2(alphabet) bits
    /// of entropy per byte and nothing for a match finder.
    fn from_alphabet(seed: u64, alphabet: u16, len: usize) -> Vec<u8> {
        let mut stream = blake3::Hasher::new()
            .update(&seed.to_le_bytes())
            .update(&alphabet.to_le_bytes())
            .finalize_xof();
        let mut out = Vec::with_capacity(len);
        let mut block = [0u8; 4096];
        while out.len() < len {
            stream.fill(&mut block);
            out.extend(block.iter().filter(|&&b| u16::from(b) < alphabet));
        }
        out.truncate(len);
        out
    }

    #[test]
    fn random_chunks_are_stored_raw_without_trying_and_nothing_else_is() {
        let random = from_alphabet(7, 256, 1 << 20);
        assert!(looks_incompressible(&random));
        let mut out = Vec::new();
        encode_blob_payload(&random, 3, &mut out);
        assert_eq!(out[0], CODEC_RAW);
        assert_eq!(&out[1..], &random[..]);
        // Compressible chunks are not judged random: text, zeros, and random data
        // with a compressible part anywhere in it (the sample reaches the end).
        let text =
            "INSERT INTO pegawai VALUES (1042, 'Sekretariat Daerah', 2024);\n".repeat(20_000);
        assert!(!looks_incompressible(text.as_bytes()));
        assert!(!looks_incompressible(&vec![0; 1 << 20]));
        for at in [0, 300_000, (1 << 20) - 200_000] {
            let mut mixed = random.clone();
            mixed[at..at + 200_000].fill(b'x');
            assert!(!looks_incompressible(&mixed), "{at}");
            assert!(zstd_saves_enough(&mixed));
        }
        // Small chunks are always tried.
        assert!(!looks_incompressible(&random[..60_000]));
    }

    #[test]
    fn what_the_sample_calls_random_zstd_could_not_have_compressed() {
        // From 6 to 8 bits a byte with nothing to match: zstd's literal coder saves
        // the 1/32 up to about 7.1 bits (an alphabet of 136 here) and gives up
        // above; the sample must never call random what zstd would have compressed.
        let mut judged_random = 0;
        for alphabet in (64..=256).step_by(8) {
            let data = from_alphabet(11, alphabet, 256 * 1024);
            if looks_incompressible(&data) {
                judged_random += 1;
                assert!(!zstd_saves_enough(&data), "alphabet {alphabet}");
            }
        }
        assert!(judged_random >= 2, "{judged_random}");
    }

    #[test]
    fn plaintext_is_checked_in_place_and_a_lying_length_is_refused() {
        let mut out = Vec::new();
        encode_blob_payload(&vec![b'a'; 10_000], 3, &mut out);
        assert_eq!(out[0], CODEC_ZSTD);
        // Longer and shorter than announced: refused, and the reused context and
        // buffer still serve the next chunk.
        for lie in [5_000, 9_999, 10_001, 0] {
            assert!(
                with_blob_plaintext(&out, lie, <[u8]>::len).is_err(),
                "{lie}"
            );
        }
        assert_eq!(with_blob_plaintext(&out, 10_000, <[u8]>::len), Ok(10_000));
        // A raw payload is handed over where it lies.
        let raw = [&[CODEC_RAW][..], b"plain"].concat();
        let at = with_blob_plaintext(&raw, 5, |plain| plain.as_ptr()).unwrap();
        assert_eq!(at, raw[1..].as_ptr());
        assert!(with_blob_plaintext(&raw, 4, <[u8]>::len).is_err());
        assert!(with_blob_plaintext(&[], 0, <[u8]>::len).is_err());
        assert!(with_blob_plaintext(&[9, 1, 2], 2, <[u8]>::len).is_err());
    }

    proptest! {
        #[test]
        fn payloads_append_and_read_back_in_place(
            prefix in proptest::collection::vec(any::<u8>(), 0..64),
            data in proptest::collection::vec(0u8..4, 0..5000),
            level in 0i32..6,
        ) {
            let mut out = prefix.clone();
            encode_blob_payload(&data, level, &mut out);
            prop_assert_eq!(&out[..prefix.len()], &prefix[..]);
            let payload = &out[prefix.len()..];
            prop_assert_eq!(&decode_blob_payload(payload, data.len()).unwrap(), &data);
            prop_assert_eq!(with_blob_plaintext(payload, data.len(), <[u8]>::to_vec).unwrap(), data.clone());
            prop_assert!(with_blob_plaintext(payload, data.len() + 1, <[u8]>::len).is_err());
        }

        #[test]
        fn blob_payload_round_trip(data in proptest::collection::vec(0u8..4, 0..5000), level in 0i32..6) {
            let mut out = Vec::new();
            encode_blob_payload(&data, level, &mut out);
            prop_assert_eq!(decode_blob_payload(&out, data.len()).unwrap(), data);
        }

        #[test]
        fn garbage_payload_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300), n in 0usize..1000) {
            let _ = decode_blob_payload(&data, n);
            let _ = with_blob_plaintext(&data, n, <[u8]>::len);
            let _ = config_version(&data);
        }
    }
}
