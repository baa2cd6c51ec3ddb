//! The example programs, run as a new user runs them, against a real router: `mint_token`
//! has a real `--help` and mints the claims asked for; `web_dashboard` and `mobile_client`
//! print every frame as a readable line; each finds the router from `PORT` or `--url`, and
//! an error names the URL it tried.
//!
//! The binaries are the ones `cargo build --examples` leaves in `target/debug/examples/`
//! (`make test` builds them before running the tests).

mod common;

use std::{path::PathBuf, process::Stdio};

use common::{Router, SECRET, WAIT, free_port, map};
use presence_router::protocol::message_type;
use rmpv::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

/// The built example `name`.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/examples-<hash> → target/debug/examples/<name>
    let path = exe.parent().and_then(|deps| deps.parent()).unwrap().join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: build the examples first (cargo build --examples; make test does)",
        path.display()
    );
    path
}

/// The example `name` with `args`, signing with the suite's secret, its output piped.
fn command(name: &str, args: &[&str]) -> Command {
    let mut command = Command::new(example(name));
    command
        .args(args)
        .env("JWT_SECRET", SECRET)
        .env_remove("PORT")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs the example `name` to its end; returns whether it succeeded, its stdout and stderr.
async fn run(mut command: Command) -> (bool, String, String) {
    let output = tokio::time::timeout(WAIT, command.output()).await.expect("the example ends in time").unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (output.status.success(), text(output.stdout), text(output.stderr))
}

/// A running example and the lines it has printed.
struct Running {
    _child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(mut command: Command) -> Running {
        let mut child = command.spawn().expect("the example starts");
        let (sender, lines) = mpsc::unbounded_channel();
        for output in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sender = sender.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(output).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Running { _child: child, lines, seen: Vec::new() }
    }

    /// Waits for a line containing `text`; fails with every line printed so far.
    async fn line(&mut self, text: &str) -> String {
        let found = tokio::time::timeout(WAIT, async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line.clone());
                if line.contains(text) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        found.ok().flatten().unwrap_or_else(|| panic!("no line with {text:?}; printed: {:#?}", self.seen))
    }

    /// Asserts no line printed so far shows a frame as raw msgpack.
    fn all_readable(&self) {
        let raw = self.seen.iter().find(|line| line.contains("frame of type") || line.contains("[0, 3"));
        assert!(raw.is_none(), "a raw frame: {raw:?}; printed: {:#?}", self.seen);
    }
}

#[tokio::test]
async fn mint_token_help_prints_its_usage_and_mints_nothing() {
    let (ok, stdout, stderr) = run(command("mint_token", &["--help"])).await;
    assert!(ok, "{stderr}");
    for flag in ["Usage: mint_token", "--role", "--groups", "--ttl", "JWT_SECRET"] {
        assert!(stdout.contains(flag), "{flag} in {stdout}");
    }
    assert!(!stdout.contains("eyJ"), "no token: {stdout}");

    let (ok, _, stderr) = run(command("mint_token", &["u1", "--role", "admin"])).await;
    assert!(!ok && stderr.contains("admin"), "an unknown role is refused: {stderr}");
}

#[tokio::test]
async fn mint_token_refuses_what_would_make_a_token_the_router_refuses() {
    for (args, says) in [
        (&["u1", "--ttl", "18446744073709551615"][..], "--ttl"),
        (&["u1", "--ttl", "3155760001"], "--ttl"),
        (&["u1", "--ttl", "0"], "--ttl"),
        (&["0"], "0 means"),
        (&["bad\u{7}id"], "control character"),
    ] {
        let (ok, stdout, stderr) = run(command("mint_token", args)).await;
        assert!(!ok && stdout.is_empty(), "{args:?} is refused without a token: {stdout}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let (ok, stdout, stderr) = run(command("mint_token", &["u1", "--ttl", "3153600000"])).await;
    assert!(ok && stdout.starts_with("eyJ"), "100 years is the longest: {stderr}");
}

#[tokio::test]
async fn a_minted_token_carries_the_groups_ttl_and_role_asked_for_and_the_router_takes_it() {
    let args = ["dispatcher-7", "--role", "dashboard", "--groups", "north,south", "--ttl", "120"];
    let (ok, stdout, stderr) = run(command("mint_token", &args)).await;
    assert!(ok, "{stderr}");
    let token = stdout.trim();
    let mut validation = jsonwebtoken::Validation::default();
    validation.required_spec_claims.clear();
    let key = jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes());
    let claims =
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).expect("signed with JWT_SECRET").claims;
    assert_eq!(
        (claims["sub"].as_str(), claims["role"].as_str()),
        (Some("dispatcher-7"), Some("dashboard")),
        "{claims}"
    );
    assert_eq!(claims["groups"], serde_json::json!(["north", "south"]), "{claims}");
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 120, "{claims}");

    // A dashboard of north and south: it sees a member of north, not one of east.
    let router = Router::start(&[]).await;
    let _east = router.mobile_in("u-east", &["east"]).await;
    let _north = router.mobile_in("u-north", &["north"]).await;
    let mut dashboard = common::Client::connect(router.addr, token, None).await;
    let snapshot = dashboard.expect(message_type::PRESENCE_SNAPSHOT).await;
    let users: Vec<&str> =
        snapshot[5]["users"].as_array().unwrap().iter().filter_map(|u| u["userId"].as_str()).collect();
    assert_eq!(users, ["u-north"], "{snapshot}");
}

#[tokio::test]
async fn web_dashboard_prints_snapshots_updates_and_indicators_readably() {
    let router = Router::start(&[]).await;
    let _early = router.mobile_in("early", &["crew"]).await;
    let url = format!("ws://{}/", router.addr);
    let mut dashboard = Running::start(command("web_dashboard", &["--url", &url]));
    dashboard.line("snapshot: 1 online, 0 away, 0 dnd: early online").await;

    let mut mobile = router.mobile_in("u1", &["crew"]).await;
    dashboard.line("update: u1 is online (cause connect").await;
    mobile.set_status("u1", "dnd", Some("on patrol")).await;
    dashboard.line(r#"update: u1 is dnd ("on patrol") (cause status"#).await;
    mobile.indicator("u1", "crew", "typing", true).await;
    dashboard.line("indicator: u1 is typing in group crew").await;
    mobile.indicator("u1", "crew", "typing", false).await;
    dashboard.line("indicator: u1 stopped typing in group crew").await;
    mobile.close().await;
    dashboard.line("update: u1 is offline (cause disconnect").await;
    dashboard.all_readable();
}

#[tokio::test]
async fn web_dashboard_shows_what_is_live_when_it_opens_and_counts_away_and_dnd_apart() {
    let router = Router::start(&[]).await;
    let (mut early, _) = router.dashboard("early-watcher").await;
    let mut talker = router.mobile_in("talker", &["crew"]).await;
    let mut listener = router.mobile_in("listener", &["crew"]).await;
    talker.take_floor("talker", "crew", &mut listener).await;
    listener.set_status("listener", "away", None).await;
    listener.indicator("listener", "crew", "typing", true).await;
    let mut busy = router.mobile_in("busy", &["crew"]).await;
    busy.set_status("busy", "dnd", None).await;
    // The router's view holds all of it once a watcher has seen the last change.
    loop {
        let update = &early.next_frame().await[5];
        if (update["userId"].as_str(), update["status"].as_str()) == (Some("busy"), Some("dnd")) {
            break;
        }
    }

    let url = format!("ws://{}/", router.addr);
    let mut dashboard = Running::start(command("web_dashboard", &["--url", &url]));
    dashboard.line("snapshot: 1 online, 1 away, 1 dnd: ").await;
    dashboard.line("  group crew: 1 online, 1 away, 1 dnd").await;
    for live in ["  indicator: talker is talking in group crew", "  indicator: listener is typing in group crew"] {
        assert!(dashboard.seen.iter().any(|line| line == live), "{live:?} in {:#?}", dashboard.seen);
    }
    busy.close().await;
    dashboard.line("update: busy is offline").await;
    dashboard.line("  1 online, 1 away, 0 dnd").await;
    dashboard.all_readable();
}

#[tokio::test]
async fn mobile_client_prints_acks_errors_and_push_to_talk_readably() {
    let router = Router::start(&[]).await;
    let url = format!("ws://{}/", router.addr);
    let mut talker = router.mobile_in("talker", &["crew"]).await;
    let args = ["--url", &url, "--user", "listener", "--groups", "crew", "--interval", "1", "--status", "dnd"];
    let mut listener = Running::start(command("mobile_client", &args));
    listener.line("ack: status applied").await;
    listener.line("heartbeat acknowledged").await;

    // A talk in the group: START, AUDIO and STOP reach the listener.
    talker.send_frame(0, message_type::START, "talker", "crew", map(&[])).await;
    talker.expect(message_type::START_ACK).await;
    listener.line("talk: talker started talking in group crew").await;
    listener.line("indicator: talker is talking in group crew").await;
    talker.send_frame(0, message_type::AUDIO, "talker", "crew", Value::Binary(vec![1, 2, 3])).await;
    listener.line("audio: 3 bytes from talker in group crew").await;
    talker.send_frame(0, message_type::STOP, "talker", "crew", map(&[])).await;
    listener.line("talk: talker stopped talking in group crew after").await;
    listener.all_readable();

    // A STATUS the router refuses comes back as a readable error.
    let args = ["--url", &url, "--user", "other", "--status", "sleeping"];
    let mut refused = Running::start(command("mobile_client", &args));
    refused.line("error: invalid_payload (").await;
    refused.all_readable();
}

#[tokio::test]
async fn examples_find_the_router_from_port_and_name_the_url_of_every_failed_connection() {
    // PORT alone points the examples at the router.
    let router = Router::start(&[]).await;
    let port = router.addr.port().to_string();
    let mut found = command("web_dashboard", &[]);
    found.env("PORT", &port);
    let mut found = Running::start(found);
    found.line(&format!("connected to ws://127.0.0.1:{port}/")).await;
    found.line("snapshot: 0 online").await;

    // Nothing listening: the error names the URL, from PORT or from --url.
    let closed = free_port().to_string();
    let url = format!("ws://127.0.0.1:{closed}/");
    let mut from_port = command("mobile_client", &[]);
    from_port.env("PORT", &closed);
    for (name, command) in [("mobile_client", from_port), ("web_dashboard", command("web_dashboard", &["--url", &url]))]
    {
        let (ok, _, stderr) = run(command).await;
        assert!(!ok, "{name} fails");
        assert!(stderr.contains(&format!("cannot connect to {url}")), "{name}: {stderr}");
    }

    // A refused handshake: the URL, the status and the router's error code.
    let wrong = format!("ws://{}/", router.addr);
    let mut refused = command("web_dashboard", &["--url", &wrong]);
    refused.env("JWT_SECRET", "another-secret-of-at-least-32-bytes!!");
    let (ok, _, stderr) = run(refused).await;
    assert!(!ok && stderr.contains(&format!("{wrong} refused the connection: 401")), "{stderr}");
    assert!(stderr.contains("invalid_token"), "{stderr}");
}
