//! The client side of a session's data channel: opens the WebSocket with the token, runs the
//! client end of the handshake (offering Airlock's larger limits), and drives the
//! [`ReliableChannel`] between the caller's input/output queues and the socket. When the
//! socket drops without `channel_closed`, it resumes the session (ResumeSession, then a fresh
//! token on the original StreamUrl) with sequence state kept, as the AWS plugin does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use airlock_proto::{
    parse_exit_code, AirlockCapabilities, ChannelClosed, ChannelConfig, Event, Flag,
    HandshakeComplete, HandshakeRequest, HandshakeResponse, MessageType, OpenDataChannelInput,
    PayloadType, ProcessedClientAction, ReliableChannel, Role, SessionTypeRequest, SizeData,
};

use crate::api::{ApiClient, StreamGrant};
use crate::ws::{connect_data as connect, DataWs as WsStream, Message, SplitWs};

/// Airlock-only flag value: the client's input ended (sent only when negotiated `no_pty`).
pub const FLAG_INPUT_EOF: u32 = 0x4149_0001;

/// What the caller feeds into a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Keystrokes or piped bytes.
    Data(Bytes),
    /// The terminal's size changed.
    Size {
        /// Columns.
        cols: u32,
        /// Rows.
        rows: u32,
    },
    /// Input ended (a pipe reached EOF).
    Eof,
    /// A Flag payload, e.g. `TerminateSession` when a port forward stops (protocol.md §4.2).
    Flag(Flag),
}

/// What the agent said in the handshake, for callers that adapt to it (port forwarding picks
/// its multiplexing from it).
#[derive(Clone, Debug, PartialEq)]
pub struct HandshakeInfo {
    /// `AgentVersion` of the HandshakeRequest (gates features, protocol.md §6.3).
    pub agent_version: String,
    /// `SessionType` the agent asked for (`Standard_Stream`, `Port`, …).
    pub session_type: String,
    /// The session type's `Properties` (a port session's document properties).
    pub properties: serde_json::Value,
    /// The Airlock capabilities both sides agreed on; `None` with an AWS agent.
    pub airlock: Option<AirlockCapabilities>,
}

/// Things a session reports besides output, when [`SessionOptions::events`] asks for them.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionEvent {
    /// The handshake was answered (sent before any output).
    Handshake(HandshakeInfo),
    /// The agent sent a Flag payload (e.g. `ConnectToPortError`).
    Flag(Flag),
    /// The server's notice for the person (e.g. "this session will end in 1 minute: idle
    /// timeout"); also written to [`Output::Stderr`] unless the agent shows it in a terminal.
    Notice(String),
}

/// Bytes the remote side printed, kept apart by stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Terminal output or standard output.
    Stdout(Bytes),
    /// Standard error (sessions without a PTY).
    Stderr(Bytes),
}

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The remote exit status, when the agent reported one.
    pub exit_code: Option<i32>,
    /// The server's closing text (`channel_closed` Output), often empty.
    pub reason: String,
}

/// Errors that end a session abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The WebSocket could not be opened.
    #[error(transparent)]
    Connect(#[from] crate::ws::WsError),
    /// The server closed the data channel with a reason (e.g. a refused token).
    #[error("the server closed the data channel: {0}")]
    Refused(String),
    /// The connection was lost and could not be resumed.
    #[error("connection to the session lost: {0}")]
    Lost(String),
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The agent stopped acknowledging.
    #[error("the agent stopped responding")]
    Timeout,
}

/// Settings of the client end.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Ask the agent for a shell without a PTY (input is a pipe, not a terminal).
    pub no_pty: bool,
    /// Version reported in the handshake (`ClientVersion`); must be 4 numeric parts.
    pub client_version: String,
    /// TLS for `wss://` stream URLs.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Used to resume after a dropped connection; without it a drop ends the session.
    pub api: Option<ApiClient>,
    /// Largest payload offered to an Airlock agent.
    pub max_payload: u32,
    /// Frames in flight offered to an Airlock agent.
    pub window: u32,
    /// Per-stream credit offered for Airlock's multiplexing of port sessions; 0 offers none
    /// (the session then uses smux v1, as with AWS agents).
    pub mux_window: u32,
    /// Receives [`SessionEvent`]s (the handshake's outcome, flags).
    pub events: Option<mpsc::Sender<SessionEvent>>,
    /// How often a WebSocket ping goes to the gateway (it answers with a pong).
    pub keepalive: Duration,
    /// A connection that has said nothing, not even a pong, for this long is taken for dead
    /// (half-open: the network lost it without a reset) and resumed like a dropped one.
    pub silence_limit: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            no_pty: false,
            client_version: "1.2.9999.0".to_owned(),
            tls: None,
            api: None,
            max_payload: 256 * 1024,
            window: 64,
            mux_window: 0,
            events: None,
            keepalive: Duration::from_secs(15),
            silence_limit: Duration::from_secs(45),
        }
    }
}

async fn open(
    grant: &StreamGrant,
    token: &str,
    client_id: &str,
    opts: &SessionOptions,
) -> Result<WsStream, SessionError> {
    let mut ws = connect(&grant.stream_url, opts.tls.clone()).await?;
    let open = OpenDataChannelInput {
        message_schema_version: "1.0".to_owned(),
        request_id: uuid::Uuid::new_v4().to_string(),
        token_value: token.to_owned(),
        client_id: Some(client_id.to_owned()),
        client_version: Some(opts.client_version.clone()),
        client_instance_id: None,
        agent_version: None,
        platform_type: None,
    };
    let text = serde_json::to_string(&open).map_err(|e| SessionError::Protocol(e.to_string()))?;
    ws.send(Message::Text(text))
        .await
        .map_err(|e| SessionError::Lost(e.to_string()))?;
    Ok(ws)
}

/// Runs a session until it ends. `output` receives every byte the remote side prints.
pub async fn run(
    grant: StreamGrant,
    opts: SessionOptions,
    mut input: mpsc::Receiver<Input>,
    output: mpsc::Sender<Output>,
) -> Result<Outcome, SessionError> {
    let client_id = uuid::Uuid::new_v4().to_string();
    // Writes go through their own task, so this loop always keeps reading (see SplitWs).
    let mut ws = SplitWs::new(open(&grant, &grant.token_value, &client_id, &opts).await?);
    let mut ch = ReliableChannel::new(ChannelConfig::new(Role::Client));
    let mut ready = false;
    let mut negotiated = false;
    let mut exit_code = None;
    let mut pending = Bytes::new();
    let mut pending_ctl: std::collections::VecDeque<(PayloadType, Bytes)> = Default::default();
    let mut input_open = true;
    let mut last_size: Option<(u32, u32)> = None;
    let mut keepalive = tokio::time::interval(opts.keepalive.max(Duration::from_millis(10)));
    let mut last_heard = Instant::now();
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        while let Some(ev) = ch.poll_event() {
            match ev {
                Event::Data {
                    payload_type,
                    payload,
                } => match payload_type {
                    PayloadType::HANDSHAKE_REQUEST => {
                        let req: HandshakeRequest =
                            serde_json::from_slice(&payload).map_err(|e| {
                                SessionError::Protocol(format!("bad HandshakeRequest: {e}"))
                            })?;
                        let ours = AirlockCapabilities {
                            version: AirlockCapabilities::VERSION,
                            max_payload: opts.max_payload,
                            window: opts.window,
                            digest: false,
                            exit_code: true,
                            no_pty: opts.no_pty,
                            mux: u32::from(opts.mux_window > 0),
                            mux_window: opts.mux_window,
                        };
                        let agreed = req.airlock.map(|theirs| ours.negotiate(&theirs));
                        if let Some(events) = &opts.events {
                            let session = req
                                .requested_client_actions
                                .iter()
                                .find(|a| a.action_type == airlock_proto::SESSION_TYPE_ACTION)
                                .and_then(|a| {
                                    serde_json::from_value::<SessionTypeRequest>(
                                        a.action_parameters.clone(),
                                    )
                                    .ok()
                                })
                                .unwrap_or_default();
                            let info = HandshakeInfo {
                                agent_version: req.agent_version.clone(),
                                session_type: session.session_type,
                                properties: session.properties,
                                airlock: agreed,
                            };
                            let _ = events.send(SessionEvent::Handshake(info)).await;
                        }
                        let actions = req
                            .requested_client_actions
                            .iter()
                            .map(|a| ProcessedClientAction {
                                action_type: a.action_type.clone(),
                                action_status: if a.action_type
                                    == airlock_proto::SESSION_TYPE_ACTION
                                {
                                    1
                                } else {
                                    3
                                },
                                action_result: serde_json::Value::Null,
                                error: String::new(),
                            })
                            .collect();
                        let resp = HandshakeResponse {
                            client_version: opts.client_version.clone(),
                            processed_client_actions: actions,
                            errors: None,
                            airlock: agreed,
                        };
                        let body = serde_json::to_vec(&resp)
                            .map_err(|e| SessionError::Protocol(e.to_string()))?;
                        pending_ctl.push_back((PayloadType::HANDSHAKE_RESPONSE, Bytes::from(body)));
                        // Flush the response at AWS limits before switching to the agreed ones.
                        while let Some((pt, p)) = pending_ctl.pop_front() {
                            if ch.send(pt, p.clone(), Instant::now()).is_err() {
                                pending_ctl.push_front((pt, p));
                                break;
                            }
                        }
                        if let Some(caps) = agreed {
                            ch.apply_capabilities(&caps);
                            negotiated = true;
                        }
                    }
                    PayloadType::HANDSHAKE_COMPLETE => {
                        if let Ok(done) = serde_json::from_slice::<HandshakeComplete>(&payload) {
                            if !done.customer_message.is_empty() {
                                let _ = output
                                    .send(Output::Stderr(Bytes::from(format!(
                                        "{}\n",
                                        done.customer_message
                                    ))))
                                    .await;
                            }
                        }
                        ready = true;
                    }
                    PayloadType::OUTPUT | PayloadType::STDERR => {
                        ready = true;
                        let chunk = if payload_type == PayloadType::STDERR {
                            Output::Stderr(payload)
                        } else {
                            Output::Stdout(payload)
                        };
                        if output.send(chunk).await.is_err() {
                            return Ok(Outcome {
                                exit_code,
                                reason: "output closed".into(),
                            });
                        }
                    }
                    PayloadType::EXIT_CODE => exit_code = parse_exit_code(&payload),
                    PayloadType::FLAG => {
                        if let Ok(flag) = Flag::decode(&payload) {
                            match &opts.events {
                                Some(events) => {
                                    let _ = events.send(SessionEvent::Flag(flag)).await;
                                }
                                None if flag == Flag::ConnectToPortError => tracing::warn!(
                                    "the agent could not connect to the destination port"
                                ),
                                None => {}
                            }
                        }
                    }
                    _ => {}
                },
                Event::Control(frame)
                    if frame.message_type.as_str() == airlock_proto::NOTICE_MESSAGE_TYPE =>
                {
                    let pty = !(negotiated && opts.no_pty);
                    if let Some((text, shown)) = parse_notice(&frame.payload) {
                        if let Some(events) = &opts.events {
                            let _ = events.try_send(SessionEvent::Notice(text.clone()));
                        }
                        // In a terminal the agent writes it into the session's output.
                        if !(shown && pty) {
                            let line = if pty {
                                format!("\r\n[airlock] {text}\r\n")
                            } else {
                                format!("airlock: {text}\n")
                            };
                            let _ = output.send(Output::Stderr(Bytes::from(line))).await;
                        }
                    }
                }
                Event::Control(frame) => {
                    if frame.message_type == MessageType::ChannelClosed {
                        let reason = serde_json::from_slice::<ChannelClosed>(&frame.payload)
                            .map(|c| c.output)
                            .unwrap_or_default();
                        ws.close().await;
                        return Ok(Outcome { exit_code, reason });
                    }
                }
                Event::ResendLimitReached => return Err(SessionError::Timeout),
            }
        }

        // Events may have queued frames (a HandshakeResponse): queue and send before waiting.
        let now = Instant::now();
        // Queue what waits for room in the window: control payloads first, then stream bytes.
        while let Some((pt, p)) = pending_ctl.front().cloned() {
            if !ch.can_send() || ch.send(pt, p, now).is_err() {
                break;
            }
            pending_ctl.pop_front();
        }
        if !pending.is_empty() && pending_ctl.is_empty() {
            ch.send_stream(PayloadType::OUTPUT, &mut pending, now);
        }
        let tx_blocked = ws.transmit(&mut ch);

        let deadline = ch.poll_timeout();
        let accepting =
            ready && input_open && pending.is_empty() && pending_ctl.is_empty() && ch.can_send();
        tokio::select! {
            msg = ws.stream.next() => {
                if matches!(msg, Some(Ok(_))) {
                    last_heard = Instant::now();
                }
                match msg {
                    Some(Ok(Message::Binary(b))) => {
                        tracing::trace!(len = b.len(), "frame received");
                        if let Err(e) = ch.handle_bytes(b, Instant::now()) {
                            tracing::debug!("dropping an undecodable frame: {e}");
                        }
                    }
                    Some(Ok(Message::Text(t))) => {
                        // The plugin parses text frames as messages too.
                        let _ = ch.handle_bytes(Bytes::copy_from_slice(t.as_bytes()), Instant::now());
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                        if reason.is_empty() || reason == "Bye" {
                            ws = SplitWs::new(resume(&grant, &client_id, &opts, &reason).await?);
                            last_heard = Instant::now();
                        } else {
                            return Err(SessionError::Refused(reason));
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        ws = SplitWs::new(resume(&grant, &client_id, &opts, &e.to_string()).await?);
                        last_heard = Instant::now();
                    }
                    None => {
                        ws = SplitWs::new(resume(&grant, &client_id, &opts, "connection closed").await?);
                        last_heard = Instant::now();
                    }
                }
            },
            inp = input.recv(), if accepting => match inp {
                Some(Input::Data(b)) => {
                    pending = b;
                    ch.send_stream(PayloadType::OUTPUT, &mut pending, Instant::now());
                }
                Some(Input::Size { cols, rows }) => {
                    if last_size != Some((cols, rows)) {
                        last_size = Some((cols, rows));
                        let body = serde_json::to_vec(&SizeData { cols, rows }).unwrap_or_default();
                        pending_ctl.push_back((PayloadType::SIZE, Bytes::from(body)));
                    }
                }
                Some(Input::Flag(flag)) => {
                    pending_ctl.push_back((PayloadType::FLAG, Bytes::copy_from_slice(&flag.encode())));
                }
                Some(Input::Eof) | None => {
                    input_open = false;
                    if negotiated && opts.no_pty {
                        pending_ctl.push_back((PayloadType::FLAG, Bytes::copy_from_slice(&Flag::Other(FLAG_INPUT_EOF).encode())));
                    } else {
                        // A terminal's end-of-file: the shell sees ^D at its prompt.
                        pending_ctl.push_back((PayloadType::OUTPUT, Bytes::from_static(b"\x04")));
                    }
                }
            },
            _ = sleep_until(deadline) => ch.handle_timeout(Instant::now()),
            _ = room(&ws.tx), if tx_blocked => {}
            _ = keepalive.tick() => {
                let silent = last_heard.elapsed();
                if silent >= opts.silence_limit {
                    let why = format!("no answer from the gateway for {} s (half-open connection)", silent.as_secs());
                    ws = SplitWs::new(resume(&grant, &client_id, &opts, &why).await?);
                    last_heard = Instant::now();
                } else {
                    let _ = ws.tx.try_send(Message::Ping(Bytes::from_static(b"keepalive")));
                }
            }
        }
    }
}

/// The text of a server notice and whether the agent shows it in the session's terminal.
fn parse_notice(payload: &[u8]) -> Option<(String, bool)> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let text: String = v
        .get("Message")?
        .as_str()?
        .chars()
        .filter(|c| !c.is_control())
        .take(1024)
        .collect();
    let shown = v.get("ShownInOutput").and_then(|s| s.as_bool()) == Some(true);
    Some((text, shown))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

async fn resume(
    grant: &StreamGrant,
    client_id: &str,
    opts: &SessionOptions,
    why: &str,
) -> Result<WsStream, SessionError> {
    let Some(api) = &opts.api else {
        return Err(SessionError::Lost(why.to_owned()));
    };
    tracing::info!(
        session_id = grant.session_id,
        "data channel dropped ({why}); resuming"
    );
    let mut delay = Duration::from_millis(150);
    let mut last = String::new();
    for _ in 0..5 {
        // Bounded: a pooled API connection may sit on the same dead path as the data
        // channel; dropping the attempt drops that connection, and the next one dials anew.
        let attempt = tokio::time::timeout(
            opts.silence_limit.max(Duration::from_secs(1)),
            api.resume_session(&grant.session_id),
        )
        .await
        .unwrap_or_else(|_| {
            Err(crate::api::ApiError::Transport {
                endpoint: "ResumeSession".to_owned(),
                message: "no answer".to_owned(),
            })
        });
        match attempt {
            Ok(g) if g.token_value.is_empty() => {
                return Err(SessionError::Lost("the session timed out".into()))
            }
            // Re-dial the original StreamUrl with the new token, as the plugin does.
            Ok(g) => return open(grant, &g.token_value, client_id, opts).await,
            Err(crate::api::ApiError::Service { code, message, .. })
                if code == "DoesNotExistException" =>
            {
                return Err(SessionError::Lost(message));
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    Err(SessionError::Lost(format!("{why}; resume failed: {last}")))
}

/// Resolves when the writer's queue has room (the permit is released at once).
async fn room(tx: &mpsc::Sender<Message>) {
    let _ = tx.reserve().await;
}

impl crate::mux::MuxInput for Output {
    /// Port sessions carry multiplexed bytes on stdout only.
    fn into_mux_bytes(self) -> Option<Bytes> {
        match self {
            Output::Stdout(b) => Some(b),
            Output::Stderr(_) => None,
        }
    }
}

impl From<crate::mux::MuxOut> for Input {
    fn from(m: crate::mux::MuxOut) -> Input {
        match m {
            crate::mux::MuxOut::Data(b) => Input::Data(b),
            crate::mux::MuxOut::Flag(f) => Input::Flag(f),
        }
    }
}
