//! A large group's churn as its dashboards see it: one dashboard per way of watching the
//! group (by its counts; in full, coalesced; in full, every change at once; without
//! SUBSCRIBE, everything its token reads), each counting the frames and bytes it receives
//! while [`crate::churn`] changes the group's members through the router's Redis.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use presence_router::{auth::Role, protocol::message_type};
use rmpv::Value;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    churn,
    net::{Credentials, Ws, next_frame},
    seed,
};

pub struct Options {
    pub router: SocketAddr,
    pub redis_port: u16,
    pub users: usize,
    /// The churn changes members u0..u{this} only (at most `users`): a hot set whose
    /// members change again within a window.
    pub churn_users: usize,
    pub rate: u64,
    pub seconds: f64,
    /// The interval of the counts, and the window of the coalesced full dashboard.
    pub interval_ms: u64,
}

/// How one dashboard watches the group: its label, and its SUBSCRIBE (`counts`,
/// `intervalMs`), if any.
struct Way {
    label: &'static str,
    subscribe: Option<(bool, u64)>,
}

#[derive(Default)]
struct Received {
    frames: AtomicU64,
    bytes: AtomicU64,
}

pub async fn run(credentials: &Credentials, options: Options) -> anyhow::Result<()> {
    let group = seed::group(0);
    let interval = options.interval_ms;
    let ways = [
        Way { label: "counts only", subscribe: Some((true, interval)) },
        Way { label: "full, coalesced", subscribe: Some((false, interval)) },
        Way { label: "full, every change", subscribe: Some((false, 0)) },
        Way { label: "no SUBSCRIBE (everything)", subscribe: None },
    ];
    let mut counted = Vec::new();
    for (i, way) in ways.iter().enumerate() {
        let user = format!("watcher{i}");
        let mut ws = credentials.connect(options.router, i, &user, Role::Dashboard).await?;
        let snapshot = next_frame(&mut ws).await?;
        anyhow::ensure!(snapshot[1].as_u64() == Some(message_type::PRESENCE_SNAPSHOT.into()), "{snapshot}");
        if let Some((counts, interval_ms)) = way.subscribe {
            subscribe(&mut ws, &user, &group, counts, interval_ms).await?;
        }
        let received = Arc::new(Received::default());
        tokio::spawn(count(ws, received.clone()));
        counted.push(received);
    }
    let started = Instant::now();
    churn::run(churn::Options {
        redis_port: options.redis_port,
        users: options.churn_users.min(options.users),
        groups: 1,
        rate: options.rate,
        seconds: options.seconds,
    })
    .await?;
    // What the last window of changes sends is counted too.
    tokio::time::sleep(Duration::from_millis(interval.max(100) * 2)).await;
    let seconds = started.elapsed().as_secs_f64();
    for (way, received) in ways.iter().zip(&counted) {
        let (frames, bytes) = (received.frames.load(Ordering::Relaxed), received.bytes.load(Ordering::Relaxed));
        println!(
            "groups: {} users in one group, {} of them changing, {} changes/s, {:.1} s, interval {} ms, {}: {:.1} frames/s, {:.0} bytes/s",
            options.users,
            options.churn_users.min(options.users),
            options.rate,
            seconds,
            interval,
            way.label,
            frames as f64 / seconds,
            bytes as f64 / seconds
        );
    }
    Ok(())
}

/// SUBSCRIBE and its answers: ACK, then GROUP_SNAPSHOT or GROUP_COUNTS.
async fn subscribe(ws: &mut Ws, me: &str, group: &str, counts: bool, interval_ms: u64) -> anyhow::Result<()> {
    let payload = Value::Map(vec![("counts".into(), counts.into()), ("intervalMs".into(), interval_ms.into())]);
    let frame =
        Value::Array(vec![0.into(), message_type::SUBSCRIBE.into(), me.into(), group.into(), 1.into(), payload]);
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, &frame)?;
    ws.send(Message::Binary(bytes.into())).await?;
    let answers = [message_type::ACK, if counts { message_type::GROUP_COUNTS } else { message_type::GROUP_SNAPSHOT }];
    for expected in answers {
        let answer = next_frame(ws).await?;
        anyhow::ensure!(answer[1].as_u64() == Some(expected.into()), "SUBSCRIBE answered {answer}");
    }
    Ok(())
}

/// Counts every binary frame from now on, and its bytes.
async fn count(mut ws: Ws, received: Arc<Received>) {
    while let Some(Ok(message)) = ws.next().await {
        if let Message::Binary(bytes) = message {
            received.frames.fetch_add(1, Ordering::Relaxed);
            received.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
    }
}
