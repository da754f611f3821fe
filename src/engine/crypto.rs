//! Keys and authenticated encryption.
//!
//! A repository has one random 32-byte *master secret*. Everything else is
//! derived from it with BLAKE3's `derive_key` under fixed context strings, so
//! that each purpose has an independent key:
//!
//! * the **id key** keys the BLAKE3 hash that names blobs (no unkeyed content
//!   hash is ever stored, so ids do not confirm the presence of a known file);
//! * the **chunker seed** perturbs the FastCDC gear table, so chunk boundaries
//!   do not leak content either;
//! * the **encryption key** drives XChaCha20-Poly1305 with random 192-bit nonces;
//! * the **AES key** drives AES-256-GCM under a key derived per envelope from
//!   its random 192-bit nonce ([`Cipher::Aes256GcmDerived`]).
//!
//! A repository's config names which of the two seals its objects (the config
//! itself and key slots are always XChaCha20-Poly1305, since they are read
//! before the config is). AES-256-GCM is about three times as fast on a CPU
//! with AES and carry-less multiply instructions, so new repositories use it
//! there ([`Cipher::preferred`]); both keep random nonces safe for any number
//! of envelopes, which plain AES-GCM's 96-bit nonces would not.
//!
//! The master secret never touches storage in clear: each key slot
//! (`keys/<id>`) holds it sealed under a key stretched from a password with
//! Argon2id. This module owns those derivations and the sealed envelope
//! format `nonce(24) ‖ ciphertext ‖ tag(16)`; it does no I/O.

use std::fmt;

use aes_gcm::Aes256Gcm;
use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::id::{BlobId, random_bytes};

/// Bytes added by sealing: nonce plus tag.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Bytes kept free before a plaintext sealed with [`Keys::seal_in_place`].
pub const NONCE_ROOM: usize = NONCE_LEN;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Nonce bytes that key an AES-256-GCM envelope; the rest are GCM's nonce.
const GCM_KEYED_BY: usize = 12;

const CTX_ID: &str = "cadang 2026-11 blob id key v1";
const CTX_ENC: &str = "cadang 2026-11 encryption key v1";
const CTX_CHUNKER: &str = "cadang 2026-11 chunker seed v1";
const CTX_AES: &str = "cadang 2026-12 aes-256-gcm key v1";

/// The AEAD that seals a repository's envelopes, named by its config's `cipher`.
/// Both take the same envelope, `nonce(24) ‖ ciphertext ‖ tag(16)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cipher {
    /// XChaCha20-Poly1305 under the encryption key, with the envelope's nonce.
    XChaCha20Poly1305,
    /// AES-256-GCM under a key of its own for each envelope: the keyed BLAKE3
    /// hash, under the AES key, of the nonce's first 12 bytes. The nonce's last
    /// 12 bytes are GCM's nonce. As with XChaCha20's subkey step, random 192-bit
    /// nonces never repeat in practice, where GCM's own 96 bits would limit a
    /// key to about 2^32 envelopes.
    Aes256GcmDerived,
}

impl Cipher {
    /// Every cipher this build reads and writes.
    pub const ALL: [Self; 2] = [Self::XChaCha20Poly1305, Self::Aes256GcmDerived];

    /// The name recorded in the config.
    pub fn name(self) -> &'static str {
        match self {
            Self::XChaCha20Poly1305 => "xchacha20-poly1305",
            Self::Aes256GcmDerived => "aes-256-gcm-derived",
        }
    }

    /// The cipher of a config's `cipher` name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The faster cipher on this machine, for new repositories: AES-256-GCM
    /// where the CPU has AES and carry-less multiply instructions (about three
    /// times XChaCha20-Poly1305's speed), else XChaCha20-Poly1305 (AES in
    /// software is slow, and constant-time only at a further cost).
    pub fn preferred() -> Self {
        if hardware_aes() {
            Self::Aes256GcmDerived
        } else {
            Self::XChaCha20Poly1305
        }
    }
}

impl fmt::Display for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Cipher {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::from_name(s).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|c| c.name()).collect();
            format!("unknown cipher `{s}` (known: {})", known.join(", "))
        })
    }
}

/// Whether the CPU has the instructions AES-256-GCM runs fast with.
fn hardware_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The repository's master secret. Redacted in `Debug`, zeroed on drop.
#[derive(Clone)]
pub struct MasterSecret([u8; 32]);

impl MasterSecret {
    /// A fresh random secret for a new repository.
    pub fn generate() -> Self {
        Self(random_bytes())
    }

    fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for MasterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterSecret(<redacted>)")
    }
}

impl Drop for MasterSecret {
    fn drop(&mut self) {
        // Best effort: volatile writes so the compiler keeps them.
        for b in self.0.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// The capability to name content: the id key and the chunker seed, without
/// the power to decrypt. This is what an agent on a colocated server may hold.
#[derive(Clone)]
pub struct IdKeys {
    id_key: [u8; 32],
    /// Seed XOR-ed into the FastCDC gear table.
    pub chunker_seed: u64,
}

impl fmt::Debug for IdKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdKeys(<redacted>)")
    }
}

impl IdKeys {
    /// The capability as bytes, to hand to an agent: the id key and the chunker seed.
    pub fn to_parts(&self) -> ([u8; 32], u64) {
        (self.id_key, self.chunker_seed)
    }

    /// The capability received from the daemon.
    pub fn from_parts(id_key: [u8; 32], chunker_seed: u64) -> Self {
        Self {
            id_key,
            chunker_seed,
        }
    }

    /// The keyed BLAKE3 id of a blob's plaintext.
    pub fn blob_id(&self, plaintext: &[u8]) -> BlobId {
        BlobId(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }
}

/// All keys of an open repository.
#[derive(Clone)]
pub struct Keys {
    secret: MasterSecret,
    ids: IdKeys,
    xchacha: XChaCha20Poly1305,
    aes_key: [u8; 32],
    envelope: Cipher,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

impl Keys {
    /// Derive every sub-key from a master secret. Envelopes are sealed with
    /// XChaCha20-Poly1305 (as the config and key slots always are) until
    /// [`Keys::with_cipher`] says otherwise.
    pub fn from_secret(secret: MasterSecret) -> Self {
        let id_key = blake3::derive_key(CTX_ID, secret.bytes());
        let enc_key = blake3::derive_key(CTX_ENC, secret.bytes());
        let seed_bytes = blake3::derive_key(CTX_CHUNKER, secret.bytes());
        let mut s = [0u8; 8];
        s.copy_from_slice(&seed_bytes[..8]);
        let xchacha = XChaCha20Poly1305::new(&enc_key.into());
        let aes_key = blake3::derive_key(CTX_AES, secret.bytes());
        Self {
            secret,
            ids: IdKeys {
                id_key,
                chunker_seed: u64::from_le_bytes(s),
            },
            xchacha,
            aes_key,
            envelope: Cipher::XChaCha20Poly1305,
        }
    }

    /// The same keys, sealing and opening envelopes with `cipher` (the config's).
    pub fn with_cipher(mut self, cipher: Cipher) -> Self {
        self.envelope = cipher;
        self
    }

    /// The cipher envelopes are sealed and opened with.
    pub fn cipher(&self) -> Cipher {
        self.envelope
    }

    /// The AES-256-GCM instance of one envelope, keyed from the first half of its
    /// nonce, and GCM's nonce, the second half ([`Cipher::Aes256GcmDerived`]).
    fn aes_for(&self, nonce: &[u8; NONCE_LEN]) -> (Aes256Gcm, [u8; NONCE_LEN - GCM_KEYED_BY]) {
        let key = blake3::keyed_hash(&self.aes_key, &nonce[..GCM_KEYED_BY]);
        let gcm_nonce: [u8; NONCE_LEN - GCM_KEYED_BY] =
            std::array::from_fn(|i| nonce[GCM_KEYED_BY + i]);
        (Aes256Gcm::new(key.as_bytes().into()), gcm_nonce)
    }

    /// The master secret (needed to add a key slot or share keys with a replica).
    pub fn secret(&self) -> &MasterSecret {
        &self.secret
    }

    /// A fingerprint of the master secret, safe to compare and display:
    /// two repositories with the same fingerprint share keys and blob ids.
    pub fn fingerprint(&self) -> [u8; 32] {
        blake3::derive_key("cadang 2026-11 key fingerprint v1", self.secret.bytes())
    }

    /// The naming capability alone.
    pub fn id_keys(&self) -> &IdKeys {
        &self.ids
    }

    /// Keyed id of a blob's plaintext.
    pub fn blob_id(&self, plaintext: &[u8]) -> BlobId {
        self.ids.blob_id(plaintext)
    }

    /// Seal `plaintext` into a new buffer: `nonce ‖ ciphertext ‖ tag`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        self.seal_append(aad, plaintext, &mut out);
        out
    }

    /// Seal `plaintext` and append the envelope to `out`. The plaintext is encrypted as
    /// it is copied into `out`: one pass over the data.
    pub fn seal_append(&self, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + plaintext.len() + SEAL_OVERHEAD, 0);
        self.seal_into(aad, plaintext, &mut out[start..]);
    }

    /// Seal `plaintext` into `out`, which holds `plaintext.len() + SEAL_OVERHEAD` bytes
    /// (whatever they are: all are overwritten), encrypting as it copies — for a
    /// reused buffer, the payload an agent prepared is read once and written once.
    ///
    /// # Panics
    /// When `out` is not exactly that long: a caller's arithmetic error.
    pub fn seal_into(&self, aad: &[u8], plaintext: &[u8], out: &mut [u8]) {
        assert_eq!(
            out.len(),
            plaintext.len() + SEAL_OVERHEAD,
            "an envelope's buffer is its plaintext and the overhead"
        );
        let nonce_bytes = random_bytes();
        let (nonce, rest) = out.split_at_mut(NONCE_LEN);
        nonce.copy_from_slice(&nonce_bytes);
        let (body, tag) = rest.split_at_mut(plaintext.len());
        // Equal lengths by the split above.
        if let Ok(data) = InOutBuf::new(plaintext, body) {
            tag.copy_from_slice(self.encrypt(aad, &nonce_bytes, data).as_slice());
        }
    }

    /// Seal in place the plaintext that follows [`NONCE_ROOM`] bytes kept free at
    /// `start` of `buf`: the nonce goes there and the tag is appended, so `buf[start..]`
    /// becomes `nonce ‖ ciphertext ‖ tag`. A blob is compressed straight into the
    /// buffer its envelope is built in, with no copy. A `buf` shorter than
    /// `start + NONCE_ROOM` gets the room made, before an empty plaintext.
    pub fn seal_in_place(&self, aad: &[u8], buf: &mut Vec<u8>, start: usize) {
        if buf.len() < start + NONCE_LEN {
            buf.resize(start + NONCE_LEN, 0);
        }
        self.seal_with_nonce(aad, buf, start, random_bytes());
    }

    /// [`Keys::seal_in_place`] with the nonce given (random in every real use).
    fn seal_with_nonce(
        &self,
        aad: &[u8],
        buf: &mut Vec<u8>,
        start: usize,
        nonce_bytes: [u8; NONCE_LEN],
    ) {
        buf[start..start + NONCE_LEN].copy_from_slice(&nonce_bytes);
        let tag = self.encrypt(aad, &nonce_bytes, (&mut buf[start + NONCE_LEN..]).into());
        buf.extend_from_slice(tag.as_slice());
    }

    /// Encrypts `data` (in place, or from one buffer into another) under the nonce and
    /// returns the tag.
    fn encrypt(
        &self,
        aad: &[u8],
        nonce_bytes: &[u8; NONCE_LEN],
        data: InOutBuf<'_, '_, u8>,
    ) -> Tag {
        match self.envelope {
            Cipher::XChaCha20Poly1305 => self
                .xchacha
                .encrypt_inout_detached(&XNonce::from(*nonce_bytes), aad, data)
                .expect("XChaCha20-Poly1305 accepts messages far larger than a blob"),
            Cipher::Aes256GcmDerived => {
                let (aes, nonce) = self.aes_for(nonce_bytes);
                aes.encrypt_inout_detached(&nonce.into(), aad, data)
                    .expect("AES-256-GCM accepts messages far larger than a blob")
            }
        }
    }

    /// Open an envelope made by [`Keys::seal`].
    ///
    /// # Errors
    /// `Error::Corrupt` naming `what` when the envelope is too short or fails
    /// authentication (wrong key, altered bytes, or a different `aad`).
    pub fn open(&self, what: &str, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open_into(what, aad, sealed, &mut buf)?;
        Ok(buf)
    }

    /// Open an envelope into `out` (cleared first), so a caller that opens many
    /// blobs reuses one buffer instead of having fresh pages mapped and zeroed
    /// for each. On error `out` holds nothing the caller may use.
    ///
    /// # Errors
    /// As [`Keys::open`].
    pub fn open_into(
        &self,
        what: &str,
        aad: &[u8],
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        out.clear();
        if sealed.len() < SEAL_OVERHEAD {
            return Err(Error::corrupt(
                what,
                format!(
                    "{} bytes is shorter than an encrypted envelope",
                    sealed.len()
                ),
            ));
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| Error::corrupt(what, "bad nonce"))?;
        let tag = Tag::try_from(tag).map_err(|_| Error::corrupt(what, "bad tag"))?;
        // Copy, then decrypt in place: the copy warms the buffer the cipher
        // works in, and no zeroing pass is needed.
        out.extend_from_slice(ct);
        let data = out.as_mut_slice().into();
        let opened = match self.envelope {
            Cipher::XChaCha20Poly1305 => {
                self.xchacha
                    .decrypt_inout_detached(&XNonce::from(nonce), aad, data, &tag)
            }
            Cipher::Aes256GcmDerived => {
                let (aes, gcm_nonce) = self.aes_for(&nonce);
                aes.decrypt_inout_detached(&gcm_nonce.into(), aad, data, &tag)
            }
        };
        if opened.is_err() {
            out.clear();
            return Err(Error::corrupt(
                what,
                "authentication failed (data altered or not written by this repository)",
            ));
        }
        Ok(())
    }
}

/// Argon2id cost parameters, stored in each key slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: about a quarter of a second on a server core,
    /// in line with OWASP's Argon2id guidance.
    fn default() -> Self {
        Self {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

/// A key slot as stored under `keys/<id>` (JSON, version 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySlot {
    /// Encoding version of this slot.
    pub version: u32,
    /// When the slot was created (RFC 3339).
    pub created: String,
    /// Host that created it (informational).
    pub host: String,
    /// User that created it (informational).
    pub user: String,
    /// Always `argon2id`.
    pub kdf: String,
    /// Argon2id costs.
    pub params: KdfParams,
    /// Salt, hex.
    pub salt: String,
    /// The sealed master secret, hex (`nonce ‖ ciphertext ‖ tag`).
    pub sealed_secret: String,
}

const KEY_SLOT_AAD: &[u8] = b"cadang key slot v1";

fn stretch(password: &[u8], salt: &[u8], params: KdfParams) -> Result<[u8; 32]> {
    let p = argon2::Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        Some(32),
    )
    .map_err(|e| Error::corrupt("key slot", format!("invalid Argon2 parameters: {e}")))?;
    if params.memory_kib > 4 * 1024 * 1024 || params.iterations > 100 {
        return Err(Error::corrupt(
            "key slot",
            "Argon2 parameters are implausibly large (refusing to spend that much memory or time)",
        ));
    }
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut out = [0u8; 32];
    a.hash_password_into(password, salt, &mut out)
        .map_err(|e| Error::corrupt("key slot", format!("key derivation failed: {e}")))?;
    Ok(out)
}

impl KeySlot {
    /// Seal `secret` under `password`.
    ///
    /// # Errors
    /// Only if the Argon2 parameters are invalid.
    pub fn create(
        secret: &MasterSecret,
        password: &[u8],
        params: KdfParams,
        created: String,
        host: String,
        user: String,
    ) -> Result<Self> {
        let salt: [u8; 16] = random_bytes();
        let wrapping = stretch(password, &salt, params)?;
        let keys = Keys::from_secret(MasterSecret(wrapping));
        // The wrapping key is used directly as an AEAD key via a throwaway
        // `Keys`; its derived sub-keys are independent of the repository's.
        let sealed = keys.seal(KEY_SLOT_AAD, secret.bytes());
        Ok(Self {
            version: 1,
            created,
            host,
            user,
            kdf: "argon2id".into(),
            params,
            salt: hex::encode(salt),
            sealed_secret: hex::encode(sealed),
        })
    }

    /// Try to unseal the master secret with `password`.
    ///
    /// # Errors
    /// `Error::WrongPassword` when authentication fails, `Error::Corrupt` when
    /// the slot itself is malformed.
    pub fn open(&self, password: &[u8]) -> Result<MasterSecret> {
        if self.version != 1 {
            return Err(Error::UnsupportedVersion {
                found: self.version,
                supported: 1,
            });
        }
        if self.kdf != "argon2id" {
            return Err(Error::corrupt(
                "key slot",
                format!("unknown KDF `{}`", self.kdf),
            ));
        }
        let salt =
            hex::decode(&self.salt).map_err(|_| Error::corrupt("key slot", "salt is not hex"))?;
        let sealed = hex::decode(&self.sealed_secret)
            .map_err(|_| Error::corrupt("key slot", "sealed secret is not hex"))?;
        let wrapping = stretch(password, &salt, self.params)?;
        let keys = Keys::from_secret(MasterSecret(wrapping));
        let plain = keys
            .open("key slot", KEY_SLOT_AAD, &sealed)
            .map_err(|_| Error::WrongPassword { slots: 1 })?;
        let arr: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| Error::corrupt("key slot", "sealed secret has the wrong length"))?;
        Ok(MasterSecret(arr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cheap() -> KdfParams {
        KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    /// Argon2id as the reference implementation (phc-winner-argon2, through
    /// argon2-cffi's `hash_secret_raw`) computes it, with one lane and with four.
    #[test]
    fn stretching_matches_the_reference_implementation() {
        let cases = [
            (
                KdfParams::default(),
                "d9970138ff89d0a8a722c1427339713a75381447bd5bb453744da012dda33706",
            ),
            (
                KdfParams {
                    memory_kib: 64,
                    iterations: 3,
                    parallelism: 4,
                },
                "12019e931bae51e7123078c71ac76e266bbf59e96bb2beb1c19dccfa6295c469",
            ),
            (
                KdfParams {
                    memory_kib: 1024,
                    iterations: 2,
                    parallelism: 1,
                },
                "e64bfa3c16efc86d18d9ca5be1a31681a836c377097f572a9aa51321725737eb",
            ),
        ];
        assert_eq!(
            (
                KdfParams::default().memory_kib,
                KdfParams::default().parallelism
            ),
            (65536, 1)
        );
        for (params, want) in cases {
            let got = stretch(b"correct horse battery staple", b"cadang-salt-0123", params);
            assert_eq!(hex::encode(got.unwrap()), want, "{params:?}");
        }
    }

    #[test]
    fn key_slot_round_trip_and_wrong_password() {
        let s = MasterSecret::generate();
        let slot =
            KeySlot::create(&s, b"pw", cheap(), "now".into(), "h".into(), "u".into()).unwrap();
        assert_eq!(slot.open(b"pw").unwrap().0, s.0);
        assert!(matches!(
            slot.open(b"nope"),
            Err(Error::WrongPassword { .. })
        ));
    }

    #[test]
    fn edited_key_slot_is_refused() {
        let s = MasterSecret::generate();
        let mut slot =
            KeySlot::create(&s, b"pw", cheap(), "now".into(), "h".into(), "u".into()).unwrap();
        let mut raw = hex::decode(&slot.sealed_secret).unwrap();
        raw[30] ^= 1;
        slot.sealed_secret = hex::encode(raw);
        assert!(slot.open(b"pw").is_err());
        slot.salt = "zz".into();
        assert!(matches!(slot.open(b"pw"), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn key_derivation_is_frozen() {
        // Pinned: changing a context string or the derivation would make every
        // existing repository unreadable. Never "fix" by updating the values.
        let k = Keys::from_secret(MasterSecret([7u8; 32]));
        assert_eq!(k.blob_id(b"cadang").to_hex()[..16], *PINNED_ID);
        assert_eq!(k.id_keys().chunker_seed, PINNED_SEED);
    }
    const PINNED_ID: &str = "cb3c798ba32802ae";
    const PINNED_SEED: u64 = 7581740276526407372;

    #[test]
    fn debug_never_shows_secrets() {
        let k = Keys::from_secret(MasterSecret::generate());
        let s = format!("{k:?} {:?} {:?}", k.secret(), k.id_keys());
        assert!(s.contains("redacted"));
        assert!(!s.contains(&hex::encode(k.secret().bytes())));
    }

    #[test]
    fn different_secrets_give_different_ids_and_seeds() {
        let a = Keys::from_secret(MasterSecret::generate());
        let b = Keys::from_secret(MasterSecret::generate());
        assert_ne!(a.blob_id(b"same"), b.blob_id(b"same"));
        assert_ne!(a.id_keys().chunker_seed, b.id_keys().chunker_seed);
        // and the id is not the unkeyed hash
        assert_ne!(a.blob_id(b"same").0, *blake3::hash(b"same").as_bytes());
    }

    /// An envelope sealed with a fixed nonce, as `nonce ‖ ciphertext ‖ tag`.
    fn sealed_with(keys: &Keys, nonce: [u8; NONCE_LEN], aad: &[u8], data: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; NONCE_LEN];
        buf.extend_from_slice(data);
        keys.seal_with_nonce(aad, &mut buf, 0, nonce);
        buf
    }

    #[test]
    fn the_aes_envelope_is_gcm_under_a_key_derived_from_the_nonce() {
        // The construction of docs/FORMAT.md, spelled out with the primitives.
        let secret = MasterSecret([7u8; 32]);
        let k = Keys::from_secret(secret.clone()).with_cipher(Cipher::Aes256GcmDerived);
        let nonce: [u8; NONCE_LEN] = std::array::from_fn(|i| i as u8);
        let sealed = sealed_with(&k, nonce, b"aad", b"cadang envelope");
        let aes_key = blake3::derive_key("cadang 2026-12 aes-256-gcm key v1", &[7u8; 32]);
        let subkey = blake3::keyed_hash(&aes_key, &nonce[..12]);
        let mut expect = b"cadang envelope".to_vec();
        let tag = Aes256Gcm::new(subkey.as_bytes().into())
            .encrypt_inout_detached(
                &aes_gcm::Nonce::try_from(&nonce[12..]).unwrap(),
                b"aad",
                expect.as_mut_slice().into(),
            )
            .unwrap();
        expect.extend_from_slice(tag.as_slice());
        assert_eq!(&sealed[..NONCE_LEN], &nonce);
        assert_eq!(&sealed[NONCE_LEN..], &expect[..]);
        // Pinned: a change here makes every AES repository unreadable.
        assert_eq!(hex::encode(&sealed[NONCE_LEN..NONCE_LEN + 8]), PINNED_AES);
        // The same nonce under the other cipher gives another envelope, and neither
        // cipher opens the other's.
        let x = Keys::from_secret(secret);
        let other = sealed_with(&x, nonce, b"aad", b"cadang envelope");
        assert_eq!(
            hex::encode(&other[NONCE_LEN..NONCE_LEN + 8]),
            PINNED_XCHACHA
        );
        assert!(x.open("t", b"aad", &sealed).is_err());
        assert!(k.open("t", b"aad", &other).is_err());
        assert_eq!(k.open("t", b"aad", &sealed).unwrap(), b"cadang envelope");
        assert_eq!(x.open("t", b"aad", &other).unwrap(), b"cadang envelope");
    }
    const PINNED_AES: &str = "3a5c58ca72f44389";
    const PINNED_XCHACHA: &str = "a2dfb3205d833a9d";

    #[test]
    fn envelopes_under_one_nonce_half_use_different_keys_for_different_other_halves() {
        // Two envelopes whose nonces share the keying half still use GCM nonces that
        // differ, and two whose GCM halves match are under different keys: the
        // keystreams differ either way.
        let k = Keys::from_secret(MasterSecret::generate()).with_cipher(Cipher::Aes256GcmDerived);
        let zeros = [0u8; 64];
        let mut a = [1u8; NONCE_LEN];
        let b = {
            let mut b = a;
            b[NONCE_LEN - 1] ^= 1;
            b
        };
        let ea = sealed_with(&k, a, b"", &zeros);
        let eb = sealed_with(&k, b, b"", &zeros);
        assert_ne!(ea[NONCE_LEN..NONCE_LEN + 64], eb[NONCE_LEN..NONCE_LEN + 64]);
        a[0] ^= 1;
        let ec = sealed_with(&k, a, b"", &zeros);
        assert_ne!(ec[NONCE_LEN..NONCE_LEN + 64], eb[NONCE_LEN..NONCE_LEN + 64]);
        assert_ne!(ec[NONCE_LEN..NONCE_LEN + 64], ea[NONCE_LEN..NONCE_LEN + 64]);
    }

    #[test]
    fn cipher_names_parse_and_the_preferred_one_matches_the_cpu() {
        for c in Cipher::ALL {
            assert_eq!(c.name().parse::<Cipher>().unwrap(), c);
            assert_eq!(Cipher::from_name(&c.to_string()), Some(c));
        }
        let err = "aes-128-ecb".parse::<Cipher>().unwrap_err();
        assert!(
            err.contains("aes-128-ecb") && err.contains("xchacha20-poly1305"),
            "{err}"
        );
        assert_eq!(
            Cipher::preferred() == Cipher::Aes256GcmDerived,
            hardware_aes()
        );
        // A new key set seals with XChaCha20-Poly1305 until told otherwise.
        let k = Keys::from_secret(MasterSecret::generate());
        assert_eq!(k.cipher(), Cipher::XChaCha20Poly1305);
        assert_eq!(
            k.with_cipher(Cipher::Aes256GcmDerived).cipher(),
            Cipher::Aes256GcmDerived
        );
    }

    fn any_cipher() -> impl Strategy<Value = Cipher> {
        prop_oneof![
            Just(Cipher::XChaCha20Poly1305),
            Just(Cipher::Aes256GcmDerived)
        ]
    }

    proptest! {
        #[test]
        fn seal_open_round_trip(cipher in any_cipher(), data in proptest::collection::vec(any::<u8>(), 0..2048), aad in proptest::collection::vec(any::<u8>(), 0..64)) {
            let k = Keys::from_secret(MasterSecret::generate()).with_cipher(cipher);
            let sealed = k.seal(&aad, &data);
            prop_assert_eq!(k.open("t", &aad, &sealed).unwrap(), data);
            // Another repository's keys, same cipher: refused.
            let other = Keys::from_secret(MasterSecret::generate()).with_cipher(cipher);
            prop_assert!(other.open("t", &aad, &sealed).is_err());
        }

        /// Sealing into a reused buffer, encrypting as it copies, gives the envelope that
        /// sealing in place gives: whatever the buffer held is overwritten.
        #[test]
        fn sealing_into_a_used_buffer_is_sealing_in_place(cipher in any_cipher(), data in proptest::collection::vec(any::<u8>(), 0..2048), junk in any::<u8>()) {
            let k = Keys::from_secret(MasterSecret::generate()).with_cipher(cipher);
            let mut reused = vec![junk; data.len() + SEAL_OVERHEAD];
            k.seal_into(b"aad", &data, &mut reused);
            prop_assert_eq!(k.open("t", b"aad", &reused).unwrap(), data.clone());
            // Same nonce, same envelope as the in-place path's.
            let nonce: [u8; NONCE_LEN] = reused[..NONCE_LEN].try_into().unwrap();
            prop_assert_eq!(sealed_with(&k, nonce, b"aad", &data), reused.clone());
            // Appended after what a buffer holds, the rest left alone.
            let mut out = b"head".to_vec();
            k.seal_append(b"aad", &data, &mut out);
            prop_assert_eq!(&out[..4], b"head");
            prop_assert_eq!(k.open("t", b"aad", &out[4..]).unwrap(), data);
        }

        #[test]
        fn any_flip_or_truncation_fails(cipher in any_cipher(), data in proptest::collection::vec(any::<u8>(), 1..512), pos in any::<usize>(), cut in any::<usize>()) {
            let k = Keys::from_secret(MasterSecret::generate()).with_cipher(cipher);
            let sealed = k.seal(b"a", &data);
            let mut flipped = sealed.clone();
            let i = pos % flipped.len();
            flipped[i] ^= 0x40;
            prop_assert!(k.open("t", b"a", &flipped).is_err());
            let truncated = &sealed[..cut % sealed.len()];
            prop_assert!(k.open("t", b"a", truncated).is_err());
            prop_assert!(k.open("t", b"b", &sealed).is_err());
        }
    }
}
