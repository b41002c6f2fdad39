//! The gateway's in-memory state: which agents hold a control channel, which data-channel
//! tokens are outstanding, and the relay of each live session.
//!
//! Everything here is short-lived by nature (sockets and single-use tokens), so it lives in
//! memory; what must survive a restart is in the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::relay::Relay;

/// Which end of a session a data channel belongs to; a token is bound to exactly one side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The person's client (Airlock CLI or AWS session-manager-plugin).
    Client,
    /// The agent on the host.
    Agent,
}

impl Side {
    /// The other end.
    pub fn peer(self) -> Side {
        match self {
            Side::Client => Side::Agent,
            Side::Agent => Side::Client,
        }
    }
}

/// One outstanding data-channel token.
#[derive(Clone, Debug)]
struct Grant {
    session_id: String,
    side: Side,
    expires_at: Instant,
}

/// A connected agent's control channel.
#[derive(Clone, Debug)]
pub struct AgentConn {
    /// Distinguishes a reconnect from the connection it replaced.
    pub conn_id: u64,
    /// Frames to send to the agent.
    pub tx: mpsc::Sender<Message>,
    /// Cancelled to cut the agent off (deregistration, replacement, shutdown).
    pub cancel: CancellationToken,
}

/// Why a token was refused; the data channel is closed with this text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Never issued, or already used.
    #[error("unknown or already used token")]
    Unknown,
    /// Issued but not used in time.
    #[error("token expired")]
    Expired,
    /// Issued for another session.
    #[error("token does not belong to this session")]
    WrongSession,
}

/// Shared gateway state.
#[derive(Debug, Default)]
pub struct Hub {
    agents: Mutex<HashMap<String, AgentConn>>,
    tokens: Mutex<HashMap<String, Grant>>,
    relays: Mutex<HashMap<String, Arc<Relay>>>,
    next_conn: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another task panicked while holding it; the maps stay usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// A fresh id for a connection.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Records an agent's control channel, cutting off any older one of the same instance.
    pub fn add_agent(&self, instance_id: &str, conn: AgentConn) {
        if let Some(old) = lock(&self.agents).insert(instance_id.to_owned(), conn) {
            old.cancel.cancel();
        }
    }

    /// Forgets an agent's control channel if it is still the given connection.
    pub fn remove_agent(&self, instance_id: &str, conn_id: u64) {
        let mut agents = lock(&self.agents);
        if agents.get(instance_id).map(|c| c.conn_id) == Some(conn_id) {
            agents.remove(instance_id);
        }
    }

    /// The agent's control channel, when connected.
    pub fn agent(&self, instance_id: &str) -> Option<AgentConn> {
        lock(&self.agents)
            .get(instance_id)
            .filter(|c| !c.cancel.is_cancelled())
            .cloned()
    }

    /// Cuts an agent off at once (deregistration), telling it why: an agent closed for
    /// this reason stops for good instead of reconnecting after its backoff to learn it.
    pub fn disconnect_agent(&self, instance_id: &str) {
        if let Some(conn) = lock(&self.agents).remove(instance_id) {
            // Queued before the cancel, so the writer sends it ahead of its generic close.
            let _ = conn.tx.try_send(Message::Close(Some(CloseFrame {
                code: 1008,
                reason: "instance is deregistered".into(),
            })));
            conn.cancel.cancel();
        }
    }

    /// Issues a single-use token (≥ 256 bits of randomness) for one side of one session.
    pub fn issue_token(&self, session_id: &str, side: Side, ttl: Duration) -> String {
        use base64::Engine;
        use rand::RngCore;
        let mut raw = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut raw);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let now = Instant::now();
        let mut tokens = lock(&self.tokens);
        tokens.retain(|_, g| g.expires_at > now);
        tokens.insert(
            token.clone(),
            Grant {
                session_id: session_id.to_owned(),
                side,
                expires_at: now + ttl,
            },
        );
        token
    }

    /// Consumes a token: valid once, before it expires, for its own session only.
    pub fn take_token(&self, token: &str, session_id: &str) -> Result<Side, TokenError> {
        let grant = lock(&self.tokens)
            .remove(token)
            .ok_or(TokenError::Unknown)?;
        if grant.expires_at <= Instant::now() {
            return Err(TokenError::Expired);
        }
        if grant.session_id != session_id {
            return Err(TokenError::WrongSession);
        }
        Ok(grant.side)
    }

    /// Revokes every outstanding token of a session (it ended).
    pub fn revoke_tokens(&self, session_id: &str) {
        lock(&self.tokens).retain(|_, g| g.session_id != session_id);
    }

    /// The relay of a session, created on first use.
    pub fn relay(&self, session_id: &str) -> Arc<Relay> {
        lock(&self.relays)
            .entry(session_id.to_owned())
            .or_insert_with(|| Arc::new(Relay::new(session_id)))
            .clone()
    }

    /// The relay of a session if one exists.
    pub fn existing_relay(&self, session_id: &str) -> Option<Arc<Relay>> {
        lock(&self.relays).get(session_id).cloned()
    }

    /// Drops a session's relay once it has ended.
    pub fn remove_relay(&self, session_id: &str) {
        lock(&self.relays).remove(session_id);
    }

    /// Number of live relays (tests check nothing leaks).
    pub fn relay_count(&self) -> usize {
        lock(&self.relays).len()
    }

    /// Every connected agent's cancel token, for shutdown.
    pub fn shutdown(&self) {
        for (_, c) in lock(&self.agents).drain() {
            c.cancel.cancel();
        }
        for (_, r) in lock(&self.relays).drain() {
            r.end();
        }
    }
}
