//! `airlock admin webhook …`: endpoints that receive Airlock's events (CloudEvents, signed
//! with HMAC-SHA-256), and their deliveries and dead letters. Thin wrappers over
//! `Airlock.CreateWebhook` and friends.

use clap::Subcommand;
use serde_json::{json, Value};

use airlock_client::{ApiClient, Profile};

use crate::output::{print, s, ts};
use crate::Format;

#[derive(Subcommand, Debug)]
pub enum WebhookCommand {
    /// Create a webhook; its signing secret is shown once.
    Create {
        /// Where events are POSTed (https://, or http:// to a loopback host).
        #[arg(long)]
        url: String,
        /// Event types, comma-separated: session.started, session.resumed, session.ended,
        /// session.terminated, session.denied, audit.record, session.*, audit.* or *.
        #[arg(long, value_delimiter = ',', required = true)]
        events: Vec<String>,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
    },
    /// List webhooks.
    List,
    /// Delete a webhook (its pending deliveries are dropped).
    Delete {
        /// Webhook id (wh-…).
        webhook_id: String,
    },
    /// Send a test event now and say what the endpoint answered.
    Test {
        /// Webhook id (wh-…).
        webhook_id: String,
    },
    /// Send dead letters again (all of the webhook's, or the ones named).
    Retry {
        /// Webhook id (wh-…).
        webhook_id: String,
        /// Only these deliveries (ids from `deliveries`).
        #[arg(long = "delivery")]
        deliveries: Vec<i64>,
    },
    /// Deliveries, newest first: pending, delivered and dead letters.
    Deliveries {
        /// Only this webhook's.
        webhook_id: Option<String>,
        /// Only dead letters (deliveries that ran out of attempts or time).
        #[arg(long, conflicts_with = "status")]
        dead: bool,
        /// Only deliveries in this status (Pending, Delivered, Dead).
        #[arg(long)]
        status: Option<String>,
        /// At most this many (1–1000).
        #[arg(long, default_value_t = 100)]
        max: u32,
    },
}

/// Runs `airlock admin webhook …`.
pub async fn webhook(c: WebhookCommand, format: Format) -> anyhow::Result<i32> {
    let api = ApiClient::new(Profile::load()?)?;
    match c {
        WebhookCommand::Create {
            url,
            events,
            description,
        } => {
            let mut input = json!({ "Url": url, "Events": events });
            if let Some(d) = description {
                input["Description"] = json!(d);
            }
            let out = api.call("Airlock.CreateWebhook", &input).await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&out)?),
                Format::Text => {
                    println!("Webhook {} created.", s(&out, "WebhookId"));
                    println!("Signing secret (shown only now): {}", s(&out, "Secret"));
                    println!(
                        "Each request carries Webhook-Id, Webhook-Timestamp and Webhook-Signature: \
                         t=<timestamp>,v1=<hex HMAC-SHA-256 of \"<timestamp>.<body>\" keyed with the secret>."
                    );
                }
            }
        }
        WebhookCommand::List => {
            let out = api.call("Airlock.ListWebhooks", &json!({})).await?;
            let rows = list(&out, "Webhooks")
                .iter()
                .map(|w| {
                    vec![
                        s(w, "WebhookId"),
                        s(w, "Url"),
                        w["Events"]
                            .as_array()
                            .map(|e| {
                                e.iter()
                                    .filter_map(Value::as_str)
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                            .unwrap_or_default(),
                        ts(w, "CreateDate"),
                        s(w, "Description"),
                    ]
                })
                .collect();
            print(
                format,
                &out,
                &["WEBHOOK", "URL", "EVENTS", "CREATED", "DESCRIPTION"],
                rows,
            );
        }
        WebhookCommand::Delete { webhook_id } => {
            api.call("Airlock.DeleteWebhook", &json!({ "WebhookId": webhook_id }))
                .await?;
            if format == Format::Json {
                println!("{{}}");
            } else {
                println!("Webhook {webhook_id} deleted.");
            }
        }
        WebhookCommand::Test { webhook_id } => {
            let out = api
                .call("Airlock.TestWebhook", &json!({ "WebhookId": webhook_id }))
                .await?;
            let delivered = out["Delivered"].as_bool().unwrap_or(false);
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&out)?),
                Format::Text if delivered => println!(
                    "Test event {} delivered (HTTP {}).",
                    s(&out, "EventId"),
                    s(&out, "StatusCode")
                ),
                Format::Text => println!(
                    "Test event {} not delivered: {} (it is retried like any delivery).",
                    s(&out, "EventId"),
                    s(&out, "Error")
                ),
            }
            return Ok(if delivered { 0 } else { 1 });
        }
        WebhookCommand::Retry {
            webhook_id,
            deliveries,
        } => {
            let mut input = json!({ "WebhookId": webhook_id });
            if !deliveries.is_empty() {
                input["DeliveryIds"] = json!(deliveries);
            }
            let out = api.call("Airlock.RetryWebhookDeliveries", &input).await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&out)?),
                Format::Text => println!("{} dead letters queued again.", s(&out, "Retried")),
            }
        }
        WebhookCommand::Deliveries {
            webhook_id,
            dead,
            status,
            max,
        } => {
            let mut input = json!({ "MaxResults": max });
            if let Some(id) = webhook_id {
                input["WebhookId"] = json!(id);
            }
            if let Some(st) = status.or_else(|| dead.then(|| "Dead".to_owned())) {
                input["Status"] = json!(st);
            }
            let out = api.call("Airlock.ListWebhookDeliveries", &input).await?;
            let rows = list(&out, "Deliveries")
                .iter()
                .map(|d| {
                    vec![
                        s(d, "DeliveryId"),
                        s(d, "WebhookId"),
                        s(d, "EventType")
                            .strip_prefix("io.airlock.")
                            .map(str::to_owned)
                            .unwrap_or_else(|| s(d, "EventType")),
                        s(d, "EventId"),
                        s(d, "Status"),
                        s(d, "Attempts"),
                        s(d, "LastStatusCode"),
                        ts(d, "CreateDate"),
                        s(d, "LastError"),
                    ]
                })
                .collect();
            print(
                format,
                &out,
                &[
                    "ID",
                    "WEBHOOK",
                    "TYPE",
                    "EVENT",
                    "STATUS",
                    "ATTEMPTS",
                    "HTTP",
                    "CREATED",
                    "LAST ERROR",
                ],
                rows,
            );
        }
    }
    Ok(0)
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v[key].as_array().map(Vec::as_slice).unwrap_or_default()
}
