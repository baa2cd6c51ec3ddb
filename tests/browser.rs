//! The router's dashboard page in real headless Chromium: it authenticates with the
//! Sec-WebSocket-Protocol pair, shows the snapshot, and follows live updates.
//! Chromium is driven over the DevTools protocol (`make deps` installs it).

mod common;

use std::{process::Stdio, time::Duration};

use common::{Router, WAIT, await_line, token};
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

    /// Polls a JavaScript condition until it is true (the page has no event to await).
    async fn wait_until(&mut self, condition: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
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
