//! Recordings in S3 (issue 11), against a real S3-compatible server: moto's `moto_server`
//! (installed into target/pyenv by scripts/test), reached through a TCP relay the test can cut
//! to take "the store" down and bring it back without losing moto's state. Covers both failure
//! policies: FailOpen spools and uploads when the store is back; FailClosed refuses new shell
//! sessions while it is down, and ends a session whose spool overflows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_client::session::SessionOptions;
use airlock_client::ApiClient;
use airlock_recording::EventKind;
use airlock_server::preferences::FailurePolicy;
use airlock_testkit::{eventually, free_port, TestServer, TestSession};
use base64::Engine;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

// Generous: these tests share two cores with whole-workspace builds and other suites.
const T: Duration = Duration::from_secs(40);
const BUCKET: &str = "airlock-recordings";
const PREFIX: &str = "team/a";

fn moto_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AIRLOCK_TEST_MOTO") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv/bin/moto_server");
    if venv.is_file() {
        return Some(venv);
    }
    airlock_testkit::aws::missing("moto_server (pip moto[server])")
}

/// moto_server on a free loopback port, killed on drop.
struct Moto {
    port: u16,
    _child: tokio::process::Child,
}

impl Moto {
    async fn start() -> Option<Moto> {
        let bin = moto_binary()?;
        let port = free_port();
        let child = tokio::process::Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("moto_server starts");
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{port}/{BUCKET}");
        eventually("moto_server answers", Duration::from_secs(30), || async {
            http.put(&url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        })
        .await;
        Some(Moto {
            port,
            _child: child,
        })
    }

    /// Object keys under the prefix.
    async fn keys(&self) -> String {
        reqwest::get(format!(
            "http://127.0.0.1:{}/{BUCKET}?list-type=2&prefix={PREFIX}/",
            self.port
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
    }
}

/// A TCP relay in front of moto: `down()` closes every connection through it and refuses new
/// ones (the store is unreachable), `up()` serves again.
struct Cut {
    port: u16,
    up: Arc<std::sync::Mutex<CancellationToken>>,
    alive: Arc<std::sync::atomic::AtomicBool>,
}

impl Cut {
    async fn start(to: u16) -> Cut {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (u, a) = (up.clone(), alive.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !a.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let cut = u.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(mut out) = TcpStream::connect(("127.0.0.1", to)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                        _ = cut.cancelled() => {}
                    }
                });
            }
        });
        Cut { port, up, alive }
    }

    fn down(&self) {
        self.alive.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut g = self.up.lock().unwrap();
        g.cancel();
        *g = CancellationToken::new();
    }

    fn up(&self) {
        self.alive.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn server(endpoint_port: u16, policy: FailurePolicy, spool_max: u64) -> TestServer {
    server_with(endpoint_port, policy, spool_max, |_| {}).await
}

async fn server_with(
    endpoint_port: u16,
    policy: FailurePolicy,
    spool_max: u64,
    adjust: impl FnOnce(&mut airlock_server::ServerConfig),
) -> TestServer {
    // The standard variables, as an operator sets them (moto accepts any key).
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    let server = TestServer::start_with(|c| {
        c.recording.s3_endpoint = Some(format!("http://127.0.0.1:{endpoint_port}"));
        c.recording.s3_region = Some("us-east-1".into());
        c.recording.spool_max_bytes = spool_max;
        c.recording.store_timeout = Duration::from_secs(2);
        adjust(c);
    })
    .await;
    let mut p = (*server.state().preferences.get()).clone();
    p.s3_bucket_name = BUCKET.into();
    p.s3_key_prefix = PREFIX.into();
    p.recording_failure_policy = Some(policy);
    server.state().preferences.set(p);
    server
}

async fn read_all(api: &ApiClient, id: &str) -> (Vec<(u64, Vec<u8>)>, Option<Vec<u8>>, Value) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let out = api
        .call(
            "Airlock.GetSessionRecording",
            &json!({ "SessionId": id, "MaxChunks": 1000 }),
        )
        .await
        .expect("GetSessionRecording");
    let chunks = out["Chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["Index"].as_u64().unwrap(),
                b64.decode(c["Data"].as_str().unwrap()).unwrap(),
            )
        })
        .collect();
    let manifest = out["Manifest"].as_str().map(|m| b64.decode(m).unwrap());
    (chunks, manifest, out)
}

async fn sealed_output(api: &ApiClient, id: &str) -> String {
    let (chunks, manifest, out) =
        eventually("the recording sealed", Duration::from_secs(40), || async {
            let r = read_all(api, id).await;
            (r.2["Sealed"] == true).then_some(r)
        })
        .await;
    let key = hex_key(out["PublicKey"].as_str().unwrap());
    let report = airlock_recording::verify(&chunks, manifest.as_deref(), &key);
    assert!(report.ok(), "{report}");
    let bodies: Vec<Vec<u8>> = chunks.into_iter().map(|(_, b)| b).collect();
    let (_, evs) =
        airlock_recording::parse_cast(&airlock_recording::export(&bodies).unwrap()).unwrap();
    evs.iter()
        .filter(|e| e.kind == EventKind::Output)
        .map(|e| e.data.as_str())
        .collect()
}

fn hex_key(s: &str) -> [u8; 32] {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_spools_while_s3_is_down_and_uploads_when_it_is_back() {
    common::capture_logs();
    let Some(moto) = Moto::start().await else {
        return;
    };
    let cut = Cut::start(moto.port).await;
    let server = server(cut.port, FailurePolicy::FailOpen, 64 * 1024 * 1024).await;
    let agent = server.agent().await;
    let api = server.api();
    let mut s = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    s.send("echo up-$((1+1))\n").await;
    s.expect("up-2", T).await;
    let id = s.grant.session_id.clone();
    eventually("the first chunk in S3", T, || async {
        moto.keys()
            .await
            .contains(&format!("{PREFIX}/{id}/0000000000.chunk"))
            .then_some(())
    })
    .await;

    cut.down();
    // The shell does not slow down while the store is unreachable.
    for i in 0..5 {
        let t = Instant::now();
        s.send(&format!("echo while-down-{i}-$((i=7*6))\n")).await;
        s.expect(&format!("while-down-{i}-42"), T).await;
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a command took {:?} with the store down",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let spool = server.dir.0.join("server/recording-spool").join(&id);
    eventually("chunks spooled locally", T, || async {
        std::fs::read_dir(&spool)
            .ok()
            .map(|d| d.count())
            .filter(|n| *n > 0)
            .map(|_| ())
    })
    .await;
    let log = common::logs();
    assert!(
        log.contains("recording store failed, spooling locally"),
        "{log}"
    );

    cut.up();
    s.send("echo back-$((2+2))\n").await;
    s.expect("back-4", T).await;
    s.send("exit\n").await;
    let (_, seen) = s.finish(T).await;
    let recorded = sealed_output(&api, &id).await;
    assert_eq!(recorded, seen, "nothing was lost while the store was down");
    assert!(recorded.contains("while-down-4-42"));
    assert!(moto
        .keys()
        .await
        .contains(&format!("{PREFIX}/{id}/manifest.json")));
    assert!(!spool.exists(), "the spool is emptied once uploaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_new_sessions_while_s3_is_down_and_ends_one_whose_spool_overflows() {
    common::capture_logs();
    let Some(moto) = Moto::start().await else {
        return;
    };
    let cut = Cut::start(moto.port).await;
    // A spool too small for anything: a session that must spool cannot be recorded.
    let server = server(cut.port, FailurePolicy::FailClosed, 16).await;
    let agent = server.agent().await;
    let api = server.api();

    cut.down();
    let e = api
        .start_session(&json!({ "Target": agent.instance_id }))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("RecordingUnavailableException"), "{e}");
    assert!(
        e.contains("FailClosed") && e.contains(&format!("s3://{BUCKET}/{PREFIX}")),
        "{e}"
    );
    assert!(
        server.sessions("Active").await.is_empty(),
        "no session was created"
    );

    cut.up();
    let mut s = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    s.send("echo recorded-$((3+3))\n").await;
    s.expect("recorded-6", T).await;
    let id = s.grant.session_id.clone();
    eventually("the first chunk in S3", T, || async {
        moto.keys()
            .await
            .contains(&format!("{PREFIX}/{id}/0000000000.chunk"))
            .then_some(())
    })
    .await;

    // The store goes away mid-session and the spool cannot hold a chunk: the session ends,
    // with a reason saying why.
    cut.down();
    s.send("for i in $(seq 1 40); do echo tick-$i; sleep 0.25; done\n")
        .await;
    let ended = server.wait_history(&id).await;
    let details = ended.to_string();
    assert!(details.contains("RecordingFailed"), "{details}");
    let _ = s.finish(T).await;
    let log = common::logs();
    assert!(log.contains("recording spool full"), "{log}");

    // Back up: the recording is sealed (chunks stored before the outage) and verifies.
    cut.up();
    let recorded = eventually(
        "sealed after the outage",
        Duration::from_secs(40),
        || async {
            let r = read_all(&api, &id).await;
            (r.2["Sealed"] == true).then_some(r)
        },
    )
    .await;
    let bodies: Vec<Vec<u8>> = recorded.0.iter().map(|(_, b)| b.clone()).collect();
    let cast = airlock_recording::export(&bodies).unwrap();
    assert!(cast.contains("recorded-6"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_spooled_while_s3_is_down_survive_kill_9_and_are_sealed_when_it_is_back() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let cut = Cut::start(moto.port).await;
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    let endpoint = format!("http://127.0.0.1:{}", cut.port);
    let location = format!("s3://{BUCKET}/{PREFIX}");
    let mut d = airlock_testkit::deployment::Deployment::start(&[
        "--recordings",
        &location,
        "--s3-endpoint",
        &endpoint,
        "--s3-region",
        "us-east-1",
    ])
    .await;
    let api = d.api();
    let mut s = TestSession::start(&api, &d.instance_id, SessionOptions::default()).await;
    s.send("echo stored-$((5*5))\n").await;
    s.expect("stored-25", T).await;
    let id = s.grant.session_id.clone();
    eventually("the first chunk in S3", T, || async {
        moto.keys()
            .await
            .contains(&format!("{PREFIX}/{id}/0000000000.chunk"))
            .then_some(())
    })
    .await;
    cut.down();
    s.send("echo spooled-$((6*6))\n").await;
    s.expect("spooled-36", T).await;
    let spool = d.data_dir.join("recording-spool").join(&id);
    eventually("the output spooled", T, || async {
        let n = std::fs::read_dir(&spool).ok()?.count();
        (n > 0).then_some(())
    })
    .await;
    d.kill_and_restart_server().await;
    drop(s);
    let api = d.api();
    // Still down: nothing is sealed, nothing is lost.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(spool.exists(), "the spool is kept while the store is down");
    cut.up();
    let recorded = sealed_output(&api, &id).await;
    assert!(
        recorded.contains("stored-25") && recorded.contains("spooled-36"),
        "{recorded:?}"
    );
    let (_, manifest, out) = read_all(&api, &id).await;
    assert_eq!(out["Recovered"], true);
    let m: Value = serde_json::from_slice(&manifest.unwrap()).unwrap();
    assert_eq!(m["recovered"], true);
    d.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_with_a_full_spool_goes_on_and_the_recording_says_what_was_lost() {
    common::capture_logs();
    let Some(moto) = Moto::start().await else {
        return;
    };
    let cut = Cut::start(moto.port).await;
    let server = server(cut.port, FailurePolicy::FailOpen, 16).await;
    let agent = server.agent().await;
    let api = server.api();
    let mut s = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    s.send("echo first-$((1+6))\n").await;
    s.expect("first-7", T).await;
    let id = s.grant.session_id.clone();
    eventually("the first chunk in S3", T, || async {
        moto.keys()
            .await
            .contains(&format!("{PREFIX}/{id}/0000000000.chunk"))
            .then_some(())
    })
    .await;
    cut.down();
    s.send("for i in $(seq 1 12); do echo lost-$i; sleep 0.25; done; echo loop-done\n")
        .await;
    s.expect("loop-done", T).await;
    eventually("the loss logged", T, || async {
        common::logs()
            .contains("recording spool full")
            .then_some(())
    })
    .await;
    cut.up();
    // The session went on (FailOpen), and keeps being recorded once the store is back.
    s.send("echo after-$((4+4))\n").await;
    s.expect("after-8", T).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.send("exit\n").await;
    s.finish(T).await;
    let (chunks, manifest, out) = eventually("sealed", Duration::from_secs(40), || async {
        let r = read_all(&api, &id).await;
        (r.2["Sealed"] == true).then_some(r)
    })
    .await;
    let bodies: Vec<Vec<u8>> = chunks.iter().map(|(_, b)| b.clone()).collect();
    let cast = airlock_recording::export(&bodies).unwrap();
    assert!(
        cast.contains("\"m\",\"recording spool full"),
        "the recording itself says so"
    );
    assert!(cast.contains("after-8"));
    // And verify names the chunks that could not be kept.
    let report = airlock_recording::verify(
        &chunks,
        manifest.as_deref(),
        &hex_key(out["PublicKey"].as_str().unwrap()),
    );
    assert!(
        matches!(
            report.problems.first(),
            Some(airlock_recording::Problem::Missing { .. })
        ),
        "{report}"
    );
    let row = server.state().store.recording(&id).await.unwrap().unwrap();
    assert!(row.note.contains("recording spool full"), "{}", row.note);
}

/// The session log stream's lines of one kind.
fn log_lines(path: &std::path::Path, kind: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["kind"] == kind)
        .collect()
}

/// Under FailClosed, ResumeSession of a recorded session is refused while the store is down,
/// as StartSession is: the same clear error, a Deny on the audit trail and `session.denied`.
/// The session is not lost: it goes on, and is resumed once the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_resume_while_s3_is_down_and_keeps_the_session() {
    common::capture_logs();
    let Some(moto) = Moto::start().await else {
        return;
    };
    let cut = Cut::start(moto.port).await;
    let dir = airlock_testkit::TempDir::new();
    let log = dir.0.join("sessions.jsonl");
    let server = server_with(cut.port, FailurePolicy::FailClosed, 64 * 1024 * 1024, |c| {
        c.session_log = Some(airlock_server::events::SessionLog::File(log.clone()));
    })
    .await;
    let agent = server.agent().await;
    let api = server.api();
    let mut s = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    s.send("echo before-$((2+5))\n").await;
    s.expect("before-7", T).await;
    let id = s.grant.session_id.clone();

    cut.down();
    // Past the store's last sign of life, so the check asks it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let e = api
        .call("AmazonSSM.ResumeSession", &json!({ "SessionId": id }))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("RecordingUnavailableException"), "{e}");
    assert!(
        e.contains("FailClosed") && e.contains(&format!("s3://{BUCKET}/{PREFIX}")),
        "{e}"
    );
    let refused_start = api
        .start_session(&json!({ "Target": agent.instance_id }))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused_start.contains("RecordingUnavailableException"),
        "{refused_start}"
    );
    // Both refusals are denials on the trail and in the event stream.
    let denied = eventually("session.denied lines", T, || async {
        let l = log_lines(&log, "session.denied");
        (l.len() >= 2).then_some(l)
    })
    .await;
    let resume = denied
        .iter()
        .find(|l| l["data"]["Action"] == "ssm:ResumeSession")
        .unwrap_or_else(|| panic!("{denied:#?}"));
    assert_eq!(resume["session_id"], id.as_str(), "{resume}");
    assert_eq!(resume["target"], agent.instance_id.as_str(), "{resume}");
    assert!(
        resume["data"]["Reason"]
            .as_str()
            .unwrap()
            .contains("RecordingUnavailableException"),
        "{resume}"
    );
    let start = denied
        .iter()
        .find(|l| l["data"]["Action"] == "ssm:StartSession")
        .unwrap_or_else(|| panic!("{denied:#?}"));
    assert_eq!(start["target"], agent.instance_id.as_str(), "{start}");
    let records = server
        .state()
        .store
        .list_audit(
            &airlock_server::store::audit::AuditFilter {
                action: Some("ssm:ResumeSession".into()),
                decision: Some("Deny".into()),
                ..Default::default()
            },
            None,
            100,
        )
        .await
        .unwrap();
    assert_eq!(records.len(), 1, "{records:#?}");

    // The session was not lost: it runs on (spooled), and is resumed once the store is back.
    s.send("echo during-$((3+5))\n").await;
    s.expect("during-8", T).await;
    assert!(server.session("Active", &id).await.is_some());
    cut.up();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    api.call("AmazonSSM.ResumeSession", &json!({ "SessionId": id }))
        .await
        .expect("ResumeSession once the store is back");
    s.send("echo after-$((4+5))\n").await;
    s.expect("after-9", T).await;
    s.send("exit\n").await;
    let (_, seen) = s.finish(T).await;
    let recorded = sealed_output(&api, &id).await;
    assert_eq!(recorded, seen);
    assert!(recorded.contains("during-8") && recorded.contains("after-9"));
}

/// FailOpen with the store down: the recording is read from the local spool (live, and after
/// the session ended) so replay, log and export work while S3 is down; once the store is back
/// and the spool uploaded, the same chunks are read from S3, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_waiting_in_the_spool_is_read_while_s3_is_down() {
    common::capture_logs();
    let Some(moto) = Moto::start().await else {
        return;
    };
    let cut = Cut::start(moto.port).await;
    let server = server(cut.port, FailurePolicy::FailOpen, 64 * 1024 * 1024).await;
    let agent = server.agent().await;
    let api = server.api();
    cut.down();
    let mut s = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    s.send("echo spooled-$((3*3))\n").await;
    s.expect("spooled-9", T).await;
    let id = s.grant.session_id.clone();
    let spool = server.dir.0.join("server/recording-spool").join(&id);
    // Live: what was printed is readable while every chunk waits locally.
    let live = eventually("the live recording read from the spool", T, || async {
        let rec = api.fetch_recording(&id).await.ok()?;
        let (_, evs) = rec.events().ok()?;
        let text: String = evs.iter().map(|e| e.data.as_str()).collect();
        text.contains("spooled-9").then_some(rec)
    })
    .await;
    assert!(live.live && live.manifest.is_none());
    assert!(spool.exists(), "the chunks wait in the spool");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    s.send("echo second-$((4*4))\n").await;
    s.expect("second-16", T).await;
    s.send("exit\n").await;
    let (_, seen) = s.finish(T).await;
    server.wait_history(&id).await;

    // Ended, the store still down: the whole recording is read from the spool.
    let (chunks, manifest, out) = eventually("the ended recording from the spool", T, || async {
        let r = read_all(&api, &id).await;
        let bodies: Vec<Vec<u8>> = r.0.iter().map(|(_, b)| b.clone()).collect();
        let cast = airlock_recording::export(&bodies).ok()?;
        let (_, evs) = airlock_recording::parse_cast(&cast).ok()?;
        let text: String = evs
            .iter()
            .filter(|e| e.kind == EventKind::Output)
            .map(|e| e.data.as_str())
            .collect();
        (r.2["Live"] == false && text == seen).then_some(r)
    })
    .await;
    assert_eq!(out["Sealed"], false);
    assert!(manifest.is_none());
    let indices: Vec<u64> = chunks.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        indices,
        (0..indices.len() as u64).collect::<Vec<_>>(),
        "every chunk once, in order"
    );
    assert!(indices.len() >= 2, "{indices:?}");
    assert!(!moto.keys().await.contains(&id), "nothing reached S3 yet");

    // Back: uploaded and sealed; the chunks are the same, each once.
    cut.up();
    let recorded = sealed_output(&api, &id).await;
    assert_eq!(recorded, seen);
    let (after, _, _) = read_all(&api, &id).await;
    assert_eq!(after, chunks, "the same chunks, each once, now from S3");
    assert!(!spool.exists());
}

/// The spool's bound holds across a restart: what a killed server left spooled counts
/// against `--recording-spool-mb` at the next start, so new sessions cannot spool another
/// full bound on top of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_bound_holds_across_a_restart() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let cut = Cut::start(moto.port).await;
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    let endpoint = format!("http://127.0.0.1:{}", cut.port);
    let location = format!("s3://{BUCKET}/{PREFIX}");
    const BOUND: u64 = 1024 * 1024;
    let mut d = airlock_testkit::deployment::Deployment::start(&[
        "--recordings",
        &location,
        "--s3-endpoint",
        &endpoint,
        "--s3-region",
        "us-east-1",
        "--recording-spool-mb",
        "1",
    ])
    .await;
    let spool = d.data_dir.join("recording-spool");
    let spooled = || -> u64 {
        let Ok(dirs) = std::fs::read_dir(&spool) else {
            return 0;
        };
        dirs.flatten()
            .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
            .map(|f| f.metadata().map(|m| m.len()).unwrap_or(0))
            .sum()
    };
    let full = |d: &airlock_testkit::deployment::Deployment| {
        d.server_log().matches("recording spool full").count()
    };
    cut.down();
    let flood = "head -c 1200000 /dev/urandom | base64 -w 100; echo flood-$((5+5))\n";
    // The recorder exists after its first flush (until then output waits uncut for the
    // terminal's size): from there on the flood is cut into chunks of the target size.
    async fn ready(s: &mut TestSession) {
        s.send("echo ready-$((1+1))\n").await;
        s.expect("ready-2", T).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }

    let api = d.api();
    let mut s = TestSession::start(&api, &d.instance_id, SessionOptions::default()).await;
    ready(&mut s).await;
    s.send(flood).await;
    s.expect("flood-10", Duration::from_secs(120)).await;
    let t0 = Instant::now();
    while full(&d) == 0 {
        assert!(
            t0.elapsed() < T,
            "the spool never filled: {} bytes spooled; server log:\n{}",
            spooled(),
            d.server_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = spooled();
    assert!(
        before > BOUND / 2 && before <= BOUND,
        "{before} bytes spooled"
    );

    d.kill_and_restart_server().await;
    drop(s);
    let full_before = full(&d);
    let api = d.api();
    let mut s = TestSession::start(&api, &d.instance_id, SessionOptions::default()).await;
    ready(&mut s).await;
    s.send(flood).await;
    s.expect("flood-10", Duration::from_secs(120)).await;
    eventually("the spool full again", T, || async {
        (full(&d) > full_before).then_some(())
    })
    .await;
    let after = spooled();
    assert!(
        after <= BOUND,
        "{after} bytes spooled across the restart, bound {BOUND}"
    );
    d.assert_no_panic();
}
