//! A status carries an optional activity (`{type, name, startedAt}`): set with the
//! WebSocket STATUS frame or over HTTP, shown in PRESENCE_UPDATE, PRESENCE_SNAPSHOT, the
//! HTTP reads and the event stream (live and read back from the change log), its start
//! kept while type and name stay, and restored after Redis loses its data. Real routers
//! and real redis-server.

mod common;

use common::{Client, Engine, RedisServer, SECRET, Setup, http, map, sse::Sse, token};
use presence_router::auth::{Role, mint_hs256_in};
use rmpv::Value;

on_both_engines!(
    an_activity_travels_from_a_status_frame_to_dashboards_the_api_and_event_streams,
    bad_activities_are_refused
);

/// STATUS (35) with `activity` (omitted when `None`), and its ACK.
async fn set_status(client: &mut Client, user: &str, status: &str, activity: Option<Value>) {
    let mut pairs = vec![("status", Value::from(status))];
    if let Some(activity) = activity {
        pairs.push(("activity", activity));
    }
    client.send_frame(0, 35, user, "", map(&pairs)).await;
    client.expect(39).await;
}

fn driving() -> Value {
    map(&[("type", "driving".into()), ("name", "Route 9".into())])
}

async fn an_activity_travels_from_a_status_frame_to_dashboards_the_api_and_event_streams(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let backend = token("backend", Role::Service);
    let mut sse = Sse::open(router.addr, "/api/presence/events", &backend, None).await.open();
    let start = sse.next_named("ready").await.id.unwrap();
    let mut phone = router.mobile_in("u1", &["g1"]).await;
    sse.next_named("presence").await;
    let (mut dashboard, _) = router.dashboard("ops").await;

    set_status(&mut phone, "u1", "dnd", Some(driving())).await;
    let update = dashboard.next_update().await;
    let activity = &update["activity"];
    assert_eq!((activity["type"].as_str(), activity["name"].as_str()), (Some("driving"), Some("Route 9")), "{update}");
    let started = activity["startedAt"].as_u64().expect("startedAt in ms");
    assert_eq!(update["cause"].as_str(), Some("status"));

    let api = router.user("u1").await;
    assert_eq!(api["activity"], serde_json::json!({"type": "driving", "name": "Route 9", "startedAt": started}));
    let event = sse.next_named("presence").await;
    assert_eq!(event.data["activity"], api["activity"], "{event:?}");
    let (_, snapshot) = router.dashboard("late").await;
    let listed = &snapshot[5]["users"][0];
    assert_eq!(listed["activity"]["startedAt"].as_u64(), Some(started), "{snapshot}");

    // A status frame that does not name the activity keeps it, start and all.
    set_status(&mut phone, "u1", "away", None).await;
    let update = dashboard.next_update().await;
    assert_eq!(update["activity"]["startedAt"].as_u64(), Some(started), "{update}");

    // Set over HTTP: a new activity starts anew.
    let auth = format!("Bearer {}", mint_hs256_in(SECRET.as_bytes(), "u1", Role::Mobile, Some(&["g1"]), 3600).unwrap());
    let body = r#"{"status": "dnd", "activity": {"type": "on_call", "name": "dispatch"}}"#;
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let (status, answer) = http(router.addr, "POST", "/api/presence/me/status", &headers, body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["user"]["activity"]["type"], "on_call");
    assert!(answer["user"]["activity"]["startedAt"].as_u64().unwrap() >= started);
    let update = dashboard.next_update().await;
    assert_eq!(update["activity"]["type"].as_str(), Some("on_call"), "{update}");

    // nil clears it.
    set_status(&mut phone, "u1", "online", Some(Value::Nil)).await;
    let update = dashboard.next_update().await;
    assert!(update["activity"].is_nil(), "{update}");
    assert!(router.user("u1").await.get("activity").is_none());

    // Read back from the change log, each transition has the activity it had.
    let mut resumed = Sse::open(router.addr, "/api/presence/events", &backend, Some(&start)).await.open();
    let mut kinds = Vec::new();
    loop {
        let event = resumed.event().await;
        if event.name == "ready" {
            break;
        }
        kinds.push(event.data["activity"]["type"].as_str().unwrap_or("-").to_string());
    }
    assert_eq!(kinds, ["-", "driving", "driving", "on_call", "-"]);
}

async fn bad_activities_are_refused(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut phone = router.mobile_in("u1", &["g1"]).await;
    let bad = map(&[("status", "dnd".into()), ("activity", map(&[("type", "Driving!".into())]))]);
    phone.send_frame(0, 35, "u1", "", bad).await;
    let error = phone.next_error().await;
    assert_eq!(error["code"].as_str(), Some("invalid_payload"), "{error}");

    let auth = format!("Bearer {}", mint_hs256_in(SECRET.as_bytes(), "u1", Role::Mobile, Some(&["g1"]), 3600).unwrap());
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    for body in [
        r#"{"status": "dnd", "activity": {"type": ""}}"#.to_string(),
        format!(r#"{{"status": "dnd", "activity": {{"type": "driving", "name": "{}"}}}}"#, "n".repeat(129)),
        r#"{"status": "dnd", "activity": {"type": "driving", "extra": 1}}"#.to_string(),
        r#"{"status": "dnd", "activity": "driving"}"#.to_string(),
    ] {
        let (status, answer) = http(router.addr, "POST", "/api/presence/me/status", &headers, &body).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_request")), "{body}: {answer}");
    }
    assert!(router.user("u1").await.get("activity").is_none(), "nothing was set");
}

#[tokio::test]
async fn an_activity_survives_a_reconnect_then_redis_losing_everything() {
    let mut setup = Setup::new(Engine::Redis).await;
    let router = setup.router(&["--recovery-grace-ms", "200"]).await;
    let mut first = router.mobile_in("driver", &["crew"]).await;
    set_status(&mut first, "driver", "dnd", Some(driving())).await;
    let started = router.user("driver").await["activity"]["startedAt"].as_u64().unwrap();
    first.close().await;
    let _second = router.mobile_in("driver", &["crew"]).await;
    let redis: &mut RedisServer = setup.redis.as_mut().unwrap();
    redis.kill().await;
    redis.spawn().await;
    common::eventually("the activity back after the empty restart", || async {
        let (status, body) = router.get("/api/users/driver/presence").await;
        status == 200
            && body["user"]["status"].as_str() == Some("dnd")
            && body["user"]["activity"]["type"].as_str() == Some("driving")
            && body["user"]["activity"]["startedAt"].as_u64().is_some_and(|at| at.abs_diff(started) < 60_000)
    })
    .await;
}
