//! Tokens on open sockets: at `exp` plus the leeway a connection gets ERROR
//! `token_expired` and close 4001, unless a REFRESH with a valid token for the same user
//! and role came first; a refresh that changes the groups moves memberships and
//! dashboards' views at once.

mod common;

use std::time::Duration;

use common::{Client, Engine, SECRET, Setup, assert_update, map};
use presence_router::{
    auth::Role,
    presence::unix_ms,
    protocol::message_type::{ACK, AUDIO, ERROR, REFRESH, START, START_ACK, STOP, TEXT, TEXT_ACK},
};
use rmpv::Value;

/// A token for `user` expiring at `exp` (Unix seconds), issued now.
fn token_until(user: &str, role: Role, groups: Option<&[&str]>, exp: u64) -> String {
    let mut claims = serde_json::json!({"sub": user, "role": role, "exp": exp, "iat": unix_ms() / 1000});
    if let Some(groups) = groups {
        claims["groups"] = serde_json::json!(groups);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A token that is accepted now (inside the 5 s leeway) and expires 2 to 3 s from now.
fn expiring(user: &str, role: Role, groups: Option<&[&str]>) -> String {
    token_until(user, role, groups, unix_ms() / 1000 - 2)
}

fn lasting(user: &str, role: Role, groups: Option<&[&str]>) -> String {
    token_until(user, role, groups, unix_ms() / 1000 + 3600)
}

async fn refresh(client: &mut Client, user: &str, token: &str) -> Value {
    client.send_frame(0, REFRESH, user, "", map(&[("token", token.into())])).await;
    client.next_frame().await
}

async fn an_expired_token_closes_the_connection_with_4001(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut watcher, _) = router.dashboard("watcher").await;
    let mut mobile = Client::connect(router.addr, &expiring("m", Role::Mobile, None), Some("d")).await;
    mobile.sync("m").await;
    assert_update(&watcher.next_update().await, "m", "online");
    let error = mobile.next_error().await;
    assert_eq!(error["code"].as_str(), Some("token_expired"), "{error}");
    assert_eq!(mobile.close_code().await, Some(4001));
    assert_update(&watcher.next_update().await, "m", "offline");

    // Dashboards too.
    let mut dashboard = Client::connect(router.addr, &expiring("d", Role::Dashboard, None), None).await;
    dashboard.expect(32).await;
    assert_eq!(dashboard.next_error().await["code"].as_str(), Some("token_expired"));
    assert_eq!(dashboard.close_code().await, Some(4001));
}

async fn a_refresh_keeps_the_connection_past_the_old_expiry(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut mobile = Client::connect(router.addr, &expiring("m", Role::Mobile, None), Some("d")).await;
    let ack = refresh(&mut mobile, "m", &lasting("m", Role::Mobile, None)).await;
    assert_eq!(ack[1].as_u64(), Some(ACK.into()), "{ack}");
    // Past the first token's expiry (at most 3 s), the connection still serves.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    mobile.sync("m").await;
    let text = router.metrics().await;
    assert!(text.contains("presence_token_refreshes_total{result=\"accepted\"} 1"), "{text}");
}

async fn a_refused_refresh_leaves_the_old_expiry(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut mobile = Client::connect(router.addr, &expiring("m", Role::Mobile, None), Some("d")).await;
    for (token, code) in [
        ("garbage".to_string(), "invalid_token"),
        (lasting("someone-else", Role::Mobile, None), "token_mismatch"),
        (lasting("m", Role::Dashboard, None), "token_mismatch"),
        (token_until("m", Role::Mobile, None, 1_000), "token_expired"),
    ] {
        let error = refresh(&mut mobile, "m", &token).await;
        assert_eq!((error[1].as_u64(), error[5]["code"].as_str()), (Some(ERROR.into()), Some(code)), "{error}");
    }
    mobile.send_frame(0, REFRESH, "m", "", map(&[])).await;
    assert_eq!(mobile.next_error().await["code"].as_str(), Some("invalid_payload"));
    assert_eq!(mobile.next_error().await["code"].as_str(), Some("token_expired"));
    assert_eq!(mobile.close_code().await, Some(4001));
}

/// New groups in a refresh: the mobile's membership and presence move, and so does a
/// dashboard's view.
async fn a_refresh_with_new_groups_moves_membership_and_views(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut north, _) = router.dashboard_of("north-desk", &["north"]).await;
    let (mut south, _) = router.dashboard_of("south-desk", &["south"]).await;
    let mut peer = router.mobile_in("peer", &["south"]).await;
    assert_update(&south.next_update().await, "peer", "online");
    let mut mover = Client::connect(router.addr, &lasting("mover", Role::Mobile, Some(&["north"])), Some("d")).await;
    mover.sync("mover").await;
    assert_update(&north.next_update().await, "mover", "online");

    let ack = refresh(&mut mover, "mover", &lasting("mover", Role::Mobile, Some(&["south"]))).await;
    assert_eq!(ack[1].as_u64(), Some(ACK.into()), "{ack}");
    assert_update(&north.next_update().await, "mover", "offline");
    let joined = south.next_update().await;
    assert_update(&joined, "mover", "online");
    assert_eq!(joined["cause"].as_str(), Some("groups"));

    // Membership followed: south's talk reaches the mover, north is refused.
    peer.send_frame(0, TEXT, "peer", "south", map(&[("text", "welcome".into())])).await;
    peer.expect(TEXT_ACK).await;
    mover.expect_relayed(TEXT, "peer", "south").await;
    mover.send_frame(0, TEXT, "mover", "north", map(&[("text", "bye".into())])).await;
    assert_eq!(mover.next_error().await["code"].as_str(), Some("not_a_member"));

    // A dashboard's refresh re-scopes it: a fresh snapshot of its new groups.
    let snapshot = refresh(&mut north, "north-desk", &lasting("north-desk", Role::Dashboard, Some(&["south"]))).await;
    assert_eq!(snapshot[1].as_u64(), Some(32), "first the snapshot: {snapshot}");
    north.expect(ACK).await;
    let mut users: Vec<&str> =
        snapshot[5]["users"].as_array().unwrap().iter().map(|u| u["userId"].as_str().unwrap()).collect();
    users.sort();
    assert_eq!(users, ["mover", "peer"]);
}

/// A token's `groups` is a set: a refresh whose token repeats one group and drops another
/// takes the dropped group away, on a mobile and on a dashboard alike.
async fn a_refresh_repeating_a_group_still_drops_the_others(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let _peer = router.mobile_in("peer", &["south"]).await;
    let mut mover =
        Client::connect(router.addr, &lasting("mover", Role::Mobile, Some(&["north", "south"])), Some("d")).await;
    mover.sync("mover").await;
    let ack = refresh(&mut mover, "mover", &lasting("mover", Role::Mobile, Some(&["north", "north"]))).await;
    assert_eq!(ack[1].as_u64(), Some(ACK.into()), "{ack}");
    mover.send_frame(0, TEXT, "mover", "south", map(&[("text", "still here?".into())])).await;
    assert_eq!(mover.next_error().await["code"].as_str(), Some("not_a_member"));

    let (mut desk, _) = router.dashboard_of("desk", &["north", "south"]).await;
    let snapshot = refresh(&mut desk, "desk", &lasting("desk", Role::Dashboard, Some(&["north", "north"]))).await;
    assert_eq!(snapshot[1].as_u64(), Some(32), "first the snapshot of north alone: {snapshot}");
    let users: Vec<&str> =
        snapshot[5]["users"].as_array().unwrap().iter().map(|u| u["userId"].as_str().unwrap()).collect();
    assert_eq!(users, ["mover"]);
}

/// A private talk ends when the talker's refresh leaves the group it shared with the
/// listener: the listener gets STOP (`not_a_member`), and the talker's next AUDIO and a new
/// START are checked against the new groups.
async fn a_refresh_leaving_the_shared_group_ends_a_private_talk(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut listener = router.mobile_in("listener", &["crew"]).await;
    let mut talker =
        Client::connect(router.addr, &lasting("talker", Role::Mobile, Some(&["crew", "depot"])), Some("d")).await;
    talker.sync("talker").await;
    talker.send_frame(1, START, "talker", "listener", map(&[])).await;
    talker.expect(START_ACK).await;
    listener.expect_relayed(START, "talker", "listener").await;

    let ack = refresh(&mut talker, "talker", &lasting("talker", Role::Mobile, Some(&["depot"]))).await;
    assert_eq!(ack[1].as_u64(), Some(ACK.into()), "{ack}");
    let stop = listener.expect_relayed(STOP, "talker", "listener").await;
    assert_eq!(common::stop_reason(&stop).as_deref(), Some("not_a_member"), "{stop}");
    for (message_type, payload) in [(AUDIO, Value::Binary(vec![1, 2, 3])), (START, map(&[]))] {
        talker.send_frame(1, message_type, "talker", "listener", payload).await;
        assert_eq!(talker.next_error().await["code"].as_str(), Some("not_allowed"));
    }
}

on_every_engine!(
    a_refresh_leaving_the_shared_group_ends_a_private_talk,
    an_expired_token_closes_the_connection_with_4001,
    a_refresh_keeps_the_connection_past_the_old_expiry,
    a_refused_refresh_leaves_the_old_expiry,
    a_refresh_with_new_groups_moves_membership_and_views,
    a_refresh_repeating_a_group_still_drops_the_others,
);
