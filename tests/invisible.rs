//! A user who chose `invisible` is shown to nobody: no dashboard, member or API call sees
//! its presence signals (typing, recording, talking, counts, moving activity times), while
//! the content it sends (START / AUDIO / STOP, TEXT) still reaches its groups' members.
//! Against the real binary, on every engine, and across two routers sharing Redis.

mod common;

use common::{Client, Engine, Router, SECRET, Setup, assert_update, map};
use presence_router::{
    auth::{Role, mint_hs256_in},
    protocol::message_type::{AUDIO, START, START_ACK, STOP, STOP_ACK, TEXT, TEXT_ACK},
};
use rmpv::Value;
use serde_json::json;

on_every_engine!(
    an_invisible_user_is_never_shown_typing_recording_or_talking,
    turning_invisible_ends_the_signals_and_turning_visible_shows_them_again,
    a_user_invisible_since_an_earlier_session_stays_hidden,
    the_chosen_status_applies_to_every_session_of_the_user,
);

/// Indicators live longer than any test takes, so none lapses on its own mid-test.
const LONG_SIGNALS: [&str; 4] = ["--typing-ttl-ms", "600000", "--max-talk-ms", "600000"];

fn audio() -> Value {
    Value::Binary(vec![7; 160])
}

/// The next INDICATOR_UPDATE a dashboard gets, as `(user, type, isActive)`, past the
/// presence updates, snapshots, STALE and FRESH (around a resync) that come in between.
async fn next_indicator(dashboard: &mut Client) -> (String, String, bool) {
    loop {
        let frame = dashboard.next_frame().await;
        match frame[1].as_u64() {
            Some(31 | 32 | 43 | 44) => continue,
            Some(38) => return indicator_of(&frame),
            _ => panic!("expected INDICATOR_UPDATE, got {frame}"),
        }
    }
}

/// The next `n` INDICATOR_UPDATEs, in a fixed order (ends of several signals come in any).
async fn next_indicators(client: &mut Client, n: usize) -> Vec<(String, String, bool)> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(next_indicator(client).await);
    }
    got.sort();
    got
}

fn indicator_of(frame: &Value) -> (String, String, bool) {
    let payload = &frame[5];
    let field = |key: &str| payload[key].as_str().unwrap_or_default().to_string();
    (field("userId"), field("type"), payload["isActive"].as_bool().unwrap_or_default())
}

fn signal(user: &str, kind: &str, active: bool) -> (String, String, bool) {
    (user.to_string(), kind.to_string(), active)
}

/// The next PRESENCE_UPDATE a dashboard gets, past the indicators that come in between.
async fn next_presence(dashboard: &mut Client) -> Value {
    loop {
        let frame = dashboard.next_frame().await;
        match frame[1].as_u64() {
            Some(38) => continue,
            Some(31) => return frame[5].clone(),
            _ => panic!("expected PRESENCE_UPDATE, got {frame}"),
        }
    }
}

/// The group endpoint's typing, recording and talking users.
async fn signalling(router: &Router, group: &str) -> [serde_json::Value; 3] {
    let body = router.group(group).await;
    [body["typingUsers"].clone(), body["recordingUsers"].clone(), body["talkingUsers"].clone()]
}

/// `user`'s entry among the group endpoint's participants.
async fn participant(router: &Router, group: &str, user: &str) -> serde_json::Value {
    let body = router.group(group).await;
    let participants = body["participants"].as_array().unwrap();
    participants.iter().find(|p| p["userId"] == user).cloned().unwrap_or_else(|| panic!("{user} in {body}"))
}

/// Reads past whatever was relayed to `client` (it is a member too) up to its next ACK.
async fn skip_to_ack(client: &mut Client) {
    while client.next_frame().await[1].as_u64() != Some(39) {}
}

/// STATUS, from a client that may have relayed frames waiting before the ACK.
async fn choose(client: &mut Client, user: &str, status: &str) {
    client.send_frame(0, 35, user, "", map(&[("status", status.into())])).await;
    skip_to_ack(client).await;
}

/// `user` starts typing in `crew`, from a client that may have relayed frames waiting.
async fn start_typing(client: &mut Client, user: &str) {
    client.send_frame(0, 37, user, "crew", map(&[("type", "typing".into()), ("isActive", true.into())])).await;
    skip_to_ack(client).await;
}

/// `marker` starts typing in `crew`: the next indicator every one of `watchers` gets must
/// be this one, which proves nothing of anyone else's came before it.
async fn typing_marker(marker: &mut Client, user: &str, watchers: &mut [&mut Client]) {
    start_typing(marker, user).await;
    for watcher in watchers.iter_mut() {
        assert_eq!(next_indicator(watcher).await, signal(user, "typing", true), "nothing else came before");
    }
}

/// `typist`, a session of `user`, starts typing in `crew`, which `member` and `dashboard`
/// see; then `chooser`, another session of the user, chooses invisible, and both see the
/// typing end.
async fn typing_ends_when_another_session_hides(
    user: &str,
    [typist, chooser]: [&mut Client; 2],
    member: &mut Client,
    dashboard: &mut Client,
) {
    typist.indicator(user, "crew", "typing", true).await;
    member.expect_indicator(user, "typing", true).await;
    assert_eq!(next_indicator(dashboard).await, signal(user, "typing", true));
    chooser.set_status(user, "invisible", None).await;
    assert_eq!(next_indicator(dashboard).await, signal(user, "typing", false));
    member.expect_indicator(user, "typing", false).await;
}

async fn an_invisible_user_is_never_shown_typing_recording_or_talking(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&LONG_SIGNALS).await;
    let (mut everyone, _) = router.dashboard("dispatcher").await;
    let (mut crew_lead, _) = router.dashboard_of("lead", &["crew"]).await;
    let mut a = router.mobile_in("a", &["crew"]).await;
    let mut b = router.mobile_in("b", &["crew"]).await;
    let mut c = router.mobile_in("c", &["crew"]).await;
    a.set_status("a", "invisible", None).await;

    a.indicator("a", "crew", "typing", true).await;
    a.indicator("a", "crew", "recording", true).await;
    a.send_frame(0, START, "a", "crew", map(&[])).await;
    a.expect(START_ACK).await;
    a.send_frame(0, AUDIO, "a", "crew", audio()).await;
    // The content reaches the member, and it is the first of a's frames the member gets.
    b.expect_relayed(START, "a", "crew").await;
    assert_eq!(b.expect_relayed(AUDIO, "a", "crew").await[4], audio());

    assert_eq!(signalling(&router, "crew").await, [json!([]), json!([]), json!([])], "a types, records and talks");
    let group = router.group("crew").await;
    assert_eq!((group["onlineCount"].as_u64(), group["awayCount"].as_u64()), (Some(2), Some(0)), "{group}");
    assert_eq!(participant(&router, "crew", "a").await["status"], "offline");

    a.send_frame(0, STOP, "a", "crew", map(&[])).await;
    a.expect(STOP_ACK).await;
    b.expect_relayed(STOP, "a", "crew").await;
    a.send_frame(0, TEXT, "a", "crew", map(&[("text", "copy".into())])).await;
    a.expect(TEXT_ACK).await;
    assert_eq!(b.expect_relayed(TEXT, "a", "crew").await[4]["text"].as_str(), Some("copy"));
    a.indicator("a", "crew", "typing", false).await;
    a.indicator("a", "crew", "recording", false).await;

    // Neither the member nor a dashboard got any of a's starts or ends.
    typing_marker(&mut c, "c", &mut [&mut b, &mut everyone, &mut crew_lead]).await;
    let (_, snapshot) = router.dashboard("late").await;
    let listed: Vec<&str> =
        snapshot[5]["users"].as_array().unwrap().iter().filter_map(|u| u["userId"].as_str()).collect();
    assert!(!listed.contains(&"a"), "{snapshot}");
}

async fn turning_invisible_ends_the_signals_and_turning_visible_shows_them_again(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&LONG_SIGNALS).await;
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    let mut a = router.mobile_in("a", &["crew"]).await;
    let mut b = router.mobile_in("b", &["crew"]).await;
    a.indicator("a", "crew", "typing", true).await;
    b.expect_indicator("a", "typing", true).await;
    a.take_floor("a", "crew", &mut b).await;
    let started = vec![signal("a", "talking", true), signal("a", "typing", true)];
    assert_eq!(next_indicators(&mut dashboard, 2).await, started);
    assert_eq!(signalling(&router, "crew").await, [json!(["a"]), json!([]), json!(["a"])]);

    // Mid-typing and mid-talk: whoever saw the signals start sees them end.
    a.set_status("a", "invisible", None).await;
    let ended = vec![signal("a", "talking", false), signal("a", "typing", false)];
    assert_eq!(next_indicators(&mut dashboard, 2).await, ended);
    assert_eq!(next_indicators(&mut b, 2).await, ended);
    assert_eq!(signalling(&router, "crew").await, [json!([]), json!([]), json!([])]);
    // The talk goes on: members still hear it.
    a.send_frame(0, AUDIO, "a", "crew", audio()).await;
    b.expect_relayed(AUDIO, "a", "crew").await;

    // Still typing and talking when the user shows itself again: both are shown at once.
    a.set_status("a", "online", None).await;
    assert_eq!(next_indicators(&mut dashboard, 2).await, started);
    assert_eq!(next_indicators(&mut b, 2).await, started);
    assert_eq!(signalling(&router, "crew").await, [json!(["a"]), json!([]), json!(["a"])]);
    a.send_frame(0, STOP, "a", "crew", map(&[])).await;
    a.expect(STOP_ACK).await;
    b.expect_relayed(STOP, "a", "crew").await;
    b.expect_indicator("a", "talking", false).await;
    assert_eq!(next_indicator(&mut dashboard).await, signal("a", "talking", false));
}

async fn a_user_invisible_since_an_earlier_session_stays_hidden(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&LONG_SIGNALS).await;
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    let mut b = router.mobile_in("b", &["crew"]).await;
    let mut c = router.mobile_in("c", &["crew"]).await;
    let mut phone = router.mobile_on("a", "phone", &["crew"]).await;
    for _ in 0..3 {
        next_presence(&mut dashboard).await;
    }
    phone.set_status("a", "invisible", Some("off duty")).await;
    let hidden = next_presence(&mut dashboard).await;
    assert_update(&hidden, "a", "offline");
    assert!(hidden["statusText"].is_nil() && hidden["lastActivity"].is_nil(), "{hidden}");
    phone.close().await;

    // A new session, on another device, of a user still invisible from the last one.
    let mut tablet = router.mobile_on("a", "tablet", &["crew"]).await;
    tablet.send_frame(0, 36, "a", "", map(&[])).await;
    tablet.expect(39).await;
    tablet.indicator("a", "crew", "typing", true).await;
    tablet.send_frame(0, START, "a", "crew", map(&[])).await;
    tablet.expect(START_ACK).await;
    b.expect_relayed(START, "a", "crew").await;
    assert_eq!(signalling(&router, "crew").await, [json!([]), json!([]), json!([])]);

    // The API reads it exactly as when it went invisible: as if it had disconnected then.
    let as_hidden =
        json!({"userId": "a", "status": "offline", "lastSeen": hidden["lastSeen"].as_u64(), "deviceId": "phone"});
    assert_eq!(router.user("a").await, as_hidden);
    let (status, bulk) = router.post_status(r#"{"userIds": ["a"]}"#).await;
    assert_eq!((status, &bulk["users"][0]), (200, &as_hidden));
    assert_eq!(participant(&router, "crew", "a").await, as_hidden);

    // Neither a presence update nor an indicator of a's reached the dashboard or member.
    typing_marker(&mut c, "c", &mut [&mut dashboard, &mut b]).await;
    choose(&mut c, "c", "dnd").await;
    assert_update(&next_presence(&mut dashboard).await, "c", "dnd");

    // Shown again: from the device it is on now.
    choose(&mut tablet, "a", "online").await;
    let shown = next_presence(&mut dashboard).await;
    assert_update(&shown, "a", "online");
    assert_eq!(shown["deviceId"].as_str(), Some("tablet"), "{shown}");
    assert!(shown["lastSeen"].as_u64() > hidden["lastSeen"].as_u64(), "{shown}");
}

async fn the_chosen_status_applies_to_every_session_of_the_user(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&LONG_SIGNALS).await;
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    let mut phone = router.mobile_on("a", "phone", &["crew"]).await;
    let mut tablet = router.mobile_on("a", "tablet", &["crew"]).await;
    let mut b = router.mobile_in("b", &["crew"]).await;
    typing_ends_when_another_session_hides("a", [&mut tablet, &mut phone], &mut b, &mut dashboard).await;
    // The tablet's next signal is hidden.
    tablet.indicator("a", "crew", "recording", true).await;
    assert_eq!(signalling(&router, "crew").await, [json!([]), json!([]), json!([])]);
    let mut c = router.mobile_in("c", &["crew"]).await;
    typing_marker(&mut c, "c", &mut [&mut dashboard, &mut b]).await;

    // The phone shows the user again: the tablet's live signals are shown.
    choose(&mut phone, "a", "online").await;
    let shown = vec![signal("a", "recording", true), signal("a", "typing", true)];
    assert_eq!(next_indicators(&mut dashboard, 2).await, shown);
    assert_eq!(next_indicators(&mut b, 2).await, shown);
}

/// Two routers on one Redis: the talker on A, its tablet, a member and a dashboard on B.
#[tokio::test]
async fn an_invisible_user_on_one_router_is_hidden_on_the_others() {
    let setup = Setup::new(Engine::Redis).await;
    let (a, b) = (setup.router(&LONG_SIGNALS).await, setup.router(&LONG_SIGNALS).await);
    let (mut dashboard, _) = b.dashboard_of("dispatcher", &["crew"]).await;
    let mut talker = a.mobile_on("t", "phone", &["crew"]).await;
    let mut marker = a.mobile_in("m", &["crew"]).await;
    let mut tablet = b.mobile_on("t", "tablet", &["crew"]).await;
    let mut listener = b.mobile_in("l", &["crew"]).await;
    // Invisible on A: the tablet's typing on B ends for B's dashboard and members.
    typing_ends_when_another_session_hides("t", [&mut tablet, &mut talker], &mut listener, &mut dashboard).await;
    // Stopped while hidden: the end is announced no more than the start was.
    tablet.indicator("t", "crew", "typing", false).await;

    talker.send_frame(0, START, "t", "crew", map(&[])).await;
    talker.expect(START_ACK).await;
    talker.send_frame(0, AUDIO, "t", "crew", audio()).await;
    talker.indicator("t", "crew", "typing", true).await;
    listener.expect_relayed(START, "t", "crew").await;
    listener.expect_relayed(AUDIO, "t", "crew").await;
    for router in [&a, &b] {
        assert_eq!(signalling(router, "crew").await, [json!([]), json!([]), json!([])]);
        assert_eq!(router.group("crew").await["onlineCount"].as_u64(), Some(2), "l and m");
    }
    // The marker shares the talker's router, so its frames follow the talker's to B.
    typing_marker(&mut marker, "m", &mut [&mut dashboard, &mut listener]).await;

    // Shown again mid-talk: B's dashboard sees the talk and the typing.
    choose(&mut talker, "t", "online").await;
    let shown = vec![signal("t", "talking", true), signal("t", "typing", true)];
    assert_eq!(next_indicators(&mut dashboard, 2).await, shown);
    assert_eq!(next_indicators(&mut listener, 2).await, shown);
    talker.send_frame(0, STOP, "t", "crew", map(&[])).await;
    talker.expect(STOP_ACK).await;
    listener.expect_relayed(STOP, "t", "crew").await;
    listener.expect_indicator("t", "talking", false).await;
}

/// A session that connects while Redis hangs cannot learn what its user chose: its
/// signals stay hidden (the user may be invisible) until Redis answers again, then follow
/// the choice. Content flows throughout.
#[tokio::test]
async fn a_session_connected_during_an_outage_hides_its_signals_until_it_knows_the_choice() {
    let setup = Setup::new(Engine::Redis).await;
    let router = setup.router(&LONG_SIGNALS).await;
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    let mut member = router.mobile_in("member", &["crew"]).await;
    let mut marker = router.mobile_in("marker", &["crew"]).await;
    let mut hider = router.mobile_in("hider", &["crew"]).await;
    hider.set_status("hider", "invisible", None).await;
    hider.close().await;

    let redis = setup.redis.as_ref().unwrap();
    redis.signal("STOP").await;
    common::eventually("the router to notice", || async {
        router.metrics().await.contains("\npresence_engine_up 0\n")
    })
    .await;
    let token = |user| mint_hs256_in(SECRET.as_bytes(), user, Role::Mobile, Some(&["crew"]), 3600).unwrap();
    let mut hider = Client::connect(router.addr, &token("hider"), Some("phone")).await;
    let mut newcomer = Client::connect(router.addr, &token("newcomer"), Some("phone")).await;
    for client in [&mut hider, &mut newcomer] {
        assert_eq!(client.next_error().await["code"].as_str(), Some("presence_unavailable"));
    }
    hider.indicator("hider", "crew", "typing", true).await;
    newcomer.indicator("newcomer", "crew", "typing", true).await;
    hider.send_frame(0, TEXT, "hider", "crew", map(&[("text", "copy".into())])).await;
    hider.expect(TEXT_ACK).await;
    member.expect_relayed(TEXT, "hider", "crew").await;
    typing_marker(&mut marker, "marker", &mut [&mut dashboard, &mut member]).await;

    redis.signal("CONT").await;
    common::eventually("the router to recover", || async {
        router.metrics().await.contains("\npresence_engine_up 1\n")
    })
    .await;
    // The next start asks the store: the invisible user stays hidden, the other is shown.
    start_typing(&mut hider, "hider").await;
    start_typing(&mut newcomer, "newcomer").await;
    assert_eq!(next_indicator(&mut dashboard).await, signal("newcomer", "typing", true));
    member.expect_indicator("newcomer", "typing", true).await;
    let [typing, ..] = signalling(&router, "crew").await;
    let typing: Vec<&str> = typing.as_array().unwrap().iter().filter_map(|u| u.as_str()).collect();
    assert!(typing.contains(&"newcomer") && !typing.contains(&"hider"), "{typing:?}");
}

/// The store's copy of an indicator outlives a router killed before it could clear it: the
/// group endpoint still lists it only while its user is shown.
#[tokio::test]
async fn a_signal_left_by_a_dead_router_is_not_listed_once_its_user_is_invisible() {
    let setup = Setup::new(Engine::Redis).await;
    let (mut a, b) = (setup.router(&LONG_SIGNALS).await, setup.router(&LONG_SIGNALS).await);
    let mut tablet = a.mobile_on("u", "tablet", &["crew"]).await;
    tablet.indicator("u", "crew", "recording", true).await;
    common::eventually("b's group endpoint to list u recording", || async {
        signalling(&b, "crew").await[1] == json!(["u"])
    })
    .await;
    a.signal("KILL").await;

    let mut phone = b.mobile_on("u", "phone", &["crew"]).await;
    phone.set_status("u", "invisible", None).await;
    assert_eq!(signalling(&b, "crew").await, [json!([]), json!([]), json!([])]);
}
