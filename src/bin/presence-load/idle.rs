//! RSS per idle mobile connection: connect N, heartbeat once each, read the router's RSS.

use std::net::SocketAddr;

use crate::{fleet, net::Credentials, stats::Process};

pub async fn run(credentials: &Credentials, router: SocketAddr, pid: u32, connections: usize) -> anyhow::Result<()> {
    let process = Process { pid };
    let before = process.rss_kib()?;
    let started = std::time::Instant::now();
    let mobiles = fleet::connect(credentials, router, 0..connections, 256).await?;
    let connect_secs = started.elapsed().as_secs_f64();
    let after = process.rss_kib()?;
    let per = (after.saturating_sub(before)) as f64 / connections as f64;
    println!(
        "idle connections={connections} rss_before={before}KiB rss_after={after}KiB \
         per_connection={per:.2}KiB connect_time={connect_secs:.1}s"
    );
    drop(mobiles);
    Ok(())
}
