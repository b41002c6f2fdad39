//! `airlock server`: the AWS JSON 1.1 API (SigV4-signed), the WebSocket gateway that relays
//! session data between clients and agents, and the store behind them.
//!
//! [`start`] binds, migrates, bootstraps a first admin when the store is empty, and serves
//! until [`RunningServer::shutdown`].
#![forbid(unsafe_code)]

pub mod api;
pub mod audit_checkpoint;
pub mod auth;
pub mod authz;
pub mod config;
pub mod datadir;
pub mod document;
pub mod end_reason;
pub mod events;
pub mod gateway;
pub mod limits;
pub mod listener;
pub mod port_audit;
pub mod preferences;
pub mod recording;
pub mod refusals;
pub mod register;
pub mod replay;
pub mod revocation;
pub mod secrets;
pub mod session_limits;
pub mod sessions;
pub mod state;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{ServerConfig, TlsMode};
pub use datadir::private_dir;
pub use limits::Limits;
pub use state::AppState;

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding or file-system trouble.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The master key could not be loaded.
    #[error(transparent)]
    Secret(#[from] secrets::SecretError),
    /// The recording location (`--recordings`) is not usable.
    #[error(transparent)]
    Recording(#[from] recording::RecordingError),
    /// Webhook delivery could not be set up (its HTTP client).
    #[error("webhook delivery: {0}")]
    Events(String),
}

/// Credentials of the admin created on first start.
#[derive(Clone)]
pub struct BootstrapAdmin {
    /// User name.
    pub user_name: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret (also written, mode 0600, to `admin-credentials.json` in the data directory).
    pub secret_access_key: String,
}

impl std::fmt::Debug for BootstrapAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapAdmin")
            .field("user_name", &self.user_name)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// A server that is serving.
pub struct RunningServer {
    /// The bound address.
    pub local_addr: SocketAddr,
    /// Base URL clients use (`http://…` or `https://…`).
    pub url: String,
    /// SHA-256 fingerprint of the TLS certificate, when TLS is on.
    pub tls_fingerprint: Option<String>,
    /// The certificate file clients can trust, when TLS is on.
    pub tls_cert_path: Option<PathBuf>,
    /// Set when this start created the first admin.
    pub bootstrap: Option<BootstrapAdmin>,
    /// Shared state (tests inspect the hub).
    pub state: Arc<AppState>,
    serve: tokio::task::JoinHandle<()>,
    checkpoint_refresh: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// Stops accepting, closes every channel, and waits (bounded) for connection tasks.
    pub async fn shutdown(self) {
        self.state.shutdown.cancel();
        self.state.hub.shutdown();
        self.state.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.state.tasks.wait()).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.serve).await;
        // The last records of this run are covered before the process goes, once the periodic
        // refresh has stopped (so nothing of this run writes the file afterwards).
        let _ = tokio::time::timeout(Duration::from_secs(5), self.checkpoint_refresh).await;
        self.state.audit_checkpoint.flush().await;
    }

    /// Resolves when the server stops by itself (it does not, unless it fails).
    pub async fn wait(&mut self) {
        let _ = (&mut self.serve).await;
    }
}

/// The router: API, registration, and the gateway's WebSockets.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", post(api::handle))
        .route("/v1/agent/register", post(register::register))
        .route(
            "/v1/control-channel/{instance_id}",
            get(gateway::control::upgrade),
        )
        .route("/v1/data-channel/{session_id}", get(gateway::data::upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

async fn bootstrap_admin(
    store: &store::Store,
    data_dir: &std::path::Path,
) -> Result<Option<BootstrapAdmin>, ServerError> {
    if store.count_users().await? > 0 {
        return Ok(None);
    }
    let user = store.create_user("admin", true).await?;
    let key = store.create_access_key(&user.user_id).await?;
    let admin = BootstrapAdmin {
        user_name: user.name,
        access_key_id: key.access_key_id,
        secret_access_key: key.secret_access_key,
    };
    let path = data_dir.join("admin-credentials.json");
    let body = serde_json::json!({
        "UserName": admin.user_name,
        "AccessKeyId": admin.access_key_id,
        "SecretAccessKey": admin.secret_access_key,
    });
    write_private(&path, body.to_string().as_bytes()).map_err(|source| ServerError::Io {
        context: format!("writing {}", path.display()),
        source,
    })?;
    Ok(Some(admin))
}

/// The file behind a `sqlite:` URL, when it names one.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.contains(":memory:")).then(|| PathBuf::from(path))
}

/// Writes a file only its owner can read.
pub fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

/// Starts the server.
pub async fn start(mut config: ServerConfig) -> Result<RunningServer, ServerError> {
    datadir::private_dir(&config.data_dir).map_err(|source| ServerError::Io {
        context: format!("creating {}", config.data_dir.display()),
        source,
    })?;
    datadir::secure_and_log(&config.data_dir).map_err(|source| ServerError::Io {
        context: format!("making {} private", config.data_dir.display()),
        source,
    })?;
    if config.database_url.is_none() {
        // SQLite gives the -wal and -shm files the database file's mode.
        let db = config.data_dir.join("airlock.db");
        datadir::private_file(&db).map_err(|source| ServerError::Io {
            context: format!("creating {}", db.display()),
            source,
        })?;
    }
    let key_path = config
        .master_key_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("master.key"));
    let key = secrets::MasterKey::load_or_create(&key_path)?;
    let store = match &config.database_url {
        Some(url) => store::Store::open(url, key).await?,
        None => store::Store::open_in_dir(&config.data_dir, key).await?,
    };
    // Events carry the public URL as their source; when it is not configured it is known
    // once the listener is bound (below).
    if let Some(public) = &config.public_url {
        store.events().set_source(public);
    }
    // Their `session.ended` events go out once the events' source is known (below).
    let orphans = store.open_sessions().await?;
    let orphaned = store.fail_orphaned_sessions().await?;
    if orphaned > 0 {
        tracing::warn!("{orphaned} sessions from a previous run were marked Failed");
    }
    let db_file = match &config.database_url {
        None => Some(config.data_dir.join("airlock.db")),
        Some(url) => sqlite_file(url),
    };
    let audit_checkpoint =
        audit_checkpoint::Checkpointer::start(store.clone(), &config.data_dir, db_file).await?;
    let bootstrap = bootstrap_admin(&store, &config.data_dir).await?;
    // The session preferences: the default version of SSM-SessionManagerRunShell, stored
    // with its built-in defaults on first start.
    let preferences = api::documents_api::load_preferences(&store).await?;
    let recordings = recording::Recordings::new(
        config.recording.clone(),
        config.data_dir.clone(),
        *store.key.recording_seed(),
    );
    // A recording location given on the command line is checked now, not at the first session.
    if let Some(url) = &config.recording.url {
        recordings.objects(url)?;
    }

    let loopback = config.listen.ip().is_loopback();
    let tls = match &config.tls {
        TlsMode::Auto if loopback => None,
        TlsMode::Auto | TlsMode::SelfSigned => Some(tls::self_signed(&config.data_dir)?),
        TlsMode::Files { cert, key } => Some(tls::load(cert, key)?),
        TlsMode::InsecurePlainHttp => {
            if !loopback {
                tracing::warn!(
                    "serving plain HTTP on {} as configured: credentials and sessions cross the network unencrypted",
                    config.listen
                );
            }
            None
        }
    };
    let listener =
        std::net::TcpListener::bind(config.listen).map_err(|source| ServerError::Io {
            context: format!("binding {}", config.listen),
            source,
        })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ServerError::Io {
            context: "configuring the listener".into(),
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| ServerError::Io {
        context: "reading the bound address".into(),
        source,
    })?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{local_addr}");
    if config.public_url.is_none() {
        config.public_url = Some(url.clone());
    }

    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let events = store.events().clone();
    if let Some(public) = &config.public_url {
        events.set_source(public);
    }
    if let Some(target) = &config.session_log {
        let log = events::log_stream::open(target, shutdown.clone(), &tasks)
            .await
            .map_err(|source| ServerError::Io {
                context: format!("opening the session log {target:?}"),
                source,
            })?;
        events.set_log(log);
    }
    for s in &orphans {
        let reason = end_reason::EndReason::ServerRestarted;
        let ended = events::cloud::ended_without_record(events.source(), s, &reason);
        if let Err(e) = store.publish_event(&ended).await {
            tracing::error!(
                session_id = s.session_id,
                "could not enqueue session.ended: {e}"
            );
        }
    }
    let webhook_client = events::delivery::http_client(&config.webhooks)
        .map_err(|e| ServerError::Events(e.to_string()))?;
    events.set_http_client(webhook_client.clone());
    let port_audit = port_audit::Writer::spawn(store.clone(), shutdown.clone());
    let refusals = refusals::Refusals::spawn(store.clone(), shutdown.clone());
    let limits = config.limits.clone();
    let replays = replay::ReplayGuard::new(2 * config.max_clock_skew);
    let checkpoint_refresh =
        audit_checkpoint.spawn_refresh(config.audit_checkpoint_interval, shutdown.clone());
    let state = Arc::new(AppState {
        store,
        hub: gateway::hub::Hub::default(),
        config,
        shutdown,
        port_audit,
        audit_checkpoint,
        tasks,
        policies: authz::PolicyCache::default(),
        tls: tls.is_some(),
        connections: limits::ConnectionLimiter::new(&limits),
        auth_failures: limits::AuthFailures::new(&limits),
        replays,
        refusals,
        preferences: preferences::PreferencesCell::default(),
        live: session_limits::LiveSessions::default(),
        recordings,
        events,
    });
    state.preferences.set(preferences);
    session_limits::spawn(state.clone());
    revocation::spawn(state.clone());
    recording::recover::spawn(state.clone());
    events::delivery::spawn(state.clone(), webhook_client);
    let app = router(state.clone());
    let shutdown = state.shutdown.clone();
    let tls_fingerprint = tls.as_ref().map(|t| t.fingerprint.clone());
    let tls_cert_path = tls.as_ref().map(|t| t.cert_path.clone());
    let listener =
        tokio::net::TcpListener::from_std(listener).map_err(|source| ServerError::Io {
            context: "adopting the listener".into(),
            source,
        })?;
    let serve = listener::spawn(
        listener,
        tls.map(|t| t.config),
        state.clone(),
        app,
        shutdown,
    );
    tracing::info!(%url, "airlock server listening");
    Ok(RunningServer {
        local_addr,
        url,
        tls_fingerprint,
        tls_cert_path,
        bootstrap,
        state,
        serve,
        checkpoint_refresh,
    })
}
