//! The deployed path, over TLS: `airlock server` as the README's "real deployment" runs it
//! (TLS with the certificate it generates into its data directory; `--self-signed` keeps it on
//! loopback, the same code a public address gets), every other piece a process or a real
//! socket beside it:
//!
//! - `airlock agent register --ca-file <the generated cert>` and `airlock agent run` over TLS,
//!   then `airlock start-session` (wss, output and exit status) and `airlock port-forward`
//!   moving 32 MiB each way with SHA-256 checked at the far ends;
//! - the AWS CLI with Airlock as its `session-manager-plugin`, trusting the certificate
//!   through `AWS_CA_BUNDLE` only (as an AWS user would);
//! - a client that offers only TLS 1.2 (a rustls config given to the client library): the data
//!   channel falls back to rustls's stream and works;
//! - KeyUpdates: a TLS-terminating relay between the gateway and its clients and agent, run on
//!   rustls, updates its keys (asking for the peer's) every 64 KiB in each direction of every
//!   connection; the hand-written record layer on the gateway and on the client and agent must
//!   follow each one and answer, while a port forward moves 8 MiB each way, SHA-256 checked;
//! - the agent behind a real HTTP CONNECT proxy (Debian's tinyproxy, started here with its own
//!   configuration): `HTTPS_PROXY` only, the proxy's log shows the tunnels, and a shell works.
//!
//! Under `CI=true` a missing tool (aws, tinyproxy) fails its test; elsewhere it says why and
//! returns.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use airlock_client::session::{Input, SessionOptions};
use airlock_client::{ApiClient, Profile};
use airlock_testkit::{free_port, TempDir, TestSession};

/// Longest any one step may take.
const STEP: Duration = Duration::from_secs(30);

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Fails (in CI) or says why the test cannot run here and returns `None`.
fn missing<T>(what: &str) -> Option<T> {
    let msg = format!("{what} is not available: run ./scripts/test (it installs it)");
    if in_ci() {
        panic!("{msg}");
    }
    eprintln!("NOT RUN: {msg}");
    None
}

async fn binary() -> PathBuf {
    tokio::task::spawn_blocking(airlock_testkit::airlock_binary)
        .await
        .unwrap()
}

/// `airlock` with a clean environment: HOME is ours, no profile, credentials or proxy leak in.
fn airlock(bin: &Path, home: &Path) -> Command {
    let mut c = Command::new(bin);
    c.env("HOME", home).env(
        "AIRLOCK_LOG",
        std::env::var("TLS_TEST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    for var in [
        "AIRLOCK_PROFILE",
        "AIRLOCK_ENDPOINT",
        "AIRLOCK_ACCESS_KEY_ID",
        "AIRLOCK_SECRET_ACCESS_KEY",
        "AIRLOCK_CONFIG",
        "AIRLOCK_CA_FILE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "NO_PROXY",
        "no_proxy",
        "SSL_CERT_FILE",
    ] {
        c.env_remove(var);
    }
    c.stdin(Stdio::null()).kill_on_drop(true);
    c
}

// ---------------------------------------------------------------------------------------------
// The server, the agent and the client commands, as processes

/// `airlock server --self-signed` in a data directory of its own; killed on drop.
struct Server {
    _child: Child,
    dir: TempDir,
    /// `https://127.0.0.1:<port>`.
    url: String,
    /// The certificate the server generated (the file the README has people trust).
    cert: PathBuf,
    key_id: String,
    secret: String,
}

impl Server {
    /// Starts the server; `public_url` is what it tells clients and agents to dial.
    async fn start(bin: &Path, public_url: Option<&str>) -> Server {
        let dir = TempDir::new();
        let data = dir.0.join("server");
        let mut cmd = airlock(bin, &dir.0);
        cmd.args(["server", "--self-signed", "--listen"])
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--data-dir")
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(u) = public_url {
            cmd.args(["--public-url", u]);
        }
        let mut child = cmd.spawn().unwrap();
        let banner =
            airlock_testkit::deployment::read_banner(child.stdout.take().unwrap(), true).await;
        let url = banner.url;
        assert!(url.starts_with("https://"), "TLS is on: {url}");
        let cert = banner.cert.expect("the server prints its certificate");
        assert_eq!(cert, data.join("tls").join("cert.pem"));
        let creds: Value =
            serde_json::from_slice(&std::fs::read(data.join("admin-credentials.json")).unwrap())
                .unwrap();
        Server {
            _child: child,
            dir,
            url,
            cert,
            key_id: creds["AccessKeyId"].as_str().unwrap().to_owned(),
            secret: creds["SecretAccessKey"].as_str().unwrap().to_owned(),
        }
    }

    fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// The admin's profile against `endpoint` (the server, or a relay in front of it).
    fn profile(&self, endpoint: &str) -> Profile {
        Profile {
            endpoint: endpoint.to_owned(),
            access_key_id: self.key_id.clone(),
            secret_access_key: self.secret.clone(),
            region: "us-east-1".into(),
            ca_file: Some(self.cert.clone()),
            session_token: None,
        }
    }

    fn api(&self, endpoint: &str) -> ApiClient {
        ApiClient::new(self.profile(endpoint)).unwrap()
    }

    /// `airlock <args>` as the admin against `endpoint`, trusting the generated certificate.
    fn client(&self, bin: &Path, endpoint: &str) -> Command {
        let mut c = airlock(bin, &self.dir.0);
        c.env("AIRLOCK_ENDPOINT", endpoint)
            .env("AIRLOCK_ACCESS_KEY_ID", &self.key_id)
            .env("AIRLOCK_SECRET_ACCESS_KEY", &self.secret)
            .env("AIRLOCK_CA_FILE", &self.cert);
        c
    }
}

/// `airlock agent run` of a registration; killed on drop.
struct Agent {
    _child: Child,
    instance_id: String,
    _home: TempDir,
}

/// Registers an agent with `airlock agent register --server <endpoint> --ca-file <cert>` and
/// starts `airlock agent run`, both with `env` (e.g. a proxy); waits until it is Online.
async fn agent(bin: &Path, server: &Server, endpoint: &str, env: &[(&str, &str)]) -> Agent {
    let home = TempDir::new();
    let act = server
        .api(&server.url)
        .call(
            "AmazonSSM.CreateActivation",
            &json!({ "IamRole": "Test", "RegistrationLimit": 1 }),
        )
        .await
        .unwrap();
    let state = home.0.join("agent.json");
    let mut reg = airlock(bin, &home.0);
    reg.args([
        "--output", "json", "agent", "register", "--server", endpoint,
    ])
    .args(["--activation-id", act["ActivationId"].as_str().unwrap()])
    .args(["--activation-code", act["ActivationCode"].as_str().unwrap()])
    .arg("--ca-file")
    .arg(&server.cert)
    .arg("--state")
    .arg(&state)
    .envs(env.iter().copied());
    let out = tokio::time::timeout(STEP, reg.output())
        .await
        .expect("registration in time")
        .unwrap();
    assert!(
        out.status.success(),
        "agent register: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reg: Value = serde_json::from_slice(&out.stdout).unwrap();
    let instance_id = reg["InstanceId"].as_str().unwrap().to_owned();
    let mut run = airlock(bin, &home.0);
    run.args(["agent", "run", "--state"])
        .arg(&state)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let child = run.spawn().unwrap();
    wait_online(&server.api(&server.url), &instance_id).await;
    Agent {
        _child: child,
        instance_id,
        _home: home,
    }
}

async fn wait_online(api: &ApiClient, id: &str) {
    let deadline = Instant::now() + STEP;
    loop {
        let out = api
            .call(
                "AmazonSSM.DescribeInstanceInformation",
                &json!({ "Filters": [{ "Key": "InstanceIds", "Values": [id] }] }),
            )
            .await
            .unwrap();
        if out["InstanceInformationList"][0]["PingStatus"] == "Online" {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never came Online: {out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `cmd` to its end with `stdin`: (exit code, stdout, stderr).
async fn run(mut cmd: Command, stdin: &[u8]) -> (Option<i32>, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(STEP, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} did not finish in {STEP:?}"))
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `airlock start-session` with piped commands: their output and the shell's exit status.
async fn shell(bin: &Path, server: &Server, endpoint: &str, target: &str, tag: &str) {
    let mut cmd = server.client(bin, endpoint);
    cmd.args(["start-session", "--target", target]);
    let input = format!("echo {tag}-$((40+2))\nexit 7\n");
    let (code, out, err) = run(cmd, input.as_bytes()).await;
    assert_eq!(out, format!("{tag}-42\n"), "stderr: {err}");
    assert_eq!(code, Some(7), "stdout {out:?}, stderr {err:?}");
}

/// `airlock port-forward` to `remote_port` on the target; returns the process and its local
/// port once it listens.
async fn port_forward(
    bin: &Path,
    server: &Server,
    endpoint: &str,
    target: &str,
    remote_port: u16,
) -> (Child, u16) {
    let local = free_port();
    let mut cmd = server.client(bin, endpoint);
    cmd.args(["port-forward", "--target", target])
        .args(["--remote-port", &remote_port.to_string()])
        .args(["--local-port", &local.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(STEP, lines.next_line())
        .await
        .expect("the forward starts")
        .unwrap()
        .expect("a line about the forward");
    assert!(line.starts_with("Forwarding 127.0.0.1:"), "{line}");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, local)
}

// ---------------------------------------------------------------------------------------------
// Bulk data with SHA-256 checked at the far end

/// Fills `buf` with the pattern of `seed` from byte `offset` (a multiple of 8) on.
fn pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    for (k, chunk) in buf.chunks_mut(8).enumerate() {
        let mut x = seed ^ (offset / 8 + k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 29;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

const BLOCK: usize = 256 * 1024;

/// Writes `n` bytes of the pattern of `seed`; returns their SHA-256.
async fn send_pattern<W: AsyncWrite + Unpin>(w: &mut W, n: u64, seed: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    let mut at = 0;
    while at < n {
        let len = (n - at).min(BLOCK as u64) as usize;
        pattern(seed, at, &mut buf[..len]);
        h.update(&buf[..len]);
        w.write_all(&buf[..len]).await.unwrap();
        at += len as u64;
    }
    h.finalize().into()
}

/// Reads exactly `n` bytes; returns their SHA-256.
async fn hash_exactly<R: AsyncRead + Unpin>(r: &mut R, n: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    let mut left = n;
    while left > 0 {
        let want = left.min(BLOCK as u64) as usize;
        let got = r.read(&mut buf[..want]).await.unwrap();
        assert!(got > 0, "the stream ended {left} bytes early");
        h.update(&buf[..got]);
        left -= got as u64;
    }
    h.finalize().into()
}

/// A target on the agent's side: each connection says how many bytes it sends (`up`) and
/// wants back (`down`), 8 bytes each; the target reads `up` bytes, answers with their SHA-256
/// (computed here, at the far end), then sends `down` bytes of the pattern of seed 2.
async fn hashing_target() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let up = c.read_u64().await.unwrap();
                let down = c.read_u64().await.unwrap();
                let digest = hash_exactly(&mut c, up).await;
                c.write_all(&digest).await.unwrap();
                send_pattern(&mut c, down, 2).await;
                c.shutdown().await.unwrap();
            });
        }
    });
    port
}

/// Moves `up` bytes to the hashing target through `local` and `down` bytes back; checks both
/// SHA-256s. Returns the time it took.
async fn transfer(local: u16, up: u64, down: u64) -> Duration {
    let start = Instant::now();
    let c = TcpStream::connect(("127.0.0.1", local)).await.unwrap();
    let (mut r, mut w) = c.into_split();
    let sender = tokio::spawn(async move {
        w.write_u64(up).await.unwrap();
        w.write_u64(down).await.unwrap();
        send_pattern(&mut w, up, 1).await
    });
    let mut far = [0u8; 32];
    tokio::time::timeout(STEP, r.read_exact(&mut far))
        .await
        .expect("the far end's digest in time")
        .unwrap();
    let sent = sender.await.unwrap();
    assert_eq!(far, sent, "SHA-256 of {up} bytes at the far end");
    let got = tokio::time::timeout(STEP, hash_exactly(&mut r, down))
        .await
        .expect("the download in time");
    let mut expect = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    let mut at = 0;
    while at < down {
        let len = (down - at).min(BLOCK as u64) as usize;
        pattern(2, at, &mut buf[..len]);
        expect.update(&buf[..len]);
        at += len as u64;
    }
    assert_eq!(
        got,
        <[u8; 32]>::from(expect.finalize()),
        "SHA-256 of {down} bytes back"
    );
    start.elapsed()
}

// ---------------------------------------------------------------------------------------------
// rustls configurations

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(cert: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in airlock_client::tls::read_certs(cert).unwrap() {
        roots.add(c).unwrap();
    }
    roots
}

fn client_config(
    cert: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots(cert))
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// The version a handshake with `config` agrees with the server on.
async fn negotiated(port: u16, config: Arc<rustls::ClientConfig>) -> rustls::ProtocolVersion {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref().1.protocol_version().unwrap()
}

// ---------------------------------------------------------------------------------------------
// The tests

/// The README's deployment: agent registered with `--ca-file` and run over TLS, a shell over
/// wss with its output and exit status, and a port forward moving 32 MiB each way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_shell_and_port_forward_over_tls_with_the_generated_certificate() {
    let bin = binary().await;
    let server = Server::start(&bin, None).await;
    let agent = agent(&bin, &server, &server.url, &[]).await;
    assert!(
        agent.instance_id.starts_with("mi-"),
        "{}",
        agent.instance_id
    );

    // Without the certificate nobody gets in: the system roots do not trust it.
    let mut cmd = airlock(&bin, &server.dir.0);
    cmd.env("AIRLOCK_ENDPOINT", &server.url)
        .env("AIRLOCK_ACCESS_KEY_ID", &server.key_id)
        .env("AIRLOCK_SECRET_ACCESS_KEY", &server.secret)
        .args(["instances", "list"]);
    let (code, _, err) = run(cmd, b"").await;
    assert_eq!(code, Some(1), "{err}");

    shell(&bin, &server, &server.url, &agent.instance_id, "over-wss").await;
    let grant = server
        .api(&server.url)
        .start_session(&json!({ "Target": agent.instance_id }))
        .await
        .unwrap();
    assert!(
        grant.stream_url.starts_with("wss://127.0.0.1:"),
        "{}",
        grant.stream_url
    );
    server
        .api(&server.url)
        .terminate_session(&grant.session_id)
        .await
        .unwrap();

    const MIB32: u64 = 32 << 20;
    let target = hashing_target().await;
    let (_fwd, local) = port_forward(&bin, &server, &server.url, &agent.instance_id, target).await;
    let took = transfer(local, MIB32, MIB32).await;
    eprintln!(
        "32 MiB each way over TLS in {:.2} s ({:.0} MB/s per direction, debug build)",
        took.as_secs_f64(),
        MIB32 as f64 / 1e6 / took.as_secs_f64()
    );
}

/// The AWS CLI with Airlock as its plugin, trusting the server only through `AWS_CA_BUNDLE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_cli_and_the_plugin_trust_the_certificate_through_aws_ca_bundle() {
    let aws = std::env::var_os("AIRLOCK_TEST_AWS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("aws"));
    let works = Command::new(&aws)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    if !works && missing::<()>(&format!("the aws CLI ({})", aws.display())).is_none() {
        return;
    }
    let bin = binary().await;
    let server = Server::start(&bin, None).await;
    let agent = agent(&bin, &server, &server.url, &[]).await;
    let home = TempDir::new();
    let plugin_dir = home.0.join("bin");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    std::os::unix::fs::symlink(&bin, plugin_dir.join("session-manager-plugin")).unwrap();
    let path = format!(
        "{}:{}",
        plugin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = airlock(&aws, &home.0);
    cmd.args(["ssm", "start-session", "--endpoint-url", &server.url])
        .args(["--region", "us-east-1", "--target", &agent.instance_id])
        .env("PATH", path)
        .env("AWS_CA_BUNDLE", &server.cert)
        .env("AWS_CONFIG_FILE", home.0.join("aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            home.0.join("aws-credentials"),
        )
        .env("AWS_ACCESS_KEY_ID", &server.key_id)
        .env("AWS_SECRET_ACCESS_KEY", &server.secret)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("REQUESTS_CA_BUNDLE");
    let (_, out, err) = run(cmd, b"echo via-aws $((20+22))\nexit 5\n").await;
    assert!(out.contains("via-aws 42"), "stdout {out:?}\nstderr {err}");
    assert!(
        out.contains("Exiting session with sessionId: admin-"),
        "stdout {out:?}\nstderr {err}"
    );
    let history = server
        .api(&server.url)
        .call("AmazonSSM.DescribeSessions", &json!({ "State": "History" }))
        .await
        .unwrap();
    assert_eq!(history["Sessions"][0]["ExitCode"], 5, "{history}");
}

/// A client that offers only TLS 1.2 (its rustls config given to the client library): the
/// gateway answers in TLS 1.2 and the data channel runs on rustls's stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls12_only_client_gets_a_working_data_channel() {
    let bin = binary().await;
    let server = Server::start(&bin, None).await;
    let agent = agent(&bin, &server, &server.url, &[]).await;
    let tls12 = client_config(&server.cert, &[&rustls::version::TLS12]);
    assert_eq!(
        negotiated(server.port(), tls12.clone()).await,
        rustls::ProtocolVersion::TLSv1_2
    );
    assert_eq!(
        negotiated(
            server.port(),
            client_config(&server.cert, rustls::DEFAULT_VERSIONS)
        )
        .await,
        rustls::ProtocolVersion::TLSv1_3,
        "and 1.3 to those who offer it"
    );
    let api = server.api(&server.url);
    let opts = SessionOptions {
        no_pty: true,
        tls: Some(tls12),
        ..Default::default()
    };
    let s = TestSession::start(&api, &agent.instance_id, opts).await;
    assert!(s.grant.stream_url.starts_with("wss://"));
    s.send("echo tls12-$((40+2))\nhead -c 300000 /dev/zero | wc -c\nexit 4\n")
        .await;
    s.input.send(Input::Eof).await.unwrap();
    let (outcome, seen) = s.finish(STEP).await;
    assert_eq!(seen, "tls12-42\n300000\n");
    assert_eq!(outcome.exit_code, Some(4), "output: {seen:?}");
}

/// Counts of the KeyUpdates a [`relay`] sent.
#[derive(Default)]
struct Updates {
    /// To the gateway (its record layer follows the client's or agent's side).
    to_gateway: AtomicU64,
    /// To the clients and the agent (their record layers follow the gateway's side).
    to_peers: AtomicU64,
}

/// Bytes relayed in one direction between two KeyUpdates.
const UPDATE_EVERY: u64 = 64 * 1024;

/// A TLS-terminating relay on `listener` in front of the gateway on `gateway`, on rustls at
/// both ends (with the server's own certificate and key): every connection's bytes pass
/// through unchanged, and after the first chunk and then every [`UPDATE_EVERY`] bytes in a
/// direction it updates the keys of the side it writes to, asking the peer for an update too.
fn relay(listener: TcpListener, gateway: u16, server: &Server, updates: Arc<Updates>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(gateway_config(server));
    let connector =
        tokio_rustls::TlsConnector::from(client_config(&server.cert, &[&rustls::version::TLS13]));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, connector, updates) =
                (acceptor.clone(), connector.clone(), updates.clone());
            tokio::spawn(async move {
                let Ok(down) = acceptor.accept(tcp).await else {
                    return;
                };
                let up = TcpStream::connect(("127.0.0.1", gateway)).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                let Ok(up) = connector.connect(name, up).await else {
                    return;
                };
                pump(down, up, &updates).await;
            });
        }
    });
}

/// Relays both ways until both are done, updating keys as [`relay`] says.
async fn pump(
    mut down: tokio_rustls::server::TlsStream<TcpStream>,
    mut up: tokio_rustls::client::TlsStream<TcpStream>,
    updates: &Updates,
) {
    let (mut b1, mut b2) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    // Bytes since the last update in each direction (None before the first chunk).
    let (mut to_up, mut to_down): (Option<u64>, Option<u64>) = (None, None);
    let (mut down_open, mut up_open) = (true, true);
    while down_open || up_open {
        tokio::select! {
            r = down.read(&mut b1), if down_open => {
                let n = r.unwrap_or(0);
                if n == 0 {
                    down_open = false;
                    let _ = up.shutdown().await;
                    continue;
                }
                if up.write_all(&b1[..n]).await.is_err() {
                    return;
                }
                let since = to_up.map_or(u64::MAX, |s| s + n as u64);
                if since >= UPDATE_EVERY {
                    up.get_mut().1.refresh_traffic_keys().unwrap();
                    updates.to_gateway.fetch_add(1, Ordering::Relaxed);
                    to_up = Some(0);
                } else {
                    to_up = Some(since);
                }
                if up.flush().await.is_err() {
                    return;
                }
            }
            r = up.read(&mut b2), if up_open => {
                let n = r.unwrap_or(0);
                if n == 0 {
                    up_open = false;
                    let _ = down.shutdown().await;
                    continue;
                }
                if down.write_all(&b2[..n]).await.is_err() {
                    return;
                }
                let since = to_down.map_or(u64::MAX, |s| s + n as u64);
                if since >= UPDATE_EVERY {
                    down.get_mut().1.refresh_traffic_keys().unwrap();
                    updates.to_peers.fetch_add(1, Ordering::Relaxed);
                    to_down = Some(0);
                } else {
                    to_down = Some(since);
                }
                if down.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// KeyUpdates from the peer, both ways: with a rustls relay updating keys all the time, the
/// gateway's record layer follows the client's and the agent's side, the client's and the
/// agent's follow the gateway's side, and each answers the request with its own update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_updates_from_the_peer_are_followed_in_both_directions() {
    let bin = binary().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let server = Server::start(&bin, Some(&front)).await;
    let updates = Arc::new(Updates::default());
    relay(listener, server.port(), &server, updates.clone());
    // Everything goes through the relay: the API, the agent's control and data channels, the
    // client's data channel (the StreamUrl names the relay).
    let agent = agent(&bin, &server, &front, &[]).await;
    shell(&bin, &server, &front, &agent.instance_id, "updated").await;
    let before = (
        updates.to_gateway.load(Ordering::Relaxed),
        updates.to_peers.load(Ordering::Relaxed),
    );
    const MIB8: u64 = 8 << 20;
    let target = hashing_target().await;
    let (_fwd, local) = port_forward(&bin, &server, &front, &agent.instance_id, target).await;
    transfer(local, MIB8, MIB8).await;
    // And the session still carries small messages after all those updates.
    transfer(local, 1000, 1000).await;
    let after = (
        updates.to_gateway.load(Ordering::Relaxed),
        updates.to_peers.load(Ordering::Relaxed),
    );
    // 8 MiB cross two data channels each way (client's and agent's), an update after every
    // 64 KiB or a little more (a write may overshoot): well over 64 per channel and direction.
    assert!(
        after.0 - before.0 >= MIB8 / UPDATE_EVERY,
        "updates to the gateway: {before:?} -> {after:?}"
    );
    assert!(
        after.1 - before.1 >= MIB8 / UPDATE_EVERY,
        "updates to the client and agent: {before:?} -> {after:?}"
    );
    shell(&bin, &server, &front, &agent.instance_id, "still").await;
}

/// The server's own certificate and key in a rustls server config (TLS 1.3 only), for the
/// stand-ins of the gateway below.
fn gateway_config(server: &Server) -> Arc<rustls::ServerConfig> {
    let key_pem = std::fs::read(server.cert.with_file_name("key.pem")).unwrap();
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .unwrap()
        .unwrap();
    let certs = airlock_client::tls::read_certs(&server.cert).unwrap();
    let mut sc = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(sc)
}

/// A KeyUpdate that arrives with the 101, before the client's record layer takes over: rustls
/// follows it and queues its answer; the client must send that answer before its first record
/// under the next key, or the gateway cannot read it. A rustls stand-in for the gateway sends
/// the 101 and a KeyUpdate in one write, then echoes a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_update_that_comes_with_the_101_is_answered_before_the_takeover() {
    let bin = binary().await;
    let server = Server::start(&bin, None).await;
    let acceptor = tokio_rustls::TlsAcceptor::from(gateway_config(&server));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let gateway = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut s = acceptor.accept(tcp).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(s.read_u8().await.unwrap());
        }
        let head = String::from_utf8(head).unwrap();
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap()
            .trim()
            .to_owned();
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            airlock_wire::ws::accept_key(&key)
        );
        // Both records in rustls's buffer first, then one write: they arrive together.
        std::io::Write::write_all(&mut s.get_mut().1.writer(), resp.as_bytes()).unwrap();
        s.get_mut().1.refresh_traffic_keys().unwrap();
        s.flush().await.unwrap();
        // Echo one masked frame back unmasked (it fits one read here).
        let mut h = [0u8; 14];
        s.read_exact(&mut h[..2]).await.unwrap();
        assert_eq!(h[1] & 0x7F, 126, "a 16-bit length");
        s.read_exact(&mut h[2..8]).await.unwrap();
        let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
        airlock_wire::ws::apply_mask(&mut body, [h[4], h[5], h[6], h[7]], 0);
        let mut out = [0u8; 14];
        let n = airlock_wire::ws::Header::encode(2, len, None, &mut out);
        s.write_all(&out[..n]).await.unwrap();
        s.write_all(&body).await.unwrap();
        s.flush().await.unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    });
    let url = format!("wss://127.0.0.1:{port}/v1/data-channel/x?role=publish_subscribe");
    let cfg = client_config(&server.cert, &[&rustls::version::TLS13]);
    let mut ws = airlock_client::ws::connect_data(&url, Some(cfg))
        .await
        .unwrap();
    let payload = bytes::Bytes::from(vec![7u8; 20_000]);
    ws.send(airlock_client::ws::Message::Binary(payload.clone()))
        .await
        .unwrap();
    let back = tokio::time::timeout(STEP, ws.next())
        .await
        .expect("the echo in time")
        .expect("a message")
        .expect("readable under the gateway's next key");
    assert_eq!(back, airlock_client::ws::Message::Binary(payload));
    ws.close(None).await.unwrap();
    gateway.await.unwrap();
}

/// The gateway's side of the same: a rustls client sends its upgrade and a KeyUpdate in one
/// write (rustls on the gateway follows it before the record layer takes over, so the logged
/// secret is one update behind the extracted key), and after the 101 updates its keys again:
/// the gateway's record layer must recognise the secret and follow the second update, then
/// answer the (bogus) open message with its refusal, readable under the gateway's next key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_follows_key_updates_around_the_upgrade() {
    let bin = binary().await;
    let server = Server::start(&bin, None).await;
    let tcp = TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let cfg = client_config(&server.cert, &[&rustls::version::TLS13]);
    let mut s = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let req = format!(
        "GET /v1/data-channel/admin-0000000000000000?role=publish_subscribe HTTP/1.1\r\n\
         Host: 127.0.0.1:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.port()
    );
    std::io::Write::write_all(&mut s.get_mut().1.writer(), req.as_bytes()).unwrap();
    s.get_mut().1.refresh_traffic_keys().unwrap();
    s.flush().await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains(&airlock_wire::ws::accept_key(key)), "{head}");
    // Now on the gateway's record layer: another update, then the open message.
    s.get_mut().1.refresh_traffic_keys().unwrap();
    let open = json!({
        "MessageSchemaVersion": "1.0",
        "RequestId": "00000000-0000-4000-8000-000000000000",
        "TokenValue": "bm90LWEtdG9rZW4",
        "ClientId": "00000000-0000-4000-8000-000000000001",
        "ClientVersion": "1.2.0.0",
    })
    .to_string();
    let mask = [9, 8, 7, 6];
    let mut frame = [0u8; 14];
    let n = airlock_wire::ws::Header::encode(1, open.len(), Some(mask), &mut frame);
    let mut body = open.into_bytes();
    airlock_wire::ws::apply_mask(&mut body, mask, 0);
    s.write_all(&frame[..n]).await.unwrap();
    s.write_all(&body).await.unwrap();
    s.flush().await.unwrap();
    // The refusal: a close frame (1008) with the reason.
    let mut h = [0u8; 4];
    tokio::time::timeout(STEP, s.read_exact(&mut h[..2]))
        .await
        .expect("the gateway answers in time")
        .expect("the gateway read the open message under the updated keys");
    assert_eq!(h[0] & 0x0F, 8, "a close frame");
    let mut len = usize::from(h[1] & 0x7F);
    if len == 126 {
        s.read_exact(&mut h[2..4]).await.unwrap();
        len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    }
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1008);
    let reason = String::from_utf8_lossy(&payload[2..]);
    assert!(reason.contains("token"), "{reason}");
}

/// tinyproxy on a free loopback port with its own configuration and log; killed on drop.
struct Tinyproxy {
    _child: Child,
    port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl Tinyproxy {
    async fn start() -> Option<Tinyproxy> {
        let exe = ["/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        let Some(exe) = exe else {
            return missing("tinyproxy");
        };
        let dir = TempDir::new();
        let port = free_port();
        let log = dir.0.join("tinyproxy.log");
        let conf = dir.0.join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 120\nMaxClients 64\nLogLevel Connect\n\
                 LogFile \"{}\"\nPidFile \"{}\"\nAllow 127.0.0.1\n",
                log.display(),
                dir.0.join("tinyproxy.pid").display()
            ),
        )
        .unwrap();
        let child = Command::new(exe)
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + STEP;
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "tinyproxy did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(Tinyproxy {
            _child: child,
            port,
            log,
            _dir: dir,
        })
    }

    /// How many CONNECTs to `target` the proxy logged.
    fn connects(&self, target: &str) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.matches(&format!("CONNECT {target} HTTP/1.1")).count()
    }
}

/// The agent behind a real HTTP CONNECT proxy, told only `HTTPS_PROXY` (no NO_PROXY): its
/// registration, control channel and data channels are tunnels the proxy logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_works_through_an_http_connect_proxy() {
    let Some(proxy) = Tinyproxy::start().await else {
        return;
    };
    let bin = binary().await;
    let server = Server::start(&bin, None).await;
    let target = format!("127.0.0.1:{}", server.port());
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port);
    let agent = agent(
        &bin,
        &server,
        &server.url,
        &[("HTTPS_PROXY", &proxy_url), ("https_proxy", &proxy_url)],
    )
    .await;
    // Registration and the control channel went through the proxy.
    let before = proxy.connects(&target);
    assert!(
        before >= 2,
        "CONNECTs before the session: {before}\n{}",
        std::fs::read_to_string(&proxy.log).unwrap_or_default()
    );
    shell(&bin, &server, &server.url, &agent.instance_id, "proxied").await;
    // The session's data channel was one more tunnel.
    let after = proxy.connects(&target);
    assert!(after > before, "CONNECTs: {before} -> {after}");
}
