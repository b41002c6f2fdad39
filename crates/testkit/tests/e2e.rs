//! End to end, in process: the real server and agent on loopback, and sessions driven through
//! `airlock_client::session::run` (the code path of `airlock start-session`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::json;

use airlock_client::session::{Input, SessionOptions};
use airlock_client::ApiClient;
use airlock_testkit::{eventually, TestServer, TestSession};

const T: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_session_shows_output_applies_resize_and_carries_exit_status() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let api = server.api();
    let mut s = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    let id = s.grant.session_id.clone();
    assert!(
        id.starts_with("admin-"),
        "session ids name their owner: {id}"
    );

    s.send("echo $((6*7))\n").await;
    s.expect("42\r\n", T).await;

    s.input
        .send(Input::Size {
            cols: 123,
            rows: 45,
        })
        .await
        .unwrap();
    // The resize and the keystrokes travel in order on one channel, so `stty` sees the new size.
    s.send("stty size\n").await;
    s.expect("45 123\r\n", T).await;

    // While it runs, the session is Active and Connected, and the agent is Online.
    let active = server
        .session("Active", &id)
        .await
        .expect("an open session is listed as Active");
    assert_eq!(active["Status"], "Connected");
    assert_eq!(active["Target"], agent.instance_id.as_str());
    assert_eq!(active["Owner"], "arn:aws:iam::000000000000:user/admin");
    assert!(server.session("History", &id).await.is_none());

    s.send("exit 7\n").await;
    let (outcome, seen) = s.finish(T).await;
    assert_eq!(outcome.exit_code, Some(7), "output: {seen:?}");

    let done = server.wait_history(&id).await;
    assert_eq!(done["Status"], "Terminated", "{done}");
    assert_eq!(done["ExitCode"], 7, "{done}");
    assert!(done["EndDate"].as_f64().is_some(), "{done}");
    assert!(server.session("Active", &id).await.is_none());
    server.wait_no_relays().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_session_runs_without_a_pty_and_exits_with_the_shell_status() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let api = server.api();
    let opts = SessionOptions {
        no_pty: true,
        ..Default::default()
    };
    let s = TestSession::start(&api, &agent.instance_id, opts).await;
    let id = s.grant.session_id.clone();
    s.send("uname -s\nexit 3\n").await;
    s.input.send(Input::Eof).await.unwrap();
    let (outcome, seen) = s.finish(T).await;
    assert_eq!(outcome.exit_code, Some(3), "output: {seen:?}");
    // No terminal: no prompt, no echo of the commands, just what they print.
    assert_eq!(seen, "Linux\n");

    let done = server.wait_history(&id).await;
    assert_eq!(done["Status"], "Terminated");
    assert_eq!(done["ExitCode"], 3);
    server.wait_no_relays().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_session_sees_end_of_input() {
    // `cat` ends only when its input does: the client's Eof must reach the shell.
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let api = server.api();
    let opts = SessionOptions {
        no_pty: true,
        ..Default::default()
    };
    let s = TestSession::start(&api, &agent.instance_id, opts).await;
    s.send("cat; echo after-cat $?\n").await;
    s.send("typed into cat\n").await;
    s.input.send(Input::Eof).await.unwrap();
    let (outcome, seen) = s.finish(T).await;
    assert_eq!(seen, "typed into cat\nafter-cat 0\n");
    assert_eq!(outcome.exit_code, Some(0));
}

fn shell_alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie would still show up as state Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_from_a_second_client_closes_both_ends_and_is_recorded() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let api = server.api();
    let mut s = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    let id = s.grant.session_id.clone();
    // The echoed command line reads `pid-$$-`; only the output has digits there.
    s.send("echo pid-$$-\n").await;
    let pid: u32 = s
        .wait_for(T, |text| {
            text.split("pid-")
                .filter_map(|r| r.split_once('-'))
                .find_map(|(n, _)| n.parse().ok())
        })
        .await;
    assert!(shell_alive(pid), "the session's shell {pid} runs");

    // Someone else, with their own key, ends it.
    let ops = ApiClient::new(server.user("ops", true).await).unwrap();
    let out = ops
        .call("AmazonSSM.TerminateSession", &json!({ "SessionId": id }))
        .await
        .unwrap();
    assert_eq!(out["SessionId"], id.as_str());

    // The client's session ends, with the reason, and no exit status.
    let (outcome, _) = s.finish(T).await;
    assert_eq!(outcome.exit_code, None);
    assert!(
        outcome.reason.contains("terminated by ops"),
        "reason: {:?}",
        outcome.reason
    );
    // The agent's end is gone too: the shell is killed and reaped.
    eventually("the shell to be gone", T, || async {
        (!shell_alive(pid)).then_some(())
    })
    .await;

    let done = server.wait_history(&id).await;
    assert_eq!(done["Status"], "Terminated", "{done}");
    assert!(
        done["Details"]
            .as_str()
            .is_some_and(|d| d.contains("terminated by ops")),
        "{done}"
    );
    assert!(server.session("Active", &id).await.is_none());
    server.wait_no_relays().await;

    // Terminating again is fine (AWS answers the same), and the agent still serves new sessions.
    ops.terminate_session(&id).await.unwrap();
    let mut again = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    again.send("echo again-$((1+1))\n").await;
    again.expect("again-2", T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_information_and_connection_status_follow_the_agent() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let api = server.api();
    let id = agent.instance_id.clone();

    let out = api
        .call("AmazonSSM.DescribeInstanceInformation", &json!({}))
        .await
        .unwrap();
    let list = out["InstanceInformationList"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{out}");
    let info = &list[0];
    assert_eq!(info["InstanceId"], id.as_str());
    assert_eq!(info["PingStatus"], "Online");
    assert_eq!(info["ResourceType"], "ManagedInstance");
    assert_eq!(info["PlatformType"], "Linux");
    assert_eq!(info["AgentVersion"], airlock_agent::AGENT_VERSION);
    assert_eq!(info["IPAddress"], "127.0.0.1");

    let filtered = api
        .call(
            "AmazonSSM.DescribeInstanceInformation",
            &json!({ "Filters": [{ "Key": "PingStatus", "Values": ["ConnectionLost"] }] }),
        )
        .await
        .unwrap();
    assert_eq!(filtered["InstanceInformationList"], json!([]));

    let status = api
        .call("AmazonSSM.GetConnectionStatus", &json!({ "Target": id }))
        .await
        .unwrap();
    assert_eq!(status, json!({ "Target": id, "Status": "connected" }));
    let status = api
        .call(
            "AmazonSSM.GetConnectionStatus",
            &json!({ "Target": "mi-00000000000000000" }),
        )
        .await
        .unwrap();
    assert_eq!(status["Status"], "notconnected");

    // The agent stops: it is still registered, but no longer reachable.
    agent.stop().await;
    eventually("the agent to drop off", T, || async {
        server.state().hub.agent(&id).is_none().then_some(())
    })
    .await;
    let status = api
        .call("AmazonSSM.GetConnectionStatus", &json!({ "Target": id }))
        .await
        .unwrap();
    assert_eq!(status["Status"], "notconnected");
    let out = api
        .call("AmazonSSM.DescribeInstanceInformation", &json!({}))
        .await
        .unwrap();
    assert_eq!(
        out["InstanceInformationList"][0]["PingStatus"],
        "ConnectionLost"
    );
    let err = api
        .start_session(&json!({ "Target": id }))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, airlock_client::ApiError::Service { code, .. } if code == "TargetNotConnected"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_on_one_agent_do_not_mix() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let api = server.api();
    let mut a = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    let mut b = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    a.send("echo one-$((10+1))\n").await;
    b.send("echo two-$((20+2))\n").await;
    a.expect("one-11", T).await;
    b.expect("two-22", T).await;
    assert!(!a.seen().contains("two-22") && !b.seen().contains("one-11"));
    assert_eq!(server.sessions("Active").await.len(), 2);
    a.send("exit 1\n").await;
    b.send("exit 2\n").await;
    let (oa, _) = a.finish(T).await;
    let (ob, _) = b.finish(T).await;
    assert_eq!((oa.exit_code, ob.exit_code), (Some(1), Some(2)));
    server.wait_no_relays().await;
}
