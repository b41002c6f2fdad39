-- Session documents operators write (CreateDocument), and SSM-SessionManagerRunShell, the
-- session preferences. AWS-owned documents are built into the server and not stored here.
-- Each UpdateDocument adds a version; sessions run the default version.
CREATE TABLE documents (
    name            TEXT PRIMARY KEY,
    display_name    TEXT NOT NULL DEFAULT '',
    document_type   TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    default_version INTEGER NOT NULL,
    latest_version  INTEGER NOT NULL,
    tags            TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE document_versions (
    name          TEXT NOT NULL REFERENCES documents(name) ON DELETE CASCADE,
    version       INTEGER NOT NULL,
    version_name  TEXT,
    content       TEXT NOT NULL,
    format        TEXT NOT NULL,
    hash          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE UNIQUE INDEX document_version_names ON document_versions(name, version_name);
