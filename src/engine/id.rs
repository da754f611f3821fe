//! Identifiers of repository objects.
//!
//! Every id is 32 bytes and printed as lowercase hex. Each kind of id is its own
//! type so that a chunk id can never be passed where a pack id is expected.
//! Blob ids are keyed BLAKE3 hashes of the plaintext (see `crypto`); pack, index
//! and snapshot ids are plain BLAKE3 hashes of the stored (encrypted) bytes, so
//! they reveal nothing about content and let any reader verify an object
//! against its name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Length of every id in bytes.
pub const ID_LEN: usize = 32;

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; ID_LEN]);

        impl $name {
            /// The id as raw bytes.
            pub fn as_bytes(&self) -> &[u8; ID_LEN] {
                &self.0
            }

            /// Full lowercase hex form.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 8 hex digits, as shown to people.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }

            /// The first eight bytes as an integer (used for partitioning and
            /// compact membership sets).
            pub fn prefix_u64(&self) -> u64 {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.0[..8]);
                u64::from_be_bytes(b)
            }

            /// Parse a full 64-digit hex id.
            ///
            /// # Errors
            /// Returns a message naming the bad input when it is not 64 hex digits.
            pub fn from_hex(s: &str) -> Result<Self, String> {
                let mut out = [0u8; ID_LEN];
                hex::decode_to_slice(s, &mut out)
                    .map_err(|_| format!("`{s}` is not a {}-digit hex id", ID_LEN * 2))?;
                Ok(Self(out))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::from_hex(s)
            }
        }
    };
}

define_id!(
    /// Keyed BLAKE3 hash of a blob's plaintext (a file chunk or a tree).
    BlobId
);
define_id!(
    /// BLAKE3 hash of a pack file's bytes.
    PackId
);
define_id!(
    /// BLAKE3 hash of an index object's bytes.
    IndexId
);
define_id!(
    /// BLAKE3 hash of a snapshot object's bytes.
    SnapshotId
);
define_id!(
    /// Random id of a key slot.
    KeyId
);
define_id!(
    /// Random id of a lease lock or a prune plan.
    LockId
);

/// Fill a fresh random 32-byte array from the operating system.
///
/// # Panics
/// Never in practice: the OS random source failing is unrecoverable for a
/// program that encrypts, and `getrandom` only fails on unsupported platforms.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("operating system random source unavailable");
    b
}

/// The type of a blob, bound into its authentication tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[repr(u8)]
pub enum BlobType {
    /// A chunk of file content.
    Data = 0,
    /// An encoded directory listing.
    Tree = 1,
}

impl BlobType {
    /// Decode from its one-byte form.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Data),
            1 => Some(Self::Tree),
            _ => None,
        }
    }
}

impl fmt::Display for BlobType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Data => "data",
            Self::Tree => "tree",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects_bad_input() {
        let id = BlobId(random_bytes());
        assert_eq!(BlobId::from_hex(&id.to_hex()).unwrap(), id);
        assert!(BlobId::from_hex("abc").is_err());
        assert!(BlobId::from_hex(&"zz".repeat(32)).is_err());
        assert_eq!(id.short().len(), 8);
    }
}
