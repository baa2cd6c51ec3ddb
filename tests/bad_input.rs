//! Every bad input gets a clear error (HTTP 4xx JSON, ERROR frame or close code), a
//! metric, and leaves the router serving.

mod common;

use common::{Client, Router, SECRET, http, prometheus::metric, token};
use presence_router::auth::Role;
use rmpv::Value;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, http::HeaderName};

/// Attempts a handshake with the given headers; returns the HTTP status and JSON body.
async fn handshake(router: &Router, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let mut request = format!("ws://{}/", router.addr).into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().map(|b| serde_json::from_slice(b).unwrap()).unwrap_or_default();
            (response.status().as_u16(), body)
        }
        other => panic!("handshake should be refused, got {:?}", other.map(|(_, r)| r.status())),
    }
}

#[tokio::test]
async fn handshakes_without_a_valid_token_get_401_json() {
    let router = Router::start(&[]).await;
    let (status, body) = handshake(&router, &[]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("missing_token")));

    let (status, body) = handshake(&router, &[("token", "garbage")]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_token")));

    let forged = presence_router::auth::mint_hs256(b"another-secret", "u", Role::Mobile, 60).unwrap();
    let (status, body) = handshake(&router, &[("token", &forged)]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_token")));

    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "u", "role": "mobile", "exp": 1_000}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (status, body) = handshake(&router, &[("token", &expired)]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("token_expired")));

    let good = token("u", Role::Mobile);
    let (status, body) = handshake(&router, &[("token", &good), ("device_id", &"d".repeat(200))]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_device_id")));

    let text = router.metrics().await;
    assert!(text.contains("presence_handshake_rejections_total{reason=\"token_expired\"} 1"), "{text}");
}

#[tokio::test]
async fn browsers_authenticate_with_the_subprotocol_pair() {
    let router = Router::start(&[]).await;
    let (mut dashboard, _) = router.dashboard("d").await;
    let mut request = format!("ws://{}/", router.addr).into_client_request().unwrap();
    let offered = format!("{}, browser-device", token("web-user", Role::Mobile));
    request.headers_mut().insert("sec-websocket-protocol", offered.parse().unwrap());
    let (_ws, response) = tokio_tungstenite::connect_async(request).await.expect("subprotocol auth accepted");
    assert_eq!(response.headers()["sec-websocket-protocol"], "browser-device", "one offered protocol is echoed");
    let online = dashboard.next_update().await;
    assert_eq!(online["deviceId"].as_str(), Some("browser-device"));
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_connection_stays() {
    let router = Router::start(&[]).await;
    let mut mobile = router.mobile("m", "p").await;

    mobile.send(vec![0x95, 0x00]).await; // truncated msgpack
    let error = mobile.next_error().await;
    assert_eq!(error["code"].as_str(), Some("invalid_frame"));
    assert!(error["message"].as_str().unwrap().contains("msgpack"), "{error}");

    mobile.send(vec![0x93, 0, 30, 1]).await; // three elements
    assert_eq!(mobile.next_error().await["code"].as_str(), Some("invalid_frame"));

    mobile.send_text("hello").await;
    assert_eq!(mobile.next_error().await["code"].as_str(), Some("text_not_supported"));

    // Heartbeat claiming another user.
    mobile.heartbeat("someone-else").await;
    let error = mobile.next_error().await;
    assert_eq!((error["code"].as_str(), error["messageType"].as_u64()), (Some("sender_mismatch"), Some(30)));

    // A type this router does not route, with a message id that is echoed.
    mobile.send_value(Value::Array(vec![0.into(), 99.into(), "m".into(), 0.into(), "id-7".into(), Value::Nil])).await;
    let frame = mobile.next_frame().await;
    assert_eq!((frame[1].as_u64(), frame[4].as_str()), (Some(33), Some("id-7")));
    assert_eq!(frame[5]["code"].as_str(), Some("unsupported_type"));

    // Still serving: a valid heartbeat is acknowledged, and presence is intact.
    mobile.sync("m").await;
    let (status, body) = router.post_status(r#"{"userIds": ["m"]}"#).await;
    assert_eq!((status, body["users"][0]["status"].as_str()), (200, Some("online")));
    let text = router.metrics().await;
    for reason in ["malformed", "shape", "text", "sender_mismatch", "unsupported_type"] {
        let counted = metric(&text, &format!("presence_frame_errors_total{{reason=\"{reason}\"}}"));
        assert!(counted.is_some_and(|n| n > 0), "{reason}: {text}");
    }
}

#[tokio::test]
async fn dashboards_may_not_heartbeat() {
    let router = Router::start(&[]).await;
    let (mut dashboard, _) = router.dashboard("d").await;
    dashboard.heartbeat("d").await;
    assert_eq!(dashboard.next_error().await["code"].as_str(), Some("heartbeat_not_allowed"));
    let (_, body) = router.post_status(r#"{"userIds": ["d"]}"#).await;
    assert_eq!(body["users"][0]["status"].as_str(), Some("offline"), "dashboards never appear online");
}

#[tokio::test]
async fn connections_past_the_cap_get_503_json() {
    let router = Router::start(&["--max-connections", "2"]).await;
    let mut first = router.mobile("a", "pa").await;
    let _second = router.mobile("b", "pb").await;
    let (status, body) = handshake(&router, &[("token", &token("c", Role::Mobile))]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("too_many_connections")));
    // A closed connection frees its place (once its task has finished).
    first.sync("a").await;
    first.close().await;
    let mut request = format!("ws://{}/", router.addr).into_client_request().unwrap();
    request.headers_mut().insert("token", token("c", Role::Mobile).parse().unwrap());
    let deadline = tokio::time::Instant::now() + common::WAIT;
    let (ws, _) = loop {
        match tokio_tungstenite::connect_async(request.clone()).await {
            Ok(connected) => break connected,
            Err(tungstenite::Error::Http(r)) if r.status() == 503 && tokio::time::Instant::now() < deadline => {
                tokio::task::yield_now().await
            }
            Err(e) => panic!("the freed place was not reusable: {e}"),
        }
    };
    Client { ws }.sync("c").await;
    assert!(router.metrics().await.contains("presence_handshake_rejections_total{reason=\"too_many_connections\"} 1"));
}

#[tokio::test]
async fn oversized_frames_close_with_1009() {
    let router = Router::start(&["--max-frame-bytes", "1024"]).await;
    let mut mobile = router.mobile("m", "p").await;
    mobile.send(vec![0u8; 4096]).await;
    assert_eq!(mobile.close_code().await, Some(1009));
}

#[tokio::test]
async fn floods_are_dropped_then_closed_with_4029() {
    let router = Router::start(&["--frame-rate", "1", "--frame-burst", "5"]).await;
    let mut mobile = router.mobile("m", "p").await;
    for _ in 0..50 {
        if !mobile.try_send(presence_router::protocol::heartbeat_frame("m")).await {
            break;
        }
    }
    assert_eq!(mobile.close_code().await, Some(4029));
    let text = router.metrics().await;
    let counted = metric(&text, "presence_frame_errors_total{reason=\"rate_limited\"}");
    assert!(counted.is_some_and(|n| n > 0), "{text}");
}

#[tokio::test]
async fn a_dashboard_that_stops_reading_is_closed_as_slow_consumer() {
    let router = Router::start(&["--dashboard-queue", "8", "--tcp-send-buffer", "8192"]).await;
    // Enough online users, with long ids, that the snapshot alone overfills the socket
    // buffers (8 KiB send, 4 KiB receive) of a dashboard that does not read.
    let long = |i: usize| format!("{i:0>120}");
    let (mut watcher, _) = router.dashboard("watcher").await;
    let mut mobiles = Vec::new();
    for i in 0..300 {
        mobiles.push(Client::connect(router.addr, &token(&long(i), Role::Mobile), Some(&long(i))).await);
        // A healthy dashboard keeps up; with a ring of 8 it would be dropped otherwise.
        watcher.next_update().await;
    }
    let mut slow = Client::connect_small_buffer(router.addr, &token("slow", Role::Dashboard)).await;
    // While the slow dashboard's snapshot write is stuck, more changes than its ring holds.
    for mobile in mobiles.drain(..20) {
        mobile.close().await;
        watcher.next_update().await;
    }
    assert_eq!(slow.close_code().await, Some(4008));
    // Everyone else is unaffected.
    mobiles.pop().unwrap().close().await;
    assert_eq!(watcher.next_update().await["status"].as_str(), Some("offline"));
    let text = router.metrics().await;
    assert!(text.contains("presence_disconnects_total{reason=\"slow consumer\"} 1"), "{text}");
}

#[tokio::test]
async fn a_dashboard_catching_up_receives_every_update() {
    // A dashboard whose socket is full while 500 changes happen: they queue in the ring and
    // reach it in batches once it reads again. None may be lost between batches.
    // The stalled dashboard's pending write must not time out (4008) while 500 mobiles
    // connect one by one, which takes more than the default 10 s on a loaded machine.
    let router =
        Router::start(&["--dashboard-queue", "5000", "--tcp-send-buffer", "8192", "--write-timeout-ms", "600000"])
            .await;
    let mut stalled = Client::connect_small_buffer(router.addr, &token("stalled", Role::Dashboard)).await;
    let (mut watcher, _) = router.dashboard("watcher").await;
    let padded = |i: usize| format!("{i:0>120}"); // long ids fill the stalled socket sooner
    let mut mobiles = Vec::new();
    for i in 0..500 {
        mobiles.push(Client::connect(router.addr, &token(&padded(i), Role::Mobile), Some("d")).await);
        watcher.next_update().await;
    }
    let mut seen = std::collections::HashSet::new();
    let snapshot = stalled.next_frame().await;
    assert_eq!(snapshot[1].as_u64(), Some(32));
    while seen.len() < 500 {
        let update = stalled.next_update().await;
        assert!(seen.insert(update["userId"].as_str().unwrap().to_string()), "each update once");
    }
}

#[tokio::test]
async fn bulk_api_rejects_bad_requests_with_json_errors() {
    let router = Router::start(&[]).await;
    let bearer = format!("Bearer {}", token("api", Role::Mobile));
    let json = ("Content-Type", "application/json");
    let post = |headers: Vec<(&'static str, String)>, body: String| {
        let addr = router.addr;
        async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            http(addr, "POST", "/api/presence/status", &headers, &body).await
        }
    };
    let auth = || vec![("Authorization", bearer.clone()), (json.0, json.1.to_string())];

    type Case = (Vec<(&'static str, String)>, String, u16, &'static str);
    let cases: Vec<Case> = vec![
        (vec![(json.0, json.1.into())], r#"{"userIds":["a"]}"#.into(), 401, "missing_token"),
        (
            vec![("Authorization", "Bearer nope".into()), (json.0, json.1.into())],
            r#"{"userIds":["a"]}"#.into(),
            401,
            "invalid_token",
        ),
        (
            vec![("Authorization", bearer.clone()), ("Content-Type", "text/plain".into())],
            r#"{"userIds":["a"]}"#.into(),
            415,
            "unsupported_media_type",
        ),
        (auth(), "not json".into(), 400, "invalid_request"),
        (auth(), r#"{"ids":["a"]}"#.into(), 400, "invalid_request"),
        (auth(), r#"{"userIds":"a"}"#.into(), 400, "invalid_request"),
        (auth(), r#"{"userIds":[true]}"#.into(), 400, "invalid_request"),
        (auth(), r#"{"userIds":[1.5]}"#.into(), 400, "invalid_request"),
        (auth(), format!(r#"{{"userIds":["{}"]}}"#, "x".repeat(129)), 400, "invalid_request"),
        (auth(), r#"{"userIds":[]}"#.into(), 400, "invalid_user_ids"),
        (auth(), serde_json::json!({"userIds": (1..=101).collect::<Vec<_>>()}).to_string(), 400, "invalid_user_ids"),
        (auth(), format!(r#"{{"userIds":["a"],"pad":"{}"}}"#, "x".repeat(70_000)), 413, "invalid_body"),
    ];
    for (headers, body, status, code) in cases {
        let shown = body.chars().take(60).collect::<String>();
        let (got, json) = post(headers, body).await;
        assert_eq!(got, status, "{shown}: {json}");
        assert_eq!(json["success"], false, "{shown}");
        assert_eq!(json["error"]["code"].as_str(), Some(code), "{shown}: {json}");
        assert!(json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, ok) = post(auth(), serde_json::json!({"userIds": (1..=100).collect::<Vec<_>>()}).to_string()).await;
    assert_eq!((status, ok["users"].as_array().map(Vec::len)), (200, Some(100)));

    let (status, json) = http(router.addr, "GET", "/nope", &[], "").await;
    assert_eq!((status, json["error"]["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn presence_disabled_answers_503_and_ignores_heartbeats() {
    let router = Router::start(&["--presence-enabled", "false"]).await;
    let (mut dashboard, _) = router.dashboard("d").await;
    let mut mobile = router.mobile("m", "p").await;
    mobile.heartbeat("m").await;
    let (status, body) = router.post_status(r#"{"userIds": ["m"]}"#).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("presence_disabled")));
    // No update was produced: the first frame the dashboard gets is the error for its heartbeat.
    dashboard.heartbeat("d").await;
    assert_eq!(dashboard.next_error().await["code"].as_str(), Some("heartbeat_not_allowed"));
}

#[tokio::test]
async fn a_ptt_listener_that_stops_reading_is_closed_as_slow_consumer() {
    use presence_router::auth::mint_hs256_in;
    let router = Router::start(&[
        "--tcp-send-buffer",
        "8192",
        "--write-timeout-ms",
        "60000",
        "--frame-rate",
        "100000",
        "--frame-burst",
        "100000",
        "--byte-rate",
        "100000000",
    ])
    .await;
    let mut talker = router.mobile_in("talker", &["crew"]).await;
    let mut healthy = router.mobile_in("healthy", &["crew"]).await;
    let token = mint_hs256_in(SECRET.as_bytes(), "stalled", Role::Mobile, Some(&["crew"]), 3600).unwrap();
    let mut stalled = Client::connect_small_buffer(router.addr, &token).await;
    stalled.sync("stalled").await;

    talker.send_frame(0, 1, "talker", "crew", common::map(&[])).await;
    talker.expect(6).await;
    healthy.expect(1).await;
    healthy.expect(38).await;
    // Far more audio than the stalled socket's buffers and its 512-frame mailbox hold.
    let audio = Value::Binary(vec![7; 8000]);
    for _ in 0..700 {
        talker.send_frame(0, 3, "talker", "crew", audio.clone()).await;
        assert_eq!(healthy.expect(3).await[4], audio, "the healthy listener keeps up, unaffected");
    }
    assert_eq!(stalled.close_code().await, Some(4008));
    let text = router.metrics().await;
    assert!(text.contains("presence_relay_overflows_total 1"), "{text}");
}
