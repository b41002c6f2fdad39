//! Session recording end to end (issue 11): a real server, agent and client; the recording
//! read back through `Airlock.GetSessionRecording`, verified and exported with
//! `airlock-recording`, and compared with what the client saw.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use airlock_client::session::{Input, SessionOptions};
use airlock_client::ApiClient;
use airlock_recording::{Event, EventKind};
use airlock_testkit::{eventually, TestServer, TestSession};
use base64::Engine;
use serde_json::{json, Value};

// Generous: these tests share two cores with whole-workspace builds and other suites.
const T: Duration = Duration::from_secs(40);

/// Every page of a session's recording: (chunks with their stored index, manifest, answer).
async fn fetch(api: &ApiClient, id: &str) -> (Vec<(u64, Vec<u8>)>, Option<Vec<u8>>, Value) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut chunks = Vec::new();
    let mut from = 0u64;
    loop {
        let out = api
            .call(
                "Airlock.GetSessionRecording",
                &json!({ "SessionId": id, "FromChunk": from, "MaxChunks": 3 }),
            )
            .await
            .expect("GetSessionRecording");
        for c in out["Chunks"].as_array().unwrap() {
            chunks.push((
                c["Index"].as_u64().unwrap(),
                b64.decode(c["Data"].as_str().unwrap()).unwrap(),
            ));
        }
        let manifest = out["Manifest"].as_str().map(|m| b64.decode(m).unwrap());
        match out["NextChunk"].as_u64() {
            Some(n) if n > from && !out["Chunks"].as_array().unwrap().is_empty() => from = n,
            _ => return (chunks, manifest, out),
        }
    }
}

/// Waits until the session's recording is sealed, then returns it verified.
async fn sealed(api: &ApiClient, id: &str) -> (Vec<(u64, Vec<u8>)>, Vec<u8>, Value) {
    let (chunks, manifest, out) = eventually("the recording sealed", T, || async {
        let (c, m, out) = fetch(api, id).await;
        (out["Sealed"] == true).then_some((c, m, out))
    })
    .await;
    let manifest = manifest.expect("a sealed recording has its manifest on the last page");
    let key: [u8; 32] = hex_key(out["PublicKey"].as_str().unwrap());
    let report = airlock_recording::verify(&chunks, Some(&manifest), &key);
    assert!(report.ok(), "{report}");
    (chunks, manifest, out)
}

fn hex_key(s: &str) -> [u8; 32] {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    k
}

fn events(chunks: &[(u64, Vec<u8>)]) -> (airlock_recording::Header, Vec<Event>) {
    let bodies: Vec<Vec<u8>> = chunks.iter().map(|(_, b)| b.clone()).collect();
    let cast = airlock_recording::export(&bodies).unwrap();
    airlock_recording::parse_cast(&cast).unwrap()
}

fn output(evs: &[Event]) -> String {
    evs.iter()
        .filter(|e| e.kind == EventKind::Output)
        .map(|e| e.data.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_session_is_recorded_byte_identical_to_what_the_client_saw() {
    common::capture_logs();
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let api = server.api();
    let mut s = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    s.input
        .send(Input::Size {
            cols: 100,
            rows: 30,
        })
        .await
        .unwrap();
    s.send("printf 'h\\303\\251llo w\\303\\266rld %s\\n' $((6*7))\n")
        .await;
    s.expect("héllo wörld 42", T).await;
    // Output spread over more than one chunk (a flush every second).
    tokio::time::sleep(Duration::from_millis(1300)).await;
    s.input
        .send(Input::Size {
            cols: 120,
            rows: 40,
        })
        .await
        .unwrap();
    s.send("seq 1 2000 | tail -n 3; echo done-$((1+1))\n").await;
    s.expect("done-2", T).await;
    s.send("exit\n").await;
    let id = s.grant.session_id.clone();
    let (_, seen) = s.finish(T).await;

    let (chunks, _, out) = sealed(&api, &id).await;
    assert!(chunks.len() >= 2, "{} chunks", chunks.len());
    assert_eq!(out["Recorded"], true);
    assert_eq!(out["Live"], false);
    assert_eq!(out["Recovered"], false);
    assert!(out["NextChunk"].is_null());
    let (header, evs) = events(&chunks);
    assert_eq!((header.width, header.height), (100, 30));
    assert_eq!(header.raw["airlock"]["session"], id.as_str());
    assert_eq!(header.raw["airlock"]["target"], agent.instance_id.as_str());
    assert_eq!(header.raw["airlock"]["owner"], "admin");
    assert_eq!(
        output(&evs),
        seen,
        "the recording's output is exactly what the client saw"
    );
    assert!(evs
        .iter()
        .any(|e| e.kind == EventKind::Resize && e.data == "120x40"));
    assert!(
        !evs.iter().any(|e| e.kind == EventKind::Input),
        "input is not recorded by default"
    );
    let times: Vec<f64> = evs.iter().map(|e| e.t).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "event times never go back"
    );

    // The objects are where the data directory keeps them.
    let dir = server.dir.0.join("server/recordings").join(&id);
    assert!(dir.join("manifest.json").is_file());
    assert!(dir.join("0000000000.chunk").is_file());
    let row = server.state().store.recording(&id).await.unwrap().unwrap();
    assert!(row.sealed && !row.recovered);
    assert_eq!(row.chunks as usize, chunks.len());

    // Someone with write access to the store flips one byte: the read-back names the chunk.
    let victim = dir.join("0000000001.chunk");
    let mut bytes = std::fs::read(&victim).unwrap();
    let at = bytes.len() - 2;
    bytes[at] ^= 0x20;
    std::fs::write(&victim, bytes).unwrap();
    let (chunks, manifest, out) = fetch(&api, &id).await;
    let report = airlock_recording::verify(
        &chunks,
        manifest.as_deref(),
        &hex_key(out["PublicKey"].as_str().unwrap()),
    );
    assert_eq!(
        report.problems.first(),
        Some(&airlock_recording::Problem::Altered { index: 1 }),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_is_recorded_only_when_the_preferences_say_so() {
    common::capture_logs();
    let server = TestServer::start().await;
    let mut p = (*server.state().preferences.get()).clone();
    p.record_input = true;
    server.state().preferences.set(p);
    let agent = server.agent().await;
    let api = server.api();
    let mut s = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    s.send("echo typed-$((2+3))\n").await;
    s.expect("typed-5", T).await;
    s.send("exit\n").await;
    let id = s.grant.session_id.clone();
    s.finish(T).await;
    let (chunks, _, _) = sealed(&api, &id).await;
    let (_, evs) = events(&chunks);
    let typed: String = evs
        .iter()
        .filter(|e| e.kind == EventKind::Input)
        .map(|e| e.data.as_str())
        .collect();
    assert!(typed.contains("echo typed-$((2+3))"), "{typed:?}");
    let log = airlock_recording::transcript(&evs, true);
    assert!(log.contains("> echo typed-$((2+3))"), "{log}");
    assert!(log.contains("typed-5"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_session_is_not_recorded() {
    common::capture_logs();
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let api = server.api();
    let out = api
        .call(
            "AmazonSSM.StartSession",
            &json!({
                "Target": agent.instance_id,
                "DocumentName": "AWS-StartPortForwardingSession",
                "Parameters": {"portNumber": ["22"], "localPortNumber": ["0"]},
            }),
        )
        .await
        .expect("StartSession");
    let id = out["SessionId"].as_str().unwrap().to_owned();
    assert!(server.state().recordings.handle(&id).is_none());
    let r = api
        .call("Airlock.GetSessionRecording", &json!({ "SessionId": id }))
        .await
        .unwrap();
    assert_eq!(r["Recorded"], false);
    assert!(r["Chunks"].as_array().unwrap().is_empty());
    assert!(server.state().store.recording(&id).await.unwrap().is_none());
    assert!(!server.dir.0.join("server/recordings").join(&id).exists());
}

async fn put_policy(server: &TestServer, user: &str, name: &str, statements: Value) {
    server
        .api()
        .call(
            "Airlock.PutUserPolicy",
            &json!({"UserName": user, "PolicyName": name,
                    "PolicyDocument": json!({"Version": "2012-10-17", "Statement": statements}).to_string()}),
        )
        .await
        .expect("PutUserPolicy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_recording_is_authorised_per_session_and_audited() {
    common::capture_logs();
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let alice = ApiClient::new(server.user("alice", false).await).unwrap();
    let bob = ApiClient::new(server.user("bob", false).await).unwrap();
    let carol = ApiClient::new(server.user("carol", false).await).unwrap();
    put_policy(
        &server,
        "alice",
        "shell",
        json!([{"Effect": "Allow", "Action": "ssm:StartSession", "Resource": "*"}]),
    )
    .await;
    put_policy(
        &server,
        "carol",
        "auditor",
        json!([{"Effect": "Allow", "Action": "airlock:GetSessionRecording",
        "Resource": "arn:aws:ssm:*:*:session/*"}]),
    )
    .await;

    let mut s = TestSession::start(&alice, &agent.instance_id, SessionOptions::default()).await;
    s.send("echo mine-$((3+4))\n").await;
    s.expect("mine-7", T).await;
    s.send("exit\n").await;
    let id = s.grant.session_id.clone();
    s.finish(T).await;

    // The owner reads their own without any recording permission.
    sealed(&alice, &id).await;
    // Someone else is refused, as for a session that does not exist (no probing of ids).
    let e = bob
        .call("Airlock.GetSessionRecording", &json!({ "SessionId": id }))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("AccessDeniedException"), "{e}");
    let e2 = bob
        .call(
            "Airlock.GetSessionRecording",
            &json!({ "SessionId": "alice-00000000000000000" }),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e2.contains("AccessDeniedException"), "{e2}");
    // A policy grants another reader.
    let (chunks, _, _) = sealed(&carol, &id).await;
    assert!(output(&events(&chunks).1).contains("mine-7"));
    // An explicit Deny wins over ownership.
    put_policy(
        &server,
        "alice",
        "no-recordings",
        json!([{"Effect": "Deny", "Action": "airlock:GetSessionRecording", "Resource": "*"}]),
    )
    .await;
    let e = alice
        .call("Airlock.GetSessionRecording", &json!({ "SessionId": id }))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("AccessDeniedException"), "{e}");
    // Hostile paging input is refused as a malformed request.
    for bad in [
        json!({"SessionId": id, "FromChunk": -1}),
        json!({"SessionId": id, "MaxChunks": "all"}),
        json!({"SessionId": 5}),
    ] {
        let e = carol
            .call("Airlock.GetSessionRecording", &bad)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("SerializationException"), "{bad}: {e}");
    }
    // Malformed ids are refused before any lookup.
    let e = carol
        .call(
            "Airlock.GetSessionRecording",
            &json!({ "SessionId": "x".repeat(200) }),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("ValidationException"), "{e}");

    // Every read decision is on the record, with who and whether.
    let records = server
        .state()
        .store
        .list_audit(
            &airlock_server::store::audit::AuditFilter {
                action: Some("airlock:GetSessionRecording".into()),
                ..Default::default()
            },
            None,
            100,
        )
        .await
        .unwrap();
    let reads: Vec<(String, String)> = records
        .iter()
        .filter(|r| r.event.event == "recording-read")
        .map(|r| {
            (
                r.event.principal.rsplit('/').next().unwrap().to_owned(),
                r.event.decision.clone(),
            )
        })
        .collect();
    for who in [
        ("alice", "Allow"),
        ("bob", "Deny"),
        ("carol", "Allow"),
        ("alice", "Deny"),
    ] {
        assert!(
            reads.iter().any(|(p, d)| p == who.0 && d == who.1),
            "no {who:?} read in {reads:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_survives_kill_9_of_the_server_and_verifies() {
    let mut d = airlock_testkit::deployment::Deployment::start(&[]).await;
    let api = d.api();
    let mut s = TestSession::start(&api, &d.instance_id, SessionOptions::default()).await;
    s.send("echo before-crash-$((20+1))\n").await;
    s.expect("before-crash-21", T).await;
    let id = s.grant.session_id.clone();
    // Flushed within a second: visible to a reader while the session is live.
    eventually("the live recording has the output", T, || async {
        let (chunks, manifest, out) = fetch(&api, &id).await;
        let text = if chunks.is_empty() {
            String::new()
        } else {
            output(&events(&chunks).1)
        };
        (out["Live"] == true && manifest.is_none() && text.contains("before-crash-21"))
            .then_some(())
    })
    .await;
    d.kill_and_restart_server().await;
    drop(s);
    let api = d.api();
    let (chunks, manifest, out) = sealed(&api, &id).await;
    assert_eq!(out["Recovered"], true);
    let m: Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(m["recovered"], true);
    assert!(output(&events(&chunks).1).contains("before-crash-21"));
    d.assert_no_panic();
}

/// A flood of output must not hide what follows it: when the recorder falls behind, the relay
/// waits for it instead of relaying what would go unrecorded. With a 256 KiB queue bound,
/// 8 MiB through a no-PTY shell outruns the recorder many times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_after_a_flood_is_recorded_in_full() {
    common::capture_logs();
    let server = TestServer::start_with(|c| c.recording.queue_max_bytes = 256 * 1024).await;
    let agent = server.agent().await;
    let api = server.api();
    let opts = SessionOptions {
        no_pty: true,
        ..SessionOptions::default()
    };
    let mut s = TestSession::start(&api, &agent.instance_id, opts).await;
    s.send("head -c 8388608 /dev/zero | tr '\\0' x; echo; echo after-flood-$((2+3))\n")
        .await;
    s.expect("after-flood-5", Duration::from_secs(120)).await;
    s.send("exit\n").await;
    let id = s.grant.session_id.clone();
    let (_, seen) = s.finish(T).await;
    assert!(seen.len() > 8 << 20, "{} bytes seen", seen.len());

    let (chunks, _, _) = sealed(&api, &id).await;
    let (_, evs) = events(&chunks);
    let recorded = output(&evs);
    assert_eq!(
        recorded.len(),
        seen.len(),
        "every byte the client saw is recorded"
    );
    assert!(recorded.ends_with("after-flood-5\n"));
    assert!(
        !evs.iter().any(|e| e.data.contains("not recorded")),
        "no gap marker"
    );
}

/// A flood of printed text (a big `cat`) never makes the server refuse other work: the
/// search index lags or leaves bulk output out, but the store stays writable, the next
/// StartSession succeeds at once, and words typed and printed after the flood are found.
#[tokio::test]
async fn a_flood_of_text_never_starves_the_api() {
    common::capture_logs();
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let api = server.api();
    let opts = SessionOptions {
        no_pty: true,
        ..SessionOptions::default()
    };
    let mut s = TestSession::start(&api, &agent.instance_id, opts.clone()).await;
    // 12 MiB of random words (base64 lines; every token new, the worst case for an index):
    // far past the index's budget, so most of it is left to the recording.
    s.send("head -c 9437184 /dev/urandom | base64 -w 76; echo flood-done-$((4+4))\n")
        .await;
    let flooded = s.skip_until("flood-done-8", Duration::from_secs(300)).await;
    assert!(flooded > 12 << 20, "{flooded} bytes");
    // Straight after the flood, while the recorder and the index catch up: the API answers.
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let other = TestSession::start(&api, &agent.instance_id, opts.clone()).await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "StartSession took {took:?} after a flood"
        );
        other.send("exit\n").await;
        other.finish(T).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.send("echo needle-after-$((40+2))\n").await;
    s.expect("needle-after-42", T).await;
    s.send("exit\n").await;
    let id = s.grant.session_id.clone();
    s.finish(T).await;
    eventually(
        "the words after the flood in search",
        Duration::from_secs(60),
        || async {
            let out = api
                .call(
                    "Airlock.SearchSessions",
                    &json!({ "Text": "needle-after-42" }),
                )
                .await
                .unwrap();
            out["Results"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["SessionId"] == id.as_str())
                .then_some(())
        },
    )
    .await;
}

/// Search text survives `kill -9`: crash recovery indexes the text of the recording it seals
/// again. The index is written from an in-memory queue, so a crash loses what the queue still
/// held; the test makes that loss certain by deleting the session's indexed text while the
/// server is down (as if none of it had been written), and recovery must index it anew, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_words_printed_before_kill_9_once_recovered() {
    let mut d = airlock_testkit::deployment::Deployment::start(&[]).await;
    let api = d.api();
    let mut s = TestSession::start(&api, &d.instance_id, SessionOptions::default()).await;
    s.send("echo zanzibar-$((20+22)) quokka\n").await;
    s.expect("zanzibar-42 quokka", T).await;
    let id = s.grant.session_id.clone();
    eventually("the live recording has the output", T, || async {
        let (chunks, _, _) = fetch(&api, &id).await;
        (!chunks.is_empty() && output(&events(&chunks).1).contains("zanzibar-42")).then_some(())
    })
    .await;
    d.kill_server().await;
    drop(s);
    {
        // The search index is its own file beside the database.
        let db = format!(
            "sqlite://{}",
            d.data_dir.join("airlock.db.search").display()
        );
        let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&db)
            .await
            .unwrap();
        sqlx::query("DELETE FROM recording_text WHERE session_id = ?")
            .bind(&id)
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("DELETE FROM recording_text_tail WHERE session_id = ?")
            .bind(&id)
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::Connection::close(conn).await.unwrap();
    }
    d.restart_server().await;
    let api = d.api();
    sealed(&api, &id).await;
    let found = eventually("the words found again", T, || async {
        let out = api
            .call(
                "Airlock.SearchSessions",
                &json!({ "Text": "zanzibar-42 quokka" }),
            )
            .await
            .unwrap();
        (out["Results"][0]["SessionId"] == id.as_str()).then_some(out)
    })
    .await;
    assert_eq!(found["Results"].as_array().unwrap().len(), 1, "{found}");
    // Indexed once: the phrase is printed once (the echoed command line has `$((20+22))`).
    let matches = found["Results"][0]["Matches"].as_array().unwrap();
    assert_eq!(matches.len(), 1, "{found}");
    d.assert_no_panic();
}
