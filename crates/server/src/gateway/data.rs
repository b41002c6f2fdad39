//! Data channels: the WebSocket both the client and the agent open for a session
//! (`/v1/data-channel/<SessionId>`). The first text frame carries the token; after that every
//! binary frame is relayed to the other side untouched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_wire::{CloseFrame, Message};
use axum::extract::ws::{self as aws, WebSocket};
use axum::extract::{ConnectInfo, Path, State, WebSocketUpgrade};
use axum::response::Response;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use airlock_proto::{peek_message_type, MessageType, OpenDataChannelInput};

use super::hub::Side;
use super::relay::{Relay, SideConn, SIDE_QUEUE};
use crate::end_reason::EndReason;
use crate::sessions;
use crate::state::AppState;

/// How long a new WebSocket may take to send its token.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest WebSocket message accepted on a data channel (a frame of the largest payload we negotiate).
pub const MAX_DATA_MESSAGE: usize = 1024 * 1024 + 4096;
/// Largest message before the channel's token is checked: the open message is a small JSON
/// text, and a connection nobody has authenticated must not make the gateway hold megabytes.
pub const MAX_OPEN_MESSAGE: usize = 16 * 1024;

/// Upgrades `/v1/data-channel/{session_id}`.
pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    Path(session_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    slot: Option<axum::Extension<Arc<crate::limits::ConnectionSlot>>>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.max_message_size(MAX_DATA_MESSAGE)
        .max_frame_size(MAX_DATA_MESSAGE)
        .on_upgrade(move |socket: WebSocket| async move {
            // The connection's slot is held for the channel's life, as on the fast path.
            let _slot = slot;
            let tracker = state.tasks.clone();
            let (sink, stream) = socket.split();
            tracker
                .track_future(serve(
                    state,
                    session_id,
                    peer,
                    DcReader::Axum(stream),
                    DcWriter::Axum(sink),
                ))
                .await
        })
}

/// The receiving half of a data channel: Airlock's own codec (connections the accept loop
/// upgraded, see [`super::fast`]) or axum's (an upgrade that reached the router, e.g. a
/// second request on a kept-alive connection).
pub enum DcReader {
    /// airlock-wire.
    Wire(Box<airlock_wire::WsReader>),
    /// axum / tungstenite.
    Axum(SplitStream<WebSocket>),
}

/// The sending half, see [`DcReader`].
pub enum DcWriter {
    /// airlock-wire.
    Wire(Box<airlock_wire::WsWriter>),
    /// axum / tungstenite.
    Axum(SplitSink<WebSocket, aws::Message>),
}

impl DcReader {
    /// The next message; `None` when the connection is closed.
    pub async fn next(&mut self) -> Option<Result<Message, String>> {
        match self {
            DcReader::Wire(r) => r.next().await.map(|m| m.map_err(|e| e.to_string())),
            DcReader::Axum(s) => s
                .next()
                .await
                .map(|m| m.map(from_axum).map_err(|e| e.to_string())),
        }
    }
}

impl DcWriter {
    /// Queues a message for the next flush; false when the connection failed or `m` was a
    /// close frame (which is sent at once, after what was fed before it, and ends the writer).
    pub async fn feed(&mut self, m: Message) -> bool {
        if let Message::Close(f) = m {
            self.close(f).await;
            return false;
        }
        match self {
            DcWriter::Wire(w) => w.feed(m).await.is_ok(),
            DcWriter::Axum(s) => s.feed(to_axum(m)).await.is_ok(),
        }
    }

    /// Writes what was fed; false when the connection failed.
    pub async fn flush(&mut self) -> bool {
        match self {
            DcWriter::Wire(w) => w.flush().await.is_ok(),
            DcWriter::Axum(s) => s.flush().await.is_ok(),
        }
    }

    /// Feeds and flushes.
    pub async fn send(&mut self, m: Message) -> bool {
        self.feed(m).await && self.flush().await
    }

    /// Sends a close frame (when `frame` is given, with that code and reason) and closes.
    pub async fn close(&mut self, frame: Option<CloseFrame>) {
        match self {
            DcWriter::Wire(w) => {
                let _ = w.close(frame).await;
            }
            DcWriter::Axum(s) => {
                let _ = s.send(to_axum(Message::Close(frame))).await;
                let _ = s.close().await;
            }
        }
    }
}

fn from_axum(m: aws::Message) -> Message {
    match m {
        aws::Message::Binary(b) => Message::Binary(b),
        aws::Message::Text(t) => Message::Text(t.as_str().to_owned()),
        aws::Message::Ping(b) => Message::Ping(b),
        aws::Message::Pong(b) => Message::Pong(b),
        aws::Message::Close(f) => Message::Close(f.map(|f| CloseFrame {
            code: f.code,
            reason: f.reason.as_str().to_owned(),
        })),
    }
}

fn to_axum(m: Message) -> aws::Message {
    match m {
        Message::Binary(b) => aws::Message::Binary(b),
        Message::BinaryParts(a, b) => {
            let mut v = bytes::BytesMut::with_capacity(a.len() + b.len());
            v.extend_from_slice(&a);
            v.extend_from_slice(&b);
            aws::Message::Binary(v.freeze())
        }
        Message::Text(t) => aws::Message::Text(t.into()),
        Message::Ping(b) => aws::Message::Ping(b),
        Message::Pong(b) => aws::Message::Pong(b),
        Message::Close(f) => aws::Message::Close(f.map(|f| aws::CloseFrame {
            code: f.code,
            reason: f.reason.into(),
        })),
    }
}

/// Closes an axum socket (the control channel's) with a reason the peer can read.
pub async fn close_socket_with(mut socket: WebSocket, code: u16, reason: &str) {
    let _ = socket
        .send(aws::Message::Close(Some(aws::CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

/// Reads the opening text frame from an axum socket (the control channel's).
pub async fn read_open_socket(socket: &mut WebSocket) -> Result<OpenDataChannelInput, String> {
    let first = tokio::time::timeout(OPEN_TIMEOUT, socket.recv())
        .await
        .map_err(|_| "no open message within 10 s".to_owned())?;
    parse_open(first.map(|m| m.map(from_axum).map_err(|e| e.to_string())))
}

/// Closes a data channel with a policy-violation reason that the peer can read.
pub async fn close_with(writer: &mut DcWriter, code: u16, reason: &str) {
    writer
        .close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
        .await;
}

/// Reads the opening text frame (OpenDataChannelInput), bounded by a timeout.
pub async fn read_open(socket: &mut DcReader) -> Result<OpenDataChannelInput, String> {
    let first = tokio::time::timeout(OPEN_TIMEOUT, socket.next())
        .await
        .map_err(|_| "no open message within 10 s".to_owned())?;
    parse_open(first)
}

/// The OpenDataChannelInput in a channel's first message, or why there is none.
fn parse_open(first: Option<Result<Message, String>>) -> Result<OpenDataChannelInput, String> {
    match first {
        Some(Ok(Message::Text(t))) => serde_json::from_str::<OpenDataChannelInput>(&t)
            .map_err(|e| format!("malformed open message: {e}")),
        Some(Ok(_)) => Err("the first message must be a text frame with the token".to_owned()),
        Some(Err(e)) => Err(format!("websocket error: {e}")),
        None => Err("closed before the open message".to_owned()),
    }
}

/// Serves one data channel: checks its token, attaches it to the session's relay and relays
/// until either side or the session ends.
pub async fn serve(
    state: Arc<AppState>,
    session_id: String,
    peer: SocketAddr,
    mut reader: DcReader,
    mut writer: DcWriter,
) {
    let open = match read_open(&mut reader).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(%peer, session_id, "data channel refused: {e}");
            return close_with(&mut writer, 1008, &e).await;
        }
    };
    let side = match state.hub.take_token(&open.token_value, &session_id) {
        Ok(side) => side,
        Err(e) => {
            // A token revoked because the session ended: say why it ended, not just "unknown".
            let mut reason = match state.store.session(&session_id).await {
                Ok(Some(s)) if s.status == "Terminated" || s.status == "Failed" => {
                    format!("session has ended: {}", s.end_reason)
                }
                _ => e.to_string(),
            };
            while reason.len() > 123 {
                reason.pop();
            }
            tracing::warn!(%peer, session_id, "data channel refused: {reason}");
            return close_with(&mut writer, 1008, &reason).await;
        }
    };
    // The token is good: from here on, messages as large as the data path carries.
    if let DcReader::Wire(r) = &mut reader {
        r.set_max_message(MAX_DATA_MESSAGE);
    }
    if side == Side::Client {
        if let Err(reason) = authorize_client(&state, &session_id, peer).await {
            tracing::warn!(%peer, session_id, "data channel refused: {reason}");
            return close_with(&mut writer, 1008, &reason).await;
        }
    }
    let relay = state.hub.relay(&session_id);
    if relay.ended().is_cancelled() {
        return close_with(&mut writer, 1008, "session has ended").await;
    }
    // The session may have ended while this channel was opening (its token taken just before
    // the end revoked the rest): then the relay above is a fresh one nobody would ever close.
    // Checked after the relay exists, so an end from here on finds and finishes it.
    let owner = match state.store.session(&session_id).await {
        Ok(Some(s)) if s.status == "Terminated" || s.status == "Failed" => {
            // Nothing attached: a relay created for nobody (an attached one is the end's to finish).
            if !relay.is_attached(Side::Agent) && !relay.is_attached(Side::Client) {
                relay.end();
                state.hub.remove_relay(&session_id);
            }
            Err(if s.end_reason.is_empty() {
                "session has ended".to_owned()
            } else {
                format!("session has ended: {}", s.end_reason)
            })
        }
        Ok(Some(s)) => Ok(s.owner),
        Ok(None) => Err("unknown session".to_owned()),
        Err(e) => Err(format!("store error: {e}")),
    };
    let owner = match owner {
        Ok(owner) => owner,
        Err(mut reason) => {
            tracing::warn!(%peer, session_id, ?side, "data channel refused: {reason}");
            // A close frame's reason is at most 123 bytes.
            while reason.len() > 123 {
                reason.pop();
            }
            return close_with(&mut writer, 1008, &reason).await;
        }
    };
    tracing::info!(%peer, session_id, ?side, "data channel open");

    if side == Side::Client && relay.is_attached(Side::Client) {
        // A live client is about to be cut off by a new one (its owner resuming from
        // elsewhere): that takeover goes on the record, with where it came from.
        let event = crate::store::audit::AuditEvent {
            event: "data-channel".into(),
            principal: owner,
            source_ip: peer.ip().to_string(),
            action: "ssmmessages:OpenDataChannel".into(),
            resource: session_id.clone(),
            decision: "TakeOver".into(),
            statement: "a new client connection replaced the live one".into(),
            request_id: session_id.clone(),
            ..Default::default()
        };
        if let Err(e) = state.store.append_audit(&event).await {
            return close_with(
                &mut writer,
                1011,
                &format!("audit record could not be written: {e}"),
            )
            .await;
        }
    }
    let conn_id = state.hub.next_conn_id();
    let cancel = relay.ended().child_token();
    let (tx, rx) = mpsc::channel(SIDE_QUEUE);
    let paired = relay.attach(
        side,
        SideConn {
            tx,
            cancel: cancel.clone(),
            conn_id,
        },
    );
    if paired {
        sessions::mark_status(&state, &session_id, "Connected").await;
        if side == Side::Client {
            // The client is back (or here at last): let the agent send again.
            relay.try_send_to(Side::Agent, publication(MessageType::StartPublication));
        }
    }

    let writer = tokio::spawn(write_loop(writer, rx, cancel.clone()));
    let recorder = state.recordings.handle(&session_id);
    read_loop(&state, &relay, side, reader, cancel.clone(), recorder).await;
    cancel.cancel();
    let _ = writer.await;

    if relay.detach(side, conn_id) && !relay.ended().is_cancelled() {
        match side {
            Side::Client => {
                // The client may come back with ResumeSession; the agent side waits, paused,
                // as MGS pauses it, instead of resending into a relay nobody reads.
                relay.try_send_to(Side::Agent, publication(MessageType::PausePublication));
                sessions::mark_status(&state, &session_id, "Disconnected").await;
            }
            Side::Agent => {
                sessions::end(
                    &state,
                    &session_id,
                    sessions::End {
                        reason: EndReason::AgentGone("the agent's data channel closed".into()),
                        notify_agent: false,
                    },
                )
                .await;
            }
        }
    }
    tracing::info!(%peer, session_id, ?side, "data channel closed");
}

/// A `start_publication` / `pause_publication` frame for the agent (never an empty payload:
/// the AWS agent's parser cannot take one).
fn publication(kind: MessageType) -> Message {
    let frame = airlock_proto::Frame::new(
        kind,
        0,
        0,
        airlock_proto::PayloadType::NONE,
        bytes::Bytes::from_static(b"{}"),
    );
    Message::Binary(frame.encode(true))
}

/// Re-checks, when the client's data channel opens (first time or on resume), that the
/// session's owner may still start a session on its target: a grant that expired or a policy
/// detached since StartSession takes effect here. The decision is audited.
async fn authorize_client(
    state: &Arc<AppState>,
    session_id: &str,
    peer: SocketAddr,
) -> Result<(), String> {
    let session = state
        .store
        .session(session_id)
        .await
        .map_err(|e| format!("store error: {e}"))?
        .ok_or_else(|| "unknown session".to_owned())?;
    let user = state
        .store
        .user_by_id(&session.owner_user_id)
        .await
        .map_err(|e| format!("store error: {e}"))?
        .ok_or_else(|| "the session's owner no longer exists".to_owned())?;
    let principal = crate::authz::load_principal(
        &state.store,
        &state.policies,
        &state.config.account_id,
        user,
        None,
    )
    .await
    .map_err(|e| e.message)?;
    let resource = crate::authz::Resource {
        arn: format!(
            "arn:aws:ssm:{}:{}:managed-instance/{}",
            state.config.region, state.config.account_id, session.target
        ),
        tags: state
            .store
            .instance_tags(&session.target)
            .await
            .map_err(|e| format!("store error: {e}"))?,
    };
    let ctx = crate::authz::context(
        state,
        &principal,
        &peer.ip().to_string(),
        state.tls,
        "ssm:StartSession",
        &resource,
    );
    let decision = crate::authz::decide(&principal, &ctx);
    let event = crate::store::audit::AuditEvent {
        event: "data-channel".into(),
        principal: principal.arn.clone(),
        source_ip: peer.ip().to_string(),
        action: "ssmmessages:OpenDataChannel".into(),
        resource: resource.arn.clone(),
        decision: if decision.is_allowed() {
            "Allow".into()
        } else {
            "Deny".into()
        },
        statement: decision.explain(),
        request_id: session_id.to_owned(),
        ..Default::default()
    };
    state
        .store
        .append_audit(&event)
        .await
        .map_err(|e| format!("audit record could not be written: {e}"))?;
    if decision.is_allowed() {
        Ok(())
    } else {
        Err(format!(
            "access denied: {} may no longer start sessions on {}",
            principal.arn, session.target
        ))
    }
}

/// Writes `first` and what else is queued already, then flushes once: under load the relay
/// puts many frames (data and their acks) into one write instead of one write each.
async fn write_batch(
    sink: &mut DcWriter,
    first: Message,
    rx: &mut mpsc::Receiver<Message>,
) -> bool {
    if !sink.feed(first).await {
        return false;
    }
    for _ in 0..SIDE_QUEUE {
        let Ok(m) = rx.try_recv() else { break };
        if !sink.feed(m).await {
            return false;
        }
    }
    sink.flush().await
}

async fn write_loop(
    mut sink: DcWriter,
    mut rx: mpsc::Receiver<Message>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            msg = rx.recv() => match msg {
                Some(m) => if !write_batch(&mut sink, m, &mut rx).await { return },
                None => break,
            },
            _ = cancel.cancelled() => {
                // Flush what was queued before the end (e.g. channel_closed), then close.
                while let Ok(m) = rx.try_recv() {
                    if !sink.send(m).await { return; }
                }
                break;
            }
        }
    }
    sink.close(None).await;
}

async fn read_loop(
    state: &Arc<AppState>,
    relay: &Relay,
    side: Side,
    mut stream: DcReader,
    cancel: CancellationToken,
    recorder: Option<crate::recording::task::Handle>,
) {
    let mut peer_watch = relay.watch(side.peer());
    let mut peer: Option<SideConn> = None;
    let stream_type = match side {
        Side::Client => MessageType::InputStreamData,
        Side::Agent => MessageType::OutputStreamData,
    };
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = cancel.cancelled() => return,
        };
        let data = match msg {
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Ping(b))) => {
                // Answered through this side's own writer, in order with its frames.
                relay.try_send_to(side, Message::Pong(b));
                continue;
            }
            // (Readers never yield BinaryParts; it exists for senders.)
            Some(Ok(Message::Text(_)))
            | Some(Ok(Message::Pong(_)))
            | Some(Ok(Message::BinaryParts(..))) => continue,
            Some(Ok(Message::Close(_))) | None => return,
            Some(Err(e)) => {
                tracing::debug!(
                    session_id = relay.session_id(),
                    ?side,
                    "data channel read error: {e}"
                );
                return;
            }
        };
        let kind = peek_message_type(&data);
        match &kind {
            None => {
                tracing::warn!(
                    session_id = relay.session_id(),
                    ?side,
                    "dropping a malformed frame of {} bytes",
                    data.len()
                );
                continue;
            }
            Some(MessageType::AgentSessionState) if side == Side::Agent => {
                handle_agent_state(state, relay, &data).await;
                continue;
            }
            // Only the gateway may close channels or steer publication.
            Some(MessageType::ChannelClosed)
            | Some(MessageType::StartPublication)
            | Some(MessageType::PausePublication) => continue,
            Some(MessageType::Other(t)) if t == airlock_proto::NOTICE_MESSAGE_TYPE => continue,
            Some(_) => {}
        }
        // Input from the client and output to it keep the session from idling; acks, pings,
        // handshakes and multiplexing keep-alives do not (session_limits.rs).
        if kind.as_ref() == Some(&stream_type)
            && crate::session_limits::carries_activity(&data)
            && !(side == Side::Agent && relay.is_echo(&data))
        {
            relay.touch();
        }
        // Recording: a type check and a `Bytes` clone onto the recorder's queue; a wait only
        // when the recorder is far behind (`RecordingConfig::queue_max_bytes`).
        if let Some(r) = &recorder {
            tokio::select! {
                _ = r.offer(side, kind.as_ref(), &data) => {}
                _ = cancel.cancelled() => return,
            }
        }
        tracing::trace!(
            session_id = relay.session_id(),
            ?side,
            len = data.len(),
            "relaying a frame"
        );
        let mut msg = Message::Binary(data);
        loop {
            if peer.as_ref().is_none_or(|p| p.tx.is_closed()) {
                peer = tokio::select! {
                    p = wait_for_peer(&mut peer_watch) => p,
                    _ = cancel.cancelled() => return,
                };
                if peer.is_none() {
                    return;
                }
            }
            let Some(p) = peer.as_ref() else { return };
            let sent = tokio::select! {
                r = p.tx.send(msg) => r,
                _ = cancel.cancelled() => return,
            };
            match sent {
                Ok(()) => break,
                Err(mpsc::error::SendError(m)) => {
                    msg = m;
                    peer = None;
                }
            }
        }
    }
}

/// Waits until the peer side is attached with a live queue; `None` when the relay is gone.
async fn wait_for_peer(w: &mut tokio::sync::watch::Receiver<Option<SideConn>>) -> Option<SideConn> {
    loop {
        {
            let cur = w.borrow_and_update();
            if let Some(c) = cur.as_ref() {
                if !c.tx.is_closed() {
                    return Some(c.clone());
                }
            }
        }
        if w.changed().await.is_err() {
            return None;
        }
    }
}

async fn handle_agent_state(state: &Arc<AppState>, relay: &Relay, data: &[u8]) {
    let payload = data
        .get(airlock_proto::FRAME_HEADER_LEN..)
        .unwrap_or_default();
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
        tracing::warn!(
            session_id = relay.session_id(),
            "malformed agent_session_state"
        );
        return;
    };
    if v.get("SessionState").and_then(|s| s.as_str()) == Some("Terminating") {
        let exit_code = v
            .get("ExitCode")
            .and_then(|c| c.as_i64())
            .and_then(|c| i32::try_from(c).ok());
        // Airlock agents add `Error` when the session failed (e.g. a port session whose
        // target refused): the client is shown it as the reason.
        let reason = match v.get("Error").and_then(|e| e.as_str()) {
            Some(e) if !e.is_empty() => EndReason::HostError(e.to_owned()),
            _ => EndReason::Exited(exit_code),
        };
        sessions::end(
            state,
            relay.session_id(),
            sessions::End {
                reason,
                notify_agent: false,
            },
        )
        .await;
    }
}
