//! The objects behind authentication — config, index, snapshot and pack header — decoded
//! from arbitrary plaintext sealed with the repository's keys, as a hostile key holder
//! could write them. Nothing may panic, and a pack header that decodes never points past
//! the pack's body.
#![no_main]

use std::sync::OnceLock;

use cadang::engine::crypto::{Keys, MasterSecret};
use cadang::engine::format::{self, ObjectKind, RepoConfig};
use cadang::engine::index::IndexFile;
use cadang::engine::pack::{self, PACK_MAGIC};
use cadang::engine::snapshot::Snapshot;
use libfuzzer_sys::fuzz_target;

static KEYS: OnceLock<Keys> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let keys = KEYS.get_or_init(|| Keys::from_secret(MasterSecret::generate()));
    let Some((&which, plain)) = data.split_first() else {
        return;
    };
    let Ok(compressed) = zstd::bulk::compress(plain, 1) else {
        return;
    };
    // The associated data of each object kind, as docs/FORMAT.md freezes it.
    let seal = |aad: &[u8]| {
        let mut out = vec![1u8];
        keys.seal_append(aad, &compressed, &mut out);
        out
    };
    match which % 4 {
        0 => {
            // The config's clear prefix (magic and version), then the sealed body.
            let mut config = format::encode_config(keys, &RepoConfig::new_default());
            config.truncate(12);
            config.extend_from_slice(&seal(b"cadang v1 config"));
            let _ = format::decode_config(keys, &config);
        }
        1 => {
            let _ = format::open_postcard::<IndexFile>(
                keys,
                ObjectKind::Index,
                "index",
                &seal(b"cadang v1 index"),
            );
        }
        2 => {
            let _ = format::open_json::<Snapshot>(
                keys,
                ObjectKind::Snapshot,
                "snapshot",
                &seal(b"cadang v1 snapshot"),
            );
        }
        _ => {
            // A pack: a body of `which` bytes, the sealed header, its length, the magic.
            let header = seal(b"cadang v1 pack header");
            let body = usize::from(which);
            let mut bytes = vec![0u8; body];
            bytes.extend_from_slice(&header);
            bytes.extend_from_slice(
                &u32::try_from(header.len())
                    .unwrap_or(u32::MAX)
                    .to_le_bytes(),
            );
            bytes.extend_from_slice(PACK_MAGIC);
            if let Ok(entries) = pack::parse_header(keys, "pack", &bytes) {
                for entry in entries {
                    assert!(entry.offset as usize + entry.length as usize <= body);
                }
            }
        }
    }
});
