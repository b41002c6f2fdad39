//! The server's accept loop. It terminates TLS itself (tokio-rustls) and reads the first
//! request head of every connection: a data-channel WebSocket upgrade goes straight to the
//! gateway's data path, which runs the WebSocket on Airlock's in-place TLS record layer
//! (`airlock-wire`) with the keys of this very handshake; everything else is handed to axum
//! with the bytes already read put back in front.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// How long a new connection may take to finish TLS and send its first request head.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest first request head read before the connection is handed on regardless.
const MAX_HEAD: usize = 16 * 1024;

/// A connection's stream: plain or TLS.
pub enum Transport {
    /// Plain TCP (loopback, or behind a TLS-terminating proxy).
    Plain(TcpStream),
    /// TLS terminated here, with the connection's traffic secrets (for the data path's record
    /// layer to follow KeyUpdates).
    Tls(
        Box<tokio_rustls::server::TlsStream<TcpStream>>,
        Arc<airlock_wire::record::TrafficSecretLog>,
    ),
}

/// A connection for axum: the transport, with the bytes the accept loop read first replayed.
pub struct ServerIo {
    prefix: Bytes,
    inner: Transport,
}

impl AsyncRead for ServerIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        match &mut self.inner {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connections for axum, as [`axum::serve::Listener`].
pub struct Incoming {
    rx: mpsc::Receiver<(ServerIo, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for Incoming {
    type Io = ServerIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (ServerIo, SocketAddr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop stopped (shutdown): axum's graceful shutdown ends the serve.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// The connect info of [`Incoming`] connections; [`peer_info`] republishes it as
/// `ConnectInfo<SocketAddr>`, which the handlers take.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Incoming>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Incoming>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

/// Middleware: the peer address as `ConnectInfo<SocketAddr>`.
pub async fn peer_info(
    axum::extract::ConnectInfo(Peer(addr)): axum::extract::ConnectInfo<Peer>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(addr));
    next.run(req).await
}

/// Starts the accept loop on `listener`; stops accepting when `shutdown` fires.
pub fn spawn(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> io::Result<Incoming> {
    let local = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(64);
    let tls = tls.map(|cfg| {
        let mut cfg = (*cfg).clone();
        cfg.enable_secret_extraction = true;
        Arc::new(cfg)
    });
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            // TCP_NODELAY on every socket: the gateway relays small frames (keystrokes, acks)
            // one write each, and Nagle would hold them for the peer's delayed ACK.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("could not set TCP_NODELAY: {e}");
            }
            let (tx, tls, state) = (tx.clone(), tls.clone(), state.clone());
            tokio::spawn(async move {
                let first = tokio::time::timeout(FIRST_REQUEST_TIMEOUT, first_head(tcp, tls));
                match first.await {
                    Ok(Ok((transport, head))) => {
                        if let Some(up) = crate::gateway::fast::DataUpgrade::parse(&head) {
                            let tracker = state.tasks.clone();
                            tracker
                                .track_future(crate::gateway::fast::serve(
                                    state, transport, up, head, peer,
                                ))
                                .await;
                        } else {
                            // Only the data path takes over TLS: forget the secrets here.
                            if let Transport::Tls(_, log) = &transport {
                                let _ = log.take();
                            }
                            let io = ServerIo {
                                prefix: Bytes::from(head),
                                inner: transport,
                            };
                            let _ = tx.send((io, peer)).await;
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, "connection dropped before its first request: {e}")
                    }
                    Err(_) => tracing::debug!(%peer, "no request within 10 s"),
                }
            });
        }
    });
    Ok(Incoming { rx, local })
}

/// Finishes TLS (when configured) and reads until the end of the first request head (or EOF,
/// or [`MAX_HEAD`]); returns what was read, which may run past the head.
async fn first_head(
    tcp: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> io::Result<(Transport, Vec<u8>)> {
    let mut transport = match tls {
        Some(cfg) => {
            // A config of its own per connection (a shallow copy) whose key log keeps this
            // connection's traffic secrets: the data path needs them to follow KeyUpdates.
            let log = airlock_wire::record::TrafficSecretLog::new();
            let mut cfg = (*cfg).clone();
            cfg.key_log = log.clone();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
            Transport::Tls(Box::new(acceptor.accept(tcp).await?), log)
        }
        None => Transport::Plain(tcp),
    };
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    while head.len() < MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = match &mut transport {
            Transport::Plain(s) => s.read(&mut chunk).await?,
            Transport::Tls(s, _) => s.read(&mut chunk).await?,
        };
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok((transport, head))
}
