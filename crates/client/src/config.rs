//! Where the client's endpoint and credentials come from: `AIRLOCK_*` environment variables,
//! else a profile in `~/.airlock/config` (INI, like the AWS CLI's files).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Errors loading or saving a profile.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No endpoint or credentials could be found.
    #[error("no credentials: set AIRLOCK_ENDPOINT, AIRLOCK_ACCESS_KEY_ID and AIRLOCK_SECRET_ACCESS_KEY, or run `airlock dev` to write a profile to {0}")]
    Missing(String),
    /// The profile named by AIRLOCK_PROFILE is not in the file.
    #[error("profile '{profile}' not found in {path}")]
    NoSuchProfile {
        /// The profile asked for.
        profile: String,
        /// The file read.
        path: String,
    },
    /// A required key is missing from the profile.
    #[error("profile '{profile}' in {path} has no '{key}'")]
    MissingKey {
        /// The profile.
        profile: String,
        /// The file.
        path: String,
        /// The key.
        key: &'static str,
    },
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// An endpoint and the credentials to sign for it.
#[derive(Clone, PartialEq, Eq)]
pub struct Profile {
    /// Base URL of the server, e.g. `https://airlock.example.com:8443`.
    pub endpoint: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Region for the SigV4 scope.
    pub region: String,
    /// A PEM file of certificates to trust (e.g. the server's self-signed certificate).
    pub ca_file: Option<PathBuf>,
    /// Session token of temporary credentials (`airlock admin session-token`), signed as
    /// `X-Amz-Security-Token`.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Profile {
    // Never print the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

/// `~/.airlock/config`.
pub fn default_config_path() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".airlock").join("config")
}

fn parse_ini(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current = String::from("default");
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().trim_start_matches("profile ").to_owned();
            out.entry(current.clone()).or_default();
        } else if let Some((k, v)) = line.split_once('=') {
            out.entry(current.clone())
                .or_default()
                .insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    out
}

impl Profile {
    /// Loads from the environment, else from the config file (profile `AIRLOCK_PROFILE` or `default`).
    pub fn load() -> Result<Profile, ConfigError> {
        Self::load_from(&default_config_path(), |k| std::env::var(k).ok())
    }

    /// Loads with an explicit file and environment lookup (tests use this).
    pub fn load_from(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Profile, ConfigError> {
        let region = env("AIRLOCK_REGION");
        if let (Some(endpoint), Some(id), Some(secret)) = (
            env("AIRLOCK_ENDPOINT"),
            env("AIRLOCK_ACCESS_KEY_ID"),
            env("AIRLOCK_SECRET_ACCESS_KEY"),
        ) {
            return Ok(Profile {
                endpoint,
                access_key_id: id,
                secret_access_key: secret,
                region: region.unwrap_or_else(|| "us-east-1".to_owned()),
                ca_file: env("AIRLOCK_CA_FILE").map(PathBuf::from),
                session_token: env("AIRLOCK_SESSION_TOKEN"),
            });
        }
        let name = env("AIRLOCK_PROFILE").unwrap_or_else(|| "default".to_owned());
        let display = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::Missing(display))
            }
            Err(source) => {
                return Err(ConfigError::Io {
                    path: display,
                    source,
                })
            }
        };
        let profiles = parse_ini(&text);
        let p = profiles
            .get(&name)
            .ok_or_else(|| ConfigError::NoSuchProfile {
                profile: name.clone(),
                path: display.clone(),
            })?;
        let get = |key: &'static str| {
            p.get(key).cloned().ok_or_else(|| ConfigError::MissingKey {
                profile: name.clone(),
                path: display.clone(),
                key,
            })
        };
        Ok(Profile {
            endpoint: env("AIRLOCK_ENDPOINT").map_or_else(|| get("endpoint"), Ok)?,
            access_key_id: get("access_key_id")?,
            secret_access_key: get("secret_access_key")?,
            region: region
                .or_else(|| p.get("region").cloned())
                .unwrap_or_else(|| "us-east-1".to_owned()),
            ca_file: env("AIRLOCK_CA_FILE")
                .or_else(|| p.get("ca_file").cloned())
                .map(PathBuf::from),
            session_token: env("AIRLOCK_SESSION_TOKEN").or_else(|| p.get("session_token").cloned()),
        })
    }

    /// Writes (or replaces) this profile under `name` in the file, mode 0600, keeping others.
    pub fn save(&self, path: &Path, name: &str) -> Result<(), ConfigError> {
        let display = path.display().to_string();
        let io = |source| ConfigError::Io {
            path: display.clone(),
            source,
        };
        let mut profiles = match std::fs::read_to_string(path) {
            Ok(t) => parse_ini(&t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io(e)),
        };
        let mut p = BTreeMap::new();
        p.insert("endpoint".to_owned(), self.endpoint.clone());
        p.insert("access_key_id".to_owned(), self.access_key_id.clone());
        p.insert(
            "secret_access_key".to_owned(),
            self.secret_access_key.clone(),
        );
        p.insert("region".to_owned(), self.region.clone());
        if let Some(ca) = &self.ca_file {
            p.insert("ca_file".to_owned(), ca.display().to_string());
        }
        if let Some(t) = &self.session_token {
            p.insert("session_token".to_owned(), t.clone());
        }
        profiles.insert(name.to_owned(), p);
        let mut text = String::new();
        for (name, kv) in &profiles {
            text.push_str(&format!("[{name}]\n"));
            for (k, v) in kv {
                text.push_str(&format!("{k} = {v}\n"));
            }
            text.push('\n');
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn env_wins_and_file_round_trips() {
        let dir = std::env::temp_dir().join(format!("airlock-cfg-{}", std::process::id()));
        let path = dir.join("config");
        let p = Profile {
            endpoint: "http://127.0.0.1:1".into(),
            access_key_id: "AKIA1".into(),
            secret_access_key: "s3cret".into(),
            region: "eu-west-1".into(),
            ca_file: None,
            session_token: None,
        };
        p.save(&path, "default").unwrap();
        let loaded = Profile::load_from(&path, |_| None).unwrap();
        assert_eq!(loaded, p);
        assert!(!format!("{loaded:?}").contains("s3cret"));
        let missing = Profile::load_from(&path, |k| (k == "AIRLOCK_PROFILE").then(|| "x".into()));
        assert!(matches!(missing, Err(ConfigError::NoSuchProfile { .. })));
        let env = Profile::load_from(&dir.join("none"), |k| match k {
            "AIRLOCK_ENDPOINT" => Some("http://e".into()),
            "AIRLOCK_ACCESS_KEY_ID" => Some("A".into()),
            "AIRLOCK_SECRET_ACCESS_KEY" => Some("S".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(env.endpoint, "http://e");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
