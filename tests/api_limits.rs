//! The HTTP API's limits against the router binary: the per-user
//! ids-per-second budget (429 with `Retry-After`), and `/metrics` moved off the public port
//! by `--metrics-addr`.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{Router, SECRET, WAIT, await_line, free_port, token};
use presence_router::auth::{Role, mint_hs256};
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

    /// `Retry-After` in whole seconds, asserting it is there and at least 1.
    fn retry_after(&self) -> u64 {
        let value = self.header("retry-after").unwrap_or_else(|| panic!("a Retry-After header: {}", self.head));
        let secs: u64 = value.parse().unwrap_or_else(|_| panic!("whole seconds: {value}"));
        assert!(secs >= 1, "{}", self.head);
        secs
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

/// Sends `send` until it is answered 429, at most `limit` times; returns how many were
/// answered 200 before, and the 429.
async fn until_refused<F, Fut>(limit: usize, mut send: F) -> (usize, Response)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    for served in 0..limit {
        let response = send().await;
        match response.status {
            200 => continue,
            429 => return (served, response),
            other => panic!("expected 200 or 429, got {other}: {}", response.text),
        }
    }
    panic!("{limit} requests were all answered 200: no rate limit");
}

fn assert_rate_limited(response: &Response) {
    assert_eq!(response.status, 429);
    assert_eq!(response.body["success"], false, "{}", response.text);
    assert_eq!(response.body["error"]["code"], "rate_limited", "{}", response.text);
    assert!(response.header("content-type").is_some_and(|t| t.starts_with("application/json")), "{}", response.head);
}

#[tokio::test]
async fn with_the_default_budget_a_bulk_scraper_is_stopped_after_its_burst() {
    // Default: 1000 ids/s per user with a burst of 5000. A token asking for 100 ids as fast
    // as it can gets its 50 requests of burst, then 429; before the limit it got 30k-96k ids/s.
    let router = Router::start(&[]).await;
    let scraper = token("scraper", Role::Mobile);
    let started = tokio::time::Instant::now();
    let (served, refused) = until_refused(400, || bulk(router.addr, &scraper)).await;
    let elapsed = started.elapsed().as_secs_f64();
    assert_rate_limited(&refused);
    assert!(served >= 50, "the burst (5000 ids) is served first, got {served} requests");
    let allowed = 5000.0 + 1000.0 * elapsed;
    assert!((served * 100) as f64 <= allowed + 100.0, "{served} requests in {elapsed:.2} s: more than {allowed} ids");
    let retry_after = refused.retry_after();
    assert!(retry_after <= 1, "100 ids come back within a second at 1000/s, got {retry_after}");
}

#[tokio::test]
async fn over_its_budget_a_user_gets_429_others_do_not_and_after_retry_after_it_is_served_again() {
    let router = Router::start(&["--api-ids-per-second", "100", "--api-ids-burst", "300"]).await;
    let scraper = token("scraper", Role::Mobile);

    let (served, refused) = until_refused(10, || bulk(router.addr, &scraper)).await;
    assert!(served >= 3, "the burst of 300 ids is served: {served} requests");
    assert_rate_limited(&refused);
    let retry_after = refused.retry_after();
    assert!(retry_after <= 2, "100 ids come back within a second at 100/s, got {retry_after}");

    let metrics = router.metrics().await;
    assert!(metrics.contains("presence_api_rate_limited_total{route=\"/api/presence/status\"} 1\n"), "{metrics}");
    assert!(
        metrics.contains("presence_api_requests_total{route=\"/api/presence/status\",status=\"429\"} 1\n"),
        "{metrics}"
    );

    // Another user has a budget of its own.
    let backend = bulk(router.addr, &token("backend", Role::Mobile)).await;
    assert_eq!(backend.status, 200, "{}", backend.text);
    // The same user with a fresh token does not: the budget is per subject, not per token.
    let fresh = mint_hs256(SECRET.as_bytes(), "scraper", Role::Mobile, 7200).unwrap();
    assert_ne!(fresh, scraper);
    assert_rate_limited(&bulk(router.addr, &fresh).await);

    // Waiting what Retry-After said is enough.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let again = bulk(router.addr, &scraper).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["users"].as_array().map(Vec::len), Some(100));
}

#[tokio::test]
async fn a_user_lookup_costs_one_id_and_a_group_read_one_hundred() {
    // 1 id per second, 100 at once: a hundred user lookups pass, then 429; one group read
    // spends the whole bucket, so the next must wait for all of it to come back.
    let router = Router::start(&["--api-ids-per-second", "1", "--api-ids-burst", "100"]).await;
    let looker = token("looker", Role::Dashboard);
    let started = tokio::time::Instant::now();
    let (served, refused) =
        until_refused(150, || request(router.addr, "GET", "/api/users/someone/presence", Some(&looker), "")).await;
    let refilled = started.elapsed().as_secs() as usize + 1;
    assert!((100..=100 + refilled).contains(&served), "{served} lookups of 1 id in a budget of 100");
    assert_rate_limited(&refused);
    assert_eq!(refused.retry_after(), 1);

    let reader = token("reader", Role::Dashboard);
    let first = request(router.addr, "GET", "/api/groups/north/presence", Some(&reader), "").await;
    assert_eq!(first.status, 200, "{}", first.text);
    let second = request(router.addr, "GET", "/api/groups/north/presence", Some(&reader), "").await;
    assert_rate_limited(&second);
    assert!((95..=100).contains(&second.retry_after()), "100 ids at 1/s: {}", second.head);

    let metrics = router.metrics().await;
    for route in ["/api/users/{id}/presence", "/api/groups/{id}/presence"] {
        assert!(metrics.contains(&format!("presence_api_rate_limited_total{{route=\"{route}\"}} 1\n")), "{metrics}");
    }
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
    // Health too, so probes need not use the public port, and nothing else.
    let health = get(metrics_addr, "/healthz").await;
    assert_eq!((health.status, health.body["status"].as_str()), (200, Some("ok")), "{}", health.text);
    for path in ["/api/users/u/presence", "/", "/dashboard"] {
        assert_eq!(get(metrics_addr, path).await.status, 404, "{path} on the metrics address");
    }
    let post = request(metrics_addr, "POST", "/healthz", None, "").await;
    assert_eq!(post.status, 405, "{}", post.text);

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

/// Reads group `big` of `members` mobiles twice in a row, with a dashboard token of a
/// router allowing 1 id a second and a burst of `burst`.
async fn read_a_big_group_twice(members: usize, burst: &str) -> (Response, Response) {
    let router = Router::start(&["--api-ids-per-second", "1", "--api-ids-burst", burst]).await;
    let mut mobiles = Vec::new();
    for i in 0..members {
        mobiles.push(router.mobile_in(&format!("m{i}"), &["big"]).await);
    }
    let reader = token("reader", Role::Dashboard);
    let first = request(router.addr, "GET", "/api/groups/big/presence", Some(&reader), "").await;
    let second = request(router.addr, "GET", "/api/groups/big/presence", Some(&reader), "").await;
    (first, second)
}

/// A group with more participants than a bulk request holds costs them all: reading a
/// large group spends what looking its members up would (it used to cost a fixed 100).
#[tokio::test]
async fn a_large_group_costs_its_participants() {
    let (first, second) = read_a_big_group_twice(200, "300").await;
    assert_eq!(first.status, 200, "{}", first.text);
    // 200 of the 300 are spent: another read of the group does not fit.
    assert_rate_limited(&second);
}

/// A group with more participants than the burst is still read from a full bucket, which
/// it empties: the largest request always fits a full bucket.
#[tokio::test]
async fn a_group_larger_than_the_burst_is_read_from_a_full_bucket() {
    let (first, second) = read_a_big_group_twice(150, "100").await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.body["participants"].as_array().map(Vec::len), Some(150));
    assert_rate_limited(&second);
}
