-- Airlock's first schema: people, their keys, agents and sessions.
CREATE TABLE users (
    user_id     TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    is_admin    INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
);

CREATE TABLE access_keys (
    access_key_id     TEXT PRIMARY KEY,
    user_id           TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    secret_access_key TEXT NOT NULL,
    status            TEXT NOT NULL DEFAULT 'Active',
    created_at        INTEGER NOT NULL,
    last_used_at      INTEGER
);

CREATE TABLE activations (
    activation_id         TEXT PRIMARY KEY,
    code_hash             TEXT NOT NULL,
    iam_role              TEXT NOT NULL,
    description           TEXT NOT NULL DEFAULT '',
    default_instance_name TEXT NOT NULL DEFAULT '',
    registration_limit    INTEGER NOT NULL,
    registrations_count   INTEGER NOT NULL DEFAULT 0,
    expiration_date       INTEGER NOT NULL,
    created_at            INTEGER NOT NULL,
    tags                  TEXT NOT NULL DEFAULT '[]'
);

CREATE TABLE instances (
    instance_id     TEXT PRIMARY KEY,
    public_key      TEXT NOT NULL,
    activation_id   TEXT NOT NULL,
    name            TEXT NOT NULL DEFAULT '',
    computer_name   TEXT NOT NULL DEFAULT '',
    platform_type   TEXT NOT NULL DEFAULT 'Linux',
    platform_name   TEXT NOT NULL DEFAULT '',
    platform_version TEXT NOT NULL DEFAULT '',
    agent_version   TEXT NOT NULL DEFAULT '',
    ip_address      TEXT NOT NULL DEFAULT '',
    iam_role        TEXT NOT NULL DEFAULT '',
    registered_at   INTEGER NOT NULL,
    last_ping_at    INTEGER,
    deregistered_at INTEGER
);

CREATE TABLE sessions (
    session_id    TEXT PRIMARY KEY,
    target        TEXT NOT NULL,
    document_name TEXT NOT NULL,
    owner         TEXT NOT NULL,
    reason        TEXT NOT NULL DEFAULT '',
    status        TEXT NOT NULL,
    parameters    TEXT NOT NULL DEFAULT '{}',
    start_date    INTEGER NOT NULL,
    end_date      INTEGER,
    exit_code     INTEGER,
    end_reason    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX sessions_status ON sessions(status, start_date);
