-- Issue 10: every end of a session has a typed reason, and a live session keeps what
-- re-evaluating its owner's access needs (revocation ends live sessions).

-- The typed end reason: its kind (IdleTimeout, MaxDuration, AccessRevoked, TerminatedBy,
-- ClientGone, AgentGone, Exited …) and its machine-readable detail; `end_reason` keeps the
-- sentence shown to people.
ALTER TABLE sessions ADD COLUMN end_kind TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN end_detail TEXT NOT NULL DEFAULT '';
-- The maximum session duration in force when it started (minutes; NULL: none), shown by
-- DescribeSessions as AWS's `MaxSessionDuration`.
ALTER TABLE sessions ADD COLUMN max_session_duration INTEGER;
-- The document's sessionType (Standard_Stream, Port, InteractiveCommands …).
ALTER TABLE sessions ADD COLUMN session_type TEXT NOT NULL DEFAULT '';
-- The request that started the session, as the policy engine saw it.
ALTER TABLE sessions ADD COLUMN access_key_id TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN credential_expires_at INTEGER;
ALTER TABLE sessions ADD COLUMN token_issued_at INTEGER;
ALTER TABLE sessions ADD COLUMN mfa INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN source_ip TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN secure_transport INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN document_access_check INTEGER NOT NULL DEFAULT 0;

-- Open sessions by owner and by target: the concurrency limits count them at every start.
CREATE INDEX sessions_open_owner ON sessions(owner_user_id) WHERE status NOT IN ('Terminated', 'Failed');
CREATE INDEX sessions_open_target ON sessions(target) WHERE status NOT IN ('Terminated', 'Failed');
