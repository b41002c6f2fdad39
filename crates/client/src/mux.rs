//! The multiplexing engine of port sessions: many TCP connections over one session's byte
//! stream, shared by Airlock's client (which opens streams for local connections) and agent
//! (which accepts them and dials the target for each).
//!
//! The engine speaks either wire format of [`airlock_proto::mux`]: smux v1 with the AWS plugin
//! and agent, or Airlock's mux with per-stream credit between Airlock peers. It talks to the
//! session's data-channel pump through two queues only: the Output payloads received, in
//! order ([`Bytes`]), and what to send ([`MuxOut`]). So it knows nothing of WebSockets or
//! sequence numbers, and the same code serves both ends.
//!
//! Each stream runs in its own task that owns the socket: a reader half that sends what the
//! socket yields (within the stream's credit) and a writer half that writes what the peer
//! sent. The engine never waits on a stream: data for a stream is queued to its writer at once
//! (the credit window bounds that queue), so one slow stream never stalls the session, and the
//! engine never stops taking input, so the pump feeding it cannot deadlock against it. smux v1
//! has no credit: there a stream whose local side stops reading is cut off once
//! [`SMUX_STREAM_LIMIT`] bytes wait for it, instead of stalling every stream as smux would.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use airlock_proto::mux::{self, MuxDecoder, MuxError, MuxFrame, MuxKind};
use airlock_proto::Flag;

/// smux v1: most bytes queued for one stream's local socket before the stream is cut off.
pub const SMUX_STREAM_LIMIT: usize = 16 * 1024 * 1024;
/// How long the agent tries to connect to the target of a stream.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Airlock: the largest window a stream grows to (see [`MuxConfig::max_window`]). A single
/// stream on loopback needs about this much in flight to keep three processes busy; a stream
/// whose local reader is slow never grows past the window it started with.
pub const MAX_WINDOW: u32 = 16 * 1024 * 1024;
/// Bytes waiting for the pump beyond which the engine stops reading its streams' sockets.
const OUTQ_LIMIT: usize = 1024 * 1024;
/// Items smaller than this are packed together into one payload (many small frames would
/// otherwise cost a data-channel frame and an ack each).
const COALESCE_BELOW: usize = 16 * 1024;
/// Queue from stream tasks to the engine.
const UP_QUEUE: usize = 64;

/// Which end of the multiplexed session this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MuxRole {
    /// Opens a stream per local connection (odd ids from 3, as smux clients do).
    Client,
    /// Accepts streams and dials the target for each (the agent).
    Server,
}

/// Settings of one multiplexed session.
#[derive(Clone, Debug)]
pub struct MuxConfig {
    /// Wire format.
    pub kind: MuxKind,
    /// Which end.
    pub role: MuxRole,
    /// Largest DATA body sent (capped by the format: 32 KiB for smux).
    pub max_frame: usize,
    /// Airlock: the credit each side grants a stream at first, in bytes (both ends assume it).
    pub window: u32,
    /// Airlock: the most credit a stream's window grows to while its local side keeps up
    /// (receive-window autotuning, as TCP does); at most `window` means no growth.
    pub max_window: u32,
    /// smux: send a NOP this often (protocol.md §8.2 keep-alive rules); `None` = never.
    pub keepalive: Option<Duration>,
    /// Most streams open at once; more are refused.
    pub max_streams: usize,
    /// Largest payload handed to the pump (the channel's negotiated payload size).
    pub max_payload: usize,
    /// Server role: where each stream connects (host name or address, port).
    pub target: Option<(String, u16)>,
    /// Server role: how a stream's target is connected; `None` is [`dial_target`]. The agent
    /// puts its destination rules here, so every stream is checked on the address it really
    /// connects to.
    pub dialer: Option<Dialer>,
}

/// The future a [`Dialer`] returns: the connected socket, or why not in words (sent to the
/// peer as the stream's reset reason and kept in its [`StreamReport`]).
pub type DialFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<TcpStream, String>> + Send>>;

/// Connects server-role streams to their target in place of [`dial_target`] (the agent's
/// destination rules), so the engine need not know what is allowed.
#[derive(Clone)]
pub struct Dialer(pub Arc<dyn Fn(String, u16) -> DialFuture + Send + Sync>);

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dialer(..)")
    }
}

impl MuxConfig {
    /// Settings for `kind` and `role` with Airlock's defaults; set `target` for a server.
    pub fn new(kind: MuxKind, role: MuxRole, max_payload: usize, window: u32) -> Self {
        let max_frame = match kind {
            MuxKind::Smux1 => mux::SMUX_FRAME_SIZE,
            MuxKind::Airlock => max_payload
                .saturating_sub(mux::AIRLOCK_HEADER_LEN)
                .max(1024),
        };
        MuxConfig {
            kind,
            role,
            max_frame,
            window,
            max_window: window.max(MAX_WINDOW),
            keepalive: None,
            max_streams: 4096,
            max_payload: max_payload.max(1024),
            target: None,
            dialer: None,
        }
    }
}

/// What the engine asks the pump to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MuxOut {
    /// Bytes of the multiplexed stream (PayloadType Output).
    Data(Bytes),
    /// A Flag payload (`ConnectToPortError` for a failed dial under smux v1).
    Flag(Flag),
}

/// Live counters of a multiplexed session, updated by its streams as bytes move.
#[derive(Debug, Default)]
pub struct MuxStats {
    /// Streams open now.
    pub open: AtomicU64,
    /// Streams opened so far.
    pub total: AtomicU64,
    /// Streams that ended in an error (refused dial, reset).
    pub failed: AtomicU64,
    /// Bytes read from local sockets and sent to the peer.
    pub sent: AtomicU64,
    /// Bytes received from the peer and written to local sockets.
    pub received: AtomicU64,
}

/// How one stream went, reported when it ends (the audit record of a forwarded connection).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamReport {
    /// Stream id within the session.
    pub stream: u32,
    /// Server role: the target dialled, `host:port`; client role: the local peer's address.
    pub destination: String,
    /// Bytes read from the local socket and sent to the peer.
    pub sent: u64,
    /// Bytes from the peer written to the local socket.
    pub received: u64,
    /// When the stream was opened.
    pub opened_at: SystemTime,
    /// How long it lasted.
    pub duration: Duration,
    /// How it ended, in words: `closed`, `connect failed: …`, `reset by peer: …`, `session ended`.
    pub end: String,
    /// Whether that end was an error.
    pub failed: bool,
    /// The peer's own reason when the peer reset the stream (for the client: why the agent
    /// could not reach or keep the destination), kept apart from `end` so callers need not
    /// parse words.
    pub peer_reason: Option<String>,
}

/// Hooks through which the engine reports to its owner.
#[derive(Clone, Debug, Default)]
pub struct MuxHooks {
    /// Counters, shared with e.g. a progress display.
    pub stats: Arc<MuxStats>,
    /// Receives a [`StreamReport`] per finished stream (dropped if the queue is full).
    pub reports: Option<mpsc::Sender<StreamReport>>,
}

/// Credit a stream's reader may still send (Airlock); effectively unlimited under smux.
#[derive(Debug)]
struct Credit {
    avail: AtomicI64,
    notify: Notify,
}

impl Credit {
    fn new(initial: i64) -> Arc<Credit> {
        Arc::new(Credit {
            avail: AtomicI64::new(initial),
            notify: Notify::new(),
        })
    }

    /// Adds credit the peer granted. Saturating: a peer sending WINDOW frames without end
    /// must not wrap the count negative (which would stall the stream for good).
    fn add(&self, n: u32) {
        let _ = self
            .avail
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                Some(a.saturating_add(i64::from(n)))
            });
        self.notify.notify_one();
    }

    async fn wait(&self) -> usize {
        loop {
            let a = self.avail.load(Ordering::Acquire);
            if a > 0 {
                return usize::try_from(a).unwrap_or(usize::MAX);
            }
            let n = self.notify.notified();
            if self.avail.load(Ordering::Acquire) > 0 {
                continue;
            }
            n.await;
        }
    }

    fn take(&self, n: usize) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let _ = self
            .avail
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                Some(a.saturating_sub(n))
            });
    }
}

/// From the engine to a stream's writer half.
#[derive(Debug)]
enum Down {
    Data(Bytes),
    Fin,
    Reset(String),
}

/// From a stream task to the engine, in the order things happened on that stream.
#[derive(Debug)]
enum Up {
    /// Data read, with `header_len` bytes reserved in front for the frame header.
    Data(u32, BytesMut),
    /// The local socket reached end of file.
    Fin(u32),
    /// The stream broke locally (socket error); tell the peer.
    Reset(u32, String),
    /// Server role: the target could not be reached.
    DialFailed(u32, String),
    /// The task is done; forget the stream.
    Closed(u32),
}

/// The engine's view of a stream.
struct Entry {
    down: mpsc::UnboundedSender<Down>,
    credit: Arc<Credit>,
    /// Bytes queued to the writer and not yet written.
    queued: Arc<AtomicUsize>,
    /// Bytes written out and not yet returned to the peer as credit.
    unreturned: u64,
    /// The window granted to the peer for this stream so far (grows while it keeps up).
    window: u64,
    /// We sent FIN or RESET: no more data goes out for it.
    local_done: bool,
    /// Reset either way: nothing at all goes out for it any more (not even credit, which a
    /// half-closed stream still grants for the other direction).
    reset: bool,
}

/// Shared with stream tasks.
struct Shared {
    kind: MuxKind,
    max_frame: usize,
    up: mpsc::Sender<Up>,
    consumed: mpsc::UnboundedSender<(u32, usize)>,
    hooks: MuxHooks,
    cancel: CancellationToken,
    dialer: Option<Dialer>,
}

/// What the engine takes from its inbound queue: the session's received stream bytes, or
/// something else to skip (so a pump's own item type can feed the engine without a task in
/// between to convert it).
pub trait MuxInput: Send + 'static {
    /// The multiplexed bytes this item carries, if any.
    fn into_mux_bytes(self) -> Option<Bytes>;
}

impl MuxInput for Bytes {
    fn into_mux_bytes(self) -> Option<Bytes> {
        Some(self)
    }
}

/// Runs a multiplexed session until `inbound` closes (the session ended), `cancel` fires, or
/// the peer breaks the protocol. Client role: each socket from `incoming` becomes a stream.
/// Server role: each stream the peer opens is connected to `config.target`. On return every
/// stream task has ended and every socket is closed.
pub async fn run<I: MuxInput, O: From<MuxOut> + Send + 'static>(
    config: MuxConfig,
    mut inbound: mpsc::Receiver<I>,
    outbound: mpsc::Sender<O>,
    mut incoming: Option<mpsc::Receiver<TcpStream>>,
    hooks: MuxHooks,
    cancel: CancellationToken,
) -> Result<(), MuxError> {
    let kind = config.kind;
    let max_frame = config.max_frame.clamp(1, kind.max_body());
    let (up_tx, mut up_rx) = mpsc::channel::<Up>(UP_QUEUE);
    let (consumed_tx, mut consumed_rx) = mpsc::unbounded_channel::<(u32, usize)>();
    let tasks = TaskTracker::new();
    let streams_cancel = cancel.child_token();
    let shared = Arc::new(Shared {
        kind,
        max_frame,
        up: up_tx,
        consumed: consumed_tx,
        hooks,
        cancel: streams_cancel.clone(),
        dialer: config.dialer.clone(),
    });
    let mut engine = Engine {
        config,
        decoder: MuxDecoder::new(kind, max_frame.max(mux::SMUX_MAX_DATA)),
        streams: HashMap::new(),
        outq: VecDeque::new(),
        outq_bytes: 0,
        next_id: 3,
        shared: shared.clone(),
        tasks: tasks.clone(),
        frames: Vec::new(),
    };
    let mut keepalive = engine.config.keepalive.map(|d| {
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let result = loop {
        let room = engine.outq_bytes < OUTQ_LIMIT;
        let can_accept = engine.streams.len() < engine.config.max_streams;
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            m = inbound.recv() => match m {
                Some(item) => {
                    if let Some(b) = item.into_mux_bytes() {
                        if let Err(e) = engine.on_input(b) {
                            break Err(e);
                        }
                    }
                }
                None => break Ok(()),
            },
            Some((id, n)) = consumed_rx.recv() => engine.on_consumed(id, n),
            permit = outbound.reserve(), if !engine.outq.is_empty() => match permit {
                Ok(p) => {
                    if let Some(item) = engine.next_out() {
                        p.send(O::from(item));
                    }
                }
                Err(_) => break Ok(()),
            },
            Some(ev) = up_rx.recv(), if room => engine.on_up(ev),
            s = recv_opt(&mut incoming), if can_accept => match s {
                Some(sock) => engine.open_local(sock),
                None => incoming = None,
            },
            _ = tick_opt(&mut keepalive) => engine.push_frame(&MuxFrame::Nop { stream: 0 }),
        }
    };
    // Flush what is queued (FINs, RESETs) if the pump still listens, then stop every stream.
    while let Some(item) = engine.next_out() {
        if outbound.try_send(O::from(item)).is_err() {
            break;
        }
    }
    streams_cancel.cancel();
    engine.streams.clear();
    drop(engine);
    tasks.close();
    // Stream tasks hold the up sender; keep draining so none blocks on a full queue.
    let wait = tasks.wait();
    tokio::pin!(wait);
    loop {
        tokio::select! {
            _ = &mut wait => break,
            _ = up_rx.recv() => {}
        }
    }
    result
}

async fn recv_opt(rx: &mut Option<mpsc::Receiver<TcpStream>>) -> Option<TcpStream> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn tick_opt(i: &mut Option<tokio::time::Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

enum OutItem {
    Bytes(Bytes),
    Flag(Flag),
}

struct Engine {
    config: MuxConfig,
    decoder: MuxDecoder,
    streams: HashMap<u32, Entry>,
    outq: VecDeque<OutItem>,
    outq_bytes: usize,
    next_id: u32,
    shared: Arc<Shared>,
    tasks: TaskTracker,
    frames: Vec<MuxFrame>,
}

impl Engine {
    fn push_bytes(&mut self, b: Bytes) {
        self.outq_bytes += b.len();
        self.outq.push_back(OutItem::Bytes(b));
    }

    fn push_frame(&mut self, f: &MuxFrame) {
        match mux::encode(self.config.kind, f) {
            Ok(b) => self.push_bytes(b),
            Err(e) => tracing::debug!("not sending {f:?}: {e}"),
        }
    }

    /// The next payload for the pump: one item, or several small ones packed together.
    fn next_out(&mut self) -> Option<MuxOut> {
        let first = self.outq.pop_front()?;
        let first = match first {
            OutItem::Flag(f) => return Some(MuxOut::Flag(f)),
            OutItem::Bytes(b) => b,
        };
        self.outq_bytes -= first.len();
        let max = self.config.max_payload;
        let small = |b: &Bytes| b.len() < COALESCE_BELOW;
        let next_fits = |q: &VecDeque<OutItem>, len: usize| matches!(q.front(), Some(OutItem::Bytes(n)) if small(n) && len + n.len() <= max);
        if !small(&first) || !next_fits(&self.outq, first.len()) {
            return Some(MuxOut::Data(first));
        }
        let mut packed = BytesMut::with_capacity(max.min(first.len() * 4));
        packed.extend_from_slice(&first);
        while next_fits(&self.outq, packed.len()) {
            if let Some(OutItem::Bytes(n)) = self.outq.pop_front() {
                self.outq_bytes -= n.len();
                packed.extend_from_slice(&n);
            }
        }
        Some(MuxOut::Data(packed.freeze()))
    }

    fn on_input(&mut self, b: Bytes) -> Result<(), MuxError> {
        let mut frames = std::mem::take(&mut self.frames);
        let r = self.decoder.decode(b, &mut frames);
        for f in frames.drain(..) {
            self.on_frame(f);
        }
        self.frames = frames;
        r
    }

    fn on_frame(&mut self, f: MuxFrame) {
        match f {
            MuxFrame::Open { stream } => {
                if self.config.role != MuxRole::Server || self.streams.contains_key(&stream) {
                    return;
                }
                if self.streams.len() >= self.config.max_streams {
                    self.refuse(stream, "too many streams open on this session");
                    return;
                }
                let Some((host, port)) = self.config.target.clone() else {
                    self.refuse(stream, "this session has no target");
                    return;
                };
                let entry = self.spawn(stream, Origin::Dial(host, port));
                self.streams.insert(stream, entry);
            }
            MuxFrame::Data { stream, data } => {
                if data.is_empty() {
                    return;
                }
                let smux = self.config.kind == MuxKind::Smux1;
                let Some(e) = self.streams.get_mut(&stream) else {
                    return;
                };
                let window = e.window;
                let len = data.len();
                let queued = e.queued.load(Ordering::Acquire).saturating_add(len);
                if smux && queued > SMUX_STREAM_LIMIT {
                    self.reset(stream, "the local side stopped reading");
                    return;
                }
                if !smux && queued as u64 > window.saturating_mul(2).max(1 << 20) {
                    // The peer ignores our credit: cut this stream off, not the session.
                    self.reset(stream, "the peer overran the stream's window");
                    return;
                }
                e.queued.fetch_add(len, Ordering::AcqRel);
                if e.down.send(Down::Data(data)).is_err() {
                    // The writer is gone; give back what it will never write.
                    e.queued.fetch_sub(len, Ordering::AcqRel);
                }
            }
            MuxFrame::Fin { stream } => {
                if let Some(e) = self.streams.get(&stream) {
                    let _ = e.down.send(Down::Fin);
                }
            }
            MuxFrame::Reset { stream, reason } => {
                if let Some(e) = self.streams.get_mut(&stream) {
                    e.local_done = true;
                    e.reset = true;
                    let _ = e.down.send(Down::Reset(reason));
                }
            }
            MuxFrame::Window { stream, credit } => {
                if let Some(e) = self.streams.get(&stream) {
                    e.credit.add(credit);
                }
            }
            MuxFrame::Nop { .. } => {}
        }
    }

    /// Refuses a stream the peer opened, without a task.
    fn refuse(&mut self, stream: u32, why: &str) {
        tracing::warn!(stream, "refusing a stream: {why}");
        match self.config.kind {
            MuxKind::Airlock => self.push_frame(&MuxFrame::Reset {
                stream,
                reason: why.to_owned(),
            }),
            MuxKind::Smux1 => self.push_frame(&MuxFrame::Fin { stream }),
        }
    }

    /// Aborts a live stream both ways.
    fn reset(&mut self, stream: u32, why: &str) {
        if let Some(e) = self.streams.get_mut(&stream) {
            let _ = e.down.send(Down::Reset(why.to_owned()));
            e.reset = true;
            if !e.local_done {
                e.local_done = true;
                self.refuse(stream, why);
            }
        }
    }

    fn on_consumed(&mut self, id: u32, n: usize) {
        if self.config.kind != MuxKind::Airlock {
            return;
        }
        let max_window = u64::from(self.config.max_window);
        let Some(e) = self.streams.get_mut(&id) else {
            return;
        };
        e.unreturned += n as u64;
        // Autotuning: when the local side has written everything that came (nothing queued
        // behind this write), the window, not the reader, limits the stream; grant the bytes
        // just written once more on top, so the window doubles per round trip up to the cap.
        if e.window < max_window && e.queued.load(Ordering::Acquire) == 0 {
            let grow = (n as u64).min(max_window - e.window);
            e.window += grow;
            e.unreturned += grow;
        }
        let threshold = (e.window / 4).max(1);
        if e.unreturned >= threshold && !e.reset {
            let credit = u32::try_from(e.unreturned).unwrap_or(u32::MAX);
            e.unreturned -= u64::from(credit);
            self.push_frame(&MuxFrame::Window { stream: id, credit });
        }
    }

    fn on_up(&mut self, ev: Up) {
        match ev {
            Up::Data(id, mut buf) => {
                let open = self.streams.get(&id).is_some_and(|e| !e.local_done);
                if !open {
                    return;
                }
                if let Err(e) = mux::write_data_header(self.config.kind, id, &mut buf) {
                    tracing::debug!(stream = id, "dropping a read: {e}");
                    return;
                }
                self.push_bytes(buf.freeze());
            }
            Up::Fin(id) => {
                if let Some(e) = self.streams.get_mut(&id) {
                    if !e.local_done {
                        e.local_done = true;
                        self.push_frame(&MuxFrame::Fin { stream: id });
                    }
                }
            }
            Up::Reset(id, why) => {
                if let Some(e) = self.streams.get_mut(&id) {
                    e.reset = true;
                    if !e.local_done {
                        e.local_done = true;
                        self.refuse(id, &why);
                    }
                }
            }
            Up::DialFailed(id, why) => {
                if let Some(e) = self.streams.get_mut(&id) {
                    e.local_done = true;
                    e.reset = true;
                }
                match self.config.kind {
                    MuxKind::Airlock => self.push_frame(&MuxFrame::Reset {
                        stream: id,
                        reason: why,
                    }),
                    MuxKind::Smux1 => {
                        // What the AWS agent does: the flag (the plugin prints a message), then FIN.
                        self.outq.push_back(OutItem::Flag(Flag::ConnectToPortError));
                        self.push_frame(&MuxFrame::Fin { stream: id });
                    }
                }
            }
            Up::Closed(id) => {
                if let Some(e) = self.streams.remove(&id) {
                    if !e.local_done {
                        self.push_frame(&MuxFrame::Fin { stream: id });
                    }
                }
            }
        }
    }

    /// Client role: a new local connection becomes a stream.
    fn open_local(&mut self, sock: TcpStream) {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(2);
        self.push_frame(&MuxFrame::Open { stream: id });
        let entry = self.spawn(id, Origin::Local(sock));
        self.streams.insert(id, entry);
    }

    fn spawn(&mut self, id: u32, origin: Origin) -> Entry {
        let (down_tx, down_rx) = mpsc::unbounded_channel();
        let initial = match self.config.kind {
            MuxKind::Airlock => i64::from(self.config.window),
            MuxKind::Smux1 => i64::MAX / 2,
        };
        let credit = Credit::new(initial);
        let queued = Arc::new(AtomicUsize::new(0));
        let st = StreamTask {
            id,
            shared: self.shared.clone(),
            credit: credit.clone(),
            queued: queued.clone(),
        };
        self.tasks.spawn(st.run(origin, down_rx));
        Entry {
            down: down_tx,
            credit,
            queued,
            unreturned: 0,
            window: u64::from(self.config.window),
            local_done: false,
            reset: false,
        }
    }
}

/// Where a stream's socket comes from.
enum Origin {
    Local(TcpStream),
    Dial(String, u16),
}

/// Resolves (through [`crate::resolve`]: shared, briefly cached, bounded lookups) and connects,
/// trying every address; `localhost` goes straight to the loopback addresses without a
/// resolver round trip.
pub async fn dial(host: &str, port: u16) -> std::io::Result<TcpStream> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = if host.is_empty() || host.eq_ignore_ascii_case("localhost") {
        vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
        ]
    } else if let Ok(ip) = literal.parse::<IpAddr>() {
        vec![SocketAddr::new(ip, port)]
    } else {
        crate::resolve::lookup(host)
            .await?
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect()
    };
    let mut last = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{host} has no address"),
    );
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Connects to the target of a stream with [`DIAL_TIMEOUT`], describing failures for people.
pub async fn dial_target(host: &str, port: u16) -> Result<TcpStream, String> {
    let shown = display_target(host, port);
    match tokio::time::timeout(DIAL_TIMEOUT, dial(host, port)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(format!("cannot connect to {shown}: {}", describe_io(&e))),
        Err(_) => Err(format!(
            "cannot connect to {shown}: no answer within {} s",
            DIAL_TIMEOUT.as_secs()
        )),
    }
}

/// `host:port`, with brackets around IPv6 addresses.
pub fn display_target(host: &str, port: u16) -> String {
    let host = if host.is_empty() { "localhost" } else { host };
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// An I/O error in words, without the `(os error N)` noise.
pub fn describe_io(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => text.get(..i).unwrap_or(&text).to_owned(),
        None => text,
    };
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => {
            "connection refused (nothing listens on that port)".into()
        }
        _ if text.contains("failed to lookup address")
            || text.contains("Name or service not known") =>
        {
            "unknown host (the name does not resolve)".into()
        }
        _ => text,
    }
}

struct StreamTask {
    id: u32,
    shared: Arc<Shared>,
    credit: Arc<Credit>,
    queued: Arc<AtomicUsize>,
}

/// How the two halves of a stream ended.
#[derive(Debug)]
enum HalfEnd {
    /// Read: the local socket reached EOF (FIN sent). Write: the peer sent FIN.
    Fin,
    /// Reset by the peer, with its reason.
    PeerReset(String),
    /// A local socket error.
    Error(String),
    /// The session is ending.
    Cancelled,
}

impl StreamTask {
    async fn run(self, origin: Origin, down: mpsc::UnboundedReceiver<Down>) {
        let opened_at = SystemTime::now();
        let started = Instant::now();
        let stats = self.shared.hooks.stats.clone();
        stats.open.fetch_add(1, Ordering::Relaxed);
        stats.total.fetch_add(1, Ordering::Relaxed);
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let (sock, destination) = match origin {
            Origin::Local(s) => {
                let peer = s
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "local".into());
                (Ok(s), peer)
            }
            Origin::Dial(host, port) => {
                let shown = display_target(&host, port);
                let dial: DialFuture = match &self.shared.dialer {
                    Some(d) => (d.0)(host, port),
                    None => Box::pin(async move { dial_target(&host, port).await }),
                };
                let r = tokio::select! {
                    r = dial => r,
                    _ = self.shared.cancel.cancelled() => Err("session ended".to_owned()),
                };
                (r, shown)
            }
        };
        let end_failed = match sock {
            Err(why) => {
                let _ = self
                    .shared
                    .up
                    .send(Up::DialFailed(self.id, why.clone()))
                    .await;
                (why, true, None)
            }
            Ok(sock) => self.relay(sock, down, &sent, &received).await,
        };
        let (end, failed, peer_reason) = end_failed;
        let _ = self.shared.up.send(Up::Closed(self.id)).await;
        stats.open.fetch_sub(1, Ordering::Relaxed);
        if failed {
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        let report = StreamReport {
            stream: self.id,
            destination,
            sent: sent.load(Ordering::Relaxed),
            received: received.load(Ordering::Relaxed),
            opened_at,
            duration: started.elapsed(),
            end,
            failed,
            peer_reason,
        };
        tracing::debug!(?report, "stream ended");
        if let Some(r) = &self.shared.hooks.reports {
            let _ = r.try_send(report);
        }
    }

    /// Moves bytes both ways until the stream is over; returns how it ended.
    async fn relay(
        &self,
        sock: TcpStream,
        mut down: mpsc::UnboundedReceiver<Down>,
        sent: &AtomicU64,
        received: &AtomicU64,
    ) -> (String, bool, Option<String>) {
        let _ = sock.set_nodelay(true);
        let (mut rd, mut wr) = sock.into_split();
        let smux = self.shared.kind == MuxKind::Smux1;
        let read_half = async {
            let hl = self.shared.kind.header_len();
            // One allocation, reused: each read is split off, and once the frames made of
            // earlier reads are sent and dropped, `reserve` takes the same memory back.
            let mut buf = BytesMut::new();
            loop {
                let credit = self.credit.wait().await;
                let want = credit.min(self.shared.max_frame);
                buf.reserve(hl + want);
                buf.resize(hl, 0);
                let mut limited = (&mut rd).take(want as u64);
                match limited.read_buf(&mut buf).await {
                    Ok(0) => {
                        let _ = self.shared.up.send(Up::Fin(self.id)).await;
                        return HalfEnd::Fin;
                    }
                    Ok(n) => {
                        self.credit.take(n);
                        sent.fetch_add(n as u64, Ordering::Relaxed);
                        self.shared
                            .hooks
                            .stats
                            .sent
                            .fetch_add(n as u64, Ordering::Relaxed);
                        let chunk = buf.split();
                        if self.shared.up.send(Up::Data(self.id, chunk)).await.is_err() {
                            return HalfEnd::Cancelled;
                        }
                    }
                    Err(e) => {
                        let why = describe_io(&e);
                        let _ = self.shared.up.send(Up::Reset(self.id, why.clone())).await;
                        return HalfEnd::Error(why);
                    }
                }
            }
        };
        let write_half = async {
            while let Some(m) = down.recv().await {
                match m {
                    Down::Data(b) => {
                        let n = b.len();
                        let r = wr.write_all(&b).await;
                        self.queued.fetch_sub(n, Ordering::AcqRel);
                        if let Err(e) = r {
                            let why = describe_io(&e);
                            let _ = self.shared.up.send(Up::Reset(self.id, why.clone())).await;
                            return HalfEnd::Error(why);
                        }
                        received.fetch_add(n as u64, Ordering::Relaxed);
                        self.shared
                            .hooks
                            .stats
                            .received
                            .fetch_add(n as u64, Ordering::Relaxed);
                        let _ = self.shared.consumed.send((self.id, n));
                    }
                    Down::Fin => {
                        let _ = wr.shutdown().await;
                        return HalfEnd::Fin;
                    }
                    Down::Reset(why) => return HalfEnd::PeerReset(why),
                }
            }
            HalfEnd::Cancelled
        };
        tokio::pin!(read_half);
        tokio::pin!(write_half);
        let mut read_end: Option<HalfEnd> = None;
        let mut write_end: Option<HalfEnd> = None;
        let mut cancelled = false;
        loop {
            // smux: FIN either way ends the whole stream (the AWS behaviour); Airlock: a
            // stream ends when both halves are closed, or at once on an error or reset.
            let over = match (&read_end, &write_end) {
                (Some(HalfEnd::Fin), Some(HalfEnd::Fin)) => true,
                (Some(HalfEnd::Fin), None) | (None, Some(HalfEnd::Fin)) => smux,
                (None, None) => false,
                _ => true,
            };
            if over || cancelled {
                break;
            }
            tokio::select! {
                r = &mut read_half, if read_end.is_none() => read_end = Some(r),
                w = &mut write_half, if write_end.is_none() => write_end = Some(w),
                _ = self.shared.cancel.cancelled() => cancelled = true,
            }
        }
        if cancelled {
            return ("session ended".into(), false, None);
        }
        match (read_end, write_end) {
            (Some(HalfEnd::Error(e)), _) | (_, Some(HalfEnd::Error(e))) => {
                (format!("local connection failed: {e}"), true, None)
            }
            (Some(HalfEnd::PeerReset(r)), _) | (_, Some(HalfEnd::PeerReset(r))) => {
                (format!("reset by peer: {r}"), true, Some(r))
            }
            (Some(HalfEnd::Cancelled), _) | (_, Some(HalfEnd::Cancelled)) => {
                ("session ended".into(), false, None)
            }
            (Some(HalfEnd::Fin), Some(HalfEnd::Fin)) => ("closed".into(), false, None),
            (Some(HalfEnd::Fin), None) => ("closed by the local side".into(), false, None),
            (None, Some(HalfEnd::Fin)) => ("closed by the peer".into(), false, None),
            (None, None) => ("session ended".into(), false, None),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Drives a server-role engine as its peer would (sending within the credit it grants) to
    /// a target that reads `read_limit` bytes then stops reading; returns the credit the peer
    /// holds once everything is sent and the grants have settled.
    async fn credit_after(total: usize, read_limit: usize, window: u32, max_window: u32) -> i64 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let reader = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0;
            while got < read_limit {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            // Hold the socket open without reading: the stream stalls here.
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let mut cfg = MuxConfig::new(MuxKind::Airlock, MuxRole::Server, 64 * 1024, window);
        cfg.max_window = max_window;
        cfg.target = Some(("127.0.0.1".into(), port));
        let (in_tx, in_rx) = mpsc::channel::<Bytes>(1024);
        let (out_tx, mut out_rx) = mpsc::channel::<MuxOut>(1024);
        let cancel = CancellationToken::new();
        let engine = tokio::spawn(run(
            cfg,
            in_rx,
            out_tx,
            None,
            MuxHooks::default(),
            cancel.clone(),
        ));
        let enc = |f: &MuxFrame| mux::encode(MuxKind::Airlock, f).unwrap();
        in_tx
            .send(enc(&MuxFrame::Open { stream: 3 }))
            .await
            .unwrap();
        let mut decoder = MuxDecoder::new(MuxKind::Airlock, 1 << 20);
        let mut credit = i64::from(window);
        let mut sent = 0usize;
        let chunk = Bytes::from(vec![7u8; 16 * 1024]);
        loop {
            while credit >= chunk.len() as i64 && sent < total {
                let data = MuxFrame::Data {
                    stream: 3,
                    data: chunk.clone(),
                };
                in_tx.send(enc(&data)).await.unwrap();
                credit -= chunk.len() as i64;
                sent += chunk.len();
            }
            // Take grants until none comes for a while (settled, or stalled).
            let wait = if sent < total { 2000 } else { 300 };
            match tokio::time::timeout(Duration::from_millis(wait), out_rx.recv()).await {
                Ok(Some(MuxOut::Data(b))) => {
                    let mut frames = Vec::new();
                    decoder.decode(b, &mut frames).unwrap();
                    for f in frames {
                        if let MuxFrame::Window {
                            stream: 3,
                            credit: c,
                        } = f
                        {
                            credit += i64::from(c);
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        cancel.cancel();
        let _ = engine.await;
        reader.abort();
        credit
    }

    /// xorshift64*: a fixed-seed generator, so a failing case reruns the same way.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    /// A frame a hostile or confused peer might send: streams that exist and ones that do
    /// not, credit near the limits, empty and large bodies.
    fn random_frame(rng: &mut Rng, kind: MuxKind) -> MuxFrame {
        let stream = match rng.below(4) {
            0 => rng.next() as u32,
            1 => 0,
            _ => 1 + 2 * rng.below(4) as u32,
        };
        let n = if kind == MuxKind::Airlock { 6 } else { 4 };
        match rng.below(n) {
            0 => MuxFrame::Open { stream },
            1 => MuxFrame::Fin { stream },
            2 => MuxFrame::Nop { stream },
            3 => {
                let len = match rng.below(4) {
                    0 => 0,
                    // Up to what smux can express: over the engine's limit for a few.
                    1 => rng.below(mux::SMUX_MAX_DATA as u64 + 1) as usize,
                    _ => rng.below(2000) as usize,
                };
                MuxFrame::Data {
                    stream,
                    data: Bytes::from(vec![rng.next() as u8; len]),
                }
            }
            4 => MuxFrame::Window {
                stream,
                credit: match rng.below(3) {
                    0 => u32::MAX,
                    1 => 0,
                    _ => rng.next() as u32,
                },
            },
            _ => MuxFrame::Reset {
                stream,
                reason: "x".repeat(rng.below(3000) as usize),
            },
        }
    }

    /// The engine fed random frames (cut anywhere, sometimes ending in garbage) in both roles
    /// and both formats: it never panics, ends when its input does, and everything it sends
    /// is well-formed.
    #[tokio::test]
    async fn the_engine_survives_random_frames() {
        let cases: u64 = std::env::var("AIRLOCK_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        // The target: takes connections and reads until they close.
        let target = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        });
        for seed in 0..cases {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (seed + 1));
            let kind = if seed % 2 == 0 {
                MuxKind::Airlock
            } else {
                MuxKind::Smux1
            };
            let role = if seed % 4 < 2 {
                MuxRole::Server
            } else {
                MuxRole::Client
            };
            // A small window, so credit goes back and forth within a case.
            let mut cfg = MuxConfig::new(kind, role, 64 * 1024, 4096);
            cfg.max_streams = 1 + rng.below(4) as usize;
            if role == MuxRole::Server {
                cfg.target = Some(("127.0.0.1".into(), port));
            }
            let mut wire = BytesMut::new();
            for _ in 0..rng.below(40) {
                mux::encode_into(kind, &random_frame(&mut rng, kind), &mut wire).unwrap();
            }
            if rng.below(4) == 0 {
                for _ in 0..rng.below(40) {
                    wire.extend_from_slice(&[rng.next() as u8]);
                }
            }
            let wire = wire.freeze();
            let (in_tx, in_rx) = mpsc::channel::<Bytes>(1024);
            let (out_tx, mut out_rx) = mpsc::channel::<MuxOut>(16);
            let cancel = CancellationToken::new();
            // Client role: local connections become streams 3, 5, … that the frames hit.
            let incoming = if role == MuxRole::Client {
                let (tx, rx) = mpsc::channel(4);
                for _ in 0..1 + rng.below(3) {
                    let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                    tx.send(s).await.unwrap();
                }
                Some(rx)
            } else {
                None
            };
            let engine = tokio::spawn(run(
                cfg,
                in_rx,
                out_tx,
                incoming,
                MuxHooks::default(),
                cancel.clone(),
            ));
            let check = tokio::spawn(async move {
                let mut dec = MuxDecoder::new(kind, 1 << 20);
                let mut frames = Vec::new();
                while let Some(m) = out_rx.recv().await {
                    if let MuxOut::Data(b) = m {
                        dec.decode(b, &mut frames)
                            .expect("the engine sends well-formed frames");
                    }
                }
            });
            let mut at = 0;
            while at < wire.len() {
                let end = (at + 1 + rng.below(5000) as usize).min(wire.len());
                if in_tx.send(wire.slice(at..end)).await.is_err() {
                    break;
                }
                at = end;
            }
            // Let streams dial, write and grant credit before the input ends.
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(in_tx);
            let r = tokio::time::timeout(Duration::from_secs(10), engine)
                .await
                .unwrap_or_else(|_| panic!("seed {seed}: the engine did not end"))
                .unwrap_or_else(|e| panic!("seed {seed}: the engine panicked: {e}"));
            if let Err(e) = r {
                // Only garbage may make it fail, and then as a protocol error.
                tracing::debug!(seed, "ended with {e}");
            }
            tokio::time::timeout(Duration::from_secs(10), check)
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        }
        target.abort();
    }

    #[test]
    fn credit_saturates_instead_of_wrapping() {
        // A peer granting WINDOW after WINDOW of 4 GiB: the credit stays positive (a plain
        // atomic add wrapped it negative, stalling the stream for good).
        let c = Credit::new(i64::MAX - 5);
        c.add(u32::MAX);
        c.add(u32::MAX);
        assert_eq!(c.avail.load(Ordering::Acquire), i64::MAX);
        let c = Credit::new(i64::MIN + 5);
        c.take(usize::MAX);
        assert_eq!(c.avail.load(Ordering::Acquire), i64::MIN);
    }

    #[tokio::test]
    async fn a_stream_that_keeps_up_earns_a_larger_window_up_to_the_cap() {
        let (window, cap) = (64 * 1024, 512 * 1024);
        let credit = credit_after(8 << 20, usize::MAX, window, cap).await;
        // What the peer may have in flight is the window less the credit not yet returned
        // (under a quarter of it): well past where it started, never past the cap.
        assert!(credit > i64::from(window) * 2, "window grew: {credit}");
        assert!(credit <= i64::from(cap), "window capped: {credit}");
    }

    #[tokio::test]
    async fn a_stream_whose_reader_stalls_keeps_a_bounded_window() {
        let (window, cap) = (64 * 1024, 512 * 1024);
        // The target reads nothing: what its socket buffers take is consumed, then the writer
        // blocks and the grants stop; the peer never holds more than the cap.
        let credit = credit_after(64 << 20, 0, window, cap).await;
        assert!(credit <= i64::from(cap), "bounded: {credit}");
        assert!(
            credit < 16 * 1024,
            "a stalled stream's sender runs dry: {credit}"
        );
    }
}
