-- Issue 11: the full-text index of recordings moves to a database file of its own
-- (`airlock.db.search`, see store/search.rs): SQLite has one write lock per file, and merging a
-- large FTS5 index holds it for seconds, which API calls (each writes an audit record) must
-- not wait for. The index holds only text derived from the recordings; the tables here were
-- introduced in the same release and are dropped, not copied.
DROP TABLE IF EXISTS main.recording_text_tail;
DROP TABLE IF EXISTS main.recording_text;
