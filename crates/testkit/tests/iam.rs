//! Access control end to end, through the real API on loopback: every call decided by the policy
//! engine with AWS's resources, context keys and denial shape (policy-and-api.md §3, §5.2);
//! users, groups, tags, managed and inline policies, boundaries, access keys, grants and
//! temporary credentials; instance tags; run-as; `Apply` and `SimulatePolicy`; the
//! hash-chained audit trail and what happens when it is tampered with or cannot be written;
//! secrets sealed at rest.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use airlock_client::session::SessionOptions;
use airlock_client::{ApiClient, ApiError};
use airlock_testkit::{TestAgent, TestServer, TestSession};
use common::{send_raw, RawRequest, RawResponse};

const ACCOUNT: &str = "000000000000";
const REGION: &str = "us-east-1";

// ---------------------------------------------------------------------------------------------
// Helpers

fn policy(statements: Value) -> Value {
    json!({ "Version": "2012-10-17", "Statement": statements })
}

fn user_arn(name: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT}:user/{name}")
}

fn instance_arn(id: &str) -> String {
    format!("arn:aws:ssm:{REGION}:{ACCOUNT}:managed-instance/{id}")
}

fn session_arn(id: &str) -> String {
    format!("arn:aws:ssm:{REGION}:{ACCOUNT}:session/{id}")
}

/// AWS's implicit-deny message, exactly.
fn denied(user: &str, action: &str, resource: &str) -> String {
    format!(
        "User: {} is not authorized to perform: {action} on resource: {resource} because no identity-based policy allows the {action} action",
        user_arn(user)
    )
}

/// Creates a user with an access key and one inline policy `main`, and returns its client.
async fn user_with_policy(server: &TestServer, name: &str, statements: Value) -> ApiClient {
    let profile = server.user(name, false).await;
    server
        .api()
        .call(
            "Airlock.PutUserPolicy",
            &json!({ "UserName": name, "PolicyName": "main", "PolicyDocument": policy(statements) }),
        )
        .await
        .expect("PutUserPolicy");
    ApiClient::new(profile).unwrap()
}

/// The service error of a call that must fail: (HTTP status, code, message).
async fn call_err(api: &ApiClient, target: &str, body: Value) -> (u16, String, String) {
    match api.call(target, &body).await {
        Ok(v) => panic!("{target} {body} should fail, got {v}"),
        Err(ApiError::Service {
            status,
            code,
            message,
        }) => (status, code, message),
        Err(e) => panic!("{target}: transport error {e}"),
    }
}

/// Asserts an AccessDeniedException with exactly `message`.
async fn assert_denied(api: &ApiClient, target: &str, body: Value, message: &str) {
    let (status, code, msg) = call_err(api, target, body).await;
    assert_eq!(
        (status, code.as_str()),
        (400, "AccessDeniedException"),
        "{msg}"
    );
    assert_eq!(msg, message);
}

async fn ok(api: &ApiClient, target: &str, body: Value) -> Value {
    match api.call(target, &body).await {
        Ok(v) => v,
        Err(e) => panic!("{target} {body} should succeed: {e}"),
    }
}

async fn admin(server: &TestServer, target: &str, body: Value) -> Value {
    ok(&server.api(), target, body).await
}

/// Credentials for hand-signed requests, with an optional session token.
struct Creds {
    id: String,
    secret: String,
    token: Option<String>,
}

impl Creds {
    fn long_term(api: &ApiClient) -> Creds {
        Creds {
            id: api.profile().access_key_id.clone(),
            secret: api.profile().secret_access_key.clone(),
            token: None,
        }
    }
}

/// A request signed with `creds` (session token included and signed, as the SDKs do), with a
/// chosen User-Agent.
async fn signed(
    url: &str,
    creds: &Creds,
    target: &str,
    body: Value,
    user_agent: &str,
) -> RawResponse {
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    let mut headers = vec![
        ("host".to_owned(), host.to_owned()),
        (
            "content-type".to_owned(),
            "application/x-amz-json-1.1".to_owned(),
        ),
        ("x-amz-target".to_owned(), target.to_owned()),
        ("user-agent".to_owned(), user_agent.to_owned()),
    ];
    let body = body.to_string().into_bytes();
    let sig = airlock_sigv4::sign(
        &airlock_sigv4::Request {
            method: "POST",
            path_and_query: "/",
            headers: &headers,
            body: &body,
        },
        &airlock_sigv4::Credentials {
            access_key_id: creds.id.clone(),
            secret_access_key: creds.secret.clone(),
            session_token: creds.token.clone(),
        },
        REGION,
        "ssm",
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    headers.extend(sig);
    send_raw(
        url,
        RawRequest {
            target: None,
            body,
            key: None,
            time: time::OffsetDateTime::now_utc(),
        },
        move |h, _| *h = headers,
    )
    .await
}

fn session_id_of(v: &Value) -> String {
    v["SessionId"].as_str().expect("a SessionId").to_owned()
}

/// Asserts the id has AWS's `<user name>-<17 lowercase hex>` form.
fn assert_session_id(id: &str, user: &str) {
    let suffix = id
        .strip_prefix(&format!("{user}-"))
        .unwrap_or_else(|| panic!("session id {id} should start with {user}-"));
    assert_eq!(suffix.len(), 17, "{id}");
    assert!(
        suffix
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "{id}"
    );
}

fn instance_ids(out: &Value) -> Vec<String> {
    let mut ids: Vec<String> = out["InstanceInformationList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["InstanceId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn session_ids(out: &Value) -> Vec<String> {
    let mut ids: Vec<String> = out["Sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["SessionId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn tags_of(out: &Value) -> Vec<(String, String)> {
    let mut t: Vec<(String, String)> = out["TagList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["Key"].as_str().unwrap().to_owned(),
                t["Value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    t.sort();
    t
}

async fn two_agents(server: &TestServer) -> (TestAgent, TestAgent) {
    let dev = server
        .agent_tagged(json!([{ "Key": "Env", "Value": "dev" }]))
        .await;
    let prod = server
        .agent_tagged(json!([{ "Key": "Env", "Value": "prod" }]))
        .await;
    (dev, prod)
}

/// Every audit record, oldest first.
async fn all_audit(server: &TestServer) -> Vec<Value> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut body = json!({ "MaxResults": 1000 });
        if let Some(t) = &token {
            body["NextToken"] = json!(t);
        }
        let page = admin(server, "Airlock.ListAuditEvents", body).await;
        out.extend(page["Events"].as_array().unwrap().iter().cloned());
        match page["NextToken"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    out.reverse();
    out
}

async fn verify(server: &TestServer) -> Value {
    admin(server, "Airlock.VerifyAudit", json!({})).await
}

async fn db(server: &TestServer) -> sqlx::SqlitePool {
    let path = server.dir.0.join("server").join("airlock.db");
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .busy_timeout(Duration::from_secs(5));
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .unwrap()
}

fn now_secs() -> f64 {
    airlock_proto::unix_millis() as f64 / 1000.0
}

// ---------------------------------------------------------------------------------------------
// StartSession: tags, the document check, session ids

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_session_is_scoped_by_instance_tags_and_denied_in_aws_words() {
    let server = TestServer::start().await;
    let (dev, prod) = two_agents(&server).await;
    let bob = user_with_policy(
        &server,
        "bob",
        json!([{
            "Effect": "Allow",
            "Action": "ssm:StartSession",
            "Resource": "*",
            "Condition": { "StringEquals": { "ssm:resourceTag/Env": "dev" } }
        }]),
    )
    .await;

    let granted = ok(
        &bob,
        "AmazonSSM.StartSession",
        json!({ "Target": dev.instance_id }),
    )
    .await;
    assert_session_id(&session_id_of(&granted), "bob");
    assert!(granted["TokenValue"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));

    let message = denied("bob", "ssm:StartSession", &instance_arn(&prod.instance_id));
    assert_denied(
        &bob,
        "AmazonSSM.StartSession",
        json!({ "Target": prod.instance_id }),
        &message,
    )
    .await;

    // The wire shape: 400, x-amzn-ErrorType, __type, Message and message, a request id.
    let raw = signed(
        &server.url,
        &Creds::long_term(&bob),
        "AmazonSSM.StartSession",
        json!({ "Target": prod.instance_id }),
        "iam-test",
    )
    .await;
    raw.assert_error(400, "AccessDeniedException", &message);
    assert_eq!(raw.body["Message"], message);

    // The denial started nothing.
    let active = admin(
        &server,
        "AmazonSSM.DescribeSessions",
        json!({ "State": "Active", "Filters": [{ "key": "Target", "value": prod.instance_id }] }),
    )
    .await;
    assert_eq!(session_ids(&active), Vec::<String>::new());
    dev.stop().await;
    prod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_session_checks_the_document_as_section_3_3_says() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let shell_doc = format!("arn:aws:ssm:{REGION}:{ACCOUNT}:document/SSM-SessionManagerRunShell");
    // P1: the instance and the shell document, with the document check on.
    let checked = user_with_policy(
        &server,
        "checked",
        json!([{
            "Effect": "Allow",
            "Action": "ssm:StartSession",
            "Resource": [instance_arn(&agent.instance_id), shell_doc],
            "Condition": { "BoolIfExists": { "ssm:SessionDocumentAccessCheck": "true" } }
        }]),
    )
    .await;
    // P2: the instance only, no document check.
    let plain = user_with_policy(
        &server,
        "plain",
        json!([{
            "Effect": "Allow",
            "Action": "ssm:StartSession",
            "Resource": instance_arn(&agent.instance_id)
        }]),
    )
    .await;

    // P1-2: no document named, so the check key is "false" and BoolIfExists fails.
    assert_denied(
        &checked,
        "AmazonSSM.StartSession",
        json!({ "Target": agent.instance_id }),
        &denied(
            "checked",
            "ssm:StartSession",
            &instance_arn(&agent.instance_id),
        ),
    )
    .await;
    // P1-1: the document named and allowed.
    let granted = ok(
        &checked,
        "AmazonSSM.StartSession",
        json!({ "Target": agent.instance_id, "DocumentName": "SSM-SessionManagerRunShell" }),
    )
    .await;
    assert_session_id(&session_id_of(&granted), "checked");
    // P1-3: an AWS-owned document not in the policy, cited with its empty-account ARN.
    assert_denied(
        &checked,
        "AmazonSSM.StartSession",
        json!({ "Target": agent.instance_id, "DocumentName": "AWS-StartPortForwardingSession" }),
        &denied(
            "checked",
            "ssm:StartSession",
            &format!("arn:aws:ssm:{REGION}::document/AWS-StartPortForwardingSession"),
        ),
    )
    .await;

    // P2-1: the default shell without naming it needs no document permission.
    let granted = ok(
        &plain,
        "AmazonSSM.StartSession",
        json!({ "Target": agent.instance_id }),
    )
    .await;
    assert_session_id(&session_id_of(&granted), "plain");
    // P2-7: naming the document makes it a resource the caller needs.
    assert_denied(
        &plain,
        "AmazonSSM.StartSession",
        json!({ "Target": agent.instance_id, "DocumentName": "SSM-SessionManagerRunShell" }),
        &denied("plain", "ssm:StartSession", &shell_doc),
    )
    .await;
    agent.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Describe* filtering and ending sessions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_calls_show_only_what_the_caller_may_see() {
    let server = TestServer::start().await;
    let (dev, prod) = two_agents(&server).await;
    let carol = user_with_policy(
        &server,
        "carol",
        json!([
            {
                "Effect": "Allow",
                "Action": "ssm:DescribeInstanceInformation",
                "Resource": "*",
                "Condition": { "StringEqualsIfExists": { "ssm:resourceTag/Env": "dev" } }
            },
            {
                "Effect": "Allow",
                "Action": "ssm:DescribeSessions",
                "Resource": "*",
                "Condition": { "StringEqualsIfExists": { "ssm:resourceTag/aws:ssmmessages:session-id": "${aws:userid}" } }
            },
            { "Effect": "Allow", "Action": "ssm:StartSession", "Resource": "*" }
        ]),
    )
    .await;
    let nobody = ApiClient::new(server.user("nobody", false).await).unwrap();

    let all = admin(&server, "AmazonSSM.DescribeInstanceInformation", json!({})).await;
    let mut both = vec![dev.instance_id.clone(), prod.instance_id.clone()];
    both.sort();
    assert_eq!(instance_ids(&all), both);
    let mine = ok(&carol, "AmazonSSM.DescribeInstanceInformation", json!({})).await;
    assert_eq!(instance_ids(&mine), vec![dev.instance_id.clone()]);
    assert_denied(
        &nobody,
        "AmazonSSM.DescribeInstanceInformation",
        json!({}),
        &denied(
            "nobody",
            "ssm:DescribeInstanceInformation",
            &format!("arn:aws:ssm:{REGION}:{ACCOUNT}:*"),
        ),
    )
    .await;

    let admins = session_id_of(
        &admin(
            &server,
            "AmazonSSM.StartSession",
            json!({ "Target": prod.instance_id }),
        )
        .await,
    );
    let carols = session_id_of(
        &ok(
            &carol,
            "AmazonSSM.StartSession",
            json!({ "Target": dev.instance_id }),
        )
        .await,
    );
    assert_session_id(&admins, "admin");
    assert_session_id(&carols, "carol");
    let mut every = vec![admins.clone(), carols.clone()];
    every.sort();
    let seen_by_admin = admin(
        &server,
        "AmazonSSM.DescribeSessions",
        json!({ "State": "Active" }),
    )
    .await;
    assert_eq!(session_ids(&seen_by_admin), every);
    let seen_by_carol = ok(
        &carol,
        "AmazonSSM.DescribeSessions",
        json!({ "State": "Active" }),
    )
    .await;
    assert_eq!(session_ids(&seen_by_carol), vec![carols]);
    dev.stop().await;
    prod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_end_only_their_own_sessions() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    // P5, plus the right to start sessions.
    let p5 = json!([
        { "Effect": "Allow", "Action": "ssm:StartSession", "Resource": "*" },
        { "Effect": "Allow", "Action": ["ssm:DescribeSessions"], "Resource": ["*"] },
        { "Effect": "Allow", "Action": ["ssm:TerminateSession"], "Resource": ["arn:aws:ssm:*:*:session/${aws:username}-*"] }
    ]);
    let alice = user_with_policy(&server, "alice", p5.clone()).await;
    let bob = user_with_policy(&server, "bob", p5).await;
    let start = json!({ "Target": agent.instance_id });
    let alices = session_id_of(&ok(&alice, "AmazonSSM.StartSession", start.clone()).await);
    let bobs = session_id_of(&ok(&bob, "AmazonSSM.StartSession", start).await);

    assert_denied(
        &alice,
        "AmazonSSM.TerminateSession",
        json!({ "SessionId": bobs }),
        &denied("alice", "ssm:TerminateSession", &session_arn(&bobs)),
    )
    .await;
    assert!(server.session("Active", &bobs).await.is_some());
    // ResumeSession is not granted (P5-3).
    assert_denied(
        &alice,
        "AmazonSSM.ResumeSession",
        json!({ "SessionId": alices }),
        &denied("alice", "ssm:ResumeSession", &session_arn(&alices)),
    )
    .await;

    let out = ok(
        &alice,
        "AmazonSSM.TerminateSession",
        json!({ "SessionId": alices }),
    )
    .await;
    assert_eq!(out["SessionId"], alices.as_str());
    let ended = server.wait_history(&alices).await;
    assert_eq!(ended["Status"], "Terminated");
    assert_eq!(ended["Owner"], user_arn("alice"));
    ok(
        &bob,
        "AmazonSSM.TerminateSession",
        json!({ "SessionId": bobs }),
    )
    .await;
    assert_eq!(server.wait_history(&bobs).await["Status"], "Terminated");
    agent.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Users, groups, tags, managed and inline policies, boundaries

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_inline_policies_principal_tags_and_a_boundary_combine() {
    let server = TestServer::start().await;
    let dan = ApiClient::new(server.user("dan", false).await).unwrap();
    let any = format!("arn:aws:ssm:{REGION}:{ACCOUNT}:*");
    assert_denied(
        &dan,
        "AmazonSSM.DescribeInstanceInformation",
        json!({}),
        &denied("dan", "ssm:DescribeInstanceInformation", &any),
    )
    .await;

    // A managed policy through a group, an inline group policy, an inline user policy.
    admin(
        &server,
        "Airlock.CreateGroup",
        json!({ "GroupName": "ops" }),
    )
    .await;
    admin(
        &server,
        "Airlock.AddUserToGroup",
        json!({ "GroupName": "ops", "UserName": "dan" }),
    )
    .await;
    admin(
        &server,
        "Airlock.CreatePolicy",
        json!({
            "PolicyName": "describe-instances",
            "Description": "see instances",
            "PolicyDocument": policy(json!([{ "Effect": "Allow", "Action": "ssm:DescribeInstanceInformation", "Resource": "*" }])).to_string()
        }),
    )
    .await;
    admin(
        &server,
        "Airlock.AttachGroupPolicy",
        json!({ "GroupName": "ops", "PolicyName": "describe-instances" }),
    )
    .await;
    admin(
        &server,
        "Airlock.PutGroupPolicy",
        json!({
            "GroupName": "ops", "PolicyName": "status",
            "PolicyDocument": policy(json!([{ "Effect": "Allow", "Action": "ssm:GetConnectionStatus", "Resource": "*" }]))
        }),
    )
    .await;
    admin(
        &server,
        "Airlock.PutUserPolicy",
        json!({
            "UserName": "dan", "PolicyName": "sessions",
            "PolicyDocument": policy(json!([
                { "Effect": "Allow", "Action": "ssm:DescribeSessions", "Resource": "*" },
                {
                    "Effect": "Allow", "Action": "ssm:DescribeActivations", "Resource": "*",
                    "Condition": { "StringEquals": { "aws:PrincipalTag/Team": "red" } }
                }
            ]))
        }),
    )
    .await;
    ok(&dan, "AmazonSSM.DescribeInstanceInformation", json!({})).await;
    ok(
        &dan,
        "AmazonSSM.GetConnectionStatus",
        json!({ "Target": "mi-00000000000000000" }),
    )
    .await;
    ok(
        &dan,
        "AmazonSSM.DescribeSessions",
        json!({ "State": "Active" }),
    )
    .await;
    let user = admin(&server, "Airlock.GetUser", json!({ "UserName": "dan" })).await;
    assert_eq!(user["User"]["Groups"], json!(["ops"]));
    assert_eq!(user["User"]["InlinePolicies"], json!(["sessions"]));

    // Principal tags feed aws:PrincipalTag/*.
    assert_denied(
        &dan,
        "AmazonSSM.DescribeActivations",
        json!({}),
        &denied("dan", "ssm:DescribeActivations", &any),
    )
    .await;
    admin(
        &server,
        "Airlock.TagUser",
        json!({ "UserName": "dan", "Tags": [{ "Key": "Team", "Value": "red" }] }),
    )
    .await;
    ok(&dan, "AmazonSSM.DescribeActivations", json!({})).await;
    admin(
        &server,
        "Airlock.UntagUser",
        json!({ "UserName": "dan", "TagKeys": ["Team"] }),
    )
    .await;
    assert_denied(
        &dan,
        "AmazonSSM.DescribeActivations",
        json!({}),
        &denied("dan", "ssm:DescribeActivations", &any),
    )
    .await;

    // A boundary that allows only ssm:Describe* caps what the identity policies allow.
    admin(
        &server,
        "Airlock.CreatePolicy",
        json!({
            "PolicyName": "describe-only",
            "PolicyDocument": policy(json!([{ "Effect": "Allow", "Action": "ssm:Describe*", "Resource": "*" }]))
        }),
    )
    .await;
    admin(
        &server,
        "Airlock.PutUserPermissionsBoundary",
        json!({ "UserName": "dan", "PolicyName": "describe-only" }),
    )
    .await;
    assert_denied(
        &dan,
        "AmazonSSM.GetConnectionStatus",
        json!({ "Target": "mi-00000000000000000" }),
        &format!(
            "User: {} is not authorized to perform: ssm:GetConnectionStatus on resource: {any} because no permissions boundary allows the ssm:GetConnectionStatus action",
            user_arn("dan")
        ),
    )
    .await;
    ok(&dan, "AmazonSSM.DescribeInstanceInformation", json!({})).await;
    admin(
        &server,
        "Airlock.DeleteUserPermissionsBoundary",
        json!({ "UserName": "dan" }),
    )
    .await;
    ok(
        &dan,
        "AmazonSSM.GetConnectionStatus",
        json!({ "Target": "mi-00000000000000000" }),
    )
    .await;

    // An explicit Deny in a group's inline policy wins over every Allow.
    admin(
        &server,
        "Airlock.PutGroupPolicy",
        json!({
            "GroupName": "ops", "PolicyName": "no-sessions",
            "PolicyDocument": policy(json!([{ "Effect": "Deny", "Action": "ssm:DescribeSessions", "Resource": "*" }]))
        }),
    )
    .await;
    assert_denied(
        &dan,
        "AmazonSSM.DescribeSessions",
        json!({ "State": "Active" }),
        &format!(
            "User: {} is not authorized to perform: ssm:DescribeSessions on resource: {any} with an explicit deny in an identity-based policy",
            user_arn("dan")
        ),
    )
    .await;

    // Leaving the group takes its policies away at once.
    admin(
        &server,
        "Airlock.RemoveUserFromGroup",
        json!({ "GroupName": "ops", "UserName": "dan" }),
    )
    .await;
    ok(
        &dan,
        "AmazonSSM.DescribeSessions",
        json!({ "State": "Active" }),
    )
    .await;
    assert_denied(
        &dan,
        "AmazonSSM.DescribeInstanceInformation",
        json!({}),
        &denied("dan", "ssm:DescribeInstanceInformation", &any),
    )
    .await;
    // And a managed policy attached to the user directly works the same way.
    admin(
        &server,
        "Airlock.AttachUserPolicy",
        json!({ "UserName": "dan", "PolicyName": "describe-instances" }),
    )
    .await;
    ok(&dan, "AmazonSSM.DescribeInstanceInformation", json!({})).await;
}

// ---------------------------------------------------------------------------------------------
// Grants and temporary credentials

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_stops_working_at_its_expiry_without_a_restart() {
    let server = TestServer::start().await;
    let erin = ApiClient::new(server.user("erin", false).await).unwrap();
    let any = format!("arn:aws:ssm:{REGION}:{ACCOUNT}:*");
    let status = json!({ "Target": "mi-00000000000000000" });
    let msg = denied("erin", "ssm:GetConnectionStatus", &any);
    assert_denied(&erin, "AmazonSSM.GetConnectionStatus", status.clone(), &msg).await;

    // An expiry in the past is refused and stores nothing.
    let (_, code, _) = call_err(
        &server.api(),
        "Airlock.CreateGrant",
        json!({
            "UserName": "erin", "ExpiresAt": now_secs() - 1.0,
            "PolicyDocument": policy(json!([{ "Effect": "Allow", "Action": "ssm:GetConnectionStatus", "Resource": "*" }]))
        }),
    )
    .await;
    assert_eq!(code, "ValidationException");
    let user = admin(&server, "Airlock.GetUser", json!({ "UserName": "erin" })).await;
    assert_eq!(user["User"]["Grants"], json!([]));

    let until = now_secs() + 3.0;
    let grant = admin(
        &server,
        "Airlock.CreateGrant",
        json!({
            "UserName": "erin", "ExpiresAt": until, "Reason": "on call",
            "PolicyDocument": policy(json!([{ "Effect": "Allow", "Action": "ssm:GetConnectionStatus", "Resource": "*" }]))
        }),
    )
    .await;
    assert!(grant["Grant"]["GrantId"].as_str().is_some());
    ok(&erin, "AmazonSSM.GetConnectionStatus", status.clone()).await;
    let user = admin(&server, "Airlock.GetUser", json!({ "UserName": "erin" })).await;
    assert_eq!(user["User"]["Grants"][0]["Active"], true);
    assert_eq!(user["User"]["Grants"][0]["Reason"], "on call");

    // Past the instant, the same server refuses.
    let wait = until - now_secs() + 0.2;
    assert!(wait > 0.0, "the grant expired before it could be used");
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    assert_denied(&erin, "AmazonSSM.GetConnectionStatus", status.clone(), &msg).await;
    let user = admin(&server, "Airlock.GetUser", json!({ "UserName": "erin" })).await;
    assert_eq!(user["User"]["Grants"][0]["Active"], false);

    // A revoked grant stops at once too.
    let grant = admin(
        &server,
        "Airlock.CreateGrant",
        json!({
            "UserName": "erin", "ExpiresAt": now_secs() + 3600.0,
            "PolicyDocument": policy(json!([{ "Effect": "Allow", "Action": "ssm:GetConnectionStatus", "Resource": "*" }]))
        }),
    )
    .await;
    ok(&erin, "AmazonSSM.GetConnectionStatus", status.clone()).await;
    admin(
        &server,
        "Airlock.DeleteGrant",
        json!({ "GrantId": grant["Grant"]["GrantId"] }),
    )
    .await;
    assert_denied(&erin, "AmazonSSM.GetConnectionStatus", status, &msg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_credentials_work_and_carry_the_token_keys() {
    let server = TestServer::start().await;
    let gina = user_with_policy(
        &server,
        "gina",
        json!([
            { "Effect": "Allow", "Action": ["sts:GetSessionToken", "ssm:GetConnectionStatus", "ssm:DescribeActivations"], "Resource": "*" },
            {
                "Sid": "TemporaryOnly", "Effect": "Allow", "Action": "ssm:DescribeSessions", "Resource": "*",
                "Condition": { "Null": { "aws:TokenIssueTime": "false" } }
            },
            {
                "Sid": "NoMfaTemp", "Effect": "Deny", "Action": "ssm:DescribeActivations", "Resource": "*",
                "Condition": { "Bool": { "aws:MultiFactorAuthPresent": "false" } }
            }
        ]),
    )
    .await;
    let before = now_secs();
    let out = ok(
        &gina,
        "Airlock.GetSessionToken",
        json!({ "DurationSeconds": 900 }),
    )
    .await;
    let c = &out["Credentials"];
    let temp = Creds {
        id: c["AccessKeyId"].as_str().unwrap().to_owned(),
        secret: c["SecretAccessKey"].as_str().unwrap().to_owned(),
        token: Some(c["SessionToken"].as_str().unwrap().to_owned()),
    };
    assert!(
        temp.id.starts_with("ASIA") && temp.id.len() == 20,
        "{}",
        temp.id
    );
    assert_eq!(temp.secret.len(), 40);
    let expiry = c["Expiration"].as_f64().unwrap();
    assert!(
        (before + 899.0..=now_secs() + 901.0).contains(&expiry),
        "Expiration {expiry}"
    );
    let url = &server.url;
    let any = format!("arn:aws:ssm:{REGION}:{ACCOUNT}:*");

    let r = signed(
        url,
        &temp,
        "AmazonSSM.GetConnectionStatus",
        json!({ "Target": "mi-00000000000000000" }),
        "t",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["Status"], "notconnected");

    // aws:TokenIssueTime is set for temporary credentials only.
    let r = signed(
        url,
        &temp,
        "AmazonSSM.DescribeSessions",
        json!({ "State": "Active" }),
        "t",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_denied(
        &gina,
        "AmazonSSM.DescribeSessions",
        json!({ "State": "Active" }),
        &denied("gina", "ssm:DescribeSessions", &any),
    )
    .await;
    // aws:MultiFactorAuthPresent is "false" for them, and absent for long-term keys, so
    // plain Bool denies only the temporary credentials.
    let r = signed(url, &temp, "AmazonSSM.DescribeActivations", json!({}), "t").await;
    r.assert_error(
        400,
        "AccessDeniedException",
        &format!(
            "User: {} is not authorized to perform: ssm:DescribeActivations on resource: {any} with an explicit deny in an identity-based policy",
            user_arn("gina")
        ),
    );
    ok(&gina, "AmazonSSM.DescribeActivations", json!({})).await;

    // Temporary credentials cannot mint more.
    let r = signed(
        url,
        &temp,
        "Airlock.GetSessionToken",
        json!({ "DurationSeconds": 900 }),
        "t",
    )
    .await;
    assert_eq!(r.error_type.as_deref(), Some("AccessDeniedException"));
    // The key with a wrong token, or without its token, is not recognised.
    let wrong = Creds {
        token: Some("bm90IHRoZSB0b2tlbg==".into()),
        ..temp
    };
    let r = signed(
        url,
        &wrong,
        "AmazonSSM.GetConnectionStatus",
        json!({ "Target": "x" }),
        "t",
    )
    .await;
    r.assert_error(
        400,
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
    );
    let tokenless = Creds {
        token: None,
        ..wrong
    };
    let r = signed(
        url,
        &tokenless,
        "AmazonSSM.GetConnectionStatus",
        json!({ "Target": "x" }),
        "t",
    )
    .await;
    r.assert_error(
        400,
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
    );
    // Out-of-range durations are refused.
    let (_, code, _) = call_err(
        &gina,
        "Airlock.GetSessionToken",
        json!({ "DurationSeconds": 60 }),
    )
    .await;
    assert_eq!(code, "ValidationException");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mfa_guard_with_bool_if_exists_denies_temporary_and_long_term_credentials() {
    let server = TestServer::start().await;
    let hal = user_with_policy(
        &server,
        "hal",
        json!([
            { "Effect": "Allow", "Action": ["sts:GetSessionToken", "ssm:GetConnectionStatus", "ssm:DescribeSessions"], "Resource": "*" },
            {
                "Sid": "RequireMfa", "Effect": "Deny", "Action": "ssm:GetConnectionStatus", "Resource": "*",
                "Condition": { "BoolIfExists": { "aws:MultiFactorAuthPresent": "false" } }
            }
        ]),
    )
    .await;
    let out = ok(
        &hal,
        "Airlock.GetSessionToken",
        json!({ "DurationSeconds": 900 }),
    )
    .await;
    let temp = Creds {
        id: out["Credentials"]["AccessKeyId"]
            .as_str()
            .unwrap()
            .to_owned(),
        secret: out["Credentials"]["SecretAccessKey"]
            .as_str()
            .unwrap()
            .to_owned(),
        token: Some(
            out["Credentials"]["SessionToken"]
                .as_str()
                .unwrap()
                .to_owned(),
        ),
    };
    let any = format!("arn:aws:ssm:{REGION}:{ACCOUNT}:*");
    let explicit = format!(
        "User: {} is not authorized to perform: ssm:GetConnectionStatus on resource: {any} with an explicit deny in an identity-based policy",
        user_arn("hal")
    );
    let body = json!({ "Target": "mi-00000000000000000" });
    for creds in [Creds::long_term(&hal), temp] {
        let r = signed(
            &server.url,
            &creds,
            "AmazonSSM.GetConnectionStatus",
            body.clone(),
            "t",
        )
        .await;
        r.assert_error(400, "AccessDeniedException", &explicit);
        let r = signed(
            &server.url,
            &creds,
            "AmazonSSM.DescribeSessions",
            json!({ "State": "Active" }),
            "t",
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_token_is_expired_token() {
    let server = TestServer::start().await;
    let store = &server.state().store;
    let admin_user = store.user_by_name("admin").await.unwrap().unwrap();
    use sha2::Digest;
    let token = "dGhpcy1pcy1hbi1leHBpcmVkLXRva2Vu";
    let hash: String = sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let now = airlock_proto::unix_millis() as i64;
    store
        .create_session_credentials(&airlock_server::store::iam::SessionCredentials {
            access_key_id: "ASIAEXPIREDEXPIRED01".into(),
            user_id: admin_user.user_id.clone(),
            secret_access_key: "expiredsecretexpiredsecretexpiredsecret0".into(),
            token_hash: hash,
            mfa: false,
            issued_at: now - 7_200_000,
            expires_at: now - 1_000,
        })
        .await
        .unwrap();
    let creds = Creds {
        id: "ASIAEXPIREDEXPIRED01".into(),
        secret: "expiredsecretexpiredsecretexpiredsecret0".into(),
        token: Some(token.into()),
    };
    let r = signed(
        &server.url,
        &creds,
        "AmazonSSM.DescribeSessions",
        json!({ "State": "Active" }),
        "t",
    )
    .await;
    r.assert_error(
        400,
        "ExpiredTokenException",
        "The security token included in the request is expired",
    );
    // An unknown temporary key is not recognised at all.
    let unknown = Creds {
        id: "ASIANOSUCHKEYNOSUCH1".into(),
        ..creds
    };
    let r = signed(
        &server.url,
        &unknown,
        "AmazonSSM.DescribeSessions",
        json!({ "State": "Active" }),
        "t",
    )
    .await;
    r.assert_error(
        400,
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
    );
}

// ---------------------------------------------------------------------------------------------
// Access keys

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_keys_at_most_two_active_disabled_and_deleted_keys_refused() {
    let server = TestServer::start().await;
    let frank = user_with_policy(
        &server,
        "frank",
        json!([{ "Effect": "Allow", "Action": "ssm:GetConnectionStatus", "Resource": "*" }]),
    )
    .await;
    let key1 = frank.profile().access_key_id.clone();
    let list = |server: &TestServer| {
        let api = server.api();
        async move {
            ok(
                &api,
                "Airlock.ListAccessKeys",
                json!({ "UserName": "frank" }),
            )
            .await["AccessKeyMetadata"]
                .as_array()
                .unwrap()
                .clone()
        }
    };
    let keys = list(&server).await;
    assert_eq!(keys.len(), 1);
    assert!(keys[0]["LastUsedDate"].is_null(), "{keys:?}");
    let status = json!({ "Target": "mi-00000000000000000" });
    ok(&frank, "AmazonSSM.GetConnectionStatus", status.clone()).await;
    let keys = list(&server).await;
    assert!(keys[0]["LastUsedDate"].as_f64().is_some(), "{keys:?}");

    let create = json!({ "UserName": "frank" });
    let key2 = admin(&server, "Airlock.CreateAccessKey", create.clone()).await;
    let key2_id = key2["AccessKey"]["AccessKeyId"]
        .as_str()
        .unwrap()
        .to_owned();
    let frank2 = ApiClient::new(airlock_client::Profile {
        access_key_id: key2_id.clone(),
        secret_access_key: key2["AccessKey"]["SecretAccessKey"]
            .as_str()
            .unwrap()
            .into(),
        ..frank.profile().clone()
    })
    .unwrap();
    let (status_code, code, message) =
        call_err(&server.api(), "Airlock.CreateAccessKey", create.clone()).await;
    assert_eq!((status_code, code.as_str()), (400, "LimitExceeded"));
    assert_eq!(message, "Cannot exceed quota for AccessKeysPerUser: 2");
    assert_eq!(list(&server).await.len(), 2, "nothing half-written");

    // Disabled: refused as AWS refuses an unknown key; the other key still works.
    admin(
        &server,
        "Airlock.UpdateAccessKey",
        json!({ "AccessKeyId": key1, "Status": "Inactive" }),
    )
    .await;
    let unrecognized = "The security token included in the request is invalid.";
    let (s, code, message) =
        call_err(&frank, "AmazonSSM.GetConnectionStatus", status.clone()).await;
    assert_eq!(
        (s, code.as_str(), message.as_str()),
        (400, "UnrecognizedClientException", unrecognized)
    );
    ok(&frank2, "AmazonSSM.GetConnectionStatus", status.clone()).await;
    // Two active at most: with one disabled a new key may be made, but then the disabled
    // one may not come back.
    let key3 = admin(&server, "Airlock.CreateAccessKey", create.clone()).await;
    assert!(key3["AccessKey"]["AccessKeyId"].as_str().is_some());
    let (_, code, message) = call_err(
        &server.api(),
        "Airlock.UpdateAccessKey",
        json!({ "AccessKeyId": key1, "Status": "Active" }),
    )
    .await;
    assert_eq!(code, "LimitExceeded", "{message}");
    let (_, code, _) = call_err(&frank, "AmazonSSM.GetConnectionStatus", status.clone()).await;
    assert_eq!(code, "UnrecognizedClientException");
    let active = list(&server)
        .await
        .iter()
        .filter(|k| k["Status"] == "Active")
        .count();
    assert_eq!(active, 2);

    // Deleted: refused, and deleting again says it is gone.
    admin(
        &server,
        "Airlock.DeleteAccessKey",
        json!({ "AccessKeyId": key2_id }),
    )
    .await;
    let (s, code, message) =
        call_err(&frank2, "AmazonSSM.GetConnectionStatus", status.clone()).await;
    assert_eq!(
        (s, code.as_str(), message.as_str()),
        (400, "UnrecognizedClientException", unrecognized)
    );
    let (_, code, _) = call_err(
        &server.api(),
        "Airlock.DeleteAccessKey",
        json!({ "AccessKeyId": key2_id }),
    )
    .await;
    assert_eq!(code, "NoSuchEntity");
    // With key 2 gone, key 1 may be active again.
    admin(
        &server,
        "Airlock.UpdateAccessKey",
        json!({ "AccessKeyId": key1, "Status": "Active" }),
    )
    .await;
    ok(&frank, "AmazonSSM.GetConnectionStatus", status).await;

    // Keys for a user that does not exist.
    let (_, code, message) = call_err(
        &server.api(),
        "Airlock.CreateAccessKey",
        json!({ "UserName": "ghost" }),
    )
    .await;
    assert_eq!(code, "NoSuchEntity");
    assert_eq!(message, "The user with name ghost cannot be found.");

    // A deleted user's keys die with it.
    admin(
        &server,
        "Airlock.DeleteUser",
        json!({ "UserName": "frank" }),
    )
    .await;
    let (s, code, message) = call_err(
        &frank,
        "AmazonSSM.GetConnectionStatus",
        json!({ "Target": "x" }),
    )
    .await;
    assert_eq!(
        (s, code.as_str(), message.as_str()),
        (400, "UnrecognizedClientException", unrecognized)
    );
}

// ---------------------------------------------------------------------------------------------
// Data channels

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_channel_open_is_authorised_again_and_audited() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let uma = user_with_policy(
        &server,
        "uma",
        json!([{ "Effect": "Allow", "Action": "ssm:StartSession", "Resource": "*" }]),
    )
    .await;
    let grant = uma
        .start_session(&json!({ "Target": agent.instance_id }))
        .await
        .unwrap();
    // The permission goes between StartSession and the client's connection.
    admin(
        &server,
        "Airlock.DeleteUserPolicy",
        json!({ "UserName": "uma", "PolicyName": "main" }),
    )
    .await;
    common::assert_refused(&grant.stream_url, &grant.token_value, "access denied").await;
    let events = all_audit(&server).await;
    let e = events
        .iter()
        .find(|e| e["Event"] == "data-channel" && e["RequestId"] == grant.session_id.as_str())
        .expect("the refused open is on the record");
    assert_eq!(e["Decision"], "Deny", "{e}");
    assert_eq!(e["Principal"], user_arn("uma"));
    assert_eq!(e["Action"], "ssmmessages:OpenDataChannel");
    assert_eq!(e["Resource"], instance_arn(&agent.instance_id));
    assert_eq!(e["SourceIp"], "127.0.0.1");
    assert!(
        e["Statement"]
            .as_str()
            .unwrap()
            .contains("no identity policy statement allows"),
        "{e}"
    );
    agent.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Bad input: nothing half-written

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_policy_is_refused_with_a_pointed_message_and_nothing_is_stored() {
    let server = TestServer::start().await;
    server.user("ivan", false).await;
    let api = server.api();

    let bad_operator = policy(json!([{
        "Sid": "Typo", "Effect": "Allow", "Action": "ssm:StartSession", "Resource": "*",
        "Condition": { "StringEqulas": { "aws:username": "ivan" } }
    }]));
    let (s, code, message) = call_err(
        &api,
        "Airlock.CreatePolicy",
        json!({ "PolicyName": "broken", "PolicyDocument": bad_operator.to_string() }),
    )
    .await;
    assert_eq!((s, code.as_str()), (400, "MalformedPolicyDocument"));
    assert!(
        message.contains("Statement[0]")
            && message.contains("Typo")
            && message.contains("StringEqulas"),
        "{message}"
    );
    let (_, code, _) = call_err(&api, "Airlock.GetPolicy", json!({ "PolicyName": "broken" })).await;
    assert_eq!(code, "NoSuchEntity");
    let names: Vec<Value> = ok(&api, "Airlock.ListPolicies", json!({})).await["Policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["PolicyName"].clone())
        .collect();
    assert!(!names.contains(&json!("broken")), "{names:?}");

    let bad_effect = policy(json!([{ "Effect": "Permit", "Action": "ssm:*", "Resource": "*" }]));
    let (_, code, message) = call_err(
        &api,
        "Airlock.PutUserPolicy",
        json!({ "UserName": "ivan", "PolicyName": "p", "PolicyDocument": bad_effect }),
    )
    .await;
    assert_eq!(code, "MalformedPolicyDocument");
    assert!(
        message.contains("Effect") && message.contains("Permit"),
        "{message}"
    );
    let (_, code, message) = call_err(
        &api,
        "Airlock.PutUserPolicy",
        json!({ "UserName": "ivan", "PolicyName": "p", "PolicyDocument": "{\"Version\": " }),
    )
    .await;
    assert_eq!(code, "MalformedPolicyDocument");
    assert!(message.contains("not valid JSON"), "{message}");
    let (_, code, _) = call_err(
        &api,
        "Airlock.CreateGrant",
        json!({ "UserName": "ivan", "ExpiresAt": now_secs() + 60.0, "PolicyDocument": bad_effect }),
    )
    .await;
    assert_eq!(code, "MalformedPolicyDocument");
    let user = ok(&api, "Airlock.GetUser", json!({ "UserName": "ivan" })).await;
    assert_eq!(user["User"]["InlinePolicies"], json!([]));
    assert_eq!(user["User"]["Grants"], json!([]));

    // Unknown users, groups and policies are named.
    let (_, code, message) = call_err(
        &api,
        "Airlock.AttachUserPolicy",
        json!({ "UserName": "ghost", "PolicyName": "AdministratorAccess" }),
    )
    .await;
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("NoSuchEntity", "The user with name ghost cannot be found.")
    );
    let (_, code, message) = call_err(
        &api,
        "Airlock.AttachUserPolicy",
        json!({ "UserName": "ivan", "PolicyName": "no-such-policy" }),
    )
    .await;
    assert_eq!(code, "NoSuchEntity");
    assert!(message.contains("no-such-policy"), "{message}");
    let (_, code, message) = call_err(
        &api,
        "Airlock.AddUserToGroup",
        json!({ "UserName": "ivan", "GroupName": "no-such-group" }),
    )
    .await;
    assert_eq!(code, "NoSuchEntity");
    assert!(message.contains("no-such-group"), "{message}");
    let user = ok(&api, "Airlock.GetUser", json!({ "UserName": "ivan" })).await;
    assert_eq!(user["User"]["AttachedPolicies"], json!([]));
    assert_eq!(user["User"]["Groups"], json!([]));
}

// ---------------------------------------------------------------------------------------------
// Apply and SimulatePolicy

fn apply_doc() -> Value {
    json!({
        "Policies": {
            "ops-read": {
                "Description": "read-only operations",
                "Document": policy(json!([{ "Effect": "Allow", "Action": ["ssm:Describe*", "ssm:GetConnectionStatus"], "Resource": "*" }]))
            },
            "ops-boundary": {
                "Document": policy(json!([{ "Effect": "Allow", "Action": "ssm:*", "Resource": "*" }]))
            }
        },
        "Groups": {
            "ops": {
                "Policies": ["ops-read"],
                "InlinePolicies": {
                    "sessions": policy(json!([{ "Effect": "Allow", "Action": "ssm:StartSession", "Resource": "*" }]))
                }
            }
        },
        "Users": {
            "jane": {
                "Groups": ["ops"],
                "Tags": { "Team": "red", "SSMSessionRunAs": "airlock-user" },
                "InlinePolicies": {
                    "own": policy(json!([{ "Effect": "Allow", "Action": "ssm:TerminateSession", "Resource": "arn:aws:ssm:*:*:session/${aws:username}-*" }]))
                },
                "PermissionsBoundary": "ops-boundary"
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_is_idempotent_and_changes_nothing_when_any_part_is_invalid() {
    let server = TestServer::start().await;
    let api = server.api();
    let first = ok(&api, "Airlock.Apply", json!({ "Document": apply_doc() })).await;
    let changes: Vec<String> = first["Changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    for expected in [
        "policy ops-read: created",
        "group ops: created",
        "user jane: created",
    ] {
        assert!(changes.iter().any(|c| c == expected), "{changes:?}");
    }
    let jane = ok(&api, "Airlock.GetUser", json!({ "UserName": "jane" })).await;
    assert_eq!(jane["User"]["Groups"], json!(["ops"]));
    assert_eq!(jane["User"]["InlinePolicies"], json!(["own"]));
    assert_eq!(
        jane["User"]["Tags"],
        json!({ "SSMSessionRunAs": "airlock-user", "Team": "red" })
    );
    assert_eq!(jane["User"]["PermissionsBoundary"], "ops-boundary");

    let second = ok(&api, "Airlock.Apply", json!({ "Document": apply_doc() })).await;
    assert_eq!(second["Changes"], json!([]), "a second run changes nothing");

    // One bad policy among good changes: refused, naming it, and nothing changes.
    let mut bad = apply_doc();
    bad["Policies"]["ops-read"]["Description"] = json!("changed");
    bad["Policies"]["broken"] = json!({
        "Document": policy(json!([{ "Effect": "Allow", "Action": "ssm:StartSession", "Resource": "not-an-arn" }]))
    });
    bad["Users"]["kim"] = json!({ "Groups": ["ops"] });
    bad["Users"]["jane"]["Tags"]["Team"] = json!("blue");
    let (s, code, message) = call_err(&api, "Airlock.Apply", json!({ "Document": bad })).await;
    assert_eq!((s, code.as_str()), (400, "MalformedPolicyDocument"));
    assert!(
        message.contains("Policies.broken") && message.contains("not-an-arn"),
        "{message}"
    );
    let (_, code, _) = call_err(&api, "Airlock.GetUser", json!({ "UserName": "kim" })).await;
    assert_eq!(code, "NoSuchEntity");
    let p = ok(
        &api,
        "Airlock.GetPolicy",
        json!({ "PolicyName": "ops-read" }),
    )
    .await;
    assert_eq!(p["Policy"]["Description"], "read-only operations");
    let jane = ok(&api, "Airlock.GetUser", json!({ "UserName": "jane" })).await;
    assert_eq!(jane["User"]["Tags"]["Team"], "red");

    // A reference to a policy that exists nowhere is refused the same way.
    let mut dangling = apply_doc();
    dangling["Users"]["kim"] = json!({ "Policies": ["no-such-policy"] });
    let (_, code, message) = call_err(&api, "Airlock.Apply", json!({ "Document": dangling })).await;
    assert_eq!(code, "NoSuchEntity");
    assert!(message.contains("no-such-policy"), "{message}");
    let (_, code, _) = call_err(&api, "Airlock.GetUser", json!({ "UserName": "kim" })).await;
    assert_eq!(code, "NoSuchEntity");

    let third = ok(&api, "Airlock.Apply", json!({ "Document": apply_doc() })).await;
    assert_eq!(third["Changes"], json!([]));

    // Removing something from the file removes it on the server, once.
    let mut fewer = apply_doc();
    fewer["Users"]["jane"]["Tags"] = json!({ "Team": "red" });
    let out = ok(&api, "Airlock.Apply", json!({ "Document": fewer.clone() })).await;
    assert_eq!(out["Changes"], json!(["user jane: tags set"]));
    let out = ok(&api, "Airlock.Apply", json!({ "Document": fewer })).await;
    assert_eq!(out["Changes"], json!([]));

    // Apply is itself authorised.
    let outsider = ApiClient::new(server.user("outsider", false).await).unwrap();
    assert_denied(
        &outsider,
        "Airlock.Apply",
        json!({ "Document": apply_doc() }),
        &denied("outsider", "airlock:Apply", "*"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_policy_names_the_deciding_statement_and_is_itself_authorised() {
    let server = TestServer::start().await;
    let lee = user_with_policy(
        &server,
        "lee",
        json!([
            {
                "Sid": "DevShells", "Effect": "Allow", "Action": "ssm:StartSession", "Resource": "*",
                "Condition": { "StringEquals": { "ssm:resourceTag/Env": "dev" } }
            },
            {
                "Sid": "OfficeOnly", "Effect": "Deny", "Action": "ssm:StartSession", "Resource": "*",
                "Condition": { "NotIpAddress": { "aws:SourceIp": "10.0.0.0/8" } }
            }
        ]),
    )
    .await;
    let api = server.api();
    let target = instance_arn("mi-0123456789abcdef0");
    let sim = |tags: Value, ip: &str| {
        json!({
            "UserName": "lee", "Action": "ssm:StartSession", "Resource": target,
            "ResourceTags": tags, "Context": { "aws:SourceIp": [ip] }
        })
    };
    let out = ok(
        &api,
        "Airlock.SimulatePolicy",
        sim(json!({ "Env": "dev" }), "10.1.2.3"),
    )
    .await;
    assert_eq!(out["Decision"], "Allow", "{out}");
    assert_eq!(out["Allowed"], true);
    let why = out["Explanation"].as_str().unwrap();
    assert!(
        why.contains("DevShells") && why.contains("inline/user/main"),
        "{why}"
    );
    let out = ok(
        &api,
        "Airlock.SimulatePolicy",
        sim(json!({ "Env": "prod" }), "10.1.2.3"),
    )
    .await;
    assert_eq!(out["Decision"], "ImplicitDeny", "{out}");
    let out = ok(
        &api,
        "Airlock.SimulatePolicy",
        sim(json!({ "Env": "dev" }), "192.0.2.1"),
    )
    .await;
    assert_eq!(out["Decision"], "ExplicitDeny", "{out}");
    assert!(
        out["Explanation"].as_str().unwrap().contains("OfficeOnly"),
        "{out}"
    );
    // Custom documents.
    let out = ok(
        &api,
        "Airlock.SimulatePolicy",
        json!({
            "PolicyDocuments": [policy(json!([{ "Sid": "Any", "Effect": "Allow", "Action": "ssm:Describe*", "Resource": "*" }]))],
            "Action": "ssm:DescribeSessions", "Resource": "*"
        }),
    )
    .await;
    assert_eq!(out["Decision"], "Allow", "{out}");
    assert!(
        out["Explanation"].as_str().unwrap().contains("Any"),
        "{out}"
    );
    // A malformed document is pointed at.
    let (_, code, _) = call_err(
        &api,
        "Airlock.SimulatePolicy",
        json!({ "PolicyDocuments": ["{}"], "Action": "ssm:DescribeSessions", "Resource": "*" }),
    )
    .await;
    assert_eq!(code, "MalformedPolicyDocument");
    // Simulating an unknown user names it.
    let (_, code, message) = call_err(
        &api,
        "Airlock.SimulatePolicy",
        json!({ "UserName": "ghost", "Action": "ssm:DescribeSessions", "Resource": "*" }),
    )
    .await;
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("NoSuchEntity", "The user with name ghost cannot be found.")
    );

    // Without iam:SimulatePrincipalPolicy / iam:SimulateCustomPolicy, lee may not ask.
    assert_denied(
        &lee,
        "Airlock.SimulatePolicy",
        sim(json!({ "Env": "dev" }), "10.1.2.3"),
        &denied("lee", "iam:SimulatePrincipalPolicy", &user_arn("lee")),
    )
    .await;
    assert_denied(
        &lee,
        "Airlock.SimulatePolicy",
        json!({
            "PolicyDocuments": [policy(json!([{ "Effect": "Allow", "Action": "*", "Resource": "*" }]))],
            "Action": "ssm:DescribeSessions", "Resource": "*"
        }),
        &denied("lee", "iam:SimulateCustomPolicy", "*"),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Instance tags

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_tags_from_the_activation_and_the_tag_api_feed_resource_tag_conditions() {
    let server = TestServer::start().await;
    let agent = server
        .agent_tagged(json!([{ "Key": "Env", "Value": "dev" }, { "Key": "Owner", "Value": "ops" }]))
        .await;
    let id = agent.instance_id.clone();
    let api = server.api();
    let resource = json!({ "ResourceType": "ManagedInstance", "ResourceId": id });
    let listed = ok(&api, "AmazonSSM.ListTagsForResource", resource.clone()).await;
    assert_eq!(
        tags_of(&listed),
        vec![
            ("Env".to_owned(), "dev".to_owned()),
            ("Owner".to_owned(), "ops".to_owned())
        ]
    );

    let mo = user_with_policy(
        &server,
        "mo",
        json!([
            {
                "Effect": "Allow", "Action": "ssm:StartSession", "Resource": "*",
                "Condition": { "StringEquals": { "ssm:resourceTag/Team": "blue", "aws:ResourceTag/Env": "dev" } }
            },
            { "Effect": "Allow", "Action": "ssm:ListTagsForResource", "Resource": "*" }
        ]),
    )
    .await;
    let start = json!({ "Target": id });
    let msg = denied("mo", "ssm:StartSession", &instance_arn(&id));
    assert_denied(&mo, "AmazonSSM.StartSession", start.clone(), &msg).await;

    let mut add = resource.clone();
    add["Tags"] = json!([{ "Key": "Team", "Value": "blue" }]);
    // mo may not tag.
    assert_denied(
        &mo,
        "AmazonSSM.AddTagsToResource",
        add.clone(),
        &denied("mo", "ssm:AddTagsToResource", &instance_arn(&id)),
    )
    .await;
    ok(&api, "AmazonSSM.AddTagsToResource", add).await;
    let listed = ok(&mo, "AmazonSSM.ListTagsForResource", resource.clone()).await;
    assert!(tags_of(&listed).contains(&("Team".to_owned(), "blue".to_owned())));
    let granted = ok(&mo, "AmazonSSM.StartSession", start.clone()).await;
    assert_session_id(&session_id_of(&granted), "mo");

    let mut remove = resource.clone();
    remove["TagKeys"] = json!(["Team"]);
    ok(&api, "AmazonSSM.RemoveTagsFromResource", remove).await;
    assert_denied(&mo, "AmazonSSM.StartSession", start, &msg).await;
    let listed = ok(&api, "AmazonSSM.ListTagsForResource", resource.clone()).await;
    assert_eq!(tags_of(&listed).len(), 2);

    // Bad input.
    let (_, code, _) = call_err(
        &api,
        "AmazonSSM.ListTagsForResource",
        json!({ "ResourceType": "ManagedInstance", "ResourceId": "mi-00000000000000000" }),
    )
    .await;
    assert_eq!(code, "InvalidResourceId");
    let (_, code, _) = call_err(
        &api,
        "AmazonSSM.ListTagsForResource",
        json!({ "ResourceType": "Document", "ResourceId": id }),
    )
    .await;
    assert_eq!(code, "InvalidResourceType");
    let mut reserved = resource;
    reserved["Tags"] = json!([{ "Key": "aws:owner", "Value": "x" }]);
    let (_, code, _) = call_err(&api, "AmazonSSM.AddTagsToResource", reserved).await;
    assert_eq!(code, "ValidationException");
    let (_, code, _) = call_err(
        &api,
        "AmazonSSM.CreateActivation",
        json!({ "IamRole": "Test", "Tags": [{ "Value": "no key" }] }),
    )
    .await;
    assert_eq!(code, "ValidationException");
    agent.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Run-as

async fn run_as_user(server: &TestServer, name: &str, tag_key: &str, os_user: &str) -> ApiClient {
    let api = user_with_policy(
        server,
        name,
        json!([{ "Effect": "Allow", "Action": ["ssm:StartSession", "ssm:TerminateSession"], "Resource": "*" }]),
    )
    .await;
    admin(
        server,
        "Airlock.TagUser",
        json!({ "UserName": name, "Tags": [{ "Key": tag_key, "Value": os_user }] }),
    )
    .await;
    api
}

/// Starts a session that must fail on the host, and returns its History record after the
/// client's side has ended.
async fn failed_session(server: &TestServer, api: &ApiClient, target: &str) -> Value {
    common::capture_logs();
    let s = TestSession::start(api, target, SessionOptions::default()).await;
    let id = s.grant.session_id.clone();
    let done = match tokio::time::timeout(Duration::from_secs(20), s.done).await {
        Ok(d) => d.unwrap(),
        Err(_) => panic!(
            "the client's session {id} did not end; logs:\n{}",
            common::logs()
        ),
    };
    let ended = server.wait_history(&id).await;
    // The client heard the reason when its channel was open in time.
    match done {
        Ok(outcome) => assert!(
            outcome.reason.contains("run-as"),
            "the client should hear why: {outcome:?}"
        ),
        // Opened after the end: refused with the reason, or (when the end revoked the token
        // before it was used) as a spent token.
        Err(airlock_client::SessionError::Refused(why)) => assert!(
            (why.contains("session has ended") && why.contains("run-as"))
                || why.contains("unknown or already used token"),
            "unexpected refusal: {why}"
        ),
        Err(e) => panic!("unexpected client error: {e}"),
    }
    ended
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_a_missing_user_fails_the_session_closed() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let api = run_as_user(&server, "nora", "SSMSessionRunAs", "airlock-no-such-user").await;
    let ended = failed_session(&server, &api, &agent.instance_id).await;
    assert_eq!(ended["Status"], "Failed", "{ended}");
    assert_eq!(ended["RunAs"], "airlock-no-such-user", "{ended}");
    let why = ended["Details"].as_str().unwrap_or_default();
    assert!(
        why.contains("airlock-no-such-user") && why.contains("does not exist"),
        "{why}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_root_is_refused_and_another_user_is_honoured() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    // The tag key is case-insensitive.
    let api = run_as_user(&server, "olga", "ssmsessionrunas", "root").await;
    let ended = failed_session(&server, &api, &agent.instance_id).await;
    assert_eq!(ended["Status"], "Failed", "{ended}");
    let why = ended["Details"].as_str().unwrap_or_default();
    assert!(why.contains("root"), "{why}");

    // An existing unprivileged user is used.
    let api = run_as_user(&server, "pat", "SSMSessionRunAs", "nobody").await;
    let mut s = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    s.send("echo RUNAS=$(id -un)\n").await;
    s.expect("RUNAS=nobody", Duration::from_secs(15)).await;
    s.send("exit 0\n").await;
    let (outcome, _) = s.finish(Duration::from_secs(15)).await;
    assert_eq!(outcome.exit_code, Some(0));
    agent.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The audit trail

fn find_by_request<'a>(events: &'a [Value], request_id: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["RequestId"] == request_id)
        .unwrap_or_else(|| panic!("no audit record for request {request_id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_and_session_is_on_the_audit_record() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let quinn = user_with_policy(
        &server,
        "quinn",
        json!([{ "Effect": "Allow", "Action": "ssm:StartSession", "Resource": "*" }]),
    )
    .await;
    let ua = "iam-audit-test/1.0";
    let status = json!({ "Target": agent.instance_id });
    let allowed = signed(
        &server.url,
        &Creds {
            id: server.admin.access_key_id.clone(),
            secret: server.admin.secret_access_key.clone(),
            token: None,
        },
        "AmazonSSM.GetConnectionStatus",
        status.clone(),
        ua,
    )
    .await;
    assert_eq!(allowed.status, 200);
    let denied_call = signed(
        &server.url,
        &Creds::long_term(&quinn),
        "AmazonSSM.GetConnectionStatus",
        status.clone(),
        ua,
    )
    .await;
    assert_eq!(
        denied_call.error_type.as_deref(),
        Some("AccessDeniedException")
    );
    let anonymous = send_raw(
        &server.url,
        RawRequest {
            key: None,
            ..RawRequest::new("AmazonSSM.GetConnectionStatus", status, ("x", "y"))
        },
        |h, _| h.push(("user-agent".into(), ua.into())),
    )
    .await;
    assert_eq!(
        anonymous.error_type.as_deref(),
        Some("MissingAuthenticationTokenException")
    );

    // A real session, start to end.
    let mut s = TestSession::start(&quinn, &agent.instance_id, SessionOptions::default()).await;
    let sid = s.grant.session_id.clone();
    s.send("echo ready\n").await;
    s.expect("ready", Duration::from_secs(15)).await;
    s.send("exit 3\n").await;
    let (outcome, _) = s.finish(Duration::from_secs(15)).await;
    assert_eq!(outcome.exit_code, Some(3));
    server.wait_history(&sid).await;

    let events = all_audit(&server).await;
    let any = format!("arn:aws:ssm:{REGION}:{ACCOUNT}:*");
    let e = find_by_request(&events, allowed.request_id.as_deref().unwrap());
    assert_eq!(e["Event"], "api");
    assert_eq!(e["Principal"], user_arn("admin"));
    assert_eq!(e["SourceIp"], "127.0.0.1");
    assert_eq!(e["Action"], "ssm:GetConnectionStatus");
    assert_eq!(e["Resource"], any);
    assert_eq!(e["Decision"], "Allow");
    assert!(
        e["Statement"]
            .as_str()
            .unwrap()
            .contains("AdministratorAccess"),
        "{e}"
    );
    assert_eq!(e["UserAgent"], ua);
    assert!(e["Time"].as_f64().unwrap() > now_secs() - 120.0, "{e}");

    let e = find_by_request(&events, denied_call.request_id.as_deref().unwrap());
    assert_eq!(e["Principal"], user_arn("quinn"));
    assert_eq!(e["SourceIp"], "127.0.0.1");
    assert_eq!(e["Action"], "ssm:GetConnectionStatus");
    assert_eq!(e["Resource"], any);
    assert_eq!(e["Decision"], "Deny");
    assert!(
        e["Statement"]
            .as_str()
            .unwrap()
            .contains("no identity policy statement allows"),
        "{e}"
    );
    assert_eq!(e["UserAgent"], ua);

    let e = find_by_request(&events, anonymous.request_id.as_deref().unwrap());
    assert_eq!(e["Principal"], "anonymous");
    assert_eq!(e["SourceIp"], "127.0.0.1");
    assert_eq!(e["Action"], "AmazonSSM.GetConnectionStatus");
    assert_eq!(e["Decision"], "MissingAuthenticationTokenException");
    assert_eq!(e["UserAgent"], ua);

    // StartSession's decision cites the statement; the session's start and end follow.
    let start_call = events
        .iter()
        .find(|e| {
            e["Event"] == "api"
                && e["Action"] == "ssm:StartSession"
                && e["Principal"] == user_arn("quinn")
        })
        .expect("the StartSession decision");
    assert_eq!(start_call["Decision"], "Allow");
    assert_eq!(start_call["Resource"], instance_arn(&agent.instance_id));
    assert!(
        start_call["Statement"]
            .as_str()
            .unwrap()
            .contains("inline/user/main"),
        "{start_call}"
    );
    let started = events
        .iter()
        .find(|e| e["Event"] == "session-start" && e["Resource"] == session_arn(&sid))
        .expect("a session-start record");
    assert_eq!(started["Principal"], user_arn("quinn"));
    assert_eq!(started["SourceIp"], "127.0.0.1");
    assert_eq!(started["RequestId"], start_call["RequestId"]);
    let opened = events
        .iter()
        .find(|e| e["Event"] == "data-channel" && e["RequestId"] == sid.as_str())
        .expect("a data-channel record");
    assert_eq!(opened["Decision"], "Allow");
    let ended = events
        .iter()
        .find(|e| e["Event"] == "session-end" && e["Resource"] == session_arn(&sid))
        .expect("a session-end record");
    assert_eq!(ended["Principal"], user_arn("quinn"));
    assert_eq!(ended["Decision"], "Terminated");
    assert!(
        ended["Detail"].as_str().unwrap().contains("\"ExitCode\":3"),
        "{ended}"
    );

    // Filters and paging.
    let api = server.api();
    let mine = ok(
        &api,
        "Airlock.ListAuditEvents",
        json!({ "Principal": "user/quinn", "Decision": "Deny" }),
    )
    .await;
    let mine = mine["Events"].as_array().unwrap();
    assert!(!mine.is_empty());
    assert!(mine
        .iter()
        .all(|e| e["Principal"] == user_arn("quinn") && e["Decision"] == "Deny"));
    let page1 = ok(&api, "Airlock.ListAuditEvents", json!({ "MaxResults": 2 })).await;
    assert_eq!(page1["Events"].as_array().unwrap().len(), 2);
    let page2 = ok(
        &api,
        "Airlock.ListAuditEvents",
        json!({ "MaxResults": 2, "NextToken": page1["NextToken"] }),
    )
    .await;
    assert!(
        page2["Events"][0]["Seq"].as_i64().unwrap() < page1["Events"][1]["Seq"].as_i64().unwrap()
    );

    // Reading the trail is itself authorised and audited.
    assert_denied(
        &quinn,
        "Airlock.ListAuditEvents",
        json!({}),
        &denied("quinn", "airlock:ListAuditEvents", "*"),
    )
    .await;
    assert_denied(
        &quinn,
        "Airlock.VerifyAudit",
        json!({}),
        &denied("quinn", "airlock:VerifyAudit", "*"),
    )
    .await;
    let v = verify(&server).await;
    assert_eq!(v["Ok"], true, "{v}");
    assert!(v["Records"].as_i64().unwrap() >= events.len() as i64, "{v}");
    assert!(v["FirstBadSeq"].is_null());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_the_audit_trail_is_detected_and_the_record_named() {
    let server = TestServer::start().await;
    let api = server.api();
    for _ in 0..5 {
        ok(&api, "Airlock.ListUsers", json!({})).await;
    }
    let v = verify(&server).await;
    assert_eq!(v["Ok"], true, "{v}");
    let pool = db(&server).await;
    let k: i64 = 3;

    // Altered.
    let original: String = sqlx::query_scalar("SELECT decision FROM audit_log WHERE seq = ?")
        .bind(k)
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET decision = 'Deny' WHERE seq = ?")
        .bind(k)
        .execute(&pool)
        .await
        .unwrap();
    let v = verify(&server).await;
    assert_eq!(v["Ok"], false, "{v}");
    assert_eq!(v["FirstBadSeq"], k, "{v}");
    assert!(v["Problem"].as_str().unwrap().contains("altered"), "{v}");
    sqlx::query("UPDATE audit_log SET decision = ? WHERE seq = ?")
        .bind(&original)
        .bind(k)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(verify(&server).await["Ok"], true);

    // Removed: the next record is named.
    sqlx::query("CREATE TABLE saved AS SELECT * FROM audit_log WHERE seq = ?")
        .bind(k)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_log WHERE seq = ?")
        .bind(k)
        .execute(&pool)
        .await
        .unwrap();
    let v = verify(&server).await;
    assert_eq!(v["Ok"], false, "{v}");
    assert_eq!(v["FirstBadSeq"], k + 1, "{v}");
    assert!(v["Problem"].as_str().unwrap().contains("removed"), "{v}");
    sqlx::query("INSERT INTO audit_log SELECT * FROM saved")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(verify(&server).await["Ok"], true);

    // Inserted: a forged record at the head of the chain, with a made-up hash.
    let (last_seq, last_hash): (i64, String) =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    let forged = last_seq + 1;
    sqlx::query(
        "INSERT INTO audit_log (seq, time, event, principal, source_ip, action, resource, decision, \
         statement, request_id, user_agent, detail, prev_hash, hash) \
         VALUES (?, ?, 'api', 'arn:aws:iam::000000000000:user/admin', '127.0.0.1', 'iam:DeleteUser', \
         'arn:aws:iam::000000000000:user/bob', 'Allow', 'forged', 'forged', 'forged', '', ?, ?)",
    )
    .bind(forged)
    .bind(airlock_proto::unix_millis() as i64)
    .bind(&last_hash)
    .bind("ab".repeat(32))
    .execute(&pool)
    .await
    .unwrap();
    let v = verify(&server).await;
    assert_eq!(v["Ok"], false, "{v}");
    assert_eq!(v["FirstBadSeq"], forged, "{v}");
    pool.close().await;
}

/// A forged record that skips ahead in the numbering. (On its own server: the record before
/// cannot be taken out again without the checkpoint naming the trail truncated.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_record_ahead_of_the_chain_is_named() {
    let server = TestServer::start().await;
    for _ in 0..3 {
        ok(&server.api(), "Airlock.ListUsers", json!({})).await;
    }
    assert_eq!(verify(&server).await["Ok"], true);
    let pool = db(&server).await;
    let (last_seq, last_hash): (i64, String) =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    let ahead = last_seq + 5;
    sqlx::query(
        "INSERT INTO audit_log (seq, time, event, principal, source_ip, action, resource, decision, \
         statement, request_id, user_agent, detail, prev_hash, hash) \
         VALUES (?, 0, 'api', 'x', 'x', 'x', 'x', 'Allow', 'x', 'x', 'x', '', ?, ?)",
    )
    .bind(ahead)
    .bind(&last_hash)
    .bind("cd".repeat(32))
    .execute(&pool)
    .await
    .unwrap();
    let v = verify(&server).await;
    assert_eq!(v["Ok"], false, "{v}");
    assert_eq!(v["FirstBadSeq"], ahead, "{v}");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_audit_record_cannot_be_written_fails_and_does_nothing() {
    let server = TestServer::start().await;
    let api = server.api();
    let pool = db(&server).await;
    sqlx::query(
        "CREATE TRIGGER audit_unwritable BEFORE INSERT ON audit_log \
         BEGIN SELECT RAISE(FAIL, 'audit disabled by the test'); END",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (s, code, _) = call_err(
        &api,
        "Airlock.CreateUser",
        json!({ "UserName": "rita", "Admin": false }),
    )
    .await;
    assert_eq!((s, code.as_str()), (500, "InternalServerError"));
    assert!(server
        .state()
        .store
        .user_by_name("rita")
        .await
        .unwrap()
        .is_none());
    // An unauthenticated call is refused anyway: its record is written off the request path
    // (so that a flood of them never delays signed calls), and its answer stays the refusal.
    let anonymous = send_raw(
        &server.url,
        RawRequest {
            key: None,
            ..RawRequest::new("Airlock.ListUsers", json!({}), ("x", "y"))
        },
        |_, _| {},
    )
    .await;
    assert_eq!(anonymous.status, 400, "{}", anonymous.text);
    assert!(
        anonymous.text.contains("MissingAuthenticationToken"),
        "{}",
        anonymous.text
    );

    sqlx::query("DROP TRIGGER audit_unwritable")
        .execute(&pool)
        .await
        .unwrap();
    ok(
        &api,
        "Airlock.CreateUser",
        json!({ "UserName": "rita", "Admin": false }),
    )
    .await;
    assert_eq!(verify(&server).await["Ok"], true);
    pool.close().await;
}

// ---------------------------------------------------------------------------------------------
// Secrets at rest

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_at_rest_under_a_separate_master_key() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start().await;
    let sam = user_with_policy(
        &server,
        "sam",
        json!([{ "Effect": "Allow", "Action": "sts:GetSessionToken", "Resource": "*" }]),
    )
    .await;
    let temp = ok(
        &sam,
        "Airlock.GetSessionToken",
        json!({ "DurationSeconds": 900 }),
    )
    .await;
    let secrets = [
        server.admin.secret_access_key.clone(),
        sam.profile().secret_access_key.clone(),
        temp["Credentials"]["SecretAccessKey"]
            .as_str()
            .unwrap()
            .to_owned(),
        temp["Credentials"]["SessionToken"]
            .as_str()
            .unwrap()
            .to_owned(),
    ];
    let dir = server.dir.0.join("server");
    let mut files = 0;
    for name in ["airlock.db", "airlock.db-wal", "airlock.db-shm"] {
        let Ok(bytes) = std::fs::read(dir.join(name)) else {
            continue;
        };
        files += 1;
        for secret in &secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{name} holds a secret in clear"
            );
        }
    }
    assert!(files >= 1);
    // The stored form is the sealed one.
    let pool = db(&server).await;
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT secret_access_key FROM access_keys UNION ALL SELECT secret_access_key FROM session_credentials",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(stored.len(), 3);
    assert!(stored.iter().all(|s| s.starts_with("enc2:")), "{stored:?}");
    pool.close().await;
    // The master key is its own file, private to the server's user.
    let key = dir.join("master.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "master.key mode {mode:o}");
    // And the sealed secrets still verify signatures.
    ok(&server.api(), "Airlock.ListUsers", json!({})).await;
}

/// The SDK signs with temporary credentials when its profile carries a session token, and the
/// policy sees them as temporary (aws:TokenIssueTime present).
#[tokio::test]
async fn the_client_sdk_signs_with_a_session_token() {
    let server = TestServer::start().await;
    let alice = user_with_policy(
        &server,
        "tokenalice",
        json!([{
            "Effect": "Allow",
            "Action": "ssm:GetConnectionStatus",
            "Resource": "*",
            "Condition": { "Null": { "aws:TokenIssueTime": "false" } }
        }]),
    )
    .await;
    // Long-term keys: the key is absent, so the statement does not allow.
    let (status, code, _) = call_err(
        &alice,
        "AmazonSSM.GetConnectionStatus",
        json!({ "Target": "mi-00000000000000000" }),
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "AccessDeniedException"));
    let out = ok(
        &alice,
        "Airlock.GetSessionToken",
        json!({ "DurationSeconds": 900 }),
    )
    .await;
    let c = &out["Credentials"];
    let temp = ApiClient::new(airlock_client::Profile {
        access_key_id: c["AccessKeyId"].as_str().unwrap().into(),
        secret_access_key: c["SecretAccessKey"].as_str().unwrap().into(),
        session_token: Some(c["SessionToken"].as_str().unwrap().into()),
        ..alice.profile().clone()
    })
    .unwrap();
    let status = ok(
        &temp,
        "AmazonSSM.GetConnectionStatus",
        json!({ "Target": "mi-00000000000000000" }),
    )
    .await;
    assert_eq!(status["Status"], "notconnected");
    // A wrong token with the right key is refused.
    let forged = ApiClient::new(airlock_client::Profile {
        session_token: Some("not-the-token".into()),
        ..temp.profile().clone()
    })
    .unwrap();
    let (_, code, _) = call_err(
        &forged,
        "AmazonSSM.GetConnectionStatus",
        json!({ "Target": "mi-00000000000000000" }),
    )
    .await;
    assert_eq!(code, "UnrecognizedClientException");
}

// ---------------------------------------------------------------------------------------------
// A stored policy that no longer parses

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_policy_that_no_longer_parses_denies_everything() {
    let server = TestServer::start().await;
    let bob = user_with_policy(
        &server,
        "bob",
        json!([{ "Effect": "Allow", "Action": "ssm:*", "Resource": "*" }]),
    )
    .await;
    admin(
        &server,
        "Airlock.CreatePolicy",
        json!({ "PolicyName": "guard", "PolicyDocument": policy(json!([
            { "Effect": "Deny", "Action": "ssm:StartSession", "Resource": "*" }
        ])) }),
    )
    .await;
    admin(
        &server,
        "Airlock.AttachUserPolicy",
        json!({ "UserName": "bob", "PolicyName": "guard" }),
    )
    .await;
    ok(
        &bob,
        "AmazonSSM.DescribeSessions",
        json!({ "State": "Active" }),
    )
    .await;
    // The Deny's document is damaged in the database (a bad restore, a hand edit).
    sqlx::query("UPDATE policies SET document = '{\"Version\": \"2012-10-17\", \"Statement\": [' WHERE name = 'guard'")
        .execute(&db(&server).await)
        .await
        .unwrap();
    // Leaving it out would drop its Deny; it denies everything instead, and says why.
    let (status, code, message) = call_err(
        &bob,
        "AmazonSSM.DescribeSessions",
        json!({ "State": "Active" }),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (400, "AccessDeniedException"),
        "{message}"
    );
    let denied = admin(
        &server,
        "Airlock.ListAuditEvents",
        json!({ "Decision": "Deny", "MaxResults": 5 }),
    )
    .await;
    assert!(denied.to_string().contains("does not parse"), "{denied}");
}
