//! Bulk API latency: sequential `POST /api/presence/status` with 100 ids on one keep-alive
//! connection, half of them online.
//!
//! With `--scope-oracle`, the reader is a dashboard scoped to a group nobody is in, and
//! requests alternate between 100 existing users (out of its scope) and 100 never-seen
//! ids: both must read as unknown, and the two latency distributions should not differ
//! (a difference is an oracle of who exists).

use std::net::SocketAddr;

use presence_router::auth::{Role, mint_hs256, mint_hs256_in};
use tokio::time::Instant;

use crate::{
    fleet,
    net::{Credentials, Http},
    stats::Summary,
};

pub async fn run(
    credentials: &Credentials,
    router: SocketAddr,
    online: usize,
    requests: usize,
    scope_oracle: bool,
) -> anyhow::Result<()> {
    // Users in groups of their own, so that the oracle's existing users carry groups
    // (outside the reader's scope) as real ones do.
    let mobiles = if scope_oracle {
        fleet::connect_grouped(credentials, router, 0..online, 256).await?
    } else {
        fleet::connect(credentials, router, 0..online, 256).await?
    };
    let secret = credentials.secret.as_bytes();
    let bearer = if scope_oracle {
        mint_hs256_in(secret, "load-api", Role::Dashboard, Some(&["load-nobody"]), 3600)?
    } else {
        mint_hs256(secret, "load-api", Role::Mobile, 3600)?
    };
    let mut http = Http::connect(router).await?;
    // Latencies in ms: [existing users, never-seen ids] with --scope-oracle, else one list.
    let mut latencies = [Vec::with_capacity(requests), Vec::with_capacity(requests / 2)];
    for r in 0..requests {
        let ids: Vec<String> = if scope_oracle {
            // Even requests: existing users; odd: ids past the fleet, never seen.
            let base = if r % 2 == 0 { 0 } else { online.max(100) * 2 };
            (0..100).map(|k| fleet::user(base + (r * 7 + k) % online.max(100))).collect()
        } else {
            // 100 ids per request, sliding over online and never-seen users.
            (0..100).map(|k| fleet::user((r * 7 + k * 2) % (online.max(1) * 2))).collect()
        };
        let body = serde_json::json!({ "userIds": ids }).to_string();
        let started = Instant::now();
        let (status, reply) = http.post("/api/presence/status", &bearer, &body).await?;
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        anyhow::ensure!(status == 200, "status {status}");
        if scope_oracle {
            let reply: serde_json::Value = serde_json::from_slice(&reply)?;
            let leaked = reply["users"].as_array().into_iter().flatten().any(|u| !u["lastSeen"].is_null());
            anyhow::ensure!(!leaked, "an out-of-scope user read as known");
        }
        latencies[usize::from(scope_oracle && r % 2 == 1)].push(elapsed);
    }
    let [existing, unknown] = latencies;
    if scope_oracle {
        let (existing, unknown) = (Summary::of(existing), Summary::of(unknown));
        let difference_us = (existing.p50 - unknown.p50) * 1000.0;
        println!(
            "bulk scope-oracle ids=100 online={online} existing {existing} never-seen {unknown} median difference {difference_us:.1} µs"
        );
    } else {
        println!("bulk ids=100 online={online} latency {}", Summary::of(existing));
    }
    drop(mobiles);
    Ok(())
}
