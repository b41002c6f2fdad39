//! A deployment as users run it: `airlock server` as its own process with TLS on (its generated
//! certificate), and an agent registered with `--ca-file` and run as a process. Attack tests
//! use it because only a separate process shows that an attack did not bring the server down.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use airlock_client::{ApiClient, Profile};

use crate::{airlock_binary, free_port, SessionOptions, TempDir, TestSession};

/// What `airlock server` says on stdout once it serves: its URL, and with TLS the certificate
/// clients are to trust.
pub struct ServerBanner {
    /// `https://…` or `http://…`.
    pub url: String,
    /// The served certificate's file (with TLS).
    pub cert: Option<PathBuf>,
}

/// Reads a starting server's stdout until it has said where it listens (and, with `tls`, which
/// certificate it serves), then drains the rest in the background so the server never blocks on
/// a full pipe. Panics when the server exits first or takes over 30 s.
pub async fn read_banner(stdout: tokio::process::ChildStdout, tls: bool) -> ServerBanner {
    let mut out = BufReader::new(stdout);
    let (mut url, mut cert) = (None, None);
    while url.is_none() || (tls && cert.is_none()) {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(30), out.read_line(&mut line))
            .await
            .expect("the server says where it listens")
            .expect("server stdout");
        assert!(n > 0, "the server exited at start");
        if let Some(u) = line.trim().strip_prefix("Airlock server listening on ") {
            url = Some(u.to_owned());
        }
        if let Some(rest) = line.trim().strip_prefix("TLS certificate ") {
            cert = rest.split(" (").next().map(PathBuf::from);
        }
    }
    tokio::spawn(async move {
        let mut sink = String::new();
        while out.read_line(&mut sink).await.is_ok_and(|n| n > 0) {
            sink.clear();
        }
    });
    ServerBanner {
        url: url.unwrap_or_default(),
        cert,
    }
}

/// A server process and an agent process, torn down on drop.
pub struct Deployment {
    /// Base URL (`https://127.0.0.1:PORT`).
    pub url: String,
    /// The server's address.
    pub addr: std::net::SocketAddr,
    /// The server's generated certificate (trust anchor for clients).
    pub ca_file: PathBuf,
    /// The bootstrap admin's profile.
    pub admin: Profile,
    /// The registered agent's instance id.
    pub instance_id: String,
    /// The server's data directory.
    pub data_dir: PathBuf,
    server: tokio::process::Child,
    bin: PathBuf,
    port: u16,
    server_args: Vec<String>,
    _agent: tokio::process::Child,
    _dir: TempDir,
}

impl Deployment {
    /// Starts the server with TLS (plus `server_args`), registers and runs one agent.
    pub async fn start(server_args: &[&str]) -> Deployment {
        let bin = tokio::task::spawn_blocking(airlock_binary)
            .await
            .expect("building airlock");
        let dir = TempDir::new();
        let port = free_port();
        let data_dir = dir.0.join("server");
        let mut server = tokio::process::Command::new(&bin)
            .args(["server", "--self-signed", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data_dir)
            .args(server_args)
            .env("AIRLOCK_LOG", "warn")
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(dir.0.join("server.log")).expect("server log"),
            ))
            .kill_on_drop(true)
            .spawn()
            .expect("airlock server starts");
        let banner = read_banner(server.stdout.take().expect("stdout"), true).await;
        let (url, ca_file) = (banner.url, banner.cert.unwrap_or_default());
        let creds: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(data_dir.join("admin-credentials.json"))
                .expect("admin credentials"),
        )
        .expect("admin credentials are JSON");
        let admin = Profile {
            endpoint: url.clone(),
            access_key_id: creds["AccessKeyId"].as_str().unwrap_or_default().into(),
            secret_access_key: creds["SecretAccessKey"].as_str().unwrap_or_default().into(),
            region: "us-east-1".into(),
            ca_file: Some(ca_file.clone()),
            session_token: None,
        };
        let api = ApiClient::new(admin.clone()).expect("API client");
        let act = api
            .call(
                "AmazonSSM.CreateActivation",
                &json!({ "IamRole": "Hostile", "RegistrationLimit": 1 }),
            )
            .await
            .expect("CreateActivation");
        let state = dir.0.join("agent.json");
        let st = tokio::process::Command::new(&bin)
            .args(["agent", "register", "--server", &url])
            .args([
                "--activation-id",
                act["ActivationId"].as_str().unwrap_or(""),
            ])
            .args([
                "--activation-code",
                act["ActivationCode"].as_str().unwrap_or(""),
            ])
            .arg("--ca-file")
            .arg(&ca_file)
            .arg("--state")
            .arg(&state)
            .env("AIRLOCK_LOG", "warn")
            .stdout(Stdio::null())
            .status()
            .await
            .expect("airlock agent register runs");
        assert!(st.success(), "airlock agent register failed");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&state).expect("agent state"))
                .expect("agent state is JSON");
        let instance_id = v["InstanceId"].as_str().unwrap_or_default().to_owned();
        let agent = tokio::process::Command::new(&bin)
            .args(["agent", "run", "--state"])
            .arg(&state)
            .env("AIRLOCK_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .expect("airlock agent run starts");
        let d = Deployment {
            addr: url
                .trim_start_matches("https://")
                .parse()
                .expect("a socket address in the URL"),
            url,
            ca_file,
            admin,
            instance_id,
            data_dir,
            server,
            bin,
            port,
            server_args: server_args.iter().map(|s| s.to_string()).collect(),
            _agent: agent,
            _dir: dir,
        };
        d.wait_online().await;
        d
    }

    /// Kills the server process with SIGKILL (no shutdown of any kind), then starts it again
    /// on the same address and data directory with the same arguments, and waits until the
    /// agent is back online: what a crash and a restart look like.
    pub async fn kill_and_restart_server(&mut self) {
        self.kill_server().await;
        self.restart_server().await;
    }

    /// Kills the server process with SIGKILL and waits until it is gone (the data directory
    /// is then as the crash left it, for a test to look at or damage before
    /// [`Deployment::restart_server`]).
    pub async fn kill_server(&mut self) {
        self.server.start_kill().expect("SIGKILL the server");
        let _ = self.server.wait().await;
    }

    /// Starts the server again after [`Deployment::kill_server`], on the same address, data
    /// directory and arguments, and waits until the agent is back online.
    pub async fn restart_server(&mut self) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self._dir.0.join("server.log"))
            .expect("server log");
        let mut server = tokio::process::Command::new(&self.bin)
            .args(["server", "--self-signed", "--listen"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.server_args)
            .env("AIRLOCK_LOG", "warn")
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("airlock server restarts");
        let _ = read_banner(server.stdout.take().expect("stdout"), true).await;
        self.server = server;
        self.wait_online().await;
    }

    /// An API client of the admin.
    pub fn api(&self) -> ApiClient {
        ApiClient::new(self.admin.clone()).expect("API client")
    }

    async fn wait_online(&self) {
        let api = self.api();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = api
                .call("AmazonSSM.DescribeInstanceInformation", &json!({}))
                .await
                .expect("DescribeInstanceInformation");
            let online = out["InstanceInformationList"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|i| {
                    i["InstanceId"] == self.instance_id.as_str() && i["PingStatus"] == "Online"
                });
            if online {
                return;
            }
            assert!(Instant::now() < deadline, "the agent did not come online");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What the server logged (warnings and errors) so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self._dir.0.join("server.log")).unwrap_or_default()
    }

    /// Fails the test when any task of the server panicked: an attack may be survived by the
    /// process (a task's panic is contained) and still be a defect (in a release build without
    /// overflow checks the same input may do worse).
    pub fn assert_no_panic(&self) {
        let log = self.server_log();
        assert!(!log.contains("panicked"), "a server task panicked:\n{log}");
    }

    /// Whether the server process is still running.
    pub fn server_alive(&mut self) -> bool {
        matches!(self.server.try_wait(), Ok(None))
    }

    /// Proves the server still serves a legitimate user: the process runs, a signed API call
    /// answers within `api_within`, and a shell opens and runs a command.
    pub async fn assert_serves(&mut self, api_within: Duration) {
        assert!(self.server_alive(), "the server process died");
        self.assert_no_panic();
        let api = self.api();
        let t = Instant::now();
        let out = tokio::time::timeout(
            api_within,
            api.call("AmazonSSM.DescribeInstanceInformation", &json!({})),
        )
        .await
        .unwrap_or_else(|_| panic!("a signed API call took longer than {api_within:?}"))
        .expect("a signed API call succeeds");
        assert!(out["InstanceInformationList"].is_array());
        let took = t.elapsed();
        let mut s = TestSession::start(&api, &self.instance_id, SessionOptions::default()).await;
        s.send("echo alive-$((40+2))\n").await;
        s.expect("alive-42", Duration::from_secs(20)).await;
        s.send("exit\n").await;
        let _ = s.finish(Duration::from_secs(10)).await;
        assert!(self.server_alive(), "the server process died");
        eprintln!("the server serves: API call in {took:?}, a shell ran");
    }
}
