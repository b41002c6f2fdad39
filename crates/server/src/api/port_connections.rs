//! `Airlock.ListPortConnections`: the connections port sessions forwarded (port forwarding and
//! SSH over a session), as agents reported them ([`crate::port_audit`]): who, which session and
//! host, where to, bytes each way, when, how long, how it ended. AWS keeps no such record, so
//! the operation is Airlock's own, on the same endpoint, signing and error shape as the rest.
//!
//! Authorised as `airlock:ListPortConnections` on the session ARN
//! (`arn:aws:ssm:<region>:<account>:session/<SessionId>` when the call names one, `session/*`
//! otherwise), so a policy can let people read the connections of their own sessions only
//! (`session/${aws:username}-*`); each record is shown only if the caller may read its
//! session's, so a `Deny` on some sessions hides them from a wider listing too. Newest first,
//! paged by `NextToken`/`MaxResults`.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{authorize, decode_next_token, encode_next_token, invalid, parse, timestamp};
use super::{ApiError, Caller};
use crate::port_audit::{PortConnection, PortConnectionFilter};
use crate::state::AppState;

/// The policy action of the operation.
pub const ACTION: &str = "airlock:ListPortConnections";
/// `MaxResults` when the caller gives none.
const DEFAULT_MAX_RESULTS: i64 = 100;
/// The largest page.
const MAX_RESULTS: i64 = 1000;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct ListInput {
    session_id: Option<String>,
    target: Option<String>,
    owner: Option<String>,
    since: Option<f64>,
    until: Option<f64>,
    max_results: Option<i64>,
    next_token: Option<String>,
}

fn session_arn(state: &AppState, session_id: &str) -> String {
    format!(
        "arn:aws:ssm:{}:{}:session/{session_id}",
        state.config.region, state.config.account_id
    )
}

/// A filter value, checked for length like the SSM members it mirrors.
fn bounded(v: Option<String>, member: &str, max: usize) -> Result<Option<String>, ApiError> {
    match v {
        Some(s) if s.is_empty() || s.chars().count() > max => Err(invalid(
            &s,
            member,
            &format!("Member must have length between 1 and {max}"),
        )),
        other => Ok(other),
    }
}

/// Epoch seconds (the AWS JSON timestamp) to epoch ms, saturating.
fn millis(secs: f64) -> i64 {
    // `as` saturates on overflow; JSON cannot carry NaN or infinities.
    (secs * 1000.0) as i64
}

/// One record in the operation's output shape.
fn connection_json(r: &PortConnection) -> Value {
    json!({
        "SessionId": r.session_id,
        "Target": r.target,
        "Owner": r.owner,
        "StreamId": r.stream_id,
        "Destination": r.destination,
        "Mode": r.mode,
        "BytesToTarget": r.bytes_to_target,
        "BytesFromTarget": r.bytes_from_target,
        "StartDate": timestamp(r.started_at),
        "EndDate": timestamp(r.started_at.saturating_add(r.duration_ms)),
        "DurationMs": r.duration_ms,
        "EndReason": r.end_reason,
        "Failed": r.failed,
    })
}

/// ListPortConnections: the recorded connections matching `SessionId`, `Target`, `Owner`
/// (a user name or a principal ARN), `Since`/`Until` (epoch seconds, on the start time).
pub async fn list(state: &Arc<AppState>, caller: &Caller, input: Value) -> Result<Value, ApiError> {
    let i: ListInput = parse(input)?;
    let limit = i.max_results.unwrap_or(DEFAULT_MAX_RESULTS);
    if !(1..=MAX_RESULTS).contains(&limit) {
        return Err(invalid(
            &limit.to_string(),
            "maxResults",
            &format!("Member must have value between 1 and {MAX_RESULTS}"),
        ));
    }
    let session_id = bounded(i.session_id, "sessionId", 96)?;
    let target = bounded(i.target, "target", 400)?;
    let owner = bounded(i.owner, "owner", 400)?.map(|o| {
        if o.starts_with("arn:") {
            o
        } else {
            crate::auth::user_arn(&state.config.account_id, &o)
        }
    });
    let before = match &i.next_token {
        Some(t) => Some(decode_next_token(Some(t))?),
        None => None,
    };
    let resource = session_arn(state, session_id.as_deref().unwrap_or("*"));
    authorize(state, caller, ACTION, &resource).await?;
    let filter = PortConnectionFilter {
        session_id,
        target,
        owner,
        since: i.since.map(millis),
        until: i.until.map(millis),
    };
    let mut rows = crate::port_audit::search(&state.store, &filter, before, limit + 1).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let next = if more {
        rows.last().map(|(id, _)| encode_next_token(*id))
    } else {
        None
    };
    let connections: Vec<Value> = rows
        .iter()
        .filter(|(_, r)| {
            crate::authz::allowed_quietly(
                state,
                caller,
                ACTION,
                &crate::authz::Resource::new(session_arn(state, &r.session_id)),
            )
        })
        .map(|(_, r)| connection_json(r))
        .collect();
    let mut out = json!({ "Connections": connections });
    if let Some(n) = next {
        out["NextToken"] = json!(n);
    }
    Ok(out)
}
