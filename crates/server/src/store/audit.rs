//! The audit trail: append-only and hash-chained. Each record carries the hash of the one
//! before it, so altering, removing or inserting a record breaks the chain at that point, and
//! [`Store::verify_audit`] names the first bad record.
//!
//! The chain alone cannot show that records were cut from its end, so the server keeps a
//! signed checkpoint of its head outside the database ([`crate::audit_checkpoint`]), and
//! [`Store::verify_audit_against`] names a tail that is shorter than the checkpoint
//! (`truncated`) or different from it (`rolled-back`). The server chains each record to the
//! last one it wrote itself, not to whatever the table ends with: records deleted under a
//! running server leave a gap the walk names, instead of being papered over.

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
    /// Whether the chain is whole and its tail matches the checkpoint.
    pub ok: bool,
    /// What was found, by name: `intact`, `broken` (a record altered, removed or inserted),
    /// `truncated` (records the checkpoint covers are missing from the end), `rolled-back`
    /// (the database is an older copy, or its tail differs from the checkpointed one),
    /// `checkpoint-tampered` (the checkpoint's signature does not verify), or
    /// `checkpoint-missing` (records exist but no checkpoint covers them: a warning).
    pub status: String,
    /// The first bad (or first missing) record's seq.
    pub first_bad_seq: Option<i64>,
    /// What is wrong, in words.
    pub problem: Option<String>,
    /// The checkpoint compared against, when one verified.
    pub checkpoint: Option<Checkpoint>,
    /// What the server recorded about the checkpoint itself (found missing, altered or ahead
    /// of the database at a start), from the chain's `audit-checkpoint` records: a new
    /// checkpoint was started then, and what was cut before it could not be checked.
    pub warnings: Vec<String>,
}

/// A signed statement of the chain's head: `count` records, the last with hash `hash`, as of
/// `time` (epoch ms). Kept outside the database ([`crate::audit_checkpoint`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Checkpoint {
    /// Records covered (the seq of the last one).
    pub count: i64,
    /// Hash of record `count`.
    pub hash: String,
    /// When it was written, epoch ms.
    pub time: i64,
}

/// What the checkpoint file held when it was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointRead {
    /// No file.
    Missing,
    /// A file whose signature or format does not verify (why).
    Invalid(String),
    /// A signed checkpoint.
    Valid(Checkpoint),
}

/// The newest record of the chain as the server knows it: where its next record chains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditHead {
    /// Its seq.
    pub seq: i64,
    /// Its hash.
    pub hash: String,
}

/// The chain walked, before any checkpoint is consulted.
struct Walk {
    verification: AuditVerification,
    /// The first seq that should be there and is not, when the walk found one.
    first_missing: Option<i64>,
}

fn when(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
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
        let mut head = self.audit_lock.lock().await;
        // IMMEDIATE: take SQLite's write lock before reading the chain's head. A deferred
        // transaction that reads and then writes fails at once with SQLITE_BUSY(_SNAPSHOT)
        // when another connection wrote in between (busy_timeout cannot help it).
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| AuditHead {
                seq: r.get("seq"),
                hash: r.get("hash"),
            });
        let (prev_seq, prev_hash) = match (&*head, last) {
            (Some(mine), Some(table)) if *mine == table => (table.seq, table.hash),
            // The table's end is not the record this server wrote last: records were deleted
            // (or forged) under it. Chain to its own record, so the hole stays visible.
            (Some(mine), table) => {
                tracing::error!(
                    "the audit trail's newest record is {} but this server's last is {}: \
                     records were removed or inserted under it; chaining after its own",
                    table
                        .as_ref()
                        .map(|t| t.seq.to_string())
                        .unwrap_or_else(|| "none".into()),
                    mine.seq
                );
                let seq = table.map(|t| t.seq).unwrap_or(0).max(mine.seq);
                (seq, mine.hash.clone())
            }
            (None, Some(table)) => (table.seq, table.hash),
            (None, None) => (0, GENESIS.to_owned()),
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
        let record = AuditRecord {
            seq,
            time,
            event: e.clone(),
            prev_hash,
            hash,
        };
        // The record's events (webhook deliveries) commit with it or not at all.
        let (lifecycle, enqueued) =
            crate::events::outbox::enqueue_audit(&mut tx, &self.events, &record).await?;
        tx.commit().await?;
        *head = Some(AuditHead {
            seq,
            hash: record.hash.clone(),
        });
        *self.published_head() = head.clone();
        drop(head);
        self.events.committed(&lifecycle, enqueued);
        Ok(record)
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

    /// Walks the whole chain and reports the first record that does not fit. It cannot see
    /// records cut from the end: [`Store::verify_audit_against`] compares with the checkpoint.
    pub async fn verify_audit(&self) -> Result<AuditVerification, StoreError> {
        Ok(self.walk_audit().await?.verification)
    }

    async fn walk_audit(&self) -> Result<Walk, StoreError> {
        use futures_util::TryStreamExt;
        let mut rows = sqlx::query("SELECT * FROM audit_log ORDER BY seq").fetch(&self.pool);
        let mut expected_seq = 1i64;
        let mut prev_hash = GENESIS.to_owned();
        let mut count = 0i64;
        let mut warnings = Vec::new();
        while let Some(r) = rows.try_next().await? {
            let rec = row_to_record(&r);
            count += 1;
            let authentic = record_hash(
                self.key.audit_key(),
                &rec.prev_hash,
                rec.seq,
                rec.time,
                &rec.event,
            ) == rec.hash;
            // The server's own notes about the checkpoint are shown even where the chain
            // breaks (a note is often the first record after a hole), when their hash holds.
            if authentic && rec.event.event == "audit-checkpoint" {
                warnings.push(format!(
                    "record {} ({}): {}",
                    rec.seq,
                    when(rec.time),
                    rec.event.statement
                ));
            }
            let bad = |problem: String| AuditVerification {
                records: count,
                ok: false,
                status: "broken".into(),
                first_bad_seq: Some(rec.seq),
                problem: Some(problem),
                checkpoint: None,
                warnings: warnings.clone(),
            };
            if rec.seq != expected_seq {
                return Ok(Walk {
                    verification: bad(format!("expected record {expected_seq} next, found {}: records were removed or inserted", rec.seq)),
                    first_missing: (rec.seq > expected_seq).then_some(expected_seq),
                });
            }
            if rec.prev_hash != prev_hash {
                return Ok(Walk {
                    verification: bad(
                        "its previous-hash link does not match the record before it".into()
                    ),
                    first_missing: None,
                });
            }
            if !authentic {
                return Ok(Walk {
                    verification: bad(
                        "its contents do not match its hash: the record was altered".into()
                    ),
                    first_missing: None,
                });
            }
            prev_hash = rec.hash;
            expected_seq += 1;
        }
        Ok(Walk {
            verification: AuditVerification {
                records: count,
                ok: true,
                status: "intact".into(),
                first_bad_seq: None,
                problem: None,
                checkpoint: None,
                warnings,
            },
            first_missing: Some(expected_seq),
        })
    }

    /// Walks the chain and compares its end with the checkpoint: records the checkpoint
    /// covers must all be there, and record `count` must have its hash. Names `truncated`,
    /// `rolled-back`, `checkpoint-tampered` and `checkpoint-missing` (see
    /// [`AuditVerification::status`]).
    pub async fn verify_audit_against(
        &self,
        checkpoint: &CheckpointRead,
    ) -> Result<AuditVerification, StoreError> {
        let walk = self.walk_audit().await?;
        let mut v = walk.verification;
        let chain_problem = v
            .problem
            .as_ref()
            .zip(v.first_bad_seq)
            .map(|(p, seq)| format!("; the chain also breaks at record {seq}: {p}"))
            .unwrap_or_default();
        let rows = self.audit_rows().await?;
        match checkpoint {
            CheckpointRead::Missing => {
                if rows > 0 && v.ok {
                    v.ok = false;
                    v.status = "checkpoint-missing".into();
                    v.problem = Some(format!(
                        "no checkpoint file ({}) covers the chain's {rows} records, so records \
                         deleted from its end would go unnoticed; the server writes one within \
                         seconds of its next record",
                        crate::audit_checkpoint::FILE_NAME
                    ));
                }
            }
            CheckpointRead::Invalid(why) => {
                v.ok = false;
                v.status = "checkpoint-tampered".into();
                v.problem = Some(format!(
                    "the checkpoint file ({}) does not verify ({why}): it was altered or \
                     replaced, so the chain's end cannot be checked{chain_problem}",
                    crate::audit_checkpoint::FILE_NAME
                ));
            }
            CheckpointRead::Valid(c) => {
                v.checkpoint = Some(c.clone());
                let at = if c.count > 0 {
                    Some(self.audit_hash_at(c.count).await?)
                } else {
                    None
                };
                match at {
                    Some(None) => {
                        let seen = self.checkpoint_seen().await?.map(|s| s.count).unwrap_or(0);
                        let last = self.audit_db_head().await?.map(|h| h.seq).unwrap_or(0);
                        v.ok = false;
                        v.first_bad_seq = walk
                            .first_missing
                            .filter(|m| *m <= c.count)
                            .or(v.first_bad_seq);
                        if seen < c.count {
                            v.status = "rolled-back".into();
                            v.problem = Some(format!(
                                "the database is an older copy: the checkpoint of {} covers {} records, \
                                 but record {} is missing and the database last saw a checkpoint at record \
                                 {seen}{chain_problem}",
                                when(c.time), c.count, c.count
                            ));
                        } else {
                            v.status = "truncated".into();
                            v.problem = Some(format!(
                                "records were deleted from the end of the chain: the checkpoint of {} \
                                 covers {} records, but record {} is missing (the trail now ends at record {}){chain_problem}",
                                when(c.time), c.count, c.count, last
                            ));
                        }
                    }
                    Some(Some(hash)) if hash != c.hash => {
                        v.ok = false;
                        v.status = "rolled-back".into();
                        v.first_bad_seq = v.first_bad_seq.or(Some(c.count));
                        v.problem = Some(format!(
                            "record {} is not the one the checkpoint of {} covers: the database was \
                             restored from an older copy or its records rewritten{chain_problem}",
                            c.count,
                            when(c.time)
                        ));
                    }
                    _ => {}
                }
            }
        }
        Ok(v)
    }

    /// Records in the table.
    pub async fn audit_rows(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM audit_log")
            .fetch_one(&self.pool)
            .await?)
    }

    /// The table's newest record.
    pub async fn audit_db_head(&self) -> Result<Option<AuditHead>, StoreError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| AuditHead {
            seq: r.get("seq"),
            hash: r.get("hash"),
        }))
    }

    /// The hash of record `seq`, if it exists.
    pub async fn audit_hash_at(&self, seq: i64) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = ?")
                .bind(seq)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The newest record this server wrote (or was told of at start): what the checkpoint
    /// records.
    pub fn audit_head(&self) -> Option<AuditHead> {
        self.published_head().clone()
    }

    /// Sets where the next record chains before the server serves: the table's end, or the
    /// checkpoint's when records the checkpoint covers are gone (so the hole stays visible).
    pub async fn seed_audit_head(&self, head: Option<AuditHead>) {
        let mut mine = self.audit_lock.lock().await;
        mine.clone_from(&head);
        *self.published_head() = head;
    }

    fn published_head(&self) -> std::sync::MutexGuard<'_, Option<AuditHead>> {
        self.audit_head
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The last checkpoint the database was told of (written before each checkpoint file): a
    /// database restored from an older copy remembers an older one, which tells a rollback
    /// from records deleted at the end.
    pub async fn checkpoint_seen(&self) -> Result<Option<Checkpoint>, StoreError> {
        let row = sqlx::query("SELECT count, hash, time FROM audit_checkpoint_seen WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| Checkpoint {
            count: r.get("count"),
            hash: r.get("hash"),
            time: r.get("time"),
        }))
    }

    /// Records the checkpoint about to be written (see [`Store::checkpoint_seen`]).
    pub async fn set_checkpoint_seen(&self, c: &Checkpoint) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_checkpoint_seen (id, count, hash, time) VALUES (1, ?, ?, ?) \
             ON CONFLICT(id) DO UPDATE SET count = excluded.count, hash = excluded.hash, time = excluded.time",
        )
        .bind(c.count)
        .bind(&c.hash)
        .bind(c.time)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
