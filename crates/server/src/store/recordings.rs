//! The `recordings` table: one row per recorded session, naming the object store location its
//! chunks went to and whether its manifest has been written (sealed).

use sqlx::Row;

use super::{now_ms, Store, StoreError};

/// One recording's bookkeeping row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordingRow {
    /// The session recorded.
    pub session_id: String,
    /// Store URL (`file:///dir` or `s3://bucket/prefix`) the chunks are written under.
    pub location: String,
    /// Hex Ed25519 public key the chunks are signed for.
    pub public_key: String,
    /// Whether input was recorded too.
    pub record_input: bool,
    /// Chunks written (known at sealing).
    pub chunks: i64,
    /// Bytes written (known at sealing).
    pub bytes: i64,
    /// Whether the signed manifest is in the store.
    pub sealed: bool,
    /// Whether crash recovery sealed it.
    pub recovered: bool,
    /// When recording started (epoch ms).
    pub started_at: i64,
    /// When it was sealed (epoch ms).
    pub ended_at: Option<i64>,
    /// What went wrong while recording (spool overflow, …), empty when nothing did.
    pub note: String,
}

fn row(r: &sqlx::sqlite::SqliteRow) -> Result<RecordingRow, StoreError> {
    Ok(RecordingRow {
        session_id: r.try_get("session_id")?,
        location: r.try_get("location")?,
        public_key: r.try_get("public_key")?,
        record_input: r.try_get::<i64, _>("record_input")? != 0,
        chunks: r.try_get("chunks")?,
        bytes: r.try_get("bytes")?,
        sealed: r.try_get::<i64, _>("sealed")? != 0,
        recovered: r.try_get::<i64, _>("recovered")? != 0,
        started_at: r.try_get("started_at")?,
        ended_at: r.try_get("ended_at")?,
        note: r.try_get("note")?,
    })
}

impl Store {
    /// Records that `session_id` is being recorded at `location`.
    pub async fn create_recording(
        &self,
        session_id: &str,
        location: &str,
        public_key: &str,
        record_input: bool,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO recordings (session_id, location, public_key, record_input, started_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(session_id)
        .bind(location)
        .bind(public_key)
        .bind(i64::from(record_input))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The recording row of a session, if it was recorded.
    pub async fn recording(&self, session_id: &str) -> Result<Option<RecordingRow>, StoreError> {
        let r = sqlx::query("SELECT * FROM recordings WHERE session_id = ?")
            .bind(session_id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(row).transpose()
    }

    /// Recordings whose manifest was never written (their server stopped first).
    pub async fn unsealed_recordings(&self) -> Result<Vec<RecordingRow>, StoreError> {
        let rows = sqlx::query("SELECT * FROM recordings WHERE sealed = 0 ORDER BY started_at")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(row).collect()
    }

    /// Marks a recording sealed, with its final size.
    pub async fn seal_recording(
        &self,
        session_id: &str,
        chunks: u64,
        bytes: u64,
        recovered: bool,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE recordings SET sealed = 1, chunks = ?, bytes = ?, recovered = ?, ended_at = ? \
             WHERE session_id = ?",
        )
        .bind(i64::try_from(chunks).unwrap_or(i64::MAX))
        .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
        .bind(i64::from(recovered))
        .bind(now_ms())
        .bind(session_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Appends a line to a recording's note (what went wrong while recording).
    pub async fn note_recording(&self, session_id: &str, note: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE recordings SET note = CASE WHEN note = '' THEN ? ELSE note || char(10) || ? END \
             WHERE session_id = ?",
        )
        .bind(note)
        .bind(note)
        .bind(session_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Drops a session's text from the search index (`store::search`), its word tails too, so
    /// that crash recovery can index the whole recording again from its stored chunks without
    /// indexing any of it twice: what the crashed run had queued but not written is unknown.
    pub async fn forget_recording_text(&self, session_id: &str) -> Result<(), StoreError> {
        let mut tx = self.search.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("DELETE FROM recording_text WHERE session_id = ?")
            .bind(session_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM recording_text_tail WHERE session_id = ?")
            .bind(session_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
