//! Data-channel upgrades taken by the accept loop before axum sees them: the 101 is written
//! here, and the WebSocket then runs on `airlock-wire` — over TLS 1.3 with the keys of the
//! connection's own handshake, records opened and sealed in place — so relaying a frame
//! costs one decryption, one encryption and no other pass over its bytes.

use std::net::SocketAddr;
use std::sync::Arc;

use airlock_wire::{Role, WsConn};
use tokio::io::AsyncWriteExt;

use super::data;
use crate::listener::Transport;
use crate::state::AppState;

/// The parts of a data-channel upgrade request the gateway needs.
#[derive(Debug, PartialEq, Eq)]
pub struct DataUpgrade {
    /// From the path `/v1/data-channel/<SessionId>`.
    pub session_id: String,
    /// `Sec-WebSocket-Key`, when present and the version is 13.
    pub key: Option<String>,
    /// Length of the request head, CRLFCRLF included.
    pub head_len: usize,
}

impl DataUpgrade {
    /// Recognises `GET /v1/data-channel/<id>… Upgrade: websocket`; anything else is axum's.
    pub fn parse(head: &[u8]) -> Option<DataUpgrade> {
        let end = head.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let text = std::str::from_utf8(&head[..end]).ok()?;
        let mut lines = text.split("\r\n");
        let mut request = lines.next()?.split(' ');
        let (method, target) = (request.next()?, request.next()?);
        let id = target.strip_prefix("/v1/data-channel/")?;
        let id = id.split(['?', '#']).next().unwrap_or_default();
        if method != "GET" || id.is_empty() || id.contains('/') {
            return None;
        }
        let header = |name: &str| {
            text.split("\r\n")
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_owned())
        };
        if !header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
            return None;
        }
        let key = header("sec-websocket-key")
            .filter(|_| header("sec-websocket-version").as_deref() == Some("13"));
        Some(DataUpgrade {
            session_id: percent_decode(id),
            key,
            head_len: end,
        })
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answers the upgrade and serves the data channel on `airlock-wire`.
pub async fn serve(
    state: Arc<AppState>,
    mut transport: Transport,
    up: DataUpgrade,
    head: Vec<u8>,
    peer: SocketAddr,
) {
    let Some(key) = up.key else {
        let resp = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let _ = match &mut transport {
            Transport::Plain(s) => s.write_all(resp).await,
            Transport::Tls(s, _) => s.write_all(resp).await,
        };
        tracing::warn!(%peer, "data-channel upgrade without a valid Sec-WebSocket-Key/Version");
        return;
    };
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        airlock_wire::ws::accept_key(&key)
    );
    // Bytes that came after the head are the client's first WebSocket bytes.
    let early = head.get(up.head_len..).unwrap_or_default().to_vec();
    let conn = match transport {
        Transport::Plain(mut s) => {
            if s.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
            WsConn::over_tcp(s, Role::Server, &early)
        }
        Transport::Tls(mut s, log) => {
            if s.write_all(resp.as_bytes()).await.is_err() || s.flush().await.is_err() {
                return;
            }
            if s.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
                let (tcp, session) = s.into_inner();
                match WsConn::take_over_tls13(tcp, session.into(), log.take(), Role::Server, early)
                {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(%peer, "data channel: {e}");
                        return;
                    }
                }
            } else {
                WsConn::over_stream(*s, Role::Server, &early)
            }
        }
    };
    let mut conn = conn;
    // Raised to MAX_DATA_MESSAGE once the open message's token is checked (data::serve).
    conn.set_max_message(data::MAX_OPEN_MESSAGE);
    let (writer, reader) = conn.split();
    data::serve(
        state,
        up.session_id,
        peer,
        data::DcReader::Wire(Box::new(reader)),
        data::DcWriter::Wire(Box::new(writer)),
    )
    .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn recognises_data_channel_upgrades_only() {
        let ok = b"GET /v1/data-channel/s-1%2Bx?role=publish_subscribe HTTP/1.1\r\nHost: h\r\nupgrade: WebSocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: abc\r\nSec-WebSocket-Version: 13\r\n\r\nXY";
        let up = DataUpgrade::parse(ok).unwrap();
        assert_eq!(up.session_id, "s-1+x");
        assert_eq!(up.key.as_deref(), Some("abc"));
        assert_eq!(up.head_len, ok.len() - 2);
        for not in [
            &b"POST / HTTP/1.1\r\nHost: h\r\n\r\n"[..],
            b"GET /v1/data-channel/s HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /v1/data-channel/ HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"GET /v1/data-channel/s HTTP/1.1\r\nUpgrade: websocket\r\n",
            b"\xff\xfe\r\n\r\n",
        ] {
            assert_eq!(DataUpgrade::parse(not), None);
        }
        let no_key = b"GET /v1/data-channel/s HTTP/1.1\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(DataUpgrade::parse(no_key).unwrap().key, None);
    }
}
