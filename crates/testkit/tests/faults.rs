//! Sessions under injected network faults (issue 13): a [`FaultProxy`] between the client and
//! the gateway cuts and stalls the link while a shell prints a numbered sequence; the client
//! resumes by itself and every line arrives exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use airlock_client::session::SessionOptions;
use airlock_client::ApiClient;
use airlock_testkit::faults::FaultProxy;
use airlock_testkit::{TestServer, TestSession};

/// The numbered lines `1..=n` each exactly once, in order, in `text`.
fn numbered_once(text: &str, n: u32) -> Result<(), String> {
    let nums: Vec<u32> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("line-"))
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let want: Vec<u32> = (1..=n).collect();
    if nums == want {
        Ok(())
    } else {
        Err(format!(
            "{} lines, first {:?}",
            nums.len(),
            nums.iter().take(20).collect::<Vec<_>>()
        ))
    }
}

/// A server, an agent, and an admin API client whose every connection (API calls and the
/// data channels of the stream URLs the server hands out, its public URL being the proxy's)
/// passes through a [`FaultProxy`].
async fn behind_proxy() -> (
    TestServer,
    airlock_testkit::TestAgent,
    Arc<FaultProxy>,
    ApiClient,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public = format!("http://{}", listener.local_addr().unwrap());
    let server = TestServer::start_with(|c| c.public_url = Some(public.clone())).await;
    let agent = server.agent().await;
    let upstream: std::net::SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let proxy = Arc::new(FaultProxy::start_on(listener, upstream).unwrap());
    let mut profile = server.admin.clone();
    profile.endpoint = public;
    let api = ApiClient::new(profile).unwrap();
    (server, agent, proxy, api)
}

#[tokio::test]
async fn a_shell_prints_every_line_once_through_three_cuts_of_the_clients_link() {
    common::capture_logs();
    let (server, agent, proxy, api) = behind_proxy().await;
    let opts = SessionOptions {
        no_pty: true,
        ..SessionOptions::default()
    };
    let mut s = TestSession::start(&api, &agent.instance_id, opts).await;
    s.send("for i in $(seq 1 300); do echo line-$i; sleep 0.01; done; echo all-done-$((1+1))\n")
        .await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        proxy.cut();
    }
    let text = s.expect("all-done-2", Duration::from_secs(60)).await;
    numbered_once(&text, 300).unwrap();
    assert_eq!(proxy.cuts(), 3);
    // Each cut was a drop the client came back from with ResumeSession.
    let resumes = server
        .state()
        .store
        .list_audit(
            &airlock_server::store::audit::AuditFilter {
                action: Some("ssm:ResumeSession".into()),
                ..Default::default()
            },
            None,
            100,
        )
        .await
        .unwrap();
    assert_eq!(resumes.len(), 3, "{resumes:#?}");
    s.send("exit\n").await;
    s.finish(Duration::from_secs(20)).await;
}

/// A half-open link (the connection goes silent without a reset) is found by the client's
/// keepalive deadline and resumed: the shell's lines still arrive, each once.
#[tokio::test]
async fn a_half_open_client_link_is_detected_and_resumed() {
    common::capture_logs();
    let (_server, agent, proxy, api) = behind_proxy().await;
    let opts = SessionOptions {
        no_pty: true,
        keepalive: Duration::from_millis(200),
        silence_limit: Duration::from_secs(1),
        ..SessionOptions::default()
    };
    let mut s = TestSession::start(&api, &agent.instance_id, opts).await;
    s.send("for i in $(seq 1 200); do echo line-$i; sleep 0.01; done; echo all-done-$((1+1))\n")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frozen_at = std::time::Instant::now();
    proxy.freeze();
    let text = s.expect("all-done-2", Duration::from_secs(60)).await;
    assert!(
        frozen_at.elapsed() < Duration::from_secs(20),
        "{:?}\n{}",
        frozen_at.elapsed(),
        common::logs()
    );
    numbered_once(&text, 200).unwrap();
    assert_eq!(proxy.cuts(), 0, "no connection was closed");
    s.send("exit\n").await;
    s.finish(Duration::from_secs(20)).await;
}
