//! Port forwards through Airlock's client and an echo target, shared by the port-forwarding
//! test files.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use airlock_client::mux::{MuxHooks, StreamReport};
use airlock_client::port::{self, ForwardOptions, PortError};
use airlock_client::{ApiClient, Outcome, SessionOptions};

/// Echoes every connection back, closing its write side at the client's EOF.
pub async fn echo_target() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((c, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let (mut r, mut w) = c.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    port
}

/// A forward through Airlock's own client, with its stream reports.
pub struct Forward {
    pub addr: SocketAddr,
    pub session_id: String,
    pub stop: CancellationToken,
    pub task: JoinHandle<Result<Outcome, PortError>>,
    pub hooks: MuxHooks,
    pub reports: mpsc::Receiver<StreamReport>,
}

impl Forward {
    /// Stops the forward (Ctrl-C) and returns how it ended.
    pub async fn stop(self) -> Result<Outcome, PortError> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the forward stops in time")
            .unwrap()
    }

    pub async fn next_report(&mut self, timeout: Duration) -> StreamReport {
        tokio::time::timeout(timeout, self.reports.recv())
            .await
            .expect("a stream report in time")
            .expect("reports open")
    }
}

/// Starts a forward from a fresh local port to `remote_port` (on `host`, or the agent's host).
pub async fn forward(
    api: &ApiClient,
    target: &str,
    remote_port: u16,
    host: Option<&str>,
    mux_window: u32,
) -> Forward {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut params = json!({
        "portNumber": [remote_port.to_string()],
        "localPortNumber": [addr.port().to_string()],
    });
    let doc = match host {
        Some(h) => {
            params["host"] = json!([h]);
            "AWS-StartPortForwardingSessionToRemoteHost"
        }
        None => "AWS-StartPortForwardingSession",
    };
    let grant = api
        .start_session(&json!({ "Target": target, "DocumentName": doc, "Parameters": params }))
        .await
        .expect("StartSession");
    let (rep_tx, reports) = mpsc::channel(1024);
    let hooks = port::new_hooks(Some(rep_tx));
    let opts = SessionOptions {
        api: Some(api.clone()),
        tls: api.tls(),
        mux_window,
        ..Default::default()
    };
    let stop = CancellationToken::new();
    let session_id = grant.session_id.clone();
    let task = tokio::spawn(port::forward(
        grant,
        opts,
        listener,
        ForwardOptions {
            hooks: hooks.clone(),
            max_streams: 0,
        },
        stop.clone(),
    ));
    Forward {
        addr,
        session_id,
        stop,
        task,
        hooks,
        reports,
    }
}

/// Connects through a forward whose destination is refused or unreachable, writes `probe`
/// (when not empty) and waits for the forward to close the connection: promptly, and with
/// nothing ever received on it.
pub async fn closed_at_once(addr: SocketAddr, probe: &[u8]) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    if !probe.is_empty() {
        let _ = c.write_all(probe).await;
    }
    let mut sink = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(15), c.read_to_end(&mut sink))
        .await
        .expect("the refused connection is closed promptly");
    assert!(sink.is_empty(), "{r:?}: {sink:?}");
}

/// Echoes `msg` through a connection that must work (and stay up).
pub async fn echoes(c: &mut TcpStream, msg: &[u8]) {
    c.write_all(msg).await.unwrap();
    let mut b = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut b))
        .await
        .expect("the forward answers")
        .unwrap();
    assert_eq!(b, msg);
}

/// `airlock agent register` then `airlock agent run` with `run_args`, as a process of its own
/// registered with `server` (so that it can die the way agents do, or take the binary's flags).
pub async fn agent_process(
    server: &airlock_testkit::TestServer,
    dir: &std::path::Path,
    run_args: &[&str],
) -> (String, tokio::process::Child) {
    let bin = tokio::task::spawn_blocking(airlock_testkit::airlock_binary)
        .await
        .unwrap();
    let (id, code) = server.activation(1).await;
    let state = dir.join("agent.json");
    let st = tokio::process::Command::new(&bin)
        .args(["agent", "register", "--server", &server.url])
        .args(["--activation-id", &id, "--activation-code", &code])
        .arg("--state")
        .arg(&state)
        .env("HOME", dir)
        .env("AIRLOCK_LOG", "warn")
        .status()
        .await
        .unwrap();
    assert!(st.success(), "airlock agent register");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let instance_id = v["InstanceId"].as_str().unwrap().to_owned();
    let child = tokio::process::Command::new(&bin)
        .args(["agent", "run", "--state"])
        .arg(&state)
        .args(run_args)
        .env("HOME", dir)
        .env("AIRLOCK_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    server.wait_online(&instance_id).await;
    (instance_id, child)
}
