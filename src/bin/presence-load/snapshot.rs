//! Snapshot time: with N users online, a new dashboard's wait from handshake to a decoded
//! PRESENCE_SNAPSHOT; meanwhile a probe mobile measures its heartbeat round trips, to show
//! whether other traffic stalls.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use presence_router::auth::Role;
use tokio::time::Instant;

use crate::{
    fleet,
    net::{Credentials, heartbeat, next_frame},
    stats::Summary,
};

pub async fn run(
    credentials: &Credentials,
    router: SocketAddr,
    users: usize,
    expect: usize,
    repeat: usize,
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
    drop(mobiles);
    Ok(())
}
