-- Session recordings (issue 11): where each one is stored and whether it is sealed. The chunks
-- and the signed manifest live in the object store; the signing key is derived from the master
-- key and never stored here.
CREATE TABLE recordings (
    session_id TEXT PRIMARY KEY NOT NULL,
    location TEXT NOT NULL,
    public_key TEXT NOT NULL,
    record_input INTEGER NOT NULL DEFAULT 0,
    chunks INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    sealed INTEGER NOT NULL DEFAULT 0,
    recovered INTEGER NOT NULL DEFAULT 0,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX recordings_unsealed ON recordings (sealed) WHERE sealed = 0;
