//! The router's dashboard page in real headless Chromium: it authenticates with the
//! Sec-WebSocket-Protocol pair, shows the snapshot, and follows live updates.
//! Chromium is driven over the DevTools protocol (`make deps` installs it).

mod common;

use std::{process::Stdio, time::Duration};

use common::{RedisServer, Router, WAIT, await_line, token};
use futures_util::{SinkExt, StreamExt};
use presence_router::auth::Role;
use serde_json::{Value, json};
use tokio::{
    net::TcpStream,
    process::{Child, Command},
};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

/// A headless Chromium and one page in it, spoken to over the DevTools protocol.
struct Browser {
    _child: Child,
    _profile: tempdir::Dir,
    devtools: WebSocketStream<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Browser {
    async fn open(url: &str) -> Browser {
        // One profile per browser: Chromium refuses a second instance on a profile in use.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let profile = std::env::temp_dir().join(format!("presence-router-chromium-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&profile).unwrap();
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--window-size=1280,800",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium is installed (make deps)");
        let endpoint = await_line(child.stderr.take().unwrap(), "chromium's DevTools endpoint", |line| {
            line.strip_prefix("DevTools listening on ").map(str::to_string)
        })
        .await;
        let (devtools, _) = tokio_tungstenite::connect_async(endpoint.as_str()).await.unwrap();
        let mut browser =
            Browser { _child: child, _profile: tempdir::Dir(profile), devtools, session: String::new(), next_id: 0 };
        let target = browser.call(None, "Target.createTarget", json!({ "url": url })).await;
        let attached = browser
            .call(None, "Target.attachToTarget", json!({ "targetId": target["targetId"], "flatten": true }))
            .await;
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        browser
    }

    /// One DevTools call; returns its result.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        self.devtools.send(Message::text(message.to_string())).await.unwrap();
        loop {
            let reply =
                tokio::time::timeout(WAIT, self.devtools.next()).await.expect("DevTools answers").unwrap().unwrap();
            let reply: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
            if reply["id"] == json!(id) {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page.
    async fn eval(&mut self, expression: &str) -> Value {
        let session = self.session.clone();
        let result = self
            .call(Some(&session), "Runtime.evaluate", json!({ "expression": expression, "returnByValue": true }))
            .await;
        result["result"]["value"].clone()
    }

    /// Waits until the page shows `user` with `status`.
    async fn wait_for(&mut self, user: &str, status: &str) {
        self.wait_until(&format!("document.querySelector('[data-user=\"{user}\"]')?.dataset.status === '{status}'"))
            .await;
    }

    /// `property` (`textContent`, …) of what `selector` finds in `user`'s row.
    async fn in_row(&mut self, user: &str, selector: &str, property: &str) -> Value {
        self.eval(&format!("document.querySelector('[data-user=\"{user}\"] {selector}')?.{property}")).await
    }

    /// Polls a JavaScript condition until it is true (the page has no event to await).
    async fn wait_until(&mut self, condition: &str) {
        self.wait_until_within(condition, WAIT).await;
    }

    async fn wait_until_within(&mut self, condition: &str, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while self.eval(condition).await != json!(true) {
            assert!(tokio::time::Instant::now() < deadline, "page never satisfied {condition}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn the_dashboard_page_shows_a_snapshot_live_dots_and_indicators() {
    let router = Router::start(&[]).await;
    let (mut watcher, _) = router.dashboard("watcher").await;
    let alpha = router.mobile("alpha", "radio-a").await;
    watcher.next_update().await;

    let url = format!("http://{}/dashboard#token={}", router.addr, token("dispatcher", Role::Dashboard));
    let mut browser = Browser::open(&url).await;
    browser.wait_for("alpha", "online").await; // from the snapshot
    assert_eq!(browser.eval("document.body.dataset.connected").await, json!("true"));

    let _bravo = router.mobile("bravo", "radio-b").await;
    browser.wait_for("bravo", "online").await; // a live update
    alpha.close().await;
    browser.wait_for("alpha", "offline").await; // grey dot
    assert_eq!(
        browser.eval("getComputedStyle(document.querySelector('[data-user=\"alpha\"] .dot')).backgroundColor").await,
        json!("rgb(170, 170, 170)")
    );
    assert_eq!(
        browser.eval("getComputedStyle(document.querySelector('[data-user=\"bravo\"] .dot')).backgroundColor").await,
        json!("rgb(46, 204, 64)")
    );

    // Statuses and indicators: a yellow dot with the status text, a talking badge.
    let mut charlie = router.mobile_in("charlie", &["crew"]).await;
    charlie.set_status("charlie", "away", Some("at lunch")).await;
    browser.wait_for("charlie", "away").await;
    assert_eq!(
        browser.eval("getComputedStyle(document.querySelector('[data-user=\"charlie\"] .dot')).backgroundColor").await,
        json!("rgb(255, 220, 0)")
    );
    assert_eq!(
        browser.eval("document.querySelector('[data-user=\"charlie\"] .text').textContent").await,
        json!("at lunch")
    );
    charlie.send_frame(0, 1, "charlie", "crew", common::map(&[])).await;
    charlie.expect(6).await;
    browser.wait_until("document.querySelector('[data-user=\"charlie\"] .badge.talking') !== null").await;
    charlie.send_frame(0, 2, "charlie", "crew", common::map(&[])).await;
    charlie.expect(7).await;
    browser.wait_until("document.querySelector('[data-user=\"charlie\"] .badge.talking') === null").await;
}

/// A token in a changed fragment is sent as REFRESH: the page outlives its first token.
/// Without a new one it says the token expired, and a new fragment reconnects it.
#[tokio::test]
async fn the_dashboard_page_refreshes_its_token_from_the_fragment() {
    let router = Router::start(&[]).await;
    let now = presence_router::presence::unix_ms() / 1000;
    let minted = |exp: u64| {
        let claims = json!({"sub": "dispatcher", "role": "dashboard", "exp": exp, "iat": now});
        let key = jsonwebtoken::EncodingKey::from_secret(common::SECRET.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    // The page opens without a token (starting Chromium takes a while on a busy machine);
    // each token is minted just before the page gets it: accepted now (inside the 5 s
    // leeway), expiring 2 to 3 s later.
    let soon = || minted(presence_router::presence::unix_ms() / 1000 - 2);
    let page = format!("http://{}/dashboard", router.addr);
    let mut browser = Browser::open(&page).await;
    let loaded = "document.getElementById('status')?.textContent.startsWith('open this page') === true";
    browser.wait_until(loaded).await;
    browser.eval(&format!("location.hash = 'token={}'", soon())).await;
    browser.wait_until("document.body.dataset.connected === 'true'").await;
    browser.eval(&format!("location.hash = 'token={}'", minted(now + 3600))).await;
    browser.wait_until("document.getElementById('status').textContent === 'connected (token refreshed)'").await;
    common::eventually("the refresh to count", || async {
        router.metrics().await.contains("presence_token_refreshes_total{result=\"accepted\"} 1")
    })
    .await;

    // A second page that never gets a new token is told so when its token expires.
    let mut expiring = Browser::open(&page).await;
    expiring.wait_until(loaded).await;
    expiring.eval(&format!("location.hash = 'token={}'", soon())).await;
    expiring.wait_until("document.body.dataset.connected === 'expired'").await;
    assert!(expiring.eval("document.getElementById('status').textContent").await.as_str().unwrap().contains("expired"));
    // The first page is still connected past its first token's expiry.
    assert_eq!(browser.eval("document.body.dataset.connected").await, json!("true"));
    expiring.eval(&format!("location.hash = 'token={}'", minted(now + 3600))).await;
    expiring.wait_until("document.body.dataset.connected === 'true'").await;
}

/// A page whose connection dropped reconnects from its view's position: the router sends
/// only what changed meanwhile, no snapshot.
#[tokio::test]
async fn the_dashboard_page_resumes_from_its_position() {
    let router = Router::start(&[]).await;
    let (mut watcher, _) = router.dashboard("watcher").await;
    let alpha = router.mobile("alpha", "radio-a").await;
    watcher.next_update().await;
    let mut browser = page(&router, &token("dispatcher", Role::Dashboard)).await;
    browser.wait_for("alpha", "online").await;

    browser.eval("socket.close()").await;
    browser.wait_until("document.body.dataset.connected === 'false'").await;
    let _bravo = router.mobile("bravo", "radio-b").await;
    alpha.close().await;
    browser.wait_for("bravo", "online").await;
    browser.wait_for("alpha", "offline").await;
    assert!(router.metrics().await.contains("presence_dashboard_resumes_total{result=\"resumed\"} 1"));
}

/// Opens the page with `token` once the router has what the test set up.
async fn page(router: &Router, token: &str) -> Browser {
    Browser::open(&format!("http://{}/dashboard#token={token}", router.addr)).await
}

/// Waits until the list's rows are `users`, top to bottom (every row is on screen in these
/// tests).
async fn shows(browser: &mut Browser, users: &[&str]) {
    browser.wait_until(&format!("JSON.stringify(dashboard.shownIds()) === {:?}", json!(users).to_string())).await;
}

/// Types into the search box, or picks a group, as a person would.
async fn search(browser: &mut Browser, query: &str) {
    let set = format!(
        "{{ const s = document.getElementById('search'); s.value = {query:?}; s.dispatchEvent(new Event('input')) }}"
    );
    browser.eval(&set).await;
}

async fn pick_group(browser: &mut Browser, group: &str) {
    let set = format!(
        "{{ const g = document.getElementById('group'); g.value = {group:?}; g.dispatchEvent(new Event('change')) }}"
    );
    browser.eval(&set).await;
}

/// A group's counts in the groups panel, as `[online, away, dnd, offline]`.
async fn group_counts(browser: &mut Browser, group: &str) -> Value {
    let read = format!("[...document.querySelectorAll('[data-group={group:?}] .n')].map((n) => Number(n.textContent))");
    browser.eval(&read).await
}

/// Counts split online / away / dnd / offline, overall and per group; a natural sort; a
/// search and a group filter; talking and typing shown from the snapshot of a page opened
/// mid-transmission; last seen for a user gone offline.
#[tokio::test]
async fn the_dashboard_page_counts_sorts_searches_filters_and_shows_who_talks() {
    let router = Router::start(&["--typing-ttl-ms", "600000", "--max-talk-ms", "600000"]).await;
    let mut crew = Vec::new();
    for user in ["u10", "u2", "u1", "u7"] {
        crew.push(router.mobile_in(user, &["crew"]).await);
    }
    crew[0].set_status("u10", "dnd", None).await;
    crew[1].set_status("u2", "away", Some("at lunch")).await;
    let mut typist = router.mobile_in("u8", &["yard"]).await;
    let u20 = router.mobile_in("u20", &["yard"]).await;
    // u7 talks in crew, u8 types in yard: both before the page opens.
    let talker = &mut crew[3];
    talker.send_frame(0, 1, "u7", "crew", common::map(&[])).await;
    while talker.next_frame().await[1].as_u64() != Some(6) {}
    typist.indicator("u8", "yard", "typing", true).await;
    // START_ACK comes before the talking indicator is announced.
    common::eventually("talking and typing in a snapshot", || async {
        let (_, snapshot) = router.dashboard("check").await;
        snapshot[5]["indicators"].as_array().map(Vec::len) == Some(2)
    })
    .await;

    let mut browser = page(&router, &token("dispatcher", Role::Dashboard)).await;
    browser.wait_until("dashboard.state().users === 6").await;
    shows(&mut browser, &["u1", "u2", "u7", "u8", "u10", "u20"]).await; // u2 before u10
    let counts =
        "['online', 'away', 'dnd', 'offline'].map((s) => Number(document.getElementById('count-' + s).dataset.value))";
    browser.wait_until(&format!("JSON.stringify({counts}) === '[4,1,1,0]'")).await;
    // Talking stands out from the snapshot: the row, its badge and the banner.
    browser.wait_until("document.querySelector('[data-user=\"u7\"]').classList.contains('talking')").await;
    assert_eq!(browser.in_row("u7", ".badge.talking", "textContent").await, json!("TALKING · crew"));
    let banner = browser
        .eval("document.getElementById('talking').hidden ? '' : document.getElementById('talking').textContent")
        .await;
    assert!(banner.as_str().unwrap().contains("u7 in crew"), "{banner}");
    let motion = "getComputedStyle(document.querySelector('[data-user=\"u7\"] .badge.talking')).animationName";
    assert_eq!(browser.eval(motion).await, json!("pulse"), "talking moves");
    assert_eq!(browser.in_row("u8", ".badge.typing", "textContent").await, json!("typing · yard"));
    assert_eq!(group_counts(&mut browser, "crew").await, json!([2, 1, 1, 0]), "away and dnd are not online");

    // Gone offline: counted so, with its last seen.
    u20.close().await;
    browser.wait_for("u20", "offline").await;
    browser.wait_until(&format!("JSON.stringify({counts}) === '[3,1,1,1]'")).await;
    assert_eq!(group_counts(&mut browser, "yard").await, json!([1, 0, 0, 1]));
    assert_eq!(browser.in_row("u20", ".seen", "textContent").await, json!("last seen just now"));

    search(&mut browser, "U1").await;
    shows(&mut browser, &["u1", "u10"]).await;
    search(&mut browser, "").await;
    pick_group(&mut browser, "yard").await;
    shows(&mut browser, &["u8", "u20"]).await;
    pick_group(&mut browser, "crew").await;
    shows(&mut browser, &["u1", "u2", "u7", "u10"]).await;

    // The talk ends: the row and the banner calm down.
    crew[3].send_frame(0, 2, "u7", "crew", common::map(&[])).await;
    browser.wait_until("!document.querySelector('[data-user=\"u7\"]').classList.contains('talking')").await;
    assert_eq!(browser.eval("document.getElementById('talking').hidden").await, json!(true));
}

/// A dashboard token signed as the tests' router expects, with these `exp` and key.
fn dashboard_token(exp: u64, secret: &str) -> String {
    let now = presence_router::presence::unix_ms() / 1000;
    let claims = json!({"sub": "dispatcher", "role": "dashboard", "exp": exp, "iat": now.min(exp)});
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// An expired or forged token is refused before the WebSocket: the page says why and
/// stops, instead of retrying a handshake the browser only reports as 1006.
#[tokio::test]
async fn the_dashboard_page_says_why_a_token_is_refused_and_stops() {
    let router = Router::start(&[]).await;
    let now = presence_router::presence::unix_ms() / 1000;
    let expired = dashboard_token(now - 3600, common::SECRET);
    let mut browser = page(&router, &expired).await;
    browser.wait_until("document.body.dataset.connected === 'expired'").await;
    let notice = browser.eval("document.getElementById('notice').textContent").await;
    assert!(notice.as_str().unwrap().starts_with("The token expired"), "{notice}");

    let forged = dashboard_token(now + 3600, "another-secret-of-at-least-32-bytes!!");
    let mut browser = page(&router, &forged).await;
    browser.wait_until("document.body.dataset.connected === 'refused'").await;
    let notice = browser.eval("document.getElementById('notice').textContent").await;
    assert!(notice.as_str().unwrap().contains("refused the token (invalid_token"), "{notice}");
    assert!(
        !browser.eval("document.getElementById('status').textContent").await.as_str().unwrap().contains("reconnecting")
    );
    let metrics = router.metrics().await;
    let refused =
        metrics.lines().filter(|l| l.starts_with("presence_handshake_rejections_total{") && !l.ends_with(" 0"));
    assert_eq!(refused.collect::<Vec<_>>(), Vec::<&str>::new(), "no WebSocket was tried");

    // A good token in the fragment connects the same page.
    browser.eval(&format!("location.hash = 'token={}'", token("dispatcher", Role::Dashboard))).await;
    browser.wait_until("document.body.dataset.connected === 'true'").await;
    assert_eq!(browser.eval("document.getElementById('notice').hidden").await, json!(true));
}

/// A mobile token is a phone's presence session: the page never sends it, says so, and
/// its user stays offline.
#[tokio::test]
async fn the_dashboard_page_refuses_a_mobile_token_and_marks_nobody_online() {
    let router = Router::start(&[]).await;
    let mut browser = page(&router, &token("phone", Role::Mobile)).await;
    browser.wait_until("document.body.dataset.connected === 'wrong-role'").await;
    let notice = browser.eval("document.getElementById('notice').textContent").await;
    assert!(notice.as_str().unwrap().contains("role \"mobile\""), "{notice}");
    assert!(notice.as_str().unwrap().contains("marked nobody online"), "{notice}");
    let phone = router.user("phone").await;
    assert_eq!((phone["status"].as_str(), phone["deviceId"].as_str()), (Some("offline"), None), "{phone}");
    assert!(router.metrics().await.contains("presence_connections{role=\"mobile\"} 0"));
}

/// Runs the load tool to its end; its last line.
async fn load(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_presence-load")).args(args).output().await.unwrap();
    assert!(output.status.success(), "presence-load {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).lines().last().unwrap_or_default().to_string()
}

/// The page's own figures for a window of `seconds` of churn, as one line.
async fn measured(browser: &mut Browser, seconds: f64) -> String {
    browser.eval("dashboard.startMeasure()").await;
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let m = browser.eval("dashboard.stopMeasure()").await;
    let ms = |key: &str| m[key].as_f64().unwrap_or_default();
    format!(
        "{:.0} changes/s applied; long tasks {} ({:.0} ms in all, longest {:.0} ms); frames {} (p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.0} ms, {} over 50 ms)",
        ms("changes") / ms("seconds"),
        m["longTasks"],
        ms("longTaskMs"),
        ms("longestTaskMs"),
        m["frames"],
        ms("frameP50"),
        ms("frameP95"),
        ms("frameP99"),
        ms("frameMax"),
        m["framesOver50"],
    )
}

/// The dashboard page holding DASHBOARD_USERS users (100k) while a real router feeds it
/// DASHBOARD_RATE changes a second (1,000: statuses, disconnects, reconnects, typing and
/// talking starts and ends) for DASHBOARD_SECONDS (30): half of it watching, half scrolling
/// the list 20 rows a frame. Figures from the page's own PerformanceObserver (long tasks)
/// and requestAnimationFrame (frame times); docs/BENCHMARKS.md has them.
/// `cargo test --release --test browser -- --ignored --nocapture the_dashboard_page_under_load`
#[tokio::test]
#[ignore = "a measurement for docs/BENCHMARKS.md; run it on a release build"]
async fn the_dashboard_page_under_load() {
    let setting = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (users, rate, seconds) =
        (setting("DASHBOARD_USERS", 100_000), setting("DASHBOARD_RATE", 1000), setting("DASHBOARD_SECONDS", 30));
    let redis = RedisServer::start().await;
    let (port, users_arg, rate_arg) = (redis.port.to_string(), users.to_string(), rate.to_string());
    let seeded = load(&["seed", "--redis-port", &port, "--users", &users_arg, "--groups", "500"]).await;
    let router = Router::start(&["--redis-host", "127.0.0.1", "--redis-port", &port]).await;
    let mut browser = page(&router, &token("dispatcher", Role::Dashboard)).await;
    browser.wait_until_within(&format!("dashboard.state().users === {users}"), Duration::from_secs(120)).await;
    let snapshot = browser.eval("dashboard.perf.snapshots[0]").await;
    let startup = browser.eval("dashboard.perf.longTasks.map((t) => t.duration)").await;
    let ms = |key: &str| snapshot[key].as_f64().unwrap_or_default();
    println!(
        "dashboard page: {seeded}; snapshot {} bytes, decoded in {:.0} ms, applied in {:.0} ms; long tasks until shown (ms): {startup}",
        snapshot["bytes"],
        ms("decodeMs"),
        ms("applyMs")
    );

    let churn_seconds = seconds.to_string();
    let churn = tokio::spawn(async move {
        load(&[
            "churn",
            "--redis-port",
            &port,
            "--users",
            &users_arg,
            "--groups",
            "500",
            "--rate",
            &rate_arg,
            "--seconds",
            &churn_seconds,
        ])
        .await
    });
    let half = seconds as f64 / 2.0 - 1.0;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let watching = measured(&mut browser, half).await;
    browser
        .eval(
            "{ const list = document.getElementById('list'); let down = true; window.scrolling = true;
               const step = () => { if (!window.scrolling) return;
                 list.scrollTop += down ? 600 : -600;
                 if (list.scrollTop <= 0 || list.scrollTop + list.clientHeight >= list.scrollHeight - 1) down = !down;
                 requestAnimationFrame(step); };
               requestAnimationFrame(step); }",
        )
        .await;
    let scrolling = measured(&mut browser, half).await;
    browser.eval("window.scrolling = false").await;
    println!("dashboard page: {}", churn.await.unwrap());
    println!("dashboard page, {users} users, watching: {watching}");
    println!("dashboard page, {users} users, scrolling 20 rows a frame: {scrolling}");
    let state = browser.eval("dashboard.state()").await;
    println!("dashboard page: {state}");
}

/// Writes the page's screenshots for the README (`docs/dashboard.png`, a control room with
/// a talk in progress; `docs/dashboard-mobile-token.png`, the page given a phone's token):
/// `cargo test --test browser -- --ignored the_dashboard_page_screenshots`.
#[tokio::test]
#[ignore = "writes docs/dashboard*.png"]
async fn the_dashboard_page_screenshots() {
    let router = Router::start(&["--typing-ttl-ms", "600000", "--max-talk-ms", "600000"]).await;
    let groups = ["dispatch", "north", "south"];
    let mut phones = Vec::new();
    for i in 1..=36 {
        let user = format!("unit-{i}");
        let mut phone = router.mobile_on(&user, &format!("radio-{i}"), &[groups[i % 3]]).await;
        match i % 7 {
            3 => phone.set_status(&user, "away", Some("refuelling")).await,
            5 => phone.set_status(&user, "dnd", Some("on a call")).await,
            _ => {}
        }
        phones.push(phone);
    }
    // Talking in north, typing in south, recording in dispatch, before the page opens.
    phones[3].send_frame(0, 1, "unit-4", "north", common::map(&[])).await;
    while phones[3].next_frame().await[1].as_u64() != Some(6) {}
    phones[7].indicator("unit-8", "south", "typing", true).await;
    phones[8].indicator("unit-9", "dispatch", "recording", true).await;
    let mut browser = page(&router, &token("dispatcher", Role::Dashboard)).await;
    browser.wait_until("dashboard.state().users === 36").await;
    // Three go offline: shown grey, with their last seen.
    for i in [10, 5, 1] {
        phones.remove(i).close().await;
    }
    browser.wait_until("dashboard.state().totals.offline === 3").await;
    write_screenshot(&mut browser, "docs/dashboard.png").await;

    let mut refused = page(&router, &token("unit-1", Role::Mobile)).await;
    refused.wait_until("document.body.dataset.connected === 'wrong-role'").await;
    write_screenshot(&mut refused, "docs/dashboard-mobile-token.png").await;
}

/// The page as Chromium renders it now, as a PNG at `path` (from the repository's root).
async fn write_screenshot(browser: &mut Browser, path: &str) {
    use base64::Engine as _;
    let session = browser.session.clone();
    let shot = browser.call(Some(&session), "Page.captureScreenshot", json!({ "format": "png" })).await;
    let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
    std::fs::write(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path), png).unwrap();
}

/// While the router's view is stale (here: Redis killed) the page keeps the last view,
/// greyed under a banner that says since when and why; FRESH lifts both.
#[tokio::test]
async fn the_dashboard_page_greys_its_view_under_a_stale_banner_until_fresh() {
    let mut redis = RedisServer::start().await;
    let router = Router::start(&["--redis-host", "127.0.0.1", "--redis-port", &redis.port.to_string()]).await;
    let mut alpha = router.mobile("alpha", "radio-a").await;
    alpha.sync("alpha").await;
    let mut browser = page(&router, &token("dispatcher", Role::Dashboard)).await;
    browser.wait_for("alpha", "online").await;
    assert_eq!(browser.eval("document.getElementById('stale').hidden").await, json!(true));

    redis.kill().await;
    browser.wait_until("document.body.dataset.stale === 'true'").await;
    let banner = browser.eval("document.getElementById('stale').textContent").await;
    let banner = banner.as_str().unwrap();
    assert!(banner.starts_with("Out of date since "), "{banner}");
    assert!(banner.contains("Redis") || banner.contains("other routers"), "says why: {banner}");
    assert_eq!(browser.eval("getComputedStyle(document.querySelector('main')).opacity").await, json!("0.5"));
    assert_eq!(browser.in_row("alpha", ".state", "textContent").await, json!("online"), "the last view, kept");

    redis.spawn().await;
    browser.wait_until("document.body.dataset.stale === 'false'").await;
    assert_eq!(browser.eval("document.getElementById('stale').hidden").await, json!(true));
    browser.wait_for("alpha", "online").await;
}

/// `[online, away, dnd, offline]` of the summary, and whether its offline figure is complete.
async fn summary(browser: &mut Browser) -> Value {
    browser
        .eval(
            "[...['online', 'away', 'dnd', 'offline'].map((s) => Number(document.getElementById('count-' + s).dataset.value)), \
             document.getElementById('count-offline').dataset.complete === 'true']",
        )
        .await
}

/// Offline members and their last seen come from the group endpoint: at once for a token
/// scoped to groups (every figure complete), when a group is picked for one that is not;
/// then the WebSocket keeps them current.
#[tokio::test]
async fn the_dashboard_page_shows_offline_members_its_groups_had_before_it_opened() {
    let router = Router::start(&[]).await;
    let _on1 = router.mobile_in("on1", &["night"]).await;
    for user in ["off1", "off2"] {
        router.mobile_in(user, &["night"]).await.close().await;
    }
    for user in ["off1", "off2"] {
        common::eventually("the members to go offline", || async {
            router.user(user).await["status"].as_str() == Some("offline")
        })
        .await;
    }

    let night = presence_router::auth::mint_hs256_in(
        common::SECRET.as_bytes(),
        "night-desk",
        Role::Dashboard,
        Some(&["night"]),
        3600,
    )
    .unwrap();
    let mut scoped = page(&router, &night).await;
    scoped.wait_until("JSON.stringify(dashboard.shownIds()) === '[\"off1\",\"off2\",\"on1\"]'").await;
    scoped.wait_until("document.getElementById('count-offline').dataset.complete === 'true'").await;
    assert_eq!(summary(&mut scoped).await, json!([1, 0, 0, 2, true]));
    assert_eq!(scoped.in_row("off1", ".seen", "textContent").await, json!("last seen just now"));
    assert_eq!(group_counts(&mut scoped, "night").await, json!([1, 0, 0, 2]));
    // Kept current by the WebSocket.
    let _back = router.mobile_in("off1", &["night"]).await;
    scoped.wait_for("off1", "online").await;
    scoped.wait_until("document.getElementById('count-offline').dataset.value === '1'").await;

    // A token for everyone reads a group's members when the group is picked; until then
    // its offline figure says it is partial.
    let mut everyone = page(&router, &token("dispatcher", Role::Dashboard)).await;
    // The counts are drawn on the next frame after the snapshot is applied.
    everyone.wait_until("document.getElementById('count-online').dataset.value === '2'").await;
    assert_eq!(summary(&mut everyone).await, json!([2, 0, 0, 0, false]));
    let partial = "document.querySelector('[data-group=\"night\"] .n-offline').classList.contains('partial')";
    assert_eq!(everyone.eval(partial).await, json!(true));
    pick_group(&mut everyone, "night").await;
    everyone.wait_until("document.getElementById('count-offline').dataset.value === '1'").await;
    everyone.wait_until(&format!("!{partial}")).await;
    assert_eq!(everyone.in_row("off2", ".seen", "textContent").await, json!("last seen just now"));
}

/// The page lets the router judge the token: a subject claim of another name and a role
/// from the router's default are taken, as a raw WebSocket takes them.
#[tokio::test]
async fn the_dashboard_page_takes_every_token_the_router_takes() {
    let router = Router::start(&["--jwt-subject-claim", "uid", "--jwt-default-role", "web"]).await;
    let now = presence_router::presence::unix_ms() / 1000;
    let key = jsonwebtoken::EncodingKey::from_secret(common::SECRET.as_bytes());
    let sign = |claims: Value| jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
    let phone = sign(json!({"uid": "alpha", "role": "mobile", "groups": ["crew"], "exp": now + 3600}));
    let _alpha = common::Client::connect(router.addr, &phone, Some("alpha-phone")).await;
    let desk = sign(json!({"uid": "desk-7", "groups": ["crew"], "exp": now + 3600, "iat": now}));
    let mut browser = page(&router, &desk).await;
    browser.wait_for("alpha", "online").await;
    assert_eq!(browser.eval("document.body.dataset.connected").await, json!("true"));
}

/// Search reads status texts too; dnd and talking differ in colour (and the legend shows
/// the list's colours); a web token without groups is told it sees only itself; the page
/// comes with a policy that keeps it to its own script, style and origin, out of frames
/// and out of caches.
#[tokio::test]
async fn the_dashboard_page_searches_texts_tells_colours_apart_and_is_served_locked_down() {
    let router = Router::start(&[]).await;
    let reply = common::openapi::exchange(router.addr, &common::openapi::request("GET", "/dashboard", &[], "")).await;
    let policy = reply.header("content-security-policy").unwrap_or_default().to_string();
    for directive in ["default-src 'none'", "script-src 'sha256-", "connect-src 'self'", "frame-ancestors 'none'"] {
        assert!(policy.contains(directive), "{directive} in {policy}");
    }
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert_eq!(reply.header("x-frame-options"), Some("DENY"));
    assert_eq!(reply.header("cache-control"), Some("no-cache"));

    let mut busy = router.mobile_in("busy", &["crew"]).await;
    busy.set_status("busy", "dnd", Some("on patrol")).await;
    let mut talker = router.mobile_in("talker", &["crew"]).await;
    let mut listener = router.mobile_in("listener", &["crew"]).await;
    talker.take_floor("talker", "crew", &mut listener).await;
    let mut browser = page(&router, &token("dispatcher", Role::Dashboard)).await;
    browser.wait_for("busy", "dnd").await;
    browser.wait_until("document.querySelector('[data-user=\"talker\"] .badge.talking') !== null").await;
    // Running at all under the policy: the page's script connected, its style applies.
    assert_eq!(browser.eval("document.body.dataset.connected").await, json!("true"));

    let colour = |selector: &str| format!("getComputedStyle(document.querySelector({selector:?})).backgroundColor");
    let dnd = browser.eval(&colour("[data-user=\"busy\"] .dot")).await;
    let talking = browser.eval(&colour("[data-user=\"talker\"] .badge.talking")).await;
    assert_ne!(dnd, talking, "dnd and talking look alike");
    assert_eq!(browser.eval(&colour("#legend .dot.dnd")).await, dnd, "the legend shows the list's dnd");
    assert_eq!(browser.eval(&colour("#legend .badge.talking")).await, talking);

    search(&mut browser, "PATROL").await;
    shows(&mut browser, &["busy"]).await;

    let mut alone = page(&router, &token("lone-web", Role::Web)).await;
    alone.wait_until("document.body.dataset.connected === 'true'").await;
    alone.wait_until("!document.getElementById('hint').hidden").await;
    let hint = alone.eval("document.getElementById('hint').textContent").await;
    assert!(hint.as_str().unwrap().contains("only its own user"), "{hint}");
    assert_eq!(browser.eval("document.getElementById('hint').hidden").await, json!(true));
}
