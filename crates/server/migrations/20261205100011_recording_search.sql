-- Issue 11: `airlock sessions search TEXT` finds the sessions that printed or typed TEXT.
--
-- The words of every recorded chunk, by session and kind ("o" output, "i" input), in SQLite's
-- full-text index (FTS5, compiled into the bundled SQLite). `t` is the time into the session
-- (seconds) of the first event of the text.
CREATE VIRTUAL TABLE recording_text USING fts5(text, session_id UNINDEXED, kind UNINDEXED, t UNINDEXED);

-- The last, possibly unfinished word of each session's indexed text by kind. Chunks are cut
-- about every second, so a word typed slowly (one event per key) or printed across a flush
-- would be split in two and found by neither half; the next chunk's text is indexed with this
-- fragment in front of it.
CREATE TABLE recording_text_tail (
    session_id TEXT NOT NULL,
    kind       TEXT NOT NULL,
    tail       TEXT NOT NULL,
    PRIMARY KEY (session_id, kind)
) WITHOUT ROWID;
