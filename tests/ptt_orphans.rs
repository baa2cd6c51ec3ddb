//! The talk of a router killed mid-talk (SIGKILL: no STOP, no end of `talking` from it) is
//! ended by a surviving router once the floor's lease lapses, within seconds and before
//! the talker is shown offline, not after the maximum talk time; a silent talker on a
//! live router keeps its floor. Real routers, real redis-server (or Redis Cluster).

mod common;

use std::time::Duration;

use common::{Engine, RedisServer, Setup, map, prometheus::metric};
use presence_router::{
    engine::{
        FLOOR_LEASE, FLOOR_LEASE_QUIET, FLOOR_LEASE_RENEW, FLOOR_ORPHAN_GRACE, FloorListeners, FloorTake, SignalStore,
    },
    id::Id,
    presence::SessionId,
    protocol::{
        message_type::{START, START_ACK, START_FAILED, TEXT},
        payload::IndicatorKind,
    },
};
use tokio::time::Instant;

on_shared_engines!(
    a_killed_routers_talk_ends_on_the_others_within_its_lease,
    a_killed_routers_talk_ends_no_later_than_its_talker_goes_offline,
    a_silent_talker_on_a_live_router_keeps_its_floor,
);

/// The maximum talk time, far beyond how long any wait here lasts ([`common::WAIT`]): only
/// the floor's lease can end a talk in time.
const MAX_TALK: &str = "60000";

/// Talker and typist on A, a mobile listener and a dashboard on B; A is killed. The
/// listener hears the talk's STOP (reason `router_lost`) and the end of `talking`, the
/// dashboard sees `talking` end before the talker goes offline, and the floor is free.
/// A's sessions lapse 10 s after their last renewal: the floor's lease lapses first.
async fn a_killed_routers_talk_ends_on_the_others_within_its_lease(engine: Engine) {
    talk_of_a_killed_router_ends(engine, "10").await;
}

/// As above, with A's sessions lapsing 3 s after their last renewal, before the floor's
/// lease (renewed until A died) would: the sweep that shows the talker offline ends its
/// talk first.
async fn a_killed_routers_talk_ends_no_later_than_its_talker_goes_offline(engine: Engine) {
    talk_of_a_killed_router_ends(engine, "3").await;
}

async fn talk_of_a_killed_router_ends(engine: Engine, presence_ttl: &str) {
    let setup = Setup::new(engine).await;
    // B's sessions last the default minute, so the listener outlives every wait here
    // without heartbeating.
    let mut a = setup.router(&["--max-talk-ms", MAX_TALK, "--presence-ttl", presence_ttl]).await;
    let b = setup.router(&["--max-talk-ms", MAX_TALK]).await;
    let (mut dashboard, _) = b.dashboard_of("dispatcher", &["crew"]).await;
    let mut listener = b.mobile_in("listener", &["crew"]).await;
    let mut talker = a.mobile_in("talker", &["crew"]).await;
    let mut typist = a.mobile_in("typist", &["crew"]).await;
    for _ in 0..3 {
        dashboard.next_update().await;
    }
    typist.indicator("typist", "crew", "typing", true).await;
    for client in [&mut talker, &mut listener, &mut dashboard] {
        client.expect_indicator("typist", "typing", true).await;
    }
    talker.take_floor("talker", "crew", &mut listener).await;
    dashboard.expect_indicator("talker", "talking", true).await;

    a.signal("KILL").await;
    // The typing end (its own lapse, on the path the floor's now shares) may come before,
    // between or after these.
    let (mut stopped, mut talking_ended, mut typing_ended) = (false, false, false);
    while !(stopped && talking_ended && typing_ended) {
        let frame = listener.next_frame().await;
        match frame[1].as_u64() {
            Some(2) => {
                assert_eq!((frame[2].as_str(), frame[3].as_str()), (Some("talker"), Some("crew")), "{frame}");
                assert_eq!(common::stop_reason(&frame).as_deref(), Some("router_lost"), "{frame}");
                assert!(!stopped && !talking_ended, "one STOP, before the end of talking: {frame}");
                stopped = true;
            }
            Some(38) => {
                assert_eq!(frame[5]["isActive"].as_bool(), Some(false), "{frame}");
                if frame[5]["type"].as_str() == Some("talking") {
                    assert!(stopped && !talking_ended, "talking ends once, after the STOP: {frame}");
                    talking_ended = true;
                } else {
                    assert!(!typing_ended, "typing ends once: {frame}");
                    typing_ended = true;
                }
            }
            _ => panic!("unexpected {frame}"),
        }
    }
    // The dispatcher never sees the talker offline while still talking.
    loop {
        let frame = dashboard.next_frame().await;
        match frame[1].as_u64() {
            Some(38) if frame[5]["type"].as_str() == Some("talking") => {
                assert_eq!(
                    (frame[5]["userId"].as_str(), frame[5]["isActive"].as_bool()),
                    (Some("talker"), Some(false))
                );
                break;
            }
            Some(31) => {
                assert_ne!(frame[5]["userId"].as_str(), Some("talker"), "offline before its talk ended: {frame}")
            }
            _ => {}
        }
    }
    listener.send_frame(0, START, "listener", "crew", map(&[])).await;
    listener.expect(START_ACK).await;
    let metrics = b.metrics().await;
    assert_eq!(metric(&metrics, "presence_floors_orphaned_total"), Some(1), "{metrics}");
    // Exactly once: no second STOP or indicator end before a marker sent after them.
    listener.send_frame(0, TEXT, "listener", "crew", map(&[("text", "marker".into())])).await;
    assert_eq!(listener.next_frame().await[1].as_u64(), Some(22), "TEXT_ACK is next");
}

/// A talker that sends nothing on a live router (the idle takeover off) still holds its
/// floor after the lease and its grace have passed many times over: its router renews the
/// lease, and nobody else's sweep ends its talk.
async fn a_silent_talker_on_a_live_router_keeps_its_floor(engine: Engine) {
    let setup = Setup::new(engine).await;
    let flags = ["--max-talk-ms", MAX_TALK, "--floor-idle-ms", "0"];
    let (a, b) = (setup.router(&flags).await, setup.router(&flags).await);
    let mut talker = a.mobile_in("talker", &["crew"]).await;
    let mut listener = b.mobile_in("listener", &["crew"]).await;
    talker.take_floor("talker", "crew", &mut listener).await;

    // Long enough for an unrenewed lease to lapse and be claimed twice over: nothing to
    // wait on but time itself, as the point is that nothing happens.
    tokio::time::sleep(2 * (FLOOR_LEASE + FLOOR_ORPHAN_GRACE)).await;
    listener.send_frame(0, START, "listener", "crew", map(&[])).await;
    assert_eq!(listener.expect(START_FAILED).await[4].as_str(), Some("Busy"));
    talker.send_frame(0, TEXT, "talker", "crew", map(&[("text", "still here".into())])).await;
    let text = listener.next_frame().await;
    assert_eq!((text[1].as_u64(), text[2].as_str()), (Some(TEXT.into()), Some("talker")), "no STOP before: {text}");
    let metrics = b.metrics().await;
    assert_eq!(metric(&metrics, "presence_floors_orphaned_total"), Some(0), "{metrics}");
}

/// The Redis store on its own: of talks given back, taken over, renewed and left alone,
/// only the one left alone is claimed once its lease and grace have passed, exactly once,
/// with its `talking` cleared; its floor is free then. A talk of a user gone offline whose
/// lease went unrenewed for a while is claimed at once; a fresh one of the same user is not.
#[tokio::test]
async fn the_store_claims_exactly_the_talks_nobody_renews() {
    let redis = RedisServer::start().await;
    let store = common::redis_store(redis.port, Duration::from_secs(60)).await;
    let session = |n: u64| SessionId::new("r", n);
    let (hold, idle) = (Duration::from_secs(60), Some(Duration::from_millis(1)));
    let claim = |n: u64| common::floor_claim(&session(n), hold, idle);
    let (group, user) = (Id::parse("g").unwrap(), Id::parse("u").unwrap());

    for (channel, n) in [("kept", 1), ("given", 2), ("orphan", 3), ("taken", 4)] {
        assert_eq!(store.take_floor(channel, &claim(n)).await.unwrap(), FloorTake::Granted);
    }
    store.set_indicator(&group, &user, IndicatorKind::Talking, Some(hold)).await.unwrap();
    store.release_floor("given", &session(2)).await.unwrap();
    let taken = loop {
        match store.take_floor("taken", &claim(5)).await.unwrap() {
            FloorTake::Busy => tokio::time::sleep(Duration::from_millis(5)).await,
            taken => break taken,
        }
    };
    assert!(matches!(taken, FloorTake::TakenOver { .. }), "{taken:?}");
    let live = [("kept".to_string(), session(1)), ("taken".to_string(), session(5))];

    let started = Instant::now();
    let orphans = loop {
        store.renew_floors(&live, FLOOR_LEASE).await.unwrap();
        let orphans = store.claim_orphaned_floors(&[]).await.unwrap();
        if !orphans.is_empty() {
            break orphans;
        }
        assert!(started.elapsed() < common::WAIT, "the unrenewed talk is claimed in time");
        tokio::time::sleep(FLOOR_LEASE_RENEW / 4).await;
    };
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    let orphan = &orphans[0];
    assert_eq!((&orphan.talker.session, &orphan.listeners), (&session(3), &FloorListeners::Group(group.clone())));
    assert!(orphan.talking_ended, "its talking was live, and is ended by this claim");
    assert!(store.indicators(&group).await.unwrap().is_empty());
    assert!(store.claim_orphaned_floors(&[]).await.unwrap().is_empty(), "claimed once");
    assert_eq!(store.take_floor("orphan", &claim(6)).await.unwrap(), FloorTake::Granted, "its floor is free");
    assert_eq!(store.take_floor("kept", &common::floor_claim(&session(7), hold, None)).await.unwrap(), FloorTake::Busy);

    // The user goes offline: its talk unrenewed for a while is claimed at once; those of
    // the same user that a live router renews are not.
    store.take_floor("lapsing", &claim(8)).await.unwrap();
    tokio::time::sleep(FLOOR_LEASE_QUIET + FLOOR_LEASE_RENEW / 4).await;
    let live = [live[0].clone(), live[1].clone(), ("orphan".to_string(), session(6))];
    store.renew_floors(&live, FLOOR_LEASE).await.unwrap();
    let gone = store.claim_orphaned_floors(std::slice::from_ref(&user)).await.unwrap();
    let claimed: Vec<&SessionId> = gone.iter().map(|orphan| &orphan.talker.session).collect();
    assert_eq!(claimed, [&session(8)], "{gone:?}");
    assert!(!gone[0].talking_ended, "no talking left to end");
}
