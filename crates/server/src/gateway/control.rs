//! Control channels: the one WebSocket each agent keeps open to the server
//! (`/v1/control-channel/<InstanceId>`). The server sends a random challenge; the agent
//! answers with an Ed25519 signature over it, proving it holds the key it registered with.
//! After that the server sends `interactive_shell` tasks and `channel_closed` cancellations.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use axum::extract::{ConnectInfo, Path, State, WebSocketUpgrade};
use axum::response::Response;
use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use airlock_proto::{decode, AgentTaskComplete, DecodeOptions, Frame, MessageType, PayloadType};

use super::data::{close_socket_with, read_open_socket};
use super::hub::AgentConn;
use crate::state::AppState;

/// The text the agent signs: domain-separated, bound to its id and this connection's challenge.
pub fn challenge_message(instance_id: &str, challenge: &str) -> String {
    format!("airlock-control-v1\n{instance_id}\n{challenge}")
}

/// Upgrades `/v1/control-channel/{instance_id}`.
pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    Path(instance_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    slot: Option<axum::Extension<Arc<crate::limits::ConnectionSlot>>>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.max_message_size(1024 * 1024)
        .on_upgrade(move |socket| async move {
            let tracker = state.tasks.clone();
            tracker
                .track_future(serve(state, instance_id, peer, socket, slot))
                .await
        })
}

async fn authenticate(
    state: &AppState,
    instance_id: &str,
    socket: &mut WebSocket,
) -> Result<airlock_proto::OpenDataChannelInput, String> {
    use rand::RngCore;
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let challenge = base64::engine::general_purpose::STANDARD.encode(raw);
    let hello = serde_json::json!({ "Challenge": challenge }).to_string();
    socket
        .send(Message::Text(hello.into()))
        .await
        .map_err(|e| format!("websocket error: {e}"))?;
    let open = read_open_socket(socket).await?;
    let inst = state
        .store
        .instance(instance_id)
        .await
        .map_err(|e| format!("store error: {e}"))?
        .ok_or_else(|| "unknown instance".to_owned())?;
    if inst.deregistered_at.is_some() {
        return Err("instance is deregistered".to_owned());
    }
    let key_bytes: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(&inst.public_key)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| "stored public key is malformed".to_owned())?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key_bytes)
        .map_err(|_| "stored public key is malformed".to_owned())?;
    let sig_bytes: [u8; 64] = base64::engine::general_purpose::STANDARD
        .decode(&open.token_value)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| "malformed signature".to_owned())?;
    let sig = ed25519_dalek::Signature::from_bytes(&sig_bytes);
    key.verify_strict(challenge_message(instance_id, &challenge).as_bytes(), &sig)
        .map_err(|_| "bad signature".to_owned())?;
    Ok(open)
}

/// Serves one agent's control channel. `slot` is the connection's place under the server's
/// connection caps: held while the agent is unauthenticated, let go once it proved its key (a
/// fleet's long-lived channels are not what the caps are for).
async fn serve(
    state: Arc<AppState>,
    instance_id: String,
    peer: SocketAddr,
    mut socket: WebSocket,
    slot: Option<axum::Extension<Arc<crate::limits::ConnectionSlot>>>,
) {
    let open = match authenticate(&state, &instance_id, &mut socket).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(%peer, instance_id, "control channel refused: {e}");
            return close_socket_with(socket, 1008, &e).await;
        }
    };
    drop(slot);
    let agent_version = open.agent_version.clone().unwrap_or_default();
    if let Err(e) = state
        .store
        .instance_connected(&instance_id, &agent_version, &peer.ip().to_string())
        .await
    {
        tracing::error!(instance_id, "could not record the agent's connect: {e}");
    }
    let conn_id = state.hub.next_conn_id();
    let cancel = state.shutdown.child_token();
    let (tx, mut rx) = mpsc::channel::<Message>(64);
    state.hub.add_agent(
        &instance_id,
        AgentConn {
            conn_id,
            tx: tx.clone(),
            cancel: cancel.clone(),
        },
    );
    tracing::info!(%peer, instance_id, agent_version, "agent connected");

    let (mut sink, mut stream) = socket.split();
    let writer_cancel = cancel.clone();
    let writer = tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                m = rx.recv() => match m {
                    Some(m) => if sink.send(m).await.is_err() { break },
                    None => break,
                },
                _ = writer_cancel.cancelled() => {
                    while let Ok(m) = rx.try_recv() {
                        if sink.send(m).await.is_err() { break; }
                    }
                    let _ = sink.send(Message::Close(Some(axum::extract::ws::CloseFrame {
                        code: 1008,
                        reason: "disconnected by the server".into(),
                    }))).await;
                    break;
                }
            }
        }
        let _ = sink.close().await;
    });

    let mut last_ping = Instant::now();
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = cancel.cancelled() => break,
        };
        match msg {
            Some(Ok(Message::Binary(b))) => handle_agent_frame(&state, &instance_id, &tx, b).await,
            Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => {
                if last_ping.elapsed() > Duration::from_secs(30) {
                    last_ping = Instant::now();
                    let _ = state.store.instance_ping(&instance_id).await;
                }
            }
            Some(Ok(Message::Text(_))) => {}
            Some(Ok(Message::Close(_))) | None => break,
            Some(Err(e)) => {
                tracing::debug!(instance_id, "control channel read error: {e}");
                break;
            }
        }
    }
    cancel.cancel();
    let _ = writer.await;
    state.hub.remove_agent(&instance_id, conn_id);
    tracing::info!(%peer, instance_id, "agent disconnected");
}

async fn handle_agent_frame(
    state: &Arc<AppState>,
    instance_id: &str,
    tx: &mpsc::Sender<Message>,
    raw: Bytes,
) {
    let frame = match decode(raw, &DecodeOptions::default()) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(instance_id, "malformed frame on the control channel: {e}");
            return;
        }
    };
    if frame.message_type == MessageType::AgentTaskReply {
        // The record of a connection a port session forwarded.
        crate::port_audit::handle_reply(state, instance_id, &frame.payload).await;
        return;
    }
    if frame.message_type != MessageType::AgentTaskComplete {
        return;
    }
    match serde_json::from_slice::<AgentTaskComplete>(&frame.payload) {
        Ok(done) => {
            tracing::debug!(
                instance_id,
                task = done.task_id,
                status = done.final_task_status,
                "task complete"
            );
            let ack = serde_json::json!({
                "SchemaVersion": 1,
                "MessageId": frame.message_id.to_string(),
                "TaskId": done.task_id,
                "Topic": "agent_task_acknowledge",
            });
            let f = Frame::new(
                MessageType::AgentTaskAcknowledge,
                0,
                0,
                PayloadType::NONE,
                Bytes::from(ack.to_string()),
            );
            let _ = tx.try_send(Message::Binary(f.encode(true)));
            if done.final_task_status == "Failed" {
                // An agent speaks for its own sessions only: a task id naming another
                // instance's session (or none) ends nothing.
                match state.store.session(&done.task_id).await {
                    Ok(Some(s)) if s.target == instance_id => {}
                    Ok(_) => {
                        tracing::warn!(
                            instance_id,
                            task = done.task_id,
                            "agent_task_complete for a session that is not this instance's: ignored"
                        );
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(instance_id, "agent_task_complete not checked: {e}");
                        return;
                    }
                }
                // E.g. the run-as user does not exist: the client must hear why, not wait.
                // The agent's words are kept to a sane length in the session's end reason.
                let mut output = done.output.clone();
                if output.len() > 1024 {
                    let mut cut = 1024;
                    while !output.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    output.truncate(cut);
                }
                // The agent says `run-as: …` when the OS user is missing or refused.
                let reason = if output.starts_with("run-as:") {
                    crate::end_reason::EndReason::RunAsFailed(output)
                } else {
                    crate::end_reason::EndReason::AgentRefused(output)
                };
                crate::sessions::end(
                    state,
                    &done.task_id,
                    crate::sessions::End {
                        reason,
                        notify_agent: false,
                    },
                )
                .await;
            }
        }
        Err(e) => tracing::warn!(instance_id, "malformed agent_task_complete: {e}"),
    }
}

/// Sends a session task to a connected agent; false when it is not connected or its queue is full.
pub fn send_task(conn: &AgentConn, payload: &airlock_proto::AgentTaskPayload, topic: &str) -> bool {
    let content = serde_json::to_string(payload).unwrap_or_default();
    let mgs = airlock_proto::MgsPayload {
        content,
        task_id: payload.session_id.clone(),
        topic: topic.to_owned(),
        schema_version: 1,
    };
    let body = serde_json::to_vec(&mgs).unwrap_or_default();
    let frame = Frame::new(
        MessageType::InteractiveShell,
        0,
        0,
        PayloadType::NONE,
        Bytes::from(body),
    );
    conn.tx
        .try_send(Message::Binary(frame.encode(true)))
        .is_ok()
}
