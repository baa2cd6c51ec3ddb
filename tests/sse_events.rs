//! `GET /api/presence/events`: presence transitions as server-sent events. A stream
//! resumes from the position of its last event on any router of the deployment, sends
//! only users within its token's scope, refuses a position the change log can no longer
//! serve, caps how many are open, and cuts a client that stops reading. Real routers and
//! real redis-server; the stream read over a raw socket.

mod common;

use common::{
    Engine, Router, SECRET, Setup,
    sse::{Event, Sse},
    tcp_proxy::TcpProxy,
    token,
};
use presence_router::auth::{Role, mint_hs256_in};

const PATH: &str = "/api/presence/events";

on_both_engines!(resumes_from_its_last_event_on_another_router, a_scoped_token_is_sent_only_users_in_its_groups);

/// On a Redis Cluster a position names one number per shard: each event's id still
/// resumes exactly, whichever shards the missed transitions were in.
#[tokio::test]
async fn resumes_from_its_last_event_on_a_redis_cluster() {
    resumes_from_its_last_event_on_another_router(Engine::RedisCluster).await;
}

/// The (user, status) of a presence event.
fn shown(event: &Event) -> (String, String) {
    assert_eq!(event.name, "presence", "{event:?}");
    (event.data["userId"].as_str().unwrap().to_string(), event.data["status"].as_str().unwrap().to_string())
}

/// The presence events up to `ready`, and `ready`.
async fn until_ready(sse: &mut Sse) -> (Vec<(String, String)>, Event) {
    let mut shown_before = Vec::new();
    loop {
        let event = sse.event().await;
        if event.name == "ready" {
            return (shown_before, event);
        }
        shown_before.push(shown(&event));
    }
}

async fn resumes_from_its_last_event_on_another_router(engine: Engine) {
    let setup = Setup::new(engine).await;
    let first = setup.router(&[]).await;
    // On the memory engine one router is the deployment.
    let second = match engine {
        Engine::Memory => None,
        _ => Some(setup.router(&[]).await),
    };
    let second = second.as_ref().unwrap_or(&first);
    let backend = token("backend", Role::Service);

    let mut sse = Sse::open(first.addr, PATH, &backend, None).await.open();
    let (before, ready) = until_ready(&mut sse).await;
    assert!(before.is_empty(), "without a position the stream starts now: {before:?}");
    assert_eq!(ready.data["resumed"], 0);
    assert_eq!(ready.id.as_deref(), ready.data["position"].as_str());
    let u1 = second.mobile_in("u1", &["g1"]).await;
    let online = sse.event().await;
    assert_eq!(shown(&online), ("u1".into(), "online".into()));
    assert_eq!(online.data["cause"], "connect");
    assert!(online.data["version"].as_u64().unwrap() > 0);
    let at = online.id.clone().expect("a presence event has an id");
    drop(sse);

    let _u2 = second.mobile_in("u2", &["g1"]).await;
    u1.close().await;
    common::eventually("u1 offline", || async { second.user("u1").await["status"] == "offline" }).await;

    // An SSE client reconnects with the last id it received.
    let mut resumed = Sse::open(second.addr, &format!("{PATH}?since=ignored"), &backend, Some(&at)).await.open();
    let (missed, ready) = until_ready(&mut resumed).await;
    let mut missed_sorted = missed.clone();
    missed_sorted.sort();
    assert_eq!(missed_sorted, [("u1".into(), "offline".into()), ("u2".into(), "online".into())], "{missed:?}");
    assert_eq!(ready.data["resumed"], 2);

    // Then it follows the transitions decided on any router.
    let _u3 = first.mobile_in("u3", &["g1"]).await;
    assert_eq!(shown(&resumed.event().await), ("u3".into(), "online".into()));
}

async fn a_scoped_token_is_sent_only_users_in_its_groups(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let scoped = mint_hs256_in(SECRET.as_bytes(), "backend", Role::Service, Some(&["g1"]), 3600).unwrap();
    let mut sse = Sse::open(router.addr, PATH, &scoped, None).await.open();
    let (_, ready) = until_ready(&mut sse).await;
    let start = ready.id.unwrap();

    let outsider = router.mobile_in("outsider", &["g2"]).await;
    let insider = router.mobile_in("insider", &["g1"]).await;
    // Had the outsider been sent, it would have come first.
    assert_eq!(shown(&sse.event().await), ("insider".into(), "online".into()));
    outsider.close().await;
    insider.close().await;
    assert_eq!(shown(&sse.event().await), ("insider".into(), "offline".into()));

    // The same holds for what is read back from the log.
    let mut resumed = Sse::open(router.addr, PATH, &scoped, Some(&start)).await.open();
    let (missed, _) = until_ready(&mut resumed).await;
    assert!(missed.iter().all(|(user, _)| user == "insider"), "{missed:?}");
    assert_eq!(missed.len(), 2, "{missed:?}");
}

#[tokio::test]
async fn a_position_the_log_no_longer_serves_is_refused_before_streaming() {
    let router = Router::start(&["--change-log-entries", "2"]).await;
    let backend = token("backend", Role::Service);
    let mut sse = Sse::open(router.addr, PATH, &backend, None).await.open();
    let (_, ready) = until_ready(&mut sse).await;
    let start = ready.id.unwrap();
    let mut mobiles = Vec::new();
    for user in ["a", "b", "c"] {
        mobiles.push(router.mobile_in(user, &["g1"]).await);
        sse.next_named("presence").await;
    }
    let (status, body) = Sse::open(router.addr, &format!("{PATH}?since={start}"), &backend, None).await.refused();
    assert_eq!((status, body["error"]["code"].as_str()), (410, Some("position_expired")), "{body}");

    let other_history = "0000000000000001:0";
    let (status, body) = Sse::open(router.addr, PATH, &backend, Some(other_history)).await.refused();
    assert_eq!((status, body["error"]["code"].as_str()), (410, Some("position_unknown")), "{body}");

    let (status, body) = Sse::open(router.addr, &format!("{PATH}?since=nonsense"), &backend, None).await.refused();
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_position")), "{body}");
}

#[tokio::test]
async fn streams_are_capped_and_a_slow_consumer_is_cut() {
    let router = Router::start(&[
        "--event-streams",
        "1",
        "--event-stream-queue",
        "4",
        "--tcp-send-buffer",
        "4096",
        "--frame-rate",
        "100000",
        "--frame-burst",
        "100000",
    ])
    .await;
    let backend = token("backend", Role::Service);
    let mut slow = Sse::open_small(router.addr, PATH, &backend, 4096).await.open();
    until_ready(&mut slow).await;
    let (status, body) = Sse::open(router.addr, PATH, &backend, None).await.refused();
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("too_many_streams")), "{body}");

    // The client stops reading while transitions keep coming.
    let mut mobile = router.mobile_in("m", &["g1"]).await;
    let changes = 600;
    for i in 0..changes {
        let text = format!("{i:03}{}", "x".repeat(120));
        mobile.set_status("m", "online", Some(&text)).await;
    }
    common::eventually("the slow consumer cut", || async {
        router.metrics().await.contains("presence_event_stream_ends_total{reason=\"slow_consumer\"} 1")
    })
    .await;
    let mut received = 0;
    while slow.next().await.is_some() {
        received += 1;
    }
    assert!(received < changes, "the stream ended early, after {received} of {changes} events");

    // Its place is free again.
    common::eventually("the stream's place freed", || async {
        router.metrics().await.contains("presence_event_streams 0")
    })
    .await;
    let mut next = Sse::open(router.addr, PATH, &backend, None).await.open();
    until_ready(&mut next).await;
}

/// While the router's view is not fed, its streams are told (`stale`); once it is rebuilt,
/// they get the transitions it missed meanwhile, read from the change log, then `fresh`.
#[tokio::test]
async fn a_stale_view_is_announced_and_what_it_missed_comes_before_fresh() {
    let setup = Setup::new(Engine::Redis).await;
    let redis = setup.redis.as_ref().unwrap();
    let proxy = TcpProxy::start(redis.port).await;
    let a = proxy.router().await;
    let b = setup.router(&[]).await;
    let backend = token("backend", Role::Service);
    let mut sse = Sse::open(a.addr, PATH, &backend, None).await.open();
    until_ready(&mut sse).await;
    let leaver = b.mobile_in("leaver", &["g1"]).await;
    assert_eq!(shown(&sse.next_named("presence").await), ("leaver".into(), "online".into()));

    proxy.black_hole_new_subscriptions(true);
    assert!(redis.kill_subscriptions().await >= 2, "both routers' subscriptions");
    let stale = sse.next_named("stale").await;
    assert_eq!(stale.data["reason"], "subscription_lost", "{stale:?}");
    assert!(stale.data["since"].as_u64().is_some());

    // B, still subscribed, changes presence; A hears none of it.
    leaver.close().await;
    let _newcomer = b.mobile_in("newcomer", &["g1"]).await;
    proxy.black_hole_new_subscriptions(false);

    let mut missed = Vec::new();
    loop {
        let event = sse.event().await;
        match event.name.as_str() {
            "fresh" => break,
            "presence" => missed.push(shown(&event)),
            other => panic!("unexpected {other}: {event:?}"),
        }
    }
    for expected in [("leaver".to_string(), "offline".to_string()), ("newcomer".into(), "online".into())] {
        assert!(missed.contains(&expected), "{expected:?} before fresh: {missed:?}");
    }
}
