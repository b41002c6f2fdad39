//! Session limits with a short "minute" (the server's test knob): the idle timeout and the
//! maximum duration end real shell and port sessions after a warning the user sees, activity
//! keeps them alive; revocation (user, key, grant, temporary credentials, policies, groups)
//! ends a live session within 5 s while another user's allowed session survives; concurrency
//! limits refuse and then admit; every end has a typed reason in DescribeSessions, the audit
//! trail and the client's closing line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod forwards;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use airlock_client::{ApiClient, Profile, SessionOptions};
use airlock_server::preferences::Preferences;
use airlock_testkit::{eventually, TestServer, TestSession};

/// A test "minute": the preferences' minutes last this long.
const MINUTE: Duration = Duration::from_millis(1000);

async fn server() -> TestServer {
    TestServer::start_with(|c| c.minute = MINUTE).await
}

fn set_prefs(server: &TestServer, f: impl FnOnce(&mut Preferences)) {
    let mut p = (*server.state().preferences.get()).clone();
    f(&mut p);
    server.state().preferences.set(p);
}

async fn call(api: &ApiClient, op: &str, input: Value) -> Value {
    api.call(op, &input)
        .await
        .unwrap_or_else(|e| panic!("{op}: {e}"))
}

/// A user allowed to start, resume and terminate sessions through the managed policy
/// `policy` (created if missing), with an access key.
async fn session_user(server: &TestServer, name: &str, policy: &str) -> Profile {
    let admin = server.api();
    let profile = server.user(name, false).await;
    let doc = json!({ "Version": "2012-10-17", "Statement": [{
        "Effect": "Allow",
        "Action": ["ssm:StartSession", "ssm:ResumeSession", "ssm:TerminateSession", "ssm:DescribeSessions"],
        "Resource": "*",
    }]});
    let _ = admin
        .call(
            "Airlock.CreatePolicy",
            &json!({ "PolicyName": policy, "PolicyDocument": doc }),
        )
        .await;
    call(
        &admin,
        "Airlock.AttachUserPolicy",
        json!({ "UserName": name, "PolicyName": policy }),
    )
    .await;
    profile
}

/// Waits until `id` is in History and returns it.
async fn ended(server: &TestServer, id: &str, within: Duration) -> Value {
    eventually(&format!("{id} ended"), within, || {
        server.session("History", id)
    })
    .await
}

async fn audit_end(server: &TestServer, id: &str) -> Value {
    let out = call(
        &server.api(),
        "Airlock.ListAuditEvents",
        json!({ "Action": "ssm:SessionEnded", "MaxResults": 1000 }),
    )
    .await;
    out["Events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["Resource"].as_str().unwrap_or_default().ends_with(id))
        .cloned()
        .unwrap_or_else(|| panic!("no session-end record for {id}: {out}"))
}

fn end_kind(s: &Value) -> &str {
    s["EndReason"]["Kind"].as_str().unwrap_or_default()
}

// ---- idle timeout and maximum duration ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_ends_a_shell_after_a_warning_and_activity_keeps_it_alive() {
    let server = server().await;
    set_prefs(&server, |p| p.idle_session_timeout_minutes = 3);
    let agent = server.agent().await;
    let api = server.api();
    let mut s = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    let id = s.grant.session_id.clone();
    s.send("echo READY\n").await;
    s.expect("READY", Duration::from_secs(15)).await;

    // Typing every 500 ms for twice the idle timeout keeps the session open, unwarned.
    let busy = Instant::now();
    let mut n = 0;
    let mut quiet = Instant::now();
    while busy.elapsed() < 2 * 3 * MINUTE {
        n += 1;
        s.send(&format!("echo tick{n}\n")).await;
        s.expect(&format!("tick{n}\r\n"), Duration::from_secs(5))
            .await;
        quiet = Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        server.session("Active", &id).await.is_some(),
        "{}",
        s.seen()
    );
    assert!(!s.seen().contains("will end"), "{}", s.seen());

    // Then nothing: the warning comes a minute before the end, in the shell's output.
    s.expect(
        "This session will end in 1 minute: idle timeout",
        Duration::from_secs(10),
    )
    .await;
    let warned = quiet.elapsed();
    assert!(
        warned >= 2 * MINUTE - Duration::from_millis(300),
        "warned too early: {warned:?}"
    );
    let (outcome, seen) = s.finish(Duration::from_secs(15)).await;
    let gone = quiet.elapsed();
    assert!(
        gone >= 3 * MINUTE - Duration::from_millis(300)
            && gone < 3 * MINUTE + Duration::from_secs(3),
        "ended after {gone:?}"
    );
    // The agent showed the warning once (the client did not print it again).
    assert_eq!(seen.matches("will end in 1 minute").count(), 1, "{seen}");
    assert!(outcome.reason.contains("idle timeout"), "{outcome:?}");
    let h = ended(&server, &id, Duration::from_secs(5)).await;
    assert_eq!(h["Status"], "Terminated", "{h}");
    assert_eq!(end_kind(&h), "IdleTimeout", "{h}");
    assert_eq!(h["EndReason"]["Detail"], "3", "{h}");
    assert!(
        h["Details"].as_str().unwrap().contains("idle timeout"),
        "{h}"
    );
    let rec = audit_end(&server, &id).await;
    let detail: Value = serde_json::from_str(rec["Detail"].as_str().unwrap()).unwrap();
    assert_eq!(detail["EndReason"]["Kind"], "IdleTimeout", "{rec}");
    server.wait_no_relays().await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_that_only_prints_is_not_idle_and_warnings_do_not_count_as_output() {
    let server = server().await;
    set_prefs(&server, |p| p.idle_session_timeout_minutes = 2);
    let agent = server.agent().await;
    let api = server.api();
    let mut s = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    let id = s.grant.session_id.clone();
    // Output to the client is activity too: a loop printing every 300 ms for 5 s.
    s.send("for i in $(seq 1 16); do echo out$i; sleep 0.3; done; echo LOOPDONE\n")
        .await;
    s.expect("LOOPDONE\r\n", Duration::from_secs(15)).await;
    assert!(
        server.session("Active", &id).await.is_some(),
        "{}",
        s.seen()
    );
    // Then the warning, and the end 1 minute after it: the warning itself is not activity.
    let (outcome, seen) = s.finish(Duration::from_secs(10)).await;
    assert!(
        seen.contains("will end in 1 minute: idle timeout"),
        "{seen}"
    );
    assert!(outcome.reason.contains("idle timeout"), "{outcome:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_duration_ends_an_active_session_after_a_warning() {
    let server = server().await;
    set_prefs(&server, |p| {
        p.idle_session_timeout_minutes = 60;
        p.max_session_duration_minutes = Some(3);
    });
    let agent = server.agent().await;
    let api = server.api();
    let started = Instant::now();
    let mut s = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    let id = s.grant.session_id.clone();
    // Busy all along: input and output every 300 ms.
    let mut n = 0;
    let mut seen = Vec::new();
    let done = loop {
        n += 1;
        let _ = s
            .input
            .send(airlock_client::Input::Data(
                format!("echo busy{n}\n").into(),
            ))
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        while let Ok(o) = s.output.try_recv() {
            match o {
                airlock_client::Output::Stdout(b) | airlock_client::Output::Stderr(b) => {
                    seen.extend_from_slice(&b)
                }
            }
        }
        if s.done.is_finished() || started.elapsed() > Duration::from_secs(20) {
            break s.done.is_finished();
        }
    };
    let seen = String::from_utf8_lossy(&seen);
    assert!(
        seen.contains("will end in 1 minute: the maximum session duration (3 minutes)"),
        "{seen}"
    );
    assert!(done, "the session outlived its maximum duration");
    let h = ended(&server, &id, Duration::from_secs(5)).await;
    assert_eq!(end_kind(&h), "MaxDuration", "{h}");
    assert_eq!(h["MaxSessionDuration"], "3", "{h}");
    assert!(
        h["Details"]
            .as_str()
            .unwrap()
            .contains("maximum session duration"),
        "{h}"
    );
    let took = started.elapsed();
    assert!(took >= 3 * MINUTE - Duration::from_millis(300), "{took:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_duration_warning_reaches_the_client() {
    let server = server().await;
    set_prefs(&server, |p| p.max_session_duration_minutes = Some(2));
    let agent = server.agent().await;
    let api = server.api();
    let mut s = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    let id = s.grant.session_id.clone();
    s.expect(
        "This session will end in 1 minute: the maximum session duration (2 minutes) is reached.",
        Duration::from_secs(10),
    )
    .await;
    let (outcome, _) = s.finish(Duration::from_secs(10)).await;
    assert!(
        outcome.reason.contains("maximum session duration"),
        "{outcome:?}"
    );
    assert_eq!(
        end_kind(&ended(&server, &id, Duration::from_secs(5)).await),
        "MaxDuration"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_ends_a_port_session_and_traffic_keeps_it_alive() {
    common::capture_logs();
    let server = server().await;
    set_prefs(&server, |p| p.idle_session_timeout_minutes = 3);
    let agent = server.agent().await;
    let api = server.api();
    let echo = forwards::echo_target().await;
    for mux_window in [0, 256 * 1024] {
        let fwd = forwards::forward(&api, &agent.instance_id, echo, None, mux_window).await;
        let mut conn = tokio::net::TcpStream::connect(fwd.addr).await.unwrap();
        // Bytes through the forward every 500 ms for twice the idle timeout.
        let busy = Instant::now();
        let mut buf = [0u8; 5];
        let mut quiet = Instant::now();
        while busy.elapsed() < 2 * 3 * MINUTE {
            conn.write_all(b"ping!").await.unwrap();
            tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut buf))
                .await
                .expect("echo in time")
                .unwrap();
            quiet = Instant::now();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(
            server.session("Active", &fwd.session_id).await.is_some(),
            "mux {mux_window}"
        );
        // An open connection with no bytes either way is idle.
        let h = ended(&server, &fwd.session_id, Duration::from_secs(10)).await;
        let gone = quiet.elapsed();
        assert!(gone >= 3 * MINUTE - Duration::from_millis(300), "{gone:?}");
        assert_eq!(end_kind(&h), "IdleTimeout", "mux {mux_window}: {h}");
        let outcome = tokio::time::timeout(Duration::from_secs(10), fwd.task)
            .await
            .expect("the forward ends with its session")
            .unwrap();
        match outcome {
            Ok(o) => assert!(o.reason.contains("idle timeout"), "{o:?}"),
            Err(e) => assert!(e.to_string().contains("idle timeout"), "{e}"),
        }
        // The warning reached the forwarding client (which has no terminal: it logs it).
        common::wait_log_line(&[
            "WARN",
            "airlock_client::port",
            "This session will end in 1 minute: idle timeout",
        ])
        .await;
    }
    // Once for each of the two forwards.
    let warned = common::logs()
        .lines()
        .filter(|l| l.contains("airlock_client::port") && l.contains("will end in 1 minute"))
        .count();
    assert_eq!(warned, 2, "{}", common::logs());
    agent.stop().await;
}

// ---- revocation --------------------------------------------------------------------------------

/// One revocation path: `victim` and `bystander` each hold a live shell on the same target
/// (with their own credentials), `change` takes access from the victim only; the victim's
/// session must end with `AccessRevoked` within 5 s and the bystander's must live on.
async fn revocation_case<F, Fut>(through_group: bool, change: F, expect_detail: &str)
where
    F: FnOnce(TestServerRef, Profile) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    revocation_case_with(through_group, None, change, expect_detail).await;
}

/// [`revocation_case`], the victim allowed by `policy` (a document) when given.
async fn revocation_case_with<F, Fut>(
    through_group: bool,
    policy: Option<Value>,
    change: F,
    expect_detail: &str,
) where
    F: FnOnce(TestServerRef, Profile) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let victim = if let Some(doc) = policy {
        let admin = server.api();
        let victim = server.user("victim", false).await;
        call(
            &admin,
            "Airlock.CreatePolicy",
            json!({ "PolicyName": "VictimShell", "PolicyDocument": doc }),
        )
        .await;
        call(
            &admin,
            "Airlock.AttachUserPolicy",
            json!({ "UserName": "victim", "PolicyName": "VictimShell" }),
        )
        .await;
        call(
            &admin,
            "Airlock.TagUser",
            json!({ "UserName": "victim", "Tags": [{ "Key": "team", "Value": "ops" }] }),
        )
        .await;
        victim
    } else if through_group {
        // Allowed only through the group `operators`.
        let admin = server.api();
        let victim = server.user("victim", false).await;
        call(
            &admin,
            "Airlock.CreateGroup",
            json!({ "GroupName": "operators" }),
        )
        .await;
        let doc = json!({ "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": ["ssm:StartSession", "ssm:ResumeSession"], "Resource": "*" }]});
        call(
            &admin,
            "Airlock.CreatePolicy",
            json!({ "PolicyName": "GroupShell", "PolicyDocument": doc }),
        )
        .await;
        call(
            &admin,
            "Airlock.AttachGroupPolicy",
            json!({ "GroupName": "operators", "PolicyName": "GroupShell" }),
        )
        .await;
        call(
            &admin,
            "Airlock.AddUserToGroup",
            json!({ "GroupName": "operators", "UserName": "victim" }),
        )
        .await;
        victim
    } else {
        session_user(&server, "victim", "VictimShell").await
    };
    let bystander = session_user(&server, "bystander", "BystanderShell").await;
    revocation_run(
        &server,
        &agent.instance_id,
        victim,
        bystander,
        change,
        expect_detail,
    )
    .await;
    agent.stop().await;
}

type TestServerRef = std::sync::Arc<TestServerHandle>;

/// What a revocation change needs: an admin client.
struct TestServerHandle {
    admin: ApiClient,
}

async fn revocation_run<F, Fut>(
    server: &TestServer,
    target: &str,
    victim: Profile,
    bystander: Profile,
    change: F,
    expect_detail: &str,
) where
    F: FnOnce(TestServerRef, Profile) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let vapi = ApiClient::new(victim.clone()).unwrap();
    let bapi = ApiClient::new(bystander).unwrap();
    let mut v = TestSession::start(&vapi, target, SessionOptions::default()).await;
    let mut b = TestSession::start(&bapi, target, SessionOptions::default()).await;
    v.send("echo VICTIM\n").await;
    v.expect("VICTIM", Duration::from_secs(15)).await;
    b.send("echo BYSTANDER\n").await;
    b.expect("BYSTANDER", Duration::from_secs(15)).await;
    let vid = v.grant.session_id.clone();
    let bid = b.grant.session_id.clone();

    let handle = std::sync::Arc::new(TestServerHandle {
        admin: server.api(),
    });
    change(handle, victim).await;
    let changed = Instant::now();
    let (outcome, _) = v.finish(Duration::from_secs(5)).await;
    let took = changed.elapsed();
    assert!(took < Duration::from_secs(5), "revoked after {took:?}");
    assert!(outcome.reason.contains("access revoked"), "{outcome:?}");
    let h = ended(server, &vid, Duration::from_secs(5)).await;
    assert_eq!(end_kind(&h), "AccessRevoked", "{h}");
    let detail = h["EndReason"]["Detail"].as_str().unwrap();
    assert!(
        detail.contains(expect_detail),
        "{detail:?} lacks {expect_detail:?}"
    );
    let rec = audit_end(server, &vid).await;
    assert!(
        rec["Statement"]
            .as_str()
            .unwrap()
            .contains("access revoked"),
        "{rec}"
    );

    // The bystander is still allowed: its session lives on, through a re-evaluation too.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        server.session("Active", &bid).await.is_some(),
        "bystander ended"
    );
    b.send("echo STILL-HERE\n").await;
    b.expect("STILL-HERE\r\n", Duration::from_secs(10)).await;
    b.send("exit 0\n").await;
    let (o, _) = b.finish(Duration::from_secs(15)).await;
    assert_eq!(o.exit_code, Some(0));
    assert_eq!(
        end_kind(&ended(server, &bid, Duration::from_secs(5)).await),
        "Exited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_user_ends_their_sessions() {
    revocation_case(
        false,
        |s, _| async move {
            call(
                &s.admin,
                "Airlock.DeleteUser",
                json!({ "UserName": "victim" }),
            )
            .await;
        },
        "user victim was deleted",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_the_key_ends_the_sessions_it_started() {
    revocation_case(
        false,
        |s, p| async move {
            call(
                &s.admin,
                "Airlock.UpdateAccessKey",
                json!({ "AccessKeyId": p.access_key_id, "Status": "Inactive" }),
            )
            .await;
        },
        "was disabled",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_key_ends_the_sessions_it_started() {
    revocation_case(
        false,
        |s, p| async move {
            call(
                &s.admin,
                "Airlock.DeleteAccessKey",
                json!({ "AccessKeyId": p.access_key_id }),
            )
            .await;
        },
        "was deleted",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detaching_the_policy_ends_the_session() {
    revocation_case(
        false,
        |s, _| async move {
            call(
                &s.admin,
                "Airlock.DetachUserPolicy",
                json!({ "UserName": "victim", "PolicyName": "VictimShell" }),
            )
            .await;
        },
        "IAM change: DetachUserPolicy",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_policy_ends_the_session() {
    revocation_case(
        false,
        |s, _| async move {
            // Now only another target: this one is no longer allowed.
            let doc = json!({ "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow",
                "Action": ["ssm:StartSession", "ssm:ResumeSession", "ssm:TerminateSession"],
                "Resource": ["arn:aws:ssm:*:*:managed-instance/mi-00000000000000000", "arn:aws:ssm:*:*:session/*"],
            }]});
            call(
                &s.admin,
                "Airlock.UpdatePolicy",
                json!({ "PolicyName": "VictimShell", "PolicyDocument": doc }),
            )
            .await;
        },
        "IAM change: UpdatePolicy",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_user_from_the_group_ends_the_session() {
    revocation_case(
        true,
        |s, _| async move {
            call(
                &s.admin,
                "Airlock.RemoveUserFromGroup",
                json!({ "GroupName": "operators", "UserName": "victim" }),
            )
            .await;
        },
        "IAM change: RemoveUserFromGroup",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permissions_boundary_that_excludes_sessions_ends_the_session() {
    revocation_case(
        false,
        |s, _| async move {
            let doc = json!({ "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "ssm:DescribeSessions", "Resource": "*" }]});
            call(
                &s.admin,
                "Airlock.CreatePolicy",
                json!({ "PolicyName": "ReadOnlyBoundary", "PolicyDocument": doc }),
            )
            .await;
            // (Let the re-evaluation that creating a policy asks for pass first.)
            tokio::time::sleep(Duration::from_millis(300)).await;
            call(
                &s.admin,
                "Airlock.PutUserPermissionsBoundary",
                json!({ "UserName": "victim", "PolicyName": "ReadOnlyBoundary" }),
            )
            .await;
        },
        "IAM change: PutUserPermissionsBoundary",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_principal_tag_a_policy_needs_ends_the_session() {
    let doc = json!({ "Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": ["ssm:StartSession", "ssm:ResumeSession"], "Resource": "*",
        "Condition": { "StringEquals": { "aws:PrincipalTag/team": "ops" } } }]});
    revocation_case_with(
        false,
        Some(doc),
        |s, _| async move {
            call(
                &s.admin,
                "Airlock.UntagUser",
                json!({ "UserName": "victim", "TagKeys": ["team"] }),
            )
            .await;
        },
        "IAM change: UntagUser",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_that_expires_ends_the_session() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let admin = server.api();
    let victim = server.user("victim", false).await;
    let bystander = session_user(&server, "bystander", "BystanderShell").await;
    let until = airlock_proto::unix_millis() as f64 / 1000.0 + 6.0;
    call(
        &admin,
        "Airlock.CreateGrant",
        json!({
            "UserName": "victim", "ExpiresAt": until, "Reason": "incident 7",
            "PolicyDocument": { "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": ["ssm:StartSession", "ssm:ResumeSession"], "Resource": "*" }] },
        }),
    )
    .await;
    let expires = Instant::now() + Duration::from_secs(6);
    revocation_run(
        &server,
        &agent.instance_id,
        victim,
        bystander,
        |_, _| async move {
            // The grant's expiry is the change.
            tokio::time::sleep_until(expires.into()).await;
        },
        "a grant expired",
    )
    .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_credentials_that_expire_end_the_session() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let long_term = session_user(&server, "victim", "VictimShell").await;
    let bystander = session_user(&server, "bystander", "BystanderShell").await;
    let out = call(
        &ApiClient::new(long_term.clone()).unwrap(),
        "Airlock.GetSessionToken",
        json!({ "DurationSeconds": 900 }),
    )
    .await;
    let c = &out["Credentials"];
    let temp = Profile {
        access_key_id: c["AccessKeyId"].as_str().unwrap().into(),
        secret_access_key: c["SecretAccessKey"].as_str().unwrap().into(),
        session_token: Some(c["SessionToken"].as_str().unwrap().into()),
        ..long_term.clone()
    };
    // GetSessionToken's shortest life is 15 minutes: shorten this one to 6 s in the database.
    let db = server.dir.0.join("server/airlock.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let expiry = airlock_proto::unix_millis() as i64 + 6000;
    sqlx::query("UPDATE session_credentials SET expires_at = ? WHERE access_key_id = ?")
        .bind(expiry)
        .bind(&temp.access_key_id)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let expires = Instant::now() + Duration::from_secs(6);
    revocation_run(
        &server,
        &agent.instance_id,
        temp,
        bystander,
        |_, _| async move {
            tokio::time::sleep_until(expires.into()).await;
        },
        "expired",
    )
    .await;
    agent.stop().await;
}

/// The group case needs the victim in a group whose policy allows sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_setup_is_what_allows_the_victim() {
    // Covered by removing_the_user_from_the_group_ends_the_session's setup; this checks that
    // without the group the victim cannot start at all (so the group is what is revoked).
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let victim = server.user("victim", false).await;
    let err = ApiClient::new(victim)
        .unwrap()
        .start_session(&json!({ "Target": agent.instance_id }))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    agent.stop().await;
}

// ---- concurrency limits -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_limit_refuses_then_admits() {
    let server = server().await;
    set_prefs(&server, |p| p.max_sessions_per_user = Some(2));
    let agent = server.agent().await;
    let api = server.api();
    let target = json!({ "Target": agent.instance_id });
    let first = api.start_session(&target).await.unwrap();
    let _second = api.start_session(&target).await.unwrap();
    let err = api.start_session(&target).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("ResourceLimitExceededException")
            && text.contains("max_sessions_per_user is 2")
            && text.contains("admin has 2 open sessions"),
        "{text}"
    );
    // Another user is not counted against this one.
    let other = session_user(&server, "other", "OtherShell").await;
    let theirs = ApiClient::new(other)
        .unwrap()
        .start_session(&target)
        .await
        .unwrap();
    // One ends: the next start is admitted.
    api.terminate_session(&first.session_id).await.unwrap();
    let third = api.start_session(&target).await.unwrap();
    assert_ne!(third.session_id, first.session_id);
    let h = ended(&server, &first.session_id, Duration::from_secs(5)).await;
    assert_eq!(end_kind(&h), "TerminatedBy", "{h}");
    assert!(
        h["EndReason"]["Detail"]
            .as_str()
            .unwrap()
            .ends_with(":user/admin"),
        "{h}"
    );
    let _ = theirs;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_target_limit_refuses_then_admits_and_racing_starts_share_it() {
    let server = server().await;
    set_prefs(&server, |p| p.max_sessions_per_target = Some(3));
    let agent = server.agent().await;
    let api = server.api();
    let target = json!({ "Target": agent.instance_id });
    // Eight starts at once: exactly three pass.
    let starts: Vec<_> = (0..8)
        .map(|_| {
            let api = api.clone();
            let target = target.clone();
            tokio::spawn(async move { api.start_session(&target).await })
        })
        .collect();
    let mut ok = Vec::new();
    let mut refused = 0;
    for s in starts {
        match s.await.unwrap() {
            Ok(g) => ok.push(g),
            Err(e) => {
                let t = e.to_string();
                assert!(
                    t.contains("max_sessions_per_target is 3")
                        && t.contains(&format!("{} has 3 open sessions", agent.instance_id)),
                    "{t}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!((ok.len(), refused), (3, 5));
    api.terminate_session(&ok[0].session_id).await.unwrap();
    api.start_session(&target)
        .await
        .expect("admitted once one ended");
    assert!(api.start_session(&target).await.is_err());
    agent.stop().await;
}

// ---- end reasons -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exited_shell_has_its_status_as_reason() {
    let server = server().await;
    let agent = server.agent().await;
    let api = server.api();
    let s = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    let id = s.grant.session_id.clone();
    s.send("exit 7\n").await;
    let (outcome, _) = s.finish(Duration::from_secs(15)).await;
    assert_eq!(outcome.exit_code, Some(7));
    assert_eq!(outcome.reason, "");
    let h = ended(&server, &id, Duration::from_secs(5)).await;
    assert_eq!(
        (end_kind(&h), h["EndReason"]["Detail"].as_str()),
        ("Exited", Some("7"))
    );
    agent.stop().await;
}

/// The CLI, as a person runs it: the warning on stderr, the reason when the session ends, and
/// `airlock sessions list` showing the typed reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_the_warning_and_the_reason() {
    let server = server().await;
    set_prefs(&server, |p| p.idle_session_timeout_minutes = 2);
    let agent = server.agent().await;
    let bin = airlock_testkit::airlock_binary();
    let home = airlock_testkit::TempDir::new();
    let cli = |args: &[&str]| {
        let mut c = tokio::process::Command::new(&bin);
        c.env("HOME", &home.0)
            .env("AIRLOCK_LOG", "warn")
            .env("AIRLOCK_ENDPOINT", &server.url)
            .env("AIRLOCK_ACCESS_KEY_ID", &server.admin.access_key_id)
            .env("AIRLOCK_SECRET_ACCESS_KEY", &server.admin.secret_access_key)
            .env_remove("AIRLOCK_PROFILE")
            .env_remove("AIRLOCK_CONFIG")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        c
    };
    // Piped stdin kept open and silent: the session idles.
    let mut child = cli(&["start-session", "--target", &agent.instance_id])
        .spawn()
        .unwrap();
    let stdin = child.stdin.take();
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the CLI exits when the session ends")
        .unwrap();
    drop(stdin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("airlock: This session will end in 1 minute: idle timeout"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Session ended: idle timeout (no input or output for 2 minutes)."),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let list = cli(&["sessions", "list", "--state", "History"])
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&list.stdout);
    assert!(
        table.contains("REASON") && table.contains("IdleTimeout 2 min"),
        "{table}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_and_never_resumes_is_gone() {
    let server = server().await;
    set_prefs(&server, |p| p.idle_session_timeout_minutes = 2);
    let agent = server.agent().await;
    let api = server.api();
    let grant = api
        .start_session(&json!({ "Target": agent.instance_id }))
        .await
        .unwrap();
    let id = grant.session_id.clone();
    let (in_tx, in_rx) = tokio::sync::mpsc::channel(8);
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel(64);
    // No API client: the session's client cannot resume once its connection drops.
    let client = tokio::spawn(airlock_client::session::run(
        grant,
        SessionOptions::default(),
        in_rx,
        out_tx,
    ));
    let _ = tokio::time::timeout(Duration::from_secs(15), out_rx.recv()).await;
    eventually("Connected", Duration::from_secs(10), || async {
        server
            .session("Active", &id)
            .await
            .filter(|s| s["Status"] == "Connected")
    })
    .await;
    client.abort();
    drop(in_tx);
    eventually("Disconnected", Duration::from_secs(10), || async {
        server
            .session("Active", &id)
            .await
            .filter(|s| s["Status"] == "Disconnected")
    })
    .await;
    let h = ended(&server, &id, Duration::from_secs(10)).await;
    assert_eq!(end_kind(&h), "ClientGone", "{h}");
    assert_eq!(h["Status"], "Terminated", "{h}");
    server.wait_no_relays().await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_goes_away_and_a_refused_run_as_have_their_reasons() {
    let server = server().await;
    let agent = server.agent().await;
    let api = server.api();
    let mut s = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    let id = s.grant.session_id.clone();
    s.send("echo UP\n").await;
    s.expect("UP", Duration::from_secs(15)).await;
    agent.stop().await;
    let h = ended(&server, &id, Duration::from_secs(10)).await;
    assert_eq!(
        (end_kind(&h), &h["Status"]),
        ("AgentGone", &json!("Failed")),
        "{h}"
    );

    // A run-as user that does not exist on the host.
    let agent = server.agent().await;
    let profile = session_user(&server, "runner", "RunnerShell").await;
    call(
        &api,
        "Airlock.TagUser",
        json!({ "UserName": "runner", "Tags": [{ "Key": "SSMSessionRunAs", "Value": "airlock-no-such-user" }] }),
    )
    .await;
    let runner = ApiClient::new(profile).unwrap();
    let grant = runner
        .start_session(&json!({ "Target": agent.instance_id }))
        .await
        .unwrap();
    let h = ended(&server, &grant.session_id, Duration::from_secs(15)).await;
    assert_eq!(end_kind(&h), "RunAsFailed", "{h}");
    assert!(
        h["EndReason"]["Detail"]
            .as_str()
            .unwrap()
            .contains("airlock-no-such-user"),
        "{h}"
    );
    agent.stop().await;
}

// ---- the AWS CLI, with `airlock` as its session-manager-plugin ------------------------------

/// `aws ssm start-session --target <target>` as `profile`, with airlock as the plugin.
fn aws_start_session(
    aws: &std::path::Path,
    bin: &std::path::Path,
    dir: &airlock_testkit::TempDir,
    server: &TestServer,
    target: &str,
) -> tokio::process::Command {
    let path = airlock_testkit::aws::plugin_path(&dir.0, bin);
    let mut cmd = tokio::process::Command::new(aws);
    cmd.args(["ssm", "start-session", "--endpoint-url", &server.url])
        .args(["--region", "us-east-1", "--target", target]);
    airlock_testkit::aws::clean_aws_env(&mut cmd, &dir.0)
        .env("PATH", path)
        .env("AWS_ACCESS_KEY_ID", &server.admin.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &server.admin.secret_access_key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_cli_shows_the_warning_the_reason_and_the_limit_error() {
    let Some(aws) = airlock_testkit::aws::aws_cli().await else {
        return;
    };
    let bin = tokio::task::spawn_blocking(airlock_testkit::airlock_binary)
        .await
        .unwrap();
    let server = server().await;
    set_prefs(&server, |p| {
        p.idle_session_timeout_minutes = 2;
        p.max_sessions_per_user = Some(1);
    });
    let agent = server.agent().await;
    let dir = airlock_testkit::TempDir::new();
    // Silent, with stdin open: the session idles out.
    let mut child = aws_start_session(&aws, &bin, &dir, &server, &agent.instance_id)
        .spawn()
        .unwrap();
    let stdin = child.stdin.take();
    let id = eventually("the session", Duration::from_secs(15), || async {
        server
            .sessions("Active")
            .await
            .first()
            .map(|s| s["SessionId"].as_str().unwrap().to_owned())
    })
    .await;
    // The limit of one session per user refuses a second start, in AWS's error shape.
    // (With a reason: two identical StartSession calls signed in the same second have one
    // signature, which the server accepts once.)
    let second = aws_start_session(&aws, &bin, &dir, &server, &agent.instance_id)
        .args(["--reason", "a second one"])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{err}");
    assert!(
        err.contains("(ResourceLimitExceededException)")
            && err.contains("max_sessions_per_user is 1 and admin has 1 open sessions"),
        "{err}"
    );
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the AWS CLI returns when the session ends")
        .unwrap();
    drop(stdin);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("This session will end in 1 minute: idle timeout"),
        "{stderr}"
    );
    assert!(
        stdout.contains(&format!(
            "SessionId: {id} : Session ended: idle timeout (no input or output for 2 minutes)."
        )),
        "{stdout}"
    );
    agent.stop().await;
}

/// A client that behaves as the AWS plugin (no Airlock capabilities, digests, 1 KiB payloads)
/// sees the warning as shell output; a notice forged by a client is dropped by the gateway
/// (only the gateway speaks `airlock_notice`) and is not activity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_like_client_sees_the_warning_and_cannot_forge_notices() {
    let server = server().await;
    set_prefs(&server, |p| p.idle_session_timeout_minutes = 3);
    let agent = server.agent().await;
    let grant = server
        .api()
        .start_session(&json!({ "Target": agent.instance_id }))
        .await
        .unwrap();
    let mut c = common::RawClient::connect(&grant, None).await;
    c.pump_until(Duration::from_secs(15), |c| c.ready).await;
    c.type_text("echo HELLO-$((6*7))\n");
    c.expect("HELLO-42").await;
    let typed = Instant::now();
    let forged = airlock_proto::Frame::new(
        airlock_proto::MessageType::Other(airlock_proto::NOTICE_MESSAGE_TYPE.into()),
        0,
        0,
        airlock_proto::PayloadType::NONE,
        bytes::Bytes::from(json!({ "Kind": "x", "Text": "FORGED-NOTICE" }).to_string()),
    );
    // Forged notices every 300 ms until the session ends: were they relayed they would be
    // written into the shell, and were they activity the session would never idle out.
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.closed.is_none() {
        assert!(Instant::now() < deadline, "never idled out: {}", c.text());
        c.send_raw(tokio_tungstenite::tungstenite::Message::Binary(
            forged.encode(true),
        ))
        .await;
        let _ = tokio::time::timeout(
            Duration::from_millis(300),
            c.pump_until(Duration::from_secs(60), |c| c.closed.is_some()),
        )
        .await;
    }
    let after = typed.elapsed();
    assert!(
        after >= 3 * MINUTE - Duration::from_millis(300),
        "{after:?}"
    );
    let text = c.text();
    assert!(
        text.contains("This session will end in 1 minute: idle timeout"),
        "{text}"
    );
    assert!(!text.contains("FORGED-NOTICE"), "{text}");
    assert!(
        c.closed.as_deref().unwrap().contains("idle timeout"),
        "{:?}",
        c.closed
    );
    agent.stop().await;
}

/// The real server process with its hidden test knob: the default idle timeout (20 minutes)
/// of 100 ms "minutes" ends a silent shell of a real agent process after about 2 s, warned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_process_applies_the_default_idle_timeout_in_test_minutes() {
    let d = airlock_testkit::deployment::Deployment::start(&["--test-minute-ms", "100"]).await;
    let api = d.api();
    let started = Instant::now();
    let s = TestSession::start(&api, &d.instance_id, SessionOptions::default()).await;
    let (outcome, seen) = s.finish(Duration::from_secs(20)).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1900), "{took:?}");
    assert!(
        seen.contains(
            "This session will end in 1 minute: idle timeout (no input or output for 20 minutes)."
        ),
        "{seen}"
    );
    assert!(
        outcome
            .reason
            .contains("Session ended: idle timeout (no input or output for 20 minutes)."),
        "{outcome:?}"
    );
}

/// The document is decided again too: a port forward started with a named document ends when
/// the owner's policy stops allowing that document (the target is still allowed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_stops_allowing_the_document_ends_the_port_session() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let admin = server.api();
    let victim = server.user("victim", false).await;
    let allow = |doc: &str| {
        json!({ "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": ["ssm:StartSession", "ssm:ResumeSession", "ssm:TerminateSession"],
            "Resource": [
                "arn:aws:ssm:*:*:managed-instance/*",
                format!("arn:aws:ssm:*::document/{doc}"),
                "arn:aws:ssm:*:*:session/*",
            ] }]})
    };
    call(
        &admin,
        "Airlock.CreatePolicy",
        json!({ "PolicyName": "Forwarding", "PolicyDocument": allow("AWS-StartPortForwardingSession") }),
    )
    .await;
    call(
        &admin,
        "Airlock.AttachUserPolicy",
        json!({ "UserName": "victim", "PolicyName": "Forwarding" }),
    )
    .await;
    let api = ApiClient::new(victim).unwrap();
    let echo = forwards::echo_target().await;
    let fwd = forwards::forward(&api, &agent.instance_id, echo, None, 0).await;
    let mut conn = tokio::net::TcpStream::connect(fwd.addr).await.unwrap();
    conn.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut buf))
        .await
        .expect("echo")
        .unwrap();
    // Now only the SSH document: this session's document is no longer allowed.
    call(
        &admin,
        "Airlock.UpdatePolicy",
        json!({ "PolicyName": "Forwarding", "PolicyDocument": allow("AWS-StartSSHSession") }),
    )
    .await;
    let h = ended(&server, &fwd.session_id, Duration::from_secs(5)).await;
    assert_eq!(end_kind(&h), "AccessRevoked", "{h}");
    let detail = h["EndReason"]["Detail"].as_str().unwrap();
    assert!(
        detail.contains("document/AWS-StartPortForwardingSession"),
        "{detail}"
    );
    agent.stop().await;
}
