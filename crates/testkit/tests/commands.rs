//! Command sessions end to end: the real server, real agents, real processes on this host.
//! `AWS-StartNonInteractiveCommand` keeps stdout and stderr apart and reports the exit status
//! exactly (large and binary output, signals); `AWS-StartInteractiveCommand` runs in a PTY;
//! the SDK's fan-out and `airlock exec` (the binary) run on several agents, one failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;

use airlock_client::command::{self, CommandRequest};
use airlock_client::session::{Input, Output, SessionOptions};
use airlock_client::ApiClient;
use airlock_testkit::{TempDir, TestServer};

fn request(target: &str, command: &str) -> CommandRequest {
    CommandRequest {
        target: target.to_owned(),
        command: command.to_owned(),
        ..Default::default()
    }
}

async fn run(api: &ApiClient, target: &str, cmd: &str) -> command::CommandOutput {
    tokio::time::timeout(
        Duration::from_secs(60),
        command::run(api, &request(target, cmd)),
    )
    .await
    .expect("the command ends in time")
    .expect("the command runs")
}

/// Runs a command session through the session code with the given options, feeding `input`
/// in order, and returns (stdout, stderr, exit code).
async fn drive(
    api: &ApiClient,
    start: serde_json::Value,
    opts: SessionOptions,
    input: Vec<Input>,
) -> (Vec<u8>, Vec<u8>, Option<i32>) {
    let grant = api.start_session(&start).await.expect("StartSession");
    let (in_tx, in_rx) = mpsc::channel(64);
    let (out_tx, mut out_rx) = mpsc::channel(64);
    let opts = SessionOptions {
        api: Some(api.clone()),
        ..opts
    };
    let session =
        tokio::spawn(async move { airlock_client::session::run(grant, opts, in_rx, out_tx).await });
    for i in input {
        in_tx.send(i).await.unwrap();
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let collect = async {
        while let Some(o) = out_rx.recv().await {
            match o {
                Output::Stdout(b) => out.extend_from_slice(&b),
                Output::Stderr(b) => err.extend_from_slice(&b),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), collect)
        .await
        .expect("output ends in time");
    let outcome = session.await.unwrap().expect("the session ends cleanly");
    drop(in_tx);
    (out, err, outcome.exit_code)
}

#[tokio::test]
async fn non_interactive_commands_keep_stdout_stderr_and_the_exit_status_apart() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let api = server.api();
    let id = &agent.instance_id;

    let out = run(&api, id, "echo out; echo err >&2; echo out2; exit 3").await;
    assert_eq!(out.stdout, b"out\nout2\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.exit_code, 3);

    let out = run(&api, id, "true").await;
    assert_eq!(
        (out.exit_code, out.stdout.len(), out.stderr.len()),
        (0, 0, 0)
    );
    assert_eq!(run(&api, id, "exit 255").await.exit_code, 255);
    // No terminal: stdin is not a tty, and the environment is the run-as user's login one.
    let out = run(
        &api,
        id,
        r#"test -t 0 || echo notty; [ "$HOME" = "$(getent passwd "$(id -un)" | cut -d: -f6)" ] && [ "$USER" = "$(id -un)" ] && echo env-ok"#,
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "notty\nenv-ok\n");
    // A command killed by a signal: 128 + n, as a shell reports it.
    assert_eq!(run(&api, id, "kill -KILL $$").await.exit_code, 137);
    assert_eq!(run(&api, id, "kill -TERM $$").await.exit_code, 143);
    // The command line is the shell's: quoting, pipes and expansions work as typed.
    let line = command::join_args(&["printf", "[%s]", "a b", "$(id)", "it's"]);
    let out = run(&api, id, &format!("{line} | tr a A")).await;
    assert_eq!(out.stdout, b"[A b][$(id)][it's]");

    // The session's end is recorded with the exit status.
    let grant = command::start(&api, &request(id, "exit 42")).await.unwrap();
    let (_in_tx, in_rx) = mpsc::channel(1);
    let (out_tx, _out_rx) = mpsc::channel(8);
    let opts = SessionOptions {
        no_pty: true,
        ..Default::default()
    };
    let outcome = airlock_client::session::run(grant.clone(), opts, in_rx, out_tx)
        .await
        .unwrap();
    assert_eq!(outcome.exit_code, Some(42));
    let recorded = server.wait_history(&grant.session_id).await;
    assert_eq!(recorded["ExitCode"], 42, "{recorded}");
    assert_eq!(recorded["DocumentName"], "AWS-StartNonInteractiveCommand");
    agent.stop().await;
}

#[tokio::test]
async fn large_binary_output_passes_exactly_on_both_streams() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let api = server.api();
    let dir = TempDir::new();
    // 1.5 MiB of random bytes (every byte value, no line structure): many frames.
    let data: Vec<u8> = {
        use std::io::Read;
        let mut v = vec![0u8; 3 * 512 * 1024 + 7];
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut v)
            .unwrap();
        v
    };
    let file = dir.0.join("blob");
    std::fs::write(&file, &data).unwrap();
    let path = file.display().to_string();

    let out = run(
        &api,
        &agent.instance_id,
        &format!("cat '{path}'; cat '{path}' >&2; echo tail"),
    )
    .await;
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stdout.len(), data.len() + 5);
    assert!(out.stdout[..data.len()] == data[..], "stdout bytes differ");
    assert_eq!(&out.stdout[data.len()..], b"tail\n");
    assert!(out.stderr == data, "stderr bytes differ");

    // separateOutputStream=false: one stream, in the order written, with the status.
    let start = json!({
        "Target": agent.instance_id,
        "DocumentName": "AWS-StartNonInteractiveCommand",
        "Parameters": {"command": [format!("echo a; echo b >&2; cat '{path}'; echo c >&2; exit 4")],
                       "separateOutputStream": ["false"]},
    });
    let opts = SessionOptions {
        no_pty: true,
        ..Default::default()
    };
    let (out, err, code) = drive(&api, start, opts, vec![Input::Eof]).await;
    assert!(err.is_empty(), "merged: nothing on stderr");
    assert_eq!(code, Some(4));
    assert_eq!(&out[..4], b"a\nb\n");
    assert!(out[4..4 + data.len()] == data[..], "merged bytes differ");
    assert_eq!(&out[4 + data.len()..], b"c\n");
    agent.stop().await;
}

#[tokio::test]
async fn stdin_feeds_an_airlock_client_and_control_keys_signal_for_an_aws_client() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let api = server.api();
    let nonint = |cmd: &str| {
        json!({"Target": agent.instance_id, "DocumentName": "AWS-StartNonInteractiveCommand",
               "Parameters": {"command": [cmd], "separateOutputStream": ["true"]}})
    };
    // Airlock client (no_pty): the bytes are the command's stdin, EOF ends it.
    let opts = SessionOptions {
        no_pty: true,
        ..Default::default()
    };
    let (out, _, code) = drive(
        &api,
        nonint("wc -c; echo done"),
        opts,
        vec![Input::Data(Bytes::from(vec![b'x'; 300_000])), Input::Eof],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out).trim(), "300000\ndone");
    assert_eq!(code, Some(0));

    // As the AWS plugin does (no no_pty): input is not stdin; Ctrl-C interrupts the command.
    let opts = SessionOptions::default();
    let (out, _, code) = drive(
        &api,
        nonint("cat; echo after-cat; sleep 30"),
        opts,
        vec![Input::Data(Bytes::from_static(b"typed\n\x03"))],
    )
    .await;
    // cat read /dev/null (nothing typed reached it); SIGINT went to the whole group.
    assert_eq!(code, Some(130), "{}", String::from_utf8_lossy(&out));
    assert!(!String::from_utf8_lossy(&out).contains("typed"));
    agent.stop().await;
}

#[tokio::test]
async fn interactive_commands_run_in_a_pty_of_the_clients_size() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let api = server.api();
    let start = json!({"Target": agent.instance_id, "DocumentName": "AWS-StartInteractiveCommand",
                       "Parameters": {"command": ["read x; tty; stty size; echo \"got $x\"; exit 7"]}});
    let (out, err, code) = drive(
        &api,
        start,
        SessionOptions::default(),
        vec![
            Input::Size {
                cols: 101,
                rows: 33,
            },
            Input::Data(Bytes::from_static(b"hello\r")),
        ],
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(err.is_empty());
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("33 101"), "{text}");
    assert!(text.contains("got hello"), "{text}");
    assert_eq!(code, Some(7));

    // Through the SDK's interactive request: a terminal, stderr merged.
    let req = CommandRequest {
        interactive: true,
        ..request(&agent.instance_id, "test -t 1 && echo tty; echo e >&2")
    };
    let out = command::run(&api, &req).await.unwrap();
    assert_eq!(out.exit_code, 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tty\r\ne\r\n");
    assert!(out.stderr.is_empty());
    agent.stop().await;
}
