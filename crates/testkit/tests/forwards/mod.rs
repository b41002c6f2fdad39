//! Port forwards through Airlock's client and an echo target, shared by the port-forwarding
//! test files.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
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
