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
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

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

/// A connection for hyper: the transport, with the bytes the accept loop read first replayed.
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

/// Starts the accept loop on `listener`, serving `app` on every connection; stops accepting
/// when `shutdown` fires and asks open HTTP connections to finish. Every connection holds a
/// slot of [`AppState::connections`] for its whole life: past a cap, new ones are closed at
/// once (a source address at its own cap cannot take the others' slots).
pub fn spawn(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<AppState>,
    app: axum::Router,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let tls = tls.map(|cfg| {
        let mut cfg = (*cfg).clone();
        cfg.enable_secret_extraction = true;
        Arc::new(cfg)
    });
    tokio::spawn(async move {
        let mut refused_logged = Instant::now() - Duration::from_secs(60);
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // E.g. out of file descriptors: wait for some to be freed.
                        tracing::debug!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            let slot = match state.connections.acquire(peer.ip()) {
                Ok(slot) => slot,
                Err(why) => {
                    if refused_logged.elapsed() > Duration::from_secs(5) {
                        refused_logged = Instant::now();
                        tracing::warn!(%peer, ?why, open = state.connections.open(), "connection refused: limit reached");
                    }
                    drop(tcp);
                    continue;
                }
            };
            // TCP_NODELAY on every socket: the gateway relays small frames (keystrokes, acks)
            // one write each, and Nagle would hold them for the peer's delayed ACK.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("could not set TCP_NODELAY: {e}");
            }
            let (tls, state, app, shutdown) =
                (tls.clone(), state.clone(), app.clone(), shutdown.clone());
            tokio::spawn(async move {
                // Held by this task and, through the requests' extensions, by a WebSocket a
                // request upgrades to: the slot is free when both are done with it.
                let slot = Arc::new(slot);
                let limits = &state.config.limits;
                let first = tokio::time::timeout(
                    limits.header_timeout,
                    first_head(tcp, tls, limits.max_header_bytes),
                );
                match first.await {
                    Ok(Ok((transport, head))) => {
                        if let Some(up) = crate::gateway::fast::DataUpgrade::parse(&head) {
                            let tracker = state.tasks.clone();
                            tracker
                                .track_future(crate::gateway::fast::serve(
                                    state, transport, up, head, peer,
                                ))
                                .await;
                            drop(slot);
                        } else {
                            // Only the data path takes over TLS: forget the secrets here.
                            if let Transport::Tls(_, log) = &transport {
                                let _ = log.take();
                            }
                            let io = ServerIo {
                                prefix: Bytes::from(head),
                                inner: transport,
                            };
                            serve_http(io, peer, app, &state, slot, shutdown).await;
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, "connection dropped before its first request: {e}")
                    }
                    Err(_) => tracing::debug!(%peer, "no complete request head in time"),
                }
            });
        }
    })
}

/// Serves HTTP/1.1 on one connection with the configured head limits: a request head must be
/// complete within `header_timeout` and fit `max_header_bytes` (hyper answers 431 otherwise).
async fn serve_http(
    io: ServerIo,
    peer: SocketAddr,
    app: axum::Router,
    state: &AppState,
    slot: Arc<crate::limits::ConnectionSlot>,
    shutdown: CancellationToken,
) {
    use tower_service::Service;
    let limits = &state.config.limits;
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            req.extensions_mut().insert(slot.clone());
            let mut app = app.clone();
            async move { app.call(req.map(axum::body::Body::new)).await }
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // hyper's smallest read buffer is 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8192));
    let conn = builder
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

/// Finishes TLS (when configured) and reads until the end of the first request head (or EOF,
/// or `max_head` bytes); returns what was read, which may run past the head.
async fn first_head(
    tcp: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    max_head: usize,
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
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= max_head {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("request head larger than {max_head} bytes"),
            ));
        }
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
