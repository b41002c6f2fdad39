//! The session log stream (`airlock server --session-log FILE|-`): one JSON line per recorded
//! session event (`{"time","session_id","owner","target","kind":"o"|"i","data"}`) and per
//! session change (`kind` `session.started`, `session.ended`, …, with the event's `data`), to a
//! file or standard output, for a log shipper (Vector, Fluent Bit) to take off the host.
//!
//! Callers never wait: lines go through a bounded queue to one writer task, and a full queue
//! drops the line and counts it; the writer then writes a `{"kind":"dropped","count":N}` line,
//! so a gap is visible in the stream itself.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::json;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cloud::CloudEvent;

/// Lines waiting for the writer before new ones are dropped.
pub const QUEUE: usize = 16_384;

/// Where the log stream goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionLog {
    /// Standard output (`-`).
    Stdout,
    /// A file, appended to (created mode 0600: it holds what sessions printed).
    File(PathBuf),
}

impl SessionLog {
    /// `-` is standard output; anything else a file path.
    pub fn parse(arg: &str) -> SessionLog {
        if arg == "-" {
            SessionLog::Stdout
        } else {
            SessionLog::File(PathBuf::from(arg))
        }
    }
}

/// One recorded event of a session, as the recorder hands it over.
#[derive(Clone, Copy, Debug)]
pub struct SessionIo<'a> {
    /// The session.
    pub session_id: &'a str,
    /// The owner's ARN.
    pub owner: &'a str,
    /// The target (mi-…).
    pub target: &'a str,
    /// `"o"` (output) or `"i"` (input).
    pub kind: &'a str,
    /// When it happened.
    pub t: time::OffsetDateTime,
    /// The text (UTF-8; the recorder has already replaced invalid bytes).
    pub data: &'a str,
}

/// The sending side of the stream.
#[derive(Debug)]
pub(crate) struct LogStream {
    tx: mpsc::Sender<String>,
    dropped: Arc<AtomicU64>,
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl LogStream {
    fn push(&self, line: String) {
        if self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A session's output or input.
    pub(crate) fn io(&self, io: &SessionIo<'_>) {
        let line = json!({
            "time": rfc3339(io.t),
            "session_id": io.session_id,
            "owner": io.owner,
            "target": io.target,
            "kind": io.kind,
            "data": io.data,
        });
        self.push(line.to_string());
    }

    /// A session change (started, resumed, ended, terminated, denied).
    pub(crate) fn lifecycle(&self, ev: &CloudEvent) {
        let d = &ev.data;
        let line = json!({
            "time": ev.time,
            "session_id": d["SessionId"],
            "owner": d.get("Owner").filter(|o| !o.is_null()).unwrap_or(&d["Principal"]),
            "target": d["Target"],
            "kind": ev.kind.strip_prefix("io.airlock.").unwrap_or(&ev.kind),
            "event_id": ev.id,
            "data": d,
        });
        self.push(line.to_string());
    }

    /// Lines dropped so far because the queue was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Opens the stream's output and starts its writer, which drains what is queued and flushes
/// when the server shuts down.
pub(crate) async fn open(
    target: &SessionLog,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> std::io::Result<LogStream> {
    let out: Box<dyn AsyncWrite + Send + Unpin> = match target {
        SessionLog::Stdout => Box::new(tokio::io::stdout()),
        SessionLog::File(path) => {
            let file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .await?;
            Box::new(file)
        }
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    tracker.spawn(write(out, rx, dropped.clone(), shutdown));
    Ok(LogStream { tx, dropped })
}

async fn write(
    out: Box<dyn AsyncWrite + Send + Unpin>,
    mut rx: mpsc::Receiver<String>,
    dropped: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let mut out = tokio::io::BufWriter::new(out);
    let mut reported = 0u64;
    let mut failed = false;
    loop {
        let line = tokio::select! {
            l = rx.recv() => l,
            _ = shutdown.cancelled() => None,
        };
        let Some(line) = line else { break };
        let mut batch = vec![line];
        while let Ok(l) = rx.try_recv() {
            batch.push(l);
        }
        let lost = dropped.load(Ordering::Relaxed);
        if lost > reported {
            let note = json!({
                "time": rfc3339(time::OffsetDateTime::now_utc()),
                "kind": "dropped",
                "count": lost - reported,
            });
            reported = lost;
            batch.push(note.to_string());
        }
        if let Err(e) = write_batch(&mut out, &batch).await {
            if !failed {
                tracing::error!("the session log stream cannot be written: {e}");
                failed = true;
            }
        } else {
            failed = false;
        }
    }
    // What was queued before the shutdown still goes out.
    let mut rest = Vec::new();
    while let Ok(l) = rx.try_recv() {
        rest.push(l);
    }
    if let Err(e) = write_batch(&mut out, &rest).await {
        tracing::error!("the session log stream cannot be written: {e}");
    }
}

async fn write_batch(
    out: &mut tokio::io::BufWriter<Box<dyn AsyncWrite + Send + Unpin>>,
    batch: &[String],
) -> std::io::Result<()> {
    for l in batch {
        out.write_all(l.as_bytes()).await?;
        out.write_all(b"\n").await?;
    }
    out.flush().await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn io<'a>(data: &'a str) -> SessionIo<'a> {
        SessionIo {
            session_id: "alice-0abc",
            owner: "arn:aws:iam::000000000000:user/alice",
            target: "mi-0123",
            kind: "o",
            t: time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            data,
        }
    }

    #[tokio::test]
    async fn lines_carry_session_owner_target_and_time() {
        let dir = std::env::temp_dir().join(format!("airlock-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("session.log");
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let events = super::super::Events::default();
        events.set_log(
            open(&SessionLog::File(path.clone()), shutdown.clone(), &tracker)
                .await
                .unwrap(),
        );
        events.session_io(&io("hello \"world\"\r\n\u{1b}[1m"));
        events.session_io(&SessionIo {
            kind: "i",
            ..io("ls\r")
        });
        let ended = CloudEvent::new(
            "airlock://x",
            super::super::cloud::SESSION_ENDED,
            1_700_000_001_000,
            Some("alice-0abc".into()),
            json!({"SessionId": "alice-0abc", "Owner": "arn:o", "Target": "mi-0123", "EndReason": {"Kind": "Exited"}}),
        );
        events.committed(&[ended], false);
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["session_id"], "alice-0abc");
        assert_eq!(lines[0]["owner"], "arn:aws:iam::000000000000:user/alice");
        assert_eq!(lines[0]["target"], "mi-0123");
        assert_eq!(lines[0]["time"], "2023-11-14T22:13:20Z");
        assert_eq!(lines[0]["kind"], "o");
        assert_eq!(lines[0]["data"], "hello \"world\"\r\n\u{1b}[1m");
        assert_eq!(lines[1]["kind"], "i");
        assert_eq!(lines[2]["kind"], "session.ended");
        assert_eq!(lines[2]["data"]["EndReason"]["Kind"], "Exited");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_blocking() {
        let (tx, mut rx) = mpsc::channel(2);
        let log = LogStream {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            log.io(&io("x"));
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(log.dropped(), 998);
        assert!(rx.try_recv().is_ok());
        // The writer reports the gap in the stream.
        let (out_w, mut out_r) = tokio::io::duplex(1 << 16);
        let (tx2, rx2) = mpsc::channel(4);
        let dropped = Arc::new(AtomicU64::new(5));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(write(Box::new(out_w), rx2, dropped, shutdown.clone()));
        tx2.send("{}".into()).await.unwrap();
        drop(tx2);
        task.await.unwrap();
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut out_r, &mut text)
            .await
            .unwrap();
        assert!(text.contains(r#""kind":"dropped""#), "{text}");
        assert!(text.contains(r#""count":5"#), "{text}");
    }
}
