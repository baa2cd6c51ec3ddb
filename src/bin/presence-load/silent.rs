//! Silent users: N mobiles heartbeat once and go quiet with their sockets open; a dashboard
//! (on another router, if given) times each offline against the lease deadline.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use presence_router::auth::Role;
use tokio::time::Instant;

use crate::{
    fleet,
    net::{Credentials, next_frame},
    stats::Summary,
};

pub async fn run(
    credentials: &Credentials,
    router: SocketAddr,
    dashboard_router: SocketAddr,
    users: usize,
    ttl: Duration,
) -> anyhow::Result<()> {
    let mut dashboard = credentials.connect(dashboard_router, users, "load-dashboard", Role::Dashboard).await?;
    next_frame(&mut dashboard).await?; // snapshot
    let mobiles = fleet::connect(credentials, router, 0..users, 256).await?;
    // The lease started when the acknowledged heartbeat was stored: by `acked`.
    let deadlines: HashMap<String, Instant> = mobiles.iter().map(|m| (m.user.clone(), m.acked + ttl)).collect();
    println!("silent: {users} users connected and quiet; waiting for their offlines");

    let mut lateness = Vec::with_capacity(users);
    let give_up = Instant::now() + ttl + Duration::from_secs(60);
    while lateness.len() < users {
        let frame = tokio::time::timeout_at(give_up, next_frame(&mut dashboard)).await??;
        let payload = &frame[5];
        if frame[1].as_u64() == Some(31) && payload["status"].as_str() == Some("offline") {
            let arrived = Instant::now();
            if let Some(deadline) = payload["userId"].as_str().and_then(|u| deadlines.get(u)) {
                lateness.push(arrived.saturating_duration_since(*deadline).as_secs_f64() * 1000.0);
            }
        }
    }
    println!("silent users={users} ttl={}s offline_after_deadline {}", ttl.as_secs(), Summary::of(lateness));
    drop(mobiles);
    Ok(())
}
