//! Redis connections that fail without an outage: a Pub/Sub connection black-holed by
//! something in between (no FIN, no RST: it just goes quiet), and connections cut by Redis
//! or a proxy (`CLIENT KILL`, an idle cut, a failover) while Redis itself answers at once.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{Engine, Router, Setup, View, eventually, http, map, prometheus::metric, tcp_proxy::TcpProxy};
use presence_router::protocol::message_type::{ERROR, START, START_ACK, STOP, STOP_ACK, TEXT};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A router that reaches Redis only through `proxy`.
/// Routers A (straight to Redis) and B (through a TCP proxy that can black-hole its
/// flows), sharing one Redis.
async fn a_and_b_behind_a_proxy() -> (Setup, TcpProxy, Router, Router) {
    let setup = Setup::new(Engine::Redis).await;
    let proxy = TcpProxy::start(setup.redis.as_ref().unwrap().port).await;
    let a = setup.router(&[]).await;
    let b = proxy.router().await;
    (setup, proxy, a, b)
}

/// A dashboard on `router`, and the view its snapshot shows.
async fn watch(router: &Router) -> (common::Client, View) {
    let (dashboard, snapshot) = router.dashboard("desk").await;
    let mut view = View::default();
    view.apply(&snapshot);
    (dashboard, view)
}

async fn health(router: &Router) -> u16 {
    http(router.addr, "GET", "/healthz", &[], "").await.0
}

/// Reads `dashboard` into `view` until it shows exactly `online`, by `deadline`.
async fn await_view(dashboard: &mut common::Client, view: &mut View, online: &[&str], deadline: Instant) {
    while view.online_ids() != online {
        let frame = tokio::time::timeout_at(deadline, dashboard.next_frame())
            .await
            .unwrap_or_else(|_| panic!("the dashboard still shows {:?}, not {online:?}", view.online_ids()));
        view.apply(&frame);
    }
}

/// Router B's subscription goes quiet while its command connection works: B notices
/// within its PING deadline, resubscribes, and rebuilds its dashboards' view, well within
/// 5 s of the cut; relayed frames from A reach B's users again.
#[tokio::test]
async fn a_black_holed_subscription_is_noticed_and_the_view_rebuilt() {
    let (_setup, proxy, a, b) = a_and_b_behind_a_proxy().await;
    let (mut dashboard, mut view) = watch(&b).await;
    let mut member = b.mobile_in("member", &["crew"]).await;
    let mut sender = a.mobile_in("sender", &["crew"]).await;
    await_view(&mut dashboard, &mut view, &["member", "sender"], Instant::now() + common::WAIT).await;

    assert_eq!(proxy.black_hole_subscriptions(), 1, "B's one subscription");
    let cut = Instant::now();
    // Users connect on both routers while B hears nothing from Redis.
    let _on_a = a.mobile("on-a", "phone-a").await;
    let _on_b = b.mobile("on-b", "phone-b").await;
    await_view(&mut dashboard, &mut view, &["member", "on-a", "on-b", "sender"], cut + Duration::from_secs(5)).await;

    // Relayed frames from A reach B's member on the new subscription.
    sender.send_frame(0, TEXT, "sender", "crew", map(&[("text", "over".into())])).await;
    loop {
        let frame = member.next_frame().await;
        if frame[1].as_u64() == Some(TEXT.into()) && frame[4]["text"].as_str() == Some("over") {
            break;
        }
    }
    let metrics = b.metrics().await;
    assert!(metrics.contains("presence_broker_resubscriptions_total{reason=\"silent\"} 1"), "{metrics}");
}

/// A subscription that cannot be re-established reads as degraded (`/healthz` 503,
/// `presence_engine_up` 0) for as long as it lasts; once it can, the view is rebuilt and
/// the router is healthy again.
#[tokio::test]
async fn a_subscription_that_stays_black_holed_reads_as_degraded_until_it_resumes() {
    let (_setup, proxy, a, b) = a_and_b_behind_a_proxy().await;
    let (mut dashboard, mut view) = watch(&b).await;

    proxy.black_hole_new_subscriptions(true);
    assert_eq!(proxy.black_hole_subscriptions(), 1);
    eventually("B to report degraded", || async { health(&b).await == 503 }).await;
    assert!(b.metrics().await.contains("presence_engine_up 0"));
    let _late = a.mobile("late", "phone").await;
    // Still degraded: every resubscription goes quiet too.
    assert_eq!(health(&b).await, 503);

    proxy.black_hole_new_subscriptions(false);
    eventually("B to report healthy", || async { health(&b).await == 200 }).await;
    await_view(&mut dashboard, &mut view, &["late"], Instant::now() + common::WAIT).await;
    assert!(b.metrics().await.contains("presence_engine_up 1"));
}

/// The command connection is black-holed (no FIN, no RST) while Redis itself answers new
/// connections: calls time out, the router turns degraded, and then gets a new
/// connection instead of waiting for the kernel to give up on the dead one (many
/// minutes). Users connecting on it afterwards are seen by the other router.
#[tokio::test]
async fn a_black_holed_command_connection_is_replaced() {
    let (_setup, proxy, a, b) = a_and_b_behind_a_proxy().await;
    let (mut dashboard, mut view) = watch(&a).await;

    assert!(proxy.black_hole_commands() >= 1);
    eventually("B to notice the silence", || async { health(&b).await == 503 }).await;
    eventually("B to reconnect", || async { health(&b).await == 200 }).await;
    let _late = b.mobile("late", "phone").await;
    await_view(&mut dashboard, &mut view, &["late"], Instant::now() + common::WAIT).await;
    let replaced = common::prometheus::metric(&b.metrics().await, "presence_redis_reconnects_total");
    assert!(replaced >= Some(1), "the replacement is counted: {replaced:?}");
}

/// Redis cuts the router's connections ten times each (command, then Pub/Sub) while 100
/// users heartbeat and others connect, set a status, and take and give back a floor: the
/// calls that find their connection gone are replayed on the new one, so nobody sees an
/// error, `/healthz` stays 200 and the dashboard never needs a fresh snapshot.
#[tokio::test]
async fn cut_connections_are_retried_without_errors_degradation_or_resyncs() {
    const HEARTBEATERS: usize = 100;
    const CUTS: usize = 10;
    let setup = Setup::new(Engine::Redis).await;
    let router = setup.router(&["--heartbeat-min-interval-ms", "0"]).await;
    let mut redis = setup.redis.as_ref().unwrap().client().get_multiplexed_async_connection().await.unwrap();
    let (mut dashboard, mut view) = watch(&router).await;
    let mut talker = router.mobile_in("talker", &["crew"]).await;
    let mut mobiles = Vec::new();
    for i in 0..HEARTBEATERS {
        mobiles.push(router.mobile_in(&format!("h{i}"), &["fleet"]).await);
    }
    while view.online.len() < HEARTBEATERS + 1 {
        view.apply(&dashboard.next_frame().await);
    }

    let stop = CancellationToken::new();
    let errors = Arc::new(AtomicUsize::new(0));
    let heartbeaters: Vec<_> = mobiles
        .into_iter()
        .enumerate()
        .map(|(i, mut mobile)| {
            let (stop, errors) = (stop.clone(), errors.clone());
            tokio::spawn(async move {
                let user = format!("h{i}");
                while !stop.is_cancelled() {
                    mobile.heartbeat(&user).await;
                    if mobile.next_frame().await[1].as_u64() == Some(ERROR.into()) {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        })
        .collect();
    let unhealthy = Arc::new(AtomicUsize::new(0));
    let poller = {
        let (stop, unhealthy, addr) = (stop.clone(), unhealthy.clone(), router.addr);
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                if http(addr, "GET", "/healthz", &[], "").await.0 != 200 {
                    unhealthy.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let mut newcomers = Vec::new();
    for cut in 0..CUTS {
        let killed: u64 =
            redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal").query_async(&mut redis).await.unwrap();
        assert!(killed >= 1, "the router's command connection was cut");
        // At once, the calls a connection waits for: connect, STATUS, the floor's take and
        // release. Each answers as if nothing happened.
        let user = format!("n{cut}");
        newcomers.push(router.mobile_in(&user, &["crew"]).await);
        let status = if cut % 2 == 0 { "dnd" } else { "online" };
        talker.set_status("talker", status, None).await;
        talker.send_frame(0, START, "talker", "crew", map(&[])).await;
        talker.expect(START_ACK).await;
        talker.send_frame(0, STOP, "talker", "crew", map(&[])).await;
        talker.expect(STOP_ACK).await;
        let (mut joined, mut set) = (false, false);
        while !(joined && set) {
            let frame = dashboard.next_frame().await;
            view.apply(&frame);
            let update = &frame[5];
            joined |= update["userId"].as_str() == Some(user.as_str()) && update["status"].as_str() == Some("online");
            set |= update["userId"].as_str() == Some("talker") && update["status"].as_str() == Some(status);
        }
    }

    let resubscribed = |n: usize| {
        let router = &router;
        async move {
            router.metrics().await.contains(&format!("presence_broker_resubscriptions_total{{reason=\"dropped\"}} {n}"))
        }
    };
    for cut in 0..CUTS {
        let killed: u64 =
            redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut redis).await.unwrap();
        assert_eq!(killed, 1, "the router's subscription was cut");
        eventually("the router to resubscribe", || resubscribed(cut + 1)).await;
        // Transitions reach the dashboard on the new subscription.
        let user = format!("p{cut}");
        newcomers.push(router.mobile_in(&user, &["crew"]).await);
        while !view.online.contains_key(&user) {
            view.apply(&dashboard.next_frame().await);
        }
    }

    stop.cancel();
    for task in heartbeaters {
        task.await.unwrap();
    }
    poller.await.unwrap();
    assert_eq!(errors.load(Ordering::Relaxed), 0, "ERROR frames answered to heartbeats");
    assert_eq!(unhealthy.load(Ordering::Relaxed), 0, "/healthz answers other than 200");
    assert_eq!(view.snapshots, 1, "the dashboard needed a fresh snapshot");
    let metrics = router.metrics().await;
    assert!(!metrics.contains("presence_engine_up 0"), "{metrics}");
    let local_only = metric(&metrics, "presence_floor_requests_total{result=\"local_only\"}");
    assert_eq!(local_only, Some(0), "a floor granted without the store: {metrics}");
    assert!(metric(&metrics, "presence_redis_retries_total").is_some_and(|n| n > 0), "{metrics}");
}

/// What a replay relies on: each store call a connection waits for, and the heartbeat's
/// renewal, sent twice with the same arguments (as after a reply lost with its connection)
/// decides no second transition and takes no second sequence number; a floor's holder is
/// granted it again, and a floor's taker hears again whose it was.
#[tokio::test]
async fn every_store_call_is_safe_to_replay() {
    use presence_router::{
        engine::{FloorTake, PresenceStore, SignalStore},
        presence::{Mode, SessionId},
    };

    let redis = common::RedisServer::start().await;
    let conn = redis.client().get_multiplexed_async_connection().await.unwrap();
    let store = common::redis_store(redis.port, Duration::from_secs(60)).await;
    let short = common::redis_store(redis.port, Duration::from_millis(100)).await;
    let seq = || {
        let mut conn = conn.clone();
        async move { redis::cmd("GET").arg("presence:seq").query_async::<Option<u64>>(&mut conn).await.unwrap() }
    };
    let (user, lapsed) = (common::session("u", 1), common::session("l", 2));

    assert!(store.connect(&user).await.unwrap().update.is_some());
    let before = seq().await;
    let replayed = store.connect(&user).await.unwrap();
    assert_eq!((replayed.update, replayed.replaced), (None, None), "connect replayed");
    assert!(store.set_status(&user, Mode::Dnd, Some("busy")).await.unwrap().is_some());
    assert_eq!(store.set_status(&user, Mode::Dnd, Some("busy")).await.unwrap(), None, "status replayed");
    assert!(store.set_status(&user, Mode::Auto, None).await.unwrap().is_some());
    assert_eq!(store.set_status(&user, Mode::Auto, None).await.unwrap(), None, "status replayed");
    assert_eq!(store.activity(&user).await.unwrap(), None);
    assert_eq!(store.heartbeat(&user, tokio::time::Instant::now()).await.unwrap(), None);
    assert_eq!(store.heartbeat(&user, tokio::time::Instant::now()).await.unwrap(), None, "renewal replayed");
    let decided = seq().await;
    assert_eq!(decided, before.map(|s| s + 2), "one number per status change, none per replay");

    // A lapsed session's renewal is a whole lease: replayed, still one transition.
    assert!(short.connect(&lapsed).await.unwrap().update.is_some());
    let mut swept = 0;
    while swept == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        swept = short.expire_due().await.unwrap().len();
    }
    let before = seq().await;
    assert!(store.heartbeat(&lapsed, tokio::time::Instant::now()).await.unwrap().is_some());
    assert_eq!(
        store.heartbeat(&lapsed, tokio::time::Instant::now()).await.unwrap(),
        None,
        "a lapsed session's renewal replayed"
    );
    assert!(store.disconnect(&lapsed).await.unwrap().is_some());
    assert_eq!(store.disconnect(&lapsed).await.unwrap(), None, "disconnect replayed");
    assert_eq!(seq().await, before.map(|s| s + 2));

    let hold = Duration::from_secs(30);
    let (mine, theirs) = (common::floor_claim(&user.id, hold, None), common::floor_claim(&lapsed.id, hold, None));
    assert_eq!(store.take_floor("crew", &mine).await.unwrap(), FloorTake::Granted);
    assert_eq!(store.take_floor("crew", &mine).await.unwrap(), FloorTake::Granted, "the holder is granted it again");
    assert_eq!(store.take_floor("crew", &theirs).await.unwrap(), FloorTake::Busy, "and nobody else");
    store.release_floor("crew", &user.id).await.unwrap();
    store.release_floor("crew", &user.id).await.unwrap();
    assert_eq!(store.take_floor("crew", &theirs).await.unwrap(), FloorTake::Granted, "released once, free after");

    // A takeover replayed names the talker it took the floor from again (else that talker
    // is never told its talk is over).
    let idle = Some(Duration::from_millis(1));
    store.take_floor("idle", &common::floor_claim(&lapsed.id, hold, idle)).await.unwrap();
    let taker = common::floor_claim(&user.id, hold, idle);
    let first = loop {
        match store.take_floor("idle", &taker).await.unwrap() {
            FloorTake::Busy => tokio::time::sleep(Duration::from_millis(5)).await,
            taken => break taken,
        }
    };
    assert!(matches!(&first, FloorTake::TakenOver { from, .. } if from.session == lapsed.id), "{first:?}");
    assert_eq!(store.take_floor("idle", &taker).await.unwrap(), first, "the takeover replayed");
    store.touch_floor("idle", &user.id, Duration::from_secs(30)).await.unwrap();
    store.touch_floor("idle", &user.id, Duration::from_secs(30)).await.unwrap();
    let late = common::floor_claim(&SessionId::new("test", 9), hold, idle);
    assert_eq!(store.take_floor("idle", &late).await.unwrap(), FloorTake::Busy, "a touch replayed keeps it busy");
}

/// A connect that replaced its device's live session, replayed after its reply was lost,
/// still names the session it replaced: otherwise the router holding that session never
/// hears of the replacement, and the dead session keeps its floor (START_FAILED `busy` for
/// the reconnect) and its connection until its heartbeats stop.
#[tokio::test]
async fn a_replayed_connect_still_names_the_session_it_replaced() {
    use presence_router::engine::PresenceStore;

    let redis = common::RedisServer::start().await;
    let store = common::redis_store(redis.port, Duration::from_secs(60)).await;
    let (dead, reconnect) = (common::session("u", 1), common::session("u", 2));

    store.connect(&dead).await.unwrap();
    let first = store.connect(&reconnect).await.unwrap();
    assert_eq!(first.replaced.as_ref(), Some(&dead.id), "the reconnect replaces the dead session");
    let replayed = store.connect(&reconnect).await.unwrap();
    assert_eq!(replayed.update, None, "no second transition");
    assert_eq!(replayed.replaced.as_ref(), Some(&dead.id), "connect replayed");
}
