//! Port-forwarding benchmark on loopback: `airlock port-forward` (the release binary, against
//! the real server with TLS and the real agent in this process) beside `ssh -L` through a
//! private `sshd` and beside a direct loopback connection, all measured in the same run with
//! the same traffic generator and sink.
//!
//! * single-stream throughput, each way (client to target, target to client);
//! * 16 parallel streams through the one forward (aggregate);
//! * set-up time of a new stream on an open forward: connect, one byte there and back.
//!
//! `cargo bench -p airlock-testkit --bench port_forward` prints one markdown table on stdout
//! (progress on stderr). `AIRLOCK_BENCH_MIB` sets the bytes per run (1024); every figure is the
//! best of `AIRLOCK_BENCH_RUNS` runs (3), since other work on a shared machine only ever slows
//! a run down; the contestants take turns run by run, so a machine whose speed drifts during a
//! row favours none of them. `AIRLOCK_BENCH_ONLY=airlock` skips the direct and ssh columns (for profiling),
//! `AIRLOCK_BENCH_SETUP_SAMPLES` sets how many new streams are timed (100), and
//! `AIRLOCK_BENCH_PLAIN=1` runs the same deployment on plain HTTP to show what TLS costs.
//! Without `/usr/sbin/sshd` the ssh column reads n/a. The server and the agent run as processes of
//! their own (`airlock server`, `airlock agent run`), like sshd; the CPU columns add up user +
//! system time of every process of a contestant (ssh + sshd and its children; port-forward +
//! server + agent) per GB moved.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use airlock_testkit::{free_port, Sshd, TempDir};

/// The cipher `ssh -L` uses: the one the figures to beat were measured with (AES-NI makes it
/// OpenSSH's fastest here), not its default chacha20-poly1305.
const SSH_CIPHER: &str = "aes128-gcm@openssh.com";

const OP_UPLOAD: u8 = 0;
const OP_DOWNLOAD: u8 = 1;
const OP_ECHO: u8 = 2;
const BUF: usize = 256 * 1024;
const PARALLEL: usize = 16;
/// Samples of the new-stream time (`AIRLOCK_BENCH_SETUP_SAMPLES`, e.g. more to profile it).
fn setup_samples() -> usize {
    std::env::var("AIRLOCK_BENCH_SETUP_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(100)
}

/// The target: each connection starts with `op u8, n u64`; upload reads n bytes and answers one
/// byte, download sends n bytes, echo echoes one byte at a time until EOF.
async fn target() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = l.accept().await else {
                return;
            };
            let _ = c.set_nodelay(true);
            tokio::spawn(async move {
                let op = c.read_u8().await?;
                let n = c.read_u64().await?;
                let mut buf = vec![0u8; BUF];
                match op {
                    OP_UPLOAD => {
                        let mut left = n;
                        while left > 0 {
                            let want = left.min(BUF as u64) as usize;
                            let got = c.read(&mut buf[..want]).await?;
                            if got == 0 {
                                break;
                            }
                            left -= got as u64;
                        }
                        c.write_u8(1).await?;
                    }
                    OP_DOWNLOAD => {
                        let mut left = n;
                        while left > 0 {
                            let len = left.min(BUF as u64) as usize;
                            c.write_all(&buf[..len]).await?;
                            left -= len as u64;
                        }
                    }
                    _ => loop {
                        let got = c.read(&mut buf).await?;
                        if got == 0 {
                            break;
                        }
                        c.write_all(&buf[..got]).await?;
                    },
                }
                c.shutdown().await?;
                Ok::<_, std::io::Error>(())
            });
        }
    });
    port
}

/// Moves `n` bytes one way over a new connection to `addr`; returns seconds taken.
async fn transfer(addr: SocketAddr, op: u8, n: u64) -> f64 {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.set_nodelay(true).unwrap();
    let started = Instant::now();
    c.write_u8(op).await.unwrap();
    c.write_u64(n).await.unwrap();
    let mut buf = vec![0u8; BUF];
    if op == OP_UPLOAD {
        let mut left = n;
        while left > 0 {
            let len = left.min(BUF as u64) as usize;
            c.write_all(&buf[..len]).await.unwrap();
            left -= len as u64;
        }
        assert_eq!(c.read_u8().await.unwrap(), 1, "the target got everything");
    } else {
        let mut left = n;
        while left > 0 {
            let got = c.read(&mut buf).await.unwrap();
            assert!(got > 0, "the stream ended {left} bytes short");
            left -= got as u64;
        }
    }
    started.elapsed().as_secs_f64()
}

/// Throughput in MB/s (10^6 bytes) of one run of `streams` parallel transfers of `n` bytes in
/// all.
async fn throughput(addr: SocketAddr, op: u8, n: u64, streams: usize) -> f64 {
    let started = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|_| tokio::spawn(transfer(addr, op, n / streams as u64)))
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / 1e6 / started.elapsed().as_secs_f64()
}

/// Median time to open a new connection and get one byte echoed, in milliseconds.
async fn setup_time(addr: SocketAddr) -> f64 {
    let mut samples = Vec::new();
    for _ in 0..setup_samples() {
        let started = Instant::now();
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.set_nodelay(true).unwrap();
        c.write_u8(OP_ECHO).await.unwrap();
        c.write_u64(0).await.unwrap();
        c.write_u8(7).await.unwrap();
        assert_eq!(c.read_u8().await.unwrap(), 7);
        samples.push(started.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[samples.len() / 2]
}

/// A private sshd on a loopback port and an `ssh -N -L` through it to `target_port`; returns
/// the forward's local address, the server and the client (both stopped on drop).
async fn ssh_forward(
    dir: &Path,
    target_port: u16,
) -> Option<(SocketAddr, Sshd, tokio::process::Child)> {
    let sshd = Sshd::start(dir)?;
    let local_port = free_port();
    let client = tokio::process::Command::new("ssh")
        .args(["-F", "/dev/null", "-N", "-o", "BatchMode=yes"])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR"])
        .args(["-c", SSH_CIPHER])
        .arg("-i")
        .arg(&sshd.key)
        .arg("-p")
        .arg(sshd.port.to_string())
        .arg("-L")
        .arg(format!("127.0.0.1:{local_port}:127.0.0.1:{target_port}"))
        .arg(format!("{}@127.0.0.1", sshd.user))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_port(local_port).await;
    Some((SocketAddr::from(([127, 0, 0, 1], local_port)), sshd, client))
}

async fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "port {port} did not open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Row {
    what: String,
    direct: f64,
    ssh: Option<Figure>,
    airlock: Figure,
    unit: &'static str,
    higher_is_better: bool,
}

fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

/// CPU seconds (user + system) that the processes `roots` and all their descendants have used
/// so far: how much machine each contestant spends per byte, whatever the wall clock says.
fn cpu_seconds(roots: &[u32]) -> f64 {
    let mut parent = std::collections::HashMap::new();
    let mut ticks = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name, which is in parentheses and may hold spaces.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let (Some(ppid), Some(ut), Some(st)) = (f.get(1), f.get(11), f.get(12)) else {
            continue;
        };
        parent.insert(pid, ppid.parse::<u32>().unwrap_or(0));
        ticks.insert(
            pid,
            ut.parse::<u64>().unwrap_or(0) + st.parse::<u64>().unwrap_or(0),
        );
    }
    let counted = |mut pid: u32| loop {
        if roots.contains(&pid) {
            return true;
        }
        match parent.get(&pid) {
            Some(&p) if p > 1 && p != pid => pid = p,
            _ => return false,
        }
    };
    let total: u64 = ticks
        .iter()
        .filter(|(pid, _)| counted(**pid))
        .map(|(_, t)| *t)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    total as f64 / hz
}

/// `AIRLOCK_BENCH_PLAIN=1`: the same deployment on plain HTTP (`ws://`), to see what TLS on
/// the two hops costs. Not the benchmark's figure: the target is measured with TLS on.
fn plain_http() -> bool {
    std::env::var("AIRLOCK_BENCH_PLAIN").is_ok_and(|v| v == "1")
}

/// `airlock server` (TLS, self-signed) and `airlock agent run`, each a process of its own as
/// in production, so that the gateway and the agent get the scheduler's share that sshd gets
/// instead of sharing this process's runtime with the traffic generator.
struct Deployment {
    _dir: TempDir,
    server: tokio::process::Child,
    agent: tokio::process::Child,
    url: String,
    ca_file: PathBuf,
    access_key_id: String,
    secret_access_key: String,
    instance_id: String,
}

impl Deployment {
    async fn start(bin: &Path) -> Deployment {
        let dir = TempDir::new();
        let port = free_port();
        let data = dir.0.join("server");
        let plain = plain_http();
        let mut server = tokio::process::Command::new(bin)
            .arg("server")
            .args(if plain {
                &[][..]
            } else {
                &["--self-signed"][..]
            })
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data)
            .env("AIRLOCK_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let banner =
            airlock_testkit::deployment::read_banner(server.stdout.take().unwrap(), !plain).await;
        let (url, ca_file) = (banner.url, banner.cert.unwrap_or_default());
        let creds: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(data.join("admin-credentials.json")).unwrap(),
        )
        .unwrap();
        let profile = airlock_client::Profile {
            endpoint: url.clone(),
            access_key_id: creds["AccessKeyId"].as_str().unwrap().into(),
            secret_access_key: creds["SecretAccessKey"].as_str().unwrap().into(),
            region: "us-east-1".into(),
            ca_file: (!plain).then(|| ca_file.clone()),
            session_token: None,
        };
        let api = airlock_client::ApiClient::new(profile.clone()).unwrap();
        let act = api
            .call(
                "AmazonSSM.CreateActivation",
                &serde_json::json!({ "IamRole": "Bench", "RegistrationLimit": 1 }),
            )
            .await
            .unwrap();
        let state = dir.0.join("agent.json");
        let st = tokio::process::Command::new(bin)
            .args(["agent", "register", "--server", &url])
            .args(["--activation-id", act["ActivationId"].as_str().unwrap()])
            .args(["--activation-code", act["ActivationCode"].as_str().unwrap()])
            .args(if plain {
                Vec::new()
            } else {
                vec!["--ca-file".into(), ca_file.clone().into_os_string()]
            })
            .arg("--state")
            .arg(&state)
            .env("AIRLOCK_LOG", "warn")
            .stdout(Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(st.success(), "airlock agent register");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
        let instance_id = v["InstanceId"].as_str().unwrap().to_owned();
        let agent = tokio::process::Command::new(bin)
            .args(["agent", "run", "--state"])
            .arg(&state)
            .env("AIRLOCK_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = api
                .call(
                    "AmazonSSM.DescribeInstanceInformation",
                    &serde_json::json!({}),
                )
                .await
                .unwrap();
            let online = out["InstanceInformationList"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|i| i["InstanceId"] == instance_id.as_str() && i["PingStatus"] == "Online");
            if online {
                break;
            }
            assert!(Instant::now() < deadline, "the agent did not come online");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Deployment {
            _dir: dir,
            server,
            agent,
            url,
            ca_file,
            access_key_id: profile.access_key_id,
            secret_access_key: profile.secret_access_key,
            instance_id,
        }
    }
}

/// One contestant: where to connect, and the processes whose CPU it costs.
struct Contestant {
    addr: SocketAddr,
    pids: Vec<u32>,
}

/// A row's figures for one contestant: the value, and CPU seconds per GB moved (throughput rows).
#[derive(Clone, Copy)]
struct Figure {
    value: f64,
    cpu_per_gb: Option<f64>,
}

/// One contestant's figures for a row: its best run, and CPU per GB over all its runs. The
/// contestants' runs are interleaved (direct, ssh, airlock, direct, …), so that a machine
/// that speeds up or slows down during a row favours none of them.
#[derive(Default)]
struct Tally {
    best: f64,
    cpu: f64,
    gb: f64,
    counted: bool,
}

impl Tally {
    async fn run(&mut self, c: &Contestant, op: u8, n: u64, streams: usize) {
        let before = cpu_seconds(&c.pids);
        let value = throughput(c.addr, op, n, streams).await;
        self.cpu += cpu_seconds(&c.pids) - before;
        self.gb += n as f64 / 1e9;
        self.best = self.best.max(value);
        self.counted = !c.pids.is_empty();
    }

    fn figure(&self) -> Figure {
        Figure {
            value: self.best,
            cpu_per_gb: self.counted.then_some(self.cpu / self.gb),
        }
    }
}

async fn run() {
    let mib: u64 = std::env::var("AIRLOCK_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let runs: usize = std::env::var("AIRLOCK_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let n = mib << 20;
    let bin = tokio::task::spawn_blocking(airlock_testkit::airlock_binary)
        .await
        .unwrap();
    let tport = target().await;
    let direct = Contestant {
        addr: SocketAddr::from(([127, 0, 0, 1], tport)),
        pids: Vec::new(),
    };

    let transport = if plain_http() {
        "plain HTTP, no TLS"
    } else {
        "TLS"
    };
    eprintln!("starting `airlock server` ({transport}) and `airlock agent run`");
    let dep = Deployment::start(&bin).await;
    assert!(
        plain_http() || dep.url.starts_with("https://"),
        "TLS on: {}",
        dep.url
    );
    let mut fwd = tokio::process::Command::new(&bin)
        .args([
            "--output",
            "json",
            "port-forward",
            "--target",
            &dep.instance_id,
        ])
        .args(["--remote-port", &tport.to_string()])
        .env("AIRLOCK_ENDPOINT", &dep.url)
        .env("AIRLOCK_ACCESS_KEY_ID", &dep.access_key_id)
        .env("AIRLOCK_SECRET_ACCESS_KEY", &dep.secret_access_key)
        .envs((!plain_http()).then_some(("AIRLOCK_CA_FILE", &dep.ca_file)))
        .env("AIRLOCK_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(fwd.stdout.take().unwrap())
        .read_line(&mut line)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let airlock = Contestant {
        addr: v["LocalAddress"].as_str().unwrap().parse().unwrap(),
        pids: [fwd.id(), dep.server.id(), dep.agent.id()]
            .into_iter()
            .flatten()
            .collect(),
    };

    let only_airlock = std::env::var("AIRLOCK_BENCH_ONLY").is_ok_and(|v| v == "airlock");
    let dir = TempDir::new();
    let ssh = if only_airlock {
        None
    } else {
        ssh_forward(&dir.0, tport).await
    };
    let ssh_c = ssh.as_ref().map(|(addr, server, client)| Contestant {
        addr: *addr,
        pids: [Some(server.pid()), client.id()]
            .into_iter()
            .flatten()
            .collect(),
    });

    let mut rows = Vec::new();
    for (what, op, streams) in [
        ("1 stream, client → target", OP_UPLOAD, 1),
        ("1 stream, target → client", OP_DOWNLOAD, 1),
        ("16 streams, client → target", OP_UPLOAD, PARALLEL),
        ("16 streams, target → client", OP_DOWNLOAD, PARALLEL),
    ] {
        eprintln!("{what}: {mib} MiB, best of {runs}");
        let (mut d, mut s, mut a) = (Tally::default(), Tally::default(), Tally::default());
        for _ in 0..runs {
            if !only_airlock {
                d.run(&direct, op, n, streams).await;
            }
            if let Some(c) = &ssh_c {
                s.run(c, op, n, streams).await;
            }
            a.run(&airlock, op, n, streams).await;
        }
        let d = if only_airlock {
            Figure {
                value: f64::NAN,
                cpu_per_gb: None,
            }
        } else {
            d.figure()
        };
        let s = ssh_c.as_ref().map(|_| s.figure());
        let a = a.figure();
        eprintln!(
            "  direct {:.0}  ssh {:?}  airlock {:.0} MB/s",
            d.value,
            s.map(|s| s.value),
            a.value
        );
        rows.push(Row {
            what: what.to_owned(),
            direct: d.value,
            ssh: s,
            airlock: a,
            unit: "MB/s",
            higher_is_better: true,
        });
    }
    eprintln!("new stream on an open forward: {} samples", setup_samples());
    let d = setup_time(direct.addr).await;
    let s = match &ssh_c {
        Some(c) => Some(setup_time(c.addr).await),
        None => None,
    };
    let a = setup_time(airlock.addr).await;
    let plain = |value| Figure {
        value,
        cpu_per_gb: None,
    };
    rows.push(Row {
        what: "new stream: connect + 1 byte echoed (median)".into(),
        direct: d,
        ssh: s.map(plain),
        airlock: plain(a),
        unit: "ms",
        higher_is_better: false,
    });

    println!(
        "\n| loopback, {mib} MiB per run, best of {runs} | direct | ssh -L ({SSH_CIPHER}) | airlock port-forward ({transport}) | airlock / ssh -L | airlock / direct | CPU s per GB: ssh -L | CPU s per GB: airlock |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let fmt = |v: f64| {
            if r.unit == "ms" {
                format!("{v:.3} ms")
            } else {
                format!("{v:.0} {}", r.unit)
            }
        };
        let ratio = |num: f64, den: f64| {
            if r.higher_is_better {
                format!("{:.2}×", num / den)
            } else {
                format!("{:.2}× the time", num / den)
            }
        };
        let cpu = |f: Option<Figure>| {
            f.and_then(|f| f.cpu_per_gb)
                .map_or("–".into(), |c| format!("{c:.2}"))
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.what,
            fmt(r.direct),
            r.ssh.map_or("n/a".into(), |s| fmt(s.value)),
            fmt(r.airlock.value),
            r.ssh
                .map_or("n/a".into(), |s| ratio(r.airlock.value, s.value)),
            ratio(r.airlock.value, r.direct),
            cpu(r.ssh),
            cpu(Some(r.airlock)),
        );
    }
    let _ = fwd.start_kill();
    drop(ssh);
    drop(dep);
}
