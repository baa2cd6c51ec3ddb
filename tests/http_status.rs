//! Presence set over HTTP: a user sets its own status and text, a `service` token any
//! user's within its scope, other tokens only their own; a user without a live session
//! gets 409 `not_online`; typing announced over HTTP reaches the group's members and
//! dashboards on every router and ends after the indicator lifetime. Real routers and
//! real redis-server.

mod common;

use common::{Engine, SECRET, Setup, http, token};
use presence_router::auth::{Role, mint_hs256_in};

on_both_engines!(
    a_user_sets_its_own_status_over_http,
    a_service_token_sets_users_in_its_scope_and_no_other_token_does,
    typing_over_http_reaches_members_and_dashboards_on_every_router,
);

async fn post(addr: std::net::SocketAddr, path: &str, token: &str, body: &str) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {token}");
    http(addr, "POST", path, &[("Authorization", &auth), ("Content-Type", "application/json")], body).await
}

fn mobile_token(user: &str, groups: &[&str]) -> String {
    mint_hs256_in(SECRET.as_bytes(), user, Role::Mobile, Some(groups), 3600).unwrap()
}

async fn a_user_sets_its_own_status_over_http(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let me = mobile_token("u1", &["g1"]);
    let own = "/api/presence/me/status";

    let (status, body) = post(router.addr, own, &me, r#"{"status": "dnd", "text": "driving"}"#).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("not_online")), "{body}");
    assert_eq!(router.user("u1").await["status"], "offline", "nothing was set");

    let _phone = router.mobile_in("u1", &["g1"]).await;
    let (mut dashboard, _) = router.dashboard("ops").await;
    let (status, body) = post(router.addr, own, &me, r#"{"status": "dnd", "text": "driving"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["user"]["status"].as_str(), body["user"]["statusText"].as_str()), (Some("dnd"), Some("driving")));
    let update = dashboard.next_update().await;
    assert_eq!((update["status"].as_str(), update["statusText"].as_str()), (Some("dnd"), Some("driving")), "{update}");
    assert_eq!(update["cause"].as_str(), Some("status"));

    // Cleared text, back online.
    let (status, body) = post(router.addr, own, &me, r#"{"status": "online", "text": null}"#).await;
    assert_eq!(status, 200, "{body}");
    let update = dashboard.next_update().await;
    assert_eq!(update["status"].as_str(), Some("online"), "{update}");
    assert!(update["statusText"].is_nil(), "{update}");

    for bad in [
        r#"{"status": "sleeping"}"#.to_string(),
        format!(r#"{{"status": "away", "text": "{}"}}"#, "x".repeat(129)),
        r#"{"status": "away", "text": "a\nb"}"#.to_string(),
        r#"{"status": "away", "mood": "fine"}"#.to_string(),
        "[]".to_string(),
    ] {
        let (status, body) = post(router.addr, own, &me, &bad).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_request")), "{bad}: {body}");
    }
}

async fn a_service_token_sets_users_in_its_scope_and_no_other_token_does(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let _phone = router.mobile_in("u1", &["g1"]).await;
    let path = "/api/users/u1/status";
    let away = r#"{"status": "away"}"#;

    let (status, body) = post(router.addr, path, &mobile_token("u2", &["g1"]), away).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden_role")), "{body}");
    let dashboard = token("ops", Role::Dashboard);
    let (status, body) = post(router.addr, path, &dashboard, away).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden_role")), "{body}");

    // Out of its scope, u1 reads like a user never seen: not online.
    let elsewhere = mint_hs256_in(SECRET.as_bytes(), "backend", Role::Service, Some(&["g2"]), 3600).unwrap();
    let (status, body) = post(router.addr, path, &elsewhere, away).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("not_online")), "{body}");
    assert_eq!(router.user("u1").await["status"], "online");

    let within = mint_hs256_in(SECRET.as_bytes(), "backend", Role::Service, Some(&["g1"]), 3600).unwrap();
    let (status, body) = post(router.addr, path, &within, away).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["status"], "away");
    assert_eq!(router.user("u1").await["status"], "away");

    // A user may name itself on this route too.
    let (status, body) = post(router.addr, path, &mobile_token("u1", &["g1"]), r#"{"status": "online"}"#).await;
    assert_eq!((status, body["user"]["status"].as_str()), (200, Some("online")), "{body}");

    let (status, body) = post(router.addr, "/api/users/nobody/status", &token("backend", Role::Service), away).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("not_online")), "{body}");
}

async fn typing_over_http_reaches_members_and_dashboards_on_every_router(engine: Engine) {
    let setup = Setup::new(engine).await;
    let first = setup.router(&["--typing-ttl-ms", "500"]).await;
    let second = match engine {
        Engine::Memory => None,
        _ => Some(setup.router(&["--typing-ttl-ms", "500"]).await),
    };
    let second = second.as_ref().unwrap_or(&first);
    let _typist = first.mobile_in("u1", &["g1"]).await;
    let mut member = second.mobile_in("u2", &["g1"]).await;
    let (mut dashboard, _) = second.dashboard("ops").await;
    let typist = mobile_token("u1", &["g1"]);

    let (status, body) = post(first.addr, "/api/presence/typing", &typist, r#"{"channel_id": "g1"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["groupId"].as_str(), body["expiresInMs"].as_u64()), (Some("g1"), Some(500)));
    member.expect_indicator("u1", "typing", true).await;
    let start = dashboard.expect(38).await[5].clone();
    assert_eq!((start["userId"].as_str(), start["isActive"].as_bool()), (Some("u1"), Some(true)), "{start}");
    // It ends after the lifetime, announced by the router that started it.
    member.expect_indicator("u1", "typing", false).await;

    // Ended on request before its lifetime.
    let (status, _) = post(first.addr, "/api/presence/typing", &typist, r#"{"groupId": "g1"}"#).await;
    assert_eq!(status, 200);
    member.expect_indicator("u1", "typing", true).await;
    let (status, _) =
        post(first.addr, "/api/presence/typing", &typist, r#"{"groupId": "g1", "isActive": false}"#).await;
    assert_eq!(status, 200);
    member.expect_indicator("u1", "typing", false).await;

    let (status, body) = post(first.addr, "/api/presence/typing", &typist, r#"{"groupId": "g9"}"#).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("not_a_member")), "{body}");
    let absent = mobile_token("u3", &["g1"]);
    let (status, body) = post(first.addr, "/api/presence/typing", &absent, r#"{"groupId": "g1"}"#).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("not_online")), "{body}");
}
