//! `Airlock.SearchSessions`: which sessions printed or typed a phrase (`airlock sessions search
//! TEXT`), from the full-text index of recordings ([`crate::store::search`]).
//!
//! A result is the content of a recording, so each session is shown only to whom may read its
//! recording: its owner, or a caller allowed `airlock:GetSessionRecording` on the session ARN;
//! an explicit `Deny` wins over ownership (`GetSessionRecording`'s own rule,
//! [`super::recordings::may_read_recording`], decided quietly per session). The call needs no
//! Allow of its own (who may read nothing finds nothing), but an explicit Deny of
//! `airlock:SearchSessions` on `session/*` refuses it. It is audited with what was searched and
//! which sessions were shown.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{invalid, parse, timestamp, ApiError, Caller};
use crate::authz::Resource;
use crate::state::AppState;
use crate::store::search::SearchFilter;
use crate::store::Session;

/// The action the call is audited under.
pub const ACTION: &str = "airlock:SearchSessions";
/// `MaxResults` when the caller gives none.
const DEFAULT_MAX_RESULTS: usize = 20;
/// The most sessions one call returns.
const MAX_RESULTS: usize = 100;
/// The most matches shown per session.
const MATCHES_PER_SESSION: i64 = 5;
/// The longest search text, in characters.
const MAX_TEXT_CHARS: usize = 256;
/// Matching sessions read from the index per page while filtering by permission.
const PAGE: i64 = 200;
/// The most matching sessions one call looks at (so a caller who may read few sessions of a
/// very common word does not make the server walk the whole index).
const MAX_SCANNED: i64 = 10_000;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct SearchInput {
    text: Option<String>,
    target: Option<String>,
    since: Option<f64>,
    max_results: Option<i64>,
}

/// A session as the policy resource of its recording, with the session's system tags (as
/// `sessions::session_resource` builds it, without reading the session again).
pub fn recording_resource(state: &AppState, s: &Session) -> Resource {
    Resource {
        arn: format!(
            "arn:aws:ssm:{}:{}:session/{}",
            state.config.region, state.config.account_id, s.session_id
        ),
        tags: vec![
            (
                "aws:ssmmessages:session-id".to_owned(),
                s.owner_user_id.clone(),
            ),
            ("aws:ssmmessages:target-id".to_owned(), s.target.clone()),
        ],
    }
}

/// SearchSessions `{Text, Target?, Since?, MaxResults?}` →
/// `{Results:[{SessionId, Target, Owner, StartDate, Matches:[{T, Kind, Snippet}]}]}`, newest
/// session first.
pub async fn search(
    state: &Arc<AppState>,
    caller: &Caller,
    input: Value,
) -> Result<Value, ApiError> {
    let i: SearchInput = parse(input)?;
    let text = i.text.unwrap_or_default();
    let chars = text.chars().count();
    if text.trim().is_empty() || chars > MAX_TEXT_CHARS {
        return Err(invalid(
            &text.chars().take(40).collect::<String>(),
            "text",
            &format!("Member must have length between 1 and {MAX_TEXT_CHARS}"),
        ));
    }
    if !text.chars().any(char::is_alphanumeric) {
        return Err(ApiError::validation(
            "The search text must hold at least one letter or digit: searches match words.",
        ));
    }
    let max = match i.max_results {
        None => DEFAULT_MAX_RESULTS,
        Some(n) => match usize::try_from(n) {
            Ok(n) if (1..=MAX_RESULTS).contains(&n) => n,
            _ => {
                return Err(invalid(
                    &n.to_string(),
                    "maxResults",
                    &format!("Member must have value between 1 and {MAX_RESULTS}"),
                ))
            }
        },
    };
    if let Some(t) = &i.target {
        if t.is_empty() || t.chars().count() > 400 {
            return Err(invalid(
                t,
                "target",
                "Member must have length between 1 and 400",
            ));
        }
    }
    let since = match i.since {
        // `as` saturates; JSON carries no NaN or infinity.
        Some(s) if s >= 0.0 => Some((s * 1000.0) as i64),
        Some(s) => {
            return Err(invalid(
                &s.to_string(),
                "since",
                "Member must be a time after 1970",
            ))
        }
        None => None,
    };
    // The call needs no Allow (owners search their own), but an explicit Deny of it stops it.
    let all = Resource::new(format!(
        "arn:aws:ssm:{}:{}:session/*",
        state.config.region, state.config.account_id
    ));
    let ctx = crate::authz::context(
        state,
        &caller.principal,
        &caller.source_ip.to_string(),
        caller.secure,
        ACTION,
        &all,
    );
    let d = crate::authz::decide(&caller.principal, &ctx);
    if let airlock_policy::Decision::ExplicitDeny { .. } = d {
        audit(state, caller, &text, &[], Some(d.explain())).await?;
        return Err(ApiError::client(
            "AccessDeniedException",
            crate::authz::denied_message(&caller.principal.arn, ACTION, &all.arn, &d),
        ));
    }
    let filter = SearchFilter {
        target: i.target,
        since,
    };
    let mut shown: Vec<Session> = Vec::new();
    let mut offset = 0;
    while shown.len() < max && offset < MAX_SCANNED {
        let page = state
            .store
            .search_recordings(&text, &filter, PAGE, offset)
            .await?;
        let len = page.len() as i64;
        for s in page {
            if shown.len() < max
                && super::recordings::may_read_recording(
                    state,
                    caller,
                    Some(&s),
                    &recording_resource(state, &s),
                )
                .0
            {
                shown.push(s);
            }
        }
        if len < PAGE {
            break;
        }
        offset += PAGE;
    }
    let mut results = Vec::with_capacity(shown.len());
    for s in &shown {
        let matches: Vec<Value> = state
            .store
            .recording_matches(&s.session_id, &text, MATCHES_PER_SESSION)
            .await?
            .into_iter()
            .map(|m| json!({ "T": m.t, "Kind": m.kind, "Snippet": m.snippet }))
            .collect();
        results.push(json!({
            "SessionId": s.session_id,
            "Target": s.target,
            "Owner": s.owner,
            "StartDate": timestamp(s.start_date),
            "Matches": matches,
        }));
    }
    audit(state, caller, &text, &shown, None).await?;
    Ok(json!({ "Results": results }))
}

/// The call's audit record: what was searched and whose recordings' words were shown, or the
/// Deny statement that refused it.
async fn audit(
    state: &AppState,
    caller: &Caller,
    text: &str,
    shown: &[Session],
    denied: Option<String>,
) -> Result<(), ApiError> {
    let event = crate::store::audit::AuditEvent {
        event: "api".into(),
        principal: caller.principal.arn.clone(),
        source_ip: caller.source_ip.to_string(),
        action: ACTION.to_owned(),
        resource: shown
            .iter()
            .map(|s| recording_resource(state, s).arn)
            .collect::<Vec<_>>()
            .join(" "),
        decision: if denied.is_some() { "Deny" } else { "Allow" }.into(),
        statement: denied.unwrap_or_else(|| {
            "sessions shown: the caller's own, or allowed airlock:GetSessionRecording".into()
        }),
        request_id: caller.request_id.clone(),
        user_agent: caller.user_agent.clone(),
        detail: json!({ "Text": text, "Results": shown.len() }).to_string(),
    };
    crate::authz::record_for(state, caller, &event).await?;
    Ok(())
}
