//! Relay fan-in: how many messages Redis hands the routers per AUDIO frame. Each of G
//! groups has a talker and a listener on one router (group i on router i mod N); every
//! talker holds its group's floor and sends AUDIO at a fixed rate. Relayed messages
//! received are read from each router's `presence_broker_messages_total{kind="relay"}`
//! once the STARTs have settled and again once the last AUDIO has: their sum over routers,
//! divided by the AUDIO frames sent, is 1 when each frame reaches only the router that
//! serves its group (its own, which skips it), and N when every frame reaches every router.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt, future::try_join_all};
use presence_router::{
    auth::Role,
    protocol::{ChannelType, client_frame, message_type},
};
use rmpv::Value;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use crate::net::{Credentials, Http, Ws, heartbeat, next_frame};

/// Bytes of audio per frame: 20 ms of 64 kbit/s Opus.
const AUDIO_BYTES: usize = 160;
/// The series read from each router.
const RELAYED: &str = "presence_broker_messages_total{kind=\"relay\"}";
/// The gauge of group channels a router subscribes to (absent on a router without them).
const GROUP_SUBSCRIPTIONS: &str = "presence_broker_group_subscriptions";
/// How often the counters are read while waiting for them to settle.
const SETTLE_POLL: Duration = Duration::from_millis(250);
/// Longest wait for the routers' counters to settle or their subscriptions to stand.
const SETTLE_LIMIT: Duration = Duration::from_secs(20);

pub async fn run(
    credentials: Arc<Credentials>,
    routers: Vec<SocketAddr>,
    groups: usize,
    rate: u32,
    seconds: u64,
) -> anyhow::Result<()> {
    if routers.is_empty() || groups == 0 || rate == 0 {
        bail!("give at least one router, one group and a rate above 0");
    }
    let pairs = try_join_all((0..groups).map(|i| {
        let credentials = credentials.clone();
        let router = routers[i % routers.len()];
        async move { Pair::connect(&credentials, router, i).await }
    }))
    .await?;
    await_subscriptions(&routers, groups).await?;

    let frames = u64::from(rate) * seconds;
    let mut talkers = Vec::with_capacity(groups);
    let mut listeners = Vec::with_capacity(groups);
    for pair in pairs {
        let mut talker = pair.talker;
        let start =
            client_frame(ChannelType::Group, message_type::START, &pair.talker_id, &pair.group, &Value::Map(vec![]));
        talker.send(Message::Binary(start)).await?;
        let ack = next_frame(&mut talker).await?;
        anyhow::ensure!(ack[1].as_u64() == Some(message_type::START_ACK.into()), "START refused: {ack}");
        talkers.push((talker, pair.talker_id, pair.group));
        listeners.push(tokio::spawn(count_audio(pair.listener)));
    }
    let before = settled(&routers).await?;

    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let audio = Value::Binary(vec![0; AUDIO_BYTES]);
    for _ in 0..frames {
        tick.tick().await;
        try_join_all(talkers.iter_mut().map(|(ws, user, group)| {
            let frame = client_frame(ChannelType::Group, message_type::AUDIO, user, group, &audio);
            ws.send(Message::Binary(frame))
        }))
        .await?;
    }
    let after = settled(&routers).await?;

    for (ws, user, group) in &mut talkers {
        let stop = client_frame(ChannelType::Group, message_type::STOP, user, group, &Value::Map(vec![]));
        ws.send(Message::Binary(stop)).await?;
    }
    let mut delivered = 0;
    for listener in listeners {
        delivered += listener.await??;
    }
    let sent = frames * groups as u64;
    let received: u64 = before.iter().zip(&after).map(|(b, a)| a - b).sum();
    println!(
        "relay-fanin routers={} groups={groups} rate={rate}/s seconds={seconds} audio_sent={sent} \
         audio_delivered={delivered} redis_to_router_relay_messages={received} per_audio_frame={:.2} (per router: {})",
        routers.len(),
        received as f64 / sent as f64,
        before.iter().zip(&after).map(|(b, a)| (a - b).to_string()).collect::<Vec<_>>().join(" "),
    );
    Ok(())
}

/// One group's talker and listener, on the same router.
struct Pair {
    group: String,
    talker_id: String,
    talker: Ws,
    listener: Ws,
}

impl Pair {
    async fn connect(credentials: &Credentials, router: SocketAddr, i: usize) -> anyhow::Result<Pair> {
        let group = format!("fanin-{i}");
        let (talker_id, listener_id) = (format!("fanin-talker-{i}"), format!("fanin-listener-{i}"));
        let groups: &[&str] = &[&group];
        let mut talker = credentials.connect_in(router, 2 * i, &talker_id, Role::Mobile, Some(groups)).await?;
        let mut listener = credentials.connect_in(router, 2 * i + 1, &listener_id, Role::Mobile, Some(groups)).await?;
        // Registered (and so a member of its group) before the talk starts.
        heartbeat(&mut talker, &talker_id).await?;
        heartbeat(&mut listener, &listener_id).await?;
        Ok(Pair { group, talker_id, talker, listener })
    }
}

/// Reads the listener until its STOP; returns the AUDIO frames it got.
async fn count_audio(mut listener: Ws) -> anyhow::Result<u64> {
    let mut audio = 0;
    loop {
        let message = tokio::time::timeout(SETTLE_LIMIT, listener.next()).await.context("the listener's STOP")?;
        let Some(Ok(message)) = message else { bail!("the listener's connection ended") };
        let Message::Binary(bytes) = message else { continue };
        let frame = rmpv::decode::read_value(&mut &bytes[..])?;
        match frame[1].as_u64().map(|t| t as u8) {
            Some(message_type::AUDIO) => audio += 1,
            Some(message_type::STOP) => return Ok(audio),
            _ => {}
        }
    }
}

/// Each router's relayed-message counter, once none has moved for one poll: every
/// message published before has been received.
async fn settled(routers: &[SocketAddr]) -> anyhow::Result<Vec<u64>> {
    let deadline = Instant::now() + SETTLE_LIMIT;
    let mut last = read_all(routers, RELAYED).await?;
    loop {
        tokio::time::sleep(SETTLE_POLL).await;
        let now = read_all(routers, RELAYED).await?;
        if now == last {
            return Ok(now.into_iter().map(|v| v.unwrap_or(0)).collect());
        }
        anyhow::ensure!(Instant::now() < deadline, "the routers' relay counters did not settle");
        last = now;
    }
}

/// Waits until the routers subscribe to a channel per group, when they have group
/// channels at all (a router without them has no gauge, and hears every group anyway).
async fn await_subscriptions(routers: &[SocketAddr], groups: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let gauges = read_all(routers, GROUP_SUBSCRIPTIONS).await?;
        if gauges.iter().any(Option::is_none) || gauges.iter().flatten().sum::<u64>() >= groups as u64 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the routers did not subscribe to every group's channel");
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// The value of `series` on each router's `/metrics`, `None` where it is absent.
async fn read_all(routers: &[SocketAddr], series: &str) -> anyhow::Result<Vec<Option<u64>>> {
    let mut values = Vec::with_capacity(routers.len());
    for router in routers {
        let (status, body) = Http::connect(*router).await?.get("/metrics").await?;
        anyhow::ensure!(status == 200, "GET /metrics on {router}: {status}");
        let text = String::from_utf8(body)?;
        let value = text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse::<f64>().ok());
        values.push(value.map(|v| v as u64));
    }
    Ok(values)
}
