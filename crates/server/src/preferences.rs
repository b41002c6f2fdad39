//! The session preferences in force: the `inputs` of the `SSM-SessionManagerRunShell`
//! document (AWS's names and ranges) plus Airlock's own limits, as one typed value that the
//! session code reads without touching the database.
//!
//! The document is stored and versioned by the documents API; whenever its default version
//! changes, the parsed value is swapped in here, so every new session and the limit
//! enforcer see the change at once.

use std::sync::{Arc, RwLock};

/// What a session may do and for how long (AWS's Session Manager preferences).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preferences {
    /// `idleSessionTimeout`: minutes without input or output before a session ends (1–60, default 20).
    pub idle_session_timeout_minutes: u32,
    /// `maxSessionDuration`: minutes after which a session ends whatever it does (1–1440; `None`: no limit).
    pub max_session_duration_minutes: Option<u32>,
    /// `runAsEnabled`: whether sessions run as the owner's `SSMSessionRunAs` tag user.
    pub run_as_enabled: bool,
    /// `runAsDefaultUser`: the OS user when run-as is enabled and the owner has no tag
    /// (empty: the agent's own unprivileged user).
    pub run_as_default_user: String,
    /// `shellProfile.linux`: commands run at the start of every shell.
    pub shell_profile_linux: String,
    /// `s3BucketName` (stored now; recordings give it effect).
    pub s3_bucket_name: String,
    /// `s3KeyPrefix`.
    pub s3_key_prefix: String,
    /// `s3EncryptionEnabled`.
    pub s3_encryption_enabled: bool,
    /// `cloudWatchLogGroupName`.
    pub cloudwatch_log_group_name: String,
    /// `cloudWatchStreamingEnabled`.
    pub cloudwatch_streaming_enabled: bool,
    /// `cloudWatchEncryptionEnabled`.
    pub cloudwatch_encryption_enabled: bool,
    /// `kmsKeyId`.
    pub kms_key_id: String,
    /// Airlock's own: open sessions one user may have at once (`None`: no limit).
    pub max_sessions_per_user: Option<u32>,
    /// Airlock's own: open sessions one target may have at once (`None`: no limit).
    pub max_sessions_per_target: Option<u32>,
    /// Airlock's own: refuse port sessions to link-local and cloud-metadata addresses
    /// (169.254.0.0/16, fe80::/10, fd00:ec2::254 …) at the server, before any agent is asked.
    pub deny_link_local_destinations: bool,
    /// Airlock's own `recordSessions`: record shell and interactive-command sessions at the
    /// gateway (default true).
    pub record_sessions: bool,
    /// Airlock's own `recordInput`: record what users type too (default false: passwords are
    /// typed into shells).
    pub record_input: bool,
    /// Airlock's own `recordingFailurePolicy`; `None` takes the default ([`Preferences::failure_policy`]).
    pub recording_failure_policy: Option<FailurePolicy>,
}

/// What happens to sessions when the recording store cannot be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Sessions go on; chunks wait in the local spool and are uploaded when the store is back.
    FailOpen,
    /// New shell sessions are refused while the store is unreachable, and a session whose
    /// spool overflows is ended.
    FailClosed,
}

impl FailurePolicy {
    /// The preference's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::FailOpen => "FailOpen",
            FailurePolicy::FailClosed => "FailClosed",
        }
    }
}

impl Preferences {
    /// The failure policy in force: as set, else FailClosed when `s3EncryptionEnabled` asks
    /// for strictness, else FailOpen.
    pub fn failure_policy(&self) -> FailurePolicy {
        self.recording_failure_policy
            .unwrap_or(if self.s3_encryption_enabled {
                FailurePolicy::FailClosed
            } else {
                FailurePolicy::FailOpen
            })
    }
}

impl Default for Preferences {
    fn default() -> Self {
        Preferences {
            idle_session_timeout_minutes: 20,
            max_session_duration_minutes: None,
            // Airlock honoured SSMSessionRunAs tags before preferences existed; keeping that
            // the default means no deployment silently changes who its shells run as.
            run_as_enabled: true,
            run_as_default_user: String::new(),
            shell_profile_linux: String::new(),
            s3_bucket_name: String::new(),
            s3_key_prefix: String::new(),
            s3_encryption_enabled: false,
            cloudwatch_log_group_name: String::new(),
            cloudwatch_streaming_enabled: false,
            cloudwatch_encryption_enabled: false,
            kms_key_id: String::new(),
            max_sessions_per_user: None,
            max_sessions_per_target: None,
            deny_link_local_destinations: true,
            record_sessions: true,
            record_input: false,
            recording_failure_policy: None,
        }
    }
}

/// The preferences in force, shared by every request and the limit enforcer.
#[derive(Debug, Default)]
pub struct PreferencesCell(RwLock<Arc<Preferences>>);

impl PreferencesCell {
    /// The current preferences (a cheap clone of an `Arc`).
    pub fn get(&self) -> Arc<Preferences> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `p` in force for every session from now on.
    pub fn set(&self, p: Preferences) {
        let p = Arc::new(p);
        match self.0.write() {
            Ok(mut g) => *g = p,
            Err(poisoned) => *poisoned.into_inner() = p,
        }
    }
}
