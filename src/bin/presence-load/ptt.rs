//! PTT audio fan-out: one talker on one router holds a group's floor and sends AUDIO at a
//! fixed rate; listeners in the group (on the same router or another) time each frame from
//! the talker's send to their receipt, count what never arrived, and note the longest gap
//! between two frames (what a listener hears as a stall). With `--heartbeat-every-ms`
//! listeners also heartbeat while they listen, as phones do: a router whose connections
//! wait on a slow store then shows it in the gaps.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use futures_util::{SinkExt, StreamExt};
use presence_router::{
    auth::Role,
    protocol::{ChannelType, client_frame, heartbeat_frame, message_type},
};
use rmpv::Value;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    net::{Credentials, next_frame},
    stats::Summary,
};

const GROUP: &str = "ptt-bench";
/// Bytes of audio per frame: 20 ms of 64 kbit/s Opus.
const AUDIO_BYTES: usize = 160;

pub async fn run(
    credentials: Arc<Credentials>,
    talker_router: SocketAddr,
    listeners_router: SocketAddr,
    listeners: usize,
    rate: u32,
    seconds: u64,
    heartbeat_every: Option<Duration>,
) -> anyhow::Result<()> {
    let groups: &[&str] = &[GROUP];
    let mut talker = credentials.connect_in(talker_router, 0, "talker", Role::Mobile, Some(groups)).await?;
    let epoch = Instant::now();
    let frames = u64::from(rate) * seconds;
    let mut readers = Vec::with_capacity(listeners);
    for i in 0..listeners {
        let user = format!("listener-{i}");
        let mut ws = credentials.connect_in(listeners_router, i + 1, &user, Role::Mobile, Some(groups)).await?;
        crate::net::heartbeat(&mut ws, &user).await?; // registered before the talk starts
        readers.push(tokio::spawn(async move {
            let (mut sink, mut stream) = ws.split();
            let beat = heartbeat_frame(&user);
            let mut beats = tokio::time::interval(heartbeat_every.unwrap_or(Duration::from_secs(3600)));
            beats.tick().await;
            let mut samples = Vec::with_capacity(frames as usize);
            let (mut last, mut worst_gap) = (None::<Instant>, Duration::ZERO);
            while samples.len() < frames as usize {
                let message = tokio::select! {
                    _ = beats.tick(), if heartbeat_every.is_some() => {
                        if sink.send(Message::Binary(beat.clone())).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    message = tokio::time::timeout(Duration::from_secs(5), stream.next()) => message,
                };
                let Ok(Some(Ok(Message::Binary(bytes)))) = message else {
                    if matches!(message, Ok(Some(Ok(_)))) {
                        continue;
                    }
                    break;
                };
                let Ok(frame) = rmpv::decode::read_value(&mut &bytes[..]) else { break };
                if frame[1].as_u64() == Some(message_type::AUDIO.into())
                    && let Value::Binary(audio) = &frame[4]
                    && let Some(stamp) = audio.get(..8)
                {
                    let now = Instant::now();
                    if let Some(last) = last {
                        worst_gap = worst_gap.max(now - last);
                    }
                    last = Some(now);
                    let sent = Duration::from_micros(u64::from_be_bytes(stamp.try_into().unwrap_or_default()));
                    samples.push((epoch.elapsed() - sent).as_secs_f64() * 1000.0);
                }
            }
            (samples, worst_gap.as_secs_f64() * 1000.0)
        }));
    }

    let start = client_frame(ChannelType::Group, message_type::START, "talker", GROUP, &Value::Map(vec![]));
    talker.send(Message::Binary(start)).await?;
    let ack = next_frame(&mut talker).await?;
    anyhow::ensure!(ack[1].as_u64() == Some(message_type::START_ACK.into()), "START refused: {ack}");
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    for _ in 0..frames {
        tick.tick().await;
        let mut audio = vec![0u8; AUDIO_BYTES];
        audio[..8].copy_from_slice(&(epoch.elapsed().as_micros() as u64).to_be_bytes());
        let frame = client_frame(ChannelType::Group, message_type::AUDIO, "talker", GROUP, &Value::Binary(audio));
        talker.send(Message::Binary(frame)).await?;
    }
    let stop = client_frame(ChannelType::Group, message_type::STOP, "talker", GROUP, &Value::Map(vec![]));
    talker.send(Message::Binary(stop)).await?;

    let (mut samples, mut gaps) = (Vec::new(), Vec::new());
    for reader in readers {
        let (received, worst_gap) = reader.await?;
        samples.extend(received);
        gaps.push(worst_gap);
    }
    let expected = frames as usize * listeners;
    let heartbeats = heartbeat_every.map_or("none".to_string(), |every| format!("{}ms", every.as_millis()));
    println!(
        "ptt rate={rate}/s seconds={seconds} listeners={listeners} listener_heartbeats={heartbeats} \
         delivered={}/{expected} latency {} | longest gap per listener {}",
        samples.len(),
        Summary::of(samples),
        Summary::of(gaps)
    );
    Ok(())
}
