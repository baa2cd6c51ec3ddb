//! A dashboard that reconnects with its last position gets only what it missed (one
//! PRESENCE_UPDATE per user that changed, its latest state, within its scope) and RESUMED,
//! on any router of the deployment; a full snapshot whenever that cannot be told exactly
//! (a position older than the change log keeps, of another history after Redis lost its
//! data or the memory engine restarted, of another scope, or malformed). Real routers and
//! real redis-server.

mod common;

use std::collections::BTreeMap;

use common::{Client, Engine, RedisServer, Router, Setup, tcp_proxy::TcpProxy, token};
use presence_router::auth::{Role, mint_hs256_in};
use rmpv::Value;

const RESUMED: u64 = 41;
const STALE: u64 = 43;
const FRESH: u64 = 44;
const SNAPSHOT: u64 = 32;
const UPDATE: u64 = 31;

on_both_engines!(
    a_reconnect_is_sent_only_the_latest_change_of_each_user_it_missed,
    a_gap_longer_than_the_log_gets_a_snapshot,
    a_position_of_another_scope_gets_a_snapshot,
    a_malformed_position_gets_a_snapshot,
);

/// On a Redis Cluster a position holds one number per shard.
mod redis_cluster {
    #[tokio::test]
    async fn a_reconnect_is_sent_only_the_latest_change_of_each_user_it_missed() {
        super::a_reconnect_is_sent_only_the_latest_change_of_each_user_it_missed(super::Engine::RedisCluster).await
    }
}

/// Where a dashboard's view stands, as its frames told it.
#[derive(Debug, Clone)]
struct Mark {
    position: String,
    view: String,
}

/// A dashboard's token for `groups` (`None`: everyone).
fn dashboard_token(user: &str, groups: Option<&[&str]>) -> String {
    match groups {
        None => token(user, Role::Dashboard),
        Some(groups) => mint_hs256_in(common::SECRET.as_bytes(), user, Role::Dashboard, Some(groups), 3600).unwrap(),
    }
}

/// A dashboard resuming from `mark`.
async fn resuming(router: &Router, token: &str, mark: &Mark) -> Client {
    Client::connect_with_query(router.addr, token, &common::resume_query(&mark.position, &mark.view)).await
}

/// The snapshot's mark.
fn snapshot_mark(snapshot: &Value) -> Mark {
    assert_eq!(snapshot[1].as_u64(), Some(SNAPSHOT), "{snapshot}");
    let payload = &snapshot[5];
    Mark {
        position: payload["position"].as_str().expect("a snapshot carries its position").into(),
        view: payload["view"].as_str().expect("a snapshot names its view").into(),
    }
}

/// Reads PRESENCE_UPDATEs up to RESUMED: each user's status (asserting one update per
/// user) and the RESUMED payload.
async fn read_resume(dashboard: &mut Client) -> (BTreeMap<String, String>, Value) {
    let mut shown = BTreeMap::new();
    loop {
        let frame = dashboard.next_frame().await;
        match frame[1].as_u64() {
            Some(UPDATE) => {
                let user = frame[5]["userId"].as_str().unwrap().to_string();
                let status = frame[5]["status"].as_str().unwrap().to_string();
                assert!(shown.insert(user.clone(), status).is_none(), "{user} was sent twice: {frame}");
            }
            Some(RESUMED) => return (shown, frame[5].clone()),
            _ => panic!("expected PRESENCE_UPDATE or RESUMED while resuming, got {frame}"),
        }
    }
}

/// The value of `presence_dashboard_resumes_total{result}`.
async fn resumes(router: &Router, result: &str) -> u64 {
    let needle = format!("presence_dashboard_resumes_total{{result=\"{result}\"}} ");
    let metrics = router.metrics().await;
    metrics.lines().find_map(|line| line.strip_prefix(&needle)).map_or(0, |v| v.trim().parse().unwrap())
}

/// The routers a test uses: one on the memory engine (nothing else shares its state), two
/// on Redis (the dashboard resumes on the last, not the first it left).
async fn routers(setup: &Setup, extra: &[&str]) -> Vec<Router> {
    let mut routers = vec![setup.router(extra).await];
    if setup.engine_name() != "memory" {
        routers.push(setup.router(extra).await);
    }
    routers
}

/// Reads `dashboard`'s updates until each of `states` (user, status) was the last it was
/// told of that user.
async fn await_states(dashboard: &mut Client, states: &[(&str, &str)]) {
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    while !states.iter().all(|(user, status)| last.get(*user).map(String::as_str) == Some(*status)) {
        let update = dashboard.next_update().await;
        last.insert(update["userId"].as_str().unwrap().into(), update["status"].as_str().unwrap().into());
    }
}

async fn a_reconnect_is_sent_only_the_latest_change_of_each_user_it_missed(engine: Engine) {
    let setup = Setup::new(engine).await;
    let routers = routers(&setup, &[]).await;
    let (left, resumed_on) = (&routers[0], routers.last().unwrap());
    let mut alice = left.mobile("alice", "a1").await;
    let (mut witness, _) = resumed_on.dashboard("witness").await;
    let (mut dashboard, snapshot) = left.dashboard("watch").await;
    let view = snapshot_mark(&snapshot).view;
    // The view moves with every change: the update carries the position it reaches.
    let erin = left.mobile("erin", "e1").await;
    // (Alice's may come first: her connect was decided, not yet delivered, at the snapshot.)
    let update = loop {
        let update = dashboard.next_update().await;
        if update["userId"].as_str() == Some("erin") {
            break update;
        }
    };
    common::assert_update(&update, "erin", "online");
    let mark = Mark { position: update["position"].as_str().expect("an update carries its position").into(), view };
    dashboard.close().await;

    // Missed: bob comes online, carol comes and goes, alice turns away, erin leaves.
    let _bob = resumed_on.mobile("bob", "b1").await;
    let carol = left.mobile("carol", "c1").await;
    carol.close().await;
    alice.set_status("alice", "away", None).await;
    erin.close().await;
    let missed = [("alice", "away"), ("bob", "online"), ("carol", "offline"), ("erin", "offline")];
    // Every change has been decided (and reached the router the dashboard comes back to).
    await_states(&mut witness, &missed).await;

    let mut dashboard = resuming(resumed_on, &token("watch", Role::Dashboard), &mark).await;
    let (shown, resumed) = read_resume(&mut dashboard).await;
    let expected: BTreeMap<String, String> =
        missed.into_iter().map(|(user, status)| (user.to_string(), status.to_string())).collect();
    assert_eq!(shown, expected, "each user that changed, once, as it is now; nobody else");
    assert_eq!(resumed["changes"].as_u64(), Some(4), "{resumed}");
    assert_eq!(resumed["view"].as_str(), Some(mark.view.as_str()));
    let position = resumed["position"].as_str().expect("RESUMED carries the position");
    assert_ne!(position, mark.position);
    assert_eq!(resumes(resumed_on, "resumed").await, 1);

    // Live from there, with positions.
    let _frank = left.mobile("frank", "f1").await;
    let update = dashboard.next_update().await;
    common::assert_update(&update, "frank", "online");
    assert!(update["position"].is_str(), "{update}");
}

async fn a_gap_longer_than_the_log_gets_a_snapshot(engine: Engine) {
    let setup = Setup::new(engine).await;
    let routers = routers(&setup, &["--change-log-entries", "2"]).await;
    let (left, resumed_on) = (&routers[0], routers.last().unwrap());
    let (mut witness, _) = resumed_on.dashboard("witness").await;
    let (dashboard, snapshot) = left.dashboard("watch").await;
    let mark = snapshot_mark(&snapshot);
    dashboard.close().await;
    let mut users = Vec::new();
    for user in ["u1", "u2", "u3"] {
        users.push(left.mobile(user, user).await);
    }
    await_states(&mut witness, &[("u1", "online"), ("u2", "online"), ("u3", "online")]).await;
    let mut dashboard = resuming(resumed_on, &token("watch", Role::Dashboard), &mark).await;
    let snapshot = dashboard.next_frame().await;
    assert_eq!(snapshot[1].as_u64(), Some(SNAPSHOT), "three changes missed, two kept: {snapshot}");
    assert_eq!(snapshot[5]["count"].as_u64(), Some(3));
    assert_eq!(resumes(resumed_on, "too_old").await, 1);
}

async fn a_position_of_another_scope_gets_a_snapshot(engine: Engine) {
    let setup = Setup::new(engine).await;
    let routers = routers(&setup, &[]).await;
    let (left, resumed_on) = (&routers[0], routers.last().unwrap());
    let (mut witness, _) = resumed_on.dashboard("witness").await;
    let narrow = dashboard_token("watch", Some(&["g1"]));
    let mut dashboard = Client::connect_with_query(left.addr, &narrow, "").await;
    let mark = snapshot_mark(&dashboard.next_frame().await);
    dashboard.close().await;
    let _in_scope = left.mobile_in("u1", &["g1"]).await;
    let _outside = left.mobile_in("u2", &["g2"]).await;
    await_states(&mut witness, &[("u1", "online"), ("u2", "online")]).await;

    // The same scope: only the change within it.
    let mut dashboard = resuming(resumed_on, &narrow, &mark).await;
    let (shown, resumed) = read_resume(&mut dashboard).await;
    assert_eq!(shown.keys().collect::<Vec<_>>(), ["u1"], "{resumed}");
    dashboard.close().await;

    // A wider scope: u2 did not change for it, yet it must be shown.
    let wide = dashboard_token("watch", Some(&["g1", "g2"]));
    let mut dashboard = resuming(resumed_on, &wide, &mark).await;
    let snapshot = dashboard.next_frame().await;
    assert_eq!(snapshot[1].as_u64(), Some(SNAPSHOT), "{snapshot}");
    assert_eq!(snapshot[5]["count"].as_u64(), Some(2));
    assert_eq!(resumes(resumed_on, "scope").await, 1);
}

async fn a_malformed_position_gets_a_snapshot(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut witness, _) = router.dashboard("witness").await;
    let _alice = router.mobile("alice", "a1").await;
    await_states(&mut witness, &[("alice", "online")]).await;
    for query in ["position=nonsense&view=*", "position=0000000000000000%3A1&view=*"] {
        let mut dashboard = Client::connect_with_query(router.addr, &token("watch", Role::Dashboard), query).await;
        let snapshot = dashboard.next_frame().await;
        assert_eq!(snapshot[1].as_u64(), Some(SNAPSHOT), "{query}: {snapshot}");
        assert_eq!(snapshot[5]["count"].as_u64(), Some(1));
    }
    assert_eq!(resumes(&router, "malformed").await, 1);
    assert_eq!(resumes(&router, "epoch").await, 1, "a well-formed position of no history of this deployment");
}

/// Redis restarted empty: the epoch is new, so a position from before names another
/// history and gets a snapshot, whatever its numbers.
#[tokio::test]
async fn after_redis_lost_its_data_a_position_gets_a_snapshot() {
    let mut redis = RedisServer::start().await;
    let port = redis.port.to_string();
    let router = Router::start(&["--redis-host", "127.0.0.1", "--redis-port", &port]).await;
    let mut alice = router.mobile("alice", "a1").await;
    let (dashboard, snapshot) = router.dashboard("watch").await;
    let mark = snapshot_mark(&snapshot);
    dashboard.close().await;

    redis.kill().await;
    redis.spawn().await;
    // Alice's heartbeat re-registers her in the empty Redis.
    alice.sync_after_outage("alice").await;
    let mut dashboard = resuming(&router, &token("watch", Role::Dashboard), &mark).await;
    let snapshot = dashboard.next_frame().await;
    assert_eq!(snapshot[1].as_u64(), Some(SNAPSHOT), "{snapshot}");
    assert_eq!(resumes(&router, "epoch").await, 1);
}

/// The memory engine's history starts with the router: another router's (or an earlier
/// start's) position gets a snapshot.
#[tokio::test]
async fn a_position_of_another_memory_router_gets_a_snapshot() {
    let first = Router::start(&[]).await;
    let (dashboard, snapshot) = first.dashboard("watch").await;
    let mark = snapshot_mark(&snapshot);
    dashboard.close().await;
    let second = Router::start(&[]).await;
    let mut dashboard = resuming(&second, &token("watch", Role::Dashboard), &mark).await;
    assert_eq!(dashboard.next_frame().await[1].as_u64(), Some(SNAPSHOT));
    assert_eq!(resumes(&second, "epoch").await, 1);
}

/// The change log is the stream `{prefix}log`: each transition an entry under its
/// sequence number, with its user and status.
#[tokio::test]
async fn each_transition_is_in_the_log_under_its_number() {
    let redis = RedisServer::start().await;
    let port = redis.port.to_string();
    let router = Router::start(&["--redis-host", "127.0.0.1", "--redis-port", &port]).await;
    let (mut witness, _) = router.dashboard("witness").await;
    let _alice = router.mobile("alice", "a1").await;
    await_states(&mut witness, &[("alice", "online")]).await;
    let mut conn = redis.client().get_multiplexed_async_connection().await.unwrap();
    let entries: Vec<(String, Vec<String>)> = ::redis::cmd("XRANGE")
        .arg("presence:log")
        .arg("-")
        .arg("+")
        .query_async::<Vec<(String, BTreeMap<String, String>)>>(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, fields)| (id, vec![fields["u"].clone(), fields["s"].clone()]))
        .collect();
    let seq: String = ::redis::cmd("GET").arg("presence:seq").query_async(&mut conn).await.unwrap();
    assert_eq!(entries, [(format!("{seq}-0"), vec!["alice".to_string(), "online".to_string()])]);
}

/// A key of another type where the change log goes (written by something else under the
/// prefix) starts a new history instead of failing transitions half way.
#[tokio::test]
async fn a_log_key_of_another_type_starts_a_new_history() {
    let redis = RedisServer::start().await;
    let port = redis.port.to_string();
    let router = Router::start(&["--redis-host", "127.0.0.1", "--redis-port", &port]).await;
    let (mut witness, snapshot) = router.dashboard("witness").await;
    let mark = snapshot_mark(&snapshot);
    let mut conn = redis.client().get_multiplexed_async_connection().await.unwrap();
    let () = ::redis::cmd("SET").arg("presence:log").arg("not a stream").query_async(&mut conn).await.unwrap();
    let _alice = router.mobile("alice", "a1").await;
    await_states(&mut witness, &[("alice", "online")]).await;
    let kind: String = ::redis::cmd("TYPE").arg("presence:log").query_async(&mut conn).await.unwrap();
    assert_eq!(kind, "stream");
    let mut dashboard = resuming(&router, &token("watch", Role::Dashboard), &mark).await;
    assert_eq!(dashboard.next_frame().await[1].as_u64(), Some(SNAPSHOT), "a position of the old history");
    // The router noticed its view is of the old history: rebuilt, its dashboards get a
    // snapshot of the new one, from which they resume again.
    let fresh = loop {
        let frame = witness.next_frame().await;
        if frame[1].as_u64() == Some(SNAPSHOT) {
            break snapshot_mark(&frame);
        }
    };
    assert_ne!(fresh.position.split(':').next(), mark.position.split(':').next());
    let mut dashboard = resuming(&router, &token("watch", Role::Dashboard), &fresh).await;
    let (_, resumed) = read_resume(&mut dashboard).await;
    assert_eq!(resumed["view"].as_str(), Some("*"));
}

/// A dashboard resuming while the router's view is not fed (its subscription lost) is told
/// so right after RESUMED, as one that gets a snapshot is; the rebuild's snapshot carries
/// the rebuilt view's position, then FRESH.
#[tokio::test]
async fn a_dashboard_resuming_while_the_view_is_stale_gets_stale_after_resumed() {
    let setup = Setup::new(Engine::Redis).await;
    let redis = setup.redis.as_ref().unwrap();
    let proxy = TcpProxy::start(redis.port).await;
    let a = proxy.router().await;
    let b = setup.router(&[]).await;
    let token = dashboard_token("desk", None);
    let mut watching = Client::connect_with_query(a.addr, &token, "").await;
    let mark = snapshot_mark(&watching.next_frame().await);
    let mut newcomer = b.mobile("newcomer", "p1").await;
    newcomer.sync("newcomer").await;
    await_states(&mut watching, &[("newcomer", "online")]).await;

    proxy.black_hole_new_subscriptions(true);
    assert!(redis.kill_subscriptions().await >= 2, "both routers' subscriptions");
    let stale = loop {
        let frame = watching.next_frame().await;
        if frame[1].as_u64() == Some(STALE) {
            break frame;
        }
    };

    let mut resumed = resuming(&a, &token, &mark).await;
    let (shown, _) = read_resume(&mut resumed).await;
    assert_eq!(shown.get("newcomer").map(String::as_str), Some("online"), "{shown:?}");
    let after = resumed.next_frame().await;
    assert_eq!(after[1].as_u64(), Some(STALE), "STALE right after RESUMED: {after}");
    assert_eq!(after[5]["since"], stale[5]["since"]);

    proxy.black_hole_new_subscriptions(false);
    let mut rebuilt = None;
    loop {
        let frame = resumed.next_frame().await;
        match frame[1].as_u64() {
            Some(SNAPSHOT) => rebuilt = Some(snapshot_mark(&frame)),
            Some(FRESH) => break,
            _ => {}
        }
    }
    let rebuilt = rebuilt.expect("the rebuilt view's snapshot before FRESH");
    assert_eq!(rebuilt.view, mark.view);
}
