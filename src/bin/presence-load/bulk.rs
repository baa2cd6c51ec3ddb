//! Bulk API latency: sequential `POST /api/presence/status` with 100 ids on one keep-alive
//! connection, half of them online.

use std::net::SocketAddr;

use presence_router::auth::{Role, mint_hs256};
use tokio::time::Instant;

use crate::{
    fleet,
    net::{Credentials, Http},
    stats::Summary,
};

pub async fn run(credentials: &Credentials, router: SocketAddr, online: usize, requests: usize) -> anyhow::Result<()> {
    let mobiles = fleet::connect(credentials, router, 0..online, 256).await?;
    let bearer = mint_hs256(credentials.secret.as_bytes(), "load-api", Role::Mobile, 3600)?;
    let mut http = Http::connect(router).await?;
    let mut latencies = Vec::with_capacity(requests);
    for r in 0..requests {
        // 100 ids per request, sliding over online and never-seen users.
        let ids: Vec<String> = (0..100).map(|k| fleet::user((r * 7 + k * 2) % (online.max(1) * 2))).collect();
        let body = serde_json::json!({ "userIds": ids }).to_string();
        let started = Instant::now();
        let (status, _) = http.post("/api/presence/status", &bearer, &body).await?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(status == 200, "status {status}");
    }
    println!("bulk ids=100 online={online} latency {}", Summary::of(latencies));
    drop(mobiles);
    Ok(())
}
