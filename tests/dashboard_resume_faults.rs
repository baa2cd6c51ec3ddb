//! Resuming dashboards where it goes wrong: Redis back from an older copy, a view rebuilt
//! after an outage, a scope's own user, dashboards that never read, long gaps and storms of
//! resumes mixed with positions too old for the log. Each test states what a dashboard
//! that must never show a wrong dot expects, against real routers and a real redis-server.

mod common;

use std::collections::BTreeMap;

use common::{Client, RedisServer, Router, token};
use presence_router::auth::Role;
use rmpv::Value;

const RESUMED: u64 = 41;
const SNAPSHOT: u64 = 32;
const UPDATE: u64 = 31;

/// A dashboard resuming from `position` with `view`.
async fn resuming(router: &Router, token: &str, position: &str, view: &str) -> Client {
    Client::connect_with_query(router.addr, token, &common::resume_query(position, view)).await
}

/// What a resuming dashboard shows once it has its start: the users shown online or away
/// or dnd (their status) after a SNAPSHOT, or after the updates up to RESUMED applied to
/// `before`. Returns that view and whether it was a resume.
async fn view_after_start(
    dashboard: &mut Client,
    before: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, bool) {
    let mut shown = before.clone();
    loop {
        let frame = dashboard.next_frame().await;
        match frame[1].as_u64() {
            Some(SNAPSHOT) => {
                let users = frame[5]["users"].as_array().unwrap();
                let view = users
                    .iter()
                    .map(|u| (u["userId"].as_str().unwrap().to_string(), u["status"].as_str().unwrap().to_string()))
                    .collect();
                return (view, false);
            }
            Some(UPDATE) => {
                let user = frame[5]["userId"].as_str().unwrap().to_string();
                match frame[5]["status"].as_str().unwrap() {
                    "offline" => shown.remove(&user),
                    status => shown.insert(user, status.to_string()),
                };
            }
            Some(RESUMED) => return (shown, true),
            _ => {}
        }
    }
}

/// The users a snapshot shows, with their status.
fn snapshot_view(snapshot: &Value) -> BTreeMap<String, String> {
    snapshot[5]["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["userId"].as_str().unwrap().to_string(), u["status"].as_str().unwrap().to_string()))
        .collect()
}

/// The shard's transition number now.
async fn store_seq(redis: &RedisServer) -> u64 {
    let mut conn = redis.client().get_multiplexed_async_connection().await.unwrap();
    let seq: Option<String> = ::redis::cmd("GET").arg("presence:seq").query_async(&mut conn).await.unwrap();
    seq.map_or(0, |s| s.parse().unwrap())
}

/// Redis restarted from an older RDB (or a failover to a replica that had not caught up)
/// keeps `presence:epoch` and `presence:seq`, but the sequence goes back: the numbers after
/// it are given again to other transitions. A dashboard that left at a position past the
/// restored number must not be resumed as if the renumbered transitions were the ones it
/// saw: a user who went offline under a reused number would stay on its screen.
#[tokio::test]
async fn a_position_from_before_redis_went_back_to_an_older_copy_is_not_resumed_against_reused_numbers() {
    let mut redis = RedisServer::start().await;
    let port = redis.port.to_string();
    let router = Router::start(&["--redis-host", "127.0.0.1", "--redis-port", &port]).await;
    let mut alice = router.mobile("alice", "a1").await;
    alice.sync("alice").await;
    let mut conn = redis.client().get_multiplexed_async_connection().await.unwrap();
    // The copy Redis will come back with: alice online.
    let () = ::redis::cmd("SAVE").query_async(&mut conn).await.unwrap();
    let saved = store_seq(&redis).await;
    // Transitions the copy does not have: alice changes her status ten times.
    for i in 0..10 {
        alice.set_status("alice", if i % 2 == 0 { "away" } else { "dnd" }, None).await;
    }
    let (dashboard, snapshot) = router.dashboard("watch").await;
    let position = snapshot[5]["position"].as_str().unwrap().to_string();
    let view = snapshot[5]["view"].as_str().unwrap().to_string();
    let shown_before = snapshot_view(&snapshot);
    assert!(shown_before.contains_key("alice"), "{snapshot}");
    let left_at: u64 = position.split(':').nth(1).unwrap().parse().unwrap();
    assert!(left_at >= saved + 5, "{position} vs saved {saved}");
    dashboard.close().await;

    // Redis comes back from the older copy: same epoch, sequence back at `saved`.
    redis.kill().await;
    redis.spawn().await;
    alice.sync_after_outage("alice").await;
    // (The router notices the sequence went back and moves it past every number given
    // before, in a new history; the fillers below are for a router that would not.)
    // Alice leaves; others come until the numbers reach the dashboard's position again.
    alice.close().await;
    common::eventually("alice offline in the store", || async {
        router.user("alice").await["status"].as_str() == Some("offline")
    })
    .await;
    let mut others = Vec::new();
    while store_seq(&redis).await < left_at {
        let user = format!("filler{}", others.len());
        let mut mobile = router.mobile(&user, &user).await;
        mobile.sync_after_outage(&user).await;
        others.push(mobile);
    }

    let mut dashboard = resuming(&router, &token("watch", Role::Dashboard), &position, &view).await;
    let (shown, resumed) = view_after_start(&mut dashboard, &shown_before).await;
    assert!(
        !shown.contains_key("alice"),
        "alice closed after Redis went back, yet the dashboard shows her {:?} (resumed: {resumed}); view {shown:?}",
        shown.get("alice")
    );
}

/// Reads frames until one of `message_type` arrives, and returns it.
async fn read_to(dashboard: &mut Client, message_type: u64) -> Value {
    loop {
        let frame = dashboard.next_frame().await;
        if frame[1].as_u64() == Some(message_type) {
            return frame;
        }
    }
}

/// After an outage a router's first rebuild keeps the users Redis does not list yet (their
/// routers may still be re-asserting them), and its snapshot carries the position of the
/// log's head; the second rebuild, `RECOVERY_GRACE_MS` later, takes those still missing
/// offline. A dashboard that took the first snapshot's position and resumes after that
/// second rebuild must not keep such a user online: nothing in the log after its position
/// says the user left.
#[tokio::test]
async fn a_position_of_the_first_rebuild_after_an_outage_does_not_resume_users_it_kept_unlisted() {
    let mut redis = RedisServer::start().await;
    let proxy = common::tcp_proxy::TcpProxy::start(redis.port).await;
    let port = redis.port.to_string();
    let a = Router::start(&["--redis-host", "127.0.0.1", "--redis-port", &port]).await;
    // B reaches Redis through the proxy, which keeps it out for a while after the restart.
    let b = proxy.router().await;
    let (mut dashboard, _) = a.dashboard("desk").await;
    let (mut witness, _) = a.dashboard("witness").await;
    let mut steady = b.mobile("steady", "p1").await;
    steady.sync("steady").await;
    let mut leaver = b.mobile("leaver", "p2").await;
    leaver.sync("leaver").await;
    let mut shown = BTreeMap::new();
    while !(shown.contains_key("steady") && shown.contains_key("leaver")) {
        let update = dashboard.next_update().await;
        shown.insert(update["userId"].as_str().unwrap().to_string(), update["status"].as_str().unwrap().to_string());
    }

    proxy.refuse_new(true);
    redis.kill().await;
    read_to(&mut dashboard, 43).await;
    leaver.close().await;
    redis.spawn().await;
    // A's first rebuild: Redis lists nobody of B's yet; both are kept.
    let first = read_to(&mut dashboard, SNAPSHOT).await;
    let kept = snapshot_view(&first);
    assert!(kept.contains_key("leaver"), "kept while B is not back: {first}");
    assert!(
        first[5]["position"].is_nil(),
        "a view keeping users Redis does not list is no point of the change log to resume from: {first}"
    );
    dashboard.close().await;

    proxy.refuse_new(false);
    // A's view is settled: a snapshot with a position again, leaver gone, then FRESH.
    let mut settled = Value::Nil;
    loop {
        let frame = witness.next_frame().await;
        match frame[1].as_u64() {
            Some(SNAPSHOT) => settled = frame,
            Some(44) => break,
            _ => {}
        }
    }
    assert!(settled[5]["position"].is_str(), "{settled}");
    assert!(!snapshot_view(&settled).contains_key("leaver"), "{settled}");
    assert_eq!(a.user("leaver").await["status"].as_str(), Some("offline"));
}

/// A dashboard connected over a socket with a 4 KiB receive buffer that presents
/// `position` and `view` and then never reads: the router holds what it has to send it.
async fn stalled_resume(addr: std::net::SocketAddr, token: &str, position: &str, view: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let query = common::resume_query(position, view);
    let request = format!(
        "GET /?{query} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\ntoken: {token}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(common::WAIT, stream.read(&mut byte)).await.expect("handshake in time").unwrap();
        assert_eq!(n, 1, "the router closed during the handshake");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream
}

/// Snapshots count against `--snapshot-memory-mb` and are shared per scope, so dashboards
/// that never read cost the router a bounded amount of memory. A resume is the same view
/// sent as updates: dashboards resuming from an old position that never read must stay
/// within the same bound, not hold a private copy of every missed change each.
#[tokio::test]
async fn dashboards_resuming_from_an_old_position_that_never_read_stay_within_the_snapshot_budget() {
    use futures_util::{StreamExt, stream};
    const USERS: usize = 1000;
    const GROUPS: usize = 40;
    const DASHBOARDS: usize = 60;
    const BUDGET_MB: u64 = 32;
    let router = Router::start(&[
        "--snapshot-memory-mb",
        &BUDGET_MB.to_string(),
        "--tcp-send-buffer",
        "4096",
        "--write-timeout-ms",
        "5000",
    ])
    .await;
    let (dashboard, snapshot) = router.dashboard("desk").await;
    let position = snapshot[5]["position"].as_str().unwrap().to_string();
    let view = snapshot[5]["view"].as_str().unwrap().to_string();
    dashboard.close().await;
    // The fleet comes online: 1000 changes, each update ~4 KB (40 groups of 100 bytes).
    let groups: Vec<String> = (0..GROUPS).map(|i| format!("{i:0>100}")).collect();
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    let (groups, fleet_router) = (&groups, &router);
    let _fleet: Vec<Client> = stream::iter(0..USERS)
        .map(|i| async move { fleet_router.mobile_in(&format!("m{i}"), groups).await })
        .buffer_unordered(16)
        .collect()
        .await;

    let before = router.memory_kib("VmRSS");
    let mut stalled = Vec::new();
    for i in 0..DASHBOARDS {
        stalled.push(stalled_resume(router.addr, &token(&format!("d{i}"), Role::Dashboard), &position, &view).await);
    }
    let router = &router;
    common::eventually("every dashboard resumed", || async move {
        let needle = "presence_dashboard_resumes_total{result=\"resumed\"} ";
        let metrics = router.metrics().await;
        metrics.lines().find_map(|l| l.strip_prefix(needle)).is_some_and(|v| v.trim() == DASHBOARDS.to_string())
    })
    .await;
    let grown = router.memory_kib("VmHWM").saturating_sub(before);
    // As the snapshot tests allow: the budget, 64 KiB per connection and 16 MiB of slack.
    let most = BUDGET_MB * 1024 + DASHBOARDS as u64 * 64 + 16 * 1024;
    assert!(grown <= most, "RSS grew {grown} KiB for {DASHBOARDS} stalled resuming dashboards (at most {most} KiB)");
}

/// `INFO commandstats`: (calls, usec) of `command` (asked again while Redis is too busy to
/// answer in time).
async fn command_stats(redis: &RedisServer, command: &str) -> (u64, u64) {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    let info: String = loop {
        let mut conn = redis.client().get_multiplexed_async_connection().await.unwrap();
        match ::redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await {
            Ok(info) => break info,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "INFO: {e}"),
        }
    };
    let line = info.lines().find(|l| l.starts_with(&format!("cmdstat_{command}:"))).unwrap_or("");
    let field = |name: &str| {
        line.split([':', ',']).find_map(|kv| kv.strip_prefix(&format!("{name}="))).map_or(0, |v| v.parse().unwrap())
    };
    (field("calls"), field("usec"))
}

/// The sum of a counter's series on `router`.
async fn counter_sum(router: &Router, name: &str) -> f64 {
    let metrics = router.metrics().await;
    metrics
        .lines()
        .filter(|l| {
            l.starts_with(name)
                && (l.as_bytes().get(name.len()) == Some(&b'{') || l.as_bytes().get(name.len()) == Some(&b' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A router on a fresh Redis keeping `entries` changes per shard, and a log filled with
/// them (by mobiles in `groups`): the Redis server, the router, the `view` and epoch of its
/// dashboards' positions, and the log's head.
async fn filled_log(entries: u64, groups: &[&str]) -> (RedisServer, Router, String, String, u64) {
    use futures_util::future::join_all;
    const MOBILES: u64 = 50;
    let redis = RedisServer::start().await;
    let port = redis.port.to_string();
    let router = Router::start(&[
        "--redis-host",
        "127.0.0.1",
        "--redis-port",
        &port,
        "--change-log-entries",
        &entries.to_string(),
    ])
    .await;
    let (dashboard, snapshot) = router.dashboard("desk").await;
    let view = snapshot[5]["view"].as_str().unwrap().to_string();
    let epoch = snapshot[5]["position"].as_str().unwrap().split(':').next().unwrap().to_string();
    dashboard.close().await;
    let mut mobiles = Vec::new();
    for i in 0..MOBILES {
        mobiles.push(router.mobile_in(&format!("m{i}"), groups).await);
    }
    join_all(mobiles.iter_mut().enumerate().map(|(i, mobile)| async move {
        for n in 0..(entries / MOBILES + 5) {
            mobile.set_status(&format!("m{i}"), if n % 2 == 0 { "away" } else { "dnd" }, None).await;
        }
    }))
    .await;
    let head = store_seq(&redis).await;

    (redis, router, view, epoch, head)
}

/// Dashboards resuming at once from `positions`, each read up to its RESUMED or snapshot;
/// prints the log scans (XRANGE calls) and their Redis time, and returns the scans.
async fn resume_storm(redis: &RedisServer, router: &Router, view: &str, positions: &[&str]) -> u64 {
    use futures_util::future::join_all;
    let (calls, usec) = command_stats(redis, "xrange").await;
    let clients = join_all(positions.iter().enumerate().map(|(i, position)| async move {
        let mut client = resuming(router, &token(&format!("d{i}"), Role::Dashboard), position, view).await;
        view_after_start(&mut client, &BTreeMap::new()).await;
        client
    }))
    .await;
    let (after_calls, after_usec) = command_stats(redis, "xrange").await;
    println!(
        "{} resumes: {} log scans, {} ms of Redis time in XRANGE",
        positions.len(),
        after_calls - calls,
        (after_usec - usec) / 1000
    );
    drop(clients);
    let metrics = router.metrics().await;
    for line in metrics.lines().filter(|l| l.starts_with("presence_dashboard_resumes_total")) {
        println!("{line}");
    }
    after_calls - calls
}

/// Stale spells and store errors on `router` so far: none is caused by dashboards resuming.
async fn assert_never_stale(router: &Router, what: &str) {
    let stale = counter_sum(router, "presence_view_stale_total").await;
    let errors = counter_sum(router, "presence_engine_errors_total").await;
    assert_eq!((stale, errors), (0.0, 0.0), "{what}: stale spells and store errors caused by resuming dashboards");
}

/// `--change-log-entries` (10,000 by default) is how far back a dashboard may resume, and
/// the only bound on what one resume reads. One dashboard resuming from a position that
/// far back, in a fleet whose tokens name 40 groups of 100 bytes (as the snapshot memory
/// tests' fleet), must not take the router's store call past its timeout, which marks the
/// store unreachable, every dashboard STALE and the router degraded (503, heartbeats
/// refused); nor hold Redis that long.
#[tokio::test]
async fn one_resume_across_the_whole_default_change_log_does_not_make_the_store_unreachable() {
    const ENTRIES: u64 = presence_router::engine::log::DEFAULT_LOG_ENTRIES as u64;
    let groups: Vec<String> = (0..40).map(|i| format!("{i:0>100}")).collect();
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    let (redis, router, view, epoch, head) = filled_log(ENTRIES, &groups).await;
    let position = format!("{epoch}:{}", head - ENTRIES + 500);
    let _ = resume_storm(&redis, &router, &view, &[position.as_str()]).await;
    assert_eq!(counter_sum(&router, "presence_dashboard_resumes_total").await, 1.0);
    assert_never_stale(&router, "one resume").await;
}

/// Resuming dashboards share their log reads (one read in flight, later requests join the
/// next), so a storm of resumes costs Redis a few scans of the log. A position too old
/// for the log makes the batch's read answer `too_old`; the others of that batch must
/// still share one read, not each read the log on its own. A dashboard token holder who
/// mixes too-old positions into a storm of resumes (or a fleet of dashboards of which some
/// were away long) must not turn the batching off and keep Redis busy past the store
/// timeout: every router would go stale and degraded for it.
#[tokio::test]
async fn a_storm_of_resumes_with_some_too_old_positions_does_not_make_the_store_unreachable() {
    const ENTRIES: u64 = 2000;
    let (redis, router, view, epoch, head) = filled_log(ENTRIES, &["g"]).await;
    let served = format!("{epoch}:{}", head - ENTRIES + 500);
    let too_old = format!("{epoch}:1");
    let alone = resume_storm(&redis, &router, &view, &vec![served.as_str(); 100]).await;
    assert_never_stale(&router, "100 resumes sharing their reads").await;
    let mixed: Vec<&str> = (0..100).flat_map(|_| [too_old.as_str(), served.as_str()]).collect();
    let scans = resume_storm(&redis, &router, &view, &mixed).await;
    assert_never_stale(&router, "100 resumes mixed with 100 too-old positions").await;
    // Each batch scans its log at most twice (too old, then the rest) and pages through it.
    assert!(scans <= alone * 3 + 10, "{scans} log scans for 200 resumes, {alone} for 100 alone");
}

/// A token with `groups` reads its members "and itself" (docs/PROTOCOL.md, Handshake): a
/// dashboard whose own user is online on a phone outside its groups is shown that user in
/// its snapshot. When that phone goes offline the dashboard must be told, or it shows its
/// own user online for good.
#[tokio::test]
async fn a_dashboard_that_is_shown_its_own_user_is_told_when_that_user_goes_offline() {
    let router = Router::start(&[]).await;
    let mut phone = router.mobile_in("alice", &["g2"]).await;
    phone.sync("alice").await;
    let (mut dashboard, snapshot) = router.dashboard_of("alice", &["g1"]).await;
    assert!(snapshot_view(&snapshot).contains_key("alice"), "a token reads itself: {snapshot}");
    phone.close().await;
    common::eventually("alice offline", || async { router.user("alice").await["status"].as_str() == Some("offline") })
        .await;
    // A later change within the groups: everything before it has been sent.
    let _bob = router.mobile_in("bob", &["g1"]).await;
    let mut shown = snapshot_view(&snapshot);
    loop {
        let update = dashboard.next_update().await;
        let user = update["userId"].as_str().unwrap().to_string();
        match update["status"].as_str().unwrap() {
            "offline" => shown.remove(&user),
            status => shown.insert(user.clone(), status.to_string()),
        };
        if user == "bob" {
            break;
        }
    }
    assert!(!shown.contains_key("alice"), "alice went offline, yet her own dashboard shows her: {shown:?}");
}

/// Changes in the gap that a groups-scoped dashboard must see on resuming, across routers:
/// a status text, a user turning invisible (shown offline), a user whose session moved to
/// groups outside the scope (REFRESH with another token: shown offline there).
#[tokio::test]
async fn a_resume_shows_text_invisible_and_a_user_leaving_the_scope() {
    let setup = common::Setup::new(common::Engine::Redis).await;
    let (a, b) = (setup.router(&[]).await, setup.router(&[]).await);
    let mut texter = a.mobile_in("texter", &["g1"]).await;
    let mut hider = a.mobile_in("hider", &["g1"]).await;
    let mut mover = a.mobile_in("mover", &["g1"]).await;
    let scoped =
        presence_router::auth::mint_hs256_in(common::SECRET.as_bytes(), "desk", Role::Dashboard, Some(&["g1"]), 3600)
            .unwrap();
    let mut dashboard = Client::connect_with_query(a.addr, &scoped, "").await;
    let snapshot = dashboard.next_frame().await;
    let before = snapshot_view(&snapshot);
    assert_eq!(before.len(), 3, "{snapshot}");
    let (position, view) =
        (snapshot[5]["position"].as_str().unwrap().to_string(), snapshot[5]["view"].as_str().unwrap().to_string());
    dashboard.close().await;

    texter.set_status("texter", "online", Some("on patrol")).await;
    hider.set_status("hider", "invisible", None).await;
    let elsewhere =
        presence_router::auth::mint_hs256_in(common::SECRET.as_bytes(), "mover", Role::Mobile, Some(&["g2"]), 3600)
            .unwrap();
    mover.send_frame(0, 40, "mover", "", common::map(&[("token", elsewhere.as_str().into())])).await;
    mover.expect(39).await;
    // A dashboard of the same scope on b has been told every change: b's view holds them.
    let mut witness = Client::connect_with_query(b.addr, &scoped, "").await;
    let first = witness.next_frame().await;
    let mut seen = snapshot_view(&first);
    let mut witness_texts = BTreeMap::new();
    for user in first[5]["users"].as_array().unwrap() {
        if let Some(text) = user["statusText"].as_str() {
            witness_texts.insert(user["userId"].as_str().unwrap().to_string(), text.to_string());
        }
    }
    while seen.contains_key("mover") || seen.contains_key("hider") || !witness_texts.contains_key("texter") {
        let update = witness.next_update().await;
        let user = update["userId"].as_str().unwrap().to_string();
        if let Some(text) = update["statusText"].as_str() {
            witness_texts.insert(user.clone(), text.to_string());
        }
        match update["status"].as_str().unwrap() {
            "offline" => seen.remove(&user),
            status => seen.insert(user, status.to_string()),
        };
    }
    witness.close().await;

    let mut dashboard = resuming(&b, &scoped, &position, &view).await;
    let mut shown = before.clone();
    let mut texts = BTreeMap::new();
    loop {
        let frame = dashboard.next_frame().await;
        match frame[1].as_u64() {
            Some(UPDATE) => {
                let user = frame[5]["userId"].as_str().unwrap().to_string();
                texts.insert(user.clone(), frame[5]["statusText"].as_str().map(str::to_string));
                match frame[5]["status"].as_str().unwrap() {
                    "offline" => shown.remove(&user),
                    status => shown.insert(user, status.to_string()),
                };
            }
            Some(RESUMED) => break,
            _ => panic!("expected a resume: {frame}"),
        }
    }
    assert_eq!(shown.keys().collect::<Vec<_>>(), ["texter"], "{shown:?}");
    assert_eq!(texts.get("texter"), Some(&Some("on patrol".to_string())), "{texts:?}");
}

/// How long the store call that reads the log for one resume across the whole default
/// change log takes (`presence_store_call_duration_seconds{op="changes_since"}`), with
/// mobiles in one short group and in ten 36-character groups (ids as UUIDs). Measured,
/// not asserted.
#[tokio::test]
#[ignore]
async fn measure_one_resume_across_the_default_change_log() {
    const ENTRIES: u64 = presence_router::engine::log::DEFAULT_LOG_ENTRIES as u64;
    let uuids: Vec<String> = (0..10).map(|i| format!("{i:08}-0000-4000-8000-000000000000")).collect();
    let uuids: Vec<&str> = uuids.iter().map(String::as_str).collect();
    for groups in [vec!["g"], uuids] {
        let (redis, router, view, epoch, head) = filled_log(ENTRIES, &groups).await;
        let position = format!("{epoch}:{}", head - ENTRIES + 500);
        let _ = resume_storm(&redis, &router, &view, &[position.as_str()]).await;
        let metrics = router.metrics().await;
        let of = |suffix: &str| {
            let needle = format!("presence_store_call_duration_seconds_{suffix}{{op=\"changes_since\"}} ");
            metrics.lines().find_map(|l| l.strip_prefix(&needle)).map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
        };
        println!(
            "{} groups: changes_since took {:.0} ms in {} call(s); stale spells {}",
            groups.len(),
            of("sum") * 1000.0,
            of("count"),
            counter_sum(&router, "presence_view_stale_total").await
        );
    }
}
