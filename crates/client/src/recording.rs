//! Reading session recordings through `Airlock.GetSessionRecording`: every page of a
//! recording's chunks, its manifest and the server's public key ([`ApiClient::fetch_recording`]),
//! then, with the pure `airlock-recording` crate: the `.cast` file stock players read
//! ([`Recording::export`]), the tamper check ([`Recording::verify`], optionally against a key
//! pinned by the caller rather than the one the server names), the plain-text transcript
//! ([`Recording::transcript`]) and the parsed events a player needs ([`Recording::events`]).
//! A live session is followed page by page ([`ApiClient::recording_page`] from a chunk on).

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use airlock_recording::{Event, FormatError, Header, Report};

use crate::api::{ApiClient, ApiError};

/// Errors of reading a recording.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The API call failed (e.g. `AccessDeniedException`, no such session).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The server's answer is not what GetSessionRecording returns.
    #[error("unexpected GetSessionRecording answer: {0}")]
    BadAnswer(String),
    /// The session exists but nothing of it was recorded (a port session, recording off).
    #[error("session {0} has no recording")]
    NotRecorded(String),
    /// The recording's text is not valid asciicast (altered, or not a recording).
    #[error("the recording does not parse: {0}")]
    Format(#[from] FormatError),
    /// A public key given to check against is not 32 bytes of hex.
    #[error("public key must be 64 hex digits (an Ed25519 key): {0}")]
    BadKey(String),
}

/// One page of GetSessionRecording.
#[derive(Clone, Debug, Default)]
pub struct RecordingPage {
    /// The session.
    pub session_id: String,
    /// Whether the session was recorded at all.
    pub recorded: bool,
    /// Whether the session is still running (more chunks may come).
    pub live: bool,
    /// `(index, bytes)` of each chunk in this page, as stored.
    pub chunks: Vec<(u64, Vec<u8>)>,
    /// The signed manifest, once the recording is sealed.
    pub manifest: Option<Vec<u8>>,
    /// The server's recording public key, hex.
    pub public_key: String,
    /// The chunk to ask for next: set while more are stored, and while the session is live
    /// or its recording unsealed (poll it to follow); `None` once a sealed recording was read
    /// to its end.
    pub next_chunk: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PageAnswer {
    session_id: String,
    recorded: bool,
    #[serde(default)]
    live: bool,
    #[serde(default)]
    chunks: Vec<ChunkAnswer>,
    manifest: Option<String>,
    #[serde(default)]
    public_key: String,
    next_chunk: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ChunkAnswer {
    index: u64,
    data: String,
}

/// The most pages one fetch follows (each a few MiB): a server that keeps answering
/// "there is more" cannot hold a client forever.
const MAX_PAGES: usize = 100_000;

fn base64_field(what: &str, s: &str) -> Result<Vec<u8>, RecordingError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| RecordingError::BadAnswer(format!("{what} is not base64: {e}")))
}

/// A whole recording as fetched: chunks in the order the server stores them.
#[derive(Clone, Debug, Default)]
pub struct Recording {
    /// The session.
    pub session_id: String,
    /// Whether the session was still running when fetched.
    pub live: bool,
    /// `(index, bytes)` of every chunk.
    pub chunks: Vec<(u64, Vec<u8>)>,
    /// The signed manifest, once sealed.
    pub manifest: Option<Vec<u8>>,
    /// The server's recording public key, hex.
    pub public_key: String,
}

/// Parses a hex Ed25519 public key.
pub fn parse_public_key(hex_key: &str) -> Result<[u8; 32], RecordingError> {
    let bad = || RecordingError::BadKey(hex_key.chars().take(80).collect());
    let bytes = hex::decode(hex_key.trim()).map_err(|_| bad())?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| bad())
}

impl Recording {
    /// The `.cast` text (asciicast v2): the chunks' bodies in order, without their headers.
    /// No verification: `verify` says whether it can be trusted.
    pub fn export(&self) -> Result<String, RecordingError> {
        let bodies: Vec<Vec<u8>> = self.chunks.iter().map(|(_, b)| b.clone()).collect();
        Ok(airlock_recording::export(&bodies)?)
    }

    /// Checks every chunk and the manifest against `pinned` when given (a key the caller
    /// trusts), else against the key the server named.
    pub fn verify(&self, pinned: Option<&[u8; 32]>) -> Result<Report, RecordingError> {
        let key = match pinned {
            Some(k) => *k,
            None => parse_public_key(&self.public_key)?,
        };
        Ok(airlock_recording::verify(
            &self.chunks,
            self.manifest.as_deref(),
            &key,
        ))
    }

    /// The header and events, parsed from the export.
    pub fn events(&self) -> Result<(Header, Vec<Event>), RecordingError> {
        Ok(airlock_recording::parse_cast(&self.export()?)?)
    }

    /// The plain text of what was printed (and typed, with `with_input`).
    pub fn transcript(&self, with_input: bool) -> Result<String, RecordingError> {
        let (_, events) = self.events()?;
        Ok(airlock_recording::transcript(&events, with_input))
    }
}

impl ApiClient {
    /// One page of `Airlock.GetSessionRecording`: chunks from `from_chunk` on.
    pub async fn recording_page(
        &self,
        session_id: &str,
        from_chunk: u64,
        max_chunks: Option<u64>,
    ) -> Result<RecordingPage, RecordingError> {
        let mut input = json!({ "SessionId": session_id, "FromChunk": from_chunk });
        if let Some(m) = max_chunks {
            input["MaxChunks"] = json!(m);
        }
        let v: Value = self.call("Airlock.GetSessionRecording", &input).await?;
        let a: PageAnswer =
            serde_json::from_value(v).map_err(|e| RecordingError::BadAnswer(e.to_string()))?;
        let mut chunks = Vec::with_capacity(a.chunks.len());
        for c in a.chunks {
            chunks.push((
                c.index,
                base64_field(&format!("chunk {}", c.index), &c.data)?,
            ));
        }
        let manifest = match a.manifest {
            Some(m) => Some(base64_field("the manifest", &m)?),
            None => None,
        };
        Ok(RecordingPage {
            session_id: a.session_id,
            recorded: a.recorded,
            live: a.live,
            chunks,
            manifest,
            public_key: a.public_key,
            next_chunk: a.next_chunk,
        })
    }

    /// A session's whole recording as it is now: every page.
    pub async fn fetch_recording(&self, session_id: &str) -> Result<Recording, RecordingError> {
        let mut rec = Recording {
            session_id: session_id.to_owned(),
            ..Recording::default()
        };
        let mut from = 0;
        for _ in 0..MAX_PAGES {
            let page = self.recording_page(session_id, from, None).await?;
            if !page.recorded {
                return Err(RecordingError::NotRecorded(session_id.to_owned()));
            }
            rec.live = page.live;
            rec.public_key = page.public_key;
            rec.manifest = page.manifest;
            let caught_up = page.chunks.is_empty();
            rec.chunks.extend(page.chunks);
            match page.next_chunk {
                // A live (or unsealed) recording always names the next chunk to poll for; an
                // empty page means everything stored now was read.
                Some(n) if n == from && caught_up => return Ok(rec),
                // A server must move forward; one that does not is not followed in circles.
                Some(n) if n > from => from = n,
                Some(n) => {
                    return Err(RecordingError::BadAnswer(format!(
                        "NextChunk {n} does not move past FromChunk {from}"
                    )))
                }
                None => return Ok(rec),
            }
        }
        Err(RecordingError::BadAnswer(format!(
            "more than {MAX_PAGES} pages"
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use airlock_recording::{EventKind, Meta, Problem, Recorder};

    fn recorded() -> (Recording, [u8; 32]) {
        let seed = [7u8; 32];
        let meta = Meta {
            session: "alice-1".into(),
            target: "mi-00000000000000001".into(),
            owner: "alice".into(),
            document: "SSM-SessionManagerRunShell".into(),
            width: 80,
            height: 24,
            timestamp: 1_800_000_000,
            term: "xterm".into(),
        };
        let mut r = Recorder::new(&meta, &seed);
        let mut chunks = Vec::new();
        r.event(0.1, EventKind::Output, b"$ ");
        r.event(0.5, EventKind::Input, b"ls\r");
        chunks.extend(r.flush());
        r.event(0.6, EventKind::Output, b"ls\r\nfile\r\n");
        let (last, manifest) = r.finish(1.0, "2027-01-15T08:00:00Z", "Exited 0");
        chunks.extend(last);
        let rec = Recording {
            session_id: "alice-1".into(),
            live: false,
            chunks: chunks.into_iter().map(|c| (c.index, c.bytes)).collect(),
            manifest: Some(manifest.to_bytes()),
            public_key: hex::encode(airlock_recording::public_key(&seed)),
        };
        (rec, airlock_recording::public_key(&seed))
    }

    /// Export, transcript and verify of a fetched recording; a pinned key that is not the
    /// signer's fails every chunk; a bad key string is refused.
    #[test]
    fn export_transcript_verify() {
        let (rec, key) = recorded();
        let cast = rec.export().unwrap();
        assert!(
            cast.lines().next().unwrap().contains("\"version\":2"),
            "{cast}"
        );
        let (h, events) = rec.events().unwrap();
        assert_eq!((h.width, h.height), (80, 24));
        assert_eq!(events.len(), 3);
        assert_eq!(rec.transcript(false).unwrap(), "$ ls\nfile\n");
        assert!(rec.transcript(true).unwrap().contains("> ls"));
        assert!(rec.verify(None).unwrap().ok());
        assert!(rec.verify(Some(&key)).unwrap().ok());
        let other = airlock_recording::public_key(&[8u8; 32]);
        let report = rec.verify(Some(&other)).unwrap();
        assert!(!report.ok());
        assert!(matches!(
            report.problems[0],
            Problem::BadSignature { index: 0 } | Problem::BadManifest(_)
        ));
        for bad in ["", "zz", &"ab".repeat(31), &"ab".repeat(33)] {
            assert!(parse_public_key(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_public_key(&hex::encode(key)).unwrap(), key);
    }
}
