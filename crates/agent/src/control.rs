//! The control channel: the one outbound WebSocket the agent keeps to the server, with
//! reconnects (capped exponential backoff with jitter, so a fleet does not stampede a server
//! that comes back). It proves the agent's identity by signing the server's challenge, then
//! starts a session worker for each `interactive_shell` task and cancels it on `channel_closed`;
//! it also carries the record of every connection a port session forwarded (`agent_task_reply`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use ed25519_dalek::Signer;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use airlock_proto::{
    decode, AgentTaskComplete, AgentTaskPayload, ChannelClosed, DecodeOptions, Frame, MessageType,
    MgsPayload, OpenDataChannelInput, PayloadType, PortConnectionRecord, PORT_CONNECTION_TOPIC,
};

use crate::session::{self, SessionContext, SessionResult};
use crate::state::AgentState;
use crate::AgentConfig;

/// Errors that stop the agent for good (retrying cannot help).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The server does not accept this instance any more.
    #[error("the server refused this agent: {0}")]
    Refused(String),
    /// The local state or settings are unusable.
    #[error("{0}")]
    Setup(String),
}

/// Outcome of one connection.
enum Disconnect {
    /// Worth retrying.
    Retry(String),
    /// Stop.
    Fatal(String),
    /// Shutdown requested.
    Shutdown,
}

/// The server's base URL with the WebSocket scheme.
pub fn ws_base(server: &str) -> String {
    let s = server.trim_end_matches('/');
    if let Some(r) = s.strip_prefix("https://") {
        format!("wss://{r}")
    } else if let Some(r) = s.strip_prefix("http://") {
        format!("ws://{r}")
    } else {
        s.to_owned()
    }
}

/// Runs the agent until `cancel`: keeps the control channel up and serves sessions.
pub async fn run(
    state: AgentState,
    config: AgentConfig,
    cancel: CancellationToken,
) -> Result<(), ControlError> {
    let key = state
        .signing_key()
        .map_err(|e| ControlError::Setup(e.to_string()))?;
    let tls = if state.server.starts_with("https://") {
        Some(
            airlock_client::tls::client_config(state.ca_file.as_deref())
                .map_err(|e| ControlError::Setup(e.to_string()))?,
        )
    } else {
        None
    };
    let run_as = crate::runas::resolve(None, config.run_as.as_deref(), config.allow_root_sessions)
        .map_err(|e| ControlError::Setup(e.to_string()))?;
    tracing::info!(
        instance_id = state.instance_id,
        run_as = run_as.name,
        "agent starting"
    );
    // The operator's destination rules: the command line's and the state file's; a rule that
    // does not parse stops the agent (never skipped: it may be a deny).
    let destinations = std::sync::Arc::new(
        state
            .destination_rules(&config.destinations)
            .map_err(|e| ControlError::Setup(e.to_string()))?,
    );
    // Port sessions' connection records wait here while the control channel is down.
    let (records_tx, mut records_rx) = mpsc::channel::<PortConnectionRecord>(1024);
    let ctx = SessionContext {
        ws_base: ws_base(&state.server),
        instance_id: state.instance_id.clone(),
        tls: tls.clone(),
        run_as,
        max_payload: config.max_payload,
        window: config.window,
        mux_window: config.mux_window,
        records: Some(records_tx),
        destinations,
    };
    let tracker = TaskTracker::new();
    let sessions: Arc<std::sync::Mutex<HashMap<String, CancellationToken>>> = Default::default();
    let mut backoff = config.backoff_initial;
    let result = loop {
        let started = std::time::Instant::now();
        match connect_and_serve(
            &state,
            &key,
            &ctx,
            &tracker,
            &sessions,
            &mut records_rx,
            &cancel,
        )
        .await
        {
            Disconnect::Shutdown => break Ok(()),
            Disconnect::Fatal(why) => break Err(ControlError::Refused(why)),
            Disconnect::Retry(why) => {
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = config.backoff_initial;
                }
                let jitter = rand::thread_rng().gen_range(0.5..1.0);
                let wait = backoff.mul_f64(jitter);
                tracing::warn!(
                    "control channel down ({why}); reconnecting in {:.1} s",
                    wait.as_secs_f64()
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.cancelled() => break Ok(()),
                }
                backoff = (backoff * 2).min(config.backoff_max);
            }
        }
    };
    for (_, c) in sessions.lock().unwrap_or_else(|e| e.into_inner()).drain() {
        c.cancel();
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    result
}

fn is_fatal(reason: &str) -> bool {
    [
        "deregistered",
        "unknown instance",
        "bad signature",
        "malformed",
    ]
    .iter()
    .any(|s| reason.contains(s))
}

async fn connect_and_serve(
    state: &AgentState,
    key: &ed25519_dalek::SigningKey,
    ctx: &SessionContext,
    tracker: &TaskTracker,
    sessions: &Arc<std::sync::Mutex<HashMap<String, CancellationToken>>>,
    records: &mut mpsc::Receiver<PortConnectionRecord>,
    cancel: &CancellationToken,
) -> Disconnect {
    let url = format!(
        "{}/v1/control-channel/{}?role=subscribe&stream=input",
        ctx.ws_base, state.instance_id
    );
    let mut ws = tokio::select! {
        r = airlock_client::ws::connect(&url, ctx.tls.clone()) => match r {
            Ok(ws) => ws,
            Err(e) => return Disconnect::Retry(e.to_string()),
        },
        _ = cancel.cancelled() => return Disconnect::Shutdown,
    };
    // Challenge → signature.
    let challenge = match tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<serde_json::Value>(t.as_str())
            .ok()
            .and_then(|v| {
                v.get("Challenge")
                    .and_then(|c| c.as_str())
                    .map(str::to_owned)
            }),
        Ok(Some(Ok(Message::Close(Some(f))))) => return Disconnect::Retry(f.reason.to_string()),
        _ => None,
    };
    let Some(challenge) = challenge else {
        return Disconnect::Retry("no challenge from the server".into());
    };
    let message = format!("airlock-control-v1\n{}\n{challenge}", state.instance_id);
    let signature =
        base64::engine::general_purpose::STANDARD.encode(key.sign(message.as_bytes()).to_bytes());
    let open = OpenDataChannelInput {
        message_schema_version: "1.0".into(),
        request_id: uuid::Uuid::new_v4().to_string(),
        token_value: signature,
        client_id: None,
        client_version: None,
        client_instance_id: Some(state.instance_id.clone()),
        agent_version: Some(crate::AGENT_VERSION.into()),
        platform_type: Some("linux".into()),
    };
    let Ok(text) = serde_json::to_string(&open) else {
        return Disconnect::Fatal("could not encode the open message".into());
    };
    if let Err(e) = ws.send(Message::Text(text.into())).await {
        return Disconnect::Retry(e.to_string());
    }
    tracing::info!(instance_id = state.instance_id, "control channel open");

    let (done_tx, mut done_rx) = mpsc::channel::<SessionResult>(16);
    let mut ping = tokio::time::interval(Duration::from_secs(20));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Binary(b))) => handle_frame(b, ctx, tracker, sessions, &done_tx, cancel),
                Some(Ok(Message::Close(f))) => {
                    let reason = f.map(|f| f.reason.to_string()).unwrap_or_default();
                    return if is_fatal(&reason) { Disconnect::Fatal(reason) } else { Disconnect::Retry(format!("closed by the server: {reason}")) };
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Disconnect::Retry(e.to_string()),
                None => return Disconnect::Retry("connection closed".into()),
            },
            Some(done) = done_rx.recv() => {
                sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(&done.session_id);
                let report = AgentTaskComplete {
                    schema_version: 1,
                    task_id: done.session_id.clone(),
                    topic: "agent_task_complete".into(),
                    final_task_status: done.status.into(),
                    is_routing_failure: false,
                    aws_account_id: String::new(),
                    instance_id: state.instance_id.clone(),
                    output: done.output,
                    s3_bucket: String::new(),
                    s3_url_suffix: String::new(),
                    cwl_group: String::new(),
                    cwl_stream: String::new(),
                    retry_number: 0,
                };
                if let Ok(body) = serde_json::to_vec(&report) {
                    let frame = Frame::new(MessageType::AgentTaskComplete, 0, 0, PayloadType::NONE, Bytes::from(body));
                    if let Err(e) = ws.send(Message::Binary(frame.encode(true))).await {
                        return Disconnect::Retry(e.to_string());
                    }
                }
            }
            Some(rec) = records.recv() => {
                let report = MgsPayload {
                    content: serde_json::to_string(&rec).unwrap_or_default(),
                    task_id: rec.session_id.clone(),
                    topic: PORT_CONNECTION_TOPIC.into(),
                    schema_version: 1,
                };
                if let Ok(body) = serde_json::to_vec(&report) {
                    let frame = Frame::new(MessageType::AgentTaskReply, 0, 0, PayloadType::NONE, Bytes::from(body));
                    if let Err(e) = ws.send(Message::Binary(frame.encode(true))).await {
                        return Disconnect::Retry(e.to_string());
                    }
                }
            }
            _ = ping.tick() => {
                if let Err(e) = ws.send(Message::Ping(Bytes::new())).await {
                    return Disconnect::Retry(e.to_string());
                }
            }
            _ = cancel.cancelled() => {
                let _ = ws.close(None).await;
                return Disconnect::Shutdown;
            }
        }
    }
}

fn handle_frame(
    raw: Bytes,
    ctx: &SessionContext,
    tracker: &TaskTracker,
    sessions: &Arc<std::sync::Mutex<HashMap<String, CancellationToken>>>,
    done_tx: &mpsc::Sender<SessionResult>,
    cancel: &CancellationToken,
) {
    let frame = match decode(raw, &DecodeOptions::default()) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("malformed frame on the control channel: {e}");
            return;
        }
    };
    match frame.message_type {
        MessageType::InteractiveShell => {
            let task = serde_json::from_slice::<MgsPayload>(&frame.payload)
                .map_err(|e| e.to_string())
                .and_then(|m| {
                    serde_json::from_str::<AgentTaskPayload>(&m.content).map_err(|e| e.to_string())
                });
            let task = match task {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!("malformed session task: {e}");
                    return;
                }
            };
            let token = cancel.child_token();
            sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(task.session_id.clone(), token.clone());
            tracing::info!(
                session_id = task.session_id,
                owner = task.session_owner,
                "session starting"
            );
            let ctx = ctx.clone();
            let done = done_tx.clone();
            tracker.spawn(async move {
                let result = session::run(ctx, task, token).await;
                tracing::info!(session_id = result.session_id, status = result.status, exit_code = ?result.exit_code, "session ended");
                let _ = done.send(result).await;
            });
        }
        MessageType::ChannelClosed => {
            if let Ok(c) = serde_json::from_slice::<ChannelClosed>(&frame.payload) {
                if let Some(t) = sessions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&c.session_id)
                {
                    tracing::info!(session_id = c.session_id, "session cancelled by the server");
                    t.cancel();
                }
            }
        }
        _ => {}
    }
}
