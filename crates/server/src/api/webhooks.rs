//! Webhook administration (`Airlock.CreateWebhook`, `ListWebhooks`, `DeleteWebhook`,
//! `TestWebhook`, `ListWebhookDeliveries`, `RetryWebhookDeliveries`): each authorised as `airlock:<Op>` on
//! `arn:aws:iam::<account>:webhook/<id>` (`webhook/*` to create and list all) and audited by
//! the dispatcher like every call.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{authorize, invalid, parse, timestamp, ApiError, Caller};
use crate::events::cloud::{self, CloudEvent};
use crate::events::outbox::{Delivery, Webhook};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateInput {
    url: Option<String>,
    #[serde(default)]
    events: Vec<String>,
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IdInput {
    webhook_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RetryInput {
    webhook_id: Option<String>,
    delivery_ids: Option<Vec<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DeliveriesInput {
    webhook_id: Option<String>,
    status: Option<String>,
    max_results: Option<i64>,
}

fn webhook_arn(state: &AppState, id: &str) -> String {
    format!("arn:aws:iam::{}:webhook/{id}", state.config.account_id)
}

/// A webhook id as the server makes them (`wh-` and lower-case hex), so nothing else reaches
/// an ARN or a query.
fn valid_id(id: Option<&str>) -> Result<&str, ApiError> {
    let id = id.unwrap_or_default();
    let ok = id.len() <= 64
        && id
            .strip_prefix("wh-")
            .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(id)
    } else {
        let shown: String = id.chars().take(64).collect();
        Err(invalid(
            &shown,
            "webhookId",
            "Member must satisfy regular expression pattern: wh-[0-9a-f]+",
        ))
    }
}

fn webhook_json(w: &Webhook) -> Value {
    json!({
        "WebhookId": w.webhook_id,
        "Url": w.url,
        "Events": w.events,
        "Description": w.description,
        "CreatedBy": w.created_by,
        "CreateDate": timestamp(w.created_at),
    })
}

fn delivery_json(d: &Delivery) -> Value {
    json!({
        "DeliveryId": d.delivery_id,
        "WebhookId": d.webhook_id,
        "EventId": d.event_id,
        "EventType": d.event_type,
        "Status": d.status,
        "Attempts": d.attempts,
        "NextAttemptDate": (d.status == "Pending").then(|| timestamp(d.next_attempt_at)),
        "CreateDate": timestamp(d.created_at),
        "DeliveredDate": d.delivered_at.map(timestamp),
        "LastStatusCode": d.last_status,
        "LastError": d.last_error,
    })
}

async fn existing(state: &AppState, id: &str) -> Result<Webhook, ApiError> {
    state.store.webhook(id).await?.ok_or_else(|| {
        ApiError::client("NoSuchEntity", format!("The webhook {id} cannot be found."))
    })
}

/// Routes one webhook operation; `None` when `op` is not one of them.
pub async fn dispatch(
    state: &Arc<AppState>,
    caller: &Caller,
    op: &str,
    input: Value,
) -> Option<Result<Value, ApiError>> {
    Some(match op {
        "CreateWebhook" => create(state, caller, input).await,
        "ListWebhooks" => list(state, caller).await,
        "DeleteWebhook" => delete(state, caller, input).await,
        "TestWebhook" => test(state, caller, input).await,
        "ListWebhookDeliveries" => deliveries(state, caller, input).await,
        "RetryWebhookDeliveries" => retry(state, caller, input).await,
        _ => return None,
    })
}

async fn create(state: &AppState, caller: &Caller, input: Value) -> Result<Value, ApiError> {
    authorize(
        state,
        caller,
        "airlock:CreateWebhook",
        &webhook_arn(state, "*"),
    )
    .await?;
    let i: CreateInput = parse(input)?;
    let url = i.url.unwrap_or_default();
    crate::events::delivery::check_url(&url, state.config.webhooks.allow_plain_http)
        .map_err(ApiError::validation)?;
    let patterns = cloud::parse_patterns(&i.events).map_err(ApiError::validation)?;
    let description = i.description.unwrap_or_default();
    if description.chars().count() > 1024 {
        return Err(ApiError::validation(
            "Description must be at most 1024 characters.",
        ));
    }
    let (hook, secret) = state
        .store
        .create_webhook(&url, &patterns, &description, &caller.arn)
        .await?;
    Ok(json!({
        "WebhookId": hook.webhook_id,
        "Secret": secret,
        "Webhook": webhook_json(&hook),
    }))
}

async fn list(state: &AppState, caller: &Caller) -> Result<Value, ApiError> {
    authorize(
        state,
        caller,
        "airlock:ListWebhooks",
        &webhook_arn(state, "*"),
    )
    .await?;
    let hooks = state.store.list_webhooks().await?;
    Ok(json!({ "Webhooks": hooks.iter().map(webhook_json).collect::<Vec<_>>() }))
}

async fn delete(state: &AppState, caller: &Caller, input: Value) -> Result<Value, ApiError> {
    let i: IdInput = parse(input)?;
    let id = valid_id(i.webhook_id.as_deref())?;
    authorize(
        state,
        caller,
        "airlock:DeleteWebhook",
        &webhook_arn(state, id),
    )
    .await?;
    if !state.store.delete_webhook(id).await? {
        existing(state, id).await?;
    }
    Ok(json!({}))
}

async fn test(state: &AppState, caller: &Caller, input: Value) -> Result<Value, ApiError> {
    let i: IdInput = parse(input)?;
    let id = valid_id(i.webhook_id.as_deref())?;
    authorize(
        state,
        caller,
        "airlock:TestWebhook",
        &webhook_arn(state, id),
    )
    .await?;
    let hook = existing(state, id).await?;
    let ev = CloudEvent::new(
        state.events.source(),
        cloud::WEBHOOK_TEST,
        crate::store::now_ms(),
        Some(hook.webhook_id.clone()),
        json!({
            "WebhookId": hook.webhook_id,
            "RequestedBy": caller.arn,
            "Message": "A test event from Airlock: the endpoint is reachable and can check signatures.",
        }),
    );
    let Some(client) = state.events.http_client() else {
        return Err(ApiError::internal("webhook delivery is not running"));
    };
    let attempt =
        crate::events::delivery::send_test(&state.store, client, &state.config.webhooks, id, &ev)
            .await?;
    Ok(json!({
        "EventId": ev.id,
        "Delivered": attempt.delivered,
        "StatusCode": attempt.status,
        "Error": attempt.error,
        "NextAttemptDate": attempt.retry_at.map(timestamp),
    }))
}

async fn retry(state: &AppState, caller: &Caller, input: Value) -> Result<Value, ApiError> {
    let i: RetryInput = parse(input)?;
    let id = valid_id(i.webhook_id.as_deref())?;
    authorize(
        state,
        caller,
        "airlock:RetryWebhookDeliveries",
        &webhook_arn(state, id),
    )
    .await?;
    if i.delivery_ids.as_ref().is_some_and(|d| d.len() > 1000) {
        return Err(ApiError::validation(
            "DeliveryIds may name at most 1000 deliveries.",
        ));
    }
    existing(state, id).await?;
    let n = state
        .store
        .retry_dead(id, i.delivery_ids.as_deref())
        .await?;
    Ok(json!({ "Retried": n }))
}

async fn deliveries(state: &AppState, caller: &Caller, input: Value) -> Result<Value, ApiError> {
    let i: DeliveriesInput = parse(input)?;
    let id = match i.webhook_id.as_deref() {
        Some(id) => Some(valid_id(Some(id))?),
        None => None,
    };
    authorize(
        state,
        caller,
        "airlock:ListWebhookDeliveries",
        &webhook_arn(state, id.unwrap_or("*")),
    )
    .await?;
    let status = match i.status.as_deref() {
        None => None,
        Some(s @ ("Pending" | "Delivered" | "Dead")) => Some(s),
        Some(other) => {
            let shown: String = other.chars().take(32).collect();
            return Err(invalid(
                &shown,
                "status",
                "Member must satisfy enum value set: [Pending, Delivered, Dead]",
            ));
        }
    };
    let limit = i.max_results.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(invalid(
            &limit.to_string(),
            "maxResults",
            "Member must have value between 1 and 1000",
        ));
    }
    let rows = state.store.list_deliveries(id, status, limit).await?;
    Ok(json!({ "Deliveries": rows.iter().map(delivery_json).collect::<Vec<_>>() }))
}
