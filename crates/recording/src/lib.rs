//! Airlock's session recording format, kept free of I/O so that the server (writer), the client
//! (export, verify, replay) and tests all share one definition.
//!
//! A recording is asciicast v2 text cut into **chunks** `0, 1, 2, …`. Each chunk is one header line
//! (JSON: session, index, SHA-256 of the previous chunk, SHA-256 of this chunk's body, and an Ed25519
//! signature over those) followed by asciicast lines. Concatenating the bodies gives a `.cast` file
//! that stock players read. When the session ends a signed **manifest** lists every chunk's hash, so
//! a removed tail is detected too. The signing key lives with the server, never in its database.

mod cast;
mod chunk;
mod transcript;
mod verify;

pub use cast::{export, parse_cast, Event, EventKind, Header, Meta};
pub use chunk::{
    chunk_hash, public_key, seal_stored, Chunk, ChunkHeader, Manifest, Recorder,
    CHUNK_TARGET_BYTES, CHUNK_VERSION,
};
pub use transcript::transcript;
pub use verify::{verify, Problem, Report};

/// What can be wrong with recording text or chunk bytes handed to this crate. Every variant says
/// where (a line of a `.cast` text, or a chunk index), so a user can find the damage.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// A line of a `.cast` text is not what asciicast v2 allows (1-based line number).
    #[error("line {line}: {reason}")]
    Line {
        /// 1-based line number in the text.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A chunk (by its position in the list given) is not a header line plus UTF-8 text.
    #[error("chunk {index}: {reason}")]
    Chunk {
        /// Position of the chunk in the list given.
        index: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The text is empty: no asciicast header at all.
    #[error("empty recording: no asciicast header")]
    Empty,
}
