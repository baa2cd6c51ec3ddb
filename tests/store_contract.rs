//! The store contract, as `PresenceStore` and `SignalStore` document it, run in-process
//! against every engine: the same cases, the same assertions, on the embedded engine, on
//! Redis (a real redis-server per case) and on a Redis Cluster (three masters, three
//! replicas; one cluster for every case, as starting one takes seconds, each case in a
//! keyspace of its own). A new engine joins the suite with one entry in [`contract!`]'s
//! list and an [`Engine`] that opens it.
//!
//! Time runs for real on every engine (Redis keeps its own clock), so a case that waits for
//! a lapse uses short lifetimes and polls with a deadline ([`common::WAIT`]); no case
//! asserts how soon something happens, only that it happens, and how many times.

mod common;

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{RedisServer, cluster::RedisCluster};
use futures_util::future::join;
use presence_router::{
    engine::{
        FloorTake, Lifetimes, MemoryPresence, PresenceStore, SignalStore,
        log::DEFAULT_LOG_ENTRIES,
        redis::{RedisConfig, RedisPresence},
    },
    id::Id,
    presence::{Cause, Mode, PresenceUpdate, Session, SessionId, Status, UserPresence},
    protocol::payload::IndicatorKind,
    scope::Scope,
};
use tokio::time::Instant;

/// One engine under the contract.
struct Engine {
    /// Whether the store is shared by several routers and outlives each of them: then it
    /// arbitrates a floor between their sessions, and claims the indicators of a router
    /// that died. A store of one router (the embedded engine) has no other router to
    /// arbitrate with, and dies with its router: it grants every floor its router asks for
    /// (the router checked its own sessions first) and never has an orphan to claim.
    shared: bool,
    /// Opens a fresh, empty store with `lifetimes`.
    open: fn(Lifetimes) -> Pin<Box<dyn Future<Output = Stores>>>,
}

/// An engine's stores, and what they need alive.
struct Stores {
    store: Arc<dyn PresenceStore>,
    signals: Arc<dyn SignalStore>,
    /// The Redis server behind a Redis store, stopped when the case ends.
    _server: Option<RedisServer>,
}

impl Stores {
    fn new<S: PresenceStore + SignalStore>(store: S, server: Option<RedisServer>) -> Stores {
        let store = Arc::new(store);
        Stores { store: store.clone(), signals: store, _server: server }
    }
}

const MEMORY: Engine = Engine {
    shared: false,
    open: |lifetimes| Box::pin(async move { Stores::new(MemoryPresence::new(lifetimes), None) }),
};

const REDIS: Engine = Engine {
    shared: true,
    open: |lifetimes| {
        Box::pin(async move {
            let server = RedisServer::start().await;
            Stores::new(common::redis_store_with(server.port, lifetimes).await, Some(server))
        })
    },
};

/// The seed nodes of the cluster that [`redis_cluster::every_case`] started.
static CLUSTER_SEEDS: OnceLock<Vec<(String, u16)>> = OnceLock::new();
/// Numbers the keyspaces of the cases on the cluster.
static CLUSTER_CASES: AtomicUsize = AtomicUsize::new(0);

const REDIS_CLUSTER: Engine = Engine {
    shared: true,
    open: |lifetimes| {
        Box::pin(async move {
            let seeds = CLUSTER_SEEDS.get().expect("the cluster is started first");
            let seeds: Vec<(&str, u16)> = seeds.iter().map(|(host, port)| (host.as_str(), *port)).collect();
            let mut config = RedisConfig::cluster(&seeds);
            config.prefix = format!("case{}:", CLUSTER_CASES.fetch_add(1, Ordering::Relaxed));
            Stores::new(RedisPresence::connect(&config, lifetimes, None).await.unwrap(), None)
        })
    },
};

/// Runs every case on every engine, as `<engine>::<case>`, and on the cluster, in turn,
/// as `redis_cluster::every_case`.
macro_rules! contract {
    (engines: [$($engine:ident => $opener:ident),* $(,)?], cases: $cases:tt $(,)?) => {
        $(contract!(@engine $engine, $opener, $cases);)*
        contract!(@cluster $cases);
    };
    (@engine $engine:ident, $opener:ident, [$($case:ident),* $(,)?]) => {
        mod $engine {
            $(#[tokio::test]
            async fn $case() {
                super::$case(&super::$opener).await
            })*
        }
    };
    (@cluster [$($case:ident),* $(,)?]) => {
        mod redis_cluster {
            #[tokio::test]
            async fn every_case() {
                let cluster = super::RedisCluster::start().await;
                let seeds = cluster
                    .nodes()
                    .iter()
                    .map(|node| {
                        let (host, port) = node.rsplit_once(':').unwrap();
                        (host.to_string(), port.parse().unwrap())
                    })
                    .collect();
                super::CLUSTER_SEEDS.set(seeds).unwrap();
                $(
                    eprintln!("case {}", stringify!($case));
                    super::$case(&super::REDIS_CLUSTER).await;
                )*
                drop(cluster);
            }
        }
    };
}

contract! {
    engines: [memory => MEMORY, redis => REDIS],
    cases: [
        a_user_goes_online_and_offline_exactly_once,
        a_lapsed_lease_is_swept_offline_exactly_once,
        last_seen_follows_heartbeats_and_stays_at_the_last_one,
        a_lingering_session_keeps_its_last_seen,
        a_lease_runs_from_its_heartbeats_arrival,
        a_new_session_on_a_device_replaces_the_old_one,
        groups_are_the_union_of_the_live_sessions_groups,
        chosen_statuses_transition_and_outlive_the_session,
        idle_users_turn_away_once_and_activity_brings_them_back,
        lookup_reads_users_as_the_scope_allows,
        group_members_are_the_users_whose_sessions_named_the_group,
        a_lingering_session_lapses_later_and_holds_no_device,
        the_online_snapshot_holds_every_shown_user,
        indicators_are_set_cleared_and_lapse,
        only_an_orphaned_indicator_is_claimed_and_exactly_once,
        a_floor_is_held_by_one_session_at_a_time,
        an_idle_floor_is_taken_over_and_a_touched_one_is_not,
    ],
}

const LONG: Duration = Duration::from_secs(3600);
/// Short enough that a case waiting for a lapse ends soon, long enough that the calls
/// before it land within it.
const SHORT: Duration = Duration::from_millis(300);

fn lifetimes(ttl: Duration, away_after: Duration) -> Lifetimes {
    Lifetimes { ttl, last_seen: LONG, away_after, log_entries: DEFAULT_LOG_ENTRIES }
}

/// Stores whose leases and activity outlast any case.
async fn open(engine: &Engine) -> Stores {
    (engine.open)(lifetimes(LONG, LONG)).await
}

fn id(s: &str) -> Id {
    Id::parse(s).unwrap()
}

/// Session `n` of `user`, on `device` (`None`: a session that holds no device), in `groups`.
fn session(user: &str, n: u64, device: Option<&str>, groups: &[&str]) -> Session {
    Session {
        id: SessionId::new("contract", n),
        user: id(user),
        device_id: device.map(Arc::from),
        groups: groups.iter().map(|g| id(g)).collect(),
        choice: None,
    }
}

fn groups_of(update: &PresenceUpdate) -> Vec<String> {
    let mut names: Vec<String> = update.presence.groups.iter().map(|g| g.to_string()).collect();
    names.sort();
    names
}

fn shown(update: &Option<PresenceUpdate>) -> Option<(Status, Cause)> {
    update.as_ref().map(|u| (u.presence.status, u.cause))
}

async fn look(store: &dyn PresenceStore, user: &str, scope: &Scope) -> UserPresence {
    store.lookup(&[id(user)], scope).await.unwrap().remove(0)
}

/// Sweeps from two callers at once, as two routers do, until the transitions swept so far
/// satisfy `done`, within [`common::WAIT`]; returns them. The sweep after that finds
/// nothing more: each transition is handed out once.
async fn sweep_until(store: &dyn PresenceStore, done: impl Fn(&[PresenceUpdate]) -> bool) -> Vec<PresenceUpdate> {
    let deadline = Instant::now() + common::WAIT;
    let mut swept = Vec::new();
    while !done(&swept) {
        assert!(Instant::now() < deadline, "timed out sweeping; swept so far: {swept:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
        let (a, b) = join(store.expire_due(), store.expire_due()).await;
        swept.extend(a.unwrap().into_iter().chain(b.unwrap()));
    }
    assert_eq!(store.expire_due().await.unwrap(), [], "every transition is swept once");
    swept
}

async fn a_user_goes_online_and_offline_exactly_once(engine: &Engine) {
    let stores = open(engine).await;
    let store = &*stores.store;
    store.ping().await.expect("a fresh store answers and accepts writes");
    let (phone, tablet) = (session("u", 1, Some("phone"), &[]), session("u", 2, Some("tablet"), &[]));

    let online = store.connect(&phone).await.unwrap();
    assert_eq!((shown(&online.update), online.replaced), (Some((Status::Online, Cause::Connect)), None));
    let online = online.update.unwrap();
    assert_eq!(online.presence.device_id.as_deref(), Some("phone"));
    assert_eq!(store.heartbeat(&phone, Instant::now()).await.unwrap(), None, "a renewal is no transition");
    assert_eq!(store.connect(&tablet).await.unwrap().update, None, "a second device is no transition");
    assert_eq!(store.disconnect(&phone).await.unwrap(), None, "the user stays online on its tablet");
    assert_eq!(look(store, "u", &Scope::everyone()).await.status, Status::Online);

    let offline = store.disconnect(&tablet).await.unwrap();
    assert_eq!(shown(&offline), Some((Status::Offline, Cause::Disconnect)));
    assert!(offline.unwrap().presence.version > online.presence.version, "each transition a newer version");
    assert_eq!(store.disconnect(&tablet).await.unwrap(), None, "an ended session ends once");
    assert_eq!(store.disconnect(&phone).await.unwrap(), None);
}

async fn a_lapsed_lease_is_swept_offline_exactly_once(engine: &Engine) {
    let stores = (engine.open)(lifetimes(SHORT, LONG)).await;
    let store = &*stores.store;
    let (silent, other) = (session("u", 1, Some("d"), &[]), session("v", 2, Some("d"), &[]));
    let online = store.connect(&silent).await.unwrap().update.unwrap();
    store.connect(&other).await.unwrap();

    let swept = sweep_until(store, |swept| swept.len() >= 2).await;
    let mine: Vec<_> = swept.iter().filter(|u| u.presence.user_id.as_str() == "u").collect();
    assert_eq!(mine.len(), 1, "one offline per user: {swept:?}");
    assert_eq!((mine[0].presence.status, mine[0].cause), (Status::Offline, Cause::Expired));
    assert!(mine[0].presence.version > online.presence.version);
    assert_eq!(store.disconnect(&silent).await.unwrap(), None, "closing a lapsed session changes nothing");

    // A heartbeat after the lapse registers the session again: the phone was silent, not gone.
    let back = store.heartbeat(&other, Instant::now()).await.unwrap();
    assert_eq!(shown(&back), Some((Status::Online, Cause::Connect)));
}

/// An online user's last seen is its last heartbeat, read by everyone alike (lookups, the
/// snapshot, its transitions); once its lease lapses it stays at that heartbeat.
async fn last_seen_follows_heartbeats_and_stays_at_the_last_one(engine: &Engine) {
    let stores = (engine.open)(lifetimes(Duration::from_secs(2), LONG)).await;
    let store = &*stores.store;
    let phone = session("u", 1, Some("d"), &[]);
    let online = store.connect(&phone).await.unwrap().update.unwrap();
    let connected = online.presence.last_seen.unwrap();
    assert_eq!(look(store, "u", &Scope::everyone()).await.last_seen, Some(connected));

    // Time passes, as between two heartbeats.
    tokio::time::sleep(Duration::from_millis(20)).await;
    store.heartbeat(&phone, Instant::now()).await.unwrap();
    let heard = look(store, "u", &Scope::everyone()).await.last_seen.unwrap();
    assert!(heard > connected, "a heartbeat is seen: {heard} after {connected}");
    let snapshot = store.online().await.unwrap();
    assert_eq!(snapshot.users.iter().find(|u| u.user_id.as_str() == "u").unwrap().last_seen, Some(heard));
    let status = store.set_status(&phone, Mode::Dnd, None).await.unwrap().unwrap();
    assert_eq!(status.presence.last_seen, Some(heard), "a transition carries it too");

    let swept = sweep_until(store, |swept| !swept.is_empty()).await;
    assert_eq!(swept[0].presence.status, Status::Offline);
    assert_eq!(swept[0].presence.last_seen, Some(heard), "last seen at the last heartbeat, not at the lapse");
    assert_eq!(look(store, "u", &Scope::everyone()).await.last_seen, Some(heard));
}

/// A heartbeat may wait for its batch: its lease, and the user's last seen, count from
/// when it arrived, not from when the store took it.
async fn a_lease_runs_from_its_heartbeats_arrival(engine: &Engine) {
    let stores = (engine.open)(lifetimes(Duration::from_secs(5), LONG)).await;
    let store = &*stores.store;
    let phone = session("u", 1, Some("d"), &[]);
    let started = Instant::now();
    let connected = store.connect(&phone).await.unwrap().update.unwrap().presence.last_seen.unwrap();
    let arrived = started + Duration::from_millis(100);
    tokio::time::sleep_until(arrived + Duration::from_millis(400)).await;
    store.heartbeat(&phone, arrived).await.unwrap();
    let heard = look(store, "u", &Scope::everyone()).await.last_seen.unwrap();
    // Taken 400 ms after it arrived; the clocks agree within a few ms.
    assert!(
        (connected + 50..connected + 300).contains(&heard),
        "last seen at the arrival, ~100 ms after the connect at {connected}: {heard}"
    );
}

/// A router shutting down shortens its sessions' leases: its users' last seen is not moved
/// back by that (to the shortened deadline less the lease), online or once lapsed.
async fn a_lingering_session_keeps_its_last_seen(engine: &Engine) {
    let stores = (engine.open)(lifetimes(Duration::from_secs(5), LONG)).await;
    let store = &*stores.store;
    let phone = session("u", 1, Some("d"), &[]);
    store.connect(&phone).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    store.heartbeat(&phone, Instant::now()).await.unwrap();
    let heard = look(store, "u", &Scope::everyone()).await.last_seen.unwrap();

    store.linger(&phone, Duration::from_millis(200)).await.unwrap();
    assert!(look(store, "u", &Scope::everyone()).await.last_seen.unwrap() >= heard, "online, lingering");
    let swept = sweep_until(store, |swept| !swept.is_empty()).await;
    assert_eq!(swept[0].presence.status, Status::Offline);
    assert!(swept[0].presence.last_seen.unwrap() >= heard, "not before its last heartbeat: {swept:?}");
}

async fn a_new_session_on_a_device_replaces_the_old_one(engine: &Engine) {
    let stores = open(engine).await;
    let store = &*stores.store;
    let old = session("u", 1, Some("radio"), &[]);
    let (unnamed, other_device) = (session("u", 2, None, &[]), session("u", 3, Some("tablet"), &[]));
    for s in [&old, &unnamed, &other_device] {
        assert_eq!(store.connect(s).await.unwrap().replaced, None);
    }
    assert_eq!(store.connect(&session("u", 4, None, &[])).await.unwrap().replaced, None, "no device, no replacing");

    let new = session("u", 5, Some("radio"), &[]);
    let replacing = store.connect(&new).await.unwrap();
    assert_eq!((replacing.update, replacing.replaced), (None, Some(old.id.clone())), "a replacement is no transition");
    assert_eq!(store.heartbeat(&old, Instant::now()).await.unwrap(), None, "the replaced session is not brought back");
    assert_eq!(store.regroup(&old).await.unwrap(), None);
    for s in [&new, &unnamed, &other_device] {
        assert_eq!(store.disconnect(s).await.unwrap(), None);
    }
    let last = store.disconnect(&session("u", 4, None, &[])).await.unwrap();
    assert_eq!(shown(&last), Some((Status::Offline, Cause::Disconnect)), "the replaced session held nothing");
    assert_eq!(store.disconnect(&old).await.unwrap(), None, "its end changes nothing");
}

async fn groups_are_the_union_of_the_live_sessions_groups(engine: &Engine) {
    let stores = open(engine).await;
    let store = &*stores.store;
    let phone = session("u", 1, Some("phone"), &["g1", "g2"]);
    let tablet = session("u", 2, Some("tablet"), &["g2", "g3"]);
    assert_eq!(groups_of(&store.connect(&phone).await.unwrap().update.unwrap()), ["g1", "g2"]);
    let joined = store.connect(&tablet).await.unwrap().update.expect("new groups are news");
    assert_eq!((joined.presence.status, joined.cause), (Status::Online, Cause::Groups));
    assert_eq!(groups_of(&joined), ["g1", "g2", "g3"]);
    assert_eq!(store.heartbeat(&tablet, Instant::now()).await.unwrap(), None, "the same groups again are no news");

    let refreshed = Session { groups: vec![id("g2"), id("g4")].into(), ..tablet.clone() };
    let regrouped = store.regroup(&refreshed).await.unwrap().expect("a refreshed token's groups are news");
    assert_eq!((regrouped.cause, groups_of(&regrouped)), (Cause::Groups, vec!["g1".into(), "g2".into(), "g4".into()]));

    // The phone's lease lapses: only the groups no live session names go with it.
    store.linger(&phone, Duration::ZERO).await.unwrap();
    let lapsed = sweep_until(store, |swept| !swept.is_empty()).await;
    assert_eq!((lapsed[0].presence.status, lapsed[0].cause), (Status::Online, Cause::Groups));
    assert_eq!(groups_of(&lapsed[0]), ["g2", "g4"]);

    let offline = store.disconnect(&refreshed).await.unwrap().expect("the last session");
    assert_eq!((offline.presence.status, groups_of(&offline)), (Status::Offline, vec!["g2".into(), "g4".into()]));
}

async fn chosen_statuses_transition_and_outlive_the_session(engine: &Engine) {
    let stores = open(engine).await;
    let store = &*stores.store;
    let s = session("u", 1, Some("d"), &[]);
    assert_eq!(store.choice(&s.user).await.unwrap(), None, "a user never seen chose nothing");
    store.connect(&s).await.unwrap();

    let dnd = store.set_status(&s, Mode::Dnd, Some("driving")).await.unwrap().unwrap();
    assert_eq!((dnd.presence.status, dnd.cause), (Status::Dnd, Cause::Status));
    assert_eq!(dnd.presence.status_text.as_deref(), Some("driving"));
    let parked = store.set_status(&s, Mode::Dnd, Some("parked")).await.unwrap().expect("a new text is news");
    assert_eq!(parked.presence.status_text.as_deref(), Some("parked"));
    assert_eq!(store.set_status(&s, Mode::Dnd, Some("parked")).await.unwrap(), None, "nothing changed");
    let choice = store.choice(&s.user).await.unwrap().unwrap();
    assert_eq!((choice.mode, choice.text.as_deref()), (Mode::Dnd, Some("parked")));

    let hidden = store.set_status(&s, Mode::Invisible, None).await.unwrap().unwrap();
    assert_eq!((hidden.presence.status, hidden.presence.status_text.clone()), (Status::Offline, None));
    assert_eq!(look(store, "u", &Scope::everyone()).await.status, Status::Offline, "invisible reads as offline");
    assert_eq!(store.disconnect(&s).await.unwrap(), None, "already shown offline");

    let again = session("u", 2, Some("d"), &[]);
    assert_eq!(store.connect(&again).await.unwrap().update, None, "the choice outlives the session");
    let seen = store.set_status(&again, Mode::Auto, None).await.unwrap();
    assert_eq!(shown(&seen), Some((Status::Online, Cause::Status)));
}

async fn idle_users_turn_away_once_and_activity_brings_them_back(engine: &Engine) {
    let stores = (engine.open)(lifetimes(LONG, SHORT)).await;
    let store = &*stores.store;
    let s = session("u", 1, Some("d"), &[]);
    let online = store.connect(&s).await.unwrap().update.unwrap();

    let away = sweep_until(store, |swept| !swept.is_empty()).await;
    assert_eq!(away.len(), 1, "{away:?}");
    assert_eq!((away[0].presence.status, away[0].cause), (Status::Away, Cause::Idle));
    assert!(away[0].presence.version > online.presence.version);
    assert_eq!(store.online().await.unwrap().users.len(), 1, "an away user is connected");

    let back = store.activity(&s).await.unwrap();
    assert_eq!(shown(&back), Some((Status::Online, Cause::Active)));
    assert_eq!(store.activity(&s).await.unwrap(), None, "activity of an online user is no transition");
}

async fn lookup_reads_users_as_the_scope_allows(engine: &Engine) {
    let stores = open(engine).await;
    let store = &*stores.store;
    store.connect(&session("a", 1, Some("d"), &["g1", "g2"])).await.unwrap();
    store.connect(&session("b", 2, Some("d"), &["g2"])).await.unwrap();
    let gone = session("c", 3, Some("d"), &["g1"]);
    store.connect(&gone).await.unwrap();
    store.disconnect(&gone).await.unwrap();

    let ids: Vec<Id> = ["nobody", "c", "b", "a"].map(id).to_vec();
    let everyone = store.lookup(&ids, &Scope::everyone()).await.unwrap();
    assert_eq!(everyone[0], UserPresence::unknown(id("nobody")), "answers in request order");
    assert_eq!((everyone[1].status, everyone[1].last_seen.is_some()), (Status::Offline, true));
    assert_eq!((everyone[2].status, everyone[3].status), (Status::Online, Status::Online));

    let g1 = store.lookup(&ids, &Scope::members_of(&id("g1"))).await.unwrap();
    assert_eq!(g1[2], UserPresence::unknown(id("b")), "out of scope reads exactly as unknown");
    assert_eq!((g1[3].status, g1[3].groups.to_vec()), (Status::Online, vec![id("g1")]), "other groups' names hidden");
    assert_eq!(g1[1].status, Status::Offline);
    assert_eq!(store.lookup(&[], &Scope::everyone()).await.unwrap(), [], "no ids, no answer, no error");
}

async fn group_members_are_the_users_whose_sessions_named_the_group(engine: &Engine) {
    let stores = open(engine).await;
    let store = &*stores.store;
    let (a, b) = (session("a", 1, Some("d"), &["crew"]), session("b", 2, Some("d"), &["crew", "ops"]));
    store.connect(&a).await.unwrap();
    store.connect(&b).await.unwrap();
    store.disconnect(&b).await.unwrap();
    let mut crew = store.group_members(&id("crew")).await.unwrap();
    crew.sort();
    assert_eq!(crew, [id("a"), id("b")], "members within the last-seen retention, online or not");
    assert_eq!(store.group_members(&id("ops")).await.unwrap(), [id("b")]);
    assert_eq!(store.group_members(&id("nobody-here")).await.unwrap(), []);
}

async fn a_lingering_session_lapses_later_and_holds_no_device(engine: &Engine) {
    let stores = open(engine).await;
    let store = &*stores.store;
    let lingering = session("u", 1, Some("radio"), &[]);
    store.connect(&lingering).await.unwrap();
    store.linger(&lingering, LONG).await.unwrap();
    assert_eq!(look(store, "u", &Scope::everyone()).await.status, Status::Online, "lingering is not ended");
    let reconnect = store.connect(&session("u", 2, Some("radio"), &[])).await.unwrap();
    assert_eq!((reconnect.update, reconnect.replaced), (None, None), "its reconnect replaces nothing, and is no news");

    let alone = session("v", 3, Some("radio"), &[]);
    store.connect(&alone).await.unwrap();
    store.linger(&alone, Duration::from_millis(100)).await.unwrap();
    let lapsed = sweep_until(store, |swept| !swept.is_empty()).await;
    assert_eq!(lapsed.len(), 1, "{lapsed:?}");
    assert_eq!((lapsed[0].presence.user_id.as_str(), lapsed[0].cause), ("v", Cause::Expired));
}

async fn the_online_snapshot_holds_every_shown_user(engine: &Engine) {
    let stores = open(engine).await;
    let store = &*stores.store;
    let (a, b, hidden) = (session("a", 1, Some("d"), &[]), session("b", 2, Some("d"), &[]), session("c", 3, None, &[]));
    for s in [&a, &b, &hidden] {
        store.connect(s).await.unwrap();
    }
    store.set_status(&hidden, Mode::Invisible, None).await.unwrap();
    store.set_status(&b, Mode::Away, Some("lunch")).await.unwrap();
    let snapshot = store.online().await.unwrap();
    assert!(snapshot.watermark > 0);
    let mut users: Vec<(String, Status)> = snapshot.users.iter().map(|u| (u.user_id.to_string(), u.status)).collect();
    users.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(users, [("a".into(), Status::Online), ("b".into(), Status::Away)], "invisible users are not in it");

    store.disconnect(&a).await.unwrap();
    let left: Vec<String> = store.online().await.unwrap().users.iter().map(|u| u.user_id.to_string()).collect();
    assert_eq!(left, ["b"]);
}

async fn indicators_are_set_cleared_and_lapse(engine: &Engine) {
    let stores = open(engine).await;
    let signals = &*stores.signals;
    let (g, u, v) = (id("g"), id("u"), id("v"));
    signals.set_indicator(&g, &v, IndicatorKind::Typing, Some(LONG)).await.unwrap();
    signals.set_indicator(&g, &u, IndicatorKind::Recording, Some(LONG)).await.unwrap();
    signals.set_indicator(&g, &u, IndicatorKind::Typing, Some(LONG)).await.unwrap();
    signals.set_indicator(&id("elsewhere"), &u, IndicatorKind::Talking, Some(LONG)).await.unwrap();
    let live = signals.indicators(&g).await.unwrap();
    let sorted =
        [(IndicatorKind::Typing, u.clone()), (IndicatorKind::Typing, v.clone()), (IndicatorKind::Recording, u.clone())];
    assert_eq!(live, sorted, "the group's own, sorted");
    let everywhere = [
        (g.clone(), IndicatorKind::Typing, u.clone()),
        (g.clone(), IndicatorKind::Typing, v.clone()),
        (g.clone(), IndicatorKind::Recording, u.clone()),
        (id("elsewhere"), IndicatorKind::Talking, u.clone()),
    ];
    let mut everywhere = everywhere.to_vec();
    everywhere.sort();
    assert_eq!(signals.live_indicators().await.unwrap(), everywhere, "every group's, sorted");

    signals.set_indicator(&g, &u, IndicatorKind::Typing, None).await.unwrap();
    signals.set_indicator(&g, &v, IndicatorKind::Typing, Some(Duration::from_millis(100))).await.unwrap();
    let deadline = Instant::now() + common::WAIT;
    loop {
        let live = signals.indicators(&g).await.unwrap();
        if live == [(IndicatorKind::Recording, u.clone())] {
            let mut left = vec![
                (g.clone(), IndicatorKind::Recording, u.clone()),
                (id("elsewhere"), IndicatorKind::Talking, u.clone()),
            ];
            left.sort();
            assert_eq!(signals.live_indicators().await.unwrap(), left, "neither the cleared nor the lapsed one");
            break;
        }
        assert_eq!(live.len(), 2, "a cleared indicator is gone at once: {live:?}");
        assert!(Instant::now() < deadline, "the short indicator never lapsed: {live:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn only_an_orphaned_indicator_is_claimed_and_exactly_once(engine: &Engine) {
    let stores = open(engine).await;
    let signals = &*stores.signals;
    let (g, u) = (id("g"), id("u"));
    let brief = Some(Duration::from_millis(100));
    // Cleared by its router, then one set again and never cleared (its router died).
    signals.set_indicator(&g, &u, IndicatorKind::Recording, brief).await.unwrap();
    signals.set_indicator(&g, &u, IndicatorKind::Recording, None).await.unwrap();
    signals.set_indicator(&g, &u, IndicatorKind::Typing, brief).await.unwrap();
    signals.set_indicator(&g, &u, IndicatorKind::Talking, Some(LONG)).await.unwrap();

    let deadline = Instant::now() + common::WAIT;
    let mut claimed = Vec::new();
    loop {
        let (a, b) = join(signals.claim_orphaned_indicators(), signals.claim_orphaned_indicators()).await;
        claimed.extend(a.unwrap().into_iter().chain(b.unwrap()));
        let lapsed = signals.indicators(&g).await.unwrap() == [(IndicatorKind::Talking, u.clone())];
        if !claimed.is_empty() || (lapsed && !engine.shared) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let expected = if engine.shared { vec![(g, IndicatorKind::Typing, u)] } else { Vec::new() };
    assert_eq!(claimed, expected, "the orphan, claimed once; never a cleared or a live one");
    assert_eq!(signals.claim_orphaned_indicators().await.unwrap(), [], "nothing is claimed twice");
}

async fn a_floor_is_held_by_one_session_at_a_time(engine: &Engine) {
    let stores = open(engine).await;
    let signals = &*stores.signals;
    let (a, b) = (SessionId::new("r1", 1), SessionId::new("r2", 1));
    let claim = |session: &SessionId, hold: Duration| common::floor_claim(session, hold, None);
    let granted = |take: FloorTake| take == FloorTake::Granted;
    assert!(granted(signals.take_floor("crew", &claim(&a, LONG)).await.unwrap()));
    assert!(granted(signals.take_floor("crew", &claim(&a, LONG)).await.unwrap()), "its holder is granted it again");
    assert!(granted(signals.take_floor("other", &claim(&b, LONG)).await.unwrap()), "floors are per channel");
    if engine.shared {
        let busy = signals.take_floor("crew", &claim(&b, LONG)).await.unwrap();
        assert_eq!(busy, FloorTake::Busy, "busy for a session of another router");
        signals.release_floor("crew", &b).await.unwrap();
        let busy = signals.take_floor("crew", &claim(&b, LONG)).await.unwrap();
        assert_eq!(busy, FloorTake::Busy, "only the holder gives it back");
    }
    signals.release_floor("crew", &a).await.unwrap();
    assert!(granted(signals.take_floor("crew", &claim(&b, LONG)).await.unwrap()), "free once released");

    // A holder that never gives it back holds it at most `hold`.
    assert!(granted(signals.take_floor("brief", &claim(&a, Duration::from_millis(100))).await.unwrap()));
    let deadline = Instant::now() + common::WAIT;
    while !granted(signals.take_floor("brief", &claim(&b, LONG)).await.unwrap()) {
        assert!(Instant::now() < deadline, "the floor was held past its hold");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A floor whose talker has not touched it (sent AUDIO) for its idle time is taken over by
/// a claim that allows it, and the taker learns from whom; a touch keeps it, and a claim
/// without an idle time takes nothing over. (A store of one router grants every claim: its
/// router decides the takeover itself.)
async fn an_idle_floor_is_taken_over_and_a_touched_one_is_not(engine: &Engine) {
    if !engine.shared {
        return;
    }
    let stores = open(engine).await;
    let signals = &*stores.signals;
    let (a, b, c) = (SessionId::new("r1", 1), SessionId::new("r2", 1), SessionId::new("r3", 1));
    let idle = |session: &SessionId| common::floor_claim(session, LONG, Some(SHORT));
    assert_eq!(signals.take_floor("crew", &idle(&a)).await.unwrap(), FloorTake::Granted);
    assert_eq!(signals.take_floor("crew", &idle(&b)).await.unwrap(), FloorTake::Busy, "not idle yet");
    // Touched well within the idle time, for three idle times: never taken over.
    let until = Instant::now() + 3 * SHORT;
    while Instant::now() < until {
        signals.touch_floor("crew", &a, SHORT).await.unwrap();
        assert_eq!(signals.take_floor("crew", &idle(&b)).await.unwrap(), FloorTake::Busy, "touched");
        tokio::time::sleep(SHORT / 6).await;
    }
    let patient = common::floor_claim(&c, LONG, None);
    let deadline = Instant::now() + common::WAIT;
    let taken = loop {
        assert_eq!(signals.take_floor("crew", &patient).await.unwrap(), FloorTake::Busy, "no takeover without idle");
        match signals.take_floor("crew", &idle(&b)).await.unwrap() {
            FloorTake::Busy => {
                assert!(Instant::now() < deadline, "an idle floor was never taken over");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            taken => break taken,
        }
    };
    let FloorTake::TakenOver { from, held } = taken else { panic!("{taken:?}") };
    assert_eq!((from.session, from.user.as_str(), &*from.talk, from.with_message_id), (a.clone(), "u", "t", false));
    assert!(held >= 3 * SHORT, "held {held:?}");
    signals.touch_floor("crew", &a, LONG).await.unwrap();
    signals.release_floor("crew", &a).await.unwrap();
    assert_eq!(
        signals.take_floor("crew", &patient).await.unwrap(),
        FloorTake::Busy,
        "the old talker gave back nothing"
    );
}
