//! The AWS tools against Airlock: boto3 and the `aws` CLI, pointed at a real server on loopback
//! with `endpoint_url` / `--endpoint-url` and an Airlock access key, call StartSession,
//! DescribeSessions, TerminateSession, DescribeInstanceInformation and the tag operations, and
//! see a denied call as botocore's `AccessDeniedException`.
//!
//! The interpreter is `$AIRLOCK_TEST_PYTHON` (`scripts/test` sets it to a venv with boto3 and
//! awscli), else `python3` when it can import boto3; the CLI is `$AIRLOCK_TEST_AWS`, else `aws`.
//! Under `CI=true` a missing tool fails the test; elsewhere it is reported and the test returns.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use airlock_testkit::{TempDir, TestServer};

const TOOL_TIMEOUT: Duration = Duration::from_secs(90);

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Either fails (in CI) or says why the test cannot run here; returns `None` in the latter case.
fn missing(what: &str) -> Option<PathBuf> {
    let msg = format!(
        "{what} is not available: run ./scripts/test (it installs boto3 and awscli in target/pyenv) \
         or set AIRLOCK_TEST_PYTHON / AIRLOCK_TEST_AWS"
    );
    if in_ci() {
        panic!("{msg}");
    }
    eprintln!("NOT RUN: {msg}");
    None
}

async fn runs(program: &PathBuf, args: &[&str]) -> bool {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    matches!(
        tokio::time::timeout(Duration::from_secs(30), child).await,
        Ok(Ok(s)) if s.success()
    )
}

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

async fn aws_cli() -> Option<PathBuf> {
    let candidate = std::env::var_os("AIRLOCK_TEST_AWS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("aws"));
    if runs(&candidate, &["--version"]).await {
        Some(candidate)
    } else {
        missing(&format!("the aws CLI ({})", candidate.display()))
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
    cmd.args(args)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_DEFAULT_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_SECURITY_TOKEN")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_SSM")
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("http_proxy")
        .env("HOME", &home.0)
        .env("AWS_CONFIG_FILE", home.0.join("aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            home.0.join("aws-credentials"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env("AWS_PAGER", "")
        .env("NO_PROXY", "127.0.0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
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
    let plugin_dir = dir.0.join("bin");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    std::os::unix::fs::symlink(&bin, plugin_dir.join("session-manager-plugin")).unwrap();
    let path = format!(
        "{}:{}",
        plugin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
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
    let mut child = cmd.spawn().unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"echo through-the-plugin $((20+22))\nexit 5\n")
            .await
            .unwrap();
    }
    let out = tokio::time::timeout(TOOL_TIMEOUT, child.wait_with_output())
        .await
        .expect("aws finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "aws failed:\n{stdout}\n{stderr}");
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
