//! The attack suite: each attack of the hostile-input issue, run against the real `airlock
//! server` process with TLS on (as users deploy it), followed by proof that the server still
//! serves a legitimate user — a signed API call answers promptly and a shell opens.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use airlock_client::{ApiClient, ApiError, Profile};
use airlock_testkit::deployment::Deployment;

/// How long a signed API call may take while the server is under attack (its usual time is
/// milliseconds; this only catches a server that stalls).
const PROMPT: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// Raw connections

fn tls_config(d: &Deployment) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&d.ca_file).unwrap();
    for c in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A TCP connection from `source` (any 127.x address: the attackers' own addresses).
async fn tcp_from(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(source, 0))?;
    s.connect(to).await
}

async fn tls_from(d: &Deployment, source: IpAddr) -> Box<dyn Io> {
    let tcp = tcp_from(source, d.addr).await.unwrap();
    let c = tokio_rustls::TlsConnector::from(tls_config(d));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    Box::new(c.connect(name, tcp).await.unwrap())
}

async fn tls(d: &Deployment) -> Box<dyn Io> {
    tls_from(d, [127, 0, 0, 1].into()).await
}

fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Sends a WebSocket upgrade for `path` and reads the 101 response head.
async fn upgraded(d: &Deployment, path: &str) -> Box<dyn Io> {
    let mut io = tls(d).await;
    io.write_all(upgrade_request(path).as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), io.read(&mut b))
            .await
            .expect("the upgrade is answered")
            .unwrap();
        assert!(
            n > 0,
            "closed during the upgrade: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
    io
}

/// A client frame (masked with a zero key unless `unmasked`) with a declared `len` that may
/// differ from the payload sent.
fn frame(fin: bool, opcode: u8, len: u64, payload: &[u8], unmasked: bool) -> Vec<u8> {
    let mut f = vec![(u8::from(fin) << 7) | opcode];
    let mask = if unmasked { 0 } else { 0x80 };
    if len < 126 {
        f.push(mask | len as u8);
    } else if len <= 0xffff {
        f.push(mask | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(mask | 127);
        f.extend_from_slice(&len.to_be_bytes());
    }
    if !unmasked {
        f.extend_from_slice(&[0, 0, 0, 0]);
    }
    f.extend_from_slice(payload);
    f
}

/// Writes `bytes` (ignoring a reset: the server may close first) and waits for the server to
/// close the connection. Returns whether it did within `within`.
async fn closed_after(mut io: Box<dyn Io>, bytes: &[u8], within: Duration) -> bool {
    let _ = io.write_all(bytes).await;
    let _ = io.flush().await;
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline.into(), io.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Frames before authentication

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_before_authentication_cannot_crash_the_server() {
    let mut d = Deployment::start(&[]).await;
    let data = "/v1/data-channel/nobody-0123456789abcdef0?role=publish_subscribe";
    let control = format!("/v1/control-channel/{}", d.instance_id);
    let one = frame(false, 2, 100, &[b'x'; 100], false);
    // The issue's ~130-byte abort: a fragment of 100 bytes, then a continuation declaring
    // 2^64-64 bytes (their sum wraps past 2^64).
    let mut wrap = one.clone();
    wrap.extend(frame(true, 0, u64::MAX - 63, b"", false));
    // The same with the top bit clear (a legal-looking 2^63-1) and in a single frame.
    let mut huge = one.clone();
    huge.extend(frame(true, 0, (1 << 63) - 1, b"", false));
    let single = frame(true, 2, u64::MAX, b"", false);
    // A flood of small fragments adding up past the largest message.
    let mut flood = Vec::new();
    for _ in 0..1100 {
        flood.extend(frame(false, 2, 1024, &[7u8; 1024], false));
    }
    // A client frame without a mask (RFC 6455 §5.1: the server must close).
    let unmasked = frame(true, 2, 5, b"hello", true);
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    let attacks: [(&str, &[u8]); 6] = [
        ("fragment length wraps", &wrap),
        ("fragment of 2^63-1 bytes", &huge),
        ("single frame of 2^64-1 bytes", &single),
        ("fragment flood", &flood),
        ("unmasked client frame", &unmasked),
        ("garbage", &garbage),
    ];
    for path in [data, control.as_str()] {
        for (what, bytes) in attacks {
            let io = upgraded(&d, path).await;
            assert!(
                closed_after(io, bytes, Duration::from_secs(15)).await,
                "{path}: {what}: the server kept the connection open"
            );
            assert!(d.server_alive(), "{path}: {what}: the server died");
        }
    }
    d.assert_serves(PROMPT).await;
}

// ---------------------------------------------------------------------------------------------
// HTTP: header bombs, bodies, slowloris, connection caps

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_bombs_and_huge_bodies_are_refused() {
    let mut d = Deployment::start(&[]).await;
    // First request of a connection: past the head limit the connection is dropped.
    let mut bomb = String::from("POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    while bomb.len() < 256 * 1024 {
        bomb.push_str("X-Bomb: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    bomb.push_str("\r\n");
    assert!(closed_after(tls(&d).await, bomb.as_bytes(), Duration::from_secs(5)).await);
    // A later request on a kept-alive connection: hyper's limit answers it.
    let mut io = tls(&d).await;
    io.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = io.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(closed_after(io, bomb.as_bytes(), Duration::from_secs(5)).await);
    // A body declared at 10 GB is refused before it is read.
    let mut io = tls(&d).await;
    io.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: AmazonSSM.DescribeSessions\r\n\
          Content-Type: application/x-amz-json-1.1\r\nContent-Length: 10000000000\r\n\r\n{}",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    d.assert_serves(PROMPT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_does_not_starve_users() {
    let mut d = Deployment::start(&["--header-timeout-secs", "3"]).await;
    // 1,000 connections from ten attacker addresses, each sending a header byte by byte.
    let mut slow = Vec::new();
    for i in 0..1000u32 {
        let src: IpAddr = [127, 0, 1, (i % 10 + 1) as u8].into();
        slow.push(tokio::spawn({
            let addr = d.addr;
            async move {
                let mut s = tcp_from(src, addr).await.ok()?;
                let start = Instant::now();
                // Plain bytes that never finish a TLS ClientHello: the server must give up.
                for _ in 0..60 {
                    if s.write_all(&[0x16]).await.is_err() {
                        return Some(start.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                let mut b = [0u8; 16];
                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut b)).await {
                    Ok(_) => Some(start.elapsed()),
                    Err(_) => None,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.assert_serves(PROMPT).await;
    let mut cut = 0;
    for s in slow {
        if let Some(after) = s.await.unwrap() {
            assert!(
                after < Duration::from_secs(10),
                "a slow connection lived {after:?}"
            );
            cut += 1;
        }
    }
    assert_eq!(
        cut, 1000,
        "every slow connection is cut after the head timeout"
    );
    d.assert_serves(PROMPT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_take_every_connection() {
    let mut d = Deployment::start(&["--max-connections-per-ip", "50"]).await;
    let attacker: IpAddr = [127, 0, 2, 1].into();
    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(tcp_from(attacker, d.addr).await.unwrap());
    }
    // The 51st from the same source is closed at once; users elsewhere are served.
    let mut extra = tcp_from(attacker, d.addr).await.unwrap();
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut b))
        .await
        .expect("the connection over the cap is closed at once");
    assert!(matches!(r, Ok(0) | Err(_)));
    d.assert_serves(PROMPT).await;
    drop(held);
}

// ---------------------------------------------------------------------------------------------
// Signatures and tokens

/// A raw SigV4 request over a kept-alive TLS connection, built by hand.
struct Raw {
    io: Box<dyn Io>,
}

impl Raw {
    async fn send(
        &mut self,
        target: &str,
        body: &str,
        headers: &[(String, String)],
    ) -> (u16, String) {
        let mut req = format!(
            "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Amz-Target: {target}\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            if k != "host" {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.io.write_all(req.as_bytes()).await.unwrap();
        read_response(&mut self.io).await
    }
}

async fn read_response(io: &mut Box<dyn Io>) -> (u16, String) {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status: u16 = head[9..12].parse().unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = io.read(&mut b).await.unwrap();
                assert!(n > 0, "closed mid-response");
                buf.extend_from_slice(&b[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
            return (status, body);
        }
        let n = io.read(&mut b).await.unwrap();
        assert!(n > 0, "closed before a response");
        buf.extend_from_slice(&b[..n]);
    }
}

fn signed(
    p: &Profile,
    target: &str,
    body: &str,
    at: time::OffsetDateTime,
) -> Vec<(String, String)> {
    let headers = vec![
        ("host".to_owned(), "127.0.0.1".to_owned()),
        (
            "content-type".to_owned(),
            "application/x-amz-json-1.1".to_owned(),
        ),
        ("x-amz-target".to_owned(), target.to_owned()),
    ];
    let creds = airlock_sigv4::Credentials {
        access_key_id: p.access_key_id.clone(),
        secret_access_key: p.secret_access_key.clone(),
        session_token: None,
    };
    let req = airlock_sigv4::Request {
        method: "POST",
        path_and_query: "/",
        headers: &headers,
        body: body.as_bytes(),
    };
    airlock_sigv4::sign(&req, &creds, "us-east-1", "ssm", at).unwrap()
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

async fn signed_latencies(api: &ApiClient, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        api.call("AmazonSSM.DescribeSessions", &json!({ "State": "Active" }))
            .await
            .unwrap();
        out.push(t.elapsed());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signature_flood_does_not_slow_signed_calls() {
    let mut d = Deployment::start(&[]).await;
    let api = d.api();
    // 10,000 requests with a real key id and a wrong signature, on 8 kept-alive connections
    // from an attacker's address. The flood is switched on and off in turns while the signed
    // client is timed, so the quiet and the flooded samples share whatever else the machine
    // does meanwhile (as the benches' contestants take turns).
    const FLOOD: usize = 10_000;
    let attacker: IpAddr = [127, 0, 3, 1].into();
    let (gate, gate_rx) = tokio::sync::watch::channel(false);
    let mut flood = Vec::new();
    for _ in 0..8 {
        let mut raw = Raw {
            io: tls_from(&d, attacker).await,
        };
        let admin = d.admin.clone();
        let mut gate = gate_rx.clone();
        flood.push(tokio::spawn(async move {
            let mut codes = std::collections::BTreeMap::<u16, usize>::new();
            for _ in 0..FLOOD / 8 {
                while !*gate.borrow_and_update() {
                    gate.changed().await.unwrap();
                }
                let mut h = signed(
                    &admin,
                    "AmazonSSM.DescribeSessions",
                    "{}",
                    time::OffsetDateTime::now_utc(),
                );
                for (k, v) in h.iter_mut() {
                    if k == "authorization" {
                        let cut = v.rfind('=').unwrap() + 1;
                        v.replace_range(cut.., &"0".repeat(64));
                    }
                }
                let (status, _) = raw.send("AmazonSSM.DescribeSessions", "{}", &h).await;
                *codes.entry(status).or_default() += 1;
            }
            codes
        }));
    }
    signed_latencies(&api, 20).await;
    let (mut quiet, mut busy) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        gate.send_replace(false);
        tokio::time::sleep(Duration::from_millis(300)).await;
        quiet.extend(signed_latencies(&api, 40).await);
        gate.send_replace(true);
        tokio::time::sleep(Duration::from_millis(300)).await;
        busy.extend(signed_latencies(&api, 40).await);
    }
    let (quiet, busy) = (p99(quiet), p99(busy));
    let mut refused = 0;
    for f in flood {
        for (status, n) in f.await.unwrap() {
            assert_ne!(status, 200, "a bad signature was accepted");
            refused += n;
        }
    }
    assert_eq!(refused, FLOOD);
    eprintln!("signed-call p99: quiet {quiet:?}, beside the flood {busy:?}");
    assert!(
        busy <= quiet * 3,
        "signed calls slowed by the flood: p99 {busy:?} against {quiet:?} quiet"
    );
    // Every refusal is on the record: itemised within the source's budget, counted beyond it.
    tokio::time::sleep(airlock_server::refusals::SUMMARY_EVERY + Duration::from_secs(2)).await;
    let mut recorded = 0u64;
    let mut token: Option<String> = None;
    loop {
        let mut input = json!({ "MaxResults": 1000, "Principal": "anonymous" });
        if let Some(t) = &token {
            input["NextToken"] = json!(t);
        }
        let page = api.call("Airlock.ListAuditEvents", &input).await.unwrap();
        for e in page["Events"].as_array().unwrap() {
            if e["SourceIp"] != "127.0.3.1" {
                continue;
            }
            if e["Event"] == "api-refusals" {
                let detail: Value = serde_json::from_str(e["Detail"].as_str().unwrap()).unwrap();
                recorded += detail["Count"].as_u64().unwrap();
            } else {
                recorded += 1;
            }
        }
        match page["NextToken"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        recorded, FLOOD as u64,
        "every refusal is recorded or counted"
    );
    d.assert_serves(PROMPT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_expired_and_altered_signatures_are_refused() {
    let mut d = Deployment::start(&[]).await;
    let mut raw = Raw { io: tls(&d).await };
    let now = time::OffsetDateTime::now_utc();
    // Expired: signed correctly, ten minutes ago.
    let body = json!({ "State": "Active" }).to_string();
    let old = signed(
        &d.admin,
        "AmazonSSM.DescribeSessions",
        &body,
        now - time::Duration::minutes(10),
    );
    let (status, text) = raw.send("AmazonSSM.DescribeSessions", &body, &old).await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("InvalidSignatureException") || text.contains("SignatureDoesNotMatch"),
        "{text}"
    );
    // Altered: the body changed after signing.
    let h = signed(&d.admin, "AmazonSSM.DescribeSessions", &body, now);
    let (status, text) = raw
        .send(
            "AmazonSSM.DescribeSessions",
            &json!({ "State": "History" }).to_string(),
            &h,
        )
        .await;
    assert_eq!(status, 400, "{text}");
    // Replayed: a StartSession's answer carries a data-channel token, so its signature is
    // good once; a read may be repeated (as AWS allows).
    let start = json!({ "Target": d.instance_id }).to_string();
    let h = signed(&d.admin, "AmazonSSM.StartSession", &start, now);
    let (status, first) = raw.send("AmazonSSM.StartSession", &start, &h).await;
    assert_eq!(status, 200, "{first}");
    // At once: refused as retryable (an SDK re-signs and retries), and no token in it.
    let (status, again) = raw.send("AmazonSSM.StartSession", &start, &h).await;
    assert_eq!(status, 400, "{again}");
    assert!(again.contains("ThrottlingException"), "{again}");
    assert!(!again.contains("TokenValue"), "{again}");
    // Later: a replay, named so.
    tokio::time::sleep(airlock_server::replay::SAME_SECOND).await;
    let (status, again) = raw.send("AmazonSSM.StartSession", &start, &h).await;
    assert_eq!(status, 400, "{again}");
    assert!(again.contains("used before"), "{again}");
    assert!(!again.contains("TokenValue"), "{again}");
    let h = signed(&d.admin, "AmazonSSM.DescribeSessions", &body, now);
    assert_eq!(
        raw.send("AmazonSSM.DescribeSessions", &body, &h).await.0,
        200
    );
    assert_eq!(
        raw.send("AmazonSSM.DescribeSessions", &body, &h).await.0,
        200
    );

    // A data-channel token is good once, for its own session only.
    let grant: Value = serde_json::from_str(&first).unwrap();
    let other = d
        .api()
        .start_session(&json!({ "Target": d.instance_id }))
        .await
        .unwrap();
    let token = grant["TokenValue"].as_str().unwrap();
    let wrong_session = other.stream_url.clone();
    assert!(
        !open_data_channel(&d, &wrong_session, token).await,
        "a token opened another session"
    );
    // (The attempt above consumed it: tokens are single-use even when refused.)
    assert!(!open_data_channel(&d, grant["StreamUrl"].as_str().unwrap(), token).await);
    assert!(open_data_channel(&d, &other.stream_url, &other.token_value).await);
    assert!(
        !open_data_channel(&d, &other.stream_url, &other.token_value).await,
        "a token was used twice"
    );
    d.assert_serves(PROMPT).await;
}

/// Opens a data channel with `token` by hand; true when the server accepted it (it answers
/// the handshake instead of closing).
async fn open_data_channel(d: &Deployment, stream_url: &str, token: &str) -> bool {
    let path = &stream_url[stream_url.find("/v1/").unwrap()..];
    let mut io = upgraded(d, path).await;
    let open = json!({
        "MessageSchemaVersion": "1.0",
        "RequestId": "00000000-0000-4000-8000-000000000000",
        "TokenValue": token,
        "ClientId": "hostile",
        "ClientVersion": "1.0",
    })
    .to_string();
    io.write_all(&frame(true, 1, open.len() as u64, open.as_bytes(), false))
        .await
        .unwrap();
    // A refused channel gets a close frame (opcode 8) at once; an accepted one stays open.
    let mut b = [0u8; 2];
    match tokio::time::timeout(Duration::from_secs(2), io.read_exact(&mut b)).await {
        Err(_) => true,
        Ok(Ok(_)) => b[0] & 0x0f != 8,
        Ok(Err(_)) => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Privilege escalation

async fn user_with_policy(d: &Deployment, name: &str, statements: Value) -> ApiClient {
    let api = d.api();
    api.call("Airlock.CreateUser", &json!({ "UserName": name }))
        .await
        .unwrap();
    let key = api
        .call("Airlock.CreateAccessKey", &json!({ "UserName": name }))
        .await
        .unwrap();
    api.call(
        "Airlock.PutUserPolicy",
        &json!({ "UserName": name, "PolicyName": "main",
                 "PolicyDocument": { "Version": "2012-10-17", "Statement": statements } }),
    )
    .await
    .unwrap();
    ApiClient::new(Profile {
        access_key_id: key["AccessKey"]["AccessKeyId"].as_str().unwrap().into(),
        secret_access_key: key["AccessKey"]["SecretAccessKey"].as_str().unwrap().into(),
        ..d.admin.clone()
    })
    .unwrap()
}

async fn refused(api: &ApiClient, target: &str, body: Value) -> (String, String) {
    match api.call(target, &body).await {
        Ok(v) => panic!("{target} {body} was allowed: {v}"),
        Err(ApiError::Service { code, message, .. }) => (code, message),
        Err(e) => panic!("{target}: transport error {e}"),
    }
}

/// StartSession with `document` must be refused: as invalid, or by the policy.
async fn refused_document(api: &ApiClient, target: &str, document: &str) {
    let (code, message) = refused(
        api,
        "AmazonSSM.StartSession",
        json!({ "Target": target, "DocumentName": document }),
    )
    .await;
    assert!(
        code == "AccessDeniedException" || code == "ValidationException",
        "{document}: {code} {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_names_cannot_dodge_the_document_check() {
    let mut d = Deployment::start(&[]).await;
    // Shells and port forwards allowed; SSH explicitly denied.
    let bob = user_with_policy(
        &d,
        "bob",
        json!([
            { "Effect": "Allow", "Action": "ssm:StartSession", "Resource": "*" },
            { "Effect": "Deny", "Action": "ssm:StartSession",
              "Resource": "arn:aws:ssm:*:*:document/AWS-StartSSHSession" }
        ]),
    )
    .await;
    let target = d.instance_id.clone();
    for name in [
        "AWS-StartSSHSession",
        "arn:aws:ssm:us-east-1::document/AWS-StartSSHSession",
        "x/AWS-StartSSHSession",
        "document/AWS-StartSSHSession",
        "arn:aws:ssm:eu-west-1::document/AWS-StartSSHSession",
        "arn:aws:ssm:us-east-1:111122223333:document/AWS-StartSSHSession",
        "arn:aws:ssm:us-east-1::document/x/AWS-StartSSHSession",
        "arn:aws:ssm:us-east-1::document/AWS-StartPortForwardingSession:document/AWS-StartSSHSession",
        "arn:aws-cn:ssm:us-east-1::document/AWS-StartSSHSession",
        "AWS-StartSSHSession/",
    ] {
        refused_document(&bob, &target, name).await;
    }
    // An allow on a document prefix is no way to another document either.
    let carol = user_with_policy(
        &d,
        "carol",
        json!([
            { "Effect": "Allow", "Action": "ssm:StartSession",
              "Resource": ["arn:aws:ssm:*:*:managed-instance/*", "arn:aws:ssm:*:*:document/MyTeam-*"] }
        ]),
    )
    .await;
    for name in [
        "MyTeam-x/AWS-StartSSHSession",
        "arn:aws:ssm:us-east-1:000000000000:document/MyTeam-x/../AWS-StartSSHSession",
        "AWS-StartPortForwardingSession",
    ] {
        refused_document(&carol, &target, name).await;
    }
    // The canonical ARN of an allowed document works.
    let grant = bob
        .call(
            "AmazonSSM.StartSession",
            &json!({ "Target": target,
                     "DocumentName": "arn:aws:ssm:us-east-1::document/AWS-StartPortForwardingSession",
                     "Parameters": { "portNumber": ["22"] } }),
        )
        .await
        .unwrap();
    d.api()
        .terminate_session(grant["SessionId"].as_str().unwrap())
        .await
        .unwrap();
    d.assert_serves(PROMPT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iam_delegates_cannot_mint_admins_or_rewrite_policies() {
    let mut d = Deployment::start(&[]).await;
    let admin = d.api();
    // CreateUser alone does not make administrators.
    let hr = user_with_policy(
        &d,
        "hr",
        json!([{ "Effect": "Allow", "Action": ["iam:CreateUser", "iam:CreatePolicy", "iam:GetPolicy"], "Resource": "*" }]),
    )
    .await;
    let (code, _) = refused(
        &hr,
        "Airlock.CreateUser",
        json!({ "UserName": "mallory", "Admin": true }),
    )
    .await;
    assert_eq!(code, "AccessDeniedException");
    let users = admin.call("Airlock.ListUsers", &json!({})).await.unwrap();
    assert!(
        !users.to_string().contains("mallory"),
        "the refused user was created anyway"
    );
    hr.call("Airlock.CreateUser", &json!({ "UserName": "plain" }))
        .await
        .unwrap();

    // CreatePolicy never rewrites: not the built-in administrator policy, not the caller's own.
    let before = admin
        .call(
            "Airlock.GetPolicy",
            &json!({ "PolicyName": "AdministratorAccess" }),
        )
        .await
        .unwrap();
    let open = json!({ "Version": "2012-10-17",
                       "Statement": [{ "Effect": "Allow", "Action": "*", "Resource": "*" }] });
    admin
        .call(
            "Airlock.CreatePolicy",
            &json!({ "PolicyName": "hr-extra", "PolicyDocument":
                { "Version": "2012-10-17", "Statement": [{ "Effect": "Allow", "Action": "iam:ListUsers", "Resource": "*" }] } }),
        )
        .await
        .unwrap();
    admin
        .call(
            "Airlock.AttachUserPolicy",
            &json!({ "UserName": "hr", "PolicyName": "hr-extra" }),
        )
        .await
        .unwrap();
    for name in ["AdministratorAccess", "hr-extra"] {
        let (code, _) = refused(
            &hr,
            "Airlock.CreatePolicy",
            json!({ "PolicyName": name, "PolicyDocument": open }),
        )
        .await;
        assert_eq!(code, "EntityAlreadyExists", "{name}");
    }
    let after = admin
        .call(
            "Airlock.GetPolicy",
            &json!({ "PolicyName": "AdministratorAccess" }),
        )
        .await
        .unwrap();
    assert_eq!(
        before["Policy"]["PolicyDocument"],
        after["Policy"]["PolicyDocument"]
    );
    let extra = admin
        .call("Airlock.GetPolicy", &json!({ "PolicyName": "hr-extra" }))
        .await
        .unwrap();
    assert!(
        !extra.to_string().contains("\\\"Action\\\":\\\"*\\\""),
        "{extra}"
    );
    // Changing a policy is its own action, which hr lacks; and apply is no way around it.
    let (code, _) = refused(
        &hr,
        "Airlock.UpdatePolicy",
        json!({ "PolicyName": "hr-extra", "PolicyDocument": open }),
    )
    .await;
    assert_eq!(code, "AccessDeniedException");
    let applier = user_with_policy(
        &d,
        "applier",
        json!([{ "Effect": "Allow", "Action": ["airlock:Apply", "iam:CreatePolicy"], "Resource": "*" }]),
    )
    .await;
    let (code, _) = refused(
        &applier,
        "Airlock.Apply",
        json!({ "Document": { "Policies": { "hr-extra": { "Document": open } } } }),
    )
    .await;
    assert_eq!(code, "AccessDeniedException");
    let (code, _) = refused(
        &applier,
        "Airlock.Apply",
        json!({ "Document": { "Policies": { "AdministratorAccess": { "Document": open } } } }),
    )
    .await;
    assert!(
        code == "InvalidInput" || code == "AccessDeniedException",
        "{code}"
    );
    // An administrator updates explicitly.
    admin
        .call(
            "Airlock.UpdatePolicy",
            &json!({ "PolicyName": "hr-extra", "PolicyDocument":
                { "Version": "2012-10-17", "Statement": [{ "Effect": "Allow", "Action": "iam:GetUser", "Resource": "*" }] } }),
        )
        .await
        .unwrap();
    d.assert_serves(PROMPT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_resumes_a_session() {
    let mut d = Deployment::start(&[]).await;
    let own_sessions = json!([
        { "Effect": "Allow", "Action": "ssm:StartSession", "Resource": "*" },
        { "Effect": "Allow", "Action": ["ssm:ResumeSession", "ssm:TerminateSession"],
          "Resource": "arn:aws:ssm:*:*:session/${aws:username}-*" }
    ]);
    let bob = user_with_policy(&d, "bob", own_sessions.clone()).await;
    let bob_ops = user_with_policy(&d, "bob-ops", own_sessions).await;
    let mut live =
        airlock_testkit::TestSession::start(&bob_ops, &d.instance_id, Default::default()).await;
    live.send("echo owner-$((1+1))\n").await;
    live.expect("owner-2", Duration::from_secs(20)).await;
    let id = live.grant.session_id.clone();
    assert!(id.starts_with("bob-ops-"));
    // bob's policy matches `bob-ops-…` by its prefix; resuming is still the owner's alone.
    let (code, message) =
        refused(&bob, "AmazonSSM.ResumeSession", json!({ "SessionId": id })).await;
    assert_eq!(code, "AccessDeniedException", "{message}");
    assert!(message.contains("owner"), "{message}");
    // The live client was not touched.
    live.send("echo still-$((2+2))\n").await;
    live.expect("still-4", Duration::from_secs(20)).await;
    // The owner may take its own session over, and that is on the audit trail.
    // (The live client, cut off, resumes by itself in turn: only the record matters here.)
    let grant = bob_ops.resume_session(&id).await.unwrap();
    open_data_channel(&d, &grant.stream_url, &grant.token_value).await;
    let api = d.api();
    airlock_testkit::eventually(
        "the takeover on the audit trail",
        Duration::from_secs(10),
        || {
            let api = api.clone();
            let id = id.clone();
            async move {
                let audit = api
                    .call(
                        "Airlock.ListAuditEvents",
                        &json!({ "Decision": "TakeOver" }),
                    )
                    .await
                    .unwrap();
                audit["Events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["RequestId"] == id.as_str())
                    .then_some(())
            }
        },
    )
    .await;
    d.assert_serves(PROMPT).await;
}

// ---------------------------------------------------------------------------------------------
// Agents

type ControlWs = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

/// Opens the control channel of `instance_id` over TLS and answers the challenge with `key`;
/// the channel when the server accepted it (it did not close within a second).
async fn control_channel_with(
    d: &Deployment,
    instance_id: &str,
    key: &ed25519_dalek::SigningKey,
) -> Option<ControlWs> {
    use base64::Engine;
    use ed25519_dalek::Signer;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let io = tls(d).await;
    let url = format!("wss://127.0.0.1/v1/control-channel/{instance_id}");
    let (mut ws, _) = tokio_tungstenite::client_async(url, io).await.unwrap();
    let hello = match ws.next().await {
        Some(Ok(Message::Text(t))) => t.to_string(),
        other => panic!("no challenge: {other:?}"),
    };
    let challenge: Value = serde_json::from_str(&hello).unwrap();
    let message = format!(
        "airlock-control-v1\n{instance_id}\n{}",
        challenge["Challenge"].as_str().unwrap()
    );
    let sig =
        base64::engine::general_purpose::STANDARD.encode(key.sign(message.as_bytes()).to_bytes());
    let open = json!({
        "MessageSchemaVersion": "1.0",
        "RequestId": "00000000-0000-4000-8000-000000000001",
        "TokenValue": sig,
        "ClientId": "",
        "AgentVersion": "hostile",
    });
    ws.send(Message::Text(open.to_string().into()))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(1), ws.next()).await {
            Err(_) => return Some(ws),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(_))) => {}
        }
    }
}

fn signing_key(state_file: &std::path::Path) -> (String, ed25519_dalek::SigningKey) {
    use base64::Engine;
    let v: Value = serde_json::from_str(&std::fs::read_to_string(state_file).unwrap()).unwrap();
    let raw: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(v["PrivateKey"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    (
        v["InstanceId"].as_str().unwrap().to_owned(),
        ed25519_dalek::SigningKey::from_bytes(&raw),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_key_speaks_for_its_own_instance_only() {
    let mut d = Deployment::start(&[]).await;
    // Two more instances registered (not running): their keys are the attacker's and the victim's.
    let dir = airlock_testkit::TempDir::new();
    let mut keys = Vec::new();
    for n in 0..2 {
        let act = d
            .api()
            .call(
                "AmazonSSM.CreateActivation",
                &json!({ "IamRole": "Hostile", "RegistrationLimit": 1 }),
            )
            .await
            .unwrap();
        let state = dir.0.join(format!("agent-{n}.json"));
        let bin = tokio::task::spawn_blocking(airlock_testkit::airlock_binary)
            .await
            .unwrap();
        let st = tokio::process::Command::new(bin)
            .args(["agent", "register", "--server", &d.url])
            .args(["--activation-id", act["ActivationId"].as_str().unwrap()])
            .args(["--activation-code", act["ActivationCode"].as_str().unwrap()])
            .arg("--ca-file")
            .arg(&d.ca_file)
            .arg("--state")
            .arg(&state)
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(st.success());
        keys.push(signing_key(&state));
    }
    let (attacker_id, attacker_key) = &keys[0];
    let (victim_id, victim_key) = &keys[1];
    assert!(
        control_channel_with(&d, victim_id, attacker_key)
            .await
            .is_none(),
        "a key opened another instance's channel"
    );
    assert!(
        control_channel_with(&d, &d.instance_id.clone(), attacker_key)
            .await
            .is_none()
    );
    // Each key does open its own instance's channel (the refusals above are about the key).
    assert!(control_channel_with(&d, victim_id, victim_key)
        .await
        .is_some());
    let mut attacker = control_channel_with(&d, attacker_id, attacker_key)
        .await
        .expect("its own channel");
    // On its own channel, the attacker reports another instance's live session as failed.
    let api = d.api();
    let mut live =
        airlock_testkit::TestSession::start(&api, &d.instance_id, Default::default()).await;
    live.send("echo before-$((3+3))\n").await;
    live.expect("before-6", Duration::from_secs(20)).await;
    let forged = airlock_proto::AgentTaskComplete {
        schema_version: 1,
        task_id: live.grant.session_id.clone(),
        topic: "agent_task_complete".into(),
        final_task_status: "Failed".into(),
        instance_id: attacker_id.clone(),
        output: "x".repeat(1 << 16),
        ..Default::default()
    };
    let frame = airlock_proto::Frame::new(
        airlock_proto::MessageType::AgentTaskComplete,
        0,
        0,
        airlock_proto::PayloadType::NONE,
        bytes::Bytes::from(serde_json::to_vec(&forged).unwrap()),
    );
    {
        use futures_util::SinkExt;
        attacker
            .send(tokio_tungstenite::tungstenite::Message::Binary(
                frame.encode(true),
            ))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    live.send("echo after-$((4+4))\n").await;
    live.expect("after-8", Duration::from_secs(20)).await;
    let sessions = api
        .call("AmazonSSM.DescribeSessions", &json!({ "State": "Active" }))
        .await
        .unwrap();
    assert!(
        sessions.to_string().contains(&live.grant.session_id),
        "the forged report ended another instance's session: {sessions}"
    );
    d.assert_serves(PROMPT).await;
}
