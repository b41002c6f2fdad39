//! What a registered agent remembers: its server, its instance id and its private key, in one
//! JSON file readable only by its owner.

use std::path::{Path, PathBuf};

use base64::Engine;
use ed25519_dalek::SigningKey;

/// Errors reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid agent state.
    #[error("{path} is not valid agent state: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The registered identity of this host.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentState {
    /// Base URL of the server (`https://…`).
    pub server: String,
    /// `mi-…`.
    pub instance_id: String,
    /// The Ed25519 secret key, base64; it never leaves this file.
    pub private_key: String,
    /// PEM file of certificates to trust for the server, if not the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Destination rules (`CIDR:PORTS`) port sessions may connect to; when any is given, only
    /// those (see [`crate::destinations`]). `airlock agent run --allow-destination` adds to them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_destinations: Vec<String>,
    /// Destination rules port sessions may never connect to, beside the defaults.
    /// `airlock agent run --deny-destination` adds to them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_destinations: Vec<String>,
}

impl std::fmt::Debug for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentState")
            .field("server", &self.server)
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

/// Default location: `/var/lib/airlock-agent/state.json` for root, else `~/.airlock/agent.json`.
pub fn default_state_path() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        PathBuf::from("/var/lib/airlock-agent/state.json")
    } else {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        home.join(".airlock").join("agent.json")
    }
}

impl AgentState {
    /// The signing key.
    pub fn signing_key(&self) -> Result<SigningKey, StateError> {
        let bytes: [u8; 32] = base64::engine::general_purpose::STANDARD
            .decode(&self.private_key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| StateError::Invalid {
                path: String::new(),
                message: "PrivateKey is not a base64 Ed25519 key".into(),
            })?;
        Ok(SigningKey::from_bytes(&bytes))
    }

    /// `rules` with this file's destination rules added (the agent applies both).
    pub fn destination_rules(
        &self,
        rules: &crate::destinations::DestinationRules,
    ) -> Result<crate::destinations::DestinationRules, crate::destinations::RuleError> {
        rules.extended(&self.allow_destinations, &self.deny_destinations)
    }

    /// Reads the state file.
    pub fn load(path: &Path) -> Result<AgentState, StateError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| StateError::Io {
            path: display.clone(),
            source,
        })?;
        let state: AgentState = serde_json::from_str(&text).map_err(|e| StateError::Invalid {
            path: display.clone(),
            message: e.to_string(),
        })?;
        state.signing_key().map_err(|_| StateError::Invalid {
            path: display.clone(),
            message: "bad PrivateKey".into(),
        })?;
        // A rule that does not parse stops the agent rather than being skipped.
        state
            .destination_rules(&Default::default())
            .map_err(|e| StateError::Invalid {
                path: display,
                message: e.to_string(),
            })?;
        Ok(state)
    }

    /// Writes the state file with mode 0600 (its directory 0700 when created).
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let display = path.display().to_string();
        let io = |source| StateError::Io {
            path: display.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io)?;
            }
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| StateError::Invalid {
            path: display.clone(),
            message: e.to_string(),
        })?;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}
