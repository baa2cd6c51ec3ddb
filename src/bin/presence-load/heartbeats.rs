//! Heartbeat throughput: N mobiles heartbeat for a fixed time, at a chosen total rate or,
//! with rate 0, in a closed loop (send, wait for the ACK, repeat); reports heartbeats per
//! second and per second of router CPU, beside `redis-benchmark -t set -P 16` measured
//! just before on the same Redis, and, given the redis-server pids (all of a cluster's
//! nodes), Redis CPU per heartbeat over the same window.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use tokio::time::{Instant, MissedTickBehavior};

use crate::{
    fleet,
    net::{Credentials, heartbeat_answer},
    stats::{Process, cpu_seconds_sum},
};

/// The heartbeat load: how many mobiles, for how long, at what total rate.
pub struct Load {
    pub connections: usize,
    pub seconds: u64,
    /// Heartbeats per second across all connections; 0 = closed loop.
    pub rate: u32,
}

pub async fn run(
    credentials: &Credentials,
    router: SocketAddr,
    pid: u32,
    load: Load,
    redis_port: Option<u16>,
    redis_pids: &[u32],
) -> anyhow::Result<()> {
    let Load { connections, seconds, rate } = load;
    let redis_ops = match redis_port {
        Some(port) => Some(redis_benchmark(port).await?),
        None => None,
    };
    let mobiles = fleet::connect(credentials, router, 0..connections, 256).await?;
    let process = Process { pid };
    let redis: Vec<Process> = redis_pids.iter().map(|&pid| Process { pid }).collect();
    let (count, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let redis_before = cpu_seconds_sum(&redis)?;
    let cpu_before = process.cpu_seconds()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    // Each connection's share of the total rate; none for the closed loop.
    let period = (rate > 0).then(|| Duration::from_secs_f64(connections as f64 / f64::from(rate)));
    let tasks: Vec<_> = mobiles
        .into_iter()
        .enumerate()
        .map(|(i, mut mobile)| {
            let (count, refused) = (count.clone(), refused.clone());
            tokio::spawn(async move {
                let mut ticks = period.map(|p| {
                    // Spread the connections' phases over one period.
                    let mut t = tokio::time::interval_at(started + p.mul_f64(i as f64 / connections as f64), p);
                    t.set_missed_tick_behavior(MissedTickBehavior::Skip);
                    t
                });
                while Instant::now() < deadline {
                    if let Some(ticks) = ticks.as_mut() {
                        ticks.tick().await;
                    }
                    // Refusals (the store unavailable) are counted apart, not as heartbeats.
                    match heartbeat_answer(&mut mobile.ws, &mobile.user).await? {
                        None => count.fetch_add(1, Ordering::Relaxed),
                        Some(_) => refused.fetch_add(1, Ordering::Relaxed),
                    };
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process.cpu_seconds()? - cpu_before;
    let redis_cpu = cpu_seconds_sum(&redis)? - redis_before;
    let n = count.load(Ordering::Relaxed) as f64;
    print!(
        "heartbeats connections={connections} rate={} seconds={elapsed:.1} per_second={:.0} router_cpu={cpu:.2}s per_router_cpu_second={:.0} refused={}",
        if rate == 0 { "max".to_string() } else { rate.to_string() },
        n / elapsed,
        n / cpu,
        refused.load(Ordering::Relaxed)
    );
    if !redis.is_empty() {
        print!(
            " redis_processes={} redis_cpu={redis_cpu:.2}s redis_us_per_heartbeat={:.2}",
            redis.len(),
            redis_cpu * 1e6 / n
        );
    }
    match redis_ops {
        Some(ops) => println!(" redis_set_p16={ops:.0} ratio={:.2}", (n / elapsed) / ops),
        None => println!(),
    }
    Ok(())
}

/// `redis-benchmark -t set -P 16 -q`: SET requests per second.
async fn redis_benchmark(port: u16) -> anyhow::Result<f64> {
    let output = tokio::process::Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-t", "set", "-P", "16", "-q", "-n", "2000000"])
        .output()
        .await
        .context("running redis-benchmark")?;
    let text = String::from_utf8_lossy(&output.stdout);
    // "SET: 512345.67 requests per second, p50=…" (the last progress line wins)
    let line = text.rsplit(['\r', '\n']).find(|l| l.starts_with("SET:")).context("redis-benchmark output")?;
    Ok(line.trim_start_matches("SET:").split_whitespace().next().context("ops")?.parse()?)
}
