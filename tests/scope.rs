//! One scope rule on every path: a token reads only users who share one of its groups
//! (everyone for an unscoped dashboard or service, itself for any other role without
//! groups); a user outside reads exactly like an unknown id; other groups' names are never
//! shown; and a user leaving a dashboard's scope goes offline there instead of staying a
//! ghost. On both engines.

mod common;

use common::{Engine, Router, SECRET, Setup, assert_update, http};
use presence_router::auth::{Role, mint_hs256_in};
use serde_json::Value;

fn bearer(user: &str, role: Role, groups: Option<&[&str]>) -> String {
    format!("Bearer {}", mint_hs256_in(SECRET.as_bytes(), user, role, groups, 3600).unwrap())
}

/// `POST /api/presence/status` for `ids` as this token: the users by id.
async fn bulk(router: &Router, auth: &str, ids: &[&str]) -> serde_json::Map<String, Value> {
    let body = serde_json::json!({ "userIds": ids }).to_string();
    let headers = [("Authorization", auth), ("Content-Type", "application/json")];
    let (status, body) = http(router.addr, "POST", "/api/presence/status", &headers, &body).await;
    assert_eq!(status, 200, "{body}");
    body["users"].as_array().unwrap().iter().map(|u| (u["userId"].as_str().unwrap().to_string(), u.clone())).collect()
}

async fn get(router: &Router, auth: &str, path: &str) -> (u16, Value) {
    http(router.addr, "GET", path, &[("Authorization", auth)], "").await
}

/// The `groups` of a frame's user, as text.
fn groups(user: &rmpv::Value) -> Vec<&str> {
    user["groups"].as_array().map(|g| g.iter().filter_map(|g| g.as_str()).collect()).unwrap_or_default()
}

/// What a never-seen user reads like, for `user`.
fn unknown(user: &str) -> Value {
    serde_json::json!({"userId": user, "status": "offline", "lastSeen": null, "deviceId": null})
}

async fn the_api_reads_only_within_the_tokens_scope(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut a = router.mobile_in("a", &["g1"]).await;
    a.set_status("a", "dnd", Some("driving")).await;
    let _b = router.mobile_in("b", &["g2"]).await;
    let _c = router.mobile_in("c", &["g1", "g2"]).await;
    let loner_token = mint_hs256_in(SECRET.as_bytes(), "loner", Role::Mobile, None, 3600).unwrap();
    let mut loner = common::Client::connect(router.addr, &loner_token, Some("d")).await;
    loner.sync("loner").await;
    let everyone = ["a", "b", "c", "loner", "nobody"];

    // (token, the users it reads, the groups it may list)
    // Tokens with many groups take another path through the Redis engine's scope check.
    let many: &[&str] = &["g1", "f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8", "f9"];
    let cases: [(String, &[&str], &[&str]); 8] = [
        (bearer("svc", Role::Service, None), &["a", "b", "c", "loner"], &["g1", "g2"]),
        (bearer("dash", Role::Dashboard, None), &["a", "b", "c", "loner"], &["g1", "g2"]),
        (bearer("dash", Role::Dashboard, Some(&["g1"])), &["a", "c"], &["g1"]),
        (bearer("m", Role::Mobile, Some(&["g2"])), &["b", "c"], &["g2"]),
        (bearer("loner", Role::Mobile, None), &["loner"], &[]),
        (bearer("web", Role::Web, None), &[], &[]),
        (bearer("web", Role::Web, Some(&["g1", "g2"])), &["a", "b", "c"], &["g1", "g2"]),
        (bearer("dash", Role::Dashboard, Some(many)), &["a", "c"], &["g1"]),
    ];
    for (auth, reads, groups) in &cases {
        let users = bulk(&router, auth, &everyone).await;
        for user in everyone {
            let read = &users[user];
            if reads.contains(&user) {
                assert_ne!(read["lastSeen"], Value::Null, "{user} is readable: {read}");
            } else {
                // No existence oracle: the same fields and values as for a never-seen id.
                assert_eq!(read, &unknown(user), "{user} reads as unknown");
            }
            let (status, one) = get(&router, auth, &format!("/api/users/{user}/presence")).await;
            assert_eq!((status, &one["user"]), (200, read), "the user endpoint agrees for {user}");
        }
        for group in ["g1", "g2"] {
            let (status, body) = get(&router, auth, &format!("/api/groups/{group}/presence")).await;
            if groups.contains(&group) {
                assert_eq!(status, 200, "{body}");
            } else {
                assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden_group")), "{group}");
            }
        }
    }
    // Within the scope, the status text and device are there.
    let users = bulk(&router, &bearer("dash", Role::Dashboard, Some(&["g1"])), &["a"]).await;
    assert_eq!((users["a"]["status"].as_str(), users["a"]["statusText"].as_str()), (Some("dnd"), Some("driving")));
    assert_eq!(users["a"]["deviceId"].as_str(), Some("device"));
}

async fn a_scoped_dashboard_sees_no_other_groups_names(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let _early = router.mobile_in("early", &["g1", "secret-ops"]).await;
    let (mut g1, snapshot) = router.dashboard_of("d1", &["g1"]).await;
    let users = snapshot[5]["users"].as_array().unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(groups(&users[0]), ["g1"], "snapshot: {snapshot}");
    let (mut all, _) = router.dashboard("all").await;

    let _late = router.mobile_in("late", &["secret-ops", "g1"]).await;
    let update = g1.next_update().await;
    assert_update(&update, "late", "online");
    assert_eq!(groups(&update), ["g1"], "update: {update}");
    let update = all.next_update().await;
    assert_eq!(groups(&update), ["secret-ops", "g1"], "unscoped: {update}");
}

/// A user whose groups change (its only session in g1 closes while one in g2 lives) leaves
/// the scope of a dashboard that saw it: it goes offline there rather than staying a ghost.
async fn a_user_leaving_a_dashboards_scope_goes_offline_there(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut g1, _) = router.dashboard_of("d1", &["g1"]).await;
    let (mut g2, _) = router.dashboard_of("d2", &["g2"]).await;
    let (mut all, _) = router.dashboard("all").await;
    let connect = |groups: &'static [&'static str], device: &'static str| {
        let addr = router.addr;
        async move {
            let token = mint_hs256_in(SECRET.as_bytes(), "mover", Role::Mobile, Some(groups), 3600).unwrap();
            let mut client = common::Client::connect(addr, &token, Some(device)).await;
            client.sync("mover").await;
            client
        }
    };
    let first = connect(&["g1"], "phone").await;
    assert_update(&g1.next_update().await, "mover", "online");
    assert_update(&all.next_update().await, "mover", "online");
    let _second = connect(&["g2"], "tablet").await;
    let joined = g1.next_update().await;
    assert_update(&joined, "mover", "online");
    assert_eq!((joined["cause"].as_str(), groups(&joined)), (Some("groups"), vec!["g1"]));
    assert_update(&g2.next_update().await, "mover", "online");
    assert_eq!(groups(&all.next_update().await), ["g1", "g2"]);

    first.close().await;
    let left = g1.next_update().await;
    assert_update(&left, "mover", "offline");
    assert_eq!((left["deviceId"].as_str(), groups(&left)), (None, vec!["g1"]));
    assert_update(&g2.next_update().await, "mover", "online");
    let moved = all.next_update().await;
    assert_update(&moved, "mover", "online");
    assert_eq!(groups(&moved), ["g2"]);
}

/// A participant who has since moved to other groups reads like an unknown id in its old
/// group's listing: its presence (status, text, device) now belongs to the new groups.
async fn a_group_listing_forgets_a_member_who_left(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let first = router.mobile_in("x", &["a"]).await;
    first.close().await;
    let mut moved = router.mobile_in("x", &["b"]).await;
    moved.set_status("x", "dnd", Some("meeting with tenant-B")).await;
    let (status, body) = get(&router, &bearer("m", Role::Mobile, Some(&["a"])), "/api/groups/a/presence").await;
    assert_eq!(status, 200, "{body}");
    let x = body["participants"].as_array().unwrap().iter().find(|p| p["userId"] == "x").cloned();
    assert_eq!(x, Some(unknown("x")), "{body}");
    assert_eq!((body["dndCount"].as_u64(), body["onlineCount"].as_u64()), (Some(0), Some(0)));
    // The bulk and user reads of a token of the old group agree, however many groups it has.
    for groups in [&["a"][..], &["a", "f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8", "f9"]] {
        let auth = bearer("m", Role::Mobile, Some(groups));
        assert_eq!(bulk(&router, &auth, &["x"]).await["x"], unknown("x"));
        assert_eq!(get(&router, &auth, "/api/users/x/presence").await.1["user"], unknown("x"));
    }
    // Group b's listing has it, as it is.
    let (_, body) = get(&router, &bearer("n", Role::Mobile, Some(&["b"])), "/api/groups/b/presence").await;
    let x = body["participants"].as_array().unwrap().iter().find(|p| p["userId"] == "x").cloned().unwrap();
    assert_eq!((x["status"].as_str(), x["statusText"].as_str()), (Some("dnd"), Some("meeting with tenant-B")));
}

on_every_engine!(
    a_group_listing_forgets_a_member_who_left,
    the_api_reads_only_within_the_tokens_scope,
    a_scoped_dashboard_sees_no_other_groups_names,
    a_user_leaving_a_dashboards_scope_goes_offline_there,
);
