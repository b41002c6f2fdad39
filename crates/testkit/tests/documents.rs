//! Session documents and preferences against a real server: the real AWS CLI
//! (`$AIRLOCK_TEST_AWS`, installed by `scripts/test`) creates, updates, reads, lists and deletes
//! documents (JSON and YAML) and sees AWS's error shapes; preferences set through the API reach
//! the next session's `DocumentContent`; document ARNs are authorised with
//! `ssm:SessionDocumentAccessCheck`; hostile parameter values are refused or inert.
//!
//! What the server hands an agent is read off the agent's control channel: a real agent is
//! registered, stopped, and its control channel replaced by one the test reads, so every
//! `AgentTaskPayload` is exactly what the server sent.
//!
//! Under `CI=true` a missing AWS CLI fails the test; elsewhere it is reported and the test
//! returns.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use axum::extract::ws::Message;
use serde_json::{json, Value};

use airlock_client::api::{ApiClient, ApiError};
use airlock_proto::{decode, AgentTaskPayload, DecodeOptions, MgsPayload};
use airlock_testkit::aws::{aws_cli, clean_aws_env};
use airlock_testkit::{TempDir, TestServer};

const SHELL: &str = "SSM-SessionManagerRunShell";

/// The AWS CLI against `server`, signing as the admin, with a clean AWS environment.
struct Cli<'a> {
    aws: PathBuf,
    server: &'a TestServer,
    home: TempDir,
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        assert!(
            self.ok,
            "the aws CLI failed:\n{}\n{}",
            self.stdout, self.stderr
        );
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout))
    }

    /// Asserts AWS's error shape as the CLI prints it: `An error occurred (Code) when calling
    /// the Op operation: message`.
    fn error(&self, code: &str, op: &str) -> &str {
        assert!(!self.ok, "expected {code}, got:\n{}", self.stdout);
        let prefix = format!("An error occurred ({code}) when calling the {op} operation: ");
        let at = self
            .stderr
            .find(&prefix)
            .unwrap_or_else(|| panic!("expected {prefix}…, got:\n{}", self.stderr));
        &self.stderr[at + prefix.len()..]
    }
}

impl Cli<'_> {
    async fn run(&self, args: &[&str]) -> Run {
        let mut cmd = tokio::process::Command::new(&self.aws);
        cmd.arg("ssm")
            .args(args)
            .args([
                "--endpoint-url",
                &self.server.url,
                "--region",
                "us-east-1",
                "--output",
                "json",
            ])
            .current_dir(&self.home.0);
        clean_aws_env(&mut cmd, &self.home.0)
            .env("AWS_ACCESS_KEY_ID", &self.server.admin.access_key_id)
            .env(
                "AWS_SECRET_ACCESS_KEY",
                &self.server.admin.secret_access_key,
            )
            .stdin(Stdio::null());
        let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
            .await
            .expect("the aws CLI finished")
            .expect("the aws CLI runs");
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn file(&self, name: &str, text: &str) -> String {
        let p = self.home.0.join(name);
        std::fs::write(&p, text).unwrap();
        format!("file://{}", p.display())
    }
}

const PREFS: &str = r#"{
  "schemaVersion": "1.0",
  "description": "Document to hold regional settings for Session Manager",
  "sessionType": "Standard_Stream",
  "inputs": {
    "s3BucketName": "", "s3KeyPrefix": "", "s3EncryptionEnabled": true,
    "cloudWatchLogGroupName": "", "cloudWatchEncryptionEnabled": true, "cloudWatchStreamingEnabled": false,
    "kmsKeyId": "", "runAsEnabled": false, "runAsDefaultUser": "",
    "idleSessionTimeout": "5", "maxSessionDuration": "30",
    "shellProfile": {"linux": "cd /tmp", "windows": ""}
  }
}"#;

const CUSTOM_JSON: &str = r#"{
  "schemaVersion": "1.0",
  "description": "Tail a log the operator names",
  "sessionType": "NonInteractiveCommands",
  "parameters": {
    "log": {"type": "String", "description": "Which log", "allowedValues": ["syslog", "auth.log"], "default": "syslog"},
    "lines": {"type": "String", "allowedPattern": "[0-9]{1,4}", "default": "20"}
  },
  "properties": {"linux": {"commands": "tail -n {{ lines }} /var/log/{{log}}", "separateOutputStream": true}}
}"#;

const CUSTOM_YAML: &str = "schemaVersion: '1.0'\ndescription: Postgres on the host\nsessionType: Port\nparameters:\n  port:\n    type: String\n    default: '5432'\nproperties:\n  portNumber: '{{ port }}'\n  type: LocalPortForwarding\n  localPortNumber: '0'\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_cli_manages_preferences_and_session_documents() {
    let Some(aws) = aws_cli().await else { return };
    let server = TestServer::start().await;
    let cli = Cli {
        aws,
        server: &server,
        home: TempDir::new(),
    };

    // A fresh server has the preferences document, with the defaults.
    let got = cli.run(&["get-document", "--name", SHELL]).await.json();
    assert_eq!(got["DocumentVersion"], "1");
    assert_eq!(got["DocumentType"], "Session");
    let content: Value = serde_json::from_str(got["Content"].as_str().unwrap()).unwrap();
    assert_eq!(content["inputs"]["idleSessionTimeout"], "20");

    // AWS's documented procedure changes the preferences in force.
    let prefs = cli.file("prefs.json", PREFS);
    let up = cli
        .run(&[
            "update-document",
            "--name",
            SHELL,
            "--content",
            &prefs,
            "--document-version",
            "$LATEST",
        ])
        .await
        .json();
    let d = &up["DocumentDescription"];
    assert_eq!(d["DocumentVersion"], "2", "{up}");
    assert_eq!(d["LatestVersion"], "2");
    assert_eq!(d["DefaultVersion"], "2");
    assert_eq!(d["Status"], "Active");
    assert_eq!(d["HashType"], "Sha256");
    let p = server.state().preferences.get();
    assert_eq!(p.idle_session_timeout_minutes, 5);
    assert_eq!(p.max_session_duration_minutes, Some(30));
    assert!(!p.run_as_enabled);
    assert_eq!(p.shell_profile_linux, "cd /tmp");

    // Invalid content: AWS's error shape, nothing changed.
    for (bad, code) in [
        (PREFS.replace("\"5\"", "\"61\""), "InvalidDocumentContent"),
        (
            PREFS.replace("\"30\"", "\"1441\""),
            "InvalidDocumentContent",
        ),
        (
            PREFS.replace("runAsEnabled", "runAsEnabld"),
            "InvalidDocumentContent",
        ),
        (
            PREFS.replace("Standard_Stream", "Port"),
            "InvalidDocumentContent",
        ),
        (
            PREFS.replace("\"1.0\"", "\"2.2\""),
            "InvalidDocumentSchemaVersion",
        ),
        ("{not json".to_owned(), "InvalidDocumentContent"),
    ] {
        let f = cli.file("bad.json", &bad);
        let r = cli
            .run(&[
                "update-document",
                "--name",
                SHELL,
                "--content",
                &f,
                "--document-version",
                "$LATEST",
            ])
            .await;
        r.error(code, "UpdateDocument");
    }
    let r = cli
        .run(&[
            "update-document",
            "--name",
            SHELL,
            "--content",
            &prefs,
            "--document-version",
            "$LATEST",
        ])
        .await;
    r.error("DuplicateDocumentContent", "UpdateDocument");
    let r = cli
        .run(&[
            "update-document",
            "--name",
            SHELL,
            "--content",
            &cli.file("p2.json", &PREFS.replace("\"5\"", "\"6\"")),
            "--document-version",
            "1",
        ])
        .await;
    r.error("InvalidDocumentVersion", "UpdateDocument");
    assert_eq!(
        server
            .state()
            .preferences
            .get()
            .idle_session_timeout_minutes,
        5
    );
    let desc = cli
        .run(&["describe-document", "--name", SHELL])
        .await
        .json();
    assert_eq!(desc["Document"]["LatestVersion"], "2");
    let r = cli.run(&["delete-document", "--name", SHELL]).await;
    r.error("InvalidDocumentOperation", "DeleteDocument");

    // Going back to version 1 puts the defaults back in force.
    let back = cli
        .run(&[
            "update-document-default-version",
            "--name",
            SHELL,
            "--document-version",
            "1",
        ])
        .await
        .json();
    assert_eq!(back["Description"]["DefaultVersion"], "1");
    assert_eq!(
        server
            .state()
            .preferences
            .get()
            .idle_session_timeout_minutes,
        20
    );

    // Custom documents, JSON and YAML.
    let j = cli.file("tail.json", CUSTOM_JSON);
    let created = cli
        .run(&[
            "create-document",
            "--name",
            "Tail-Log",
            "--document-type",
            "Session",
            "--content",
            &j,
            "--version-name",
            "first",
        ])
        .await
        .json();
    let d = &created["DocumentDescription"];
    assert_eq!(d["Name"], "Tail-Log");
    assert_eq!(d["Owner"], "000000000000");
    assert_eq!(d["DocumentFormat"], "JSON");
    assert_eq!(d["VersionName"], "first");
    let params = d["Parameters"].as_array().unwrap();
    assert!(params.contains(&json!({"Name": "log", "Type": "String", "Description": "Which log", "DefaultValue": "syslog"})), "{d}");
    let y = cli.file("pg.yaml", CUSTOM_YAML);
    cli.run(&[
        "create-document",
        "--name",
        "Postgres",
        "--document-type",
        "Session",
        "--document-format",
        "YAML",
        "--content",
        &y,
    ])
    .await
    .json();
    let as_yaml = cli
        .run(&["get-document", "--name", "Postgres"])
        .await
        .json();
    assert_eq!(as_yaml["DocumentFormat"], "YAML");
    assert_eq!(as_yaml["Content"], CUSTOM_YAML);
    let as_json = cli
        .run(&[
            "get-document",
            "--name",
            "Postgres",
            "--document-format",
            "JSON",
        ])
        .await
        .json();
    let converted: Value = serde_json::from_str(as_json["Content"].as_str().unwrap()).unwrap();
    assert_eq!(converted["properties"]["portNumber"], "{{ port }}");

    let r = cli
        .run(&[
            "create-document",
            "--name",
            "Tail-Log",
            "--document-type",
            "Session",
            "--content",
            &j,
        ])
        .await;
    r.error("DocumentAlreadyExists", "CreateDocument");
    let r = cli
        .run(&[
            "create-document",
            "--name",
            "Cmd",
            "--document-type",
            "Command",
            "--content",
            &j,
        ])
        .await;
    assert!(r
        .error("ValidationException", "CreateDocument")
        .contains("Session documents only"));
    let hostile = cli.file(
        "hostile.json",
        &CUSTOM_JSON.replace(
            "tail -n {{ lines }} /var/log/{{log}}",
            "tail -n '{{ lines }}' /var/log/{{log}}",
        ),
    );
    let r = cli
        .run(&[
            "create-document",
            "--name",
            "Quoted",
            "--document-type",
            "Session",
            "--content",
            &hostile,
        ])
        .await;
    assert!(r
        .error("InvalidDocumentContent", "CreateDocument")
        .contains("inside single quotes"));
    // A "billion laughs" is refused and the server goes on answering.
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (p, c) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
    {
        bomb.push_str(&format!(
            "{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
        ));
    }
    let b = cli.file("bomb.yaml", &bomb);
    let r = cli
        .run(&[
            "create-document",
            "--name",
            "Bomb",
            "--document-type",
            "Session",
            "--document-format",
            "YAML",
            "--content",
            &b,
        ])
        .await;
    r.error("InvalidDocumentContent", "CreateDocument");
    let big = cli.file(
        "big.json",
        &CUSTOM_JSON.replace("Tail a log", &"x".repeat(70 * 1024)),
    );
    let r = cli
        .run(&[
            "create-document",
            "--name",
            "Big",
            "--document-type",
            "Session",
            "--content",
            &big,
        ])
        .await;
    r.error("MaxDocumentSizeExceeded", "CreateDocument");

    // Versions: update, the default stays until it is moved, versions listed, one deleted.
    let j2 = cli.file("tail2.json", &CUSTOM_JSON.replace("\"20\"", "\"50\""));
    let up = cli
        .run(&[
            "update-document",
            "--name",
            "Tail-Log",
            "--content",
            &j2,
            "--document-version",
            "$LATEST",
        ])
        .await
        .json();
    assert_eq!(up["DocumentDescription"]["DocumentVersion"], "2");
    assert_eq!(up["DocumentDescription"]["DefaultVersion"], "1");
    let v = cli
        .run(&["list-document-versions", "--name", "Tail-Log"])
        .await
        .json();
    let versions: Vec<(String, bool)> = v["DocumentVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["DocumentVersion"].as_str().unwrap().to_owned(),
                x["IsDefaultVersion"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(versions, vec![("2".into(), false), ("1".into(), true)]);
    let d2 = cli
        .run(&[
            "describe-document",
            "--name",
            "Tail-Log",
            "--document-version",
            "$LATEST",
        ])
        .await
        .json();
    assert_eq!(d2["Document"]["DocumentVersion"], "2");
    let r = cli
        .run(&[
            "delete-document",
            "--name",
            "Tail-Log",
            "--document-version",
            "1",
        ])
        .await;
    r.error("InvalidDocumentOperation", "DeleteDocument");
    cli.run(&[
        "delete-document",
        "--name",
        "Tail-Log",
        "--document-version",
        "2",
    ])
    .await
    .json_or_empty();
    let r = cli
        .run(&[
            "get-document",
            "--name",
            "Tail-Log",
            "--document-version",
            "2",
        ])
        .await;
    r.error("InvalidDocumentVersion", "GetDocument");

    // Listing: built-ins owned by Amazon, ours by the account; filters.
    let all = cli.run(&["list-documents"]).await.json();
    let ids = all["DocumentIdentifiers"].as_array().unwrap();
    let owner = |n: &str| {
        ids.iter()
            .find(|d| d["Name"] == n)
            .map(|d| d["Owner"].as_str().unwrap().to_owned())
    };
    for n in [
        "AWS-StartPortForwardingSession",
        "AWS-StartPortForwardingSessionToRemoteHost",
        "AWS-StartSSHSession",
        "AWS-StartInteractiveCommand",
        "AWS-StartNonInteractiveCommand",
    ] {
        assert_eq!(owner(n).as_deref(), Some("Amazon"), "{n}");
    }
    assert_eq!(owner(SHELL).as_deref(), Some("000000000000"));
    assert_eq!(owner("Postgres").as_deref(), Some("000000000000"));
    let mine = cli
        .run(&["list-documents", "--filters", "Key=Owner,Values=Self"])
        .await
        .json();
    let names: Vec<&str> = mine["DocumentIdentifiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["Postgres", SHELL, "Tail-Log"]);
    let r = cli
        .run(&["list-documents", "--filters", "Key=Color,Values=red"])
        .await;
    r.error("InvalidFilterKey", "ListDocuments");

    // Built-ins can be read, not changed.
    let ssh = cli
        .run(&["describe-document", "--name", "AWS-StartSSHSession"])
        .await
        .json();
    assert_eq!(ssh["Document"]["Owner"], "Amazon");
    let arn_get = cli
        .run(&[
            "get-document",
            "--name",
            "arn:aws:ssm:us-east-1::document/AWS-StartSSHSession",
        ])
        .await
        .json();
    assert_eq!(arn_get["Name"], "AWS-StartSSHSession");
    let r = cli
        .run(&["delete-document", "--name", "AWS-StartSSHSession"])
        .await;
    r.error("InvalidDocumentOperation", "DeleteDocument");
    let r = cli
        .run(&[
            "update-document",
            "--name",
            "AWS-StartSSHSession",
            "--content",
            &j,
            "--document-version",
            "$LATEST",
        ])
        .await;
    r.error("InvalidDocumentOperation", "UpdateDocument");

    // Delete; then it is gone.
    cli.run(&["delete-document", "--name", "Postgres"])
        .await
        .json_or_empty();
    let r = cli.run(&["get-document", "--name", "Postgres"]).await;
    r.error("InvalidDocument", "GetDocument");
    let r = cli.run(&["delete-document", "--name", "Postgres"]).await;
    r.error("InvalidDocument", "DeleteDocument");
}

impl Run {
    /// A call that succeeds with an empty answer (DeleteDocument).
    fn json_or_empty(&self) {
        assert!(
            self.ok,
            "the aws CLI failed:\n{}\n{}",
            self.stdout, self.stderr
        );
    }
}

/// Replaces a (stopped) agent's control channel with one the test reads.
fn tap(server: &TestServer, instance_id: &str) -> tokio::sync::mpsc::Receiver<Message> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let hub = &server.state().hub;
    hub.add_agent(
        instance_id,
        airlock_server::gateway::hub::AgentConn {
            conn_id: hub.next_conn_id(),
            tx,
            cancel: tokio_util::sync::CancellationToken::new(),
        },
    );
    rx
}

/// The next session task the server sent on a tapped control channel.
async fn next_task(rx: &mut tokio::sync::mpsc::Receiver<Message>) -> AgentTaskPayload {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a task within 10 s")
            .expect("the channel is open");
        let Message::Binary(raw) = msg else { continue };
        let frame = decode(raw, &DecodeOptions::default()).unwrap();
        let Ok(mgs) = serde_json::from_slice::<MgsPayload>(&frame.payload) else {
            continue;
        };
        if let Ok(task) = serde_json::from_str::<AgentTaskPayload>(&mgs.content) {
            return task;
        }
    }
}

async fn call(api: &ApiClient, op: &str, body: Value) -> Result<Value, (String, String)> {
    api.call(&format!("AmazonSSM.{op}"), &body)
        .await
        .map_err(|e| match e {
            ApiError::Service { code, message, .. } => (code, message),
            other => panic!("{op}: {other}"),
        })
}

async fn set_prefs(api: &ApiClient, inputs: Value) {
    let content =
        json!({"schemaVersion": "1.0", "sessionType": "Standard_Stream", "inputs": inputs});
    call(
        api,
        "UpdateDocument",
        json!({"Name": SHELL, "Content": content.to_string(), "DocumentVersion": "$LATEST"}),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferences_and_documents_reach_the_next_sessions_document_content() {
    let server = TestServer::start().await;
    let api = server.api();
    let agent = server.agent().await;
    let iid = agent.instance_id.clone();
    agent.stop().await;
    let mut rx = tap(&server, &iid);
    api.call(
        "Airlock.TagUser",
        &json!({"UserName": "admin", "Tags": [{"Key": "SSMSessionRunAs", "Value": "alice"}]}),
    )
    .await
    .unwrap();

    // Defaults: the tag decides the user, and the preferences are the inputs.
    call(&api, "StartSession", json!({"Target": iid}))
        .await
        .unwrap();
    let t = next_task(&mut rx).await;
    assert_eq!(t.document_name, SHELL);
    assert_eq!(t.run_as_user, "alice");
    let inputs = &t.document_content["inputs"];
    assert_eq!(inputs["idleSessionTimeout"], "20");
    assert_eq!(inputs["runAsEnabled"], true);
    assert_eq!(inputs["denyLinkLocalDestinations"], true);
    let r = call(
        &api,
        "StartSession",
        json!({"Target": iid, "DocumentName": "AWS-StartPortForwardingSessionToRemoteHost",
               "Parameters": {"host": ["169.254.169.254"], "portNumber": ["80"]}}),
    )
    .await
    .unwrap_err();
    assert_eq!(r.0, "InvalidParameters", "{r:?}");
    assert!(r.1.contains("denyLinkLocalDestinations"), "{r:?}");

    // New preferences: in the very next session's DocumentContent.
    set_prefs(
        &api,
        json!({"idleSessionTimeout": 7, "shellProfile": {"linux": "export A=1", "windows": ""},
               "runAsEnabled": false, "denyLinkLocalDestinations": false, "maxSessionsPerUser": "4"}),
    )
    .await;
    call(&api, "StartSession", json!({"Target": iid}))
        .await
        .unwrap();
    let t = next_task(&mut rx).await;
    let inputs = &t.document_content["inputs"];
    assert_eq!(inputs["idleSessionTimeout"], "7");
    assert_eq!(inputs["shellProfile"]["linux"], "export A=1");
    assert_eq!(inputs["maxSessionsPerUser"], "4");
    assert_eq!(
        t.run_as_user, "",
        "run-as disabled: the agent's default user"
    );
    call(
        &api,
        "StartSession",
        json!({"Target": iid, "DocumentName": "AWS-StartPortForwardingSessionToRemoteHost",
               "Parameters": {"host": ["169.254.169.254"], "portNumber": ["80"]}}),
    )
    .await
    .unwrap();
    let t = next_task(&mut rx).await;
    assert_eq!(
        t.document_content["inputs"]["denyLinkLocalDestinations"],
        false
    );
    assert_eq!(t.document_content["properties"]["host"], "169.254.169.254");

    // Run-as enabled again, with a default user: the tag still wins; without one, the default.
    set_prefs(
        &api,
        json!({"runAsEnabled": true, "runAsDefaultUser": "ops"}),
    )
    .await;
    call(&api, "StartSession", json!({"Target": iid}))
        .await
        .unwrap();
    assert_eq!(next_task(&mut rx).await.run_as_user, "alice");
    api.call(
        "Airlock.UntagUser",
        &json!({"UserName": "admin", "TagKeys": ["SSMSessionRunAs"]}),
    )
    .await
    .unwrap();
    call(&api, "StartSession", json!({"Target": iid}))
        .await
        .unwrap();
    assert_eq!(next_task(&mut rx).await.run_as_user, "ops");

    // A custom command document: values arrive as one quoted word each; hostile ones that
    // break a constraint are refused before anything is sent.
    let doc = json!({
        "schemaVersion": "1.0", "sessionType": "InteractiveCommands",
        "parameters": {"path": {"type": "String"}, "n": {"type": "String", "allowedPattern": "[0-9]+", "default": "10"}},
        "properties": {"linux": {"commands": "head -n {{ n }} -- {{path}}"}}
    });
    call(
        &api,
        "CreateDocument",
        json!({"Name": "Head", "DocumentType": "Session", "Content": doc.to_string()}),
    )
    .await
    .unwrap();
    for (value, quoted) in [
        ("/etc/hosts", "'/etc/hosts'"),
        ("a; touch /tmp/pwned", "'a; touch /tmp/pwned'"),
        ("$(id)`id`", "'$(id)`id`'"),
        ("it's\nx", "'it'\\''s\nx'"),
    ] {
        call(
            &api,
            "StartSession",
            json!({"Target": iid, "DocumentName": "Head", "Parameters": {"path": [value]}}),
        )
        .await
        .unwrap();
        let t = next_task(&mut rx).await;
        assert_eq!(t.document_name, "Head");
        assert_eq!(t.document_content["sessionType"], "InteractiveCommands");
        assert_eq!(
            t.document_content["properties"]["linux"]["commands"],
            format!("head -n '10' -- {quoted}")
        );
        assert_eq!(t.document_content["inputs"]["runAsDefaultUser"], "ops");
    }
    for params in [
        json!({"path": ["x"], "n": ["5; id"]}),
        json!({"path": ["-rf"]}),
        json!({"path": ["a\u{0}b"]}),
        json!({"path": ["x".repeat(5000)]}),
        json!({"path": ["a", "b"]}),
        json!({"other": ["x"], "path": ["x"]}),
        json!({}),
    ] {
        let e = call(
            &api,
            "StartSession",
            json!({"Target": iid, "DocumentName": "Head", "Parameters": params}),
        )
        .await
        .unwrap_err();
        assert_eq!(e.0, "InvalidParameters", "{params}: {e:?}");
    }
    // A document that does not exist, or a deleted one, runs nothing.
    let e = call(
        &api,
        "StartSession",
        json!({"Target": iid, "DocumentName": "Nope"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.0, "InvalidDocument");
    assert!(rx.try_recv().is_err(), "no task for refused sessions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_arns_and_the_session_document_access_check_decide_what_runs() {
    let server = TestServer::start().await;
    let api = server.api();
    let agent = server.agent().await;
    let iid = agent.instance_id.clone();
    agent.stop().await;
    let mut rx = tap(&server, &iid);
    let cmd = |c: &str| {
        json!({"schemaVersion": "1.0", "sessionType": "NonInteractiveCommands",
               "properties": {"linux": {"commands": c}}})
        .to_string()
    };
    for (name, c) in [("Uptime", "uptime"), ("Reboot", "sudo reboot")] {
        call(
            &api,
            "CreateDocument",
            json!({"Name": name, "DocumentType": "Session", "Content": cmd(c)}),
        )
        .await
        .unwrap();
    }
    call(
        &api,
        "CreateDocument",
        json!({"Name": "Tagged", "DocumentType": "Session", "Content": cmd("df -h"),
               "Tags": [{"Key": "Team", "Value": "red"}]}),
    )
    .await
    .unwrap();
    let profile = server.user("carol", false).await;
    api.call(
        "Airlock.PutUserPolicy",
        &json!({"UserName": "carol", "PolicyName": "main", "PolicyDocument": json!({
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "ssm:StartSession",
                 "Resource": [format!("arn:aws:ssm:us-east-1:000000000000:managed-instance/{iid}"),
                              "arn:aws:ssm:us-east-1:000000000000:document/Uptime"],
                 "Condition": {"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "true"}}},
                {"Effect": "Allow", "Action": "ssm:StartSession",
                 "Resource": "arn:aws:ssm:us-east-1:000000000000:document/*",
                 "Condition": {"StringEquals": {"ssm:resourceTag/Team": "red"}}},
                {"Effect": "Allow", "Action": ["ssm:GetDocument", "ssm:DescribeDocument"],
                 "Resource": "arn:aws:ssm:us-east-1:000000000000:document/Uptime"}
            ]}).to_string()}),
    )
    .await
    .unwrap();
    let carol = ApiClient::new(profile).unwrap();

    call(
        &carol,
        "StartSession",
        json!({"Target": iid, "DocumentName": "Uptime"}),
    )
    .await
    .unwrap();
    let t = next_task(&mut rx).await;
    assert_eq!(t.document_name, "Uptime");
    assert_eq!(
        t.document_content["properties"]["linux"]["commands"],
        "uptime"
    );
    let doc_arn = "arn:aws:ssm:us-east-1:000000000000:document/Uptime";
    call(
        &carol,
        "StartSession",
        json!({"Target": iid, "DocumentName": doc_arn}),
    )
    .await
    .unwrap();
    assert_eq!(next_task(&mut rx).await.document_name, "Uptime");
    // A document allowed by its tag (ssm:resourceTag/Team on the document resource).
    let tagged = call(
        &carol,
        "StartSession",
        json!({"Target": iid, "DocumentName": "Tagged"}),
    )
    .await
    .unwrap();
    let tagged = tagged["SessionId"].as_str().unwrap().to_owned();
    assert_eq!(
        next_task(&mut rx).await.document_content["properties"]["linux"]["commands"],
        "df -h"
    );
    for document in [
        json!("Reboot"),
        json!("arn:aws:ssm:us-east-1:000000000000:document/Reboot"),
        json!("AWS-StartInteractiveCommand"),
        Value::Null,
    ] {
        let mut body = json!({"Target": iid, "Parameters": {"command": ["sudo reboot"]}});
        if !document.is_null() {
            body["DocumentName"] = document.clone();
        }
        let e = call(&carol, "StartSession", body).await.unwrap_err();
        assert_eq!(e.0, "AccessDeniedException", "{document}: {e:?}");
    }
    // Reading follows the document ARN too.
    call(&carol, "GetDocument", json!({"Name": "Uptime"}))
        .await
        .unwrap();
    let e = call(&carol, "GetDocument", json!({"Name": "Reboot"}))
        .await
        .unwrap_err();
    assert_eq!(e.0, "AccessDeniedException");
    let e = call(
        &carol,
        "UpdateDocument",
        json!({"Name": "Uptime", "Content": cmd("sudo reboot")}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.0, "AccessDeniedException");
    let e = call(
        &carol,
        "UpdateDocument",
        json!({"Name": SHELL, "Content": "{}"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.0, "AccessDeniedException");
    assert!(rx.try_recv().is_err(), "no task for refused sessions");
    // An IAM change re-evaluates every open session (revocation.rs) with the document's tags,
    // as StartSession did: the session the tag allowed stays open.
    server.user("dave", false).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        server.session("History", &tagged).await.is_none(),
        "{:?}",
        server.session("History", &tagged).await
    );

    // Every document change is on the audit trail with its version and hash.
    let audit = api
        .call("Airlock.ListAuditEvents", &json!({"MaxResults": 1000}))
        .await
        .unwrap();
    let changes: Vec<&Value> = audit["Events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["Event"] == "document")
        .collect();
    assert_eq!(changes.len(), 3, "{audit}");
    // The session's start record names the version (and its hash) that ran.
    let started: Vec<&Value> = audit["Events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["Event"] == "session-start")
        .collect();
    assert_eq!(started.len(), 3, "{audit}");
    for e in started {
        let detail: Value = serde_json::from_str(e["Detail"].as_str().unwrap()).unwrap();
        let v = detail["DocumentVersion"].as_str().unwrap();
        assert!(v.starts_with("1:") && v.len() == 66, "{detail}");
    }
}

/// `airlock …` as the admin, with `dir` as the working directory: (exit code, stdout, stderr).
async fn airlock(server: &TestServer, dir: &TempDir, args: &[&str]) -> (i32, String, String) {
    let bin = tokio::task::spawn_blocking(airlock_testkit::airlock_binary)
        .await
        .unwrap();
    let out = tokio::process::Command::new(bin)
        .args(args)
        .current_dir(&dir.0)
        .env("HOME", &dir.0)
        .env_remove("AIRLOCK_CONFIG")
        .env("AIRLOCK_ENDPOINT", &server.url)
        .env("AIRLOCK_ACCESS_KEY_ID", &server.admin.access_key_id)
        .env("AIRLOCK_SECRET_ACCESS_KEY", &server.admin.secret_access_key)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn airlocks_cli_gets_and_sets_preferences_and_manages_documents() {
    let server = TestServer::start().await;
    let dir = TempDir::new();
    let (code, out, err) = airlock(&server, &dir, &["admin", "preferences", "get"]).await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["inputs"]["idleSessionTimeout"], "20");

    // Just the inputs, as JSON; then a whole document as YAML.
    std::fs::write(
        dir.0.join("p.json"),
        r#"{"idleSessionTimeout": "9", "maxSessionsPerTarget": 2}"#,
    )
    .unwrap();
    let (code, _, err) = airlock(&server, &dir, &["admin", "preferences", "set", "p.json"]).await;
    assert_eq!(code, 0, "{err}");
    let p = server.state().preferences.get();
    assert_eq!(
        (p.idle_session_timeout_minutes, p.max_sessions_per_target),
        (9, Some(2))
    );
    std::fs::write(
        dir.0.join("p.yaml"),
        "schemaVersion: '1.0'\nsessionType: Standard_Stream\ninputs:\n  idleSessionTimeout: 11\n  runAsDefaultUser: ops\n",
    )
    .unwrap();
    let (code, _, err) = airlock(&server, &dir, &["admin", "preferences", "set", "p.yaml"]).await;
    assert_eq!(code, 0, "{err}");
    let p = server.state().preferences.get();
    assert_eq!(p.idle_session_timeout_minutes, 11);
    assert_eq!(p.run_as_default_user, "ops");
    // Refused content: a clear error, exit 1, nothing changed.
    std::fs::write(dir.0.join("bad.json"), r#"{"idleSessionTimeout": "0"}"#).unwrap();
    let (code, _, err) = airlock(&server, &dir, &["admin", "preferences", "set", "bad.json"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("InvalidDocumentContent") && err.contains("idleSessionTimeout"),
        "{err}"
    );
    assert_eq!(
        server
            .state()
            .preferences
            .get()
            .idle_session_timeout_minutes,
        11
    );

    std::fs::write(dir.0.join("tail.json"), CUSTOM_JSON).unwrap();
    let (code, out, err) = airlock(
        &server,
        &dir,
        &["admin", "document", "create", "Tail", "tail.json"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Tail") && out.contains("000000000000"),
        "{out}"
    );
    let (code, out, _) = airlock(&server, &dir, &["admin", "document", "list"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("Tail") && out.contains("AWS-StartSSHSession") && out.contains("Amazon"),
        "{out}"
    );
    let (code, out, _) = airlock(&server, &dir, &["admin", "document", "describe", "Tail"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("log") && out.contains("syslog"), "{out}");
    let (code, out, _) = airlock(
        &server,
        &dir,
        &["admin", "document", "get", "Tail", "--format", "yaml"],
    )
    .await;
    assert_eq!(code, 0);
    assert!(out.contains("sessionType: NonInteractiveCommands"), "{out}");
    std::fs::write(
        dir.0.join("tail2.json"),
        CUSTOM_JSON.replace("\"20\"", "\"30\""),
    )
    .unwrap();
    let (code, _, err) = airlock(
        &server,
        &dir,
        &["admin", "document", "update", "Tail", "tail2.json"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = airlock(
        &server,
        &dir,
        &[
            "--output",
            "json",
            "admin",
            "document",
            "set-default",
            "Tail",
            "2",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["Description"]["DefaultVersion"],
        "2"
    );
    let (code, _, err) = airlock(&server, &dir, &["admin", "document", "delete", "Tail"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = airlock(&server, &dir, &["admin", "document", "get", "Tail"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("InvalidDocument"), "{err}");
}

/// Runs one session of `start` to its end through the client's code: (stdout, stderr, exit).
async fn drive(
    api: &ApiClient,
    start: Value,
    no_pty: bool,
    input: &[&str],
) -> (String, String, Option<i32>) {
    use airlock_client::session::{Input, Output, SessionOptions};
    let grant = api.start_session(&start).await.expect("StartSession");
    let (in_tx, in_rx) = tokio::sync::mpsc::channel(64);
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel(64);
    let opts = SessionOptions {
        api: Some(api.clone()),
        no_pty,
        ..Default::default()
    };
    let session =
        tokio::spawn(async move { airlock_client::session::run(grant, opts, in_rx, out_tx).await });
    for i in input {
        in_tx
            .send(Input::Data(bytes::Bytes::from(i.to_string())))
            .await
            .unwrap();
    }
    if no_pty {
        in_tx.send(Input::Eof).await.unwrap();
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
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
        outcome.exit_code,
    )
}

const HOSTILE: &[&str] = &[
    "; touch pwned",
    "&& touch pwned",
    "| touch pwned",
    "$(touch pwned)",
    "`touch pwned`",
    "x\ntouch pwned",
    "'; touch pwned; '",
    "\"; touch pwned; \"",
    "\\'; touch pwned #",
    "$HOME * ~ {a,b}",
];

fn files(dir: &TempDir) -> Vec<String> {
    let mut f: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    f.sort();
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_in_custom_documents_run_nothing_on_a_real_agent() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let iid = agent.instance_id.clone();
    let api = server.api();
    let work = TempDir::new();
    std::fs::set_permissions(&work.0, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let dir = work.0.to_str().unwrap().to_owned();
    for (name, session_type) in [
        ("Echo-Pipes", "NonInteractiveCommands"),
        ("Echo-Pty", "InteractiveCommands"),
    ] {
        let doc = json!({
            "schemaVersion": "1.0", "sessionType": session_type,
            "parameters": {"dir": {"type": "String"}, "v": {"type": "String"}},
            "properties": {"linux": {"commands": "cd {{ dir }} && printf '[%s]' {{v}}", "separateOutputStream": true}}
        });
        let mut doc = doc;
        if session_type == "InteractiveCommands" {
            doc["properties"]["linux"]
                .as_object_mut()
                .unwrap()
                .remove("separateOutputStream");
        }
        call(
            &api,
            "CreateDocument",
            json!({"Name": name, "DocumentType": "Session", "Content": doc.to_string()}),
        )
        .await
        .unwrap();
        for value in HOSTILE {
            let no_pty = session_type == "NonInteractiveCommands";
            let (out, err, code) = drive(
                &api,
                json!({"Target": iid, "DocumentName": name, "Parameters": {"dir": [dir], "v": [value]}}),
                no_pty,
                &[],
            )
            .await;
            assert_eq!(code, Some(0), "{name} {value:?}: {out} {err}");
            assert!(
                files(&work).is_empty(),
                "{name} {value:?} ran more: {:?}",
                files(&work)
            );
            if no_pty {
                assert_eq!(out, format!("[{value}]"), "{name}");
                assert_eq!(err, "");
            } else {
                // A terminal writes newlines as CR LF.
                assert_eq!(out.replace("\r\n", "\n"), format!("[{value}]"), "{name}");
            }
        }
    }

    // A shell document: its parameters are checked and not used; the preferences' shell
    // profile runs, nothing else does.
    let shell = json!({"schemaVersion": "1.0", "sessionType": "Standard_Stream",
                       "parameters": {"v": {"type": "String", "default": "x"}}});
    call(
        &api,
        "CreateDocument",
        json!({"Name": "My-Shell", "DocumentType": "Session", "Content": shell.to_string()}),
    )
    .await
    .unwrap();
    set_prefs(
        &api,
        json!({"shellProfile": {"linux": format!("touch {dir}/profile-ran"), "windows": ""}}),
    )
    .await;
    for value in HOSTILE.iter().take(3) {
        let (_, _, _) = drive(
            &api,
            json!({"Target": iid, "DocumentName": "My-Shell", "Parameters": {"v": [value]}}),
            false,
            &["exit\n"],
        )
        .await;
        assert_eq!(files(&work), vec!["profile-ran".to_owned()], "{value:?}");
        std::fs::remove_file(work.0.join("profile-ran")).unwrap();
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_port_document_forwards_as_the_aws_port_documents_do() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let api = server.api();
    // An echo target on loopback.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_port = target.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((c, _)) = target.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = c.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let doc = json!({
        "schemaVersion": "1.0", "sessionType": "Port",
        "parameters": {"port": {"type": "String", "allowedValues": [target_port.to_string(), "5432"]},
                       "local": {"type": "String", "default": "0"}},
        "properties": {"host": "localhost", "portNumber": "{{ port }}", "type": "LocalPortForwarding",
                       "localPortNumber": "{{local}}"}
    });
    call(
        &api,
        "CreateDocument",
        json!({"Name": "Local-Echo", "DocumentType": "Session", "Content": doc.to_string()}),
    )
    .await
    .unwrap();
    // Only the ports the document allows; hostile values never reach the agent.
    for bad in ["22", "80; id", "0"] {
        let e = call(
            &api,
            "StartSession",
            json!({"Target": agent.instance_id, "DocumentName": "Local-Echo", "Parameters": {"port": [bad]}}),
        )
        .await
        .unwrap_err();
        assert_eq!(e.0, "InvalidParameters", "{bad}");
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    let grant = api
        .start_session(
            &json!({"Target": agent.instance_id, "DocumentName": "Local-Echo",
                               "Parameters": {"port": [target_port.to_string()],
                                              "local": [local.port().to_string()]}}),
        )
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let opts = airlock_client::SessionOptions {
        api: Some(api.clone()),
        mux_window: airlock_client::port::DEFAULT_MUX_WINDOW,
        ..Default::default()
    };
    let task = tokio::spawn(airlock_client::port::forward(
        grant,
        opts,
        listener,
        airlock_client::port::ForwardOptions::default(),
        stop.clone(),
    ));
    let mut c = tokio::net::TcpStream::connect(local).await.unwrap();
    c.write_all(b"through a custom document").await.unwrap();
    let mut back = vec![0u8; 25];
    tokio::time::timeout(Duration::from_secs(15), c.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"through a custom document");
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    agent.stop().await;
}
