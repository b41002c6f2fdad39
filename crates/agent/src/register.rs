//! Registration: make an Ed25519 key on this host, send only the public key with the
//! activation id and code, and keep the returned instance id with the key.

use std::path::PathBuf;

use base64::Engine;
use serde_json::json;

use crate::state::AgentState;

/// Errors registering.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The server refused (bad or used-up activation, …).
    #[error("registration refused: {code}: {message}")]
    Refused {
        /// AWS-style error code.
        code: String,
        /// Message.
        message: String,
    },
    /// The server could not be reached or answered nonsense.
    #[error("registration failed: {0}")]
    Transport(String),
    /// TLS set-up failed.
    #[error(transparent)]
    Tls(#[from] airlock_client::tls::TlsError),
}

/// What `airlock agent register` is given.
#[derive(Clone, Debug)]
pub struct Registration {
    /// Server base URL.
    pub server: String,
    /// Activation id.
    pub activation_id: String,
    /// Activation code (a secret; never logged).
    pub activation_code: String,
    /// CA file to trust for the server.
    pub ca_file: Option<PathBuf>,
}

fn os_release() -> (String, String) {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_default()
    };
    (get("NAME"), get("VERSION_ID"))
}

/// Registers this host and returns its new state (not yet saved).
pub async fn register(reg: &Registration) -> Result<AgentState, RegisterError> {
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let public = base64::engine::general_purpose::STANDARD.encode(key.verifying_key().as_bytes());
    let (platform_name, platform_version) = os_release();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let body = json!({
        "ActivationId": reg.activation_id,
        "ActivationCode": reg.activation_code,
        "PublicKey": public,
        "ComputerName": hostname,
        "PlatformName": platform_name,
        "PlatformVersion": platform_version,
        "AgentVersion": crate::AGENT_VERSION,
    });
    let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
    if reg.server.starts_with("https://") {
        let cfg = airlock_client::tls::client_config(reg.ca_file.as_deref())?;
        builder = builder.use_preconfigured_tls((*cfg).clone());
    }
    let http = builder
        .build()
        .map_err(|e| RegisterError::Transport(e.to_string()))?;
    let url = format!("{}/v1/agent/register", reg.server.trim_end_matches('/'));
    let resp = http
        .post(&url)
        .json(&body)
        .send()
        .await
        .map_err(|e| RegisterError::Transport(format!("{url}: {e}")))?;
    let status = resp.status();
    let v: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| RegisterError::Transport(format!("{url}: {e}")))?;
    if !status.is_success() {
        return Err(RegisterError::Refused {
            code: v
                .get("__type")
                .and_then(|c| c.as_str())
                .unwrap_or("Unknown")
                .to_owned(),
            message: v
                .get("message")
                .and_then(|c| c.as_str())
                .unwrap_or("")
                .to_owned(),
        });
    }
    let instance_id = v
        .get("InstanceId")
        .and_then(|i| i.as_str())
        .filter(|i| i.starts_with("mi-"))
        .ok_or_else(|| RegisterError::Transport("the answer has no InstanceId".into()))?
        .to_owned();
    Ok(AgentState {
        server: reg.server.trim_end_matches('/').to_owned(),
        instance_id,
        private_key: base64::engine::general_purpose::STANDARD.encode(key.to_bytes()),
        ca_file: reg.ca_file.clone(),
        allow_destinations: Vec::new(),
        deny_destinations: Vec::new(),
    })
}
