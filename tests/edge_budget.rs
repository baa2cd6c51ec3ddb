//! The per-address connection budget, on the real router binary: a client address that
//! reconnects in a loop is refused 429 once its budget is spent, and one whose WebSocket
//! was closed 4029 is refused for the penalty, while clients from other addresses connect
//! and round-trip; behind a trusted proxy the client its `X-Forwarded-For` names is
//! budgeted, and an untrusted peer's `X-Forwarded-For` is ignored.
//!
//! Clients pick their source address: on Linux every 127.0.0.0/8 address is local.

mod common;

use std::net::{IpAddr, SocketAddr};

use common::{
    Client, Router, WAIT,
    raw::{Answer, End, RawWs, frame, try_handshake},
    token,
};
use presence_router::{auth::Role, ws::frame::opcode::PING};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpSocket,
};

/// Attempts in a loop before a refusal must have come: far past any budget the tests set.
const ATTEMPTS: usize = 200;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// One WebSocket handshake for `user` from `source` with `extra` header lines.
async fn handshake(source: &str, router: SocketAddr, user: &str, extra: &str) -> Answer {
    try_handshake(ip(source), router, &token(user, Role::Mobile), extra).await
}

/// Handshakes from `source` until one is refused; panics if [`ATTEMPTS`] all upgrade.
/// `extra` may vary with the attempt.
async fn until_refused(source: &str, router: SocketAddr, extra: impl Fn(usize) -> String) -> (usize, Answer) {
    for attempt in 0..ATTEMPTS {
        let answer = handshake(source, router, "looper", &extra(attempt)).await;
        if answer.status != 101 {
            return (attempt, answer);
        }
    }
    panic!("{ATTEMPTS} handshakes from {source} in a loop were all accepted");
}

/// A mobile from `source` that connects and round-trips a heartbeat.
async fn round_trip(source: &str, router: SocketAddr, user: &str) {
    let mut client = Client::connect_from(ip(source), router, &token(user, Role::Mobile), "d").await;
    client.sync(user).await;
}

/// `/metrics`, scraped from 127.0.0.9: the addresses under test may be refused.
async fn metrics(router: SocketAddr) -> String {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip("127.0.0.9"), 0)).unwrap();
    let mut stream = socket.connect(router).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut out)).await.expect("metrics in time").unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

fn refused(metrics: &str, reason: &str) -> u64 {
    let series = format!("presence_http_refused_total{{reason=\"{reason}\"}} ");
    metrics.lines().find_map(|line| line.strip_prefix(&series)?.parse().ok()).unwrap_or(0)
}

/// A WebSocket from `source` (with `extra` header lines) flooding pings until the router
/// closes it 4029.
async fn flood_until_4029(source: &str, router: SocketAddr, extra: &str) {
    let mut flooder = RawWs::connect_from(ip(source), router, &token("flooder", Role::Mobile), extra).await;
    let pings: Vec<u8> = (0..2000).flat_map(|_| frame(true, PING, b"p")).collect();
    flooder.send(&pings).await;
    assert_eq!(flooder.end().await, End::Closed(Some(4029)));
}

#[tokio::test]
async fn a_client_reconnecting_in_a_loop_is_refused_while_other_addresses_connect() {
    let router =
        Router::start(&["--trusted-proxies", "none", "--address-connect-rate", "1", "--address-connect-burst", "5"])
            .await;
    let (accepted, answer) = until_refused("127.0.0.1", router.addr, |_| String::new()).await;
    assert!(accepted >= 5, "the burst is admitted first: {accepted}");
    assert_eq!((answer.status, answer.code().as_str()), (429, "address_rate_limited"), "{answer:?}");
    let retry: u64 = answer.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!(retry >= 1, "{answer:?}");
    assert_eq!(answer.header("connection"), Some("close"));

    // Another address has a budget of its own, and its WebSocket works.
    round_trip("127.0.0.2", router.addr, "other").await;
    assert!(refused(&metrics(router.addr).await, "address_rate") >= 1);
}

#[tokio::test]
async fn a_client_closed_4029_is_refused_for_the_penalty_while_others_connect() {
    // A rate far above what the test spends: only the penalty refuses.
    let router =
        Router::start(&["--trusted-proxies", "none", "--address-connect-rate", "1000", "--abuse-penalty-ms", "600000"])
            .await;
    flood_until_4029("127.0.0.1", router.addr, "").await;

    let answer = handshake("127.0.0.1", router.addr, "flooder", "").await;
    assert_eq!((answer.status, answer.code().as_str()), (429, "address_penalized"), "{answer:?}");
    let retry: u64 = answer.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=600).contains(&retry), "what is left of the penalty: {answer:?}");
    // Any user from that address: the address is what flooded.
    assert_eq!(handshake("127.0.0.1", router.addr, "someone-else", "").await.status, 429);

    round_trip("127.0.0.2", router.addr, "other").await;
    let metrics = metrics(router.addr).await;
    assert!(refused(&metrics, "address_penalty") >= 2, "{metrics}");
    assert!(metrics.contains("presence_edge_penalties_total 1"), "{metrics}");
}

/// A router behind a proxy at 127.0.0.2, budgeting 3 connections at once and 1 a second
/// per client, with a penalty longer than any test.
async fn behind_a_proxy_at_127_0_0_2() -> Router {
    Router::start(&[
        "--trusted-proxies",
        "127.0.0.2/32",
        "--address-connect-rate",
        "1",
        "--address-connect-burst",
        "3",
        "--abuse-penalty-ms",
        "600000",
    ])
    .await
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_budgeted_and_an_untrusted_peers_header_ignored() {
    let router = behind_a_proxy_at_127_0_0_2().await;
    // Through the proxy: the client it appended is budgeted, not what the client wrote
    // left of it, which changes on every attempt.
    let (accepted, answer) = until_refused("127.0.0.2", router.addr, |i| {
        format!("X-Forwarded-For: 203.0.113.{}, 198.51.100.7\r\n", i % 250)
    })
    .await;
    assert!(accepted >= 3, "{accepted}");
    assert_eq!((answer.status, answer.code().as_str()), (429, "address_rate_limited"), "{answer:?}");
    // Another client behind the same proxy has its own budget.
    let other = handshake("127.0.0.2", router.addr, "u", "X-Forwarded-For: 198.51.100.8\r\n").await;
    assert_eq!(other.status, 101, "{other:?}");
    // The proxy's own requests (naming no client) are not budgeted.
    for _ in 0..10 {
        assert_eq!(handshake("127.0.0.2", router.addr, "u", "").await.status, 101);
    }

    // A flooder behind the proxy is penalized by its own address, named by X-Forwarded-For
    // or, without it, X-Real-IP; its neighbours behind the proxy are not.
    flood_until_4029("127.0.0.2", router.addr, "X-Forwarded-For: 198.51.100.9\r\n").await;
    for header in ["X-Forwarded-For", "X-Real-IP"] {
        let answer = handshake("127.0.0.2", router.addr, "u", &format!("{header}: 198.51.100.9\r\n")).await;
        assert_eq!(answer.code(), "address_penalized", "{header}: {answer:?}");
    }
    let neighbour = handshake("127.0.0.2", router.addr, "u", "X-Forwarded-For: 198.51.100.10\r\n").await;
    assert_eq!(neighbour.status, 101, "{neighbour:?}");

    // An untrusted peer naming a new client each time is still keyed on its own address.
    let (accepted, answer) =
        until_refused("127.0.0.3", router.addr, |i| format!("X-Forwarded-For: 198.51.100.{}\r\n", 20 + i % 200)).await;
    assert!(accepted >= 3, "{accepted}");
    assert_eq!(answer.code(), "address_rate_limited", "{answer:?}");
    round_trip("127.0.0.4", router.addr, "other").await;
}

/// A client behind the proxy cannot escape its budget, nor its penalty, by writing bytes
/// that are not ASCII into its own `X-Forwarded-For`: nginx passes them on and appends the
/// client's address to the same header line (`é, 198.51.100.7`), which is still read.
#[tokio::test]
async fn a_forwarded_client_writing_bytes_that_are_not_ascii_is_still_budgeted() {
    let router = behind_a_proxy_at_127_0_0_2().await;
    let (accepted, answer) =
        until_refused("127.0.0.2", router.addr, |_| "X-Forwarded-For: \u{e9}, 198.51.100.7\r\n".into()).await;
    assert!(accepted >= 3, "{accepted}");
    assert_eq!(answer.code(), "address_rate_limited", "{answer:?}");

    flood_until_4029("127.0.0.2", router.addr, "X-Forwarded-For: \u{e9}, 198.51.100.9\r\n").await;
    let answer = handshake("127.0.0.2", router.addr, "u", "X-Forwarded-For: \u{e9}, 198.51.100.9\r\n").await;
    assert_eq!(answer.code(), "address_penalized", "{answer:?}");
}

#[tokio::test]
async fn by_default_loopback_is_a_trusted_proxy_and_not_budgeted_itself() {
    // The shipped nginx config reaches the routers over loopback: its own address must not
    // be one budget for every client behind it.
    let router = Router::start(&["--address-connect-rate", "1", "--address-connect-burst", "2"]).await;
    for _ in 0..10 {
        assert_eq!(handshake("127.0.0.1", router.addr, "u", "").await.status, 101);
    }
    let (_, answer) = until_refused("127.0.0.1", router.addr, |_| "X-Forwarded-For: 198.51.100.7\r\n".into()).await;
    assert_eq!(answer.code(), "address_rate_limited", "{answer:?}");
}
