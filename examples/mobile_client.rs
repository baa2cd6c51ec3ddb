//! A mobile PTT client: connects with a dev token, heartbeats, prints what the router says
//! (one readable line per frame).
//!
//!     make run                                   # terminal 1
//!     cargo run --example mobile_client -- --user driver-1 --groups crew
//!     cargo run --example mobile_client -- --user driver-2 --groups crew \
//!         --status dnd --text "on patrol" --talk crew  # says "dnd", then talks for a second
//!
//! It connects to `--url`, by default `ws://127.0.0.1:$PORT/` (`PORT` as `make run` takes
//! it, 3000 when unset). Ctrl-C closes cleanly (the dashboard sees "offline" at once); `kill -9` leaves the
//! socket to the heartbeat TTL. Its token lives `--token-ttl` seconds; it sends a fresh one
//! (REFRESH) when two thirds of that have passed, as a real app would after asking its
//! backend, so the router never closes it with 4001.

mod common;

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use presence_router::{
    auth::{Role, mint_hs256_in},
    protocol::{ChannelType, client_frame, heartbeat_frame, message_type},
};
use rmpv::Value;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    /// The router's WebSocket URL (default: `ws://127.0.0.1:$PORT/`, port 3000 when `PORT`
    /// is unset).
    #[arg(long, default_value_t = common::default_url())]
    url: String,
    #[arg(long, default_value = "driver-1")]
    user: String,
    #[arg(long, default_value = "phone-1")]
    device: String,
    /// Seconds between heartbeats (mobile apps send one every 30 s).
    #[arg(long, default_value_t = 30)]
    interval: u64,
    #[arg(long, env = "JWT_SECRET", default_value = "dev-secret-change-me", hide_env_values = true)]
    jwt_secret: String,
    /// Groups for the token, comma-separated (PTT, indicators and dashboards scope by them).
    #[arg(long, value_delimiter = ',')]
    groups: Vec<String>,
    /// Status to set after connecting: online, away, dnd or invisible.
    #[arg(long)]
    status: Option<String>,
    /// Custom status text, with --status.
    #[arg(long)]
    text: Option<String>,
    /// A group to talk in once connected: START, a second of (silent) AUDIO, STOP.
    #[arg(long)]
    talk: Option<String>,
    /// Lifetime of each token in seconds; a new one is sent (REFRESH) before it ends.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(15..))]
    token_ttl: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let groups: Vec<&str> = args.groups.iter().map(String::as_str).collect();
    let groups = (!groups.is_empty()).then_some(groups.as_slice());
    let mint = || mint_hs256_in(args.jwt_secret.as_bytes(), &args.user, Role::Mobile, groups, args.token_ttl);
    let token = mint()?;
    let mut request = common::request(&args.url)?;
    request.headers_mut().insert("token", token.parse()?);
    request.headers_mut().insert("device_id", args.device.parse()?);
    let mut ws = common::connect(request).await?;
    let sending = || format!("sending to {}", args.url);
    println!("connected to {} as {} ({}); heartbeat every {} s", args.url, args.user, args.device, args.interval);
    let frame = |message_type, to: &str, payload: Value| {
        Message::Binary(client_frame(ChannelType::Group, message_type, &args.user, to, &payload))
    };
    if let Some(status) = &args.status {
        let text = args.text.as_deref().map_or(Value::Nil, Value::from);
        let payload = Value::Map(vec![("status".into(), status.as_str().into()), ("text".into(), text)]);
        ws.send(frame(message_type::STATUS, "", payload)).await.with_context(sending)?;
        println!("→ STATUS {status}");
    }
    if let Some(group) = &args.talk {
        ws.send(frame(message_type::START, group, Value::Map(vec![]))).await.with_context(sending)?;
        for _ in 0..50 {
            ws.send(frame(message_type::AUDIO, group, Value::Binary(vec![0; 160]))).await.with_context(sending)?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ws.send(frame(message_type::STOP, group, Value::Map(vec![]))).await.with_context(sending)?;
        println!("→ START, 50 × AUDIO, STOP in {group}");
    }

    let mut ticks = tokio::time::interval(Duration::from_secs(args.interval));
    let refresh_every = Duration::from_secs(args.token_ttl * 2 / 3);
    let mut refreshes = tokio::time::interval_at(tokio::time::Instant::now() + refresh_every, refresh_every);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                ws.send(Message::Binary(heartbeat_frame(&args.user))).await.with_context(sending)?;
                println!("→ HEARTBEAT");
            }
            _ = refreshes.tick() => {
                let payload = Value::Map(vec![("token".into(), mint()?.into())]);
                ws.send(frame(message_type::REFRESH, "", payload)).await.with_context(sending)?;
                println!("→ REFRESH");
            }
            message = ws.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    let frame = rmpv::decode::read_value(&mut &bytes[..]).context("a frame that is not msgpack")?;
                    println!("← {}", common::describe(&frame));
                }
                Some(Ok(Message::Close(frame))) => { println!("← close {frame:?}"); break; }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).with_context(|| format!("the connection to {}", args.url)),
                None => break,
            },
            _ = tokio::signal::ctrl_c() => {
                ws.close(None).await?;
                println!("closed");
                break;
            }
        }
    }
    Ok(())
}
