//! Bad API requests: each gets the AWS JSON 1.1 error shape (HTTP status, `x-amzn-ErrorType`,
//! `__type`, `message`), is logged with its request id, and leaves the server serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;

use airlock_testkit::TestServer;
use common::{capture_logs, corrupt_signature, send_raw, wait_log_line, RawRequest, RawResponse};

async fn started() -> TestServer {
    capture_logs();
    TestServer::start().await
}

fn admin_key(s: &TestServer) -> (&str, &str) {
    (&s.admin.access_key_id, &s.admin.secret_access_key)
}

/// The server still answers a normal signed request, promptly.
async fn still_serves(server: &TestServer) {
    let out = tokio::time::timeout(
        Duration::from_secs(5),
        server
            .api()
            .call("AmazonSSM.DescribeInstanceInformation", &json!({})),
    )
    .await
    .expect("the server answers in time")
    .expect("a normal request still succeeds");
    assert!(out["InstanceInformationList"].is_array());
}

/// The refusal was logged with the request id the caller got, and its error code.
async fn logged(r: &RawResponse, code: &str) {
    let id = r.request_id.clone().expect("a request id");
    wait_log_line(&[&id, code]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_authorization_is_missing_authentication_token() {
    let server = started().await;
    let r = send_raw(
        &server.url,
        RawRequest {
            key: None,
            ..RawRequest::new(
                "AmazonSSM.DescribeInstanceInformation",
                json!({}),
                admin_key(&server),
            )
        },
        |_, _| {},
    )
    .await;
    r.assert_error(
        400,
        "MissingAuthenticationTokenException",
        "Missing Authentication Token",
    );
    logged(&r, "MissingAuthenticationTokenException").await;
    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_signature_is_invalid_signature() {
    let server = started().await;
    let r = send_raw(
        &server.url,
        RawRequest::new(
            "AmazonSSM.DescribeInstanceInformation",
            json!({}),
            admin_key(&server),
        ),
        |h, _| corrupt_signature(h),
    )
    .await;
    r.assert_error(
        400,
        "InvalidSignatureException",
        "The request signature we calculated does not match",
    );
    logged(&r, "InvalidSignatureException").await;

    // The right key with the wrong secret, and a body changed after signing: same answer.
    let r = send_raw(
        &server.url,
        RawRequest::new(
            "AmazonSSM.DescribeInstanceInformation",
            json!({}),
            (&server.admin.access_key_id, "not-the-secret"),
        ),
        |_, _| {},
    )
    .await;
    r.assert_error(400, "InvalidSignatureException", "does not match");
    let r = send_raw(
        &server.url,
        RawRequest::new(
            "AmazonSSM.DescribeSessions",
            json!({ "State": "Active" }),
            admin_key(&server),
        ),
        |_, body| *body = json!({ "State": "History" }).to_string().into_bytes(),
    )
    .await;
    r.assert_error(400, "InvalidSignatureException", "does not match");
    // A target header changed after signing.
    let r = send_raw(
        &server.url,
        RawRequest::new(
            "AmazonSSM.DescribeInstanceInformation",
            json!({}),
            admin_key(&server),
        ),
        |h, _| {
            for (k, v) in h.iter_mut() {
                if k == "x-amz-target" {
                    *v = "AmazonSSM.DeregisterManagedInstance".into();
                }
            }
        },
    )
    .await;
    r.assert_error(400, "InvalidSignatureException", "does not match");
    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_signed_six_minutes_ago_is_refused_as_expired() {
    let server = started().await;
    let mut req = RawRequest::new(
        "AmazonSSM.DescribeInstanceInformation",
        json!({}),
        admin_key(&server),
    );
    req.time -= Duration::from_secs(6 * 60);
    let r = send_raw(&server.url, req, |_, _| {}).await;
    r.assert_error(400, "InvalidSignatureException", "Signature expired");
    logged(&r, "InvalidSignatureException").await;

    // And one from 6 minutes in the future.
    let mut req = RawRequest::new(
        "AmazonSSM.DescribeInstanceInformation",
        json!({}),
        admin_key(&server),
    );
    req.time += Duration::from_secs(6 * 60);
    let r = send_raw(&server.url, req, |_, _| {}).await;
    r.assert_error(
        400,
        "InvalidSignatureException",
        "Signature not yet current",
    );

    // Within the allowed skew it is fine.
    let mut req = RawRequest::new(
        "AmazonSSM.DescribeInstanceInformation",
        json!({}),
        admin_key(&server),
    );
    req.time -= Duration::from_secs(4 * 60);
    let r = send_raw(&server.url, req, |_, _| {}).await;
    assert_eq!(r.status, 200, "{r:?}");
    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_access_key_is_unrecognized_client() {
    let server = started().await;
    let r = send_raw(
        &server.url,
        RawRequest::new(
            "AmazonSSM.DescribeInstanceInformation",
            json!({}),
            ("AKIAUNKNOWNUNKNOWN00", "secret"),
        ),
        |_, _| {},
    )
    .await;
    r.assert_error(
        400,
        "UnrecognizedClientException",
        "The security token included in the request is invalid",
    );
    logged(&r, "UnrecognizedClientException").await;

    // A deleted key is as unknown as one never issued.
    let ops = server.user("ops", true).await;
    server
        .api()
        .call(
            "Airlock.DeleteAccessKey",
            &json!({ "AccessKeyId": ops.access_key_id }),
        )
        .await
        .unwrap();
    let r = send_raw(
        &server.url,
        RawRequest::new(
            "AmazonSSM.DescribeInstanceInformation",
            json!({}),
            (&ops.access_key_id, &ops.secret_access_key),
        ),
        |_, _| {},
    )
    .await;
    r.assert_error(400, "UnrecognizedClientException", "invalid");
    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_operation_is_unknown_operation() {
    let server = started().await;
    for target in [
        "AmazonSSM.LaunchRockets",
        "AmazonEC2.DescribeInstances",
        "Airlock.Nope",
        "",
    ] {
        let r = send_raw(
            &server.url,
            RawRequest::new(target, json!({}), admin_key(&server)),
            |_, _| {},
        )
        .await;
        r.assert_error(400, "UnknownOperationException", "");
        logged(&r, "UnknownOperationException").await;
    }
    // No X-Amz-Target at all.
    let r = send_raw(
        &server.url,
        RawRequest {
            target: None,
            ..RawRequest::new("", json!({}), admin_key(&server))
        },
        |_, _| {},
    )
    .await;
    r.assert_error(400, "UnknownOperationException", "");
    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_a_serialization_error() {
    let server = started().await;
    for body in [
        &b"{\"Target\": "[..],
        b"not json",
        b"[1, 2, 3]",
        b"\"a string\"",
        b"{\"Target\": 42}",
        &[0xff, 0xfe, 0x00][..],
    ] {
        let r = send_raw(
            &server.url,
            RawRequest {
                body: body.to_vec(),
                ..RawRequest::new("AmazonSSM.StartSession", json!({}), admin_key(&server))
            },
            |_, _| {},
        )
        .await;
        r.assert_error(400, "SerializationException", "");
        assert!(
            !r.body["message"].as_str().unwrap().is_empty(),
            "the message says what is wrong: {r:?}"
        );
        logged(&r, "SerializationException").await;
    }
    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_target_is_a_validation_error() {
    let server = started().await;
    let r = send_raw(
        &server.url,
        RawRequest::new(
            "AmazonSSM.StartSession",
            json!({ "DocumentName": "SSM-SessionManagerRunShell" }),
            admin_key(&server),
        ),
        |_, _| {},
    )
    .await;
    r.assert_error(
        400,
        "ValidationException",
        "Value null at 'target' failed to satisfy constraint: Member must not be null",
    );
    logged(&r, "ValidationException").await;
    let r = send_raw(
        &server.url,
        RawRequest::new(
            "AmazonSSM.StartSession",
            json!({ "Target": "" }),
            admin_key(&server),
        ),
        |_, _| {},
    )
    .await;
    r.assert_error(400, "ValidationException", "'target'");
    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_target_is_not_connected() {
    let server = started().await;
    let r = send_raw(
        &server.url,
        RawRequest::new(
            "AmazonSSM.StartSession",
            json!({ "Target": "mi-00000000000000000" }),
            admin_key(&server),
        ),
        |_, _| {},
    )
    .await;
    r.assert_error(400, "TargetNotConnected", "mi-00000000000000000");
    logged(&r, "TargetNotConnected").await;
    // No session was recorded for it.
    assert!(server.sessions("Active").await.is_empty());
    assert!(server.sessions("History").await.is_empty());
    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_refused_before_it_is_read() {
    let server = started().await;
    // Just over the limit, and far over it (more than axum's own default limit of 2 MB).
    for size in [256 * 1024 + 1, 300 * 1024, 3 * 1024 * 1024] {
        let r = send_raw(
            &server.url,
            RawRequest {
                body: vec![b' '; size],
                ..RawRequest::new("AmazonSSM.StartSession", json!({}), admin_key(&server))
            },
            |_, _| {},
        )
        .await;
        r.assert_error(
            413,
            "ValidationException",
            "exceeds the limit of 262144 bytes",
        );
        logged(&r, "ValidationException").await;
    }
    // Exactly at the limit is read (and then judged on its content).
    let mut at_limit = json!({ "Target": "mi-00000000000000000" })
        .to_string()
        .into_bytes();
    at_limit.resize(256 * 1024, b' ');
    let r = send_raw(
        &server.url,
        RawRequest {
            body: at_limit,
            ..RawRequest::new("AmazonSSM.StartSession", json!({}), admin_key(&server))
        },
        |_, _| {},
    )
    .await;
    r.assert_error(400, "TargetNotConnected", "mi-00000000000000000");

    // The same for agent registration, unauthenticated as it is.
    let http = reqwest::Client::new();
    for size in [300 * 1024, 3 * 1024 * 1024] {
        let resp = http
            .post(format!("{}/v1/agent/register", server.url))
            .body(vec![b' '; size])
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let kind = resp
            .headers()
            .get("x-amzn-errortype")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = resp.text().await.unwrap();
        let body: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("not the AWS shape ({e}): {text:?}"));
        assert_eq!(status, 413, "{text}");
        assert_eq!(kind.as_deref(), Some("ValidationException"));
        assert_eq!(body["__type"], "ValidationException");
        assert!(body["message"]
            .as_str()
            .unwrap()
            .contains("exceeds the limit"));
    }
    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_rights_is_denied() {
    let server = started().await;
    let agent = server.agent().await;
    let user = server.user("visitor", false).await;
    let key = (user.access_key_id.as_str(), user.secret_access_key.as_str());
    for (target, body) in [
        (
            "AmazonSSM.StartSession",
            json!({ "Target": agent.instance_id }),
        ),
        ("AmazonSSM.DescribeInstanceInformation", json!({})),
        ("AmazonSSM.DescribeSessions", json!({ "State": "Active" })),
        (
            "AmazonSSM.DeregisterManagedInstance",
            json!({ "InstanceId": agent.instance_id }),
        ),
        (
            "Airlock.CreateUser",
            json!({ "UserName": "mallory", "Admin": true }),
        ),
    ] {
        let r = send_raw(&server.url, RawRequest::new(target, body, key), |_, _| {}).await;
        r.assert_error(
            400,
            "AccessDeniedException",
            "User: arn:aws:iam::000000000000:user/visitor is not authorized to perform",
        );
        logged(&r, "AccessDeniedException").await;
    }
    // None of it took effect.
    assert!(server.sessions("Active").await.is_empty());
    assert!(server.state().hub.agent(&agent.instance_id).is_some());
    let users = server
        .api()
        .call("Airlock.ListUsers", &json!({}))
        .await
        .unwrap();
    assert!(
        !users.to_string().contains("mallory"),
        "the denied CreateUser created nobody: {users}"
    );
    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_and_hostile_connections_do_not_stall_anyone_else() {
    let server = started().await;
    let agent = server.agent().await;
    let addr = server.url.trim_start_matches("http://").to_owned();

    // A request whose headers never finish, one whose body never arrives, and a data channel
    // that never sends its token.
    let mut half_head = tokio::net::TcpStream::connect(&addr).await.unwrap();
    half_head
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Ty")
        .await
        .unwrap();
    let mut half_body = tokio::net::TcpStream::connect(&addr).await.unwrap();
    half_body
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"a\":")
        .await
        .unwrap();
    let grant = server
        .api()
        .start_session(&json!({ "Target": agent.instance_id }))
        .await
        .unwrap();
    let _silent = common::ws_connect(&grant.stream_url).await;
    // Garbage that is not HTTP at all.
    let mut garbage = tokio::net::TcpStream::connect(&addr).await.unwrap();
    garbage
        .write_all(&[0x16, 0x03, 0x01, 0xff, 0x00])
        .await
        .unwrap();

    // Meanwhile everyone else is served, API and sessions alike.
    still_serves(&server).await;
    let mut s = airlock_testkit::TestSession::start(
        &server.api(),
        &agent.instance_id,
        airlock_client::session::SessionOptions::default(),
    )
    .await;
    s.send("echo fine-$((3*3))\n").await;
    s.expect("fine-9", Duration::from_secs(15)).await;
    s.send("exit\n").await;
    let (outcome, _) = s.finish(Duration::from_secs(15)).await;
    assert_eq!(outcome.exit_code, Some(0));
    drop((half_head, half_body, garbage));
    still_serves(&server).await;
}
