//! A user's groups are the union of its live sessions' groups: a second device in other
//! groups adds them, and a device that closes, lapses or refreshes its token to other
//! groups takes away only what no other live session of the user still names. Dashboards
//! scoped to a group see the user online exactly while one of its sessions is in that
//! group (never a ghost, never a false offline), and the group endpoint agrees. On both
//! engines, and across two routers on Redis.

mod common;

use std::time::Duration;

use common::{Client, Engine, Router, SECRET, Setup, View, map};
use presence_router::{
    auth::{Role, mint_hs256_in},
    protocol::message_type::{ACK, REFRESH},
};
use tokio::{sync::oneshot, task::JoinHandle};

/// The user with several devices.
const USER: &str = "u";
/// Every group a device of the user is ever in; each has a dashboard scoped to it.
const GROUPS: [&str; 3] = ["g1", "g2", "g3"];

fn mobile_token(user: &str, groups: &[&str]) -> String {
    mint_hs256_in(SECRET.as_bytes(), user, Role::Mobile, Some(groups), 3600).unwrap()
}

/// A device of [`USER`] in `groups`, registered by the router.
async fn device(router: &Router, device: &str, groups: &[&str]) -> Client {
    let mut client = Client::connect(router.addr, &mobile_token(USER, groups), Some(device)).await;
    client.sync(USER).await;
    client
}

/// A dashboard scoped to one group, and what it has been shown of [`USER`].
struct Desk {
    group: &'static str,
    client: Client,
    view: View,
    /// [`USER`]'s statuses in the updates read since the last [`Desk::catch_up`].
    seen: Vec<String>,
}

impl Desk {
    async fn open(router: &Router, group: &'static str) -> Desk {
        let (client, snapshot) = router.dashboard_of(&format!("desk-{group}"), &[group]).await;
        let mut view = View::default();
        view.apply(&snapshot);
        Desk { group, client, view, seen: Vec::new() }
    }

    fn online(&self) -> bool {
        self.view.online.contains_key(USER)
    }

    /// Reads and applies one frame.
    async fn read(&mut self) -> rmpv::Value {
        let frame = self.client.next_frame().await;
        self.view.apply(&frame);
        if frame[1].as_u64() == Some(31) && frame[5]["userId"].as_str() == Some(USER) {
            self.seen.push(frame[5]["status"].as_str().unwrap_or_default().to_string());
        }
        frame
    }

    /// Reads until [`USER`] is shown `online` (or not).
    async fn until(&mut self, online: bool) {
        while self.online() != online {
            self.read().await;
        }
    }

    /// Reads up to `marker` coming online: everything decided before it was sent first.
    /// Returns [`USER`]'s statuses shown meanwhile.
    async fn catch_up(&mut self, marker: &str) -> Vec<String> {
        loop {
            let frame = self.read().await;
            if frame[1].as_u64() == Some(31) && frame[5]["userId"].as_str() == Some(marker) {
                return std::mem::take(&mut self.seen);
            }
        }
    }
}

/// The desks, and the steps taken so far (each step's marker user is new).
struct Watch {
    desks: Vec<Desk>,
    steps: usize,
}

impl Watch {
    /// A desk for each of [`GROUPS`] on `router`.
    async fn open(router: &Router) -> Watch {
        let mut desks = Vec::new();
        for group in GROUPS {
            desks.push(Desk::open(router, group).await);
        }
        Watch { desks, steps: 0 }
    }

    /// Asserts, after `what`, that [`USER`] is online on the desks of `online_in` only,
    /// that a desk that showed it online before and after never showed it offline in
    /// between, and that the group endpoint of `api` agrees. A marker user in every group
    /// comes online on `markers` (the router of a dashboard), so each desk has read all
    /// that was decided before.
    async fn expect(&mut self, what: &str, markers: &Router, api: &Router, online_in: &[&str]) {
        self.steps += 1;
        let marker = format!("marker-{}", self.steps);
        let _marker = markers.mobile_in(&marker, &GROUPS).await;
        for desk in &mut self.desks {
            let before = desk.online();
            let seen = desk.catch_up(&marker).await;
            let expected = online_in.contains(&desk.group);
            assert_eq!(desk.online(), expected, "after {what}: desk of {} shows {USER} online", desk.group);
            if before && expected {
                assert!(!seen.iter().any(|s| s == "offline"), "after {what}: desk of {} flashed offline", desk.group);
            }
        }
        for group in GROUPS {
            let body = api.group(group).await;
            let status = body["participants"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["userId"] == USER)
                .map(|p| p["status"].as_str().unwrap().to_string());
            let expected = online_in.contains(&group);
            assert_eq!(status.as_deref() == Some("online"), expected, "after {what}: {group} lists {USER}: {body}");
        }
    }
}

/// A client heartbeating in the background every 200 ms (leases last a second in these
/// tests), its incoming frames drained, until its connection ends or [`Keeper::stop`]
/// hands it back.
struct Keeper {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Client>,
}

impl Keeper {
    fn start(mut client: Client, user: &'static str) -> Keeper {
        use futures_util::StreamExt;
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(200));
            let mut open = true;
            loop {
                tokio::select! {
                    _ = &mut stopped => return client,
                    _ = ticks.tick(), if open => {
                        open = client.try_send(presence_router::protocol::heartbeat_frame(user)).await;
                    }
                    message = client.ws.next(), if open => open = matches!(message, Some(Ok(_))),
                }
            }
        });
        Keeper { stop, task }
    }

    async fn stop(self) -> Client {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}

/// Leases of a second, renewed by any heartbeat.
const SHORT_LEASES: [&str; 4] = ["--presence-ttl", "1", "--heartbeat-min-interval-ms", "0"];

async fn each_device_keeps_its_groups_while_it_lives(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut watch = Watch::open(&router).await;

    let phone = device(&router, "phone", &["g1"]).await;
    watch.expect("the phone connected in g1", &router, &router, &["g1"]).await;
    let tablet = device(&router, "tablet", &["g2"]).await;
    watch.expect("the tablet connected in g2", &router, &router, &["g1", "g2"]).await;

    phone.close().await;
    watch.expect("the phone closed", &router, &router, &["g2"]).await;
    let _phone = device(&router, "phone", &["g1"]).await;
    watch.expect("the phone came back", &router, &router, &["g1", "g2"]).await;

    tablet.close().await;
    watch.expect("the tablet closed", &router, &router, &["g1"]).await;
}

async fn a_lapsed_device_takes_only_its_groups_away(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&SHORT_LEASES).await;
    let mut watch = Watch::open(&router).await;

    // The phone goes silent at once (its socket stays open); the tablet keeps heartbeating.
    let _phone = device(&router, "phone", &["g1"]).await;
    let tablet = Keeper::start(device(&router, "tablet", &["g2"]).await, USER);
    watch.desks[0].until(true).await;
    watch.desks[0].until(false).await;
    watch.expect("the phone's lease lapsed", &router, &router, &["g2"]).await;

    let phone = Keeper::start(device(&router, "phone", &["g1"]).await, USER);
    watch.expect("the phone came back", &router, &router, &["g1", "g2"]).await;
    let _silent_tablet = tablet.stop().await;
    watch.desks[1].until(false).await;
    watch.expect("the tablet went silent", &router, &router, &["g1"]).await;
    phone.stop().await;
}

async fn a_refresh_moves_only_that_devices_groups(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&[]).await;
    let mut watch = Watch::open(&router).await;
    let _phone = device(&router, "phone", &["g1"]).await;
    let mut tablet = device(&router, "tablet", &["g2"]).await;
    watch.expect("both devices connected", &router, &router, &["g1", "g2"]).await;

    tablet.send_frame(0, REFRESH, USER, "", map(&[("token", mobile_token(USER, &["g3"]).into())])).await;
    tablet.expect(ACK).await;
    watch.expect("the tablet's token moved it to g3", &router, &router, &["g1", "g3"]).await;
    tablet.send_frame(0, REFRESH, USER, "", map(&[("token", mobile_token(USER, &["g1"]).into())])).await;
    tablet.expect(ACK).await;
    watch.expect("the tablet's token moved it to g1", &router, &router, &["g1"]).await;
}

on_every_engine!(
    each_device_keeps_its_groups_while_it_lives,
    a_lapsed_device_takes_only_its_groups_away,
    a_refresh_moves_only_that_devices_groups,
);

/// Device 1 on router A, device 2 on router B, the dashboards on B: a close on A, and
/// then A killed (its session lapses, swept by B), each take only device 1's group away.
#[tokio::test]
async fn devices_on_two_routers_each_keep_their_groups() {
    let setup = Setup::new(Engine::Redis).await;
    let (mut a, b) = (setup.router(&SHORT_LEASES).await, setup.router(&SHORT_LEASES).await);
    let mut watch = Watch::open(&b).await;
    let phone = Keeper::start(device(&a, "phone", &["g1"]).await, USER);
    let _tablet = Keeper::start(device(&b, "tablet", &["g2"]).await, USER);
    watch.expect("a phone on A and a tablet on B", &b, &a, &["g1", "g2"]).await;

    phone.stop().await.close().await;
    watch.expect("the phone on A closed", &b, &b, &["g2"]).await;

    let _phone = Keeper::start(device(&a, "phone", &["g1"]).await, USER);
    watch.expect("the phone came back on A", &b, &a, &["g1", "g2"]).await;
    a.signal("KILL").await;
    watch.desks[0].until(false).await;
    watch.expect("A died and the phone's lease lapsed", &b, &b, &["g2"]).await;
}
