//! Real session-manager-plugin traffic (shared/testdata/plugin-captures): every
//! binary frame decodes to the recorded fields and re-encodes to the same
//! bytes; JSON payloads re-serialize byte for byte; and a client-role channel
//! fed the server's frames produces the same ack payloads as the plugin.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;
use std::time::Instant;

use airlock_proto::*;
use bytes::Bytes;
use serde_json::Value;

fn captures_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("AIRLOCK_CAPTURES_DIR") {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/plugin-captures")
}

struct Record {
    file: String,
    dir: String,
    kind: String,
    raw: Vec<u8>,
    decoded: Value,
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn load(file: &str) -> Vec<Record> {
    let path = captures_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} (set AIRLOCK_CAPTURES_DIR): {e}",
            path.display()
        )
    });
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            Record {
                file: file.to_owned(),
                dir: v["dir"].as_str().unwrap().to_owned(),
                kind: v["kind"].as_str().unwrap().to_owned(),
                raw: unhex(v["hex"].as_str().unwrap()),
                decoded: v["decoded"].clone(),
            }
        })
        .collect()
}

fn all_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(captures_dir())
        .unwrap_or_else(|e| panic!("captures dir {}: {e}", captures_dir().display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".jsonl"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 7,
        "expected the plugin captures, found {files:?}"
    );
    files
}

fn binaries() -> Vec<Record> {
    all_files()
        .iter()
        .flat_map(|f| load(f))
        .filter(|r| r.kind == "binary")
        .collect()
}

#[test]
fn every_captured_frame_decodes_and_reencodes_identically() {
    let records = binaries();
    assert!(records.len() >= 300, "only {} binary frames", records.len());
    for r in &records {
        let d = &r.decoded;
        let ctx = format!(
            "{} {} seq {}",
            r.file, d["MessageType"], d["SequenceNumber"]
        );
        let frame = decode(Bytes::from(r.raw.clone()), &DecodeOptions::default())
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_eq!(d["digest_ok"], true, "{ctx}");
        assert_eq!(
            frame.message_type.as_str(),
            d["MessageType"].as_str().unwrap(),
            "{ctx}"
        );
        assert!(
            !matches!(frame.message_type, MessageType::Other(_)),
            "{ctx}"
        );
        assert_eq!(
            Some(frame.message_type.clone()),
            peek_message_type(&r.raw),
            "{ctx}"
        );
        assert_eq!(
            u64::from(frame.schema_version),
            d["SchemaVersion"].as_u64().unwrap(),
            "{ctx}"
        );
        assert_eq!(
            frame.created_date,
            d["CreatedDate"].as_u64().unwrap(),
            "{ctx}"
        );
        assert_eq!(
            frame.sequence_number,
            d["SequenceNumber"].as_i64().unwrap(),
            "{ctx}"
        );
        assert_eq!(frame.flags, d["Flags"].as_u64().unwrap(), "{ctx}");
        assert_eq!(
            frame.message_id.to_string(),
            d["MessageId"].as_str().unwrap(),
            "{ctx}"
        );
        assert_eq!(
            u64::from(frame.payload_type.0),
            d["PayloadType"].as_u64().unwrap(),
            "{ctx}"
        );
        assert_eq!(
            frame.payload_type.name(),
            d["PayloadTypeName"].as_str(),
            "{ctx}"
        );
        assert_eq!(
            frame.payload.len() as u64,
            d["payload_len_actual"].as_u64().unwrap(),
            "{ctx}"
        );
        if let Some(text) = d["payload_text"].as_str() {
            assert_eq!(&frame.payload[..], text.as_bytes(), "{ctx}");
        }
        if let Some(flag) = d["payload_flag"].as_u64() {
            assert_eq!(
                u64::from(Flag::decode(&frame.payload).unwrap().value()),
                flag,
                "{ctx}"
            );
        }
        assert_eq!(
            &frame.encode(true)[..],
            &r.raw[..],
            "{ctx}: re-encode differs"
        );
    }
}

/// Re-serializing a parsed payload must give back the exact bytes Go (or the
/// scripted server imitating Go) sent.
fn assert_json_round_trip<T: JsonPayload + std::fmt::Debug>(payload: &[u8], ctx: &str) -> T {
    let v = T::from_payload(payload).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    assert_eq!(
        String::from_utf8_lossy(&v.to_payload()),
        String::from_utf8_lossy(payload),
        "{ctx}"
    );
    v
}

#[test]
fn captured_json_payloads_reserialize_byte_for_byte() {
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for r in &binaries() {
        let frame = decode(Bytes::from(r.raw.clone()), &DecodeOptions::default()).unwrap();
        let ctx = format!(
            "{} {} seq {}",
            r.file, frame.message_type, frame.sequence_number
        );
        let p = &frame.payload[..];
        let kind = match (&frame.message_type, frame.payload_type) {
            (MessageType::Acknowledge, _) => {
                let a: AcknowledgeContent = assert_json_round_trip(p, &ctx);
                assert!(a.is_sequential_message);
                "ack"
            }
            (MessageType::ChannelClosed, _) => {
                let c: ChannelClosed = assert_json_round_trip(p, &ctx);
                assert_eq!(c.message_type, "channel_closed");
                "channel_closed"
            }
            (_, PayloadType::HANDSHAKE_RESPONSE) => {
                let h: HandshakeResponse = assert_json_round_trip(p, &ctx);
                assert_eq!(h.client_version, "1.2.677.0");
                assert_eq!(
                    h.processed_client_actions[0].action_type,
                    SESSION_TYPE_ACTION
                );
                assert_eq!(h.airlock, None);
                "handshake_response"
            }
            (_, PayloadType::HANDSHAKE_COMPLETE) => {
                let _: HandshakeComplete = assert_json_round_trip(p, &ctx);
                "handshake_complete"
            }
            (_, PayloadType::SIZE) => {
                let _: SizeData = assert_json_round_trip(p, &ctx);
                "size"
            }
            (_, PayloadType::HANDSHAKE_REQUEST) => {
                // Properties is a JSON object (a Go map); serde_json::Value may
                // order its keys differently, so compare values, not bytes.
                let h = HandshakeRequest::from_payload(p).unwrap();
                let again: Value = serde_json::from_slice(&h.to_payload()).unwrap();
                assert_eq!(again, serde_json::from_slice::<Value>(p).unwrap(), "{ctx}");
                let st: SessionTypeRequest =
                    serde_json::from_value(h.requested_client_actions[0].action_parameters.clone())
                        .unwrap();
                assert!(st.session_type == "Port" || st.session_type == "Standard_Stream");
                "handshake_request"
            }
            _ => "other",
        };
        *seen.entry(kind).or_default() += 1;
    }
    for kind in [
        "ack",
        "channel_closed",
        "handshake_response",
        "handshake_complete",
        "size",
        "handshake_request",
    ] {
        assert!(
            seen.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} in captures: {seen:?}"
        );
    }
}

#[test]
fn captured_open_data_channel_reserializes_byte_for_byte() {
    let mut n = 0;
    for f in all_files() {
        for r in load(&f)
            .into_iter()
            .filter(|r| r.kind == "text" && r.dir == "plugin->server")
        {
            let o: OpenDataChannelInput = assert_json_round_trip(&r.raw, &r.file);
            assert_eq!(o.message_schema_version, "1.0");
            assert!(o.client_id.is_some() && o.client_version.is_some());
            n += 1;
        }
    }
    assert!(n >= 7);
}

/// A client-role channel fed the server's frames of each scenario acks them
/// with payloads identical to the plugin's acks (same key order, same id text).
#[test]
fn client_channel_acks_like_the_plugin() {
    let now = Instant::now();
    for f in all_files().into_iter().filter(|f| f != "api-http.jsonl") {
        let records = load(&f);
        let mut ch = ReliableChannel::new(ChannelConfig::new(Role::Client));
        let mut ours = std::collections::HashSet::new();
        let mut delivered = Vec::new();
        for r in records
            .iter()
            .filter(|r| r.kind == "binary" && r.dir == "server->plugin")
        {
            ch.handle_bytes(Bytes::from(r.raw.clone()), now).unwrap();
            while let Some(out) = ch.poll_transmit(now) {
                let ack = decode(out, &DecodeOptions::default()).unwrap();
                assert_eq!(ack.message_type, MessageType::Acknowledge);
                assert_eq!(
                    (ack.sequence_number, ack.flags, ack.payload_type),
                    (0, 3, PayloadType::NONE)
                );
                ours.insert(ack.payload);
            }
            while let Some(ev) = ch.poll_event() {
                if let Event::Data { payload, .. } = ev {
                    delivered.push(payload);
                }
            }
        }
        let mut checked = 0;
        for r in records
            .iter()
            .filter(|r| r.kind == "binary" && r.dir == "plugin->server")
        {
            let frame = decode(Bytes::from(r.raw.clone()), &DecodeOptions::default()).unwrap();
            if frame.message_type == MessageType::Acknowledge {
                assert!(
                    ours.contains(&frame.payload),
                    "{f}: plugin ack {:?} not produced by the channel",
                    String::from_utf8_lossy(&frame.payload)
                );
                checked += 1;
            }
        }
        assert!(checked > 0, "{f}");
        // Every output frame is delivered exactly once, in sequence order.
        assert_eq!(delivered.len() as i64, ch.expected_sequence(), "{f}");
    }
}

/// An agent-role channel fed the plugin's frames delivers the input stream in
/// order, exactly once, and acks every frame including the plugin's resends.
#[test]
fn agent_channel_consumes_plugin_input() {
    let now = Instant::now();
    for f in all_files() {
        let records = load(&f);
        let mut ch = ReliableChannel::new(ChannelConfig::new(Role::Agent));
        let mut inputs = std::collections::BTreeMap::new();
        let mut acks = 0;
        let mut stream_frames = 0;
        for r in records
            .iter()
            .filter(|r| r.kind == "binary" && r.dir == "plugin->server")
        {
            let frame = decode(Bytes::from(r.raw.clone()), &DecodeOptions::default()).unwrap();
            if frame.message_type == MessageType::InputStreamData {
                inputs.insert(frame.sequence_number, frame.payload.clone());
                stream_frames += 1;
            }
            ch.handle_frame(frame, now);
            while let Some(out) = ch.poll_transmit(now) {
                let ack = decode(out, &DecodeOptions::default()).unwrap();
                assert_eq!(ack.message_type, MessageType::Acknowledge);
                acks += 1;
            }
        }
        assert_eq!(
            acks, stream_frames,
            "{f}: every input frame (and resend) acked"
        );
        let mut delivered = Vec::new();
        while let Some(ev) = ch.poll_event() {
            if let Event::Data { payload, .. } = ev {
                delivered.push(payload);
            }
        }
        let expected: Vec<Bytes> = inputs.into_values().collect();
        assert_eq!(delivered, expected, "{f}");
    }
}
