//! Tokens as identity providers issue them, against the real binary on both doors (the
//! WebSocket handshake and the HTTP API): NumericDates written as floats, `aud` and `iss`,
//! and signing keys published as a JWKS (served here by a local HTTP server the test
//! controls, so rotations and outages happen when the test says).

mod common;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::{Router as Http, extract::State, routing::get};
use common::{
    Client, Router, eventually, free_port, map,
    tokens::{accepted_everywhere, api, now, refused_at_start, refused_everywhere, refused_with, sign},
};
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use presence_router::protocol::message_type::{ACK, REFRESH};
use serde_json::{Value, json};

/// Claims of a mobile token for user `u` with `exp` and any `extra` claims.
fn claims(exp: Value, extra: Value) -> Value {
    let mut claims = json!({"sub": "u", "role": "mobile", "exp": exp});
    claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    claims
}

/// `count` handshakes refused for `reason`, as the router's metrics show.
async fn rejections(router: &Router, reason: &str) -> usize {
    let text = router.metrics().await;
    let line = format!("presence_handshake_rejections_total{{reason=\"{reason}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&line)).map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn float_numeric_dates_are_read_on_both_doors() {
    let router = Router::start(&["--max-token-lifetime", "3600"]).await;
    let now = now() as f64;
    // As PHP and .NET issuers write them: fractional, or whole with a `.0`.
    for (exp, iat) in [(now + 600.5, now - 0.25), (now + 600.0, now), (now + 3599.9, now)] {
        let token = sign(claims(json!(exp), json!({"iat": iat, "nbf": iat - 10.5})));
        accepted_everywhere(&router, &token).await;
    }
    // The checks still apply to float dates.
    refused_everywhere(&router, &sign(claims(json!(now - 60.5), json!({"iat": now - 120.0}))), "token_expired", "")
        .await;
    let early = sign(claims(json!(now + 600.5), json!({"iat": now, "nbf": now + 120.5})));
    refused_everywhere(&router, &early, "token_not_yet_valid", "nbf").await;
    let long = sign(claims(json!(now + 7200.5), json!({"iat": now + 0.5})));
    refused_everywhere(&router, &long, "token_lifetime_too_long", "3600 s").await;
}

#[tokio::test]
async fn malformed_numeric_dates_are_refused_naming_the_claim() {
    let router = Router::start(&[]).await;
    let exp = json!(now() + 600);
    let cases = [
        ("exp", claims(json!("1796049993"), json!({}))),
        ("exp", claims(json!(-5), json!({}))),
        ("exp", claims(json!(-0.5), json!({}))),
        ("exp", claims(json!(1e300), json!({}))),
        ("exp", claims(json!(1e15), json!({}))),
        ("exp", claims(json!(1_000_000_000_000_000_u64), json!({}))),
        ("exp", claims(json!(true), json!({}))),
        ("exp", claims(json!([1]), json!({}))),
        ("exp", json!({"sub": "u", "role": "mobile"})),
        ("exp", claims(Value::Null, json!({}))),
        ("nbf", claims(exp.clone(), json!({"nbf": "soon"}))),
        ("nbf", claims(exp.clone(), json!({"nbf": -1}))),
        ("iat", claims(exp.clone(), json!({"iat": "yesterday"}))),
        ("iat", claims(exp.clone(), json!({"iat": 1e300}))),
    ];
    for (claim, claims) in &cases {
        refused_everywhere(&router, &sign(claims.clone()), "token_invalid_date", &format!("`{claim}`")).await;
    }
    assert_eq!(rejections(&router, "token_invalid_date").await, cases.len());
    // Nothing panicked: the router still serves.
    accepted_everywhere(&router, &sign(claims(exp, json!({})))).await;
}

#[tokio::test]
async fn a_float_exp_ends_the_socket_with_4001_and_a_float_refresh_moves_it() {
    let router = Router::start(&[]).await;
    // Accepted now (inside the 5 s leeway), expired 2.5 to 3.5 s from now.
    let expiring = || sign(claims(json!(now() as f64 - 2.5), json!({})));
    let mut mobile = Client::connect(router.addr, &expiring(), Some("d")).await;
    mobile.sync("u").await;
    assert_eq!(mobile.next_error().await["code"].as_str(), Some("token_expired"));
    assert_eq!(mobile.close_code().await, Some(4001));

    // A REFRESH with float dates is read the same way: it is accepted, and its expiry is
    // the one the socket then keeps.
    let mut mobile =
        Client::connect(router.addr, &sign(claims(json!(now() as f64 + 3600.5), json!({}))), Some("d")).await;
    mobile.send_frame(0, REFRESH, "u", "", map(&[("token", expiring().into())])).await;
    let ack = mobile.next_frame().await;
    assert_eq!(ack[1].as_u64(), Some(ACK.into()), "{ack}");
    assert_eq!(mobile.next_error().await["code"].as_str(), Some("token_expired"));
    assert_eq!(mobile.close_code().await, Some(4001));
}

#[tokio::test]
async fn an_audience_without_one_configured_is_refused_saying_why() {
    let router = Router::start(&[]).await;
    for aud in [json!("presence"), json!(["account", "presence"])] {
        let token = sign(claims(json!(now() + 600), json!({"aud": aud})));
        refused_everywhere(&router, &token, "token_audience_not_configured", "--jwt-audience").await;
    }
    assert_eq!(rejections(&router, "token_audience_not_configured").await, 2);
    // An issuer is only read when one is configured.
    accepted_everywhere(&router, &sign(claims(json!(now() + 600), json!({"iss": "https://idp.test/"})))).await;
}

/// Every audience and issuer rule, on a router configured with `--jwt-audience presence,api`
/// and `--jwt-issuer https://idp.test/realms/ptt` (by flags or by environment).
async fn audience_and_issuer_rules(router: &Router) {
    let iss = "https://idp.test/realms/ptt";
    let token = |extra: Value| sign(claims(json!(now() + 600), extra));
    accepted_everywhere(router, &token(json!({"aud": "presence", "iss": iss}))).await;
    accepted_everywhere(router, &token(json!({"aud": ["account", "api"], "iss": iss}))).await;

    for (aud, says) in [
        (json!("account"), "audience"),
        (json!(["account", "broker"]), "audience"),
        (json!([]), "aud"),
        (json!(42), "aud"),
        (Value::Null, "aud"),
    ] {
        let mut extra = json!({"iss": iss});
        if !aud.is_null() {
            extra["aud"] = aud;
        }
        refused_everywhere(router, &token(extra), "token_wrong_audience", says).await;
    }
    for iss in [json!("https://evil.test/realms/ptt"), json!(["https://idp.test/realms/ptt"]), Value::Null] {
        let mut extra = json!({"aud": "presence"});
        if !iss.is_null() {
            extra["iss"] = iss;
        }
        refused_everywhere(router, &token(extra), "token_wrong_issuer", "iss").await;
    }
}

#[tokio::test]
async fn audience_and_issuer_are_checked_when_set_by_flags() {
    let router =
        Router::start(&["--jwt-audience", "presence,api", "--jwt-issuer", "https://idp.test/realms/ptt"]).await;
    audience_and_issuer_rules(&router).await;
    assert_eq!(rejections(&router, "token_wrong_audience").await, 5);
    assert_eq!(rejections(&router, "token_wrong_issuer").await, 3);
}

#[tokio::test]
async fn audience_and_issuer_are_read_from_the_environment() {
    let env = [
        ("JWT_SECRET", common::SECRET),
        ("JWT_AUDIENCE", "presence,api"),
        ("JWT_ISSUER", "https://idp.test/realms/ptt"),
    ];
    let router = Router::start_keyed(&[], &env).await;
    audience_and_issuer_rules(&router).await;
}

/// A key pair of the identity provider: its `kid`, algorithm and private key.
struct IdpKey {
    kid: &'static str,
    algorithm: Algorithm,
    private: EncodingKey,
}

impl IdpKey {
    fn rsa(kid: &'static str) -> IdpKey {
        let private = EncodingKey::from_rsa_pem(include_bytes!("fixtures/rs256-private.pem")).unwrap();
        IdpKey { kid, algorithm: Algorithm::RS256, private }
    }

    fn ec(kid: &'static str) -> IdpKey {
        let private = EncodingKey::from_ec_pem(include_bytes!("fixtures/es256-private.pem")).unwrap();
        IdpKey { kid, algorithm: Algorithm::ES256, private }
    }

    /// The public half as a JWKS entry, the way identity providers publish it.
    fn jwk(&self) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.private, self.algorithm).unwrap();
        jwk.common.key_id = Some(self.kid.into());
        let mut jwk = serde_json::to_value(jwk).unwrap();
        jwk["use"] = "sig".into();
        jwk
    }

    /// A mobile token for `u`, valid for ten minutes, naming this key.
    fn token(&self) -> String {
        self.token_with(Some(self.kid))
    }

    fn token_with(&self, kid: Option<&str>) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = kid.map(String::from);
        jsonwebtoken::encode(&header, &claims(json!(now() + 600), json!({"iat": now()})), &self.private).unwrap()
    }
}

fn key_set(keys: &[&IdpKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

/// What the key server serves, and how often it was asked.
#[derive(Default)]
struct Published {
    body: Mutex<String>,
    fetches: AtomicUsize,
}

/// A JWKS endpoint on 127.0.0.1 whose key set the test swaps at will.
struct KeyServer {
    addr: SocketAddr,
    published: Arc<Published>,
    task: tokio::task::JoinHandle<()>,
}

impl KeyServer {
    async fn start(body: String) -> KeyServer {
        KeyServer::start_on(0, body).await
    }

    async fn start_on(port: u16, body: String) -> KeyServer {
        let published = Arc::new(Published { body: Mutex::new(body), ..Published::default() });
        let app = Http::new()
            .route(
                "/jwks",
                get(|State(published): State<Arc<Published>>| async move {
                    published.fetches.fetch_add(1, Ordering::SeqCst);
                    let body = published.body.lock().unwrap().clone();
                    ([("content-type", "application/json")], body)
                }),
            )
            .with_state(published.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        KeyServer { addr, published, task }
    }

    fn url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    fn publish(&self, body: String) {
        *self.published.body.lock().unwrap() = body;
    }

    fn fetches(&self) -> usize {
        self.published.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn jwks_router(url: &str, extra: &[&str]) -> Router {
    Router::start_keyed(&[&["--jwt-jwks-url", url], extra].concat(), &[]).await
}

#[tokio::test]
async fn jwks_keys_verify_rs256_and_es256_tokens_by_kid() {
    let (rsa, ec) = (IdpKey::rsa("rsa-1"), IdpKey::ec("ec-1"));
    let server = KeyServer::start(key_set(&[&rsa, &ec])).await;
    let router = jwks_router(&server.url(), &["--jwt-jwks-min-refetch-secs", "3600"]).await;
    accepted_everywhere(&router, &rsa.token()).await;
    accepted_everywhere(&router, &ec.token()).await;

    // A kid the set does not hold, or none at all: the key is unknown.
    refused_everywhere(&router, &rsa.token_with(Some("rsa-9")), "token_unknown_key", "rsa-9").await;
    refused_everywhere(&router, &rsa.token_with(None), "token_unknown_key", "kid").await;
    // A kid naming another key than the one that signed: the signature fails.
    refused_everywhere(&router, &rsa.token_with(Some("ec-1")), "invalid_token", "").await;
    // HS256 signed with the RSA public key as the secret, naming the RSA key.
    let public = include_bytes!("fixtures/rs256-public.pem");
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let forged =
        jsonwebtoken::encode(&header, &claims(json!(now() + 600), json!({})), &EncodingKey::from_secret(public))
            .unwrap();
    refused_everywhere(&router, &forged, "invalid_token", "").await;
    assert_eq!(server.fetches(), 1, "the set was fetched once, at start, and served every token since");
    let text = router.metrics().await;
    assert!(text.contains("presence_token_refusals_total{reason=\"token_unknown_key\"} 4"), "{text}");
}

#[tokio::test]
async fn a_rotated_key_is_fetched_and_a_removed_one_dropped() {
    let (old, new) = (IdpKey::rsa("2024"), IdpKey::ec("2025"));
    let server = KeyServer::start(key_set(&[&old])).await;
    let router = jwks_router(&server.url(), &["--jwt-jwks-cache-secs", "1", "--jwt-jwks-min-refetch-secs", "1"]).await;
    accepted_everywhere(&router, &old.token()).await;

    // The provider publishes a new key and signs with it: an unknown kid sends the router
    // back for the set (at most once a second here), and the new key is then accepted.
    server.publish(key_set(&[&old, &new]));
    eventually("the new key to be fetched", || async { api(&router, &new.token()).await.0 == 200 }).await;
    accepted_everywhere(&router, &new.token()).await;
    accepted_everywhere(&router, &old.token()).await;

    // The provider retires the old key: once the cached set is older than a second, the
    // router fetches it again and the old kid is unknown.
    server.publish(key_set(&[&new]));
    eventually("the old key to be dropped", || async { api(&router, &old.token()).await.0 == 401 }).await;
    refused_everywhere(&router, &old.token(), "token_unknown_key", "2024").await;
    accepted_everywhere(&router, &new.token()).await;
}

#[tokio::test]
async fn a_flood_of_unknown_kids_does_not_hammer_the_key_server() {
    let key = IdpKey::rsa("k1");
    let server = KeyServer::start(key_set(&[&key])).await;
    let router = jwks_router(&server.url(), &["--jwt-jwks-min-refetch-secs", "3600"]).await;
    let tokens: Vec<String> = (0..100).map(|i| key.token_with(Some(&format!("random-{i}")))).collect();
    let refusals = futures_util::future::join_all(tokens.iter().map(|token| api(&router, token))).await;
    for (status, body) in refusals {
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some("token_unknown_key")), "{body}");
    }
    assert_eq!(server.fetches(), 1, "only the fetch at start: the next may come an hour later");
    accepted_everywhere(&router, &key.token()).await;
}

#[tokio::test]
async fn tokens_wait_for_keys_with_503_while_the_key_server_is_down() {
    let key = IdpKey::ec("k1");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/jwks");
    let router = jwks_router(&url, &["--jwt-jwks-min-refetch-secs", "1"]).await;
    refused_with(&router, &key.token(), 503, "keys_unavailable", "signing keys").await;

    let server = KeyServer::start_on(port, key_set(&[&key])).await;
    eventually("the keys to be fetched", || async { api(&router, &key.token()).await.0 == 200 }).await;
    accepted_everywhere(&router, &key.token()).await;
    assert!(server.fetches() >= 1);
}

#[tokio::test]
async fn a_jwks_file_verifies_tokens_and_a_bad_one_stops_the_router() {
    let key = IdpKey::rsa("file-1");
    let path = std::env::temp_dir().join(format!("jwt-idp-tokens-{}.json", std::process::id()));
    std::fs::write(&path, key_set(&[&key])).unwrap();
    let router = Router::start_keyed(&["--jwt-jwks-file", path.to_str().unwrap()], &[]).await;
    accepted_everywhere(&router, &key.token()).await;
    refused_everywhere(&router, &key.token_with(Some("file-2")), "token_unknown_key", "file-2").await;

    std::fs::write(&path, "{\"keys\": ").unwrap();
    let stderr = refused_at_start(&["--jwt-jwks-file", path.to_str().unwrap()], &[]).await;
    assert!(stderr.contains("JWKS") && !stderr.contains("panicked"), "{stderr}");
    std::fs::remove_file(&path).unwrap();
    let stderr = refused_at_start(&["--jwt-jwks-file", path.to_str().unwrap()], &[]).await;
    assert!(stderr.contains(path.to_str().unwrap()), "names the file: {stderr}");

    // Keys fetched over plain HTTP could be swapped by anyone on the path: only loopback may.
    let stderr = refused_at_start(&["--jwt-jwks-url", "http://idp.invalid/jwks"], &[]).await;
    assert!(stderr.contains("https"), "{stderr}");
    let stderr = refused_at_start(&["--jwt-jwks-url", "https://idp.invalid/jwks", "--jwt-secret", "s"], &[]).await;
    assert!(stderr.contains("cannot be used with"), "one source of keys: {stderr}");
}
