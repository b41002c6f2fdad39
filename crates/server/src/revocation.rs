//! Revocation ends live sessions: the access that opened a session is decided again while it
//! lives, and a session whose owner may no longer start it ends with `AccessRevoked`.
//!
//! What is decided is what StartSession decided: `ssm:StartSession` on the target (and on the
//! document when it was named, with `ssm:SessionDocumentAccessCheck`), with the source
//! address, transport and temporary-credential facts StartSession saw (kept in the session's
//! row), by the owner's policies, boundary and tags as they are now. The credential that signed
//! StartSession must still exist, be active and not have expired; the owner must still exist.
//!
//! When: right after any API call that can change access succeeds (a [`nudge`]: users, keys,
//! groups, policies, boundaries, tags, grants, instance tags), and on a sweep every half
//! second that looks for what expires by itself — temporary credentials of live sessions
//! (in memory) and grants (one indexed query) — plus a full re-decision once a "minute" for
//! policies conditioned on time. Each re-decision reads the open sessions once and each owner's
//! policies once. Ends are written to the audit trail with the change that caused them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::authz::{Principal, Resource, Temporary};
use crate::end_reason::EndReason;
use crate::state::AppState;
use crate::store::{now_ms, Session};

/// How often expiries are looked for.
const SWEEP: Duration = Duration::from_millis(500);

/// Whether a successful API call may have taken access away from someone.
pub fn may_revoke(target: &str) -> bool {
    let (prefix, op) = target.split_once('.').unwrap_or(("", target));
    match prefix {
        "Airlock" => {
            op != "SetPassword"
                && !["List", "Get", "Describe", "Simulate", "Verify"]
                    .iter()
                    .any(|p| op.starts_with(p))
        }
        "AmazonSSM" => matches!(op, "AddTagsToResource" | "RemoveTagsFromResource"),
        _ => false,
    }
}

/// Asks for the open sessions to be re-decided now, because of `cause` (an operation name).
pub fn nudge(state: &AppState, cause: &str) {
    {
        let mut causes = state
            .live
            .revoke_causes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if causes.len() < 8 && !causes.iter().any(|c| c == cause) {
            causes.push(cause.to_owned());
        }
    }
    state.live.revoke.notify_one();
}

/// Starts the revocation task; it stops with the server.
pub fn spawn(state: Arc<AppState>) {
    let tracker = state.tasks.clone();
    tracker.spawn(async move {
        let full_every = state.config.minute.max(Duration::from_secs(1));
        let mut grants_checked = now_ms();
        let mut last_full = Instant::now();
        loop {
            let nudged = tokio::select! {
                _ = state.live.revoke.notified() => true,
                _ = tokio::time::sleep(SWEEP) => false,
                _ = state.shutdown.cancelled() => return,
            };
            let mut causes: Vec<String> = std::mem::take(
                &mut *state
                    .live
                    .revoke_causes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            )
            .into_iter()
            .map(|op| format!("IAM change: {op}"))
            .collect();
            let now = now_ms();
            if state.live.is_empty() {
                grants_checked = now;
                continue;
            }
            if !nudged {
                match state.store.grant_expired_between(grants_checked, now).await {
                    Ok(true) => causes.push("a grant expired".to_owned()),
                    Ok(false) => {}
                    Err(e) => tracing::warn!("revocation: grants not checked: {e}"),
                }
                grants_checked = now;
                if state.live.credential_expired(now) {
                    causes.push("temporary credentials expired".to_owned());
                }
                if causes.is_empty() && last_full.elapsed() >= full_every {
                    causes.push("periodic re-evaluation".to_owned());
                }
            }
            if causes.is_empty() {
                continue;
            }
            last_full = Instant::now();
            if let Err(e) = sweep(&state, &causes).await {
                tracing::error!("revocation sweep failed: {e}");
            }
        }
    });
}

/// What changed, for an end reason: the causes this sweep was started for, and those queued
/// since (a change whose effect this sweep read may have been nudged after it started).
fn causes_now(state: &AppState, taken: &[String]) -> String {
    let mut all = taken.to_vec();
    let queued = state
        .live
        .revoke_causes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for q in queued {
        let q = format!("IAM change: {q}");
        if !all.contains(&q) {
            all.push(q);
        }
    }
    all.join("; ")
}

/// Re-decides every open session now; ends those whose owner may no longer start them.
/// `causes` says why (IAM changes, expiries). Returns how many it ended.
pub async fn sweep(
    state: &Arc<AppState>,
    causes: &[String],
) -> Result<usize, crate::api::ApiError> {
    let sessions = state.store.open_sessions().await?;
    let mut owners: HashMap<String, Option<Principal>> = HashMap::new();
    let mut targets: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut ended = 0;
    for s in sessions {
        let Some(why) = revoked(state, &s, causes, &mut owners, &mut targets).await? else {
            continue;
        };
        tracing::warn!(session_id = s.session_id, "access revoked: {why}");
        if crate::sessions::end(
            state,
            &s.session_id,
            crate::sessions::End {
                reason: EndReason::AccessRevoked(why),
                notify_agent: true,
            },
        )
        .await
        {
            ended += 1;
        }
    }
    Ok(ended)
}

/// Why the owner of `s` may no longer have it, or `None` while they may.
async fn revoked(
    state: &AppState,
    s: &Session,
    causes: &[String],
    owners: &mut HashMap<String, Option<Principal>>,
    targets: &mut HashMap<String, Vec<(String, String)>>,
) -> Result<Option<String>, crate::api::ApiError> {
    let who = s.owner.rsplit('/').next().unwrap_or(&s.owner).to_owned();
    if !owners.contains_key(&s.owner_user_id) {
        let principal = match state.store.user_by_id(&s.owner_user_id).await? {
            Some(user) => Some(
                crate::authz::load_principal(
                    &state.store,
                    &state.policies,
                    &state.config.account_id,
                    user,
                    None,
                )
                .await?,
            ),
            None => None,
        };
        owners.insert(s.owner_user_id.clone(), principal);
    }
    let Some(Some(principal)) = owners.get(&s.owner_user_id) else {
        return Ok(Some(format!("user {who} was deleted")));
    };
    let a = &s.access;
    if !a.access_key_id.is_empty() {
        let id = &a.access_key_id;
        let temporary = a.credential_expires_at.is_some();
        match state.store.credential_state(id).await? {
            Some(c) if c.user_id != s.owner_user_id => {
                return Ok(Some(format!("access key {id} was deleted")))
            }
            None if temporary => {
                return Ok(Some(format!("temporary credentials {id} were revoked")))
            }
            None => return Ok(Some(format!("access key {id} was deleted"))),
            Some(c) if !c.active => return Ok(Some(format!("access key {id} was disabled"))),
            Some(c) if c.expires_at.is_some_and(|e| e <= now_ms()) => {
                return Ok(Some(format!("temporary credentials {id} expired")))
            }
            Some(_) => {}
        }
    }
    let mut principal = principal.clone();
    principal.temporary = a.token_issued_at.map(|issued_at| Temporary {
        issued_at,
        mfa: a.mfa,
    });
    if !targets.contains_key(&s.target) {
        let tags = state.store.instance_tags(&s.target).await?;
        targets.insert(s.target.clone(), tags);
    }
    let mut resources = vec![Resource {
        arn: format!(
            "arn:aws:ssm:{}:{}:managed-instance/{}",
            state.config.region, state.config.account_id, s.target
        ),
        tags: targets.get(&s.target).cloned().unwrap_or_default(),
    }];
    if a.document_access_check {
        // With the stored document's tags, as StartSession authorised it
        // (`ssm:resourceTag/…` on a document would otherwise revoke what it allowed).
        let tags = match state.store.document(&s.document_name).await? {
            Some(d) => d.tags,
            None => Vec::new(),
        };
        resources.push(Resource {
            arn: crate::api::sessions::document_arn(state, &s.document_name),
            tags,
        });
    }
    let check = if a.document_access_check {
        "true"
    } else {
        "false"
    };
    let source_ip = if a.source_ip.is_empty() {
        "0.0.0.0"
    } else {
        a.source_ip.as_str()
    };
    for r in &resources {
        let mut ctx = crate::authz::context(
            state,
            &principal,
            source_ip,
            a.secure_transport,
            "ssm:StartSession",
            r,
        );
        ctx.set_values(
            airlock_policy::keys::SESSION_DOCUMENT_ACCESS_CHECK,
            vec![check.to_owned()],
        );
        let d = crate::authz::decide(&principal, &ctx);
        if !d.is_allowed() {
            return Ok(Some(format!(
                "{}: {who} may no longer ssm:StartSession on {}: {}",
                causes_now(state, causes),
                r.arn,
                d.explain()
            )));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    #[test]
    fn which_calls_may_revoke() {
        for op in [
            "Airlock.DeleteUser",
            "Airlock.UpdateAccessKey",
            "Airlock.DetachUserPolicy",
            "Airlock.Apply",
            "Airlock.DeleteGrant",
            "AmazonSSM.RemoveTagsFromResource",
        ] {
            assert!(super::may_revoke(op), "{op}");
        }
        for op in [
            "Airlock.ListUsers",
            "Airlock.GetSessionToken",
            "Airlock.SetPassword",
            "AmazonSSM.StartSession",
            "AmazonSSM.DescribeSessions",
        ] {
            assert!(!super::may_revoke(op), "{op}");
        }
    }
}
