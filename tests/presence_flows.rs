//! The basic presence flows against the real binary, on the embedded engine and on Redis alike:
//! online, offline by close, by silence, several devices, snapshots, and the bulk API.

mod common;

use common::{
    Engine, Setup, assert_update,
    raw::{End, RawWs},
    token,
};
use presence_router::auth::Role;

on_every_engine!(
    mobile_online_and_offline_reach_the_dashboard,
    killed_app_without_close_frame_goes_offline_at_once,
    silent_mobile_goes_offline_once_after_the_ttl,
    heartbeats_keep_a_mobile_online_past_the_ttl,
    second_device_keeps_the_user_online,
    snapshot_holds_everyone_online,
    bulk_status_has_the_documented_shape,
    health_and_metrics_report_the_router,
    a_batch_window_loses_no_update,
    dashboards_see_only_their_groups,
    last_seen_outlives_going_offline_for_the_retention,
    group_presence_lists_participants_within_the_scope,
);

async fn mobile_online_and_offline_reach_the_dashboard(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut dashboard, snapshot) = router.dashboard("dispatcher").await;
    assert_eq!(snapshot[5]["users"].as_array().unwrap().len(), 0);

    let mobile = router.mobile("driver-1", "phone-1").await;
    let online = dashboard.next_update().await;
    assert_update(&online, "driver-1", "online");
    assert_eq!(online["deviceId"].as_str(), Some("phone-1"));
    assert_eq!(online["cause"].as_str(), Some("connect"));
    assert!(online["lastSeen"].as_u64().is_some());

    mobile.close().await;
    let offline = dashboard.next_update().await;
    assert_update(&offline, "driver-1", "offline");
    assert_eq!(offline["cause"].as_str(), Some("disconnect"));
    assert!(offline["version"].as_u64() > online["version"].as_u64());
}

async fn killed_app_without_close_frame_goes_offline_at_once(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    let mobile = router.mobile("driver-1", "phone-1").await;
    assert_update(&dashboard.next_update().await, "driver-1", "online");

    drop(mobile); // TCP FIN, no WebSocket close frame
    let offline = dashboard.next_update().await;
    assert_update(&offline, "driver-1", "offline");
    assert_eq!(offline["cause"].as_str(), Some("disconnect"));
}

async fn silent_mobile_goes_offline_once_after_the_ttl(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&["--presence-ttl", "1"]).await;
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    // Connected and never heard from again: the socket stays open, nothing is sent, not
    // even the pong to the router's pings (it never reads).
    let mut silent = RawWs::connect(router.addr, &token("silent", Role::Mobile), Some("phone-1")).await;
    assert_update(&dashboard.next_update().await, "silent", "online");

    let offline = dashboard.next_update().await;
    assert_update(&offline, "silent", "offline");
    assert_eq!(offline["cause"].as_str(), Some("expired"));

    // Exactly one offline: the next update the dashboard sees is a later, unrelated one.
    let _marker = router.mobile("marker", "phone-2").await;
    assert_update(&dashboard.next_update().await, "marker", "online");

    // The zombie socket itself is closed with the heartbeat-timeout code.
    assert_eq!(silent.end().await, End::Closed(Some(4000)));
}

async fn heartbeats_keep_a_mobile_online_past_the_ttl(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&["--presence-ttl", "1", "--heartbeat-min-interval-ms", "0"]).await;
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    let mut mobile = router.mobile("talker", "phone-1").await;
    assert_update(&dashboard.next_update().await, "talker", "online");

    // A silent user beside it marks time: by its expiry, more than a TTL has passed.
    let _silent = router.mobile("silent", "phone-2").await;
    assert_update(&dashboard.next_update().await, "silent", "online");
    let mut ticks = tokio::time::interval(std::time::Duration::from_millis(200));
    let offline = loop {
        tokio::select! {
            _ = ticks.tick() => mobile.heartbeat("talker").await,
            update = dashboard.next_update() => break update,
        }
    };
    assert_update(&offline, "silent", "offline");
    let (status, body) = router.post_status(r#"{"userIds": ["talker"]}"#).await;
    assert_eq!(status, 200);
    assert_eq!(body["users"][0]["status"], "online", "heartbeats renewed the lease");
}

async fn second_device_keeps_the_user_online(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    let phone = router.mobile("guard", "phone").await;
    assert_update(&dashboard.next_update().await, "guard", "online");
    let mut tablet = router.mobile("guard", "tablet").await;
    tablet.sync("guard").await;

    phone.close().await;
    let _marker = router.mobile("marker", "m").await;
    assert_update(&dashboard.next_update().await, "marker", "online");

    tablet.close().await;
    assert_update(&dashboard.next_update().await, "guard", "offline");
}

async fn snapshot_holds_everyone_online(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut watcher, _) = router.dashboard("watcher").await;
    let _a = router.mobile("a", "da").await;
    let _b = router.mobile(&"b".repeat(128), "db").await;
    let c = router.mobile("c", "dc").await;
    for _ in 0..3 {
        watcher.next_update().await;
    }
    c.close().await;
    assert_update(&watcher.next_update().await, "c", "offline");

    let (_late, snapshot) = router.dashboard("late").await;
    let mut users: Vec<&str> =
        snapshot[5]["users"].as_array().unwrap().iter().map(|u| u["userId"].as_str().unwrap()).collect();
    users.sort();
    assert_eq!(users, ["a", "b".repeat(128).as_str()]);
    assert_eq!(snapshot[5]["count"].as_u64(), Some(2));
    let a = snapshot[5]["users"].as_array().unwrap().iter().find(|u| u["userId"].as_str() == Some("a")).unwrap();
    assert_eq!((a["status"].as_str(), a["deviceId"].as_str()), (Some("online"), Some("da")));
}

async fn bulk_status_has_the_documented_shape(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut dashboard, _) = router.dashboard("d").await;
    let _online = router.mobile("user123", "device-abc-123").await;
    let gone = router.mobile("user456", "device-xyz-456").await;
    dashboard.next_update().await;
    dashboard.next_update().await;
    gone.close().await;
    assert_update(&dashboard.next_update().await, "user456", "offline");

    let (status, body) = router.post_status(r#"{"userIds": ["user123", "user456", 789]}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    assert!(body["timestamp"].as_u64().is_some());
    let users = body["users"].as_array().unwrap();
    assert_eq!(users.len(), 3);
    // The four documented fields; users shown online also carry lastActivity.
    let keys = |i: usize| {
        let mut keys: Vec<&str> = users[i].as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(0), ["deviceId", "lastActivity", "lastSeen", "status", "userId"]);
    assert_eq!(keys(1), ["deviceId", "lastSeen", "status", "userId"]);
    assert_eq!(keys(2), ["deviceId", "lastSeen", "status", "userId"]);
    assert_eq!(
        (&users[0]["userId"], &users[0]["status"], &users[0]["deviceId"]),
        (&"user123".into(), &"online".into(), &"device-abc-123".into())
    );
    assert_eq!((&users[1]["status"], &users[1]["deviceId"]), (&"offline".into(), &"device-xyz-456".into()));
    assert!(users[1]["lastSeen"].as_u64().is_some());
    assert_eq!(
        (&users[2]["userId"], &users[2]["status"], &users[2]["lastSeen"]),
        (&"789".into(), &"offline".into(), &serde_json::Value::Null)
    );
}

async fn health_and_metrics_report_the_router(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut dashboard, _) = router.dashboard("d").await;
    let _m = router.mobile("m1", "p1").await;
    dashboard.next_update().await;

    let (status, health) = common::http(router.addr, "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200);
    assert_eq!((health["status"].as_str(), health["engine"].as_str()), (Some("ok"), Some(setup.engine_name())));
    assert_eq!((health["onlineUsers"].as_u64(), health["connections"].as_u64()), (Some(1), Some(2)));

    router.post_status(r#"{"userIds": ["m1"]}"#).await;
    let text = router.metrics().await;
    for expected in [
        "presence_online_users 1",
        "presence_connections{role=\"mobile\"} 1",
        "presence_transitions_total{cause=\"connect\"} 1",
        "presence_api_requests_total{route=\"/api/presence/status\",status=\"200\"} 1",
        "# TYPE presence_update_latency_seconds histogram",
    ] {
        assert!(text.contains(expected), "metrics lack `{expected}`:\n{text}");
    }
}

async fn a_batch_window_loses_no_update(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&["--update-batch-ms", "200"]).await;
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    let mut mobiles = Vec::new();
    for i in 0..20 {
        mobiles.push(router.mobile(&format!("m{i}"), "p").await);
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 20 {
        let update = dashboard.next_update().await;
        assert_eq!(update["status"].as_str(), Some("online"));
        seen.insert(update["userId"].as_str().unwrap().to_string());
    }
}

async fn dashboards_see_only_their_groups(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut everyone, _) = router.dashboard("admin").await;
    let (mut north, _) = router.dashboard_of("north-dispatch", &["north"]).await;

    let south_guard = router.mobile_in("s1", &["south"]).await;
    assert_update(&everyone.next_update().await, "s1", "online");
    let _north_guard = router.mobile_in("n1", &["north"]).await;
    assert_update(&everyone.next_update().await, "n1", "online");
    let _roamer = router.mobile_in("both", &["south", "north"]).await;
    assert_update(&everyone.next_update().await, "both", "online");

    // The north dashboard never heard of s1: its first update is n1's.
    let first = north.next_update().await;
    assert_update(&first, "n1", "online");
    assert_eq!(first["groups"].as_array().unwrap()[0].as_str(), Some("north"));
    assert_update(&north.next_update().await, "both", "online");

    // A scoped snapshot holds only the scope.
    let (_late, snapshot) = router.dashboard_of("late-north", &["north"]).await;
    let mut listed: Vec<&str> =
        snapshot[5]["users"].as_array().unwrap().iter().map(|u| u["userId"].as_str().unwrap()).collect();
    listed.sort();
    assert_eq!(listed, ["both", "n1"]);

    // Nor does it hear s1 leave.
    south_guard.close().await;
    assert_update(&everyone.next_update().await, "s1", "offline");
    let _marker = router.mobile_in("n2", &["north"]).await;
    assert_update(&north.next_update().await, "n2", "online");
}

async fn last_seen_outlives_going_offline_for_the_retention(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&["--last-seen-secs", "1"]).await;
    let bearer = format!("Bearer {}", common::token("api", presence_router::auth::Role::Service));
    let get = |path: &'static str| {
        let (addr, bearer) = (router.addr, bearer.clone());
        async move { common::http(addr, "GET", path, &[("Authorization", &bearer)], "").await }
    };
    let (mut dashboard, _) = router.dashboard("d").await;
    let mobile = router.mobile("walker", "radio-9").await;
    dashboard.next_update().await;
    let (status, body) = get("/api/users/walker/presence").await;
    assert_eq!((status, body["user"]["status"].as_str()), (200, Some("online")), "{body}");

    mobile.close().await;
    assert_update(&dashboard.next_update().await, "walker", "offline");
    let (_, body) = get("/api/users/walker/presence").await;
    let user = &body["user"];
    assert_eq!((user["status"].as_str(), user["deviceId"].as_str()), (Some("offline"), Some("radio-9")));
    assert!(user["lastSeen"].as_u64().is_some());

    // Past the retention the user is as unknown as one never seen.
    common::eventually("last seen to be dropped", || async {
        get("/api/users/walker/presence").await.1["user"]["lastSeen"].is_null()
    })
    .await;
    let (status, body) = get("/api/users/nobody/presence").await;
    assert_eq!((status, body["user"]["status"].as_str()), (200, Some("offline")));
    let (status, body) = get("/api/users/a%0Ab/presence").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_user_id")));
    let (status, _) = common::http(router.addr, "GET", "/api/users/walker/presence", &[], "").await;
    assert_eq!(status, 401);
}

async fn group_presence_lists_participants_within_the_scope(engine: Engine) {
    use presence_router::auth::{Role, mint_hs256_in};
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut dashboard, _) = router.dashboard("d").await;
    let _n1 = router.mobile_in("n1", &["north"]).await;
    let n2 = router.mobile_in("n2", &["north", "east"]).await;
    let _s1 = router.mobile_in("s1", &["south"]).await;
    for _ in 0..3 {
        dashboard.next_update().await;
    }
    n2.close().await;
    assert_update(&dashboard.next_update().await, "n2", "offline");

    let get = |path: &'static str, groups: Option<&'static [&'static str]>| {
        let addr = router.addr;
        async move {
            let token = mint_hs256_in(common::SECRET.as_bytes(), "viewer", Role::Dashboard, groups, 60).unwrap();
            common::http(addr, "GET", path, &[("Authorization", &format!("Bearer {token}"))], "").await
        }
    };
    let (status, body) = get("/api/groups/north/presence", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["groupId"].as_str(), body["onlineCount"].as_u64()), (Some("north"), Some(1)));
    let mut participants: Vec<(String, String)> = body["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["userId"].as_str().unwrap().into(), p["status"].as_str().unwrap().into()))
        .collect();
    participants.sort();
    assert_eq!(participants, [("n1".into(), "online".into()), ("n2".into(), "offline".into())]);

    let (status, body) = get("/api/groups/north/presence", Some(&["north"])).await;
    assert_eq!((status, body["onlineCount"].as_u64()), (200, Some(1)));
    let (status, body) = get("/api/groups/north/presence", Some(&["south"])).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden_group")));
    let (status, body) = get("/api/groups/nobody-here/presence", None).await;
    assert_eq!((status, body["participants"].as_array().map(Vec::len)), (200, Some(0)));
}
