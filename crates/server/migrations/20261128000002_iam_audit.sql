-- Identities and access: groups, managed and inline policies, tags, grants, temporary
-- credentials, instance tags, and the hash-chained audit trail.
ALTER TABLE users ADD COLUMN password_hash TEXT;
ALTER TABLE users ADD COLUMN permissions_boundary TEXT;
ALTER TABLE sessions ADD COLUMN owner_user_id TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN run_as TEXT NOT NULL DEFAULT '';

CREATE TABLE user_tags (
    user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (user_id, key)
);

CREATE TABLE groups (
    group_id   TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE group_members (
    group_id TEXT NOT NULL REFERENCES groups(group_id) ON DELETE CASCADE,
    user_id  TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, user_id)
);

-- Managed policies, attachable to users and groups.
CREATE TABLE policies (
    name        TEXT PRIMARY KEY,
    document    TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE policy_attachments (
    policy_name    TEXT NOT NULL REFERENCES policies(name) ON DELETE CASCADE,
    principal_type TEXT NOT NULL,   -- 'user' | 'group'
    principal_id   TEXT NOT NULL,
    PRIMARY KEY (policy_name, principal_type, principal_id)
);

CREATE TABLE inline_policies (
    principal_type TEXT NOT NULL,
    principal_id   TEXT NOT NULL,
    name           TEXT NOT NULL,
    document       TEXT NOT NULL,
    PRIMARY KEY (principal_type, principal_id, name)
);

-- Time-bound grants of a policy to a user (on-call rotations): ignored from expires_at on.
CREATE TABLE grants (
    grant_id   TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    document   TEXT NOT NULL,
    reason     TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX grants_user ON grants(user_id, expires_at);

-- Temporary credentials (as STS issues them).
CREATE TABLE session_credentials (
    access_key_id     TEXT PRIMARY KEY,
    user_id           TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    secret_access_key TEXT NOT NULL,
    token_hash        TEXT NOT NULL,
    mfa               INTEGER NOT NULL DEFAULT 0,
    issued_at         INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL
);

CREATE TABLE instance_tags (
    instance_id TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (instance_id, key)
);

-- Append-only, hash-chained: hash = SHA-256(prev_hash || canonical record).
CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY,
    time       INTEGER NOT NULL,
    event      TEXT NOT NULL,
    principal  TEXT NOT NULL,
    source_ip  TEXT NOT NULL,
    action     TEXT NOT NULL,
    resource   TEXT NOT NULL,
    decision   TEXT NOT NULL,
    statement  TEXT NOT NULL,
    request_id TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    detail     TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);

INSERT INTO policies (name, document, description, created_at, updated_at) VALUES
 ('AdministratorAccess',
  '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}',
  'Full access (built in)', 0, 0);

INSERT INTO policy_attachments (policy_name, principal_type, principal_id)
  SELECT 'AdministratorAccess', 'user', user_id FROM users WHERE is_admin = 1;
