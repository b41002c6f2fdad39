//! Two `ReliableChannel`s (Client and Agent) over a simulated lossy network
//! with random loss, duplication and reordering, in simulated time: every byte
//! is delivered exactly once and in order in both directions, with and without
//! a window, with handshake-negotiated capabilities (from the start or switched
//! mid-stream), and with receivers that are intermittently not ready.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use airlock_proto::*;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

/// splitmix64: deterministic randomness for the network, seeded by proptest.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum CapsMode {
    /// AWS defaults on both sides.
    Aws,
    /// Negotiated capabilities from the start.
    FromStart,
    /// Each side switches at its own random step, as after a real handshake.
    MidStream,
}

#[derive(Clone, Debug)]
struct Scenario {
    seed: u64,
    loss: f64,
    dup: f64,
    max_jitter_ms: u64,
    client_bytes: usize,
    agent_bytes: usize,
    window: Option<usize>,
    caps_mode: CapsMode,
    caps: AirlockCapabilities,
    flaky_receiver: bool,
}

struct Packet {
    at: Instant,
    order: u64,
    to_agent: bool,
    bytes: Bytes,
}

struct Side {
    ch: ReliableChannel,
    to_send: Bytes,
    sent: BytesMut,
    received: BytesMut,
    data_events: u64,
    first_pt: Option<PayloadType>,
    switch_at: Option<u64>,
}

impl Side {
    fn new(role: Role, sc: &Scenario, data: Bytes, rng: &mut Rng) -> Side {
        let mut cfg = ChannelConfig::new(role);
        cfg.window = sc.window;
        cfg.max_resends = Some(1_000_000);
        if let CapsMode::FromStart = sc.caps_mode {
            cfg = cfg.with_capabilities(&sc.caps);
        }
        let switch_at = match sc.caps_mode {
            CapsMode::MidStream => Some(rng.below(40)),
            _ => None,
        };
        Side {
            ch: ReliableChannel::new(cfg),
            to_send: data,
            sent: BytesMut::new(),
            received: BytesMut::new(),
            data_events: 0,
            first_pt: None,
            switch_at,
        }
    }
}

fn pattern(len: usize, salt: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt) ^ (i >> 8) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn run(sc: &Scenario) -> Result<(), TestCaseError> {
    let mut rng = Rng(sc.seed);
    let start = Instant::now();
    let mut now = start;
    let mut client = Side::new(Role::Client, sc, pattern(sc.client_bytes, 7), &mut rng);
    let mut agent = Side::new(Role::Agent, sc, pattern(sc.agent_bytes, 99), &mut rng);

    // The handshake frames take the first sequence numbers, like a real session.
    agent
        .ch
        .send(
            PayloadType::HANDSHAKE_REQUEST,
            Bytes::from_static(b"{\"AgentVersion\":\"3.3.9999.0\"}"),
            now,
        )
        .unwrap();
    client
        .ch
        .send(
            PayloadType::HANDSHAKE_RESPONSE,
            Bytes::from_static(b"{\"ClientVersion\":\"1\"}"),
            now,
        )
        .unwrap();

    let mut net: Vec<Packet> = Vec::new();
    let mut order = 0u64;
    let deadline = start + Duration::from_secs(3600);

    for step in 0u64.. {
        for side in [&mut client, &mut agent] {
            if side.switch_at == Some(step) {
                side.ch.apply_capabilities(&sc.caps);
            }
            if sc.flaky_receiver {
                side.ch.set_receiver_ready(rng.chance(0.6));
            }
            let before = side.to_send.clone();
            let n = side
                .ch
                .send_stream(PayloadType::OUTPUT, &mut side.to_send, now);
            side.sent.extend_from_slice(&before[..n]);
            prop_assert_eq!(side.to_send.len(), before.len() - n);
        }

        for (side, to_agent) in [(&mut client, true), (&mut agent, false)] {
            while let Some(bytes) = side.ch.poll_transmit(now) {
                prop_assert!(bytes.len() >= FRAME_HEADER_LEN);
                if rng.chance(sc.loss) {
                    continue;
                }
                let copies = if rng.chance(sc.dup) { 2 } else { 1 };
                for _ in 0..copies {
                    let delay = 5 + rng.below(sc.max_jitter_ms + 1);
                    order += 1;
                    net.push(Packet {
                        at: now + Duration::from_millis(delay),
                        order,
                        to_agent,
                        bytes: bytes.clone(),
                    });
                }
            }
        }

        for side in [&mut client, &mut agent] {
            while let Some(ev) = side.ch.poll_event() {
                match ev {
                    Event::Data {
                        payload_type,
                        payload,
                    } => {
                        prop_assert!(!payload.is_empty());
                        side.data_events += 1;
                        if side.first_pt.is_none() {
                            side.first_pt = Some(payload_type);
                        } else {
                            prop_assert_eq!(payload_type, PayloadType::OUTPUT);
                            side.received.extend_from_slice(&payload);
                        }
                    }
                    other => prop_assert!(false, "unexpected event {:?}", other),
                }
            }
        }

        let done = client.to_send.is_empty()
            && agent.to_send.is_empty()
            && client.ch.outstanding() == 0
            && agent.ch.outstanding() == 0
            && client.received.len() == agent.sent.len()
            && agent.received.len() == client.sent.len();
        if done {
            break;
        }
        prop_assert!(
            now < deadline,
            "no progress after an hour of simulated time: {:?}",
            sc
        );

        // Advance simulated time to the next thing that happens.
        let mut next = now + Duration::from_millis(20);
        for p in &net {
            next = next.min(p.at);
        }
        for side in [&client, &agent] {
            if let Some(t) = side.ch.poll_timeout() {
                next = next.min(t);
            }
        }
        now = next.max(now + Duration::from_micros(100));

        net.sort_by_key(|p| (p.at, p.order));
        let due = net.iter().take_while(|p| p.at <= now).count();
        for p in net.drain(..due) {
            let side = if p.to_agent { &mut agent } else { &mut client };
            // Frames encoded before a capability switch may fail the digest check; they are resent.
            let _ = side.ch.handle_bytes(p.bytes, now);
        }
        for side in [&mut client, &mut agent] {
            if side.ch.poll_timeout().is_some_and(|t| t <= now) {
                side.ch.handle_timeout(now);
            }
        }
    }

    prop_assert_eq!(client.first_pt, Some(PayloadType::HANDSHAKE_REQUEST));
    prop_assert_eq!(agent.first_pt, Some(PayloadType::HANDSHAKE_RESPONSE));
    prop_assert!(
        client.received == agent.sent,
        "agent->client stream corrupted"
    );
    prop_assert!(
        agent.received == client.sent,
        "client->agent stream corrupted"
    );
    prop_assert_eq!(client.sent.len(), sc.client_bytes);
    prop_assert_eq!(agent.sent.len(), sc.agent_bytes);
    // Exactly once: one event per sequence number.
    prop_assert_eq!(client.data_events as i64, agent.ch.next_send_sequence());
    prop_assert_eq!(agent.data_events as i64, client.ch.next_send_sequence());
    prop_assert_eq!(client.ch.expected_sequence(), agent.ch.next_send_sequence());
    prop_assert_eq!(agent.ch.expected_sequence(), client.ch.next_send_sequence());
    Ok(())
}

fn arb_caps() -> impl Strategy<Value = AirlockCapabilities> {
    (
        prop_oneof![Just(1024u32), Just(4096), Just(16384), Just(65536)],
        prop_oneof![Just(0u32), 1u32..16],
        any::<bool>(),
    )
        .prop_map(|(max_payload, window, digest)| AirlockCapabilities {
            version: 1,
            max_payload,
            window,
            digest,
            exit_code: true,
            no_pty: false,
            ..AirlockCapabilities::default()
        })
}

fn arb_scenario() -> impl Strategy<Value = Scenario> {
    (
        any::<u64>(),
        0.0f64..0.3,
        0.0f64..0.2,
        0u64..80,
        0usize..40_000,
        0usize..40_000,
        prop_oneof![Just(None), (1usize..8).prop_map(Some)],
        prop_oneof![
            Just(CapsMode::Aws),
            Just(CapsMode::FromStart),
            Just(CapsMode::MidStream)
        ],
        arb_caps(),
        any::<bool>(),
    )
        .prop_map(
            |(
                seed,
                loss,
                dup,
                max_jitter_ms,
                client_bytes,
                agent_bytes,
                window,
                caps_mode,
                caps,
                flaky_receiver,
            )| {
                Scenario {
                    seed,
                    loss,
                    dup,
                    max_jitter_ms,
                    client_bytes,
                    agent_bytes,
                    window,
                    caps_mode,
                    caps,
                    flaky_receiver,
                }
            },
        )
}

proptest! {
    // 96 cases by default; PROPTEST_CASES overrides it for longer soaks.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96)
    ))]

    #[test]
    fn lossy_network_delivers_exactly_once_in_order(sc in arb_scenario()) {
        run(&sc)?;
    }

    #[test]
    fn small_window_under_heavy_loss(seed in any::<u64>(), window in 1usize..3, flaky in any::<bool>()) {
        run(&Scenario {
            seed,
            loss: 0.35,
            dup: 0.2,
            max_jitter_ms: 60,
            client_bytes: 12_000,
            agent_bytes: 30_000,
            window: Some(window),
            caps_mode: CapsMode::Aws,
            caps: AirlockCapabilities { version: 1, max_payload: 1024, window: 0, digest: true, exit_code: false, no_pty: false, ..AirlockCapabilities::default() },
            flaky_receiver: flaky,
        })?;
    }
}

#[test]
fn perfect_network_fast_path() {
    run(&Scenario {
        seed: 1,
        loss: 0.0,
        dup: 0.0,
        max_jitter_ms: 0,
        client_bytes: 100_000,
        agent_bytes: 100_000,
        window: None,
        caps_mode: CapsMode::Aws,
        caps: AirlockCapabilities {
            version: 1,
            max_payload: 1024,
            window: 0,
            digest: true,
            exit_code: false,
            no_pty: false,
            ..AirlockCapabilities::default()
        },
        flaky_receiver: false,
    })
    .unwrap();
}
