//! Feeds arbitrary bytes to the data-channel transport: the first byte picks the layer, the
//! rest is the input. Mirrors `crates/wire/tests/fuzz.rs` (run there on stable by
//! `scripts/test`). Run with `cargo fuzz run wire` from fuzz/ (nightly toolchain).
//!
//! - 0: the WebSocket header parser (a parsed header is consistent with its bytes);
//! - 1: the TLS record layer's `open_records` under a real key, fed in two pieces;
//! - 2, 3: a `WsReader` in the server or client role reading the bytes then EOF, with a 64 KiB
//!   message limit (it must end, and yield only messages within the limit).
#![no_main]

use airlock_wire::record::{open_records, RecordKey};
use airlock_wire::ws::Header;
use airlock_wire::{Message, Role, WsConn};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::ConnectionTrafficSecrets;
use tokio::io::AsyncWriteExt;

const MAX_MESSAGE: usize = 64 * 1024;

fn header(data: &[u8]) {
    if let Ok(Some(h)) = Header::parse(data) {
        assert!(h.header_len <= data.len());
        assert!(h.len < 1 << 63);
        assert_eq!(Header::parse(&data[..h.header_len]), Ok(Some(h)));
    }
}

fn records(data: &[u8]) {
    let secrets = ConnectionTrafficSecrets::Chacha20Poly1305 {
        key: AeadKey::from([7u8; 32]),
        iv: Iv::new([9u8; 12]),
    };
    let mut key = RecordKey::new(0, &secrets).expect("a ChaCha20 key");
    let cut = data.first().map_or(0, |&c| usize::from(c)).min(data.len());
    let mut buf = BytesMut::new();
    let mut plain = 0;
    for piece in [&data[..cut], &data[cut..]] {
        buf.extend_from_slice(piece);
        match open_records(&mut key, &mut buf, &mut plain) {
            Ok(_) => assert!(plain <= buf.len()),
            Err(_) => return,
        }
    }
}

fn reader(role: Role, data: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let data = data.to_vec();
    rt.block_on(async move {
        let (mut peer, ours) = tokio::io::duplex(16 * 1024);
        let mut conn = WsConn::over_stream(ours, role, &[]);
        conn.set_max_message(MAX_MESSAGE);
        let feeder = tokio::spawn(async move {
            let _ = peer.write_all(&data).await;
            let _ = peer.shutdown().await;
        });
        while let Some(m) = conn.next().await {
            match m {
                Ok(Message::Binary(b)) => assert!(b.len() <= MAX_MESSAGE),
                Ok(Message::Text(t)) => assert!(t.len() <= MAX_MESSAGE),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        feeder.abort();
    });
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => header(rest),
        1 => records(rest),
        2 => reader(Role::Server, rest),
        _ => reader(Role::Client, rest),
    }
});
