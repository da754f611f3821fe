//! Secrets entered on forms (the host admin password of form 2): sealed with
//! XChaCha20-Poly1305 under a key derived from the daemon's master key before they reach
//! the catalog, redacted from every `Debug`, and opened only by an explicit, audited
//! reveal (see `App::reveal_host_admin_password`).
//!
//! A sealed value is `nonce(24) ‖ ciphertext ‖ tag(16)`. Its associated data binds the
//! purpose and the row's random reference, so a sealed value copied into another row, or
//! relabelled, no longer opens.

use std::fmt;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use chrono::{DateTime, Utc};

use super::AppError;
use crate::catalog::{SecretId, SecretRecord, Tx};

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const SEAL_CONTEXT: &str = "cadang 2026 catalog secrets v1";
const FINGERPRINT_CONTEXT: &str = "cadang 2026 catalog key fingerprint v1";

/// The purpose recorded for host admin passwords.
pub const HOST_ADMIN_PASSWORD: &str = "host_admin_password";

/// The daemon's 32-byte master key for catalog secrets. Redacted in `Debug`, zeroed on
/// drop.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl MasterKey {
    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        MasterKey(bytes)
    }

    /// A key from 64 hex digits (how it is kept in the key file).
    ///
    /// # Errors
    /// [`AppError::InvalidInput`] when the text is not 64 hex digits (the message does not
    /// repeat the text).
    pub fn from_hex(text: &str) -> Result<Self, AppError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| {
            AppError::invalid("the master key must be 64 hexadecimal digits (32 bytes)")
        })?;
        Ok(MasterKey(bytes))
    }

    /// A fresh random key.
    ///
    /// # Errors
    /// [`AppError::Internal`] when the operating system has no random source.
    pub fn generate() -> Result<Self, AppError> {
        Ok(MasterKey(random_bytes()?))
    }

    /// The key as 64 hex digits (how the key file keeps it).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A sub-key for one purpose, named by a context string unique to that purpose, so
    /// the master key serves several purposes without two sharing a key.
    pub(crate) fn derive(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.0)
    }

    /// A short fingerprint, safe to store and show: which key sealed a value.
    pub fn fingerprint(&self) -> String {
        let derived = blake3::derive_key(FINGERPRINT_CONTEXT, &self.0);
        hex::encode(&derived[..8])
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// A secret text (a password). `Debug` prints `<redacted>`, there is no `Display` and no
/// `Serialize`, so it cannot slip into a log line, an audit row or a JSON column by
/// accident; [`SecretString::expose`] is the one explicit way to read it. Zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        SecretString(secret.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty (after trimming).
    pub fn is_blank(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

/// A secret may arrive in input (a form sent to the daemon); it is never written out, so
/// there is deliberately no `Serialize`.
impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(SecretString::new)
    }
}

impl Drop for SecretString {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        wipe(&mut bytes);
    }
}

/// Overwrites bytes with volatile writes so the compiler cannot drop the stores.
fn wipe(bytes: &mut [u8]) {
    for byte in bytes.iter_mut() {
        // SAFETY: `byte` is a valid, aligned, exclusive reference.
        unsafe { std::ptr::write_volatile(byte, 0) };
    }
}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], AppError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)
        .map_err(|error| AppError::internal(format!("no operating system randomness: {error}")))?;
    Ok(bytes)
}

/// Seals and opens catalog secrets.
#[derive(Clone)]
pub(crate) struct Sealer {
    cipher: XChaCha20Poly1305,
    fingerprint: String,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealer(key {})", self.fingerprint)
    }
}

impl Sealer {
    pub(crate) fn new(key: &MasterKey) -> Self {
        // A sub-key for this purpose only, so the master key can serve other purposes
        // without two uses ever sharing a cipher key.
        let mut sealing_key = blake3::derive_key(SEAL_CONTEXT, &key.0);
        let cipher = XChaCha20Poly1305::new(&sealing_key.into());
        wipe(&mut sealing_key);
        Sealer {
            cipher,
            fingerprint: key.fingerprint(),
        }
    }

    fn aad(purpose: &str, reference: &str) -> Vec<u8> {
        format!("cadang secret v1\0{purpose}\0{reference}").into_bytes()
    }

    /// Seals a secret for a row with this purpose and reference.
    pub(crate) fn seal(
        &self,
        purpose: &str,
        reference: &str,
        secret: &SecretString,
    ) -> Result<Vec<u8>, AppError> {
        let nonce_bytes: [u8; NONCE_LEN] = random_bytes()?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + secret.0.len() + TAG_LEN);
        sealed.extend_from_slice(&nonce_bytes);
        sealed.extend_from_slice(secret.0.as_bytes());
        let nonce = XNonce::from(nonce_bytes);
        let tag = self
            .cipher
            .encrypt_inout_detached(
                &nonce,
                &Self::aad(purpose, reference),
                (&mut sealed[NONCE_LEN..]).into(),
            )
            .map_err(|_| AppError::internal("the secret is too long to seal"))?;
        sealed.extend_from_slice(tag.as_slice());
        Ok(sealed)
    }

    /// Opens a stored secret.
    pub(crate) fn open(&self, record: &SecretRecord) -> Result<SecretString, AppError> {
        if record.key_fingerprint != self.fingerprint {
            return Err(AppError::internal(format!(
                "secret {} was sealed with key {}, but this daemon holds key {}",
                record.id, record.key_fingerprint, self.fingerprint
            )));
        }
        if record.sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(AppError::internal(format!(
                "secret {} is too short to be sealed",
                record.id
            )));
        }
        let (nonce, rest) = record.sealed.split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let nonce = XNonce::try_from(nonce)
            .map_err(|_| AppError::internal(format!("secret {}: bad nonce", record.id)))?;
        let tag = Tag::try_from(tag)
            .map_err(|_| AppError::internal(format!("secret {}: bad tag", record.id)))?;
        let mut plaintext = ciphertext.to_vec();
        self.cipher
            .decrypt_inout_detached(
                &nonce,
                &Self::aad(&record.purpose, &record.reference),
                (&mut plaintext[..]).into(),
                &tag,
            )
            .map_err(|_| {
                AppError::internal(format!(
                    "secret {} failed authentication (altered, moved to another row, or sealed by another key)",
                    record.id
                ))
            })?;
        let text = String::from_utf8(plaintext).map_err(|error| {
            let mut bytes = error.into_bytes();
            wipe(&mut bytes);
            AppError::internal(format!("secret {} is not UTF-8", record.id))
        })?;
        Ok(SecretString(text))
    }

    /// Seals `secret` and stores it; returns its id.
    pub(crate) async fn store(
        &self,
        tx: &mut Tx,
        purpose: &str,
        secret: &SecretString,
        now: DateTime<Utc>,
    ) -> Result<SecretId, AppError> {
        let reference = hex::encode(random_bytes::<16>()?);
        let sealed = self.seal(purpose, &reference, secret)?;
        Ok(tx
            .insert_secret(&reference, purpose, &sealed, &self.fingerprint, now)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sealer: &Sealer, reference: &str, secret: &str) -> SecretRecord {
        SecretRecord {
            id: SecretId(1),
            reference: reference.into(),
            purpose: HOST_ADMIN_PASSWORD.into(),
            sealed: sealer
                .seal(HOST_ADMIN_PASSWORD, reference, &SecretString::new(secret))
                .unwrap(),
            key_fingerprint: sealer.fingerprint.clone(),
            created_at: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    #[test]
    fn seal_open_round_trip_hides_the_plaintext() {
        let sealer = Sealer::new(&MasterKey::from_bytes([7; 32]));
        let stored = record(&sealer, "ref-1", "S3cret!pass");
        assert!(
            !stored
                .sealed
                .windows(b"S3cret!pass".len())
                .any(|window| window == b"S3cret!pass")
        );
        assert_eq!(sealer.open(&stored).unwrap().expose(), "S3cret!pass");
    }

    #[test]
    fn tampering_moving_or_another_key_is_refused() {
        let sealer = Sealer::new(&MasterKey::from_bytes([7; 32]));
        let mut flipped = record(&sealer, "ref-1", "S3cret!pass");
        let last = flipped.sealed.len() - 1;
        flipped.sealed[last] ^= 1;
        assert!(sealer.open(&flipped).is_err());

        let mut moved = record(&sealer, "ref-1", "S3cret!pass");
        moved.reference = "ref-2".into();
        assert!(sealer.open(&moved).is_err());

        let other = Sealer::new(&MasterKey::from_bytes([8; 32]));
        let mut foreign = record(&other, "ref-1", "S3cret!pass");
        assert!(sealer.open(&foreign).is_err(), "fingerprint differs");
        foreign.key_fingerprint = sealer.fingerprint.clone();
        assert!(sealer.open(&foreign).is_err(), "authentication fails");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let key = MasterKey::from_bytes([0xAB; 32]);
        let secret = SecretString::new("hunter2");
        let sealer = Sealer::new(&key);
        let shown = format!("{key:?} {secret:?} {sealer:?}");
        assert!(!shown.contains("hunter2"));
        assert!(!shown.to_lowercase().contains("abab"));
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn master_keys_parse_from_hex_without_echoing_it() {
        let hex_key = "11".repeat(32);
        assert_eq!(
            MasterKey::from_hex(&hex_key).unwrap().fingerprint(),
            MasterKey::from_bytes([0x11; 32]).fingerprint()
        );
        let error = MasterKey::from_hex("zz-not-a-key").unwrap_err().to_string();
        assert!(!error.contains("zz-not-a-key"));
        assert_ne!(
            MasterKey::generate().unwrap().fingerprint(),
            MasterKey::generate().unwrap().fingerprint()
        );
    }
}
