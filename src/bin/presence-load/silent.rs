//! Silent users: N users heartbeat once and go quiet; a dashboard (on another router, if
//! given) times each offline against the lease deadline.
//!
//! With `--router`, the users are real mobiles whose sockets stay open. With
//! `--redis-port`, they are leased straight into Redis through the router's store (100k
//! and more, past this machine's file limit), optionally among unrelated TTL keys.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::Duration,
};

use presence_router::{auth::Role, presence::unix_ms};

use crate::{
    fleet,
    net::{Credentials, next_frame},
    seed,
    stats::Summary,
};

/// Where the silent users come from.
pub enum Users {
    Sockets(SocketAddr),
    Seeded { redis_port: u16, other_keys: usize },
}

pub async fn run(
    credentials: &Credentials,
    users_from: Users,
    dashboard_router: SocketAddr,
    users: usize,
    ttl: Duration,
) -> anyhow::Result<()> {
    let mut held = Vec::new();
    // Each user's lease deadline, Unix ms.
    let deadlines: HashMap<String, u64> = match users_from {
        Users::Sockets(router) => {
            held = fleet::connect(credentials, router, 0..users, 256).await?;
            // The lease started when the acknowledged heartbeat was stored: by the ACK.
            let now = (unix_ms(), tokio::time::Instant::now());
            held.iter()
                .map(|m| {
                    let acked_ms = now.0 - now.1.duration_since(m.acked).as_millis() as u64;
                    (m.user.clone(), acked_ms + ttl.as_millis() as u64)
                })
                .collect()
        }
        Users::Seeded { redis_port, other_keys } => {
            if other_keys > 0 {
                seed::other_keys(redis_port, other_keys).await?;
                println!("silent: {other_keys} other TTL keys written");
            }
            seed::users(redis_port, users, ttl, 0).await?
        }
    };
    // The dashboard joins once everyone is online: its snapshot holds them all, and what
    // follows is the offlines this measures.
    let mut dashboard = credentials.connect(dashboard_router, users, "load-dashboard", Role::Dashboard).await?;
    println!("silent: {users} users online and quiet; waiting for their offlines");

    // An offline arrives as an update, or as absence from a snapshot: the first one (a
    // user may lapse before the dashboard joins) or one after a resync.
    let mut pending = deadlines;
    let mut lateness = Vec::with_capacity(users);
    let give_up = tokio::time::Instant::now() + ttl + Duration::from_secs(120);
    while !pending.is_empty() {
        let Ok(frame) = tokio::time::timeout_at(give_up, next_frame(&mut dashboard)).await else { break };
        let (frame, arrived) = (frame?, unix_ms());
        let payload = &frame[5];
        match frame[1].as_u64() {
            Some(31) if payload["status"].as_str() == Some("offline") => {
                if let Some(deadline) = payload["userId"].as_str().and_then(|u| pending.remove(u)) {
                    lateness.push(arrived.saturating_sub(deadline) as f64);
                }
            }
            Some(32) => {
                let listed: HashSet<&str> =
                    payload["users"].as_array().into_iter().flatten().filter_map(|u| u["userId"].as_str()).collect();
                pending.retain(|user, deadline| {
                    let gone = !listed.contains(user.as_str());
                    if gone {
                        lateness.push(arrived.saturating_sub(*deadline) as f64);
                    }
                    !gone
                });
            }
            _ => {}
        }
    }
    println!(
        "silent users={users} ttl={}s missing={} offline_after_deadline {}",
        ttl.as_secs(),
        pending.len(),
        Summary::of(lateness)
    );
    drop(held);
    Ok(())
}
