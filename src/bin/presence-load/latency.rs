//! Update latency across routers: mobiles connect to and disconnect from one router at a
//! fixed rate of changes per second; a dashboard on another router times each change from
//! the client's action to the PRESENCE_UPDATE.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use presence_router::auth::Role;
use tokio::time::{Instant, MissedTickBehavior};

use crate::{
    fleet,
    net::{Credentials, Ws, next_frame},
    stats::Summary,
};

pub async fn run(
    credentials: Arc<Credentials>,
    mobiles_router: SocketAddr,
    dashboard_router: SocketAddr,
    users: usize,
    rate: u32,
    seconds: u64,
) -> anyhow::Result<()> {
    let mut dashboard = credentials.connect(dashboard_router, 0, "latency-dashboard", Role::Dashboard).await?;
    next_frame(&mut dashboard).await?;
    let pending: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let samples: Arc<Mutex<Vec<f64>>> = Arc::default();
    let (reader_pending, reader_samples) = (pending.clone(), samples.clone());
    let reader = tokio::spawn(async move {
        while let Ok(frame) = next_frame(&mut dashboard).await {
            if frame[1].as_u64() != Some(31) {
                continue;
            }
            let started = frame[5]["userId"].as_str().and_then(|u| reader_pending.lock().unwrap().remove(u));
            if let Some(started) = started {
                reader_samples.lock().unwrap().push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
    });

    let slots: Vec<Arc<tokio::sync::Mutex<Option<Ws>>>> = (0..users).map(|_| Arc::default()).collect();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut actions = Vec::new();
    for k in 0..(u64::from(rate) * seconds) as usize {
        tick.tick().await;
        let i = k % users;
        let (slot, pending, credentials) = (slots[i].clone(), pending.clone(), credentials.clone());
        actions.push(tokio::spawn(async move {
            let user = fleet::user(i);
            let mut slot = slot.lock().await;
            pending.lock().unwrap().insert(user.clone(), Instant::now());
            match slot.take() {
                Some(mut ws) => ws.close(None).await.map_err(anyhow::Error::from),
                None => {
                    *slot = Some(credentials.connect(mobiles_router, i, &user, Role::Mobile).await?);
                    Ok(())
                }
            }
        }));
    }
    for action in actions {
        action.await??;
    }
    let drained = Instant::now() + Duration::from_secs(5);
    while !pending.lock().unwrap().is_empty() && Instant::now() < drained {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reader.abort();
    let lost = pending.lock().unwrap().len();
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    println!("latency rate={rate}/s seconds={seconds} users={users} unanswered={lost} {}", Summary::of(samples));
    Ok(())
}
