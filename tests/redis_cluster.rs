//! Faults only a Redis Cluster has (three masters, three replicas, `cluster-node-timeout`
//! 1 s), against real routers. A master killed mid-session: its replica takes over, and the
//! routers carry on; presence and push-to-talk keep working, no user is left a ghost, every
//! offline is announced exactly once, and dashboards get a fresh snapshot on the
//! connections they have. A transition lost on one shard with none after it: each router's
//! periodic check of the shards' sequences notices it, and resyncs once.

mod common;

use std::time::Duration;

use common::{Engine, Setup, View, cluster::RedisCluster, eventually, map, prometheus::metric};
use presence_router::{
    engine::redis::{DEFAULT_CLUSTER_SHARDS, Keyspace},
    protocol::message_type::{AUDIO, STOP, STOP_ACK},
};
use rmpv::Value;
use tokio::time::Instant;

/// The lease, long enough for the failover and the resync, short enough that a lease left
/// behind by a connection that closed during the failover lapses soon.
const TTL_SECS: &str = "8";

/// The users whose keys live on the same master as `user`'s (the keyspace's shards), and
/// the key that master serves for them.
fn shard_key(user: &str) -> String {
    let keys = Keyspace::sharded("presence:", DEFAULT_CLUSTER_SHARDS);
    keys.seq(keys.shard_of(user))
}

/// A user id in the same shard as `user`, other than it: its updates travel on the same
/// channel, in order with `user`'s.
fn shard_mate(user: &str) -> String {
    let keys = Keyspace::sharded("presence:", DEFAULT_CLUSTER_SHARDS);
    (0..).map(|n| format!("mate-{n}")).find(|mate| keys.shard_of(mate) == keys.shard_of(user)).unwrap()
}

/// Reads frames into `view` until `done` holds for it; returns every frame read.
async fn watch_until(dashboard: &mut common::Client, view: &mut View, done: impl Fn(&View) -> bool) -> Vec<Value> {
    let mut frames = Vec::new();
    while !done(view) {
        let frame = dashboard.next_frame().await;
        view.apply(&frame);
        frames.push(frame);
    }
    frames
}

fn offlines_of<'a>(frames: &'a [Value], user: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    frames.iter().filter(move |frame| {
        frame[1].as_u64() == Some(31)
            && frame[5]["userId"].as_str() == Some(user)
            && frame[5]["status"].as_str() == Some("offline")
    })
}

#[tokio::test]
async fn a_master_failing_over_mid_session_keeps_presence_and_talk_right() {
    let mut setup = Setup::new(Engine::RedisCluster).await;
    let flags = ["--presence-ttl", TTL_SECS];
    let (a, b) = (setup.router(&flags).await, setup.router(&flags).await);
    let (mut dashboard, snapshot) = b.dashboard("dispatcher").await;
    let mut view = View::default();
    view.apply(&snapshot);

    // Users on both routers, on every shard; `leaver` closes its connection while its
    // shard's master is down.
    let stayers: Vec<String> = (0..24).map(|n| format!("user-{n}")).collect();
    let mut phones = Vec::new();
    for (n, user) in stayers.iter().enumerate() {
        let router = if n % 2 == 0 { &a } else { &b };
        phones.push((user.clone(), router.mobile(user, &format!("phone-{n}")).await));
    }
    let leaver = a.mobile("leaver", "phone-leaver").await;
    let mut talker = a.mobile_in("talker", &["crew"]).await;
    let mut listener = b.mobile_in("listener", &["crew"]).await;
    talker.take_floor("talker", "crew", &mut listener).await;
    talker.send_frame(0, STOP, "talker", "crew", map(&[])).await;
    talker.expect(STOP_ACK).await;
    listener.expect_relayed(STOP, "talker", "crew").await;
    listener.expect_indicator("talker", "talking", false).await;
    let everyone = stayers.len() + 3;
    watch_until(&mut dashboard, &mut view, |view| view.online.len() == everyone).await;

    // The master of the leaver's shard dies; its replica takes over.
    let cluster: &mut RedisCluster = setup.cluster.as_mut().unwrap();
    let key = shard_key("leaver");
    let master = cluster.master_for_key(&key).await;
    let killed = Instant::now();
    cluster.kill_master(master).await;
    leaver.close().await;
    let promoted = cluster.wait_failover(&key).await;
    assert_ne!(promoted, master);

    // Every router notices and resyncs: the dashboard gets a fresh snapshot on its open
    // connection, and still shows everyone (the leaver's lease has not lapsed yet).
    let snapshots = view.snapshots;
    let mut frames = watch_until(&mut dashboard, &mut view, |view| view.snapshots > snapshots).await;
    let resynced = killed.elapsed();
    eprintln!("dashboard resynced {resynced:?} after the master was killed");
    assert!(view.online.contains_key("talker") && stayers.iter().all(|user| view.online.contains_key(user)));

    // Presence works again on every shard: heartbeats are acknowledged (renewing the
    // stayers' leases past the leaver's), and a new user comes online.
    for (user, phone) in &mut phones {
        phone.sync_after_outage(user).await;
    }
    let _newcomer = b.mobile("newcomer", "phone-new").await;
    frames.extend(watch_until(&mut dashboard, &mut view, |view| view.online.contains_key("newcomer")).await);

    // Talk crosses routers again, the floor arbitrated by the store.
    talker.take_floor("talker", "crew", &mut listener).await;
    talker.send_frame(0, AUDIO, "talker", "crew", Value::Binary(vec![7; 40])).await;
    assert_eq!(listener.expect_relayed(AUDIO, "talker", "crew").await[4], Value::Binary(vec![7; 40]));

    // No ghost: the leaver's lease lapses and it goes offline, once. A user of its shard
    // coming online afterwards travels on the same channel, after any second offline.
    frames.extend(watch_until(&mut dashboard, &mut view, |view| !view.online.contains_key("leaver")).await);
    let mate = shard_mate("leaver");
    let _mate = a.mobile(&mate, "phone-mate").await;
    frames.extend(watch_until(&mut dashboard, &mut view, |view| view.online.contains_key(&mate)).await);
    assert_eq!(offlines_of(&frames, "leaver").count(), 1, "the leaver's offline is announced exactly once");
    for user in stayers.iter().chain(["talker", "listener", "newcomer"].map(String::from).iter()) {
        assert_eq!(offlines_of(&frames, user).count(), 0, "{user} stayed connected and never went offline");
        assert!(view.online.contains_key(user), "{user} is online on the dashboard");
    }
}

/// A master that hangs (SIGSTOP: its connections stay open, nothing answers) is failed
/// over like a dead one; the routers leave it behind once its replica is promoted, rather
/// than wait on it until it wakes: presence and talk work again while it still hangs.
#[tokio::test]
async fn a_hung_master_is_left_behind_once_its_replica_is_promoted() {
    let mut setup = Setup::new(Engine::RedisCluster).await;
    let (a, b) = (setup.router(&[]).await, setup.router(&[]).await);
    let (mut dashboard, snapshot) = b.dashboard("dispatcher").await;
    let mut view = View::default();
    view.apply(&snapshot);
    let mut stayer = a.mobile("stayer", "phone-stayer").await;
    let mut talker = a.mobile_in("talker", &["crew"]).await;
    let mut listener = b.mobile_in("listener", &["crew"]).await;
    watch_until(&mut dashboard, &mut view, |view| view.online.len() == 3).await;

    let key = shard_key("stayer");
    let cluster: &mut RedisCluster = setup.cluster.as_mut().unwrap();
    let master = cluster.master_for_key(&key).await;
    cluster.hang(master).await;
    assert_ne!(cluster.wait_failover(&key).await, master);

    // While the old master still hangs: both routers serve again, the stayer's heartbeats
    // are acknowledged, a newcomer is seen across routers, and talk crosses them.
    for router in [&a, &b] {
        eventually("the router to serve again", || async {
            common::http(router.addr, "GET", "/healthz", &[], "").await.0 == 200
        })
        .await;
    }
    stayer.sync_after_outage("stayer").await;
    let _newcomer = a.mobile("newcomer", "phone-new").await;
    watch_until(&mut dashboard, &mut view, |view| view.online.contains_key("newcomer")).await;
    assert!(["stayer", "talker", "listener"].iter().all(|user| view.online.contains_key(*user)));
    talker.take_floor("talker", "crew", &mut listener).await;
    talker.send_frame(0, AUDIO, "talker", "crew", Value::Binary(vec![3; 40])).await;
    assert_eq!(listener.expect_relayed(AUDIO, "talker", "crew").await[4], Value::Binary(vec![3; 40]));
    setup.cluster.as_mut().unwrap().resume(master).await;
}

/// A transition decided on a shard and never published (its router killed in between),
/// with no later transition on that shard to show the gap: the router's check of every
/// shard's sequence, at each renewal of its subscriptions, notices it and resyncs, once.
#[tokio::test]
async fn a_lost_transition_with_none_after_it_is_healed_by_one_resync() {
    let setup = Setup::new(Engine::RedisCluster).await;
    let router = setup.router(&[]).await;
    let (mut dashboard, snapshot) = router.dashboard("dispatcher").await;
    let mut view = View::default();
    view.apply(&snapshot);
    let counter = |name: &'static str| {
        let router = &router;
        async move { metric(&router.metrics().await, name).unwrap() }
    };
    let resyncs = counter("presence_resyncs_total").await;

    let keys = Keyspace::sharded("presence:", DEFAULT_CLUSTER_SHARDS);
    let cluster = setup.cluster.as_ref().unwrap();
    assert_eq!(cluster.cli(&["incr", &keys.seq(0)]).await, "1");
    eventually("the gap to be noticed", || async { counter("presence_broker_gaps_total").await == 1 }).await;
    watch_until(&mut dashboard, &mut view, |view| view.snapshots == 2).await;
    assert_eq!(counter("presence_resyncs_total").await, resyncs + 1);

    // Healed for good: the shards' subscriptions are renewed (and their sequences checked)
    // every second; over three of them, nothing more is missing and nothing is rebuilt.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(counter("presence_broker_gaps_total").await, 1);
    assert_eq!(counter("presence_resyncs_total").await, resyncs + 1);
}

/// Transitions flowing on every shard while the subscriptions are renewed (and every
/// shard's head read) each second: a head read just before a message of its shard arrives
/// is no sequence gone back, so nothing is rebuilt and no shard starts a new history.
#[tokio::test]
async fn heads_read_while_transitions_flow_start_no_new_history() {
    let setup = Setup::new(Engine::RedisCluster).await;
    let router = setup.router(&[]).await;
    let (_dashboard, snapshot) = router.dashboard("dispatcher").await;
    let epoch = snapshot[5]["position"].as_str().unwrap().split(':').next().unwrap().to_string();
    let resyncs = metric(&router.metrics().await, "presence_resyncs_total").unwrap();
    let until = Instant::now() + Duration::from_secs(4);
    let churn = |lane: usize| {
        let router = &router;
        async move {
            let mut n = 0;
            while Instant::now() < until {
                let user = format!("churn{lane}-{n}");
                let mut mobile = router.mobile(&user, "p").await;
                mobile.heartbeat(&user).await;
                mobile.close().await;
                n += 1;
            }
            n
        }
    };
    let connects: usize = futures_util::future::join_all((0..8).map(churn)).await.into_iter().sum();
    assert!(connects > 40, "only {connects} connects");
    assert_eq!(metric(&router.metrics().await, "presence_resyncs_total").unwrap(), resyncs, "nothing rebuilt");
    let (_, later) = router.dashboard("later").await;
    let later_epoch = later[5]["position"].as_str().unwrap().split(':').next().unwrap().to_string();
    assert_eq!(later_epoch, epoch, "no shard started a new history");
}

/// Routers that split the keyspace into different numbers of shards would each find a
/// user's keys in a different shard: the second is refused at start, naming the number.
#[tokio::test]
async fn a_router_with_another_number_of_shards_is_refused_at_start() {
    let setup = Setup::new(Engine::RedisCluster).await;
    let _first = setup.router(&[]).await;
    let seeds = setup.cluster.as_ref().unwrap().seeds();
    let args = ["--redis-cluster-nodes", &seeds, "--redis-cluster-shards", "4"];
    let stderr = common::tokens::refused_at_start(&args, &[("JWT_SECRET", common::SECRET)]).await;
    assert!(stderr.contains("--redis-cluster-shards 16"), "{stderr}");
    let _same = setup.router(&["--redis-cluster-shards", "16"]).await;
}

/// A cluster node given as one Redis would answer MOVED to most calls: refused at start,
/// pointing at the flag for a cluster.
#[tokio::test]
async fn a_cluster_node_given_as_one_redis_is_refused_at_start() {
    let setup = Setup::new(Engine::RedisCluster).await;
    let node = setup.cluster.as_ref().unwrap().nodes()[0].clone();
    let args = ["--redis-url", &format!("redis://{node}")];
    let stderr = common::tokens::refused_at_start(&args, &[("JWT_SECRET", common::SECRET)]).await;
    assert!(stderr.contains("--redis-cluster-nodes"), "{stderr}");
}
