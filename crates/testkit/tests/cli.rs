//! Black box: the built `airlock` binary, as a person runs it. `airlock dev` in the background,
//! `airlock start-session` with piped input, `airlock --output json instances list`, Ctrl-C,
//! and a second `airlock dev` on the same state.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use airlock_testkit::{free_port, TempDir};

/// The `airlock` binary of this build, built (or brought up to date) first.
fn airlock_binary() -> PathBuf {
    airlock_testkit::airlock_binary()
}

/// `airlock` with a clean environment: HOME is ours, no profile or credentials leak in.
fn airlock(bin: &Path, home: &Path) -> Command {
    let mut c = Command::new(bin);
    c.env("HOME", home).env("AIRLOCK_LOG", "warn");
    for var in [
        "AIRLOCK_PROFILE",
        "AIRLOCK_ENDPOINT",
        "AIRLOCK_ACCESS_KEY_ID",
        "AIRLOCK_SECRET_ACCESS_KEY",
        "AIRLOCK_CONFIG",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
    ] {
        c.env_remove(var);
    }
    c
}

/// A running `airlock dev` whose stdout lines arrive on a channel; killed on drop.
struct Dev {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Dev {
    fn start(bin: &Path, home: &Path, data: &Path, port: u16) -> Dev {
        let mut child = airlock(bin, home)
            .args(["dev", "--data-dir"])
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Dev {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for the line that tells the person what to type next; returns the instance id.
    fn wait_for_instance(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line
                        .split_once("airlock start-session --target ")
                        .map(|(_, id)| id.trim().to_owned());
                    self.seen.push(line);
                    if let Some(id) = found {
                        return id;
                    }
                }
                Err(_) => panic!(
                    "airlock dev printed no start-session command; printed {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Sends SIGINT (Ctrl-C) and returns the exit status, waiting at most `limit`.
    fn interrupt(&mut self, limit: Duration) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "airlock dev did not stop within {limit:?} of Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to its end (at most `limit`), feeding `stdin`; returns (status, stdout, stderr).
fn run(mut cmd: Command, stdin: &[u8], limit: Duration) -> (Option<i32>, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {limit:?}; stderr so far: {:?}",
                err_t.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    writer.join().unwrap();
    (status.code(), out_t.join().unwrap(), err_t.join().unwrap())
}

/// `airlock --output json instances list`, parsed.
fn instances(bin: &Path, home: &Path) -> serde_json::Value {
    let mut cmd = airlock(bin, home);
    cmd.args(["--output", "json", "instances", "list"]);
    let (code, out, err) = run(cmd, b"", Duration::from_secs(30));
    assert_eq!(code, Some(0), "instances list failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
}

/// The instances listed, whatever the top-level shape of the JSON.
fn listed(v: &serde_json::Value) -> Vec<serde_json::Value> {
    match v {
        serde_json::Value::Array(a) => a.clone(),
        serde_json::Value::Object(o) => o
            .values()
            .find_map(|x| x.as_array().cloned())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn wait_online(bin: &Path, home: &Path, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = instances(bin, home);
        let online = listed(&v)
            .into_iter()
            .find(|i| i["InstanceId"] == id && i["PingStatus"] == "Online");
        if let Some(i) = online {
            return i;
        }
        assert!(Instant::now() < deadline, "{id} never came Online: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn dev_start_session_and_restart_through_the_binary() {
    let bin = airlock_binary();
    let home = TempDir::new();
    let data = home.0.join("dev-data");
    let port = free_port();

    let mut dev = Dev::start(&bin, &home.0, &data, port);
    let id = dev.wait_for_instance();
    assert!(id.starts_with("mi-"), "{id}");
    assert!(
        home.0.join(".airlock").join("config").exists(),
        "airlock dev writes the admin profile under HOME"
    );
    let info = wait_online(&bin, &home.0, &id);
    assert_eq!(info["PlatformType"], "Linux", "{info}");

    // Piped input: no PTY, the output of the commands only, and the remote exit status.
    let mut cmd = airlock(&bin, &home.0);
    cmd.args(["start-session", "--target", &id]);
    let (code, out, err) = run(cmd, b"uname -s\nexit 3\n", Duration::from_secs(60));
    assert!(out.contains("Linux"), "stdout {out:?}, stderr {err:?}");
    assert_eq!(code, Some(3), "stdout {out:?}, stderr {err:?}");

    // The session is in the history, as the CLI shows it to scripts.
    let mut cmd = airlock(&bin, &home.0);
    cmd.args(["--output", "json", "sessions", "list", "--state", "History"]);
    let (code, out, err) = run(cmd, b"", Duration::from_secs(30));
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(out.contains(&id), "{v}");

    // Ctrl-C stops it cleanly, and soon.
    let status = dev.interrupt(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(0),
        "airlock dev exit status: {status:?}"
    );
    drop(dev);

    // Again on the same state: the same agent identity, and it works.
    let mut dev = Dev::start(&bin, &home.0, &data, port);
    let again = dev.wait_for_instance();
    assert_eq!(
        again, id,
        "a second airlock dev reuses the registered agent"
    );
    wait_online(&bin, &home.0, &id);
    let mut cmd = airlock(&bin, &home.0);
    cmd.args(["start-session", "--target", &id]);
    let (code, out, err) = run(cmd, b"echo $((6*7))\n", Duration::from_secs(60));
    assert_eq!(out, "42\n", "stderr {err:?}");
    assert_eq!(code, Some(0));
    let listed_now = listed(&instances(&bin, &home.0));
    assert_eq!(
        listed_now.len(),
        1,
        "no second instance was registered: {listed_now:?}"
    );
    let status = dev.interrupt(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn usage_errors_exit_2_and_bad_credentials_exit_1() {
    let bin = airlock_binary();
    let home = TempDir::new();
    let (code, _, err) = run(
        {
            let mut c = airlock(&bin, &home.0);
            c.args(["start-session"]);
            c
        },
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--target"), "{err}");

    // A server that is not there: a clear message and exit 1, quickly.
    let port = free_port();
    let mut c = airlock(&bin, &home.0);
    c.env("AIRLOCK_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("AIRLOCK_ACCESS_KEY_ID", "AKIAEXAMPLE")
        .env("AIRLOCK_SECRET_ACCESS_KEY", "secret")
        .args(["instances", "list"]);
    let (code, _, err) = run(c, b"", Duration::from_secs(30));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.starts_with("airlock: "), "{err}");
}
