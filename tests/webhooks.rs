//! Webhooks: every transition POSTed to `--webhook-url` from the change log, at least
//! once and in version order per user, to a receiver inside the test that fails, answers
//! slowly or hangs; delivery taken over when its router is killed; dead letters after the
//! retry horizon; signed; and never holding up presence.

mod common;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post};
use common::{Engine, Router, Setup, WAIT, eventually, openapi::SPEC, prometheus::metric};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::Notify;

on_every_engine!(
    events_go_to_the_dead_letters_after_the_retry_horizon,
    readyz_and_presence_are_unaffected_by_a_receiver_that_hangs,
);

/// Several routers share the engine: one to kill, one to take over.
mod takeover {
    use super::{Engine, every_transition_arrives_in_order_when_the_delivering_router_is_killed as run};

    #[tokio::test]
    async fn redis() {
        run(Engine::Redis).await
    }

    #[tokio::test]
    async fn redis_cluster() {
        run(Engine::RedisCluster).await
    }
}

/// The receiver's signing secret (32 bytes or more, as the router requires).
const HOOK_SECRET: &str = "webhook-secret-of-at-least-32-bytes";

/// What the receiving server does with each POST.
#[derive(Default)]
struct Behaviour {
    /// POSTs still to answer 500 before accepting.
    failures: AtomicUsize,
    /// Each POST is answered this late.
    delay: Duration,
    /// Never answer.
    hang: bool,
    /// Take the first half of the next POST's events, then hold its answer until
    /// `release`.
    holding: AtomicBool,
    /// A POST is held.
    held: Notify,
    release: Notify,
}

#[derive(Default)]
struct Inbox {
    behaviour: Behaviour,
    /// Bodies of accepted POSTs, in the order they were accepted.
    batches: Mutex<Vec<Value>>,
    /// The ids among them, and how many events they held.
    ids: Mutex<HashSet<String>>,
    accepted: AtomicUsize,
    /// POSTs whose signature did not verify, or was missing.
    bad_signatures: AtomicUsize,
    /// POSTs received at all.
    posts: AtomicUsize,
    arrived: Notify,
}

/// A webhook receiver on 127.0.0.1:0 that checks each POST's signature.
struct Receiver {
    inbox: Arc<Inbox>,
    url: String,
}

impl Receiver {
    async fn start(behaviour: Behaviour) -> Receiver {
        let inbox = Arc::new(Inbox { behaviour, ..Inbox::default() });
        let app = axum::Router::new().route("/hook", post(receive)).with_state(inbox.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { inbox, url: format!("http://{addr}/hook") }
    }

    /// The router flags that deliver here, signed, with short waits.
    fn flags(&self) -> Vec<String> {
        [
            "--webhook-url",
            &self.url,
            "--webhook-secret",
            HOOK_SECRET,
            "--webhook-batch-wait-ms",
            "20",
            "--webhook-backoff-ms",
            "20",
        ]
        .map(String::from)
        .to_vec()
    }

    /// The events of accepted POSTs, in the order accepted.
    fn events(&self) -> Vec<Value> {
        let batches = self.inbox.batches.lock().unwrap();
        batches.iter().flat_map(|batch| batch["events"].as_array().expect("an events array").clone()).collect()
    }

    /// Waits until the accepted events satisfy `done`.
    /// Waits until `done(events accepted, distinct ids among them)`; returns the events.
    async fn until(&self, what: &str, wait: Duration, done: impl Fn(usize, usize) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let arrived = self.inbox.arrived.notified();
            let accepted = self.inbox.accepted.load(Ordering::SeqCst);
            let distinct = self.inbox.ids.lock().unwrap().len();
            if done(accepted, distinct) {
                return self.events();
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                tokio::time::timeout(left, arrived).await.is_ok(),
                "timed out waiting for {what}: {accepted} events accepted, {distinct} distinct"
            );
        }
    }
}

impl Inbox {
    /// Records an accepted batch.
    fn accept(&self, batch: Value) {
        let events = batch["events"].as_array().expect("an events array");
        let mut ids = self.ids.lock().unwrap();
        ids.extend(events.iter().map(|e| e["id"].as_str().expect("an id").to_string()));
        self.accepted.fetch_add(events.len(), Ordering::SeqCst);
        self.batches.lock().unwrap().push(batch);
        self.arrived.notify_waiters();
    }
}

async fn receive(State(inbox): State<Arc<Inbox>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    inbox.posts.fetch_add(1, Ordering::SeqCst);
    if !signed(&headers, &body) {
        inbox.bad_signatures.fetch_add(1, Ordering::SeqCst);
    }
    let behaviour = &inbox.behaviour;
    if behaviour.holding.swap(false, Ordering::SeqCst) {
        // Processes the first half of the batch, then is cut off.
        let batch: Value = serde_json::from_slice(&body).expect("a JSON body");
        let events = batch["events"].as_array().expect("an events array");
        inbox.accept(serde_json::json!({ "events": events[..events.len() / 2] }));
        behaviour.held.notify_one();
        behaviour.release.notified().await;
        return StatusCode::OK;
    }
    if behaviour.hang {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(behaviour.delay).await;
    if behaviour.failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    inbox.accept(serde_json::from_slice(&body).expect("a JSON body"));
    StatusCode::OK
}

/// Whether `X-Presence-Signature: t=<unix s>,v1=<hex>` is the HMAC-SHA256 of `t.body`
/// under [`HOOK_SECRET`], with a timestamp of the last minute.
fn signed(headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(header) = headers.get("x-presence-signature").and_then(|v| v.to_str().ok()) else { return false };
    let Some((t, v1)) = header.split_once(',') else { return false };
    let (Some(t), Some(v1)) = (t.strip_prefix("t="), v1.strip_prefix("v1=")) else { return false };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    if t.parse::<u64>().map_or(true, |t| t.abs_diff(now) > 60) {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    expected == v1
}

/// Each user's versions, in the order first delivered (a receiver dropping ids it has
/// seen), and how many events repeated an id already delivered.
fn first_deliveries(events: &[Value]) -> (HashMap<String, Vec<u64>>, usize) {
    let mut seen = HashSet::new();
    let mut users: HashMap<String, Vec<u64>> = HashMap::new();
    let mut repeats = 0;
    for event in events {
        let id = event["id"].as_str().expect("an id").to_string();
        let (user, version) = (event["userId"].as_str().unwrap(), event["version"].as_u64().unwrap());
        assert_eq!(id, format!("{user}:{version}"), "the id is user:version");
        if seen.insert(id) {
            users.entry(user.to_string()).or_default().push(version);
        } else {
            repeats += 1;
        }
    }
    (users, repeats)
}

/// A router's metric series, 0 when absent.
async fn series(router: &Router, name: &str) -> u64 {
    metric(&common::prometheus::scrape(router).await, name).unwrap_or(0)
}

/// How many shards the setup's change log has: one per Redis Cluster shard (the
/// default number), else one.
fn shards(setup: &Setup) -> u64 {
    if setup.cluster.is_some() { presence_router::engine::redis::DEFAULT_CLUSTER_SHARDS as u64 } else { 1 }
}

/// Users, and the status changes each makes after coming online: 10,000 transitions with
/// the online ones.
const USERS: usize = 50;
const CHANGES: usize = 199;
/// POSTs the receiver fails before accepting, at the start and again after the kill.
const FAILURES: usize = 6;

/// 10,000 transitions while the receiver fails its first POSTs and answers each slowly;
/// the router delivering them is SIGKILLed mid-way: another router takes its shards over,
/// sends what it had not settled, and every transition arrives, each user's in version
/// order, none lost, every POST signed; the survivor counts its retries and lag.
async fn every_transition_arrives_in_order_when_the_delivering_router_is_killed(engine: Engine) {
    let setup = Setup::new(engine).await;
    let receiver = Receiver::start(Behaviour {
        failures: AtomicUsize::new(FAILURES),
        delay: Duration::from_millis(15),
        ..Behaviour::default()
    })
    .await;
    let mut flags = receiver.flags();
    flags.extend(["--frame-rate", "1000", "--frame-burst", "1000"].map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let shards = shards(&setup);

    // The first router takes every shard's lease before the second starts.
    let mut deliverer = setup.router(&flags).await;
    eventually("the first router to deliver every shard", || async {
        series(&deliverer, "presence_webhook_shards").await == shards
    })
    .await;
    let survivor = setup.router(&flags).await;
    assert_eq!(series(&survivor, "presence_webhook_shards").await, 0, "the shards are taken");

    let started = tokio::time::Instant::now();
    let changes = (0..USERS).map(|n| {
        let survivor = &survivor;
        async move {
            let user = format!("driver-{n}");
            let mut mobile = survivor.mobile_in(&user, &["fleet"]).await;
            for change in 0..CHANGES {
                let status = if change % 2 == 0 { "away" } else { "online" };
                mobile.set_status(&user, status, None).await;
            }
            mobile
        }
    });
    let all = USERS * (CHANGES + 1);
    let (mobiles, _) = tokio::join!(futures_util::future::join_all(changes), async {
        receiver.until("a third of the events", WAIT * 4, |accepted, _| accepted >= all / 3).await;
        // Killed with a batch in flight, half of which the receiver took, unanswered.
        let behaviour = &receiver.inbox.behaviour;
        behaviour.holding.store(true, Ordering::SeqCst);
        tokio::time::timeout(WAIT, behaviour.held.notified()).await.expect("a POST held");
        deliverer.signal("KILL").await;
        behaviour.failures.store(FAILURES, Ordering::SeqCst);
        behaviour.release.notify_one();
    });

    let events = receiver.until("every transition", WAIT * 4, |_, distinct| distinct >= all).await;
    let (users, repeats) = first_deliveries(&events);
    assert!(repeats > 0, "the batch in flight at the kill is sent again by the router that took over");
    // Its second half arrives only that way, and before anything newer of its users.
    assert_eq!(users.len(), USERS);
    for (user, versions) in &users {
        assert_eq!(versions.len(), CHANGES + 1, "{user}: every transition delivered");
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{user}: in version order: {versions:?}");
    }
    let statuses: Vec<&str> =
        events.iter().filter(|e| e["userId"] == "driver-0").map(|e| e["status"].as_str().unwrap()).collect();
    assert_eq!(statuses[..3], ["online", "away", "online"], "the online, then each change");
    assert_eq!(receiver.inbox.bad_signatures.load(Ordering::SeqCst), 0, "every POST signed");
    let text = common::prometheus::scrape(&survivor).await;
    let lag = |part: &str| {
        text.lines().find_map(|l| l.strip_prefix(&format!("presence_webhook_lag_seconds_{part} "))?.parse::<f64>().ok())
    };
    eprintln!(
        "{all} transitions delivered {:.1} s after the first: {} POSTs, {} events accepted, {repeats} sent again \
         after the kill; the survivor's mean lag {:.2} s over {} events",
        started.elapsed().as_secs_f64(),
        receiver.inbox.posts.load(Ordering::SeqCst),
        events.len(),
        lag("sum").unwrap_or(0.0) / lag("count").unwrap_or(1.0),
        lag("count").unwrap_or(0.0),
    );

    assert_eq!(metric(&text, "presence_webhook_shards"), Some(shards), "the survivor took every shard over");
    assert!(metric(&text, "presence_webhook_retries_total").unwrap() >= FAILURES as u64, "{text}");
    assert!(metric(&text, "presence_webhook_events_total{result=\"delivered\"}").unwrap() > 0);
    assert_eq!(metric(&text, "presence_webhook_events_total{result=\"dead_letter\"}"), Some(0));
    assert_eq!(metric(&text, "presence_webhook_events_total{result=\"trimmed\"}"), Some(0));
    assert!(metric(&text, "presence_webhook_lag_seconds_count").unwrap() > 0, "lag is measured");
    drop(mobiles);
}

/// A receiver that always fails: each batch is retried until the retry horizon, then its
/// events go to the dead letters (a stream per shard on Redis), counted; nothing is left
/// pending, and delivery goes on with the next batch.
async fn events_go_to_the_dead_letters_after_the_retry_horizon(engine: Engine) {
    let setup = Setup::new(engine).await;
    let receiver = Receiver::start(Behaviour { failures: AtomicUsize::new(usize::MAX), ..Behaviour::default() }).await;
    let mut flags = receiver.flags();
    flags.extend(["--webhook-retry-horizon-ms", "300"].map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let router = setup.router(&flags).await;
    let shards = shards(&setup);
    eventually("the router to deliver", || async { series(&router, "presence_webhook_shards").await == shards }).await;

    let mobile = router.mobile_in("lost-driver", &["fleet"]).await;
    mobile.close().await;
    eventually("both transitions in the dead letters", || async {
        series(&router, "presence_webhook_events_total{result=\"dead_letter\"}").await == 2
    })
    .await;
    assert!(series(&router, "presence_webhook_retries_total").await >= 1);
    assert_eq!(series(&router, "presence_webhook_events_total{result=\"delivered\"}").await, 0);
    assert!(receiver.inbox.posts.load(Ordering::SeqCst) >= 2, "tried more than once");
    if let Some(redis) = &setup.redis {
        let mut conn = redis.client().get_multiplexed_async_connection().await.unwrap();
        let dead: Vec<(String, HashMap<String, String>)> =
            ::redis::cmd("XRANGE").arg("presence:webhook:dead").arg("-").arg("+").query_async(&mut conn).await.unwrap();
        let kept: Vec<(String, String, &str)> = dead
            .iter()
            .map(|(_, fields)| {
                let event: Value = serde_json::from_str(&fields["event"]).expect("the event's JSON");
                assert!(SPEC.accepts("/components/schemas/WebhookEvent", &event), "{event}");
                (event["userId"].to_string(), event["status"].to_string(), fields["reason"].as_str())
            })
            .collect();
        let driver = || "\"lost-driver\"".to_string();
        assert_eq!(kept, [(driver(), "\"online\"".into(), "HTTP 500"), (driver(), "\"offline\"".into(), "HTTP 500")]);
        let pending: (u64, ::redis::Value, ::redis::Value, ::redis::Value) = ::redis::cmd("XPENDING")
            .arg("presence:log")
            .arg(presence_router::engine::redis::WEBHOOK_GROUP)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(pending.0, 0, "nothing left pending");
    }
}

/// The memory engine (one router, no Redis) delivers from its own log: each transition
/// kind once, in order, with the fields docs/openapi.yaml describes, signed.
#[tokio::test]
async fn a_lone_router_delivers_every_kind_of_transition_with_its_fields() {
    let receiver = Receiver::start(Behaviour::default()).await;
    let flags = receiver.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let router = Setup::new(Engine::Memory).await.router(&flags).await;
    let mut mobile = router.mobile_in("courier", &["north", "south"]).await;
    // Chosen over HTTP, with an activity: the event carries it as the API shows it.
    let bearer = format!("Bearer {}", common::token("courier", presence_router::auth::Role::Mobile));
    let body = r#"{"status": "dnd", "text": "driving", "activity": {"type": "driving", "name": "Route 9"}}"#;
    let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
    let (status, answer) = common::http(router.addr, "POST", "/api/presence/me/status", &headers, body).await;
    assert_eq!(status, 200, "{answer}");
    mobile.set_status("courier", "invisible", None).await;
    mobile.set_status("courier", "online", None).await;
    mobile.close().await;

    let events = receiver.until("five transitions", WAIT, |accepted, _| accepted >= 5).await;
    let seen: Vec<(&str, &str)> =
        events.iter().map(|e| (e["status"].as_str().unwrap(), e["cause"].as_str().unwrap())).collect();
    assert_eq!(
        seen,
        [
            ("online", "connect"),
            ("dnd", "status"),
            ("offline", "status"),
            ("online", "status"),
            ("offline", "disconnect")
        ]
    );
    let versions: Vec<u64> = events.iter().map(|e| e["version"].as_u64().unwrap()).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    let dnd = &events[1];
    assert_eq!(dnd["id"].as_str().unwrap(), format!("courier:{}", versions[1]));
    assert_eq!((dnd["userId"].as_str(), dnd["statusText"].as_str()), (Some("courier"), Some("driving")));
    assert_eq!(dnd["groups"], serde_json::json!(["north", "south"]));
    assert_eq!(dnd["activity"], answer["user"]["activity"], "{dnd}");
    assert_eq!(dnd["activity"]["type"].as_str(), Some("driving"));
    assert!(dnd["timestamp"].as_u64().is_some() && dnd["lastSeen"].as_u64().is_some());
    for batch in receiver.inbox.batches.lock().unwrap().iter() {
        assert!(SPEC.accepts("/components/schemas/WebhookBatch", batch), "{batch}");
    }
    assert_eq!(receiver.inbox.bad_signatures.load(Ordering::SeqCst), 0);
}

/// A receiver that never answers holds up only webhooks: the batch stays in flight (and
/// would be sent again), while `/readyz` answers 200, mobiles connect and the API answers.
async fn readyz_and_presence_are_unaffected_by_a_receiver_that_hangs(engine: Engine) {
    let setup = Setup::new(engine).await;
    let receiver = Receiver::start(Behaviour { hang: true, ..Behaviour::default() }).await;
    let mut flags = receiver.flags();
    flags.extend(["--webhook-timeout-ms", "600000"].map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let router = setup.router(&flags).await;
    let _first = router.mobile_in("first", &["fleet"]).await;
    eventually("a batch stuck in flight", || async { series(&router, "presence_webhook_pending").await >= 1 }).await;

    let _second = router.mobile_in("second", &["fleet"]).await;
    for _ in 0..3 {
        let (status, body) = router.get("/readyz").await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(router.user("second").await["status"], "online");
    assert!(receiver.events().is_empty());
    assert_eq!(series(&router, "presence_webhook_events_total{result=\"delivered\"}").await, 0);
}

/// The change log keeps `--change-log-entries` per shard (Redis: a few more): what a
/// receiver has not taken when the log trims it is lost, and the router says how many
/// (`presence_webhook_events_total{result="trimmed"}`): every transition is either
/// delivered or counted there.
async fn events_trimmed_before_delivery_are_counted(engine: Engine) {
    let setup = Setup::new(engine).await;
    let receiver = Receiver::start(Behaviour { failures: AtomicUsize::new(usize::MAX), ..Behaviour::default() }).await;
    let mut flags = receiver.flags();
    flags.extend(["--change-log-entries", "5", "--frame-rate", "1000", "--frame-burst", "1000"].map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let router = setup.router(&flags).await;
    let mut mobile = router.mobile_in("far-driver", &["fleet"]).await;
    eventually("the first POST refused", || async { receiver.inbox.posts.load(Ordering::SeqCst) >= 1 }).await;
    const CHANGES: usize = 300;
    for change in 0..CHANGES {
        mobile.set_status("far-driver", if change % 2 == 0 { "dnd" } else { "online" }, None).await;
    }
    receiver.inbox.behaviour.failures.store(0, Ordering::SeqCst);

    let delivered_or_trimmed = || async {
        let delivered = receiver.inbox.ids.lock().unwrap().len() as u64;
        delivered + series(&router, "presence_webhook_events_total{result=\"trimmed\"}").await
    };
    eventually("every transition delivered or counted trimmed", || async {
        delivered_or_trimmed().await == CHANGES as u64 + 1
    })
    .await;
    assert!(series(&router, "presence_webhook_events_total{result=\"trimmed\"}").await > 0);
    let (users, _) = first_deliveries(&receiver.events());
    let versions = &users["far-driver"];
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "in version order: {versions:?}");
}

/// One Redis (a shard takes every transition) and the memory engine.
mod trimmed {
    use super::{Engine, events_trimmed_before_delivery_are_counted as run};

    #[tokio::test]
    async fn memory() {
        run(Engine::Memory).await
    }

    #[tokio::test]
    async fn redis() {
        run(Engine::Redis).await
    }
}

/// Redis restarted empty (its data, the log and the consumer group with it, lost): the
/// log begins a new history, the group is made again at its start, and delivery goes on:
/// the sessions the router re-asserts, and what follows, arrive.
#[tokio::test]
async fn delivery_goes_on_after_redis_loses_its_data() {
    let mut setup = Setup::new(Engine::Redis).await;
    let receiver = Receiver::start(Behaviour::default()).await;
    let flags = receiver.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let router = setup.router(&flags).await;
    let mut mobile = router.mobile_in("steady-driver", &["fleet"]).await;
    receiver.until("the online", WAIT, |accepted, _| accepted == 1).await;

    let redis = setup.redis.as_mut().unwrap();
    redis.kill().await;
    redis.spawn().await;
    // Its session is registered again in the new history: online once more.
    receiver.until("the re-asserted online", WAIT, |accepted, _| accepted == 2).await;
    mobile.set_status("steady-driver", "dnd", None).await;
    let events = receiver.until("the status change", WAIT, |accepted, _| accepted == 3).await;
    let seen: Vec<&str> = events.iter().map(|e| e["status"].as_str().unwrap()).collect();
    assert_eq!(seen, ["online", "online", "dnd"]);
    let versions: Vec<u64> = events.iter().map(|e| e["version"].as_u64().unwrap()).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "versions keep growing: {versions:?}");
}

/// A router stopped (SIGTERM, a rolling restart) gives its shards' leases up as it stops,
/// so another router delivers them from then on without waiting for the leases to lapse.
#[tokio::test]
async fn a_stopped_router_gives_its_shards_up() {
    let setup = Setup::new(Engine::Redis).await;
    let receiver = Receiver::start(Behaviour::default()).await;
    let flags = receiver.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut stopping = setup.router(&flags).await;
    eventually("the first router to deliver", || async { series(&stopping, "presence_webhook_shards").await == 1 })
        .await;
    let (_, health) = stopping.get("/healthz").await;
    let id = health["router"].as_str().expect("the router's id").to_string();
    let redis = setup.redis.as_ref().unwrap();
    let conn = redis.client().get_multiplexed_async_connection().await.unwrap();
    let holder = || {
        let mut conn = conn.clone();
        async move { ::redis::cmd("GET").arg("presence:webhook:lease").query_async::<Option<String>>(&mut conn).await }
    };
    assert_eq!(holder().await.unwrap().as_deref(), Some(id.as_str()));
    let staying = setup.router(&flags).await;

    stopping.signal("TERM").await;
    stopping.exited().await;
    assert_ne!(holder().await.unwrap().as_deref(), Some(id.as_str()), "the lease was given up");
    let _mobile = staying.mobile_in("next-driver", &["fleet"]).await;
    receiver.until("the online, from the other router", WAIT, |accepted, _| accepted == 1).await;
    assert_eq!(series(&staying, "presence_webhook_shards").await, 1);
}
