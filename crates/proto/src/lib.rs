//! `airlock-proto`: the AWS Session Manager data-channel protocol as Airlock
//! speaks it, with no I/O.
//!
//! - [`frame`]: the 120-byte-header binary frame, its codec and validation (protocol.md §3–4).
//! - [`message`]: the JSON and other payloads carried in frames and the opening text frame (§2, §5, §9).
//! - [`channel`]: the sans-I/O reliable channel (sequence numbers, acks, resends; §7) that
//!   Airlock's agent and client drive over their WebSockets.
//! - [`mux`]: the stream multiplexing codecs of port sessions (smux v1 and Airlock's own; §8.2).
//! - [`version`]: the version gates of §6.3.
//! - [`error`]: the error enums.
//!
//! Everything is re-exported at the crate root, except the free functions of [`mux`] and
//! [`version`], which read better with their module's name.
#![forbid(unsafe_code)]
#![warn(clippy::indexing_slicing)]

pub mod channel;
pub mod error;
pub mod frame;
pub mod message;
pub mod mux;
pub mod version;

pub use channel::*;
pub use error::*;
pub use frame::*;
pub use message::*;
pub use mux::{MuxDecoder, MuxError, MuxFrame, MuxKind};
