//! The binary frame of the data and control channels (`ClientMessage` in the
//! plugin, `AgentMessage` in the agent; protocol.md §3): a fixed 120-byte
//! big-endian header followed by the payload. Encoding and decoding are pure
//! functions over [`bytes`] buffers; decoding is zero-copy and applies the same
//! validation as the plugin, with exact errors ([`FrameError`]).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::FrameError;

/// Value written in the `HeaderLength` field: the offset of `PayloadLength`.
pub const HEADER_LENGTH: u32 = 116;
/// Number of bytes before the payload (`HeaderLength` + the 4-byte `PayloadLength`).
pub const FRAME_HEADER_LEN: usize = 120;
/// Default upper bound on an inbound frame, so a peer cannot make us hash or buffer unbounded data.
pub const DEFAULT_MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

/// Width of the space-padded `MessageType` field.
const MESSAGE_TYPE_LEN: usize = 32;
/// Offsets of the fields used by [`peek_message_type`] and [`decode`].
const MESSAGE_TYPE_OFFSET: usize = 4;

/// The `MessageType` string of a frame (protocol.md §4.1).
///
/// Known types get their own variant so callers can `match`; anything else is
/// kept verbatim in [`MessageType::Other`] so the gateway can relay it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// `input_stream_data`: stream frame from client to agent.
    InputStreamData,
    /// `output_stream_data`: stream frame from agent to client.
    OutputStreamData,
    /// `acknowledge`: ack of one stream frame, both ways.
    Acknowledge,
    /// `channel_closed`: MGS ends a data channel or cancels a session on the control channel.
    ChannelClosed,
    /// `start_publication`: MGS lets the agent send again.
    StartPublication,
    /// `pause_publication`: MGS asks the agent to stop sending.
    PausePublication,
    /// `agent_session_state`: agent tells MGS the session is Connected or Terminating.
    AgentSessionState,
    /// `interactive_shell`: control-channel start-session task (MGS to agent).
    InteractiveShell,
    /// `agent_task_complete`: control-channel report of a finished session (agent to MGS).
    AgentTaskComplete,
    /// `agent_task_acknowledge`: MGS acknowledges `agent_task_complete`.
    AgentTaskAcknowledge,
    /// `agent_task_reply`: declared by the agent, unused.
    AgentTaskReply,
    /// `agent_job`: Run Command over MGS.
    AgentJob,
    /// `agent_job_ack`: Run Command over MGS.
    AgentJobAck,
    /// `agent_job_reply`: Run Command over MGS.
    AgentJobReply,
    /// `agent_job_reply_ack`: Run Command over MGS.
    AgentJobReplyAck,
    /// Any other type, kept verbatim.
    Other(String),
}

impl MessageType {
    /// The wire string of this type (without padding).
    pub fn as_str(&self) -> &str {
        match self {
            MessageType::InputStreamData => "input_stream_data",
            MessageType::OutputStreamData => "output_stream_data",
            MessageType::Acknowledge => "acknowledge",
            MessageType::ChannelClosed => "channel_closed",
            MessageType::StartPublication => "start_publication",
            MessageType::PausePublication => "pause_publication",
            MessageType::AgentSessionState => "agent_session_state",
            MessageType::InteractiveShell => "interactive_shell",
            MessageType::AgentTaskComplete => "agent_task_complete",
            MessageType::AgentTaskAcknowledge => "agent_task_acknowledge",
            MessageType::AgentTaskReply => "agent_task_reply",
            MessageType::AgentJob => "agent_job",
            MessageType::AgentJobAck => "agent_job_ack",
            MessageType::AgentJobReply => "agent_job_reply",
            MessageType::AgentJobReplyAck => "agent_job_reply_ack",
            MessageType::Other(s) => s,
        }
    }

    /// Maps a wire string (already trimmed) to its variant; unknown strings become [`MessageType::Other`].
    pub fn parse(s: &str) -> MessageType {
        match s {
            "input_stream_data" => MessageType::InputStreamData,
            "output_stream_data" => MessageType::OutputStreamData,
            "acknowledge" => MessageType::Acknowledge,
            "channel_closed" => MessageType::ChannelClosed,
            "start_publication" => MessageType::StartPublication,
            "pause_publication" => MessageType::PausePublication,
            "agent_session_state" => MessageType::AgentSessionState,
            "interactive_shell" => MessageType::InteractiveShell,
            "agent_task_complete" => MessageType::AgentTaskComplete,
            "agent_task_acknowledge" => MessageType::AgentTaskAcknowledge,
            "agent_task_reply" => MessageType::AgentTaskReply,
            "agent_job" => MessageType::AgentJob,
            "agent_job_ack" => MessageType::AgentJobAck,
            "agent_job_reply" => MessageType::AgentJobReply,
            "agent_job_reply_ack" => MessageType::AgentJobReplyAck,
            other => MessageType::Other(other.to_owned()),
        }
    }

    /// True for `input_stream_data` and `output_stream_data`, the frames that use sequence numbers.
    pub fn is_stream_data(&self) -> bool {
        matches!(
            self,
            MessageType::InputStreamData | MessageType::OutputStreamData
        )
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `PayloadType` field (protocol.md §4.2): how to read a stream frame's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PayloadType(pub u32);

impl PayloadType {
    /// 0: not a stream payload (acks, control messages).
    pub const NONE: Self = Self(0);
    /// 1: raw stream bytes.
    pub const OUTPUT: Self = Self(1);
    /// 2: declared by AWS, unused.
    pub const ERROR: Self = Self(2);
    /// 3: terminal size JSON (`SizeData`).
    pub const SIZE: Self = Self(3);
    /// 4: declared by AWS, unused.
    pub const PARAMETER: Self = Self(4);
    /// 5: `HandshakeRequest` JSON (agent to client).
    pub const HANDSHAKE_REQUEST: Self = Self(5);
    /// 6: `HandshakeResponse` JSON (client to agent).
    pub const HANDSHAKE_RESPONSE: Self = Self(6);
    /// 7: `HandshakeComplete` JSON (agent to client).
    pub const HANDSHAKE_COMPLETE: Self = Self(7);
    /// 8: KMS challenge from the agent.
    pub const ENC_CHALLENGE_REQUEST: Self = Self(8);
    /// 9: KMS challenge answer from the client.
    pub const ENC_CHALLENGE_RESPONSE: Self = Self(9);
    /// 10: a 4-byte big-endian `Flag`.
    pub const FLAG: Self = Self(10);
    /// 11: stderr bytes of NonInteractiveCommands.
    pub const STDERR: Self = Self(11);
    /// 12: `EXIT_CODE: <n>` text.
    pub const EXIT_CODE: Self = Self(12);

    /// The name used in protocol.md and the captures, e.g. `HandshakeRequest`; `None` for unknown values.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "None",
            1 => "Output",
            2 => "Error",
            3 => "Size",
            4 => "Parameter",
            5 => "HandshakeRequest",
            6 => "HandshakeResponse",
            7 => "HandshakeComplete",
            8 => "EncChallengeRequest",
            9 => "EncChallengeResponse",
            10 => "Flag",
            11 => "StdErr",
            12 => "ExitCode",
            _ => return None,
        })
    }
}

impl fmt::Display for PayloadType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}({})", self.0),
            None => write!(f, "PayloadType({})", self.0),
        }
    }
}

/// `Flags` bit 0: first frame of a stream (set by the agent on its seq-0 stream frame, and on acks).
pub const FLAG_SYN: u64 = 1;
/// `Flags` bit 1: set (with SYN) on acks and `agent_session_state`.
pub const FLAG_FIN: u64 = 2;

/// One decoded frame. `PayloadDigest` is not stored: it is computed when encoding
/// and checked when decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What the frame is (§4.1).
    pub message_type: MessageType,
    /// Always 1 in practice.
    pub schema_version: u32,
    /// Unix epoch milliseconds; must be non-zero on the wire.
    pub created_date: u64,
    /// Stream sequence number; 0 for acks and control messages.
    pub sequence_number: i64,
    /// [`FLAG_SYN`] / [`FLAG_FIN`] bits; receivers ignore them.
    pub flags: u64,
    /// Unique id; acks refer to it in text form.
    pub message_id: Uuid,
    /// How to read the payload (§4.2).
    pub payload_type: PayloadType,
    /// The payload bytes.
    pub payload: Bytes,
}

impl Frame {
    /// Builds a frame with a fresh random v4 `MessageId`, `CreatedDate` = now (ms) and schema version 1.
    pub fn new(
        message_type: MessageType,
        sequence_number: i64,
        flags: u64,
        payload_type: PayloadType,
        payload: Bytes,
    ) -> Frame {
        Frame {
            message_type,
            schema_version: 1,
            created_date: unix_millis(),
            sequence_number,
            flags,
            message_id: Uuid::new_v4(),
            payload_type,
            payload,
        }
    }

    /// Encoded length: [`FRAME_HEADER_LEN`] + payload length.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_LEN + self.payload.len()
    }

    /// Appends the encoded frame to `out`.
    ///
    /// `with_digest == false` writes 32 zero bytes in place of the SHA-256 of the
    /// payload; only do that when the peer is an Airlock peer that negotiated it,
    /// as the plugin drops frames with a wrong digest. A `MessageType` longer than
    /// 32 bytes is truncated (no known type is).
    pub fn encode_into(&self, out: &mut BytesMut, with_digest: bool) {
        out.reserve(self.encoded_len());
        self.encode_header_into(out, with_digest);
        out.put_slice(&self.payload);
    }

    /// The encoded frame as its header and its payload apart (the payload shared, not
    /// copied): a sender that copies into its socket buffer anyway then copies each byte once.
    pub fn encode_parts(&self, with_digest: bool) -> EncodedFrame {
        let mut head = BytesMut::with_capacity(FRAME_HEADER_LEN);
        self.encode_header_into(&mut head, with_digest);
        EncodedFrame {
            head: head.freeze(),
            body: self.payload.clone(),
        }
    }

    /// Appends everything of the encoding but the payload.
    fn encode_header_into(&self, out: &mut BytesMut, with_digest: bool) {
        out.put_u32(HEADER_LENGTH);

        let mut ty = [b' '; MESSAGE_TYPE_LEN];
        for (dst, src) in ty.iter_mut().zip(self.message_type.as_str().bytes()) {
            *dst = src;
        }
        out.put_slice(&ty);

        out.put_u32(self.schema_version);
        out.put_u64(self.created_date);
        out.put_i64(self.sequence_number);
        out.put_u64(self.flags);

        // Java-style order: the least-significant half of the UUID comes first.
        let (hi, lo) = uuid_halves(&self.message_id);
        out.put_slice(&lo);
        out.put_slice(&hi);

        if with_digest {
            out.put_slice(&Sha256::digest(&self.payload));
        } else {
            out.put_slice(&[0u8; 32]);
        }
        out.put_u32(self.payload_type.0);
        out.put_u32(u32::try_from(self.payload.len()).unwrap_or(u32::MAX));
    }

    /// Encodes the frame into a new buffer; see [`Frame::encode_into`].
    pub fn encode(&self, with_digest: bool) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        self.encode_into(&mut out, with_digest);
        out.freeze()
    }
}

/// Limits and checks applied by [`decode`].
#[derive(Clone, Copy, Debug)]
pub struct DecodeOptions {
    /// Frames longer than this are refused with [`FrameError::TooLong`] before hashing.
    pub max_frame_len: usize,
    /// Check every `PayloadDigest`. When false (only between Airlock peers that negotiated no
    /// digests, whose frames carry 32 zero bytes there), a digest that is not all zeros is
    /// still checked: it costs nothing on such a channel and catches a corrupted frame.
    pub verify_digest: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            verify_digest: true,
        }
    }
}

/// Decodes and validates one WebSocket message as a frame.
///
/// Zero-copy: the returned payload is a slice of `buf`. As the plugin does, the
/// payload is everything from `HeaderLength + 4` to the end of the message.
/// Checks, in order: [`FrameError::TooShort`], [`FrameError::TooLong`],
/// [`FrameError::InvalidMessageType`]; then, except for `start_publication` and
/// `pause_publication` which the plugin accepts unchecked:
/// [`FrameError::BadHeaderLength`], [`FrameError::EmptyMessageType`],
/// [`FrameError::ZeroCreatedDate`], [`FrameError::PayloadLengthMismatch`] and,
/// when `PayloadLength != 0` and `opts.verify_digest` (or the digest is not all zeros),
/// [`FrameError::DigestMismatch`].
pub fn decode(buf: Bytes, opts: &DecodeOptions) -> Result<Frame, FrameError> {
    let len = buf.len();
    if len < FRAME_HEADER_LEN {
        return Err(FrameError::TooShort { len });
    }
    if len > opts.max_frame_len {
        return Err(FrameError::TooLong {
            len,
            max: opts.max_frame_len,
        });
    }

    let mut r = Reader(&buf);
    let header_length = u32::from_be_bytes(r.take());
    let ty_raw: [u8; MESSAGE_TYPE_LEN] = r.take();
    let schema_version = u32::from_be_bytes(r.take());
    let created_date = u64::from_be_bytes(r.take());
    let sequence_number = i64::from_be_bytes(r.take());
    let flags = u64::from_be_bytes(r.take());
    let lo: [u8; 8] = r.take();
    let hi: [u8; 8] = r.take();
    let digest: [u8; 32] = r.take();
    let payload_type = PayloadType(u32::from_be_bytes(r.take()));
    let payload_length = u32::from_be_bytes(r.take());

    let message_type = parse_message_type(&ty_raw).ok_or(FrameError::InvalidMessageType)?;

    let mut id = [0u8; 16];
    for (dst, src) in id.iter_mut().zip(hi.iter().chain(lo.iter())) {
        *dst = *src;
    }
    let message_id = Uuid::from_bytes(id);

    let payload_start = usize::try_from(header_length)
        .ok()
        .and_then(|h| h.checked_add(4))
        .filter(|&start| start >= FRAME_HEADER_LEN && start <= len);

    let unchecked = matches!(
        message_type,
        MessageType::StartPublication | MessageType::PausePublication
    );
    let payload_start = match payload_start {
        Some(start) => start,
        None if unchecked => FRAME_HEADER_LEN,
        None => return Err(FrameError::BadHeaderLength(header_length)),
    };
    let payload = buf.slice(payload_start..);

    if !unchecked {
        if message_type.as_str().is_empty() {
            return Err(FrameError::EmptyMessageType);
        }
        if created_date == 0 {
            return Err(FrameError::ZeroCreatedDate);
        }
        if usize::try_from(payload_length).ok() != Some(payload.len()) {
            return Err(FrameError::PayloadLengthMismatch {
                declared: payload_length,
                actual: payload.len(),
            });
        }
        if payload_length != 0 && (opts.verify_digest || digest != [0u8; 32]) {
            let actual: [u8; 32] = Sha256::digest(&payload).into();
            if actual != digest {
                return Err(FrameError::DigestMismatch {
                    expected: digest,
                    actual,
                });
            }
        }
    }

    Ok(Frame {
        message_type,
        schema_version,
        created_date,
        sequence_number,
        flags,
        message_id,
        payload_type,
        payload,
    })
}

/// Cheap look at the message type of an encoded frame, without validating or
/// hashing anything: the gateway uses it to route frames it relays untouched.
/// `None` when the buffer is too short or the type is empty or not ASCII.
pub fn peek_message_type(buf: &[u8]) -> Option<MessageType> {
    let raw = buf
        .get(MESSAGE_TYPE_OFFSET..MESSAGE_TYPE_OFFSET + MESSAGE_TYPE_LEN)?
        .first_chunk::<MESSAGE_TYPE_LEN>()?;
    parse_message_type(raw).filter(|t| !t.as_str().is_empty())
}

/// Offset of the `PayloadType` field in an encoded frame.
const PAYLOAD_TYPE_OFFSET: usize = FRAME_HEADER_LEN - 8;

/// Cheap look at the payload type of an encoded frame (no validation), beside
/// [`peek_message_type`]: the gateway uses it to tell stream data from handshakes when it
/// tracks a session's activity.
pub fn peek_payload_type(buf: &[u8]) -> Option<PayloadType> {
    let raw = buf.get(PAYLOAD_TYPE_OFFSET..PAYLOAD_TYPE_OFFSET + 4)?;
    let raw: [u8; 4] = raw.try_into().ok()?;
    Some(PayloadType(u32::from_be_bytes(raw)))
}

/// The `MessageType` of Airlock's notices: a line for the person at the client (e.g. "this
/// session ends in one minute"), sent by the gateway only. The AWS plugin logs an unknown
/// message type and otherwise ignores it; Airlock clients print it, and an Airlock agent
/// asked to writes it into a PTY session's output so that the plugin's user sees it too.
pub const NOTICE_MESSAGE_TYPE: &str = "airlock_notice";

/// Epoch milliseconds now (0 if the clock is before 1970, which `decode` would then refuse).
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// RFC-4122 bytes of `id` split into the (most, least) significant halves.
fn uuid_halves(id: &Uuid) -> ([u8; 8], [u8; 8]) {
    let b = id.as_bytes();
    let (hi, lo) = b.split_at(8);
    let mut h = [0u8; 8];
    let mut l = [0u8; 8];
    h.copy_from_slice(hi);
    l.copy_from_slice(lo);
    (h, l)
}

/// Parses the 32-byte type field. Go strips NULs at both ends and then white
/// space; we strip both together, which gives the same result on every real
/// frame and makes decode(encode(decode(x))) stable. `None` if not ASCII.
fn parse_message_type(raw: &[u8; MESSAGE_TYPE_LEN]) -> Option<MessageType> {
    if !raw.is_ascii() {
        return None;
    }
    let is_pad = |b: &u8| matches!(b, 0 | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ');
    let start = raw.iter().position(|b| !is_pad(b)).unwrap_or(raw.len());
    let end = raw
        .iter()
        .rposition(|b| !is_pad(b))
        .map_or(start, |e| e + 1);
    let trimmed = raw.get(start..end).unwrap_or_default();
    let s = std::str::from_utf8(trimmed).ok()?;
    Some(MessageType::parse(s))
}

/// Reads fixed-size big-endian fields from a buffer already checked to be long enough.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    /// Next `N` bytes; zeros if the buffer ran out (cannot happen after the length check).
    fn take<const N: usize>(&mut self) -> [u8; N] {
        match self.0.split_first_chunk::<N>() {
            Some((head, rest)) => {
                self.0 = rest;
                *head
            }
            None => [0u8; N],
        }
    }
}

/// An encoded frame as header bytes and payload bytes; see [`Frame::encode_parts`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedFrame {
    /// The header (everything up to and including the payload length).
    pub head: Bytes,
    /// The payload.
    pub body: Bytes,
}

impl EncodedFrame {
    /// A frame already encoded in one piece.
    pub fn whole(bytes: Bytes) -> EncodedFrame {
        EncodedFrame {
            head: bytes,
            body: Bytes::new(),
        }
    }

    /// Encoded length.
    pub fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    /// Whether it has no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame in one piece (copies unless the payload part is empty).
    pub fn into_bytes(self) -> Bytes {
        if self.body.is_empty() {
            return self.head;
        }
        let mut out = BytesMut::with_capacity(self.len());
        out.put_slice(&self.head);
        out.put_slice(&self.body);
        out.freeze()
    }
}
