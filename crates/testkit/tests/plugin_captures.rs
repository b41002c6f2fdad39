//! Interoperability with the REAL AWS session-manager-plugin, proven from its captured traffic.
//!
//! `shared/testdata/plugin-captures` holds session-manager-plugin 1.2.677.0 talking to a scripted
//! stand-in server. Here this test plays the PLUGIN's side of those captures against the real
//! Airlock gateway and agent (in-process, on 127.0.0.1): StartSession through the signed API,
//! a raw WebSocket to the returned StreamUrl, the plugin's captured `OpenDataChannelInput` (only
//! its `TokenValue` replaced), then the plugin's captured binary frames, in the captured order and
//! byte for byte (MessageId, CreatedDate and digest exactly as the plugin wrote them), reacting
//! to what Airlock sends the way the plugin does (protocol.md §7 receiver rules, README facts).
//!
//! Everything Airlock sends to the "plugin" is checked against what the real plugin needs: the
//! wire header (HeaderLength 116, space-padded MessageType, SchemaVersion 1, non-zero CreatedDate,
//! PayloadLength equal to the payload's length, a valid SHA-256 digest — the plugin silently
//! drops frames whose digest is wrong), the exact ack shape, SYN on output seq 0, 1024-byte
//! payloads at most, the HandshakeRequest contents, byte-identical retransmissions, an ack for
//! every input copy, and a clean `channel_closed` at the end.
//!
//! Adaptation, stated once: Airlock's agent always opens with a HandshakeRequest, so for the
//! captures recorded without a handshake (`shell-nohandshake`, `shell-resend-duplicate`,
//! `resume`) the plugin answers with its captured HandshakeResponse (from `shell-handshake`, seq
//! 0, byte-exact), exactly as the real plugin does when it sees one, and the plugin's later frames
//! then take the next sequence numbers, as the plugin's single counter would give them. Only the
//! 8-byte SequenceNumber field of those frames is rewritten; their MessageId, CreatedDate,
//! payload and digest stay as captured. `shell-handshake` is replayed with no byte changed.
//! Where a scenario needs keystrokes the captures do not hold (`stty size`, `seq 1 3000`,
//! `sleep 30`, `echo rc=$?`), they are built the plugin's way: one key per PT 1 frame, Flags 0,
//! Enter as the single byte 0x0D, taking the next number of the same counter. Every ack the
//! plugin sends is built for the live frame (see [`plugin_ack`]).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use airlock_client::{ApiClient, StreamGrant};
use airlock_proto::{decode, DecodeOptions, Frame, MessageType, PayloadType};
use airlock_testkit::{TestAgent, TestServer};

/// The AWS stream payload limit; the plugin never negotiates more.
const AWS_MAX_PAYLOAD: usize = 1024;
/// The version gates of protocol.md §6.3; Airlock's AgentVersion must pass the highest.
const SMUX_KEEPALIVE_OFF_GATE: [u64; 4] = [3, 1, 1511, 0];
/// Upper bound of a whole scenario.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(120);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

// ---------------------------------------------------------------------------------------------
// The captures
// ---------------------------------------------------------------------------------------------

fn captures_dir() -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/plugin-captures");
    assert!(
        dir.join("README.md").is_file(),
        "the session-manager-plugin captures are MISSING: expected them in {} \
         (shared/testdata/plugin-captures next to the workspace). This test never skips.",
        dir.display()
    );
    dir
}

/// One line of a `.jsonl` capture.
struct Rec {
    t_ms: f64,
    dir: String,
    kind: String,
    raw: Bytes,
    decoded: Value,
}

/// One capture file.
struct Capture {
    name: String,
    recs: Vec<Rec>,
}

/// A binary frame the plugin sent, as captured.
#[derive(Clone)]
struct CapInput {
    t_ms: f64,
    raw: Bytes,
    seq: i64,
    id: String,
    pt: u32,
    payload: Vec<u8>,
}

fn unhex(s: &str) -> Vec<u8> {
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).expect("ASCII hex");
            assert_eq!(pair.len(), 2, "odd hex length");
            u8::from_str_radix(pair, 16).expect("hex")
        })
        .collect()
}

impl Capture {
    fn load(name: &str) -> Capture {
        let path = captures_dir().join(format!("{name}.jsonl"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read the capture {} ({e}); the plugin captures must be present",
                path.display()
            )
        });
        let recs: Vec<Rec> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{name}: bad JSON line ({e}): {l}"));
                Rec {
                    t_ms: v["t_ms"].as_f64().expect("t_ms"),
                    dir: v["dir"].as_str().expect("dir").to_owned(),
                    kind: v["kind"].as_str().expect("kind").to_owned(),
                    raw: Bytes::from(unhex(v["hex"].as_str().expect("hex"))),
                    decoded: v["decoded"].clone(),
                }
            })
            .collect();
        assert!(!recs.is_empty(), "{name}: the capture is empty");
        Capture {
            name: name.to_owned(),
            recs,
        }
    }

    /// The plugin's `OpenDataChannelInput` text frames, in order.
    fn opens(&self) -> Vec<String> {
        self.recs
            .iter()
            .filter(|r| r.dir == "plugin->server" && r.kind == "text")
            .map(|r| String::from_utf8(r.raw.to_vec()).expect("UTF-8 open text"))
            .collect()
    }

    /// Every binary frame of one direction, raw.
    fn binaries<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = &'a Rec> + 'a {
        self.recs
            .iter()
            .filter(move |r| r.dir == dir && r.kind == "binary")
    }

    /// The plugin's `input_stream_data` frames (the `hex` of `plugin->server` `binary` lines),
    /// in the captured order, copies included.
    fn inputs(&self) -> Vec<CapInput> {
        self.binaries("plugin->server")
            .filter(|r| r.decoded["MessageType"] == "input_stream_data")
            .map(|r| {
                let f = decode(r.raw.clone(), &DecodeOptions::default()).unwrap_or_else(|e| {
                    panic!(
                        "{}: a captured plugin frame does not decode: {e}",
                        self.name
                    )
                });
                assert_eq!(
                    f.message_id.hyphenated().to_string(),
                    r.decoded["MessageId"].as_str().unwrap(),
                    "{}: MessageId byte order",
                    self.name
                );
                CapInput {
                    t_ms: r.t_ms,
                    raw: r.raw.clone(),
                    seq: f.sequence_number,
                    id: f.message_id.hyphenated().to_string(),
                    pt: f.payload_type.0,
                    payload: f.payload.to_vec(),
                }
            })
            .collect()
    }
}

/// The plugin's HandshakeResponse from `shell-handshake` (input seq 0, PT 6), byte-exact.
fn captured_handshake_response() -> CapInput {
    let inputs = Capture::load("shell-handshake").inputs();
    let hr = inputs[0].clone();
    assert_eq!(
        (hr.seq, hr.pt),
        (0, 6),
        "shell-handshake: the first plugin input is the HandshakeResponse"
    );
    hr
}

// ---------------------------------------------------------------------------------------------
// Wire checks (what the plugin's parser and Validate() need) and the plugin's own frames
// ---------------------------------------------------------------------------------------------

fn be_u32(raw: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(raw[at..at + 4].try_into().unwrap())
}

fn be_u64(raw: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(raw[at..at + 8].try_into().unwrap())
}

/// Checks one frame as the plugin reads it and returns it decoded, or says what is wrong.
/// Independent of Airlock's codec for the header and the digest; then the codec must decode it
/// and re-encode the very same bytes (a canonical header).
fn wire_problem(raw: &[u8]) -> Result<Frame, String> {
    if raw.len() <= 120 {
        return Err(format!(
            "a frame of {} bytes: the header is 120 bytes and the payload must not be empty",
            raw.len()
        ));
    }
    if be_u32(raw, 0) != 116 {
        return Err(format!("HeaderLength {} instead of 116", be_u32(raw, 0)));
    }
    let ty = &raw[4..36];
    let name_len = ty.iter().position(|&b| b == b' ').unwrap_or(32);
    let ty_ok = name_len > 0
        && ty[..name_len]
            .iter()
            .all(|b| b.is_ascii_lowercase() || *b == b'_')
        && ty[name_len..].iter().all(|&b| b == b' ');
    if !ty_ok {
        return Err(format!(
            "MessageType must be ASCII right-padded with spaces: {:?}",
            String::from_utf8_lossy(ty)
        ));
    }
    if be_u32(raw, 36) != 1 {
        return Err(format!("SchemaVersion {} instead of 1", be_u32(raw, 36)));
    }
    if be_u64(raw, 40) == 0 {
        return Err("CreatedDate 0 (the plugin's Validate refuses it)".into());
    }
    let payload = &raw[120..];
    if be_u32(raw, 116) as usize != payload.len() {
        return Err(format!(
            "PayloadLength {} but the payload has {} bytes",
            be_u32(raw, 116),
            payload.len()
        ));
    }
    let digest: [u8; 32] = Sha256::digest(payload).into();
    if raw[80..112] != digest[..] {
        return Err(
            "PayloadDigest is not the SHA-256 of the payload: the plugin drops such a frame \
             silently (digests must never be negotiated off with the plugin)"
                .into(),
        );
    }
    let frame = decode(Bytes::copy_from_slice(raw), &DecodeOptions::default())
        .map_err(|e| format!("does not decode: {e}"))?;
    if frame.encode(true)[..] != *raw {
        return Err("not a canonical encoding".into());
    }
    Ok(frame)
}

/// [`wire_problem`], panicking with `ctx` on a problem.
fn check_wire(raw: &[u8], ctx: &str) -> Frame {
    wire_problem(raw).unwrap_or_else(|e| panic!("{ctx}: {e}"))
}

/// The payload of the plugin's ack of `acked`, keys in the plugin's order (README fact 1).
fn ack_payload(acked: &Frame) -> String {
    format!(
        r#"{{"AcknowledgedMessageType":"{}","AcknowledgedMessageId":"{}","AcknowledgedMessageSequenceNumber":{},"IsSequentialMessage":true}}"#,
        acked.message_type.as_str(),
        acked.message_id.hyphenated(),
        acked.sequence_number
    )
}

/// The ack frame the plugin builds for `acked`: `acknowledge`, seq 0, Flags 3, PayloadType 0,
/// a fresh MessageId and CreatedDate now. The captured acks name the stand-in server's
/// MessageIds, which differ in a live run, so every ack the plugin sends here is built this way
/// for the live frame (`captures_agree_with_the_plugin_model` proves the builder reproduces the
/// plugin's captured acks byte for byte, MessageId and CreatedDate aside).
fn plugin_ack(acked: &Frame) -> Bytes {
    Frame::new(
        MessageType::Acknowledge,
        0,
        3,
        PayloadType::NONE,
        Bytes::from(ack_payload(acked)),
    )
    .encode(true)
}

/// An input frame built the plugin's way (for keystrokes the captures do not contain):
/// `input_stream_data`, Flags 0, a fresh MessageId, CreatedDate now, a valid digest.
fn plugin_input(seq: i64, pt: PayloadType, payload: &[u8]) -> Bytes {
    Frame::new(
        MessageType::InputStreamData,
        seq,
        0,
        pt,
        Bytes::copy_from_slice(payload),
    )
    .encode(true)
}

/// The captured frame with only its SequenceNumber field (bytes 48..56) changed.
fn with_seq(raw: &Bytes, seq: i64) -> Bytes {
    let mut v = raw.to_vec();
    v[48..56].copy_from_slice(&seq.to_be_bytes());
    Bytes::from(v)
}

fn version_parts(v: &str) -> Option<[u64; 4]> {
    let parts: Vec<u64> = v
        .split('.')
        .map(|p| {
            (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse().ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    parts.try_into().ok()
}

/// The printable tail of the output, for failure messages.
fn tail(bytes: &[u8], n: usize) -> String {
    let s = String::from_utf8_lossy(bytes);
    let chars: Vec<char> = s.chars().collect();
    let start = chars.len().saturating_sub(n);
    format!("{:?}", chars[start..].iter().collect::<String>())
}

fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

/// `1\r\n2\r\n…n\r\n`, what `seq 1 n` prints on a terminal.
fn seq_block(n: u32) -> String {
    (1..=n).map(|i| format!("{i}\r\n")).collect()
}

// ---------------------------------------------------------------------------------------------
// The plugin emulator
// ---------------------------------------------------------------------------------------------

/// One input frame (by sequence number) and how many byte-identical copies were sent.
struct Sent {
    id: String,
    copies: usize,
}

/// The plugin's side of one session: its data channel, its single outgoing sequence counter,
/// its receiver (protocol.md §7: in-order frames acked and handled, later ones acked and
/// buffered, earlier ones ignored without an ack), and a record of everything Airlock sent.
struct Plugin {
    ws: Option<Ws>,
    /// Connection number (1 = the first, 2 after ResumeSession, …).
    conn: u32,
    trace: Vec<String>,

    // Sending.
    next_seq: i64,
    /// Captured MessageId -> the bytes sent live, so that a captured resend goes out as an exact
    /// copy of what was sent first.
    live: HashMap<String, Bytes>,
    /// Captured frames whose SequenceNumber had to be rewritten (see the module docs).
    rewritten: usize,
    sent: BTreeMap<i64, Sent>,

    // Receiving.
    expected: i64,
    buffered: BTreeMap<i64, Frame>,
    /// Stream payloads in order, as the plugin writes them to the terminal.
    output: Vec<u8>,
    first_stream: Option<Frame>,
    /// The first bytes received for each output sequence number: any resend must match them.
    seen_raw: HashMap<i64, Bytes>,
    repeats: usize,
    max_payload: usize,
    stream_frames: usize,
    last_stream_at: Instant,
    acks: HashMap<i64, usize>,
    ack_ids: HashSet<uuid::Uuid>,
    handshake_request: Option<Frame>,
    handshake_complete: Option<Frame>,
    channel_closed: Option<(Bytes, Frame)>,
    /// Drop the next in-order Output after HandshakeComplete without an ack (README fact 6).
    withhold: bool,
    withheld: Option<(i64, Instant)>,
    withheld_resent_after: Option<Duration>,
    /// Output sequence numbers received on the current connection.
    conn_seqs: Vec<i64>,
    /// Payloads of the pongs received.
    pongs: Vec<Bytes>,
}

impl Plugin {
    fn new() -> Plugin {
        Plugin {
            ws: None,
            conn: 0,
            trace: Vec::new(),
            next_seq: 0,
            live: HashMap::new(),
            rewritten: 0,
            sent: BTreeMap::new(),
            expected: 0,
            buffered: BTreeMap::new(),
            output: Vec::new(),
            first_stream: None,
            seen_raw: HashMap::new(),
            repeats: 0,
            max_payload: 0,
            stream_frames: 0,
            last_stream_at: Instant::now(),
            acks: HashMap::new(),
            ack_ids: HashSet::new(),
            handshake_request: None,
            handshake_complete: None,
            channel_closed: None,
            withhold: false,
            withheld: None,
            withheld_resent_after: None,
            conn_seqs: Vec::new(),
            pongs: Vec::new(),
        }
    }

    fn note(&mut self, s: String) {
        self.trace.push(s);
    }

    fn recent(&self) -> String {
        let start = self.trace.len().saturating_sub(40);
        self.trace[start..].join("\n  ")
    }

    /// Opens the data channel as the plugin does: the WebSocket upgrade (no auth header), then
    /// the `OpenDataChannelInput` text frame.
    async fn dial(&mut self, url: &str, open_text: String) {
        let (ws, resp) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("WebSocket upgrade to {url} failed: {e}"));
        assert_eq!(resp.status().as_u16(), 101, "upgrade status");
        self.ws = Some(ws);
        self.conn += 1;
        self.conn_seqs.clear();
        self.note(format!("conn {} open: {open_text}", self.conn));
        self.ws
            .as_mut()
            .unwrap()
            .send(Message::Text(open_text.into()))
            .await
            .expect("send OpenDataChannelInput");
    }

    async fn send_raw(&mut self, bytes: Bytes) {
        let ws = self.ws.as_mut().expect("connected");
        ws.send(Message::Binary(bytes))
            .await
            .expect("send a frame to the gateway");
    }

    async fn send_input(&mut self, bytes: Bytes) {
        let f = decode(bytes.clone(), &DecodeOptions::default()).expect("our own frame");
        assert_eq!(f.message_type, MessageType::InputStreamData);
        assert_eq!(f.flags, 0, "plugin data frames always have Flags 0");
        let id = f.message_id.hyphenated().to_string();
        let e = self.sent.entry(f.sequence_number).or_insert(Sent {
            id: id.clone(),
            copies: 0,
        });
        assert_eq!(e.id, id, "two different frames with one sequence number");
        e.copies += 1;
        let copies = e.copies;
        self.note(format!(
            "-> input seq={} pt={} copy#{} {:?}",
            f.sequence_number,
            f.payload_type.0,
            copies,
            String::from_utf8_lossy(&f.payload)
        ));
        self.send_raw(bytes).await;
    }

    /// Sends a captured plugin frame: byte-exact when its sequence number is the one the plugin's
    /// counter gives it here, otherwise with only the SequenceNumber rewritten. A captured
    /// resend (a MessageId already sent) goes out as an exact copy of the first.
    async fn send_captured(&mut self, c: &CapInput) {
        if let Some(prev) = self.live.get(&c.id).cloned() {
            self.send_input(prev).await;
            return;
        }
        let bytes = if c.seq == self.next_seq {
            c.raw.clone()
        } else {
            self.rewritten += 1;
            with_seq(&c.raw, self.next_seq)
        };
        self.next_seq += 1;
        self.live.insert(c.id.clone(), bytes.clone());
        self.send_input(bytes).await;
    }

    /// Sends captured frames in order, paced like the capture (gaps clamped to 10..100 ms),
    /// handling what arrives in between.
    async fn replay(&mut self, frames: &[CapInput]) {
        let mut prev: Option<f64> = None;
        for c in frames {
            if let Some(p) = prev {
                let gap = ((c.t_ms - p).clamp(10.0, 100.0)) as u64;
                self.pump_for(Duration::from_millis(gap)).await;
            }
            prev = Some(c.t_ms);
            self.send_captured(c).await;
        }
    }

    /// Types `text` one key per frame as the plugin sends keystrokes (PT 1, one byte each; Enter
    /// is written `\r`, the single byte 0x0D the plugin sends).
    async fn type_keys(&mut self, text: &str) {
        for b in text.bytes() {
            let bytes = plugin_input(self.next_seq, PayloadType::OUTPUT, &[b]);
            self.next_seq += 1;
            self.send_input(bytes).await;
            self.pump_for(Duration::from_millis(15)).await;
        }
    }

    /// Types a command line and Enter, then waits for `needle` in the output that follows.
    async fn run(&mut self, line: &str, needle: &str, timeout: Duration) -> String {
        let mark = self.output.len();
        self.type_keys(&format!("{line}\r")).await;
        self.wait_output(mark, needle, timeout).await
    }

    fn output_since(&self, mark: usize) -> String {
        String::from_utf8_lossy(&self.output[mark..]).into_owned()
    }

    async fn wait_output(&mut self, mark: usize, needle: &str, timeout: Duration) -> String {
        let what = format!("{needle:?} in the output");
        self.pump_until(&what, timeout, |p| p.output_since(mark).contains(needle))
            .await;
        self.output_since(mark)
    }

    /// Waits until some output has arrived and none for 400 ms (a prompt has been drawn).
    async fn settle(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            self.pump_for(Duration::from_millis(100)).await;
            if !self.output.is_empty()
                && self.last_stream_at.elapsed() >= Duration::from_millis(400)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the shell never went quiet; output so far {}",
                tail(&self.output, 300)
            );
        }
    }

    fn all_acked(&self) -> bool {
        self.sent
            .iter()
            .all(|(seq, s)| self.acks.get(seq).copied().unwrap_or(0) >= s.copies)
    }

    /// Handles inbound frames until `cond` holds; panics after `timeout` or if the channel closes.
    async fn pump_until(&mut self, what: &str, timeout: Duration, cond: impl Fn(&Plugin) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(self) {
                return;
            }
            match self.recv_one(deadline).await {
                Recv::Frame => {}
                Recv::Timeout => panic!(
                    "timed out after {timeout:?} waiting for {what}; output so far {}\n  recent traffic:\n  {}",
                    tail(&self.output, 400),
                    self.recent()
                ),
                Recv::Closed(why) => {
                    if cond(self) {
                        return;
                    }
                    panic!(
                        "the data channel closed ({why}) while waiting for {what}; output so far {}\n  recent traffic:\n  {}",
                        tail(&self.output, 400),
                        self.recent()
                    )
                }
            }
        }
    }

    /// Handles inbound frames for `d`.
    async fn pump_for(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while let Recv::Frame = self.recv_one(deadline).await {}
    }

    async fn recv_one(&mut self, deadline: Instant) -> Recv {
        let Some(ws) = self.ws.as_mut() else {
            tokio::time::sleep_until(deadline).await;
            return Recv::Closed("not connected".into());
        };
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Recv::Timeout,
            Ok(m) => m,
        };
        match msg {
            Some(Ok(Message::Binary(b))) => {
                self.on_binary(b).await;
                Recv::Frame
            }
            Some(Ok(Message::Text(t))) => panic!(
                "Airlock sent a text frame to the plugin ({t:?}); all of its messages must be binary frames"
            ),
            Some(Ok(Message::Close(c))) => {
                self.ws = None;
                Recv::Closed(format!("close frame {c:?}"))
            }
            Some(Ok(Message::Pong(payload))) => {
                self.pongs.push(payload);
                Recv::Frame
            }
            Some(Ok(_)) => Recv::Frame,
            Some(Err(e)) => {
                self.ws = None;
                Recv::Closed(format!("error {e}"))
            }
            None => {
                self.ws = None;
                Recv::Closed("end of stream".into())
            }
        }
    }

    /// What the plugin does with one inbound message, plus the interop checks.
    async fn on_binary(&mut self, raw: Bytes) {
        let ctx = format!("frame #{} to the plugin", self.trace.len());
        let f = check_wire(&raw, &ctx);
        assert!(
            self.channel_closed.is_none(),
            "{ctx}: {} after channel_closed (the plugin has exited by then)",
            f.message_type
        );
        match f.message_type {
            MessageType::OutputStreamData => self.on_output(raw, f).await,
            MessageType::Acknowledge => self.on_ack(&f),
            MessageType::ChannelClosed => {
                self.note(format!(
                    "<- channel_closed {}",
                    String::from_utf8_lossy(&f.payload)
                ));
                // Not acked (README fact 10): the plugin prints and exits.
                self.channel_closed = Some((raw, f));
            }
            ref other => panic!(
                "{ctx}: Airlock sent the plugin a `{other}` frame ({}); only output_stream_data, \
                 acknowledge and channel_closed may reach it (agent_session_state is for the gateway)",
                String::from_utf8_lossy(&f.payload)
            ),
        }
    }

    async fn on_output(&mut self, raw: Bytes, f: Frame) {
        let seq = f.sequence_number;
        self.note(format!(
            "<- output seq={seq} flags={} pt={} id={} len={} {:?}",
            f.flags,
            f.payload_type.0,
            f.message_id,
            f.payload.len(),
            String::from_utf8_lossy(&f.payload[..f.payload.len().min(60)])
        ));
        assert!(
            matches!(
                f.payload_type,
                PayloadType::OUTPUT
                    | PayloadType::HANDSHAKE_REQUEST
                    | PayloadType::HANDSHAKE_COMPLETE
            ),
            "output seq {seq} has {}: the plugin's shell handler prints StdErr/ExitCode/Flag \
             payloads raw, so only Output and the handshake may reach it",
            f.payload_type
        );
        assert!(
            f.payload.len() <= AWS_MAX_PAYLOAD,
            "output seq {seq} carries {} bytes; the plugin never negotiates more than {AWS_MAX_PAYLOAD}",
            f.payload.len()
        );
        assert_eq!(f.schema_version, 1);
        assert_eq!(
            f.flags,
            u64::from(seq == 0),
            "output seq {seq}: Flags must be 1 (SYN) on seq 0 and 0 otherwise"
        );
        self.max_payload = self.max_payload.max(f.payload.len());
        self.stream_frames += 1;
        self.last_stream_at = Instant::now();
        self.conn_seqs.push(seq);
        if self.first_stream.is_none() {
            assert!(
                seq == 0
                    && f.flags == 1
                    && matches!(
                        f.payload_type,
                        PayloadType::HANDSHAKE_REQUEST | PayloadType::OUTPUT
                    ),
                "the first stream frame must be seq 0, Flags 1, HandshakeRequest or Output; got seq {seq} flags {} {}",
                f.flags,
                f.payload_type
            );
            self.first_stream = Some(f.clone());
        }
        match self.seen_raw.get(&seq) {
            Some(first) => {
                assert_eq!(
                    first, &raw,
                    "output seq {seq} was retransmitted with different bytes; a resend must be \
                     byte for byte (same MessageId, same CreatedDate)"
                );
                self.repeats += 1;
                if let Some((wseq, at)) = self.withheld {
                    if wseq == seq && self.withheld_resent_after.is_none() {
                        self.withheld_resent_after = Some(at.elapsed());
                        self.note(format!(
                            "   resend of withheld seq {seq} after {:?}",
                            at.elapsed()
                        ));
                    }
                }
            }
            None => {
                self.seen_raw.insert(seq, raw.clone());
            }
        }

        if seq == self.expected {
            if self.withhold
                && self.handshake_complete.is_some()
                && f.payload_type == PayloadType::OUTPUT
            {
                // README fact 6: the Output right after HandshakeComplete is dropped without an
                // ack; `expected` stays, so only Airlock's resend can deliver it.
                self.withhold = false;
                self.withheld = Some((seq, Instant::now()));
                self.note(format!("   (dropped seq {seq} without an ack)"));
                return;
            }
            // The plugin acks handshake frames before handling them, and any other frame right
            // after handing it over; either way the ack goes out now.
            self.send_raw(plugin_ack(&f)).await;
            self.handle(f);
            self.expected += 1;
            while let Some(next) = self.buffered.remove(&self.expected) {
                // Acked when it arrived; not again.
                self.handle(next);
                self.expected += 1;
            }
        } else if seq > self.expected {
            self.send_raw(plugin_ack(&f)).await;
            self.buffered.insert(seq, f);
        }
        // seq < expected: a duplicate; the plugin ignores it and sends no ack.
    }

    fn handle(&mut self, f: Frame) {
        match f.payload_type {
            PayloadType::HANDSHAKE_REQUEST => self.handshake_request = Some(f),
            PayloadType::HANDSHAKE_COMPLETE => self.handshake_complete = Some(f),
            // The shell handler writes every stream payload to stdout, whatever its type.
            _ => self.output.extend_from_slice(&f.payload),
        }
    }

    /// README fact 1 / protocol.md §4.1, applied to Airlock's acks of the plugin's input.
    fn on_ack(&mut self, f: &Frame) {
        let v: Value = serde_json::from_slice(&f.payload).unwrap_or_else(|e| {
            panic!(
                "ack payload is not JSON ({e}): {}",
                String::from_utf8_lossy(&f.payload)
            )
        });
        let ty = v["AcknowledgedMessageType"].as_str().unwrap_or_default();
        let id = v["AcknowledgedMessageId"].as_str().unwrap_or_default();
        let seq = v["AcknowledgedMessageSequenceNumber"]
            .as_i64()
            .expect("AcknowledgedMessageSequenceNumber");
        self.note(format!("<- ack seq={seq} id={id}"));
        let exact = format!(
            r#"{{"AcknowledgedMessageType":"{ty}","AcknowledgedMessageId":"{id}","AcknowledgedMessageSequenceNumber":{seq},"IsSequentialMessage":true}}"#
        );
        assert_eq!(
            String::from_utf8_lossy(&f.payload),
            exact,
            "ack payload: keys, order and values must be exactly the plugin's"
        );
        assert_eq!(
            (f.sequence_number, f.flags, f.payload_type),
            (0, 3, PayloadType::NONE),
            "an ack is seq 0, Flags 3, PayloadType 0"
        );
        assert_eq!(ty, "input_stream_data", "Airlock acks the plugin's input");
        let sent = self
            .sent
            .get(&seq)
            .unwrap_or_else(|| panic!("ack of input seq {seq}, which the plugin never sent"));
        assert_eq!(
            id, sent.id,
            "ack of seq {seq}: AcknowledgedMessageId must be the acked frame's MessageId"
        );
        assert_ne!(
            f.message_id.hyphenated().to_string(),
            id,
            "an ack has a fresh MessageId"
        );
        assert!(
            self.ack_ids.insert(f.message_id),
            "two acks with one MessageId"
        );
        *self.acks.entry(seq).or_default() += 1;
    }

    /// Every input frame was acked once per copy sent (duplicates included), and no more.
    fn assert_acks_exact(&self) {
        for (seq, s) in &self.sent {
            let got = self.acks.get(seq).copied().unwrap_or(0);
            assert_eq!(
                got, s.copies,
                "input seq {seq} was sent {} time(s) and acked {got} time(s); every copy must be acked",
                s.copies
            );
        }
    }

    /// The plugin's half of the handshake (README fact 5): the request is acked on receipt
    /// (before the response), then the captured HandshakeResponse goes out, then the
    /// HandshakeComplete is acked.
    async fn handshake(&mut self, response: &CapInput) {
        self.pump_until(
            "the agent's HandshakeRequest",
            Duration::from_secs(20),
            |p| p.handshake_request.is_some(),
        )
        .await;
        let req = self.handshake_request.clone().unwrap();
        check_handshake_request(&req);
        assert_eq!(self.next_seq, 0);
        self.send_captured(response).await;
        self.pump_until("HandshakeComplete", Duration::from_secs(10), |p| {
            p.handshake_complete.is_some()
        })
        .await;
        let done = self.handshake_complete.clone().unwrap();
        assert_eq!(
            (done.sequence_number, done.flags),
            (1, 0),
            "HandshakeComplete is output seq 1"
        );
        let v: Value = serde_json::from_slice(&done.payload).expect("HandshakeComplete JSON");
        assert!(
            v["HandshakeTimeToComplete"]
                .as_i64()
                .is_some_and(|n| n >= 0),
            "HandshakeTimeToComplete must be an integer of nanoseconds: {v}"
        );
        assert_eq!(
            v["CustomerMessage"], "",
            "no CustomerMessage (the plugin would print it)"
        );
    }

    /// After the captured `exit` + Enter: waits for `channel_closed`, checks it, and drops the
    /// TCP connection without a close frame, as the plugin does (README fact 10).
    async fn expect_channel_closed(&mut self, session_id: &str) {
        self.pump_until("channel_closed", Duration::from_secs(20), |p| {
            p.channel_closed.is_some()
        })
        .await;
        let (raw, f) = self.channel_closed.clone().unwrap();
        assert_ne!(be_u64(&raw, 40), 0, "channel_closed CreatedDate");
        assert_eq!(
            (f.sequence_number, f.payload_type),
            (0, PayloadType::NONE),
            "channel_closed is seq 0, PayloadType 0"
        );
        let v: Value = serde_json::from_slice(&f.payload).expect("channel_closed JSON");
        assert_eq!(v["MessageType"], "channel_closed");
        assert_eq!(v["SessionId"], session_id);
        assert_eq!(v["SchemaVersion"], 1);
        assert_eq!(
            v["Output"], "",
            "Output must be empty so the plugin prints \"Exiting session with sessionId: …\""
        );
        assert!(v["MessageId"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(v["CreatedDate"].as_str().is_some_and(|s| !s.is_empty()));
        self.ws = None;
    }

    /// Checks shared by every scenario once the session is over.
    fn assert_common(&self) {
        eprintln!(
            "plugin view: {} stream frames (largest payload {}), {} byte-identical repeats, \
             {} inputs ({} copies) all acked, {} captured frames re-sequenced, dropped-output resend after {:?}",
            self.stream_frames,
            self.max_payload,
            self.repeats,
            self.sent.len(),
            self.sent.values().map(|s| s.copies).sum::<usize>(),
            self.rewritten,
            self.withheld_resent_after
        );
        self.assert_acks_exact();
        assert!(
            self.max_payload <= AWS_MAX_PAYLOAD,
            "largest payload {}",
            self.max_payload
        );
        assert!(
            self.buffered.is_empty(),
            "output frames never delivered in order: {:?}",
            self.buffered.keys().collect::<Vec<_>>()
        );
    }
}

enum Recv {
    Frame,
    Timeout,
    Closed(String),
}

/// The HandshakeRequest the plugin is given (protocol.md §5, §6.3, §12).
fn check_handshake_request(f: &Frame) {
    assert_eq!(
        (f.sequence_number, f.flags, f.payload_type),
        (0, 1, PayloadType::HANDSHAKE_REQUEST),
        "HandshakeRequest: output seq 0, Flags 1, PT 5"
    );
    let v: Value = serde_json::from_slice(&f.payload).expect("HandshakeRequest JSON");
    let version = v["AgentVersion"].as_str().expect("AgentVersion");
    let parts = version_parts(version).unwrap_or_else(|| {
        panic!(
            "AgentVersion {version:?} must have exactly 4 numeric parts, or the plugin's version gates fail"
        )
    });
    assert!(
        parts > SMUX_KEEPALIVE_OFF_GATE,
        "AgentVersion {version} must be greater than 3.1.1511.0"
    );
    let actions = v["RequestedClientActions"]
        .as_array()
        .expect("RequestedClientActions");
    assert_eq!(
        actions.len(),
        1,
        "only the SessionType action (no KMSEncryption without KMS): {v}"
    );
    assert_eq!(actions[0]["ActionType"], "SessionType");
    let params = &actions[0]["ActionParameters"];
    assert_eq!(params["SessionType"], "Standard_Stream");
    assert!(
        params
            .as_object()
            .is_some_and(|o| o.contains_key("Properties"))
            && params["Properties"].is_null(),
        "Properties must be null for a shell: {params}"
    );
}

// ---------------------------------------------------------------------------------------------
// The rig: a real server and agent, and the API calls the plugin (and the CLI) make
// ---------------------------------------------------------------------------------------------

struct Rig {
    server: TestServer,
    agent: TestAgent,
    api: ApiClient,
    grant: StreamGrant,
}

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("AIRLOCK_LOG"))
        .with_test_writer()
        .try_init();
}

impl Rig {
    async fn start() -> Rig {
        init_logging();
        let server = TestServer::start().await;
        let agent = server.agent().await;
        let api = server.api();
        // What `aws ssm start-session --target …` does (the first line of each shell capture).
        let grant = api
            .start_session(&json!({ "Target": agent.instance_id }))
            .await
            .expect("StartSession");
        assert!(grant.stream_url.starts_with("ws://127.0.0.1:"));
        Rig {
            server,
            agent,
            api,
            grant,
        }
    }

    /// The captured open text with only its TokenValue replaced.
    fn open_text(captured: &str, old_token: &str, token: &str) -> String {
        let from = format!(r#""TokenValue":"{old_token}""#);
        assert!(
            captured.contains(&from),
            "captured open text lacks {from}: {captured}"
        );
        captured.replace(&from, &format!(r#""TokenValue":"{token}""#))
    }

    /// DescribeSessions History lists the session as Terminated.
    async fn assert_terminated(&self) -> Value {
        let id = &self.grant.session_id;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self
                .api
                .call(
                    "AmazonSSM.DescribeSessions",
                    &json!({ "State": "History", "Filters": [{ "key": "SessionId", "value": id }] }),
                )
                .await
                .expect("DescribeSessions");
            let found = out["Sessions"]
                .as_array()
                .and_then(|a| a.iter().find(|s| s["SessionId"] == id.as_str()).cloned());
            if let Some(s) = found {
                assert_eq!(
                    s["Status"], "Terminated",
                    "the session must end Terminated: {s}"
                );
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "session {id} never appeared in DescribeSessions History"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        self.agent.stop().await;
        self.server.stop().await;
    }
}

async fn bounded(fut: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(SCENARIO_TIMEOUT, fut)
        .await
        .expect("the scenario must finish in time");
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// The captures are present and agree with the model this file uses for the plugin: every frame
/// in them passes `check_wire`; the plugin's data frames have Flags 0; `plugin_ack` rebuilds
/// every captured plugin ack byte for byte (MessageId and CreatedDate aside); the resends in
/// `shell-resend-duplicate` are exact copies; the resume re-dial keeps the ClientId.
#[test]
fn captures_agree_with_the_plugin_model() {
    let files = [
        "shell-nohandshake",
        "shell-handshake",
        "shell-resend-duplicate",
        "resume",
        "port-mux",
        "port-standard-stream",
        "port-basic-oldagent",
        "api-http",
    ];
    let mut acks_checked = 0;
    for name in files {
        let cap = Capture::load(name);
        let mut server_frames: HashMap<String, Frame> = HashMap::new();
        for r in cap.binaries("server->plugin") {
            let f = check_wire(&r.raw, &format!("{name}: server frame at {} ms", r.t_ms));
            server_frames.insert(f.message_id.hyphenated().to_string(), f);
        }
        for r in cap.binaries("plugin->server") {
            let f = check_wire(&r.raw, &format!("{name}: plugin frame at {} ms", r.t_ms));
            match f.message_type {
                MessageType::InputStreamData => {
                    assert_eq!(f.flags, 0, "{name}: plugin data frames have Flags 0")
                }
                MessageType::Acknowledge => {
                    let v: Value = serde_json::from_slice(&f.payload).unwrap();
                    let acked = &server_frames[v["AcknowledgedMessageId"].as_str().unwrap()];
                    let mut mine = decode(plugin_ack(acked), &DecodeOptions::default()).unwrap();
                    mine.message_id = f.message_id;
                    mine.created_date = f.created_date;
                    assert_eq!(
                        &mine.encode(true)[..],
                        &r.raw[..],
                        "{name}: plugin_ack differs from the plugin's ack at {} ms",
                        r.t_ms
                    );
                    acks_checked += 1;
                }
                other => panic!("{name}: unexpected plugin frame {other}"),
            }
        }
    }
    assert!(acks_checked > 50, "only {acks_checked} plugin acks checked");

    let dup = Capture::load("shell-resend-duplicate").inputs();
    let e: Vec<&CapInput> = dup.iter().filter(|c| c.seq == 1).collect();
    assert_eq!(e.len(), 3, "input seq 1 was sent three times");
    assert!(e.iter().all(|c| c.raw == e[0].raw && c.payload == b"e"));

    let hs = captured_handshake_response();
    assert_eq!(
        String::from_utf8_lossy(&hs.payload),
        r#"{"ClientVersion":"1.2.677.0","ProcessedClientActions":[{"ActionType":"SessionType","ActionStatus":1,"ActionResult":null,"Error":""}],"Errors":null}"#
    );

    let opens = Capture::load("resume").opens();
    assert_eq!(opens.len(), 2);
    let a: Value = serde_json::from_str(&opens[0]).unwrap();
    let b: Value = serde_json::from_str(&opens[1]).unwrap();
    assert_eq!(a["ClientId"], b["ClientId"]);
    assert_ne!(a["RequestId"], b["RequestId"]);
    assert_eq!(
        (a["TokenValue"].as_str(), b["TokenValue"].as_str()),
        (Some("dummy-token-value-1"), Some("dummy-token-value-2"))
    );
}

/// The wire check refuses what the plugin would drop or misread, so the live checks mean something.
#[test]
fn wire_check_refuses_what_the_plugin_drops() {
    let good = plugin_input(3, PayloadType::OUTPUT, b"ls\r");
    check_wire(&good, "good");
    type Damage = fn(&mut Vec<u8>);
    let broken: [(&str, Damage); 6] = [
        ("zero digest (digests negotiated off)", |v| {
            v[80..112].fill(0)
        }),
        ("PayloadLength off by one", |v| v[119] += 1),
        ("HeaderLength", |v| v[3] = 0),
        ("NUL-padded MessageType", |v| v[35] = 0),
        ("CreatedDate 0", |v| v[40..48].fill(0)),
        ("empty payload", |v| {
            v.truncate(120);
            v[116..120].fill(0);
        }),
    ];
    for (what, damage) in broken {
        let mut v = good.to_vec();
        damage(&mut v);
        assert!(
            wire_problem(&v).is_err(),
            "the wire check accepted a frame with {what}"
        );
    }
}

/// `shell-handshake`, replayed with no byte changed: HandshakeRequest (checked) acked before the
/// captured HandshakeResponse; HandshakeComplete acked; the first Output after it DROPPED without
/// an ack (README fact 6) and its byte-identical resend required within ~1 s; the captured Size;
/// `echo hi` typed a key at a time prints `hi`; Ctrl-C reaches the shell; `exit` + Enter ends
/// the session with `channel_closed` (Output "") and a Terminated session in History.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_handshake_replay() {
    bounded(async {
        let rig = Rig::start().await;
        let cap = Capture::load("shell-handshake");
        let inputs = cap.inputs();
        let opens = cap.opens();
        let payloads: Vec<&[u8]> = inputs.iter().map(|c| c.payload.as_slice()).collect();
        assert_eq!(payloads[1], br#"{"cols":100,"rows":30}"#);
        assert_eq!(payloads[2..10].concat(), b"echo hi\r");
        assert_eq!(payloads[10], b"\x03");
        assert_eq!(payloads[11..16].concat(), b"exit\r");
        assert_eq!(inputs.len(), 16);

        let mut p = Plugin::new();
        p.dial(
            &rig.grant.stream_url,
            Rig::open_text(&opens[0], "dummy-token-value-1", &rig.grant.token_value),
        )
        .await;
        p.withhold = true;
        p.handshake(&inputs[0]).await;
        p.replay(&inputs[1..2]).await; // Size {"cols":100,"rows":30}, input seq 1

        // README fact 6/7: the dropped Output must come again, byte for byte, within about a
        // second (Airlock's RTO is capped at 1 s, resends checked every 100 ms).
        p.pump_until(
            "the resend of the Output dropped after HandshakeComplete",
            Duration::from_secs(5),
            |p| p.withheld_resent_after.is_some(),
        )
        .await;
        assert_eq!(
            p.withheld.map(|(seq, _)| seq),
            Some(2),
            "the Output right after HandshakeComplete (seq 2) was the one dropped"
        );
        let after = p.withheld_resent_after.unwrap();
        assert!(
            after <= Duration::from_millis(1500),
            "the dropped Output was resent only after {after:?}"
        );
        p.settle().await;

        // The plugin's WebSocket keep-alive: a ping with payload `keepalive` (protocol.md §2.1,
        // §12 "answer pings").
        p.ws.as_mut()
            .unwrap()
            .send(Message::Ping(Bytes::from_static(b"keepalive")))
            .await
            .expect("send a ping");
        p.pump_until(
            "the pong to the plugin's ping",
            Duration::from_secs(5),
            |p| p.pongs.iter().any(|x| &x[..] == b"keepalive"),
        )
        .await;

        let mark = p.output.len();
        p.replay(&inputs[2..10]).await; // e c h o ␠ h i ⏎
        let out = p
            .wait_output(mark, "\rhi\r\n", Duration::from_secs(10))
            .await;
        assert!(out.contains("echo hi"), "the keystrokes echo: {out:?}");
        p.settle().await;

        let mark = p.output.len();
        p.replay(&inputs[10..11]).await; // Ctrl-C as PT 1 0x03
        p.wait_output(mark, "^C", Duration::from_secs(10)).await;
        p.settle().await;

        p.replay(&inputs[11..16]).await; // e x i t ⏎
        p.expect_channel_closed(&rig.grant.session_id).await;

        assert_eq!(p.rewritten, 0, "shell-handshake is replayed byte for byte");
        p.assert_common();
        rig.assert_terminated().await;
        rig.stop().await;
    })
    .await;
}

/// `shell-nohandshake`: Airlock always handshakes, so the plugin answers with its captured
/// HandshakeResponse and its captured frames follow with the next sequence numbers. The initial
/// Size (100x30) and the captured resize (120x40) reach the PTY (`stty size` typed the plugin's
/// way); `echo hi` prints `hi`; a large output arrives whole, in order, in frames of at most
/// 1024 bytes; the captured Ctrl-C interrupts a running `sleep` (status 130); `exit` ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_nohandshake_replay() {
    bounded(async {
        let rig = Rig::start().await;
        let cap = Capture::load("shell-nohandshake");
        let inputs = cap.inputs();
        let opens = cap.opens();
        assert_eq!(inputs.len(), 16);
        assert_eq!(inputs[0].payload, br#"{"cols":100,"rows":30}"#);
        assert_eq!(
            inputs[1..9]
                .iter()
                .flat_map(|c| c.payload.clone())
                .collect::<Vec<u8>>(),
            b"echo hi\r"
        );
        assert_eq!(inputs[9].payload, br#"{"cols":120,"rows":40}"#);
        assert_eq!(inputs[10].payload, b"\x03");

        let mut p = Plugin::new();
        p.dial(
            &rig.grant.stream_url,
            Rig::open_text(&opens[0], "dummy-token-value-1", &rig.grant.token_value),
        )
        .await;
        p.handshake(&captured_handshake_response()).await;
        p.replay(&inputs[0..1]).await; // Size 100x30
        p.settle().await;
        p.run("stty size", "30 100\r\n", Duration::from_secs(10))
            .await;
        p.settle().await;

        let mark = p.output.len();
        p.replay(&inputs[1..9]).await; // echo hi ⏎
        p.wait_output(mark, "\rhi\r\n", Duration::from_secs(10))
            .await;
        p.settle().await;

        p.replay(&inputs[9..10]).await; // the resize to 120x40
        p.pump_for(Duration::from_millis(200)).await;
        p.run("stty size", "40 120\r\n", Duration::from_secs(10))
            .await;
        p.settle().await;

        // Many full frames: every one at most 1024 bytes, the whole stream intact and in order.
        let frames_before = p.stream_frames;
        let out = p
            .run("seq 1 3000", &seq_block(3000), Duration::from_secs(30))
            .await;
        assert_eq!(count(&out, &seq_block(3000)), 1);
        assert!(
            p.stream_frames - frames_before >= 14,
            "3000 lines (13893 bytes) need at least 14 frames of 1024 bytes"
        );
        p.settle().await;

        // The captured Ctrl-C (PT 1, 0x03) interrupts the foreground job.
        p.type_keys("sleep 30\r").await;
        p.pump_for(Duration::from_millis(500)).await;
        let mark = p.output.len();
        p.replay(&inputs[10..11]).await;
        p.wait_output(mark, "^C", Duration::from_secs(10)).await;
        p.settle().await;
        p.run("echo rc=$?", "rc=130\r\n", Duration::from_secs(10))
            .await;
        p.settle().await;

        p.replay(&inputs[11..16]).await; // exit ⏎
        p.expect_channel_closed(&rig.grant.session_id).await;

        assert_eq!(
            p.rewritten, 16,
            "every captured frame took its place after the HandshakeResponse"
        );
        p.assert_common();
        rig.assert_terminated().await;
        rig.stop().await;
    })
    .await;
}

/// `shell-resend-duplicate`: the plugin's resends of input seq 1 (`e`), three byte-identical
/// copies interleaved with later keystrokes as captured. Airlock acks every copy (the plugin
/// keeps resending until it gets an ack) and the key reaches the shell once. The StreamUrl is
/// dialled with a raw `+/=` query parameter like AWS's `cell-number` (protocol.md §12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_resend_duplicate_replay() {
    bounded(async {
        let rig = Rig::start().await;
        let cap = Capture::load("shell-resend-duplicate");
        let inputs = cap.inputs();
        let opens = cap.opens();
        let order: Vec<i64> = inputs.iter().map(|c| c.seq).collect();
        assert_eq!(
            order,
            [0, 1, 2, 3, 4, 5, 1, 6, 1, 7, 8, 9, 10, 11, 12, 13, 14],
            "the captured order, with the two resends of seq 1"
        );

        let mut p = Plugin::new();
        p.dial(
            &format!("{}&cell-number=AAEAAf9+/w==", rig.grant.stream_url),
            Rig::open_text(&opens[0], "dummy-token-value-1", &rig.grant.token_value),
        )
        .await;
        p.handshake(&captured_handshake_response()).await;
        p.replay(&inputs[0..1]).await; // Size
        p.settle().await;

        let mark = p.output.len();
        p.replay(&inputs[1..11]).await; // e c h o ␠ e' h e'' i ⏎
        p.wait_output(mark, "\rhi\r\n", Duration::from_secs(10))
            .await;
        p.settle().await;
        let out = p.output_since(mark);
        assert!(
            out.contains("echo hi") && !out.contains("eecho") && !out.contains("not found"),
            "the resent `e` must reach the shell once: {out:?}"
        );
        assert_eq!(count(&out, "\rhi\r\n"), 1, "one `hi`: {out:?}");
        let e_seq = p.sent.iter().find(|(_, s)| s.copies == 3).map(|(k, _)| *k);
        assert_eq!(
            e_seq,
            Some(2),
            "the `e` (seq 1, now 2) went out three times"
        );
        assert_eq!(p.acks.get(&2), Some(&3), "each copy of the `e` is acked");

        // Beyond the capture: the Ctrl-C goes out twice back to back, as the plugin resends a
        // frame whose ack is late. Both copies are acked; the shell sees one interrupt.
        let mark = p.output.len();
        p.send_captured(&inputs[11]).await;
        p.send_captured(&inputs[11]).await;
        p.wait_output(mark, "^C", Duration::from_secs(10)).await;
        p.settle().await;
        assert_eq!(count(&p.output_since(mark), "^C"), 1, "one interrupt");
        assert_eq!(p.acks.get(&(p.next_seq - 1)), Some(&2), "both copies acked");
        p.replay(&inputs[12..17]).await; // exit ⏎
        p.expect_channel_closed(&rig.grant.session_id).await;

        assert_eq!(p.rewritten, 15);
        p.assert_common();
        rig.assert_terminated().await;
        rig.stop().await;
    })
    .await;
}

/// `resume`: mid-session (while a large output is streaming) the plugin's WebSocket closes with
/// 1000 "Bye"; the plugin calls ResumeSession, re-dials the ORIGINAL StreamUrl with the new token
/// and the same ClientId (its captured second OpenDataChannelInput), and carries on with its next
/// sequence numbers. Frames that reached the old socket after the close are discarded unseen.
/// The output continues with no loss and no duplication (duplicates are ignored by seq, as the
/// plugin does, and any retransmission must be byte-identical), and `exit` ends the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_bye() {
    bounded(async {
        let rig = Rig::start().await;
        let cap = Capture::load("resume");
        let inputs = cap.inputs();
        let opens = cap.opens();
        assert_eq!(opens.len(), 2);
        assert_eq!(inputs.len(), 14);
        assert_eq!(inputs[9].seq, 9, "the first input on the new connection");

        let mut p = Plugin::new();
        p.dial(
            &rig.grant.stream_url,
            Rig::open_text(&opens[0], "dummy-token-value-1", &rig.grant.token_value),
        )
        .await;
        p.handshake(&captured_handshake_response()).await;
        p.replay(&inputs[0..1]).await; // Size
        p.settle().await;
        let mark = p.output.len();
        p.replay(&inputs[1..9]).await; // echo hi ⏎
        p.wait_output(mark, "\rhi\r\n", Duration::from_secs(10))
            .await;
        p.settle().await;

        // Start a large output and close while it streams.
        const LINES: u32 = 20000;
        let mark = p.output.len();
        p.type_keys(&format!("seq 1 {LINES}")).await;
        // Enter, then close as soon as the first lines are in: the rest is still on its way.
        let enter = plugin_input(p.next_seq, PayloadType::OUTPUT, b"\r");
        p.next_seq += 1;
        p.send_input(enter).await;
        p.pump_until("the output to start streaming", Duration::from_secs(10), |p| {
            p.all_acked() && p.output_since(mark).contains("\n10\r\n")
        })
        .await;
        let mut ws = p.ws.take().unwrap();
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "Bye".into(),
        })))
        .await
        .expect("send close 1000 Bye");
        let mut discarded = 0usize;
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while let Some(Ok(m)) = ws.next().await {
                if matches!(m, Message::Binary(_)) {
                    discarded += 1;
                }
            }
        })
        .await;
        drop(ws);
        let expected_at_close = p.expected;
        eprintln!(
            "resume: closed at output seq {expected_at_close} ({} of {} bytes seen), {discarded} frame(s) discarded after the close",
            p.output.len() - mark,
            seq_block(LINES).len()
        );
        p.note(format!(
            "closed 1000 Bye; {discarded} frame(s) discarded after the close; expected {expected_at_close}"
        ));

        // The plugin's ResumeSession (it ignores the StreamUrl in the answer).
        let resumed = rig
            .api
            .resume_session(&rig.grant.session_id)
            .await
            .expect("ResumeSession");
        assert_eq!(resumed.session_id, rig.grant.session_id);
        assert_ne!(resumed.token_value, rig.grant.token_value);
        // A slower re-dial than the plugin's: whatever the shell prints meanwhile must wait.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let second_open = Rig::open_text(&opens[1], "dummy-token-value-2", &resumed.token_value);
        p.dial(&rig.grant.stream_url, second_open).await;

        let block = seq_block(LINES);
        p.wait_output(mark, &block, Duration::from_secs(60)).await;
        p.settle().await;
        let out = p.output_since(mark);
        assert_eq!(count(&out, &block), 1, "the output is whole and not repeated");
        assert!(
            p.conn_seqs.iter().all(|&s| s > 0) && !p.conn_seqs.is_empty(),
            "sequence numbers carry on over the new connection (no new stream from seq 0): {:?}",
            &p.conn_seqs[..p.conn_seqs.len().min(20)]
        );
        assert!(
            p.expected > expected_at_close,
            "the output continued on the new connection"
        );

        // The captured `exit` ⏎, typed over the new connection with the next sequence numbers.
        let next = p.next_seq;
        p.replay(&inputs[9..14]).await;
        assert_eq!(p.next_seq, next + 5);
        p.expect_channel_closed(&rig.grant.session_id).await;

        p.assert_common();
        rig.assert_terminated().await;
        rig.stop().await;
    })
    .await;
}
