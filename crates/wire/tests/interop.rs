//! The record layer and codec against real rustls on real sockets: both ends switched to
//! airlock-wire after the handshake, and one end left on rustls's own stream (so each side
//! is checked against an independent implementation).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use airlock_wire::record::{TrafficSecretLog, TrafficSecrets};
use airlock_wire::ws::{apply_mask, Header};
use airlock_wire::{CloseFrame, Message, Role, WsConn};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn configs() -> (rustls::ServerConfig, rustls::ClientConfig) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    server.enable_secret_extraction = true;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.enable_secret_extraction = true;
    (server, client)
}

type Pair = (
    tokio_rustls::server::TlsStream<TcpStream>,
    tokio_rustls::client::TlsStream<TcpStream>,
);

async fn handshake() -> Pair {
    let (pair, _, _) = handshake_logged().await;
    pair
}

/// A handshake whose traffic secrets each end's key log kept (server's, client's).
async fn handshake_logged() -> (Pair, Arc<TrafficSecretLog>, Arc<TrafficSecretLog>) {
    let (mut sc, mut cc) = configs();
    let (slog, clog) = (TrafficSecretLog::new(), TrafficSecretLog::new());
    sc.key_log = slog.clone();
    cc.key_log = clog.clone();
    let (sc, cc) = (Arc::new(sc), Arc::new(cc));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        TlsAcceptor::from(sc).accept(tcp).await.unwrap()
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let client = TlsConnector::from(cc).connect(name, tcp).await.unwrap();
    ((server.await.unwrap(), client), slog, clog)
}

fn client_side(c: tokio_rustls::client::TlsStream<TcpStream>) -> WsConn {
    client_side_with(c, None)
}

fn client_side_with(
    c: tokio_rustls::client::TlsStream<TcpStream>,
    traffic: Option<TrafficSecrets>,
) -> WsConn {
    let (tcp, conn) = c.into_inner();
    WsConn::take_over_tls13(tcp, conn.into(), traffic, Role::Client, Vec::new()).unwrap()
}

fn server_side(s: tokio_rustls::server::TlsStream<TcpStream>) -> WsConn {
    server_side_with(s, None)
}

fn server_side_with(
    s: tokio_rustls::server::TlsStream<TcpStream>,
    traffic: Option<TrafficSecrets>,
) -> WsConn {
    let (tcp, conn) = s.into_inner();
    WsConn::take_over_tls13(tcp, conn.into(), traffic, Role::Server, Vec::new()).unwrap()
}

#[tokio::test]
async fn both_ends_on_the_record_layer_carry_large_and_small_messages() {
    let (s, c) = handshake().await;
    let mut server = server_side(s);
    let mut client = client_side(c);
    let big: Bytes = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let echo = tokio::spawn(async move {
        while let Some(m) = server.next().await {
            match m.unwrap() {
                Message::Close(f) => {
                    server.close(f).await.unwrap();
                    break;
                }
                m => server.send(m).await.unwrap(),
            }
        }
    });
    for m in [
        Message::Text("hello".into()),
        Message::Binary(big.clone()),
        Message::Binary(Bytes::new()),
        Message::Ping(Bytes::from_static(b"p")),
    ] {
        client.feed(m).await.unwrap();
    }
    client.flush().await.unwrap();
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Message::Text("hello".into())
    );
    assert_eq!(client.next().await.unwrap().unwrap(), Message::Binary(big));
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Message::Binary(Bytes::new())
    );
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Message::Ping(Bytes::from_static(b"p"))
    );
    // Two parts go out as one message (masked across the seam), echoed back whole.
    let tail: Bytes = (0..40_000u32).map(|i| (i % 7) as u8).collect();
    client
        .send(Message::BinaryParts(
            Bytes::from_static(b"head-"),
            tail.clone(),
        ))
        .await
        .unwrap();
    let mut whole = b"head-".to_vec();
    whole.extend_from_slice(&tail);
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Message::Binary(Bytes::from(whole))
    );
    let bye = CloseFrame {
        code: 1000,
        reason: "done".into(),
    };
    client.close(Some(bye.clone())).await.unwrap();
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Message::Close(Some(bye))
    );
    assert!(client.next().await.is_none());
    echo.await.unwrap();
}

#[tokio::test]
async fn the_record_layer_interoperates_with_rustls_streams() {
    // Client on airlock-wire, server on rustls's stream API.
    let (mut s, c) = handshake().await;
    let mut client = client_side(c);
    let payload: Bytes = (0..100_000u32).map(|i| (i % 13) as u8).collect();
    client.send(Message::Binary(payload.clone())).await.unwrap();
    let mut head = [0u8; 14];
    s.read_exact(&mut head[..2]).await.unwrap();
    let extra = match head[1] & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    } + 4;
    s.read_exact(&mut head[2..2 + extra]).await.unwrap();
    let h = Header::parse(&head[..2 + extra]).unwrap().unwrap();
    assert_eq!(h.len, payload.len() as u64);
    let mut body = vec![0u8; payload.len()];
    s.read_exact(&mut body).await.unwrap();
    apply_mask(&mut body, h.mask.expect("clients mask"), 0);
    assert_eq!(body, payload);

    // And back: rustls writes an unmasked frame, airlock-wire reads it.
    let mut frame = [0u8; 14];
    let n = Header::encode(2, payload.len(), None, &mut frame);
    s.write_all(&frame[..n]).await.unwrap();
    s.write_all(&payload).await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Message::Binary(payload)
    );

    // rustls's close_notify ends the airlock-wire reader cleanly.
    s.shutdown().await.unwrap();
    assert!(client.next().await.is_none());
}

#[tokio::test]
async fn tampering_on_the_wire_is_an_error_not_a_panic() {
    let (s, c) = handshake().await;
    let mut server = server_side(s);
    // Raw garbage where a record should be.
    let (mut tcp, _conn) = c.into_inner();
    tcp.write_all(&[0x17, 3, 3, 0, 40]).await.unwrap();
    tcp.write_all(&[0xAB; 40]).await.unwrap();
    let r = server.next().await.unwrap();
    assert!(r.is_err(), "{r:?}");
    assert!(server.next().await.is_none());
}

/// Writes one binary WebSocket frame on a rustls stream (masked when `mask` is given, as a
/// client's are).
async fn write_frame<S: AsyncWriteExt + Unpin>(s: &mut S, payload: &[u8], mask: Option<[u8; 4]>) {
    let mut head = [0u8; 14];
    let n = Header::encode(2, payload.len(), mask, &mut head);
    let mut body = payload.to_vec();
    if let Some(k) = mask {
        apply_mask(&mut body, k, 0);
    }
    s.write_all(&head[..n]).await.unwrap();
    s.write_all(&body).await.unwrap();
    s.flush().await.unwrap();
}

/// Reads one binary WebSocket frame from a rustls stream (unmasking it when masked).
async fn read_frame<S: AsyncReadExt + Unpin>(s: &mut S) -> Vec<u8> {
    let mut head = [0u8; 14];
    s.read_exact(&mut head[..2]).await.unwrap();
    let extra = match head[1] & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    } + if head[1] & 0x80 != 0 { 4 } else { 0 };
    s.read_exact(&mut head[2..2 + extra]).await.unwrap();
    let h = Header::parse(&head[..2 + extra]).unwrap().unwrap();
    let mut body = vec![0u8; h.len as usize];
    s.read_exact(&mut body).await.unwrap();
    if let Some(k) = h.mask {
        apply_mask(&mut body, k, 0);
    }
    body
}

fn pattern(n: usize, seed: u8) -> Bytes {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

/// rustls on the gateway's side updates its keys (asking for ours): the record layer on the
/// client's side reads on under the gateway's next key, and its answer (a KeyUpdate of its
/// own before its next record) is what rustls reads the client's later data with.
#[tokio::test]
async fn a_key_update_from_a_rustls_server_is_followed_and_answered() {
    let ((mut s, c), _, clog) = handshake_logged().await;
    let mut client = client_side_with(c, clog.take());
    let first = pattern(100_000, 1);
    write_frame(&mut s, &first, None).await;
    s.get_mut().1.refresh_traffic_keys().unwrap();
    let second = pattern(70_000, 2);
    write_frame(&mut s, &second, None).await;
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Message::Binary(first)
    );
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Message::Binary(second)
    );
    // The client sends under its old key, its KeyUpdate, then its next key; rustls reads all.
    for seed in 3..6 {
        let m = pattern(50_000, seed);
        client.send(Message::Binary(m.clone())).await.unwrap();
        assert_eq!(read_frame(&mut s).await, m);
    }
    // And again, both ways, the update requested by rustls a second time.
    s.get_mut().1.refresh_traffic_keys().unwrap();
    write_frame(&mut s, b"again", None).await;
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Message::Binary(Bytes::from_static(b"again"))
    );
    client
        .send(Message::Binary(pattern(20_000, 9)))
        .await
        .unwrap();
    assert_eq!(read_frame(&mut s).await, pattern(20_000, 9));
    s.shutdown().await.unwrap();
    assert!(client.next().await.is_none());
}

/// The same from the other side: rustls as the client updates its keys, the record layer on
/// the gateway's side follows and answers.
#[tokio::test]
async fn a_key_update_from_a_rustls_client_is_followed_and_answered() {
    let ((s, mut c), slog, _) = handshake_logged().await;
    let mut server = server_side_with(s, slog.take());
    let mask = Some([1, 2, 3, 4]);
    write_frame(&mut c, &pattern(40_000, 1), mask).await;
    c.get_mut().1.refresh_traffic_keys().unwrap();
    write_frame(&mut c, &pattern(40_000, 2), mask).await;
    for seed in 1..3 {
        assert_eq!(
            server.next().await.unwrap().unwrap(),
            Message::Binary(pattern(40_000, seed))
        );
    }
    for seed in 3..6 {
        server
            .send(Message::Binary(pattern(30_000, seed)))
            .await
            .unwrap();
        assert_eq!(read_frame(&mut c).await, pattern(30_000, seed));
    }
    write_frame(&mut c, b"still", mask).await;
    assert_eq!(
        server.next().await.unwrap().unwrap(),
        Message::Binary(Bytes::from_static(b"still"))
    );
}

/// Without the traffic secrets (no key log), a KeyUpdate is a clean error, not garbage.
#[tokio::test]
async fn without_the_key_log_a_key_update_is_an_error() {
    let ((mut s, c), _, _) = handshake_logged().await;
    let mut client = client_side(c);
    s.get_mut().1.refresh_traffic_keys().unwrap();
    write_frame(&mut s, b"x", None).await;
    let r = client.next().await.unwrap();
    assert!(
        matches!(
            r,
            Err(airlock_wire::WireError::Record(
                airlock_wire::record::RecordError::KeyUpdate
            ))
        ),
        "{r:?}"
    );
}
