//! Server settings, with defaults that are safe: TLS unless bound to loopback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How the listener is secured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// TLS on non-loopback addresses (a self-signed certificate is generated into the data
    /// directory when none is given); plain HTTP on loopback.
    Auto,
    /// TLS with this PEM certificate chain and key.
    Files {
        /// Certificate chain (PEM).
        cert: PathBuf,
        /// Private key (PEM).
        key: PathBuf,
    },
    /// TLS with a generated self-signed certificate even on loopback.
    SelfSigned,
    /// Plain HTTP even on a non-loopback address: the operator said so explicitly.
    InsecurePlainHttp,
}

/// Everything the server needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Directory for the database, certificates and bootstrap credentials.
    pub data_dir: PathBuf,
    /// Database URL; defaults to SQLite in the data directory.
    pub database_url: Option<String>,
    /// Transport security.
    pub tls: TlsMode,
    /// Region in ARNs and the SigV4 scope.
    pub region: String,
    /// Account id in ARNs.
    pub account_id: String,
    /// URL clients reach the server at (for StreamUrl); derived from the listener when unset.
    pub public_url: Option<String>,
    /// Allowed SigV4 clock skew.
    pub max_clock_skew: Duration,
    /// How long an unused data-channel token stays valid.
    pub token_ttl: Duration,
    /// The master key sealing secrets at rest (default `master.key` in the data directory);
    /// keep it apart from database backups.
    pub master_key_file: Option<PathBuf>,
    /// What one peer may cost the server (connections, head and body sizes, failed logins).
    pub limits: crate::limits::Limits,
    /// How often the audit checkpoint (`audit.checkpoint` in the data directory) is brought up
    /// to date: records newer than it can be cut from the trail's end unnoticed, so keep it
    /// short. It is also written on shutdown.
    pub audit_checkpoint_interval: Duration,
    /// How long a "minute" of the session preferences lasts (idle timeout, maximum duration,
    /// the warning before each). Always 60 s in production; tests shorten it to run limits
    /// in seconds (`airlock server --test-minute-ms`, hidden).
    pub minute: Duration,
    /// Session recording: the store (`--recordings`), S3 endpoint and region, the spool bound.
    pub recording: crate::recording::RecordingConfig,
    /// Webhook delivery: retry schedule, limits, plain-HTTP exception.
    pub webhooks: crate::events::WebhookSettings,
    /// The session log stream (`--session-log FILE|-`), off by default.
    pub session_log: Option<crate::events::SessionLog>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            data_dir: PathBuf::from("airlock-data"),
            database_url: None,
            tls: TlsMode::Auto,
            region: "us-east-1".to_owned(),
            account_id: "000000000000".to_owned(),
            public_url: None,
            max_clock_skew: Duration::from_secs(300),
            token_ttl: Duration::from_secs(60),
            master_key_file: None,
            limits: crate::limits::Limits::default(),
            audit_checkpoint_interval: Duration::from_secs(1),
            minute: Duration::from_secs(60),
            recording: crate::recording::RecordingConfig::default(),
            webhooks: Default::default(),
            session_log: None,
        }
    }
}

impl ServerConfig {
    /// The public URL with its scheme turned into the WebSocket one.
    pub fn websocket_base(&self) -> String {
        let base = self.public_url.as_deref().unwrap_or("http://127.0.0.1");
        let base = base.trim_end_matches('/');
        if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            base.to_owned()
        }
    }
}
