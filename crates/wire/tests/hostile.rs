//! Hostile bytes on a real loopback socket: what a peer that has not authenticated (the
//! gateway reads WebSocket frames before any token) can send the data-channel reader. Each
//! attack must end in an error, never a panic, an abort or a huge allocation.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use airlock_wire::ws::FrameError;
use airlock_wire::{Message, Role, WireError, WsConn, DEFAULT_MAX_MESSAGE};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[global_allocator]
static ALLOC: common::alloc::Tracking = common::alloc::Tracking;

/// The most any single allocation may ask for while the reader handles hostile input: none
/// of these inputs carries a payload, so a few megabytes of read room at most (before the
/// fix the wrap attack asked for ~2.5·10^16 bytes).
const ALLOC_BOUND: usize = 4 * 1024 * 1024;

const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

/// One frame with a small payload, masked with [`KEY`] when `mask` is set.
fn frame(fin: bool, op: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut v = vec![u8::from(fin) << 7 | op, payload.len() as u8];
    if mask {
        v[1] |= 0x80;
        v.extend_from_slice(&KEY);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
    } else {
        v.extend_from_slice(payload);
    }
    v
}

/// A masked frame header declaring a 64-bit length, as an attacker writes it.
fn long_header(fin: bool, op: u8, len: u64) -> Vec<u8> {
    let mut v = vec![u8::from(fin) << 7 | op, 0x80 | 127];
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(&KEY);
    v
}

/// The attack of issue 9 item 1 (about 130 bytes): a fragmented binary message whose
/// continuation declares a length near 2^64, so `len + so_far` wrapped past the limit check
/// and the reader reserved ~2.5·10^16 bytes (the allocation failure aborted the server).
fn wrap_attack() -> Vec<u8> {
    let mut v = frame(false, 0x2, &[0xAB; 100], true);
    v.extend(long_header(true, 0x0, u64::MAX - 63));
    v.extend_from_slice(&[0; 16]);
    v
}

/// Connects a raw TCP peer to a reader in `role` over loopback, writes `bytes` and its end of
/// file, and returns everything the reader yields until it stops, with the largest
/// single allocation made meanwhile on this (the only runtime) thread.
async fn read_hostile(role: Role, bytes: &[u8]) -> (Vec<Result<Message, WireError>>, usize) {
    read_hostile_max(role, bytes, DEFAULT_MAX_MESSAGE).await
}

/// [`read_hostile`] with a reader accepting messages of at most `max` bytes.
async fn read_hostile_max(
    role: Role,
    bytes: &[u8],
    max: usize,
) -> (Vec<Result<Message, WireError>>, usize) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut peer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (ours, _) = l.accept().await.unwrap();
    let mut conn = WsConn::over_tcp(ours, role, &[]);
    conn.set_max_message(max);
    let (_writer, mut reader) = conn.split();
    common::alloc::reset_peak();
    peer.write_all(bytes).await.unwrap();
    // End of input: a well-formed stream then ends cleanly, so every error below comes from
    // the bytes themselves (the reader parses what it holds before it looks at EOF).
    peer.shutdown().await.unwrap();
    let mut got = Vec::new();
    loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(2), reader.next()).await;
        match next {
            Ok(Some(r)) => {
                let err = r.is_err();
                got.push(r);
                if err {
                    break;
                }
            }
            Ok(None) => break,
            Err(_) => panic!("the reader hangs: {got:?}"),
        }
    }
    let peak = common::alloc::peak();
    drop(peer);
    (got, peak)
}

fn frame_error(got: &[Result<Message, WireError>]) -> Option<&FrameError> {
    match got.last() {
        Some(Err(WireError::Frame(e))) => Some(e),
        _ => None,
    }
}

#[tokio::test]
async fn a_continuation_declaring_a_length_near_2_pow_64_is_refused_without_allocating() {
    let attack = wrap_attack();
    assert!(attack.len() <= 140, "{} bytes", attack.len());
    let (got, peak) = read_hostile(Role::Server, &attack).await;
    assert_eq!(frame_error(&got), Some(&FrameError::BadLength), "{got:?}");
    assert!(peak < ALLOC_BOUND, "allocated {peak} bytes at once");
}

#[tokio::test]
async fn a_length_just_under_2_pow_63_is_too_long_not_a_wrap() {
    let mut attack = frame(false, 0x2, &[0xAB; 100], true);
    attack.extend(long_header(true, 0x0, (1 << 63) - 1));
    let (got, peak) = read_hostile(Role::Server, &attack).await;
    assert!(
        matches!(frame_error(&got), Some(FrameError::TooLong { .. })),
        "{got:?}"
    );
    assert!(peak < ALLOC_BOUND, "allocated {peak} bytes at once");
}

#[tokio::test]
async fn a_single_frame_over_the_limit_is_refused_before_its_payload_is_buffered() {
    let attack = long_header(true, 0x2, DEFAULT_MAX_MESSAGE as u64 + 1);
    let (got, peak) = read_hostile(Role::Server, &attack).await;
    assert!(
        matches!(frame_error(&got), Some(FrameError::TooLong { .. })),
        "{got:?}"
    );
    assert!(peak < ALLOC_BOUND, "allocated {peak} bytes at once");
}

#[tokio::test]
async fn fragments_adding_up_past_the_limit_are_refused() {
    // 100 + 3000 bytes received, then a continuation of 1000 more: over a 4 KiB limit.
    let mut attack = frame(false, 0x2, &[1; 100], true);
    attack.extend(long_header(false, 0x0, 3000));
    attack.extend(vec![0u8; 3000]);
    // A ping between fragments stands alone: it does not count towards the message.
    attack.extend(frame(true, 0x9, &[7; 125], true));
    attack.extend(long_header(true, 0x0, 1000));
    let (got, peak) = read_hostile_max(Role::Server, &attack, 4096).await;
    assert!(matches!(got.first(), Some(Ok(Message::Ping(_)))), "{got:?}");
    assert_eq!(
        frame_error(&got),
        Some(&FrameError::TooLong {
            size: 4100,
            max: 4096
        }),
        "{got:?}"
    );
    assert!(peak < ALLOC_BOUND, "allocated {peak} bytes at once");
}

#[tokio::test]
async fn a_server_refuses_unmasked_client_frames() {
    let (got, _) = read_hostile(Role::Server, &frame(true, 0x2, b"hello", false)).await;
    assert_eq!(frame_error(&got), Some(&FrameError::Unmasked), "{got:?}");
    // A masked one is what clients send, and is read.
    let (got, _) = read_hostile(Role::Server, &frame(true, 0x2, b"hello", true)).await;
    assert_eq!(
        got.first().map(|r| r.as_ref().ok()),
        Some(Some(&Message::Binary(bytes::Bytes::from_static(b"hello"))))
    );
}

#[tokio::test]
async fn a_client_refuses_masked_server_frames() {
    let (got, _) = read_hostile(Role::Client, &frame(true, 0x2, b"hello", true)).await;
    assert_eq!(frame_error(&got), Some(&FrameError::Masked), "{got:?}");
    let (got, _) = read_hostile(Role::Client, &frame(true, 0x1, b"hello", false)).await;
    assert_eq!(
        got.first().map(|r| r.as_ref().ok()),
        Some(Some(&Message::Text("hello".into())))
    );
}

/// The wrap attack through TLS 1.3, as the deployed gateway receives it: the server end
/// switched to the record layer after rustls's handshake, the attacker on rustls's stream.
#[tokio::test]
async fn the_wrap_attack_over_tls_is_refused_without_allocating() {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    server.enable_secret_extraction = true;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();

    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        TlsAcceptor::from(Arc::new(server))
            .accept(tcp)
            .await
            .unwrap()
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut attacker = TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .unwrap();
    let (tcp, conn) = accept.await.unwrap().into_inner();
    let mut gateway = WsConn::over_tls13(
        tcp,
        conn.dangerous_extract_secrets().unwrap(),
        None,
        Role::Server,
        &[],
    )
    .unwrap();

    common::alloc::reset_peak();
    attacker.write_all(&wrap_attack()).await.unwrap();
    attacker.flush().await.unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), gateway.next())
        .await
        .expect("the reader refuses at once");
    let peak = common::alloc::peak();
    assert!(
        matches!(got, Some(Err(WireError::Frame(FrameError::BadLength)))),
        "{got:?}"
    );
    assert!(peak < ALLOC_BOUND, "allocated {peak} bytes at once");
}

#[tokio::test]
async fn fragments_out_of_order_are_refused_at_their_header() {
    // A continuation with nothing to continue, declaring 16 MiB it never sends: refused at
    // once, not after waiting for (and reserving room for) the payload.
    let attack = long_header(false, 0x0, DEFAULT_MAX_MESSAGE as u64);
    let (got, peak) = read_hostile(Role::Server, &attack).await;
    assert_eq!(frame_error(&got), Some(&FrameError::Fragments), "{got:?}");
    assert!(peak < ALLOC_BOUND, "allocated {peak} bytes at once");
    // A new message inside a fragmented one, likewise.
    let mut attack = frame(false, 0x2, b"first", true);
    attack.extend(long_header(true, 0x2, DEFAULT_MAX_MESSAGE as u64));
    let (got, peak) = read_hostile(Role::Server, &attack).await;
    assert_eq!(frame_error(&got), Some(&FrameError::Fragments), "{got:?}");
    assert!(peak < ALLOC_BOUND, "allocated {peak} bytes at once");
}
