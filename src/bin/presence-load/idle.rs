//! RSS per idle mobile connection: connect N, heartbeat once each, read the router's RSS;
//! with a frame size, then each sends one frame that large (a TEXT to a group only it is
//! in, which the router reads whole and ACKs) and waits for the ACK, and the RSS is read
//! again: what a large frame leaves behind. Kernel TCP memory is read beside it.

use std::net::SocketAddr;

use anyhow::{bail, ensure};
use futures_util::{SinkExt, StreamExt, TryStreamExt, stream};
use presence_router::protocol::{ChannelType, client_frame, message_type};
use rmpv::Value;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    fleet::{self, Mobile},
    net::{Credentials, next_frame},
    stats::{Process, tcp_mem_kib},
};

pub async fn run(
    credentials: &Credentials,
    router: SocketAddr,
    pid: u32,
    connections: usize,
    frame_bytes: Option<usize>,
    in_flight: usize,
) -> anyhow::Result<()> {
    let process = Process { pid };
    let tcp_before = tcp_mem_kib()?;
    let before = process.rss_kib()?;
    let started = Instant::now();
    let mut mobiles = match frame_bytes {
        None => fleet::connect(credentials, router, 0..connections, 256).await?,
        // Each in a group of its own, for its TEXT.
        Some(_) => fleet::connect_grouped(credentials, router, 0..connections, 256).await?,
    };
    let connect_secs = started.elapsed().as_secs_f64();
    let after = process.rss_kib()?;
    let tcp_after = tcp_mem_kib()?;
    let per = (after.saturating_sub(before)) as f64 / connections as f64;
    print!(
        "idle connections={connections} rss_before={before}KiB rss_after={after}KiB \
         per_connection={per:.2}KiB connect_time={connect_secs:.1}s tcp_mem_before={tcp_before}KiB \
         tcp_mem_after={tcp_after}KiB"
    );
    if let Some(bytes) = frame_bytes {
        let started = Instant::now();
        stream::iter(mobiles.iter_mut())
            .map(|mobile| large_text(mobile, bytes))
            .buffer_unordered(in_flight)
            .try_collect::<()>()
            .await?;
        let frame_secs = started.elapsed().as_secs_f64();
        let after_frame = process.rss_kib()?;
        let tcp_after_frame = tcp_mem_kib()?;
        let per_after = (after_frame.saturating_sub(before)) as f64 / connections as f64;
        print!(
            " | frame_bytes={bytes} in_flight={in_flight} frame_time={frame_secs:.1}s \
             rss_after_frame={after_frame}KiB per_connection_after_frame={per_after:.2}KiB \
             tcp_mem_after_frame={tcp_after_frame}KiB"
        );
    }
    println!();
    drop(mobiles);
    Ok(())
}

/// Sends a TEXT (17) of exactly `bytes` to the mobile's own group and waits for its TEXT_ACK.
async fn large_text(mobile: &mut Mobile, bytes: usize) -> anyhow::Result<()> {
    let group = fleet::own_group(&mobile.user);
    let frame = |text_len: usize| {
        let text = Value::String("x".repeat(text_len).into());
        client_frame(ChannelType::Group, message_type::TEXT, &mobile.user, &group, &text)
    };
    // The string header is 3 bytes (str16) from 256 bytes up.
    let overhead = frame(256).len() - 256;
    ensure!(bytes >= overhead + 256 && bytes - overhead <= u16::MAX as usize, "--frame-bytes out of range");
    let text = frame(bytes - overhead);
    ensure!(text.len() == bytes, "TEXT frame of {} bytes, not {bytes}", text.len());
    mobile.ws.send(Message::Binary(text)).await?;
    loop {
        let reply = next_frame(&mut mobile.ws).await?;
        match reply[1].as_u64().map(|t| t as u8) {
            Some(message_type::TEXT_ACK) => return Ok(()),
            Some(message_type::ERROR) => bail!("TEXT refused: {}", reply[5]),
            _ => continue,
        }
    }
}
