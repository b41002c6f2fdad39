//! Port forwarding, the client end: every connection accepted on a local listener becomes one
//! stream of a single port session (`AWS-StartPortForwardingSession` or
//! `…ToRemoteHost`), which the agent connects to the target.
//!
//! The session's data channel is the one of [`crate::session`] (resume included); the
//! multiplexing is [`crate::mux`]. With an Airlock agent the handshake agrees on Airlock's
//! mux (per-stream credit, large frames, no digests); with an AWS agent it falls back to smux
//! v1 at AWS's limits, exactly as the session-manager-plugin does.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use airlock_proto::version;
use airlock_proto::{Flag, MuxError, MuxKind};

use crate::api::{ApiClient, StreamGrant};
use crate::mux::{self, MuxConfig, MuxHooks, MuxRole};
use crate::session::{self, Input, Outcome, Output, SessionError, SessionEvent, SessionOptions};

/// Per-stream credit Airlock offers: enough for one stream to fill a loopback or LAN path
/// (bandwidth × delay), small enough that a stalled stream holds little memory.
pub const DEFAULT_MUX_WINDOW: u32 = 4 * 1024 * 1024;
/// How long a stopping forward waits for the agent to confirm the end of the session.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// smux keep-alive interval (xtaci's default), used only with agents that expect it.
const SMUX_KEEPALIVE: Duration = Duration::from_secs(10);

/// Why a forward could not run or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The data channel failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The session ended before it was set up (the reason the server gave, if any).
    #[error("the session ended before it started{}", if .0.is_empty() { String::new() } else { format!(": {}", .0) })]
    Ended(String),
    /// The agent did not answer the handshake in time.
    #[error("the agent did not answer the session handshake within 30 s")]
    HandshakeTimeout,
    /// The agent opened something other than a port session.
    #[error("the agent opened a {0} session, not a port session")]
    NotPort(String),
    /// The agent forwards one connection at a time only (AWS agents older than 3.0.196.0).
    #[error("the agent (version {0}) is too old for multiplexed port forwarding")]
    AgentTooOld(String),
    /// The agent broke the multiplexing protocol.
    #[error("port forwarding protocol error: {0}")]
    Mux(#[from] MuxError),
}

/// Settings of a forward beyond the session's.
#[derive(Clone, Debug, Default)]
pub struct ForwardOptions {
    /// Counters and per-connection reports.
    pub hooks: MuxHooks,
    /// Most connections open at once (0: the engine's default); further ones wait.
    pub max_streams: usize,
}

/// Serves `listener` over the session in `grant` until `stop` fires (then tells the agent,
/// waits briefly for the session to end and returns) or the session ends (the agent or the
/// server closed it). `opts.mux_window` selects Airlock's mux when non-zero (see
/// [`DEFAULT_MUX_WINDOW`]).
pub async fn forward(
    grant: StreamGrant,
    mut opts: SessionOptions,
    listener: TcpListener,
    fwd: ForwardOptions,
    stop: CancellationToken,
) -> Result<Outcome, PortError> {
    let (ev_tx, mut ev_rx) = mpsc::channel::<SessionEvent>(16);
    opts.events = Some(ev_tx);
    let api = opts.api.clone();
    let session_id = grant.session_id.clone();
    let (in_tx, in_rx) = mpsc::channel::<Input>(16);
    let (out_tx, out_rx) = mpsc::channel::<Output>(64);
    let mut session = tokio::spawn(session::run(grant, opts, in_rx, out_tx));

    // Accept from the start: early connections wait in the queue until the mux runs.
    let (sock_tx, sock_rx) = mpsc::channel::<TcpStream>(64);
    let accept_stop = stop.child_token();
    let acceptor = tokio::spawn(accept_loop(listener, sock_tx, accept_stop.clone()));
    let _stop_accepting = accept_stop.clone().drop_guard();

    let info = tokio::select! {
        ev = wait_handshake(&mut ev_rx) => ev,
        _ = tokio::time::sleep(HANDSHAKE_TIMEOUT) => {
            session.abort();
            abandon(api.as_ref(), &session_id).await;
            return Err(PortError::HandshakeTimeout);
        }
        _ = stop.cancelled() => {
            session.abort();
            abandon(api.as_ref(), &session_id).await;
            return Ok(Outcome { exit_code: None, reason: String::new() });
        }
    };
    let Some(info) = info else {
        return match session.await {
            Ok(Ok(o)) => Err(PortError::Ended(o.reason)),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(PortError::Ended(String::new())),
        };
    };
    if info.session_type != "Port" {
        let _ = in_tx.send(Input::Flag(Flag::TerminateSession)).await;
        session.abort();
        abandon(api.as_ref(), &session_id).await;
        return Err(PortError::NotPort(info.session_type));
    }
    let caps = info.airlock;
    let kind = if caps.is_some_and(|c| c.mux >= 1) {
        MuxKind::Airlock
    } else if version::plugin_gate(&info.agent_version, version::MUX_MIN_AGENT_VERSION) {
        MuxKind::Smux1
    } else {
        session.abort();
        abandon(api.as_ref(), &session_id).await;
        return Err(PortError::AgentTooOld(info.agent_version));
    };
    let max_payload = caps.map_or(1024, |c| c.max_payload as usize);
    let mut config = MuxConfig::new(
        kind,
        MuxRole::Client,
        max_payload,
        caps.map_or(0, |c| c.mux_window),
    );
    if fwd.max_streams > 0 {
        config.max_streams = fwd.max_streams;
    }
    if kind == MuxKind::Smux1 && version::agent_wants_keepalive(&info.agent_version) {
        config.keepalive = Some(SMUX_KEEPALIVE);
    }
    tracing::debug!(?kind, max_payload, "port session ready");

    let flags = tokio::spawn(async move {
        while let Some(ev) = ev_rx.recv().await {
            match ev {
                SessionEvent::Flag(Flag::ConnectToPortError) => tracing::warn!(
                    "the agent could not connect to the destination port (see the agent's log)"
                ),
                // E.g. the idle timeout's warning: port sessions have no terminal to show it.
                SessionEvent::Notice(text) => tracing::warn!("{text}"),
                _ => {}
            }
        }
    });

    let mux_cancel = CancellationToken::new();
    // The engine reads the session's output and writes its input directly.
    let engine = mux::run(
        config,
        out_rx,
        in_tx.clone(),
        Some(sock_rx),
        fwd.hooks.clone(),
        mux_cancel.clone(),
    );
    tokio::pin!(engine);
    let result = tokio::select! {
        r = &mut engine => {
            // The session ended (its output closed) or the agent broke the protocol.
            if let Err(e) = r {
                let _ = in_tx.send(Input::Flag(Flag::TerminateSession)).await;
                let _ = tokio::time::timeout(STOP_GRACE, &mut session).await;
                session.abort();
                Err(PortError::Mux(e))
            } else {
                match session.await {
                    Ok(r) => r.map_err(PortError::from),
                    Err(_) => Err(PortError::Ended(String::new())),
                }
            }
        }
        _ = stop.cancelled() => {
            accept_stop.cancel();
            // Tell the agent (it ends the session and the server closes both ends).
            let _ = in_tx.send(Input::Flag(Flag::TerminateSession)).await;
            let outcome = match tokio::time::timeout(STOP_GRACE, &mut session).await {
                Ok(Ok(r)) => r.map_err(PortError::from),
                Ok(Err(_)) => Err(PortError::Ended(String::new())),
                Err(_) => {
                    session.abort();
                    Ok(Outcome { exit_code: None, reason: String::new() })
                }
            };
            mux_cancel.cancel();
            let _ = engine.await;
            outcome
        }
    };
    accept_stop.cancel();
    let _ = acceptor.await;
    drop(in_tx);
    flags.abort();
    let _ = flags.await;
    result
}

/// Ends a session this forward gives up on before its multiplexing ran (stopped during the
/// handshake, or the handshake failed), so it does not stay open on the server and the host:
/// the data channel may not carry a flag yet, so the API is told.
async fn abandon(api: Option<&ApiClient>, session_id: &str) {
    let Some(api) = api else { return };
    match tokio::time::timeout(STOP_GRACE, api.terminate_session(session_id)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(session_id, "could not terminate the session: {e}"),
        Err(_) => tracing::warn!(session_id, "could not terminate the session: no answer"),
    }
}

async fn wait_handshake(
    ev_rx: &mut mpsc::Receiver<SessionEvent>,
) -> Option<session::HandshakeInfo> {
    while let Some(ev) = ev_rx.recv().await {
        if let SessionEvent::Handshake(info) = ev {
            return Some(info);
        }
    }
    None
}

async fn accept_loop(listener: TcpListener, tx: mpsc::Sender<TcpStream>, stop: CancellationToken) {
    loop {
        let r = tokio::select! {
            r = listener.accept() => r,
            _ = stop.cancelled() => break,
        };
        match r {
            Ok((sock, _)) => {
                let _ = sock.set_nodelay(true);
                if tx.send(sock).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                // EMFILE and the like: wait a little rather than spin.
                tracing::warn!("cannot accept a local connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Shared counters, for callers that build [`ForwardOptions`] and show progress.
pub fn new_hooks(reports: Option<mpsc::Sender<mux::StreamReport>>) -> MuxHooks {
    MuxHooks {
        stats: Arc::new(mux::MuxStats::default()),
        reports,
    }
}
