//! Property-based fuzzing of the data-channel protocol on the stable toolchain (the libFuzzer
//! targets in `fuzz/` mirror these for nightly): frame decoding, every payload decoder, the
//! reliable channel fed hostile frames and capabilities, and both mux decoders. Properties: no
//! input panics, buffers stay within their bounds, and decode(encode(x)) == x.
//!
//! Each property runs a bounded number of cases (well under 30 s for the file in a debug
//! build); set `AIRLOCK_FUZZ_CASES=N` to run N cases of each instead.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::{Duration, Instant};

use airlock_proto::mux::{self, MuxDecoder, MuxError, MuxFrame, MuxKind};
use airlock_proto::*;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use uuid::Uuid;

#[global_allocator]
static ALLOC: common::alloc::Tracking = common::alloc::Tracking;

/// The most one allocation may ask for while these inputs (a few kilobytes each) are decoded:
/// a decoder sizing a buffer by a length it read, instead of by what arrived, breaks it.
const ALLOC_BOUND: usize = 1024 * 1024;

/// Fails the case if anything on this thread asked for more than [`ALLOC_BOUND`] at once
/// since the last call.
fn check_alloc() -> Result<(), TestCaseError> {
    let peak = common::alloc::peak();
    common::alloc::reset_peak();
    prop_assert!(peak < ALLOC_BOUND, "allocated {} bytes at once", peak);
    Ok(())
}

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

fn message_type() -> impl Strategy<Value = MessageType> {
    prop_oneof![
        Just(MessageType::InputStreamData),
        Just(MessageType::OutputStreamData),
        Just(MessageType::Acknowledge),
        Just(MessageType::ChannelClosed),
        Just(MessageType::StartPublication),
        Just(MessageType::PausePublication),
        Just(MessageType::AgentSessionState),
        Just(MessageType::AgentTaskComplete),
        "[a-z_][a-z_0-9]{0,30}".prop_map(|s| MessageType::parse(&s)),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    (
        message_type(),
        any::<u32>(),
        1u64..,
        prop_oneof![any::<i64>(), -3i64..70, Just(i64::MAX), Just(i64::MIN)],
        any::<u64>(),
        any::<u128>(),
        prop_oneof![0u32..14, any::<u32>()],
        prop::collection::vec(any::<u8>(), 0..600),
    )
        .prop_map(|(t, sv, cd, seq, flags, id, pt, payload)| Frame {
            message_type: t,
            schema_version: sv,
            created_date: cd,
            sequence_number: seq,
            flags,
            message_id: Uuid::from_u128(id),
            payload_type: PayloadType(pt),
            payload: Bytes::from(payload),
        })
}

/// A byte-level change to an encoded frame: overwrite, cut or extend.
#[derive(Debug, Clone)]
enum Mutation {
    Set(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Extend(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..40).prop_map(Mutation::Extend),
    ]
}

fn mutate(mut bytes: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        match m {
            Mutation::Set(i, b) if !bytes.is_empty() => {
                let at = i.index(bytes.len());
                bytes[at] = *b;
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len() + 1)),
            Mutation::Extend(more) => bytes.extend_from_slice(more),
            Mutation::Set(..) => {}
        }
    }
    bytes
}

/// Arbitrary JSON, a few levels deep, with the keys the payload types use mixed in.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "AcknowledgedMessageSequenceNumber",
            "acknowledgedMessageSequenceNumber",
            "MaxPayload",
            "Window",
            "Mux",
            "MuxWindow",
            "Digest",
            "Airlock",
            "RequestedClientActions",
            "ActionType",
            "ActionParameters",
            "SessionType",
            "Content",
            "SchemaVersion",
            "BytesToTarget",
            "StreamId",
            "cols",
            "rows",
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z]{0,12}",
    ];
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        ".{0,20}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::vec((key.clone(), inner), 0..8)
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Runs every payload decoder on `p`; a payload that decodes re-encodes to one that decodes
/// to the same value.
fn decode_every_payload(p: &[u8]) -> Result<(), TestCaseError> {
    macro_rules! each {
        ($($t:ty),* $(,)?) => {$(
            if let Ok(v) = <$t>::from_payload(p) {
                prop_assert_eq!(<$t>::from_payload(&v.to_payload()).ok(), Some(v));
            }
        )*};
    }
    each!(
        AcknowledgeContent,
        ChannelClosed,
        SizeData,
        HandshakeComplete,
        AgentSessionState,
        OpenDataChannelInput,
        MgsPayload,
        AgentTaskComplete,
        AgentTaskAcknowledge,
        AirlockCapabilities,
        PortConnectionRecord,
    );
    // Types holding arbitrary JSON (floats do not always survive a round trip): no panic.
    let _ = HandshakeRequest::from_payload(p);
    let _ = HandshakeResponse::from_payload(p);
    let _ = SessionTypeRequest::from_payload(p);
    let _ = RequestedClientAction::from_payload(p);
    let _ = ProcessedClientAction::from_payload(p);
    let _ = AgentTaskPayload::from_payload(p);
    if let Ok(f) = Flag::decode(p) {
        prop_assert_eq!(&f.encode()[..], p);
    }
    let _ = parse_exit_code(p);
    Ok(())
}

/// The hostile side of a reliable channel: frames it may send.
#[derive(Debug, Clone)]
enum Input {
    /// Raw bytes, usually not a frame.
    Raw(Vec<u8>),
    /// A well-formed frame (possibly an ack with a hostile payload).
    Frame(Frame),
    /// An ack of a sequence number, maybe one never sent.
    Ack(i64),
    /// Time passes.
    Wait(u64),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Input::Raw),
        4 => frame().prop_map(Input::Frame),
        2 => prop_oneof![-2i64..40, any::<i64>()].prop_map(Input::Ack),
        1 => (0u64..5000).prop_map(Input::Wait),
    ]
}

fn capabilities() -> impl Strategy<Value = AirlockCapabilities> {
    (
        any::<u32>(),
        prop_oneof![any::<u32>(), 0u32..2048],
        prop_oneof![any::<u32>(), 0u32..64],
        any::<bool>(),
        any::<bool>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(version, max_payload, window, digest, exit_code, mux, mux_window)| {
                AirlockCapabilities {
                    version,
                    max_payload,
                    window,
                    digest,
                    exit_code,
                    no_pty: false,
                    mux,
                    mux_window,
                }
            },
        )
}

fn mux_frame(kind: MuxKind) -> BoxedStrategy<MuxFrame> {
    let common = prop_oneof![
        any::<u32>().prop_map(|stream| MuxFrame::Open { stream }),
        any::<u32>().prop_map(|stream| MuxFrame::Fin { stream }),
        any::<u32>().prop_map(|stream| MuxFrame::Nop { stream }),
        (any::<u32>(), prop::collection::vec(any::<u8>(), 0..2000)).prop_map(|(stream, d)| {
            MuxFrame::Data {
                stream,
                data: Bytes::from(d),
            }
        }),
    ];
    match kind {
        MuxKind::Smux1 => common.boxed(),
        MuxKind::Airlock => prop_oneof![
            common,
            (any::<u32>(), any::<u32>())
                .prop_map(|(stream, credit)| MuxFrame::Window { stream, credit }),
            (any::<u32>(), ".{0,100}")
                .prop_map(|(stream, reason)| MuxFrame::Reset { stream, reason }),
        ]
        .boxed(),
    }
}

/// Feeds `wire` to a fresh decoder in pieces cut at `cuts`; checks the buffer bound throughout.
fn decode_in_pieces(
    kind: MuxKind,
    max_body: usize,
    wire: &Bytes,
    cuts: &[usize],
) -> Result<Vec<MuxFrame>, MuxError> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.push(wire.len());
    points.sort_unstable();
    let mut dec = MuxDecoder::new(kind, max_body);
    let mut out = Vec::new();
    let mut at = 0;
    for p in points {
        dec.decode(wire.slice(at..p), &mut out)?;
        at = p;
        // Held back: at most one frame short of its end.
        assert!(dec.buffered() < kind.header_len() + max_body.max(mux::MAX_RESET_REASON));
    }
    Ok(out)
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn frame_decode_never_panics_and_is_stable(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
        max in prop_oneof![Just(DEFAULT_MAX_FRAME_LEN), 0usize..600],
        verify in any::<bool>(),
    ) {
        common::alloc::reset_peak();
        let opts = DecodeOptions { max_frame_len: max, verify_digest: verify };
        let peeked = peek_message_type(&bytes);
        if let Ok(f) = decode(Bytes::from(bytes), &opts) {
            prop_assert_eq!(peeked.as_ref(), Some(&f.message_type));
            let again = decode(f.encode(true), &DecodeOptions::default()).unwrap();
            prop_assert_eq!(again, f);
        }
        check_alloc()?;
    }

    #[test]
    fn mutated_frames_decode_or_fail_cleanly(
        f in frame(),
        digest in any::<bool>(),
        muts in prop::collection::vec(mutation(), 1..4),
    ) {
        common::alloc::reset_peak();
        let bytes = mutate(f.encode(digest).to_vec(), &muts);
        for verify in [true, false] {
            let opts = DecodeOptions { verify_digest: verify, ..DecodeOptions::default() };
            if let Ok(g) = decode(Bytes::from(bytes.clone()), &opts) {
                prop_assert_eq!(decode(g.encode(true), &DecodeOptions::default()).ok(), Some(g));
            }
        }
        check_alloc()?;
    }

    #[test]
    fn frames_round_trip(f in frame(), digest in any::<bool>()) {
        let opts = DecodeOptions { verify_digest: digest, ..DecodeOptions::default() };
        prop_assert_eq!(decode(f.encode(digest), &opts).ok(), Some(f.clone()));
        let parts = f.encode_parts(digest);
        prop_assert_eq!(parts.len(), f.encoded_len());
        prop_assert_eq!(parts.into_bytes(), f.encode(digest));
    }

    #[test]
    fn payload_decoders_survive_arbitrary_bytes(p in prop::collection::vec(any::<u8>(), 0..300)) {
        common::alloc::reset_peak();
        decode_every_payload(&p)?;
        check_alloc()?;
    }

    #[test]
    fn payload_decoders_survive_arbitrary_json(v in json()) {
        common::alloc::reset_peak();
        decode_every_payload(&serde_json::to_vec(&v).unwrap())?;
        check_alloc()?;
    }

    #[test]
    fn capabilities_and_exit_codes_round_trip(c in capabilities(), code in any::<i32>()) {
        prop_assert_eq!(AirlockCapabilities::from_payload(&c.to_payload()).ok(), Some(c));
        prop_assert_eq!(parse_exit_code(&exit_code_payload(code)), Some(code));
    }

    #[test]
    fn mux_decoders_survive_arbitrary_bytes(
        airlock in any::<bool>(),
        max_body in prop_oneof![0usize..64, Just(1 << 20), Just(usize::MAX)],
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..12),
    ) {
        common::alloc::reset_peak();
        let kind = if airlock { MuxKind::Airlock } else { MuxKind::Smux1 };
        let mut dec = MuxDecoder::new(kind, max_body);
        let mut out = Vec::new();
        for c in chunks {
            if dec.decode(Bytes::from(c), &mut out).is_err() {
                break;
            }
            prop_assert!(dec.buffered() < kind.header_len() + max_body.min(kind.max_body()).max(mux::MAX_RESET_REASON));
        }
        check_alloc()?;
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn smux_frames_round_trip_through_any_cuts(
        frames in prop::collection::vec(mux_frame(MuxKind::Smux1), 0..12),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        let mut wire = BytesMut::new();
        for f in &frames {
            mux::encode_into(MuxKind::Smux1, f, &mut wire).unwrap();
        }
        let got = decode_in_pieces(MuxKind::Smux1, mux::SMUX_MAX_DATA, &wire.freeze(), &cuts).unwrap();
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn airlock_mux_frames_round_trip_through_any_cuts(
        frames in prop::collection::vec(mux_frame(MuxKind::Airlock), 0..12),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        let mut wire = BytesMut::new();
        for f in &frames {
            mux::encode_into(MuxKind::Airlock, f, &mut wire).unwrap();
        }
        let got = decode_in_pieces(MuxKind::Airlock, 1 << 20, &wire.freeze(), &cuts).unwrap();
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn mutated_mux_streams_fail_cleanly(
        airlock in any::<bool>(),
        frames in prop::collection::vec(mux_frame(MuxKind::Airlock), 1..8),
        muts in prop::collection::vec(mutation(), 1..4),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        max_body in prop_oneof![0usize..3000, Just(1 << 20)],
    ) {
        common::alloc::reset_peak();
        let kind = if airlock { MuxKind::Airlock } else { MuxKind::Smux1 };
        let mut wire = BytesMut::new();
        for f in &frames {
            let _ = mux::encode_into(kind, f, &mut wire);
        }
        let bytes = Bytes::from(mutate(wire.to_vec(), &muts));
        let _ = decode_in_pieces(kind, max_body, &bytes, &cuts);
        check_alloc()?;
    }

    #[test]
    fn the_channel_survives_hostile_peers(
        agent in any::<bool>(),
        digest in any::<bool>(),
        incoming_capacity in 1usize..40,
        caps in prop::option::of((capabilities(), capabilities())),
        inputs in prop::collection::vec(input(), 0..80),
    ) {
        common::alloc::reset_peak();
        let role = if agent { Role::Agent } else { Role::Client };
        let mut cfg = ChannelConfig::new(role);
        cfg.incoming_capacity = incoming_capacity;
        cfg.digest = digest;
        let mut ch = ReliableChannel::new(cfg);
        if let Some((ours, theirs)) = caps {
            ch.apply_capabilities(&ours.negotiate(&theirs));
        }
        let mut now = Instant::now();
        let mut delivered = 0usize;
        for (i, inp) in inputs.into_iter().enumerate() {
            match inp {
                Input::Raw(b) => {
                    let _ = ch.handle_bytes(Bytes::from(b), now);
                }
                Input::Frame(f) => {
                    let digest = ch.config().digest;
                    let _ = ch.handle_bytes(f.encode(digest), now);
                    ch.handle_frame(f, now);
                }
                Input::Ack(seq) => {
                    let ack = AcknowledgeContent {
                        acknowledged_message_sequence_number: seq,
                        ..AcknowledgeContent::default()
                    };
                    let _ = ch.handle_bytes(ack.to_frame().encode(true), now);
                }
                Input::Wait(ms) => now += Duration::from_millis(ms),
            }
            let mut data = Bytes::from(vec![b'x'; 3000]);
            let _ = ch.send_stream(PayloadType::OUTPUT, &mut data, now);
            if ch.poll_timeout().is_some_and(|t| t <= now) {
                ch.handle_timeout(now);
            }
            if i % 3 == 0 {
                while ch.poll_transmit(now).is_some() {}
                while let Some(e) = ch.poll_event() {
                    if matches!(e, Event::Data { .. }) {
                        delivered += 1;
                    }
                }
            }
            prop_assert!(ch.outstanding() <= ch.config().outgoing_capacity.max(1));
        }
        let mut events = 0;
        while ch.poll_event().is_some() {
            events += 1;
        }
        prop_assert!(events <= incoming_capacity + 1024 + 1);
        let _ = delivered;
        check_alloc()?;
    }
}
