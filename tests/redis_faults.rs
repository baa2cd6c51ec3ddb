//! Redis faults that are not clean outages. A hung Redis (SIGSTOP: connections stay open,
//! nothing answers) must not stall PTT on a router: no connection task waits on the store.

mod common;

use std::time::Duration;

use common::{Engine, Setup, map, prometheus::metric};
use presence_router::protocol::message_type::{AUDIO, START, START_ACK, TEXT, TEXT_ACK};
use rmpv::Value;
use tokio::time::Instant;

#[tokio::test]
async fn ptt_on_one_router_never_waits_for_a_hung_redis() {
    const HEARTBEATERS: usize = 600;
    let setup = Setup::new(Engine::Redis).await;
    let router = setup.router(&["--heartbeat-min-interval-ms", "0"]).await;
    let mut talker = router.mobile_in("talker", &["crew"]).await;
    let mut listener = router.mobile_in("listener", &["crew"]).await;
    talker.send_frame(0, START, "talker", "crew", map(&[])).await;
    talker.expect(START_ACK).await;
    listener.expect_relayed(START, "talker", "crew").await;

    // 600 users heartbeating twice a second (1,200 heartbeats/s), each reading its answers.
    let mut heartbeaters = Vec::new();
    for i in 0..HEARTBEATERS {
        heartbeaters.push(router.mobile_in(&format!("h{i}"), &["fleet"]).await);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let tasks: Vec<_> = heartbeaters
        .into_iter()
        .enumerate()
        .map(|(i, mut mobile)| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let user = format!("h{i}");
                while !stop.is_cancelled() {
                    mobile.heartbeat(&user).await;
                    mobile.next_frame().await; // ACK, or ERROR presence_unavailable
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                mobile
            })
        })
        .collect();

    setup.redis.as_ref().unwrap().signal("STOP").await;
    // The listener heartbeats too, while audio flows: neither may wait on Redis.
    let audio = Value::Binary(vec![1; 160]);
    let mut worst_gap = Duration::ZERO;
    let mut last = Instant::now();
    for n in 0..50 {
        talker.send_frame(0, AUDIO, "talker", "crew", audio.clone()).await;
        if n % 10 == 0 {
            listener.heartbeat("listener").await;
        }
        if n % 10 == 5 {
            // TEXT counts as activity: its store write must not hold the talker's audio.
            talker.send_frame(0, TEXT, "talker", "crew", map(&[("text", "copy".into())])).await;
        }
        loop {
            let frame = listener.next_frame().await;
            if frame[1].as_u64() == Some(AUDIO.into()) {
                break;
            }
        }
        worst_gap = worst_gap.max(last.elapsed());
        last = Instant::now();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    talker.send_frame(0, TEXT, "talker", "crew", map(&[("text", "still here".into())])).await;
    loop {
        let frame = listener.next_frame().await;
        if frame[1].as_u64() == Some(TEXT.into()) && frame[4]["text"].as_str() == Some("still here") {
            break;
        }
    }
    talker.expect(TEXT_ACK).await;
    setup.redis.as_ref().unwrap().signal("CONT").await;
    // A heartbeat blocked on a hung Redis used to hold its connection for a second or more
    // at a time; 500 ms is far above a 20 ms frame interval and far below that.
    assert!(worst_gap < Duration::from_millis(500), "audio stalled {worst_gap:?} while Redis hung");

    // Once Redis answers, presence is whole again: everyone online, nobody lost.
    stop.cancel();
    let mut mobiles = Vec::new();
    for task in tasks {
        mobiles.push(task.await.unwrap());
    }
    let ids: Vec<String> =
        (0..HEARTBEATERS).map(|i| format!("h{i}")).chain(["talker".into(), "listener".into()]).collect();
    common::eventually("everyone online after Redis resumes", || async {
        let (status, body) = router.post_status(&serde_json::json!({ "userIds": ids[..100] }).to_string()).await;
        status == 200 && body["users"].as_array().unwrap().iter().all(|u| u["status"].as_str() == Some("online"))
    })
    .await;
    for chunk in ids.chunks(100) {
        let (status, body) = router.post_status(&serde_json::json!({ "userIds": chunk }).to_string()).await;
        assert_eq!(status, 200, "{body}");
        let offline: Vec<_> =
            body["users"].as_array().unwrap().iter().filter(|u| u["status"].as_str() != Some("online")).collect();
        assert!(offline.is_empty(), "false offline after the hang: {offline:?}");
    }
    drop(mobiles);
}

/// Redis refusing writes (out of memory under `noeviction`; a read-only replica after a
/// failover looks the same) is degraded, not success: the API answers 503 rather than
/// stale presence; once writes succeed, users who left meanwhile are offline, a newcomer
/// is online, and dashboards agree.
#[tokio::test]
async fn write_failures_read_as_degraded_and_heal_without_ghosts() {
    let setup = Setup::new(Engine::Redis).await;
    let router = setup.router(&["--recovery-grace-ms", "200"]).await;
    let (mut dashboard, snapshot) = router.dashboard("desk").await;
    let mut view = common::View::default();
    view.apply(&snapshot);
    let mut stayers = Vec::new();
    let mut leavers = Vec::new();
    for i in 0..10 {
        stayers.push(router.mobile_in(&format!("stay{i}"), &["crew"]).await);
        leavers.push(router.mobile_in(&format!("leave{i}"), &["crew"]).await);
    }
    while view.online.len() < 20 {
        view.apply(&dashboard.next_frame().await);
    }

    let mut redis = setup.redis.as_ref().unwrap().client().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(1).query_async(&mut redis).await.unwrap();
    // Noticed by the router's own write probe, before any client writes anything.
    common::eventually("the router to notice refused writes", || async {
        common::http(router.addr, "GET", "/healthz", &[], "").await.0 == 503
    })
    .await;
    for leaver in leavers {
        leaver.close().await;
    }
    // The newcomer is told presence is unavailable (its connection stays up).
    let token = presence_router::auth::mint_hs256_in(
        common::SECRET.as_bytes(),
        "newcomer",
        presence_router::auth::Role::Mobile,
        Some(&["crew"]),
        3600,
    )
    .unwrap();
    let mut newcomer = common::Client::connect(router.addr, &token, Some("device")).await;
    assert_eq!(newcomer.next_error().await["code"].as_str(), Some("presence_unavailable"));
    common::eventually("the router to report degraded", || async {
        common::http(router.addr, "GET", "/healthz", &[], "").await.0 == 503
    })
    .await;
    let (status, body) = router.post_status(r#"{"userIds": ["stay0", "leave0"]}"#).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("presence_unavailable")), "{body}");
    assert!(router.metrics().await.contains("presence_engine_up 0"));

    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(0).query_async(&mut redis).await.unwrap();
    let ids: Vec<String> =
        (0..10).flat_map(|i| [format!("stay{i}"), format!("leave{i}")]).chain(["newcomer".to_string()]).collect();
    common::eventually("presence rebuilt once writes succeed", || async {
        let (status, body) = router.post_status(&serde_json::json!({ "userIds": ids }).to_string()).await;
        status == 200
            && body["users"].as_array().unwrap().iter().all(|u| {
                let id = u["userId"].as_str().unwrap();
                let want = if id.starts_with("leave") { "offline" } else { "online" };
                u["status"].as_str() == Some(want)
            })
    })
    .await;
    let expected: Vec<String> =
        std::iter::once("newcomer".to_string()).chain((0..10).map(|i| format!("stay{i}"))).collect();
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while view.online_ids() != expected.iter().map(String::as_str).collect::<Vec<_>>() {
        assert!(tokio::time::Instant::now() < deadline, "the dashboard shows {:?}", view.online_ids());
        view.apply(&dashboard.next_frame().await);
    }
    drop(stayers);
}

/// A key that is not what the scripts keep there (a string where a user's meta hash should
/// be: another application writing under the prefix, a bad migration) is a fault in that
/// user's data, not an outage: that user's calls fail, counted as `kind="protocol"`, and
/// the router keeps serving everyone else, undegraded. Taken for an outage, it would
/// degrade the router for good: every resync re-asserts that user's session and meets the
/// same key.
#[tokio::test]
async fn a_key_of_the_wrong_type_fails_its_users_calls_without_degrading_the_router() {
    let setup = Setup::new(Engine::Redis).await;
    let router = setup.router(&[]).await;
    let mut redis = setup.redis.as_ref().unwrap().client().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET").arg("presence:meta:broken").arg("not a hash").query_async(&mut redis).await.unwrap();

    let token = presence_router::auth::mint_hs256_in(
        common::SECRET.as_bytes(),
        "broken",
        presence_router::auth::Role::Mobile,
        Some(&["crew"]),
        3600,
    )
    .unwrap();
    let mut broken = common::Client::connect(router.addr, &token, Some("device")).await;
    assert_eq!(broken.next_error().await["code"].as_str(), Some("presence_unavailable"));
    let metrics = router.metrics().await;
    assert_eq!(metric(&metrics, r#"presence_engine_errors_total{op="connect",kind="protocol"}"#), Some(1), "{metrics}");
    assert!(metrics.contains("presence_engine_up 1"), "{metrics}");
    assert_eq!(common::http(router.addr, "GET", "/healthz", &[], "").await.0, 200);

    let (mut dashboard, _) = router.dashboard("desk").await;
    let _fine = router.mobile_in("fine", &["crew"]).await;
    common::assert_update(&dashboard.next_update().await, "fine", "online");
    let (status, body) = router.post_status(r#"{"userIds": ["fine"]}"#).await;
    assert_eq!((status, body["users"][0]["status"].as_str()), (200, Some("online")), "{body}");
}

/// A user whose keys are of another type, with a lapsed lease, fails alone: the sweep, in
/// score order, meets it first every time, and must go on to end everyone else's lapsed
/// leases (a silent user still goes offline by expiry, once).
#[tokio::test]
async fn a_user_whose_keys_are_of_another_type_does_not_stop_the_sweep() {
    let setup = Setup::new(Engine::Redis).await;
    let router = setup.router(&["--presence-ttl", "1"]).await;
    let mut redis = setup.redis.as_ref().unwrap().client().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::pipe()
        .set("presence:sessions:mallory", "not a set")
        .zadd("presence:leases", "mallory\nrouter:1", 1)
        .query_async(&mut redis)
        .await
        .unwrap();
    let (mut dashboard, _) = router.dashboard("desk").await;
    let _silent = router.mobile("silent", "phone").await;
    common::assert_update(&dashboard.next_update().await, "silent", "online");
    let offline = dashboard.next_update().await;
    common::assert_update(&offline, "silent", "offline");
    assert_eq!(offline["cause"].as_str(), Some("expired"), "the sweep ended it, not the heartbeat timeout");
    let metrics = router.metrics().await;
    assert_eq!(metric(&metrics, r#"presence_engine_errors_total{op="expire",kind="protocol"}"#), Some(1), "{metrics}");
}

/// A group's index key of another type costs that index its entry, never a user's
/// transition: a member of the group who leaves goes offline on the dashboards.
#[tokio::test]
async fn a_group_key_of_another_type_leaves_no_ghost() {
    let setup = Setup::new(Engine::Redis).await;
    let router = setup.router(&[]).await;
    let mut redis = setup.redis.as_ref().unwrap().client().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET").arg("presence:group:crew").arg("not a zset").query_async(&mut redis).await.unwrap();
    let (mut dashboard, _) = router.dashboard("desk").await;
    let member = router.mobile_in("member", &["crew"]).await;
    common::assert_update(&dashboard.next_update().await, "member", "online");
    member.close().await;
    common::assert_update(&dashboard.next_update().await, "member", "offline");
    let (status, body) = router.post_status(r#"{"userIds": ["member"]}"#).await;
    assert_eq!((status, body["users"][0]["status"].as_str()), (200, Some("offline")), "{body}");
}
