//! Outbound WebSocket connections for the client and the agent: plain or TLS (rustls), direct
//! or through an HTTPS proxy (`HTTPS_PROXY`/`HTTP_PROXY` with `NO_PROXY`) by HTTP CONNECT.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// A connected WebSocket.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

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
