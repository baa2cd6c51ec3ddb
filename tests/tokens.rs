//! What the router checks in a token, against the real binary: the secret at start.

mod common;

use std::process::Stdio;

use common::{Client, WAIT, await_line, http};
use presence_router::auth::{Role, mint_hs256};
use tokio::{
    io::AsyncReadExt,
    process::{Child, Command},
};

const SHORT_WARNING: &str = "JWT secret is shorter than 32 bytes";

/// The router binary with only `args` (no secret unless given) and `env`, stdout and
/// stderr piped, logging at `warn`.
fn spawn(args: &[&str], env: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_presence-router"))
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(args)
        .env_remove("JWT_SECRET")
        .env_remove("JWT_PUBLIC_KEY")
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("router binary starts")
}

/// Runs a router that must refuse to start; returns its stderr.
async fn refused_at_start(args: &[&str], env: &[(&str, &str)]) -> String {
    let child = spawn(args, env);
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the router exits instead of serving")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "exit status {:?}; stderr: {stderr}", output.status);
    assert!(output.stdout.is_empty(), "it never listened: {}", String::from_utf8_lossy(&output.stdout));
    stderr
}

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
