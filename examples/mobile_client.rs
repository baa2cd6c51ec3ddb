//! A mobile PTT client: connects with a dev token, heartbeats, prints what the router says.
//!
//!     make run                                   # terminal 1
//!     cargo run --example mobile_client -- --user driver-1
//!
//! Ctrl-C closes cleanly (the dashboard sees "offline" at once); `kill -9` leaves the
//! socket to the heartbeat TTL.

use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use presence_router::{
    auth::{Role, mint_hs256},
    protocol::heartbeat_frame,
};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "ws://127.0.0.1:3000/")]
    url: String,
    #[arg(long, default_value = "driver-1")]
    user: String,
    #[arg(long, default_value = "phone-1")]
    device: String,
    /// Seconds between heartbeats (the seed's mobile app sends one every 30 s).
    #[arg(long, default_value_t = 30)]
    interval: u64,
    #[arg(long, env = "JWT_SECRET", default_value = "dev-secret-change-me")]
    jwt_secret: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let token = mint_hs256(args.jwt_secret.as_bytes(), &args.user, Role::Mobile, 24 * 3600)?;
    let mut request = args.url.as_str().into_client_request()?;
    request.headers_mut().insert("token", token.parse()?);
    request.headers_mut().insert("device_id", args.device.parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;
    println!("connected as {} ({}); heartbeat every {} s", args.user, args.device, args.interval);

    let mut ticks = tokio::time::interval(Duration::from_secs(args.interval));
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                ws.send(Message::Binary(heartbeat_frame(&args.user))).await?;
                println!("→ HEARTBEAT");
            }
            message = ws.next() => match message {
                Some(Ok(Message::Binary(bytes))) => println!("← {}", rmpv::decode::read_value(&mut &bytes[..])?),
                Some(Ok(Message::Close(frame))) => { println!("← close {frame:?}"); break; }
                Some(Ok(_)) => {}
                Some(Err(e)) => { println!("connection error: {e}"); break; }
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
