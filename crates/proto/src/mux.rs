//! Stream multiplexing inside a port session's byte stream (protocol.md §8.2), as pure codecs.
//!
//! A `Port` session with `type: LocalPortForwarding` carries many TCP connections over one
//! data channel. The Output payloads of the channel form one reassembled byte stream (frame
//! boundaries are not preserved: the plugin splits smux frames arbitrarily across 1024-byte
//! payloads), and that stream is a sequence of multiplexing frames of one of two kinds:
//!
//! - [`MuxKind::Smux1`]: xtaci/smux protocol version 1, what the AWS plugin and agent speak.
//!   Header of 8 bytes: `ver u8 (=1)`, `cmd u8`, `len u16 LE`, `stream u32 LE`. Commands SYN,
//!   FIN, PSH, NOP. No flow control: one slow stream stalls the session.
//! - [`MuxKind::Airlock`]: Airlock's own, negotiated between Airlock peers through
//!   [`AirlockCapabilities::mux`](crate::AirlockCapabilities::mux). Header of 10 bytes:
//!   `ver u8 (=0xA1)`, `cmd u8`, `stream u32 BE`, `len u32 BE`. Commands OPEN, FIN (half
//!   close), DATA, NOP, WINDOW (per-stream credit, so a slow stream never stalls the others),
//!   RESET (abort with a reason the user can read). Frames may be large (up to the negotiated
//!   payload size), so one data-channel frame usually carries one whole mux frame.
//!
//! Both kinds share [`MuxFrame`], the encoder ([`encode`], [`write_header`]) and the
//! incremental [`MuxDecoder`], which slices whole frames out of its input without copying and
//! copies only frames that straddle two inputs.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// smux protocol version 1 (the only one the AWS plugin and agent speak).
pub const SMUX_VERSION: u8 = 1;
/// Length of an smux v1 frame header.
pub const SMUX_HEADER_LEN: usize = 8;
/// Largest smux frame body (the length field is 16 bits).
pub const SMUX_MAX_DATA: usize = u16::MAX as usize;
/// Body size xtaci/smux uses by default (`MaxFrameSize`); Airlock sends smux data in pieces of this size.
pub const SMUX_FRAME_SIZE: usize = 32 * 1024;
/// Version byte of Airlock mux frames; differs from smux's so a mix-up is detected at once.
pub const AIRLOCK_MUX_VERSION: u8 = 0xA1;
/// Length of an Airlock mux frame header.
pub const AIRLOCK_HEADER_LEN: usize = 10;
/// Length of the WINDOW frame body (a u32 credit increment).
const WINDOW_BODY_LEN: usize = 4;
/// Longest RESET reason kept, so a peer cannot make us hold a large error text.
pub const MAX_RESET_REASON: usize = 1024;

/// Command codes, shared where the two kinds overlap.
const CMD_OPEN: u8 = 0;
const CMD_FIN: u8 = 1;
const CMD_DATA: u8 = 2;
const CMD_NOP: u8 = 3;
const CMD_WINDOW: u8 = 4;
const CMD_RESET: u8 = 5;

/// Which multiplexing protocol a byte stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MuxKind {
    /// xtaci/smux v1, for the AWS plugin and agent.
    Smux1,
    /// Airlock's mux with per-stream credit, between Airlock peers.
    Airlock,
}

impl MuxKind {
    /// Bytes of header before each frame's body.
    pub fn header_len(self) -> usize {
        match self {
            MuxKind::Smux1 => SMUX_HEADER_LEN,
            MuxKind::Airlock => AIRLOCK_HEADER_LEN,
        }
    }

    /// Largest body the format can express.
    pub fn max_body(self) -> usize {
        match self {
            MuxKind::Smux1 => SMUX_MAX_DATA,
            MuxKind::Airlock => u32::MAX as usize,
        }
    }
}

/// One multiplexing frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MuxFrame {
    /// Opens a stream (smux SYN). Streams opened by the client have odd ids.
    Open {
        /// The new stream.
        stream: u32,
    },
    /// Stream bytes (smux PSH).
    Data {
        /// The stream.
        stream: u32,
        /// The bytes, never empty on the wire from Airlock (an empty one is legal and ignored).
        data: Bytes,
    },
    /// The sender will send no more on this stream. Airlock: a half close; smux v1: the peer
    /// closes the whole stream (the AWS behaviour).
    Fin {
        /// The stream.
        stream: u32,
    },
    /// Keep-alive, ignored by the receiver.
    Nop {
        /// Carried but meaningless (0 in practice).
        stream: u32,
    },
    /// Airlock only: the receiver has consumed `credit` more bytes of this stream, so the
    /// sender may send that many more.
    Window {
        /// The stream.
        stream: u32,
        /// Credit increment in bytes.
        credit: u32,
    },
    /// Airlock only: the stream is aborted both ways, e.g. because the target could not be
    /// reached; `reason` is shown to the user.
    Reset {
        /// The stream.
        stream: u32,
        /// Why, in words.
        reason: String,
    },
}

impl MuxFrame {
    /// The stream this frame belongs to.
    pub fn stream(&self) -> u32 {
        match self {
            MuxFrame::Open { stream }
            | MuxFrame::Data { stream, .. }
            | MuxFrame::Fin { stream }
            | MuxFrame::Nop { stream }
            | MuxFrame::Window { stream, .. }
            | MuxFrame::Reset { stream, .. } => *stream,
        }
    }

    fn cmd(&self) -> u8 {
        match self {
            MuxFrame::Open { .. } => CMD_OPEN,
            MuxFrame::Fin { .. } => CMD_FIN,
            MuxFrame::Data { .. } => CMD_DATA,
            MuxFrame::Nop { .. } => CMD_NOP,
            MuxFrame::Window { .. } => CMD_WINDOW,
            MuxFrame::Reset { .. } => CMD_RESET,
        }
    }
}

/// Why a multiplexed byte stream could not be encoded or decoded. Any decode error means the
/// peers disagree about the protocol, so the session's multiplexing cannot go on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    /// The version byte is not the one of the negotiated kind.
    #[error("mux frame has version {found:#04x}, expected {expected:#04x}")]
    BadVersion {
        /// The byte found.
        found: u8,
        /// The negotiated kind's version.
        expected: u8,
    },
    /// A command this kind does not have (e.g. smux v2's UPD on a v1 session).
    #[error("unknown mux command {0}")]
    UnknownCommand(u8),
    /// A frame body longer than the limit in force.
    #[error("mux frame body of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// Declared body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A WINDOW frame whose body is not 4 bytes.
    #[error("WINDOW frame body is {0} bytes, expected 4")]
    BadWindow(usize),
    /// The frame cannot be expressed in this kind (WINDOW or RESET on smux v1).
    #[error("{0} frames do not exist in smux v1")]
    Unsupported(&'static str),
}

/// Writes the header of a frame with command `cmd` and a body of `len` bytes into the first
/// [`MuxKind::header_len`] bytes of `out`. Senders reserve that room in front of the data they
/// read, so data is never copied to put a header on it.
fn put_header(kind: MuxKind, cmd: u8, stream: u32, len: usize, out: &mut [u8]) {
    match kind {
        MuxKind::Smux1 => {
            let len = u16::try_from(len).unwrap_or(u16::MAX).to_le_bytes();
            let sid = stream.to_le_bytes();
            let hdr = [
                SMUX_VERSION,
                cmd,
                len[0],
                len[1],
                sid[0],
                sid[1],
                sid[2],
                sid[3],
            ];
            for (d, s) in out.iter_mut().zip(hdr) {
                *d = s;
            }
        }
        MuxKind::Airlock => {
            let sid = stream.to_be_bytes();
            let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
            let hdr = [
                AIRLOCK_MUX_VERSION,
                cmd,
                sid[0],
                sid[1],
                sid[2],
                sid[3],
                len[0],
                len[1],
                len[2],
                len[3],
            ];
            for (d, s) in out.iter_mut().zip(hdr) {
                *d = s;
            }
        }
    }
}

/// Fills in a DATA header in `buf[..kind.header_len()]` for the `buf.len() - header_len`
/// bytes of data that follow it. `buf` must be at least a header long.
pub fn write_data_header(kind: MuxKind, stream: u32, buf: &mut [u8]) -> Result<(), MuxError> {
    let hl = kind.header_len();
    let len = buf.len().saturating_sub(hl);
    if len > kind.max_body() {
        return Err(MuxError::TooLarge {
            len,
            max: kind.max_body(),
        });
    }
    put_header(kind, CMD_DATA, stream, len, buf);
    Ok(())
}

/// Appends the encoding of `frame` to `out`.
pub fn encode_into(kind: MuxKind, frame: &MuxFrame, out: &mut BytesMut) -> Result<(), MuxError> {
    let body: &[u8] = match frame {
        MuxFrame::Data { data, .. } => data,
        MuxFrame::Reset { reason, .. } => {
            if kind == MuxKind::Smux1 {
                return Err(MuxError::Unsupported("RESET"));
            }
            truncate_utf8(reason, MAX_RESET_REASON).as_bytes()
        }
        MuxFrame::Window { .. } if kind == MuxKind::Smux1 => {
            return Err(MuxError::Unsupported("WINDOW"))
        }
        _ => &[],
    };
    let window;
    let body = if let MuxFrame::Window { credit, .. } = frame {
        window = credit.to_be_bytes();
        &window[..]
    } else {
        body
    };
    if body.len() > kind.max_body() {
        return Err(MuxError::TooLarge {
            len: body.len(),
            max: kind.max_body(),
        });
    }
    let hl = kind.header_len();
    let start = out.len();
    out.resize(start + hl, 0);
    if let Some(hdr) = out.get_mut(start..) {
        put_header(kind, frame.cmd(), frame.stream(), body.len(), hdr);
    }
    out.put_slice(body);
    Ok(())
}

/// The encoding of one frame.
pub fn encode(kind: MuxKind, frame: &MuxFrame) -> Result<Bytes, MuxError> {
    let mut out = BytesMut::new();
    encode_into(kind, frame, &mut out)?;
    Ok(out.freeze())
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// Parsed header fields.
struct Header {
    cmd: u8,
    stream: u32,
    len: usize,
}

/// Incremental decoder of a multiplexed byte stream: feed it the Output payloads in order and
/// it yields whole frames, however the payloads split them.
#[derive(Debug)]
pub struct MuxDecoder {
    kind: MuxKind,
    max_body: usize,
    /// Bytes of a frame that began in an earlier input and is not yet complete.
    partial: BytesMut,
}

impl MuxDecoder {
    /// A decoder refusing bodies over `max_body` bytes (clamped to what the kind can express).
    pub fn new(kind: MuxKind, max_body: usize) -> Self {
        MuxDecoder {
            kind,
            max_body: max_body.min(kind.max_body()),
            partial: BytesMut::new(),
        }
    }

    /// Bytes held back waiting for the rest of a frame.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    fn header(&self, b: &[u8]) -> Result<Option<Header>, MuxError> {
        let hl = self.kind.header_len();
        let Some(h) = b.get(..hl) else {
            return Ok(None);
        };
        let mut h = h;
        let ver = h.get_u8();
        let cmd = h.get_u8();
        let (stream, len) = match self.kind {
            MuxKind::Smux1 => {
                if ver != SMUX_VERSION {
                    return Err(MuxError::BadVersion {
                        found: ver,
                        expected: SMUX_VERSION,
                    });
                }
                let len = h.get_u16_le() as usize;
                (h.get_u32_le(), len)
            }
            MuxKind::Airlock => {
                if ver != AIRLOCK_MUX_VERSION {
                    return Err(MuxError::BadVersion {
                        found: ver,
                        expected: AIRLOCK_MUX_VERSION,
                    });
                }
                let stream = h.get_u32();
                (stream, h.get_u32() as usize)
            }
        };
        let known = match self.kind {
            MuxKind::Smux1 => cmd <= CMD_NOP,
            MuxKind::Airlock => cmd <= CMD_RESET,
        };
        if !known {
            return Err(MuxError::UnknownCommand(cmd));
        }
        let max = match cmd {
            CMD_DATA => self.max_body,
            CMD_RESET => MAX_RESET_REASON,
            CMD_WINDOW => WINDOW_BODY_LEN,
            // smux tolerates bodies on SYN/FIN/NOP (it reads and drops them); so do we, bounded.
            _ => self.max_body.min(SMUX_MAX_DATA),
        };
        if len > max {
            return Err(MuxError::TooLarge { len, max });
        }
        if cmd == CMD_WINDOW && len != WINDOW_BODY_LEN {
            return Err(MuxError::BadWindow(len));
        }
        Ok(Some(Header { cmd, stream, len }))
    }

    fn frame(h: Header, body: Bytes) -> MuxFrame {
        let stream = h.stream;
        match h.cmd {
            CMD_OPEN => MuxFrame::Open { stream },
            CMD_FIN => MuxFrame::Fin { stream },
            CMD_DATA => MuxFrame::Data { stream, data: body },
            CMD_WINDOW => {
                let mut b: &[u8] = body.as_ref();
                MuxFrame::Window {
                    stream,
                    credit: if b.len() >= 4 { b.get_u32() } else { 0 },
                }
            }
            CMD_RESET => MuxFrame::Reset {
                stream,
                reason: String::from_utf8_lossy(&body).into_owned(),
            },
            _ => MuxFrame::Nop { stream },
        }
    }

    /// Consumes `input`, appending every frame it completes to `out`. After an error the
    /// decoder's state is unspecified: the caller ends the multiplexed session.
    pub fn decode(&mut self, mut input: Bytes, out: &mut Vec<MuxFrame>) -> Result<(), MuxError> {
        let hl = self.kind.header_len();
        // Finish a frame begun in an earlier input, copying only what it needs.
        if !self.partial.is_empty() {
            if self.partial.len() < hl {
                let take = (hl - self.partial.len()).min(input.len());
                self.partial.extend_from_slice(&input.split_to(take));
            }
            let Some(h) = self.header(&self.partial)? else {
                return Ok(());
            };
            // `partial` never holds a whole frame, so this is positive; checked all the same,
            // as the length comes from the peer.
            let need = hl
                .checked_add(h.len)
                .and_then(|whole| whole.checked_sub(self.partial.len()))
                .ok_or(MuxError::TooLarge {
                    len: h.len,
                    max: self.max_body,
                })?;
            let take = need.min(input.len());
            self.partial.extend_from_slice(&input.split_to(take));
            if take < need {
                return Ok(());
            }
            let mut whole = std::mem::take(&mut self.partial);
            let body = whole.split_off(hl).freeze();
            out.push(Self::frame(h, body));
        }
        // Whole frames straight out of the input, without copying.
        while let Some(h) = self.header(&input)? {
            if input.len().saturating_sub(hl) < h.len {
                break;
            }
            input.advance(hl);
            let body = input.split_to(h.len);
            out.push(Self::frame(h, body));
        }
        if !input.is_empty() {
            self.partial.extend_from_slice(&input);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;

    #[test]
    fn smux_bytes_match_the_plugin_capture() {
        // port-mux.jsonl: SYN, PSH and FIN of stream 3 as the plugin sent them.
        let syn = encode(MuxKind::Smux1, &MuxFrame::Open { stream: 3 }).unwrap();
        assert_eq!(&syn[..], &[1, 0, 0, 0, 3, 0, 0, 0]);
        let psh = encode(
            MuxKind::Smux1,
            &MuxFrame::Data {
                stream: 3,
                data: Bytes::from_static(b"GET / HTTP/1.0\r\n\r\n"),
            },
        )
        .unwrap();
        assert_eq!(&psh[..8], &[1, 2, 0x12, 0, 3, 0, 0, 0]);
        let fin = encode(MuxKind::Smux1, &MuxFrame::Fin { stream: 5 }).unwrap();
        assert_eq!(&fin[..], &[1, 1, 0, 0, 5, 0, 0, 0]);
    }

    #[test]
    fn smux_has_no_window_or_reset() {
        assert_eq!(
            encode(
                MuxKind::Smux1,
                &MuxFrame::Window {
                    stream: 1,
                    credit: 1
                }
            ),
            Err(MuxError::Unsupported("WINDOW"))
        );
        let mut d = MuxDecoder::new(MuxKind::Smux1, 65535);
        let mut out = Vec::new();
        // smux v2 UPD on a v1 session.
        assert_eq!(
            d.decode(Bytes::from_static(&[1, 4, 0, 0, 3, 0, 0, 0]), &mut out),
            Err(MuxError::UnknownCommand(4))
        );
    }

    #[test]
    fn data_header_in_place() {
        let mut buf = vec![0u8; AIRLOCK_HEADER_LEN + 3];
        buf[AIRLOCK_HEADER_LEN..].copy_from_slice(b"abc");
        write_data_header(MuxKind::Airlock, 7, &mut buf).unwrap();
        let mut d = MuxDecoder::new(MuxKind::Airlock, 1 << 20);
        let mut out = Vec::new();
        d.decode(Bytes::from(buf), &mut out).unwrap();
        assert_eq!(
            out,
            vec![MuxFrame::Data {
                stream: 7,
                data: Bytes::from_static(b"abc")
            }]
        );
    }

    #[test]
    fn oversized_and_wrong_version_are_refused() {
        let mut d = MuxDecoder::new(MuxKind::Airlock, 16);
        let mut out = Vec::new();
        let big = encode(
            MuxKind::Airlock,
            &MuxFrame::Data {
                stream: 1,
                data: Bytes::from(vec![0; 17]),
            },
        )
        .unwrap();
        assert_eq!(
            d.decode(big, &mut out),
            Err(MuxError::TooLarge { len: 17, max: 16 })
        );
        let mut d = MuxDecoder::new(MuxKind::Airlock, 16);
        assert_eq!(
            d.decode(
                Bytes::from_static(&[1, 0, 0, 0, 3, 0, 0, 0, 0, 0]),
                &mut out
            ),
            Err(MuxError::BadVersion {
                found: 1,
                expected: AIRLOCK_MUX_VERSION
            })
        );
    }
}
