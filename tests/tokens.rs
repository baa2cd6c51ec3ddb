//! What the router checks in a token, against the real binary: the secret at start, then
//! `nbf` and the lifetime cap on the WebSocket handshake and the HTTP API alike.

mod common;

use common::{
    Client, Router, SECRET, WAIT, await_line, http, token,
    tokens::{accepted_everywhere, now, refused_at_start, refused_everywhere, sign, spawn},
};
use presence_router::auth::{Role, mint_hs256};
use tokio::{io::AsyncReadExt, process::Child};

const SHORT_WARNING: &str = "JWT secret is shorter than 32 bytes";

/// Starts a router with `args` and waits until it listens; returns the process and its address.
async fn serving(args: &[&str], env: &[(&str, &str)]) -> (Child, std::net::SocketAddr) {
    let mut child = spawn(args, env);
    let addr = await_line(child.stdout.take().unwrap(), "the router's listen line", |line| {
        line.strip_prefix("listening on ").map(|addr| addr.parse().unwrap())
    })
    .await;
    (child, addr)
}

/// Kills a router started by [`serving`] and returns everything it logged.
async fn log_of(mut child: Child) -> String {
    let mut stderr = child.stderr.take().unwrap();
    child.kill().await.unwrap();
    let mut log = String::new();
    tokio::time::timeout(WAIT, stderr.read_to_string(&mut log)).await.expect("stderr closes").unwrap();
    log
}

#[tokio::test]
async fn an_empty_secret_stops_the_router_at_start() {
    for (args, env) in [
        (&["--jwt-secret", ""][..], &[][..]),
        (&["--jwt-secret", "   "][..], &[][..]),
        (&[][..], &[("JWT_SECRET", "")][..]),
        (&[][..], &[("JWT_SECRET", " \t ")][..]),
    ] {
        let stderr = refused_at_start(args, env).await;
        assert!(stderr.contains("the JWT secret is empty"), "{args:?} {env:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test]
async fn a_secret_under_32_bytes_warns_once_and_serves() {
    let secret = "twelve-bytes";
    let (child, addr) = serving(&["--jwt-secret", secret], &[]).await;
    let token = mint_hs256(secret.as_bytes(), "u", Role::Mobile, 60).unwrap();
    let mut mobile = Client::connect(addr, &token, Some("d")).await;
    mobile.sync("u").await;
    let (status, body) =
        http(addr, "GET", "/api/users/u/presence", &[("Authorization", &format!("Bearer {token}"))], "").await;
    assert_eq!((status, body["user"]["status"].as_str()), (200, Some("online")), "{body}");
    let log = log_of(child).await;
    assert_eq!(log.matches(SHORT_WARNING).count(), 1, "{log}");
    assert!(log.contains("bytes=12") && log.contains("forged"), "says how short and why it matters: {log}");
    assert!(!log.contains(secret), "the secret itself is never logged: {log}");

    // The warning is written before the listen line, so a log without it is complete.
    let (child, _) = serving(&["--jwt-secret", &"k".repeat(32)], &[]).await;
    let log = log_of(child).await;
    assert!(!log.contains(SHORT_WARNING), "32 bytes is enough: {log}");
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused_on_both_doors() {
    let router = Router::start(&[]).await;
    let early = sign(serde_json::json!({"sub": "u", "role": "mobile", "nbf": now() + 120, "exp": now() + 600}));
    refused_everywhere(&router, &early, "token_not_yet_valid", "nbf").await;
    let text = router.metrics().await;
    assert!(text.contains("presence_handshake_rejections_total{reason=\"token_not_yet_valid\"} 1"), "{text}");

    // Within the 5 s leeway, or already past: valid. So is a token with no nbf or iat at all.
    let skewed = sign(serde_json::json!({"sub": "u", "role": "mobile", "nbf": now() + 2, "exp": now() + 600}));
    accepted_everywhere(&router, &skewed).await;
    let past = sign(serde_json::json!({"sub": "u", "role": "mobile", "nbf": now() - 60, "exp": now() + 600}));
    accepted_everywhere(&router, &past).await;
    accepted_everywhere(&router, &sign(serde_json::json!({"sub": "u", "role": "mobile", "exp": now() + 600}))).await;
}

#[tokio::test]
async fn the_lifetime_cap_is_enforced_on_both_doors() {
    let router = Router::start(&["--max-token-lifetime", "600"]).await;
    // The suite's tokens live an hour.
    refused_everywhere(&router, &token("u", Role::Mobile), "token_lifetime_too_long", "3600 s").await;
    let no_iat = sign(serde_json::json!({"sub": "u", "role": "mobile", "exp": now() + 60}));
    refused_everywhere(&router, &no_iat, "token_missing_iat", "iat").await;
    let text = router.metrics().await;
    for reason in ["token_lifetime_too_long", "token_missing_iat"] {
        assert!(text.contains(&format!("presence_handshake_rejections_total{{reason=\"{reason}\"}} 1")), "{text}");
    }

    accepted_everywhere(&router, &mint_hs256(SECRET.as_bytes(), "u", Role::Mobile, 600).unwrap()).await;
}

#[tokio::test]
async fn the_lifetime_cap_is_read_from_the_environment() {
    let (_router, addr) = serving(&["--jwt-secret", SECRET], &[("MAX_TOKEN_LIFETIME", "600")]).await;
    let bearer = format!("Bearer {}", token("u", Role::Mobile));
    let (status, body) = http(addr, "GET", "/api/users/u/presence", &[("Authorization", &bearer)], "").await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("token_lifetime_too_long")), "{body}");
}
