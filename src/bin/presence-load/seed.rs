//! Presence written straight into Redis through the router's own store (the real lease
//! script), for scales this machine's file limit does not allow as sockets: 100k users,
//! in groups if asked, among as many unrelated TTL keys as wanted.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures_util::{StreamExt, TryStreamExt, stream};
use presence_router::{
    engine::{
        Broker, Lifetimes, PresenceStore,
        log::DEFAULT_LOG_ENTRIES,
        redis::{RedisBroker, RedisConfig, RedisPresence},
    },
    id::Id,
    presence::{Groups, PresenceUpdate, Session, SessionId},
};
use redis::AsyncCommands;

use crate::fleet;

pub fn config(port: u16) -> RedisConfig {
    RedisConfig::tcp("127.0.0.1", port)
}

/// The router's own store and broker, writing as a router would: what seeds users and
/// then changes them (see [`crate::churn`]).
pub struct Writer {
    pub store: Arc<RedisPresence>,
    pub broker: Arc<RedisBroker>,
}

impl Writer {
    /// `ttl`: the seeded sessions' lease.
    pub async fn connect(port: u16, ttl: Duration) -> anyhow::Result<Writer> {
        let lifetimes = Lifetimes {
            ttl,
            last_seen: Duration::from_secs(3600),
            away_after: Duration::from_secs(3600),
            log_entries: DEFAULT_LOG_ENTRIES,
        };
        let store = Arc::new(RedisPresence::connect(&config(port), lifetimes, None).await?);
        let broker = Arc::new(RedisBroker::new(&store, "presence-load".into()));
        Ok(Writer { store, broker })
    }

    /// Publishes the transition a store call returned, if any.
    pub async fn publish(&self, update: Option<PresenceUpdate>) -> anyhow::Result<()> {
        if let Some(update) = update {
            self.broker.publish(&[update]).await?;
        }
        Ok(())
    }
}

/// User `u{i}`'s seeded session: in group `g{i % groups}` (in none when `groups` is 0).
pub fn session(i: usize, groups: usize) -> anyhow::Result<Session> {
    let groups = match groups {
        0 => Groups::default(),
        n => Groups::from([Id::parse(&group(i % n))?]),
    };
    Ok(Session {
        id: SessionId::new("seed", i as u64),
        user: Id::parse(&fleet::user(i))?,
        device_id: Some("seed".into()),
        groups,
        choice: None,
    })
}

/// The name of group number `n`.
pub fn group(n: usize) -> String {
    format!("g{n}")
}

/// Leases users `u0..u{n}` (in `groups` groups, see [`session`]) for `ttl` through the
/// lease script and publishes each transition, as a router would; returns each user's
/// deadline (Unix ms, Redis clock) as Redis recorded it.
pub async fn users(port: u16, n: usize, ttl: Duration, groups: usize) -> anyhow::Result<HashMap<String, u64>> {
    let writer = Arc::new(Writer::connect(port, ttl).await?);
    stream::iter(0..n)
        .map(|i| {
            let writer = writer.clone();
            async move { writer.publish(writer.store.connect(&session(i, groups)?).await?.update).await }
        })
        .buffer_unordered(512)
        .try_collect::<()>()
        .await?;
    let mut conn = writer.store.connection();
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
