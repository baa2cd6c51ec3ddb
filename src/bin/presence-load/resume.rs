//! Dashboards reconnecting after their router stopped: with the position their view had
//! reached (resumed: only the changes missed) against without (a full snapshot each), in
//! the same run. D dashboards read their snapshot from router A; A is stopped (SIGTERM)
//! or they are cut off; C users go offline meanwhile (through Redis, as another router's
//! sweep would); once router B has them all, the D dashboards reconnect to B at once, with
//! their positions, and then again without. Per phase: bytes each dashboard received up to
//! a consistent view (WebSocket payload bytes up to and including RESUMED, or the
//! snapshot), the time from the start of the reconnect to it, and router B's CPU time.

use std::{collections::HashSet, net::SocketAddr, time::Duration};

use anyhow::{Context, bail};
use futures_util::{StreamExt, TryStreamExt, future::try_join_all, stream};
use presence_router::{auth::Role, engine::PresenceStore, protocol::message_type};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    net::{Credentials, Ws, next_frame},
    seed,
    stats::{Process, Summary},
};

/// Dashboards reading their first snapshot at once (the first phase is not measured).
const SETUP_CONCURRENCY: usize = 16;
/// Transitions written at once during the gap.
const CHANGE_CONCURRENCY: usize = 64;

pub struct Options {
    /// Where the dashboards start.
    pub first: SocketAddr,
    /// Stopped (SIGTERM) once the dashboards have their positions; else they are cut off.
    pub first_pid: Option<u32>,
    /// Where they reconnect, and its pid.
    pub second: SocketAddr,
    pub second_pid: u32,
    pub redis_port: u16,
    /// Users seeded online (`seed`): each snapshot must hold them.
    pub users: usize,
    pub dashboards: usize,
    /// Users u0..u{changes} go offline during the gap.
    pub changes: usize,
}

/// One reconnect phase's figures.
struct Phase {
    bytes: Vec<u64>,
    millis: Vec<f64>,
    cpu_seconds: f64,
}

pub async fn run(credentials: &Credentials, options: Options) -> anyhow::Result<()> {
    let Options { first, first_pid, second, second_pid, redis_port, users, dashboards, changes } = options;
    anyhow::ensure!(changes <= users, "--changes {changes} is more than the {users} users seeded");
    let started: Vec<(Ws, String)> = stream::iter(0..dashboards)
        .map(|k| async move {
            let mut ws = credentials.connect(first, k, &format!("dash{k}"), Role::Dashboard).await?;
            let snapshot = next_frame(&mut ws).await?;
            anyhow::ensure!(
                snapshot[5]["count"].as_u64() >= Some(users as u64),
                "snapshot holds {}",
                snapshot[5]["count"]
            );
            let mark = |key: &str| snapshot[5][key].as_str().map(String::from).context("a snapshot without its mark");
            let query = form_urlencoded::Serializer::new(String::from("?"))
                .append_pair("position", &mark("position")?)
                .append_pair("view", &mark("view")?)
                .finish();
            Ok::<_, anyhow::Error>((ws, query))
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect()
        .await?;
    let mut witness = credentials.connect(second, dashboards, "witness", Role::Dashboard).await?;
    next_frame(&mut witness).await?;

    // The router goes away: its dashboards' connections end.
    if let Some(pid) = first_pid {
        // SAFETY: kill(2) with a pid and a signal number; no memory is shared.
        anyhow::ensure!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) } == 0, "stopping router {pid}");
    }
    let mut queries = Vec::with_capacity(dashboards);
    for (mut ws, query) in started {
        if first_pid.is_none() {
            ws.close(None).await?;
        }
        while ws.next().await.is_some() {}
        queries.push(query);
    }

    // Changes while they are away, then until router B has every one of them.
    let writer = seed::Writer::connect(redis_port, Duration::from_secs(3600)).await?;
    stream::iter(0..changes)
        .map(|i| {
            let writer = &writer;
            async move { writer.publish(writer.store.disconnect(&seed::session(i, 0)?).await?).await }
        })
        .buffer_unordered(CHANGE_CONCURRENCY)
        .try_collect::<()>()
        .await?;
    let mut offline = HashSet::new();
    while offline.len() < changes {
        let update = next_frame(&mut witness).await?;
        if update[1].as_u64() == Some(message_type::PRESENCE_UPDATE.into())
            && update[5]["status"].as_str() == Some("offline")
        {
            offline.insert(update[5]["userId"].as_str().unwrap_or_default().to_string());
        }
    }

    let process = Process { pid: second_pid };
    let resumed = reconnect(credentials, second, &queries, message_type::RESUMED, &process).await?;
    let blank = vec![String::new(); dashboards];
    let snapshots = reconnect(credentials, second, &blank, message_type::PRESENCE_SNAPSHOT, &process).await?;
    let per_dashboard = |phase: &Phase| phase.bytes.iter().sum::<u64>() as f64 / dashboards as f64;
    let (resumed_bytes, snapshot_bytes) = (per_dashboard(&resumed), per_dashboard(&snapshots));
    println!(
        "resume users={users} dashboards={dashboards} changes={changes} \
         resumed: bytes_per_dashboard={:.0} router_cpu={:.3}s time_to_view {} | \
         snapshot: bytes_per_dashboard={:.0} router_cpu={:.3}s time_to_view {} | \
         bytes {:.1}x fewer, router cpu {:.1}x less",
        resumed_bytes,
        resumed.cpu_seconds,
        Summary::of(resumed.millis),
        snapshot_bytes,
        snapshots.cpu_seconds,
        Summary::of(snapshots.millis),
        snapshot_bytes / resumed_bytes,
        snapshots.cpu_seconds / resumed.cpu_seconds.max(1e-9),
    );
    Ok(())
}

/// Every dashboard reconnects at once, dashboard `k` with `queries[k]`, and reads until a
/// frame of type `until`.
async fn reconnect(
    credentials: &Credentials,
    router: SocketAddr,
    queries: &[String],
    until: u8,
    process: &Process,
) -> anyhow::Result<Phase> {
    let cpu = process.cpu_seconds()?;
    let started = Instant::now();
    let read = try_join_all(queries.iter().enumerate().map(|(k, query)| async move {
        let mut ws = credentials.connect_to(router, query, k, &format!("dash{k}"), Role::Dashboard, None).await?;
        let mut bytes = 0u64;
        loop {
            match ws.next().await.context("closed before a consistent view")?? {
                Message::Binary(frame) => {
                    bytes += frame.len() as u64;
                    // [0, type, …]: a six-element array, its type at the third byte.
                    match frame.get(2).copied() {
                        Some(t) if t == until => break,
                        Some(t) if t == message_type::PRESENCE_SNAPSHOT || t == message_type::RESUMED => {
                            bail!("dashboard {k} got type {t} instead of {until}")
                        }
                        _ => {}
                    }
                }
                Message::Close(_) => bail!("dashboard {k} closed before a consistent view"),
                _ => {}
            }
        }
        let millis = started.elapsed().as_secs_f64() * 1000.0;
        Ok::<_, anyhow::Error>((ws, bytes, millis))
    }))
    .await?;
    let cpu_seconds = process.cpu_seconds()? - cpu;
    let (bytes, millis) = read.iter().map(|(_, bytes, millis)| (*bytes, *millis)).unzip();
    drop(read);
    Ok(Phase { bytes, millis, cpu_seconds })
}
