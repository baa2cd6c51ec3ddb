//! Backend events where they go wrong (webhooks, the event stream, the activity): one
//! token holding every stream or handshake slot, streams that never read, expired tokens,
//! credentials in logs, Redis losing or rewinding its data, a frozen deliverer. Each test
//! states what a backend engineer or an operator expects, against real routers and a real
//! redis-server.

mod common;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, extract::State, http::StatusCode, routing::post};
use common::{Router, SECRET, WAIT, sse::Sse, token};
use presence_router::auth::{Role, mint_hs256_in};

const PATH: &str = "/api/presence/events";

/// A webhook receiver on 127.0.0.1:0 that accepts every POST and keeps its events.
struct Receiver {
    events: Arc<Mutex<Vec<serde_json::Value>>>,
    url: String,
}

impl Receiver {
    async fn start() -> Receiver {
        Receiver::start_slow(Duration::ZERO).await
    }

    /// A receiver that answers each POST `delay` late.
    async fn start_slow(delay: Duration) -> Receiver {
        let events = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new().route("/hook", post(receive)).with_state((events.clone(), delay));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { events, url: format!("http://{addr}/hook") }
    }

    /// Waits until `count` events arrived; returns them all.
    async fn until(&self, count: usize) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let events = self.events.lock().unwrap().clone();
            if events.len() >= count {
                return events;
            }
            assert!(tokio::time::Instant::now() < deadline, "only {} webhook events", events.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

type Inbox = (Arc<Mutex<Vec<serde_json::Value>>>, Duration);

async fn receive(State((events, delay)): State<Inbox>, body: Bytes) -> StatusCode {
    tokio::time::sleep(delay).await;
    let batch: serde_json::Value = serde_json::from_slice(&body).unwrap();
    events.lock().unwrap().extend(batch["events"].as_array().unwrap().iter().cloned());
    StatusCode::OK
}

/// A status's activity is part of the presence a backend wires into push notifications:
/// the webhook event of a status change carries it as PRESENCE_UPDATE, the API and the
/// event stream do (`activity: {type, name, startedAt}`), and a change of activity alone
/// reads as one.
#[tokio::test]
async fn a_webhook_event_carries_the_activity_of_its_transition() {
    let receiver = Receiver::start().await;
    let router = Router::start(&["--webhook-url", &receiver.url, "--webhook-batch-wait-ms", "10"]).await;
    let mut phone = router.mobile_in("driver", &["fleet"]).await;
    let driving = common::map(&[("type", "driving".into()), ("name", "Route 9".into())]);
    phone.send_frame(0, 35, "driver", "", common::map(&[("status", "dnd".into()), ("activity", driving)])).await;
    phone.expect(39).await;
    let on_call = common::map(&[("type", "on_call".into())]);
    phone.send_frame(0, 35, "driver", "", common::map(&[("status", "dnd".into()), ("activity", on_call)])).await;
    phone.expect(39).await;
    let api = router.user("driver").await;
    assert_eq!(api["activity"]["type"], "on_call", "{api}");

    let events = receiver.until(3).await;
    assert_eq!(events[1]["status"], "dnd", "{events:?}");
    assert_eq!(events[1]["activity"]["type"], "driving", "the webhook event has no activity: {}", events[1]);
    assert_eq!(events[2]["activity"]["type"], "on_call", "{}", events[2]);
    assert!(events[2]["activity"]["startedAt"].as_u64().is_some(), "{}", events[2]);
}

/// A WebSocket is closed once its token expires (4001, `exp` + 5 s); an event stream opened
/// with a token is a read under that token too, and must not go on streaming presence
/// for ever after the token expired (a leaked or revoked-by-expiry token would otherwise
/// keep reading the fleet's presence).
#[tokio::test]
async fn an_event_stream_ends_once_its_token_has_expired() {
    let router = Router::start(&[]).await;
    let short = mint_hs256_in(SECRET.as_bytes(), "backend", Role::Service, None, 2).unwrap();
    let mut sse = Sse::open(router.addr, PATH, &short, None).await.open();
    sse.next_named("ready").await;
    // Well past `exp` and the 5 s the WebSocket allows.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let auth = format!("Bearer {short}");
    let (status, _) = common::http(router.addr, "GET", "/api/users/x/presence", &[("Authorization", &auth)], "").await;
    assert_eq!(status, 401, "the token is expired for every other read");
    let _phone = router.mobile_in("after-expiry", &["fleet"]).await;
    // What is left of the stream: its `expired` event, then its end.
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(3), sse.next()).await {
        assert_eq!(event.name, "expired", "an expired token's stream still streams presence: {}", event.data);
    }
    assert!(sse.ended, "the stream of an expired token is ended");
}

/// `--event-streams` is a router-wide cap: one ordinary token (a phone's) must not be able
/// to take every slot, locking every backend out of the event stream.
#[tokio::test]
async fn one_token_cannot_take_every_event_stream() {
    const STREAMS: usize = 8;
    let router = Router::start(&["--event-streams", &STREAMS.to_string()]).await;
    let phone = token("phone-user", Role::Mobile);
    let mut held = Vec::new();
    for _ in 0..STREAMS {
        match Sse::open(router.addr, PATH, &phone, None).await {
            common::sse::Opened::Open(sse) => held.push(sse),
            common::sse::Opened::Refused(..) => break,
        }
    }
    let backend = token("backend", Role::Service);
    match Sse::open(router.addr, PATH, &backend, None).await {
        common::sse::Opened::Open(_) => {}
        common::sse::Opened::Refused(status, body) => panic!(
            "one mobile token holds {} of {STREAMS} event streams; the backend is refused: {status} {body}",
            held.len()
        ),
    }
}

/// `--event-stream-queue` bounds what a stream holds; resuming from an old position must
/// stay within it (as a resuming dashboard does, holding indices into the shared log
/// read): streams that resume from an old position and never read must not each hold a
/// private encoded copy of the whole gap.
#[tokio::test]
async fn event_streams_resuming_from_an_old_position_that_never_read_stay_bounded() {
    use futures_util::{StreamExt, stream};
    const USERS: usize = 1000;
    const CHANGES: usize = 4;
    const GROUPS: usize = 40;
    const STREAMS: usize = 16;
    const QUEUE: u64 = 64;
    let router = Router::start(&[
        "--event-stream-queue",
        &QUEUE.to_string(),
        "--tcp-send-buffer",
        "4096",
        "--frame-rate",
        "100000",
        "--frame-burst",
        "100000",
    ])
    .await;
    let backend = token("backend", Role::Service);
    let mut sse = Sse::open(router.addr, PATH, &backend, None).await.open();
    let position = sse.next_named("ready").await.id.unwrap();
    drop(sse);
    // 5000 transitions, each event ~4 KB (40 groups of 100 bytes).
    let groups: Vec<String> = (0..GROUPS).map(|i| format!("{i:0>100}")).collect();
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    let (groups, fleet_router) = (&groups, &router);
    let _fleet: Vec<common::Client> = stream::iter(0..USERS)
        .map(|i| async move {
            let user = format!("m{i}");
            let mut mobile = fleet_router.mobile_in(&user, groups).await;
            for change in 0..CHANGES {
                mobile.set_status(&user, if change % 2 == 0 { "away" } else { "online" }, None).await;
            }
            mobile
        })
        .buffer_unordered(16)
        .collect()
        .await;

    let before = router.memory_kib("VmRSS");
    let path = format!("{PATH}?since={}", position.replace(':', "%3A"));
    let mut stalled = Vec::new();
    for n in 0..STREAMS {
        // One backend may hold a few streams; several backends hold these.
        let backend = token(&format!("backend-{n}"), Role::Service);
        stalled.push(Sse::open_small(router.addr, &path, &backend, 4096).await.open());
    }
    let grown = router.memory_kib("VmHWM").saturating_sub(before);
    // The queue's worth of ~4.5 KB events per stream, 64 KiB per connection, and 64 MiB for
    // the one log read they share (~20 MB of rows) and the allocator: a copy of the gap per
    // stream would take ~16 × 20 MB.
    let most = STREAMS as u64 * (QUEUE * 5 + 64) + 64 * 1024;
    assert!(
        grown <= most,
        "RSS grew {grown} KiB for {STREAMS} stalled event streams resuming {} transitions (at most {most} KiB)",
        USERS * (CHANGES + 1)
    );
    drop(stalled);
}

/// The webhook URL may carry a receiver's credential (`?token=`, `user:pass@`): the router
/// logs only its host at start, and must not write the whole URL into its logs (or the
/// dead letters' `reason`) when a POST fails.
#[tokio::test]
async fn a_failing_post_does_not_log_the_webhook_urls_credential() {
    const CREDENTIAL: &str = "receiver-credential-0123456789";
    // A receiver that reads each request and closes without an answer.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buffer = [0u8; 4096];
                let _ = socket.read(&mut buffer).await;
            });
        }
    });
    let url = format!("http://{addr}/hook?token={CREDENTIAL}");
    let (router, stderr) = Router::start_logged(
        None,
        &["--webhook-url", &url, "--webhook-backoff-ms", "10", "--webhook-retry-horizon-ms", "200"],
    )
    .await;
    let _phone = router.mobile_in("driver", &["fleet"]).await;
    let line = common::await_line(stderr, "the batch given up", |line| {
        (line.contains("given up") || line.contains(CREDENTIAL)).then(|| line.to_string())
    })
    .await;
    assert!(!line.contains(CREDENTIAL), "the webhook URL's credential is logged: {line}");
}

/// Redis restarted empty while the receiver had accepted every transition: nothing was
/// owed, so nothing may be reported lost. A false `trimmed` count (and its ERROR line,
/// which tells the operator to raise `--change-log-entries`) hides real losses among
/// false ones.
#[tokio::test]
async fn redis_losing_its_data_with_nothing_owed_reports_no_trimmed_events() {
    let mut setup = common::Setup::new(common::Engine::Redis).await;
    let receiver = Receiver::start().await;
    let router = setup.router(&["--webhook-url", &receiver.url, "--webhook-batch-wait-ms", "10"]).await;
    let mut phone = router.mobile_in("steady", &["fleet"]).await;
    for change in 0..50 {
        phone.set_status("steady", if change % 2 == 0 { "away" } else { "online" }, None).await;
    }
    receiver.until(51).await;
    let redis = setup.redis.as_mut().unwrap();
    redis.kill().await;
    redis.spawn().await;
    let before = receiver.events.lock().unwrap().len();
    common::eventually("the re-asserted online delivered", || async { receiver.events.lock().unwrap().len() > before })
        .await;
    let seen = receiver.events.lock().unwrap().len();
    for change in 0..4 {
        phone.set_status("steady", if change % 2 == 0 { "dnd" } else { "online" }, None).await;
    }
    receiver.until(seen + 4).await;
    let metrics = router.metrics().await;
    let trimmed = common::prometheus::metric(&metrics, "presence_webhook_events_total{result=\"trimmed\"}");
    assert_eq!(trimmed.unwrap_or(0), 0, "events reported trimmed though every one was delivered");
}

/// Under an open-file limit of 256 the router lowers `--max-handshakes` to 64, the default
/// `--event-streams`; each open stream holds a handshake slot and is never evicted (it is
/// being served). One phone's token opening every stream it may must not take the whole
/// front door: `/readyz` (nginx and the orchestrator's probe) and WebSocket handshakes
/// must still be answered.
#[tokio::test]
async fn one_tokens_event_streams_do_not_take_every_handshake_slot() {
    let (router, mut stderr) = Router::start_logged(Some(256), &[]).await;
    tokio::spawn(async move { tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await });
    let phone = token("phone-user", Role::Mobile);
    let mut held = Vec::new();
    for _ in 0..64 {
        match Sse::open(router.addr, PATH, &phone, None).await {
            common::sse::Opened::Open(sse) => held.push(sse),
            common::sse::Opened::Refused(..) => break,
        }
    }
    let readyz = tokio::time::timeout(WAIT, common::http(router.addr, "GET", "/readyz", &[], "")).await;
    let streams = held.len();
    match readyz {
        Ok((200, _)) => {}
        Ok((status, body)) => {
            panic!("with {streams} event streams of one phone token, /readyz answers {status} {body}")
        }
        Err(_) => panic!("with {streams} event streams of one phone token, /readyz does not answer"),
    }
}

/// Redis comes back from an older copy (a snapshot from before ten delivered status
/// changes): the receiver may get old events again, but every transition after the
/// restore arrives, and each user's first deliveries stay in version order.
#[tokio::test]
async fn redis_back_from_an_older_copy_loses_no_later_webhook_and_keeps_version_order() {
    let mut setup = common::Setup::new(common::Engine::Redis).await;
    let receiver = Receiver::start().await;
    let router = setup.router(&["--webhook-url", &receiver.url, "--webhook-batch-wait-ms", "10"]).await;
    let mut alice = router.mobile("alice", "a1").await;
    alice.sync("alice").await;
    receiver.until(1).await;
    let redis = setup.redis.as_mut().unwrap();
    let mut conn = redis.client().get_multiplexed_async_connection().await.unwrap();
    let () = ::redis::cmd("SAVE").query_async(&mut conn).await.unwrap();
    for i in 0..10 {
        alice.set_status("alice", if i % 2 == 0 { "away" } else { "dnd" }, None).await;
    }
    receiver.until(11).await;
    redis.kill().await;
    redis.spawn().await;
    alice.sync_after_outage("alice").await;
    alice.set_status("alice", "away", Some("after the restore")).await;
    alice.close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let events = receiver.events.lock().unwrap().clone();
        let last = events.last().unwrap();
        if last["status"] == "offline" && last["cause"] == "disconnect" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the offline after the restore never arrived: {last}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = receiver.events.lock().unwrap().clone();
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<(u64, String)> = events
        .iter()
        .filter(|e| seen.insert(e["id"].as_str().unwrap().to_string()))
        .map(|e| (e["version"].as_u64().unwrap(), format!("{}/{}", e["status"], e["cause"])))
        .collect();
    assert!(firsts.windows(2).all(|w| w[0].0 < w[1].0), "first deliveries out of version order: {firsts:?}");
    assert!(
        events.iter().any(|e| e["statusText"] == "after the restore"),
        "the status change after the restore was not delivered: {firsts:?}"
    );
}

/// The delivering router is frozen (SIGSTOP) past its lease with a batch in flight while
/// transitions go on; another router takes the shard over; the frozen one resumes
/// (SIGCONT) and finishes its stale POST. Every transition arrives, and each user's first
/// deliveries stay in version order.
#[tokio::test]
async fn a_router_frozen_past_its_lease_delivers_nothing_out_of_order() {
    let setup = common::Setup::new(common::Engine::Redis).await;
    let receiver = Receiver::start_slow(Duration::from_millis(300)).await;
    let flags = ["--webhook-url", &receiver.url, "--webhook-batch-wait-ms", "10", "--webhook-batch-size", "5"];
    let mut frozen = setup.router(&flags).await;
    common::eventually("the first router to hold the lease", || async {
        common::prometheus::metric(&frozen.metrics().await, "presence_webhook_shards") == Some(1)
    })
    .await;
    let other = setup.router(&flags).await;
    const CHANGES: usize = 60;
    let mut phone = other.mobile_in("courier", &["fleet"]).await;
    for i in 0..CHANGES {
        if i == 10 {
            frozen.signal("STOP").await;
        }
        if i == 40 {
            frozen.signal("CONT").await;
        }
        phone.set_status("courier", if i % 2 == 0 { "away" } else { "dnd" }, None).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    let firsts = loop {
        let events = receiver.events.lock().unwrap().clone();
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<u64> = events
            .iter()
            .filter(|e| seen.insert(e["id"].as_str().unwrap().to_string()))
            .map(|e| e["version"].as_u64().unwrap())
            .collect();
        if firsts.len() > CHANGES {
            break firsts;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} of {} transitions delivered", firsts.len(), CHANGES + 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(firsts.windows(2).all(|w| w[0] < w[1]), "first deliveries out of version order: {firsts:?}");
}
