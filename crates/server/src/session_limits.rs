//! The session limits of the preferences in force: the idle timeout and the maximum session
//! duration, each announced one minute before it ends the session.
//!
//! One task serves every live session: each tick (a sixtieth of a minute, at most 1 s) it
//! reads the preferences once and walks the in-memory registry of live sessions, comparing
//! each session's start and its relay's last activity with the limits. Nothing here touches
//! the database until a session is warned or ended, so thousands of sessions cost a few
//! atomic loads per tick.
//!
//! Activity is recorded by the relay on the data path ([`crate::gateway::relay::Relay::touch`])
//! against a coarse clock that this task advances, so a frame costs one relaxed load (and a
//! store at most once per tick). What counts ([`carries_activity`]): stream data (`Output`,
//! `StdErr`) from the client to the agent and from the agent to the client. What does not:
//! acknowledgements, WebSocket pings, handshakes, terminal sizes, publication control, and a
//! payload that is nothing but a multiplexing keep-alive (an smux `NOP`, or Airlock mux's) —
//! the plugin and the agent send those every 10 s on an idle port session, and a forward no
//! byte of which crosses is idle. A NOP sent in the same payload as data counts with the data.
//!
//! The warning reaches the person in two ways: the gateway sends the client an
//! `airlock_notice` message (Airlock clients print it; the AWS plugin logs and ignores unknown
//! message types), and for shell-type sessions it also asks the agent to write the line into
//! the session's output (PTY sessions only), which the plugin shows like any output. The
//! gateway recognises that echo and does not count it as activity.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use airlock_proto::{Frame, MessageType, PayloadType, FRAME_HEADER_LEN};
use bytes::Bytes;

use crate::end_reason::EndReason;
use crate::gateway::hub::Side;
use crate::state::AppState;

static EPOCH: OnceLock<Instant> = OnceLock::new();
static CLOCK: AtomicU64 = AtomicU64::new(0);

/// Milliseconds since the process's first call, read from the clock (start times, checks).
pub fn precise_now() -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The same clock as [`precise_now`], as of the enforcer's last tick: what the data path reads
/// per frame (one atomic load, no system call).
pub fn coarse_now() -> u64 {
    CLOCK.load(Ordering::Relaxed)
}

fn advance_clock() -> u64 {
    let now = precise_now();
    CLOCK.fetch_max(now, Ordering::Relaxed);
    now
}

/// Whether a relayed frame is session activity: stream data with an `Output` or `StdErr`
/// payload that is not only a multiplexing keep-alive. The caller has checked the direction
/// (input from the client, output from the agent).
pub fn carries_activity(frame: &[u8]) -> bool {
    match airlock_proto::peek_payload_type(frame) {
        Some(PayloadType::OUTPUT) | Some(PayloadType::STDERR) => {
            !is_mux_keepalive(frame.get(FRAME_HEADER_LEN..).unwrap_or_default())
        }
        _ => false,
    }
}

/// A payload that is exactly one multiplexing `NOP` frame: smux v1 (`01 03 0000 <sid>`) or
/// Airlock mux (`A1 03 <sid> 00000000`).
pub fn is_mux_keepalive(p: &[u8]) -> bool {
    matches!(
        p,
        [1, 3, 0, 0, _, _, _, _] | [0xA1, 3, _, _, _, _, 0, 0, 0, 0]
    )
}

/// One live session as the enforcer sees it.
#[derive(Debug)]
pub struct Live {
    /// The session.
    pub session_id: String,
    /// Its document's `sessionType`.
    pub session_type: String,
    /// When it started ([`precise_now`] units).
    pub started: u64,
    /// Expiry of the temporary credentials that started it, epoch ms (revocation.rs).
    pub credential_expires_at: Option<i64>,
    warned_idle: AtomicBool,
    warned_max: AtomicBool,
    ending: AtomicBool,
}

/// The registry of live sessions (in memory; the store has the record).
#[derive(Debug, Default)]
pub struct LiveSessions {
    map: Mutex<HashMap<String, Arc<Live>>>,
    /// Serialises the concurrency-limit check and insert of StartSession when a limit is set.
    pub start_lock: tokio::sync::Mutex<()>,
    /// Wakes the revocation sweep (an IAM change happened).
    pub(crate) revoke: tokio::sync::Notify,
    /// What the last IAM changes were, for the end reason's detail.
    pub(crate) revoke_causes: Mutex<Vec<String>>,
}

impl LiveSessions {
    /// Registers a session that has just started.
    pub fn add(&self, session_id: &str, session_type: &str, credential_expires_at: Option<i64>) {
        let live = Arc::new(Live {
            session_id: session_id.to_owned(),
            session_type: session_type.to_owned(),
            started: precise_now(),
            credential_expires_at,
            warned_idle: AtomicBool::new(false),
            warned_max: AtomicBool::new(false),
            ending: AtomicBool::new(false),
        });
        self.lock().insert(session_id.to_owned(), live);
    }

    /// Forgets a session that ended.
    pub fn remove(&self, session_id: &str) {
        self.lock().remove(session_id);
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a live session's temporary credentials have expired by `now_ms` (epoch ms).
    pub fn credential_expired(&self, now_ms: i64) -> bool {
        self.lock()
            .values()
            .any(|l| l.credential_expires_at.is_some_and(|e| e <= now_ms))
    }

    fn snapshot(&self) -> Vec<Arc<Live>> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Live>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether the session's document runs a shell or a command in a terminal (the agent can write
/// a notice into its output).
fn shell_like(session_type: &str) -> bool {
    matches!(session_type, "Standard_Stream" | "InteractiveCommands" | "")
}

/// Starts the enforcer; it stops with the server.
pub fn spawn(state: Arc<AppState>) {
    let tracker = state.tasks.clone();
    tracker.spawn(async move {
        let minute = state.config.minute.max(Duration::from_millis(10));
        let tick = (minute / 60).clamp(Duration::from_millis(20), Duration::from_secs(1));
        let mut timer = tokio::time::interval(tick);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = timer.tick() => {}
                _ = state.shutdown.cancelled() => return,
            }
            let now = advance_clock();
            check_all(&state, now, minute);
        }
    });
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One tick of the enforcer: every live session checked against the preferences at `now`
/// ([`precise_now`] units) with `minute` as a minute. Public for the benchmark
/// (`cargo bench -p airlock-server --bench session_limits`).
pub fn check_all(state: &Arc<AppState>, now: u64, minute: Duration) {
    let prefs = state.preferences.get();
    let minute_ms = millis(minute).max(1);
    let idle_min = prefs.idle_session_timeout_minutes.max(1);
    let idle_ms = u64::from(idle_min).saturating_mul(minute_ms);
    let max = prefs
        .max_session_duration_minutes
        .map(|m| (m, u64::from(m).saturating_mul(minute_ms)));
    for live in state.live.snapshot() {
        if live.ending.load(Ordering::Relaxed) {
            continue;
        }
        let relay = state.hub.existing_relay(&live.session_id);
        if let Some((m, max_ms)) = max {
            let age = now.saturating_sub(live.started);
            if age >= max_ms {
                finish(state, &live, EndReason::MaxDuration(m));
                continue;
            }
            if max_ms > minute_ms
                && age >= max_ms - minute_ms
                && !live.warned_max.swap(true, Ordering::Relaxed)
            {
                let text = format!(
                    "This session will end in 1 minute: the maximum session duration ({}) is reached.",
                    minutes(m)
                );
                warn(&live, relay.as_deref(), "MaxDuration", &text);
            }
        }
        let last = relay
            .as_ref()
            .map_or(0, |r| r.last_activity())
            .max(live.started);
        let idle_for = now.saturating_sub(last);
        if idle_for >= idle_ms {
            // A client that left and never resumed is gone; otherwise the session idled.
            let client_here = relay.as_ref().is_some_and(|r| r.is_attached(Side::Client));
            let reason = if client_here || relay.is_none() {
                EndReason::IdleTimeout(idle_min)
            } else {
                EndReason::ClientGone
            };
            finish(state, &live, reason);
            continue;
        }
        if idle_ms > minute_ms && idle_for >= idle_ms - minute_ms {
            if !live.warned_idle.swap(true, Ordering::Relaxed) {
                let text = format!(
                    "This session will end in 1 minute: idle timeout (no input or output for {}).",
                    minutes(idle_min)
                );
                warn(&live, relay.as_deref(), "IdleTimeout", &text);
            }
        } else if live.warned_idle.load(Ordering::Relaxed) {
            // Activity since the warning: the next idle period warns again.
            live.warned_idle.store(false, Ordering::Relaxed);
        }
    }
}

fn minutes(m: u32) -> String {
    if m == 1 {
        "1 minute".to_owned()
    } else {
        format!("{m} minutes")
    }
}

fn finish(state: &Arc<AppState>, live: &Arc<Live>, reason: EndReason) {
    if live.ending.swap(true, Ordering::Relaxed) {
        return;
    }
    let state2 = state.clone();
    let id = live.session_id.clone();
    state.tasks.spawn(async move {
        crate::sessions::end(
            &state2,
            &id,
            crate::sessions::End {
                reason,
                notify_agent: true,
            },
        )
        .await;
    });
}

/// An `airlock_notice` frame with a JSON payload.
pub fn notice_frame(payload: &serde_json::Value) -> airlock_wire::Message {
    let frame = Frame::new(
        MessageType::Other(airlock_proto::NOTICE_MESSAGE_TYPE.to_owned()),
        0,
        0,
        PayloadType::NONE,
        Bytes::from(payload.to_string()),
    );
    airlock_wire::Message::Binary(frame.encode(true))
}

/// Tells the person at the client that the session is about to end (see the module doc).
fn warn(live: &Live, relay: Option<&crate::gateway::relay::Relay>, kind: &str, text: &str) {
    tracing::info!(session_id = live.session_id, kind, "{text}");
    let Some(relay) = relay else { return };
    let echoed = shell_like(&live.session_type) && relay.is_attached(Side::Agent);
    if echoed {
        let line = format!("\r\n[airlock] {text}\r\n");
        relay.expect_echo(Bytes::from(line.clone()));
        relay.try_send_to(
            Side::Agent,
            notice_frame(&serde_json::json!({ "Kind": kind, "Text": line })),
        );
    }
    relay.try_send_to(
        Side::Client,
        notice_frame(&serde_json::json!({
            "Kind": kind,
            "Message": text,
            "ShownInOutput": echoed,
        })),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalives_are_not_activity() {
        assert!(is_mux_keepalive(&[1, 3, 0, 0, 1, 0, 0, 0]));
        assert!(is_mux_keepalive(&[0xA1, 3, 0, 0, 0, 1, 0, 0, 0, 0]));
        // Data, or a NOP with data behind it, is.
        assert!(!is_mux_keepalive(&[1, 2, 1, 0, 1, 0, 0, 0, b'x']));
        assert!(!is_mux_keepalive(&[
            1, 3, 0, 0, 1, 0, 0, 0, 1, 2, 1, 0, 1, 0, 0, 0, b'x'
        ]));
        assert!(!is_mux_keepalive(b"ls\n"));
        let frame = |pt: PayloadType, p: &'static [u8]| {
            Frame::new(
                MessageType::InputStreamData,
                1,
                0,
                pt,
                Bytes::from_static(p),
            )
            .encode(true)
        };
        assert!(carries_activity(&frame(PayloadType::OUTPUT, b"ls\n")));
        assert!(carries_activity(&frame(PayloadType::STDERR, b"oops")));
        assert!(!carries_activity(&frame(PayloadType::SIZE, b"{}")));
        assert!(!carries_activity(&frame(
            PayloadType::HANDSHAKE_RESPONSE,
            b"{}"
        )));
        assert!(!carries_activity(&frame(
            PayloadType::OUTPUT,
            &[1, 3, 0, 0, 3, 0, 0, 0]
        )));
    }
}
