//! Presenting tokens to a real router at both doors (the WebSocket handshake and the HTTP
//! API), and starting routers whose key flags a test chooses.

use std::process::Stdio;

use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use super::{Client, Router, SECRET, WAIT, http};

/// Now, in Unix seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Signs arbitrary claims with the suite's secret (HS256).
pub fn sign(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The router binary with only `args` (no secret unless given) and `env`, stdout and
/// stderr piped, logging at `warn`.
pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Child {
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
pub async fn refused_at_start(args: &[&str], env: &[(&str, &str)]) -> String {
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

/// Attempts a handshake with `token`; returns the HTTP status and JSON body of the refusal.
pub async fn handshake(router: &Router, token: &str) -> (u16, serde_json::Value) {
    let mut request = format!("ws://{}/", router.addr).into_client_request().unwrap();
    request.headers_mut().insert("token", token.parse().unwrap());
    request.headers_mut().insert("device_id", "d".parse().unwrap());
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request)).await.expect("handshake in time") {
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().map(|b| serde_json::from_slice(b).unwrap()).unwrap_or_default();
            (response.status().as_u16(), body)
        }
        other => panic!("handshake should be refused, got {:?}", other.map(|(_, r)| r.status())),
    }
}

/// `GET /api/users/u/presence` with `Authorization: Bearer <token>`.
pub async fn api(router: &Router, token: &str) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {token}");
    http(router.addr, "GET", "/api/users/u/presence", &[("Authorization", &auth)], "").await
}

/// Both doors refuse `token` with 401 and `code`, with a message saying why.
pub async fn refused_everywhere(router: &Router, token: &str, code: &str, says: &str) {
    refused_with(router, token, 401, code, says).await;
}

/// Both doors refuse `token` with `status` and `code`, with a message that contains `says`.
pub async fn refused_with(router: &Router, token: &str, status: u16, code: &str, says: &str) {
    for (door, (got, body)) in [("WebSocket", handshake(router, token).await), ("HTTP", api(router, token).await)] {
        assert_eq!((got, body["error"]["code"].as_str()), (status, Some(code)), "{door}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{door}: {message:?} should mention {says:?}");
    }
}

/// Both doors accept `token` (for user `u`): a mobile connects and is acknowledged, the
/// API answers 200.
pub async fn accepted_everywhere(router: &Router, token: &str) {
    let mut mobile = Client::connect(router.addr, token, Some("d")).await;
    mobile.sync("u").await;
    let (status, body) = api(router, token).await;
    assert_eq!(status, 200, "{body}");
}
