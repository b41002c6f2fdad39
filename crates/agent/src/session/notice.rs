//! Notices from the gateway (`airlock_notice`): a line for the person at the client, such as
//! "this session ends in one minute". In a terminal session the agent writes it into the
//! session's output, where every client (the AWS plugin included) shows it; the gateway knows
//! the line and does not count it as activity.

use std::time::Instant;

use bytes::Bytes;

use airlock_proto::{Frame, PayloadType, ReliableChannel, NOTICE_MESSAGE_TYPE};

/// Whether `frame` is a notice from the gateway.
pub fn is_notice(frame: &Frame) -> bool {
    frame.message_type.as_str() == NOTICE_MESSAGE_TYPE
}

/// Writes the notice's `Text` into the output of a terminal session (`pty`); a session on
/// pipes carries program output that a notice must not corrupt, so it writes nothing.
pub fn echo(ch: &mut ReliableChannel, frame: &Frame, pty: bool) {
    if !pty {
        return;
    }
    let text = serde_json::from_slice::<serde_json::Value>(&frame.payload)
        .ok()
        .and_then(|v| v.get("Text").and_then(|t| t.as_str()).map(str::to_owned));
    let Some(text) = text.filter(|t| !t.is_empty() && t.len() <= 4096) else {
        return;
    };
    if let Err(e) = ch.send(PayloadType::OUTPUT, Bytes::from(text), Instant::now()) {
        tracing::debug!("notice not shown: {e}");
    }
}
