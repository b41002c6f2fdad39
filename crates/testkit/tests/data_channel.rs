//! Bad input on the data channel, over raw WebSockets: tokens that are unknown, reused, expired
//! or for another session; a first message that is not the open message; malformed frames, a
//! frame with a bad digest and frames only the gateway may send, from a live client. Each is
//! refused with a readable close reason or dropped, is logged, and leaves the session and the
//! server working.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use airlock_client::session::SessionOptions;
use airlock_proto::{AirlockCapabilities, Frame, MessageType, PayloadType, FRAME_HEADER_LEN};
use airlock_testkit::{eventually, TestAgent, TestServer, TestSession};
use common::{
    assert_refused, capture_logs, expect_close, open_message, wait_log_line, ws_connect, RawClient,
};

const T: Duration = Duration::from_secs(15);

async fn setup() -> (TestServer, TestAgent) {
    capture_logs();
    let server = TestServer::start().await;
    let agent = server.agent().await;
    (server, agent)
}

/// A fresh session with the real client on it, proven to work.
async fn working_session(server: &TestServer, agent: &TestAgent) -> TestSession {
    let mut s =
        TestSession::start(&server.api(), &agent.instance_id, SessionOptions::default()).await;
    s.send("echo ok-$((5+5))\n").await;
    s.expect("ok-10", T).await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_token_is_refused_with_a_reason() {
    let (server, agent) = setup().await;
    let grant = server
        .api()
        .start_session(&json!({ "Target": agent.instance_id }))
        .await
        .unwrap();
    assert_refused(
        &grant.stream_url,
        "bm90LWEtdG9rZW4tYW55LXNlcnZlci1pc3N1ZWQtZXZlcg",
        "unknown or already used token",
    )
    .await;
    wait_log_line(&[
        &grant.session_id,
        "data channel refused",
        "unknown or already used token",
    ])
    .await;
    // An empty token, and one for a session that does not exist.
    assert_refused(&grant.stream_url, "", "unknown or already used token").await;
    let nowhere = grant
        .stream_url
        .replace(&grant.session_id, "admin-0000000000000000");
    assert_refused(&nowhere, &grant.token_value, "").await;

    // The refused attempts did not touch the session: the real client uses its token now.
    // (The one above on another session's URL spent it, so ask for a fresh session.)
    let s = working_session(&server, &agent).await;
    s.send("exit\n").await;
    s.finish(T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_works_once() {
    let (server, agent) = setup().await;
    let s = working_session(&server, &agent).await;
    // The client's token has been used; using it again is refused, and the session goes on.
    assert_refused(
        &s.grant.stream_url,
        &s.grant.token_value,
        "unknown or already used token",
    )
    .await;
    let mut s = s;
    s.send("echo still-$((1+2))\n").await;
    s.expect("still-3", T).await;
    s.send("exit 4\n").await;
    let (outcome, _) = s.finish(T).await;
    assert_eq!(outcome.exit_code, Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_session_is_refused() {
    let (server, agent) = setup().await;
    let api = server.api();
    let a = api
        .start_session(&json!({ "Target": agent.instance_id }))
        .await
        .unwrap();
    let b = api
        .start_session(&json!({ "Target": agent.instance_id }))
        .await
        .unwrap();
    assert_refused(
        &b.stream_url,
        &a.token_value,
        "token does not belong to this session",
    )
    .await;
    wait_log_line(&[&b.session_id, "token does not belong to this session"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused() {
    capture_logs();
    let ttl = Duration::from_millis(300);
    let server = TestServer::start_with(|c| c.token_ttl = ttl).await;
    let agent = server.agent().await;
    let grant = server
        .api()
        .start_session(&json!({ "Target": agent.instance_id }))
        .await
        .unwrap();
    // The token was issued before this answer arrived: wait out its lifetime from here;
    // nothing shorter can test expiry.
    tokio::time::sleep(ttl + Duration::from_millis(20)).await;
    assert_refused(&grant.stream_url, &grant.token_value, "token expired").await;
    wait_log_line(&[&grant.session_id, "token expired"]).await;

    // A token used within its lifetime works on the same server.
    let s = working_session(&server, &agent).await;
    s.send("exit\n").await;
    s.finish(T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_message_must_be_the_open_text() {
    let (server, agent) = setup().await;
    let grant = server
        .api()
        .start_session(&json!({ "Target": agent.instance_id }))
        .await
        .unwrap();

    // Binary first, even when it holds the right open message.
    let mut ws = ws_connect(&grant.stream_url).await;
    let Message::Text(open) = open_message(&grant.token_value) else {
        unreachable!()
    };
    ws.send(Message::Binary(Bytes::from(open.as_str().to_owned())))
        .await
        .unwrap();
    let (code, reason) = expect_close(&mut ws).await.expect("a close frame");
    assert_eq!(code, CloseCode::Policy);
    assert!(
        reason.contains("first message must be a text frame"),
        "{reason}"
    );
    wait_log_line(&[&grant.session_id, "first message must be a text frame"]).await;

    // Text that is not an open message.
    for (text, why) in [
        ("hello", "malformed open message"),
        ("{\"TokenValue\": 5}", "malformed open message"),
        ("{}", "unknown or already used token"),
    ] {
        let mut ws = ws_connect(&grant.stream_url).await;
        ws.send(Message::Text(text.into())).await.unwrap();
        let (code, reason) = expect_close(&mut ws).await.expect("a close frame");
        assert_eq!(code, CloseCode::Policy);
        assert!(reason.contains(why), "{text}: {reason}");
    }

    // The token was not spent by any of that: it still opens the session.
    let mut c = RawClient::connect(&grant, None).await;
    c.pump_until(T, |c| c.ready).await;
    c.type_text("echo raw-$((4*4))\n");
    c.expect("raw-16").await;
}

/// Bytes that are not frames at all, or frames the decoder must refuse.
fn malformed_frames(seq: i64) -> Vec<Bytes> {
    let good = Frame::new(
        MessageType::InputStreamData,
        seq,
        0,
        PayloadType::OUTPUT,
        Bytes::from_static(b"echo MALFORMED-$((9*9))\n"),
    )
    .encode(true);
    let mut out = vec![
        Bytes::new(),
        Bytes::from_static(b"x"),
        Bytes::from(vec![0u8; FRAME_HEADER_LEN - 1]),
        Bytes::from(vec![0xffu8; FRAME_HEADER_LEN + 10]),
        Bytes::from(vec![0u8; 4096]),
    ];
    // Valid frame with its header length field wrong.
    let mut bad_len = good.to_vec();
    bad_len[0..4].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
    out.push(Bytes::from(bad_len));
    // A PayloadLength that disagrees with the bytes.
    let mut bad_plen = good.to_vec();
    bad_plen[116..120].copy_from_slice(&3u32.to_be_bytes());
    out.push(Bytes::from(bad_plen));
    // A zero CreatedDate.
    let mut zero_date = good.to_vec();
    zero_date[40..48].copy_from_slice(&[0; 8]);
    out.push(Bytes::from(zero_date));
    // A message type that is not ASCII.
    let mut bad_type = good.to_vec();
    bad_type[4..8].copy_from_slice(&[0xc3, 0x28, 0xa0, 0xa1]);
    out.push(Bytes::from(bad_type));
    // Truncated in the middle of the payload.
    out.push(good.slice(..good.len() - 5));
    out
}

/// A frame of typed input whose digest does not match its payload.
fn bad_digest_frame(seq: i64, text: &str) -> Bytes {
    let mut raw = Frame::new(
        MessageType::InputStreamData,
        seq,
        0,
        PayloadType::OUTPUT,
        Bytes::copy_from_slice(text.as_bytes()),
    )
    .encode(true)
    .to_vec();
    raw[80] ^= 0x55;
    raw[111] ^= 0x01;
    Bytes::from(raw)
}

async fn garbage_then_still_working(caps: Option<AirlockCapabilities>) {
    let (server, agent) = setup().await;
    let grant = server
        .api()
        .start_session(&json!({ "Target": agent.instance_id }))
        .await
        .unwrap();
    let mut c = RawClient::connect(&grant, caps).await;
    c.pump_until(T, |c| c.ready && !c.out.is_empty()).await;
    assert_eq!(c.agreed.is_some(), caps.is_some());
    assert_eq!(c.ch.config().digest, caps.is_none_or(|c| c.digest));

    let seq = c.ch.next_send_sequence();
    for raw in malformed_frames(seq) {
        c.send_raw(Message::Binary(raw)).await;
    }
    // Text after the open message, and a frame carrying the sequence number the agent expects
    // next with a payload that does not match its digest.
    c.send_raw(Message::Text("{\"not\": \"a frame\"}".into()))
        .await;
    c.send_raw(Message::Binary(bad_digest_frame(
        seq,
        "echo BADDIGEST-$((7*3))\n",
    )))
    .await;
    wait_log_line(&[&grant.session_id, "dropping a malformed frame"]).await;

    // The session goes on: the next real frame takes that same sequence number, so had the
    // agent accepted the bad one, this one would be a duplicate and never run.
    c.type_text("echo GOOD-$((40+2))\n");
    c.expect("GOOD-42").await;
    let text = c.text();
    assert!(
        !text.contains("BADDIGEST-21"),
        "the bad-digest frame reached the shell: {text:?}"
    );
    assert!(
        !text.contains("MALFORMED-81"),
        "a malformed frame reached the shell: {text:?}"
    );
    assert!(c.closed.is_none());

    // The server serves others all along.
    let s = working_session(&server, &agent).await;
    s.send("exit\n").await;
    s.finish(T).await;

    // And this session still ends normally.
    c.type_text("exit 5\n");
    c.pump_until(T, |c| c.closed.is_some()).await;
    let done = server.wait_history(&grant.session_id).await;
    assert_eq!(done["Status"], "Terminated", "{done}");
    assert_eq!(done["ExitCode"], 5, "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_bad_digest_frames_from_a_plugin_like_client_are_dropped() {
    // No Airlock capabilities: the AWS plugin's protocol, digests on.
    garbage_then_still_working(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_bad_digest_frames_from_an_airlock_client_are_dropped() {
    // Airlock peers negotiate digests away (zeros on the wire); a frame that carries a digest
    // anyway must still match it.
    let caps = AirlockCapabilities {
        version: AirlockCapabilities::VERSION,
        max_payload: 64 * 1024,
        window: 64,
        digest: false,
        exit_code: true,
        ..AirlockCapabilities::default()
    };
    garbage_then_still_working(Some(caps)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_send_what_only_the_gateway_sends() {
    let (server, agent) = setup().await;
    let grant = server
        .api()
        .start_session(&json!({ "Target": agent.instance_id }))
        .await
        .unwrap();
    let mut c = RawClient::connect(&grant, None).await;
    c.pump_until(T, |c| c.ready && !c.out.is_empty()).await;
    // channel_closed and publication control from the client would end or stall the agent's
    // side; the gateway must not relay them.
    let closed = airlock_proto::ChannelClosed::new(&grant.session_id, "agent", "forged");
    for f in [
        closed.to_frame(),
        Frame::new(
            MessageType::PausePublication,
            0,
            0,
            PayloadType::NONE,
            Bytes::from_static(b"x"),
        ),
    ] {
        c.send_raw(Message::Binary(f.encode(true))).await;
    }
    c.type_text("echo alive-$((6+6))\n");
    c.expect("alive-12").await;
    assert!(c.closed.is_none());
    let active = server.session("Active", &grant.session_id).await;
    assert_eq!(active.expect("still active")["Status"], "Connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_closes_only_that_connection() {
    let (server, agent) = setup().await;
    let grant = server
        .api()
        .start_session(&json!({ "Target": agent.instance_id }))
        .await
        .unwrap();
    let mut c = RawClient::connect(&grant, None).await;
    c.pump_until(T, |c| c.ready && !c.out.is_empty()).await;
    let huge = Bytes::from(vec![
        b'a';
        airlock_server::gateway::data::MAX_DATA_MESSAGE + 1
    ]);
    // The server may close while we are still writing; either way the socket must end.
    let _ = c.ws.send(Message::Binary(huge)).await;
    let ended = tokio::time::timeout(T, async {
        loop {
            match c.ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| f.code),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the server closes the oversized connection");
    if let Some(code) = ended {
        assert_eq!(code, CloseCode::Size);
    }
    wait_log_line(&[&grant.session_id, "Client", "data channel closed"]).await;

    // Only the client's connection went: the session waits to be resumed, and resuming
    // (a new token on the same StreamUrl, sequence state kept) carries on where it was.
    eventually("the session to be Disconnected", T, || async {
        server
            .session("Active", &grant.session_id)
            .await
            .filter(|s| s["Status"] == "Disconnected")
    })
    .await;
    let resumed = server
        .api()
        .resume_session(&grant.session_id)
        .await
        .unwrap();
    c.reopen(&grant.stream_url, &resumed.token_value).await;
    c.type_text("echo resumed-$((8*8))\n");
    c.expect("resumed-64").await;

    // Others are served all along.
    let s = working_session(&server, &agent).await;
    s.send("exit\n").await;
    s.finish(T).await;
}
