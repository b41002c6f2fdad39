//! Verifying a recording: every chunk's signature and body hash, the chain between chunks, that no
//! index is missing or out of place, and the signed manifest. Never panics on any input.

use crate::chunk::{check_chunk, ChunkFault, Manifest};
use ed25519_dalek::VerifyingKey;

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// One thing wrong with a recording, naming the chunk where it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The chunk stored under `index` is not what was written (bytes changed, unreadable, or a
    /// chunk of another session).
    Altered {
        /// Index the chunk was stored under.
        index: u64,
    },
    /// No chunk is stored under `index`.
    Missing {
        /// The missing index.
        index: u64,
    },
    /// The chunk written as `index` was found stored under `found_at`.
    Reordered {
        /// Index in the chunk's own (signed) header.
        index: u64,
        /// Index it was stored under.
        found_at: u64,
    },
    /// The chunk stored under `index` has a signature that does not verify under the key.
    BadSignature {
        /// Index the chunk was stored under.
        index: u64,
    },
    /// The manifest is unreadable, not signed by the key, or disagrees with the chunks.
    BadManifest(String),
    /// There is no manifest: the session is live, or its recording was not sealed (yet), so a
    /// removed tail could not be detected.
    Unsealed,
}

impl Problem {
    /// The stored position this problem is about, for ordering (manifest problems last).
    fn position(&self) -> u64 {
        match self {
            Problem::Altered { index }
            | Problem::Missing { index }
            | Problem::BadSignature { index } => *index,
            Problem::Reordered { found_at, .. } => *found_at,
            Problem::BadManifest(_) | Problem::Unsealed => u64::MAX,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Altered { index } => write!(f, "chunk {index} was altered"),
            Problem::Missing { index } => write!(f, "chunk {index} is missing"),
            Problem::Reordered { index, found_at } => {
                write!(f, "chunk {index} was reordered: found in place of chunk {found_at}")
            }
            Problem::BadSignature { index } => {
                write!(f, "chunk {index} has a signature that does not verify")
            }
            Problem::BadManifest(why) => write!(f, "manifest: {why}"),
            Problem::Unsealed => write!(
                f,
                "recording is not sealed (no manifest: the session is live or was not recovered yet)"
            ),
        }
    }
}

/// The outcome of [`verify`]: what was checked and every problem, first (lowest chunk) first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Session id (from the manifest, else the first valid chunk; empty when neither).
    pub session: String,
    /// Number of chunks the recording has (the manifest's count when sealed).
    pub chunks: u64,
    /// Whether a valid signed manifest covers the recording.
    pub sealed: bool,
    /// Problems found, the first chunk's first.
    pub problems: Vec<Problem>,
}

impl Report {
    /// True when the recording is sealed and every chunk is intact, present and in place.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// True when the only problem is that the recording is not sealed yet (a live session whose
    /// chunks so far are intact).
    pub fn ok_so_far(&self) -> bool {
        self.problems.iter().all(|p| *p == Problem::Unsealed)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sealed = if self.sealed { "sealed" } else { "unsealed" };
        match self.problems.first() {
            None => write!(
                f,
                "recording of session {} verifies: {} chunks, {sealed}",
                self.session, self.chunks
            ),
            Some(first) => write!(
                f,
                "recording of session {} does not verify ({} problem(s)): {first}",
                self.session,
                self.problems.len()
            ),
        }
    }
}

fn read_manifest(bytes: &[u8], key: &VerifyingKey) -> Result<Manifest, String> {
    let m: Manifest =
        serde_json::from_slice(bytes).map_err(|e| format!("not a recording manifest: {e}"))?;
    if m.v != 1 {
        return Err(format!("unknown manifest version {}", m.v));
    }
    if !m.signature_ok(key) {
        return Err("signature does not verify under the public key".to_string());
    }
    let last = m
        .hashes
        .last()
        .cloned()
        .unwrap_or_else(|| hex::encode([0u8; 32]));
    if m.chunks != m.hashes.len() as u64 || m.last != last {
        return Err("chunk count or last hash disagrees with its own hash list".to_string());
    }
    Ok(m)
}

/// Verifies chunks (as fetched, in the order given, with the index each was stored under) and the
/// manifest (`None` while live / unsealed) against a public key. Never panics on any input.
pub fn verify(chunks: &[(u64, Vec<u8>)], manifest: Option<&[u8]>, key: &[u8; 32]) -> Report {
    let mut problems: Vec<Problem> = Vec::new();
    let Ok(vk) = VerifyingKey::from_bytes(key) else {
        return Report {
            session: String::new(),
            chunks: chunks.len() as u64,
            sealed: false,
            problems: vec![Problem::BadManifest(
                "the public key is not a valid Ed25519 key".to_string(),
            )],
        };
    };
    let manifest = match manifest.map(|b| read_manifest(b, &vk)) {
        None => {
            problems.push(Problem::Unsealed);
            None
        }
        Some(Err(why)) => {
            problems.push(Problem::BadManifest(why));
            None
        }
        Some(Ok(m)) => Some(m),
    };
    let mut session = manifest.as_ref().map(|m| m.session.clone());

    // Stored index -> (full hash, claimed prev) of chunks that are individually valid and in place.
    let mut good: BTreeMap<u64, ([u8; 32], String)> = BTreeMap::new();
    let mut seen: HashMap<u64, ()> = HashMap::new();
    let mut max_stored: Option<u64> = None;
    for (stored, bytes) in chunks {
        let stored = *stored;
        max_stored = Some(max_stored.map_or(stored, |m| m.max(stored)));
        if seen.insert(stored, ()).is_some() {
            problems.push(Problem::Altered { index: stored });
            continue;
        }
        match check_chunk(bytes, &vk) {
            Err(ChunkFault::BadSignature) => problems.push(Problem::BadSignature { index: stored }),
            Err(ChunkFault::Unreadable | ChunkFault::BodyAltered) => {
                problems.push(Problem::Altered { index: stored })
            }
            Ok(h) => {
                let session = session.get_or_insert_with(|| h.session.clone());
                if h.session != *session {
                    problems.push(Problem::Altered { index: stored });
                } else if h.index != stored {
                    problems.push(Problem::Reordered {
                        index: h.index,
                        found_at: stored,
                    });
                } else {
                    good.insert(stored, (crate::chunk::chunk_hash(h.v, bytes), h.prev));
                }
            }
        }
    }

    let count = match &manifest {
        Some(m) => m.chunks,
        None => max_stored.map_or(0, |m| m.saturating_add(1)),
    };
    // Bounded by what was given plus the manifest's count: a hostile manifest claiming 2^64
    // chunks must not make this loop forever.
    let limit =
        count.min(chunks.len() as u64 + 1 + manifest.as_ref().map_or(0, |m| m.hashes.len() as u64));
    for i in 0..limit {
        if !seen.contains_key(&i) {
            problems.push(Problem::Missing { index: i });
        }
    }
    if let Some(m) = &manifest {
        for &stored in seen.keys() {
            if stored >= m.chunks {
                problems.push(Problem::BadManifest(format!(
                    "chunk {stored} is not in the manifest (appended after sealing)"
                )));
            }
        }
    }

    // The chain: each valid chunk names the hash of the chunk before it.
    for (&i, (hash, prev)) in &good {
        let expected = if i == 0 {
            Some([0u8; 32])
        } else {
            good.get(&(i - 1)).map(|(h, _)| *h)
        };
        if let Some(expected) = expected {
            if hex::encode(expected) != *prev {
                problems.push(Problem::Altered { index: i });
                continue;
            }
        }
        if let Some(m) = &manifest {
            let listed = usize::try_from(i).ok().and_then(|i| m.hashes.get(i));
            if listed.is_some_and(|h| *h != hex::encode(hash)) {
                problems.push(Problem::Altered { index: i });
            }
        }
    }

    // One problem per chunk (its first), chunk order, manifest-level problems last.
    problems.sort_by_key(Problem::position);
    let mut named: HashMap<u64, ()> = HashMap::new();
    problems.retain(|p| {
        let pos = p.position();
        pos == u64::MAX || named.insert(pos, ()).is_none()
    });
    problems.dedup();

    Report {
        session: session.unwrap_or_default(),
        chunks: count,
        sealed: manifest.is_some(),
        problems,
    }
}
