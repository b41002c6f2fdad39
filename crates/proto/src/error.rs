//! Errors of this crate, one enum per concern: [`FrameError`] for the binary
//! frame codec, [`MessageError`] for payload contents, [`ChannelError`] for the
//! reliable channel's send path. Variants name what went wrong in the terms of
//! protocol.md §3, so callers can log them or map them without string matching.

use std::fmt::Write as _;

/// Why a WebSocket binary message could not be decoded as a frame.
///
/// Each variant corresponds to one check of protocol.md §3 (the plugin's
/// `Validate`) or to a limit of ours; the gateway and the channel drop a frame
/// that fails and may log the error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The message is shorter than the fixed 120-byte header.
    #[error("frame is {len} bytes, shorter than the 120-byte header")]
    TooShort {
        /// Length of the message received.
        len: usize,
    },
    /// The message is longer than [`DecodeOptions::max_frame_len`](crate::DecodeOptions::max_frame_len).
    #[error("frame is {len} bytes, over the limit of {max} bytes")]
    TooLong {
        /// Length of the message received.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// `HeaderLength` is below 116 or points past the end of the message.
    #[error("HeaderLength {0} is invalid (must be at least 116 and within the frame)")]
    BadHeaderLength(u32),
    /// `MessageType` is empty once NUL and white space are trimmed.
    #[error("MessageType is empty")]
    EmptyMessageType,
    /// `MessageType` holds bytes that are not ASCII.
    #[error("MessageType is not ASCII")]
    InvalidMessageType,
    /// `CreatedDate` is zero, which both AWS peers reject.
    #[error("CreatedDate is zero")]
    ZeroCreatedDate,
    /// The `PayloadLength` field disagrees with the bytes that follow the header.
    #[error("PayloadLength says {declared} bytes but the frame carries {actual}")]
    PayloadLengthMismatch {
        /// Value of the `PayloadLength` field.
        declared: u32,
        /// Number of payload bytes actually present.
        actual: usize,
    },
    /// SHA-256 of the payload differs from `PayloadDigest` (the plugin drops such frames).
    #[error("payload digest mismatch: header has {}, payload hashes to {}", hex(.expected), hex(.actual))]
    DigestMismatch {
        /// The digest written in the header.
        expected: [u8; 32],
        /// The digest computed over the payload received.
        actual: [u8; 32],
    },
}

/// Why a payload could not be interpreted (JSON payloads, flags, exit codes).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// A `Flag` payload (PayloadType 10) must be exactly 4 bytes.
    #[error("flag payload is {len} bytes; a flag is exactly 4")]
    BadFlagLength {
        /// Length of the payload received.
        len: usize,
    },
    /// A JSON payload did not parse as the expected type.
    #[error("payload is not a valid {what}: {reason}")]
    Json {
        /// Name of the expected payload type, e.g. `HandshakeResponse`.
        what: &'static str,
        /// The parser's explanation.
        reason: String,
    },
}

/// Why [`ReliableChannel::send`](crate::ReliableChannel::send) refused a payload.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// Empty stream payloads break the AWS agent's parser (protocol.md §3), so they are never sent.
    #[error("refusing to send an empty stream payload")]
    EmptyPayload,
    /// The payload exceeds the negotiated `max_payload`; the caller must split it.
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    PayloadTooLarge {
        /// Length of the refused payload.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The window or the outgoing buffer is full; retry once acks have arrived.
    #[error("send window or outgoing buffer is full")]
    Full,
}

/// Lowercase hex of a byte string, for error messages and logs.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
