//! The talk of a router killed mid-talk (SIGKILL: no STOP, no end of `talking` from it) is
//! ended by a surviving router once the floor's lease lapses, within seconds and before
//! the talker is shown offline, not after the maximum talk time; a silent talker on a
//! live router keeps its floor. Real routers, real redis-server (or Redis Cluster).

mod common;

use common::{Engine, Setup, map, prometheus::metric};
use presence_router::{
    engine::{FLOOR_LEASE, FLOOR_ORPHAN_GRACE},
    protocol::message_type::{START, START_ACK, START_FAILED, TEXT},
};

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
