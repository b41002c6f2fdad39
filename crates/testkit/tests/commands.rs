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
    // Input is fed while output is read: a command may answer as it reads.
    let feed = tokio::spawn(async move {
        for i in input {
            if in_tx.send(i).await.is_err() {
                break;
            }
        }
        in_tx
    });
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
    drop(feed.await);
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

    // A command that echoes its input back (cat) with more input than any pipe holds: input
    // and output flow at once, neither waits for the other to finish.
    let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<Input> = data
        .chunks(64 * 1024)
        .map(|c| Input::Data(Bytes::copy_from_slice(c)))
        .chain([Input::Eof])
        .collect();
    let opts = SessionOptions {
        no_pty: true,
        ..Default::default()
    };
    let (out, err, code) = drive(&api, nonint("cat; cat >&2 </dev/null"), opts, chunks).await;
    assert_eq!(code, Some(0));
    assert!(err.is_empty());
    assert_eq!(out.len(), data.len());
    assert!(out == data, "the bytes differ");

    // A command that never reads its input, sent more than a pipe holds: terminating the
    // session still ends it (input waiting for the pipe holds nothing else up).
    let grant = api
        .start_session(&nonint("sleep 600; echo never"))
        .await
        .unwrap();
    let (in_tx, in_rx) = mpsc::channel(64);
    let (out_tx, mut out_rx) = mpsc::channel(64);
    let opts = SessionOptions {
        no_pty: true,
        api: Some(api.clone()),
        ..Default::default()
    };
    let g = grant.clone();
    let session =
        tokio::spawn(async move { airlock_client::session::run(g, opts, in_rx, out_tx).await });
    let feed = tokio::spawn(async move {
        for _ in 0..32 {
            let chunk = Input::Data(Bytes::from(vec![b'q'; 64 * 1024]));
            if in_tx.send(chunk).await.is_err() {
                break;
            }
        }
        in_tx
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    api.terminate_session(&grant.session_id).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), session)
        .await
        .expect("the session ends when terminated")
        .unwrap()
        .expect("cleanly");
    assert_eq!(outcome.exit_code, None);
    if let Some(o) = out_rx.recv().await {
        panic!("no output expected: {o:?}");
    }
    feed.abort();
    server.wait_no_relays().await;
    airlock_testkit::eventually("the command killed", Duration::from_secs(10), || async {
        let ps = std::process::Command::new("pgrep")
            .args(["-f", "sleep 600; echo never"])
            .output()
            .unwrap();
        ps.stdout.is_empty().then_some(())
    })
    .await;

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

/// `airlock exec` (the built binary) as the admin of `server`, with `stdin`.
async fn airlock_exec(
    server: &TestServer,
    args: &[&str],
    stdin: &[u8],
) -> (Option<i32>, String, String) {
    airlock_exec_as(server, &server.admin, args, stdin).await
}

/// `airlock exec` signing as `profile`.
async fn airlock_exec_as(
    server: &TestServer,
    profile: &airlock_client::Profile,
    args: &[&str],
    stdin: &[u8],
) -> (Option<i32>, String, String) {
    use tokio::io::AsyncWriteExt;
    let bin = tokio::task::spawn_blocking(airlock_testkit::airlock_binary)
        .await
        .unwrap();
    let home = TempDir::new();
    let mut child = tokio::process::Command::new(&bin)
        .args(args)
        .env("HOME", &home.0)
        .env("AIRLOCK_LOG", "warn")
        .env_remove("AIRLOCK_PROFILE")
        .env("AIRLOCK_ENDPOINT", &server.url)
        .env("AIRLOCK_ACCESS_KEY_ID", &profile.access_key_id)
        .env("AIRLOCK_SECRET_ACCESS_KEY", &profile.secret_access_key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("airlock exec finishes")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn airlock_exec_passes_streams_arguments_stdin_and_the_status() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let id = agent.instance_id.as_str();

    let (code, out, err) = airlock_exec(
        &server,
        &["exec", "-t", id, "--", "echo", "a b", "$HOME", "it's"],
        b"",
    )
    .await;
    assert_eq!((code, out.as_str()), (Some(0), "a b $HOME it's\n"), "{err}");
    let (code, out, err) = airlock_exec(
        &server,
        &["exec", "--target", id, "-c", "echo x; echo y >&2; exit 3"],
        b"",
    )
    .await;
    assert_eq!((code, out.as_str(), err.as_str()), (Some(3), "x\n", "y\n"));
    // Piped stdin is the command's input, to its end.
    let (code, out, _) = airlock_exec(
        &server,
        &["exec", "-t", id, "--", "wc", "-c"],
        &[b'z'; 100_000],
    )
    .await;
    assert_eq!((code, out.trim()), (Some(0), "100000"));
    // Options after `--` belong to the command.
    let (code, out, _) =
        airlock_exec(&server, &["exec", "-t", id, "--", "ls", "-d", "/"], b"").await;
    assert_eq!((code, out.as_str()), (Some(0), "/\n"));
    // An unknown target: the API's error, status 1, nothing on stdout.
    let (code, out, err) = airlock_exec(
        &server,
        &["exec", "-t", "mi-00000000000000000", "--", "true"],
        b"",
    )
    .await;
    assert_eq!(code, Some(1), "{err}");
    assert!(out.is_empty() && !err.is_empty());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reaches_every_tagged_host_and_one_failing_does_not_stop_the_others() {
    let server = TestServer::start().await;
    let staging = json!([{"Key": "Environment", "Value": "staging"}]);
    let a = server.agent_tagged(staging.clone()).await;
    let b = server.agent_tagged(staging.clone()).await;
    let c = server.agent_tagged(staging.clone()).await;
    let prod = server
        .agent_tagged(json!([{"Key": "Environment", "Value": "prod"}]))
        .await;
    // One staging host goes offline: it stays registered and tagged.
    let gone = c.instance_id.clone();
    c.stop().await;
    airlock_testkit::eventually(
        "the stopped agent offline",
        Duration::from_secs(10),
        || async { server.state().hub.agent(&gone).is_none().then_some(()) },
    )
    .await;

    // The tag filters of DescribeInstanceInformation that the fan-out resolves through.
    let api = server.api();
    let ids = |filters: serde_json::Value| {
        let api = api.clone();
        async move {
            let out = api
                .call(
                    "AmazonSSM.DescribeInstanceInformation",
                    &json!({ "Filters": filters }),
                )
                .await
                .unwrap();
            let mut v: Vec<String> = out["InstanceInformationList"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["InstanceId"].as_str().unwrap().to_owned())
                .collect();
            v.sort();
            v
        }
    };
    assert_eq!(
        ids(json!([{"Key": "tag:Environment", "Values": ["prod"]}])).await,
        vec![prod.instance_id.clone()]
    );
    assert_eq!(
        ids(
            json!([{"Key": "tag:Environment", "Values": ["staging", "prod"]},
                   {"Key": "PingStatus", "Values": ["Online"]}])
        )
        .await
        .len(),
        3
    );
    assert_eq!(
        ids(json!([{"Key": "tag-key", "Values": ["Environment"]}]))
            .await
            .len(),
        4
    );
    assert!(ids(json!([{"Key": "tag:environment", "Values": ["prod"]}]))
        .await
        .is_empty());

    let args = [
        "exec",
        "--targets",
        "tag:Environment=staging",
        "--concurrency",
        "2",
        "-c",
        "echo hello; echo oops >&2",
    ];
    let (code, out, err) = airlock_exec(&server, &args, b"").await;
    assert_eq!(code, Some(1), "one host failed: {err}");
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    let mut want = vec![
        format!("{}: hello", a.instance_id),
        format!("{}: hello", b.instance_id),
    ];
    want.sort();
    assert_eq!(lines, want, "stdout, prefixed per host");
    for host in [&a.instance_id, &b.instance_id] {
        assert!(err.contains(&format!("{host}: oops\n")), "{err}");
    }
    assert!(
        !out.contains(&prod.instance_id) && !err.contains(&prod.instance_id),
        "prod is not staging"
    );
    let summary = err.lines().last().unwrap();
    assert!(
        summary.starts_with("2 ok, 1 failed (") && summary.contains(&gone),
        "{summary}"
    );

    // JSON: one object per host; the offline host has an error and no exit code. Ids and
    // tags mix, duplicates count once.
    let targets = format!(
        "{},tag:Environment=staging,{}",
        prod.instance_id, a.instance_id
    );
    let args = [
        "--output",
        "json",
        "exec",
        "--targets",
        &targets,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 0",
    ];
    let (code, out, err) = airlock_exec(&server, &args, b"").await;
    assert_eq!(code, Some(1), "{err}");
    let results: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 4, "{out}");
    for r in &results {
        let target = r["target"].as_str().unwrap();
        assert!(r["duration_ms"].as_u64().is_some());
        if target == gone {
            assert!(
                r["exit_code"].is_null() && r["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{r}"
            );
        } else {
            assert_eq!(r["exit_code"], 0, "{r}");
            assert_eq!(
                (r["stdout"].as_str(), r["stderr"].as_str()),
                (Some("out\n"), Some("err\n"))
            );
            assert!(r["error"].is_null());
        }
    }
    let summary = err.lines().last().unwrap();
    assert!(
        summary.starts_with(&format!("3 ok, 1 failed ({gone}: ")),
        "{err}"
    );

    // A non-zero exit on every reachable host: each reported, status 1.
    let args = [
        "exec",
        "--targets",
        &format!("{},{}", a.instance_id, b.instance_id),
        "--",
        "sh",
        "-c",
        "exit 9",
    ];
    let (code, _, err) = airlock_exec(&server, &args, b"").await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains("0 ok, 2 failed") && err.contains("exit 9"),
        "{err}"
    );
    // All succeed: status 0.
    let args = [
        "exec",
        "--targets",
        &format!("{},{}", a.instance_id, b.instance_id),
        "--",
        "true",
    ];
    let (code, _, err) = airlock_exec(&server, &args, b"").await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(err.trim(), "2 ok, 0 failed");
    // A tag nobody has: a clear error.
    let (code, _, err) = airlock_exec(
        &server,
        &["exec", "--targets", "tag:Environment=nowhere", "--", "true"],
        b"",
    )
    .await;
    assert_eq!(code, Some(1));
    assert!(err.contains("no target matched"), "{err}");

    for agent in [a, b, prod] {
        agent.stop().await;
    }
}

/// The AWS CLI (`$AIRLOCK_TEST_AWS`, which `scripts/test` installs) against the server.
fn aws_cli(server: &TestServer, home: &TempDir, path: &str) -> tokio::process::Command {
    let aws = std::env::var_os("AIRLOCK_TEST_AWS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "aws".into());
    let mut cmd = tokio::process::Command::new(aws);
    cmd.args([
        "ssm",
        "start-session",
        "--endpoint-url",
        &server.url,
        "--region",
        "us-east-1",
    ]);
    // The CLI's own retries, as users have them: two identical start-session calls signed in
    // the same second share a signature, and the server answers the second ThrottlingException
    // so that the CLI signs it again (replay.rs).
    airlock_testkit::aws::clean_aws_env(&mut cmd, &home.0)
        .env("PATH", path)
        .env("AWS_ACCESS_KEY_ID", &server.admin.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &server.admin.secret_access_key)
        .env("AIRLOCK_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_cli_starts_command_sessions() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let home = TempDir::new();
    let params = r#"{"command":["echo via-aws $((40+2)); echo to-stderr >&2; exit 6"],"separateOutputStream":["true"]}"#;
    // No session-manager-plugin on PATH: the CLI makes its StartSession call (the shape under
    // test), then finds no plugin and terminates the session it opened.
    let bare_path = "/usr/bin:/bin";
    let out = aws_cli(&server, &home, bare_path)
        .args([
            "--target",
            &agent.instance_id,
            "--document-name",
            "AWS-StartNonInteractiveCommand",
        ])
        .args(["--parameters", params])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .unwrap()
        .expect("the AWS CLI runs ($AIRLOCK_TEST_AWS; ./scripts/test installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SessionManagerPlugin is not found"),
        "{stderr}"
    );
    let history = airlock_testkit::eventually(
        "the session in History",
        Duration::from_secs(10),
        || async { server.sessions("History").await.into_iter().next() },
    )
    .await;
    assert_eq!(
        history["DocumentName"], "AWS-StartNonInteractiveCommand",
        "{history}"
    );
    assert_eq!(history["Target"], agent.instance_id.as_str());

    // With Airlock's binary as the plugin, the command runs: its stdout and stderr apart.
    let bin = tokio::task::spawn_blocking(airlock_testkit::airlock_binary)
        .await
        .unwrap();
    let path = airlock_testkit::aws::plugin_path(&home.0, &bin);
    let out = aws_cli(&server, &home, &path)
        .args([
            "--target",
            &agent.instance_id,
            "--document-name",
            "AWS-StartNonInteractiveCommand",
        ])
        .args(["--parameters", params])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .unwrap()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.contains("via-aws 42\n"),
        "stdout {stdout:?} stderr {stderr:?}"
    );
    assert!(
        !stdout.contains("to-stderr") && stderr.contains("to-stderr\n"),
        "stdout {stdout:?} stderr {stderr:?}"
    );
    let sessions = server.sessions("History").await;
    let ran = sessions
        .iter()
        .find(|s| s["ExitCode"] == 6)
        .unwrap_or_else(|| panic!("a session with ExitCode 6: {sessions:?}"));
    assert_eq!(ran["DocumentName"], "AWS-StartNonInteractiveCommand");

    // An interactive command through the same path runs in a PTY.
    let out = aws_cli(&server, &home, &path)
        .args([
            "--target",
            &agent.instance_id,
            "--document-name",
            "AWS-StartInteractiveCommand",
        ])
        .args(["--parameters", r#"{"command":["tty"]}"#])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("/dev/pts/"),
        "{stdout:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_airlock_exec_ends_the_remote_commands() {
    let server = TestServer::start().await;
    let a = server.agent().await;
    let b = server.agent().await;
    let bin = tokio::task::spawn_blocking(airlock_testkit::airlock_binary)
        .await
        .unwrap();
    let home = TempDir::new();
    let targets = format!("{},{}", a.instance_id, b.instance_id);
    let single = ["exec", "-t", a.instance_id.as_str(), "--", "sleep", "600"];
    let fan = ["exec", "--targets", targets.as_str(), "--", "sleep", "600"];
    for (args, sessions) in [(&single[..], 1usize), (&fan[..], 2)] {
        let child = tokio::process::Command::new(&bin)
            .args(args)
            .env("HOME", &home.0)
            .env("AIRLOCK_LOG", "warn")
            .env_remove("AIRLOCK_PROFILE")
            .env("AIRLOCK_ENDPOINT", &server.url)
            .env("AIRLOCK_ACCESS_KEY_ID", &server.admin.access_key_id)
            .env("AIRLOCK_SECRET_ACCESS_KEY", &server.admin.secret_access_key)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        airlock_testkit::eventually("the commands running", Duration::from_secs(20), || async {
            (server.sessions("Active").await.len() == sessions).then_some(())
        })
        .await;
        // Let the agents start the commands before the interrupt.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .expect("airlock exec exits after Ctrl-C")
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(130),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        airlock_testkit::eventually(
            "no session left active",
            Duration::from_secs(10),
            || async { server.sessions("Active").await.is_empty().then_some(()) },
        )
        .await;
    }
    // Nothing of the commands is left running on the host.
    airlock_testkit::eventually(
        "the remote sleeps gone",
        Duration::from_secs(10),
        || async {
            let ps = std::process::Command::new("pgrep")
                .args(["-f", "^sleep 600$"])
                .output()
                .unwrap();
            ps.stdout.is_empty().then_some(())
        },
    )
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_runs_only_where_the_callers_policy_allows() {
    let server = TestServer::start().await;
    let staging = server
        .agent_tagged(json!([{"Key": "Environment", "Value": "staging"}]))
        .await;
    let prod = server
        .agent_tagged(json!([{"Key": "Environment", "Value": "prod"}]))
        .await;
    let hidden = server
        .agent_tagged(json!([{"Key": "Environment", "Value": "hidden"}]))
        .await;
    // Bob sees staging and prod, but may open sessions on staging only.
    let bob = server.user("bob", false).await;
    let policy = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "ssm:StartSession", "Resource": "*",
         "Condition": {"StringEquals": {"ssm:resourceTag/Environment": "staging"}}},
        {"Effect": "Allow", "Action": "ssm:StartSession",
         "Resource": "arn:aws:ssm:*::document/AWS-StartNonInteractiveCommand"},
        {"Effect": "Allow", "Action": "ssm:DescribeInstanceInformation", "Resource": "*",
         "Condition": {"StringEqualsIfExists": {"ssm:resourceTag/Environment": ["staging", "prod"]}}},
    ]});
    server
        .api()
        .call(
            "Airlock.PutUserPolicy",
            &json!({"UserName": "bob", "PolicyName": "main", "PolicyDocument": policy.to_string()}),
        )
        .await
        .expect("PutUserPolicy");
    let marker = TempDir::new();
    std::fs::set_permissions(
        &marker.0,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let touch = |name: &str| format!("touch {}/$(hostname)-{name}", marker.0.display());

    // Prod: Bob can list it, not run on it; the refusal is that host's failure.
    let cmd = touch("prod");
    let args = [
        "exec",
        "--targets",
        "tag:Environment=prod",
        "-c",
        cmd.as_str(),
    ];
    let (code, out, err) = airlock_exec_as(&server, &bob, &args, b"").await;
    assert_eq!(code, Some(1), "{err}");
    assert!(out.is_empty());
    let summary = err.lines().last().unwrap();
    assert!(
        summary.starts_with(&format!("0 ok, 1 failed ({}: ", prod.instance_id))
            && summary.contains("not authorized"),
        "{err}"
    );
    // Mixed: staging runs, prod is refused, and the hidden instance is not even found by tag.
    let cmd = touch("mixed");
    let targets = format!(
        "tag:Environment=staging,{},tag:Environment=hidden",
        prod.instance_id
    );
    let args = ["exec", "--targets", targets.as_str(), "-c", cmd.as_str()];
    let (code, _, err) = airlock_exec_as(&server, &bob, &args, b"").await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("no instance you may see has the tag Environment=hidden"),
        "{err}"
    );
    assert!(
        err.lines().last().unwrap().starts_with("1 ok, 1 failed ("),
        "{err}"
    );
    assert!(!err.contains(&hidden.instance_id), "{err}");
    // One command ran, on staging (the agents share this host, so one file).
    let ran: Vec<String> = std::fs::read_dir(&marker.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert!(ran[0].ends_with("-mixed"), "{ran:?}");
    // Naming the hidden instance by id: refused like any other instance Bob may not use.
    let args = ["exec", "-t", hidden.instance_id.as_str(), "--", "true"];
    let (code, _, err) = airlock_exec_as(&server, &bob, &args, b"").await;
    assert_eq!(code, Some(1));
    assert!(err.contains("not authorized"), "{err}");
    for a in [staging, prod, hidden] {
        a.stop().await;
    }
}
