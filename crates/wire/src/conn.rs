//! A WebSocket connection for data channels, split into a reader and a writer that each own
//! one direction of the socket (and, over TLS, one direction's record key).
//!
//! The receive path reads up to 256 KiB a syscall into one buffer, opens the TLS records in
//! place and hands out each message's payload as a slice of that buffer (no copy). The send
//! path encodes header and payload straight into record-sized pieces of one buffer (masking as
//! it copies, for clients), seals them in place and writes the batch with one syscall.

use std::io;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::record::{self, RecordError, RecordKey, HEADER_LEN, MAX_PLAINTEXT, OVERHEAD};
use crate::ws::{apply_mask, opcode, CloseFrame, FrameError, Header, Message};

/// Bytes asked of the socket per read (more when a message needs it).
const READ_CHUNK: usize = 256 * 1024;
/// Extra receive-buffer room taken when it must grow during a bulk transfer.
const BULK_EXTRA: usize = 2 * 1024 * 1024;
/// Encoded bytes gathered before a write happens without an explicit flush.
const FLUSH_AT: usize = 1024 * 1024;
/// Largest message accepted unless the owner sets another limit.
pub const DEFAULT_MAX_MESSAGE: usize = 16 << 20;
/// Longest WebSocket frame header (2 bytes, 8 of extended length, 4 of mask).
const MAX_FRAME_HEADER: usize = 14;

/// Which end of the WebSocket this is: clients mask what they send (RFC 6455 §5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The end that dialled (Airlock's client and agent).
    Client,
    /// The gateway.
    Server,
}

/// Errors of a data-channel connection.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed.
    #[error("data channel I/O: {0}")]
    Io(#[from] io::Error),
    /// The TLS record layer refused what arrived.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The WebSocket framing was broken.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// rustls would not hand over the connection's keys.
    #[error("taking over TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The connection ended in the middle of a message.
    #[error("the data channel ended in the middle of a message")]
    Truncated,
}

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// Both halves of a data-channel WebSocket.
pub struct WsConn {
    /// Incoming messages.
    pub reader: WsReader,
    /// Outgoing messages.
    pub writer: WsWriter,
}

impl std::fmt::Debug for WsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConn")
            .field("tls", &self.reader.key.is_some())
            .finish()
    }
}

impl WsConn {
    /// A connection over TCP carrying TLS 1.3 whose handshake rustls finished: `secrets` are
    /// what `dangerous_extract_secrets` returned, `traffic` the traffic secrets a
    /// [`record::TrafficSecretLog`] kept (without them a KeyUpdate ends the connection),
    /// `prefix` plaintext already read past the HTTP upgrade (usually none).
    pub fn over_tls13(
        tcp: TcpStream,
        secrets: rustls::ExtractedSecrets,
        traffic: Option<record::TrafficSecrets>,
        role: Role,
        prefix: &[u8],
    ) -> Result<WsConn, RecordError> {
        let (rx, tx) = record::key_pair(secrets, traffic, role == Role::Client)?;
        let (r, w) = tcp.into_split();
        Ok(WsConn {
            reader: WsReader::new(Box::new(r), Some(rx), prefix, role),
            writer: WsWriter::new(Box::new(w), Some(tx), role),
        })
    }

    /// Takes over a TLS 1.3 connection whose handshake (and HTTP upgrade) rustls has done:
    /// plaintext rustls already decrypted is appended to `prefix`, and the record layer goes on
    /// with the connection's keys (and `traffic`, its traffic secrets, to follow KeyUpdates).
    /// (Both the client and the gateway switch this way.)
    pub fn take_over_tls13(
        tcp: TcpStream,
        mut tls: rustls::Connection,
        traffic: Option<record::TrafficSecrets>,
        role: Role,
        mut prefix: Vec<u8>,
    ) -> Result<WsConn, WireError> {
        let _ = std::io::Read::read_to_end(&mut tls.reader(), &mut prefix);
        let secrets = tls.dangerous_extract_secrets()?;
        Ok(WsConn::over_tls13(tcp, secrets, traffic, role, &prefix)?)
    }

    /// A connection over plain TCP (loopback servers, or behind a TLS-terminating proxy).
    pub fn over_tcp(tcp: TcpStream, role: Role, prefix: &[u8]) -> WsConn {
        let (r, w) = tcp.into_split();
        WsConn {
            reader: WsReader::new(Box::new(r), None, prefix, role),
            writer: WsWriter::new(Box::new(w), None, role),
        }
    }

    /// A connection over any byte stream (e.g. a TLS 1.2 stream that rustls keeps running).
    pub fn over_stream<S>(io: S, role: Role, prefix: &[u8]) -> WsConn
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (r, w) = tokio::io::split(io);
        WsConn {
            reader: WsReader::new(Box::new(r), None, prefix, role),
            writer: WsWriter::new(Box::new(w), None, role),
        }
    }

    /// Separates the halves so that reading and writing can run in different tasks.
    pub fn split(self) -> (WsWriter, WsReader) {
        (self.writer, self.reader)
    }

    /// Sets the largest message the reader accepts (and so the most it buffers).
    pub fn set_max_message(&mut self, max: usize) {
        self.reader.set_max_message(max);
    }

    /// The next message; `None` once the connection is closed.
    pub async fn next(&mut self) -> Option<Result<Message, WireError>> {
        self.reader.next().await
    }

    /// Encodes a message for the next flush.
    pub async fn feed(&mut self, m: Message) -> Result<(), WireError> {
        self.writer.feed(m).await
    }

    /// Writes what was fed.
    pub async fn flush(&mut self) -> Result<(), WireError> {
        self.writer.flush().await
    }

    /// Feeds and flushes one message.
    pub async fn send(&mut self, m: Message) -> Result<(), WireError> {
        self.writer.send(m).await
    }

    /// Sends a close frame (and close_notify) and shuts the socket's write side.
    pub async fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), WireError> {
        self.writer.close(frame).await
    }
}

/// The receiving half.
pub struct WsReader {
    io: BoxRead,
    key: Option<RecordKey>,
    /// Our end: a server accepts only masked frames, a client only unmasked ones.
    role: Role,
    /// `[..plain]` is plaintext not yet parsed into messages; `[plain..]` is TLS not yet opened.
    buf: BytesMut,
    plain: usize,
    /// Bytes the message being received still needs.
    want: usize,
    frag: Option<(u8, BytesMut)>,
    max_message: usize,
    eof: bool,
    done: bool,
}

impl WsReader {
    fn new(io: BoxRead, key: Option<RecordKey>, prefix: &[u8], role: Role) -> WsReader {
        let mut buf = BytesMut::with_capacity(prefix.len().max(4096));
        buf.extend_from_slice(prefix);
        WsReader {
            io,
            key,
            role,
            plain: prefix.len(),
            buf,
            want: 0,
            frag: None,
            max_message: DEFAULT_MAX_MESSAGE,
            eof: false,
            done: false,
        }
    }

    /// Sets the largest message accepted, which also bounds how much the reader buffers: a
    /// peer cannot make it reserve more than this plus a few records' worth of room.
    pub fn set_max_message(&mut self, max: usize) {
        self.max_message = max;
    }

    /// The next message; `None` once the connection is closed (after a close frame, the
    /// peer's close_notify or EOF at a message boundary).
    pub async fn next(&mut self) -> Option<Result<Message, WireError>> {
        if self.done {
            return None;
        }
        loop {
            match self.parse() {
                Ok(Some(m)) => {
                    if matches!(m, Message::Close(_)) {
                        self.done = true;
                    }
                    return Some(Ok(m));
                }
                Ok(None) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
            if self.eof {
                self.done = true;
                let clean = self.buf.is_empty() && self.frag.is_none();
                return (!clean).then_some(Err(WireError::Truncated));
            }
            // Room for the rest of the message being received. A buffer that must grow is
            // grown well past that while bulk data flows, because growing moves the partial
            // message (the memory is shared with messages already handed out): with room for
            // several messages that copy happens once per few megabytes, not once per message.
            let need = room_for(self.want, self.max_message);
            if self.buf.capacity() - self.buf.len() < need {
                let extra = if self.want >= READ_CHUNK / 2 {
                    BULK_EXTRA
                } else {
                    READ_CHUNK
                };
                self.buf.reserve(need.saturating_add(extra));
            }
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) => self.eof = true,
                Ok(_) => match self.key.as_mut() {
                    Some(k) => match record::open_records(k, &mut self.buf, &mut self.plain) {
                        Ok(o) => {
                            if o.closed {
                                self.eof = true;
                                self.buf.truncate(self.plain);
                            }
                        }
                        Err(e) => {
                            self.done = true;
                            return Some(Err(e.into()));
                        }
                    },
                    None => self.plain = self.buf.len(),
                },
                Err(e) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
            }
        }
    }

    /// Takes one whole message off the front of the plaintext, if it is all there.
    fn parse(&mut self) -> Result<Option<Message>, WireError> {
        loop {
            let Some(h) = Header::parse(&self.buf[..self.plain])? else {
                self.want = MAX_FRAME_HEADER;
                return Ok(None);
            };
            // RFC 6455 §5.1: clients mask every frame, servers none.
            match (self.role, h.mask.is_some()) {
                (Role::Server, false) => return Err(FrameError::Unmasked.into()),
                (Role::Client, true) => return Err(FrameError::Masked.into()),
                _ => {}
            }
            // Fragments out of order are refused at their header, before their payload is
            // waited for and buffered.
            match (h.opcode, self.frag.is_some()) {
                (opcode::CONTINUATION, false) | (opcode::TEXT | opcode::BINARY, true) => {
                    return Err(FrameError::Fragments.into())
                }
                _ => {}
            }
            // What the message will hold once this frame is in: a continuation adds to the
            // fragments so far (control frames, which may come between them, stand alone).
            // Every sum is checked: lengths come from the peer, before authentication.
            let so_far = match (&self.frag, h.opcode) {
                (Some((_, b)), opcode::CONTINUATION) => b.len() as u64,
                _ => 0,
            };
            let size = h.len.checked_add(so_far);
            if size.is_none_or(|s| s > self.max_message as u64) {
                return Err(FrameError::TooLong {
                    size: size.unwrap_or(u64::MAX),
                    max: self.max_message,
                }
                .into());
            }
            // Within max_message now, so it fits a usize.
            let total = usize::try_from(h.len)
                .ok()
                .and_then(|l| l.checked_add(h.header_len))
                .ok_or(FrameError::TooLong {
                    size: h.len,
                    max: self.max_message,
                })?;
            if self.plain < total {
                self.want = total - self.plain;
                return Ok(None);
            }
            let mut payload = self.buf.split_to(total);
            self.plain -= total;
            payload.advance(h.header_len);
            if let Some(k) = h.mask {
                apply_mask(&mut payload, k, 0);
            }
            self.want = 0;
            match h.opcode {
                opcode::PING => return Ok(Some(Message::Ping(payload.freeze()))),
                opcode::PONG => return Ok(Some(Message::Pong(payload.freeze()))),
                opcode::CLOSE => {
                    let frame = match &payload[..] {
                        [a, b, reason @ ..] => Some(CloseFrame {
                            code: u16::from_be_bytes([*a, *b]),
                            reason: String::from_utf8(reason.to_vec())
                                .map_err(|_| FrameError::Utf8)?,
                        }),
                        _ => None,
                    };
                    return Ok(Some(Message::Close(frame)));
                }
                opcode::CONTINUATION => {
                    let Some((op, mut acc)) = self.frag.take() else {
                        return Err(FrameError::Fragments.into());
                    };
                    acc.extend_from_slice(&payload);
                    if h.fin {
                        return Ok(Some(message(op, acc)?));
                    }
                    self.frag = Some((op, acc));
                }
                op => {
                    if self.frag.is_some() {
                        return Err(FrameError::Fragments.into());
                    }
                    if h.fin {
                        return Ok(Some(message(op, payload)?));
                    }
                    self.frag = Some((op, payload));
                }
            }
        }
    }
}

/// Receive-buffer room for `want` more plaintext bytes arriving in TLS records, bounded by
/// the largest message plus a header whatever `want` says, with saturating arithmetic.
fn room_for(want: usize, max_message: usize) -> usize {
    let want = want.min(max_message.saturating_add(MAX_FRAME_HEADER));
    let records = want / MAX_PLAINTEXT + 1;
    want.saturating_add(records.saturating_mul(OVERHEAD))
        .max(4096)
}

fn message(op: u8, payload: BytesMut) -> Result<Message, FrameError> {
    if op == opcode::TEXT {
        String::from_utf8(payload.to_vec())
            .map(Message::Text)
            .map_err(|_| FrameError::Utf8)
    } else {
        Ok(Message::Binary(payload.freeze()))
    }
}

/// The sending half.
pub struct WsWriter {
    io: BoxWrite,
    key: Option<RecordKey>,
    role: Role,
    out: Vec<u8>,
    /// Start of the record being filled in `out`.
    open_record: Option<usize>,
    closed: bool,
}

impl WsWriter {
    fn new(io: BoxWrite, key: Option<RecordKey>, role: Role) -> WsWriter {
        WsWriter {
            io,
            key,
            role,
            out: Vec::new(),
            open_record: None,
            closed: false,
        }
    }

    /// Encodes `m` for the next flush (writing early once a megabyte is waiting). A close
    /// frame closes at once, see [`WsWriter::close`].
    pub async fn feed(&mut self, m: Message) -> Result<(), WireError> {
        if let Message::Close(f) = m {
            return self.close(f).await;
        }
        self.encode(&m)?;
        if self.out.len() >= FLUSH_AT {
            self.write_out().await?;
        }
        Ok(())
    }

    /// Writes everything fed so far.
    pub async fn flush(&mut self) -> Result<(), WireError> {
        self.write_out().await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Feeds and flushes one message.
    pub async fn send(&mut self, m: Message) -> Result<(), WireError> {
        self.feed(m).await?;
        self.flush().await
    }

    /// Sends a close frame and close_notify, then shuts the write side. Idempotent.
    pub async fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), WireError> {
        if self.closed {
            return Ok(());
        }
        self.encode(&Message::Close(frame))?;
        self.closed = true;
        self.seal_open_record()?;
        if let Some(k) = self.key.as_mut() {
            k.seal_close_notify(&mut self.out)?;
        }
        self.write_out().await?;
        self.io.shutdown().await?;
        Ok(())
    }

    fn encode(&mut self, m: &Message) -> Result<(), WireError> {
        if self.closed {
            return Err(
                io::Error::new(io::ErrorKind::BrokenPipe, "the data channel is closed").into(),
            );
        }
        let close_body;
        let mut second: &[u8] = &[];
        let (op, payload): (u8, &[u8]) = match m {
            Message::Text(t) => (opcode::TEXT, t.as_bytes()),
            Message::Binary(b) => (opcode::BINARY, b),
            Message::BinaryParts(a, b) => {
                second = b;
                (opcode::BINARY, a)
            }
            Message::Ping(b) => (opcode::PING, &b[..b.len().min(125)]),
            Message::Pong(b) => (opcode::PONG, &b[..b.len().min(125)]),
            Message::Close(f) => {
                close_body = f.as_ref().map(|f| {
                    let mut v = f.code.to_be_bytes().to_vec();
                    let mut reason = f.reason.as_str();
                    while reason.len() > 123 {
                        let mut cut = reason.len() - 1;
                        while !reason.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        reason = &reason[..cut];
                    }
                    v.extend_from_slice(reason.as_bytes());
                    v
                });
                (opcode::CLOSE, close_body.as_deref().unwrap_or_default())
            }
        };
        let mask = (self.role == Role::Client).then(rand::random::<[u8; 4]>);
        let len = payload.len() + second.len();
        let mut header = [0u8; 14];
        let n = Header::encode(op, len, mask, &mut header);
        let records = (len / MAX_PLAINTEXT).saturating_add(2);
        self.out.reserve(
            n.saturating_add(len)
                .saturating_add(records.saturating_mul(OVERHEAD)),
        );
        self.put(&header[..n], None)?;
        self.put(payload, mask.map(|k| (k, 0)))?;
        self.put(second, mask.map(|k| (k, payload.len())))?;
        Ok(())
    }

    /// Appends `data` (masked as it lands, when `mask` is set) into record-sized pieces.
    /// `mask` is the key and how far into the masked payload `data` starts.
    fn put(&mut self, mut data: &[u8], mask: Option<([u8; 4], usize)>) -> Result<(), RecordError> {
        if self.key.is_none() {
            let start = self.out.len();
            self.out.extend_from_slice(data);
            if let Some((k, at)) = mask {
                apply_mask(&mut self.out[start..], k, at);
            }
            return Ok(());
        }
        let (key, mut offset) = match mask {
            Some((k, at)) => (Some(k), at),
            None => (None, 0),
        };
        while !data.is_empty() {
            let rs = match self.open_record {
                Some(r) => r,
                None => {
                    let r = self.out.len();
                    self.out.extend_from_slice(&[0; HEADER_LEN]);
                    self.open_record = Some(r);
                    r
                }
            };
            let room = MAX_PLAINTEXT - (self.out.len() - rs - HEADER_LEN);
            let n = room.min(data.len());
            let start = self.out.len();
            self.out.extend_from_slice(&data[..n]);
            if let Some(k) = key {
                apply_mask(&mut self.out[start..], k, offset);
            }
            offset += n;
            data = &data[n..];
            if n == room {
                self.seal_open_record()?;
            }
        }
        Ok(())
    }

    fn seal_open_record(&mut self) -> Result<(), RecordError> {
        if let (Some(rs), Some(k)) = (self.open_record.take(), self.key.as_mut()) {
            k.seal(&mut self.out, rs)?;
        }
        Ok(())
    }

    async fn write_out(&mut self) -> Result<(), WireError> {
        self.seal_open_record()?;
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
            if self.out.capacity() > 4 * FLUSH_AT {
                self.out.shrink_to(FLUSH_AT);
            }
        }
        Ok(())
    }
}
