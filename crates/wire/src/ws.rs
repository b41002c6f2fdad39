//! WebSocket framing (RFC 6455), sans I/O: header parse and encode, masking, and the
//! handshake's accept key. Kept apart from the socket code so it can be tested on bytes.

use base64::Engine as _;
use bytes::Bytes;

/// The GUID of RFC 6455 §1.3 that the accept key is derived with.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Opcodes of RFC 6455 §5.2.
pub mod opcode {
    /// A continuation of a fragmented message.
    pub const CONTINUATION: u8 = 0x0;
    /// A text message.
    pub const TEXT: u8 = 0x1;
    /// A binary message.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// A close frame's code and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseFrame {
    /// Status code (1000 normal, 1008 policy violation, …).
    pub code: u16,
    /// Why, for people (at most 123 bytes on the wire).
    pub reason: String,
}

/// A whole WebSocket message: what the data channel's pumps send and receive. Binary
/// payloads are [`Bytes`] that share the receive buffer, so relaying one copies nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A text message.
    Text(String),
    /// A binary message (every AWS data-channel frame).
    Binary(Bytes),
    /// A binary message given as two parts (an AWS frame's header and its payload), sent as
    /// one message: the payload is copied once, into the record, instead of first into a
    /// contiguous frame. Readers never yield it.
    BinaryParts(Bytes, Bytes),
    /// A ping; the receiver answers with a pong.
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// The close handshake.
    Close(Option<CloseFrame>),
}

/// Errors of the framing layer: the peer broke RFC 6455 or sent more than we accept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Reserved bits set without an extension that defines them.
    #[error("WebSocket frame with reserved bits set")]
    ReservedBits,
    /// An opcode RFC 6455 does not define.
    #[error("WebSocket frame with unknown opcode {0:#x}")]
    BadOpcode(u8),
    /// A control frame that is fragmented or longer than 125 bytes.
    #[error("malformed WebSocket control frame")]
    BadControl,
    /// A message over the configured limit.
    #[error("WebSocket message of {size} bytes exceeds the limit of {max}")]
    TooLong {
        /// Its length.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// A continuation without a start, or a new message inside a fragmented one.
    #[error("WebSocket fragments out of order")]
    Fragments,
    /// A text message or close reason that is not UTF-8.
    #[error("WebSocket text that is not UTF-8")]
    Utf8,
    /// A 64-bit payload length with its most significant bit set, which RFC 6455 §5.2
    /// forbids: refused before any arithmetic on it can wrap.
    #[error("WebSocket frame length with the most significant bit set")]
    BadLength,
    /// A client frame that is not masked: a server must close the connection (RFC 6455 §5.1).
    #[error("unmasked WebSocket frame from a client")]
    Unmasked,
    /// A server frame that is masked: a client must close the connection (RFC 6455 §5.1).
    #[error("masked WebSocket frame from a server")]
    Masked,
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Final fragment of its message.
    pub fin: bool,
    /// See [`opcode`].
    pub opcode: u8,
    /// The masking key, when the sender (a client) masked the payload.
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub len: u64,
    /// Bytes the header itself takes.
    pub header_len: usize,
}

impl Header {
    /// Parses a header from the front of `buf`; `Ok(None)` when more bytes are needed.
    pub fn parse(buf: &[u8]) -> Result<Option<Header>, FrameError> {
        let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
            return Ok(None);
        };
        if b0 & 0x70 != 0 {
            return Err(FrameError::ReservedBits);
        }
        let fin = b0 & 0x80 != 0;
        let op = b0 & 0x0F;
        if !matches!(op, 0x0..=0x2 | 0x8..=0xA) {
            return Err(FrameError::BadOpcode(op));
        }
        let masked = b1 & 0x80 != 0;
        let (len, mut at): (u64, usize) = match b1 & 0x7F {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    let len = u64::from_be_bytes(a);
                    if len >> 63 != 0 {
                        return Err(FrameError::BadLength);
                    }
                    (len, 10)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        if op >= 0x8 && (!fin || len > 125) {
            return Err(FrameError::BadControl);
        }
        let mask = if masked {
            let Some(k) = buf.get(at..at.saturating_add(4)) else {
                return Ok(None);
            };
            at += 4;
            Some([k[0], k[1], k[2], k[3]])
        } else {
            None
        };
        Ok(Some(Header {
            fin,
            opcode: op,
            mask,
            len,
            header_len: at,
        }))
    }

    /// Encodes a final frame's header into `out` (at most 14 bytes).
    pub fn encode(opcode: u8, len: usize, mask: Option<[u8; 4]>, out: &mut [u8; 14]) -> usize {
        out[0] = 0x80 | opcode;
        let m = if mask.is_some() { 0x80 } else { 0 };
        let mut at = if len < 126 {
            out[1] = m | len as u8;
            2
        } else if len <= usize::from(u16::MAX) {
            out[1] = m | 126;
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        } else {
            out[1] = m | 127;
            out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        if let Some(k) = mask {
            out[at..at + 4].copy_from_slice(&k);
            at += 4;
        }
        at
    }
}

/// XORs `data` with `key`, as if `data` started `offset` bytes into the masked payload.
/// Eight bytes a step: masking runs over every byte a client sends.
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    let mut k = [0u8; 4];
    for (i, b) in k.iter_mut().enumerate() {
        *b = key[(offset + i) % 4];
    }
    let word = u32::from_ne_bytes(k);
    // In either byte order the 8 bytes of this word read k0 k1 k2 k3 k0 k1 k2 k3.
    let wide = u64::from(word) | (u64::from(word) << 32);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(a) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= k[i % 4];
    }
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.trim().as_bytes());
    ctx.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// A fresh random `Sec-WebSocket-Key`.
pub fn new_key() -> String {
    let k: [u8; 16] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(k)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn headers_round_trip() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 1 << 20] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut out = [0u8; 14];
                let n = Header::encode(opcode::BINARY, len, mask, &mut out);
                let h = Header::parse(&out[..n]).unwrap().unwrap();
                assert_eq!(
                    h,
                    Header {
                        fin: true,
                        opcode: opcode::BINARY,
                        mask,
                        len: len as u64,
                        header_len: n
                    }
                );
                for cut in 0..n {
                    assert_eq!(Header::parse(&out[..cut]).unwrap(), None);
                }
            }
        }
    }

    #[test]
    fn bad_headers_are_errors() {
        assert_eq!(Header::parse(&[0xC2, 0]), Err(FrameError::ReservedBits));
        assert_eq!(Header::parse(&[0x83, 0]), Err(FrameError::BadOpcode(3)));
        assert_eq!(Header::parse(&[0x09, 0]), Err(FrameError::BadControl));
        assert_eq!(
            Header::parse(&[0x89, 126, 0, 200]),
            Err(FrameError::BadControl)
        );
        // RFC 6455 §5.2: the most significant bit of a 64-bit length must be 0.
        let mut top = [0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(Header::parse(&top), Err(FrameError::BadLength));
        top[2] = 0x7F;
        assert_eq!(Header::parse(&top).unwrap().unwrap().len, 0x7F << 56);
    }

    #[test]
    fn masking_at_any_offset_matches_the_bytewise_rule() {
        let key = [0x12, 0x34, 0x56, 0x78];
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for offset in 0..4 {
            for split in [0usize, 1, 7, 8, 9, 500] {
                let mut a = data.clone();
                apply_mask(&mut a[..split], key, offset);
                apply_mask(&mut a[split..], key, offset + split);
                let b: Vec<u8> = data
                    .iter()
                    .enumerate()
                    .map(|(i, x)| x ^ key[(i + offset) % 4])
                    .collect();
                assert_eq!(a, b, "offset {offset} split {split}");
            }
        }
    }
}
