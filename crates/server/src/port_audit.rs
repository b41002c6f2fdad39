//! The record of every connection forwarded by a port session (port forwarding and SSH over a
//! session, which the incumbent never logs). Agents report each connection when it ends, on
//! their control channel (`agent_task_reply`, topic [`PORT_CONNECTION_TOPIC`]); the server
//! checks that the session is one of that agent's, takes the owner from its own session row,
//! logs the record and keeps it in `port_connections`, where `Airlock.ListPortConnections`
//! ([`crate::api::port_connections`]) reads them back.

use serde::Serialize;
use sqlx::Row;

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

/// Handles an `agent_task_reply` payload from `instance_id`'s control channel.
pub async fn handle_reply(state: &AppState, instance_id: &str, payload: &[u8]) {
    let Ok(reply) = serde_json::from_slice::<MgsPayload>(payload) else {
        tracing::warn!(instance_id, "malformed agent_task_reply");
        return;
    };
    if reply.topic != PORT_CONNECTION_TOPIC {
        return;
    }
    let rec = match serde_json::from_str::<PortConnectionRecord>(&reply.content) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(instance_id, "malformed port connection record: {e}");
            return;
        }
    };
    let session = match state.store.session(&rec.session_id).await {
        Ok(Some(s)) if s.target == instance_id => s,
        Ok(_) => {
            tracing::warn!(
                instance_id,
                session_id = rec.session_id,
                "port connection record for a session that is not this agent's; ignored"
            );
            return;
        }
        Err(e) => {
            tracing::error!(
                session_id = rec.session_id,
                "cannot look up the session: {e}"
            );
            return;
        }
    };
    let row = PortConnection {
        session_id: rec.session_id,
        owner: session.owner,
        target: session.target,
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
    if let Err(e) = insert(&state.store, &row).await {
        tracing::error!(
            session_id = row.session_id,
            "cannot store a port connection record: {e}"
        );
    }
}

/// Stores one record.
pub async fn insert(store: &Store, r: &PortConnection) -> Result<(), StoreError> {
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
    .bind(now_ms())
    .execute(&store.pool)
    .await?;
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
