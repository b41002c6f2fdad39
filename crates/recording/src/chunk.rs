//! The writer side: a [`Recorder`] turns relayed bytes into asciicast events, cuts them into
//! hash-chained signed chunks, and signs the manifest at the end. Also the header/manifest types and
//! their canonical signed bytes, shared with [`crate::verify`].

use crate::cast::{Event, EventKind, Meta};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A chunk is flushed when its body reaches about this size, even within the one-second cadence,
/// so no chunk is too large to fetch in one API page.
pub const CHUNK_TARGET_BYTES: usize = 256 * 1024;

const CHUNK_DOMAIN: &[u8] = b"airlock-recording-chunk-v1";

/// The chunk format the recorder writes. Version 1 chained the SHA-256 of each chunk's complete
/// bytes; version 2 chains the SHA-256 of its header line, which holds the body's SHA-256 and is
/// signed with the version: as tamper-evident, with one pass over the body instead of two.
/// Readers accept both.
pub const CHUNK_VERSION: u32 = 2;
const MANIFEST_DOMAIN: &[u8] = b"airlock-recording-manifest-v1";

/// The first line of every chunk: which session and position it is, what precedes it, what it
/// contains, and the server's signature over that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkHeader {
    /// Format version ([`CHUNK_VERSION`]; 1 is still read).
    pub v: u32,
    /// Session id.
    pub session: String,
    /// Position of this chunk, from 0.
    pub index: u64,
    /// Hex [`chunk_hash`] of the previous chunk (64 zeros for chunk 0).
    pub prev: String,
    /// Hex SHA-256 of this chunk's bytes after the header line.
    pub body: String,
    /// Hex Ed25519 signature over [`ChunkHeader::signed_bytes`].
    pub sig: String,
}

fn push_field(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u64).to_be_bytes());
    out.extend_from_slice(field);
}

impl ChunkHeader {
    /// The canonical bytes the signature covers: a domain label then each field length-prefixed,
    /// so no two different headers sign the same bytes. From version 2 the version is signed
    /// too, so a header cannot be passed off as another version's.
    pub fn signed_bytes(v: u32, session: &str, index: u64, prev: &str, body: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + session.len() + 128);
        push_field(&mut out, CHUNK_DOMAIN);
        if v >= 2 {
            push_field(&mut out, &v.to_be_bytes());
        }
        push_field(&mut out, session.as_bytes());
        push_field(&mut out, &index.to_be_bytes());
        push_field(&mut out, prev.as_bytes());
        push_field(&mut out, body.as_bytes());
        out
    }

    /// Whether the signature is valid under `key`.
    pub fn signature_ok(&self, key: &VerifyingKey) -> bool {
        let msg = Self::signed_bytes(self.v, &self.session, self.index, &self.prev, &self.body);
        sig_ok(key, &msg, &self.sig)
    }
}

fn sig_ok(key: &VerifyingKey, msg: &[u8], sig_hex: &str) -> bool {
    let Ok(bytes) = hex::decode(sig_hex) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(&bytes) else {
        return false;
    };
    key.verify(msg, &sig).is_ok()
}

/// The signed end-of-recording record: every chunk's hash, so removing or appending chunks after
/// the fact is detected, plus why and when the session ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version, 1.
    pub v: u32,
    /// Session id.
    pub session: String,
    /// Number of chunks.
    pub chunks: u64,
    /// Hex SHA-256 of the last chunk (64 zeros when there is none).
    pub last: String,
    /// Hex [`chunk_hash`] of each chunk, in index order.
    pub hashes: Vec<String>,
    /// When the session ended (RFC 3339, as the server formats it).
    pub ended: String,
    /// Why it ended (the end reason's text).
    pub reason: String,
    /// True when sealed by crash recovery rather than at the session's end.
    pub recovered: bool,
    /// Hex Ed25519 signature over [`Manifest::signed_bytes`].
    pub sig: String,
}

impl Manifest {
    /// The canonical bytes the signature covers (domain label, fields length-prefixed).
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.hashes.len() * 72);
        push_field(&mut out, MANIFEST_DOMAIN);
        push_field(&mut out, self.session.as_bytes());
        push_field(&mut out, &self.chunks.to_be_bytes());
        push_field(&mut out, self.last.as_bytes());
        push_field(&mut out, &(self.hashes.len() as u64).to_be_bytes());
        for h in &self.hashes {
            push_field(&mut out, h.as_bytes());
        }
        push_field(&mut out, self.ended.as_bytes());
        push_field(&mut out, self.reason.as_bytes());
        push_field(&mut out, &[u8::from(self.recovered)]);
        out
    }

    /// Whether the signature is valid under `key`.
    pub fn signature_ok(&self, key: &VerifyingKey) -> bool {
        sig_ok(key, &self.signed_bytes(), &self.sig)
    }

    fn build(
        key: &SigningKey,
        session: &str,
        hashes: &[[u8; 32]],
        ended: &str,
        reason: &str,
        recovered: bool,
    ) -> Manifest {
        let mut m = Manifest {
            v: 1,
            session: session.to_string(),
            chunks: hashes.len() as u64,
            last: hex::encode(hashes.last().copied().unwrap_or([0; 32])),
            hashes: hashes.iter().map(hex::encode).collect(),
            ended: ended.to_string(),
            reason: reason.to_string(),
            recovered,
            sig: String::new(),
        };
        m.sig = hex::encode(key.sign(&m.signed_bytes()).to_bytes());
        m
    }

    /// The manifest as stored (one JSON object, no trailing newline).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The Ed25519 public key for a signing seed (what the API hands out and `verify` checks against).
pub fn public_key(seed: &[u8; 32]) -> [u8; 32] {
    SigningKey::from_bytes(seed).verifying_key().to_bytes()
}

/// A finished chunk, ready to store under its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Position, from 0.
    pub index: u64,
    /// Complete bytes: header line, newline, asciicast lines.
    pub bytes: Vec<u8>,
}

/// The recording state machine of one session: events in, signed chunks and a manifest out. It does
/// no I/O and keeps no clock: the caller says when to flush and what time each event happened.
pub struct Recorder {
    key: SigningKey,
    session: String,
    next_index: u64,
    prev: [u8; 32],
    hashes: Vec<[u8; 32]>,
    body: String,
    carry_out: Vec<u8>,
    carry_in: Vec<u8>,
    stored_bytes: u64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the signing key.
        f.debug_struct("Recorder")
            .field("session", &self.session)
            .field("next_index", &self.next_index)
            .field("pending", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// Decodes `carry ++ data` as UTF-8: invalid bytes become U+FFFD, an incomplete sequence at the end
/// is kept in `carry` for the next frame (a character split across two frames stays whole).
fn decode_utf8(carry: &mut Vec<u8>, data: &[u8]) -> String {
    let joined;
    let mut input: &[u8] = if carry.is_empty() {
        data
    } else {
        carry.extend_from_slice(data);
        joined = std::mem::take(carry);
        &joined
    };
    let mut out = String::with_capacity(input.len());
    loop {
        match std::str::from_utf8(input) {
            Ok(s) => {
                out.push_str(s);
                break;
            }
            Err(e) => {
                let (good, rest) = input.split_at(e.valid_up_to());
                // `good` is valid by construction; from_utf8 cannot fail here.
                out.push_str(std::str::from_utf8(good).unwrap_or_default());
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        input = rest.get(n..).unwrap_or_default();
                    }
                    None => {
                        carry.extend_from_slice(rest);
                        break;
                    }
                }
            }
        }
    }
    out
}

impl Recorder {
    /// Starts a recording: chunk 0's body begins with the asciicast header from `meta`.
    pub fn new(meta: &Meta, seed: &[u8; 32]) -> Recorder {
        let mut body = meta.header_line();
        body.push('\n');
        Recorder {
            key: SigningKey::from_bytes(seed),
            session: meta.session.clone(),
            next_index: 0,
            prev: [0; 32],
            hashes: Vec::new(),
            body,
            carry_out: Vec::new(),
            carry_in: Vec::new(),
            stored_bytes: 0,
        }
    }

    /// Records relayed bytes at `t` seconds since the start. Output and input are decoded as UTF-8
    /// across frames; a resize's data is its `"COLSxROWS"` text. Returns the event as written, or
    /// `None` when nothing complete arrived yet (half a character).
    pub fn event(&mut self, t: f64, kind: EventKind, data: &[u8]) -> Option<Event> {
        let data = match kind {
            EventKind::Output => decode_utf8(&mut self.carry_out, data),
            EventKind::Input => decode_utf8(&mut self.carry_in, data),
            EventKind::Resize => String::from_utf8_lossy(data).into_owned(),
        };
        if data.is_empty() {
            return None;
        }
        let ev = Event { t, kind, data };
        ev.write_line(&mut self.body);
        self.body.push('\n');
        Some(ev)
    }

    /// Writes an asciicast marker (`"m"`) event, e.g. to say in the recording itself that the spool
    /// overflowed. Players show or skip markers; [`crate::parse_cast`] skips them.
    pub fn marker(&mut self, t: f64, label: &str) {
        let t = (t.max(0.0) * 1_000_000.0).round() / 1_000_000.0;
        let t = if t.is_finite() { t } else { 0.0 };
        self.body
            .push_str(&serde_json::json!([t, "m", label]).to_string());
        self.body.push('\n');
    }

    /// Bytes of body waiting for the next chunk.
    pub fn pending_len(&self) -> usize {
        self.body.len()
    }

    /// Whether the pending body has reached [`CHUNK_TARGET_BYTES`] and should be flushed now.
    pub fn should_flush(&self) -> bool {
        self.body.len() >= CHUNK_TARGET_BYTES
    }

    /// Chunks produced so far.
    pub fn chunks(&self) -> u64 {
        self.next_index
    }

    /// Total bytes of the chunks produced so far.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    /// Session id.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// Cuts the pending body into the next signed chunk; `None` when nothing is pending.
    pub fn flush(&mut self) -> Option<Chunk> {
        if self.body.is_empty() {
            return None;
        }
        let body = std::mem::take(&mut self.body);
        let body_hash = hex::encode(Sha256::digest(body.as_bytes()));
        let prev = hex::encode(self.prev);
        let index = self.next_index;
        let sig = self.key.sign(&ChunkHeader::signed_bytes(
            CHUNK_VERSION,
            &self.session,
            index,
            &prev,
            &body_hash,
        ));
        let header = ChunkHeader {
            v: CHUNK_VERSION,
            session: self.session.clone(),
            index,
            prev,
            body: body_hash,
            sig: hex::encode(sig.to_bytes()),
        };
        let head = serde_json::to_vec(&header).unwrap_or_default();
        let hash: [u8; 32] = Sha256::digest(&head).into();
        let mut bytes = Vec::with_capacity(head.len() + 1 + body.len());
        bytes.extend_from_slice(&head);
        bytes.push(b'\n');
        bytes.extend_from_slice(body.as_bytes());
        self.prev = hash;
        self.hashes.push(hash);
        self.next_index += 1;
        self.stored_bytes += bytes.len() as u64;
        Some(Chunk { index, bytes })
    }

    /// Ends the recording: a half character still carried becomes U+FFFD at `t`, the rest is
    /// flushed, and the manifest signed. Returns the last chunk (if any) and the manifest.
    pub fn finish(mut self, t: f64, ended: &str, reason: &str) -> (Option<Chunk>, Manifest) {
        for kind in [EventKind::Output, EventKind::Input] {
            let carry = match kind {
                EventKind::Input => std::mem::take(&mut self.carry_in),
                _ => std::mem::take(&mut self.carry_out),
            };
            if !carry.is_empty() {
                self.event(t, kind, "\u{FFFD}".as_bytes());
            }
        }
        let last = self.flush();
        let manifest =
            Manifest::build(&self.key, &self.session, &self.hashes, ended, reason, false);
        (last, manifest)
    }
}

/// Parses a chunk's header line and checks its signature and body hash: `Some(header)` only when
/// the chunk is exactly as the key's holder wrote it.
pub(crate) fn check_chunk(bytes: &[u8], key: &VerifyingKey) -> Result<ChunkHeader, ChunkFault> {
    let (head, body) = crate::cast::split_chunk(0, bytes).map_err(|_| ChunkFault::Unreadable)?;
    let header: ChunkHeader = serde_json::from_str(head).map_err(|_| ChunkFault::Unreadable)?;
    if !(1..=CHUNK_VERSION).contains(&header.v) {
        return Err(ChunkFault::Unreadable);
    }
    if !header.signature_ok(key) {
        return Err(ChunkFault::BadSignature);
    }
    if hex::encode(Sha256::digest(body.as_bytes())) != header.body {
        return Err(ChunkFault::BodyAltered);
    }
    Ok(header)
}

/// The hash that chains a chunk to the next and that the manifest lists: version 1, the SHA-256
/// of the chunk's complete bytes; version 2, of its header line (which holds the body's hash).
/// `v` is the chunk's header version, as [`check_chunk`] read it.
pub fn chunk_hash(v: u32, bytes: &[u8]) -> [u8; 32] {
    if v >= 2 {
        let head = bytes
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes, |n| bytes.get(..n).unwrap_or(bytes));
        Sha256::digest(head).into()
    } else {
        Sha256::digest(bytes).into()
    }
}

/// Why a single chunk failed [`check_chunk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkFault {
    Unreadable,
    BadSignature,
    BodyAltered,
}

/// Crash recovery: signs a manifest (`recovered: true`) over the stored chunks of a session whose
/// recorder never finished. Only the unbroken, valid prefix `0, 1, …` is sealed (a torn or foreign
/// chunk and everything after it is left out). Returns the manifest and how many chunks it covers.
pub fn seal_stored(
    session: &str,
    stored: &[(u64, Vec<u8>)],
    ended: &str,
    reason: &str,
    seed: &[u8; 32],
) -> Manifest {
    let key = SigningKey::from_bytes(seed);
    let vk = key.verifying_key();
    let mut sorted: Vec<&(u64, Vec<u8>)> = stored.iter().collect();
    sorted.sort_by_key(|(i, _)| *i);
    let mut hashes: Vec<[u8; 32]> = Vec::new();
    let mut prev = [0u8; 32];
    for (i, bytes) in sorted {
        if *i != hashes.len() as u64 {
            break;
        }
        let Ok(h) = check_chunk(bytes, &vk) else {
            break;
        };
        if h.session != session || h.index != *i || h.prev != hex::encode(prev) {
            break;
        }
        let hash = chunk_hash(h.v, bytes);
        hashes.push(hash);
        prev = hash;
    }
    Manifest::build(&key, session, &hashes, ended, reason, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunk as version 1 wrote it: complete-bytes hash chain, version not signed.
    fn v1_chunk(
        key: &SigningKey,
        session: &str,
        index: u64,
        prev: &[u8; 32],
        body: &str,
    ) -> Vec<u8> {
        let body_hash = hex::encode(Sha256::digest(body.as_bytes()));
        let prev = hex::encode(prev);
        let sig = key.sign(&ChunkHeader::signed_bytes(
            1, session, index, &prev, &body_hash,
        ));
        let header = ChunkHeader {
            v: 1,
            session: session.into(),
            index,
            prev,
            body: body_hash,
            sig: hex::encode(sig.to_bytes()),
        };
        let mut bytes = serde_json::to_vec(&header).unwrap_or_default();
        bytes.push(b'\n');
        bytes.extend_from_slice(body.as_bytes());
        bytes
    }

    /// Recordings written before version 2 still verify; a version-2 chunk relabelled as
    /// version 1 (to be hashed the other way) fails its signature.
    #[test]
    fn version_1_recordings_verify_and_versions_cannot_be_swapped() {
        let seed = [7u8; 32];
        let key = SigningKey::from_bytes(&seed);
        let c0 = v1_chunk(&key, "s-1", 0, &[0; 32], "{\"version\":2}\n");
        let h0: [u8; 32] = Sha256::digest(&c0).into();
        assert_eq!(chunk_hash(1, &c0), h0);
        let c1 = v1_chunk(&key, "s-1", 1, &h0, "[0.1,\"o\",\"x\"]\n");
        let h1: [u8; 32] = Sha256::digest(&c1).into();
        let m = Manifest::build(&key, "s-1", &[h0, h1], "now", "done", false);
        let chunks = vec![(0, c0.clone()), (1, c1)];
        let report = crate::verify(&chunks, Some(&m.to_bytes()), &public_key(&seed));
        assert!(report.problems.is_empty() && report.sealed, "{report:?}");

        // A version-2 chunk claiming to be version 1.
        let mut rec = Recorder::new(
            &Meta {
                session: "s-2".into(),
                target: "mi-1".into(),
                owner: "a".into(),
                document: "d".into(),
                width: 80,
                height: 24,
                timestamp: 0,
                term: "xterm".into(),
            },
            &seed,
        );
        rec.event(0.1, EventKind::Output, b"hello");
        let c = rec.flush().unwrap_or_else(|| unreachable!());
        assert!(check_chunk(&c.bytes, &key.verifying_key()).is_ok());
        let text = String::from_utf8(c.bytes).unwrap_or_default();
        assert!(text.starts_with("{\"v\":2,"), "{text}");
        let relabelled = text.replacen("{\"v\":2,", "{\"v\":1,", 1);
        assert_eq!(
            check_chunk(relabelled.as_bytes(), &key.verifying_key()).err(),
            Some(ChunkFault::BadSignature)
        );
        let unknown = text.replacen("{\"v\":2,", "{\"v\":3,", 1);
        assert_eq!(
            check_chunk(unknown.as_bytes(), &key.verifying_key()).err(),
            Some(ChunkFault::Unreadable)
        );
    }

    #[test]
    fn utf8_split_across_frames_is_kept_whole() {
        let mut carry = Vec::new();
        let s = "é€😀";
        let b = s.as_bytes();
        let mut out = String::new();
        for byte in b {
            out.push_str(&decode_utf8(&mut carry, std::slice::from_ref(byte)));
        }
        assert_eq!(out, s);
        assert!(carry.is_empty());
    }

    #[test]
    fn invalid_bytes_become_replacement_chars() {
        let mut carry = Vec::new();
        assert_eq!(decode_utf8(&mut carry, b"a\xffb\xc3"), "a\u{FFFD}b");
        assert_eq!(carry, b"\xc3");
        assert_eq!(decode_utf8(&mut carry, b"("), "\u{FFFD}(");
        assert!(carry.is_empty());
    }
}
