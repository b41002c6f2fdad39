//! Session lifecycle shared by the API and the gateway: status changes, and the one place a
//! session ends (store, relay, tokens, both ends told with `channel_closed`).

use std::sync::Arc;

use axum::extract::ws::Message;
use bytes::Bytes;

use airlock_proto::ChannelClosed;

use crate::state::AppState;

/// How a session ends.
#[derive(Clone, Debug)]
pub struct End {
    /// Why: recorded in the store, shown to the client, written to the audit trail.
    pub reason: crate::end_reason::EndReason,
    /// Whether to tell the agent over its control channel too (it may not have a data channel yet).
    pub notify_agent: bool,
}

/// Updates a live session's status, logging (not failing) on store errors: the data plane
/// must not stop because bookkeeping hiccups.
pub async fn mark_status(state: &Arc<AppState>, session_id: &str, status: &str) {
    if let Err(e) = state.store.set_session_status(session_id, status).await {
        tracing::error!(session_id, "could not record status {status}: {e}");
    }
}

/// Builds the `channel_closed` frame the plugin understands (`Output` empty prints the plain
/// "Exiting session" line), shaped as MGS sends it (epoch-ms CreatedDate, the target as
/// DestinationId).
pub fn channel_closed_frame(session_id: &str, destination: &str, output: &str) -> Bytes {
    ChannelClosed::new(session_id, destination, output)
        .to_frame()
        .encode(true)
}

/// Ends a session exactly once: records it, revokes its tokens, sends `channel_closed` to
/// both data channels (after what they already have queued) and, if asked, to the agent's
/// control channel, then drops the relay.
pub async fn end(state: &Arc<AppState>, session_id: &str, how: End) -> bool {
    let reason = &how.reason;
    let ended = match state.store.end_session(session_id, reason).await {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(session_id, "could not record the end of the session: {e}");
            true
        }
    };
    state.hub.revoke_tokens(session_id);
    state.live.remove(session_id);
    // The plugin prints a non-empty Output as the reason (`SessionId: X : <reason>`); a shell
    // that simply exited has none (the plugin then prints its "Exiting session" line).
    let output = if reason.shown_to_client() {
        reason.message()
    } else {
        String::new()
    };
    // One read of the row serves the channel_closed frames and the audit record.
    let (target, owner) = match state.store.session(session_id).await {
        Ok(Some(s)) => (s.target, s.owner),
        _ => (String::new(), String::new()),
    };
    if let Some(relay) = state.hub.existing_relay(session_id) {
        relay
            .finish(|_| {
                airlock_wire::Message::Binary(channel_closed_frame(session_id, &target, &output))
            })
            .await;
        state.hub.remove_relay(session_id);
    }
    // The relay has finished: the recorder records what was queued before this, then seals.
    state.recordings.end(session_id, &reason.message()).await;
    if how.notify_agent {
        if let Some(agent) = state.hub.agent(&target) {
            let frame = channel_closed_frame(session_id, &target, &output);
            let _ = agent.tx.try_send(Message::Binary(frame));
        }
    }
    if ended {
        tracing::info!(session_id, status = reason.status(), kind = reason.kind(), exit_code = ?reason.exit_code(), "session ended: {}", reason.message());
        let event = crate::store::audit::AuditEvent {
            event: "session-end".into(),
            principal: owner,
            action: "ssm:SessionEnded".into(),
            resource: format!(
                "arn:aws:ssm:{}:{}:session/{session_id}",
                state.config.region, state.config.account_id
            ),
            decision: reason.status().to_owned(),
            statement: reason.message(),
            detail: serde_json::json!({
                "ExitCode": reason.exit_code(),
                "Reason": reason.message(),
                "EndReason": reason.to_json(),
            })
            .to_string(),
            ..Default::default()
        };
        if let Err(e) = state.store.append_audit(&event).await {
            tracing::error!(
                session_id,
                "could not write the session-end audit record: {e}"
            );
        }
    }
    ended
}
