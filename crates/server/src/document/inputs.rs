//! The `inputs` of a Session document, which for `SSM-SessionManagerRunShell` are the session
//! preferences: AWS's field names and ranges, plus Airlock's own limits, read into
//! [`Preferences`] and written back out for the agent (`DocumentContent.inputs`).
//!
//! AWS's tools write numbers as strings (`"idleSessionTimeout": "20"`) and booleans as
//! booleans; both spellings of each are taken. An unknown field is refused rather than
//! ignored, so a misspelt limit is an error and not a limit silently not in force.

use serde_json::{json, Map, Value};

use super::{content_error, SessionError};
use crate::preferences::{FailurePolicy, Preferences};

/// Airlock's own input: most open sessions per user.
pub const MAX_SESSIONS_PER_USER: &str = "maxSessionsPerUser";
/// Airlock's own input: most open sessions per target.
pub const MAX_SESSIONS_PER_TARGET: &str = "maxSessionsPerTarget";
/// Airlock's own input: refuse link-local and metadata destinations for port sessions.
pub const DENY_LINK_LOCAL: &str = "denyLinkLocalDestinations";
/// Airlock's own input: record shell sessions at the gateway.
pub const RECORD_SESSIONS: &str = "recordSessions";
/// Airlock's own input: record input (keystrokes) too.
pub const RECORD_INPUT: &str = "recordInput";
/// Airlock's own input: `FailOpen` or `FailClosed` when the recording store is down.
pub const RECORDING_FAILURE_POLICY: &str = "recordingFailurePolicy";

/// Longest shell profile, in bytes.
const MAX_PROFILE_BYTES: usize = 4096;
/// Most sessions a concurrency limit may name.
const MAX_CONCURRENCY: u32 = 100_000;

fn number(v: &Value, field: &str, range: (u32, u32)) -> Result<Option<u32>, SessionError> {
    let n = match v {
        Value::String(s) if s.trim().is_empty() => return Ok(None),
        Value::String(s) => s.trim().parse::<u32>().ok(),
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::Null => return Ok(None),
        _ => None,
    };
    match n {
        Some(n) if (range.0..=range.1).contains(&n) => Ok(Some(n)),
        _ => Err(content_error(format!(
            "{field} must be a whole number from {} to {} (or empty), not {v}.",
            range.0, range.1
        ))),
    }
}

fn boolean(v: &Value, field: &str) -> Result<bool, SessionError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s == "true" => Ok(true),
        Value::String(s) if s == "false" => Ok(false),
        _ => Err(content_error(format!(
            "{field} must be true or false, not {v}."
        ))),
    }
}

fn text(
    v: &Value,
    field: &str,
    max: usize,
    ok: impl Fn(&str) -> bool,
) -> Result<String, SessionError> {
    match v {
        Value::String(s) if s.is_empty() => Ok(String::new()),
        Value::String(s) if s.len() <= max && !s.contains('\0') && ok(s) => Ok(s.clone()),
        _ => {
            let shown: String = v.to_string().chars().take(80).collect();
            Err(content_error(format!("{field} is not valid: {shown}.")))
        }
    }
}

/// A Linux user name a session may run as: `[a-z_][a-z0-9_.-]*` (an optional final `$`), at
/// most 32 bytes, never `root`.
pub fn valid_os_user(s: &str) -> bool {
    let body = s.strip_suffix('$').unwrap_or(s);
    s.len() <= 32
        && s != "root"
        && body
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && body
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

fn s3_bucket(s: &str) -> bool {
    (3..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && !s.starts_with(['.', '-'])
        && !s.ends_with(['.', '-'])
}

/// Reads a document's `inputs` into preferences (missing fields keep their defaults).
pub fn preferences(inputs: Option<&Value>) -> Result<Preferences, SessionError> {
    let mut p = Preferences::default();
    let Some(v) = inputs else { return Ok(p) };
    let map: &Map<String, Value> = v
        .as_object()
        .ok_or_else(|| content_error("inputs must be a map."))?;
    let printable = |s: &str| !s.chars().any(char::is_control);
    for (k, v) in map {
        match k.as_str() {
            "idleSessionTimeout" => {
                p.idle_session_timeout_minutes = number(v, k, (1, 60))?.unwrap_or(20)
            }
            "maxSessionDuration" => p.max_session_duration_minutes = number(v, k, (1, 1440))?,
            "runAsEnabled" => p.run_as_enabled = boolean(v, k)?,
            "runAsDefaultUser" => p.run_as_default_user = text(v, k, 32, valid_os_user)?,
            "shellProfile" => {
                let m = v.as_object().ok_or_else(|| {
                    content_error("shellProfile must be a map with linux and windows.")
                })?;
                for (os, profile) in m {
                    let t = text(
                        profile,
                        &format!("shellProfile.{os}"),
                        MAX_PROFILE_BYTES,
                        |_| true,
                    )?;
                    match os.as_str() {
                        "linux" => p.shell_profile_linux = t,
                        "windows" => {}
                        other => {
                            return Err(content_error(format!(
                                "shellProfile takes linux and windows, not {other}."
                            )))
                        }
                    }
                }
            }
            "s3BucketName" => p.s3_bucket_name = text(v, k, 63, s3_bucket)?,
            "s3KeyPrefix" => p.s3_key_prefix = text(v, k, 1024, printable)?,
            "s3EncryptionEnabled" => p.s3_encryption_enabled = boolean(v, k)?,
            "cloudWatchLogGroupName" => {
                p.cloudwatch_log_group_name = text(v, k, 512, |s| {
                    s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-/#".contains(&b))
                })?
            }
            "cloudWatchStreamingEnabled" => p.cloudwatch_streaming_enabled = boolean(v, k)?,
            "cloudWatchEncryptionEnabled" => p.cloudwatch_encryption_enabled = boolean(v, k)?,
            "kmsKeyId" => p.kms_key_id = text(v, k, 2048, printable)?,
            MAX_SESSIONS_PER_USER => p.max_sessions_per_user = number(v, k, (1, MAX_CONCURRENCY))?,
            MAX_SESSIONS_PER_TARGET => {
                p.max_sessions_per_target = number(v, k, (1, MAX_CONCURRENCY))?
            }
            DENY_LINK_LOCAL => p.deny_link_local_destinations = boolean(v, k)?,
            RECORD_SESSIONS => p.record_sessions = boolean(v, k)?,
            RECORD_INPUT => p.record_input = boolean(v, k)?,
            RECORDING_FAILURE_POLICY => {
                p.recording_failure_policy = match v {
                    Value::String(s) if s.is_empty() => None,
                    Value::Null => None,
                    Value::String(s) if s == "FailOpen" => Some(FailurePolicy::FailOpen),
                    Value::String(s) if s == "FailClosed" => Some(FailurePolicy::FailClosed),
                    _ => {
                        let shown: String = v.to_string().chars().take(40).collect();
                        return Err(content_error(format!(
                            "{RECORDING_FAILURE_POLICY} must be FailOpen or FailClosed (or empty), not {shown}."
                        )));
                    }
                }
            }
            other => {
                let shown: String = other.chars().take(64).collect();
                return Err(content_error(format!(
                    "inputs has an unknown field {shown}; the fields are idleSessionTimeout, \
                     maxSessionDuration, runAsEnabled, runAsDefaultUser, shellProfile, \
                     s3BucketName, s3KeyPrefix, s3EncryptionEnabled, cloudWatchLogGroupName, \
                     cloudWatchStreamingEnabled, cloudWatchEncryptionEnabled, kmsKeyId, \
                     {MAX_SESSIONS_PER_USER}, {MAX_SESSIONS_PER_TARGET}, {DENY_LINK_LOCAL}, \
                     {RECORD_SESSIONS}, {RECORD_INPUT}, {RECORDING_FAILURE_POLICY}."
                )));
            }
        }
    }
    Ok(p)
}

/// Preferences as document `inputs`, in AWS's spelling (numbers as strings, empty for none).
pub fn to_inputs(p: &Preferences) -> Value {
    let opt = |n: Option<u32>| n.map(|n| n.to_string()).unwrap_or_default();
    json!({
        "idleSessionTimeout": p.idle_session_timeout_minutes.to_string(),
        "maxSessionDuration": opt(p.max_session_duration_minutes),
        "runAsEnabled": p.run_as_enabled,
        "runAsDefaultUser": p.run_as_default_user,
        "shellProfile": { "linux": p.shell_profile_linux, "windows": "" },
        "s3BucketName": p.s3_bucket_name,
        "s3KeyPrefix": p.s3_key_prefix,
        "s3EncryptionEnabled": p.s3_encryption_enabled,
        "cloudWatchLogGroupName": p.cloudwatch_log_group_name,
        "cloudWatchStreamingEnabled": p.cloudwatch_streaming_enabled,
        "cloudWatchEncryptionEnabled": p.cloudwatch_encryption_enabled,
        "kmsKeyId": p.kms_key_id,
        MAX_SESSIONS_PER_USER: opt(p.max_sessions_per_user),
        MAX_SESSIONS_PER_TARGET: opt(p.max_sessions_per_target),
        DENY_LINK_LOCAL: p.deny_link_local_destinations,
        RECORD_SESSIONS: p.record_sessions,
        RECORD_INPUT: p.record_input,
        RECORDING_FAILURE_POLICY: p.recording_failure_policy.map(|f| f.as_str()).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn round_trip_and_ranges() {
        let d = Preferences::default();
        assert_eq!(preferences(Some(&to_inputs(&d))).unwrap(), d);
        let p = preferences(Some(&json!({
            "idleSessionTimeout": 5, "maxSessionDuration": "90", "runAsEnabled": "false",
            "runAsDefaultUser": "ops", "shellProfile": {"linux": "cd /tmp", "windows": ""},
            "maxSessionsPerUser": "3", "denyLinkLocalDestinations": false
        })))
        .unwrap();
        assert_eq!(p.idle_session_timeout_minutes, 5);
        assert_eq!(p.max_session_duration_minutes, Some(90));
        assert!(!p.run_as_enabled && !p.deny_link_local_destinations);
        assert_eq!(p.max_sessions_per_user, Some(3));
        assert_eq!(preferences(Some(&to_inputs(&p))).unwrap(), p);
        for bad in [
            json!({"idleSessionTimeout": "0"}),
            json!({"idleSessionTimeout": "61"}),
            json!({"idleSessionTimeout": "ten"}),
            json!({"idleSessionTimeout": -1}),
            json!({"maxSessionDuration": "1441"}),
            json!({"runAsEnabled": "yes"}),
            json!({"runAsDefaultUser": "root"}),
            json!({"runAsDefaultUser": "a b"}),
            json!({"shellProfile": {"linux": 5}}),
            json!({"shellProfile": {"mac": ""}}),
            json!({"s3BucketName": "Bad_Bucket"}),
            json!({"maxSessionsPerUser": 0}),
            json!({"idleSessionTimeOut": "5"}),
            json!({"recordingFailurePolicy": "failopen"}),
            json!({"recordingFailurePolicy": true}),
            json!({"recordSessions": "yes"}),
            json!({"recordInput": 1}),
            json!([1]),
        ] {
            assert_eq!(
                preferences(Some(&bad)).unwrap_err().code,
                "InvalidDocumentContent",
                "{bad}"
            );
        }
    }

    #[test]
    fn recording_preferences_and_their_defaults() {
        use crate::preferences::FailurePolicy;
        let p = preferences(None).unwrap();
        assert!(p.record_sessions && !p.record_input);
        assert_eq!(p.failure_policy(), FailurePolicy::FailOpen);
        let strict = preferences(Some(&json!({"s3EncryptionEnabled": true}))).unwrap();
        assert_eq!(strict.failure_policy(), FailurePolicy::FailClosed);
        let p = preferences(Some(&json!({"s3EncryptionEnabled": true,
            "recordingFailurePolicy": "FailOpen", "recordInput": "true", "recordSessions": false})))
        .unwrap();
        assert_eq!(p.failure_policy(), FailurePolicy::FailOpen);
        assert!(p.record_input && !p.record_sessions);
        let back = to_inputs(&p);
        assert_eq!(back["recordingFailurePolicy"], "FailOpen");
        assert_eq!(preferences(Some(&back)).unwrap(), p);
    }
}
