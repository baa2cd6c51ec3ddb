//! The HTTP API's limits against the router binary (issue #10): `/metrics` moved off the
//! public port by `--metrics-addr`.

mod common;

use std::net::SocketAddr;

use common::{Router, WAIT, await_line, free_port, token};
use presence_router::auth::Role;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A response: status, head (lowercased header lines) and JSON body (Null if not JSON).
struct Response {
    status: u16,
    head: String,
    body: serde_json::Value,
    text: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| line.strip_prefix(&format!("{name}:"))).map(str::trim)
    }
}

/// One request on its own connection.
async fn request(addr: SocketAddr, method: &str, path: &str, bearer: Option<&str>, body: &str) -> Response {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = bearer {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    stream.write_all(format!("{head}\r\n{body}").as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await.expect("response in time").unwrap();
    let text = String::from_utf8(response).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    Response {
        status: head[9..12].parse().expect("status code"),
        head: head.to_ascii_lowercase(),
        body: serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        text: body.to_string(),
    }
}

/// `POST /api/presence/status` for 100 ids.
async fn bulk(addr: SocketAddr, token: &str) -> Response {
    let ids: Vec<String> = (0..100).map(|i| format!("user-{i}")).collect();
    request(addr, "POST", "/api/presence/status", Some(token), &serde_json::json!({ "userIds": ids }).to_string()).await
}

/// `GET path` on `addr`, raw, without a token.
async fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, None, "").await
}

#[tokio::test]
async fn with_a_metrics_address_the_public_port_answers_404_for_metrics() {
    let metrics_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let (mut router, stderr) = Router::start_logged(None, &["--metrics-addr", &metrics_addr.to_string()]).await;
    let logged = format!("addr={metrics_addr}");
    await_line(stderr, "the metrics address in the log", |line| {
        (line.contains("/metrics") && line.contains(&logged)).then_some(())
    })
    .await;

    // The public port: no /metrics, the rest as before.
    let public = get(router.addr, "/metrics").await;
    assert_eq!(public.status, 404, "{}", public.text);
    assert_eq!(public.body["error"]["code"], "not_found");
    assert!(!public.text.contains("presence_"), "{}", public.text);
    assert_eq!(get(router.addr, "/healthz").await.status, 200);
    let api = bulk(router.addr, &token("api", Role::Mobile)).await;
    assert_eq!(api.status, 200, "{}", api.text);

    // The metrics address: Prometheus text, with what the public port just served.
    let scrape = get(metrics_addr, "/metrics").await;
    assert_eq!(scrape.status, 200);
    assert!(scrape.header("content-type").is_some_and(|t| t.starts_with("text/plain")), "{}", scrape.head);
    assert!(scrape.text.contains("# TYPE presence_api_requests_total counter"), "{}", scrape.text);
    assert!(
        scrape.text.contains("presence_api_requests_total{route=\"/api/presence/status\",status=\"200\"} 1"),
        "{}",
        scrape.text
    );
    // ... and nothing else.
    for path in ["/healthz", "/api/users/u/presence", "/", "/dashboard"] {
        assert_eq!(get(metrics_addr, path).await.status, 404, "{path} on the metrics address");
    }

    // Both listeners stop on TERM.
    router.signal("TERM").await;
    assert!(router.exited().await.success());
    assert!(TcpStream::connect(metrics_addr).await.is_err(), "the metrics listener is closed");
}

#[tokio::test]
async fn without_a_metrics_address_metrics_stay_on_the_public_port() {
    let router = Router::start(&[]).await;
    let scrape = get(router.addr, "/metrics").await;
    assert_eq!(scrape.status, 200);
    assert!(scrape.text.contains("# TYPE presence_"), "{}", scrape.text);
}
