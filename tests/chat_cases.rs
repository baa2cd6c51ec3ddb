//! Twenty presence, typing and recording cases of a chat app, in this protocol's terms:
//! conversations are groups, typing starts with INDICATOR (37) `{type: "typing"}`,
//! others see INDICATOR_UPDATE (38), an activity ping is ACTIVITY (36), and conversation
//! presence is `GET /api/groups/{id}/presence`. Each runs against
//! the real binary on the embedded engine and on Redis.
//!
//! Case 5 (activity pings keep a user online indefinitely) needs minutes of simulated
//! time: it is `activity_pings_keep_a_user_online` in `src/engine/memory.rs`, on the paused
//! tokio clock.
//!
//! "Never echoed" is checked without waiting for silence: relayed frames reach a
//! connection in order, so when the sender next receives someone else's indicator, its own
//! would have come first.

mod common;

use common::{Engine, Router, Setup, assert_update, map};

on_every_engine!(
    t01_user_online_on_connect,
    t02_user_away_after_inactivity,
    t03_user_back_online_after_activity,
    t04_user_offline_on_disconnect,
    t06_group_presence_with_all_states,
    t07_start_typing,
    t08_stop_typing,
    t09_typing_auto_expires,
    t10_typing_cleared_on_disconnect,
    t11_start_recording,
    t12_recording_refresh_broadcasts_once,
    t13_stop_recording,
    t14_recording_auto_expires,
    t15_recording_cleared_on_disconnect,
    t16_group_presence_includes_indicators,
    t17_typing_and_recording_simultaneously,
    t18_multiple_users_typing,
    t19_indicator_not_sent_to_self,
    t20_rapid_indicator_events,
);

const ACTIVITY: u8 = 36;
const TEXT: u8 = 17;

/// The ids of a JSON array of strings.
fn ids(value: &serde_json::Value) -> Vec<&str> {
    value.as_array().unwrap_or_else(|| panic!("an array, got {value}")).iter().map(|v| v.as_str().unwrap()).collect()
}

async fn t01_user_online_on_connect(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    let _a = router.mobile_in("a", &["crew"]).await;
    let online = dashboard.next_update().await;
    assert_update(&online, "a", "online");
    assert_eq!(online["cause"].as_str(), Some("connect"));
    assert!(online["lastActivity"].as_u64().is_some(), "{online}");
    let user = router.user("a").await;
    assert_eq!(user["status"].as_str(), Some("online"));
    assert_eq!(user["lastActivity"].as_u64(), online["lastActivity"].as_u64());
}

async fn t02_user_away_after_inactivity(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&["--away-after-ms", "300"]).await;
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    let mut a = router.mobile_in("a", &["crew"]).await;
    let online = dashboard.next_update().await;
    let away = dashboard.next_update().await;
    assert_update(&away, "a", "away");
    assert_eq!(away["cause"].as_str(), Some("idle"));
    a.sync("a").await; // a heartbeat is not activity
    let user = router.user("a").await;
    assert_eq!(user["status"].as_str(), Some("away"));
    assert_eq!(user["lastActivity"].as_u64(), online["lastActivity"].as_u64(), "lastActivity shows the last activity");
}

async fn t03_user_back_online_after_activity(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&["--away-after-ms", "300"]).await;
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    let mut a = router.mobile_in("a", &["crew"]).await;
    let online = dashboard.next_update().await;
    assert_update(&dashboard.next_update().await, "a", "away");

    a.send_frame(0, ACTIVITY, "a", "", map(&[])).await;
    a.expect(39).await;
    let back = dashboard.next_update().await;
    assert_update(&back, "a", "online");
    assert_eq!(back["cause"].as_str(), Some("active"));
    assert!(back["lastActivity"].as_u64() > online["lastActivity"].as_u64(), "lastActivity updated");

    // Sending a message is activity too.
    assert_update(&dashboard.next_update().await, "a", "away");
    a.send_frame(0, TEXT, "a", "crew", map(&[("text", "on my way".into())])).await;
    a.expect(22).await;
    assert_update(&dashboard.next_update().await, "a", "online");
}

async fn t04_user_offline_on_disconnect(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    let a = router.mobile_in("a", &["crew"]).await;
    assert_update(&dashboard.next_update().await, "a", "online");
    a.close().await;
    let offline = dashboard.next_update().await;
    assert_update(&offline, "a", "offline");
    assert_eq!(offline["cause"].as_str(), Some("disconnect"));
    let user = router.user("a").await;
    assert_eq!(user["status"].as_str(), Some("offline"));
    assert_eq!(user["lastSeen"].as_u64(), offline["lastSeen"].as_u64(), "last seen stored");
    assert!(user.get("lastActivity").is_none(), "no activity shown for an offline user: {user}");
}

async fn t06_group_presence_with_all_states(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    let _a = router.mobile_in("a", &["crew"]).await;
    let mut b = router.mobile_in("b", &["crew"]).await;
    let c = router.mobile_in("c", &["crew"]).await;
    for _ in 0..3 {
        dashboard.next_update().await;
    }
    b.set_status("b", "away", None).await;
    assert_update(&dashboard.next_update().await, "b", "away");
    c.close().await;
    assert_update(&dashboard.next_update().await, "c", "offline");

    let group = router.group("crew").await;
    let mut states: Vec<(&str, &str)> = group["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["userId"].as_str().unwrap(), p["status"].as_str().unwrap()))
        .collect();
    states.sort();
    assert_eq!(states, [("a", "online"), ("b", "away"), ("c", "offline")]);
    assert_eq!((group["onlineCount"].as_u64(), group["awayCount"].as_u64()), (Some(1), Some(1)), "{group}");
}

/// Two members of `crew` and a dashboard that has seen both come online.
async fn crew(router: &Router) -> (common::Client, common::Client, common::Client) {
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    let a = router.mobile_in("a", &["crew"]).await;
    let b = router.mobile_in("b", &["crew"]).await;
    dashboard.next_update().await;
    dashboard.next_update().await;
    (a, b, dashboard)
}

async fn t07_start_typing(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&["--away-after-ms", "2000"]).await;
    let (mut a, mut b, mut dashboard) = crew(&router).await;
    let connected_at = router.user("a").await["lastActivity"].as_u64().unwrap();

    a.indicator("a", "crew", "typing", true).await;
    let event = b.expect_indicator("a", "typing", true).await;
    assert_eq!(event["groupId"].as_str(), Some("crew"));
    assert!(event["timestamp"].as_u64().is_some());
    dashboard.expect_indicator("a", "typing", true).await;
    assert_eq!(ids(&router.group("crew").await["typingUsers"]), ["a"]);

    // Activity is written at most once per tenth of AWAY_AFTER_MS: keep typing until the
    // write is due.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while router.user("a").await["lastActivity"].as_u64().unwrap() <= connected_at {
        assert!(tokio::time::Instant::now() < deadline, "typing never updated lastActivity");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        a.indicator("a", "crew", "typing", true).await;
    }
}

async fn t08_stop_typing(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut a, mut b, mut dashboard) = crew(&router).await;
    a.indicator("a", "crew", "typing", true).await;
    b.expect_indicator("a", "typing", true).await;
    a.indicator("a", "crew", "typing", false).await;
    b.expect_indicator("a", "typing", false).await;
    dashboard.expect_indicator("a", "typing", true).await;
    dashboard.expect_indicator("a", "typing", false).await;
    assert!(ids(&router.group("crew").await["typingUsers"]).is_empty());
}

async fn t09_typing_auto_expires(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&["--typing-ttl-ms", "300"]).await;
    let (mut a, mut b, _dashboard) = crew(&router).await;
    a.indicator("a", "crew", "typing", true).await;
    b.expect_indicator("a", "typing", true).await;
    // No refresh: the router ends it and says so (clients need not run their own timer).
    b.expect_indicator("a", "typing", false).await;
    assert!(ids(&router.group("crew").await["typingUsers"]).is_empty());
}

async fn t10_typing_cleared_on_disconnect(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut a, mut b, mut dashboard) = crew(&router).await;
    a.indicator("a", "crew", "typing", true).await;
    b.expect_indicator("a", "typing", true).await;
    a.close().await;
    b.expect_indicator("a", "typing", false).await;
    dashboard.expect_indicator("a", "typing", true).await;
    dashboard.expect_indicator("a", "typing", false).await;
    assert_update(&dashboard.next_update().await, "a", "offline");
    assert!(ids(&router.group("crew").await["typingUsers"]).is_empty());
}

async fn t11_start_recording(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut a, mut b, mut dashboard) = crew(&router).await;
    a.indicator("a", "crew", "recording", true).await;
    b.expect_indicator("a", "recording", true).await;
    dashboard.expect_indicator("a", "recording", true).await;
    let group = router.group("crew").await;
    assert_eq!(ids(&group["recordingUsers"]), ["a"]);
    assert!(ids(&group["typingUsers"]).is_empty());
}

async fn t12_recording_refresh_broadcasts_once(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut a, mut b, _dashboard) = crew(&router).await;
    a.indicator("a", "crew", "recording", true).await;
    a.indicator("a", "crew", "recording", true).await; // the 10 s refresh
    a.indicator("a", "crew", "typing", true).await;
    b.expect_indicator("a", "recording", true).await;
    // A duplicate would sit between the two.
    b.expect_indicator("a", "typing", true).await;
    assert_eq!(ids(&router.group("crew").await["recordingUsers"]), ["a"]);
}

async fn t13_stop_recording(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut a, mut b, _dashboard) = crew(&router).await;
    a.indicator("a", "crew", "recording", true).await;
    b.expect_indicator("a", "recording", true).await;
    a.indicator("a", "crew", "recording", false).await;
    b.expect_indicator("a", "recording", false).await;
    assert!(ids(&router.group("crew").await["recordingUsers"]).is_empty());
}

async fn t14_recording_auto_expires(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&["--recording-ttl-ms", "300"]).await;
    let (mut a, mut b, _dashboard) = crew(&router).await;
    a.indicator("a", "crew", "recording", true).await;
    b.expect_indicator("a", "recording", true).await;
    b.expect_indicator("a", "recording", false).await;
    assert!(ids(&router.group("crew").await["recordingUsers"]).is_empty());
}

async fn t15_recording_cleared_on_disconnect(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut a, mut b, _dashboard) = crew(&router).await;
    a.indicator("a", "crew", "recording", true).await;
    b.expect_indicator("a", "recording", true).await;
    drop(a); // killed app: no close frame
    b.expect_indicator("a", "recording", false).await;
    assert!(ids(&router.group("crew").await["recordingUsers"]).is_empty());
}

async fn t16_group_presence_includes_indicators(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut a, mut b, _dashboard) = crew(&router).await;
    a.indicator("a", "crew", "typing", true).await;
    b.expect_indicator("a", "typing", true).await;
    b.indicator("b", "crew", "recording", true).await;
    a.expect_indicator("b", "recording", true).await;
    let group = router.group("crew").await;
    assert_eq!(ids(&group["typingUsers"]), ["a"]);
    assert_eq!(ids(&group["recordingUsers"]), ["b"]);
}

async fn t17_typing_and_recording_simultaneously(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut a, mut b, _dashboard) = crew(&router).await;
    a.indicator("a", "crew", "typing", true).await;
    a.indicator("a", "crew", "recording", true).await;
    b.expect_indicator("a", "typing", true).await;
    b.expect_indicator("a", "recording", true).await;
    let group = router.group("crew").await;
    assert_eq!((ids(&group["typingUsers"]), ids(&group["recordingUsers"])), (vec!["a"], vec!["a"]));
}

async fn t18_multiple_users_typing(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut listener = router.mobile_in("listener", &["crew"]).await;
    let mut typists = Vec::new();
    for user in ["u1", "u2", "u3"] {
        let mut typist = router.mobile_in(user, &["crew"]).await;
        typist.indicator(user, "crew", "typing", true).await;
        listener.expect_indicator(user, "typing", true).await;
        typists.push(typist); // stays connected, still typing
    }
    assert_eq!(ids(&router.group("crew").await["typingUsers"]), ["u1", "u2", "u3"]);
}

async fn t19_indicator_not_sent_to_self(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut a, mut b, _dashboard) = crew(&router).await;
    let mut outsider = router.mobile_in("c", &["other"]).await;
    a.indicator("a", "crew", "typing", true).await;
    b.expect_indicator("a", "typing", true).await;
    b.indicator("b", "crew", "typing", true).await;
    // a's next frame is b's indicator: its own would have been queued before it.
    a.expect_indicator("b", "typing", true).await;
    // Nor does it reach a user outside the group: c's next frame is its own heartbeat ACK.
    outsider.sync("c").await;
}

async fn t20_rapid_indicator_events(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut a, mut b, _dashboard) = crew(&router).await;
    let start = map(&[("type", "typing".into()), ("isActive", true.into())]);
    for _ in 0..10 {
        a.send_frame(0, 37, "a", "crew", start.clone()).await;
    }
    for _ in 0..10 {
        a.expect(39).await; // every one handled, none refused
    }
    a.indicator("a", "crew", "typing", false).await;
    // One start, then the stop: nine refreshes broadcast nothing.
    b.expect_indicator("a", "typing", true).await;
    b.expect_indicator("a", "typing", false).await;
}
