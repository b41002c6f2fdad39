//! End-to-end benchmark on loopback: Airlock (the real server and agent in this process,
//! sessions driven by the client's session driver) beside OpenSSH (a private `sshd` child on a
//! free 127.0.0.1 port with its own keys and config), measured in the same run.
//!
//! Airlock is measured twice: over `wss://` (TLS, as a real deployment runs) and over plain
//! `ws://` (the loopback default). OpenSSH logs in as airlock-user when it exists, the account
//! Airlock's shells run as, so both start the same shell with the same dot files.
//!
//! * throughput: `cat` of a large file through a shell session, without and with a PTY
//!   (`ssh host cat f` and `ssh -tt host 'stty -echo; cat f'` as the peers), first byte to
//!   last byte at the client, with a local `cat f` into a pipe as the floor;
//! * keystroke round trip: one byte typed into `stty raw -echo; cat` until it comes back;
//! * session set-up: StartSession to the outcome of a shell told `exit 0`, beside `ssh host true`.
//!
//! `cargo bench -p airlock-testkit --bench e2e` prints one markdown table (progress and
//! per-run figures go to stderr). `AIRLOCK_BENCH_MIB` sets the file size (256, kept in /tmp
//! between runs); `AIRLOCK_BENCH_RUNS` the `cat` runs per subject (3);
//! `AIRLOCK_BENCH_ONLY` picks parts (`cat,keys,setup,busy`);
//! `AIRLOCK_BENCH_SSH_USER` the ssh login. Without `/usr/sbin/sshd` the OpenSSH column reads n/a.
//!
//! `AIRLOCK_BENCH_RECORDING=1` measures what session recording costs instead (issue 11): three
//! TLS deployments in the same run — recording off, recording to the file store, recording to S3
//! (a real `moto_server`, from `AIRLOCK_TEST_MOTO` or target/pyenv) — with ratios against "off",
//! plus the bytes a busy interactive shell stores per hour (`busy` part).
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use airlock_client::session::{Input, Output, SessionOptions};
use airlock_client::ApiClient;
use airlock_testkit::{TempDir, TestServer, TestSession};

/// Characters per line of the test file, newline included (a PTY turns each `\n` into `\r\n`).
const LINE: usize = 128;
/// Runs of each `cat`; the median is reported.
const CAT_RUNS: usize = 3;

/// Keystrokes typed before measuring, then measured.
const KEY_WARMUP: usize = 200;
const KEY_SAMPLES: usize = 2000;
/// Rounds of keystroke samples, the subjects taking turns.
const KEY_ROUNDS: usize = 4;
/// Wall-clock cap of one keystroke series.
const KEY_BUDGET: Duration = Duration::from_secs(30);
/// New sessions timed (after one untimed).
const SETUP_RUNS: usize = 10;
/// Longest any single step may take before the bench gives up on it.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
const SSHD: &str = "/usr/sbin/sshd";

/// What is measured: an Airlock deployment or OpenSSH.
trait Subject {
    fn name(&self) -> &str;
    /// `cat` of the file, first byte to last byte at the client.
    fn cat(&self, file: &TestFile, pty: bool) -> Transfer;
    /// Round trips of single bytes through `stty raw -echo; cat`.
    fn keystrokes(&self) -> Vec<Duration>;
    /// Wall time of a new session running a command that exits at once.
    fn setup_once(&self) -> Duration;
}

/// Where a deployment records (recording mode).
#[derive(Clone, Copy)]
enum Rec {
    Off,
    File,
    /// S3 at this loopback port (moto).
    S3(u16),
}

/// The bucket moto serves the S3 deployment.
const MOTO_BUCKET: &str = "airlock-bench";
/// Seconds of the busy shell whose storage is measured.
const BUSY_SECS: u64 = 20;

/// A real S3-compatible server for the S3 deployment: `moto_server` on a free loopback port
/// (killed on drop), with the bucket created.
struct Moto {
    port: u16,
    _child: ChildGuard,
}

impl Moto {
    fn start(rt: &tokio::runtime::Runtime) -> Moto {
        let bin = std::env::var_os("AIRLOCK_TEST_MOTO")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv/bin/moto_server")
            });
        let port = airlock_testkit::free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (run ./scripts/test once to install it)",
                    bin.display()
                )
            });
        let child = ChildGuard(child);
        // The server's S3 client signs with the standard variables (moto accepts any key).
        std::env::set_var("AWS_ACCESS_KEY_ID", "bench");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "bench");
        let url = format!("http://127.0.0.1:{port}/{MOTO_BUCKET}");
        rt.block_on(async {
            let http = reqwest::Client::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !http
                .put(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                assert!(
                    Instant::now() < deadline,
                    "moto_server did not answer within 30 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Moto {
            port,
            _child: child,
        }
    }
}

/// Per subject: (transfer, CPU) of every `cat` run, keystroke samples, set-up samples.
#[derive(Default)]
struct Figures {
    plain: Vec<(Transfer, Duration)>,
    pty: Vec<(Transfer, Duration)>,
    keys: Vec<Duration>,
    setup: Vec<Duration>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; criterion-style filters are not supported. Instead:
    // AIRLOCK_BENCH_MIB (file size, 256), AIRLOCK_BENCH_ONLY (any of cat,keys,setup,busy).
    let mib: u64 = env_or("AIRLOCK_BENCH_MIB", 256);
    // AIRLOCK_BENCH_RUNS: `cat` runs per subject (3); more steady the medians on a busy machine.
    let cat_runs: usize = env_or("AIRLOCK_BENCH_RUNS", CAT_RUNS).max(1);
    let only: String = env_or("AIRLOCK_BENCH_ONLY", "cat,keys,setup,busy".to_owned());
    let part = |p: &str| only.split(',').any(|o| o.trim() == p);
    let file = TestFile::ensure(mib << 20);
    println!(
        "e2e: {} cores, {}, file {} ({} MiB, {} lines)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        ssh_version().unwrap_or_else(|| "ssh: not found".into()),
        file.path.display(),
        mib,
        file.lines()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let recording_mode = std::env::var("AIRLOCK_BENCH_RECORDING").is_ok_and(|v| v == "1");
    // Normal mode: TLS (what a real server uses) and plain ws (the default on loopback), beside
    // OpenSSH. Recording mode: three TLS deployments that differ only in where (or whether)
    // they record. All stay up for the whole run so that runs can be interleaved.
    let moto = if recording_mode {
        Some(Moto::start(&rt))
    } else {
        None
    };
    let start = |tls: bool, rec: Rec| {
        rt.block_on(async {
            let server = TestServer::start_with(|c| {
                if tls {
                    c.tls = airlock_server::TlsMode::SelfSigned;
                }
                if let Rec::S3(port) = rec {
                    c.recording.s3_endpoint = Some(format!("http://127.0.0.1:{port}"));
                    c.recording.s3_region = Some("us-east-1".into());
                }
            })
            .await;
            let mut p = (*server.state().preferences.get()).clone();
            match rec {
                Rec::Off => p.record_sessions = false,
                Rec::File => {}
                Rec::S3(_) => p.s3_bucket_name = MOTO_BUCKET.into(),
            }
            server.state().preferences.set(p);
            let agent = server.agent().await;
            (server, agent)
        })
    };
    let plan: Vec<(&str, bool, Rec)> = match &moto {
        Some(m) => vec![
            ("recording off", true, Rec::Off),
            ("file store", true, Rec::File),
            ("S3 (moto)", true, Rec::S3(m.port)),
        ],
        None => vec![
            ("Airlock (wss, TLS)", true, Rec::File),
            ("Airlock (ws, plain)", false, Rec::File),
        ],
    };
    let deployments: Vec<(&str, TestServer, airlock_testkit::TestAgent)> = plan
        .iter()
        .map(|&(name, tls, rec)| {
            let (server, agent) = start(tls, rec);
            (name, server, agent)
        })
        .collect();
    let apis: Vec<ApiClient> = deployments.iter().map(|d| d.1.api()).collect();
    let airlock: Vec<Airlock<'_>> = deployments
        .iter()
        .zip(&apis)
        .map(|(d, api)| Airlock {
            name: d.0,
            rt: &rt,
            api,
            target: &d.2.instance_id,
        })
        .collect();
    // Warm every path (first session, page cache of the file, sshd's first fork). The agent
    // has created airlock-user by the time sshd starts.
    eprintln!("warming up");
    for s in &airlock {
        s.setup_once();
    }
    let sshd = match Sshd::start() {
        _ if recording_mode => None,
        Ok(s) => Some(s),
        Err(e) => {
            println!("OpenSSH peer unavailable ({e}); its column reads n/a");
            println!("  (Debian: apt-get install -y openssh-server)");
            None
        }
    };
    // The CPU columns count the peer's processes too: sshd's tree, or in recording mode the S3
    // server (moto, Python), which shares the two cores with Airlock.
    let sshd_pid = sshd
        .as_ref()
        .map(|s| s.child.id())
        .or_else(|| moto.as_ref().map(|m| m._child.0.id()));
    let mut subjects: Vec<Box<dyn Subject + '_>> = airlock
        .iter()
        .map(|a| Box::new(*a) as Box<dyn Subject + '_>)
        .collect();
    if let Some(s) = &sshd {
        s.setup_once();
        subjects.push(Box::new(s));
    }
    let mut figs: Vec<Figures> = subjects.iter().map(|_| Figures::default()).collect();
    let _ = cat_local(&file.path);

    let mut floor = Vec::new();
    if part("cat") {
        eprintln!("throughput: {cat_runs} × cat of {mib} MiB, each subject in turn");
        for _ in 0..cat_runs {
            floor.push(measure_cpu(sshd_pid, || cat_local(&file.path)));
            for pty in [false, true] {
                for (s, f) in subjects.iter().zip(figs.iter_mut()) {
                    let m = measure_cpu(sshd_pid, || s.cat(&file, pty));
                    eprintln!(
                        "  {:<20} {}: {:>7.1} MiB/s, CPU {:.2} s, {} reads of {:.0} B on average",
                        s.name(),
                        if pty { "PTY   " } else { "no PTY" },
                        m.0.rate(file.len),
                        m.1.as_secs_f64(),
                        m.0.chunks,
                        m.0.bytes as f64 / m.0.chunks.max(1) as f64,
                    );
                    if pty { &mut f.pty } else { &mut f.plain }.push(m);
                }
            }
        }
    }

    if part("keys") {
        eprintln!(
            "keystroke round trip: {KEY_ROUNDS} rounds of {KEY_WARMUP} + {KEY_SAMPLES} bytes, subjects in turn"
        );
        // Rounds interleave the subjects, so a burst of other load on the machine does not
        // land on one subject's samples only.
        for round in 0..KEY_ROUNDS {
            for (s, f) in subjects.iter().zip(figs.iter_mut()) {
                let keys = s.keystrokes();
                let q = |q| micros(percentile(&keys, q));
                let slow = keys.iter().filter(|d| d.as_micros() > 1000).count();
                eprintln!(
                    "  {round} {:<20} p50 {:.0} p90 {:.0} p99 {:.0} p99.9 {:.0} max {:.0} µs; {slow} of {} over 1 ms",
                    s.name(),
                    q(0.5),
                    q(0.9),
                    q(0.99),
                    q(0.999),
                    q(1.0),
                    keys.len()
                );
                f.keys.extend(keys);
            }
        }
    }

    if part("setup") {
        eprintln!("session set-up: {SETUP_RUNS} new sessions each, in turn");
        for _ in 0..SETUP_RUNS {
            for (s, f) in subjects.iter().zip(figs.iter_mut()) {
                f.setup.push(s.setup_once());
            }
        }
    }

    drop(subjects);
    // What a busy interactive shell stores per hour (recording mode): listings and a pause,
    // for BUSY_SECS, then the recording's stored bytes (chunks and manifest) scaled to an hour.
    let mut busy: Vec<(String, f64, f64)> = Vec::new();
    if recording_mode && part("busy") {
        for a in airlock.iter().skip(1) {
            let (bytes, output, secs) = a.busy_shell();
            eprintln!("  {:<20} busy shell: {bytes} bytes stored for {output} bytes of output in {secs:.1} s", a.name);
            busy.push((
                a.name.to_owned(),
                bytes as f64 * 3600.0 / secs,
                bytes as f64 / output.max(1) as f64,
            ));
        }
    }
    for (name, s, _) in &deployments {
        let dir = s.dir.0.join("server/recordings");
        eprintln!(
            "recordings ({name}): {} bytes in the file store",
            dir_bytes(&dir)
        );
    }
    drop(airlock);
    rt.block_on(async {
        for (_, mut server, agent) in deployments {
            agent.stop().await;
            server.stop().await;
        }
    });
    drop(moto);
    let ssh_user = sshd.as_ref().map(|s| s.user.clone());
    drop(sshd);

    // The reference the ratios are taken against: OpenSSH, or "recording off".
    let reference = if recording_mode {
        Some(0)
    } else {
        (figs.len() > plan.len()).then_some(plan.len())
    };
    let mut names: Vec<String> = plan.iter().map(|p| p.0.to_owned()).collect();
    if !recording_mode {
        names.push("OpenSSH".into());
        figs.resize_with(names.len(), Figures::default);
    }
    let len = file.len;
    // The run of median throughput: its rate, and the CPU time it took.
    let median_run = move |v: &[(Transfer, Duration)]| {
        (!v.is_empty()).then(|| median_by(v.iter().copied(), |m| m.0.rate(len)))
    };
    let quantile = |v: &[Duration], q: f64| (!v.is_empty()).then(|| percentile(v, q));
    type Metric = (String, bool, Box<dyn Fn(&Figures) -> Option<f64>>);
    let metrics: Vec<Metric> = vec![
        (
            format!("`cat` {mib} MiB, no PTY (MiB/s)"),
            true,
            Box::new(move |f: &Figures| median_run(&f.plain).map(|m| m.0.rate(len))),
        ),
        (
            "… CPU time of that run, all processes (s)".into(),
            false,
            Box::new(move |f: &Figures| median_run(&f.plain).map(|m| m.1.as_secs_f64())),
        ),
        (
            format!("`cat` {mib} MiB, PTY (MiB/s of file)"),
            true,
            Box::new(move |f: &Figures| median_run(&f.pty).map(|m| m.0.rate(len))),
        ),
        (
            "… CPU time of that run, all processes (s)".into(),
            false,
            Box::new(move |f: &Figures| median_run(&f.pty).map(|m| m.1.as_secs_f64())),
        ),
        (
            "keystroke round trip p50 (µs)".into(),
            false,
            Box::new(move |f: &Figures| quantile(&f.keys, 0.50).map(micros)),
        ),
        (
            "keystroke round trip p99 (µs)".into(),
            false,
            Box::new(move |f: &Figures| quantile(&f.keys, 0.99).map(micros)),
        ),
        (
            "new session running `exit 0` / `true`, median (ms)".into(),
            false,
            Box::new(move |f: &Figures| quantile(&f.setup, 0.5).map(millis)),
        ),
    ];

    println!();
    println!(
        "Loopback, one run: median of {cat_runs} interleaved `cat` runs; {KEY_ROUNDS} interleaved rounds of \
         {KEY_SAMPLES} keystrokes after {KEY_WARMUP} warm-up; median of {SETUP_RUNS} interleaved new sessions."
    );
    if let Some(floor) = median_run(&floor) {
        println!(
            "Throughput is first byte to last byte at the client; the floor, local `cat` into a \
             pipe: {:.0} MiB/s, CPU {:.2} s.",
            floor.0.rate(len),
            floor.1.as_secs_f64()
        );
    }
    println!(
        "Airlock's server, agent and client share this process (one tokio runtime, {} workers); \
         OpenSSH is `ssh` + `sshd` (aes128-gcm@openssh.com), logged in as {}; Airlock's shells \
         run as airlock-user. CPU time = this process + its reaped children + the sshd tree (recording mode: + moto_server).",
        rt.metrics().num_workers(),
        ssh_user.as_deref().unwrap_or("n/a"),
    );
    println!();
    let ref_name = if recording_mode { "off" } else { "OpenSSH" };
    let compared: Vec<usize> = (0..names.len()).filter(|&i| Some(i) != reference).collect();
    let mut head = String::from("| metric |");
    let mut rule = String::from("|---|");
    for n in &names {
        head.push_str(&format!(" {n} |"));
        rule.push_str("---:|");
    }
    for &i in &compared {
        head.push_str(&format!(" ratio {}/{ref_name} |", names[i]));
        rule.push_str("---:|");
    }
    println!("{head} better |");
    println!("{rule}---|");
    let show = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), fmt);
    for (name, higher, get) in &metrics {
        let values: Vec<Option<f64>> = figs.iter().map(get).collect();
        let r = reference.and_then(|i| values[i]);
        let mut line = format!("| {name} |");
        for v in &values {
            line.push_str(&format!(" {} |", show(*v)));
        }
        for &i in &compared {
            let ratio = match (values[i], r) {
                (Some(a), Some(o)) if o > 0.0 => format!("{:.2}", a / o),
                _ => "n/a".into(),
            };
            line.push_str(&format!(" {ratio} |"));
        }
        println!("{line} {} |", if *higher { "higher" } else { "lower" });
    }
    if !busy.is_empty() {
        println!();
        println!("Storage of a busy interactive shell (`ls -l /usr/bin | head -40` every 0.1 s, {BUSY_SECS} s, scaled):");
        println!();
        println!("| store | bytes per hour | stored bytes per byte of output |");
        println!("|---|---:|---:|");
        for (name, per_hour, per_byte) in &busy {
            println!("| {name} | {:.1} MB | {per_byte:.2} |", per_hour / 1e6);
        }
    }
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `q` quantile (nearest rank) of unsorted samples.
fn percentile(samples: &[Duration], q: f64) -> Duration {
    assert!(!samples.is_empty(), "no samples");
    let mut v = samples.to_vec();
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// The run whose `key` is the median.
fn median_by<T>(runs: impl Iterator<Item = T>, key: impl Fn(&T) -> f64) -> T {
    let mut v: Vec<T> = runs.collect();
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let mid = v.len() / 2;
    v.swap_remove(mid)
}

/// First byte to last byte of one transfer.
#[derive(Clone, Copy, Debug)]
struct Transfer {
    bytes: u64,
    elapsed: Duration,
    /// Reads that returned data (for Airlock: frames delivered).
    chunks: u64,
}

impl Transfer {
    /// MiB/s of `len` file bytes (a PTY's added carriage returns are not counted).
    fn rate(&self, len: u64) -> f64 {
        len as f64 / (1 << 20) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

// ---------------------------------------------------------------------------------------------
// The test file.

struct TestFile {
    path: PathBuf,
    len: u64,
}

impl TestFile {
    /// Lines of `LINE - 1` pseudo-random printable characters and a newline, in /tmp, mode
    /// 0644 (the agent's shells run as the unprivileged airlock-user). Generated once.
    fn ensure(len: u64) -> TestFile {
        assert!(
            len > 0 && (len / LINE as u64) * LINE as u64 == len,
            "size must be whole lines"
        );
        let path = PathBuf::from(format!("/tmp/airlock-bench-{}MiB.txt", len >> 20));
        let ok = std::fs::metadata(&path).is_ok_and(|m| m.len() == len);
        if !ok {
            eprintln!("generating {}", path.display());
            let tmp = path.with_extension("tmp");
            let mut f =
                std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp).unwrap());
            const ALPHABET: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            let mut line = [0u8; LINE];
            for _ in 0..len / LINE as u64 {
                for c in line.iter_mut().take(LINE - 1) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *c = ALPHABET[(x >> 58) as usize];
                }
                line[LINE - 1] = b'\n';
                f.write_all(&line).unwrap();
            }
            f.flush().unwrap();
            drop(f);
            std::fs::rename(&tmp, &path).unwrap();
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        TestFile { path, len }
    }

    fn lines(&self) -> u64 {
        self.len / LINE as u64
    }

    /// Bytes a PTY delivers for the file (ONLCR: `\n` becomes `\r\n`).
    fn pty_len(&self) -> u64 {
        self.len + self.lines()
    }
}

// ---------------------------------------------------------------------------------------------
// CPU accounting.

fn rusage(who: libc::c_int) -> Duration {
    // SAFETY: getrusage writes one rusage into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `who` is RUSAGE_SELF or RUSAGE_CHILDREN.
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// utime + stime + cutime + cstime of a process (its reaped children included).
fn proc_cpu(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Duration::ZERO;
    };
    // Fields 14..=17 of stat(5); `rest` starts at field 3.
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// CPU used so far by this process, its reaped children, and the sshd tree.
fn cpu_total(sshd_pid: Option<u32>) -> Duration {
    rusage(libc::RUSAGE_SELF)
        + rusage(libc::RUSAGE_CHILDREN)
        + sshd_pid.map_or(Duration::ZERO, proc_cpu)
}

/// Runs `f` and returns its result with the CPU time spent meanwhile by everything involved.
fn measure_cpu<T>(sshd_pid: Option<u32>, f: impl FnOnce() -> T) -> (T, Duration) {
    let before = cpu_total(sshd_pid);
    let out = f();
    // Let sshd reap its per-connection process so its time lands in the listener's cutime.
    std::thread::sleep(Duration::from_millis(200));
    (out, cpu_total(sshd_pid).saturating_sub(before))
}

// ---------------------------------------------------------------------------------------------
// Child processes.

/// A child killed and reaped on drop, panics included.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Reads a child's stdout to the end on a thread: total bytes, first-to-last-byte time.
/// Gives up (killing the child) after `STEP_TIMEOUT`.
fn drain_child(mut child: ChildGuard, what: &str) -> Transfer {
    let mut out = child.0.stdout.take().unwrap();
    let (tx, rx) = std_mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        let mut t = Transfer {
            bytes: 0,
            elapsed: Duration::ZERO,
            chunks: 0,
        };
        let mut first = None;
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let now = Instant::now();
                    t.elapsed = now - *first.get_or_insert(now);
                    t.bytes += n as u64;
                    t.chunks += 1;
                }
            }
        }
        let _ = tx.send(());
        t
    });
    if rx.recv_timeout(STEP_TIMEOUT).is_err() {
        let _ = child.0.kill();
        let _ = reader.join();
        panic!("{what}: no end of output within {STEP_TIMEOUT:?}");
    }
    let t = reader.join().unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{what} failed: {status}");
    t
}

/// The floor: `cat f` into a pipe read by this process.
fn cat_local(path: &Path) -> Transfer {
    let child = Command::new("cat")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    drain_child(ChildGuard(child), "local cat")
}

fn ssh_version() -> Option<String> {
    let out = Command::new("ssh").arg("-V").output().ok()?;
    let text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    Some(text.split(',').next().unwrap_or(&text).to_owned())
}

// ---------------------------------------------------------------------------------------------
// OpenSSH.

/// A private sshd on a free loopback port; killed on drop.
struct Sshd {
    child: Child,
    port: u16,
    key: PathBuf,
    user: String,
    _dir: TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_ok(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn user_exists(name: &str) -> bool {
    Command::new("id")
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn current_user() -> String {
    Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "root".into())
}

impl Sshd {
    /// Logs in as airlock-user when it exists (the account Airlock's shells run as, so both
    /// sides start the same shell with the same dot files; its password is locked, so with
    /// PAM), else as the current user; `AIRLOCK_BENCH_SSH_USER` overrides.
    fn start() -> Result<Sshd, String> {
        if !Path::new(SSHD).exists() {
            return Err(format!("{SSHD} not found"));
        }
        let me = current_user();
        let mut tries: Vec<(String, bool)> = Vec::new();
        if let Ok(u) = std::env::var("AIRLOCK_BENCH_SSH_USER") {
            tries.extend([(u.clone(), true), (u, false)]);
        } else {
            if me == "root" && user_exists(airlock_agent::runas::DEFAULT_RUN_AS) {
                tries.push((airlock_agent::runas::DEFAULT_RUN_AS.to_owned(), true));
            }
            tries.extend([(me.clone(), false), (me, true)]);
        }
        let mut errors = Vec::new();
        for (user, pam) in tries {
            match Sshd::start_as(&user, pam) {
                Ok(s) => return Ok(s),
                Err(e) => errors.push(format!("as {user} (UsePAM {pam}): {e}")),
            }
        }
        Err(errors.join("; "))
    }

    fn start_as(user: &str, pam: bool) -> Result<Sshd, String> {
        let dir = TempDir::new();
        let d = &dir.0;
        let host_key = d.join("host_ed25519");
        let key = d.join("client_ed25519");
        for k in [&host_key, &key] {
            run_ok(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(k),
            )?;
        }
        let auth = d.join("authorized_keys");
        std::fs::copy(key.with_extension("pub"), &auth).map_err(|e| e.to_string())?;
        // Privilege separation needs this directory (absent in minimal containers).
        if !Path::new("/run/sshd").exists() {
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let cfg = d.join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "ListenAddress 127.0.0.1\n\
                 HostKey {hk}\n\
                 PidFile {pid}\n\
                 AuthorizedKeysFile {auth}\n\
                 PermitRootLogin prohibit-password\n\
                 StrictModes no\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM {pam}\n\
                 UseDNS no\n\
                 PrintMotd no\n\
                 PrintLastLog no\n\
                 X11Forwarding no\n\
                 Ciphers aes128-gcm@openssh.com\n\
                 LogLevel ERROR\n",
                hk = host_key.display(),
                pid = d.join("sshd.pid").display(),
                auth = auth.display(),
                pam = if pam { "yes" } else { "no" },
            ),
        )
        .map_err(|e| e.to_string())?;
        let log = std::fs::File::create(d.join("sshd.log")).map_err(|e| e.to_string())?;
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&cfg)
            .arg("-p")
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{SSHD}: {e}"))?;
        let mut sshd = Sshd {
            child,
            port,
            key,
            user: user.to_owned(),
            _dir: dir,
        };
        let log_text = |d: &Path| std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = sshd.child.try_wait() {
                return Err(format!(
                    "sshd exited ({st}): {}",
                    log_text(&sshd._dir.0).trim()
                ));
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut banner = [0u8; 8];
                if s.read_exact(&mut banner).is_ok() && banner.starts_with(b"SSH-") {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "sshd did not answer: {}",
                    log_text(&sshd._dir.0).trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // One login proves the key and config before anything is measured.
        let st = sshd
            .ssh(false)
            .arg("true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("ssh: {e}"))?;
        if !st.status.success() {
            return Err(format!(
                "ssh login failed ({}): {} / sshd: {}",
                st.status,
                String::from_utf8_lossy(&st.stderr).trim(),
                log_text(&sshd._dir.0).trim()
            ));
        }
        Ok(sshd)
    }

    fn ssh(&self, tty: bool) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null"]);
        for o in [
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "BatchMode=yes",
            "LogLevel=ERROR",
            "IdentitiesOnly=yes",
            "Ciphers=aes128-gcm@openssh.com",
            "ControlMaster=no",
            "ControlPath=none",
        ] {
            c.arg("-o").arg(o);
        }
        c.arg("-i")
            .arg(&self.key)
            .arg("-p")
            .arg(self.port.to_string());
        if tty {
            c.arg("-tt");
        }
        c.arg(format!("{}@127.0.0.1", self.user));
        c
    }
}

impl Subject for &Sshd {
    fn name(&self) -> &str {
        "OpenSSH"
    }

    /// Wall time of `ssh host true`.
    fn setup_once(&self) -> Duration {
        let t = Instant::now();
        let child = self
            .ssh(false)
            .arg("true")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        drain_child(ChildGuard(child), "ssh true");
        t.elapsed()
    }

    /// `ssh host cat f` (or `ssh -tt host 'stty -echo; cat f'`).
    fn cat(&self, file: &TestFile, pty: bool) -> Transfer {
        let mut cmd = self.ssh(pty);
        if pty {
            cmd.arg(format!("stty -echo; cat {}", file.path.display()));
        } else {
            cmd.arg(format!("cat {}", file.path.display()));
        }
        // With a PTY, keep stdin open: EOF on it would end the remote terminal early.
        let child = cmd
            .stdin(if pty { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let t = drain_child(ChildGuard(child), "ssh cat");
        let want = if pty { file.pty_len() } else { file.len };
        assert!(t.bytes >= want, "ssh cat: {} of {want} bytes", t.bytes);
        t
    }

    /// `ssh -tt host 'stty raw -echo; …; exec cat'`, one byte at a time.
    fn keystrokes(&self) -> Vec<Duration> {
        let mut child = ChildGuard(
            self.ssh(true)
                .arg("stty raw -echo; echo RE''ADY; exec cat")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut stdin = child.0.stdin.take().unwrap();
        let mut stdout = child.0.stdout.take().unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.windows(5).any(|w| w == b"READY") {
            let n = read_within(&mut stdout, &mut buf, Duration::from_secs(20)).expect("ssh READY");
            seen.extend_from_slice(&buf[..n]);
        }
        // Whatever follows READY (its newline) must not be taken for an echo.
        while read_within(&mut stdout, &mut buf, Duration::from_millis(200)).is_some() {}
        let mut samples = Vec::with_capacity(KEY_SAMPLES);
        let start = Instant::now();
        for i in 0..KEY_WARMUP + KEY_SAMPLES {
            let b = b'a' + (i % 26) as u8;
            let t = Instant::now();
            stdin.write_all(&[b]).unwrap();
            loop {
                let n =
                    read_within(&mut stdout, &mut buf, Duration::from_secs(5)).expect("ssh echo");
                if buf[..n].contains(&b) {
                    break;
                }
            }
            let dt = t.elapsed();
            if i >= KEY_WARMUP {
                samples.push(dt);
            }
            if start.elapsed() > KEY_BUDGET {
                eprintln!(
                    "ssh keystrokes: stopped after {} samples (time budget)",
                    samples.len()
                );
                break;
            }
        }
        samples
    }
}

/// One read, or `None` if nothing arrives within `timeout` (or at end of file).
fn read_within(
    r: &mut std::process::ChildStdout,
    buf: &mut [u8],
    timeout: Duration,
) -> Option<usize> {
    let mut pfd = libc::pollfd {
        fd: r.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, owned by this frame.
    let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
    if ready <= 0 {
        return None;
    }
    match r.read(buf) {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
}

// ---------------------------------------------------------------------------------------------
// Airlock.

#[derive(Clone, Copy)]
struct Airlock<'a> {
    name: &'a str,
    rt: &'a tokio::runtime::Runtime,
    api: &'a ApiClient,
    target: &'a str,
}

/// Reads output until `needle` appears, up to `timeout`.
async fn wait_for(out: &mut mpsc::Receiver<Output>, needle: &[u8], timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    while !seen.windows(needle.len()).any(|w| w == needle) {
        match tokio::time::timeout_at(deadline, out.recv()).await {
            Ok(Some(Output::Stdout(b))) | Ok(Some(Output::Stderr(b))) => seen.extend_from_slice(&b),
            Ok(None) => panic!(
                "session ended before {:?}; saw {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&seen)
            ),
            Err(_) => panic!(
                "timed out waiting for {:?}; saw {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&seen)
            ),
        }
    }
}

/// Discards output until none has arrived for `quiet`.
async fn drain_quiet(out: &mut mpsc::Receiver<Output>, quiet: Duration) {
    while let Ok(Some(_)) = tokio::time::timeout(quiet, out.recv()).await {}
}

impl Airlock<'_> {
    fn options(&self, pty: bool) -> SessionOptions {
        SessionOptions {
            no_pty: !pty,
            tls: self.api.tls(),
            ..SessionOptions::default()
        }
    }

    fn start(&self, pty: bool) -> TestSession {
        self.rt
            .block_on(TestSession::start(self.api, self.target, self.options(pty)))
    }
}

impl Airlock<'_> {
    /// A busy interactive shell for [`BUSY_SECS`]: (bytes its recording stores, bytes of output
    /// the client saw, seconds it ran).
    fn busy_shell(&self) -> (u64, u64, f64) {
        let mut s = self.start(true);
        self.rt.block_on(async {
            let t = Instant::now();
            let rounds = BUSY_SECS * 10;
            s.send(&format!(
                "for i in $(seq {rounds}); do ls -l /usr/bin | head -40; sleep 0.1; done; exit\n"
            ))
            .await;
            let mut output = 0u64;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(BUSY_SECS * 4);
            loop {
                match tokio::time::timeout_at(deadline, s.output.recv()).await {
                    Ok(Some(Output::Stdout(b))) | Ok(Some(Output::Stderr(b))) => {
                        output += b.len() as u64
                    }
                    Ok(None) => break,
                    Err(_) => panic!("the busy shell did not finish in time"),
                }
            }
            let id = s.grant.session_id.clone();
            let _ = s.finish(STEP_TIMEOUT).await;
            let secs = t.elapsed().as_secs_f64();
            // The recording is sealed (manifest written) shortly after the session ends.
            let deadline = Instant::now() + STEP_TIMEOUT;
            let rec = loop {
                let r = self.api.fetch_recording(&id).await.unwrap();
                if r.manifest.is_some() || Instant::now() > deadline {
                    break r;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let stored = rec.chunks.iter().map(|c| c.1.len() as u64).sum::<u64>()
                + rec.manifest.as_ref().map_or(0, |m| m.len() as u64);
            (stored, output, secs)
        })
    }
}

impl Subject for Airlock<'_> {
    fn name(&self) -> &str {
        self.name
    }

    /// StartSession to the outcome of a no-PTY shell told `exit 0`.
    fn setup_once(&self) -> Duration {
        self.rt.block_on(async {
            let t = Instant::now();
            let s = TestSession::start(self.api, self.target, self.options(false)).await;
            s.send("exit 0\n").await;
            s.input.send(Input::Eof).await.unwrap();
            let (outcome, _) = s.finish(STEP_TIMEOUT).await;
            let dt = t.elapsed();
            assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
            dt
        })
    }

    /// `cat f` in a shell session, counting output until the whole file has arrived.
    fn cat(&self, file: &TestFile, pty: bool) -> Transfer {
        let mut s = self.start(pty);
        self.rt.block_on(async {
            if pty {
                s.send("stty -echo; echo RE''ADY\n").await;
            } else {
                s.send("echo RE''ADY\n").await;
            }
            wait_for(&mut s.output, b"READY", Duration::from_secs(20)).await;
            drain_quiet(&mut s.output, Duration::from_millis(200)).await;
            s.send(&format!("cat {}\nexit\n", file.path.display()))
                .await;
            if !pty {
                s.input.send(Input::Eof).await.unwrap();
            }
            let want = if pty { file.pty_len() } else { file.len };
            let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
            let mut t = Transfer {
                bytes: 0,
                elapsed: Duration::ZERO,
                chunks: 0,
            };
            let mut first = None;
            while t.bytes < want {
                match tokio::time::timeout_at(deadline, s.output.recv()).await {
                    Ok(Some(Output::Stdout(b))) => {
                        let now = Instant::now();
                        t.elapsed = now - *first.get_or_insert(now);
                        t.bytes += b.len() as u64;
                        t.chunks += 1;
                    }
                    Ok(Some(Output::Stderr(b))) => {
                        eprintln!("stderr: {}", String::from_utf8_lossy(&b));
                    }
                    Ok(None) => panic!("session ended after {} of {want} bytes", t.bytes),
                    Err(_) => panic!("airlock cat: {} of {want} bytes in time", t.bytes),
                }
            }
            let (outcome, _) = s.finish(STEP_TIMEOUT).await;
            assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
            t
        })
    }

    /// A PTY session running `stty raw -echo; cat`, one byte at a time.
    fn keystrokes(&self) -> Vec<Duration> {
        let mut s = self.start(true);
        self.rt.block_on(async {
            s.send("stty raw -echo; echo RE''ADY; exec cat\n").await;
            wait_for(&mut s.output, b"READY", Duration::from_secs(20)).await;
            drain_quiet(&mut s.output, Duration::from_millis(200)).await;
            let mut samples = Vec::with_capacity(KEY_SAMPLES);
            let start = Instant::now();
            for i in 0..KEY_WARMUP + KEY_SAMPLES {
                let b = b'a' + (i % 26) as u8;
                let t = Instant::now();
                s.input
                    .send(Input::Data(Bytes::copy_from_slice(&[b])))
                    .await
                    .unwrap();
                loop {
                    match tokio::time::timeout(Duration::from_secs(5), s.output.recv()).await {
                        Ok(Some(Output::Stdout(x))) if x.contains(&b) => break,
                        Ok(Some(_)) => {}
                        Ok(None) => panic!("session ended during the keystroke test"),
                        Err(_) => panic!("no echo of keystroke {i} within 5 s"),
                    }
                }
                let dt = t.elapsed();
                if i >= KEY_WARMUP {
                    samples.push(dt);
                }
                if start.elapsed() > KEY_BUDGET {
                    eprintln!(
                        "airlock keystrokes: stopped after {} samples (time budget)",
                        samples.len()
                    );
                    break;
                }
            }
            // `cat` in raw mode ignores ^D: end the session from the API.
            self.api
                .terminate_session(&s.grant.session_id)
                .await
                .unwrap();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.done).await;
            samples
        })
    }
}
