//! Property tests of the stream multiplexing codecs: any sequence of frames, encoded and cut
//! into arbitrary pieces (as data-channel payloads cut them), decodes to the same frames, for
//! smux v1 and for Airlock's mux; and the smux bytes of the real plugin's capture decode as
//! the capture's README says.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use airlock_proto::mux::{self, MuxDecoder, MuxFrame, MuxKind};
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

fn arb_frame(kind: MuxKind) -> BoxedStrategy<MuxFrame> {
    let common = prop_oneof![
        any::<u32>().prop_map(|stream| MuxFrame::Open { stream }),
        any::<u32>().prop_map(|stream| MuxFrame::Fin { stream }),
        any::<u32>().prop_map(|stream| MuxFrame::Nop { stream }),
        (
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..3000)
        )
            .prop_map(|(stream, d)| MuxFrame::Data {
                stream,
                data: Bytes::from(d)
            }),
    ];
    match kind {
        MuxKind::Smux1 => common.boxed(),
        MuxKind::Airlock => prop_oneof![
            common,
            (any::<u32>(), any::<u32>())
                .prop_map(|(stream, credit)| MuxFrame::Window { stream, credit }),
            (any::<u32>(), "[a-z :.0-9é]{0,200}")
                .prop_map(|(stream, reason)| MuxFrame::Reset { stream, reason }),
        ]
        .boxed(),
    }
}

fn roundtrip(kind: MuxKind, frames: &[MuxFrame], cuts: &[usize]) {
    let mut wire = BytesMut::new();
    for f in frames {
        mux::encode_into(kind, f, &mut wire).unwrap();
    }
    let wire = wire.freeze();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.sort_unstable();
    let mut dec = MuxDecoder::new(kind, 1 << 20);
    let mut out = Vec::new();
    let mut at = 0;
    for p in points.into_iter().chain(std::iter::once(wire.len())) {
        dec.decode(wire.slice(at..p), &mut out).unwrap();
        at = p;
    }
    assert_eq!(dec.buffered(), 0);
    assert_eq!(out, frames);
}

proptest! {
    #[test]
    fn smux_frames_survive_any_split(
        frames in proptest::collection::vec(arb_frame(MuxKind::Smux1), 0..20),
        cuts in proptest::collection::vec(any::<usize>(), 0..30),
    ) {
        roundtrip(MuxKind::Smux1, &frames, &cuts);
    }

    #[test]
    fn airlock_frames_survive_any_split(
        frames in proptest::collection::vec(arb_frame(MuxKind::Airlock), 0..20),
        cuts in proptest::collection::vec(any::<usize>(), 0..30),
    ) {
        roundtrip(MuxKind::Airlock, &frames, &cuts);
    }

    #[test]
    fn garbage_never_panics(
        kind in prop_oneof![Just(MuxKind::Smux1), Just(MuxKind::Airlock)],
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..20),
    ) {
        let mut dec = MuxDecoder::new(kind, 4096);
        let mut out = Vec::new();
        for c in chunks {
            if dec.decode(Bytes::from(c), &mut out).is_err() {
                break;
            }
        }
    }

    #[test]
    fn data_header_written_in_place_decodes(
        stream in any::<u32>(),
        data in proptest::collection::vec(any::<u8>(), 0..5000),
        kind in prop_oneof![Just(MuxKind::Smux1), Just(MuxKind::Airlock)],
    ) {
        let hl = kind.header_len();
        let mut buf = vec![0u8; hl];
        buf.extend_from_slice(&data);
        mux::write_data_header(kind, stream, &mut buf).unwrap();
        let expected = mux::encode(kind, &MuxFrame::Data { stream, data: Bytes::from(data) }).unwrap();
        prop_assert_eq!(&buf[..], &expected[..]);
    }
}

#[test]
fn capture_server_reply_decodes_as_psh_then_fin() {
    // port-mux.jsonl, server->plugin output seq 2: PSH(3, response) and FIN(3) in one payload.
    let mut wire = vec![1u8, 2, 0x28, 0, 3, 0, 0, 0];
    wire.extend_from_slice(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
    wire.extend_from_slice(&[1, 1, 0, 0, 3, 0, 0, 0]);
    let mut dec = MuxDecoder::new(MuxKind::Smux1, 65535);
    let mut out = Vec::new();
    dec.decode(Bytes::from(wire), &mut out).unwrap();
    assert_eq!(
        out,
        vec![
            MuxFrame::Data {
                stream: 3,
                data: Bytes::from_static(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
            },
            MuxFrame::Fin { stream: 3 }
        ]
    );
}

#[test]
fn long_reset_reason_is_truncated_on_a_char_boundary() {
    let reason = "é".repeat(1000);
    let wire = mux::encode(
        MuxKind::Airlock,
        &MuxFrame::Reset {
            stream: 1,
            reason: reason.clone(),
        },
    )
    .unwrap();
    assert!(wire.len() <= mux::AIRLOCK_HEADER_LEN + mux::MAX_RESET_REASON);
    let mut out = Vec::new();
    MuxDecoder::new(MuxKind::Airlock, 16)
        .decode(wire, &mut out)
        .unwrap();
    match &out[..] {
        [MuxFrame::Reset { reason: r, .. }] => assert!(reason.starts_with(r.as_str())),
        other => panic!("{other:?}"),
    }
}
