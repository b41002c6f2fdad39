//! Crash recovery: recordings a previous run never sealed (the server was killed or stopped
//! mid-session) are completed on start. Spooled chunks are uploaded first; a spooled manifest
//! (the session ended but the store was down) is uploaded as it is; otherwise the stored chunks'
//! valid prefix is sealed with a manifest marked `recovered: true`. A store that is down is
//! retried until it answers or the server stops. Once sealed, the recording's text is indexed
//! for search again from its stored chunks: the previous run may have died with chunks' text
//! still queued for the index (`Store::queue_recording_text` is in memory).

use std::sync::Arc;
use std::time::Duration;

use super::objects::{parse_chunk_name, MANIFEST_NAME};
use super::RecordingError;
use crate::state::AppState;
use crate::store::recordings::RecordingRow;

/// Starts recovering what the previous run left unsealed, in the background.
pub fn spawn(state: Arc<AppState>) {
    let tasks = state.tasks.clone();
    tasks.spawn(async move {
        let rows = match state.store.unsealed_recordings().await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot list unsealed recordings: {e}");
                return;
            }
        };
        let mut pending = rows;
        let mut delay = Duration::from_millis(500);
        while !pending.is_empty() {
            let mut left = Vec::new();
            for row in pending {
                match recover_one(&state, &row).await {
                    Ok(chunks) => {
                        tracing::info!(
                            session_id = row.session_id,
                            chunks,
                            "recording sealed by crash recovery"
                        );
                        reindex(&state, &row).await;
                    }
                    Err(e) => {
                        tracing::warn!(
                            session_id = row.session_id,
                            "recording not recovered yet: {e}"
                        );
                        left.push(row);
                    }
                }
            }
            pending = left;
            if pending.is_empty() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = state.shutdown.cancelled() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    });
}

/// Completes one recording; returns how many chunks its manifest covers.
pub async fn recover_one(state: &AppState, row: &RecordingRow) -> Result<u64, RecordingError> {
    let recordings = &state.recordings;
    let objects = recordings.objects(&row.location)?;
    let id = &row.session_id;
    let spool_dir = recordings.spool_dir(id);
    // Spooled chunks first, in index order; then the spooled manifest, if the session ended.
    let mut spooled: Vec<(u64, std::path::PathBuf)> = Vec::new();
    let mut spooled_manifest = None;
    if let Ok(mut dir) = tokio::fs::read_dir(&spool_dir).await {
        while let Ok(Some(e)) = dir.next_entry().await {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == MANIFEST_NAME {
                spooled_manifest = Some(e.path());
            } else if let Some(i) = parse_chunk_name(&name) {
                spooled.push((i, e.path()));
            }
        }
    }
    spooled.sort();
    for (i, path) in &spooled {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| RecordingError::Store(format!("spool {}: {e}", path.display())))?;
        let len = bytes.len() as u64;
        objects
            .put(id, &super::objects::chunk_name(*i), bytes)
            .await?;
        let _ = tokio::fs::remove_file(path).await;
        recordings.spool().give_back(len);
    }
    if let Some(path) = spooled_manifest {
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| RecordingError::Store(format!("spool {}: {e}", path.display())))?;
        let chunks = serde_json::from_slice::<airlock_recording::Manifest>(&bytes)
            .map(|m| m.chunks)
            .unwrap_or_default();
        objects.put(id, MANIFEST_NAME, bytes).await?;
        let _ = tokio::fs::remove_file(&path).await;
        let _ = tokio::fs::remove_dir(&spool_dir).await;
        state
            .store
            .seal_recording(id, chunks, 0, false)
            .await
            .map_err(|e| RecordingError::Store(e.to_string()))?;
        return Ok(chunks);
    }
    let _ = tokio::fs::remove_dir(&spool_dir).await;
    // A manifest already in the store (sealed, but the row was not updated before the crash).
    if let Some(m) = objects.get(id, MANIFEST_NAME).await? {
        let chunks = serde_json::from_slice::<airlock_recording::Manifest>(&m)
            .map(|m| m.chunks)
            .unwrap_or_default();
        state
            .store
            .seal_recording(id, chunks, 0, false)
            .await
            .map_err(|e| RecordingError::Store(e.to_string()))?;
        return Ok(chunks);
    }
    let mut stored = Vec::new();
    let mut bytes = 0u64;
    for i in objects.list_chunks(id).await? {
        if let Some(b) = objects.get(id, &super::objects::chunk_name(i)).await? {
            bytes += b.len() as u64;
            stored.push((i, b));
        }
    }
    let ended = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let manifest = airlock_recording::seal_stored(
        id,
        &stored,
        &ended,
        "server restarted before the recording was sealed",
        recordings.seed(),
    );
    objects.put(id, MANIFEST_NAME, manifest.to_bytes()).await?;
    state
        .store
        .seal_recording(id, manifest.chunks, bytes, true)
        .await
        .map_err(|e| RecordingError::Store(e.to_string()))?;
    Ok(manifest.chunks)
}

/// Indexes a recovered recording's text for search again, chunk by chunk in order (a word cut
/// between two chunks is joined as when it was recorded): the session's old rows are dropped
/// first, since which of its chunks the crashed run indexed is unknown. Best effort: a chunk
/// that cannot be read or parsed is left out and said in the log; the recording is unaffected.
async fn reindex(state: &AppState, row: &RecordingRow) {
    let id = &row.session_id;
    let result = async {
        let objects = state.recordings.objects(&row.location)?;
        let indices = objects.list_chunks(id).await?;
        state
            .store
            .forget_recording_text(id)
            .await
            .map_err(|e| RecordingError::Store(e.to_string()))?;
        for i in indices {
            let Some(bytes) = objects.get(id, &super::objects::chunk_name(i)).await? else {
                continue;
            };
            let body = match airlock_recording::export(&[bytes]) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(session_id = id, chunk = i, "not indexed: {e}");
                    continue;
                }
            };
            // Chunk 0 starts with the asciicast header line; the others are events only and
            // parse behind a stand-in header.
            let text = if i == 0 {
                body
            } else {
                format!("{{\"version\":2,\"width\":80,\"height\":24}}\n{body}")
            };
            let events = match airlock_recording::parse_cast(&text) {
                Ok((_, events)) => events,
                Err(e) => {
                    tracing::warn!(session_id = id, chunk = i, "not indexed: {e}");
                    continue;
                }
            };
            let rows = crate::store::search::index_rows(&events);
            // The index queue is bounded; recovery is in no hurry, so it waits for room.
            let mut tries = 0;
            while !state.store.queue_recording_text(id, rows.clone()) {
                tries += 1;
                if tries > 100 {
                    tracing::warn!(session_id = id, chunk = i, "not indexed: queue full");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok::<_, RecordingError>(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(session_id = id, "recording text not indexed again: {e}");
    }
}
