//! The reading side of recordings (issue 11), end to end: a real server, agent and shell, and
//! the built `airlock` binary as a person runs it. `sessions recording export` is read by the
//! stock `asciinema cat` and equals what the client saw; `sessions log` is the transcript;
//! `sessions replay` plays it (and `--follow` watches a live one); `sessions search` finds
//! typed and printed words but never another user's session (`Airlock.SearchSessions` shows
//! a session only to whom may read its recording; FTS syntax in the text is literal);
//! tampering with the file store (a flipped byte, a removed chunk, two chunks swapped) makes
//! `sessions recording verify` exit 1 naming the chunk.
//!
//! Under `CI=true` a missing `asciinema` fails its test; elsewhere it says why and passes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use airlock_client::session::SessionOptions;
use airlock_client::{ApiClient, Profile};
use airlock_server::store::{Session, SessionAccess};
use airlock_testkit::{eventually, TempDir, TestServer, TestSession};

const T: Duration = Duration::from_secs(20);

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

/// What one run of the `airlock` binary did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `airlock ARGS` as `profile` (a clean environment, stdin not a terminal).
async fn airlock(profile: &Profile, args: &[&str]) -> Run {
    let mut c = Command::new(bin().await);
    c.args(args);
    run(profile, c).await
}

/// The `airlock` binary, built (or found up to date) once per test binary.
async fn bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    match BIN.get() {
        Some(b) => b.clone(),
        None => {
            let b = tokio::task::spawn_blocking(airlock_testkit::airlock_binary)
                .await
                .unwrap();
            BIN.get_or_init(|| b).clone()
        }
    }
}

/// Runs `c` with `profile`'s credentials in a clean environment, stdin empty.
async fn run(profile: &Profile, mut c: Command) -> Run {
    c.env("AIRLOCK_ENDPOINT", &profile.endpoint)
        .env("AIRLOCK_ACCESS_KEY_ID", &profile.access_key_id)
        .env("AIRLOCK_SECRET_ACCESS_KEY", &profile.secret_access_key)
        .env("AIRLOCK_REGION", &profile.region)
        .env("AIRLOCK_LOG", "warn")
        .env_remove("AIRLOCK_PROFILE")
        .env_remove("AIRLOCK_CONFIG")
        .env_remove("AIRLOCK_SESSION_TOKEN")
        .stdin(Stdio::null());
    match &profile.ca_file {
        Some(ca) => c.env("AIRLOCK_CA_FILE", ca),
        None => c.env_remove("AIRLOCK_CA_FILE"),
    };
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Waits until `id`'s recording is sealed (its manifest is stored).
async fn wait_sealed(server: &TestServer, id: &str) {
    let api = server.api();
    eventually("the recording sealed", T, || async {
        let rec = api.fetch_recording(id).await.ok()?;
        (rec.manifest.is_some() && !rec.live).then_some(())
    })
    .await;
}

/// A recorded shell session of `api`'s user: runs each command (pausing `gap` after each, so
/// they land in separate chunks), exits, waits for the seal; returns its id and what the
/// client saw.
async fn shell(
    server: &TestServer,
    api: &ApiClient,
    target: &str,
    commands: &[&str],
    gap: Duration,
) -> (String, String) {
    let mut s = TestSession::start(api, target, SessionOptions::default()).await;
    for (i, c) in commands.iter().enumerate() {
        s.send(&format!("{c}; echo step-$(({i}+100))\n")).await;
        s.expect(&format!("step-{}", i + 100), T).await;
        tokio::time::sleep(gap).await;
    }
    s.send("exit\n").await;
    let id = s.grant.session_id.clone();
    let (_, seen) = s.finish(T).await;
    wait_sealed(server, &id).await;
    (id, seen)
}

/// Whether `tool` is installed; under CI its absence fails the test.
fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").is_err(),
            "{tool} is not installed (scripts/test installs it)"
        );
        eprintln!("{tool} is not installed: skipping (scripts/test installs it)");
    }
    found
}

/// `asciinema cat FILE`: it wants a terminal (it opens /dev/tty), so it runs under
/// `script` with its standard output to a file, which keeps the bytes exactly.
fn asciinema_cat(cast: &Path) -> Vec<u8> {
    let out = cast.with_extension("out");
    let status = Command::new("setsid")
        .args(["-w", "script", "-qec"])
        .arg(format!(
            "asciinema cat '{}' > '{}'",
            cast.display(),
            out.display()
        ))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "asciinema cat failed");
    std::fs::read(out).unwrap()
}

/// Where the file store keeps `id`'s objects.
fn objects(server: &TestServer, id: &str) -> PathBuf {
    server.dir.0.join("server/recordings").join(id)
}

fn chunk(dir: &Path, i: u64) -> PathBuf {
    dir.join(format!("{i:010}.chunk"))
}

// ---------------------------------------------------------------------------------------------
// Export, log, replay

/// The export plays in the stock asciinema (`asciinema cat`) as exactly what the client saw;
/// `log` is the transcript; `replay` (piped, fast) writes the same bytes, and `--from`
/// starts later; the exported file verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_reads_in_asciinema_as_the_client_saw_it_and_log_and_replay() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let api = server.api();
    let (id, seen) = shell(
        &server,
        &api,
        &agent.instance_id,
        &[
            "printf 'h\\303\\251llo \\033[1mbold\\033[0m w\\303\\266rld\\n'",
            "seq 1 3 | tr '\\n' ' '; echo; echo final-$((6*7))",
        ],
        Duration::from_millis(1300),
    )
    .await;
    assert!(seen.contains("final-42"), "{seen}");

    let export = airlock(&server.admin, &["sessions", "recording", "export", &id]).await;
    assert_eq!(export.code, 0, "{}", export.stderr);
    assert!(export.stderr.is_empty(), "{}", export.stderr);
    let dir = TempDir::new();
    let cast = dir.0.join("s.cast");
    std::fs::write(&cast, &export.stdout).unwrap();
    if have("asciinema") && have("script") {
        let played = asciinema_cat(&cast);
        assert_eq!(
            String::from_utf8_lossy(&played),
            seen,
            "asciinema cat of the export is what the client saw"
        );
    }

    let log = airlock(&server.admin, &["sessions", "log", &id]).await;
    assert_eq!(log.code, 0, "{}", log.stderr);
    assert!(log.stdout.contains("héllo bold wörld\n"), "{}", log.stdout);
    assert!(log.stdout.contains("1 2 3\nfinal-42\n"), "{}", log.stdout);
    assert!(!log.stdout.contains('\u{1b}'), "{}", log.stdout);
    assert!(!log.stdout.contains('\r'), "{}", log.stdout);

    let replay = airlock(
        &server.admin,
        &[
            "sessions",
            "replay",
            &id,
            "--speed",
            "50",
            "--idle-cap",
            "0.2",
        ],
    )
    .await;
    assert_eq!(replay.code, 0, "{}", replay.stderr);
    assert_eq!(replay.stdout, seen, "replay writes what the client saw");
    // --from: the screen is drawn up to that point at once (so it shows what it showed
    // then), and only the rest is played in time.
    let (_, events) = api.fetch_recording(&id).await.unwrap().events().unwrap();
    let from = events
        .iter()
        .find(|e| e.data.contains("final-42"))
        .unwrap()
        .t;
    let total = events.last().unwrap().t;
    assert!(total - from > 1.0, "{from} of {total}");
    let started = std::time::Instant::now();
    let later = airlock(
        &server.admin,
        &[
            "sessions",
            "replay",
            &id,
            "--idle-cap",
            "0",
            "--from",
            // Rounded down: "from" lands on that event, not the next.
            &format!("{:.3}", (from * 1000.0).floor() / 1000.0),
        ],
    )
    .await;
    let took = started.elapsed().as_secs_f64();
    assert_eq!(later.code, 0, "{}", later.stderr);
    assert_eq!(later.stdout, seen);
    assert!(
        took < total - 0.5,
        "from {from:.1} s of {total:.1} s took {took:.1} s"
    );
    assert!(
        took > (total - from) * 0.5,
        "the rest plays in time: from {from:.2} s of {total:.2} s took {took:.2} s: {:?}",
        events
            .iter()
            .map(|e| (e.t, e.kind, e.data.chars().take(12).collect::<String>()))
            .collect::<Vec<_>>()
    );
    for (args, needle) in [
        (vec!["--speed", "0"], "--speed"),
        (vec!["--from", "soon"], "--from"),
        (vec!["--idle-cap=-1"], "--idle-cap"),
    ] {
        let mut a = vec!["sessions", "replay", id.as_str()];
        a.extend(args);
        let bad = airlock(&server.admin, &a).await;
        assert_eq!(bad.code, 1, "{a:?}");
        assert!(bad.stderr.contains(needle), "{a:?}: {}", bad.stderr);
    }

    let verify = airlock(&server.admin, &["sessions", "recording", "verify", &id]).await;
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
    assert!(verify.stdout.contains("verifies"), "{}", verify.stdout);
}

/// `replay --follow` on a live session shows what is printed while it runs and ends when
/// the session's recording is sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_follow_watches_a_live_session_until_it_ends() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let api = server.api();
    // Built (or found up to date) before the session, so the follower starts while it runs.
    tokio::task::spawn_blocking(airlock_testkit::airlock_binary)
        .await
        .unwrap();
    let mut s = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    s.send("echo before-$((1+1))\n").await;
    s.expect("before-2", T).await;
    let id = s.grant.session_id.clone();
    let admin = server.admin.clone();
    let follow = {
        let id = id.clone();
        tokio::spawn(async move { airlock(&admin, &["sessions", "replay", &id, "--follow"]).await })
    };
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.send("echo during-$((2+2))\n").await;
    s.expect("during-4", T).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.send("exit\n").await;
    s.finish(T).await;
    let run = tokio::time::timeout(Duration::from_secs(30), follow)
        .await
        .expect("replay --follow ends once the session's recording is sealed")
        .unwrap();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains("has ended"), "{}", run.stderr);
    assert!(run.stdout.contains("before-2"), "{}", run.stdout);
    assert!(run.stdout.contains("during-4"), "{}", run.stdout);
}

/// On a terminal (a pty from `script`), replay puts it in raw mode for its keys: `q` and
/// Ctrl-C quit at once, long before the slow playback would end, and the terminal is
/// restored (canonical mode and echo back on) on the way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_on_a_terminal_quits_on_its_keys_and_restores_the_terminal() {
    if !have("script") {
        return;
    }
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let api = server.api();
    let (id, _) = shell(
        &server,
        &api,
        &agent.instance_id,
        &["echo first", "echo second"],
        Duration::from_millis(1200),
    )
    .await;
    let bin = bin().await;
    for key in ["q", "\u{3}"] {
        let dir = TempDir::new();
        let keys = dir.0.join("keys");
        std::fs::write(&keys, key).unwrap();
        // The key arrives after raw mode is on (a pty buffers it in canonical mode until then);
        // at a 100th of the speed the recording would play for minutes.
        let script = format!(
            "'{}' sessions replay {id} --speed 0.01 --idle-cap 0; echo exit=$?; stty -a",
            bin.display()
        );
        let mut sh = Command::new("sh");
        sh.arg("-c").arg(format!(
            "(sleep 1; cat '{}'; sleep 2) | script -qec \"{script}\" /dev/null",
            keys.display()
        ));
        let started = std::time::Instant::now();
        let out = run(&server.admin, sh).await;
        let took = started.elapsed();
        assert!(
            out.stdout.contains("exit=0"),
            "{key:?}: {}{}",
            out.stdout,
            out.stderr
        );
        assert!(took < Duration::from_secs(15), "{key:?}: took {took:?}");
        let stty = &out.stdout[out.stdout.find("exit=0").unwrap()..];
        assert!(stty.contains(" icanon"), "{key:?}: {stty}");
        assert!(stty.contains(" echo"), "{key:?}: {stty}");
    }
}

// ---------------------------------------------------------------------------------------------
// Tampering

/// A flipped byte, a removed chunk and two swapped chunks in the file store each make
/// `verify` exit 1 naming the chunk; restored, it verifies again. A pinned key that is not
/// the server's fails it too; the right one passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_a_flipped_byte_a_removed_chunk_and_swapped_chunks() {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    let api = server.api();
    let (id, _) = shell(
        &server,
        &api,
        &agent.instance_id,
        &["echo one", "echo two", "echo three"],
        Duration::from_millis(1200),
    )
    .await;
    let dir = objects(&server, &id);
    let n = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "chunk")
        })
        .count();
    assert!(n >= 3, "{n} chunks");
    let verify = |args: Vec<String>| {
        let admin = server.admin.clone();
        async move {
            let mut a = vec!["sessions", "recording", "verify"];
            a.extend(args.iter().map(String::as_str));
            airlock(&admin, &a).await
        }
    };
    let ok = verify(vec![id.clone()]).await;
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    let key = api.fetch_recording(&id).await.unwrap().public_key;
    let pinned = verify(vec![id.clone(), "--public-key".into(), key.clone()]).await;
    assert_eq!(pinned.code, 0, "{}{}", pinned.stdout, pinned.stderr);
    let other_key: String = airlock_recording::public_key(&[9u8; 32])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let other = verify(vec![id.clone(), "--public-key".into(), other_key]).await;
    assert_eq!(other.code, 1, "{}", other.stdout);
    assert!(other.stdout.contains("chunk 0"), "{}", other.stdout);
    let malformed = verify(vec![id.clone(), "--public-key".into(), "xyz".into()]).await;
    assert_eq!(malformed.code, 1);
    assert!(
        malformed.stderr.contains("64 hex digits"),
        "{}",
        malformed.stderr
    );

    let one = chunk(&dir, 1);
    let two = chunk(&dir, 2);
    let (orig1, orig2) = (std::fs::read(&one).unwrap(), std::fs::read(&two).unwrap());
    let restore = || {
        std::fs::write(&one, &orig1).unwrap();
        std::fs::write(&two, &orig2).unwrap();
    };

    // A flipped byte in chunk 1's body.
    let mut flipped = orig1.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x01;
    std::fs::write(&one, &flipped).unwrap();
    let r = verify(vec![id.clone()]).await;
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains("chunk 1 was altered"), "{}", r.stdout);
    restore();

    // Chunk 1 removed.
    std::fs::remove_file(&one).unwrap();
    let r = verify(vec![id.clone()]).await;
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains("chunk 1 is missing"), "{}", r.stdout);
    restore();

    // Chunks 1 and 2 swapped.
    std::fs::write(&one, &orig2).unwrap();
    std::fs::write(&two, &orig1).unwrap();
    let r = verify(vec![id.clone()]).await;
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout
            .contains("chunk 2 was reordered: found in place of chunk 1"),
        "{}",
        r.stdout
    );
    restore();

    let again = verify(vec![id.clone()]).await;
    assert_eq!(again.code, 0, "{}", again.stdout);
    // JSON for scripts.
    let j = airlock(
        &server.admin,
        &["--output", "json", "sessions", "recording", "verify", &id],
    )
    .await;
    let v: Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(v["Ok"], true);
    assert_eq!(v["Sealed"], true);
    assert_eq!(v["Problems"], json!([]));
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
    // An explicit Deny of the call itself refuses it (and is audited as a Deny).
    put_policy(
        &server,
        "alice",
        json!([{"Effect": "Deny", "Action": "airlock:SearchSessions", "Resource": "*"}]),
    )
    .await;
    let err = ApiClient::new(alice.clone())
        .unwrap()
        .call("Airlock.SearchSessions", &json!({ "Text": "launch" }))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("AccessDeniedException"), "{err}");
    server
        .api()
        .call(
            "Airlock.DeleteUserPolicy",
            &json!({"UserName": "alice", "PolicyName": "p"}),
        )
        .await
        .expect("DeleteUserPolicy");
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
    assert!(searches
        .iter()
        .any(|e| e["Decision"] == "Deny"
            && e["Principal"].as_str().unwrap().ends_with(":user/alice")));
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

/// Typed and printed words of a real recorded session are found (a word typed across a
/// chunk boundary too), by the API and by `airlock sessions search`; another user finds
/// nothing of it, and the CLI says so with exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_typed_and_printed_words_of_a_real_session_but_not_for_others() {
    let server = TestServer::start().await;
    let mut p = (*server.state().preferences.get()).clone();
    p.record_input = true;
    server.state().preferences.set(p);
    let bob = server.user("bob", false).await;
    let agent = server.agent().await;
    let api = server.api();
    let mut s = TestSession::start(&api, &agent.instance_id, SessionOptions::default()).await;
    // "hippopotamus" typed in two halves, more than a flush apart.
    s.send("echo hippo").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.send("potamus; echo printed-$((40+2))zebra\n").await;
    s.expect("printed-42zebra", T).await;
    s.send("exit\n").await;
    let id = s.grant.session_id.clone();
    s.finish(T).await;
    wait_sealed(&server, &id).await;

    let found = eventually("the words indexed", T, || async {
        let out = api
            .call("Airlock.SearchSessions", &json!({"Text": "hippopotamus"}))
            .await
            .unwrap();
        let kinds: Vec<String> = out["Results"][0]["Matches"]
            .as_array()?
            .iter()
            .map(|m| m["Kind"].as_str().unwrap().to_owned())
            .collect();
        (kinds.contains(&"i".to_owned()) && kinds.contains(&"o".to_owned())).then_some(out)
    })
    .await;
    assert_eq!(found["Results"][0]["SessionId"], id.as_str());
    assert_eq!(found["Results"].as_array().unwrap().len(), 1);
    let printed = api
        .call(
            "Airlock.SearchSessions",
            &json!({"Text": "printed 42zebra"}),
        )
        .await
        .unwrap();
    assert_eq!(printed["Results"][0]["SessionId"], id.as_str());

    let cli = airlock(
        &server.admin,
        &["sessions", "search", "hippopotamus", "--since", "1h"],
    )
    .await;
    assert_eq!(cli.code, 0, "{}", cli.stderr);
    assert!(cli.stdout.contains(&id), "{}", cli.stdout);
    assert!(cli.stdout.contains("typed"), "{}", cli.stdout);
    assert!(cli.stdout.contains("printed"), "{}", cli.stdout);
    let narrowed = airlock(
        &server.admin,
        &[
            "sessions",
            "search",
            "hippopotamus",
            "--target",
            "mi-00000000000000099",
        ],
    )
    .await;
    assert_eq!(narrowed.code, 1, "{}", narrowed.stdout);

    // Bob may not read the admin's recording: nothing, by API or CLI, however asked.
    let bob_api = ApiClient::new(bob.clone()).unwrap();
    for text in ["hippopotamus", "printed", "hippo\" OR \"printed", "zebra"] {
        let out = bob_api
            .call("Airlock.SearchSessions", &json!({"Text": text}))
            .await
            .unwrap();
        assert_eq!(out["Results"], json!([]), "{text}");
    }
    let cli = airlock(&bob, &["sessions", "search", "hippopotamus"]).await;
    assert_eq!(cli.code, 1, "{}", cli.stdout);
    assert!(!cli.stdout.contains(&id), "{}", cli.stdout);
    // Nor read it directly.
    let denied = airlock(&bob, &["sessions", "log", &id]).await;
    assert_eq!(denied.code, 1);
    assert!(denied.stderr.contains("AccessDenied"), "{}", denied.stderr);
}

/// Recordings over TLS end to end: a server with TLS on (its generated certificate), a shell
/// recorded over wss, and the recording read back by the `airlock` binary over https
/// (trusting that certificate): export, log and replay give what the client saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_made_and_read_over_tls() {
    let d = airlock_testkit::deployment::Deployment::start(&[]).await;
    assert!(d.url.starts_with("https://"), "{}", d.url);
    let api = d.api();
    let mut s = TestSession::start(&api, &d.instance_id, SessionOptions::default()).await;
    assert!(
        s.grant.stream_url.starts_with("wss://"),
        "{}",
        s.grant.stream_url
    );
    s.send("echo over-tls-$((6*7)); echo second-line\n").await;
    s.expect("second-line", T).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    s.send("exit\n").await;
    let id = s.grant.session_id.clone();
    let (_, seen) = s.finish(T).await;
    eventually("the recording sealed", T, || async {
        let rec = api.fetch_recording(&id).await.ok()?;
        (rec.manifest.is_some() && !rec.live).then_some(())
    })
    .await;

    let export = airlock(&d.admin, &["sessions", "recording", "export", &id]).await;
    assert_eq!(export.code, 0, "{}", export.stderr);
    let (_, evs) = airlock_recording::parse_cast(&export.stdout).unwrap();
    let printed: String = evs
        .iter()
        .filter(|e| e.kind == airlock_recording::EventKind::Output)
        .map(|e| e.data.as_str())
        .collect();
    assert_eq!(printed, seen, "the export is what the client saw");
    let log = airlock(&d.admin, &["sessions", "log", &id]).await;
    assert_eq!(log.code, 0, "{}", log.stderr);
    assert!(
        log.stdout.contains("over-tls-42\nsecond-line\n"),
        "{}",
        log.stdout
    );
    let replay = airlock(
        &d.admin,
        &[
            "sessions",
            "replay",
            &id,
            "--speed",
            "50",
            "--idle-cap",
            "0.2",
        ],
    )
    .await;
    assert_eq!(replay.code, 0, "{}", replay.stderr);
    assert_eq!(replay.stdout, seen);
    let verify = airlock(&d.admin, &["sessions", "recording", "verify", &id]).await;
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
    d.assert_no_panic();
}
