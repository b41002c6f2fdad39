//! Session recording at the gateway (issue 11): shell and interactive-command sessions are
//! recorded as asciicast v2 in signed, hash-chained chunks (`airlock-recording`), streamed to an
//! object store while the session runs, and sealed with a signed manifest when it ends — or by
//! crash recovery on the next start. Port and SSH sessions are never recorded.
//!
//! [`Recordings`] is the registry in [`AppState`]: it decides at StartSession whether and where a
//! session is recorded (and refuses it under FailClosed while the store is down), hands the
//! relay a [`task::Handle`], and ends recordings with their sessions.

pub mod objects;
pub mod recover;
pub mod task;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use crate::api::ApiError;
use crate::preferences::{FailurePolicy, Preferences};
use crate::state::AppState;
use crate::store::Session;
use objects::Objects;

/// Recording settings from the server's command line.
#[derive(Clone, Debug)]
pub struct RecordingConfig {
    /// `--recordings URL` (`file:///dir` or `s3://bucket/prefix`): overrides the preferences.
    pub url: Option<String>,
    /// `--s3-endpoint`: an S3-compatible endpoint (else AWS's, or `AWS_ENDPOINT`).
    pub s3_endpoint: Option<String>,
    /// `--s3-region` (else `AWS_REGION` / `AWS_DEFAULT_REGION`).
    pub s3_region: Option<String>,
    /// Most bytes the local spool holds across sessions while the store is down.
    pub spool_max_bytes: u64,
    /// How often a chunk is cut while there is activity (one second: a crash loses at most it).
    pub flush_interval: Duration,
    /// How long one store operation may take before it counts as failed.
    pub store_timeout: Duration,
    /// Bytes of relayed frames one session's recorder may have queued before the relay waits
    /// for it (a flood of output is recorded in full, at the recorder's pace).
    pub queue_max_bytes: usize,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            url: None,
            s3_endpoint: None,
            s3_region: None,
            spool_max_bytes: 1024 * 1024 * 1024,
            flush_interval: Duration::from_secs(1),
            store_timeout: Duration::from_secs(5),
            queue_max_bytes: 32 * 1024 * 1024,
        }
    }
}

/// What can go wrong recording.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The location is not usable as configured.
    #[error("recording configuration: {0}")]
    Config(String),
    /// The object store failed or did not answer.
    #[error("recording store: {0}")]
    Store(String),
}

/// Session types that are recorded: shells and interactive commands. Never port sessions
/// (port forwarding, SSH), whose plaintext recording must not read or keep.
pub fn recorded_type(session_type: &str) -> bool {
    matches!(session_type, "Standard_Stream" | "InteractiveCommands")
}

/// How one session will be recorded, decided at StartSession.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Store location URL.
    pub url: String,
    /// Whether input is recorded.
    pub record_input: bool,
    /// The failure policy in force.
    pub policy: FailurePolicy,
}

/// The recordings of this server: settings, the signing key, the live recorders.
pub struct Recordings {
    config: RecordingConfig,
    data_dir: PathBuf,
    seed: [u8; 32],
    public_key: [u8; 32],
    active: Mutex<HashMap<String, (task::Handle, Plan)>>,
    /// Uploaders' queues of sessions whose recording is not sealed yet (live, or ended with
    /// chunks still waiting for the store): GetSessionRecording reads what waits there.
    pending: Mutex<HashMap<String, Arc<task::Outbox>>>,
    stores: Mutex<HashMap<String, Arc<Objects>>>,
    health: Mutex<HashMap<String, (Arc<AtomicBool>, Instant)>>,
    spool: Arc<task::SpoolBudget>,
}

impl std::fmt::Debug for Recordings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recordings")
            .field("config", &self.config)
            .field("public_key", &hex::encode(self.public_key))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Recordings {
    /// The registry, signing with `seed` (from the master key). The spool budget starts from
    /// what a previous run left spooled on disk (crash recovery uploads it later), so that
    /// `spool_max_bytes` bounds the spool across restarts, not per run.
    pub fn new(config: RecordingConfig, data_dir: PathBuf, seed: [u8; 32]) -> Recordings {
        let already = spooled_bytes(&data_dir.join("recording-spool"));
        if already > 0 {
            tracing::info!(
                bytes = already,
                bound = config.spool_max_bytes,
                "recording spool left by the previous run counted against the bound"
            );
        }
        let spool = Arc::new(task::SpoolBudget {
            used: AtomicU64::new(already),
            max: config.spool_max_bytes,
        });
        Recordings {
            public_key: airlock_recording::public_key(&seed),
            config,
            data_dir,
            seed,
            active: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            stores: Mutex::new(HashMap::new()),
            health: Mutex::new(HashMap::new()),
            spool,
        }
    }

    /// The public key recordings verify against (hex in the API).
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// The spool directory of one session.
    pub fn spool_dir(&self, session_id: &str) -> PathBuf {
        self.data_dir.join("recording-spool").join(session_id)
    }

    /// Where recordings go now: `--recordings`, else the preferences' S3 bucket, else the data
    /// directory.
    pub fn location(&self, prefs: &Preferences) -> String {
        if let Some(url) = &self.config.url {
            return url.clone();
        }
        if !prefs.s3_bucket_name.is_empty() {
            let prefix = prefs.s3_key_prefix.trim_matches('/');
            return if prefix.is_empty() {
                format!("s3://{}", prefs.s3_bucket_name)
            } else {
                format!("s3://{}/{prefix}", prefs.s3_bucket_name)
            };
        }
        format!(
            "file://{}",
            absolute(&self.data_dir.join("recordings")).display()
        )
    }

    /// The opened store at `url` (opened once, then shared).
    pub fn objects(&self, url: &str) -> Result<Arc<Objects>, RecordingError> {
        if let Some(o) = lock(&self.stores).get(url) {
            return Ok(o.clone());
        }
        let o = Arc::new(Objects::open(url, &self.config)?);
        lock(&self.stores).insert(url.to_owned(), o.clone());
        Ok(o)
    }

    fn health_of(&self, url: &str) -> (Arc<AtomicBool>, Instant) {
        lock(&self.health)
            .entry(url.to_owned())
            .or_insert_with(|| {
                (
                    Arc::new(AtomicBool::new(false)),
                    Instant::now() - Duration::from_secs(3600),
                )
            })
            .clone()
    }

    /// Whether (and how) a session of this type is recorded under `prefs`.
    pub fn plan(&self, prefs: &Preferences, session_type: &str) -> Option<Plan> {
        if !prefs.record_sessions || !recorded_type(session_type) {
            return None;
        }
        Some(Plan {
            url: self.location(prefs),
            record_input: prefs.record_input,
            policy: prefs.failure_policy(),
        })
    }

    /// Under FailClosed, refuses a new session while the store does not answer (probed when the
    /// last sign of life is older than a few seconds). FailOpen always passes.
    pub async fn admit(&self, plan: &Plan) -> Result<(), ApiError> {
        if plan.policy == FailurePolicy::FailOpen {
            return Ok(());
        }
        let refuse = |why: String| {
            ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "RecordingUnavailableException",
            message: format!(
                "Session refused: it must be recorded (recordingFailurePolicy is FailClosed) and the recording store {} cannot be written: {why}. Try again when it is back.",
                plan.url
            ),
        }
        };
        let objects = self.objects(&plan.url).map_err(|e| refuse(e.to_string()))?;
        let (healthy, checked) = self.health_of(&plan.url);
        if healthy.load(Ordering::Relaxed) && checked.elapsed() < Duration::from_secs(2) {
            return Ok(());
        }
        let result = objects.probe().await;
        healthy.store(result.is_ok(), Ordering::Relaxed);
        lock(&self.health).insert(plan.url.clone(), (healthy, Instant::now()));
        result.map_err(|e| refuse(e.to_string()))
    }

    /// Starts recording a session that was just created: its row, its tasks, its handle.
    pub async fn begin(
        &self,
        state: &Arc<AppState>,
        session: &Session,
        plan: Plan,
    ) -> Result<(), RecordingError> {
        let objects = self.objects(&plan.url)?;
        state
            .store
            .create_recording(
                &session.session_id,
                &plan.url,
                &hex::encode(self.public_key),
                plan.record_input,
            )
            .await
            .map_err(|e| RecordingError::Store(format!("recording row: {e}")))?;
        let owner = session
            .owner
            .rsplit('/')
            .next()
            .unwrap_or(&session.owner)
            .to_owned();
        let meta = airlock_recording::Meta {
            session: session.session_id.clone(),
            target: session.target.clone(),
            owner,
            document: session.document_name.clone(),
            width: 80,
            height: 24,
            timestamp: session.start_date / 1000,
            term: "xterm-256color".to_owned(),
        };
        let (healthy, _) = self.health_of(&plan.url);
        let (handle, outbox) = task::spawn(task::Setup {
            state: state.clone(),
            meta,
            seed: self.seed,
            objects,
            spool_dir: self.spool_dir(&session.session_id),
            spool: self.spool.clone(),
            policy: plan.policy,
            record_input: plan.record_input,
            flush_interval: self.config.flush_interval,
            queue_max_bytes: self.config.queue_max_bytes.max(1),
            owner_arn: session.owner.clone(),
            healthy,
        });
        lock(&self.pending).insert(session.session_id.clone(), outbox);
        lock(&self.active).insert(session.session_id.clone(), (handle, plan));
        Ok(())
    }

    /// The relay's handle on a live recording (`None`: the session is not recorded).
    pub fn handle(&self, session_id: &str) -> Option<task::Handle> {
        lock(&self.active).get(session_id).map(|(h, _)| h.clone())
    }

    /// How a live session is recorded, as decided at its start (`None`: not recorded).
    /// ResumeSession checks the store with it under the session's own failure policy.
    pub fn plan_of(&self, session_id: &str) -> Option<Plan> {
        lock(&self.active).get(session_id).map(|(_, p)| p.clone())
    }

    /// The session ended: its recorder finishes and seals (asynchronously). Returns once the
    /// recorder has taken everything relayed before the end (so the session's last output is
    /// in the log stream before its end is announced), or after two seconds at most.
    pub async fn end(&self, session_id: &str, reason: &str) {
        let handle = lock(&self.active).remove(session_id);
        if let Some((h, _)) = handle {
            let taken = h.end(reason.to_owned());
            let _ = tokio::time::timeout(Duration::from_secs(2), taken).await;
        }
    }

    /// The uploader of `session_id` stopped (sealed, or the server stops): its queue is no
    /// longer a place to read chunks from.
    pub(crate) fn uploaded(&self, session_id: &str) {
        lock(&self.pending).remove(session_id);
    }

    /// Chunks of a recording that are not in the store yet, by index: those its uploader still
    /// holds (in memory or spooled) and any spool file on disk (one a previous run left, which
    /// crash recovery has not uploaded yet). Read before the store is listed, so that a chunk
    /// uploaded in between is found in the store: upload removes the local copy only after the
    /// store has it.
    pub async fn local_chunks(&self, session_id: &str) -> std::collections::BTreeMap<u64, Local> {
        let mut out = std::collections::BTreeMap::new();
        let outbox = lock(&self.pending).get(session_id).cloned();
        if let Some(outbox) = outbox {
            for (i, local) in outbox.waiting_chunks() {
                out.insert(i, local);
            }
        }
        if let Ok(mut dir) = tokio::fs::read_dir(self.spool_dir(session_id)).await {
            while let Ok(Some(e)) = dir.next_entry().await {
                let name = e.file_name();
                if let Some(i) = name.to_str().and_then(objects::parse_chunk_name) {
                    out.entry(i).or_insert(Local::File(e.path()));
                }
            }
        }
        out
    }

    /// The signing seed (crash recovery signs manifests with it).
    pub(crate) fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// The spool budget shared by every session.
    pub(crate) fn spool(&self) -> &Arc<task::SpoolBudget> {
        &self.spool
    }
}

/// A chunk not in the store yet: its bytes in the uploader's memory, or its spool file (which
/// may be gone by the time it is read: then it is in the store).
#[derive(Clone, Debug)]
pub enum Local {
    /// Held in memory by the uploader.
    Mem(bytes::Bytes),
    /// A spool file.
    File(PathBuf),
}

/// Bytes of every file under the spool directory (one directory per session).
fn spooled_bytes(spool: &std::path::Path) -> u64 {
    let Ok(sessions) = std::fs::read_dir(spool) else {
        return 0;
    };
    let mut total = 0u64;
    for dir in sessions.flatten() {
        let Ok(files) = std::fs::read_dir(dir.path()) else {
            continue;
        };
        for f in files.flatten() {
            if let Ok(m) = f.metadata() {
                if m.is_file() {
                    total = total.saturating_add(m.len());
                }
            }
        }
    }
    total
}

fn absolute(p: &std::path::Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_path_buf();
    }
    std::env::current_dir()
        .map(|d| d.join(p))
        .unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn registry(url: Option<&str>) -> Recordings {
        let config = RecordingConfig {
            url: url.map(str::to_owned),
            ..Default::default()
        };
        Recordings::new(config, PathBuf::from("/var/lib/airlock"), [1; 32])
    }

    #[test]
    fn only_shells_and_interactive_commands_are_recorded() {
        let r = registry(None);
        let prefs = Preferences::default();
        assert!(r.plan(&prefs, "Standard_Stream").is_some());
        assert!(r.plan(&prefs, "InteractiveCommands").is_some());
        for t in ["Port", "NonInteractiveCommands", "", "standard_stream"] {
            assert!(r.plan(&prefs, t).is_none(), "{t}");
        }
        let off = Preferences {
            record_sessions: false,
            ..Default::default()
        };
        assert!(r.plan(&off, "Standard_Stream").is_none());
    }

    #[test]
    fn the_location_comes_from_the_flag_then_the_preferences_then_the_data_dir() {
        let mut prefs = Preferences::default();
        assert_eq!(
            registry(None).location(&prefs),
            "file:///var/lib/airlock/recordings"
        );
        prefs.s3_bucket_name = "logs".into();
        assert_eq!(registry(None).location(&prefs), "s3://logs");
        prefs.s3_key_prefix = "/team/a/".into();
        assert_eq!(registry(None).location(&prefs), "s3://logs/team/a");
        assert_eq!(
            registry(Some("file:///srv/rec")).location(&prefs),
            "file:///srv/rec"
        );
    }

    #[test]
    fn unusable_locations_are_refused_with_a_reason() {
        let r = registry(None);
        for bad in ["ftp://x", "file://relative/dir", "s3://", "/plain/path"] {
            let e = r.objects(bad).unwrap_err().to_string();
            assert!(e.contains("recording"), "{bad}: {e}");
        }
    }
}
