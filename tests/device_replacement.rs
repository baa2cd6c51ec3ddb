//! A new session of the same user and device id replaces the older one at once, on any
//! router: the old connection is told LOGIN_DUPLICATED (VoicePing's 9) and closed with
//! 4009 `replaced`, its floor is released (its
//! listeners get STOP with reason `replaced`, then the new session's START) and its
//! indicators end, and dashboards never see the user offline in between. Sessions
//! without a device id, other devices and other users' sessions are never replaced. On
//! both engines, and across two routers on Redis.

mod common;

use common::{Client, Engine, Router, SECRET, Setup, View, map};
use futures_util::StreamExt;
use presence_router::{
    auth::{Role, mint_hs256_in},
    protocol::message_type::{START, START_ACK, STOP, STOP_ACK},
};
use tokio_tungstenite::tungstenite::Message;

const TALKER: &str = "t";
const GROUP: &str = "crew";

/// A mobile of `user` in [`GROUP`] on `device` (or none).
async fn connect(router: &Router, user: &str, device: Option<&str>) -> Client {
    let token = mint_hs256_in(SECRET.as_bytes(), user, Role::Mobile, Some(&[GROUP]), 3600).unwrap();
    Client::connect(router.addr, &token, device).await
}

/// A dashboard of [`GROUP`] with the [`TALKER`] updates it was shown.
struct Desk {
    client: Client,
    view: View,
    markers: usize,
    /// [`TALKER`]'s statuses in the updates read so far.
    seen: Vec<String>,
}

impl Desk {
    async fn open(router: &Router) -> Desk {
        let (client, snapshot) = router.dashboard_of("desk", &[GROUP]).await;
        let mut view = View::default();
        view.apply(&snapshot);
        Desk { client, view, markers: 0, seen: Vec::new() }
    }

    /// Reads everything decided before a new marker user came online on `router`.
    async fn catch_up(&mut self, router: &Router) {
        self.markers += 1;
        let marker = format!("marker-{}", self.markers);
        let _marker = router.mobile_in(&marker, &[GROUP]).await;
        loop {
            let frame = self.client.next_frame().await;
            self.view.apply(&frame);
            if frame[1].as_u64() != Some(31) {
                continue;
            }
            match frame[5]["userId"].as_str() {
                Some(TALKER) => self.seen.push(frame[5]["status"].as_str().unwrap().to_string()),
                Some(user) if user == marker => return,
                _ => {}
            }
        }
    }
}

/// The talker's link dies mid-transmission on `old_router` (the socket stays open and
/// silent) and it reconnects with the same device id on `new_router`. A listener on each
/// router and a dashboard on the new one watch.
async fn a_dead_talker_is_replaced_by_its_reconnect(old_router: &Router, new_router: &Router) {
    let mut desk = Desk::open(new_router).await;
    let mut listeners = [old_router.mobile_in("l1", &[GROUP]).await, new_router.mobile_in("l2", &[GROUP]).await];

    let mut old = connect(old_router, TALKER, Some("radio")).await;
    old.sync(TALKER).await;
    old.indicator(TALKER, GROUP, "typing", true).await;
    old.send_frame(0, START, TALKER, GROUP, map(&[])).await;
    old.expect(START_ACK).await;
    for listener in &mut listeners {
        listener.expect_indicator(TALKER, "typing", true).await;
        listener.expect_relayed(START, TALKER, GROUP).await;
        listener.expect_indicator(TALKER, "talking", true).await;
    }
    desk.catch_up(new_router).await;
    assert!(desk.view.online.contains_key(TALKER));

    // The reconnect talks at once: the floor the dead session held is free.
    let mut new = connect(new_router, TALKER, Some("radio")).await;
    new.send_frame(0, START, TALKER, GROUP, map(&[])).await;
    let reply = new.next_frame().await;
    assert_eq!(reply[1].as_u64(), Some(START_ACK.into()), "the reconnect's START: {reply}");

    // Listeners hear the old talk end, for that reason, before the new one starts.
    for listener in &mut listeners {
        let stop = listener.expect_relayed(STOP, TALKER, GROUP).await;
        assert_eq!(common::stop_reason(&stop).as_deref(), Some("replaced"), "{stop}");
        listener.expect_indicator(TALKER, "talking", false).await;
        listener.expect_indicator(TALKER, "typing", false).await;
        listener.expect_relayed(START, TALKER, GROUP).await;
        listener.expect_indicator(TALKER, "talking", true).await;
    }

    // The old socket, read at last, was closed as replaced; its end showed no offline.
    assert_eq!(old.close_code().await, Some(4009));
    desk.catch_up(new_router).await;
    assert!(desk.view.online.contains_key(TALKER));
    assert!(!desk.seen.iter().any(|s| s == "offline"), "the dashboard saw {TALKER}: {:?}", desk.seen);

    for router in [old_router, new_router] {
        common::eventually("the group endpoint to show the new talk only", || async {
            let group = router.group(GROUP).await;
            let talker = group["participants"].as_array().unwrap().iter().find(|p| p["userId"] == TALKER).cloned();
            (group["talkingUsers"].clone(), group["typingUsers"].clone()) == ([TALKER].into(), serde_json::json!([]))
                && talker.is_some_and(|t| t["status"] == "online" && t["deviceId"] == "radio")
        })
        .await;
    }
    new.send_frame(0, STOP, TALKER, GROUP, map(&[])).await;
    new.expect(STOP_ACK).await;
    for router in [old_router, new_router] {
        common::eventually("the group endpoint to show nobody talking", || async {
            router.group(GROUP).await["talkingUsers"] == serde_json::json!([])
        })
        .await;
    }
    let metrics = old_router.metrics().await;
    assert!(metrics.contains(r#"presence_disconnects_total{reason="replaced"} 1"#), "{metrics}");
    let metrics = new_router.metrics().await;
    assert!(metrics.contains(r#"presence_sessions_replaced_total{result="ended"} 1"#), "{metrics}");
}

async fn a_reconnect_replaces_its_dead_talking_session(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    a_dead_talker_is_replaced_by_its_reconnect(&router, &router).await;
}

/// Only the session of the same user and the same device id is replaced: not the user's
/// sessions without a device id or on another device, nor another user's on a device of
/// the same name; and a session without a device id replaces nothing.
async fn only_the_same_users_same_device_is_replaced(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut bystanders = Vec::new();
    for (user, device) in [(TALKER, None), (TALKER, Some("tablet")), ("other", Some("radio"))] {
        let mut client = connect(&router, user, device).await;
        client.sync(user).await;
        bystanders.push((user, client));
    }
    let mut first = connect(&router, TALKER, Some("radio")).await;
    first.sync(TALKER).await;
    let mut second = connect(&router, TALKER, None).await;
    second.sync(TALKER).await;
    first.sync(TALKER).await;

    let mut again = connect(&router, TALKER, Some("radio")).await;
    again.sync(TALKER).await;
    assert_eq!(first.close_code().await, Some(4009), "the same user's same device is replaced");
    for (user, client) in &mut bystanders {
        client.sync(user).await;
    }
    second.sync(TALKER).await;
}

/// The replaced connection's last frame, right before its 4009 close, is VoicePing's
/// LOGIN_DUPLICATED (9), `[1, 9, 0, userId, "userId … has logged in from another deviceId
/// …"]`: VoicePing's apps stop reconnecting on it, where a close alone has them reconnect
/// and replace the new session in turn.
async fn the_replaced_connection_is_told_login_duplicated(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut old = connect(&router, TALKER, Some("radio")).await;
    old.sync(TALKER).await;
    let mut new = connect(&router, TALKER, Some("radio")).await;
    new.sync(TALKER).await;

    let mut last = None;
    let code = loop {
        match tokio::time::timeout(common::WAIT, old.ws.next()).await.expect("the close in time") {
            Some(Ok(Message::Binary(bytes))) => last = Some(rmpv::decode::read_value(&mut &bytes[..]).unwrap()),
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("expected frames and a close, got {other:?}"),
        }
    };
    assert_eq!(code, Some(4009));
    let expected = rmpv::Value::Array(vec![
        1.into(),
        9.into(),
        0.into(),
        TALKER.into(),
        format!("userId {TALKER} has logged in from another deviceId radio").into(),
    ]);
    assert_eq!(last, Some(expected));
    new.sync(TALKER).await;
}

on_every_engine!(
    a_reconnect_replaces_its_dead_talking_session,
    only_the_same_users_same_device_is_replaced,
    the_replaced_connection_is_told_login_duplicated,
);

/// The dead session on router A, the reconnect on router B: B has A end it through the
/// broker before the reconnect talks.
#[tokio::test]
async fn a_reconnect_on_another_router_replaces_the_dead_session() {
    let setup = Setup::new(Engine::Redis).await;
    let (a, b) = (setup.router(&[]).await, setup.router(&[]).await);
    a_dead_talker_is_replaced_by_its_reconnect(&a, &b).await;

    // The talker's connections have all ended: nothing of its sessions is left in Redis.
    let redis = setup.redis.as_ref().unwrap().client().get_multiplexed_async_connection().await.unwrap();
    common::eventually("the talker's session keys to be deleted", || {
        let mut redis = redis.clone();
        async move {
            let keys = ["sessions", "sgroups", "devices"].map(|k| format!("presence:{k}:{TALKER}"));
            ::redis::cmd("EXISTS").arg(&keys).query_async::<u64>(&mut redis).await.unwrap() == 0
        }
    })
    .await;
}

/// A reconnect made while the router is degraded (Redis refusing writes, so its connect
/// could not be stored) replaces the dead session once Redis takes writes again: the old
/// connection is closed with 4009 and Redis keeps the new session on the device. A renewal
/// of the new session would be refused while the old one holds the device, leaving the
/// dead connection open and the user offline once its lease lapsed.
#[tokio::test]
async fn a_reconnect_while_degraded_replaces_the_dead_session_on_recovery() {
    let setup = Setup::new(Engine::Redis).await;
    let router = setup.router(&[]).await;
    let mut old = connect(&router, TALKER, Some("radio")).await;
    old.sync(TALKER).await;

    let mut redis = setup.redis.as_ref().unwrap().client().get_multiplexed_async_connection().await.unwrap();
    let maxmemory = |bytes: u64| {
        let mut redis = redis.clone();
        async move {
            let _: () =
                ::redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(bytes).query_async(&mut redis).await.unwrap();
        }
    };
    maxmemory(1).await;
    let healthz = |status: u16| {
        let router = &router;
        move || async move { common::http(router.addr, "GET", "/healthz", &[], "").await.0 == status }
    };
    common::eventually("the router to report degraded", healthz(503)).await;
    let mut new = connect(&router, TALKER, Some("radio")).await;
    assert_eq!(new.next_error().await["code"].as_str(), Some("presence_unavailable"));

    maxmemory(0).await;
    common::eventually("presence rebuilt once writes succeed", healthz(200)).await;
    assert_eq!(old.close_code().await, Some(4009), "the dead session is replaced on recovery");
    new.sync(TALKER).await;
    let sessions: u64 =
        ::redis::cmd("SCARD").arg(format!("presence:sessions:{TALKER}")).query_async(&mut redis).await.unwrap();
    assert_eq!(sessions, 1, "Redis keeps the reconnect's session only");
}
