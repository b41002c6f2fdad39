//! The webhook delivery worker: signs each event and POSTs it, retries with exponential
//! backoff and jitter, and turns what keeps failing into dead letters.
//!
//! Each request carries `Webhook-Id` (the CloudEvent id, the de-duplication key),
//! `Webhook-Timestamp` (the attempt's Unix time) and
//! `Webhook-Signature: t=<unix>,v1=<hex HMAC-SHA-256(secret, "<t>.<body>")>`. Redirects are
//! not followed (a 3xx is a failure), and every attempt has a time limit.

use std::sync::Arc;
use std::time::Duration;

use super::outbox::Due;
use super::WebhookSettings;
use crate::store::{now_ms, Store};

/// Why a webhook URL is refused.
pub fn check_url(url: &str, allow_plain_http: bool) -> Result<reqwest::Url, String> {
    if url.len() > 2048 {
        return Err("Url is longer than 2048 characters.".into());
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("Url is not a valid URL: {e}."))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("Url must not carry credentials (user:password@); the signature authenticates the server.".into());
    }
    let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else {
        return Err("Url must name a host.".into());
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if loopback || allow_plain_http => Ok(parsed),
        "http" => Err(
            "Url must be https:// (plain http:// is accepted only for loopback hosts, or when the server runs with --allow-plain-http-webhooks)."
                .into(),
        ),
        other => Err(format!("Url scheme {other}:// is not supported; use https://.")),
    }
}

/// `t=<unix>,v1=<hex HMAC-SHA-256(secret, "<t>.<body>")>`.
pub fn signature(secret: &str, timestamp: i64, body: &str) -> String {
    use hmac::Mac;
    // HMAC takes keys of any length; the fallback is never reached.
    let mut mac = match <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// The delay before retry number `attempt` (1 = after the first failure): `base·2^(n-1)`,
/// capped, minus a random part of up to half (so endpoints coming back are not stampeded).
pub fn backoff(settings: &WebhookSettings, attempt: u32) -> Duration {
    use rand::Rng;
    let exp = attempt.saturating_sub(1).min(30);
    let full = settings
        .retry_base
        .saturating_mul(1u32 << exp)
        .min(settings.retry_max);
    let half = full / 2;
    let jitter = rand::thread_rng().gen_range(0.0..=1.0);
    half + half.mul_f64(jitter)
}

/// The HTTP client of deliveries: no redirects, a time limit per attempt.
pub fn http_client(settings: &WebhookSettings) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .user_agent(concat!("airlock-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// What one attempt did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// A 2xx came back.
    pub delivered: bool,
    /// The HTTP status, when one came back.
    pub status: Option<u16>,
    /// Why it failed (empty on success).
    pub error: String,
    /// When it is tried again (epoch ms); `None` when delivered or dead.
    pub retry_at: Option<i64>,
}

impl Attempt {
    /// Whether the endpoint itself is unavailable (unreachable, timed out, overloaded), rather
    /// than refusing this one event: the webhook's other due rows then wait too.
    fn endpoint_unavailable(&self) -> bool {
        !self.delivered && matches!(self.status, None | Some(429 | 502 | 503 | 504))
    }
}

/// Sends one delivery once and records the outcome (delivered, retry later, or dead).
pub(crate) async fn attempt(
    store: &Store,
    client: &reqwest::Client,
    settings: &WebhookSettings,
    due: &Due,
) -> Attempt {
    let result = match store.open_webhook_secret(&due.webhook_id, &due.sealed_secret) {
        Err(e) => Attempt {
            delivered: false,
            status: None,
            error: format!("the webhook's secret does not open: {e}"),
            retry_at: None,
        },
        Ok(secret) => post(client, &secret, due).await,
    };
    let attempts = u32::try_from(due.attempts)
        .unwrap_or(u32::MAX)
        .saturating_add(1);
    let now = now_ms();
    let age = Duration::from_millis(u64::try_from(now - due.created_at).unwrap_or(0));
    let mut result = result;
    let retry_at =
        if result.delivered || attempts >= settings.max_attempts || age >= settings.max_age {
            None
        } else {
            let wait = backoff(settings, attempts);
            Some(now + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2))
        };
    if !result.delivered {
        let dead = retry_at.is_none();
        tracing::warn!(
            webhook_id = due.webhook_id,
            event_id = due.event_id,
            attempts,
            dead,
            "webhook delivery failed: {}",
            result.error
        );
    }
    result.retry_at = retry_at;
    if let Err(e) = store
        .record_attempt(
            due.delivery_id,
            result.delivered,
            result.status,
            &result.error,
            retry_at,
        )
        .await
    {
        tracing::error!(
            webhook_id = due.webhook_id,
            "could not record a webhook delivery attempt: {e}"
        );
    }
    result
}

async fn post(client: &reqwest::Client, secret: &str, due: &Due) -> Attempt {
    let t = now_ms() / 1000;
    let sent = client
        .post(&due.url)
        .header("content-type", "application/cloudevents+json")
        .header("webhook-id", &due.event_id)
        .header("webhook-timestamp", t.to_string())
        .header("webhook-signature", signature(secret, t, &due.body))
        .body(due.body.clone())
        .send()
        .await;
    match sent {
        Ok(resp) => {
            let status = resp.status();
            let delivered = status.is_success();
            Attempt {
                delivered,
                status: Some(status.as_u16()),
                error: if delivered {
                    String::new()
                } else {
                    format!("the endpoint answered {status}")
                },
                retry_at: None,
            }
        }
        Err(e) => Attempt {
            delivered: false,
            status: None,
            error: if e.is_timeout() {
                "timed out".into()
            } else if e.is_connect() {
                "could not connect".into()
            } else {
                // Without the URL: it may carry a token in its query.
                e.without_url().to_string()
            },
            retry_at: None,
        },
    }
}

/// Sends one webhook's due rows in order. When the endpoint is unavailable, the webhook is held
/// until the failed row's retry and the rest wait without spending an attempt each: an
/// endpoint that is down gets one request per retry, not one per pending event.
async fn send_in_order(
    store: &Store,
    client: &reqwest::Client,
    settings: &WebhookSettings,
    rows: Vec<Due>,
) {
    let mut rows = rows.into_iter();
    while let Some(d) = rows.next() {
        let a = attempt(store, client, settings, &d).await;
        if a.endpoint_unavailable() {
            let wait = i64::try_from(backoff(settings, 1).as_millis()).unwrap_or(1000);
            let at = a.retry_at.unwrap_or_else(|| now_ms() + wait);
            let rest: Vec<i64> = rows.map(|d| d.delivery_id).collect();
            let held = match store.block_webhook(&d.webhook_id, at).await {
                Ok(()) => store.defer_deliveries(&rest, at).await,
                Err(e) => Err(e),
            };
            if let Err(e) = held {
                tracing::error!(webhook_id = d.webhook_id, "could not defer deliveries: {e}");
            }
            return;
        }
    }
}

/// The lease taken on a row while it is being sent: longer than any attempt can take.
fn lease(settings: &WebhookSettings) -> i64 {
    i64::try_from((settings.timeout * 2 + Duration::from_secs(1)).as_millis()).unwrap_or(60_000)
}

/// Sends a test event to one webhook now, recording it like any delivery (a failure is
/// retried later as usual).
pub(crate) async fn send_test(
    store: &Store,
    client: &reqwest::Client,
    settings: &WebhookSettings,
    webhook_id: &str,
    ev: &super::CloudEvent,
) -> Result<Attempt, crate::store::StoreError> {
    let id = store
        .enqueue_test(webhook_id, ev, now_ms() + lease(settings))
        .await?;
    let due = store
        .delivery_to_send(id)
        .await?
        .ok_or_else(|| crate::store::StoreError::NotFound(format!("webhook {webhook_id}")))?;
    let result = attempt(store, client, settings, &due).await;
    if result.delivered {
        // It answers again: what waited for it may go now.
        store.block_webhook(webhook_id, 0).await?;
    }
    store.events().wake();
    Ok(result)
}

/// Runs the delivery worker until shutdown.
pub fn spawn(state: Arc<crate::state::AppState>, client: reqwest::Client) {
    let tracker = state.tasks.clone();
    tracker.spawn(async move {
        run(&state, &client).await;
    });
}

async fn run(state: &crate::state::AppState, client: &reqwest::Client) {
    let settings = &state.config.webhooks;
    let store = &state.store;
    let idle = Duration::from_secs(30);
    let mut last_prune = 0i64;
    loop {
        if state.shutdown.is_cancelled() {
            return;
        }
        let now = now_ms();
        if now - last_prune > 3_600_000 {
            last_prune = now;
            let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            match store
                .prune_deliveries(
                    now.saturating_sub(ms(settings.retention)),
                    now.saturating_sub(ms(settings.dead_retention)),
                )
                .await
            {
                Ok(n) if n > 0 => {
                    tracing::info!("removed {n} delivered webhook rows past retention")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("could not prune webhook deliveries: {e}"),
            }
        }
        let due = match store.due_deliveries(now, 64).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("could not read the webhook outbox: {e}");
                Vec::new()
            }
        };
        if !due.is_empty() {
            let until = now + lease(settings);
            let mut leased = Vec::with_capacity(due.len());
            for d in due {
                if matches!(
                    store.lease_delivery(d.delivery_id, now, until).await,
                    Ok(true)
                ) {
                    leased.push(d);
                }
            }
            let leased_ids: Vec<i64> = leased.iter().map(|d| d.delivery_id).collect();
            // One task per webhook, sending its rows in order: a slow or unreachable endpoint
            // holds up only its own deliveries.
            let mut by_hook: Vec<Vec<Due>> = Vec::new();
            for d in leased {
                match by_hook.iter_mut().find(|v| v[0].webhook_id == d.webhook_id) {
                    Some(v) => v.push(d),
                    None => by_hook.push(vec![d]),
                }
            }
            let mut sends = tokio::task::JoinSet::new();
            for rows in by_hook {
                while sends.len() >= settings.concurrency.max(1) {
                    sends.join_next().await;
                }
                let (store, client, settings) = (store.clone(), client.clone(), settings.clone());
                sends.spawn(async move { send_in_order(&store, &client, &settings, rows).await });
            }
            tokio::select! {
                _ = async { while sends.join_next().await.is_some() {} } => {}
                _ = state.shutdown.cancelled() => {
                    // Unfinished attempts are dropped; their rows are sent again at the next
                    // start (a row whose request went out may arrive twice, under one id).
                    sends.abort_all();
                    if let Err(e) = store.release_leases(&leased_ids, until).await {
                        tracing::warn!("could not release webhook leases: {e}");
                    }
                    return;
                }
            }
            continue;
        }
        let wait = match store.next_delivery_due().await {
            Ok(Some(at)) => Duration::from_millis(u64::try_from(at - now).unwrap_or(0)).min(idle),
            _ => idle,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = store.events().woken() => {}
            _ = state.shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_plain_http_only_to_loopback() {
        for ok in [
            "https://hooks.example.com/x",
            "http://127.0.0.1:9/x",
            "http://localhost:8080/",
            "http://[::1]:1/",
            "https://10.0.0.1/",
        ] {
            assert!(check_url(ok, false).is_ok(), "{ok}");
        }
        for bad in [
            "http://hooks.example.com/x",
            "http://10.0.0.1/",
            "http://localhost.evil.com/",
            "http://127.0.0.1.nip.io/",
            "ftp://127.0.0.1/",
            "file:///etc/passwd",
            "https://user:pw@hooks.example.com/",
            "not a url",
            "",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad}");
        }
        assert!(check_url("http://hooks.example.com/x", true).is_ok());
        assert!(check_url(&format!("https://a.com/{}", "x".repeat(3000)), false).is_err());
    }

    #[test]
    fn signature_is_hmac_of_timestamp_and_body() {
        // Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
        let sig = signature("whsec_test", 1_700_000_000, r#"{"a":1}"#);
        assert_eq!(
            sig,
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
        assert_ne!(sig, signature("whsec_other", 1_700_000_000, r#"{"a":1}"#));
        assert_ne!(sig, signature("whsec_test", 1_700_000_001, r#"{"a":1}"#));
    }

    #[test]
    fn backoff_doubles_with_jitter_and_a_cap() {
        let s = WebhookSettings {
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            ..Default::default()
        };
        for _ in 0..50 {
            let d1 = backoff(&s, 1);
            assert!(d1 >= Duration::from_millis(500) && d1 <= Duration::from_secs(1));
            let d4 = backoff(&s, 4);
            assert!(d4 >= Duration::from_secs(4) && d4 <= Duration::from_secs(8));
            let d40 = backoff(&s, 40);
            assert!(d40 >= Duration::from_secs(30) && d40 <= Duration::from_secs(60));
        }
    }
}
