//! Behaviour of `ReliableChannel` rule by rule (protocol.md §7): ack format,
//! sequence numbers and flags, receiver rules, handler-not-ready, resends and
//! RTO, pause/start publication, bounds, and robustness against garbage.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use airlock_proto::*;
use bytes::Bytes;
use proptest::prelude::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn input(seq: i64, payload: &'static [u8]) -> Frame {
    Frame::new(
        MessageType::InputStreamData,
        seq,
        0,
        PayloadType::OUTPUT,
        Bytes::from_static(payload),
    )
}

fn drain(ch: &mut ReliableChannel, now: Instant) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Some(b) = ch.poll_transmit(now) {
        out.push(decode(b, &DecodeOptions::default()).unwrap());
    }
    out
}

fn acked_seqs(frames: &[Frame]) -> Vec<i64> {
    frames
        .iter()
        .filter(|f| f.message_type == MessageType::Acknowledge)
        .map(|f| {
            AcknowledgeContent::from_payload(&f.payload)
                .unwrap()
                .acknowledged_message_sequence_number
        })
        .collect()
}

fn data(ch: &mut ReliableChannel) -> Vec<Bytes> {
    let mut v = Vec::new();
    while let Some(ev) = ch.poll_event() {
        if let Event::Data { payload, .. } = ev {
            v.push(payload);
        }
    }
    v
}

fn ack_for(frame: &Frame) -> Frame {
    AcknowledgeContent::for_frame(frame).to_frame()
}

#[test]
fn ack_frame_matches_the_captures() {
    let now = Instant::now();
    let mut agent = ReliableChannel::new(ChannelConfig::new(Role::Agent));
    let f = input(0, b"x");
    agent.handle_frame(f.clone(), now);
    let out = drain(&mut agent, now);
    assert_eq!(out.len(), 1);
    let ack = &out[0];
    assert_eq!(ack.message_type, MessageType::Acknowledge);
    assert_eq!(
        (ack.schema_version, ack.sequence_number, ack.flags),
        (1, 0, 3)
    );
    assert_eq!(ack.payload_type, PayloadType::NONE);
    assert_ne!(ack.message_id, f.message_id);
    let expected = format!(
        r#"{{"AcknowledgedMessageType":"input_stream_data","AcknowledgedMessageId":"{}","AcknowledgedMessageSequenceNumber":0,"IsSequentialMessage":true}}"#,
        f.message_id.hyphenated()
    );
    assert_eq!(ack.payload, expected.as_bytes());
}

#[test]
fn sequence_numbers_types_and_flags_per_role() {
    let now = Instant::now();
    let mut agent = ReliableChannel::new(ChannelConfig::new(Role::Agent));
    let mut client = ReliableChannel::new(ChannelConfig::new(Role::Client));
    for _ in 0..3 {
        agent
            .send(PayloadType::OUTPUT, Bytes::from_static(b"a"), now)
            .unwrap();
        client
            .send(PayloadType::SIZE, Bytes::from_static(b"c"), now)
            .unwrap();
    }
    let a = drain(&mut agent, now);
    let c = drain(&mut client, now);
    assert_eq!(
        a.iter().map(|f| f.sequence_number).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(
        a.iter().map(|f| f.flags).collect::<Vec<_>>(),
        [FLAG_SYN, 0, 0]
    );
    assert!(a
        .iter()
        .all(|f| f.message_type == MessageType::OutputStreamData));
    assert_eq!(c.iter().map(|f| f.flags).collect::<Vec<_>>(), [0, 0, 0]);
    assert!(c
        .iter()
        .all(|f| f.message_type == MessageType::InputStreamData
            && f.payload_type == PayloadType::SIZE));
    assert_eq!((agent.next_send_sequence(), agent.unacked()), (3, 3));
}

#[test]
fn send_refuses_empty_oversized_and_full() {
    let now = Instant::now();
    let mut cfg = ChannelConfig::new(Role::Client);
    cfg.window = Some(2);
    let mut ch = ReliableChannel::new(cfg);
    assert_eq!(
        ch.send(PayloadType::OUTPUT, Bytes::new(), now),
        Err(ChannelError::EmptyPayload)
    );
    assert_eq!(
        ch.send(PayloadType::OUTPUT, Bytes::from(vec![0u8; 1025]), now),
        Err(ChannelError::PayloadTooLarge {
            len: 1025,
            max: 1024
        })
    );
    ch.send(PayloadType::OUTPUT, Bytes::from(vec![0u8; 1024]), now)
        .unwrap();
    ch.send(PayloadType::OUTPUT, Bytes::from_static(b"b"), now)
        .unwrap();
    assert!(!ch.can_send());
    assert_eq!(
        ch.send(PayloadType::OUTPUT, Bytes::from_static(b"c"), now),
        Err(ChannelError::Full)
    );
    assert_eq!(ch.next_send_sequence(), 2);

    let sent = drain(&mut ch, now);
    ch.handle_frame(ack_for(&sent[0]), now);
    assert!(ch.can_send());
    let mut rest = Bytes::from(vec![7u8; 3000]);
    assert_eq!(ch.send_stream(PayloadType::OUTPUT, &mut rest, now), 1024);
    assert_eq!(rest.len(), 3000 - 1024);
}

#[test]
fn outgoing_capacity_bounds_queue_without_window() {
    let now = Instant::now();
    let mut cfg = ChannelConfig::new(Role::Agent);
    cfg.outgoing_capacity = 5;
    let mut ch = ReliableChannel::new(cfg);
    let mut data = Bytes::from(vec![1u8; 10 * 1024]);
    assert_eq!(
        ch.send_stream(PayloadType::OUTPUT, &mut data, now),
        5 * 1024
    );
    assert_eq!(ch.outstanding(), 5);
}

#[test]
fn window_limits_frames_in_flight_after_shrinking() {
    let now = Instant::now();
    let mut ch = ReliableChannel::new(ChannelConfig::new(Role::Client));
    for _ in 0..6 {
        ch.send(PayloadType::OUTPUT, Bytes::from_static(b"z"), now)
            .unwrap();
    }
    ch.apply_capabilities(&AirlockCapabilities {
        version: 1,
        max_payload: 4096,
        window: 2,
        digest: true,
        exit_code: false,
        no_pty: false,
        ..AirlockCapabilities::default()
    });
    assert_eq!(ch.config().max_payload, 4096);
    let sent = drain(&mut ch, now);
    assert_eq!(sent.len(), 2);
    ch.handle_frame(ack_for(&sent[1]), now);
    assert_eq!(drain(&mut ch, now).len(), 1);
    assert_eq!(ch.unacked(), 2);
}

#[test]
fn a_peer_cannot_negotiate_payloads_of_a_few_bytes() {
    // A hostile peer advertising 2-byte payloads would have 3000 bytes cut into 1500 frames.
    let now = Instant::now();
    let mut ch = ReliableChannel::new(ChannelConfig::new(Role::Agent));
    ch.apply_capabilities(&AirlockCapabilities {
        max_payload: 2,
        window: 9691,
        ..AirlockCapabilities::default()
    });
    assert_eq!(ch.config().max_payload, MIN_NEGOTIATED_PAYLOAD);
    let mut data = Bytes::from(vec![b'x'; 3000]);
    assert_eq!(ch.send_stream(PayloadType::OUTPUT, &mut data, now), 3000);
    assert_eq!(drain(&mut ch, now).len(), 3);
}

#[test]
fn in_order_out_of_order_and_duplicates() {
    let now = Instant::now();
    let mut agent = ReliableChannel::new(ChannelConfig::new(Role::Agent));
    let f0 = input(0, b"a");
    let f1 = input(1, b"b");
    let f2 = input(2, b"c");
    agent.handle_frame(f2.clone(), now);
    agent.handle_frame(f1.clone(), now);
    assert_eq!(
        acked_seqs(&drain(&mut agent, now)),
        [2, 1],
        "out-of-order frames are acked at once"
    );
    assert!(data(&mut agent).is_empty());
    assert_eq!(agent.expected_sequence(), 0);
    agent.handle_frame(f0.clone(), now);
    assert_eq!(
        acked_seqs(&drain(&mut agent, now)),
        [0],
        "drained frames are not acked again"
    );
    assert_eq!(data(&mut agent), [&b"a"[..], b"b", b"c"]);
    assert_eq!(agent.expected_sequence(), 3);

    // Duplicates are re-acked (unlike the plugin) but never delivered again.
    agent.handle_frame(f1.clone(), now);
    agent.handle_frame(f0, now);
    assert_eq!(acked_seqs(&drain(&mut agent, now)), [1, 0]);
    assert!(data(&mut agent).is_empty());
    // A duplicate of a buffered frame is re-acked and buffered once.
    let f5 = input(5, b"f");
    agent.handle_frame(f5.clone(), now);
    agent.handle_frame(f5, now);
    assert_eq!(acked_seqs(&drain(&mut agent, now)), [5, 5]);
    agent.handle_frame(input(3, b"d"), now);
    agent.handle_frame(input(4, b"e"), now);
    assert_eq!(data(&mut agent), [&b"d"[..], b"e", b"f"]);
}

#[test]
fn incoming_buffer_full_drops_without_ack() {
    let now = Instant::now();
    let mut cfg = ChannelConfig::new(Role::Agent);
    cfg.incoming_capacity = 2;
    let mut agent = ReliableChannel::new(cfg);
    for seq in 1..=3 {
        agent.handle_frame(input(seq, b"x"), now);
    }
    assert_eq!(acked_seqs(&drain(&mut agent, now)), [1, 2]);
}

#[test]
fn handler_not_ready_holds_back_in_order_frames() {
    let now = Instant::now();
    let mut agent = ReliableChannel::new(ChannelConfig::new(Role::Agent));
    agent.set_receiver_ready(false);
    let f0 = input(0, b"a");
    agent.handle_frame(f0.clone(), now);
    assert!(drain(&mut agent, now).is_empty(), "no ack while not ready");
    assert!(data(&mut agent).is_empty());
    assert_eq!(agent.expected_sequence(), 0);
    // Out-of-order frames are still buffered and acked.
    agent.handle_frame(input(1, b"b"), now);
    assert_eq!(acked_seqs(&drain(&mut agent, now)), [1]);
    // The peer resends seq 0 once we are ready.
    agent.set_receiver_ready(true);
    assert!(data(&mut agent).is_empty());
    agent.handle_frame(f0, now);
    assert_eq!(acked_seqs(&drain(&mut agent, now)), [0]);
    assert_eq!(data(&mut agent), [&b"a"[..], b"b"]);
    assert_eq!(agent.expected_sequence(), 2);
}

#[test]
fn not_ready_with_buffered_head_delivers_on_ready() {
    let now = Instant::now();
    let mut cfg = ChannelConfig::new(Role::Agent);
    cfg.incoming_capacity = 2; // also bounds undelivered data events
    let mut agent = ReliableChannel::new(cfg);
    agent.handle_frame(input(0, b"a"), now);
    agent.handle_frame(input(1, b"b"), now);
    // The event queue is full: seq 2 (arriving after 3) stays buffered.
    agent.handle_frame(input(3, b"d"), now);
    agent.handle_frame(input(2, b"c"), now);
    assert_eq!(
        acked_seqs(&drain(&mut agent, now)),
        [0, 1, 3],
        "seq 2 not deliverable yet, not acked"
    );
    assert_eq!(data(&mut agent), [&b"a"[..], b"b"]);
    agent.handle_frame(input(2, b"c"), now);
    assert_eq!(acked_seqs(&drain(&mut agent, now)), [2]);
    assert_eq!(data(&mut agent), [&b"c"[..], b"d"]);
}

#[test]
fn resends_every_overdue_frame_with_identical_bytes() {
    let t0 = Instant::now();
    let mut ch = ReliableChannel::new(ChannelConfig::new(Role::Agent));
    for p in [&b"1"[..], b"2", b"3"] {
        ch.send(PayloadType::OUTPUT, Bytes::from_static(p), t0)
            .unwrap();
    }
    let mut first = Vec::new();
    while let Some(b) = ch.poll_transmit(t0) {
        first.push(b);
    }
    assert_eq!(first.len(), 3);
    assert_eq!(ch.poll_timeout(), Some(t0 + ms(200)), "initial RTO");
    // Ack the middle one; the others are resent, not just the head.
    let mid = decode(first[1].clone(), &DecodeOptions::default()).unwrap();
    ch.handle_frame(ack_for(&mid), t0 + ms(50));
    // The sample (50 ms) made the RTO 143.75 ms.
    ch.handle_timeout(t0 + ms(100));
    assert!(ch.poll_transmit(t0 + ms(100)).is_none(), "not overdue yet");
    let t1 = ch.poll_timeout().unwrap();
    assert!(t1 <= t0 + ms(250), "{:?}", t1 - t0);
    ch.handle_timeout(t1);
    let r1 = ch.poll_transmit(t1).unwrap();
    let r2 = ch.poll_transmit(t1).unwrap();
    assert!(ch.poll_transmit(t1).is_none());
    assert_eq!(
        (r1, r2),
        (first[0].clone(), first[2].clone()),
        "same bytes: same MessageId and CreatedDate"
    );
    // At most one resend per RTO: nothing more on the next tick.
    ch.handle_timeout(t1 + ms(100));
    assert!(ch.poll_transmit(t1 + ms(100)).is_none());
    assert!(ch.poll_timeout().unwrap() >= t1 + ch.rto());
}

#[test]
fn rto_follows_jacobson_karels_and_karns_rule() {
    let t0 = Instant::now();
    let mut ch = ReliableChannel::new(ChannelConfig::new(Role::Client));
    assert_eq!(ch.rto(), ms(200));
    ch.send(PayloadType::OUTPUT, Bytes::from_static(b"a"), t0)
        .unwrap();
    let f = decode(ch.poll_transmit(t0).unwrap(), &DecodeOptions::default()).unwrap();
    ch.handle_frame(ack_for(&f), t0 + ms(50));
    // RTTVAR = 0.25*|100-50| = 12.5; SRTT = 87.5+6.25 = 93.75; RTO = 93.75 + 50.
    assert_eq!(ch.rto(), Duration::from_micros(143_750));

    // A resent frame gives no RTT sample.
    ch.send(PayloadType::OUTPUT, Bytes::from_static(b"b"), t0)
        .unwrap();
    let g = decode(
        ch.poll_transmit(t0 + ms(100)).unwrap(),
        &DecodeOptions::default(),
    )
    .unwrap();
    ch.handle_timeout(t0 + ms(300));
    assert!(ch.poll_transmit(t0 + ms(300)).is_some());
    ch.handle_frame(ack_for(&g), t0 + ms(900));
    assert_eq!(ch.rto(), Duration::from_micros(143_750));
    assert_eq!(ch.unacked(), 0);
    assert_eq!(ch.poll_timeout(), None);

    // Capped at max_rto.
    ch.send(PayloadType::OUTPUT, Bytes::from_static(b"c"), t0)
        .unwrap();
    let h = decode(
        ch.poll_transmit(t0 + ms(1000)).unwrap(),
        &DecodeOptions::default(),
    )
    .unwrap();
    ch.handle_frame(ack_for(&h), t0 + ms(20_000));
    assert_eq!(ch.rto(), Duration::from_secs(1));
}

#[test]
fn agent_honours_pause_publication() {
    let t0 = Instant::now();
    let mut agent = ReliableChannel::new(ChannelConfig::new(Role::Agent));
    agent
        .send(PayloadType::OUTPUT, Bytes::from_static(b"a"), t0)
        .unwrap();
    assert!(agent.poll_transmit(t0).is_some());
    let pause = Frame::new(
        MessageType::PausePublication,
        0,
        0,
        PayloadType::NONE,
        Bytes::new(),
    );
    agent.handle_frame(pause.clone(), t0);
    assert!(agent.paused());
    assert!(
        matches!(agent.poll_event(), Some(Event::Control(f)) if f.message_type == MessageType::PausePublication)
    );
    agent
        .send(PayloadType::OUTPUT, Bytes::from_static(b"b"), t0)
        .unwrap();
    assert!(
        agent.poll_transmit(t0).is_none(),
        "no new data while paused"
    );
    assert_eq!(agent.poll_timeout(), None);
    agent.handle_timeout(t0 + ms(5000));
    assert!(
        agent.poll_transmit(t0 + ms(5000)).is_none(),
        "no resends while paused"
    );
    // Acks still flow while paused; inbound input clears the pause.
    agent.handle_frame(input(0, b"x"), t0 + ms(5000));
    assert!(!agent.paused());
    let out = drain(&mut agent, t0 + ms(5000));
    assert_eq!(out.len(), 2, "ack, then the queued frame");
    // start_publication also clears it.
    agent.handle_frame(pause, t0);
    let start = Frame::new(
        MessageType::StartPublication,
        0,
        0,
        PayloadType::NONE,
        Bytes::new(),
    );
    agent.handle_frame(start, t0);
    assert!(!agent.paused());

    // The client ignores pause.
    let mut client = ReliableChannel::new(ChannelConfig::new(Role::Client));
    client.handle_frame(
        Frame::new(
            MessageType::PausePublication,
            0,
            0,
            PayloadType::NONE,
            Bytes::new(),
        ),
        t0,
    );
    assert!(!client.paused());
    client
        .send(PayloadType::OUTPUT, Bytes::from_static(b"a"), t0)
        .unwrap();
    assert!(client.poll_transmit(t0).is_some());
}

#[test]
fn resend_limit_is_reported_once() {
    let mut t = Instant::now();
    let mut cfg = ChannelConfig::new(Role::Client);
    cfg.max_resends = Some(3);
    let mut ch = ReliableChannel::new(cfg);
    ch.send(PayloadType::OUTPUT, Bytes::from_static(b"a"), t)
        .unwrap();
    ch.poll_transmit(t).unwrap();
    let mut limit_events = 0;
    for _ in 0..10 {
        t = ch.poll_timeout().unwrap();
        ch.handle_timeout(t);
        assert!(ch.poll_transmit(t).is_some());
        while let Some(ev) = ch.poll_event() {
            assert_eq!(ev, Event::ResendLimitReached);
            limit_events += 1;
        }
    }
    assert_eq!(limit_events, 1);
}

#[test]
fn transmit_order_acks_control_data_resends() {
    let t0 = Instant::now();
    let mut agent = ReliableChannel::new(ChannelConfig::new(Role::Agent));
    agent
        .send(PayloadType::OUTPUT, Bytes::from_static(b"old"), t0)
        .unwrap();
    agent.poll_transmit(t0).unwrap();
    let t1 = t0 + ms(300);
    agent.handle_timeout(t1);
    agent
        .send(PayloadType::OUTPUT, Bytes::from_static(b"new"), t1)
        .unwrap();
    let state = AgentSessionState {
        schema_version: 1,
        session_state: "Connected".into(),
        session_id: "s".into(),
    };
    agent.send_control(state.to_frame());
    agent.handle_frame(input(0, b"x"), t1);
    let out = drain(&mut agent, t1);
    let kinds: Vec<_> = out
        .iter()
        .map(|f| (f.message_type.clone(), f.payload.clone()))
        .collect();
    assert_eq!(kinds[0].0, MessageType::Acknowledge);
    assert_eq!(kinds[1].0, MessageType::AgentSessionState);
    assert_eq!(out[1].flags, 3);
    assert_eq!(
        kinds[2],
        (MessageType::OutputStreamData, Bytes::from_static(b"new"))
    );
    assert_eq!(
        kinds[3],
        (MessageType::OutputStreamData, Bytes::from_static(b"old"))
    );
    assert_eq!(out.len(), 4);
    // Control frames are never resent.
    agent.handle_timeout(t1 + ms(5000));
    assert!(drain(&mut agent, t1 + ms(5000))
        .iter()
        .all(|f| f.message_type == MessageType::OutputStreamData));
}

#[test]
fn control_frames_become_events() {
    let now = Instant::now();
    let mut client = ReliableChannel::new(ChannelConfig::new(Role::Client));
    let closed = ChannelClosed::new("sess", "i-1", "bye").to_frame();
    client.handle_bytes(closed.encode(true), now).unwrap();
    assert_eq!(client.poll_event(), Some(Event::Control(closed)));
    // Our own direction's stream type coming back is not data for us.
    let echo = input(0, b"x");
    client.handle_frame(echo.clone(), now);
    assert_eq!(client.poll_event(), Some(Event::Control(echo)));
    assert_eq!(client.expected_sequence(), 0);
}

#[test]
fn digest_negotiation_changes_encoding_and_verification() {
    let now = Instant::now();
    let caps = AirlockCapabilities {
        version: 1,
        max_payload: 65536,
        window: 0,
        digest: false,
        exit_code: true,
        no_pty: false,
        ..AirlockCapabilities::default()
    };
    let mut a = ReliableChannel::new(ChannelConfig::new(Role::Agent).with_capabilities(&caps));
    assert_eq!(a.config().window, None);
    a.send(PayloadType::OUTPUT, Bytes::from(vec![9u8; 65536]), now)
        .unwrap();
    let raw = a.poll_transmit(now).unwrap();
    assert_eq!(&raw[80..112], &[0u8; 32]);
    let mut strict = ReliableChannel::new(ChannelConfig::new(Role::Client));
    assert!(matches!(
        strict.handle_bytes(raw.clone(), now),
        Err(FrameError::DigestMismatch { .. })
    ));
    let mut lax = ReliableChannel::new(ChannelConfig::new(Role::Client).with_capabilities(&caps));
    lax.handle_bytes(raw, now).unwrap();
    assert_eq!(data(&mut lax)[0].len(), 65536);
}

#[test]
fn bad_ack_payloads_are_ignored() {
    let now = Instant::now();
    let mut ch = ReliableChannel::new(ChannelConfig::new(Role::Client));
    ch.send(PayloadType::OUTPUT, Bytes::from_static(b"a"), now)
        .unwrap();
    ch.poll_transmit(now).unwrap();
    for p in [
        &b"not json"[..],
        b"{}",
        b"{\"AcknowledgedMessageSequenceNumber\":99}",
    ] {
        ch.handle_frame(
            Frame::new(
                MessageType::Acknowledge,
                0,
                3,
                PayloadType::NONE,
                Bytes::from_static(p),
            ),
            now,
        );
    }
    assert_eq!(
        ch.unacked(),
        1,
        "an ack without a sequence number matches nothing"
    );
    ch.handle_frame(
        Frame::new(
            MessageType::Acknowledge,
            0,
            3,
            PayloadType::NONE,
            Bytes::from_static(b"{\"acknowledgedMessageSequenceNumber\":0}"),
        ),
        now,
    );
    assert_eq!(ch.unacked(), 0);
}

proptest! {
    /// Garbage bytes and arbitrary frames never panic the channel, and queues stay bounded.
    #[test]
    fn channel_survives_garbage(
        inputs in proptest::collection::vec(
            (any::<bool>(), any::<i64>(), 0u8..6, proptest::collection::vec(any::<u8>(), 0..200)),
            0..200),
        agent in any::<bool>(),
    ) {
        let mut now = Instant::now();
        let role = if agent { Role::Agent } else { Role::Client };
        let mut cfg = ChannelConfig::new(role);
        cfg.incoming_capacity = 16;
        let mut ch = ReliableChannel::new(cfg);
        for (raw, seq, kind, bytes) in inputs {
            now += ms(37);
            if raw {
                let _ = ch.handle_bytes(Bytes::from(bytes), now);
            } else {
                let mt = match kind {
                    0 => MessageType::InputStreamData,
                    1 => MessageType::OutputStreamData,
                    2 => MessageType::Acknowledge,
                    3 => MessageType::PausePublication,
                    4 => MessageType::StartPublication,
                    _ => MessageType::ChannelClosed,
                };
                let f = Frame::new(mt, seq % 64, 0, PayloadType::OUTPUT, Bytes::from(bytes));
                ch.handle_bytes(f.encode(true), now).unwrap();
            }
            let _ = ch.send(PayloadType::OUTPUT, Bytes::from_static(b"q"), now);
            if ch.poll_timeout().is_some_and(|t| t <= now) {
                ch.handle_timeout(now);
            }
            if seq % 3 == 0 {
                while ch.poll_transmit(now).is_some() {}
                while ch.poll_event().is_some() {}
            }
        }
        let mut events = 0;
        while ch.poll_event().is_some() { events += 1; }
        prop_assert!(events <= 16 + 1024 + 1);
    }
}

/// Between Airlock peers an ack waits up to `ack_delay` for a frame going the other way, so
/// a request and its reply travel as one message each way; AWS peers get theirs at once.
#[test]
fn acks_wait_briefly_for_a_reply_between_airlock_peers_only() {
    let t0 = Instant::now();
    // AWS peer: the ack goes at once.
    let mut aws = ReliableChannel::new(ChannelConfig::new(Role::Agent));
    aws.handle_frame(input(0, b"ls\n"), t0);
    assert_eq!(acked_seqs(&drain(&mut aws, t0)), vec![0]);
    assert_eq!(aws.poll_timeout(), None);

    let mut ch = ReliableChannel::new(ChannelConfig::new(Role::Agent));
    ch.apply_capabilities(&AirlockCapabilities {
        version: 1,
        max_payload: 4096,
        window: 8,
        digest: true,
        ..AirlockCapabilities::default()
    });
    let delay = ch.config().ack_delay;
    assert_eq!(delay, AIRLOCK_ACK_DELAY);
    assert!(delay < ms(10), "well below any RTO");

    // A request: its ack is held, and the channel asks to be woken when it is due.
    ch.handle_frame(input(0, b"ls\n"), t0);
    assert!(drain(&mut ch, t0).is_empty());
    assert!(!ch.wants_transmit());
    assert_eq!(ch.poll_timeout(), Some(t0 + delay));

    // The reply comes within the delay: the ack goes with it, ack first.
    ch.send(PayloadType::OUTPUT, Bytes::from_static(b"a b c\n"), t0)
        .unwrap();
    let out = drain(&mut ch, t0 + delay / 2);
    assert_eq!(out.len(), 2);
    assert_eq!(acked_seqs(&out), vec![0]);
    assert_eq!(out[1].message_type, MessageType::OutputStreamData);

    // No reply: the ack goes when the delay runs out.
    ch.handle_frame(input(1, b"x"), t0 + ms(10));
    assert!(drain(&mut ch, t0 + ms(10)).is_empty());
    assert_eq!(acked_seqs(&drain(&mut ch, t0 + ms(10) + delay)), vec![1]);

    // The caller could not write when the delay ran out (its timer fired first): the ack is
    // due from then on, and the channel stops asking for a wake-up it cannot use.
    ch.handle_frame(input(2, b"y"), t0 + ms(20));
    let due = t0 + ms(20) + delay;
    assert_eq!(ch.poll_timeout().map(|d| d <= due), Some(true));
    ch.handle_timeout(due);
    assert!(ch.wants_transmit());
    assert!(
        ch.poll_timeout().is_none_or(|d| d > due),
        "no timer for the due ack"
    );
    assert_eq!(acked_seqs(&drain(&mut ch, due)), vec![2]);
    assert!(!ch.wants_transmit());
}
