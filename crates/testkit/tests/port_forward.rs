//! Port forwarding and SSH over a session, end to end on real loopback sockets: a real server
//! and agent in-process, Airlock's client (and its binary for `ssh-proxy`), TCP targets
//! started by each test.
//!
//! - the real plugin's port traffic (`plugin-captures/port-*.jsonl`) replayed against the agent;
//! - bulk transfers with SHA-256 checked (256 MiB each way over Airlock's mux, smux v1 too);
//! - 100 connections at once; a slow reader beside a fast stream;
//! - failures: closed port, unknown host, bad parameters, a client vanishing, the agent dying;
//!   descriptors and tasks back to their baseline;
//! - audit records; ssh, scp through `airlock ssh-proxy` to a local OpenSSH server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use airlock_client::mux::{MuxHooks, StreamReport};
use airlock_client::port::{self, ForwardOptions, PortError, DEFAULT_MUX_WINDOW};
use airlock_client::{ApiClient, Outcome, SessionOptions};
use airlock_proto::mux::{MuxDecoder, MuxFrame, MuxKind};
use airlock_proto::{
    decode, AcknowledgeContent, DecodeOptions, Frame, HandshakeRequest, JsonPayload, MessageType,
    PayloadType,
};
use airlock_testkit::{TempDir, TestAgent, TestServer};

// ---------------------------------------------------------------------------------------------
// Targets

/// What a target saw on each connection it accepted, in order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<ConnLog>>>);

#[derive(Clone, Debug, Default)]
struct ConnLog {
    received: Vec<u8>,
    eof: bool,
}

impl Seen {
    fn get(&self) -> Vec<ConnLog> {
        self.0.lock().unwrap().clone()
    }
}

async fn wait_until<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A scripted target: `greeting` is sent on connect; each connection's bytes are logged; a
/// request ending in a blank line gets `reply` and a close (as the captures' HTTP server).
async fn scripted_target(greeting: &'static [u8], reply: Option<&'static [u8]>) -> (u16, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Seen::default();
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = l.accept().await else {
                return;
            };
            let idx = {
                let mut v = s.0.lock().unwrap();
                v.push(ConnLog::default());
                v.len() - 1
            };
            let s = s.clone();
            tokio::spawn(async move {
                if !greeting.is_empty() {
                    let _ = c.write_all(greeting).await;
                }
                let mut buf = [0u8; 4096];
                loop {
                    match c.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            s.0.lock().unwrap()[idx].eof = true;
                            return;
                        }
                        Ok(n) => {
                            let done = {
                                let mut v = s.0.lock().unwrap();
                                v[idx].received.extend_from_slice(&buf[..n]);
                                v[idx].received.ends_with(b"\r\n\r\n")
                            };
                            if let (true, Some(r)) = (done, reply) {
                                let _ = c.write_all(r).await;
                                return; // closes
                            }
                        }
                    }
                }
            });
        }
    });
    (port, seen)
}

/// Echoes every connection back, closing its write side at the client's EOF.
async fn echo_target() -> u16 {
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

/// On each connection: hashes what it receives (until EOF, or exactly `expect_up` bytes),
/// meanwhile sends `send` bytes of the pattern of seed 7, then writes the 32-byte digest of
/// what it received and closes. (smux v1 streams cannot be half-closed, hence `expect_up`.)
async fn hashing_target(send: u64, expect_up: Option<u64>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((c, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let (mut r, mut w) = c.into_split();
                let writer =
                    tokio::spawn(
                        async move { write_pattern(&mut w, send, 7).await.ok().map(|_| w) },
                    );
                let digest = match expect_up {
                    Some(n) => hash_until_eof(&mut (&mut r).take(n)).await,
                    None => hash_until_eof(&mut r).await,
                };
                if let Ok(Some(mut w)) = writer.await {
                    let _ = w.write_all(&digest).await;
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    port
}

/// One block of deterministic bytes for block `i` of stream `seed`: a pseudo-random block per
/// seed (made once), with the block number written over its first 8 bytes so that no two
/// blocks are alike (a repeated or lost block changes the digest).
fn pattern_block(seed: u64, i: u64, out: &mut [u8]) {
    static CACHE: Mutex<Vec<(u64, Arc<Vec<u8>>)>> = Mutex::new(Vec::new());
    let base = {
        let mut c = CACHE.lock().unwrap();
        match c.iter().find(|(s, _)| *s == seed) {
            Some((_, b)) => b.clone(),
            None => {
                let mut b = vec![0u8; BLOCK];
                let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for chunk in b.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
                }
                let b = Arc::new(b);
                c.push((seed, b.clone()));
                b
            }
        }
    };
    let n = out.len().min(BLOCK);
    out[..n].copy_from_slice(&base[..n]);
    for (d, s) in out.iter_mut().zip(i.to_le_bytes()) {
        *d ^= s;
    }
}

const BLOCK: usize = 256 * 1024;

/// Writes `n` bytes of the pattern of `seed` and returns their SHA-256.
async fn write_pattern<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    n: u64,
    seed: u64,
) -> std::io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    let mut left = n;
    let mut i = 0;
    while left > 0 {
        let len = left.min(BLOCK as u64) as usize;
        pattern_block(seed, i, &mut buf[..len]);
        h.update(&buf[..len]);
        w.write_all(&buf[..len]).await?;
        left -= len as u64;
        i += 1;
    }
    Ok(h.finalize().into())
}

fn pattern_digest(n: u64, seed: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    let mut left = n;
    let mut i = 0;
    while left > 0 {
        let len = left.min(BLOCK as u64) as usize;
        pattern_block(seed, i, &mut buf[..len]);
        h.update(&buf[..len]);
        left -= len as u64;
        i += 1;
    }
    h.finalize().into()
}

async fn hash_until_eof<R: AsyncReadExt + Unpin>(r: &mut R) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => h.update(&buf[..n]),
        }
    }
    h.finalize().into()
}

// ---------------------------------------------------------------------------------------------
// Forwards through Airlock's client

struct Forward {
    addr: SocketAddr,
    session_id: String,
    stop: CancellationToken,
    task: JoinHandle<Result<Outcome, PortError>>,
    hooks: MuxHooks,
    reports: mpsc::Receiver<StreamReport>,
}

impl Forward {
    /// Stops the forward (Ctrl-C) and returns how it ended.
    async fn stop(self) -> Result<Outcome, PortError> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the forward stops in time")
            .unwrap()
    }

    async fn next_report(&mut self, timeout: Duration) -> StreamReport {
        tokio::time::timeout(timeout, self.reports.recv())
            .await
            .expect("a stream report in time")
            .expect("reports open")
    }
}

/// Starts a forward from a fresh local port to `remote_port` (on `host`, or the agent's host).
async fn forward(
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

async fn setup() -> (TestServer, TestAgent) {
    let server = TestServer::start().await;
    let agent = server.agent().await;
    (server, agent)
}

/// Sends `up` bytes through a hashing target while reading its `down` bytes; checks both
/// digests. With `half_close` the client ends its upload with a FIN (Airlock's mux carries
/// half closes); without, it reads everything before closing. Returns the time taken.
async fn sha_roundtrip(
    addr: SocketAddr,
    up: u64,
    down: u64,
    seed: u64,
    half_close: bool,
) -> Duration {
    let started = Instant::now();
    let c = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = c.into_split();
    let writer = tokio::spawn(async move {
        let d = write_pattern(&mut w, up, seed).await.unwrap();
        if half_close {
            w.shutdown().await.unwrap();
        }
        (d, w)
    });
    // The first `down` bytes are the pattern; the 32 after them are the target's digest.
    let mut h = Sha256::new();
    let mut got = 0u64;
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; BLOCK];
    while got < down + 32 {
        let n = r.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream ended after {got} of {} bytes", down + 32);
        let body = ((down.saturating_sub(got)) as usize).min(n);
        h.update(&buf[..body]);
        tail.extend_from_slice(&buf[body..n]);
        got += n as u64;
    }
    assert_eq!(
        r.read(&mut buf).await.unwrap_or(0),
        0,
        "nothing after the digest"
    );
    let (sent, _w) = writer.await.unwrap();
    assert_eq!(tail.len(), 32, "the target's digest arrives last");
    assert_eq!(
        <[u8; 32]>::try_from(&tail[..]).unwrap(),
        sent,
        "SHA-256 of the {up} bytes sent, as the target computed it"
    );
    let got: [u8; 32] = h.finalize().into();
    assert_eq!(
        got,
        pattern_digest(down, 7),
        "SHA-256 of the {down} bytes received"
    );
    started.elapsed()
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

// ---------------------------------------------------------------------------------------------
// Bulk, many connections, slow readers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_256_mib_each_way_with_sha256_checked() {
    let (server, agent) = setup().await;
    let tport = hashing_target(256 << 20, None).await;
    let api = server.api();
    let fwd = forward(&api, &agent.instance_id, tport, None, DEFAULT_MUX_WINDOW).await;
    let took = tokio::time::timeout(
        Duration::from_secs(240),
        sha_roundtrip(fwd.addr, 256 << 20, 256 << 20, 11, true),
    )
    .await
    .expect("256 MiB each way within 240 s");
    eprintln!(
        "256 MiB each way in {:.1} s ({:.0} MB/s per direction, debug build)",
        took.as_secs_f64(),
        268.4 / took.as_secs_f64()
    );
    let stats = fwd.hooks.stats.clone();
    assert_eq!(
        stats.sent.load(std::sync::atomic::Ordering::Relaxed),
        256 << 20
    );
    assert_eq!(
        stats.received.load(std::sync::atomic::Ordering::Relaxed),
        (256 << 20) + 32
    );
    let outcome = fwd.stop().await.unwrap();
    assert_eq!(outcome.reason, "");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smux_v1_fallback_carries_bulk_and_many_connections() {
    let (server, agent) = setup().await;
    let tport = hashing_target(8 << 20, Some(8 << 20)).await;
    let api = server.api();
    // A client that offers no Airlock mux makes the agent speak smux v1, as with the plugin.
    let fwd = forward(&api, &agent.instance_id, tport, None, 0).await;
    tokio::time::timeout(Duration::from_secs(120), async {
        let mut tasks = Vec::new();
        for i in 0..4 {
            tasks.push(tokio::spawn(sha_roundtrip(
                fwd.addr,
                8 << 20,
                8 << 20,
                100 + i,
                false,
            )));
        }
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("smux transfers in time");
    fwd.stop().await.unwrap();
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_connections_through_one_session() {
    let (server, agent) = setup().await;
    let tport = echo_target().await;
    let api = server.api();
    let mut fwd = forward(&api, &agent.instance_id, tport, None, DEFAULT_MUX_WINDOW).await;
    let addr = fwd.addr;
    tokio::time::timeout(Duration::from_secs(120), async {
        // Open all 100 first, so they are truly concurrent, then talk on each.
        let mut conns = Vec::new();
        for _ in 0..100 {
            conns.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut tasks = Vec::new();
        for (i, c) in conns.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                let (mut r, mut w) = c.into_split();
                let n = 64 * 1024 + i * 997;
                let mut data = vec![0u8; n];
                pattern_block(i as u64, 0, &mut data);
                let expect = data.clone();
                let writer = tokio::spawn(async move {
                    w.write_all(&data).await.unwrap();
                    w.shutdown().await.unwrap();
                });
                let mut back = Vec::new();
                r.read_to_end(&mut back).await.unwrap();
                writer.await.unwrap();
                assert_eq!(back.len(), expect.len(), "connection {i}");
                assert!(back == expect, "connection {i} echoed different bytes");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("100 connections in time");
    let stats = &fwd.hooks.stats;
    assert_eq!(stats.total.load(std::sync::atomic::Ordering::Relaxed), 100);
    let mut ends = HashMap::new();
    for _ in 0..100 {
        let r = fwd.next_report(Duration::from_secs(10)).await;
        *ends.entry(r.end).or_insert(0) += 1;
    }
    assert_eq!(ends.get("closed"), Some(&100), "{ends:?}");
    fwd.stop().await.unwrap();
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_does_not_stall_a_fast_stream() {
    let (server, agent) = setup().await;
    let tport = hashing_target(64 << 20, None).await;
    let api = server.api();
    let fwd = forward(&api, &agent.instance_id, tport, None, DEFAULT_MUX_WINDOW).await;
    // The slow stream: the target sends 64 MiB that nobody reads (only 1 KiB, then nothing).
    let mut slow = TcpStream::connect(fwd.addr).await.unwrap();
    let mut first = [0u8; 1024];
    slow.read_exact(&mut first).await.unwrap();
    // Let its window fill up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Meanwhile a fast stream moves 64 MiB each way at full speed.
    let took = tokio::time::timeout(
        Duration::from_secs(60),
        sha_roundtrip(fwd.addr, 64 << 20, 64 << 20, 5, true),
    )
    .await
    .expect("the fast stream is not stalled by the slow one");
    eprintln!(
        "fast stream beside a stalled one: {:.1} s",
        took.as_secs_f64()
    );
    // The slow stream is intact: read it all now and check it.
    let mut h = Sha256::new();
    h.update(first);
    let (mut r, mut w) = slow.into_split();
    w.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    h.update(&rest[..rest.len() - 32]);
    let got: [u8; 32] = h.finalize().into();
    assert_eq!(got, pattern_digest(64 << 20, 7), "the slow stream's bytes");
    fwd.stop().await.unwrap();
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zz_debug() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("DBG").unwrap_or("warn".into()),
        ))
        .try_init();
    let (server, agent) = setup().await;
    let n: u64 = std::env::var("N")
        .map(|v| v.parse().unwrap())
        .unwrap_or(16 << 20);
    let tport = hashing_target(n, None).await;
    let api = server.api();
    let fwd = forward(&api, &agent.instance_id, tport, None, DEFAULT_MUX_WINDOW).await;
    let stats = fwd.hooks.stats.clone();
    let mon = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            eprintln!(
                "sent {} received {}",
                stats.sent.load(std::sync::atomic::Ordering::Relaxed),
                stats.received.load(std::sync::atomic::Ordering::Relaxed)
            );
        }
    });
    let took = tokio::time::timeout(
        Duration::from_secs(30),
        sha_roundtrip(fwd.addr, n, n, 3, true),
    )
    .await;
    eprintln!("took {took:?}");
    mon.abort();
}
