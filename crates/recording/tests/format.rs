//! The recording format end to end: write chunks with a Recorder, export, parse, verify, and the
//! attacker's cases (altered, missing, reordered, foreign, forged, garbage).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use airlock_recording::*;

const SEED: [u8; 32] = [7; 32];

fn meta() -> Meta {
    Meta {
        session: "alice-0123456789abcdef0".into(),
        target: "mi-0123456789abcdef0".into(),
        owner: "alice".into(),
        document: "SSM-SessionManagerRunShell".into(),
        width: 80,
        height: 24,
        timestamp: 1_764_900_000,
        term: "xterm-256color".into(),
    }
}

/// Writes `n` chunks of output, each with a couple of events, and the manifest.
type Written = (Vec<(u64, Vec<u8>)>, Vec<u8>, String);

fn record(n: usize) -> Written {
    let mut r = Recorder::new(&meta(), &SEED);
    let mut chunks = Vec::new();
    let mut seen = String::new();
    for i in 0..n {
        let text = format!("line {i} héllo\r\n");
        r.event(i as f64 + 0.25, EventKind::Output, text.as_bytes());
        seen.push_str(&text);
        if i + 1 < n {
            let c = r.flush().unwrap();
            assert_eq!(c.index, i as u64);
            chunks.push((c.index, c.bytes));
        }
    }
    let (last, manifest) = r.finish(n as f64, "2026-12-05T09:00:00Z", "exit 0");
    if let Some(c) = last {
        chunks.push((c.index, c.bytes));
    }
    (chunks, manifest.to_bytes(), seen)
}

fn key() -> [u8; 32] {
    public_key(&SEED)
}

#[test]
fn intact_recording_verifies_and_exports_what_was_seen() {
    let (chunks, manifest, seen) = record(5);
    assert_eq!(chunks.len(), 5);
    let report = verify(&chunks, Some(&manifest), &key());
    assert!(report.ok(), "{report}");
    assert!(report.sealed);
    assert_eq!(report.chunks, 5);
    assert_eq!(report.session, "alice-0123456789abcdef0");

    let bodies: Vec<Vec<u8>> = chunks.iter().map(|(_, b)| b.clone()).collect();
    let cast = export(&bodies).unwrap();
    let (header, events) = parse_cast(&cast).unwrap();
    assert_eq!((header.width, header.height), (80, 24));
    assert_eq!(header.timestamp, 1_764_900_000);
    assert_eq!(header.raw["airlock"]["owner"], "alice");
    assert_eq!(header.raw["env"]["TERM"], "xterm-256color");
    let out: String = events.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(out, seen);
    assert_eq!(events[1].t, 1.25);
}

#[test]
fn chain_links_each_chunk_to_the_previous() {
    let (chunks, _, _) = record(3);
    use sha2_hex::sha256_hex;
    for w in chunks.windows(2) {
        let head: serde_json::Value = serde_json::from_str(
            std::str::from_utf8(&w[1].1)
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        // Version 2 chains the previous chunk's header line (which holds its body's hash).
        assert_eq!(head["v"], 2);
        let prev_head = w[0].1.split(|&b| b == b'\n').next().unwrap();
        assert_eq!(head["prev"], sha256_hex(prev_head));
    }
    let head0: serde_json::Value = serde_json::from_str(
        std::str::from_utf8(&chunks[0].1)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(head0["prev"], "0".repeat(64));
    assert_eq!(head0["sig"].as_str().unwrap().len(), 128);
}

mod sha2_hex {
    pub fn sha256_hex(b: &[u8]) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b))
    }
}

#[test]
fn flipped_byte_in_body_is_named() {
    let (mut chunks, manifest, _) = record(5);
    let last = chunks[2].1.len() - 3;
    chunks[2].1[last] ^= 0x01;
    let report = verify(&chunks, Some(&manifest), &key());
    assert_eq!(
        report.problems.first(),
        Some(&Problem::Altered { index: 2 })
    );
    assert!(!report.ok());
    assert!(
        report.to_string().contains("chunk 2 was altered"),
        "{report}"
    );
}

#[test]
fn flipped_byte_in_header_is_named() {
    let (mut chunks, manifest, _) = record(4);
    // Change the index digit inside the signed header: the signature no longer holds.
    let text = String::from_utf8(chunks[1].1.clone()).unwrap();
    let forged = text.replacen("\"index\":1", "\"index\":2", 1);
    chunks[1].1 = forged.into_bytes();
    let report = verify(&chunks, Some(&manifest), &key());
    assert_eq!(
        report.problems.first(),
        Some(&Problem::BadSignature { index: 1 })
    );
}

#[test]
fn removed_chunk_is_named_and_removed_tail_needs_the_manifest() {
    let (chunks, manifest, _) = record(5);
    let mut gap = chunks.clone();
    gap.remove(3);
    let report = verify(&gap, Some(&manifest), &key());
    assert_eq!(report.problems, vec![Problem::Missing { index: 3 }]);
    assert!(report.to_string().contains("chunk 3 is missing"));

    let mut tail = chunks.clone();
    tail.pop();
    let report = verify(&tail, Some(&manifest), &key());
    assert_eq!(report.problems, vec![Problem::Missing { index: 4 }]);
    // Without a manifest the tail cut is invisible; the report says the recording is unsealed.
    let report = verify(&tail, None, &key());
    assert_eq!(report.problems, vec![Problem::Unsealed]);
    assert!(report.ok_so_far() && !report.ok());
}

#[test]
fn swapped_chunks_are_named_reordered() {
    let (mut chunks, manifest, _) = record(5);
    let a = chunks[1].1.clone();
    chunks[1].1 = chunks[3].1.clone();
    chunks[3].1 = a;
    let report = verify(&chunks, Some(&manifest), &key());
    assert_eq!(
        report.problems.first(),
        Some(&Problem::Reordered {
            index: 3,
            found_at: 1
        })
    );
    assert!(report.problems.contains(&Problem::Reordered {
        index: 1,
        found_at: 3
    }));
    // Fetched in a shuffled order but each under its right index: fine.
    let (mut chunks, manifest, _) = record(4);
    chunks.reverse();
    assert!(verify(&chunks, Some(&manifest), &key()).ok());
}

#[test]
fn other_key_other_session_and_forged_manifest_fail() {
    let (chunks, manifest, _) = record(3);
    let other = public_key(&[9; 32]);
    let report = verify(&chunks, Some(&manifest), &other);
    assert_eq!(
        report.problems.first(),
        Some(&Problem::BadSignature { index: 0 })
    );
    assert!(matches!(
        report.problems.last(),
        Some(Problem::BadManifest(_))
    ));

    // A chunk from another session (validly signed) spliced in.
    let mut m2 = meta();
    m2.session = "mallory-0000000000000000f".into();
    let mut r = Recorder::new(&m2, &SEED);
    r.event(0.1, EventKind::Output, b"x");
    let _ = r.flush();
    r.event(0.2, EventKind::Output, b"y");
    let foreign = r.flush().unwrap();
    let mut spliced = chunks.clone();
    spliced[1].1 = foreign.bytes;
    let report = verify(&spliced, Some(&manifest), &key());
    assert_eq!(
        report.problems.first(),
        Some(&Problem::Altered { index: 1 })
    );

    // A manifest edited to drop the last chunk fails its signature.
    let mut m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    m["chunks"] = 2.into();
    m["hashes"].as_array_mut().unwrap().pop();
    let report = verify(&chunks, Some(m.to_string().as_bytes()), &key());
    assert!(matches!(
        report.problems.first(),
        Some(Problem::BadManifest(_))
    ));
}

#[test]
fn appended_chunk_after_sealing_is_reported() {
    let (mut chunks, manifest, _) = record(2);
    // Re-create the recording with one more chunk (same key), keep the old manifest.
    let (longer, _, _) = record(3);
    chunks.push(longer[2].clone());
    let report = verify(&chunks, Some(&manifest), &key());
    assert!(!report.ok());
}

#[test]
fn garbage_never_panics() {
    let k = key();
    let inputs: Vec<Vec<u8>> = vec![
        vec![],
        b"\n".to_vec(),
        vec![0xff, 0xfe, b'\n'],
        b"{\"v\":1}\nbody".to_vec(),
        b"[1,2,3]\n".to_vec(),
        b"{\"v\":1,\"session\":\"s\",\"index\":0,\"prev\":\"zz\",\"body\":\"\",\"sig\":\"00\"}\n"
            .to_vec(),
    ];
    for i in &inputs {
        let chunks = vec![(0u64, i.clone()), (u64::MAX, i.clone())];
        let r = verify(&chunks, Some(i), &k);
        assert!(!r.ok());
        let _ = export(std::slice::from_ref(i));
        let _ = parse_cast(&String::from_utf8_lossy(i));
    }
    // A forged manifest claiming 2^64-1 chunks must not loop forever (and is not signed anyway).
    let m = serde_json::json!({"v":1,"session":"s","chunks":u64::MAX,"last":"00","hashes":[],"ended":"","reason":"","recovered":false,"sig":"00"});
    assert!(!verify(&[], Some(m.to_string().as_bytes()), &k).ok());
    // An invalid public key.
    let (chunks, manifest, _) = record(1);
    let mut bad = [0u8; 32];
    bad[31] = 0x80;
    bad[0] = 2;
    let _ = verify(&chunks, Some(&manifest), &bad);
}

#[test]
fn utf8_split_across_frames_and_invalid_bytes() {
    let mut r = Recorder::new(&meta(), &SEED);
    let word = "naïve 😀 ok";
    let mut events = Vec::new();
    for (i, b) in word.as_bytes().iter().enumerate() {
        if let Some(e) = r.event(i as f64 * 0.01, EventKind::Output, std::slice::from_ref(b)) {
            events.push(e);
        }
    }
    assert_eq!(
        events.iter().map(|e| e.data.as_str()).collect::<String>(),
        word
    );
    r.event(1.0, EventKind::Output, b"bad\xff\xfe!");
    r.event(1.1, EventKind::Output, b"\xe2\x82"); // half a euro sign at the end
    let (last, manifest) = r.finish(2.0, "2026-12-05T09:00:00Z", "closed");
    let chunks = vec![(0, last.unwrap().bytes)];
    assert!(verify(&chunks, Some(&manifest.to_bytes()), &key()).ok());
    let cast = export(&[chunks[0].1.clone()]).unwrap();
    let (_, evs) = parse_cast(&cast).unwrap();
    let all: String = evs.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(all, format!("{word}bad\u{FFFD}\u{FFFD}!\u{FFFD}"));
}

#[test]
fn resize_and_input_events_round_trip() {
    let mut r = Recorder::new(&meta(), &SEED);
    r.event(0.5, EventKind::Input, b"ls\r");
    r.event(0.6, EventKind::Resize, b"120x40");
    r.event(0.7, EventKind::Output, b"a\"b\\c\x1b[0m\n");
    r.marker(0.8, "spool full");
    let c = r.flush().unwrap();
    let cast = export(&[c.bytes]).unwrap();
    let (_, evs) = parse_cast(&cast).unwrap();
    assert_eq!(evs.len(), 3, "the marker is skipped");
    assert_eq!(evs[0].kind, EventKind::Input);
    assert_eq!(
        evs[1],
        Event {
            t: 0.6,
            kind: EventKind::Resize,
            data: "120x40".into()
        }
    );
    assert_eq!(evs[2].data, "a\"b\\c\x1b[0m\n");
}

#[test]
fn parse_cast_errors_name_the_line() {
    let text = "{\"version\":2,\"width\":80,\"height\":24}\n[0.1,\"o\",\"x\"]\n[0.2,\"o\"]\n";
    assert_eq!(
        parse_cast(text).unwrap_err(),
        FormatError::Line {
            line: 3,
            reason: "event is not [time, code, data]".into()
        }
    );
    let err = parse_cast("{\"version\":1,\"width\":80,\"height\":24}\n").unwrap_err();
    assert!(err.to_string().starts_with("line 1:"), "{err}");
    assert_eq!(parse_cast("\n\n").unwrap_err(), FormatError::Empty);
    assert!(parse_cast("{\"version\":2,\"width\":80,\"height\":24}\n[-1,\"o\",\"x\"]").is_err());
    assert!(parse_cast("{\"version\":2,\"width\":99999,\"height\":24}").is_err());
}

#[test]
fn crash_recovery_seals_the_valid_prefix() {
    let mut r = Recorder::new(&meta(), &SEED);
    let mut stored = Vec::new();
    for i in 0..4 {
        r.event(i as f64, EventKind::Output, format!("{i}\n").as_bytes());
        let c = r.flush().unwrap();
        stored.push((c.index, c.bytes));
    }
    // The crash tore chunk 3's write.
    stored[3].1.truncate(10);
    let m = seal_stored(
        "alice-0123456789abcdef0",
        &stored,
        "2026-12-05T09:00:00Z",
        "server restarted",
        &SEED,
    );
    assert!(m.recovered);
    assert_eq!(m.chunks, 3);
    stored.truncate(3);
    let report = verify(&stored, Some(&m.to_bytes()), &key());
    assert!(report.ok(), "{report}");
    // Nothing stored at all: an empty sealed recording.
    let m = seal_stored("s", &[], "2026-12-05T09:00:00Z", "server restarted", &SEED);
    assert_eq!(m.chunks, 0);
    assert!(verify(&[], Some(&m.to_bytes()), &key()).ok());
}

#[test]
fn big_output_is_flushed_at_the_target_size() {
    let mut r = Recorder::new(&meta(), &SEED);
    let block = vec![b'x'; 64 * 1024];
    let mut n = 0;
    while !r.should_flush() {
        r.event(0.1, EventKind::Output, &block);
        n += 1;
    }
    assert!(n <= 5);
    assert!(r.flush().unwrap().bytes.len() >= CHUNK_TARGET_BYTES);
    assert!(r.flush().is_none(), "nothing pending: no empty chunk");
}

fn ev(kind: EventKind, data: &str) -> Event {
    Event {
        t: 0.0,
        kind,
        data: data.into(),
    }
}

#[test]
fn transcript_strips_escapes_and_applies_backspaces() {
    let events = vec![
        ev(
            EventKind::Output,
            "\x1b]0;alice@host: ~\x07\x1b[01;32malice@host\x1b[00m:~$ ",
        ),
        ev(EventKind::Input, "lx\x7fs -l\r"),
        ev(EventKind::Output, "lx\x08 \x08s -l\r\n"),
        ev(
            EventKind::Output,
            "total 0\r\nprogress 10%\rprogress 100%\r\n",
        ),
        ev(EventKind::Resize, "100x30"),
        ev(EventKind::Output, "abc\x08\x08\x1b[Kend\r\n"),
        ev(EventKind::Output, "tail without newline"),
    ];
    let t = transcript(&events, false);
    assert_eq!(
        t,
        "alice@host:~$ ls -l\ntotal 0\nprogress 100%\naend\ntail without newline\n"
    );
    let t = transcript(&events, true);
    assert!(t.contains("> ls -l\n"), "{t}");
    assert_eq!(transcript(&[], true), "");
}

#[test]
fn event_lines_escape_exactly_as_json_requires() {
    let mut samples: Vec<String> = (0u32..0x80)
        .filter_map(char::from_u32)
        .map(|c| format!("a{c}b"))
        .collect();
    samples.extend(
        [
            "",
            "\u{7f}\u{80}\u{2028}\u{FFFD}😀",
            "\"\\\"\\",
            "\x1b[0m\r\n",
        ]
        .map(String::from),
    );
    for s in samples {
        let ev = Event {
            t: 1.5,
            kind: EventKind::Output,
            data: s.clone(),
        };
        let line = ev.line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v[2], serde_json::Value::String(s.clone()), "{line}");
        assert_eq!(line, serde_json::json!([1.5, "o", s]).to_string());
    }
}
