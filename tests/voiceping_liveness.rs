//! Liveness of mobiles that never send HEARTBEAT, as VoicePing's apps: the router pings
//! them, and while they answer, or send any frame, their socket stays open and their
//! presence is renewed. One that stops goes offline within the TTL of its last sign of
//! life, like a heartbeating one; and one that heartbeats keeps the heartbeat rule.
//!
//! Time is marked by a mobile that neither heartbeats nor answers pings: its offline comes
//! a TTL after it connected, its close (4000) a little later; by then more than twice the
//! TTL has passed for the mobile under test, which connected first.

mod common;

use common::{
    Client, Engine, Setup, assert_update,
    prometheus::metric,
    raw::{End, RawWs, frame},
    token,
};
use futures_util::StreamExt;
use presence_router::{
    auth::{Role, mint_hs256_in},
    protocol::{
        heartbeat_frame,
        message_type::{AUDIO, HEARTBEAT_ACK, INDICATOR_UPDATE, PRESENCE_UPDATE, START},
    },
    ws::frame::opcode::{BINARY, CLOSE, PING, PONG},
};
use rmpv::Value;
use tokio::time::Instant;

on_every_engine!(
    a_mobile_that_answers_pings_stays_online_without_heartbeats,
    a_mobile_that_stops_answering_goes_offline_within_the_ttl,
    a_mobile_talking_without_heartbeats_is_not_cut,
    a_mobile_that_heartbeats_keeps_the_heartbeat_rule_while_it_answers_pings,
);

/// One second: the marker's close comes at TTL + 2 s.
const SHORT_TTL: [&str; 2] = ["--presence-ttl", "1"];

/// The next PRESENCE_UPDATE's payload, past indicators (a talker's `talking`).
async fn next_update(dashboard: &mut Client) -> Value {
    loop {
        let frame = dashboard.next_frame().await;
        if frame[1].as_u64() != Some(INDICATOR_UPDATE.into()) {
            assert_eq!(frame[1].as_u64(), Some(PRESENCE_UPDATE.into()), "{frame}");
            return frame[5].clone();
        }
    }
}

/// A mobile that never reads, so never answers a ping, and never sends a thing: it marks
/// time. The dashboard has seen it online.
async fn marker(router: &common::Router, dashboard: &mut Client) -> RawWs {
    let marker = RawWs::connect(router.addr, &token("marker", Role::Mobile), Some("m")).await;
    assert_update(&next_update(dashboard).await, "marker", "online");
    marker
}

/// The marker's offline must be the next update: the mobile under test, connected before
/// it, did not go offline first.
async fn marker_goes_offline_first(dashboard: &mut Client) {
    let offline = next_update(dashboard).await;
    assert_update(&offline, "marker", "offline");
}

/// A binary frame as a client sends it: msgpack, masked.
fn binary(value: Value) -> Vec<u8> {
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, &value).unwrap();
    frame_bytes(&bytes)
}

/// Encoded msgpack in a masked binary frame.
fn frame_bytes(msgpack: &[u8]) -> Vec<u8> {
    frame(true, BINARY, msgpack)
}

async fn a_mobile_that_answers_pings_stays_online_without_heartbeats(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&SHORT_TTL).await;
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    // A WebSocket library answers pings while it reads; this client sends nothing else.
    let mut answers = router.mobile("answers", "phone").await;
    assert_update(&next_update(&mut dashboard).await, "answers", "online");
    let reading = tokio::spawn(async move { while answers.ws.next().await.is_some_and(|m| m.is_ok()) {} });
    let mut marker = marker(&router, &mut dashboard).await;

    assert_eq!(marker.end().await, End::Closed(Some(4000)));
    marker_goes_offline_first(&mut dashboard).await;
    assert_eq!(router.user("answers").await["status"], "online");
    assert!(!reading.is_finished(), "its socket is open");
    reading.abort();
}

async fn a_mobile_that_stops_answering_goes_offline_within_the_ttl(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&SHORT_TTL).await;
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    let mut answers = RawWs::connect(router.addr, &token("answers", Role::Mobile), Some("phone")).await;
    assert_update(&next_update(&mut dashboard).await, "answers", "online");
    let mut marker = marker(&router, &mut dashboard).await;

    // Pongs by hand until the marker is closed; the dashboard, not read meanwhile, pings
    // (silent for the idle timeout, it would be closed too).
    let (mut pongs, mut last_pong) = (0, Instant::now());
    let marked = marker.end();
    tokio::pin!(marked);
    let mut keep_alive = tokio::time::interval(std::time::Duration::from_millis(500));
    let end = loop {
        tokio::select! {
            end = &mut marked => break end,
            _ = keep_alive.tick() => dashboard.keep_alive().await,
            read = answers.read_frame() => {
                let (_, opcode, payload) = read.expect("the router keeps the socket open");
                if opcode == PING {
                    answers.send(&frame(true, PONG, &payload)).await;
                    (pongs, last_pong) = (pongs + 1, Instant::now());
                }
            }
        }
    };
    assert_eq!(end, End::Closed(Some(4000)));
    assert!(pongs > 0, "the router pinged a mobile that never heartbeats");
    marker_goes_offline_first(&mut dashboard).await;

    // It stops answering: offline within the TTL of its last pong (plus a second of slack
    // for the sweep and the update's way), then its socket is closed.
    let offline = next_update(&mut dashboard).await;
    let after = last_pong.elapsed();
    assert_update(&offline, "answers", "offline");
    assert_eq!(offline["cause"].as_str(), Some("expired"), "{offline}");
    assert!(after.as_secs_f64() <= 2.0, "offline {after:?} after the last pong; the TTL is 1 s");
    assert_eq!(answers.end().await, End::Closed(Some(4000)));
}

async fn a_mobile_talking_without_heartbeats_is_not_cut(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&SHORT_TTL).await;
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    let token = mint_hs256_in(common::SECRET.as_bytes(), "talker", Role::Mobile, Some(&["g"]), 3600).unwrap();
    let started = Instant::now();
    // It never reads: pings go unanswered; only its frames say it is there.
    let mut talker = RawWs::connect(router.addr, &token, Some("radio")).await;
    assert_update(&next_update(&mut dashboard).await, "talker", "online");
    let talk = |message_type: u8, payload: Value| {
        binary(Value::Array(vec![0.into(), message_type.into(), "talker".into(), "g".into(), payload]))
    };
    talker.send(&talk(START, Value::Map(Vec::new()))).await;
    let mut marker = marker(&router, &mut dashboard).await;

    let mut audio = tokio::time::interval(std::time::Duration::from_millis(50));
    let marked = marker.end();
    tokio::pin!(marked);
    let end = loop {
        tokio::select! {
            end = &mut marked => break end,
            _ = audio.tick() => talker.send(&talk(AUDIO, Value::Binary(vec![0x55; 160]))).await,
        }
    };
    assert_eq!(end, End::Closed(Some(4000)));
    marker_goes_offline_first(&mut dashboard).await;
    assert_eq!(router.user("talker").await["status"], "online");
    // Its 20 frames a second renewed the lease once per ping interval (a third of the TTL)
    // at most, not once per frame.
    let metrics = router.metrics().await;
    let renewals = metric(&metrics, "presence_liveness_renewals_total").unwrap();
    let frames = metric(&metrics, r#"presence_frames_received_total{type="audio"}"#).unwrap();
    let intervals = (started.elapsed().as_secs_f64() * 3.0).ceil() as u64;
    assert!((1..=intervals).contains(&renewals), "{renewals} renewals in {intervals} intervals, {frames} frames");

    // Its socket is still served: a heartbeat is answered.
    talker.send(&frame_bytes(&heartbeat_frame("talker"))).await;
    loop {
        let (_, opcode, payload) = talker.read_frame().await.expect("the socket is open");
        assert_ne!(opcode, CLOSE, "closed: {payload:?}");
        let decoded = (opcode == BINARY).then(|| rmpv::decode::read_value(&mut &payload[..]).unwrap());
        if decoded.is_some_and(|frame| frame[1].as_u64() == Some(HEARTBEAT_ACK.into())) {
            break;
        }
    }
}

async fn a_mobile_that_heartbeats_keeps_the_heartbeat_rule_while_it_answers_pings(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&SHORT_TTL).await;
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    let mut once = router.mobile("once", "phone").await;
    once.sync("once").await;
    assert_update(&next_update(&mut dashboard).await, "once", "online");
    // It reads (so it would answer any ping) but never heartbeats again: its presence
    // lapses a TTL after its heartbeat, and its socket is closed at TTL + 2 s.
    assert_eq!(once.close_code().await, Some(4000));
    let offline = next_update(&mut dashboard).await;
    assert_update(&offline, "once", "offline");
    assert_eq!(offline["cause"].as_str(), Some("expired"), "{offline}");
}
