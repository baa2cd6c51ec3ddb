//! Presence written straight into Redis through the router's own store (the real lease
//! script), for scales this machine's file limit does not allow as sockets: 100k users,
//! among as many unrelated TTL keys as wanted.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures_util::{StreamExt, TryStreamExt, stream};
use presence_router::{
    engine::{
        Broker, Lifetimes, PresenceStore,
        redis::{RedisBroker, RedisConfig, RedisPresence},
    },
    id::Id,
    presence::{Groups, Session, SessionId},
};
use redis::AsyncCommands;

use crate::fleet;

pub fn config(port: u16) -> RedisConfig {
    RedisConfig::tcp("127.0.0.1", port)
}

/// Leases users `u0..u{n}` for `ttl` through the lease script and publishes each
/// transition, as a router would; returns each user's deadline (Unix ms, Redis clock) as
/// Redis recorded it.
pub async fn users(port: u16, n: usize, ttl: Duration) -> anyhow::Result<HashMap<String, u64>> {
    let store = Arc::new(
        RedisPresence::connect(
            &config(port),
            Lifetimes { ttl, last_seen: Duration::from_secs(3600), away_after: Duration::from_secs(3600) },
        )
        .await?,
    );
    let broker = Arc::new(RedisBroker::new(store.connection(), store.keyspace().clone(), "presence-load".into()));
    stream::iter(0..n)
        .map(|i| {
            let (store, broker) = (store.clone(), broker.clone());
            async move {
                let session = Session {
                    id: SessionId::new("seed", i as u64),
                    user: Id::parse(&fleet::user(i))?,
                    device_id: Some("seed".into()),
                    groups: Groups::default(),
                    choice: None,
                };
                if let Some(update) = store.connect(&session).await?.update {
                    broker.publish(&[update]).await?;
                }
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(512)
        .try_collect::<()>()
        .await?;
    let mut conn = store.connection();
    // `user\nsession` -> that session's lease deadline: one session per user here.
    let scored: Vec<(String, f64)> = conn.zrange_withscores("presence:leases", 0, -1).await?;
    Ok(scored
        .into_iter()
        .filter_map(|(lease, deadline)| Some((lease.split_once('\n')?.0.to_owned(), deadline as u64)))
        .collect())
}

/// `count` unrelated keys with a one-hour TTL, as a busy shared Redis holds: they slow
/// Redis' active expiry cycle, which is why keyspace events alone cannot be trusted.
pub async fn other_keys(port: u16, count: usize) -> anyhow::Result<()> {
    let client = config(port).client()?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let script = redis::Script::new(
        "for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do redis.call('SET', 'other:' .. i, '1', 'EX', 3600) end",
    );
    for start in (0..count).step_by(50_000) {
        let end = (start + 50_000).min(count) - 1;
        script.arg(start).arg(end).invoke_async::<()>(&mut conn).await?;
    }
    Ok(())
}
