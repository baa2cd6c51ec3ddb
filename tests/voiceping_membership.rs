//! USER_ADD (15) and USER_REMOVE (16), in VoicePing's own shape `[0, 15, me, group]`
//! (four elements, no payload): a mobile session leaves and joins groups at run time. What
//! a group decides follows at once, as when a REFRESH names other groups: its dashboards
//! and group endpoint, its PTT, TEXT and indicators, its floors. Joining a group the token
//! does not name is refused unless `--user-add-any-group` is set. On every engine, and
//! across two routers on the shared ones.

mod common;

use common::{Client, Engine, Router, SECRET, Setup, assert_update, eventually, map, prometheus::metric};
use presence_router::{
    auth::{Role, mint_hs256_in},
    protocol::message_type::{
        ACK, AUDIO, START, START_ACK, START_FAILED, STOP, STOP_ACK, TEXT, TEXT_ACK, UNAUTHORIZED_GROUP,
    },
};
use rmpv::Value;

/// VoicePing's USER_ADD: join the group in `toId`.
const USER_ADD: u8 = 15;
/// VoicePing's USER_REMOVE: leave the group in `toId`.
const USER_REMOVE: u8 = 16;
const ANY_GROUP: &str = "--user-add-any-group";

fn token(user: &str, role: Role, groups: &[&str]) -> String {
    mint_hs256_in(SECRET.as_bytes(), user, role, Some(groups), 3600).unwrap()
}

/// Sends `[channel, type, me, group]` as VoicePing clients do (no payload) and returns the
/// router's answer.
async fn membership(client: &mut Client, channel: u8, message_type: u8, me: &str, group: &str) -> Value {
    client.send_value(Value::Array(vec![channel.into(), message_type.into(), me.into(), group.into()])).await;
    client.next_frame().await
}

/// USER_ADD or USER_REMOVE on a group channel, asserting the ACK that names it.
async fn change(client: &mut Client, message_type: u8, me: &str, group: &str) {
    let ack = membership(client, 0, message_type, me, group).await;
    assert_eq!(ack[1].as_u64(), Some(ACK.into()), "{ack}");
    assert_eq!(ack[5]["messageType"].as_u64(), Some(message_type.into()), "{ack}");
}

/// USER_ADD or USER_REMOVE refused: the ERROR's code, asserting it names the frame's type.
async fn refused(client: &mut Client, channel: u8, message_type: u8, me: &str, group: &str) -> String {
    let error = membership(client, channel, message_type, me, group).await;
    assert_eq!(error[1].as_u64(), Some(33), "expected ERROR, got {error}");
    assert_eq!(error[5]["messageType"].as_u64(), Some(message_type.into()), "{error}");
    error[5]["code"].as_str().unwrap().to_string()
}

/// A mobile of `user` in the token's `groups`, synced.
async fn mobile(router: &Router, user: &str, groups: &[&str]) -> Client {
    router.mobile_in(user, groups).await
}

/// The group endpoint's participants shown online, sorted.
async fn online_in(router: &Router, group: &str) -> Vec<String> {
    let body = router.group(group).await;
    let mut online: Vec<String> = body["participants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"] == "online")
        .map(|p| p["userId"].as_str().unwrap().to_string())
        .collect();
    online.sort();
    online
}

/// TEXT from `sender` to `group`, acknowledged.
async fn text(sender: &mut Client, from: &str, group: &str, words: &str) {
    sender.send_frame(0, TEXT, from, group, map(&[("text", words.into())])).await;
    sender.expect(TEXT_ACK).await;
}

/// The next PRESENCE_UPDATE's payload, past the INDICATOR_UPDATEs (a talk's) before it.
async fn next_update(desk: &mut Client) -> Value {
    loop {
        let frame = desk.next_frame().await;
        match frame[1].as_u64() {
            Some(31) => return frame[5].clone(),
            Some(38) => continue,
            _ => panic!("expected PRESENCE_UPDATE, got {frame}"),
        }
    }
}

/// The words of the next relayed TEXT from `from` to `group`.
async fn next_text(receiver: &mut Client, from: &str, group: &str) -> String {
    let frame = receiver.expect_relayed(TEXT, from, group).await;
    frame[4]["text"].as_str().unwrap().to_string()
}

/// USER_REMOVE takes the session out of the group: the group's dashboards see the user go
/// offline, the group endpoint stops listing it, its floor there ends, and the group's
/// talk and text no longer reach it (its other groups' still do). USER_ADD brings it
/// back; a reconnect starts again from the token's groups.
async fn user_remove_leaves_a_group_and_user_add_rejoins_it(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut desk, _) = router.dashboard_of("desk", &["crew"]).await;
    let mut peer = mobile(&router, "p", &["crew", "depot"]).await;
    assert_update(&desk.next_update().await, "p", "online");
    let mut me = mobile(&router, "7", &["crew", "depot"]).await;
    assert_update(&desk.next_update().await, "7", "online");
    assert_eq!(online_in(&router, "crew").await, ["7", "p"]);

    // Talking in crew when it leaves: the floor ends as on a disconnect, for not_a_member.
    me.take_floor("7", "crew", &mut peer).await;
    change(&mut me, USER_REMOVE, "7", "crew").await;
    let stop = peer.expect_relayed(STOP, "7", "crew").await;
    assert_eq!(common::stop_reason(&stop).as_deref(), Some("not_a_member"), "{stop}");
    peer.expect_indicator("7", "talking", false).await;
    assert_update(&next_update(&mut desk).await, "7", "offline");
    assert_eq!(online_in(&router, "crew").await, ["p"]);

    // crew's frames stop reaching it; depot's still do. The depot text comes after the
    // crew text from the same sender: had the crew text been relayed, it would come first.
    text(&mut peer, "p", "crew", "crew only").await;
    text(&mut peer, "p", "depot", "depot still").await;
    assert_eq!(next_text(&mut me, "p", "depot").await, "depot still");
    me.send_frame(0, START, "7", "crew", map(&[])).await;
    assert_eq!(me.next_error().await["code"].as_str(), Some("not_a_member"));
    me.expect_relayed(UNAUTHORIZED_GROUP, "7", "crew").await;
    me.expect_relayed(START_FAILED, "7", "crew").await;
    // Leaving a group it is not in changes nothing.
    change(&mut me, USER_REMOVE, "7", "crew").await;

    // Back in: the desk sees it, the group endpoint lists it, crew's talk reaches it.
    change(&mut me, USER_ADD, "7", "crew").await;
    let joined = next_update(&mut desk).await;
    assert_update(&joined, "7", "online");
    assert_eq!(joined["cause"].as_str(), Some("groups"), "{joined}");
    assert_eq!(online_in(&router, "crew").await, ["7", "p"]);
    peer.send_frame(0, START, "p", "crew", map(&[])).await;
    peer.expect(START_ACK).await;
    me.expect_relayed(START, "p", "crew").await;
    me.expect_indicator("p", "talking", true).await;
    peer.send_frame(0, AUDIO, "p", "crew", Value::Binary(vec![1, 2, 3])).await;
    assert_eq!(me.expect_relayed(AUDIO, "p", "crew").await[4], Value::Binary(vec![1, 2, 3]));

    let metrics = router.metrics().await;
    for (kind, result, count) in
        [("user_remove", "applied", 1), ("user_remove", "unchanged", 1), ("user_add", "applied", 1)]
    {
        let series = format!(r#"presence_membership_changes_total{{type="{kind}",result="{result}"}}"#);
        assert_eq!(metric(&metrics, &series), Some(count), "{series} in {metrics}");
    }

    // The change lasts as long as the session: a reconnect starts from the token's groups.
    change(&mut me, USER_REMOVE, "7", "depot").await;
    me.close().await;
    let mut me = mobile(&router, "7", &["crew", "depot"]).await;
    text(&mut peer, "p", "depot", "welcome back").await;
    assert_eq!(next_text(&mut me, "p", "depot").await, "welcome back");
}

/// Joining a group the token does not name is refused by default, and so are frames that
/// name no group, and USER_ADD / USER_REMOVE from sessions that are no members at all.
async fn user_add_beyond_the_token_is_refused_by_default(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let (mut desk, _) = router.dashboard_of("desk", &["crew"]).await;
    let peer = mobile(&router, "p", &["crew"]).await;
    assert_update(&desk.next_update().await, "p", "online");
    let mut me = mobile(&router, "7", &["depot"]).await;

    assert_eq!(refused(&mut me, 0, USER_ADD, "7", "crew").await, "not_a_member");
    assert_eq!(refused(&mut me, 1, USER_ADD, "7", "depot").await, "invalid_frame");
    assert_eq!(refused(&mut me, 0, USER_ADD, "7", "").await, "invalid_frame");
    me.send_frame(0, TEXT, "7", "crew", map(&[("text", "let me in".into())])).await;
    assert_eq!(me.next_error().await["code"].as_str(), Some("not_a_member"));
    assert_eq!(online_in(&router, "crew").await, ["p"]);

    let mut watcher = Client::connect(router.addr, &token("desk2", Role::Dashboard, &["crew"]), None).await;
    watcher.expect(32).await;
    assert_eq!(refused(&mut watcher, 0, USER_ADD, "desk2", "crew").await, "not_allowed");
    assert_eq!(refused(&mut watcher, 0, USER_REMOVE, "desk2", "crew").await, "not_allowed");

    // The desk saw nothing of 7: its next update is the next change in crew.
    peer.close().await;
    assert_update(&desk.next_update().await, "p", "offline");
    let metrics = router.metrics().await;
    let series = r#"presence_membership_changes_total{type="user_add",result="not_a_member"}"#;
    assert_eq!(metric(&metrics, series), Some(1), "{metrics}");
}

/// With `--user-add-any-group`, a session joins a group its token does not name and is a
/// member there as if the token named it: the group's dashboards and endpoint see it, the
/// group's talk reaches it, it talks there. Up to `--max-session-groups` groups.
async fn user_add_any_group_joins_a_group_beyond_the_token(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[ANY_GROUP, "--max-session-groups", "2"]).await;
    let (mut desk, _) = router.dashboard_of("desk", &["crew"]).await;
    let mut peer = mobile(&router, "p", &["crew"]).await;
    assert_update(&desk.next_update().await, "p", "online");
    let mut me = mobile(&router, "7", &["depot"]).await;

    change(&mut me, USER_ADD, "7", "crew").await;
    let joined = desk.next_update().await;
    assert_update(&joined, "7", "online");
    assert_eq!(joined["groups"], Value::from(vec![Value::from("crew")]), "only the desk's groups: {joined}");
    assert_eq!(online_in(&router, "crew").await, ["7", "p"]);
    text(&mut peer, "p", "crew", "hello 7").await;
    assert_eq!(next_text(&mut me, "p", "crew").await, "hello 7");
    me.take_floor("7", "crew", &mut peer).await;
    me.send_frame(0, STOP, "7", "crew", map(&[])).await;
    me.expect(STOP_ACK).await;
    peer.expect_relayed(STOP, "7", "crew").await;
    peer.expect_indicator("7", "talking", false).await;

    // Two groups held: a third beyond the token is refused; leaving one makes room.
    assert_eq!(refused(&mut me, 0, USER_ADD, "7", "yard").await, "too_many_groups");
    change(&mut me, USER_REMOVE, "7", "crew").await;
    assert_update(&next_update(&mut desk).await, "7", "offline");
    change(&mut me, USER_ADD, "7", "yard").await;
    text(&mut peer, "p", "crew", "gone?").await;
    me.send_frame(0, TEXT, "7", "crew", map(&[("text", "gone".into())])).await;
    assert_eq!(me.next_error().await["code"].as_str(), Some("not_a_member"));
}

/// A REFRESH replaces the token's part of the session's groups; the run-time changes stay
/// on top of it: a group left stays left while the new token names it, a group joined
/// beyond the token stays joined.
async fn run_time_changes_survive_a_refresh(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[ANY_GROUP]).await;
    let mut peer = mobile(&router, "p", &["crew", "depot", "yard", "dock"]).await;
    let mut me = mobile(&router, "7", &["crew", "depot"]).await;
    change(&mut me, USER_REMOVE, "7", "crew").await;
    change(&mut me, USER_ADD, "7", "dock").await;

    let renewed = token("7", Role::Mobile, &["crew", "depot", "yard"]);
    me.send_frame(0, 40, "7", "", map(&[("token", renewed.into())])).await;
    me.expect(ACK).await;
    for (group, member) in [("crew", false), ("depot", true), ("yard", true), ("dock", true)] {
        me.send_frame(0, TEXT, "7", group, map(&[("text", group.into())])).await;
        let reply = me.next_frame().await;
        let code = if member { None } else { Some("not_a_member") };
        assert_eq!(reply[5]["code"].as_str(), code, "{group}: {reply}");
        if member {
            assert_eq!(next_text(&mut peer, "7", group).await, group);
        }
    }
}

/// Across routers: a session on B joins a group it shares with a talker and a dashboard on
/// A; the talk reaches it through the group's relay channel, which B subscribes to while
/// it serves a member; it leaves and is left out; it joins again and hears again.
async fn membership_changes_reach_the_other_routers(engine: Engine) {
    let setup = Setup::new(engine).await;
    let (a, b) = (setup.router(&[ANY_GROUP]).await, setup.router(&[ANY_GROUP]).await);
    let (mut desk, _) = a.dashboard_of("desk", &["crew"]).await;
    let mut talker = mobile(&a, "t", &["crew"]).await;
    assert_update(&desk.next_update().await, "t", "online");
    let mut me = mobile(&b, "7", &["depot"]).await;
    // On a third router: what it hears of crew has gone through Redis.
    let c = setup.router(&[]).await;
    let mut witness = mobile(&c, "w", &["crew"]).await;
    assert_update(&desk.next_update().await, "w", "online");
    let subscriptions = || async { metric(&b.metrics().await, "presence_broker_group_subscriptions") };
    eventually("b to subscribe to depot's channel", || async { subscriptions().await == Some(1) }).await;

    change(&mut me, USER_ADD, "7", "crew").await;
    assert_update(&desk.next_update().await, "7", "online");
    assert_eq!(online_in(&a, "crew").await, ["7", "t", "w"]);
    eventually("b to subscribe to crew's channel", || async { subscriptions().await == Some(2) }).await;
    talker.take_floor("t", "crew", &mut me).await;
    talker.send_frame(0, AUDIO, "t", "crew", Value::Binary(vec![9; 20])).await;
    assert_eq!(me.expect_relayed(AUDIO, "t", "crew").await[4], Value::Binary(vec![9; 20]));
    talker.send_frame(0, STOP, "t", "crew", map(&[])).await;
    talker.expect(STOP_ACK).await;
    me.expect_relayed(STOP, "t", "crew").await;
    me.expect_indicator("t", "talking", false).await;

    change(&mut me, USER_REMOVE, "7", "crew").await;
    assert_update(&next_update(&mut desk).await, "7", "offline");
    eventually("b to leave crew's channel", || async { subscriptions().await == Some(1) }).await;
    text(&mut talker, "t", "crew", "while away").await;
    // Relaying is asynchronous: rejoin only once the text has gone out (the witness heard
    // the talk before it).
    loop {
        let frame = witness.next_frame().await;
        if frame[1].as_u64() == Some(TEXT.into()) {
            assert_eq!(frame[4]["text"].as_str(), Some("while away"), "{frame}");
            break;
        }
    }
    change(&mut me, USER_ADD, "7", "crew").await;
    assert_update(&desk.next_update().await, "7", "online");
    eventually("b to subscribe to crew's channel again", || async { subscriptions().await == Some(2) }).await;
    // Both texts went on crew's channel from one sender: had the first reached 7, it would
    // come before the second.
    text(&mut talker, "t", "crew", "welcome back").await;
    assert_eq!(next_text(&mut me, "t", "crew").await, "welcome back");
}

on_every_engine!(
    user_remove_leaves_a_group_and_user_add_rejoins_it,
    user_add_beyond_the_token_is_refused_by_default,
    user_add_any_group_joins_a_group_beyond_the_token,
    run_time_changes_survive_a_refresh,
);

/// A private frame that needs a shared group reaches only the receiver's sessions in one
/// of the sender's groups now, whatever the routers last showed of the receiver: here an
/// invisible user's phone left the group it shared with the sender (an invisible user's
/// changes are never shown), its tablet did not. From the receiver's router and another.
async fn a_private_frame_reaches_only_sessions_sharing_a_group_now(engine: Engine) {
    let setup = Setup::new(engine).await;
    let (a, b) = (setup.router(&[]).await, setup.router(&[]).await);
    for (round, sender_on) in [&b, &a].into_iter().enumerate() {
        let (user, sender, group) = (format!("b{round}"), format!("a{round}"), format!("h{round}"));
        let mut phone = b.mobile_on(&user, "phone", &["g", &group]).await;
        let mut tablet = b.mobile_on(&user, "tablet", &[&group]).await;
        phone.set_status(&user, "invisible", None).await;
        change(&mut phone, USER_REMOVE, &user, &group).await;
        let mut caller = mobile(sender_on, &sender, &[&group]).await;

        caller.send_frame(1, TEXT, &sender, &user, map(&[("text", "psst".into())])).await;
        caller.expect(TEXT_ACK).await;
        assert_eq!(tablet.expect_relayed(TEXT, &sender, &user).await[4]["text"].as_str(), Some("psst"));
        // The frame was delivered on the phone's router before this: a phone it reached
        // would read it before the next one.
        change(&mut phone, USER_ADD, &user, &group).await;
        caller.send_frame(1, TEXT, &sender, &user, map(&[("text", "now".into())])).await;
        caller.expect(TEXT_ACK).await;
        let text = phone.expect_relayed(TEXT, &sender, &user).await;
        assert_eq!(text[4]["text"].as_str(), Some("now"), "round {round}: {text}");
    }
}

/// A session hears its groups' frames from other routers from the moment its connection
/// is registered: its router subscribes to a group's channel before the store shows the
/// session there. Rounds in fresh groups, each answered at once, to catch a lagging
/// subscription.
async fn a_new_member_hears_its_groups_from_other_routers_at_once(engine: Engine) {
    let setup = Setup::new(engine).await;
    let (a, b) = (setup.router(&[]).await, setup.router(&[]).await);
    for round in 0..20 {
        let (group, talker_id, member_id) = (format!("fresh{round}"), format!("t{round}"), format!("m{round}"));
        let mut talker = mobile(&a, &talker_id, &[&group]).await;
        let mut member = mobile(&b, &member_id, &[&group]).await;
        talker.send_frame(0, TEXT, &talker_id, &group, map(&[("text", "welcome".into())])).await;
        talker.expect(TEXT_ACK).await;
        assert_eq!(next_text(&mut member, &talker_id, &group).await, "welcome", "round {round}");
    }
}

/// A USER_ADD's ACK comes once the group's frames from other routers reach the session:
/// rounds in which the session leaves its only group on its router and joins it again,
/// each answered at once.
async fn a_rejoined_member_hears_its_group_from_other_routers_at_once(engine: Engine) {
    let setup = Setup::new(engine).await;
    let (a, b) = (setup.router(&[]).await, setup.router(&[]).await);
    let mut talker = mobile(&a, "t", &["crew"]).await;
    let mut member = mobile(&b, "7", &["crew", "depot"]).await;
    for round in 0..20 {
        change(&mut member, USER_REMOVE, "7", "crew").await;
        change(&mut member, USER_ADD, "7", "crew").await;
        let words = format!("round {round}");
        talker.send_frame(0, TEXT, "t", "crew", map(&[("text", words.as_str().into())])).await;
        talker.expect(TEXT_ACK).await;
        assert_eq!(next_text(&mut member, "t", "crew").await, words);
    }
}

mod across_routers {
    use super::*;
    on_shared_engines!(
        membership_changes_reach_the_other_routers,
        a_new_member_hears_its_groups_from_other_routers_at_once,
        a_rejoined_member_hears_its_group_from_other_routers_at_once,
        a_private_frame_reaches_only_sessions_sharing_a_group_now
    );
}
