//! Property-based fuzzing of the data-channel transport on the stable toolchain (the libFuzzer
//! targets in `fuzz/` mirror these for nightly): the WebSocket header parser, the TLS record
//! layer under a real key, and the connection reader fed arbitrary bytes in both roles. The
//! properties: no input panics, none makes the reader allocate past its bound, and what the
//! encoders produce decodes to what went in.
//!
//! Each property runs a bounded number of cases (well under 30 s for the file in a debug
//! build); set `AIRLOCK_FUZZ_CASES=N` to run N cases of each instead.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use airlock_wire::record::{open_records, RecordError, RecordKey, HEADER_LEN, MAX_PLAINTEXT};
use airlock_wire::ws::{apply_mask, opcode, FrameError, Header};
use airlock_wire::{Message, Role, WireError, WsConn};
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::ConnectionTrafficSecrets;
use tokio::io::AsyncWriteExt;

#[global_allocator]
static ALLOC: common::alloc::Tracking = common::alloc::Tracking;

/// The message limit the fuzzed readers run with.
const MAX_MESSAGE: usize = 64 * 1024;
/// The most one allocation may ask for while a reader limited to [`MAX_MESSAGE`] reads hostile
/// bytes: the message, the reader's 256 KiB read room, and the growth of a buffer.
const ALLOC_BOUND: usize = 2 * 1024 * 1024;

/// `default` cases, or `AIRLOCK_FUZZ_CASES` when set.
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("AIRLOCK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn key_pair(cipher: u8) -> (RecordKey, RecordKey) {
    // (AES-128 keys cannot be built outside rustls; the 256-bit suites cover the code.)
    let secrets = || match cipher % 2 {
        0 => ConnectionTrafficSecrets::Aes256Gcm {
            key: AeadKey::from([7u8; 32]),
            iv: Iv::new([9u8; 12]),
        },
        _ => ConnectionTrafficSecrets::Chacha20Poly1305 {
            key: AeadKey::from([7u8; 32]),
            iv: Iv::new([9u8; 12]),
        },
    };
    (
        RecordKey::new(1, &secrets()).unwrap(),
        RecordKey::new(1, &secrets()).unwrap(),
    )
}

/// Seals each chunk as one record.
fn seal_all(tx: &mut RecordKey, chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut wire = Vec::new();
    for c in chunks {
        let start = wire.len();
        wire.extend_from_slice(&[0; HEADER_LEN]);
        wire.extend_from_slice(c);
        tx.seal(&mut wire, start).unwrap();
    }
    wire
}

/// Feeds `wire` to `open_records` in pieces cut at `cuts`, as a socket would deliver it.
fn open_in_pieces(
    rx: &mut RecordKey,
    wire: &[u8],
    cuts: &[usize],
) -> Result<(Vec<u8>, bool), RecordError> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    cuts.push(wire.len());
    cuts.sort_unstable();
    let mut buf = BytesMut::new();
    let mut plain = 0;
    let mut closed = false;
    let mut at = 0;
    for cut in cuts {
        buf.extend_from_slice(&wire[at..cut]);
        at = cut;
        let o = open_records(rx, &mut buf, &mut plain)?;
        assert!(plain <= buf.len());
        closed |= o.closed;
        if closed {
            break;
        }
    }
    buf.truncate(plain);
    Ok((buf.to_vec(), closed))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs a reader in `role` (limited to [`MAX_MESSAGE`]) over an in-memory stream carrying
/// `bytes` then EOF; returns what it yielded and the largest allocation meanwhile.
fn read_all(role: Role, bytes: Vec<u8>) -> (Vec<Result<Message, WireError>>, usize) {
    let rt = runtime();
    rt.block_on(async move {
        let (mut peer, ours) = tokio::io::duplex(16 * 1024);
        let mut conn = WsConn::over_stream(ours, role, &[]);
        conn.set_max_message(MAX_MESSAGE);
        let (_writer, mut reader) = conn.split();
        common::alloc::reset_peak();
        let feeder = tokio::spawn(async move {
            let _ = peer.write_all(&bytes).await;
            let _ = peer.shutdown().await;
        });
        let mut got = Vec::new();
        let read = async {
            while let Some(r) = reader.next().await {
                got.push(r);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the reader ends at EOF");
        let peak = common::alloc::peak();
        feeder.abort();
        (got, peak)
    })
}

/// A frame as a peer might write it: any opcode nibble, any mask choice, any reserved bits.
#[derive(Debug, Clone)]
struct RawFrame {
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload: Vec<u8>,
    /// Declare this length instead of the payload's (a lie), if set.
    declared: Option<u64>,
}

impl RawFrame {
    fn encode(&self, out: &mut Vec<u8>) {
        let len = self.declared.unwrap_or(self.payload.len() as u64);
        out.push(u8::from(self.fin) << 7 | (self.rsv & 7) << 4 | (self.opcode & 0xF));
        let m = if self.mask.is_some() { 0x80 } else { 0 };
        if len < 126 {
            out.push(m | len as u8);
        } else if len <= 0xFFFF {
            out.push(m | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(m | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        let mut payload = self.payload.clone();
        if let Some(k) = self.mask {
            out.extend_from_slice(&k);
            apply_mask(&mut payload, k, 0);
        }
        out.extend_from_slice(&payload);
    }
}

fn raw_frame() -> impl Strategy<Value = RawFrame> {
    (
        any::<bool>(),
        prop_oneof![8 => Just(0u8), 1 => 0u8..8],
        prop_oneof![
            4 => prop::sample::select(vec![0u8, 1, 2, 8, 9, 10]),
            1 => 0u8..16
        ],
        prop::option::weighted(0.7, any::<[u8; 4]>()),
        prop::collection::vec(any::<u8>(), 0..300),
        prop::option::weighted(
            0.15,
            prop_oneof![
                any::<u64>(),
                (1u64 << 63)..=u64::MAX,
                Just((MAX_MESSAGE + 1) as u64),
                0u64..70_000,
            ],
        ),
    )
        .prop_map(|(fin, rsv, opcode, mask, payload, declared)| RawFrame {
            fin,
            rsv,
            opcode,
            mask,
            payload,
            declared,
        })
}

/// A message a writer may send, and what the reader must yield for it.
fn message() -> impl Strategy<Value = (Message, Message)> {
    let bin = prop::collection::vec(any::<u8>(), 0..3000).prop_map(Bytes::from);
    prop_oneof![
        ".{0,200}".prop_map(|s: String| (Message::Text(s.clone()), Message::Text(s))),
        bin.clone()
            .prop_map(|b| (Message::Binary(b.clone()), Message::Binary(b))),
        (bin.clone(), bin).prop_map(|(a, b)| {
            let mut whole = a.to_vec();
            whole.extend_from_slice(&b);
            (
                Message::BinaryParts(a, b),
                Message::Binary(Bytes::from(whole)),
            )
        }),
        prop::collection::vec(any::<u8>(), 0..=125)
            .prop_map(|p| (Message::Ping(p.clone().into()), Message::Ping(p.into()))),
        prop::collection::vec(any::<u8>(), 0..=125)
            .prop_map(|p| (Message::Pong(p.clone().into()), Message::Pong(p.into()))),
    ]
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn header_parse_is_total_and_consistent(bytes in prop::collection::vec(any::<u8>(), 0..24)) {
        match Header::parse(&bytes) {
            Ok(Some(h)) => {
                prop_assert!(h.header_len <= bytes.len());
                prop_assert!(h.len < 1 << 63, "RFC 6455 §5.2: the top bit is 0");
                prop_assert_eq!(h.mask.is_some(), bytes[1] & 0x80 != 0);
                if h.opcode >= 8 {
                    prop_assert!(h.fin && h.len <= 125);
                }
                // The header alone parses the same; one byte fewer asks for more.
                prop_assert_eq!(Header::parse(&bytes[..h.header_len]), Ok(Some(h)));
                prop_assert_eq!(Header::parse(&bytes[..h.header_len - 1]), Ok(None));
            }
            Ok(None) => prop_assert!(bytes.len() < 14),
            Err(FrameError::BadLength) => prop_assert!(bytes.len() >= 3 && bytes[2] & 0x80 != 0),
            Err(_) => {}
        }
    }

    #[test]
    fn headers_round_trip(
        op in prop::sample::select(vec![opcode::CONTINUATION, opcode::TEXT, opcode::BINARY,
                                         opcode::CLOSE, opcode::PING, opcode::PONG]),
        len in prop_oneof![0usize..200, 0usize..70_000, 0usize..(1 << 40)],
        mask in any::<Option<[u8; 4]>>(),
    ) {
        let len = if op >= 8 { len % 126 } else { len };
        let mut out = [0u8; 14];
        let n = Header::encode(op, len, mask, &mut out);
        let h = Header::parse(&out[..n]).unwrap().unwrap();
        prop_assert_eq!((h.fin, h.opcode, h.mask, h.len, h.header_len), (true, op, mask, len as u64, n));
    }

}

proptest! {
    // Sealing and opening 16 KiB records costs milliseconds in a debug build.
    #![proptest_config(config(256))]

    #[test]
    fn open_records_recovers_what_was_sealed(
        cipher in any::<u8>(),
        chunks in prop::collection::vec(
            prop_oneof![
                4 => prop::collection::vec(any::<u8>(), 0..600),
                1 => prop::collection::vec(any::<u8>(), MAX_PLAINTEXT - 2..=MAX_PLAINTEXT),
            ],
            0..6,
        ),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        close in any::<bool>(),
    ) {
        let (mut tx, mut rx) = key_pair(cipher);
        let mut wire = seal_all(&mut tx, &chunks);
        if close {
            tx.seal_close_notify(&mut wire).unwrap();
        }
        let (plain, closed) = open_in_pieces(&mut rx, &wire, &cuts).unwrap();
        prop_assert_eq!(plain, chunks.concat());
        prop_assert_eq!(closed, close);
    }

    #[test]
    fn tampered_records_are_refused(
        cipher in any::<u8>(),
        chunk in prop::collection::vec(any::<u8>(), 0..400),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let (mut tx, mut rx) = key_pair(cipher);
        let mut wire = seal_all(&mut tx, &[chunk]);
        let i = at.index(wire.len());
        wire[i] ^= 1 << bit;
        let mut buf = BytesMut::from(&wire[..]);
        let mut plain = 0;
        match open_records(&mut rx, &mut buf, &mut plain) {
            // A longer declared length waits for more bytes; anything else is refused.
            Ok(o) => prop_assert!((3..HEADER_LEN).contains(&i) && plain == 0 && !o.closed),
            Err(e) => prop_assert!(matches!(e, RecordError::Decrypt | RecordError::Malformed)),
        }
    }

    #[test]
    fn garbage_records_are_errors_not_panics(
        cipher in any::<u8>(),
        head in prop::option::of((prop_oneof![Just(0x17u8), any::<u8>()], 0u16..20_000)),
        bytes in prop::collection::vec(any::<u8>(), 0..2000),
        cuts in prop::collection::vec(any::<usize>(), 0..4),
    ) {
        let (_, mut rx) = key_pair(cipher);
        let mut wire = Vec::new();
        if let Some((ty, len)) = head {
            wire.extend_from_slice(&[ty, 3, 3]);
            wire.extend_from_slice(&len.to_be_bytes());
        }
        wire.extend_from_slice(&bytes);
        let _ = open_in_pieces(&mut rx, &wire, &cuts);
    }
}

proptest! {
    #![proptest_config(config(192))]

    #[test]
    fn a_reader_survives_arbitrary_bytes(
        server in any::<bool>(),
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
    ) {
        let role = if server { Role::Server } else { Role::Client };
        let (got, peak) = read_all(role, bytes);
        prop_assert!(peak < ALLOC_BOUND, "allocated {} bytes at once", peak);
        // Whatever came, at most the last item is an error.
        let errors = got.iter().filter(|r| r.is_err()).count();
        prop_assert!(errors <= 1);
        prop_assert!(errors == 0 || got.last().is_some_and(|r| r.is_err()));
    }

    #[test]
    fn a_reader_survives_hostile_frames(
        server in any::<bool>(),
        frames in prop::collection::vec(raw_frame(), 0..12),
        tail in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let role = if server { Role::Server } else { Role::Client };
        let mut bytes = Vec::new();
        for f in &frames {
            f.encode(&mut bytes);
        }
        bytes.extend_from_slice(&tail);
        let (got, peak) = read_all(role, bytes);
        prop_assert!(peak < ALLOC_BOUND, "allocated {} bytes at once", peak);
        for m in got.iter().filter_map(|r| r.as_ref().ok()) {
            let size = match m {
                Message::Text(t) => t.len(),
                Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
                _ => 0,
            };
            prop_assert!(size <= MAX_MESSAGE);
        }
    }

    #[test]
    fn what_a_writer_sends_the_other_end_reads(
        client_writes in any::<bool>(),
        messages in prop::collection::vec(message(), 0..8),
    ) {
        let (wrole, rrole) = if client_writes {
            (Role::Client, Role::Server)
        } else {
            (Role::Server, Role::Client)
        };
        let rt = runtime();
        let sent: Vec<Message> = messages.iter().map(|(m, _)| m.clone()).collect();
        let got = rt.block_on(async move {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let (mut writer, _) = WsConn::over_stream(a, wrole, &[]).split();
            let (_, mut reader) = WsConn::over_stream(b, rrole, &[]).split();
            let send = tokio::spawn(async move {
                for m in sent {
                    writer.feed(m).await.unwrap();
                }
                writer.close(None).await.unwrap();
            });
            let mut got = Vec::new();
            while let Some(m) = reader.next().await {
                got.push(m.unwrap());
            }
            send.await.unwrap();
            got
        });
        let mut want: Vec<Message> = messages.into_iter().map(|(_, m)| m).collect();
        want.push(Message::Close(None));
        prop_assert_eq!(got, want);
    }
}
