//! A router's own lease in Redis, under which it writes its sessions' deadlines ahead of
//! them (README, "Redis keys"), against a real redis-server and real router binaries:
//! most heartbeats then write nothing to Redis, and every
//! guarantee of the deadlines holds all the same: a silent client offline within the TTL,
//! a killed router's users offline within the TTL of their last heartbeat (not of the
//! score written ahead), a client that moves to another router kept online, and a router
//! that was stopped long enough for its lease to lapse takes its sessions back without
//! showing anyone offline.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Client, RedisServer, Router, assert_update, token};
use presence_router::auth::Role;
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

/// A router on `redis` with the TTL `ttl` (seconds), every heartbeat taken (no minimum
/// interval).
async fn router(redis: &RedisServer, ttl: u64) -> Router {
    let (port, ttl) = (redis.port.to_string(), ttl.to_string());
    Router::start(&[
        "--redis-host",
        "127.0.0.1",
        "--redis-port",
        &port,
        "--presence-ttl",
        &ttl,
        "--heartbeat-min-interval-ms",
        "0",
    ])
    .await
}

/// The one key matching `pattern` (a single Redis, so one shard).
async fn key(conn: &mut MultiplexedConnection, pattern: &str) -> String {
    let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(conn).await.unwrap();
    assert_eq!(keys.len(), 1, "one {pattern} on one Redis: {keys:?}");
    keys.into_iter().next().unwrap()
}

/// Redis' clock (Unix ms).
async fn redis_now(conn: &mut MultiplexedConnection) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    secs * 1000 + micros / 1000
}

/// `user`'s lease score in `{p}leases` (its only session).
async fn score(conn: &mut MultiplexedConnection, user: &str) -> u64 {
    let leases = key(conn, "*leases").await;
    let scored: Vec<(String, f64)> =
        redis::cmd("ZRANGE").arg(&leases).arg(0).arg(-1).arg("WITHSCORES").query_async(conn).await.unwrap();
    let mine: Vec<f64> =
        scored.into_iter().filter(|(member, _)| member.starts_with(&format!("{user}\n"))).map(|(_, s)| s).collect();
    assert_eq!(mine.len(), 1, "{user} has one session");
    mine[0] as u64
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A mobile of `user` heartbeating until its deadline is written ahead (heartbeats reach
/// Redis after the router's renewal window).
async fn vouched_mobile(router: &Router, conn: &mut MultiplexedConnection, user: &str, ttl: u64) -> Client {
    let mut mobile = Client::connect(router.addr, &token(user, Role::Mobile), Some("phone")).await;
    let deadline = Instant::now() + common::WAIT;
    loop {
        mobile.sync(user).await;
        if written_ahead(conn, user, ttl).await {
            return mobile;
        }
        assert!(Instant::now() < deadline, "{user}'s deadline is never written ahead");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `user`'s score runs more than two TTLs (seconds) past Redis' clock.
async fn written_ahead(conn: &mut MultiplexedConnection, user: &str, ttl: u64) -> bool {
    let (score, now) = (score(conn, user).await, redis_now(conn).await);
    score > now + 2 * ttl * 1000
}

/// Reads `dashboard` until `user` goes offline, failing if any user of `kept` goes offline
/// first; asserts its lease expired within the TTL (seconds) and a second of `last`, its
/// last heartbeat, and returns the update.
async fn expired_within_ttl(dashboard: &mut Client, user: &str, kept: &[&str], last: Instant, ttl: u64) -> rmpv::Value {
    let offline = loop {
        let update = dashboard.next_update().await;
        let who = update["userId"].as_str().unwrap_or_default().to_owned();
        if update["status"].as_str() == Some("offline") {
            assert!(!kept.contains(&who.as_str()), "{who} was shown offline: {update}");
            if who == user {
                break update;
            }
        }
    };
    let after = last.elapsed();
    assert_eq!(offline["cause"].as_str(), Some("expired"), "{offline}");
    assert!(after <= Duration::from_secs(ttl + 1), "offline {after:?} after the last heartbeat; the TTL is {ttl} s");
    offline
}

/// Adds a marker user on `router` and reads `dashboard` until it shows it online, failing if
/// any user of `kept` goes offline meanwhile: every update before the marker's is read.
async fn none_offline(router: &Router, dashboard: &mut Client, kept: &[&str]) -> Client {
    let marker = router.mobile("marker", "m").await;
    loop {
        let update = dashboard.next_update().await;
        let who = update["userId"].as_str().unwrap_or_default();
        assert!(
            !(kept.contains(&who) && update["status"].as_str() == Some("offline")),
            "{who} was shown offline: {update}"
        );
        if who == "marker" {
            assert_update(&update, "marker", "online");
            return marker;
        }
    }
}

/// Heartbeats covered by the deadline written ahead leave Redis' lease untouched; the user
/// still reads as online and last seen now, not in the future.
#[tokio::test]
async fn heartbeats_a_router_vouches_for_write_nothing() {
    let redis = RedisServer::start().await;
    let mut conn = redis.client().get_multiplexed_async_connection().await.unwrap();
    let router = router(&redis, 12).await;
    let mut mobile = vouched_mobile(&router, &mut conn, "steady", 12).await;
    let written = score(&mut conn, "steady").await;
    for _ in 0..10 {
        mobile.sync("steady").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Renewals are taken in turn: once a later mobile's first heartbeat is written, all of
    // the ten were taken.
    let _later = vouched_mobile(&router, &mut conn, "later", 12).await;
    assert_eq!(score(&mut conn, "steady").await, written, "ten covered heartbeats wrote no deadline");
    let user = router.user("steady").await;
    assert_eq!(user["status"].as_str(), Some("online"), "{user}");
    let seen = user["lastSeen"].as_u64().unwrap();
    assert!(seen <= wall_ms() + 1000, "last seen {seen} is not in the future: {user}");
}

/// A client that stops heartbeating on a live router goes offline within the TTL of its
/// last heartbeat, although its score in Redis ran well past that.
#[tokio::test]
async fn a_silent_session_goes_offline_within_the_ttl() {
    const TTL: u64 = 6;
    let redis = RedisServer::start().await;
    let mut conn = redis.client().get_multiplexed_async_connection().await.unwrap();
    let router = router(&redis, TTL).await;
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    // Never read again: not even the router's pings are answered.
    let _silent = vouched_mobile(&router, &mut conn, "silent", TTL).await;
    let last = Instant::now();
    assert_update(&dashboard.next_update().await, "silent", "online");

    expired_within_ttl(&mut dashboard, "silent", &[], last, TTL).await;
}

/// A killed router's users go offline within the TTL of their last heartbeat, brought
/// back from the scores it wrote ahead once its lease lapses; a user whose client moves to
/// another router meanwhile stays online.
#[tokio::test]
async fn a_killed_routers_users_go_offline_within_the_ttl_and_movers_stay() {
    const TTL: u64 = 12;
    let redis = RedisServer::start().await;
    let mut conn = redis.client().get_multiplexed_async_connection().await.unwrap();
    let (mut a, b) = (router(&redis, TTL).await, router(&redis, TTL).await);
    let (mut dashboard, _) = b.dashboard("dispatcher").await;
    let connected = wall_ms();
    let _orphan = vouched_mobile(&a, &mut conn, "orphan", TTL).await;
    let _mover = vouched_mobile(&a, &mut conn, "mover", TTL).await;
    assert_update(&dashboard.next_update().await, "orphan", "online");
    assert_update(&dashboard.next_update().await, "mover", "online");

    let last = Instant::now();
    a.signal("KILL").await;
    let killed = wall_ms();
    // Another device: its session on the killed router is not ended, it lapses.
    let mut moved = Client::connect(b.addr, &token("mover", Role::Mobile), Some("tablet")).await;
    moved.sync("mover").await;

    let offline = expired_within_ttl(&mut dashboard, "orphan", &["mover"], last, TTL).await;
    let seen = offline["lastSeen"].as_u64().unwrap();
    assert!((connected..=killed + 1000).contains(&seen), "last seen {seen} while its router ran: {offline}");
    // The mover's session on the killed router lapsed too, silently.
    moved.sync("mover").await;
    let _marker = none_offline(&b, &mut dashboard, &["mover"]).await;
    assert_eq!(b.user("mover").await["status"].as_str(), Some("online"));
}

/// A router shutting down leaves its sessions a grace to reconnect elsewhere, but never
/// more than their own deadlines: a client silent since before the shutdown goes offline
/// within the TTL of its last heartbeat, although the shutdown grace runs longer and its
/// score was written ahead.
#[tokio::test]
async fn a_shutdown_grace_never_outlasts_a_sessions_deadline() {
    const TTL: u64 = 12;
    let redis = RedisServer::start().await;
    let mut conn = redis.client().get_multiplexed_async_connection().await.unwrap();
    let (port, ttl) = (redis.port.to_string(), TTL.to_string());
    let flags = ["--redis-host", "127.0.0.1", "--redis-port", &port, "--presence-ttl", &ttl];
    let mut a =
        Router::start(&[&flags[..], &["--heartbeat-min-interval-ms", "0", "--shutdown-grace-ms", "15000"]].concat())
            .await;
    let b = Router::start(&flags).await;
    let (mut dashboard, _) = b.dashboard("dispatcher").await;
    let mut quiet = vouched_mobile(&a, &mut conn, "quiet", TTL).await;
    let last = Instant::now();
    assert_update(&dashboard.next_update().await, "quiet", "online");
    // Silent until its deadline is nearer than the shutdown grace, but not yet due within
    // the grace the router writes real deadlines for (a third of the TTL).
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.signal("TERM").await;
    assert_eq!(quiet.close_code().await, Some(1012), "told to reconnect");
    expired_within_ttl(&mut dashboard, "quiet", &[], last, TTL).await;
}

/// A router stopped until its lease lapsed (and the sweep brought its sessions' scores
/// back) shows nobody offline, and on waking holds a new lease and writes ahead again.
#[tokio::test]
async fn a_router_stopped_past_its_lease_keeps_its_users() {
    const TTL: u64 = 30;
    let redis = RedisServer::start().await;
    let mut conn = redis.client().get_multiplexed_async_connection().await.unwrap();
    let (mut a, b) = (router(&redis, TTL).await, router(&redis, TTL).await);
    let (mut dashboard, _) = b.dashboard("dispatcher").await;
    let mut sleeper = vouched_mobile(&a, &mut conn, "sleeper", TTL).await;
    assert_update(&dashboard.next_update().await, "sleeper", "online");
    let routers = key(&mut conn, "*routers").await;
    let count = |conn: &mut MultiplexedConnection| {
        let mut conn = conn.clone();
        let routers = routers.clone();
        async move { redis::cmd("ZCARD").arg(&routers).query_async::<u64>(&mut conn).await.unwrap() }
    };
    assert_eq!(count(&mut conn).await, 2, "both routers hold a lease");

    a.signal("STOP").await;
    // B's sweep finds A's lease lapsed, brings its sessions back and drops its entry.
    common::eventually("the stopped router's lease dropped", || {
        let mut conn = conn.clone();
        async move { count(&mut conn).await == 1 }
    })
    .await;
    let now = redis_now(&mut conn).await;
    assert!(score(&mut conn, "sleeper").await > now, "brought back within its TTL, not ended");
    a.signal("CONT").await;

    sleeper.sync_after_outage("sleeper").await;
    common::eventually("the woken router holds a lease again", || {
        let mut conn = conn.clone();
        async move { count(&mut conn).await == 2 }
    })
    .await;
    // Its next heartbeats are written ahead again under its new lease.
    let deadline = Instant::now() + common::WAIT;
    loop {
        // The woken router resyncs (heartbeats get ERROR meanwhile), as after an outage.
        sleeper.sync_after_outage("sleeper").await;
        if written_ahead(&mut conn, "sleeper", TTL).await {
            break;
        }
        assert!(Instant::now() < deadline, "the woken router never writes ahead again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _marker = none_offline(&b, &mut dashboard, &["sleeper"]).await;
}
