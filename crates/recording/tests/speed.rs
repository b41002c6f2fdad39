//! Rough throughput of the writer and the transcript (run with `--release --ignored`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use airlock_recording::*;
use std::time::Instant;

#[test]
#[ignore = "a measurement, not a check: cargo test --release -p airlock-recording --test speed -- --ignored"]
fn writer_and_transcript_throughput() {
    let meta = Meta {
        session: "s".into(),
        target: "t".into(),
        owner: "o".into(),
        document: "d".into(),
        width: 80,
        height: 24,
        timestamp: 0,
        term: "xterm".into(),
    };
    let line =
        b"the quick brown fox jumps over the lazy dog 0123456789 \"quoted\" \\ tab\there\r\n";
    let frame: Vec<u8> = line.iter().copied().cycle().take(4096).collect();
    let total = 64usize << 20;
    let mut r = Recorder::new(&meta, &[1; 32]);
    let t0 = Instant::now();
    let mut n = 0;
    let mut chunks = Vec::new();
    while n < total {
        r.event(n as f64 / 1e9, EventKind::Output, &frame);
        n += frame.len();
        if r.should_flush() {
            chunks.push(r.flush().unwrap().bytes);
        }
    }
    let w = t0.elapsed();
    let t1 = Instant::now();
    let cast = export(&chunks).unwrap();
    let (_, evs) = parse_cast(&cast).unwrap();
    let p = t1.elapsed();
    let t2 = Instant::now();
    let text = transcript(&evs, false);
    let tr = t2.elapsed();
    let mib = total as f64 / 1048576.0;
    eprintln!(
        "writer {:.0} MiB/s, export+parse {:.0} MiB/s, transcript {:.0} MiB/s ({} bytes of text)",
        mib / w.as_secs_f64(),
        mib / p.as_secs_f64(),
        mib / tr.as_secs_f64(),
        text.len()
    );
}
