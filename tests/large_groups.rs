//! Dashboards that choose their groups: SUBSCRIBE within the token's scope (in full, or by
//! counts only), UNSUBSCRIBE, and what they are sent while a 10k-member group churns: a
//! counts-only dashboard at most 10 GROUP_COUNTS a second, a full one every member's
//! final state, equal to the store's once the churn stops.

mod common;

use std::collections::HashMap;

use common::{Client, Engine, Router, SECRET, Setup, WAIT, assert_update, map, prometheus::metric};
use presence_router::auth::{Role, mint_hs256_in};
use rmpv::Value;
use tokio::{process::Command, time::Instant};

const SUBSCRIBE: u8 = 45;
const UNSUBSCRIBE: u8 = 46;
const GROUP_COUNTS: u8 = 47;
const GROUP_SNAPSHOT: u8 = 48;
const ACK: u8 = 39;

/// A dashboard whose token reads `groups` (everyone for `None`), with its first
/// PRESENCE_SNAPSHOT read.
async fn dashboard(router: &Router, user: &str, groups: Option<&[&str]>) -> Client {
    let token = mint_hs256_in(SECRET.as_bytes(), user, Role::Dashboard, groups, 3600).unwrap();
    let mut client = Client::connect(router.addr, &token, None).await;
    client.expect(32).await;
    client
}

/// SUBSCRIBE to `group` (`counts`: by its counts only, `interval_ms`: the interval or
/// window asked for); the frame that answers it. Updates may come first: a snapshot can be
/// followed by the changes decided while it was sent.
async fn subscribe(client: &mut Client, me: &str, group: &str, counts: bool, interval_ms: u64) -> Value {
    let payload = map(&[("counts", counts.into()), ("intervalMs", interval_ms.into())]);
    client
        .send_value(Value::Array(vec![0.into(), SUBSCRIBE.into(), me.into(), group.into(), "s1".into(), payload]))
        .await;
    loop {
        let frame = client.next_frame().await;
        if frame[1].as_u64() != Some(presence_router::protocol::message_type::PRESENCE_UPDATE.into()) {
            return frame;
        }
    }
}

/// The `[online, away, dnd, offline]` of a GROUP_COUNTS or GROUP_SNAPSHOT frame.
fn counts_of(frame: &Value) -> [u64; 4] {
    let counts = &frame[5]["counts"];
    ["online", "away", "dnd", "offline"].map(|key| counts[key].as_u64().expect("counts are numbers"))
}

async fn subscriptions_follow_the_tokens_scope(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut a = router.mobile_in("a", &["g1"]).await;
    let mut b = router.mobile_in("b", &["g2"]).await;
    let _c = router.mobile_in("c", &["g3"]).await;
    let mut dash = dashboard(&router, "dispatcher", Some(&["g1", "g2"])).await;

    // Outside the token's groups: refused, counted, and nothing else changes.
    let refused = subscribe(&mut dash, "dispatcher", "g3", false, 0).await;
    assert_eq!(refused[1].as_u64(), Some(33), "{refused}");
    assert_eq!((refused[4].as_str(), refused[5]["code"].as_str()), (Some("s1"), Some("not_in_scope")), "{refused}");
    let text = router.metrics().await;
    assert_eq!(metric(&text, "presence_group_subscriptions_total{result=\"not_in_scope\"}"), Some(1));
    assert_eq!(metric(&text, "presence_frame_errors_total{reason=\"not_in_scope\"}"), Some(1));

    // g1 in full: ACK, then g1's part of the view.
    assert_eq!(subscribe(&mut dash, "dispatcher", "g1", false, 0).await[1].as_u64(), Some(ACK.into()));
    let part = dash.expect(GROUP_SNAPSHOT).await;
    assert_eq!(part[5]["groupId"].as_str(), Some("g1"));
    let users: Vec<&str> = part[5]["users"].as_array().unwrap().iter().filter_map(|u| u["userId"].as_str()).collect();
    assert_eq!(users, ["a"], "only g1's members");
    assert_eq!(counts_of(&part), [1, 0, 0, 0]);

    // From now on only g1 is shown: b's change (g2) is not, a's is.
    b.set_status("b", "away", None).await;
    a.set_status("a", "dnd", None).await;
    assert_update(&dash.next_update().await, "a", "dnd");

    // g2 by its counts: ACK, then its counts at once.
    assert_eq!(subscribe(&mut dash, "dispatcher", "g2", true, 100).await[1].as_u64(), Some(ACK.into()));
    let counts = dash.expect(GROUP_COUNTS).await;
    assert_eq!((counts[5]["groupId"].as_str(), counts_of(&counts)), (Some("g2"), [0, 1, 0, 0]));

    // Unsubscribed from g1: a's changes stop; g2's counts still come.
    dash.send_frame(0, UNSUBSCRIBE, "dispatcher", "g1", Value::Nil).await;
    dash.expect(ACK).await;
    a.set_status("a", "online", None).await;
    b.set_status("b", "dnd", None).await;
    let counts = dash.expect(GROUP_COUNTS).await;
    assert_eq!((counts[5]["groupId"].as_str(), counts_of(&counts)), (Some("g2"), [0, 0, 1, 0]), "no update of a first");
    b.close().await;
    let counts = dash.expect(GROUP_COUNTS).await;
    assert_eq!(counts_of(&counts), [0, 0, 0, 1], "an offline member counts as offline");

    // Not subscribed (any more): refused.
    dash.send_frame(0, UNSUBSCRIBE, "dispatcher", "g1", Value::Nil).await;
    assert_eq!(dash.next_error().await["code"].as_str(), Some("not_subscribed"));
    let text = router.metrics().await;
    assert_eq!(metric(&text, "presence_group_subscriptions_total{result=\"full\"}"), Some(1));
    assert_eq!(metric(&text, "presence_group_subscriptions_total{result=\"counts\"}"), Some(1));
    assert_eq!(metric(&text, "presence_group_subscriptions_total{result=\"unsubscribed\"}"), Some(1));
}

/// A REFRESH whose token no longer names a watched group ends its subscription: the
/// dashboard is sent a snapshot of what it still watches, and nothing of the group.
async fn a_new_token_ends_subscriptions_outside_it(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut a = router.mobile_in("a", &["g1"]).await;
    let mut b = router.mobile_in("b", &["g2"]).await;
    let mut dash = dashboard(&router, "dispatcher", Some(&["g1", "g2"])).await;
    assert_eq!(subscribe(&mut dash, "dispatcher", "g1", false, 0).await[1].as_u64(), Some(ACK.into()));
    dash.expect(GROUP_SNAPSHOT).await;

    let narrower = mint_hs256_in(SECRET.as_bytes(), "dispatcher", Role::Dashboard, Some(&["g2"]), 3600).unwrap();
    dash.send_frame(0, 40, "dispatcher", "", map(&[("token", narrower.into())])).await;
    let snapshot = dash.expect(32).await;
    assert_eq!(snapshot[5]["count"].as_u64(), Some(0), "g1 is no longer watched: {snapshot}");
    dash.expect(ACK).await;
    let refused = subscribe(&mut dash, "dispatcher", "g1", false, 0).await;
    assert_eq!(refused[5]["code"].as_str(), Some("not_in_scope"), "{refused}");

    a.set_status("a", "dnd", None).await;
    assert_eq!(subscribe(&mut dash, "dispatcher", "g2", false, 0).await[1].as_u64(), Some(ACK.into()));
    dash.expect(GROUP_SNAPSHOT).await;
    b.set_status("b", "away", None).await;
    assert_update(&dash.next_update().await, "b", "away");
}

/// A user changing many times within a full dashboard's window reaches it in its last
/// state, its updates in growing versions (never an older state after a newer one), and
/// a later change of another member follows them.
async fn a_flapping_member_reaches_a_coalescing_dashboard_in_its_last_state(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut a = router.mobile_in("a", &["g1"]).await;
    let mut b = router.mobile_in("b", &["g1"]).await;
    let mut dash = dashboard(&router, "dispatcher", None).await;
    assert_eq!(subscribe(&mut dash, "dispatcher", "g1", false, 200).await[1].as_u64(), Some(ACK.into()));
    dash.expect(GROUP_SNAPSHOT).await;
    let statuses = ["away", "dnd", "online"];
    for n in 0..30 {
        a.set_status("a", statuses[n % 3], Some(&format!("n{n}"))).await;
    }
    a.set_status("a", "dnd", Some("final")).await;
    b.set_status("b", "away", None).await;
    let mut versions = Vec::new();
    loop {
        let update = dash.next_update().await;
        assert_eq!(update["userId"].as_str(), Some("a"), "a's last state comes before b's change: {update}");
        versions.push(update["version"].as_u64().unwrap());
        if update["statusText"].as_str() == Some("final") {
            assert_update(&update, "a", "dnd");
            break;
        }
    }
    assert!(versions.windows(2).all(|pair| pair[0] < pair[1]), "versions only grow: {versions:?}");
    assert_update(&dash.next_update().await, "b", "away");
}

/// A mobile is not a dashboard: it chooses no groups to watch.
async fn only_dashboards_subscribe(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut phone = router.mobile_in("p", &["g1"]).await;
    let refused = subscribe(&mut phone, "p", "g1", true, 100).await;
    assert_eq!(refused[5]["code"].as_str(), Some("not_allowed"), "{refused}");
}

mod memory {
    #[tokio::test]
    async fn subscriptions_follow_the_tokens_scope() {
        super::subscriptions_follow_the_tokens_scope(super::Engine::Memory).await
    }
    #[tokio::test]
    async fn only_dashboards_subscribe() {
        super::only_dashboards_subscribe(super::Engine::Memory).await
    }
    #[tokio::test]
    async fn a_flapping_member_reaches_a_coalescing_dashboard_in_its_last_state() {
        super::a_flapping_member_reaches_a_coalescing_dashboard_in_its_last_state(super::Engine::Memory).await
    }
    #[tokio::test]
    async fn a_new_token_ends_subscriptions_outside_it() {
        super::a_new_token_ends_subscriptions_outside_it(super::Engine::Memory).await
    }
}

mod redis {
    #[tokio::test]
    async fn subscriptions_follow_the_tokens_scope() {
        super::subscriptions_follow_the_tokens_scope(super::Engine::Redis).await
    }
    #[tokio::test]
    async fn only_dashboards_subscribe() {
        super::only_dashboards_subscribe(super::Engine::Redis).await
    }
    #[tokio::test]
    async fn a_flapping_member_reaches_a_coalescing_dashboard_in_its_last_state() {
        super::a_flapping_member_reaches_a_coalescing_dashboard_in_its_last_state(super::Engine::Redis).await
    }
    #[tokio::test]
    async fn a_new_token_ends_subscriptions_outside_it() {
        super::a_new_token_ends_subscriptions_outside_it(super::Engine::Redis).await
    }
}

/// Runs the load tool to its end.
fn load(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_presence-load"));
    command.args(args).stdout(std::process::Stdio::null());
    command
}

/// A dashboard's view of one group's members: status and version by user, from a
/// GROUP_SNAPSHOT and the PRESENCE_UPDATEs after it (older versions ignored).
#[derive(Default)]
struct Members(HashMap<String, (String, u64)>);

impl Members {
    fn apply(&mut self, frame: &Value) {
        match frame[1].as_u64() {
            // A resync's snapshot (a busy machine's Redis timing out) replaces the view.
            Some(32 | 48) => {
                if frame[1].as_u64() == Some(32) {
                    self.0.clear();
                }
                for user in frame[5]["users"].as_array().unwrap() {
                    let id = user["userId"].as_str().unwrap().to_string();
                    self.0.insert(id, (user["status"].as_str().unwrap().into(), user["version"].as_u64().unwrap()));
                }
            }
            Some(31) => {
                let update = &frame[5];
                let (id, version) = (update["userId"].as_str().unwrap(), update["version"].as_u64().unwrap());
                if self.0.get(id).is_none_or(|(_, known)| *known < version) {
                    self.0.insert(id.into(), (update["status"].as_str().unwrap().into(), version));
                }
            }
            _ => {}
        }
    }

    fn status(&self, user: &str) -> &str {
        self.0.get(user).map_or("offline", |(status, _)| status.as_str())
    }
}

/// A 10k-member group where 1,000 members change a second (`presence-load churn`, through
/// the Redis the router reads): a counts-only dashboard gets at most 10 GROUP_COUNTS a
/// second and, after the churn, the store's counts; a full dashboard gets every member's
/// final state, the store's.
#[tokio::test]
async fn a_churning_10k_group_reaches_counts_and_full_dashboards_bounded_and_final() {
    const USERS: &str = "10000";
    let setup = Setup::new(Engine::Redis).await;
    let port = setup.redis.as_ref().unwrap().port.to_string();
    // Seeding leases the same sessions again when repeated: a busy machine's Redis may
    // answer past the tool's command timeout, so it gets three tries.
    let mut seeded = false;
    for _ in 0..3 {
        seeded =
            load(&["seed", "--redis-port", &port, "--users", USERS, "--groups", "1"]).status().await.unwrap().success();
        if seeded {
            break;
        }
    }
    assert!(seeded, "presence-load seed");
    let router = setup.router(&["--api-ids-per-second", "1000000"]).await;
    let mut counts = dashboard(&router, "counter", None).await;
    let mut full = dashboard(&router, "watcher", None).await;
    assert_eq!(subscribe(&mut counts, "counter", "g0", true, 100).await[1].as_u64(), Some(ACK.into()));
    assert_eq!(counts_of(&counts.expect(GROUP_COUNTS).await), [10_000, 0, 0, 0]);
    assert_eq!(subscribe(&mut full, "watcher", "g0", false, 100).await[1].as_u64(), Some(ACK.into()));
    let mut members = Members::default();
    members.apply(&full.expect(GROUP_SNAPSHOT).await);
    assert_eq!(members.0.len(), 10_000);

    let started = Instant::now();
    let mut churn =
        load(&["churn", "--redis-port", &port, "--users", USERS, "--groups", "1", "--seconds", "5"]).spawn().unwrap();
    let (mut count_frames, mut last_counts, mut full_frames) = (0u64, [0; 4], 0u64);
    let churned = loop {
        tokio::select! {
            status = churn.wait() => break status.unwrap(),
            frame = counts.next_frame() => {
                if frame[1].as_u64() != Some(GROUP_COUNTS.into()) {
                    assert_eq!(frame[1].as_u64(), Some(32), "counts only, or a resync's snapshot: {frame}");
                    continue;
                }
                count_frames += 1;
                last_counts = counts_of(&frame);
            }
            frame = full.next_frame() => {
                members.apply(&frame);
                full_frames += 1;
            }
        }
    };
    assert!(churned.success(), "presence-load churn");
    let seconds = started.elapsed().as_secs_f64();
    // At most one a 100 ms, and one at once: a generous bound, no timing of any one frame.
    assert!(count_frames as f64 <= 10.0 * seconds + 2.0, "{count_frames} GROUP_COUNTS in {seconds:.1} s");
    assert!(count_frames >= 5, "the counts follow the churn: {count_frames} in {seconds:.1} s");
    assert!(full_frames > 0);

    // The store's final state, once the churn stopped.
    let deadline = Instant::now() + WAIT * 4;
    let group = loop {
        let (status, body) = router.get("/api/groups/g0/presence").await;
        if status == 200 {
            break body;
        }
        // A busy machine's Redis may answer 10k participants past the command timeout.
        assert!(Instant::now() < deadline, "the group's presence: {body}");
    };
    let participants = group["participants"].as_array().unwrap();
    let stored: HashMap<&str, &str> =
        participants.iter().map(|p| (p["userId"].as_str().unwrap(), p["status"].as_str().unwrap())).collect();
    let count = |status: &str| stored.values().filter(|s| **s == status).count() as u64;
    let expected = [count("online"), count("away"), count("dnd"), count("offline")];
    assert_eq!(expected.iter().sum::<u64>(), 10_000);
    // Each dashboard reaches it with what it is sent next (each frame within WAIT).
    while last_counts != expected {
        let frame = counts.next_frame().await;
        if frame[1].as_u64() == Some(GROUP_COUNTS.into()) {
            last_counts = counts_of(&frame);
        }
    }
    let differs = |members: &Members| stored.iter().filter(|(user, status)| members.status(user) != **status).count();
    let deadline = Instant::now() + WAIT;
    while differs(&members) > 0 {
        let frame = tokio::time::timeout_at(deadline, full.next_frame()).await;
        members.apply(&frame.unwrap_or_else(|_| panic!("{} members differ from the store", differs(&members))));
    }
}
