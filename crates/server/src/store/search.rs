//! Full-text search over what sessions printed and typed (`airlock sessions search TEXT`): the
//! recorder hands the plain text of every stored chunk to [`Store::index_recording_text`], and
//! [`Store::search_recordings`] finds the sessions whose text holds a phrase.
//!
//! The index is SQLite's FTS5 (in the bundled SQLite), table `recording_text`. What a user
//! searches for is always one FTS5 *phrase* ([`fts_phrase`]): its quotes, `*`, `NEAR`, `AND`,
//! `:` and parentheses are text to find, never query syntax, so a search can neither widen
//! itself (`x" OR "y`, `*`), name columns (`session_id:…`) nor fail to parse.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::{Session, Store, StoreError};

/// What the search index's file is called: the main database's name with this after it
/// (`airlock.db.search`). It holds only derived text (rebuildable from the recordings), but the
/// text is what sessions printed: it is private like the database.
pub const SEARCH_SUFFIX: &str = ".search";

/// Opens (creating) the search index's own database file, with its tables. A file of its own
/// because SQLite has one write lock per file: a big merge of the full-text index (seconds,
/// once it is large) would otherwise hold the lock every API call's audit record needs.
/// Searches read it through [`open_reader`].
pub(crate) async fn open_index(path: &Path) -> Result<SqlitePool, StoreError> {
    crate::datadir::private_file(path)?;
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(30));
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await?;
    sqlx::query(
        "CREATE VIRTUAL TABLE IF NOT EXISTS recording_text \
         USING fts5(text, session_id UNINDEXED, kind UNINDEXED, t UNINDEXED)",
    )
    .execute(&pool)
    .await?;
    // The last, possibly unfinished word of each session's indexed text by kind: the next
    // chunk's text is indexed with it in front, so a word cut by a flush is found whole.
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS recording_text_tail (session_id TEXT NOT NULL, \
         kind TEXT NOT NULL, tail TEXT NOT NULL, PRIMARY KEY (session_id, kind)) WITHOUT ROWID",
    )
    .execute(&pool)
    .await?;
    Ok(pool)
}

/// Connections for searches: the index's file, with the main database (`main_db`) attached
/// read-only as `db` so a search joins the sessions' rows in one statement. Reads in WAL mode
/// take no lock that a writer waits for. An in-memory main database cannot be attached: its
/// searches fail with a clear error.
pub(crate) async fn open_reader(path: &Path, main_db: &Path) -> Result<SqlitePool, StoreError> {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5));
    let main: std::sync::Arc<str> = format!(
        "file:{}?mode=ro",
        main_db
            .to_string_lossy()
            .replace('%', "%25")
            .replace('?', "%3f")
            .replace('#', "%23")
    )
    .into();
    let attach = !main_db.as_os_str().is_empty() && main_db.as_os_str() != ":memory:";
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .after_connect(move |conn, _| {
            let main = main.clone();
            Box::pin(async move {
                if attach {
                    sqlx::query("ATTACH DATABASE ? AS db")
                        .bind(&*main)
                        .execute(conn)
                        .await?;
                }
                Ok(())
            })
        })
        .connect_with(opts)
        .await?;
    Ok(pool)
}

/// The longest word fragment carried from one chunk's text to the next (see the migration's
/// `recording_text_tail`): longer "words" are hex dumps and base64, not what people search.
const MAX_TAIL_CHARS: usize = 64;

/// Text that matched a search within one session.
#[derive(Clone, Debug, PartialEq)]
pub struct TextMatch {
    /// Seconds into the session of the first event of the matching text.
    pub t: f64,
    /// `"o"` (printed) or `"i"` (typed).
    pub kind: String,
    /// A few words around the match, plain text.
    pub snippet: String,
}

/// What a search may be narrowed to, besides its text.
#[derive(Clone, Debug, Default)]
pub struct SearchFilter {
    /// Only sessions on this target.
    pub target: Option<String>,
    /// Only sessions started at or after this time, epoch ms.
    pub since: Option<i64>,
}

/// The user's text as one FTS5 phrase: wrapped in double quotes, inner double quotes doubled.
/// Inside a phrase FTS5 treats everything as text for its tokenizer, so no operator, column
/// filter, prefix star or parenthesis survives. NUL and other control characters, which the
/// tokenizer ignores anyway, are dropped so the query text is exactly what is bound.
pub fn fts_phrase(text: &str) -> String {
    let mut q = String::with_capacity(text.len() + 2);
    q.push('"');
    for c in text.chars().filter(|c| !c.is_control()) {
        if c == '"' {
            q.push('"');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// Whether a phrase has anything the tokenizer keeps (a letter or a digit). A phrase without
/// one matches nothing; asking FTS5 would only spend a query on it.
fn has_token(text: &str) -> bool {
    text.chars().any(char::is_alphanumeric)
}

/// The trailing run of word characters of `text` (at most [`MAX_TAIL_CHARS`]): the part of a
/// word the next chunk may continue.
fn trailing_word(text: &str) -> &str {
    let start = text
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_alphanumeric())
        .take(MAX_TAIL_CHARS)
        .last()
        .map_or(text.len(), |(i, _)| i);
    &text[start..]
}

/// The text to index for one stored chunk's recorded events (in order): per kind (`"o"`,
/// `"i"`), the plain transcript of all its events together (escapes removed, backspaces
/// applied), so typed keys (one event each) form words, at the time of the first. A chunk
/// that ends inside a line keeps it open (no line break added, a trailing blank kept), so
/// that [`Store::index_recording_text`] can join a word the next chunk completes.
pub fn index_rows(events: &[airlock_recording::Event]) -> Vec<(&'static str, f64, String)> {
    use airlock_recording::{Event, EventKind};
    let mut rows = Vec::new();
    for (kind, ek) in [("o", EventKind::Output), ("i", EventKind::Input)] {
        let evs: Vec<&Event> = events.iter().filter(|e| e.kind == ek).collect();
        let Some(first) = evs.first() else { continue };
        let t = first.t;
        let owned: Vec<Event> = evs.iter().map(|e| (*e).clone()).collect();
        let mut text = airlock_recording::transcript(&owned, ek == EventKind::Input);
        if ek == EventKind::Input {
            // Typed lines come prefixed "> " for people; the index wants the words alone.
            text = text
                .split('\n')
                .map(|l| l.strip_prefix("> ").unwrap_or(l))
                .collect::<Vec<_>>()
                .join("\n");
        }
        let last = evs.iter().rev().find_map(|e| e.data.chars().last());
        let line_ended =
            matches!(last, Some('\n')) || (ek == EventKind::Input && last == Some('\r'));
        if !line_ended {
            if text.ends_with('\n') {
                text.pop();
            }
            if last.is_some_and(char::is_whitespace) {
                text.push(' ');
            }
        }
        if !text.trim().is_empty() {
            rows.push((kind, t, text));
        }
    }
    rows
}

/// Text waiting for the index (session id, rows), in the order the recorders stored it.
type Pending = (String, Vec<(&'static str, f64, String)>);

/// The queue to the one index writer, bounded in bytes of text (not in entries, which may be a
/// few bytes or a megabyte each).
#[derive(Debug)]
pub struct IndexQueue {
    tx: tokio::sync::mpsc::UnboundedSender<Pending>,
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Bytes of text the index queue holds before it leaves new text out (the writer is behind:
/// many sessions printing at once).
const INDEX_QUEUE_BYTES: usize = 16 * 1024 * 1024;

/// The most text one index transaction writes. The writer holds SQLite's write lock while it
/// indexes; a short hold lets the API's writes (audit records, sessions) in between.
const TX_TEXT_BYTES: usize = 64 * 1024;

/// The writer's pause after each transaction, as a multiple of how long the transaction held
/// the write lock: at most half the time is the index's, whatever it is given. SQLite's busy
/// handler polls a locked database only every few to 100 ms, so a writer that went straight
/// on would win nearly every race and starve the API (StartSession failing after a `cat` of a
/// big file was the symptom).
const PAUSE_FACTOR: u32 = 1;

/// Splits `text` at char boundaries into pieces of at most about `max` bytes, preferring to
/// cut after a line break or blank so that no word is split.
fn pieces(text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let window = &rest[..cut];
        let at = window
            .rfind('\n')
            .or_else(|| window.rfind(' '))
            .map_or(cut, |i| i + 1);
        let at = if at == 0 { cut } else { at };
        out.push(&rest[..at]);
        rest = &rest[at..];
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

impl Store {
    /// Hands the text of one stored chunk (`index_rows`) to the search index without waiting:
    /// one writer task indexes them in order (a word split across two chunks is joined only
    /// if they are indexed in order), a transaction of at most [`TX_TEXT_BYTES`] at a time and
    /// never more than half the time. Never blocks the recorder: when the queue holds
    /// [`INDEX_QUEUE_BYTES`] the text is left out of the index (said in the log) and `false`
    /// returned; the recording itself is unaffected. Must be called within a tokio runtime.
    pub fn queue_recording_text(
        &self,
        session_id: &str,
        rows: Vec<(&'static str, f64, String)>,
    ) -> bool {
        use std::sync::atomic::Ordering;
        if rows.is_empty() {
            return true;
        }
        let queue = self.text_index.get_or_init(|| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Pending>();
            let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let store = self.clone();
            let left = queued.clone();
            tokio::spawn(async move {
                while let Some((id, rows)) = rx.recv().await {
                    let size: usize = rows.iter().map(|r| r.2.len()).sum();
                    for (kind, t, text) in &rows {
                        for piece in pieces(text, TX_TEXT_BYTES) {
                            let began = std::time::Instant::now();
                            if let Err(e) =
                                store.index_recording_text(&id, &[(kind, *t, piece)]).await
                            {
                                tracing::warn!(
                                    session_id = id,
                                    "recording text not indexed for search: {e}"
                                );
                            }
                            let held = began.elapsed() * PAUSE_FACTOR;
                            tokio::time::sleep(held.max(std::time::Duration::from_micros(200)))
                                .await;
                        }
                    }
                    left.fetch_sub(size, Ordering::Relaxed);
                }
            });
            IndexQueue { tx, queued }
        });
        let size: usize = rows.iter().map(|r| r.2.len()).sum();
        let before = queue.queued.fetch_add(size, Ordering::Relaxed);
        if before > 0 && before + size > INDEX_QUEUE_BYTES {
            queue.queued.fetch_sub(size, Ordering::Relaxed);
            tracing::warn!(
                session_id,
                "search index is {before} bytes behind: {size} bytes of a chunk's text are left out of search"
            );
            return false;
        }
        if queue.tx.send((session_id.to_owned(), rows)).is_err() {
            queue.queued.fetch_sub(size, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Indexes the plain text of one stored chunk of a session's recording: `(kind, t, text)`
    /// entries (`kind` `"o"` or `"i"`, `t` seconds into the session). Entries of one kind are
    /// indexed together as one row at the time of the first, so typed keys (one event each)
    /// form words; a word cut by the previous chunk's end is completed with its first part.
    pub async fn index_recording_text(
        &self,
        session_id: &str,
        entries: &[(&str, f64, &str)],
    ) -> Result<(), StoreError> {
        // Coalesce by kind, keeping the order of first appearance.
        let mut by_kind: Vec<(&str, f64, String)> = Vec::new();
        for (kind, t, text) in entries {
            match by_kind.iter_mut().find(|(k, _, _)| k == kind) {
                Some((_, _, all)) => all.push_str(text),
                None => by_kind.push((kind, *t, (*text).to_owned())),
            }
        }
        by_kind.retain(|(_, _, text)| !text.is_empty());
        if by_kind.is_empty() {
            return Ok(());
        }
        // IMMEDIATE: the transaction reads the tail, then writes; a deferred one would fail
        // with "database is locked" when another writer commits in between (WAL snapshot).
        let mut tx = self.search.begin_with("BEGIN IMMEDIATE").await?;
        for (kind, t, text) in by_kind {
            let tail: Option<String> = sqlx::query_scalar(
                "SELECT tail FROM recording_text_tail WHERE session_id = ? AND kind = ?",
            )
            .bind(session_id)
            .bind(kind)
            .fetch_optional(&mut *tx)
            .await?;
            let continues = text.chars().next().is_some_and(char::is_alphanumeric);
            let indexed = match tail {
                Some(tail) if continues && !tail.is_empty() => format!("{tail}{text}"),
                _ => text,
            };
            sqlx::query(
                "INSERT INTO recording_text (text, session_id, kind, t) VALUES (?, ?, ?, ?)",
            )
            .bind(&indexed)
            .bind(session_id)
            .bind(kind)
            .bind(if t.is_finite() { t.max(0.0) } else { 0.0 })
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO recording_text_tail (session_id, kind, tail) VALUES (?, ?, ?)
                 ON CONFLICT (session_id, kind) DO UPDATE SET tail = excluded.tail",
            )
            .bind(session_id)
            .bind(kind)
            .bind(trailing_word(&indexed))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The sessions whose recorded text holds `text` as a phrase (words in order, case and
    /// accents ignored), newest first, `limit` from `offset`. The caller filters them by who
    /// may read them, so it pages with `offset` until it has enough.
    pub async fn search_recordings(
        &self,
        text: &str,
        filter: &SearchFilter,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<Session>, StoreError> {
        if !has_token(text) {
            return Ok(Vec::new());
        }
        let mut sql = String::from(
            "SELECT * FROM db.sessions WHERE session_id IN \
             (SELECT session_id FROM recording_text WHERE recording_text MATCH ?)",
        );
        if filter.target.is_some() {
            sql.push_str(" AND target = ?");
        }
        if filter.since.is_some() {
            sql.push_str(" AND start_date >= ?");
        }
        sql.push_str(" ORDER BY start_date DESC, session_id LIMIT ? OFFSET ?");
        let mut q = sqlx::query(&sql).bind(fts_phrase(text));
        if let Some(t) = &filter.target {
            q = q.bind(t);
        }
        if let Some(s) = filter.since {
            q = q.bind(s);
        }
        let rows = q
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.search_read)
            .await?;
        Ok(rows.iter().map(Session::from_row).collect())
    }

    /// Where `text` matched in one session's recording: up to `max` matches in time order,
    /// each with a snippet of the words around it.
    pub async fn recording_matches(
        &self,
        session_id: &str,
        text: &str,
        max: i64,
    ) -> Result<Vec<TextMatch>, StoreError> {
        if !has_token(text) {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT t, kind, snippet(recording_text, 0, '', '', '…', 12) AS snippet \
             FROM recording_text WHERE recording_text MATCH ? AND session_id = ? \
             ORDER BY t LIMIT ?",
        )
        .bind(fts_phrase(text))
        .bind(session_id)
        .bind(max)
        .fetch_all(&self.search_read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TextMatch {
                    t: r.try_get("t")?,
                    kind: r.try_get("kind")?,
                    snippet: r.try_get("snippet")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn store(name: &str) -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "airlock-search-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        crate::datadir::private_dir(&dir).unwrap();
        let key = crate::secrets::MasterKey::load_or_create(&dir.join("master.key")).unwrap();
        (Store::open_in_dir(&dir, key).await.unwrap(), dir)
    }

    async fn session(store: &Store, id: &str, target: &str, start: i64) {
        sqlx::query(
            "INSERT INTO sessions (session_id, target, document_name, owner, status, start_date) \
             VALUES (?, ?, 'SSM-SessionManagerRunShell', 'arn:aws:iam::1:user/a', 'Terminated', ?)",
        )
        .bind(id)
        .bind(target)
        .bind(start)
        .execute(&store.pool)
        .await
        .unwrap();
    }

    async fn found(store: &Store, text: &str) -> Vec<String> {
        store
            .search_recordings(text, &SearchFilter::default(), 100, 0)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.session_id)
            .collect()
    }

    #[test]
    fn phrases_quote_everything() {
        assert_eq!(fts_phrase("ls -la"), "\"ls -la\"");
        assert_eq!(fts_phrase("a\"b"), "\"a\"\"b\"");
        assert_eq!(fts_phrase("\"\""), "\"\"\"\"\"\"");
        assert_eq!(fts_phrase("x\0y\u{1b}"), "\"xy\"");
        assert_eq!(trailing_word("echo hostna"), "hostna");
        assert_eq!(trailing_word("echo "), "");
        assert_eq!(trailing_word("ééé"), "ééé");
        assert_eq!(trailing_word(&"x".repeat(100)).len(), MAX_TAIL_CHARS);
    }

    /// Words are found by phrase, case-insensitively, by kind and time; filters narrow.
    #[tokio::test]
    async fn finds_printed_and_typed_words() {
        let (store, dir) = store("find").await;
        session(&store, "alice-1", "mi-00000000000000001", 1_000).await;
        session(&store, "bob-1", "mi-00000000000000002", 2_000).await;
        store
            .index_recording_text(
                "alice-1",
                &[
                    ("o", 0.5, "$ uname -a\nLinux box 6.1\n"),
                    ("i", 0.4, "uname -a\r"),
                ],
            )
            .await
            .unwrap();
        store
            .index_recording_text("bob-1", &[("o", 3.0, "Linux is here\n")])
            .await
            .unwrap();
        assert_eq!(found(&store, "LINUX").await, ["bob-1", "alice-1"]);
        assert_eq!(found(&store, "uname -a").await, ["alice-1"]);
        assert_eq!(found(&store, "linux box").await, ["alice-1"]);
        assert!(found(&store, "box linux").await.is_empty());
        let narrowed = store
            .search_recordings(
                "linux",
                &SearchFilter {
                    target: Some("mi-00000000000000001".into()),
                    since: None,
                },
                100,
                0,
            )
            .await
            .unwrap();
        assert_eq!(narrowed.len(), 1);
        let since = store
            .search_recordings(
                "linux",
                &SearchFilter {
                    target: None,
                    since: Some(1_500),
                },
                100,
                0,
            )
            .await
            .unwrap();
        assert_eq!(since[0].session_id, "bob-1");
        assert_eq!(since.len(), 1);
        let paged = store
            .search_recordings("linux", &SearchFilter::default(), 1, 1)
            .await
            .unwrap();
        assert_eq!(paged[0].session_id, "alice-1");
        let m = store
            .recording_matches("alice-1", "uname", 10)
            .await
            .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].kind.as_str(), m[0].t), ("i", 0.4));
        assert_eq!((m[1].kind.as_str(), m[1].t), ("o", 0.5));
        assert!(m[1].snippet.contains("uname -a"), "{:?}", m[1].snippet);
        store.pool.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A word typed one key per event, across chunk boundaries, is found whole.
    #[tokio::test]
    async fn words_split_across_chunks_are_found() {
        let (store, dir) = store("split").await;
        session(&store, "s-1", "mi-00000000000000001", 1_000).await;
        let keys = [("i", 1.0, "h"), ("i", 1.1, "o"), ("i", 1.2, "s")];
        store.index_recording_text("s-1", &keys).await.unwrap();
        store
            .index_recording_text("s-1", &[("i", 2.0, "tna"), ("o", 2.0, "hostn")])
            .await
            .unwrap();
        store
            .index_recording_text("s-1", &[("i", 3.0, "me\r"), ("o", 3.0, "ame\r\n")])
            .await
            .unwrap();
        assert_eq!(found(&store, "hostname").await, ["s-1"]);
        let m = store
            .recording_matches("s-1", "hostname", 10)
            .await
            .unwrap();
        assert_eq!(m.len(), 2, "{m:?}");
        // A new word after a separator is not glued to the last one.
        store
            .index_recording_text("s-1", &[("o", 4.0, " whoami")])
            .await
            .unwrap();
        assert!(found(&store, "amewhoami").await.is_empty());
        assert_eq!(found(&store, "whoami").await, ["s-1"]);
        store.pool.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// What the recorder hands over per chunk becomes words: keys joined, escapes removed,
    /// an unfinished line left open (with its trailing blank) for the next chunk.
    #[test]
    fn index_rows_make_words() {
        let ev = |k: &'static str, t: f64, d: &str| airlock_recording::Event {
            t,
            kind: if k == "i" {
                airlock_recording::EventKind::Input
            } else {
                airlock_recording::EventKind::Output
            },
            data: d.to_owned(),
        };
        let rows = index_rows(&[
            ev("o", 0.1, "\u{1b}[1;32m$\u{1b}[0m "),
            ev("i", 0.2, "h"),
            ev("i", 0.3, "o"),
            ev("o", 0.2, "ho"),
        ]);
        assert_eq!(
            rows,
            vec![("o", 0.1, "$ ho".to_owned()), ("i", 0.2, "ho".to_owned())]
        );
        let rows = index_rows(&[ev("i", 1.0, "st\u{7f}tname\r"), ev("o", 1.0, "echo ")]);
        assert_eq!(
            rows,
            vec![
                ("o", 1.0, "echo ".to_owned()),
                ("i", 1.0, "stname\n".to_owned())
            ]
        );
        assert!(index_rows(&[ev("o", 0.0, "\u{1b}[H\u{1b}[2J")]).is_empty());
        assert!(index_rows(&[]).is_empty());
    }

    #[test]
    fn pieces_cut_between_words() {
        assert_eq!(pieces("", 4), Vec::<&str>::new());
        assert_eq!(pieces("abc", 4), ["abc"]);
        assert_eq!(pieces("ab cd ef", 6), ["ab cd ", "ef"]);
        assert_eq!(pieces("ab\ncdefgh", 6), ["ab\n", "cdefgh"]);
        assert_eq!(pieces("abcdefgh", 3), ["abc", "def", "gh"]);
        // Never inside a character.
        let p = pieces("ééééé", 3);
        assert!(p.iter().all(|x| x.len() <= 3 && !x.is_empty()), "{p:?}");
        assert_eq!(p.concat(), "ééééé");
        let text = "word ".repeat(100_000);
        let p = pieces(&text, TX_TEXT_BYTES);
        assert_eq!(p.concat(), text);
        assert!(p
            .iter()
            .all(|x| x.len() <= TX_TEXT_BYTES && x.ends_with(' ')));
    }

    /// A flood of text for the index (every word new: the costliest kind) never keeps the
    /// database's write lock from the API: audit records are written promptly meanwhile, and
    /// the text is indexed in the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_index_never_starves_other_writers() {
        let (store, dir) = store("starve").await;
        session(&store, "flood-1", "mi-00000000000000001", 1_000).await;
        let mut n: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..40 {
            let mut text = String::with_capacity(256 * 1024);
            while text.len() < 256 * 1024 {
                n ^= n << 13;
                n ^= n >> 7;
                n ^= n << 17;
                text.push_str(&format!("{n:x} "));
            }
            if i == 39 {
                text.push_str("the-last-words ");
            }
            assert!(store.queue_recording_text("flood-1", vec![("o", f64::from(i), text)]));
        }
        let mut worst = std::time::Duration::ZERO;
        for i in 0..30 {
            let began = std::time::Instant::now();
            store
                .append_audit(&crate::store::audit::AuditEvent {
                    event: "api".into(),
                    action: format!("ssm:Test{i}"),
                    decision: "Allow".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            worst = worst.max(began.elapsed());
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
        assert!(
            worst < std::time::Duration::from_secs(2),
            "an audit record waited {worst:?} for the index"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
        while found(&store, "the-last-words").await.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the flood was never indexed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        store.pool.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The index is a file of its own: a long index write (a big FTS5 merge) holding its
    /// write lock does not hold the API's audit records; the file is private like the database.
    #[tokio::test]
    async fn a_long_index_write_does_not_hold_the_database() {
        use std::os::unix::fs::PermissionsExt;
        let (store, dir) = store("apart").await;
        let mut merge = store.search.begin_with("BEGIN IMMEDIATE").await.unwrap();
        sqlx::query(
            "INSERT INTO recording_text_tail (session_id, kind, tail) VALUES ('x', 'o', 'y')",
        )
        .execute(&mut *merge)
        .await
        .unwrap();
        let began = std::time::Instant::now();
        store
            .append_audit(&crate::store::audit::AuditEvent {
                event: "api".into(),
                action: "ssm:Test".into(),
                decision: "Allow".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(began.elapsed() < std::time::Duration::from_secs(1));
        merge.rollback().await.unwrap();
        let file = dir.join(format!("airlock.db{SEARCH_SUFFIX}"));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        store.pool.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Figures for the issue note (run with `--ignored`): an hour of a busy shell (a 4 KiB
    /// chunk of printed text a second) indexed, then searched.
    #[tokio::test]
    #[ignore]
    async fn measure_an_hour_of_busy_output() {
        let (store, dir) = store("measure").await;
        session(&store, "busy-1", "mi-00000000000000001", 1_000).await;
        let words = [
            "alpha", "kernel", "systemd", "nginx", "restart", "error", "ok", "12345",
        ];
        let started = std::time::Instant::now();
        let mut worst = std::time::Duration::ZERO;
        for i in 0..3600u32 {
            let mut text = String::with_capacity(4096);
            let mut n = i;
            while text.len() < 4000 {
                n = n.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                text.push_str(words[(n >> 16) as usize % words.len()]);
                text.push(if n % 7 == 0 { '\n' } else { ' ' });
            }
            if i == 1800 {
                text.push_str(" needle-in-the-haystack\n");
            }
            let t0 = std::time::Instant::now();
            store
                .index_recording_text("busy-1", &[("o", f64::from(i), &text)])
                .await
                .unwrap();
            worst = worst.max(t0.elapsed());
        }
        let indexing = started.elapsed();
        let t0 = std::time::Instant::now();
        let hits = found(&store, "needle in the haystack").await;
        let rare = t0.elapsed();
        let t0 = std::time::Instant::now();
        let m = store
            .recording_matches("busy-1", "kernel", 5)
            .await
            .unwrap();
        let common = t0.elapsed();
        assert_eq!(hits, ["busy-1"]);
        assert_eq!(m.len(), 5);
        let db: u64 = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        eprintln!(
            "3600 chunks x 4 KiB indexed in {indexing:?} (worst {worst:?}); rare phrase {rare:?}; \
             common word, 5 matches {common:?}; database files {} MiB",
            db >> 20
        );
        store.pool.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The attacker's searches: FTS5 syntax in the text is literal, never an operator, a
    /// column filter, a prefix query or a parse error.
    #[tokio::test]
    async fn fts_syntax_in_the_text_is_literal() {
        let (store, dir) = store("attack").await;
        session(&store, "a-1", "mi-00000000000000001", 1_000).await;
        session(&store, "b-1", "mi-00000000000000002", 2_000).await;
        session(&store, "c-1", "mi-00000000000000003", 3_000).await;
        store
            .index_recording_text("a-1", &[("o", 0.0, "secret password here\n")])
            .await
            .unwrap();
        store
            .index_recording_text("b-1", &[("o", 0.0, "foobar baz\n")])
            .await
            .unwrap();
        store
            .index_recording_text("c-1", &[("o", 0.0, "say \"near\" NEAR foo: (x) * done\n")])
            .await
            .unwrap();
        for (query, expect) in [
            // Widening with operators.
            ("x\" OR \"secret", vec![]),
            ("secret\" OR \"foobar", vec![]),
            ("zzz OR secret", vec![]),
            ("secret OR zzz", vec![]),
            ("NOT zzz", vec![]),
            ("secret NOT zzz", vec![]),
            ("zzz*", vec![]),
            // A star is not a prefix query: "foobar" is not found, the word "foo" is.
            ("foo*", vec!["c-1"]),
            ("*", vec![]),
            ("\"", vec![]),
            ("\"\"", vec![]),
            ("", vec![]),
            ("   ", vec![]),
            ("NEAR(secret password)", vec![]),
            ("NEAR(secret here, 5)", vec![]),
            // Column filters.
            ("session_id:a", vec![]),
            ("text:secret", vec![]),
            ("{text session_id}:secret", vec![]),
            ("- secret", vec!["a-1"]),
            ("^secret", vec!["a-1"]),
            ("(secret)", vec!["a-1"]),
            ("secret)", vec!["a-1"]),
            ("secret AND", vec![]),
            // What is literally there is found, punctuation and all.
            ("\"near\" NEAR foo:", vec!["c-1"]),
            ("near near foo x", vec!["c-1"]),
            ("foo: (x) * done", vec!["c-1"]),
            ("foobar", vec!["b-1"]),
            ("SECRET\0 PASSWORD", vec!["a-1"]),
        ] {
            assert_eq!(found(&store, query).await, expect, "query {query:?}");
            let m = store.recording_matches("a-1", query, 10).await.unwrap();
            assert_eq!(m.is_empty(), !expect.contains(&"a-1"), "{query:?}");
        }
        store.pool.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }
}
