//! The audit records of requests refused before anyone was authenticated. They are written by
//! one background task, never on the request's path: a flood of anonymous requests must not
//! queue in front of the audit writes of signed ones. A source within its failure budget gets a
//! record per refusal; beyond it, its refusals are counted and written as one summary record per
//! source every [`SUMMARY_EVERY`], so the trail says how many there were without one row each.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::audit::AuditEvent;
use crate::store::Store;

/// How often the counted refusals are written as summaries.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(5);
/// Refusals waiting to be written; past this they are counted only.
const QUEUE: usize = 4096;

enum Refusal {
    /// Written as it is.
    Itemised(Box<AuditEvent>),
    /// Counted into its source's summary (error code).
    Counted(IpAddr, &'static str),
}

/// Hands refusals to the writer task.
#[derive(Debug, Clone)]
pub struct Refusals {
    tx: mpsc::Sender<Refusal>,
    /// Refusals that found the queue full (counted into the next summary).
    overflow: Arc<AtomicU64>,
}

impl std::fmt::Debug for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Refusal")
    }
}

impl Refusals {
    /// Starts the writer; it flushes what it holds and stops when `shutdown` fires.
    pub fn spawn(store: Store, shutdown: CancellationToken) -> Refusals {
        let (tx, rx) = mpsc::channel(QUEUE);
        let overflow = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_loop(store, rx, overflow.clone(), shutdown));
        Refusals { tx, overflow }
    }

    /// Records a refusal with its own audit record.
    pub fn itemise(&self, event: AuditEvent) {
        if self
            .tx
            .try_send(Refusal::Itemised(Box::new(event)))
            .is_err()
        {
            self.overflow.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a refusal from a source over its budget.
    pub fn count(&self, source: IpAddr, code: &'static str) {
        if self.tx.try_send(Refusal::Counted(source, code)).is_err() {
            self.overflow.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn write_loop(
    store: Store,
    mut rx: mpsc::Receiver<Refusal>,
    overflow: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let mut counted: BTreeMap<IpAddr, BTreeMap<&'static str, u64>> = BTreeMap::new();
    let mut tick = tokio::time::interval(SUMMARY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = rx.recv() => match r {
                Some(Refusal::Itemised(e)) => write(&store, &e).await,
                Some(Refusal::Counted(ip, code)) => {
                    *counted.entry(ip).or_default().entry(code).or_insert(0) += 1;
                }
                None => break,
            },
            _ = tick.tick() => summarise(&store, &mut counted, &overflow).await,
            _ = shutdown.cancelled() => break,
        }
    }
    while let Ok(r) = rx.try_recv() {
        match r {
            Refusal::Itemised(e) => write(&store, &e).await,
            Refusal::Counted(ip, code) => {
                *counted.entry(ip).or_default().entry(code).or_insert(0) += 1;
            }
        }
    }
    summarise(&store, &mut counted, &overflow).await;
}

async fn write(store: &Store, e: &AuditEvent) {
    if let Err(err) = store.append_audit(e).await {
        tracing::error!("the audit record of a refused request could not be written: {err}");
    }
}

async fn summarise(
    store: &Store,
    counted: &mut BTreeMap<IpAddr, BTreeMap<&'static str, u64>>,
    overflow: &AtomicU64,
) {
    for (ip, codes) in std::mem::take(counted) {
        let total: u64 = codes.values().sum();
        let event = AuditEvent {
            event: "api-refusals".into(),
            principal: "anonymous".into(),
            source_ip: ip.to_string(),
            action: "(unauthenticated)".into(),
            decision: "Throttled".into(),
            statement: format!(
                "{total} more refused requests from {ip} in the last {} s (over its failure budget)",
                SUMMARY_EVERY.as_secs()
            ),
            detail: serde_json::json!({ "Count": total, "Codes": codes }).to_string(),
            ..Default::default()
        };
        write(store, &event).await;
    }
    let lost = overflow.swap(0, Ordering::Relaxed);
    if lost > 0 {
        let event = AuditEvent {
            event: "api-refusals".into(),
            principal: "anonymous".into(),
            action: "(unauthenticated)".into(),
            decision: "Throttled".into(),
            statement: format!(
                "{lost} refused requests arrived faster than they could be recorded one by one"
            ),
            detail: serde_json::json!({ "Count": lost }).to_string(),
            ..Default::default()
        };
        write(store, &event).await;
    }
}
