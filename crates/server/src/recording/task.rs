//! The per-session recorder and uploader tasks.
//!
//! The relay hands each relayed stream frame to [`Handle::offer`]: a type check on the header
//! and a `Bytes` clone onto a queue whose *bytes* are bounded; only when the recorder is that far
//! behind (a flood of output) does the relay wait for it, so nothing relayed goes unrecorded.
//! The recorder takes interactive frames in batches (every [`GATHER`] at most, not a wake-up per
//! keystroke) and bulk ones as they come; it turns them into asciicast events, cuts a signed chunk at least every
//! second while there is activity, and hands chunks to the uploader's [`Outbox`]. The uploader
//! writes them to the object store; while the store fails, chunks go to the local spool on
//! disk (bounded), and are uploaded in order once it answers again.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_proto::{MessageType, PayloadType, FRAME_HEADER_LEN};
use airlock_recording::{EventKind, Meta, Recorder};
use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use super::objects::{chunk_name, Objects, MANIFEST_NAME};
use crate::gateway::hub::Side;
use crate::preferences::FailurePolicy;
use crate::state::AppState;

/// Bytes of chunks an uploader keeps in memory while the store keeps up.
const MEM_BUDGET: usize = 4 * 1024 * 1024;
/// How long the recorder lets interactive frames gather before it takes them (see
/// `record_loop`): far below the one-second flush, far above a keystroke's round trip.
const GATHER: Duration = Duration::from_millis(25);
/// Bytes taken in one go above which traffic counts as bulk: the recorder then keeps up without
/// pausing (a pause would only make the relay wait for queue room).
const BULK_BATCH: usize = 64 * 1024;
/// Sequence numbers remembered per direction to drop resent frames.
const SEQ_WINDOW: i64 = 1 << 16;

/// What the relay sends the recorder.
#[derive(Debug)]
pub enum Input {
    /// A stream frame as relayed (header included), with when it passed.
    Frame {
        /// Which side sent it.
        side: Side,
        /// When the gateway relayed it.
        at: Instant,
        /// The whole encoded frame.
        data: Bytes,
    },
    /// The session ended: finish, seal, stop.
    End {
        /// The end reason's text (into the manifest).
        reason: String,
        /// Told when every frame before the end is recorded (its log-stream lines written),
        /// before sealing: the session's end is announced after its last output.
        taken: Option<tokio::sync::oneshot::Sender<()>>,
    },
}

/// The relay's handle on a session's recorder (cheap to clone).
#[derive(Clone, Debug)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Input>,
    queued: Arc<AtomicUsize>,
    /// Signalled when the recorder's queue falls below half the bound.
    room: Arc<Notify>,
    /// Wakes a recorder that lets interactive frames gather (the session ended).
    ending: Arc<Notify>,
    max_queued: usize,
    record_input: bool,
}

impl Handle {
    /// Offers a relayed frame: only stream data that is recorded is queued (output from the
    /// agent; resizes, and keys when input logging is on, from the client). Returns at once
    /// unless the recorder is `queue_max_bytes` behind (`RecordingConfig`); then it waits for room.
    pub async fn offer(&self, side: Side, kind: Option<&MessageType>, data: &Bytes) {
        let pt = airlock_proto::peek_payload_type(data);
        let wanted = match (side, kind) {
            (Side::Agent, Some(MessageType::OutputStreamData)) => {
                matches!(pt, Some(PayloadType::OUTPUT) | Some(PayloadType::STDERR))
            }
            (Side::Client, Some(MessageType::InputStreamData)) => match pt {
                Some(PayloadType::SIZE) => true,
                Some(PayloadType::OUTPUT) => self.record_input,
                _ => false,
            },
            _ => false,
        };
        if !wanted {
            return;
        }
        let len = data.len();
        // Fast path: room on the queue (a frame larger than the bound still passes alone).
        let before = self.queued.fetch_add(len, Ordering::Relaxed);
        if before != 0 && before + len > self.max_queued {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            // The recorder is behind (a flood of output): the relay waits for it rather than
            // relaying what would go unrecorded — output hidden behind a flood is what an
            // audited user would try. Its CPU, not the store, sets this pace (a slow store
            // spools instead).
            loop {
                let room = self.room.notified();
                tokio::pin!(room);
                room.as_mut().enable();
                let before = self.queued.fetch_add(len, Ordering::Relaxed);
                if before == 0 || before + len <= self.max_queued {
                    break;
                }
                self.queued.fetch_sub(len, Ordering::Relaxed);
                if self.tx.is_closed() {
                    return;
                }
                // Bounded: a wake-up lost to a recorder that just ended is retried.
                let _ = tokio::time::timeout(Duration::from_millis(50), room).await;
            }
        }
        let input = Input::Frame {
            side,
            at: Instant::now(),
            data: data.clone(),
        };
        if self.tx.send(input).is_err() {
            self.queued.fetch_sub(len, Ordering::Relaxed);
        }
    }

    /// Tells the recorder the session ended.
    /// Returns a receiver told once everything relayed before the end is recorded.
    pub fn end(&self, reason: String) -> tokio::sync::oneshot::Receiver<()> {
        let (taken, rx) = tokio::sync::oneshot::channel();
        let _ = self.tx.send(Input::End {
            reason,
            taken: Some(taken),
        });
        self.ending.notify_one();
        rx
    }
}

/// Everything a session's tasks need.
pub struct Setup {
    /// Shared server state.
    pub state: Arc<AppState>,
    /// What the asciicast header says.
    pub meta: Meta,
    /// Signing seed.
    pub seed: [u8; 32],
    /// Where chunks go.
    pub objects: Arc<Objects>,
    /// This session's spool directory.
    pub spool_dir: PathBuf,
    /// Bytes spooled by all sessions, and the bound.
    pub spool: Arc<SpoolBudget>,
    /// FailOpen / FailClosed.
    pub policy: FailurePolicy,
    /// Whether input is recorded.
    pub record_input: bool,
    /// How often a chunk is cut while there is activity.
    pub flush_interval: Duration,
    /// Bytes of frames queued before the relay waits (`RecordingConfig::queue_max_bytes`).
    pub queue_max_bytes: usize,
    /// The owner's ARN, as the session log stream's lifecycle lines name it (the asciicast
    /// header keeps the user name).
    pub owner_arn: String,
    /// Set false while the store fails (StartSession's FailClosed check reads it).
    pub healthy: Arc<AtomicBool>,
}

/// Bytes in the local spool, across sessions, and the most it may hold.
#[derive(Debug)]
pub struct SpoolBudget {
    /// Bytes spooled now.
    pub used: AtomicU64,
    /// The bound.
    pub max: u64,
}

impl SpoolBudget {
    fn take(&self, n: u64) -> bool {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            if cur.saturating_add(n) > self.max {
                return false;
            }
            match self
                .used
                .compare_exchange(cur, cur + n, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Returns spooled bytes to the budget.
    pub fn give_back(&self, n: u64) {
        self.give(n)
    }

    fn give(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }
}

/// Spawns the recorder and uploader of one session; returns the relay's handle and the
/// uploader's queue (readers serve chunks from it until the store has them).
pub fn spawn(setup: Setup) -> (Handle, Arc<Outbox>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = Handle {
        tx,
        queued: Arc::new(AtomicUsize::new(0)),
        room: Arc::new(Notify::new()),
        ending: Arc::new(Notify::new()),
        max_queued: setup.queue_max_bytes,
        record_input: setup.record_input,
    };
    let outbox = Arc::new(Outbox {
        items: Mutex::new(VecDeque::new()),
        mem_bytes: AtomicUsize::new(0),
        failing: AtomicBool::new(false),
        notify: Notify::new(),
        spool_dir: setup.spool_dir.clone(),
        spool: setup.spool.clone(),
    });
    let tasks = setup.state.tasks.clone();
    let setup = Arc::new(setup);
    tasks.spawn(upload_loop(setup.clone(), outbox.clone()));
    tasks.spawn(record_loop(setup, handle.clone(), rx, outbox.clone()));
    (handle, outbox)
}

/// A chunk or the manifest waiting for the store: in memory, or in a spool file.
#[derive(Debug)]
enum Data {
    Mem(Bytes),
    File(PathBuf, u64),
}

#[derive(Debug)]
struct Item {
    name: String,
    data: Data,
    /// The manifest: once stored, the recording is sealed and the uploader stops.
    seal: Option<(u64, u64)>,
}

/// The uploader's queue: in order, memory-bounded, spilling to the spool while the store fails.
#[derive(Debug)]
pub struct Outbox {
    items: Mutex<VecDeque<Item>>,
    mem_bytes: AtomicUsize,
    failing: AtomicBool,
    notify: Notify,
    spool_dir: PathBuf,
    spool: Arc<SpoolBudget>,
}

/// The spool is full: the chunk could not be kept anywhere.
#[derive(Debug)]
struct SpoolFull;

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Item>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn spill(&self, name: &str, bytes: &[u8]) -> Result<Data, SpoolFull> {
        let len = bytes.len() as u64;
        if !self.spool.take(len) {
            return Err(SpoolFull);
        }
        let path = self.spool_dir.join(name);
        let write = async {
            crate::datadir::private_dir(&self.spool_dir)?;
            tokio::fs::write(&path, bytes).await
        };
        match write.await {
            Ok(()) => Ok(Data::File(path, len)),
            Err(e) => {
                tracing::error!(path = %path.display(), "recording spool write failed: {e}");
                self.spool.give(len);
                Err(SpoolFull)
            }
        }
    }

    /// Queues an object for the store: in memory while the store keeps up, else spooled.
    /// `must_keep` (the session's last chunk and its manifest) stays in memory when the spool
    /// is full, so the recording can still be sealed once the store is back.
    async fn push(
        &self,
        name: String,
        bytes: Vec<u8>,
        seal: Option<(u64, u64)>,
        must_keep: bool,
    ) -> Result<(), SpoolFull> {
        let mem_ok = !self.failing.load(Ordering::Relaxed)
            && self.mem_bytes.load(Ordering::Relaxed) + bytes.len() <= MEM_BUDGET;
        let data = if mem_ok {
            self.mem_bytes.fetch_add(bytes.len(), Ordering::Relaxed);
            Data::Mem(Bytes::from(bytes))
        } else {
            match self.spill(&name, &bytes).await {
                Ok(d) => d,
                Err(SpoolFull) if must_keep => {
                    self.mem_bytes.fetch_add(bytes.len(), Ordering::Relaxed);
                    Data::Mem(Bytes::from(bytes))
                }
                Err(e) => return Err(e),
            }
        };
        self.lock().push_back(Item { name, data, seal });
        self.notify.notify_one();
        Ok(())
    }

    /// The chunks waiting for the store, by index (the manifest is not a chunk): what a reader
    /// of the recording is served while the store does not have them yet.
    pub(crate) fn waiting_chunks(&self) -> Vec<(u64, super::Local)> {
        self.lock()
            .iter()
            .filter_map(|it| {
                let i = super::objects::parse_chunk_name(&it.name)?;
                Some(match &it.data {
                    Data::Mem(b) => (i, super::Local::Mem(b.clone())),
                    Data::File(p, _) => (i, super::Local::File(p.clone())),
                })
            })
            .collect()
    }

    /// Moves every in-memory item to the spool (the store is failing, or the server stops),
    /// so a crash from here on loses none of them.
    async fn spill_all(&self) {
        let pending: Vec<(usize, String, Bytes)> = {
            let items = self.lock();
            items
                .iter()
                .enumerate()
                .filter_map(|(i, it)| match &it.data {
                    Data::Mem(b) => Some((i, it.name.clone(), b.clone())),
                    Data::File(..) => None,
                })
                .collect()
        };
        for (_, name, bytes) in pending {
            if let Ok(data) = self.spill(&name, &bytes).await {
                let mut items = self.lock();
                if let Some(it) = items.iter_mut().find(|it| it.name == name) {
                    if let Data::Mem(b) = &it.data {
                        self.mem_bytes.fetch_sub(b.len(), Ordering::Relaxed);
                    }
                    it.data = data;
                }
            }
        }
    }
}

/// Seconds from the start to `at`.
fn secs(start: Instant, at: Instant) -> f64 {
    at.saturating_duration_since(start).as_secs_f64()
}

/// Reads the fields the recorder needs from an encoded frame header (no digest check: the
/// gateway never re-hashes, and the far end checks digests).
fn frame_parts(data: &[u8]) -> Option<(i64, PayloadType, &[u8])> {
    let header_len = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?);
    let seq = i64::from_be_bytes(data.get(48..56)?.try_into().ok()?);
    let pt = airlock_proto::peek_payload_type(data)?;
    let start = usize::try_from(header_len).ok()?.checked_add(4)?;
    let start = if start < FRAME_HEADER_LEN {
        FRAME_HEADER_LEN
    } else {
        start
    };
    Some((seq, pt, data.get(start..)?))
}

/// Per-direction resend filter: a sequence number is recorded once.
#[derive(Default)]
struct Seen {
    seen: HashSet<i64>,
    max: Option<i64>,
}

impl Seen {
    fn first_time(&mut self, seq: i64) -> bool {
        if let Some(max) = self.max {
            if seq <= max.saturating_sub(SEQ_WINDOW) {
                return false;
            }
        }
        if !self.seen.insert(seq) {
            return false;
        }
        if self.max.is_none_or(|m| seq > m) {
            self.max = Some(seq);
            if self.seen.len() as i64 > 2 * SEQ_WINDOW {
                let floor = seq.saturating_sub(SEQ_WINDOW);
                self.seen.retain(|s| *s > floor);
            }
        }
        true
    }
}

/// `{"cols":N,"rows":M}` → (cols, rows).
fn parse_size(payload: &[u8]) -> Option<(u16, u16)> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let cols = u16::try_from(v.get("cols")?.as_u64()?).ok()?;
    let rows = u16::try_from(v.get("rows")?.as_u64()?).ok()?;
    Some((cols, rows))
}

struct RecordState {
    setup: Arc<Setup>,
    start: Instant,
    recorder: Option<Recorder>,
    /// Events before the recorder exists (waiting for the terminal size).
    early: Vec<(f64, EventKind, Vec<u8>)>,
    seen_agent: Seen,
    seen_client: Seen,
    outbox: Arc<Outbox>,
    /// Recorded events since the last chunk, for search — text already decoded.
    texts: Vec<airlock_recording::Event>,
    /// How much printed text may still go to the search index.
    budget: TextBudget,
    overflowed: bool,
}

impl RecordState {
    fn ensure_recorder(&mut self, size: Option<(u16, u16)>) {
        if self.recorder.is_some() {
            return;
        }
        let mut meta = self.setup.meta.clone();
        if let Some((w, h)) = size {
            meta.width = w;
            meta.height = h;
        }
        let mut rec = Recorder::new(&meta, &self.setup.seed);
        for (t, kind, data) in std::mem::take(&mut self.early) {
            if let Some(ev) = rec.event(t, kind, &data) {
                note_event(&self.setup, &mut self.texts, &mut self.budget, ev);
            }
        }
        self.recorder = Some(rec);
    }

    fn frame(&mut self, side: Side, at: Instant, data: &[u8]) {
        let Some((seq, pt, payload)) = frame_parts(data) else {
            return;
        };
        let seen = match side {
            Side::Agent => &mut self.seen_agent,
            Side::Client => &mut self.seen_client,
        };
        if !seen.first_time(seq) {
            return;
        }
        let t = secs(self.start, at);
        let size;
        let (kind, bytes): (EventKind, &[u8]) = match (side, pt) {
            (Side::Client, PayloadType::SIZE) => {
                let Some((c, r)) = parse_size(payload) else {
                    return;
                };
                if self.recorder.is_none() {
                    // The first size is the header's, not an event.
                    self.ensure_recorder(Some((c, r)));
                    return;
                }
                size = format!("{c}x{r}");
                (EventKind::Resize, size.as_bytes())
            }
            (Side::Client, _) => (EventKind::Input, payload),
            (Side::Agent, _) => (EventKind::Output, payload),
        };
        match self.recorder.as_mut() {
            None => self.early.push((t, kind, bytes.to_vec())),
            Some(rec) => {
                if let Some(ev) = rec.event(t, kind, bytes) {
                    note_event(&self.setup, &mut self.texts, &mut self.budget, ev);
                }
            }
        }
    }

    /// Cuts and queues a chunk when anything is pending.
    async fn flush(&mut self) {
        if self.recorder.is_none() && !self.early.is_empty() {
            self.ensure_recorder(None);
        }
        let Some(rec) = self.recorder.as_mut() else {
            return;
        };
        let Some(chunk) = rec.flush() else { return };
        index_text(&self.setup, std::mem::take(&mut self.texts));
        let name = chunk_name(chunk.index);
        if self
            .outbox
            .push(name, chunk.bytes, None, false)
            .await
            .is_err()
        {
            self.spool_full(chunk.index).await;
        }
    }

    async fn spool_full(&mut self, index: u64) {
        let id = &self.setup.meta.session;
        let what = format!(
            "recording spool full (bound {} bytes): chunk {index} was lost",
            self.setup.spool.max
        );
        tracing::error!(session_id = id, "{what}");
        if let Some(rec) = self.recorder.as_mut() {
            rec.marker(secs(self.start, Instant::now()), &what);
        }
        let _ = self.setup.state.store.note_recording(id, &what).await;
        if self.setup.policy == FailurePolicy::FailClosed && !self.overflowed {
            self.overflowed = true;
            let state = self.setup.state.clone();
            let id = id.clone();
            // Not awaited here: ending the session comes back to this task with End.
            tokio::spawn(async move {
                crate::sessions::end(
                    &state,
                    &id,
                    crate::sessions::End {
                        reason: crate::end_reason::EndReason::RecordingFailed(
                            "the recording store is unreachable and the local spool is full".into(),
                        ),
                        notify_agent: true,
                    },
                )
                .await;
            });
        }
    }
}

/// Each recorded event: to the session log stream (`events::log_stream`, when one is
/// configured; it never blocks), and kept for the chunk's search text.
fn note_event(
    setup: &Setup,
    texts: &mut Vec<airlock_recording::Event>,
    budget: &mut TextBudget,
    ev: airlock_recording::Event,
) {
    let kind = match ev.kind {
        EventKind::Output => "o",
        EventKind::Input => "i",
        EventKind::Resize => return,
    };
    setup.state.events.session_io(&crate::events::SessionIo {
        session_id: &setup.meta.session,
        owner: &setup.owner_arn,
        target: &setup.meta.target,
        kind,
        t: time::OffsetDateTime::now_utc(),
        data: &ev.data,
    });
    if ev.kind == EventKind::Output {
        let was_dry = budget.skipped > 0;
        if !budget.take(ev.data.len(), &setup.meta.session) {
            if !was_dry {
                // No word is glued across the text left out.
                texts.push(airlock_recording::Event {
                    data: "\n".to_owned(),
                    ..ev
                });
            }
            return;
        }
    }
    texts.push(ev);
}

/// Printed text the search index takes from one session at once, and per second after that.
/// Typed input is always indexed; bulk output (a `cat` of a big file, a build log) beyond this
/// is in the recording but not in the index — indexing it would cost more CPU than relaying it
/// and hold the database's write lock for the API's time.
const TEXT_BURST: f64 = 2.0 * 1024.0 * 1024.0;
/// See [`TEXT_BURST`].
const TEXT_PER_SEC: f64 = 128.0 * 1024.0;

/// A token bucket of bytes of printed text for the search index ([`TEXT_BURST`]).
#[derive(Debug)]
struct TextBudget {
    tokens: f64,
    last: Instant,
    /// Bytes left out since the budget last ran dry (logged once per dry spell).
    skipped: u64,
}

impl TextBudget {
    fn new() -> TextBudget {
        TextBudget {
            tokens: TEXT_BURST,
            last: Instant::now(),
            skipped: 0,
        }
    }

    /// Whether `len` bytes may be indexed now (and takes them).
    fn take(&mut self, len: usize, session: &str) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * TEXT_PER_SEC;
        self.last = now;
        self.tokens = (self.tokens + refill).min(TEXT_BURST);
        let len = len as f64;
        if self.tokens >= len {
            if self.skipped > 0 {
                tracing::info!(
                    session_id = session,
                    "search index: {} bytes of bulk output were left out of search (they are in the recording)",
                    self.skipped
                );
                self.skipped = 0;
            }
            self.tokens -= len;
            true
        } else {
            self.skipped += len as u64;
            false
        }
    }
}

/// The transcript text of a stored chunk's events, for search (helper P's FTS index): one row
/// per kind and chunk (not one per event, which a busy shell makes thousands of a second), at
/// the time of the chunk's first event of that kind. Input lines keep no `> ` prefix.
fn index_text(setup: &Setup, texts: Vec<airlock_recording::Event>) {
    if texts.is_empty() {
        return;
    }
    // Helper P's FTS index (store/search.rs): words per kind, queued to one in-order writer,
    // off the recorder's path.
    setup.state.store.queue_recording_text(
        &setup.meta.session,
        crate::store::search::index_rows(&texts),
    );
}

async fn record_loop(
    setup: Arc<Setup>,
    handle: Handle,
    mut rx: mpsc::UnboundedReceiver<Input>,
    outbox: Arc<Outbox>,
) {
    let mut st = RecordState {
        start: Instant::now(),
        recorder: None,
        early: Vec::new(),
        seen_agent: Seen::default(),
        seen_client: Seen::default(),
        outbox: outbox.clone(),
        texts: Vec::new(),
        budget: TextBudget::new(),
        overflowed: false,
        setup: setup.clone(),
    };
    let mut tick = tokio::time::interval(setup.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = setup.state.shutdown.clone();
    let reason = loop {
        tokio::select! {
            m = rx.recv() => {
                // Everything queued now, in one go.
                let mut next = m;
                let mut batch = 0usize;
                let mut end = None;
                while let Some(m) = next.take() {
                    match m {
                        Input::Frame { side, at, data } => {
                            batch += data.len();
                            let prev = handle.queued.fetch_sub(data.len(), Ordering::Relaxed);
                            if prev > handle.max_queued / 2
                                && prev - data.len() <= handle.max_queued / 2
                            {
                                handle.room.notify_waiters();
                            }
                            st.frame(side, at, &data);
                            if st.recorder.as_ref().is_some_and(|r| r.should_flush()) {
                                st.flush().await;
                            }
                        }
                        Input::End { reason, taken } => {
                            end = Some((reason, taken));
                            break;
                        }
                    }
                    next = rx.try_recv().ok();
                }
                if let Some(end) = end {
                    break Some(end);
                }
                if batch == 0 {
                    break Some(("the recorder's session is gone".to_owned(), None));
                }
                if batch < BULK_BATCH {
                    // Interactive traffic: let the next frames gather rather than waking for
                    // each keystroke's echo (a wake-up per frame cost the round trip tens of
                    // µs on two cores). Times are the relay's, so nothing moves in the cast.
                    tokio::select! {
                        _ = tokio::time::sleep(GATHER) => {}
                        _ = handle.ending.notified() => {}
                        _ = shutdown.cancelled() => break None,
                    }
                }
            }
            _ = tick.tick() => {
                st.flush().await;
            }
            _ = shutdown.cancelled() => break None,
        }
    };
    // Whatever is queued was relayed: record it before the end.
    while let Ok(Input::Frame { side, at, data }) = rx.try_recv() {
        st.frame(side, at, &data);
    }
    let reason = reason.map(|(reason, taken)| {
        if let Some(taken) = taken {
            let _ = taken.send(());
        }
        reason
    });
    match reason {
        Some(reason) => {
            st.ensure_recorder(None);
            let Some(rec) = st.recorder.take() else {
                return;
            };
            let ended = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            let (last, manifest) = rec.finish(secs(st.start, Instant::now()), &ended, &reason);
            index_text(&setup, std::mem::take(&mut st.texts));
            if let Some(c) = last {
                if outbox
                    .push(chunk_name(c.index), c.bytes, None, true)
                    .await
                    .is_err()
                {
                    st.spool_full(c.index).await;
                }
            }
            let bytes = manifest.to_bytes();
            let total: u64 = 0;
            if outbox
                .push(
                    MANIFEST_NAME.to_owned(),
                    bytes,
                    Some((manifest.chunks, total)),
                    true,
                )
                .await
                .is_err()
            {
                tracing::error!(
                    session_id = setup.meta.session,
                    "recording manifest could not be kept: spool full; crash recovery will seal it"
                );
            }
        }
        None => {
            // The server stops: what is pending goes to the spool; the next start seals it.
            st.flush().await;
            outbox.failing.store(true, Ordering::Relaxed);
            outbox.spill_all().await;
        }
    }
}

async fn upload_loop(setup: Arc<Setup>, outbox: Arc<Outbox>) {
    upload(&setup, &outbox).await;
    setup.state.recordings.uploaded(&setup.meta.session);
}

async fn upload(setup: &Setup, outbox: &Outbox) {
    let session = setup.meta.session.clone();
    let mut backoff = Duration::from_millis(250);
    let mut stored_bytes: u64 = 0;
    loop {
        let front = {
            let items = outbox.lock();
            items.front().map(|it| {
                (
                    it.name.clone(),
                    match &it.data {
                        Data::Mem(b) => Ok(b.clone()),
                        Data::File(p, _) => Err(p.clone()),
                    },
                    it.seal,
                )
            })
        };
        let Some((name, data, seal)) = front else {
            tokio::select! {
                _ = outbox.notify.notified() => continue,
                _ = setup.state.shutdown.cancelled() => return,
            }
        };
        let bytes = match data {
            Ok(b) => b,
            Err(path) => match tokio::fs::read(&path).await {
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    tracing::error!(session_id = session, path = %path.display(), "spooled recording chunk unreadable: {e}");
                    outbox.lock().pop_front();
                    continue;
                }
            },
        };
        let len = bytes.len() as u64;
        match setup.objects.put(&session, &name, bytes).await {
            Ok(()) => {
                stored_bytes += len;
                setup.healthy.store(true, Ordering::Relaxed);
                if outbox.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        session_id = session,
                        store = setup.objects.url(),
                        "recording store is back; uploading the spool"
                    );
                }
                backoff = Duration::from_millis(250);
                let item = outbox.lock().pop_front();
                match item.map(|i| i.data) {
                    Some(Data::Mem(b)) => {
                        outbox.mem_bytes.fetch_sub(b.len(), Ordering::Relaxed);
                    }
                    Some(Data::File(p, n)) => {
                        let _ = tokio::fs::remove_file(&p).await;
                        outbox.spool.give(n);
                    }
                    None => {}
                }
                if let Some((chunks, _)) = seal {
                    let stored_bytes = stored_bytes.saturating_sub(len);
                    if let Err(e) = setup
                        .state
                        .store
                        .seal_recording(&session, chunks, stored_bytes, false)
                        .await
                    {
                        tracing::error!(
                            session_id = session,
                            "recording sealed but not marked so: {e}"
                        );
                    }
                    let _ = tokio::fs::remove_dir(&outbox.spool_dir).await;
                    return;
                }
            }
            Err(e) => {
                setup.healthy.store(false, Ordering::Relaxed);
                if !outbox.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        session_id = session,
                        "recording store failed, spooling locally: {e}"
                    );
                }
                outbox.spill_all().await;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = setup.state.shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn resent_frames_are_recorded_once() {
        let mut s = Seen::default();
        assert!(s.first_time(0));
        assert!(s.first_time(2));
        assert!(!s.first_time(0));
        assert!(
            s.first_time(1),
            "a frame that arrives late is still recorded"
        );
        assert!(!s.first_time(2));
        assert!(s.first_time(SEQ_WINDOW + 10));
        assert!(!s.first_time(3), "far below the window: treated as seen");
    }

    #[test]
    fn sizes_parse_and_garbage_does_not() {
        assert_eq!(parse_size(br#"{"cols":120,"rows":40}"#), Some((120, 40)));
        assert_eq!(parse_size(br#"{"cols":-1,"rows":40}"#), None);
        assert_eq!(parse_size(br#"{"cols":70000,"rows":40}"#), None);
        assert_eq!(parse_size(b"\xff"), None);
        assert!(frame_parts(&[0u8; 10]).is_none());
    }

    #[test]
    fn hostile_frame_headers_never_panic_or_read_out_of_bounds() {
        let frame = airlock_proto::Frame::new(
            MessageType::OutputStreamData,
            7,
            0,
            PayloadType::OUTPUT,
            Bytes::from_static(b"hello"),
        )
        .encode(true);
        let (seq, pt, payload) = frame_parts(&frame).unwrap();
        assert_eq!((seq, pt, payload), (7, PayloadType::OUTPUT, &b"hello"[..]));
        for header_len in [0u32, 3, 115, 117, 1 << 20, u32::MAX] {
            let mut f = frame.to_vec();
            f[0..4].copy_from_slice(&header_len.to_be_bytes());
            // Either a payload inside the frame, or nothing: never a panic.
            if let Some((_, _, p)) = frame_parts(&f) {
                assert!(p.len() <= f.len());
            }
        }
        for cut in 0..frame.len() {
            let _ = frame_parts(&frame[..cut]);
        }
    }
}
