//! What operators read, against the real binary: JSON log lines for every connection
//! opened and closed and every refused handshake (at a capped rate), with the fields
//! docs/OPERATIONS.md lists; start errors that name what failed; `--help` grouped by topic;
//! a quiet start.

mod common;

use std::{process::Stdio, sync::Arc, time::Duration};

use common::{Client, Engine, Router, SECRET, Setup, WAIT, token, tokens::handshake};
use futures_util::future::join_all;
use presence_router::auth::Role;
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{ChildStderr, Command},
};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The router's stderr in JSON format, read line by line.
struct JsonLog(Lines<BufReader<ChildStderr>>);

impl JsonLog {
    async fn start(extra: &[&str]) -> (Router, JsonLog) {
        let (router, stderr) = Router::start_logged(None, &[&["--log-format", "json"], extra].concat()).await;
        (router, JsonLog(BufReader::new(stderr).lines()))
    }

    /// The next line; it must be a JSON object with a timestamp, level, target and message.
    async fn line(&mut self) -> Value {
        let line = self.0.next_line().await.unwrap().expect("the router is still logging");
        let json: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(json[field].is_string(), "{field} in {line}");
        }
        json
    }

    /// Every line up to the first whose message is `message` and that `matches` (the last).
    async fn until(&mut self, message: &str, matches: impl Fn(&Value) -> bool) -> Vec<Value> {
        let find = async {
            let mut lines = Vec::new();
            loop {
                let line = self.line().await;
                let found = line["message"] == message && matches(&line);
                lines.push(line);
                if found {
                    return lines;
                }
            }
        };
        tokio::time::timeout(WAIT, find).await.unwrap_or_else(|_| panic!("no `{message}` line in time"))
    }

    /// The next line whose message is `message` and that `matches`.
    async fn next(&mut self, message: &str, matches: impl Fn(&Value) -> bool) -> Value {
        self.until(message, matches).await.pop().unwrap()
    }
}

/// A mobile's WebSocket through a proxy on loopback (trusted by default) that names
/// `forwarded_for` as the client.
async fn mobile_via_proxy(router: &Router, user: &str, forwarded_for: &str) -> Client {
    let mut request = format!("ws://{}/", router.addr).into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("token", token(user, Role::Mobile).parse().unwrap());
    headers.insert("device_id", "tablet".parse().unwrap());
    headers.insert("x-forwarded-for", forwarded_for.parse().unwrap());
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request)).await.unwrap().unwrap();
    Client { ws }
}

#[tokio::test]
async fn each_connection_logs_one_json_line_opened_and_one_closed_with_who_and_how() {
    let (router, mut log) = JsonLog::start(&[]).await;
    let mut alice = router.mobile("alice", "phone").await;
    alice.sync("alice").await;
    let opened = log.next("connection opened", |l| l["span"]["user"] == "alice").await;
    let span = &opened["span"];
    assert_eq!(opened["level"], "INFO", "{opened}");
    assert_eq!(
        (&span["role"], &span["device"], &span["remote"]),
        (&"mobile".into(), &"phone".into(), &"127.0.0.1".into())
    );
    let session = span["session"].as_str().expect("a mobile has a session id").to_owned();
    assert!(session.contains(':'), "router id and number: {session}");

    alice.close().await;
    let closed = log.next("connection closed", |l| l["span"]["session"] == session.as_str()).await;
    assert_eq!((&closed["code"], &closed["reason"]), (&1000.into(), &"closed".into()), "{closed}");
    assert!(closed["duration_ms"].is_u64(), "{closed}");
    assert_eq!(closed["span"]["user"], "alice");

    // A dashboard has no session; the router closes it (1012 on shutdown) with its reason.
    let (_dashboard, _) = router.dashboard("watcher").await;
    let opened = log.next("connection opened", |l| l["span"]["user"] == "watcher").await;
    assert_eq!(opened["span"]["role"], "dashboard");
    assert!(opened["span"].get("session").is_none(), "{opened}");

    // Through a trusted proxy, the address is the client it names.
    let _bob = mobile_via_proxy(&router, "bob", "203.0.113.7").await;
    let opened = log.next("connection opened", |l| l["span"]["user"] == "bob").await;
    assert_eq!((&opened["span"]["remote"], &opened["span"]["device"]), (&"203.0.113.7".into(), &"tablet".into()));
}

#[tokio::test]
async fn refused_handshakes_are_logged_with_their_reason_at_a_capped_rate() {
    let (router, mut log) = JsonLog::start(&[]).await;
    let (status, _) = handshake(&router, "not-a-jwt").await;
    assert_eq!(status, 401);
    let first = log.next("handshake rejected", |_| true).await;
    assert_eq!(
        (&first["status"], &first["remote"], &first["suppressed"]),
        (&401.into(), &"127.0.0.1".into(), &0.into())
    );
    let reason = first["reason"].as_str().unwrap().to_owned();
    assert!(router.metrics().await.contains(&format!("presence_handshake_rejections_total{{reason=\"{reason}\"}} 1")));

    // A burst: ten lines a second at most; the rest are counted into a later line's
    // `suppressed`. Refusals paced after it start new seconds, whose first line reports
    // what the burst's seconds held back.
    let burst = 60;
    join_all((0..burst).map(|_| handshake(&router, "not-a-jwt"))).await;
    let router = Arc::new(router);
    let probes = tokio::spawn({
        let router = router.clone();
        async move {
            loop {
                handshake(&router, "not-a-jwt").await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let (mut logged, mut suppressed) = (0, 0);
    while logged + suppressed < burst {
        let line = log.next("handshake rejected", |_| true).await;
        logged += 1;
        suppressed += line["suppressed"].as_u64().unwrap();
    }
    probes.abort();
    assert!(suppressed > 0 && logged < burst, "{logged} lines for a burst of {burst}");

    // Refused by the per-address budget, before any HTTP: logged the same way.
    let limits = ["--address-connect-rate", "1", "--address-connect-burst", "1", "--trusted-proxies", "none"];
    let (router, mut log) = JsonLog::start(&limits).await;
    let _first = router.mobile("alice", "phone").await;
    let refused = handshake(&router, &token("alice", Role::Mobile)).await;
    assert_eq!(refused.0, 429);
    let line = log.next("handshake rejected", |_| true).await;
    assert_eq!(
        (&line["status"], &line["reason"], &line["remote"]),
        (&429.into(), &"address_rate".into(), &"127.0.0.1".into())
    );
}

/// Runs the router binary with `args` (and the suite's secret) until it exits; its stderr.
async fn exits_with(args: &[&str]) -> String {
    let child = Command::new(env!("CARGO_BIN_EXE_presence-router"))
        .args(["--jwt-secret", SECRET])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(WAIT, child.wait_with_output()).await.expect("exits in time").unwrap();
    assert_eq!(output.status.code(), Some(1));
    String::from_utf8(output.stderr).unwrap()
}

#[tokio::test]
async fn an_address_in_use_is_named_in_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let stderr = exits_with(&["--host", "127.0.0.1", "--port", &port]).await;
    let last = stderr.lines().last().unwrap();
    assert!(last.contains(&format!("cannot listen on 127.0.0.1:{port}: Address already in use")), "{stderr}");
    assert!(last.contains("ERROR"), "{stderr}");

    // In JSON too, as one object, so a log collector keeps it.
    let stderr = exits_with(&["--host", "127.0.0.1", "--port", &port, "--log-format", "json"]).await;
    let last: Value = serde_json::from_str(stderr.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "ERROR");
    assert!(last["message"].as_str().unwrap().starts_with(&format!("cannot listen on 127.0.0.1:{port}")), "{last}");

    let stderr = exits_with(&["--port", "0", "--metrics-addr", &format!("127.0.0.1:{port}")]).await;
    assert!(stderr.contains(&format!("cannot listen on 127.0.0.1:{port} (--metrics-addr)")), "{stderr}");
    drop(taken);
}

#[tokio::test]
async fn help_is_grouped_by_topic_and_names_nothing_internal() {
    let output = Command::new(env!("CARGO_BIN_EXE_presence-router")).arg("--help").output().await.unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    let headings = [
        "Network:",
        "Tokens:",
        "Connection limits:",
        "WebSocket limits:",
        "HTTP API limits:",
        "Presence:",
        "Push-to-talk:",
        "Redis:",
        "Observability:",
        "Webhooks:",
    ];
    let at: Vec<usize> =
        headings.iter().map(|h| help.find(&format!("\n{h}\n")).unwrap_or_else(|| panic!("{h}: {help}"))).collect();
    assert!(at.is_sorted(), "in this order: {headings:?}");
    for internal in ["seed", "brief", "trap", "field report"] {
        assert!(!help.to_lowercase().contains(internal), "{internal}: {help}");
    }
    // Every flag is followed by what it does.
    let lines: Vec<&str> = help.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("--") {
            let text = lines[i + 1].trim();
            assert!(!text.is_empty() && !text.starts_with('['), "{line} has no help text");
        }
    }
    for flag in ["--redis-port", "--redis-url", "--log-format"] {
        assert!(help.contains(&format!("      {flag} <")), "{flag}");
    }
}

async fn a_start_logs_no_rebuild(engine: Engine) {
    let setup = Setup::new(engine).await;
    let mut args = vec!["--log-format".to_string(), "json".to_string()];
    if let Some(redis) = &setup.redis {
        args.extend(["--redis-url".into(), format!("redis://127.0.0.1:{}", redis.port)]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_router, stderr) = Router::start_logged(None, &args).await;
    let mut log = JsonLog(BufReader::new(stderr).lines());
    // Logged last before the listen line: everything the start says is above it.
    let start = log.until("serving /metrics on the public port (no --metrics-addr)", |_| true).await;
    let messages: Vec<&str> = start.iter().map(|line| line["message"].as_str().unwrap()).collect();
    assert!(!messages.iter().any(|m| m.contains("rebuilt")), "{messages:?}");
    assert!(messages.contains(&"presence engine started"), "{messages:?}");
}

on_every_engine!(a_start_logs_no_rebuild);
