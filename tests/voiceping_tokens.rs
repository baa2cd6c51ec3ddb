//! VoicePing's tokens and handshake headers against the real binary: `{uid, channelIds}`
//! signed HS256 without `role` or `exp`, in a `token` or `voicepingtoken` header with the
//! device in `deviceid`. Refused unless the router is told how to read them, accepted on
//! both doors (WebSocket and HTTP) once it is, with every other claim rule still applied.

mod common;

use common::{
    Client, Router, SECRET, WAIT, assert_update, await_line, http, map,
    tokens::{refused_at_start, refused_everywhere, sign},
};
use presence_router::{
    auth::{Role, mint_hs256, mint_hs256_in},
    protocol::message_type::{ACK, ERROR, REFRESH},
};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The flags that read VoicePing's tokens.
const VOICEPING: [&str; 5] =
    ["--allow-tokens-without-exp", "--jwt-subject-claim", "uid", "--jwt-groups-claim", "channelIds"];

/// A token as VoicePing's router and tests signed them: user 7 in channel 18, numbers both.
fn voiceping_token() -> String {
    sign(json!({"uid": 7, "channelIds": [18]}))
}

/// Opens a WebSocket with exactly these extra `headers`.
async fn connect_with(router: &Router, headers: &[(&'static str, &str)]) -> Client {
    let mut request = format!("ws://{}/", router.addr).into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake in time")
        .expect("handshake accepted");
    Client { ws }
}

/// `GET path` on the HTTP API with `token` as the bearer.
async fn api(router: &Router, path: &str, token: &str) -> (u16, serde_json::Value) {
    http(router.addr, "GET", path, &[("Authorization", &format!("Bearer {token}"))], "").await
}

#[tokio::test]
async fn a_voiceping_token_is_refused_unless_the_router_is_told_to_read_it() {
    let router = Router::start(&[]).await;
    refused_everywhere(&router, &voiceping_token(), "invalid_token", "no `sub` claim").await;
    // Told where the user and groups are, but not that tokens may lack exp.
    let router = Router::start(&VOICEPING[1..]).await;
    refused_everywhere(&router, &voiceping_token(), "token_invalid_date", "`exp` is missing").await;
}

#[tokio::test]
async fn a_voiceping_token_is_accepted_with_the_compatibility_flags_and_warned_of() {
    let (router, stderr) = Router::start_logged(None, &VOICEPING).await;
    let warning = await_line(stderr, "the warning about tokens without exp", |line| {
        line.contains("--allow-tokens-without-exp").then(|| line.to_owned())
    })
    .await;
    assert!(warning.contains("WARN") && warning.contains("for ever"), "{warning}");

    // Every token this router accepts names its user in `uid`, dashboards' too.
    let dispatcher = sign(json!({"uid": "dispatcher", "role": "dashboard", "channelIds": ["18"]}));
    let mut dashboard = Client::connect(router.addr, &dispatcher, None).await;
    dashboard.expect(32).await;
    let mut mobile = Client::connect(router.addr, &voiceping_token(), Some("phone")).await;
    // Without `role` it is a mobile: it heartbeats, and shows in channel 18.
    mobile.sync("7").await;
    let online = dashboard.next_update().await;
    assert_update(&online, "7", "online");
    assert_eq!(online["groups"], rmpv::Value::Array(vec!["18".into()]), "{online}");

    // The HTTP door reads the same token the same way.
    let (status, body) = api(&router, "/api/groups/18/presence", &voiceping_token()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["participants"][0]["userId"], "7", "{body}");
    let (status, body) = api(&router, "/api/groups/19/presence", &voiceping_token()).await;
    assert_eq!(status, 403, "not its channel: {body}");

    // REFRESH keeps its rule, on the configured claims: the same user ("7" is 7) and role.
    let refresh = |token: String| map(&[("token", token.into())]);
    mobile.send_frame(0, REFRESH, "7", "", refresh(sign(json!({"uid": "7", "channelIds": [18]})))).await;
    assert_eq!(mobile.next_frame().await[1].as_u64(), Some(ACK.into()));
    for other in [json!({"uid": 8, "channelIds": [18]}), json!({"uid": 7, "role": "dashboard"})] {
        mobile.send_frame(0, REFRESH, "7", "", refresh(sign(other.clone()))).await;
        let error = mobile.expect(ERROR).await;
        assert_eq!(error[5]["code"].as_str(), Some("token_mismatch"), "{other}: {error}");
    }
    // Dates still count when a token has them.
    let expired = sign(json!({"uid": 7, "channelIds": [18], "exp": common::tokens::now() - 60}));
    refused_everywhere(&router, &expired, "token_expired", "expired").await;
}

#[tokio::test]
async fn the_compatibility_settings_are_read_from_the_environment() {
    let env = [("ALLOW_TOKENS_WITHOUT_EXP", "true"), ("JWT_SUBJECT_CLAIM", "uid"), ("JWT_GROUPS_CLAIM", "channelIds")];
    let router = Router::start_keyed(&["--jwt-secret", SECRET], &env).await;
    let (status, body) = api(&router, "/api/users/7/presence", &voiceping_token()).await;
    assert_eq!(status, 200, "{body}");
    // Set to false, the variable allows nothing.
    let router = Router::start_keyed(&["--jwt-secret", SECRET], &[("ALLOW_TOKENS_WITHOUT_EXP", "false")]).await;
    let (status, body) = api(&router, "/api/users/u/presence", &sign(json!({"sub": "u"}))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("token_invalid_date")), "{body}");
}

#[tokio::test]
async fn a_token_without_role_is_a_mobile_unless_the_default_role_is_none() {
    let router = Router::start(&[]).await;
    let roleless = sign(json!({"sub": "u", "exp": common::tokens::now() + 600}));
    let mut mobile = Client::connect(router.addr, &roleless, Some("d")).await;
    mobile.sync("u").await;

    let router = Router::start(&["--jwt-default-role", "none"]).await;
    refused_everywhere(&router, &roleless, "invalid_token", "--jwt-default-role").await;
    let web = Router::start(&["--jwt-default-role", "web"]).await;
    let mut watcher = Client::connect(web.addr, &roleless, None).await;
    assert_eq!(watcher.next_frame().await[1].as_u64(), Some(32), "a web session gets the snapshot");
}

#[tokio::test]
async fn flags_that_contradict_each_other_stop_the_start() {
    let lifetime = ["--jwt-secret", SECRET, "--allow-tokens-without-exp", "--max-token-lifetime", "600"];
    let stderr = refused_at_start(&lifetime, &[]).await;
    assert!(stderr.contains("cannot be used with --max-token-lifetime"), "{stderr}");
    let same = ["--jwt-secret", SECRET, "--jwt-subject-claim", "uid", "--jwt-groups-claim", "uid"];
    let stderr = refused_at_start(&same, &[]).await;
    assert!(stderr.contains("both name `uid`"), "{stderr}");
    let stderr = refused_at_start(&["--jwt-secret", SECRET, "--jwt-default-role", "dashboard"], &[]).await;
    assert!(stderr.contains("cannot be a default role"), "{stderr}");
}

#[tokio::test]
async fn voiceping_header_names_carry_the_token_and_device() {
    let router = Router::start(&[]).await;
    let (mut dashboard, _) = router.dashboard("dispatcher").await;
    let token = mint_hs256(SECRET.as_bytes(), "vp", Role::Mobile, 600).unwrap();
    let mut mobile = connect_with(&router, &[("voicepingtoken", &token), ("deviceid", "radio-1")]).await;
    mobile.sync("vp").await;
    let online = dashboard.next_update().await;
    assert_update(&online, "vp", "online");
    assert_eq!(online["deviceId"].as_str(), Some("radio-1"), "{online}");

    // Both names present: `token` and `device_id` win, the others are not read.
    let winner = mint_hs256_in(SECRET.as_bytes(), "a", Role::Mobile, None, 600).unwrap();
    let headers =
        [("token", winner.as_str()), ("voicepingtoken", "not-a-jwt"), ("device_id", "d1"), ("deviceid", "d2")];
    let mut both = connect_with(&router, &headers).await;
    both.sync("a").await;
    let online = dashboard.next_update().await;
    assert_update(&online, "a", "online");
    assert_eq!(online["deviceId"].as_str(), Some("d1"), "{online}");

    // A bad device id in `deviceid` is refused like one in `device_id`.
    let (status, body) = http(
        router.addr,
        "GET",
        "/",
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("voicepingtoken", &token),
            ("deviceid", &"x".repeat(200)),
        ],
        "",
    )
    .await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_device_id")), "{body}");
}

/// A user id of 0 (`0`, `"0"`, `0.0`) is what frames write for "no id", and the router's own
/// fromId: a token naming it is refused at both doors, whichever claim holds the user.
#[tokio::test]
async fn a_token_naming_user_zero_is_refused() {
    let router = Router::start(&[]).await;
    let exp = common::tokens::now() + 600;
    for zero in [json!(0), json!("0"), json!(0.0)] {
        let token = sign(json!({"sub": zero, "role": "mobile", "exp": exp}));
        refused_everywhere(&router, &token, "invalid_token", "0 means no id").await;
    }
    let router = Router::start(&VOICEPING).await;
    refused_everywhere(&router, &sign(json!({"uid": 0, "channelIds": [18]})), "invalid_token", "`uid`").await;
}
