-- The last audit checkpoint the database was told of (one row). The checkpoint itself lives
-- outside the database, signed; this copy only tells a database restored from an older copy
-- (which remembers an older checkpoint) from one whose newest audit records were deleted.
CREATE TABLE audit_checkpoint_seen (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    count INTEGER NOT NULL,
    hash  TEXT NOT NULL,
    time  INTEGER NOT NULL
);
