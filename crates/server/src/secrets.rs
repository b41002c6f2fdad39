//! Secrets at rest: SigV4 needs each access key's secret in clear, so it is stored encrypted
//! (ChaCha20-Poly1305) under a master key that lives in its own file, apart from the database.
//! A stolen database alone reveals no usable secret.

use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

const PREFIX: &str = "enc1:";

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
}

/// The server's master key: seals secrets and keys the audit chain.
#[derive(Clone)]
pub struct MasterKey(ChaCha20Poly1305, [u8; 32]);

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
            Ok(text) => base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .ok()
                .filter(|k| k.len() == 32)
                .ok_or_else(|| SecretError::BadKey(display.clone()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = ChaCha20Poly1305::generate_key(&mut OsRng);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                let text = base64::engine::general_purpose::STANDARD.encode(key.as_slice());
                crate::write_private(path, text.as_bytes()).map_err(io)?;
                key.to_vec()
            }
            Err(e) => return Err(io(e)),
        };
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"airlock-audit-chain-v1");
        h.update(&raw);
        let audit: [u8; 32] = h.finalize().into();
        Ok(MasterKey(
            ChaCha20Poly1305::new(Key::from_slice(&raw)),
            audit,
        ))
    }

    /// The key of the audit chain's HMAC, derived from the master key: someone who can write
    /// the database but not read the key file cannot forge or re-chain records.
    pub fn audit_key(&self) -> &[u8; 32] {
        &self.1
    }

    /// Encrypts a secret for storage.
    pub fn seal(&self, plain: &str) -> String {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        // Encryption with a fresh nonce cannot fail for inputs of this size.
        let ct = self.0.encrypt(&nonce, plain.as_bytes()).unwrap_or_default();
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(blob)
        )
    }

    /// Decrypts a stored secret.
    pub fn open(&self, stored: &str) -> Result<String, SecretError> {
        let blob = stored
            .strip_prefix(PREFIX)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .ok_or(SecretError::Undecryptable)?;
        if blob.len() < 12 {
            return Err(SecretError::Undecryptable);
        }
        let (nonce, ct) = blob.split_at(12);
        let plain = self
            .0
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| SecretError::Undecryptable)?;
        String::from_utf8(plain).map_err(|_| SecretError::Undecryptable)
    }

    /// Whether a stored value is sealed (older rows may still be plain).
    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(PREFIX)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn seals_and_opens_and_detects_the_wrong_key() {
        let dir = std::env::temp_dir().join(format!("airlock-mk-{}", std::process::id()));
        let k1 = MasterKey::load_or_create(&dir.join("k1")).unwrap();
        let again = MasterKey::load_or_create(&dir.join("k1")).unwrap();
        let k2 = MasterKey::load_or_create(&dir.join("k2")).unwrap();
        let sealed = k1.seal("wJalrXUtnFEMI");
        assert!(!sealed.contains("wJalr"));
        assert_eq!(again.open(&sealed).unwrap(), "wJalrXUtnFEMI");
        assert!(k2.open(&sealed).is_err());
        assert!(k1.open("plain").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
