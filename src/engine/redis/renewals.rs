//! Heartbeats batched, and a live session's lease extended with one command.
//!
//! Heartbeats queue here; one task takes whatever is queued (up to [`BATCH`]) and renews
//! it. Nothing waits here to fill a batch: the router gathers heartbeats before it hands
//! them over (see `renewal_window`), and under heavy load batches grow while the previous
//! one is in flight.
//!
//! A heartbeat of a live session changes one thing in Redis: its lease deadline. So a batch
//! is one `ZADD {p}leases XX GT CH` per shard, carrying every session of the batch on that
//! shard (Redis' cost per command, not per member, dominates at this size), and no script: every
//! value that used to be written per heartbeat (the user's last seen, its groups'
//! participation) is derived from the lease when it is read or when the lease lapses (see
//! `lua/prelude.lua`). `XX` writes only a lease that exists, so a session whose lease was
//! ended (swept, replaced, or lost with Redis' data) is not brought back silently. When the
//! command changed fewer leases than it carried, one `ZMSCORE` tells which are gone (a
//! lease that stays, not moved back by `GT`, is kept as it is); those take the whole lease
//! (`renew.lua`), which may be an online transition or a refusal (another session holds
//! the device now).
//!
//! Deadlines are on Redis' clock, as every script's: the router reads the clock of each
//! shard's master (`lua/clock.lua`, which runs where the shard's scripts run) every
//! [`CLOCK_EVERY`] and counts from there on its own monotonic clock, which stays within
//! half a round trip of Redis' (and follows a step of Redis' clock within
//! [`CLOCK_EVERY`]). A lease runs the TTL from its heartbeat's arrival, read on that
//! clock, however long the heartbeat waited for its batch.

use std::time::Duration;

use futures_util::future::try_join_all;
use redis::Script;
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use super::{Connection, Keyspace, Row, classify, lease_member, parse_row, session_args, start_call};
use crate::{
    engine::{EngineError, Lifetimes},
    presence::{PresenceUpdate, Session},
};

/// How often Redis' clock is read again.
const CLOCK_EVERY: Duration = Duration::from_secs(10);

/// Most sessions renewed by one command or script call: bounds how long one call blocks Redis.
const BATCH: usize = 256;
/// Heartbeats waiting for a batch; senders wait for room rather than fail.
const QUEUE: usize = 8 * BATCH;

type Reply = oneshot::Sender<Result<Option<PresenceUpdate>, EngineError>>;

/// A queued heartbeat: the session, when its heartbeat arrived, and who waits for it.
type Queued = (Session, Instant, Reply);

/// The handle heartbeats queue on.
pub struct Renewals {
    queue: mpsc::Sender<Queued>,
}

/// Renews batches of sessions.
pub struct Batcher {
    conn: Connection,
    /// `renew.lua`, for the sessions a plain extension does not renew.
    script: Script,
    keys: Keyspace,
    lifetimes: Lifetimes,
    /// `lua/clock.lua`.
    clock_script: Script,
    /// Per shard, its master's clock (Unix ms) as last read, and when on this router's
    /// clock.
    clocks: Vec<Option<(Instant, u64)>>,
}

type Results = Vec<Result<Option<PresenceUpdate>, EngineError>>;

impl Renewals {
    /// Starts the batching task; it ends when the handle is dropped.
    pub fn start(batcher: Batcher) -> Renewals {
        let (queue, pending) = mpsc::channel(QUEUE);
        tokio::spawn(batcher.run(pending));
        Renewals { queue }
    }

    /// Renews one session's lease to the TTL from `at`; the transition, if the session
    /// had lapsed.
    pub async fn renew(&self, session: &Session, at: Instant) -> Result<Option<PresenceUpdate>, EngineError> {
        let (reply, answer) = oneshot::channel();
        let gone = || EngineError::Internal("the renewal task stopped".into());
        self.queue.send((session.clone(), at, reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

impl Batcher {
    pub fn new(conn: Connection, script: Script, keys: Keyspace, lifetimes: Lifetimes) -> Batcher {
        let clocks = vec![None; keys.shards()];
        let clock_script = Script::new(include_str!("lua/clock.lua"));
        Batcher { conn, script, keys, lifetimes, clock_script, clocks }
    }

    /// Where `shard`'s master's clock was read last (Unix ms) and when on this router's
    /// clock, read again when that is [`CLOCK_EVERY`] old: the reading is taken to be at
    /// the midpoint of its round trip.
    async fn redis_clock(&mut self, shard: usize) -> Result<(Instant, u64), EngineError> {
        if let Some((at, redis_ms)) = self.clocks[shard]
            && at.elapsed() < CLOCK_EVERY
        {
            return Ok((at, redis_ms));
        }
        let sent = Instant::now();
        let redis_ms: u64 =
            self.clock_script.key(self.keys.seq(shard)).invoke_async(&mut self.conn).await.map_err(classify)?;
        let reading = (sent + sent.elapsed() / 2, redis_ms);
        self.clocks[shard] = Some(reading);
        Ok(reading)
    }

    async fn run(mut self, mut pending: mpsc::Receiver<Queued>) {
        let mut batch = Vec::with_capacity(BATCH);
        while pending.recv_many(&mut batch, BATCH).await > 0 {
            let results = self.renew(&batch).await;
            for (i, (_, _, reply)) in batch.drain(..).enumerate() {
                let result = match &results {
                    Ok(rows) => rows[i].clone(),
                    Err(e) => Err(e.clone()),
                };
                // The heartbeat's connection may be gone; nobody to tell.
                let _ = reply.send(result);
            }
        }
    }

    /// Per session of the batch, its transition or none: the live sessions' leases extended
    /// with one `ZADD XX GT CH` per shard, the others through `renew.lua` (a call per shard).
    async fn renew(&mut self, batch: &[Queued]) -> Result<Results, EngineError> {
        let parts = self.keys.partition(batch.iter().map(|(session, _, _)| session.user.as_str()));
        let mut clocks = Vec::with_capacity(parts.len());
        for (shard, _) in &parts {
            clocks.push(self.redis_clock(*shard).await?);
        }
        let ttl_ms = self.lifetimes.ttl.as_millis() as u64;
        let held = try_join_all(parts.iter().zip(clocks).map(|((shard, indices), (read_at, redis_ms))| {
            let leases = self.keys.key(*shard, "leases");
            let members: Vec<String> = indices.iter().map(|&i| lease_member(&batch[i].0)).collect();
            let mut extend = redis::cmd("ZADD");
            extend.arg(&leases).arg("XX").arg("GT").arg("CH");
            for (&i, member) in indices.iter().zip(&members) {
                extend.arg(on_clock(batch[i].1, read_at, redis_ms) + ttl_ms).arg(member);
            }
            let mut conn = self.conn.clone();
            async move {
                let changed: usize = extend.query_async(&mut conn).await.map_err(classify)?;
                if changed == members.len() {
                    return Ok(vec![true; members.len()]);
                }
                let scores: Vec<Option<f64>> =
                    redis::cmd("ZMSCORE").arg(&leases).arg(&members).query_async(&mut conn).await.map_err(classify)?;
                Ok::<_, EngineError>(scores.into_iter().map(|score| score.is_some()).collect::<Vec<bool>>())
            }
        }))
        .await?;
        let mut rest = Vec::new();
        for ((_, indices), held) in parts.iter().zip(held) {
            rest.extend(indices.iter().zip(held).filter(|&(_, held)| !held).map(|(&i, _)| i));
        }
        let mut results: Results = vec![Ok(None); batch.len()];
        if !rest.is_empty() {
            self.lease(batch, &rest, &mut results).await?;
        }
        Ok(results)
    }

    /// `renew.lua` for the sessions at `indices` of the batch: one call per shard.
    async fn lease(&self, batch: &[Queued], indices: &[usize], results: &mut Results) -> Result<(), EngineError> {
        let parts = self.keys.partition(indices.iter().map(|&i| batch[i].0.user.as_str()));
        let answers = try_join_all(parts.iter().map(|(shard, positions)| {
            let mut call = start_call(&self.script, &self.keys, *shard, &self.lifetimes);
            for &p in positions {
                session_args(&mut call, &batch[indices[p]].0);
            }
            let mut conn = self.conn.clone();
            async move { call.invoke_async::<Vec<(usize, Row)>>(&mut conn).await.map_err(classify) }
        }))
        .await?;
        for ((_, positions), rows) in parts.iter().zip(answers) {
            for (index, row) in rows {
                // `index` counts the call's sessions from 1.
                if let Some(&p) = index.checked_sub(1).and_then(|i| positions.get(i)) {
                    results[indices[p]] = parse_row(row).map(Some);
                }
            }
        }
        Ok(())
    }
}

/// `at` on a clock that read `redis_ms` at `read_at` (Unix ms).
fn on_clock(at: Instant, read_at: Instant, redis_ms: u64) -> u64 {
    match at.checked_duration_since(read_at) {
        Some(after) => redis_ms + after.as_millis() as u64,
        None => redis_ms.saturating_sub(read_at.duration_since(at).as_millis() as u64),
    }
}
