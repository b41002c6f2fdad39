//! Webhook endpoints and the persistent outbox of their deliveries, in the store.
//!
//! A delivery row is `Pending` until an attempt gets a 2xx (`Delivered`) or it runs out of
//! attempts or time (`Dead`: the dead-letter list). Before an attempt the worker leases the
//! row by moving its `next_attempt_at` past the attempt's time limit, so a server that dies
//! mid-attempt sends it again after a restart (at-least-once; the event id stays the same).

use sqlx::{Row, SqliteConnection};

use super::cloud::{self, CloudEvent, SessionFacts};
use super::Events;
use crate::store::audit::AuditRecord;
use crate::store::{now_ms, Store, StoreError};

/// A webhook endpoint (its secret is never part of it: it is shown once, at creation).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Webhook {
    /// `wh-…`.
    pub webhook_id: String,
    /// Where events are POSTed.
    pub url: String,
    /// The event-type patterns it subscribes to (short forms: `session.started`, `audit.*`, `*`).
    pub events: Vec<String>,
    /// Free text.
    pub description: String,
    /// The ARN of who created it.
    pub created_by: String,
    /// Epoch ms.
    pub created_at: i64,
}

/// One delivery of one event to one webhook, as `deliveries` lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Delivery {
    /// Row id.
    pub delivery_id: i64,
    /// The webhook.
    pub webhook_id: String,
    /// The CloudEvent id (the `Webhook-Id` header).
    pub event_id: String,
    /// The CloudEvent type.
    pub event_type: String,
    /// `Pending`, `Delivered` or `Dead`.
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// When the next attempt is due (epoch ms), while pending.
    pub next_attempt_at: i64,
    /// When the event was enqueued (epoch ms).
    pub created_at: i64,
    /// When a 2xx came back (epoch ms).
    pub delivered_at: Option<i64>,
    /// The last HTTP status received.
    pub last_status: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: String,
}

/// A due delivery with what sending it needs.
#[derive(Clone, Debug)]
pub(crate) struct Due {
    pub delivery_id: i64,
    pub webhook_id: String,
    pub url: String,
    pub sealed_secret: String,
    pub event_id: String,
    pub body: String,
    pub attempts: i64,
    pub created_at: i64,
}

/// Where a webhook's secret is sealed: it opens only in its own row.
fn secret_at(webhook_id: &str) -> crate::secrets::SealedAt<'_> {
    crate::secrets::SealedAt {
        table: "webhooks",
        column: "secret",
        row: webhook_id,
    }
}

fn webhook_from_row(r: &sqlx::sqlite::SqliteRow) -> Webhook {
    Webhook {
        webhook_id: r.get("webhook_id"),
        url: r.get("url"),
        events: serde_json::from_str(&r.get::<String, _>("events")).unwrap_or_default(),
        description: r.get("description"),
        created_by: r.get("created_by"),
        created_at: r.get("created_at"),
    }
}

fn delivery_from_row(r: &sqlx::sqlite::SqliteRow) -> Delivery {
    Delivery {
        delivery_id: r.get("delivery_id"),
        webhook_id: r.get("webhook_id"),
        event_id: r.get("event_id"),
        event_type: r.get("event_type"),
        status: r.get("status"),
        attempts: r.get("attempts"),
        next_attempt_at: r.get("next_attempt_at"),
        created_at: r.get("created_at"),
        delivered_at: r.get("delivered_at"),
        last_status: r.get("last_status"),
        last_error: r.get("last_error"),
    }
}

/// A new webhook secret: 256 random bits, `whsec_` + base64url. Receivers use the whole string
/// as the HMAC key.
fn new_secret() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    )
}

async fn subscribers(
    conn: &mut SqliteConnection,
) -> Result<Vec<(String, Vec<String>)>, sqlx::Error> {
    let rows = sqlx::query("SELECT webhook_id, events FROM webhooks")
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let patterns: Vec<String> =
                serde_json::from_str(&r.get::<String, _>("events")).unwrap_or_default();
            (r.get("webhook_id"), patterns)
        })
        .collect())
}

async fn insert_delivery(
    conn: &mut SqliteConnection,
    webhook_id: &str,
    ev: &CloudEvent,
    now: i64,
    next_attempt_at: i64,
) -> Result<i64, sqlx::Error> {
    let res = sqlx::query(
        "INSERT OR IGNORE INTO webhook_deliveries (webhook_id, event_id, event_type, body, status, \
         attempts, next_attempt_at, created_at) VALUES (?, ?, ?, ?, 'Pending', 0, ?, ?)",
    )
    .bind(webhook_id)
    .bind(&ev.id)
    .bind(&ev.kind)
    .bind(ev.to_body())
    .bind(next_attempt_at)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(res.last_insert_rowid())
}

async fn enqueue_all(
    conn: &mut SqliteConnection,
    hooks: &[(String, Vec<String>)],
    evs: &[CloudEvent],
) -> Result<bool, sqlx::Error> {
    let now = now_ms();
    let mut any = false;
    for ev in evs {
        for (id, patterns) in hooks {
            if cloud::matches(patterns, &ev.kind) {
                insert_delivery(conn, id, ev, now, now).await?;
                any = true;
            }
        }
    }
    Ok(any)
}

async fn session_facts(
    conn: &mut SqliteConnection,
    session_id: &str,
) -> Result<Option<SessionFacts>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT session_id, target, owner, document_name, session_type FROM sessions WHERE session_id = ?",
    )
    .bind(session_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| SessionFacts {
        session_id: r.get("session_id"),
        target: r.get("target"),
        owner: r.get("owner"),
        document: r.get("document_name"),
        session_type: r.get("session_type"),
    }))
}

/// Within the transaction that appends `rec` to the audit trail: turns it into events and
/// enqueues one delivery per subscribed webhook. Returns the session events (for the log
/// stream, once committed) and whether any delivery was enqueued. A failure here fails the
/// record, so a record never exists without its deliveries.
pub(crate) async fn enqueue_audit(
    conn: &mut SqliteConnection,
    events: &Events,
    rec: &AuditRecord,
) -> Result<(Vec<CloudEvent>, bool), sqlx::Error> {
    let hooks = subscribers(conn).await?;
    let logging = events.logging();
    if hooks.is_empty() && !(logging && cloud::is_session_record(rec)) {
        return Ok((Vec::new(), false));
    }
    let facts = match cloud::is_session_record(rec)
        .then(|| cloud::session_of(rec))
        .flatten()
    {
        Some(id) => session_facts(conn, &id).await?,
        None => None,
    };
    let evs = cloud::from_audit(events.source(), rec, facts.as_ref());
    let enqueued = enqueue_all(conn, &hooks, &evs).await?;
    let lifecycle = if logging {
        evs.into_iter()
            .filter(|e| e.kind != cloud::AUDIT_RECORD)
            .collect()
    } else {
        Vec::new()
    };
    Ok((lifecycle, enqueued))
}

impl Store {
    /// The server's event hub (the same as `state.events`).
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Creates a webhook and returns it with its secret (stored sealed; shown only now).
    pub async fn create_webhook(
        &self,
        url: &str,
        patterns: &[String],
        description: &str,
        created_by: &str,
    ) -> Result<(Webhook, String), StoreError> {
        let id = format!("wh-{}", &uuid::Uuid::new_v4().simple().to_string()[..17]);
        let secret = new_secret();
        let hook = Webhook {
            webhook_id: id.clone(),
            url: url.to_owned(),
            events: patterns.to_vec(),
            description: description.to_owned(),
            created_by: created_by.to_owned(),
            created_at: now_ms(),
        };
        sqlx::query(
            "INSERT INTO webhooks (webhook_id, url, events, description, secret, created_by, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&hook.webhook_id)
        .bind(&hook.url)
        .bind(serde_json::to_string(&hook.events).unwrap_or_else(|_| "[]".into()))
        .bind(&hook.description)
        .bind(self.key.seal(&secret, &secret_at(&id)))
        .bind(&hook.created_by)
        .bind(hook.created_at)
        .execute(&self.pool)
        .await?;
        Ok((hook, secret))
    }

    /// All webhooks, oldest first.
    pub async fn list_webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        let rows = sqlx::query("SELECT * FROM webhooks ORDER BY created_at, webhook_id")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(webhook_from_row).collect())
    }

    /// One webhook.
    pub async fn webhook(&self, id: &str) -> Result<Option<Webhook>, StoreError> {
        let row = sqlx::query("SELECT * FROM webhooks WHERE webhook_id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(webhook_from_row))
    }

    /// Deletes a webhook and its deliveries (pending ones are not sent); whether it existed.
    pub async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        let res = sqlx::query("DELETE FROM webhooks WHERE webhook_id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Opens a webhook's sealed secret.
    pub(crate) fn open_webhook_secret(&self, id: &str, sealed: &str) -> Result<String, StoreError> {
        Ok(self.key.open(sealed, &secret_at(id))?)
    }

    /// Enqueues an event that no audit record stands for (`session.resumed`) to every
    /// subscribed webhook, in one transaction, and writes it to the log stream.
    pub async fn publish_event(&self, ev: &CloudEvent) -> Result<(), StoreError> {
        // IMMEDIATE: it reads the subscribers and then writes (see `append_audit`).
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let hooks = subscribers(&mut tx).await?;
        let enqueued = enqueue_all(&mut tx, &hooks, std::slice::from_ref(ev)).await?;
        tx.commit().await?;
        self.events.committed(std::slice::from_ref(ev), enqueued);
        Ok(())
    }

    /// Enqueues a test event for one webhook, leased until `lease_until` (the caller sends it
    /// at once); returns the delivery's id.
    pub(crate) async fn enqueue_test(
        &self,
        webhook_id: &str,
        ev: &CloudEvent,
        lease_until: i64,
    ) -> Result<i64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(insert_delivery(&mut conn, webhook_id, ev, now_ms(), lease_until).await?)
    }

    /// A due delivery by id, with what sending it needs.
    pub(crate) async fn delivery_to_send(
        &self,
        delivery_id: i64,
    ) -> Result<Option<Due>, StoreError> {
        let row = sqlx::query(
            "SELECT d.delivery_id, d.webhook_id, w.url, w.secret, d.event_id, d.body, d.attempts, d.created_at \
             FROM webhook_deliveries d JOIN webhooks w ON w.webhook_id = d.webhook_id WHERE d.delivery_id = ?",
        )
        .bind(delivery_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(due_from_row))
    }

    /// Pending deliveries due at `now`, oldest first.
    pub(crate) async fn due_deliveries(
        &self,
        now: i64,
        limit: i64,
    ) -> Result<Vec<Due>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.delivery_id, d.webhook_id, w.url, w.secret, d.event_id, d.body, d.attempts, d.created_at \
             FROM webhook_deliveries d JOIN webhooks w ON w.webhook_id = d.webhook_id \
             WHERE d.status = 'Pending' AND d.next_attempt_at <= ? AND w.blocked_until <= ? \
             ORDER BY d.delivery_id LIMIT ?",
        )
        .bind(now)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(due_from_row).collect())
    }

    /// Leases a due delivery until `until` (so a crash mid-attempt retries it after that);
    /// false when it is no longer due (someone else took it, or it was deleted).
    pub(crate) async fn lease_delivery(
        &self,
        delivery_id: i64,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError> {
        let res = sqlx::query(
            "UPDATE webhook_deliveries SET next_attempt_at = ? \
             WHERE delivery_id = ? AND status = 'Pending' AND next_attempt_at <= ?",
        )
        .bind(until)
        .bind(delivery_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Holds a webhook's deliveries until `until` (0: no longer), because its endpoint is
    /// unavailable (or, with 0, answered again).
    pub(crate) async fn block_webhook(
        &self,
        webhook_id: &str,
        until: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE webhooks SET blocked_until = ? WHERE webhook_id = ?")
            .bind(until)
            .bind(webhook_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Moves pending deliveries' next attempt to `at` (releasing their lease), without
    /// counting an attempt.
    pub(crate) async fn defer_deliveries(&self, ids: &[i64], at: i64) -> Result<(), StoreError> {
        for id in ids {
            sqlx::query(
                "UPDATE webhook_deliveries SET next_attempt_at = ? WHERE delivery_id = ? AND status = 'Pending'",
            )
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Sends dead letters of a webhook again (all, or those `ids`), from a fresh start: their
    /// attempts and age count anew. Returns how many were re-queued.
    pub async fn retry_dead(
        &self,
        webhook_id: &str,
        ids: Option<&[i64]>,
    ) -> Result<u64, StoreError> {
        let now = now_ms();
        let retry = |id: Option<i64>| {
            let mut sql = String::from(
                "UPDATE webhook_deliveries SET status = 'Pending', attempts = 0, next_attempt_at = ?, \
                 created_at = ?, last_error = '' WHERE webhook_id = ? AND status = 'Dead'",
            );
            if id.is_some() {
                sql.push_str(" AND delivery_id = ?");
            }
            sql
        };
        let mut n = 0;
        match ids {
            None => {
                n += sqlx::query(&retry(None))
                    .bind(now)
                    .bind(now)
                    .bind(webhook_id)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
            }
            Some(ids) => {
                for id in ids {
                    n += sqlx::query(&retry(Some(*id)))
                        .bind(now)
                        .bind(now)
                        .bind(webhook_id)
                        .bind(id)
                        .execute(&self.pool)
                        .await?
                        .rows_affected();
                }
            }
        }
        sqlx::query("UPDATE webhooks SET blocked_until = 0 WHERE webhook_id = ?")
            .bind(webhook_id)
            .execute(&self.pool)
            .await?;
        if n > 0 {
            self.events.wake();
        }
        Ok(n)
    }

    /// Gives back the leases (taken until `until`) of rows whose attempt did not finish (the
    /// server is stopping), so the next start sends them at once instead of after the lease.
    pub(crate) async fn release_leases(&self, ids: &[i64], until: i64) -> Result<(), StoreError> {
        let now = now_ms();
        for id in ids {
            sqlx::query(
                "UPDATE webhook_deliveries SET next_attempt_at = ? \
                 WHERE delivery_id = ? AND status = 'Pending' AND next_attempt_at = ?",
            )
            .bind(now)
            .bind(id)
            .bind(until)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// When the next pending delivery is due, if any.
    pub(crate) async fn next_delivery_due(&self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "SELECT MIN(MAX(d.next_attempt_at, w.blocked_until)) AS n FROM webhook_deliveries d \
             JOIN webhooks w ON w.webhook_id = d.webhook_id WHERE d.status = 'Pending'",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<Option<i64>, _>("n")?)
    }

    /// Records an attempt's outcome: `Delivered` on success; otherwise `Dead` when `retry_at`
    /// is `None`, else due again then.
    pub(crate) async fn record_attempt(
        &self,
        delivery_id: i64,
        delivered: bool,
        status: Option<u16>,
        error: &str,
        retry_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let (new_status, next) = match (delivered, retry_at) {
            (true, _) => ("Delivered", now),
            (false, Some(at)) => ("Pending", at),
            (false, None) => ("Dead", now),
        };
        sqlx::query(
            "UPDATE webhook_deliveries SET status = ?, attempts = attempts + 1, next_attempt_at = ?, \
             delivered_at = CASE WHEN ? THEN ? ELSE delivered_at END, last_status = ?, last_error = ? \
             WHERE delivery_id = ?",
        )
        .bind(new_status)
        .bind(next)
        .bind(delivered)
        .bind(now)
        .bind(status.map(i64::from))
        .bind(error)
        .bind(delivery_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deliveries, newest first, of one webhook and/or in one status.
    pub async fn list_deliveries(
        &self,
        webhook_id: Option<&str>,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut sql = String::from(
            "SELECT delivery_id, webhook_id, event_id, event_type, status, attempts, next_attempt_at, \
             created_at, delivered_at, last_status, last_error FROM webhook_deliveries WHERE 1 = 1",
        );
        if webhook_id.is_some() {
            sql.push_str(" AND webhook_id = ?");
        }
        if status.is_some() {
            sql.push_str(" AND status = ?");
        }
        sql.push_str(" ORDER BY delivery_id DESC LIMIT ?");
        let mut q = sqlx::query(&sql);
        for v in [webhook_id, status].into_iter().flatten() {
            q = q.bind(v);
        }
        let rows = q.bind(limit).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(delivery_from_row).collect())
    }

    /// Removes delivered rows delivered before `delivered_before` and dead letters that died
    /// before `dead_before` (epoch ms); pending rows always stay.
    pub(crate) async fn prune_deliveries(
        &self,
        delivered_before: i64,
        dead_before: i64,
    ) -> Result<u64, StoreError> {
        let res = sqlx::query(
            "DELETE FROM webhook_deliveries WHERE (status = 'Delivered' AND delivered_at < ?) \
             OR (status = 'Dead' AND next_attempt_at < ?)",
        )
        .bind(delivered_before)
        .bind(dead_before)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected())
    }
}

fn due_from_row(r: &sqlx::sqlite::SqliteRow) -> Due {
    Due {
        delivery_id: r.get("delivery_id"),
        webhook_id: r.get("webhook_id"),
        url: r.get("url"),
        sealed_secret: r.get("secret"),
        event_id: r.get("event_id"),
        body: r.get("body"),
        attempts: r.get("attempts"),
        created_at: r.get("created_at"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::audit::AuditEvent;

    async fn store(name: &str) -> (Store, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("airlock-outbox-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::datadir::private_dir(&dir).unwrap();
        let key = crate::secrets::MasterKey::load_or_create(&dir.join("master.key")).unwrap();
        (Store::open_in_dir(&dir, key).await.unwrap(), dir)
    }

    fn event(action: &str) -> AuditEvent {
        AuditEvent {
            event: "api".into(),
            principal: "arn:aws:iam::000000000000:user/admin".into(),
            action: action.into(),
            decision: "Allow".into(),
            ..Default::default()
        }
    }

    /// The record and its deliveries commit together: when the outbox cannot be written, the
    /// audit record is not written either (and the caller fails its request).
    #[tokio::test]
    async fn a_record_and_its_deliveries_commit_together() {
        let (store, dir) = store("atomic").await;
        let (hook, secret) = store
            .create_webhook("https://h.example/x", &["audit.*".into()], "", "arn:a")
            .await
            .unwrap();
        assert!(secret.starts_with("whsec_"));
        store.append_audit(&event("ssm:A")).await.unwrap();
        let rows = store
            .list_deliveries(Some(&hook.webhook_id), None, 10)
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].event_type, cloud::AUDIT_RECORD);
        assert_eq!(rows[0].status, "Pending");
        sqlx::query("DROP TABLE webhook_deliveries")
            .execute(&store.pool)
            .await
            .unwrap();
        assert!(store.append_audit(&event("ssm:B")).await.is_err());
        let records = store
            .list_audit(&Default::default(), None, 10)
            .await
            .unwrap();
        assert!(
            records.iter().all(|r| r.event.action != "ssm:B"),
            "{records:?}"
        );
        assert!(store.verify_audit().await.unwrap().ok);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn pruning_keeps_pending_and_recent_rows() {
        let (store, dir) = store("prune").await;
        let (hook, _) = store
            .create_webhook("https://h.example/x", &["*".into()], "", "arn:a")
            .await
            .unwrap();
        for a in ["ssm:A", "ssm:B", "ssm:C"] {
            store.append_audit(&event(a)).await.unwrap();
        }
        let rows = store
            .list_deliveries(Some(&hook.webhook_id), None, 10)
            .await
            .unwrap();
        let ids: Vec<i64> = rows.iter().map(|r| r.delivery_id).collect();
        store
            .record_attempt(ids[0], true, Some(200), "", None)
            .await
            .unwrap();
        store
            .record_attempt(ids[1], false, Some(500), "the endpoint answered 500", None)
            .await
            .unwrap();
        let now = now_ms();
        assert_eq!(
            store
                .prune_deliveries(now - 60_000, now - 60_000)
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            store.prune_deliveries(now + 1, now - 60_000).await.unwrap(),
            1
        );
        assert_eq!(store.prune_deliveries(now + 1, now + 1).await.unwrap(), 1);
        let left = store
            .list_deliveries(Some(&hook.webhook_id), None, 10)
            .await
            .unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].status, "Pending");
        // Deleting the webhook drops what it had pending.
        assert!(store.delete_webhook(&hook.webhook_id).await.unwrap());
        assert!(store
            .list_deliveries(None, None, 10)
            .await
            .unwrap()
            .is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
