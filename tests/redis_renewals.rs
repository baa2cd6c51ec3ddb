//! The Redis store's batched heartbeats against a real redis-server: a batch that mixes
//! live sessions (the short path) with lapsed ones (the whole lease) answers each
//! heartbeat with its own result, and heartbeats arriving apart are gathered into shared
//! round trips.

mod common;

use std::time::Duration;

use common::{redis_store as store, session};
use futures_util::future::join_all;
use presence_router::{
    engine::PresenceStore,
    id::Id,
    presence::{Cause, Groups, Session, Status},
};

#[tokio::test]
async fn one_batch_of_live_and_lapsed_sessions_answers_each_heartbeat() {
    let redis = common::RedisServer::start().await;
    let long = store(redis.port, Duration::from_secs(60)).await;
    let short = store(redis.port, Duration::from_millis(200)).await;
    let live: Vec<Session> = (0..100).map(|i| session(&format!("live-{i}"), i)).collect();
    let lapsed: Vec<Session> = (0..100).map(|i| session(&format!("lapsed-{i}"), 1000 + i)).collect();
    for s in &live {
        assert!(long.connect(s).await.unwrap().update.is_some());
    }
    for s in &lapsed {
        assert!(short.connect(s).await.unwrap().update.is_some());
    }
    // Wait for the short leases to be swept: each lapsed user offline exactly once.
    let mut expired = 0;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while expired < lapsed.len() {
        assert!(tokio::time::Instant::now() < deadline, "only {expired} short leases lapsed");
        tokio::time::sleep(Duration::from_millis(50)).await;
        expired += short.expire_due().await.unwrap().len();
    }
    assert_eq!(expired, lapsed.len(), "each lapsed user offline once");

    // Everyone heartbeats at once, interleaved, through the long-TTL store.
    let all: Vec<&Session> = live.iter().zip(&lapsed).flat_map(|(a, b)| [a, b]).collect();
    let results = join_all(all.iter().map(|s| long.heartbeat(s, tokio::time::Instant::now()))).await;
    for (s, result) in all.iter().zip(results) {
        let result = result.unwrap();
        if s.user.as_str().starts_with("live") {
            assert_eq!(result, None, "{}: a live session's heartbeat is no transition", s.user);
        } else {
            let back = result.unwrap_or_else(|| panic!("{}: a lapsed session comes back", s.user));
            assert_eq!((back.presence.user_id.as_str(), back.presence.status), (s.user.as_str(), Status::Online));
            assert_eq!(back.cause, Cause::Connect);
            assert_eq!(back.presence.groups, Groups::from(vec![Id::parse("crew").unwrap()]));
        }
    }
    let online = long.online().await.unwrap();
    assert_eq!(online.users.len(), 200);
}

/// Redis' counter `name` from `INFO <section>` (`field=value` inside it when `field`).
async fn redis_stat(redis: &common::RedisServer, section: &str, name: &str, field: Option<&str>) -> u64 {
    let mut conn = redis.client().get_multiplexed_async_connection().await.unwrap();
    let info: String = ::redis::cmd("INFO").arg(section).query_async(&mut conn).await.unwrap();
    let line = info.lines().find_map(|line| line.strip_prefix(&format!("{name}:"))).unwrap_or("0");
    let value = match field {
        Some(field) => line.split(',').find_map(|kv| kv.strip_prefix(&format!("{field}="))).unwrap_or("0"),
        None => line,
    };
    value.trim().parse().unwrap()
}

/// Heartbeats arriving one by one, as a fleet's do at a realistic pace, are gathered by the
/// router and renewed together: Redis reads far fewer requests, and runs far fewer
/// commands, than it renews leases.
#[tokio::test]
async fn heartbeats_arriving_apart_share_round_trips() {
    const MOBILES: usize = 100;
    let redis = common::RedisServer::start().await;
    let port = redis.port.to_string();
    // Every heartbeat is written (none coalesced with the one at connect); the default
    // 60 s TTL leaves the default window of 1 s.
    let router = common::Router::start(&[
        "--redis-host",
        "127.0.0.1",
        "--redis-port",
        &port,
        "--heartbeat-min-interval-ms",
        "0",
    ])
    .await;
    let mut mobiles = Vec::with_capacity(MOBILES);
    for i in 0..MOBILES {
        let user = format!("m{i}");
        let mut mobile =
            common::Client::connect(router.addr, &common::token(&user, presence_router::auth::Role::Mobile), None)
                .await;
        mobile.sync(&user).await;
        mobiles.push((user, mobile));
    }
    let mut conn = redis.client().get_multiplexed_async_connection().await.unwrap();
    let leases: Vec<String> = ::redis::cmd("KEYS").arg("*leases").query_async(&mut conn).await.unwrap();
    assert_eq!(leases.len(), 1, "one lease set on one Redis: {leases:?}");
    let reader = conn.clone();
    let deadlines = || {
        let mut conn = reader.clone();
        let key = leases[0].clone();
        async move {
            let scored: Vec<(String, f64)> =
                ::redis::cmd("ZRANGE").arg(key).arg(0).arg(-1).arg("WITHSCORES").query_async(&mut conn).await.unwrap();
            scored.into_iter().collect::<std::collections::HashMap<_, _>>()
        }
    };
    let before = deadlines().await;
    assert_eq!(before.len(), MOBILES);
    let _: () = ::redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut conn).await.unwrap();

    // One heartbeat every 5 ms, each acknowledged before the next: never two on the wire
    // at once, so a router renewing each on arrival would send Redis one request apiece.
    for (user, mobile) in &mut mobiles {
        mobile.sync(user).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    common::eventually("every lease extended", || async {
        let after = deadlines().await;
        before.iter().all(|(member, deadline)| after.get(member).is_some_and(|later| later > deadline))
    })
    .await;
    let reads = redis_stat(&redis, "stats", "total_reads_processed", None).await;
    // A few a second come from the routers' sweeps, probes and subscription checks.
    assert!(reads < MOBILES as u64 / 2, "{reads} requests read by Redis for {MOBILES} renewals");
    let extensions = redis_stat(&redis, "commandstats", "cmdstat_zadd", Some("calls")).await;
    assert!(extensions < MOBILES as u64 / 2, "{extensions} ZADD commands for {MOBILES} renewals");
}
