-- Every connection a port session forwarded (port forwarding, SSH over a session): who, which
-- session and host, where to, bytes each way, when, how long, how it ended. The agent reports
-- each one when it ends; the owner and target come from the session row, not from the agent.
CREATE TABLE port_connections (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id        TEXT NOT NULL,
    owner             TEXT NOT NULL,
    target            TEXT NOT NULL,
    stream_id         INTEGER NOT NULL,
    destination       TEXT NOT NULL,
    mode              TEXT NOT NULL,
    bytes_to_target   INTEGER NOT NULL,
    bytes_from_target INTEGER NOT NULL,
    started_at        INTEGER NOT NULL,
    duration_ms       INTEGER NOT NULL,
    end_reason        TEXT NOT NULL,
    failed            INTEGER NOT NULL,
    recorded_at       INTEGER NOT NULL
);
CREATE INDEX port_connections_session ON port_connections(session_id);
CREATE INDEX port_connections_started ON port_connections(started_at);
