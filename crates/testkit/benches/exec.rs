//! `airlock exec` beside `ssh host cmd`, on loopback: the wall time of running `true` on one
//! host (many runs, median and p90), and on 100 hosts one after another and 16 at a time
//! (`airlock exec --targets tag:… --concurrency N` beside a loop of `ssh host true` and
//! `xargs -P 16`). The Airlock side is the release `airlock` binary (a process per run, as a
//! person or a script runs it) against the real server and real agents in this process (the
//! 100 hosts are 100 agents, each with its own control channel, tagged `Bench=fan`); the ssh
//! side is a private `sshd` ([`airlock_testkit::Sshd`]), each run a new connection (no
//! ControlMaster), with the cipher and options the other benchmarks use. Both sides run the
//! command as the same user ([`bench_user`]); one more row gives ssh
//! a ControlMaster connection already up, as Airlock's agents keep a control channel up.
//!
//! `cargo bench -p airlock-testkit --bench exec` prints a markdown table on stdout (progress on
//! stderr). `AIRLOCK_BENCH_RUNS` (30) sets the single-host runs, `AIRLOCK_BENCH_FAN_RUNS` (3)
//! the fan-out runs, `AIRLOCK_BENCH_HOSTS` (100) the hosts. The contestants take turns run by
//! run, so a machine whose speed drifts favours neither. Without sshd the ssh column reads n/a.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use airlock_testkit::{Sshd, TempDir, TestAgent, TestServer};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `cmd` to its end and returns its wall time; panics unless it succeeded.
fn timed(cmd: &mut Command) -> Duration {
    let started = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    let i = ((s.len() as f64 - 1.0) * p).round() as usize;
    s[i.min(s.len() - 1)]
}

struct Ssh {
    sshd: Sshd,
    /// Where a ControlMaster connection's socket lives (the `ssh -o ControlMaster` row).
    control: std::path::PathBuf,
}

impl Ssh {
    fn args(&self) -> Vec<String> {
        self.args_with(&["ControlMaster=no", "ControlPath=none"])
    }

    /// Through one master connection that stays up (`ControlPersist`): no key exchange or
    /// authentication per command, which is what an agent's standing control channel saves.
    fn multiplexed(&self) -> Command {
        let path = format!("ControlPath={}", self.control.display());
        let mut c = Command::new("ssh");
        c.args(self.args_with(&["ControlMaster=auto", &path, "ControlPersist=300"]))
            .arg("true");
        c
    }

    fn close_master(&self) {
        let path = format!("ControlPath={}", self.control.display());
        let _ = Command::new("ssh")
            .args(self.args_with(&[&path]))
            .args(["-O", "exit"])
            .stderr(Stdio::null())
            .status();
    }

    fn args_with(&self, control: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec!["-F".into(), "/dev/null".into()];
        for o in [
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "BatchMode=yes",
            "LogLevel=ERROR",
            "IdentitiesOnly=yes",
            "Ciphers=aes128-gcm@openssh.com",
        ]
        .iter()
        .chain(control)
        {
            a.push("-o".into());
            a.push((*o).into());
        }
        a.push("-i".into());
        a.push(self.sshd.key.display().to_string());
        a.push("-p".into());
        a.push(self.sshd.port.to_string());
        a.push(format!("{}@127.0.0.1", self.sshd.user));
        a
    }

    /// `ssh host true`.
    fn one(&self) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.args()).arg("true");
        c
    }

    /// `ssh host true` for each host, `parallel` at a time (1: a shell loop, else xargs -P).
    fn many(&self, hosts: usize, parallel: usize) -> Command {
        let ssh = format!("ssh {} true", self.args().join(" "));
        let script = if parallel <= 1 {
            format!("for i in $(seq {hosts}); do {ssh} || exit 1; done")
        } else {
            format!("seq {hosts} | xargs -P {parallel} -I{{}} {ssh}")
        };
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }
}

struct Airlock<'a> {
    bin: &'a Path,
    server: &'a TestServer,
    home: TempDir,
}

impl Airlock<'_> {
    fn exec(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin);
        c.arg("exec")
            .args(args)
            .env("HOME", &self.home.0)
            .env("AIRLOCK_LOG", "warn")
            .env_remove("AIRLOCK_PROFILE")
            .env("AIRLOCK_ENDPOINT", &self.server.url)
            .env("AIRLOCK_ACCESS_KEY_ID", &self.server.admin.access_key_id)
            .env(
                "AIRLOCK_SECRET_ACCESS_KEY",
                &self.server.admin.secret_access_key,
            );
        c
    }
}

/// The user both sides run commands as. As root: `airlock-bench`, created if missing with a
/// fresh home and no password (not locked, so sshd admits it by key), since root's own shell
/// start-up files may do anything (sshd makes bash read `~/.bashrc`; here that starts a pyenv)
/// and the agents' `airlock-user` is locked, which sshd refuses. Otherwise: whoever runs this.
fn bench_user() -> Option<String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if !root {
        return None;
    }
    let name = "airlock-bench";
    let exists = |n: &str| {
        Command::new("getent")
            .args(["passwd", n])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !exists(name) {
        let st = Command::new("useradd")
            .args([
                "-m",
                "-s",
                "/bin/bash",
                "-p",
                "*",
                "-c",
                "Airlock benchmark user",
                name,
            ])
            .status()
            .expect("useradd runs");
        assert!(st.success(), "useradd {name}");
    }
    Some(name.to_owned())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn ratio(a: Duration, b: Option<Duration>) -> String {
    b.map_or("n/a".into(), |b| {
        format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64())
    })
}

fn main() {
    let runs: usize = env_or("AIRLOCK_BENCH_RUNS", 30);
    let fan_runs: usize = env_or("AIRLOCK_BENCH_FAN_RUNS", 3);
    let hosts: usize = env_or("AIRLOCK_BENCH_HOSTS", 100);
    let bin = airlock_testkit::airlock_binary();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    eprintln!("starting the server and {hosts} agents…");
    let user = bench_user();
    let (server, agents): (TestServer, Vec<TestAgent>) = rt.block_on(async {
        let server = TestServer::start().await;
        let out = server
            .api()
            .call(
                "AmazonSSM.CreateActivation",
                &json!({ "IamRole": "Bench", "RegistrationLimit": hosts,
                         "Tags": [{"Key": "Bench", "Value": "fan"}] }),
            )
            .await
            .unwrap();
        let mut agents = Vec::with_capacity(hosts);
        for _ in 0..hosts {
            let state = airlock_agent::register(&airlock_agent::Registration {
                server: server.url.clone(),
                activation_id: out["ActivationId"].as_str().unwrap().into(),
                activation_code: out["ActivationCode"].as_str().unwrap().into(),
                ca_file: None,
            })
            .await
            .unwrap();
            let config = airlock_agent::AgentConfig {
                run_as: user.clone(),
                ..Default::default()
            };
            let agent = TestAgent::spawn(state, config);
            server.wait_online(&agent.instance_id).await;
            agents.push(agent);
        }
        (server, agents)
    });
    let _guard = rt.enter();
    let airlock = Airlock {
        bin: &bin,
        server: &server,
        home: TempDir::new(),
    };
    let ssh_dir = TempDir::new();
    let ssh = Sshd::start(&ssh_dir.0).map(|mut sshd| {
        if let Some(u) = &user {
            sshd.user = u.clone();
        }
        eprintln!("ssh logs in as {}", sshd.user);
        Ssh {
            sshd,
            control: ssh_dir.0.join("cm"),
        }
    });
    if ssh.is_none() {
        eprintln!("no sshd: the ssh column reads n/a");
    }
    let one = agents[0].instance_id.clone();
    let fan_single = ["-t", one.as_str(), "--", "true"];

    // Warm up both (page cache, the server's first session, sshd's first fork).
    timed(&mut airlock.exec(&fan_single));
    if let Some(s) = &ssh {
        timed(&mut s.one());
        // Also starts the master connection, which stays up for the multiplexed runs.
        timed(&mut s.multiplexed());
    }

    eprintln!("one host, {runs} runs each…");
    let (mut a1, mut s1, mut m1) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        a1.push(timed(&mut airlock.exec(&fan_single)));
        if let Some(s) = &ssh {
            s1.push(timed(&mut s.one()));
            m1.push(timed(&mut s.multiplexed()));
        }
    }
    if let Some(s) = &ssh {
        s.close_master();
    }

    let concurrency = |n: usize| n.to_string();
    let fan = |parallel: usize| -> Duration {
        let c = concurrency(parallel);
        let args = [
            "--targets",
            "tag:Bench=fan",
            "--concurrency",
            c.as_str(),
            "--",
            "true",
        ];
        let mut cmd = airlock.exec(&args);
        let started = Instant::now();
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        let took = started.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.contains(&format!("{hosts} ok, 0 failed")),
            "fan-out failed: {err}"
        );
        took
    };
    let mut rows: Vec<(String, Vec<Duration>, Vec<Duration>)> = Vec::new();
    for parallel in [1usize, 16] {
        eprintln!("{hosts} hosts, {parallel} at a time, {fan_runs} runs each…");
        let (mut a, mut s) = (Vec::new(), Vec::new());
        for _ in 0..fan_runs {
            a.push(fan(parallel));
            if let Some(ssh) = &ssh {
                s.push(timed(&mut ssh.many(hosts, parallel)));
            }
        }
        let label = if parallel == 1 {
            format!("`true` on {hosts} hosts, one at a time (ssh: a shell loop)")
        } else {
            format!("`true` on {hosts} hosts, {parallel} at a time (ssh: `xargs -P {parallel}`)")
        };
        rows.push((label, a, s));
    }
    eprintln!("{hosts} hosts, all at once (airlock only)…");
    let all: Vec<Duration> = (0..fan_runs).map(|_| fan(hosts)).collect();

    let med = |v: &[Duration]| (!v.is_empty()).then(|| percentile(v, 0.5));
    println!(
        "\nexec: {} cores, {runs} single-host runs, {fan_runs} fan-out runs (median), {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        Command::new("ssh")
            .arg("-V")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr)
                .split(',')
                .next()
                .unwrap_or("")
                .trim()
                .to_owned())
            .unwrap_or_else(|_| "ssh: not found".into())
    );
    println!();
    println!("| run | airlock exec | ssh | airlock / ssh |");
    println!("|---|---:|---:|---:|");
    for (name, p) in [("median", 0.5), ("p90", 0.9)] {
        let a = percentile(&a1, p);
        let s = (!s1.is_empty()).then(|| percentile(&s1, p));
        println!(
            "| `true` on 1 host, {name} | {} | {} | {} |",
            ms(a),
            s.map_or("n/a".into(), ms),
            ratio(a, s)
        );
    }
    for (name, p) in [("median", 0.5), ("p90", 0.9)] {
        let a = percentile(&a1, p);
        let s = (!m1.is_empty()).then(|| percentile(&m1, p));
        println!(
            "| `true` on 1 host, {name}; ssh through a ControlMaster connection already up | {} | {} | {} |",
            ms(a),
            s.map_or("n/a".into(), ms),
            ratio(a, s)
        );
    }
    for (label, a, s) in &rows {
        let a = med(a).unwrap();
        let s = med(s);
        println!(
            "| {label} | {} | {} | {} |",
            secs(a),
            s.map_or("n/a".into(), secs),
            ratio(a, s)
        );
    }
    println!(
        "| `true` on {hosts} hosts, all at once (`--concurrency {hosts}`) | {} | — | — |",
        secs(med(&all).unwrap())
    );

    rt.block_on(async {
        for a in agents {
            a.stop().await;
        }
    });
    drop(server);
}
