//! Agents' lifecycle: activations (count, expiry, deletion), the private state file, and
//! deregistration cutting an agent off.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::json;

use airlock_agent::register::RegisterError;
use airlock_agent::{AgentConfig, AgentState, Registration};
use airlock_client::session::SessionOptions;
use airlock_client::ApiError;
use airlock_testkit::{TempDir, TestAgent, TestServer, TestSession};

const T: Duration = Duration::from_secs(15);

fn registration(server: &TestServer, id: &str, code: &str) -> Registration {
    Registration {
        server: server.url.clone(),
        activation_id: id.to_owned(),
        activation_code: code.to_owned(),
        ca_file: None,
    }
}

fn assert_refused(r: Result<AgentState, RegisterError>, needle: &str) {
    match r {
        Err(RegisterError::Refused { code, message }) => {
            assert_eq!(code, "InvalidActivation", "{message}");
            assert!(
                message.contains(needle),
                "{message:?} should contain {needle:?}"
            );
        }
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(s) => panic!("expected a refusal, got instance {}", s.instance_id),
    }
}

async fn activation(server: &TestServer, id: &str) -> serde_json::Value {
    let out = server
        .api()
        .call(
            "AmazonSSM.DescribeActivations",
            &json!({ "Filters": [{ "FilterKey": "ActivationIds", "FilterValues": [id] }] }),
        )
        .await
        .unwrap();
    out["ActivationList"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_registers_at_most_its_limit() {
    let server = TestServer::start().await;
    let (id, code) = server.activation(1).await;

    assert_refused(
        airlock_agent::register(&registration(&server, &id, "wrong-code")).await,
        "not valid",
    );
    assert_refused(
        airlock_agent::register(&registration(&server, "no-such-activation", &code)).await,
        "not valid",
    );
    // A wrong code does not use up the activation.
    let first = airlock_agent::register(&registration(&server, &id, &code))
        .await
        .expect("the first registration succeeds");
    assert!(first.instance_id.starts_with("mi-") && first.instance_id.len() == 20);
    assert_refused(
        airlock_agent::register(&registration(&server, &id, &code)).await,
        "registration limit",
    );
    let a = activation(&server, &id).await;
    assert_eq!(a["RegistrationLimit"], 1, "{a}");
    assert_eq!(a["RegistrationsCount"], 1, "{a}");
    assert_eq!(a["Expired"], false, "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_activation_registers_nothing_more() {
    let server = TestServer::start().await;
    let (id, code) = server.activation(5).await;
    let first = airlock_agent::register(&registration(&server, &id, &code))
        .await
        .unwrap();
    server
        .api()
        .call("AmazonSSM.DeleteActivation", &json!({ "ActivationId": id }))
        .await
        .unwrap();
    assert_refused(
        airlock_agent::register(&registration(&server, &id, &code)).await,
        "",
    );
    // Instances it registered stay registered and can connect.
    let agent = TestAgent::spawn(first, AgentConfig::default());
    server.wait_online(&agent.instance_id).await;
    // Deleting it again names the problem.
    let err = server
        .api()
        .call("AmazonSSM.DeleteActivation", &json!({ "ActivationId": id }))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ApiError::Service { code, .. } if code == "InvalidActivationId"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_activation_registers_nothing() {
    let server = TestServer::start().await;
    let expires = time::OffsetDateTime::now_utc() + Duration::from_millis(1500);
    let expires_secs = expires.unix_timestamp_nanos() as f64 / 1e9;
    let out = server
        .api()
        .call(
            "AmazonSSM.CreateActivation",
            &json!({ "IamRole": "Test", "RegistrationLimit": 10, "ExpirationDate": expires_secs }),
        )
        .await
        .unwrap();
    let id = out["ActivationId"].as_str().unwrap().to_owned();
    let code = out["ActivationCode"].as_str().unwrap().to_owned();
    airlock_agent::register(&registration(&server, &id, &code))
        .await
        .expect("valid before it expires");

    // Wait for the expiry itself; nothing shorter can test it.
    let left = expires - time::OffsetDateTime::now_utc();
    if left.is_positive() {
        tokio::time::sleep(left.unsigned_abs() + Duration::from_millis(50)).await;
    }
    assert_refused(
        airlock_agent::register(&registration(&server, &id, &code)).await,
        "expired",
    );
    let a = activation(&server, &id).await;
    assert_eq!(a["Expired"], true, "{a}");
    assert_eq!(a["RegistrationsCount"], 1, "{a}");

    // An expiry in the past is refused up front.
    let err = server
        .api()
        .call(
            "AmazonSSM.CreateActivation",
            &json!({ "IamRole": "Test", "ExpirationDate": expires_secs - 3600.0 }),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ApiError::Service { code, .. } if code == "InvalidParameters"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registration_state_file_is_private() {
    let server = TestServer::start().await;
    let (id, code) = server.activation(1).await;
    let state = airlock_agent::register(&registration(&server, &id, &code))
        .await
        .unwrap();
    let dir = TempDir::new();
    let path = dir.0.join("agent-state").join("state.json");
    state.save(&path).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600, "the state file holds the private key");
    assert_eq!(
        mode(path.parent().unwrap()),
        0o700,
        "a directory created for it is private too"
    );
    // Saving over an existing file keeps it private, and it reads back the same identity.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    state.save(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    let back = AgentState::load(&path).unwrap();
    assert_eq!(back.instance_id, state.instance_id);
    assert_eq!(back.private_key, state.private_key);
    assert_eq!(back.server, server.url);
    // Only the public key went to the server: the secret is in no file the server wrote.
    let secret = &state.private_key;
    for entry in walk(&server.dir.0.join("server")) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(secret.as_str()),
            "{} holds the agent's private key",
            entry.display()
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistration_cuts_the_agent_off_at_once_and_ends_its_sessions() {
    let server = TestServer::start().await;
    let (id, code) = server.activation(1).await;
    let state = airlock_agent::register(&registration(&server, &id, &code))
        .await
        .unwrap();
    // A long reconnect delay: the agent must learn why it was cut off from the cut itself,
    // not from a later reconnect attempt.
    let agent = TestAgent::spawn(
        state,
        AgentConfig {
            backoff_initial: Duration::from_secs(60),
            backoff_max: Duration::from_secs(60),
            ..Default::default()
        },
    );
    let instance = agent.instance_id.clone();
    server.wait_online(&instance).await;
    let api = server.api();
    let mut s = TestSession::start(&api, &instance, SessionOptions::default()).await;
    s.send("echo up-$((2+3))\n").await;
    s.expect("up-5", T).await;

    api.call(
        "AmazonSSM.DeregisterManagedInstance",
        &json!({ "InstanceId": instance }),
    )
    .await
    .unwrap();
    assert!(
        server.state().hub.agent(&instance).is_none(),
        "the hub drops it at once"
    );

    // The agent stops for good, saying why.
    let ended = tokio::time::timeout(Duration::from_secs(5), agent.task)
        .await
        .expect("the agent stops at once")
        .unwrap();
    match ended {
        Err(e) => assert!(e.to_string().contains("deregistered"), "{e}"),
        Ok(()) => panic!("the agent should stop with an error"),
    }

    // Its open session ends, with the reason.
    let sid = s.grant.session_id.clone();
    let (outcome, _) = s.finish(T).await;
    assert!(
        outcome.reason.contains("deregistered"),
        "reason: {:?}",
        outcome.reason
    );
    let done = server.wait_history(&sid).await;
    assert_eq!(done["Status"], "Terminated");

    // Nothing reaches it any more.
    let err = api
        .start_session(&json!({ "Target": instance }))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ApiError::Service { code, .. } if code == "TargetNotConnected"),
        "{err}"
    );
    let status = api
        .call(
            "AmazonSSM.GetConnectionStatus",
            &json!({ "Target": instance }),
        )
        .await
        .unwrap();
    assert_eq!(status["Status"], "notconnected");
    let out = api
        .call("AmazonSSM.DescribeInstanceInformation", &json!({}))
        .await
        .unwrap();
    assert_eq!(out["InstanceInformationList"], json!([]), "{out}");
    server.wait_no_relays().await;

    // Deregistering an unknown instance is an error in the AWS shape.
    let err = api
        .call(
            "AmazonSSM.DeregisterManagedInstance",
            &json!({ "InstanceId": instance }),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ApiError::Service { code, .. } if code == "InvalidInstanceId"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deregistered_agent_cannot_reconnect() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let state = agent.state.clone();
    let instance = agent.instance_id.clone();
    agent.stop().await;
    server
        .api()
        .call(
            "AmazonSSM.DeregisterManagedInstance",
            &json!({ "InstanceId": instance }),
        )
        .await
        .unwrap();
    let again = TestAgent::spawn(state, AgentConfig::default());
    let ended = tokio::time::timeout(Duration::from_secs(10), again.task)
        .await
        .expect("the agent gives up")
        .unwrap();
    let e = ended.expect_err("refused");
    assert!(e.to_string().contains("deregistered"), "{e}");
    assert!(server.state().hub.agent(&instance).is_none());
}
