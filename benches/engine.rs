//! Micro-benchmarks of the engine's per-core hot path: chunking, keyed
//! hashing, compression, encryption, and all of them together. Run with
//! `cargo bench --bench engine`; compare with what the hardware allows
//! (`bench/hardware.sh`: `zstd -b`, `b3sum`).
//!
//! Plain timing loops (best of several runs) keep this free of extra
//! dependencies; the figures are single-threaded MB/s.

use std::hint::black_box;
use std::time::Instant;

use cadang::engine::chunker::{Chunker, ChunkerParams};
use cadang::engine::crypto::{Cipher, Keys, MasterSecret};
use cadang::engine::format::encode_blob_payload;

fn data(n: usize, text: bool) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(n);
    let words = [
        "INSERT",
        "INTO",
        "orders",
        "VALUES",
        "2026-11-29",
        "Semarang",
        "OK",
        "200",
        "GET",
        "/api/v1/",
    ];
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if text {
            v.extend_from_slice(words[(x % 10) as usize].as_bytes());
            v.push(if x.is_multiple_of(7) { b'\n' } else { b' ' });
        } else {
            v.extend_from_slice(&x.to_le_bytes());
        }
    }
    v.truncate(n);
    v
}

fn bench(name: &str, bytes: usize, mut f: impl FnMut()) {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("{name:<40} {:>9.0} MB/s", bytes as f64 / best / 1e6);
}

fn main() {
    let n = 64 << 20;
    let random = data(n, false);
    let text = data(n, true);
    let keys = Keys::from_secret(MasterSecret::generate()).with_cipher(Cipher::preferred());
    let chunker = Chunker::new(&ChunkerParams::default(), keys.id_keys().chunker_seed);
    let chunks: Vec<usize> = chunker.split_all(&random);
    println!(
        "cadang engine, one core, {} MiB inputs ({} chunks of ~{} KiB)",
        n >> 20,
        chunks.len(),
        n / chunks.len() / 1024
    );
    bench("fastcdc v2020 (seeded gear)", n, || {
        black_box(chunker.split_all(&random));
    });
    bench("blake3 keyed (blob ids)", n, || {
        for c in random.chunks(1 << 20) {
            black_box(keys.blob_id(c));
        }
    });
    for (label, input) in [("text", &text), ("random", &random)] {
        for level in [1, 3] {
            let mut out = Vec::with_capacity((1 << 20) + 1024);
            bench(
                &format!("zstd level {level} ({label}, kept only if smaller)"),
                n,
                || {
                    for c in input.chunks(1 << 20) {
                        out.clear();
                        encode_blob_payload(c, level, &mut out);
                        black_box(&out);
                    }
                },
            );
        }
    }
    let mut sealed = Vec::with_capacity((1 << 20) + 64);
    for cipher in Cipher::ALL {
        let keys = keys.clone().with_cipher(cipher);
        for size in [1 << 20, 4 << 10] {
            bench(
                &format!("{cipher} seal, {} KiB items", size >> 10),
                n,
                || {
                    for c in random.chunks(size) {
                        sealed.clear();
                        keys.seal_append(b"aad", c, &mut sealed);
                        black_box(&sealed);
                    }
                },
            );
        }
    }
    println!("(the whole blob path below seals with {})", keys.cipher());
    let mut payload = Vec::new();
    bench("whole blob path, text, zstd 3", n, || {
        let mut pos = 0;
        while pos < text.len() {
            let len = chunker.next_cut(&text[pos..]);
            let c = &text[pos..pos + len];
            black_box(keys.blob_id(c));
            payload.clear();
            encode_blob_payload(c, 3, &mut payload);
            sealed.clear();
            keys.seal_append(b"aad", &payload, &mut sealed);
            pos += len;
        }
    });
    bench("whole blob path, random, zstd 3", n, || {
        let mut pos = 0;
        while pos < random.len() {
            let len = chunker.next_cut(&random[pos..]);
            let c = &random[pos..pos + len];
            black_box(keys.blob_id(c));
            payload.clear();
            encode_blob_payload(c, 3, &mut payload);
            sealed.clear();
            keys.seal_append(b"aad", &payload, &mut sealed);
            pos += len;
        }
    });
}
