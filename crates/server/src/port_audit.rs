//! The record of every connection forwarded by a port session (port forwarding and SSH over a
//! session, which the incumbent never logs). Agents report each connection when it ends, on
//! their control channel (`agent_task_reply`, topic [`PORT_CONNECTION_TOPIC`]); the server
//! checks that the session is one of that agent's, takes the owner from its own session row,
//! logs the record and keeps it in `port_connections` (through one [`Writer`], in batched
//! transactions), where `Airlock.ListPortConnections` ([`crate::api::port_connections`]) reads
//! them back.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::Row;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use airlock_proto::{MgsPayload, PortConnectionRecord, PORT_CONNECTION_TOPIC};

use crate::state::AppState;
use crate::store::{now_ms, Store, StoreError};

/// One stored connection record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortConnection {
    /// The session that carried it.
    pub session_id: String,
    /// Who ran the session (principal ARN).
    pub owner: String,
    /// The managed instance the session ran on.
    pub target: String,
    /// Stream id within the session.
    pub stream_id: i64,
    /// `host:port` the agent connected to.
    pub destination: String,
    /// `airlock-mux`, `smux`, `basic` or `stream`.
    pub mode: String,
    /// Bytes from the client to the destination.
    pub bytes_to_target: i64,
    /// Bytes from the destination to the client.
    pub bytes_from_target: i64,
    /// Epoch ms.
    pub started_at: i64,
    /// Milliseconds.
    pub duration_ms: i64,
    /// How it ended.
    pub end_reason: String,
    /// Whether it ended in an error.
    pub failed: bool,
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Records waiting for the writer before a control channel has to wait for room.
pub const WRITER_QUEUE: usize = 8192;
/// Most records stored in one transaction.
const BATCH: usize = 512;
/// How long the writer gathers records after the first before it commits them: a record is
/// visible this much later at most, and a busy forward costs a commit per window, not per
/// connection.
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(20);
/// Sessions whose owner and target the writer remembers.
const SESSION_CACHE: usize = 4096;

/// The queue to the task that stores records: reports arrive one per forwarded connection
/// (a busy forward ends thousands a second), so they are checked and stored in batches, one
/// transaction each, off the control channel's path. Nothing is dropped: a full queue makes
/// the reporting agent's control channel wait.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<(String, PortConnectionRecord)>,
}

impl Writer {
    /// Starts the writer on `store`. It stops when `shutdown` fires, after storing what was
    /// queued by then.
    pub fn spawn(store: Store, shutdown: CancellationToken) -> Writer {
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        tokio::spawn(write_loop(store, rx, shutdown));
        Writer { tx }
    }

    async fn submit(&self, instance_id: &str, rec: PortConnectionRecord) {
        if self.tx.send((instance_id.to_owned(), rec)).await.is_err() {
            tracing::error!("the port connection writer has stopped; a record was not stored");
        }
    }
}

async fn write_loop(
    store: Store,
    mut rx: mpsc::Receiver<(String, PortConnectionRecord)>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut sessions = SessionCache::default();
    loop {
        let first = tokio::select! {
            r = rx.recv() => r,
            _ = shutdown.cancelled() => None,
        };
        let Some(first) = first else { break };
        batch.push(first);
        // Gather what else arrives within BATCH_WINDOW: one commit for many connections.
        let until = tokio::time::Instant::now() + BATCH_WINDOW;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(r)) => batch.push(r),
                Ok(None) | Err(_) => break,
            }
        }
        store_batch(&store, &mut sessions, &mut batch).await;
    }
    // Store what was reported before the end.
    rx.close();
    while let Ok(r) = rx.try_recv() {
        batch.push(r);
        if batch.len() == BATCH {
            store_batch(&store, &mut sessions, &mut batch).await;
        }
    }
    store_batch(&store, &mut sessions, &mut batch).await;
}

/// The owner and target of recent sessions (they never change), so that a record costs no
/// lookup; forgotten wholesale when it grows past [`SESSION_CACHE`].
#[derive(Default)]
struct SessionCache(HashMap<String, Option<(String, String)>>);

impl SessionCache {
    /// `(owner, target)` of `session_id`, `None` when there is no such session.
    async fn get(&mut self, store: &Store, session_id: &str) -> Option<(String, String)> {
        if let Some(known) = self.0.get(session_id) {
            return known.clone();
        }
        let found = match store.session(session_id).await {
            Ok(s) => s.map(|s| (s.owner, s.target)),
            Err(e) => {
                // Not remembered: the next record asks again.
                tracing::error!(session_id, "cannot look up the session: {e}");
                return None;
            }
        };
        if self.0.len() >= SESSION_CACHE {
            self.0.clear();
        }
        self.0.insert(session_id.to_owned(), found.clone());
        found
    }
}

/// Checks each record against its session, logs it, and stores the batch in one transaction;
/// drains `batch`.
async fn store_batch(
    store: &Store,
    sessions: &mut SessionCache,
    batch: &mut Vec<(String, PortConnectionRecord)>,
) {
    if batch.is_empty() {
        return;
    }
    let mut rows = Vec::with_capacity(batch.len());
    for (instance_id, rec) in batch.drain(..) {
        let Some((owner, target)) = sessions.get(store, &rec.session_id).await else {
            tracing::warn!(
                instance_id,
                session_id = rec.session_id,
                "port connection record for an unknown session; ignored"
            );
            continue;
        };
        if target != instance_id {
            tracing::warn!(
                instance_id,
                session_id = rec.session_id,
                "port connection record for a session that is not this agent's; ignored"
            );
            continue;
        }
        let row = PortConnection {
            session_id: rec.session_id,
            owner,
            target,
            stream_id: i64::from(rec.stream_id),
            destination: rec.destination,
            mode: rec.mode,
            bytes_to_target: clamp(rec.bytes_to_target),
            bytes_from_target: clamp(rec.bytes_from_target),
            started_at: clamp(rec.started_at),
            duration_ms: clamp(rec.duration_ms),
            end_reason: rec.end_reason,
            failed: rec.failed,
        };
        tracing::info!(
            session_id = row.session_id,
            owner = row.owner,
            target = row.target,
            stream = row.stream_id,
            destination = row.destination,
            mode = row.mode,
            bytes_to_target = row.bytes_to_target,
            bytes_from_target = row.bytes_from_target,
            duration_ms = row.duration_ms,
            end = row.end_reason,
            failed = row.failed,
            "port connection"
        );
        rows.push(row);
    }
    // A failed commit (the disk full for a moment, the database busy past its timeout) is
    // tried again before the batch is given up, so a passing fault loses no record.
    let mut delay = std::time::Duration::from_millis(50);
    for attempt in 1..=4 {
        match insert_all(store, &rows).await {
            Ok(()) => return,
            Err(e) if attempt < 4 => {
                tracing::warn!(
                    records = rows.len(),
                    attempt,
                    "storing port connection records failed, retrying: {e}"
                );
                tokio::time::sleep(delay).await;
                delay *= 4;
            }
            Err(e) => tracing::error!(
                records = rows.len(),
                "cannot store port connection records: {e}"
            ),
        }
    }
}

/// Handles an `agent_task_reply` payload from `instance_id`'s control channel: a well-formed
/// port connection record goes to the writer.
pub async fn handle_reply(state: &AppState, instance_id: &str, payload: &[u8]) {
    let Ok(reply) = serde_json::from_slice::<MgsPayload>(payload) else {
        tracing::warn!(instance_id, "malformed agent_task_reply");
        return;
    };
    if reply.topic != PORT_CONNECTION_TOPIC {
        return;
    }
    match serde_json::from_str::<PortConnectionRecord>(&reply.content) {
        Ok(rec) => state.port_audit.submit(instance_id, rec).await,
        Err(e) => tracing::warn!(instance_id, "malformed port connection record: {e}"),
    }
}

/// Stores records in one transaction, in order.
pub async fn insert_all(store: &Store, rows: &[PortConnection]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let mut tx = store.pool.begin().await?;
    for r in rows {
        sqlx::query(
            "INSERT INTO port_connections (session_id, owner, target, stream_id, destination, mode, \
             bytes_to_target, bytes_from_target, started_at, duration_ms, end_reason, failed, recorded_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&r.session_id)
        .bind(&r.owner)
        .bind(&r.target)
        .bind(r.stream_id)
        .bind(&r.destination)
        .bind(&r.mode)
        .bind(r.bytes_to_target)
        .bind(r.bytes_from_target)
        .bind(r.started_at)
        .bind(r.duration_ms)
        .bind(&r.end_reason)
        .bind(r.failed)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Records, oldest first: those of one session, or the latest `limit` of all.
pub async fn list(
    store: &Store,
    session_id: Option<&str>,
    limit: i64,
) -> Result<Vec<PortConnection>, StoreError> {
    let filter = PortConnectionFilter {
        session_id: session_id.map(str::to_owned),
        ..Default::default()
    };
    let mut rows: Vec<PortConnection> = search(store, &filter, None, limit)
        .await?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    rows.reverse();
    Ok(rows)
}

/// What `ListPortConnections` narrows the records to; `None` matches everything. Times are
/// epoch ms and apply to when a connection started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortConnectionFilter {
    /// Only this session's connections.
    pub session_id: Option<String>,
    /// Only connections through this managed instance.
    pub target: Option<String>,
    /// Only sessions of this principal (ARN).
    pub owner: Option<String>,
    /// Started at or after.
    pub since: Option<i64>,
    /// Started at or before.
    pub until: Option<i64>,
}

/// Records matching `filter`, newest first, at most `limit`, each with its row id; with
/// `before`, only rows older than that id (keyset paging: rows added meanwhile do not shift
/// the pages).
pub async fn search(
    store: &Store,
    filter: &PortConnectionFilter,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<(i64, PortConnection)>, StoreError> {
    let mut sql = String::from("SELECT * FROM port_connections WHERE 1 = 1");
    for (set, clause) in [
        (filter.session_id.is_some(), " AND session_id = ?"),
        (filter.target.is_some(), " AND target = ?"),
        (filter.owner.is_some(), " AND owner = ?"),
        (filter.since.is_some(), " AND started_at >= ?"),
        (filter.until.is_some(), " AND started_at <= ?"),
        (before.is_some(), " AND id < ?"),
    ] {
        if set {
            sql.push_str(clause);
        }
    }
    sql.push_str(" ORDER BY id DESC LIMIT ?");
    let mut q = sqlx::query(&sql);
    for v in [&filter.session_id, &filter.target, &filter.owner]
        .into_iter()
        .flatten()
    {
        q = q.bind(v);
    }
    for v in [filter.since, filter.until, before].into_iter().flatten() {
        q = q.bind(v);
    }
    let rows = q.bind(limit).fetch_all(&store.pool).await?;
    rows.iter()
        .map(|r| Ok((r.try_get("id")?, row_to_record(r)?)))
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(StoreError::from)
}

fn row_to_record(r: &sqlx::sqlite::SqliteRow) -> Result<PortConnection, sqlx::Error> {
    Ok(PortConnection {
        session_id: r.try_get("session_id")?,
        owner: r.try_get("owner")?,
        target: r.try_get("target")?,
        stream_id: r.try_get("stream_id")?,
        destination: r.try_get("destination")?,
        mode: r.try_get("mode")?,
        bytes_to_target: r.try_get("bytes_to_target")?,
        bytes_from_target: r.try_get("bytes_from_target")?,
        started_at: r.try_get("started_at")?,
        duration_ms: r.try_get("duration_ms")?,
        end_reason: r.try_get("end_reason")?,
        failed: r.try_get("failed")?,
    })
}
