//! A router whose view of presence stops being fed (Redis killed, hung, its subscription
//! killed, transitions missed) tells its dashboards STALE (43) with since when and why,
//! keeps showing what it knew (nobody goes offline because the router lost Redis), and
//! says FRESH (44) once the rebuilt view, with what changed meanwhile on other routers,
//! has been sent. Real routers, real redis-server.

mod common;

use ::redis::AsyncCommands;
use common::{Client, Engine, Router, Setup, View, eventually, http, tcp_proxy::TcpProxy};
use presence_router::protocol::message_type::{FRESH, PRESENCE_SNAPSHOT, STALE};
use rmpv::Value;

/// A dashboard on `router` and the view its snapshot shows.
async fn watch(router: &Router) -> (Client, View) {
    let (dashboard, snapshot) = router.dashboard("desk").await;
    let mut view = View::default();
    view.apply(&snapshot);
    (dashboard, view)
}

/// Reads the dashboard's frames into `view` until it shows exactly `online` online.
async fn until_shown(dashboard: &mut Client, view: &mut View, online: &[&str]) {
    while view.online_ids() != online {
        view.apply(&dashboard.next_frame().await);
    }
}

/// Reads the dashboard's frames into `view` until one of `message_type` arrives (returned);
/// every user of `kept` must be online in the view after each frame: no false offline.
async fn read_until(dashboard: &mut Client, view: &mut View, message_type: u8, kept: &[&str]) -> Value {
    loop {
        let frame = dashboard.next_frame().await;
        view.apply(&frame);
        for user in kept {
            assert!(view.online.contains_key(*user), "{user} shown offline after {frame}; view {view:?}");
        }
        if frame[1].as_u64() == Some(message_type.into()) {
            return frame;
        }
    }
}

/// Routers A and B on `setup`'s Redis, user "steady" online on B (its connection is
/// returned), and a dashboard on A that shows it.
async fn steady_on_b_watched_on_a(setup: &Setup) -> (Router, Router, Client, Client, View) {
    let (a, b) = (setup.router(&[]).await, setup.router(&[]).await);
    let (mut dashboard, mut view) = watch(&a).await;
    let mut steady = b.mobile("steady", "p1").await;
    steady.sync("steady").await;
    until_shown(&mut dashboard, &mut view, &["steady"]).await;
    (a, b, steady, dashboard, view)
}

/// The STALE frame's payload, checked: since a moment ago, for one of `reasons`.
fn stale_payload(frame: &Value, reasons: &[&str]) -> Value {
    let payload = frame[5].clone();
    let since = payload["since"].as_u64().expect("since, in Unix ms");
    assert!(since <= payload["timestamp"].as_u64().unwrap(), "{payload}");
    let reason = payload["reason"].as_str().expect("a reason");
    assert!(reasons.contains(&reason), "reason {reason}, expected one of {reasons:?}");
    payload
}

/// `presence_view_stale` on `router`'s metrics is `value`.
async fn stale_gauge(router: &Router, value: u8) -> bool {
    router.metrics().await.lines().any(|line| line == format!("presence_view_stale {value}"))
}

#[tokio::test]
async fn redis_restarted_empty_is_stale_until_every_router_is_back_and_shows_no_false_offline() {
    let mut setup = Setup::new(Engine::Redis).await;
    let proxy = TcpProxy::start(setup.redis.as_ref().unwrap().port).await;
    let a = setup.router(&[]).await;
    // B reaches Redis through the proxy, which keeps it out after the restart for a while:
    // A rebuilds its view while B's sessions are not in Redis yet.
    let b = proxy.router().await;
    let (mut dashboard, mut view) = watch(&a).await;
    let mut local = a.mobile("local", "p0").await;
    local.sync("local").await;
    let mut steady = b.mobile("steady", "p1").await;
    steady.sync("steady").await;
    let mut leaver = b.mobile("leaver", "p2").await;
    leaver.sync("leaver").await;
    let everyone = ["leaver", "local", "steady"];
    until_shown(&mut dashboard, &mut view, &everyone).await;

    proxy.refuse_new(true);
    setup.redis.as_mut().unwrap().kill().await;
    let stale = read_until(&mut dashboard, &mut view, STALE, &everyone).await;
    let since = stale_payload(&stale, &["subscription_lost", "store_unreachable"])["since"].clone();
    assert!(stale_gauge(&a, 1).await);
    // A change on another router while Redis is away: applied once Redis is back.
    leaver.close().await;

    setup.redis.as_mut().unwrap().spawn().await;
    // A rebuilds first: Redis lists only A's own session, yet B's users stay online.
    read_until(&mut dashboard, &mut view, PRESENCE_SNAPSHOT, &everyone).await;
    let (status, body) = a.get("/api/users/local/presence").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stale"]["since"], serde_json::json!(since.as_u64()), "the API says so too: {body}");
    proxy.refuse_new(false);

    let fresh = read_until(&mut dashboard, &mut view, FRESH, &["local", "steady"]).await;
    assert_eq!(fresh[5]["since"], since, "the spell that began at STALE");
    assert_eq!(view.online_ids(), ["local", "steady"], "the view FRESH vouches for");
    assert!(stale_gauge(&a, 0).await);
    let (status, body) = a.get("/api/users/local/presence").await;
    assert_eq!((status, body.get("stale")), (200, None), "{body}");
}

#[tokio::test]
async fn a_hung_redis_is_stale_within_seconds_and_fresh_after_with_no_false_offline() {
    let setup = Setup::new(Engine::Redis).await;
    let (a, b) = (setup.router(&[]).await, setup.router(&[]).await);
    let (mut dashboard, mut view) = watch(&a).await;
    let mut steady = b.mobile("steady", "p1").await;
    steady.sync("steady").await;
    let mut leaver = b.mobile("leaver", "p2").await;
    leaver.sync("leaver").await;
    until_shown(&mut dashboard, &mut view, &["leaver", "steady"]).await;

    let redis = setup.redis.as_ref().unwrap();
    redis.signal("STOP").await;
    let stale = read_until(&mut dashboard, &mut view, STALE, &["leaver", "steady"]).await;
    stale_payload(&stale, &["subscription_lost", "store_unreachable"]);
    leaver.close().await;
    redis.signal("CONT").await;

    read_until(&mut dashboard, &mut view, FRESH, &["steady"]).await;
    // B ends the session that closed while Redis hung once it recovers; A hears it.
    while view.online_ids() != ["steady"] {
        read_until(&mut dashboard, &mut view, 31, &["steady"]).await;
    }
}

#[tokio::test]
async fn a_killed_subscription_that_cannot_come_back_is_stale_and_fresh_brings_what_it_missed() {
    let setup = Setup::new(Engine::Redis).await;
    let redis = setup.redis.as_ref().unwrap();
    let proxy = TcpProxy::start(redis.port).await;
    let a = proxy.router().await;
    let b = setup.router(&[]).await;
    let (mut dashboard, mut view) = watch(&a).await;
    let mut steady = b.mobile("steady", "p1").await;
    steady.sync("steady").await;
    let mut leaver = b.mobile("leaver", "p2").await;
    leaver.sync("leaver").await;
    until_shown(&mut dashboard, &mut view, &["leaver", "steady"]).await;

    proxy.black_hole_new_subscriptions(true);
    assert!(redis.kill_subscriptions().await >= 2, "both routers' subscriptions");
    let stale = read_until(&mut dashboard, &mut view, STALE, &["leaver", "steady"]).await;
    stale_payload(&stale, &["subscription_lost"]);
    // A dashboard connecting meanwhile gets the last view, then STALE at once.
    let (mut late, snapshot) = a.dashboard("late").await;
    let mut late_view = View::default();
    late_view.apply(&snapshot);
    assert_eq!(late_view.online_ids(), ["leaver", "steady"]);
    assert_eq!(late.next_frame().await[5]["since"], stale[5]["since"]);

    // B, still subscribed, changes presence; A hears none of it.
    leaver.close().await;
    let mut newcomer = b.mobile("newcomer", "p3").await;
    newcomer.sync("newcomer").await;
    proxy.black_hole_new_subscriptions(false);

    let fresh = read_until(&mut dashboard, &mut view, FRESH, &["steady"]).await;
    assert_eq!(fresh[5]["since"], stale[5]["since"]);
    assert_eq!(view.online_ids(), ["newcomer", "steady"], "FRESH comes after what was missed");
    read_until(&mut late, &mut late_view, FRESH, &["steady"]).await;
    assert_eq!(late_view.online_ids(), ["newcomer", "steady"]);
}

#[tokio::test]
async fn a_transition_that_never_arrives_is_stale_until_the_rebuild() {
    let setup = Setup::new(Engine::Redis).await;
    let (a, _b, _steady, mut dashboard, mut view) = steady_on_b_watched_on_a(&setup).await;

    // A number taken with no transition in the change log under it (an entry trimmed
    // away): nothing can fill the gap but a rebuild.
    let mut conn = setup.redis.as_ref().unwrap().client().get_multiplexed_async_connection().await.unwrap();
    let _: u64 = conn.incr("presence:seq", 1).await.unwrap();
    let stale = read_until(&mut dashboard, &mut view, STALE, &["steady"]).await;
    stale_payload(&stale, &["updates_missed"]);
    let snapshots = view.snapshots;
    read_until(&mut dashboard, &mut view, FRESH, &["steady"]).await;
    assert!(view.snapshots > snapshots, "the rebuilt view came before FRESH");
    assert_eq!(view.online_ids(), ["steady"]);
    eventually("the gauge back at 0", || stale_gauge(&a, 0)).await;
    let metrics = a.metrics().await;
    assert!(metrics.contains("presence_view_stale_total{reason=\"updates_missed\"} 1"), "{metrics}");
    let (status, _) = http(a.addr, "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200);
}

/// A transition decided and logged but never published (its router killed in between,
/// or the message lost) is read from the change log once its grace has passed: the view
/// is right without a rebuild, a STALE spell or a fresh snapshot.
#[tokio::test]
async fn a_transition_never_published_is_read_from_the_change_log_without_a_rebuild() {
    use presence_router::engine::PresenceStore;
    let setup = Setup::new(Engine::Redis).await;
    let (a, _b, _steady, mut dashboard, mut view) = steady_on_b_watched_on_a(&setup).await;
    let counter = |name: &'static str| {
        let a = &a;
        async move { common::prometheus::metric(&a.metrics().await, name).unwrap_or(0) }
    };
    let resyncs = counter("presence_resyncs_total").await;

    // Decided (and logged) by a store of the test's own, which never publishes it; with
    // nothing after it, only the routers' periodic check of the head shows the gap.
    let store = common::redis_store(setup.redis.as_ref().unwrap().port, std::time::Duration::from_secs(60)).await;
    store.connect(&common::session("ghost", 1)).await.unwrap();
    let snapshots = view.snapshots;
    loop {
        let frame = dashboard.next_frame().await;
        assert_ne!(frame[1].as_u64(), Some(STALE.into()), "a gap the log still holds is no reason to be stale");
        view.apply(&frame);
        if view.online.contains_key("ghost") {
            break;
        }
    }
    assert_eq!(view.snapshots, snapshots, "shown without a fresh snapshot");
    assert_eq!(view.online_ids(), ["ghost", "steady"]);
    assert_eq!(counter("presence_broker_gaps_filled_total").await, 1);
    assert_eq!(counter("presence_resyncs_total").await, resyncs, "no rebuild");
    assert!(stale_gauge(&a, 0).await);
}

/// How long after each fault its dashboards get STALE, and after recovery FRESH (printed
/// for docs/OPERATIONS.md; `cargo test --test dashboard_stale -- --ignored --nocapture`).
#[tokio::test]
#[ignore = "a measurement; prints the delays"]
async fn measure_stale_and_fresh_delays() {
    use std::time::Instant;
    let mut setup = Setup::new(Engine::Redis).await;
    let (a, b) = (setup.router(&[]).await, setup.router(&[]).await);
    let (mut dashboard, mut view) = watch(&a).await;
    let mut steady = b.mobile("steady", "p1").await;
    steady.sync("steady").await;
    until_shown(&mut dashboard, &mut view, &["steady"]).await;
    for round in 0..5 {
        let redis = setup.redis.as_mut().unwrap();
        let (stale_after, fresh_after) = if round % 2 == 0 {
            let started = Instant::now();
            redis.kill().await;
            read_until(&mut dashboard, &mut view, STALE, &["steady"]).await;
            let stale = started.elapsed();
            let started = Instant::now();
            setup.redis.as_mut().unwrap().spawn().await;
            read_until(&mut dashboard, &mut view, FRESH, &["steady"]).await;
            (stale, started.elapsed())
        } else {
            let started = Instant::now();
            redis.signal("STOP").await;
            read_until(&mut dashboard, &mut view, STALE, &["steady"]).await;
            let stale = started.elapsed();
            let started = Instant::now();
            redis.signal("CONT").await;
            read_until(&mut dashboard, &mut view, FRESH, &["steady"]).await;
            (stale, started.elapsed())
        };
        let fault = if round % 2 == 0 { "killed, restarted empty" } else { "SIGSTOP, SIGCONT" };
        eprintln!("redis {fault}: STALE after {stale_after:?}, FRESH {fresh_after:?} after it was back");
        // Heartbeats renew the lease again before the next round.
        steady.sync_after_outage("steady").await;
    }
}
