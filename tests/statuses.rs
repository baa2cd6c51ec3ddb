//! Chosen statuses: online / away / dnd / invisible with a custom text, as
//! dashboards, snapshots and the HTTP API show them, on every engine.

mod common;

use common::{Engine, Setup, assert_update, map};

on_every_engine!(
    dnd_with_text_reaches_dashboards_snapshots_and_the_api,
    invisible_users_are_shown_offline,
    manual_away_lasts_until_set_back,
    a_chosen_status_outlives_the_session,
    bad_status_frames_are_refused,
);

async fn dnd_with_text_reaches_dashboards_snapshots_and_the_api(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    let mut a = router.mobile_in("a", &["crew"]).await;
    let online = dashboard.next_update().await;
    a.set_status("a", "dnd", Some("driving")).await;
    let dnd = dashboard.next_update().await;
    assert_update(&dnd, "a", "dnd");
    assert_eq!((dnd["statusText"].as_str(), dnd["cause"].as_str()), (Some("driving"), Some("status")));
    assert!(dnd["version"].as_u64() > online["version"].as_u64());

    let (_, snapshot) = router.dashboard("late").await;
    let users = snapshot[5]["users"].as_array().unwrap();
    assert_eq!((users[0]["status"].as_str(), users[0]["statusText"].as_str()), (Some("dnd"), Some("driving")));
    let user = router.user("a").await;
    assert_eq!((user["status"].as_str(), user["statusText"].as_str()), (Some("dnd"), Some("driving")));
    let (_, bulk) = router.post_status(r#"{"userIds": ["a"]}"#).await;
    assert_eq!(bulk["users"][0]["statusText"].as_str(), Some("driving"));
    assert_eq!(router.group("crew").await["dndCount"].as_u64(), Some(1));

    a.set_status("a", "dnd", None).await;
    let cleared = dashboard.next_update().await;
    assert_update(&cleared, "a", "dnd");
    assert!(cleared["statusText"].is_nil(), "a cleared text is news too: {cleared}");
}

async fn invisible_users_are_shown_offline(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    let mut a = router.mobile_in("a", &["crew"]).await;
    dashboard.next_update().await;
    a.set_status("a", "invisible", Some("secret")).await;
    let hidden = dashboard.next_update().await;
    assert_update(&hidden, "a", "offline");
    assert!(hidden["statusText"].is_nil() && hidden["lastActivity"].is_nil(), "nothing leaks: {hidden}");

    let (_, snapshot) = router.dashboard("late").await;
    assert!(snapshot[5]["users"].as_array().unwrap().is_empty(), "not in snapshots");
    a.sync("a").await; // still connected, still heartbeating
    let user = router.user("a").await;
    assert_eq!(user["status"].as_str(), Some("offline"));
    assert_eq!(user["lastSeen"].as_u64(), hidden["lastSeen"].as_u64(), "heartbeats do not reveal it");
    assert_eq!(router.group("crew").await["onlineCount"].as_u64(), Some(0));

    a.set_status("a", "online", None).await;
    assert_update(&dashboard.next_update().await, "a", "online");
}

async fn manual_away_lasts_until_set_back(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    let mut a = router.mobile_in("a", &["crew"]).await;
    dashboard.next_update().await;
    a.set_status("a", "away", None).await;
    assert_update(&dashboard.next_update().await, "a", "away");
    a.send_frame(0, 36, "a", "", map(&[])).await; // activity does not undo a manual away
    a.expect(39).await;
    a.set_status("a", "online", None).await; // "back"
    let back = dashboard.next_update().await;
    assert_update(&back, "a", "online");
    assert_eq!(back["cause"].as_str(), Some("status"), "the next change is the one set back, not the ping");
}

async fn a_chosen_status_outlives_the_session(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    let mut a = router.mobile_in("a", &["crew"]).await;
    dashboard.next_update().await;
    a.set_status("a", "dnd", Some("night shift")).await;
    dashboard.next_update().await;
    a.close().await;
    assert_update(&dashboard.next_update().await, "a", "offline");
    let _again = router.mobile_in("a", &["crew"]).await;
    let back = dashboard.next_update().await;
    assert_update(&back, "a", "dnd");
    assert_eq!(back["statusText"].as_str(), Some("night shift"));
}

async fn bad_status_frames_are_refused(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut a = router.mobile_in("a", &["crew"]).await;
    for payload in [
        map(&[("status", "busy".into())]),
        map(&[("status", "dnd".into()), ("text", 42.into())]),
        map(&[("status", "dnd".into()), ("text", "x".repeat(129).into())]),
        rmpv::Value::from("dnd"),
    ] {
        a.send_frame(0, 35, "a", "", payload).await;
        let error = a.next_error().await;
        assert_eq!((error["code"].as_str(), error["messageType"].as_u64()), (Some("invalid_payload"), Some(35)));
    }
    a.send_frame(0, 37, "a", "crew", map(&[("type", "talking".into())])).await;
    assert_eq!(a.next_error().await["code"].as_str(), Some("invalid_payload"), "talking is the router's own");
    a.send_frame(0, 37, "a", "elsewhere", map(&[("type", "typing".into())])).await;
    assert_eq!(a.next_error().await["code"].as_str(), Some("not_a_member"));
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    dashboard.send_frame(0, 35, "dispatcher", "", map(&[("status", "away".into())])).await;
    assert_eq!(dashboard.next_error().await["code"].as_str(), Some("not_allowed"));
    let metrics = router.metrics().await;
    assert!(metrics.contains(r#"presence_frame_errors_total{reason="invalid_payload"} 5"#), "{metrics}");
}
