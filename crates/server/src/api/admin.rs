//! Administration of people and keys (`Airlock.<Op>`): AWS puts these in IAM, which speaks
//! another protocol; here they share the SSM endpoint, its signing and its error shape.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{authorize, parse, timestamp, ApiError, Caller};
use crate::state::AppState;
use crate::store::{StoreError, User};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UserInput {
    user_name: Option<String>,
    #[serde(default)]
    admin: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KeyInput {
    access_key_id: Option<String>,
}

fn user_arn(state: &AppState, name: &str) -> String {
    crate::auth::user_arn(&state.config.account_id, name)
}

fn valid_user_name(name: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(super::invalid(
            name,
            "userName",
            "Member must satisfy regular expression pattern: [\\w+=,.@-]{1,64}",
        ))
    }
}

fn user_json(state: &AppState, u: &User) -> Value {
    json!({
        "UserName": u.name,
        "UserId": u.user_id,
        "Arn": user_arn(state, &u.name),
        "Admin": u.is_admin,
        "CreateDate": timestamp(u.created_at),
    })
}

async fn find_user(state: &AppState, name: Option<String>) -> Result<User, ApiError> {
    let name = name.unwrap_or_default();
    valid_user_name(&name)?;
    state.store.user_by_name(&name).await?.ok_or_else(|| {
        ApiError::client(
            "NoSuchEntity",
            format!("The user with name {name} cannot be found."),
        )
    })
}

/// Routes one `Airlock.<op>` call.
pub async fn dispatch(
    state: &Arc<AppState>,
    caller: &Caller,
    op: &str,
    input: Value,
) -> Result<Value, ApiError> {
    let resource = |name: &str| user_arn(state, name);
    match op {
        "CreateUser" => {
            let i: UserInput = parse(input)?;
            let name = i.user_name.unwrap_or_default();
            valid_user_name(&name)?;
            authorize(state, caller, "iam:CreateUser", &resource(&name)).await?;
            if i.admin {
                // The flag attaches AdministratorAccess to the new user: that is an
                // iam:AttachUserPolicy, and a caller allowed only iam:CreateUser must not mint
                // administrators with it.
                let policy = format!(
                    "arn:aws:iam::{}:policy/{}",
                    state.config.account_id,
                    super::iam::BUILT_IN_ADMIN_POLICY
                );
                crate::authz::authorize(
                    state,
                    caller,
                    "iam:AttachUserPolicy",
                    &[crate::authz::Resource::new(resource(&name))],
                    &[("iam:PolicyARN", vec![policy])],
                )
                .await?;
            }
            let user = match state.store.create_user(&name, i.admin).await {
                Ok(u) => u,
                Err(StoreError::AlreadyExists(_)) => {
                    return Err(ApiError::client(
                        "EntityAlreadyExists",
                        format!("User with name {name} already exists."),
                    ))
                }
                Err(e) => return Err(e.into()),
            };
            Ok(json!({ "User": user_json(state, &user) }))
        }
        "ListUsers" => {
            authorize(state, caller, "iam:ListUsers", &resource("*")).await?;
            let users: Vec<Value> = state
                .store
                .list_users()
                .await?
                .iter()
                .map(|u| user_json(state, u))
                .collect();
            Ok(json!({ "Users": users }))
        }
        "DeleteUser" => {
            let i: UserInput = parse(input)?;
            let user = find_user(state, i.user_name).await?;
            authorize(state, caller, "iam:DeleteUser", &resource(&user.name)).await?;
            if user.user_id == caller.user.user_id {
                return Err(ApiError::client(
                    "DeleteConflict",
                    "You cannot delete yourself.",
                ));
            }
            state.store.delete_user(&user.name).await?;
            Ok(json!({}))
        }
        "CreateAccessKey" => {
            let i: UserInput = parse(input)?;
            let user = match i.user_name {
                Some(n) => find_user(state, Some(n)).await?,
                None => caller.user.clone(),
            };
            authorize(state, caller, "iam:CreateAccessKey", &resource(&user.name)).await?;
            let active = state
                .store
                .list_access_keys(&user.user_id)
                .await?
                .iter()
                .filter(|k| k.status == "Active")
                .count();
            if active >= 2 {
                return Err(ApiError::client(
                    "LimitExceeded",
                    "Cannot exceed quota for AccessKeysPerUser: 2",
                ));
            }
            let key = state.store.create_access_key(&user.user_id).await?;
            Ok(json!({ "AccessKey": {
                "UserName": user.name,
                "AccessKeyId": key.access_key_id,
                "SecretAccessKey": key.secret_access_key,
                "Status": key.status,
                "CreateDate": timestamp(key.created_at),
            }}))
        }
        "ListAccessKeys" => {
            let i: UserInput = parse(input)?;
            let user = match i.user_name {
                Some(n) => find_user(state, Some(n)).await?,
                None => caller.user.clone(),
            };
            authorize(state, caller, "iam:ListAccessKeys", &resource(&user.name)).await?;
            let keys: Vec<Value> = state
                .store
                .list_access_keys(&user.user_id)
                .await?
                .iter()
                .map(|k| {
                    json!({
                        "UserName": user.name,
                        "AccessKeyId": k.access_key_id,
                        "Status": k.status,
                        "CreateDate": timestamp(k.created_at),
                        "LastUsedDate": k.last_used_at.map(timestamp),
                    })
                })
                .collect();
            Ok(json!({ "AccessKeyMetadata": keys }))
        }
        "DeleteAccessKey" => {
            let i: KeyInput = parse(input)?;
            let id = i.access_key_id.unwrap_or_default();
            // Authorised on the key owner's ARN, as IAM does; an unknown key on `user/*`.
            let owner = state
                .store
                .access_key_owner(&id)
                .await?
                .map(|u| u.name)
                .unwrap_or_else(|| "*".to_owned());
            authorize(state, caller, "iam:DeleteAccessKey", &resource(&owner)).await?;
            if !state.store.delete_access_key(&id).await? {
                return Err(ApiError::client(
                    "NoSuchEntity",
                    format!("The Access Key with id {id} cannot be found."),
                ));
            }
            Ok(json!({}))
        }
        "ListPortConnections" => super::port_connections::list(state, caller, input).await,
        "GetSessionRecording" => super::recordings::get(state, caller, parse(input)?).await,
        "SearchSessions" => super::search::search(state, caller, input).await,
        "CreateWebhook"
        | "ListWebhooks"
        | "DeleteWebhook"
        | "TestWebhook"
        | "ListWebhookDeliveries"
        | "RetryWebhookDeliveries" => {
            match super::webhooks::dispatch(state, caller, op, input).await {
                Some(r) => r,
                None => Err(ApiError::client(
                    "UnknownOperationException",
                    format!("Unknown operation Airlock.{op}"),
                )),
            }
        }
        _ => match super::iam::dispatch(state, caller, op, input).await {
            Some(r) => r,
            None => Err(ApiError::client(
                "UnknownOperationException",
                format!("Unknown operation Airlock.{op}"),
            )),
        },
    }
}
