//! Feeds arbitrary bytes to both stream-multiplexing decoders, cut into pieces as data-channel
//! payloads cut them; the buffered partial frame stays within its bound, and whatever decodes
//! re-encodes to bytes that decode to the same frames (after one normalising pass). Mirrors
//! the mux properties of `crates/proto/tests/fuzz.rs`. Run with `cargo fuzz run mux`
//! from fuzz/ (nightly toolchain).
#![no_main]

use airlock_proto::mux::{self, MuxDecoder, MuxKind};
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let kind = if sel & 1 == 0 {
        MuxKind::Smux1
    } else {
        MuxKind::Airlock
    };
    let max_body = match (sel >> 1) & 3 {
        0 => 16,
        1 => 1024,
        2 => mux::SMUX_MAX_DATA,
        _ => 1 << 20,
    };
    let piece = usize::from(sel >> 3).max(1);
    let input = Bytes::copy_from_slice(rest);
    let mut dec = MuxDecoder::new(kind, max_body);
    let mut frames = Vec::new();
    let mut at = 0;
    while at < input.len() {
        let end = (at + piece).min(input.len());
        if dec.decode(input.slice(at..end), &mut frames).is_err() {
            break;
        }
        assert!(dec.buffered() < kind.header_len() + max_body.max(mux::MAX_RESET_REASON));
        at = end;
    }
    // Re-encoding is stable after one pass (a RESET reason that was not UTF-8 is replaced
    // and may be cut to the limit once; after that nothing changes).
    let once = reencode(kind, &frames);
    assert_eq!(reencode(kind, &once), once);
});

fn reencode(kind: MuxKind, frames: &[mux::MuxFrame]) -> Vec<mux::MuxFrame> {
    let mut wire = BytesMut::new();
    for f in frames {
        mux::encode_into(kind, f, &mut wire).expect("a decoded frame re-encodes");
    }
    let mut dec = MuxDecoder::new(kind, 1 << 20);
    let mut out = Vec::new();
    dec.decode(wire.freeze(), &mut out)
        .expect("re-encoded frames decode");
    out
}
