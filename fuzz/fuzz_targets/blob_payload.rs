//! A blob's payload after decryption: a codec byte and raw or zstd data that must expand
//! to exactly the indexed length. Hostile payloads (zstd bombs, wrong lengths, unknown
//! codecs) are refused without panicking or expanding past the expected length.
#![no_main]

use cadang::engine::format::decode_blob_payload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [a, b, c, payload @ ..] = data else {
        return;
    };
    // The indexed raw length: up to 16 MiB, as a blob's may be.
    let raw_len = usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c);
    if let Ok(plain) = decode_blob_payload(payload, raw_len) {
        assert_eq!(plain.len(), raw_len);
    }
});
