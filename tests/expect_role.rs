//! `expect_role` on the WebSocket handshake: a connection that names the roles it is for
//! refuses a token of any other role with 403 `unexpected_role`, before any presence is
//! written (a phone's token pasted into a dashboard page marks nobody online), and a name
//! that is not a role with 400 `invalid_expect_role`. The answers are the spec's.

mod common;

use common::{
    Router,
    openapi::{Reply, SPEC, exchange, request},
    token,
};
use presence_router::auth::Role;

/// A WebSocket upgrade of `path` with `token` in the `token` header, checked against the spec.
async fn upgrade(router: &Router, path: &str, token: &str) -> Reply {
    let headers = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("token", token),
        ("device_id", "phone-1"),
    ];
    let reply = exchange(router.addr, &request("GET", path, &headers, "")).await;
    SPEC.check("GET", path.split('?').next().unwrap(), &reply);
    reply
}

#[tokio::test]
async fn a_connection_for_watchers_refuses_a_mobile_token_before_any_presence_is_written() {
    let router = Router::start(&[]).await;
    let phone = token("phone", Role::Mobile);
    for path in ["/?expect_role=dashboard,web,service", "/ws?expect_role=dashboard&expect_role=web"] {
        let reply = upgrade(&router, path, &phone).await;
        assert_eq!((reply.status, reply.code().as_str()), (403, "unexpected_role"), "{reply}");
        assert!(reply.json()["error"]["message"].as_str().unwrap().contains("mobile"), "{reply}");
    }
    let user = router.user("phone").await;
    assert_eq!((user["status"].as_str(), user["lastSeen"].as_u64()), (Some("offline"), None), "{user}");
    let metrics = router.metrics().await;
    assert!(metrics.contains("presence_connections{role=\"mobile\"} 0"), "{metrics}");
    assert!(metrics.contains("presence_handshake_rejections_total{reason=\"unexpected_role\"} 2"), "{metrics}");

    // The roles it names pass; without the parameter every role does.
    for role in [Role::Dashboard, Role::Web, Role::Service] {
        let reply = upgrade(&router, "/?expect_role=dashboard,web,service", &token("watcher", role)).await;
        assert_eq!(reply.status, 101, "{role:?}: {reply}");
    }
    assert_eq!(upgrade(&router, "/", &phone).await.status, 101);
}

#[tokio::test]
async fn a_name_that_is_not_a_role_is_refused_rather_than_admitting_every_role() {
    let router = Router::start(&[]).await;
    let reply = upgrade(&router, "/?expect_role=dashbaord", &token("watcher", Role::Dashboard)).await;
    assert_eq!((reply.status, reply.code().as_str()), (400, "invalid_expect_role"), "{reply}");
}
