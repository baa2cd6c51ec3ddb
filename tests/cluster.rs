//! Several routers sharing one real redis-server (or a Redis Cluster): updates cross
//! routers, offline is announced exactly once however many routers sweep, and crashes,
//! rolling restarts and Redis outages leave every dashboard right without anyone
//! reconnecting.

mod common;

use ::redis::AsyncCommands;
use common::{Engine, Setup, View, assert_update, eventually, http};

on_shared_engines!(
    dashboard_on_one_router_sees_mobiles_on_another_go_silent_once,
    reconnecting_to_another_router_shows_no_false_offline,
    a_killed_routers_users_go_offline_once_after_the_ttl,
    a_rolling_restart_does_not_flash_users_offline,
);

async fn dashboard_on_one_router_sees_mobiles_on_another_go_silent_once(engine: Engine) {
    let setup = Setup::new(engine).await;
    let (a, b, _c) = (
        setup.router(&["--presence-ttl", "1"]).await,
        setup.router(&["--presence-ttl", "1"]).await,
        setup.router(&["--presence-ttl", "1"]).await,
    );
    let (mut dashboard, _) = b.dashboard("dispatcher").await;

    let _silent = a.mobile("silent", "phone-1").await;
    let online = dashboard.next_update().await;
    assert_update(&online, "silent", "online");
    assert_eq!(online["deviceId"].as_str(), Some("phone-1"));

    // Three routers sweep the same index; the offline is announced once.
    let offline = dashboard.next_update().await;
    assert_update(&offline, "silent", "offline");
    assert_eq!(offline["cause"].as_str(), Some("expired"));
    let closer = a.mobile("closer", "phone-2").await;
    assert_update(&dashboard.next_update().await, "closer", "online");
    closer.close().await;
    let closed = dashboard.next_update().await;
    assert_update(&closed, "closer", "offline");
    assert_eq!(closed["cause"].as_str(), Some("disconnect"));
}

async fn reconnecting_to_another_router_shows_no_false_offline(engine: Engine) {
    let setup = Setup::new(engine).await;
    let (a, b) = (setup.router(&[]).await, setup.router(&[]).await);
    let (mut dashboard, _) = b.dashboard("dispatcher").await;
    let old = a.mobile("walker", "phone").await;
    assert_update(&dashboard.next_update().await, "walker", "online");

    // The phone roams: a new connection to B, then the old socket on A dies.
    let mut new = b.mobile("walker", "phone").await;
    new.sync("walker").await;
    drop(old);
    let _marker = a.mobile("marker", "m").await;
    assert_update(&dashboard.next_update().await, "marker", "online");

    new.close().await;
    assert_update(&dashboard.next_update().await, "walker", "offline");
}

async fn a_killed_routers_users_go_offline_once_after_the_ttl(engine: Engine) {
    let setup = Setup::new(engine).await;
    let (mut a, b) = (setup.router(&["--presence-ttl", "1"]).await, setup.router(&["--presence-ttl", "1"]).await);
    let (mut dashboard, _) = b.dashboard("dispatcher").await;
    let _orphan = a.mobile("orphan", "phone").await;
    assert_update(&dashboard.next_update().await, "orphan", "online");

    a.signal("KILL").await;
    let offline = dashboard.next_update().await;
    assert_update(&offline, "orphan", "offline");
    assert_eq!(offline["cause"].as_str(), Some("expired"), "nobody closed it: its lease ran out");
    let _marker = b.mobile("marker", "m").await;
    assert_update(&dashboard.next_update().await, "marker", "online");
}

async fn a_rolling_restart_does_not_flash_users_offline(engine: Engine) {
    let setup = Setup::new(engine).await;
    let (mut a, b) = (setup.router(&["--shutdown-grace-ms", "3000"]).await, setup.router(&[]).await);
    let (mut dashboard, _) = b.dashboard("dispatcher").await;
    let mut stayer = a.mobile("stayer", "phone-1").await;
    let mut leaver = a.mobile("leaver", "phone-2").await;
    dashboard.next_update().await;
    dashboard.next_update().await;

    a.signal("TERM").await;
    assert_eq!(stayer.close_code().await, Some(1012), "told to reconnect");
    assert_eq!(leaver.close_code().await, Some(1012));
    assert!(a.exited().await.success(), "graceful exit");
    let mut back = b.mobile("stayer", "phone-1").await;
    back.sync("stayer").await;

    // Only the user who never came back goes offline, after the grace.
    let offline = dashboard.next_update().await;
    assert_update(&offline, "leaver", "offline");
    assert_eq!(offline["cause"].as_str(), Some("expired"));
    // The stayer's lingering session lapsed with the leaver's, silently: its newer
    // session on B holds the user online.
    let _marker = b.mobile("marker", "m").await;
    assert_update(&dashboard.next_update().await, "marker", "online");
    let (_, body) = b.post_status(r#"{"userIds": ["stayer"]}"#).await;
    assert_eq!(body["users"][0]["status"].as_str(), Some("online"));
}

#[tokio::test]
async fn a_redis_outage_degrades_then_rebuilds_without_reconnects() {
    let mut setup = Setup::new(Engine::Redis).await;
    let (a, b) = (setup.router(&[]).await, setup.router(&[]).await);
    let (mut dashboard, snapshot) = b.dashboard("dispatcher").await;
    let mut view = View::default();
    view.apply(&snapshot);
    let mut early = a.mobile("early", "phone-1").await;
    let frame = dashboard.next_frame().await;
    view.apply(&frame);
    assert_eq!(view.online_ids(), ["early"]);

    setup.redis.as_mut().unwrap().kill().await;

    // Presence answers a clear 503; the WebSocket stays up and says why heartbeats fail.
    let (status, body) = a.post_status(r#"{"userIds": ["early"]}"#).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("presence_unavailable")));
    let (status, health) = http(a.addr, "GET", "/healthz", &[], "").await;
    assert_eq!((status, health["status"].as_str()), (503, Some("degraded")));
    assert!(a.metrics().await.contains("presence_engine_up 0"));
    early.heartbeat("early").await;
    assert_eq!(early.next_error().await["code"].as_str(), Some("presence_unavailable"));
    // A phone connecting meanwhile is accepted; its presence waits for Redis.
    let mut late = a.mobile("late", "phone-2").await;
    assert_eq!(late.next_error().await["code"].as_str(), Some("presence_unavailable"));

    // Redis returns empty. Routers re-assert their sessions; the dashboard gets a fresh
    // snapshot on the connection it already has.
    setup.redis.as_mut().unwrap().spawn().await;
    let snapshots_before = view.snapshots;
    while view.online_ids() != ["early", "late"] || view.snapshots == snapshots_before {
        let frame = dashboard.next_frame().await;
        view.apply(&frame);
    }
    let (status, body) = b.post_status(r#"{"userIds": ["early", "late"]}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["users"][0]["status"].as_str(), body["users"][1]["status"].as_str()),
        (Some("online"), Some("online"))
    );
    eventually("router A to report healthy", || async { http(a.addr, "GET", "/healthz", &[], "").await.0 == 200 })
        .await;
    // Heartbeats are acknowledged again on the connections they had all along (a call on
    // a connection the Redis client is still re-establishing may briefly fail once more).
    for (client, user) in [(&mut early, "early"), (&mut late, "late")] {
        client.sync_after_outage(user).await;
    }
}

#[tokio::test]
async fn stale_and_malformed_broker_messages_are_ignored() {
    let setup = Setup::new(Engine::Redis).await;
    let a = setup.router(&[]).await;
    let (mut dashboard, _) = a.dashboard("dispatcher").await;
    let _m = a.mobile("m", "p").await;
    let online = dashboard.next_update().await;
    assert_update(&online, "m", "online");

    // An "offline" older than the online already applied arrives late: it must not undo the newer online.
    let stale = serde_json::json!({
        "userId": "m", "status": "offline", "lastSeen": 1, "deviceId": null,
        "version": online["version"].as_u64().unwrap() - 1, "cause": "disconnect", "timestamp": 1,
    });
    let mut conn = setup.redis.as_ref().unwrap().client().get_multiplexed_async_connection().await.unwrap();
    let _: u64 = conn.publish("presence:updates", stale.to_string()).await.unwrap();
    let _: u64 = conn.publish("presence:updates", "{not json").await.unwrap();
    let _marker = a.mobile("marker", "mk").await;
    assert_update(&dashboard.next_update().await, "marker", "online");
    let metrics = a.metrics().await;
    assert!(metrics.contains("presence_stale_updates_total 1"), "{metrics}");
    assert!(metrics.contains("presence_broker_messages_total{kind=\"invalid\"} 1"), "{metrics}");
}

#[tokio::test]
async fn a_transition_that_was_never_published_is_healed_by_a_resync() {
    let setup = Setup::new(Engine::Redis).await;
    let a = setup.router(&[]).await;
    let (mut dashboard, snapshot) = a.dashboard("dispatcher").await;
    let mut view = View::default();
    view.apply(&snapshot);
    let _first = a.mobile("first", "p1").await;
    view.apply(&dashboard.next_frame().await);

    // "ghost" was decided online and never published, and its change-log entry is gone
    // too (trimmed past it): the state and the sequence number are in Redis, nothing
    // else. (A transition the log still holds is read from it instead: see
    // `dashboard_stale::a_transition_never_published_is_read_from_the_change_log_…`.)
    let mut conn = setup.redis.as_ref().unwrap().client().get_multiplexed_async_connection().await.unwrap();
    let (secs, micros): (u64, u64) = ::redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let now = secs * 1000 + micros / 1000;
    let _: () = ::redis::pipe()
        .hset_multiple("presence:meta:ghost", &[("status", "online"), ("deviceId", "g")])
        .hset("presence:meta:ghost", "version", now)
        .hset("presence:meta:ghost", "lastSeen", now)
        .sadd("presence:sessions:ghost", "dead-router:1")
        .zadd("presence:leases", "ghost\ndead-router:1", now + 60_000)
        .incr("presence:seq", 1)
        .query_async(&mut conn)
        .await
        .unwrap();

    // The next transition reveals the gap; within the grace the router resyncs and the
    // dashboard gets a fresh snapshot on its open connection.
    let _marker = a.mobile("marker", "m").await;
    let snapshots = view.snapshots;
    while view.snapshots == snapshots {
        view.apply(&dashboard.next_frame().await);
    }
    assert_eq!(view.online_ids(), ["first", "ghost", "marker"]);
    assert!(a.metrics().await.contains("presence_broker_gaps_total 1"));
}

#[tokio::test]
async fn a_chosen_status_survives_redis_losing_everything() {
    let mut setup = Setup::new(Engine::Redis).await;
    let (a, b) = (setup.router(&[]).await, setup.router(&[]).await);
    let (mut dashboard, _) = b.dashboard("dispatcher").await;
    let mut driver = a.mobile_in("driver", &["crew"]).await;
    dashboard.next_update().await;
    driver.set_status("driver", "dnd", Some("driving")).await;
    assert_update(&dashboard.next_update().await, "driver", "dnd");

    // redis.conf keeps no data: a restart is empty. The router re-asserts the session with
    // the status it chose; the dashboard's fresh view shows dnd again, never just online.
    setup.redis.as_mut().unwrap().kill().await;
    setup.redis.as_mut().unwrap().spawn().await;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "the dashboard never saw dnd restored");
        let frame = dashboard.next_frame().await;
        let shown = match frame[1].as_u64() {
            Some(32) => {
                frame[5]["users"].as_array().unwrap().iter().find(|u| u["userId"].as_str() == Some("driver")).cloned()
            }
            Some(31) if frame[5]["userId"].as_str() == Some("driver") => Some(frame[5].clone()),
            _ => None,
        };
        if let Some(user) = shown
            && user["status"].as_str() == Some("dnd")
            && user["statusText"].as_str() == Some("driving")
        {
            break;
        }
    }
    // Router A answers the API again once its own rebuild is done (503 until then).
    common::eventually("router A to answer dnd", || async {
        let (status, body) = a.get("/api/users/driver/presence").await;
        status == 200
            && body["user"]["status"].as_str() == Some("dnd")
            && body["user"]["statusText"].as_str() == Some("driving")
    })
    .await;
}

/// The same for a hundred users, each heartbeating as fast as acknowledged while Redis
/// comes back empty: a heartbeat that reaches it before the router's re-assert must bring
/// the chosen status back too, never reset it to online.
#[tokio::test]
async fn a_hundred_chosen_statuses_survive_redis_losing_everything_under_heartbeats() {
    const USERS: usize = 100;
    let mut setup = Setup::new(Engine::Redis).await;
    let router = setup.router(&["--heartbeat-min-interval-ms", "0", "--recovery-grace-ms", "500"]).await;
    let mut mobiles = Vec::new();
    for i in 0..USERS {
        let user = format!("d{i}");
        let mut mobile = router.mobile_in(&user, &["crew"]).await;
        mobile.set_status(&user, "dnd", Some(&format!("text {i}"))).await;
        mobiles.push((user, mobile));
    }
    setup.redis.as_mut().unwrap().kill().await;
    setup.redis.as_mut().unwrap().spawn().await;
    // Every user heartbeats at once and keeps going (errors while the router reconnects
    // are expected), racing the router's re-assert.
    let heartbeating: Vec<_> = mobiles
        .into_iter()
        .map(|(user, mut mobile)| {
            tokio::spawn(async move {
                for _ in 0..20 {
                    mobile.heartbeat(&user).await;
                    mobile.next_frame().await;
                }
                mobile
            })
        })
        .collect();
    let mut mobiles = Vec::new();
    for task in heartbeating {
        mobiles.push(task.await.unwrap());
    }
    let ids: Vec<String> = (0..USERS).map(|i| format!("d{i}")).collect();
    common::eventually("all hundred back dnd with their text", || async {
        let (status, body) = router.post_status(&serde_json::json!({ "userIds": ids }).to_string()).await;
        status == 200
            && body["users"].as_array().unwrap().iter().enumerate().all(|(i, u)| {
                u["status"].as_str() == Some("dnd") && u["statusText"].as_str() == Some(&format!("text {i}"))
            })
    })
    .await;
    let (_, body) = router.post_status(&serde_json::json!({ "userIds": ids }).to_string()).await;
    let online = body["users"].as_array().unwrap().iter().filter(|u| u["status"].as_str() == Some("online")).count();
    assert_eq!(online, 0, "{body}");
    drop(mobiles);
}

/// A status chosen on one connection is carried by the next one too: after a reconnect
/// (a rolling restart reconnects everyone), Redis losing everything still brings it back.
#[tokio::test]
async fn a_chosen_status_survives_a_reconnect_then_redis_losing_everything() {
    let mut setup = Setup::new(Engine::Redis).await;
    let router = setup.router(&["--recovery-grace-ms", "200"]).await;
    let mut first = router.mobile_in("driver", &["crew"]).await;
    first.set_status("driver", "dnd", Some("driving")).await;
    first.close().await;
    let _second = router.mobile_in("driver", &["crew"]).await;
    setup.redis.as_mut().unwrap().kill().await;
    setup.redis.as_mut().unwrap().spawn().await;
    common::eventually("dnd and its text back after the empty restart", || async {
        let (status, body) = router.get("/api/users/driver/presence").await;
        status == 200
            && body["user"]["status"].as_str() == Some("dnd")
            && body["user"]["statusText"].as_str() == Some("driving")
    })
    .await;
}

/// Redis losing its data while every connection stands (`FLUSHALL`): the routers' check of
/// the sequence sees it go back and resyncs; a user who closed meanwhile (its disconnect
/// found nothing to end) is no ghost on the dashboards, and the users still connected are
/// back online.
#[tokio::test]
async fn a_flushall_is_noticed_and_leaves_no_ghost() {
    let setup = Setup::new(Engine::Redis).await;
    let router = setup.router(&[]).await;
    let (mut dashboard, snapshot) = router.dashboard("dispatcher").await;
    let mut view = View::default();
    view.apply(&snapshot);
    let _stayer = router.mobile("stayer", "p1").await;
    let leaver = router.mobile("leaver", "p2").await;
    while view.online.len() < 2 {
        view.apply(&dashboard.next_frame().await);
    }
    let snapshots = view.snapshots;
    let mut conn = setup.redis.as_ref().unwrap().client().get_multiplexed_async_connection().await.unwrap();
    let _: () = ::redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    leaver.close().await;
    while view.snapshots == snapshots || view.online.contains_key("leaver") {
        view.apply(&dashboard.next_frame().await);
    }
    assert_eq!(view.online_ids(), ["stayer"]);
}
