//! Events leaving the server: CloudEvents 1.0 for session changes, denials and every audit
//! record, delivered to webhooks from a persistent outbox; and the session log stream (JSON
//! lines of what sessions printed and typed, for Vector/Fluent Bit).
//!
//! - [`cloud`]: the event types and how each audit record becomes events.
//! - [`outbox`]: the webhook endpoints and their deliveries in the store. The outbox rows of an
//!   audit record are written in the same transaction as the record ([`outbox::enqueue_audit`],
//!   called by `Store::append_audit`), so no record is kept without its events or the reverse.
//! - [`delivery`]: the worker that signs and POSTs them, with backoff, dead letters and leases
//!   that make delivery at-least-once across restarts.
//! - [`log_stream`]: `--session-log FILE|-`, fed by [`Events::session_io`] without ever
//!   blocking its caller.

pub mod cloud;
pub mod delivery;
pub mod log_stream;
pub mod outbox;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use cloud::CloudEvent;
pub use log_stream::{SessionIo, SessionLog};

/// How webhooks are delivered: retry schedule, limits, and the plain-HTTP exception. Tests
/// shorten the delays; production keeps the defaults.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// The first retry's delay; each further retry doubles it (up to `retry_max`), and a
    /// random part of it (up to half) is taken off so endpoints coming back are not stampeded.
    pub retry_base: Duration,
    /// The longest delay between two attempts.
    pub retry_max: Duration,
    /// After this many failed attempts a delivery is a dead letter.
    pub max_attempts: u32,
    /// A delivery still failing this long after its event is a dead letter.
    pub max_age: Duration,
    /// One attempt's time limit (connect and answer).
    pub timeout: Duration,
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// Delivered rows are kept this long (for `deliveries`), then removed.
    pub retention: Duration,
    /// Dead letters are kept this long for operators to look into, then removed.
    pub dead_retention: Duration,
    /// Accept `http://` URLs to hosts other than loopback (events and audit records then cross
    /// the network in clear; the operator says so with `--allow-plain-http-webhooks`).
    pub allow_plain_http: bool,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(15 * 60),
            max_attempts: 20,
            max_age: Duration::from_secs(72 * 3600),
            timeout: Duration::from_secs(10),
            concurrency: 8,
            retention: Duration::from_secs(7 * 24 * 3600),
            dead_retention: Duration::from_secs(30 * 24 * 3600),
            allow_plain_http: false,
        }
    }
}

/// The server's event hub, shared by the store (which enqueues events with audit records) and
/// the handlers (`state.events`). Cheap to clone.
#[derive(Clone, Default)]
pub struct Events {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// `airlock://<public url>`, the CloudEvents `source`, set once the listener is bound.
    source: OnceLock<String>,
    /// Wakes the delivery worker when rows were enqueued.
    wake: tokio::sync::Notify,
    /// The session log stream, when configured.
    log: OnceLock<log_stream::LogStream>,
    /// The HTTP client of deliveries (TestWebhook sends with it too).
    http: OnceLock<reqwest::Client>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("source", &self.inner.source.get())
            .field("log_stream", &self.inner.log.get().is_some())
            .finish()
    }
}

impl Events {
    /// Sets the CloudEvents `source` from the server's public URL (`airlock://host:port`).
    pub fn set_source(&self, public_url: &str) {
        let host = public_url
            .split_once("://")
            .map_or(public_url, |(_, rest)| rest)
            .trim_end_matches('/');
        let _ = self.inner.source.set(format!("airlock://{host}"));
    }

    /// The CloudEvents `source` of this server's events.
    pub fn source(&self) -> &str {
        self.inner
            .source
            .get()
            .map_or("airlock://localhost", String::as_str)
    }

    /// Attaches the session log stream (once, at start).
    pub(crate) fn set_log(&self, log: log_stream::LogStream) {
        let _ = self.inner.log.set(log);
    }

    /// Sets the HTTP client of deliveries (once, at start).
    pub(crate) fn set_http_client(&self, client: reqwest::Client) {
        let _ = self.inner.http.set(client);
    }

    /// The HTTP client of deliveries, once the server runs.
    pub(crate) fn http_client(&self) -> Option<&reqwest::Client> {
        self.inner.http.get()
    }

    /// Tells the delivery worker that rows are due.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    pub(crate) async fn woken(&self) {
        self.inner.wake.notified().await;
    }

    /// One recorded event of a session (output `"o"` or input `"i"`) for the log stream. Never
    /// blocks and never fails: with no log stream it does nothing; when the stream's queue is
    /// full the line is dropped and counted (the stream says how many it lost).
    pub fn session_io(&self, io: &SessionIo<'_>) {
        if let Some(log) = self.inner.log.get() {
            log.io(io);
        }
    }

    /// Lines dropped by the log stream because its queue was full.
    pub fn session_log_dropped(&self) -> u64 {
        self.inner
            .log
            .get()
            .map_or(0, log_stream::LogStream::dropped)
    }

    /// Whether a log stream is attached (lifecycle lines then need the session's facts).
    pub(crate) fn logging(&self) -> bool {
        self.inner.log.get().is_some()
    }

    /// After an audit record's transaction committed: lifecycle events go to the log stream,
    /// and the worker is woken when deliveries were enqueued.
    pub(crate) fn committed(&self, lifecycle: &[cloud::CloudEvent], enqueued: bool) {
        if let Some(log) = self.inner.log.get() {
            for e in lifecycle {
                log.lifecycle(e);
            }
        }
        if enqueued {
            self.wake();
        }
    }
}
