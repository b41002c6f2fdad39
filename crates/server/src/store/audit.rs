//! The audit trail: append-only and hash-chained. Each record carries the hash of the one
//! before it, so altering, removing or inserting a record breaks the chain at that point, and
//! [`Store::verify_audit`] names the first bad record.

use sha2::Sha256;
use sqlx::Row;

use super::{Store, StoreError};

/// The hash the first record chains to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audited event, as the caller describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AuditEvent {
    /// `api`, `session-start`, `session-end`, `data-channel`.
    pub event: String,
    /// Principal ARN, or `anonymous` / `system`.
    pub principal: String,
    /// Caller's address.
    pub source_ip: String,
    /// Action (`ssm:StartSession`) or the operation when no action was reached.
    pub action: String,
    /// Resource ARN(s).
    pub resource: String,
    /// `Allow`, `Deny`, or an error code when the request failed before a decision.
    pub decision: String,
    /// The statement that decided (policy, index, Sid) or why nothing matched.
    pub statement: String,
    /// Request id.
    pub request_id: String,
    /// User agent.
    pub user_agent: String,
    /// Anything else worth keeping (JSON text).
    pub detail: String,
}

/// A stored record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// Epoch ms.
    pub time: i64,
    /// The event.
    #[serde(flatten)]
    pub event: AuditEvent,
    /// Hash of the previous record.
    pub prev_hash: String,
    /// This record's hash.
    pub hash: String,
}

/// Filters for listing.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Principal ARN contains this.
    pub principal: Option<String>,
    /// Exact action.
    pub action: Option<String>,
    /// Exact decision.
    pub decision: Option<String>,
    /// At or after, epoch ms.
    pub since: Option<i64>,
    /// At or before, epoch ms.
    pub until: Option<i64>,
}

/// Result of verifying the chain.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AuditVerification {
    /// Records checked.
    pub records: i64,
    /// Whether the chain is whole.
    pub ok: bool,
    /// The first bad record's seq, when broken.
    pub first_bad_seq: Option<i64>,
    /// What is wrong with it.
    pub problem: Option<String>,
}

/// The chained hash of a record: an HMAC-SHA-256 under a key derived from the master key over
/// the previous hash and every field, length-prefixed so no two records collide.
pub fn record_hash(key: &[u8; 32], prev_hash: &str, seq: i64, time: i64, e: &AuditEvent) -> String {
    use hmac::Mac;
    let mut h =
        <hmac::Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable_hmac());
    let fields: [&str; 10] = [
        &e.event,
        &e.principal,
        &e.source_ip,
        &e.action,
        &e.resource,
        &e.decision,
        &e.statement,
        &e.request_id,
        &e.user_agent,
        &e.detail,
    ];
    h.update(prev_hash.as_bytes());
    h.update(&seq.to_be_bytes());
    h.update(&time.to_be_bytes());
    for f in fields {
        h.update(&(f.len() as u64).to_be_bytes());
        h.update(f.as_bytes());
    }
    hex::encode(h.finalize().into_bytes())
}

#[allow(clippy::panic)]
fn unreachable_hmac() -> hmac::Hmac<Sha256> {
    panic!("HMAC accepts keys of any length")
}

fn row_to_record(r: &sqlx::sqlite::SqliteRow) -> AuditRecord {
    AuditRecord {
        seq: r.get("seq"),
        time: r.get("time"),
        event: AuditEvent {
            event: r.get("event"),
            principal: r.get("principal"),
            source_ip: r.get("source_ip"),
            action: r.get("action"),
            resource: r.get("resource"),
            decision: r.get("decision"),
            statement: r.get("statement"),
            request_id: r.get("request_id"),
            user_agent: r.get("user_agent"),
            detail: r.get("detail"),
        },
        prev_hash: r.get("prev_hash"),
        hash: r.get("hash"),
    }
}

impl Store {
    /// Appends a record to the chain. The caller fails its request when this fails.
    pub async fn append_audit(&self, e: &AuditEvent) -> Result<AuditRecord, StoreError> {
        let _writer = self.audit_lock.lock().await;
        // IMMEDIATE: take SQLite's write lock before reading the chain's head. A deferred
        // transaction that reads and then writes fails at once with SQLITE_BUSY(_SNAPSHOT)
        // when another connection wrote in between (busy_timeout cannot help it).
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
        let (prev_seq, prev_hash) = match last {
            Some(r) => (r.get::<i64, _>("seq"), r.get::<String, _>("hash")),
            None => (0, GENESIS.to_owned()),
        };
        let seq = prev_seq + 1;
        let time = super::now_ms();
        let hash = record_hash(self.key.audit_key(), &prev_hash, seq, time, e);
        sqlx::query(
            "INSERT INTO audit_log (seq, time, event, principal, source_ip, action, resource, decision, statement, \
             request_id, user_agent, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(seq)
        .bind(time)
        .bind(&e.event)
        .bind(&e.principal)
        .bind(&e.source_ip)
        .bind(&e.action)
        .bind(&e.resource)
        .bind(&e.decision)
        .bind(&e.statement)
        .bind(&e.request_id)
        .bind(&e.user_agent)
        .bind(&e.detail)
        .bind(&prev_hash)
        .bind(&hash)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(AuditRecord {
            seq,
            time,
            event: e.clone(),
            prev_hash,
            hash,
        })
    }

    /// Records matching `filter`, newest first, after `before_seq` when paging.
    pub async fn list_audit(
        &self,
        filter: &AuditFilter,
        before_seq: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let mut sql = String::from("SELECT * FROM audit_log WHERE 1 = 1");
        if filter.principal.is_some() {
            sql.push_str(" AND instr(principal, ?) > 0");
        }
        if filter.action.is_some() {
            sql.push_str(" AND action = ?");
        }
        if filter.decision.is_some() {
            sql.push_str(" AND decision = ?");
        }
        if filter.since.is_some() {
            sql.push_str(" AND time >= ?");
        }
        if filter.until.is_some() {
            sql.push_str(" AND time <= ?");
        }
        if before_seq.is_some() {
            sql.push_str(" AND seq < ?");
        }
        sql.push_str(" ORDER BY seq DESC LIMIT ?");
        let mut q = sqlx::query(&sql);
        for v in [&filter.principal, &filter.action, &filter.decision]
            .into_iter()
            .flatten()
        {
            q = q.bind(v);
        }
        for v in [filter.since, filter.until, before_seq]
            .into_iter()
            .flatten()
        {
            q = q.bind(v);
        }
        let rows = q.bind(limit).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(row_to_record).collect())
    }

    /// Walks the whole chain and reports the first record that does not fit.
    pub async fn verify_audit(&self) -> Result<AuditVerification, StoreError> {
        use futures_util::TryStreamExt;
        let mut rows = sqlx::query("SELECT * FROM audit_log ORDER BY seq").fetch(&self.pool);
        let mut expected_seq = 1i64;
        let mut prev_hash = GENESIS.to_owned();
        let mut count = 0i64;
        while let Some(r) = rows.try_next().await? {
            let rec = row_to_record(&r);
            count += 1;
            let bad = |problem: String| AuditVerification {
                records: count,
                ok: false,
                first_bad_seq: Some(rec.seq),
                problem: Some(problem),
            };
            if rec.seq != expected_seq {
                return Ok(bad(format!("expected record {expected_seq} next, found {}: records were removed or inserted", rec.seq)));
            }
            if rec.prev_hash != prev_hash {
                return Ok(bad(
                    "its previous-hash link does not match the record before it".into(),
                ));
            }
            if record_hash(
                self.key.audit_key(),
                &rec.prev_hash,
                rec.seq,
                rec.time,
                &rec.event,
            ) != rec.hash
            {
                return Ok(bad(
                    "its contents do not match its hash: the record was altered".into(),
                ));
            }
            prev_hash = rec.hash;
            expected_seq += 1;
        }
        Ok(AuditVerification {
            records: count,
            ok: true,
            first_bad_seq: None,
            problem: None,
        })
    }
}
