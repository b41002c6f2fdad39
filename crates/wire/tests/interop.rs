//! The record layer and codec against real rustls on real sockets: both ends switched to
//! airlock-wire after the handshake, and one end left on rustls's own stream (so each side
//! is checked against an independent implementation).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use airlock_wire::ws::{apply_mask, Header};
use airlock_wire::{CloseFrame, Message, Role, WsConn};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
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
    (Arc::new(server), Arc::new(client))
}

type Pair = (
    tokio_rustls::server::TlsStream<TcpStream>,
    tokio_rustls::client::TlsStream<TcpStream>,
);

async fn handshake() -> Pair {
    let (sc, cc) = configs();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        TlsAcceptor::from(sc).accept(tcp).await.unwrap()
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let client = TlsConnector::from(cc).connect(name, tcp).await.unwrap();
    (server.await.unwrap(), client)
}

fn client_side(c: tokio_rustls::client::TlsStream<TcpStream>) -> WsConn {
    let (tcp, conn) = c.into_inner();
    WsConn::over_tls13(
        tcp,
        conn.dangerous_extract_secrets().unwrap(),
        Role::Client,
        &[],
    )
    .unwrap()
}

fn server_side(s: tokio_rustls::server::TlsStream<TcpStream>) -> WsConn {
    let (tcp, conn) = s.into_inner();
    WsConn::over_tls13(
        tcp,
        conn.dangerous_extract_secrets().unwrap(),
        Role::Server,
        &[],
    )
    .unwrap()
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
