//! `Airlock.GetSessionRecording`: a session's recorded chunks (a page at a time), its signed
//! manifest once sealed, and the public key to verify them with.
//!
//! Authorised per session: the session's owner (the same user, by id) reads their own; anyone
//! else needs `airlock:GetSessionRecording` on the session's ARN; an explicit Deny wins over
//! ownership. Every read decision is an audit record of its own (`recording-read`).

use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{invalid, ApiError, Caller};
use crate::state::AppState;
use crate::store::Session;

/// The IAM action that lets someone read recordings of sessions they do not own.
pub const ACTION: &str = "airlock:GetSessionRecording";
/// Most chunk bytes one page carries (before base64).
pub const PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Most chunks one page carries.
pub const MAX_CHUNKS: u64 = 1000;

/// GetSessionRecording input.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetRecordingInput {
    session_id: Option<String>,
    from_chunk: Option<u64>,
    max_chunks: Option<u64>,
}

/// How a read was decided, without an audit record: owners may read their own unless an
/// explicit Deny says otherwise; anyone else needs the action allowed. Search results (which
/// sessions to show) use this; [`authorize_recording_read`] adds the audit record.
pub fn may_read_recording(
    state: &AppState,
    caller: &Caller,
    session: Option<&Session>,
    resource: &crate::authz::Resource,
) -> (bool, String) {
    let ctx = crate::authz::context(
        state,
        &caller.principal,
        &caller.source_ip.to_string(),
        caller.secure,
        ACTION,
        resource,
    );
    let d = crate::authz::decide(&caller.principal, &ctx);
    if matches!(d, airlock_policy::Decision::ExplicitDeny { .. }) {
        return (false, d.explain());
    }
    if session.is_some_and(|s| s.owner_user_id == caller.user.user_id) {
        return (true, "the caller owns the session".to_owned());
    }
    (d.is_allowed(), d.explain())
}

/// Authorises reading `session_id`'s recording and writes the audit record of the decision.
/// Unknown sessions are refused exactly as others' are unless the caller could read them, so
/// the answer does not tell who may probe which ids exist.
pub async fn authorize_recording_read(
    state: &AppState,
    caller: &Caller,
    session_id: &str,
) -> Result<Session, ApiError> {
    if session_id.is_empty() || session_id.len() > 96 {
        return Err(invalid(
            session_id,
            "sessionId",
            "Member must have length between 1 and 96",
        ));
    }
    let session = state.store.session(session_id).await?;
    let resource = super::sessions::session_resource(state, session_id).await?;
    let (allowed, why) = may_read_recording(state, caller, session.as_ref(), &resource);
    let event = crate::store::audit::AuditEvent {
        event: "recording-read".into(),
        principal: caller.principal.arn.clone(),
        source_ip: caller.source_ip.to_string(),
        action: ACTION.into(),
        resource: resource.arn.clone(),
        decision: if allowed {
            "Allow".into()
        } else {
            "Deny".into()
        },
        statement: why,
        request_id: caller.request_id.clone(),
        user_agent: caller.user_agent.clone(),
        detail: String::new(),
    };
    crate::authz::record_for(state, caller, &event).await?;
    if !allowed {
        return Err(ApiError::client(
            "AccessDeniedException",
            format!(
                "User: {} is not authorized to perform: {ACTION} on resource: {}",
                caller.principal.arn, resource.arn
            ),
        ));
    }
    session.ok_or_else(|| {
        ApiError::client(
            "DoesNotExistException",
            format!("Session {session_id} does not exist."),
        )
    })
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError {
        status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
        code: "RecordingUnavailableException",
        message: format!("The recording store cannot be read now: {e}"),
    }
}

/// One chunk's bytes: from where it waits for the store when it does, else (or when its spool
/// file was uploaded and removed meanwhile) from the store; `None` when neither has it.
async fn chunk_bytes(
    objects: &crate::recording::objects::Objects,
    id: &str,
    index: u64,
    local: Option<&crate::recording::Local>,
) -> Result<Option<Vec<u8>>, ApiError> {
    match local {
        Some(crate::recording::Local::Mem(b)) => return Ok(Some(b.to_vec())),
        Some(crate::recording::Local::File(path)) => match tokio::fs::read(path).await {
            Ok(b) => return Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(unavailable(format!("spool {}: {e}", path.display()))),
        },
        None => {}
    }
    objects
        .get(id, &crate::recording::objects::chunk_name(index))
        .await
        .map_err(unavailable)
}

/// GetSessionRecording: `{SessionId, FromChunk?, MaxChunks?}` → `{SessionId, Recorded, Live,
/// Sealed, Recovered, Chunks:[{Index, Data}], Manifest, PublicKey, NextChunk}`. `NextChunk` is
/// the index to ask for next: set while more chunks are stored, and always while the session
/// is live (poll it to follow); `null` once a sealed recording has been read to its end, which
/// is also the page that carries the manifest.
pub async fn get(
    state: &Arc<AppState>,
    caller: &Caller,
    input: GetRecordingInput,
) -> Result<Value, ApiError> {
    let id = input.session_id.clone().unwrap_or_default();
    let session = authorize_recording_read(state, caller, &id).await?;
    let live = session.status != "Terminated" && session.status != "Failed";
    let public_key = hex::encode(state.recordings.public_key());
    let Some(row) = state.store.recording(&id).await? else {
        return Ok(json!({
            "SessionId": id, "Recorded": false, "Live": live, "Sealed": false, "Recovered": false,
            "Chunks": [], "Manifest": null, "PublicKey": public_key, "NextChunk": null,
        }));
    };
    let from = input.from_chunk.unwrap_or(0);
    let max = input.max_chunks.unwrap_or(100).clamp(1, MAX_CHUNKS);
    let objects = state
        .recordings
        .objects(&row.location)
        .map_err(unavailable)?;
    // Chunks still waiting for the store (the store is down or behind: in the uploader's
    // queue or the spool) are served from where they wait, so a recording can be read while
    // its store is down. Looked at before the store is listed: a chunk uploaded in between is
    // then in the store's list, and one in both places is served once.
    let local = state.recordings.local_chunks(&id).await;
    let indices: Vec<u64> = match objects.list_chunks(&id).await {
        Ok(stored) => {
            let mut all: std::collections::BTreeSet<u64> = stored.into_iter().collect();
            all.extend(local.keys().copied());
            all.into_iter().collect()
        }
        // The store does not answer. Chunks are uploaded in order, so every chunk it holds
        // comes before the first one waiting here: from there on the local ones are all
        // there is; before it, only the store knows.
        Err(e) => match local.keys().next() {
            Some(&first) if from >= first => local.keys().copied().collect(),
            _ => return Err(unavailable(e)),
        },
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut chunks = Vec::new();
    let mut bytes = 0usize;
    let mut next = None;
    for &i in indices.iter().filter(|i| **i >= from) {
        if chunks.len() as u64 >= max || (bytes >= PAGE_BYTES && !chunks.is_empty()) {
            next = Some(i);
            break;
        }
        let Some(data) = chunk_bytes(&objects, &id, i, local.get(&i)).await? else {
            continue;
        };
        if bytes + data.len() > PAGE_BYTES && !chunks.is_empty() {
            next = Some(i);
            break;
        }
        bytes += data.len();
        chunks.push(json!({ "Index": i, "Data": b64.encode(&data) }));
    }
    let last = chunks
        .last()
        .and_then(|c| c["Index"].as_u64())
        .map(|i| i + 1);
    let manifest = if next.is_none() && row.sealed {
        objects
            .get(&id, crate::recording::objects::MANIFEST_NAME)
            .await
            .map_err(unavailable)?
            .map(|m| b64.encode(m))
    } else {
        None
    };
    let next = next.or_else(|| (live || !row.sealed).then(|| last.unwrap_or(from)));
    Ok(json!({
        "SessionId": id,
        "Recorded": true,
        "Live": live,
        "Sealed": row.sealed,
        "Recovered": row.recovered,
        "Chunks": chunks,
        "Manifest": manifest,
        "PublicKey": public_key,
        "NextChunk": next,
    }))
}
