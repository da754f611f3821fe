//! Trees are decoded from every directory of every snapshot. A hostile repository (its
//! key holder crafted the objects) must not make decoding panic, and a tree that decodes
//! encodes to bytes that decode to the same tree.
#![no_main]

use cadang::engine::tree::Tree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tree) = Tree::decode(data) {
        let bytes = tree.encode();
        let again = Tree::decode(&bytes).expect("an encoded tree decodes");
        assert_eq!(again.encode(), bytes, "encoding is stable");
    }
});
