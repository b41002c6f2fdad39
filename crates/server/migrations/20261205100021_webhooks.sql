-- Webhook endpoints and their persistent outbox (issue 11, events).
-- The secret is sealed under the master key (secrets.rs, bound to webhooks.secret of its id).
CREATE TABLE webhooks (
    webhook_id  TEXT PRIMARY KEY,
    url         TEXT NOT NULL,
    events      TEXT NOT NULL,          -- JSON array of event-type patterns
    description TEXT NOT NULL DEFAULT '',
    secret      TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    -- While the endpoint is unavailable (unreachable, 429, 502-504), nothing is sent before
    -- this (epoch ms): one request per retry, not one per pending event.
    blocked_until INTEGER NOT NULL DEFAULT 0
);

-- One row per (webhook, event): written in the same transaction as the audit record the event
-- comes from, so an event is never lost between the record and its delivery.
CREATE TABLE webhook_deliveries (
    delivery_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id      TEXT NOT NULL REFERENCES webhooks(webhook_id) ON DELETE CASCADE,
    event_id        TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    body            TEXT NOT NULL,
    status          TEXT NOT NULL,      -- Pending | Delivered | Dead
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    delivered_at    INTEGER,
    last_status     INTEGER,
    last_error      TEXT NOT NULL DEFAULT '',
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_by_hook ON webhook_deliveries (webhook_id, delivery_id);
