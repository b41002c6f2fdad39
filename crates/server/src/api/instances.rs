//! Managed instances and hybrid activations: DescribeInstanceInformation,
//! GetConnectionStatus, CreateActivation, DescribeActivations, DeleteActivation,
//! DeregisterManagedInstance.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    authorize, decode_next_token, encode_next_token, invalid, timestamp, ApiError, Caller,
};
use crate::state::AppState;
use crate::store::{now_ms, Activation, Instance};

fn any_arn(state: &AppState) -> String {
    format!(
        "arn:aws:ssm:{}:{}:*",
        state.config.region, state.config.account_id
    )
}

/// DescribeInstanceInformation input (both filter forms).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeInstancesInput {
    #[serde(default)]
    instance_information_filter_list: Vec<OldFilter>,
    #[serde(default)]
    filters: Vec<NewFilter>,
    max_results: Option<i64>,
    next_token: Option<String>,
}

/// The older filter form: `{key, valueSet}`.
#[derive(Debug, Deserialize)]
pub struct OldFilter {
    key: String,
    #[serde(rename = "valueSet")]
    value_set: Vec<String>,
}

/// The newer filter form: `{Key, Values}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NewFilter {
    key: String,
    values: Vec<String>,
}

fn instance_json(i: &Instance, online: bool) -> Value {
    let mut v = json!({
        "InstanceId": i.instance_id,
        "PingStatus": if online { "Online" } else { "ConnectionLost" },
        "AgentVersion": i.agent_version,
        "IsLatestVersion": true,
        "PlatformType": i.platform_type,
        "PlatformName": i.platform_name,
        "PlatformVersion": i.platform_version,
        "ActivationId": i.activation_id,
        "IamRole": i.iam_role,
        "RegistrationDate": timestamp(i.registered_at),
        "ResourceType": "ManagedInstance",
        "Name": i.name,
        "IPAddress": i.ip_address,
        "ComputerName": i.computer_name,
        "SourceId": i.instance_id,
        "SourceType": "AWS::SSM::ManagedInstance",
    });
    if let Some(p) = i.last_ping_at {
        v["LastPingDateTime"] = timestamp(p);
    }
    v
}

/// DescribeInstanceInformation: registered instances with their live ping status.
pub async fn describe(
    state: &Arc<AppState>,
    caller: &Caller,
    input: DescribeInstancesInput,
) -> Result<Value, ApiError> {
    let limit = input.max_results.unwrap_or(50);
    if !(5..=50).contains(&limit) {
        return Err(invalid(
            &limit.to_string(),
            "maxResults",
            "Member must have value between 5 and 50",
        ));
    }
    authorize(
        state,
        caller,
        "ssm:DescribeInstanceInformation",
        &any_arn(state),
    )
    .await?;
    let filters: Vec<(String, Vec<String>)> = input
        .instance_information_filter_list
        .into_iter()
        .map(|f| (f.key, f.value_set))
        .chain(input.filters.into_iter().map(|f| (f.key, f.values)))
        .collect();
    for (key, values) in &filters {
        if values.is_empty() || values.len() > 100 {
            return Err(ApiError::client(
                "InvalidInstanceInformationFilterValue",
                format!("The filter {key} needs between 1 and 100 values."),
            ));
        }
        // `tag:<key>` (the tag's value is one of the values) and `tag-key` (the instance has
        // one of the keys), as AWS filters managed instances by tag.
        if key.starts_with("tag:") || key == "tag-key" {
            continue;
        }
        if ![
            "InstanceIds",
            "PingStatus",
            "PlatformTypes",
            "ActivationIds",
            "AgentVersion",
            "ResourceType",
            "IamRole",
        ]
        .contains(&key.as_str())
        {
            return Err(ApiError::client(
                "InvalidFilterKey",
                format!("The filter key {key} isn't valid."),
            ));
        }
    }
    let offset = decode_next_token(input.next_token.as_deref())?;
    let all = state.store.list_instances().await?;
    let by_tag = filters
        .iter()
        .any(|(k, _)| k.starts_with("tag:") || k == "tag-key");
    let mut tags_of = std::collections::HashMap::new();
    if by_tag {
        for i in &all {
            let tags = state.store.instance_tags(&i.instance_id).await?;
            tags_of.insert(i.instance_id.clone(), tags);
        }
    }
    let candidates: Vec<Instance> = all
        .iter()
        .filter_map(|i| {
            let online = state.hub.agent(&i.instance_id).is_some();
            let ping = if online { "Online" } else { "ConnectionLost" };
            let ok = filters.iter().all(|(key, values)| {
                if let Some(tag) = key.strip_prefix("tag:") {
                    let tags: Option<&Vec<(String, String)>> = tags_of.get(&i.instance_id);
                    return tags.is_some_and(|t| {
                        t.iter()
                            .any(|(k, v)| k == tag && values.iter().any(|x| x == v))
                    });
                }
                if key == "tag-key" {
                    let tags = tags_of.get(&i.instance_id);
                    return tags.is_some_and(|t: &Vec<(String, String)>| {
                        t.iter().any(|(k, _)| values.contains(k))
                    });
                }
                let field = match key.as_str() {
                    "InstanceIds" => i.instance_id.as_str(),
                    "PingStatus" => ping,
                    "PlatformTypes" => i.platform_type.as_str(),
                    "ActivationIds" => i.activation_id.as_str(),
                    "AgentVersion" => i.agent_version.as_str(),
                    "IamRole" => i.iam_role.as_str(),
                    _ => "ManagedInstance",
                };
                values.iter().any(|v| v == field)
            });
            ok.then(|| i.clone())
        })
        .collect();
    // Show only the instances the caller may see (e.g. policies scoped by instance tags).
    let mut matching = Vec::with_capacity(candidates.len());
    for i in candidates {
        let resource = crate::authz::Resource {
            arn: format!(
                "arn:aws:ssm:{}:{}:managed-instance/{}",
                state.config.region, state.config.account_id, i.instance_id
            ),
            tags: state.store.instance_tags(&i.instance_id).await?,
        };
        if crate::authz::allowed_quietly(
            state,
            caller,
            "ssm:DescribeInstanceInformation",
            &resource,
        ) {
            matching.push(instance_json(&i, state.hub.agent(&i.instance_id).is_some()));
        }
    }
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(matching.len());
    let end = start
        .saturating_add(usize::try_from(limit).unwrap_or(50))
        .min(matching.len());
    let mut out = json!({ "InstanceInformationList": matching[start..end].to_vec() });
    if end < matching.len() {
        out["NextToken"] = json!(encode_next_token(i64::try_from(end).unwrap_or(0)));
    }
    Ok(out)
}

/// GetConnectionStatus input.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TargetInput {
    target: Option<String>,
}

/// GetConnectionStatus: `connected` when the agent holds its control channel.
pub async fn connection_status(
    state: &Arc<AppState>,
    caller: &Caller,
    input: TargetInput,
) -> Result<Value, ApiError> {
    let target = input.target.unwrap_or_default();
    authorize(state, caller, "ssm:GetConnectionStatus", &any_arn(state)).await?;
    let status = if state.hub.agent(&target).is_some() {
        "connected"
    } else {
        "notconnected"
    };
    Ok(json!({ "Target": target, "Status": status }))
}

/// CreateActivation input.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateActivationInput {
    iam_role: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    default_instance_name: String,
    registration_limit: Option<i64>,
    expiration_date: Option<f64>,
    #[serde(default)]
    tags: Vec<Value>,
}

/// Hex SHA-256 of an activation code (codes are stored only this way).
pub fn hash_code(code: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(code.as_bytes()))
}

/// CreateActivation: returns the id and a code shown once.
pub async fn create_activation(
    state: &Arc<AppState>,
    caller: &Caller,
    input: CreateActivationInput,
) -> Result<Value, ApiError> {
    let role = input.iam_role.unwrap_or_default();
    if role.is_empty() || role.len() > 64 {
        return Err(invalid(
            &role,
            "iamRole",
            "Member must have length between 1 and 64",
        ));
    }
    let limit = input.registration_limit.unwrap_or(1);
    if !(1..=1000).contains(&limit) {
        return Err(invalid(
            &limit.to_string(),
            "registrationLimit",
            "Member must have value between 1 and 1000",
        ));
    }
    if input.description.len() > 256 || input.default_instance_name.len() > 256 {
        return Err(ApiError::validation(
            "Description and DefaultInstanceName are at most 256 characters.",
        ));
    }
    let now = now_ms();
    let expires = match input.expiration_date {
        None => now + 24 * 3600 * 1000,
        Some(secs) => {
            let ms = (secs * 1000.0) as i64;
            if ms <= now || ms > now + 30 * 24 * 3600 * 1000 {
                return Err(ApiError::client(
                    "InvalidParameters",
                    "ExpirationDate must be in the future and at most 30 days ahead.",
                ));
            }
            ms
        }
    };
    // The tags pass to every instance it registers, so they must be real tags.
    if input.tags.len() > 1000 {
        return Err(ApiError::client(
            "TooManyTagsError",
            "An activation has at most 1000 tags.",
        ));
    }
    for t in &input.tags {
        let key = t.get("Key").and_then(Value::as_str);
        let value = t.get("Value").map(|v| v.as_str()).unwrap_or(Some(""));
        match (key, value) {
            (Some(k), Some(v)) => check_tag(k, v)?,
            _ => {
                return Err(ApiError::validation(format!(
                    "Each tag is {{\"Key\": string, \"Value\": string}}; found {t}."
                )))
            }
        }
    }
    authorize(state, caller, "ssm:CreateActivation", &any_arn(state)).await?;
    let code = crate::store::random_secret(20).replace(['+', '/'], "x");
    let activation = Activation {
        activation_id: uuid::Uuid::new_v4().to_string(),
        code_hash: hash_code(&code),
        iam_role: role,
        description: input.description,
        default_instance_name: input.default_instance_name,
        registration_limit: limit,
        registrations_count: 0,
        expiration_date: expires,
        created_at: now,
        tags: serde_json::to_string(&input.tags).unwrap_or_else(|_| "[]".into()),
    };
    state.store.create_activation(&activation).await?;
    Ok(json!({ "ActivationId": activation.activation_id, "ActivationCode": code }))
}

/// DescribeActivations input.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeActivationsInput {
    #[serde(default)]
    filters: Vec<ActivationFilter>,
    max_results: Option<i64>,
    next_token: Option<String>,
}

/// One DescribeActivations filter.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ActivationFilter {
    filter_key: String,
    filter_values: Vec<String>,
}

/// DescribeActivations: activations with their counts and expiry.
pub async fn describe_activations(
    state: &Arc<AppState>,
    caller: &Caller,
    input: DescribeActivationsInput,
) -> Result<Value, ApiError> {
    let limit = input.max_results.unwrap_or(50);
    if !(1..=50).contains(&limit) {
        return Err(invalid(
            &limit.to_string(),
            "maxResults",
            "Member must have value between 1 and 50",
        ));
    }
    authorize(state, caller, "ssm:DescribeActivations", &any_arn(state)).await?;
    for f in &input.filters {
        if !["ActivationIds", "DefaultInstanceName", "IamRole"].contains(&f.filter_key.as_str()) {
            return Err(ApiError::client(
                "InvalidFilter",
                format!("The filter key {} isn't valid.", f.filter_key),
            ));
        }
    }
    let offset = decode_next_token(input.next_token.as_deref())?;
    let now = now_ms();
    let list: Vec<Value> = state
        .store
        .list_activations()
        .await?
        .into_iter()
        .filter(|a| {
            input.filters.iter().all(|f| {
                let field = match f.filter_key.as_str() {
                    "ActivationIds" => &a.activation_id,
                    "DefaultInstanceName" => &a.default_instance_name,
                    _ => &a.iam_role,
                };
                f.filter_values.iter().any(|v| v == field)
            })
        })
        .map(|a| {
            json!({
                "ActivationId": a.activation_id,
                "Description": a.description,
                "DefaultInstanceName": a.default_instance_name,
                "IamRole": a.iam_role,
                "RegistrationLimit": a.registration_limit,
                "RegistrationsCount": a.registrations_count,
                "ExpirationDate": timestamp(a.expiration_date),
                "Expired": a.expiration_date <= now,
                "CreatedDate": timestamp(a.created_at),
                "Tags": serde_json::from_str::<Value>(&a.tags).unwrap_or(json!([])),
            })
        })
        .collect();
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(list.len());
    let end = start
        .saturating_add(usize::try_from(limit).unwrap_or(50))
        .min(list.len());
    let mut out = json!({ "ActivationList": list[start..end].to_vec() });
    if end < list.len() {
        out["NextToken"] = json!(encode_next_token(i64::try_from(end).unwrap_or(0)));
    }
    Ok(out)
}

/// DeleteActivation input.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ActivationIdInput {
    activation_id: Option<String>,
}

/// DeleteActivation: registered instances stay registered.
pub async fn delete_activation(
    state: &Arc<AppState>,
    caller: &Caller,
    input: ActivationIdInput,
) -> Result<Value, ApiError> {
    let id = input.activation_id.unwrap_or_default();
    authorize(state, caller, "ssm:DeleteActivation", &any_arn(state)).await?;
    if !state.store.delete_activation(&id).await? {
        return Err(ApiError::client(
            "InvalidActivationId",
            format!("The activation ID {id} isn't valid."),
        ));
    }
    Ok(json!({}))
}

/// DeregisterManagedInstance input.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceIdInput {
    instance_id: Option<String>,
}

/// DeregisterManagedInstance: the agent is cut off at once and can never connect again.
pub async fn deregister(
    state: &Arc<AppState>,
    caller: &Caller,
    input: InstanceIdInput,
) -> Result<Value, ApiError> {
    let id = input.instance_id.unwrap_or_default();
    authorize(
        state,
        caller,
        "ssm:DeregisterManagedInstance",
        &format!(
            "arn:aws:ssm:{}:{}:managed-instance/{id}",
            state.config.region, state.config.account_id
        ),
    )
    .await?;
    if !state.store.deregister_instance(&id).await? {
        return Err(ApiError::client(
            "InvalidInstanceId",
            format!("Instance {id} is not a registered managed instance."),
        ));
    }
    // End its sessions first, so they are recorded with this reason rather than as
    // "the agent's data channel closed" when the cut agent drops them; then cut it off.
    let filter = crate::store::SessionFilter {
        target: Some(id.clone()),
        ..Default::default()
    };
    for s in state.store.list_sessions(false, &filter, 0, 10_000).await? {
        crate::sessions::end(
            state,
            &s.session_id,
            crate::sessions::End {
                reason: crate::end_reason::EndReason::Deregistered,
                // Still connected here: the agent is told too, and the client sees the reason.
                notify_agent: true,
            },
        )
        .await;
    }
    state.hub.disconnect_agent(&id);
    Ok(json!({}))
}

/// Input of the tag operations.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TagsInput {
    resource_type: Option<String>,
    resource_id: Option<String>,
    #[serde(default)]
    tags: Vec<TagPair>,
    #[serde(default)]
    tag_keys: Vec<String>,
}

/// One tag.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TagPair {
    key: String,
    #[serde(default)]
    value: String,
}

async fn tagged_instance(
    state: &Arc<AppState>,
    input: &TagsInput,
) -> Result<(String, crate::authz::Resource), ApiError> {
    let ty = input.resource_type.as_deref().unwrap_or("");
    if ty != "ManagedInstance" {
        return Err(ApiError::client(
            "InvalidResourceType",
            format!("Resource type {ty} is not supported; use ManagedInstance."),
        ));
    }
    let id = input.resource_id.clone().unwrap_or_default();
    let registered = state
        .store
        .instance(&id)
        .await?
        .is_some_and(|i| i.deregistered_at.is_none());
    if !registered {
        return Err(ApiError::client(
            "InvalidResourceId",
            format!("{id} is not a registered managed instance."),
        ));
    }
    let resource = crate::authz::Resource {
        arn: format!(
            "arn:aws:ssm:{}:{}:managed-instance/{id}",
            state.config.region, state.config.account_id
        ),
        tags: state.store.instance_tags(&id).await?,
    };
    Ok((id, resource))
}

fn check_tag(key: &str, value: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > 128 || value.len() > 256 || key.starts_with("aws:") {
        return Err(ApiError::validation(format!(
            "Tag key '{key}' must be 1-128 characters, not start with aws:, and values at most 256."
        )));
    }
    Ok(())
}

/// AddTagsToResource (managed instances): tags feed `ssm:resourceTag/*` in policies.
pub async fn add_tags(
    state: &Arc<AppState>,
    caller: &Caller,
    input: TagsInput,
) -> Result<Value, ApiError> {
    let (id, resource) = tagged_instance(state, &input).await?;
    for t in &input.tags {
        check_tag(&t.key, &t.value)?;
    }
    if input.tags.is_empty() || input.tags.len() > 1000 {
        return Err(ApiError::client(
            "TooManyTagsError",
            "Give between 1 and 1000 tags.",
        ));
    }
    let keys: Vec<String> = input.tags.iter().map(|t| t.key.clone()).collect();
    let mut extra: Vec<(&str, Vec<String>)> = vec![(airlock_policy::keys::TAG_KEYS, keys)];
    let request_tags: Vec<(String, Vec<String>)> = input
        .tags
        .iter()
        .map(|t| (format!("aws:RequestTag/{}", t.key), vec![t.value.clone()]))
        .collect();
    extra.extend(request_tags.iter().map(|(k, v)| (k.as_str(), v.clone())));
    crate::authz::authorize(state, caller, "ssm:AddTagsToResource", &[resource], &extra).await?;
    let pairs: Vec<(String, String)> = input.tags.into_iter().map(|t| (t.key, t.value)).collect();
    state.store.tag_instance(&id, &pairs).await?;
    Ok(json!({}))
}

/// RemoveTagsFromResource (managed instances).
pub async fn remove_tags(
    state: &Arc<AppState>,
    caller: &Caller,
    input: TagsInput,
) -> Result<Value, ApiError> {
    let (id, resource) = tagged_instance(state, &input).await?;
    if input.tag_keys.is_empty() {
        return Err(ApiError::validation("TagKeys must not be empty."));
    }
    crate::authz::authorize(
        state,
        caller,
        "ssm:RemoveTagsFromResource",
        &[resource],
        &[(airlock_policy::keys::TAG_KEYS, input.tag_keys.clone())],
    )
    .await?;
    state.store.untag_instance(&id, &input.tag_keys).await?;
    Ok(json!({}))
}

/// ListTagsForResource (managed instances).
pub async fn list_tags(
    state: &Arc<AppState>,
    caller: &Caller,
    input: TagsInput,
) -> Result<Value, ApiError> {
    let (_, resource) = tagged_instance(state, &input).await?;
    let tags = resource.tags.clone();
    crate::authz::authorize(state, caller, "ssm:ListTagsForResource", &[resource], &[]).await?;
    let list: Vec<Value> = tags
        .into_iter()
        .map(|(k, v)| json!({ "Key": k, "Value": v }))
        .collect();
    Ok(json!({ "TagList": list }))
}
