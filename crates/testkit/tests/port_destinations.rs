//! The agent's destination rules, end to end: a real server, a real agent (in-process, or the
//! `airlock agent run` binary with its flags), Airlock's client and its binary, targets on
//! loopback. A refused destination is never connected to (the metadata address is refused
//! before any packet leaves), the user is told why, and the audit records it as refused with
//! the rule. Also: the server refuses connection reports that are oversized, for another
//! instance's session, or for a session that ended long ago.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::TcpStream;

use airlock_agent::destinations::DestinationRules;
use airlock_agent::AgentConfig;
use airlock_client::mux::StreamReport;
use airlock_client::port::DEFAULT_MUX_WINDOW;
use airlock_client::ApiClient;
use airlock_proto::PortConnectionRecord;
use airlock_testkit::{TempDir, TestServer};

mod forwards;
use forwards::{agent_process, closed_at_once, echo_target, echoes, forward};

/// The words every refusal carries.
const REFUSED: &str = airlock_agent::destinations::REFUSED;
/// The default rule that names the metadata address.
const METADATA_RULE: &str = "deny 169.254.169.254/32:* (default: cloud metadata";

// ---------------------------------------------------------------------------------------------
// Helpers

/// Turns the server's preference `denyLinkLocalDestinations` off, so that literal link-local
/// and metadata hosts reach the agent and its own rules alone decide (what these tests check).
async fn agent_rules_only(server: &TestServer) {
    set_deny_link_local(server, false).await;
}

async fn set_deny_link_local(server: &TestServer, on: bool) {
    let content = json!({"schemaVersion": "1.0", "sessionType": "Standard_Stream",
                         "inputs": {"denyLinkLocalDestinations": on}});
    server
        .api()
        .call(
            "AmazonSSM.UpdateDocument",
            &json!({"Name": "SSM-SessionManagerRunShell", "Content": content.to_string(),
                    "DocumentVersion": "$LATEST"}),
        )
        .await
        .expect("UpdateDocument");
}

/// What a client of the metadata service would send first.
const METADATA_GET: &[u8] = b"GET /latest/meta-data/ HTTP/1.0\r\n\r\n";

/// The reason a stream failed, as `airlock port-forward` shows it.
fn failure(rep: &StreamReport) -> String {
    rep.peer_reason.clone().unwrap_or_else(|| rep.end.clone())
}

/// The server's records of `session_id` through ListPortConnections, once there are `n`.
async fn listed(
    api: &ApiClient,
    session_id: &str,
    n: usize,
) -> Vec<airlock_client::api::PortConnectionInfo> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let recs = api
            .list_port_connections(&airlock_client::ListPortConnectionsInput {
                session_id: Some(session_id.to_owned()),
                ..Default::default()
            })
            .await
            .unwrap()
            .connections;
        if recs.len() >= n {
            return recs;
        }
        assert!(
            Instant::now() < deadline,
            "{n} records of {session_id}; have {recs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn agent_with_rules(allow: &[&str], deny: &[&str]) -> AgentConfig {
    AgentConfig {
        destinations: Arc::new(DestinationRules::new(allow, deny).unwrap()),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Refused destinations

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_address_is_refused_told_to_the_user_and_audited_beside_a_working_forward() {
    let server = TestServer::start().await;
    agent_rules_only(&server).await;
    let agent = server.agent().await;
    let api = server.api();
    let echo = echo_target().await;
    let good = forward(&api, &agent.instance_id, echo, None, DEFAULT_MUX_WINDOW).await;
    let mut live = TcpStream::connect(good.addr).await.unwrap();
    echoes(&mut live, b"before").await;

    // Airlock's mux: the stream is reset with the rule as its reason.
    let mut bad = forward(
        &api,
        &agent.instance_id,
        80,
        Some("169.254.169.254"),
        DEFAULT_MUX_WINDOW,
    )
    .await;
    closed_at_once(bad.addr, METADATA_GET).await;
    closed_at_once(bad.addr, METADATA_GET).await;
    for _ in 0..2 {
        let rep = bad.next_report(Duration::from_secs(15)).await;
        assert!(rep.failed, "{rep:?}");
        let why = failure(&rep);
        assert!(
            why.starts_with("cannot connect to 169.254.169.254:80: refused by destination rule")
                && why.contains(METADATA_RULE),
            "{why}"
        );
    }
    // The session goes on (only the connections are refused), and so does the other forward.
    assert!(!bad.task.is_finished());
    echoes(&mut live, b"between").await;
    let bad_id = bad.session_id.clone();
    assert_eq!(bad.stop().await.expect("an orderly end").reason, "");

    // smux v1, as with the AWS plugin: the stream is closed as the AWS agent closes a failed
    // dial; the record is the same.
    let smux = forward(&api, &agent.instance_id, 80, Some("169.254.169.254"), 0).await;
    closed_at_once(smux.addr, METADATA_GET).await;
    let smux_id = smux.session_id.clone();

    // The audit says refused, with the rule, for every connection.
    for (id, n, mode) in [(&bad_id, 2, "airlock-mux"), (&smux_id, 1, "smux")] {
        let recs = listed(&api, id, n).await;
        assert_eq!(recs.len(), n, "{recs:?}");
        for r in &recs {
            assert!(r.failed, "{r:?}");
            assert_eq!(r.mode, mode);
            assert_eq!(r.destination, "169.254.169.254:80");
            assert!(
                r.end_reason.contains(REFUSED) && r.end_reason.contains(METADATA_RULE),
                "{r:?}"
            );
            assert_eq!((r.bytes_to_target, r.bytes_from_target), (0, 0));
        }
    }
    smux.stop().await.expect("an orderly end");
    echoes(&mut live, b"after").await;
    drop(live);
    good.stop().await.expect("an orderly end");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_the_metadata_address_is_refused() {
    let server = TestServer::start().await;
    agent_rules_only(&server).await;
    let agent = server.agent().await;
    let api = server.api();
    // Numeric forms the resolver accepts, and IPv6 forms that reach the IPv4 address.
    for host in [
        "2852039166",
        "0xa9fea9fe",
        "0XA9FEA9FE",
        "169.254.43518",
        "169.16689662",
        "0251.0376.0251.0376",
        "0xa9.0xfe.0xa9.0xfe",
        "::ffff:169.254.169.254",
        "[::ffff:a9fe:a9fe]",
        "::169.254.169.254",
        "64:ff9b::169.254.169.254",
        "2002:a9fe:a9fe::1",
        "fd00:ec2::254",
        "169.254.170.2",
        "100.100.100.200",
    ] {
        let mut f = forward(&api, &agent.instance_id, 80, Some(host), DEFAULT_MUX_WINDOW).await;
        closed_at_once(f.addr, METADATA_GET).await;
        let why = failure(&f.next_report(Duration::from_secs(15)).await);
        assert!(
            why.contains(REFUSED) && why.contains("(default: cloud metadata"),
            "{host}: {why}"
        );
        let recs = listed(&api, &f.session_id, 1).await;
        assert!(recs[0].end_reason.contains(REFUSED), "{host}: {recs:?}");
        f.stop().await.expect("an orderly end");
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_rule_on_a_loopback_port_refuses_it_under_every_name_of_the_host() {
    let server = TestServer::start().await;
    let secret = echo_target().await;
    let open = echo_target().await;
    let v6_denied = echo_target().await;
    let deny = format!("127.0.0.0/8:{secret}");
    let deny_v6 = format!("[::1]:{v6_denied}");
    let agent = server
        .agent_with(agent_with_rules(&[], &[&deny, &deny_v6]))
        .await;
    let api = server.api();
    // The denied port, by every name of this host (localhost also resolves to ::1, which is
    // not denied: one refused address refuses the destination).
    for host in [
        None,
        Some("127.0.0.1"),
        Some("0.0.0.0"),
        Some("127.1"),
        Some("::ffff:127.0.0.1"),
    ] {
        let mut f = forward(&api, &agent.instance_id, secret, host, DEFAULT_MUX_WINDOW).await;
        closed_at_once(f.addr, METADATA_GET).await;
        let why = failure(&f.next_report(Duration::from_secs(15)).await);
        assert!(
            why.contains(&format!("{REFUSED} deny 127.0.0.0/8:{secret}")),
            "{host:?}: {why}"
        );
        f.stop().await.expect("an orderly end");
    }
    // localhost is 127.0.0.1 and ::1: one denied address refuses the name, though the other
    // would pass.
    let mut f = forward(
        &api,
        &agent.instance_id,
        v6_denied,
        None,
        DEFAULT_MUX_WINDOW,
    )
    .await;
    closed_at_once(f.addr, METADATA_GET).await;
    let why = failure(&f.next_report(Duration::from_secs(15)).await);
    assert!(
        why.contains(&format!(
            "{REFUSED} deny [::1/128]:{v6_denied} (address [::1]:{v6_denied})"
        )),
        "{why}"
    );
    f.stop().await.expect("an orderly end");
    // Another port of the same host is open.
    let f = forward(&api, &agent.instance_id, open, None, DEFAULT_MUX_WINDOW).await;
    let mut c = TcpStream::connect(f.addr).await.unwrap();
    echoes(&mut c, b"open").await;
    drop(c);
    f.stop().await.expect("an orderly end");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_list_lets_through_only_what_it_names() {
    let server = TestServer::start().await;
    let allowed = echo_target().await;
    let other = echo_target().await;
    let allow = format!("127.0.0.1:{allowed}");
    let agent = server.agent_with(agent_with_rules(&[&allow], &[])).await;
    let api = server.api();
    let good = forward(
        &api,
        &agent.instance_id,
        allowed,
        Some("127.0.0.1"),
        DEFAULT_MUX_WINDOW,
    )
    .await;
    let mut c = TcpStream::connect(good.addr).await.unwrap();
    echoes(&mut c, b"allowed").await;
    // localhost is 127.0.0.1 and ::1: only the listed address is used, and it answers.
    let local = forward(&api, &agent.instance_id, allowed, None, DEFAULT_MUX_WINDOW).await;
    let mut l = TcpStream::connect(local.addr).await.unwrap();
    echoes(&mut l, b"localhost").await;
    drop(l);
    local.stop().await.expect("an orderly end");
    // Another port, and another address of this host, are refused.
    for (host, port) in [
        (Some("127.0.0.1"), other),
        (Some("::1"), allowed),
        (Some("127.0.0.2"), allowed),
    ] {
        let mut f = forward(&api, &agent.instance_id, port, host, DEFAULT_MUX_WINDOW).await;
        closed_at_once(f.addr, METADATA_GET).await;
        let why = failure(&f.next_report(Duration::from_secs(15)).await);
        assert!(
            why.contains(&format!("{REFUSED} allow-list")),
            "{host:?}:{port}: {why}"
        );
        f.stop().await.expect("an orderly end");
    }
    echoes(&mut c, b"still").await;
    drop(c);
    good.stop().await.expect("an orderly end");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_allowing_link_local_does_not_reopen_the_metadata_address() {
    // Allowing 169.254.0.0/16 re-opens link-local (shown by the rule engine's unit tests; no
    // test here sends a packet off this host) but not the metadata address inside it, which
    // must be named itself.
    let server = TestServer::start().await;
    agent_rules_only(&server).await;
    let agent = server
        .agent_with(agent_with_rules(&["169.254.0.0/16:*", "0.0.0.0/0:*"], &[]))
        .await;
    let api = server.api();
    let mut f = forward(
        &api,
        &agent.instance_id,
        80,
        Some("169.254.169.254"),
        DEFAULT_MUX_WINDOW,
    )
    .await;
    closed_at_once(f.addr, METADATA_GET).await;
    let why = failure(&f.next_report(Duration::from_secs(15)).await);
    assert!(why.contains(METADATA_RULE), "{why}");
    f.stop().await.expect("an orderly end");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_link_local_preference_applies_on_top_of_the_agents_rules() {
    // The agent re-opens the metadata address on purpose; the server's preference (on by
    // default) closes it again for every session: a literal address is refused at StartSession,
    // a numeric spelling (169.254.169.254 as 2852039166) by the agent, before any packet leaves.
    let server = TestServer::start().await;
    let agent = server
        .agent_with(agent_with_rules(
            &["169.254.169.254:80", "169.254.0.0/16:*"],
            &[],
        ))
        .await;
    let api = server.api();
    for host in ["169.254.169.254", "[fe80::1]", "::ffff:169.254.169.254"] {
        let e = api
            .call(
                "AmazonSSM.StartSession",
                &json!({"Target": agent.instance_id, "DocumentName": "AWS-StartPortForwardingSessionToRemoteHost",
                        "Parameters": {"host": [host], "portNumber": ["80"]}}),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("InvalidParameters"), "{host}: {e}");
    }
    let mut f = forward(
        &api,
        &agent.instance_id,
        80,
        Some("2852039166"),
        DEFAULT_MUX_WINDOW,
    )
    .await;
    closed_at_once(f.addr, METADATA_GET).await;
    let why = failure(&f.next_report(Duration::from_secs(15)).await);
    assert!(
        why.contains(REFUSED) && why.contains(METADATA_RULE),
        "{why}"
    );
    f.stop().await.expect("an orderly end");
    agent.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The agent binary's flags, and SSH (stream mode) through ssh-proxy

async fn ssh_proxy(server: &TestServer, target: &str, port: u16) -> std::process::Output {
    let bin = tokio::task::spawn_blocking(airlock_testkit::airlock_binary)
        .await
        .unwrap();
    let out = tokio::process::Command::new(&bin)
        .args(["ssh-proxy", "--target", target, "--port", &port.to_string()])
        .env("AIRLOCK_ENDPOINT", &server.url)
        .env("AIRLOCK_ACCESS_KEY_ID", &server.admin.access_key_id)
        .env("AIRLOCK_SECRET_ACCESS_KEY", &server.admin.secret_access_key)
        .stdin(std::process::Stdio::piped())
        .output();
    tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_run_flags_and_state_file_rules_refuse_ssh_and_port_forward_with_the_reason() {
    let server = TestServer::start().await;
    agent_rules_only(&server).await;
    let dir = TempDir::new();
    let sshish = echo_target().await;
    let db = echo_target().await;
    let deny_flag = format!("127.0.0.0/8:{sshish}");
    let (instance_id, mut agent) =
        agent_process(&server, &dir.0, &["--deny-destination", &deny_flag]).await;

    // ssh-proxy (AWS-StartSSHSession, stream mode): refused, and it says why.
    let out = ssh_proxy(&server, &instance_id, sshish).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot connect to localhost:{sshish}"))
            && stderr.contains(&format!("{REFUSED} deny 127.0.0.0/8:{sshish}")),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());

    // `airlock port-forward` to the metadata address: each connection's refusal is printed.
    let bin = tokio::task::spawn_blocking(airlock_testkit::airlock_binary)
        .await
        .unwrap();
    let mut child = tokio::process::Command::new(&bin)
        .args(["--output", "json", "port-forward", "--target", &instance_id])
        .args(["--remote-host", "169.254.169.254", "--remote-port", "80"])
        .env("AIRLOCK_ENDPOINT", &server.url)
        .env("AIRLOCK_ACCESS_KEY_ID", &server.admin.access_key_id)
        .env("AIRLOCK_SECRET_ACCESS_KEY", &server.admin.secret_access_key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut first),
    )
    .await
    .unwrap()
    .unwrap();
    let v: Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{first:?}: {e}"));
    let addr: SocketAddr = v["LocalAddress"].as_str().unwrap().parse().unwrap();
    closed_at_once(addr, METADATA_GET).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("connection from 127.0.0.1:")
                && l.contains(&format!(
                    "failed: cannot connect to 169.254.169.254:80: {REFUSED} {METADATA_RULE}"
                ))),
        "{stderr}"
    );
    agent.start_kill().unwrap();
    let _ = agent.wait().await;
    airlock_testkit::eventually(
        "the killed agent's channel gone",
        Duration::from_secs(10),
        || async {
            server
                .state()
                .hub
                .agent(&instance_id)
                .is_none()
                .then_some(())
        },
    )
    .await;

    // The same agent with a rule in its state file (DenyDestinations) and none on the command
    // line: the file's rule applies.
    let state = dir.0.join("agent.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    v["DenyDestinations"] = json!([format!("127.0.0.1:{db}")]);
    std::fs::write(&state, serde_json::to_string(&v).unwrap()).unwrap();
    let bin2 = bin.clone();
    let mut agent = tokio::process::Command::new(&bin2)
        .args(["agent", "run", "--state"])
        .arg(&state)
        .env("HOME", &dir.0)
        .env("AIRLOCK_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    server.wait_online(&instance_id).await;
    let api = server.api();
    let mut f = forward(
        &api,
        &instance_id,
        db,
        Some("127.0.0.1"),
        DEFAULT_MUX_WINDOW,
    )
    .await;
    closed_at_once(f.addr, METADATA_GET).await;
    let why = failure(&f.next_report(Duration::from_secs(15)).await);
    assert!(
        why.contains(&format!("{REFUSED} deny 127.0.0.1/32:{db}")),
        "{why}"
    );
    f.stop().await.expect("an orderly end");
    // The SSH port denied before on the command line is open now.
    let ok = forward(&api, &instance_id, sshish, None, DEFAULT_MUX_WINDOW).await;
    let mut c = TcpStream::connect(ok.addr).await.unwrap();
    echoes(&mut c, b"open").await;
    drop(c);
    ok.stop().await.expect("an orderly end");
    agent.start_kill().unwrap();
    let _ = agent.wait().await;

    // A bad rule stops the agent at once, with the reason.
    for args in [
        vec!["--deny-destination", "169.254.169.254/33:*"],
        vec!["--allow-destination", "999.1.1.1:22"],
        vec!["--allow-destination", "10.0.0.0/8:70000"],
        vec!["--deny-destination", ""],
    ] {
        let out = tokio::process::Command::new(&bin)
            .args(["agent", "run", "--state"])
            .arg(&state)
            .args(&args)
            .env("HOME", &dir.0)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains("destination rule"), "{args:?}: {stderr}");
    }
}

// ---------------------------------------------------------------------------------------------
// Reports the server refuses

/// A change that spoils a report.
type Change = Box<dyn Fn(&mut PortConnectionRecord)>;

fn report_payload(rec: &PortConnectionRecord) -> Vec<u8> {
    serde_json::to_vec(&airlock_proto::MgsPayload {
        content: serde_json::to_string(rec).unwrap(),
        task_id: rec.session_id.clone(),
        topic: airlock_proto::PORT_CONNECTION_TOPIC.into(),
        schema_version: 1,
    })
    .unwrap()
}

fn record(session_id: &str, stream_id: u32) -> PortConnectionRecord {
    PortConnectionRecord {
        session_id: session_id.to_owned(),
        session_owner: "someone".into(),
        stream_id,
        destination: "localhost:1".into(),
        mode: "airlock-mux".into(),
        bytes_to_target: 1,
        bytes_from_target: 2,
        started_at: airlock_proto::unix_millis(),
        duration_ms: 4,
        end_reason: "closed".into(),
        failed: false,
    }
}

/// Stream ids stored for `session_id`, once `sentinel` (sent last) is among them.
async fn stored_streams(server: &TestServer, session_id: &str, sentinel: i64) -> Vec<i64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = airlock_server::port_audit::list(&server.state().store, Some(session_id), 1000)
            .await
            .unwrap();
        let ids: Vec<i64> = rows.iter().map(|r| r.stream_id).collect();
        if ids.contains(&sentinel) {
            return ids;
        }
        assert!(
            Instant::now() < deadline,
            "the sentinel was stored: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_out_of_bounds_or_for_another_instance_are_refused() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let other = server.agent().await;
    let api = server.api();
    let echo = echo_target().await;
    let f = forward(&api, &agent.instance_id, echo, None, DEFAULT_MUX_WINDOW).await;
    let id = f.session_id.clone();
    let state = server.state().clone();
    let send = |instance: String, payload: Vec<u8>| {
        let state = state.clone();
        async move { airlock_server::port_audit::handle_reply(&state, &instance, &payload).await }
    };
    let now = airlock_proto::unix_millis();
    let bad: Vec<(u32, Change)> = vec![
        (1, Box::new(|r| r.destination = "d".repeat(100_000))),
        (2, Box::new(|r| r.end_reason = "e".repeat(5_000))),
        (3, Box::new(|r| r.session_owner = "o".repeat(2_000))),
        (4, Box::new(|r| r.mode = "m".repeat(300))),
        (5, Box::new(|r| r.bytes_to_target = u64::MAX)),
        (6, Box::new(|r| r.bytes_from_target = 1 << 63)),
        (7, Box::new(|r| r.duration_ms = u64::MAX)),
        (8, Box::new(|r| r.started_at = 1)),
        (9, Box::new(move |r| r.started_at = now + 3_600_000)),
        (
            10,
            Box::new(|r| r.end_reason = "forged\n2026-01-01 INFO all fine".into()),
        ),
        (11, Box::new(|r| r.destination.clear())),
    ];
    for (stream, change) in &bad {
        let mut r = record(&id, *stream);
        change(&mut r);
        send(agent.instance_id.clone(), report_payload(&r)).await;
    }
    // A payload far past any report's size is refused unread.
    let mut huge = record(&id, 12);
    huge.end_reason = "x".repeat(1 << 20);
    send(agent.instance_id.clone(), report_payload(&huge)).await;
    // Another (registered, connected) instance reporting for this session.
    send(other.instance_id.clone(), report_payload(&record(&id, 13))).await;
    // Last, a sound report from the session's own agent: kept.
    send(agent.instance_id.clone(), report_payload(&record(&id, 100))).await;
    let ids = stored_streams(&server, &id, 100).await;
    assert_eq!(ids, vec![100], "only the sound report is stored");
    // The forward's own records still go in.
    let mut c = TcpStream::connect(f.addr).await.unwrap();
    echoes(&mut c, b"x").await;
    drop(c);
    f.stop().await.expect("an orderly end");
    let recs = listed(&api, &id, 2).await;
    assert!(
        recs.iter()
            .any(|r| r.destination == format!("localhost:{echo}")),
        "{recs:?}"
    );
    agent.stop().await;
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_for_a_session_that_ended_long_ago_are_refused() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let api = server.api();
    let echo = echo_target().await;
    let old = forward(&api, &agent.instance_id, echo, None, DEFAULT_MUX_WINDOW).await;
    let old_id = old.session_id.clone();
    old.stop().await.expect("an orderly end");
    let recent = forward(&api, &agent.instance_id, echo, None, DEFAULT_MUX_WINDOW).await;
    let recent_id = recent.session_id.clone();
    recent.stop().await.expect("an orderly end");
    let deadline = Instant::now() + Duration::from_secs(10);
    for id in [&old_id, &recent_id] {
        while server
            .state()
            .store
            .session(id)
            .await
            .unwrap()
            .unwrap()
            .end_date
            .is_none()
        {
            assert!(Instant::now() < deadline, "session {id} ended");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The first session is moved two hours into the past, as if it ended then.
    let db = server.state().config.data_dir.join("airlock.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let two_hours = 2 * 3_600_000i64;
    sqlx::query(
        "UPDATE sessions SET start_date = start_date - ?, end_date = end_date - ? WHERE session_id = ?",
    )
    .bind(two_hours)
    .bind(two_hours)
    .bind(&old_id)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    // Past the writer's memory of open sessions.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let state = server.state().clone();
    let mut late = record(&old_id, 1);
    late.started_at -= two_hours as u64;
    airlock_server::port_audit::handle_reply(&state, &agent.instance_id, &report_payload(&late))
        .await;
    // A report for the session that ended a moment ago is still taken (reports follow the end).
    airlock_server::port_audit::handle_reply(
        &state,
        &agent.instance_id,
        &report_payload(&record(&recent_id, 7)),
    )
    .await;
    assert_eq!(stored_streams(&server, &recent_id, 7).await, vec![7]);
    let old_rows = airlock_server::port_audit::list(&state.store, Some(&old_id), 100)
        .await
        .unwrap();
    assert!(old_rows.iter().all(|r| r.stream_id != 1), "{old_rows:?}");
    agent.stop().await;
}
