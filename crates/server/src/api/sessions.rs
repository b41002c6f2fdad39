//! Session operations: StartSession, ResumeSession, TerminateSession, DescribeSessions.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use airlock_proto::AgentTaskPayload;

use super::{decode_next_token, encode_next_token, invalid, timestamp, ApiError, Caller};
use crate::end_reason::EndReason;
use crate::gateway::control::send_task;
use crate::gateway::hub::Side;
use crate::state::AppState;
use crate::store::{now_ms, LimitHit, Session, SessionAccess, SessionFilter};

/// The default shell document, used when StartSession names none.
pub const DEFAULT_SHELL_DOCUMENT: &str = super::documents::SHELL;

/// StartSession input.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StartSessionInput {
    target: Option<String>,
    document_name: Option<String>,
    reason: Option<String>,
    #[serde(default)]
    parameters: BTreeMap<String, Vec<String>>,
}

/// Input of the operations that take only a session id.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionIdInput {
    session_id: Option<String>,
}

/// DescribeSessions input.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeSessionsInput {
    state: Option<String>,
    max_results: Option<i64>,
    next_token: Option<String>,
    #[serde(default)]
    filters: Vec<SessionFilterInput>,
}

/// One DescribeSessions filter (lower-case member names, as in the SSM model).
#[derive(Debug, Deserialize)]
pub struct SessionFilterInput {
    key: String,
    value: String,
}

fn session_arn(state: &AppState, session_id: &str) -> String {
    format!(
        "arn:aws:ssm:{}:{}:session/{session_id}",
        state.config.region, state.config.account_id
    )
}

fn instance_arn(state: &AppState, id: &str) -> String {
    format!(
        "arn:aws:ssm:{}:{}:managed-instance/{id}",
        state.config.region, state.config.account_id
    )
}

/// Fails a session whose agent never opened its data channel (agent crashed or unreachable
/// after the task was sent), so the client hears why instead of waiting forever.
fn watch_agent_side(state: Arc<AppState>, session_id: String, ttl: std::time::Duration) {
    let tracker = state.tasks.clone();
    tracker.spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(ttl + std::time::Duration::from_secs(1)) => {}
            _ = state.shutdown.cancelled() => return,
        }
        let attached = state
            .hub
            .existing_relay(&session_id)
            .is_some_and(|r| r.is_attached(Side::Agent));
        let connecting = matches!(state.store.session(&session_id).await, Ok(Some(s)) if s.status == "Connecting");
        if !attached && connecting {
            crate::sessions::end(
                &state,
                &session_id,
                crate::sessions::End {
                    reason: EndReason::AgentGone(
                        "the agent did not open the session's data channel in time".into(),
                    ),
                    notify_agent: true,
                },
            )
            .await;
        }
    });
}

/// The ARN a document is authorised as: AWS-owned documents have an empty account field.
/// Takes a plain document name (see [`document_name`]), so the ARN authorised is always the
/// canonical one of the document that runs.
pub fn document_arn(state: &AppState, name: &str) -> String {
    let account = if name.starts_with("AWS-") {
        ""
    } else {
        state.config.account_id.as_str()
    };
    format!(
        "arn:aws:ssm:{}:{account}:document/{name}",
        state.config.region
    )
}

/// Whether `name` is a plain document name (`^[a-zA-Z0-9_\-.]{3,128}$`): nothing that a path or
/// an ARN could hide a second name in.
fn plain_document_name(name: &str) -> bool {
    (3..=128).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_-.".contains(&c))
}

/// The document a StartSession names, as the plain name that will run. A name is taken as it is;
/// an ARN only when it is this deployment's own, canonical ARN of that document (this region,
/// this account, or the empty account of an AWS-owned document). Anything else — a path such as
/// `x/AWS-StartSSHSession`, another region's or account's ARN — is refused, so that what is
/// authorised and what runs can never differ.
pub fn document_name<'a>(state: &AppState, document: &'a str) -> Result<&'a str, ApiError> {
    let refuse = || {
        invalid(
            document,
            "documentName",
            "Member must be a document name (^[a-zA-Z0-9_\\-.]{3,128}$) or this deployment's ARN of one",
        )
    };
    if !document.starts_with("arn:") {
        return plain_document_name(document)
            .then_some(document)
            .ok_or_else(refuse);
    }
    let name = document
        .rsplit_once(":document/")
        .map(|(_, n)| n)
        .filter(|n| plain_document_name(n))
        .ok_or_else(refuse)?;
    if document != document_arn(state, name) {
        return Err(refuse());
    }
    Ok(name)
}

/// A session as a policy resource, with the system tags AWS sets at StartSession.
pub async fn session_resource(
    state: &AppState,
    session_id: &str,
) -> Result<crate::authz::Resource, ApiError> {
    let mut tags = Vec::new();
    if let Some(s) = state.store.session(session_id).await? {
        tags.push((
            "aws:ssmmessages:session-id".to_owned(),
            s.owner_user_id.clone(),
        ));
        tags.push(("aws:ssmmessages:target-id".to_owned(), s.target.clone()));
    }
    Ok(crate::authz::Resource {
        arn: session_arn(state, session_id),
        tags,
    })
}

/// The OS user a session runs as (policy-and-api.md §3.5): with `runAsEnabled` the owner's
/// `SSMSessionRunAs` tag, else the preference `runAsDefaultUser`; without it (or with neither
/// set) the empty name, which the agent runs as its own unprivileged default user.
pub fn run_as_user(prefs: &crate::preferences::Preferences, tag: Option<&str>) -> String {
    if !prefs.run_as_enabled {
        return String::new();
    }
    match tag {
        Some(t) if !t.is_empty() => t.to_owned(),
        _ => prefs.run_as_default_user.clone(),
    }
}

fn new_session_id(user: &str) -> String {
    use rand::Rng;
    let suffix: String = (0..17)
        .map(|_| char::from(b"0123456789abcdef"[rand::thread_rng().gen_range(0..16)]))
        .collect();
    // SessionId is at most 96 characters: keep the suffix whole.
    let max_user = 96 - 1 - suffix.len();
    let user: String = user.chars().take(max_user).collect();
    format!("{user}-{suffix}")
}

fn stream_url(state: &AppState, session_id: &str) -> String {
    format!(
        "{}/v1/data-channel/{session_id}?role=publish_subscribe",
        state.config.websocket_base()
    )
}

fn required<'a>(v: &'a Option<String>, member: &str) -> Result<&'a str, ApiError> {
    v.as_deref().ok_or_else(|| {
        ApiError::validation(format!(
            "1 validation error detected: Value null at '{member}' failed to satisfy constraint: Member must not be null"
        ))
    })
}

/// Writes the audit record of a session refused after policy allowed the call: a concurrency
/// limit reached, or the recording store down under FailClosed. Decision `Deny` on the session
/// action (`ssm:StartSession` on the target, `ssm:ResumeSession` on the session), so the
/// refusal is on the trail next to the call's `Allow` and becomes `session.denied` exactly as
/// a policy refusal does (`events::cloud::is_denial`), written with its record in one
/// transaction. Without the record the call fails as any unaudited decision does.
async fn audit_refusal(
    state: &AppState,
    caller: &Caller,
    action: &str,
    resource: String,
    target: &str,
    refusal: &ApiError,
) -> Result<(), ApiError> {
    let event = crate::store::audit::AuditEvent {
        event: "api".into(),
        principal: caller.principal.arn.clone(),
        source_ip: caller.source_ip.to_string(),
        action: action.to_owned(),
        resource,
        decision: "Deny".into(),
        statement: format!("{}: {}", refusal.code, refusal.message),
        request_id: caller.request_id.clone(),
        user_agent: caller.user_agent.clone(),
        detail: json!({ "Target": target, "Refusal": refusal.code }).to_string(),
    };
    crate::authz::record_for(state, caller, &event).await
}

/// Records a new session under the concurrency limits in force (`max_sessions_per_user`,
/// `max_sessions_per_target`), refusing with `ResourceLimitExceededException` (SSM's code
/// for a quota reached) naming the limit and how many sessions are open. The check and the
/// insert are one statement, and starts are serialised while a limit is set, so two starts
/// cannot both take the last place. A refusal is audited as a denial ([`audit_refusal`]).
async fn create_within_limits(
    state: &AppState,
    caller: &Caller,
    session: &Session,
) -> Result<(), ApiError> {
    let prefs = state.preferences.get();
    let (per_user, per_target) = (prefs.max_sessions_per_user, prefs.max_sessions_per_target);
    if per_user.is_none() && per_target.is_none() {
        state.store.create_session(session).await?;
        return Ok(());
    }
    let _one_at_a_time = state.live.start_lock.lock().await;
    let hit = state
        .store
        .create_session_within(session, per_user, per_target)
        .await?;
    let message = match hit {
        None => return Ok(()),
        Some(LimitHit::PerUser { max, open }) => format!(
            "Session limit reached: max_sessions_per_user is {max} and {} has {open} open sessions. End one (airlock sessions terminate) and try again.",
            caller.user.name
        ),
        Some(LimitHit::PerTarget { max, open }) => format!(
            "Session limit reached: max_sessions_per_target is {max} and {} has {open} open sessions. Try again when one ends.",
            session.target
        ),
    };
    let refusal = ApiError::client("ResourceLimitExceededException", message);
    audit_refusal(
        state,
        caller,
        "ssm:StartSession",
        instance_arn(state, &session.target),
        &session.target,
        &refusal,
    )
    .await?;
    Err(refusal)
}

/// StartSession: checks the target, records the session, asks the agent to open its side and
/// hands the client its single-use token.
pub async fn start(
    state: &Arc<AppState>,
    caller: &Caller,
    input: StartSessionInput,
) -> Result<Value, ApiError> {
    let target = required(&input.target, "target")?;
    if target.is_empty() || target.len() > 400 {
        return Err(invalid(
            target,
            "target",
            "Member must have length between 1 and 400",
        ));
    }
    let document = input
        .document_name
        .as_deref()
        .unwrap_or(DEFAULT_SHELL_DOCUMENT);
    // Refused before anything else is looked at: what is authorised below is exactly the
    // document that runs (issue 9: `x/AWS-StartSSHSession` once evaded a Deny on the SSH one).
    let doc_name = document_name(state, document)?;
    if let Some(r) = &input.reason {
        if r.is_empty() || r.chars().count() > 256 {
            return Err(invalid(
                r,
                "reason",
                "Member must have length between 1 and 256",
            ));
        }
    }
    // policy-and-api.md §3.3: the target always; the document only when named explicitly,
    // and ssm:SessionDocumentAccessCheck tells policies which case this is.
    let target_resource = crate::authz::Resource {
        arn: instance_arn(state, target),
        tags: state.store.instance_tags(target).await?,
    };
    let mut resources = vec![target_resource];
    let check = if input.document_name.is_some() {
        // A stored document's tags feed ssm:resourceTag/* for the document resource.
        let tags = match state.store.document(doc_name).await? {
            Some(d) => d.tags,
            None => Vec::new(),
        };
        resources.push(crate::authz::Resource {
            arn: document_arn(state, doc_name),
            tags,
        });
        "true"
    } else {
        "false"
    };
    crate::authz::authorize(
        state,
        caller,
        "ssm:StartSession",
        &resources,
        &[(
            airlock_policy::keys::SESSION_DOCUMENT_ACCESS_CHECK,
            vec![check.to_owned()],
        )],
    )
    .await?;
    // The document that runs is the one authorised: a built-in or the default version of a
    // stored one, parameters validated and interpolated, the preferences as its inputs.
    let (document_content, document_version) =
        super::documents::resolve(state, doc_name, &input.parameters).await?;
    let instance = state.store.instance(target).await?;
    let registered = instance
        .as_ref()
        .is_some_and(|i| i.deregistered_at.is_none());
    let conn = state.hub.agent(target).filter(|_| registered);
    let Some(conn) = conn else {
        return Err(ApiError::client(
            "TargetNotConnected",
            format!("{target} is not connected."),
        ));
    };

    let session_id = new_session_id(&caller.user.name);
    let session_type = document_content
        .get("sessionType")
        .and_then(|t| t.as_str())
        .unwrap_or("Standard_Stream")
        .to_owned();
    // Temporary credentials end the session when they expire (revocation.rs).
    let credential_expires_at = match caller.principal.temporary {
        Some(_) => state
            .store
            .credential_state(&caller.access_key_id)
            .await?
            .and_then(|c| c.expires_at),
        None => None,
    };
    let session = Session {
        session_id: session_id.clone(),
        target: target.to_owned(),
        document_name: doc_name.to_owned(),
        owner: caller.arn.clone(),
        reason: input.reason.clone().unwrap_or_default(),
        status: "Connecting".to_owned(),
        parameters: serde_json::to_string(&input.parameters).unwrap_or_else(|_| "{}".into()),
        start_date: now_ms(),
        end_date: None,
        exit_code: None,
        end_reason: String::new(),
        owner_user_id: caller.user.user_id.clone(),
        run_as: run_as_user(&state.preferences.get(), caller.principal.run_as_tag()),
        end_kind: String::new(),
        end_detail: String::new(),
        session_type: session_type.clone(),
        max_session_duration: state.preferences.get().max_session_duration_minutes,
        access: SessionAccess {
            access_key_id: caller.access_key_id.clone(),
            credential_expires_at,
            token_issued_at: caller.principal.temporary.map(|t| t.issued_at),
            mfa: caller.principal.temporary.is_some_and(|t| t.mfa),
            source_ip: caller.source_ip.to_string(),
            secure_transport: caller.secure,
            document_access_check: input.document_name.is_some(),
        },
    };
    // Recorded sessions: under FailClosed, refused while the recording store is down.
    let recording = state
        .recordings
        .plan(&state.preferences.get(), &session_type);
    if let Some(plan) = &recording {
        if let Err(refusal) = state.recordings.admit(plan).await {
            audit_refusal(
                state,
                caller,
                "ssm:StartSession",
                instance_arn(state, target),
                target,
                &refusal,
            )
            .await?;
            return Err(refusal);
        }
    }
    create_within_limits(state, caller, &session).await?;
    state
        .live
        .add(&session_id, &session_type, credential_expires_at);
    if let Some(plan) = recording {
        let policy = plan.policy;
        if let Err(e) = state.recordings.begin(state, &session, plan).await {
            tracing::error!(session_id, "recording could not start: {e}");
            if policy == crate::preferences::FailurePolicy::FailClosed {
                crate::sessions::end(
                    state,
                    &session_id,
                    crate::sessions::End {
                        reason: EndReason::RecordingFailed(e.to_string()),
                        notify_agent: false,
                    },
                )
                .await;
                return Err(ApiError::internal(format!(
                    "recording could not start: {e}"
                )));
            }
        }
    }
    // The session's start is on the record before anything runs; without it, nothing does.
    let started = crate::store::audit::AuditEvent {
        event: "session-start".into(),
        principal: caller.arn.clone(),
        source_ip: caller.source_ip.to_string(),
        action: "ssm:StartSession".into(),
        resource: session_arn(state, &session_id),
        decision: "Started".into(),
        statement: String::new(),
        request_id: caller.request_id.clone(),
        user_agent: caller.user_agent.clone(),
        detail: json!({ "Target": target, "DocumentName": doc_name, "DocumentVersion": document_version, "RunAs": session.run_as })
            .to_string(),
    };
    if let Err(e) = state.store.append_audit(&started).await {
        crate::sessions::end(
            state,
            &session_id,
            crate::sessions::End {
                reason: EndReason::ServerError(
                    "the session's audit record could not be written".into(),
                ),
                notify_agent: false,
            },
        )
        .await;
        return Err(ApiError::internal(format!(
            "audit record could not be written: {e}"
        )));
    }

    let ttl = state.config.token_ttl;
    let agent_token = state.hub.issue_token(&session_id, Side::Agent, ttl);
    let task = AgentTaskPayload {
        session_id: session_id.clone(),
        document_name: doc_name.to_owned(),
        // The SSMSessionRunAs tag or runAsDefaultUser (run_as_user); the agent fails closed
        // if that user is missing and never runs a session as root.
        run_as_user: session.run_as.clone(),
        session_owner: caller.arn.clone(),
        parameters: json!(input.parameters),
        document_content,
        data_channel_token: Some(agent_token),
        data_channel_url: Some(format!(
            "/v1/data-channel/{session_id}?role=publish_subscribe"
        )),
    };
    if !send_task(&conn, &task, "interactive_shell") {
        crate::sessions::end(
            state,
            &session_id,
            crate::sessions::End {
                reason: EndReason::AgentGone("the agent could not be reached".into()),
                notify_agent: false,
            },
        )
        .await;
        return Err(ApiError::client(
            "TargetNotConnected",
            format!("{target} is not connected."),
        ));
    }
    let client_token = state.hub.issue_token(&session_id, Side::Client, ttl);
    watch_agent_side(state.clone(), session_id.clone(), ttl);
    Ok(json!({
        "SessionId": session_id,
        "TokenValue": client_token,
        "StreamUrl": stream_url(state, &session_id),
    }))
}

async fn owned_session(
    state: &AppState,
    caller: &Caller,
    input: &SessionIdInput,
    action: &str,
) -> Result<(String, Option<Session>), ApiError> {
    let id = required(&input.session_id, "sessionId")?;
    if id.is_empty() || id.len() > 96 {
        return Err(invalid(
            id,
            "sessionId",
            "Member must have length between 1 and 96",
        ));
    }
    let resource = session_resource(state, id).await?;
    crate::authz::authorize(state, caller, action, &[resource], &[]).await?;
    Ok((id.to_owned(), state.store.session(id).await?))
}

/// ResumeSession: a new client token for a session that has not ended.
pub async fn resume(
    state: &Arc<AppState>,
    caller: &Caller,
    input: SessionIdInput,
) -> Result<Value, ApiError> {
    let (id, session) = owned_session(state, caller, &input, "ssm:ResumeSession").await?;
    // A policy like `session/${aws:username}-*` matches other people's sessions whose ids
    // merely start with the caller's name (`bob` and `bob-ops-…`): resuming hands over a live
    // shell, so only the session's own owner (the same user, by id) may do it.
    if let Some(s) = &session {
        if s.owner_user_id != caller.user.user_id {
            let refused = crate::store::audit::AuditEvent {
                event: "api".into(),
                principal: caller.arn.clone(),
                source_ip: caller.source_ip.to_string(),
                action: "ssm:ResumeSession".into(),
                resource: session_arn(state, &id),
                decision: "Deny".into(),
                statement: format!("not the session's owner ({})", s.owner),
                request_id: caller.request_id.clone(),
                user_agent: caller.user_agent.clone(),
                detail: String::new(),
            };
            state.store.append_audit(&refused).await?;
            return Err(ApiError::client(
                "AccessDeniedException",
                format!(
                    "User: {} is not authorized to perform: ssm:ResumeSession on resource: {}: only the session's owner may resume it",
                    caller.arn,
                    session_arn(state, &id)
                ),
            ));
        }
    }
    let live = session
        .as_ref()
        .is_some_and(|s| s.status != "Terminated" && s.status != "Failed");
    if !live || state.hub.existing_relay(&id).is_none() {
        return Err(ApiError::client(
            "DoesNotExistException",
            format!("Session {id} does not exist or has ended."),
        ));
    }
    // A recorded session under FailClosed is taken up again only while its store can be
    // written, as a new one is started only then. The refusal ends nothing: the session waits,
    // Disconnected, and is resumed once the store is back.
    if let Some(plan) = state.recordings.plan_of(&id) {
        if let Err(refusal) = state.recordings.admit(&plan).await {
            let target = session.as_ref().map(|s| s.target.as_str()).unwrap_or("");
            audit_refusal(
                state,
                caller,
                "ssm:ResumeSession",
                session_arn(state, &id),
                target,
                &refusal,
            )
            .await?;
            return Err(refusal);
        }
    }
    let token = state
        .hub
        .issue_token(&id, Side::Client, state.config.token_ttl);
    if let Some(s) = &session {
        let resumed = crate::events::CloudEvent::new(
            state.events.source(),
            crate::events::cloud::SESSION_RESUMED,
            now_ms(),
            Some(id.clone()),
            json!({
                "SessionId": id,
                "Target": s.target,
                "Owner": s.owner,
                "SourceIp": caller.source_ip.to_string(),
                "RequestId": caller.request_id,
            }),
        );
        // The resume is under way; a store hiccup loses this notification, not the session.
        if let Err(e) = state.store.publish_event(&resumed).await {
            tracing::error!(
                session_id = id,
                "could not enqueue the session.resumed event: {e}"
            );
        }
    }
    Ok(json!({
        "SessionId": id,
        "TokenValue": token,
        "StreamUrl": stream_url(state, &id),
    }))
}

/// TerminateSession: ends the session and closes both ends. Ending an ended or unknown
/// session succeeds, as AWS's does.
pub async fn terminate(
    state: &Arc<AppState>,
    caller: &Caller,
    input: SessionIdInput,
) -> Result<Value, ApiError> {
    let (id, session) = owned_session(state, caller, &input, "ssm:TerminateSession").await?;
    if session.is_some() {
        crate::sessions::end(
            state,
            &id,
            crate::sessions::End {
                reason: EndReason::TerminatedBy(caller.arn.clone()),
                notify_agent: true,
            },
        )
        .await;
    }
    Ok(json!({ "SessionId": id }))
}

fn parse_iso(value: &str) -> Result<i64, ApiError> {
    let t = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            ApiError::client(
                "InvalidFilterKey",
                format!("Invalid date '{value}': expected ISO 8601 such as 2024-08-29T00:00:00Z."),
            )
        })?;
    Ok(i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
}

/// DescribeSessions: Active or History, with filters and paging.
pub async fn describe(
    state: &Arc<AppState>,
    caller: &Caller,
    input: DescribeSessionsInput,
) -> Result<Value, ApiError> {
    let which = required(&input.state, "state")?;
    let history = match which {
        "Active" => false,
        "History" => true,
        other => {
            return Err(invalid(
                other,
                "state",
                "Member must satisfy enum value set: [Active, History]",
            ))
        }
    };
    let limit = input.max_results.unwrap_or(20);
    if !(1..=200).contains(&limit) {
        return Err(invalid(
            &limit.to_string(),
            "maxResults",
            "Member must have value between 1 and 200",
        ));
    }
    if input.filters.len() > 6 {
        return Err(invalid(
            "filters",
            "filters",
            "Member must have length less than or equal to 6",
        ));
    }
    super::authorize(
        state,
        caller,
        "ssm:DescribeSessions",
        &format!(
            "arn:aws:ssm:{}:{}:*",
            state.config.region, state.config.account_id
        ),
    )
    .await?;
    let mut filter = SessionFilter::default();
    for f in &input.filters {
        if f.value.is_empty() || f.value.len() > 400 {
            return Err(invalid(
                &f.value,
                "filters.member.value",
                "Member must have length between 1 and 400",
            ));
        }
        let v = Some(f.value.clone());
        match f.key.as_str() {
            "Target" => filter.target = v,
            "Owner" => filter.owner = v,
            "Status" => filter.status = v,
            "SessionId" => filter.session_id = v,
            "InvokedAfter" => filter.invoked_after = Some(parse_iso(&f.value)?),
            "InvokedBefore" => filter.invoked_before = Some(parse_iso(&f.value)?),
            "AccessType" => {}
            other => {
                return Err(ApiError::client(
                    "InvalidFilterKey",
                    format!("The filter key {other} isn't valid."),
                ))
            }
        }
    }
    let offset = decode_next_token(input.next_token.as_deref())?;
    let mut rows = state
        .store
        .list_sessions(history, &filter, offset, limit + 1)
        .await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    // Show only the sessions the caller may see (e.g. a policy scoped by session tags).
    let mut sessions: Vec<Value> = Vec::new();
    for r in &rows {
        let resource = crate::authz::Resource {
            arn: session_arn(state, &r.session_id),
            tags: vec![
                (
                    "aws:ssmmessages:session-id".to_owned(),
                    r.owner_user_id.clone(),
                ),
                ("aws:ssmmessages:target-id".to_owned(), r.target.clone()),
            ],
        };
        if crate::authz::allowed_quietly(state, caller, "ssm:DescribeSessions", &resource) {
            sessions.push(session_json(r));
        }
    }
    let mut out = json!({ "Sessions": sessions });
    if more {
        out["NextToken"] = json!(encode_next_token(offset + limit));
    }
    Ok(out)
}

/// A session in the SSM `Session` shape (plus `ExitCode`/`Details` that SDKs ignore).
pub fn session_json(s: &Session) -> Value {
    let mut v = json!({
        "SessionId": s.session_id,
        "Target": s.target,
        "Status": s.status,
        "StartDate": timestamp(s.start_date),
        "DocumentName": s.document_name,
        "Owner": s.owner,
        "AccessType": "Standard",
    });
    if !s.reason.is_empty() {
        v["Reason"] = json!(s.reason);
    }
    if let Some(end) = s.end_date {
        v["EndDate"] = timestamp(end);
    }
    if !s.end_reason.is_empty() {
        v["Details"] = json!(s.end_reason);
    }
    if let Some(m) = s.max_session_duration {
        // AWS's shape: a string of minutes.
        v["MaxSessionDuration"] = json!(m.to_string());
    }
    if !s.end_kind.is_empty() {
        v["EndReason"] = json!({ "Kind": s.end_kind, "Detail": s.end_detail });
    }
    if let Some(code) = s.exit_code {
        v["ExitCode"] = json!(code);
    }
    if !s.run_as.is_empty() {
        v["RunAs"] = json!(s.run_as);
    }
    v
}
