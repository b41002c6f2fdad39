//! Identity and access administration (`Airlock.<Op>`): groups, managed and inline policies,
//! attachments, principal tags, permissions boundaries, time-bound grants, temporary
//! credentials, policy simulation, the declarative `Apply`, and the audit trail. Each operation
//! is authorised like any other call (IAM action names where IAM has one).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use airlock_policy::{Policy, RequestContext};

use super::{authorize, parse, timestamp, ApiError, Caller};
use crate::state::AppState;
use crate::store::{now_ms, StoreError, User};

fn user_arn(state: &AppState, name: &str) -> String {
    crate::auth::user_arn(&state.config.account_id, name)
}

fn group_arn(state: &AppState, name: &str) -> String {
    format!("arn:aws:iam::{}:group/{name}", state.config.account_id)
}

/// The managed policy `admin` users get; built in, never rewritten or deleted.
pub const BUILT_IN_ADMIN_POLICY: &str = "AdministratorAccess";

fn policy_arn(state: &AppState, name: &str) -> String {
    format!("arn:aws:iam::{}:policy/{name}", state.config.account_id)
}

/// The policy name and validated document text of a CreatePolicy or UpdatePolicy.
fn named_document(i: &Input) -> Result<(&str, String), ApiError> {
    let name = req(&i.policy_name, "policyName")?;
    valid_name(name, "policyName")?;
    let doc = document_text(
        i.policy_document
            .as_ref()
            .ok_or_else(|| ApiError::validation("PolicyDocument is required."))?,
    )?;
    validate_policy(&doc)?;
    Ok((name, doc))
}

/// Authorises attaching or detaching a managed policy, with `iam:PolicyARN` in the context as
/// AWS gives it, so a policy can say which policies a delegate may hand out.
async fn authorize_attach(
    state: &AppState,
    caller: &Caller,
    op: &str,
    principal_arn: &str,
    policy: &str,
) -> Result<(), ApiError> {
    crate::authz::authorize(
        state,
        caller,
        &format!("iam:{op}"),
        &[crate::authz::Resource::new(principal_arn)],
        &[("iam:PolicyARN", vec![policy_arn(state, policy)])],
    )
    .await
}

fn valid_name(name: &str, member: &str) -> Result<(), ApiError> {
    let ok = (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(super::invalid(
            name,
            member,
            "Member must satisfy regular expression pattern: [\\w+=,.@-]{1,128}",
        ))
    }
}

/// Validates a policy document, with the engine's pointed error on failure.
pub fn validate_policy(doc: &str) -> Result<Policy, ApiError> {
    if doc.len() > 10_240 {
        return Err(ApiError::client(
            "LimitExceeded",
            "A policy document is at most 10,240 characters.",
        ));
    }
    Policy::parse(doc).map_err(|e| {
        ApiError::client(
            "MalformedPolicyDocument",
            format!("The policy is invalid: {e}"),
        )
    })
}

/// Accepts a document given as a JSON string or as an inline JSON object.
fn document_text(v: &Value) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Object(_) => Ok(v.to_string()),
        _ => Err(ApiError::serialization(
            "PolicyDocument must be a JSON string or object.",
        )),
    }
}

async fn find_user(state: &AppState, name: &str) -> Result<User, ApiError> {
    valid_name(name, "userName")?;
    state.store.user_by_name(name).await?.ok_or_else(|| {
        ApiError::client(
            "NoSuchEntity",
            format!("The user with name {name} cannot be found."),
        )
    })
}

async fn find_group(state: &AppState, name: &str) -> Result<crate::store::iam::Group, ApiError> {
    valid_name(name, "groupName")?;
    state.store.group_by_name(name).await?.ok_or_else(|| {
        ApiError::client(
            "NoSuchEntity",
            format!("The group with name {name} cannot be found."),
        )
    })
}

fn not_found(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(what) => {
            ApiError::client("NoSuchEntity", format!("{what} cannot be found."))
        }
        StoreError::AlreadyExists(what) => {
            ApiError::client("EntityAlreadyExists", format!("{what} already exists."))
        }
        other => other.into(),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Input {
    user_name: Option<String>,
    group_name: Option<String>,
    policy_name: Option<String>,
    policy_document: Option<Value>,
    description: Option<String>,
    tags: Option<Vec<TagInput>>,
    tag_keys: Option<Vec<String>>,
    access_key_id: Option<String>,
    status: Option<String>,
    password: Option<String>,
    expires_at: Option<f64>,
    duration_seconds: Option<i64>,
    reason: Option<String>,
    grant_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagInput {
    key: String,
    #[serde(default)]
    value: String,
}

fn req<'a>(v: &'a Option<String>, member: &str) -> Result<&'a str, ApiError> {
    v.as_deref().ok_or_else(|| {
        ApiError::validation(format!(
            "1 validation error detected: Value null at '{member}' failed to satisfy constraint: Member must not be null"
        ))
    })
}

/// Routes one IAM-style operation; `None` when `op` is not one of them.
pub async fn dispatch(
    state: &Arc<AppState>,
    caller: &Caller,
    op: &str,
    input: Value,
) -> Option<Result<Value, ApiError>> {
    let result = match op {
        "SimulatePolicy" => simulate(state, caller, input).await,
        "Apply" => apply(state, caller, input).await,
        "ListAuditEvents" => list_audit(state, caller, input).await,
        "VerifyAudit" => match authorize(state, caller, "airlock:VerifyAudit", "*").await {
            Ok(()) => state
                .audit_checkpoint
                .verify()
                .await
                .map_err(ApiError::from)
                .map(|v| json!(v)),
            Err(e) => Err(e),
        },
        _ => match parse::<Input>(input) {
            Ok(i) => simple(state, caller, op, i).await?,
            Err(e) => Err(e),
        },
    };
    Some(result)
}

async fn simple(
    state: &Arc<AppState>,
    caller: &Caller,
    op: &str,
    i: Input,
) -> Option<Result<Value, ApiError>> {
    let r = async {
        match op {
            "CreateGroup" => {
                let name = req(&i.group_name, "groupName")?;
                valid_name(name, "groupName")?;
                authorize(state, caller, "iam:CreateGroup", &group_arn(state, name)).await?;
                let g = state.store.create_group(name).await.map_err(not_found)?;
                Ok(json!({ "Group": { "GroupName": g.name, "GroupId": g.group_id, "Arn": group_arn(state, &g.name) } }))
            }
            "DeleteGroup" => {
                let name = req(&i.group_name, "groupName")?;
                authorize(state, caller, "iam:DeleteGroup", &group_arn(state, name)).await?;
                if !state.store.delete_group(name).await? {
                    return Err(ApiError::client("NoSuchEntity", format!("The group with name {name} cannot be found.")));
                }
                Ok(json!({}))
            }
            "ListGroups" => {
                authorize(state, caller, "iam:ListGroups", &group_arn(state, "*")).await?;
                let groups: Vec<Value> = state
                    .store
                    .list_groups()
                    .await?
                    .iter()
                    .map(|g| json!({ "GroupName": g.name, "GroupId": g.group_id, "Arn": group_arn(state, &g.name), "CreateDate": timestamp(g.created_at) }))
                    .collect();
                Ok(json!({ "Groups": groups }))
            }
            "AddUserToGroup" | "RemoveUserFromGroup" => {
                let g = find_group(state, req(&i.group_name, "groupName")?).await?;
                let u = find_user(state, req(&i.user_name, "userName")?).await?;
                authorize(state, caller, &format!("iam:{op}"), &group_arn(state, &g.name)).await?;
                if op == "AddUserToGroup" {
                    state.store.add_member(&g.group_id, &u.user_id).await?;
                } else {
                    state.store.remove_member(&g.group_id, &u.user_id).await?;
                }
                Ok(json!({}))
            }
            "CreatePolicy" => {
                let (name, doc) = named_document(&i)?;
                authorize(state, caller, "iam:CreatePolicy", &policy_arn(state, name)).await?;
                // Creating never rewrites: an existing name (AdministratorAccess, a boundary,
                // the caller's own policy) is AWS's EntityAlreadyExists.
                match state.store.create_policy(name, &doc, i.description.as_deref().unwrap_or("")).await {
                    Ok(()) => {}
                    Err(StoreError::AlreadyExists(_)) => {
                        return Err(ApiError::client("EntityAlreadyExists", format!("A policy called {name} already exists. Duplicate names are not allowed.")))
                    }
                    Err(e) => return Err(e.into()),
                }
                Ok(json!({ "Policy": { "PolicyName": name, "Arn": policy_arn(state, name) } }))
            }
            "UpdatePolicy" => {
                // Changing a managed policy is its own operation, authorised as AWS authorises
                // a new default version of a policy (iam:CreatePolicyVersion).
                let (name, doc) = named_document(&i)?;
                authorize(state, caller, "iam:CreatePolicyVersion", &policy_arn(state, name)).await?;
                if name == BUILT_IN_ADMIN_POLICY {
                    return Err(ApiError::client("InvalidInput", format!("Policy {name} is built in and cannot be changed.")));
                }
                let cur = state.store.policy(name).await?.ok_or_else(|| ApiError::client("NoSuchEntity", format!("Policy {name} cannot be found.")))?;
                let desc = i.description.as_deref().unwrap_or(&cur.description);
                state.store.update_policy(name, &doc, desc).await.map_err(not_found)?;
                Ok(json!({ "Policy": { "PolicyName": name, "Arn": policy_arn(state, name) } }))
            }
            "GetPolicy" => {
                let name = req(&i.policy_name, "policyName")?;
                authorize(state, caller, "iam:GetPolicy", &policy_arn(state, name)).await?;
                let p = state.store.policy(name).await?.ok_or_else(|| ApiError::client("NoSuchEntity", format!("Policy {name} cannot be found.")))?;
                Ok(json!({ "Policy": { "PolicyName": p.name, "Arn": policy_arn(state, &p.name), "Description": p.description, "UpdateDate": timestamp(p.updated_at), "PolicyDocument": p.document } }))
            }
            "ListPolicies" => {
                authorize(state, caller, "iam:ListPolicies", &policy_arn(state, "*")).await?;
                let list: Vec<Value> = state
                    .store
                    .list_policies()
                    .await?
                    .iter()
                    .map(|p| json!({ "PolicyName": p.name, "Arn": policy_arn(state, &p.name), "Description": p.description, "UpdateDate": timestamp(p.updated_at) }))
                    .collect();
                Ok(json!({ "Policies": list }))
            }
            "DeletePolicy" => {
                let name = req(&i.policy_name, "policyName")?;
                authorize(state, caller, "iam:DeletePolicy", &policy_arn(state, name)).await?;
                if name == BUILT_IN_ADMIN_POLICY || !state.store.delete_policy(name).await? {
                    return Err(ApiError::client("NoSuchEntity", format!("Policy {name} cannot be found or is built in.")));
                }
                Ok(json!({}))
            }
            "AttachUserPolicy" | "DetachUserPolicy" => {
                let u = find_user(state, req(&i.user_name, "userName")?).await?;
                let p = req(&i.policy_name, "policyName")?;
                authorize_attach(state, caller, op, &user_arn(state, &u.name), p).await?;
                if op == "AttachUserPolicy" {
                    state.store.attach_policy(p, "user", &u.user_id).await.map_err(not_found)?;
                } else {
                    state.store.detach_policy(p, "user", &u.user_id).await?;
                }
                Ok(json!({}))
            }
            "AttachGroupPolicy" | "DetachGroupPolicy" => {
                let g = find_group(state, req(&i.group_name, "groupName")?).await?;
                let p = req(&i.policy_name, "policyName")?;
                authorize_attach(state, caller, op, &group_arn(state, &g.name), p).await?;
                if op == "AttachGroupPolicy" {
                    state.store.attach_policy(p, "group", &g.group_id).await.map_err(not_found)?;
                } else {
                    state.store.detach_policy(p, "group", &g.group_id).await?;
                }
                Ok(json!({}))
            }
            "PutUserPolicy" | "PutGroupPolicy" | "DeleteUserPolicy" | "DeleteGroupPolicy" => {
                let name = req(&i.policy_name, "policyName")?;
                valid_name(name, "policyName")?;
                let (ty, id, arn) = if op.contains("User") {
                    let u = find_user(state, req(&i.user_name, "userName")?).await?;
                    ("user", u.user_id, user_arn(state, &u.name))
                } else {
                    let g = find_group(state, req(&i.group_name, "groupName")?).await?;
                    ("group", g.group_id, group_arn(state, &g.name))
                };
                if op.starts_with("Put") {
                    let doc = document_text(i.policy_document.as_ref().ok_or_else(|| ApiError::validation("PolicyDocument is required."))?)?;
                    validate_policy(&doc)?;
                    authorize(state, caller, &format!("iam:{op}"), &arn).await?;
                    state.store.put_inline_policy(ty, &id, name, &doc).await?;
                } else {
                    authorize(state, caller, &format!("iam:{op}"), &arn).await?;
                    if !state.store.delete_inline_policy(ty, &id, name).await? {
                        return Err(ApiError::client("NoSuchEntity", format!("The inline policy {name} cannot be found.")));
                    }
                }
                Ok(json!({}))
            }
            "TagUser" | "UntagUser" | "ListUserTags" => {
                let u = find_user(state, req(&i.user_name, "userName")?).await?;
                authorize(state, caller, &format!("iam:{op}"), &user_arn(state, &u.name)).await?;
                if op == "TagUser" {
                    for t in i.tags.unwrap_or_default() {
                        if t.key.is_empty() || t.key.len() > 128 || t.value.len() > 256 {
                            return Err(ApiError::validation("Tag keys are 1–128 characters and values at most 256."));
                        }
                        state.store.tag_user(&u.user_id, &t.key, &t.value).await?;
                    }
                } else if op == "UntagUser" {
                    for k in i.tag_keys.unwrap_or_default() {
                        state.store.untag_user(&u.user_id, &k).await?;
                    }
                }
                let tags: Vec<Value> = state.store.user_tags(&u.user_id).await?.into_iter().map(|(k, v)| json!({ "Key": k, "Value": v })).collect();
                Ok(json!({ "Tags": tags }))
            }
            "PutUserPermissionsBoundary" | "DeleteUserPermissionsBoundary" => {
                let u = find_user(state, req(&i.user_name, "userName")?).await?;
                authorize(state, caller, &format!("iam:{op}"), &user_arn(state, &u.name)).await?;
                let p = if op.starts_with("Put") { Some(req(&i.policy_name, "policyName")?) } else { None };
                state.store.set_boundary(&u.user_id, p).await.map_err(not_found)?;
                Ok(json!({}))
            }
            "GetUser" => {
                let u = match &i.user_name {
                    Some(n) => find_user(state, n).await?,
                    None => caller.user.clone(),
                };
                authorize(state, caller, "iam:GetUser", &user_arn(state, &u.name)).await?;
                let groups: Vec<String> = state.store.groups_of(&u.user_id).await?.into_iter().map(|g| g.name).collect();
                let attached = state.store.attached_policies("user", &u.user_id).await?;
                let inline: Vec<String> = state.store.inline_policies("user", &u.user_id).await?.into_iter().map(|(n, _)| n).collect();
                let tags: BTreeMap<String, String> = state.store.user_tags(&u.user_id).await?.into_iter().collect();
                let boundary = state.store.boundary(&u.user_id).await?.map(|b| b.name.trim_start_matches("managed/").to_owned());
                let grants: Vec<Value> = state
                    .store
                    .list_grants(&u.user_id)
                    .await?
                    .iter()
                    .map(|g| json!({ "GrantId": g.grant_id, "Name": g.name, "Reason": g.reason, "ExpiresAt": timestamp(g.expires_at), "Active": g.expires_at > now_ms() }))
                    .collect();
                Ok(json!({ "User": {
                    "UserName": u.name, "UserId": u.user_id, "Arn": user_arn(state, &u.name), "CreateDate": timestamp(u.created_at),
                    "Groups": groups, "AttachedPolicies": attached, "InlinePolicies": inline, "Tags": tags,
                    "PermissionsBoundary": boundary, "Grants": grants,
                }}))
            }
            "UpdateAccessKey" => {
                let id = req(&i.access_key_id, "accessKeyId")?;
                let status = req(&i.status, "status")?;
                if status != "Active" && status != "Inactive" {
                    return Err(super::invalid(status, "status", "Member must satisfy enum value set: [Active, Inactive]"));
                }
                // The owner without opening the sealed secret: a key whose secret no longer
                // opens (swapped rows, a restore) can still be disabled.
                let Some(owner) = state.store.access_key_owner(id).await? else {
                    return Err(ApiError::client("NoSuchEntity", format!("The Access Key with id {id} cannot be found.")));
                };
                authorize(state, caller, "iam:UpdateAccessKey", &user_arn(state, &owner.name)).await?;
                let keys = state.store.list_access_keys(&owner.user_id).await?;
                let was_active = keys.iter().any(|k| k.access_key_id == id && k.status == "Active");
                // At most two active keys per user, however the second became active.
                if status == "Active" && !was_active {
                    let active = keys.iter().filter(|k| k.status == "Active").count();
                    if active >= 2 {
                        return Err(ApiError::client("LimitExceeded", "Cannot exceed quota for AccessKeysPerUser: 2"));
                    }
                }
                if !state.store.set_access_key_status(id, status).await? {
                    return Err(ApiError::client("NoSuchEntity", format!("The Access Key with id {id} cannot be found.")));
                }
                Ok(json!({}))
            }
            "SetPassword" => {
                let u = match &i.user_name {
                    Some(n) => find_user(state, n).await?,
                    None => caller.user.clone(),
                };
                let pw = req(&i.password, "password")?;
                if pw.chars().count() < 12 {
                    return Err(ApiError::client("PasswordPolicyViolation", "Passwords are at least 12 characters."));
                }
                authorize(state, caller, "iam:UpdateLoginProfile", &user_arn(state, &u.name)).await?;
                use argon2::password_hash::{PasswordHasher, SaltString};
                let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
                let hash = argon2::Argon2::default()
                    .hash_password(pw.as_bytes(), &salt)
                    .map_err(ApiError::internal)?
                    .to_string();
                state.store.set_password_hash(&u.user_id, Some(&hash)).await?;
                Ok(json!({}))
            }
            "CreateGrant" => {
                let u = find_user(state, req(&i.user_name, "userName")?).await?;
                let until = i.expires_at.ok_or_else(|| ApiError::validation("ExpiresAt is required."))?;
                let until_ms = (until * 1000.0) as i64;
                if until_ms <= now_ms() {
                    return Err(ApiError::validation("ExpiresAt must be in the future."));
                }
                let (name, doc) = match (&i.policy_name, &i.policy_document) {
                    (Some(p), None) => {
                        let mp = state.store.policy(p).await?.ok_or_else(|| ApiError::client("NoSuchEntity", format!("Policy {p} cannot be found.")))?;
                        (p.clone(), mp.document)
                    }
                    (None, Some(d)) => ("inline".to_owned(), document_text(d)?),
                    _ => return Err(ApiError::validation("Give exactly one of PolicyName and PolicyDocument.")),
                };
                validate_policy(&doc)?;
                authorize(state, caller, "airlock:CreateGrant", &user_arn(state, &u.name)).await?;
                let g = state.store.create_grant(&u.user_id, &name, &doc, i.reason.as_deref().unwrap_or(""), until_ms).await?;
                Ok(json!({ "Grant": { "GrantId": g.grant_id, "UserName": u.name, "Name": g.name, "ExpiresAt": timestamp(g.expires_at) } }))
            }
            "DeleteGrant" => {
                let id = req(&i.grant_id, "grantId")?;
                authorize(state, caller, "airlock:DeleteGrant", &user_arn(state, "*")).await?;
                if !state.store.delete_grant(id).await? {
                    return Err(ApiError::client("NoSuchEntity", format!("Grant {id} cannot be found.")));
                }
                Ok(json!({}))
            }
            "GetSessionToken" => {
                if caller.principal.temporary.is_some() {
                    return Err(ApiError::client("AccessDeniedException", "Cannot call GetSessionToken with session credentials"));
                }
                let secs = i.duration_seconds.unwrap_or(43_200);
                if !(900..=129_600).contains(&secs) {
                    return Err(super::invalid(&secs.to_string(), "durationSeconds", "Member must have value between 900 and 129600"));
                }
                // As with AWS STS, any user may get session credentials for themselves; the
                // call is still on the audit record (written by the API layer).
                use rand::RngCore;
                let mut raw = [0u8; 48];
                rand::thread_rng().fill_bytes(&mut raw);
                use base64::Engine;
                let token = base64::engine::general_purpose::STANDARD.encode(raw);
                use sha2::Digest;
                let now = now_ms();
                let creds = crate::store::iam::SessionCredentials {
                    access_key_id: format!("ASIA{}", crate::store::random_upper(16)),
                    user_id: caller.user.user_id.clone(),
                    secret_access_key: crate::store::random_secret(40),
                    token_hash: hex::encode(sha2::Sha256::digest(token.as_bytes())),
                    // No MFA device is enrolled through this API yet, so none was presented.
                    mfa: false,
                    issued_at: now,
                    expires_at: now + secs * 1000,
                };
                state.store.create_session_credentials(&creds).await?;
                Ok(json!({ "Credentials": {
                    "AccessKeyId": creds.access_key_id, "SecretAccessKey": creds.secret_access_key,
                    "SessionToken": token, "Expiration": timestamp(creds.expires_at),
                }}))
            }
            _ => Err(ApiError::client("UnknownOperationException", format!("Unknown operation Airlock.{op}"))),
        }
    }
    .await;
    Some(r)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SimulateInput {
    user_name: Option<String>,
    #[serde(default)]
    policy_documents: Vec<Value>,
    action: String,
    resource: String,
    #[serde(default)]
    context: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    resource_tags: BTreeMap<String, String>,
}

/// SimulatePolicy: would this request be allowed, and by which statement.
async fn simulate(state: &Arc<AppState>, caller: &Caller, input: Value) -> Result<Value, ApiError> {
    let i: SimulateInput = parse(input)?;
    let principal = match (&i.user_name, i.policy_documents.is_empty()) {
        (Some(n), true) => {
            let u = find_user(state, n).await?;
            authorize(
                state,
                caller,
                "iam:SimulatePrincipalPolicy",
                &user_arn(state, &u.name),
            )
            .await?;
            crate::authz::load_principal(
                &state.store,
                &state.policies,
                &state.config.account_id,
                u,
                None,
            )
            .await?
        }
        (None, false) => {
            let mut identity = Vec::new();
            for (n, d) in i.policy_documents.iter().enumerate() {
                let p = validate_policy(&document_text(d)?)?;
                identity.push((format!("document {n}"), Arc::new(p)));
            }
            authorize(state, caller, "iam:SimulateCustomPolicy", "*").await?;
            crate::authz::Principal {
                identity,
                boundary: None,
                ..caller.principal.clone()
            }
        }
        _ => {
            return Err(ApiError::validation(
                "Give either UserName or PolicyDocuments.",
            ))
        }
    };
    let resource = crate::authz::Resource {
        arn: i.resource.clone(),
        tags: i.resource_tags.into_iter().collect(),
    };
    let mut ctx: RequestContext = crate::authz::context(
        state,
        &principal,
        &caller.source_ip.to_string(),
        caller.secure,
        &i.action,
        &resource,
    );
    for (k, v) in i.context {
        ctx.set_values(&k, v);
    }
    let d = crate::authz::decide(&principal, &ctx);
    let kind = match &d {
        airlock_policy::Decision::Allow { .. } => "Allow",
        airlock_policy::Decision::ExplicitDeny { .. } => "ExplicitDeny",
        airlock_policy::Decision::ImplicitDeny { .. } => "ImplicitDeny",
    };
    Ok(json!({
        "Decision": kind,
        "Allowed": d.is_allowed(),
        "Explanation": d.explain(),
        "Detail": serde_json::to_value(&d).unwrap_or(Value::Null),
        "Principal": principal.arn,
        "Action": i.action,
        "Resource": i.resource,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AuditInput {
    principal: Option<String>,
    action: Option<String>,
    decision: Option<String>,
    since: Option<f64>,
    until: Option<f64>,
    max_results: Option<i64>,
    next_token: Option<String>,
}

async fn list_audit(
    state: &Arc<AppState>,
    caller: &Caller,
    input: Value,
) -> Result<Value, ApiError> {
    let i: AuditInput = parse(input)?;
    let limit = i.max_results.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(super::invalid(
            &limit.to_string(),
            "maxResults",
            "Member must have value between 1 and 1000",
        ));
    }
    let before = match &i.next_token {
        Some(t) => Some(super::decode_next_token(Some(t))?),
        None => None,
    };
    authorize(state, caller, "airlock:ListAuditEvents", "*").await?;
    let filter = crate::store::audit::AuditFilter {
        principal: i.principal,
        action: i.action,
        decision: i.decision,
        since: i.since.map(|s| (s * 1000.0) as i64),
        until: i.until.map(|s| (s * 1000.0) as i64),
    };
    let rows = state.store.list_audit(&filter, before, limit).await?;
    let next = if rows.len() as i64 == limit {
        rows.last().map(|r| super::encode_next_token(r.seq))
    } else {
        None
    };
    let events: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut v = json!(r);
            v["Time"] = timestamp(r.time);
            v
        })
        .collect();
    let mut out = json!({ "Events": events });
    if let Some(n) = next {
        out["NextToken"] = json!(n);
    }
    Ok(out)
}

// ---- declarative apply ------------------------------------------------------------------------

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct ApplyDoc {
    #[serde(default)]
    policies: BTreeMap<String, ApplyPolicy>,
    #[serde(default)]
    groups: BTreeMap<String, ApplyGroup>,
    #[serde(default)]
    users: BTreeMap<String, ApplyUser>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct ApplyPolicy {
    #[serde(default)]
    description: String,
    document: Value,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct ApplyGroup {
    #[serde(default)]
    policies: BTreeSet<String>,
    #[serde(default)]
    inline_policies: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct ApplyUser {
    #[serde(default)]
    groups: BTreeSet<String>,
    #[serde(default)]
    policies: BTreeSet<String>,
    #[serde(default)]
    inline_policies: BTreeMap<String, Value>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    permissions_boundary: Option<String>,
}

/// Apply: makes the declared policies, groups and users exactly as the document says
/// (entities it does not name are left alone). Everything is validated before anything is
/// written, so an invalid file changes nothing. Running it twice changes nothing the second time.
async fn apply(state: &Arc<AppState>, caller: &Caller, input: Value) -> Result<Value, ApiError> {
    let doc: ApplyDoc = serde_json::from_value(input.get("Document").cloned().unwrap_or(input))
        .map_err(|e| ApiError::validation(format!("The apply document is invalid: {e}")))?;
    // Validate everything first.
    let mut policy_texts = BTreeMap::new();
    for (name, p) in &doc.policies {
        valid_name(name, "Policies")?;
        let text = document_text(&p.document)?;
        validate_policy(&text)
            .map_err(|e| ApiError::client(e.code, format!("Policies.{name}: {}", e.message)))?;
        policy_texts.insert(name.clone(), text);
    }
    let known = |n: &String| policy_texts.contains_key(n);
    let mut referenced: BTreeSet<String> = BTreeSet::new();
    for (gname, g) in &doc.groups {
        valid_name(gname, "Groups")?;
        referenced.extend(g.policies.iter().cloned());
        for (pn, pd) in &g.inline_policies {
            validate_policy(&document_text(pd)?).map_err(|e| {
                ApiError::client(
                    e.code,
                    format!("Groups.{gname}.InlinePolicies.{pn}: {}", e.message),
                )
            })?;
        }
    }
    for (uname, u) in &doc.users {
        valid_name(uname, "Users")?;
        referenced.extend(u.policies.iter().cloned());
        referenced.extend(u.permissions_boundary.iter().cloned());
        for g in &u.groups {
            if !doc.groups.contains_key(g) && state.store.group_by_name(g).await?.is_none() {
                return Err(ApiError::client(
                    "NoSuchEntity",
                    format!(
                        "Users.{uname}.Groups: group {g} is neither in the file nor on the server."
                    ),
                ));
            }
        }
        for (pn, pd) in &u.inline_policies {
            validate_policy(&document_text(pd)?).map_err(|e| {
                ApiError::client(
                    e.code,
                    format!("Users.{uname}.InlinePolicies.{pn}: {}", e.message),
                )
            })?;
        }
    }
    for p in &referenced {
        if !known(p) && state.store.policy(p).await?.is_none() {
            return Err(ApiError::client(
                "NoSuchEntity",
                format!("Policy {p} is referenced but neither in the file nor on the server."),
            ));
        }
    }
    authorize(state, caller, "airlock:Apply", "*").await?;
    // Each policy the file creates or changes is authorised on its own action too, before
    // anything is written: apply is no way around iam:CreatePolicy / iam:CreatePolicyVersion,
    // and the built-in administrator policy is not the file's to change.
    for (name, text) in &policy_texts {
        let desc = doc
            .policies
            .get(name)
            .map(|p| p.description.as_str())
            .unwrap_or("");
        let action = match state.store.policy(name).await? {
            Some(c) if (c.document.as_str(), c.description.as_str()) == (text.as_str(), desc) => {
                continue
            }
            Some(_) => "iam:CreatePolicyVersion",
            None => "iam:CreatePolicy",
        };
        if name == BUILT_IN_ADMIN_POLICY {
            return Err(ApiError::client(
                "InvalidInput",
                format!("Policies.{name}: the built-in policy cannot be changed."),
            ));
        }
        authorize(state, caller, action, &policy_arn(state, name)).await?;
    }

    let mut changes: Vec<String> = Vec::new();
    for (name, text) in &policy_texts {
        let desc = doc
            .policies
            .get(name)
            .map(|p| p.description.as_str())
            .unwrap_or("");
        match state.store.policy(name).await? {
            Some(c) if (c.document.as_str(), c.description.as_str()) == (text.as_str(), desc) => {}
            Some(_) => {
                state
                    .store
                    .update_policy(name, text, desc)
                    .await
                    .map_err(not_found)?;
                changes.push(format!("policy {name}: updated"));
            }
            None => {
                state
                    .store
                    .create_policy(name, text, desc)
                    .await
                    .map_err(not_found)?;
                changes.push(format!("policy {name}: created"));
            }
        }
    }
    for (gname, g) in &doc.groups {
        let group = match state.store.group_by_name(gname).await? {
            Some(g) => g,
            None => {
                changes.push(format!("group {gname}: created"));
                state.store.create_group(gname).await.map_err(not_found)?
            }
        };
        sync_attachments(
            state,
            "group",
            &group.group_id,
            &g.policies,
            &format!("group {gname}"),
            &mut changes,
        )
        .await?;
        sync_inline(
            state,
            "group",
            &group.group_id,
            &g.inline_policies,
            &format!("group {gname}"),
            &mut changes,
        )
        .await?;
    }
    for (uname, u) in &doc.users {
        let user = match state.store.user_by_name(uname).await? {
            Some(x) => x,
            None => {
                changes.push(format!("user {uname}: created"));
                state
                    .store
                    .create_user(uname, false)
                    .await
                    .map_err(not_found)?
            }
        };
        let current: BTreeSet<String> = state
            .store
            .groups_of(&user.user_id)
            .await?
            .into_iter()
            .map(|g| g.name)
            .collect();
        for g in u.groups.difference(&current) {
            if let Some(group) = state.store.group_by_name(g).await? {
                state
                    .store
                    .add_member(&group.group_id, &user.user_id)
                    .await?;
                changes.push(format!("user {uname}: added to group {g}"));
            }
        }
        for g in current.difference(&u.groups) {
            if let Some(group) = state.store.group_by_name(g).await? {
                state
                    .store
                    .remove_member(&group.group_id, &user.user_id)
                    .await?;
                changes.push(format!("user {uname}: removed from group {g}"));
            }
        }
        sync_attachments(
            state,
            "user",
            &user.user_id,
            &u.policies,
            &format!("user {uname}"),
            &mut changes,
        )
        .await?;
        sync_inline(
            state,
            "user",
            &user.user_id,
            &u.inline_policies,
            &format!("user {uname}"),
            &mut changes,
        )
        .await?;
        let tags: BTreeMap<String, String> = state
            .store
            .user_tags(&user.user_id)
            .await?
            .into_iter()
            .collect();
        if tags != u.tags {
            for k in tags.keys().filter(|k| !u.tags.contains_key(*k)) {
                state.store.untag_user(&user.user_id, k).await?;
            }
            for (k, v) in &u.tags {
                state.store.tag_user(&user.user_id, k, v).await?;
            }
            changes.push(format!("user {uname}: tags set"));
        }
        let boundary = state
            .store
            .boundary(&user.user_id)
            .await?
            .map(|b| b.name.trim_start_matches("managed/").to_owned());
        if boundary != u.permissions_boundary {
            state
                .store
                .set_boundary(&user.user_id, u.permissions_boundary.as_deref())
                .await
                .map_err(not_found)?;
            changes.push(format!(
                "user {uname}: permissions boundary {}",
                u.permissions_boundary.as_deref().unwrap_or("removed")
            ));
        }
    }
    Ok(json!({ "Changes": changes }))
}

async fn sync_attachments(
    state: &AppState,
    ty: &str,
    id: &str,
    want: &BTreeSet<String>,
    label: &str,
    changes: &mut Vec<String>,
) -> Result<(), ApiError> {
    let have: BTreeSet<String> = state
        .store
        .attached_policies(ty, id)
        .await?
        .into_iter()
        .collect();
    for p in want.difference(&have) {
        state
            .store
            .attach_policy(p, ty, id)
            .await
            .map_err(not_found)?;
        changes.push(format!("{label}: attached {p}"));
    }
    for p in have.difference(want) {
        state.store.detach_policy(p, ty, id).await?;
        changes.push(format!("{label}: detached {p}"));
    }
    Ok(())
}

async fn sync_inline(
    state: &AppState,
    ty: &str,
    id: &str,
    want: &BTreeMap<String, Value>,
    label: &str,
    changes: &mut Vec<String>,
) -> Result<(), ApiError> {
    let have: BTreeMap<String, String> = state
        .store
        .inline_policies(ty, id)
        .await?
        .into_iter()
        .collect();
    for (name, doc) in want {
        let text = document_text(doc)?;
        if have.get(name) != Some(&text) {
            state.store.put_inline_policy(ty, id, name, &text).await?;
            changes.push(format!("{label}: inline policy {name} set"));
        }
    }
    for name in have.keys().filter(|n| !want.contains_key(*n)) {
        state.store.delete_inline_policy(ty, id, name).await?;
        changes.push(format!("{label}: inline policy {name} removed"));
    }
    Ok(())
}
