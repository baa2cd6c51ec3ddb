//! VoicePing's own push-to-talk flows, replayed against the real binary in VoicePing's frame
//! shapes (five-element `[channelType, type, fromId, toId, payload]` arrays as notepack
//! writes them, payload at index 4), on every engine and across two routers: group and
//! private talk, the acks, busy, receipts, the private channel to oneself, text, the idle
//! takeover and the quiet after the maximum-talk cut.

mod common;

use common::{Client, Engine, Router, Setup, map, prometheus::metric};
use presence_router::protocol::message_type::{
    AUDIO, DELIVERED, HEARTBEAT_ACK, INDICATOR_UPDATE, READ, START, START_ACK, START_FAILED, STOP, STOP_ACK, TEXT,
    TEXT_ACK,
};
use rmpv::Value;

on_every_engine!(
    group_talk_and_text_in_voicepings_shapes,
    private_talk_and_receipts_in_voicepings_shapes,
    a_busy_floor_answers_voicepings_start_failed,
    a_start_on_another_channel_moves_the_talk,
    the_sdks_connect_sequence_leaves_the_user_free_to_talk,
    a_refused_start_is_answered_as_voiceping_did,
    every_frame_shape_is_relayed_as_sent,
    talking_to_oneself_reaches_every_session_of_the_user,
    receipts_follow_the_private_channel_rules,
    an_idle_talker_loses_the_floor_to_the_next_start,
    a_talker_sending_audio_keeps_the_floor,
    audio_after_the_maximum_talk_cut_is_dropped_without_errors,
);

/// Two routers on one Redis (or Redis Cluster).
mod cross_routers {
    use super::{an_idle_talker_on_another_router_loses_the_floor, voicepings_flows_cross_routers};
    crate::on_shared_engines!(voicepings_flows_cross_routers, an_idle_talker_on_another_router_loses_the_floor);
}

const GROUP: u8 = 0;
const PRIVATE: u8 = 1;

/// `[channelType, type, fromId, toId, payload]`, as a VoicePing app sends it.
fn vp(channel: u8, message_type: u8, from: &str, to: &str, payload: Value) -> Value {
    Value::Array(vec![channel.into(), message_type.into(), from.into(), to.into(), payload])
}

/// A START's payload as VoicePing apps send it: `Date.now()`, a uint64 in notepack.
fn timestamp() -> Value {
    Value::from(presence_router::presence::unix_ms())
}

fn audio(n: u8) -> Value {
    Value::Binary(vec![n; 160])
}

/// The next frame that is not an INDICATOR_UPDATE: `talking` starts and ends travel apart
/// from the talk's frames (the old and the new talker's may interleave with them), and
/// are not what this file tests.
async fn next(client: &mut Client) -> Value {
    loop {
        let frame = client.next_frame().await;
        if frame[1].as_u64() != Some(INDICATOR_UPDATE.into()) {
            return frame;
        }
    }
}

/// The next frame (indicators aside), asserting its message type.
async fn expect(client: &mut Client, message_type: u8) -> Value {
    let frame = next(client).await;
    assert_eq!(frame[1].as_u64(), Some(message_type.into()), "expected type {message_type}, got {frame}");
    frame
}

/// Heartbeats and asserts that nothing but indicators came before its ACK: nothing else
/// reached `client` from what was sent before.
async fn quiet(client: &mut Client, user: &str) {
    client.heartbeat(user).await;
    expect(client, HEARTBEAT_ACK).await;
}

/// The next frame (indicators aside), asserting VoicePing's five-element shape, its channel
/// type, message type and ids.
async fn expect_vp(client: &mut Client, channel: u8, message_type: u8, from: &str, to: &str) -> Value {
    let frame = expect(client, message_type).await;
    let items = frame.as_array().unwrap();
    assert_eq!(items.len(), 5, "a five-element frame: {frame}");
    assert_eq!(items[0].as_u64(), Some(channel.into()), "{frame}");
    assert_eq!((id(&items[2]), id(&items[3])), (from.into(), to.into()), "{frame}");
    frame
}

/// The next frame, asserting the router's six-element layout, its channel type, message
/// type and ids; VoicePing's acks carry the message id at index 4.
async fn expect_six(client: &mut Client, channel: u8, message_type: u8, from: &str, to: &str) -> Value {
    let frame = expect(client, message_type).await;
    assert_eq!(frame.as_array().unwrap().len(), 6, "a six-element frame: {frame}");
    assert_eq!(frame[0].as_u64(), Some(channel.into()), "{frame}");
    assert_eq!((id(&frame[2]), id(&frame[3])), (from.into(), to.into()), "{frame}");
    frame
}

/// An id as text: the router writes ids as strings, and its own fromId as the integer 0.
fn id(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_owned)
}

/// The JSON object a VoicePing payload string holds.
fn json(payload: &Value) -> serde_json::Value {
    serde_json::from_str(payload.as_str().unwrap_or_else(|| panic!("a JSON string payload: {payload}"))).unwrap()
}

/// A STOP's receivers get VoicePing's `{duration, message_id}`; the STOP_ACK's message id
/// (index 4) is the same, VoicePing's `{channelType}_3_{toId}_{fromId}…`.
async fn talk_ends(talker: &mut Client, listeners: &mut [&mut Client], channel: u8, from: &str, to: &str) -> String {
    talker.send_value(vp(channel, STOP, from, to, timestamp())).await;
    let ack = expect_six(talker, channel, STOP_ACK, from, to).await;
    let id = ack[4].as_str().unwrap().to_owned();
    assert!(id.starts_with(&format!("{channel}_3_{to}_{from}_")), "VoicePing's message id: {id}");
    for listener in listeners {
        let stop = expect_vp(listener, channel, STOP, from, to).await;
        let content = json(&stop[4]);
        assert_eq!(content["message_id"].as_str(), Some(id.as_str()), "{content}");
        assert!(content["duration"].as_u64().is_some(), "{content}");
    }
    id
}

/// VoicePing's test users 1, 2 and 3, in its test group 18.
async fn voicepings_users(router: &Router) -> (Client, Client, Client) {
    (router.mobile_in("1", &["18"]).await, router.mobile_in("2", &["18"]).await, router.mobile_in("3", &["18"]).await)
}

/// group.test.js: START, AUDIO, STOP and TEXT in a group, each frame as VoicePing's tests
/// read it.
async fn group_talk_and_text_in_voicepings_shapes(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut one, mut two, mut three) = voicepings_users(&router).await;

    let start = timestamp();
    one.send_value(vp(GROUP, START, "1", "18", start.clone())).await;
    let ack = expect_vp(&mut one, GROUP, START_ACK, "1", "18").await;
    assert_eq!(ack[4].as_str(), Some(start.as_u64().unwrap().to_string().as_str()), "the START's payload, as text");
    for listener in [&mut two, &mut three] {
        assert_eq!(expect_vp(listener, GROUP, START, "1", "18").await[4], start, "relayed as sent");
    }
    one.send_value(vp(GROUP, AUDIO, "1", "18", audio(1))).await;
    for listener in [&mut two, &mut three] {
        assert_eq!(expect_vp(listener, GROUP, AUDIO, "1", "18").await[4], audio(1));
    }
    talk_ends(&mut one, &mut [&mut two, &mut three], GROUP, "1", "18").await;

    let text = serde_json::json!({"message_id": "0_17_18_1_client", "text": "Hello VoicePing"}).to_string();
    one.send_value(vp(GROUP, TEXT, "1", "18", text.into())).await;
    let ack = expect_six(&mut one, GROUP, TEXT_ACK, "1", "18").await;
    let id = ack[4].as_str().unwrap();
    assert!(id.starts_with("0_17_18_1_"), "VoicePing's message id: {id}");
    for listener in [&mut two, &mut three] {
        let content = json(&expect_vp(listener, GROUP, TEXT, "1", "18").await[4]);
        assert_eq!(content, serde_json::json!({"message_id": id, "text": "Hello VoicePing"}));
    }
}

/// private.test.js: a private talk, then the receiver's DELIVERED and READ for its message
/// id reach the talker as sent; a third user hears nothing.
async fn private_talk_and_receipts_in_voicepings_shapes(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut one, mut two, mut three) = voicepings_users(&router).await;

    let start = timestamp();
    one.send_value(vp(PRIVATE, START, "1", "2", start.clone())).await;
    assert_eq!(expect_vp(&mut one, PRIVATE, START_ACK, "1", "2").await[4], start, "the START's payload, as sent");
    assert_eq!(expect_vp(&mut two, PRIVATE, START, "1", "2").await[4], start);
    one.send_value(vp(PRIVATE, AUDIO, "1", "2", audio(2))).await;
    assert_eq!(expect_vp(&mut two, PRIVATE, AUDIO, "1", "2").await[4], audio(2));
    let id = talk_ends(&mut one, &mut [&mut two], PRIVATE, "1", "2").await;

    for receipt in [DELIVERED, READ] {
        two.send_value(vp(PRIVATE, receipt, "2", "1", id.as_str().into())).await;
        assert_eq!(expect_vp(&mut one, PRIVATE, receipt, "2", "1").await[4].as_str(), Some(id.as_str()));
    }
    let text = serde_json::json!({"message_id": "x", "text": "psst"}).to_string();
    one.send_value(vp(PRIVATE, TEXT, "1", "2", text.into())).await;
    let id = expect_six(&mut one, PRIVATE, TEXT_ACK, "1", "2").await[4].as_str().unwrap().to_owned();
    assert!(id.starts_with("1_17_2_1_"), "{id}");
    assert_eq!(json(&expect_vp(&mut two, PRIVATE, TEXT, "1", "2").await[4])["message_id"].as_str(), Some(id.as_str()));
    two.send_value(vp(PRIVATE, READ, "2", "1", id.as_str().into())).await;
    assert_eq!(expect_vp(&mut one, PRIVATE, READ, "2", "1").await[4].as_str(), Some(id.as_str()));
    // Nothing of it reached the third user: its next frame is its own heartbeat's ACK.
    quiet(&mut three, "3").await;
}

/// maximum.idle.test.js's second START: START_FAILED with VoicePing's "Busy", on the
/// START's channel.
async fn a_busy_floor_answers_voicepings_start_failed(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut one = router.mobile_in("1", &["18"]).await;
    let mut two = router.mobile_in("2", &["18"]).await;
    one.send_value(vp(GROUP, START, "1", "18", timestamp())).await;
    expect_vp(&mut one, GROUP, START_ACK, "1", "18").await;
    expect_vp(&mut two, GROUP, START, "1", "18").await;
    two.send_value(vp(GROUP, START, "2", "18", timestamp())).await;
    assert_eq!(expect_vp(&mut two, GROUP, START_FAILED, "2", "18").await[4].as_str(), Some("Busy"));
}

/// A START on another channel moves the session's talk, as VoicePing let it: the talk it
/// held ends first (its listeners hear its STOP, reason `switched`, and its `talking`
/// ends), then the new START is decided as any other: granted, or "Busy" (the ended talk's
/// AUDIO still under way is then dropped without an answer).
async fn a_start_on_another_channel_moves_the_talk(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut one = router.mobile_in("1", &["18", "19"]).await;
    let mut two = router.mobile_in("2", &["18"]).await;
    let mut three = router.mobile_in("3", &["19"]).await;
    one.send_value(vp(GROUP, START, "1", "18", timestamp())).await;
    expect_vp(&mut one, GROUP, START_ACK, "1", "18").await;
    expect_vp(&mut two, GROUP, START, "1", "18").await;
    three.send_value(vp(GROUP, START, "3", "19", timestamp())).await;
    expect_vp(&mut three, GROUP, START_ACK, "3", "19").await;
    expect_vp(&mut one, GROUP, START, "3", "19").await;

    // 19 is busy: one's talk in 18 ends all the same, and the START is refused.
    one.send_value(vp(GROUP, START, "1", "19", timestamp())).await;
    assert_eq!(expect_vp(&mut one, GROUP, START_FAILED, "1", "19").await[4].as_str(), Some("Busy"));
    let stop = json(&expect_vp(&mut two, GROUP, STOP, "1", "18").await[4]);
    assert_eq!(stop["reason"].as_str(), Some("switched"), "{stop}");
    one.send_value(vp(GROUP, AUDIO, "1", "18", audio(1))).await;
    quiet(&mut one, "1").await;
    quiet(&mut two, "2").await;
    talk_ends(&mut three, &mut [&mut one], GROUP, "3", "19").await;

    // Free now: granted, and a START back in 18 moves the talk again.
    one.send_value(vp(GROUP, START, "1", "19", timestamp())).await;
    expect_vp(&mut one, GROUP, START_ACK, "1", "19").await;
    expect_vp(&mut three, GROUP, START, "1", "19").await;
    one.send_value(vp(GROUP, START, "1", "18", timestamp())).await;
    expect_vp(&mut one, GROUP, START_ACK, "1", "18").await;
    let stop = json(&expect_vp(&mut three, GROUP, STOP, "1", "19").await[4]);
    assert_eq!(stop["reason"].as_str(), Some("switched"), "{stop}");
    expect_vp(&mut two, GROUP, START, "1", "18").await;
    for (group, talking) in [("18", serde_json::json!(["1"])), ("19", serde_json::json!([]))] {
        common::eventually("`talking` to follow the talk", || async {
            router.group(group).await["talkingUsers"] == talking
        })
        .await;
    }
    let metrics = router.metrics().await;
    assert_eq!(metric(&metrics, r#"presence_audio_dropped_total{reason="switched"}"#), Some(1), "{metrics}");
}

/// What VoicePing's Android SDK sends on every connect: CONNECTION in three elements
/// `[0, 4, uid]`, then a START on the private channel to user "00000", which it never
/// stops. The CONNECTION is taken without an answer; the START is answered (START_ACK
/// where private channels need no shared group, else ERROR and START_FAILED) and the
/// user talks in its group at once.
async fn the_sdks_connect_sequence_leaves_the_user_free_to_talk(engine: Engine) {
    let setup = Setup::new(engine).await;
    for shared in [false, true] {
        let router = setup.router(&["--private-needs-shared-group", &shared.to_string()]).await;
        let mut one = router.mobile_in("1", &["18"]).await;
        let mut two = router.mobile_in("2", &["18"]).await;
        one.send_value(Value::Array(vec![GROUP.into(), 4.into(), "1".into()])).await;
        one.send_value(vp(PRIVATE, START, "1", "00000", timestamp())).await;
        if shared {
            let error = one.next_error().await;
            assert_eq!(error["code"].as_str(), Some("not_allowed"), "{error}");
            expect_vp(&mut one, PRIVATE, START_FAILED, "1", "00000").await;
        } else {
            expect_vp(&mut one, PRIVATE, START_ACK, "1", "00000").await;
        }
        one.send_value(vp(GROUP, START, "1", "18", timestamp())).await;
        expect_vp(&mut one, GROUP, START_ACK, "1", "18").await;
        expect_vp(&mut two, GROUP, START, "1", "18").await;
        // The floor is the engine's: free it for the next router on it.
        talk_ends(&mut one, &mut [&mut two], GROUP, "1", "18").await;
        let metrics = router.metrics().await;
        assert_eq!(metric(&metrics, r#"presence_frames_received_total{type="ptt_other"}"#), Some(1), "{metrics}");
        assert_eq!(metric(&metrics, r#"presence_frame_errors_total{reason="shape"}"#), Some(0), "{metrics}");
    }
}

/// A START the router refuses gets, after its ERROR, what VoicePing's apps wait for: on a
/// group outside the session's groups VoicePing's UNAUTHORIZED_GROUP (27) and START_FAILED
/// "Ack Failed", else START_FAILED with the ERROR's code, in the START's layout. The AUDIO
/// that follows it on its channel is dropped without an answer (counted) until the next
/// START or STOP, which is answered as usual.
async fn a_refused_start_is_answered_as_voiceping_did(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut one = router.mobile_in("1", &["18"]).await;
    let mut two = router.mobile_in("2", &["18"]).await;
    let _stranger = router.mobile_in("9", &["other"]).await;
    let refused = |error: &Value, code: &str| {
        assert_eq!(
            (error["code"].as_str(), error["messageType"].as_u64()),
            (Some(code), Some(START.into())),
            "{error}"
        );
    };

    one.send_value(vp(GROUP, START, "1", "99", timestamp())).await;
    refused(&one.next_error().await, "not_a_member");
    assert_eq!(expect_vp(&mut one, GROUP, 27, "1", "99").await[4].as_str(), Some("Unauthorized Group"));
    assert_eq!(expect_vp(&mut one, GROUP, START_FAILED, "1", "99").await[4].as_str(), Some("Ack Failed"));
    for n in 0..20 {
        one.send_value(vp(GROUP, AUDIO, "1", "99", audio(n))).await;
    }
    quiet(&mut one, "1").await;
    // The STOP ends the quiet: it is refused as before, and so is AUDIO after it.
    one.send_value(vp(GROUP, STOP, "1", "99", timestamp())).await;
    assert_eq!(one.next_error().await["code"].as_str(), Some("not_a_member"));
    one.send_value(vp(GROUP, AUDIO, "1", "99", audio(0))).await;
    assert_eq!(one.next_error().await["code"].as_str(), Some("not_a_member"));

    // In another user's name: START_FAILED carries the session's own id.
    one.send_value(vp(GROUP, START, "2", "18", timestamp())).await;
    refused(&one.next_error().await, "sender_mismatch");
    assert_eq!(expect_vp(&mut one, GROUP, START_FAILED, "1", "18").await[4].as_str(), Some("sender_mismatch"));
    for n in 0..20 {
        one.send_value(vp(GROUP, AUDIO, "2", "18", audio(n))).await;
    }
    quiet(&mut one, "1").await;

    // A private channel without a shared group, in six elements: answered in six.
    let six = |message_type: u8, payload: Value| {
        Value::Array(vec![PRIVATE.into(), message_type.into(), "1".into(), "9".into(), "m-1".into(), payload])
    };
    one.send_value(six(START, timestamp())).await;
    refused(&one.next_error().await, "not_allowed");
    let failed = expect_six(&mut one, PRIVATE, START_FAILED, "1", "9").await;
    assert_eq!((failed[4].as_str(), failed[5].as_str()), (Some("m-1"), Some("not_allowed")), "{failed}");
    for n in 0..20 {
        one.send_value(six(AUDIO, audio(n))).await;
    }
    quiet(&mut one, "1").await;
    // The next START is decided as usual.
    one.send_value(vp(GROUP, START, "1", "18", timestamp())).await;
    expect_vp(&mut one, GROUP, START_ACK, "1", "18").await;
    expect_vp(&mut two, GROUP, START, "1", "18").await;

    let metrics = router.metrics().await;
    assert_eq!(metric(&metrics, r#"presence_audio_dropped_total{reason="start_refused"}"#), Some(60), "{metrics}");
    quiet(&mut two, "2").await;
}

/// A six-element frame is relayed with its message id at index 4 and its payload at 5, and
/// its START answered alike; a four-element one (no payload) is taken and relayed as
/// VoicePing relayed it, with a nil payload, and its START acknowledged "Acknowledged".
async fn every_frame_shape_is_relayed_as_sent(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut one = router.mobile_in("1", &["18"]).await;
    let mut two = router.mobile_in("2", &["18"]).await;
    let six = |message_type: u8, id: &str, payload: Value| {
        Value::Array(vec![GROUP.into(), message_type.into(), "1".into(), "18".into(), id.into(), payload])
    };

    one.send_value(six(START, "m-1", map(&[("codec", "opus".into())]))).await;
    let ack = expect_six(&mut one, GROUP, START_ACK, "1", "18").await;
    assert_eq!((ack[4].as_str(), ack[5]["codec"].as_str()), (Some("m-1"), Some("opus")), "{ack}");
    let start = expect_six(&mut two, GROUP, START, "1", "18").await;
    assert_eq!((start[4].as_str(), start[5]["codec"].as_str()), (Some("m-1"), Some("opus")), "{start}");
    one.send_value(six(AUDIO, "m-2", audio(3))).await;
    let relayed = expect_six(&mut two, GROUP, AUDIO, "1", "18").await;
    assert_eq!((relayed[4].as_str(), &relayed[5]), (Some("m-2"), &audio(3)));
    one.send_value(six(STOP, "m-3", Value::Nil)).await;
    let id = expect_six(&mut one, GROUP, STOP_ACK, "1", "18").await[4].clone();
    let stop = expect_six(&mut two, GROUP, STOP, "1", "18").await;
    assert_eq!((stop[4].as_str(), json(&stop[5])["message_id"].as_str()), (Some("m-3"), id.as_str()));

    let four = |message_type: u8| Value::Array(vec![GROUP.into(), message_type.into(), "1".into(), "18".into()]);
    one.send_value(four(START)).await;
    assert_eq!(expect_vp(&mut one, GROUP, START_ACK, "1", "18").await[4].as_str(), Some("Acknowledged"));
    assert_eq!(expect_vp(&mut two, GROUP, START, "1", "18").await[4], Value::Nil);
    one.send_value(four(STOP)).await;
    expect_six(&mut one, GROUP, STOP_ACK, "1", "18").await;
    assert!(json(&expect_vp(&mut two, GROUP, STOP, "1", "18").await[4])["message_id"].is_string());
}

/// self.test.js: a private channel to oneself echoes every frame to the user's sessions,
/// the sending one included (VoicePing held one connection per user), and the floor is
/// the user's own.
async fn talking_to_oneself_reaches_every_session_of_the_user(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut phone = router.mobile_on("3", "phone", &["18"]).await;
    let mut tablet = router.mobile_on("3", "tablet", &["18"]).await;
    let mut other = router.mobile_in("4", &["18"]).await;

    let start = timestamp();
    phone.send_value(vp(PRIVATE, START, "3", "3", start.clone())).await;
    assert_eq!(expect_vp(&mut phone, PRIVATE, START_ACK, "3", "3").await[4], start);
    for session in [&mut phone, &mut tablet] {
        assert_eq!(expect_vp(session, PRIVATE, START, "3", "3").await[4], start);
    }
    tablet.send_value(vp(PRIVATE, START, "3", "3", timestamp())).await;
    assert_eq!(expect_vp(&mut tablet, PRIVATE, START_FAILED, "3", "3").await[4].as_str(), Some("Busy"));
    phone.send_value(vp(PRIVATE, AUDIO, "3", "3", audio(4))).await;
    for session in [&mut phone, &mut tablet] {
        assert_eq!(expect_vp(session, PRIVATE, AUDIO, "3", "3").await[4], audio(4));
    }
    phone.send_value(vp(PRIVATE, STOP, "3", "3", timestamp())).await;
    let id = expect_six(&mut phone, PRIVATE, STOP_ACK, "3", "3").await[4].as_str().unwrap().to_owned();
    assert!(id.starts_with("1_3_3_3_"), "{id}");
    for session in [&mut phone, &mut tablet] {
        assert_eq!(
            json(&expect_vp(session, PRIVATE, STOP, "3", "3").await[4])["message_id"].as_str(),
            Some(id.as_str())
        );
    }
    for receipt in [DELIVERED, READ] {
        phone.send_value(vp(PRIVATE, receipt, "3", "3", id.as_str().into())).await;
        for session in [&mut phone, &mut tablet] {
            assert_eq!(expect_vp(session, PRIVATE, receipt, "3", "3").await[4].as_str(), Some(id.as_str()));
        }
    }
    let text = serde_json::json!({"message_id": "x", "text": "note to self"}).to_string();
    phone.send_value(vp(PRIVATE, TEXT, "3", "3", text.into())).await;
    let id = expect_six(&mut phone, PRIVATE, TEXT_ACK, "3", "3").await[4].as_str().unwrap().to_owned();
    for session in [&mut phone, &mut tablet] {
        let content = json(&expect_vp(session, PRIVATE, TEXT, "3", "3").await[4]);
        assert_eq!(content, serde_json::json!({"message_id": id, "text": "note to self"}));
    }
    quiet(&mut other, "4").await;
}

/// DELIVERED and READ reach the frame's toId on a private channel only where a private
/// talk could (a shared group, by default); on a group channel VoicePing ignored them,
/// and so does the router: no relay, no ERROR.
async fn receipts_follow_the_private_channel_rules(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut one = router.mobile_in("1", &["18"]).await;
    let mut two = router.mobile_in("2", &["18"]).await;
    let mut stranger = router.mobile_in("9", &["other"]).await;
    for receipt in [DELIVERED, READ] {
        one.send_value(vp(GROUP, receipt, "1", "18", "0_3_18_2_1".into())).await;
        one.send_value(vp(PRIVATE, receipt, "1", "9", "1_3_1_9_1".into())).await;
        let error = one.next_error().await;
        assert_eq!(
            (error["code"].as_str(), error["messageType"].as_u64()),
            (Some("not_allowed"), Some(receipt.into()))
        );
    }
    quiet(&mut one, "1").await;
    quiet(&mut two, "2").await;
    quiet(&mut stranger, "9").await;
}

/// maximum.idle.test.js: once the talker has sent no AUDIO for `--floor-idle-ms`, the next
/// START takes the floor. The old talker gets the router's STOP (`idle`) and its later
/// AUDIO is dropped without a word; the listeners hear the old talk's STOP before the new
/// START.
async fn an_idle_talker_loses_the_floor_to_the_next_start(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&["--floor-idle-ms", "300"]).await;
    let mut one = router.mobile_in("1", &["18"]).await;
    let mut two = router.mobile_in("2", &["18"]).await;
    let mut three = router.mobile_in("3", &["18"]).await;
    idle_takeover(&mut one, &mut two, &mut [&mut three]).await;

    // The old talker's AUDIO is dropped silently; its STOP is acknowledged, nothing relayed.
    for n in 0..5 {
        one.send_value(vp(GROUP, AUDIO, "1", "18", audio(n))).await;
    }
    quiet(&mut one, "1").await;
    one.send_value(vp(GROUP, STOP, "1", "18", timestamp())).await;
    expect_six(&mut one, GROUP, STOP_ACK, "1", "18").await;
    // The new talker's AUDIO is what the listener hears next.
    two.send_value(vp(GROUP, AUDIO, "2", "18", audio(9))).await;
    assert_eq!(expect_vp(&mut three, GROUP, AUDIO, "2", "18").await[4], audio(9));
    let metrics = router.metrics().await;
    assert_eq!(metric(&metrics, r#"presence_audio_dropped_total{reason="idle"}"#), Some(5), "{metrics}");
    assert_eq!(metric(&metrics, r#"presence_floor_requests_total{result="idle_takeover"}"#), Some(1), "{metrics}");
}

/// `talker` holds group 18's floor and goes quiet; `taker` STARTs until the floor is idle
/// long enough to be taken. The talker gets the router's STOP `idle` (its talk's message id
/// at index 4) and its `talking` ends; each listener hears the old talk's STOP (VoicePing's
/// payload, with the reason) and then the new START.
async fn idle_takeover(talker: &mut Client, taker: &mut Client, listeners: &mut [&mut Client]) {
    talker.send_value(vp(GROUP, START, "1", "18", timestamp())).await;
    expect_vp(talker, GROUP, START_ACK, "1", "18").await;
    expect_vp(taker, GROUP, START, "1", "18").await;
    for listener in listeners.iter_mut() {
        expect_vp(listener, GROUP, START, "1", "18").await;
    }
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        taker.send_value(vp(GROUP, START, "2", "18", timestamp())).await;
        let answer = next(taker).await;
        if answer[1].as_u64() == Some(START_ACK.into()) {
            break;
        }
        assert_eq!(answer[4].as_str(), Some("Busy"), "{answer}");
        assert!(tokio::time::Instant::now() < deadline, "the idle floor was never taken");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The router's STOP and the new START reach the old talker on different paths (the
    // STOP is its own connection's, the START relayed): in either order.
    let (first, second) = (next(talker).await, next(talker).await);
    let (stop, start) = if first[1].as_u64() == Some(STOP.into()) { (first, second) } else { (second, first) };
    assert_eq!((start[1].as_u64(), id(&start[2])), (Some(START.into()), "2".into()), "the new START: {start}");
    assert_eq!((stop[0].as_u64(), stop.as_array().map(Vec::len)), (Some(GROUP.into()), Some(6)), "{stop}");
    assert_eq!((id(&stop[2]), id(&stop[3])), ("0".into(), "18".into()), "the router's own STOP: {stop}");
    assert_eq!(stop[5]["reason"].as_str(), Some("idle"), "{stop}");
    assert_eq!(stop[5]["message_id"], stop[4], "{stop}");
    let old = json(&expect_vp(taker, GROUP, STOP, "1", "18").await[4]);
    assert_eq!((old["reason"].as_str(), old["message_id"].as_str()), (Some("idle"), stop[4].as_str()), "{old}");
    for listener in listeners.iter_mut() {
        let heard = json(&expect_vp(listener, GROUP, STOP, "1", "18").await[4]);
        assert_eq!(heard, old);
        expect_vp(listener, GROUP, START, "2", "18").await;
    }
}

/// A talker whose AUDIO keeps coming, however long, is never idle: the floor stays its own.
async fn a_talker_sending_audio_keeps_the_floor(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&["--floor-idle-ms", "1000"]).await;
    let mut one = router.mobile_in("1", &["18"]).await;
    let mut two = router.mobile_in("2", &["18"]).await;
    one.send_value(vp(GROUP, START, "1", "18", timestamp())).await;
    expect_vp(&mut one, GROUP, START_ACK, "1", "18").await;
    expect_vp(&mut two, GROUP, START, "1", "18").await;
    // Two seconds of audio, a frame each 100 ms: twice the idle time, never idle.
    for n in 0..20 {
        one.send_value(vp(GROUP, AUDIO, "1", "18", audio(n))).await;
        assert_eq!(expect_vp(&mut two, GROUP, AUDIO, "1", "18").await[4], audio(n));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    two.send_value(vp(GROUP, START, "2", "18", timestamp())).await;
    assert_eq!(expect_vp(&mut two, GROUP, START_FAILED, "2", "18").await[4].as_str(), Some("Busy"));
}

/// After the router cuts a talk at the maximum talk time, the talker's AUDIO for it is
/// dropped and counted, never answered; its STOP gets the STOP_ACK of the cut talk. Only
/// then is AUDIO without a floor an error again.
async fn audio_after_the_maximum_talk_cut_is_dropped_without_errors(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&["--max-talk-ms", "300"]).await;
    let mut one = router.mobile_in("1", &["18"]).await;
    let mut two = router.mobile_in("2", &["18"]).await;
    one.send_value(vp(GROUP, START, "1", "18", timestamp())).await;
    expect_vp(&mut one, GROUP, START_ACK, "1", "18").await;
    let cut = expect_six(&mut one, GROUP, STOP, "0", "18").await;
    assert_eq!(cut[5]["reason"].as_str(), Some("max_talk_time"), "{cut}");
    expect_vp(&mut two, GROUP, START, "1", "18").await;
    let heard = json(&expect_vp(&mut two, GROUP, STOP, "1", "18").await[4]);
    assert_eq!((heard["reason"].as_str(), heard["message_id"].as_str()), (Some("max_talk_time"), cut[4].as_str()));

    for n in 0..50 {
        one.send_value(vp(GROUP, AUDIO, "1", "18", audio(n))).await;
    }
    // Not one ERROR came before the heartbeat's ACK.
    quiet(&mut one, "1").await;
    one.send_value(vp(GROUP, STOP, "1", "18", timestamp())).await;
    assert_eq!(expect_six(&mut one, GROUP, STOP_ACK, "1", "18").await[4], cut[4], "the cut talk's message id");
    one.send_value(vp(GROUP, AUDIO, "1", "18", audio(0))).await;
    let error = one.next_error().await;
    assert_eq!(error["code"].as_str(), Some("floor_not_held"), "{error}");
    let metrics = router.metrics().await;
    assert_eq!(metric(&metrics, r#"presence_audio_dropped_total{reason="max_talk_time"}"#), Some(50), "{metrics}");
    // The listener heard nothing of the dropped audio: its next frames are the end of
    // `talking` and its own heartbeat's ACK.
    quiet(&mut two, "2").await;
}

/// group.test.js and private.test.js with the talker on one router and the listeners on
/// another: the shapes, acks and receipts are the same.
async fn voicepings_flows_cross_routers(engine: Engine) {
    let setup = Setup::new(engine).await;
    let (a, b): (Router, Router) = (setup.router(&[]).await, setup.router(&[]).await);
    let mut one = a.mobile_in("1", &["18"]).await;
    let mut two = b.mobile_in("2", &["18"]).await;

    let start = timestamp();
    one.send_value(vp(GROUP, START, "1", "18", start.clone())).await;
    expect_vp(&mut one, GROUP, START_ACK, "1", "18").await;
    assert_eq!(expect_vp(&mut two, GROUP, START, "1", "18").await[4], start);
    one.send_value(vp(GROUP, AUDIO, "1", "18", audio(5))).await;
    assert_eq!(expect_vp(&mut two, GROUP, AUDIO, "1", "18").await[4], audio(5));
    talk_ends(&mut one, &mut [&mut two], GROUP, "1", "18").await;

    one.send_value(vp(PRIVATE, START, "1", "2", start.clone())).await;
    expect_vp(&mut one, PRIVATE, START_ACK, "1", "2").await;
    expect_vp(&mut two, PRIVATE, START, "1", "2").await;
    let id = talk_ends(&mut one, &mut [&mut two], PRIVATE, "1", "2").await;
    two.send_value(vp(PRIVATE, DELIVERED, "2", "1", id.as_str().into())).await;
    assert_eq!(expect_vp(&mut one, PRIVATE, DELIVERED, "2", "1").await[4].as_str(), Some(id.as_str()));

    let text = serde_json::json!({"text": "over"}).to_string();
    two.send_value(vp(GROUP, TEXT, "2", "18", text.into())).await;
    let id = expect_six(&mut two, GROUP, TEXT_ACK, "2", "18").await[4].as_str().unwrap().to_owned();
    let content = json(&expect_vp(&mut one, GROUP, TEXT, "2", "18").await[4]);
    assert_eq!(content, serde_json::json!({"message_id": id, "text": "over"}));
}

/// The idle takeover is the cluster's: a talker on router a loses the floor to a START on
/// router b, and is told.
async fn an_idle_talker_on_another_router_loses_the_floor(engine: Engine) {
    let setup = Setup::new(engine).await;
    let (a, b) = (setup.router(&["--floor-idle-ms", "300"]).await, setup.router(&["--floor-idle-ms", "300"]).await);
    let mut one = a.mobile_in("1", &["18"]).await;
    let mut two = b.mobile_in("2", &["18"]).await;
    let mut three = a.mobile_in("3", &["18"]).await;
    idle_takeover(&mut one, &mut two, &mut [&mut three]).await;
    one.send_value(vp(GROUP, AUDIO, "1", "18", audio(1))).await;
    quiet(&mut one, "1").await;
    let metrics = a.metrics().await;
    assert_eq!(metric(&metrics, r#"presence_audio_dropped_total{reason="idle"}"#), Some(1), "{metrics}");
    // The new talker's AUDIO is what the listener on the old talker's router hears next.
    two.send_value(vp(GROUP, AUDIO, "2", "18", audio(2))).await;
    assert_eq!(expect_vp(&mut three, GROUP, AUDIO, "2", "18").await[4], audio(2));
}
