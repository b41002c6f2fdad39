//! One session on the host: opens the session's data channel back to the server (outbound),
//! runs the agent end of the handshake, then either starts the shell and pumps bytes both ways
//! through the [`ReliableChannel`] until the shell exits or the server closes the channel, or,
//! for documents whose `sessionType` is `Port`, runs a [`port`] session, and for command
//! documents runs their [`command`] instead of the shell.

pub mod command;
pub mod notice;
pub mod port;
pub mod shell;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use airlock_client::ws::{DataWs as WsStream, Message};
use airlock_proto::{
    exit_code_payload, AgentSessionState, AgentTaskPayload, AirlockCapabilities, ChannelConfig,
    Event, Flag, HandshakeComplete, HandshakeRequest, HandshakeResponse, MessageType,
    OpenDataChannelInput, PayloadType, PortConnectionRecord, ReliableChannel,
    RequestedClientAction, Role, SessionTypeRequest, SizeData,
};

use crate::runas::RunAs;
use shell::Shell;

/// How long the client has to answer the handshake (protocol.md §6.1).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the agent waits for its last output to be acknowledged before it closes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How a session ended, reported on the control channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionResult {
    /// The session.
    pub session_id: String,
    /// `Success` or `Failed`.
    pub status: &'static str,
    /// Shell exit status when it exited.
    pub exit_code: Option<i32>,
    /// Short description.
    pub output: String,
}

/// What a session needs from the agent.
#[derive(Clone, Debug)]
pub struct SessionContext {
    /// `ws://` or `wss://` base of the server.
    pub ws_base: String,
    /// This host.
    pub instance_id: String,
    /// TLS for `wss://`.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Who shells run as.
    pub run_as: RunAs,
    /// Largest payload offered to Airlock clients.
    pub max_payload: u32,
    /// Window offered to Airlock clients.
    pub window: u32,
    /// Per-stream credit offered to Airlock clients for multiplexed port sessions (0: none).
    pub mux_window: u32,
    /// Where port sessions send the record of each forwarded connection (to the server).
    pub records: Option<tokio::sync::mpsc::Sender<PortConnectionRecord>>,
    /// Where port sessions may connect.
    pub destinations: std::sync::Arc<crate::destinations::DestinationRules>,
}

/// Runs a shell session to its end.
pub async fn run(
    mut ctx: SessionContext,
    task: AgentTaskPayload,
    cancel: CancellationToken,
) -> SessionResult {
    let session_id = task.session_id.clone();
    // The server's link-local/metadata rule (a preference) on top of this agent's own.
    ctx.destinations = ctx.destinations.for_session(&task.document_content);
    // The SSMSessionRunAs principal tag, resolved here; a missing user or root fails closed.
    if !task.run_as_user.is_empty() {
        match crate::runas::resolve_requested(&task.run_as_user) {
            Ok(user) => ctx.run_as = user,
            Err(e) => {
                tracing::warn!(session_id, "refusing the session: {e}");
                return SessionResult {
                    session_id,
                    status: "Failed",
                    exit_code: None,
                    output: format!("run-as: {e}"),
                };
            }
        }
    }
    let command = match command::CommandSpec::from_document(&task.document_content) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(session_id, "refusing the session: {e}");
            return SessionResult {
                session_id,
                status: "Failed",
                exit_code: None,
                output: e,
            };
        }
    };
    let what = if command.is_some() {
        "command"
    } else {
        "shell"
    };
    match run_inner(&ctx, &task, command.as_ref(), cancel).await {
        Ok(code) => SessionResult {
            session_id,
            status: "Success",
            exit_code: code,
            output: code
                .map(|c| format!("{what} exited with status {c}"))
                .unwrap_or_else(|| "session closed".into()),
        },
        Err(e) => {
            tracing::warn!(session_id, "session failed: {e:#}");
            SessionResult {
                session_id,
                status: "Failed",
                exit_code: None,
                output: e.to_string(),
            }
        }
    }
}

pub(crate) async fn send_all(ws: &mut WsStream, ch: &mut ReliableChannel) -> anyhow::Result<()> {
    let now = Instant::now();
    let mut wrote = false;
    while let Some(frame) = ch.poll_transmit(now) {
        ws.feed(Message::Binary(frame)).await?;
        wrote = true;
    }
    if wrote {
        ws.flush().await?;
    }
    Ok(())
}

pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

fn state_frame(session_id: &str, state: &str, exit_code: Option<i32>) -> airlock_proto::Frame {
    state_frame_with_error(session_id, state, exit_code, None)
}

/// `agent_session_state`, with Airlock's extra keys: `ExitCode` (the gateway records it) and
/// `Error` (the session failed; the gateway shows it to the client). Other readers ignore them.
fn state_frame_with_error(
    session_id: &str,
    state: &str,
    exit_code: Option<i32>,
    error: Option<&str>,
) -> airlock_proto::Frame {
    let mut frame = AgentSessionState {
        schema_version: 1,
        session_state: state.to_owned(),
        session_id: session_id.to_owned(),
    }
    .to_frame();
    if exit_code.is_some() || error.is_some() {
        let mut v: serde_json::Value = serde_json::from_slice(&frame.payload).unwrap_or_default();
        if let Some(code) = exit_code {
            v["ExitCode"] = serde_json::json!(code);
        }
        if let Some(e) = error {
            v["Error"] = serde_json::json!(e);
        }
        frame.payload = Bytes::from(v.to_string());
    }
    frame
}

/// Whether the session ended because the server closed it.
enum Ended {
    Closed,
    Exited(i32),
}

async fn run_inner(
    ctx: &SessionContext,
    task: &AgentTaskPayload,
    command: Option<&command::CommandSpec>,
    cancel: CancellationToken,
) -> anyhow::Result<Option<i32>> {
    let token = task
        .data_channel_token
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the task carries no data-channel token"))?;
    let path = task.data_channel_url.clone().unwrap_or_else(|| {
        format!(
            "/v1/data-channel/{}?role=publish_subscribe",
            task.session_id
        )
    });
    let url = format!("{}{}", ctx.ws_base, path);
    let mut ws = airlock_client::ws::connect_data(&url, ctx.tls.clone()).await?;
    let open = OpenDataChannelInput {
        message_schema_version: "1.0".into(),
        request_id: uuid::Uuid::new_v4().to_string(),
        token_value: token,
        client_id: Some(String::new()),
        client_version: None,
        client_instance_id: Some(ctx.instance_id.clone()),
        agent_version: None,
        platform_type: None,
    };
    ws.send(Message::Text(serde_json::to_string(&open)?))
        .await?;

    let mut ch = ReliableChannel::new(ChannelConfig::new(Role::Agent));
    ch.send_control(state_frame(&task.session_id, "Connected", None));

    // Port documents name their session type; everything else is a shell.
    let is_port = task
        .document_content
        .get("sessionType")
        .and_then(|t| t.as_str())
        == Some("Port");
    let properties = if is_port {
        task.document_content
            .get("properties")
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    } else {
        serde_json::Value::Null
    };

    // Handshake: the agent asks, the client answers; Airlock clients also answer our offer.
    let offer = AirlockCapabilities {
        version: AirlockCapabilities::VERSION,
        max_payload: ctx.max_payload,
        window: ctx.window,
        digest: false,
        exit_code: true,
        no_pty: false,
        mux: u32::from(ctx.mux_window > 0),
        mux_window: ctx.mux_window,
    };
    let request = HandshakeRequest {
        agent_version: airlock_proto::AGENT_VERSION.to_owned(),
        requested_client_actions: vec![RequestedClientAction::session_type(&SessionTypeRequest {
            session_type: match command {
                _ if is_port => "Port",
                Some(c) => c.session_type(),
                None => "Standard_Stream",
            }
            .into(),
            properties: properties.clone(),
        })],
        airlock: Some(offer),
    };
    let started = Instant::now();
    ch.send(
        PayloadType::HANDSHAKE_REQUEST,
        Bytes::from(serde_json::to_vec(&request)?),
        started,
    )?;
    let agreed: Option<AirlockCapabilities>;
    let client_version: String;
    let mut size = (80u16, 24u16);
    let deadline = started + HANDSHAKE_TIMEOUT;
    'handshake: loop {
        send_all(&mut ws, &mut ch).await?;
        while let Some(ev) = ch.poll_event() {
            match ev {
                Event::Data {
                    payload_type: PayloadType::HANDSHAKE_RESPONSE,
                    payload,
                } => {
                    let resp: HandshakeResponse = serde_json::from_slice(&payload)
                        .map_err(|e| anyhow::anyhow!("malformed HandshakeResponse: {e}"))?;
                    tracing::debug!(client_version = resp.client_version, "handshake answered");
                    agreed = resp.airlock.map(|theirs| offer.negotiate(&theirs));
                    client_version = resp.client_version;
                    break 'handshake;
                }
                Event::Data {
                    payload_type: PayloadType::SIZE,
                    payload,
                } => {
                    if let Ok(s) = serde_json::from_slice::<SizeData>(&payload) {
                        size = (clamp(s.cols), clamp(s.rows));
                    }
                }
                // Stream data before the handshake completes is acked and dropped (§6.1).
                Event::Data { .. } => {}
                Event::Control(f) if f.message_type == MessageType::ChannelClosed => {
                    return Ok(None)
                }
                Event::Control(_) => {}
                Event::ResendLimitReached => anyhow::bail!("the client stopped acknowledging"),
            }
        }
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Binary(b))) => { let _ = ch.handle_bytes(b, Instant::now()); }
                Some(Ok(Message::Close(_))) | None => anyhow::bail!("the data channel closed during the handshake"),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(_)) => {}
            },
            _ = sleep_until(ch.poll_timeout()) => ch.handle_timeout(Instant::now()),
            _ = tokio::time::sleep_until(deadline.into()) => anyhow::bail!("no handshake response within 15 s"),
            _ = cancel.cancelled() => return Ok(None),
        }
    }
    let no_pty = agreed.is_some_and(|a| a.no_pty);
    let send_exit = agreed.is_some_and(|a| a.exit_code);
    let complete = HandshakeComplete {
        handshake_time_to_complete: i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX),
        customer_message: String::new(),
    };
    ch.send(
        PayloadType::HANDSHAKE_COMPLETE,
        Bytes::from(serde_json::to_vec(&complete)?),
        Instant::now(),
    )?;
    if let Some(caps) = &agreed {
        ch.apply_capabilities(caps);
    }

    if is_port {
        return run_port(
            ctx,
            task,
            ws,
            &mut ch,
            &properties,
            &client_version,
            agreed,
            cancel,
        )
        .await;
    }

    // Non-interactive commands always keep stderr apart when the document asks, and report
    // their status as ExitCode then (AWS clients read it too); shells do for Airlock clients.
    let (mut sh, stderr_apart, send_exit) = match command {
        Some(c) if !c.interactive => (
            command::spawn_pipes(&ctx.run_as, c, no_pty)?,
            c.separate_output,
            send_exit || c.separate_output,
        ),
        Some(c) => (
            shell::spawn_pty_command(&ctx.run_as, size.0, size.1, Some(&c.commands))?,
            false,
            send_exit,
        ),
        None => {
            let mut sh = if no_pty {
                shell::spawn_pipes(&ctx.run_as)?
            } else {
                shell::spawn_pty(&ctx.run_as, size.0, size.1)?
            };
            // The preferences' shell profile runs first, typed into the shell as AWS does.
            if let Some(profile) = command::shell_profile(&task.document_content) {
                sh.write_input(format!("{profile}\n").as_bytes()).await.ok();
            }
            (sh, send_exit, send_exit)
        }
    };
    let ended = pump(&mut ws, &mut ch, &mut sh, cancel, stderr_apart).await?;
    let code = match ended {
        Ended::Closed => {
            sh.kill();
            let _ = tokio::time::timeout(Duration::from_secs(2), sh.child.wait()).await;
            let _ = ws.close(None).await;
            return Ok(None);
        }
        Ended::Exited(code) => code,
    };
    if send_exit {
        let _ = ch.send(
            PayloadType::EXIT_CODE,
            exit_code_payload(code),
            Instant::now(),
        );
    }
    conclude(&mut ws, &mut ch, &task.session_id, Some(code), None).await?;
    Ok(Some(code))
}

/// Runs a port session after the handshake, then ends it like a shell session: drained,
/// `Terminating` (with the error, if any), and the channel closed.
#[allow(clippy::too_many_arguments)]
async fn run_port(
    ctx: &SessionContext,
    task: &AgentTaskPayload,
    ws: WsStream,
    ch: &mut ReliableChannel,
    properties: &serde_json::Value,
    client_version: &str,
    agreed: Option<AirlockCapabilities>,
    cancel: CancellationToken,
) -> anyhow::Result<Option<i32>> {
    let (end, ws) = match port::params(properties) {
        Err(e) => (port::PortEnd::Finished(Some(e)), Some(ws)),
        Ok(p) => {
            let mode = port::Mode::choose(&p, client_version, agreed.as_ref());
            tracing::info!(
                session_id = task.session_id,
                mode = mode.name(),
                target = airlock_client::mux::display_target(&p.host, p.port),
                "port session starting"
            );
            let recorder = port::Recorder {
                tx: ctx.records.clone(),
                session_id: task.session_id.clone(),
                owner: task.session_owner.clone(),
                mode: mode.name(),
            };
            let window = agreed.map_or(0, |a| a.mux_window);
            port::run(
                ws,
                ch,
                &p,
                mode,
                window,
                recorder,
                &ctx.destinations,
                cancel,
            )
            .await?
        }
    };
    match (end, ws) {
        (port::PortEnd::Closed, Some(mut ws)) => {
            let _ = ws.close(None).await;
            Ok(None)
        }
        (port::PortEnd::Closed, None) => Ok(None),
        (port::PortEnd::Finished(error), ws) => {
            if let Some(e) = &error {
                tracing::warn!(session_id = task.session_id, "port session failed: {e}");
            }
            if let Some(mut ws) = ws {
                conclude(&mut ws, ch, &task.session_id, None, error.as_deref()).await?;
            }
            match error {
                Some(e) => Err(anyhow::anyhow!(e)),
                None => Ok(None),
            }
        }
    }
}

/// Waits (bounded) for the client to acknowledge everything, tells the gateway the session is
/// over, and waits briefly for it to close the channel.
async fn conclude(
    ws: &mut WsStream,
    ch: &mut ReliableChannel,
    session_id: &str,
    code: Option<i32>,
    error: Option<&str>,
) -> anyhow::Result<()> {
    let drain_until = Instant::now() + DRAIN_TIMEOUT;
    while ch.outstanding() > 0 && Instant::now() < drain_until {
        send_all(ws, ch).await?;
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Binary(b))) => { let _ = ch.handle_bytes(b, Instant::now()); }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = sleep_until(ch.poll_timeout()) => ch.handle_timeout(Instant::now()),
            _ = tokio::time::sleep_until(drain_until.into()) => break,
        }
        while ch.poll_event().is_some() {}
    }
    ch.send_control(state_frame_with_error(
        session_id,
        "Terminating",
        code,
        error,
    ));
    send_all(ws, ch).await?;
    // The gateway answers with channel_closed; wait briefly for it so nothing is cut short.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    Ok(())
}

fn clamp(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX).max(1)
}

/// Moves bytes between the shell and the channel until one side ends.
async fn pump(
    ws: &mut WsStream,
    ch: &mut ReliableChannel,
    sh: &mut Shell,
    cancel: CancellationToken,
    stderr_apart: bool,
) -> anyhow::Result<Ended> {
    let max = ch.config().max_payload.max(1024);
    let mut out_buf = BytesMut::with_capacity(max);
    let mut err_buf = BytesMut::with_capacity(4096);
    let mut out_open = true;
    let mut err_open = sh.stderr.is_some();
    let mut exit: Option<i32> = None;
    let mut pending = Bytes::new();
    let mut pending_type = PayloadType::OUTPUT;
    // Client bytes not yet taken by the terminal or pipe. While any wait, no further event is
    // taken from the channel, which then stops acknowledging input (the client's window
    // fills): the command's own pace holds the client back, while its output keeps flowing.
    let mut input_backlog = Bytes::new();
    loop {
        let now = Instant::now();
        if !pending.is_empty() {
            ch.send_stream(pending_type, &mut pending, now);
        }
        send_all(ws, ch).await?;
        while input_backlog.is_empty() {
            let Some(ev) = ch.poll_event() else { break };
            match ev {
                Event::Data {
                    payload_type: PayloadType::OUTPUT,
                    payload,
                } => {
                    if sh.takes_bytes() {
                        input_backlog = payload;
                    } else {
                        sh.write_input(&payload).await.ok();
                    }
                }
                Event::Data {
                    payload_type: PayloadType::SIZE,
                    payload,
                } => {
                    if let Ok(s) = serde_json::from_slice::<SizeData>(&payload) {
                        sh.resize(clamp(s.cols), clamp(s.rows));
                    }
                }
                Event::Data {
                    payload_type: PayloadType::FLAG,
                    payload,
                } => {
                    if let Ok(Flag::Other(v)) = Flag::decode(&payload) {
                        if v == airlock_client::session::FLAG_INPUT_EOF {
                            sh.close_input();
                        }
                    }
                }
                Event::Data { .. } => {}
                Event::Control(f) if f.message_type == MessageType::ChannelClosed => {
                    return Ok(Ended::Closed)
                }
                Event::Control(f) if notice::is_notice(&f) => {
                    notice::echo(ch, &f, sh.stderr.is_none())
                }
                Event::Control(_) => {}
                Event::ResendLimitReached => anyhow::bail!("the client stopped acknowledging"),
            }
        }
        // What the events queued (a notice's line) goes out now, not with the next output.
        send_all(ws, ch).await?;
        if !out_open && !err_open && pending.is_empty() {
            if let Some(code) = exit {
                return Ok(Ended::Exited(code));
            }
        }
        let can_read = pending.is_empty() && ch.can_send();
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if let Err(e) = ch.handle_bytes(b, Instant::now()) {
                        tracing::debug!("dropping an undecodable frame: {e}");
                    }
                }
                Some(Ok(Message::Close(_))) | None => return Ok(Ended::Closed),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(_)) => {}
            },
            r = read_chunk(&mut sh.output, &mut out_buf, max), if can_read && out_open => match r {
                Some(data) => { pending = data; pending_type = PayloadType::OUTPUT; }
                None => out_open = false,
            },
            r = read_chunk_opt(&mut sh.stderr, &mut err_buf, max), if can_read && err_open => match r {
                Some(data) => { pending = data; pending_type = if stderr_apart { PayloadType::STDERR } else { PayloadType::OUTPUT }; }
                None => err_open = false,
            },
            w = sh.input.write_some(&input_backlog), if !input_backlog.is_empty() => match w {
                Ok(n) => {
                    let n = n.min(input_backlog.len());
                    bytes::Buf::advance(&mut input_backlog, n);
                }
                // The command closed its input: what the client still sends is dropped.
                Err(_) => input_backlog.clear(),
            },
            st = sh.child.wait(), if exit.is_none() => {
                let code = st.map(shell::exit_code).unwrap_or(255);
                exit = Some(code);
            },
            _ = tokio::time::sleep(Duration::from_millis(300)), if exit.is_some() && (out_open || err_open) && can_read => {
                // The shell is gone and its output quiet for a while (not merely waiting for
                // room in the window); whatever still holds its terminal or pipes (a
                // background job) must not hold the session.
                out_open = false;
                err_open = false;
            },
            _ = sleep_until(ch.poll_timeout()) => ch.handle_timeout(Instant::now()),
            _ = cancel.cancelled() => return Ok(Ended::Closed),
        }
    }
}

/// One read into a reused buffer; `None` at end of file (EIO on a PTY whose shell exited).
async fn read_chunk<R: tokio::io::AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Option<Bytes> {
    buf.reserve(max);
    match r.read_buf(buf).await {
        Ok(0) | Err(_) => None,
        Ok(mut last) => {
            // A full terminal buffer (4 KiB) means more is waiting: take what is ready now, up
            // to one payload, so bulk output goes in few frames (and few acks). A keystroke's
            // echo is a short read and still goes out at once.
            while last >= 4096 && buf.len() < max {
                match futures_util::FutureExt::now_or_never(r.read_buf(buf)) {
                    Some(Ok(n)) if n > 0 => last = n,
                    _ => break,
                }
            }
            Some(buf.split().freeze())
        }
    }
}

async fn read_chunk_opt(
    r: &mut Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    buf: &mut BytesMut,
    max: usize,
) -> Option<Bytes> {
    match r {
        Some(r) => read_chunk(r.as_mut(), buf, max).await,
        None => std::future::pending().await,
    }
}
