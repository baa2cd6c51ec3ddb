//! A monitoring dashboard: prints the PRESENCE_SNAPSHOT, then every frame the router sends
//! it (presence updates, typing/recording/talking indicators, errors, acks), one readable
//! line each.
//!
//!     make run                                   # terminal 1
//!     cargo run --example web_dashboard          # terminal 2
//!     cargo run --example mobile_client          # terminal 3
//!
//! It connects to `--url`, by default `ws://127.0.0.1:$PORT/` (`PORT` as `make run` takes
//! it, 3000 when unset). It authenticates like a browser would, with
//! `Sec-WebSocket-Protocol: <token>, <deviceId>`, and never heartbeats. Its token lives
//! `--token-ttl` seconds; a fresh one goes out (REFRESH) when two thirds of that have passed.

mod common;

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use presence_router::{
    auth::{Role, mint_hs256_in},
    protocol::{
        ChannelType, client_frame,
        message_type::{PRESENCE_SNAPSHOT, PRESENCE_UPDATE, REFRESH},
    },
};
use rmpv::Value;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    /// The router's WebSocket URL (default: `ws://127.0.0.1:$PORT/`, port 3000 when `PORT`
    /// is unset).
    #[arg(long, default_value_t = common::default_url())]
    url: String,
    #[arg(long, default_value = "dispatcher-1")]
    user: String,
    /// Groups to watch, comma-separated (default: everyone).
    #[arg(long, value_delimiter = ',')]
    groups: Vec<String>,
    #[arg(long, env = "JWT_SECRET", default_value = "dev-secret-change-me", hide_env_values = true)]
    jwt_secret: String,
    /// Lifetime of each token in seconds; a new one is sent (REFRESH) before it ends.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(15..))]
    token_ttl: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let groups: Vec<&str> = args.groups.iter().map(String::as_str).collect();
    let groups = (!groups.is_empty()).then_some(groups.as_slice());
    let mint = || mint_hs256_in(args.jwt_secret.as_bytes(), &args.user, Role::Dashboard, groups, args.token_ttl);
    let token = mint()?;
    let mut request = common::request(&args.url)?;
    request.headers_mut().insert("sec-websocket-protocol", format!("{token}, web-dashboard-001").parse()?);
    let mut ws = common::connect(request).await?;
    println!("connected to {} as {}", args.url, args.user);

    // Each user's status as shown (online, away, dnd; offline ones dropped), as a dashboard
    // would keep it.
    let mut shown: BTreeMap<String, Value> = BTreeMap::new();
    let refresh_every = Duration::from_secs(args.token_ttl * 2 / 3);
    let mut refreshes = tokio::time::interval_at(tokio::time::Instant::now() + refresh_every, refresh_every);
    loop {
        let message = tokio::select! {
            message = ws.next() => message,
            _ = refreshes.tick() => {
                let payload = Value::Map(vec![("token".into(), mint()?.into())]);
                let frame = client_frame(ChannelType::Group, REFRESH, &args.user, "", &payload);
                ws.send(Message::Binary(frame)).await.with_context(|| format!("sending to {}", args.url))?;
                println!("→ REFRESH");
                continue;
            }
        };
        let Some(message) = message else { break };
        let bytes = match message.with_context(|| format!("the connection to {}", args.url))? {
            Message::Binary(bytes) => bytes,
            Message::Close(frame) => {
                println!("closed by {}: {frame:?}", args.url);
                break;
            }
            _ => continue,
        };
        let frame = rmpv::decode::read_value(&mut &bytes[..]).context("a frame that is not msgpack")?;
        println!("{}", common::describe(&frame));
        let payload = &frame[5];
        match frame[1].as_u64().map(|t| t as u8) {
            Some(PRESENCE_SNAPSHOT) => {
                shown = payload["users"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|user| (user_id(&user["userId"]), user["status"].clone()))
                    .collect();
            }
            Some(PRESENCE_UPDATE) => {
                let user = user_id(&payload["userId"]);
                match payload["status"].as_str() {
                    Some("offline") => shown.remove(&user),
                    _ => shown.insert(user, payload["status"].clone()),
                };
                println!("  {}", common::counts(shown.values()));
            }
            _ => {}
        }
    }
    Ok(())
}

fn user_id(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}
