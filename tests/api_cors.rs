//! CORS on the HTTP API (`--cors-origins`): off unless origins are named; then a preflight
//! from a named origin is answered with the methods, headers and max-age a browser needs,
//! API answers to it carry its origin, and every other origin, and every route outside
//! the API, gets no CORS header at all.

mod common;

use common::{
    Router, SECRET,
    openapi::{Reply, exchange, request},
    token,
    tokens::refused_at_start,
};
use presence_router::{auth::Role, http::API_ROUTES};

const APP: &str = "https://app.example.com";
const LOCAL: &str = "http://localhost:5173";

/// A preflight of `path` from `origin` for a GET with `Authorization`.
async fn preflight(router: &Router, path: &str, origin: &str) -> Reply {
    let headers = [
        ("Origin", origin),
        ("Access-Control-Request-Method", "GET"),
        ("Access-Control-Request-Headers", "authorization"),
    ];
    exchange(router.addr, &request("OPTIONS", path, &headers, "")).await
}

/// `GET path` from `origin` with a service token.
async fn get_from(router: &Router, path: &str, origin: &str) -> Reply {
    let auth = format!("Bearer {}", token("api", Role::Service));
    exchange(router.addr, &request("GET", path, &[("Origin", origin), ("Authorization", &auth)], "")).await
}

/// The API's paths, with `{id}` filled in.
fn api_paths() -> Vec<String> {
    API_ROUTES.iter().map(|route| route.replace("{id}", "u1")).collect()
}

/// The API's GET paths (one user, one group).
fn get_paths() -> [&'static str; 2] {
    ["/api/users/u1/presence", "/api/groups/crew/presence"]
}

/// A header's comma-separated values, lower-cased.
fn listed(reply: &Reply, name: &str) -> Vec<String> {
    let value = reply.header(name).unwrap_or_default().to_ascii_lowercase();
    value.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect()
}

/// Asserts that `reply` is a plain 405 with no CORS header.
fn plain_405(reply: &Reply) {
    assert_eq!((reply.status, reply.code().as_str()), (405, "method_not_allowed"), "{reply}");
    assert!(reply.cors_headers().is_empty(), "{reply}");
}

#[tokio::test]
async fn cors_is_off_unless_origins_are_named() {
    let off = Router::start(&[]).await;
    for path in api_paths() {
        plain_405(&preflight(&off, &path, APP).await);
    }
    for path in get_paths() {
        let reply = get_from(&off, path, APP).await;
        assert_eq!(reply.status, 200, "{reply}");
        assert!(reply.cors_headers().is_empty() && reply.header("vary").is_none(), "{reply}");
    }

    let on = Router::start(&["--cors-origins", APP]).await;
    for path in api_paths() {
        assert_eq!(preflight(&on, &path, APP).await.header("access-control-allow-origin"), Some(APP));
    }
}

#[tokio::test]
async fn a_preflight_from_a_named_origin_gets_the_methods_headers_and_max_age_a_browser_needs() {
    let router = Router::start(&["--cors-origins", &format!("{APP},{LOCAL}")]).await;
    for path in api_paths() {
        for origin in [APP, LOCAL] {
            let reply = preflight(&router, &path, origin).await;
            assert_eq!((reply.status, reply.header("access-control-allow-origin")), (200, Some(origin)), "{reply}");
            assert_eq!(listed(&reply, "access-control-allow-methods"), ["get", "post"], "{reply}");
            assert_eq!(listed(&reply, "access-control-allow-headers"), ["authorization", "content-type", "token"]);
            assert_eq!(reply.header("access-control-max-age"), Some("600"), "{reply}");
            assert!(listed(&reply, "vary").contains(&"origin".to_string()), "{reply}");
            assert!(reply.header("access-control-allow-credentials").is_none(), "tokens are not cookies: {reply}");
            assert!(reply.body.is_empty(), "{reply}");
        }
    }
}

#[tokio::test]
async fn api_answers_to_a_named_origin_carry_it_and_expose_retry_after() {
    let router = Router::start(&["--cors-origins", &format!("{APP},{LOCAL}")]).await;
    for path in get_paths() {
        let reply = get_from(&router, path, LOCAL).await;
        assert_eq!((reply.status, reply.header("access-control-allow-origin")), (200, Some(LOCAL)), "{reply}");
        assert_eq!(listed(&reply, "access-control-expose-headers"), ["retry-after"], "{reply}");
        assert!(listed(&reply, "vary").contains(&"origin".to_string()), "{reply}");
    }
    // Refusals too, so that a page can read why.
    let reply = exchange(router.addr, &request("GET", "/api/users/u1/presence", &[("Origin", APP)], "")).await;
    assert_eq!((reply.status, reply.header("access-control-allow-origin")), (401, Some(APP)), "{reply}");
}

#[tokio::test]
async fn other_origins_get_no_cors_header_and_answers_vary_by_origin() {
    let router = Router::start(&["--cors-origins", APP]).await;
    for origin in ["https://elsewhere.example", "https://app.example.com:8443", "http://app.example.com", "null"] {
        for path in api_paths() {
            plain_405(&preflight(&router, &path, origin).await);
        }
        for path in get_paths() {
            let reply = get_from(&router, path, origin).await;
            assert_eq!(reply.status, 200, "{reply}");
            assert!(reply.cors_headers().is_empty(), "{origin}: {reply}");
            assert_eq!(listed(&reply, "vary"), ["origin"], "a cache must not serve it to {APP}: {reply}");
        }
    }
}

#[tokio::test]
async fn a_star_lets_any_origin_call_the_api() {
    let router = Router::start(&["--cors-origins", "*"]).await;
    for origin in [APP, "https://anywhere.example"] {
        let reply = preflight(&router, "/api/users/u1/presence", origin).await;
        assert_eq!((reply.status, reply.header("access-control-allow-origin")), (200, Some("*")), "{reply}");
        let reply = get_from(&router, "/api/groups/crew/presence", origin).await;
        assert_eq!(reply.header("access-control-allow-origin"), Some("*"), "{reply}");
    }
}

#[tokio::test]
async fn cors_stays_off_the_websocket_endpoint_metrics_probes_and_dashboard() {
    let router = Router::start(&["--cors-origins", APP]).await;
    for path in ["/", "/ws", "/dashboard", "/metrics", "/livez", "/readyz", "/healthz"] {
        plain_405(&preflight(&router, path, APP).await);
        let reply = get_from(&router, path, APP).await;
        assert!(reply.cors_headers().is_empty() && reply.header("vary").is_none(), "{path}: {reply}");
    }
    let upgrade = [
        ("Origin", APP),
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("token", &token("u1", Role::Mobile)),
    ];
    let reply = exchange(router.addr, &request("GET", "/", &upgrade, "")).await;
    assert_eq!(reply.status, 101, "{reply}");
    assert!(reply.cors_headers().is_empty(), "{reply}");
}

#[tokio::test]
async fn origins_come_from_the_environment_too_and_a_bad_one_stops_the_start() {
    let router = Router::start_keyed(&["--jwt-secret", SECRET], &[("CORS_ORIGINS", LOCAL)]).await;
    let reply = preflight(&router, "/api/users/u1/presence", LOCAL).await;
    assert_eq!(reply.header("access-control-allow-origin"), Some(LOCAL), "{reply}");

    for (bad, says) in [("https://app.example.com/app", "without a path"), ("*,https://a.example", "alone")] {
        let stderr = refused_at_start(&["--jwt-secret", SECRET, "--cors-origins", bad], &[]).await;
        assert!(stderr.contains("--cors-origins") && stderr.contains(says), "{bad}: {stderr}");
    }
}

#[tokio::test]
async fn every_answer_under_api_carries_cors_unknown_paths_and_wrong_methods_included() {
    let router = Router::start(&["--cors-origins", APP]).await;
    let auth = format!("Bearer {}", token("api", Role::Service));
    let from_app = [("Origin", APP), ("Authorization", auth.as_str())];
    for (method, path, status, code) in [
        ("GET", "/api/nope", 404, "not_found"),
        ("GET", "/api", 404, "not_found"),
        ("POST", "/api/users/u1", 404, "not_found"),
        ("DELETE", "/api/users/u1/presence", 405, "method_not_allowed"),
        ("GET", "/api/presence/status", 405, "method_not_allowed"),
    ] {
        let reply = exchange(router.addr, &request(method, path, &from_app, "")).await;
        assert_eq!((reply.status, reply.code().as_str()), (status, code), "{method} {path}: {reply}");
        assert_eq!(reply.header("access-control-allow-origin"), Some(APP), "{method} {path}: {reply}");
        assert!(listed(&reply, "vary").contains(&"origin".to_string()), "{method} {path}: {reply}");
        let elsewhere = [("Origin", "https://elsewhere.example"), ("Authorization", auth.as_str())];
        let reply = exchange(router.addr, &request(method, path, &elsewhere, "")).await;
        assert!(reply.cors_headers().is_empty(), "{method} {path}: {reply}");
        assert_eq!(listed(&reply, "vary"), ["origin"], "{method} {path}: {reply}");
    }
    // Outside the API a 404 stays without CORS.
    let reply = exchange(router.addr, &request("GET", "/nope", &from_app, "")).await;
    assert_eq!(reply.status, 404, "{reply}");
    assert!(reply.cors_headers().is_empty() && reply.header("vary").is_none(), "{reply}");
}
