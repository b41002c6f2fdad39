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
use tokio_tungstenite::tungstenite::Message;

use airlock_client::mux::StreamReport;
use airlock_client::port::DEFAULT_MUX_WINDOW;
use airlock_client::ApiClient;
use airlock_proto::mux::{MuxDecoder, MuxFrame, MuxKind};
use airlock_proto::{
    decode, AcknowledgeContent, DecodeOptions, Frame, HandshakeRequest, JsonPayload, MessageType,
    PayloadType,
};
use airlock_testkit::{Sshd, TempDir, TestAgent, TestServer};

mod forwards;
use forwards::{agent_process, closed_at_once, echo_target, echoes, forward};

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

/// Open descriptors other than files on disk: sockets, pipes, event fds — what a leaked
/// connection or task holds. (The server's SQLite pool may open another connection to its
/// database file whenever load peaks; that is the pool working, not a leak.)
fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .map(|t| !t.is_absolute() || !t.exists())
                        .unwrap_or(false)
                })
                .count()
        })
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

// ---------------------------------------------------------------------------------------------
// The real plugin's port traffic, replayed against the agent

fn captures_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("AIRLOCK_CAPTURES_DIR") {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/plugin-captures")
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// What the plugin sent in a capture: its opening text frame and its stream frames (not its
/// acks, which name the scripted server's MessageIds), exactly as recorded.
struct PluginTraffic {
    open: Value,
    inputs: Vec<Vec<u8>>,
}

fn plugin_traffic(file: &str) -> PluginTraffic {
    let path = captures_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} (set AIRLOCK_CAPTURES_DIR): {e}",
            path.display()
        )
    });
    let mut open = Value::Null;
    let mut inputs = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["dir"] != "plugin->server" {
            continue;
        }
        match v["kind"].as_str() {
            Some("text") => open = v["decoded"]["json"].clone(),
            Some("binary") if v["decoded"]["MessageType"] == "input_stream_data" => {
                let raw = unhex(v["hex"].as_str().unwrap());
                assert_eq!(
                    v["decoded"]["SequenceNumber"].as_i64().unwrap() as usize,
                    inputs.len(),
                    "input frames in sequence"
                );
                inputs.push(raw);
            }
            _ => {}
        }
    }
    assert!(
        open.is_object() && !inputs.is_empty(),
        "{file} holds plugin traffic"
    );
    PluginTraffic { open, inputs }
}

type RawWs = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A stand-in for the plugin: sends recorded frames byte for byte, acks what the agent sends
/// (with the plugin's ack format), and keeps the agent's stream frames in order.
struct ReplayPlugin {
    ws: RawWs,
    /// Stream frames from the agent by sequence number (duplicates dropped).
    outputs: std::collections::BTreeMap<i64, Frame>,
    /// `channel_closed`'s Output once it arrived.
    closed: Option<String>,
}

impl ReplayPlugin {
    async fn connect(grant: &airlock_client::StreamGrant, mut open: Value) -> ReplayPlugin {
        let (mut ws, _) = tokio_tungstenite::connect_async(grant.stream_url.as_str())
            .await
            .expect("data channel");
        open["TokenValue"] = json!(grant.token_value);
        ws.send(Message::Text(open.to_string().into()))
            .await
            .unwrap();
        ReplayPlugin {
            ws,
            outputs: Default::default(),
            closed: None,
        }
    }

    async fn send(&mut self, raw: Vec<u8>) {
        self.ws
            .send(Message::Binary(Bytes::from(raw)))
            .await
            .unwrap();
    }

    /// Reads (and acks) until `done` holds, for up to 10 s.
    async fn until(&mut self, what: &str, done: impl Fn(&ReplayPlugin) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done(self) {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("timed out waiting for {what}; got {:?}", self.summary())
                });
            let Some(Ok(Message::Binary(b))) = m else {
                if matches!(m, Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_)))) {
                    continue;
                }
                panic!(
                    "the data channel ended waiting for {what}: {m:?}; got {:?}",
                    self.summary()
                );
            };
            let f = decode(b, &DecodeOptions::default())
                .expect("the agent's frames decode and their digests verify");
            match f.message_type {
                MessageType::OutputStreamData => {
                    let ack = AcknowledgeContent::for_frame(&f).to_frame().encode(true);
                    self.ws.send(Message::Binary(ack)).await.unwrap();
                    self.outputs.entry(f.sequence_number).or_insert(f);
                }
                MessageType::ChannelClosed => {
                    let c = airlock_proto::ChannelClosed::from_payload(&f.payload).unwrap();
                    self.closed = Some(c.output);
                }
                _ => {}
            }
        }
    }

    fn summary(&self) -> Vec<(i64, u32, String)> {
        self.outputs
            .values()
            .map(|f| {
                (
                    f.sequence_number,
                    f.payload_type.0,
                    String::from_utf8_lossy(&f.payload)
                        .chars()
                        .take(80)
                        .collect(),
                )
            })
            .collect()
    }

    fn of_type(&self, pt: PayloadType) -> Vec<Bytes> {
        self.outputs
            .values()
            .filter(|f| f.payload_type == pt)
            .map(|f| f.payload.clone())
            .collect()
    }

    /// The Output payloads so far, concatenated in sequence order.
    fn output_bytes(&self) -> Vec<u8> {
        self.of_type(PayloadType::OUTPUT).concat()
    }

    fn handshake_request(&self) -> Option<HandshakeRequest> {
        self.of_type(PayloadType::HANDSHAKE_REQUEST)
            .first()
            .map(|p| HandshakeRequest::from_payload(p).unwrap())
    }
}

fn session_properties(req: &HandshakeRequest) -> Value {
    assert_eq!(req.agent_version, "3.3.9999.0");
    let action = &req.requested_client_actions[0];
    assert_eq!(action.action_type, "SessionType");
    assert_eq!(action.action_parameters["SessionType"], "Port");
    action.action_parameters["Properties"].clone()
}

async fn port_records(
    server: &TestServer,
    session_id: &str,
    n: usize,
) -> Vec<airlock_server::port_audit::PortConnection> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = airlock_server::port_audit::list(&server.state().store, Some(session_id), 100)
            .await
            .unwrap();
        if rows.len() >= n {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{n} port connection records for {session_id}; have {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn session_status(server: &TestServer, id: &str) -> String {
    server
        .state()
        .store
        .session(id)
        .await
        .unwrap()
        .map(|s| s.status)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_capture_port_mux_replays_against_the_agent() {
    let (server, agent) = setup().await;
    const REPLY: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let (tport, seen) = scripted_target(b"", Some(REPLY)).await;
    let traffic = plugin_traffic("port-mux.jsonl");
    let grant = server
        .api()
        .start_session(&json!({
            "Target": agent.instance_id,
            "DocumentName": "AWS-StartPortForwardingSession",
            "Parameters": {"portNumber": [tport.to_string()], "localPortNumber": ["18950"]},
        }))
        .await
        .unwrap();
    let mut p = ReplayPlugin::connect(&grant, traffic.open.clone()).await;
    p.until("the HandshakeRequest", |p| p.handshake_request().is_some())
        .await;
    assert_eq!(
        session_properties(&p.handshake_request().unwrap()),
        json!({"portNumber": tport.to_string(), "type": "LocalPortForwarding", "localPortNumber": "18950"})
    );
    let mut inputs = traffic.inputs.into_iter();
    p.send(inputs.next().unwrap()).await; // seq 0: HandshakeResponse, ClientVersion 1.2.677.0
    p.until("HandshakeComplete", |p| {
        !p.of_type(PayloadType::HANDSHAKE_COMPLETE).is_empty()
    })
    .await;
    // Client 1: SYN 3, then PSH "GET / HTTP/1.0"; the agent answers on stream 3 with the reply and FIN.
    p.send(inputs.next().unwrap()).await;
    p.send(inputs.next().unwrap()).await;
    let mut expected = vec![1u8, 2, REPLY.len() as u8, 0, 3, 0, 0, 0];
    expected.extend_from_slice(REPLY);
    expected.extend_from_slice(&[1, 1, 0, 0, 3, 0, 0, 0]);
    p.until("the reply and FIN on stream 3", |p| {
        p.output_bytes().len() >= expected.len()
    })
    .await;
    assert_eq!(
        p.output_bytes(),
        expected,
        "the smux bytes the capture's server sent"
    );
    assert_eq!(seen.get()[0].received, b"GET / HTTP/1.0\r\n\r\n");
    // The plugin's FIN 3; client 2: SYN 5, PSH "second", FIN 5 after a second.
    for _ in 0..3 {
        p.send(inputs.next().unwrap()).await;
    }
    wait_until(
        "the target to see \"second\"",
        Duration::from_secs(10),
        || {
            seen.get()
                .get(1)
                .filter(|c| c.received == b"second")
                .map(|_| ())
        },
    )
    .await;
    p.send(inputs.next().unwrap()).await; // FIN 5
    wait_until(
        "the target to see stream 5 closed",
        Duration::from_secs(10),
        || seen.get().get(1).filter(|c| c.eof).map(|_| ()),
    )
    .await;
    // Whatever the agent sent after the first reply concerns stream 5 only, and is at most its FIN.
    let mut dec = MuxDecoder::new(MuxKind::Smux1, 65535);
    let mut frames = Vec::new();
    dec.decode(Bytes::from(p.output_bytes()), &mut frames)
        .unwrap();
    assert!(
        frames[2..]
            .iter()
            .all(|f| *f == MuxFrame::Fin { stream: 5 }),
        "{frames:?}"
    );
    assert!(
        p.of_type(PayloadType::FLAG).is_empty(),
        "no flags: both dials succeeded"
    );
    // Ctrl-C: Flag TerminateSession. The agent ends the session; the server closes the channel.
    p.send(inputs.next().unwrap()).await;
    assert!(inputs.next().is_none());
    p.until("channel_closed", |p| p.closed.is_some()).await;
    assert_eq!(p.closed.as_deref(), Some(""));
    assert_eq!(
        session_status(&server, &grant.session_id).await,
        "Terminated"
    );
    let recs = port_records(&server, &grant.session_id, 2).await;
    let dest = format!("localhost:{tport}");
    assert_eq!(
        recs.iter()
            .map(|r| (
                r.stream_id,
                r.destination.as_str(),
                r.bytes_to_target,
                r.bytes_from_target,
                r.mode.as_str()
            ))
            .collect::<Vec<_>>(),
        vec![
            (3, dest.as_str(), 18, 40, "smux"),
            (5, dest.as_str(), 6, 0, "smux")
        ]
    );
    let owner = server
        .state()
        .store
        .session(&grant.session_id)
        .await
        .unwrap()
        .unwrap()
        .owner;
    assert!(owner.ends_with(":user/admin"), "{owner}");
    assert!(recs
        .iter()
        .all(|r| r.owner == owner && r.target == agent.instance_id));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_capture_port_basic_replays_against_the_agent() {
    let (server, agent) = setup().await;
    const REPLY: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let (tport, seen) = scripted_target(b"", Some(REPLY)).await;
    let traffic = plugin_traffic("port-basic-oldagent.jsonl");
    let api = server.api();
    let grant = api
        .start_session(&json!({
            "Target": agent.instance_id,
            "DocumentName": "AWS-StartPortForwardingSession",
            "Parameters": {"portNumber": [tport.to_string()], "localPortNumber": ["18950"]},
        }))
        .await
        .unwrap();
    let mut p = ReplayPlugin::connect(&grant, traffic.open.clone()).await;
    p.until("the HandshakeRequest", |p| p.handshake_request().is_some())
        .await;
    let mut inputs = traffic.inputs.into_iter();
    // The plugin used basic mode because the capture's server claimed an old agent. Our agent
    // claims a new one, so it picks basic mode from the other side of the rule (§6.3): a client
    // older than 1.1.70. The recorded HandshakeResponse is re-encoded with that version.
    let mut hs = decode(
        Bytes::from(inputs.next().unwrap()),
        &DecodeOptions::default(),
    )
    .unwrap();
    let mut resp = airlock_proto::HandshakeResponse::from_payload(&hs.payload).unwrap();
    assert_eq!(resp.client_version, "1.2.677.0");
    resp.client_version = "1.1.61.0".into();
    hs.payload = resp.to_payload();
    p.send(hs.encode(true).to_vec()).await;
    p.until("HandshakeComplete", |p| {
        !p.of_type(PayloadType::HANDSHAKE_COMPLETE).is_empty()
    })
    .await;
    // Raw bytes: the request, answered raw (no smux header).
    p.send(inputs.next().unwrap()).await;
    p.until("the raw reply", |p| p.output_bytes().len() >= REPLY.len())
        .await;
    assert_eq!(p.output_bytes(), REPLY);
    p.send(inputs.next().unwrap()).await; // DisconnectToPort
    p.send(inputs.next().unwrap()).await; // "second": the agent dials again
    wait_until(
        "the second connection to carry \"second\"",
        Duration::from_secs(10),
        || {
            seen.get()
                .get(1)
                .filter(|c| c.received == b"second")
                .map(|_| ())
        },
    )
    .await;
    p.send(inputs.next().unwrap()).await; // DisconnectToPort
    wait_until(
        "the second connection closed",
        Duration::from_secs(10),
        || seen.get().get(1).filter(|c| c.eof).map(|_| ()),
    )
    .await;
    assert!(inputs.next().is_none());
    assert!(
        p.of_type(PayloadType::FLAG).is_empty(),
        "no flags in basic mode (they would go into the TCP stream)"
    );
    // Ctrl-C in basic mode: the plugin calls TerminateSession and waits for channel_closed.
    api.terminate_session(&grant.session_id).await.unwrap();
    p.until("channel_closed", |p| p.closed.is_some()).await;
    let recs = port_records(&server, &grant.session_id, 2).await;
    assert_eq!(recs[0].mode, "basic");
    assert_eq!(
        (recs[0].bytes_to_target, recs[0].bytes_from_target),
        (18, 40)
    );
    assert_eq!(
        (recs[1].bytes_to_target, recs[1].end_reason.as_str()),
        (6, "closed by the client")
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_capture_port_standard_stream_replays_against_the_agent() {
    let (server, agent) = setup().await;
    const BANNER: &[u8] = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n";
    let (tport, seen) = scripted_target(BANNER, None).await;
    let traffic = plugin_traffic("port-standard-stream.jsonl");
    let api = server.api();
    let grant = api
        .start_session(&json!({
            "Target": agent.instance_id,
            "DocumentName": "AWS-StartSSHSession",
            "Parameters": {"portNumber": [tport.to_string()]},
        }))
        .await
        .unwrap();
    let mut p = ReplayPlugin::connect(&grant, traffic.open.clone()).await;
    p.until("the HandshakeRequest", |p| p.handshake_request().is_some())
        .await;
    // No `type`: a standard stream.
    assert_eq!(
        session_properties(&p.handshake_request().unwrap()),
        json!({"portNumber": tport.to_string()})
    );
    let mut inputs = traffic.inputs.into_iter();
    p.send(inputs.next().unwrap()).await;
    p.until("the server's banner", |p| {
        p.output_bytes().len() >= BANNER.len()
    })
    .await;
    assert_eq!(p.output_bytes(), BANNER);
    p.send(inputs.next().unwrap()).await; // the client's banner
    wait_until(
        "the client's banner at the target",
        Duration::from_secs(10),
        || (seen.get()[0].received == b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u6\r\n").then_some(()),
    )
    .await;
    assert!(inputs.next().is_none());
    // stdin EOF: the plugin just goes away. Ending the session closes the target connection.
    drop(p);
    api.terminate_session(&grant.session_id).await.unwrap();
    wait_until(
        "the target connection closed",
        Duration::from_secs(10),
        || seen.get()[0].eof.then_some(()),
    )
    .await;
    let recs = port_records(&server, &grant.session_id, 1).await;
    assert_eq!(recs[0].mode, "stream");
    assert_eq!(
        (recs[0].bytes_to_target, recs[0].bytes_from_target),
        (40, 40)
    );
    agent.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Bad input and faults

/// A port with nothing listening on it.
fn closed_port() -> u16 {
    airlock_testkit::free_port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_out_of_range_are_refused_with_a_clear_error() {
    let (server, agent) = setup().await;
    let api = server.api();
    let start = |doc: &str, params: Value| {
        let api = api.clone();
        let body =
            json!({ "Target": agent.instance_id, "DocumentName": doc, "Parameters": params });
        async move { api.start_session(&body).await.unwrap_err().to_string() }
    };
    let cases = [
        (
            "AWS-StartPortForwardingSession",
            json!({"portNumber": ["0"]}),
            "portNumber must be a port number from 1 to 65535, not '0'",
        ),
        (
            "AWS-StartPortForwardingSession",
            json!({"portNumber": ["65536"]}),
            "not '65536'",
        ),
        (
            "AWS-StartPortForwardingSession",
            json!({"portNumber": ["http"]}),
            "not 'http'",
        ),
        (
            "AWS-StartPortForwardingSession",
            json!({"localPortNumber": ["-1"]}),
            "localPortNumber must be a port number from 0 to 65535",
        ),
        (
            "AWS-StartSSHSession",
            json!({"portNumber": ["99999"]}),
            "not '99999'",
        ),
        (
            "AWS-StartPortForwardingSessionToRemoteHost",
            json!({"portNumber": ["5432"]}),
            "requires the parameter host",
        ),
        (
            "AWS-StartPortForwardingSessionToRemoteHost",
            json!({"host": ["db internal"], "portNumber": ["5432"]}),
            "host must be a host name or an IP address",
        ),
        (
            "AWS-StartPortForwardingSession",
            json!({"portNumber": ["80"], "hots": ["x"]}),
            "hots is not a parameter",
        ),
        (
            "AWS-StartPortForwardingSession",
            json!({"portNumber": ["80", "81"]}),
            "takes exactly one value",
        ),
    ];
    for (doc, params, want) in cases {
        let e = start(doc, params.clone()).await;
        assert!(
            e.contains("InvalidParameters") && e.contains(want),
            "{doc} {params}: {e}"
        );
    }
    // Nothing was started on the agent's side.
    assert!(server
        .state()
        .store
        .list_sessions(false, &Default::default(), 0, 10)
        .await
        .unwrap()
        .is_empty());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_target_port_fails_its_connection_only() {
    let (server, agent) = setup().await;
    // The target accepts one connection (an echo), then stops listening.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tport = l.local_addr().unwrap().port();
    let echo = tokio::spawn(async move {
        let (c, _) = l.accept().await.unwrap();
        drop(l);
        let (mut r, mut w) = c.into_split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    let api = server.api();
    let mut fwd = forward(&api, &agent.instance_id, tport, None, DEFAULT_MUX_WINDOW).await;
    let mut live = TcpStream::connect(fwd.addr).await.unwrap();
    live.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    live.read_exact(&mut b).await.unwrap();
    wait_until("the listener closed", Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", tport))
            .is_err()
            .then_some(())
    })
    .await;
    // The next connection is refused at the target: closed at once, with a reason.
    let mut refused = TcpStream::connect(fwd.addr).await.unwrap();
    let mut sink = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), refused.read_to_end(&mut sink))
        .await
        .expect("the refused connection is closed promptly");
    assert!(sink.is_empty(), "{r:?}");
    let rep = fwd.next_report(Duration::from_secs(5)).await;
    assert!(rep.failed, "{rep:?}");
    assert!(
        rep.end
            .contains(&format!("cannot connect to localhost:{tport}"))
            && rep.end.contains("connection refused"),
        "{}",
        rep.end
    );
    // The first connection is untouched.
    live.write_all(b"still here").await.unwrap();
    let mut b = [0u8; 10];
    live.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"still here");
    // The agent's record says the same.
    let recs = port_records(&server, &fwd.session_id, 1).await;
    assert!(
        recs[0].failed && recs[0].end_reason.contains("connection refused"),
        "{recs:?}"
    );
    drop(live);
    fwd.stop().await.unwrap();
    let _ = echo.await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_client_vanishing_mid_transfer_leaves_the_others_untouched() {
    let (server, agent) = setup().await;
    let tport = hashing_target(64 << 20, None).await;
    let api = server.api();
    let mut fwd = forward(&api, &agent.instance_id, tport, None, DEFAULT_MUX_WINDOW).await;
    let fast = tokio::spawn(sha_roundtrip(fwd.addr, 32 << 20, 64 << 20, 9, true));
    // A client that reads 1 MiB of its download, then vanishes (reset: unread data pending).
    let mut gone = TcpStream::connect(fwd.addr).await.unwrap();
    let mut buf = vec![0u8; 1 << 20];
    gone.read_exact(&mut buf).await.unwrap();
    gone.set_zero_linger().unwrap();
    drop(gone);
    tokio::time::timeout(Duration::from_secs(60), fast)
        .await
        .expect("the other stream finishes")
        .unwrap();
    let mut reports = Vec::new();
    for _ in 0..2 {
        reports.push(fwd.next_report(Duration::from_secs(10)).await);
    }
    let vanished = reports
        .iter()
        .find(|r| r.sent == 0)
        .expect("the vanished client's report");
    assert!(
        vanished.failed && vanished.end.contains("local connection failed"),
        "{vanished:?}"
    );
    // The agent closed the target side of it too: both records are in.
    let recs = port_records(&server, &fwd.session_id, 2).await;
    assert!(
        recs.iter().any(|r| r.end_reason.contains("reset by peer")),
        "{recs:?}"
    );
    fwd.stop().await.unwrap();
    agent.stop().await;
}

/// The `airlock` binary of this build, built (or brought up to date) first, by the testkit's
/// helper (which keeps Cargo from rebuilding dependencies for the test's environment).
fn airlock_binary() -> PathBuf {
    airlock_testkit::airlock_binary()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_dying_mid_stream_ends_the_forward_with_a_reason() {
    let server = TestServer::start().await;
    let dir = TempDir::new();
    let (instance_id, mut agent) = agent_process(&server, &dir.0, &[]).await;
    let tport = hashing_target(1 << 30, None).await;
    let api = server.api();
    let fwd = forward(&api, &instance_id, tport, None, DEFAULT_MUX_WINDOW).await;
    let mut c = TcpStream::connect(fwd.addr).await.unwrap();
    let mut buf = vec![0u8; 1 << 20];
    c.read_exact(&mut buf).await.unwrap();
    // The agent process dies.
    agent.start_kill().unwrap();
    let _ = agent.wait().await;
    let outcome = tokio::time::timeout(Duration::from_secs(20), fwd.task)
        .await
        .expect("the forward ends when the agent dies")
        .unwrap()
        .expect("an orderly end");
    assert!(outcome.reason.contains("agent"), "{outcome:?}");
    // The local connection is closed, not left hanging.
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the local connection is closed");
    assert_eq!(session_status(&server, &fwd.session_id).await, "Failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_forward_tells_the_agent_and_closes_its_connections() {
    let (server, agent) = setup().await;
    let (tport, seen) = scripted_target(b"hello", None).await;
    let api = server.api();
    let fwd = forward(&api, &agent.instance_id, tport, None, DEFAULT_MUX_WINDOW).await;
    let mut c = TcpStream::connect(fwd.addr).await.unwrap();
    let mut b = [0u8; 5];
    c.read_exact(&mut b).await.unwrap();
    let id = fwd.session_id.clone();
    let outcome = fwd.stop().await.unwrap();
    assert_eq!(outcome.reason, "");
    wait_until(
        "the target connection closed",
        Duration::from_secs(10),
        || seen.get()[0].eof.then_some(()),
    )
    .await;
    assert_eq!(session_status(&server, &id).await, "Terminated");
    let recs = port_records(&server, &id, 1).await;
    assert_eq!(recs[0].end_reason, "session ended");
    assert_eq!(recs[0].bytes_from_target, 5);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connection_reports_is_stored_whole_in_order_and_checked() {
    let (server, agent) = setup().await;
    let (tport, _seen) = scripted_target(b"hello", None).await;
    let api = server.api();
    let fwd = forward(&api, &agent.instance_id, tport, None, DEFAULT_MUX_WINDOW).await;
    let id = fwd.session_id.clone();
    let state = server.state().clone();
    let report = |stream_id: u32| {
        let rec = airlock_proto::PortConnectionRecord {
            session_id: id.clone(),
            session_owner: "someone".into(),
            stream_id,
            destination: "localhost:1".into(),
            mode: "airlock-mux".into(),
            bytes_to_target: 1,
            bytes_from_target: 2,
            // A sane time: the server refuses connections outside their session's life.
            started_at: airlock_proto::unix_millis(),
            duration_ms: 4,
            end_reason: "closed".into(),
            failed: false,
        };
        serde_json::to_vec(&airlock_proto::MgsPayload {
            content: serde_json::to_string(&rec).unwrap(),
            task_id: id.clone(),
            topic: airlock_proto::PORT_CONNECTION_TOPIC.into(),
            schema_version: 1,
        })
        .unwrap()
    };
    // More reports at once than one batch holds, as a busy forward sends them; a malformed one
    // and one from an agent that does not run this session are refused, the rest all kept.
    const N: u32 = 1500;
    for n in 1..=N {
        airlock_server::port_audit::handle_reply(&state, &agent.instance_id, &report(n)).await;
        if n == 700 {
            airlock_server::port_audit::handle_reply(&state, &agent.instance_id, b"{not json")
                .await;
            airlock_server::port_audit::handle_reply(
                &state,
                "mi-00000000000000000",
                &report(99_999),
            )
            .await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let rows = airlock_server::port_audit::list(&state.store, Some(&id), 10_000)
            .await
            .unwrap();
        if rows.len() >= N as usize {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "{N} records stored; have {}",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Nothing the forward itself reported (no connections were made) and nothing refused.
    assert_eq!(rows.len(), N as usize);
    let streams: Vec<i64> = rows.iter().map(|r| r.stream_id).collect();
    assert_eq!(
        streams,
        (1..=i64::from(N)).collect::<Vec<_>>(),
        "in report order"
    );
    // The owner comes from the server's own session row, not from the agent's word.
    assert!(rows
        .iter()
        .all(|r| r.owner != "someone" && r.target == agent.instance_id));
    fwd.stop().await.unwrap();
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_records_survive_a_database_locked_past_its_busy_timeout() {
    let (server, agent) = setup().await;
    let (tport, _seen) = scripted_target(b"hello", None).await;
    let api = server.api();
    let fwd = forward(&api, &agent.instance_id, tport, None, DEFAULT_MUX_WINDOW).await;
    let id = fwd.session_id.clone();
    // Another process holds SQLite's write lock for longer than the server's 5 s busy timeout.
    let db = server.state().config.data_dir.join("airlock.db");
    let mut locker = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN EXCLUSIVE')\n\
             print('locked', flush=True)\n\
             time.sleep(6.5)\n\
             c.execute('COMMIT')\n",
        )
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(locker.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    // A connection ends while the database is locked: its record waits and is stored after.
    let mut c = TcpStream::connect(fwd.addr).await.unwrap();
    let mut b = [0u8; 5];
    c.read_exact(&mut b).await.unwrap();
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = airlock_server::port_audit::list(&server.state().store, Some(&id), 10)
            .await
            .unwrap();
        if !rows.is_empty() {
            assert_eq!(rows[0].bytes_from_target, 5);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the record was stored once the lock went"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(locker.wait().unwrap().success());
    fwd.stop().await.unwrap();
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_forward_during_its_handshake_ends_the_session() {
    let (server, agent) = setup().await;
    let (tport, _seen) = scripted_target(b"hello", None).await;
    let api = server.api();
    let fwd = forward(&api, &agent.instance_id, tport, None, DEFAULT_MUX_WINDOW).await;
    // Ctrl-C before the agent's handshake can have arrived: the stop wins the first poll.
    fwd.stop.cancel();
    let id = fwd.session_id.clone();
    let outcome = fwd.stop().await.unwrap();
    assert_eq!(outcome.reason, "");
    // The session is not left open: the server ended it (TerminateSession), not a timeout.
    let deadline = Instant::now() + Duration::from_secs(10);
    while session_status(&server, &id).await != "Terminated" {
        assert!(Instant::now() < deadline, "session recorded as Terminated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_and_tasks_return_to_their_baseline() {
    // Short tokens: the server watches each new session until its agent token expires.
    let server = TestServer::start_with(|c| c.token_ttl = Duration::from_secs(1)).await;
    let agent = server.agent().await;
    let api = server.api();
    let echo = echo_target().await;
    let round = || async {
        let mut fwd = forward(&api, &agent.instance_id, echo, None, DEFAULT_MUX_WINDOW).await;
        let mut tasks = Vec::new();
        for i in 0..20u8 {
            let addr = fwd.addr;
            tasks.push(tokio::spawn(async move {
                let mut c = TcpStream::connect(addr).await.unwrap();
                c.write_all(&[i; 1000]).await.unwrap();
                let mut b = [0u8; 1000];
                c.read_exact(&mut b).await.unwrap();
                if i % 2 == 0 {
                    // Half of them vanish without a clean close.
                    c.set_zero_linger().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for _ in 0..20 {
            fwd.next_report(Duration::from_secs(10)).await;
        }
        // And a refused one on a second session.
        let mut bad = forward(
            &api,
            &agent.instance_id,
            closed_port(),
            None,
            DEFAULT_MUX_WINDOW,
        )
        .await;
        let mut c = TcpStream::connect(bad.addr).await.unwrap();
        let _ = c.read(&mut [0u8; 1]).await;
        bad.next_report(Duration::from_secs(10)).await;
        fwd.stop().await.unwrap();
        bad.stop().await.unwrap();
    };
    // A first round warms up what is made once (connection pools, caches).
    round().await;
    server.wait_no_relays().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fds, tasks) = (fd_count(), alive_tasks());
    for _ in 0..3 {
        round().await;
    }
    server.wait_no_relays().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (f, t) = (fd_count(), alive_tasks());
        if f <= fds && t <= tasks {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "descriptors {fds} -> {f}, tasks {tasks} -> {t} after three more rounds"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.stop().await;
}

// ---------------------------------------------------------------------------------------------
// SSH through `airlock ssh-proxy`, and `airlock port-forward` as a person runs it

/// A local OpenSSH server on a loopback port, with a fresh host key and one authorised client
/// key; killed on drop. `None` when sshd is not installed (`scripts/test` installs it).
/// `ssh` (or `scp`) through `airlock ssh-proxy`, as the README's ~/.ssh/config stanza does.
fn ssh_via_airlock(
    program: &str,
    bin: &Path,
    server: &TestServer,
    sshd: &Sshd,
) -> std::process::Command {
    let mut c = std::process::Command::new(program);
    c.args([
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
    ])
    .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
    .arg("-o")
    .arg(format!(
        "ProxyCommand={} ssh-proxy --target %h --port {}",
        bin.display(),
        sshd.port
    ))
    .arg("-i")
    .arg(&sshd.key)
    .env("AIRLOCK_ENDPOINT", &server.url)
    .env("AIRLOCK_ACCESS_KEY_ID", &server.admin.access_key_id)
    .env("AIRLOCK_SECRET_ACCESS_KEY", &server.admin.secret_access_key)
    .env("AIRLOCK_LOG", "warn");
    if program == "ssh" {
        c.args(["-l", &sshd.user]);
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_and_scp_through_ssh_proxy_to_a_local_openssh_server() {
    let dir = TempDir::new();
    let Some(sshd) = Sshd::start(&dir.0) else {
        eprintln!("SKIPPED: no sshd (scripts/test installs openssh-server)");
        return;
    };
    let (server, agent) = setup().await;
    let bin = tokio::task::spawn_blocking(airlock_binary).await.unwrap();
    let target = agent.instance_id.clone();
    // A command over SSH.
    let mut ssh = ssh_via_airlock("ssh", &bin, &server, &sshd);
    ssh.arg(&target).arg("echo hello-over-airlock; uname -s");
    let out = tokio::task::spawn_blocking(move || ssh.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("hello-over-airlock") && stdout.contains("Linux"),
        "ssh: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // scp of 4 MiB there and back, byte for byte.
    let src = dir.0.join("src.bin");
    let mut data = vec![0u8; 4 << 20];
    for (i, chunk) in data.chunks_mut(BLOCK).enumerate() {
        pattern_block(42, i as u64, chunk);
    }
    std::fs::write(&src, &data).unwrap();
    let remote = dir.0.join("remote.bin");
    let back = dir.0.join("back.bin");
    for (from, to) in [
        (
            src.display().to_string(),
            format!("{}@{target}:{}", sshd.user, remote.display()),
        ),
        (
            format!("{}@{target}:{}", sshd.user, remote.display()),
            back.display().to_string(),
        ),
    ] {
        let mut scp = ssh_via_airlock("scp", &bin, &server, &sshd);
        scp.arg("-q").arg(&from).arg(&to);
        let out = tokio::task::spawn_blocking(move || scp.output())
            .await
            .unwrap()
            .unwrap();
        assert!(
            out.status.success(),
            "scp {from} {to}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(std::fs::read(&back).unwrap() == data, "scp round trip");
    // Each SSH connection is audited as a standard stream to the SSH port.
    let deadline = Instant::now() + Duration::from_secs(10);
    let recs = loop {
        let recs = airlock_server::port_audit::list(&server.state().store, None, 100)
            .await
            .unwrap();
        if recs.iter().filter(|r| r.mode == "stream").count() >= 3 {
            break recs;
        }
        assert!(
            Instant::now() < deadline,
            "three SSH connection records; have {recs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ssh_recs: Vec<_> = recs.iter().filter(|r| r.mode == "stream").collect();
    assert!(ssh_recs
        .iter()
        .all(|r| r.destination == format!("localhost:{}", sshd.port)));
    assert!(
        ssh_recs.iter().any(|r| r.bytes_to_target > 4 << 20),
        "{ssh_recs:?}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_proxy_to_a_closed_port_says_why() {
    let (server, agent) = setup().await;
    let bin = tokio::task::spawn_blocking(airlock_binary).await.unwrap();
    let port = closed_port();
    let out = tokio::process::Command::new(&bin)
        .args([
            "ssh-proxy",
            "--target",
            &agent.instance_id,
            "--port",
            &port.to_string(),
        ])
        .env("AIRLOCK_ENDPOINT", &server.url)
        .env("AIRLOCK_ACCESS_KEY_ID", &server.admin.access_key_id)
        .env("AIRLOCK_SECRET_ACCESS_KEY", &server.admin.secret_access_key)
        .stdin(std::process::Stdio::piped())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot connect to localhost:{port}"))
            && stderr.contains("connection refused"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing but SSH bytes on stdout");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_command_prints_its_address_serves_and_stops_on_ctrl_c() {
    let (server, agent) = setup().await;
    let bin = tokio::task::spawn_blocking(airlock_binary).await.unwrap();
    let echo = echo_target().await;
    let mut child = tokio::process::Command::new(&bin)
        .args([
            "--output",
            "json",
            "port-forward",
            "--target",
            &agent.instance_id,
        ])
        .args(["--remote-port", &echo.to_string()])
        .env("AIRLOCK_ENDPOINT", &server.url)
        .env("AIRLOCK_ACCESS_KEY_ID", &server.admin.access_key_id)
        .env("AIRLOCK_SECRET_ACCESS_KEY", &server.admin.secret_access_key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout);
    let mut first = String::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut first),
    )
    .await
    .unwrap()
    .unwrap();
    let v: Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{first:?}: {e}"));
    let addr: SocketAddr = v["LocalAddress"].as_str().unwrap().parse().unwrap();
    let session_id = v["SessionId"].as_str().unwrap().to_owned();
    // Several connections at once through the one session.
    let mut tasks = Vec::new();
    for i in 0..5u8 {
        tasks.push(tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(&[i; 5000]).await.unwrap();
            let mut b = vec![0u8; 5000];
            c.read_exact(&mut b).await.unwrap();
            assert!(b.iter().all(|x| *x == i));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Ctrl-C: the agent is told, the session ends as Terminated, the command exits 0.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Stopped: 5 connection(s)"), "{stderr}");
    assert!(
        !stderr.contains('\r'),
        "no live status line when stderr is not a terminal: {stderr:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while session_status(&server, &session_id).await != "Terminated" {
        assert!(Instant::now() < deadline, "session recorded as Terminated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The record read back: Airlock.ListPortConnections, its SDK call and `airlock port-connections`

/// Runs the `airlock` binary signing as `profile`; returns (exit code, stdout, stderr).
async fn airlock_as(
    bin: &Path,
    profile: &airlock_client::Profile,
    args: &[&str],
) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(bin)
        .args(args)
        .env("AIRLOCK_ENDPOINT", &profile.endpoint)
        .env("AIRLOCK_ACCESS_KEY_ID", &profile.access_key_id)
        .env("AIRLOCK_SECRET_ACCESS_KEY", &profile.secret_access_key)
        .env_remove("AIRLOCK_PROFILE")
        .env_remove("AIRLOCK_SESSION_TOKEN")
        .stdin(std::process::Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("airlock finishes")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sends `n` bytes of `byte` through `addr` (an echo behind a forward), reads them back, closes.
async fn echo_through(addr: SocketAddr, byte: u8, n: usize) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(&vec![byte; n]).await.unwrap();
    let mut b = vec![0u8; n];
    c.read_exact(&mut b).await.unwrap();
    assert!(b.iter().all(|x| *x == byte));
}

/// The service error code and message of a call that must fail.
fn service_error<T: std::fmt::Debug>(r: Result<T, airlock_client::ApiError>) -> (String, String) {
    match r {
        Err(airlock_client::ApiError::Service { code, message, .. }) => (code, message),
        other => panic!("expected a service error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_port_connections_shows_each_connection_to_whom_may_see_it() {
    use airlock_client::{ListPortConnectionsInput as Query, PortConnectionInfo};
    let (server, agent) = setup().await;
    let bin = tokio::task::spawn_blocking(airlock_binary).await.unwrap();
    let echo = echo_target().await;
    let api = server.api();
    let mut fwd = forward(&api, &agent.instance_id, echo, None, DEFAULT_MUX_WINDOW).await;
    echo_through(fwd.addr, 1, 1000).await;
    echo_through(fwd.addr, 2, 300).await;
    for _ in 0..2 {
        fwd.next_report(Duration::from_secs(10)).await;
    }
    let sid = fwd.session_id.clone();
    port_records(&server, &sid, 2).await;
    let admin_arn = "arn:aws:iam::000000000000:user/admin";

    // The SDK: both connections, newest first, with what they carried and where to.
    let by_session = Query {
        session_id: Some(sid.clone()),
        ..Default::default()
    };
    let page = api.list_port_connections(&by_session).await.unwrap();
    assert_eq!(page.next_token, None);
    let mut conns: Vec<PortConnectionInfo> = page.connections;
    assert_eq!(conns.len(), 2, "{conns:?}");
    // Listed in the order the agent reported them (newest report first); the two reports
    // of back-to-back connections may arrive either way round.
    conns.sort_by_key(|c| c.bytes_to_target);
    let dest = format!("localhost:{echo}");
    for (c, n) in conns.iter().zip([300u64, 1000]) {
        assert_eq!(c.session_id, sid);
        assert_eq!(c.target, agent.instance_id);
        assert_eq!(c.owner, admin_arn);
        assert_eq!(c.destination, dest);
        assert_eq!(c.mode, "airlock-mux");
        assert_eq!((c.bytes_to_target, c.bytes_from_target), (n, n), "{c:?}");
        assert!(!c.failed && !c.end_reason.is_empty(), "{c:?}");
        assert!(c.start_date > 1.7e9 && c.end_date >= c.start_date, "{c:?}");
    }
    // Filters: by target, by owner (name or ARN), by time; others' see nothing.
    for (q, want) in [
        (
            Query {
                target: Some(agent.instance_id.clone()),
                ..Default::default()
            },
            2,
        ),
        (
            Query {
                owner: Some("admin".into()),
                ..Default::default()
            },
            2,
        ),
        (
            Query {
                owner: Some(admin_arn.into()),
                since: Some(conns[1].start_date - 1.0),
                ..Default::default()
            },
            2,
        ),
        (
            Query {
                owner: Some("somebody-else".into()),
                ..Default::default()
            },
            0,
        ),
        (
            Query {
                target: Some("mi-00000000000000000".into()),
                ..Default::default()
            },
            0,
        ),
        (
            Query {
                until: Some(conns[1].start_date - 60.0),
                ..Default::default()
            },
            0,
        ),
    ] {
        let got = api.list_port_connections(&q).await.unwrap().connections;
        assert_eq!(got.len(), want, "{q:?}: {got:?}");
    }
    // Pages: one at a time, the token leads to the older one and no further.
    let first = api
        .list_port_connections(&Query {
            max_results: Some(1),
            ..by_session.clone()
        })
        .await
        .unwrap();
    assert_eq!(first.connections, conns[..1]);
    let second = api
        .list_port_connections(&Query {
            max_results: Some(1),
            next_token: first.next_token.clone(),
            ..by_session.clone()
        })
        .await
        .unwrap();
    assert_eq!(second.connections, conns[1..]);
    assert_eq!(second.next_token, None);
    // Bad input is refused with AWS's error codes, never half-answered.
    for (body, code, text) in [
        (
            json!({ "MaxResults": 0 }),
            "ValidationException",
            "between 1 and 1000",
        ),
        (
            json!({ "MaxResults": 1001 }),
            "ValidationException",
            "between 1 and 1000",
        ),
        (
            json!({ "NextToken": "garbage" }),
            "InvalidNextToken",
            "isn't valid",
        ),
        (
            json!({ "Targt": "mi-1" }),
            "SerializationException",
            "Targt",
        ),
        (
            json!({ "SessionId": "" }),
            "ValidationException",
            "length between 1 and 96",
        ),
        (
            json!({ "Since": "yesterday" }),
            "SerializationException",
            "",
        ),
    ] {
        let (c, m) = service_error(api.call("Airlock.ListPortConnections", &body).await);
        assert!(c == code && m.contains(text), "{body}: {c}: {m}");
    }

    // The CLI: JSON for scripts, a table for people, --max-items with a token to go on.
    let (code, out, err) = airlock_as(
        &bin,
        &server.admin,
        &[
            "--output",
            "json",
            "port-connections",
            "list",
            "--session-id",
            &sid,
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
    let listed: Vec<PortConnectionInfo> = serde_json::from_value(v["Connections"].clone()).unwrap();
    assert_eq!(listed, conns);
    let (code, out, err) = airlock_as(
        &bin,
        &server.admin,
        &[
            "--output",
            "json",
            "port-connections",
            "list",
            "--max-items",
            "1",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Connections"].as_array().unwrap().len(), 1, "{v}");
    let token = v["NextToken"]
        .as_str()
        .expect("a token to continue")
        .to_owned();
    let (code, out, err) = airlock_as(
        &bin,
        &server.admin,
        &[
            "--output",
            "json",
            "port-connections",
            "list",
            "--starting-token",
            &token,
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Connections"][0]["BytesToTarget"], 1000, "{v}");
    assert!(v.get("NextToken").is_none(), "{v}");
    let (code, out, err) = airlock_as(
        &bin,
        &server.admin,
        &["port-connections", "list", "--target", &agent.instance_id],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("STARTED") && lines[0].contains("DESTINATION"),
        "{out}"
    );
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[1].contains(&sid) && lines[1].contains(&dest) && lines[1].contains("300 B"),
        "{out}"
    );
    assert!(lines[1].contains(" admin "), "the owner by name: {out}");

    // Without the permission: AccessDeniedException, from the SDK and from the CLI.
    let nobody = server.user("nobody", false).await;
    let (c, m) = service_error(
        ApiClient::new(nobody.clone())
            .unwrap()
            .list_port_connections(&Query::default())
            .await,
    );
    assert_eq!(c, "AccessDeniedException");
    assert_eq!(
        m,
        "User: arn:aws:iam::000000000000:user/nobody is not authorized to perform: \
         airlock:ListPortConnections on resource: arn:aws:ssm:us-east-1:000000000000:session/* \
         because no identity-based policy allows the airlock:ListPortConnections action"
    );
    let (code, _, err) = airlock_as(&bin, &nobody, &["port-connections", "list"]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("AccessDeniedException"), "{err}");

    // A policy on the session ARN: carol reads her own sessions' connections, no one else's.
    let carol = server.user("carol", false).await;
    let doc = json!({ "Version": "2012-10-17", "Statement": [
        { "Effect": "Allow", "Action": "ssm:StartSession", "Resource": "*" },
        { "Effect": "Allow", "Action": ["ssm:TerminateSession", "ssm:ResumeSession",
            "airlock:ListPortConnections"],
          "Resource": "arn:aws:ssm:*:*:session/${aws:username}-*" },
    ]});
    api.call(
        "Airlock.PutUserPolicy",
        &json!({ "UserName": "carol", "PolicyName": "own", "PolicyDocument": doc }),
    )
    .await
    .unwrap();
    let carol_api = ApiClient::new(carol).unwrap();
    let mut own = forward(
        &carol_api,
        &agent.instance_id,
        echo,
        None,
        DEFAULT_MUX_WINDOW,
    )
    .await;
    echo_through(own.addr, 3, 10).await;
    own.next_report(Duration::from_secs(10)).await;
    port_records(&server, &own.session_id, 1).await;
    let mine = carol_api
        .list_port_connections(&Query {
            session_id: Some(own.session_id.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .connections;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].owner, "arn:aws:iam::000000000000:user/carol");
    assert_eq!(mine[0].bytes_from_target, 10);
    for q in [by_session.clone(), Query::default()] {
        let (c, _) = service_error(carol_api.list_port_connections(&q).await);
        assert_eq!(c, "AccessDeniedException", "{q:?}");
    }

    // Every call, allowed or denied, is on the audit trail.
    let audit = api
        .call(
            "Airlock.ListAuditEvents",
            &json!({ "Action": "airlock:ListPortConnections", "MaxResults": 1000 }),
        )
        .await
        .unwrap();
    let events = audit["Events"].as_array().unwrap();
    let has = |who: &str, decision: &str, resource: &str| {
        events.iter().any(|e| {
            e["Principal"].as_str().is_some_and(|p| p.ends_with(who))
                && e["Decision"] == decision
                && e["Resource"] == resource
        })
    };
    let session_arn = |id: &str| format!("arn:aws:ssm:us-east-1:000000000000:session/{id}");
    assert!(has("user/admin", "Allow", &session_arn(&sid)), "{audit}");
    assert!(has("user/admin", "Allow", &session_arn("*")), "{audit}");
    assert!(has("user/nobody", "Deny", &session_arn("*")), "{audit}");
    assert!(
        has("user/carol", "Allow", &session_arn(&own.session_id)),
        "{audit}"
    );
    assert!(has("user/carol", "Deny", &session_arn(&sid)), "{audit}");
    own.stop().await.unwrap();
    fwd.stop().await.unwrap();
    agent.stop().await;
}

// ---------------------------------------------------------------------------------------------
// A remote host that does not resolve

/// A name that never resolves (RFC 6761 reserves `.invalid`).
const UNKNOWN_HOST: &str = "no-such-host.invalid";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_remote_host_fails_each_connection_alone_with_the_reason() {
    // Short tokens: the server watches each new session until its agent token expires.
    let server = TestServer::start_with(|c| c.token_ttl = Duration::from_secs(1)).await;
    let agent = server.agent().await;
    let api = server.api();
    let echo = echo_target().await;
    // A working forward beside it, with one connection open across all the failures.
    let good = forward(&api, &agent.instance_id, echo, None, DEFAULT_MUX_WINDOW).await;
    let mut live = TcpStream::connect(good.addr).await.unwrap();
    echoes(&mut live, b"before").await;
    let want =
        format!("cannot connect to {UNKNOWN_HOST}:5432: unknown host (the name does not resolve)");
    let round = |n: u8| {
        let (api, want, target) = (api.clone(), want.clone(), agent.instance_id.clone());
        async move {
            let mut bad =
                forward(&api, &target, 5432, Some(UNKNOWN_HOST), DEFAULT_MUX_WINDOW).await;
            // Three at once, then one more: each is closed at once and reported with the reason.
            let first: Vec<_> = (0..3)
                .map(|_| tokio::spawn(closed_at_once(bad.addr, b"")))
                .collect();
            for t in first {
                t.await.unwrap();
            }
            for _ in 0..3 {
                let rep = bad.next_report(Duration::from_secs(10)).await;
                assert!(rep.failed, "{rep:?}");
                assert_eq!(port_failure(&rep), want, "{rep:?}");
            }
            // The forward goes on: the session is not ended by its connections failing.
            assert!(!bad.task.is_finished(), "round {n}: the forward ended");
            closed_at_once(bad.addr, b"").await;
            let rep = bad.next_report(Duration::from_secs(10)).await;
            assert_eq!(port_failure(&rep), want, "{rep:?}");
            let id = bad.session_id.clone();
            let outcome = bad.stop().await.expect("the forward stops cleanly");
            assert_eq!(outcome.reason, "", "round {n}");
            id
        }
    };
    // The server's record says where, and why each one failed.
    let id = round(0).await;
    port_records(&server, &id, 4).await;
    let recs = api
        .list_port_connections(&airlock_client::ListPortConnectionsInput {
            session_id: Some(id.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .connections;
    assert_eq!(recs.len(), 4, "{recs:?}");
    for r in &recs {
        assert!(r.failed, "{r:?}");
        assert_eq!(r.destination, format!("{UNKNOWN_HOST}:5432"));
        assert_eq!(r.end_reason, want);
        assert_eq!((r.bytes_to_target, r.bytes_from_target), (0, 0));
    }
    echoes(&mut live, b"between").await;

    // Descriptors and tasks come back to where they were after the first round (which warmed
    // up what is made once: the resolver, connection pools).
    let settle = || async {
        eventually_relays(&server, 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    settle().await;
    let (fds, tasks) = (fd_count(), alive_tasks());
    for n in 1..=3 {
        round(n).await;
        echoes(&mut live, &[n; 100]).await;
    }
    settle().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (f, t) = (fd_count(), alive_tasks());
        if f <= fds && t <= tasks {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "descriptors {fds} -> {f}, tasks {tasks} -> {t} after three more rounds"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(live);
    good.stop().await.unwrap();
    agent.stop().await;
}

/// The reason a stream failed, as `airlock port-forward` shows it.
fn port_failure(rep: &StreamReport) -> String {
    rep.peer_reason.clone().unwrap_or_else(|| rep.end.clone())
}

/// Waits (up to 10 s) until the gateway holds at most `n` relays.
async fn eventually_relays(server: &TestServer, n: usize) {
    wait_until(
        "the relays of ended sessions dropped",
        Duration::from_secs(10),
        || (server.state().hub.relay_count() <= n).then_some(()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_command_says_why_a_connection_to_an_unknown_host_failed() {
    let (server, agent) = setup().await;
    let bin = tokio::task::spawn_blocking(airlock_binary).await.unwrap();
    let mut child = tokio::process::Command::new(&bin)
        .args([
            "--output",
            "json",
            "port-forward",
            "--target",
            &agent.instance_id,
        ])
        .args(["--remote-host", UNKNOWN_HOST, "--remote-port", "5432"])
        .env("AIRLOCK_ENDPOINT", &server.url)
        .env("AIRLOCK_ACCESS_KEY_ID", &server.admin.access_key_id)
        .env("AIRLOCK_SECRET_ACCESS_KEY", &server.admin.secret_access_key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout);
    let mut first = String::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut first),
    )
    .await
    .unwrap()
    .unwrap();
    let v: Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{first:?}: {e}"));
    let addr: SocketAddr = v["LocalAddress"].as_str().unwrap().parse().unwrap();
    assert_eq!(v["Remote"], format!("{UNKNOWN_HOST}:5432"));
    let session_id = v["SessionId"].as_str().unwrap().to_owned();
    closed_at_once(addr, b"").await;
    closed_at_once(addr, b"").await;
    // Each failure is told as it happens (the reports follow the close closely).
    tokio::time::sleep(Duration::from_millis(300)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let said = format!(
        "failed: cannot connect to {UNKNOWN_HOST}:5432: unknown host (the name does not resolve)"
    );
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("connection from 127.0.0.1:") && l.ends_with(&said))
            .count(),
        2,
        "{stderr}"
    );
    assert!(stderr.contains("Stopped: 2 connection(s)"), "{stderr}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while session_status(&server, &session_id).await != "Terminated" {
        assert!(Instant::now() < deadline, "session recorded as Terminated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.stop().await;
}
