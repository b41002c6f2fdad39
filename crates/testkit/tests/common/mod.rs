//! Helpers shared by the test files: log capture, hand-signed API requests that can be
//! tampered with, and a hand-driven data-channel client that can send anything.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use airlock_client::StreamGrant;
use airlock_proto::{
    AirlockCapabilities, ChannelClosed, ChannelConfig, Event, HandshakeRequest, HandshakeResponse,
    MessageType, PayloadType, ProcessedClientAction, ReliableChannel, Role,
};

// ---------------------------------------------------------------------------------------------
// Logs

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static INIT: Once = Once::new();

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures this test binary's logs (INFO and above) so tests can check what was logged.
pub fn capture_logs() {
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .try_init();
    });
}

/// Everything logged so far by this test binary.
pub fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

/// Waits (up to 5 s) until one log line contains every one of `needles`, and returns it.
pub async fn wait_log_line(needles: &[&str]) -> String {
    airlock_testkit::eventually(
        &format!("a log line with {needles:?}"),
        Duration::from_secs(5),
        || async {
            logs()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .map(str::to_owned)
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Hand-signed API requests

/// An API answer, kept raw.
#[derive(Debug)]
pub struct RawResponse {
    /// HTTP status.
    pub status: u16,
    /// `x-amzn-ErrorType`, if any.
    pub error_type: Option<String>,
    /// `x-amzn-RequestId`, if any.
    pub request_id: Option<String>,
    /// The body as JSON (`Null` when it is not JSON).
    pub body: Value,
    /// The body as text.
    pub text: String,
}

impl RawResponse {
    /// Asserts the AWS JSON 1.1 error shape: status, `x-amzn-ErrorType`, `__type`, and a
    /// `message` containing `needle`.
    pub fn assert_error(&self, status: u16, code: &str, needle: &str) {
        assert_eq!(self.status, status, "status of {self:?}");
        assert_eq!(
            self.error_type.as_deref(),
            Some(code),
            "x-amzn-ErrorType of {self:?}"
        );
        assert_eq!(self.body["__type"], code, "__type of {self:?}");
        let msg = self.body["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(needle),
            "message {msg:?} should contain {needle:?}"
        );
        assert!(
            self.request_id.as_deref().is_some_and(|r| !r.is_empty()),
            "x-amzn-RequestId of {self:?}"
        );
    }
}

/// What to send: the target header, the body, and with which key (`None`: unsigned) at what time.
pub struct RawRequest<'a> {
    /// `X-Amz-Target` (omitted when `None`).
    pub target: Option<&'a str>,
    /// The body.
    pub body: Vec<u8>,
    /// Access key id and secret; `None` sends no Authorization at all.
    pub key: Option<(&'a str, &'a str)>,
    /// Signing time.
    pub time: time::OffsetDateTime,
}

impl<'a> RawRequest<'a> {
    /// A request signed now with `key`.
    pub fn new(target: &'a str, body: Value, key: (&'a str, &'a str)) -> Self {
        RawRequest {
            target: Some(target),
            body: body.to_string().into_bytes(),
            key: Some(key),
            time: time::OffsetDateTime::now_utc(),
        }
    }
}

/// Sends `req` to `url` (`http://127.0.0.1:port`), letting `tamper` change the headers and
/// the body after signing.
pub async fn send_raw(
    url: &str,
    req: RawRequest<'_>,
    tamper: impl FnOnce(&mut Vec<(String, String)>, &mut Vec<u8>),
) -> RawResponse {
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    let mut headers = vec![
        ("host".to_owned(), host.to_owned()),
        (
            "content-type".to_owned(),
            "application/x-amz-json-1.1".to_owned(),
        ),
    ];
    if let Some(t) = req.target {
        headers.push(("x-amz-target".to_owned(), t.to_owned()));
    }
    let mut body = req.body;
    if let Some((id, secret)) = req.key {
        let creds = airlock_sigv4::Credentials {
            access_key_id: id.to_owned(),
            secret_access_key: secret.to_owned(),
            session_token: None,
        };
        let signed = airlock_sigv4::sign(
            &airlock_sigv4::Request {
                method: "POST",
                path_and_query: "/",
                headers: &headers,
                body: &body,
            },
            &creds,
            "us-east-1",
            "ssm",
            req.time,
        )
        .unwrap();
        headers.extend(signed);
    }
    tamper(&mut headers, &mut body);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut rb = http.post(format!("{url}/"));
    for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
        rb = rb.header(k.as_str(), v.as_str());
    }
    let resp = rb.body(body).send().await.expect("the server answers");
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let error_type = header("x-amzn-errortype");
    let request_id = header("x-amzn-requestid");
    let text = resp.text().await.unwrap_or_default();
    RawResponse {
        status,
        error_type,
        request_id,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

/// Replaces the `Signature=` of an Authorization header with another valid-looking one.
pub fn corrupt_signature(headers: &mut [(String, String)]) {
    let auth = headers
        .iter_mut()
        .find(|(k, _)| k == "authorization")
        .expect("signed");
    let (head, sig) = auth.1.rsplit_once("Signature=").unwrap();
    let flipped: String = sig
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 0 {
                if c == '0' {
                    '1'
                } else {
                    '0'
                }
            } else {
                c
            }
        })
        .collect();
    auth.1 = format!("{head}Signature={flipped}");
}

// ---------------------------------------------------------------------------------------------
// Raw WebSockets

/// A raw client WebSocket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `url` without sending anything.
pub async fn ws_connect(url: &str) -> Ws {
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("connects in time")
    .expect("WebSocket upgrade")
    .0
}

/// The open message the AWS plugin sends first.
pub fn open_message(token: &str) -> Message {
    let open = json!({
        "MessageSchemaVersion": "1.0",
        "RequestId": uuid::Uuid::new_v4().to_string(),
        "TokenValue": token,
        "ClientId": uuid::Uuid::new_v4().to_string(),
        "ClientVersion": "1.2.0.0",
    });
    Message::Text(open.to_string().into())
}

/// Reads until the server closes; returns the close code and reason (`None` for a close
/// without a frame or a dropped connection). Fails if a data frame arrives first or nothing
/// happens within 10 s.
pub async fn expect_close(ws: &mut Ws) -> Option<(CloseCode, String)> {
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| (f.code, f.reason.to_string())),
                Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("expected a close, got {other:?}"),
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await;
    r.expect("the server closes the socket in time")
}

/// Opens a data channel with `token` and asserts it is refused with 1008 and a reason
/// containing `needle`.
pub async fn assert_refused(stream_url: &str, token: &str, needle: &str) {
    let mut ws = ws_connect(stream_url).await;
    ws.send(open_message(token)).await.unwrap();
    let (code, reason) = expect_close(&mut ws)
        .await
        .expect("a close frame with a reason");
    assert_eq!(code, CloseCode::Policy, "close code (reason {reason:?})");
    assert!(
        reason.contains(needle),
        "close reason {reason:?} should contain {needle:?}"
    );
}

/// A data-channel client driven by hand: the client end of the protocol on a
/// [`ReliableChannel`], plus a way to put arbitrary bytes on the wire.
pub struct RawClient {
    /// The socket.
    pub ws: Ws,
    /// The reliable channel (client role).
    pub ch: ReliableChannel,
    /// Everything printed so far.
    pub out: Vec<u8>,
    /// Set once HandshakeComplete or output has arrived.
    pub ready: bool,
    /// The `channel_closed` Output, once received.
    pub closed: Option<String>,
    /// Offer Airlock capabilities (None: behave like the AWS plugin: digests, 1 KiB payloads).
    caps: Option<AirlockCapabilities>,
    /// What was agreed, when Airlock capabilities were offered and accepted.
    pub agreed: Option<AirlockCapabilities>,
}

impl RawClient {
    /// Opens the session's data channel with its grant and sends the open message.
    pub async fn connect(grant: &StreamGrant, caps: Option<AirlockCapabilities>) -> RawClient {
        let mut ws = ws_connect(&grant.stream_url).await;
        ws.send(open_message(&grant.token_value)).await.unwrap();
        RawClient {
            ws,
            ch: ReliableChannel::new(ChannelConfig::new(Role::Client)),
            out: Vec::new(),
            ready: false,
            closed: None,
            caps,
            agreed: None,
        }
    }

    /// Replaces the socket with a new one opened with `token` (a resume), keeping the
    /// channel's sequence state.
    pub async fn reopen(&mut self, stream_url: &str, token: &str) {
        let mut ws = ws_connect(stream_url).await;
        ws.send(open_message(token)).await.unwrap();
        self.ws = ws;
    }

    /// What was printed, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.out).into_owned()
    }

    fn handle_events(&mut self) {
        while let Some(ev) = self.ch.poll_event() {
            match ev {
                Event::Data {
                    payload_type: PayloadType::HANDSHAKE_REQUEST,
                    payload,
                } => {
                    let req: HandshakeRequest = serde_json::from_slice(&payload).unwrap();
                    let agreed = match (self.caps, req.airlock) {
                        (Some(ours), Some(theirs)) => Some(ours.negotiate(&theirs)),
                        _ => None,
                    };
                    let resp = HandshakeResponse {
                        client_version: "1.2.0.0".into(),
                        processed_client_actions: req
                            .requested_client_actions
                            .iter()
                            .map(|a| ProcessedClientAction {
                                action_type: a.action_type.clone(),
                                action_status: 1,
                                action_result: Value::Null,
                                error: String::new(),
                            })
                            .collect(),
                        errors: None,
                        airlock: agreed,
                    };
                    self.ch
                        .send(
                            PayloadType::HANDSHAKE_RESPONSE,
                            Bytes::from(serde_json::to_vec(&resp).unwrap()),
                            Instant::now(),
                        )
                        .unwrap();
                    if let Some(a) = &agreed {
                        self.ch.apply_capabilities(a);
                    }
                    self.agreed = agreed;
                }
                Event::Data {
                    payload_type: PayloadType::HANDSHAKE_COMPLETE,
                    ..
                } => self.ready = true,
                Event::Data {
                    payload_type: PayloadType::OUTPUT | PayloadType::STDERR,
                    payload,
                } => {
                    self.ready = true;
                    self.out.extend_from_slice(&payload);
                }
                Event::Data { .. } => {}
                Event::Control(f) if f.message_type == MessageType::ChannelClosed => {
                    let c: ChannelClosed = serde_json::from_slice(&f.payload).unwrap();
                    self.closed = Some(c.output);
                }
                Event::Control(_) => {}
                Event::ResendLimitReached => panic!("the agent stopped acknowledging"),
            }
        }
    }

    async fn transmit(&mut self) {
        let mut wrote = false;
        while let Some(frame) = self.ch.poll_transmit(Instant::now()) {
            self.ws.feed(Message::Binary(frame)).await.unwrap();
            wrote = true;
        }
        if wrote {
            self.ws.flush().await.unwrap();
        }
    }

    /// Runs the protocol until `done(self)` holds; panics after `timeout` or if the socket ends.
    pub async fn pump_until(&mut self, timeout: Duration, done: impl Fn(&RawClient) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.handle_events();
            self.transmit().await;
            if done(self) {
                return;
            }
            let wake = self.ch.poll_timeout();
            tokio::select! {
                m = self.ws.next() => match m {
                    Some(Ok(Message::Binary(b))) => { let _ = self.ch.handle_bytes(b, Instant::now()); }
                    Some(Ok(Message::Close(f))) => panic!("socket closed: {f:?}; saw {:?}", self.text()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => panic!("socket error: {e}; saw {:?}", self.text()),
                    None => panic!("socket ended; saw {:?}", self.text()),
                },
                _ = async { match wake { Some(w) => tokio::time::sleep_until(w.into()).await, None => std::future::pending().await } } => {
                    self.ch.handle_timeout(Instant::now());
                }
                _ = tokio::time::sleep_until(deadline) => panic!("timed out; saw {:?}", self.text()),
            }
        }
    }

    /// Waits until the printed text contains `needle`.
    pub async fn expect(&mut self, needle: &str) {
        let n = needle.to_owned();
        self.pump_until(Duration::from_secs(15), move |c| c.text().contains(&n))
            .await;
    }

    /// Types `text` through the reliable channel (queued; sent by the next pump).
    pub fn type_text(&mut self, text: &str) {
        self.ch
            .send(
                PayloadType::OUTPUT,
                Bytes::copy_from_slice(text.as_bytes()),
                Instant::now(),
            )
            .unwrap();
    }

    /// Puts one raw WebSocket message on the wire, outside the reliable channel.
    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.unwrap();
    }
}
