//! What the session limits cost: the per-frame activity check on the relay's data path, and
//! one tick of the enforcer over thousands of live sessions.
//!
//! `cargo bench -p airlock-server --bench session_limits`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_proto::{Frame, MessageType, PayloadType};
use airlock_server::gateway::relay::Relay;
use airlock_server::session_limits::{carries_activity, check_all, precise_now};

fn main() {
    per_frame();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(enforcer_ticks());
}

/// The relay's added work per relayed frame: the payload-type look, the keep-alive test, the
/// echo test and the activity stamp, for a keystroke and for a 16 KiB output frame.
fn per_frame() {
    let relay = Relay::new("bench");
    for (what, payload) in [
        ("1-byte keystroke", vec![b'x']),
        ("16 KiB output", vec![b'y'; 16 * 1024]),
    ] {
        let frame = Frame::new(
            MessageType::OutputStreamData,
            1,
            0,
            PayloadType::OUTPUT,
            payload.into(),
        )
        .encode(true);
        let n = 20_000_000u64;
        // What the relay already did per frame before limits: the message-type look.
        let t = Instant::now();
        for _ in 0..n {
            black_box(airlock_proto::peek_message_type(black_box(&frame[..])));
        }
        let before = t.elapsed().as_nanos() as f64 / n as f64;
        let t = Instant::now();
        for _ in 0..n {
            let f = black_box(&frame[..]);
            if carries_activity(f) && !relay.is_echo(f) {
                relay.touch();
            }
        }
        let added = t.elapsed().as_nanos() as f64 / n as f64;
        println!(
            "per frame ({what}): {added:.1} ns added for the activity check and stamp \
             (the message-type look the relay already does: {before:.1} ns)"
        );
    }
}

/// One enforcer tick over N live sessions, each with a relay.
async fn enforcer_ticks() {
    for n in [1_000usize, 10_000, 50_000] {
        let dir =
            std::env::temp_dir().join(format!("airlock-bench-limits-{}-{n}", std::process::id()));
        let server = airlock_server::start(airlock_server::ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        let state: Arc<airlock_server::AppState> = server.state.clone();
        for i in 0..n {
            let id = format!("bench-{i:08}");
            state.live.add(&id, "Standard_Stream", None);
            let _ = state.hub.relay(&id);
        }
        let ticks = 50u32;
        let t = Instant::now();
        for _ in 0..ticks {
            check_all(&state, precise_now(), Duration::from_secs(60));
        }
        let per_tick = t.elapsed() / ticks;
        println!(
            "enforcer tick over {n} live sessions: {:.3} ms ({:.0} ns per session)",
            per_tick.as_secs_f64() * 1000.0,
            per_tick.as_nanos() as f64 / n as f64
        );
        server.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
