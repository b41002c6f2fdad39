//! CloudEvents 1.0 (structured JSON) as Airlock sends them, the event types, the patterns a
//! webhook subscribes with, and how an audit record becomes events.
//!
//! Every audit record becomes an `io.airlock.audit.record` (so an off-host copy of the trail
//! exists); the records of a session's start and end, and of a refused StartSession,
//! ResumeSession or data channel, also become the session events. Deriving them from the
//! record is what lets both be written in one transaction.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::store::audit::AuditRecord;

/// A session started (its start is on the audit record).
pub const SESSION_STARTED: &str = "io.airlock.session.started";
/// A client took a live session up again (ResumeSession).
pub const SESSION_RESUMED: &str = "io.airlock.session.resumed";
/// A session ended, with its typed reason.
pub const SESSION_ENDED: &str = "io.airlock.session.ended";
/// Someone ended a session with TerminateSession (also sent as `ended`).
pub const SESSION_TERMINATED: &str = "io.airlock.session.terminated";
/// A StartSession, ResumeSession or data channel was refused by policy.
pub const SESSION_DENIED: &str = "io.airlock.session.denied";
/// An audit record (every one).
pub const AUDIT_RECORD: &str = "io.airlock.audit.record";
/// Sent by TestWebhook to the one webhook tested, whatever it subscribes to.
pub const WEBHOOK_TEST: &str = "io.airlock.webhook.test";

/// The types a webhook can subscribe to.
pub const TYPES: [&str; 6] = [
    SESSION_STARTED,
    SESSION_RESUMED,
    SESSION_ENDED,
    SESSION_TERMINATED,
    SESSION_DENIED,
    AUDIT_RECORD,
];

const PREFIX: &str = "io.airlock.";

/// One CloudEvent in structured JSON mode (`application/cloudevents+json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    /// Always `1.0`.
    pub specversion: String,
    /// A UUID, the same on every delivery of this event: receivers de-duplicate by it.
    pub id: String,
    /// `airlock://<server>`.
    pub source: String,
    /// One of [`TYPES`] (or [`WEBHOOK_TEST`]).
    #[serde(rename = "type")]
    pub kind: String,
    /// When it happened (RFC 3339).
    pub time: String,
    /// The session id, or what the event is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// The event's facts (PascalCase members, as the API's).
    pub data: Value,
}

impl CloudEvent {
    /// A new event with a fresh id.
    pub fn new(
        source: &str,
        kind: &str,
        time_ms: i64,
        subject: Option<String>,
        data: Value,
    ) -> Self {
        CloudEvent {
            specversion: "1.0".into(),
            id: uuid::Uuid::new_v4().to_string(),
            source: source.to_owned(),
            kind: kind.to_owned(),
            time: rfc3339(time_ms),
            subject,
            datacontenttype: "application/json".into(),
            data,
        }
    }

    /// The JSON body sent (the same bytes on every attempt).
    pub fn to_body(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Epoch ms as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Checks and normalises the event types a webhook asks for: full names
/// (`io.airlock.session.started`) or short ones (`session.started`), `session.*`, `audit.*` or
/// `*`. Returns the short forms, de-duplicated, in the order given.
pub fn parse_patterns(asked: &[String]) -> Result<Vec<String>, String> {
    if asked.is_empty() {
        return Err("Events must name at least one event type (or *).".into());
    }
    if asked.len() > 16 {
        return Err("Events may name at most 16 event types.".into());
    }
    let mut out: Vec<String> = Vec::new();
    for a in asked {
        let a = a.trim();
        let short = a.strip_prefix(PREFIX).unwrap_or(a);
        let known = short == "*"
            || short == "session.*"
            || short == "audit.*"
            || TYPES.iter().any(|t| t.strip_prefix(PREFIX) == Some(short));
        if !known {
            let mut shown: String = a.chars().take(80).collect();
            if shown.len() < a.len() {
                shown.push('…');
            }
            return Err(format!(
                "Unknown event type '{shown}': expected *, session.*, audit.*, or one of {}.",
                TYPES
                    .iter()
                    .filter_map(|t| t.strip_prefix(PREFIX))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !out.iter().any(|o| o == short) {
            out.push(short.to_owned());
        }
    }
    Ok(out)
}

/// Whether an event type is one the (normalised) patterns subscribe to.
pub fn matches(patterns: &[String], event_type: &str) -> bool {
    let Some(short) = event_type.strip_prefix(PREFIX) else {
        return false;
    };
    patterns.iter().any(|p| {
        p == "*"
            || p == short
            || p.strip_suffix('*')
                .is_some_and(|prefix| prefix.ends_with('.') && short.starts_with(prefix))
    })
}

/// What the store knows of a session, for the events about it.
#[derive(Clone, Debug, Default)]
pub struct SessionFacts {
    /// The session id.
    pub session_id: String,
    /// The target (mi-…).
    pub target: String,
    /// The owner's ARN.
    pub owner: String,
    /// The document it runs.
    pub document: String,
    /// The document's sessionType.
    pub session_type: String,
}

const SESSION_ACTIONS: [&str; 3] = [
    "ssm:StartSession",
    "ssm:ResumeSession",
    "ssmmessages:OpenDataChannel",
];

/// Whether the record is a refusal that becomes `session.denied`.
fn is_denial(rec: &AuditRecord) -> bool {
    rec.event.decision == "Deny" && SESSION_ACTIONS.contains(&rec.event.action.as_str())
}

/// Whether the record becomes a session event (and so may want [`SessionFacts`]).
pub fn is_session_record(rec: &AuditRecord) -> bool {
    matches!(rec.event.event.as_str(), "session-start" | "session-end") || is_denial(rec)
}

/// The session a record is about, when it names one.
pub fn session_of(rec: &AuditRecord) -> Option<String> {
    let e = &rec.event;
    if e.event == "data-channel" {
        return (!e.request_id.is_empty()).then(|| e.request_id.clone());
    }
    e.resource
        .split(' ')
        .find_map(|arn| arn.split_once(":session/").map(|(_, id)| id.to_owned()))
        .filter(|id| !id.is_empty())
}

/// The target a StartSession refusal was about (its managed-instance resource).
fn target_of(rec: &AuditRecord) -> Option<String> {
    rec.event.resource.split(' ').find_map(|arn| {
        arn.split_once(":managed-instance/")
            .map(|(_, id)| id.to_owned())
    })
}

/// The events one audit record becomes: always `audit.record`, and the session event(s) it
/// stands for. `facts` is the session's row when [`is_session_record`] and it exists.
pub fn from_audit(
    source: &str,
    rec: &AuditRecord,
    facts: Option<&SessionFacts>,
) -> Vec<CloudEvent> {
    let e = &rec.event;
    let mut out = Vec::new();
    let subject = (!e.resource.is_empty()).then(|| e.resource.clone());
    out.push(CloudEvent::new(
        source,
        AUDIT_RECORD,
        rec.time,
        subject,
        serde_json::to_value(rec).unwrap_or(Value::Null),
    ));
    let detail: Value = serde_json::from_str(&e.detail).unwrap_or(Value::Null);
    let session_id = session_of(rec);
    let target = facts
        .map(|f| f.target.clone())
        .filter(|t| !t.is_empty())
        .or_else(|| detail["Target"].as_str().map(str::to_owned))
        .or_else(|| target_of(rec))
        .unwrap_or_default();
    let owner = facts
        .map(|f| f.owner.clone())
        .filter(|o| !o.is_empty())
        .unwrap_or_else(|| e.principal.clone());
    let document = facts.map(|f| f.document.clone()).unwrap_or_default();
    let session_type = facts.map(|f| f.session_type.clone()).unwrap_or_default();
    let subject = session_id.clone();
    match e.event.as_str() {
        "session-start" => out.push(CloudEvent::new(
            source,
            SESSION_STARTED,
            rec.time,
            subject,
            json!({
                "SessionId": session_id,
                "Target": target,
                "Owner": owner,
                "DocumentName": detail["DocumentName"].as_str().unwrap_or(&document),
                "SessionType": session_type,
                "RunAs": detail["RunAs"],
                "SourceIp": e.source_ip,
                "RequestId": e.request_id,
            }),
        )),
        "session-end" => {
            let reason = &detail["EndReason"];
            out.push(CloudEvent::new(
                source,
                SESSION_ENDED,
                rec.time,
                subject.clone(),
                json!({
                    "SessionId": session_id,
                    "Target": target,
                    "Owner": owner,
                    "Status": e.decision,
                    "EndReason": {
                        "Kind": reason["Kind"],
                        "Detail": reason["Detail"],
                        "Message": e.statement,
                        "ExitCode": detail["ExitCode"],
                    },
                }),
            ));
            if reason["Kind"] == "TerminatedBy" {
                out.push(CloudEvent::new(
                    source,
                    SESSION_TERMINATED,
                    rec.time,
                    subject,
                    json!({
                        "SessionId": session_id,
                        "Target": target,
                        "Owner": owner,
                        "TerminatedBy": reason["Detail"],
                        "Message": e.statement,
                    }),
                ));
            }
        }
        _ if is_denial(rec) => out.push(CloudEvent::new(
            source,
            SESSION_DENIED,
            rec.time,
            subject.or_else(|| (!target.is_empty()).then(|| target.clone())),
            json!({
                "Action": e.action,
                "Principal": e.principal,
                "SessionId": session_id,
                "Target": target,
                "Owner": facts.map(|f| f.owner.clone()),
                "Resource": e.resource,
                "SourceIp": e.source_ip,
                "Reason": e.statement,
                "RequestId": e.request_id,
            }),
        )),
        _ => {}
    }
    out
}

/// `session.ended` for a session whose end has no audit record: one a previous run of the
/// server left open (it is marked Failed at the next start).
pub fn ended_without_record(
    source: &str,
    s: &crate::store::Session,
    reason: &crate::end_reason::EndReason,
) -> CloudEvent {
    CloudEvent::new(
        source,
        SESSION_ENDED,
        crate::store::now_ms(),
        Some(s.session_id.clone()),
        json!({
            "SessionId": s.session_id,
            "Target": s.target,
            "Owner": s.owner,
            "Status": reason.status(),
            "EndReason": {
                "Kind": reason.kind(),
                "Detail": reason.detail(),
                "Message": reason.message(),
                "ExitCode": reason.exit_code(),
            },
        }),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::audit::AuditEvent;

    fn record(event: AuditEvent) -> AuditRecord {
        AuditRecord {
            seq: 7,
            time: 1_764_000_000_123,
            event,
            prev_hash: "00".into(),
            hash: "11".into(),
        }
    }

    #[test]
    fn patterns_are_checked_and_matched() {
        let p = parse_patterns(&[
            "io.airlock.session.started".into(),
            "session.started".into(),
            "audit.*".into(),
        ])
        .unwrap();
        assert_eq!(p, vec!["session.started", "audit.*"]);
        assert!(matches(&p, SESSION_STARTED));
        assert!(matches(&p, AUDIT_RECORD));
        assert!(!matches(&p, SESSION_ENDED));
        assert!(matches(&["*".into()], SESSION_DENIED));
        assert!(matches(&["session.*".into()], SESSION_TERMINATED));
        assert!(!matches(&["session.*".into()], AUDIT_RECORD));
        assert!(!matches(&["*".into()], "com.other.thing"));
        for bad in [
            "",
            "session",
            "session.start*",
            "io.airlock.*x",
            "x.*",
            "\u{0}",
        ] {
            assert!(parse_patterns(&[bad.into()]).is_err(), "{bad:?}");
        }
        assert!(parse_patterns(&[]).is_err());
        assert!(parse_patterns(&vec!["*".to_owned(); 17]).is_err());
        let long = "y".repeat(10_000);
        let err = parse_patterns(&[long]).unwrap_err();
        assert!(err.len() < 400, "{err}");
    }

    #[test]
    fn a_terminated_session_is_ended_and_terminated_by_whom() {
        let rec = record(AuditEvent {
            event: "session-end".into(),
            principal: "arn:aws:iam::000000000000:user/alice".into(),
            action: "ssm:SessionEnded".into(),
            resource: "arn:aws:ssm:us-east-1:000000000000:session/alice-0abc".into(),
            decision: "Terminated".into(),
            statement: "Session terminated by ops.".into(),
            detail: json!({"ExitCode": null, "EndReason": {"Kind": "TerminatedBy", "Detail": "arn:aws:iam::000000000000:user/ops"}}).to_string(),
            ..Default::default()
        });
        let facts = SessionFacts {
            session_id: "alice-0abc".into(),
            target: "mi-0123".into(),
            owner: "arn:aws:iam::000000000000:user/alice".into(),
            ..Default::default()
        };
        let ev = from_audit("airlock://x", &rec, Some(&facts));
        let kinds: Vec<_> = ev.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, [AUDIT_RECORD, SESSION_ENDED, SESSION_TERMINATED]);
        assert_eq!(ev[1].subject.as_deref(), Some("alice-0abc"));
        assert_eq!(ev[1].data["EndReason"]["Kind"], "TerminatedBy");
        assert_eq!(ev[1].data["Target"], "mi-0123");
        assert_eq!(
            ev[2].data["TerminatedBy"],
            "arn:aws:iam::000000000000:user/ops"
        );
        assert_eq!(ev[0].data["Seq"], 7);
        assert_eq!(ev[0].time, "2025-11-24T16:00:00.123Z");
        let ids: std::collections::HashSet<_> = ev.iter().map(|e| &e.id).collect();
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn refusals_become_denied_and_others_only_audit() {
        let deny = record(AuditEvent {
            event: "api".into(),
            principal: "arn:aws:iam::000000000000:user/bob".into(),
            action: "ssm:StartSession".into(),
            resource: "arn:aws:ssm:us-east-1:000000000000:managed-instance/mi-0aa arn:aws:ssm:us-east-1::document/AWS-StartPortForwardingSession".into(),
            decision: "Deny".into(),
            ..Default::default()
        });
        let ev = from_audit("airlock://x", &deny, None);
        assert_eq!(ev[1].kind, SESSION_DENIED);
        assert_eq!(ev[1].subject.as_deref(), Some("mi-0aa"));
        assert_eq!(ev[1].data["Target"], "mi-0aa");
        let channel = record(AuditEvent {
            event: "data-channel".into(),
            action: "ssmmessages:OpenDataChannel".into(),
            decision: "Deny".into(),
            request_id: "bob-0123".into(),
            ..Default::default()
        });
        assert_eq!(session_of(&channel).as_deref(), Some("bob-0123"));
        let allow = record(AuditEvent {
            decision: "Allow".into(),
            ..deny.event.clone()
        });
        assert_eq!(from_audit("airlock://x", &allow, None).len(), 1);
        assert!(!is_session_record(&allow));
    }
}
