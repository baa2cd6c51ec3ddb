//! Snapshot time: with N users online, a new dashboard's wait from handshake to a decoded
//! PRESENCE_SNAPSHOT; meanwhile a probe mobile measures its heartbeat round trips, to show
//! whether other traffic stalls. Then, optionally, what dashboards cost the router once
//! they have read the snapshot: M more dashboards each read it and stay connected, and
//! the router's RSS is read before and after.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use futures_util::{StreamExt, TryStreamExt, stream};
use presence_router::{auth::Role, protocol::message_type};
use tokio::time::Instant;

use crate::{
    fleet,
    net::{Credentials, heartbeat, next_frame},
    raw::{self, Reader},
    stats::{Process, Summary, tcp_mem_kib},
};

/// Dashboards reading their snapshot at once, in the retained-memory measurement.
const RETAIN_CONCURRENCY: usize = 8;

pub async fn run(
    credentials: &Credentials,
    router: SocketAddr,
    users: usize,
    expect: usize,
    repeat: usize,
    retain: Option<(u32, usize)>,
) -> anyhow::Result<()> {
    let mobiles = fleet::connect(credentials, router, 0..users, 256).await?;
    let mut probe = credentials.connect(router, users + 1, "probe", Role::Mobile).await?;
    let rtts = Arc::new(Mutex::new(Vec::new()));
    let probe_rtts = rtts.clone();
    let probing = tokio::spawn(async move {
        loop {
            let sent = Instant::now();
            if heartbeat(&mut probe, "probe").await.is_err() {
                break;
            }
            probe_rtts.lock().unwrap().push(sent.elapsed().as_secs_f64() * 1000.0);
        }
    });

    let mut times = Vec::with_capacity(repeat);
    for i in 0..repeat {
        let started = Instant::now();
        let mut dashboard = credentials.connect(router, users + 2 + i, &format!("dash{i}"), Role::Dashboard).await?;
        let snapshot = next_frame(&mut dashboard).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            snapshot[5]["count"].as_u64() >= Some(expect as u64),
            "snapshot holds {}",
            snapshot[5]["count"]
        );
    }
    probing.abort();
    let rtts = std::mem::take(&mut *rtts.lock().unwrap());
    println!("snapshot users={expect} time {}", Summary::of(times));
    println!("snapshot probe heartbeat rtt during snapshots {}", Summary::of(rtts));
    if let Some((pid, dashboards)) = retain {
        retained(credentials, router, Process { pid }, dashboards, users + 2 + repeat).await?;
    }
    drop(mobiles);
    Ok(())
}

/// RSS the router keeps per dashboard that has read the snapshot and stays connected.
/// The dashboards are raw sockets that skip the snapshot's bytes, so the tool holds no
/// copy of it.
async fn retained(
    credentials: &Credentials,
    router: SocketAddr,
    process: Process,
    dashboards: usize,
    first: usize,
) -> anyhow::Result<()> {
    // The timed dashboards above have gone; let the router finish with them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tcp_before = tcp_mem_kib()?;
    let before = process.rss_kib()?;
    let peak = process.watch_peak();
    let started = Instant::now();
    let connected: Vec<(Reader<_>, u64, f64)> = stream::iter(0..dashboards)
        .map(|k| async move {
            let started = Instant::now();
            let (stream, leftover) = credentials
                .connect_raw(router, (first + k, None), &format!("retain{k}"), Role::Dashboard, None)
                .await?;
            let mut reader = Reader::new(stream, leftover);
            let frame = reader.frame(3).await?.context("closed before the snapshot")?;
            // [0, 32, …]: a six-element array whose message type is PRESENCE_SNAPSHOT.
            anyhow::ensure!(
                frame.opcode == raw::BINARY && frame.head == [0x96, 0x00, message_type::PRESENCE_SNAPSHOT],
                "not a snapshot frame (opcode {})",
                frame.opcode
            );
            Ok::<_, anyhow::Error>((reader, frame.len, started.elapsed().as_secs_f64() * 1000.0))
        })
        .buffer_unordered(RETAIN_CONCURRENCY)
        .try_collect()
        .await?;
    let read_secs = started.elapsed().as_secs_f64();
    // Let writes and their buffers wind down before reading the RSS.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = process.rss_kib()?;
    let tcp_after = tcp_mem_kib()?;
    let bytes = connected.iter().map(|(_, len, _)| *len).max().unwrap_or(0);
    let times = Summary::of(connected.iter().map(|(_, _, ms)| *ms).collect());
    let per = after.saturating_sub(before) as f64 / dashboards as f64;
    println!(
        "snapshot retained dashboards={dashboards} snapshot_bytes={bytes} in_flight={RETAIN_CONCURRENCY} \
         read_time={read_secs:.1}s rss_before={before}KiB rss_peak={}KiB rss_after={after}KiB \
         per_dashboard={per:.1}KiB tcp_mem_before={tcp_before}KiB tcp_mem_after={tcp_after}KiB \
         each_read {times}",
        peak.peak().max(after)
    );
    drop(connected);
    Ok(())
}
