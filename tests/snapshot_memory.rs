//! Snapshot memory: dashboards that never read hold their snapshot frame until the write
//! times out, so what the router holds for them must stay within `--snapshot-memory-mb`
//! whatever their scopes and however fast presence changes. Encodings are shared per scope
//! (and, under churn, a cached snapshot a moment old is sent with the changes since); a
//! dashboard whose snapshot does not fit waits, holding nothing, and is closed 4008 if it
//! still does not fit when the write timeout has passed. Dashboards that read get every
//! change: a dashboard that connects during churn ends with the same view as one that
//! watched throughout.

mod common;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::{Client, Router, SECRET, View, raw::RawWs, token};
use futures_util::{StreamExt, stream};
use presence_router::auth::{Role, mint_hs256_in};

/// Mobiles in the fleet, and the groups each one's token names (100 bytes each): every
/// mobile is in every group, so a dashboard of those groups sees all of them, groups and
/// all, and its snapshot is about 4 MB.
const USERS: usize = 1000;
const GROUPS: usize = 40;
const BUDGET_MB: u64 = 32;
const WRITE_TIMEOUT_MS: u64 = 5000;

fn fleet_groups() -> Vec<String> {
    (0..GROUPS).map(|i| format!("{i:0>100}")).collect()
}

fn refs(groups: &[String]) -> Vec<&str> {
    groups.iter().map(String::as_str).collect()
}

/// A router whose client sockets have small send buffers (a reader that stops stalls the
/// write at once) and a snapshot budget of [`BUDGET_MB`].
async fn router() -> Router {
    Router::start(&[
        "--snapshot-memory-mb",
        &BUDGET_MB.to_string(),
        "--tcp-send-buffer",
        "4096",
        "--write-timeout-ms",
        &WRITE_TIMEOUT_MS.to_string(),
    ])
    .await
}

/// [`USERS`] mobiles, each in every fleet group, online.
async fn fleet(router: &Router) -> Vec<Client> {
    let groups = fleet_groups();
    let groups = refs(&groups);
    let groups = &groups;
    stream::iter(0..USERS)
        .map(|i| async move { router.mobile_in(&format!("m{i}"), groups).await })
        .buffer_unordered(16)
        .collect()
        .await
}

fn dashboard_token(user: &str, groups: Option<&[&str]>) -> String {
    match groups {
        Some(groups) => mint_hs256_in(SECRET.as_bytes(), user, Role::Dashboard, Some(groups), 3600).unwrap(),
        None => token(user, Role::Dashboard),
    }
}

/// What a dashboard that never reads its snapshot saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// The snapshot frame began (its header announced this many payload bytes); the rest
    /// stays unread, so the router holds the frame until its write times out.
    Snapshot(u64),
    /// The router closed with this code before sending a snapshot.
    Closed(Option<u16>),
}

/// A dashboard with a 4 KiB receive buffer that reads its first frame's header, nothing more.
async fn stalled_dashboard(addr: SocketAddr, token: &str) -> (RawWs, Start) {
    let mut ws = RawWs::connect_small(addr, token, None).await;
    let wait = Duration::from_millis(WRITE_TIMEOUT_MS) + common::WAIT;
    let start = tokio::time::timeout(wait, async {
        let head = ws.read_exact(2).await.expect("a frame header");
        match (head[0] & 0x0F, head[1] & 0x7F) {
            (0x2, 127) => {
                let len = ws.read_exact(8).await.expect("a 64-bit length");
                Start::Snapshot(u64::from_be_bytes(len.try_into().unwrap()))
            }
            (0x8, len) => {
                let payload = ws.read_exact(len.into()).await.expect("the close payload");
                Start::Closed((len >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])))
            }
            other => panic!("expected a large snapshot or a Close, got {head:?} {other:?}"),
        }
    })
    .await
    .expect("a snapshot or a Close in time");
    (ws, start)
}

/// One stalled dashboard per token, the i-th connecting `spacing` × i after the first;
/// returns them (still connected) with what each saw.
async fn stalled_dashboards(router: &Router, tokens: Vec<String>, spacing: Duration) -> (Vec<RawWs>, Vec<Start>) {
    let addr = router.addr;
    let tasks: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, token)| {
            tokio::spawn(async move {
                tokio::time::sleep(spacing * i as u32).await;
                stalled_dashboard(addr, &token).await
            })
        })
        .collect();
    let mut sockets = Vec::new();
    let mut starts = Vec::new();
    for task in tasks {
        let (ws, start) = task.await.unwrap();
        sockets.push(ws);
        starts.push(start);
    }
    (sockets, starts)
}

/// Peak RSS growth (KiB) since `before`, and the most it may be: the budget plus a generous
/// allowance of two frames being encoded (two worker threads), 64 KiB per connection and
/// 16 MiB of slack.
fn peak_growth(router: &Router, before: u64, connections: usize, frame_bytes: u64) -> (u64, u64) {
    let grown = router.memory_kib("VmHWM").saturating_sub(before);
    let allowance = 2 * frame_bytes / 1024 + connections as u64 * 64 + 16 * 1024;
    (grown, BUDGET_MB * 1024 + allowance)
}

fn frame_bytes(starts: &[Start]) -> u64 {
    starts.iter().filter_map(|s| if let Start::Snapshot(len) = s { Some(*len) } else { None }).max().unwrap_or(0)
}

/// `count` of the `metric` lines whose labels contain `labels`, summed.
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name) && line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// 60 dashboards of one scope (the fleet's groups; each a different user) connect at once
/// and never read: they share one encoded snapshot, held once.
#[tokio::test]
async fn dashboards_of_one_scope_that_never_read_share_one_snapshot() {
    const DASHBOARDS: usize = 60;
    let router = router().await;
    let _fleet = fleet(&router).await;
    let groups = fleet_groups();
    let before = router.memory_kib("VmRSS");
    let tokens = (0..DASHBOARDS).map(|i| dashboard_token(&format!("d{i}"), Some(&refs(&groups)))).collect();
    let (_sockets, starts) = stalled_dashboards(&router, tokens, Duration::ZERO).await;
    let frame = frame_bytes(&starts);
    assert!(frame > 3_000_000, "the scoped snapshot is large: {frame} bytes");
    assert!(starts.iter().all(|s| *s == Start::Snapshot(frame)), "every dashboard gets the same snapshot: {starts:?}");
    let (grown, most) = peak_growth(&router, before, DASHBOARDS, frame);
    assert!(grown <= most, "RSS grew {grown} KiB for {DASHBOARDS} stalled dashboards of one scope (at most {most})");
    let text = router.metrics().await;
    let encodes = metric(&text, "presence_snapshot_encodes_total", "");
    assert!(encodes <= 2.0, "{encodes} encodings for one scope and one sequence number");
}

/// 24 dashboards of 24 different scopes (the fleet's groups plus one of their own), each
/// snapshot ~4 MB, never reading: at most the budget's worth is held at once; the others
/// wait, holding nothing, and those that never fit are closed 4008.
#[tokio::test]
async fn dashboards_of_distinct_scopes_that_never_read_stay_within_the_budget() {
    const DASHBOARDS: usize = 24;
    let router = router().await;
    let _fleet = fleet(&router).await;
    let groups = fleet_groups();
    let before = router.memory_kib("VmRSS");
    let tokens = (0..DASHBOARDS)
        .map(|i| {
            let own = format!("own{i}");
            let mut scope = refs(&groups);
            scope.push(&own);
            dashboard_token(&format!("d{i}"), Some(&scope))
        })
        .collect();
    let (_sockets, starts) = stalled_dashboards(&router, tokens, Duration::ZERO).await;
    let frame = frame_bytes(&starts);
    assert!(frame > 3_000_000, "the scoped snapshots are large: {frame} bytes");
    let held = starts.iter().filter(|s| matches!(s, Start::Snapshot(_))).count();
    let refused = starts.iter().filter(|s| **s == Start::Closed(Some(4008))).count();
    let (grown, most) = peak_growth(&router, before, DASHBOARDS, frame);
    assert!(
        grown <= most,
        "RSS grew {grown} KiB for {DASHBOARDS} stalled dashboards of distinct scopes (at most {most})"
    );
    assert_eq!(held + refused, DASHBOARDS, "a snapshot or close 4008: {starts:?}");
    assert!(held >= 1 && refused >= 1, "some fit the budget, the rest were closed: {starts:?}");
    let text = router.metrics().await;
    let encodes = metric(&text, "presence_snapshot_encodes_total", "");
    assert!(encodes <= held as f64, "{encodes} encodings: only dashboards that had room encoded ({held})");
}

/// One user connects and disconnects every 5 ms while 40 dashboards that see everyone
/// connect, 25 ms apart, and never read: a snapshot a moment old is shared (with the
/// changes since), so they hold a few frames, not one each.
#[tokio::test]
async fn stalled_dashboards_under_churn_share_recent_snapshots() {
    const DASHBOARDS: usize = 40;
    let router = router().await;
    let _fleet = fleet(&router).await;
    let before = router.memory_kib("VmRSS");
    let stop = Arc::new(AtomicBool::new(false));
    let churn = tokio::spawn(churn(router.addr, stop.clone(), "churn", &[&[]]));
    let tokens = (0..DASHBOARDS).map(|i| dashboard_token(&format!("d{i}"), None)).collect();
    let (_sockets, starts) = stalled_dashboards(&router, tokens, Duration::from_millis(25)).await;
    stop.store(true, Ordering::Relaxed);
    let changes = churn.await.unwrap();
    assert!(changes >= 20, "the churn ran: {changes} connects");
    let frame = frame_bytes(&starts);
    assert!(frame > 3_000_000, "the snapshot is large: {frame} bytes");
    assert!(
        starts.iter().all(|s| matches!(s, Start::Snapshot(_) | Start::Closed(Some(4008)))),
        "a snapshot or close 4008: {starts:?}"
    );
    let (grown, most) = peak_growth(&router, before, DASHBOARDS, frame);
    assert!(grown <= most, "RSS grew {grown} KiB for {DASHBOARDS} stalled dashboards under churn (at most {most})");
    let text = router.metrics().await;
    let encodes = metric(&text, "presence_snapshot_encodes_total", "");
    assert!(encodes <= 8.0, "{encodes} encodings for {DASHBOARDS} dashboards in {changes} changes");
}

/// While users come, go and change groups every few milliseconds, dashboards that connect
/// one after another (seeing everyone, or the north groups) get cached snapshots a moment
/// old with the changes since; each ends with exactly the view of a dashboard of its scope
/// that watched from before the churn. Every mobile is in 25 groups of 100 bytes, so the
/// snapshots (~100-200 KB) are large enough to be shared under churn.
#[tokio::test]
async fn dashboards_connecting_during_churn_end_with_the_view_of_one_that_watched_throughout() {
    const LATE: usize = 20;
    let north: &'static [&'static str] = leak_groups("north");
    let south: &'static [&'static str] = leak_groups("south");
    let both: &'static [&'static str] = Box::leak([north, south].concat().into_boxed_slice());
    let router = Router::start(&[]).await;
    let mut fleet = Vec::new();
    for i in 0..80 {
        fleet.push(router.mobile_in(&format!("m{i}"), if i % 2 == 0 { north } else { south }).await);
    }
    let watch = |client: Client, snapshot: rmpv::Value| {
        tokio::spawn(async move {
            let mut client = client;
            let mut view = View::default();
            view.apply(&snapshot);
            loop {
                let frame = client.next_frame().await;
                view.apply(&frame);
                if frame[1].as_u64() == Some(31) && frame[5]["userId"].as_str() == Some("marker") {
                    return view;
                }
            }
        })
    };
    let (client, snapshot) = router.dashboard("reference").await;
    let reference = watch(client, snapshot);
    let (client, snapshot) = router.dashboard_of("reference-north", north).await;
    let reference_north = watch(client, snapshot);

    let stop = Arc::new(AtomicBool::new(false));
    let churners = [
        tokio::spawn(churn(router.addr, stop.clone(), "c1", Box::leak(Box::new([north])))),
        tokio::spawn(churn(router.addr, stop.clone(), "c2", Box::leak(Box::new([south])))),
        // In and out of the north groups without going offline between: north dashboards
        // see it leave.
        tokio::spawn(churn(router.addr, stop.clone(), "c3", Box::leak(Box::new([north, south, both])))),
    ];
    let mut late = Vec::new();
    for i in 0..LATE {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let scoped = i % 2 == 1;
        let (client, snapshot) = if scoped {
            router.dashboard_of(&format!("late{i}"), north).await
        } else {
            router.dashboard(&format!("late{i}")).await
        };
        late.push((scoped, watch(client, snapshot)));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, Ordering::Relaxed);
    for churner in churners {
        assert!(churner.await.unwrap() >= 5, "the churn ran");
    }
    // Everything before the marker has reached every dashboard once it sees the marker.
    let _marker = router.mobile_in("marker", north).await;
    let reference = reference.await.unwrap();
    let reference_north = reference_north.await.unwrap();
    assert!(reference.online.len() > reference_north.online.len() && reference_north.online.contains_key("m0"));
    for (i, (scoped, view)) in late.into_iter().enumerate() {
        let view = view.await.unwrap();
        let expected = if scoped { &reference_north } else { &reference };
        assert_eq!(view.online, expected.online, "late dashboard {i} (north: {scoped})");
    }
    let text = router.metrics().await;
    let recent = metric(&text, "presence_snapshots_total", "source=\"recent\"");
    assert!(recent >= (LATE / 2) as f64, "dashboards got cached snapshots with the changes since: {text}");
}

/// `prefix` and 24 groups of 100 bytes named after it.
fn leak_groups(prefix: &str) -> &'static [&'static str] {
    let groups = std::iter::once(prefix.to_string()).chain((0..24).map(|i| format!("{prefix}{i:0>95}")));
    Box::leak(groups.map(|g| &*Box::leak(g.into_boxed_str())).collect::<Vec<_>>().into_boxed_slice())
}

/// Connects and disconnects mobile `user` every 5 ms, cycling through `groups` (one token
/// per entry), until `stop`; returns how many times it connected. With more than one entry
/// each session closes only once the next is up: the user changes groups without going
/// offline between.
async fn churn(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    user: &'static str,
    groups: &'static [&'static [&'static str]],
) -> usize {
    let tokens: Vec<String> =
        groups.iter().map(|g| mint_hs256_in(SECRET.as_bytes(), user, Role::Mobile, Some(g), 3600).unwrap()).collect();
    let mut connects = 0;
    let mut previous: Option<Client> = None;
    while !stop.load(Ordering::Relaxed) {
        let device = format!("phone{}", connects % 2);
        let mut client = Client::connect(addr, &tokens[connects % tokens.len()], Some(&device)).await;
        client.sync(user).await;
        connects += 1;
        if tokens.len() > 1 {
            if let Some(previous) = previous.replace(client) {
                previous.close().await;
            }
        } else {
            client.close().await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if let Some(previous) = previous {
        previous.close().await;
    }
    connects
}

/// The security review's setup, for `docs/BENCHMARKS.md`, on a release build with the
/// router's defaults: 2,000 mobiles whose tokens name 50 groups of ~100 bytes, dashboards
/// with a 4 KiB receive buffer that never read. One fresh router per scenario; prints the
/// router's RSS before and at its peak, and how long connecting the dashboards took.
///
/// `cargo test --release --test snapshot_memory -- --ignored --nocapture review_scenarios`
#[tokio::test]
#[ignore = "a measurement for docs/BENCHMARKS.md; run it on a release build"]
async fn review_scenarios() {
    const MOBILES: usize = 2000;
    let groups: Vec<String> = std::iter::once("g".to_string()).chain((1..50).map(|i| format!("g{i:0>99}"))).collect();
    let groups = refs(&groups);
    let groups = &groups;
    for scenario in ["one scope", "distinct scopes", "everyone", "everyone, churn"] {
        let router = Router::start(&[]).await;
        let fleet_router = &router;
        let fleet: Vec<Client> = stream::iter(0..MOBILES)
            .map(|i| async move { fleet_router.mobile_in(&format!("m{i}"), groups).await })
            .buffer_unordered(16)
            .collect()
            .await;
        let dashboards = if scenario == "everyone, churn" { 50 } else { 100 };
        let tokens: Vec<String> = (0..dashboards)
            .map(|i| match scenario {
                "one scope" => dashboard_token(&format!("d{i}"), Some(groups)),
                "distinct scopes" => {
                    let own = format!("own{i}");
                    let mut scope = groups.clone();
                    scope.push(&own);
                    dashboard_token(&format!("d{i}"), Some(&scope))
                }
                _ => dashboard_token(&format!("d{i}"), None),
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let churn =
            (scenario == "everyone, churn").then(|| tokio::spawn(churn(router.addr, stop.clone(), "churn", &[&[]])));
        let before = router.memory_kib("VmRSS");
        let started = std::time::Instant::now();
        let spacing = if churn.is_some() { Duration::from_millis(20) } else { Duration::ZERO };
        let (sockets, starts) = stalled_dashboards(&router, tokens, spacing).await;
        let connect = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        if let Some(churn) = churn {
            churn.await.unwrap();
        }
        let peak = router.memory_kib("VmHWM");
        let text = router.metrics().await;
        let held = starts.iter().filter(|s| matches!(s, Start::Snapshot(_))).count();
        println!(
            "review scenario={scenario:?} mobiles={MOBILES} dashboards={dashboards} snapshot_bytes={} held={held} \
             closed={} encodes={} rss_before={}MiB rss_peak={}MiB connect={:.2}s",
            frame_bytes(&starts),
            starts.len() - held,
            metric(&text, "presence_snapshot_encodes_total", ""),
            before / 1024,
            peak / 1024,
            connect.as_secs_f64()
        );
        drop((sockets, fleet));
    }
}
