//! The audit checkpoint: a signed statement of the chain's head (record count, last hash, time)
//! kept in `audit.checkpoint` in the data directory, outside the database. The hash chain shows
//! a record altered, removed or inserted, but not records cut from its end; the checkpoint
//! does: verification requires every record it covers, and the covered last one unchanged.
//!
//! It is signed (HMAC-SHA-256) with a key derived from the master key under its own label, so
//! someone who can write the database and the data directory but not read the master key
//! cannot forge one. A background task ([`Checkpointer::spawn_refresh`]) rewrites it when the
//! head moved, every [`crate::ServerConfig::audit_checkpoint_interval`], and on shutdown —
//! never on an append's path. Each write is atomic (temporary file, fsync, rename, fsync of
//! the directory) and follows an fsync of the database's WAL, so a crash never leaves the
//! checkpoint ahead of what the database kept.
//!
//! A checkpoint only advances along its own chain: before replacing it, the writer checks that
//! the record it covers is still there with its hash. When that fails (records deleted or the
//! database restored while the server was down, or under it), or the file at start does not
//! verify, the writer stops ("frozen") and leaves the evidence for `airlock audit verify`;
//! the operator moves the file aside and restarts to start a new checkpoint, which the chain
//! records. A file changed or removed under a running server is put back from the server's
//! own copy (and logged).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hmac::Mac;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::store::audit::{AuditEvent, AuditHead, AuditVerification, Checkpoint, CheckpointRead};
use crate::store::{now_ms, Store, StoreError};

/// The checkpoint's file name in the data directory.
pub const FILE_NAME: &str = "audit.checkpoint";
/// The signature's domain label.
const LABEL: &[u8] = b"airlock-audit-checkpoint-v1";
/// The file format's version.
const VERSION: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct File {
    version: u32,
    count: i64,
    hash: String,
    time: i64,
    signature: String,
}

fn signature(key: &[u8; 32], c: &Checkpoint) -> String {
    #[allow(clippy::expect_used)]
    let mut h =
        <hmac::Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    h.update(LABEL);
    h.update(&VERSION.to_be_bytes());
    h.update(&c.count.to_be_bytes());
    h.update(&c.time.to_be_bytes());
    h.update(&(c.hash.len() as u64).to_be_bytes());
    h.update(c.hash.as_bytes());
    hex::encode(h.finalize().into_bytes())
}

/// Reads and checks the checkpoint at `path`.
pub fn read(path: &Path, key: &[u8; 32]) -> CheckpointRead {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return CheckpointRead::Missing,
        Err(e) => return CheckpointRead::Invalid(format!("unreadable: {e}")),
    };
    let f: File = match serde_json::from_slice(&text) {
        Ok(f) => f,
        Err(e) => return CheckpointRead::Invalid(format!("malformed: {e}")),
    };
    if f.version != VERSION {
        return CheckpointRead::Invalid(format!("unknown version {}", f.version));
    }
    let c = Checkpoint {
        count: f.count,
        hash: f.hash,
        time: f.time,
    };
    let expected = signature(key, &c);
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        expected.as_bytes(),
        f.signature.as_bytes(),
    )) {
        return CheckpointRead::Invalid("its signature does not match".into());
    }
    CheckpointRead::Valid(c)
}

/// Writes the checkpoint atomically, mode 0600: a reader sees the old one or the new one.
pub fn write(path: &Path, key: &[u8; 32], c: &Checkpoint) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let body = serde_json::to_vec_pretty(&File {
        version: VERSION,
        count: c.count,
        hash: c.hash.clone(),
        time: c.time,
        signature: signature(key, c),
    })
    .map_err(std::io::Error::other)?;
    let tmp = path.with_extension("checkpoint.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(crate::datadir::FILE_MODE)
        .open(&tmp)?;
    f.write_all(&body)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Keeps the checkpoint: see the module documentation. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Checkpointer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    path: PathBuf,
    /// The database files to fsync before a checkpoint is written (none for `:memory:`).
    db_files: Vec<PathBuf>,
    anchor: tokio::sync::Mutex<Anchor>,
}

#[derive(Debug, Default)]
struct Anchor {
    /// The checkpoint on file that this server trusts (read at start, or written since).
    last: Option<Checkpoint>,
    /// Why the writer stopped, when it did.
    frozen: Option<String>,
}

fn event(decision: &str, statement: String) -> AuditEvent {
    AuditEvent {
        event: "audit-checkpoint".into(),
        principal: "system".into(),
        action: "airlock:AuditCheckpoint".into(),
        decision: decision.into(),
        statement,
        ..Default::default()
    }
}

impl Checkpointer {
    /// Reads the checkpoint in `data_dir`, checks the database against it, sets where the
    /// chain continues, and writes a first checkpoint when it may. What it finds wrong is
    /// logged and put on the audit record. `db_file` is the SQLite file (its WAL is synced
    /// before each checkpoint).
    pub async fn start(
        store: Store,
        data_dir: &Path,
        db_file: Option<PathBuf>,
    ) -> Result<Checkpointer, StoreError> {
        let path = data_dir.join(FILE_NAME);
        let key = *store.key.checkpoint_key();
        let found = read(&path, &key);
        let table = store.audit_db_head().await?;
        let mut anchor = Anchor::default();
        let mut head = table.clone();
        let mut note = None;
        match found {
            CheckpointRead::Missing => {
                if let Some(t) = &table {
                    tracing::warn!(
                        "{} is missing but the audit trail has records: starting a new checkpoint \
                         after record {}; deletions before this start cannot be checked",
                        path.display(),
                        t.seq
                    );
                    note = Some(event(
                        "CheckpointMissing",
                        format!(
                            "no audit checkpoint was found at start; records up to {} were not covered by one",
                            t.seq
                        ),
                    ));
                }
            }
            CheckpointRead::Invalid(why) => {
                let msg = format!(
                    "{} does not verify ({why}): it was altered or replaced",
                    path.display()
                );
                tracing::error!("{msg}; the checkpoint is left as it is for `airlock audit verify`; move it aside and restart to start a new one");
                note = Some(event("CheckpointTampered", msg.clone()));
                anchor.frozen = Some(msg);
            }
            CheckpointRead::Valid(c) => {
                let at = if c.count > 0 {
                    Some(store.audit_hash_at(c.count).await?)
                } else {
                    None
                };
                match at {
                    Some(Some(h)) if h != c.hash => {
                        let msg = format!(
                            "audit record {} differs from the checkpoint's: the database was restored from an older copy or rewritten",
                            c.count
                        );
                        tracing::error!(
                            "{msg}; the checkpoint is left as it is for `airlock audit verify`"
                        );
                        note = Some(event("CheckpointRolledBack", msg.clone()));
                        anchor.frozen = Some(msg);
                        anchor.last = Some(c);
                    }
                    Some(None) => {
                        let msg = format!(
                            "audit record {}, covered by the checkpoint, is missing (the trail ends at {}): records were deleted or the database restored from an older copy",
                            c.count,
                            table.as_ref().map(|t| t.seq).unwrap_or(0)
                        );
                        tracing::error!("{msg}; new records continue after the checkpoint, leaving the gap visible");
                        note = Some(event("CheckpointTruncated", msg.clone()));
                        anchor.frozen = Some(msg);
                        if table.as_ref().map(|t| t.seq).unwrap_or(0) < c.count {
                            head = Some(AuditHead {
                                seq: c.count,
                                hash: c.hash.clone(),
                            });
                        }
                        anchor.last = Some(c);
                    }
                    _ => anchor.last = Some(c),
                }
            }
        }
        store.seed_audit_head(head).await;
        if let Some(e) = note {
            store.append_audit(&e).await?;
        }
        let db_files = db_file
            .map(|db| {
                let wal = PathBuf::from(format!("{}-wal", db.display()));
                vec![wal, db]
            })
            .unwrap_or_default();
        let me = Checkpointer {
            inner: Arc::new(Inner {
                store,
                path,
                db_files,
                anchor: tokio::sync::Mutex::new(anchor),
            }),
        };
        me.flush().await;
        Ok(me)
    }

    /// Refreshes the checkpoint every `interval` until `shutdown` (whose last write is
    /// [`crate::RunningServer::shutdown`]'s).
    ///
    /// Returns the task: shutdown waits for it before its own last flush, so that no refresh
    /// of this run writes the file after the server has stopped.
    pub fn spawn_refresh(
        &self,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(interval) => me.flush().await,
                }
            }
        })
    }

    /// Writes the server's current head as the checkpoint, if it moved, the record the
    /// current checkpoint covers is still there unchanged, and the writer is not frozen.
    pub async fn flush(&self) {
        let store = &self.inner.store;
        let mut anchor = self.inner.anchor.lock().await;
        if let Some(last) = &anchor.last {
            // The server's own copy is the truth: a file changed or removed under it is put
            // back (the evidence of a truncation included), and that is logged.
            let on_disk = read(&self.inner.path, store.key.checkpoint_key());
            if on_disk != CheckpointRead::Valid(last.clone()) {
                tracing::error!(
                    "{} was changed or removed while the server ran ({}); restoring it from the server's own record",
                    self.inner.path.display(),
                    match on_disk {
                        CheckpointRead::Missing => "missing".to_owned(),
                        CheckpointRead::Invalid(why) => why,
                        CheckpointRead::Valid(c) => format!("it names record {}", c.count),
                    }
                );
                self.write(last.clone()).await;
            }
        }
        if anchor.frozen.is_some() {
            return;
        }
        let Some(head) = store.audit_head() else {
            return;
        };
        if let Some(last) = &anchor.last {
            if last.count == head.seq && last.hash == head.hash {
                return;
            }
            match store.audit_hash_at(last.count).await {
                Ok(Some(h)) if h == last.hash => {}
                Ok(found) => {
                    let msg = format!(
                        "audit record {} covered by the checkpoint is {}: the checkpoint is no longer advanced",
                        last.count,
                        if found.is_some() { "changed" } else { "missing" }
                    );
                    tracing::error!("{msg}");
                    anchor.frozen = Some(msg);
                    return;
                }
                Err(e) => {
                    tracing::warn!("audit checkpoint: could not read the trail: {e}");
                    return;
                }
            }
        }
        let c = Checkpoint {
            count: head.seq,
            hash: head.hash,
            time: now_ms(),
        };
        let files = self.inner.db_files.clone();
        let synced = tokio::task::spawn_blocking(move || {
            for f in files {
                match std::fs::File::open(&f) {
                    Ok(file) => file.sync_all()?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
        .await;
        if let Err(e) = synced.map_err(std::io::Error::other).and_then(|r| r) {
            tracing::warn!("audit checkpoint: could not sync the database: {e}");
            return;
        }
        if let Err(e) = store.set_checkpoint_seen(&c).await {
            tracing::warn!("audit checkpoint: {e}");
            return;
        }
        if self.write(c.clone()).await {
            anchor.last = Some(c);
        }
    }

    /// Writes `c` to the file (off the runtime's threads); false, logged, when that fails.
    async fn write(&self, c: Checkpoint) -> bool {
        let path = self.inner.path.clone();
        let key = *self.inner.store.key.checkpoint_key();
        let written = tokio::task::spawn_blocking(move || write(&path, &key, &c)).await;
        match written.map_err(std::io::Error::other).and_then(|r| r) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    "audit checkpoint: writing {}: {e}",
                    self.inner.path.display()
                );
                false
            }
        }
    }

    /// What the checkpoint file holds now.
    pub fn read(&self) -> CheckpointRead {
        read(&self.inner.path, self.inner.store.key.checkpoint_key())
    }

    /// Brings the checkpoint up to date, then verifies the chain against it.
    pub async fn verify(&self) -> Result<AuditVerification, StoreError> {
        self.flush().await;
        self.inner.store.verify_audit_against(&self.read()).await
    }

    /// Where the checkpoint file is.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}
