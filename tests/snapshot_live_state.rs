//! A dashboard opened mid-transmission sees who is talking, typing and recording, and each
//! group's counts, in its PRESENCE_SNAPSHOT: `indicators` and `groupCounts`, within its
//! scope, never an invisible user's. An indicator that ends after the snapshot follows it
//! as an INDICATOR_UPDATE. On every engine; on the shared ones, also from a router started
//! after the signals began (it reads them from the store) and one that relays them.

mod common;

use common::{Client, Engine, Router, Setup, map};
use presence_router::protocol::message_type::{START, START_ACK, STOP, STOP_ACK};
use rmpv::Value;
use serde_json::json;

on_every_engine!(
    a_dashboard_opened_mid_transmission_sees_the_talker_and_the_typist,
    a_dashboard_sees_only_the_signals_and_counts_of_its_groups,
    an_invisible_talker_is_not_in_the_snapshot,
    group_counts_split_online_away_and_dnd,
);

/// After an outage that emptied Redis, a router's fresh snapshot lists its own users'
/// indicators still live (the store lost them) and not another router's that ended
/// meanwhile (its end may never have arrived).
#[tokio::test]
async fn after_redis_returns_empty_the_fresh_snapshot_keeps_what_still_lives() {
    let mut setup = Setup::new(Engine::Redis).await;
    let (a, b) = (setup.router(&LONG_SIGNALS).await, setup.router(&LONG_SIGNALS).await);
    let mut typist = a.mobile_in("typist", &["crew"]).await;
    let mut talker = b.mobile_in("talker", &["crew"]).await;
    let mut member = b.mobile_in("member", &["crew"]).await;
    indicate(&mut typist, "typist", "typing", true).await;
    member.expect_indicator("typist", "typing", true).await;
    talker.send_frame(0, START, "talker", "crew", map(&[])).await;
    while talker.next_frame().await[1].as_u64() != Some(START_ACK.into()) {}
    member.expect_relayed(START, "talker", "crew").await;
    member.expect_indicator("talker", "talking", true).await;
    let (mut dashboard, _) = a.dashboard("dispatcher").await;

    setup.redis.as_mut().unwrap().kill().await;
    talker.send_frame(0, STOP, "talker", "crew", map(&[])).await;
    talker.expect(STOP_ACK).await;
    member.expect_relayed(STOP, "talker", "crew").await;
    setup.redis.as_mut().unwrap().spawn().await;

    // The fresh snapshot, then what follows it up to a marker that router B sends after
    // everything it may still have queued for the others (the talk's end among it).
    let mut shown = loop {
        let frame = dashboard.next_frame().await;
        if frame[1].as_u64() == Some(32) {
            break indicators(&frame);
        }
    };
    member.sync_after_outage("member").await;
    indicate(&mut member, "member", "recording", true).await;
    loop {
        let frame = dashboard.next_frame().await;
        match frame[1].as_u64() {
            // Another resync (the sequence check may notice the empty Redis too): it
            // replaces the view.
            Some(32) => {
                shown = indicators(&frame);
                continue;
            }
            Some(38) => {}
            _ => continue,
        }
        let payload = &frame[5];
        let entry = signal("crew", payload["userId"].as_str().unwrap(), payload["type"].as_str().unwrap());
        shown.retain(|live| *live != entry);
        if payload["isActive"].as_bool() == Some(true) {
            shown.push(entry.clone());
        }
        if entry == signal("crew", "member", "recording") {
            break;
        }
    }
    shown.sort();
    assert_eq!(shown, [signal("crew", "member", "recording"), signal("crew", "typist", "typing")]);
}

/// Indicators live longer than any test takes, so none lapses on its own mid-test.
const LONG_SIGNALS: [&str; 4] = ["--typing-ttl-ms", "600000", "--max-talk-ms", "600000"];

/// The snapshot's `indicators`, as `(group, user, type)`, sorted; each entry must carry a
/// timestamp.
fn indicators(snapshot: &Value) -> Vec<(String, String, String)> {
    let listed = snapshot[5]["indicators"].as_array().unwrap_or_else(|| panic!("no indicators in {snapshot}"));
    let mut got: Vec<(String, String, String)> = listed
        .iter()
        .map(|entry| {
            assert!(entry["timestamp"].as_u64().is_some_and(|t| t > 0), "a timestamp in {entry}");
            let field = |key: &str| entry[key].as_str().unwrap_or_else(|| panic!("{key} in {entry}")).to_string();
            (field("groupId"), field("userId"), field("type"))
        })
        .collect();
    got.sort();
    got
}

fn signal(group: &str, user: &str, kind: &str) -> (String, String, String) {
    (group.to_string(), user.to_string(), kind.to_string())
}

/// The snapshot's `groupCounts`, as JSON for comparison.
fn group_counts(snapshot: &Value) -> serde_json::Value {
    let counts = snapshot[5]["groupCounts"].as_map().unwrap_or_else(|| panic!("no groupCounts in {snapshot}"));
    let json = counts.iter().map(|(group, counts)| {
        let count = |key: &str| counts[key].as_u64().unwrap_or_else(|| panic!("{key} in {counts}"));
        let counts = json!({"online": count("online"), "away": count("away"), "dnd": count("dnd")});
        (group.as_str().expect("group ids are strings").to_string(), counts)
    });
    serde_json::Value::Object(json.collect())
}

/// Sends an INDICATOR and reads past what was relayed to the sender (a member too) up to
/// its ACK.
async fn indicate(client: &mut Client, user: &str, kind: &str, active: bool) {
    client.send_frame(0, 37, user, "crew", map(&[("type", kind.into()), ("isActive", active.into())])).await;
    while client.next_frame().await[1].as_u64() != Some(39) {}
}

/// On `router`, `talker` takes crew's floor and `typist` types there, which `member`
/// hears: the three, in that order.
async fn talking_and_typing(router: &Router) -> [Client; 3] {
    let mut talker = router.mobile_in("talker", &["crew"]).await;
    let mut typist = router.mobile_in("typist", &["crew"]).await;
    let mut member = router.mobile_in("member", &["crew"]).await;
    talker.send_frame(0, START, "talker", "crew", map(&[])).await;
    talker.expect(START_ACK).await;
    member.expect_relayed(START, "talker", "crew").await;
    member.expect_indicator("talker", "talking", true).await;
    indicate(&mut typist, "typist", "typing", true).await;
    member.expect_indicator("typist", "typing", true).await;
    [talker, typist, member]
}

/// Waits until the store lists both signals (its copy is written behind), so that a
/// router started now reads them.
async fn stored(router: &Router) {
    common::eventually("the store lists the talker and the typist", || async {
        let group = router.group("crew").await;
        group["talkingUsers"] == json!(["talker"]) && group["typingUsers"] == json!(["typist"])
    })
    .await;
}

async fn a_dashboard_opened_mid_transmission_sees_the_talker_and_the_typist(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&LONG_SIGNALS).await;
    let [_talker, mut typist, _member] = talking_and_typing(&router).await;
    let live = [signal("crew", "talker", "talking"), signal("crew", "typist", "typing")];

    let (mut dispatcher, snapshot) = router.dashboard("dispatcher").await;
    assert_eq!(indicators(&snapshot), live, "{snapshot}");
    let (_, snapshot) = router.dashboard_of("lead", &["crew"]).await;
    assert_eq!(indicators(&snapshot), live, "a dashboard of the group: {snapshot}");

    // A router that started after the signals began reads them from the store.
    let late = match engine {
        Engine::Memory => None,
        Engine::Redis | Engine::RedisCluster => {
            stored(&router).await;
            Some(setup.router(&LONG_SIGNALS).await)
        }
    };
    let mut late_dashboard = match &late {
        Some(late) => {
            let (dashboard, snapshot) = late.dashboard("elsewhere").await;
            assert_eq!(indicators(&snapshot), live, "read from the store: {snapshot}");
            Some(dashboard)
        }
        None => None,
    };

    // What ends after the snapshot follows it.
    indicate(&mut typist, "typist", "typing", false).await;
    dispatcher.expect_indicator("typist", "typing", false).await;
    if let Some(dashboard) = late_dashboard.as_mut() {
        dashboard.expect_indicator("typist", "typing", false).await;
    }
    let (_, snapshot) = router.dashboard("next").await;
    assert_eq!(indicators(&snapshot), [signal("crew", "talker", "talking")], "{snapshot}");
}

async fn a_dashboard_sees_only_the_signals_and_counts_of_its_groups(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&LONG_SIGNALS).await;
    let _crew = talking_and_typing(&router).await;
    let _other = router.mobile_in("other", &["yard"]).await;

    let (_, snapshot) = router.dashboard_of("yard-lead", &["yard"]).await;
    assert_eq!(indicators(&snapshot), [], "crew's signals are not the yard's: {snapshot}");
    assert_eq!(group_counts(&snapshot), json!({"yard": {"online": 1, "away": 0, "dnd": 0}}), "{snapshot}");
    let (_, snapshot) = router.dashboard_of("both", &["crew", "yard"]).await;
    assert_eq!(indicators(&snapshot).len(), 2, "{snapshot}");
    assert_eq!(
        group_counts(&snapshot),
        json!({"crew": {"online": 3, "away": 0, "dnd": 0}, "yard": {"online": 1, "away": 0, "dnd": 0}}),
        "{snapshot}"
    );
}

async fn an_invisible_talker_is_not_in_the_snapshot(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&LONG_SIGNALS).await;
    let mut ghost = router.mobile_in("ghost", &["crew"]).await;
    let mut typist = router.mobile_in("typist", &["crew"]).await;
    let mut member = router.mobile_in("member", &["crew"]).await;
    ghost.set_status("ghost", "invisible", None).await;
    ghost.send_frame(0, START, "ghost", "crew", map(&[])).await;
    ghost.expect(START_ACK).await;
    member.expect_relayed(START, "ghost", "crew").await;
    indicate(&mut ghost, "ghost", "recording", true).await;
    indicate(&mut typist, "typist", "typing", true).await;
    // The typist's start is the first indicator the member gets: none of the ghost's came.
    member.expect_indicator("typist", "typing", true).await;

    let (_, snapshot) = router.dashboard("dispatcher").await;
    assert_eq!(indicators(&snapshot), [signal("crew", "typist", "typing")], "{snapshot}");
    assert_eq!(group_counts(&snapshot), json!({"crew": {"online": 2, "away": 0, "dnd": 0}}), "{snapshot}");
}

async fn group_counts_split_online_away_and_dnd(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let _a = router.mobile_in("a", &["crew"]).await;
    let mut b = router.mobile_in("b", &["crew"]).await;
    b.set_status("b", "away", None).await;
    let mut c = router.mobile_in("c", &["crew", "yard"]).await;
    c.set_status("c", "dnd", None).await;
    let _d = router.mobile_in("d", &["crew", "yard"]).await;
    let mut e = router.mobile_in("e", &["yard"]).await;
    e.set_status("e", "invisible", None).await;
    let f = router.mobile_in("f", &["yard"]).await;
    f.close().await;

    let expected = json!({
        "crew": {"online": 2, "away": 1, "dnd": 1},
        "yard": {"online": 1, "away": 0, "dnd": 1},
    });
    // Each status change reaches the hub through the broker: wait for the last of them.
    common::eventually("the counts of every change", || async {
        let (_, snapshot) = router.dashboard("dispatcher").await;
        group_counts(&snapshot) == expected
    })
    .await;
    let (_, snapshot) = router.dashboard_of("lead", &["yard", "empty"]).await;
    assert_eq!(
        group_counts(&snapshot),
        json!({"yard": {"online": 1, "away": 0, "dnd": 1}, "empty": {"online": 0, "away": 0, "dnd": 0}}),
        "every group of the scope, an empty one too: {snapshot}"
    );
}
