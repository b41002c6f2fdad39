//! Webhooks against a real HTTP receiver on 127.0.0.1: an endpoint that is down for a while and
//! then answers 500s still gets every event, signed, with duplicates only under the same id;
//! undelivered events survive a restart of the server; what keeps failing becomes a dead
//! letter; only authorised callers manage webhooks; `TestWebhook`; plain-HTTP URLs to other
//! hosts are refused; and the session log stream carries the session's changes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use airlock_client::session::SessionOptions;
use airlock_client::{ApiClient, ApiError};
use airlock_server::events::WebhookSettings;
use airlock_testkit::{eventually, free_port, TestServer, TestSession};

const T: Duration = Duration::from_secs(20);

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Hit {
    path: String,
    id: String,
    timestamp: String,
    signature: String,
    content_type: String,
    body: String,
    answered: u16,
}

#[derive(Clone, Default)]
struct Shared {
    /// The status the receiver answers with.
    status: Arc<Mutex<u16>>,
    hits: Arc<Mutex<Vec<Hit>>>,
}

async fn hook(State(s): State<Shared>, uri: Uri, headers: HeaderMap, body: String) -> Response {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let answered = *s.status.lock().unwrap();
    if answered == 0 {
        // Hangs: takes the request and never answers.
        tokio::time::sleep(Duration::from_secs(120)).await;
    }
    s.hits.lock().unwrap().push(Hit {
        path: uri.path().to_owned(),
        id: h("webhook-id"),
        timestamp: h("webhook-timestamp"),
        signature: h("webhook-signature"),
        content_type: h("content-type"),
        body,
        answered,
    });
    let status = StatusCode::from_u16(answered).unwrap();
    if status.is_redirection() {
        (status, [("location", "/elsewhere")]).into_response()
    } else {
        status.into_response()
    }
}

/// An HTTP endpoint on a fixed loopback port that can be down (nothing listens: connections
/// are refused) or up, answering a chosen status.
struct Receiver {
    port: u16,
    shared: Shared,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    fn new(status: u16) -> Receiver {
        let shared = Shared::default();
        *shared.status.lock().unwrap() = status;
        Receiver {
            port: free_port(),
            shared,
            task: None,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        let router = axum::Router::new()
            .fallback(hook)
            .with_state(self.shared.clone());
        // Connections live in this task's set: aborting it (down) drops kept-alive ones too.
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let svc = hyper_util::service::TowerToHyperService::new(router.clone());
                conns.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        }));
    }

    fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    fn answer(&self, status: u16) {
        *self.shared.status.lock().unwrap() = status;
    }

    fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().unwrap().clone()
    }

    /// The events answered with a 2xx, parsed, in arrival order (duplicates included).
    fn accepted(&self) -> Vec<Value> {
        self.hits()
            .iter()
            .filter(|h| (200..300).contains(&h.answered))
            .map(|h| serde_json::from_str(&h.body).unwrap())
            .collect()
    }

    /// The audit-record seqs accepted.
    fn audit_seqs(&self) -> BTreeSet<i64> {
        self.accepted()
            .iter()
            .filter(|e| e["type"] == "io.airlock.audit.record")
            .map(|e| e["data"]["Seq"].as_i64().unwrap())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
    }
}

fn fast(c: &mut airlock_server::ServerConfig) {
    c.webhooks = WebhookSettings {
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_millis(300),
        max_attempts: 10_000,
        max_age: Duration::from_secs(3600),
        timeout: Duration::from_secs(2),
        ..Default::default()
    };
}

/// Checks a request's signature as a receiver would: `t` is the timestamp header, `v1` the
/// HMAC-SHA-256 of `"<t>.<body>"` under the secret, and the id header is the event's id.
fn verify(secret: &str, hit: &Hit) {
    use hmac::Mac;
    let (t, v1) = hit
        .signature
        .strip_prefix("t=")
        .and_then(|r| r.split_once(",v1="))
        .unwrap_or_else(|| panic!("malformed signature {:?}", hit.signature));
    assert_eq!(t, hit.timestamp, "signed timestamp is the header's");
    let now = airlock_proto::unix_millis() as i64 / 1000;
    assert!(
        (now - t.parse::<i64>().unwrap()).abs() < 120,
        "fresh timestamp"
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", hit.body).as_bytes());
    mac.verify_slice(&hex::decode(v1).unwrap())
        .unwrap_or_else(|_| panic!("signature does not verify for {}", hit.body));
    let ev: Value = serde_json::from_str(&hit.body).unwrap();
    assert_eq!(ev["id"], hit.id.as_str(), "Webhook-Id is the event id");
    assert_eq!(hit.content_type, "application/cloudevents+json");
    assert_eq!(ev["specversion"], "1.0");
    assert_eq!(ev["datacontenttype"], "application/json");
    assert!(
        ev["source"].as_str().unwrap().starts_with("airlock://"),
        "{ev}"
    );
    assert!(ev["time"].as_str().unwrap().ends_with('Z'), "{ev}");
}

async fn create(api: &ApiClient, url: &str, events: Value) -> (String, String) {
    let out = api
        .call(
            "Airlock.CreateWebhook",
            &json!({ "Url": url, "Events": events, "Description": "test receiver" }),
        )
        .await
        .expect("CreateWebhook");
    (
        out["WebhookId"].as_str().unwrap().to_owned(),
        out["Secret"].as_str().unwrap().to_owned(),
    )
}

/// Deliveries of a webhook, read from the store directly: the API would add an audit record
/// (and so a delivery) per look.
async fn deliveries(server: &TestServer, id: &str, status: Option<&str>) -> Vec<Value> {
    let rows = server
        .state()
        .store
        .list_deliveries(Some(id), status, 1000)
        .await
        .unwrap();
    rows.iter()
        .map(|d| serde_json::to_value(d).unwrap())
        .collect()
}

/// The same through the API, as `airlock admin webhook deliveries` reads them.
async fn api_deliveries(server: &TestServer, id: &str, status: &str) -> Vec<Value> {
    let out = server
        .api()
        .call(
            "Airlock.ListWebhookDeliveries",
            &json!({ "WebhookId": id, "Status": status, "MaxResults": 1000 }),
        )
        .await
        .expect("ListWebhookDeliveries");
    out["Deliveries"].as_array().cloned().unwrap_or_default()
}

fn head_seq(server: &TestServer) -> i64 {
    server.state().store.audit_head().map_or(0, |h| h.seq)
}

fn service_code(e: ApiError) -> String {
    match e {
        ApiError::Service { code, .. } => code,
        other => panic!("expected a service error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_through_an_outage_and_500s_signed_with_one_id_each() {
    let server = TestServer::start_with(fast).await;
    let agent = server.agent().await;
    let api = server.api();
    let mut receiver = Receiver::new(500);
    let (hook_id, secret) = create(&api, &receiver.url(), json!(["*"])).await;
    let from_seq = head_seq(&server);

    // Events while the endpoint is down: a refused StartSession, a session that exits with a
    // status, one that is resumed and then terminated by the admin.
    let bob = ApiClient::new(server.user("bob", false).await).unwrap();
    let refused = bob
        .call(
            "AmazonSSM.StartSession",
            &json!({ "Target": agent.instance_id }),
        )
        .await
        .unwrap_err();
    assert_eq!(service_code(refused), "AccessDeniedException");
    let mut s = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    s.send("echo marker-$((6*7))\n").await;
    s.expect("marker-42", T).await;
    s.send("exit 3\n").await;
    let (outcome, _) = s.finish(T).await;
    assert_eq!(outcome.exit_code, Some(3));
    let mut s2 = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    let second = s2.grant.session_id.clone();
    s2.send("echo second-$((1+1))\n").await;
    s2.expect("second-2", T).await;
    api.call("AmazonSSM.ResumeSession", &json!({ "SessionId": second }))
        .await
        .expect("ResumeSession");
    api.call(
        "AmazonSSM.TerminateSession",
        &json!({ "SessionId": second }),
    )
    .await
    .expect("TerminateSession");
    server.wait_history(&second).await;

    // Down: every attempt so far failed to connect, and they are being retried.
    let pending = eventually("failed attempts", T, || async {
        let d = deliveries(&server, &hook_id, Some("Pending")).await;
        d.iter()
            .any(|d| d["Attempts"].as_i64().unwrap() >= 2)
            .then_some(d)
    })
    .await;
    assert!(
        pending
            .iter()
            .any(|d| d["LastError"] == "could not connect"),
        "{pending:#?}"
    );
    assert!(receiver.hits().is_empty());

    // Up, answering 500s for a while, then 2xx.
    receiver.up().await;
    eventually("500s answered", T, || async {
        (receiver.hits().len() >= 10).then_some(())
    })
    .await;
    receiver.answer(204);
    let to_seq = head_seq(&server);
    assert!(to_seq > from_seq + 5);
    eventually("every audit record delivered", T, || async {
        let seqs = receiver.audit_seqs();
        ((from_seq + 1)..=to_seq)
            .all(|s| seqs.contains(&s))
            .then_some(())
    })
    .await;
    eventually("no delivery left pending", T, || async {
        deliveries(&server, &hook_id, Some("Pending"))
            .await
            .is_empty()
            .then_some(())
    })
    .await;

    // Every request is signed; each id always carries the same bytes; duplicates happened
    // (the 500s) and only ever under the same id.
    let hits = receiver.hits();
    let mut bodies: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for h in &hits {
        assert_eq!(h.path, "/hook");
        verify(&secret, h);
        bodies
            .entry(h.id.clone())
            .or_default()
            .insert(h.body.clone());
    }
    assert!(bodies.values().all(|b| b.len() == 1), "one body per id");
    assert!(
        hits.len() > bodies.len(),
        "retries resent some events ({} requests, {} events)",
        hits.len(),
        bodies.len()
    );
    let accepted_ids: BTreeSet<String> = receiver
        .accepted()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let all = deliveries(&server, &hook_id, None).await;
    assert!(all.iter().all(|d| d["Status"] == "Delivered"), "{all:#?}");
    let delivered: BTreeSet<String> = all
        .iter()
        .map(|d| d["EventId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        delivered, accepted_ids,
        "every event delivered arrived, and nothing else"
    );

    // The session events, with the typed reason and who terminated.
    let accepted = receiver.accepted();
    let of = |kind: &str| -> Vec<Value> {
        let mut seen = BTreeSet::new();
        accepted
            .iter()
            .filter(|e| e["type"] == kind && seen.insert(e["id"].clone().to_string()))
            .cloned()
            .collect()
    };
    let started = of("io.airlock.session.started");
    assert_eq!(started.len(), 2, "{started:#?}");
    assert!(started
        .iter()
        .all(|e| e["data"]["Target"] == agent.instance_id.as_str()));
    let ended = of("io.airlock.session.ended");
    let exited = ended
        .iter()
        .find(|e| e["data"]["EndReason"]["Kind"] == "Exited")
        .unwrap_or_else(|| panic!("{ended:#?}"));
    assert_eq!(exited["data"]["EndReason"]["ExitCode"], 3);
    assert_eq!(exited["data"]["Target"], agent.instance_id.as_str());
    let terminated = of("io.airlock.session.terminated");
    assert_eq!(terminated.len(), 1, "{terminated:#?}");
    assert_eq!(terminated[0]["subject"], second.as_str());
    assert_eq!(
        terminated[0]["data"]["TerminatedBy"],
        "arn:aws:iam::000000000000:user/admin"
    );
    let resumed = of("io.airlock.session.resumed");
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0]["subject"], second.as_str());
    let denied = of("io.airlock.session.denied");
    assert_eq!(denied.len(), 1, "{denied:#?}");
    assert_eq!(
        denied[0]["data"]["Principal"],
        "arn:aws:iam::000000000000:user/bob"
    );
    assert_eq!(denied[0]["data"]["Target"], agent.instance_id.as_str());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_events_are_sent_after_a_restart() {
    let mut server = TestServer::start_with(fast).await;
    let mut receiver = Receiver::new(200);
    let (hook_id, secret) = create(&server.api(), &receiver.url(), json!(["audit.record"])).await;
    let from_seq = head_seq(&server);
    for _ in 0..5 {
        server
            .api()
            .call("Airlock.ListUsers", &json!({}))
            .await
            .unwrap();
    }
    let to_seq = head_seq(&server);
    eventually("attempts made while the endpoint is down", T, || async {
        let d = deliveries(&server, &hook_id, Some("Pending")).await;
        // The first is retried; the others wait behind it (one request per retry).
        (d.len() >= 5 && d.iter().any(|d| d["Attempts"].as_i64().unwrap() >= 2)).then_some(())
    })
    .await;
    server.stop().await;

    // The endpoint comes back while the server is stopped; the next run sends the backlog.
    receiver.up().await;
    let dir = server.dir.0.join("server");
    let mut config = airlock_server::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir,
        ..Default::default()
    };
    fast(&mut config);
    let running = airlock_server::start(config).await.expect("restarts");
    server.url = running.url.clone();
    server.admin.endpoint = running.url.clone();
    server.server = Some(running);
    eventually("the backlog delivered after the restart", T, || async {
        let seqs = receiver.audit_seqs();
        ((from_seq + 1)..=to_seq)
            .all(|s| seqs.contains(&s))
            .then_some(())
    })
    .await;
    for h in receiver.hits() {
        verify(&secret, &h);
    }
    // Only the subscribed type was sent.
    assert!(receiver
        .accepted()
        .iter()
        .all(|e| e["type"] == "io.airlock.audit.record"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_cut_by_a_stop_is_sent_at_once_after_the_restart() {
    let slow = |c: &mut airlock_server::ServerConfig| {
        fast(c);
        // A long attempt limit: its lease (twice that) would hold the row for 21 s.
        c.webhooks.timeout = Duration::from_secs(10);
    };
    let mut server = TestServer::start_with(slow).await;
    let mut receiver = Receiver::new(0);
    receiver.up().await;
    let (id, _) = create(&server.api(), &receiver.url(), json!(["audit.record"])).await;
    server
        .api()
        .call("Airlock.ListUsers", &json!({}))
        .await
        .unwrap();
    // The attempt is in flight (the receiver holds it) when the server stops.
    let pending = eventually("an attempt in flight", T, || async {
        let d = deliveries(&server, &id, Some("Pending")).await;
        (!d.is_empty() && d[0]["Attempts"] == 0).then_some(d)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let event_id = pending.last().unwrap()["EventId"]
        .as_str()
        .unwrap()
        .to_owned();
    server.stop().await;
    receiver.answer(200);
    let mut config = airlock_server::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: server.dir.0.join("server"),
        ..Default::default()
    };
    slow(&mut config);
    let started = std::time::Instant::now();
    server.server = Some(airlock_server::start(config).await.expect("restarts"));
    eventually(
        "the cut attempt sent again",
        Duration::from_secs(8),
        || async {
            receiver
                .accepted()
                .iter()
                .any(|e| e["id"] == event_id.as_str())
                .then_some(())
        },
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cut_by_a_server_stop_is_announced_ended_at_the_next_start() {
    let mut server = TestServer::start_with(fast).await;
    let mut receiver = Receiver::new(200);
    receiver.up().await;
    let (_, secret) = create(&server.api(), &receiver.url(), json!(["session.ended"])).await;
    let agent = server.agent().await;
    let mut s =
        TestSession::start(&server.api(), &agent.instance_id, SessionOptions::default()).await;
    let id = s.grant.session_id.clone();
    s.send("echo cut-$((5*5))\n").await;
    s.expect("cut-25", T).await;
    let target = agent.instance_id.clone();
    server.stop().await;
    agent.stop().await;
    let mut config = airlock_server::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: server.dir.0.join("server"),
        ..Default::default()
    };
    fast(&mut config);
    server.server = Some(airlock_server::start(config).await.expect("restarts"));
    let ended = eventually("session.ended after the restart", T, || async {
        receiver
            .accepted()
            .into_iter()
            .find(|e| e["subject"] == id.as_str())
    })
    .await;
    assert_eq!(ended["type"], "io.airlock.session.ended");
    assert_eq!(ended["data"]["Target"], target.as_str());
    assert_eq!(
        ended["data"]["Owner"],
        "arn:aws:iam::000000000000:user/admin"
    );
    assert_eq!(
        ended["data"]["EndReason"]["Kind"], "ServerRestarted",
        "{ended:#}"
    );
    assert_eq!(ended["data"]["Status"], "Failed");
    for h in receiver.hits() {
        verify(&secret, &h);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_that_keep_failing_become_dead_letters_and_redirects_are_not_followed() {
    let server = TestServer::start_with(|c| {
        fast(c);
        c.webhooks.max_attempts = 3;
    })
    .await;
    let mut failing = Receiver::new(500);
    failing.up().await;
    let (failing_id, _) = create(&server.api(), &failing.url(), json!(["audit.*"])).await;
    let mut redirecting = Receiver::new(302);
    redirecting.up().await;
    let (redirect_id, _) = create(&server.api(), &redirecting.url(), json!(["*"])).await;
    server
        .api()
        .call("Airlock.ListUsers", &json!({}))
        .await
        .unwrap();
    for id in [&failing_id, &redirect_id] {
        let dead = eventually("dead letters", T, || async {
            let d = deliveries(&server, id, Some("Dead")).await;
            (!d.is_empty()).then_some(d)
        })
        .await;
        for d in &dead {
            assert_eq!(d["Attempts"], 3, "{d:#}");
        }
    }
    let dead = api_deliveries(&server, &failing_id, "Dead").await;
    assert_eq!(dead[0]["LastStatusCode"], 500);
    assert_eq!(dead[0]["Status"], "Dead");
    assert!(dead[0]["NextAttemptDate"].is_null());
    assert!(
        dead[0]["LastError"].as_str().unwrap().contains("500"),
        "{dead:#?}"
    );
    let redirected = deliveries(&server, &redirect_id, Some("Dead")).await;
    assert_eq!(redirected[0]["LastStatus"], 302);
    assert!(
        redirecting.hits().iter().all(|h| h.path == "/hook"),
        "the redirect was not followed"
    );
    // Nothing is delivered; dead letters are listed apart and are not retried.
    let n = failing.hits().len();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pending = deliveries(&server, &failing_id, Some("Pending")).await;
    let still_dead = deliveries(&server, &failing_id, Some("Dead")).await;
    assert!(still_dead.len() >= dead.len());
    // Only events enqueued after the first dead letter may still be trying.
    assert!(
        failing.hits().len() <= n + 3 * pending.len() + 3 * (still_dead.len() - dead.len()),
        "dead letters are not retried"
    );
    // Once the endpoint is fixed, the dead letters can be sent again.
    failing.answer(200);
    let retried = server
        .api()
        .call(
            "Airlock.RetryWebhookDeliveries",
            &json!({ "WebhookId": failing_id }),
        )
        .await
        .unwrap();
    assert!(retried["Retried"].as_u64().unwrap() >= dead.len() as u64);
    eventually("dead letters delivered after a retry", T, || async {
        let dead = deliveries(&server, &failing_id, Some("Dead")).await;
        let pending = deliveries(&server, &failing_id, Some("Pending")).await;
        (dead.is_empty() && pending.is_empty()).then_some(())
    })
    .await;
    let bad = server
        .api()
        .call(
            "Airlock.ListWebhookDeliveries",
            &json!({ "Status": "Lost" }),
        )
        .await
        .unwrap_err();
    assert_eq!(service_code(bad), "ValidationException");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_endpoint_gets_one_request_per_retry_not_one_per_event() {
    let server = TestServer::start_with(fast).await;
    let mut receiver = Receiver::new(503);
    receiver.up().await;
    let (id, _) = create(&server.api(), &receiver.url(), json!(["audit.record"])).await;
    for _ in 0..8 {
        server
            .api()
            .call("Airlock.ListUsers", &json!({}))
            .await
            .unwrap();
    }
    let attempts = |rows: &[Value]| -> BTreeMap<i64, i64> {
        rows.iter()
            .map(|d| {
                (
                    d["DeliveryId"].as_i64().unwrap(),
                    d["Attempts"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    let n = receiver.hits().len();
    eventually("retries", T, || async {
        (receiver.hits().len() >= n + 3).then_some(())
    })
    .await;
    let before = attempts(&deliveries(&server, &id, None).await);
    let n = receiver.hits().len();
    eventually("more retries", T, || async {
        (receiver.hits().len() >= n + 8).then_some(())
    })
    .await;
    let after = attempts(&deliveries(&server, &id, None).await);
    assert_eq!(before.len(), 8);
    let moved = after
        .iter()
        .filter(|(k, v)| before.get(k) != Some(v))
        .count();
    assert!(
        moved <= 2,
        "the retries went to the first pending event only: {before:?} -> {after:?}"
    );
    let total: i64 = after.values().sum();
    assert!(
        total <= receiver.hits().len() as i64,
        "an attempt is a request"
    );
    // Once it is back, everything goes out, in order.
    receiver.answer(200);
    eventually("all delivered", T, || async {
        deliveries(&server, &id, Some("Pending"))
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    let seqs: Vec<i64> = receiver
        .accepted()
        .iter()
        .map(|e| e["data"]["Seq"].as_i64().unwrap())
        .collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    assert_eq!(seqs, sorted, "delivered in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_webhook_sends_a_signed_test_event_whatever_the_subscription() {
    let server = TestServer::start_with(fast).await;
    let mut receiver = Receiver::new(200);
    receiver.up().await;
    let (id, secret) = create(&server.api(), &receiver.url(), json!(["session.ended"])).await;
    let out = server
        .api()
        .call("Airlock.TestWebhook", &json!({ "WebhookId": id }))
        .await
        .expect("TestWebhook");
    assert_eq!(out["Delivered"], true, "{out:#}");
    assert_eq!(out["StatusCode"], 200);
    let hits = receiver.hits();
    assert_eq!(hits.len(), 1, "{hits:#?}");
    verify(&secret, &hits[0]);
    let ev: Value = serde_json::from_str(&hits[0].body).unwrap();
    assert_eq!(ev["type"], "io.airlock.webhook.test");
    assert_eq!(ev["id"], out["EventId"]);
    assert_eq!(
        ev["data"]["RequestedBy"],
        "arn:aws:iam::000000000000:user/admin"
    );
    let d = deliveries(&server, &id, Some("Delivered")).await;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["EventType"], "io.airlock.webhook.test");

    // A failing test says why and is retried like any delivery.
    receiver.answer(503);
    let out = server
        .api()
        .call("Airlock.TestWebhook", &json!({ "WebhookId": id }))
        .await
        .unwrap();
    assert_eq!(out["Delivered"], false);
    assert_eq!(out["StatusCode"], 503);
    receiver.answer(200);
    eventually("the failed test retried", T, || async {
        (deliveries(&server, &id, Some("Delivered")).await.len() == 2).then_some(())
    })
    .await;
    let unknown = server
        .api()
        .call(
            "Airlock.TestWebhook",
            &json!({ "WebhookId": "wh-0123456789abcdef0" }),
        )
        .await
        .unwrap_err();
    assert_eq!(service_code(unknown), "NoSuchEntity");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_authorised_callers_manage_webhooks_and_every_call_is_audited() {
    let server = TestServer::start_with(fast).await;
    let receiver = Receiver::new(200);
    let (id, secret) = create(&server.api(), &receiver.url(), json!(["*"])).await;
    let bob = ApiClient::new(server.user("bob", false).await).unwrap();
    for (op, input) in [
        (
            "CreateWebhook",
            json!({ "Url": receiver.url(), "Events": ["*"] }),
        ),
        ("ListWebhooks", json!({})),
        ("DeleteWebhook", json!({ "WebhookId": id })),
        ("TestWebhook", json!({ "WebhookId": id })),
        ("ListWebhookDeliveries", json!({})),
        ("ListWebhookDeliveries", json!({ "WebhookId": id })),
        ("RetryWebhookDeliveries", json!({ "WebhookId": id })),
    ] {
        let err = bob
            .call(&format!("Airlock.{op}"), &input)
            .await
            .unwrap_err();
        assert_eq!(service_code(err), "AccessDeniedException", "{op}");
    }
    let denied = server
        .state()
        .store
        .list_audit(
            &airlock_server::store::audit::AuditFilter {
                principal: Some("user/bob".into()),
                decision: Some("Deny".into()),
                ..Default::default()
            },
            None,
            100,
        )
        .await
        .unwrap();
    for action in [
        "airlock:CreateWebhook",
        "airlock:ListWebhooks",
        "airlock:DeleteWebhook",
        "airlock:TestWebhook",
        "airlock:ListWebhookDeliveries",
        "airlock:RetryWebhookDeliveries",
    ] {
        assert!(
            denied.iter().any(|r| r.event.action == action),
            "{action} denial audited"
        );
    }
    assert!(denied
        .iter()
        .any(|r| r.event.resource == format!("arn:aws:iam::000000000000:webhook/{id}")));

    // A policy on the webhook ARN grants just that.
    server
        .api()
        .call(
            "Airlock.PutUserPolicy",
            &json!({ "UserName": "bob", "PolicyName": "hooks", "PolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [{ "Effect": "Allow", "Action": "airlock:ListWebhooks",
                                "Resource": "arn:aws:iam::000000000000:webhook/*" }]
            } }),
        )
        .await
        .expect("PutUserPolicy");
    let listed = bob.call("Airlock.ListWebhooks", &json!({})).await.unwrap();
    assert_eq!(listed["Webhooks"][0]["WebhookId"], id.as_str());
    // The secret is shown once, never listed, and stored sealed.
    assert!(!listed.to_string().contains(&secret));
    let hooks = server
        .api()
        .call("Airlock.ListWebhooks", &json!({}))
        .await
        .unwrap();
    assert!(!hooks.to_string().contains(&secret));
    let db = server.dir.0.join("server/airlock.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let stored: String = sqlx::query_scalar("SELECT secret FROM webhooks WHERE webhook_id = ?")
        .bind(&id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        stored.starts_with("enc2:") && !stored.contains(&secret[6..]),
        "{stored}"
    );
    pool.close().await;
    assert_eq!(
        service_code(
            bob.call("Airlock.DeleteWebhook", &json!({ "WebhookId": id }))
                .await
                .unwrap_err()
        ),
        "AccessDeniedException"
    );

    // The admin deletes it; a second delete says it is gone; ids are checked before use.
    server
        .api()
        .call("Airlock.DeleteWebhook", &json!({ "WebhookId": id }))
        .await
        .unwrap();
    let gone = server
        .api()
        .call("Airlock.DeleteWebhook", &json!({ "WebhookId": id }))
        .await
        .unwrap_err();
    assert_eq!(service_code(gone), "NoSuchEntity");
    for bad in [
        "",
        "wh-",
        "wh-xyz",
        "../wh-1",
        "wh-1 OR 1=1",
        &"wh-0".repeat(40),
    ] {
        let err = server
            .api()
            .call("Airlock.DeleteWebhook", &json!({ "WebhookId": bad }))
            .await
            .unwrap_err();
        assert_eq!(service_code(err), "ValidationException", "{bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_other_hosts_and_bad_input_are_refused() {
    let server = TestServer::start_with(fast).await;
    let api = server.api();
    for (url, events) in [
        ("http://hooks.example.com/x", json!(["*"])),
        ("http://10.1.2.3:8080/x", json!(["*"])),
        ("http://127.0.0.1.nip.io/x", json!(["*"])),
        ("ftp://127.0.0.1/x", json!(["*"])),
        ("file:///etc/passwd", json!(["*"])),
        ("https://user:pw@hooks.example.com/", json!(["*"])),
        ("not a url", json!(["*"])),
        ("https://hooks.example.com/", json!([])),
        ("https://hooks.example.com/", json!(["session.exploded"])),
        ("https://hooks.example.com/", json!("*")),
    ] {
        let err = api
            .call(
                "Airlock.CreateWebhook",
                &json!({ "Url": url, "Events": events }),
            )
            .await
            .unwrap_err();
        let code = service_code(err);
        assert!(
            code == "ValidationException" || code == "SerializationException",
            "{url} {events}: {code}"
        );
    }
    let listed = api.call("Airlock.ListWebhooks", &json!({})).await.unwrap();
    assert_eq!(listed["Webhooks"], json!([]), "nothing was created");
    // https anywhere and plain http to loopback are fine.
    let ok = api
        .call(
            "Airlock.CreateWebhook",
            &json!({ "Url": "https://hooks.example.com/x", "Events": ["io.airlock.session.ended", "audit.*"] }),
        )
        .await
        .unwrap();
    assert_eq!(ok["Webhook"]["Events"], json!(["session.ended", "audit.*"]));
    api.call(
        "Airlock.CreateWebhook",
        &json!({ "Url": "http://localhost:9/x", "Events": ["*"] }),
    )
    .await
    .unwrap();

    // The operator's explicit flag allows plain HTTP elsewhere.
    let lax = TestServer::start_with(|c| {
        fast(c);
        c.webhooks.allow_plain_http = true;
    })
    .await;
    lax.api()
        .call(
            "Airlock.CreateWebhook",
            &json!({ "Url": "http://hooks.example.com/x", "Events": ["*"] }),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_log_stream_has_session_changes_and_io_lines() {
    let dir = airlock_testkit::TempDir::new();
    let log = dir.0.join("sessions.jsonl");
    let server = TestServer::start_with(|c| {
        c.session_log = Some(airlock_server::events::SessionLog::File(log.clone()));
    })
    .await;
    let agent = server.agent().await;
    let api = server.api();
    let mut s = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    let id = s.grant.session_id.clone();
    s.send("echo log-$((2*3))\n").await;
    s.expect("log-6", T).await;
    s.send("exit\n").await;
    s.finish(T).await;
    server.wait_history(&id).await;
    let lines = eventually("lifecycle lines", T, || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        lines
            .iter()
            .any(|l| l["kind"] == "session.ended")
            .then_some(lines)
    })
    .await;
    // The recorder's output events between the session's start and end, in order.
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"session.started"), "{lines:#?}");
    assert_eq!(kinds.last(), Some(&"session.ended"), "{lines:#?}");
    let middle = &lines[1..lines.len() - 1];
    assert!(middle.iter().all(|l| l["kind"] == "o"), "{lines:#?}");
    let output: String = middle.iter().map(|l| l["data"].as_str().unwrap()).collect();
    assert!(output.contains("log-6\r\n"), "{output:?}");
    for l in &lines {
        assert_eq!(l["session_id"], id.as_str());
        assert_eq!(l["owner"], "arn:aws:iam::000000000000:user/admin");
        assert_eq!(l["target"], agent.instance_id.as_str());
        assert!(l["time"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(
        lines[lines.len() - 1]["data"]["EndReason"]["Kind"],
        "Exited"
    );
    assert_eq!(server.state().events.session_log_dropped(), 0);
    agent.stop().await;
}

/// The `airlock` binary with a clean environment signing as `creds` against `endpoint`.
fn airlock_cli(home: &std::path::Path, endpoint: &str, creds: &Value) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(airlock_testkit::airlock_binary());
    c.env("HOME", home).env("AIRLOCK_LOG", "warn");
    for var in [
        "AIRLOCK_PROFILE",
        "AIRLOCK_CONFIG",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
    ] {
        c.env_remove(var);
    }
    c.env("AIRLOCK_ENDPOINT", endpoint)
        .env(
            "AIRLOCK_ACCESS_KEY_ID",
            creds["AccessKeyId"].as_str().unwrap(),
        )
        .env(
            "AIRLOCK_SECRET_ACCESS_KEY",
            creds["SecretAccessKey"].as_str().unwrap(),
        );
    c.kill_on_drop(true);
    c
}

/// Runs the CLI; returns (exit code, stdout, stderr).
async fn cli(
    home: &std::path::Path,
    endpoint: &str,
    creds: &Value,
    args: &[&str],
) -> (i32, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        airlock_cli(home, endpoint, creds).args(args).output(),
    )
    .await
    .expect("the CLI finishes")
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `airlock server` as a process on `port`, with fast webhook retries.
fn server_process(
    home: &std::path::Path,
    data: &std::path::Path,
    port: u16,
) -> tokio::process::Child {
    tokio::process::Command::new(airlock_testkit::airlock_binary())
        .env("HOME", home)
        .env("AIRLOCK_LOG", "warn")
        .args([
            "server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data)
        .args(["--test-webhook-retry-ms", "50"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn wait_healthy(endpoint: &str) {
    let client = reqwest::Client::new();
    eventually("the server answers", T, || async {
        client
            .get(format!("{endpoint}/healthz"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_server_loses_no_event_and_the_cli_manages_webhooks() {
    let home = airlock_testkit::TempDir::new();
    let data = home.0.join("data");
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut server = server_process(&home.0, &data, port);
    wait_healthy(&endpoint).await;
    let creds: Value =
        serde_json::from_slice(&std::fs::read(data.join("admin-credentials.json")).unwrap())
            .unwrap();
    let mut receiver = Receiver::new(200);

    let (code, out, err) = cli(
        &home.0,
        &endpoint,
        &creds,
        &[
            "--output",
            "json",
            "admin",
            "webhook",
            "create",
            "--url",
            &receiver.url(),
            "--events",
            "audit.record,session.*",
            "--description",
            "siem",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let id = created["WebhookId"].as_str().unwrap().to_owned();
    let secret = created["Secret"].as_str().unwrap().to_owned();
    assert_eq!(
        created["Webhook"]["Events"],
        json!(["audit.record", "session.*"])
    );
    for _ in 0..3 {
        let (code, _, err) = cli(&home.0, &endpoint, &creds, &["admin", "user", "list"]).await;
        assert_eq!(code, 0, "{err}");
    }
    // The endpoint is down: the deliveries wait, with their attempts counted.
    let pending = eventually("retried deliveries", T, || async {
        let (_, out, _) = cli(
            &home.0,
            &endpoint,
            &creds,
            &[
                "--output",
                "json",
                "admin",
                "webhook",
                "deliveries",
                &id,
                "--status",
                "Pending",
            ],
        )
        .await;
        let v: Value = serde_json::from_str(&out).ok()?;
        // The oldest is retried; the others wait behind it (one request per retry).
        let d = v["Deliveries"].as_array()?.clone();
        (d.len() >= 3 && d.iter().any(|d| d["Attempts"].as_i64() >= Some(2))).then_some(d)
    })
    .await;
    let expected: BTreeSet<String> = pending
        .iter()
        .map(|d| d["EventId"].as_str().unwrap().to_owned())
        .collect();

    // kill -9, the endpoint comes back, the server restarts: the backlog goes out.
    server.start_kill().unwrap();
    server.wait().await.unwrap();
    receiver.up().await;
    let mut server = server_process(&home.0, &data, port);
    wait_healthy(&endpoint).await;
    eventually(
        "the backlog delivered after kill -9",
        Duration::from_secs(45),
        || async {
            let got: BTreeSet<String> = receiver
                .accepted()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_owned())
                .collect();
            expected.is_subset(&got).then_some(())
        },
    )
    .await;
    for h in receiver.hits() {
        verify(&secret, &h);
    }

    // The other commands, as people run them.
    let (code, out, err) = cli(&home.0, &endpoint, &creds, &["admin", "webhook", "list"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&id) && out.contains("audit.record,session.*") && out.contains("siem"),
        "{out}"
    );
    assert!(!out.contains(&secret));
    let (code, out, err) = cli(
        &home.0,
        &endpoint,
        &creds,
        &["admin", "webhook", "test", &id],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("delivered (HTTP 200)"), "{out}");
    let (code, out, _) = cli(
        &home.0,
        &endpoint,
        &creds,
        &["admin", "webhook", "deliveries", "--dead"],
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().count(),
        1,
        "only the header: no dead letters\n{out}"
    );
    let (code, _, err) = cli(
        &home.0,
        &endpoint,
        &creds,
        &[
            "admin",
            "webhook",
            "create",
            "--url",
            "http://hooks.example.com/x",
            "--events",
            "*",
        ],
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("https://"), "{err}");
    let (code, out, err) = cli(
        &home.0,
        &endpoint,
        &creds,
        &["admin", "webhook", "retry", &id],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0 dead letters queued again"), "{out}");
    let (code, out, err) = cli(
        &home.0,
        &endpoint,
        &creds,
        &["admin", "webhook", "delete", &id],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deleted"), "{out}");
    receiver.down();
    let (code, _, err) = cli(
        &home.0,
        &endpoint,
        &creds,
        &["admin", "webhook", "test", &id],
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("NoSuchEntity"), "{err}");
    server.start_kill().unwrap();
    let _ = server.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_log_on_stdout_has_only_json_lines() {
    use tokio::io::AsyncBufReadExt;
    let home = airlock_testkit::TempDir::new();
    let data = home.0.join("data");
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(airlock_testkit::airlock_binary())
        .env("HOME", &home.0)
        .env("AIRLOCK_LOG", "warn")
        .args([
            "server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&data)
        .args(["--session-log", "-"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    wait_healthy(&endpoint).await;
    let creds: Value =
        serde_json::from_slice(&std::fs::read(data.join("admin-credentials.json")).unwrap())
            .unwrap();
    let admin = ApiClient::new(airlock_client::Profile {
        endpoint: endpoint.clone(),
        access_key_id: creds["AccessKeyId"].as_str().unwrap().into(),
        secret_access_key: creds["SecretAccessKey"].as_str().unwrap().into(),
        region: "us-east-1".into(),
        ca_file: None,
        session_token: None,
    })
    .unwrap();
    admin
        .call("Airlock.CreateUser", &json!({ "UserName": "eve" }))
        .await
        .unwrap();
    let key = admin
        .call("Airlock.CreateAccessKey", &json!({ "UserName": "eve" }))
        .await
        .unwrap();
    let eve = ApiClient::new(airlock_client::Profile {
        access_key_id: key["AccessKey"]["AccessKeyId"].as_str().unwrap().into(),
        secret_access_key: key["AccessKey"]["SecretAccessKey"].as_str().unwrap().into(),
        ..admin.profile().clone()
    })
    .unwrap();
    let err = eve
        .call(
            "AmazonSSM.StartSession",
            &json!({ "Target": "mi-0123456789abcdef0" }),
        )
        .await
        .unwrap_err();
    assert_eq!(service_code(err), "AccessDeniedException");
    let line = tokio::time::timeout(T, lines.next_line())
        .await
        .expect("a line in time")
        .unwrap()
        .expect("a line");
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(v["kind"], "session.denied", "{v}");
    assert_eq!(v["owner"], "arn:aws:iam::000000000000:user/eve");
    assert_eq!(v["target"], "mi-0123456789abcdef0");
    child.start_kill().unwrap();
    let _ = child.wait().await;
}

/// A StartSession refused by a concurrency limit (not by policy) is a denial too: audited
/// with decision Deny and delivered as `session.denied`, signed, naming who, where and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_refused_by_a_limit_becomes_session_denied() {
    let server = TestServer::start_with(fast).await;
    let agent = server.agent().await;
    let api = server.api();
    let mut receiver = Receiver::new(200);
    receiver.up().await;
    let (_, secret) = create(&api, &receiver.url(), json!(["session.denied"])).await;
    let mut p = (*server.state().preferences.get()).clone();
    p.max_sessions_per_user = Some(1);
    server.state().preferences.set(p);

    let mut s = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    s.send("echo one-$((0+1))\n").await;
    s.expect("one-1", T).await;
    let refused = api
        .call(
            "AmazonSSM.StartSession",
            &json!({ "Target": agent.instance_id }),
        )
        .await
        .unwrap_err();
    assert_eq!(service_code(refused), "ResourceLimitExceededException");

    let denied = eventually("session.denied delivered", T, || async {
        let hits = receiver.hits();
        hits.iter()
            .find(|h| h.body.contains("io.airlock.session.denied"))
            .cloned()
    })
    .await;
    verify(&secret, &denied);
    let ev: Value = serde_json::from_str(&denied.body).unwrap();
    assert_eq!(ev["data"]["Action"], "ssm:StartSession", "{ev}");
    assert_eq!(
        ev["data"]["Principal"],
        "arn:aws:iam::000000000000:user/admin"
    );
    assert_eq!(ev["data"]["Target"], agent.instance_id.as_str(), "{ev}");
    let reason = ev["data"]["Reason"].as_str().unwrap();
    assert!(
        reason.contains("ResourceLimitExceededException")
            && reason.contains("max_sessions_per_user is 1"),
        "{reason}"
    );
    // On the audit trail as a Deny of StartSession.
    let records = server
        .state()
        .store
        .list_audit(
            &airlock_server::store::audit::AuditFilter {
                action: Some("ssm:StartSession".into()),
                ..Default::default()
            },
            None,
            100,
        )
        .await
        .unwrap();
    assert!(
        records
            .iter()
            .any(|r| r.event.decision == "Deny" && r.event.statement.contains("Session limit")),
        "{records:#?}"
    );
    // Only the refusal was denied: the session that ran was not.
    assert_eq!(
        receiver
            .hits()
            .iter()
            .filter(|h| h.body.contains("io.airlock.session.denied"))
            .count(),
        1
    );
    s.send("exit\n").await;
    s.finish(T).await;
    agent.stop().await;
}

/// The session log file rotated as logrotate does by default (`create`: renamed away, a new
/// empty file at the path): the server's lines after the rotation go to the new file, the
/// moved one keeps those before, none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_log_file_follows_logrotate() {
    let dir = airlock_testkit::TempDir::new();
    let log = dir.0.join("sessions.jsonl");
    let server = TestServer::start_with(|c| {
        c.session_log = Some(airlock_server::events::SessionLog::File(log.clone()));
    })
    .await;
    let agent = server.agent().await;
    let api = server.api();
    let text = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let mut s = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    let id = s.grant.session_id.clone();
    s.send("echo before-$((1+2))\n").await;
    s.expect("before-3", T).await;
    eventually("the line before the rotation", T, || async {
        text(&log).contains("before-3").then_some(())
    })
    .await;

    let rotated = dir.0.join("sessions.jsonl.1");
    std::fs::rename(&log, &rotated).unwrap();
    std::fs::write(&log, b"").unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    s.send("echo after-$((2+2))\n").await;
    s.expect("after-4", T).await;
    s.send("exit\n").await;
    s.finish(T).await;
    server.wait_history(&id).await;
    eventually(
        "the lines after the rotation in the new file",
        T,
        || async {
            let now = text(&log);
            (now.contains("after-4") && now.contains("session.ended")).then_some(())
        },
    )
    .await;
    let old = text(&rotated);
    assert!(
        old.contains("before-3") && old.contains("session.started"),
        "{old}"
    );
    assert!(!old.contains("after-4"), "{old}");
    assert!(!text(&log).contains("before-3"));
    agent.stop().await;
}
