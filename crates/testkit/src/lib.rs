//! Test support: [`TestServer`] runs the real server on a loopback port 0 with its own data
//! directory; [`TestAgent`] registers and runs the real agent against it. Both stop on drop
//! or [`TestServer::stop`]. No mocks: tests drive real sockets.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub mod aws;
pub mod deployment;
pub mod faults;

use airlock_client::session::{Input, Output, SessionOptions};
use airlock_client::{ApiClient, Outcome, Profile, StreamGrant};

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/airlock-test-<pid>-<n>`.
    pub fn new() -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "airlock-test-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            airlock_proto::unix_millis()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real server on 127.0.0.1:0 with an admin profile.
pub struct TestServer {
    /// The running server (its `state` exposes the hub and store).
    pub server: Option<airlock_server::RunningServer>,
    /// Base URL.
    pub url: String,
    /// The bootstrap admin's profile.
    pub admin: Profile,
    /// Where its state lives.
    pub dir: TempDir,
}

impl TestServer {
    /// Starts a server with default settings (plain HTTP on loopback).
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `adjust` changes its settings.
    pub async fn start_with(adjust: impl FnOnce(&mut airlock_server::ServerConfig)) -> TestServer {
        let dir = TempDir::new();
        let mut config = airlock_server::ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.0.join("server"),
            ..Default::default()
        };
        adjust(&mut config);
        let server = airlock_server::start(config).await.expect("server starts");
        let boot = server
            .bootstrap
            .clone()
            .expect("a fresh server bootstraps an admin");
        let admin = Profile {
            endpoint: server.url.clone(),
            access_key_id: boot.access_key_id,
            secret_access_key: boot.secret_access_key,
            region: "us-east-1".into(),
            ca_file: server.tls_cert_path.clone(),
            session_token: None,
        };
        TestServer {
            url: server.url.clone(),
            server: Some(server),
            admin,
            dir,
        }
    }

    /// An API client signing as the admin.
    pub fn api(&self) -> ApiClient {
        ApiClient::new(self.admin.clone()).unwrap()
    }

    /// The server's shared state.
    pub fn state(&self) -> &std::sync::Arc<airlock_server::AppState> {
        &self.server.as_ref().unwrap().state
    }

    /// Creates an activation and returns (id, code).
    pub async fn activation(&self, limit: u32) -> (String, String) {
        let out = self
            .api()
            .call(
                "AmazonSSM.CreateActivation",
                &json!({ "IamRole": "Test", "RegistrationLimit": limit }),
            )
            .await
            .unwrap();
        (
            out["ActivationId"].as_str().unwrap().into(),
            out["ActivationCode"].as_str().unwrap().into(),
        )
    }

    /// Registers and starts an agent, and waits until it is connected.
    pub async fn agent(&self) -> TestAgent {
        let (id, code) = self.activation(1).await;
        self.agent_from(id, code).await
    }

    /// Registers and starts an agent from an activation carrying `tags`
    /// (`[{"Key": …, "Value": …}]`, which the instance inherits), and waits until it is connected.
    pub async fn agent_tagged(&self, tags: serde_json::Value) -> TestAgent {
        let out = self
            .api()
            .call(
                "AmazonSSM.CreateActivation",
                &json!({ "IamRole": "Test", "RegistrationLimit": 1, "Tags": tags }),
            )
            .await
            .unwrap();
        self.agent_from(
            out["ActivationId"].as_str().unwrap().into(),
            out["ActivationCode"].as_str().unwrap().into(),
        )
        .await
    }

    /// Registers and starts an agent with `config` (e.g. destination rules), and waits until
    /// it is connected.
    pub async fn agent_with(&self, config: airlock_agent::AgentConfig) -> TestAgent {
        let (id, code) = self.activation(1).await;
        let state = airlock_agent::register(&airlock_agent::Registration {
            server: self.url.clone(),
            activation_id: id,
            activation_code: code,
            ca_file: self.admin.ca_file.clone(),
        })
        .await
        .expect("registration");
        let agent = TestAgent::spawn(state, config);
        self.wait_online(&agent.instance_id).await;
        agent
    }

    /// Registers an agent with an activation id and code, starts it, and waits until it is
    /// connected.
    pub async fn agent_from(&self, id: String, code: String) -> TestAgent {
        let state = airlock_agent::register(&airlock_agent::Registration {
            server: self.url.clone(),
            activation_id: id,
            activation_code: code,
            ca_file: self.admin.ca_file.clone(),
        })
        .await
        .expect("registration");
        let agent = TestAgent::spawn(state, airlock_agent::AgentConfig::default());
        self.wait_online(&agent.instance_id).await;
        agent
    }

    /// Waits (up to 10 s) until the instance's control channel is up.
    pub async fn wait_online(&self, instance_id: &str) {
        for _ in 0..200 {
            if self.state().hub.agent(instance_id).is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("agent {instance_id} did not connect");
    }

    /// Stops the server and waits for its tasks.
    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

/// Polls `probe` every 20 ms until it returns `Some`, for up to `timeout`; panics naming
/// `what` otherwise. For conditions that become true asynchronously (a status recorded, a
/// relay dropped), without sleeping longer than needed.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl TestServer {
    /// Creates a user (admin or not) with an access key, and returns a profile signing as it.
    pub async fn user(&self, name: &str, admin: bool) -> Profile {
        let api = self.api();
        api.call(
            "Airlock.CreateUser",
            &json!({ "UserName": name, "Admin": admin }),
        )
        .await
        .expect("CreateUser");
        let key = api
            .call("Airlock.CreateAccessKey", &json!({ "UserName": name }))
            .await
            .expect("CreateAccessKey");
        Profile {
            access_key_id: key["AccessKey"]["AccessKeyId"].as_str().unwrap().into(),
            secret_access_key: key["AccessKey"]["SecretAccessKey"].as_str().unwrap().into(),
            ..self.admin.clone()
        }
    }

    /// DescribeSessions for `state` (`Active` or `History`), as the admin.
    pub async fn sessions(&self, state: &str) -> Vec<serde_json::Value> {
        let out = self
            .api()
            .call(
                "AmazonSSM.DescribeSessions",
                &json!({ "State": state, "MaxResults": 200 }),
            )
            .await
            .expect("DescribeSessions");
        out["Sessions"].as_array().cloned().unwrap_or_default()
    }

    /// The session `id` as DescribeSessions lists it under `state`, if it does.
    pub async fn session(&self, state: &str, id: &str) -> Option<serde_json::Value> {
        self.sessions(state)
            .await
            .into_iter()
            .find(|s| s["SessionId"] == id)
    }

    /// Waits (up to 10 s) until DescribeSessions History lists `id`, and returns it.
    pub async fn wait_history(&self, id: &str) -> serde_json::Value {
        eventually(
            &format!("session {id} in History"),
            Duration::from_secs(10),
            || self.session("History", id),
        )
        .await
    }

    /// Waits (up to 10 s) until the gateway holds no relay for any session.
    pub async fn wait_no_relays(&self) {
        eventually("no relay left", Duration::from_secs(10), || async {
            (self.state().hub.relay_count() == 0).then_some(())
        })
        .await
    }
}

/// A real agent running in this process.
pub struct TestAgent {
    /// Its instance id.
    pub instance_id: String,
    /// Its registration.
    pub state: airlock_agent::AgentState,
    /// Stops it.
    pub cancel: CancellationToken,
    /// Its task.
    pub task: tokio::task::JoinHandle<Result<(), airlock_agent::control::ControlError>>,
}

impl TestAgent {
    /// Runs an agent with the given registration.
    pub fn spawn(
        state: airlock_agent::AgentState,
        config: airlock_agent::AgentConfig,
    ) -> TestAgent {
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let s = state.clone();
        let task = tokio::spawn(async move { airlock_agent::run(s, config, c).await });
        TestAgent {
            instance_id: state.instance_id.clone(),
            state,
            cancel,
            task,
        }
    }

    /// Stops the agent and waits for it.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// A session driven through the client's code path, with handles to type and read.
pub struct TestSession {
    /// The grant StartSession returned.
    pub grant: StreamGrant,
    /// Feed input here.
    pub input: mpsc::Sender<Input>,
    /// Output arrives here.
    pub output: mpsc::Receiver<Output>,
    /// Resolves to how the session ended.
    pub done: tokio::task::JoinHandle<Result<Outcome, airlock_client::SessionError>>,
    seen: Vec<u8>,
}

impl TestSession {
    /// Starts a shell session on `target` through `api`.
    pub async fn start(api: &ApiClient, target: &str, opts: SessionOptions) -> TestSession {
        let grant = api
            .start_session(&json!({ "Target": target }))
            .await
            .expect("StartSession");
        let (in_tx, in_rx) = mpsc::channel(64);
        let (out_tx, out_rx) = mpsc::channel(256);
        let g = grant.clone();
        let opts = SessionOptions {
            api: Some(api.clone()),
            tls: opts.tls.clone().or_else(|| api.tls()),
            ..opts
        };
        let done =
            tokio::spawn(async move { airlock_client::session::run(g, opts, in_rx, out_tx).await });
        TestSession {
            grant,
            input: in_tx,
            output: out_rx,
            done,
            seen: Vec::new(),
        }
    }

    /// Types bytes.
    pub async fn send(&self, data: &str) {
        self.input
            .send(Input::Data(Bytes::copy_from_slice(data.as_bytes())))
            .await
            .unwrap();
    }

    /// Reads output until `needle` has appeared (stdout and stderr together), up to `timeout`.
    /// Returns everything seen so far.
    pub async fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let text = String::from_utf8_lossy(&self.seen).into_owned();
            if text.contains(needle) {
                return text;
            }
            match tokio::time::timeout_at(deadline, self.output.recv()).await {
                Ok(Some(Output::Stdout(b))) | Ok(Some(Output::Stderr(b))) => {
                    self.seen.extend_from_slice(&b)
                }
                Ok(None) => panic!("session output ended before {needle:?}; saw {text:?}"),
                Err(_) => panic!("timed out waiting for {needle:?}; saw {text:?}"),
            }
        }
    }

    /// Reads output until `needle` has appeared, keeping only a short tail of what was seen
    /// (for floods of output that `expect` would scan again and again). Returns how many
    /// bytes were read.
    pub async fn skip_until(&mut self, needle: &str, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        let keep = needle.len().max(1) * 2;
        let mut total = self.seen.len();
        loop {
            if self
                .seen
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
            {
                return total;
            }
            if self.seen.len() > keep {
                self.seen.drain(..self.seen.len() - keep);
            }
            match tokio::time::timeout_at(deadline, self.output.recv()).await {
                Ok(Some(Output::Stdout(b))) | Ok(Some(Output::Stderr(b))) => {
                    total += b.len();
                    self.seen.extend_from_slice(&b)
                }
                Ok(None) => panic!("session output ended before {needle:?}"),
                Err(_) => panic!("timed out waiting for {needle:?} after {total} bytes"),
            }
        }
    }

    /// Reads output until `parse` finds what it looks for in everything seen so far (stdout and
    /// stderr together), up to `timeout`.
    pub async fn wait_for<T>(&mut self, timeout: Duration, parse: impl Fn(&str) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let text = String::from_utf8_lossy(&self.seen).into_owned();
            if let Some(v) = parse(&text) {
                return v;
            }
            match tokio::time::timeout_at(deadline, self.output.recv()).await {
                Ok(Some(Output::Stdout(b))) | Ok(Some(Output::Stderr(b))) => {
                    self.seen.extend_from_slice(&b)
                }
                Ok(None) => panic!("session output ended while waiting; saw {text:?}"),
                Err(_) => panic!("timed out waiting; saw {text:?}"),
            }
        }
    }

    /// Everything read so far.
    pub fn seen(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Waits for the session to end (draining output), up to `timeout`.
    pub async fn finish(mut self, timeout: Duration) -> (Outcome, String) {
        let drain = async {
            while let Some(o) = self.output.recv().await {
                match o {
                    Output::Stdout(b) | Output::Stderr(b) => self.seen.extend_from_slice(&b),
                }
            }
        };
        let _ = tokio::time::timeout(timeout, drain).await;
        let outcome = tokio::time::timeout(timeout, self.done)
            .await
            .expect("session ends in time")
            .unwrap()
            .expect("session ends cleanly");
        (outcome, String::from_utf8_lossy(&self.seen).into_owned())
    }
}

/// The built `airlock` binary of this target directory, built first if needed: black-box tests
/// and the benchmarks run it as a user would. Call it from a test or a benchmark (it locates
/// the binary next to the caller's own, so `cargo bench` measures a release build).
pub fn airlock_binary() -> PathBuf {
    use std::path::Path;
    use std::process::Command;
    // AIRLOCK_TEST_BINARY runs tests and benchmarks against another build: an older one (to see
    // an attack succeed before its fix) or one built with other settings (to measure them).
    if let Some(b) = std::env::var_os("AIRLOCK_TEST_BINARY") {
        return PathBuf::from(b);
    }
    // A test runs from <target>/<profile>/deps/; the binary lives in <target>/<profile>/.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .args(["build", "--quiet", "-p", "airlock-cli", "--bin", "airlock"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    // Benchmarks run from target/release: build the binary they measure with that profile.
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cargo.arg("--release");
    }
    // Cargo gives a test its package's CARGO_PKG_*/CARGO_MANIFEST_* variables; some build
    // scripts (ring's) track them, so passing them on would rebuild half the tree, twice.
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str() {
            if k.starts_with("CARGO_") && k != "CARGO_HOME" {
                cargo.env_remove(k);
            }
        }
    }
    let status = cargo
        .env(
            "CARGO_TARGET_DIR",
            profile_dir.parent().expect("a target directory"),
        )
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building airlock failed");
    let bin = profile_dir.join("airlock");
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

/// A loopback port nothing listens on now (bound and released): for a server a test starts,
/// or for a connection that must be refused.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A private OpenSSH server on a free loopback port, for the tests and benchmarks that put
/// Airlock beside (or in front of) sshd: its own host key, a client key `id` in the same
/// directory that it accepts for the current user, TCP forwarding and sftp on, and room for
/// many connections being set up at once (`MaxStartups`: `xargs -P 16 ssh …` in a benchmark).
pub struct Sshd {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The private key it accepts.
    pub key: PathBuf,
    /// The user to log in as (whoever runs the test).
    pub user: String,
    child: std::process::Child,
}

impl Sshd {
    /// Starts sshd with its files in `dir`; `None` when OpenSSH's server is not installed.
    pub fn start(dir: &std::path::Path) -> Option<Sshd> {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())?;
        for name in ["host_key", "id"] {
            let st = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(name))
                .status()
                .expect("ssh-keygen runs");
            assert!(st.success(), "ssh-keygen");
        }
        std::fs::copy(dir.join("id.pub"), dir.join("authorized_keys")).expect("authorized_keys");
        let port = free_port();
        let user = std::process::Command::new("id")
            .arg("-un")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .expect("id -un");
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {dir}/host_key\nAuthorizedKeysFile {dir}/authorized_keys\n\
             PidFile {dir}/sshd.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nAllowTcpForwarding yes\nMaxStartups 200\n\
             Subsystem sftp internal-sftp\nLogLevel ERROR\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("sshd_config"), config).expect("sshd_config");
        // sshd wants its privilege-separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let child = std::process::Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sshd starts");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "sshd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Sshd {
            port,
            key: dir.join("id"),
            user,
            child,
        })
    }

    /// The sshd process id (its per-connection children are its descendants).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
