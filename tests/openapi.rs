//! docs/openapi.yaml against the router: the spec describes exactly the routes the router
//! serves, and every answer a real router gives (successes on the memory and Redis
//! engines, every error it can be brought to give) is one the spec describes: its
//! status, its headers, its content type and its JSON body.

mod common;

use std::collections::BTreeSet;

use common::{
    Engine, Router, SECRET, Setup, WAIT,
    openapi::{Reply, SPEC, exchange, read_reply, request},
    prometheus::metric,
    tokens::{now, sign},
};
use presence_router::{
    auth::{Role, mint_hs256_in},
    http::{metrics_routes, public_routes},
};
use tokio::{io::AsyncWriteExt, net::TcpStream};

const STATUS: &str = "/api/presence/status";
const USER: &str = "/api/users/{id}/presence";
const GROUP: &str = "/api/groups/{id}/presence";
const ORIGIN: &str = "https://app.example.com";

/// The headers of a WebSocket upgrade, before the credentials.
const UPGRADE: [(&str, &str); 4] = [
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

/// `template` with its `{id}` filled in.
fn at(template: &str, id: &str) -> String {
    template.replace("{id}", id)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A token of `user` in `groups`.
fn token_in(user: &str, role: Role, groups: &[&str]) -> String {
    mint_hs256_in(SECRET.as_bytes(), user, role, Some(groups), 3600).unwrap()
}

/// `method path` on `router` (`path` being `template` filled in), checked against the
/// spec's `method template`.
async fn answered(
    router: &Router,
    method: &str,
    template: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let reply = exchange(router.addr, &request(method, path, headers, body)).await;
    SPEC.check(method, template, &reply);
    reply
}

/// A WebSocket upgrade of `path` with `credentials`, checked against the spec.
async fn upgrade(router: &Router, path: &str, credentials: &[(&str, &str)]) -> Reply {
    let headers = [&UPGRADE[..], credentials].concat();
    answered(router, "GET", path, path, &headers, "").await
}

/// Asserts a JSON error's status and code.
fn refused(reply: &Reply, status: u16, code: &str) {
    assert_eq!((reply.status, reply.code().as_str()), (status, code), "{reply}");
}

#[test]
fn the_spec_describes_exactly_the_routes_the_router_serves() {
    let mut served = BTreeSet::new();
    for route in public_routes(true).iter().chain(&metrics_routes()) {
        served.insert((route.method.to_string(), route.path.to_string()));
        if route.is_api() {
            // Answered by the CORS layer with --cors-origins.
            served.insert(("OPTIONS".to_string(), route.path.to_string()));
        }
    }
    let described = SPEC.operations();
    let undescribed: Vec<_> = served.difference(&described).collect();
    let unserved: Vec<_> = described.difference(&served).collect();
    assert!(undescribed.is_empty(), "served but not in docs/openapi.yaml: {undescribed:?}");
    assert!(unserved.is_empty(), "in docs/openapi.yaml but not served: {unserved:?}");
}

#[test]
fn the_spec_is_a_valid_openapi_3_1_document() {
    let schema: serde_json::Value = serde_json::from_str(include_str!("fixtures/openapi-3.1-schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the OpenAPI 3.1 schema");
    let errors: Vec<String> =
        validator.iter_errors(SPEC.doc()).map(|e| format!("{e} (at {})", e.instance_path())).collect();
    assert!(errors.is_empty(), "docs/openapi.yaml is not a valid OpenAPI 3.1 document: {errors:#?}");
    let undeclared = SPEC.undeclared_path_parameters();
    assert!(undeclared.is_empty(), "path parameters not declared: {undeclared:?}");
}

#[tokio::test]
async fn every_described_operation_is_served_and_answers_without_a_token_as_described() {
    let router = Router::start(&["--cors-origins", ORIGIN]).await;
    for (method, template) in SPEC.operations() {
        let path = at(&template, "u1");
        let headers: &[(&str, &str)] = match method.as_str() {
            "OPTIONS" => &[("Origin", ORIGIN), ("Access-Control-Request-Method", "GET")],
            _ => &[("Content-Type", "application/json")],
        };
        let body = if method == "POST" { r#"{"userIds": ["u1"]}"# } else { "" };
        let reply = answered(&router, &method, &template, &path, headers, body).await;
        assert_ne!(reply.status, 404, "{method} {template} is not served: {reply}");
    }
}

async fn successes_match_the_spec(engine: Engine) {
    let setup = Setup::new(engine).await;
    let router = setup.router(&["--cors-origins", ORIGIN]).await;
    let mut mobile = router.mobile_in("u1", &["crew"]).await;
    mobile.set_status("u1", "dnd", Some("on patrol")).await;
    mobile.indicator("u1", "crew", "typing", true).await;

    // The WebSocket handshake, with the token in a header and in the subprotocol pair.
    let mobile_token = token_in("ws-user", Role::Mobile, &["crew"]);
    let reply = upgrade(&router, "/", &[("token", &mobile_token), ("device_id", "phone")]).await;
    assert_eq!(reply.status, 101, "{reply}");
    let pair = format!("{}, browser-1", common::token("ws-dashboard", Role::Dashboard));
    let reply = upgrade(&router, "/ws", &[("Sec-WebSocket-Protocol", &pair)]).await;
    assert_eq!((reply.status, reply.header("sec-websocket-protocol")), (101, Some("browser-1")), "{reply}");

    for path in ["/dashboard", "/metrics", "/livez", "/readyz", "/healthz"] {
        let reply = answered(&router, "GET", path, path, &[], "").await;
        assert_eq!(reply.status, 200, "{reply}");
    }
    let health = answered(&router, "GET", "/healthz", "/healthz", &[], "").await.json();
    assert_eq!(health["engine"], setup.engine_name());

    // The API, without and with an allowed Origin.
    let auth = bearer(&common::token("api", Role::Service));
    for origin in [None, Some(ORIGIN)] {
        let mut headers = vec![("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        headers.extend(origin.map(|origin| ("Origin", origin)));
        let bulk = answered(&router, "POST", STATUS, STATUS, &headers, r#"{"userIds": ["u1", "nobody", 42]}"#).await;
        let users = &bulk.json()["users"];
        assert_eq!((users[0]["status"].as_str(), users[0]["statusText"].as_str()), (Some("dnd"), Some("on patrol")));
        assert_eq!(users[1]["lastSeen"], serde_json::Value::Null, "{bulk}");
        for id in ["u1", "nobody"] {
            let reply = answered(&router, "GET", USER, &at(USER, id), &headers, "").await;
            assert_eq!(reply.status, 200, "{reply}");
        }
        let group = answered(&router, "GET", GROUP, &at(GROUP, "crew"), &headers, "").await;
        assert_eq!(group.json()["typingUsers"], serde_json::json!(["u1"]), "{group}");
        assert_eq!(group.header("access-control-allow-origin"), origin, "{group}");
    }
    for template in [STATUS, USER, GROUP] {
        let preflight = [("Origin", ORIGIN), ("Access-Control-Request-Method", "GET")];
        let reply = answered(&router, "OPTIONS", template, &at(template, "u1"), &preflight, "").await;
        assert_eq!(reply.status, 200, "{reply}");
    }
}

#[tokio::test]
async fn successes_match_the_spec_on_memory() {
    successes_match_the_spec(Engine::Memory).await;
}

#[tokio::test]
async fn successes_match_the_spec_on_redis() {
    successes_match_the_spec(Engine::Redis).await;
}

#[tokio::test]
async fn refusals_match_the_spec() {
    let router = Router::start(&["--cors-origins", ORIGIN]).await;
    let expired = sign(serde_json::json!({ "sub": "u", "role": "service", "exp": now() - 3600 }));
    let tokens =
        [(None, "missing_token"), (Some("not.a.jwt"), "invalid_token"), (Some(expired.as_str()), "token_expired")];

    // 401 at both doors, with and without an allowed Origin.
    for (token, code) in tokens {
        let auth = token.map(bearer);
        for origin in [None, Some(ORIGIN)] {
            let mut headers = vec![("Content-Type", "application/json")];
            headers.extend(auth.as_deref().map(|auth| ("Authorization", auth)));
            headers.extend(origin.map(|origin| ("Origin", origin)));
            refused(&answered(&router, "POST", STATUS, STATUS, &headers, r#"{"userIds": ["u"]}"#).await, 401, code);
            for template in [USER, GROUP] {
                refused(&answered(&router, "GET", template, &at(template, "u"), &headers, "").await, 401, code);
            }
        }
        let credentials: Vec<(&str, &str)> = token.map(|token| ("token", token)).into_iter().collect();
        refused(&upgrade(&router, "/", &credentials).await, 401, code);
    }

    // The WebSocket endpoint's own refusals.
    let device = "d".repeat(129);
    let mobile = common::token("u", Role::Mobile);
    refused(&upgrade(&router, "/", &[("token", &mobile), ("device_id", &device)]).await, 400, "invalid_device_id");
    for path in ["/", "/ws"] {
        let reply = answered(&router, "GET", path, path, &[("token", &mobile)], "").await;
        refused(&reply, 426, "websocket_required");
    }

    // The API's.
    let auth = bearer(&common::token("api", Role::Service));
    let json = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    for (body, code) in [
        ("not json", "invalid_request"),
        (r#"{"ids": []}"#, "invalid_request"),
        (r#"{"userIds": []}"#, "invalid_user_ids"),
    ] {
        refused(&answered(&router, "POST", STATUS, STATUS, &json, body).await, 400, code);
    }
    let long = "a".repeat(129);
    refused(&answered(&router, "GET", USER, &at(USER, &long), &json, "").await, 400, "invalid_user_id");
    refused(&answered(&router, "GET", GROUP, &at(GROUP, &long), &json, "").await, 400, "invalid_group_id");
    let lone = bearer(&common::token("u", Role::Mobile));
    let reply = answered(&router, "GET", GROUP, &at(GROUP, "crew"), &[("Authorization", &lone)], "").await;
    refused(&reply, 403, "forbidden_group");
    let large = format!(r#"{{"userIds": ["{}"]}}"#, "a".repeat(70 * 1024));
    refused(&answered(&router, "POST", STATUS, STATUS, &json, &large).await, 413, "invalid_body");
    let untyped = [("Authorization", auth.as_str())];
    let reply = answered(&router, "POST", STATUS, STATUS, &untyped, r#"{"userIds": ["u"]}"#).await;
    refused(&reply, 415, "unsupported_media_type");

    // Any other method, on every route, is 405 with a JSON body.
    for route in public_routes(true) {
        let reply = exchange(router.addr, &request("DELETE", &at(route.path, "u"), &[], "")).await;
        SPEC.check(route.method.as_str(), route.path, &reply);
        refused(&reply, 405, "method_not_allowed");
    }
    // So is a preflight from an origin not allowed: no CORS header.
    let preflight = [("Origin", "https://elsewhere.example"), ("Access-Control-Request-Method", "GET")];
    let reply = answered(&router, "OPTIONS", USER, &at(USER, "u"), &preflight, "").await;
    refused(&reply, 405, "method_not_allowed");
    assert!(reply.cors_headers().is_empty(), "{reply}");

    // A path on no route; a request head too large for any.
    let reply = exchange(router.addr, &request("GET", "/nowhere", &[], "")).await;
    SPEC.check_component("NotFound", &reply);
    refused(&reply, 404, "not_found");
    let cookie = "c".repeat(17 * 1024);
    let reply = answered(&router, "GET", "/livez", "/livez", &[("Cookie", &cookie)], "").await;
    assert_eq!(reply.status, 431, "{reply}");
}

#[tokio::test]
async fn a_spent_api_budget_matches_the_spec() {
    let router = Router::start(&["--api-ids-per-second", "1", "--cors-origins", ORIGIN]).await;
    let auth = bearer(&common::token("api", Role::Service));
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json"), ("Origin", ORIGIN)];
    let ids: Vec<String> = (0..100).map(|i| format!("u{i}")).collect();
    let body = serde_json::json!({ "userIds": ids }).to_string();
    assert_eq!(answered(&router, "POST", STATUS, STATUS, &headers, &body).await.status, 200);
    refused(&answered(&router, "POST", STATUS, STATUS, &headers, &body).await, 429, "rate_limited");
    for template in [USER, GROUP] {
        let reply = answered(&router, "GET", template, &at(template, "u1"), &headers, "").await;
        refused(&reply, 429, "rate_limited");
        assert_eq!(reply.header("access-control-expose-headers"), Some("retry-after"), "{reply}");
    }
}

#[tokio::test]
async fn a_slow_body_and_a_full_router_match_the_spec() {
    let router = Router::start(&["--max-connections", "1", "--header-read-timeout-ms", "500"]).await;
    let auth = bearer(&common::token("api", Role::Service));
    let mut stream = TcpStream::connect(router.addr).await.unwrap();
    let head = format!(
        "POST {STATUS} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"userIds\""
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let reply = tokio::time::timeout(WAIT, read_reply(&mut stream)).await.expect("an answer in time");
    SPEC.check("POST", STATUS, &reply);
    refused(&reply, 408, "request_timeout");

    let _only = router.mobile_in("u1", &["crew"]).await;
    let reply = upgrade(&router, "/", &[("token", &common::token("u2", Role::Mobile))]).await;
    refused(&reply, 503, "too_many_connections");
}

#[tokio::test]
async fn a_full_handshake_pool_matches_the_spec() {
    const CAP: usize = 4;
    let metrics: std::net::SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
    let cap = CAP.to_string();
    let metrics_flag = metrics.to_string();
    let flags = ["--max-handshakes", &cap, "--header-read-timeout-ms", "60000", "--metrics-addr", &metrics_flag];
    let router = Router::start(&flags).await;
    // CAP requests whose bodies never finish: each is being served, so none is evicted.
    let auth = bearer(&common::token("api", Role::Service));
    let mut serving = Vec::new();
    for _ in 0..CAP {
        let mut stream = TcpStream::connect(router.addr).await.unwrap();
        let head = format!(
            "POST {STATUS} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\n\
             Content-Length: 100\r\n\r\n{{"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        serving.push(stream);
    }
    common::eventually("every slot to be serving a request", || async {
        let scrape = exchange(metrics, &request("GET", "/metrics", &[], "")).await;
        let text = String::from_utf8_lossy(&scrape.body).into_owned();
        metric(&text, "presence_http_connections").unwrap_or(0) > CAP as u64
            && metric(&text, "presence_http_waiting") == Some(0)
    })
    .await;
    let reply = exchange(router.addr, b"").await;
    SPEC.check("GET", "/livez", &reply);
    refused(&reply, 503, "too_many_handshakes");
}

#[tokio::test]
async fn an_address_over_its_budget_matches_the_spec() {
    let flags = ["--trusted-proxies", "none", "--address-connect-rate", "1", "--address-connect-burst", "1"];
    let router = Router::start(&flags).await;
    assert_eq!(answered(&router, "GET", "/livez", "/livez", &[], "").await.status, 200);
    refused(&answered(&router, "GET", "/livez", "/livez", &[], "").await, 429, "address_rate_limited");
}

#[tokio::test]
async fn an_unreachable_store_matches_the_spec() {
    let mut setup = Setup::new(Engine::Redis).await;
    let router = setup.router(&[]).await;
    setup.redis.as_mut().unwrap().kill().await;
    common::eventually("the router to report itself degraded", || async {
        exchange(router.addr, &request("GET", "/readyz", &[], "")).await.status == 503
    })
    .await;
    for probe in ["/readyz", "/healthz"] {
        let reply = answered(&router, "GET", probe, probe, &[], "").await;
        assert_eq!((reply.status, reply.json()["status"].as_str()), (503, Some("degraded")), "{reply}");
    }
    api_refused_everywhere(&router, "presence_unavailable").await;
}

#[tokio::test]
async fn disabled_presence_matches_the_spec() {
    let router = Router::start(&["--presence-enabled", "false"]).await;
    api_refused_everywhere(&router, "presence_disabled").await;
}

/// Every API route answers 503 `code` to a valid token.
async fn api_refused_everywhere(router: &Router, code: &str) {
    let auth = bearer(&common::token("api", Role::Service));
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    refused(&answered(router, "POST", STATUS, STATUS, &headers, r#"{"userIds": ["u"]}"#).await, 503, code);
    for template in [USER, GROUP] {
        refused(&answered(router, "GET", template, &at(template, "crew"), &headers, "").await, 503, code);
    }
}

#[tokio::test]
async fn keys_not_yet_loaded_match_the_spec() {
    let url = format!("http://127.0.0.1:{}/jwks", common::free_port());
    let router = Router::start_keyed(&["--jwt-jwks-url", &url], &[]).await;
    // Any token naming a key: there is no key set to look it up in yet.
    let header = jsonwebtoken::Header { kid: Some("k1".into()), ..jsonwebtoken::Header::default() };
    let claims = serde_json::json!({ "sub": "u", "role": "service", "exp": now() + 600 });
    let token = jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(b"any")).unwrap();
    let auth = bearer(&token);
    let reply = answered(&router, "GET", USER, &at(USER, "u"), &[("Authorization", &auth)], "").await;
    refused(&reply, 503, "keys_unavailable");
    assert!(reply.header("retry-after").is_some(), "{reply}");
    let reply = upgrade(&router, "/", &[("token", &token)]).await;
    refused(&reply, 503, "keys_unavailable");
}

#[tokio::test]
async fn metrics_on_their_own_address_match_the_spec() {
    let metrics: std::net::SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
    let router = Router::start(&["--metrics-addr", &metrics.to_string()]).await;
    refused(&answered(&router, "GET", "/metrics", "/metrics", &[], "").await, 404, "not_found");
    for path in ["/metrics", "/livez", "/readyz", "/healthz"] {
        let reply = exchange(metrics, &request("GET", path, &[], "")).await;
        SPEC.check("GET", path, &reply);
        assert_eq!(reply.status, 200, "{reply}");
    }
    let reply = exchange(metrics, &request("POST", "/metrics", &[], "")).await;
    SPEC.check("GET", "/metrics", &reply);
    refused(&reply, 405, "method_not_allowed");
    let reply = exchange(metrics, &request("GET", "/api/users/u/presence", &[], "")).await;
    SPEC.check_component("NotFound", &reply);
}

#[tokio::test]
async fn the_spec_takes_an_id_exactly_when_the_router_does() {
    let router = Router::start(&[]).await;
    let auth = bearer(&common::token("api", Role::Service));
    let json = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let encode = |id: &str| id.bytes().map(|b| format!("%{b:02X}")).collect::<String>();
    let ids = [
        "u1".to_string(),
        "a".repeat(128),
        "a".repeat(129),
        "line\nbreak".into(),
        "nul\u{0}".into(),
        "tab\t".into(),
        "del\u{7f}".into(),
        "c1\u{85}".into(),
        "é".repeat(64),
        "0".into(),
        "00".into(),
    ];
    for id in &ids {
        let (user_reply, group_reply) = (
            answered(&router, "GET", USER, &at(USER, &encode(id)), &json, "").await,
            answered(&router, "GET", GROUP, &at(GROUP, &encode(id)), &json, "").await,
        );
        let body = serde_json::json!({ "userIds": [id] }).to_string();
        let bulk = answered(&router, "POST", STATUS, STATUS, &json, &body).await;
        let id = serde_json::json!(id);
        for (pointer, reply) in [
            ("/components/parameters/UserId/schema", &user_reply),
            ("/components/schemas/RequestedId", &bulk),
            ("/components/parameters/Id/schema", &group_reply),
        ] {
            assert_eq!(SPEC.accepts(pointer, &id), reply.status != 400, "{id} at {pointer}: {reply}");
        }
    }
    let zero = serde_json::json!({ "userIds": [0] }).to_string();
    refused(&answered(&router, "POST", STATUS, STATUS, &json, &zero).await, 400, "invalid_request");
    assert!(!SPEC.accepts("/components/schemas/RequestedId", &serde_json::json!(0)));
    refused(&answered(&router, "GET", USER, &at(USER, "0"), &json, "").await, 400, "invalid_user_id");
}

/// Setting presence over HTTP and refusals of the event stream, as the spec describes them
/// (a stream's 200 is read by `tests/sse_events.rs`: it does not end).
#[tokio::test]
async fn presence_writes_and_stream_refusals_match_the_spec() {
    const OWN: &str = "/api/presence/me/status";
    const OF_USER: &str = "/api/users/{id}/status";
    const TYPING: &str = "/api/presence/typing";
    const EVENTS: &str = "/api/presence/events";
    let router = Router::start(&["--cors-origins", ORIGIN]).await;
    let _phone = router.mobile_in("u1", &["crew"]).await;
    let me = bearer(&token_in("u1", Role::Mobile, &["crew"]));
    let service = bearer(&common::token("api", Role::Service));
    let json = |auth: &str| vec![("Authorization", auth.to_string()), ("Content-Type", "application/json".into())];
    let post = |template: &'static str, path: String, auth: String, body: &'static str| {
        let router = &router;
        async move {
            let headers = json(&auth);
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            answered(router, "POST", template, &path, &headers, body).await
        }
    };
    let set = r#"{"status": "dnd", "text": "on patrol", "activity": {"type": "driving", "name": "Route 9"}}"#;
    let reply = post(OWN, OWN.into(), me.clone(), set).await;
    assert_eq!(reply.status, 200, "{reply}");
    let reply = post(OF_USER, at(OF_USER, "u1"), service.clone(), r#"{"status": "away", "activity": null}"#).await;
    assert_eq!(reply.status, 200, "{reply}");
    let reply = post(TYPING, TYPING.into(), me.clone(), r#"{"groupId": "crew"}"#).await;
    assert_eq!(reply.status, 200, "{reply}");

    refused(&post(OWN, OWN.into(), me.clone(), r#"{"status": "asleep"}"#).await, 400, "invalid_request");
    refused(
        &post(OF_USER, at(OF_USER, "u1"), bearer(&common::token("u2", Role::Mobile)), set).await,
        403,
        "forbidden_role",
    );
    refused(&post(OF_USER, at(OF_USER, "u9"), service.clone(), set).await, 409, "not_online");
    refused(&post(TYPING, TYPING.into(), me.clone(), r#"{"groupId": "elsewhere"}"#).await, 403, "not_a_member");

    let auth = [("Authorization", service.as_str())];
    let bad = answered(&router, "GET", EVENTS, &format!("{EVENTS}?since=nonsense"), &auth, "").await;
    refused(&bad, 400, "invalid_position");
    let gone = answered(&router, "GET", EVENTS, &format!("{EVENTS}?since=0000000000000001:0"), &auth, "").await;
    refused(&gone, 410, "position_unknown");
}
