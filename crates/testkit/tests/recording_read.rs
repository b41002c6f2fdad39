//! The reading side of recordings (issue 11), end to end against a real server: search
//! (`Airlock.SearchSessions` and `airlock sessions search`) shows a session only to whom may
//! read its recording; FTS syntax in the search text is literal.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::{json, Value};

use airlock_client::{ApiClient, Profile};
use airlock_server::store::{Session, SessionAccess};
use airlock_testkit::TestServer;

// ---------------------------------------------------------------------------------------------
// Helpers

/// The user id of `name`.
async fn user_id(server: &TestServer, name: &str) -> String {
    let users = server
        .api()
        .call("Airlock.ListUsers", &json!({}))
        .await
        .unwrap();
    users["Users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["UserName"] == name)
        .map(|u| u["UserId"].as_str().unwrap().to_owned())
        .unwrap()
}

/// A session row of `owner` on `target` (as StartSession would have stored it), with
/// `text` indexed as its recorded output.
async fn recorded_session(server: &TestServer, id: &str, owner: &str, target: &str, text: &str) {
    let store = &server.state().store;
    let owner_arn = format!(
        "arn:aws:iam::{}:user/{owner}",
        server.state().config.account_id
    );
    store
        .create_session(&Session {
            session_id: id.to_owned(),
            target: target.to_owned(),
            document_name: "SSM-SessionManagerRunShell".into(),
            owner: owner_arn,
            reason: String::new(),
            status: "Terminated".into(),
            parameters: "{}".into(),
            start_date: airlock_server::store::now_ms(),
            end_date: None,
            exit_code: None,
            end_reason: String::new(),
            owner_user_id: user_id(server, owner).await,
            run_as: String::new(),
            end_kind: String::new(),
            end_detail: String::new(),
            session_type: "Standard_Stream".into(),
            max_session_duration: None,
            access: SessionAccess::default(),
        })
        .await
        .unwrap();
    store
        .index_recording_text(id, &[("o", 1.25, text)])
        .await
        .unwrap();
}

async fn put_policy(server: &TestServer, user: &str, statements: Value) {
    let policy = json!({"Version": "2012-10-17", "Statement": statements});
    server
        .api()
        .call(
            "Airlock.PutUserPolicy",
            &json!({"UserName": user, "PolicyName": "p", "PolicyDocument": policy.to_string()}),
        )
        .await
        .expect("PutUserPolicy");
}

/// The session ids SearchSessions returns to `profile` for `text`.
async fn search_ids(profile: &Profile, text: &str) -> Vec<String> {
    let api = ApiClient::new(profile.clone()).unwrap();
    let out = api
        .call("Airlock.SearchSessions", &json!({ "Text": text }))
        .await
        .unwrap();
    let mut ids: Vec<String> = out["Results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["SessionId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

// ---------------------------------------------------------------------------------------------
// Search

/// Owners find their own sessions and no one else's; a reader allowed
/// `airlock:GetSessionRecording` on `session/*` finds all but those an explicit Deny takes
/// away; an owner denied their own recordings finds nothing; a user with no policy at all
/// still finds their own. The results carry where and what matched, and the call is
/// audited with the text and the sessions shown.
#[tokio::test]
async fn search_shows_only_sessions_the_caller_may_read() {
    let server = TestServer::start().await;
    let alice = server.user("alice", false).await;
    let bob = server.user("bob", false).await;
    let reader = server.user("reader", false).await;
    let carol = server.user("carol", false).await;
    recorded_session(
        &server,
        "alice-1",
        "alice",
        "mi-0000000000000000a",
        "secret launch codes\n",
    )
    .await;
    recorded_session(
        &server,
        "bob-1",
        "bob",
        "mi-0000000000000000b",
        "the launch is at noon\n",
    )
    .await;
    recorded_session(
        &server,
        "carol-1",
        "carol",
        "mi-0000000000000000c",
        "launch\n",
    )
    .await;
    put_policy(
        &server,
        "reader",
        json!([
            {"Effect": "Allow", "Action": "airlock:GetSessionRecording", "Resource": "arn:aws:ssm:*:*:session/*"},
            {"Effect": "Deny", "Action": "airlock:GetSessionRecording", "Resource": "arn:aws:ssm:*:*:session/bob-*"},
        ]),
    )
    .await;
    put_policy(
        &server,
        "carol",
        json!([{"Effect": "Deny", "Action": "airlock:GetSessionRecording", "Resource": "*"}]),
    )
    .await;

    assert_eq!(search_ids(&alice, "launch").await, ["alice-1"]);
    assert_eq!(search_ids(&bob, "launch").await, ["bob-1"]);
    assert_eq!(search_ids(&reader, "launch").await, ["alice-1", "carol-1"]);
    assert!(search_ids(&carol, "launch").await.is_empty());
    assert_eq!(
        search_ids(&server.admin, "LAUNCH").await,
        ["alice-1", "bob-1", "carol-1"]
    );
    // Another user's words are not found, even by phrase or by FTS tricks.
    assert!(search_ids(&bob, "secret launch codes").await.is_empty());
    assert!(search_ids(&bob, "noon\" OR \"secret").await.is_empty());
    assert!(search_ids(&bob, "secret OR noon").await.is_empty());

    // The shape: where and what matched.
    let api = ApiClient::new(alice.clone()).unwrap();
    let out = api
        .call(
            "Airlock.SearchSessions",
            &json!({ "Text": "launch codes", "Target": "mi-0000000000000000a", "MaxResults": 5 }),
        )
        .await
        .unwrap();
    let r = &out["Results"][0];
    assert_eq!(r["SessionId"], "alice-1");
    assert_eq!(r["Target"], "mi-0000000000000000a");
    assert!(r["Owner"].as_str().unwrap().ends_with(":user/alice"));
    assert!(r["StartDate"].as_f64().unwrap() > 1.7e9);
    assert_eq!(r["Matches"][0]["T"], 1.25);
    assert_eq!(r["Matches"][0]["Kind"], "o");
    assert!(r["Matches"][0]["Snippet"]
        .as_str()
        .unwrap()
        .contains("secret launch codes"));
    // Narrowed away by target and by time.
    let none = api
        .call(
            "Airlock.SearchSessions",
            &json!({ "Text": "launch", "Target": "mi-0000000000000000b" }),
        )
        .await
        .unwrap();
    assert_eq!(none["Results"], json!([]));
    let later = api
        .call(
            "Airlock.SearchSessions",
            &json!({ "Text": "launch", "Since": 4.0e9 }),
        )
        .await
        .unwrap();
    assert_eq!(later["Results"], json!([]));

    // Audited: who searched what, and which sessions were shown.
    let audit = server
        .api()
        .call("Airlock.ListAuditEvents", &json!({"MaxResults": 1000}))
        .await
        .unwrap();
    let searches: Vec<&Value> = audit["Events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["Action"] == "airlock:SearchSessions")
        .collect();
    assert!(searches.len() >= 8, "{searches:?}");
    let bobs = searches
        .iter()
        .find(|e| {
            e["Principal"].as_str().unwrap().ends_with(":user/bob")
                && e["Detail"].as_str().unwrap().contains("\"launch\"")
        })
        .unwrap();
    assert!(bobs["Resource"]
        .as_str()
        .unwrap()
        .ends_with(":session/bob-1"));
    assert_eq!(bobs["Decision"], "Allow");
}

/// Bad input is refused with a clear error and nothing else happens.
#[tokio::test]
async fn search_refuses_bad_input() {
    let server = TestServer::start().await;
    let api = server.api();
    for (input, needle) in [
        (json!({}), "length between 1 and 256"),
        (json!({"Text": ""}), "length between 1 and 256"),
        (json!({"Text": "   "}), "length between 1 and 256"),
        (json!({"Text": "x".repeat(257)}), "length between 1 and 256"),
        (json!({"Text": "***"}), "letter or digit"),
        (json!({"Text": "\"\""}), "letter or digit"),
        (json!({"Text": "a", "MaxResults": 0}), "between 1 and 100"),
        (json!({"Text": "a", "MaxResults": 101}), "between 1 and 100"),
        (json!({"Text": "a", "Since": -1}), "after 1970"),
        (
            json!({"Text": "a", "Target": ""}),
            "length between 1 and 400",
        ),
    ] {
        let err = api
            .call("Airlock.SearchSessions", &input)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{input}: {err}");
    }
    for input in [
        json!({"Text": 5}),
        json!({"Text": "a", "Since": "yesterday"}),
        json!({"Text": "a", "Bogus": 1}),
    ] {
        let err = api
            .call("Airlock.SearchSessions", &input)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("Serialization"), "{input}: {err}");
    }
}
