//! The probes against real routers: `/livez` answers 200 whenever the router serves, Redis
//! or not; `/readyz` answers 503 with the reason while the engine is degraded and 200 again
//! once presence is rebuilt; both on the public port and on `--metrics-addr`, beside
//! `/healthz`.

mod common;

use std::net::SocketAddr;

use common::{Engine, Setup, eventually, free_port, http};

/// `GET path` without credentials: status and JSON body.
async fn probe(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    http(addr, "GET", path, &[], "").await
}

/// The public port and the `--metrics-addr` of a router on `setup`.
async fn router_with_metrics_addr(setup: &Setup) -> (common::Router, SocketAddr) {
    let metrics_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let router = setup.router(&["--metrics-addr", &metrics_addr.to_string()]).await;
    (router, metrics_addr)
}

#[tokio::test]
async fn probes_answer_on_the_public_port_and_on_the_metrics_address() {
    let setup = Setup::new(Engine::Memory).await;
    let (router, metrics_addr) = router_with_metrics_addr(&setup).await;
    for addr in [router.addr, metrics_addr] {
        let (status, body) = probe(addr, "/livez").await;
        assert_eq!((status, body["status"].as_str()), (200, Some("ok")), "/livez on {addr}: {body}");
        let (status, body) = probe(addr, "/readyz").await;
        assert_eq!((status, body["status"].as_str()), (200, Some("ready")), "/readyz on {addr}: {body}");
        assert_eq!(body["engine"].as_str(), Some("memory"));
        let (status, body) = probe(addr, "/healthz").await;
        assert_eq!((status, body["status"].as_str()), (200, Some("ok")), "/healthz on {addr}: {body}");
        let (status, body) = http(addr, "POST", "/readyz", &[], "").await;
        assert_eq!(status, 405, "POST /readyz on {addr}: {body}");
    }
}

#[tokio::test]
async fn readiness_follows_redis_and_liveness_does_not() {
    let mut setup = Setup::new(Engine::Redis).await;
    let (router, metrics_addr) = router_with_metrics_addr(&setup).await;
    assert_eq!(probe(router.addr, "/readyz").await.0, 200);

    let redis = setup.redis.as_mut().expect("a Redis setup");
    redis.kill().await;
    for addr in [router.addr, metrics_addr] {
        eventually(
            "/readyz to answer 503 while Redis is down",
            || async move { probe(addr, "/readyz").await.0 == 503 },
        )
        .await;
        let (_, body) = probe(addr, "/readyz").await;
        assert_eq!(body["status"].as_str(), Some("degraded"), "{body}");
        assert!(body["reason"].as_str().is_some_and(|r| !r.is_empty()), "the body says why: {body}");
        let (status, body) = probe(addr, "/livez").await;
        assert_eq!(status, 200, "liveness does not depend on Redis: {body}");
        assert_eq!(probe(addr, "/healthz").await.0, 503, "/healthz keeps reporting degraded");
    }

    redis.spawn().await;
    for addr in [router.addr, metrics_addr] {
        eventually("/readyz to answer 200 once presence is rebuilt", || async move {
            probe(addr, "/readyz").await.0 == 200
        })
        .await;
        assert_eq!(probe(addr, "/livez").await.0, 200);
    }
}
