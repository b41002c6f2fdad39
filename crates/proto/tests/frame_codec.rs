//! Frame codec: the protocol.md §3 test vector, exact decode errors, and a
//! property test of encode/decode round-trips.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use airlock_proto::*;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use uuid::Uuid;

const VECTOR_HEX: &str = "
00 00 00 74 69 6e 70 75 74 5f 73 74 72 65 61 6d
5f 64 61 74 61 20 20 20 20 20 20 20 20 20 20 20
20 20 20 20 00 00 00 01 00 00 01 5e 0b aa 78 84
00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 00
a5 08 b5 f0 73 f3 1b 16 dd 01 e5 6b ff 48 48 3e
2c f2 4d ba 5f b0 a3 0e 26 e8 3b 2a c5 b9 e2 9e
1b 16 1e 5c 1f a7 42 5e 73 04 33 62 93 8b 98 24
00 00 00 01 00 00 00 05 68 65 6c 6c 6f";

fn unhex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

fn vector_frame() -> Frame {
    Frame {
        message_type: MessageType::InputStreamData,
        schema_version: 1,
        created_date: 1503434274948,
        sequence_number: 2,
        flags: 0,
        message_id: Uuid::parse_str("dd01e56b-ff48-483e-a508-b5f073f31b16").unwrap(),
        payload_type: PayloadType::OUTPUT,
        payload: Bytes::from_static(b"hello"),
    }
}

#[test]
fn protocol_test_vector_encodes_byte_for_byte() {
    let expected = unhex(VECTOR_HEX);
    assert_eq!(expected.len(), 125);
    let frame = vector_frame();
    assert_eq!(frame.encoded_len(), 125);
    assert_eq!(&frame.encode(true)[..], &expected[..]);
    let mut out = BytesMut::from(&b"xyz"[..]);
    frame.encode_into(&mut out, true);
    assert_eq!(&out[3..], &expected[..]);
}

#[test]
fn protocol_test_vector_decodes() {
    let frame = decode(Bytes::from(unhex(VECTOR_HEX)), &DecodeOptions::default()).unwrap();
    assert_eq!(frame, vector_frame());
    assert_eq!(
        peek_message_type(&unhex(VECTOR_HEX)),
        Some(MessageType::InputStreamData)
    );
}

#[test]
fn decode_is_zero_copy() {
    let buf = vector_frame().encode(true);
    let frame = decode(buf.clone(), &DecodeOptions::default()).unwrap();
    assert_eq!(frame.payload.as_ptr(), buf[120..].as_ptr());
}

#[test]
fn without_digest_writes_zeros() {
    let enc = vector_frame().encode(false);
    assert_eq!(&enc[80..112], &[0u8; 32]);
    let lax = DecodeOptions {
        verify_digest: false,
        ..DecodeOptions::default()
    };
    assert_eq!(decode(enc.clone(), &lax).unwrap(), vector_frame());
    assert!(matches!(
        decode(enc, &DecodeOptions::default()),
        Err(FrameError::DigestMismatch { expected, .. }) if expected == [0u8; 32]
    ));
}

#[test]
fn error_too_short() {
    let enc = vector_frame().encode(true);
    assert_eq!(
        decode(enc.slice(..119), &DecodeOptions::default()),
        Err(FrameError::TooShort { len: 119 })
    );
    assert_eq!(
        decode(Bytes::new(), &DecodeOptions::default()),
        Err(FrameError::TooShort { len: 0 })
    );
    assert_eq!(peek_message_type(&enc[..20]), None);
}

#[test]
fn error_too_long() {
    let opts = DecodeOptions {
        max_frame_len: 124,
        verify_digest: true,
    };
    assert_eq!(
        decode(vector_frame().encode(true), &opts),
        Err(FrameError::TooLong { len: 125, max: 124 })
    );
}

#[test]
fn error_bad_header_length() {
    for hl in [0u32, 115, 122, u32::MAX] {
        let mut raw = vector_frame().encode(true).to_vec();
        raw[..4].copy_from_slice(&hl.to_be_bytes());
        assert_eq!(
            decode(Bytes::from(raw), &DecodeOptions::default()),
            Err(FrameError::BadHeaderLength(hl)),
            "HeaderLength {hl}"
        );
    }
}

#[test]
fn larger_header_length_moves_the_payload_like_the_plugin() {
    // HeaderLength 117: the payload starts one byte later ("ello"), as in Go.
    let mut frame = vector_frame();
    frame.payload = Bytes::from_static(b"ello");
    let mut raw = frame.encode(true).to_vec();
    raw[..4].copy_from_slice(&117u32.to_be_bytes());
    raw.insert(120, b'h');
    assert_eq!(
        decode(Bytes::from(raw), &DecodeOptions::default()).unwrap(),
        frame
    );
}

#[test]
fn error_digest_mismatch() {
    let mut raw = vector_frame().encode(true).to_vec();
    let last = raw.len() - 1;
    raw[last] = b'O';
    let expected: [u8; 32] = Sha256::digest(b"hello").into();
    let actual: [u8; 32] = Sha256::digest(b"hellO").into();
    let err = decode(Bytes::from(raw), &DecodeOptions::default()).unwrap_err();
    assert_eq!(err, FrameError::DigestMismatch { expected, actual });
    assert!(err.to_string().contains("2cf24dba5fb0a30e26e83b2ac5b9e29e"));
}

#[test]
fn error_payload_length_mismatch() {
    let mut raw = vector_frame().encode(true).to_vec();
    raw[116..120].copy_from_slice(&6u32.to_be_bytes());
    assert_eq!(
        decode(Bytes::from(raw.clone()), &DecodeOptions::default()),
        Err(FrameError::PayloadLengthMismatch {
            declared: 6,
            actual: 5
        })
    );
    raw.push(b'!');
    raw[116..120].copy_from_slice(&5u32.to_be_bytes());
    assert_eq!(
        decode(Bytes::from(raw), &DecodeOptions::default()),
        Err(FrameError::PayloadLengthMismatch {
            declared: 5,
            actual: 6
        })
    );
}

#[test]
fn error_zero_created_date_and_message_type() {
    let mut f = vector_frame();
    f.created_date = 0;
    assert_eq!(
        decode(f.encode(true), &DecodeOptions::default()),
        Err(FrameError::ZeroCreatedDate)
    );

    let mut raw = vector_frame().encode(true).to_vec();
    raw[4..36].fill(b' ');
    assert_eq!(
        decode(Bytes::from(raw.clone()), &DecodeOptions::default()),
        Err(FrameError::EmptyMessageType)
    );
    assert_eq!(peek_message_type(&raw), None);
    raw[4] = 0xc3;
    assert_eq!(
        decode(Bytes::from(raw), &DecodeOptions::default()),
        Err(FrameError::InvalidMessageType)
    );
}

#[test]
fn nul_padding_is_trimmed() {
    let mut raw = vector_frame().encode(true).to_vec();
    raw[4 + 17..36].fill(0);
    assert_eq!(
        decode(Bytes::from(raw), &DecodeOptions::default())
            .unwrap()
            .message_type,
        MessageType::InputStreamData
    );
}

#[test]
fn publication_frames_skip_validation() {
    let mut f = Frame::new(
        MessageType::PausePublication,
        0,
        0,
        PayloadType::NONE,
        Bytes::new(),
    );
    f.created_date = 0;
    let mut raw = f.encode(false).to_vec();
    raw[..4].copy_from_slice(&0u32.to_be_bytes());
    raw[116..120].copy_from_slice(&9u32.to_be_bytes());
    let got = decode(Bytes::from(raw), &DecodeOptions::default()).unwrap();
    assert_eq!(got.message_type, MessageType::PausePublication);
    assert!(got.payload.is_empty());
}

#[test]
fn empty_payload_skips_digest() {
    let f = Frame::new(
        MessageType::Other("custom".into()),
        0,
        0,
        PayloadType::NONE,
        Bytes::new(),
    );
    let mut raw = f.encode(true).to_vec();
    raw[80..112].fill(0xaa);
    assert_eq!(
        decode(Bytes::from(raw), &DecodeOptions::default()).unwrap(),
        f
    );
}

#[test]
fn message_type_names_round_trip() {
    for name in [
        "input_stream_data",
        "output_stream_data",
        "acknowledge",
        "channel_closed",
        "start_publication",
        "pause_publication",
        "agent_session_state",
        "interactive_shell",
        "agent_task_complete",
        "agent_task_acknowledge",
        "agent_task_reply",
        "agent_job",
        "agent_job_ack",
        "agent_job_reply",
        "agent_job_reply_ack",
        "something_else",
    ] {
        let t = MessageType::parse(name);
        assert_eq!(t.as_str(), name);
        assert_eq!(matches!(t, MessageType::Other(_)), name == "something_else");
    }
}

fn arb_message_type() -> impl Strategy<Value = MessageType> {
    prop_oneof![
        Just(MessageType::InputStreamData),
        Just(MessageType::OutputStreamData),
        Just(MessageType::Acknowledge),
        Just(MessageType::ChannelClosed),
        Just(MessageType::AgentSessionState),
        Just(MessageType::StartPublication),
        // Other types: ASCII, 1..=32 bytes, no padding characters at the ends.
        "[a-z_][a-z_0-9 ]{0,30}[a-z0-9]".prop_map(|s| MessageType::parse(&s)),
    ]
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    (
        arb_message_type(),
        any::<u32>(),
        1u64..,
        any::<i64>(),
        any::<u64>(),
        any::<u128>(),
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..2048),
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

proptest! {
    #[test]
    fn encode_decode_round_trip(frame in arb_frame(), digest in any::<bool>()) {
        let enc = frame.encode(digest);
        prop_assert_eq!(enc.len(), frame.encoded_len());
        let opts = DecodeOptions { verify_digest: digest, ..DecodeOptions::default() };
        let dec = decode(enc.clone(), &opts).unwrap();
        prop_assert_eq!(&dec, &frame);
        prop_assert_eq!(peek_message_type(&enc), Some(frame.message_type.clone()));
        prop_assert_eq!(dec.encode(digest), enc);
    }

    #[test]
    fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = peek_message_type(&data);
        if let Ok(f) = decode(Bytes::from(data), &DecodeOptions::default()) {
            let again = decode(f.encode(true), &DecodeOptions::default()).unwrap();
            prop_assert_eq!(again, f);
        }
    }
}
