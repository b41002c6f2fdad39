//! State shared by every handler.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::gateway::hub::Hub;
use crate::store::Store;

/// What handlers share: the store, the gateway hub, settings, and shutdown plumbing.
#[derive(Debug)]
pub struct AppState {
    /// Persistent state.
    pub store: Store,
    /// Live connections and tokens.
    pub hub: Hub,
    /// Settings (with `public_url` filled in once the listener is bound).
    pub config: ServerConfig,
    /// Cancelled when the server stops.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Parsed policy documents.
    pub policies: crate::authz::PolicyCache,
    /// Whether the listener speaks TLS (`aws:SecureTransport`).
    pub tls: bool,
    /// Stores the records of forwarded connections that agents report.
    pub port_audit: crate::port_audit::Writer,
    /// Open connections, in all and per source address.
    pub connections: std::sync::Arc<crate::limits::ConnectionLimiter>,
    /// Failed authentications per source address.
    pub auth_failures: crate::limits::AuthFailures,
    /// Signatures of single-use requests (answers carrying secrets) already used.
    pub replays: crate::replay::ReplayGuard,
    /// Writes the audit records of unauthenticated refusals, off the request path.
    pub refusals: crate::refusals::Refusals,
    /// Keeps the signed checkpoint of the audit chain's head outside the database.
    pub audit_checkpoint: crate::audit_checkpoint::Checkpointer,
    /// Session preferences in force (the `SSM-SessionManagerRunShell` document).
    pub preferences: crate::preferences::PreferencesCell,
    /// Live sessions, for the limit enforcer and the revocation sweep.
    pub live: crate::session_limits::LiveSessions,
    /// Session recordings: live recorders, stores, the signing key.
    pub recordings: crate::recording::Recordings,
    /// CloudEvents to webhooks, and the session log stream (`session_io`).
    pub events: crate::events::Events,
}
