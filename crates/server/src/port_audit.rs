//! The record of every connection forwarded by a port session (port forwarding and SSH over a
//! session, which the incumbent never logs). Agents report each connection when it ends, on
//! their control channel (`agent_task_reply`, topic [`PORT_CONNECTION_TOPIC`]); the server
//! refuses a report with a field out of bounds ([`check_fields`]), for a session that is not
//! that agent's, that ended over [`REPORT_GRACE_MS`] ago, or whose times fall outside the
//! session's life ([`check_against_session`]), takes the owner from its own session row,
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
/// How long a remembered session that was still open is trusted to be open before it is
/// looked up again (its end is what refuses late reports).
const OPEN_SESSION_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Largest `agent_task_reply` payload read as a report; larger ones are refused unread.
pub const MAX_REPORT_BYTES: usize = 16 * 1024;
/// Longest session id in a report.
pub const MAX_SESSION_ID: usize = 128;
/// Longest `host:port` in a report (a DNS name is at most 253 characters).
pub const MAX_DESTINATION: usize = 512;
/// Longest end reason (and informational owner) in a report.
pub const MAX_TEXT: usize = 1024;
/// How far an agent's clock may be from the server's.
pub const CLOCK_SKEW_MS: i64 = 10 * 60 * 1000;
/// How long after its session ended a connection may still be reported (an agent queues its
/// reports while its control channel is down, and reconnects within its back-off of 5 min).
pub const REPORT_GRACE_MS: i64 = 15 * 60 * 1000;
/// The modes an agent reports.
const MODES: [&str; 4] = ["airlock-mux", "smux", "basic", "stream"];

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

/// What a report is checked against: the session as the server recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionFacts {
    /// Principal ARN.
    pub owner: String,
    /// Instance id.
    pub target: String,
    /// Epoch ms.
    pub start_date: i64,
    /// Epoch ms, when it ended.
    pub end_date: Option<i64>,
}

/// Recent sessions (owner and target never change; an end is final), so that a record costs
/// no lookup; an open session is looked up again after [`OPEN_SESSION_RECHECK`] to see whether
/// it ended. Forgotten wholesale when it grows past [`SESSION_CACHE`].
#[derive(Default)]
struct SessionCache(HashMap<String, (std::time::Instant, Option<SessionFacts>)>);

impl SessionCache {
    /// The session `session_id`, `None` when there is no such session.
    async fn get(&mut self, store: &Store, session_id: &str) -> Option<SessionFacts> {
        if let Some((at, known)) = self.0.get(session_id) {
            let open = known.as_ref().is_some_and(|s| s.end_date.is_none());
            if !open || at.elapsed() < OPEN_SESSION_RECHECK {
                return known.clone();
            }
        }
        let found = match store.session(session_id).await {
            Ok(s) => s.map(|s| SessionFacts {
                owner: s.owner,
                target: s.target,
                start_date: s.start_date,
                end_date: s.end_date,
            }),
            Err(e) => {
                // Not remembered: the next record asks again.
                tracing::error!(session_id, "cannot look up the session: {e}");
                return None;
            }
        };
        if self.0.len() >= SESSION_CACHE {
            self.0.clear();
        }
        self.0.insert(
            session_id.to_owned(),
            (std::time::Instant::now(), found.clone()),
        );
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
        let Some(session) = sessions.get(store, &rec.session_id).await else {
            tracing::warn!(
                instance_id,
                session_id = rec.session_id,
                "port connection record for an unknown session; refused"
            );
            continue;
        };
        if let Err(why) = check_against_session(&rec, &instance_id, &session, now_ms()) {
            tracing::warn!(
                instance_id,
                session_id = rec.session_id,
                "port connection record refused: {why}"
            );
            continue;
        }
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
    if payload.len() > MAX_REPORT_BYTES {
        tracing::warn!(
            instance_id,
            bytes = payload.len(),
            "agent_task_reply larger than {MAX_REPORT_BYTES} bytes; refused unread"
        );
        return;
    }
    let Ok(reply) = serde_json::from_slice::<MgsPayload>(payload) else {
        tracing::warn!(instance_id, "malformed agent_task_reply");
        return;
    };
    if reply.topic != PORT_CONNECTION_TOPIC {
        return;
    }
    match serde_json::from_str::<PortConnectionRecord>(&reply.content) {
        Ok(rec) => match check_fields(&rec) {
            Ok(()) => state.port_audit.submit(instance_id, rec).await,
            Err(why) => tracing::warn!(instance_id, "port connection record refused: {why}"),
        },
        Err(e) => tracing::warn!(instance_id, "malformed port connection record: {e}"),
    }
}

fn check_text(name: &str, v: &str, max: usize, may_be_empty: bool) -> Result<(), String> {
    if v.len() > max {
        return Err(format!("{name} is {} bytes (at most {max})", v.len()));
    }
    if v.is_empty() && !may_be_empty {
        return Err(format!("{name} is empty"));
    }
    if v.chars().any(char::is_control) {
        return Err(format!("{name} holds control characters"));
    }
    Ok(())
}

/// The checks a report passes on its own, before anything is looked up: every field within
/// its bounds (lengths, a known mode, numbers that fit the store's signed columns).
pub fn check_fields(rec: &PortConnectionRecord) -> Result<(), String> {
    check_text("SessionId", &rec.session_id, MAX_SESSION_ID, false)?;
    check_text("SessionOwner", &rec.session_owner, MAX_TEXT, true)?;
    check_text("Destination", &rec.destination, MAX_DESTINATION, false)?;
    check_text("EndReason", &rec.end_reason, MAX_TEXT, true)?;
    if !MODES.contains(&rec.mode.as_str()) {
        let shown: String = rec.mode.chars().take(32).collect();
        return Err(format!("Mode {shown:?} is not one of {}", MODES.join(", ")));
    }
    for (name, v) in [
        ("BytesToTarget", rec.bytes_to_target),
        ("BytesFromTarget", rec.bytes_from_target),
        ("StartedAt", rec.started_at),
        ("DurationMs", rec.duration_ms),
    ] {
        if i64::try_from(v).is_err() {
            return Err(format!("{name} {v} is out of range"));
        }
    }
    Ok(())
}

/// The checks against the session the report names, at `now` (epoch ms): it must run on the
/// reporting agent's instance, not have ended more than [`REPORT_GRACE_MS`] ago, and the
/// connection's times must fall within the session's life (give or take [`CLOCK_SKEW_MS`]).
pub fn check_against_session(
    rec: &PortConnectionRecord,
    instance_id: &str,
    session: &SessionFacts,
    now: i64,
) -> Result<(), String> {
    if session.target != instance_id {
        return Err(format!(
            "session {} runs on {}, not on the reporting instance",
            rec.session_id, session.target
        ));
    }
    if let Some(end) = session.end_date {
        if now.saturating_sub(end) > REPORT_GRACE_MS {
            return Err(format!(
                "session {} ended {} s ago",
                rec.session_id,
                now.saturating_sub(end) / 1000
            ));
        }
    }
    let started = clamp(rec.started_at);
    let ended = started.saturating_add(clamp(rec.duration_ms));
    let latest = session.end_date.unwrap_or(now).min(now);
    if started < session.start_date.saturating_sub(CLOCK_SKEW_MS)
        || ended > latest.saturating_add(CLOCK_SKEW_MS)
    {
        return Err(format!(
            "the connection's times ({started} ms + {} ms) fall outside its session's life",
            clamp(rec.duration_ms)
        ));
    }
    Ok(())
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec() -> PortConnectionRecord {
        PortConnectionRecord {
            session_id: "alice-0123456789abcdef0".into(),
            session_owner: "arn:aws:iam::000000000000:user/alice".into(),
            stream_id: 3,
            destination: "localhost:22".into(),
            mode: "smux".into(),
            bytes_to_target: 1,
            bytes_from_target: 2,
            started_at: 1_000_000,
            duration_ms: 50,
            end_reason: "closed".into(),
            failed: false,
        }
    }

    fn session(end: Option<i64>) -> SessionFacts {
        SessionFacts {
            owner: "arn:aws:iam::000000000000:user/alice".into(),
            target: "mi-0".into(),
            start_date: 999_000,
            end_date: end,
        }
    }

    #[test]
    fn fields_out_of_bounds_are_refused() {
        assert_eq!(check_fields(&rec()), Ok(()));
        type Change = Box<dyn Fn(&mut PortConnectionRecord)>;
        let bad: Vec<(&str, Change)> = vec![
            ("SessionId", Box::new(|r| r.session_id = "s".repeat(129))),
            ("SessionId", Box::new(|r| r.session_id.clear())),
            (
                "SessionOwner",
                Box::new(|r| r.session_owner = "o".repeat(1025)),
            ),
            ("Destination", Box::new(|r| r.destination = "d".repeat(513))),
            ("Destination", Box::new(|r| r.destination.clear())),
            ("Destination", Box::new(|r| r.destination = "a\nb:1".into())),
            ("EndReason", Box::new(|r| r.end_reason = "e".repeat(1025))),
            (
                "EndReason",
                Box::new(|r| r.end_reason = "ok\u{1b}[31m".into()),
            ),
            ("Mode", Box::new(|r| r.mode = "x".repeat(100_000))),
            ("Mode", Box::new(|r| r.mode.clear())),
            ("BytesToTarget", Box::new(|r| r.bytes_to_target = u64::MAX)),
            (
                "BytesFromTarget",
                Box::new(|r| r.bytes_from_target = 1 << 63),
            ),
            ("StartedAt", Box::new(|r| r.started_at = u64::MAX)),
            ("DurationMs", Box::new(|r| r.duration_ms = u64::MAX)),
        ];
        for (field, change) in bad {
            let mut r = rec();
            change(&mut r);
            let e = check_fields(&r).unwrap_err();
            assert!(e.starts_with(field), "{field}: {e}");
            assert!(e.len() < 200, "the reason stays short: {e}");
        }
    }

    #[test]
    fn reports_must_fit_their_session() {
        let now = 1_000_100;
        assert_eq!(
            check_against_session(&rec(), "mi-0", &session(None), now),
            Ok(())
        );
        // Another instance's session.
        let e = check_against_session(&rec(), "mi-1", &session(None), now).unwrap_err();
        assert!(e.contains("not on the reporting instance"), "{e}");
        // Ended recently: still taken; ended long ago: refused.
        assert_eq!(
            check_against_session(&rec(), "mi-0", &session(Some(1_000_060)), now),
            Ok(())
        );
        let late = 1_000_060 + REPORT_GRACE_MS + 1;
        let e = check_against_session(&rec(), "mi-0", &session(Some(1_000_060)), late).unwrap_err();
        assert!(e.contains("ended"), "{e}");
        // Times outside the session's life.
        for (started, duration) in [
            (0, 0),
            (999_000 - CLOCK_SKEW_MS as u64 - 1, 0),
            (1_000_000, CLOCK_SKEW_MS as u64 + 1_000),
            (i64::MAX as u64, i64::MAX as u64),
        ] {
            let mut r = rec();
            r.started_at = started;
            r.duration_ms = duration;
            let e = check_against_session(&r, "mi-0", &session(None), now).unwrap_err();
            assert!(e.contains("outside its session's life"), "{e}");
        }
    }
}
