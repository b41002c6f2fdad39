//! The AWS tools against Airlock: boto3 and the `aws` CLI, pointed at a real server on loopback
//! with `endpoint_url` / `--endpoint-url` and an Airlock access key, call StartSession,
//! DescribeSessions, TerminateSession, DescribeInstanceInformation and the tag operations, and
//! see a denied call as botocore's `AccessDeniedException`.
//!
//! The interpreter is `$AIRLOCK_TEST_PYTHON` (`scripts/test` sets it to a venv with boto3 and
//! awscli), else `python3` when it can import boto3; the CLI is `$AIRLOCK_TEST_AWS`, else `aws`.
//! With `airlock` on PATH as `session-manager-plugin`, `aws ssm start-session` runs shells,
//! the port-forwarding documents (local port, connections echoed back, Ctrl-C) and the SSH
//! document (stdin/stdout) through Airlock's client.
//!
//! Under `CI=true` a missing tool fails the test; elsewhere it is reported and the test returns.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use airlock_testkit::aws::{aws_cli, clean_aws_env, missing, plugin_path, runs};
use airlock_testkit::{TempDir, TestServer};

const TOOL_TIMEOUT: Duration = Duration::from_secs(90);

async fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("AIRLOCK_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"));
    if runs(&candidate, &["-c", "import boto3"]).await {
        Some(candidate)
    } else {
        missing(&format!("boto3 (through {})", candidate.display()))
    }
}

/// Output of a tool run: exit status, stdout, stderr.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs a tool with a clean AWS environment (no profile, config or metadata lookups) plus `env`.
async fn run_tool(program: &PathBuf, args: &[&str], env: &[(&str, &str)], home: &TempDir) -> Run {
    let mut cmd = tokio::process::Command::new(program);
    clean_aws_env(cmd.args(args), &home.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(TOOL_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{} did not finish in {TOOL_TIMEOUT:?}", program.display()))
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The boto3 script: every call's result (or error code and message) as one JSON object.
const SCRIPT: &str = r#"
import json, os, sys
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ep = os.environ["AIRLOCK_EP"]
iid = os.environ["AIRLOCK_INSTANCE"]
cfg = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=10, read_timeout=20)

def client(prefix):
    return boto3.client(
        "ssm", endpoint_url=ep, region_name="us-east-1", config=cfg,
        aws_access_key_id=os.environ[prefix + "_KEY"],
        aws_secret_access_key=os.environ[prefix + "_SECRET"],
    )

admin = client("ADMIN")
user = client("USER")
out = {"boto3": boto3.__version__}

s = admin.start_session(Target=iid)
out["start"] = {k: s.get(k) for k in ("SessionId", "TokenValue", "StreamUrl")}
sid = s["SessionId"]
out["active"] = [x["SessionId"] for x in admin.describe_sessions(State="Active")["Sessions"]]
out["terminate"] = admin.terminate_session(SessionId=sid).get("SessionId")
out["history"] = {
    x["SessionId"]: x["Status"] for x in admin.describe_sessions(State="History")["Sessions"]
}
info = admin.describe_instance_information()["InstanceInformationList"]
out["instances"] = {i["InstanceId"]: i["PingStatus"] for i in info}
filtered = admin.describe_instance_information(
    Filters=[{"Key": "InstanceIds", "Values": [iid]}]
)["InstanceInformationList"]
out["filtered"] = [i["InstanceId"] for i in filtered]

admin.add_tags_to_resource(
    ResourceType="ManagedInstance", ResourceId=iid,
    Tags=[{"Key": "Env", "Value": "dev"}, {"Key": "Team", "Value": "red"}],
)
out["tags_added"] = admin.list_tags_for_resource(
    ResourceType="ManagedInstance", ResourceId=iid
)["TagList"]
admin.remove_tags_from_resource(ResourceType="ManagedInstance", ResourceId=iid, TagKeys=["Team"])
out["tags_removed"] = admin.list_tags_for_resource(
    ResourceType="ManagedInstance", ResourceId=iid
)["TagList"]

# The same StartSession twice within one second signs alike (SigV4 dates have one-second
# resolution): the server answers the second as ThrottlingException, the SDK retries it with a
# fresh signature, and both calls succeed.
import time
retrying = boto3.client(
    "ssm", endpoint_url=ep, region_name="us-east-1",
    config=Config(retries={"max_attempts": 6, "mode": "standard"}),
    aws_access_key_id=os.environ["ADMIN_KEY"],
    aws_secret_access_key=os.environ["ADMIN_SECRET"],
)
time.sleep(1.02 - (time.time() % 1))
twice = [retrying.start_session(Target=iid, Reason="same second") for _ in range(2)]
out["twice"] = [t["SessionId"] for t in twice]
out["twice_retries"] = [t["ResponseMetadata"].get("RetryAttempts", 0) for t in twice]
for t in twice:
    admin.terminate_session(SessionId=t["SessionId"])

def denied(call):
    modelled = getattr(user.exceptions, "AccessDeniedException", None)
    try:
        call()
        return {"raised": None}
    except ClientError as e:
        return {
            "raised": type(e).__name__,
            "modelled": modelled is not None and isinstance(e, modelled),
            "code": e.response["Error"]["Code"],
            "message": e.response["Error"]["Message"],
            "status": e.response["ResponseMetadata"]["HTTPStatusCode"],
            "request_id": e.response["ResponseMetadata"].get("RequestId"),
        }

out["denied_describe"] = denied(lambda: user.describe_instance_information())
out["denied_start"] = denied(lambda: user.start_session(Target=iid))
out["denied_tag"] = denied(lambda: user.add_tags_to_resource(
    ResourceType="ManagedInstance", ResourceId=iid, Tags=[{"Key": "x", "Value": "y"}]))
print(json.dumps(out, default=str))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_drives_sessions_instances_and_tags_and_sees_access_denied() {
    let Some(py) = python().await else { return };
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let user = server.user("botouser", false).await;
    let dir = TempDir::new();
    let script = dir.0.join("compat.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let run = run_tool(
        &py,
        &[script.to_str().unwrap()],
        &[
            ("AIRLOCK_EP", &server.url),
            ("AIRLOCK_INSTANCE", &agent.instance_id),
            ("ADMIN_KEY", &server.admin.access_key_id),
            ("ADMIN_SECRET", &server.admin.secret_access_key),
            ("USER_KEY", &user.access_key_id),
            ("USER_SECRET", &user.secret_access_key),
        ],
        &dir,
    )
    .await;
    assert!(
        run.ok,
        "the boto3 script failed:\n{}\n{}",
        run.stdout, run.stderr
    );
    let out: Value = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "unreadable script output ({e}):\n{}\n{}",
            run.stdout, run.stderr
        )
    });
    let iid = agent.instance_id.as_str();

    let sid = out["start"]["SessionId"].as_str().unwrap();
    assert!(sid.starts_with("admin-"), "{out}");
    let twice = out["twice"].as_array().expect("two sessions");
    assert_eq!(twice.len(), 2, "{out}");
    assert_ne!(twice[0], twice[1], "{out}");
    assert!(
        out["start"]["TokenValue"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{out}"
    );
    let stream = out["start"]["StreamUrl"].as_str().unwrap();
    assert!(
        stream.starts_with("ws://127.0.0.1:")
            && stream.contains(&format!("/v1/data-channel/{sid}")),
        "{stream}"
    );
    assert!(
        out["active"].as_array().unwrap().contains(&json!(sid)),
        "{out}"
    );
    assert_eq!(out["terminate"], sid);
    assert_eq!(out["history"][sid], "Terminated", "{out}");
    assert_eq!(out["instances"][iid], "Online", "{out}");
    assert_eq!(out["filtered"], json!([iid]));
    let mut added: Vec<(String, String)> = out["tags_added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["Key"].as_str().unwrap().into(),
                t["Value"].as_str().unwrap().into(),
            )
        })
        .collect();
    added.sort();
    assert_eq!(
        added,
        vec![("Env".into(), "dev".into()), ("Team".into(), "red".into())]
    );
    assert_eq!(
        out["tags_removed"],
        json!([{ "Key": "Env", "Value": "dev" }])
    );

    let user_arn = "arn:aws:iam::000000000000:user/botouser";
    for (key, action, resource) in [
        (
            "denied_describe",
            "ssm:DescribeInstanceInformation",
            "arn:aws:ssm:us-east-1:000000000000:*".to_owned(),
        ),
        (
            "denied_start",
            "ssm:StartSession",
            format!("arn:aws:ssm:us-east-1:000000000000:managed-instance/{iid}"),
        ),
        (
            "denied_tag",
            "ssm:AddTagsToResource",
            format!("arn:aws:ssm:us-east-1:000000000000:managed-instance/{iid}"),
        ),
    ] {
        let d = &out[key];
        assert_eq!(d["code"], "AccessDeniedException", "{key}: {d}");
        assert_eq!(d["status"], 400, "{key}: {d}");
        assert!(
            d["request_id"].as_str().is_some_and(|r| !r.is_empty()),
            "{key}: {d}"
        );
        // botocore models SSM's AccessDeniedException: the client raises that class.
        assert_eq!(d["modelled"], true, "{key}: {d}");
        assert_eq!(d["raised"], "AccessDeniedException", "{key}: {d}");
        assert_eq!(
            d["message"],
            format!(
                "User: {user_arn} is not authorized to perform: {action} on resource: {resource} because no identity-based policy allows the {action} action"
            ),
            "{key}"
        );
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_cli_lists_instances_and_reports_access_denied() {
    let Some(aws) = aws_cli().await else { return };
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let user = server.user("cliuser", false).await;
    let dir = TempDir::new();
    let args = [
        "ssm",
        "describe-instance-information",
        "--endpoint-url",
        &server.url,
        "--region",
        "us-east-1",
        "--output",
        "json",
    ];
    let run = run_tool(
        &aws,
        &args,
        &[
            ("AWS_ACCESS_KEY_ID", &server.admin.access_key_id),
            ("AWS_SECRET_ACCESS_KEY", &server.admin.secret_access_key),
        ],
        &dir,
    )
    .await;
    assert!(run.ok, "aws failed:\n{}\n{}", run.stdout, run.stderr);
    let out: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("unreadable aws output ({e}):\n{}", run.stdout));
    let list = out["InstanceInformationList"].as_array().unwrap();
    assert!(
        list.iter()
            .any(|i| i["InstanceId"] == agent.instance_id.as_str() && i["PingStatus"] == "Online"),
        "{out}"
    );

    // The same call as a user without the permission.
    let run = run_tool(
        &aws,
        &args,
        &[
            ("AWS_ACCESS_KEY_ID", &user.access_key_id),
            ("AWS_SECRET_ACCESS_KEY", &user.secret_access_key),
        ],
        &dir,
    )
    .await;
    assert!(!run.ok, "a denied call must fail: {}", run.stdout);
    assert!(
        run.stderr.contains("(AccessDeniedException)")
            && run.stderr.contains(
                "User: arn:aws:iam::000000000000:user/cliuser is not authorized to perform: ssm:DescribeInstanceInformation"
            ),
        "{}",
        run.stderr
    );
    agent.stop().await;
}

/// `aws ssm start-session --endpoint-url …` runs `session-manager-plugin`; with `airlock` on
/// PATH under that name, the AWS CLI's own session goes through Airlock's client end to end.
#[tokio::test]
async fn the_aws_cli_starts_a_session_with_airlock_as_its_plugin() {
    let Some(aws) = aws_cli().await else { return };
    let bin = tokio::task::spawn_blocking(airlock_testkit::airlock_binary)
        .await
        .unwrap();
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let dir = TempDir::new();
    let path = plugin_path(&dir.0, &bin);
    let mut cmd = tokio::process::Command::new(&aws);
    cmd.args([
        "ssm",
        "start-session",
        "--endpoint-url",
        &server.url,
        "--region",
        "us-east-1",
        "--target",
        &agent.instance_id,
    ])
    .env("PATH", path)
    .env("HOME", &dir.0)
    .env("AWS_CONFIG_FILE", dir.0.join("aws-config"))
    .env("AWS_SHARED_CREDENTIALS_FILE", dir.0.join("aws-credentials"))
    .env("AWS_ACCESS_KEY_ID", &server.admin.access_key_id)
    .env("AWS_SECRET_ACCESS_KEY", &server.admin.secret_access_key)
    .env_remove("AWS_SESSION_TOKEN")
    .env_remove("AWS_PROFILE")
    .env("AWS_EC2_METADATA_DISABLED", "true")
    .env("NO_PROXY", "127.0.0.1")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let child = cmd.spawn().unwrap();
    let (stdout, _) = feed_and_finish(child, b"echo through-the-plugin $((20+22))\nexit 5\n").await;
    assert!(
        stdout.contains("Starting session with SessionId: admin-"),
        "{stdout}"
    );
    assert!(stdout.contains("through-the-plugin 42"), "{stdout}");
    assert!(
        stdout.contains("Exiting session with sessionId: admin-"),
        "{stdout}"
    );
    // The shell's own status is on the record even though the plugin exits 0, as AWS's does.
    let history = server
        .api()
        .call("AmazonSSM.DescribeSessions", &json!({ "State": "History" }))
        .await
        .unwrap();
    assert_eq!(history["Sessions"][0]["ExitCode"], 5, "{history}");
}

// ---------------------------------------------------------------------------------------------
// Port documents through the AWS CLI, with `airlock` as its plugin

/// Echoes every connection back, closing its write side at the client's EOF.
async fn echo_target() -> u16 {
    use tokio::io::AsyncWriteExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((c, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let (mut r, mut w) = c.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    port
}

/// A directory holding `session-manager-plugin` → the airlock binary, and a PATH that finds it
/// first.
/// `aws ssm start-session --target … <extra>` as the admin, with airlock as the plugin, in a
/// process group of its own (so that a test can press Ctrl-C as a terminal does: SIGINT to the
/// whole group; the AWS CLI ignores it while its plugin runs).
fn aws_start_session(
    aws: &PathBuf,
    server: &TestServer,
    target: &str,
    extra: &[&str],
    path: &str,
    dir: &TempDir,
) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(aws);
    cmd.args([
        "ssm",
        "start-session",
        "--endpoint-url",
        &server.url,
        "--region",
        "us-east-1",
        "--target",
        target,
    ])
    .args(extra);
    clean_aws_env(&mut cmd, &dir.0)
        .env("PATH", path)
        .env("AWS_ACCESS_KEY_ID", &server.admin.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &server.admin.secret_access_key)
        .env_remove("SSM_PLUGIN_LOCAL_HOST")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    cmd.spawn().unwrap()
}

/// Reads the child's stdout line by line until a line contains `needle`; returns all so far.
async fn read_until(
    lines: &mut tokio::io::BufReader<tokio::process::ChildStdout>,
    seen: &mut String,
    needle: &str,
) {
    use tokio::io::AsyncBufReadExt;
    let found = tokio::time::timeout(TOOL_TIMEOUT, async {
        while !seen.contains(needle) {
            let mut line = String::new();
            if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                return false;
            }
            seen.push_str(&line);
        }
        true
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "{needle:?} never came; stdout so far:\n{seen}"
    );
}

/// Presses Ctrl-C on the AWS CLI's process group and returns its exit status, the rest of its
/// stdout, and its stderr.
async fn ctrl_c(
    mut child: tokio::process::Child,
    mut lines: tokio::io::BufReader<tokio::process::ChildStdout>,
) -> (std::process::ExitStatus, String, String) {
    use tokio::io::AsyncReadExt;
    let pgid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGINT).unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (rest, err, status) = tokio::time::timeout(Duration::from_secs(20), async {
        let mut rest = String::new();
        let mut err = String::new();
        let _ = lines.read_to_string(&mut rest).await;
        let _ = stderr.read_to_string(&mut err).await;
        (rest, err, child.wait().await.unwrap())
    })
    .await
    .expect("the AWS CLI ends after Ctrl-C");
    (status, rest, err)
}

/// Sends `n` bytes of a pattern through `port` and checks they come back unchanged.
async fn round_trip(port: u16, seed: u8, n: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let data: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
    let c = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut r, mut w) = c.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move { w.write_all(&sent).await.map(|_| w) });
    let mut got = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(30), r.read_exact(&mut got))
        .await
        .expect("the echo comes back in time")
        .unwrap();
    assert!(
        got == data,
        "{n} bytes through port {port} came back changed"
    );
    drop(writer.await.unwrap().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_cli_forwards_a_port_with_airlock_as_its_plugin() {
    let Some(aws) = aws_cli().await else { return };
    let bin = tokio::task::spawn_blocking(airlock_testkit::airlock_binary)
        .await
        .unwrap();
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let echo = echo_target().await;
    let local = airlock_testkit::free_port();
    let dir = TempDir::new();
    let path = plugin_path(&dir.0, &bin);
    let params = format!("portNumber={echo},localPortNumber={local}");
    let mut child = aws_start_session(
        &aws,
        &server,
        &agent.instance_id,
        &[
            "--document-name",
            "AWS-StartPortForwardingSession",
            "--parameters",
            &params,
        ],
        &path,
        &dir,
    );
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    read_until(&mut lines, &mut seen, "Waiting for connections...").await;
    let sid = seen
        .split("Starting session with SessionId: ")
        .nth(1)
        .and_then(|s| s.lines().next())
        .unwrap_or_else(|| panic!("no session id in {seen:?}"))
        .to_owned();
    assert!(sid.starts_with("admin-"), "{seen}");
    // The real plugin's lines, in its order (port-mux.terminal.txt).
    assert!(
        seen.contains(&format!(
            "\nStarting session with SessionId: {sid}\nPort {local} opened for sessionId {sid}.\nWaiting for connections...\n"
        )),
        "{seen:?}"
    );
    // Two connections at once, and a larger one: each comes back unchanged.
    let a = tokio::spawn(round_trip(local, 1, 5_000));
    let b = tokio::spawn(round_trip(local, 2, 7_000));
    a.await.unwrap();
    b.await.unwrap();
    round_trip(local, 3, 1 << 20).await;
    read_until(
        &mut lines,
        &mut seen,
        &format!("Connection accepted for session [{sid}]"),
    )
    .await;
    let (status, rest, stderr) = ctrl_c(child, lines).await;
    let all = seen + &rest;
    assert!(status.success(), "aws: {status}\n{all}\n{stderr}");
    assert!(
        all.contains(&format!(
            "Terminate signal received, exiting.\n\n\nExiting session with sessionId: {sid}.\n"
        )),
        "{all:?}"
    );
    assert_eq!(
        all.matches("Connection accepted").count(),
        1,
        "once, as the real plugin: {all:?}"
    );
    // Ctrl-C told the agent: the session ended as Terminated and its connections are recorded.
    let api = server.api();
    let mut status = String::new();
    for _ in 0..200 {
        status = server
            .state()
            .store
            .session(&sid)
            .await
            .unwrap()
            .map(|s| s.status)
            .unwrap_or_default();
        if status == "Terminated" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, "Terminated");
    let mut sizes = Vec::new();
    for _ in 0..200 {
        let page = api
            .list_port_connections(&airlock_client::ListPortConnectionsInput {
                session_id: Some(sid.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        sizes = page
            .connections
            .iter()
            .map(|c| (c.bytes_to_target, c.bytes_from_target))
            .collect();
        if sizes.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sizes.sort();
    assert_eq!(
        sizes,
        vec![(5_000, 5_000), (7_000, 7_000), (1 << 20, 1 << 20)],
        "the recorded connections"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_picks_a_free_port_and_says_why_a_remote_host_fails() {
    let Some(aws) = aws_cli().await else { return };
    let bin = tokio::task::spawn_blocking(airlock_testkit::airlock_binary)
        .await
        .unwrap();
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let dir = TempDir::new();
    let path = plugin_path(&dir.0, &bin);
    // No localPortNumber: any free port, which the plugin names.
    let mut child = aws_start_session(
        &aws,
        &server,
        &agent.instance_id,
        &[
            "--document-name",
            "AWS-StartPortForwardingSessionToRemoteHost",
            "--parameters",
            "host=no-such-host.invalid,portNumber=5432",
        ],
        &path,
        &dir,
    );
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    read_until(&mut lines, &mut seen, "Waiting for connections...").await;
    let port: u16 = seen
        .split("Port ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {seen:?}"));
    assert_ne!(port, 0);
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut sink = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(15),
        tokio::io::AsyncReadExt::read_to_end(&mut c, &mut sink),
    )
    .await
    .expect("the connection is closed promptly")
    .ok();
    read_until(
        &mut lines,
        &mut seen,
        "Connection to destination port failed: cannot connect to no-such-host.invalid:5432: unknown host (the name does not resolve)",
    )
    .await;
    let (status, rest, stderr) = ctrl_c(child, lines).await;
    assert!(status.success(), "aws: {status}\n{seen}{rest}\n{stderr}");
    assert!(
        rest.contains("Exiting session with sessionId: admin-"),
        "{rest}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_pipes_stdin_and_stdout_for_an_ssh_document() {
    let Some(aws) = aws_cli().await else { return };
    let bin = tokio::task::spawn_blocking(airlock_testkit::airlock_binary)
        .await
        .unwrap();
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let echo = echo_target().await;
    let dir = TempDir::new();
    let path = plugin_path(&dir.0, &bin);
    let params = format!("portNumber={echo}");
    let child = aws_start_session(
        &aws,
        &server,
        &agent.instance_id,
        &[
            "--document-name",
            "AWS-StartSSHSession",
            "--parameters",
            &params,
        ],
        &path,
        &dir,
    );
    // Dropping stdin is EOF: the target's side is half-closed, the echo ends, and so does
    // the session.
    let (stdout, _) = feed_and_finish(child, b"SSH-2.0-test\r\nbytes both ways\n").await;
    // The plugin's one line, then exactly the target's bytes (port-standard-stream).
    let sid = stdout
        .strip_prefix("\nStarting session with SessionId: ")
        .and_then(|s| s.split('\n').next())
        .unwrap_or_else(|| panic!("{stdout:?}"));
    assert_eq!(
        stdout,
        format!("\nStarting session with SessionId: {sid}\nSSH-2.0-test\r\nbytes both ways\n")
    );
    let api = server.api();
    let query = airlock_client::ListPortConnectionsInput {
        session_id: Some(sid.to_owned()),
        ..Default::default()
    };
    let recs = airlock_testkit::eventually(
        "the connection's record",
        Duration::from_secs(10),
        || async {
            let c = api.list_port_connections(&query).await.unwrap().connections;
            (!c.is_empty()).then_some(c)
        },
    )
    .await;
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0].mode, "stream");
    assert_eq!(recs[0].bytes_to_target, 30);
    agent.stop().await;
}

/// Writes `input` to the child's stdin, closes it (EOF), waits for the child and checks it
/// succeeded; returns its stdout and stderr.
async fn feed_and_finish(mut child: tokio::process::Child, input: &[u8]) -> (String, String) {
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).await.unwrap();
    }
    let out = tokio::time::timeout(TOOL_TIMEOUT, child.wait_with_output())
        .await
        .expect("aws finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "aws failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}
