//! The audit checkpoint and the data directory's privacy, against the real server and its
//! SQLite file: records cut from the trail's end (newest one, all of them, while the server
//! runs or while it is down), a database restored from an older copy, an altered checkpoint,
//! restarts in normal operation, the refresh period, `airlock audit verify`'s exit status, the
//! modes of a data directory an older version left readable, and sealed secrets swapped
//! between two users' rows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_client::ApiClient;
use airlock_testkit::TestServer;
use serde_json::{json, Value};

fn server_dir(server: &TestServer) -> PathBuf {
    server.dir.0.join("server")
}

async fn db(server: &TestServer) -> sqlx::SqlitePool {
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(server_dir(server).join("airlock.db"))
        .busy_timeout(Duration::from_secs(5));
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .unwrap()
}

async fn calls(server: &TestServer, n: usize) {
    let api = server.api();
    for _ in 0..n {
        api.call("Airlock.ListUsers", &json!({})).await.unwrap();
    }
}

async fn verify(server: &TestServer) -> Value {
    server
        .api()
        .call("Airlock.VerifyAudit", &json!({}))
        .await
        .unwrap()
}

fn checkpoint(server: &TestServer) -> Value {
    let text = std::fs::read(server_dir(server).join("audit.checkpoint")).unwrap();
    serde_json::from_slice(&text).unwrap()
}

/// Stops the server and starts a new one on the same data directory (same admin key).
async fn restart(server: &mut TestServer) {
    server.stop().await;
    start_again(server).await;
}

async fn start_again(server: &mut TestServer) {
    let config = airlock_server::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: server_dir(server),
        ..Default::default()
    };
    let running = airlock_server::start(config)
        .await
        .expect("server restarts");
    assert!(running.bootstrap.is_none());
    server.url = running.url.clone();
    server.admin.endpoint = running.url.clone();
    server.server = Some(running);
}

fn assert_status(v: &Value, status: &str) {
    assert_eq!(v["Status"], status, "{v:#}");
    assert_eq!(v["Ok"], false, "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_newest_record_is_named_truncation() {
    let server = TestServer::start().await;
    calls(&server, 5).await;
    let v = verify(&server).await;
    assert_eq!(v["Ok"], true, "{v:#}");
    assert_eq!(v["Status"], "intact", "{v:#}");
    let pool = db(&server).await;
    sqlx::query("DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log)")
        .execute(&pool)
        .await
        .unwrap();
    let v = verify(&server).await;
    assert_status(&v, "truncated");
    assert!(
        v["Problem"]
            .as_str()
            .unwrap()
            .contains("deleted from the end"),
        "{v:#}"
    );
    // It stays named: the checkpoint is not advanced over the hole, and new records leave it.
    calls(&server, 3).await;
    assert_status(&verify(&server).await, "truncated");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_every_record_is_named_truncation_and_survives_a_restart() {
    let mut server = TestServer::start().await;
    calls(&server, 4).await;
    assert_eq!(verify(&server).await["Ok"], true);
    let pool = db(&server).await;
    sqlx::query("DELETE FROM audit_log")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert_status(&verify(&server).await, "truncated");
    restart(&mut server).await;
    assert_status(&verify(&server).await, "truncated");

    // Cut while the server is down: the checkpoint written at shutdown covers the last record.
    let mut other = TestServer::start().await;
    calls(&other, 4).await;
    other.stop().await;
    let pool = db(&other).await;
    sqlx::query("DELETE FROM audit_log WHERE seq > 2")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    start_again(&mut other).await;
    let v = verify(&other).await;
    assert_status(&v, "truncated");
    assert_eq!(v["FirstBadSeq"], 3, "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restored_from_an_older_copy_is_named_rolled_back() {
    let mut server = TestServer::start().await;
    calls(&server, 3).await;
    server.stop().await;
    let dir = server_dir(&server);
    let backup = server.dir.0.join("backup");
    std::fs::create_dir_all(&backup).unwrap();
    for f in ["airlock.db", "airlock.db-wal"] {
        if dir.join(f).exists() {
            std::fs::copy(dir.join(f), backup.join(f)).unwrap();
        }
    }
    start_again(&mut server).await;
    calls(&server, 5).await;
    assert_eq!(verify(&server).await["Ok"], true);
    server.stop().await;
    for f in ["airlock.db", "airlock.db-wal", "airlock.db-shm"] {
        let _ = std::fs::remove_file(dir.join(f));
        if backup.join(f).exists() {
            std::fs::copy(backup.join(f), dir.join(f)).unwrap();
        }
    }
    start_again(&mut server).await;
    let v = verify(&server).await;
    assert_status(&v, "rolled-back");
    assert!(
        v["Problem"].as_str().unwrap().contains("older copy"),
        "{v:#}"
    );
    // The start put it on the record too.
    assert!(v["Warnings"].to_string().contains("missing"), "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_tail_is_named_rolled_back() {
    let mut server = TestServer::start().await;
    calls(&server, 3).await;
    server.stop().await;
    let count = checkpoint(&server)["Count"].as_i64().unwrap();
    let pool = db(&server).await;
    sqlx::query("UPDATE audit_log SET hash = ? WHERE seq = ?")
        .bind("ab".repeat(32))
        .bind(count)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    start_again(&mut server).await;
    assert_status(&verify(&server).await, "rolled-back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_checkpoint_is_named_tampered() {
    let mut server = TestServer::start().await;
    calls(&server, 3).await;
    server.stop().await;
    let path = server_dir(&server).join("audit.checkpoint");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "checkpoint mode {mode:o}");
    // Lowered to hide records cut from the end, keeping the old signature.
    let mut cp = checkpoint(&server);
    cp["Count"] = json!(cp["Count"].as_i64().unwrap() - 1);
    std::fs::write(&path, serde_json::to_vec(&cp).unwrap()).unwrap();
    start_again(&mut server).await;
    let v = verify(&server).await;
    assert_status(&v, "checkpoint-tampered");
    assert!(
        v["Problem"].as_str().unwrap().contains("signature"),
        "{v:#}"
    );
    // The server leaves the evidence alone.
    calls(&server, 2).await;
    assert_status(&verify(&server).await, "checkpoint-tampered");
    // Moving it aside and restarting starts a new checkpoint, and the chain says so.
    server.stop().await;
    std::fs::rename(&path, path.with_extension("old")).unwrap();
    start_again(&mut server).await;
    let v = verify(&server).await;
    assert_eq!(v["Ok"], true, "{v:#}");
    assert!(
        v["Warnings"].to_string().contains("no audit checkpoint"),
        "{v:#}"
    );
}

/// Under a running server the checkpoint it wrote is its own record: one altered on disk (to
/// hide records cut from the end) is put back from it, and logged: the cut is still named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_altered_under_a_running_server_is_restored_and_logged() {
    common::capture_logs();
    let server = TestServer::start().await;
    calls(&server, 3).await;
    assert_eq!(verify(&server).await["Ok"], true);
    let path = server_dir(&server).join("audit.checkpoint");
    let mut cp = checkpoint(&server);
    let count = cp["Count"].as_i64().unwrap();
    cp["Count"] = json!(count - 2);
    std::fs::write(&path, serde_json::to_vec(&cp).unwrap()).unwrap();
    let pool = db(&server).await;
    sqlx::query("DELETE FROM audit_log WHERE seq > ?")
        .bind(count - 2)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert_status(&verify(&server).await, "truncated");
    common::wait_log_line(&[
        &path.display().to_string(),
        "changed or removed while the server ran",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_operation_and_restarts_verify_intact_and_the_checkpoint_keeps_up() {
    let mut server = TestServer::start().await;
    // Many appends at once.
    let api = server.api();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                api.call("Airlock.ListUsers", &json!({})).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Covered within the refresh period (1 s) without anyone asking.
    let pool = db(&server).await;
    let newest: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM audit_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(newest >= 200);
    let started = Instant::now();
    loop {
        // Not there yet at all until the first refresh after the first record.
        let covered = match std::fs::read(server_dir(&server).join("audit.checkpoint")) {
            Ok(text) => serde_json::from_slice::<Value>(&text).unwrap()["Count"]
                .as_i64()
                .unwrap(),
            Err(_) => 0,
        };
        if covered >= newest {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "record {newest} not covered after 5 s (checkpoint at {covered})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    println!("record {newest} covered by the checkpoint {took:?} after it was appended");
    assert!(
        took <= Duration::from_millis(2500),
        "covered after {took:?}"
    );
    pool.close().await;
    for _ in 0..2 {
        restart(&mut server).await;
        calls(&server, 3).await;
        let v = verify(&server).await;
        assert_eq!(v["Ok"], true, "{v:#}");
        assert_eq!(v["Status"], "intact", "{v:#}");
        assert!(v["Warnings"].as_array().unwrap().is_empty(), "{v:#}");
        assert!(
            v["Checkpoint"]["Count"].as_i64().unwrap() >= newest,
            "{v:#}"
        );
    }
}

/// `airlock audit verify`, the binary: exit 0 on an intact chain, 1 naming truncation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exits_1_and_names_truncation() {
    let server = TestServer::start().await;
    calls(&server, 3).await;
    let bin = airlock_testkit::airlock_binary();
    let home = airlock_testkit::TempDir::new();
    let run = |bin: &Path| {
        let out = std::process::Command::new(bin)
            .env("HOME", &home.0)
            .env("AIRLOCK_ENDPOINT", &server.url)
            .env("AIRLOCK_ACCESS_KEY_ID", &server.admin.access_key_id)
            .env("AIRLOCK_SECRET_ACCESS_KEY", &server.admin.secret_access_key)
            .env_remove("AIRLOCK_PROFILE")
            .env_remove("AIRLOCK_CONFIG")
            .args(["audit", "verify"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&bin);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("intact"), "{out}");
    let pool = db(&server).await;
    sqlx::query("DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (code, out) = run(&bin);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("TRUNCATED"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// The data directory

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn assert_private(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            assert_private(&p);
        } else {
            assert_eq!(mode(&p), 0o600, "{} mode {:o}", p.display(), mode(&p));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_private_and_an_open_one_is_closed_on_start() {
    common::capture_logs();
    let mut server = TestServer::start_with(|c| c.tls = airlock_server::TlsMode::SelfSigned).await;
    calls(&server, 2).await;
    // Brings the checkpoint up to date (it is otherwise written within a second).
    assert_eq!(verify(&server).await["Ok"], true);
    let dir = server_dir(&server);
    for f in [
        "airlock.db",
        "airlock.db-wal",
        "airlock.db-shm",
        "master.key",
        "admin-credentials.json",
        "audit.checkpoint",
        "tls/cert.pem",
        "tls/key.pem",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    assert_private(&dir);
    // As an older version left it: the directories 0755, every file 0644.
    server.stop().await;
    fn open_up(p: &Path) {
        let m = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        if p.is_dir() {
            for e in std::fs::read_dir(p).unwrap() {
                open_up(&e.unwrap().path());
            }
        }
    }
    open_up(&dir);
    assert_eq!(mode(&dir.join("airlock.db")), 0o644);
    let config = airlock_server::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.clone(),
        tls: airlock_server::TlsMode::SelfSigned,
        ..Default::default()
    };
    let running = airlock_server::start(config).await.unwrap();
    server.admin.endpoint = running.url.clone();
    server.url = running.url.clone();
    server.server = Some(running);
    calls(&server, 2).await;
    assert_private(&dir);
    // And the log says what was changed.
    let db = dir.join("airlock.db").display().to_string();
    common::wait_log_line(&[&db, "was mode 644", "made it 600"]).await;
    common::wait_log_line(&[&format!("{} was mode 755", dir.display()), "made it 700"]).await;
}

// ---------------------------------------------------------------------------------------------
// Sealed secrets

/// The status and code of a call: signed correctly but not allowed is 400 AccessDenied.
async fn status_of(p: &airlock_client::Profile) -> (u16, String) {
    match ApiClient::new(p.clone())
        .unwrap()
        .call("Airlock.ListUsers", &json!({}))
        .await
    {
        Ok(_) => (200, String::new()),
        Err(airlock_client::ApiError::Service { status, code, .. }) => (status, code),
        Err(e) => panic!("transport error {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_secrets_swapped_between_rows_open_in_neither() {
    common::capture_logs();
    let server = TestServer::start().await;
    let users = [
        server.user("swapa", false).await,
        server.user("swapb", false).await,
    ];
    for p in &users {
        assert_eq!(status_of(p).await, (400, "AccessDeniedException".into()));
    }
    let pool = db(&server).await;
    let mut sealed = Vec::new();
    for p in &users {
        let s: String =
            sqlx::query_scalar("SELECT secret_access_key FROM access_keys WHERE access_key_id = ?")
                .bind(&p.access_key_id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert!(s.starts_with("enc2:"), "{s}");
        sealed.push(s);
    }
    for (i, p) in users.iter().enumerate() {
        sqlx::query("UPDATE access_keys SET secret_access_key = ? WHERE access_key_id = ?")
            .bind(&sealed[1 - i])
            .bind(&p.access_key_id)
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
    for p in &users {
        // Each signs with their own secret; the row now holds the other's, which does not open.
        assert_eq!(status_of(p).await, (500, "InternalServerError".into()));
        common::wait_log_line(&[&p.access_key_id, "does not open", "another row"]).await;
    }
    // The attack it stops: a's secret, moved into b's row, would let a sign as b.
    let as_b = airlock_client::Profile {
        access_key_id: users[1].access_key_id.clone(),
        secret_access_key: users[0].secret_access_key.clone(),
        ..users[0].clone()
    };
    assert_eq!(status_of(&as_b).await, (500, "InternalServerError".into()));
    // The server is still up and serves everyone else, and the broken keys can be deleted.
    let api = server.api();
    api.call("Airlock.ListUsers", &json!({})).await.unwrap();
    for (p, name) in users.iter().zip(["swapa", "swapb"]) {
        api.call(
            "Airlock.DeleteAccessKey",
            &json!({ "UserName": name, "AccessKeyId": p.access_key_id }),
        )
        .await
        .unwrap();
    }
}

mod common;
