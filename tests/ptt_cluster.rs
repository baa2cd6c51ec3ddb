//! PTT and indicators between routers sharing one real redis-server, and PTT on one router
//! while Redis is down.

mod common;

use common::{Engine, Setup, map};
use presence_router::protocol::message_type::{AUDIO, START, START_ACK, START_FAILED, STOP, STOP_ACK, TEXT};
use rmpv::Value;

#[tokio::test]
async fn talk_and_indicators_cross_routers_and_one_floor_holds_cluster_wide() {
    let setup = Setup::new(Engine::Redis).await;
    let (a, b) = (setup.router(&[]).await, setup.router(&[]).await);
    let (mut dashboard, _) = b.dashboard_of("dispatcher", &["crew"]).await;
    let mut talker = a.mobile_in("t", &["crew"]).await;
    let mut listener = b.mobile_in("l", &["crew"]).await;
    dashboard.next_update().await;
    dashboard.next_update().await;

    talker.send_frame(0, START, "t", "crew", map(&[])).await;
    talker.expect(START_ACK).await;
    listener.expect_relayed(START, "t", "crew").await;
    listener.expect_indicator("t", "talking", true).await;
    dashboard.expect_indicator("t", "talking", true).await;
    talker.send_frame(0, AUDIO, "t", "crew", Value::Binary(vec![1, 2, 3])).await;
    assert_eq!(listener.expect_relayed(AUDIO, "t", "crew").await[5], Value::Binary(vec![1, 2, 3]));

    // The floor is the cluster's, not the router's.
    listener.send_frame(0, START, "l", "crew", map(&[])).await;
    assert_eq!(listener.expect(START_FAILED).await[5]["reason"].as_str(), Some("busy"));
    talker.send_frame(0, STOP, "t", "crew", map(&[])).await;
    talker.expect(STOP_ACK).await;
    listener.expect_relayed(STOP, "t", "crew").await;
    listener.expect_indicator("t", "talking", false).await;
    listener.send_frame(0, START, "l", "crew", map(&[])).await;
    listener.expect(START_ACK).await;
    talker.expect_relayed(START, "l", "crew").await;

    // Indicators travel the other way too, and the group endpoint of either router sees them.
    listener.indicator("l", "crew", "typing", true).await;
    talker.expect_indicator("l", "talking", true).await;
    talker.expect_indicator("l", "typing", true).await;
    let group = a.group("crew").await;
    assert_eq!((group["typingUsers"].clone(), group["talkingUsers"].clone()), (["l"].into(), ["l"].into()));
}

#[tokio::test]
async fn ptt_on_one_router_keeps_working_while_redis_is_down() {
    let mut setup = Setup::new(Engine::Redis).await;
    let router = setup.router(&[]).await;
    let mut a = router.mobile_in("a", &["crew"]).await;
    let mut b = router.mobile_in("b", &["crew"]).await;
    let mut c = router.mobile_in("c", &["crew"]).await;
    for (client, user) in [(&mut a, "a"), (&mut b, "b"), (&mut c, "c")] {
        client.sync(user).await;
    }

    setup.redis.as_mut().unwrap().kill().await;
    let (status, _) = router.post_status(r#"{"userIds": ["a"]}"#).await;
    assert_eq!(status, 503, "Redis is gone");

    a.send_frame(0, START, "a", "crew", map(&[])).await;
    a.expect(START_ACK).await;
    b.expect_relayed(START, "a", "crew").await;
    b.expect_indicator("a", "talking", true).await;
    a.send_frame(0, AUDIO, "a", "crew", Value::Binary(vec![9; 40])).await;
    assert_eq!(b.expect_relayed(AUDIO, "a", "crew").await[5], Value::Binary(vec![9; 40]));
    // The router still keeps its own sessions from talking over each other.
    c.expect_relayed(START, "a", "crew").await;
    c.expect_indicator("a", "talking", true).await;
    c.expect_relayed(AUDIO, "a", "crew").await;
    c.send_frame(0, START, "c", "crew", map(&[])).await;
    assert_eq!(c.expect(START_FAILED).await[5]["reason"].as_str(), Some("busy"));
    a.send_frame(0, STOP, "a", "crew", map(&[])).await;
    a.expect(STOP_ACK).await;
    b.expect_relayed(STOP, "a", "crew").await;
    b.expect_indicator("a", "talking", false).await;
    c.expect_relayed(STOP, "a", "crew").await;
    c.expect_indicator("a", "talking", false).await;
    c.send_frame(0, TEXT, "c", "crew", map(&[("text", "radio check".into())])).await;
    c.expect(39).await;
    b.expect_relayed(TEXT, "c", "crew").await;
    let metrics = router.metrics().await;
    assert!(metrics.contains(r#"presence_floor_requests_total{result="local_only"} 1"#), "{metrics}");

    // Redis returns: floors are arbitrated by it again.
    setup.redis.as_mut().unwrap().spawn().await;
    common::eventually("the router to use Redis again", || async {
        router.metrics().await.contains("\npresence_engine_up 1\n")
    })
    .await;
    b.send_frame(0, START, "b", "crew", map(&[])).await;
    b.expect(START_ACK).await;
    let metrics = router.metrics().await;
    assert!(metrics.contains(r#"presence_floor_requests_total{result="granted"} 1"#), "{metrics}");
}

#[tokio::test]
async fn a_router_stopping_mid_talk_tells_the_other_routers() {
    let setup = Setup::new(Engine::Redis).await;
    let (mut a, b) = (setup.router(&[]).await, setup.router(&[]).await);
    let mut talker = a.mobile_in("t", &["crew"]).await;
    let mut listener = b.mobile_in("l", &["crew"]).await;
    talker.take_floor("t", "crew", &mut listener).await;

    // A rolling restart: the talker's connection closes with 1012, and its router sends
    // the STOP and the end of `talking` to the other routers before it exits.
    a.signal("TERM").await;
    assert_eq!(talker.close_code().await, Some(1012));
    assert!(a.exited().await.success());
    let stop = listener.expect_relayed(STOP, "t", "crew").await;
    assert_eq!(stop[5]["reason"].as_str(), Some("disconnected"));
    listener.expect_indicator("t", "talking", false).await;
    listener.send_frame(0, START, "l", "crew", map(&[])).await;
    listener.expect(START_ACK).await;
}
