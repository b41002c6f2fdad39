//! TLS set-up: load the operator's certificate or generate a self-signed one into the data
//! directory (kept across restarts so its fingerprint stays the same).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;

/// Errors setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing a PEM file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The PEM held no usable certificate or key.
    #[error("{0}")]
    Pem(String),
    /// rustls refused the pair.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A ready server config and the SHA-256 fingerprint of its leaf certificate.
pub struct Loaded {
    /// For the acceptor.
    pub config: Arc<rustls::ServerConfig>,
    /// Hex SHA-256 of the leaf certificate's DER, printed so clients can pin it.
    pub fingerprint: String,
    /// Where the certificate lives (clients may trust this file).
    pub cert_path: std::path::PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Loads a PEM certificate chain and key.
pub fn load(cert: &Path, key: &Path) -> Result<Loaded, TlsError> {
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem(format!("{}: {e}", cert.display())))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| TlsError::Pem(format!("{}: {e}", key.display())))?
        .ok_or_else(|| TlsError::Pem(format!("{}: no private key found", key.display())))?;
    let leaf = certs
        .first()
        .ok_or_else(|| TlsError::Pem(format!("{}: no certificate found", cert.display())))?;
    let fingerprint = hex::encode(sha2::Sha256::digest(leaf.as_ref()));
    // AES-128-GCM first, as the client does: the cheapest suite per byte with AES-NI.
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Loaded {
        config: Arc::new(config),
        fingerprint,
        cert_path: cert.to_path_buf(),
    })
}

/// Loads the generated certificate from `data_dir/tls/`, generating it on first use.
pub fn self_signed(data_dir: &Path) -> Result<Loaded, TlsError> {
    let dir = data_dir.join("tls");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if !cert.exists() || !key.exists() {
        crate::datadir::private_dir(&dir).map_err(|source| TlsError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
            let h = h.trim();
            if !h.is_empty() {
                names.push(h.to_owned());
            }
        }
        let generated = rcgen::generate_simple_self_signed(names)?;
        write_private(&key, generated.key_pair.serialize_pem().as_bytes())?;
        // The certificate is public, but it lives in the private data directory like the rest.
        write_private(&cert, generated.cert.pem().as_bytes())?;
    }
    load(&cert, &key)
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| TlsError::Io {
            path: path.display().to_string(),
            source,
        })?;
    f.write_all(data).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })
}
