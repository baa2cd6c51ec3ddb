//! A monitoring dashboard: prints the PRESENCE_SNAPSHOT, then every PRESENCE_UPDATE.
//!
//!     make run                                   # terminal 1
//!     cargo run --example web_dashboard          # terminal 2
//!     cargo run --example mobile_client          # terminal 3
//!
//! It authenticates like a browser would, with `Sec-WebSocket-Protocol: <token>, <deviceId>`,
//! and never heartbeats. Its token lives `--token-ttl` seconds; a fresh one goes out
//! (REFRESH) when two thirds of that have passed.

use std::{collections::BTreeMap, time::Duration};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use presence_router::{
    auth::{Role, mint_hs256},
    protocol::{
        ChannelType, client_frame,
        message_type::{PRESENCE_SNAPSHOT, PRESENCE_UPDATE, REFRESH},
    },
};
use rmpv::Value;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "ws://127.0.0.1:3000/")]
    url: String,
    #[arg(long, default_value = "dispatcher-1")]
    user: String,
    #[arg(long, env = "JWT_SECRET", default_value = "dev-secret-change-me")]
    jwt_secret: String,
    /// Lifetime of each token in seconds; a new one is sent (REFRESH) before it ends.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(15..))]
    token_ttl: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mint = || mint_hs256(args.jwt_secret.as_bytes(), &args.user, Role::Dashboard, args.token_ttl);
    let token = mint()?;
    let mut request = args.url.as_str().into_client_request()?;
    request.headers_mut().insert("sec-websocket-protocol", format!("{token}, web-dashboard-001").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;

    // userId → status, as a dashboard would keep it.
    let mut online: BTreeMap<String, String> = BTreeMap::new();
    let refresh_every = Duration::from_secs(args.token_ttl * 2 / 3);
    let mut refreshes = tokio::time::interval_at(tokio::time::Instant::now() + refresh_every, refresh_every);
    loop {
        let message = tokio::select! {
            message = ws.next() => message,
            _ = refreshes.tick() => {
                let payload = Value::Map(vec![("token".into(), mint()?.into())]);
                let frame = client_frame(ChannelType::Group, REFRESH, &args.user, "", &payload);
                ws.send(Message::Binary(frame)).await?;
                println!("→ REFRESH");
                continue;
            }
        };
        let Some(message) = message else { break };
        let bytes = match message? {
            Message::Binary(bytes) => bytes,
            Message::Close(frame) => {
                println!("closed by router: {frame:?}");
                break;
            }
            _ => continue,
        };
        let frame = rmpv::decode::read_value(&mut &bytes[..])?;
        let payload = &frame[5];
        match frame[1].as_u64().map(|t| t as u8) {
            Some(PRESENCE_SNAPSHOT) => {
                online.clear();
                for user in payload["users"].as_array().into_iter().flatten() {
                    online.insert(text(&user["userId"]), text(&user["status"]));
                }
                println!("snapshot: {} online {:?}", online.len(), online.keys().collect::<Vec<_>>());
            }
            Some(PRESENCE_UPDATE) => {
                let (user, status) = (text(&payload["userId"]), text(&payload["status"]));
                println!(
                    "update: {user} is {status} (cause {}, version {})",
                    text(&payload["cause"]),
                    payload["version"]
                );
                if status == "offline" {
                    online.remove(&user);
                } else {
                    online.insert(user, status);
                }
                println!("  {} online", online.len());
            }
            _ => println!("← {frame}"),
        }
    }
    Ok(())
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}
