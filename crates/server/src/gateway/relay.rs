//! The relay of one session: pairs the client's and the agent's data channels and passes
//! frames between them untouched (no decode, no re-hash), with bounded queues so that
//! back-pressure flows from a slow reader through the gateway to the sender.
//!
//! Each side's connection registers a bounded sender for frames *to* it. A side's reader
//! forwards each frame to the peer's current sender, and while the peer is absent (e.g. the
//! plugin reconnecting for ResumeSession) it simply stops reading: TCP holds the rest.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use airlock_wire::Message;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::hub::Side;

/// Frames queued towards one side before its reader on the other side has to wait.
pub const SIDE_QUEUE: usize = 16;

/// A side's current writer queue and the token that cuts that connection off.
#[derive(Clone, Debug)]
pub struct SideConn {
    /// Frames to write to this side's socket.
    pub tx: mpsc::Sender<Message>,
    /// Cancelled when this connection is replaced or the session ends.
    pub cancel: CancellationToken,
    /// Distinguishes reconnects.
    pub conn_id: u64,
}

/// State of one session's relay.
#[derive(Debug)]
pub struct Relay {
    session_id: String,
    client: watch::Sender<Option<SideConn>>,
    agent: watch::Sender<Option<SideConn>>,
    ended: CancellationToken,
    /// When the session last carried input or output ([`crate::session_limits::coarse_now`]
    /// units): one relaxed load, and a store at most once per clock tick, per frame.
    activity: AtomicU64,
    /// Set while the agent is expected to echo a notice into the session's output, which must
    /// not count as activity.
    echo_armed: AtomicBool,
    echo: Mutex<Option<Bytes>>,
}

impl Relay {
    /// A relay with neither side attached.
    pub fn new(session_id: &str) -> Self {
        Relay {
            session_id: session_id.to_owned(),
            client: watch::channel(None).0,
            agent: watch::channel(None).0,
            ended: CancellationToken::new(),
            activity: AtomicU64::new(crate::session_limits::precise_now()),
            echo_armed: AtomicBool::new(false),
            echo: Mutex::new(None),
        }
    }

    /// Records input or output now (the idle timeout counts from the last of these).
    pub fn touch(&self) {
        let now = crate::session_limits::coarse_now();
        if self.activity.load(Ordering::Relaxed) < now {
            self.activity.store(now, Ordering::Relaxed);
        }
    }

    /// When the session last carried input or output.
    pub fn last_activity(&self) -> u64 {
        self.activity.load(Ordering::Relaxed)
    }

    /// The agent is about to echo `text` into the session's output: that frame is the
    /// gateway's own notice, not activity.
    pub fn expect_echo(&self, text: Bytes) {
        *self.echo.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
        self.echo_armed.store(true, Ordering::Release);
    }

    /// Whether the agent's frame `data` is the echo of the notice (consumed once seen).
    pub fn is_echo(&self, data: &[u8]) -> bool {
        if !self.echo_armed.load(Ordering::Acquire) {
            return false;
        }
        let mut echo = self.echo.lock().unwrap_or_else(|e| e.into_inner());
        let hit = echo.as_ref().is_some_and(|e| data.ends_with(e));
        if hit {
            *echo = None;
            self.echo_armed.store(false, Ordering::Release);
        }
        hit
    }

    /// The session this relay serves.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    fn slot(&self, side: Side) -> &watch::Sender<Option<SideConn>> {
        match side {
            Side::Client => &self.client,
            Side::Agent => &self.agent,
        }
    }

    /// Attaches a connection for `side`, cutting off the connection it replaces.
    /// Returns whether the peer is attached too.
    pub fn attach(&self, side: Side, conn: SideConn) -> bool {
        let old = self.slot(side).send_replace(Some(conn));
        if let Some(old) = old {
            old.cancel.cancel();
        }
        self.slot(side.peer()).borrow().is_some()
    }

    /// Detaches `side` if `conn_id` is still its connection.
    pub fn detach(&self, side: Side, conn_id: u64) -> bool {
        let mut detached = false;
        self.slot(side).send_if_modified(|cur| {
            if cur.as_ref().map(|c| c.conn_id) == Some(conn_id) {
                *cur = None;
                detached = true;
                true
            } else {
                false
            }
        });
        detached
    }

    /// Queues a frame to `side` if it is attached and has room; false otherwise.
    pub fn try_send_to(&self, side: Side, msg: Message) -> bool {
        let conn = self.slot(side).borrow().clone();
        conn.is_some_and(|c| c.tx.try_send(msg).is_ok())
    }

    /// Whether a side is attached.
    pub fn is_attached(&self, side: Side) -> bool {
        self.slot(side).borrow().is_some()
    }

    /// Watches the writer queue of `side` (the peer of a reader).
    pub fn watch(&self, side: Side) -> watch::Receiver<Option<SideConn>> {
        self.slot(side).subscribe()
    }

    /// Cancelled when the session ends.
    pub fn ended(&self) -> &CancellationToken {
        &self.ended
    }

    /// Queues a last frame to each attached side (in order after what is queued already),
    /// then ends the relay; the writers flush and close their sockets.
    pub async fn finish(&self, last_frame_for: impl Fn(Side) -> Message) {
        for side in [Side::Client, Side::Agent] {
            let conn = self.slot(side).borrow().clone();
            if let Some(conn) = conn {
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(2),
                    conn.tx.send(last_frame_for(side)),
                )
                .await;
            }
        }
        self.end();
    }

    /// Ends the relay at once.
    pub fn end(&self) {
        self.ended.cancel();
    }
}
