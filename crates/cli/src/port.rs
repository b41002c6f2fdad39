//! `airlock port-forward` and `airlock ssh-proxy`: reach a port on (or behind) a host that has
//! no port open, through one port session.
//!
//! - `port-forward` listens locally and carries every connection it accepts as one stream of
//!   the session (Airlock's mux with an Airlock agent, smux v1 with an AWS one). It prints the
//!   address it bound, shows live counts on a terminal, and on Ctrl-C tells the agent the
//!   session is over before it exits.
//! - `ssh-proxy` relays stdin/stdout to the host's SSH port (`AWS-StartSSHSession`), for
//!   `ssh -o ProxyCommand='airlock ssh-proxy --target %h'`, and so for scp and rsync.
//!
//! [`serve`] and [`stdio_stream`] also run the port documents when the AWS CLI starts
//! `airlock` as its `session-manager-plugin` (`plugin.rs`), so both front ends behave alike.

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use airlock_client::mux::{MuxStats, StreamReport};
use airlock_client::port::{self, ForwardOptions, DEFAULT_MUX_WINDOW};
use airlock_client::session::{run, Input, Output, SessionEvent, SessionOptions, FLAG_INPUT_EOF};
use airlock_client::{ApiClient, Outcome, Profile, StreamGrant};
use airlock_proto::Flag;

use crate::Format;

/// `airlock port-forward`.
#[derive(Args, Debug)]
pub struct PortForwardArgs {
    /// Instance id (mi-…).
    #[arg(long)]
    pub target: String,
    /// Port to reach on the target (or on --remote-host, from the target).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub remote_port: u16,
    /// A host reachable from the target (name or address); default: the target itself.
    #[arg(long)]
    pub remote_host: Option<String>,
    /// Local port to listen on; 0 or absent: any free port.
    #[arg(long, default_value_t = 0)]
    pub local_port: u16,
    /// Local address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub local_address: IpAddr,
    /// Why you are connecting (recorded).
    #[arg(long)]
    pub reason: Option<String>,
}

/// `airlock ssh-proxy`.
#[derive(Args, Debug)]
pub struct SshProxyArgs {
    /// Instance id (mi-…), e.g. `%h` in a ProxyCommand.
    #[arg(long)]
    pub target: String,
    /// SSH port on the target.
    #[arg(long, default_value_t = 22, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Why you are connecting (recorded).
    #[arg(long)]
    pub reason: Option<String>,
}

/// Waits for Ctrl-C or SIGTERM, then cancels `token`.
fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        crate::shutdown_signal().await;
        token.cancel();
    });
}

/// `airlock port-forward`.
pub async fn port_forward(a: PortForwardArgs, format: Format) -> anyhow::Result<i32> {
    let api = ApiClient::new(Profile::load()?)?;
    let bind = SocketAddr::new(a.local_address, a.local_port);
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let local = listener.local_addr()?;
    let (document, mut params) = match &a.remote_host {
        Some(h) => (
            "AWS-StartPortForwardingSessionToRemoteHost",
            serde_json::json!({ "host": [h] }),
        ),
        None => ("AWS-StartPortForwardingSession", serde_json::json!({})),
    };
    params["portNumber"] = serde_json::json!([a.remote_port.to_string()]);
    params["localPortNumber"] = serde_json::json!([local.port().to_string()]);
    let mut input = serde_json::json!({
        "Target": a.target,
        "DocumentName": document,
        "Parameters": params,
    });
    if let Some(r) = &a.reason {
        input["Reason"] = r.clone().into();
    }
    let grant = api.start_session(&input).await?;
    let remote = format!(
        "{}:{}",
        a.remote_host.as_deref().unwrap_or(&a.target),
        a.remote_port
    );
    match format {
        Format::Json => println!(
            "{}",
            serde_json::json!({
                "LocalAddress": local.to_string(),
                "SessionId": grant.session_id,
                "Remote": remote,
            })
        ),
        Format::Text => println!(
            "Forwarding {local} -> {remote} (session {}). Ctrl-C to stop.",
            grant.session_id
        ),
    }
    let stop = CancellationToken::new();
    cancel_on_signal(stop.clone());
    let live = std::io::stderr().is_terminal();
    let served = serve(grant, api, listener, stop, Voice::Airlock { live }).await?;
    let stats = &served.stats;
    let summary = format!(
        "{} connection(s), {} sent, {} received",
        stats.total.load(Ordering::Relaxed),
        human(stats.sent.load(Ordering::Relaxed)),
        human(stats.received.load(Ordering::Relaxed))
    );
    if served.stopped {
        eprintln!("Stopped: {summary}.");
        return Ok(0);
    }
    if served.outcome.reason.is_empty() {
        eprintln!("The session ended: {summary}.");
        Ok(0)
    } else {
        eprintln!("The session ended: {} ({summary}).", served.outcome.reason);
        Ok(1)
    }
}

/// Who a running forward talks to, and so what it prints while it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Voice {
    /// `airlock port-forward`: each failed connection on stderr, and a live status line when
    /// stderr is a terminal (`live`).
    Airlock {
        /// Show the status line.
        live: bool,
    },
    /// `session-manager-plugin` for the AWS CLI: the real plugin's lines on stdout (the first
    /// connection accepted; a connection the destination could not take, with the reason).
    Plugin {
        /// The session, as the plugin names it.
        session_id: String,
    },
}

/// How a forward ended, for the caller to tell its user.
#[derive(Debug)]
pub struct Served {
    /// `stop` fired (Ctrl-C): the agent was told and the session ended here.
    pub stopped: bool,
    /// How the session ended (a reason when the far side ended it abnormally).
    pub outcome: Outcome,
    /// Connections and bytes moved.
    pub stats: Arc<MuxStats>,
}

/// Why a forwarded connection failed, in the user's terms: the agent's reason when it reset
/// the stream (the destination cannot be reached, or reset it), else the local failure.
pub fn failure_reason(r: &StreamReport) -> &str {
    r.peer_reason.as_deref().unwrap_or(&r.end)
}

/// Runs a forward on `listener` until `stop` or the session's end, on the engine of
/// [`airlock_client::port`], telling `voice` about connections as they fail. Shared by
/// `airlock port-forward` and the plugin mode so that both serve connections the same way.
pub async fn serve(
    grant: StreamGrant,
    api: ApiClient,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
    voice: Voice,
) -> anyhow::Result<Served> {
    let (rep_tx, mut rep_rx) = mpsc::channel::<StreamReport>(256);
    let hooks = port::new_hooks(Some(rep_tx));
    let stats = hooks.stats.clone();
    let opts = SessionOptions {
        tls: api.tls(),
        api: Some(api),
        mux_window: DEFAULT_MUX_WINDOW,
        ..Default::default()
    };
    let fwd = ForwardOptions {
        hooks,
        max_streams: 0,
    };
    let live = voice == Voice::Airlock { live: true };
    let report_voice = voice.clone();
    let reports = tokio::spawn(async move {
        while let Some(r) = rep_rx.recv().await {
            if !r.failed {
                continue;
            }
            match &report_voice {
                Voice::Airlock { live } => {
                    clear_line(*live);
                    eprintln!(
                        "connection from {} failed: {}",
                        r.destination,
                        failure_reason(&r)
                    );
                }
                // Like the real plugin, only what the destination did: the local client knows
                // what it did itself.
                Voice::Plugin { .. } => {
                    if let Some(why) = &r.peer_reason {
                        println!("\nConnection to destination port failed: {why}");
                    }
                }
            }
        }
    });
    let status_stop = CancellationToken::new();
    let status = match &voice {
        Voice::Airlock { live: true } => Some(tokio::spawn(status_line(
            stats.clone(),
            status_stop.clone(),
        ))),
        Voice::Airlock { live: false } => None,
        Voice::Plugin { session_id } => Some(tokio::spawn(first_connection(
            stats.clone(),
            session_id.clone(),
            status_stop.clone(),
        ))),
    };
    let stopped = stop.clone();
    let result = port::forward(grant, opts, listener, fwd, stop).await;
    status_stop.cancel();
    if let Some(s) = status {
        let _ = s.await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), reports).await;
    clear_line(live);
    Ok(Served {
        stopped: stopped.is_cancelled(),
        outcome: result?,
        stats,
    })
}

/// Prints the real plugin's line for the first connection accepted (it prints it once only).
async fn first_connection(stats: Arc<MuxStats>, session_id: String, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if stats.total.load(Ordering::Relaxed) > 0 {
            println!("\nConnection accepted for session [{session_id}]");
            return;
        }
    }
}

fn clear_line(live: bool) {
    if live {
        eprint!("\r\x1b[K");
    }
}

/// Bytes for people: 1.2 MB, 340 kB, 12 B.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = UNITS[0];
    for u in UNITS.iter().skip(1) {
        if v < 1000.0 {
            break;
        }
        v /= 1000.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

async fn status_line(stats: Arc<MuxStats>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last = String::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let line = format!(
            "{} open, {} total | sent {} | received {}",
            stats.open.load(Ordering::Relaxed),
            stats.total.load(Ordering::Relaxed),
            human(stats.sent.load(Ordering::Relaxed)),
            human(stats.received.load(Ordering::Relaxed)),
        );
        if line != last {
            eprint!("\r\x1b[K{line}");
            last = line;
        }
    }
}

/// `airlock ssh-proxy`.
pub async fn ssh_proxy(a: SshProxyArgs) -> anyhow::Result<i32> {
    let api = ApiClient::new(Profile::load()?)?;
    let mut input = serde_json::json!({
        "Target": a.target,
        "DocumentName": "AWS-StartSSHSession",
        "Parameters": { "portNumber": [a.port.to_string()] },
    });
    if let Some(r) = &a.reason {
        input["Reason"] = r.clone().into();
    }
    let grant = api.start_session(&input).await?;
    stdio_stream(grant, api).await
}

/// Relays stdin and stdout, unchanged, over a standard-stream port session until it ends.
pub async fn stdio_stream(grant: StreamGrant, api: ApiClient) -> anyhow::Result<i32> {
    let terminate_api = Some(api.clone());
    let session_id = grant.session_id.clone();
    let (ev_tx, mut ev_rx) = mpsc::channel::<SessionEvent>(8);
    let opts = SessionOptions {
        tls: api.tls(),
        api: Some(api),
        // Tells an Airlock agent that stdin EOF means "half-close the target".
        no_pty: true,
        events: Some(ev_tx),
        ..Default::default()
    };
    let (in_tx, in_rx) = mpsc::channel::<Input>(16);
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(64);
    let session = tokio::spawn(run(grant, opts, in_rx, out_tx));
    let airlock_agent = tokio::spawn(async move {
        while let Some(ev) = ev_rx.recv().await {
            if let SessionEvent::Handshake(h) = ev {
                return h.airlock.is_some();
            }
        }
        false
    });
    let signal_tx = in_tx.clone();
    let stdin_task = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let chunk = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
                    if in_tx.send(Input::Data(chunk)).await.is_err() {
                        return None;
                    }
                }
            }
        }
        Some(in_tx)
    });
    let mut out_task = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(o) = out_rx.recv().await {
            match o {
                Output::Stdout(b) => {
                    if stdout.write_all(&b).await.is_err() || stdout.flush().await.is_err() {
                        break;
                    }
                }
                // The server's notices (e.g. the idle timeout's warning): ssh shows a proxy's
                // stderr to its user.
                Output::Stderr(b) => {
                    let _ = tokio::io::stderr().write_all(&b).await;
                }
            }
        }
    });
    tokio::pin!(stdin_task);
    let mut session = session;
    let mut airlock_agent = Some(airlock_agent);
    let mut keep_input = None;
    let signalled = end_signal();
    tokio::pin!(signalled);
    let outcome = loop {
        tokio::select! {
            r = &mut session => break r,
            _ = &mut signalled => {
                // ssh ends its ProxyCommand with SIGHUP: end the session properly so the agent
                // closes the target connection (and records it) instead of leaving it open.
                let _ = signal_tx.send(Input::Flag(Flag::TerminateSession)).await;
                if let Some(api) = &terminate_api {
                    let _ = api.terminate_session(&session_id).await;
                }
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut session).await;
                session.abort();
                return Ok(0);
            }
            r = &mut stdin_task, if keep_input.is_none() => {
                let Ok(Some(in_tx)) = r else { continue };
                let is_airlock = match airlock_agent.take() {
                    Some(h) => matches!(tokio::time::timeout(Duration::from_secs(30), h).await, Ok(Ok(true))),
                    None => false,
                };
                if !is_airlock {
                    // An AWS agent cannot be told of a half close: like the plugin, end here.
                    if let Some(api) = &terminate_api {
                        let _ = api.terminate_session(&session_id).await;
                    }
                    session.abort();
                    let _ = tokio::time::timeout(Duration::from_secs(2), &mut out_task).await;
                    return Ok(0);
                }
                // Airlock agents half-close the target and the session ends when it closes.
                let _ = in_tx.send(Input::Flag(Flag::Other(FLAG_INPUT_EOF))).await;
                keep_input = Some(in_tx);
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), &mut out_task).await;
    drop(keep_input);
    match outcome {
        Ok(Ok(o)) if o.reason.is_empty() => Ok(0),
        Ok(Ok(o)) => {
            eprintln!("airlock: {}", o.reason);
            Ok(1)
        }
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(anyhow::anyhow!("the session task failed: {e}")),
    }
}

/// Resolves on SIGHUP, SIGTERM or SIGINT.
pub async fn end_signal() {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    async fn recv(s: &mut Option<Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    let mut hup = signal(SignalKind::hangup()).ok();
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    tokio::select! {
        _ = recv(&mut hup) => {}
        _ = recv(&mut term) => {}
        _ = recv(&mut int) => {}
    }
}
