//! Outbound WebSocket connections for the client and the agent: plain or TLS (rustls), direct
//! or through an HTTPS proxy (`HTTPS_PROXY`/`HTTP_PROXY` with `NO_PROXY`) by HTTP CONNECT.

use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use airlock_proto::ReliableChannel;
pub use airlock_wire::{CloseFrame, Message, WireError};

/// A connected WebSocket for the agent's control channel (small JSON messages).
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A connected data channel: Airlock's own WebSocket codec on an in-place TLS record layer
/// (see `airlock-wire`), the hot path of every session.
pub type DataWs = airlock_wire::WsConn;

/// Errors opening a WebSocket.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The URL is not `ws://` or `wss://` with a host.
    #[error("bad WebSocket URL {0}")]
    BadUrl(String),
    /// TCP or proxy trouble.
    #[error("connecting to {target}: {source}")]
    Io {
        /// What was dialled.
        target: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The proxy refused the tunnel.
    #[error("proxy {proxy} refused CONNECT {target}: {status}")]
    Proxy {
        /// The proxy.
        proxy: String,
        /// The tunnel target.
        target: String,
        /// Its status line.
        status: String,
    },
    /// The server answered the upgrade with something other than 101.
    #[error("WebSocket handshake with {url}: {status}")]
    Upgrade {
        /// The URL.
        url: String,
        /// What the server said.
        status: String,
    },
    /// The WebSocket handshake failed.
    #[error("WebSocket handshake with {url}: {source}")]
    Handshake {
        /// The URL.
        url: String,
        /// The cause.
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
}

/// Host, port and TLS flag of a ws/wss/http/https URL.
pub fn host_port(url: &str) -> Option<(String, u16, bool)> {
    let (scheme, rest) = url.split_once("://")?;
    let tls = matches!(scheme, "wss" | "https");
    let authority = rest.split(['/', '?']).next()?;
    let authority = authority.rsplit('@').next()?;
    let default = if tls { 443 } else { 80 };
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, tail) = v6.split_once(']')?;
        let port = tail
            .strip_prefix(':')
            .map_or(Some(default), |p| p.parse().ok())?;
        return Some((host.to_owned(), port, tls));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_owned(), p.parse().ok()?, tls)),
        None => Some((authority.to_owned(), default, tls)),
    }
}

fn proxy_for(host: &str, tls: bool) -> Option<String> {
    let var = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok())
            .filter(|v| !v.is_empty())
    };
    let proxy = if tls {
        var(&["HTTPS_PROXY", "https_proxy"])
    } else {
        var(&["HTTP_PROXY", "http_proxy"])
    }?;
    if let Some(no) = var(&["NO_PROXY", "no_proxy"]) {
        for entry in no.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let e = entry.trim_start_matches('.');
            if entry == "*" || host == e || host.ends_with(&format!(".{e}")) {
                return None;
            }
        }
    }
    Some(proxy)
}

async fn tunnel(proxy: &str, host: &str, port: u16) -> Result<TcpStream, WsError> {
    let target = format!("{host}:{port}");
    let (phost, pport, _) = host_port(proxy)
        .or_else(|| host_port(&format!("http://{proxy}")))
        .ok_or_else(|| WsError::BadUrl(proxy.to_owned()))?;
    let io = |source| WsError::Io {
        target: format!("proxy {phost}:{pport}"),
        source,
    };
    let mut s = TcpStream::connect((phost.as_str(), pport))
        .await
        .map_err(io)?;
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    s.write_all(req.as_bytes()).await.map_err(io)?;
    // Read the response head byte by byte so nothing of the tunnelled stream is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 {
            return Err(WsError::Proxy {
                proxy: proxy.to_owned(),
                target,
                status: "response head too long".into(),
            });
        }
        let b = s.read_u8().await.map_err(io)?;
        head.push(b);
    }
    let text = String::from_utf8_lossy(&head);
    let status = text.lines().next().unwrap_or("").to_owned();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(WsError::Proxy {
            proxy: proxy.to_owned(),
            target,
            status,
        });
    }
    Ok(s)
}

/// Opens a WebSocket to `url`, through a proxy when the environment names one.
pub async fn connect(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<WsStream, WsError> {
    let (stream, _, _, is_tls) = dial(url).await?;
    let connector = if is_tls {
        let cfg = match tls {
            Some(c) => c,
            None => crate::tls::client_config(None).map_err(|e| WsError::Io {
                target: url.to_owned(),
                source: std::io::Error::other(e.to_string()),
            })?,
        };
        Some(Connector::Rustls(cfg))
    } else {
        Some(Connector::Plain)
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20));
    let (ws, _) =
        tokio_tungstenite::client_async_tls_with_config(url, stream, Some(config), connector)
            .await
            .map_err(|e| WsError::Handshake {
                url: url.to_owned(),
                source: Box::new(e),
            })?;
    Ok(ws)
}

/// Dials `url` (through a proxy when the environment names one) and sets TCP_NODELAY.
async fn dial(url: &str) -> Result<(TcpStream, String, u16, bool), WsError> {
    let (host, port, is_tls) = host_port(url).ok_or_else(|| WsError::BadUrl(url.to_owned()))?;
    let stream = match proxy_for(&host, is_tls) {
        Some(p) => tunnel(&p, &host, port).await?,
        None => TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|source| WsError::Io {
                target: format!("{host}:{port}"),
                source,
            })?,
    };
    let _ = stream.set_nodelay(true);
    Ok((stream, host, port, is_tls))
}

/// Sends the HTTP upgrade for `url` on `io` and reads the answer up to the end of its head
/// (byte by byte, so nothing after it is consumed); checks the 101 and the accept key.
async fn upgrade<S>(io: &mut S, url: &str, host: &str, port: u16) -> Result<(), WsError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let io_err = |source| WsError::Io {
        target: url.to_owned(),
        source,
    };
    let rest = url.split_once("://").map_or("", |(_, r)| r);
    let path = rest.find('/').map_or("/", |i| &rest[i..]);
    let key = airlock_wire::ws::new_key();
    let host_header = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: airlock/{}\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    io.write_all(req.as_bytes()).await.map_err(io_err)?;
    io.flush().await.map_err(io_err)?;
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Err(WsError::Upgrade {
                url: url.to_owned(),
                status: "response head too long".into(),
            });
        }
        head.push(io.read_u8().await.map_err(io_err)?);
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default().to_owned();
    if status.split_whitespace().nth(1) != Some("101") {
        return Err(WsError::Upgrade {
            url: url.to_owned(),
            status,
        });
    }
    let accept = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|(_, v)| v.trim().to_owned());
    if accept.as_deref() != Some(airlock_wire::ws::accept_key(&key).as_str()) {
        return Err(WsError::Upgrade {
            url: url.to_owned(),
            status: "the server's Sec-WebSocket-Accept does not match the key".into(),
        });
    }
    Ok(())
}

/// Opens a data channel to `url`: TLS by rustls for the handshake, then (TLS 1.3) Airlock's
/// in-place record layer with rustls's keys, or plain TCP for `ws://`. TLS 1.2 servers keep
/// rustls's stream underneath.
pub async fn connect_data(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<DataWs, WsError> {
    let (tcp, host, port, is_tls) = dial(url).await?;
    let other = |e: String| WsError::Io {
        target: url.to_owned(),
        source: std::io::Error::other(e),
    };
    let mut conn = if is_tls {
        let base = match tls {
            Some(c) => c,
            None => crate::tls::client_config(None).map_err(|e| other(e.to_string()))?,
        };
        let mut cfg = (*base).clone();
        cfg.enable_secret_extraction = true;
        // The traffic secrets too, so the record layer can follow the gateway's KeyUpdates.
        let log = airlock_wire::record::TrafficSecretLog::new();
        cfg.key_log = log.clone();
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|_| WsError::BadUrl(url.to_owned()))?;
        let mut stream = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|source| WsError::Io {
                target: format!("TLS with {host}:{port}"),
                source,
            })?;
        upgrade(&mut stream, url, &host, port).await?;
        if stream.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
            // A KeyUpdate that came with the 101 was followed by rustls, and its answer (a
            // KeyUpdate of ours) waits for our next write: send it before taking the keys, or
            // the gateway would read our records with the key before it.
            let _ = std::io::Write::write(&mut stream.get_mut().1.writer(), &[]);
            stream.flush().await.map_err(|source| WsError::Io {
                target: url.to_owned(),
                source,
            })?;
            let (tcp, session) = stream.into_inner();
            DataWs::take_over_tls13(
                tcp,
                session.into(),
                log.take(),
                airlock_wire::Role::Client,
                Vec::new(),
            )
            .map_err(|e| other(e.to_string()))?
        } else {
            DataWs::over_stream(stream, airlock_wire::Role::Client, &[])
        }
    } else {
        let mut tcp = tcp;
        upgrade(&mut tcp, url, &host, port).await?;
        DataWs::over_tcp(tcp, airlock_wire::Role::Client, &[])
    };
    conn.set_max_message(16 << 20);
    Ok(conn)
}

/// Messages queued to a [`SplitWs`] writer before the owner holds further frames back.
pub const WRITER_QUEUE: usize = 32;

/// A WebSocket whose writes run in a task of their own, so its owner never waits on the
/// socket and always keeps reading. A data-channel pump that both reads and writes one
/// socket can otherwise deadlock when both ends of a session send bulk data at once: each
/// blocks writing to a relay that is blocked writing to the other. (It also lets encryption
/// and decryption run on two cores.)
pub struct SplitWs {
    /// Incoming messages.
    pub stream: airlock_wire::WsReader,
    /// Outgoing messages, written in order by the writer task.
    pub tx: mpsc::Sender<Message>,
    writer: tokio::task::JoinHandle<Option<airlock_wire::WsWriter>>,
}

impl SplitWs {
    /// Splits `ws` and starts its writer task.
    pub fn new(ws: DataWs) -> SplitWs {
        let (mut sink, stream) = ws.split();
        let (tx, mut rx) = mpsc::channel::<Message>(WRITER_QUEUE);
        // Feeds one message; false once the socket failed or a close frame ended it.
        async fn feed(sink: &mut airlock_wire::WsWriter, m: Message) -> bool {
            let closing = matches!(m, Message::Close(_));
            sink.feed(m).await.is_ok() && !closing
        }
        let writer = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if !feed(&mut sink, m).await {
                    return None;
                }
                while let Ok(m) = rx.try_recv() {
                    if !feed(&mut sink, m).await {
                        return None;
                    }
                }
                if sink.flush().await.is_err() {
                    return None;
                }
            }
            Some(sink)
        });
        SplitWs { stream, tx, writer }
    }

    /// Moves every frame `ch` has to send into the writer's queue while it has room. Returns
    /// true when frames are left waiting for room (then wait on [`SplitWs::room`]).
    pub fn transmit(&self, ch: &mut ReliableChannel) -> bool {
        while self.tx.capacity() > 0 {
            match ch.poll_transmit_parts(Instant::now()) {
                Some(frame) => {
                    let m = if frame.body.is_empty() {
                        Message::Binary(frame.head)
                    } else {
                        Message::BinaryParts(frame.head, frame.body)
                    };
                    if self.tx.try_send(m).is_err() {
                        // The writer is gone; the reader will see the connection end.
                        return false;
                    }
                }
                None => return false,
            }
        }
        ch.wants_transmit()
    }

    /// Resolves when the writer's queue has room again.
    pub async fn room(&self) {
        let _ = self.tx.reserve().await;
    }

    /// Waits until everything queued is written, and returns the whole socket again (`None`
    /// if it failed or was closed).
    pub async fn join(self) -> Option<DataWs> {
        let SplitWs { stream, tx, writer } = self;
        drop(tx);
        let sink = writer.await.ok().flatten()?;
        Some(DataWs {
            reader: stream,
            writer: sink,
        })
    }

    /// Queues a close frame and stops the writer once it is sent.
    pub async fn close(self) {
        let _ = self.tx.send(Message::Close(None)).await;
        let SplitWs { writer, .. } = self;
        let _ = writer.await;
    }
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn parses_urls() {
        assert_eq!(
            host_port("ws://127.0.0.1:80/x"),
            Some(("127.0.0.1".into(), 80, false))
        );
        assert_eq!(host_port("wss://h/x?y=+/="), Some(("h".into(), 443, true)));
        assert_eq!(host_port("https://[::1]:9/"), Some(("::1".into(), 9, true)));
        assert_eq!(host_port("nonsense"), None);
    }
}
