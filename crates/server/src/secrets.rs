//! Secrets at rest: SigV4 needs each access key's secret in clear, so it is stored encrypted
//! (ChaCha20-Poly1305) under a master key that lives in its own file, apart from the database.
//! A stolen database alone reveals no usable secret.
//!
//! Each sealed value is bound to its row ([`SealedAt`]: table, column, row key) as associated
//! data, so a sealed secret copied into another row (another user's key) does not open there.
//! Format `enc2:` carries that binding; values an older version sealed as `enc1:` (no binding)
//! open only through [`MasterKey::open_legacy`], which the store uses once at start to re-seal
//! them.

use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// Sealed with no associated data (older versions); re-sealed at start.
const PREFIX_V1: &str = "enc1:";
/// Sealed and bound to its row.
const PREFIX_V2: &str = "enc2:";

/// Where a sealed value lives: it opens only there. Every field is part of the associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealedAt<'a> {
    /// The table (`access_keys`).
    pub table: &'a str,
    /// The column (`secret_access_key`).
    pub column: &'a str,
    /// The row's identity: its primary key and owner (`AKIA…/AIDA…`).
    pub row: &'a str,
}

impl SealedAt<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut aad = b"airlock-sealed-v2".to_vec();
        for part in [self.table, self.column, self.row] {
            aad.extend_from_slice(&(part.len() as u64).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

impl std::fmt::Display for SealedAt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{} of {}", self.table, self.column, self.row)
    }
}

/// Errors handling the master key or a sealed secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The key file could not be read or written.
    #[error("master key {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file does not hold a key.
    #[error("master key {0} is malformed (expected 32 bytes, base64)")]
    BadKey(String),
    /// A stored secret could not be opened with this key.
    #[error("a stored secret cannot be decrypted with this master key")]
    Undecryptable,
    /// A sealed value does not open where it is stored: it was sealed for another row (copied
    /// there), altered, or sealed under another master key.
    #[error("the sealed secret in {0} does not open: it belongs to another row, was altered, or was sealed under another master key")]
    WrongRow(String),
    /// A value in the unbound format, which only the start-up migration reads.
    #[error("the secret in {0} is sealed in the old unbound format (enc1); restart the server to re-seal it")]
    Legacy(String),
}

/// The server's master key: seals secrets, keys the audit chain and signs its checkpoint.
#[derive(Clone)]
pub struct MasterKey {
    aead: ChaCha20Poly1305,
    audit: [u8; 32],
    checkpoint: [u8; 32],
    recording: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Loads the key file, creating it (mode 0600) with a random key on first start.
    pub fn load_or_create(path: &Path) -> Result<MasterKey, SecretError> {
        let display = path.display().to_string();
        let io = |source| SecretError::Io {
            path: display.clone(),
            source,
        };
        let raw = match std::fs::read_to_string(path) {
            Ok(text) => {
                tighten_key_file(path);
                base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .ok()
                    .filter(|k| k.len() == 32)
                    .ok_or_else(|| SecretError::BadKey(display.clone()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = ChaCha20Poly1305::generate_key(&mut OsRng);
                if let Some(dir) = path.parent() {
                    crate::private_dir(dir).map_err(io)?;
                }
                let text = base64::engine::general_purpose::STANDARD.encode(key.as_slice());
                crate::write_private(path, text.as_bytes()).map_err(io)?;
                key.to_vec()
            }
            Err(e) => return Err(io(e)),
        };
        Ok(MasterKey {
            aead: ChaCha20Poly1305::new(Key::from_slice(&raw)),
            audit: derive(b"airlock-audit-chain-v1", &raw),
            checkpoint: derive(b"airlock-audit-checkpoint-v1", &raw),
            recording: derive(b"airlock-recording-signing-v1", &raw),
        })
    }

    /// The key of the audit chain's HMAC, derived from the master key: someone who can write
    /// the database but not read the key file cannot forge or re-chain records.
    pub fn audit_key(&self) -> &[u8; 32] {
        &self.audit
    }

    /// The Ed25519 seed signing session recordings (a label of its own): the database never
    /// holds it, so whoever can write the database or the object store cannot re-sign chunks.
    pub fn recording_seed(&self) -> &[u8; 32] {
        &self.recording
    }

    /// The key signing the audit checkpoint (a label of its own, so a checkpoint can never be
    /// passed off as a record hash or the reverse).
    pub fn checkpoint_key(&self) -> &[u8; 32] {
        &self.checkpoint
    }

    /// Encrypts a secret for storage in one place: it opens only with the same `at`.
    pub fn seal(&self, plain: &str, at: &SealedAt<'_>) -> String {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = at.aad();
        // Encryption with a fresh nonce cannot fail for inputs of this size.
        let ct = self
            .aead
            .encrypt(
                &nonce,
                Payload {
                    msg: plain.as_bytes(),
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        format!(
            "{PREFIX_V2}{}",
            base64::engine::general_purpose::STANDARD.encode(blob)
        )
    }

    /// Decrypts a secret stored at `at`; a value sealed for another row fails with
    /// [`SecretError::WrongRow`], one in the unbound old format with [`SecretError::Legacy`].
    pub fn open(&self, stored: &str, at: &SealedAt<'_>) -> Result<String, SecretError> {
        if stored.starts_with(PREFIX_V1) {
            return Err(SecretError::Legacy(at.to_string()));
        }
        let wrong = || SecretError::WrongRow(at.to_string());
        let (nonce, ct) = split(stored, PREFIX_V2).ok_or_else(wrong)?;
        let aad = at.aad();
        let plain = self
            .aead
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ct,
                    aad: &aad,
                },
            )
            .map_err(|_| wrong())?;
        String::from_utf8(plain).map_err(|_| wrong())
    }

    /// Decrypts a value an older version sealed without binding (`enc1:`), so the store can
    /// re-seal it bound to its row.
    pub fn open_legacy(&self, stored: &str) -> Result<String, SecretError> {
        let (nonce, ct) = split(stored, PREFIX_V1).ok_or(SecretError::Undecryptable)?;
        let plain = self
            .aead
            .decrypt(Nonce::from_slice(&nonce), ct.as_slice())
            .map_err(|_| SecretError::Undecryptable)?;
        String::from_utf8(plain).map_err(|_| SecretError::Undecryptable)
    }

    /// Seals the way versions before row binding did (`enc1:`, no associated data), for the
    /// tests of the migration.
    #[cfg(test)]
    pub(crate) fn seal_unbound(&self, plain: &str) -> String {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let mut blob = nonce.to_vec();
        blob.extend(
            self.aead
                .encrypt(&nonce, plain.as_bytes())
                .unwrap_or_default(),
        );
        format!(
            "{PREFIX_V1}{}",
            base64::engine::general_purpose::STANDARD.encode(blob)
        )
    }

    /// Which format a stored value is in, so the store knows what to migrate.
    pub fn format_of(stored: &str) -> SealFormat {
        if stored.starts_with(PREFIX_V2) {
            SealFormat::Bound
        } else if stored.starts_with(PREFIX_V1) {
            SealFormat::Unbound
        } else {
            SealFormat::Plain
        }
    }
}

/// The format of a stored secret, as far as its prefix tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealFormat {
    /// `enc2:`: sealed and bound to its row.
    Bound,
    /// `enc1:`: sealed with no binding (older versions).
    Unbound,
    /// Neither: stored in clear by a version before sealing.
    Plain,
}

fn split(stored: &str, prefix: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let blob = base64::engine::general_purpose::STANDARD
        .decode(stored.strip_prefix(prefix)?)
        .ok()?;
    if blob.len() < 12 {
        return None;
    }
    let (nonce, ct) = blob.split_at(12);
    Some((nonce.to_vec(), ct.to_vec()))
}

fn derive(label: &[u8], raw: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(label);
    h.update(raw);
    h.finalize().into()
}

/// A key file others can read is made private (0600), and the fix is logged: a key readable by
/// local users undoes sealing.
fn tighten_key_file(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => tracing::warn!(
                "master key {} was mode {mode:o}; made it 0600",
                path.display()
            ),
            Err(e) => tracing::warn!(
                "master key {} is mode {mode:o} and could not be made private: {e}",
                path.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const HERE: SealedAt<'static> = SealedAt {
        table: "access_keys",
        column: "secret_access_key",
        row: "AKIA1/AIDA1",
    };

    #[test]
    fn seals_and_opens_and_detects_the_wrong_key() {
        let dir = std::env::temp_dir().join(format!("airlock-mk-{}", std::process::id()));
        let k1 = MasterKey::load_or_create(&dir.join("k1")).unwrap();
        let again = MasterKey::load_or_create(&dir.join("k1")).unwrap();
        let k2 = MasterKey::load_or_create(&dir.join("k2")).unwrap();
        let sealed = k1.seal("wJalrXUtnFEMI", &HERE);
        assert!(sealed.starts_with("enc2:"));
        assert!(!sealed.contains("wJalr"));
        assert_eq!(again.open(&sealed, &HERE).unwrap(), "wJalrXUtnFEMI");
        assert!(k2.open(&sealed, &HERE).is_err());
        assert!(k1.open("plain", &HERE).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_sealed_secret_opens_only_in_its_own_row() {
        let dir = std::env::temp_dir().join(format!("airlock-mk-row-{}", std::process::id()));
        let k = MasterKey::load_or_create(&dir.join("k")).unwrap();
        let sealed = k.seal("s3cret", &HERE);
        for other in [
            SealedAt {
                row: "AKIA2/AIDA2",
                ..HERE
            },
            SealedAt {
                table: "session_credentials",
                ..HERE
            },
            SealedAt {
                column: "other",
                ..HERE
            },
        ] {
            let err = k.open(&sealed, &other).unwrap_err();
            assert!(matches!(err, SecretError::WrongRow(_)), "{err}");
            assert!(err.to_string().contains("another row"), "{err}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn old_unbound_values_open_only_through_the_migration() {
        let dir = std::env::temp_dir().join(format!("airlock-mk-v1-{}", std::process::id()));
        let k = MasterKey::load_or_create(&dir.join("k")).unwrap();
        let v1 = k.seal_unbound("old");
        assert_eq!(MasterKey::format_of(&v1), SealFormat::Unbound);
        assert_eq!(k.open_legacy(&v1).unwrap(), "old");
        assert!(matches!(k.open(&v1, &HERE), Err(SecretError::Legacy(_))));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_loose_key_file_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("airlock-mk-mode-{}", std::process::id()));
        let path = dir.join("k");
        MasterKey::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        MasterKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
