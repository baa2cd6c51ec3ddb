//! What the WebSocket examples share: where the router is, a connection whose every error
//! names the URL it tried, and a readable line for every frame the router sends.

use anyhow::Context;
use presence_router::protocol::message_type::{self, *};
use rmpv::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, client::IntoClientRequest, handshake::client::Request},
};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The router `make run` starts: `ws://127.0.0.1:$PORT/`, port 3000 when `PORT` is unset.
pub fn default_url() -> String {
    let port = std::env::var("PORT").ok().filter(|port| !port.trim().is_empty());
    format!("ws://127.0.0.1:{}/", port.as_deref().map_or("3000", str::trim))
}

/// A handshake request to `url`; an error names it.
pub fn request(url: &str) -> anyhow::Result<Request> {
    url.into_client_request().with_context(|| format!("{url} is not a WebSocket URL (ws://host:port/)"))
}

/// Opens the WebSocket `request` asks for. An error names the URL and says why: nothing
/// listening, or the router's refusal (its status, error code and message).
pub async fn connect(request: Request) -> anyhow::Result<Ws> {
    let url = request.uri().to_string();
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().unwrap_or_default();
            let error: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let (code, message) = (&error["error"]["code"], &error["error"]["message"]);
            anyhow::bail!(
                "{url} refused the connection: {} {} ({})",
                response.status(),
                code.as_str().unwrap_or("no error code"),
                message.as_str().unwrap_or("no message")
            )
        }
        Err(tungstenite::Error::Io(e)) => {
            anyhow::bail!("cannot connect to {url}: {e}; is the router running there? (`make run` starts one)")
        }
        Err(e) => anyhow::bail!("cannot connect to {url}: {e}"),
    }
}

/// One line saying what a frame from the router means: snapshots and updates, indicators,
/// errors, acknowledgements and push-to-talk; other frames as their type and raw content.
pub fn describe(frame: &Value) -> String {
    let Some(parts) = frame.as_array().filter(|parts| parts.len() >= 4) else {
        return format!("not a frame: {frame}");
    };
    let kind = parts[1].as_u64().and_then(|t| u8::try_from(t).ok()).unwrap_or(u8::MAX);
    let (from, channel) = (id(&parts[2]), self::channel(&parts[0], &parts[3]));
    // The payload is last: index 4 in a five-element frame, 5 after a message id.
    let payload = if parts.len() >= 5 { &parts[parts.len() - 1] } else { &Value::Nil };
    let field = |key: &str| text(&payload[key]);
    match kind {
        PRESENCE_SNAPSHOT => snapshot(payload),
        PRESENCE_UPDATE => format!(
            "update: {} is {}{} (cause {}, device {}, groups [{}], version {})",
            field("userId"),
            field("status"),
            status_text(payload),
            field("cause"),
            field("deviceId"),
            list(&payload["groups"]),
            payload["version"]
        ),
        INDICATOR_UPDATE => {
            let verb = if payload["isActive"].as_bool() == Some(true) { "is" } else { "stopped" };
            format!("indicator: {} {verb} {} in group {}", field("userId"), field("type"), field("groupId"))
        }
        ERROR => format!(
            "error: {} ({}), for a {} frame",
            field("code"),
            field("message"),
            payload["messageType"].as_u64().map_or("unreadable", |t| message_type::label(t as u8))
        ),
        ACK => format!(
            "ack: {} applied",
            payload["messageType"].as_u64().map_or("frame", |t| message_type::label(t as u8))
        ),
        HEARTBEAT_ACK => "heartbeat acknowledged".into(),
        STALE => format!(
            "stale: the router's view is out of date since {} ms (reason {}); the last view is kept",
            payload["since"],
            field("reason")
        ),
        FRESH => format!("fresh: the router's view is current again (out of date since {} ms)", payload["since"]),
        START => format!("talk: {from} started talking in {channel}"),
        START_ACK => format!("talk: the floor in {channel} is yours"),
        START_FAILED => format!("talk: no floor in {channel}: {}", text(payload)),
        STOP if from == "-" => format!("talk: the router ended your talk in {channel}: {}", field("reason")),
        STOP => {
            let stop: serde_json::Value =
                serde_json::from_str(payload.as_str().unwrap_or_default()).unwrap_or_default();
            let reason = stop["reason"].as_str().map(|r| format!(", ended by the router: {r}")).unwrap_or_default();
            format!("talk: {from} stopped talking in {channel} after {} ms{reason}", stop["duration"])
        }
        STOP_ACK => format!("talk: your stop in {channel} was acknowledged"),
        AUDIO => format!("audio: {} bytes from {from} in {channel}", payload.as_slice().map_or(0, <[u8]>::len)),
        TEXT => {
            let sent: serde_json::Value =
                serde_json::from_str(payload.as_str().unwrap_or_default()).unwrap_or_default();
            let message = sent["text"].as_str().map_or_else(|| text(payload), str::to_string);
            format!("text from {from} in {channel}: {message}")
        }
        TEXT_ACK => format!("text: yours in {channel} was relayed"),
        DELIVERED => format!("receipt: {from} received message {}", text(payload)),
        READ => format!("receipt: {from} read message {}", text(payload)),
        _ => format!("frame of type {kind}: {frame}"),
    }
}

/// `snapshot: N online, N away, N dnd: u1 online, u2 dnd ("on patrol"), …` (the first 20
/// users), then a line per live indicator (`  indicator: u1 is typing in group crew`, as
/// the INDICATOR_UPDATE that started it read) and per group's counts
/// (`  group crew: 2 online, 0 away, 1 dnd`): what is going on when the dashboard opens.
fn snapshot(payload: &Value) -> String {
    const SHOWN: usize = 20;
    let users = payload["users"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut shown: Vec<String> = users
        .iter()
        .take(SHOWN)
        .map(|user| format!("{} {}{}", text(&user["userId"]), text(&user["status"]), status_text(user)))
        .collect();
    if users.len() > SHOWN {
        shown.push(format!("and {} more", users.len() - SHOWN));
    }
    let mut lines =
        vec![format!("snapshot: {}: {}", counts(users.iter().map(|user| &user["status"])), shown.join(", "))];
    for live in payload["indicators"].as_array().into_iter().flatten() {
        lines.push(format!(
            "  indicator: {} is {} in group {}",
            text(&live["userId"]),
            text(&live["type"]),
            text(&live["groupId"])
        ));
    }
    for (group, counted) in payload["groupCounts"].as_map().into_iter().flatten() {
        let [online, away, dnd] = ["online", "away", "dnd"].map(|status| counted[status].as_u64().unwrap_or(0));
        lines.push(format!("  group {}: {online} online, {away} away, {dnd} dnd", text(group)));
    }
    lines.join("\n")
}

/// `N online, N away, N dnd` of these statuses (offline ones not counted).
pub fn counts<'a>(statuses: impl IntoIterator<Item = &'a Value>) -> String {
    let (mut online, mut away, mut dnd) = (0, 0, 0);
    for status in statuses {
        match status.as_str() {
            Some("online") => online += 1,
            Some("away") => away += 1,
            Some("dnd") => dnd += 1,
            _ => {}
        }
    }
    format!("{online} online, {away} away, {dnd} dnd")
}

/// ` ("on patrol")` when a user has a status text.
fn status_text(user: &Value) -> String {
    user["statusText"].as_str().map(|t| format!(" ({t:?})")).unwrap_or_default()
}

/// `group crew`, `private channel with u2`.
fn channel(channel_type: &Value, to: &Value) -> String {
    match channel_type.as_u64() {
        Some(1) => format!("the private channel with {}", id(to)),
        _ => format!("group {}", id(to)),
    }
}

/// An id as the router writes it (a string, or an integer from older clients); `-` for none.
fn id(value: &Value) -> String {
    match value {
        Value::String(s) => s.as_str().unwrap_or_default().to_string(),
        Value::Integer(n) if n.as_u64() != Some(0) => n.to_string(),
        _ => "-".into(),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.as_str().unwrap_or_default().to_string(),
        Value::Nil => "-".into(),
        other => other.to_string(),
    }
}

fn list(value: &Value) -> String {
    value.as_array().map(|items| items.iter().map(text).collect::<Vec<_>>().join(", ")).unwrap_or_default()
}
