//! Why a session ended, as a type: every path that ends a session names one of these, so the
//! store, DescribeSessions (`EndReason: {Kind, Detail}` beside the `Details` sentence), the
//! audit trail and the client's closing line all say the same thing in the same words.

/// The reason a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The shell or command ended by itself on the host (its exit status when known).
    Exited(Option<i32>),
    /// Someone called TerminateSession (their ARN).
    TerminatedBy(String),
    /// No input from the client and no output to it for the idle timeout (minutes).
    IdleTimeout(u32),
    /// The session reached the maximum session duration (minutes).
    MaxDuration(u32),
    /// The owner may no longer start this session (what changed).
    AccessRevoked(String),
    /// The client disconnected and did not come back before the idle timeout.
    ClientGone,
    /// The agent's side went away or never came (what happened).
    AgentGone(String),
    /// The agent refused the session (its words).
    AgentRefused(String),
    /// The agent could not run the session as the requested OS user (its words).
    RunAsFailed(String),
    /// The session failed on the host after it started (e.g. a port session's destination
    /// refused the connection; the agent's words).
    HostError(String),
    /// The target was deregistered.
    Deregistered,
    /// The server could not keep the session (e.g. its audit record could not be written).
    ServerError(String),
    /// The server restarted while the session was open.
    ServerRestarted,
    /// The session could not be recorded and the failure policy is FailClosed (what failed).
    RecordingFailed(String),
}

impl EndReason {
    /// The machine-readable kind (`EndReason.Kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            EndReason::Exited(_) => "Exited",
            EndReason::TerminatedBy(_) => "TerminatedBy",
            EndReason::IdleTimeout(_) => "IdleTimeout",
            EndReason::MaxDuration(_) => "MaxDuration",
            EndReason::AccessRevoked(_) => "AccessRevoked",
            EndReason::ClientGone => "ClientGone",
            EndReason::AgentGone(_) => "AgentGone",
            EndReason::AgentRefused(_) => "AgentRefused",
            EndReason::RunAsFailed(_) => "RunAsFailed",
            EndReason::HostError(_) => "HostError",
            EndReason::Deregistered => "Deregistered",
            EndReason::ServerError(_) => "ServerError",
            EndReason::ServerRestarted => "ServerRestarted",
            EndReason::RecordingFailed(_) => "RecordingFailed",
        }
    }

    /// The machine-readable detail (`EndReason.Detail`): the exit status, the principal, the
    /// limit in minutes, or what happened.
    pub fn detail(&self) -> String {
        match self {
            EndReason::Exited(code) => code.map(|c| c.to_string()).unwrap_or_default(),
            EndReason::IdleTimeout(m) | EndReason::MaxDuration(m) => m.to_string(),
            EndReason::TerminatedBy(s)
            | EndReason::AccessRevoked(s)
            | EndReason::AgentGone(s)
            | EndReason::AgentRefused(s)
            | EndReason::RunAsFailed(s)
            | EndReason::HostError(s)
            | EndReason::ServerError(s)
            | EndReason::RecordingFailed(s) => s.clone(),
            EndReason::ClientGone | EndReason::Deregistered | EndReason::ServerRestarted => {
                String::new()
            }
        }
    }

    /// The session status it leaves: `Terminated` for an orderly end (by itself, by someone,
    /// by a limit or a revocation), `Failed` when something broke.
    pub fn status(&self) -> &'static str {
        match self {
            EndReason::Exited(_)
            | EndReason::TerminatedBy(_)
            | EndReason::IdleTimeout(_)
            | EndReason::MaxDuration(_)
            | EndReason::AccessRevoked(_)
            | EndReason::ClientGone
            | EndReason::Deregistered => "Terminated",
            _ => "Failed",
        }
    }

    /// The exit status, for sessions that exited by themselves.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            EndReason::Exited(code) => *code,
            _ => None,
        }
    }

    /// The sentence shown to people (DescribeSessions `Details`, the client's closing line).
    pub fn message(&self) -> String {
        let minutes = |m: &u32| {
            if *m == 1 {
                "1 minute".to_owned()
            } else {
                format!("{m} minutes")
            }
        };
        match self {
            EndReason::Exited(Some(c)) => format!("The session exited with status {c}."),
            EndReason::Exited(None) => "the session ended on the host".to_owned(),
            EndReason::TerminatedBy(who) => {
                format!(
                    "Session terminated by {}.",
                    who.rsplit('/').next().unwrap_or(who)
                )
            }
            EndReason::IdleTimeout(m) => format!(
                "Session ended: idle timeout (no input or output for {}).",
                minutes(m)
            ),
            EndReason::MaxDuration(m) => format!(
                "Session ended: maximum session duration ({}) reached.",
                minutes(m)
            ),
            EndReason::AccessRevoked(what) => {
                format!("Session ended: access revoked ({what}).")
            }
            EndReason::ClientGone => {
                "Session ended: the client disconnected and did not return.".to_owned()
            }
            EndReason::AgentGone(what) => what.clone(),
            EndReason::AgentRefused(what)
            | EndReason::RunAsFailed(what)
            | EndReason::HostError(what) => format!("the session failed on the host: {what}"),
            EndReason::Deregistered => "the instance was deregistered".to_owned(),
            EndReason::ServerError(what) => what.clone(),
            EndReason::ServerRestarted => "server restarted".to_owned(),
            EndReason::RecordingFailed(what) => {
                format!("Session ended: it could not be recorded ({what}) and the recording failure policy is FailClosed.")
            }
        }
    }

    /// Whether the client is told the sentence in `channel_closed` (the plugin prints it as
    /// `SessionId: X : <reason>`): everything but a session that simply exited, for which the
    /// plugin prints its plain "Exiting session" line.
    pub fn shown_to_client(&self) -> bool {
        !matches!(self, EndReason::Exited(_))
    }

    /// `{Kind, Detail}` as DescribeSessions and the audit record show it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "Kind": self.kind(), "Detail": self.detail() })
    }
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_statuses_and_sentences() {
        let t = EndReason::TerminatedBy("arn:aws:iam::000000000000:user/ops".into());
        assert_eq!(t.kind(), "TerminatedBy");
        assert_eq!(t.status(), "Terminated");
        assert_eq!(t.message(), "Session terminated by ops.");
        assert_eq!(t.detail(), "arn:aws:iam::000000000000:user/ops");
        assert_eq!(
            EndReason::IdleTimeout(1).message(),
            "Session ended: idle timeout (no input or output for 1 minute)."
        );
        assert_eq!(EndReason::Exited(Some(3)).exit_code(), Some(3));
        assert!(!EndReason::Exited(Some(3)).shown_to_client());
        assert_eq!(EndReason::AgentGone("x".into()).status(), "Failed");
        assert_eq!(
            EndReason::AccessRevoked("access key AKIA… disabled".into()).to_json()["Kind"],
            "AccessRevoked"
        );
    }
}
