//! PTT and indicators between routers sharing one real redis-server (or a Redis Cluster),
//! and PTT on one router while Redis is down.

mod common;

use common::{Engine, Router, Setup, eventually, map, prometheus::metric};
use presence_router::{
    engine::redis::{DEFAULT_CLUSTER_SHARDS, Keyspace},
    protocol::message_type::{AUDIO, START, START_ACK, START_FAILED, STOP, STOP_ACK, TEXT, TEXT_ACK},
};
use rmpv::Value;

on_shared_engines!(
    talk_and_indicators_cross_routers_and_one_floor_holds_cluster_wide,
    a_router_stopping_mid_talk_tells_the_other_routers,
    indicators_of_a_killed_router_end_on_the_others_exactly_once,
    group_talk_reaches_only_the_routers_serving_the_group,
);

async fn talk_and_indicators_cross_routers_and_one_floor_holds_cluster_wide(engine: Engine) {
    let setup = Setup::new(engine).await;
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
    assert_eq!(listener.expect_relayed(AUDIO, "t", "crew").await[4], Value::Binary(vec![1, 2, 3]));

    // The floor is the cluster's, not the router's.
    listener.send_frame(0, START, "l", "crew", map(&[])).await;
    assert_eq!(listener.expect(START_FAILED).await[4].as_str(), Some("Busy"));
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
    // Router b records the indicators behind its relay: a's read sees them once written.
    common::eventually("a's group endpoint to list l typing and talking", || async {
        let group = a.group("crew").await;
        (group["typingUsers"].clone(), group["talkingUsers"].clone()) == (["l"].into(), ["l"].into())
    })
    .await;
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
    assert_eq!(b.expect_relayed(AUDIO, "a", "crew").await[4], Value::Binary(vec![9; 40]));
    // The router still keeps its own sessions from talking over each other.
    c.expect_relayed(START, "a", "crew").await;
    c.expect_indicator("a", "talking", true).await;
    c.expect_relayed(AUDIO, "a", "crew").await;
    c.send_frame(0, START, "c", "crew", map(&[])).await;
    assert_eq!(c.expect(START_FAILED).await[4].as_str(), Some("Busy"));
    a.send_frame(0, STOP, "a", "crew", map(&[])).await;
    a.expect(STOP_ACK).await;
    b.expect_relayed(STOP, "a", "crew").await;
    b.expect_indicator("a", "talking", false).await;
    c.expect_relayed(STOP, "a", "crew").await;
    c.expect_indicator("a", "talking", false).await;
    c.send_frame(0, TEXT, "c", "crew", map(&[("text", "radio check".into())])).await;
    c.expect(TEXT_ACK).await;
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

async fn a_router_stopping_mid_talk_tells_the_other_routers(engine: Engine) {
    let setup = Setup::new(engine).await;
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
    assert_eq!(common::stop_reason(&stop).as_deref(), Some("disconnected"));
    listener.expect_indicator("t", "talking", false).await;
    listener.send_frame(0, START, "l", "crew", map(&[])).await;
    listener.expect(START_ACK).await;
}

/// A router killed while its users type or talk cannot announce the ends: the indicators
/// lapse in Redis, and one of the surviving routers (both sweep) announces each end,
/// exactly once, to members and dashboards on every router.
async fn indicators_of_a_killed_router_end_on_the_others_exactly_once(engine: Engine) {
    let setup = Setup::new(engine).await;
    let mut a = setup.router(&["--typing-ttl-ms", "1000", "--max-talk-ms", "1500"]).await;
    let (b, c) = (setup.router(&[]).await, setup.router(&[]).await);
    let (mut dashboard, _) = b.dashboard_of("dispatcher", &["crew"]).await;
    let mut on_b = b.mobile_in("on-b", &["crew"]).await;
    let mut on_c = c.mobile_in("on-c", &["crew"]).await;
    let mut typist = a.mobile_in("typist", &["crew"]).await;
    let mut talker = a.mobile_in("talker", &["crew"]).await;
    typist.indicator("typist", "crew", "typing", true).await;
    talker.expect_indicator("typist", "typing", true).await;
    talker.send_frame(0, START, "talker", "crew", map(&[])).await;
    talker.expect(START_ACK).await;
    for listener in [&mut on_b, &mut on_c] {
        listener.expect_indicator("typist", "typing", true).await;
        listener.expect_relayed(START, "talker", "crew").await;
        listener.expect_indicator("talker", "talking", true).await;
    }

    a.signal("KILL").await;
    for listener in [&mut on_b, &mut on_c] {
        let mut ended = Vec::new();
        while ended.len() < 2 {
            let frame = listener.next_frame().await;
            if frame[1].as_u64() == Some(38) {
                assert_eq!(frame[5]["isActive"].as_bool(), Some(false), "{frame}");
                ended.push(frame[5]["type"].as_str().unwrap().to_string());
            }
        }
        ended.sort();
        assert_eq!(ended, ["talking", "typing"]);
    }
    // Exactly once: a marker sent after the ends is the next thing each listener gets.
    on_b.send_frame(0, TEXT, "on-b", "crew", map(&[("text", "marker".into())])).await;
    on_c.expect_relayed(TEXT, "on-b", "crew").await;
    on_c.send_frame(0, TEXT, "on-c", "crew", map(&[("text", "marker".into())])).await;
    on_b.expect(TEXT_ACK).await;
    on_b.expect_relayed(TEXT, "on-c", "crew").await;
    // The dashboard on B sees both ends too.
    let mut ended = 0;
    while ended < 2 {
        let frame = dashboard.next_frame().await;
        if frame[1].as_u64() == Some(38) && frame[5]["isActive"].as_bool() == Some(false) {
            ended += 1;
        }
    }
    assert_eq!(b.group("crew").await["typingUsers"], serde_json::json!([]));
}

/// How many connections subscribe to the relay channel of group `crew`: on one Redis,
/// `PUBSUB NUMSUB`; on a cluster, `PUBSUB SHARDNUMSUB` on the master of its slot, the only
/// node that delivers a sharded channel.
async fn crew_subscribers(setup: &Setup) -> u64 {
    let (port, channel, numsub) = match (&setup.redis, &setup.cluster) {
        (Some(redis), _) => (redis.port, Keyspace::single("presence:").group_channel("crew"), "NUMSUB"),
        (None, Some(cluster)) => {
            let channel = Keyspace::sharded("presence:", DEFAULT_CLUSTER_SHARDS).group_channel("crew");
            (cluster.master_for_key(&channel).await, channel, "SHARDNUMSUB")
        }
        (None, None) => unreachable!("a shared engine"),
    };
    let client = ::redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (_, subscribers): (String, u64) =
        ::redis::cmd("PUBSUB").arg(numsub).arg(channel).query_async(&mut conn).await.unwrap();
    subscribers
}

/// Relayed messages `router` has received from Redis so far.
async fn relayed_to(router: &Router) -> u64 {
    metric(&router.metrics().await, r#"presence_broker_messages_total{kind="relay"}"#).unwrap()
}

/// The group relay channels `router` subscribes to, as its gauge has it.
async fn group_subscriptions(router: &Router) -> Option<u64> {
    metric(&router.metrics().await, "presence_broker_group_subscriptions")
}

/// A group's PTT frames reach only the routers with a mobile member of the group: each
/// router subscribes to the group's relay channel from its first local member to its last.
async fn group_talk_reaches_only_the_routers_serving_the_group(engine: Engine) {
    let setup = Setup::new(engine).await;
    let (a, b, c) = (setup.router(&[]).await, setup.router(&[]).await, setup.router(&[]).await);
    // A dashboard is no member: C serves no mobile session of the group, yet it is told of
    // the group's indicators, which every router hears.
    let (mut dashboard, _) = c.dashboard_of("dispatcher", &["crew"]).await;
    let mut talker = a.mobile_in("t", &["crew"]).await;
    let mut listener = b.mobile_in("l", &["crew"]).await;
    dashboard.next_update().await;
    dashboard.next_update().await;
    eventually("a and b to subscribe to the group's channel", || async { crew_subscribers(&setup).await == 2 }).await;

    talker.take_floor("t", "crew", &mut listener).await;
    dashboard.expect_indicator("t", "talking", true).await;
    let before = relayed_to(&c).await;
    for n in 0..20u8 {
        talker.send_frame(0, AUDIO, "t", "crew", Value::Binary(vec![n; 40])).await;
        assert_eq!(listener.expect_relayed(AUDIO, "t", "crew").await[4], Value::Binary(vec![n; 40]));
    }
    // A marker that every router hears, published after the audio: once C has it, C has
    // had whatever was sent to it before.
    talker.indicator("t", "crew", "typing", true).await;
    dashboard.expect_indicator("t", "typing", true).await;
    assert_eq!(relayed_to(&c).await, before + 1, "C received the marker and none of the audio");

    // A member connecting on C makes C a receiver of the group's frames, until it leaves.
    let mut member = c.mobile_in("m", &["crew"]).await;
    eventually("c to subscribe to the group's channel", || async { crew_subscribers(&setup).await == 3 }).await;
    talker.send_frame(0, AUDIO, "t", "crew", Value::Binary(vec![7; 40])).await;
    assert_eq!(member.expect_relayed(AUDIO, "t", "crew").await[4], Value::Binary(vec![7; 40]));
    eventually("c's gauge to count the subscription", || async { group_subscriptions(&c).await == Some(1) }).await;
    member.close().await;
    eventually("c to leave the group's channel", || async { crew_subscribers(&setup).await == 2 }).await;
    eventually("c's gauge to count none", || async { group_subscriptions(&c).await == Some(0) }).await;
}

/// A cut subscription connection takes its group channels with it: the router subscribes
/// to them again with the rest, and the group's talk flows again.
#[tokio::test]
async fn group_channels_are_subscribed_again_after_the_subscription_is_cut() {
    let setup = Setup::new(Engine::Redis).await;
    let redis = setup.redis.as_ref().unwrap();
    let (a, b) = (setup.router(&[]).await, setup.router(&[]).await);
    let mut talker = a.mobile_in("t", &["crew"]).await;
    let mut listener = b.mobile_in("l", &["crew"]).await;
    eventually("a and b to subscribe to the group's channel", || async { crew_subscribers(&setup).await == 2 }).await;

    let mut admin = redis.client().get_multiplexed_async_connection().await.unwrap();
    let _: u64 = ::redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut admin).await.unwrap();
    for router in [&a, &b] {
        eventually("the router to resubscribe", || async {
            metric(&router.metrics().await, r#"presence_broker_resubscriptions_total{reason="dropped"}"#) >= Some(1)
        })
        .await;
    }
    eventually("a and b to subscribe to the group's channel again", || async { crew_subscribers(&setup).await == 2 })
        .await;
    talker.take_floor("t", "crew", &mut listener).await;
    talker.send_frame(0, AUDIO, "t", "crew", Value::Binary(vec![5; 40])).await;
    assert_eq!(listener.expect_relayed(AUDIO, "t", "crew").await[4], Value::Binary(vec![5; 40]));
}
