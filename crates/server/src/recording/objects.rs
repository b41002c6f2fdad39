//! The object store recordings go to, through the `object_store` crate: the local file system
//! (`file:///dir`, by default `<data-dir>/recordings`) or S3 (`s3://bucket/prefix`, endpoint,
//! region and credentials from the server's settings and the standard `AWS_*` variables).
//!
//! Layout under the location: `<session-id>/<index:010>.chunk` and `<session-id>/manifest.json`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutPayload};

use super::{RecordingConfig, RecordingError};

/// One opened store location.
#[derive(Debug)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    url: String,
    timeout: Duration,
}

/// The object name of chunk `index` (zero-padded so names sort in index order).
pub fn chunk_name(index: u64) -> String {
    format!("{index:010}.chunk")
}

/// The index in a chunk object's name, `None` for anything else (the manifest, strays).
pub fn parse_chunk_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".chunk")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The manifest's object name.
pub const MANIFEST_NAME: &str = "manifest.json";

fn store_err(url: &str, e: impl std::fmt::Display) -> RecordingError {
    RecordingError::Store(format!("{url}: {e}"))
}

impl Objects {
    /// Opens `url`: `file:///absolute/dir` (created, private) or `s3://bucket[/prefix]`.
    pub fn open(url: &str, config: &RecordingConfig) -> Result<Objects, RecordingError> {
        let timeout = config.store_timeout;
        if let Some(dir) = url.strip_prefix("file://") {
            if !dir.starts_with('/') {
                return Err(RecordingError::Config(format!(
                    "recording location {url} must be an absolute file:///path"
                )));
            }
            crate::datadir::private_dir(std::path::Path::new(dir))
                .map_err(|e| store_err(url, e))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| store_err(url, e))?;
            return Ok(Objects {
                store: Arc::new(fs),
                prefix: ObjPath::default(),
                url: url.to_owned(),
                timeout,
            });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(RecordingError::Config(format!(
                    "recording location {url} names no bucket"
                )));
            }
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                // Each chunk carries its own SHA-256 and signature (verified on every read), so
                // SigV4's payload hash would be a second pass over every byte for nothing; TLS
                // protects the transfer to a real S3.
                .with_unsigned_payload(true)
                .with_retry(object_store::RetryConfig {
                    backoff: Default::default(),
                    max_retries: 1,
                    retry_timeout: timeout,
                })
                .with_client_options(
                    object_store::ClientOptions::new()
                        .with_timeout(timeout)
                        .with_connect_timeout(Duration::from_secs(2))
                        .with_allow_http(true),
                );
            if let Some(region) = &config.s3_region {
                b = b.with_region(region);
            }
            if let Some(ep) = &config.s3_endpoint {
                b = b
                    .with_endpoint(ep)
                    .with_allow_http(ep.starts_with("http://"));
            }
            let s3 = b.build().map_err(|e| store_err(url, e))?;
            let prefix = prefix.trim_matches('/');
            let prefix = if prefix.is_empty() {
                ObjPath::default()
            } else {
                ObjPath::parse(prefix).map_err(|e| store_err(url, e))?
            };
            return Ok(Objects {
                store: Arc::new(s3),
                prefix,
                url: url.to_owned(),
                timeout,
            });
        }
        Err(RecordingError::Config(format!(
            "recording location {url} is neither file:///dir nor s3://bucket/prefix"
        )))
    }

    /// The location's URL (stored with each recording, so it is read back from where it went).
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, session_id: &str, name: &str) -> ObjPath {
        self.prefix.child(session_id).child(name)
    }

    /// Writes one object, bounded by the store timeout.
    pub async fn put(
        &self,
        session_id: &str,
        name: &str,
        data: impl Into<bytes::Bytes>,
    ) -> Result<(), RecordingError> {
        let path = self.path(session_id, name);
        let put = self.store.put(&path, PutPayload::from(data.into()));
        match tokio::time::timeout(self.timeout, put).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(store_err(&self.url, e)),
            Err(_) => Err(RecordingError::Store(format!(
                "{}: no answer within {:?}",
                self.url, self.timeout
            ))),
        }
    }

    /// Reads one object; `None` when it does not exist.
    pub async fn get(
        &self,
        session_id: &str,
        name: &str,
    ) -> Result<Option<Vec<u8>>, RecordingError> {
        let path = self.path(session_id, name);
        let read = async {
            match self.store.get(&path).await {
                Ok(r) => r.bytes().await.map(|b| Some(b.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        };
        match tokio::time::timeout(self.timeout, read).await {
            Ok(r) => r.map_err(|e| store_err(&self.url, e)),
            Err(_) => Err(RecordingError::Store(format!(
                "{}: no answer within {:?}",
                self.url, self.timeout
            ))),
        }
    }

    /// The chunk indices stored for a session, ascending.
    pub async fn list_chunks(&self, session_id: &str) -> Result<Vec<u64>, RecordingError> {
        let dir = self.prefix.child(session_id);
        let list = async {
            let mut out = Vec::new();
            let mut stream = self.store.list(Some(&dir));
            while let Some(meta) = stream.next().await {
                let meta = meta?;
                if let Some(i) = meta.location.filename().and_then(parse_chunk_name) {
                    out.push(i);
                }
            }
            Ok::<_, object_store::Error>(out)
        };
        let mut out = match tokio::time::timeout(self.timeout, list).await {
            Ok(r) => r.map_err(|e| store_err(&self.url, e))?,
            Err(_) => {
                return Err(RecordingError::Store(format!(
                    "{}: no answer within {:?}",
                    self.url, self.timeout
                )))
            }
        };
        out.sort_unstable();
        Ok(out)
    }

    /// Whether the store answers a write now (FailClosed asks before starting a session).
    pub async fn probe(&self) -> Result<(), RecordingError> {
        self.put(".airlock-probe", "probe", bytes::Bytes::from_static(b"ok"))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_names_round_trip_and_strays_are_ignored() {
        assert_eq!(chunk_name(7), "0000000007.chunk");
        assert_eq!(parse_chunk_name(&chunk_name(123_456)), Some(123_456));
        assert_eq!(parse_chunk_name("manifest.json"), None);
        assert_eq!(parse_chunk_name(".chunk"), None);
        assert_eq!(parse_chunk_name("-1.chunk"), None);
        assert_eq!(parse_chunk_name("99999999999999999999999.chunk"), None);
    }
}
