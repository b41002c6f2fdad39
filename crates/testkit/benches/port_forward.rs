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
//! a run down. `AIRLOCK_BENCH_ONLY=airlock` skips the direct and ssh columns (for profiling).
//! Without `/usr/sbin/sshd` the ssh column reads n/a.
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

use airlock_testkit::{TempDir, TestServer};

const OP_UPLOAD: u8 = 0;
const OP_DOWNLOAD: u8 = 1;
const OP_ECHO: u8 = 2;
const BUF: usize = 256 * 1024;
const PARALLEL: usize = 16;
const SETUP_SAMPLES: usize = 100;

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

/// Best-of-`runs` throughput in MB/s (10^6 bytes) of `streams` parallel transfers of `n` bytes
/// in all.
async fn throughput(addr: SocketAddr, op: u8, n: u64, streams: usize, runs: usize) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..runs {
        let started = Instant::now();
        let tasks: Vec<_> = (0..streams)
            .map(|_| tokio::spawn(transfer(addr, op, n / streams as u64)))
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let mbs = n as f64 / 1e6 / started.elapsed().as_secs_f64();
        best = best.max(mbs);
    }
    best
}

/// Median time to open a new connection and get one byte echoed, in milliseconds.
async fn setup_time(addr: SocketAddr) -> f64 {
    let mut samples = Vec::new();
    for _ in 0..SETUP_SAMPLES {
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

/// The `airlock` binary of this build profile (release under `cargo bench`), built first.
fn airlock_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let mut cmd = std::process::Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", "airlock-cli", "--bin", "airlock"]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "building airlock failed");
    profile_dir.join("airlock")
}

/// A private sshd on a loopback port and an `ssh -N -L` through it to `target_port`; returns
/// the forward's local address and the two children (killed on drop).
async fn ssh_forward(
    dir: &Path,
    target_port: u16,
) -> Option<(SocketAddr, tokio::process::Child, tokio::process::Child)> {
    let sshd = Path::new("/usr/sbin/sshd");
    if !sshd.exists() {
        return None;
    }
    for name in ["host_key", "id"] {
        let st = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.join(name))
            .status()
            .unwrap();
        assert!(st.success());
    }
    std::fs::copy(dir.join("id.pub"), dir.join("authorized_keys")).unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (sshd_port, local_port) = (free(), free());
    let user = String::from_utf8(
        std::process::Command::new("id")
            .arg("-un")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let config = format!(
        "Port {sshd_port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
         PidFile {d}/sshd.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nPubkeyAuthentication yes\n\
         PermitRootLogin prohibit-password\nAllowTcpForwarding yes\nLogLevel ERROR\n",
        d = dir.display()
    );
    std::fs::write(dir.join("sshd_config"), config).unwrap();
    let _ = std::fs::create_dir_all("/run/sshd");
    let server = tokio::process::Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_port(sshd_port).await;
    let client = tokio::process::Command::new("ssh")
        .args(["-F", "/dev/null", "-N", "-o", "BatchMode=yes"])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR"])
        .arg("-i")
        .arg(dir.join("id"))
        .arg("-p")
        .arg(sshd_port.to_string())
        .arg("-L")
        .arg(format!("127.0.0.1:{local_port}:127.0.0.1:{target_port}"))
        .arg(format!("{user}@127.0.0.1"))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_port(local_port).await;
    Some((
        SocketAddr::from(([127, 0, 0, 1], local_port)),
        server,
        client,
    ))
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
    ssh: Option<f64>,
    airlock: f64,
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
    let bin = tokio::task::spawn_blocking(airlock_binary).await.unwrap();
    let tport = target().await;
    let direct = SocketAddr::from(([127, 0, 0, 1], tport));

    eprintln!("starting the Airlock server (TLS) and agent");
    let server = TestServer::start_with(|c| c.tls = airlock_server::TlsMode::SelfSigned).await;
    assert!(server.url.starts_with("https://"), "TLS on: {}", server.url);
    let agent = server.agent().await;
    let mut fwd = tokio::process::Command::new(&bin)
        .args([
            "--output",
            "json",
            "port-forward",
            "--target",
            &agent.instance_id,
        ])
        .args(["--remote-port", &tport.to_string()])
        .env("AIRLOCK_ENDPOINT", &server.url)
        .env("AIRLOCK_ACCESS_KEY_ID", &server.admin.access_key_id)
        .env("AIRLOCK_SECRET_ACCESS_KEY", &server.admin.secret_access_key)
        .env("AIRLOCK_CA_FILE", server.admin.ca_file.as_ref().unwrap())
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
    let airlock: SocketAddr = v["LocalAddress"].as_str().unwrap().parse().unwrap();

    let only_airlock = std::env::var("AIRLOCK_BENCH_ONLY").is_ok_and(|v| v == "airlock");
    let dir = TempDir::new();
    let ssh = if only_airlock {
        None
    } else {
        ssh_forward(&dir.0, tport).await
    };
    let ssh_addr = ssh.as_ref().map(|s| s.0);

    let mut rows = Vec::new();
    for (what, op, streams) in [
        ("1 stream, client → target", OP_UPLOAD, 1),
        ("1 stream, target → client", OP_DOWNLOAD, 1),
        ("16 streams, client → target", OP_UPLOAD, PARALLEL),
        ("16 streams, target → client", OP_DOWNLOAD, PARALLEL),
    ] {
        eprintln!("{what}: {mib} MiB, best of {runs}");
        let d = if only_airlock {
            f64::NAN
        } else {
            throughput(direct, op, n, streams, runs).await
        };
        let s = match ssh_addr {
            Some(a) => Some(throughput(a, op, n, streams, runs).await),
            None => None,
        };
        let a = throughput(airlock, op, n, streams, runs).await;
        eprintln!("  direct {d:.0}  ssh {s:?}  airlock {a:.0} MB/s");
        rows.push(Row {
            what: what.to_owned(),
            direct: d,
            ssh: s,
            airlock: a,
            unit: "MB/s",
            higher_is_better: true,
        });
    }
    eprintln!("new stream on an open forward: {SETUP_SAMPLES} samples");
    let d = setup_time(direct).await;
    let s = match ssh_addr {
        Some(a) => Some(setup_time(a).await),
        None => None,
    };
    let a = setup_time(airlock).await;
    rows.push(Row {
        what: "new stream: connect + 1 byte echoed (median)".into(),
        direct: d,
        ssh: s,
        airlock: a,
        unit: "ms",
        higher_is_better: false,
    });

    println!(
        "\n| loopback, {mib} MiB per run, best of {runs} | direct | ssh -L | airlock port-forward (TLS) | airlock / ssh -L | airlock / direct |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
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
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.what,
            fmt(r.direct),
            r.ssh.map_or("n/a".into(), fmt),
            fmt(r.airlock),
            r.ssh.map_or("n/a".into(), |s| ratio(r.airlock, s)),
            ratio(r.airlock, r.direct),
        );
    }
    let _ = fwd.start_kill();
    drop(ssh);
    agent.stop().await;
}
