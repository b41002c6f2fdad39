//! The session log stream (`airlock server --session-log FILE|-`): one JSON line per recorded
//! session event (`{"time","session_id","owner","target","kind":"o"|"i","data"}`) and per
//! session change (`kind` `session.started`, `session.ended`, …, with the event's `data`), to a
//! file or standard output, for a log shipper (Vector, Fluent Bit) to take off the host.
//!
//! Callers never wait: lines go through a bounded queue to one writer task, and a full queue
//! drops the line and counts it; the writer then writes a `{"kind":"dropped","count":N}` line,
//! so a gap is visible in the stream itself.
//!
//! Rotation: a file is reopened when its path names another file than the one being written
//! (checked, before writing, at most once a second: one `stat`). That follows logrotate's
//! default `create` mode (the file is renamed away and a new one created at the path: lines
//! go to the new file from the next check on, the moved file keeps what came before) without
//! a signal or a `postrotate` script. When nothing is at the path (`nocreate`), the file is
//! created again at the check after the one that found it missing, which leaves logrotate's
//! own `create` the time to go first. `copytruncate` needs nothing: the file is opened to
//! append.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cloud::CloudEvent;

/// Lines waiting for the writer before new ones are dropped.
pub const QUEUE: usize = 16_384;

/// How often, at most, the writer looks whether its file was rotated away.
pub const ROTATION_CHECK: Duration = Duration::from_secs(1);

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
    let sink = match target {
        SessionLog::Stdout => Sink::new(Box::new(tokio::io::stdout()), None),
        SessionLog::File(path) => {
            let (file, id) = open_file(path).await?;
            Sink::new(
                Box::new(file),
                Some(Rotation {
                    path: path.clone(),
                    id,
                    checked: Instant::now(),
                    missing: false,
                }),
            )
        }
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    tracker.spawn(write(sink, rx, dropped.clone(), shutdown));
    Ok(LogStream { tx, dropped })
}

/// Opens (creating, mode 0600: it holds what sessions printed) the file to append to, and
/// says which file it is (device, inode).
async fn open_file(path: &Path) -> std::io::Result<(tokio::fs::File, (u64, u64))> {
    use std::os::unix::fs::MetadataExt;
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .await?;
    let m = file.metadata().await?;
    Ok((file, (m.dev(), m.ino())))
}

/// What the writer knows of its file, to notice a rotation.
struct Rotation {
    path: PathBuf,
    /// (device, inode) of the file being written.
    id: (u64, u64),
    checked: Instant,
    /// The last check found nothing at the path.
    missing: bool,
}

/// Where the writer writes: standard output, or a file it reopens after a rotation.
struct Sink {
    out: tokio::io::BufWriter<Box<dyn AsyncWrite + Send + Unpin>>,
    rotation: Option<Rotation>,
}

impl Sink {
    fn new(out: Box<dyn AsyncWrite + Send + Unpin>, rotation: Option<Rotation>) -> Sink {
        Sink {
            out: tokio::io::BufWriter::new(out),
            rotation,
        }
    }

    /// Reopens the file when its path now names another file (or, checked twice, none).
    async fn follow_rotation(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let Some(r) = self.rotation.as_mut() else {
            return;
        };
        if r.checked.elapsed() < ROTATION_CHECK {
            return;
        }
        r.checked = Instant::now();
        match tokio::fs::metadata(&r.path).await {
            Ok(m) if (m.dev(), m.ino()) == r.id => {
                r.missing = false;
                return;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !r.missing => {
                r.missing = true;
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => return,
        }
        // What was written so far belongs to the file that was moved away.
        if let Err(e) = self.out.flush().await {
            tracing::error!("the session log stream cannot be written: {e}");
        }
        match open_file(&r.path).await {
            Ok((file, id)) => {
                self.out = tokio::io::BufWriter::new(Box::new(file));
                r.id = id;
                r.missing = false;
                tracing::info!(path = %r.path.display(), "session log stream reopened after a rotation");
            }
            Err(e) => tracing::error!(
                path = %r.path.display(),
                "the rotated session log stream cannot be reopened: {e}"
            ),
        }
    }
}

async fn write(
    mut sink: Sink,
    mut rx: mpsc::Receiver<String>,
    dropped: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
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
        sink.follow_rotation().await;
        if let Err(e) = write_batch(&mut sink.out, &batch).await {
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
    if let Err(e) = write_batch(&mut sink.out, &rest).await {
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
    #![allow(clippy::unwrap_used, clippy::panic)]
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

    /// logrotate's default `create` (rename, then a new file at the path) and `nocreate`
    /// (rename only): lines after the next check go to the file at the path, the moved file
    /// keeps what came before, nothing is lost or written twice.
    #[tokio::test]
    async fn a_rotated_file_is_reopened() {
        let dir = std::env::temp_dir().join(format!(
            "airlock-log-rotate-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("session.log");
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let log = open(&SessionLog::File(path.clone()), shutdown.clone(), &tracker)
            .await
            .unwrap();
        let lines_of = |p: &std::path::Path| -> Vec<String> {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    v["data"].as_str().unwrap().to_owned()
                })
                .collect()
        };
        async fn until(what: &str, mut ok: impl FnMut() -> bool) {
            for _ in 0..100 {
                if ok() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            panic!("{what}");
        }
        log.io(&io("before"));
        until("the first line written", || lines_of(&path) == ["before"]).await;

        // `create`: moved away, a new empty file made at the path at once.
        let first = dir.join("session.log.1");
        std::fs::rename(&path, &first).unwrap();
        std::fs::write(&path, b"").unwrap();
        tokio::time::sleep(ROTATION_CHECK + std::time::Duration::from_millis(100)).await;
        log.io(&io("after-create"));
        until("the line in the new file", || {
            lines_of(&path) == ["after-create"]
        })
        .await;
        assert_eq!(lines_of(&first), ["before"]);

        // `nocreate`: moved away and nothing made; the writer creates the file itself, at
        // the check after the one that found it missing.
        let second = dir.join("session.log.2");
        std::fs::rename(&path, &second).unwrap();
        tokio::time::sleep(ROTATION_CHECK + std::time::Duration::from_millis(100)).await;
        log.io(&io("while-missing"));
        tokio::time::sleep(ROTATION_CHECK + std::time::Duration::from_millis(100)).await;
        log.io(&io("after-nocreate"));
        until("the file made again", || {
            lines_of(&path) == ["after-nocreate"]
        })
        .await;
        assert_eq!(lines_of(&second), ["after-create", "while-missing"]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
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
        let task = tokio::spawn(write(
            Sink::new(Box::new(out_w), None),
            rx2,
            dropped,
            shutdown.clone(),
        ));
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
