//! Port sessions (protocol.md §8.2): the agent connects to a TCP target on behalf of the
//! client, in one of four modes chosen from the document's properties and the handshake:
//!
//! - **stream** (`type` absent, e.g. `AWS-StartSSHSession`): one connection to
//!   `localhost:portNumber`, relayed raw; the session ends when the target closes.
//! - **basic** (`LocalPortForwarding` with a client older than 1.1.70): one connection at a
//!   time, closed on the `DisconnectToPort` flag and dialled again on the next data.
//! - **smux** (`LocalPortForwarding`, AWS clients): an smux v1 server over the session's byte
//!   stream; each stream is a connection to the target (`host` when given).
//! - **airlock-mux** (`LocalPortForwarding`, Airlock clients that negotiated it): the same with
//!   Airlock's mux (per-stream credit, large frames).
//!
//! Every mode moves bytes through the same pump, which never blocks on the target: what the
//! client sends goes to a queue the target's writer drains, and when that queue is full the
//! pump leaves frames in the reliable channel (which stops acking them) instead of waiting.
//! Each connection is reported when it ends, as a [`PortConnectionRecord`], for the audit
//! trail.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use airlock_client::mux::{self, MuxConfig, MuxHooks, MuxOut, MuxRole, StreamReport};
use airlock_client::ws::{DataWs as WsStream, Message, SplitWs};
use airlock_proto::version;
use airlock_proto::{
    AirlockCapabilities, Event, Flag, MessageType, MuxKind, PayloadType, PortConnectionRecord,
    ReliableChannel,
};

use super::sleep_until;
use crate::destinations::DestinationRules;

/// smux keep-alive interval (xtaci's default), for clients that expect NOPs.
const SMUX_KEEPALIVE: Duration = Duration::from_secs(10);
/// Largest read from the target in the single-connection modes.
const RAW_READ: usize = 256 * 1024;

/// What a port session connects to, from the document's properties.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortParams {
    /// Host to dial: `host` for `…ToRemoteHost`, else `localhost`.
    pub host: String,
    /// `portNumber`.
    pub port: u16,
    /// `type == LocalPortForwarding` (many connections); otherwise a single standard stream.
    pub local_forwarding: bool,
}

/// Reads the properties a port document passed (`portNumber`, `type`, `host`); the server
/// validated them, but the agent does not trust that.
pub fn params(properties: &serde_json::Value) -> Result<PortParams, String> {
    let text = |k: &str| -> Option<String> {
        match properties.get(k)? {
            serde_json::Value::String(s) => Some(s.trim().to_owned()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let port = text("portNumber")
        .ok_or_else(|| "the session names no portNumber".to_owned())?
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| "portNumber must be a number from 1 to 65535".to_owned())?;
    let host = text("host")
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    Ok(PortParams {
        host,
        port,
        local_forwarding: text("type").as_deref() == Some("LocalPortForwarding"),
    })
}

/// The variant of a port session (protocol.md §8.2 and the rules of §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One connection, raw, for the session's life.
    Stream,
    /// One connection at a time, raw.
    Basic,
    /// smux v1 server.
    Smux {
        /// Send NOPs every 10 s (clients up to 1.2.331.0 expect them).
        keepalive: bool,
    },
    /// Airlock mux server.
    Airlock,
}

impl Mode {
    /// Chooses the variant: Airlock's mux when both sides negotiated it, smux for AWS clients
    /// from 1.1.70, basic for older ones; a standard stream when the type is not
    /// `LocalPortForwarding`.
    pub fn choose(
        p: &PortParams,
        client_version: &str,
        agreed: Option<&AirlockCapabilities>,
    ) -> Mode {
        if !p.local_forwarding {
            Mode::Stream
        } else if agreed.is_some_and(|c| c.mux >= 1 && c.mux_window > 0) {
            Mode::Airlock
        } else if version::client_supports_mux(client_version) {
            Mode::Smux {
                keepalive: version::client_wants_keepalive(client_version),
            }
        } else {
            Mode::Basic
        }
    }

    /// Name used in the audit records.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Stream => "stream",
            Mode::Basic => "basic",
            Mode::Smux { .. } => "smux",
            Mode::Airlock => "airlock-mux",
        }
    }
}

/// How a port session ended.
#[derive(Debug)]
pub enum PortEnd {
    /// The server closed the session (or the agent is stopping): nothing more to send.
    Closed,
    /// The session is over on this side (TerminateSession flag, the target closed the
    /// stream); `Some` carries an error to report.
    Finished(Option<String>),
}

/// Where the connection reports of a session go.
#[derive(Clone, Debug)]
pub struct Recorder {
    /// Queue to the control channel; `None` drops the records (they are still logged).
    pub tx: Option<mpsc::Sender<PortConnectionRecord>>,
    /// The session.
    pub session_id: String,
    /// Its owner, as the task named it.
    pub owner: String,
    /// The mode's name.
    pub mode: &'static str,
}

impl Recorder {
    /// Logs a finished connection and queues its record for the server.
    pub fn report(&self, r: &StreamReport) {
        let started_at = r
            .opened_at
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let rec = PortConnectionRecord {
            session_id: self.session_id.clone(),
            session_owner: cut(&self.owner, MAX_RECORD_TEXT),
            stream_id: r.stream,
            destination: cut(&r.destination, MAX_RECORD_DESTINATION),
            mode: self.mode.to_owned(),
            bytes_to_target: r.received,
            bytes_from_target: r.sent,
            started_at,
            duration_ms: u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX),
            end_reason: cut(&r.end, MAX_RECORD_TEXT),
            failed: r.failed,
        };
        tracing::info!(
            session_id = rec.session_id,
            stream = rec.stream_id,
            destination = rec.destination,
            mode = rec.mode,
            bytes_to_target = rec.bytes_to_target,
            bytes_from_target = rec.bytes_from_target,
            duration_ms = rec.duration_ms,
            end = rec.end_reason,
            "port connection"
        );
        if let Some(tx) = &self.tx {
            if tx.try_send(rec).is_err() {
                tracing::warn!("the audit queue is full; a port connection record was dropped");
            }
        }
    }
}

/// Longest destination a record carries (the server refuses longer ones).
const MAX_RECORD_DESTINATION: usize = 512;
/// Longest owner and end reason a record carries (the server refuses longer ones).
const MAX_RECORD_TEXT: usize = 1024;

/// `s` cut to at most `max` bytes on a character boundary, control characters made spaces:
/// the server refuses a record with either, and an end reason can carry words from the peer
/// (a reset reason), who must not be able to make their own record refused.
fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end)
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod record_tests {
    use super::cut;

    #[test]
    fn record_text_is_cut_and_cleaned() {
        assert_eq!(cut("closed", 1024), "closed");
        assert_eq!(
            cut("reset by peer: a\nb\u{1b}[2J", 1024),
            "reset by peer: a b [2J"
        );
        assert_eq!(cut(&"é".repeat(600), 1023).len(), 1022);
        assert_eq!(cut(&"x".repeat(5000), 1024).len(), 1024);
    }
}

/// What the client's data goes to: the mux engine, or a single-connection relay.
enum Sink {
    Mux(mpsc::Sender<Bytes>),
    Raw(mpsc::Sender<RawIn>),
}

/// Input of the single-connection relays.
#[derive(Debug)]
enum RawIn {
    Data(Bytes),
    /// Basic mode: the local client disconnected; close the target connection.
    Disconnect,
    /// Stream mode, Airlock clients: the client's input ended; half-close the target.
    Eof,
}

/// How the pump stopped.
enum PumpEnd {
    /// The server closed the channel, or the agent is stopping.
    Closed,
    /// The client sent `TerminateSession`.
    Terminated,
    /// The worker (engine or relay) finished and everything it produced was sent.
    WorkerDone,
}

/// Runs the port session over an open, handshaken data channel until it ends. `window` is
/// the per-stream credit agreed for Airlock's mux. Gives the socket back (when it is still
/// usable) for the end of the session. Every target connection goes through `rules`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    ws: WsStream,
    ch: &mut ReliableChannel,
    p: &PortParams,
    mode: Mode,
    window: u32,
    recorder: Recorder,
    rules: &Arc<DestinationRules>,
    cancel: CancellationToken,
) -> anyhow::Result<(PortEnd, Option<WsStream>)> {
    let (out_tx, mut out_rx) = mpsc::channel::<MuxOut>(16);
    let worker_cancel = cancel.child_token();
    let _stop_worker = worker_cancel.clone().drop_guard();
    let (sink, worker): (Sink, tokio::task::JoinHandle<Result<(), String>>) = match mode {
        Mode::Smux { .. } | Mode::Airlock => {
            let (kind, window) = match mode {
                Mode::Airlock => (MuxKind::Airlock, window),
                _ => (MuxKind::Smux1, 0),
            };
            let mut config = MuxConfig::new(kind, MuxRole::Server, ch.config().max_payload, window);
            config.target = Some((p.host.clone(), p.port));
            config.dialer = Some(rules.dialer());
            if mode == (Mode::Smux { keepalive: true }) {
                config.keepalive = Some(SMUX_KEEPALIVE);
            }
            let (in_tx, in_rx) = mpsc::channel::<Bytes>(64);
            let (rep_tx, mut rep_rx) = mpsc::channel::<StreamReport>(256);
            let hooks = MuxHooks {
                reports: Some(rep_tx),
                ..Default::default()
            };
            let rec = recorder.clone();
            tokio::spawn(async move {
                while let Some(r) = rep_rx.recv().await {
                    rec.report(&r);
                }
            });
            let c = worker_cancel.clone();
            let h = tokio::spawn(async move {
                mux::run(config, in_rx, out_tx, None, hooks, c)
                    .await
                    .map_err(|e| format!("port forwarding protocol error: {e}"))
            });
            (Sink::Mux(in_tx), h)
        }
        Mode::Stream | Mode::Basic => {
            let (in_tx, in_rx) = mpsc::channel::<RawIn>(64);
            let h = tokio::spawn(raw_relay(
                p.clone(),
                rules.clone(),
                mode,
                in_rx,
                out_tx,
                recorder.clone(),
                worker_cancel.clone(),
            ));
            (Sink::Raw(in_tx), h)
        }
    };
    let mut split = SplitWs::new(ws);
    let result = pump(&mut split, ch, sink, &mut out_rx, mode, cancel).await;
    let ws = split.join().await;
    if let Ok(PumpEnd::WorkerDone) = result {
        // The worker ended on its own (the target closed a stream session, or the engine
        // failed): its outcome is the session's.
        let err = match worker.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(e) => Some(format!("the port worker failed: {e}")),
        };
        return Ok((PortEnd::Finished(err), ws));
    }
    worker_cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), worker).await;
    let end = match result? {
        PumpEnd::Closed => PortEnd::Closed,
        _ => PortEnd::Finished(None),
    };
    Ok((end, ws))
}

/// Moves frames between the data channel and the worker until the session ends.
async fn pump(
    ws: &mut SplitWs,
    ch: &mut ReliableChannel,
    sink: Sink,
    out_rx: &mut mpsc::Receiver<MuxOut>,
    mode: Mode,
    cancel: CancellationToken,
) -> anyhow::Result<PumpEnd> {
    let mut pending = Bytes::new();
    let mut pending_flag: Option<Flag> = None;
    let mut worker_done = false;
    loop {
        // Hand what arrived to the worker while it has room; never wait for it here.
        let mut blocked = false;
        loop {
            let ready = match &sink {
                Sink::Mux(tx) => tx.capacity() > 0 || tx.is_closed(),
                Sink::Raw(tx) => tx.capacity() > 0 || tx.is_closed(),
            };
            if !ready {
                blocked = true;
                break;
            }
            let Some(ev) = ch.poll_event() else { break };
            match ev {
                Event::Data {
                    payload_type: PayloadType::OUTPUT,
                    payload,
                } => match &sink {
                    Sink::Mux(tx) => {
                        let _ = tx.try_send(payload);
                    }
                    Sink::Raw(tx) => {
                        let _ = tx.try_send(RawIn::Data(payload));
                    }
                },
                Event::Data {
                    payload_type: PayloadType::FLAG,
                    payload,
                } => match Flag::decode(&payload) {
                    Ok(Flag::TerminateSession) => {
                        tracing::debug!("the client ended the port session");
                        return Ok(PumpEnd::Terminated);
                    }
                    Ok(Flag::DisconnectToPort) if mode == Mode::Basic => {
                        if let Sink::Raw(tx) = &sink {
                            let _ = tx.try_send(RawIn::Disconnect);
                        }
                    }
                    Ok(Flag::Other(v)) if v == airlock_client::session::FLAG_INPUT_EOF => {
                        if let Sink::Raw(tx) = &sink {
                            let _ = tx.try_send(RawIn::Eof);
                        }
                    }
                    _ => {}
                },
                Event::Data { .. } => {}
                Event::Control(f) if f.message_type == MessageType::ChannelClosed => {
                    return Ok(PumpEnd::Closed)
                }
                Event::Control(_) => {}
                Event::ResendLimitReached => anyhow::bail!("the client stopped acknowledging"),
            }
        }
        let now = Instant::now();
        if let Some(f) = pending_flag {
            if ch
                .send(PayloadType::FLAG, Bytes::copy_from_slice(&f.encode()), now)
                .is_ok()
            {
                pending_flag = None;
            }
        }
        if !pending.is_empty() {
            ch.send_stream(PayloadType::OUTPUT, &mut pending, now);
        }
        let tx_blocked = ws.transmit(ch);
        if worker_done && pending.is_empty() && pending_flag.is_none() {
            return Ok(PumpEnd::WorkerDone);
        }
        let take = !worker_done && pending.is_empty() && pending_flag.is_none() && ch.can_send();
        tokio::select! {
            m = ws.stream.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if let Err(e) = ch.handle_bytes(b, Instant::now()) {
                        tracing::debug!("dropping an undecodable frame: {e}");
                    }
                }
                Some(Ok(Message::Close(_))) | None => return Ok(PumpEnd::Closed),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(_)) => {}
            },
            o = out_rx.recv(), if take => match o {
                Some(MuxOut::Data(b)) => pending = b,
                Some(MuxOut::Flag(f)) => pending_flag = Some(f),
                None => worker_done = true,
            },
            _ = wait_room(&sink), if blocked => {}
            _ = room(&ws.tx), if tx_blocked => {}
            _ = sleep_until(ch.poll_timeout()) => ch.handle_timeout(Instant::now()),
            _ = cancel.cancelled() => return Ok(PumpEnd::Closed),
        }
    }
}

async fn room(tx: &mpsc::Sender<Message>) {
    let _ = tx.reserve().await;
}

async fn wait_room(sink: &Sink) {
    let _ = match sink {
        Sink::Mux(tx) => tx.reserve().await.map(drop),
        Sink::Raw(tx) => tx.reserve().await.map(drop),
    };
}

/// The single-connection modes: stream (one connection for the session) and basic (one at a
/// time). Returns an error to end the session with when the target cannot be reached.
async fn raw_relay(
    p: PortParams,
    rules: Arc<DestinationRules>,
    mode: Mode,
    mut rx: mpsc::Receiver<RawIn>,
    out: mpsc::Sender<MuxOut>,
    recorder: Recorder,
    cancel: CancellationToken,
) -> Result<(), String> {
    let dest = mux::display_target(&p.host, p.port);
    loop {
        // Stream mode dials at once; basic mode when data first arrives.
        let first = if mode == Mode::Stream {
            None
        } else {
            loop {
                let m = tokio::select! {
                    m = rx.recv() => m,
                    _ = cancel.cancelled() => return Ok(()),
                };
                match m {
                    Some(RawIn::Data(b)) => break Some(b),
                    Some(_) => continue,
                    None => return Ok(()),
                }
            }
        };
        let opened_at = SystemTime::now();
        let started = Instant::now();
        let sock = tokio::select! {
            r = crate::destinations::connect(&rules, &p.host, p.port) => r,
            _ = cancel.cancelled() => return Ok(()),
        };
        let sock = match sock {
            Ok(s) => s,
            Err(why) => {
                recorder.report(&StreamReport {
                    stream: 0,
                    destination: dest.clone(),
                    sent: 0,
                    received: 0,
                    opened_at,
                    duration: started.elapsed(),
                    end: why.clone(),
                    failed: true,
                    peer_reason: None,
                });
                return Err(why);
            }
        };
        let (end, failed, sent, received, more) =
            relay_one(sock, first, &mut rx, &out, mode, &cancel).await;
        recorder.report(&StreamReport {
            stream: 0,
            destination: dest.clone(),
            sent,
            received,
            opened_at,
            duration: started.elapsed(),
            end,
            failed,
            peer_reason: None,
        });
        if mode == Mode::Stream || !more {
            return Ok(());
        }
    }
}

/// Relays one target connection. Returns (how it ended, failed, bytes from the target, bytes
/// to the target, whether the session goes on).
async fn relay_one(
    sock: TcpStream,
    first: Option<Bytes>,
    rx: &mut mpsc::Receiver<RawIn>,
    out: &mpsc::Sender<MuxOut>,
    mode: Mode,
    cancel: &CancellationToken,
) -> (String, bool, u64, u64, bool) {
    let (mut rd, mut wr) = sock.into_split();
    let mut sent = 0u64;
    let mut received = 0u64;
    if let Some(b) = first {
        if let Err(e) = wr.write_all(&b).await {
            return (
                format!("writing to the target failed: {}", mux::describe_io(&e)),
                true,
                0,
                0,
                true,
            );
        }
        received += b.len() as u64;
    }
    let mut read_open = true;
    let mut buf = BytesMut::new();
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(RawIn::Data(b)) => {
                    if let Err(e) = wr.write_all(&b).await {
                        return (format!("writing to the target failed: {}", mux::describe_io(&e)), true, sent, received, true);
                    }
                    received += b.len() as u64;
                }
                Some(RawIn::Disconnect) => return ("closed by the client".into(), false, sent, received, true),
                Some(RawIn::Eof) => { let _ = wr.shutdown().await; }
                None => return ("session ended".into(), false, sent, received, false),
            },
            r = async { buf.reserve(RAW_READ); rd.read_buf(&mut buf).await }, if read_open => match r {
                Ok(0) | Err(_) => {
                    read_open = false;
                    if mode == Mode::Stream {
                        // The target closed: the session ends once its last bytes are sent.
                        return ("closed by the target".into(), false, sent, received, false);
                    }
                    // Basic: nothing can tell the client; wait for its disconnect.
                }
                Ok(n) => {
                    sent += n as u64;
                    if out.send(MuxOut::Data(buf.split().freeze())).await.is_err() {
                        return ("session ended".into(), false, sent, received, false);
                    }
                }
            },
            _ = cancel.cancelled() => return ("session ended".into(), false, sent, received, false),
        }
    }
}
