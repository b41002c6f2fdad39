//! The relay of one session: pairs the client's and the agent's data channels and passes
//! frames between them untouched (no decode, no re-hash), with bounded queues so that
//! back-pressure flows from a slow reader through the gateway to the sender.
//!
//! Each side's connection registers a bounded sender for frames *to* it. A side's reader
//! forwards each frame to the peer's current sender, and while the peer is absent (e.g. the
//! plugin reconnecting for ResumeSession) it simply stops reading: TCP holds the rest.

use airlock_wire::Message;
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
}

impl Relay {
    /// A relay with neither side attached.
    pub fn new(session_id: &str) -> Self {
        Relay {
            session_id: session_id.to_owned(),
            client: watch::channel(None).0,
            agent: watch::channel(None).0,
            ended: CancellationToken::new(),
        }
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
