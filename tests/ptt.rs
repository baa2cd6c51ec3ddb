//! Push-to-talk routing of VoicePing's frames against the real binary, on every engine:
//! floors, relaying to group members (never back to the talker), private channels, the
//! maximum talk time, and `talking` in presence.

mod common;

use common::{Engine, Router, Setup, map};
use presence_router::protocol::message_type::{
    AUDIO, START, START_ACK, START_FAILED, STOP, STOP_ACK, TEXT, TEXT_ACK, UNAUTHORIZED_GROUP,
};
use rmpv::Value;

on_every_engine!(
    group_talk_reaches_members_only,
    a_busy_floor_refuses_a_second_talker,
    max_talk_time_takes_the_floor_back,
    closing_mid_talk_frees_the_floor,
    private_talk_reaches_one_user,
    private_channels_need_a_shared_group,
    talking_shows_in_group_presence_and_on_dashboards,
    ptt_refuses_outsiders_and_dashboards,
);

fn audio(n: u8) -> Value {
    Value::Binary(vec![n; 160])
}

async fn group_talk_reaches_members_only(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut talker = router.mobile_in("a", &["crew"]).await;
    let mut listener = router.mobile_in("b", &["crew", "other"]).await;
    let mut outsider = router.mobile_in("c", &["other"]).await;

    talker.send_frame(0, START, "a", "crew", map(&[("codec", "opus".into())])).await;
    let ack = talker.expect(START_ACK).await;
    assert_eq!(ack[3].as_str(), Some("crew"));
    let start = listener.expect_relayed(START, "a", "crew").await;
    assert_eq!(start[4]["codec"].as_str(), Some("opus"), "the payload is relayed as sent, at index 4 as it came");
    listener.expect_indicator("a", "talking", true).await;

    for n in 0..5 {
        talker.send_frame(0, AUDIO, "a", "crew", audio(n)).await;
    }
    for n in 0..5 {
        let frame = listener.expect_relayed(AUDIO, "a", "crew").await;
        assert_eq!(frame[4], audio(n), "audio arrives whole and in order");
    }
    talker.send_frame(0, STOP, "a", "crew", map(&[])).await;
    talker.expect(STOP_ACK).await;
    listener.expect_relayed(STOP, "a", "crew").await;
    listener.expect_indicator("a", "talking", false).await;

    talker.send_frame(0, TEXT, "a", "crew", map(&[("text", "copy".into())])).await;
    let ack = talker.expect(TEXT_ACK).await;
    let text = listener.expect_relayed(TEXT, "a", "crew").await;
    assert_eq!(text[4]["text"].as_str(), Some("copy"));
    assert_eq!(text[4]["message_id"], ack[4], "the text carries the message id its ack named");

    // Ordering proves the absences: the listener talks back in `other`; the outsider's
    // next frame is that, and the talker, not in `other`, gets nothing of it but would
    // have received its own frames before its heartbeat ACK.
    listener.send_frame(0, TEXT, "b", "other", map(&[("text", "hi c".into())])).await;
    listener.expect(TEXT_ACK).await;
    outsider.expect_relayed(TEXT, "b", "other").await;
    talker.sync("a").await;
}

async fn a_busy_floor_refuses_a_second_talker(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut a = router.mobile_in("a", &["crew"]).await;
    let mut b = router.mobile_in("b", &["crew"]).await;
    a.take_floor("a", "crew", &mut b).await;

    b.send_frame(0, START, "b", "crew", map(&[])).await;
    let failed = b.expect(START_FAILED).await;
    assert_eq!(failed[4].as_str(), Some("Busy"));
    b.send_frame(0, AUDIO, "b", "crew", audio(1)).await;
    assert_eq!(b.next_error().await["code"].as_str(), Some("floor_not_held"));

    a.send_frame(0, STOP, "a", "crew", map(&[])).await;
    a.expect(STOP_ACK).await;
    b.expect_relayed(STOP, "a", "crew").await;
    b.expect_indicator("a", "talking", false).await;
    b.send_frame(0, START, "b", "crew", map(&[])).await;
    b.expect(START_ACK).await;
    a.expect_relayed(START, "b", "crew").await;
    a.expect_indicator("b", "talking", true).await;
}

async fn max_talk_time_takes_the_floor_back(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&["--max-talk-ms", "300"]).await;
    let mut a = router.mobile_in("a", &["crew"]).await;
    let mut b = router.mobile_in("b", &["crew"]).await;
    a.take_floor("a", "crew", &mut b).await;

    let cut = a.expect(STOP).await;
    assert_eq!((cut[2].as_u64(), cut[5]["reason"].as_str()), (Some(0), Some("max_talk_time")), "{cut}");
    let stop = b.expect_relayed(STOP, "a", "crew").await;
    assert_eq!(common::stop_reason(&stop).as_deref(), Some("max_talk_time"));
    b.expect_indicator("a", "talking", false).await;
    // The cut talk's AUDIO still under way is dropped without an answer.
    a.send_frame(0, AUDIO, "a", "crew", audio(1)).await;
    a.sync("a").await;
    b.send_frame(0, START, "b", "crew", map(&[])).await;
    b.expect(START_ACK).await;
}

async fn closing_mid_talk_frees_the_floor(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut a = router.mobile_in("a", &["crew"]).await;
    let mut b = router.mobile_in("b", &["crew"]).await;
    a.take_floor("a", "crew", &mut b).await;
    drop(a); // killed app
    let stop = b.expect_relayed(STOP, "a", "crew").await;
    assert_eq!(common::stop_reason(&stop).as_deref(), Some("disconnected"));
    b.expect_indicator("a", "talking", false).await;
    b.send_frame(0, START, "b", "crew", map(&[])).await;
    b.expect(START_ACK).await;
}

async fn private_talk_reaches_one_user(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut a = router.mobile_in("a", &["crew"]).await;
    let mut b = router.mobile_in("b", &["crew"]).await;
    let mut c = router.mobile_in("c", &["crew"]).await;
    a.send_frame(1, START, "a", "b", map(&[])).await;
    let ack = a.expect(START_ACK).await;
    assert_eq!((ack[0].as_u64(), ack[3].as_str()), (Some(1), Some("b")));
    let start = b.expect_relayed(START, "a", "b").await;
    assert_eq!(start[0].as_u64(), Some(1), "private channel");
    a.send_frame(1, AUDIO, "a", "b", audio(7)).await;
    assert_eq!(b.expect_relayed(AUDIO, "a", "b").await[4], audio(7));
    // The pair's channel is one floor: b cannot talk over a.
    b.send_frame(1, START, "b", "a", map(&[])).await;
    assert_eq!(b.expect(START_FAILED).await[4].as_str(), Some("Busy"));
    // A private call is no group talk: c hears nothing (its next frame is its own ACK).
    c.sync("c").await;
}

async fn private_channels_need_a_shared_group(engine: Engine) {
    let setup = Setup::new(engine).await;
    for needed in [true, false] {
        let router = setup.router(&["--private-needs-shared-group", &needed.to_string()]).await;
        let mut a = router.mobile_in("a", &["crew"]).await;
        let mut x = router.mobile_in("x", &["other"]).await;
        a.send_frame(1, START, "a", "x", map(&[])).await;
        if needed {
            assert_eq!(a.next_error().await["code"].as_str(), Some("not_allowed"));
            assert_eq!(a.expect_relayed(START_FAILED, "a", "x").await[4].as_str(), Some("not_allowed"));
            a.send_frame(1, TEXT, "a", "x", "psst".into()).await;
            assert_eq!(a.next_error().await["code"].as_str(), Some("not_allowed"));
            a.send_frame(1, START, "a", "nobody", map(&[])).await;
            assert_eq!(a.next_error().await["code"].as_str(), Some("not_allowed"));
            a.expect_relayed(START_FAILED, "a", "nobody").await;
            // Nothing reached x: its next frame is its own heartbeat's ACK.
            x.sync("x").await;
        } else {
            a.expect(START_ACK).await;
            x.expect_relayed(START, "a", "x").await;
        }
    }
}

async fn talking_shows_in_group_presence_and_on_dashboards(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut dashboard, _) = router.dashboard_of("dispatcher", &["crew"]).await;
    let mut a = router.mobile_in("a", &["crew"]).await;
    dashboard.next_update().await;
    a.send_frame(0, START, "a", "crew", map(&[])).await;
    a.expect(START_ACK).await;
    dashboard.expect_indicator("a", "talking", true).await;
    assert_eq!(router.group("crew").await["talkingUsers"], serde_json::json!(["a"]));
    a.send_frame(0, STOP, "a", "crew", map(&[])).await;
    a.expect(STOP_ACK).await;
    dashboard.expect_indicator("a", "talking", false).await;
    assert_eq!(router.group("crew").await["talkingUsers"], serde_json::json!([]));
}

async fn ptt_refuses_outsiders_and_dashboards(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router: Router = setup.router(&[]).await;
    let mut a = router.mobile_in("a", &["crew"]).await;
    a.send_frame(0, START, "a", "elsewhere", map(&[])).await;
    let error = a.next_error().await;
    assert_eq!((error["code"].as_str(), error["messageType"].as_u64()), (Some("not_a_member"), Some(1)));
    // VoicePing's answers to a START outside the session's groups follow the ERROR.
    a.expect_relayed(UNAUTHORIZED_GROUP, "a", "elsewhere").await;
    assert_eq!(a.expect_relayed(START_FAILED, "a", "elsewhere").await[4].as_str(), Some("Ack Failed"));
    a.send_frame(0, STOP, "a", "crew", map(&[])).await;
    assert_eq!(a.next_error().await["code"].as_str(), Some("floor_not_held"));
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    dashboard.send_frame(0, START, "dispatcher", "crew", map(&[])).await;
    assert_eq!(dashboard.next_error().await["code"].as_str(), Some("not_allowed"));
    let failed = dashboard.expect_relayed(START_FAILED, "dispatcher", "crew").await;
    assert_eq!(failed[4].as_str(), Some("not_allowed"));
    let metrics = router.metrics().await;
    assert!(metrics.contains(r#"presence_frame_errors_total{reason="not_a_member"} 1"#), "{metrics}");
}
