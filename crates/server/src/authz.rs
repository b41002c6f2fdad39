//! Authorisation: every API call and data-channel open is decided by the policy engine with
//! the action, the resource ARN and the context keys of policy-and-api.md §3.1–3.4, and the
//! decision (with the statement that made it) is written to the audit trail before the request
//! acts. A request whose audit record cannot be written fails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use airlock_policy::{evaluate, keys, Decision, NamedPolicy, Policy, RequestContext};

use crate::api::{ApiError, Caller};
use crate::state::AppState;
use crate::store::audit::AuditEvent;
use crate::store::iam::NamedDocument;
use crate::store::{Store, User};

/// Temporary-credential facts that feed `aws:MultiFactorAuthPresent` / `aws:TokenIssueTime`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Temporary {
    /// Issue time, epoch ms.
    pub issued_at: i64,
    /// Whether MFA was presented.
    pub mfa: bool,
}

/// Everything the engine needs about a principal, loaded once per request so that a grant
/// that expires, a policy detached or a key disabled takes effect on the next request.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The user.
    pub user: User,
    /// Its ARN.
    pub arn: String,
    /// Principal tags.
    pub tags: Vec<(String, String)>,
    /// Identity policies in force.
    pub identity: Vec<(String, Arc<Policy>)>,
    /// Permissions boundary.
    pub boundary: Option<(String, Arc<Policy>)>,
    /// Set for temporary credentials.
    pub temporary: Option<Temporary>,
}

impl Principal {
    /// The `SSMSessionRunAs` principal tag (key case-insensitive), when set.
    pub fn run_as_tag(&self) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("SSMSessionRunAs"))
            .map(|(_, v)| v.as_str())
    }
}

/// Parsed policies by document text, so a request does not re-parse what did not change.
#[derive(Debug, Default)]
pub struct PolicyCache(Mutex<HashMap<String, Arc<Policy>>>);

impl PolicyCache {
    /// The parsed form of a stored document, `None` when it does not parse. Stored documents
    /// were validated on the way in; callers treat one that no longer parses as denying
    /// everything (see [`load_principal`]): skipping it would silently drop its Deny statements.
    pub fn get(&self, doc: &NamedDocument) -> Option<Arc<Policy>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = map.get(&doc.document) {
            return Some(p.clone());
        }
        match Policy::parse(&doc.document) {
            Ok(p) => {
                if map.len() > 10_000 {
                    map.clear();
                }
                let p = Arc::new(p);
                map.insert(doc.document.clone(), p.clone());
                Some(p)
            }
            Err(e) => {
                tracing::error!(
                    policy = doc.name,
                    "stored policy does not parse: it denies everything until it is fixed: {e}"
                );
                None
            }
        }
    }
}

/// Loads a user's policies, boundary and tags.
pub async fn load_principal(
    store: &Store,
    cache: &PolicyCache,
    account: &str,
    user: User,
    temporary: Option<Temporary>,
) -> Result<Principal, ApiError> {
    let docs = store.effective_policies(&user.user_id).await?;
    // Fail closed: a stored policy that no longer parses may have held Deny statements, so it
    // counts as a Deny of everything rather than being left out.
    let identity = docs
        .iter()
        .map(|d| match cache.get(d) {
            Some(p) => (d.name.clone(), p),
            None => (
                format!("{} (does not parse: denies all)", d.name),
                Arc::new(deny_all()),
            ),
        })
        .collect();
    let boundary = match store.boundary(&user.user_id).await? {
        Some(d) => Some((
            d.name.clone(),
            cache.get(&d).unwrap_or_else(|| Arc::new(deny_all())),
        )),
        None => None,
    };
    let tags = store.user_tags(&user.user_id).await?;
    Ok(Principal {
        arn: crate::auth::user_arn(account, &user.name),
        user,
        tags,
        identity,
        boundary,
        temporary,
    })
}

fn deny_all() -> Policy {
    // A stored policy or boundary that does not parse any more must not widen access.
    Policy::parse(
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"*","Resource":"*"}]}"#,
    )
    .unwrap_or_else(|_| unreachable_policy())
}

#[allow(clippy::panic)]
fn unreachable_policy() -> Policy {
    panic!("the built-in deny-all policy parses")
}

/// A resource and the tags that feed `ssm:resourceTag/*` and `aws:ResourceTag/*`.
#[derive(Clone, Debug, Default)]
pub struct Resource {
    /// ARN.
    pub arn: String,
    /// Tags of the resource.
    pub tags: Vec<(String, String)>,
}

impl Resource {
    /// A resource without tags.
    pub fn new(arn: impl Into<String>) -> Self {
        Resource {
            arn: arn.into(),
            tags: Vec::new(),
        }
    }
}

/// The request context for one resource: identity, time, network and resource keys.
pub fn context(
    state: &AppState,
    principal: &Principal,
    source_ip: &str,
    secure: bool,
    action: &str,
    resource: &Resource,
) -> RequestContext {
    let now = time::OffsetDateTime::now_utc();
    let mut ctx = RequestContext::new(action, resource.arn.clone())
        .with(keys::USERNAME, principal.user.name.clone())
        .with(keys::USERID, principal.user.user_id.clone())
        .with(keys::PRINCIPAL_ARN, principal.arn.clone())
        .with(keys::PRINCIPAL_ACCOUNT, state.config.account_id.clone())
        .with(keys::PRINCIPAL_TYPE, "User")
        .with(keys::REQUESTED_REGION, state.config.region.clone())
        .with(
            keys::CURRENT_TIME,
            now.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        )
        .with(keys::EPOCH_TIME, now.unix_timestamp().to_string())
        .with(keys::SOURCE_IP, source_ip.to_owned())
        .with(keys::SECURE_TRANSPORT, secure.to_string());
    for (k, v) in &principal.tags {
        ctx.insert(&format!("{}{k}", keys::PRINCIPAL_TAG_PREFIX), v.clone());
    }
    if let Some(t) = principal.temporary {
        ctx.insert(keys::MULTI_FACTOR_AUTH_PRESENT, t.mfa.to_string());
        if let Ok(issued) = time::OffsetDateTime::from_unix_timestamp(t.issued_at / 1000) {
            ctx.insert(
                keys::TOKEN_ISSUE_TIME,
                issued
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            );
            if t.mfa {
                ctx.insert(
                    keys::MULTI_FACTOR_AUTH_AGE,
                    (now - issued).whole_seconds().max(0).to_string(),
                );
            }
        }
    }
    for (k, v) in &resource.tags {
        ctx.insert(&format!("{}{k}", keys::SSM_RESOURCE_TAG_PREFIX), v.clone());
        ctx.insert(&format!("{}{k}", keys::RESOURCE_TAG_PREFIX), v.clone());
    }
    ctx
}

/// Evaluates one request context for a principal.
pub fn decide(principal: &Principal, ctx: &RequestContext) -> Decision {
    let identity: Vec<NamedPolicy> = principal
        .identity
        .iter()
        .map(|(n, p)| NamedPolicy { name: n, policy: p })
        .collect();
    let boundary_set: Option<Vec<NamedPolicy>> = principal
        .boundary
        .as_ref()
        .map(|(n, p)| vec![NamedPolicy { name: n, policy: p }]);
    evaluate(&identity, boundary_set.as_deref(), ctx)
}

/// AWS's denial message.
pub fn denied_message(principal_arn: &str, action: &str, resource: &str, d: &Decision) -> String {
    let why = d
        .aws_reason(action)
        .unwrap_or_else(|| format!(" because no identity-based policy allows the {action} action"));
    format!(
        "User: {principal_arn} is not authorized to perform: {action} on resource: {resource}{why}"
    )
}

/// Writes the audit record of a call's decision and marks the call audited, so the dispatcher
/// does not write a second one. Without the record the call fails: nothing is decided off it.
pub async fn record_for(
    state: &AppState,
    caller: &Caller,
    event: &AuditEvent,
) -> Result<(), ApiError> {
    state
        .store
        .append_audit(event)
        .await
        .map_err(|e| ApiError::internal(format!("audit record could not be written: {e}")))?;
    caller
        .audited
        .store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Decides `action` on every resource (all must allow), writes the audit record, and returns
/// `AccessDeniedException` on denial. `extra` adds request-specific context keys.
pub async fn authorize(
    state: &AppState,
    caller: &Caller,
    action: &str,
    resources: &[Resource],
    extra: &[(&str, Vec<String>)],
) -> Result<(), ApiError> {
    let mut deciding = Vec::new();
    let mut denied: Option<(String, Decision)> = None;
    for r in resources {
        let mut ctx = context(
            state,
            &caller.principal,
            &caller.source_ip.to_string(),
            caller.secure,
            action,
            r,
        );
        for (k, v) in extra {
            ctx.set_values(k, v.clone());
        }
        let d = decide(&caller.principal, &ctx);
        deciding.push(d.explain());
        if !d.is_allowed() {
            denied = Some((r.arn.clone(), d));
            break;
        }
    }
    let resource = resources
        .iter()
        .map(|r| r.arn.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let event = AuditEvent {
        event: "api".into(),
        principal: caller.principal.arn.clone(),
        source_ip: caller.source_ip.to_string(),
        action: action.to_owned(),
        resource,
        decision: if denied.is_some() {
            "Deny".into()
        } else {
            "Allow".into()
        },
        statement: deciding.join("; "),
        request_id: caller.request_id.clone(),
        user_agent: caller.user_agent.clone(),
        detail: String::new(),
    };
    record_for(state, caller, &event).await?;
    match denied {
        None => Ok(()),
        Some((arn, d)) => Err(ApiError::client(
            "AccessDeniedException",
            denied_message(&caller.principal.arn, action, &arn, &d),
        )),
    }
}

/// Whether `action` on `resource` would be allowed, without an audit record (used to filter
/// what Describe* calls show, after the call itself was authorised and audited).
pub fn allowed_quietly(
    state: &AppState,
    caller: &Caller,
    action: &str,
    resource: &Resource,
) -> bool {
    let ctx = context(
        state,
        &caller.principal,
        &caller.source_ip.to_string(),
        caller.secure,
        action,
        resource,
    );
    decide(&caller.principal, &ctx).is_allowed()
}
